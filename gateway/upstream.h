/*
 * upstream.h -- calls to the Gumloop API: libcurl multi handles driven by the
 * gateway's libevent loop (the shape of curl's hiperfifo.c). Nothing here blocks.
 * It knows how to build a Gumloop request (credential injection) and refuses
 * answers whose framing it cannot trust; it does not know about clients,
 * caching or HTTP answers to clients.
 *
 * Two pools of connections: status calls share at most upstream_max_connections
 * (more wait in libcurl's queue, for at most upstream_timeout); downloads have a
 * pool of their own, bounded by max_downloads. Idle pooled connections are
 * closed after upstream_keepalive_timeout, and at once when anything arrives on
 * them (stray bytes would be read as the answer to the next request).
 */
#ifndef GATEWAY_UPSTREAM_H
#define GATEWAY_UPSTREAM_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct evkeyvalq;
struct conf;
struct conf_credential;
struct query;

#define UPSTREAM_MAX_JSON_BYTES	  (1024 * 1024)
#define UPSTREAM_MAX_HEADER_BYTES (64 * 1024)

enum upstream_outcome {
	UPSTREAM_OK,		 /* a complete HTTP response arrived */
	UPSTREAM_CONNECT_FAILED, /* DNS, TCP or TLS (certificate) failure */
	UPSTREAM_TIMEOUT,	 /* upstream_timeout elapsed (queued time included) */
	UPSTREAM_TOO_LARGE,	 /* body over UPSTREAM_MAX_JSON_BYTES, headers over 64 KiB */
	UPSTREAM_INVALID,	 /* a head the gateway cannot trust (see framing.h) */
	UPSTREAM_FAILED,	 /* reset, closed before headers or mid-body, anything else */
};

struct upstream_result {
	enum upstream_outcome outcome;
	long status;		  /* HTTP status; 0 unless UPSTREAM_OK */
	const char *content_type; /* NULL when upstream sent none */
	struct evbuffer *body;	  /* the response body; the callee may drain it */
	double seconds;		  /* total time of the transfer */
	const char *error;	  /* human text for failures: no URL, no secret */
};

/* The final head of a response, checked (framing.h) before anyone sees it. */
struct upstream_head {
	long status;
	int64_t content_length;		 /* -1: chunked or until close */
	const struct evkeyvalq *headers; /* names as sent, values trimmed */
};

struct upstream;
struct upstream_call;

/* Called once per call that was not cancelled; the call is freed right after. */
typedef void (*upstream_done_cb)(const struct upstream_result *result, void *arg);

/* What a download call does with the body, decided when the head is in. */
enum upstream_mode {
	UPSTREAM_BUFFER, /* keep it (capped at UPSTREAM_MAX_JSON_BYTES) for done */
	UPSTREAM_STREAM, /* hand each piece to data as it arrives */
	UPSTREAM_STOP,	 /* the head was all that was wanted: done fires with OK */
	UPSTREAM_ABORT,	 /* stop now; done fires with UPSTREAM_FAILED */
};

struct upstream_download_handlers {
	enum upstream_mode (*headers)(const struct upstream_head *head, void *arg);
	/*
	 * A piece of body in UPSTREAM_STREAM mode: 0 when taken, 1 when not taken
	 * now (the transfer pauses and offers it again after upstream_resume), -1 to
	 * abort. Never calls back into upstream.
	 */
	int (*data)(const char *bytes, size_t length, void *arg);
	upstream_done_cb done;
};

/* Multi handles on base, sized by conf. Returns NULL (logged) on failure. */
MUST_CHECK struct upstream *upstream_new(struct event_base *base, const struct conf *conf);

/*
 * New limits from a reload (calls already queued keep their place). The CA
 * bundle is read again for connections made from now on, even under the same
 * path (libcurl would otherwise keep its parsed copy for 24 hours).
 */
void upstream_set_conf(struct upstream *upstream, const struct conf *conf);

/* Cancels every call still running (their callbacks do not fire) and frees. */
void upstream_free(struct upstream *upstream);

/*
 * Starts GET {conf->upstream}/export_status for q with credential's key and user
 * id injected. The body is capped at UPSTREAM_MAX_JSON_BYTES. The request carries
 * nothing from the client but the validated query values. Returns NULL (logged)
 * when the transfer could not be started; done fires later, never from inside
 * this call.
 */
MUST_CHECK struct upstream_call *upstream_start_status(struct upstream *upstream,
						       const struct conf *conf,
						       const struct conf_credential *credential,
						       const struct query *q, upstream_done_cb done,
						       void *arg);

/*
 * Starts GET .../export_status?...&download=true as upstream_start_status does,
 * over HTTP/1.1 without content encoding (so a paused transfer buffers little),
 * with the client's Range and If-Range (NULL: none; the caller validated them).
 * The head must arrive within upstream_timeout; after it, the body may take as
 * long as it likes while no gap between bytes exceeds upstream_idle_timeout.
 */
MUST_CHECK struct upstream_call *upstream_start_download(
	struct upstream *upstream, const struct conf *conf,
	const struct conf_credential *credential, const struct query *q, const char *range,
	const char *if_range, const struct upstream_download_handlers *handlers, void *arg);

/*
 * Starts POST {conf->upstream}/export_data with credential's headers and body
 * (length bytes of JSON, the caller's user id already in it), which the call
 * takes over (wiped and freed with it, also when this fails). On a connection
 * of its own, so that libcurl has no reason to send it twice; the answer is
 * capped as a status call's, within upstream_timeout. NULL (logged) when it
 * could not be started.
 */
MUST_CHECK struct upstream_call *upstream_start_export(struct upstream *upstream,
						       const struct conf *conf,
						       const struct conf_credential *credential,
						       char *body, size_t length,
						       upstream_done_cb done, void *arg);

/* Resumes a transfer paused by the data handler; pieces may arrive before it returns. */
void upstream_resume(struct upstream_call *call);

/* Aborts a running call at once; its callback does not fire. */
void upstream_cancel(struct upstream_call *call);

#endif
