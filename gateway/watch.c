/*
 * watch.c -- how the server learns that a client went away or stopped reading
 * while evhttp is not looking: a socket watch while a request waits, and a
 * download's progress (TCP acknowledgements, bytes handed to the kernel) while
 * it streams. Deciding and answering are the server's; this only notices.
 */
#include "exchange.h"

#include <errno.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>

#include "clock.h"
#include "conf.h"
#include "log.h"

/* A download's client is looked at this many times per client_timeout. */
#define WATCH_STALL_CHECKS 4

void watch_client_stop(struct exchange *ex)
{
	if (ex->client_watch != NULL)
		event_free(ex->client_watch);
	ex->client_watch = NULL;
}

/*
 * libevent 2.1 stops reading a connection while its request is being answered,
 * so it would notice a client that hung up only when the answer is written. We
 * watch the socket ourselves meanwhile, as nginx does. A FIN shows as EV_CLOSED
 * (epoll's EPOLLRDHUP, seen even behind unread bytes such as a TLS close_notify);
 * a reset as EPOLLERR|EPOLLHUP, which libevent reports as EV_READ|EV_WRITE, never
 * as EV_CLOSED: so the watch takes EV_READ too. Level-triggered, not
 * edge-triggered: libevent 2.1 keeps EPOLLET on a socket after an edge-triggered
 * event on it is deleted in the same batch as the write that follows, and its
 * bufferevents write one chain per callback (a file segment for sendfile, then
 * the next), so an edge-triggered socket would stall the answer. Bytes a client
 * sends meanwhile (a pipelined request) would wake a level-triggered read on
 * every turn, so once it has some the watch keeps EV_CLOSED, and looks at the
 * socket's error (a reset) every WATCH_RESET_CHECK_MS instead.
 * The client gone, the connection is closed now, which aborts the upstream call
 * through on_connection_closed.
 */
static void watch_add(struct exchange *ex, evutil_socket_t fd, short kind,
		      const struct timeval *every);

#define WATCH_RESET_CHECK_MS 200

static void on_client_watch(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *ex = arg;
	socklen_t length = sizeof(int);
	int error = 0;
	char byte;
	ssize_t n;

	if (!(what & EV_CLOSED)) {
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error != 0) {
			ex->end_note = "client-reset";
		} else if (what & EV_TIMEOUT) {
			return; /* the periodic look: no reset */
		} else {
			n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
			if (n > 0) {
				/* bytes waiting: a read watch would fire on every turn */
				struct timeval every = { 0, WATCH_RESET_CHECK_MS * 1000 };
				short kind = EV_PERSIST;

				if (event_base_get_features(ex->server->base) &
				    EV_FEATURE_EARLY_CLOSE)
					kind |= EV_CLOSED;
				watch_client_stop(ex);
				watch_add(ex, fd, kind, &every);
				return;
			}
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
				return; /* nothing after all */
		}
	}
	evhttp_connection_free(ex->connection);
}

static void watch_add(struct exchange *ex, evutil_socket_t fd, short kind,
		      const struct timeval *every)
{
	ex->client_watch = event_new(ex->server->base, fd, kind, on_client_watch, ex);
	if (ex->client_watch == NULL || event_add(ex->client_watch, every) < 0) {
		log_warn("%s: cannot watch the client connection", __func__);
		watch_client_stop(ex);
	}
}

void watch_client_start(struct exchange *ex)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->connection);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	short kind = EV_READ | EV_PERSIST;

	if (fd < 0)
		return;
	if (event_base_get_features(ex->server->base) & EV_FEATURE_EARLY_CLOSE)
		kind |= EV_CLOSED;
	watch_add(ex, fd, kind, NULL);
}

/* Download progress: the client's output buffer drains, or nothing is owed. */

void watch_progress_stop(struct exchange *ex)
{
	if (ex->output_watch != NULL)
		evbuffer_remove_cb_entry(ex->output, ex->output_watch);
	ex->output_watch = NULL;
	if (ex->stall_check != NULL)
		event_free(ex->stall_check);
	ex->stall_check = NULL;
	if (ex->closer != NULL)
		event_free(ex->closer);
	ex->closer = NULL;
}

static void on_output(struct evbuffer *buffer, const struct evbuffer_cb_info *info, void *arg)
{
	struct exchange *ex = arg;

	ex->drained += info->n_deleted;
	/* not from here: we are inside the bufferevent's write */
	if (ex->state == EXCHANGE_CUTTING && evbuffer_get_length(buffer) == 0)
		event_active(ex->closer, EV_TIMEOUT, 0);
}

static void on_closer(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *ex = arg;

	(void)fd;
	(void)what;
	evhttp_connection_free(ex->connection);
}

/* Bytes in the socket's send queue, not yet acknowledged by the client; -1 unknown. */
static int socket_unsent(struct exchange *ex)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->connection);
	evutil_socket_t fd = bev != NULL ? bufferevent_getfd(bev) : -1;
	int unsent = -1;

	if (fd < 0 || ioctl(fd, SIOCOUTQ, &unsent) != 0)
		return -1;
	return unsent;
}

static void stall_check_arm(struct exchange *ex)
{
	int64_t every = ex->server->conf->client_timeout_ms / WATCH_STALL_CHECKS;
	struct timeval next;

	if (every < 1)
		every = 1;
	next.tv_sec = every / 1000;
	next.tv_usec = (every % 1000) * 1000;
	if (evtimer_add(ex->stall_check, &next) < 0)
		log_warn("%s: cannot arm the stall check", __func__);
}

/*
 * client_timeout for a download means no progress at all. evhttp's timeouts are
 * off while it streams: its read timeout cuts a client that reads slowly but
 * steadily (a reader sends nothing), and its write timeout counts the time the
 * kernel waits for half of a large send buffer to drain before it says
 * "writable" again (minutes at 16 KB/s). Progress is the client acknowledging
 * bytes (the socket's send queue shrinks) or the gateway handing the kernel
 * more; a client that is owed bytes and does neither for client_timeout is cut.
 * (A reader's TCP stack opens its window again only once about half its receive
 * buffer is free, so progress shows every buffer / (2 x rate): a reader of
 * 16 KB/s with Linux's default 128 KiB buffer shows it every 4 s.)
 */
static void on_stall_check(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *ex = arg;
	int64_t now = now_ms();
	int unsent = socket_unsent(ex);

	(void)fd;
	(void)what;
	if ((evbuffer_get_length(ex->output) == 0 && unsent <= 0) ||
	    ex->drained != ex->drained_seen || unsent < ex->unsent_seen || unsent < 0)
		ex->last_progress_ms = now;
	ex->drained_seen = ex->drained;
	ex->unsent_seen = unsent;
	if (now - ex->last_progress_ms >= ex->server->conf->client_timeout_ms) {
		ex->end_note = "client-timeout";
		evhttp_connection_free(ex->connection);
		return;
	}
	stall_check_arm(ex);
}

int watch_progress_start(struct exchange *ex)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->connection);

	if (bev == NULL)
		return -1;
	ex->output = bufferevent_get_output(bev);
	ex->last_progress_ms = now_ms();
	ex->unsent_seen = -1;
	ex->output_watch = evbuffer_add_cb(ex->output, on_output, ex);
	ex->stall_check = evtimer_new(ex->server->base, on_stall_check, ex);
	ex->closer = event_new(ex->server->base, -1, 0, on_closer, ex);
	if (ex->output_watch == NULL || ex->stall_check == NULL || ex->closer == NULL) {
		watch_progress_stop(ex);
		return -1;
	}
	stall_check_arm(ex);
	bufferevent_set_timeouts(bev, NULL, NULL);
	return 0;
}

void watch_close_when_flushed(struct exchange *ex)
{
	if (ex->closer == NULL)
		evhttp_connection_free(ex->connection);
	else if (ex->output == NULL || evbuffer_get_length(ex->output) == 0)
		event_active(ex->closer, EV_TIMEOUT, 0);
}

size_t watch_queued(const struct exchange *ex)
{
	struct bufferevent *bev =
		ex->connection ? evhttp_connection_get_bufferevent(ex->connection) : NULL;

	return bev != NULL ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}
