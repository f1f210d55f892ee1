/*
 * fuzz_conf.c -- libFuzzer target for conf_load(): the input is a whole config
 * file, written to one private temporary file per run. Checks the promises of
 * conf.h about a loaded conf and about the error text; not a test of messages.
 *
 * Secrets resolve the same way on every machine: the environment is replaced at
 * start-up by PATH (for the sanitizers' symbolizer) and a few GUMLOOP_* names,
 * and the private directory holds secret files that inputs reach by a fixed
 * name, /proc/self/fd/99/NAME, since the directory's own name is random. Do not
 * run this target with -fork or -jobs.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"

#define ERROR_TEXT_BYTES     8192
#define SMALL_ERROR_TEXT_MAX 97
#define DIRECTORY_FD	     99 /* the seeds and conf.dict name it */
#define CONF_NAME	     "gateway.conf"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char directory[] = "/tmp/fuzz-conf.XXXXXX";
static char path[sizeof(directory) + sizeof("/" CONF_NAME)];

static const struct {
	const char *name;
	const char *value;
} environment[] = {
	{ "GUMLOOP_USER_ID", "fuzz-user" },
	{ "GUMLOOP_API_KEY", "fuzz-api-key" },
	{ "GUMLOOP_USER_ID_2", "fuzz-user-2" },
	{ "GUMLOOP_API_KEY_2", "fuzz-api-key-2" },
	{ "GUMLOOP_CLIENT_TOKEN", "fuzz-client-token" },
	{ "GUMLOOP_EMPTY", "" },
	{ "GUMLOOP_CONTROL", "line\nbreak" },
};

/* Contents NULL: SECRET_MAX_BYTES + repeat bytes of 'x'. */
static const struct {
	const char *name;
	const char *contents;
	int repeat;
	mode_t mode;
} secret_files[] = {
	{ "secret", "fuzz-file-secret\n", 0, 0600 },
	{ "secret-crlf", "fuzz-crlf-secret\r\n", 0, 0600 },
	{ "secret-readable", "fuzz-readable-secret", 0, 0644 }, /* a warning */
	{ "empty", "", 0, 0600 },
	{ "newline", "\n", 0, 0600 },
	{ "control", "a\001b", 0, 0600 },
	{ "largest", NULL, 0, 0600 },
	{ "too-large", NULL, 1, 0600 },
};

#define COUNT(array) (sizeof(array) / sizeof((array)[0]))

static void fail(const char *what)
{
	perror(what);
	abort();
}

static void reset_environment(void)
{
	char *search_path = getenv("PATH");

	search_path = search_path ? strdup(search_path) : NULL;
	if (clearenv() != 0)
		fail("clearenv");
	if (search_path && setenv("PATH", search_path, 1) != 0)
		fail("setenv PATH");
	free(search_path);
	for (size_t i = 0; i < COUNT(environment); i++) {
		if (setenv(environment[i].name, environment[i].value, 1) != 0)
			fail("setenv");
	}
}

static void write_file(const char *file, const void *data, size_t size, mode_t mode)
{
	const char *cursor = data;
	int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	if (fd == -1 || fchmod(fd, mode) == -1)
		fail(file);
	while (size > 0) {
		ssize_t written = write(fd, cursor, size);

		if (written == -1)
			fail(file);
		cursor += written;
		size -= (size_t)written;
	}
	if (close(fd) == -1)
		fail(file);
}

static void write_secret_files(void)
{
	char file[sizeof(directory) + 64];
	char *filler = malloc(SECRET_MAX_BYTES + 1);

	if (filler == NULL)
		fail("malloc");
	memset(filler, 'x', SECRET_MAX_BYTES + 1);
	for (size_t i = 0; i < COUNT(secret_files); i++) {
		const char *contents = secret_files[i].contents;

		snprintf(file, sizeof(file), "%s/%s", directory, secret_files[i].name);
		if (contents)
			write_file(file, contents, strlen(contents), secret_files[i].mode);
		else
			write_file(file, filler, SECRET_MAX_BYTES + (size_t)secret_files[i].repeat,
				   secret_files[i].mode);
	}
	free(filler);
}

/* The directory as fd DIRECTORY_FD, so /proc/self/fd/99/NAME reaches its files. */
static void open_directory_fd(void)
{
	int fd;

	if (fcntl(DIRECTORY_FD, F_GETFD) != -1) {
		fprintf(stderr, "fuzz_conf: fd %d is already in use\n", DIRECTORY_FD);
		abort();
	}
	fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1 || dup2(fd, DIRECTORY_FD) == -1)
		fail(directory);
	close(fd);
}

static void remove_directory(void)
{
	char file[sizeof(directory) + 64];

	for (size_t i = 0; i < COUNT(secret_files); i++) {
		snprintf(file, sizeof(file), "%s/%s", directory, secret_files[i].name);
		unlink(file);
	}
	unlink(path);
	rmdir(directory);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	FILE *quiet;

	(void)argc;
	(void)argv;
	reset_environment();
	if (mkdtemp(directory) == NULL)
		fail("mkdtemp");
	snprintf(path, sizeof(path), "%s/%s", directory, CONF_NAME);
	atexit(remove_directory);
	write_secret_files();
	open_directory_fd();
	/*
	 * log_warn (a secret file readable by others) writes to the stdio stream,
	 * which glibc lets a program replace; libFuzzer and the sanitizers keep
	 * writing to fd 2.
	 */
	quiet = fopen("/dev/null", "we");
	if (quiet == NULL)
		fail("/dev/null");
	stderr = quiet;
	return 0;
}

static int nonempty(const char *text)
{
	return text != NULL && text[0] != '\0';
}

/* Each network address is inside its own CIDR, an IPv4 one also when v4-mapped. */
static void check_cidr_matches(const struct cidr *cidrs, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		struct sockaddr_in6 v6 = { .sin6_family = AF_INET6 };
		struct sockaddr_in v4 = { .sin_family = AF_INET };

		if (cidrs[i].family == AF_INET) {
			memcpy(&v4.sin_addr, cidrs[i].addr, 4);
			v6.sin6_addr.s6_addr[10] = 0xff;
			v6.sin6_addr.s6_addr[11] = 0xff;
			memcpy(&v6.sin6_addr.s6_addr[12], cidrs[i].addr, 4);
			if (!cidr_match(cidrs, count, (struct sockaddr *)&v4))
				abort();
		} else {
			memcpy(&v6.sin6_addr, cidrs[i].addr, 16);
		}
		if (!cidr_match(cidrs, count, (struct sockaddr *)&v6))
			abort();
	}
}

static void check_cidrs(const struct cidr *cidrs, size_t count)
{
	if (count == 0 || cidrs == NULL)
		abort();
	for (size_t i = 0; i < count; i++) {
		if (cidrs[i].family == AF_INET && cidrs[i].prefix <= 32)
			continue;
		if (cidrs[i].family == AF_INET6 && cidrs[i].prefix <= 128)
			continue;
		abort();
	}
	check_cidr_matches(cidrs, count);
}

static void check_credentials(const struct conf *conf)
{
	for (size_t i = 0; i < conf->credential_count; i++) {
		const struct conf_credential *credential = &conf->credentials[i];

		if (!nonempty(credential->name) || !nonempty(credential->user_id) ||
		    !nonempty(credential->api_key))
			abort();
		if (conf_find_credential_by_user_id(conf, credential->user_id) != (int)i)
			abort(); /* user ids are unique */
	}
	for (size_t i = 0; i < conf->client_count; i++) {
		const struct conf_client *client = &conf->clients[i];

		if (!nonempty(client->name) || !nonempty(client->token) ||
		    client->credential_count == 0 || client->rate_per_second < 0)
			abort();
		for (size_t c = 0; c < client->credential_count; c++) {
			if (client->credentials[c] >= conf->credential_count)
				abort();
		}
	}
}

static void check_conf(const struct conf *conf)
{
	if (conf->listen_count == 0 || conf->credential_count == 0)
		abort();
	for (size_t i = 0; i < conf->listen_count; i++) {
		if (!nonempty(conf->listens[i].text) || !nonempty(conf->listens[i].host))
			abort();
	}
	check_cidrs(conf->allow, conf->allow_count);
	check_cidrs(conf->admin_allow, conf->admin_allow_count);
	if (conf->upstream == NULL || strncmp(conf->upstream, "https://", 8) != 0)
		abort();
	check_credentials(conf);
}

/* Every error line is "FILE:LINE: ...", so the text starts with the path. */
static void check_errors(const char *err)
{
	size_t length = strlen(path);

	if (strncmp(err, path, length) != 0 || err[length] != ':')
		abort();
}

/* A short err buffer gets a NUL-terminated prefix of the full text, or nothing. */
static void check_truncated_errors(const char *full, size_t size)
{
	char small[SMALL_ERROR_TEXT_MAX + 1];
	size_t small_length = size % (SMALL_ERROR_TEXT_MAX + 1);

	memset(small, 'x', sizeof(small));
	if (conf_load(path, small, small_length) != NULL)
		abort();
	if (small_length == 0) {
		if (small[0] != 'x')
			abort();
		return;
	}
	if (memchr(small, '\0', small_length) == NULL)
		abort();
	if (strncmp(small, full, strlen(small)) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[ERROR_TEXT_BYTES];
	struct conf *conf;

	write_file(path, data, size, 0600);
	memset(err, 'x', sizeof(err));
	conf = conf_load(path, err, sizeof(err));
	if (memchr(err, '\0', sizeof(err)) == NULL)
		abort();
	if (conf != NULL) {
		if (err[0] != '\0')
			abort();
		check_conf(conf);
		conf_free(conf);
	} else {
		check_errors(err);
		check_truncated_errors(err, size);
	}
	return 0;
}
