/*
 * conf.c -- the gateway's config keys: one table says where each key may stand,
 * how its value is checked and stored (its setter), and its default; then the
 * checks that need the whole file, and load and free. Reading the file and
 * collecting errors is conf_ini.c's job, secrets secret.c's, number forms
 * units.c's. Not the place for runtime state.
 *
 * Error lines are "FILE:LINE: KEY: message". KEY is the key, or the section
 * header ("[client reports]") for errors about a whole section; errors about a
 * line rather than a key ("syntax error", "line too long") have no KEY part.
 * A missing required key is reported at its section's header line; errors about
 * the file as a whole (no [credential] section, cannot open) at line 0. In err,
 * errors are sorted by line and separated by '\n', without a final newline.
 */
#include "conf.h"
#include "conf_parser.h"

#include "cidr.h"
#include "conf_values.h"
#include "log.h"
#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define RATE_MAX 1000000 /* requests per second or per minute */

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
static int set_access_log_format(struct setting *setting);
static int set_credential_names(struct setting *setting);
static int set_rate(struct setting *setting);
static int set_scopes(struct setting *setting);
static int set_size(struct setting *setting);
static int set_spool_dir(struct setting *setting);
static int set_redis(struct setting *setting);
static int set_redis_secret(struct setting *setting);
static int set_redis_prefix(struct setting *setting);

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
#define CLIENT(name, set, field, default_value, flags)                                             \
	{                                                                                          \
		SECTION_CLIENT, name, set, offsetof(struct conf_client, field), 0, 0,              \
			default_value, flags                                                       \
	}

const struct conf_key conf_keys[] = {
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
	GLOBAL("access_log_format", set_access_log_format, access_log_json, 0, 0, "text", 0),
	GLOBAL("idempotency_ttl", set_duration, idempotency_ttl_ms, 0, 30 * DAY_MS, "24h", 0),
	GLOBAL("idempotency_max_keys", set_count, idempotency_max_keys, 1, 10000000, "100000", 0),
	GLOBAL("wait_max", set_duration, wait_max_ms, 0, HOUR_MS, "25s", 0),
	GLOBAL("max_waiting", set_count, max_waiting, 0, 1000000, "10000", 0),
	GLOBAL("download_spool_dir", set_spool_dir, download_spool_dir, 0, 0, "/var/tmp", 0),
	GLOBAL("download_spool_max", set_size, download_spool_max, 0, INT64_MAX, "4g", 0),
	GLOBAL("download_cache_ttl", set_duration, download_cache_ttl_ms, 0, DAY_MS, "0", 0),
	GLOBAL("redis", set_redis, redis, 0, 0, NULL, 0),
	GLOBAL("redis_user", set_redis_secret, redis_user, 0, 0, NULL, 0),
	GLOBAL("redis_password", set_redis_secret, redis_password, 0, 0, NULL, 0),
	GLOBAL("redis_db", set_count, redis_db, 0, 1000000, "0", 0),
	GLOBAL("redis_prefix", set_redis_prefix, redis_prefix, 0, 0, "gumloop-gateway:", 0),
	GLOBAL("redis_timeout", set_duration, redis_timeout_ms, 1, 60000, "250ms", 0),
	CREDENTIAL("user_id", set_secret, user_id, NULL, KEY_REQUIRED),
	CREDENTIAL("api_key", set_secret, api_key, NULL, KEY_REQUIRED),
	CREDENTIAL("kind", set_credential_kind, kind, "personal", 0),
	CLIENT("token", set_token, token, NULL, KEY_REQUIRED),
	CLIENT("credentials", set_credential_names, credentials, NULL, KEY_REQUIRED),
	CLIENT("rate", set_rate, rate_per_second, NULL, 0),
	CLIENT("scopes", set_scopes, scopes, "status download", 0),
};

const size_t conf_key_count = sizeof(conf_keys) / sizeof(conf_keys[0]);
_Static_assert(sizeof(conf_keys) / sizeof(conf_keys[0]) <= CONF_KEY_MAX, "raise CONF_KEY_MAX");

int conf_key_at(size_t i, const char **name, enum conf_key_section *section,
		const char **default_value)
{
	if (i >= conf_key_count)
		return -1;
	*name = conf_keys[i].name;
	*section = conf_keys[i].section == SECTION_CREDENTIAL ? CONF_KEY_CREDENTIAL
		   : conf_keys[i].section == SECTION_CLIENT   ? CONF_KEY_CLIENT
							      : CONF_KEY_GLOBAL;
	*default_value = conf_keys[i].default_value;
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

static int set_listen(struct setting *setting)
{
	struct conf *conf = setting->parser->conf;
	struct conf_listen listen, *listens;
	size_t i;

	if (value_parse_listen(setting->value, &listen, setting->why, sizeof(setting->why)) == -1)
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

static int set_allow(struct setting *setting)
{
	struct conf *conf = setting->parser->conf;

	return value_parse_cidr_list(setting->value, &conf->allow, &conf->allow_count, setting->why,
				     sizeof(setting->why));
}

static int set_admin_allow(struct setting *setting)
{
	struct conf *conf = setting->parser->conf;

	return value_parse_cidr_list(setting->value, &conf->admin_allow, &conf->admin_allow_count,
				     setting->why, sizeof(setting->why));
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

	if (value_parse_duration(setting->value, &ms) == -1) {
		snprintf(setting->why, sizeof(setting->why),
			 "'%s' is not a duration (250ms, 30s, 5m, 1h)", setting->value);
		return -1;
	}
	if (ms < key->min || ms > key->max) {
		value_format_duration(key->min, min, sizeof(min));
		value_format_duration(key->max, max, sizeof(max));
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

	if (value_parse_digits(&end, &number) == -1 || *end != '\0' ||
	    number < (uint64_t)key->min || number > (uint64_t)key->max) {
		snprintf(setting->why, sizeof(setting->why),
			 "must be a whole number from %" PRId64 " to %" PRId64, key->min, key->max);
		return -1;
	}
	*(int64_t *)setting->field = (int64_t)number;
	return 0;
}

static int set_size(struct setting *setting)
{
	const struct conf_key *key = setting->key;
	uint64_t bytes;

	if (value_parse_size(setting->value, &bytes) == -1 || bytes > (uint64_t)key->max) {
		snprintf(setting->why, sizeof(setting->why),
			 "'%s' is not a size (bytes, or with k, m, g)", setting->value);
		return -1;
	}
	*(int64_t *)setting->field = (int64_t)bytes;
	return 0;
}

/* "off", or an absolute directory (checked when a spool is made: it may come later). */
static int set_spool_dir(struct setting *setting)
{
	if (strcmp(setting->value, "off") != 0 && setting->value[0] != '/') {
		snprintf(setting->why, sizeof(setting->why),
			 "must be an absolute directory or \"off\"");
		return -1;
	}
	return set_string(setting, setting->value);
}

/* "unix:/PATH" or a numeric "HOST:PORT" / "[V6]:PORT": no DNS, ever. */
static int set_redis(struct setting *setting)
{
	struct conf *conf = setting->parser->conf;
	struct conf_listen address = { 0 };

	if (strncmp(setting->value, "unix:", 5) == 0) {
		if (setting->value[5] != '/') {
			snprintf(setting->why, sizeof(setting->why),
				 "a unix socket is written unix:/absolute/path");
			return -1;
		}
		if ((conf->redis_unix = strdup(setting->value + 5)) == NULL)
			goto out_of_memory;
		return set_string(setting, setting->value);
	}
	if (value_parse_listen(setting->value, &address, setting->why, sizeof(setting->why)) < 0)
		return -1;
	if (address.tls || address.port == 0) {
		snprintf(setting->why, sizeof(setting->why),
			 address.tls ? "Redis has no TLS here: see the README (stunnel)"
				     : "port must be from 1 to 65535");
		free(address.host);
		free(address.text);
		return -1;
	}
	conf->redis_host = address.host;
	conf->redis_port = address.port;
	conf->redis = address.text;
	return 0;
out_of_memory:
	snprintf(setting->why, sizeof(setting->why), "out of memory");
	return -1;
}

/* A secret (user name or password): no space or control character, as AUTH takes them. */
static int set_redis_secret(struct setting *setting)
{
	char **field = setting->field;

	if (set_secret(setting) < 0)
		return -1;
	for (const char *c = *field; *c != '\0'; c++) {
		if ((unsigned char)*c <= ' ' || *c == 0x7f) {
			snprintf(setting->why, sizeof(setting->why),
				 "must not hold spaces or control characters");
			return -1;
		}
	}
	if (**field == '\0') {
		snprintf(setting->why, sizeof(setting->why), "missing value");
		return -1;
	}
	return 0;
}

/* Printable, no spaces: it begins every key and channel name. */
static int set_redis_prefix(struct setting *setting)
{
	for (const char *c = setting->value; *c != '\0'; c++) {
		if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f) {
			snprintf(setting->why, sizeof(setting->why),
				 "must be printable ASCII without spaces");
			return -1;
		}
	}
	if (strlen(setting->value) > 64) {
		snprintf(setting->why, sizeof(setting->why), "at most 64 characters");
		return -1;
	}
	return set_string(setting, setting->value);
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

static int set_access_log_format(struct setting *setting)
{
	int *json = setting->field;

	if (strcmp(setting->value, "text") == 0) {
		*json = 0;
	} else if (strcmp(setting->value, "json") == 0) {
		*json = 1;
	} else {
		snprintf(setting->why, sizeof(setting->why), "must be text or json, not '%s'",
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
	for (token = strtok_r(copy, VALUE_LIST_SEPARATORS, &saveptr); token;
	     token = strtok_r(NULL, VALUE_LIST_SEPARATORS, &saveptr)) {
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

	if (value_parse_digits(&unit, &number) == -1 || number == 0 || number > RATE_MAX ||
	    (strcmp(unit, "/s") != 0 && strcmp(unit, "/m") != 0)) {
		snprintf(setting->why, sizeof(setting->why),
			 "must be N/s or N/m with N from 1 to %d", RATE_MAX);
		return -1;
	}
	*(double *)setting->field = unit[1] == 's' ? (double)number : (double)number / 60;
	return 0;
}

static const struct {
	const char *name;
	unsigned bit;
} scope_names[] = {
	{ "status", CONF_SCOPE_STATUS },
	{ "download", CONF_SCOPE_DOWNLOAD },
	{ "export", CONF_SCOPE_EXPORT },
};

static int set_scopes(struct setting *setting)
{
	char *copy = strdup(setting->value), *token, *saveptr = NULL;
	unsigned scopes = 0;

	if (copy == NULL) {
		snprintf(setting->why, sizeof(setting->why), "out of memory");
		return -1;
	}
	for (token = strtok_r(copy, VALUE_LIST_SEPARATORS, &saveptr); token != NULL;
	     token = strtok_r(NULL, VALUE_LIST_SEPARATORS, &saveptr)) {
		size_t i = 0;

		while (i < sizeof(scope_names) / sizeof(scope_names[0]) &&
		       strcmp(token, scope_names[i].name) != 0)
			i++;
		if (i == sizeof(scope_names) / sizeof(scope_names[0])) {
			snprintf(setting->why, sizeof(setting->why),
				 "unknown scope \"%.32s\" (status, download, export)", token);
			free(copy);
			return -1;
		}
		scopes |= scope_names[i].bit;
	}
	free(copy);
	if (scopes == 0) {
		snprintf(setting->why, sizeof(setting->why), "missing value");
		return -1;
	}
	*(unsigned *)setting->field = scopes;
	return 0;
}

void *conf_section_struct(struct conf *conf, const struct section *section)
{
	switch (section->kind) {
	case SECTION_GLOBAL:
		return conf;
	case SECTION_CREDENTIAL:
		return &conf->credentials[section->index];
	case SECTION_CLIENT:
		return &conf->clients[section->index];
	case SECTION_INVALID:
		break;
	}
	return NULL;
}

int conf_add_entry(struct conf *conf, struct section *section, const char *name)
{
	char *copy = strdup(name);

	if (!copy)
		return -1;
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

void conf_check_section(struct parser *parser, const struct section *section)
{
	struct conf *conf = parser->conf;
	size_t i;

	if (section->kind == SECTION_CREDENTIAL && conf->credentials[section->index].user_id) {
		const char *user_id = conf->credentials[section->index].user_id;

		for (i = 0; i < section->index; i++) {
			if (conf->credentials[i].user_id &&
			    strcmp(conf->credentials[i].user_id, user_id) == 0)
				conf_report(parser, conf_key_line(section, "user_id"), "user_id",
					    "same user id as [credential %s]",
					    conf->credentials[i].name);
		}
	}
	if (section->kind == SECTION_CLIENT && conf->clients[section->index].token) {
		const char *token = conf->clients[section->index].token;

		for (i = 0; i < section->index; i++) {
			if (conf->clients[i].token && strcmp(conf->clients[i].token, token) == 0)
				conf_report(parser, conf_key_line(section, "token"), "token",
					    "same token as [client %s]", conf->clients[i].name);
		}
	}
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
		line = conf_key_line(section, "credentials");
		client->credentials =
			calloc(section->credential_name_count, sizeof(*client->credentials));
		if (!client->credentials) {
			conf_report(parser, line, "credentials", "out of memory");
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
				conf_report(parser, line, "credentials", "unknown credential %s",
					    name);
			else if (listed < client->credential_count)
				conf_report(parser, line, "credentials", "%s is listed twice",
					    name);
			else
				client->credentials[client->credential_count++] = c;
		}
	}
}

/* Reported at the first tls listen when missing, at their own line when unreadable. */
static void check_tls_file(struct parser *parser, const char *name, const char *path)
{
	int line = conf_key_line(&parser->sections[0], name);
	const char *reason;

	if (line == 0) {
		conf_report(parser, parser->first_tls_line, name,
			    "required when a listen uses tls");
		return;
	}
	reason = path ? unreadable_reason(path) : NULL;
	if (reason)
		conf_report(parser, line, name, "cannot read %s: %s", path, reason);
}

/* What needs the whole file. */
static void check_file(struct parser *parser)
{
	resolve_client_credentials(parser);
	if (parser->conf->credential_count == 0)
		conf_report(parser, 0, "[credential]",
			    "at least one [credential NAME] section is required");
	if (parser->first_tls_line) {
		check_tls_file(parser, "tls_cert", parser->conf->tls_cert);
		check_tls_file(parser, "tls_key", parser->conf->tls_key);
	}
	if (parser->conf->redis_user != NULL && parser->conf->redis_password == NULL)
		conf_report(parser, 0, "redis_user",
			    "needs redis_password (an ACL user's password)");
}

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
	struct parser parser = { .path = path };
	struct conf *conf = NULL;

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
		conf_report(&parser, 0, NULL, "cannot open: %s", strerror(errno));
		goto done;
	}
	conf_ini_read(&parser);
	check_file(&parser);
done:
	if (parser.error_count == 0 && !parser.out_of_memory) {
		conf = parser.conf;
		parser.conf = NULL;
	}
	conf_write_errors(&parser, err, errlen);
	conf_parser_free(&parser);
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
	free(conf->download_spool_dir);
	free(conf->redis);
	free(conf->redis_host);
	free(conf->redis_unix);
	secret_free(conf->redis_user);
	secret_free(conf->redis_password);
	free(conf->redis_prefix);
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
