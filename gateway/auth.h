/*
 * auth.h -- who may call: the address allowlists, client tokens and the
 * credentials each client was granted. Decisions only; answers are the server's.
 */
#ifndef GATEWAY_AUTH_H
#define GATEWAY_AUTH_H

#include "attributes.h"

#include <sys/socket.h>

struct conf;
struct auth;

/*
 * Failed token checks an address may make in a burst, and how many it gets back
 * per second: beyond them its requests are refused (429) before any token is
 * looked at, so tokens cannot be guessed at line rate.
 */
#define AUTH_FAILURE_BURST 10
#define AUTH_FAILURE_RATE  1.0
/* Addresses remembered; past it, those whose allowance is full again are dropped. */
#define AUTH_FAILURE_MAX_ADDRESSES 10000

/* Token digests for conf's clients. conf must outlive the result. NULL on error. */
MUST_CHECK struct auth *auth_new(const struct conf *conf);
void auth_free(struct auth *auth);

/*
 * auth replaces previous (a reload): clients whose name and rate did not change
 * keep their rate bucket, and every address keeps its failure allowance (moved
 * out of previous). Cannot fail.
 */
void auth_carry_over(struct auth *auth, struct auth *previous);

/* 0 when addr may try a token now, else the seconds until it may (for Retry-After). */
int auth_failure_wait(struct auth *auth, const struct sockaddr *addr);

/* addr presented a missing or unknown token: one less try for it. */
void auth_failure_record(struct auth *auth, const struct sockaddr *addr);

/* 1 if addr may call the API (allow), resp. read /metrics (admin_allow). */
int auth_address_allowed(const struct auth *auth, const struct sockaddr *addr);
int auth_admin_allowed(const struct auth *auth, const struct sockaddr *addr);

/* 1 when the config has [client] sections, so every API call needs a token. */
int auth_tokens_required(const struct auth *auth);

/*
 * The client whose token is in authorization ("Bearer TOKEN"), compared in
 * constant time over SHA-256 digests. Returns its index in conf->clients, or -1
 * (missing header, other scheme, unknown token).
 */
int auth_client(const struct auth *auth, const char *authorization);

/*
 * Takes one request from client's token bucket (rate per second, burst twice
 * that but at least 1; full when the client first appears in a config). Returns 0 when allowed, else the
 * whole seconds until a token is back (for Retry-After, at least 1). Always 0
 * for a client without a rate, or client < 0.
 */
int auth_rate_take(struct auth *auth, int client);

/*
 * 1 when client (an index from auth_client, or -1 without [client] sections)
 * has scope (enum conf_scope): without [client] sections every caller has
 * status and download, and no one may start exports.
 */
int auth_client_may(const struct auth *auth, int client, unsigned scope);

/*
 * The credential to use: client is an index from auth_client, or -1 without
 * [client] sections; user_id NULL means the default (the client's first grant,
 * else the first credential). Returns an index in conf->credentials, or -1 when
 * the user id is unknown or not granted (the caller answers 403 either way).
 */
int auth_credential(const struct auth *auth, int client, const char *user_id);

#endif
