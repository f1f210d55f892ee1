/*
 * conf_ini.c -- reads the config file for conf.c: inih splits lines into
 * KEY = VALUE; this file counts lines, refuses the ones inih would split or
 * misread, tracks sections ("[credential NAME]", "[client NAME]"), applies each
 * value through conf.c's key table (defaults and required keys at a section's
 * end), and collects every error with its line and key, to be sorted and
 * written once the whole file is read.
 */
#include "conf_parser.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

void conf_report(struct parser *parser, int line, const char *key, const char *fmt, ...)
{
	char message[512];
	char *text = NULL;
	struct error *errors;
	va_list ap;
	int length;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	if (key)
		length = asprintf(&text, "%s:%d: %s: %s", parser->path, line, key, message);
	else
		length = asprintf(&text, "%s:%d: %s", parser->path, line, message);
	errors = reallocarray(parser->errors, parser->error_count + 1, sizeof(*errors));
	if (length < 0 || !errors) {
		if (length >= 0)
			free(text);
		parser->out_of_memory = 1;
		return;
	}
	parser->errors = errors;
	errors[parser->error_count] = (struct error){ line, parser->error_count, text };
	parser->error_count++;
}

static void apply(struct parser *parser, struct section *section, const struct conf_key *key,
		  const char *value, int line)
{
	struct setting setting = {
		.parser = parser,
		.section = section,
		.key = key,
		.field = (char *)conf_section_struct(parser->conf, section) + key->offset,
		.value = value,
		.line = line,
	};

	if (key->set(&setting) == -1)
		conf_report(parser, line, key->name, "%s", setting.why);
}

static const struct conf_key *find_key(enum section_kind kind, const char *name)
{
	size_t i;

	for (i = 0; i < conf_key_count; i++) {
		if (conf_keys[i].section == kind && strcmp(conf_keys[i].name, name) == 0)
			return &conf_keys[i];
	}
	return NULL;
}

int conf_key_line(const struct section *section, const char *name)
{
	return section->key_lines[find_key(section->kind, name) - conf_keys];
}

static struct section *current_section(struct parser *parser)
{
	return &parser->sections[parser->section_count - 1];
}

/* Required keys, defaults, and what needs the whole section. */
static void end_section(struct parser *parser)
{
	struct section *section = current_section(parser);
	size_t i;

	if (section->kind == SECTION_INVALID)
		return;
	for (i = 0; i < conf_key_count; i++) {
		if (conf_keys[i].section != section->kind || section->key_lines[i] != 0)
			continue;
		if (conf_keys[i].flags & KEY_REQUIRED)
			conf_report(parser, section->header_line, conf_keys[i].name,
				    "missing in %s", section->header);
		else if (conf_keys[i].default_value)
			apply(parser, section, &conf_keys[i], conf_keys[i].default_value, 0);
	}
	conf_check_section(parser, section);
}

static int valid_name(const char *name)
{
	size_t length = strlen(name);

	return length > 0 && length <= CONF_NAME_MAX_LENGTH &&
	       strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			    "0123456789_-.") == length;
}

/* Reports a name already taken by a section of the same kind, then adds the entry. */
static int add_named_entry(struct parser *parser, struct section *section, const char *name)
{
	size_t i;

	for (i = 0; i + 1 < parser->section_count; i++) {
		if (parser->sections[i].kind == section->kind &&
		    strcmp(parser->sections[i].name, name) == 0)
			conf_report(parser, section->header_line, section->header,
				    "duplicate name, first defined at line %d",
				    parser->sections[i].header_line);
	}
	return conf_add_entry(parser->conf, section, name);
}

/* Classifies "[KIND NAME]" (inner is the text between the brackets). */
static void start_section(struct parser *parser, struct section *section, const char *inner)
{
	/* name holds one byte more than CONF_NAME_MAX_LENGTH, so a long name is caught */
	char kind[32] = "", name[CONF_NAME_MAX_LENGTH + 2] = "", extra[2] = "";
	int words = sscanf(inner, "%31s %65s %1s", kind, name, extra);

	if (words >= 1 && strcmp(kind, "credential") == 0)
		section->kind = SECTION_CREDENTIAL;
	else if (words >= 1 && strcmp(kind, "client") == 0)
		section->kind = SECTION_CLIENT;
	else {
		conf_report(parser, section->header_line, section->header,
			    "unknown section (expected [credential NAME] or [client NAME])");
		return;
	}
	if (words != 2 || !valid_name(name)) {
		conf_report(parser, section->header_line, section->header,
			    "expected [%s NAME], NAME made of letters, digits, '_', '-', '.' "
			    "(at most %d)",
			    kind, CONF_NAME_MAX_LENGTH);
		section->kind = SECTION_INVALID;
		return;
	}
	if (add_named_entry(parser, section, name) == -1) {
		conf_report(parser, section->header_line, section->header, "out of memory");
		section->kind = SECTION_INVALID;
	}
}

/*
 * Called by the reader for a "[...]" line, so even a section without keys (which
 * inih never reports) is seen, with its line number.
 */
static void begin_section(struct parser *parser, const char *line)
{
	const char *close = strchr(line, ']');
	const char *after = close ? close + 1 + strspn(close + 1, " \t\r\n") : NULL;
	struct section *sections, *section;
	char *inner;

	end_section(parser);
	sections = reallocarray(parser->sections, parser->section_count + 1, sizeof(*sections));
	if (!sections) {
		parser->out_of_memory = 1;
		current_section(parser)->kind = SECTION_INVALID;
		return;
	}
	parser->sections = sections;
	section = &sections[parser->section_count++];
	*section = (struct section){ .kind = SECTION_INVALID,
				     .header_line = parser->line,
				     .name = "" };
	if (!close || (*after != '\0' && *after != ';' && *after != '#')) {
		conf_report(parser, parser->line, NULL,
			    "syntax error: expected [KIND NAME] on a line of its own");
		return;
	}
	inner = strndup(line + 1, (size_t)(close - line - 1));
	if (!inner || asprintf(&section->header, "[%s]", inner) < 0) {
		section->header = NULL;
		parser->out_of_memory = 1;
	} else {
		start_section(parser, section, inner);
	}
	free(inner);
}

static void finish_pending_line(struct parser *parser)
{
	if (parser->pending_line)
		conf_report(parser, parser->pending_line, NULL,
			    "syntax error: expected KEY = VALUE");
	parser->pending_line = 0;
}

/*
 * inih's reader: counts lines (inih handles a line right after we return it),
 * refuses lines that do not fit inih's buffer instead of letting inih split them,
 * and drops leading blanks so inih never takes an indented line for the
 * continuation of the previous value.
 */
static char *read_line(char *buffer, int size, void *stream)
{
	struct parser *parser = stream;
	size_t length, indent;
	int c;

	finish_pending_line(parser);
	if (!fgets(buffer, size, parser->file)) {
		if (ferror(parser->file))
			parser->read_errno = errno;
		return NULL;
	}
	parser->line++;
	length = strlen(buffer);
	if (length == (size_t)size - 1 && buffer[length - 1] != '\n') {
		while ((c = getc(parser->file)) != EOF && c != '\n')
			;
		conf_report(parser, parser->line, NULL, "line too long (at most %d bytes)",
			    size - 2);
		buffer[0] = '\n';
		buffer[1] = '\0';
		return buffer;
	}
	if (parser->line == 1 && strncmp(buffer, "\xEF\xBB\xBF", 3) == 0)
		memmove(buffer, buffer + 3, length - 3 + 1);
	indent = strspn(buffer, " \t\f\v");
	memmove(buffer, buffer + indent, strlen(buffer + indent) + 1);
	if (buffer[0] == '[')
		begin_section(parser, buffer);
	else if (buffer[0] != '\0' && !strchr(";#\r\n", buffer[0]))
		parser->pending_line = parser->line;
	return buffer;
}

/* inih's handler; the section comes from the reader, which knows its line. */
static int handle_key(void *user, const char *section_name, const char *name, const char *value)
{
	struct parser *parser = user;
	struct section *section = current_section(parser);
	const struct conf_key *key;
	int *seen;

	(void)section_name;
	parser->pending_line = 0;
	if (*name == '\0') {
		conf_report(parser, parser->line, NULL, "syntax error: missing key before '='");
		return 1;
	}
	if (section->kind == SECTION_INVALID)
		return 1;
	key = find_key(section->kind, name);
	if (!key) {
		if (section->kind != SECTION_GLOBAL && find_key(SECTION_GLOBAL, name))
			conf_report(parser, parser->line, name,
				    "must come before the first [section]");
		else if (section->kind == SECTION_GLOBAL)
			conf_report(parser, parser->line, name, "unknown key");
		else
			conf_report(parser, parser->line, name, "unknown key in %s",
				    section->header);
		return 1;
	}
	seen = &section->key_lines[key - conf_keys];
	if (*seen && !(key->flags & KEY_REPEATABLE)) {
		conf_report(parser, parser->line, name, "repeated key, first set at line %d",
			    *seen);
		return 1;
	}
	*seen = parser->line;
	if (*value == '\0' && !(key->flags & KEY_MAY_BE_EMPTY)) {
		conf_report(parser, parser->line, name, "missing value");
		return 1;
	}
	apply(parser, section, key, value, parser->line);
	return 1;
}

static int compare_errors(const void *a, const void *b)
{
	const struct error *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

void conf_write_errors(struct parser *parser, char *err, size_t errlen)
{
	size_t used = 0, i;

	if (parser->out_of_memory)
		conf_report(parser, 0, NULL, "out of memory");
	if (errlen == 0)
		return;
	err[0] = '\0';
	if (parser->out_of_memory && parser->error_count == 0) {
		snprintf(err, errlen, "%s:0: out of memory", parser->path);
		return;
	}
	if (parser->error_count == 0)
		return;
	qsort(parser->errors, parser->error_count, sizeof(*parser->errors), compare_errors);
	for (i = 0; i < parser->error_count && used < errlen - 1; i++) {
		int n = snprintf(err + used, errlen - used, "%s%s", i ? "\n" : "",
				 parser->errors[i].text);

		if (n < 0)
			break;
		used += (size_t)n;
	}
}

void conf_parser_free(struct parser *parser)
{
	size_t i, n;

	for (i = 0; i < parser->section_count; i++) {
		struct section *section = &parser->sections[i];

		for (n = 0; n < section->credential_name_count; n++)
			free(section->credential_names[n]);
		free(section->credential_names);
		free(section->header);
	}
	free(parser->sections);
	for (i = 0; i < parser->error_count; i++)
		free(parser->errors[i].text);
	free(parser->errors);
	if (parser->file)
		fclose(parser->file);
}

void conf_ini_read(struct parser *parser)
{
	int ini_result = ini_parse_stream(read_line, parser, handle_key, parser);

	finish_pending_line(parser);
	end_section(parser);
	if (parser->read_errno)
		conf_report(parser, parser->line + 1, NULL, "read error: %s",
			    strerror(parser->read_errno));
	if (ini_result > 0) {
		size_t i;

		for (i = 0; i < parser->error_count; i++) {
			if (parser->errors[i].line == ini_result)
				break;
		}
		if (i == parser->error_count)
			conf_report(parser, ini_result, NULL, "syntax error");
	}
}
