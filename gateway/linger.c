/*
 * linger.c -- sockets shut down for writing and read until the client's FIN or
 * a timeout, then closed. A list, since they are few and only ever removed one
 * at a time from their own event.
 */
#include "linger.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <utlist.h>

#include "log.h"

struct lingering {
	int fd;
	struct linger_set *set;
	struct event *event;
	struct timespec started;
	struct lingering *prev, *next;
};

struct linger_set {
	struct event_base *base;
	struct lingering *sockets;
	size_t count;
};

static void linger_end(struct lingering *lingering)
{
	DL_DELETE(lingering->set->sockets, lingering);
	lingering->set->count--;
	if (lingering->event != NULL)
		event_free(lingering->event);
	if (close(lingering->fd) != 0)
		log_debug("lingering close: %s", strerror(errno));
	free(lingering);
}

static void on_linger(evutil_socket_t fd, short what, void *arg)
{
	struct lingering *lingering = arg;
	char discard[16384];
	struct timespec now;
	ssize_t n = 0;

	if (what & EV_READ) {
		do
			n = recv(fd, discard, sizeof(discard), MSG_DONTWAIT);
		while (n == (ssize_t)sizeof(discard));
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			n = 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	if ((what & EV_TIMEOUT) || n <= 0 ||
	    (now.tv_sec - lingering->started.tv_sec) * 1000 > LINGER_TOTAL_MS)
		linger_end(lingering);
}

int linger_start(struct linger_set *set, int fd)
{
	struct timeval idle = { LINGER_IDLE_MS / 1000, (LINGER_IDLE_MS % 1000) * 1000 };
	struct lingering *lingering;

	if (fd < 0 || set->count >= LINGER_MAX)
		return -1;
	lingering = calloc(1, sizeof(*lingering));
	if (lingering == NULL)
		return -1;
	lingering->set = set;
	lingering->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	clock_gettime(CLOCK_MONOTONIC, &lingering->started);
	if (lingering->fd < 0) {
		free(lingering);
		return -1;
	}
	DL_APPEND(set->sockets, lingering);
	set->count++;
	lingering->event =
		event_new(set->base, lingering->fd, EV_READ | EV_PERSIST, on_linger, lingering);
	if (lingering->event == NULL || shutdown(lingering->fd, SHUT_WR) != 0 ||
	    event_add(lingering->event, &idle) < 0) {
		linger_end(lingering);
		return -1;
	}
	return 0;
}

struct linger_set *linger_set_new(struct event_base *base)
{
	struct linger_set *set = calloc(1, sizeof(*set));

	if (set != NULL)
		set->base = base;
	return set;
}

void linger_set_free(struct linger_set *set)
{
	if (set == NULL)
		return;
	while (set->sockets != NULL)
		linger_end(set->sockets);
	free(set);
}
