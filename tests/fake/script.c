/*
 * script.c -- parsing the fake upstream's scripts (script.h has the grammar).
 */
#include "script.h"

#include <stdlib.h>
#include <string.h>

/* Digits only, at least one, no sign, no overflow; *end is left after the digits. */
int fake_parse_digits(const char *text, const char **end, uint64_t *value)
{
	uint64_t result = 0;
	const char *p = text;

	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned digit = (unsigned)(*p - '0');

		if (result > (UINT64_MAX - digit) / 10)
			return -1;
		result = result * 10 + digit;
	}
	if (p == text)
		return -1;
	*end = p;
	*value = result;
	return 0;
}

int fake_parse_u64(const char *text, uint64_t max, uint64_t *value)
{
	const char *end;

	if (fake_parse_digits(text, &end, value) != 0 || *end != '\0' || *value > max)
		return -1;
	return 0;
}

/* SIZE[k|m|g], powers of 1024. */
int fake_parse_size(const char *text, uint64_t max, uint64_t *value)
{
	const char *end;
	unsigned shift = 0;

	if (fake_parse_digits(text, &end, value) != 0)
		return -1;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	default:
		return -1;
	}
	if (shift != 0 && end[1] != '\0')
		return -1;
	if (*value > (max >> shift))
		return -1;
	*value <<= shift;
	return 0;
}

static int fake_script_states(struct fake_script *script, char *value)
{
	char *item;

	script->state_count = 0;
	while ((item = strsep(&value, ",")) != NULL) {
		char *repeat = item;
		const char *name = strsep(&repeat, ":");
		uint64_t requests = 1;

		if (*name == '\0' || script->state_count == FAKE_MAX_STATE_SLOTS)
			return -1;
		if (repeat != NULL &&
		    (fake_parse_u64(repeat, FAKE_MAX_STATE_REPEAT, &requests) != 0 ||
		     requests == 0))
			return -1;
		script->states[script->state_count].name = name;
		script->states[script->state_count].requests = requests;
		script->state_count++;
	}
	return 0;
}

static int fake_script_ready(struct fake_script *script, char *value)
{
	if (fake_parse_u64(value, FAKE_MAX_DELAY_MS, &script->ready_ms) != 0)
		return -1;
	script->has_ready = true;
	return 0;
}

static int fake_script_delay(struct fake_script *script, char *value)
{
	return fake_parse_u64(value, FAKE_MAX_DELAY_MS, &script->delay_ms);
}

static int fake_script_status(struct fake_script *script, char *value)
{
	uint64_t status;

	/* 1xx would need a second, real answer; evhttp cannot send that. */
	if (fake_parse_u64(value, 599, &status) != 0 || status < 200)
		return -1;
	script->status = (int)status;
	return 0;
}

static int fake_script_body(struct fake_script *script, char *value)
{
	if (strcmp(value, "invalid") == 0)
		script->body = FAKE_BODY_INVALID;
	else if (strcmp(value, "big") == 0)
		script->body = FAKE_BODY_BIG;
	else if (strcmp(value, "html") == 0)
		script->body = FAKE_BODY_HTML;
	else
		return -1;
	return 0;
}

static int fake_script_close(struct fake_script *script, char *value)
{
	if (strcmp(value, "1") != 0 && strcmp(value, "0") != 0)
		return -1;
	script->close = value[0] == '1';
	return 0;
}

static int fake_script_csv(struct fake_script *script, char *value)
{
	return fake_parse_size(value, FAKE_CSV_MAX_SIZE, &script->csv_size);
}

static int fake_script_length(struct fake_script *script, char *value)
{
	if (strcmp(value, "1") != 0 && strcmp(value, "0") != 0)
		return -1;
	script->chunked = value[0] == '0';
	return 0;
}

static int fake_script_throttle(struct fake_script *script, char *value)
{
	if (fake_parse_u64(value, UINT32_MAX, &script->throttle) != 0 || script->throttle == 0)
		return -1;
	return 0;
}

static int fake_script_cut(struct fake_script *script, char *value)
{
	if (fake_parse_u64(value, FAKE_CSV_MAX_SIZE, &script->cut) != 0)
		return -1;
	script->has_cut = true;
	return 0;
}

static int fake_script_raw(struct fake_script *script, char *value)
{
	if (*value == '\0')
		return -1;
	script->raw = value;
	return 0;
}

static const struct {
	const char *name;
	int (*parse)(struct fake_script *, char *);
} fake_script_keys[] = {
	{ "raw", fake_script_raw },	      { "states", fake_script_states },
	{ "delay", fake_script_delay },	      { "status", fake_script_status },
	{ "body", fake_script_body },	      { "close", fake_script_close },
	{ "csv", fake_script_csv },	      { "length", fake_script_length },
	{ "throttle", fake_script_throttle }, { "cut", fake_script_cut },
	{ "ready", fake_script_ready },
};

void fake_script_clear(struct fake_script *script)
{
	free(script->storage);
	memset(script, 0, sizeof(*script));
}

/* id is NAME[;key=value]*; on failure the caller still runs fake_script_clear. */
enum fake_script_result fake_script_parse(struct fake_script *script, const char *id)
{
	char *cursor;

	memset(script, 0, sizeof(*script));
	script->csv_size = FAKE_CSV_DEFAULT_SIZE;
	if ((script->storage = strdup(id)) == NULL)
		return FAKE_SCRIPT_NOMEM;
	cursor = script->storage;
	script->name = strsep(&cursor, ";");
	while (cursor != NULL) {
		char *value = strsep(&cursor, ";");
		const char *key = strsep(&value, "=");
		size_t i;

		if (value == NULL)
			return FAKE_SCRIPT_BAD;
		for (i = 0; i < sizeof(fake_script_keys) / sizeof(fake_script_keys[0]); i++) {
			if (strcmp(key, fake_script_keys[i].name) == 0)
				break;
		}
		if (i == sizeof(fake_script_keys) / sizeof(fake_script_keys[0]) ||
		    fake_script_keys[i].parse(script, value) != 0)
			return FAKE_SCRIPT_BAD;
	}
	/*
	 * Two answers to "which state now?" (by count and by time): rather than pick
	 * one silently, the test that wrote both is told its script is wrong.
	 */
	if (script->has_ready && script->state_count > 0)
		return FAKE_SCRIPT_BAD;
	return FAKE_SCRIPT_OK;
}

const char *fake_script_state(const struct fake_script *script, uint64_t authorised,
			      uint64_t age_ms)
{
	uint64_t upto = 0;
	size_t i;

	if (script->has_ready)
		return age_ms < script->ready_ms ? "IN_PROGRESS" : "COMPLETED";
	if (script->state_count == 0) {
		if (age_ms < FAKE_REQUESTED_FOR_MS)
			return "REQUESTED";
		if (age_ms < FAKE_IN_PROGRESS_UNTIL_MS)
			return "IN_PROGRESS";
		return "COMPLETED";
	}
	for (i = 0; i < script->state_count; i++) {
		upto += script->states[i].requests;
		if (authorised <= upto)
			return script->states[i].name;
	}
	return script->states[script->state_count - 1].name;
}

bool fake_state_is_final(const char *state)
{
	return strcmp(state, "COMPLETED") == 0 || strcmp(state, "FAILED") == 0;
}

/* A states= slot may name an HTTP status ("states=IN_PROGRESS,503"): a failure later on. */
int fake_state_as_status(const char *state)
{
	if (strlen(state) != 3 || state[0] < '2' || state[0] > '5' ||
	    strspn(state, "0123456789") != 3)
		return 0;
	return atoi(state);
}
