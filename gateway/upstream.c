/*
 * upstream.c -- libcurl's multi_socket API on the gateway's libevent loop, after
 * curl's docs/examples/hiperfifo.c, plus the one Gumloop request we make. Every
 * curl return is checked; a failure fails the call, never the process.
 */
#include "config.h"

#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "conf.h"
#include "log.h"
#include "metrics.h"
#include "query.h"

#define UPSTREAM_USER_AGENT "gumloop-gateway/" PACKAGE_VERSION
#define UPSTREAM_MAX_CONNECT_MS 10000L
#define UPSTREAM_MAX_HEADER_BYTES (64 * 1024)

struct upstream {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	struct upstream_call *calls; /* every running call, for cancel-all */
};

struct upstream_call {
	struct upstream *upstream;
	CURL *easy;
	struct curl_slist *headers; /* holds the API key: wiped before free */
	struct evbuffer *body;
	int too_large;
	struct upstream_download_handlers handlers; /* all NULL but done for status calls */
	enum upstream_mode mode;
	struct evkeyvalq response_headers;
	size_t header_bytes;
	int paused;
	struct event *idle_timer; /* downloads: no byte for upstream_idle_timeout */
	struct event *tls_drain;  /* records read ahead are waiting: read on */
	curl_socket_t socket;	  /* from socket_cb, or BAD: CURLINFO_ACTIVESOCKET is -1
				     until a transfer is done (curl 7.88) */
	struct timeval idle_timeout;
	upstream_done_cb done;
	void *arg;
	struct upstream_call *prev, *next;
	char error[CURL_ERROR_SIZE];
};

/* One per socket curl watches; reached through curl_multi_assign. */
struct upstream_socket {
	struct upstream *upstream;
	struct event *event;
};

static void check_multi_info(struct upstream *upstream);
static void call_finish(struct upstream_call *call, CURLcode code);

static void socket_action(struct upstream *upstream, curl_socket_t fd, int flags)
{
	int running = 0;
	CURLMcode rc = curl_multi_socket_action(upstream->multi, fd, flags, &running);

	if (rc != CURLM_OK)
		log_error("%s: curl_multi_socket_action: %s", __func__,
			  curl_multi_strerror(rc));
	check_multi_info(upstream);
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

static void socket_forget(struct upstream_socket *socket)
{
	if (socket == NULL)
		return;
	if (socket->event != NULL)
		event_free(socket->event);
	free(socket);
}

/* CURLMOPT_SOCKETFUNCTION: (re)arm one event per socket for what curl waits on. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct upstream *upstream = userp;
	struct upstream_socket *socket = socketp;
	struct upstream_call *call = NULL;
	short kind = EV_PERSIST;

	if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, &call) == CURLE_OK && call != NULL)
		call->socket = what == CURL_POLL_REMOVE ? CURL_SOCKET_BAD : fd;
	if (what == CURL_POLL_REMOVE) {
		socket_forget(socket);
		return 0;
	}
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	if (socket == NULL) {
		socket = calloc(1, sizeof(*socket));
		if (socket == NULL)
			return -1;
		socket->upstream = upstream;
		if (curl_multi_assign(upstream->multi, fd, socket) != CURLM_OK) {
			free(socket);
			return -1;
		}
	}
	if (socket->event != NULL)
		event_free(socket->event);
	socket->event = event_new(upstream->base, fd, kind, on_socket_event, upstream);
	if (socket->event == NULL || event_add(socket->event, NULL) < 0) {
		log_error("%s: cannot watch upstream socket %d", __func__, (int)fd);
		return -1;
	}
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: one libevent timer; curl is called from it, not here. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct upstream *upstream = userp;
	struct timeval tv;

	(void)multi;
	if (timeout_ms < 0)
		return event_del(upstream->timer) == 0 ? 0 : -1;
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	return evtimer_add(upstream->timer, &tv) == 0 ? 0 : -1;
}

struct upstream *upstream_new(struct event_base *base)
{
	struct upstream *upstream = calloc(1, sizeof(*upstream));

	if (upstream == NULL)
		goto fail;
	upstream->base = base;
	upstream->multi = curl_multi_init();
	upstream->timer = evtimer_new(base, on_timer, upstream);
	if (upstream->multi == NULL || upstream->timer == NULL)
		goto fail;
	if (curl_multi_setopt(upstream->multi, CURLMOPT_SOCKETFUNCTION, socket_cb) !=
		    CURLM_OK ||
	    curl_multi_setopt(upstream->multi, CURLMOPT_SOCKETDATA, upstream) != CURLM_OK ||
	    curl_multi_setopt(upstream->multi, CURLMOPT_TIMERFUNCTION, timer_cb) !=
		    CURLM_OK ||
	    curl_multi_setopt(upstream->multi, CURLMOPT_TIMERDATA, upstream) != CURLM_OK)
		goto fail;
	return upstream;
fail:
	log_error("%s: cannot set up the libcurl multi handle", __func__);
	upstream_free(upstream);
	return NULL;
}

static void call_free(struct upstream_call *call)
{
	struct upstream *upstream = call->upstream;
	struct curl_slist *header;

	if (call->easy != NULL) {
		CURLMcode rc = curl_multi_remove_handle(upstream->multi, call->easy);

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
	if (call->idle_timer != NULL)
		event_free(call->idle_timer);
	if (call->tls_drain != NULL)
		event_free(call->tls_drain);
	if (call->prev != NULL)
		call->prev->next = call->next;
	else if (upstream->calls == call)
		upstream->calls = call->next;
	if (call->next != NULL)
		call->next->prev = call->prev;
	free(call);
}

void upstream_free(struct upstream *upstream)
{
	if (upstream == NULL)
		return;
	while (upstream->calls != NULL)
		call_free(upstream->calls);
	if (upstream->multi != NULL)
		curl_multi_cleanup(upstream->multi);
	if (upstream->timer != NULL)
		event_free(upstream->timer);
	free(upstream);
}

void upstream_cancel(struct upstream_call *call)
{
	if (call != NULL)
		call_free(call);
}

static enum upstream_outcome classify(CURLcode code, int too_large)
{
	switch (code) {
	case CURLE_OK:
		return UPSTREAM_OK;
	case CURLE_OPERATION_TIMEDOUT:
		return UPSTREAM_TIMEOUT;
	case CURLE_WRITE_ERROR:
	case CURLE_FILESIZE_EXCEEDED:
		return too_large ? UPSTREAM_TOO_LARGE : UPSTREAM_FAILED;
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

static void call_finish(struct upstream_call *call, CURLcode code)
{
	struct upstream_result result = { 0 };
	char *content_type = NULL;

	result.outcome = classify(code, call->too_large);
	result.body = call->body;
	if (curl_easy_getinfo(call->easy, CURLINFO_TOTAL_TIME, &result.seconds) != CURLE_OK)
		result.seconds = 0;
	if (result.outcome == UPSTREAM_OK) {
		if (curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &result.status) !=
			    CURLE_OK ||
		    curl_easy_getinfo(call->easy, CURLINFO_CONTENT_TYPE, &content_type) !=
			    CURLE_OK) {
			result.outcome = UPSTREAM_FAILED;
			result.status = 0;
		}
		result.content_type = content_type;
	}
	if (result.outcome != UPSTREAM_OK) {
		result.error = call->error[0] != '\0' ? call->error : curl_easy_strerror(code);
		if (result.outcome == UPSTREAM_TOO_LARGE)
			result.error = "response body over 1 MiB";
	}
	metrics_upstream(result.outcome == UPSTREAM_OK ? (int)result.status : 0,
			 result.outcome == UPSTREAM_TIMEOUT, result.seconds);
	call->done(&result, call->arg);
	call_free(call);
}

static void check_multi_info(struct upstream *upstream)
{
	CURLMsg *message;
	int left;

	while ((message = curl_multi_info_read(upstream->multi, &left)) != NULL) {
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

/* Something arrived: the idle clock of a download starts again. */
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

/* The connection's SSL, or NULL. */
static SSL *call_ssl(struct upstream_call *call)
{
	struct curl_tlssessioninfo *info = NULL;

	if (curl_easy_getinfo(call->easy, CURLINFO_TLS_SSL_PTR, &info) != CURLE_OK ||
	    info == NULL || info->backend != CURLSSLBACKEND_OPENSSL)
		return NULL;
	return info->internals;
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
	socket_action(call->upstream, call->socket, CURL_CSELECT_IN);
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
	if (call->mode == UPSTREAM_ABORT)
		return 0;

	if (evbuffer_get_length(call->body) + bytes > UPSTREAM_MAX_JSON_BYTES) {
		call->too_large = 1;
		return 0;
	}
	if (evbuffer_add(call->body, data, bytes) < 0)
		return 0;
	return bytes;
}

/* Keeps one "Name: value" header line of the response. */
static int keep_header(struct upstream_call *call, const char *line, size_t length)
{
	char copy[1024];
	char *colon, *value, *end;

	if (length >= sizeof(copy))
		return 0; /* not one we relay: those are short */
	memcpy(copy, line, length);
	copy[length] = '\0';
	colon = strchr(copy, ':');
	if (colon == NULL || colon == copy)
		return 0;
	*colon = '\0';
	for (value = colon + 1; *value == ' ' || *value == '\t'; value++)
		;
	for (end = value + strlen(value); end > value && (end[-1] == '\r' || end[-1] == '\n' ||
							  end[-1] == ' ' || end[-1] == '\t');
	     end--)
		;
	*end = '\0';
	return evhttp_add_header(&call->response_headers, copy, value);
}

/*
 * CURLOPT_HEADERFUNCTION for downloads: collects the final response's headers,
 * then asks the handler how to take the body before any of it arrives.
 */
static size_t header_cb(char *data, size_t size, size_t count, void *userp)
{
	struct upstream_call *call = userp;
	size_t bytes = size * count;
	long status = 0;

	idle_restart(call);

	if (bytes >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		evhttp_clear_headers(&call->response_headers);
		call->header_bytes = 0;
		return bytes;
	}
	if (bytes > 0 && (data[0] == '\r' || data[0] == '\n')) {
		if (curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
			return 0;
		if (status >= 100 && status < 200)
			return bytes; /* an interim answer; the real one follows */
		call->mode = call->handlers.headers(status, &call->response_headers, call->arg);
		return call->mode == UPSTREAM_ABORT ? 0 : bytes;
	}
	call->header_bytes += bytes;
	if (call->header_bytes > UPSTREAM_MAX_HEADER_BYTES) {
		call->too_large = 1;
		return 0;
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

	call->idle_timeout.tv_sec = conf->upstream_idle_timeout_ms / 1000;
	call->idle_timeout.tv_usec = (conf->upstream_idle_timeout_ms % 1000) * 1000;
	call->idle_timer = evtimer_new(call->upstream->base, on_idle, call);
	if (call->idle_timer == NULL || evtimer_add(call->idle_timer, &call->idle_timeout) < 0)
		goto fail;
	if ((range != NULL && add_header(call, "Range", range) < 0) ||
	    (if_range != NULL && add_header(call, "If-Range", if_range) < 0))
		goto fail;
	SETOPT(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	SETOPT(easy, CURLOPT_HEADERFUNCTION, header_cb);
	SETOPT(easy, CURLOPT_HEADERDATA, call);
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
	OPENSSL_cleanse(bearer, sizeof(bearer));

	SETOPT(easy, CURLOPT_URL, url);
	SETOPT(easy, CURLOPT_HTTPHEADER, call->headers);
	SETOPT(easy, CURLOPT_PROTOCOLS_STR, "https");
	SETOPT(easy, CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (conf->upstream_ca != NULL)
		SETOPT(easy, CURLOPT_CAINFO, conf->upstream_ca);
	SETOPT(easy, CURLOPT_NOSIGNAL, 1L);
	if (!q->download)
		SETOPT(easy, CURLOPT_TIMEOUT_MS, (long)conf->upstream_timeout_ms);
	SETOPT(easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
	SETOPT(easy, CURLOPT_USERAGENT, UPSTREAM_USER_AGENT);
	SETOPT(easy, CURLOPT_ERRORBUFFER, call->error);
	SETOPT(easy, CURLOPT_WRITEFUNCTION, write_cb);
	SETOPT(easy, CURLOPT_WRITEDATA, call);
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
	CURLMcode rc;

	if (call == NULL)
		return NULL;
	call->upstream = upstream;
	call->done = done;
	call->arg = arg;
	if (handlers != NULL)
		call->handlers = *handlers;
	call->mode = UPSTREAM_BUFFER;
	call->socket = CURL_SOCKET_BAD;
	/* TAILQ_INIT, which event2's headers do not export */
	call->response_headers.tqh_first = NULL;
	call->response_headers.tqh_last = &call->response_headers.tqh_first;
	call->next = upstream->calls;
	if (upstream->calls != NULL)
		upstream->calls->prev = call;
	upstream->calls = call;
	call->body = evbuffer_new();
	call->easy = curl_easy_init();
	call->tls_drain = event_new(upstream->base, -1, 0, on_tls_drain, call);
	if (call->body == NULL || call->easy == NULL || call->tls_drain == NULL ||
	    call_configure(call, conf, credential, q) < 0 ||
	    (handlers != NULL && configure_download(call, conf, range, if_range) < 0))
		goto fail;
	rc = curl_multi_add_handle(upstream->multi, call->easy);
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
