/*
 * unit_cache.c -- the cache module on its own: which answers are stored, LRU
 * eviction order, the download short-cut, keys per user id, reaping. (What an
 * answer is and its TTL: unit_answer.c.)
 * Upstream calls and coalescing are covered by the integration tests.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <event2/event.h>

#include "cache.h"
#include "conf.h"
#include "query.h"

struct fixture {
	struct event_base *base;
	struct conf conf;
	struct cache *cache;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->conf.cache_pending_ttl_ms = 2000;
	f->conf.cache_final_ttl_ms = 60000;
	f->conf.cache_error_ttl_ms = 1000;
	f->conf.cache_stale_if_error_ms = 300000;
	f->conf.cache_max_entries = 3;
	f->base = event_base_new();
	assert_non_null(f->base);
	f->cache = cache_new(f->base, NULL, &f->conf);
	assert_non_null(f->cache);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	cache_free(f->cache);
	event_base_free(f->base);
	free(f);
	return 0;
}

static void put(struct fixture *f, const char *user_id, const char *export_id,
		const char *state_name)
{
	char body[256];

	snprintf(body, sizeof(body), "{\"data_export_id\":\"%s\",\"state\":\"%s\"}", export_id,
		 state_name);
	assert_int_equal(cache_store(f->cache, user_id, export_id, 200, "application/json", body,
				     strlen(body)),
			 1);
}

static int lookup(struct fixture *f, const char *user_id, const char *export_id, int download,
		  struct cache_answer *answer)
{
	struct conf_credential credential = { .name = "c", .user_id = (char *)user_id };
	struct query q = { .download = download };

	snprintf(q.data_export_id, sizeof(q.data_export_id), "%s", export_id);
	return cache_lookup(f->cache, &credential, &q, answer);
}

static void test_store_only_cacheable(void **state)
{
	struct fixture *f = *state;
	struct cache_answer answer;

	assert_int_equal(cache_store(f->cache, "u", "e500", 500, "application/json", "{}", 2), 0);
	assert_int_equal(cache_store(f->cache, "u", "e403", 403, NULL, "{}", 2), 0);
	assert_int_equal(cache_store(f->cache, "u", "nostate", 200, NULL, "{}", 2), 0);
	assert_int_equal(cache_store(f->cache, "u", "e404", 404, NULL, "{\"error\":\"x\"}", 13), 1);
	assert_int_equal(cache_entry_count(f->cache), 1);
	assert_int_equal(lookup(f, "u", "e404", 0, &answer), 1);
	assert_int_equal(answer.status, 404);
	assert_int_equal(answer.result, CACHE_HIT);
	assert_true(answer.ttl_seconds == 0 || answer.ttl_seconds == 1);
}

static void test_hit_answer(void **state)
{
	struct fixture *f = *state;
	struct cache_answer answer;

	put(f, "u", "a", "IN_PROGRESS");
	assert_int_equal(lookup(f, "u", "a", 0, &answer), 1);
	assert_int_equal(answer.status, 200);
	assert_string_equal(answer.content_type, "application/json");
	assert_int_equal(answer.cached, 1);
	assert_int_equal(answer.age_seconds, 0);
	assert_true(answer.ttl_seconds == 1 || answer.ttl_seconds == 2);
	assert_memory_equal(answer.body, "{\"data_export_id\":\"a\",\"state\":\"IN_PROGRESS\"}",
			    answer.body_length);
}

static void test_keys_per_user(void **state)
{
	struct fixture *f = *state;
	struct cache_answer answer;

	put(f, "alice", "shared", "IN_PROGRESS");
	assert_int_equal(lookup(f, "alice", "shared", 0, &answer), 1);
	assert_int_equal(lookup(f, "bob", "shared", 0, &answer), 0);
	/* the separator cannot be forged by ids: "a" + "b\x1fc" is not "a\x1fb" + "c" */
	put(f, "x", "y", "IN_PROGRESS");
	assert_int_equal(lookup(f, "xy", "", 0, &answer), 0);
}

static void test_lru_eviction_order(void **state)
{
	struct fixture *f = *state;
	struct cache_answer answer;

	put(f, "u", "a", "IN_PROGRESS");
	put(f, "u", "b", "IN_PROGRESS");
	put(f, "u", "c", "IN_PROGRESS");
	assert_int_equal(lookup(f, "u", "a", 0, &answer), 1); /* a is now the newest */
	put(f, "u", "d", "IN_PROGRESS");		      /* evicts b, the oldest */
	assert_int_equal(cache_entry_count(f->cache), 3);
	assert_int_equal(lookup(f, "u", "b", 0, &answer), 0);
	assert_int_equal(lookup(f, "u", "a", 0, &answer), 1);
	assert_int_equal(lookup(f, "u", "c", 0, &answer), 1);
	assert_int_equal(lookup(f, "u", "d", 0, &answer), 1);
	put(f, "u", "e", "IN_PROGRESS"); /* evicts a: c, d and a were looked up in that order */
	assert_int_equal(lookup(f, "u", "a", 0, &answer), 0);
	/* a smaller bound from a reload trims at once, oldest first */
	f->conf.cache_max_entries = 1;
	cache_set_conf(f->cache, &f->conf);
	assert_int_equal(cache_entry_count(f->cache), 1);
	assert_int_equal(lookup(f, "u", "e", 0, &answer), 1);
}

static void test_replacing_keeps_one_entry(void **state)
{
	struct fixture *f = *state;
	struct cache_answer answer;

	put(f, "u", "a", "IN_PROGRESS");
	put(f, "u", "a", "COMPLETED");
	assert_int_equal(cache_entry_count(f->cache), 1);
	assert_int_equal(lookup(f, "u", "a", 0, &answer), 1);
	assert_non_null(strstr(answer.body, "COMPLETED"));
	assert_true(answer.ttl_seconds > 50);
}

static void test_download_short_cut(void **state)
{
	struct fixture *f = *state;
	struct cache_answer answer;

	put(f, "u", "pending", "REQUESTED");
	put(f, "u", "done", "COMPLETED");
	put(f, "u", "failed", "FAILED");
	assert_int_equal(lookup(f, "u", "pending", 1, &answer), 1);
	assert_int_equal(lookup(f, "u", "failed", 1, &answer), 1);
	assert_int_equal(lookup(f, "u", "done", 1, &answer), 0); /* the CSV is upstream's */
	assert_int_equal(lookup(f, "u", "done", 0, &answer), 1);
	f->conf.cache_max_entries = 10;
	cache_set_conf(f->cache, &f->conf);
	assert_int_equal(cache_store(f->cache, "u", "gone", 404, NULL, "{}", 2), 1);
	assert_int_equal(lookup(f, "u", "gone", 1, &answer), 0);
}

static void sleep_ms(long ms)
{
	struct timespec pause = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&pause, NULL);
}

static void test_expiry_and_new_ttls(void **state)
{
	struct fixture *f = *state;
	struct cache_answer answer;

	f->conf.cache_pending_ttl_ms = 50;
	put(f, "u", "short", "IN_PROGRESS");
	f->conf.cache_pending_ttl_ms = 5000; /* a reload: applies to entries fetched after it */
	cache_set_conf(f->cache, &f->conf);
	put(f, "u", "long", "IN_PROGRESS");
	sleep_ms(80);
	assert_int_equal(lookup(f, "u", "short", 0, &answer), 0);
	assert_int_equal(lookup(f, "u", "long", 0, &answer), 1);
	assert_int_equal(cache_entry_count(f->cache), 2); /* kept for stale-if-error */
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(arg);
}

static void test_reaper_removes_expired(void **state)
{
	struct fixture *f = *state;
	struct timeval after = { 1, 300000 };
	struct event *stop = evtimer_new(f->base, on_stop, f->base);

	f->conf.cache_pending_ttl_ms = 10;
	f->conf.cache_stale_if_error_ms = 0;
	put(f, "u", "a", "IN_PROGRESS");
	f->conf.cache_final_ttl_ms = 60000;
	put(f, "u", "b", "COMPLETED");
	assert_int_equal(cache_entry_count(f->cache), 2);
	assert_non_null(stop);
	assert_int_equal(evtimer_add(stop, &after), 0);
	assert_int_equal(event_base_dispatch(f->base), 0);
	event_free(stop);
	assert_int_equal(cache_entry_count(f->cache), 1); /* without any lookup */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_store_only_cacheable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hit_answer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keys_per_user, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lru_eviction_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_replacing_keeps_one_entry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_download_short_cut, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expiry_and_new_ttls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reaper_removes_expired, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
