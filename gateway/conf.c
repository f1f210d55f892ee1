/*
 * conf.c -- loads the gateway's INI file: inih splits lines into KEY = VALUE, a
 * table of keys validates each one, secrets are resolved, and every error is
 * collected with its file, line and key. Not the place for runtime state.
 *
 * Error lines are "FILE:LINE: KEY: message". KEY is the key, or the section
 * header ("[client reports]") for errors about a whole section; errors about a
 * line rather than a key ("syntax error", "line too long") have no KEY part.
 * A missing required key is reported at its section's header line; errors about
 * the file as a whole (no [credential] section, cannot open) at line 0. In err,
 * errors are sorted by line and separated by '\n', without a final newline.
 */
#include "conf.h"

#include "cidr.h"
#include "secret.h"

#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>
#include <openssl/crypto.h>

#define SECOND_MS INT64_C(1000)
#define MINUTE_MS (60 * SECOND_MS)
#define HOUR_MS	  (60 * MINUTE_MS)
#define DAY_MS	  (24 * HOUR_MS)

#define NAME_MAX_LENGTH 64	/* credential and client names */
#define RATE_MAX	1000000 /* requests per second or per minute */
#define LIST_SEPARATORS " \t,"

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

static int set_listen(struct setting *setting);
static int set_path(struct setting *setting);
static int set_readable_path(struct setting *setting);
static int set_allow(struct setting *setting);
static int set_admin_allow(struct setting *setting);
static int set_upstream(struct setting *setting);
static int set_duration(struct setting *setting);
static int set_count(struct setting *setting);
static int set_secret(struct setting *setting);
static int set_token(struct setting *setting);
static int set_credential_kind(struct setting *setting);
static int set_credential_names(struct setting *setting);
static int set_rate(struct setting *setting);

#define GLOBAL(name, set, field, min, max, default_value, flags)                                   \
	{                                                                                          \
		SECTION_GLOBAL, name, set, offsetof(struct conf, field), min, max, default_value,  \
			flags                                                                      \
	}
#define CREDENTIAL(name, set, field, default_value, flags)                                         \
	{                                                                                          \
		SECTION_CREDENTIAL, name, set, offsetof(struct conf_credential, field), 0, 0,      \
			default_value, flags                                                       \
	}
#define CLIENT(name, set, field, flags)                                                            \
	{                                                                                          \
		SECTION_CLIENT, name, set, offsetof(struct conf_client, field), 0, 0, NULL, flags  \
	}

static const struct conf_key keys[] = {
	GLOBAL("listen", set_listen, listens, 0, 0, "127.0.0.1:8080", KEY_REPEATABLE),
	GLOBAL("tls_cert", set_path, tls_cert, 0, 0, NULL, 0),
	GLOBAL("tls_key", set_path, tls_key, 0, 0, NULL, 0),
	GLOBAL("allow", set_allow, allow, 0, 0, "127.0.0.0/8 ::1/128", 0),
	GLOBAL("admin_allow", set_admin_allow, admin_allow, 0, 0, "127.0.0.0/8 ::1/128", 0),
	GLOBAL("upstream", set_upstream, upstream, 0, 0, "https://api.gumloop.com/api/v1", 0),
	GLOBAL("upstream_ca", set_readable_path, upstream_ca, 0, 0, NULL, KEY_MAY_BE_EMPTY),
	GLOBAL("upstream_timeout", set_duration, upstream_timeout_ms, 1, HOUR_MS, "30s", 0),
	GLOBAL("upstream_idle_timeout", set_duration, upstream_idle_timeout_ms, 1, HOUR_MS, "60s",
	       0),
	GLOBAL("upstream_max_connections", set_count, upstream_max_connections, 1, 100000, "64", 0),
	GLOBAL("upstream_keepalive_timeout", set_duration, upstream_keepalive_timeout_ms, 1000,
	       HOUR_MS, "60s", 0),
	GLOBAL("cache_pending_ttl", set_duration, cache_pending_ttl_ms, 0, DAY_MS, "2s", 0),
	GLOBAL("cache_final_ttl", set_duration, cache_final_ttl_ms, 0, DAY_MS, "60s", 0),
	GLOBAL("cache_error_ttl", set_duration, cache_error_ttl_ms, 0, DAY_MS, "1s", 0),
	GLOBAL("cache_stale_if_error", set_duration, cache_stale_if_error_ms, 0, DAY_MS, "5m", 0),
	GLOBAL("cache_max_entries", set_count, cache_max_entries, 1, 10000000, "100000", 0),
	GLOBAL("max_connections", set_count, max_connections, 1, 1000000, "10000", 0),
	GLOBAL("max_downloads", set_count, max_downloads, 1, 100000, "256", 0),
	GLOBAL("client_timeout", set_duration, client_timeout_ms, 1, HOUR_MS, "30s", 0),
	GLOBAL("drain_timeout", set_duration, drain_timeout_ms, 0, HOUR_MS, "30s", 0),
	GLOBAL("access_log", set_path, access_log, 0, 0, "-", 0),
	CREDENTIAL("user_id", set_secret, user_id, NULL, KEY_REQUIRED),
	CREDENTIAL("api_key", set_secret, api_key, NULL, KEY_REQUIRED),
	CREDENTIAL("kind", set_credential_kind, kind, "personal", 0),
	CLIENT("token", set_token, token, KEY_REQUIRED),
	CLIENT("credentials", set_credential_names, credentials, KEY_REQUIRED),
	CLIENT("rate", set_rate, rate_per_second, 0),
};

#define KEY_COUNT (sizeof(keys) / sizeof(keys[0]))

int conf_key_at(size_t i, const char **name, enum conf_key_section *section,
		const char **default_value)
{
	if (i >= KEY_COUNT)
		return -1;
	*name = keys[i].name;
	*section = keys[i].section == SECTION_CREDENTIAL ? CONF_KEY_CREDENTIAL
		   : keys[i].section == SECTION_CLIENT	 ? CONF_KEY_CLIENT
							 : CONF_KEY_GLOBAL;
	*default_value = keys[i].default_value;
	return 0;
}

struct section {
	enum section_kind kind;
	size_t index;		  /* into conf->credentials or conf->clients */
	const char *name;	  /* owned by the conf entry */
	char *header;		  /* "[client reports]", for messages */
	int header_line;	  /* 0 for the global section */
	int key_lines[KEY_COUNT]; /* where each of keys[] was set; 0: absent */
	char **credential_names;  /* client: resolved once the whole file is read */
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

static void report(struct parser *parser, int line, const char *key, const char *fmt, ...)
	LOG_PRINTF(4, 5);

static void report(struct parser *parser, int line, const char *key, const char *fmt, ...)
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

/* Reads one or more decimal digits at *text, moving it past them. */
static int parse_digits(const char **text, uint64_t *value)
{
	const char *p = *text;
	uint64_t result = 0;

	if (!isdigit((unsigned char)*p))
		return -1;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned digit = (unsigned)(*p - '0');

		if (result > (UINT64_MAX - digit) / 10)
			return -1;
		result = result * 10 + digit;
	}
	*text = p;
	*value = result;
	return 0;
}

static const struct {
	const char *suffix;
	int64_t ms;
} duration_units[] = { { "h", HOUR_MS }, { "m", MINUTE_MS }, { "s", SECOND_MS }, { "ms", 1 } };

/* Integers only ("1.5s" is an error): write "1500ms". */
int conf_parse_duration(const char *text, int64_t *ms)
{
	uint64_t number;
	size_t i;

	if (!text || parse_digits(&text, &number) == -1)
		return -1;
	if (*text == '\0') /* a bare number is seconds */
		text = "s";
	for (i = 0; i < sizeof(duration_units) / sizeof(duration_units[0]); i++) {
		int64_t unit = duration_units[i].ms;

		if (strcmp(text, duration_units[i].suffix) != 0)
			continue;
		if (number > (uint64_t)(INT64_MAX / unit))
			return -1;
		*ms = (int64_t)number * unit;
		return 0;
	}
	return -1;
}

static void format_duration(int64_t ms, char *out, size_t outlen)
{
	size_t i;

	for (i = 0; i < sizeof(duration_units) / sizeof(duration_units[0]); i++) {
		if (ms != 0 && ms % duration_units[i].ms == 0)
			break;
	}
	if (i == sizeof(duration_units) / sizeof(duration_units[0]))
		i--; /* 0 */
	snprintf(out, outlen, "%" PRId64 "%s", ms / duration_units[i].ms, duration_units[i].suffix);
}

int conf_parse_size(const char *text, uint64_t *bytes)
{
	uint64_t number, multiplier;

	if (!text || parse_digits(&text, &number) == -1)
		return -1;
	switch (*text) {
	case '\0':
		multiplier = 1;
		break;
	case 'k':
	case 'K':
		multiplier = UINT64_C(1) << 10;
		break;
	case 'm':
	case 'M':
		multiplier = UINT64_C(1) << 20;
		break;
	case 'g':
	case 'G':
		multiplier = UINT64_C(1) << 30;
		break;
	default:
		return -1;
	}
	if (*text != '\0' && text[1] != '\0')
		return -1;
	if (number > UINT64_MAX / multiplier)
		return -1;
	*bytes = number * multiplier;
	return 0;
}

/* Compares in constant time per candidate: the user id comes from a client. */
int conf_find_credential_by_user_id(const struct conf *conf, const char *user_id)
{
	size_t length = strlen(user_id);
	size_t i;

	for (i = 0; i < conf->credential_count; i++) {
		const char *candidate = conf->credentials[i].user_id;

		if (strlen(candidate) == length && CRYPTO_memcmp(candidate, user_id, length) == 0)
			return (int)i;
	}
	return -1;
}

static int set_string(struct setting *setting, const char *value)
{
	char **field = setting->field;

	free(*field);
	*field = strdup(value);
	if (!*field) {
		snprintf(setting->why, sizeof(setting->why), "out of memory");
		return -1;
	}
	return 0;
}

static int set_path(struct setting *setting)
{
	return set_string(setting, setting->value);
}

static const char *unreadable_reason(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

	if (fd == -1)
		return strerror(errno);
	close(fd);
	return NULL;
}

static int set_readable_path(struct setting *setting)
{
	const char *reason;

	if (*setting->value == '\0')
		return 0;
	reason = unreadable_reason(setting->value);
	if (reason) {
		snprintf(setting->why, sizeof(setting->why), "cannot read %s: %s", setting->value,
			 reason);
		return -1;
	}
	return set_string(setting, setting->value);
}

/* "HOST:PORT" or "[V6]:PORT", then optionally " tls". */
static int parse_listen(const char *text, struct conf_listen *listen, char *why, size_t whylen)
{
	char address[INET6_ADDRSTRLEN + 8], host[INET6_ADDRSTRLEN];
	unsigned char binary[16];
	size_t address_length = strcspn(text, " \t");
	const char *rest = text + address_length + strspn(text + address_length, " \t");
	const char *host_start = address, *colon, *port_text;
	int family = AF_INET;
	uint64_t port;

	if (address_length >= sizeof(address)) {
		snprintf(why, whylen, "bad address (expected HOST:PORT or [IPV6]:PORT)");
		return -1;
	}
	memcpy(address, text, address_length);
	address[address_length] = '\0';
	colon = strrchr(address, ':');
	if (address[0] == '[') {
		host_start++;
		family = AF_INET6;
		if (!colon || colon == address || colon[-1] != ']') {
			snprintf(why, whylen, "bad address (expected [IPV6]:PORT)");
			return -1;
		}
		address[colon - 1 - address] = '\0';
	} else if (!colon) {
		snprintf(why, whylen, "missing port (expected HOST:PORT)");
		return -1;
	} else {
		address[colon - address] = '\0';
	}
	if (family == AF_INET && strchr(address, ':')) {
		snprintf(why, whylen, "IPv6 addresses are written in brackets: [::1]:8080");
		return -1;
	}
	if (inet_pton(family, host_start, binary) != 1) {
		snprintf(why, whylen, "host must be a numeric IPv4 or [IPv6] address");
		return -1;
	}
	port_text = colon + 1;
	if (parse_digits(&port_text, &port) == -1 || *port_text != '\0' || port > 65535) {
		snprintf(why, whylen, "port must be a number from 0 to 65535");
		return -1;
	}
	if (*rest != '\0' && strcmp(rest, "tls") != 0) {
		snprintf(why, whylen, "unexpected '%s' after the address (only 'tls' is allowed)",
			 rest);
		return -1;
	}
	inet_ntop(family, binary, host, sizeof(host));
	listen->host = strdup(host);
	listen->port = (uint16_t)port;
	listen->tls = *rest != '\0';
	if (asprintf(&listen->text, family == AF_INET6 ? "[%s]:%u%s" : "%s:%u%s", host,
		     listen->port, listen->tls ? " tls" : "") < 0)
		listen->text = NULL;
	if (!listen->host || !listen->text) {
		free(listen->host);
		free(listen->text);
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	return 0;
}

static int set_listen(struct setting *setting)
{
	struct conf *conf = setting->parser->conf;
	struct conf_listen listen, *listens;
	size_t i;

	if (parse_listen(setting->value, &listen, setting->why, sizeof(setting->why)) == -1)
		return -1;
	for (i = 0; i < conf->listen_count; i++) {
		if (listen.port != 0 && listen.port == conf->listens[i].port &&
		    strcmp(listen.host, conf->listens[i].host) == 0) {
			snprintf(setting->why, sizeof(setting->why), "%s:%u is already listened on",
				 listen.host, listen.port);
			goto fail;
		}
	}
	listens = reallocarray(conf->listens, conf->listen_count + 1, sizeof(*listens));
	if (!listens) {
		snprintf(setting->why, sizeof(setting->why), "out of memory");
		goto fail;
	}
	conf->listens = listens;
	conf->listens[conf->listen_count++] = listen;
	if (listen.tls && setting->parser->first_tls_line == 0)
		setting->parser->first_tls_line = setting->line;
	return 0;
fail:
	free(listen.host);
	free(listen.text);
	return -1;
}

static int parse_cidr_list(struct setting *setting, struct cidr **cidrs, size_t *count)
{
	char *copy = strdup(setting->value), *token, *saveptr = NULL;
	struct cidr *list = NULL, *grown;
	size_t length = 0;

	if (!copy)
		goto out_of_memory;
	for (token = strtok_r(copy, LIST_SEPARATORS, &saveptr); token;
	     token = strtok_r(NULL, LIST_SEPARATORS, &saveptr)) {
		grown = reallocarray(list, length + 1, sizeof(*list));
		if (!grown)
			goto out_of_memory;
		list = grown;
		if (cidr_parse(token, &list[length]) == -1) {
			snprintf(setting->why, sizeof(setting->why),
				 "'%s' is not an address or CIDR (10.0.0.0/8, ::1/128)", token);
			goto fail;
		}
		length++;
	}
	if (length == 0) {
		snprintf(setting->why, sizeof(setting->why), "missing value");
		goto fail;
	}
	free(copy);
	free(*cidrs);
	*cidrs = list;
	*count = length;
	return 0;
out_of_memory:
	snprintf(setting->why, sizeof(setting->why), "out of memory");
fail:
	free(copy);
	free(list);
	return -1;
}

static int set_allow(struct setting *setting)
{
	struct conf *conf = setting->parser->conf;

	return parse_cidr_list(setting, &conf->allow, &conf->allow_count);
}

static int set_admin_allow(struct setting *setting)
{
	struct conf *conf = setting->parser->conf;

	return parse_cidr_list(setting, &conf->admin_allow, &conf->admin_allow_count);
}

/* Printable ASCII without spaces: what a URL may hold here. */
static int is_visible(const char *text)
{
	for (; *text != '\0'; text++) {
		if (*text <= 0x20 || *text >= 0x7f)
			return 0;
	}
	return 1;
}

/* Paths are appended to it, so no query, fragment or trailing slash. */
static int set_upstream(struct setting *setting)
{
	const char *value = setting->value;
	size_t length = strlen(value);

	if (strncmp(value, "https://", 8) != 0) {
		snprintf(setting->why, sizeof(setting->why), "must start with https://");
		return -1;
	}
	if (value[8] == '\0' || value[8] == '/' || strpbrk(value, "?#") || !is_visible(value)) {
		snprintf(setting->why, sizeof(setting->why),
			 "must be https://HOST[:PORT][/PATH] without query or fragment");
		return -1;
	}
	while (value[length - 1] == '/')
		length--;
	free(*(char **)setting->field);
	*(char **)setting->field = strndup(value, length);
	if (!*(char **)setting->field) {
		snprintf(setting->why, sizeof(setting->why), "out of memory");
		return -1;
	}
	return 0;
}

static int set_duration(struct setting *setting)
{
	const struct conf_key *key = setting->key;
	char min[32], max[32];
	int64_t ms;

	if (conf_parse_duration(setting->value, &ms) == -1) {
		snprintf(setting->why, sizeof(setting->why),
			 "'%s' is not a duration (250ms, 30s, 5m, 1h)", setting->value);
		return -1;
	}
	if (ms < key->min || ms > key->max) {
		format_duration(key->min, min, sizeof(min));
		format_duration(key->max, max, sizeof(max));
		snprintf(setting->why, sizeof(setting->why), "must be from %s to %s", min, max);
		return -1;
	}
	*(int64_t *)setting->field = ms;
	return 0;
}

static int set_count(struct setting *setting)
{
	const struct conf_key *key = setting->key;
	const char *end = setting->value;
	uint64_t number;

	if (parse_digits(&end, &number) == -1 || *end != '\0' || number < (uint64_t)key->min ||
	    number > (uint64_t)key->max) {
		snprintf(setting->why, sizeof(setting->why),
			 "must be a whole number from %" PRId64 " to %" PRId64, key->min, key->max);
		return -1;
	}
	*(int64_t *)setting->field = (int64_t)number;
	return 0;
}

static int set_secret(struct setting *setting)
{
	struct parser *parser = setting->parser;
	char **field = setting->field;
	int insecure;

	if (secret_resolve(setting->value, field, &insecure, setting->why, sizeof(setting->why)) ==
	    -1)
		return -1;
	if (insecure)
		log_warn("%s:%d: %s: secret file %s is readable by group or others", parser->path,
			 setting->line, setting->key->name, setting->value + 5);
	return 0;
}

/*
 * A client token is the only thing between the network and the gateway's
 * credential: a short one could be guessed, so 16 bytes is the least taken.
 */
static int set_token(struct setting *setting)
{
	char **field = setting->field;

	if (set_secret(setting) < 0)
		return -1;
	if (strlen(*field) < CONF_MIN_TOKEN_BYTES) {
		snprintf(setting->why, sizeof(setting->why),
			 "a token must be at least %d bytes long", CONF_MIN_TOKEN_BYTES);
		return -1;
	}
	return 0;
}

static int set_credential_kind(struct setting *setting)
{
	enum conf_credential_kind *kind = setting->field;

	if (strcmp(setting->value, "personal") == 0) {
		*kind = CONF_CREDENTIAL_PERSONAL;
	} else if (strcmp(setting->value, "oauth") == 0) {
		*kind = CONF_CREDENTIAL_OAUTH;
	} else {
		snprintf(setting->why, sizeof(setting->why), "must be personal or oauth, not '%s'",
			 setting->value);
		return -1;
	}
	return 0;
}

static int set_credential_names(struct setting *setting)
{
	struct section *section = setting->section;
	char *copy = strdup(setting->value), *token, *saveptr = NULL;
	char **names;

	if (!copy)
		goto out_of_memory;
	for (token = strtok_r(copy, LIST_SEPARATORS, &saveptr); token;
	     token = strtok_r(NULL, LIST_SEPARATORS, &saveptr)) {
		names = reallocarray(section->credential_names, section->credential_name_count + 1,
				     sizeof(*names));
		if (!names)
			goto out_of_memory;
		section->credential_names = names;
		names[section->credential_name_count] = strdup(token);
		if (!names[section->credential_name_count])
			goto out_of_memory;
		section->credential_name_count++;
	}
	free(copy);
	if (section->credential_name_count == 0) {
		snprintf(setting->why, sizeof(setting->why), "missing value");
		return -1;
	}
	return 0;
out_of_memory:
	free(copy);
	snprintf(setting->why, sizeof(setting->why), "out of memory");
	return -1;
}

static int set_rate(struct setting *setting)
{
	const char *unit = setting->value;
	uint64_t number;

	if (parse_digits(&unit, &number) == -1 || number == 0 || number > RATE_MAX ||
	    (strcmp(unit, "/s") != 0 && strcmp(unit, "/m") != 0)) {
		snprintf(setting->why, sizeof(setting->why),
			 "must be N/s or N/m with N from 1 to %d", RATE_MAX);
		return -1;
	}
	*(double *)setting->field = unit[1] == 's' ? (double)number : (double)number / 60;
	return 0;
}

static void *section_struct(struct parser *parser, const struct section *section)
{
	switch (section->kind) {
	case SECTION_GLOBAL:
		return parser->conf;
	case SECTION_CREDENTIAL:
		return &parser->conf->credentials[section->index];
	case SECTION_CLIENT:
		return &parser->conf->clients[section->index];
	case SECTION_INVALID:
		break;
	}
	return NULL;
}

static void apply(struct parser *parser, struct section *section, const struct conf_key *key,
		  const char *value, int line)
{
	struct setting setting = {
		.parser = parser,
		.section = section,
		.key = key,
		.field = (char *)section_struct(parser, section) + key->offset,
		.value = value,
		.line = line,
	};

	if (key->set(&setting) == -1)
		report(parser, line, key->name, "%s", setting.why);
}

static const struct conf_key *find_key(enum section_kind kind, const char *name)
{
	size_t i;

	for (i = 0; i < KEY_COUNT; i++) {
		if (keys[i].section == kind && strcmp(keys[i].name, name) == 0)
			return &keys[i];
	}
	return NULL;
}

static int key_line(const struct section *section, const char *name)
{
	return section->key_lines[find_key(section->kind, name) - keys];
}

static struct section *current_section(struct parser *parser)
{
	return &parser->sections[parser->section_count - 1];
}

/* Required keys, defaults, and what needs the whole section. */
static void end_section(struct parser *parser)
{
	struct section *section = current_section(parser);
	struct conf *conf = parser->conf;
	size_t i;

	if (section->kind == SECTION_INVALID)
		return;
	for (i = 0; i < KEY_COUNT; i++) {
		if (keys[i].section != section->kind || section->key_lines[i] != 0)
			continue;
		if (keys[i].flags & KEY_REQUIRED)
			report(parser, section->header_line, keys[i].name, "missing in %s",
			       section->header);
		else if (keys[i].default_value)
			apply(parser, section, &keys[i], keys[i].default_value, 0);
	}
	if (section->kind == SECTION_CREDENTIAL && conf->credentials[section->index].user_id) {
		const char *user_id = conf->credentials[section->index].user_id;

		for (i = 0; i < section->index; i++) {
			if (conf->credentials[i].user_id &&
			    strcmp(conf->credentials[i].user_id, user_id) == 0)
				report(parser, key_line(section, "user_id"), "user_id",
				       "same user id as [credential %s]",
				       conf->credentials[i].name);
		}
	}
	if (section->kind == SECTION_CLIENT && conf->clients[section->index].token) {
		const char *token = conf->clients[section->index].token;

		for (i = 0; i < section->index; i++) {
			if (conf->clients[i].token && strcmp(conf->clients[i].token, token) == 0)
				report(parser, key_line(section, "token"), "token",
				       "same token as [client %s]", conf->clients[i].name);
		}
	}
}

static int valid_name(const char *name)
{
	size_t length = strlen(name);

	return length > 0 && length <= NAME_MAX_LENGTH &&
	       strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			    "0123456789_-.") == length;
}

/* Adds the conf entry for a [credential NAME] or [client NAME]; sets section->index. */
static int add_named_entry(struct parser *parser, struct section *section, const char *name)
{
	struct conf *conf = parser->conf;
	char *copy = strdup(name);
	size_t i;

	if (!copy)
		return -1;
	for (i = 0; i + 1 < parser->section_count; i++) {
		if (parser->sections[i].kind == section->kind &&
		    strcmp(parser->sections[i].name, name) == 0)
			report(parser, section->header_line, section->header,
			       "duplicate name, first defined at line %d",
			       parser->sections[i].header_line);
	}
	if (section->kind == SECTION_CREDENTIAL) {
		struct conf_credential *grown =
			reallocarray(conf->credentials, conf->credential_count + 1, sizeof(*grown));

		if (!grown)
			goto fail;
		conf->credentials = grown;
		section->index = conf->credential_count++;
		grown[section->index] = (struct conf_credential){ .name = copy };
	} else {
		struct conf_client *grown =
			reallocarray(conf->clients, conf->client_count + 1, sizeof(*grown));

		if (!grown)
			goto fail;
		conf->clients = grown;
		section->index = conf->client_count++;
		grown[section->index] = (struct conf_client){ .name = copy };
	}
	section->name = copy;
	return 0;
fail:
	free(copy);
	return -1;
}

/* Classifies "[KIND NAME]" (inner is the text between the brackets). */
static void start_section(struct parser *parser, struct section *section, const char *inner)
{
	/* name holds one byte more than NAME_MAX_LENGTH, so a long name is caught */
	char kind[32] = "", name[NAME_MAX_LENGTH + 2] = "", extra[2] = "";
	int words = sscanf(inner, "%31s %65s %1s", kind, name, extra);

	if (words >= 1 && strcmp(kind, "credential") == 0)
		section->kind = SECTION_CREDENTIAL;
	else if (words >= 1 && strcmp(kind, "client") == 0)
		section->kind = SECTION_CLIENT;
	else {
		report(parser, section->header_line, section->header,
		       "unknown section (expected [credential NAME] or [client NAME])");
		return;
	}
	if (words != 2 || !valid_name(name)) {
		report(parser, section->header_line, section->header,
		       "expected [%s NAME], NAME made of letters, digits, '_', '-', '.' "
		       "(at most %d)",
		       kind, NAME_MAX_LENGTH);
		section->kind = SECTION_INVALID;
		return;
	}
	if (add_named_entry(parser, section, name) == -1) {
		report(parser, section->header_line, section->header, "out of memory");
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
		report(parser, parser->line, NULL,
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
		report(parser, parser->pending_line, NULL, "syntax error: expected KEY = VALUE");
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
		report(parser, parser->line, NULL, "line too long (at most %d bytes)", size - 2);
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
		report(parser, parser->line, NULL, "syntax error: missing key before '='");
		return 1;
	}
	if (section->kind == SECTION_INVALID)
		return 1;
	key = find_key(section->kind, name);
	if (!key) {
		if (section->kind != SECTION_GLOBAL && find_key(SECTION_GLOBAL, name))
			report(parser, parser->line, name, "must come before the first [section]");
		else if (section->kind == SECTION_GLOBAL)
			report(parser, parser->line, name, "unknown key");
		else
			report(parser, parser->line, name, "unknown key in %s", section->header);
		return 1;
	}
	seen = &section->key_lines[key - keys];
	if (*seen && !(key->flags & KEY_REPEATABLE)) {
		report(parser, parser->line, name, "repeated key, first set at line %d", *seen);
		return 1;
	}
	*seen = parser->line;
	if (*value == '\0' && !(key->flags & KEY_MAY_BE_EMPTY)) {
		report(parser, parser->line, name, "missing value");
		return 1;
	}
	apply(parser, section, key, value, parser->line);
	return 1;
}

static void resolve_client_credentials(struct parser *parser)
{
	struct conf *conf = parser->conf;
	size_t s, n, c;

	for (s = 0; s < parser->section_count; s++) {
		struct section *section = &parser->sections[s];
		struct conf_client *client;
		int line;

		if (section->kind != SECTION_CLIENT || section->credential_name_count == 0)
			continue;
		client = &conf->clients[section->index];
		line = key_line(section, "credentials");
		client->credentials =
			calloc(section->credential_name_count, sizeof(*client->credentials));
		if (!client->credentials) {
			report(parser, line, "credentials", "out of memory");
			continue;
		}
		for (n = 0; n < section->credential_name_count; n++) {
			const char *name = section->credential_names[n];
			size_t listed;

			for (c = 0; c < conf->credential_count; c++) {
				if (strcmp(conf->credentials[c].name, name) == 0)
					break;
			}
			for (listed = 0; listed < client->credential_count; listed++) {
				if (client->credentials[listed] == c)
					break;
			}
			if (c == conf->credential_count)
				report(parser, line, "credentials", "unknown credential %s", name);
			else if (listed < client->credential_count)
				report(parser, line, "credentials", "%s is listed twice", name);
			else
				client->credentials[client->credential_count++] = c;
		}
	}
}

/* Reported at the first tls listen when missing, at their own line when unreadable. */
static void check_tls_file(struct parser *parser, const char *name, const char *path)
{
	int line = key_line(&parser->sections[0], name);
	const char *reason;

	if (line == 0) {
		report(parser, parser->first_tls_line, name, "required when a listen uses tls");
		return;
	}
	reason = path ? unreadable_reason(path) : NULL;
	if (reason)
		report(parser, line, name, "cannot read %s: %s", path, reason);
}

static void parser_finish(struct parser *parser, int ini_result)
{
	finish_pending_line(parser);
	end_section(parser);
	if (parser->read_errno)
		report(parser, parser->line + 1, NULL, "read error: %s",
		       strerror(parser->read_errno));
	if (ini_result > 0) {
		size_t i;

		for (i = 0; i < parser->error_count; i++) {
			if (parser->errors[i].line == ini_result)
				break;
		}
		if (i == parser->error_count)
			report(parser, ini_result, NULL, "syntax error");
	}
	resolve_client_credentials(parser);
	if (parser->conf->credential_count == 0)
		report(parser, 0, "[credential]",
		       "at least one [credential NAME] section is required");
	if (parser->first_tls_line) {
		check_tls_file(parser, "tls_cert", parser->conf->tls_cert);
		check_tls_file(parser, "tls_key", parser->conf->tls_key);
	}
}

static int compare_errors(const void *a, const void *b)
{
	const struct error *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

static void write_errors(struct parser *parser, char *err, size_t errlen)
{
	size_t used = 0, i;

	if (parser->out_of_memory)
		report(parser, 0, NULL, "out of memory");
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

static void parser_free(struct parser *parser)
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

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
	struct parser parser = { .path = path };
	struct conf *conf = NULL;
	int ini_result;

	if (errlen > 0)
		err[0] = '\0';
	parser.conf = calloc(1, sizeof(*parser.conf));
	parser.sections = calloc(1, sizeof(*parser.sections));
	if (!parser.conf || !parser.sections || !(parser.conf->path = strdup(path))) {
		parser.out_of_memory = 1;
		goto done;
	}
	parser.section_count = 1;
	parser.sections[0] = (struct section){ .kind = SECTION_GLOBAL, .name = "" };
	parser.file = fopen(path, "re");
	if (!parser.file) {
		report(&parser, 0, NULL, "cannot open: %s", strerror(errno));
		goto done;
	}
	ini_result = ini_parse_stream(read_line, &parser, handle_key, &parser);
	parser_finish(&parser, ini_result);
done:
	if (parser.error_count == 0 && !parser.out_of_memory) {
		conf = parser.conf;
		parser.conf = NULL;
	}
	write_errors(&parser, err, errlen);
	parser_free(&parser);
	conf_free(parser.conf);
	return conf;
}

void conf_free(struct conf *conf)
{
	size_t i;

	if (!conf)
		return;
	for (i = 0; i < conf->listen_count; i++) {
		free(conf->listens[i].text);
		free(conf->listens[i].host);
	}
	free(conf->listens);
	free(conf->tls_cert);
	free(conf->tls_key);
	free(conf->allow);
	free(conf->admin_allow);
	free(conf->upstream);
	free(conf->upstream_ca);
	free(conf->access_log);
	for (i = 0; i < conf->credential_count; i++) {
		free(conf->credentials[i].name);
		secret_free(conf->credentials[i].user_id);
		secret_free(conf->credentials[i].api_key);
	}
	free(conf->credentials);
	for (i = 0; i < conf->client_count; i++) {
		free(conf->clients[i].name);
		secret_free(conf->clients[i].token);
		free(conf->clients[i].credentials);
	}
	free(conf->clients);
	free(conf->path);
	free(conf);
}
