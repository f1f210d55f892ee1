/*
 * unit_conf.c -- unit tests of gateway/conf.c: every config file is written by
 * the test itself into a fresh directory under /tmp, removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cidr.h"
#include "conf.h"
#include "conf_values.h"

#define ERR_SIZE   16384
#define CREDENTIAL "[credential main]\nuser_id = u-main\napi_key = k-main\n"

static char dir[] = "/tmp/unit_conf.XXXXXX";
static char conf_path[256];

static int group_setup(void **state)
{
	(void)state;
	if (!mkdtemp(dir))
		return -1;
	snprintf(conf_path, sizeof(conf_path), "%s/gateway.conf", dir);
	return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	return remove(path);
}

static int group_teardown(void **state)
{
	(void)state;
	return nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes dir/name with mode; path receives its full name. */
static void write_file(char *path, size_t pathlen, const char *name, const void *content,
		       size_t length, mode_t mode)
{
	int fd;

	snprintf(path, pathlen, "%s/%s", dir, name);
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, length), (ssize_t)length);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static void write_text(char *path, size_t pathlen, const char *name, const char *text)
{
	write_file(path, pathlen, name, text, strlen(text), 0600);
}

static void write_conf(const char *text)
{
	char path[256];

	write_text(path, sizeof(path), "gateway.conf", text);
}

static struct conf *load_text(char *err, const char *text)
{
	write_conf(text);
	return conf_load(conf_path, err, ERR_SIZE);
}

/* Writes dir/name and puts "file:dir/name" into spec. */
static void write_secret(char *spec, size_t speclen, const char *name, const void *content,
			 size_t length, mode_t mode)
{
	char path[256];

	write_file(path, sizeof(path), name, content, length, mode);
	snprintf(spec, speclen, "file:%s", path);
}

static struct conf *load(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static struct conf *load(char *err, const char *fmt, ...)
{
	struct conf *conf;
	char *text;
	va_list ap;

	va_start(ap, fmt);
	assert_true(vasprintf(&text, fmt, ap) >= 0);
	va_end(ap);
	conf = load_text(err, text);
	free(text);
	return conf;
}

/* Loading must fail; returns the number of error lines. */
static int load_fails(char *err, const char *text)
{
	struct conf *conf = load_text(err, text);
	int lines = 1;
	const char *p;

	if (conf) {
		conf_free(conf);
		fail_msg("loaded although it should not:\n%s", text);
	}
	assert_true(err[0] != '\0');
	for (p = err; *p; p++)
		lines += *p == '\n';
	return lines;
}

/* Some line of err starts with "CONF_PATH:LINE: " followed by rest. */
static void assert_error(const char *err, int line, const char *rest)
{
	char prefix[512];
	size_t length;
	const char *p = err;

	snprintf(prefix, sizeof(prefix), "%s:%d: %s", conf_path, line, rest);
	length = strlen(prefix);
	for (;;) {
		if (strncmp(p, prefix, length) == 0)
			return;
		p = strchr(p, '\n');
		if (!p)
			fail_msg("no error starting with \"%s\" in:\n%s", prefix, err);
		p++;
	}
}

static void assert_cidr(const struct cidr *cidr, int family, const char *address, unsigned prefix)
{
	unsigned char binary[16] = { 0 };

	assert_int_equal(cidr->family, family);
	assert_int_equal(inet_pton(family, address, binary), 1);
	assert_memory_equal(cidr->addr, binary, family == AF_INET ? 4 : 16);
	assert_int_equal(cidr->prefix, prefix);
}

/* Runs conf_load on conf_path with stderr captured into out. */
static struct conf *load_capturing_stderr(char *err, char *out, size_t outlen)
{
	char capture_path[256];
	struct conf *conf;
	int saved, fd;
	ssize_t got;

	snprintf(capture_path, sizeof(capture_path), "%s/stderr.txt", dir);
	fflush(stderr);
	saved = dup(STDERR_FILENO);
	fd = open(capture_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(saved >= 0 && fd >= 0);
	dup2(fd, STDERR_FILENO);
	conf = conf_load(conf_path, err, ERR_SIZE);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	got = pread(fd, out, outlen - 1, 0);
	close(fd);
	out[got > 0 ? got : 0] = '\0';
	return conf;
}

static void test_full_valid_file(void **state)
{
	char err[ERR_SIZE], cert[256], key[256], ca[256], api_key[256], token[256];
	struct conf *conf;
	const struct conf_client *client;

	(void)state;
	write_text(cert, sizeof(cert), "server.crt", "cert\n");
	write_text(key, sizeof(key), "server.key", "key\n");
	write_text(ca, sizeof(ca), "ca.pem", "ca\n");
	write_text(api_key, sizeof(api_key), "api.key", "k-from-file\n");
	write_text(token, sizeof(token), "reports.token", "t-reports-0123456789\r\n");
	setenv("UNIT_CONF_USER", "u-from-env", 1);
	setenv("UNIT_CONF_TOKEN", "t-from-env-0123456789", 1);
	conf = load(err,
		    "; every key\n"
		    "listen = 127.0.0.1:8080\n"
		    "listen = [::1]:8443 tls\n"
		    "tls_cert = %s\n"
		    "tls_key = %s\n"
		    "allow = 10.0.0.0/8, 192.168.1.7 ::1/128\n"
		    "admin_allow = 127.0.0.1\n"
		    "upstream = https://upstream.example:8443/api/v1//\n"
		    "upstream_ca = %s\n"
		    "upstream_timeout = 1500ms\n"
		    "upstream_idle_timeout = 2m\n"
		    "cache_pending_ttl = 3\n"
		    "cache_final_ttl = 1h   ; inline comment\n"
		    "cache_error_ttl = 0\n"
		    "cache_stale_if_error = 10m\n"
		    "cache_max_entries = 500\n"
		    "max_connections = 20\n"
		    "max_downloads = 7\n"
		    "client_timeout = 45s\n"
		    "drain_timeout = 5s\n"
		    "access_log = %s/access.log\n"
		    "\n"
		    "[client reports]   ; before the credentials it names\n"
		    "token = file:%s\n"
		    "credentials = bot, main\n"
		    "rate = 20/s\n"
		    "[credential main]\n"
		    "user_id = env:UNIT_CONF_USER\n"
		    "api_key = file:%s\n"
		    "kind = personal\n"
		    "[credential bot]\n"
		    "user_id = bot-user\n"
		    "api_key = bot-key\n"
		    "kind = oauth\n"
		    "[client slow]\n"
		    "token = slow-token-0123456789\n"
		    "credentials = main\n"
		    "rate = 30/m\n"
		    "[client free]\n"
		    "token = env:UNIT_CONF_TOKEN\n"
		    "credentials = bot\n",
		    cert, key, ca, dir, token, api_key);
	unsetenv("UNIT_CONF_USER");
	unsetenv("UNIT_CONF_TOKEN");
	if (!conf)
		fail_msg("%s", err);
	assert_string_equal(err, "");
	assert_string_equal(conf->path, conf_path);

	assert_int_equal(conf->listen_count, 2);
	assert_string_equal(conf->listens[0].text, "127.0.0.1:8080");
	assert_string_equal(conf->listens[0].host, "127.0.0.1");
	assert_int_equal(conf->listens[0].port, 8080);
	assert_int_equal(conf->listens[0].tls, 0);
	assert_string_equal(conf->listens[1].text, "[::1]:8443 tls");
	assert_string_equal(conf->listens[1].host, "::1");
	assert_int_equal(conf->listens[1].port, 8443);
	assert_int_equal(conf->listens[1].tls, 1);
	assert_string_equal(conf->tls_cert, cert);
	assert_string_equal(conf->tls_key, key);

	assert_int_equal(conf->allow_count, 3);
	assert_cidr(&conf->allow[0], AF_INET, "10.0.0.0", 8);
	assert_cidr(&conf->allow[1], AF_INET, "192.168.1.7", 32);
	assert_cidr(&conf->allow[2], AF_INET6, "::1", 128);
	assert_int_equal(conf->admin_allow_count, 1);
	assert_cidr(&conf->admin_allow[0], AF_INET, "127.0.0.1", 32);

	assert_string_equal(conf->upstream, "https://upstream.example:8443/api/v1");
	assert_string_equal(conf->upstream_ca, ca);
	assert_int_equal(conf->upstream_timeout_ms, 1500);
	assert_int_equal(conf->upstream_idle_timeout_ms, 120000);
	assert_int_equal(conf->cache_pending_ttl_ms, 3000);
	assert_int_equal(conf->cache_final_ttl_ms, 3600000);
	assert_int_equal(conf->cache_error_ttl_ms, 0);
	assert_int_equal(conf->cache_stale_if_error_ms, 600000);
	assert_int_equal(conf->cache_max_entries, 500);
	assert_int_equal(conf->max_connections, 20);
	assert_int_equal(conf->max_downloads, 7);
	assert_int_equal(conf->client_timeout_ms, 45000);
	assert_int_equal(conf->drain_timeout_ms, 5000);
	assert_true(strncmp(conf->access_log, dir, strlen(dir)) == 0);
	assert_string_equal(conf->access_log + strlen(dir), "/access.log");

	assert_int_equal(conf->credential_count, 2);
	assert_string_equal(conf->credentials[0].name, "main");
	assert_string_equal(conf->credentials[0].user_id, "u-from-env");
	assert_string_equal(conf->credentials[0].api_key, "k-from-file");
	assert_int_equal(conf->credentials[0].kind, CONF_CREDENTIAL_PERSONAL);
	assert_string_equal(conf->credentials[1].name, "bot");
	assert_string_equal(conf->credentials[1].user_id, "bot-user");
	assert_string_equal(conf->credentials[1].api_key, "bot-key");
	assert_int_equal(conf->credentials[1].kind, CONF_CREDENTIAL_OAUTH);

	assert_int_equal(conf->client_count, 3);
	client = &conf->clients[0];
	assert_string_equal(client->name, "reports");
	assert_string_equal(client->token, "t-reports-0123456789");
	assert_int_equal(client->credential_count, 2);
	assert_int_equal(client->credentials[0], 1);
	assert_int_equal(client->credentials[1], 0);
	assert_true(client->rate_per_second == 20.0);
	client = &conf->clients[1];
	assert_string_equal(client->name, "slow");
	assert_string_equal(client->token, "slow-token-0123456789");
	assert_int_equal(client->credential_count, 1);
	assert_int_equal(client->credentials[0], 0);
	assert_true(client->rate_per_second == 0.5);
	client = &conf->clients[2];
	assert_string_equal(client->name, "free");
	assert_string_equal(client->token, "t-from-env-0123456789");
	assert_int_equal(client->credential_count, 1);
	assert_int_equal(client->credentials[0], 1);
	assert_true(client->rate_per_second == 0.0);

	assert_int_equal(conf_find_credential_by_user_id(conf, "u-from-env"), 0);
	assert_int_equal(conf_find_credential_by_user_id(conf, "bot-user"), 1);
	assert_int_equal(conf_find_credential_by_user_id(conf, "bot-use"), -1);
	assert_int_equal(conf_find_credential_by_user_id(conf, ""), -1);
	conf_free(conf);
}

static void test_defaults(void **state)
{
	char err[ERR_SIZE];
	struct conf *conf;

	(void)state;
	conf = load_text(err, CREDENTIAL);
	if (!conf)
		fail_msg("%s", err);
	assert_int_equal(conf->listen_count, 1);
	assert_string_equal(conf->listens[0].text, "127.0.0.1:8080");
	assert_string_equal(conf->listens[0].host, "127.0.0.1");
	assert_int_equal(conf->listens[0].port, 8080);
	assert_int_equal(conf->listens[0].tls, 0);
	assert_null(conf->tls_cert);
	assert_null(conf->tls_key);
	assert_int_equal(conf->allow_count, 2);
	assert_cidr(&conf->allow[0], AF_INET, "127.0.0.0", 8);
	assert_cidr(&conf->allow[1], AF_INET6, "::1", 128);
	assert_int_equal(conf->admin_allow_count, 2);
	assert_cidr(&conf->admin_allow[0], AF_INET, "127.0.0.0", 8);
	assert_cidr(&conf->admin_allow[1], AF_INET6, "::1", 128);
	assert_string_equal(conf->upstream, "https://api.gumloop.com/api/v1");
	assert_null(conf->upstream_ca);
	assert_int_equal(conf->upstream_timeout_ms, 30000);
	assert_int_equal(conf->upstream_idle_timeout_ms, 60000);
	assert_int_equal(conf->cache_pending_ttl_ms, 2000);
	assert_int_equal(conf->cache_final_ttl_ms, 60000);
	assert_int_equal(conf->cache_error_ttl_ms, 1000);
	assert_int_equal(conf->cache_stale_if_error_ms, 300000);
	assert_int_equal(conf->cache_max_entries, 100000);
	assert_int_equal(conf->max_connections, 10000);
	assert_int_equal(conf->max_downloads, 256);
	assert_int_equal(conf->client_timeout_ms, 30000);
	assert_int_equal(conf->drain_timeout_ms, 30000);
	assert_string_equal(conf->access_log, "-");
	assert_int_equal(conf->credential_count, 1);
	assert_int_equal(conf->credentials[0].kind, CONF_CREDENTIAL_PERSONAL);
	assert_int_equal(conf->client_count, 0);
	assert_null(conf->clients);
	conf_free(conf);

	/* An empty upstream_ca means the system store. */
	conf = load_text(err, "upstream_ca =     ; system store\n" CREDENTIAL);
	if (!conf)
		fail_msg("%s", err);
	assert_null(conf->upstream_ca);
	conf_free(conf);
	conf_free(NULL);
}

static void test_listens(void **state)
{
	char err[ERR_SIZE], cert[256], key[256];
	struct conf *conf;

	(void)state;
	write_text(cert, sizeof(cert), "listen.crt", "cert\n");
	write_text(key, sizeof(key), "listen.key", "key\n");
	conf = load(err,
		    "listen = 0.0.0.0:80\n"
		    "  listen = [0:0::1]:08080\n" /* indented: not a continuation */
		    "listen = [2001:db8::10]:443   tls\n"
		    "listen = 192.0.2.1:0 tls\n"
		    "listen = 192.0.2.1:0\n" /* port 0 twice: the kernel picks two ports */
		    "listen = [::]:65535\n"
		    "tls_cert = %s\ntls_key = %s\n" CREDENTIAL,
		    cert, key);
	if (!conf)
		fail_msg("%s", err);
	assert_int_equal(conf->listen_count, 6);
	assert_string_equal(conf->listens[0].text, "0.0.0.0:80");
	assert_string_equal(conf->listens[1].text, "[::1]:8080");
	assert_string_equal(conf->listens[1].host, "::1");
	assert_int_equal(conf->listens[1].port, 8080);
	assert_string_equal(conf->listens[2].text, "[2001:db8::10]:443 tls");
	assert_string_equal(conf->listens[2].host, "2001:db8::10");
	assert_int_equal(conf->listens[2].tls, 1);
	assert_string_equal(conf->listens[3].text, "192.0.2.1:0 tls");
	assert_int_equal(conf->listens[3].port, 0);
	assert_int_equal(conf->listens[4].tls, 0);
	assert_string_equal(conf->listens[5].text, "[::]:65535");
	assert_int_equal(conf->listens[5].port, 65535);
	conf_free(conf);
}

static void test_bad_listen(void **state)
{
	char err[ERR_SIZE];
	int line;

	(void)state;
	assert_int_equal(load_fails(err, "listen = localhost:8080\n"
					 "listen = 127.0.0.1\n"
					 "listen = 127.0.0.1:65536\n"
					 "listen = 127.0.0.1:-1\n"
					 "listen = ::1:8080\n"
					 "listen = [::1]8080\n"
					 "listen = [::1]:80 tcp\n"
					 "listen = 127.0.0.1:80 tls extra\n"
					 "listen = 127.0.0.1:8080\n"
					 "listen = 127.0.0.1:8080\n"
					 "listen = [fe80::1%eth0]:80\n"
					 "listen = 1.2.3:80\n"
					 "listen =\n" CREDENTIAL),
			 12);
	for (line = 1; line <= 13; line++) {
		if (line != 9)
			assert_error(err, line, "listen: ");
	}
	assert_error(err, 1, "listen: host must be a numeric");
	assert_error(err, 5, "listen: IPv6 addresses are written in brackets");
	assert_error(err, 10, "listen: 127.0.0.1:8080 is already listened on");
	assert_error(err, 13, "listen: missing value");
}

static void test_redis(void **state)
{
	char err[ERR_SIZE];
	struct conf *conf;

	(void)state;
	conf = load_text(err, CREDENTIAL);
	if (!conf)
		fail_msg("%s", err);
	assert_null(conf->redis);
	assert_string_equal(conf->redis_prefix, "gumloop-gateway:");
	assert_int_equal(conf->redis_timeout_ms, 250);
	assert_int_equal(conf->redis_db, 0);
	conf_free(conf);
	conf = load_text(err,
			 "redis = [0::1]:6380\nredis_user = gw\nredis_password = s3cret\n"
			 "redis_db = 3\nredis_prefix = team-a:\nredis_timeout = 1s\n" CREDENTIAL);
	if (!conf)
		fail_msg("%s", err);
	assert_string_equal(conf->redis, "[::1]:6380");
	assert_string_equal(conf->redis_host, "::1");
	assert_int_equal(conf->redis_port, 6380);
	assert_null(conf->redis_unix);
	assert_string_equal(conf->redis_user, "gw");
	assert_string_equal(conf->redis_password, "s3cret");
	assert_int_equal(conf->redis_db, 3);
	assert_string_equal(conf->redis_prefix, "team-a:");
	assert_int_equal(conf->redis_timeout_ms, 1000);
	conf_free(conf);
	conf = load_text(err, "redis = unix:/run/redis/redis.sock\n" CREDENTIAL);
	if (!conf)
		fail_msg("%s", err);
	assert_string_equal(conf->redis_unix, "/run/redis/redis.sock");
	assert_null(conf->redis_host);
	conf_free(conf);
	/* no DNS, no TLS, no relative socket, no user without a password */
	assert_int_equal(load_fails(err, "redis = localhost:6379\n" CREDENTIAL), 1);
	assert_error(err, 1, "redis: host must be a numeric");
	assert_int_equal(load_fails(err, "redis = 127.0.0.1:6379 tls\n" CREDENTIAL), 1);
	assert_error(err, 1, "redis: Redis has no TLS here");
	assert_int_equal(load_fails(err, "redis = unix:redis.sock\n" CREDENTIAL), 1);
	assert_error(err, 1, "redis: a unix socket is written unix:/absolute/path");
	assert_int_equal(load_fails(err, "redis = 127.0.0.1:0\n" CREDENTIAL), 1);
	assert_int_equal(load_fails(err, "redis_prefix = a b\n" CREDENTIAL), 1);
	assert_int_equal(load_fails(err, "redis_timeout = 0\n" CREDENTIAL), 1);
	assert_int_equal(load_fails(err, "redis = 127.0.0.1:6379\nredis_user = gw\n" CREDENTIAL),
			 1);
	assert_non_null(strstr(err, "redis_user: needs redis_password"));
}

static void test_unknown_key(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err,
				    "listen = 127.0.0.1:1\n"
				    "cache_ttl = 5s\n" CREDENTIAL "colour = blue\n"
				    "upstream = https://example.com\n"
				    "[client c]\ntoken = t-0123456789abcdef\ncredentials = main\n"
				    "Token = x\n"),
			 4);
	assert_error(err, 2, "cache_ttl: unknown key");
	assert_error(err, 6, "colour: unknown key in [credential main]");
	assert_error(err, 7, "upstream: must come before the first [section]");
	assert_error(err, 11, "Token: unknown key in [client c]");
}

static void test_unknown_section(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, CREDENTIAL
				    "[server]\n"
				    "listen = 1.2.3.4:5\n" /* inside a bad section: not reported */
				    "[credential]\n"
				    "[client two words]\n"
				    "[client bad/name]\n"
				    "[Credential x]\n"
				    "[ ]\n"),
			 6);
	assert_error(err, 4, "[server]: unknown section");
	assert_error(err, 6, "[credential]: expected [credential NAME]");
	assert_error(err, 7, "[client two words]: expected [client NAME]");
	assert_error(err, 8, "[client bad/name]: expected [client NAME]");
	assert_error(err, 9, "[Credential x]: unknown section");
	assert_error(err, 10, "[ ]: unknown section");
}

static void test_bad_duration(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, "upstream_timeout = 5x\n"
					 "upstream_idle_timeout = 0\n"
					 "client_timeout = 2h\n"
					 "cache_final_ttl = 25h\n"
					 "cache_pending_ttl = -1s\n"
					 "cache_error_ttl = 1.5s\n"
					 "drain_timeout = 99999999999999999999ms\n"
					 "cache_stale_if_error = 10 s\n" CREDENTIAL),
			 8);
	assert_error(err, 1, "upstream_timeout: '5x' is not a duration");
	assert_error(err, 2, "upstream_idle_timeout: must be from 1ms to 1h");
	assert_error(err, 3, "client_timeout: must be from 1ms to 1h");
	assert_error(err, 4, "cache_final_ttl: must be from 0ms to 24h");
	assert_error(err, 5, "cache_pending_ttl: '-1s' is not a duration");
	assert_error(err, 6, "cache_error_ttl: '1.5s' is not a duration");
	assert_error(err, 7, "drain_timeout: ");
	assert_error(err, 8, "cache_stale_if_error: ");
}

static void test_bad_numbers(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err,
				    "cache_max_entries = 0\n"
				    "max_connections = 1000001\n"
				    "max_downloads = 10k\n"
				    "[client c]\ntoken = t-0123456789abcdef\ncredentials = main\n"
				    "rate = 0/s\n" CREDENTIAL),
			 4);
	assert_error(err, 1, "cache_max_entries: must be a whole number from 1 to 10000000");
	assert_error(err, 2, "max_connections: must be a whole number from 1 to 1000000");
	assert_error(err, 3, "max_downloads: must be a whole number from 1 to 100000");
	assert_error(err, 7, "rate: must be N/s or N/m");

	assert_int_equal(load_fails(err,
				    "max_downloads = 100001\n"
				    "cache_max_entries = -5\n"
				    "max_connections = 18446744073709551616\n"
				    "[client c]\ntoken = t-0123456789abcdef\ncredentials = main\n"
				    "rate = 20/h\n" CREDENTIAL
				    "[client d]\ntoken = u-0123456789abcdef\ncredentials = main\n"
				    "rate = 20\n"),
			 5);
	assert_error(err, 1, "max_downloads: ");
	assert_error(err, 2, "cache_max_entries: ");
	assert_error(err, 3, "max_connections: ");
	assert_error(err, 7, "rate: ");
	assert_error(err, 14, "rate: ");
}

static void test_bad_cidr(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, "allow = 10.0.0.0/8 10.0.0.0/33\n"
					 "admin_allow = ,,\n" CREDENTIAL),
			 2);
	assert_error(err, 1, "allow: '10.0.0.0/33' is not an address or CIDR");
	assert_error(err, 2, "admin_allow: missing value");
	assert_int_equal(load_fails(err, "admin_allow = localhost\n" CREDENTIAL), 1);
	assert_error(err, 1, "admin_allow: 'localhost' is not an address or CIDR");
}

static void test_repeated_key(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, "upstream = https://a.example\n"
					 "upstream = https://b.example\n" CREDENTIAL
					 "api_key = again\n"),
			 2);
	assert_error(err, 2, "upstream: repeated key, first set at line 1");
	assert_error(err, 6, "api_key: repeated key, first set at line 5");
}

static void test_missing_credential_section(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, "listen = 127.0.0.1:8080\n"), 1);
	assert_error(err, 0, "[credential]: at least one [credential NAME] section");
	assert_int_equal(load_fails(err, ""), 1);
	assert_error(err, 0, "[credential]: ");
	/* A section without keys is still seen, and its required keys missed. */
	assert_int_equal(load_fails(err, "\n[credential empty]\n"), 2);
	assert_error(err, 2, "user_id: missing in [credential empty]");
	assert_error(err, 2, "api_key: missing in [credential empty]");
}

static void test_client_credentials(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err,
				    "[client c]\n"
				    "token = t-0123456789abcdef\n"
				    "credentials = main nope,main\n" CREDENTIAL "[client d]\n"),
			 4);
	assert_error(err, 3, "credentials: unknown credential nope");
	assert_error(err, 3, "credentials: main is listed twice");
	assert_error(err, 7, "token: missing in [client d]");
	assert_error(err, 7, "credentials: missing in [client d]");
}

static void test_tls_needs_cert_and_key(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, "listen = 127.0.0.1:8080\n"
					 "listen = [::1]:8443 tls\n"
					 "listen = 127.0.0.1:8443 tls\n" CREDENTIAL),
			 2);
	assert_error(err, 2, "tls_cert: required when a listen uses tls");
	assert_error(err, 2, "tls_key: required when a listen uses tls");

	assert_int_equal(load_fails(err, "listen = 127.0.0.1:8443 tls\n"
					 "tls_cert = /nonexistent/server.crt\n"
					 "tls_key = /nonexistent/server.key\n"
					 "upstream_ca = /nonexistent/ca.pem\n" CREDENTIAL),
			 3);
	assert_error(err, 2, "tls_cert: cannot read /nonexistent/server.crt: ");
	assert_error(err, 3, "tls_key: cannot read /nonexistent/server.key: ");
	assert_error(err, 4, "upstream_ca: cannot read /nonexistent/ca.pem: ");
}

static void test_upstream(void **state)
{
	char err[ERR_SIZE];
	struct conf *conf;

	(void)state;
	assert_int_equal(load_fails(err, "upstream = http://api.gumloop.com/api/v1\n" CREDENTIAL),
			 1);
	assert_error(err, 1, "upstream: must start with https://");
	assert_int_equal(load_fails(err, "upstream = https:///path\n" CREDENTIAL), 1);
	assert_error(err, 1, "upstream: ");
	assert_int_equal(load_fails(err, "upstream = https://a.example/?x=1\n" CREDENTIAL), 1);
	assert_error(err, 1, "upstream: ");

	conf = load_text(err, "upstream = https://a.example///\n" CREDENTIAL);
	if (!conf)
		fail_msg("%s", err);
	assert_string_equal(conf->upstream, "https://a.example");
	conf_free(conf);
}

static void test_duplicates(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, CREDENTIAL "[credential other]\n"
						    "user_id = u-main\n"
						    "api_key = k-other\n"
						    "[credential main]\n"
						    "user_id = u-third\n"
						    "api_key = k-third\n"),
			 2);
	assert_error(err, 5, "user_id: same user id as [credential main]");
	assert_error(err, 7, "[credential main]: duplicate name, first defined at line 1");
	assert_true(strstr(err, "u-main") == NULL);

	assert_int_equal(
		load_fails(err, CREDENTIAL
			   "[client a]\ntoken = shared-token-000001\ncredentials = main\n"
			   "[client b]\ncredentials = main\ntoken = shared-token-000001\n"),
		1);
	assert_error(err, 9, "token: same token as [client a]");
	assert_true(strstr(err, "shared-token-000001") == NULL);
}

static void test_short_token_refused(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, CREDENTIAL
				    "[client a]\ntoken = fifteen-bytes-x\ncredentials = main\n"),
			 1);
	assert_error(err, 5, "token: a token must be at least 16 bytes long");
	assert_true(strstr(err, "fifteen-bytes-x") == NULL);
	assert_int_equal(load_fails(err, CREDENTIAL
				    "[client a]\ntoken = sixteen-bytes-xx\ncredentials = main\n"
				    "[client b]\ntoken = short\ncredentials = main\n"),
			 1);
	assert_error(err, 8, "token: a token must be at least 16 bytes long");
}

static void test_line_too_long(void **state)
{
	char err[ERR_SIZE], text[1024];

	(void)state;
	snprintf(text, sizeof(text),
		 "listen = 127.0.0.1:1\n; %0300d\naccess_log = %0250d\n"
		 "bogus = 1\n" CREDENTIAL,
		 0, 0);
	assert_int_equal(load_fails(err, text), 3);
	assert_error(err, 2, "line too long");
	assert_error(err, 3, "line too long");
	assert_error(err, 4, "bogus: unknown key"); /* lines still counted right */
}

static void test_syntax_error(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, CREDENTIAL "just some words\n"
						    "[client c\n"
						    "= value\n"
						    "[client d] trailing\n"
						    "kind ; = oauth\n"),
			 5);
	assert_error(err, 4, "syntax error");
	assert_error(err, 5, "syntax error");
	assert_error(err, 6, "syntax error");
	assert_error(err, 7, "syntax error");
	assert_error(err, 8, "syntax error");
}

static void test_several_errors_sorted(void **state)
{
	char err[ERR_SIZE], expected[4096];

	(void)state;
	assert_int_equal(load_fails(err, "listen = [::1]:443 tls\n"
					 "bogus = 1\n"
					 "[client c]\n"
					 "token = t-0123456789abcdef\n"
					 "credentials = nobody\n"
					 "max_downloads = 0\n"),
			 6);
	snprintf(expected, sizeof(expected),
		 "%1$s:0: [credential]: at least one [credential NAME] section is "
		 "required\n"
		 "%1$s:1: tls_cert: required when a listen uses tls\n"
		 "%1$s:1: tls_key: required when a listen uses tls\n"
		 "%1$s:2: bogus: unknown key\n"
		 "%1$s:5: credentials: unknown credential nobody\n"
		 "%1$s:6: max_downloads: must come before the first [section]",
		 conf_path);
	assert_string_equal(err, expected);
}

static void test_error_buffer_truncated(void **state)
{
	char err[16];
	struct conf *conf;

	(void)state;
	memset(err, 'x', sizeof(err));
	write_conf("bogus = 1\n");
	conf = conf_load(conf_path, err, sizeof(err));
	assert_null(conf);
	assert_int_equal(strlen(err), sizeof(err) - 1);
	assert_null(conf_load(conf_path, err, 0));

	assert_null(conf_load("/nonexistent/gateway.conf", err, sizeof(err)));
}

static void test_missing_file(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_null(conf_load("/nonexistent/gateway.conf", err, sizeof(err)));
	assert_string_equal(err,
			    "/nonexistent/gateway.conf:0: cannot open: No such file or directory");
}

static void test_empty_values(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, "tls_cert =\n"
					 "access_log =   ; nothing\n"
					 "[credential main]\n"
					 "user_id =\n"
					 "api_key = k\n"
					 "kind =\n"),
			 4);
	assert_error(err, 1, "tls_cert: missing value");
	assert_error(err, 2, "access_log: missing value");
	assert_error(err, 4, "user_id: missing value");
	assert_error(err, 6, "kind: missing value");
}

static void test_credential_kind(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	assert_int_equal(load_fails(err, CREDENTIAL "kind = Bearer\n"), 1);
	assert_error(err, 4, "kind: must be personal or oauth");
}

static void test_secret_literal_env_file(void **state)
{
	char err[256], path[256], spec[300];
	char *value;
	int insecure;

	(void)state;
	assert_int_equal(secret_resolve("plain-value", &value, &insecure, err, sizeof(err)), 0);
	assert_string_equal(value, "plain-value");
	assert_int_equal(insecure, 0);
	free(value);

	setenv("UNIT_CONF_SECRET", "from-env", 1);
	assert_int_equal(
		secret_resolve("env:UNIT_CONF_SECRET", &value, &insecure, err, sizeof(err)), 0);
	assert_string_equal(value, "from-env");
	free(value);

	write_text(path, sizeof(path), "lf.secret", "line-feed\n");
	snprintf(spec, sizeof(spec), "file:%s", path);
	assert_int_equal(secret_resolve(spec, &value, &insecure, err, sizeof(err)), 0);
	assert_string_equal(value, "line-feed");
	assert_int_equal(insecure, 0);
	free(value);

	write_text(path, sizeof(path), "crlf.secret", "carriage-return\r\n");
	snprintf(spec, sizeof(spec), "file:%s", path);
	assert_int_equal(secret_resolve(spec, &value, &insecure, err, sizeof(err)), 0);
	assert_string_equal(value, "carriage-return");
	free(value);

	write_text(path, sizeof(path), "bare.secret", "no-newline");
	snprintf(spec, sizeof(spec), "file:%s", path);
	assert_int_equal(secret_resolve(spec, &value, &insecure, err, sizeof(err)), 0);
	assert_string_equal(value, "no-newline");
	free(value);
	unsetenv("UNIT_CONF_SECRET");
}

static void assert_secret_fails(const char *spec, const char *message_part, const char *secret);

/* credential:NAME is the file NAME in systemd's $CREDENTIALS_DIRECTORY. */
static void test_secret_credential(void **state)
{
	char err[512], path[256];
	char *value;
	int insecure;

	(void)state;
	write_text(path, sizeof(path), "api_key", "from-systemd\n");
	assert_int_equal(chmod(path, 0400), 0);
	setenv("CREDENTIALS_DIRECTORY", dir, 1);
	assert_int_equal(secret_resolve("credential:api_key", &value, &insecure, err, sizeof(err)),
			 0);
	assert_string_equal(value, "from-systemd");
	assert_int_equal(insecure, 0);
	free(value);
	assert_secret_fails("credential:missing", "cannot read secret file", NULL);
	assert_secret_fails("credential:", "credential: needs a credential name", NULL);
	assert_secret_fails("credential:../api_key", "credential: needs a credential name", NULL);
	assert_secret_fails("credential:..", "credential: needs a credential name", NULL);
	unsetenv("CREDENTIALS_DIRECTORY");
	assert_secret_fails("credential:api_key", "CREDENTIALS_DIRECTORY is not set", NULL);
	setenv("CREDENTIALS_DIRECTORY", "relative/dir", 1);
	assert_secret_fails("credential:api_key", "CREDENTIALS_DIRECTORY is not set", NULL);
	unsetenv("CREDENTIALS_DIRECTORY");
}

static void test_secret_file_size_limit(void **state)
{
	char err[256], spec[300];
	char content[SECRET_MAX_BYTES + 1];
	char *value;
	int insecure;

	(void)state;
	memset(content, 'a', sizeof(content));
	write_secret(spec, sizeof(spec), "max.secret", content, SECRET_MAX_BYTES, 0600);
	assert_int_equal(secret_resolve(spec, &value, &insecure, err, sizeof(err)), 0);
	assert_int_equal(strlen(value), SECRET_MAX_BYTES);
	free(value);

	write_secret(spec, sizeof(spec), "big.secret", content, sizeof(content), 0600);
	assert_int_equal(secret_resolve(spec, &value, &insecure, err, sizeof(err)), -1);
	assert_null(value);
	assert_non_null(strstr(err, spec + 5));
	assert_non_null(strstr(err, "larger than 4096 bytes"));
}

static void assert_secret_fails(const char *spec, const char *message_part, const char *secret)
{
	char err[512];
	char *value = (char *)"unchanged";
	int insecure;

	assert_int_equal(secret_resolve(spec, &value, &insecure, err, sizeof(err)), -1);
	assert_null(value);
	if (!strstr(err, message_part))
		fail_msg("\"%s\" not in \"%s\"", message_part, err);
	if (secret && strstr(err, secret))
		fail_msg("secret shown in \"%s\"", err);
}

static void test_secret_errors(void **state)
{
	char spec[300];

	(void)state;
	unsetenv("UNIT_CONF_UNSET");
	assert_secret_fails("env:UNIT_CONF_UNSET",
			    "environment variable UNIT_CONF_UNSET is not set", NULL);
	setenv("UNIT_CONF_EMPTY", "", 1);
	assert_secret_fails("env:UNIT_CONF_EMPTY", "environment variable UNIT_CONF_EMPTY is empty",
			    NULL);
	setenv("UNIT_CONF_NEWLINE", "hunter2\nhunter3", 1);
	assert_secret_fails("env:UNIT_CONF_NEWLINE", "UNIT_CONF_NEWLINE contains", "hunter");
	assert_secret_fails("env:", "env: needs a variable name", NULL);
	assert_secret_fails("file:", "file: needs a path", NULL);
	assert_secret_fails("file:/nonexistent/secret",
			    "cannot read secret file /nonexistent/secret: No such file", NULL);
	snprintf(spec, sizeof(spec), "file:%s", dir);
	assert_secret_fails(spec, "is not a regular file", NULL);
	assert_secret_fails("tab\tinside", "secret contains", "tab");

	write_secret(spec, sizeof(spec), "empty.secret", "", 0, 0600);
	assert_secret_fails(spec, "is empty", NULL);
	write_secret(spec, sizeof(spec), "newline-only.secret", "\n", 1, 0600);
	assert_secret_fails(spec, "is empty", NULL);
	write_secret(spec, sizeof(spec), "two-lines.secret", "swordfish-1\nswordfish-2\n", 24,
		     0600);
	assert_secret_fails(spec, "contains a NUL byte, a line break", "swordfish");
	write_secret(spec, sizeof(spec), "two-newlines.secret", "swordfish-3\n\n", 13, 0600);
	assert_secret_fails(spec, "contains a NUL byte, a line break", "swordfish");
	write_secret(spec, sizeof(spec), "nul.secret", "sword\0fish", 10, 0600);
	assert_secret_fails(spec, "contains a NUL byte", "sword");
	if (geteuid() != 0) { /* root reads anything */
		write_secret(spec, sizeof(spec), "unreadable.secret", "x", 1, 0000);
		assert_secret_fails(spec, "Permission denied", NULL);
	}
	unsetenv("UNIT_CONF_EMPTY");
	unsetenv("UNIT_CONF_NEWLINE");
}

static void test_secret_errors_in_file(void **state)
{
	char err[ERR_SIZE];

	(void)state;
	unsetenv("UNIT_CONF_UNSET");
	setenv("UNIT_CONF_BAD", "opensesame\r", 1);
	assert_int_equal(load_fails(err, "[credential main]\n"
					 "user_id = env:UNIT_CONF_UNSET\n"
					 "api_key = env:UNIT_CONF_BAD\n"
					 "[client c]\n"
					 "token = file:/nonexistent/token\n"
					 "credentials = main\n"),
			 3);
	unsetenv("UNIT_CONF_BAD");
	assert_error(err, 2, "user_id: environment variable UNIT_CONF_UNSET is not set");
	assert_error(err, 3, "api_key: environment variable UNIT_CONF_BAD contains");
	assert_error(err, 5, "token: cannot read secret file /nonexistent/token");
	assert_null(strstr(err, "opensesame"));
}

static void test_insecure_secret_file_warns(void **state)
{
	char err[ERR_SIZE], path[256], text[1024], out[4096], expected[1024];
	struct conf *conf;
	char *value;
	int insecure;

	(void)state;
	write_file(path, sizeof(path), "shared.key", "open-secret-42\n", 15, 0640);
	snprintf(text, sizeof(text), "[credential main]\nuser_id = u\napi_key = file:%s\n", path);
	write_conf(text);
	conf = load_capturing_stderr(err, out, sizeof(out));
	if (!conf)
		fail_msg("%s", err);
	assert_string_equal(conf->credentials[0].api_key, "open-secret-42");
	conf_free(conf);
	snprintf(expected, sizeof(expected),
		 "%s:3: api_key: secret file %s is readable by group or others", conf_path, path);
	if (!strstr(out, expected))
		fail_msg("\"%s\" not in \"%s\"", expected, out);
	assert_null(strstr(out, "open-secret-42"));

	snprintf(text, sizeof(text), "file:%s", path);
	assert_int_equal(secret_resolve(text, &value, &insecure, err, sizeof(err)), 0);
	assert_int_equal(insecure, 1);
	free(value);
	assert_int_equal(chmod(path, 0600), 0);
	assert_int_equal(secret_resolve(text, &value, &insecure, err, sizeof(err)), 0);
	assert_int_equal(insecure, 0);
	free(value);
}

static void test_parse_duration(void **state)
{
	static const struct {
		const char *text;
		int64_t ms;
	} valid[] = {
		{ "0", 0 },
		{ "250ms", 250 },
		{ "2s", 2000 },
		{ "5m", 300000 },
		{ "1h", 3600000 },
		{ "30", 30000 },
		{ "007s", 7000 },
		{ "0ms", 0 },
		{ "9223372036854775807ms", INT64_MAX },
		{ "9223372036854775s", INT64_C(9223372036854775000) },
		{ "2562047788015h", INT64_C(2562047788015) * 3600000 },
	};
	static const char *const invalid[] = {
		"",
		"s",
		"ms",
		"-1s",
		"+1s",
		"1.5s",
		"1 s",
		" 1s",
		"1s ",
		"1S",
		"1d",
		"1sm",
		"1mss",
		"0x10",
		"1e3",
		"9223372036854775808ms",
		"2562047788015s0",
		"9223372036854776s",
		"99999999999999999999",
		"153722867280913m",
		"2562047788016h",
	};
	size_t i;
	int64_t ms;

	(void)state;
	for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
		ms = -1;
		assert_int_equal(value_parse_duration(valid[i].text, &ms), 0);
		assert_true(ms == valid[i].ms);
	}
	for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
		if (value_parse_duration(invalid[i], &ms) != -1)
			fail_msg("\"%s\" accepted", invalid[i]);
	}
}

static void test_parse_size(void **state)
{
	static const struct {
		const char *text;
		uint64_t bytes;
	} valid[] = {
		{ "0", 0 },
		{ "512", 512 },
		{ "64k", 65536 },
		{ "64K", 65536 },
		{ "16m", 16777216 },
		{ "1g", 1073741824 },
		{ "18446744073709551615", UINT64_MAX },
		{ "17179869183g", UINT64_C(17179869183) << 30 },
	};
	static const char *const invalid[] = {
		"",
		"k",
		"-1",
		"+1",
		"1.5k",
		"1 k",
		" 1",
		"1kb",
		"1t",
		"1kk",
		"0x10",
		"18446744073709551616",
		"17179869184g",
		"1k ",
	};
	size_t i;
	uint64_t bytes;

	(void)state;
	for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
		bytes = 1;
		assert_int_equal(value_parse_size(valid[i].text, &bytes), 0);
		assert_true(bytes == valid[i].bytes);
	}
	for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
		if (value_parse_size(invalid[i], &bytes) != -1)
			fail_msg("\"%s\" accepted", invalid[i]);
	}
}

static void test_parse_listen(void **state)
{
	static const struct {
		const char *text, *host, *canonical;
		unsigned port;
		bool tls;
	} valid[] = {
		{ "127.0.0.1:8080", "127.0.0.1", "127.0.0.1:8080", 8080, false },
		{ "0.0.0.0:0", "0.0.0.0", "0.0.0.0:0", 0, false },
		{ "[::1]:8443 tls", "::1", "[::1]:8443 tls", 8443, true },
		{ "[0:0::1]:1\t tls", "::1", "[::1]:1 tls", 1, true },
	};
	static const char *const invalid[] = {
		"localhost:8080",   "127.0.0.1",
		"::1:8080",	    "[::1]8080",
		"127.0.0.1:65536",  "127.0.0.1:-1",
		"127.0.0.1:80 ssl", "[127.0.0.1]:80",
		"127.0.0.1:80x",    "",
	};
	struct conf_listen listen;
	char why[128];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
		assert_int_equal(value_parse_listen(valid[i].text, &listen, why, sizeof(why)), 0);
		assert_string_equal(listen.host, valid[i].host);
		assert_string_equal(listen.text, valid[i].canonical);
		assert_int_equal(listen.port, valid[i].port);
		assert_int_equal(listen.tls, valid[i].tls);
		free(listen.host);
		free(listen.text);
	}
	for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
		why[0] = '\0';
		if (value_parse_listen(invalid[i], &listen, why, sizeof(why)) != -1)
			fail_msg("'%s' was taken as a listen address", invalid[i]);
		assert_true(why[0] != '\0');
	}
}

static void test_parse_cidr_list(void **state)
{
	struct cidr *list = NULL;
	size_t count = 0;
	char why[128];

	(void)state;
	assert_int_equal(value_parse_cidr_list("10.0.0.0/8, ::1/128\t192.168.1.1", &list, &count,
					       why, sizeof(why)),
			 0);
	assert_int_equal(count, 3);
	assert_int_equal(list[0].prefix, 8);
	assert_int_equal(list[1].family, AF_INET6);
	assert_int_equal(list[2].prefix, 32);
	/* a failure leaves the list as it was */
	assert_int_equal(
		value_parse_cidr_list("10.0.0.0/8 nonsense", &list, &count, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "'nonsense'"));
	assert_int_equal(count, 3);
	assert_int_equal(value_parse_cidr_list(" ,, ", &list, &count, why, sizeof(why)), -1);
	assert_string_equal(why, "missing value");
	assert_int_equal(count, 3);
	free(list);
}

static void test_parse_cidr(void **state)
{
	static const char *const invalid[] = {
		"",
		"/8",
		"10.0.0.0/",
		"10.0.0.0/33",
		"10.0.0.0/-1",
		"10.0.0/8",
		"10.0.0.0/8x",
		"::1/129",
		"localhost",
		"1.2.3.4 ",
		"fe80::1%1",
		"10.0.0.0//8",
		"10.0.0.0/+8",
		"::1/1281",
		"0000:0000:0000:0000:0000:0000:0000:0000:0000/1",
	};
	struct cidr cidr;
	size_t i;

	(void)state;
	assert_int_equal(cidr_parse("10.1.2.3/8", &cidr), 0);
	assert_cidr(&cidr, AF_INET, "10.0.0.0", 8); /* host bits cleared */
	assert_int_equal(cidr_parse("192.168.1.7", &cidr), 0);
	assert_cidr(&cidr, AF_INET, "192.168.1.7", 32);
	assert_int_equal(cidr_parse("172.31.255.255/12", &cidr), 0);
	assert_cidr(&cidr, AF_INET, "172.16.0.0", 12);
	assert_int_equal(cidr_parse("0.0.0.0/0", &cidr), 0);
	assert_cidr(&cidr, AF_INET, "0.0.0.0", 0);
	assert_int_equal(cidr_parse("::1", &cidr), 0);
	assert_cidr(&cidr, AF_INET6, "::1", 128);
	assert_int_equal(cidr_parse("2001:db8:abcd:ffff::1/33", &cidr), 0);
	assert_cidr(&cidr, AF_INET6, "2001:db8:8000::", 33);
	assert_int_equal(cidr_parse("::ffff:10.9.8.7/104", &cidr), 0);
	assert_cidr(&cidr, AF_INET6, "::ffff:10.0.0.0", 104);
	for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
		if (cidr_parse(invalid[i], &cidr) != -1)
			fail_msg("\"%s\" accepted", invalid[i]);
	}
}

static int match4(const struct cidr *cidrs, size_t count, const char *address)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(80) };

	assert_int_equal(inet_pton(AF_INET, address, &sin.sin_addr), 1);
	return cidr_match(cidrs, count, (const struct sockaddr *)&sin);
}

static int match6(const struct cidr *cidrs, size_t count, const char *address)
{
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(80) };

	assert_int_equal(inet_pton(AF_INET6, address, &sin6.sin6_addr), 1);
	return cidr_match(cidrs, count, (const struct sockaddr *)&sin6);
}

static void test_cidr_match(void **state)
{
	struct cidr cidrs[3], mapped, everything;
	struct sockaddr unix_like = { .sa_family = AF_UNIX };

	(void)state;
	assert_int_equal(cidr_parse("127.0.0.0/8", &cidrs[0]), 0);
	assert_int_equal(cidr_parse("10.1.2.128/25", &cidrs[1]), 0);
	assert_int_equal(cidr_parse("2001:db8::/32", &cidrs[2]), 0);

	assert_true(match4(cidrs, 3, "127.0.0.1"));
	assert_true(match4(cidrs, 3, "127.255.255.255"));
	assert_false(match4(cidrs, 3, "128.0.0.1"));
	assert_true(match4(cidrs, 3, "10.1.2.200"));
	assert_false(match4(cidrs, 3, "10.1.2.127"));
	assert_false(match4(cidrs, 0, "127.0.0.1"));

	assert_true(match6(cidrs, 3, "2001:db8:1::5"));
	assert_false(match6(cidrs, 3, "2001:db9::5"));
	assert_false(match6(cidrs, 3, "::1"));
	/* IPv4-mapped IPv6 matches IPv4 CIDRs */
	assert_true(match6(cidrs, 3, "::ffff:127.0.0.1"));
	assert_true(match6(cidrs, 3, "::ffff:10.1.2.129"));
	assert_false(match6(cidrs, 3, "::ffff:10.1.2.1"));
	assert_false(match6(cidrs, 3, "::127.0.0.1")); /* IPv4-compatible is not mapped */
	/* and an IPv6 CIDR of mapped addresses matches plain IPv4 */
	assert_int_equal(cidr_parse("::ffff:192.0.2.0/120", &mapped), 0);
	assert_true(match4(&mapped, 1, "192.0.2.9"));
	assert_false(match4(&mapped, 1, "192.0.3.9"));
	assert_true(match6(&mapped, 1, "::ffff:192.0.2.9"));

	assert_int_equal(cidr_parse("::/0", &everything), 0);
	assert_true(match6(&everything, 1, "2001:db8::1"));
	assert_int_equal(cidr_match(cidrs, 3, &unix_like), 0);
	assert_int_equal(cidr_match(cidrs, 3, NULL), 0);
}

/*
 * The shipped sample must keep loading. "make check" sets TOP_SRCDIR; otherwise the
 * sample is looked for beside this source file.
 */
static void test_sample_config(void **state)
{
	char err[ERR_SIZE], path[512], secret[256];
	const char *top = getenv("TOP_SRCDIR");
	const char *slash = strrchr(__FILE__, '/');
	struct conf *conf;

	(void)state;
	if (top)
		snprintf(path, sizeof(path), "%s/conf/gateway.conf", top);
	else if (slash)
		snprintf(path, sizeof(path), "%.*s/../conf/gateway.conf", (int)(slash - __FILE__),
			 __FILE__);
	else
		snprintf(path, sizeof(path), "../conf/gateway.conf");
	/* not skip(): cmocka 1.1.5 prints "not ok # SKIP", which TAP drivers fail */
	if (access(path, R_OK) != 0) {
		fprintf(stderr, "test_sample_config: %s not found, set TOP_SRCDIR\n", path);
		return;
	}
	/* its credentials come from systemd (LoadCredential=) */
	write_text(secret, sizeof(secret), "gumloop_user_id", "sample-user\n");
	write_text(secret, sizeof(secret), "gumloop_api_key", "sample-key\n");
	setenv("CREDENTIALS_DIRECTORY", dir, 1);
	conf = conf_load(path, err, sizeof(err));
	unsetenv("CREDENTIALS_DIRECTORY");
	if (!conf)
		fail_msg("%s", err);
	assert_int_equal(conf->credential_count, 1);
	assert_string_equal(conf->credentials[0].name, "default");
	assert_string_equal(conf->credentials[0].user_id, "sample-user");
	assert_int_equal(conf->client_count, 0);
	assert_string_equal(conf->listens[0].text, "127.0.0.1:8080");
	conf_free(conf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_valid_file),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_listens),
		cmocka_unit_test(test_bad_listen),
		cmocka_unit_test(test_redis),
		cmocka_unit_test(test_unknown_key),
		cmocka_unit_test(test_unknown_section),
		cmocka_unit_test(test_bad_duration),
		cmocka_unit_test(test_bad_numbers),
		cmocka_unit_test(test_bad_cidr),
		cmocka_unit_test(test_repeated_key),
		cmocka_unit_test(test_missing_credential_section),
		cmocka_unit_test(test_client_credentials),
		cmocka_unit_test(test_tls_needs_cert_and_key),
		cmocka_unit_test(test_upstream),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_short_token_refused),
		cmocka_unit_test(test_line_too_long),
		cmocka_unit_test(test_syntax_error),
		cmocka_unit_test(test_several_errors_sorted),
		cmocka_unit_test(test_error_buffer_truncated),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_empty_values),
		cmocka_unit_test(test_credential_kind),
		cmocka_unit_test(test_secret_literal_env_file),
		cmocka_unit_test(test_secret_credential),
		cmocka_unit_test(test_secret_file_size_limit),
		cmocka_unit_test(test_secret_errors),
		cmocka_unit_test(test_secret_errors_in_file),
		cmocka_unit_test(test_insecure_secret_file_warns),
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_parse_listen),
		cmocka_unit_test(test_parse_cidr_list),
		cmocka_unit_test(test_parse_cidr),
		cmocka_unit_test(test_cidr_match),
		cmocka_unit_test(test_sample_config),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
