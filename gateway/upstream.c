/*
 * upstream.c -- libcurl's multi_socket API on the gateway's libevent loop, after
 * curl's docs/examples/hiperfifo.c, plus the one Gumloop request we make. Every
 * curl return is checked; a failure fails the call, never the process. Every
 * response head is parsed here as well as by libcurl and checked (framing.c), so
 * nothing libcurl would guess at reaches a client.
 */
#include "config.h"

#include "upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "conf.h"
#include "framing.h"
#include "hash.h"
#include "log.h"
#include "metrics.h"
#include "query.h"

#include <utlist.h>

#define UPSTREAM_USER_AGENT "gumloop-gateway/" PACKAGE_VERSION
#define UPSTREAM_MAX_CONNECT_MS 10000L
/* libcurl's own lifetime for a parsed CA bundle. */
#define UPSTREAM_CA_CACHE_SECONDS (24L * 3600)

struct upstream;

/* One multi handle: its connections are shared by its calls only. */
struct upstream_pool {
	struct upstream *upstream;
	CURLM *multi;
	struct event *timer;
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
	struct upstream *upstream;
	struct event *watch; /* readable, or idle for upstream_keepalive_timeout */
	UT_hash_handle hh, by_ports;
};

struct upstream {
	struct event_base *base;
	struct upstream_pool status, download;
	struct upstream_call *calls; /* every running call, for cancel-all */
	struct upstream_socket *watched; /* sockets libcurl waits on, by fd */
	struct idle_connection *idle;
	struct idle_connection *idle_by_ports; /* the same, found from prereq_cb */
	struct timeval keepalive;
	int64_t applied_ms; /* when the config (and its CA bundle) was applied */
};

struct upstream_call {
	struct upstream *upstream;
	struct upstream_pool *pool;
	CURL *easy;
	struct curl_slist *headers; /* holds the API key: wiped before free */
	struct evbuffer *body;
	int too_large;	    /* body over UPSTREAM_MAX_JSON_BYTES */
	int head_too_large; /* headers over UPSTREAM_MAX_HEADER_BYTES */
	const char *invalid; /* why the head cannot be trusted, or NULL */
	int stopped;	     /* the handler wanted the head only */
	int have_head;	     /* the final head arrived */
	struct upstream_head head;
	struct upstream_download_handlers handlers; /* all NULL but done for status calls */
	enum upstream_mode mode;
	struct evkeyvalq response_headers;
	size_t header_bytes;
	int paused;
	struct event *deadline;	  /* upstream_timeout: the whole call, or a download's head */
	struct event *idle_timer; /* downloads: no byte for upstream_idle_timeout */
	struct event *tls_drain;  /* records read ahead are waiting: read on */
	curl_socket_t socket;	  /* from socket_cb, or BAD: CURLINFO_ACTIVESOCKET is -1
				     until a transfer is done (curl 7.88) */
	SSL *ssl; /* the connection's, as last seen while attached: CURLINFO_TLS_SSL_PTR
		     is NULL once the transfer is done; valid while libcurl keeps it */
	struct timeval idle_timeout;
	upstream_done_cb done;
	void *arg;
	struct upstream_call *prev, *next;
	char error[CURL_ERROR_SIZE];
};

/* One per socket curl watches; reached through curl_multi_assign, or by fd. */
struct upstream_socket {
	curl_socket_t fd; /* hash key */
	struct event *event;
	UT_hash_handle hh;
};

static void check_multi_info(struct upstream_pool *pool);
static void call_finish(struct upstream_call *call, CURLcode code);

static int64_t now_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static struct timeval timeval_of(int64_t ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	return tv;
}

/* Idle pooled connections. */

static void idle_forget(struct upstream *upstream, curl_socket_t fd)
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
	if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
		log_warn("%s: shutdown: %s", __func__, strerror(errno));
	idle_forget(idle->upstream, (curl_socket_t)fd);
}

/* The SSL of the connection the call used, or NULL. */
static SSL *call_ssl(struct upstream_call *call)
{
	struct curl_tlssessioninfo *info = NULL;

	if (curl_easy_getinfo(call->easy, CURLINFO_TLS_SSL_PTR, &info) != CURLE_OK ||
	    info == NULL || info->backend != CURLSSLBACKEND_OPENSSL)
		return NULL;
	return info->internals;
}

/*
 * A transfer ended cleanly and libcurl kept its connection. Bytes already
 * waiting behind the answer (in the socket or read ahead by OpenSSL) belong to
 * no request: libcurl 7.88 takes a readable TLS connection for a live one and
 * would hand them to the next call, for another export or credential.
 */
static void idle_watch(struct upstream_call *call)
{
	struct upstream *upstream = call->upstream;
	curl_socket_t fd = CURL_SOCKET_BAD;
	struct upstream_socket *busy = NULL;
	struct idle_connection *idle;
	ssize_t peeked;
	char byte;

	if (curl_easy_getinfo(call->easy, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK ||
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
	/* a live fd from ACTIVESOCKET: the connection, and so call->ssl, still exist */
	if ((call->ssl != NULL && SSL_has_pending(call->ssl)) || peeked >= 0) {
		if (peeked == 0)
			log_debug("upstream closed a connection after its answer");
		else
			log_warn("upstream sent bytes after a complete answer; not reusing that "
				 "connection");
		if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
			log_warn("%s: shutdown: %s", __func__, strerror(errno));
		return;
	}
	idle = calloc(1, sizeof(*idle));
	if (idle == NULL)
		goto fail;
	idle->fd = fd;
	idle->upstream = upstream;
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
	if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
		log_warn("%s: shutdown: %s", __func__, strerror(errno));
}

/*
 * CURLOPT_PREREQFUNCTION: a connection was made or taken from the pool, and the
 * request is about to be sent on it. A pooled one is not idle from here on
 * (libcurl may send before it tells socket_cb about the socket, and the answer
 * must not wake the idle watch); one that received bytes while pooled is
 * refused (libcurl 7.88 would take a readable TLS connection for a live one).
 */
static int prereq_cb(void *arg, char *remote_ip, char *local_ip, int remote_port,
		     int local_port)
{
	struct upstream_call *call = arg;
	uint32_t ports = (uint32_t)local_port << 16 | (uint32_t)remote_port;
	struct idle_connection *idle = NULL;
	curl_socket_t fd;
	char byte;

	(void)remote_ip;
	(void)local_ip;
	HASH_FIND(by_ports, call->upstream->idle_by_ports, &ports, sizeof(ports), idle);
	if (idle == NULL)
		return CURL_PREREQFUNC_OK;
	fd = idle->fd;
	idle_forget(call->upstream, fd);
	/*
	 * Nothing, or a close that came after libcurl's own check: libcurl sees the
	 * close when it reads, and retries a reused connection on a fresh one.
	 */
	if (recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) <= 0)
		return CURL_PREREQFUNC_OK;
	log_warn("a pooled upstream connection received bytes nobody asked for; not using it");
	if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
		log_warn("%s: shutdown: %s", __func__, strerror(errno));
	snprintf(call->error, sizeof(call->error), "a pooled connection was not clean");
	return CURL_PREREQFUNC_ABORT;
}

/* CURLOPT_CLOSESOCKETFUNCTION: libcurl is done with a connection, pooled or not. */
static int close_socket_cb(void *userp, curl_socket_t fd)
{
	idle_forget(userp, fd);
	return close(fd);
}

/* The multi handles on the loop. */

static void socket_action(struct upstream_pool *pool, curl_socket_t fd, int flags)
{
	int running = 0;
	CURLMcode rc = curl_multi_socket_action(pool->multi, fd, flags, &running);

	if (rc != CURLM_OK)
		log_error("%s: curl_multi_socket_action: %s", __func__,
			  curl_multi_strerror(rc));
	check_multi_info(pool);
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

static void socket_forget(struct upstream *upstream, struct upstream_socket *socket)
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
	struct upstream_pool *pool = userp;
	struct upstream_socket *socket = socketp;
	struct upstream_call *call = NULL;
	short kind = EV_PERSIST;

	if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, &call) == CURLE_OK && call != NULL)
		call->socket = what == CURL_POLL_REMOVE ? CURL_SOCKET_BAD : fd;
	if (what == CURL_POLL_REMOVE) {
		socket_forget(pool->upstream, socket);
		return 0;
	}
	/* a pooled connection taken for a new transfer is not idle any more */
	idle_forget(pool->upstream, fd);
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
		HASH_ADD_INT(pool->upstream->watched, fd, socket);
		if (hash_add_failed || curl_multi_assign(pool->multi, fd, socket) != CURLM_OK) {
			if (!hash_add_failed)
				HASH_DEL(pool->upstream->watched, socket);
			free(socket);
			return -1;
		}
	}
	if (socket->event != NULL)
		event_free(socket->event);
	socket->event = event_new(pool->upstream->base, fd, kind, on_socket_event, pool);
	if (socket->event == NULL || event_add(socket->event, NULL) < 0) {
		log_error("%s: cannot watch upstream socket %d", __func__, (int)fd);
		return -1;
	}
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: one libevent timer; curl is called from it, not here. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct upstream_pool *pool = userp;
	struct timeval tv;

	(void)multi;
	if (timeout_ms < 0)
		return event_del(pool->timer) == 0 ? 0 : -1;
	tv = timeval_of(timeout_ms);
	return evtimer_add(pool->timer, &tv) == 0 ? 0 : -1;
}

static int pool_init(struct upstream_pool *pool, struct upstream *upstream)
{
	pool->upstream = upstream;
	pool->multi = curl_multi_init();
	pool->timer = evtimer_new(upstream->base, on_timer, pool);
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
static void pool_limit(struct upstream_pool *pool, long connections)
{
	if (curl_multi_setopt(pool->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, connections) !=
		    CURLM_OK ||
	    curl_multi_setopt(pool->multi, CURLMOPT_MAXCONNECTS, connections) != CURLM_OK)
		log_error("%s: cannot set the upstream connection limit", __func__);
}

static void pool_free(struct upstream_pool *pool)
{
	/* closes the pooled connections: close_socket_cb forgets their watches */
	if (pool->multi != NULL)
		curl_multi_cleanup(pool->multi);
	if (pool->timer != NULL)
		event_free(pool->timer);
}

void upstream_set_conf(struct upstream *upstream, const struct conf *conf)
{
	pool_limit(&upstream->status, (long)conf->upstream_max_connections);
	pool_limit(&upstream->download, (long)conf->max_downloads);
	upstream->keepalive = timeval_of(conf->upstream_keepalive_timeout_ms);
	upstream->applied_ms = now_ms();
}

struct upstream *upstream_new(struct event_base *base, const struct conf *conf)
{
	struct upstream *upstream = calloc(1, sizeof(*upstream));

	if (upstream == NULL)
		goto fail;
	upstream->base = base;
	if (pool_init(&upstream->status, upstream) < 0 ||
	    pool_init(&upstream->download, upstream) < 0)
		goto fail;
	upstream_set_conf(upstream, conf);
	return upstream;
fail:
	log_error("%s: cannot set up the libcurl multi handles", __func__);
	upstream_free(upstream);
	return NULL;
}

static void call_free(struct upstream_call *call)
{
	struct curl_slist *header;

	if (call->easy != NULL) {
		CURLMcode rc = curl_multi_remove_handle(call->pool->multi, call->easy);

		if (rc != CURLM_OK)
			log_error("%s: curl_multi_remove_handle: %s", __func__,
				  curl_multi_strerror(rc));
		curl_easy_cleanup(call->easy);
	}
	for (header = call->headers; header != NULL; header = header->next)
		OPENSSL_cleanse(header->data, strlen(header->data));
	curl_slist_free_all(call->headers);
	if (call->body != NULL)
		evbuffer_free(call->body);
	evhttp_clear_headers(&call->response_headers);
	if (call->deadline != NULL)
		event_free(call->deadline);
	if (call->idle_timer != NULL)
		event_free(call->idle_timer);
	if (call->tls_drain != NULL)
		event_free(call->tls_drain);
	DL_DELETE(call->upstream->calls, call);
	free(call);
}

void upstream_free(struct upstream *upstream)
{
	struct idle_connection *idle, *next;

	if (upstream == NULL)
		return;
	while (upstream->calls != NULL)
		call_free(upstream->calls);
	pool_free(&upstream->status);
	pool_free(&upstream->download);
	HASH_ITER(hh, upstream->idle, idle, next)
	{
		idle_forget(upstream, idle->fd);
	}
	free(upstream);
}

void upstream_cancel(struct upstream_call *call)
{
	if (call != NULL)
		call_free(call);
}

static enum upstream_outcome classify(const struct upstream_call *call, CURLcode code)
{
	if (call->invalid != NULL)
		return UPSTREAM_INVALID;
	if (call->stopped)
		return UPSTREAM_OK;
	switch (code) {
	case CURLE_OK:
		return UPSTREAM_OK;
	case CURLE_OPERATION_TIMEDOUT:
		return UPSTREAM_TIMEOUT;
	case CURLE_WRITE_ERROR:
	case CURLE_FILESIZE_EXCEEDED:
		return call->too_large || call->head_too_large ? UPSTREAM_TOO_LARGE
							       : UPSTREAM_FAILED;
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_BAD_CONTENT_ENCODING:
		return UPSTREAM_INVALID;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
		return UPSTREAM_CONNECT_FAILED;
	default:
		return UPSTREAM_FAILED;
	}
}

static const char *failure_text(const struct upstream_call *call, CURLcode code,
				enum upstream_outcome outcome)
{
	if (call->invalid != NULL)
		return call->invalid;
	if (call->head_too_large)
		return "the upstream's headers are over 64 KiB";
	if (outcome == UPSTREAM_TOO_LARGE)
		return "the upstream's answer is over 1 MiB";
	return call->error[0] != '\0' ? call->error : curl_easy_strerror(code);
}

static void call_finish(struct upstream_call *call, CURLcode code)
{
	struct upstream_result result = { 0 };
	char *content_type = NULL;

	result.outcome = classify(call, code);
	result.body = call->body;
	if (curl_easy_getinfo(call->easy, CURLINFO_TOTAL_TIME, &result.seconds) != CURLE_OK)
		result.seconds = 0;
	if (result.outcome == UPSTREAM_OK) {
		result.status = call->head.status;
		if (curl_easy_getinfo(call->easy, CURLINFO_CONTENT_TYPE, &content_type) !=
			    CURLE_OK ||
		    !call->have_head) {
			result.outcome = UPSTREAM_FAILED;
			result.status = 0;
			snprintf(call->error, sizeof(call->error), "no response head");
		}
		result.content_type = content_type;
	}
	if (result.outcome != UPSTREAM_OK)
		result.error = failure_text(call, code, result.outcome);
	if (code == CURLE_OK && result.outcome == UPSTREAM_OK)
		idle_watch(call);
	metrics_upstream(result.outcome == UPSTREAM_OK ? (int)result.status : 0,
			 result.outcome == UPSTREAM_TIMEOUT, result.seconds);
	call->done(&result, call->arg);
	call_free(call);
}

static void check_multi_info(struct upstream_pool *pool)
{
	CURLMsg *message;
	int left;

	while ((message = curl_multi_info_read(pool->multi, &left)) != NULL) {
		struct upstream_call *call = NULL;

		if (message->msg != CURLMSG_DONE)
			continue;
		if (curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, &call) !=
			    CURLE_OK ||
		    call == NULL) {
			log_error("%s: finished transfer without its call", __func__);
			continue;
		}
		call_finish(call, message->data.result);
	}
}

/* Timers of a call. */

/* upstream_timeout passed: for a status call, or for a download still without its head. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct upstream_call *call = arg;

	(void)fd;
	(void)what;
	snprintf(call->error, sizeof(call->error), "%s",
		 call->handlers.headers != NULL
			 ? "no complete response head from the upstream within upstream_timeout"
			 : "no answer from the upstream within upstream_timeout");
	call_finish(call, CURLE_OPERATION_TIMEDOUT);
}

/* A byte of body arrived: the idle clock of a download starts again. */
static void idle_restart(struct upstream_call *call)
{
	if (call->idle_timer != NULL && evtimer_add(call->idle_timer, &call->idle_timeout) < 0)
		log_error("%s: cannot arm the idle timer", __func__);
}

/*
 * No byte for upstream_idle_timeout. A transfer we paused ourselves (the client
 * is behind) is not idle: the clock starts again when it resumes.
 */
static void on_idle(evutil_socket_t fd, short what, void *arg)
{
	struct upstream_call *call = arg;

	(void)fd;
	(void)what;
	if (call->paused)
		return;
	snprintf(call->error, sizeof(call->error),
		 "no data from the upstream for upstream_idle_timeout");
	call_finish(call, CURLE_OPERATION_TIMEDOUT);
}

/*
 * With read-ahead, OpenSSL may hold whole records it read off the socket. epoll
 * cannot see them, and libcurl's own "more to read?" test asks SSL_pending (the
 * current record only) and then the socket. If that test says no while records
 * wait, nothing would ever read them: the end of a body would sit there until
 * upstream_idle_timeout. So after each round of reading (progress_cb), look,
 * and if records wait, have libcurl read again from the loop.
 */
static void tls_check(struct upstream_call *call)
{
	SSL *ssl = call_ssl(call);

	if (ssl != NULL)
		call->ssl = ssl;
	if (ssl != NULL && SSL_pending(ssl) == 0 && SSL_has_pending(ssl))
		event_active(call->tls_drain, EV_READ, 0);
}

/*
 * CURLOPT_XFERINFOFUNCTION: libcurl calls it after each round of reading (and
 * about once a second otherwise), whatever the round read: body, headers, or only
 * chunked framing. That is where records left in OpenSSL's buffer show.
 */
static int progress_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	(void)ulnow;
	tls_check(arg);
	return 0;
}

static void on_tls_drain(evutil_socket_t fd, short what, void *arg)
{
	struct upstream_call *call = arg;
	SSL *ssl;

	(void)fd;
	(void)what;
	/* paused: curl_easy_pause(CONT) makes libcurl read first thing anyway */
	if (call->paused || call->socket == CURL_SOCKET_BAD || (ssl = call_ssl(call)) == NULL ||
	    !SSL_has_pending(ssl))
		return;
	/* may finish and free the call */
	socket_action(call->pool, call->socket, CURL_CSELECT_IN);
}

/*
 * CURLOPT_SSL_CTX_FUNCTION: read-ahead for every upstream connection. Without
 * it OpenSSL makes two recv calls per TLS record (the 5-byte header, then the
 * rest); with it, one recv fills its buffer (one record and the start of the
 * next). A download of 1 GiB in 16 KiB records costs 65 k recv calls instead of
 * 131 k (nginx sets read-ahead too). A bigger buffer
 * (SSL_CTX_set_default_read_buffer_len) would save more calls but OpenSSL then
 * moves the unread rest to the buffer's start before each record: measured, it
 * costs more than it saves.
 */
static CURLcode ssl_ctx_cb(CURL *easy, void *ssl_ctx, void *arg)
{
	(void)easy;
	(void)arg;
	SSL_CTX_set_read_ahead(ssl_ctx, 1);
	return CURLE_OK;
}

static size_t write_cb(char *data, size_t size, size_t count, void *userp)
{
	struct upstream_call *call = userp;
	size_t bytes = size * count;

	idle_restart(call);

	if (call->mode == UPSTREAM_STREAM) {
		int taken = call->handlers.data(data, bytes, call->arg);

		if (taken > 0) {
			call->paused = 1;
			return CURL_WRITEFUNC_PAUSE;
		}
		return taken == 0 ? bytes : 0;
	}
	if (call->mode == UPSTREAM_ABORT || call->mode == UPSTREAM_STOP)
		return 0;

	if (evbuffer_get_length(call->body) + bytes > UPSTREAM_MAX_JSON_BYTES) {
		call->too_large = 1;
		return 0;
	}
	if (evbuffer_add(call->body, data, bytes) < 0)
		return 0;
	return bytes;
}

/* RFC 9110 token characters: what a header name is made of. */
static int is_token_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/*
 * Keeps one "Name: value" line of the response head. A line that is not one
 * (no colon, a name that is not a token, obs-fold continuation) makes the head
 * untrustworthy: RFC 9112 5.2 lets a gateway answer 502 for a folded one.
 */
static int keep_header(struct upstream_call *call, const char *line, size_t length)
{
	char *copy = malloc(length + 1);
	char *colon, *value, *end;
	int result = -1;

	if (copy == NULL)
		return -1;
	memcpy(copy, line, length);
	copy[length] = '\0';
	colon = strchr(copy, ':');
	for (char *c = copy; colon != NULL && c < colon; c++) {
		if (!is_token_char(*c))
			colon = NULL;
	}
	if (colon == NULL || colon == copy || memchr(copy, '\0', length) != NULL) {
		call->invalid = "the upstream sent a malformed header line";
		goto done;
	}
	*colon = '\0';
	for (value = colon + 1; *value == ' ' || *value == '\t'; value++)
		;
	for (end = value + strlen(value); end > value && (end[-1] == '\r' || end[-1] == '\n' ||
							  end[-1] == ' ' || end[-1] == '\t');
	     end--)
		;
	*end = '\0';
	if (strpbrk(value, "\r\n") != NULL) {
		call->invalid = "the upstream sent a malformed header line";
		goto done;
	}
	result = evhttp_add_header(&call->response_headers, copy, value);
done:
	free(copy);
	return result;
}

/* The head is complete: checked, then the download handler decides. 0 to go on. */
static int head_done(struct upstream_call *call)
{
	const char *why = NULL;

	if (framing_check(call->head.status, &call->response_headers,
			  &call->head.content_length, &why) < 0) {
		call->invalid = why;
		return -1;
	}
	call->head.headers = &call->response_headers;
	call->have_head = 1;
	if (call->handlers.headers == NULL)
		return 0;
	/* the head is in: from now on the body only has to keep flowing */
	if (call->deadline != NULL)
		event_del(call->deadline);
	idle_restart(call);
	call->mode = call->handlers.headers(&call->head, call->arg);
	if (call->mode == UPSTREAM_STOP)
		call->stopped = 1;
	return call->mode == UPSTREAM_ABORT || call->mode == UPSTREAM_STOP ? -1 : 0;
}

/*
 * CURLOPT_HEADERFUNCTION: every head line of every response, interim ones too.
 * Each head starts over; 100, 102 and 103 are followed by the real one (101 is
 * final: libcurl would hand over the raw bytes after it as a body).
 */
static size_t header_cb(char *data, size_t size, size_t count, void *userp)
{
	struct upstream_call *call = userp;
	size_t bytes = size * count;
	long status = 0;

	if (bytes >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		evhttp_clear_headers(&call->response_headers);
		return bytes;
	}
	call->header_bytes += bytes;
	if (call->header_bytes > UPSTREAM_MAX_HEADER_BYTES) {
		call->head_too_large = 1;
		return 0;
	}
	if (bytes > 0 && (data[0] == '\r' || data[0] == '\n')) {
		if (curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
			return 0;
		if (status >= 100 && status < 200 && status != 101)
			return bytes;
		call->head.status = status;
		return head_done(call) == 0 ? bytes : 0;
	}
	if (keep_header(call, data, bytes) < 0)
		return 0;
	return bytes;
}

void upstream_resume(struct upstream_call *call)
{
	CURLcode rc;

	if (call == NULL || !call->paused)
		return;
	call->paused = 0;
	idle_restart(call);
	rc = curl_easy_pause(call->easy, CURLPAUSE_CONT);
	if (rc != CURLE_OK)
		log_error("%s: curl_easy_pause: %s", __func__, curl_easy_strerror(rc));
}

/* Appends "name: value" to the call's headers, wiping the temporary copy. */
static int add_header(struct upstream_call *call, const char *name, const char *value)
{
	char line[CONF_MAX_SECRET_BYTES + 64];
	struct curl_slist *list;
	int n = snprintf(line, sizeof(line), "%s: %s", name, value);

	if (n < 0 || (size_t)n >= sizeof(line))
		return -1;
	list = curl_slist_append(call->headers, line);
	OPENSSL_cleanse(line, sizeof(line));
	if (list == NULL)
		return -1;
	call->headers = list;
	return 0;
}

static char *status_url(CURL *easy, const char *base, const struct conf_credential *credential,
			const struct query *q)
{
	char *user_id = curl_easy_escape(easy, credential->user_id, 0);
	char *export_id = curl_easy_escape(easy, q->data_export_id, 0);
	char *url = NULL;

	if (user_id != NULL && export_id != NULL &&
	    asprintf(&url, "%s/export_status?user_id=%s&data_export_id=%s%s", base, user_id,
		     export_id, q->download ? "&download=true" : "") < 0)
		url = NULL;
	curl_free(user_id);
	curl_free(export_id);
	return url;
}

/*
 * How long libcurl may keep its parsed CA bundle: never from before the last
 * reload, so a bundle replaced under the same path is read again. libcurl
 * drops a cached copy older than this many whole seconds; in the first second
 * after a reload 0 makes it read the bundle for every new connection (and
 * cache none), after that the copy from before the reload is always older.
 */
static long ca_cache_seconds(const struct upstream *upstream)
{
	int64_t since = (now_ms() - upstream->applied_ms) / 1000;

	return since < UPSTREAM_CA_CACHE_SECONDS ? (long)since : UPSTREAM_CA_CACHE_SECONDS;
}

#define SETOPT(easy, option, value)                                                  \
	do {                                                                         \
		if (curl_easy_setopt(easy, option, value) != CURLE_OK) {             \
			log_error("%s: curl_easy_setopt(%s) failed", __func__,       \
				  #option);                                          \
			goto fail;                                                   \
		}                                                                    \
	} while (0)

/* Request options only downloads have. */
static int configure_download(struct upstream_call *call, const struct conf *conf,
			      const char *range, const char *if_range)
{
	CURL *easy = call->easy;

	call->idle_timeout = timeval_of(conf->upstream_idle_timeout_ms);
	call->idle_timer = evtimer_new(call->upstream->base, on_idle, call);
	if (call->idle_timer == NULL)
		goto fail;
	if ((range != NULL && add_header(call, "Range", range) < 0) ||
	    (if_range != NULL && add_header(call, "If-Range", if_range) < 0))
		goto fail;
	SETOPT(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	return 0;
fail:
	return -1;
}

static int call_configure(struct upstream_call *call, const struct conf *conf,
			  const struct conf_credential *credential, const struct query *q)
{
	CURL *easy = call->easy;
	char *url = status_url(easy, conf->upstream, credential, q);
	long connect_ms = conf->upstream_timeout_ms < UPSTREAM_MAX_CONNECT_MS
				  ? (long)conf->upstream_timeout_ms
				  : UPSTREAM_MAX_CONNECT_MS;
	char bearer[CONF_MAX_SECRET_BYTES + 16];
	int n;

	if (url == NULL)
		goto fail;
	n = snprintf(bearer, sizeof(bearer), "Bearer %s", credential->api_key);
	if (n < 0 || (size_t)n >= sizeof(bearer) || add_header(call, "Authorization", bearer) < 0)
		goto fail;
	if (credential->kind == CONF_CREDENTIAL_PERSONAL &&
	    add_header(call, "x-auth-key", credential->user_id) < 0)
		goto fail;
	if (!q->download && add_header(call, "Accept", "application/json") < 0)
		goto fail;
	/* Content codings are refused (framing.c), so ask for none. */
	if (add_header(call, "Accept-Encoding", "identity") < 0)
		goto fail;
	OPENSSL_cleanse(bearer, sizeof(bearer));

	SETOPT(easy, CURLOPT_URL, url);
	SETOPT(easy, CURLOPT_HTTPHEADER, call->headers);
	SETOPT(easy, CURLOPT_PROTOCOLS_STR, "https");
	SETOPT(easy, CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (conf->upstream_ca != NULL) {
		SETOPT(easy, CURLOPT_CAINFO, conf->upstream_ca);
		/* only that bundle: Debian's libcurl also trusts /etc/ssl/certs by default */
		SETOPT(easy, CURLOPT_CAPATH, NULL);
	}
	SETOPT(easy, CURLOPT_CA_CACHE_TIMEOUT, ca_cache_seconds(call->upstream));
	SETOPT(easy, CURLOPT_MAXAGE_CONN, (long)(conf->upstream_keepalive_timeout_ms / 1000));
	SETOPT(easy, CURLOPT_NOSIGNAL, 1L);
	if (!q->download)
		SETOPT(easy, CURLOPT_TIMEOUT_MS, (long)conf->upstream_timeout_ms);
	SETOPT(easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
	SETOPT(easy, CURLOPT_USERAGENT, UPSTREAM_USER_AGENT);
	SETOPT(easy, CURLOPT_ERRORBUFFER, call->error);
	SETOPT(easy, CURLOPT_WRITEFUNCTION, write_cb);
	SETOPT(easy, CURLOPT_WRITEDATA, call);
	SETOPT(easy, CURLOPT_HEADERFUNCTION, header_cb);
	SETOPT(easy, CURLOPT_HEADERDATA, call);
	SETOPT(easy, CURLOPT_CLOSESOCKETFUNCTION, close_socket_cb);
	SETOPT(easy, CURLOPT_CLOSESOCKETDATA, call->upstream);
	SETOPT(easy, CURLOPT_PREREQFUNCTION, prereq_cb);
	SETOPT(easy, CURLOPT_PREREQDATA, call);
	SETOPT(easy, CURLOPT_SSL_CTX_FUNCTION, ssl_ctx_cb);
	SETOPT(easy, CURLOPT_NOPROGRESS, 0L);
	SETOPT(easy, CURLOPT_XFERINFOFUNCTION, progress_cb);
	SETOPT(easy, CURLOPT_XFERINFODATA, call);
	SETOPT(easy, CURLOPT_PRIVATE, call);
	free(url);
	return 0;
fail:
	OPENSSL_cleanse(bearer, sizeof(bearer));
	free(url);
	return -1;
}

static struct upstream_call *call_start(struct upstream *upstream, const struct conf *conf,
				       const struct conf_credential *credential,
				       const struct query *q, const char *range,
				       const char *if_range,
				       const struct upstream_download_handlers *handlers,
				       upstream_done_cb done, void *arg)
{
	struct upstream_call *call = calloc(1, sizeof(*call));
	struct timeval deadline = timeval_of(conf->upstream_timeout_ms);
	CURLMcode rc;

	if (call == NULL)
		return NULL;
	call->upstream = upstream;
	call->pool = handlers != NULL ? &upstream->download : &upstream->status;
	call->done = done;
	call->arg = arg;
	if (handlers != NULL)
		call->handlers = *handlers;
	call->mode = UPSTREAM_BUFFER;
	call->socket = CURL_SOCKET_BAD;
	call->head.content_length = -1;
	/* TAILQ_INIT, which event2's headers do not export */
	call->response_headers.tqh_first = NULL;
	call->response_headers.tqh_last = &call->response_headers.tqh_first;
	DL_APPEND(upstream->calls, call);
	call->body = evbuffer_new();
	call->easy = curl_easy_init();
	call->tls_drain = event_new(upstream->base, -1, 0, on_tls_drain, call);
	/* libcurl's own timeout does not count time queued behind the connection limit */
	call->deadline = evtimer_new(upstream->base, on_deadline, call);
	if (call->body == NULL || call->easy == NULL || call->tls_drain == NULL ||
	    call->deadline == NULL || evtimer_add(call->deadline, &deadline) < 0 ||
	    call_configure(call, conf, credential, q) < 0 ||
	    (handlers != NULL && configure_download(call, conf, range, if_range) < 0))
		goto fail;
	rc = curl_multi_add_handle(call->pool->multi, call->easy);
	if (rc != CURLM_OK) {
		log_error("%s: curl_multi_add_handle: %s", __func__, curl_multi_strerror(rc));
		curl_easy_cleanup(call->easy);
		call->easy = NULL;
		goto fail;
	}
	return call;
fail:
	log_error("%s: cannot start the upstream request", __func__);
	call_free(call);
	return NULL;
}

struct upstream_call *upstream_start_status(struct upstream *upstream,
					    const struct conf *conf,
					    const struct conf_credential *credential,
					    const struct query *q, upstream_done_cb done,
					    void *arg)
{
	return call_start(upstream, conf, credential, q, NULL, NULL, NULL, done, arg);
}

struct upstream_call *upstream_start_download(struct upstream *upstream,
					      const struct conf *conf,
					      const struct conf_credential *credential,
					      const struct query *q, const char *range,
					      const char *if_range,
					      const struct upstream_download_handlers *handlers,
					      void *arg)
{
	return call_start(upstream, conf, credential, q, range, if_range, handlers,
			  handlers->done, arg);
}
