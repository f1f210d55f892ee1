/*
 * fuzz_query.c -- libFuzzer target for query_parse() and query_prefer_wait():
 * the input is the raw query string of /export_status as a client sends it,
 * and the same bytes as a Prefer header's value. Checks what a successful parse
 * promises the callers; not a test of which messages are given.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "query.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 1..max bytes of printable ASCII without spaces, NUL-terminated inside the field. */
static int valid_token(const char *token, size_t max)
{
	size_t length = strnlen(token, max + 1);

	if (length == 0 || length > max)
		return 0;
	for (size_t i = 0; i < length; i++) {
		if ((unsigned char)token[i] < 0x21 || (unsigned char)token[i] > 0x7e)
			return 0;
	}
	return 1;
}

static void check_query(const struct query *q)
{
	if (!valid_token(q->data_export_id, QUERY_MAX_ID_BYTES))
		abort();
	if (q->has_user_id != 0 && q->has_user_id != 1)
		abort();
	if (q->has_user_id && !valid_token(q->user_id, QUERY_MAX_USER_ID_BYTES))
		abort();
	if (!q->has_user_id && q->user_id[0] != '\0')
		abort();
	if (q->download != 0 && q->download != 1)
		abort();
	if (q->wait < -1 || q->wait > QUERY_MAX_WAIT)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* exactly size + 1 bytes, so ASan sees any read past the terminating NUL */
	char *raw = malloc(size + 1);
	struct query q;
	const char *message = NULL;
	int wait = -1;

	if (raw == NULL)
		return 0;
	memcpy(raw, data, size);
	raw[size] = '\0';
	if (query_parse(raw, &q, &message) == 0)
		check_query(&q);
	else if (message == NULL || message[0] == '\0')
		abort();
	message = NULL;
	switch (query_prefer_wait(raw, &wait, &message)) {
	case 1:
		if (wait < 0 || wait > QUERY_MAX_WAIT)
			abort();
		break;
	case 0:
		break;
	case -1:
		if (message == NULL || message[0] == '\0')
			abort();
		break;
	default:
		abort();
	}
	free(raw);
	return 0;
}
