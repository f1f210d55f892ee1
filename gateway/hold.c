/*
 * hold.c -- held status requests (hold.h): a uthash table of held keys, each
 * with its holds (utlist, in order of arrival), its latest answer (a copy: the
 * cache may drop its entry meanwhile), one timer for its next refresh, and one
 * cache waiter while that refresh is in flight. Each hold has its own deadline
 * timer. The cache's observer hands every settled answer to the key's holds.
 */
#include "config.h"

#include "hold.h"

#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "cache.h"
#include "clock.h"
#include "conf.h"
#include "hash.h"
#include "log.h"
#include "metrics.h"
#include "query.h"

#include <utlist.h>

/* Refreshes never come closer than this (cache_pending_ttl may be 0). */
#define HOLD_MIN_REFRESH_MS 1000

struct held_key {
	char *key; /* the cache's: hash_key_join(user id, export id) */
	UT_hash_handle hh;
	int in_table;
	struct holds *holds;
	struct hold *holds_list; /* utlist */
	char *user_id;		 /* which credential refreshes it */
	struct query q;		 /* the refresh's: export id, no download */
	struct cache_waiter *refresh;
	struct event *timer; /* the next refresh */
	/* the latest answer: a 200 with a non-final state */
	struct cache_answer latest; /* its pointers point at the copies below */
	char *content_type;
	char *body;
	char etag[ANSWER_ETAG_SIZE];
};

struct hold {
	struct held_key *key;
	struct hold *prev, *next;
	struct event *deadline;
	int has_etag;
	char etag[ANSWER_ETAG_SIZE]; /* waits for another body than this one */
	hold_cb done;
	void *arg;
};

struct holds {
	struct event_base *base;
	struct cache *cache;
	const struct conf *conf;
	struct held_key *keys; /* uthash head */
	size_t count;
};

static void on_refresh_due(evutil_socket_t fd, short what, void *arg);

static void key_free(struct held_key *key)
{
	struct holds *holds = key->holds;

	if (key->in_table)
		HASH_DEL(holds->keys, key);
	/* its answer still reaches the observer; this key is just not there */
	cache_waiter_cancel(key->refresh);
	if (key->timer != NULL)
		event_free(key->timer);
	free(key->key);
	free(key->user_id);
	free(key->content_type);
	free(key->body);
	free(key);
}

/* Keeps answer (a 200 with a non-final state) as the key's latest. -1: out of memory. */
static int key_keep(struct held_key *key, const struct cache_answer *answer)
{
	char *content_type =
		strdup(answer->content_type ? answer->content_type : "application/json");
	char *body = malloc(answer->body_length + 1);

	if (content_type == NULL || body == NULL) {
		free(content_type);
		free(body);
		return -1;
	}
	memcpy(body, answer->body, answer->body_length);
	body[answer->body_length] = '\0';
	free(key->content_type);
	free(key->body);
	key->content_type = content_type;
	key->body = body;
	if (answer->etag != NULL)
		memcpy(key->etag, answer->etag, ANSWER_ETAG_SIZE);
	else
		answer_etag(body, answer->body_length, key->etag);
	key->latest = *answer;
	key->latest.content_type = content_type;
	key->latest.body = body;
	key->latest.etag = key->etag;
	return 0;
}

/* The key's latest answer as it stands now: its age and TTL move on. */
static void key_latest(const struct held_key *key, int64_t now, struct cache_answer *answer)
{
	int64_t left = key->latest.expires_ms - now;

	*answer = key->latest;
	if (!answer->cached)
		return; /* it says how it came: a miss, not an entry */
	answer->result = left >= 0 ? CACHE_HIT : CACHE_STALE;
	answer->age_seconds = (now - answer->fetched_ms) / 1000;
	answer->ttl_seconds = left >= 0 ? left / 1000 : -((-left + 999) / 1000);
}

/* The next refresh: when the latest answer expires, or a window from now. */
static void key_arm(struct held_key *key, const struct cache_answer *answer)
{
	int64_t now = now_ms(), delay = key->holds->conf->cache_pending_ttl_ms;
	struct timeval tv;

	if (answer->cached && answer->result != CACHE_STALE && answer->expires_ms > now)
		delay = answer->expires_ms - now;
	else if (delay < HOLD_MIN_REFRESH_MS)
		delay = HOLD_MIN_REFRESH_MS;
	tv.tv_sec = (time_t)(delay / 1000);
	tv.tv_usec = (suseconds_t)((delay % 1000) * 1000);
	if (event_add(key->timer, &tv) < 0)
		log_error("%s: cannot arm a held key's refresh", __func__);
}

/* Takes hold out of its key (whose count it no longer is). */
static void hold_unlink(struct hold *hold)
{
	DL_DELETE(hold->key->holds_list, hold);
	hold->key->holds->count--;
}

/* Frees an unlinked hold, and its key after its last hold. */
static void hold_free(struct hold *hold)
{
	struct held_key *key = hold->key;

	event_free(hold->deadline);
	free(hold);
	if (key->holds_list == NULL)
		key_free(key);
}

/* Ends hold's wait with answer (which may be its key's latest, freed with the key). */
static void hold_finish(struct hold *hold, const struct cache_answer *answer, enum hold_end end)
{
	static const enum metrics_wait_result results[] = {
		[HOLD_FINAL] = METRICS_WAIT_FINAL,
		[HOLD_CHANGED] = METRICS_WAIT_CHANGED,
		[HOLD_TIMEOUT] = METRICS_WAIT_TIMEOUT,
	};

	metrics_wait_finished(results[end]);
	hold_unlink(hold);
	hold->done(answer, end, hold->arg);
	hold_free(hold);
}

int hold_wanted(const struct cache_answer *answer, const char *etag)
{
	if (answer->status != 200 || answer->state != ANSWER_NON_FINAL)
		return 0;
	char now[ANSWER_ETAG_SIZE];

	if (etag == NULL)
		return 1;
	/* with an ETag: held while the body is that one */
	if (answer->etag != NULL)
		return strcmp(answer->etag, etag) == 0;
	answer_etag(answer->body, answer->body_length, now);
	return strcmp(now, etag) == 0;
}

/* How answer ends hold's wait, or -1 when it does not. */
static int ends(const struct hold *hold, const struct cache_answer *answer, const char *etag)
{
	if (answer->status != 200 || answer->state != ANSWER_NON_FINAL)
		return HOLD_FINAL;
	if (hold->has_etag && strcmp(hold->etag, etag) != 0)
		return HOLD_CHANGED;
	return -1;
}

/* The cache settled an answer for key: every wait it ends ends now. */
static void on_settled(const char *name, const struct cache_answer *settled, void *arg)
{
	struct holds *holds = arg;
	struct held_key *key = NULL;
	struct cache_answer answer = *settled;
	struct hold *hold, *next;
	char etag[ANSWER_ETAG_SIZE];

	HASH_FIND_STR(holds->keys, name, key);
	if (key == NULL)
		return;
	if (answer.etag == NULL)
		answer_etag(answer.body, answer.body_length, etag);
	else
		memcpy(etag, answer.etag, sizeof(etag));
	/* the held did not make the call: they shared it */
	if (answer.result == CACHE_MISS)
		answer.result = CACHE_COALESCED;
	DL_FOREACH_SAFE (key->holds_list, hold, next) {
		int end = ends(hold, &answer, etag);

		if (end >= 0)
			hold_finish(hold, &answer, (enum hold_end)end);
	}
	/* hold_finish freed the key with its last hold */
	key = NULL;
	HASH_FIND_STR(holds->keys, name, key);
	if (key == NULL)
		return;
	if (answer.status == 200 && answer.state == ANSWER_NON_FINAL && key_keep(key, &answer) < 0)
		log_error("%s: out of memory keeping a held key's answer", __func__);
	key_arm(key, &answer);
}

static void on_refreshed(const struct cache_answer *answer, void *arg)
{
	struct held_key *key = arg;

	(void)answer; /* the observer has it, after the waiters */
	key->refresh = NULL;
}

static void on_refresh_due(evutil_socket_t fd, short what, void *arg)
{
	struct held_key *key = arg;
	struct holds *holds = key->holds;
	int index;

	(void)fd;
	(void)what;
	if (key->refresh != NULL)
		return;
	index = conf_find_credential_by_user_id(holds->conf, key->user_id);
	if (index >= 0)
		key->refresh = cache_wait(holds->cache, &holds->conf->credentials[index], &key->q,
					  on_refreshed, key);
	if (key->refresh != NULL)
		return;
	/* its credential is gone (a reload), or no call could start: the latest, now */
	if (index < 0)
		log_warn("a held export's credential is no longer configured; its waits end");
	for (int last = 0; !last;) {
		struct cache_answer answer;

		last = key->holds_list->next == NULL; /* the last one frees key */
		key_latest(key, now_ms(), &answer);
		hold_finish(key->holds_list, &answer, HOLD_TIMEOUT);
	}
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct hold *hold = arg;
	struct cache_answer answer;

	(void)fd;
	(void)what;
	key_latest(hold->key, now_ms(), &answer);
	hold_finish(hold, &answer, HOLD_TIMEOUT);
}

static struct held_key *key_new(struct holds *holds, const char *name, const char *user_id,
				const struct query *q, const struct cache_answer *answer)
{
	struct held_key *key = calloc(1, sizeof(*key));

	if (key == NULL)
		return NULL;
	key->holds = holds;
	key->key = strdup(name);
	key->user_id = strdup(user_id);
	key->timer = evtimer_new(holds->base, on_refresh_due, key);
	if (key->key == NULL || key->user_id == NULL || key->timer == NULL ||
	    key_keep(key, answer) < 0)
		goto fail;
	memcpy(key->q.data_export_id, q->data_export_id, sizeof(key->q.data_export_id));
	key->q.wait = -1;
	hash_add_failed = 0;
	HASH_ADD_KEYPTR(hh, holds->keys, key->key, strlen(key->key), key);
	if (hash_add_failed)
		goto fail;
	key->in_table = 1;
	key_arm(key, answer);
	return key;
fail:
	key_free(key);
	return NULL;
}

struct hold *hold_start(struct holds *holds, const char *user_id, const struct query *q,
			const struct cache_answer *answer, const char *etag, int64_t deadline_ms,
			hold_cb done, void *arg)
{
	char buf[QUERY_MAX_ID_BYTES + 64];
	char *name;
	struct held_key *key = NULL;
	struct hold *hold;
	int64_t left = deadline_ms - now_ms();
	struct timeval tv;

	if (holds->count >= (size_t)holds->conf->max_waiting)
		return NULL;
	hold = calloc(1, sizeof(*hold));
	name = hash_key_join(buf, sizeof(buf), user_id, q->data_export_id);
	if (hold == NULL || name == NULL)
		goto fail;
	hold->deadline = evtimer_new(holds->base, on_deadline, hold);
	if (hold->deadline == NULL)
		goto fail;
	tv.tv_sec = left > 0 ? (time_t)(left / 1000) : 0;
	tv.tv_usec = left > 0 ? (suseconds_t)((left % 1000) * 1000) : 0;
	if (event_add(hold->deadline, &tv) < 0)
		goto fail;
	HASH_FIND_STR(holds->keys, name, key);
	if (key == NULL)
		key = key_new(holds, name, user_id, q, answer);
	else if (answer->cached && answer->fetched_ms > key->latest.fetched_ms &&
		 key_keep(key, answer) < 0)
		key = NULL;
	if (key == NULL)
		goto fail;
	hash_key_free(name, buf);
	if (etag != NULL) {
		hold->has_etag = 1;
		memcpy(hold->etag, etag, ANSWER_ETAG_SIZE);
	}
	hold->key = key;
	hold->done = done;
	hold->arg = arg;
	DL_APPEND(key->holds_list, hold);
	holds->count++;
	metrics_wait_started();
	return hold;
fail:
	log_error("%s: out of memory holding a request; answered at once", __func__);
	if (hold != NULL && hold->deadline != NULL)
		event_free(hold->deadline);
	free(hold);
	hash_key_free(name, buf);
	return NULL;
}

void hold_cancel(struct hold *hold)
{
	if (hold == NULL)
		return;
	metrics_wait_finished(METRICS_WAIT_RESULT_COUNT); /* the client left: no result */
	hold_unlink(hold);
	hold_free(hold);
}

void holds_release_all(struct holds *holds)
{
	int64_t now = now_ms();

	while (holds->keys != NULL) {
		struct held_key *key = holds->keys;
		struct cache_answer answer;

		key_latest(key, now, &answer);
		hold_finish(key->holds_list, &answer, HOLD_TIMEOUT);
	}
}

struct holds *holds_new(struct event_base *base, struct cache *cache, const struct conf *conf)
{
	struct holds *holds = calloc(1, sizeof(*holds));

	if (holds == NULL)
		return NULL;
	holds->base = base;
	holds->cache = cache;
	holds->conf = conf;
	cache_set_observer(cache, on_settled, holds);
	return holds;
}

void holds_set_conf(struct holds *holds, const struct conf *conf)
{
	holds->conf = conf;
}

void holds_free(struct holds *holds)
{
	if (holds == NULL)
		return;
	cache_set_observer(holds->cache, NULL, NULL);
	while (holds->keys != NULL) {
		struct held_key *key = holds->keys;

		while (key->holds_list->next != NULL)
			hold_cancel(key->holds_list);
		hold_cancel(key->holds_list); /* frees key too */
	}
	free(holds);
}

size_t holds_count(const struct holds *holds)
{
	return holds->count;
}
