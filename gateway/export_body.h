/*
 * export_body.h -- the body of POST /export_data, checked before anything goes
 * upstream (design.md, "Starting exports"): one strict JSON object
 * (json_check.h), the documented fields by type only (enum values are
 * Gumloop's to judge), user_id taken out so that the stored one can take its
 * place, other keys passed through. Pure: bytes in, a tree or a refusal out.
 */
#ifndef GATEWAY_EXPORT_BODY_H
#define GATEWAY_EXPORT_BODY_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "query.h"

#define EXPORT_BODY_MAX_BYTES  (64 * 1024)
#define EXPORT_BODY_MAX_FIELDS 100

struct export_body {
	cJSON *tree;				   /* the checked object, without user_id; owned */
	char user_id[QUERY_MAX_USER_ID_BYTES + 1]; /* the client's, "" when absent */
	int has_user_id;
};

enum export_body_result {
	EXPORT_BODY_OK,
	EXPORT_BODY_BAD,   /* *message names the field (a 400) */
	EXPORT_BODY_NOMEM, /* out of memory (a 500) */
};

/*
 * Checks text[0..length): one JSON object (no key twice, valid UTF-8, see
 * json_check.h); export_fields 1 to EXPORT_BODY_MAX_FIELDS strings; start_date
 * and end_date RFC 3339 date-times (Z or an offset), end not before start;
 * data_type, export_level, category_filter strings; include_all_workspaces,
 * include_personal_workspaces booleans; workspace_ids, entity_ids arrays of
 * strings; user_id, when there, printable ASCII without spaces, at most 256
 * bytes. On EXPORT_BODY_OK body owns the tree; otherwise body is empty.
 * *message is a static string.
 */
MUST_CHECK enum export_body_result export_body_check(const char *text, size_t length,
						     struct export_body *body,
						     const char **message);

/*
 * The body to send upstream: {"user_id":USER_ID, then body's keys in their
 * order}, compact. A new NUL-terminated string (it holds the user id: wipe it
 * before freeing), its length in *length; NULL when out of memory.
 */
MUST_CHECK char *export_body_upstream(const struct export_body *body, const char *user_id,
				      size_t *length);

/* Frees the tree; body is empty after. */
void export_body_clear(struct export_body *body);

/*
 * An RFC 3339 date-time ("2025-01-01T00:00:00Z", "...T01:00:00.5+01:00") as
 * seconds since 1970 (UTC) and nanoseconds: 0, or -1 when text is not one.
 * For the tests and the end-not-before-start check.
 */
MUST_CHECK int export_body_date_time(const char *text, int64_t *seconds, long *nanos);

#endif
