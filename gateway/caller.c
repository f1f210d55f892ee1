/*
 * caller.c -- the token, rate and scope of an API request, answered in the
 * order design.md gives: 401, then 429, then (after the request's own checks,
 * which the scope may depend on) 403.
 */
#include "caller.h"

#include <stdio.h>

#include <event2/http.h>

#include "auth.h"
#include "conf.h"
#include "exchange.h"
#include "redis.h"

#include <hiredis/hiredis.h>
#include <string.h>

/*
 * The fleet's token bucket for one client, on Redis's clock, in one round
 * trip: ARGV rate (per second) and burst; the answer is 0 (taken) or the
 * seconds until a token is there (Retry-After).
 */
static const char fleet_bucket[] =
	"local t = redis.call('TIME') "
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
	"local rate = tonumber(ARGV[1]) local burst = tonumber(ARGV[2]) "
	"local b = redis.call('HMGET', KEYS[1], 't', 'n') "
	"local n = tonumber(b[2]) or burst local last = tonumber(b[1]) or now "
	"n = math.min(burst, n + math.max(0, now - last) * rate / 1000) "
	"local retry = 0 "
	"if n >= 1 then n = n - 1 else retry = math.max(1, math.ceil((1 - n) / rate)) end "
	"redis.call('HSET', KEYS[1], 't', tostring(now), 'n', tostring(n)) "
	"redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000) "
	"return retry";

/* 401 with the challenge, or the client's index; -1 without [client] sections. */
static int authenticate(struct exchange *ex, int *client)
{
	struct server *server = ex->server;
	const struct sockaddr *peer = evhttp_connection_get_addr(ex->connection);
	const char *authorization;
	int wait;
	char text[16];

	*client = -1;
	if (!auth_tokens_required(server->auth))
		return 0;
	wait = peer != NULL ? auth_failure_wait(server->auth, peer) : 0;
	if (wait > 0) {
		snprintf(text, sizeof(text), "%d", wait);
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Retry-After", text);
		exchange_reply_error(ex, 429, "rate_limited",
				     "too many requests with a bad token from this address; "
				     "retry later");
		return -1;
	}
	authorization =
		evhttp_find_header(evhttp_request_get_input_headers(ex->req), "Authorization");
	*client = auth_client(server->auth, authorization);
	if (*client < 0) {
		if (peer != NULL)
			auth_failure_record(server->auth, peer);
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "WWW-Authenticate",
				  "Bearer realm=\"gumloop-gateway\"");
		exchange_reply_error(ex, 401, "unauthorized",
				     authorization ? "the bearer token is not valid"
						   : "a bearer token is required");
		return -1;
	}
	exchange_log_field(ex, ex->client, sizeof(ex->client), server->conf->clients[*client].name);
	return 0;
}

static void reply_rate_limited(struct exchange *ex, long long retry_after)
{
	char text[24];

	snprintf(text, sizeof(text), "%lld", retry_after);
	evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Retry-After", text);
	exchange_reply_error(ex, 429, "rate_limited", "this client is over its rate; retry later");
}

/* 429 with Retry-After when the client is over its rate (this process's bucket). */
static int rate_limit(struct exchange *ex, int client)
{
	int retry_after = auth_rate_take(ex->server->auth, client);

	if (retry_after == 0)
		return 0;
	reply_rate_limited(ex, retry_after);
	return -1;
}

static void on_fleet_bucket(const struct redisReply *reply, void *arg)
{
	struct exchange *ex = arg;
	caller_next_cb next = ex->rate_next;
	int client = ex->rate_client;

	ex->rate_check = NULL;
	ex->rate_next = NULL;
	if (reply != NULL && reply->type == REDIS_REPLY_INTEGER) {
		if (reply->integer > 0)
			reply_rate_limited(ex, reply->integer);
		else
			next(ex, client);
	} else if (rate_limit(ex, client) == 0) {
		next(ex, client); /* Redis failed us: this process's bucket decides */
	}
}

/* Fleet mode: the client's bucket in Redis. 1 when asked, 0 when it cannot be. */
static int fleet_rate_limit(struct exchange *ex, int client, caller_next_cb next)
{
	const struct conf *conf = ex->server->conf;
	const struct conf_client *c = &conf->clients[client];
	char name[200], id[REDIS_HASH_HEX + 1], key[160], rate[32], burst[32];
	int length;

	if (c->rate_per_second <= 0 || !redis_usable(ex->server->redis))
		return 0;
	/* a new rate is a new bucket, as for a reload without Redis */
	length = snprintf(name, sizeof(name), "%s\x1f%.9g", c->name, c->rate_per_second);
	redis_hash_name(name, (size_t)length, id);
	snprintf(key, sizeof(key), "%sr:%s", conf->redis_prefix, id);
	snprintf(rate, sizeof(rate), "%.9g", c->rate_per_second);
	snprintf(burst, sizeof(burst), "%.9g",
		 2 * c->rate_per_second < 1 ? 1 : 2 * c->rate_per_second);
	{
		const char *argv[] = { "EVAL", fleet_bucket, "1", key, rate, burst };
		size_t lengths[] = {
			4, sizeof(fleet_bucket) - 1, 1, strlen(key), strlen(rate), strlen(burst)
		};

		ex->rate_check =
			redis_command(ex->server->redis, 6, argv, lengths, on_fleet_bucket, ex);
	}
	if (ex->rate_check == NULL)
		return 0;
	ex->rate_next = next;
	ex->rate_client = client;
	return 1;
}

int caller_identify(struct exchange *ex, int *client, caller_next_cb next)
{
	if (authenticate(ex, client) < 0)
		return -1;
	if (*client >= 0 && fleet_rate_limit(ex, *client, next))
		return 1;
	return rate_limit(ex, *client);
}

void caller_detach(struct exchange *ex)
{
	redis_command_cancel(ex->rate_check);
	ex->rate_check = NULL;
}

static const char *scope_refusal(unsigned scope)
{
	switch (scope) {
	case CONF_SCOPE_STATUS:
		return "this client may not read export states (scope status)";
	case CONF_SCOPE_DOWNLOAD:
		return "this client may not download exports (scope download)";
	default:
		return "this client may not start exports (scope export)";
	}
}

int caller_may(struct exchange *ex, int client, unsigned scope)
{
	if (auth_client_may(ex->server->auth, client, scope))
		return 0;
	exchange_reply_error(ex, 403, "forbidden",
			     client < 0 && scope == CONF_SCOPE_EXPORT
				     ? "starting exports needs a client with the export scope "
				       "(a [client] section and its token)"
				     : scope_refusal(scope));
	return -1;
}
