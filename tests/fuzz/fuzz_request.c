/*
 * fuzz_request.c -- libFuzzer target for the request checks (checks.c): the
 * input's first byte picks the method, then a target line, then header lines
 * "Name: value" split at '\n'. Whatever the bytes: a refusal is a 4xx with a
 * code and a message, a 405 says Allow, a request with body framing is both
 * refused and marked to close, and a passing request is routed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "checks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const enum evhttp_cmd_type methods[] = {
	EVHTTP_REQ_GET,	  EVHTTP_REQ_HEAD,    EVHTTP_REQ_POST,
	EVHTTP_REQ_PUT,	  EVHTTP_REQ_DELETE,  EVHTTP_REQ_OPTIONS,
	EVHTTP_REQ_TRACE, EVHTTP_REQ_CONNECT, EVHTTP_REQ_PATCH,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct evkeyvalq headers = { NULL, &headers.tqh_first };
	struct request_head head = { 0 };
	struct refusal refusal = { 0 };
	char *text, *line, *save = NULL, *query;
	int framed = 0, refused, closes;
	enum route route;

	if (size < 1)
		return 0;
	head.method = methods[data[0] % (sizeof(methods) / sizeof(methods[0]))];
	text = strndup((const char *)data + 1, size - 1);
	if (text == NULL)
		abort();
	head.target = strtok_r(text, "\n", &save);
	if (head.target != NULL && (head.path = strdup(head.target)) != NULL &&
	    (query = strchr((char *)head.path, '?')) != NULL)
		*query = '\0';
	for (line = strtok_r(NULL, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':');

		if (colon == NULL)
			continue;
		*colon = '\0';
		if (evhttp_add_header(&headers, line, colon + 1) != 0)
			continue;
		framed |= strcasecmp(line, "Transfer-Encoding") == 0;
	}
	head.headers = &headers;
	route = checks_route(&head);
	closes = checks_must_close(&head);
	refused = checks_request(&head, route, &refusal);
	if (refused &&
	    (refusal.status < 400 || refusal.status > 499 || refusal.code == NULL ||
	     refusal.message == NULL || (refusal.status == 405) != (refusal.allow != NULL)))
		abort();
	if (framed && (!closes || !refused))
		abort();
	if (!refused && (route == ROUTE_OTHER || closes))
		abort();
	evhttp_clear_headers(&headers);
	free((char *)head.path);
	free(text);
	return 0;
}
