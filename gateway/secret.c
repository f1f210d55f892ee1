/*
 * secret.c -- reading secrets: environment variables, files (regular, at most
 * SECRET_MAX_BYTES, read without blocking on a FIFO), literals; every buffer
 * that held one is wiped before it is freed.
 */
#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

void secret_free(char *secret)
{
	if (!secret)
		return;
	OPENSSL_cleanse(secret, strlen(secret));
	free(secret);
}

static int has_control_character(const char *text, size_t length)
{
	size_t i;

	for (i = 0; i < length; i++) {
		unsigned char c = (unsigned char)text[i];

		if (c < 0x20 || c == 0x7f)
			return 1;
	}
	return 0;
}

static int read_secret_file(const char *path, char **value, int *insecure, char *err, size_t errlen)
{
	const size_t capacity = SECRET_MAX_BYTES + 2; /* one byte to spot "too big" */
	char *buffer = NULL;
	size_t length = 0;
	struct stat st;
	int fd;

	/* O_NONBLOCK: a FIFO must not hang the load; it is rejected below anyway. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd == -1 || fstat(fd, &st) == -1) {
		snprintf(err, errlen, "cannot read secret file %s: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "secret file %s is not a regular file", path);
		goto fail;
	}
	buffer = malloc(capacity);
	if (!buffer) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	while (length < capacity - 1) {
		ssize_t got = read(fd, buffer + length, capacity - 1 - length);

		if (got == -1 && errno == EINTR)
			continue;
		if (got == -1) {
			snprintf(err, errlen, "cannot read secret file %s: %s", path,
				 strerror(errno));
			goto fail;
		}
		if (got == 0)
			break;
		length += (size_t)got;
	}
	if (length > SECRET_MAX_BYTES) {
		snprintf(err, errlen, "secret file %s is larger than %d bytes", path,
			 SECRET_MAX_BYTES);
		goto fail;
	}
	if (length > 0 && buffer[length - 1] == '\n')
		length--;
	if (length > 0 && buffer[length - 1] == '\r')
		length--;
	buffer[length] = '\0';
	if (length == 0) {
		snprintf(err, errlen, "secret file %s is empty", path);
		goto fail;
	}
	if (has_control_character(buffer, length)) {
		snprintf(err, errlen,
			 "secret file %s contains a NUL byte, a line break or another "
			 "control character",
			 path);
		goto fail;
	}
	close(fd);
	*insecure = (st.st_mode & 077) != 0;
	*value = buffer;
	return 0;
fail:
	if (fd != -1)
		close(fd);
	if (buffer) {
		OPENSSL_cleanse(buffer, capacity);
		free(buffer);
	}
	return -1;
}

static int copy_secret(const char *secret, const char *origin, char **value, char *err,
		       size_t errlen)
{
	if (*secret == '\0') {
		snprintf(err, errlen, "%s is empty", origin);
		return -1;
	}
	if (has_control_character(secret, strlen(secret))) {
		snprintf(err, errlen, "%s contains a line break or another control character",
			 origin);
		return -1;
	}
	*value = strdup(secret);
	if (!*value) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

/* systemd's LoadCredential=NAME:...: the file NAME in $CREDENTIALS_DIRECTORY. */
static int read_credential(const char *name, char **value, int *insecure, char *err, size_t errlen)
{
	const char *directory = getenv("CREDENTIALS_DIRECTORY");
	char path[PATH_MAX];

	if (*name == '\0' || strchr(name, '/') != NULL || strcmp(name, ".") == 0 ||
	    strcmp(name, "..") == 0) {
		snprintf(err, errlen, "credential: needs a credential name (a file name, no /)");
		return -1;
	}
	if (directory == NULL || directory[0] != '/') {
		snprintf(err, errlen,
			 "credential:%s: CREDENTIALS_DIRECTORY is not set (systemd sets it for a "
			 "unit with LoadCredential=%s:FILE)",
			 name, name);
		return -1;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", directory, name) >= sizeof(path)) {
		snprintf(err, errlen, "credential:%s: the path is too long", name);
		return -1;
	}
	return read_secret_file(path, value, insecure, err, errlen);
}

int secret_resolve(const char *spec, char **value, int *insecure, char *err, size_t errlen)
{
	char origin[300];

	*value = NULL;
	*insecure = 0;
	if (strncmp(spec, "env:", 4) == 0) {
		const char *name = spec + 4;
		const char *secret = getenv(name);

		if (*name == '\0') {
			snprintf(err, errlen, "env: needs a variable name");
			return -1;
		}
		if (!secret) {
			snprintf(err, errlen, "environment variable %s is not set", name);
			return -1;
		}
		snprintf(origin, sizeof(origin), "environment variable %s", name);
		return copy_secret(secret, origin, value, err, errlen);
	}
	if (strncmp(spec, "file:", 5) == 0) {
		if (spec[5] == '\0') {
			snprintf(err, errlen, "file: needs a path");
			return -1;
		}
		return read_secret_file(spec + 5, value, insecure, err, errlen);
	}
	if (strncmp(spec, "credential:", 11) == 0)
		return read_credential(spec + 11, value, insecure, err, errlen);
	return copy_secret(spec, "secret", value, err, errlen);
}
