/*
 * answer.c -- the upstream result → client answer mapping of README's table,
 * in one place, so a leader, its coalesced waiters and a download that got
 * JSON all get the same answer for the same result.
 */
#include "answer.h"

#include "hex.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <openssl/sha.h>

#include "conf.h"
#include "json_check.h"
#include "redact.h"
#include "upstream.h"

char *answer_error_body(const char *code, const char *message, size_t *length)
{
	cJSON *json = cJSON_CreateObject();
	char *text = NULL, *copy = NULL;

	if (json != NULL && cJSON_AddStringToObject(json, "error", code) != NULL &&
	    cJSON_AddStringToObject(json, "message", message) != NULL)
		text = cJSON_PrintUnformatted(json);
	cJSON_Delete(json);
	/* ours to free with free(), whatever allocator cJSON was given */
	if (text != NULL && (copy = strdup(text)) != NULL)
		*length = strlen(copy);
	cJSON_free(text);
	return copy;
}

void answer_clear(struct answer *answer)
{
	free(answer->content_type);
	free(answer->body);
	memset(answer, 0, sizeof(*answer));
}

void answer_set_error(struct answer *answer, int status, const char *code, const char *message)
{
	const char *why = answer->why;
	int redacted = answer->redacted;

	answer_clear(answer);
	answer->status = status;
	answer->state = ANSWER_NO_STATE;
	answer->ttl_ms = -1;
	answer->error = code;
	answer->why = why;
	answer->redacted = redacted;
	answer->content_type = strdup("application/json");
	answer->body = answer_error_body(code, message, &answer->body_length);
	if (answer->body == NULL)
		answer->body_length = 0;
}

const char *answer_parse_state(const char *body, size_t length, const char *export_id, char *state,
			       size_t cap, const char **why)
{
	const cJSON *field, *id;
	const char *found = NULL;
	cJSON *json;

	*why = NULL;
	json = json_check_parse(body, length, why);
	if (json == NULL)
		return NULL;
	field = cJSON_GetObjectItemCaseSensitive(json, "state");
	id = cJSON_GetObjectItemCaseSensitive(json, "data_export_id");
	if (!cJSON_IsObject(json) || !cJSON_IsString(field) || cap == 0) {
		*why = "the upstream answered without a JSON object holding a state";
	} else if (export_id != NULL && id != NULL &&
		   (!cJSON_IsString(id) || strcmp(id->valuestring, export_id) != 0)) {
		/* off a poisoned connection, maybe: never to be stored under this key */
		*why = "the upstream answered about another export";
	} else {
		snprintf(state, cap, "%s", field->valuestring);
		found = state;
	}
	cJSON_Delete(json);
	return found;
}

enum answer_state answer_state_of(const char *state)
{
	if (strcmp(state, "COMPLETED") == 0)
		return ANSWER_COMPLETED;
	if (strcmp(state, "FAILED") == 0)
		return ANSWER_FAILED;
	return ANSWER_NON_FINAL;
}

int64_t answer_ttl(const struct conf *conf, int status, const char *state)
{
	int64_t ttl;

	if (status == 404)
		ttl = conf->cache_error_ttl_ms;
	else if (status == 200 && state != NULL)
		ttl = answer_state_of(state) == ANSWER_NON_FINAL ? conf->cache_pending_ttl_ms
								 : conf->cache_final_ttl_ms;
	else
		return -1;
	return ttl > 0 ? ttl : -1;
}

/* An upstream error body, but for any configured secret in it. */
static int redact_body(struct answer *answer, const struct conf *conf)
{
	char *redacted;
	size_t length;

	switch (redact_secrets(answer->body, answer->body_length, conf, &redacted, &length)) {
	case 0:
		return 0;
	case 1:
		free(answer->body);
		answer->body = redacted;
		answer->body_length = length;
		answer->redacted = 1;
		return 0;
	default:
		return -1;
	}
}

/* A 2xx to POST /export_data: a JSON object naming the new export. */
static const char *new_export_problem(const char *body, size_t length)
{
	const char *why = NULL;
	cJSON *tree = json_check_parse(body, length, &why);
	const cJSON *id =
		tree != NULL ? cJSON_GetObjectItemCaseSensitive(tree, "data_export_id") : NULL;
	int ok = cJSON_IsObject(tree) && cJSON_IsString(id) && id->valuestring[0] != '\0';

	cJSON_Delete(tree);
	if (ok)
		return NULL;
	return tree == NULL && why != NULL ? why : "the upstream's answer names no data_export_id";
}

/*
 * A complete HTTP response: its bytes, or the gateway's error for it. export_id
 * NULL and new_export: the answer to POST /export_data.
 */
static void from_response(struct answer *answer, const struct conf *conf, const char *export_id,
			  int new_export, const struct upstream_result *result)
{
	long status = result->status;
	size_t length = evbuffer_get_length(result->body);
	char state_text[ANSWER_STATE_MAX];
	const char *state, *why = NULL;

	if (status == 401) {
		answer->why = "its api_key (or user_id) is wrong or revoked; every request "
			      "using it fails until it is fixed";
		answer_set_error(answer, 502, "upstream_auth",
				 "the gateway's Gumloop credential was rejected by the upstream");
		return;
	}
	if (status >= 300 && status < 400) {
		answer_set_error(answer, 502, "upstream_redirect",
				 "the upstream answered with a redirect, which is not followed");
		return;
	}
	if (status < 200 || status > 599) { /* framing.c refuses these already */
		answer->why = "a status outside 200-599";
		answer_set_error(answer, 502, "upstream_invalid",
				 "the upstream answered with a status outside 200-599");
		return;
	}
	answer->status = (int)status;
	answer->ttl_ms = -1;
	answer->stale_ok = status >= 500 && !new_export;
	answer->content_type =
		strdup(result->content_type ? result->content_type : "application/json");
	answer->body = malloc(length + 1);
	if (answer->content_type == NULL || answer->body == NULL ||
	    evbuffer_copyout(result->body, answer->body, length) != (ev_ssize_t)length) {
		answer_set_error(answer, 500, "internal", "out of memory");
		return;
	}
	answer->body[length] = '\0';
	answer->body_length = length;
	if (status < 200 || status >= 300) {
		answer->state = ANSWER_NO_STATE;
		if (redact_body(answer, conf) < 0) {
			answer_set_error(answer, 500, "internal", "out of memory");
			return;
		}
		answer->ttl_ms = new_export ? -1 : answer_ttl(conf, (int)status, NULL);
		return;
	}
	if (new_export) {
		answer->state = ANSWER_NO_STATE;
		why = new_export_problem(answer->body, length);
		if (why != NULL) {
			answer->why = why;
			answer_set_error(answer, 502, "upstream_invalid", why);
		}
		return;
	}
	state = answer_parse_state(answer->body, length, export_id, state_text, sizeof(state_text),
				   &why);
	if (state == NULL) {
		answer->why = why;
		answer_set_error(answer, 502, "upstream_invalid", why);
		return;
	}
	answer->state = answer_state_of(state);
	answer->ttl_ms = answer_ttl(conf, (int)status, state);
}

static void from_result(struct answer *answer, const struct conf *conf, const char *export_id,
			int new_export, const struct upstream_result *result)
{
	memset(answer, 0, sizeof(*answer));
	switch (result->outcome) {
	case UPSTREAM_OK:
		from_response(answer, conf, export_id, new_export, result);
		return;
	case UPSTREAM_INVALID:
		answer->why = result->error;
		answer_set_error(answer, 502, "upstream_invalid", result->error);
		return;
	case UPSTREAM_TIMEOUT:
		answer->why = result->error;
		answer_set_error(answer, 504, "upstream_timeout",
				 "the upstream did not answer in time");
		answer->stale_ok = 1;
		return;
	case UPSTREAM_CONNECT_FAILED:
		answer->why = result->error;
		answer_set_error(answer, 502, "upstream_unreachable",
				 "the gateway could not connect to the upstream");
		answer->stale_ok = 1;
		return;
	case UPSTREAM_TOO_LARGE:
		answer->why = result->error;
		answer_set_error(answer, 502, "upstream_too_large", result->error);
		return;
	case UPSTREAM_FAILED:
		answer->why = result->error;
		answer_set_error(answer, 502, "upstream_error", "the upstream request failed");
		answer->stale_ok = 1;
		return;
	}
}

void answer_from_result(struct answer *answer, const struct conf *conf, const char *export_id,
			const struct upstream_result *result)
{
	from_result(answer, conf, export_id, 0, result);
}

void answer_from_export(struct answer *answer, const struct conf *conf,
			const struct upstream_result *result)
{
	from_result(answer, conf, NULL, 1, result);
	answer->stale_ok = 0; /* nothing to fall back on: an export is never cached */
	answer->ttl_ms = -1;
}

void answer_etag(const char *body, size_t length, char etag[ANSWER_ETAG_SIZE])
{
	unsigned char digest[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *)body, length, digest);
	etag[0] = '"';
	hex_encode(digest, 8, etag + 1);
	etag[17] = '"';
	etag[18] = '\0';
}

static const char *skip_list_space(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == ',')
		p++;
	return p;
}

int answer_etag_matches(const char *if_none_match, const char *etag)
{
	const char *p = skip_list_space(if_none_match);
	size_t etag_length = strlen(etag);

	if (*p == '*')
		return *skip_list_space(p + 1) == '\0';
	while (*p != '\0') {
		const char *close;

		if (p[0] == 'W' && p[1] == '/')
			p += 2; /* weak comparison: W/"x" matches "x" */
		if (*p != '"' || (close = strchr(p + 1, '"')) == NULL)
			return 0;
		if ((size_t)(close + 1 - p) == etag_length && memcmp(p, etag, etag_length) == 0)
			return 1;
		p = skip_list_space(close + 1);
	}
	return 0;
}
