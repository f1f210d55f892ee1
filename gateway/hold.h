/*
 * hold.h -- status requests held until their export's answer is worth sending
 * (wait=, Prefer: wait): a final state, an error, or (with If-None-Match)
 * another body. Held requests of one key share its latest answer and one
 * refresh per cache_pending_ttl, made through the cache like any poll (so it
 * coalesces with the polls); every answer the cache settles for a held key
 * ends the waits it should in that same loop turn. Knows nothing of HTTP:
 * callers get a cache answer and why the wait ended.
 */
#ifndef GATEWAY_HOLD_H
#define GATEWAY_HOLD_H

#include "attributes.h"

#include <stdint.h>

#include "answer.h"

struct cache;
struct cache_answer;
struct conf;
struct event_base;
struct query;

enum hold_end {
	HOLD_FINAL,   /* a final state, or an answer that is not a 200 state */
	HOLD_CHANGED, /* held with an ETag: the body is not that one any more */
	HOLD_TIMEOUT, /* the deadline, or holds_release_all: the latest answer */
};

/* Fires once per hold that was not cancelled; answer is valid for the call only. */
typedef void (*hold_cb)(const struct cache_answer *answer, enum hold_end end, void *arg);

struct holds;
struct hold;

/* Holds over cache (whose observer they become); conf as for holds_set_conf. */
MUST_CHECK struct holds *holds_new(struct event_base *base, struct cache *cache,
				   const struct conf *conf);
/* Frees every hold without a callback. */
void holds_free(struct holds *holds);
/* From a reload: max_waiting, the refresh window and the credentials to refresh with. */
void holds_set_conf(struct holds *holds, const struct conf *conf);

/*
 * 1 when a request whose answer now is answer would be held: a 200 with a
 * non-final state and, with an ETag to wait on (etag not NULL), that answer's
 * body has that ETag.
 */
int hold_wanted(const struct cache_answer *answer, const char *etag);

/*
 * Holds a request for the export q->data_export_id of user_id (refreshed with
 * the credential of that user id), whose answer now is answer (for which
 * hold_wanted said 1), until deadline_ms (monotonic), waiting for another body
 * than etag when etag is not NULL. NULL when max_waiting requests are held
 * already, or out of memory: answer the request at once.
 */
MUST_CHECK struct hold *hold_start(struct holds *holds, const char *user_id, const struct query *q,
				   const struct cache_answer *answer, const char *etag,
				   int64_t deadline_ms, hold_cb done, void *arg);

/* The client is gone: no callback. The key's last hold stops its refreshes. */
void hold_cancel(struct hold *hold);

/* Draining: every held request gets its latest answer now (HOLD_TIMEOUT). */
void holds_release_all(struct holds *holds);

/* Requests held now. */
size_t holds_count(const struct holds *holds);

#endif
