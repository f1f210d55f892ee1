/*
 * export_status.c -- the /export_status handler once the request checks have
 * passed: the caller (caller.c), the query, the scope, the credential, then the
 * cache (a hit), a download, or a wait for the upstream call. Decisions are
 * auth.c's and query.c's; replies are server.c's.
 */
#include "exchange.h"

#include <event2/http.h>

#include "auth.h"
#include "cache.h"
#include "caller.h"
#include "conf.h"
#include "query.h"

static void on_answer(const struct cache_answer *answer, void *arg)
{
	struct exchange *ex = arg;

	ex->waiter = NULL;
	watch_client_stop(ex);
	exchange_reply_answer(ex, answer);
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

	if (caller_identify(ex, &client) < 0)
		return;
	if (query_parse(evhttp_uri_get_query(uri), &q, &message) < 0) {
		exchange_reply_error(ex, 400, "bad_request", message);
		return;
	}
	if (caller_may(ex, client, q.download ? CONF_SCOPE_DOWNLOAD : CONF_SCOPE_STATUS) < 0)
		return;
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
