/*
 * upstream.c -- calls to Gumloop: one libcurl easy handle each (its request set
 * up by gumloop.c) on the multi handles pool.c keeps on the gateway's loop,
 * after curl's docs/examples/hiperfifo.c; a status call buffers its answer, a
 * download hands its head and body pieces to its handlers as they come. Every
 * curl return is checked; a failure fails the call, never the process. Every
 * response head is parsed here as well as by libcurl and checked (framing.c), so
 * nothing libcurl would guess at reaches a client.
 */
#include "config.h"

#include "upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "clock.h"
#include "conf.h"
#include "framing.h"
#include "gumloop.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "query.h"

#include <utlist.h>

struct upstream {
	struct event_base *base;
	struct pools *pools;
	struct upstream_call *calls; /* every running call, for cancel-all */
	int64_t applied_ms;	     /* when the config (and its CA bundle) was applied */
};

struct upstream_call {
	struct upstream *upstream;
	enum pool_kind pool;
	CURL *easy;
	struct curl_slist *headers; /* holds the API key: wiped before free */
	char *post_body;	    /* an export's (it holds the user id): wiped before free */
	size_t post_length;
	struct evbuffer *body;
	int too_large;	     /* body over UPSTREAM_MAX_JSON_BYTES */
	int head_too_large;  /* headers over UPSTREAM_MAX_HEADER_BYTES */
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

static void call_finish(struct upstream_call *call, CURLcode code);

static struct timeval timeval_of(int64_t ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	return tv;
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

void upstream_set_conf(struct upstream *upstream, const struct conf *conf)
{
	pools_set_limits(upstream->pools, (long)conf->upstream_max_connections,
			 (long)conf->max_downloads, conf->upstream_keepalive_timeout_ms);
	upstream->applied_ms = now_ms();
}

static void on_transfer_done(CURL *easy, CURLcode code, void *arg)
{
	struct upstream_call *call = NULL;

	(void)arg;
	if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, &call) != CURLE_OK || call == NULL) {
		log_error("%s: finished transfer without its call", __func__);
		return;
	}
	call_finish(call, code);
}

static void on_transfer_socket(CURL *easy, curl_socket_t fd, void *arg)
{
	struct upstream_call *call = NULL;

	(void)arg;
	if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, &call) == CURLE_OK && call != NULL)
		call->socket = fd;
}

static const struct pools_handlers pools_handlers = {
	.done = on_transfer_done,
	.socket = on_transfer_socket,
};

struct upstream *upstream_new(struct event_base *base, const struct conf *conf)
{
	struct upstream *upstream = calloc(1, sizeof(*upstream));

	if (upstream == NULL)
		goto fail;
	upstream->base = base;
	upstream->pools = pools_new(base, &pools_handlers, upstream);
	if (upstream->pools == NULL)
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
	if (call->easy != NULL) {
		CURLMcode rc = curl_multi_remove_handle(
			pools_multi(call->upstream->pools, call->pool), call->easy);

		if (rc != CURLM_OK)
			log_error("%s: curl_multi_remove_handle: %s", __func__,
				  curl_multi_strerror(rc));
		curl_easy_cleanup(call->easy);
	}
	gumloop_headers_free(call->headers);
	if (call->post_body != NULL)
		OPENSSL_cleanse(call->post_body, call->post_length);
	free(call->post_body);
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
	if (upstream == NULL)
		return;
	while (upstream->calls != NULL)
		call_free(upstream->calls);
	pools_free(upstream->pools);
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
		pools_transfer_done(call->upstream->pools, call->easy, call->ssl);
	metrics_upstream(result.outcome == UPSTREAM_OK ? (int)result.status : 0,
			 result.outcome == UPSTREAM_TIMEOUT, result.seconds);
	call->done(&result, call->arg);
	call_free(call);
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
 * and if records wait, have libcurl read again on the loop's next turn. A zero
 * timer, not event_active: libevent runs an event activated from a callback in
 * the same turn, and a transfer that is never paused (fan-out) always has records
 * waiting, so the loop would never poll its sockets again (seen: no epoll_wait
 * for 40 s under 100 spooled downloads, /metrics unanswered, clients starved).
 */
static void tls_check(struct upstream_call *call)
{
	static const struct timeval next_turn = { 0, 0 };
	SSL *ssl = call_ssl(call);

	if (ssl != NULL)
		call->ssl = ssl;
	if (ssl != NULL && SSL_pending(ssl) == 0 && SSL_has_pending(ssl) &&
	    event_add(call->tls_drain, &next_turn) < 0)
		log_error("upstream: cannot schedule reading the TLS records already received");
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
	pools_action(call->upstream->pools, call->pool, call->socket, CURL_CSELECT_IN);
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

/* The head is complete: checked, then the download handler decides. 0 to go on. */
static int head_done(struct upstream_call *call)
{
	const char *why = NULL;

	if (framing_check(call->head.status, &call->response_headers, &call->head.content_length,
			  &why) < 0) {
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
	if (framing_header_line(data, bytes, &call->response_headers, &call->invalid) < 0)
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

/* The call's own options: its callbacks, and the pool it runs in. */
static int call_configure(struct upstream_call *call, const struct gumloop_request *request)
{
	CURL *easy = call->easy;

	if (gumloop_configure(easy, request, &call->headers) < 0)
		goto fail;
	SETOPT(easy, CURLOPT_ERRORBUFFER, call->error);
	SETOPT(easy, CURLOPT_WRITEFUNCTION, write_cb);
	SETOPT(easy, CURLOPT_WRITEDATA, call);
	SETOPT(easy, CURLOPT_HEADERFUNCTION, header_cb);
	SETOPT(easy, CURLOPT_HEADERDATA, call);
	SETOPT(easy, CURLOPT_SSL_CTX_FUNCTION, ssl_ctx_cb);
	SETOPT(easy, CURLOPT_NOPROGRESS, 0L);
	SETOPT(easy, CURLOPT_XFERINFOFUNCTION, progress_cb);
	SETOPT(easy, CURLOPT_XFERINFODATA, call);
	SETOPT(easy, CURLOPT_PRIVATE, call);
	return pools_prepare(call->upstream->pools, easy);
fail:
	return -1;
}

static struct upstream_call *call_start(struct upstream *upstream, const struct conf *conf,
					const struct conf_credential *credential,
					const struct query *q, char *post_body, size_t post_length,
					const char *range, const char *if_range,
					const struct upstream_download_handlers *handlers,
					upstream_done_cb done, void *arg)
{
	struct upstream_call *call = calloc(1, sizeof(*call));
	struct timeval deadline = timeval_of(conf->upstream_timeout_ms);
	struct gumloop_request request = {
		.conf = conf,
		.credential = credential,
		.q = q,
		.body = post_body,
		.body_length = post_length,
		.range = range,
		.if_range = if_range,
		.stream = handlers != NULL,
		.conf_age_ms = now_ms() - upstream->applied_ms,
	};
	CURLMcode rc;

	if (call == NULL) {
		if (post_body != NULL)
			OPENSSL_cleanse(post_body, post_length);
		free(post_body);
		return NULL;
	}
	call->post_body = post_body;
	call->post_length = post_length;
	call->upstream = upstream;
	call->pool = handlers != NULL ? POOL_DOWNLOAD : POOL_STATUS;
	call->done = done;
	call->arg = arg;
	if (handlers != NULL) {
		call->handlers = *handlers;
		call->idle_timeout = timeval_of(conf->upstream_idle_timeout_ms);
		call->idle_timer = evtimer_new(upstream->base, on_idle, call);
	}
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
	    call->deadline == NULL || (handlers != NULL && call->idle_timer == NULL) ||
	    evtimer_add(call->deadline, &deadline) < 0 || call_configure(call, &request) < 0)
		goto fail;
	rc = curl_multi_add_handle(pools_multi(upstream->pools, call->pool), call->easy);
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

struct upstream_call *upstream_start_status(struct upstream *upstream, const struct conf *conf,
					    const struct conf_credential *credential,
					    const struct query *q, upstream_done_cb done, void *arg)
{
	return call_start(upstream, conf, credential, q, NULL, 0, NULL, NULL, NULL, done, arg);
}

struct upstream_call *upstream_start_export(struct upstream *upstream, const struct conf *conf,
					    const struct conf_credential *credential, char *body,
					    size_t length, upstream_done_cb done, void *arg)
{
	return call_start(upstream, conf, credential, NULL, body, length, NULL, NULL, NULL, done,
			  arg);
}

struct upstream_call *upstream_start_download(struct upstream *upstream, const struct conf *conf,
					      const struct conf_credential *credential,
					      const struct query *q, const char *range,
					      const char *if_range,
					      const struct upstream_download_handlers *handlers,
					      void *arg)
{
	return call_start(upstream, conf, credential, q, NULL, 0, range, if_range, handlers,
			  handlers->done, arg);
}
