/*
 * listeners.c -- accepting clients: two evhttp objects (plain and TLS, since
 * evhttp takes one bufferevent factory each), the bound sockets of the listen
 * lines, and a record per open connection. evhttp 2.1 has no "new connection"
 * hook; it asks for a bufferevent per accepted socket and then makes the
 * connection that bufferevent's callback argument, so the record is made a
 * moment later (on_adopt, activated from the accept callback, before any I/O).
 */
#include "listeners.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "checks.h"
#include "clock.h"
#include "conf.h"

/*
 * The only table here is keyed by connection pointers, which no client picks:
 * a multiplicative (Fibonacci) hash of the pointer does, in a few instructions
 * where uthash's default would put its byte-wise Jenkins hash inline into every
 * lookup on the request path.
 */
#define HASH_FUNCTION(keyptr, keylen, hashv) ((hashv) = pointer_hash(keyptr))

#include "hash.h"
#include "linger.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"

static inline unsigned pointer_hash(const void *key)
{
	uintptr_t pointer;

	memcpy(&pointer, key, sizeof(pointer));
	return (unsigned)(((uint64_t)pointer * UINT64_C(0x9E3779B97F4A7C15)) >> 32);
}

/* evhttp's own hard cap on request line and headers, above the server's 8/16 KiB. */
#define LISTENERS_EVHTTP_MAX_HEADERS (64 * 1024)
#define LISTENERS_MAX_BODY	     CHECKS_MAX_BODY /* POST /export_data's */
#define LISTENERS_ACCEPT_RETRY_MS    100
#define LISTENERS_MAX_SINGLE_WRITE   (256 * 1024)
/*
 * Connections the kernel queues for accept (it caps this at somaxconn).
 * evhttp_bind_socket listens with 128; a burst of clients, or the queue behind
 * max_connections while accepting pauses, would get SYNs dropped and retried a
 * second later. nginx asks for 511.
 */
#define LISTENERS_BACKLOG 4096
/*
 * Bytes from a client libevent buffers before it stops reading that connection.
 * While evhttp writes an answer it keeps reading (to notice a close) with no one
 * taking the bytes: without this cap a client that sends during a download fills
 * the gateway's memory. A request's head (at most LISTENERS_EVHTTP_MAX_HEADERS)
 * still fits, and evhttp drains it as it parses.
 */
#define LISTENERS_MAX_INPUT (LISTENERS_EVHTTP_MAX_HEADERS + 64 * 1024)
struct listener {
	char *text; /* conf_listen.text, the identity kept across reloads */
	struct evhttp_bound_socket *handle;
	int tls;
};

struct listeners_connection {
	struct evhttp_connection *evcon; /* hash key */
	struct listeners *listeners;
	void *context;
	struct event *deadline; /* the next request must be in by then */
	int busy;		/* a request is being answered: no deadline */
	int64_t idle_since_ms;	/* CLOCK_MONOTONIC_COARSE, when it last went idle */
	int linger;		/* we close it after an error: drain what the client sends */
	UT_hash_handle hh;
};

struct adoption {
	struct bufferevent *bev; /* referenced until adopted */
	int refuse;		 /* its TLS could not be set up: close at once */
};

struct listeners {
	struct event_base *base;
	struct listeners_callbacks callbacks;
	void *arg;
	struct evhttp *http, *https;
	SSL_CTX *tls_context;
	struct listener *set;
	size_t set_count;
	struct listeners_connection *connections;
	size_t open; /* accepted and not yet closed, adopted or not */
	struct adoption *adopting;
	size_t adopting_count, adopting_cap;
	struct event *adopt;
	struct event *accept_retry;
	struct linger_set *lingering;	/* sockets closed after an error, drained */
	struct timeval request_timeout; /* client_timeout, a common timeout of the base */
	int64_t request_timeout_ms;
	size_t max_connections;
	int accept_failed; /* EMFILE and the like: paused until accept_retry */
	int accepting;
	int closed;
};

/* evconnlistener's error callback has no argument of ours; one set per process. */
static struct listeners *accept_owner;

static struct evconnlistener *listener_socket(const struct listener *listener)
{
	return listener->handle ? evhttp_bound_socket_get_listener(listener->handle) : NULL;
}

static void set_accepting(const struct listener *listener, int on)
{
	struct evconnlistener *socket = listener_socket(listener);

	if (socket != NULL &&
	    (on ? evconnlistener_enable(socket) : evconnlistener_disable(socket)) < 0)
		log_warn("listen %s: cannot %s accepting", listener->text, on ? "resume" : "pause");
}

/* Accepts while below max_connections and accept() works, else pauses. */
static void update_accepting(struct listeners *listeners)
{
	int want = !listeners->closed && !listeners->accept_failed &&
		   listeners->open < listeners->max_connections;

	if (want == listeners->accepting)
		return;
	if (!want && listeners->open >= listeners->max_connections)
		log_warn("max_connections (%zu) reached: not accepting until one closes",
			 listeners->max_connections);
	for (size_t i = 0; i < listeners->set_count; i++)
		set_accepting(&listeners->set[i], want);
	listeners->accepting = want;
}

static void on_accept_error(struct evconnlistener *socket, void *arg)
{
	struct listeners *listeners = accept_owner;
	struct timeval retry = { 0, LISTENERS_ACCEPT_RETRY_MS * 1000 };
	int error = EVUTIL_SOCKET_ERROR();

	(void)socket;
	(void)arg;
	if (listeners == NULL)
		return;
	if (!listeners->accept_failed)
		log_warn("accept: %s; pausing accepts for %d ms", strerror(error),
			 LISTENERS_ACCEPT_RETRY_MS);
	listeners->accept_failed = 1;
	update_accepting(listeners);
	if (evtimer_add(listeners->accept_retry, &retry) < 0)
		log_error("%s: cannot arm the accept retry", __func__);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
	struct listeners *listeners = arg;

	(void)fd;
	(void)what;
	listeners->accept_failed = 0;
	update_accepting(listeners);
}

static void connection_gone(struct listeners *listeners)
{
	listeners->open--;
	metrics_connection_closed();
	update_accepting(listeners);
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
	struct listeners_connection *tracked = arg;
	struct listeners *listeners = tracked->listeners;

	if (tracked->linger && !listeners->closed) {
		struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);

		linger_start(listeners->lingering, bev != NULL ? bufferevent_getfd(bev) : -1);
	}
	listeners->callbacks.closed(evcon, tracked->context, listeners->arg);
	HASH_DEL(listeners->connections, tracked);
	event_free(tracked->deadline);
	free(tracked);
	connection_gone(listeners);
}

/*
 * No complete request in client_timeout (a slowloris, or a silent client).
 * The deadline is lazy, as libev's documentation advises for timeouts reset
 * on every request: a request does not take the timer off, and the end of one
 * arms it only when it is not armed already; so when it fires, the connection
 * may be busy (nothing to do: its next idle arms it again) or have gone idle
 * later than the timer thinks (armed again for what is left).
 */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct listeners_connection *tracked = arg;
	struct listeners *listeners = tracked->listeners;
	int64_t left_ms = tracked->idle_since_ms + listeners->request_timeout_ms - clock_ms(1);

	(void)fd;
	(void)what;
	if (tracked->busy)
		return;
	if (left_ms > 0) {
		struct timeval left = { .tv_sec = left_ms / 1000,
					.tv_usec = (left_ms % 1000) * 1000 };

		if (evtimer_add(tracked->deadline, &left) == 0)
			return;
		log_warn("%s: cannot arm the request deadline", __func__);
	}
	log_debug("a connection sent no complete request within client_timeout: closed");
	evhttp_connection_free(tracked->evcon);
}

static struct listeners_connection *track(struct listeners *listeners,
					  struct evhttp_connection *evcon)
{
	struct listeners_connection *tracked = calloc(1, sizeof(*tracked));

	if (tracked == NULL)
		return NULL;
	tracked->evcon = evcon;
	tracked->listeners = listeners;
	tracked->idle_since_ms = clock_ms(1);
	tracked->deadline = evtimer_new(listeners->base, on_deadline, tracked);
	if (tracked->deadline == NULL ||
	    evtimer_add(tracked->deadline, &listeners->request_timeout) < 0)
		goto fail;
	hash_add_failed = 0;
	HASH_ADD_PTR(listeners->connections, evcon, tracked);
	if (hash_add_failed)
		goto fail;
	tracked->context = listeners->callbacks.opened(evcon, tracked, listeners->arg);
	evhttp_connection_set_closecb(evcon, on_close, tracked);
	return tracked;
fail:
	if (tracked->deadline != NULL)
		event_free(tracked->deadline);
	free(tracked);
	return NULL;
}

/*
 * A connection's only socket timeout is for writing: an answer the client does
 * not take within client_timeout closes it. Reading needs none, the request
 * deadline is stricter (a whole request within client_timeout of going idle),
 * and a read timeout would cost a re-arm of the read event on every read.
 */
static void set_write_timeout(struct listeners *listeners, struct bufferevent *bev)
{
	if (bev != NULL && bufferevent_set_timeouts(bev, NULL, &listeners->request_timeout) < 0)
		log_warn("%s: cannot set a connection's write timeout", __func__);
}

/*
 * Small answers go out now, not after the peer's ACK (TCP_NODELAY); a download's
 * queue goes out in large writes, not libevent's default 16 KiB at a time.
 */
static void tune_socket(struct listeners *listeners, struct bufferevent *bev)
{
	evutil_socket_t fd = bufferevent_getfd(bev);
	int on = 1;

	set_write_timeout(listeners, bev);

	if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) != 0)
		log_debug("TCP_NODELAY: %s", strerror(errno));
	if (bufferevent_set_max_single_write(bev, LISTENERS_MAX_SINGLE_WRITE) < 0)
		log_debug("cannot raise the single write size");
}

/*
 * The cap is on only while a request is answered later than the turn it came
 * in: while evhttp parses one it bounds what it reads itself (header and body
 * limits), and a watermark then would cost an event_add for every line it takes
 * from the input (libevent re-arms the read event on each drain below the
 * mark: 9% of a cache hit). Setting and clearing it costs two re-arms, so an
 * answer given at once (a hit) is bounded by listeners_pause_input instead:
 * evhttp would read while it writes it, and tests/test_download.py pipelines
 * against a client that never reads its answers.
 */
void listeners_cap_input(struct evhttp_connection *evcon, int capped)
{
	struct bufferevent *bev = evcon != NULL ? evhttp_connection_get_bufferevent(evcon) : NULL;

	if (bev != NULL)
		bufferevent_setwatermark(bev, EV_READ, 0, capped ? LISTENERS_MAX_INPUT : 0);
}

void listeners_pause_input(struct evhttp_connection *evcon)
{
	struct bufferevent *bev = evcon != NULL ? evhttp_connection_get_bufferevent(evcon) : NULL;

	if (bev != NULL && bufferevent_disable(bev, EV_READ) < 0)
		log_warn("%s: cannot stop reading a connection", __func__);
}

static void on_adopt(evutil_socket_t fd, short what, void *arg)
{
	struct listeners *listeners = arg;

	(void)fd;
	(void)what;
	for (size_t i = 0; i < listeners->adopting_count; i++) {
		struct adoption *adoption = &listeners->adopting[i];
		void *evcon = NULL;

		bufferevent_getcb(adoption->bev, NULL, NULL, NULL, &evcon);
		if (evcon == NULL) {
			connection_gone(listeners); /* evhttp dropped it already */
		} else if (adoption->refuse || track(listeners, evcon) == NULL) {
			log_warn("closing a new connection: %s",
				 adoption->refuse ? "no TLS session could be made"
						  : "out of memory");
			connection_gone(listeners);
			evhttp_connection_free(evcon);
		} else {
			tune_socket(listeners, adoption->bev);
		}
		bufferevent_decref(adoption->bev);
	}
	listeners->adopting_count = 0;
}

static struct bufferevent *accepted(struct listeners *listeners, struct bufferevent *bev,
				    int refuse)
{
	if (bev == NULL)
		return NULL;
	if (listeners->adopting_count == listeners->adopting_cap) {
		size_t cap = listeners->adopting_cap ? listeners->adopting_cap * 2 : 16;
		struct adoption *grown = realloc(listeners->adopting, cap * sizeof(*grown));

		if (grown == NULL) {
			/*
			 * Never tracked, so no request deadline: socket timeouts both
			 * ways bound a silent client, and on_request refuses a request
			 * with a 503 and a close.
			 */
			if (bufferevent_set_timeouts(bev, &listeners->request_timeout,
						     &listeners->request_timeout) < 0)
				log_warn("%s: cannot bound an untracked connection", __func__);
			return bev;
		}
		listeners->adopting = grown;
		listeners->adopting_cap = cap;
	}
	bufferevent_incref(bev);
	listeners->adopting[listeners->adopting_count].bev = bev;
	listeners->adopting[listeners->adopting_count].refuse = refuse;
	listeners->adopting_count++;
	listeners->open++;
	metrics_connection_opened();
	update_accepting(listeners);
	event_active(listeners->adopt, EV_TIMEOUT, 0);
	return bev;
}

static struct bufferevent *on_new_plain(struct event_base *base, void *arg)
{
	return accepted(arg, bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE), 0);
}

static struct bufferevent *on_new_tls(struct event_base *base, void *arg)
{
	struct listeners *listeners = arg;
	struct bufferevent *bev = tls_bufferevent_new(base, listeners->tls_context);

	/* Never let evhttp fall back to plain text on a TLS port: refuse instead. */
	if (bev == NULL)
		return accepted(listeners, bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE),
				1);
	return accepted(listeners, bev, 0);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct listeners *listeners = arg;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct listeners_connection *tracked = NULL;

	HASH_FIND_PTR(listeners->connections, &evcon, tracked);
	/* without the server's record nothing would give its deadline back: closed */
	if (tracked == NULL || tracked->context == NULL) {
		listeners->callbacks.unserved(req, listeners->arg);
		return;
	}
	tracked->busy = 1;
	listeners->callbacks.request(req, tracked->context, listeners->arg);
}

static int http_setup(struct listeners *listeners, struct evhttp *http,
		      struct bufferevent *(*factory)(struct event_base *, void *))
{
	if (http == NULL)
		return -1;
	evhttp_set_gencb(http, on_request, listeners);
	evhttp_set_bevcb(http, factory, listeners);
	/* Every method reaches the server, which answers 405 itself (with JSON). */
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
						 EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
						 EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
						 EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_max_headers_size(http, LISTENERS_EVHTTP_MAX_HEADERS);
	evhttp_set_max_body_size(http, LISTENERS_MAX_BODY);
	/* a body over the limit is read to its end before evhttp's 413, not reset away */
	if (evhttp_set_flags(http, EVHTTP_SERVER_LINGERING_CLOSE) != 0)
		log_warn("%s: evhttp has no lingering close", __func__);
	return 0;
}

struct listeners *listeners_new(struct event_base *base,
				const struct listeners_callbacks *callbacks, void *arg)
{
	struct listeners *listeners = calloc(1, sizeof(*listeners));

	if (listeners == NULL)
		return NULL;
	listeners->base = base;
	listeners->callbacks = *callbacks;
	listeners->arg = arg;
	listeners->accepting = 1;
	listeners->max_connections = (size_t)-1;
	listeners->http = evhttp_new(base);
	listeners->https = evhttp_new(base);
	listeners->adopt = event_new(base, -1, 0, on_adopt, listeners);
	listeners->lingering = linger_set_new(base);
	listeners->accept_retry = evtimer_new(base, on_accept_retry, listeners);
	if (http_setup(listeners, listeners->http, on_new_plain) < 0 ||
	    http_setup(listeners, listeners->https, on_new_tls) < 0 || listeners->adopt == NULL ||
	    listeners->lingering == NULL || listeners->accept_retry == NULL) {
		log_error("%s: cannot set up the HTTP listeners", __func__);
		listeners_free(listeners);
		return NULL;
	}
	accept_owner = listeners;
	return listeners;
}

static void listener_close(struct listeners *listeners, struct listener *listener)
{
	if (listener->handle != NULL)
		evhttp_del_accept_socket(listener->tls ? listeners->https : listeners->http,
					 listener->handle);
	free(listener->text);
	listener->handle = NULL;
	listener->text = NULL;
}

static void set_close(struct listeners *listeners, struct listener *set, size_t count)
{
	for (size_t i = 0; set != NULL && i < count; i++)
		listener_close(listeners, &set[i]);
	free(set);
}

/* The socket listens already: a second listen() only changes its backlog. */
static void set_backlog(evutil_socket_t fd, const char *text)
{
	if (listen(fd, LISTENERS_BACKLOG) != 0)
		log_warn("listen %s: backlog %d: %s; libevent's 128 stays", text, LISTENERS_BACKLOG,
			 strerror(errno));
}

static int listener_bind(struct listeners *listeners, const struct conf_listen *listen,
			 struct listener *out)
{
	struct evhttp *http = listen->tls ? listeners->https : listeners->http;

	out->tls = listen->tls;
	out->handle = evhttp_bind_socket_with_handle(http, listen->host, listen->port);
	if (out->handle == NULL) {
		log_error("listen %s: cannot bind: %s", listen->text, strerror(errno));
		return -1;
	}
	set_backlog(evhttp_bound_socket_get_fd(out->handle), listen->text);
	out->text = strdup(listen->text);
	if (out->text == NULL) {
		listener_close(listeners, out);
		return -1;
	}
	evconnlistener_set_error_cb(listener_socket(out), on_accept_error);
	if (!listeners->accepting)
		set_accepting(out, 0);
	log_info("listening on %s%s", listen->tls ? "https://" : "http://", listen->text);
	return 0;
}

static struct listener *listener_find(struct listener *set, size_t count, const char *text)
{
	for (size_t i = 0; set != NULL && i < count; i++) {
		if (set[i].text != NULL && strcmp(set[i].text, text) == 0)
			return &set[i];
	}
	return NULL;
}

/*
 * The set for conf: sockets of unchanged lines move over from the current set
 * (their slots emptied), the rest are bound anew. On failure nothing moved.
 */
static struct listener *set_for(struct listeners *listeners, const struct conf *conf)
{
	struct listener *next = calloc(conf->listen_count, sizeof(*next));
	size_t i;

	if (next == NULL)
		return NULL;
	for (i = 0; i < conf->listen_count; i++) {
		if (listener_find(listeners->set, listeners->set_count, conf->listens[i].text) ==
			    NULL &&
		    listener_bind(listeners, &conf->listens[i], &next[i]) < 0) {
			set_close(listeners, next, conf->listen_count);
			return NULL;
		}
	}
	for (i = 0; i < conf->listen_count; i++) {
		struct listener *kept =
			listener_find(listeners->set, listeners->set_count, conf->listens[i].text);

		if (kept != NULL) {
			next[i] = *kept;
			kept->text = NULL;
			kept->handle = NULL;
		}
	}
	return next;
}

static int wants_tls(const struct conf *conf)
{
	for (size_t i = 0; i < conf->listen_count; i++) {
		if (conf->listens[i].tls)
			return 1;
	}
	return 0;
}

/*
 * client_timeout as one of libevent's common timeouts: every connection's
 * deadline and socket timeouts have the same duration, so they go on one queue
 * in expiry order, and arming one (once per request, three times) is an append
 * instead of a walk of the timer heap. A base has room for 256 durations; past
 * that (256 reloads with a new client_timeout) the plain timeval does the job.
 */
static struct timeval request_timeout(struct event_base *base, const struct timeval *timeout)
{
	const struct timeval *common = event_base_init_common_timeout(base, timeout);

	return common != NULL ? *common : *timeout;
}

int listeners_apply(struct listeners *listeners, const struct conf *conf)
{
	SSL_CTX *tls_context = NULL;
	struct listener *next;
	struct timeval timeout = {
		.tv_sec = conf->client_timeout_ms / 1000,
		.tv_usec = (conf->client_timeout_ms % 1000) * 1000,
	};

	if (wants_tls(conf)) {
		tls_context = tls_context_new(conf->tls_cert, conf->tls_key);
		if (tls_context == NULL)
			return -1;
	}
	next = set_for(listeners, conf);
	if (next == NULL) {
		SSL_CTX_free(tls_context);
		return -1;
	}
	set_close(listeners, listeners->set, listeners->set_count);
	listeners->set = next;
	listeners->set_count = conf->listen_count;
	/* connections accepted earlier keep their own reference to the old context */
	SSL_CTX_free(listeners->tls_context);
	listeners->tls_context = tls_context;
	listeners->request_timeout = request_timeout(listeners->base, &timeout);
	listeners->request_timeout_ms = conf->client_timeout_ms;
	listeners->max_connections = (size_t)conf->max_connections;
	update_accepting(listeners);
	return 0;
}

void listeners_close(struct listeners *listeners)
{
	set_close(listeners, listeners->set, listeners->set_count);
	listeners->set = NULL;
	listeners->set_count = 0;
	listeners->closed = 1;
}

void listeners_idle(struct listeners *listeners, struct listeners_connection *tracked,
		    int restore_timeouts)
{
	tracked->busy = 0;
	tracked->idle_since_ms = clock_ms(1);
	if (!evtimer_pending(tracked->deadline, NULL) &&
	    evtimer_add(tracked->deadline, &listeners->request_timeout) < 0)
		log_warn("%s: cannot arm the request deadline", __func__);
	if (restore_timeouts)
		set_write_timeout(listeners, evhttp_connection_get_bufferevent(tracked->evcon));
}

void listeners_linger(struct listeners *listeners, struct evhttp_connection *evcon)
{
	struct listeners_connection *tracked = NULL;

	HASH_FIND_PTR(listeners->connections, &evcon, tracked);
	if (tracked != NULL)
		tracked->linger = 1;
}

void listeners_free(struct listeners *listeners)
{
	if (listeners == NULL)
		return;
	listeners_close(listeners);
	/* evhttp_free closes every connection: on_close reports each one. */
	if (listeners->http != NULL)
		evhttp_free(listeners->http);
	if (listeners->https != NULL)
		evhttp_free(listeners->https);
	if (listeners->adopt != NULL) {
		on_adopt(-1, 0, listeners); /* releases bufferevents of this very turn */
		event_free(listeners->adopt);
	}
	if (listeners->connections != NULL)
		log_error("%s: %u connections were never closed by evhttp", __func__,
			  HASH_COUNT(listeners->connections));
	if (listeners->accept_retry != NULL)
		event_free(listeners->accept_retry);
	linger_set_free(listeners->lingering);
	free(listeners->adopting);
	SSL_CTX_free(listeners->tls_context);
	if (accept_owner == listeners)
		accept_owner = NULL;
	free(listeners);
}
