/*
 * unit_http_text.c -- http_text.c: decimal header values and the HTTP date,
 * checked against snprintf and strftime, which they replace on the hot path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "http_text.h"

static void test_u64(void **state)
{
	static const uint64_t values[] = {
		0, 1, 9, 10, 99, 100, 4294967295u, 4294967296u, UINT64_MAX - 1, UINT64_MAX
	};
	char out[HTTP_TEXT_U64_SIZE], expected[32];

	(void)state;
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		snprintf(expected, sizeof(expected), "%llu", (unsigned long long)values[i]);
		assert_ptr_equal(http_text_u64(out, values[i]), out);
		assert_string_equal(out, expected);
	}
}

static void test_prefixed_i64(void **state)
{
	static const int64_t values[] = { 0, 1, -1, 3597, -3597, INT64_MAX, INT64_MIN };
	char out[64], expected[64];

	(void)state;
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		snprintf(expected, sizeof(expected), "gumloop-gateway; hit; ttl=%lld",
			 (long long)values[i]);
		assert_non_null(http_text_prefixed_i64(out, sizeof(out),
						       "gumloop-gateway; hit; ttl=", values[i]));
		assert_string_equal(out, expected);
	}
	/* exactly fits, one byte short */
	assert_non_null(http_text_prefixed_i64(out, 7, "ab", -123));
	assert_string_equal(out, "ab-123");
	assert_null(http_text_prefixed_i64(out, 7, "ab", -1234));
	assert_null(http_text_prefixed_i64(out, 3, "ab", 1));
	assert_null(http_text_prefixed_i64(out, 1, "", 0));
}

static void test_date_format(void **state)
{
	/* RFC 9110's example, a leap day, the first second, the year 9999's last */
	static const time_t times[] = { 784111777, 951782400, 0, 253402300799, 1796180828 };
	char out[HTTP_DATE_SIZE], expected[64];
	struct tm tm;

	(void)state;
	assert_int_equal(http_date_format(784111777, out), 0);
	assert_string_equal(out, "Sun, 06 Nov 1994 08:49:37 GMT");
	for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
		assert_non_null(gmtime_r(&times[i], &tm));
		strftime(expected, sizeof(expected), "%a, %d %b %Y %H:%M:%S GMT", &tm);
		assert_int_equal(http_date_format(times[i], out), 0);
		assert_string_equal(out, expected);
		assert_int_equal(strlen(out), HTTP_DATE_SIZE - 1);
	}
	assert_int_equal(http_date_format((time_t)253402300800, out), -1); /* year 10000 */
}

static void test_date_now(void **state)
{
	struct http_date date = { 0 };
	char expected[HTTP_DATE_SIZE];
	time_t before = time(NULL), after;
	const char *text;

	(void)state;
	text = http_date_now(&date);
	after = time(NULL);
	assert_ptr_equal(text, date.text);
	assert_true(date.second >= before && date.second <= after);
	assert_int_equal(http_date_format(date.second, expected), 0);
	assert_string_equal(text, expected);
	/* a cache from another second is made again */
	date.second -= 10;
	date.text[0] = 'x';
	text = http_date_now(&date);
	assert_true(date.second >= before);
	assert_int_equal(http_date_format(date.second, expected), 0);
	assert_string_equal(text, expected);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_u64),
		cmocka_unit_test(test_prefixed_i64),
		cmocka_unit_test(test_date_format),
		cmocka_unit_test(test_date_now),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
