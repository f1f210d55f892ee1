/*
 * framing.c -- the RFC 9112 section 6 rules for a response body's length, applied
 * strictly: where a lenient client (libcurl takes the last of two lengths, reads
 * "5x" as 5, and skips an overflowing one) would guess, the gateway refuses.
 */
#include "framing.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define FRAMING_LIST_SEPARATORS " \t,"

static int is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* Digits only, no sign, at most FRAMING_MAX_CONTENT_LENGTH; text[0..length). */
static int parse_length(const char *text, size_t length, int64_t *value)
{
	int64_t result = 0;

	if (length == 0)
		return -1;
	for (size_t i = 0; i < length; i++) {
		if (text[i] < '0' || text[i] > '9')
			return -1;
		result = result * 10 + (text[i] - '0');
		if (result > FRAMING_MAX_CONTENT_LENGTH)
			return -1;
	}
	*value = result;
	return 0;
}

/*
 * Every element of a Content-Length value ("42", or "42, 42" as some proxies
 * fold repeats) into *length; -1 when one is malformed or differs.
 */
static int add_lengths(const char *value, int64_t *length)
{
	const char *at = value;

	for (;;) {
		const char *start, *end;
		int64_t number;

		while (is_space(*at))
			at++;
		start = at;
		while (*at != '\0' && *at != ',')
			at++;
		end = at;
		while (end > start && is_space(end[-1]))
			end--;
		if (parse_length(start, (size_t)(end - start), &number) < 0)
			return -1;
		if (*length >= 0 && *length != number)
			return -1;
		*length = number;
		if (*at == '\0')
			return 0;
		at++;
	}
}

/* 1 when every comma-separated token of value is word (case-insensitive). */
static int only_token(const char *value, const char *word)
{
	size_t word_length = strlen(word);
	const char *at = value;
	int tokens = 0;

	for (;;) {
		size_t length;

		at += strspn(at, FRAMING_LIST_SEPARATORS);
		if (*at == '\0')
			return tokens > 0;
		length = strcspn(at, FRAMING_LIST_SEPARATORS);
		if (length != word_length || strncasecmp(at, word, length) != 0)
			return 0;
		tokens++;
		at += length;
	}
}

int framing_check(long status, const struct evkeyvalq *headers, int64_t *content_length,
		  const char **why)
{
	const struct evkeyval *header;
	int64_t length = -1;
	int chunked = 0;

	if (status < 200 || status > 599) {
		*why = "the upstream answered with a status outside 200-599";
		return -1;
	}
	for (header = headers->tqh_first; header != NULL; header = header->next.tqe_next) {
		if (strcasecmp(header->key, "Content-Length") == 0) {
			if (add_lengths(header->value, &length) < 0) {
				*why = "the upstream sent an invalid or conflicting Content-Length";
				return -1;
			}
		} else if (strcasecmp(header->key, "Transfer-Encoding") == 0) {
			if (chunked || !only_token(header->value, "chunked") ||
			    strchr(header->value, ',') != NULL) {
				*why = "the upstream sent a Transfer-Encoding other than chunked";
				return -1;
			}
			chunked = 1;
		} else if (strcasecmp(header->key, "Content-Encoding") == 0) {
			if (!only_token(header->value, "identity")) {
				*why = "the upstream sent a Content-Encoding although identity "
				       "was asked for";
				return -1;
			}
		}
	}
	if (chunked && length >= 0) {
		*why = "the upstream sent both Content-Length and Transfer-Encoding";
		return -1;
	}
	*content_length = length;
	return 0;
}

/* RFC 9110 token characters: what a header name is made of. */
static int is_token_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

int framing_header_line(const char *line, size_t length, struct evkeyvalq *headers,
			const char **why)
{
	char *copy = malloc(length + 1);
	char *colon, *value, *end;
	int result = -1;

	if (copy == NULL) {
		*why = "out of memory";
		return -1;
	}
	memcpy(copy, line, length);
	copy[length] = '\0';
	colon = strchr(copy, ':');
	for (char *c = copy; colon != NULL && c < colon; c++) {
		if (!is_token_char(*c))
			colon = NULL;
	}
	if (colon == NULL || colon == copy || memchr(copy, '\0', length) != NULL) {
		*why = "the upstream sent a malformed header line";
		goto done;
	}
	*colon = '\0';
	for (value = colon + 1; *value == ' ' || *value == '\t'; value++)
		;
	for (end = value + strlen(value); end > value && (end[-1] == '\r' || end[-1] == '\n' ||
							  end[-1] == ' ' || end[-1] == '\t');
	     end--)
		;
	*end = '\0';
	if (strpbrk(value, "\r\n") != NULL) {
		*why = "the upstream sent a malformed header line";
		goto done;
	}
	result = evhttp_add_header(headers, copy, value);
	if (result < 0)
		*why = "out of memory";
done:
	free(copy);
	return result;
}
