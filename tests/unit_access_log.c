/*
 * unit_access_log.c -- access_log.c's lines, written through its writer thread to
 * a real file: JSON lines parse (cJSON) whatever bytes the fields hold, absent
 * values are null, a line too long for the buffer is dropped rather than cut
 * (a cut line would not be JSON), the text line keeps its shape (durations
 * rounded as %.1f would, a long line cut but still ended), and thousands of lines
 * reach the file whole and in order, each with a well-formed time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <cmocka.h>
#include <netinet/in.h>

#include "access_log.h"

static char path[64];

static int setup(void **state)
{
	int fd;

	(void)state;
	snprintf(path, sizeof(path), "/tmp/unit_access_log.XXXXXX");
	fd = mkstemp(path);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	return 0;
}

/* Writes entries through a log opened on the file, closes it, returns the file. */
static char *write_entries(int json, const struct access_log_entry *entries, size_t count)
{
	struct access_log *log = NULL;
	char *text = calloc(1, 65536);
	FILE *f;
	size_t i, n;

	assert_non_null(text);
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(access_log_open(path, json, &log), 0);
	assert_non_null(log);
	for (i = 0; i < count; i++)
		access_log_request(log, &entries[i]);
	access_log_close(log);
	f = fopen(path, "r");
	assert_non_null(f);
	n = fread(text, 1, 65535, f);
	fclose(f);
	text[n] = '\0';
	return text;
}

static struct sockaddr_storage peer4(void)
{
	struct sockaddr_storage peer;
	struct sockaddr_in *in = (struct sockaddr_in *)&peer;

	memset(&peer, 0, sizeof(peer));
	in->sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, "10.1.2.3", &in->sin_addr), 1);
	return peer;
}

/* A request with only what every line needs; callers set the rest. */
static struct access_log_entry plain_entry(const struct sockaddr_storage *peer, const char *target,
					   int status)
{
	return (struct access_log_entry){ .peer = peer,
					  .client = "",
					  .credential = "",
					  .method = "GET",
					  .path = target,
					  .route = "other",
					  .status = status,
					  .export_id = "" };
}

static const char *field(const cJSON *object, const char *name)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, name);

	assert_non_null(item);
	return cJSON_IsString(item) ? item->valuestring : NULL;
}

static void test_json_escapes_any_byte(void **state)
{
	struct sockaddr_storage peer = peer4();
	struct access_log_entry entry = {
		.peer = &peer,
		.client = "cli\"ent\\",
		.credential = "",
		.method = "GET",
		.path = "/p\x01\x1f\x7f\xff\xc3(",
		.route = "other",
		.status = 404,
		.bytes = 70,
		.ms = 1.25,
		.cache = NULL,
		.upstream_status = 0,
		.export_id = "id\n\t",
		.wait = "timeout",
		.joined = 1,
		.outcome = "client-closed",
	};
	char *text = write_entries(1, &entry, 1);
	cJSON *object;

	(void)state;
	assert_non_null(strchr(text, '\n'));
	assert_ptr_equal(strchr(text, '\n'), text + strlen(text) - 1);
	object = cJSON_Parse(text);
	if (object == NULL)
		fail_msg("not JSON: %s", text);
	assert_string_equal(field(object, "peer"), "10.1.2.3");
	assert_string_equal(field(object, "client"), "cli\"ent\\");
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(object, "credential")));
	/* each byte outside printable ASCII is its Latin-1 code point, in UTF-8 */
	assert_string_equal(field(object, "path"), "/p\x01\x1f\x7f\xc3\xbf\xc3\x83(");
	assert_string_equal(field(object, "route"), "other");
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(object, "status")->valueint, 404);
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(object, "bytes")->valueint, 70);
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(object, "cache")));
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(object, "upstream_status")));
	assert_string_equal(field(object, "export_id"), "id\n\t");
	assert_string_equal(field(object, "wait"), "timeout");
	assert_string_equal(field(object, "fanout"), "joined");
	assert_string_equal(field(object, "outcome"), "client-closed");
	assert_non_null(field(object, "time"));
	assert_int_equal(strlen(field(object, "time")), strlen("2026-12-02T20:29:48.133Z"));
	/* nothing but escapes and printable ASCII on the line */
	for (const char *c = text; *c != '\n'; c++)
		assert_true(*c >= 0x20 && *c < 0x7f);
	cJSON_Delete(object);
	free(text);
}

static void test_json_line_too_long_is_dropped_whole(void **state)
{
	struct sockaddr_storage peer = peer4();
	char *huge = malloc(4000);
	struct access_log_entry entries[2] = { plain_entry(&peer, huge, 414),
					       plain_entry(&peer, "/ok", 404) };
	char *text;
	cJSON *object;

	(void)state;
	assert_non_null(huge);
	memset(huge, '"', 3999); /* 7998 bytes escaped */
	huge[3999] = '\0';
	text = write_entries(1, entries, 2);
	object = cJSON_Parse(text);
	if (object == NULL)
		fail_msg("not JSON: %s", text);
	assert_string_equal(field(object, "path"), "/ok");
	assert_int_equal(strchr(text, '\n') - text + 1, (long)strlen(text));
	cJSON_Delete(object);
	free(text);
	free(huge);
}

static void test_text_line(void **state)
{
	struct sockaddr_storage peer = peer4();
	struct access_log_entry entry = {
		.peer = &peer,
		.client = "reports",
		.credential = "default",
		.method = "GET",
		.path = "/export_status",
		.route = "export_status",
		.status = 200,
		.bytes = 147,
		.ms = 2.5,
		.cache = "HIT",
		.upstream_status = 200,
		.export_id = "e1",
		.wait = "final",
		.joined = 0,
		.outcome = NULL,
	};
	char *text = write_entries(0, &entry, 1);

	(void)state;
	assert_string_equal(text,
			    "10.1.2.3 client=reports credential=default \"GET /export_status\" "
			    "200 147 2.5ms cache=HIT upstream=200 export=e1 wait=final\n");
	free(text);
}

/* Durations keep one decimal, rounded as %.1f rounds them. */
static void test_text_durations(void **state)
{
	static const struct {
		double ms;
		const char *text;
	} cases[] = {
		{ 0.04, " 0.0ms " },	   { 0.05001, " 0.1ms " },     { 9.96, " 10.0ms " },
		{ 1234.56, " 1234.6ms " }, { 60000.0, " 60000.0ms " }, { -1.0, " 0.0ms " },
	};
	struct sockaddr_storage peer = peer4();
	struct access_log_entry entries[6];
	char *text, *line;
	size_t i;

	(void)state;
	for (i = 0; i < 6; i++) {
		entries[i] = plain_entry(&peer, "/x", 200);
		entries[i].ms = cases[i].ms;
	}
	text = write_entries(0, entries, 6);
	line = text;
	for (i = 0; i < 6; i++) {
		char *end = strchr(line, '\n');

		assert_non_null(end);
		*end = '\0';
		if (strstr(line, cases[i].text) == NULL)
			fail_msg("%g ms: want '%s' in '%s'", cases[i].ms, cases[i].text, line);
		line = end + 1;
	}
	assert_string_equal(line, "");
	free(text);
}

/* A text line too long for the buffer is cut, and still ends its line. */
static void test_text_line_cut_keeps_newline(void **state)
{
	struct sockaddr_storage peer = peer4();
	char *huge = malloc(4000);
	struct access_log_entry entries[2] = { plain_entry(&peer, huge, 414),
					       plain_entry(&peer, "/ok", 404) };
	char *text, *second;

	(void)state;
	assert_non_null(huge);
	memset(huge, 'a', 3999);
	huge[3999] = '\0';
	text = write_entries(0, entries, 2);
	second = strchr(text, '\n');
	assert_non_null(second);
	assert_int_equal(second - text + 1, 2048);
	assert_true(strncmp(text, "10.1.2.3 client=- credential=- \"GET aaaa", 40) == 0);
	assert_string_equal(second + 1, "10.1.2.3 client=- credential=- \"GET /ok\" 404 0 0.0ms "
					"cache=- upstream=0 export=-\n");
	free(text);
	free(huge);
}

/* Thousands of lines, more than the writer takes in one batch, each whole and in
 * order, with the time of day they were written. */
static void test_many_lines_arrive_whole(void **state)
{
	enum { COUNT = 3000 };
	struct sockaddr_storage peer = peer4();
	struct access_log *log = NULL;
	char *text = malloc(COUNT * 512), *line;
	char id[32];
	FILE *f;
	size_t n;
	int i;

	(void)state;
	assert_non_null(text);
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(access_log_open(path, 1, &log), 0);
	for (i = 0; i < COUNT; i++) {
		struct access_log_entry entry = { .peer = &peer,
						  .client = "c",
						  .credential = "k",
						  .method = "GET",
						  .path = "/export_status",
						  .route = "export_status",
						  .status = 200,
						  .bytes = (size_t)i,
						  .ms = i / 10.0,
						  .cache = "HIT",
						  .upstream_status = 200,
						  .export_id = id };

		snprintf(id, sizeof(id), "e%d", i);
		access_log_request(log, &entry);
		if (i == COUNT / 2)
			usleep(20 * 1000); /* let the writer take a first batch */
	}
	access_log_close(log);
	f = fopen(path, "r");
	assert_non_null(f);
	n = fread(text, 1, COUNT * 512 - 1, f);
	fclose(f);
	text[n] = '\0';
	line = text;
	for (i = 0; i < COUNT; i++) {
		char *end = strchr(line, '\n');
		const cJSON *when;
		cJSON *object;
		int year, month, day, hour, minute, second, ms;
		double duration;
		char z;

		assert_non_null(end);
		*end = '\0';
		object = cJSON_Parse(line);
		if (object == NULL)
			fail_msg("line %d is not JSON: %s", i, line);
		snprintf(id, sizeof(id), "e%d", i);
		assert_string_equal(field(object, "export_id"), id);
		assert_int_equal(cJSON_GetObjectItemCaseSensitive(object, "bytes")->valueint, i);
		duration = cJSON_GetObjectItemCaseSensitive(object, "duration_ms")->valuedouble;
		assert_true(duration > i / 10.0 - 1e-9 && duration < i / 10.0 + 1e-9);
		when = cJSON_GetObjectItemCaseSensitive(object, "time");
		assert_true(cJSON_IsString(when));
		assert_int_equal(sscanf(when->valuestring, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &year,
					&month, &day, &hour, &minute, &second, &ms, &z),
				 8);
		assert_true(year >= 2024 && month >= 1 && month <= 12 && day >= 1 && day <= 31);
		assert_true(hour < 24 && minute < 60 && second < 61 && ms < 1000 && z == 'Z');
		cJSON_Delete(object);
		line = end + 1;
	}
	assert_string_equal(line, "");
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_json_escapes_any_byte),
		cmocka_unit_test(test_json_line_too_long_is_dropped_whole),
		cmocka_unit_test(test_text_line),
		cmocka_unit_test(test_text_durations),
		cmocka_unit_test(test_text_line_cut_keeps_newline),
		cmocka_unit_test(test_many_lines_arrive_whole),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
