/*
 * fanout.c -- shared download transfers (fanout.h). A transfer is one upstream
 * download=true call whose body goes into a spool file with pwrite as it comes
 * (paused only till the next loop turn after FAN_TURN bytes, so that many
 * transfers share the loop: the clients' pace is not its business); its
 * clients are a list, each with the offset it has been handed up to. Once per
 * loop turn after new
 * bytes (and whenever a client's queue drains) each client is handed the next
 * pieces of the spool as file segments, up to the relay's watermark of queued
 * bytes. A transfer lives while it has clients, or while its complete spool is
 * kept; the spool's descriptor is dup'ed into each segment, so a client still
 * being written to never depends on the transfer's lifetime.
 */
#include "config.h"

#include "fanout.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "cache.h"
#include "conf.h"
#include "hash.h"
#include "log.h"
#include "metrics.h"
#include "query.h"
#include "relay.h"
#include "upstream.h"

#include <utlist.h>

/* A client is handed at most this much of the spool per piece. */
#define FAN_PIECE (256 * 1024)
/* Upstream bytes are gathered up to this much (or one loop turn) per pwrite. */
#define FAN_GATHER (256 * 1024)
/*
 * A transfer takes at most this much per loop turn, then pauses until the next
 * one. libcurl 7.88 reads a socket that stays readable 100 times per call and
 * then marks the transfer to run again at once; the next call for any socket
 * runs every such transfer again. Unpaused, 100 transfers from a fast upstream
 * kept the loop inside curl for tens of seconds (no epoll_wait, /healthz
 * unanswered, TLS handshakes timed out): the relay's pauses bound it, the
 * spool's never did.
 */
#define FAN_TURN (256 * 1024)
/*
 * A transfer with one client that keeps up goes direct once this much is
 * spooled: the spool is closed, no one else may join, and the body goes to the
 * client from memory with the relay's backpressure. Measured (bench/run
 * stream), a lone download through the spool is slower and costs more CPU
 * than the relay (pwrite into fresh page-cache pages, then sendfile), so the
 * spool is kept only while it may still be shared: the clients of a completed
 * export come within its first seconds, and a client that is behind reads from
 * the spool, which stays.
 */
#define FAN_SOLO (16 * 1024 * 1024)

struct transfer {
	char *key; /* hash_key_join(user id, export id) */
	UT_hash_handle hh;
	int in_table;
	struct transfer *prev, *next; /* every transfer, listed or not */
	struct fanout *fanout;
	struct upstream_call *call; /* NULL once done */
	int fd;			    /* the spool */
	uint64_t written;	    /* bytes in the spool */
	char *gathered;		    /* FAN_GATHER bytes: body not yet written */
	size_t gathered_length;
	int64_t expected;	  /* upstream's Content-Length, or -1 */
	int status;		  /* the head's, once streaming */
	struct evkeyvalq headers; /* passed through to every client */
	int streaming;		  /* the head said: a body to spool */
	int complete;		  /* all of it is in the spool */
	int failed;		  /* it never will be: clients are cut after what is there */
	int busy;		  /* in a callback: the last client leaving does not free it */
	int listed;		  /* in fanout->all */
	struct fan_client *clients;
	struct event *notify; /* hands new bytes to the clients, once per turn */
	struct event *resume; /* a zero timer: the next turn, after FAN_TURN bytes */
	size_t turn_bytes;    /* taken since the last notify or resume */
	int paused;	      /* by FAN_TURN, till resume fires */
	int held;	      /* direct: by the client's queue, till it drains */
	int direct;	      /* no spool any more: bytes go to the one client */
	struct event *expiry; /* a kept complete spool's end */
	char export_id[QUERY_MAX_ID_BYTES + 1];
	char credential[64];
	char *user_id;
};

struct fan_client {
	struct transfer *transfer;
	struct fan_client *prev, *next;
	const struct relay_events *events;
	void *arg;
	struct evbuffer *piece;
	uint64_t offset; /* the next spool byte to hand */
	uint64_t end;	 /* one past the last one this client gets (a Range), or UINT64_MAX */
	uint64_t handed;
	int needs_length;
	int started;
	int ended;
	char *content_range; /* a 206 from a kept spool */
};

struct fanout {
	struct event_base *base;
	struct upstream *upstream;
	struct cache *cache;
	const struct conf *conf;
	struct transfer *transfers; /* uthash head: those new clients may join */
	struct transfer *all;	    /* utlist of every transfer */
	uint64_t spool_bytes;
	int dir_failed_logged;
};

static int spool_flush(struct transfer *t);

static void transfer_free(struct transfer *t)
{
	struct fanout *fanout = t->fanout;

	if (t->in_table)
		HASH_DEL(fanout->transfers, t);
	if (t->listed)
		DL_DELETE(fanout->all, t);
	upstream_cancel(t->call);
	if (t->fd >= 0)
		close(t->fd);
	if (!t->direct)
		fanout->spool_bytes -= t->written;
	metrics_spool_bytes(fanout->spool_bytes);
	if (t->notify != NULL)
		event_free(t->notify);
	if (t->resume != NULL)
		event_free(t->resume);
	if (t->expiry != NULL)
		event_free(t->expiry);
	evhttp_clear_headers(&t->headers);
	free(t->gathered);
	free(t->key);
	free(t->user_id);
	free(t);
}

/* No new client may join it (failed, or a kept spool that expired). */
static void transfer_unlist(struct transfer *t)
{
	if (t->in_table)
		HASH_DEL(t->fanout->transfers, t);
	t->in_table = 0;
}

/* Frees t when nothing needs it: no client, and not a kept spool. */
static void transfer_settle(struct transfer *t)
{
	if (t->busy || t->clients != NULL)
		return;
	if (t->complete && t->in_table && t->expiry != NULL &&
	    event_pending(t->expiry, EV_TIMEOUT, NULL))
		return;
	transfer_free(t);
}

static void client_unlink(struct fan_client *client)
{
	if (client->transfer != NULL)
		DL_DELETE(client->transfer->clients, client);
	client->transfer = NULL;
}

void fan_client_free(struct fan_client *client)
{
	struct transfer *t;

	if (client == NULL)
		return;
	t = client->transfer;
	client_unlink(client);
	if (client->piece != NULL)
		evbuffer_free(client->piece);
	free(client->content_range);
	free(client);
	if (t == NULL)
		return;
	transfer_settle(t);
}

uint64_t fan_client_bytes_handed(const struct fan_client *client)
{
	return client != NULL ? client->handed : 0;
}

/* Puts [offset, offset + length) of the spool into client's piece. -1: out of resources. */
static int add_piece(struct fan_client *client, int fd, uint64_t offset, size_t length)
{
	/* its own descriptor: the segment may outlive the transfer in the client's queue */
	int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	struct evbuffer_file_segment *segment;

	if (own < 0)
		return -1;
	segment = evbuffer_file_segment_new(own, (ev_off_t)offset, (ev_off_t)length,
					    EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_LOCKING);
	if (segment == NULL) {
		close(own);
		return -1;
	}
	if (evbuffer_add_file_segment(client->piece, segment, 0, (ev_off_t)length) < 0) {
		evbuffer_file_segment_free(segment);
		return -1;
	}
	evbuffer_file_segment_free(segment); /* the buffer holds its own reference */
	return 0;
}

/* Starts the client's reply, once the head is known. 0, or -1 when it ended (refused). */
static int client_start(struct fan_client *client)
{
	struct transfer *t = client->transfer;
	struct evkeyvalq headers = { NULL, &headers.tqh_first };
	const struct evkeyval *header;
	int64_t length = t->expected;
	int status = t->status;

	if (client->needs_length && t->expected < 0) {
		client->ended = 1;
		client->events->refused(426, "http_1_1_required",
					"upstream sends this file without a length, which only "
					"HTTP/1.1 can frame; retry with HTTP/1.1",
					client->arg);
		return -1;
	}
	for (header = t->headers.tqh_first; header != NULL; header = header->next.tqe_next) {
		if (evhttp_add_header(&headers, header->key, header->value) < 0)
			goto fail;
	}
	if (client->content_range != NULL) {
		status = 206;
		length = (int64_t)(client->end - client->offset);
		if (evhttp_add_header(&headers, "Content-Range", client->content_range) < 0)
			goto fail;
	}
	client->started = 1;
	client->events->started(status, &headers, length, client->arg);
	evhttp_clear_headers(&headers);
	return 0;
fail:
	evhttp_clear_headers(&headers);
	client->ended = 1;
	client->events->refused(503, "unavailable", "out of memory starting the download",
				client->arg);
	return -1;
}

/* Direct: the body bytes gathered in the client's piece go to the server. */
static void client_hand(struct fan_client *client)
{
	size_t length = evbuffer_get_length(client->piece);

	if (length == 0)
		return;
	client->handed += length;
	metrics_download_bytes(length);
	client->events->piece(client->piece, client->arg);
	evbuffer_drain(client->piece, evbuffer_get_length(client->piece));
}

/* Hands client what the spool has for it, up to the watermark; ends it when all is out. */
static void client_pump(struct fan_client *client)
{
	struct transfer *t = client->transfer;
	uint64_t limit;

	if (client->ended || t == NULL || !t->streaming)
		return;
	if (!client->started && client_start(client) < 0)
		return;
	if (t->direct) {
		client_hand(client);
		if (t->complete || t->failed) {
			client->ended = 1;
			client->events->ended(t->complete ? RELAY_COMPLETE : RELAY_FAILED,
					      client->handed, client->arg);
		}
		return;
	}
	limit = t->written < client->end ? t->written : client->end;
	while (client->offset < limit &&
	       client->events->queued(client->arg) < RELAY_HIGH_WATERMARK) {
		uint64_t left = limit - client->offset;
		size_t length = left < FAN_PIECE ? (size_t)left : FAN_PIECE;

		if (add_piece(client, t->fd, client->offset, length) < 0) {
			log_error("%s: cannot queue the spool for a client; it is cut short",
				  __func__);
			client->ended = 1;
			client->events->ended(RELAY_FAILED, client->handed, client->arg);
			return;
		}
		client->offset += length;
		client->handed += length;
		metrics_download_bytes(length);
		client->events->piece(client->piece, client->arg);
		evbuffer_drain(client->piece, evbuffer_get_length(client->piece));
	}
	if (client->offset < limit)
		return; /* its queue is full: on_drained comes back */
	if (t->complete || client->offset >= client->end) {
		client->ended = 1;
		client->events->ended(RELAY_COMPLETE, client->handed, client->arg);
	} else if (t->failed) {
		client->ended = 1;
		client->events->ended(RELAY_FAILED, client->handed, client->arg);
	}
}

void fan_client_drained(struct fan_client *client)
{
	struct transfer *t;

	if (client == NULL || (t = client->transfer) == NULL)
		return;
	t->busy++;
	client_pump(client);
	if (t->held && t->call != NULL &&
	    client->events->queued(client->arg) < RELAY_HIGH_WATERMARK) {
		t->held = 0;
		if (!t->paused)
			upstream_resume(t->call); /* may hand pieces, or finish, right here */
	}
	t->busy--;
	transfer_settle(t);
}

/* Every client gets what is new (and its end, if it came). */
static void pump_all(struct transfer *t)
{
	struct fan_client *client, *next;

	t->busy++;
	DL_FOREACH_SAFE (t->clients, client, next) {
		client_pump(client);
	}
	t->busy--;
}

/*
 * After FAN_SOLO bytes with one client that has all of them, and no kept spool
 * wanted: see FAN_SOLO. Later clients of the key start a transfer of their own.
 */
static void go_direct(struct transfer *t)
{
	struct fan_client *client = t->clients;

	if (t->direct || t->call == NULL || t->complete || t->failed || client == NULL ||
	    client->next != NULL || client->ended || client->end != UINT64_MAX ||
	    client->offset != t->written || t->gathered_length > 0 || t->written < FAN_SOLO ||
	    t->fanout->conf->download_cache_ttl_ms > 0)
		return;
	transfer_unlist(t);
	t->direct = 1;
	close(t->fd); /* the client's queued segments hold descriptors of their own */
	t->fd = -1;
	free(t->gathered); /* 256 KiB per transfer: 25 MiB of RSS at 100 downloads */
	t->gathered = NULL;
	t->fanout->spool_bytes -= t->written;
	metrics_spool_bytes(t->fanout->spool_bytes);
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
	struct transfer *t = arg;

	(void)fd;
	(void)what;
	t->turn_bytes = 0;
	/* a failed write marks t failed: the next piece from upstream aborts it */
	if (t->gathered_length > 0)
		(void)spool_flush(t);
	pump_all(t);
	go_direct(t);
	transfer_settle(t);
}

/* The turn after a pause: libcurl offers the piece it kept again, maybe at once. */
static void on_resume(evutil_socket_t fd, short what, void *arg)
{
	struct transfer *t = arg;

	(void)fd;
	(void)what;
	t->turn_bytes = 0;
	t->paused = 0;
	if (t->call != NULL && !t->held)
		upstream_resume(t->call);
}

static void on_expiry(evutil_socket_t fd, short what, void *arg)
{
	struct transfer *t = arg;

	(void)fd;
	(void)what;
	transfer_unlist(t);
	transfer_settle(t);
}

static enum upstream_mode on_headers(const struct upstream_head *head, void *arg)
{
	struct transfer *t = arg;
	const char *type = evhttp_find_header(head->headers, "Content-Type");

	/* errors and JSON states: buffered, then answered to all like a status call */
	if (head->status < 200 || head->status >= 300 || type == NULL || relay_is_json_type(type))
		return UPSTREAM_BUFFER;
	for (size_t i = 0; i < RELAY_PASSED_HEADERS; i++) {
		const char *value = evhttp_find_header(head->headers, relay_passed_headers[i]);

		if (value != NULL &&
		    evhttp_add_header(&t->headers, relay_passed_headers[i], value) < 0)
			return UPSTREAM_ABORT;
	}
	t->status = (int)head->status;
	t->expected = head->content_length;
	t->streaming = 1;
	event_active(t->notify, EV_TIMEOUT, 0);
	return UPSTREAM_STREAM;
}

/* Writes what was gathered into the spool. -1 (logged, t failed) when it cannot. */
static int spool_flush(struct transfer *t)
{
	const char *bytes = t->gathered;
	size_t length = t->gathered_length;

	t->gathered_length = 0;
	while (length > 0) {
		ssize_t n = pwrite(t->fd, bytes, length, (off_t)t->written);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* ENOSPC and the like: what is in the spool goes out, then a cut */
			log_error("download of %s: cannot write its spool (%s); its clients get "
				  "what was spooled and are cut short",
				  t->export_id, n < 0 ? strerror(errno) : "no progress");
			t->failed = 1;
			return -1;
		}
		bytes += n;
		length -= (size_t)n;
		t->written += (uint64_t)n;
		t->fanout->spool_bytes += (uint64_t)n;
	}
	metrics_spool_bytes(t->fanout->spool_bytes);
	return 0;
}

/* Direct: a piece for the one client, or a pause while its queue is full. */
static int direct_data(struct transfer *t, const char *bytes, size_t length)
{
	struct fan_client *client = t->clients;
	int overflow = 0;

	if (client == NULL || client->ended)
		return -1;
	if (client->events->queued(client->arg) + evbuffer_get_length(client->piece) >=
	    RELAY_HIGH_WATERMARK) {
		t->held = 1;
		return 1; /* offered again from fan_client_drained */
	}
	if (t->expected >= 0 && t->written + length > (uint64_t)t->expected) {
		log_warn("download of %s: upstream sent more than its Content-Length; the "
			 "excess is dropped",
			 t->export_id);
		length = (size_t)((uint64_t)t->expected - t->written);
		overflow = 1;
	}
	t->turn_bytes += length;
	if (evbuffer_add(client->piece, bytes, length) < 0)
		return -1;
	t->written += length;
	if (evbuffer_get_length(client->piece) >= RELAY_CHUNK)
		client_hand(client);
	event_active(t->notify, EV_TIMEOUT, 0);
	return overflow ? -1 : 0;
}

/*
 * libcurl hands over a TLS record (16 KiB) at a time: gathered, they cost one
 * pwrite per FAN_GATHER bytes, and the clients see them once per loop turn.
 */
static int on_data(const char *bytes, size_t length, void *arg)
{
	struct transfer *t = arg;
	int overflow = 0;

	if (t->failed)
		return -1;
	if (t->turn_bytes >= FAN_TURN) {
		static const struct timeval next_turn = { 0, 0 };

		if (!t->paused && event_add(t->resume, &next_turn) < 0)
			return -1;
		t->paused = 1;
		return 1; /* offered again after on_resume */
	}
	if (t->direct)
		return direct_data(t, bytes, length);
	t->turn_bytes += length;
	if (t->expected >= 0 && t->written + t->gathered_length + length > (uint64_t)t->expected) {
		log_warn("download of %s: upstream sent more than its Content-Length; the "
			 "excess is dropped",
			 t->export_id);
		length = (size_t)((uint64_t)t->expected - t->written - t->gathered_length);
		overflow = 1;
	}
	while (length > 0) {
		size_t room, taken;

		if (t->gathered == NULL && (t->gathered = malloc(FAN_GATHER)) == NULL)
			return -1;
		room = FAN_GATHER - t->gathered_length;
		taken = length < room ? length : room;
		memcpy(t->gathered + t->gathered_length, bytes, taken);
		t->gathered_length += taken;
		bytes += taken;
		length -= taken;
		if (t->gathered_length == FAN_GATHER && spool_flush(t) < 0)
			return -1;
	}
	event_active(t->notify, EV_TIMEOUT, 0);
	return overflow ? -1 : 0;
}

static void on_answer(const struct cache_answer *answer, void *arg)
{
	struct transfer *t = arg;
	struct fan_client *client, *next;

	DL_FOREACH_SAFE (t->clients, client, next) {
		client->ended = 1;
		client_unlink(client); /* it is the exchange's to free */
		client->events->answer(answer, NULL, client->arg);
	}
}

static void on_done(const struct upstream_result *result, void *arg)
{
	struct transfer *t = arg;
	const char *error = result->error;

	t->call = NULL;
	t->busy++;
	if (!t->streaming) {
		transfer_unlist(t);
		cache_settle(t->fanout->cache, t->user_id, t->export_id, t->credential, result,
			     on_answer, t);
	} else {
		if (t->gathered_length > 0)
			(void)spool_flush(t); /* a failure marks t failed */
		if (result->outcome == UPSTREAM_OK && !t->failed && t->expected >= 0 &&
		    t->written != (uint64_t)t->expected)
			error = "the body did not match its Content-Length";
		else if (result->outcome == UPSTREAM_OK && !t->failed)
			error = NULL;
		else if (error == NULL)
			error = "the spool could not be written";
		if (error == NULL) {
			t->complete = 1;
			if (t->fanout->conf->download_cache_ttl_ms > 0) {
				struct timeval tv = {
					(time_t)(t->fanout->conf->download_cache_ttl_ms / 1000),
					(suseconds_t)(t->fanout->conf->download_cache_ttl_ms %
						      1000) *
						1000,
				};

				if (event_add(t->expiry, &tv) < 0)
					transfer_unlist(t);
			}
		} else {
			log_warn("download of %s failed after %" PRIu64 " bytes: %s; closing its "
				 "clients' connections so the file cannot pass for complete",
				 t->export_id, t->written, error);
			t->failed = 1;
			metrics_download_transfer_failed();
			transfer_unlist(t);
		}
		pump_all(t);
	}
	t->busy--;
	transfer_settle(t);
}

static const struct upstream_download_handlers handlers = {
	.headers = on_headers,
	.data = on_data,
	.done = on_done,
};

/* An unnamed spool in the configured directory, or -1 (logged once per directory state). */
static int spool_open(struct fanout *fanout)
{
	const char *dir = fanout->conf->download_spool_dir;
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd >= 0) {
		fanout->dir_failed_logged = 0;
		return fd;
	}
	if (!fanout->dir_failed_logged)
		log_warn("cannot make a download spool in %s (%s): downloads are relayed "
			 "without fan-out until it works",
			 dir, strerror(errno));
	fanout->dir_failed_logged = 1;
	return -1;
}

static struct transfer *transfer_start(struct fanout *fanout, const char *key,
				       const struct conf_credential *credential,
				       const struct query *q)
{
	struct transfer *t;

	if (fanout->spool_bytes >= (uint64_t)fanout->conf->download_spool_max)
		return NULL;
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return NULL;
	t->fanout = fanout;
	DL_APPEND(fanout->all, t);
	t->listed = 1;
	t->fd = -1;
	t->expected = -1;
	t->headers.tqh_first = NULL;
	t->headers.tqh_last = &t->headers.tqh_first;
	snprintf(t->export_id, sizeof(t->export_id), "%s", q->data_export_id);
	snprintf(t->credential, sizeof(t->credential), "%s", credential->name);
	t->key = strdup(key);
	t->user_id = strdup(credential->user_id);
	t->notify = event_new(fanout->base, -1, 0, on_notify, t);
	t->resume = evtimer_new(fanout->base, on_resume, t);
	t->expiry = evtimer_new(fanout->base, on_expiry, t);
	if (t->key == NULL || t->user_id == NULL || t->notify == NULL || t->resume == NULL ||
	    t->expiry == NULL)
		goto fail;
	t->fd = spool_open(fanout);
	if (t->fd < 0)
		goto fail;
	t->call = upstream_start_download(fanout->upstream, fanout->conf, credential, q, NULL, NULL,
					  &handlers, t);
	if (t->call == NULL)
		goto fail;
	hash_add_failed = 0;
	HASH_ADD_KEYPTR(hh, fanout->transfers, t->key, strlen(t->key), t);
	t->in_table = !hash_add_failed; /* if not, it runs for its first client alone */
	return t;
fail:
	transfer_free(t);
	return NULL;
}

/* A single "bytes=A-B", "bytes=A-" or "bytes=-N" within size: 0 with [*first, *last]. */
static int parse_range(const char *value, uint64_t size, uint64_t *first, uint64_t *last)
{
	const char *p;
	char *end;
	unsigned long long a, b;

	if (strncasecmp(value, "bytes=", 6) != 0 || strchr(value, ',') != NULL || size == 0)
		return -1;
	p = value + 6;
	if (*p == '-') {
		errno = 0;
		b = strtoull(p + 1, &end, 10);
		if (errno != 0 || end == p + 1 || *end != '\0' || b == 0)
			return -1;
		*first = b >= size ? 0 : size - b;
		*last = size - 1;
		return 0;
	}
	if (*p < '0' || *p > '9')
		return -1;
	errno = 0;
	a = strtoull(p, &end, 10);
	if (errno != 0 || *end != '-')
		return -1;
	p = end + 1;
	if (*p == '\0') {
		b = size - 1;
	} else {
		if (*p < '0' || *p > '9')
			return -1;
		b = strtoull(p, &end, 10);
		if (errno != 0 || *end != '\0' || b < a)
			return -1;
	}
	if (a >= size)
		return -1;
	*first = a;
	*last = b >= size ? size - 1 : b;
	return 0;
}

/*
 * How a kept spool answers a Range request: 1 with client's range set (206), 0
 * for the whole file (an If-Range that does not match), -1 when upstream should
 * answer it (unsatisfiable or not understood).
 */
static int range_from_spool(struct fan_client *client, const struct transfer *t,
			    const struct relay_request *request)
{
	uint64_t first, last;
	char text[96];

	if (request->if_range != NULL) {
		const char *etag = evhttp_find_header(&t->headers, "ETag");
		const char *modified = evhttp_find_header(&t->headers, "Last-Modified");

		if (!((etag != NULL && strcmp(etag, request->if_range) == 0) ||
		      (modified != NULL && strcmp(modified, request->if_range) == 0)))
			return request->range != NULL ? 0 : -1;
	}
	if (request->range == NULL)
		return -1;
	if (parse_range(request->range, t->written, &first, &last) < 0)
		return -1;
	snprintf(text, sizeof(text), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, first, last,
		 t->written);
	client->content_range = strdup(text);
	if (client->content_range == NULL)
		return -1;
	client->offset = first;
	client->end = last + 1;
	return 1;
}

struct fan_client *fanout_join(struct fanout *fanout, const struct conf_credential *credential,
			       const struct query *q, const struct relay_request *request,
			       const struct relay_events *events, void *arg, int *joined)
{
	char buf[QUERY_MAX_ID_BYTES + 64];
	char *key;
	struct transfer *t = NULL;
	struct fan_client *client;
	int ranged = request->range != NULL || request->if_range != NULL;

	*joined = 0;
	if (request->head || strcmp(fanout->conf->download_spool_dir, "off") == 0)
		return NULL;
	client = calloc(1, sizeof(*client));
	key = hash_key_join(buf, sizeof(buf), credential->user_id, q->data_export_id);
	if (client == NULL || key == NULL || (client->piece = evbuffer_new()) == NULL)
		goto fail;
	client->events = events;
	client->arg = arg;
	client->end = UINT64_MAX;
	client->needs_length = request->needs_length;
	if (request->plain_socket)
		evbuffer_set_flags(client->piece, EVBUFFER_FLAG_DRAINS_TO_FD);
	HASH_FIND_STR(fanout->transfers, key, t);
	if (t != NULL && t->failed)
		t = NULL;
	if (ranged) {
		/* only a complete spool answers a Range; else upstream does */
		if (t == NULL || !t->complete || range_from_spool(client, t, request) < 0)
			goto fail;
	}
	if (t != NULL) {
		*joined = 1;
		metrics_download_joined();
	} else if ((t = transfer_start(fanout, key, credential, q)) == NULL) {
		goto fail;
	}
	hash_key_free(key, buf);
	client->transfer = t;
	DL_APPEND(t->clients, client);
	if (t->streaming)
		event_active(t->notify, EV_TIMEOUT, 0);
	return client;
fail:
	hash_key_free(key, buf);
	if (client != NULL && client->piece != NULL)
		evbuffer_free(client->piece);
	if (client != NULL)
		free(client->content_range);
	free(client);
	return NULL;
}

struct fanout *fanout_new(struct event_base *base, struct upstream *upstream, struct cache *cache,
			  const struct conf *conf)
{
	struct fanout *fanout = calloc(1, sizeof(*fanout));

	if (fanout == NULL)
		return NULL;
	fanout->base = base;
	fanout->upstream = upstream;
	fanout->cache = cache;
	fanout->conf = conf;
	return fanout;
}

void fanout_set_conf(struct fanout *fanout, const struct conf *conf)
{
	fanout->conf = conf;
}

void fanout_free(struct fanout *fanout)
{
	if (fanout == NULL)
		return;
	while (fanout->all != NULL) {
		struct transfer *t = fanout->all;
		struct fan_client *client, *next;

		DL_FOREACH_SAFE (t->clients, client, next) {
			client_unlink(client);
		}
		transfer_free(t);
	}
	free(fanout);
}
