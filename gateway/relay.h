/*
 * relay.h -- download=true: the upstream answer relayed to the client as it
 * arrives, with backpressure (the transfer pauses while the client is behind)
 * and in bounded memory. A JSON answer instead of a CSV goes through the cache's
 * mapping like a status answer. The relay never ends the HTTP exchange itself:
 * it tells the server, which sends the end or closes the connection.
 */
#ifndef GATEWAY_RELAY_H
#define GATEWAY_RELAY_H

#include <stdint.h>

struct evhttp_request;
struct upstream;
struct cache;
struct cache_answer;
struct conf;
struct conf_credential;
struct query;

/* Queued for the client above this, the upstream transfer pauses. */
#define RELAY_HIGH_WATERMARK (256 * 1024)
/* Body bytes gathered into one piece before evhttp gets them. */
#define RELAY_CHUNK (64 * 1024)

enum relay_end {
	RELAY_COMPLETE, /* upstream finished cleanly: send the end of the reply */
	RELAY_FAILED,	/* upstream failed mid-body: close without the end */
};

/* What the client asked for, as it bears on the relay. */
struct relay_request {
	int head;	     /* HEAD: the status line and headers only */
	int needs_length;    /* an HTTP/1.0 client: no chunked framing to end a body */
	const char *range;   /* validated Range and If-Range to forward, or NULL */
	const char *if_range;
};

struct relay_events {
	/* No body streamed: answer this (JSON, or a gateway error) as usual. */
	void (*answer)(const struct cache_answer *answer, void *arg);
	/*
	 * No body streamed because this client cannot be given it: answer a gateway
	 * error (status 426 code "http_1_1_required": an HTTP/1.0 client asked for a
	 * download whose length upstream does not say).
	 */
	void (*refused)(int status, const char *code, const char *message, void *arg);
	/* The reply's status line and headers are on their way; the body follows. */
	void (*started)(int status, void *arg);
	/* The body is over, bytes of it relayed (the server sends the end, or cuts). */
	void (*ended)(enum relay_end how, uint64_t bytes, void *arg);
};

struct relay;

/*
 * Starts the download for req. Exactly one of answer, refused or ended fires
 * later (after started, for ended); the relay lives on until relay_free, which
 * the owner of req calls when the exchange is over. The reply is framed by the
 * relay from upstream's checked head: a Content-Length when upstream declared
 * one (and never more bytes than it), chunked otherwise; a body that ends short
 * ends as RELAY_FAILED. Returns NULL (logged) when the upstream call could not
 * start.
 */
struct relay *relay_start(struct upstream *upstream, struct cache *cache,
			  const struct conf *conf, const struct conf_credential *credential,
			  const struct query *q, struct evhttp_request *req,
			  const struct relay_request *request, const struct relay_events *events,
			  void *arg);

/* Body bytes handed to evhttp so far (some may still be queued). */
uint64_t relay_bytes_handed(const struct relay *relay);

/* Aborts the upstream transfer if it still runs (no event fires) and frees. */
void relay_free(struct relay *relay);

#endif
