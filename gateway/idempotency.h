/*
 * idempotency.h -- what POST /export_data keeps for Idempotency-Key
 * (draft-ietf-httpapi-idempotency-key-header): per client and key, the
 * SHA-256 of the body the first request sent upstream, and, once it is
 * answered, that answer for idempotency_ttl, at most idempotency_max_keys of
 * them (least recently used dropped first). Pure bookkeeping, no I/O and no
 * clock of its own (the caller passes the time), so that fleet mode can keep
 * the same records in Redis behind the same calls.
 */
#ifndef GATEWAY_IDEMPOTENCY_H
#define GATEWAY_IDEMPOTENCY_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>

#define IDEMPOTENCY_DIGEST_BYTES 32
#define IDEMPOTENCY_KEY_MAX	 255

struct idempotency;

/* A kept answer, as idempotency_begin hands it back. */
struct idempotency_answer {
	int status;
	const char *content_type;
	const char *body;
	size_t body_length;
};

enum idempotency_state {
	IDEMPOTENCY_NEW,       /* carry it out; then idempotency_finish or _forget */
	IDEMPOTENCY_IN_FLIGHT, /* the first request with this key is not answered yet */
	IDEMPOTENCY_REPLAY,    /* answered: *kept is that answer */
	IDEMPOTENCY_REUSED,    /* the key came with another body */
};

MUST_CHECK struct idempotency *idempotency_new(void);
void idempotency_free(struct idempotency *store);

/*
 * 1 when key is what the header may be: 1 to IDEMPOTENCY_KEY_MAX bytes of
 * printable ASCII (space included).
 */
int idempotency_key_valid(const char *key);

/*
 * Looks up client's key at now_ms (entries past their TTL are gone). NEW makes
 * an in-flight record of digest; -1 (and nothing kept) when out of memory.
 * max_keys bounds the records (in-flight ones are never dropped).
 */
MUST_CHECK int idempotency_begin(struct idempotency *store, const char *client, const char *key,
				 const unsigned char digest[IDEMPOTENCY_DIGEST_BYTES],
				 int64_t now_ms, size_t max_keys, enum idempotency_state *state,
				 struct idempotency_answer *kept);

/*
 * The answer to client's in-flight key: kept until now_ms + ttl_ms when it is
 * a 2xx or a 4xx, else (5xx: a retry should try again) forgotten, as it is
 * when it cannot be copied.
 */
void idempotency_finish(struct idempotency *store, const char *client, const char *key,
			const struct idempotency_answer *answer, int64_t now_ms, int64_t ttl_ms);

/* The in-flight key's request was not carried out after all: forgotten. */
void idempotency_forget(struct idempotency *store, const char *client, const char *key);

/* Records kept, in flight included (for the tests and metrics). */
size_t idempotency_count(const struct idempotency *store);

#endif
