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
};

/*
 * Parses a raw (still percent-encoded) query string, NULL meaning none. Unknown
 * parameters are ignored (never forwarded). Returns 0 and fills q, or -1 with a
 * short human message in *message (a static string) for a 400 answer: missing or
 * invalid data_export_id, a parameter given twice, a bad download value, bad
 * percent-encoding, NUL or control bytes.
 */
MUST_CHECK int query_parse(const char *raw, struct query *q, const char **message);

/* 1 when text may be a user_id (as in the query): 1 to 256 bytes, printable, no spaces. */
int query_user_id_valid(const char *text);

#endif
