/*
 * server.c -- the fake upstream: a scriptable stand-in for Gumloop's GET
 * /export_status over real HTTPS, driven by the tests and used as the demo
 * upstream. Not a model of Gumloop beyond the documented API, and not hardened
 * for hostile networks: it trusts whoever can reach it.
 *
 * GET .../export_status follows the API's rules (Bearer key; personal keys need
 * x-auth-key equal to the user id; user_id must be the key's; 400/401/403/404),
 * then the script in the export id (script.h has the grammar; csv.h the file).
 * POST /_raw?name=NAME[&trickle=BYTES&every=MS][&after=close|keep|rst] stores its
 * body (at most 1 MiB) under NAME: sent BYTES at a time every MS ms (default: all
 * at once), then the connection is closed once written (close, the default), left
 * open and never read again (keep: what follows stays in the client's buffers),
 * or reset (rst).
 * POST .../export_data starts an export as Gumloop does (Bearer key, x-auth-key,
 * a body whose user_id is the key's and with export_fields, start_date and
 * end_date): its new id "expN" follows the default script (REQUESTED, then
 * IN_PROGRESS, then COMPLETED after 6 s), or "expN;SCRIPT" with the body's
 * "fake_script":"SCRIPT". "fake_answer":"CODE" answers CODE instead (or
 * "invalid": a 200 without an id), "fake_delay_ms":"N" answers after N ms.
 * GET /_stats counts requests per id ("by_id": {ID: N}), connections, client
 * aborts, export_data calls (and the last one's body) and shows the last request's
 * headers. "first_final_ms": {ID: MS} says when the first JSON answer with a final
 * state (COMPLETED or FAILED) for ID was sent, in CLOCK_MONOTONIC milliseconds (the
 * clock of Python's time.monotonic()), so a bench can time how late the gateway's
 * clients learn it; an id never answered so is absent. POST /_reset forgets
 * everything but the raw answers.
 */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* An id table that cannot grow is answered with 503, not with exit(). */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>
#include <utlist.h>

#include "csv.h"
#include "script.h"

#define FAKE_CHUNK_MAX			((size_t)256 * 1024)
#define FAKE_MAX_IDS			1000000u
#define FAKE_MAX_HEADERS_SIZE		(64 * 1024)
#define FAKE_MAX_BODY_SIZE		(1024 * 1024)
#define FAKE_BIG_PADDING		((size_t)1600 * 1024)
#define FAKE_THROTTLE_SLICES_PER_SECOND 10
#define FAKE_FLUSH_POLL_US		5000
#define FAKE_CREATED_TS			"2026-01-01T00:00:00Z"
#define FAKE_FINISHED_TS		"2026-01-01T00:05:00Z"
#define FAKE_LAST_MODIFIED		"Thu, 01 Jan 2026 00:05:00 GMT"

enum fake_credential_kind { FAKE_CREDENTIAL_PERSONAL, FAKE_CREDENTIAL_OAUTH };

struct fake_credential {
	enum fake_credential_kind kind;
	char *storage; /* one allocation; key and user_id point into it */
	const char *key;
	const char *user_id;
};

/* Everything the server knows about one data_export_id since the last /_reset. */
struct fake_export {
	char *id;
	uint64_t requests;   /* every /export_status request naming it, for /_stats */
	uint64_t authorised; /* requests that passed auth; they walk states= */
	uint64_t first_seen_ms;
	bool sent_final;	 /* a JSON answer with a final state went out */
	uint64_t first_final_ms; /* when the first one did (CLOCK_MONOTONIC) */
	UT_hash_handle hh;
};

enum fake_phase {
	FAKE_PHASE_DELAYING,
	FAKE_PHASE_STREAMING,
	FAKE_PHASE_FLUSHING,
	FAKE_PHASE_RAW,
	FAKE_PHASE_RAW_ENDING,
};

enum fake_raw_after { FAKE_RAW_CLOSE, FAKE_RAW_KEEP, FAKE_RAW_RST };

/* Bytes stored by POST /_raw, sent as they are to requests scripted raw=NAME. */
struct fake_raw {
	char *name;
	unsigned char *bytes;
	size_t length;
	size_t trickle; /* bytes per write; 0: all at once */
	uint64_t every_ms;
	enum fake_raw_after after;
	UT_hash_handle hh;
};

/*
 * One authorised /export_status request, from its script to its reply. When it
 * outlives the request callback (delay, CSV stream) it is the connection's
 * closecb argument. Whoever ends it decides who frees req: libevent (reply
 * handed over, or connection freed with req attached) or us (libevent detached
 * req because the client went away).
 */
struct fake_exchange {
	struct fake_server *server;
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	struct event *timer;
	enum fake_phase phase;
	struct fake_script script;
	char *id;
	const char *state; /* points into script.storage or at a literal */
	bool download;
	struct evbuffer *chunk;
	uint64_t offset; /* next byte of the file to send */
	uint64_t stop;	 /* where sending stops (exclusive) */
	bool cut_at_stop;
	uint64_t started_us;
	uint64_t sent;
	size_t raw_trickle;
	uint64_t raw_every_ms;
	enum fake_raw_after raw_after;
	struct fake_exchange *prev, *next;
};

struct fake_server {
	struct event_base *base;
	struct evhttp *http;
	SSL_CTX *tls;
	struct event *sigterm;
	struct event *sigint;
	struct fake_credential *credentials;
	size_t credential_count;
	struct fake_export *exports;
	struct fake_exchange *exchanges;
	struct fake_raw *raws;
	uint64_t requests;
	uint64_t client_aborts;
	uint64_t connections;
	uint64_t export_data_calls; /* POST .../export_data requests */
	uint64_t exports_started;   /* the N of the next "expN" */
	char *export_data_last;	    /* the last one's body, as received */
	char *last_json;	    /* the "last" object of /_stats, rendered when recorded */
};

struct fake_options {
	const char *listen;
	const char *cert;
	const char *key;
	const char *port_file;
};

static void fake_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fake_log(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (fputs("fake-upstream: ", stderr) == EOF || vfprintf(stderr, fmt, ap) < 0 ||
	    fputc('\n', stderr) == EOF) {
		/* Nowhere left to report it. */
	}
	va_end(ap);
}

static uint64_t fake_now_us(void)
{
	struct timespec now;

	if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
		return 0;
	return (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
}

static bool fake_has_suffix(const char *text, const char *suffix)
{
	size_t text_length = strlen(text);
	size_t suffix_length = strlen(suffix);

	return text_length >= suffix_length &&
	       strcmp(text + text_length - suffix_length, suffix) == 0;
}

static int fake_buf_add(struct evbuffer *out, const char *text)
{
	return evbuffer_add(out, text, strlen(text));
}

/*
 * Appends text as the inside of a JSON string. Bytes outside printable ASCII
 * become \u00XX so the answer stays valid JSON whatever bytes a client sent.
 */
static int fake_json_add_escaped(struct evbuffer *out, const char *text, bool lowercase)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)text;

	while (*p != '\0') {
		const unsigned char *run = p;
		char escape[6];
		size_t escape_length;
		unsigned char c;

		while (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\' &&
		       !(lowercase && *p >= 'A' && *p <= 'Z'))
			p++;
		if (p > run && evbuffer_add(out, run, (size_t)(p - run)) != 0)
			return -1;
		if (*p == '\0')
			break;
		c = *p++;
		if (c >= 'A' && c <= 'Z') {
			escape[0] = (char)(c - 'A' + 'a');
			escape_length = 1;
		} else if (c == '"' || c == '\\') {
			escape[0] = '\\';
			escape[1] = (char)c;
			escape_length = 2;
		} else {
			memcpy(escape, "\\u00", 4);
			escape[4] = hex[c >> 4];
			escape[5] = hex[c & 0xf];
			escape_length = 6;
		}
		if (evbuffer_add(out, escape, escape_length) != 0)
			return -1;
	}
	return 0;
}

static int fake_json_add_string(struct evbuffer *out, const char *text)
{
	if (evbuffer_add(out, "\"", 1) != 0 || fake_json_add_escaped(out, text, false) != 0 ||
	    evbuffer_add(out, "\"", 1) != 0)
		return -1;
	return 0;
}

static const char *fake_method_name(enum evhttp_cmd_type method)
{
	switch (method) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
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
	return "UNKNOWN";
}

static void fake_add_header(struct evhttp_request *req, const char *name, const char *value)
{
	/* Fails only on CR/LF in the value or out of memory; the reply goes out anyway. */
	if (evhttp_add_header(evhttp_request_get_output_headers(req), name, value) != 0)
		fake_log("%s: cannot add header %s", __func__, name);
}

/* Sends a complete reply; body may be NULL and stays the caller's. */
static void fake_reply(struct evhttp_request *req, int code, const char *content_type,
		       struct evbuffer *body)
{
	if (content_type != NULL)
		fake_add_header(req, "Content-Type", content_type);
	evhttp_send_reply(req, code, NULL, body);
}

static void fake_reply_json(struct evhttp_request *req, int code, const char *json)
{
	struct evbuffer *body = evbuffer_new();

	if (body == NULL || fake_buf_add(body, json) != 0) {
		fake_log("%s: out of memory", __func__);
		evhttp_send_reply(req, 500, NULL, NULL);
	} else {
		fake_reply(req, code, "application/json", body);
	}
	if (body != NULL)
		evbuffer_free(body);
}

static void fake_reply_method_not_allowed(struct evhttp_request *req, const char *allow)
{
	fake_add_header(req, "Allow", allow);
	fake_reply_json(req, 405, "{\"error\":\"method not allowed\"}");
}

/* --- per-id state ------------------------------------------------------- */

static struct fake_export *fake_export_get(struct fake_server *server, const char *id)
{
	struct fake_export *export = NULL;
	unsigned count;

	HASH_FIND_STR(server->exports, id, export);
	if (export != NULL)
		return export;
	count = HASH_COUNT(server->exports);
	if (count >= FAKE_MAX_IDS)
		return NULL;
	if ((export = calloc(1, sizeof(*export))) == NULL)
		return NULL;
	if ((export->id = strdup(id)) == NULL) {
		free(export);
		return NULL;
	}
	export->first_seen_ms = fake_now_us() / 1000;
	HASH_ADD_KEYPTR(hh, server->exports, export->id, strlen(export->id), export);
	if (HASH_COUNT(server->exports) == count) {
		free(export->id);
		free(export);
		return NULL;
	}
	return export;
}

/*
 * Notes the first final state sent for id. Looked up by id, not kept as a pointer
 * in the exchange: a /_reset during a delay= frees the record, and the answer of
 * an id forgotten so is not counted.
 */
static void fake_export_note_sent(struct fake_server *server, const char *id, const char *state)
{
	struct fake_export *export = NULL;

	if (!fake_state_is_final(state))
		return;
	HASH_FIND_STR(server->exports, id, export);
	if (export == NULL || export->sent_final)
		return;
	export->sent_final = true;
	export->first_final_ms = fake_now_us() / 1000;
}

static void fake_exports_clear(struct fake_server *server)
{
	struct fake_export *export, *tmp;

	HASH_ITER (hh, server->exports, export, tmp) {
		HASH_DEL(server->exports, export);
		free(export->id);
		free(export);
	}
}

/* --- exchanges ---------------------------------------------------------- */

static void fake_exchange_timer_fired(evutil_socket_t fd, short what, void *arg);
static void fake_exchange_connection_closed(struct evhttp_connection *evcon, void *arg);
static void fake_csv_pump(struct fake_exchange *ex);

/* The one teardown: frees what the exchange owns, never req or the connection. */
static void fake_exchange_free(struct fake_exchange *ex, const char *reason)
{
	if (reason != NULL)
		fake_log("%s: %s", ex->id != NULL ? ex->id : "(no id)", reason);
	DL_DELETE(ex->server->exchanges, ex);
	if (ex->timer != NULL)
		event_free(ex->timer);
	if (ex->chunk != NULL)
		evbuffer_free(ex->chunk);
	fake_script_clear(&ex->script);
	free(ex->id);
	free(ex);
}

/*
 * Must run before any call that can complete the reply: evhttp_send_reply_end()
 * and a "Connection: close" reply can free the connection synchronously, which
 * would call our closecb with an exchange we are still using.
 */
static void fake_exchange_unwatch(struct fake_exchange *ex)
{
	evhttp_connection_set_closecb(ex->evcon, NULL, NULL);
}

static void fake_exchange_watch(struct fake_exchange *ex)
{
	evhttp_connection_set_closecb(ex->evcon, fake_exchange_connection_closed, ex);
}

/* Sends a complete reply and ends the exchange; body stays the caller's. */
static void fake_exchange_reply(struct fake_exchange *ex, int code, const char *content_type,
				struct evbuffer *body)
{
	struct evhttp_request *req = ex->req;

	fake_exchange_unwatch(ex);
	fake_exchange_free(ex, NULL);
	fake_reply(req, code, content_type, body);
}

static void fake_exchange_reply_json(struct fake_exchange *ex, int code, const char *json)
{
	struct evhttp_request *req = ex->req;

	fake_exchange_unwatch(ex);
	fake_exchange_free(ex, NULL);
	fake_reply_json(req, code, json);
}

/* Drops the TCP connection without a word; libevent frees req with it. */
static void fake_exchange_cut(struct fake_exchange *ex, const char *reason)
{
	struct evhttp_connection *evcon = ex->evcon;

	fake_exchange_unwatch(ex);
	fake_exchange_free(ex, reason);
	evhttp_connection_free(evcon);
}

static int fake_exchange_arm(struct fake_exchange *ex, uint64_t delay_us)
{
	struct timeval delay;

	if (ex->timer == NULL &&
	    (ex->timer = evtimer_new(ex->server->base, fake_exchange_timer_fired, ex)) == NULL)
		return -1;
	delay.tv_sec = (time_t)(delay_us / 1000000u);
	delay.tv_usec = (suseconds_t)(delay_us % 1000000u);
	return evtimer_add(ex->timer, &delay);
}

/*
 * libevent 2.1 stops reading once a request is parsed, so a client that hangs
 * up while we sit on the answer goes unnoticed until we write. Read again to
 * see the EOF, but without evhttp_read_cb: in the EVCON_WRITING state it calls
 * event_errx(), i.e. exits, as soon as a pipelined byte arrives. Input piles up
 * until we answer, as evhttp itself lets it once it starts writing.
 */
static int fake_connection_notice_close(struct evhttp_connection *evcon)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
	bufferevent_data_cb readcb, writecb;
	bufferevent_event_cb eventcb;
	void *cbarg;

	bufferevent_getcb(bev, &readcb, &writecb, &eventcb, &cbarg);
	bufferevent_setcb(bev, NULL, writecb, eventcb, cbarg);
	return bufferevent_enable(bev, EV_READ);
}

/*
 * Bytes written past evhttp must not wake its write callback: it would call the
 * drain callback an earlier reply on this kept-alive connection left behind
 * (evhttp never clears it), with an exchange long freed.
 */
static void fake_connection_forget_writes(struct evhttp_connection *evcon)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
	bufferevent_data_cb readcb, writecb;
	bufferevent_event_cb eventcb;
	void *cbarg;

	bufferevent_getcb(bev, &readcb, &writecb, &eventcb, &cbarg);
	bufferevent_setcb(bev, readcb, NULL, eventcb, cbarg);
}

static void fake_exchange_connection_closed(struct evhttp_connection *evcon, void *arg)
{
	struct fake_exchange *ex = arg;
	struct evhttp_request *req = ex->req;

	(void)evcon;
	/*
	 * On a client EOF/error/timeout before the reply was finished, libevent
	 * detaches req (req->evcon = NULL) before freeing the connection and leaves
	 * req to us. Otherwise (evhttp_free at shutdown) req is still attached and
	 * libevent frees it right after this callback.
	 */
	if (evhttp_request_get_connection(req) == NULL) {
		ex->server->client_aborts++;
		fake_exchange_free(ex, "client went away before the answer was complete");
		evhttp_request_free(req);
	} else {
		fake_exchange_free(ex, "connection closed by the server");
	}
}

static int fake_add_state_json(struct evbuffer *out, const char *id, const char *state, bool padded)
{
	int failed = 0;

	failed |= fake_buf_add(out, "{\"data_export_id\":") != 0;
	failed |= fake_json_add_string(out, id) != 0;
	failed |= fake_buf_add(out, ",\"state\":") != 0;
	failed |= fake_json_add_string(out, state) != 0;
	failed |= fake_buf_add(out, ",\"created_ts\":\"" FAKE_CREATED_TS "\"") != 0;
	if (fake_state_is_final(state))
		failed |= fake_buf_add(out, ",\"finished_ts\":\"" FAKE_FINISHED_TS "\"") != 0;
	if (padded) {
		char block[4096];
		size_t left, take;

		memset(block, 'x', sizeof(block));
		failed |= fake_buf_add(out, ",\"padding\":\"") != 0;
		for (left = FAKE_BIG_PADDING; left > 0 && !failed; left -= take) {
			take = left < sizeof(block) ? left : sizeof(block);
			failed |= evbuffer_add(out, block, take) != 0;
		}
		failed |= fake_buf_add(out, "\"") != 0;
	}
	failed |= fake_buf_add(out, "}") != 0;
	return failed ? -1 : 0;
}

static void fake_exchange_reply_body(struct fake_exchange *ex)
{
	struct evbuffer *body = evbuffer_new();
	const char *content_type = "application/json";
	int failed;

	if (body == NULL) {
		fake_exchange_reply(ex, 500, NULL, NULL);
		return;
	}
	switch (ex->script.body) {
	case FAKE_BODY_INVALID:
		failed = fake_buf_add(body, "{\"data_export_id\":\"x\",\"state\":\"IN_PROG");
		break;
	case FAKE_BODY_HTML:
		content_type = "text/html";
		failed = fake_buf_add(body, "<html>oops</html>");
		break;
	case FAKE_BODY_BIG:
	case FAKE_BODY_STATE:
	default:
		failed = fake_add_state_json(body, ex->id, ex->state,
					     ex->script.body == FAKE_BODY_BIG);
		break;
	}
	if (failed) {
		fake_exchange_reply(ex, 500, NULL, NULL);
	} else {
		/* Only a state the client can read counts; html and broken JSON carry none. */
		if (ex->script.body == FAKE_BODY_STATE || ex->script.body == FAKE_BODY_BIG)
			fake_export_note_sent(ex->server, ex->id, ex->state);
		fake_exchange_reply(ex, 200, content_type, body);
	}
	evbuffer_free(body);
}

static void fake_exchange_reply_status(struct fake_exchange *ex)
{
	int status = ex->script.status;
	char json[64];

	if (status >= 300 && status < 400)
		fake_add_header(ex->req, "Location", "https://example.invalid/moved");
	if (status == 204 || status == 304) {
		/* These must not carry a body; evhttp would write one anyway. */
		fake_exchange_reply(ex, status, NULL, NULL);
		return;
	}
	if (snprintf(json, sizeof(json), "{\"error\":\"scripted %d\"}", status) >=
	    (int)sizeof(json)) {
		fake_exchange_reply(ex, 500, NULL, NULL);
		return;
	}
	fake_exchange_reply_json(ex, status, json);
}

/* --- CSV ---------------------------------------------------------------- */

/* NAME goes into a quoted header value; keep it to characters that need no quoting. */
static char *fake_safe_name(const char *name)
{
	char *safe = strdup(name);
	char *p;

	if (safe == NULL)
		return NULL;
	for (p = safe; *p != '\0'; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
			*p = '_';
	}
	return safe;
}

static void fake_csv_finish(struct fake_exchange *ex)
{
	struct evhttp_request *req = ex->req;

	if (ex->cut_at_stop) {
		if (ex->sent == 0) {
			/* Nothing drained yet: let the headers reach the client first. */
			ex->phase = FAKE_PHASE_FLUSHING;
			if (fake_exchange_arm(ex, 0) != 0)
				fake_exchange_cut(ex, "cut before the headers were flushed");
			return;
		}
		fake_exchange_cut(ex, "cut= reached, connection dropped");
		return;
	}
	fake_exchange_unwatch(ex);
	fake_exchange_free(ex, NULL);
	evhttp_send_reply_end(req);
}

static void fake_csv_flush_then_cut(struct fake_exchange *ex)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->evcon);

	if (evbuffer_get_length(bufferevent_get_output(bev)) > 0 &&
	    fake_exchange_arm(ex, FAKE_FLUSH_POLL_US) == 0)
		return;
	fake_exchange_cut(ex, "cut=0 reached, connection dropped");
}

/* Called by evhttp once everything we queued has left the output buffer. */
static void fake_csv_drained(struct evhttp_connection *evcon, void *arg)
{
	(void)evcon;
	fake_csv_pump(arg);
}

/*
 * Generates the next slice only when the previous one has drained, so memory
 * stays at one slice per download however large the file or slow the client.
 */
static void fake_csv_pump(struct fake_exchange *ex)
{
	uint64_t remaining = ex->stop - ex->offset;
	size_t slice = FAKE_CHUNK_MAX;

	if (remaining == 0) {
		fake_csv_finish(ex);
		return;
	}
	if (ex->script.throttle > 0) {
		uint64_t due_us = ex->started_us + ex->sent * 1000000u / ex->script.throttle;
		uint64_t now_us = fake_now_us();
		uint64_t per_slice = ex->script.throttle / FAKE_THROTTLE_SLICES_PER_SECOND;

		if (now_us < due_us) {
			if (fake_exchange_arm(ex, due_us - now_us) != 0)
				fake_exchange_cut(ex, "cannot arm the throttle timer");
			return;
		}
		if (per_slice == 0)
			per_slice = 1;
		if (per_slice < slice)
			slice = (size_t)per_slice;
	}
	if (slice > remaining)
		slice = (size_t)remaining;
	if (fake_csv_add(ex->chunk, ex->offset, slice) != 0) {
		fake_exchange_cut(ex, "out of memory generating the CSV");
		return;
	}
	ex->offset += slice;
	ex->sent += slice;
	evhttp_send_reply_chunk_with_cb(ex->req, ex->chunk, fake_csv_drained, ex);
}

static bool fake_if_range_matches(struct evhttp_request *req, const char *etag)
{
	const char *if_range =
		evhttp_find_header(evhttp_request_get_input_headers(req), "If-Range");

	return if_range == NULL || strcmp(if_range, etag) == 0 ||
	       strcmp(if_range, FAKE_LAST_MODIFIED) == 0;
}

static int fake_csv_headers(struct fake_exchange *ex, const char *etag, uint64_t length)
{
	char *name = fake_safe_name(ex->script.name);
	size_t size;
	char *disposition;
	char number[32];

	if (name == NULL)
		return -1;
	size = strlen(name) + sizeof("attachment; filename=\"export-.csv\"");
	if ((disposition = malloc(size)) == NULL) {
		free(name);
		return -1;
	}
	if (snprintf(disposition, size, "attachment; filename=\"export-%s.csv\"", name) < 0) {
		free(disposition);
		free(name);
		return -1;
	}
	fake_add_header(ex->req, "Content-Type", "text/csv");
	fake_add_header(ex->req, "Content-Disposition", disposition);
	fake_add_header(ex->req, "Accept-Ranges", "bytes");
	fake_add_header(ex->req, "ETag", etag);
	fake_add_header(ex->req, "Last-Modified", FAKE_LAST_MODIFIED);
	if (!ex->script.chunked) {
		if (snprintf(number, sizeof(number), "%" PRIu64, length) < 0) {
			free(disposition);
			free(name);
			return -1;
		}
		fake_add_header(ex->req, "Content-Length", number);
	}
	free(disposition);
	free(name);
	return 0;
}

static char *fake_csv_etag(const struct fake_script *script)
{
	char *name = fake_safe_name(script->name);
	size_t size;
	char *etag;

	if (name == NULL)
		return NULL;
	size = strlen(name) + 32;
	if ((etag = malloc(size)) != NULL &&
	    snprintf(etag, size, "\"%s-%" PRIu64 "\"", name, script->csv_size) < 0) {
		free(etag);
		etag = NULL;
	}
	free(name);
	return etag;
}

static void fake_csv_start(struct fake_exchange *ex)
{
	uint64_t size = ex->script.csv_size;
	uint64_t first = 0, last = 0;
	const char *range = evhttp_find_header(evhttp_request_get_input_headers(ex->req), "Range");
	char *etag = fake_csv_etag(&ex->script);
	char content_range[80];
	int code = 200;

	if (etag == NULL) {
		fake_exchange_reply(ex, 500, NULL, NULL);
		return;
	}
	if (range != NULL && fake_if_range_matches(ex->req, etag)) {
		switch (fake_range_parse(range, size, &first, &last)) {
		case FAKE_RANGE_UNSATISFIABLE:
			free(etag);
			if (snprintf(content_range, sizeof(content_range), "bytes */%" PRIu64,
				     size) > 0)
				fake_add_header(ex->req, "Content-Range", content_range);
			fake_exchange_reply_json(ex, 416, "{\"error\":\"range not satisfiable\"}");
			return;
		case FAKE_RANGE_SATISFIABLE:
			code = 206;
			if (snprintf(content_range, sizeof(content_range),
				     "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, first, last,
				     size) > 0)
				fake_add_header(ex->req, "Content-Range", content_range);
			break;
		case FAKE_RANGE_IGNORED:
			break;
		}
	}
	ex->offset = first;
	ex->stop = code == 206 ? last + 1 : size;
	if (ex->script.has_cut && ex->script.cut <= ex->stop - ex->offset) {
		ex->stop = ex->offset + ex->script.cut;
		ex->cut_at_stop = true;
	}
	if (fake_csv_headers(ex, etag, code == 206 ? last + 1 - first : size) != 0 ||
	    (ex->chunk = evbuffer_new()) == NULL) {
		free(etag);
		fake_exchange_reply(ex, 500, NULL, NULL);
		return;
	}
	free(etag);
	ex->phase = FAKE_PHASE_STREAMING;
	ex->started_us = fake_now_us();
	fake_exchange_watch(ex);
	evhttp_send_reply_start(ex->req, code, NULL);
	fake_csv_pump(ex);
}

/* --- raw answers -------------------------------------------------------- */

static void fake_raws_clear(struct fake_server *server)
{
	struct fake_raw *raw, *tmp;

	HASH_ITER (hh, server->raws, raw, tmp) {
		HASH_DEL(server->raws, raw);
		free(raw->name);
		free(raw->bytes);
		free(raw);
	}
}

/* The last piece is written: close, reset or keep the connection as scripted. */
static void fake_raw_end(struct fake_exchange *ex)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->evcon);
	struct linger linger = { 1, 0 };

	switch (ex->raw_after) {
	case FAKE_RAW_KEEP:
		/* Nothing more is ever written; the closecb frees the exchange. */
		if (ex->timer != NULL)
			evtimer_del(ex->timer);
		return;
	case FAKE_RAW_CLOSE:
	case FAKE_RAW_RST:
		break;
	}
	if (evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
		ex->phase = FAKE_PHASE_RAW_ENDING;
		if (fake_exchange_arm(ex, FAKE_FLUSH_POLL_US) == 0)
			return;
	}
	if (ex->raw_after == FAKE_RAW_RST &&
	    setsockopt(bufferevent_getfd(bev), SOL_SOCKET, SO_LINGER, &linger, sizeof(linger)) != 0)
		fake_log("%s: SO_LINGER: %s", __func__, strerror(errno));
	fake_exchange_cut(ex, "raw answer sent, connection dropped");
}

/* Writes the next piece straight into the connection, past evhttp's framing. */
static void fake_raw_pump(struct fake_exchange *ex)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(ex->evcon);
	size_t left = evbuffer_get_length(ex->chunk);
	size_t piece = ex->raw_trickle > 0 && ex->raw_trickle < left ? ex->raw_trickle : left;

	if (piece > 0 &&
	    (evbuffer_remove_buffer(ex->chunk, bufferevent_get_output(bev), piece) != (int)piece ||
	     bufferevent_enable(bev, EV_WRITE) != 0)) {
		fake_exchange_cut(ex, "cannot write the raw answer");
		return;
	}
	if (evbuffer_get_length(ex->chunk) == 0) {
		fake_raw_end(ex);
		return;
	}
	if (fake_exchange_arm(ex, ex->raw_every_ms * 1000u) != 0)
		fake_exchange_cut(ex, "cannot arm the trickle timer");
}

static void fake_raw_start(struct fake_exchange *ex)
{
	struct fake_raw *raw = NULL;

	HASH_FIND_STR(ex->server->raws, ex->script.raw, raw);
	if (raw == NULL) {
		fake_exchange_reply_json(ex, 400, "{\"error\":\"no such raw answer\"}");
		return;
	}
	if ((ex->chunk = evbuffer_new()) == NULL ||
	    evbuffer_add(ex->chunk, raw->bytes, raw->length) != 0 ||
	    fake_connection_notice_close(ex->evcon) != 0) {
		fake_exchange_reply_json(ex, 500, "{\"error\":\"out of memory\"}");
		return;
	}
	fake_connection_forget_writes(ex->evcon);
	ex->raw_trickle = raw->trickle;
	ex->raw_every_ms = raw->every_ms;
	ex->raw_after = raw->after;
	ex->phase = FAKE_PHASE_RAW;
	fake_exchange_watch(ex);
	fake_raw_pump(ex);
}

static int fake_raw_options(struct fake_raw *raw, struct evkeyvalq *params)
{
	const char *trickle = evhttp_find_header(params, "trickle");
	const char *every = evhttp_find_header(params, "every");
	const char *after = evhttp_find_header(params, "after");
	uint64_t value;

	if (trickle != NULL) {
		if (fake_parse_u64(trickle, FAKE_MAX_BODY_SIZE, &value) != 0)
			return -1;
		raw->trickle = (size_t)value;
	}
	if (every != NULL && fake_parse_u64(every, FAKE_MAX_DELAY_MS, &raw->every_ms) != 0)
		return -1;
	if (after == NULL || strcmp(after, "close") == 0)
		raw->after = FAKE_RAW_CLOSE;
	else if (strcmp(after, "keep") == 0)
		raw->after = FAKE_RAW_KEEP;
	else if (strcmp(after, "rst") == 0)
		raw->after = FAKE_RAW_RST;
	else
		return -1;
	return 0;
}

static void fake_handle_raw(struct fake_server *server, struct evhttp_request *req)
{
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	struct evbuffer *body = evhttp_request_get_input_buffer(req);
	struct fake_raw *raw = NULL, *old = NULL;
	struct evkeyvalq params;
	const char *name;

	TAILQ_INIT(&params);
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		fake_reply_method_not_allowed(req, "POST");
		return;
	}
	if (query == NULL || evhttp_parse_query_str(query, &params) != 0 ||
	    (name = evhttp_find_header(&params, "name")) == NULL || *name == '\0' ||
	    (raw = calloc(1, sizeof(*raw))) == NULL || fake_raw_options(raw, &params) != 0) {
		free(raw);
		evhttp_clear_headers(&params);
		fake_reply_json(req, 400, "{\"error\":\"want POST /_raw?name=NAME\"}");
		return;
	}
	raw->length = evbuffer_get_length(body);
	raw->name = strdup(name);
	raw->bytes = malloc(raw->length + 1);
	evhttp_clear_headers(&params);
	if (raw->name == NULL || raw->bytes == NULL ||
	    evbuffer_remove(body, raw->bytes, raw->length) != (int)raw->length) {
		free(raw->name);
		free(raw->bytes);
		free(raw);
		fake_reply_json(req, 500, "{\"error\":\"out of memory\"}");
		return;
	}
	HASH_FIND_STR(server->raws, raw->name, old);
	if (old != NULL) {
		HASH_DEL(server->raws, old);
		free(old->name);
		free(old->bytes);
		free(old);
	}
	HASH_ADD_KEYPTR(hh, server->raws, raw->name, strlen(raw->name), raw);
	fake_reply_json(req, 200, "{\"ok\":true}");
}

/* --- answering /export_status ------------------------------------------ */

static void fake_exchange_respond(struct fake_exchange *ex)
{
	if (ex->script.status == 0)
		ex->script.status = fake_state_as_status(ex->state);
	if (ex->script.raw != NULL) {
		fake_raw_start(ex);
	} else if (ex->script.close) {
		fake_exchange_cut(ex, "close=1, connection dropped");
	} else if (ex->script.status != 0) {
		fake_exchange_reply_status(ex);
	} else if (ex->script.body != FAKE_BODY_STATE) {
		fake_exchange_reply_body(ex);
	} else if (ex->download && strcmp(ex->state, "COMPLETED") == 0) {
		fake_csv_start(ex);
	} else {
		fake_exchange_reply_body(ex);
	}
}

static void fake_exchange_timer_fired(evutil_socket_t fd, short what, void *arg)
{
	struct fake_exchange *ex = arg;

	(void)fd;
	(void)what;
	switch (ex->phase) {
	case FAKE_PHASE_DELAYING:
		fake_exchange_respond(ex);
		break;
	case FAKE_PHASE_STREAMING:
		fake_csv_pump(ex);
		break;
	case FAKE_PHASE_FLUSHING:
		fake_csv_flush_then_cut(ex);
		break;
	case FAKE_PHASE_RAW:
		fake_raw_pump(ex);
		break;
	case FAKE_PHASE_RAW_ENDING:
		fake_raw_end(ex);
		break;
	}
}

static void fake_exchange_start(struct fake_server *server, struct evhttp_request *req,
				struct fake_export *export, const char *id, const char *download)
{
	struct fake_exchange *ex = calloc(1, sizeof(*ex));

	if (ex == NULL) {
		fake_reply_json(req, 500, "{\"error\":\"out of memory\"}");
		return;
	}
	ex->server = server;
	ex->req = req;
	ex->evcon = evhttp_request_get_connection(req);
	DL_APPEND(server->exchanges, ex);
	switch (fake_script_parse(&ex->script, id)) {
	case FAKE_SCRIPT_OK:
		break;
	case FAKE_SCRIPT_BAD:
		fake_exchange_reply_json(ex, 400, "{\"error\":\"bad script\"}");
		return;
	case FAKE_SCRIPT_NOMEM:
		fake_exchange_reply_json(ex, 500, "{\"error\":\"out of memory\"}");
		return;
	}
	if ((ex->id = strdup(id)) == NULL) {
		fake_exchange_reply_json(ex, 500, "{\"error\":\"out of memory\"}");
		return;
	}
	export->authorised++;
	ex->state = fake_script_state(&ex->script, export->authorised,
				      fake_now_us() / 1000 - export->first_seen_ms);
	ex->download = download != NULL && strcmp(download, "true") == 0;
	if (ex->script.delay_ms == 0) {
		fake_exchange_respond(ex);
		return;
	}
	ex->phase = FAKE_PHASE_DELAYING;
	if (fake_exchange_arm(ex, ex->script.delay_ms * 1000u) != 0 ||
	    fake_connection_notice_close(ex->evcon) != 0) {
		fake_exchange_reply_json(ex, 500, "{\"error\":\"cannot start the delay\"}");
		return;
	}
	fake_exchange_watch(ex);
}

static bool fake_secret_equal(const char *given, const char *expected)
{
	size_t length = strlen(expected);

	return strlen(given) == length && CRYPTO_memcmp(given, expected, length) == 0;
}

/* NULL when the request does not carry a valid credential. */
static const struct fake_credential *fake_authenticate(const struct fake_server *server,
						       struct evhttp_request *req)
{
	struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
	const char *authorization = evhttp_find_header(headers, "Authorization");
	const char *auth_key = evhttp_find_header(headers, "x-auth-key");
	size_t i;

	if (authorization == NULL || strncasecmp(authorization, "Bearer ", 7) != 0)
		return NULL;
	for (i = 0; i < server->credential_count; i++) {
		const struct fake_credential *credential = &server->credentials[i];

		if (!fake_secret_equal(authorization + 7, credential->key))
			continue;
		if (credential->kind == FAKE_CREDENTIAL_PERSONAL &&
		    (auth_key == NULL || strcmp(auth_key, credential->user_id) != 0))
			return NULL;
		return credential;
	}
	return NULL;
}

static int fake_render_headers(struct evbuffer *out, struct evkeyvalq *headers)
{
	struct evkeyval *header, *other;
	bool first = true;

	for (header = TAILQ_FIRST(headers); header != NULL; header = TAILQ_NEXT(header, next)) {
		bool seen = false;

		for (other = TAILQ_FIRST(headers); other != header;
		     other = TAILQ_NEXT(other, next)) {
			if (strcasecmp(other->key, header->key) == 0) {
				seen = true;
				break;
			}
		}
		if (seen)
			continue;
		if (fake_buf_add(out, first ? "\"" : ",\"") != 0 ||
		    fake_json_add_escaped(out, header->key, true) != 0 ||
		    fake_buf_add(out, "\":\"") != 0 ||
		    fake_json_add_escaped(out, header->value, false) != 0)
			return -1;
		for (other = TAILQ_NEXT(header, next); other != NULL;
		     other = TAILQ_NEXT(other, next)) {
			if (strcasecmp(other->key, header->key) == 0 &&
			    (fake_buf_add(out, ", ") != 0 ||
			     fake_json_add_escaped(out, other->value, false) != 0))
				return -1;
		}
		if (fake_buf_add(out, "\"") != 0)
			return -1;
		first = false;
	}
	return 0;
}

/* Renders the request as /_stats' "last" now, since req dies with the exchange. */
static void fake_stats_record_last(struct fake_server *server, struct evhttp_request *req)
{
	struct evbuffer *json = evbuffer_new();
	const char *uri = evhttp_request_get_uri(req);
	char *rendered = NULL;
	size_t length;

	if (json == NULL || fake_buf_add(json, "{\"method\":") != 0 ||
	    fake_json_add_string(json, fake_method_name(evhttp_request_get_command(req))) != 0 ||
	    fake_buf_add(json, ",\"uri\":") != 0 ||
	    fake_json_add_string(json, uri != NULL ? uri : "") != 0 ||
	    fake_buf_add(json, ",\"headers\":{") != 0 ||
	    fake_render_headers(json, evhttp_request_get_input_headers(req)) != 0 ||
	    fake_buf_add(json, "}}") != 0)
		goto fail;
	length = evbuffer_get_length(json);
	if ((rendered = malloc(length + 1)) == NULL ||
	    evbuffer_remove(json, rendered, length) != (int)length)
		goto fail;
	rendered[length] = '\0';
	free(server->last_json);
	server->last_json = rendered;
	evbuffer_free(json);
	return;
fail:
	fake_log("%s: out of memory, /_stats keeps the previous request", __func__);
	free(rendered);
	if (json != NULL)
		evbuffer_free(json);
}

/*
 * Headers and body go out in two TLS writes; without TCP_NODELAY the second waits
 * for the peer's delayed ACK (~40 ms) and every answer looks slow.
 */
static void fake_no_delay(struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	int on = 1;

	if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) != 0)
		fprintf(stderr, "fake-upstream: TCP_NODELAY: %s\n", strerror(errno));
}

static void fake_handle_export_status(struct fake_server *server, struct evhttp_request *req)
{
	struct evkeyvalq params;
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	const char *id, *user_id;
	const struct fake_credential *credential;
	struct fake_export *export = NULL;

	TAILQ_INIT(&params);
	fake_no_delay(req);
	server->requests++;
	/* A malformed query leaves params empty, which is answered as missing fields. */
	if (query != NULL && evhttp_parse_query_str(query, &params) != 0)
		TAILQ_INIT(&params);
	id = evhttp_find_header(&params, "data_export_id");
	user_id = evhttp_find_header(&params, "user_id");
	if (id != NULL && (export = fake_export_get(server, id)) != NULL)
		export->requests++;
	fake_stats_record_last(server, req);

	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET)
		fake_reply_method_not_allowed(req, "GET");
	else if (user_id == NULL || id == NULL)
		fake_reply_json(req, 400,
				"{\"error\":\"user_id and data_export_id are required\"}");
	else if ((credential = fake_authenticate(server, req)) == NULL)
		fake_reply_json(req, 401, "{\"error\":\"Unauthorized\"}");
	else if (strcmp(user_id, credential->user_id) != 0)
		fake_reply_json(req, 403,
				"{\"error\":{\"code\":\"forbidden\",\"message\":\"export does not "
				"belong to this user\"}}");
	else if (export == NULL)
		fake_reply_json(req, 503, "{\"error\":\"too many export ids, POST /_reset\"}");
	else
		fake_exchange_start(server, req, export, id,
				    evhttp_find_header(&params, "download"));
	evhttp_clear_headers(&params);
}

/* --- POST /export_data ---------------------------------------------------- */

/* A reply held for fake_delay_ms; dropped if the client closes first. */
struct fake_post {
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	struct event *timer;
	int code;
	char *json;
};

static void fake_post_free(struct fake_post *post)
{
	if (post->timer != NULL)
		event_free(post->timer);
	free(post->json);
	free(post);
}

static void fake_post_fired(evutil_socket_t fd, short what, void *arg)
{
	struct fake_post *post = arg;

	(void)fd;
	(void)what;
	evhttp_connection_set_closecb(post->evcon, NULL, NULL);
	fake_reply_json(post->req, post->code, post->json);
	fake_post_free(post);
}

static void fake_post_closed(struct evhttp_connection *evcon, void *arg)
{
	(void)evcon;
	fake_post_free(arg);
}

/*
 * The string value of "key" in compact JSON (the gateway sends it so), copied
 * into out (cap bytes); NULL when absent, not a plain string, or too long.
 */
static const char *fake_json_field(const char *json, const char *key, char *out, size_t cap)
{
	char pattern[64];
	const char *start, *end;

	snprintf(pattern, sizeof(pattern), "\"%s\":\"", key);
	if ((start = strstr(json, pattern)) == NULL)
		return NULL;
	start += strlen(pattern);
	for (end = start; *end != '\0' && *end != '"' && *end != '\\'; end++)
		;
	if (*end != '"' || (size_t)(end - start) >= cap)
		return NULL;
	memcpy(out, start, (size_t)(end - start));
	out[end - start] = '\0';
	return out;
}

static void fake_post_reply(struct fake_server *server, struct evhttp_request *req, int code,
			    char *json, const char *delay)
{
	struct fake_post *post;
	uint64_t ms = 0;

	if (delay != NULL && fake_parse_u64(delay, 60000, &ms) != 0)
		ms = 0;
	if (ms == 0 || (post = calloc(1, sizeof(*post))) == NULL) {
		fake_reply_json(req, code, json);
		free(json);
		return;
	}
	post->req = req;
	post->evcon = evhttp_request_get_connection(req);
	post->code = code;
	post->json = json;
	post->timer = evtimer_new(server->base, fake_post_fired, post);
	if (post->timer == NULL || post->evcon == NULL) {
		fake_reply_json(req, code, json);
		post->json = NULL;
		free(json);
		fake_post_free(post);
		return;
	}
	evhttp_connection_set_closecb(post->evcon, fake_post_closed, post);
	struct timeval tv = { .tv_sec = (time_t)(ms / 1000),
			      .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
	evtimer_add(post->timer, &tv);
}

static void fake_handle_export_data(struct fake_server *server, struct evhttp_request *req)
{
	struct evbuffer *input = evhttp_request_get_input_buffer(req);
	size_t length = evbuffer_get_length(input);
	const struct fake_credential *credential;
	char *body = NULL, *json = NULL, prefix[512], field[256], id[300];
	const char *script, *answer;
	struct fake_export *export;

	fake_no_delay(req);
	server->export_data_calls++;
	fake_stats_record_last(server, req);
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		fake_reply_method_not_allowed(req, "POST");
		return;
	}
	if ((body = malloc(length + 1)) == NULL ||
	    evbuffer_copyout(input, body, length) != (ev_ssize_t)length) {
		free(body);
		fake_reply_json(req, 500, "{\"error\":\"out of memory\"}");
		return;
	}
	body[length] = '\0';
	free(server->export_data_last);
	server->export_data_last = body;
	if ((credential = fake_authenticate(server, req)) == NULL) {
		fake_reply_json(req, 401, "{\"error\":\"Unauthorized\"}");
		return;
	}
	snprintf(prefix, sizeof(prefix), "{\"user_id\":\"%s\"", credential->user_id);
	if (strncmp(body, prefix, strlen(prefix)) != 0) {
		fake_reply_json(req, 403, "{\"error\":\"user_id is not the key's user\"}");
		return;
	}
	if (strstr(body, "\"export_fields\":[") == NULL ||
	    fake_json_field(body, "start_date", field, sizeof(field)) == NULL ||
	    fake_json_field(body, "end_date", field, sizeof(field)) == NULL) {
		fake_reply_json(
			req, 400,
			"{\"error\":\"export_fields, start_date and end_date are required\"}");
		return;
	}
	answer = fake_json_field(body, "fake_answer", field, sizeof(field));
	if (answer != NULL && strcmp(answer, "invalid") == 0) {
		json = strdup("{\"success\":true}");
		fake_post_reply(server, req, 200, json,
				fake_json_field(body, "fake_delay_ms", prefix, sizeof(prefix)));
		return;
	}
	if (answer != NULL) {
		uint64_t code = 0;

		if (fake_parse_u64(answer, 599, &code) != 0 || code < 200)
			code = 500;
		if (asprintf(&json, "{\"error\":\"scripted %d\"}", (int)code) < 0)
			json = NULL;
		fake_post_reply(server, req, json != NULL ? (int)code : 500,
				json != NULL ? json : strdup("{}"),
				fake_json_field(body, "fake_delay_ms", prefix, sizeof(prefix)));
		return;
	}
	script = fake_json_field(body, "fake_script", field, sizeof(field));
	snprintf(id, sizeof(id), "exp%" PRIu64 "%s%s", ++server->exports_started,
		 script != NULL ? ";" : "", script != NULL ? script : "");
	if ((export = fake_export_get(server, id)) == NULL ||
	    asprintf(&json,
		     "{\"success\":true,\"data_export_id\":\"%s\",\"state\":\"REQUESTED\","
		     "\"created_ts\":\"" FAKE_CREATED_TS "\"}",
		     id) < 0) {
		fake_reply_json(req, 500, "{\"error\":\"out of memory\"}");
		return;
	}
	(void)export;
	fake_post_reply(server, req, 200, json,
			fake_json_field(body, "fake_delay_ms", prefix, sizeof(prefix)));
}

/* --- control endpoints -------------------------------------------------- */

static void fake_handle_stats(struct fake_server *server, struct evhttp_request *req)
{
	struct evbuffer *body;
	struct fake_export *export, *tmp;
	bool first = true;
	int failed = 0;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		fake_reply_method_not_allowed(req, "GET");
		return;
	}
	if ((body = evbuffer_new()) == NULL) {
		evhttp_send_reply(req, 500, NULL, NULL);
		return;
	}
	failed |= evbuffer_add_printf(body, "{\"requests\":%" PRIu64 ",\"by_id\":{",
				      server->requests) < 0;
	HASH_ITER (hh, server->exports, export, tmp) {
		failed |= fake_buf_add(body, first ? "" : ",") != 0;
		failed |= fake_json_add_string(body, export->id) != 0;
		failed |= evbuffer_add_printf(body, ":%" PRIu64, export->requests) < 0;
		first = false;
	}
	/* A map of its own beside by_id, whose values tests read as plain counts. */
	failed |= fake_buf_add(body, "},\"first_final_ms\":{") != 0;
	first = true;
	HASH_ITER (hh, server->exports, export, tmp) {
		if (!export->sent_final)
			continue;
		failed |= fake_buf_add(body, first ? "" : ",") != 0;
		failed |= fake_json_add_string(body, export->id) != 0;
		failed |= evbuffer_add_printf(body, ":%" PRIu64, export->first_final_ms) < 0;
		first = false;
	}
	failed |= evbuffer_add_printf(body,
				      "},\"client_aborts\":%" PRIu64 ",\"connections\":%" PRIu64
				      ",\"export_data\":%" PRIu64 ",\"export_data_last\":",
				      server->client_aborts, server->connections,
				      server->export_data_calls) < 0;
	failed |= (server->export_data_last != NULL
			   ? fake_json_add_string(body, server->export_data_last)
			   : fake_buf_add(body, "null")) != 0;
	failed |= fake_buf_add(body, ",\"last\":") != 0;
	failed |= fake_buf_add(body, server->last_json != NULL ? server->last_json : "null") != 0;
	failed |= fake_buf_add(body, "}") != 0;
	if (failed)
		evhttp_send_reply(req, 500, NULL, NULL);
	else
		fake_reply(req, 200, "application/json", body);
	evbuffer_free(body);
}

static void fake_handle_reset(struct fake_server *server, struct evhttp_request *req)
{
	enum evhttp_cmd_type method = evhttp_request_get_command(req);

	if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_POST) {
		fake_reply_method_not_allowed(req, "GET, POST");
		return;
	}
	server->requests = 0;
	server->client_aborts = 0;
	server->connections = 0;
	server->export_data_calls = 0;
	free(server->export_data_last);
	server->export_data_last = NULL;
	fake_exports_clear(server);
	free(server->last_json);
	server->last_json = NULL;
	fake_reply_json(req, 200, "{\"ok\":true}");
}

static void fake_handle_request(struct evhttp_request *req, void *arg)
{
	struct fake_server *server = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;

	if (path == NULL)
		fake_reply_json(req, 400, "{\"error\":\"bad request\"}");
	else if (strcmp(path, "/_stats") == 0)
		fake_handle_stats(server, req);
	else if (strcmp(path, "/_reset") == 0)
		fake_handle_reset(server, req);
	else if (strcmp(path, "/_raw") == 0)
		fake_handle_raw(server, req);
	else if (fake_has_suffix(path, "/export_status"))
		fake_handle_export_status(server, req);
	else if (fake_has_suffix(path, "/export_data"))
		fake_handle_export_data(server, req);
	else
		fake_reply_json(req, 404, "{\"error\":\"not found\"}");
}

/* Called by evhttp once per accepted connection. */
static struct bufferevent *fake_accept_tls(struct event_base *base, void *arg)
{
	struct fake_server *server = arg;
	struct bufferevent *bev;
	SSL *ssl;

	server->connections++;
	/* Returning NULL makes libevent fall back to a plain-text bufferevent. */
	if ((ssl = SSL_new(server->tls)) == NULL) {
		fake_log("%s: SSL_new failed, this connection will not speak TLS", __func__);
		return NULL;
	}
	bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
					     BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		fake_log("%s: bufferevent_openssl_socket_new failed", __func__);
		SSL_free(ssl);
		return NULL;
	}
	/* A client that drops TCP without close_notify is a plain EOF to us. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

/* --- start-up and shutdown --------------------------------------------- */

static SSL_CTX *fake_tls_context(const char *cert, const char *key)
{
	SSL_CTX *tls = SSL_CTX_new(TLS_server_method());

	if (tls == NULL)
		goto fail;
	if (SSL_CTX_set_min_proto_version(tls, TLS1_2_VERSION) != 1)
		goto fail;
	if (SSL_CTX_use_certificate_chain_file(tls, cert) != 1) {
		fake_log("cannot load certificate chain %s", cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(tls, key, SSL_FILETYPE_PEM) != 1) {
		fake_log("cannot load private key %s", key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(tls) != 1) {
		fake_log("%s does not match %s", key, cert);
		goto fail;
	}
	/* libevent retries a blocked SSL_write from wherever the evbuffer now keeps the bytes. */
	SSL_CTX_set_mode(tls, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	return tls;
fail:
	ERR_print_errors_fp(stderr);
	SSL_CTX_free(tls);
	return NULL;
}

/* KIND:KEY:USER_ID; KEY may contain ':', USER_ID may not. */
static int fake_credential_parse(struct fake_credential *credential, const char *text)
{
	char *first_colon, *last_colon;

	memset(credential, 0, sizeof(*credential));
	if ((credential->storage = strdup(text)) == NULL)
		return -1;
	first_colon = strchr(credential->storage, ':');
	last_colon = strrchr(credential->storage, ':');
	if (first_colon == NULL || first_colon == last_colon || first_colon + 1 == last_colon ||
	    last_colon[1] == '\0')
		return -1;
	*first_colon = '\0';
	*last_colon = '\0';
	if (strcmp(credential->storage, "personal") == 0)
		credential->kind = FAKE_CREDENTIAL_PERSONAL;
	else if (strcmp(credential->storage, "oauth") == 0)
		credential->kind = FAKE_CREDENTIAL_OAUTH;
	else
		return -1;
	credential->key = first_colon + 1;
	credential->user_id = last_colon + 1;
	return 0;
}

static int fake_credential_add(struct fake_server *server, const char *text)
{
	struct fake_credential *grown;

	grown = realloc(server->credentials,
			(server->credential_count + 1) * sizeof(*server->credentials));
	if (grown == NULL)
		return -1;
	server->credentials = grown;
	if (fake_credential_parse(&grown[server->credential_count], text) != 0) {
		free(grown[server->credential_count].storage);
		return -1;
	}
	server->credential_count++;
	return 0;
}

/* HOST:PORT or [V6]:PORT; *host is allocated and bracket-free. */
static int fake_parse_listen(const char *text, char **host, uint16_t *port)
{
	const char *colon = strrchr(text, ':');
	const char *start = text;
	size_t length;
	uint64_t number;

	if (colon == NULL || colon == text || fake_parse_u64(colon + 1, 65535, &number) != 0)
		return -1;
	length = (size_t)(colon - text);
	if (text[0] == '[') {
		if (length < 3 || colon[-1] != ']')
			return -1;
		start = text + 1;
		length -= 2;
	}
	if ((*host = strndup(start, length)) == NULL)
		return -1;
	*port = (uint16_t)number;
	return 0;
}

static int fake_bound_port(struct evhttp_bound_socket *bound, unsigned *port)
{
	struct sockaddr_storage address;
	socklen_t length = sizeof(address);

	if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&address, &length) !=
	    0)
		return -1;
	if (address.ss_family == AF_INET)
		*port = ntohs(((struct sockaddr_in *)&address)->sin_port);
	else if (address.ss_family == AF_INET6)
		*port = ntohs(((struct sockaddr_in6 *)&address)->sin6_port);
	else
		return -1;
	return 0;
}

/* Written to a temporary name and renamed, so a reader never sees half a number. */
static int fake_write_port_file(const char *path, unsigned port)
{
	size_t size = strlen(path) + 32;
	char *temporary = malloc(size);
	FILE *file = NULL;
	int result = -1;

	if (temporary == NULL || snprintf(temporary, size, "%s.tmp.%ld", path, (long)getpid()) < 0)
		goto done;
	if ((file = fopen(temporary, "w")) == NULL)
		goto done;
	if (fprintf(file, "%u\n", port) < 0) {
		if (fclose(file) != 0) {
			/* Already failing. */
		}
		file = NULL;
		goto done;
	}
	if (fclose(file) != 0) {
		file = NULL;
		goto done;
	}
	file = NULL;
	if (rename(temporary, path) != 0)
		goto done;
	result = 0;
done:
	if (result != 0) {
		fake_log("cannot write port file %s: %s", path, strerror(errno));
		if (temporary != NULL && unlink(temporary) != 0 && errno != ENOENT)
			fake_log("cannot remove %s: %s", temporary, strerror(errno));
	}
	free(temporary);
	return result;
}

static void fake_signal(evutil_socket_t signal_number, short what, void *arg)
{
	struct fake_server *server = arg;

	(void)what;
	fake_log("signal %d, shutting down", (int)signal_number);
	if (event_base_loopbreak(server->base) != 0)
		fake_log("%s: event_base_loopbreak failed", __func__);
}

static void fake_server_free(struct fake_server *server)
{
	struct fake_exchange *ex, *tmp;
	size_t i;

	/* Frees every connection; our closecbs free the exchanges still running. */
	if (server->http != NULL)
		evhttp_free(server->http);
	DL_FOREACH_SAFE (server->exchanges, ex, tmp) {
		fake_exchange_free(ex, "still running at exit");
	}
	if (server->sigterm != NULL)
		event_free(server->sigterm);
	if (server->sigint != NULL)
		event_free(server->sigint);
	/* Runs the bufferevent finalizers, which free the SSL objects. */
	if (server->base != NULL)
		event_base_free(server->base);
	SSL_CTX_free(server->tls);
	fake_exports_clear(server);
	fake_raws_clear(server);
	free(server->export_data_last);
	free(server->last_json);
	for (i = 0; i < server->credential_count; i++)
		free(server->credentials[i].storage);
	free(server->credentials);
	memset(server, 0, sizeof(*server));
}

static void fake_usage(FILE *out)
{
	if (fputs("usage: fake-upstream [--listen HOST:PORT] --cert FILE --key FILE\n"
		  "                     --credential personal|oauth:KEY:USER_ID [--credential "
		  "...]\n"
		  "                     [--port-file PATH]\n"
		  "A fake Gumloop GET /export_status over HTTPS, scripted through data_export_id.\n"
		  "  --listen      address to bind (default 127.0.0.1:0, port 0 = any free port)\n"
		  "  --port-file   write the bound port there (atomically) once listening\n",
		  out) == EOF) {
		/* Nothing better to do. */
	}
}

/* 0 ok, 1 help printed, -1 bad arguments. */
static int fake_parse_arguments(int argc, char **argv, struct fake_options *options,
				struct fake_server *server)
{
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "cert", required_argument, NULL, 'c' },
		{ "key", required_argument, NULL, 'k' },
		{ "credential", required_argument, NULL, 'C' },
		{ "port-file", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int option;

	options->listen = "127.0.0.1:0";
	while ((option = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (option) {
		case 'l':
			options->listen = optarg;
			break;
		case 'c':
			options->cert = optarg;
			break;
		case 'k':
			options->key = optarg;
			break;
		case 'p':
			options->port_file = optarg;
			break;
		case 'C':
			if (fake_credential_add(server, optarg) != 0) {
				fake_log("bad --credential %s (want personal|oauth:KEY:USER_ID)",
					 optarg);
				return -1;
			}
			break;
		case 'h':
			return 1;
		default:
			return -1;
		}
	}
	if (optind != argc) {
		fake_log("unexpected argument %s", argv[optind]);
		return -1;
	}
	if (options->cert == NULL || options->key == NULL || server->credential_count == 0) {
		fake_log("--cert, --key and at least one --credential are required");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct fake_options options = { 0 };
	struct fake_server server = { 0 };
	struct evhttp_bound_socket *bound;
	char *host = NULL;
	uint16_t port = 0;
	unsigned bound_port;
	int status = 1;

	switch (fake_parse_arguments(argc, argv, &options, &server)) {
	case 0:
		break;
	case 1:
		fake_usage(stdout);
		fake_server_free(&server);
		return 0;
	default:
		fake_usage(stderr);
		fake_server_free(&server);
		return 2;
	}
	if (fake_parse_listen(options.listen, &host, &port) != 0) {
		fake_log("bad --listen %s (want HOST:PORT)", options.listen);
		fake_usage(stderr);
		fake_server_free(&server);
		return 2;
	}
	/* A client that vanishes mid-write must cost an EPIPE, not the process. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
		fake_log("cannot ignore SIGPIPE: %s", strerror(errno));
		goto fail;
	}
	if ((server.tls = fake_tls_context(options.cert, options.key)) == NULL)
		goto fail;
	if ((server.base = event_base_new()) == NULL) {
		fake_log("event_base_new failed");
		goto fail;
	}
	if ((server.http = evhttp_new(server.base)) == NULL) {
		fake_log("evhttp_new failed");
		goto fail;
	}
	evhttp_set_bevcb(server.http, fake_accept_tls, &server);
	evhttp_set_gencb(server.http, fake_handle_request, &server);
	/* Let every method reach us, so the answer is our 405, not evhttp's 501. */
	evhttp_set_allowed_methods(server.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
							EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
							EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	evhttp_set_max_headers_size(server.http, FAKE_MAX_HEADERS_SIZE);
	evhttp_set_max_body_size(server.http, FAKE_MAX_BODY_SIZE);
	if ((bound = evhttp_bind_socket_with_handle(server.http, host, port)) == NULL) {
		fake_log("cannot listen on %s: %s", options.listen, strerror(errno));
		goto fail;
	}
	if (fake_bound_port(bound, &bound_port) != 0) {
		fake_log("getsockname: %s", strerror(errno));
		goto fail;
	}
	server.sigterm = evsignal_new(server.base, SIGTERM, fake_signal, &server);
	server.sigint = evsignal_new(server.base, SIGINT, fake_signal, &server);
	if (server.sigterm == NULL || server.sigint == NULL ||
	    event_add(server.sigterm, NULL) != 0 || event_add(server.sigint, NULL) != 0) {
		fake_log("cannot install signal handlers");
		goto fail;
	}
	/* Port file first: whoever saw the line may read the file at once. */
	if (options.port_file != NULL && fake_write_port_file(options.port_file, bound_port) != 0)
		goto fail;
	if (printf("fake-upstream listening on https://%.*s:%u\n",
		   (int)(strrchr(options.listen, ':') - options.listen), options.listen,
		   bound_port) < 0 ||
	    fflush(stdout) != 0) {
		fake_log("cannot write to stdout: %s", strerror(errno));
		goto fail;
	}
	if (event_base_dispatch(server.base) != 0) {
		fake_log("event loop failed");
		goto fail;
	}
	status = 0;
fail:
	free(host);
	fake_server_free(&server);
	libevent_global_shutdown();
	return status;
}
