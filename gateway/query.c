/*
 * query.c -- the /export_status query string, decoded strictly. Anything a lenient
 * decoder would let through (bad %-escapes, %00, repeats) is refused here.
 */
#include "query.h"

#include "hex.h"

#include <string.h>
#include <strings.h>

#define QUERY_MAX_PARAMS     32
#define QUERY_MAX_NAME_BYTES 64

/*
 * Decodes src[0..len) into out (capacity cap, NUL-terminated). Returns the decoded
 * length, -1 on a bad escape or a NUL byte, -2 when it does not fit.
 */
static long percent_decode(const char *src, size_t len, char *out, size_t cap)
{
	const char *end = src + len;
	size_t n = 0;

	/* Runs between escapes are copied whole: src is part of a C string, so only
	 * an escape can make a NUL. */
	while (src < end) {
		const char *escape = memchr(src, '%', (size_t)(end - src));
		size_t run = (size_t)((escape != NULL ? escape : end) - src);
		int high, low;

		if (n + run >= cap)
			return -2;
		memcpy(out + n, src, run);
		n += run;
		if (escape == NULL)
			break;
		if (end - escape < 3)
			return -1;
		high = hex_digit(escape[1]);
		low = hex_digit(escape[2]);
		if (high < 0 || low < 0 || (high | low) == 0)
			return -1;
		if (n + 1 >= cap)
			return -2;
		out[n++] = (char)(high * 16 + low);
		src = escape + 3;
	}
	out[n] = '\0';
	return (long)n;
}

static int is_printable_token(const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s < 0x21 || *s > 0x7e)
			return 0;
	}
	return 1;
}

int query_user_id_valid(const char *text)
{
	size_t length = strlen(text);

	return length > 0 && length <= QUERY_MAX_USER_ID_BYTES && is_printable_token(text);
}

struct param {
	char name[QUERY_MAX_NAME_BYTES + 1]; /* decoded */
	const char *value;		     /* still encoded */
	size_t value_len;
};

static int split_params(const char *raw, struct param *params, size_t *count, const char **message)
{
	const char *cursor = raw;

	*count = 0;
	while (*cursor != '\0') {
		const char *end = strchr(cursor, '&');
		const char *equals;
		size_t len = end ? (size_t)(end - cursor) : strlen(cursor);

		if (len > 0) {
			struct param *p;
			size_t name_len;

			if (*count == QUERY_MAX_PARAMS) {
				*message = "too many query parameters";
				return -1;
			}
			p = &params[(*count)++];
			equals = memchr(cursor, '=', len);
			name_len = equals ? (size_t)(equals - cursor) : len;
			if (percent_decode(cursor, name_len, p->name, sizeof(p->name)) < 0) {
				*message = "malformed or overlong query parameter name";
				return -1;
			}
			p->value = equals ? equals + 1 : cursor + len;
			p->value_len = equals ? len - name_len - 1 : 0;
		}
		if (end == NULL)
			break;
		cursor = end + 1;
	}
	return 0;
}

static int check_repeats(const struct param *params, size_t count, const char **message)
{
	for (size_t i = 0; i < count; i++) {
		for (size_t j = 0; j < i; j++) {
			if (strcmp(params[i].name, params[j].name) == 0) {
				*message = "a query parameter is given more than once";
				return -1;
			}
		}
	}
	return 0;
}

static int parse_download(const struct param *p, int *download, const char **message)
{
	char value[8];

	if (percent_decode(p->value, p->value_len, value, sizeof(value)) < 0)
		value[0] = '\0';
	if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0) {
		*download = 1;
		return 0;
	}
	if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0) {
		*download = 0;
		return 0;
	}
	*message = "download must be true, false, 1 or 0";
	return -1;
}

/* Whole seconds, 0 to QUERY_MAX_WAIT: digits only (no sign, no exponent), at most 4 of them. */
static int parse_seconds(const char *text, size_t length, int *seconds)
{
	int value = 0;

	if (length == 0 || length > 4)
		return -1;
	for (size_t i = 0; i < length; i++) {
		if (text[i] < '0' || text[i] > '9')
			return -1;
		value = value * 10 + (text[i] - '0');
	}
	if (value > QUERY_MAX_WAIT)
		return -1;
	*seconds = value;
	return 0;
}

static const char wait_message[] = "wait must be whole seconds from 0 to 3600";

static int parse_wait(const struct param *p, int *wait, const char **message)
{
	char value[8];
	long n = percent_decode(p->value, p->value_len, value, sizeof(value));

	if (n < 0 || parse_seconds(value, (size_t)n, wait) < 0) {
		*message = wait_message;
		return -1;
	}
	return 0;
}

static int is_ows(char c)
{
	return c == ' ' || c == '\t';
}

int query_prefer_wait(const char *value, int *wait, const char **message)
{
	const char *p = value;

	while (*p != '\0') {
		size_t item = strcspn(p, ","), name;
		const char *end = p + item, *word;

		while (p < end && is_ows(*p))
			p++;
		name = strcspn(p, "=; \t,");
		if (name == 4 && strncasecmp(p, "wait", 4) == 0) {
			word = p + name;
			while (word < end && is_ows(*word))
				word++;
			if (word < end && *word == '=') {
				size_t length;

				word++;
				while (word < end && is_ows(*word))
					word++;
				length = strcspn(word, "; \t,");
				if (word + length > end)
					length = (size_t)(end - word);
				/* a quoted-string word: "N" */
				if (length >= 2 && word[0] == '"' && word[length - 1] == '"') {
					word++;
					length -= 2;
				}
				if (parse_seconds(word, length, wait) == 0)
					return 1;
			}
			*message = "Prefer: wait must be whole seconds from 0 to 3600";
			return -1;
		}
		p = *end == ',' ? end + 1 : end;
	}
	return 0;
}

/* The messages for one identifier parameter, in the order of its checks. */
struct token_messages {
	const char *invalid;
	const char *too_long;
	const char *empty;
};

static const struct token_messages id_messages = {
	"data_export_id must be printable ASCII without spaces",
	"data_export_id is longer than 256 bytes",
	"data_export_id is empty",
};

static const struct token_messages user_id_messages = {
	"user_id must be printable ASCII without spaces",
	"user_id is longer than 256 bytes",
	"user_id is empty",
};

static int parse_token(const struct param *p, char *out, size_t cap,
		       const struct token_messages *messages, const char **message)
{
	long n = percent_decode(p->value, p->value_len, out, cap);

	if (n == -1 || (n >= 0 && !is_printable_token(out)))
		*message = messages->invalid;
	else if (n == -2)
		*message = messages->too_long;
	else if (n == 0)
		*message = messages->empty;
	else
		return 0;
	return -1;
}

int query_parse(const char *raw, struct query *q, const char **message)
{
	struct param params[QUERY_MAX_PARAMS];
	size_t count = 0;
	int have_id = 0;

	memset(q, 0, sizeof(*q));
	q->wait = -1;
	if (raw == NULL)
		raw = "";
	if (split_params(raw, params, &count, message) < 0 ||
	    check_repeats(params, count, message) < 0)
		return -1;
	for (size_t i = 0; i < count; i++) {
		const struct param *p = &params[i];

		if (strcmp(p->name, "data_export_id") == 0) {
			if (parse_token(p, q->data_export_id, sizeof(q->data_export_id),
					&id_messages, message) < 0)
				return -1;
			have_id = 1;
		} else if (strcmp(p->name, "user_id") == 0) {
			if (parse_token(p, q->user_id, sizeof(q->user_id), &user_id_messages,
					message) < 0)
				return -1;
			q->has_user_id = 1;
		} else if (strcmp(p->name, "download") == 0) {
			if (parse_download(p, &q->download, message) < 0)
				return -1;
		} else if (strcmp(p->name, "wait") == 0) {
			if (parse_wait(p, &q->wait, message) < 0)
				return -1;
		}
	}
	if (!have_id) {
		*message = "data_export_id is required";
		return -1;
	}
	return 0;
}
