/*
 * unit_docs.c -- the README's configuration tables against the key table in
 * conf.c, where every key and default is defined once: every key is in the
 * README with the same default (global keys), and every key the README's
 * tables name exists.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "conf.h"

#define LINE_MAX_LENGTH 4096

static char *readme;

static int setup(void **state)
{
	const char *top = getenv("TOP_SRCDIR");
	char path[1024];
	FILE *file;
	long size;

	(void)state;
	snprintf(path, sizeof(path), "%s/README.md", top != NULL ? top : ".");
	file = fopen(path, "r");
	if (file == NULL || fseek(file, 0, SEEK_END) != 0 || (size = ftell(file)) < 0 ||
	    fseek(file, 0, SEEK_SET) != 0)
		return -1;
	readme = calloc(1, (size_t)size + 1);
	if (readme == NULL || fread(readme, 1, (size_t)size, file) != (size_t)size)
		return -1;
	fclose(file);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	free(readme);
	return 0;
}

/* The "## Configuration" section: from its heading to the next "## ". */
static const char *configuration(size_t *length)
{
	const char *start = strstr(readme, "\n## Configuration\n");
	const char *end;

	assert_non_null(start);
	end = strstr(start + 1, "\n## ");
	assert_non_null(end);
	*length = (size_t)(end - start);
	return start;
}

/*
 * The table row of key ("| `key` |" or "| `a`, `key` |") in text, its columns
 * copied into first (the key cell) and second (the next one). 0 when found.
 */
static int row_of(const char *text, size_t length, const char *key, char *first, char *second)
{
	char needle[128];
	const char *at = text;

	snprintf(needle, sizeof(needle), "`%s`", key);
	while ((at = strstr(at, "\n| ")) != NULL && at < text + length) {
		const char *line = at + 1, *end = strchr(line, '\n');
		const char *bar1 = line + 1, *bar2 = strchr(bar1, '|');
		const char *bar3 = bar2 != NULL ? strchr(bar2 + 1, '|') : NULL;

		at = line;
		if (end == NULL || bar2 == NULL || bar3 == NULL || bar3 > end)
			continue;
		snprintf(first, LINE_MAX_LENGTH, "%.*s", (int)(bar2 - bar1), bar1);
		if (strstr(first, needle) == NULL)
			continue;
		snprintf(second, LINE_MAX_LENGTH, "%.*s", (int)(bar3 - bar2 - 1), bar2 + 1);
		return 0;
	}
	return -1;
}

static void test_every_key_documented_with_its_default(void **state)
{
	char first[LINE_MAX_LENGTH], second[LINE_MAX_LENGTH], expected[256];
	enum conf_key_section section;
	const char *name, *default_value;
	size_t length;
	const char *text = configuration(&length);

	(void)state;
	for (size_t i = 0; conf_key_at(i, &name, &section, &default_value) == 0; i++) {
		if (row_of(text, length, name, first, second) != 0)
			fail_msg("README's configuration tables do not list `%s`", name);
		if (section != CONF_KEY_GLOBAL)
			continue;
		if (default_value != NULL)
			snprintf(expected, sizeof(expected), " `%s` ", default_value);
		else
			snprintf(expected, sizeof(expected), " – ");
		/* a key without a default may name what happens instead ("system store") */
		if (strcmp(second, expected) != 0 && !(default_value == NULL && second[1] != '`'))
			fail_msg("README says `%s` defaults to \"%s\", the key table \"%s\"", name,
				 second, default_value != NULL ? default_value : "(none)");
	}
}

static void test_every_documented_key_exists(void **state)
{
	size_t length;
	const char *text = configuration(&length), *at = text;

	(void)state;
	while ((at = strstr(at, "\n| `")) != NULL && at < text + length) {
		const char *cell_end = strchr(at + 3, '|');
		const char *key = at + 3;

		at += 3;
		while (cell_end != NULL && (key = strchr(key, '`')) != NULL && key < cell_end) {
			const char *close = strchr(key + 1, '`');
			enum conf_key_section section;
			const char *name, *default_value;
			int found = 0;

			assert_non_null(close);
			for (size_t i = 0; conf_key_at(i, &name, &section, &default_value) == 0;
			     i++)
				found |= strlen(name) == (size_t)(close - key - 1) &&
					 strncmp(name, key + 1, strlen(name)) == 0;
			if (!found)
				fail_msg("README documents `%.*s`, which is no key",
					 (int)(close - key - 1), key + 1);
			key = close + 1;
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_key_documented_with_its_default),
		cmocka_unit_test(test_every_documented_key_exists),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
