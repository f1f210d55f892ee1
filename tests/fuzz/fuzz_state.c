/*
 * fuzz_state.c -- libFuzzer target for answer_parse_state() and answer_ttl():
 * the input is an upstream JSON body, passed without a terminating NUL as the
 * length contract allows. The state buffer is allocated at exactly its cap so
 * ASan sees any write past it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "conf.h"

/* What answer.c passes (ANSWER_STATE_MAX). */
#define STATE_CAP 64
/* The second parse uses a cap of 0..SMALL_CAP_MAX, to exercise truncation. */
#define SMALL_CAP_MAX 8

#define PENDING_TTL_MS 2000
#define FINAL_TTL_MS   60000
#define ERROR_TTL_MS   1000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct conf ttls = {
	.cache_pending_ttl_ms = PENDING_TTL_MS,
	.cache_final_ttl_ms = FINAL_TTL_MS,
	.cache_error_ttl_ms = ERROR_TTL_MS,
};

/* Nothing is cached when every TTL is 0. */
static const struct conf no_ttls = { 0 };

/* Parses into a heap buffer of exactly cap bytes; returns a copy or NULL. */
static char *parse(const uint8_t *data, size_t size, size_t cap, int *found)
{
	char *state = malloc(cap > 0 ? cap : 1);
	const char *result, *why = NULL;
	char *copy = NULL;

	if (state == NULL)
		abort();
	result = answer_parse_state((const char *)data, size, NULL, state, cap, &why);
	if (result == NULL && why == NULL && cap > 0)
		abort();
	*found = result != NULL;
	if (result != NULL) {
		if (result != state || cap == 0 || memchr(state, '\0', cap) == NULL)
			abort();
		copy = strdup(state);
		if (copy == NULL)
			abort();
	}
	free(state);
	return copy;
}

static void check_ttls(const char *state)
{
	int final =
		state != NULL && (strcmp(state, "COMPLETED") == 0 || strcmp(state, "FAILED") == 0);
	int64_t expected_200 = state == NULL ? -1 : final ? FINAL_TTL_MS : PENDING_TTL_MS;
	static const int other_statuses[] = { 0, 201, 304, 400, 401, 403, 500, 502, 504 };

	if (answer_ttl(&ttls, 200, state) != expected_200)
		abort();
	if (answer_ttl(&ttls, 404, state) != ERROR_TTL_MS)
		abort();
	for (size_t i = 0; i < sizeof(other_statuses) / sizeof(other_statuses[0]); i++) {
		if (answer_ttl(&ttls, other_statuses[i], state) != -1)
			abort();
	}
	if (answer_ttl(&no_ttls, 200, state) != -1 || answer_ttl(&no_ttls, 404, state) != -1)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t small_cap = size % (SMALL_CAP_MAX + 1);
	int found, small_found;
	char *state = parse(data, size, STATE_CAP, &found);
	char *small = parse(data, size, small_cap, &small_found);

	/* The same body has a state whatever the cap, unless there is no room at all. */
	if (small_found != (found && small_cap > 0))
		abort();
	if (small_found && strncmp(small, state, strlen(small)) != 0)
		abort();
	if (found && strlen(state) >= STATE_CAP)
		abort();
	check_ttls(state);
	free(small);
	free(state);
	return 0;
}
