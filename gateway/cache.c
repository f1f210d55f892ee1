/*
 * cache.c -- the export state cache (uthash table + LRU list, reaped by a
 * timer) and the flights that coalesce concurrent misses into one upstream call.
 * What an upstream result means is answer.c's; this file stores and shares it.
 */
#include "config.h"

#include "cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "answer.h"
#include "clock.h"
#include "conf.h"
#include "hash.h"
#include "log.h"
#include "query.h"
#include "redact.h"
#include "upstream.h"

#include <utlist.h>

#define CACHE_REAP_INTERVAL_MS 1000
#define CACHE_NAME_MAX	       64

struct cache_entry {
	char *key; /* user id, 0x1f, export id */
	UT_hash_handle hh;
	struct cache_entry *prev, *next; /* LRU list: utlist, oldest first */
	int status;
	char *content_type;
	char *body;
	size_t body_length;
	enum answer_state state; /* ANSWER_NO_STATE for an upstream 404 */
	int64_t fetched_ms;	 /* monotonic */
	int64_t expires_ms;
	char etag[ANSWER_ETAG_SIZE];
};

struct flight {
	char *key;
	UT_hash_handle hh;
	struct flight *prev, *next; /* every flight, also one uthash could not add */
	struct cache *cache;
	struct upstream_call *call;
	struct cache_waiter *waiters;
	int in_table;
	int delivering;
	char credential[CACHE_NAME_MAX];
};

struct cache_waiter {
	struct flight *flight;
	cache_answer_cb done;
	void *arg;
	int leader;
	struct cache_waiter *prev, *next;
};

struct cache {
	struct event_base *base;
	struct upstream *upstream;
	const struct conf *conf;
	struct cache_entry *entries; /* uthash head */
	struct cache_entry *lru;     /* utlist head: the least recently used */
	size_t entry_count;
	struct flight *flights; /* uthash head */
	struct flight *all_flights;
	struct event *reaper;
	cache_observer_cb observer;
	void *observer_arg;
};

/* Room for a key on the stack: user ids and export ids are short in practice. */
#define KEY_BUF_SIZE 192

/* Entries and the LRU list. */

static void lru_unlink(struct cache *cache, struct cache_entry *entry)
{
	DL_DELETE(cache->lru, entry);
}

static void lru_push_newest(struct cache *cache, struct cache_entry *entry)
{
	DL_APPEND(cache->lru, entry);
}

static void entry_free(struct cache_entry *entry)
{
	free(entry->key);
	free(entry->content_type);
	free(entry->body);
	free(entry);
}

static void entry_remove(struct cache *cache, struct cache_entry *entry)
{
	HASH_DEL(cache->entries, entry);
	lru_unlink(cache, entry);
	cache->entry_count--;
	entry_free(entry);
}

static struct cache_entry *entry_find(struct cache *cache, const char *key)
{
	struct cache_entry *entry = NULL;

	HASH_FIND_STR(cache->entries, key, entry);
	return entry;
}

static void trim_to(struct cache *cache, size_t limit)
{
	while (cache->entry_count > limit && cache->lru != NULL)
		entry_remove(cache, cache->lru);
}

/* Stores answer under key, taking its body and content type. */
static struct cache_entry *entry_store(struct cache *cache, const char *key, struct answer *answer,
				       int64_t now)
{
	struct cache_entry *entry = entry_find(cache, key);

	if (entry != NULL)
		entry_remove(cache, entry);
	entry = calloc(1, sizeof(*entry));
	if (entry == NULL || (entry->key = strdup(key)) == NULL) {
		free(entry);
		return NULL;
	}
	entry->status = answer->status;
	entry->content_type = answer->content_type;
	entry->body = answer->body;
	entry->body_length = answer->body_length;
	entry->state = answer->state;
	entry->fetched_ms = now;
	entry->expires_ms = now + answer->ttl_ms;
	answer_etag(entry->body, entry->body_length, entry->etag);
	hash_add_failed = 0;
	HASH_ADD_KEYPTR(hh, cache->entries, entry->key, strlen(entry->key), entry);
	if (hash_add_failed) {
		free(entry->key);
		free(entry);
		return NULL;
	}
	answer->content_type = NULL;
	answer->body = NULL;
	lru_push_newest(cache, entry);
	cache->entry_count++;
	trim_to(cache, (size_t)cache->conf->cache_max_entries);
	return entry;
}

static void answer_from_entry(const struct cache_entry *entry, int64_t now,
			      enum cache_result result, struct cache_answer *answer)
{
	int64_t left = entry->expires_ms - now;

	memset(answer, 0, sizeof(*answer));
	answer->status = entry->status;
	answer->content_type = entry->content_type;
	answer->body = entry->body;
	answer->body_length = entry->body_length;
	answer->result = result;
	answer->state = entry->state;
	answer->etag = entry->etag;
	answer->cached = 1;
	answer->fetched_ms = entry->fetched_ms;
	answer->expires_ms = entry->expires_ms;
	answer->age_seconds = (now - entry->fetched_ms) / 1000;
	/* whole seconds, rounded towards "expired" both ways */
	answer->ttl_seconds = left >= 0 ? left / 1000 : -((-left + 999) / 1000);
}

int cache_store(struct cache *cache, const char *user_id, const char *export_id, int status,
		const char *content_type, const char *body, size_t length)
{
	struct answer answer = { 0 };
	char state_text[ANSWER_STATE_MAX];
	const char *state = NULL, *why;
	char key_buf[KEY_BUF_SIZE];
	char *key;
	int stored;

	if (status == 200)
		state = answer_parse_state(body, length, NULL, state_text, sizeof(state_text),
					   &why);
	answer.ttl_ms = answer_ttl(cache->conf, status, state);
	if (answer.ttl_ms < 0)
		return 0;
	answer.status = status;
	answer.state = state ? answer_state_of(state) : ANSWER_NO_STATE;
	answer.body_length = length;
	answer.content_type = strdup(content_type ? content_type : "application/json");
	answer.body = malloc(length + 1);
	key = hash_key_join(key_buf, sizeof(key_buf), user_id, export_id);
	if (answer.content_type != NULL && answer.body != NULL && key != NULL) {
		memcpy(answer.body, body, length);
		answer.body[length] = '\0';
		stored = entry_store(cache, key, &answer, now_ms()) != NULL ? 1 : -1;
	} else {
		stored = -1;
	}
	hash_key_free(key, key_buf);
	answer_clear(&answer);
	return stored;
}

/* Expired entries past their stale-if-error window are of no use any more. */
static void on_reap(evutil_socket_t fd, short what, void *arg)
{
	struct cache *cache = arg;
	struct cache_entry *entry, *next;
	int64_t now = now_ms();

	(void)fd;
	(void)what;
	HASH_ITER (hh, cache->entries, entry, next) {
		if (now > entry->expires_ms + cache->conf->cache_stale_if_error_ms)
			entry_remove(cache, entry);
	}
}

int cache_lookup(struct cache *cache, const struct conf_credential *credential,
		 const struct query *q, struct cache_answer *answer)
{
	char key_buf[KEY_BUF_SIZE];
	char *key = hash_key_join(key_buf, sizeof(key_buf), credential->user_id, q->data_export_id);
	struct cache_entry *entry;
	int64_t now = now_ms();

	if (key == NULL)
		return 0;
	entry = entry_find(cache, key);
	hash_key_free(key, key_buf);
	if (entry == NULL || now >= entry->expires_ms)
		return 0;
	/* A download can only be refused from the cache: upstream would say the same. */
	if (q->download && entry->state != ANSWER_NON_FINAL && entry->state != ANSWER_FAILED)
		return 0;
	lru_unlink(cache, entry);
	lru_push_newest(cache, entry);
	answer_from_entry(entry, now, CACHE_HIT, answer);
	return 1;
}

/* Flights and waiters. */

static void waiter_unlink(struct cache_waiter *waiter)
{
	DL_DELETE(waiter->flight->waiters, waiter);
}

static void flight_free(struct flight *flight)
{
	struct cache *cache = flight->cache;

	if (flight->in_table)
		HASH_DEL(cache->flights, flight);
	DL_DELETE(cache->all_flights, flight);
	upstream_cancel(flight->call);
	while (flight->waiters != NULL) {
		struct cache_waiter *waiter = flight->waiters;

		waiter_unlink(waiter);
		free(waiter);
	}
	free(flight->key);
	free(flight);
}

/* Answers every waiter, leader first, each as it sees the call. */
static void flight_deliver(struct flight *flight, const struct cache_answer *shared)
{
	flight->delivering = 1;
	while (flight->waiters != NULL) {
		struct cache_waiter *waiter = flight->waiters;
		struct cache_answer answer = *shared;

		if (answer.result == CACHE_MISS && !waiter->leader)
			answer.result = CACHE_COALESCED;
		waiter_unlink(waiter);
		waiter->done(&answer, waiter->arg);
		free(waiter);
	}
}

/* What went wrong, once per finished call (not per waiter). */
static void log_outcome(const struct answer *answer, const char *credential)
{
	if (answer->redacted)
		log_warn("an upstream error body held a configured secret; replaced by %s",
			 REDACT_MARK);
	if (answer->error == NULL)
		return;
	if (strcmp(answer->error, "upstream_auth") == 0)
		log_error("upstream rejected credential '%s' with 401: %s", credential,
			  answer->why);
	else if (answer->why != NULL)
		log_warn("%s (credential '%s'): %s", answer->error, credential, answer->why);
}

/* The answer for a finished call: stored when cacheable, stale when it may be. */
static void settle(struct cache *cache, const char *key, const char *credential,
		   const struct upstream_result *result, cache_answer_cb done, void *arg)
{
	struct answer outcome;
	struct cache_answer answer = { 0 };
	struct cache_entry *entry;
	int64_t now = now_ms();

	/* the key is "user id \x1f export id"; user ids hold no control characters */
	answer_from_result(&outcome, cache->conf, strchr(key, '\x1f') + 1, result);
	log_outcome(&outcome, credential);
	entry = entry_find(cache, key);
	if (outcome.stale_ok && entry != NULL &&
	    now <= entry->expires_ms + cache->conf->cache_stale_if_error_ms) {
		log_warn("refresh failed with %d (credential '%s'); serving the answer fetched "
			 "%lld s ago (stale-if-error)",
			 outcome.status, credential, (long long)((now - entry->fetched_ms) / 1000));
		answer_from_entry(entry, now, CACHE_STALE, &answer);
	} else if (outcome.ttl_ms > 0 && (entry = entry_store(cache, key, &outcome, now)) != NULL) {
		answer_from_entry(entry, now, CACHE_MISS, &answer);
	} else {
		answer.status = outcome.status;
		answer.content_type = outcome.content_type;
		answer.body = outcome.body;
		answer.body_length = outcome.body_length;
		answer.result = CACHE_MISS;
		answer.state = outcome.status == 200 ? outcome.state : ANSWER_NO_STATE;
	}
	done(&answer, arg);
	/* after the waiters: the observer may answer requests, never free the flight */
	if (cache->observer != NULL)
		cache->observer(key, &answer, cache->observer_arg);
	answer_clear(&outcome);
}

void cache_settle(struct cache *cache, const char *user_id, const char *export_id,
		  const char *credential, const struct upstream_result *result,
		  cache_answer_cb done, void *arg)
{
	char key_buf[KEY_BUF_SIZE];
	char *key = hash_key_join(key_buf, sizeof(key_buf), user_id, export_id);
	struct cache_answer answer = { 0 };

	if (key == NULL) {
		struct answer failed = { 0 };

		answer_set_error(&failed, 500, "internal", "out of memory");
		answer.status = failed.status;
		answer.content_type = "application/json";
		answer.body = failed.body != NULL ? failed.body : "";
		answer.body_length = failed.body_length;
		done(&answer, arg);
		answer_clear(&failed);
		return;
	}
	settle(cache, key, credential, result, done, arg);
	hash_key_free(key, key_buf);
}

static void deliver(const struct cache_answer *answer, void *arg)
{
	flight_deliver(arg, answer);
}

static void on_flight_done(const struct upstream_result *result, void *arg)
{
	struct flight *flight = arg;

	flight->call = NULL;
	settle(flight->cache, flight->key, flight->credential, result, deliver, flight);
	flight_free(flight);
}

static struct flight *flight_start(struct cache *cache, const char *key,
				   const struct conf_credential *credential, const struct query *q)
{
	struct flight *flight = calloc(1, sizeof(*flight));

	if (flight == NULL || (flight->key = strdup(key)) == NULL) {
		free(flight);
		return NULL;
	}
	flight->cache = cache;
	snprintf(flight->credential, sizeof(flight->credential), "%s", credential->name);
	flight->call = upstream_start_status(cache->upstream, cache->conf, credential, q,
					     on_flight_done, flight);
	if (flight->call == NULL) {
		free(flight->key);
		free(flight);
		return NULL;
	}
	hash_add_failed = 0;
	HASH_ADD_KEYPTR(hh, cache->flights, flight->key, strlen(flight->key), flight);
	flight->in_table = !hash_add_failed; /* if not, the call runs unshared */
	DL_APPEND(cache->all_flights, flight);
	return flight;
}

struct cache_waiter *cache_wait(struct cache *cache, const struct conf_credential *credential,
				const struct query *q, cache_answer_cb done, void *arg)
{
	char key_buf[KEY_BUF_SIZE];
	char *key = hash_key_join(key_buf, sizeof(key_buf), credential->user_id, q->data_export_id);
	struct flight *flight = NULL;
	struct cache_waiter *waiter = calloc(1, sizeof(*waiter));

	if (key == NULL || waiter == NULL)
		goto fail;
	HASH_FIND_STR(cache->flights, key, flight);
	if (flight == NULL) {
		flight = flight_start(cache, key, credential, q);
		if (flight == NULL)
			goto fail;
		waiter->leader = 1;
	}
	hash_key_free(key, key_buf);
	waiter->flight = flight;
	waiter->done = done;
	waiter->arg = arg;
	DL_APPEND(flight->waiters, waiter); /* in order of arrival: the leader first */
	return waiter;
fail:
	log_error("%s: cannot start an upstream call", __func__);
	hash_key_free(key, key_buf);
	free(waiter);
	return NULL;
}

void cache_waiter_cancel(struct cache_waiter *waiter)
{
	struct flight *flight;

	if (waiter == NULL)
		return;
	flight = waiter->flight;
	waiter_unlink(waiter);
	free(waiter);
	/* Nobody wants the answer any more: stop the call (it was theirs alone). */
	if (flight->waiters == NULL && !flight->delivering)
		flight_free(flight);
}

/* The cache. */

struct cache *cache_new(struct event_base *base, struct upstream *upstream, const struct conf *conf)
{
	struct cache *cache = calloc(1, sizeof(*cache));
	struct timeval every = { CACHE_REAP_INTERVAL_MS / 1000,
				 (CACHE_REAP_INTERVAL_MS % 1000) * 1000 };

	if (cache == NULL)
		return NULL;
	cache->base = base;
	cache->upstream = upstream;
	cache->conf = conf;
	cache->reaper = event_new(base, -1, EV_PERSIST, on_reap, cache);
	if (cache->reaper == NULL || event_add(cache->reaper, &every) < 0) {
		log_error("%s: cannot start the cache reaper", __func__);
		cache_free(cache);
		return NULL;
	}
	return cache;
}

void cache_set_conf(struct cache *cache, const struct conf *conf)
{
	cache->conf = conf;
	trim_to(cache, (size_t)conf->cache_max_entries);
}

void cache_free(struct cache *cache)
{
	struct cache_entry *entry, *next_entry;

	if (cache == NULL)
		return;
	while (cache->all_flights != NULL)
		flight_free(cache->all_flights);
	HASH_ITER (hh, cache->entries, entry, next_entry) {
		entry_remove(cache, entry);
	}
	if (cache->reaper != NULL)
		event_free(cache->reaper);
	free(cache);
}

void cache_set_observer(struct cache *cache, cache_observer_cb observer, void *arg)
{
	cache->observer = observer;
	cache->observer_arg = arg;
}

size_t cache_entry_count(const struct cache *cache)
{
	return cache->entry_count;
}
