/*
 * fuzz_framing.c -- libFuzzer target for framing_check(): the input's first two
 * bytes are the status (0..65535), the rest header lines "Name: value" split at
 * '\n'. An accepted head has a length of -1 or 0..FRAMING_MAX_CONTENT_LENGTH
 * and no Transfer-Encoding beside it; a refusal always says why.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "framing.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct evkeyvalq headers = { NULL, &headers.tqh_first };
	char *text, *line, *save = NULL;
	int64_t length = -2;
	const char *why = NULL;
	long status;
	int chunked = 0;

	if (size < 2)
		return 0;
	status = data[0] << 8 | data[1];
	text = strndup((const char *)data + 2, size - 2);
	if (text == NULL)
		abort();
	for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':');

		if (colon == NULL || colon == line)
			continue;
		*colon = '\0';
		if (evhttp_add_header(&headers, line, colon + 1 + (colon[1] == ' ')) != 0)
			continue;
		chunked |= strcasecmp(line, "Transfer-Encoding") == 0;
	}
	if (framing_check(status, &headers, &length, &why) == 0) {
		if (status < 200 || status > 599 || length < -1 ||
		    length > FRAMING_MAX_CONTENT_LENGTH || (chunked && length != -1))
			abort();
	} else if (why == NULL) {
		abort();
	}
	evhttp_clear_headers(&headers);
	free(text);
	return 0;
}
