/*
 * unit_checks.c -- the pure checks of what an upstream sends: framing_check
 * (status, lengths, codings), json_check_parse (RFC 8259, strictly) and
 * redact_secrets (configured secrets out of error bodies).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "conf.h"
#include "framing.h"
#include "json_check.h"
#include "redact.h"

/* Headers from "Name: value" strings, NULL-terminated. */
static void headers_of(struct evkeyvalq *headers, const char *const *lines)
{
	headers->tqh_first = NULL;
	headers->tqh_last = &headers->tqh_first;
	for (; *lines != NULL; lines++) {
		char name[64];
		const char *colon = strchr(*lines, ':');

		assert_non_null(colon);
		snprintf(name, sizeof(name), "%.*s", (int)(colon - *lines), *lines);
		assert_int_equal(evhttp_add_header(headers, name, colon + 2), 0);
	}
}

static int64_t framed(long status, const char *const *lines)
{
	struct evkeyvalq headers;
	int64_t length = -2;
	const char *why = NULL;

	headers_of(&headers, lines);
	if (framing_check(status, &headers, &length, &why) != 0)
		fail_msg("refused: %s", why);
	evhttp_clear_headers(&headers);
	return length;
}

static void refused(long status, const char *const *lines, const char *expected)
{
	struct evkeyvalq headers;
	int64_t length = -2;
	const char *why = NULL;

	headers_of(&headers, lines);
	assert_int_equal(framing_check(status, &headers, &length, &why), -1);
	assert_non_null(why);
	if (strstr(why, expected) == NULL)
		fail_msg("\"%s\" lacks \"%s\"", why, expected);
	evhttp_clear_headers(&headers);
}

static void test_framing_accepted(void **state)
{
	(void)state;
	assert_int_equal(framed(200, (const char *[]){ "Content-Length: 42", NULL }), 42);
	assert_int_equal(framed(206, (const char *[]){ "Content-Length: 0", NULL }), 0);
	assert_int_equal(
		framed(200, (const char *[]){ "Content-Length: 7", "Content-Length: 7", NULL }), 7);
	assert_int_equal(framed(200, (const char *[]){ "Content-Length: 7, 7", NULL }), 7);
	assert_int_equal(framed(200, (const char *[]){ "Transfer-Encoding: chunked", NULL }), -1);
	assert_int_equal(framed(200, (const char *[]){ "Transfer-Encoding: Chunked", NULL }), -1);
	assert_int_equal(framed(500, (const char *[]){ NULL }), -1);
	assert_int_equal(framed(599, (const char *[]){ "Content-Encoding: identity",
						       "Content-Length: 3", NULL }),
			 3);
	assert_int_equal(framed(200, (const char *[]){ "Content-Length: 68719476736", NULL }),
			 FRAMING_MAX_CONTENT_LENGTH);
}

static void test_framing_refused(void **state)
{
	(void)state;
	refused(101, (const char *[]){ NULL }, "status");
	refused(199, (const char *[]){ NULL }, "status");
	refused(600, (const char *[]){ NULL }, "status");
	refused(999, (const char *[]){ NULL }, "status");
	refused(200, (const char *[]){ "Content-Length: 5", "Transfer-Encoding: chunked", NULL },
		"both");
	refused(200, (const char *[]){ "Transfer-Encoding: chunked", "Content-Length: 5", NULL },
		"both");
	refused(200, (const char *[]){ "Content-Length: 3", "Content-Length: 5", NULL },
		"Content-Length");
	refused(200, (const char *[]){ "Content-Length: 3, 5", NULL }, "Content-Length");
	refused(200, (const char *[]){ "Content-Length: 5x", NULL }, "Content-Length");
	refused(200, (const char *[]){ "Content-Length: -1", NULL }, "Content-Length");
	refused(200, (const char *[]){ "Content-Length: +5", NULL }, "Content-Length");
	refused(200, (const char *[]){ "Content-Length: ", NULL }, "Content-Length");
	refused(200, (const char *[]){ "Content-Length: 99999999999999999999999", NULL },
		"Content-Length");
	refused(200, (const char *[]){ "Content-Length: 68719476737", NULL }, "Content-Length");
	refused(200, (const char *[]){ "Transfer-Encoding: gzip, chunked", NULL },
		"Transfer-Encoding");
	refused(200, (const char *[]){ "Transfer-Encoding: chunked, chunked", NULL },
		"Transfer-Encoding");
	refused(200,
		(const char *[]){ "Transfer-Encoding: chunked", "Transfer-Encoding: chunked",
				  NULL },
		"Transfer-Encoding");
	refused(200, (const char *[]){ "Transfer-Encoding: identity", NULL }, "Transfer-Encoding");
	refused(200, (const char *[]){ "Content-Encoding: gzip", NULL }, "Content-Encoding");
	refused(200, (const char *[]){ "Content-Encoding: identity, br", NULL },
		"Content-Encoding");
}

static void test_header_lines(void **state)
{
	struct evkeyvalq headers = { NULL, &headers.tqh_first };
	const char *why = NULL;

	(void)state;
	assert_int_equal(framing_header_line("Content-Length:  42 \r\n", 22, &headers, &why), 0);
	assert_string_equal(evhttp_find_header(&headers, "Content-Length"), "42");
	assert_int_equal(framing_header_line("X-Empty:\r\n", 10, &headers, &why), 0);
	assert_string_equal(evhttp_find_header(&headers, "X-Empty"), "");
	assert_int_equal(framing_header_line(" folded\r\n", 9, &headers, &why), -1);
	assert_non_null(strstr(why, "malformed"));
	assert_int_equal(framing_header_line("No colon\r\n", 10, &headers, &why), -1);
	assert_int_equal(framing_header_line("Na me: x\r\n", 10, &headers, &why), -1);
	assert_int_equal(framing_header_line(": x\r\n", 5, &headers, &why), -1);
	assert_int_equal(framing_header_line("X: a\0b\r\n", 8, &headers, &why), -1);
	assert_int_equal(framing_header_line("X: a\rb\r\n", 8, &headers, &why), -1);
	evhttp_clear_headers(&headers);
}

static void json_ok(const char *text)
{
	const char *why = NULL;
	cJSON *json = json_check_parse(text, strlen(text), &why);

	if (json == NULL)
		fail_msg("refused %s: %s", text, why);
	cJSON_Delete(json);
}

static void json_refused(const char *text, size_t length, const char *expected)
{
	const char *why = NULL;
	cJSON *json = json_check_parse(text, length, &why);

	if (json != NULL)
		fail_msg("accepted %.*s", (int)length, text);
	assert_non_null(why);
	if (strstr(why, expected) == NULL)
		fail_msg("%.*s: \"%s\" lacks \"%s\"", (int)length, text, why, expected);
}

#define JSON_REFUSED(literal, expected) json_refused(literal, sizeof(literal) - 1, expected)

static void test_json_accepted(void **state)
{
	(void)state;
	json_ok("{\"state\":\"COMPLETED\"}");
	json_ok(" \t\r\n{ \"a\" : [ 1, -0.5e+3, 0, 1E2, true, false, null, {} , [] ] } \n");
	json_ok("\"just a string\"");
	json_ok("0");
	json_ok("{\"s\":\"caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80 \\u00e9 \\ud83d\\ude00 \\\" "
		"\\\\ \\/ \\b\\f\\n\\r\\t\"}");
	json_ok("{\"a\":{\"k\":1},\"b\":{\"k\":2}}"); /* the same key in two objects */
	json_ok("{\"k\":1,\"K\":2}");
}

static void test_json_refused(void **state)
{
	char deep[200];

	(void)state;
	JSON_REFUSED("", "missing");
	JSON_REFUSED("   ", "missing");
	JSON_REFUSED("{\"state\":\"COMPLETED\"} {\"state\":\"x\"}", "after");
	JSON_REFUSED("{\"state\":\"COMPLETED\"}x", "after");
	JSON_REFUSED("{\"state\":\"COMP\0LETED\"}", "control");
	JSON_REFUSED("{\"state\":\"a\x01\"}", "control");
	JSON_REFUSED("{\"state\":\"a\nb\"}", "control");
	JSON_REFUSED("{\"state\":\"IN_PROGRESS\",\"state\":\"COMPLETED\"}", "twice");
	JSON_REFUSED("{\"a\":{\"k\":1,\"x\":2,\"k\":3}}", "twice");
	JSON_REFUSED("{\"st\\u0061te\":1,\"state\":2}", "twice"); /* equal once decoded */
	JSON_REFUSED("{\"s\":\"\xc3\x28\"}", "UTF-8");
	JSON_REFUSED("{\"s\":\"\xc0\xaf\"}", "UTF-8");	       /* overlong / */
	JSON_REFUSED("{\"s\":\"\xe0\x80\xaf\"}", "UTF-8");     /* overlong, 3 bytes */
	JSON_REFUSED("{\"s\":\"\xed\xa0\x80\"}", "UTF-8");     /* a surrogate */
	JSON_REFUSED("{\"s\":\"\xf4\x90\x80\x80\"}", "UTF-8"); /* past U+10FFFF */
	JSON_REFUSED("{\"s\":\"\xff\"}", "UTF-8");
	JSON_REFUSED("{\"s\":\"\xe2\x98\"}", "UTF-8"); /* cut short */
	JSON_REFUSED("{\"s\":\"\\u0000\"}", "\\u0000");
	JSON_REFUSED("{\"s\":\"\\ud800\"}", "surrogate");
	JSON_REFUSED("{\"s\":\"\\udc00\"}", "surrogate");
	JSON_REFUSED("{\"s\":\"\\ud800\\u0041\"}", "surrogate");
	JSON_REFUSED("{\"s\":\"\\x41\"}", "escape");
	JSON_REFUSED("{\"s\":\"\\u12G4\"}", "hex");
	JSON_REFUSED("{\"n\":01}", "comma");
	JSON_REFUSED("{\"n\":1.}", "number");
	JSON_REFUSED("{\"n\":.5}", "not JSON");
	JSON_REFUSED("{\"n\":1e}", "number");
	JSON_REFUSED("{\"n\":+1}", "not JSON");
	JSON_REFUSED("{\"n\":0x10}", "comma");
	JSON_REFUSED("{\"n\":NaN}", "not JSON");
	JSON_REFUSED("{\"n\":1234567890123456789012345678901234567890123456789012345678901234}",
		     "too long");
	JSON_REFUSED("{\"a\":1,}", "string");
	JSON_REFUSED("[1,]", "not JSON");
	JSON_REFUSED("{'a':1}", "string");
	JSON_REFUSED("{\"a\" 1}", "colon");
	JSON_REFUSED("{\"a\":tru}", "not JSON");
	JSON_REFUSED("{\"a\":\"open", "not closed");
	JSON_REFUSED("[1 2]", "comma");
	memset(deep, '[', sizeof(deep));
	json_refused(deep, JSON_CHECK_MAX_DEPTH + 1, "deeply");
}

static void test_json_depth_limit_is_exact(void **state)
{
	char text[2 * JSON_CHECK_MAX_DEPTH + 1];
	const char *why = NULL;
	cJSON *json;

	(void)state;
	memset(text, '[', JSON_CHECK_MAX_DEPTH);
	memset(text + JSON_CHECK_MAX_DEPTH, ']', JSON_CHECK_MAX_DEPTH);
	json = json_check_parse(text, 2 * JSON_CHECK_MAX_DEPTH, &why);
	assert_non_null(json);
	cJSON_Delete(json);
}

static void test_json_length_bounds_the_read(void **state)
{
	/* no NUL inside the length: nothing past it is looked at */
	static const char text[] = "{\"a\":1}GARBAGE";
	const char *why = NULL;
	cJSON *json = json_check_parse(text, 7, &why);

	(void)state;
	assert_non_null(json);
	cJSON_Delete(json);
	assert_null(json_check_parse(text, 6, &why));
}

static struct conf_credential credentials[2];
static struct conf_client clients[1];
static struct conf secrets_conf = {
	.credentials = credentials,
	.credential_count = 2,
	.clients = clients,
	.client_count = 1,
};

static int setup_secrets(void **state)
{
	(void)state;
	credentials[0].api_key = "sk-0123456789abcdef";
	credentials[0].user_id = "user-long-enough";
	credentials[1].api_key = "sk-0123456789abcdef-longer";
	credentials[1].user_id = "u7"; /* too short to look for */
	clients[0].token = "client-token-0123456789";
	return 0;
}

static void redacts(const char *in, const char *expected)
{
	char *out = NULL;
	size_t length = 0;
	int result = redact_secrets(in, strlen(in), &secrets_conf, &out, &length);

	if (expected == NULL) {
		assert_int_equal(result, 0);
		assert_null(out);
		return;
	}
	assert_int_equal(result, 1);
	assert_non_null(out);
	assert_string_equal(out, expected);
	assert_int_equal(length, strlen(expected));
	free(out);
}

static void test_redaction(void **state)
{
	(void)state;
	redacts("{\"error\":\"nothing here\"}", NULL);
	redacts("{\"error\":\"u7 is short\"}", NULL);
	redacts("Bearer sk-0123456789abcdef", "Bearer [redacted]");
	redacts("sk-0123456789abcdef-longer!", "[redacted]!"); /* the longer one wins */
	redacts("user-long-enough:client-token-0123456789:sk-0123456789abcdef",
		"[redacted]:[redacted]:[redacted]");
	redacts("sk-0123456789abcdefsk-0123456789abcdef", "[redacted][redacted]");
	redacts("a sk-0123456789abcde b", NULL); /* one byte short of the key */
}

static void test_redaction_of_a_large_body(void **state)
{
	size_t length = 1024 * 1024, out_length = 0;
	char *body = malloc(length), *out = NULL;

	(void)state;
	assert_non_null(body);
	memset(body, 'x', length);
	memcpy(body + length - 19, "sk-0123456789abcdef", 19);
	memcpy(body, "client-token-0123456789", 23);
	assert_int_equal(redact_secrets(body, length, &secrets_conf, &out, &out_length), 1);
	assert_int_equal(out_length, length - 19 - 23 + 2 * strlen(REDACT_MARK));
	assert_memory_equal(out, REDACT_MARK, strlen(REDACT_MARK));
	assert_string_equal(out + out_length - strlen(REDACT_MARK), REDACT_MARK);
	free(out);
	free(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_framing_accepted),
		cmocka_unit_test(test_framing_refused),
		cmocka_unit_test(test_header_lines),
		cmocka_unit_test(test_json_accepted),
		cmocka_unit_test(test_json_refused),
		cmocka_unit_test(test_json_depth_limit_is_exact),
		cmocka_unit_test(test_json_length_bounds_the_read),
		cmocka_unit_test_setup(test_redaction, setup_secrets),
		cmocka_unit_test_setup(test_redaction_of_a_large_body, setup_secrets),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
