/*
 * relay.h -- download=true: the upstream body pumped to the client as it
 * arrives, with backpressure (the transfer pauses while the client is behind)
 * and in bounded memory. The relay decides what of upstream's head a client
 * gets and frames nothing itself: it tells the server "started", hands it
 * pieces, and says how the body ended; every byte on the client's connection is
 * written by the server. A JSON answer instead of a CSV goes through the
 * cache's mapping like a status answer.
 */
#ifndef GATEWAY_RELAY_H
#define GATEWAY_RELAY_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct evkeyvalq;
struct upstream;
struct cache;
struct cache_answer;
struct conf;
struct conf_credential;
struct query;

/* Queued for the client above this, the upstream transfer pauses. */
#define RELAY_HIGH_WATERMARK (256 * 1024)
/* Body bytes gathered into one piece before the server gets them. */
#define RELAY_CHUNK (64 * 1024)

enum relay_end {
	RELAY_COMPLETE, /* upstream finished cleanly: send the end of the reply */
	RELAY_FAILED,	/* upstream failed mid-body: close without the end */
};

/* What the client asked for, as it bears on the relay. */
struct relay_request {
	int head;	   /* HEAD: the status line and headers only */
	int needs_length;  /* an HTTP/1.0 client: no chunked framing to end a body */
	const char *range; /* validated Range and If-Range to forward, or NULL */
	const char *if_range;
	int plain_socket; /* the client is a plain TCP socket: sendfile can reach it */
};

struct relay_events {
	/*
	 * No body streamed: answer this (JSON, or a gateway error) as usual;
	 * content_range is upstream's for a 416 (else NULL), to be passed on.
	 */
	void (*answer)(const struct cache_answer *answer, const char *content_range, void *arg);
	/*
	 * No body streamed because this client cannot be given it: answer a gateway
	 * error (status 426 code "http_1_1_required": an HTTP/1.0 client asked for a
	 * download whose length upstream does not say).
	 */
	void (*refused)(int status, const char *code, const char *message, void *arg);
	/*
	 * The reply starts: status, the upstream headers a client gets (valid only
	 * during the call), and the body's length (-1: unknown, so chunked).
	 */
	void (*started)(int status, const struct evkeyvalq *headers, int64_t content_length,
			void *arg);
	/* A piece of body to queue for the client (the server takes its bytes). */
	void (*piece)(struct evbuffer *piece, void *arg);
	/* Bytes queued for the client now, for backpressure. */
	size_t (*queued)(void *arg);
	/* The body is over, bytes of it relayed (the server sends the end, or cuts). */
	void (*ended)(enum relay_end how, uint64_t bytes, void *arg);
};

struct relay;

/* The upstream response headers a download passes through (design.md). */
#define RELAY_PASSED_HEADERS 6
extern const char *const relay_passed_headers[RELAY_PASSED_HEADERS];
/* 1 for an application/json Content-Type: an answer, not a file. */
int relay_is_json_type(const char *content_type);

/*
 * Starts the download. Exactly one of answer, refused or ended fires later
 * (after started, for ended); the relay lives on until relay_free, which the
 * server calls when the exchange is over. The body is sent as upstream's
 * checked head declared it: never more bytes than a Content-Length; a body that
 * ends short ends as RELAY_FAILED. Returns NULL (logged) when the upstream
 * call could not start.
 */
MUST_CHECK struct relay *relay_start(struct event_base *base, struct upstream *upstream,
				     struct cache *cache, const struct conf *conf,
				     const struct conf_credential *credential,
				     const struct query *q, const struct relay_request *request,
				     const struct relay_events *events, void *arg);

/* Everything queued for the client was written: a paused transfer goes on. */
void relay_drained(struct relay *relay);

/* Body bytes handed to the server so far (some may still be queued). */
uint64_t relay_bytes_handed(const struct relay *relay);

/* Aborts the upstream transfer if it still runs (no event fires) and frees. */
void relay_free(struct relay *relay);

#endif
