/*
 * export_status.c -- the /export_status handler once the request checks have
 * passed: the client's token and rate, the query, the credential, then the
 * cache (a hit), a download, or a wait for the upstream call. Decisions are
 * auth.c's and query.c's; replies are server.c's.
 */
#include "exchange.h"

#include <stdio.h>

#include <event2/http.h>

#include "auth.h"
#include "cache.h"
#include "conf.h"
#include "query.h"

static void on_answer(const struct cache_answer *answer, void *arg)
{
	struct exchange *ex = arg;

	ex->waiter = NULL;
	watch_client_stop(ex);
	exchange_reply_answer(ex, answer);
}

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

void export_status_handle(struct exchange *ex)
{
	struct server *server = ex->server;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ex->req);
	const struct conf_credential *credential;
	const char *message = NULL;
	struct cache_answer answer;
	struct query q;
	int client, index;

	if (authenticate(ex, &client) < 0 || rate_limit(ex, client) < 0)
		return;
	if (query_parse(evhttp_uri_get_query(uri), &q, &message) < 0) {
		exchange_reply_error(ex, 400, "bad_request", message);
		return;
	}
	exchange_log_field(ex, ex->export_id, sizeof(ex->export_id), q.data_export_id);
	index = auth_credential(server->auth, client, q.has_user_id ? q.user_id : NULL);
	if (index < 0) {
		exchange_reply_error(ex, 403, "forbidden",
				     "this user_id may not be used by this client");
		return;
	}
	credential = &server->conf->credentials[index];
	exchange_log_field(ex, ex->credential, sizeof(ex->credential), credential->name);
	if (cache_lookup(server->cache, credential, &q, &answer)) {
		exchange_reply_answer(ex, &answer);
		return;
	}
	if (q.download) {
		download_start(ex, credential, &q);
		return;
	}
	ex->waiter = cache_wait(server->cache, credential, &q, on_answer, ex);
	if (ex->waiter == NULL) {
		exchange_reply_error(ex, 503, "unavailable",
				     "the upstream request could not be started");
		return;
	}
	ex->state = EXCHANGE_WAITING;
	watch_client_start(ex);
}
