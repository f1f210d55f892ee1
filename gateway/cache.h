/*
 * cache.h -- export states cached per (user id, export id), and coalescing: one
 * upstream call per key at a time, every other request for that key waits for
 * it and gets the leader's answer (answer.h makes it). Not the HTTP layer:
 * answers are handed to callbacks as plain fields.
 */
#ifndef GATEWAY_CACHE_H
#define GATEWAY_CACHE_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>

#include "answer.h"

struct event_base;
struct upstream;
struct conf;
struct conf_credential;
struct query;
struct upstream_result;

enum cache_result {
	CACHE_HIT,	 /* served from a live entry */
	CACHE_MISS,	 /* this request's own upstream call */
	CACHE_COALESCED, /* waited for another request's upstream call */
	CACHE_STALE,	 /* refresh failed; an expired entry served (stale-if-error) */
};

/* What to answer. Pointers stay valid until the callback (or lookup) returns. */
struct cache_answer {
	int status;
	const char *content_type;
	const char *body;
	size_t body_length;
	enum cache_result result;
	enum answer_state state; /* the export's, or ANSWER_NO_STATE */
	const char *etag;	 /* a cache entry's ETag (answer_etag), NULL when none */
	int cached;		 /* what follows describes a cache entry */
	int64_t age_seconds;	 /* since the entry was fetched (RFC 9111 Age) */
	int64_t ttl_seconds;	 /* left to live; negative when stale */
	int64_t fetched_ms;	 /* monotonic (clock.h) */
	int64_t expires_ms;
};

/* Fires exactly once per waiter that was not cancelled. */
typedef void (*cache_answer_cb)(const struct cache_answer *answer, void *arg);

struct cache;
struct cache_waiter;

/* A cache calling upstream through upstream; conf as for cache_set_conf. */
MUST_CHECK struct cache *cache_new(struct event_base *base, struct upstream *upstream,
				   const struct conf *conf);

/* Cancels every waiter (no callbacks) and frees all entries. */
void cache_free(struct cache *cache);

/*
 * New TTLs and bounds, from a reload: they apply to entries fetched from now on;
 * the table is trimmed to the new cache_max_entries. conf must stay valid until
 * the next call (or cache_free); the cache copies nothing else from it.
 */
void cache_set_conf(struct cache *cache, const struct conf *conf);

/*
 * Answers from the cache when it can: a live entry (any state) for a status call,
 * or for download=true a live entry whose state makes a download impossible
 * (non-final or FAILED: upstream would answer that same JSON). Returns 1 and
 * fills answer (valid until the next cache call), else 0. O(1).
 */
int cache_lookup(struct cache *cache, const struct conf_credential *credential,
		 const struct query *q, struct cache_answer *answer);

/*
 * Gets a status answer from upstream: joins the call in flight for its key, or
 * starts one (q->download must be 0: downloads are the relay's). done fires from
 * the event loop, never from inside this call. Returns NULL (logged) when no
 * call could be started. credential is copied as needed.
 */
MUST_CHECK struct cache_waiter *cache_wait(struct cache *cache,
					   const struct conf_credential *credential,
					   const struct query *q, cache_answer_cb done, void *arg);

/*
 * The client is gone: drops the waiter, whose callback will not fire. The last
 * waiter of a call aborts it.
 */
void cache_waiter_cancel(struct cache_waiter *waiter);

/*
 * Turns a finished upstream call for (user_id, export_id) into its answer the way
 * a status call does (error mapping, storing, stale-if-error), for calls made
 * elsewhere (a download that got JSON). done fires before this returns.
 */
void cache_settle(struct cache *cache, const char *user_id, const char *export_id,
		  const char *credential, const struct upstream_result *result,
		  cache_answer_cb done, void *arg);

/*
 * Stores an upstream answer for (user_id, export_id) as a status call would:
 * JSON with a state, or a 404, for their TTLs; anything else is not stored.
 * Used for JSON answers that arrive by other ways (a download call). Returns 1
 * if stored, 0 if not cacheable, -1 when out of memory.
 */
int cache_store(struct cache *cache, const char *user_id, const char *export_id, int status,
		const char *content_type, const char *body, size_t length);

/*
 * Called with every answer the cache settles for a key (an upstream call's,
 * once its waiters have had it), key being hash_key_join(user id, export id).
 * One observer; NULL removes it. It must not call cache_wait for that key.
 */
typedef void (*cache_observer_cb)(const char *key, const struct cache_answer *answer, void *arg);
void cache_set_observer(struct cache *cache, cache_observer_cb observer, void *arg);

/*
 * Fleet mode: misses ask Redis first (a shared entry, or the key's lock, or
 * the lock holder's published answer); NULL (the default) is a gateway alone.
 * redis must outlive the cache.
 */
struct redis;
void cache_set_redis(struct cache *cache, struct redis *redis);
/* Entries held now. */
size_t cache_entry_count(const struct cache *cache);

#endif
