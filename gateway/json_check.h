/*
 * json_check.h -- strict JSON: a body is one RFC 8259 value or it is refused,
 * whatever cJSON would have let through (trailing bytes, raw control characters,
 * invalid UTF-8, duplicate keys). Pure functions on bytes: no I/O, so they are
 * easy to test and to fuzz. Not a general JSON library: cJSON builds the tree.
 */
#ifndef GATEWAY_JSON_CHECK_H
#define GATEWAY_JSON_CHECK_H

#include "attributes.h"

#include <stddef.h>

#include <cjson/cJSON.h>

/* Objects and arrays nested deeper than this are refused. */
#define JSON_CHECK_MAX_DEPTH 64

/*
 * Parses text[0..length) (no NUL needed) when it is exactly one JSON value:
 * RFC 8259's grammar, UTF-8 without overlong forms, surrogates or code points
 * past U+10FFFF, no control characters inside strings, no \u0000 (cJSON's C
 * strings would end there) and no lone surrogate escapes, no key twice in one
 * object, at most JSON_CHECK_MAX_DEPTH levels, only whitespace after the value.
 * Returns the tree, owned by the caller (cJSON_Delete), or NULL with a short
 * human reason in *why (a static string; "out of memory" too).
 */
MUST_CHECK cJSON *json_check_parse(const char *text, size_t length, const char **why);

#endif
