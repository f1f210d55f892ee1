/*
 * unit_answer.c -- answer.c, the mapping from an upstream result to the client's
 * answer: statuses, gateway errors and their JSON, strict state parsing, TTLs
 * per state, stale-if-error eligibility and redaction of error bodies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <event2/buffer.h>

#include "answer.h"
#include "conf.h"
#include "upstream.h"

static const char *const in_progress = "{\"data_export_id\":\"a\",\"state\":\"IN_PROGRESS\"}";

static struct conf_credential credential = {
	.name = "main",
	.user_id = "user-0123456789",
	.api_key = "sk-0123456789abcdef",
};

static struct conf conf = {
	.cache_pending_ttl_ms = 2000,
	.cache_final_ttl_ms = 60000,
	.cache_error_ttl_ms = 1000,
	.credentials = &credential,
	.credential_count = 1,
};

/* The answer to a complete response of status with body (content type JSON). */
static void answered(struct answer *answer, long status, const char *body)
{
	struct upstream_result result = { .outcome = UPSTREAM_OK,
					  .status = status,
					  .content_type = "application/json" };

	result.body = evbuffer_new();
	assert_non_null(result.body);
	assert_int_equal(evbuffer_add(result.body, body, strlen(body)), 0);
	answer_from_result(answer, &conf, "a", &result);
	evbuffer_free(result.body);
}

static void failed(struct answer *answer, enum upstream_outcome outcome, const char *error)
{
	struct upstream_result result = { .outcome = outcome, .error = error };

	result.body = evbuffer_new();
	assert_non_null(result.body);
	answer_from_result(answer, &conf, "a", &result);
	evbuffer_free(result.body);
}

/* answer is the gateway error code with a JSON body that says so. */
static void is_error(const struct answer *answer, int status, const char *code)
{
	cJSON *json;

	assert_int_equal(answer->status, status);
	assert_string_equal(answer->error, code);
	assert_string_equal(answer->content_type, "application/json");
	assert_int_equal(answer->ttl_ms, -1);
	assert_int_equal(answer->body_length, strlen(answer->body));
	json = cJSON_Parse(answer->body);
	assert_non_null(json);
	assert_string_equal(cJSON_GetObjectItem(json, "error")->valuestring, code);
	assert_true(strlen(cJSON_GetObjectItem(json, "message")->valuestring) > 0);
	cJSON_Delete(json);
}

static void test_states_and_ttls(void **state)
{
	struct answer answer;

	(void)state;
	answered(&answer, 200, in_progress);
	assert_int_equal(answer.status, 200);
	assert_null(answer.error);
	assert_int_equal(answer.state, ANSWER_NON_FINAL);
	assert_int_equal(answer.ttl_ms, 2000);
	assert_string_equal(answer.body, in_progress);
	assert_int_equal(answer.stale_ok, 0);
	answer_clear(&answer);

	answered(&answer, 200, "{\"data_export_id\":\"a\",\"state\":\"COMPLETED\"}");
	assert_int_equal(answer.ttl_ms, 60000);
	assert_int_equal(answer.state, ANSWER_COMPLETED);
	answer_clear(&answer);

	answered(&answer, 200, "{\"state\":\"FAILED\"}"); /* no data_export_id: fine */
	assert_int_equal(answer.state, ANSWER_FAILED);
	answer_clear(&answer);

	answered(&answer, 201, "{\"state\":\"REQUESTED\"}"); /* relayed, not cached */
	assert_int_equal(answer.status, 201);
	assert_int_equal(answer.ttl_ms, -1);
	assert_null(answer.error);
	answer_clear(&answer);
}

static void test_error_statuses(void **state)
{
	struct answer answer;

	(void)state;
	answered(&answer, 404, "{\"error\":\"not found\"}");
	assert_int_equal(answer.status, 404);
	assert_null(answer.error);
	assert_int_equal(answer.state, ANSWER_NO_STATE);
	assert_int_equal(answer.ttl_ms, 1000);
	assert_int_equal(answer.stale_ok, 0);
	answer_clear(&answer);

	for (long status = 400; status < 600; status += 7) {
		answered(&answer, status, "<html>x</html>");
		if (status == 401) {
			is_error(&answer, 502, "upstream_auth");
		} else {
			assert_int_equal(answer.status, status);
			assert_string_equal(answer.body, "<html>x</html>");
			assert_int_equal(answer.stale_ok, status >= 500);
			assert_int_equal(answer.ttl_ms, status == 404 ? 1000 : -1);
		}
		answer_clear(&answer);
	}
	answered(&answer, 401, "{}");
	is_error(&answer, 502, "upstream_auth");
	answer_clear(&answer);
	for (long status = 300; status < 400; status += 1) {
		answered(&answer, status, "");
		is_error(&answer, 502, "upstream_redirect");
		answer_clear(&answer);
	}
	answered(&answer, 101, "");
	is_error(&answer, 502, "upstream_invalid");
	answer_clear(&answer);
	answered(&answer, 600, in_progress);
	is_error(&answer, 502, "upstream_invalid");
	answer_clear(&answer);
}

static void test_invalid_bodies(void **state)
{
	static const char *const bodies[] = {
		"",
		"<html>oops</html>",
		"{\"state\":5}",
		"[\"state\"]",
		"{\"status\":\"x\"}",
		"{\"state\":\"COMPLETED\"} x",
		"{\"state\":\"A\",\"state\":\"COMPLETED\"}",
		"{\"data_export_id\":\"b\",\"state\":\"COMPLETED\"}",
		"{\"data_export_id\":7,\"state\":\"COMPLETED\"}",
	};
	struct answer answer;

	(void)state;
	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
		answered(&answer, 200, bodies[i]);
		is_error(&answer, 502, "upstream_invalid");
		assert_non_null(answer.why);
		answer_clear(&answer);
	}
}

static void test_failures(void **state)
{
	static const struct {
		enum upstream_outcome outcome;
		int status;
		const char *code;
		int stale_ok;
	} cases[] = {
		{ UPSTREAM_TIMEOUT, 504, "upstream_timeout", 1 },
		{ UPSTREAM_CONNECT_FAILED, 502, "upstream_unreachable", 1 },
		{ UPSTREAM_FAILED, 502, "upstream_error", 1 },
		{ UPSTREAM_TOO_LARGE, 502, "upstream_too_large", 0 },
		{ UPSTREAM_INVALID, 502, "upstream_invalid", 0 },
	};
	struct answer answer;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		failed(&answer, cases[i].outcome, "the reason");
		is_error(&answer, cases[i].status, cases[i].code);
		assert_int_equal(answer.stale_ok, cases[i].stale_ok);
		assert_string_equal(answer.why, "the reason");
		answer_clear(&answer);
	}
}

static void test_error_bodies_redacted(void **state)
{
	struct answer answer;

	(void)state;
	answered(&answer, 400, "{\"echo\":\"Bearer sk-0123456789abcdef user-0123456789\"}");
	assert_int_equal(answer.status, 400);
	assert_string_equal(answer.body, "{\"echo\":\"Bearer [redacted] [redacted]\"}");
	assert_int_equal(answer.redacted, 1);
	answer_clear(&answer);
	/* a state is not an error body: left as it is */
	answered(&answer, 200, "{\"state\":\"IN_PROGRESS\",\"x\":\"user-0123456789\"}");
	assert_int_equal(answer.redacted, 0);
	assert_non_null(strstr(answer.body, "user-0123456789"));
	answer_clear(&answer);
}

static void test_parse_state(void **state)
{
	char text[16];
	const char *why;

	(void)state;
	assert_string_equal(answer_parse_state(in_progress, strlen(in_progress), NULL, text,
					       sizeof(text), &why),
			    "IN_PROGRESS");
	assert_string_equal(
		answer_parse_state(in_progress, strlen(in_progress), "a", text, sizeof(text), &why),
		"IN_PROGRESS");
	assert_null(answer_parse_state(in_progress, strlen(in_progress), "b", text, sizeof(text),
				       &why));
	assert_non_null(strstr(why, "another export"));
	assert_null(answer_parse_state("{\"state\":\"IN_PROG", 17, NULL, text, sizeof(text), &why));
	assert_null(answer_parse_state("", 0, NULL, text, sizeof(text), &why));
	/* an escaped NUL would cut "COMPLETED\u0000x" to a final state: refused */
	assert_null(answer_parse_state("{\"state\":\"COMPLETED\\u0000x\"}", 27, NULL, text,
				       sizeof(text), &why));
	/* length bounds the parse: no reading past it */
	assert_null(answer_parse_state(in_progress, 10, NULL, text, sizeof(text), &why));
}

static void test_ttl_per_state(void **state)
{
	struct conf zero = conf;

	(void)state;
	assert_int_equal(answer_ttl(&conf, 200, "REQUESTED"), 2000);
	assert_int_equal(answer_ttl(&conf, 200, "IN_PROGRESS"), 2000);
	assert_int_equal(answer_ttl(&conf, 200, "PENDING"), 2000);
	assert_int_equal(answer_ttl(&conf, 200, "SOMETHING_NEW"), 2000);
	assert_int_equal(answer_ttl(&conf, 200, "COMPLETED"), 60000);
	assert_int_equal(answer_ttl(&conf, 200, "FAILED"), 60000);
	assert_int_equal(answer_ttl(&conf, 404, NULL), 1000);
	assert_int_equal(answer_ttl(&conf, 200, NULL), -1);
	for (int status = 400; status < 600; status += 1) {
		if (status != 404)
			assert_int_equal(answer_ttl(&conf, status, NULL), -1);
	}
	zero.cache_pending_ttl_ms = 0; /* 0: do not cache */
	assert_int_equal(answer_ttl(&zero, 200, "REQUESTED"), -1);
}

static void test_error_body(void **state)
{
	size_t length = 0;
	char *body = answer_error_body("bad_request", "a \"quoted\" message\n", &length);

	(void)state;
	assert_non_null(body);
	assert_string_equal(
		body, "{\"error\":\"bad_request\",\"message\":\"a \\\"quoted\\\" message\\n\"}");
	assert_int_equal(length, strlen(body));
	free(body);
}

static void test_etags(void **state)
{
	char a[ANSWER_ETAG_SIZE], b[ANSWER_ETAG_SIZE], c[ANSWER_ETAG_SIZE];
	char list[64], weak[32];

	(void)state;
	answer_etag("{\"state\":\"IN_PROGRESS\"}", 24, a);
	answer_etag("{\"state\":\"IN_PROGRESS\"}", 24, b);
	answer_etag("{\"state\":\"COMPLETED\"}", 22, c);
	assert_int_equal(strlen(a), ANSWER_ETAG_SIZE - 1);
	assert_int_equal(a[0], '"');
	assert_int_equal(a[17], '"');
	assert_string_equal(a, b);
	assert_string_not_equal(a, c);
	assert_true(answer_etag_matches(a, a));
	assert_false(answer_etag_matches(c, a));
	assert_true(answer_etag_matches("*", a));
	assert_true(answer_etag_matches(" * ", a));
	snprintf(weak, sizeof(weak), "W/%s", a);
	assert_true(answer_etag_matches(weak, a));
	snprintf(list, sizeof(list), "\"x\", W/\"y\",%s", a);
	assert_true(answer_etag_matches(list, a));
	snprintf(list, sizeof(list), "%s, %s", c, c);
	assert_false(answer_etag_matches(list, a));
	assert_false(answer_etag_matches("", a));
	assert_false(answer_etag_matches("\"unterminated", a));
	assert_false(answer_etag_matches("junk", a));
	assert_false(answer_etag_matches("*, \"x\"", a)); /* "*" stands alone */
	/* the tag without its quotes is not the tag */
	snprintf(list, sizeof(list), "%.16s", a + 1);
	assert_false(answer_etag_matches(list, a));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_states_and_ttls),
		cmocka_unit_test(test_error_statuses),
		cmocka_unit_test(test_invalid_bodies),
		cmocka_unit_test(test_failures),
		cmocka_unit_test(test_error_bodies_redacted),
		cmocka_unit_test(test_parse_state),
		cmocka_unit_test(test_ttl_per_state),
		cmocka_unit_test(test_error_body),
		cmocka_unit_test(test_etags),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
