/*
 * hash.h -- uthash as the gateway uses it: an allocation failure inside an add
 * drops the insert and sets hash_add_failed, instead of exiting the process.
 * Clear the flag before HASH_ADD_*, check it after.
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

#endif
