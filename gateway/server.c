/*
 * server.c -- evhttp front end: routes, validates and answers client requests,
 * handing /export_status to upstream.c. One struct exchange per client request,
 * torn down in exactly one place, whichever way the request ends.
 */
#include "config.h"

#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
/* http_struct.h: the request's HTTP version and method, which 2.1 has no getter for */
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>

#include "access_log.h"
#include "answer.h"
#include "auth.h"
#include "cache.h"
#include "checks.h"
#include "conf.h"
#include "listeners.h"
#include "log.h"
#include "metrics.h"
#include "query.h"
#include "relay.h"
#include "upstream.h"

/* A download's client is looked at this many times per client_timeout. */
#define SERVER_STALL_CHECKS 4

/* The server's side of an open client connection (listeners.c keeps the rest). */
struct connection {
	struct exchange *exchange; /* the request being answered, NULL between them */
};

struct server {
	struct event_base *base;
	struct listeners *listeners;
	struct conf *conf;
	struct auth *auth;
	struct upstream *upstream;
	struct cache *cache;
	struct access_log *access_log; /* NULL: off */
	size_t active; /* requests begun and not yet completed or dropped */
	size_t downloads; /* relays running, for max_downloads */
	int draining;
	void (*drained)(void *arg);
	void *drained_arg;
	struct event *drain_check;
};

struct exchange {
	struct server *server;
	struct evhttp_request *req;
	struct evhttp_connection *connection;
	struct connection *owner; /* NULL once the connection is gone */
	enum route route;
	struct cache_waiter *waiter;
	struct relay *relay;
	int download_counted; /* holds one of server->downloads */
	int streaming;	      /* a relayed body is being sent */
	int relay_ended;      /* the relay said how the body ended */
	int close_when_flushed;
	int must_close;	      /* the bytes after this request cannot be trusted */
	int http10;	      /* an HTTP/1.0 client: no chunked framing */
	const char *end_note; /* why it ended, when not the usual way */
	struct event *client_watch; /* notices a client leaving while we wait */
	struct evbuffer *output;    /* a download's: watched for progress */
	struct evbuffer_cb_entry *output_watch;
	struct event *stall_check; /* a download's client that takes nothing */
	struct event *closer;	   /* closes a cut download once its bytes are out */
	int64_t last_progress_ms;
	uint64_t drained;	/* bytes that left the output buffer for the socket */
	uint64_t drained_seen;	/* as the stall check last saw them */
	int unsent_seen;	/* the socket's send queue, as the stall check last saw it */
	struct timespec start;
	enum evhttp_cmd_type method_type;
	int head;
	int status;
	size_t bytes;
	long upstream_status;
	const char *cache_result; /* X-Cache value, NULL when none */
	struct sockaddr_storage peer; /* formatted only when the access log is on */
	char method[8];
	char path[96];
	char export_id[QUERY_MAX_ID_BYTES + 1];
	char client[64];
	char credential[64];
};

static const char *method_name(enum evhttp_cmd_type method)
{
	switch (method) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	case EVHTTP_REQ_TRACE:
		return "TRACE";
	case EVHTTP_REQ_CONNECT:
		return "CONNECT";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	}
	return "OTHER";
}

static int64_t now_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static double elapsed_ms(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) * 1e3 +
	       (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

/* Copies client text for the log: printable ASCII kept, the rest as '?'. */
static void copy_printable(char *out, size_t cap, const char *in)
{
	size_t n = 0;

	for (; in != NULL && *in != '\0' && n + 1 < cap; in++)
		out[n++] = (*in > 0x20 && *in < 0x7f && *in != '"') ? *in : '?';
	out[n] = '\0';
}

/* The request target as sent, up to its query: what the access log names. */
static void copy_target_path(char *out, size_t cap, const char *target)
{
	size_t length = target != NULL ? strcspn(target, "?#") : 0;
	char path[sizeof(((struct exchange *)NULL)->path)];

	if (length >= sizeof(path))
		length = sizeof(path) - 1;
	if (target != NULL)
		memcpy(path, target, length);
	path[length] = '\0';
	copy_printable(out, cap, path);
}

static void remember_peer(struct exchange *ex)
{
	const struct sockaddr *peer = evhttp_connection_get_addr(ex->connection);

	if (peer != NULL && peer->sa_family == AF_INET)
		memcpy(&ex->peer, peer, sizeof(struct sockaddr_in));
	else if (peer != NULL && peer->sa_family == AF_INET6)
		memcpy(&ex->peer, peer, sizeof(struct sockaddr_in6));
}

static void format_peer(const struct sockaddr_storage *peer, char *out, size_t cap)
{
	const void *address = NULL;

	if (peer->ss_family == AF_INET)
		address = &((const struct sockaddr_in *)(const void *)peer)->sin_addr;
	else if (peer->ss_family == AF_INET6)
		address = &((const struct sockaddr_in6 *)(const void *)peer)->sin6_addr;
	if (address == NULL || inet_ntop(peer->ss_family, address, out, (socklen_t)cap) == NULL)
		snprintf(out, cap, "?");
}

static void access_log_write(const struct exchange *ex, const char *outcome)
{
	char peer[INET6_ADDRSTRLEN], line[1024];
	int length;

	if (ex->server->access_log == NULL)
		return;
	format_peer(&ex->peer, peer, sizeof(peer));
	length = snprintf(line, sizeof(line),
			  "%s client=%s credential=%s \"%s %s\" %d %zu %.1fms cache=%s "
			  "upstream=%ld export=%s%s%s\n",
			  peer, ex->client[0] ? ex->client : "-",
			  ex->credential[0] ? ex->credential : "-", ex->method, ex->path,
			  ex->status, ex->bytes, elapsed_ms(&ex->start),
			  ex->cache_result ? ex->cache_result : "-", ex->upstream_status,
			  ex->export_id[0] ? ex->export_id : "-", outcome ? " " : "",
			  outcome ? outcome : "");
	if (length <= 0)
		return;
	if ((size_t)length >= sizeof(line)) {
		length = sizeof(line) - 1;
		line[length - 1] = '\n';
	}
	access_log_append(ex->server->access_log, line, (size_t)length);
}

static void server_check_drained(struct server *server)
{
	if (server->draining && server->active == 0 && server->drain_check != NULL)
		event_active(server->drain_check, EV_TIMEOUT, 0);
}

static void client_watch_stop(struct exchange *ex)
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
 * as EV_CLOSED: so the watch takes EV_READ too, edge-triggered, so that bytes a
 * client sends meanwhile (a pipelined request) wake it once, not on every turn.
 * The client gone, the connection is closed now, which aborts the upstream call
 * through on_connection_closed.
 */
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
		} else {
			n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
			if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
						errno == EINTR)))
				return; /* bytes waiting, or nothing after all */
		}
	}
	evhttp_connection_free(ex->connection);
}

static void client_watch_start(struct exchange *ex)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->connection);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	short kind = EV_READ | EV_ET | EV_PERSIST;

	if (fd < 0)
		return;
	if (event_base_get_features(ex->server->base) & EV_FEATURE_EARLY_CLOSE)
		kind |= EV_CLOSED;
	ex->client_watch = event_new(ex->server->base, fd, kind, on_client_watch, ex);
	if (ex->client_watch != NULL && event_add(ex->client_watch, NULL) == 0)
		return;
	/*
	 * libevent refuses an edge-triggered event beside a level-triggered one on
	 * the same socket (a TLS bufferevent may keep one): a FIN is still seen.
	 */
	client_watch_stop(ex);
	kind &= ~(EV_ET | EV_READ);
	ex->client_watch = kind & EV_CLOSED ? event_new(ex->server->base, fd, kind,
							  on_client_watch, ex)
					    : NULL;
	if (ex->client_watch == NULL || event_add(ex->client_watch, NULL) < 0) {
		log_warn("%s: cannot watch the client connection", __func__);
		client_watch_stop(ex);
	}
}

/* Download progress: the client's output buffer drains, or nothing is owed. */

static void output_watch_stop(struct exchange *ex)
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
	if (ex->close_when_flushed && evbuffer_get_length(buffer) == 0)
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
	int64_t every = ex->server->conf->client_timeout_ms / SERVER_STALL_CHECKS;
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

static int output_watch_start(struct exchange *ex)
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
		output_watch_stop(ex);
		return -1;
	}
	stall_check_arm(ex);
	bufferevent_set_timeouts(bev, NULL, NULL);
	return 0;
}

static void download_release(struct exchange *ex)
{
	if (ex->download_counted)
		ex->server->downloads--;
	ex->download_counted = 0;
}

/*
 * The one teardown of an exchange: logs it, cancels its upstream call, and gives
 * the request back to libevent (or frees it when libevent let go of it).
 */
static void exchange_close(struct exchange *ex, const char *outcome)
{
	struct server *server = ex->server;

	int restore_timeouts = ex->output_watch != NULL;

	if (ex->relay != NULL && ex->streaming) {
		/* body bytes that left, not those still queued when the end came */
		uint64_t handed = relay_bytes_handed(ex->relay);
		size_t queued = ex->output != NULL ? evbuffer_get_length(ex->output) : 0;

		ex->bytes = (size_t)(handed > queued ? handed - queued : 0);
	}
	access_log_write(ex, outcome);
	metrics_request(ex->route, ex->status);
	client_watch_stop(ex);
	output_watch_stop(ex);
	cache_waiter_cancel(ex->waiter);
	ex->waiter = NULL;
	if (ex->streaming && !ex->relay_ended)
		metrics_download_finished(METRICS_DOWNLOAD_ABORTED);
	relay_free(ex->relay);
	ex->relay = NULL;
	download_release(ex);
	if (ex->owner != NULL) {
		ex->owner->exchange = NULL;
		listeners_idle(server->listeners, ex->connection, restore_timeouts);
	}
	evhttp_request_set_on_complete_cb(ex->req, NULL, NULL);
	/* libevent lets go of a request whose client left before its reply ended */
	if (evhttp_request_get_connection(ex->req) == NULL)
		evhttp_request_free(ex->req);
	free(ex);
	server->active--;
	server_check_drained(server);
}

/* evhttp: the whole answer was written. */
static void on_complete(struct evhttp_request *req, void *arg)
{
	(void)req;
	exchange_close(arg, NULL);
}

static void *on_connection_opened(struct evhttp_connection *evcon, void *arg)
{
	(void)evcon;
	(void)arg;
	return calloc(1, sizeof(struct connection)); /* NULL: served, just not tracked */
}

/* The client connection is being freed, maybe in the middle of a request. */
static void on_connection_closed(struct evhttp_connection *evcon, void *context, void *arg)
{
	struct connection *connection = context;
	struct exchange *ex = connection ? connection->exchange : NULL;

	(void)evcon;
	(void)arg;
	if (ex != NULL) {
		ex->owner = NULL;
		ex->connection = NULL;
		if (ex->status == 0)
			ex->status = 499; /* nginx's "client closed request" */
		exchange_close(ex, ex->end_note ? ex->end_note : "client-closed");
	}
	free(connection);
}

/*
 * This reply is the connection's last. evhttp decides from the request's
 * headers too: an HTTP/1.0 keep-alive request would get "Connection: keep-alive"
 * beside our "close" (and a computed Content-Length), and a CONNECT request is
 * never closed by it (evhttp_is_request_connection_close), so both are
 * neutralised first. The client's unread bytes are drained before the close
 * (listeners_linger), so the kernel does not reset the answer away.
 */
static void close_after_reply(struct exchange *ex)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(ex->req);

	if (evhttp_find_header(headers, "Connection") != NULL)
		return;
	evhttp_remove_header(evhttp_request_get_input_headers(ex->req), "Connection");
	if (ex->req->type == EVHTTP_REQ_CONNECT)
		ex->req->type = EVHTTP_REQ_GET;
	evhttp_add_header(headers, "Connection", "close");
	if (ex->connection != NULL)
		listeners_linger(ex->server->listeners, ex->connection);
}

static void reply(struct exchange *ex, int status, const char *content_type,
		  struct evbuffer *body)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(ex->req);
	size_t length = body ? evbuffer_get_length(body) : 0;
	char length_text[32];

	ex->status = status;
	ex->bytes = ex->head ? 0 : length;
	if (content_type != NULL)
		evhttp_add_header(headers, "Content-Type", content_type);
	if (ex->server->draining || ex->must_close)
		close_after_reply(ex);
	if (ex->head) {
		/* Same headers as GET, no body: evhttp would otherwise send it. */
		snprintf(length_text, sizeof(length_text), "%zu", length);
		evhttp_add_header(headers, "Content-Length", length_text);
		body = NULL;
	}
	evhttp_send_reply(ex->req, status, NULL, body);
}

static void reply_error(struct exchange *ex, int status, const char *code,
			const char *message)
{
	struct evbuffer *body = evbuffer_new();
	size_t length = 0;
	char *text = answer_error_body(code, message, &length);

	if (body == NULL || text == NULL || evbuffer_add(body, text, length) < 0) {
		log_error("%s: out of memory answering %d", __func__, status);
		if (body != NULL)
			evbuffer_drain(body, evbuffer_get_length(body));
	}
	free(text);
	reply(ex, status, "application/json", body);
	if (body != NULL)
		evbuffer_free(body);
}

static void reply_json_text(struct exchange *ex, int status, const char *text)
{
	struct evbuffer *body = evbuffer_new();

	if (body == NULL || evbuffer_add(body, text, strlen(text)) < 0) {
		if (body != NULL)
			evbuffer_free(body);
		reply_error(ex, 500, "internal", "out of memory");
		return;
	}
	reply(ex, status, "application/json", body);
	evbuffer_free(body);
}

static const char *const x_cache_names[] = {
	[CACHE_HIT] = "HIT",
	[CACHE_MISS] = "MISS",
	[CACHE_COALESCED] = "COALESCED",
	[CACHE_STALE] = "STALE",
};

static const enum metrics_cache_result cache_metric[] = {
	[CACHE_HIT] = METRICS_CACHE_HIT,
	[CACHE_MISS] = METRICS_CACHE_MISS,
	[CACHE_COALESCED] = METRICS_CACHE_COALESCED,
	[CACHE_STALE] = METRICS_CACHE_STALE,
};

/* X-Cache, RFC 9211 Cache-Status, RFC 9111 Age and Cache-Control. */
static void add_cache_headers(struct exchange *ex, const struct cache_answer *answer)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(ex->req);
	char text[96];

	evhttp_add_header(headers, "X-Cache", x_cache_names[answer->result]);
	switch (answer->result) {
	case CACHE_HIT:
	case CACHE_STALE:
		snprintf(text, sizeof(text), "gumloop-gateway; hit; ttl=%lld",
			 (long long)answer->ttl_seconds);
		break;
	case CACHE_MISS:
		snprintf(text, sizeof(text), "gumloop-gateway; fwd=miss");
		break;
	case CACHE_COALESCED:
		snprintf(text, sizeof(text), "gumloop-gateway; fwd=miss; collapsed");
		break;
	}
	evhttp_add_header(headers, "Cache-Status", text);
	if (!answer->cached) {
		evhttp_add_header(headers, "Cache-Control", "no-store");
		return;
	}
	snprintf(text, sizeof(text), "%lld", (long long)answer->age_seconds);
	evhttp_add_header(headers, "Age", text);
	snprintf(text, sizeof(text), "private, max-age=%lld",
		 (long long)(answer->ttl_seconds > 0 ? answer->ttl_seconds : 0));
	evhttp_add_header(headers, "Cache-Control", text);
}

static void reply_answer(struct exchange *ex, const struct cache_answer *answer)
{
	struct evbuffer *body = evbuffer_new();

	if (body == NULL || evbuffer_add(body, answer->body, answer->body_length) < 0) {
		if (body != NULL)
			evbuffer_free(body);
		reply_error(ex, 500, "internal", "out of memory");
		return;
	}
	ex->upstream_status = answer->status;
	add_cache_headers(ex, answer);
	ex->cache_result = x_cache_names[answer->result];
	metrics_cache(cache_metric[answer->result]);
	reply(ex, answer->status, answer->content_type, body);
	evbuffer_free(body);
}

static void on_answer(const struct cache_answer *answer, void *arg)
{
	struct exchange *ex = arg;

	ex->waiter = NULL;
	client_watch_stop(ex);
	reply_answer(ex, answer);
}

static void on_relay_answer(const struct cache_answer *answer, void *arg)
{
	struct exchange *ex = arg;

	ex->relay_ended = 1;
	download_release(ex);
	client_watch_stop(ex);
	reply_answer(ex, answer);
}

static void on_relay_refused(int status, const char *code, const char *message, void *arg)
{
	struct exchange *ex = arg;

	ex->relay_ended = 1;
	download_release(ex);
	client_watch_stop(ex);
	ex->must_close = 1;
	if (status == 426)
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Upgrade",
				  "HTTP/1.1");
	reply_error(ex, status, code, message);
}

static void on_relay_started(int status, void *arg)
{
	struct exchange *ex = arg;

	/* evhttp watches the connection itself while it writes */
	client_watch_stop(ex);
	ex->status = status;
	ex->upstream_status = status;
	ex->streaming = 1;
	/* a 1.0 body is framed by its length; the connection is not reused after it */
	if (ex->http10 || ex->server->draining)
		close_after_reply(ex);
	if (output_watch_start(ex) < 0)
		log_warn("%s: cannot watch the download's progress", __func__);
	metrics_download_started();
}

static void on_relay_ended(enum relay_end how, uint64_t bytes, void *arg)
{
	struct exchange *ex = arg;

	(void)bytes;
	ex->relay_ended = 1;
	download_release(ex);
	if (how == RELAY_COMPLETE) {
		metrics_download_finished(METRICS_DOWNLOAD_COMPLETE);
		evhttp_send_reply_end(ex->req); /* may end the exchange before it returns */
		return;
	}
	metrics_download_finished(METRICS_DOWNLOAD_FAILED);
	ex->end_note = "upstream-failed-mid-body";
	/*
	 * No final chunk, or short of Content-Length: the client sees a truncated
	 * file. What it was sent so far goes out first, then the connection closes
	 * (on_output sees the queue empty; with nothing queued, that is now).
	 */
	listeners_linger(ex->server->listeners, ex->connection);
	ex->close_when_flushed = 1;
	if (ex->closer == NULL)
		evhttp_connection_free(ex->connection);
	else if (ex->output == NULL || evbuffer_get_length(ex->output) == 0)
		event_active(ex->closer, EV_TIMEOUT, 0);
}

static const struct relay_events relay_events = {
	.answer = on_relay_answer,
	.refused = on_relay_refused,
	.started = on_relay_started,
	.ended = on_relay_ended,
};

static void start_download(struct exchange *ex, const struct conf_credential *credential,
			   const struct query *q)
{
	struct server *server = ex->server;
	struct relay_request request = { .head = ex->head, .needs_length = ex->http10 };

	const struct evkeyvalq *headers = evhttp_request_get_input_headers(ex->req);

	if (checks_forwarded_header(headers, "Range", &request.range) < 0 ||
	    checks_forwarded_header(headers, "If-Range", &request.if_range) < 0) {
		reply_error(ex, 400, "bad_request", "Range or If-Range is malformed or too long");
		return;
	}
	if (server->downloads >= (size_t)server->conf->max_downloads) {
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Retry-After", "1");
		reply_error(ex, 503, "too_many_downloads",
			    "max_downloads downloads are running; retry shortly");
		return;
	}
	ex->relay = relay_start(server->upstream, server->cache, server->conf, credential, q,
				ex->req, &request, &relay_events, ex);
	if (ex->relay == NULL) {
		reply_error(ex, 503, "unavailable", "the upstream request could not be started");
		return;
	}
	server->downloads++;
	ex->download_counted = 1;
	client_watch_start(ex);
}

/* 401 with the challenge, or the client's index; -1 without [client] sections. */
static int authenticate(struct exchange *ex, int *client)
{
	struct server *server = ex->server;
	const struct sockaddr *peer = evhttp_connection_get_addr(ex->connection);
	const char *authorization;
	int wait;
	char text[16];

	*client = -1;
	if (!auth_tokens_required(server->auth))
		return 0;
	wait = peer != NULL ? auth_failure_wait(server->auth, peer) : 0;
	if (wait > 0) {
		snprintf(text, sizeof(text), "%d", wait);
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Retry-After",
				  text);
		reply_error(ex, 429, "rate_limited",
			    "too many requests with a bad token from this address; retry later");
		return -1;
	}
	authorization = evhttp_find_header(evhttp_request_get_input_headers(ex->req),
					   "Authorization");
	*client = auth_client(server->auth, authorization);
	if (*client < 0) {
		if (peer != NULL)
			auth_failure_record(server->auth, peer);
		evhttp_add_header(evhttp_request_get_output_headers(ex->req),
				  "WWW-Authenticate", "Bearer realm=\"gumloop-gateway\"");
		reply_error(ex, 401, "unauthorized",
			    authorization ? "the bearer token is not valid"
					  : "a bearer token is required");
		return -1;
	}
	copy_printable(ex->client, sizeof(ex->client), server->conf->clients[*client].name);
	return 0;
}

/* 429 with Retry-After when the client is over its rate. */
static int rate_limit(struct exchange *ex, int client)
{
	int retry_after = auth_rate_take(ex->server->auth, client);
	char text[16];

	if (retry_after == 0)
		return 0;
	snprintf(text, sizeof(text), "%d", retry_after);
	evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Retry-After", text);
	reply_error(ex, 429, "rate_limited", "this client is over its rate; retry later");
	return -1;
}

static void handle_export_status(struct exchange *ex)
{
	struct server *server = ex->server;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ex->req);
	const struct conf_credential *credential;
	const char *message = NULL;
	struct cache_answer answer;
	struct query q;
	int client, index;

	if (authenticate(ex, &client) < 0 || rate_limit(ex, client) < 0)
		return;
	if (query_parse(evhttp_uri_get_query(uri), &q, &message) < 0) {
		reply_error(ex, 400, "bad_request", message);
		return;
	}
	copy_printable(ex->export_id, sizeof(ex->export_id), q.data_export_id);
	index = auth_credential(server->auth, client, q.has_user_id ? q.user_id : NULL);
	if (index < 0) {
		reply_error(ex, 403, "forbidden", "this user_id may not be used by this client");
		return;
	}
	credential = &server->conf->credentials[index];
	copy_printable(ex->credential, sizeof(ex->credential), credential->name);
	if (cache_lookup(server->cache, credential, &q, &answer)) {
		reply_answer(ex, &answer);
		return;
	}
	if (q.download) {
		start_download(ex, credential, &q);
		return;
	}
	ex->waiter = cache_wait(server->cache, credential, &q, on_answer, ex);
	if (ex->waiter == NULL)
		reply_error(ex, 503, "unavailable", "the upstream request could not be started");
	else
		client_watch_start(ex);
}

static void handle_metrics(struct exchange *ex)
{
	struct evbuffer *body = evbuffer_new();

	if (body == NULL || metrics_render(body) < 0) {
		if (body != NULL)
			evbuffer_free(body);
		reply_error(ex, 500, "internal", "out of memory");
		return;
	}
	reply(ex, 200, "text/plain; version=0.0.4; charset=utf-8", body);
	evbuffer_free(body);
}

static void reply_refusal(struct exchange *ex, const struct refusal *refusal)
{
	if (refusal->allow != NULL)
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Allow",
				  refusal->allow);
	reply_error(ex, refusal->status, refusal->code, refusal->message);
}

static void handle_request(struct exchange *ex)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ex->req);
	const struct sockaddr *peer = evhttp_connection_get_addr(ex->connection);
	struct request_head head = {
		.method = ex->method_type,
		.target = evhttp_request_get_uri(ex->req),
		.path = uri ? evhttp_uri_get_path(uri) : NULL,
		.headers = evhttp_request_get_input_headers(ex->req),
	};
	struct refusal refusal;
	int allowed;

	ex->route = checks_route(&head);
	ex->must_close = checks_must_close(&head);
	copy_target_path(ex->path, sizeof(ex->path), head.target);
	/* /metrics answers admin_allow only; everything else allow only. */
	if (ex->route == ROUTE_METRICS)
		allowed = peer != NULL && auth_admin_allowed(ex->server->auth, peer);
	else
		allowed = peer != NULL && auth_address_allowed(ex->server->auth, peer);
	if (!allowed) {
		reply_error(ex, 403, "forbidden", "this address may not use this endpoint");
		return;
	}
	if (checks_request(&head, ex->route, &refusal)) {
		reply_refusal(ex, &refusal);
		return;
	}
	switch (ex->route) {
	case ROUTE_EXPORT_STATUS:
		handle_export_status(ex);
		return;
	case ROUTE_HEALTHZ:
		reply_json_text(ex, 200, "{\"status\":\"ok\"}");
		return;
	case ROUTE_METRICS:
		handle_metrics(ex);
		return;
	case ROUTE_OTHER:
	case ROUTE_COUNT:
		break;
	}
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct server *server = arg;
	struct exchange *ex = calloc(1, sizeof(*ex));
	enum evhttp_cmd_type method = evhttp_request_get_command(req);

	if (ex == NULL) {
		log_error("%s: out of memory", __func__);
		evhttp_send_error(req, 503, NULL);
		return;
	}
	server->active++;
	ex->server = server;
	ex->req = req;
	ex->connection = evhttp_request_get_connection(req);
	ex->route = ROUTE_OTHER;
	ex->owner = listeners_context(server->listeners, ex->connection);
	if (ex->owner != NULL)
		ex->owner->exchange = ex;
	ex->method_type = method;
	ex->head = method == EVHTTP_REQ_HEAD;
	ex->http10 = req->major == 1 && req->minor == 0;
	clock_gettime(CLOCK_MONOTONIC, &ex->start);
	snprintf(ex->method, sizeof(ex->method), "%s", method_name(method));
	remember_peer(ex);
	evhttp_request_set_on_complete_cb(req, on_complete, ex);
	handle_request(ex);
}

static void on_drain_check(evutil_socket_t fd, short what, void *arg)
{
	struct server *server = arg;

	(void)fd;
	(void)what;
	if (server->draining && server->active == 0 && server->drained != NULL) {
		void (*drained)(void *) = server->drained;

		server->drained = NULL;
		drained(server->drained_arg);
	}
}

/* Takes conf's auth, listeners and access log; on failure nothing changed. */
static int server_apply(struct server *server, struct conf *conf)
{
	struct auth *auth = auth_new(conf);
	struct access_log *access_log = NULL;

	/* Everything that can fail first; listeners_apply changes nothing if it fails. */
	if (auth == NULL || access_log_open(conf->access_log, &access_log) < 0 ||
	    listeners_apply(server->listeners, conf) < 0)
		goto fail;
	/* reopened on every reload, which also serves log rotation */
	access_log_close(server->access_log);
	server->access_log = access_log;
	auth_carry_over(auth, server->auth);
	auth_free(server->auth);
	server->auth = auth;
	if (server->cache != NULL)
		cache_set_conf(server->cache, conf);
	upstream_set_conf(server->upstream, conf);
	conf_free(server->conf);
	server->conf = conf;
	return 0;
fail:
	access_log_close(access_log);
	auth_free(auth);
	return -1;
}

static const struct listeners_callbacks listeners_callbacks = {
	.request = on_request,
	.opened = on_connection_opened,
	.closed = on_connection_closed,
};

struct server *server_new(struct event_base *base, struct conf *conf)
{
	struct server *server = calloc(1, sizeof(*server));

	if (server == NULL)
		return NULL;
	server->base = base;
	server->listeners = listeners_new(base, &listeners_callbacks, server);
	server->upstream = upstream_new(base, conf);
	server->drain_check = event_new(base, -1, 0, on_drain_check, server);
	if (server->listeners == NULL || server->upstream == NULL || server->drain_check == NULL)
		goto fail;
	server->cache = cache_new(base, server->upstream, conf);
	if (server->cache == NULL)
		goto fail;
	if (server_apply(server, conf) < 0)
		goto fail;
	return server;
fail:
	log_error("%s: cannot start the server", __func__);
	server->conf = NULL; /* still the caller's */
	server_free(server);
	return NULL;
}

int server_reload(struct server *server, struct conf *new_conf)
{
	return server_apply(server, new_conf);
}

void server_drain(struct server *server, void (*drained)(void *arg), void *arg)
{
	listeners_close(server->listeners);
	server->draining = 1;
	server->drained = drained;
	server->drained_arg = arg;
	event_active(server->drain_check, EV_TIMEOUT, 0);
}

void server_free(struct server *server)
{
	if (server == NULL)
		return;
	/* Closes every connection; their exchanges end in on_connection_closed. */
	listeners_free(server->listeners);
	cache_free(server->cache);
	upstream_free(server->upstream);
	if (server->drain_check != NULL)
		event_free(server->drain_check);
	access_log_close(server->access_log);
	auth_free(server->auth);
	conf_free(server->conf);
	free(server);
}
