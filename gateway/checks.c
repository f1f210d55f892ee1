/*
 * checks.c -- request checks as decisions: each returns what to refuse and why,
 * so the most security-relevant code of the server has a unit test and a fuzz
 * target of its own.
 */
#include "checks.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <event2/keyvalq_struct.h>

static int origin_form(const char *target)
{
	return target != NULL && target[0] == '/' && target[1] != '/';
}

enum route checks_route(const struct request_head *head)
{
	const char *path = head->path;

	if (!origin_form(head->target) || path == NULL)
		return ROUTE_OTHER;
	if (strcmp(path, "/export_status") == 0)
		return ROUTE_EXPORT_STATUS;
	if (strcmp(path, "/export_data") == 0)
		return ROUTE_EXPORT_DATA;
	if (strcmp(path, "/healthz") == 0)
		return ROUTE_HEALTHZ;
	if (strcmp(path, "/readyz") == 0)
		return ROUTE_READYZ;
	if (strcmp(path, "/metrics") == 0)
		return ROUTE_METRICS;
	return ROUTE_OTHER;
}

/* 1 when headers frame a body: Transfer-Encoding, or a non-zero or repeated length. */
static int has_body_framing(const struct evkeyvalq *headers, const char **why)
{
	const struct evkeyval *header;
	int lengths = 0;

	for (header = headers->tqh_first; header != NULL; header = header->next.tqe_next) {
		if (strcasecmp(header->key, "Transfer-Encoding") == 0) {
			*why = "Transfer-Encoding is not accepted: requests have no body";
			return 1;
		}
		if (strcasecmp(header->key, "Content-Length") == 0 &&
		    (++lengths > 1 || strcmp(header->value, "0") != 0)) {
			*why = "a request body is not allowed";
			return 1;
		}
	}
	return 0;
}

/*
 * A body framed by one Content-Length (*length), as POST /export_data takes:
 * 1, or 0 when there is none at all; -1 for Transfer-Encoding, -2 for a
 * repeated or malformed length.
 */
static int content_length(const struct evkeyvalq *headers, uint64_t *length)
{
	const struct evkeyval *header;
	int found = 0;

	*length = 0;
	for (header = headers->tqh_first; header != NULL; header = header->next.tqe_next) {
		if (strcasecmp(header->key, "Transfer-Encoding") == 0)
			return -1;
		if (strcasecmp(header->key, "Content-Length") == 0) {
			const char *c = header->value;

			if (found++ || *c == '\0')
				return -2;
			for (; *c != '\0'; c++) {
				if (*c < '0' || *c > '9' || *length > UINT64_MAX / 10 - 1)
					return -2;
				*length = *length * 10 + (uint64_t)(*c - '0');
			}
		}
	}
	return found;
}

/* POST /export_data with one Content-Length within the limit: evhttp read it all. */
static int framed_export(const struct request_head *head)
{
	uint64_t length;

	return head->method == EVHTTP_REQ_POST && checks_route(head) == ROUTE_EXPORT_DATA &&
	       content_length(head->headers, &length) >= 0 && length <= CHECKS_MAX_BODY;
}

int checks_must_close(const struct request_head *head)
{
	const char *why;

	return head->method == EVHTTP_REQ_CONNECT || !origin_form(head->target) ||
	       (!framed_export(head) && has_body_framing(head->headers, &why));
}

/* RFC 9110 token: what a header name may be ("Name : v" and "Na me" are not). */
static int is_token(const char *text)
{
	static const char extra[] = "!#$%&'*+-.^_`|~";

	if (*text == '\0')
		return 0;
	for (; *text != '\0'; text++) {
		if (!((*text >= '0' && *text <= '9') || (*text >= 'a' && *text <= 'z') ||
		      (*text >= 'A' && *text <= 'Z') || strchr(extra, *text) != NULL))
			return 0;
	}
	return 1;
}

static int refuse(struct refusal *refusal, int status, const char *code, const char *message)
{
	refusal->status = status;
	refusal->code = code;
	refusal->message = message;
	refusal->allow = NULL;
	return 1;
}

/* Request line and header sizes, measured as they were on the wire. */
static int check_sizes(const struct request_head *head, struct refusal *refusal)
{
	const struct evkeyval *header;
	size_t header_bytes = 0;

	/* "METHOD SP target SP HTTP/1.1 CRLF": at most 7 + 1 + 1 + 8 + 2 around the target */
	if (head->target != NULL && strlen(head->target) + 19 > CHECKS_MAX_REQUEST_LINE)
		return refuse(refusal, 414, "uri_too_long", "the request line is over 8 KiB");
	for (header = head->headers->tqh_first; header != NULL; header = header->next.tqe_next)
		header_bytes += strlen(header->key) + strlen(header->value) + 4;
	if (header_bytes > CHECKS_MAX_HEADERS)
		return refuse(refusal, 431, "headers_too_large",
			      "the request headers are over 16 KiB");
	return 0;
}

static int check_header_names(const struct request_head *head, struct refusal *refusal)
{
	const struct evkeyval *header;

	for (header = head->headers->tqh_first; header != NULL; header = header->next.tqe_next) {
		if (!is_token(header->key))
			return refuse(refusal, 400, "bad_request",
				      "a header name is not a token (RFC 9110)");
	}
	return 0;
}

/* application/json, any case, with or without parameters (charset=utf-8). */
static int is_json_media_type(const char *value)
{
	static const char json[] = "application/json";
	size_t n = sizeof(json) - 1;

	if (value == NULL)
		return 0;
	while (*value == ' ' || *value == '\t')
		value++;
	if (strncasecmp(value, json, n) != 0)
		return 0;
	value += n;
	while (*value == ' ' || *value == '\t')
		value++;
	return *value == '\0' || *value == ';';
}

/* POST /export_data: the method, then the framing and type of its body. */
static int check_export(const struct request_head *head, struct refusal *refusal)
{
	uint64_t length;

	if (head->method != EVHTTP_REQ_POST) {
		refuse(refusal, 405, "method_not_allowed", "only POST is allowed");
		refusal->allow = "POST";
		return 1;
	}
	if (check_header_names(head, refusal))
		return 1;
	switch (content_length(head->headers, &length)) {
	case -1:
		return refuse(refusal, 411, "length_required",
			      "a chunked body is not accepted: send it with Content-Length");
	case -2:
		return refuse(refusal, 400, "bad_request",
			      "Content-Length is repeated or not a number");
	case 0:
		return refuse(refusal, 411, "length_required", "Content-Length is required");
	default:
		break;
	}
	if (length > CHECKS_MAX_BODY)
		return refuse(refusal, 413, "body_too_large", "the body is over 64 KiB");
	if (!is_json_media_type(evhttp_find_header(head->headers, "Content-Type")))
		return refuse(refusal, 415, "unsupported_media_type",
			      "the body must be application/json");
	return 0;
}

int checks_request(const struct request_head *head, enum route route, struct refusal *refusal)
{
	const char *why = NULL;

	if (check_sizes(head, refusal))
		return 1;
	if (!origin_form(head->target))
		return refuse(refusal, 400, "bad_request",
			      "the request target must be a path starting with a single / "
			      "(origin-form)");
	if (route == ROUTE_OTHER) {
		if (head->path == NULL || head->path[0] == '\0')
			return refuse(refusal, 400, "bad_request",
				      "the request target has no path");
		return refuse(refusal, 404, "not_found", "no such endpoint; try /export_status");
	}
	if (route == ROUTE_EXPORT_DATA)
		return check_export(head, refusal);
	/* the method before the body: a POST with a body here is a 405 (design.md) */
	if (head->method != EVHTTP_REQ_GET && head->method != EVHTTP_REQ_HEAD) {
		refuse(refusal, 405, "method_not_allowed", "only GET and HEAD are allowed");
		refusal->allow = "GET, HEAD";
		return 1;
	}
	if (check_header_names(head, refusal))
		return 1;
	if (has_body_framing(head->headers, &why))
		return refuse(refusal, 400, "bad_request", why);
	return 0;
}

int checks_forwarded_header(const struct evkeyvalq *headers, const char *name, const char **value)
{
	*value = evhttp_find_header(headers, name);
	if (*value == NULL)
		return 0;
	if (strlen(*value) > CHECKS_MAX_FORWARDED_HEADER)
		return -1;
	for (const char *c = *value; *c != '\0'; c++) {
		if (*c < 0x20 || *c > 0x7e)
			return -1;
	}
	return 0;
}
