/*
 * framing.h -- checks of an upstream response head before the gateway takes its
 * body: a final status it may relay, one unambiguous framing, no content coding
 * it did not ask for. Pure functions on parsed headers: no I/O, easy to test and
 * to fuzz. The gateway frames every answer itself from what it checked here;
 * upstream's framing headers are never copied to a client.
 */
#ifndef GATEWAY_FRAMING_H
#define GATEWAY_FRAMING_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>

struct evkeyvalq;

/* Larger declared bodies are refused (64 GiB: far above any export). */
#define FRAMING_MAX_CONTENT_LENGTH ((int64_t)64 << 30)

/*
 * The final head of an upstream response (interim 1xx heads are the caller's,
 * but 101 is final and refused here). Returns 0 and sets *content_length (-1
 * when the body is chunked or runs until the connection closes), or -1 with a
 * short reason in *why (a static string naming no value) when: the status is
 * outside 200..599; Transfer-Encoding is anything but "chunked", or comes with a
 * Content-Length; Content-Length values are not all the same number of digits,
 * or over FRAMING_MAX_CONTENT_LENGTH; Content-Encoding is other than identity.
 */
MUST_CHECK int framing_check(long status, const struct evkeyvalq *headers, int64_t *content_length,
			     const char **why);

/*
 * One "Name: value" line of a response head (as libcurl hands it over, CRLF
 * included) added to headers, the value trimmed. A line that is not one (no
 * colon, a name that is not a token, obs-fold continuation, a NUL or bare CR)
 * makes the head untrustworthy (RFC 9112 5.2 lets a gateway answer 502 for a
 * folded one). Returns 0, or -1 with a reason in *why.
 */
MUST_CHECK int framing_header_line(const char *line, size_t length, struct evkeyvalq *headers,
				   const char **why);

#endif
