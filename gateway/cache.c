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
#include <event2/util.h>
#include <hiredis/hiredis.h>

#include "answer.h"
#include "clock.h"
#include "conf.h"
#include "hash.h"
#include "hex.h"
#include "log.h"
#include "query.h"
#include "redact.h"
#include "redis.h"
#include "upstream.h"

#include <utlist.h>

#define CACHE_REAP_INTERVAL_MS 1000
#define CACHE_NAME_MAX	       64
/* A key's name in Redis: 32 hex digits of SHA-256(user id, 0x1f, export id). */
#define FLEET_ID_SIZE (REDIS_HASH_HEX + 1)
/* A flight waiting for another instance's call re-reads at most this often. */
#define FLEET_ATTEMPTS 3

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
	char fleet_id[FLEET_ID_SIZE];
	UT_hash_handle hh_fleet; /* cache->by_fleet_id */
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
	/* fleet mode: the call is decided by Redis first (see "Fleet" below) */
	struct query q;
	char fleet_id[FLEET_ID_SIZE];
	UT_hash_handle hh_fleet; /* cache->fleet_flights, while in_fleet */
	int in_fleet;
	struct redis_command *command; /* a Redis round trip in flight */
	struct event *fleet_timer;     /* waiting for the instance that holds the lock */
	int attempts;
	int owner; /* holds the key's lock: stores and publishes the answer */
	char token[FLEET_ID_SIZE];
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
	struct redis *redis;		 /* fleet mode, or NULL */
	struct cache_entry *by_fleet_id; /* uthash (hh_fleet) of entries */
	struct flight *fleet_flights;	 /* uthash (hh_fleet) of flights */
	char instance[FLEET_ID_SIZE];	 /* ours: messages we published come back */
};

static void fleet_id_of(const char *key, char id[FLEET_ID_SIZE]);

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
	HASH_DELETE(hh_fleet, cache->by_fleet_id, entry);
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
	fleet_id_of(entry->key, entry->fleet_id);
	hash_add_failed = 0;
	HASH_ADD(hh_fleet, cache->by_fleet_id, fleet_id, strlen(entry->fleet_id), entry);
	if (hash_add_failed) {
		HASH_DEL(cache->entries, entry);
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

static void fleet_release(struct flight *flight);

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
	if (flight->in_fleet)
		HASH_DELETE(hh_fleet, cache->fleet_flights, flight);
	redis_command_cancel(flight->command);
	if (flight->fleet_timer != NULL)
		event_free(flight->fleet_timer);
	if (flight->owner)
		fleet_release(flight); /* no answer from us after all: let others call */
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

/* Fleet: what Redis holds and carries (redis.h; README "Fleet mode"). */

/*
 * One round trip: a live entry ({1, pttl, value}), or the key's lock taken
 * ({2, pttl, stale value}), or the lock's holder to wait for ({3, lock pttl,
 * pttl, stale value}). A value is "1 STATUS TTL_MS STALE_MS TYPE\nBODY", kept
 * for TTL + STALE ms: live while more than STALE ms are left.
 */
static const char read_or_lock[] =
	"local v = redis.call('GET', KEYS[1]) local t = -2 "
	"if v then t = redis.call('PTTL', KEYS[1]) "
	"local s = tonumber(string.match(v, '^1 %d+ %d+ (%d+) ')) "
	"if s and t > s then return {1, t, v} end end "
	"if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, t, v} end "
	"return {3, redis.call('PTTL', KEYS[2]), t, v}";
/* Stores (unless PX is 0), releases the lock if still ours, publishes. */
static const char store_and_publish[] =
	"if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end "
	"if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end "
	"redis.call('PUBLISH', ARGV[4], ARGV[5]) return 1";

static void fleet_id_of(const char *key, char id[FLEET_ID_SIZE])
{
	redis_hash_name(key, strlen(key), id);
}

static void random_id(char id[FLEET_ID_SIZE])
{
	unsigned char bytes[(FLEET_ID_SIZE - 1) / 2];

	evutil_secure_rng_get_bytes(bytes, sizeof(bytes));
	hex_encode(bytes, sizeof(bytes), id);
}

/* A stored value, parsed; body and type point into the reply. -1 when not one. */
struct fleet_value {
	int status;
	int64_t ttl_ms; /* 0: not stored (an error answer), -1: served stale */
	int64_t stale_ms;
	char type[96];
	const char *body;
	size_t body_length;
};

static int fleet_parse(const char *text, size_t length, struct fleet_value *value)
{
	const char *newline = memchr(text, '\n', length);
	char head[160];
	long long ttl, stale;
	int status, used = 0;

	if (newline == NULL || (size_t)(newline - text) >= sizeof(head))
		return -1;
	memcpy(head, text, (size_t)(newline - text));
	head[newline - text] = '\0';
	/* the type is the rest of the line: it may hold spaces ("; charset=utf-8") */
	if (sscanf(head, "1 %d %lld %lld %n", &status, &ttl, &stale, &used) != 3 || used == 0 ||
	    head[used] == '\0' || strlen(head + used) >= sizeof(value->type) || status < 100 ||
	    status > 599 || ttl < -1 || stale < 0)
		return -1;
	snprintf(value->type, sizeof(value->type), "%s", head + used);
	value->status = status;
	value->ttl_ms = ttl;
	value->stale_ms = stale;
	value->body = newline + 1;
	value->body_length = length - (size_t)(newline + 1 - text);
	return 0;
}

/*
 * value as a local entry for key, fetched age_ms ago and live for left_ms more
 * (negative: an expired copy, for stale-if-error). NULL when out of memory or
 * not worth storing.
 */
static struct cache_entry *fleet_store_local(struct cache *cache, const char *key,
					     const struct fleet_value *value, int64_t age_ms,
					     int64_t left_ms)
{
	struct answer answer = { 0 };
	struct cache_entry *entry;
	char state_text[ANSWER_STATE_MAX];
	const char *state = NULL, *why;
	int64_t now = now_ms();

	if (value->ttl_ms <= 0)
		return NULL;
	if (value->status == 200)
		state = answer_parse_state(value->body, value->body_length, NULL, state_text,
					   sizeof(state_text), &why);
	answer.status = value->status;
	answer.state = state ? answer_state_of(state) : ANSWER_NO_STATE;
	answer.body_length = value->body_length;
	answer.content_type = strdup(value->type);
	answer.body = malloc(value->body_length + 1);
	answer.ttl_ms = left_ms;
	entry = NULL;
	if (answer.content_type != NULL && answer.body != NULL) {
		memcpy(answer.body, value->body, value->body_length);
		answer.body[value->body_length] = '\0';
		entry = entry_store(cache, key, &answer, now);
		if (entry != NULL)
			entry->fetched_ms = now - age_ms;
	}
	answer_clear(&answer);
	return entry;
}

/* An expired copy from Redis, kept for stale-if-error unless a newer one is here. */
static void fleet_keep_stale(struct cache *cache, const char *key, const redisReply *element,
			     int64_t pttl)
{
	struct fleet_value value;
	struct cache_entry *entry = entry_find(cache, key);

	if (element == NULL || element->type != REDIS_REPLY_STRING || pttl <= 0 ||
	    fleet_parse(element->str, element->len, &value) < 0 || value.ttl_ms <= 0)
		return;
	if (entry != NULL)
		return;
	/* pttl is what is left of TTL + STALE; the entry expired STALE - pttl ago */
	(void)fleet_store_local(cache, key, &value, value.ttl_ms + value.stale_ms - pttl,
				pttl - value.stale_ms);
}

static void flight_deliver_and_free(struct flight *flight, const struct cache_answer *answer)
{
	struct cache *cache = flight->cache;

	flight_deliver(flight, answer);
	if (cache->observer != NULL)
		cache->observer(flight->key, answer, cache->observer_arg);
	flight_free(flight);
}

static void flight_fail(struct flight *flight, int status, const char *code, const char *message)
{
	struct answer failed = { 0 };
	struct cache_answer answer = { 0 };

	answer_set_error(&failed, status, code, message);
	answer.status = failed.status;
	answer.content_type = "application/json";
	answer.body = failed.body != NULL ? failed.body : "";
	answer.body_length = failed.body_length;
	answer.result = CACHE_MISS;
	answer.state = ANSWER_NO_STATE;
	flight_deliver_and_free(flight, &answer);
	answer_clear(&failed);
}

static void noop_reply(const struct redisReply *reply, void *arg)
{
	(void)reply;
	(void)arg;
}

/* Our lock's answer for every instance: stored (if cacheable), lock released, published. */
static void fleet_publish(struct flight *flight, const struct cache_answer *answer)
{
	struct cache *cache = flight->cache;
	int64_t ttl = 0, stale = cache->conf->cache_stale_if_error_ms;
	char *value = NULL, *message = NULL, px[24], lock[160], key[160];
	int value_length, message_length;

	if (!redis_usable(cache->redis))
		return;
	if (answer != NULL && answer->result == CACHE_STALE)
		ttl = -1;
	else if (answer != NULL && answer->cached)
		ttl = answer->expires_ms - answer->fetched_ms;
	if (answer != NULL) {
		value_length = asprintf(&value, "1 %d %lld %lld %s\n", answer->status,
					(long long)ttl, (long long)stale,
					answer->content_type != NULL ? answer->content_type
								     : "application/json");
		if (value_length < 0) {
			value = NULL;
			return;
		}
		char *whole = realloc(value, (size_t)value_length + answer->body_length);
		if (whole == NULL) {
			free(value);
			return;
		}
		value = whole;
		memcpy(value + value_length, answer->body, answer->body_length);
		value_length += (int)answer->body_length;
	} else {
		value_length = 0; /* released without an answer: the others try again */
	}
	message_length = asprintf(&message, "%s %s\n", cache->instance, flight->fleet_id);
	if (message_length < 0) {
		free(value);
		return;
	}
	if (value_length > 0) {
		char *whole = realloc(message, (size_t)message_length + (size_t)value_length);

		if (whole == NULL) {
			free(value);
			free(message);
			return;
		}
		message = whole;
		memcpy(message + message_length, value, (size_t)value_length);
		message_length += value_length;
	}
	snprintf(px, sizeof(px), "%lld", ttl > 0 ? (long long)(ttl + stale) : 0LL);
	snprintf(key, sizeof(key), "%se:%s", cache->conf->redis_prefix, flight->fleet_id);
	snprintf(lock, sizeof(lock), "%sl:%s", cache->conf->redis_prefix, flight->fleet_id);
	{
		const char *argv[] = { "EVAL",
				       store_and_publish,
				       "2",
				       key,
				       lock,
				       value != NULL ? value : "",
				       px,
				       flight->token,
				       redis_channel(cache->redis),
				       message };
		size_t lengths[] = { 4,
				     sizeof(store_and_publish) - 1,
				     1,
				     strlen(key),
				     strlen(lock),
				     (size_t)value_length,
				     strlen(px),
				     strlen(flight->token),
				     strlen(redis_channel(cache->redis)),
				     (size_t)message_length };

		/* not answered: the lock's TTL ends it, and the others read again */
		if (redis_command(cache->redis, 10, argv, lengths, noop_reply, NULL) == NULL)
			log_debug("redis: cannot publish an answer now");
	}
	free(value);
	free(message);
}

static void fleet_release(struct flight *flight)
{
	flight->owner = 0;
	fleet_publish(flight, NULL);
}

static void on_flight_done(const struct upstream_result *result, void *arg);

/* No one else to ask (or no Redis): this instance calls upstream itself. */
static void flight_call(struct flight *flight)
{
	struct cache *cache = flight->cache;
	const struct conf *conf = cache->conf;
	const struct conf_credential *credential = NULL;

	for (size_t i = 0; i < conf->credential_count; i++) {
		if (strcmp(conf->credentials[i].name, flight->credential) == 0)
			credential = &conf->credentials[i];
	}
	if (credential == NULL) {
		flight_fail(flight, 503, "unavailable", "the credential was removed by a reload");
		return;
	}
	flight->call = upstream_start_status(cache->upstream, conf, credential, &flight->q,
					     on_flight_done, flight);
	if (flight->call == NULL)
		flight_fail(flight, 503, "unavailable", "cannot start an upstream call");
}

static void fleet_ask(struct flight *flight);
static int fleet_send(struct flight *flight);

static void on_read_or_lock(const struct redisReply *reply, void *arg)
{
	struct flight *flight = arg;
	struct cache *cache = flight->cache;
	long long code;

	flight->command = NULL;
	if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
	    reply->element[0]->type != REDIS_REPLY_INTEGER ||
	    reply->element[1]->type != REDIS_REPLY_INTEGER) {
		flight_call(flight); /* Redis failed us: alone */
		return;
	}
	code = reply->element[0]->integer;
	if (code == 1 && reply->elements == 3 && reply->element[2]->type == REDIS_REPLY_STRING) {
		struct fleet_value value;
		struct cache_entry *entry = NULL;
		struct cache_answer answer;
		int64_t pttl = reply->element[1]->integer;

		if (fleet_parse(reply->element[2]->str, reply->element[2]->len, &value) == 0)
			entry = fleet_store_local(cache, flight->key, &value,
						  value.ttl_ms + value.stale_ms - pttl,
						  pttl - value.stale_ms);
		if (entry == NULL) {
			flight_call(flight);
			return;
		}
		answer_from_entry(entry, now_ms(), CACHE_HIT, &answer);
		flight_deliver_and_free(flight, &answer);
	} else if (code == 2) {
		fleet_keep_stale(cache, flight->key, reply->elements > 2 ? reply->element[2] : NULL,
				 reply->element[1]->integer);
		flight->owner = 1;
		flight_call(flight);
	} else if (code == 3 && reply->elements >= 3 &&
		   reply->element[2]->type == REDIS_REPLY_INTEGER) {
		int64_t wait_ms = reply->element[1]->integer;
		struct timeval tv;

		fleet_keep_stale(cache, flight->key, reply->elements > 3 ? reply->element[3] : NULL,
				 reply->element[2]->integer);
		/* the holder publishes its answer; if that is lost, read when its lock ends */
		if (wait_ms < 10)
			wait_ms = 10;
		tv.tv_sec = (time_t)(wait_ms / 1000);
		tv.tv_usec = (suseconds_t)(wait_ms % 1000) * 1000;
		if (flight->fleet_timer == NULL || event_add(flight->fleet_timer, &tv) < 0)
			flight_call(flight);
	} else {
		flight_call(flight);
	}
}

/* Sends read_or_lock; 0, or -1 when Redis cannot be asked now. */
static int fleet_send(struct flight *flight)
{
	struct cache *cache = flight->cache;
	char key[160], lock[160], lock_ms[24];
	const char *argv[] = { "EVAL", read_or_lock, "2", key, lock, flight->token, lock_ms };
	size_t lengths[7];

	snprintf(key, sizeof(key), "%se:%s", cache->conf->redis_prefix, flight->fleet_id);
	snprintf(lock, sizeof(lock), "%sl:%s", cache->conf->redis_prefix, flight->fleet_id);
	/* longer than any call can take: only a lost owner leaves it to expire */
	snprintf(lock_ms, sizeof(lock_ms), "%lld",
		 (long long)(cache->conf->upstream_timeout_ms + 1000));
	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++)
		lengths[i] = i == 1 ? sizeof(read_or_lock) - 1 : strlen(argv[i]);
	flight->attempts++;
	flight->command = redis_command(cache->redis, 7, argv, lengths, on_read_or_lock, flight);
	return flight->command != NULL ? 0 : -1;
}

/* Asks again (a timer or a message: the flight has its waiters). */
static void fleet_ask(struct flight *flight)
{
	if (fleet_send(flight) < 0)
		flight_call(flight);
}

static void on_fleet_timer(evutil_socket_t fd, short what, void *arg)
{
	struct flight *flight = arg;

	(void)fd;
	(void)what;
	if (flight->attempts >= FLEET_ATTEMPTS)
		flight_call(flight);
	else
		fleet_ask(flight);
}

/* Another instance's answer (or its giving up) for the key named id. */
static void on_fleet_message(const char *payload, size_t length, void *arg)
{
	struct cache *cache = arg;
	const char *space = memchr(payload, ' ', length), *newline;
	char id[FLEET_ID_SIZE];
	struct fleet_value value;
	struct flight *flight = NULL;
	struct cache_entry *entry = NULL;
	struct cache_answer answer = { 0 };

	if (space == NULL || (size_t)(space - payload) != FLEET_ID_SIZE - 1 ||
	    memcmp(payload, cache->instance, FLEET_ID_SIZE - 1) == 0)
		return; /* malformed, or our own */
	newline = memchr(space + 1, '\n', length - (size_t)(space + 1 - payload));
	if (newline == NULL || newline - space - 1 != FLEET_ID_SIZE - 1)
		return;
	memcpy(id, space + 1, FLEET_ID_SIZE - 1);
	id[FLEET_ID_SIZE - 1] = '\0';
	HASH_FIND(hh_fleet, cache->fleet_flights, id, FLEET_ID_SIZE - 1, flight);
	if (newline + 1 == payload + length) {
		/* the lock was let go without an answer: ask again now */
		if (flight != NULL && flight->call == NULL && flight->command == NULL) {
			event_del(flight->fleet_timer);
			fleet_ask(flight);
		}
		return;
	}
	if (fleet_parse(newline + 1, length - (size_t)(newline + 1 - payload), &value) < 0)
		return;
	if (flight != NULL && (flight->call != NULL || flight->command != NULL))
		flight = NULL; /* it asked upstream or Redis itself: its own answer comes */
	if (flight == NULL) {
		/* no one waits here; an entry we hold is brought up to date (held clients) */
		HASH_FIND(hh_fleet, cache->by_fleet_id, id, FLEET_ID_SIZE - 1, entry);
		if (entry == NULL || value.ttl_ms <= 0)
			return;
		char *key = strdup(entry->key);

		if (key == NULL)
			return;
		entry = fleet_store_local(cache, key, &value, 0, value.ttl_ms);
		if (entry != NULL && cache->observer != NULL) {
			answer_from_entry(entry, now_ms(), CACHE_HIT, &answer);
			cache->observer(key, &answer, cache->observer_arg);
		}
		free(key);
		return;
	}
	if (value.ttl_ms > 0)
		entry = fleet_store_local(cache, flight->key, &value, 0, value.ttl_ms);
	else if (value.ttl_ms < 0)
		entry = entry_find(cache, flight->key);
	if (entry != NULL) {
		answer_from_entry(entry, now_ms(), value.ttl_ms < 0 ? CACHE_STALE : CACHE_COALESCED,
				  &answer);
	} else {
		answer.status = value.status;
		answer.content_type = value.type;
		answer.body = value.body;
		answer.body_length = value.body_length;
		answer.result = CACHE_COALESCED;
		answer.state = ANSWER_NO_STATE;
	}
	event_del(flight->fleet_timer);
	flight_deliver_and_free(flight, &answer);
}

/* act on every flight that waits for another instance's answer (may free it). */
static void each_waiting_flight(struct cache *cache, void (*act)(struct flight *flight))
{
	struct flight *flight, *next;

	HASH_ITER (hh_fleet, cache->fleet_flights, flight, next) {
		if (flight->call == NULL && flight->command == NULL &&
		    event_pending(flight->fleet_timer, EV_TIMEOUT, NULL)) {
			event_del(flight->fleet_timer);
			act(flight);
		}
	}
}

/* After a reconnect, messages may have been lost: waiting flights ask again. */
static void on_fleet_resubscribed(void *arg)
{
	each_waiting_flight(arg, fleet_ask);
}

/* Redis went away: flights waiting for another instance's answer call upstream now. */
static void on_fleet_lost(void *arg)
{
	each_waiting_flight(arg, flight_call);
}

void cache_set_redis(struct cache *cache, struct redis *redis)
{
	struct flight *flight, *next;

	if (redis == NULL) {
		/* whatever waits on Redis calls upstream instead */
		HASH_ITER (hh_fleet, cache->fleet_flights, flight, next) {
			HASH_DELETE(hh_fleet, cache->fleet_flights, flight);
			flight->in_fleet = 0;
			flight->owner = 0;
			if (flight->call == NULL) {
				redis_command_cancel(flight->command);
				flight->command = NULL;
				event_del(flight->fleet_timer);
				flight_call(flight);
			}
		}
	}
	cache->redis = redis;
	if (redis != NULL)
		redis_subscribe(redis, on_fleet_message, on_fleet_resubscribed, on_fleet_lost,
				cache);
}

static void deliver(const struct cache_answer *answer, void *arg)
{
	struct flight *flight = arg;

	if (flight->owner) {
		flight->owner = 0;
		fleet_publish(flight, answer);
	}
	flight_deliver(flight, answer);
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
	flight->q = *q;
	snprintf(flight->credential, sizeof(flight->credential), "%s", credential->name);
	if (redis_usable(cache->redis)) {
		fleet_id_of(key, flight->fleet_id);
		random_id(flight->token);
		flight->fleet_timer = evtimer_new(cache->base, on_fleet_timer, flight);
		if (flight->fleet_timer != NULL && fleet_send(flight) < 0) {
			event_free(flight->fleet_timer);
			flight->fleet_timer = NULL;
		}
	}
	if (flight->fleet_timer == NULL) {
		flight->call = upstream_start_status(cache->upstream, cache->conf, credential, q,
						     on_flight_done, flight);
		if (flight->call == NULL) {
			free(flight->key);
			free(flight);
			return NULL;
		}
	}
	hash_add_failed = 0;
	HASH_ADD_KEYPTR(hh, cache->flights, flight->key, strlen(flight->key), flight);
	flight->in_table = !hash_add_failed; /* if not, the call runs unshared */
	DL_APPEND(cache->all_flights, flight);
	if (flight->fleet_timer != NULL) {
		hash_add_failed = 0;
		HASH_ADD(hh_fleet, cache->fleet_flights, fleet_id, FLEET_ID_SIZE - 1, flight);
		flight->in_fleet = !hash_add_failed;
	}
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
	random_id(cache->instance);
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
	cache->redis = NULL; /* nothing is published on the way out */
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
