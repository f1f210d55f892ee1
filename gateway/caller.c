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

/* 429 with Retry-After when the client is over its rate. */
static int rate_limit(struct exchange *ex, int client)
{
	int retry_after = auth_rate_take(ex->server->auth, client);
	char text[16];

	if (retry_after == 0)
		return 0;
	snprintf(text, sizeof(text), "%d", retry_after);
	evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Retry-After", text);
	exchange_reply_error(ex, 429, "rate_limited", "this client is over its rate; retry later");
	return -1;
}

int caller_identify(struct exchange *ex, int *client)
{
	if (authenticate(ex, client) < 0 || rate_limit(ex, *client) < 0)
		return -1;
	return 0;
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
