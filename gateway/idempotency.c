/*
 * idempotency.c -- Idempotency-Key records: a hash by client and key, and a
 * least-recently-used list of the answered ones for the size bound.
 */
#include "idempotency.h"

#include <stdlib.h>
#include <string.h>

#include <utlist.h>

#include "hash.h"

struct record {
	char *id; /* client US key (hash_key_join): the hash key */
	unsigned char digest[IDEMPOTENCY_DIGEST_BYTES];
	int answered;
	int64_t expires_ms;
	int status;
	char *content_type;
	char *body;
	size_t body_length;
	struct record *prev, *next; /* the answered ones, oldest use first */
	UT_hash_handle hh;
};

struct idempotency {
	struct record *records;
	struct record *lru;
};

struct idempotency *idempotency_new(void)
{
	return calloc(1, sizeof(struct idempotency));
}

static void record_free(struct idempotency *store, struct record *record)
{
	HASH_DEL(store->records, record);
	if (record->answered)
		DL_DELETE(store->lru, record);
	free(record->id);
	free(record->content_type);
	free(record->body);
	free(record);
}

void idempotency_free(struct idempotency *store)
{
	if (store == NULL)
		return;
	while (store->records != NULL)
		record_free(store, store->records);
	free(store);
}

int idempotency_key_valid(const char *key)
{
	size_t length = strlen(key);

	if (length == 0 || length > IDEMPOTENCY_KEY_MAX)
		return 0;
	for (; *key != '\0'; key++) {
		if (*key < 0x20 || *key > 0x7e)
			return 0;
	}
	return 1;
}

static struct record *find(struct idempotency *store, const char *client, const char *key)
{
	struct record *record = NULL;
	char buf[128];
	char *id = hash_key_join(buf, sizeof(buf), client, key);

	if (id != NULL)
		HASH_FIND_STR(store->records, id, record);
	hash_key_free(id, buf);
	return record;
}

static void trim(struct idempotency *store, size_t max_keys)
{
	while (HASH_COUNT(store->records) >= max_keys && store->lru != NULL)
		record_free(store, store->lru);
}

int idempotency_begin(struct idempotency *store, const char *client, const char *key,
		      const unsigned char digest[IDEMPOTENCY_DIGEST_BYTES], int64_t now_ms,
		      size_t max_keys, enum idempotency_state *state,
		      struct idempotency_answer *kept)
{
	struct record *record = find(store, client, key);

	memset(kept, 0, sizeof(*kept));
	if (record != NULL && record->answered && now_ms >= record->expires_ms) {
		record_free(store, record);
		record = NULL;
	}
	if (record != NULL) {
		if (memcmp(record->digest, digest, IDEMPOTENCY_DIGEST_BYTES) != 0) {
			*state = IDEMPOTENCY_REUSED;
		} else if (!record->answered) {
			*state = IDEMPOTENCY_IN_FLIGHT;
		} else {
			*state = IDEMPOTENCY_REPLAY;
			kept->status = record->status;
			kept->content_type = record->content_type;
			kept->body = record->body;
			kept->body_length = record->body_length;
			DL_DELETE(store->lru, record);
			DL_APPEND(store->lru, record);
		}
		return 0;
	}
	trim(store, max_keys);
	record = calloc(1, sizeof(*record));
	if (record == NULL || (record->id = hash_key_join(NULL, 0, client, key)) == NULL) {
		free(record);
		return -1;
	}
	memcpy(record->digest, digest, IDEMPOTENCY_DIGEST_BYTES);
	hash_add_failed = 0;
	HASH_ADD_KEYPTR(hh, store->records, record->id, strlen(record->id), record);
	if (hash_add_failed) {
		free(record->id);
		free(record);
		return -1;
	}
	*state = IDEMPOTENCY_NEW;
	return 0;
}

void idempotency_finish(struct idempotency *store, const char *client, const char *key,
			const struct idempotency_answer *answer, int64_t now_ms, int64_t ttl_ms)
{
	struct record *record = find(store, client, key);

	if (record == NULL || record->answered)
		return;
	if (!((answer->status >= 200 && answer->status < 300) ||
	      (answer->status >= 400 && answer->status < 500)) ||
	    ttl_ms <= 0) {
		record_free(store, record);
		return;
	}
	record->content_type = strdup(answer->content_type ? answer->content_type : "");
	record->body = malloc(answer->body_length + 1);
	if (record->content_type == NULL || record->body == NULL) {
		record_free(store, record);
		return;
	}
	if (answer->body_length > 0)
		memcpy(record->body, answer->body, answer->body_length);
	record->body[answer->body_length] = '\0';
	record->body_length = answer->body_length;
	record->status = answer->status;
	record->expires_ms = now_ms + ttl_ms;
	record->answered = 1;
	DL_APPEND(store->lru, record);
}

void idempotency_forget(struct idempotency *store, const char *client, const char *key)
{
	struct record *record = find(store, client, key);

	if (record != NULL && !record->answered)
		record_free(store, record);
}

size_t idempotency_count(const struct idempotency *store)
{
	return HASH_COUNT(store->records);
}
