/*
 * auth.c -- allowlists and client tokens. Tokens are kept only as SHA-256
 * digests here, so every comparison has the same length and leaks nothing.
 */
#include "auth.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "conf.h"
#include "hash.h"

struct bucket {
	double tokens;
	double last; /* seconds, monotonic */
};

/* The failure allowance of one client address (IPv4 as IPv4-mapped IPv6). */
struct failures {
	unsigned char address[16]; /* hash key */
	struct bucket bucket;
	UT_hash_handle hh;
};

struct auth {
	const struct conf *conf;
	unsigned char (*token_digests)[SHA256_DIGEST_LENGTH]; /* one per client */
	struct bucket *buckets;				      /* one per client */
	struct failures *failures;			      /* uthash head */
};

static double now_seconds(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* Twice the rate per second, but at least one request (a rate of 20/m is 0.67/s). */
static double bucket_burst(double rate)
{
	return 2 * rate < 1 ? 1 : 2 * rate;
}

/* The bucket previous kept for a client of this name and rate, or NULL. */
static const struct bucket *kept_bucket(const struct auth *previous,
					const struct conf_client *client)
{
	for (size_t i = 0; previous != NULL && i < previous->conf->client_count; i++) {
		const struct conf_client *old = &previous->conf->clients[i];

		if (strcmp(old->name, client->name) == 0 &&
		    old->rate_per_second == client->rate_per_second)
			return &previous->buckets[i];
	}
	return NULL;
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
		auth->buckets[i].tokens = bucket_burst(conf->clients[i].rate_per_second);
		auth->buckets[i].last = now_seconds();
	}
	return auth;
}

void auth_carry_over(struct auth *auth, struct auth *previous)
{
	struct failures *entry, *next;

	if (previous == NULL)
		return;
	for (size_t i = 0; i < auth->conf->client_count; i++) {
		const struct bucket *kept = kept_bucket(previous, &auth->conf->clients[i]);

		if (kept != NULL)
			auth->buckets[i] = *kept;
	}
	HASH_ITER (hh, auth->failures, entry, next) {
		HASH_DEL(auth->failures, entry);
		free(entry);
	}
	auth->failures = previous->failures;
	previous->failures = NULL;
}

/* Takes one token from a bucket of rate per second, burst; 0 or seconds to wait. */
static int bucket_take(struct bucket *bucket, double rate, double burst, int take)
{
	double now = now_seconds(), wait;

	bucket->tokens += (now - bucket->last) * rate;
	if (bucket->tokens > burst)
		bucket->tokens = burst;
	bucket->last = now;
	if (bucket->tokens >= 1) {
		if (take)
			bucket->tokens -= 1;
		return 0;
	}
	wait = (1 - bucket->tokens) / rate;
	return wait < 1 ? 1 : (int)(wait + 0.999);
}

static void address_key(const struct sockaddr *addr, unsigned char key[16])
{
	memset(key, 0, 16);
	if (addr->sa_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)(const void *)addr)->sin6_addr, 16);
	} else if (addr->sa_family == AF_INET) {
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &((const struct sockaddr_in *)(const void *)addr)->sin_addr, 4);
	}
}

static struct failures *failures_find(const struct auth *auth, const struct sockaddr *addr)
{
	unsigned char key[16];
	struct failures *found = NULL;

	address_key(addr, key);
	HASH_FIND(hh, auth->failures, key, sizeof(key), found);
	return found;
}

int auth_failure_wait(struct auth *auth, const struct sockaddr *addr)
{
	struct failures *entry = failures_find(auth, addr);

	if (entry == NULL)
		return 0;
	return bucket_take(&entry->bucket, AUTH_FAILURE_RATE, AUTH_FAILURE_BURST, 0);
}

/* Room for one more address: those with a full allowance again are forgotten. */
static void failures_prune(struct auth *auth)
{
	struct failures *entry, *next;
	double now = now_seconds();

	HASH_ITER (hh, auth->failures, entry, next) {
		if (entry->bucket.tokens + (now - entry->bucket.last) * AUTH_FAILURE_RATE >=
		    AUTH_FAILURE_BURST) {
			HASH_DEL(auth->failures, entry);
			free(entry);
		}
	}
	/* every one still owes: drop one anyway (the table stays bounded) */
	if (HASH_COUNT(auth->failures) >= AUTH_FAILURE_MAX_ADDRESSES) {
		entry = auth->failures;
		HASH_DEL(auth->failures, entry);
		free(entry);
	}
}

void auth_failure_record(struct auth *auth, const struct sockaddr *addr)
{
	struct failures *entry = failures_find(auth, addr);

	if (entry == NULL) {
		if (HASH_COUNT(auth->failures) >= AUTH_FAILURE_MAX_ADDRESSES)
			failures_prune(auth);
		entry = calloc(1, sizeof(*entry));
		if (entry == NULL)
			return;
		address_key(addr, entry->address);
		entry->bucket.tokens = AUTH_FAILURE_BURST;
		entry->bucket.last = now_seconds();
		hash_add_failed = 0;
		HASH_ADD(hh, auth->failures, address, sizeof(entry->address), entry);
		if (hash_add_failed) {
			free(entry);
			return;
		}
	}
	bucket_take(&entry->bucket, AUTH_FAILURE_RATE, AUTH_FAILURE_BURST, 1);
}

void auth_free(struct auth *auth)
{
	struct failures *entry, *next;

	if (auth == NULL)
		return;
	HASH_ITER (hh, auth->failures, entry, next) {
		HASH_DEL(auth->failures, entry);
		free(entry);
	}
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
	double rate;

	if (client < 0 || (rate = auth->conf->clients[client].rate_per_second) <= 0)
		return 0;
	return bucket_take(&auth->buckets[client], rate, bucket_burst(rate), 1);
}

int auth_address_allowed(const struct auth *auth, const struct sockaddr *addr)
{
	return cidr_match(auth->conf->allow, auth->conf->allow_count, addr);
}

int auth_admin_allowed(const struct auth *auth, const struct sockaddr *addr)
{
	return cidr_match(auth->conf->admin_allow, auth->conf->admin_allow_count, addr);
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

int auth_client_may(const struct auth *auth, int client, unsigned scope)
{
	unsigned scopes = client >= 0 ? auth->conf->clients[client].scopes
				      : CONF_SCOPE_STATUS | CONF_SCOPE_DOWNLOAD;

	return (scopes & scope) == scope;
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
