/*
 * redis.c -- fleet mode's two Redis connections (redis.h). hiredis 0.14 traps
 * this file keeps clear of:
 * - a context is single-use: after a failed connect or a disconnect a new one
 *   is made, from the retry timer, never from inside a hiredis callback (a
 *   disconnect inside the connect callback is a use-after-free, hiredis#835);
 * - a refused connect says why only in ac->c.err / ac->c.errstr;
 * - every queued command's callback fires once, also when the context is
 *   freed: a command's record belongs to this file until then, and callers
 *   only ever lose their callback (cancel), never the record;
 * - there is no command timeout: each command has a timer of its own, and a
 *   timed-out command makes the connection be dropped (redisAsyncFree: a
 *   disconnect would wait for the replies of a paused server forever).
 * SIGPIPE is ignored by main.
 */
#include "config.h"

#include "redis.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "conf.h"
#include "hex.h"
#include "log.h"
#include "metrics.h"

#include <utlist.h>

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS	 5000

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_READY };

struct conn {
	struct redis *redis;
	const char *name; /* "commands", "subscriber" */
	int subscriber;
	redisAsyncContext *ac;
	enum conn_state state;
	struct event *retry;	/* the next connect, after a backoff */
	struct event *deadline; /* connect and handshake must be done by then */
	struct event *drop;	/* a zero timer: drops the context outside hiredis */
	int64_t backoff_ms;
};

struct redis_command {
	struct redis *redis;
	redis_reply_cb done; /* NULL once answered, timed out or cancelled */
	void *arg;
	struct event *timer;
	struct redis_command *prev, *next;
};

struct redis {
	struct event_base *base;
	const struct conf *conf;
	struct conn commands;
	struct conn subscriber;
	struct redis_command *pending; /* utlist: records hiredis still holds */
	redis_message_cb on_message;
	redis_resubscribed_cb on_resubscribed;
	redis_resubscribed_cb on_lost;
	void *subscriber_arg;
	char channel[96];
	int down_logged;  /* "running alone" said once per outage */
	int error_logged; /* a refused command said once per connection */
	int closing;
};

static void conn_connect(struct conn *conn);

static void set_up_metric(struct redis *redis)
{
	metrics_redis_up(redis->commands.state == CONN_READY);
}

static const char *where(const struct conf *conf)
{
	return conf->redis != NULL ? conf->redis : "(unset)";
}

/* Once per outage: the fleet goes on without Redis until it is back. */
static void log_down(struct redis *redis, const char *what, const char *why)
{
	if (redis->down_logged)
		return;
	redis->down_logged = 1;
	log_warn("redis %s: %s%s%s; this gateway serves alone (own cache, coalescing) and "
		 "reconnects in the background",
		 where(redis->conf), what, why != NULL ? ": " : "", why != NULL ? why : "");
}

static void log_refused(struct redis *redis, const char *why)
{
	if (redis->error_logged)
		return;
	redis->error_logged = 1;
	log_warn("redis %s refused a command: %s; such requests are served without Redis",
		 where(redis->conf), why);
}

/* Forgets the context (freeing it: pending callbacks fire with NULL). */
static void conn_drop(struct conn *conn, int reconnect)
{
	redisAsyncContext *ac = conn->ac;
	int was_ready = conn->state == CONN_READY;

	conn->ac = NULL;
	conn->state = CONN_DOWN;
	event_del(conn->deadline);
	event_del(conn->drop);
	set_up_metric(conn->redis);
	if (ac != NULL)
		redisAsyncFree(ac);
	/* what waits for a message or a reply from Redis must not wait any more */
	if (was_ready && !conn->redis->closing && conn->redis->on_lost != NULL)
		conn->redis->on_lost(conn->redis->subscriber_arg);
	if (reconnect && !conn->redis->closing && !event_pending(conn->retry, EV_TIMEOUT, NULL)) {
		int64_t ms = conn->backoff_ms;
		uint32_t jitter;
		struct timeval tv;

		evutil_secure_rng_get_bytes(&jitter, sizeof(jitter));
		/* between half and all of the backoff: instances do not come back in step */
		ms = ms / 2 + (int64_t)(jitter % (uint32_t)(ms / 2 + 1));
		tv.tv_sec = (time_t)(ms / 1000);
		tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
		if (event_add(conn->retry, &tv) < 0)
			log_error("redis: cannot schedule a reconnect");
		conn->backoff_ms = conn->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
									 : conn->backoff_ms * 2;
	}
}

/* From inside a hiredis callback: drop on the next turn. */
static void conn_drop_soon(struct conn *conn)
{
	static const struct timeval now = { 0, 0 };

	if (event_add(conn->drop, &now) < 0)
		log_error("redis: cannot schedule dropping a connection");
}

static void on_drop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_drop(arg, 1);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_connect(arg);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct conn *conn = arg;

	(void)fd;
	(void)what;
	metrics_redis_error();
	log_down(conn->redis, "no answer within redis_timeout", NULL);
	conn_drop(conn, 1);
}

static void conn_ready(struct conn *conn)
{
	struct redis *redis = conn->redis;

	conn->state = CONN_READY;
	conn->backoff_ms = BACKOFF_FIRST_MS;
	event_del(conn->deadline);
	if (!conn->subscriber) {
		if (redis->down_logged)
			log_info("redis %s: back; the fleet shares its state again",
				 where(redis->conf));
		redis->down_logged = 0;
		redis->error_logged = 0;
		set_up_metric(redis);
	}
}

/* A handshake or subscription reply for conn's current context; else ignored. */
static struct conn *current(redisAsyncContext *ac, void *privdata)
{
	struct conn *conn = privdata;

	return conn != NULL && conn->ac == ac ? conn : NULL;
}

static void on_handshake(redisAsyncContext *ac, void *r, void *privdata)
{
	struct conn *conn = current(ac, privdata);
	redisReply *reply = r;

	if (conn == NULL)
		return;
	if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
		metrics_redis_error();
		log_down(conn->redis, "refused the connection",
			 reply != NULL ? reply->str : "connection lost");
		conn_drop_soon(conn);
		return;
	}
	/* the probe of the prefix answers last: the ACL lets this user use its keys */
	if (!conn->subscriber && reply->type == REDIS_REPLY_INTEGER)
		conn_ready(conn);
}

static void on_message(redisAsyncContext *ac, void *r, void *privdata)
{
	struct conn *conn = current(ac, privdata);
	redisReply *reply = r;
	struct redis *redis;

	if (conn == NULL || reply == NULL)
		return;
	redis = conn->redis;
	if (reply->type == REDIS_REPLY_ERROR) {
		metrics_redis_error();
		log_down(redis, "refused the subscription", reply->str);
		conn_drop_soon(conn);
		return;
	}
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
	    reply->element[0]->type != REDIS_REPLY_STRING)
		return;
	if (strcmp(reply->element[0]->str, "subscribe") == 0) {
		conn_ready(conn);
		if (redis->on_resubscribed != NULL)
			redis->on_resubscribed(redis->subscriber_arg);
	} else if (strcmp(reply->element[0]->str, "message") == 0 &&
		   reply->element[2]->type == REDIS_REPLY_STRING && redis->on_message != NULL) {
		redis->on_message(reply->element[2]->str, reply->element[2]->len,
				  redis->subscriber_arg);
	}
}

static void on_connect(const redisAsyncContext *ac, int status)
{
	struct conn *conn = ac->data;
	redisAsyncContext *own = (redisAsyncContext *)ac;
	const struct conf *conf;
	char db[24];
	int failed = 0;

	if (conn == NULL || conn->ac != ac)
		return;
	conf = conn->redis->conf;
	if (status != REDIS_OK) {
		/* hiredis frees this context after the callback: forget it, retry later */
		metrics_redis_error();
		log_down(conn->redis, "cannot connect", ac->c.errstr);
		conn->ac = NULL;
		conn_drop(conn, 1);
		return;
	}
	if (conf->redis_password != NULL) {
		const char *argv[3] = { "AUTH", conf->redis_user, conf->redis_password };

		if (conf->redis_user == NULL)
			argv[1] = conf->redis_password;
		failed |= redisAsyncCommandArgv(own, on_handshake, conn, conf->redis_user ? 3 : 2,
						argv, NULL) != REDIS_OK;
	}
	if (conf->redis_db != 0) {
		const char *argv[2] = { "SELECT", db };

		snprintf(db, sizeof(db), "%lld", (long long)conf->redis_db);
		failed |= redisAsyncCommandArgv(own, on_handshake, conn, 2, argv, NULL) != REDIS_OK;
	}
	if (conn->subscriber) {
		const char *argv[2] = { "SUBSCRIBE", conn->redis->channel };

		failed |= redisAsyncCommandArgv(own, on_message, conn, 2, argv, NULL) != REDIS_OK;
	} else {
		char probe[128];
		const char *argv[2] = { "EXISTS", probe };

		snprintf(probe, sizeof(probe), "%sprobe", conf->redis_prefix);
		failed |= redisAsyncCommandArgv(own, on_handshake, conn, 2, argv, NULL) != REDIS_OK;
	}
	if (failed) {
		log_down(conn->redis, "cannot send the handshake", NULL);
		conn_drop_soon(conn);
	}
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
	struct conn *conn = ac->data;

	(void)status;
	if (conn == NULL || conn->ac != ac)
		return; /* our own redisAsyncFree: already forgotten */
	/* hiredis frees the context after this callback */
	metrics_redis_error();
	log_down(conn->redis, "connection lost", ac->errstr);
	conn->ac = NULL;
	conn_drop(conn, 1);
}

static void conn_connect(struct conn *conn)
{
	const struct conf *conf = conn->redis->conf;
	struct timeval deadline = { (time_t)(conf->redis_timeout_ms / 1000),
				    (suseconds_t)(conf->redis_timeout_ms % 1000) * 1000 };
	redisAsyncContext *ac;

	if (conn->ac != NULL || conn->redis->closing || conf->redis == NULL)
		return;
	ac = conf->redis_unix != NULL ? redisAsyncConnectUnix(conf->redis_unix)
				      : redisAsyncConnect(conf->redis_host, conf->redis_port);
	if (ac == NULL || ac->err) {
		metrics_redis_error();
		log_down(conn->redis, "cannot connect", ac != NULL ? ac->errstr : "out of memory");
		if (ac != NULL)
			redisAsyncFree(ac);
		conn_drop(conn, 1);
		return;
	}
	ac->data = conn;
	if (redisLibeventAttach(ac, conn->redis->base) != REDIS_OK ||
	    redisAsyncSetConnectCallback(ac, on_connect) != REDIS_OK ||
	    redisAsyncSetDisconnectCallback(ac, on_disconnect) != REDIS_OK ||
	    event_add(conn->deadline, &deadline) < 0) {
		log_down(conn->redis, "cannot watch the connection", NULL);
		redisAsyncFree(ac);
		conn_drop(conn, 1);
		return;
	}
	conn->ac = ac;
	conn->state = CONN_CONNECTING;
}

static int conn_init(struct conn *conn, struct redis *redis, const char *name, int subscriber)
{
	conn->redis = redis;
	conn->name = name;
	conn->subscriber = subscriber;
	conn->backoff_ms = BACKOFF_FIRST_MS;
	conn->retry = evtimer_new(redis->base, on_retry, conn);
	conn->deadline = evtimer_new(redis->base, on_deadline, conn);
	conn->drop = evtimer_new(redis->base, on_drop, conn);
	return conn->retry != NULL && conn->deadline != NULL && conn->drop != NULL ? 0 : -1;
}

static void conn_free(struct conn *conn)
{
	conn_drop(conn, 0);
	if (conn->retry != NULL)
		event_free(conn->retry);
	if (conn->deadline != NULL)
		event_free(conn->deadline);
	if (conn->drop != NULL)
		event_free(conn->drop);
}

static void set_channel(struct redis *redis)
{
	snprintf(redis->channel, sizeof(redis->channel), "%sn", redis->conf->redis_prefix);
}

struct redis *redis_new(struct event_base *base, const struct conf *conf)
{
	struct redis *redis = calloc(1, sizeof(*redis));

	if (redis == NULL) {
		log_error("%s: out of memory", __func__);
		return NULL;
	}
	redis->base = base;
	redis->conf = conf;
	set_channel(redis);
	if (conn_init(&redis->commands, redis, "commands", 0) < 0 ||
	    conn_init(&redis->subscriber, redis, "subscriber", 1) < 0) {
		log_error("%s: out of memory", __func__);
		redis_free(redis);
		return NULL;
	}
	set_up_metric(redis);
	conn_connect(&redis->commands);
	conn_connect(&redis->subscriber);
	return redis;
}

void redis_close(struct redis *redis)
{
	redis->closing = 1;
	conn_drop(&redis->commands, 0);
	conn_drop(&redis->subscriber, 0);
}

void redis_free(struct redis *redis)
{
	struct redis_command *command;

	if (redis == NULL)
		return;
	redis->closing = 1;
	DL_FOREACH (redis->pending, command)
		command->done = NULL;
	conn_free(&redis->commands);
	conn_free(&redis->subscriber);
	/* the records freed themselves as hiredis gave up their callbacks */
	while (redis->pending != NULL) {
		command = redis->pending;
		DL_DELETE(redis->pending, command);
		event_free(command->timer);
		free(command);
	}
	metrics_redis_up(0);
	free(redis);
}

static int same(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

void redis_set_conf(struct redis *redis, const struct conf *conf)
{
	const struct conf *old = redis->conf;
	int changed = !same(old->redis, conf->redis) || !same(old->redis_user, conf->redis_user) ||
		      !same(old->redis_password, conf->redis_password) ||
		      old->redis_db != conf->redis_db ||
		      strcmp(old->redis_prefix, conf->redis_prefix) != 0;

	redis->conf = conf;
	if (!changed)
		return;
	log_info("redis: settings changed; reconnecting to %s", where(conf));
	set_channel(redis);
	redis->down_logged = 0;
	conn_drop(&redis->commands, 0);
	conn_drop(&redis->subscriber, 0);
	redis->commands.backoff_ms = BACKOFF_FIRST_MS;
	redis->subscriber.backoff_ms = BACKOFF_FIRST_MS;
	event_del(redis->commands.retry);
	event_del(redis->subscriber.retry);
	conn_connect(&redis->commands);
	conn_connect(&redis->subscriber);
}

void redis_subscribe(struct redis *redis, redis_message_cb on_message_cb,
		     redis_resubscribed_cb on_resubscribed, redis_resubscribed_cb on_lost,
		     void *arg)
{
	redis->on_message = on_message_cb;
	redis->on_resubscribed = on_resubscribed;
	redis->on_lost = on_lost;
	redis->subscriber_arg = arg;
}

int redis_usable(const struct redis *redis)
{
	return redis != NULL && redis->commands.state == CONN_READY;
}

void redis_hash_name(const char *text, size_t length, char out[REDIS_HASH_HEX + 1])
{
	unsigned char digest[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *)text, length, digest);
	hex_encode(digest, REDIS_HASH_HEX / 2, out);
}

const char *redis_channel(const struct redis *redis)
{
	return redis->channel;
}

static void command_free(struct redis_command *command)
{
	DL_DELETE(command->redis->pending, command);
	event_free(command->timer);
	free(command);
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
	struct redis_command *command = privdata;
	redis_reply_cb done = command->done;
	redisReply *reply = r;

	(void)ac;
	command->done = NULL;
	event_del(command->timer);
	if (done != NULL) {
		if (reply == NULL) {
			metrics_redis_error();
			done(NULL, command->arg);
		} else if (reply->type == REDIS_REPLY_ERROR) {
			metrics_redis_error();
			log_refused(command->redis, reply->str);
			done(NULL, command->arg);
		} else {
			done(reply, command->arg);
		}
	}
	command_free(command);
}

static void on_command_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct redis_command *command = arg;
	struct redis *redis = command->redis;
	redis_reply_cb done = command->done;
	void *done_arg = command->arg;

	(void)fd;
	(void)what;
	command->done = NULL;
	metrics_redis_error();
	log_down(redis, "no answer within redis_timeout", NULL);
	/* hiredis gives every callback up here: the record is freed (not used after) */
	conn_drop(&redis->commands, 1);
	if (done != NULL)
		done(NULL, done_arg);
}

struct redis_command *redis_command(struct redis *redis, int argc, const char **argv,
				    const size_t *lengths, redis_reply_cb done, void *arg)
{
	const struct conf *conf = redis->conf;
	struct timeval tv = { (time_t)(conf->redis_timeout_ms / 1000),
			      (suseconds_t)(conf->redis_timeout_ms % 1000) * 1000 };
	struct redis_command *command;

	if (!redis_usable(redis))
		return NULL;
	command = calloc(1, sizeof(*command));
	if (command == NULL)
		return NULL;
	command->redis = redis;
	command->done = done;
	command->arg = arg;
	command->timer = evtimer_new(redis->base, on_command_timeout, command);
	if (command->timer == NULL || event_add(command->timer, &tv) < 0) {
		if (command->timer != NULL)
			event_free(command->timer);
		free(command);
		return NULL;
	}
	DL_APPEND(redis->pending, command);
	if (redisAsyncCommandArgv(redis->commands.ac, on_reply, command, argc, argv, lengths) !=
	    REDIS_OK) {
		command_free(command);
		return NULL;
	}
	return command;
}

void redis_command_cancel(struct redis_command *command)
{
	if (command == NULL)
		return;
	command->done = NULL;
	event_del(command->timer);
}

/* -t */

static int check_reply(redisContext *c, redisReply *reply, const char *what, char *why,
		       size_t whylen)
{
	int ok = reply != NULL && reply->type != REDIS_REPLY_ERROR;

	if (!ok)
		snprintf(why, whylen, "%s: %s", what,
			 reply != NULL ? reply->str : (c->errstr[0] ? c->errstr : "no answer"));
	if (reply != NULL)
		freeReplyObject(reply);
	return ok ? 0 : -1;
}

int redis_check(const struct conf *conf, char *why, size_t whylen)
{
	struct timeval tv = { (time_t)(conf->redis_timeout_ms / 1000),
			      (suseconds_t)(conf->redis_timeout_ms % 1000) * 1000 };
	redisContext *c;
	int rc = -1;

	c = conf->redis_unix != NULL
		    ? redisConnectUnixWithTimeout(conf->redis_unix, tv)
		    : redisConnectWithTimeout(conf->redis_host, conf->redis_port, tv);
	if (c == NULL || c->err) {
		snprintf(why, whylen, "cannot connect: %s",
			 c != NULL ? c->errstr : "out of memory");
		goto out;
	}
	if (redisSetTimeout(c, tv) != REDIS_OK) {
		snprintf(why, whylen, "cannot set a timeout");
		goto out;
	}
	if (conf->redis_password != NULL) {
		const char *argv[3] = { "AUTH", conf->redis_user, conf->redis_password };

		if (conf->redis_user == NULL)
			argv[1] = conf->redis_password;
		if (check_reply(c, redisCommandArgv(c, conf->redis_user ? 3 : 2, argv, NULL),
				"AUTH", why, whylen) < 0)
			goto out;
	}
	if (conf->redis_db != 0) {
		char db[24];
		const char *argv[2] = { "SELECT", db };

		snprintf(db, sizeof(db), "%lld", (long long)conf->redis_db);
		if (check_reply(c, redisCommandArgv(c, 2, argv, NULL), "SELECT", why, whylen) < 0)
			goto out;
	}
	{
		char probe[128];
		const char *argv[2] = { "EXISTS", probe };

		/* PING would pass for a user whose ACL keeps it out of the prefix */
		snprintf(probe, sizeof(probe), "%sprobe", conf->redis_prefix);
		if (check_reply(c, redisCommandArgv(c, 2, argv, NULL), "EXISTS", why, whylen) < 0)
			goto out;
	}
	rc = 0;
out:
	if (c != NULL)
		redisFree(c);
	return rc;
}
