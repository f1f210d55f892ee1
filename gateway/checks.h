/*
 * checks.h -- the request checks that come before any handler: routing, sizes,
 * the target's form, the method per route, body framing and header names, and
 * the headers forwarded upstream. Pure functions on a parsed request head: they
 * decide and describe a refusal; answering it is the server's. Who may call
 * (addresses, tokens, rates) is auth.h's.
 */
#ifndef GATEWAY_CHECKS_H
#define GATEWAY_CHECKS_H

#include "attributes.h"

#include <event2/http.h>

#include "route.h"

struct evkeyvalq;

#define CHECKS_MAX_REQUEST_LINE	    (8 * 1024)
#define CHECKS_MAX_HEADERS	    (16 * 1024)
#define CHECKS_MAX_FORWARDED_HEADER 256
#define CHECKS_MAX_BODY		    (64 * 1024) /* POST /export_data's */

/* What evhttp parsed of a request; nothing is copied or kept. */
struct request_head {
	enum evhttp_cmd_type method;
	const char *target;		 /* the request target as sent; may be NULL */
	const char *path;		 /* evhttp's path of it, or NULL */
	const struct evkeyvalq *headers; /* the request's headers */
};

struct refusal {
	int status;
	const char *code;    /* the JSON error code */
	const char *message; /* static text for the client */
	const char *allow;   /* the Allow header of a 405, else NULL */
};

/*
 * The endpoint a request is for. Only an origin-form target that starts with a
 * single '/' is routed: "//host/metrics" parses as an authority and the path
 * /metrics, and a front proxy's path rules would not see it as that.
 */
enum route checks_route(const struct request_head *head);

/*
 * 1 when the bytes after this request cannot be trusted, so that whatever
 * answers it must close the connection: any body framing (Transfer-Encoding, a
 * non-zero or repeated Content-Length: evhttp does not read a HEAD body, which
 * would be taken for the next request) but POST /export_data's one length
 * within the limit, a CONNECT, a target not routed.
 */
int checks_must_close(const struct request_head *head);

/*
 * The checks after the address one, in order: request line over 8 KiB (414),
 * headers over 16 KiB (431), a target not in origin form (400), no such route
 * (404; no path at all: 400), a method the route does not take (405 with
 * Allow), a header name that is not an RFC 9110 token, any body framing (400).
 * POST /export_data instead needs one Content-Length (chunked or none: 411) of
 * at most CHECKS_MAX_BODY (413) and Content-Type application/json (415).
 * Returns 0 when the request passes, else 1 with *refusal filled.
 */
MUST_CHECK int checks_request(const struct request_head *head, enum route route,
			      struct refusal *refusal);

/*
 * A header forwarded upstream (Range, If-Range): *value is it, or NULL when
 * absent. Returns -1 when it is longer than CHECKS_MAX_FORWARDED_HEADER or not
 * printable ASCII, else 0.
 */
MUST_CHECK int checks_forwarded_header(const struct evkeyvalq *headers, const char *name,
				       const char **value);

#endif
