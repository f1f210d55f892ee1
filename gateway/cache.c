/*
 * cache.c -- the export state cache (uthash table + LRU list, reaped by a
 * timer) and the flights that coalesce concurrent misses into one upstream call.
 * Also where an upstream result becomes the answer every waiter gets.
 */
#include "config.h"

#include "cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "conf.h"
#include "hash.h"
#include "json_check.h"
#include "log.h"
#include "query.h"
#include "redact.h"
#include "upstream.h"

#define CACHE_REAP_INTERVAL_MS 1000
#define CACHE_STATE_MAX 64
#define CACHE_NAME_MAX 64

enum entry_kind {
	ENTRY_NON_FINAL, /* REQUESTED, IN_PROGRESS or a state we do not know */
	ENTRY_COMPLETED,
	ENTRY_FAILED,
	ENTRY_ERROR, /* an upstream 404 */
};

struct cache_entry {
	char *key; /* user id, 0x1f, export id */
	UT_hash_handle hh;
	struct cache_entry *newer, *older; /* LRU list */
	int status;
	char *content_type;
	char *body;
	size_t body_length;
	enum entry_kind kind;
	int64_t fetched_ms; /* monotonic */
	int64_t expires_ms;
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
	struct cache_entry *newest, *oldest;
	size_t entry_count;
	struct flight *flights; /* uthash head */
	struct flight *all_flights;
	struct event *reaper;
};

/* What an upstream result means for the client and for the cache. */
struct outcome {
	int status;
	char *content_type;
	char *body;
	size_t body_length;
	enum entry_kind kind;
	int64_t ttl_ms; /* -1: not stored */
	int stale_ok;	/* a failed refresh: stale-if-error may answer instead */
};

static int64_t now_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static char *make_key(const char *user_id, const char *export_id)
{
	size_t user_length = strlen(user_id), id_length = strlen(export_id);
	char *key = malloc(user_length + id_length + 2);

	if (key == NULL)
		return NULL;
	memcpy(key, user_id, user_length);
	key[user_length] = '\x1f';
	memcpy(key + user_length + 1, export_id, id_length + 1);
	return key;
}

/*
 * The state of a strict JSON body (json_check.h) that is an object with a string
 * "state" and, when export_id is given, no "data_export_id" but export_id: an
 * answer about another export came off a poisoned connection and must never be
 * stored under this key. NULL with *why otherwise.
 */
static const char *parse_answer(const char *body, size_t length, const char *export_id,
				char *state, size_t cap, const char **why)
{
	const cJSON *field, *id;
	const char *found = NULL;
	cJSON *json;

	*why = NULL;
	json = json_check_parse(body, length, why);
	if (json == NULL)
		return NULL;
	field = cJSON_GetObjectItemCaseSensitive(json, "state");
	id = cJSON_GetObjectItemCaseSensitive(json, "data_export_id");
	if (!cJSON_IsObject(json) || !cJSON_IsString(field) || cap == 0) {
		*why = "the upstream answered without a JSON object holding a state";
	} else if (export_id != NULL && id != NULL &&
		   (!cJSON_IsString(id) || strcmp(id->valuestring, export_id) != 0)) {
		*why = "the upstream answered about another export";
	} else {
		snprintf(state, cap, "%s", field->valuestring);
		found = state;
	}
	cJSON_Delete(json);
	return found;
}

const char *cache_parse_state(const char *body, size_t length, char *state, size_t cap)
{
	const char *why;

	return parse_answer(body, length, NULL, state, cap, &why);
}

static enum entry_kind kind_of_state(const char *state)
{
	if (strcmp(state, "COMPLETED") == 0)
		return ENTRY_COMPLETED;
	if (strcmp(state, "FAILED") == 0)
		return ENTRY_FAILED;
	return ENTRY_NON_FINAL;
}

int64_t cache_ttl_for(const struct conf *conf, int status, const char *state)
{
	int64_t ttl;

	if (status == 404)
		ttl = conf->cache_error_ttl_ms;
	else if (status == 200 && state != NULL)
		ttl = kind_of_state(state) == ENTRY_NON_FINAL ? conf->cache_pending_ttl_ms
							      : conf->cache_final_ttl_ms;
	else
		return -1;
	return ttl > 0 ? ttl : -1;
}

static void outcome_clear(struct outcome *outcome)
{
	free(outcome->content_type);
	free(outcome->body);
	memset(outcome, 0, sizeof(*outcome));
}

/* Entries and the LRU list. */

static void lru_unlink(struct cache *cache, struct cache_entry *entry)
{
	if (entry->newer != NULL)
		entry->newer->older = entry->older;
	else
		cache->newest = entry->older;
	if (entry->older != NULL)
		entry->older->newer = entry->newer;
	else
		cache->oldest = entry->newer;
	entry->newer = entry->older = NULL;
}

static void lru_push_newest(struct cache *cache, struct cache_entry *entry)
{
	entry->older = cache->newest;
	entry->newer = NULL;
	if (cache->newest != NULL)
		cache->newest->newer = entry;
	cache->newest = entry;
	if (cache->oldest == NULL)
		cache->oldest = entry;
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
	while (cache->entry_count > limit && cache->oldest != NULL)
		entry_remove(cache, cache->oldest);
}

/* Stores outcome under key, taking its body and content type. */
static struct cache_entry *entry_store(struct cache *cache, const char *key,
				       struct outcome *outcome, int64_t now)
{
	struct cache_entry *entry = entry_find(cache, key);

	if (entry != NULL)
		entry_remove(cache, entry);
	entry = calloc(1, sizeof(*entry));
	if (entry == NULL || (entry->key = strdup(key)) == NULL) {
		free(entry);
		return NULL;
	}
	entry->status = outcome->status;
	entry->content_type = outcome->content_type;
	entry->body = outcome->body;
	entry->body_length = outcome->body_length;
	entry->kind = outcome->kind;
	entry->fetched_ms = now;
	entry->expires_ms = now + outcome->ttl_ms;
	hash_add_failed = 0;
	HASH_ADD_KEYPTR(hh, cache->entries, entry->key, strlen(entry->key), entry);
	if (hash_add_failed) {
		free(entry->key);
		free(entry);
		return NULL;
	}
	outcome->content_type = NULL;
	outcome->body = NULL;
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
	answer->cached = 1;
	answer->age_seconds = (now - entry->fetched_ms) / 1000;
	/* whole seconds, rounded towards "expired" both ways */
	answer->ttl_seconds = left >= 0 ? left / 1000 : -((-left + 999) / 1000);
}

int cache_store(struct cache *cache, const char *user_id, const char *export_id, int status,
		const char *content_type, const char *body, size_t length)
{
	struct outcome outcome = { 0 };
	char state_text[CACHE_STATE_MAX];
	const char *state = NULL;
	char *key;
	int stored;

	if (status == 200)
		state = cache_parse_state(body, length, state_text, sizeof(state_text));
	outcome.ttl_ms = cache_ttl_for(cache->conf, status, state);
	if (outcome.ttl_ms < 0)
		return 0;
	outcome.status = status;
	outcome.kind = state ? kind_of_state(state) : ENTRY_ERROR;
	outcome.body_length = length;
	outcome.content_type = strdup(content_type ? content_type : "application/json");
	outcome.body = malloc(length + 1);
	key = make_key(user_id, export_id);
	if (outcome.content_type != NULL && outcome.body != NULL && key != NULL) {
		memcpy(outcome.body, body, length);
		outcome.body[length] = '\0';
		stored = entry_store(cache, key, &outcome, now_ms()) != NULL ? 1 : -1;
	} else {
		stored = -1;
	}
	free(key);
	outcome_clear(&outcome);
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
	HASH_ITER(hh, cache->entries, entry, next)
	{
		if (now > entry->expires_ms + cache->conf->cache_stale_if_error_ms)
			entry_remove(cache, entry);
	}
}

int cache_lookup(struct cache *cache, const struct conf_credential *credential,
		 const struct query *q, struct cache_answer *answer)
{
	char *key = make_key(credential->user_id, q->data_export_id);
	struct cache_entry *entry;
	int64_t now = now_ms();

	if (key == NULL)
		return 0;
	entry = entry_find(cache, key);
	free(key);
	if (entry == NULL || now >= entry->expires_ms)
		return 0;
	/* A download can only be refused from the cache: upstream would say the same. */
	if (q->download && entry->kind != ENTRY_NON_FINAL && entry->kind != ENTRY_FAILED)
		return 0;
	lru_unlink(cache, entry);
	lru_push_newest(cache, entry);
	answer_from_entry(entry, now, CACHE_HIT, answer);
	return 1;
}

/* Outcomes. */

static void outcome_error(struct outcome *outcome, int status, const char *code,
			  const char *message)
{
	cJSON *json = cJSON_CreateObject();

	outcome_clear(outcome);
	outcome->status = status;
	outcome->ttl_ms = -1;
	outcome->content_type = strdup("application/json");
	if (json != NULL && cJSON_AddStringToObject(json, "error", code) != NULL &&
	    cJSON_AddStringToObject(json, "message", message) != NULL)
		outcome->body = cJSON_PrintUnformatted(json);
	cJSON_Delete(json);
	if (outcome->body != NULL)
		outcome->body_length = strlen(outcome->body);
}

/* An error body as upstream sent it, but for any configured secret in it. */
static int redact_body(struct cache *cache, struct outcome *outcome)
{
	char *redacted;
	size_t length;

	switch (redact_secrets(outcome->body, outcome->body_length, cache->conf, &redacted,
			       &length)) {
	case 0:
		return 0;
	case 1:
		log_warn("an upstream error body held a configured secret; replaced by %s",
			 REDACT_MARK);
		free(outcome->body);
		outcome->body = redacted;
		outcome->body_length = length;
		return 0;
	default:
		return -1;
	}
}

/* Copies the upstream body and type; then decides validity and TTL. */
static void outcome_from_response(struct cache *cache, const char *credential,
				  const char *export_id, const struct upstream_result *result,
				  struct outcome *outcome)
{
	long status = result->status;
	size_t length = evbuffer_get_length(result->body);
	char state_text[CACHE_STATE_MAX];
	const char *state = NULL, *why = NULL;

	if (status == 401) {
		log_error("upstream rejected credential '%s' with 401: its api_key (or user_id) "
			  "is wrong or revoked; every request using it fails until it is fixed",
			  credential);
		outcome_error(outcome, 502, "upstream_auth",
			      "the gateway's Gumloop credential was rejected by the upstream");
		return;
	}
	if (status >= 300 && status < 400) {
		outcome_error(outcome, 502, "upstream_redirect",
			      "the upstream answered with a redirect, which is not followed");
		return;
	}
	if (status < 200 || status > 599) { /* framing.c refuses these already */
		outcome_error(outcome, 502, "upstream_invalid",
			      "the upstream answered with a status outside 200-599");
		return;
	}
	outcome->status = (int)status;
	outcome->ttl_ms = -1;
	outcome->stale_ok = status >= 500;
	outcome->content_type = strdup(result->content_type ? result->content_type
							    : "application/json");
	outcome->body = malloc(length + 1);
	if (outcome->content_type == NULL || outcome->body == NULL ||
	    evbuffer_copyout(result->body, outcome->body, length) != (ev_ssize_t)length) {
		outcome_error(outcome, 500, "internal", "out of memory");
		return;
	}
	outcome->body[length] = '\0';
	outcome->body_length = length;
	if (status < 200 || status >= 300) {
		if (redact_body(cache, outcome) < 0) {
			outcome_error(outcome, 500, "internal", "out of memory");
			return;
		}
		outcome->kind = ENTRY_ERROR;
		outcome->ttl_ms = cache_ttl_for(cache->conf, (int)status, NULL);
		return;
	}
	state = parse_answer(outcome->body, length, export_id, state_text, sizeof(state_text),
			     &why);
	if (state == NULL) {
		log_warn("upstream answer refused (credential '%s'): %s", credential, why);
		outcome_error(outcome, 502, "upstream_invalid", why);
		return;
	}
	outcome->kind = kind_of_state(state);
	outcome->ttl_ms = cache_ttl_for(cache->conf, (int)status, state);
}

static void outcome_from_result(struct cache *cache, const char *credential,
				const char *export_id, const struct upstream_result *result,
				struct outcome *outcome)
{
	switch (result->outcome) {
	case UPSTREAM_OK:
		outcome_from_response(cache, credential, export_id, result, outcome);
		return;
	case UPSTREAM_INVALID:
		log_warn("upstream answer refused (credential '%s'): %s", credential,
			 result->error);
		outcome_error(outcome, 502, "upstream_invalid", result->error);
		return;
	case UPSTREAM_TIMEOUT:
		log_warn("upstream timed out (credential '%s'): %s", credential, result->error);
		outcome_error(outcome, 504, "upstream_timeout",
			      "the upstream did not answer in time");
		outcome->stale_ok = 1;
		return;
	case UPSTREAM_CONNECT_FAILED:
		log_warn("upstream connection failed: %s", result->error);
		outcome_error(outcome, 502, "upstream_unreachable",
			      "the gateway could not connect to the upstream");
		outcome->stale_ok = 1;
		return;
	case UPSTREAM_TOO_LARGE:
		outcome_error(outcome, 502, "upstream_too_large", result->error);
		return;
	case UPSTREAM_FAILED:
		log_warn("upstream request failed: %s", result->error);
		outcome_error(outcome, 502, "upstream_error", "the upstream request failed");
		outcome->stale_ok = 1;
		return;
	}
}

/* Flights and waiters. */

static void waiter_unlink(struct cache_waiter *waiter)
{
	struct flight *flight = waiter->flight;

	if (waiter->prev != NULL)
		waiter->prev->next = waiter->next;
	else
		flight->waiters = waiter->next;
	if (waiter->next != NULL)
		waiter->next->prev = waiter->prev;
}

static void flight_free(struct flight *flight)
{
	struct cache *cache = flight->cache;

	if (flight->in_table)
		HASH_DEL(cache->flights, flight);
	if (flight->prev != NULL)
		flight->prev->next = flight->next;
	else
		cache->all_flights = flight->next;
	if (flight->next != NULL)
		flight->next->prev = flight->prev;
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

/* The answer for a finished call: stored when cacheable, stale when it may be. */
static void settle(struct cache *cache, const char *key, const char *credential,
		   const struct upstream_result *result, cache_answer_cb done, void *arg)
{
	struct outcome outcome = { 0 };
	struct cache_answer answer = { 0 };
	struct cache_entry *entry;
	int64_t now = now_ms();

	/* the key is "user id \x1f export id"; user ids hold no control characters */
	outcome_from_result(cache, credential, strchr(key, '\x1f') + 1, result, &outcome);
	entry = entry_find(cache, key);
	if (outcome.stale_ok && entry != NULL &&
	    now <= entry->expires_ms + cache->conf->cache_stale_if_error_ms) {
		log_warn("refresh failed with %d (credential '%s'); serving the answer fetched "
			 "%lld s ago (stale-if-error)",
			 outcome.status, credential, (long long)((now - entry->fetched_ms) / 1000));
		answer_from_entry(entry, now, CACHE_STALE, &answer);
	} else if (outcome.ttl_ms > 0 &&
		   (entry = entry_store(cache, key, &outcome, now)) != NULL) {
		answer_from_entry(entry, now, CACHE_MISS, &answer);
	} else {
		answer.status = outcome.status;
		answer.content_type = outcome.content_type;
		answer.body = outcome.body;
		answer.body_length = outcome.body_length;
		answer.result = CACHE_MISS;
	}
	done(&answer, arg);
	outcome_clear(&outcome);
}

void cache_settle(struct cache *cache, const char *user_id, const char *export_id,
		  const char *credential, const struct upstream_result *result,
		  cache_answer_cb done, void *arg)
{
	char *key = make_key(user_id, export_id);
	struct cache_answer answer = { 0 };

	if (key == NULL) {
		answer.status = 500;
		answer.content_type = "application/json";
		answer.body = "{\"error\":\"internal\",\"message\":\"out of memory\"}";
		answer.body_length = strlen(answer.body);
		done(&answer, arg);
		return;
	}
	settle(cache, key, credential, result, done, arg);
	free(key);
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
				   const struct conf_credential *credential,
				   const struct query *q)
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
	flight->prev = NULL;
	flight->next = cache->all_flights;
	if (cache->all_flights != NULL)
		cache->all_flights->prev = flight;
	cache->all_flights = flight;
	return flight;
}

struct cache_waiter *cache_wait(struct cache *cache, const struct conf_credential *credential,
				const struct query *q, cache_answer_cb done, void *arg)
{
	char *key = make_key(credential->user_id, q->data_export_id);
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
	free(key);
	waiter->flight = flight;
	waiter->done = done;
	waiter->arg = arg;
	waiter->next = flight->waiters;
	if (flight->waiters != NULL)
		flight->waiters->prev = waiter;
	flight->waiters = waiter;
	return waiter;
fail:
	log_error("%s: cannot start an upstream call", __func__);
	free(key);
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

struct cache *cache_new(struct event_base *base, struct upstream *upstream,
			const struct conf *conf)
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
	HASH_ITER(hh, cache->entries, entry, next_entry)
	{
		entry_remove(cache, entry);
	}
	if (cache->reaper != NULL)
		event_free(cache->reaper);
	free(cache);
}

size_t cache_entry_count(const struct cache *cache)
{
	return cache->entry_count;
}
