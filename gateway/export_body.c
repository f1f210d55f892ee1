/*
 * export_body.c -- POST /export_data's body, checked by type: what Gumloop
 * documents (../shared/gumloop-export-data.md) and no more, so a data type
 * Gumloop adds tomorrow still goes through, and a malformed date or a missing
 * field is refused with its name before a call is spent on it.
 */
#include "export_body.h"

#include <stdlib.h>
#include <string.h>

#include "json_check.h"

static enum export_body_result bad(const char **message, const char *text)
{
	*message = text;
	return EXPORT_BODY_BAD;
}

static int is_string_array(const cJSON *item, int min, int max)
{
	int count = 0;
	const cJSON *element;

	if (!cJSON_IsArray(item))
		return 0;
	cJSON_ArrayForEach(element, item)
	{
		if (!cJSON_IsString(element) || ++count > max)
			return 0;
	}
	return count >= min;
}

static int digits(const char *text, int count, int *value)
{
	*value = 0;
	for (int i = 0; i < count; i++) {
		if (text[i] < '0' || text[i] > '9')
			return -1;
		*value = *value * 10 + (text[i] - '0');
	}
	return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
	static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : days[m - 1];
}

int export_body_date_time(const char *text, int64_t *seconds, long *nanos)
{
	int y, mo, d, h, mi, s, oh = 0, om = 0, sign = 0;
	const char *p;
	long fraction = 0;
	int scale = 0;

	/* YYYY-MM-DDTHH:MM:SS */
	if (strlen(text) < 20 || digits(text, 4, &y) < 0 || text[4] != '-' ||
	    digits(text + 5, 2, &mo) < 0 || text[7] != '-' || digits(text + 8, 2, &d) < 0 ||
	    (text[10] != 'T' && text[10] != 't') || digits(text + 11, 2, &h) < 0 ||
	    text[13] != ':' || digits(text + 14, 2, &mi) < 0 || text[16] != ':' ||
	    digits(text + 17, 2, &s) < 0)
		return -1;
	if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 59)
		return -1;
	p = text + 19;
	if (*p == '.') {
		p++;
		if (*p < '0' || *p > '9')
			return -1;
		for (; *p >= '0' && *p <= '9'; p++) {
			if (scale < 9) {
				fraction = fraction * 10 + (*p - '0');
				scale++;
			}
		}
		for (; scale < 9; scale++)
			fraction *= 10;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p == '+' ? 1 : -1;
		if (digits(p + 1, 2, &oh) < 0 || p[3] != ':' || digits(p + 4, 2, &om) < 0 ||
		    oh > 23 || om > 59)
			return -1;
		p += 6;
	} else {
		return -1;
	}
	if (*p != '\0')
		return -1;
	*seconds = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s -
		   sign * (oh * 3600 + om * 60);
	*nanos = fraction;
	return 0;
}

static const struct {
	const char *name;
	int (*is)(const cJSON *item);
	const char *message;
} optional_fields[] = {
	{ "data_type", cJSON_IsString, "data_type must be a string" },
	{ "export_level", cJSON_IsString, "export_level must be a string" },
	{ "category_filter", cJSON_IsString, "category_filter must be a string" },
	{ "include_all_workspaces", cJSON_IsBool, "include_all_workspaces must be true or false" },
	{ "include_personal_workspaces", cJSON_IsBool,
	  "include_personal_workspaces must be true or false" },
};

static int is_any_string_array(const cJSON *item)
{
	return is_string_array(item, 0, 1 << 30);
}

static const struct {
	const char *name;
	const char *message;
} optional_arrays[] = {
	{ "workspace_ids", "workspace_ids must be an array of strings" },
	{ "entity_ids", "entity_ids must be an array of strings" },
};

/* Dates, fields and types of a parsed object; user_id is the caller's. */
static enum export_body_result check_fields(const cJSON *tree, const char **message)
{
	const cJSON *start = cJSON_GetObjectItemCaseSensitive(tree, "start_date");
	const cJSON *end = cJSON_GetObjectItemCaseSensitive(tree, "end_date");
	int64_t start_s, end_s;
	long start_ns, end_ns;

	if (!is_string_array(cJSON_GetObjectItemCaseSensitive(tree, "export_fields"), 1,
			     EXPORT_BODY_MAX_FIELDS))
		return bad(message, "export_fields is required: an array of 1 to 100 strings");
	if (start == NULL)
		return bad(message, "start_date is required (an ISO 8601 date-time)");
	if (!cJSON_IsString(start) ||
	    export_body_date_time(start->valuestring, &start_s, &start_ns) < 0)
		return bad(message, "start_date must be an ISO 8601 date-time such as "
				    "2025-01-01T00:00:00Z (with Z or an offset)");
	if (end == NULL)
		return bad(message, "end_date is required (an ISO 8601 date-time)");
	if (!cJSON_IsString(end) || export_body_date_time(end->valuestring, &end_s, &end_ns) < 0)
		return bad(message, "end_date must be an ISO 8601 date-time such as "
				    "2025-12-31T23:59:59Z (with Z or an offset)");
	if (end_s < start_s || (end_s == start_s && end_ns < start_ns))
		return bad(message, "end_date is before start_date");
	for (size_t i = 0; i < sizeof(optional_fields) / sizeof(optional_fields[0]); i++) {
		const cJSON *item = cJSON_GetObjectItemCaseSensitive(tree, optional_fields[i].name);

		if (item != NULL && !optional_fields[i].is(item))
			return bad(message, optional_fields[i].message);
	}
	for (size_t i = 0; i < sizeof(optional_arrays) / sizeof(optional_arrays[0]); i++) {
		const cJSON *item = cJSON_GetObjectItemCaseSensitive(tree, optional_arrays[i].name);

		if (item != NULL && !is_any_string_array(item))
			return bad(message, optional_arrays[i].message);
	}
	return EXPORT_BODY_OK;
}

enum export_body_result export_body_check(const char *text, size_t length, struct export_body *body,
					  const char **message)
{
	const char *why = NULL;
	cJSON *tree, *user_id;
	enum export_body_result result;

	memset(body, 0, sizeof(*body));
	if (length > EXPORT_BODY_MAX_BYTES)
		return bad(message, "the body is over 64 KiB");
	tree = json_check_parse(text, length, &why);
	if (tree == NULL) {
		if (why != NULL && strcmp(why, "out of memory") == 0) {
			*message = why;
			return EXPORT_BODY_NOMEM;
		}
		return bad(message, "the body is not valid JSON (one object, UTF-8, no key twice)");
	}
	if (!cJSON_IsObject(tree)) {
		cJSON_Delete(tree);
		return bad(message, "the body must be a JSON object");
	}
	result = check_fields(tree, message);
	user_id = cJSON_GetObjectItemCaseSensitive(tree, "user_id");
	if (result == EXPORT_BODY_OK && user_id != NULL &&
	    (!cJSON_IsString(user_id) || !query_user_id_valid(user_id->valuestring)))
		result = bad(message, "user_id must be printable ASCII without spaces, "
				      "1 to 256 bytes");
	if (result != EXPORT_BODY_OK) {
		cJSON_Delete(tree);
		return result;
	}
	if (user_id != NULL) {
		memcpy(body->user_id, user_id->valuestring, strlen(user_id->valuestring) + 1);
		body->has_user_id = 1;
		cJSON_DeleteItemFromObjectCaseSensitive(tree, "user_id");
	}
	body->tree = tree;
	return EXPORT_BODY_OK;
}

/* Appends text as a JSON string (quotes included) at out, which has room. */
static size_t put_json_string(char *out, const char *text)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	out[n++] = '"';
	for (const unsigned char *c = (const unsigned char *)text; *c != '\0'; c++) {
		if (*c == '"' || *c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)*c;
		} else if (*c < 0x20) {
			memcpy(out + n, "\\u00", 4);
			out[n + 4] = hex[*c >> 4];
			out[n + 5] = hex[*c & 15];
			n += 6;
		} else {
			out[n++] = (char)*c;
		}
	}
	out[n++] = '"';
	return n;
}

char *export_body_upstream(const struct export_body *body, const char *user_id, size_t *length)
{
	char *rest = cJSON_PrintUnformatted(body->tree);
	size_t rest_length, n = 0;
	char *out;

	if (rest == NULL)
		return NULL;
	rest_length = strlen(rest); /* "{...}" or "{}" */
	/* {"user_id":  + at most 6 bytes per byte of the id + , + the rest */
	out = malloc(12 + 6 * strlen(user_id) + 2 + rest_length + 1);
	if (out != NULL) {
		memcpy(out, "{\"user_id\":", 11);
		n = 11;
		n += put_json_string(out + n, user_id);
		if (rest_length > 2)
			out[n++] = ',';
		memcpy(out + n, rest + 1, rest_length - 1); /* from after the '{' */
		n += rest_length - 1;
		out[n] = '\0';
		*length = n;
	}
	cJSON_free(rest);
	return out;
}

void export_body_clear(struct export_body *body)
{
	cJSON_Delete(body->tree);
	memset(body, 0, sizeof(*body));
}
