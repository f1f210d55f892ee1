/*
 * unit_query.c -- query_parse: what a client may send to /export_status and the
 * 400 each malformed query gets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "query.h"

static void accepts(const char *raw, struct query *q)
{
	const char *message = NULL;

	if (query_parse(raw, q, &message) != 0)
		fail_msg("rejected \"%s\": %s", raw, message);
}

static void rejects(const char *raw, const char *expected_message)
{
	struct query q;
	const char *message = NULL;

	assert_int_equal(query_parse(raw, &q, &message), -1);
	assert_non_null(message);
	if (strstr(message, expected_message) == NULL)
		fail_msg("\"%s\": message \"%s\" lacks \"%s\"", raw, message, expected_message);
}

static void test_minimal(void **state)
{
	struct query q;

	(void)state;
	accepts("data_export_id=abc123", &q);
	assert_string_equal(q.data_export_id, "abc123");
	assert_int_equal(q.download, 0);
	assert_int_equal(q.has_user_id, 0);
	assert_string_equal(q.user_id, "");
}

static void test_all_parameters(void **state)
{
	struct query q;

	(void)state;
	accepts("user_id=u-1&download=true&data_export_id=x", &q);
	assert_string_equal(q.data_export_id, "x");
	assert_string_equal(q.user_id, "u-1");
	assert_int_equal(q.has_user_id, 1);
	assert_int_equal(q.download, 1);
}

static void test_download_values(void **state)
{
	struct query q;

	(void)state;
	accepts("data_export_id=x&download=1", &q);
	assert_int_equal(q.download, 1);
	accepts("data_export_id=x&download=false", &q);
	assert_int_equal(q.download, 0);
	accepts("data_export_id=x&download=0", &q);
	assert_int_equal(q.download, 0);
	rejects("data_export_id=x&download=yes", "download must be");
	rejects("data_export_id=x&download=TRUE", "download must be");
	rejects("data_export_id=x&download=", "download must be");
	rejects("data_export_id=x&download", "download must be");
}

static void test_percent_decoding(void **state)
{
	struct query q;

	(void)state;
	accepts("data_export_id=a%2Fb%3Bc%3d", &q);
	assert_string_equal(q.data_export_id, "a/b;c=");
	accepts("data%5Fexport%5Fid=named-by-escapes", &q);
	assert_string_equal(q.data_export_id, "named-by-escapes");
	/* '+' is kept as it is: RFC 3986 gives it no meaning, and ids may hold it. */
	accepts("data_export_id=a+b", &q);
	assert_string_equal(q.data_export_id, "a+b");
	rejects("data_export_id=a%2", "printable");
	rejects("data_export_id=a%", "printable");
	rejects("data_export_id=a%zz", "printable");
	rejects("data_export_id=a%00b", "printable");
	rejects("data%ZZexport_id=x", "parameter name");
}

static void test_missing_or_empty_id(void **state)
{
	(void)state;
	rejects(NULL, "data_export_id is required");
	rejects("", "data_export_id is required");
	rejects("download=true", "data_export_id is required");
	rejects("data_export_id=", "data_export_id is empty");
	rejects("data_export_id", "data_export_id is empty");
}

static void test_id_characters(void **state)
{
	(void)state;
	rejects("data_export_id=a%20b", "printable ASCII");
	rejects("data_export_id=a%09b", "printable ASCII");
	rejects("data_export_id=caf%C3%A9", "printable ASCII");
	rejects("data_export_id=a%7Fb", "printable ASCII");
	rejects("user_id=a%20b&data_export_id=x", "user_id must be printable");
	rejects("user_id=&data_export_id=x", "user_id is empty");
}

static void test_id_length(void **state)
{
	char raw[400];
	struct query q;

	(void)state;
	memcpy(raw, "data_export_id=", 15);
	memset(raw + 15, 'a', 256);
	raw[15 + 256] = '\0';
	accepts(raw, &q);
	assert_int_equal(strlen(q.data_export_id), 256);
	raw[15 + 256] = 'a';
	raw[15 + 257] = '\0';
	rejects(raw, "longer than 256 bytes");
}

static void test_repeated_parameters(void **state)
{
	(void)state;
	rejects("data_export_id=a&data_export_id=b", "more than once");
	rejects("data_export_id=a&download=true&download=false", "more than once");
	rejects("data_export_id=a&data%5Fexport_id=a", "more than once");
	rejects("data_export_id=a&x=1&x=2", "more than once");
}

static void test_unknown_and_empty_parameters(void **state)
{
	struct query q;

	(void)state;
	accepts("&&data_export_id=a&&foo=bar&", &q);
	assert_string_equal(q.data_export_id, "a");
	accepts("api_key=stolen&data_export_id=a&x-auth-key=y", &q);
	assert_string_equal(q.data_export_id, "a");
}

static void test_wait_values(void **state)
{
	struct query q;

	(void)state;
	accepts("data_export_id=x", &q);
	assert_int_equal(q.wait, -1);
	accepts("data_export_id=x&wait=0", &q);
	assert_int_equal(q.wait, 0);
	accepts("data_export_id=x&wait=25", &q);
	assert_int_equal(q.wait, 25);
	accepts("data_export_id=x&wait=3600", &q);
	assert_int_equal(q.wait, 3600);
	accepts("data_export_id=x&wait=%32%35", &q);
	assert_int_equal(q.wait, 25);
	rejects("data_export_id=x&wait=3601", "wait must be");
	rejects("data_export_id=x&wait=-1", "wait must be");
	rejects("data_export_id=x&wait=1e9", "wait must be");
	rejects("data_export_id=x&wait=+5", "wait must be");
	rejects("data_export_id=x&wait=1.5", "wait must be");
	rejects("data_export_id=x&wait=", "wait must be");
	rejects("data_export_id=x&wait", "wait must be");
	rejects("data_export_id=x&wait=00025", "wait must be");
	rejects("data_export_id=x&wait=99999999999999999999", "wait must be");
	rejects("data_export_id=x&wait=1&wait=2", "more than once");
}

static void prefers(const char *value, int expected)
{
	const char *message = NULL;
	int wait = -7;

	if (query_prefer_wait(value, &wait, &message) != 1)
		fail_msg("Prefer \"%s\" not taken: %s", value, message ? message : "(none)");
	assert_int_equal(wait, expected);
}

static void test_prefer_wait(void **state)
{
	const char *message = NULL;
	int wait = -7;

	(void)state;
	prefers("wait=10", 10);
	prefers("WAIT=10", 10);
	prefers("respond-async, wait=25", 25);
	prefers("wait=5, wait=9", 5); /* RFC 7240: the first one counts */
	prefers("wait = 7 ;x=y", 7);
	prefers("return=minimal,wait=\"12\"", 12);
	prefers("  wait=0", 0);
	assert_int_equal(query_prefer_wait("return=minimal", &wait, &message), 0);
	assert_int_equal(query_prefer_wait("", &wait, &message), 0);
	assert_int_equal(query_prefer_wait("waiting=5, handling=lenient", &wait, &message), 0);
	assert_int_equal(wait, -7);
	assert_int_equal(query_prefer_wait("wait=abc", &wait, &message), -1);
	assert_non_null(strstr(message, "Prefer: wait"));
	assert_int_equal(query_prefer_wait("wait", &wait, &message), -1);
	assert_int_equal(query_prefer_wait("wait=", &wait, &message), -1);
	assert_int_equal(query_prefer_wait("wait=-1", &wait, &message), -1);
	assert_int_equal(query_prefer_wait("wait=3601", &wait, &message), -1);
	assert_int_equal(query_prefer_wait("wait=\"", &wait, &message), -1);
	assert_int_equal(query_prefer_wait("wait=1e9", &wait, &message), -1);
}

static void test_too_many_parameters(void **state)
{
	char raw[1024] = "data_export_id=a";
	size_t n = strlen(raw);

	(void)state;
	for (int i = 0; i < 40; i++)
		n += (size_t)snprintf(raw + n, sizeof(raw) - n, "&p%d=1", i);
	rejects(raw, "too many");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minimal),
		cmocka_unit_test(test_all_parameters),
		cmocka_unit_test(test_download_values),
		cmocka_unit_test(test_percent_decoding),
		cmocka_unit_test(test_missing_or_empty_id),
		cmocka_unit_test(test_id_characters),
		cmocka_unit_test(test_id_length),
		cmocka_unit_test(test_repeated_parameters),
		cmocka_unit_test(test_unknown_and_empty_parameters),
		cmocka_unit_test(test_too_many_parameters),
		cmocka_unit_test(test_wait_values),
		cmocka_unit_test(test_prefer_wait),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
