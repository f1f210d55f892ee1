/*
 * redact.c -- a scan for each configured secret, earliest match first. Bodies
 * here are upstream error answers, at most 1 MiB, and secrets are few: no index.
 */
#include "redact.h"

#include <stdlib.h>
#include <string.h>

#include "conf.h"

/* The earliest secret in text[from..length), or NULL; its length in *found_length. */
static const char *first_secret(const char *text, size_t length, size_t from,
				const struct conf *conf, size_t *found_length)
{
	const char *best = NULL;
	size_t count = conf->credential_count * 2 + conf->client_count;

	for (size_t i = 0; i < count; i++) {
		const char *secret;
		const char *at;
		size_t secret_length;

		if (i < conf->credential_count * 2)
			secret = i % 2 ? conf->credentials[i / 2].user_id
				       : conf->credentials[i / 2].api_key;
		else
			secret = conf->clients[i - conf->credential_count * 2].token;
		if (secret == NULL || (secret_length = strlen(secret)) < REDACT_MIN_BYTES)
			continue;
		at = memmem(text + from, length - from, secret, secret_length);
		/* at one place, the longer secret wins: no tail of it is left */
		if (at != NULL &&
		    (best == NULL || at < best || (at == best && secret_length > *found_length))) {
			best = at;
			*found_length = secret_length;
		}
	}
	return best;
}

int redact_secrets(const char *text, size_t length, const struct conf *conf, char **redacted,
		   size_t *redacted_length)
{
	size_t from = 0, used = 0, cap, found_length = 0;
	const char *found = first_secret(text, length, 0, conf, &found_length);
	char *out, *grown;

	*redacted = NULL;
	*redacted_length = 0;
	if (found == NULL)
		return 0;
	cap = length + sizeof(REDACT_MARK) + 1;
	out = malloc(cap);
	while (out != NULL) {
		size_t before = found != NULL ? (size_t)(found - text) - from : length - from;
		size_t need = used + before + (found != NULL ? sizeof(REDACT_MARK) : 1);

		if (need > cap) {
			cap = need * 2;
			grown = realloc(out, cap);
			if (grown == NULL) {
				free(out);
				return -1;
			}
			out = grown;
		}
		memcpy(out + used, text + from, before);
		used += before;
		if (found == NULL)
			break;
		memcpy(out + used, REDACT_MARK, sizeof(REDACT_MARK) - 1);
		used += sizeof(REDACT_MARK) - 1;
		from = (size_t)(found - text) + found_length;
		found_length = 0;
		found = first_secret(text, length, from, conf, &found_length);
	}
	if (out == NULL)
		return -1;
	out[used] = '\0';
	*redacted = out;
	*redacted_length = used;
	return 1;
}
