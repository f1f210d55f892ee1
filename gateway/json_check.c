/*
 * json_check.c -- an RFC 8259 validator in front of cJSON. cJSON is lenient: it
 * stops at the end of the first value, takes raw control characters and invalid
 * UTF-8 inside strings, and keeps both members of a duplicated key (a lookup
 * finds the first). A cache that stored such a body would trust a state a
 * different parser reads otherwise, so the bytes are checked first, then parsed.
 */
#include "json_check.h"

#include "hex.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct scanner {
	const unsigned char *at, *end;
	int depth;
	const char *why;
};

static int fail(struct scanner *s, const char *why)
{
	if (s->why == NULL)
		s->why = why;
	return -1;
}

static void skip_space(struct scanner *s)
{
	while (s->at < s->end &&
	       (*s->at == ' ' || *s->at == '\t' || *s->at == '\n' || *s->at == '\r'))
		s->at++;
}

/* Four hex digits after "\u"; -1 when they are not. */
static long hex4(struct scanner *s)
{
	long value = 0;

	if (s->end - s->at < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		int digit = hex_digit(s->at[i]);

		if (digit < 0)
			return -1;
		value = value * 16 + digit;
	}
	s->at += 4;
	return value;
}

/* One escape after the backslash. */
static int scan_escape(struct scanner *s)
{
	long unit, low;

	if (s->at >= s->end)
		return fail(s, "a string ends inside an escape");
	switch (*s->at++) {
	case '"':
	case '\\':
	case '/':
	case 'b':
	case 'f':
	case 'n':
	case 'r':
	case 't':
		return 0;
	case 'u':
		break;
	default:
		return fail(s, "a string has an invalid escape");
	}
	unit = hex4(s);
	if (unit < 0)
		return fail(s, "a \\u escape needs four hex digits");
	if (unit == 0)
		return fail(s, "a string contains \\u0000");
	if (unit >= 0xdc00 && unit <= 0xdfff)
		return fail(s, "a string has a lone low surrogate escape");
	if (unit < 0xd800 || unit > 0xdbff)
		return 0;
	if (s->end - s->at < 2 || s->at[0] != '\\' || s->at[1] != 'u')
		return fail(s, "a string has a lone high surrogate escape");
	s->at += 2;
	low = hex4(s);
	if (low < 0xdc00 || low > 0xdfff)
		return fail(s, "a string has a lone high surrogate escape");
	return 0;
}

/* One UTF-8 sequence of two to four bytes, starting at a byte >= 0x80. */
static int scan_utf8(struct scanner *s)
{
	unsigned char lead = *s->at;
	size_t extra;
	uint32_t code, min;

	if (lead >= 0xc2 && lead <= 0xdf) {
		extra = 1, code = lead & 0x1f, min = 0x80;
	} else if (lead >= 0xe0 && lead <= 0xef) {
		extra = 2, code = lead & 0x0f, min = 0x800;
	} else if (lead >= 0xf0 && lead <= 0xf4) {
		extra = 3, code = lead & 0x07, min = 0x10000;
	} else {
		return fail(s, "a string is not valid UTF-8");
	}
	if ((size_t)(s->end - s->at) <= extra)
		return fail(s, "a string is not valid UTF-8");
	for (size_t i = 1; i <= extra; i++) {
		if ((s->at[i] & 0xc0) != 0x80)
			return fail(s, "a string is not valid UTF-8");
		code = (code << 6) | (s->at[i] & 0x3f);
	}
	if (code < min || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff))
		return fail(s, "a string is not valid UTF-8");
	s->at += extra + 1;
	return 0;
}

static int scan_string(struct scanner *s)
{
	s->at++; /* the opening quote */
	while (s->at < s->end) {
		unsigned char c = *s->at;

		if (c == '"') {
			s->at++;
			return 0;
		}
		if (c < 0x20)
			return fail(s, "a string contains a control character");
		if (c == '\\') {
			s->at++;
			if (scan_escape(s) < 0)
				return -1;
		} else if (c >= 0x80) {
			if (scan_utf8(s) < 0)
				return -1;
		} else {
			s->at++;
		}
	}
	return fail(s, "a string is not closed");
}

#define JSON_NUMBER_MAX 63

static int scan_number_grammar(struct scanner *s);

static int scan_digits(struct scanner *s)
{
	const unsigned char *start = s->at;

	while (s->at < s->end && *s->at >= '0' && *s->at <= '9')
		s->at++;
	return s->at > start ? 0 : fail(s, "a number is malformed");
}

/*
 * -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?, at most
 * JSON_NUMBER_MAX characters: cJSON reads no more of a number than that.
 */
static int scan_number(struct scanner *s)
{
	const unsigned char *start = s->at;

	if (scan_number_grammar(s) < 0)
		return -1;
	if (s->at - start > JSON_NUMBER_MAX)
		return fail(s, "a number is too long");
	return 0;
}

static int scan_number_grammar(struct scanner *s)
{
	if (*s->at == '-')
		s->at++;
	if (s->at < s->end && *s->at == '0')
		s->at++;
	else if (scan_digits(s) < 0)
		return -1;
	if (s->at < s->end && *s->at == '.') {
		s->at++;
		if (scan_digits(s) < 0)
			return -1;
	}
	if (s->at < s->end && (*s->at == 'e' || *s->at == 'E')) {
		s->at++;
		if (s->at < s->end && (*s->at == '+' || *s->at == '-'))
			s->at++;
		if (scan_digits(s) < 0)
			return -1;
	}
	return 0;
}

static int scan_literal(struct scanner *s, const char *word)
{
	size_t length = strlen(word);

	if ((size_t)(s->end - s->at) < length || memcmp(s->at, word, length) != 0)
		return fail(s, "not JSON");
	s->at += length;
	return 0;
}

static int scan_value(struct scanner *s);

/* Members or elements between brackets; close is '}' or ']'. */
static int scan_container(struct scanner *s, unsigned char close)
{
	int first = 1;

	if (++s->depth > JSON_CHECK_MAX_DEPTH)
		return fail(s, "JSON nested too deeply");
	s->at++;
	skip_space(s);
	if (s->at < s->end && *s->at == close) {
		s->at++;
		s->depth--;
		return 0;
	}
	for (;;) {
		if (!first) {
			skip_space(s);
			if (s->at < s->end && *s->at == close)
				break;
			if (s->at >= s->end || *s->at != ',')
				return fail(s, "a comma or closing bracket is missing");
			s->at++;
		}
		first = 0;
		skip_space(s);
		if (close == '}') {
			if (s->at >= s->end || *s->at != '"')
				return fail(s, "an object key is not a string");
			if (scan_string(s) < 0)
				return -1;
			skip_space(s);
			if (s->at >= s->end || *s->at != ':')
				return fail(s, "a colon is missing after an object key");
			s->at++;
		}
		if (scan_value(s) < 0)
			return -1;
	}
	s->at++;
	s->depth--;
	return 0;
}

static int scan_value(struct scanner *s)
{
	skip_space(s);
	if (s->at >= s->end)
		return fail(s, "a value is missing");
	switch (*s->at) {
	case '{':
		return scan_container(s, '}');
	case '[':
		return scan_container(s, ']');
	case '"':
		return scan_string(s);
	case 't':
		return scan_literal(s, "true");
	case 'f':
		return scan_literal(s, "false");
	case 'n':
		return scan_literal(s, "null");
	default:
		if (*s->at == '-' || (*s->at >= '0' && *s->at <= '9'))
			return scan_number(s);
		return fail(s, "not JSON");
	}
}

static int compare_keys(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* 1 when some object in the tree has a key twice. Sorting: O(n log n) per object. */
static int has_duplicate_key(const cJSON *item, int *out_of_memory)
{
	const cJSON *child;
	size_t count = 0, i = 0;
	const char **keys;
	int duplicate = 0;

	for (child = item->child; child != NULL; child = child->next) {
		if (has_duplicate_key(child, out_of_memory))
			return 1;
		count++;
	}
	if (!cJSON_IsObject(item) || count < 2)
		return 0;
	keys = malloc(count * sizeof(*keys));
	if (keys == NULL) {
		*out_of_memory = 1;
		return 1;
	}
	for (child = item->child; child != NULL; child = child->next)
		keys[i++] = child->string;
	qsort(keys, count, sizeof(*keys), compare_keys);
	for (i = 1; i < count && !duplicate; i++)
		duplicate = strcmp(keys[i - 1], keys[i]) == 0;
	free(keys);
	return duplicate;
}

cJSON *json_check_parse(const char *text, size_t length, const char **why)
{
	struct scanner s = {
		.at = (const unsigned char *)text,
		.end = (const unsigned char *)text + length,
	};
	int out_of_memory = 0;
	cJSON *json;

	if (scan_value(&s) < 0) {
		*why = s.why;
		return NULL;
	}
	skip_space(&s);
	if (s.at != s.end) {
		*why = "there are bytes after the JSON value";
		return NULL;
	}
	json = cJSON_ParseWithLength(text, length);
	if (json == NULL) {
		/* valid by the grammar: cJSON can only have run out of memory */
		*why = "out of memory";
		return NULL;
	}
	if (has_duplicate_key(json, &out_of_memory)) {
		*why = out_of_memory ? "out of memory" : "an object has a key twice";
		cJSON_Delete(json);
		return NULL;
	}
	return json;
}
