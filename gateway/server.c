/*
 * server.c -- the evhttp front end's lifecycle, routing, replies and teardown:
 * one struct exchange per client request (exchange.h), checked (checks.c),
 * handed to its handler (export_status.c, download.c), answered here, and torn
 * down in exactly one place whichever way it ends. Drain and reload too.
 */
#include "config.h"

#include "server.h"
#include "exchange.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
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
#include "caller.h"
#include "fanout.h"
#include "redis.h"
#include "hold.h"
#include "http_text.h"
#include "idempotency.h"
#include "listeners.h"
#include "log.h"
#include "metrics.h"
#include "query.h"
#include "relay.h"
#include "upstream.h"

/* The request's path as the access log shows it, its NUL included. */
#define LOG_PATH_MAX 96

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

static double elapsed_ms(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) * 1e3 +
	       (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

static void copy_printable(char *out, size_t cap, const char *in)
{
	size_t n = 0;

	for (; in != NULL && *in != '\0' && n + 1 < cap; in++)
		out[n++] = (*in > 0x20 && *in < 0x7f && *in != '"') ? *in : '?';
	out[n] = '\0';
}

void exchange_log_field(struct exchange *ex, char *field, size_t cap, const char *text)
{
	if (ex->server->access_log != NULL)
		copy_printable(field, cap, text);
}

/* The request target as sent, up to its query: what the access log names. */
static void copy_target_path(char *out, size_t cap, const char *target)
{
	size_t length = target != NULL ? strcspn(target, "?#") : 0;
	char path[LOG_PATH_MAX];

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

static void access_log_write(const struct exchange *ex, const char *outcome)
{
	char path[LOG_PATH_MAX];
	struct access_log_entry entry = {
		.peer = &ex->peer,
		.client = ex->client,
		.credential = ex->credential,
		.method = ex->method,
		.path = path,
		.status = ex->status,
		.bytes = ex->bytes,
		.cache = ex->cache_result,
		.upstream_status = ex->upstream_status,
		.route = route_name(ex->route),
		.export_id = ex->export_id,
		.wait = ex->wait_end,
		.joined = ex->joined,
		.outcome = outcome,
	};

	if (ex->server->access_log == NULL)
		return;
	/* the request (and its target) lives until the exchange is freed */
	copy_target_path(path, sizeof(path), evhttp_request_get_uri(ex->req));
	entry.ms = elapsed_ms(&ex->start);
	access_log_request(ex->server->access_log, &entry);
}

static void server_check_drained(struct server *server)
{
	if (server->draining && server->active == 0 && server->drain_check != NULL)
		event_active(server->drain_check, EV_TIMEOUT, 0);
}

/*
 * The one teardown of an exchange: logs it, cancels its upstream call, and gives
 * the request back to libevent (or frees it when libevent let go of it).
 */
static void exchange_close(struct exchange *ex, const char *outcome)
{
	struct server *server = ex->server;
	int restore_timeouts = ex->output_watch != NULL;

	if ((ex->relay != NULL || ex->fan != NULL) &&
	    (ex->state == EXCHANGE_STREAMING || ex->state == EXCHANGE_CUTTING ||
	     ex->state == EXCHANGE_REPLIED)) {
		/* body bytes that left, not those still queued when the end came */
		uint64_t handed = download_bytes_handed(ex);
		size_t queued = ex->output != NULL ? evbuffer_get_length(ex->output) : 0;

		ex->bytes = (size_t)(handed > queued ? handed - queued : 0);
	}
	if (server->dispatching == ex)
		server->dispatching = NULL;
	access_log_write(ex, outcome);
	metrics_request(ex->route, ex->status);
	watch_client_stop(ex);
	watch_progress_stop(ex);
	cache_waiter_cancel(ex->waiter);
	ex->waiter = NULL;
	export_status_detach(ex);
	export_data_detach(ex);
	caller_detach(ex);
	if (ex->state == EXCHANGE_STREAMING)
		metrics_download_finished(METRICS_DOWNLOAD_ABORTED);
	download_release(ex);
	download_free(ex);
	if (ex->input_capped)
		listeners_cap_input(ex->connection, 0);
	if (ex->owner != NULL) {
		ex->owner->exchange = NULL;
		listeners_idle(server->listeners, ex->owner->handle, restore_timeouts);
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

static void *on_connection_opened(struct evhttp_connection *evcon,
				  struct listeners_connection *handle, void *arg)
{
	struct connection *connection = calloc(1, sizeof(*connection));

	(void)evcon;
	(void)arg;
	if (connection != NULL) /* NULL: its requests are refused (listeners.c) */
		connection->handle = handle;
	return connection;
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
void exchange_close_after_reply(struct exchange *ex)
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

/*
 * A reply made outside its request's dispatch turn (coalesced waiters woken by
 * one upstream answer, held requests let go by one refresh: thousands in one
 * turn) is written to a plain socket now, instead of in a later turn behind all
 * the replies of the same wake-up; evhttp's write callback, which finishes the
 * request, runs deferred as it would after its own write. A TLS connection, or
 * a socket that takes only part of it, is left to the bufferevent as usual.
 */
static void write_now(struct exchange *ex)
{
	struct bufferevent *bev =
		ex->connection != NULL ? evhttp_connection_get_bufferevent(ex->connection) : NULL;
	struct evbuffer *output;

	if (bev == NULL || bufferevent_openssl_get_ssl(bev) != NULL || bufferevent_getfd(bev) < 0)
		return;
	output = bufferevent_get_output(bev);
	if (evbuffer_write(output, bufferevent_getfd(bev)) > 0 && evbuffer_get_length(output) == 0)
		bufferevent_trigger(bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS);
}

/*
 * Sends the reply whose body is in the request's output buffer (none for
 * HEAD). Date and Content-Length are written here rather than by libevent,
 * which would format its Date with gmtime and printf for every reply.
 */
static void send_reply(struct exchange *ex, int status, const char *content_type, size_t length)
{
	struct server *server = ex->server;
	struct evkeyvalq *headers = evhttp_request_get_output_headers(ex->req);
	char length_text[HTTP_TEXT_U64_SIZE];

	ex->state = EXCHANGE_REPLIED;
	ex->status = status;
	ex->bytes = ex->head ? 0 : length;
	if (content_type != NULL)
		evhttp_add_header(headers, "Content-Type", content_type);
	evhttp_add_header(headers, "Date", http_date_now(&ex->server->date));
	/* a HEAD answer has the GET's length; 1xx, 204 and 304 have none */
	if (status >= 200 && status != 204 && status != 304)
		evhttp_add_header(headers, "Content-Length", http_text_u64(length_text, length));
	if (ex->server->draining || ex->must_close)
		exchange_close_after_reply(ex);
	evhttp_send_reply(ex->req, status, NULL, NULL);
	/* answered in its dispatch turn (and not closed already by a TLS write) */
	if (server->dispatching == ex)
		listeners_pause_input(ex->connection);
	else
		write_now(ex);
}

void exchange_reply(struct exchange *ex, int status, const char *content_type,
		    struct evbuffer *body)
{
	size_t length = body ? evbuffer_get_length(body) : 0;

	if (body != NULL && !ex->head &&
	    evbuffer_add_buffer(evhttp_request_get_output_buffer(ex->req), body) < 0) {
		exchange_reply_error(ex, 500, "internal", "out of memory");
		return;
	}
	send_reply(ex, status, content_type, length);
}

void exchange_reply_data(struct exchange *ex, int status, const char *content_type,
			 const void *data, size_t length)
{
	struct evbuffer *output = evhttp_request_get_output_buffer(ex->req);

	if (!ex->head && evbuffer_add(output, data, length) < 0) {
		log_error("%s: out of memory answering %d", __func__, status);
		evbuffer_drain(output, evbuffer_get_length(output));
		send_reply(ex, 500, NULL, 0);
		return;
	}
	send_reply(ex, status, content_type, length);
}

void exchange_reply_error(struct exchange *ex, int status, const char *code, const char *message)
{
	size_t length = 0;
	char *text = answer_error_body(code, message, &length);

	if (text == NULL) {
		log_error("%s: out of memory answering %d", __func__, status);
		send_reply(ex, status, "application/json", 0);
		return;
	}
	exchange_reply_data(ex, status, "application/json", text, length);
	free(text);
}

static const char healthz_body[] = "{\"status\":\"ok\"}";
static const char ready_body[] = "{\"status\":\"ready\"}";
static const char draining_body[] = "{\"status\":\"draining\"}";

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
	const char *status = NULL;
	char text[64];

	evhttp_add_header(headers, "X-Cache", x_cache_names[answer->result]);
	switch (answer->result) {
	case CACHE_HIT:
	case CACHE_STALE:
		status = http_text_prefixed_i64(text, sizeof(text),
						"gumloop-gateway; hit; ttl=", answer->ttl_seconds);
		break;
	case CACHE_MISS:
		status = "gumloop-gateway; fwd=miss";
		break;
	case CACHE_COALESCED:
		status = "gumloop-gateway; fwd=miss; collapsed";
		break;
	}
	evhttp_add_header(headers, "Cache-Status", status);
	if (!answer->cached) {
		evhttp_add_header(headers, "Cache-Control", "no-store");
		return;
	}
	evhttp_add_header(headers, "Age",
			  http_text_prefixed_i64(text, sizeof(text), "", answer->age_seconds));
	evhttp_add_header(
		headers, "Cache-Control",
		http_text_prefixed_i64(text, sizeof(text), "private, max-age=",
				       answer->ttl_seconds > 0 ? answer->ttl_seconds : 0));
}

/* The cache headers, and a 200's ETag (the entry's, else made now). */
static void add_answer_headers(struct exchange *ex, const struct cache_answer *answer)
{
	char etag[ANSWER_ETAG_SIZE];

	ex->upstream_status = answer->status;
	add_cache_headers(ex, answer);
	ex->cache_result = x_cache_names[answer->result];
	metrics_cache(cache_metric[answer->result]);
	if (answer->status != 200)
		return;
	if (answer->etag == NULL)
		answer_etag(answer->body, answer->body_length, etag);
	evhttp_add_header(evhttp_request_get_output_headers(ex->req), "ETag",
			  answer->etag != NULL ? answer->etag : etag);
}

void exchange_reply_answer(struct exchange *ex, const struct cache_answer *answer)
{
	add_answer_headers(ex, answer);
	exchange_reply_data(ex, answer->status, answer->content_type, answer->body,
			    answer->body_length);
}

void exchange_reply_not_modified(struct exchange *ex, const struct cache_answer *answer)
{
	add_answer_headers(ex, answer);
	send_reply(ex, 304, NULL, 0);
}

static void handle_metrics(struct exchange *ex)
{
	struct evbuffer *body = evbuffer_new();

	if (body == NULL || metrics_render(body) < 0) {
		if (body != NULL)
			evbuffer_free(body);
		exchange_reply_error(ex, 500, "internal", "out of memory");
		return;
	}
	exchange_reply(ex, 200, "text/plain; version=0.0.4; charset=utf-8", body);
	evbuffer_free(body);
}

static void reply_refusal(struct exchange *ex, const struct refusal *refusal)
{
	if (refusal->allow != NULL)
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Allow",
				  refusal->allow);
	exchange_reply_error(ex, refusal->status, refusal->code, refusal->message);
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
	/* /metrics answers admin_allow only; everything else allow only. */
	if (ex->route == ROUTE_METRICS)
		allowed = peer != NULL && auth_admin_allowed(ex->server->auth, peer);
	else
		allowed = peer != NULL && auth_address_allowed(ex->server->auth, peer);
	if (!allowed) {
		exchange_reply_error(ex, 403, "forbidden",
				     "this address may not use this endpoint");
		return;
	}
	if (checks_request(&head, ex->route, &refusal)) {
		reply_refusal(ex, &refusal);
		return;
	}
	/*
	 * Draining (SIGTERM): the listeners stay open so that /readyz can say 503 to
	 * the load balancer until the last request in flight is done; new work is
	 * refused, to be retried on another instance. /healthz and /metrics answer.
	 */
	if (ex->server->draining && ex->route != ROUTE_HEALTHZ && ex->route != ROUTE_READYZ &&
	    ex->route != ROUTE_METRICS) {
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Retry-After", "1");
		exchange_reply_error(ex, 503, "draining",
				     "this gateway is shutting down; retry on another instance");
		return;
	}
	switch (ex->route) {
	case ROUTE_EXPORT_STATUS:
		export_status_handle(ex);
		return;
	case ROUTE_EXPORT_DATA:
		export_data_handle(ex);
		return;
	case ROUTE_HEALTHZ:
		exchange_reply_data(ex, 200, "application/json", healthz_body,
				    sizeof(healthz_body) - 1);
		return;
	case ROUTE_READYZ:
		if (ex->server->draining)
			exchange_reply_data(ex, 503, "application/json", draining_body,
					    sizeof(draining_body) - 1);
		else
			exchange_reply_data(ex, 200, "application/json", ready_body,
					    sizeof(ready_body) - 1);
		return;
	case ROUTE_METRICS:
		handle_metrics(ex);
		return;
	case ROUTE_OTHER:
	case ROUTE_COUNT:
		break;
	}
}

static void on_unserved(struct evhttp_request *req, void *arg)
{
	(void)arg;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
	evhttp_send_error(req, 503, NULL);
}

static void on_request(struct evhttp_request *req, void *context, void *arg)
{
	struct server *server = arg;
	struct exchange *ex = malloc(sizeof(*ex));
	enum evhttp_cmd_type method = evhttp_request_get_command(req);

	if (ex == NULL) {
		log_error("%s: out of memory", __func__);
		on_unserved(req, server); /* a 503 and a close: no deadline comes back */
		return;
	}
	memset(ex, 0, offsetof(struct exchange, peer));
	ex->peer.ss_family = AF_UNSPEC;
	ex->export_id[0] = ex->client[0] = ex->credential[0] = '\0';
	server->active++;
	ex->server = server;
	ex->req = req;
	ex->connection = evhttp_request_get_connection(req);
	ex->route = ROUTE_OTHER;
	ex->owner = context;
	if (ex->owner != NULL)
		ex->owner->exchange = ex;
	ex->method_type = method;
	ex->head = method == EVHTTP_REQ_HEAD;
	ex->http10 = req->major == 1 && req->minor == 0;
	clock_gettime(CLOCK_MONOTONIC, &ex->start);
	ex->method = method_name(method);
	if (server->access_log != NULL)
		remember_peer(ex);
	evhttp_request_set_on_complete_cb(req, on_complete, ex);
	server->dispatching = ex;
	handle_request(ex);
	/* still open and not answered: it waits (or streams), capped until its end */
	if (server->dispatching == ex && ex->state != EXCHANGE_REPLIED) {
		ex->input_capped = 1;
		listeners_cap_input(ex->connection, 1);
	}
	server->dispatching = NULL;
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

/* Fleet mode on, off or changed. Without memory for it the gateway goes on alone. */
static void apply_redis(struct server *server, const struct conf *conf)
{
	if (conf->redis == NULL) {
		if (server->redis != NULL)
			log_info("redis: unset by the reload; this gateway now runs alone");
		cache_set_redis(server->cache, NULL);
		if (server->redis != NULL)
			redis_close(server->redis); /* what waits on it goes on alone */
		redis_free(server->redis);
		server->redis = NULL;
	} else if (server->redis != NULL) {
		redis_set_conf(server->redis, conf);
	} else if ((server->redis = redis_new(server->base, conf)) != NULL) {
		cache_set_redis(server->cache, server->redis);
	}
}

/* Takes conf's auth, listeners and access log; on failure nothing changed. */
static int server_apply(struct server *server, struct conf *conf)
{
	struct auth *auth = auth_new(conf);
	struct access_log *access_log = NULL;

	/* Everything that can fail first; listeners_apply changes nothing if it fails. */
	if (auth == NULL ||
	    access_log_open(conf->access_log, conf->access_log_json, &access_log) < 0 ||
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
	if (server->holds != NULL)
		holds_set_conf(server->holds, conf);
	if (server->fanout != NULL)
		fanout_set_conf(server->fanout, conf);
	apply_redis(server, conf);
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
	.unserved = on_unserved,
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
	server->idempotency = idempotency_new();
	if (server->listeners == NULL || server->upstream == NULL || server->drain_check == NULL ||
	    server->idempotency == NULL)
		goto fail;
	server->cache = cache_new(base, server->upstream, conf);
	if (server->cache == NULL)
		goto fail;
	server->holds = holds_new(base, server->cache, conf);
	server->fanout = fanout_new(base, server->upstream, server->cache, conf);
	if (server->holds == NULL || server->fanout == NULL)
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
	/* the listeners stay open until the drain ends: /readyz says 503 meanwhile */
	server->draining = 1;
	server->drained = drained;
	server->drained_arg = arg;
	/* held requests are answered now, with what is known */
	holds_release_all(server->holds);
	event_active(server->drain_check, EV_TIMEOUT, 0);
}

void server_free(struct server *server)
{
	if (server == NULL)
		return;
	/* Closes every connection; their exchanges end in on_connection_closed. */
	listeners_free(server->listeners);
	holds_free(server->holds);
	fanout_free(server->fanout);
	cache_free(server->cache);
	redis_free(server->redis);
	upstream_free(server->upstream);
	export_data_free_all(server);
	idempotency_free(server->idempotency);
	if (server->drain_check != NULL)
		event_free(server->drain_check);
	access_log_close(server->access_log);
	auth_free(server->auth);
	conf_free(server->conf);
	free(server);
}
