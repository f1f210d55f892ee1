/*
 * unit_export_body.c -- export_body_check and export_body_upstream: what a
 * client may POST to /export_data, the 400 (naming the field) each malformed
 * body gets, and the body that goes upstream with the stored user id.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "export_body.h"

#define MINIMAL                                                                                    \
	"\"export_fields\":[\"run_id\"],\"start_date\":\"2025-01-01T00:00:00Z\","                  \
	"\"end_date\":\"2025-12-31T23:59:59Z\""

static void accepts(const char *text, struct export_body *body)
{
	const char *message = NULL;

	if (export_body_check(text, strlen(text), body, &message) != EXPORT_BODY_OK)
		fail_msg("rejected %s: %s", text, message);
}

static void rejects(const char *text, const char *expected)
{
	struct export_body body;
	const char *message = NULL;

	assert_int_equal(export_body_check(text, strlen(text), &body, &message), EXPORT_BODY_BAD);
	assert_null(body.tree);
	assert_non_null(message);
	if (strstr(message, expected) == NULL)
		fail_msg("%s: message \"%s\" lacks \"%s\"", text, message, expected);
}

static void test_minimal_body_goes_upstream_with_the_stored_user_id(void **state)
{
	struct export_body body;
	size_t length = 0;
	char *out;

	(void)state;
	accepts("{" MINIMAL ",\"data_type\":\"brand_new_type\",\"x_extra\":[1,{\"a\":null}]}",
		&body);
	assert_int_equal(body.has_user_id, 0);
	out = export_body_upstream(&body, "user \"7\"\n", &length);
	assert_non_null(out);
	assert_string_equal(out, "{\"user_id\":\"user \\\"7\\\"\\u000a\"," MINIMAL
				 ",\"data_type\":\"brand_new_type\",\"x_extra\":[1,{\"a\":null}]}");
	assert_int_equal(length, strlen(out));
	free(out);
	export_body_clear(&body);
}

static void test_client_user_id_is_taken_out(void **state)
{
	struct export_body body;
	size_t length = 0;
	char *out;

	(void)state;
	accepts("{\"user_id\":\"someone-else\"," MINIMAL "}", &body);
	assert_int_equal(body.has_user_id, 1);
	assert_string_equal(body.user_id, "someone-else");
	out = export_body_upstream(&body, "stored", &length);
	assert_non_null(out);
	assert_non_null(strstr(out, "\"user_id\":\"stored\""));
	assert_null(strstr(out, "someone-else"));
	free(out);
	export_body_clear(&body);
}

static void test_empty_object_rest(void **state)
{
	struct export_body body = { 0 };
	size_t length = 0;
	char *out;

	(void)state;
	body.tree = cJSON_CreateObject();
	assert_non_null(body.tree);
	out = export_body_upstream(&body, "u", &length);
	assert_string_equal(out, "{\"user_id\":\"u\"}");
	free(out);
	export_body_clear(&body);
}

static void test_not_one_object(void **state)
{
	(void)state;
	rejects("", "not valid JSON");
	rejects("[]", "must be a JSON object");
	rejects("\"x\"", "must be a JSON object");
	rejects("{" MINIMAL "} {}", "not valid JSON");
	rejects("{" MINIMAL ",\"start_date\":\"2025-01-01T00:00:00Z\"}", "not valid JSON");
	rejects("{" MINIMAL ",\"x\":\"\xc3\x28\"}", "not valid JSON");
	rejects("{" MINIMAL ",\"x\":\"a\\u0000b\"}", "not valid JSON");
}

static void test_deep_nesting(void **state)
{
	char text[600];
	size_t n = 0;

	(void)state;
	n += (size_t)snprintf(text, sizeof(text), "{" MINIMAL ",\"x\":");
	for (int i = 0; i < 100; i++)
		text[n++] = '[';
	for (int i = 0; i < 100; i++)
		text[n++] = ']';
	text[n++] = '}';
	text[n] = '\0';
	rejects(text, "not valid JSON");
}

static void test_fields_named_in_the_message(void **state)
{
	(void)state;
	rejects("{\"start_date\":\"2025-01-01T00:00:00Z\",\"end_date\":\"2025-01-02T00:00:00Z\"}",
		"export_fields");
	rejects("{\"export_fields\":[],\"start_date\":\"2025-01-01T00:00:00Z\","
		"\"end_date\":\"2025-01-02T00:00:00Z\"}",
		"export_fields");
	rejects("{\"export_fields\":[\"a\",2],\"start_date\":\"2025-01-01T00:00:00Z\","
		"\"end_date\":\"2025-01-02T00:00:00Z\"}",
		"export_fields");
	rejects("{\"export_fields\":\"a\",\"start_date\":\"2025-01-01T00:00:00Z\","
		"\"end_date\":\"2025-01-02T00:00:00Z\"}",
		"export_fields");
	rejects("{\"export_fields\":[\"a\"],\"end_date\":\"2025-01-02T00:00:00Z\"}", "start_date");
	rejects("{\"export_fields\":[\"a\"],\"start_date\":\"2025-01-02T00:00:00Z\"}", "end_date");
	rejects("{\"export_fields\":[\"a\"],\"start_date\":\"2025-01-02\","
		"\"end_date\":\"2025-01-02T00:00:00Z\"}",
		"start_date");
	rejects("{\"export_fields\":[\"a\"],\"start_date\":\"2025-01-02T00:00:00Z\","
		"\"end_date\":\"2025-01-01T23:59:59Z\"}",
		"end_date is before start_date");
	rejects("{" MINIMAL ",\"data_type\":7}", "data_type");
	rejects("{" MINIMAL ",\"export_level\":null}", "export_level");
	rejects("{" MINIMAL ",\"category_filter\":[]}", "category_filter");
	rejects("{" MINIMAL ",\"include_all_workspaces\":\"true\"}", "include_all_workspaces");
	rejects("{" MINIMAL ",\"include_personal_workspaces\":1}", "include_personal_workspaces");
	rejects("{" MINIMAL ",\"workspace_ids\":\"w1\"}", "workspace_ids");
	rejects("{" MINIMAL ",\"entity_ids\":[1]}", "entity_ids");
	rejects("{" MINIMAL ",\"user_id\":\"has space\"}", "user_id");
	rejects("{" MINIMAL ",\"user_id\":\"\"}", "user_id");
	rejects("{" MINIMAL ",\"user_id\":5}", "user_id");
}

static void test_export_fields_bound(void **state)
{
	char text[2048];
	size_t n = 0;

	(void)state;
	n += (size_t)snprintf(text + n, sizeof(text) - n, "{\"export_fields\":[");
	for (int i = 0; i < 101; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "%s\"f\"", i ? "," : "");
	snprintf(
		text + n, sizeof(text) - n,
		"],\"start_date\":\"2025-01-01T00:00:00Z\",\"end_date\":\"2025-01-02T00:00:00Z\"}");
	rejects(text, "export_fields");
}

static void test_date_times(void **state)
{
	int64_t s1, s2;
	long n1, n2;

	(void)state;
	assert_int_equal(export_body_date_time("1970-01-01T00:00:00Z", &s1, &n1), 0);
	assert_int_equal(s1, 0);
	assert_int_equal(export_body_date_time("2025-01-01T01:00:00+01:00", &s1, &n1), 0);
	assert_int_equal(export_body_date_time("2025-01-01T00:00:00Z", &s2, &n2), 0);
	assert_int_equal(s1, s2);
	assert_int_equal(s2, 1735689600);
	assert_int_equal(export_body_date_time("2024-02-29T23:59:59.123456789123-00:30", &s1, &n1),
			 0);
	assert_int_equal(n1, 123456789);
	assert_int_equal(export_body_date_time("2025-01-01T00:00:00.5Z", &s1, &n1), 0);
	assert_int_equal(n1, 500000000);
	assert_int_equal(export_body_date_time("2025-02-29T00:00:00Z", &s1, &n1), -1);
	assert_int_equal(export_body_date_time("2025-13-01T00:00:00Z", &s1, &n1), -1);
	assert_int_equal(export_body_date_time("2025-01-01T24:00:00Z", &s1, &n1), -1);
	assert_int_equal(export_body_date_time("2025-01-01T00:00:00", &s1, &n1), -1);
	assert_int_equal(export_body_date_time("2025-01-01T00:00:00.Z", &s1, &n1), -1);
	assert_int_equal(export_body_date_time("2025-01-01T00:00:00+0100", &s1, &n1), -1);
	assert_int_equal(export_body_date_time("2025-01-01T00:00:00Zjunk", &s1, &n1), -1);
	assert_int_equal(export_body_date_time("2025-01-01 00:00:00Z", &s1, &n1), -1);
	/* the same instant in two offsets: end is not before start */
	{
		struct export_body body;

		accepts("{\"export_fields\":[\"a\"],\"start_date\":\"2025-01-01T01:00:00+01:00\","
			"\"end_date\":\"2025-01-01T00:00:00Z\"}",
			&body);
		export_body_clear(&body);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minimal_body_goes_upstream_with_the_stored_user_id),
		cmocka_unit_test(test_client_user_id_is_taken_out),
		cmocka_unit_test(test_empty_object_rest),
		cmocka_unit_test(test_not_one_object),
		cmocka_unit_test(test_deep_nesting),
		cmocka_unit_test(test_fields_named_in_the_message),
		cmocka_unit_test(test_export_fields_bound),
		cmocka_unit_test(test_date_times),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
