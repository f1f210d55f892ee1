/*
 * download.c -- download=true: a max_downloads slot, the relay, and the reply it
 * drives (status line and headers when upstream's head is in, pieces as they
 * come, the end or a cut). The relay pumps; every byte a client gets is written
 * here, through evhttp.
 */
#include "exchange.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <event2/bufferevent_ssl.h>

#include "cache.h"
#include "checks.h"
#include "conf.h"
#include "fanout.h"
#include "listeners.h"
#include "log.h"
#include "metrics.h"
#include "relay.h"

void download_release(struct exchange *ex)
{
	if (ex->state == EXCHANGE_DOWNLOAD_HEAD || ex->state == EXCHANGE_STREAMING)
		ex->server->downloads--;
}

uint64_t download_bytes_handed(const struct exchange *ex)
{
	return ex->fan != NULL ? fan_client_bytes_handed(ex->fan) : relay_bytes_handed(ex->relay);
}

void download_free(struct exchange *ex)
{
	relay_free(ex->relay);
	ex->relay = NULL;
	fan_client_free(ex->fan);
	ex->fan = NULL;
}

static void on_answer(const struct cache_answer *answer, const char *content_range, void *arg)
{
	struct exchange *ex = arg;

	download_release(ex);
	/* download=true&wait=: not COMPLETED yet, held as a status call would be */
	if (content_range == NULL && export_status_hold(ex, answer)) {
		ex->state = EXCHANGE_WAITING;
		return; /* the client watch goes on */
	}
	watch_client_stop(ex);
	if (content_range != NULL)
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Content-Range",
				  content_range);
	exchange_reply_answer(ex, answer);
}

static void on_refused(int status, const char *code, const char *message, void *arg)
{
	struct exchange *ex = arg;

	download_release(ex);
	watch_client_stop(ex);
	ex->must_close = 1;
	if (status == 426)
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Upgrade",
				  "HTTP/1.1");
	exchange_reply_error(ex, status, code, message);
}

static void on_started(int status, const struct evkeyvalq *headers, int64_t content_length,
		       void *arg)
{
	struct exchange *ex = arg;
	struct evkeyvalq *out = evhttp_request_get_output_headers(ex->req);
	const struct evkeyval *header;
	char length[24];

	/* evhttp watches the connection itself while it writes */
	watch_client_stop(ex);
	ex->state = EXCHANGE_STREAMING;
	ex->status = status;
	ex->upstream_status = status;
	for (header = headers->tqh_first; header != NULL; header = header->next.tqe_next)
		evhttp_add_header(out, header->key, header->value);
	/* ours, from the checked head: chunked when upstream declared no length */
	if (content_length >= 0) {
		snprintf(length, sizeof(length), "%" PRId64, content_length);
		evhttp_add_header(out, "Content-Length", length);
	}
	/* a 1.0 body is framed by its length; the connection is not reused after it */
	if (ex->http10 || ex->server->draining)
		exchange_close_after_reply(ex);
	if (watch_progress_start(ex) < 0)
		log_warn("%s: cannot watch the download's progress", __func__);
	metrics_download_started();
	evhttp_send_reply_start(ex->req, status, NULL);
}

static void on_drained(struct evhttp_connection *evcon, void *arg)
{
	struct exchange *ex = arg;

	(void)evcon;
	if (ex->fan != NULL)
		fan_client_drained(ex->fan);
	else
		relay_drained(ex->relay);
}

static void on_piece(struct evbuffer *piece, void *arg)
{
	struct exchange *ex = arg;

	evhttp_send_reply_chunk_with_cb(ex->req, piece, on_drained, ex);
}

static size_t on_queued(void *arg)
{
	return watch_queued(arg);
}

static void on_ended(enum relay_end how, uint64_t bytes, void *arg)
{
	struct exchange *ex = arg;

	(void)bytes;
	download_release(ex);
	if (how == RELAY_COMPLETE) {
		ex->state = EXCHANGE_REPLIED;
		metrics_download_finished(METRICS_DOWNLOAD_COMPLETE);
		evhttp_send_reply_end(ex->req); /* may end the exchange before it returns */
		return;
	}
	/* a shared transfer counts its failure once; each of its clients is aborted */
	metrics_download_finished(ex->fan != NULL ? METRICS_DOWNLOAD_ABORTED
						  : METRICS_DOWNLOAD_FAILED);
	ex->end_note = "upstream-failed-mid-body";
	/*
	 * No final chunk, or short of Content-Length: the client sees a truncated
	 * file. What it was sent so far goes out first, then the connection closes.
	 */
	ex->state = EXCHANGE_CUTTING;
	listeners_linger(ex->server->listeners, ex->connection);
	watch_close_when_flushed(ex);
}

static const struct relay_events relay_events = {
	.answer = on_answer,
	.refused = on_refused,
	.started = on_started,
	.piece = on_piece,
	.queued = on_queued,
	.ended = on_ended,
};

void download_start(struct exchange *ex, const struct conf_credential *credential,
		    const struct query *q)
{
	struct server *server = ex->server;
	const struct evkeyvalq *headers = evhttp_request_get_input_headers(ex->req);
	struct relay_request request = { .head = ex->head, .needs_length = ex->http10 };
	struct bufferevent *bev;

	if (checks_forwarded_header(headers, "Range", &request.range) < 0 ||
	    checks_forwarded_header(headers, "If-Range", &request.if_range) < 0) {
		exchange_reply_error(ex, 400, "bad_request",
				     "Range or If-Range is malformed or too long");
		return;
	}
	if (server->downloads >= (size_t)server->conf->max_downloads) {
		evhttp_add_header(evhttp_request_get_output_headers(ex->req), "Retry-After", "1");
		exchange_reply_error(ex, 503, "too_many_downloads",
				     "max_downloads downloads are running; retry shortly");
		return;
	}
	download_free(ex); /* a held download's first try, which got JSON */
	bev = evhttp_connection_get_bufferevent(ex->connection);
	request.plain_socket = bev != NULL && bufferevent_openssl_get_ssl(bev) == NULL;
	ex->fan = fanout_join(server->fanout, credential, q, &request, &relay_events, ex,
			      &ex->joined);
	if (ex->fan == NULL)
		ex->relay = relay_start(server->base, server->upstream, server->cache, server->conf,
					credential, q, &request, &relay_events, ex);
	if (ex->relay == NULL && ex->fan == NULL) {
		exchange_reply_error(ex, 503, "unavailable",
				     "the upstream request could not be started");
		return;
	}
	server->downloads++;
	ex->state = EXCHANGE_DOWNLOAD_HEAD;
	watch_client_start(ex);
}
