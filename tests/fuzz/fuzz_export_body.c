/*
 * fuzz_export_body.c -- libFuzzer target for export_body_check(): the input is
 * any bytes, as a client's POST /export_data body. A body it takes must have
 * its required fields, no user_id left in the tree, and make an upstream body
 * that is itself strict JSON with the stored user id and the same fields.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "export_body.h"
#include "json_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct export_body body;
	const char *message = NULL, *why = NULL;
	char *upstream;
	size_t length = 0;
	cJSON *sent;

	switch (export_body_check((const char *)data, size, &body, &message)) {
	case EXPORT_BODY_OK:
		break;
	case EXPORT_BODY_BAD:
	case EXPORT_BODY_NOMEM:
		if (message == NULL || body.tree != NULL)
			abort();
		return 0;
	}
	if (cJSON_GetObjectItemCaseSensitive(body.tree, "user_id") != NULL ||
	    !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(body.tree, "export_fields")) ||
	    !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(body.tree, "start_date")))
		abort();
	upstream = export_body_upstream(&body, "stored \"user\"\x01", &length);
	if (upstream == NULL || strlen(upstream) != length)
		abort();
	sent = json_check_parse(upstream, length, &why);
	if (sent == NULL && (why == NULL || strstr(why, "number") == NULL))
		abort();
	if (sent != NULL) {
		const cJSON *user_id = cJSON_GetObjectItemCaseSensitive(sent, "user_id");

		if (!cJSON_IsString(user_id) ||
		    strcmp(user_id->valuestring, "stored \"user\"\x01") != 0 ||
		    cJSON_GetArraySize(sent) != cJSON_GetArraySize(body.tree) + 1)
			abort();
	}
	cJSON_Delete(sent);
	free(upstream);
	export_body_clear(&body);
	return 0;
}
