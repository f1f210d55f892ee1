/*
 * exchange.h -- one client request from its parsing to its teardown, shared by
 * the server's own files (server.c: lifecycle, routing, replies, teardown;
 * export_status.c: the /export_status handler; download.c: download=true;
 * watch.c: noticing a client that left or stalled). Not an API for the rest of
 * the gateway: server.h is.
 *
 * A request goes through the states below, in that order, and ends in
 * exchange_close (called by server.c only), whichever way it ends.
 */
#ifndef GATEWAY_EXCHANGE_H
#define GATEWAY_EXCHANGE_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/http.h>

#include "http_text.h"
#include "query.h"
#include "route.h"

struct access_log;
struct auth;
struct cache;
struct cache_answer;
struct cache_waiter;
struct conf;
struct conf_credential;
struct evbuffer;
struct evbuffer_cb_entry;
struct event;
struct event_base;
struct listeners;
struct fan_client;
struct fanout;
struct holds;
struct relay;
struct status_wait;
struct upstream;

struct server {
	struct event_base *base;
	struct listeners *listeners;
	struct conf *conf;
	struct auth *auth;
	struct upstream *upstream;
	struct cache *cache;
	struct access_log *access_log; /* NULL: off */
	size_t active;		       /* requests begun and not yet completed or dropped */
	size_t downloads;	       /* downloads holding a max_downloads slot */
	int draining;
	void (*drained)(void *arg);
	void *drained_arg;
	struct event *drain_check;
	struct http_date date;		 /* the Date header, made once a second */
	struct exchange *dispatching;	 /* in on_request's turn; NULL once closed */
	struct export_call *exports;	 /* POST /export_data calls in flight (export_data.c) */
	struct idempotency *idempotency; /* their Idempotency-Key records */
	struct holds *holds;		 /* status requests held (wait=) */
	struct fanout *fanout;		 /* shared download transfers */
	struct redis *redis;		 /* fleet mode, or NULL */
};

/* The server's side of an open client connection (listeners.c keeps the rest). */
struct connection {
	struct exchange *exchange; /* the request being answered, NULL between them */
	struct listeners_connection *handle;
};

enum exchange_state {
	EXCHANGE_CHECKING,	/* routing, checks, the handler: nothing sent yet */
	EXCHANGE_WAITING,	/* a status call waits for the cache's answer (waiter) or is held */
	EXCHANGE_DOWNLOAD_HEAD, /* a download waits for upstream's head (relay, a slot) */
	EXCHANGE_STREAMING,	/* a download's body flows (relay, a slot) */
	EXCHANGE_CUTTING,	/* upstream failed mid-body: closed once its bytes are out */
	EXCHANGE_REPLIED,	/* the whole reply is evhttp's to write */
};

struct exchange {
	struct server *server;
	struct evhttp_request *req;
	struct evhttp_connection *connection; /* NULL once the connection is gone */
	struct connection *owner;	      /* NULL once the connection is gone */
	enum exchange_state state;
	enum route route;
	struct cache_waiter *waiter;	  /* EXCHANGE_WAITING */
	struct relay *relay;		  /* a download's, until the exchange closes */
	struct fan_client *fan;		  /* or its place in a shared transfer (fanout.c) */
	int joined;			  /* that transfer was running (or kept) when it came */
	struct export_call *export_call;  /* POST /export_data's, while it waits */
	struct status_wait *wait;	  /* a status call that asked to wait (export_status.c) */
	const char *wait_end;		  /* how its wait ended: "final", "changed", "timeout" */
	struct redis_command *rate_check; /* fleet mode: the client's bucket, asked (caller.c) */
	void (*rate_next)(struct exchange *ex, int client);
	int rate_client;
	const char *if_none_match; /* a status call's If-None-Match, NULL when none */
	int must_close;		   /* the bytes after this request cannot be trusted */
	int http10;		   /* an HTTP/1.0 client: no chunked framing */
	int head;		   /* HEAD: the reply has no body */
	int input_capped;	   /* listeners_cap_input is on */
	enum evhttp_cmd_type method_type;
	const char *end_note; /* why it ended, when not the usual way */
	/* watch.c */
	struct event *client_watch; /* notices a client leaving while we wait */
	struct evbuffer *output;    /* a download's: watched for progress */
	struct evbuffer_cb_entry *output_watch;
	struct event *stall_check; /* a download's client that takes nothing */
	struct event *closer;	   /* closes a cut download once its bytes are out */
	int64_t last_progress_ms;
	uint64_t drained;      /* bytes that left the output buffer for the socket */
	uint64_t drained_seen; /* as the stall check last saw them */
	int unsent_seen;       /* the socket's send queue, as the stall check last saw it */
	/* the access log's */
	struct timespec start;
	int status;
	size_t bytes;
	long upstream_status;
	const char *cache_result; /* X-Cache value, NULL when none */
	const char *method;	  /* a static name ("GET"), for the access log */
	/*
	 * Kept only while the access log is on (exchange_log_field), and not zeroed
	 * with the rest (two thirds of the struct): empty strings and AF_UNSPEC.
	 */
	struct sockaddr_storage peer;
	char export_id[QUERY_MAX_ID_BYTES + 1];
	char client[64];
	char credential[64];
};

/* server.c: replies. Each sets ex->status; ex moves to EXCHANGE_REPLIED. */

/* A whole reply; body (may be NULL) stays the caller's, emptied unless for HEAD. */
void exchange_reply(struct exchange *ex, int status, const char *content_type,
		    struct evbuffer *body);
/* A whole reply of length bytes at data (copied). */
void exchange_reply_data(struct exchange *ex, int status, const char *content_type,
			 const void *data, size_t length);
/* {"error":code,"message":message} with status. */
void exchange_reply_error(struct exchange *ex, int status, const char *code, const char *message);
/*
 * A status answer from the cache, with its X-Cache, Cache-Status, Age,
 * Cache-Control, and an ETag on a 200.
 */
void exchange_reply_answer(struct exchange *ex, const struct cache_answer *answer);
/* 304 for answer, whose body the client has: the same headers, no body. */
void exchange_reply_not_modified(struct exchange *ex, const struct cache_answer *answer);
/*
 * The reply that goes out next is the connection's last (Connection: close; the
 * socket lingers for what the client still sends).
 */
void exchange_close_after_reply(struct exchange *ex);
/*
 * Keeps text for the access log in field (one of ex's), as printable ASCII with
 * the rest as '?' (it may be the client's); nothing when the log is off.
 */
void exchange_log_field(struct exchange *ex, char *field, size_t cap, const char *text);

/* export_status.c: GET|HEAD /export_status, checks passed. */
void export_status_handle(struct exchange *ex);
/*
 * A request that asked to wait, whose answer now is answer: 1 when it is held
 * (its reply comes later), 0 when it is to be answered now.
 */
int export_status_hold(struct exchange *ex, const struct cache_answer *answer);
/* The exchange ends: its hold (if any) is dropped. */
void export_status_detach(struct exchange *ex);

/* export_data.c: POST /export_data, checks passed. */
void export_data_handle(struct exchange *ex);
/* The exchange ends: its export call goes on, answering no one. */
void export_data_detach(struct exchange *ex);
/* Frees what is left of calls the upstream cancelled (after upstream_free). */
void export_data_free_all(struct server *server);

/* download.c */

/* download=true for credential and q: a slot, the relay, the reply. */
void download_start(struct exchange *ex, const struct conf_credential *credential,
		    const struct query *q);
/* Gives back the exchange's max_downloads slot, if it holds one. */
void download_release(struct exchange *ex);
/* Body bytes handed to evhttp so far (some may still be queued). */
uint64_t download_bytes_handed(const struct exchange *ex);
/* Frees the exchange's relay or fan-out client (the exchange ends, or retries). */
void download_free(struct exchange *ex);

/* watch.c */

/*
 * Watches the client while nothing is written to it (a status call waiting, a
 * download before its head): a close or a reset frees the connection at once.
 */
void watch_client_start(struct exchange *ex);
void watch_client_stop(struct exchange *ex);
/*
 * A download's progress: evhttp's timeouts off, the client cut after
 * client_timeout without progress, and (once ex is EXCHANGE_CUTTING) the
 * connection closed as soon as its queue is written. -1 when it cannot watch.
 */
MUST_CHECK int watch_progress_start(struct exchange *ex);
void watch_progress_stop(struct exchange *ex);
/* A cut download: close as soon as what is queued is out (maybe right away). */
void watch_close_when_flushed(struct exchange *ex);
/* Bytes queued for the client in the connection's output buffer. */
size_t watch_queued(const struct exchange *ex);

#endif
