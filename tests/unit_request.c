/*
 * unit_request.c -- checks.c, the request checks before any handler: routing,
 * what makes a connection close, the refusals and their order, and the headers
 * forwarded upstream.
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

#include "checks.h"

struct request {
	struct evkeyvalq headers;
	struct request_head head;
};

/* A request for method, target, path (as evhttp would parse it) and headers. */
static void request_of(struct request *r, enum evhttp_cmd_type method, const char *target,
		       const char *path, const char *const *lines)
{
	r->headers.tqh_first = NULL;
	r->headers.tqh_last = &r->headers.tqh_first;
	for (; lines != NULL && *lines != NULL; lines++) {
		char name[64];
		const char *colon = strchr(*lines, ':');

		assert_non_null(colon);
		snprintf(name, sizeof(name), "%.*s", (int)(colon - *lines), *lines);
		assert_int_equal(evhttp_add_header(&r->headers, name, colon + 2), 0);
	}
	r->head.method = method;
	r->head.target = target;
	r->head.path = path;
	r->head.headers = &r->headers;
}

/* The status checks_request refuses it with, or 0. */
static int refused_with(struct request *r, const char **code)
{
	struct refusal refusal = { 0 };
	int status = 0;

	if (checks_request(&r->head, checks_route(&r->head), &refusal)) {
		status = refusal.status;
		assert_non_null(refusal.code);
		assert_non_null(refusal.message);
		assert_true(status == 405 ? refusal.allow != NULL : refusal.allow == NULL);
		if (code != NULL)
			*code = refusal.code;
	}
	evhttp_clear_headers(&r->headers);
	return status;
}

static int check(enum evhttp_cmd_type method, const char *target, const char *path,
		 const char *const *lines)
{
	struct request r;

	request_of(&r, method, target, path, lines);
	return refused_with(&r, NULL);
}

static int closes(enum evhttp_cmd_type method, const char *target, const char *const *lines)
{
	struct request r;
	int result;

	request_of(&r, method, target, target, lines);
	result = checks_must_close(&r.head);
	evhttp_clear_headers(&r.headers);
	return result;
}

static void test_routes(void **state)
{
	struct request r;

	(void)state;
	request_of(&r, EVHTTP_REQ_GET, "/export_status?data_export_id=a", "/export_status", NULL);
	assert_int_equal(checks_route(&r.head), ROUTE_EXPORT_STATUS);
	request_of(&r, EVHTTP_REQ_POST, "/export_data", "/export_data", NULL);
	assert_int_equal(checks_route(&r.head), ROUTE_EXPORT_DATA);
	request_of(&r, EVHTTP_REQ_GET, "/healthz", "/healthz", NULL);
	assert_int_equal(checks_route(&r.head), ROUTE_HEALTHZ);
	request_of(&r, EVHTTP_REQ_GET, "/metrics", "/metrics", NULL);
	assert_int_equal(checks_route(&r.head), ROUTE_METRICS);
	/* evhttp parses "//x/metrics" as authority x and path /metrics */
	request_of(&r, EVHTTP_REQ_GET, "//x/metrics", "/metrics", NULL);
	assert_int_equal(checks_route(&r.head), ROUTE_OTHER);
	request_of(&r, EVHTTP_REQ_GET, "http://evil/metrics", "/metrics", NULL);
	assert_int_equal(checks_route(&r.head), ROUTE_OTHER);
	request_of(&r, EVHTTP_REQ_GET, "/metrics/", "/metrics/", NULL);
	assert_int_equal(checks_route(&r.head), ROUTE_OTHER);
	request_of(&r, EVHTTP_REQ_GET, NULL, NULL, NULL);
	assert_int_equal(checks_route(&r.head), ROUTE_OTHER);
}

static void test_passes(void **state)
{
	(void)state;
	assert_int_equal(check(EVHTTP_REQ_GET, "/export_status?data_export_id=a", "/export_status",
			       (const char *[]){ "Host: x", "Content-Length: 0", NULL }),
			 0);
	assert_int_equal(check(EVHTTP_REQ_HEAD, "/healthz", "/healthz", NULL), 0);
	assert_int_equal(check(EVHTTP_REQ_GET, "/metrics", "/metrics",
			       (const char *[]){ "X-A!#$%&'*+-.^_`|~0: y", NULL }),
			 0);
}

static void test_refusals_and_their_order(void **state)
{
	char target[9000];
	char header[17000];
	const char *code = NULL;
	struct request r;

	(void)state;
	memset(target, 'i', sizeof(target) - 1);
	target[0] = '/';
	target[sizeof(target) - 1] = '\0';
	memcpy(header, "X: ", 3);
	memset(header + 3, 'h', sizeof(header) - 4);
	header[sizeof(header) - 1] = '\0';
	/* size first, whatever else is wrong */
	assert_int_equal(check(EVHTTP_REQ_POST, target, target,
			       (const char *[]){ "Transfer-Encoding: chunked", NULL }),
			 414);
	assert_int_equal(check(EVHTTP_REQ_POST, "/nowhere", "/nowhere",
			       (const char *[]){ header, "Transfer-Encoding: chunked", NULL }),
			 431);
	/* then the target's form */
	request_of(&r, EVHTTP_REQ_GET, "//x/metrics", "/metrics", NULL);
	assert_int_equal(refused_with(&r, &code), 400);
	assert_string_equal(code, "bad_request");
	assert_int_equal(check(EVHTTP_REQ_GET, "http://evil/export_status", "/export_status", NULL),
			 400);
	assert_int_equal(check(EVHTTP_REQ_CONNECT, "example.com:443", NULL, NULL), 400);
	/* then the route, then the method: before the body */
	request_of(&r, EVHTTP_REQ_GET, "/nowhere", "/nowhere",
		   (const char *[]){ "Transfer-Encoding: chunked", NULL });
	assert_int_equal(refused_with(&r, &code), 404);
	assert_string_equal(code, "not_found");
	assert_int_equal(check(EVHTTP_REQ_GET, "/?", "", NULL), 400);
	request_of(&r, EVHTTP_REQ_POST, "/export_status", "/export_status",
		   (const char *[]){ "Content-Length: 10", NULL });
	assert_int_equal(refused_with(&r, &code), 405);
	assert_string_equal(code, "method_not_allowed");
	for (enum evhttp_cmd_type method = EVHTTP_REQ_POST; method <= EVHTTP_REQ_PATCH;
	     method <<= 1) {
		if (method != EVHTTP_REQ_HEAD)
			assert_int_equal(check(method, "/healthz", "/healthz", NULL), 405);
	}
	/* then header names and body framing */
	assert_int_equal(
		check(EVHTTP_REQ_GET, "/healthz", "/healthz", (const char *[]){ "Na me: x", NULL }),
		400);
	assert_int_equal(check(EVHTTP_REQ_GET, "/healthz", "/healthz",
			       (const char *[]){ "Transfer-Encoding: chunked", NULL }),
			 400);
	assert_int_equal(check(EVHTTP_REQ_GET, "/healthz", "/healthz",
			       (const char *[]){ "Content-Length: 5", NULL }),
			 400);
	assert_int_equal(check(EVHTTP_REQ_GET, "/healthz", "/healthz",
			       (const char *[]){ "Content-Length: 0", "Content-Length: 0", NULL }),
			 400);
}

static void test_what_closes(void **state)
{
	(void)state;
	assert_false(closes(EVHTTP_REQ_GET, "/healthz", NULL));
	assert_false(
		closes(EVHTTP_REQ_GET, "/healthz", (const char *[]){ "Content-Length: 0", NULL }));
	assert_true(
		closes(EVHTTP_REQ_HEAD, "/healthz", (const char *[]){ "Content-Length: 7", NULL }));
	assert_true(closes(EVHTTP_REQ_GET, "/healthz",
			   (const char *[]){ "Content-Length: 0", "Content-Length: 0", NULL }));
	assert_true(closes(EVHTTP_REQ_GET, "/healthz",
			   (const char *[]){ "transfer-encoding: identity", NULL }));
	assert_true(closes(EVHTTP_REQ_CONNECT, "/healthz", NULL));
	assert_true(closes(EVHTTP_REQ_GET, "//x/metrics", NULL));
	assert_true(closes(EVHTTP_REQ_GET, "http://evil/", NULL));
	assert_true(closes(EVHTTP_REQ_GET, NULL, NULL));
	/* POST /export_data's one length within the limit was read whole by evhttp */
	assert_false(closes(EVHTTP_REQ_POST, "/export_data",
			    (const char *[]){ "Content-Length: 65536", NULL }));
	assert_true(closes(EVHTTP_REQ_POST, "/export_data",
			   (const char *[]){ "Content-Length: 65537", NULL }));
	assert_true(closes(EVHTTP_REQ_POST, "/export_data",
			   (const char *[]){ "Content-Length: 5", "Content-Length: 5", NULL }));
	assert_true(closes(EVHTTP_REQ_POST, "/export_data",
			   (const char *[]){ "Transfer-Encoding: chunked", NULL }));
	assert_true(closes(EVHTTP_REQ_GET, "/export_data",
			   (const char *[]){ "Content-Length: 5", NULL }));
}

/* The status and code POST /export_data with these headers is refused with. */
static int export_refusal(enum evhttp_cmd_type method, const char *const *lines, const char **code)
{
	struct request r;

	request_of(&r, method, "/export_data", "/export_data", lines);
	return refused_with(&r, code);
}

static void test_export_data_framing(void **state)
{
	const char *code = NULL;
	struct request r;
	struct refusal refusal = { 0 };

	(void)state;
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Length: 10",
							  "Content-Type: application/json", NULL },
					NULL),
			 0);
	assert_int_equal(
		export_refusal(EVHTTP_REQ_POST,
			       (const char *[]){ "Content-Length: 65536",
						 "Content-Type: Application/JSON ; charset=utf-8",
						 NULL },
			       NULL),
		0);
	request_of(&r, EVHTTP_REQ_GET, "/export_data", "/export_data", NULL);
	assert_int_equal(checks_request(&r.head, ROUTE_EXPORT_DATA, &refusal), 1);
	assert_int_equal(refusal.status, 405);
	assert_string_equal(refusal.allow, "POST");
	evhttp_clear_headers(&r.headers);
	assert_int_equal(export_refusal(EVHTTP_REQ_PUT,
					(const char *[]){ "Content-Length: 10",
							  "Content-Type: application/json", NULL },
					&code),
			 405);
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Transfer-Encoding: chunked",
							  "Content-Type: application/json", NULL },
					&code),
			 411);
	assert_string_equal(code, "length_required");
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Type: application/json", NULL },
					&code),
			 411);
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Length: 65537",
							  "Content-Type: application/json", NULL },
					&code),
			 413);
	assert_string_equal(code, "body_too_large");
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Length: 99999999999999999999999",
							  "Content-Type: application/json", NULL },
					&code),
			 400);
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Length: 1x",
							  "Content-Type: application/json", NULL },
					&code),
			 400);
	assert_int_equal(
		export_refusal(EVHTTP_REQ_POST,
			       (const char *[]){ "Content-Length: 10", "Content-Length: 10",
						 "Content-Type: application/json", NULL },
			       &code),
		400);
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Length: 10",
							  "Content-Type: text/json", NULL },
					&code),
			 415);
	assert_string_equal(code, "unsupported_media_type");
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Length: 10",
							  "Content-Type: application/jsonx", NULL },
					&code),
			 415);
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Length: 10", NULL }, &code),
			 415);
	assert_int_equal(export_refusal(EVHTTP_REQ_POST,
					(const char *[]){ "Content-Length: 10", "Bad Name: x",
							  "Content-Type: application/json", NULL },
					&code),
			 400);
}

static void test_forwarded_headers(void **state)
{
	struct request r;
	const char *value = "unset";
	char long_range[300];

	(void)state;
	memset(long_range, '1', sizeof(long_range) - 1);
	long_range[sizeof(long_range) - 1] = '\0';
	request_of(&r, EVHTTP_REQ_GET, "/", "/",
		   (const char *[]){ "Range: bytes=0-9", "If-Range: \"e\"\x01", NULL });
	assert_int_equal(checks_forwarded_header(&r.headers, "Range", &value), 0);
	assert_string_equal(value, "bytes=0-9");
	assert_int_equal(checks_forwarded_header(&r.headers, "If-Range", &value), -1);
	assert_int_equal(checks_forwarded_header(&r.headers, "X-None", &value), 0);
	assert_null(value);
	evhttp_clear_headers(&r.headers);
	request_of(&r, EVHTTP_REQ_GET, "/", "/", NULL);
	assert_int_equal(evhttp_add_header(&r.headers, "Range", long_range), 0);
	assert_int_equal(checks_forwarded_header(&r.headers, "Range", &value), -1);
	evhttp_clear_headers(&r.headers);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_routes),
		cmocka_unit_test(test_passes),
		cmocka_unit_test(test_refusals_and_their_order),
		cmocka_unit_test(test_what_closes),
		cmocka_unit_test(test_export_data_framing),
		cmocka_unit_test(test_forwarded_headers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
