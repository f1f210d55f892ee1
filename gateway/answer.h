/*
 * answer.h -- what a client is answered, decided from what the upstream said:
 * the error mapping (401 → 502 upstream_auth, 3xx → 502, timeouts → 504, ...),
 * strict JSON and the export's state, the TTL an answer may be cached for, and
 * every gateway JSON error body. Pure: no I/O, no logging, nothing kept; the
 * cache stores answers, the server sends them.
 */
#ifndef GATEWAY_ANSWER_H
#define GATEWAY_ANSWER_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>

struct conf;
struct upstream_result;

/* At most this many bytes of a state are kept ("IN_PROGRESS" and the like). */
#define ANSWER_STATE_MAX 64

enum answer_state {
	ANSWER_NON_FINAL, /* REQUESTED, IN_PROGRESS or a state we do not know */
	ANSWER_COMPLETED,
	ANSWER_FAILED,
	ANSWER_NO_STATE, /* an error status: no export state in it */
};

struct answer {
	int status;
	char *content_type; /* owned */
	char *body;	    /* owned, NUL-terminated (body_length excludes it) */
	size_t body_length;
	enum answer_state state;
	int64_t ttl_ms;	   /* how long it may be cached; -1: not at all */
	int stale_ok;	   /* a failed refresh: an expired entry may answer instead */
	const char *error; /* the gateway's error code, NULL when upstream's answer */
	const char *why;   /* for the log: what went wrong (static; no secret), or NULL */
	int redacted;	   /* configured secrets were taken out of the body */
};

/*
 * {"error":"<code>","message":"<message>"} as a new NUL-terminated string the
 * caller frees (free), its length in *length; NULL when out of memory.
 */
MUST_CHECK char *answer_error_body(const char *code, const char *message, size_t *length);

/*
 * Makes answer a gateway error (what it held is freed first): status, JSON body,
 * not cacheable. Out of memory leaves an empty body (the status still says it).
 */
void answer_set_error(struct answer *answer, int status, const char *code, const char *message);

/*
 * The client's answer to a finished upstream call for export_id (credential
 * names nothing secret; it is for the why text only). conf gives the TTLs and
 * the secrets to redact. answer is overwritten; free with answer_clear.
 */
void answer_from_result(struct answer *answer, const struct conf *conf, const char *export_id,
			const struct upstream_result *result);

/*
 * The client's answer to POST /export_data: a 2xx whose body is a JSON object
 * with a string data_export_id as received, any other 2xx 502 upstream_invalid,
 * failures mapped as for status calls. Never cacheable.
 */
void answer_from_export(struct answer *answer, const struct conf *conf,
			const struct upstream_result *result);

/* A strong ETag: '"', 16 hex digits of the body's SHA-256, '"', NUL. */
#define ANSWER_ETAG_SIZE 19

/* The strong ETag of a body (RFC 9110 8.8.3), into etag. */
void answer_etag(const char *body, size_t length, char etag[ANSWER_ETAG_SIZE]);

/*
 * 1 when an If-None-Match value (RFC 9110 13.1.2: "*" or a list of entity tags,
 * weakly compared) names etag, else 0 (also for a malformed value).
 */
int answer_etag_matches(const char *if_none_match, const char *etag);

/* Frees what answer owns and zeroes it. */
void answer_clear(struct answer *answer);

/*
 * The state in a strict JSON body (json_check.h): an object with a string
 * "state" and, when export_id is not NULL, a "data_export_id" that is absent or
 * export_id. Writes at most cap bytes (NUL included) into state and returns it,
 * or NULL with a reason in *why.
 */
const char *answer_parse_state(const char *body, size_t length, const char *export_id, char *state,
			       size_t cap, const char **why);

/* COMPLETED and FAILED are final; every other string is not. */
enum answer_state answer_state_of(const char *state);

/* The TTL in ms for status and state as upstream gave them; -1 = do not store. */
int64_t answer_ttl(const struct conf *conf, int status, const char *state);

#endif
