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
#include "hex.h"
#include "idempotency.h"
#include "log.h"
#include "redis.h"
#include "upstream.h"

#include <hiredis/hiredis.h>

/*
 * Fleet mode: a key's record in Redis, "F DIGEST" while in flight (for
 * upstream_timeout + 1 s, so a lost instance frees it), then "A DIGEST STATUS
 * TYPE\nBODY" for idempotency_ttl. One round trip: {0} new (now in flight),
 * or {1, record}.
 */
static const char fleet_begin[] =
	"local v = redis.call('GET', KEYS[1]) "
	"if v then return {1, v} end "
	"redis.call('SET', KEYS[1], 'F ' .. ARGV[1], 'PX', ARGV[2]) return {0}";

struct export_call {
	struct server *server;
	struct exchange *ex; /* NULL once the client is gone */
	char credential[64]; /* its name, for the log (a reload may free the config's) */
	char *idempotency_client, *idempotency_key; /* both NULL without the header */
	struct export_call *prev, *next;
	/* fleet mode: the key is asked of Redis before the call starts */
	int fleet;	     /* the key's record is Redis's */
	char fleet_key[160]; /* {prefix}i:HASH */
	char digest_hex[2 * IDEMPOTENCY_DIGEST_BYTES + 1];
	struct redis_command *command; /* the begin, in flight */
	char *body;		       /* upstream's body, until the call starts */
	size_t body_length;
	struct answer answer; /* upstream's, while Redis is told of it */
	long upstream_status;
};

static void call_free(struct export_call *call)
{
	if (call == NULL)
		return;
	redis_command_cancel(call->command);
	answer_clear(&call->answer);
	if (call->body != NULL)
		OPENSSL_cleanse(call->body, call->body_length);
	free(call->body);
	free(call->idempotency_client);
	free(call->idempotency_key);
	free(call);
}

static int fleet_finish(struct export_call *call, const struct idempotency_answer *kept,
			redis_reply_cb done);
static void fleet_reply(struct exchange *ex, const struct export_call *call,
			const struct redisReply *reply);

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

static void noop_reply(const struct redisReply *reply, void *arg)
{
	(void)reply;
	(void)arg;
}

/*
 * Fleet: the answer kept in Redis as idempotency_finish keeps it here (or the
 * key let go). With done: 1 when done(call) fires once Redis has it (so that a
 * retry the client sends on reading the answer finds it), 0 when it was not
 * sent.
 */
static int fleet_finish(struct export_call *call, const struct idempotency_answer *kept,
			redis_reply_cb done)
{
	struct redis_command *command;
	const struct conf *conf = call->server->conf;
	int keep = kept != NULL && kept->status >= 200 && kept->status < 500 &&
		   conf->idempotency_ttl_ms > 0;
	char *record = NULL, px[24];
	int length = -1;

	call->fleet = 0;
	if (keep)
		length = asprintf(&record, "A %s %d %s\n", call->digest_hex, kept->status,
				  kept->content_type != NULL && kept->content_type[0]
					  ? kept->content_type
					  : "application/json");
	if (length >= 0) {
		char *whole = realloc(record, (size_t)length + kept->body_length);

		if (whole == NULL) {
			free(record);
			length = -1;
		} else {
			record = whole;
			memcpy(record + length, kept->body, kept->body_length);
			length += (int)kept->body_length;
		}
	}
	snprintf(px, sizeof(px), "%lld", (long long)conf->idempotency_ttl_ms);
	if (length >= 0) {
		const char *argv[] = { "SET", call->fleet_key, record, "PX", px };
		size_t lengths[] = { 3, strlen(call->fleet_key), (size_t)length, 2, strlen(px) };

		command = redis_command(call->server->redis, 5, argv, lengths,
					done != NULL ? done : noop_reply, call);
	} else {
		/* a 5xx (retries should try again), or no memory to keep it */
		const char *argv[] = { "DEL", call->fleet_key };

		command = redis_command(call->server->redis, 2, argv, NULL,
					done != NULL ? done : noop_reply, call);
	}
	free(record);
	if (command == NULL) {
		log_warn("Idempotency-Key: Redis cannot be told of an answer now; its in-flight "
			 "mark ends with its TTL");
		return 0;
	}
	if (done == NULL)
		return 0;
	call->command = command;
	return 1;
}

/* The client (if still there) gets call's answer; the call is over. */
static void reply_and_forget(struct export_call *call)
{
	struct exchange *ex = call->ex;
	struct answer *answer = &call->answer;

	if (ex != NULL) {
		ex->export_call = NULL;
		if (answer->error == NULL && answer->status < 300)
			log_new_export(ex, answer);
		ex->upstream_status = call->upstream_status;
		watch_client_stop(ex);
		exchange_reply_data(ex, answer->status,
				    answer->content_type ? answer->content_type
							 : "application/json",
				    answer->body, answer->body_length);
	}
	call_forget(call);
}

static void on_fleet_finished(const struct redisReply *reply, void *arg)
{
	struct export_call *call = arg;

	(void)reply; /* kept or not, the client gets its answer */
	call->command = NULL;
	reply_and_forget(call);
}

static void on_done(const struct upstream_result *result, void *arg)
{
	struct export_call *call = arg;
	struct answer *answer = &call->answer;

	answer_from_export(answer, call->server->conf, result);
	call->upstream_status = result->status;
	log_outcome(answer, call->credential, call->ex == NULL);
	if (call->idempotency_key != NULL) {
		struct idempotency_answer kept = {
			.status = answer->status,
			.content_type = answer->content_type,
			.body = answer->body,
			.body_length = answer->body_length,
		};

		/* also when the client left: its retry gets this answer */
		if (call->fleet) {
			if (fleet_finish(call, &kept, on_fleet_finished))
				return; /* the client is answered once Redis has it */
		} else {
			idempotency_finish(call->server->idempotency, call->idempotency_client,
					   call->idempotency_key, &kept, now_ms(),
					   call->server->conf->idempotency_ttl_ms);
		}
	}
	reply_and_forget(call);
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

/* The upstream call, with the key (if any) now in flight; call is listed in server->exports. */
static void start_call(struct export_call *call, struct exchange *ex,
		       const struct conf_credential *credential)
{
	struct server *server = call->server;
	char *body = call->body;

	/* the call owns the body from here, also when it fails to start */
	call->body = NULL;
	if (upstream_start_export(server->upstream, server->conf, credential, body,
				  call->body_length, on_done, call) == NULL) {
		if (call->fleet)
			(void)fleet_finish(call, NULL, NULL);
		else if (call->idempotency_key != NULL)
			idempotency_forget(server->idempotency, call->idempotency_client,
					   call->idempotency_key);
		ex->export_call = NULL;
		watch_client_stop(ex);
		exchange_reply_error(ex, 503, "unavailable",
				     "the upstream request could not be started");
		call_forget(call);
		return;
	}
	ex->export_call = call;
	ex->state = EXCHANGE_WAITING;
	if (ex->client_watch == NULL) /* already on while Redis was asked */
		watch_client_start(ex);
}

/* Fleet: what Redis says of the key decides, as idempotency_check does alone. */
static void on_fleet_begin(const struct redisReply *reply, void *arg)
{
	struct export_call *call = arg;
	struct exchange *ex = call->ex;
	struct server *server = call->server;
	const struct conf_credential *credential = NULL;

	call->command = NULL;
	if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
	    reply->element[0]->type == REDIS_REPLY_INTEGER && reply->element[0]->integer == 0)
		call->fleet = 1; /* new: in flight in Redis now */
	if (ex == NULL) {
		/* the client left before anything started: nothing is carried out */
		if (call->fleet)
			(void)fleet_finish(call, NULL, NULL);
		call_forget(call);
		return;
	}
	for (size_t i = 0; i < server->conf->credential_count; i++) {
		if (strcmp(server->conf->credentials[i].name, call->credential) == 0)
			credential = &server->conf->credentials[i];
	}
	if (call->fleet || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
		/* new in the fleet, or Redis failed us: this process's record decides */
		if ((!call->fleet &&
		     idempotency_check(ex, call->idempotency_client, call->idempotency_key,
				       call->body, call->body_length) < 0) ||
		    credential == NULL) {
			if (credential == NULL && call->fleet) {
				(void)fleet_finish(call, NULL, NULL);
				exchange_reply_error(ex, 503, "unavailable",
						     "the credential was removed by a reload");
			}
			ex->export_call = NULL;
			watch_client_stop(ex);
			call_forget(call);
			return;
		}
		start_call(call, ex, credential);
		return;
	}
	ex->export_call = NULL;
	watch_client_stop(ex);
	fleet_reply(ex, call, reply);
	call_forget(call);
}

/* Another instance's record of the key: replayed, 409 or 422, as alone. */
static void fleet_reply(struct exchange *ex, const struct export_call *call,
			const struct redisReply *reply)
{
	const struct redisReply *record = reply->elements == 2 ? reply->element[1] : NULL;
	size_t digest_length = 2 * IDEMPOTENCY_DIGEST_BYTES;
	struct evkeyvalq *out = evhttp_request_get_output_headers(ex->req);

	if (record == NULL || record->type != REDIS_REPLY_STRING ||
	    record->len < 2 + digest_length ||
	    memcmp(record->str + 2, call->digest_hex, digest_length) != 0) {
		exchange_reply_error(ex, 422, "idempotency_key_reused",
				     "this Idempotency-Key was used with another body");
		return;
	}
	if (record->str[0] == 'F') {
		evhttp_add_header(out, "Retry-After", "1");
		exchange_reply_error(
			ex, 409, "idempotency_in_progress",
			"a request with this Idempotency-Key is still being carried out");
		return;
	}
	{
		const char *head = record->str + 2 + digest_length;
		const char *end = record->str + record->len;
		const char *newline = memchr(head, '\n', (size_t)(end - head));
		char type[128];
		int status = 0, used = 0;

		if (newline == NULL || (size_t)(newline - head) >= sizeof(type) ||
		    sscanf(head, " %d %n", &status, &used) != 1 || status < 100 || status > 599 ||
		    head + used >= newline) {
			exchange_reply_error(
				ex, 500, "internal",
				"the kept answer for this Idempotency-Key is unreadable");
			return;
		}
		memcpy(type, head + used, (size_t)(newline - head - used));
		type[newline - head - used] = '\0';
		evhttp_add_header(out, "Idempotent-Replayed", "true");
		exchange_reply_data(ex, status, type, newline + 1, (size_t)(end - newline - 1));
	}
}

/* Fleet: asks Redis about call's key. 0 when asked (on_fleet_begin goes on), -1 when it cannot be. */
static int fleet_ask(struct export_call *call)
{
	struct server *server = call->server;
	unsigned char digest[IDEMPOTENCY_DIGEST_BYTES];
	char name_hex[REDIS_HASH_HEX + 1], name[IDEMPOTENCY_KEY_MAX + 80], px[24];
	int name_length;

	if (!redis_usable(server->redis))
		return -1;
	SHA256((const unsigned char *)call->body, call->body_length, digest);
	hex_encode(digest, sizeof(digest), call->digest_hex);
	name_length = snprintf(name, sizeof(name), "%s\x1f%s", call->idempotency_client,
			       call->idempotency_key);
	if (name_length < 0 || (size_t)name_length >= sizeof(name))
		return -1;
	redis_hash_name(name, (size_t)name_length, name_hex);
	snprintf(call->fleet_key, sizeof(call->fleet_key), "%si:%s", server->conf->redis_prefix,
		 name_hex);
	snprintf(px, sizeof(px), "%lld", (long long)(server->conf->upstream_timeout_ms + 1000));
	{
		const char *argv[] = { "EVAL",		fleet_begin,	  "1",
				       call->fleet_key, call->digest_hex, px };
		size_t lengths[] = { 4,
				     sizeof(fleet_begin) - 1,
				     1,
				     strlen(call->fleet_key),
				     strlen(call->digest_hex),
				     strlen(px) };

		call->command =
			redis_command(server->redis, 6, argv, lengths, on_fleet_begin, call);
	}
	return call->command != NULL ? 0 : -1;
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
	call->server = server;
	call->ex = ex;
	snprintf(call->credential, sizeof(call->credential), "%s", credential->name);
	call->body = upstream_body;
	call->body_length = length;
	upstream_body = NULL;
	if (key != NULL && fleet_ask(call) == 0) {
		DL_APPEND(server->exports, call);
		ex->export_call = call;
		ex->state = EXCHANGE_WAITING;
		watch_client_start(ex);
		return;
	}
	if (key != NULL &&
	    idempotency_check(ex, call->idempotency_client, key, call->body, call->body_length) < 0)
		goto drop;
	DL_APPEND(server->exports, call);
	start_call(call, ex, credential);
	return;
drop:
	if (upstream_body != NULL)
		OPENSSL_cleanse(upstream_body, length);
	free(upstream_body);
	call_free(call);
}
