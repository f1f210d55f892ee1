/*
 * unit_docs.c -- the README's configuration tables and gumloop-gateway.conf(5)
 * against the key table in conf.c, where every key and default is defined
 * once: every key is in both with the same default (the README: global keys;
 * the page: every key that has one), and every key either names exists, in the
 * page in the section it is listed under.
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

#define MANUAL "docs/gumloop-gateway.conf.5"

static char *readme;
static char *manual;

/* The whole file at name under $TOP_SRCDIR (else the working directory), or NULL. */
static char *read_source_file(const char *name)
{
	const char *top = getenv("TOP_SRCDIR");
	char path[1024], *text = NULL;
	FILE *file;
	long size;

	snprintf(path, sizeof(path), "%s/%s", top != NULL ? top : ".", name);
	file = fopen(path, "r");
	if (file == NULL) {
		fprintf(stderr, "cannot read %s (is TOP_SRCDIR the source tree?)\n", path);
		return NULL;
	}
	if (fseek(file, 0, SEEK_END) == 0 && (size = ftell(file)) >= 0 &&
	    fseek(file, 0, SEEK_SET) == 0 && (text = calloc(1, (size_t)size + 1)) != NULL &&
	    fread(text, 1, (size_t)size, file) != (size_t)size) {
		free(text);
		text = NULL;
	}
	fclose(file);
	return text;
}

static int setup(void **state)
{
	(void)state;
	readme = read_source_file("README.md");
	manual = read_source_file(MANUAL);
	return readme != NULL && manual != NULL ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	free(readme);
	free(manual);
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

/*
 * The page lists keys as ".It Cm KEY ..." items of the top-level list of these
 * subsections, one key per item, and gives a default as "Pq default Ql VALUE"
 * (VALUE in double quotes when it has blanks) on that line.
 */
static const struct {
	const char *heading;
	enum conf_key_section section;
} manual_key_lists[] = {
	{ ".Ss Global keys", CONF_KEY_GLOBAL },
	{ ".Ss Credential sections", CONF_KEY_CREDENTIAL },
	{ ".Ss Client sections", CONF_KEY_CLIENT },
};

#define MANUAL_KEY_LIST_COUNT (sizeof(manual_key_lists) / sizeof(manual_key_lists[0]))
#define MANUAL_KEY_ITEM	      ".It Cm "
#define MANUAL_DEFAULT	      " Pq default Ql "

static const char *section_label(enum conf_key_section section)
{
	return section == CONF_KEY_GLOBAL	? "the global keys"
	       : section == CONF_KEY_CREDENTIAL ? "[credential] sections"
						: "[client] sections";
}

struct manual_walk {
	const char *at; /* the next line */
	int list;	/* index into manual_key_lists, -1 outside them */
	int depth;	/* .Bl nesting inside the key list */
};

static int is_request(const char *line, const char *name)
{
	size_t length = strlen(name);

	return strncmp(line, name, length) == 0 && (line[length] == ' ' || line[length] == '\0');
}

/*
 * The next key item of the page: its key into name, its section, the whole
 * line into line (LINE_MAX_LENGTH). 0 when found, -1 at the end of the page.
 */
static int manual_next_key(struct manual_walk *walk, char *name, size_t name_size,
			   enum conf_key_section *section, char *line)
{
	while (*walk->at != '\0') {
		size_t length = strcspn(walk->at, "\n");

		snprintf(line, LINE_MAX_LENGTH, "%.*s", (int)length, walk->at);
		walk->at += length + (walk->at[length] == '\n');
		if (is_request(line, ".Sh") || is_request(line, ".Ss")) {
			walk->list = -1;
			walk->depth = 0;
			for (size_t i = 0; i < MANUAL_KEY_LIST_COUNT; i++) {
				if (strcmp(line, manual_key_lists[i].heading) == 0)
					walk->list = (int)i;
			}
		} else if (walk->list < 0) {
			continue;
		} else if (is_request(line, ".Bl")) {
			walk->depth++;
		} else if (is_request(line, ".El")) {
			walk->depth--;
		} else if (walk->depth == 1 &&
			   strncmp(line, MANUAL_KEY_ITEM, strlen(MANUAL_KEY_ITEM)) == 0) {
			const char *key = line + strlen(MANUAL_KEY_ITEM);

			snprintf(name, name_size, "%.*s", (int)strcspn(key, " "), key);
			*section = manual_key_lists[walk->list].section;
			return 0;
		}
	}
	return -1;
}

/* The key item of name in the list of section, copied into line. 0 when found. */
static int manual_key_line(const char *name, enum conf_key_section section, char *line)
{
	struct manual_walk walk = { .at = manual, .list = -1 };
	enum conf_key_section listed_in;
	char listed[128];

	while (manual_next_key(&walk, listed, sizeof(listed), &listed_in, line) == 0) {
		if (listed_in == section && strcmp(listed, name) == 0)
			return 0;
	}
	return -1;
}

/* The "Pq default Ql VALUE" of a key item, unescaped into value; 0 when it has one. */
static int manual_default(const char *line, char *value, size_t value_size)
{
	const char *at = strstr(line, MANUAL_DEFAULT), *end;
	size_t used = 0;

	if (at == NULL)
		return -1;
	at += strlen(MANUAL_DEFAULT);
	if (*at == '"')
		end = strchr(++at, '"');
	else
		end = at + strcspn(at, " ");
	assert_non_null(end);
	for (; at < end && used + 1 < value_size; at++) {
		if (at[0] == '\\' && at + 1 < end && at[1] == '-')
			at++; /* "\-" is a plain '-' */
		value[used++] = *at;
	}
	value[used] = '\0';
	return 0;
}

static void test_every_key_in_the_manual_with_its_default(void **state)
{
	char line[LINE_MAX_LENGTH], documented[256];
	enum conf_key_section section;
	const char *name, *default_value;

	(void)state;
	for (size_t i = 0; conf_key_at(i, &name, &section, &default_value) == 0; i++) {
		if (manual_key_line(name, section, line) != 0)
			fail_msg(MANUAL " does not list `%s` under %s", name,
				 section_label(section));
		if (manual_default(line, documented, sizeof(documented)) != 0) {
			if (default_value != NULL)
				fail_msg(MANUAL " gives no default for `%s`, the key table \"%s\"",
					 name, default_value);
			continue;
		}
		if (default_value == NULL || strcmp(documented, default_value) != 0)
			fail_msg(MANUAL " says `%s` defaults to \"%s\", the key table \"%s\"", name,
				 documented, default_value != NULL ? default_value : "(none)");
	}
}

static void test_every_key_in_the_manual_exists(void **state)
{
	struct manual_walk walk = { .at = manual, .list = -1 };
	char listed[128], line[LINE_MAX_LENGTH];
	enum conf_key_section listed_in;

	(void)state;
	for (size_t i = 0; i < MANUAL_KEY_LIST_COUNT; i++) {
		if (strstr(manual, manual_key_lists[i].heading) == NULL)
			fail_msg(MANUAL " has no \"%s\"", manual_key_lists[i].heading);
	}
	while (manual_next_key(&walk, listed, sizeof(listed), &listed_in, line) == 0) {
		struct manual_walk rest = walk;
		enum conf_key_section section, again_in;
		const char *name, *default_value;
		char again[128];
		int found = 0;

		for (size_t i = 0; conf_key_at(i, &name, &section, &default_value) == 0; i++)
			found |= section == listed_in && strcmp(name, listed) == 0;
		if (!found)
			fail_msg(MANUAL " lists `%s` under %s, where it is no key", listed,
				 section_label(listed_in));
		while (manual_next_key(&rest, again, sizeof(again), &again_in, line) == 0) {
			if (again_in == listed_in && strcmp(again, listed) == 0)
				fail_msg(MANUAL " lists `%s` twice under %s", listed,
					 section_label(listed_in));
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_key_documented_with_its_default),
		cmocka_unit_test(test_every_documented_key_exists),
		cmocka_unit_test(test_every_key_in_the_manual_with_its_default),
		cmocka_unit_test(test_every_key_in_the_manual_exists),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
