/*
 * conf_parser.h -- what the two halves of the config loader share, and nothing
 * else includes: conf.c holds the key table, its setters, the checks that need
 * the whole file, load and free; conf_ini.c reads the file (lines, sections,
 * KEY = VALUE), applies each value through the table, and collects the errors.
 */
#ifndef GATEWAY_CONF_PARSER_H
#define GATEWAY_CONF_PARSER_H

#include "conf.h"
#include "log.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONF_KEY_MAX	     64 /* room in section.key_lines; conf.c checks the table fits */
#define CONF_NAME_MAX_LENGTH 64 /* credential and client names */

enum section_kind {
	SECTION_GLOBAL, /* the keys before the first [section] */
	SECTION_CREDENTIAL,
	SECTION_CLIENT,
	SECTION_INVALID, /* a bad header, already reported: its keys are skipped */
};

enum key_flags {
	KEY_REPEATABLE = 1,
	KEY_REQUIRED = 2,
	KEY_MAY_BE_EMPTY = 4, /* an empty value means "unset" */
};

struct setting;

struct conf_key {
	enum section_kind section;
	const char *name;
	int (*set)(struct setting *setting);
	size_t offset;		   /* of the field in conf, conf_credential or conf_client */
	int64_t min, max;	   /* durations (ms) and counts */
	const char *default_value; /* applied, through set, when the key is absent */
	int flags;
};

struct section {
	enum section_kind kind;
	size_t index;		     /* into conf->credentials or conf->clients */
	const char *name;	     /* owned by the conf entry */
	char *header;		     /* "[client reports]", for messages */
	int header_line;	     /* 0 for the global section */
	int key_lines[CONF_KEY_MAX]; /* where each of conf_keys[] was set; 0: absent */
	char **credential_names;     /* client: resolved once the whole file is read */
	size_t credential_name_count;
};

struct error {
	int line;
	size_t order; /* keeps errors on one line in the order they were found */
	char *text;
};

struct parser {
	const char *path;
	FILE *file;
	int read_errno;
	int line;	  /* the line inih is working on */
	int pending_line; /* a KEY = VALUE line whose handler call has not come yet */
	int first_tls_line;
	struct conf *conf;
	struct section *sections; /* [0] is the global one; the last is current */
	size_t section_count;
	struct error *errors;
	size_t error_count;
	int out_of_memory;
};

/* One KEY = VALUE being applied, from the file or from the key's default. */
struct setting {
	struct parser *parser;
	struct section *section;
	const struct conf_key *key;
	void *field;
	const char *value;
	int line;
	char why[256];
};

/* conf.c: the table, and what the reader asks of the conf it fills. */
extern const struct conf_key conf_keys[];
extern const size_t conf_key_count;
/* Adds the conf entry for a [credential NAME] or [client NAME]; sets index and name. */
MUST_CHECK int conf_add_entry(struct conf *conf, struct section *section, const char *name);
/* The struct a section's keys are written into (conf, a credential or a client). */
void *conf_section_struct(struct conf *conf, const struct section *section);
/* What needs a whole section (called once it ends, defaults applied). */
void conf_check_section(struct parser *parser, const struct section *section);

/* conf_ini.c: reading, and errors. */
void conf_report(struct parser *parser, int line, const char *key, const char *fmt, ...)
	LOG_PRINTF(4, 5);
/* The line a key was set at in this section, 0 when absent. */
int conf_key_line(const struct section *section, const char *name);
/*
 * Reads parser->file to its end into parser->conf (parser->sections[0] being
 * the global section), then ends the last section: every key and section
 * error is reported.
 */
void conf_ini_read(struct parser *parser);
/* Every error, sorted by line, into err (see conf.c's header comment). */
void conf_write_errors(struct parser *parser, char *err, size_t errlen);
/* Frees the parser's sections and errors and closes its file (not its conf). */
void conf_parser_free(struct parser *parser);

#endif
