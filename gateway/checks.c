/*
 * checks.c -- request checks as decisions: each returns what to refuse and why,
 * so the most security-relevant code of the server has a unit test and a fuzz
 * target of its own.
 */
#include "checks.h"

#include <stddef.h>
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
	if (strcmp(path, "/healthz") == 0)
		return ROUTE_HEALTHZ;
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

int checks_must_close(const struct request_head *head)
{
	const char *why;

	return head->method == EVHTTP_REQ_CONNECT || !origin_form(head->target) ||
	       has_body_framing(head->headers, &why);
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

int checks_request(const struct request_head *head, enum route route, struct refusal *refusal)
{
	const struct evkeyval *header;
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
	/* the method before the body: a POST with a body here is a 405 (design.md) */
	if (head->method != EVHTTP_REQ_GET && head->method != EVHTTP_REQ_HEAD) {
		refuse(refusal, 405, "method_not_allowed", "only GET and HEAD are allowed");
		refusal->allow = "GET, HEAD";
		return 1;
	}
	for (header = head->headers->tqh_first; header != NULL; header = header->next.tqe_next) {
		if (!is_token(header->key))
			return refuse(refusal, 400, "bad_request",
				      "a header name is not a token (RFC 9110)");
	}
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
