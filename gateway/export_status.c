/*
 * export_status.c -- the /export_status handler once the request checks have
 * passed: the caller (caller.c), the query, the scope, the credential, then the
 * cache (a hit), a download, or a wait for the upstream call; and for a request
 * that asked to wait (wait=, Prefer: wait), its hold (hold.c) until an answer
 * worth sending, with If-None-Match deciding what is worth it. Decisions are
 * auth.c's, query.c's and hold.c's; replies are server.c's.
 */
#include "exchange.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include "answer.h"
#include "auth.h"
#include "cache.h"
#include "caller.h"
#include "clock.h"
#include "conf.h"
#include "hold.h"
#include "log.h"
#include "query.h"

/* What a request that asked to wait needs after its handler returned. */
struct status_wait {
	struct hold *hold;   /* while held */
	int64_t deadline_ms; /* monotonic */
	struct query q;	     /* for a download that starts when the wait ends */
	char *user_id;	     /* its credential's, to find it again then (a reload) */
};

void export_status_detach(struct exchange *ex)
{
	if (ex->wait == NULL)
		return;
	hold_cancel(ex->wait->hold);
	free(ex->wait->user_id);
	free(ex->wait);
	ex->wait = NULL;
}

/* The ETag the client has (If-None-Match names it), for a JSON status answer. */
static int client_has(const struct exchange *ex, const struct cache_answer *answer,
		      char etag[ANSWER_ETAG_SIZE])
{
	if (ex->if_none_match == NULL || answer->status != 200)
		return 0;
	if (answer->etag != NULL)
		memcpy(etag, answer->etag, ANSWER_ETAG_SIZE);
	else
		answer_etag(answer->body, answer->body_length, etag);
	return answer_etag_matches(ex->if_none_match, etag);
}

/* A status answer: 304 when the client has its body (If-None-Match), else the answer. */
static void reply_status(struct exchange *ex, const struct cache_answer *answer)
{
	char etag[ANSWER_ETAG_SIZE];

	if (client_has(ex, answer, etag))
		exchange_reply_not_modified(ex, answer);
	else
		exchange_reply_answer(ex, answer);
}

static void on_wait_over(const struct cache_answer *answer, enum hold_end end, void *arg)
{
	struct exchange *ex = arg;
	struct status_wait *wait = ex->wait;
	int index;

	ex->wait_end = end == HOLD_FINAL ? "final" : end == HOLD_CHANGED ? "changed" : "timeout";
	wait->hold = NULL;
	watch_client_stop(ex);
	if (!wait->q.download || answer->state != ANSWER_COMPLETED) {
		reply_status(ex, answer);
		return;
	}
	/* COMPLETED: the download starts as a plain one would */
	index = conf_find_credential_by_user_id(ex->server->conf, wait->user_id);
	if (index < 0) {
		exchange_reply_error(ex, 503, "unavailable",
				     "this export's credential is no longer configured");
		return;
	}
	ex->state = EXCHANGE_CHECKING;
	download_start(ex, &ex->server->conf->credentials[index], &wait->q);
}

int export_status_hold(struct exchange *ex, const struct cache_answer *answer)
{
	struct status_wait *wait = ex->wait;
	char etag[ANSWER_ETAG_SIZE];
	const char *until = NULL;

	if (wait == NULL || ex->server->draining)
		return 0;
	/*
	 * With If-None-Match: held while the client has this body (a client that
	 * has another is answered now). Without: until a final state.
	 */
	if (!wait->q.download && ex->if_none_match != NULL) {
		if (!client_has(ex, answer, etag))
			return 0;
		until = etag;
	}
	if (!hold_wanted(answer, until))
		return 0;
	wait->hold = hold_start(ex->server->holds, wait->user_id, &wait->q, answer, until,
				wait->deadline_ms, on_wait_over, ex);
	if (wait->hold != NULL)
		return 1;
	/* max_waiting requests are held: answered as if it had not asked to wait */
	evhttp_remove_header(evhttp_request_get_output_headers(ex->req), "Preference-Applied");
	return 0;
}

/*
 * The wait asked for, in seconds: the query's, else Prefer's (prefer: the
 * header's value or NULL). -1 for none; -2 when ex was answered (400).
 */
static int asked_wait(struct exchange *ex, const struct query *q, const char *prefer)
{
	const char *message = NULL;
	int seconds;

	if (q->wait >= 0)
		return q->wait;
	if (prefer == NULL)
		return -1;
	switch (query_prefer_wait(prefer, &seconds, &message)) {
	case 1:
		return seconds;
	case 0:
		return -1;
	}
	exchange_reply_error(ex, 400, "bad_request", message);
	return -2;
}

/* min(seconds, wait_max) less a random 0 to 1/16 of it, in ms. */
static int64_t applied_wait_ms(const struct conf *conf, int seconds)
{
	int64_t wait = (int64_t)seconds * 1000;
	uint32_t random;

	if (wait > conf->wait_max_ms)
		wait = conf->wait_max_ms;
	evutil_secure_rng_get_bytes(&random, sizeof(random));
	return wait - (int64_t)((double)wait / 16 * ((double)random / UINT32_MAX));
}

/*
 * Sets up ex's wait (deadline, Preference-Applied) when it asked for one and
 * waiting is on. 0, or -1 when ex was answered.
 */
static int wait_begin(struct exchange *ex, const struct query *q,
		      const struct conf_credential *credential, const char *prefer)
{
	const struct conf *conf = ex->server->conf;
	int seconds = asked_wait(ex, q, prefer);
	int64_t applied;
	char text[32];

	if (seconds == -2)
		return -1;
	if (seconds < 0 || conf->wait_max_ms == 0)
		return 0;
	ex->wait = calloc(1, sizeof(*ex->wait));
	if (ex->wait == NULL || (ex->wait->user_id = strdup(credential->user_id)) == NULL) {
		free(ex->wait);
		ex->wait = NULL;
		log_error("%s: out of memory; the request is answered without waiting", __func__);
		return 0;
	}
	applied = applied_wait_ms(conf, seconds);
	ex->wait->deadline_ms = now_ms() + applied;
	ex->wait->q = *q;
	snprintf(text, sizeof(text), "wait=%lld", (long long)((applied + 500) / 1000));
	evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Preference-Applied", text);
	return 0;
}

static void on_answer(const struct cache_answer *answer, void *arg)
{
	struct exchange *ex = arg;

	ex->waiter = NULL;
	if (export_status_hold(ex, answer))
		return; /* the client watch goes on */
	watch_client_stop(ex);
	reply_status(ex, answer);
}

/*
 * The headers this handler reads, in one pass: If-None-Match (for a status
 * call) into ex, the first Prefer into *prefer.
 */
static void read_headers(struct exchange *ex, const struct query *q, const char **prefer)
{
	const struct evkeyvalq *headers = evhttp_request_get_input_headers(ex->req);
	const struct evkeyval *header;

	*prefer = NULL;
	for (header = headers->tqh_first; header != NULL; header = header->next.tqe_next) {
		if (*prefer == NULL && evutil_ascii_strcasecmp(header->key, "Prefer") == 0)
			*prefer = header->value;
		else if (!q->download && ex->if_none_match == NULL &&
			 evutil_ascii_strcasecmp(header->key, "If-None-Match") == 0)
			ex->if_none_match = header->value;
	}
}

static void handle_as(struct exchange *ex, int client);

void export_status_handle(struct exchange *ex)
{
	int client;

	if (caller_identify(ex, &client, handle_as) == 0)
		handle_as(ex, client);
}

/* The rest, once the caller is known (maybe after Redis said its rate). */
static void handle_as(struct exchange *ex, int client)
{
	struct server *server = ex->server;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ex->req);
	const struct conf_credential *credential;
	const char *message = NULL, *prefer;
	struct cache_answer answer;
	struct query q;
	int index;

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
	read_headers(ex, &q, &prefer);
	if ((q.wait >= 0 || prefer != NULL) && wait_begin(ex, &q, credential, prefer) < 0)
		return;
	if (cache_lookup(server->cache, credential, &q, &answer)) {
		if (export_status_hold(ex, &answer)) {
			ex->state = EXCHANGE_WAITING;
			watch_client_start(ex);
			return;
		}
		reply_status(ex, &answer);
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
