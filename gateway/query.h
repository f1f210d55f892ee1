/*
 * query.h -- strict parsing of the /export_status query string. Pure functions on
 * client bytes: no I/O, no allocation, so they are easy to test and to fuzz.
 */
#ifndef GATEWAY_QUERY_H
#define GATEWAY_QUERY_H

#include "attributes.h"

#include <stddef.h>

#define QUERY_MAX_ID_BYTES	256
#define QUERY_MAX_USER_ID_BYTES 256

struct query {
	char data_export_id[QUERY_MAX_ID_BYTES + 1];
	char user_id[QUERY_MAX_USER_ID_BYTES + 1]; /* "" when absent */
	int has_user_id;
	int download; /* 0 or 1 */
	int wait;     /* wait=N: N (0 to QUERY_MAX_WAIT), -1 when absent */
};

/* The longest wait= (and Prefer: wait=) a client may ask for, in seconds. */
#define QUERY_MAX_WAIT 3600

/*
 * Parses a raw (still percent-encoded) query string, NULL meaning none. Unknown
 * parameters are ignored (never forwarded). Returns 0 and fills q, or -1 with a
 * short human message in *message (a static string) for a 400 answer: missing or
 * invalid data_export_id, a parameter given twice, a bad download or wait value
 * (wait: whole seconds, 0 to QUERY_MAX_WAIT), bad percent-encoding, NUL or
 * control bytes.
 */
MUST_CHECK int query_parse(const char *raw, struct query *q, const char **message);

/*
 * The wait preference in one Prefer header value (RFC 7240: comma-separated
 * preferences, each token[=word] with ;parameters): 1 with the seconds in *wait
 * when it has wait=N (the first one counts, as RFC 7240 says), 0 when it has
 * none, -1 with a message in *message when its wait is not 0 to QUERY_MAX_WAIT
 * whole seconds. Other preferences are ignored.
 */
MUST_CHECK int query_prefer_wait(const char *value, int *wait, const char **message);

/* 1 when text may be a user_id (as in the query): 1 to 256 bytes, printable, no spaces. */
int query_user_id_valid(const char *text);

#endif
