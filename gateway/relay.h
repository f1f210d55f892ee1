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

struct relay_events {
	/* No body streamed: answer this (JSON, or a gateway error) as usual. */
	void (*answer)(const struct cache_answer *answer, void *arg);
	/* The reply's status line and headers are on their way; the body follows. */
	void (*started)(int status, void *arg);
	/* The body is over, bytes of it relayed. */
	void (*ended)(enum relay_end how, uint64_t bytes, void *arg);
	/* After ended: everything queued for the client has been written. */
	void (*flushed)(void *arg);
};

struct relay;

/*
 * Starts the download for req. Exactly one of answer or ended fires later (after
 * started, for ended); the relay lives on until relay_free, which the owner of
 * req calls when the exchange is over. range and if_range are the
 * client's validated headers or NULL. head: the client sent HEAD (headers only).
 * Returns NULL (logged) when the upstream call could not start.
 */
struct relay *relay_start(struct upstream *upstream, struct cache *cache,
			  const struct conf *conf, const struct conf_credential *credential,
			  const struct query *q, struct evhttp_request *req, int head,
			  const char *range, const char *if_range,
			  const struct relay_events *events, void *arg);

/* Aborts the upstream transfer if it still runs (no event fires) and frees. */
void relay_free(struct relay *relay);

#endif
