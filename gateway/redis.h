/*
 * redis.h -- fleet mode's link to Redis: hiredis's async API on the gateway's
 * loop (its libevent adapter), two connections (commands, and one subscribed
 * to the fleet's channel), a timer per command (hiredis 0.14 has none), and
 * reconnection with backoff and jitter from a timer. Nothing here waits: a
 * command is refused at once while Redis is not usable, and a command that
 * gets no reply within redis_timeout is answered with NULL (the connection is
 * then dropped and made again), so callers carry on alone.
 */
#ifndef GATEWAY_REDIS_H
#define GATEWAY_REDIS_H

#include "attributes.h"

#include <stddef.h>

struct event_base;
struct conf;
struct redisReply;

struct redis;
struct redis_command;

/* reply is NULL on a timeout, a lost connection or an error reply (counted and logged). */
typedef void (*redis_reply_cb)(const struct redisReply *reply, void *arg);
/* A message published on the fleet's channel. */
typedef void (*redis_message_cb)(const char *payload, size_t length, void *arg);
typedef void (*redis_resubscribed_cb)(void *arg);

/* Connects to conf->redis (must be set) in the background. NULL (logged) when out of memory. */
MUST_CHECK struct redis *redis_new(struct event_base *base, const struct conf *conf);
/*
 * Closes both connections for good: every pending command's callback fires
 * now, with NULL (its caller carries on alone). For a reload that unsets redis.
 */
void redis_close(struct redis *redis);
/* Drops both connections; pending commands' callbacks do not fire. */
void redis_free(struct redis *redis);
/* A reload: with other Redis settings, both connections are made again. */
void redis_set_conf(struct redis *redis, const struct conf *conf);
/*
 * Messages on "{redis_prefix}n" go to on_message; on_resubscribed after each
 * (re)subscribe; on_lost when a usable connection is lost (messages and
 * replies awaited will not come).
 */
void redis_subscribe(struct redis *redis, redis_message_cb on_message,
		     redis_resubscribed_cb on_resubscribed, redis_resubscribed_cb on_lost,
		     void *arg);
/* 1 while commands can be sent. */
int redis_usable(const struct redis *redis);
/*
 * Sends argv (argc strings of lengths lengths). done fires later, exactly once,
 * unless cancelled; never from inside this call. NULL (done never fires) when
 * Redis is not usable now.
 */
MUST_CHECK struct redis_command *redis_command(struct redis *redis, int argc, const char **argv,
					       const size_t *lengths, redis_reply_cb done,
					       void *arg);
/* done will not fire. */
void redis_command_cancel(struct redis_command *command);
/*
 * What names a thing in Redis without saying it: 32 hex digits of SHA-256 of
 * text (a user id and export id, a client's name, an Idempotency-Key).
 */
#define REDIS_HASH_HEX 32
void redis_hash_name(const char *text, size_t length, char out[REDIS_HASH_HEX + 1]);
/* The fleet's channel name ("{redis_prefix}n"). */
const char *redis_channel(const struct redis *redis);

/*
 * gumloop-gateway -t: connects, authenticates and reads a key of the prefix
 * (EXISTS: the ACL must allow it), each within redis_timeout
 * (blocking: the loop is not running). 0, or -1 with why filled.
 */
int redis_check(const struct conf *conf, char *why, size_t whylen);

#endif
