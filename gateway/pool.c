/*
 * pool.c -- libcurl's multi_socket API on the libevent loop (one event per
 * socket libcurl waits on, one timer per multi handle, finished transfers
 * reaped after each action), and the idle connections it pools. libcurl 7.88
 * reuses a pooled TLS connection that has bytes waiting (it takes "readable"
 * for "alive"), so the gateway watches pooled connections itself.
 */
#include "pool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "hash.h"
#include "log.h"

struct pools;

/* One multi handle: its connections are shared by its calls only. */
struct pool {
	struct pools *pools;
	enum pool_kind kind;
	CURLM *multi;
	struct event *timer;
};

/* One per socket curl watches; reached through curl_multi_assign, or by fd. */
struct watched_socket {
	curl_socket_t fd; /* hash key */
	struct event *event;
	UT_hash_handle hh;
};

/*
 * A connection libcurl keeps for reuse, between two transfers. Anything that
 * arrives on it now (a second response, a close) must not be read as the answer
 * to the next request, and it must not stay open for ever: either way it is shut
 * down, and libcurl finds it dead and closes it before it would reuse it.
 */
struct idle_connection {
	curl_socket_t fd; /* hash key */
	uint32_t ports;	  /* local port << 16 | remote port: the key of by_ports */
	struct pools *pools;
	struct event *watch; /* readable, or idle for the keep-alive time */
	UT_hash_handle hh, by_ports;
};

struct pools {
	struct event_base *base;
	struct pools_handlers handlers;
	void *arg;
	struct pool pool[POOL_COUNT];
	struct watched_socket *watched; /* sockets libcurl waits on, by fd */
	struct idle_connection *idle;
	struct idle_connection *idle_by_ports; /* the same, found from prereq_cb */
	struct timeval keepalive;
};

static struct timeval timeval_of(int64_t ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	return tv;
}

static void shut(curl_socket_t fd)
{
	if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
		log_warn("upstream connection %d: shutdown: %s", (int)fd, strerror(errno));
}

/* Idle pooled connections. */

static void idle_forget(struct pools *upstream, curl_socket_t fd)
{
	struct idle_connection *idle = NULL;

	HASH_FIND_INT(upstream->idle, &fd, idle);
	if (idle == NULL)
		return;
	HASH_DEL(upstream->idle, idle);
	if (idle->ports != 0)
		HASH_DELETE(by_ports, upstream->idle_by_ports, idle);
	event_free(idle->watch);
	free(idle);
}

/* local port << 16 | remote port of a connected socket, or 0. */
static uint32_t socket_ports(curl_socket_t fd)
{
	struct sockaddr_storage local, remote;
	socklen_t local_length = sizeof(local), remote_length = sizeof(remote);
	unsigned local_port, remote_port;

	if (getsockname(fd, (struct sockaddr *)&local, &local_length) != 0 ||
	    getpeername(fd, (struct sockaddr *)&remote, &remote_length) != 0)
		return 0;
	if (local.ss_family == AF_INET && remote.ss_family == AF_INET) {
		local_port = ntohs(((struct sockaddr_in *)&local)->sin_port);
		remote_port = ntohs(((struct sockaddr_in *)&remote)->sin_port);
	} else if (local.ss_family == AF_INET6 && remote.ss_family == AF_INET6) {
		local_port = ntohs(((struct sockaddr_in6 *)&local)->sin6_port);
		remote_port = ntohs(((struct sockaddr_in6 *)&remote)->sin6_port);
	} else {
		return 0;
	}
	return (uint32_t)local_port << 16 | remote_port;
}

/* Readable while idle (stray bytes, a close) or idle too long: shut it down. */
static void on_idle_connection(evutil_socket_t fd, short what, void *arg)
{
	struct idle_connection *idle = arg;

	log_debug("upstream connection %d %s while pooled: shut down", (int)fd,
		  (what & EV_READ) ? "readable" : "idle too long");
	shut(fd);
	idle_forget(idle->pools, (curl_socket_t)fd);
}

/*
 * A transfer ended cleanly and libcurl kept its connection. Bytes already
 * waiting behind the answer (in the socket or read ahead by OpenSSL) belong to
 * no request: libcurl 7.88 takes a readable TLS connection for a live one and
 * would hand them to the next call, for another export or credential.
 */
void pools_transfer_done(struct pools *upstream, CURL *easy, SSL *ssl)
{
	curl_socket_t fd = CURL_SOCKET_BAD;
	struct watched_socket *busy = NULL;
	struct idle_connection *idle;
	ssize_t peeked;
	char byte;

	if (curl_easy_getinfo(easy, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK ||
	    fd == CURL_SOCKET_BAD)
		return;
	/*
	 * Handed straight to a queued call (libcurl does that within the same
	 * socket action when upstream_max_connections is reached): not idle, and
	 * what is readable now is that call's answer.
	 */
	HASH_FIND_INT(upstream->watched, &fd, busy);
	if (busy != NULL)
		return;
	idle_forget(upstream, fd);
	peeked = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
	/* a live fd from ACTIVESOCKET: the connection, and so ssl, still exist */
	if ((ssl != NULL && SSL_has_pending(ssl)) || peeked >= 0) {
		if (peeked == 0)
			log_debug("upstream closed a connection after its answer");
		else
			log_warn("upstream sent bytes after a complete answer; not reusing that "
				 "connection");
		shut(fd);
		return;
	}
	idle = calloc(1, sizeof(*idle));
	if (idle == NULL)
		goto fail;
	idle->fd = fd;
	idle->pools = upstream;
	idle->ports = socket_ports(fd);
	idle->watch = event_new(upstream->base, fd, EV_READ, on_idle_connection, idle);
	if (idle->ports == 0 || idle->watch == NULL ||
	    event_add(idle->watch, &upstream->keepalive) < 0)
		goto fail;
	hash_add_failed = 0;
	HASH_ADD(by_ports, upstream->idle_by_ports, ports, sizeof(idle->ports), idle);
	if (hash_add_failed)
		goto fail;
	HASH_ADD_INT(upstream->idle, fd, idle);
	if (!hash_add_failed)
		return;
	HASH_DELETE(by_ports, upstream->idle_by_ports, idle);
fail:
	/* Unwatched, it could not be trusted later: do not keep it. */
	if (idle != NULL && idle->watch != NULL)
		event_free(idle->watch);
	free(idle);
	shut(fd);
}

/*
 * CURLOPT_PREREQFUNCTION: a connection was made or taken from the pool, and the
 * request is about to be sent on it. A pooled one is not idle from here on
 * (libcurl may send before it tells socket_cb about the socket, and the answer
 * must not wake the idle watch); one that received bytes while pooled is
 * refused (libcurl 7.88 would take a readable TLS connection for a live one).
 */
static int prereq_cb(void *arg, char *remote_ip, char *local_ip, int remote_port, int local_port)
{
	struct pools *pools = arg;
	uint32_t ports = (uint32_t)local_port << 16 | (uint32_t)remote_port;
	struct idle_connection *idle = NULL;
	curl_socket_t fd;
	char byte;

	(void)remote_ip;
	(void)local_ip;
	HASH_FIND(by_ports, pools->idle_by_ports, &ports, sizeof(ports), idle);
	if (idle == NULL)
		return CURL_PREREQFUNC_OK;
	fd = idle->fd;
	idle_forget(pools, fd);
	/*
	 * Nothing, or a close that came after libcurl's own check: libcurl sees the
	 * close when it reads, and retries a reused connection on a fresh one.
	 */
	if (recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) <= 0)
		return CURL_PREREQFUNC_OK;
	log_warn("a pooled upstream connection received bytes nobody asked for; not using it");
	shut(fd);
	return CURL_PREREQFUNC_ABORT;
}

/* CURLOPT_CLOSESOCKETFUNCTION: libcurl is done with a connection, pooled or not. */
static int close_socket_cb(void *userp, curl_socket_t fd)
{
	idle_forget(userp, fd);
	return close(fd);
}

/* The multi handles on the loop. */

/* Reaps finished transfers; the handler may remove and free them. */
static void check_multi_info(struct pool *pool)
{
	CURLMsg *message;
	int left;

	while ((message = curl_multi_info_read(pool->multi, &left)) != NULL) {
		if (message->msg == CURLMSG_DONE)
			pool->pools->handlers.done(message->easy_handle, message->data.result,
						   pool->pools->arg);
	}
}

static void socket_action(struct pool *pool, curl_socket_t fd, int flags)
{
	int running = 0;
	CURLMcode rc = curl_multi_socket_action(pool->multi, fd, flags, &running);

	if (rc != CURLM_OK)
		log_error("%s: curl_multi_socket_action: %s", __func__, curl_multi_strerror(rc));
	check_multi_info(pool);
}

void pools_action(struct pools *pools, enum pool_kind kind, curl_socket_t fd, int flags)
{
	socket_action(&pools->pool[kind], fd, flags);
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
	int flags = 0;

	if (what & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	socket_action(arg, fd, flags);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	socket_action(arg, CURL_SOCKET_TIMEOUT, 0);
}

static void socket_forget(struct pools *upstream, struct watched_socket *socket)
{
	if (socket == NULL)
		return;
	HASH_DEL(upstream->watched, socket);
	if (socket->event != NULL)
		event_free(socket->event);
	free(socket);
}

/* CURLMOPT_SOCKETFUNCTION: (re)arm one event per socket for what curl waits on. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct pool *pool = userp;
	struct pools *pools = pool->pools;
	struct watched_socket *socket = socketp;
	short kind = EV_PERSIST;

	pools->handlers.socket(easy, what == CURL_POLL_REMOVE ? CURL_SOCKET_BAD : fd, pools->arg);
	if (what == CURL_POLL_REMOVE) {
		socket_forget(pools, socket);
		return 0;
	}
	/* a pooled connection taken for a new transfer is not idle any more */
	idle_forget(pools, fd);
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	if (socket == NULL) {
		socket = calloc(1, sizeof(*socket));
		if (socket == NULL)
			return -1;
		socket->fd = fd;
		hash_add_failed = 0;
		HASH_ADD_INT(pools->watched, fd, socket);
		if (hash_add_failed || curl_multi_assign(pool->multi, fd, socket) != CURLM_OK) {
			if (!hash_add_failed)
				HASH_DEL(pools->watched, socket);
			free(socket);
			return -1;
		}
	}
	if (socket->event != NULL)
		event_free(socket->event);
	socket->event = event_new(pools->base, fd, kind, on_socket_event, pool);
	if (socket->event == NULL || event_add(socket->event, NULL) < 0) {
		log_error("%s: cannot watch upstream socket %d", __func__, (int)fd);
		return -1;
	}
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: one libevent timer; curl is called from it, not here. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct pool *pool = userp;
	struct timeval tv;

	(void)multi;
	if (timeout_ms < 0)
		return event_del(pool->timer) == 0 ? 0 : -1;
	tv = timeval_of(timeout_ms);
	return evtimer_add(pool->timer, &tv) == 0 ? 0 : -1;
}

static int pool_init(struct pool *pool, struct pools *pools, enum pool_kind kind)
{
	pool->pools = pools;
	pool->kind = kind;
	pool->multi = curl_multi_init();
	pool->timer = evtimer_new(pools->base, on_timer, pool);
	if (pool->multi == NULL || pool->timer == NULL)
		return -1;
	if (curl_multi_setopt(pool->multi, CURLMOPT_SOCKETFUNCTION, socket_cb) != CURLM_OK ||
	    curl_multi_setopt(pool->multi, CURLMOPT_SOCKETDATA, pool) != CURLM_OK ||
	    curl_multi_setopt(pool->multi, CURLMOPT_TIMERFUNCTION, timer_cb) != CURLM_OK ||
	    curl_multi_setopt(pool->multi, CURLMOPT_TIMERDATA, pool) != CURLM_OK)
		return -1;
	return 0;
}

/* At most connections at once (more transfers queue), as many kept for reuse. */
static void pool_limit(struct pool *pool, long connections)
{
	if (curl_multi_setopt(pool->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, connections) !=
		    CURLM_OK ||
	    curl_multi_setopt(pool->multi, CURLMOPT_MAXCONNECTS, connections) != CURLM_OK)
		log_error("%s: cannot set the upstream connection limit", __func__);
}

static void pool_free(struct pool *pool)
{
	/* closes the pooled connections: close_socket_cb forgets their watches */
	if (pool->multi != NULL)
		curl_multi_cleanup(pool->multi);
	if (pool->timer != NULL)
		event_free(pool->timer);
}

void pools_set_limits(struct pools *pools, long status_connections, long download_connections,
		      int64_t keepalive_ms)
{
	pool_limit(&pools->pool[POOL_STATUS], status_connections);
	pool_limit(&pools->pool[POOL_DOWNLOAD], download_connections);
	pools->keepalive = timeval_of(keepalive_ms);
}

CURLM *pools_multi(struct pools *pools, enum pool_kind kind)
{
	return pools->pool[kind].multi;
}

int pools_prepare(struct pools *pools, CURL *easy)
{
	if (curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, close_socket_cb) != CURLE_OK ||
	    curl_easy_setopt(easy, CURLOPT_CLOSESOCKETDATA, pools) != CURLE_OK ||
	    curl_easy_setopt(easy, CURLOPT_PREREQFUNCTION, prereq_cb) != CURLE_OK ||
	    curl_easy_setopt(easy, CURLOPT_PREREQDATA, pools) != CURLE_OK)
		return -1;
	return 0;
}

struct pools *pools_new(struct event_base *base, const struct pools_handlers *handlers, void *arg)
{
	struct pools *pools = calloc(1, sizeof(*pools));

	if (pools == NULL)
		goto fail;
	pools->base = base;
	pools->handlers = *handlers;
	pools->arg = arg;
	for (int kind = 0; kind < POOL_COUNT; kind++) {
		if (pool_init(&pools->pool[kind], pools, (enum pool_kind)kind) < 0)
			goto fail;
	}
	return pools;
fail:
	log_error("%s: cannot set up the libcurl multi handles", __func__);
	pools_free(pools);
	return NULL;
}

void pools_free(struct pools *pools)
{
	struct idle_connection *idle, *next;

	if (pools == NULL)
		return;
	for (int kind = 0; kind < POOL_COUNT; kind++)
		pool_free(&pools->pool[kind]);
	HASH_ITER (hh, pools->idle, idle, next) {
		idle_forget(pools, idle->fd);
	}
	free(pools);
}
