/*
 * unit_idempotency.c -- the Idempotency-Key records: new, in flight, replayed,
 * reused with another body, what is kept (2xx, 4xx) and what not (5xx), per
 * client, the TTL, the LRU bound, and the header's form.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "idempotency.h"

static const unsigned char digest_a[IDEMPOTENCY_DIGEST_BYTES] = { 1 };
static const unsigned char digest_b[IDEMPOTENCY_DIGEST_BYTES] = { 2 };

static enum idempotency_state begin(struct idempotency *store, const char *client, const char *key,
				    const unsigned char *digest, int64_t now, size_t max_keys,
				    struct idempotency_answer *kept)
{
	enum idempotency_state state;
	struct idempotency_answer ignored;

	assert_int_equal(idempotency_begin(store, client, key, digest, now, max_keys, &state,
					   kept != NULL ? kept : &ignored),
			 0);
	return state;
}

static void finish(struct idempotency *store, const char *client, const char *key, int status,
		   const char *body, int64_t now, int64_t ttl)
{
	struct idempotency_answer answer = {
		.status = status,
		.content_type = "application/json",
		.body = body,
		.body_length = strlen(body),
	};

	idempotency_finish(store, client, key, &answer, now, ttl);
}

static void test_first_then_in_flight_then_replay(void **state)
{
	struct idempotency *store = idempotency_new();
	struct idempotency_answer kept;

	(void)state;
	assert_non_null(store);
	assert_int_equal(begin(store, "c", "k", digest_a, 0, 10, NULL), IDEMPOTENCY_NEW);
	assert_int_equal(begin(store, "c", "k", digest_a, 1, 10, NULL), IDEMPOTENCY_IN_FLIGHT);
	assert_int_equal(begin(store, "c", "k", digest_b, 1, 10, NULL), IDEMPOTENCY_REUSED);
	finish(store, "c", "k", 200, "{\"data_export_id\":\"e1\"}", 2, 1000);
	assert_int_equal(begin(store, "c", "k", digest_a, 3, 10, &kept), IDEMPOTENCY_REPLAY);
	assert_int_equal(kept.status, 200);
	assert_string_equal(kept.content_type, "application/json");
	assert_int_equal(kept.body_length, strlen("{\"data_export_id\":\"e1\"}"));
	assert_memory_equal(kept.body, "{\"data_export_id\":\"e1\"}", kept.body_length);
	assert_int_equal(begin(store, "c", "k", digest_b, 3, 10, NULL), IDEMPOTENCY_REUSED);
	/* keys are per client */
	assert_int_equal(begin(store, "other", "k", digest_b, 3, 10, NULL), IDEMPOTENCY_NEW);
	idempotency_free(store);
}

static void test_what_is_kept(void **state)
{
	struct idempotency *store = idempotency_new();

	(void)state;
	const int statuses[] = { 200, 201, 400, 404, 422, 500, 502, 504, 302 };
	const int kept[] = { 1, 1, 1, 1, 1, 0, 0, 0, 0 };

	for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
		char key[16];

		snprintf(key, sizeof(key), "k%zu", i);
		assert_int_equal(begin(store, "c", key, digest_a, 0, 100, NULL), IDEMPOTENCY_NEW);
		finish(store, "c", key, statuses[i], "{}", 0, 1000);
		assert_int_equal(begin(store, "c", key, digest_a, 1, 100, NULL),
				 kept[i] ? IDEMPOTENCY_REPLAY : IDEMPOTENCY_NEW);
	}
	/* forgotten when not carried out; a zero TTL keeps nothing */
	assert_int_equal(begin(store, "c", "f", digest_a, 0, 100, NULL), IDEMPOTENCY_NEW);
	idempotency_forget(store, "c", "f");
	assert_int_equal(begin(store, "c", "f", digest_b, 0, 100, NULL), IDEMPOTENCY_NEW);
	finish(store, "c", "f", 200, "{}", 0, 0);
	assert_int_equal(begin(store, "c", "f", digest_b, 0, 100, NULL), IDEMPOTENCY_NEW);
	idempotency_free(store);
}

static void test_ttl(void **state)
{
	struct idempotency *store = idempotency_new();

	(void)state;
	assert_int_equal(begin(store, "c", "k", digest_a, 0, 10, NULL), IDEMPOTENCY_NEW);
	finish(store, "c", "k", 200, "{}", 100, 1000);
	assert_int_equal(begin(store, "c", "k", digest_a, 1099, 10, NULL), IDEMPOTENCY_REPLAY);
	assert_int_equal(begin(store, "c", "k", digest_b, 1100, 10, NULL), IDEMPOTENCY_NEW);
	idempotency_free(store);
}

static void test_least_recently_used_goes_first(void **state)
{
	struct idempotency *store = idempotency_new();

	(void)state;
	for (int i = 0; i < 3; i++) {
		char key[16];

		snprintf(key, sizeof(key), "k%d", i);
		assert_int_equal(begin(store, "c", key, digest_a, i, 3, NULL), IDEMPOTENCY_NEW);
		finish(store, "c", key, 200, "{}", i, 100000);
	}
	/* k0 used again: k1 is now the oldest */
	assert_int_equal(begin(store, "c", "k0", digest_a, 5, 3, NULL), IDEMPOTENCY_REPLAY);
	assert_int_equal(begin(store, "c", "k3", digest_a, 6, 3, NULL), IDEMPOTENCY_NEW);
	assert_int_equal(idempotency_count(store), 3);
	assert_int_equal(begin(store, "c", "k0", digest_a, 7, 3, NULL), IDEMPOTENCY_REPLAY);
	assert_int_equal(begin(store, "c", "k2", digest_a, 7, 3, NULL), IDEMPOTENCY_REPLAY);
	assert_int_equal(begin(store, "c", "k1", digest_b, 7, 3, NULL), IDEMPOTENCY_NEW);
	/* in-flight records are never dropped: k3 and k1 stay, the bound gives way */
	assert_int_equal(begin(store, "c", "k9", digest_a, 8, 1, NULL), IDEMPOTENCY_NEW);
	assert_int_equal(begin(store, "c", "k3", digest_a, 8, 1, NULL), IDEMPOTENCY_IN_FLIGHT);
	assert_int_equal(begin(store, "c", "k1", digest_b, 8, 1, NULL), IDEMPOTENCY_IN_FLIGHT);
	idempotency_free(store);
}

static void test_key_form(void **state)
{
	char key[300];

	(void)state;
	assert_true(idempotency_key_valid("nightly-2026-12-01"));
	assert_true(idempotency_key_valid("with space ~!"));
	assert_false(idempotency_key_valid(""));
	assert_false(idempotency_key_valid("tab\there"));
	assert_false(idempotency_key_valid("\x01"));
	assert_false(idempotency_key_valid("caf\xc3\xa9"));
	memset(key, 'k', 255);
	key[255] = '\0';
	assert_true(idempotency_key_valid(key));
	key[255] = 'k';
	key[256] = '\0';
	assert_false(idempotency_key_valid(key));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_first_then_in_flight_then_replay),
		cmocka_unit_test(test_what_is_kept),
		cmocka_unit_test(test_ttl),
		cmocka_unit_test(test_least_recently_used_goes_first),
		cmocka_unit_test(test_key_form),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
