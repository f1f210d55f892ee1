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
#include <sys/socket.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "auth.h"
#include "cache.h"
#include "conf.h"
#include "listeners.h"
#include "log.h"
#include "metrics.h"
#include "query.h"
#include "relay.h"
#include "upstream.h"

#define SERVER_MAX_REQUEST_LINE (8 * 1024)
#define SERVER_MAX_HEADERS (16 * 1024)
#define SERVER_LOG_FLUSH_MS 1000
#define SERVER_MAX_RANGE_HEADER 256

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
	FILE *access_log; /* NULL: off */
	int access_log_owned;
	struct event *log_flush;
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
	enum metrics_route route;
	struct cache_waiter *waiter;
	struct relay *relay;
	int download_counted; /* holds one of server->downloads */
	int streaming;	      /* a relayed body is being sent */
	int relay_ended;      /* the relay said how the body ended */
	int close_when_flushed;
	const char *end_note; /* why it ended, when not the usual way */
	struct event *client_watch; /* notices a client leaving while we wait */
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
	FILE *out = ex->server->access_log;
	char peer[INET6_ADDRSTRLEN];

	if (out == NULL)
		return;
	format_peer(&ex->peer, peer, sizeof(peer));
	fprintf(out,
		"%s client=%s credential=%s \"%s %s\" %d %zu %.1fms cache=%s upstream=%ld "
		"export=%s%s%s\n",
		peer, ex->client[0] ? ex->client : "-",
		ex->credential[0] ? ex->credential : "-", ex->method, ex->path, ex->status,
		ex->bytes, elapsed_ms(&ex->start), ex->cache_result ? ex->cache_result : "-",
		ex->upstream_status,
		ex->export_id[0] ? ex->export_id : "-", outcome ? " " : "",
		outcome ? outcome : "");
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
 * watch the socket ourselves meanwhile, as nginx does: the peer closing its side
 * (EV_CLOSED, epoll's EPOLLRDHUP: seen even behind unread bytes such as a TLS
 * close_notify) means the client is gone, and the connection is closed now,
 * which aborts the upstream call through on_connection_close. Without EV_CLOSED
 * we peek for end of file, and bytes waiting (a pipelined request) end the watch.
 */
static void on_client_watch(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *ex = arg;
	char byte;
	ssize_t n;

	if (!(what & EV_CLOSED)) {
		n = recv(fd, &byte, 1, MSG_PEEK);
		if (n > 0)
			return;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
			if (event_add(ex->client_watch, NULL) < 0)
				log_warn("%s: cannot watch the client connection", __func__);
			return;
		}
	}
	evhttp_connection_free(ex->connection);
}

static void client_watch_start(struct exchange *ex)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->connection);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	short kind = (event_base_get_features(ex->server->base) & EV_FEATURE_EARLY_CLOSE)
			     ? EV_CLOSED
			     : EV_READ;

	if (fd < 0)
		return;
	ex->client_watch = event_new(ex->server->base, fd, kind, on_client_watch, ex);
	if (ex->client_watch == NULL || event_add(ex->client_watch, NULL) < 0) {
		log_warn("%s: cannot watch the client connection", __func__);
		client_watch_stop(ex);
	}
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

	access_log_write(ex, outcome);
	metrics_request(ex->route, ex->status);
	client_watch_stop(ex);
	cache_waiter_cancel(ex->waiter);
	ex->waiter = NULL;
	if (ex->streaming && !ex->relay_ended)
		metrics_download_finished(METRICS_DOWNLOAD_ABORTED);
	relay_free(ex->relay);
	ex->relay = NULL;
	download_release(ex);
	if (ex->owner != NULL) {
		ex->owner->exchange = NULL;
		listeners_idle(server->listeners, ex->connection);
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
	if (ex->server->draining)
		evhttp_add_header(headers, "Connection", "close");
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
	cJSON *json = cJSON_CreateObject();
	char *text = NULL;

	if (json != NULL && cJSON_AddStringToObject(json, "error", code) != NULL &&
	    cJSON_AddStringToObject(json, "message", message) != NULL)
		text = cJSON_PrintUnformatted(json);
	cJSON_Delete(json);
	if (body == NULL || text == NULL || evbuffer_add(body, text, strlen(text)) < 0) {
		log_error("%s: out of memory answering %d", __func__, status);
		if (body != NULL)
			evbuffer_drain(body, evbuffer_get_length(body));
	}
	cJSON_free(text);
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

static void on_relay_started(int status, void *arg)
{
	struct exchange *ex = arg;

	/* evhttp watches the connection itself while it writes */
	client_watch_stop(ex);
	ex->status = status;
	ex->upstream_status = status;
	ex->streaming = 1;
	metrics_download_started();
}

static void on_relay_ended(enum relay_end how, uint64_t bytes, void *arg)
{
	struct exchange *ex = arg;
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->connection);

	ex->relay_ended = 1;
	ex->bytes = (size_t)bytes;
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
	 * file. What it was sent so far goes out first, then the connection closes.
	 */
	if (bev != NULL && evbuffer_get_length(bufferevent_get_output(bev)) > 0)
		ex->close_when_flushed = 1;
	else
		evhttp_connection_free(ex->connection);
}

static void on_relay_flushed(void *arg)
{
	struct exchange *ex = arg;

	if (ex->close_when_flushed)
		evhttp_connection_free(ex->connection);
}

static const struct relay_events relay_events = {
	.answer = on_relay_answer,
	.started = on_relay_started,
	.ended = on_relay_ended,
	.flushed = on_relay_flushed,
};

/* A Range or If-Range header to forward: short printable ASCII, or absent. */
static int range_header(struct exchange *ex, const char *name, const char **value)
{
	*value = evhttp_find_header(evhttp_request_get_input_headers(ex->req), name);
	if (*value == NULL)
		return 0;
	if (strlen(*value) > SERVER_MAX_RANGE_HEADER)
		return -1;
	for (const char *c = *value; *c != '\0'; c++) {
		if (*c < 0x20 || *c > 0x7e)
			return -1;
	}
	return 0;
}

static void start_download(struct exchange *ex, const struct conf_credential *credential,
			   const struct query *q)
{
	struct server *server = ex->server;
	const char *range, *if_range;

	if (range_header(ex, "Range", &range) < 0 || range_header(ex, "If-Range", &if_range) < 0) {
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
				ex->req, ex->head, range, if_range, &relay_events, ex);
	if (ex->relay == NULL) {
		reply_error(ex, 503, "unavailable", "the upstream request could not be started");
		return;
	}
	server->downloads++;
	ex->download_counted = 1;
	client_watch_start(ex);
}

/* Request line and header sizes, measured as they were on the wire. */
static int check_sizes(struct exchange *ex)
{
	struct evkeyvalq *headers = evhttp_request_get_input_headers(ex->req);
	const char *uri = evhttp_request_get_uri(ex->req);
	size_t header_bytes = 0;
	struct evkeyval *header;

	if (uri != NULL && strlen(uri) + strlen(ex->method) + 10 > SERVER_MAX_REQUEST_LINE) {
		reply_error(ex, 414, "uri_too_long", "the request line is over 8 KiB");
		return -1;
	}
	for (header = headers->tqh_first; header != NULL; header = header->next.tqe_next)
		header_bytes += strlen(header->key) + strlen(header->value) + 4;
	if (header_bytes > SERVER_MAX_HEADERS) {
		reply_error(ex, 431, "headers_too_large", "the request headers are over 16 KiB");
		return -1;
	}
	return 0;
}

/* RFC 9110 token: what a header name may be ("Name : v" and "Na me" are not). */
static int is_token(const char *text)
{
	static const char extra[] = "!#$%&'*+-.^_`|~";

	if (*text == '\0')
		return 0;
	for (; *text != '\0'; text++) {
		if (!((*text >= '0' && *text <= '9') || (*text >= 'a' && *text <= 'z') ||
		      (*text >= 'A' && *text <= 'Z') || strchr(extra, *text) != NULL))
			return 0;
	}
	return 1;
}

/* 400 and a closed connection: the bytes after this request cannot be trusted. */
static void reply_bad_framing(struct exchange *ex, const char *message)
{
	evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Connection", "close");
	reply_error(ex, 400, "bad_request", message);
}

/*
 * Requests carry no body here, so any framing of one (Transfer-Encoding, a
 * non-zero Content-Length, both, or several) is refused outright: nothing a
 * request-smuggling trick could hide survives. Absolute-form targets too: this
 * is not a proxy.
 */
static int check_framing(struct exchange *ex)
{
	struct evkeyvalq *headers = evhttp_request_get_input_headers(ex->req);
	const char *uri = evhttp_request_get_uri(ex->req);
	const char *length = evhttp_find_header(headers, "Content-Length");
	struct evkeyval *header;
	int lengths = 0;

	for (header = headers->tqh_first; header != NULL; header = header->next.tqe_next) {
		if (!is_token(header->key)) {
			reply_bad_framing(ex, "a header name is not a token (RFC 9110)");
			return -1;
		}
		if (strcasecmp(header->key, "Content-Length") == 0)
			lengths++;
		if (strcasecmp(header->key, "Transfer-Encoding") == 0) {
			reply_bad_framing(ex, "Transfer-Encoding is not accepted: requests have no body");
			return -1;
		}
	}
	if (lengths > 1 || (length != NULL && strcmp(length, "0") != 0)) {
		reply_bad_framing(ex, "a request body is not allowed");
		return -1;
	}
	if (uri == NULL || uri[0] != '/') {
		reply_bad_framing(ex, "the request target must be a path (origin-form)");
		return -1;
	}
	return 0;
}

/* 405 unless GET or HEAD. */
static int reject_method(struct exchange *ex)
{
	if (ex->method_type == EVHTTP_REQ_GET || ex->method_type == EVHTTP_REQ_HEAD)
		return 0;
	evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Allow", "GET, HEAD");
	reply_error(ex, 405, "method_not_allowed", "only GET and HEAD are allowed");
	return -1;
}

/* 401 with the challenge, or the client's index; -1 without [client] sections. */
static int authenticate(struct exchange *ex, int *client)
{
	struct server *server = ex->server;
	const char *authorization;

	*client = -1;
	if (!auth_tokens_required(server->auth))
		return 0;
	authorization = evhttp_find_header(evhttp_request_get_input_headers(ex->req),
					   "Authorization");
	*client = auth_client(server->auth, authorization);
	if (*client < 0) {
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

	if (reject_method(ex) < 0)
		return;
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

static enum metrics_route route_of(const char *path)
{
	if (path == NULL)
		return METRICS_ROUTE_OTHER;
	if (strcmp(path, "/export_status") == 0)
		return METRICS_ROUTE_EXPORT_STATUS;
	if (strcmp(path, "/healthz") == 0)
		return METRICS_ROUTE_HEALTHZ;
	if (strcmp(path, "/metrics") == 0)
		return METRICS_ROUTE_METRICS;
	return METRICS_ROUTE_OTHER;
}

static void handle_metrics(struct exchange *ex)
{
	struct evbuffer *body;

	if (reject_method(ex) < 0)
		return;
	body = evbuffer_new();
	if (body == NULL || metrics_render(body) < 0) {
		if (body != NULL)
			evbuffer_free(body);
		reply_error(ex, 500, "internal", "out of memory");
		return;
	}
	reply(ex, 200, "text/plain; version=0.0.4; charset=utf-8", body);
	evbuffer_free(body);
}

static void handle_request(struct exchange *ex)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ex->req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	const struct sockaddr *peer = evhttp_connection_get_addr(ex->connection);
	int allowed;

	ex->route = route_of(path);
	copy_printable(ex->path, sizeof(ex->path), path);
	/* /metrics answers admin_allow only; everything else allow only. */
	if (ex->route == METRICS_ROUTE_METRICS)
		allowed = peer != NULL && auth_admin_allowed(ex->server->auth, peer);
	else
		allowed = peer != NULL && auth_address_allowed(ex->server->auth, peer);
	if (!allowed) {
		reply_error(ex, 403, "forbidden", "this address may not use this endpoint");
		return;
	}
	if (check_sizes(ex) < 0 || check_framing(ex) < 0)
		return;
	switch (ex->route) {
	case METRICS_ROUTE_EXPORT_STATUS:
		handle_export_status(ex);
		return;
	case METRICS_ROUTE_HEALTHZ:
		if (reject_method(ex) == 0)
			reply_json_text(ex, 200, "{\"status\":\"ok\"}");
		return;
	case METRICS_ROUTE_METRICS:
		handle_metrics(ex);
		return;
	case METRICS_ROUTE_OTHER:
	case METRICS_ROUTE_COUNT:
		break;
	}
	if (path == NULL || path[0] == '\0')
		reply_error(ex, 400, "bad_request", "the request target has no path");
	else
		reply_error(ex, 404, "not_found", "no such endpoint; try /export_status");
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
	ex->route = METRICS_ROUTE_OTHER;
	ex->owner = listeners_context(server->listeners, ex->connection);
	if (ex->owner != NULL)
		ex->owner->exchange = ex;
	ex->method_type = method;
	ex->head = method == EVHTTP_REQ_HEAD;
	clock_gettime(CLOCK_MONOTONIC, &ex->start);
	snprintf(ex->method, sizeof(ex->method), "%s", method_name(method));
	remember_peer(ex);
	evhttp_request_set_on_complete_cb(req, on_complete, ex);
	handle_request(ex);
}

static void on_log_flush(evutil_socket_t fd, short what, void *arg)
{
	struct server *server = arg;

	(void)fd;
	(void)what;
	if (server->access_log != NULL && fflush(server->access_log) != 0)
		log_warn("access log: flush failed: %s", strerror(errno));
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

static void access_log_close(struct server *server)
{
	if (server->access_log != NULL) {
		fflush(server->access_log);
		if (server->access_log_owned)
			fclose(server->access_log);
	}
	server->access_log = NULL;
	server->access_log_owned = 0;
}

/* Opens conf's access log; a reload reopens it, which also serves log rotation. */
static int access_log_open(const struct conf *conf, FILE **out, int *owned)
{
	*out = NULL;
	*owned = 0;
	if (strcmp(conf->access_log, "off") == 0)
		return 0;
	if (strcmp(conf->access_log, "-") == 0) {
		*out = stderr;
		return 0;
	}
	*out = fopen(conf->access_log, "ae");
	if (*out == NULL) {
		log_error("access_log: cannot open %s: %s", conf->access_log, strerror(errno));
		return -1;
	}
	*owned = 1;
	return 0;
}

/* Takes conf's auth, listeners and access log; on failure nothing changed. */
static int server_apply(struct server *server, struct conf *conf)
{
	struct auth *auth = auth_new(conf);
	FILE *access_log = NULL;
	int owned = 0;

	/* Everything that can fail first; listeners_apply changes nothing if it fails. */
	if (auth == NULL || access_log_open(conf, &access_log, &owned) < 0 ||
	    listeners_apply(server->listeners, conf) < 0)
		goto fail;
	access_log_close(server);
	server->access_log = access_log;
	server->access_log_owned = owned;
	auth_free(server->auth);
	server->auth = auth;
	if (server->cache != NULL)
		cache_set_conf(server->cache, conf);
	conf_free(server->conf);
	server->conf = conf;
	return 0;
fail:
	if (owned)
		fclose(access_log);
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
	struct timeval flush_every = { 0, SERVER_LOG_FLUSH_MS * 1000 };

	if (server == NULL)
		return NULL;
	server->base = base;
	server->listeners = listeners_new(base, &listeners_callbacks, server);
	server->upstream = upstream_new(base);
	server->log_flush = event_new(base, -1, EV_PERSIST, on_log_flush, server);
	server->drain_check = event_new(base, -1, 0, on_drain_check, server);
	if (server->listeners == NULL || server->upstream == NULL || server->log_flush == NULL ||
	    server->drain_check == NULL || event_add(server->log_flush, &flush_every) < 0)
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
	if (server->log_flush != NULL)
		event_free(server->log_flush);
	if (server->drain_check != NULL)
		event_free(server->drain_check);
	access_log_close(server);
	auth_free(server->auth);
	conf_free(server->conf);
	free(server);
}
