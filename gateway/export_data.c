/*
 * export_data.c -- the POST /export_data handler once the request checks have
 * passed (method, framing, type: checks.c): the caller and its export scope
 * (caller.c), the body (export_body.c), the credential, then one upstream
 * call. The call is never retried and never cached, and it goes on when the
 * client hangs up (the export may be created either way), so what it reports
 * to outlives the exchange: the server keeps every call in flight and frees
 * what is left when it stops.
 */
#include "exchange.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <utlist.h>

#include "answer.h"
#include "auth.h"
#include "caller.h"
#include "clock.h"
#include "conf.h"
#include "export_body.h"
#include "idempotency.h"
#include "log.h"
#include "upstream.h"

struct export_call {
	struct server *server;
	struct exchange *ex; /* NULL once the client is gone */
	char credential[64]; /* its name, for the log (a reload may free the config's) */
	char *idempotency_client, *idempotency_key; /* both NULL without the header */
	struct export_call *prev, *next;
};

static void call_free(struct export_call *call)
{
	if (call == NULL)
		return;
	free(call->idempotency_client);
	free(call->idempotency_key);
	free(call);
}

static void call_forget(struct export_call *call)
{
	DL_DELETE(call->server->exports, call);
	call_free(call);
}

/* Logs what only the gateway's operator may know; the client gets its answer. */
static void log_outcome(const struct answer *answer, const char *credential, int client_gone)
{
	if (answer->error != NULL && strcmp(answer->error, "upstream_auth") == 0)
		log_error("upstream rejected credential \"%s\" starting an export: %s", credential,
			  answer->why);
	else if (answer->error != NULL)
		log_warn("starting an export with credential \"%s\": %s", credential,
			 answer->why ? answer->why : answer->error);
	if (client_gone)
		log_info("an export was started for a client that had gone (status %d)",
			 answer->status);
}

/* The access log names the export just started. */
static void log_new_export(struct exchange *ex, const struct answer *answer)
{
	cJSON *tree;
	const cJSON *id;

	if (ex->server->access_log == NULL)
		return;
	tree = cJSON_ParseWithLength(answer->body, answer->body_length);
	id = cJSON_GetObjectItemCaseSensitive(tree, "data_export_id");
	if (cJSON_IsString(id))
		exchange_log_field(ex, ex->export_id, sizeof(ex->export_id), id->valuestring);
	cJSON_Delete(tree);
}

static void on_done(const struct upstream_result *result, void *arg)
{
	struct export_call *call = arg;
	struct exchange *ex = call->ex;
	struct answer answer;

	answer_from_export(&answer, call->server->conf, result);
	log_outcome(&answer, call->credential, ex == NULL);
	if (call->idempotency_key != NULL) {
		struct idempotency_answer kept = {
			.status = answer.status,
			.content_type = answer.content_type,
			.body = answer.body,
			.body_length = answer.body_length,
		};

		/* also when the client left: its retry gets this answer */
		idempotency_finish(call->server->idempotency, call->idempotency_client,
				   call->idempotency_key, &kept, now_ms(),
				   call->server->conf->idempotency_ttl_ms);
	}
	if (ex != NULL) {
		ex->export_call = NULL;
		if (answer.error == NULL && answer.status < 300)
			log_new_export(ex, &answer);
		ex->upstream_status = result->status;
		watch_client_stop(ex);
		exchange_reply_data(ex, answer.status,
				    answer.content_type ? answer.content_type : "application/json",
				    answer.body, answer.body_length);
	}
	answer_clear(&answer);
	call_forget(call);
}

void export_data_detach(struct exchange *ex)
{
	if (ex->export_call != NULL)
		ex->export_call->ex = NULL;
	ex->export_call = NULL;
}

void export_data_free_all(struct server *server)
{
	while (server->exports != NULL)
		call_forget(server->exports);
}

/*
 * Idempotency-Key: 0 to go on (a new key, now in flight), -1 when ex was
 * answered: the kept answer replayed, 409 while in flight, 422 reused.
 */
static int idempotency_check(struct exchange *ex, const char *client, const char *key,
			     const char *upstream_body, size_t length)
{
	struct server *server = ex->server;
	struct evkeyvalq *out = evhttp_request_get_output_headers(ex->req);
	unsigned char digest[IDEMPOTENCY_DIGEST_BYTES];
	enum idempotency_state state;
	struct idempotency_answer kept;

	SHA256((const unsigned char *)upstream_body, length, digest);
	if (idempotency_begin(server->idempotency, client, key, digest, now_ms(),
			      (size_t)server->conf->idempotency_max_keys, &state, &kept) < 0) {
		exchange_reply_error(ex, 500, "internal", "out of memory");
		return -1;
	}
	switch (state) {
	case IDEMPOTENCY_NEW:
		return 0;
	case IDEMPOTENCY_REPLAY:
		evhttp_add_header(out, "Idempotent-Replayed", "true");
		exchange_reply_data(ex, kept.status,
				    kept.content_type[0] ? kept.content_type : "application/json",
				    kept.body, kept.body_length);
		return -1;
	case IDEMPOTENCY_IN_FLIGHT:
		evhttp_add_header(out, "Retry-After", "1");
		exchange_reply_error(
			ex, 409, "idempotency_in_progress",
			"a request with this Idempotency-Key is still being carried out");
		return -1;
	case IDEMPOTENCY_REUSED:
		break;
	}
	exchange_reply_error(ex, 422, "idempotency_key_reused",
			     "this Idempotency-Key was used with another body");
	return -1;
}

/* The request's body as one piece: evhttp has read all of it (Content-Length). */
static const char *body_bytes(struct exchange *ex, size_t *length)
{
	struct evbuffer *input = evhttp_request_get_input_buffer(ex->req);

	*length = evbuffer_get_length(input);
	if (*length == 0)
		return "";
	return (const char *)evbuffer_pullup(input, -1);
}

static void handle_as(struct exchange *ex, int client);

void export_data_handle(struct exchange *ex)
{
	int client;

	if (caller_identify(ex, &client, handle_as) == 0)
		handle_as(ex, client);
}

/* The rest, once the caller is known (maybe after Redis said its rate). */
static void handle_as(struct exchange *ex, int client)
{
	struct server *server = ex->server;
	const struct conf_credential *credential;
	struct export_body body;
	struct export_call *call;
	const char *message = NULL, *text, *key;
	char *upstream_body;
	size_t length;
	int index;

	if (caller_may(ex, client, CONF_SCOPE_EXPORT) < 0)
		return;
	key = evhttp_find_header(evhttp_request_get_input_headers(ex->req), "Idempotency-Key");
	if (key != NULL && !idempotency_key_valid(key)) {
		exchange_reply_error(ex, 400, "bad_request",
				     "Idempotency-Key must be 1 to 255 bytes of printable ASCII");
		return;
	}
	text = body_bytes(ex, &length);
	if (text == NULL) {
		exchange_reply_error(ex, 500, "internal", "out of memory");
		return;
	}
	switch (export_body_check(text, length, &body, &message)) {
	case EXPORT_BODY_OK:
		break;
	case EXPORT_BODY_BAD:
		exchange_reply_error(ex, 400, "bad_request", message);
		return;
	case EXPORT_BODY_NOMEM:
		exchange_reply_error(ex, 500, "internal", "out of memory");
		return;
	}
	index = auth_credential(server->auth, client, body.has_user_id ? body.user_id : NULL);
	if (index < 0) {
		export_body_clear(&body);
		exchange_reply_error(ex, 403, "forbidden",
				     "this user_id may not be used by this client");
		return;
	}
	credential = &server->conf->credentials[index];
	exchange_log_field(ex, ex->credential, sizeof(ex->credential), credential->name);
	upstream_body = export_body_upstream(&body, credential->user_id, &length);
	export_body_clear(&body);
	call = calloc(1, sizeof(*call));
	if (call != NULL && key != NULL) {
		call->idempotency_client = strdup(server->conf->clients[client].name);
		call->idempotency_key = strdup(key);
	}
	if (upstream_body == NULL || call == NULL ||
	    (key != NULL && (call->idempotency_client == NULL || call->idempotency_key == NULL))) {
		exchange_reply_error(ex, 500, "internal", "out of memory");
		goto drop;
	}
	if (key != NULL &&
	    idempotency_check(ex, call->idempotency_client, key, upstream_body, length) < 0)
		goto drop;
	call->server = server;
	call->ex = ex;
	snprintf(call->credential, sizeof(call->credential), "%s", credential->name);
	/* the call owns upstream_body from here, also when it fails to start */
	if (upstream_start_export(server->upstream, server->conf, credential, upstream_body, length,
				  on_done, call) == NULL) {
		upstream_body = NULL;
		if (key != NULL)
			idempotency_forget(server->idempotency, call->idempotency_client, key);
		exchange_reply_error(ex, 503, "unavailable",
				     "the upstream request could not be started");
		goto drop;
	}
	DL_APPEND(server->exports, call);
	ex->export_call = call;
	ex->state = EXCHANGE_WAITING;
	watch_client_start(ex);
	return;
drop:
	if (upstream_body != NULL)
		OPENSSL_cleanse(upstream_body, length);
	free(upstream_body);
	call_free(call);
}
