/*
 * unit_fake_script.c -- the fake upstream's script language (tests/fake/script.h),
 * which every integration test relies on: keys, values, bounds, bad scripts, and
 * the states a script walks through.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "script.h"

static void parses(const char *id, struct fake_script *script)
{
	if (fake_script_parse(script, id) != FAKE_SCRIPT_OK)
		fail_msg("refused: %s", id);
}

static void refuses(const char *id)
{
	struct fake_script script;

	if (fake_script_parse(&script, id) != FAKE_SCRIPT_BAD)
		fail_msg("accepted: %s", id);
	fake_script_clear(&script);
}

static void test_plain_name_and_defaults(void **state)
{
	struct fake_script script;

	(void)state;
	parses("job7", &script);
	assert_string_equal(script.name, "job7");
	assert_int_equal(script.state_count, 0);
	assert_int_equal(script.csv_size, FAKE_CSV_DEFAULT_SIZE);
	assert_int_equal(script.status, 0);
	assert_false(script.chunked);
	assert_false(script.has_cut);
	assert_null(script.raw);
	/* no states=: REQUESTED for 2 s, IN_PROGRESS until 6 s, then COMPLETED */
	assert_string_equal(fake_script_state(&script, 1, 0), "REQUESTED");
	assert_string_equal(fake_script_state(&script, 9, FAKE_REQUESTED_FOR_MS), "IN_PROGRESS");
	assert_string_equal(fake_script_state(&script, 9, FAKE_IN_PROGRESS_UNTIL_MS), "COMPLETED");
	fake_script_clear(&script);
}

static void test_every_key(void **state)
{
	struct fake_script script;

	(void)state;
	parses("j;states=REQUESTED:2,IN_PROGRESS,503;delay=250;status=404;body=html;close=1;"
	       "csv=3m;length=0;throttle=1000;cut=0;raw=r1",
	       &script);
	assert_int_equal(script.state_count, 3);
	assert_int_equal(script.delay_ms, 250);
	assert_int_equal(script.status, 404);
	assert_int_equal(script.body, FAKE_BODY_HTML);
	assert_true(script.close);
	assert_int_equal(script.csv_size, 3 << 20);
	assert_true(script.chunked);
	assert_int_equal(script.throttle, 1000);
	assert_true(script.has_cut);
	assert_int_equal(script.cut, 0);
	assert_string_equal(script.raw, "r1");
	/* slots by request count; the last one repeats */
	assert_string_equal(fake_script_state(&script, 1, 0), "REQUESTED");
	assert_string_equal(fake_script_state(&script, 2, 0), "REQUESTED");
	assert_string_equal(fake_script_state(&script, 3, 0), "IN_PROGRESS");
	assert_string_equal(fake_script_state(&script, 4, 0), "503");
	assert_string_equal(fake_script_state(&script, 400, 0), "503");
	assert_int_equal(fake_state_as_status("503"), 503);
	assert_int_equal(fake_state_as_status("IN_PROGRESS"), 0);
	assert_int_equal(fake_state_as_status("999"), 0);
	assert_int_equal(fake_state_as_status("50"), 0);
	assert_true(fake_state_is_final("COMPLETED"));
	assert_true(fake_state_is_final("FAILED"));
	assert_false(fake_state_is_final("503"));
	fake_script_clear(&script);
}

static void test_sizes(void **state)
{
	struct fake_script script;

	(void)state;
	parses("s;csv=0", &script);
	assert_int_equal(script.csv_size, 0);
	fake_script_clear(&script);
	parses("s;csv=2k", &script);
	assert_int_equal(script.csv_size, 2048);
	fake_script_clear(&script);
	parses("s;csv=1g", &script);
	assert_int_equal(script.csv_size, (uint64_t)1 << 30);
	fake_script_clear(&script);
	parses("s;csv=64g", &script);
	assert_int_equal(script.csv_size, FAKE_CSV_MAX_SIZE);
	fake_script_clear(&script);
}

static void test_ready(void **state)
{
	struct fake_script script;

	(void)state;
	/* by the id's age, whatever the request count; other keys still apply */
	parses("w;ready=10000;csv=2k;delay=5", &script);
	assert_true(script.has_ready);
	assert_int_equal(script.ready_ms, 10000);
	assert_int_equal(script.csv_size, 2048);
	assert_int_equal(script.delay_ms, 5);
	assert_int_equal(script.state_count, 0);
	assert_string_equal(fake_script_state(&script, 1, 0), "IN_PROGRESS");
	assert_string_equal(fake_script_state(&script, 500, 9999), "IN_PROGRESS");
	assert_string_equal(fake_script_state(&script, 1, 10000), "COMPLETED");
	assert_string_equal(fake_script_state(&script, 2, 99999), "COMPLETED");
	fake_script_clear(&script);
	/* ready=0: COMPLETED from the first request on */
	parses("w;ready=0", &script);
	assert_true(script.has_ready);
	assert_string_equal(fake_script_state(&script, 1, 0), "COMPLETED");
	fake_script_clear(&script);
	parses("w;ready=3600000", &script);
	assert_int_equal(script.ready_ms, FAKE_MAX_DELAY_MS);
	fake_script_clear(&script);
}

static void test_bad_scripts(void **state)
{
	char many[1024] = "m;states=";

	(void)state;
	refuses("x;nokey=1");
	refuses("x;states");
	refuses("x;states=");
	refuses("x;states=A:0");
	refuses("x;states=A:-1");
	refuses("x;states=A:99999999999");
	refuses("x;delay=3600001");
	refuses("x;delay=1s");
	refuses("x;status=199");
	refuses("x;status=600");
	refuses("x;body=weird");
	refuses("x;close=yes");
	refuses("x;csv=65g");
	refuses("x;csv=1t");
	refuses("x;csv=1mb");
	refuses("x;length=2");
	refuses("x;throttle=0");
	refuses("x;cut=-1");
	refuses("x;raw=");
	refuses("x;ready=");
	refuses("x;ready=-1");
	refuses("x;ready=10s");
	refuses("x;ready=3600001");
	/* time and request count cannot both decide the state, in either order */
	refuses("x;ready=100;states=COMPLETED");
	refuses("x;states=IN_PROGRESS:3,COMPLETED;ready=100");
	for (int i = 0; i < FAKE_MAX_STATE_SLOTS + 1; i++)
		strcat(many, i ? ",S" : "S");
	refuses(many);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_name_and_defaults),
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_ready),
		cmocka_unit_test(test_bad_scripts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
