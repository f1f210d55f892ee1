/*
 * fuzz_json.c -- libFuzzer target for json_check_parse(): the input is any
 * bytes, passed without a terminating NUL. Whatever it accepts, cJSON must
 * accept too, and printing the tree and checking the print must give the
 * same tree (so the checker and the parser agree on what the bytes say).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 1e999 is valid JSON but no double: cJSON prints it as null. */
static int has_non_finite(const cJSON *item)
{
	for (; item != NULL; item = item->next) {
		if ((cJSON_IsNumber(item) && !isfinite(item->valuedouble)) ||
		    has_non_finite(item->child))
			return 1;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *why = NULL;
	cJSON *json = json_check_parse((const char *)data, size, &why), *again;
	char *printed;

	if (json == NULL) {
		if (why == NULL)
			abort();
		return 0;
	}
	printed = cJSON_PrintUnformatted(json);
	if (printed == NULL)
		abort();
	again = json_check_parse(printed, strlen(printed), &why);
	/* a number cJSON prints longer than the checker takes is the one way out */
	if (again == NULL && strstr(why, "number") == NULL)
		abort();
	if (again != NULL && !has_non_finite(json) && !cJSON_Compare(json, again, 1))
		abort();
	cJSON_Delete(again);
	cJSON_free(printed);
	cJSON_Delete(json);
	return 0;
}
