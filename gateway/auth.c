/*
 * auth.c -- allowlists and client tokens. Tokens are kept only as SHA-256
 * digests here, so every comparison has the same length and leaks nothing.
 */
#include "auth.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "conf.h"

struct bucket {
	double tokens;
	double last; /* seconds, monotonic */
};

struct auth {
	const struct conf *conf;
	unsigned char (*token_digests)[SHA256_DIGEST_LENGTH]; /* one per client */
	struct bucket *buckets;				      /* one per client */
};

static double now_seconds(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

struct auth *auth_new(const struct conf *conf)
{
	struct auth *auth = calloc(1, sizeof(*auth));

	if (auth == NULL)
		return NULL;
	auth->conf = conf;
	if (conf->client_count == 0)
		return auth;
	auth->token_digests = calloc(conf->client_count, sizeof(*auth->token_digests));
	auth->buckets = calloc(conf->client_count, sizeof(*auth->buckets));
	if (auth->token_digests == NULL || auth->buckets == NULL) {
		free(auth->token_digests);
		free(auth->buckets);
		free(auth);
		return NULL;
	}
	for (size_t i = 0; i < conf->client_count; i++) {
		const char *token = conf->clients[i].token;

		SHA256((const unsigned char *)token, strlen(token), auth->token_digests[i]);
		auth->buckets[i].tokens = 2 * conf->clients[i].rate_per_second;
		auth->buckets[i].last = now_seconds();
	}
	return auth;
}

void auth_free(struct auth *auth)
{
	if (auth == NULL)
		return;
	if (auth->token_digests != NULL) {
		OPENSSL_cleanse(auth->token_digests,
				auth->conf->client_count * sizeof(*auth->token_digests));
		free(auth->token_digests);
	}
	free(auth->buckets);
	free(auth);
}

int auth_rate_take(struct auth *auth, int client)
{
	double rate, burst, now, wait;
	struct bucket *bucket;

	if (client < 0 || (rate = auth->conf->clients[client].rate_per_second) <= 0)
		return 0;
	bucket = &auth->buckets[client];
	burst = 2 * rate;
	now = now_seconds();
	bucket->tokens += (now - bucket->last) * rate;
	if (bucket->tokens > burst)
		bucket->tokens = burst;
	bucket->last = now;
	if (bucket->tokens >= 1) {
		bucket->tokens -= 1;
		return 0;
	}
	wait = (1 - bucket->tokens) / rate;
	return wait < 1 ? 1 : (int)(wait + 0.999);
}

int auth_address_allowed(const struct auth *auth, const struct sockaddr *addr)
{
	return conf_cidr_match(auth->conf->allow, auth->conf->allow_count, addr);
}

int auth_admin_allowed(const struct auth *auth, const struct sockaddr *addr)
{
	return conf_cidr_match(auth->conf->admin_allow, auth->conf->admin_allow_count, addr);
}

int auth_tokens_required(const struct auth *auth)
{
	return auth->conf->client_count > 0;
}

int auth_client(const struct auth *auth, const char *authorization)
{
	unsigned char digest[SHA256_DIGEST_LENGTH];
	const char *token;
	int found = -1;

	if (authorization == NULL || strncasecmp(authorization, "Bearer ", 7) != 0)
		return -1;
	token = authorization + 7;
	while (*token == ' ')
		token++;
	SHA256((const unsigned char *)token, strlen(token), digest);
	/* Look at every client, so the time taken does not say which one matched. */
	for (size_t i = 0; i < auth->conf->client_count; i++) {
		if (CRYPTO_memcmp(digest, auth->token_digests[i], sizeof(digest)) == 0)
			found = (int)i;
	}
	OPENSSL_cleanse(digest, sizeof(digest));
	return found;
}

int auth_credential(const struct auth *auth, int client, const char *user_id)
{
	const struct conf *conf = auth->conf;
	int wanted;

	if (client < 0) {
		if (user_id == NULL)
			return 0;
		return conf_find_credential_by_user_id(conf, user_id);
	}
	if (user_id == NULL)
		return (int)conf->clients[client].credentials[0];
	wanted = conf_find_credential_by_user_id(conf, user_id);
	for (size_t i = 0; wanted >= 0 && i < conf->clients[client].credential_count; i++) {
		if (conf->clients[client].credentials[i] == (size_t)wanted)
			return wanted;
	}
	return -1;
}
