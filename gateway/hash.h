/*
 * hash.h -- uthash as the gateway uses it: an allocation failure inside an add
 * drops the insert and sets hash_add_failed, instead of exiting the process.
 * Clear the flag before HASH_ADD_*, check it after. And how two-part keys are
 * made.
 */
#ifndef GATEWAY_HASH_H
#define GATEWAY_HASH_H

static int hash_add_failed;

#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(element)                                                               \
	do {                                                                                       \
		hash_add_failed = 1;                                                               \
	} while (0)
#include <uthash.h>

#include <stdlib.h>
#include <string.h>

/*
 * A key of two parts, "a US b" (the unit separator, 0x1f, which neither part
 * may hold), in buf when it fits in cap bytes, else allocated: free it with
 * hash_key_free(key, buf). NULL when out of memory.
 */
static inline char *hash_key_join(char *buf, size_t cap, const char *a, const char *b)
{
	size_t a_length = strlen(a), b_length = strlen(b);
	size_t size = a_length + b_length + 2;
	char *key = buf != NULL && size <= cap ? buf : malloc(size);

	if (key == NULL)
		return NULL;
	memcpy(key, a, a_length);
	key[a_length] = '\x1f';
	memcpy(key + a_length + 1, b, b_length + 1);
	return key;
}

static inline void hash_key_free(char *key, const char *buf)
{
	if (key != buf)
		free(key);
}

#endif
