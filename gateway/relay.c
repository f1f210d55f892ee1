/*
 * relay.c -- pumps a CSV download from libcurl's write callback to the server,
 * which queues it for the client. Above RELAY_HIGH_WATERMARK queued bytes the
 * transfer is paused; the server says when the queue has drained and it is
 * resumed, so a slow client costs at most the watermark plus libcurl's buffer.
 */
#include "relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "cache.h"
#include "conf.h"
#include "log.h"
#include "metrics.h"
#include "query.h"
#include "upstream.h"

/*
 * Response headers a download passes through, as design.md lists them. The
 * framing (Content-Length, Transfer-Encoding) is the gateway's own.
 */
const char *const relay_passed_headers[RELAY_PASSED_HEADERS] = {
	"Content-Type",	 "Content-Disposition", "Content-Range",
	"Accept-Ranges", "Last-Modified",	"ETag",
};

struct relay {
	struct upstream_call *call;
	struct cache *cache;
	struct evbuffer *chunk; /* handed to the server as one piece, then empty again */
	char *gathered;		/* RELAY_CHUNK bytes: body not yet in chunk */
	size_t gathered_length;
	struct event *flush;
	const struct relay_events *events;
	void *arg;
	char *user_id;
	char export_id[QUERY_MAX_ID_BYTES + 1];
	char credential[64];
	char *content_range; /* of a 416, which has no body to stream */
	int head;
	int needs_length;
	int refused; /* no length for a client that needs one */
	int streaming;
	int ended;
	int64_t expected; /* the declared length, or -1 */
	uint64_t bytes;	  /* taken from upstream */
	uint64_t handed;  /* handed to evhttp */
};

uint64_t relay_bytes_handed(const struct relay *relay)
{
	return relay != NULL ? relay->handed : 0;
}

void relay_free(struct relay *relay)
{
	if (relay == NULL)
		return;
	upstream_cancel(relay->call);
	if (relay->flush != NULL)
		event_free(relay->flush);
	if (relay->chunk != NULL)
		evbuffer_free(relay->chunk);
	free(relay->gathered);
	free(relay->content_range);
	free(relay->user_id);
	free(relay);
}

int relay_is_json_type(const char *content_type)
{
	return content_type != NULL && strncasecmp(content_type, "application/json", 16) == 0;
}

static enum upstream_mode on_headers(const struct upstream_head *head, void *arg)
{
	struct relay *relay = arg;
	const struct evkeyvalq *headers = head->headers;
	const char *type = evhttp_find_header(headers, "Content-Type");
	struct evkeyvalq passed = { NULL, &passed.tqh_first };
	long status = head->status;

	/* Errors and JSON states are small: buffered, then answered like a status call. */
	if (status < 200 || status >= 300 || type == NULL || relay_is_json_type(type)) {
		const char *content_range = evhttp_find_header(headers, "Content-Range");

		if (status == 416 && content_range != NULL &&
		    (relay->content_range = strdup(content_range)) == NULL)
			return UPSTREAM_ABORT;
		return UPSTREAM_BUFFER;
	}
	/* An HTTP/1.0 body ends when the connection closes: a cut would look whole. */
	if (relay->needs_length && !relay->head && head->content_length < 0) {
		relay->refused = 1;
		return UPSTREAM_ABORT;
	}
	for (size_t i = 0; i < RELAY_PASSED_HEADERS; i++) {
		const char *value = evhttp_find_header(headers, relay_passed_headers[i]);

		if (value != NULL &&
		    evhttp_add_header(&passed, relay_passed_headers[i], value) < 0) {
			evhttp_clear_headers(&passed);
			return UPSTREAM_ABORT;
		}
	}
	relay->expected = head->content_length;
	relay->streaming = 1;
	relay->events->started((int)status, &passed, head->content_length, relay->arg);
	evhttp_clear_headers(&passed);
	/* HEAD: the headers were all the client wanted. */
	return relay->head ? UPSTREAM_STOP : UPSTREAM_STREAM;
}

static void free_gathered(const void *data, size_t length, void *extra)
{
	(void)length;
	(void)extra;
	free((void *)data);
}

/*
 * Hands what was gathered to the server as one piece. The buffer itself goes
 * into the queue (shrunk to its content): no copy, and no evbuffer chain
 * rounded up to a power of two around a few KiB, which would double what a slow
 * client's queue costs.
 */
static void flush(struct relay *relay)
{
	char *data = relay->gathered;
	size_t length = relay->gathered_length;
	char *shrunk;

	if (length == 0)
		return;
	relay->gathered = NULL;
	relay->gathered_length = 0;
	if (length < RELAY_CHUNK && (shrunk = realloc(data, length)) != NULL)
		data = shrunk;
	if (evbuffer_add_reference(relay->chunk, data, length, free_gathered, NULL) < 0) {
		free(data);
		log_error("%s: out of memory; the download is cut short", __func__);
		return;
	}
	relay->handed += length;
	relay->events->piece(relay->chunk, relay->arg);
	/* the server takes the bytes; what it leaves is not sent twice */
	evbuffer_drain(relay->chunk, evbuffer_get_length(relay->chunk));
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	flush(arg);
}

void relay_drained(struct relay *relay)
{
	if (relay != NULL && !relay->ended)
		upstream_resume(relay->call);
}

static int on_data(const char *bytes, size_t length, void *arg)
{
	struct relay *relay = arg;
	int overflow = 0;

	/* this piece included, so the queue never goes past the watermark */
	if (relay->events->queued(relay->arg) + relay->gathered_length + length >
	    RELAY_HIGH_WATERMARK)
		return 1;
	/* never more than declared: the rest would be read as the client's next answer */
	if (relay->expected >= 0 && relay->bytes + length > (uint64_t)relay->expected) {
		log_warn("download of %s: upstream sent more than its Content-Length; the "
			 "excess is dropped",
			 relay->export_id);
		length = (size_t)((uint64_t)relay->expected - relay->bytes);
		overflow = 1;
	}
	/*
	 * libcurl hands over one TLS record (16 KiB at most) at a time; gathered into
	 * one RELAY_CHUNK piece and handed on once per loop turn (or when full), they
	 * cost one allocation and one chunk instead of several.
	 */
	relay->bytes += length;
	metrics_download_bytes(length);
	while (length > 0) {
		size_t room, taken;

		if (relay->gathered == NULL && (relay->gathered = malloc(RELAY_CHUNK)) == NULL)
			return -1;
		room = RELAY_CHUNK - relay->gathered_length;
		taken = length < room ? length : room;
		memcpy(relay->gathered + relay->gathered_length, bytes, taken);
		relay->gathered_length += taken;
		bytes += taken;
		length -= taken;
		if (relay->gathered_length == RELAY_CHUNK)
			flush(relay);
	}
	if (relay->gathered_length > 0)
		event_active(relay->flush, EV_TIMEOUT, 0);
	return overflow ? -1 : 0;
}

static void on_answer(const struct cache_answer *answer, void *arg)
{
	struct relay *relay = arg;

	relay->events->answer(answer, answer->status == 416 ? relay->content_range : NULL,
			      relay->arg);
}

static void on_done(const struct upstream_result *result, void *arg)
{
	struct relay *relay = arg;
	const char *error = result->error;

	relay->call = NULL;
	relay->ended = 1;
	if (relay->refused) {
		relay->events->refused(426, "http_1_1_required",
				       "upstream sends this file without a length, which only "
				       "HTTP/1.1 can frame; retry with HTTP/1.1",
				       relay->arg);
		return;
	}
	if (!relay->streaming) {
		cache_settle(relay->cache, relay->user_id, relay->export_id, relay->credential,
			     result, on_answer, relay);
		return;
	}
	flush(relay); /* what arrived is good, even if the rest will not come */
	if (result->outcome == UPSTREAM_OK && !relay->head && relay->expected >= 0 &&
	    relay->bytes != (uint64_t)relay->expected)
		error = "the body did not match its Content-Length";
	else if (result->outcome == UPSTREAM_OK)
		error = NULL;
	if (error == NULL) {
		relay->events->ended(RELAY_COMPLETE, relay->bytes, relay->arg);
	} else {
		log_warn("download of %s failed after %llu bytes: %s; closing the client "
			 "connection so the file cannot pass for complete",
			 relay->export_id, (unsigned long long)relay->bytes, error);
		relay->events->ended(RELAY_FAILED, relay->bytes, relay->arg);
	}
}

static const struct upstream_download_handlers handlers = {
	.headers = on_headers,
	.data = on_data,
	.done = on_done,
};

struct relay *relay_start(struct event_base *base, struct upstream *upstream, struct cache *cache,
			  const struct conf *conf, const struct conf_credential *credential,
			  const struct query *q, const struct relay_request *request,
			  const struct relay_events *events, void *arg)
{
	struct relay *relay = calloc(1, sizeof(*relay));

	if (relay == NULL)
		return NULL;
	relay->cache = cache;
	relay->events = events;
	relay->arg = arg;
	relay->head = request->head;
	relay->needs_length = request->needs_length;
	relay->expected = -1;
	relay->chunk = evbuffer_new();
	relay->user_id = strdup(credential->user_id);
	snprintf(relay->export_id, sizeof(relay->export_id), "%s", q->data_export_id);
	snprintf(relay->credential, sizeof(relay->credential), "%s", credential->name);
	relay->flush = event_new(base, -1, 0, on_flush, relay);
	if (relay->chunk == NULL || relay->user_id == NULL || relay->flush == NULL)
		goto fail;
	relay->call = upstream_start_download(upstream, conf, credential, q, request->range,
					      request->if_range, &handlers, relay);
	if (relay->call == NULL)
		goto fail;
	return relay;
fail:
	relay_free(relay);
	return NULL;
}
