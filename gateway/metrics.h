/*
 * metrics.h -- the process's counters, rendered in Prometheus text format for
 * GET /metrics. One event loop, so plain counters; every family is rendered
 * from start-up on, at zero. Nothing secret is ever a label.
 */
#ifndef GATEWAY_METRICS_H
#define GATEWAY_METRICS_H

#include <stdint.h>

#include "route.h"

struct evbuffer;

enum metrics_cache_result {
	METRICS_CACHE_HIT,
	METRICS_CACHE_MISS,
	METRICS_CACHE_COALESCED,
	METRICS_CACHE_STALE,
	METRICS_CACHE_RESULT_COUNT,
};

enum metrics_download_result {
	METRICS_DOWNLOAD_COMPLETE,
	METRICS_DOWNLOAD_ABORTED,
	METRICS_DOWNLOAD_FAILED,
	METRICS_DOWNLOAD_RESULT_COUNT,
};

enum metrics_wait_result {
	METRICS_WAIT_FINAL,   /* a final state (or an error) ended the wait */
	METRICS_WAIT_CHANGED, /* If-None-Match: another body ended it */
	METRICS_WAIT_TIMEOUT, /* the deadline (or a drain) ended it */
	METRICS_WAIT_RESULT_COUNT,
};

/* A request answered with code (100..599; 499 for a client that left). */
void metrics_request(enum route route, int code);
void metrics_cache(enum metrics_cache_result result);
/* An upstream call ended: code is its HTTP status, or 0 with timed_out or not. */
void metrics_upstream(int code, int timed_out, double seconds);
void metrics_download_started(void);
void metrics_download_finished(enum metrics_download_result result);
void metrics_download_bytes(uint64_t bytes);
/* A download joined a shared transfer (or a kept spool). */
void metrics_download_joined(void);
/* A shared transfer failed mid-body (once; its clients count as aborted). */
void metrics_download_transfer_failed(void);
/* Bytes in download spools now. */
void metrics_spool_bytes(uint64_t bytes);
void metrics_connection_opened(void);
void metrics_connection_closed(void);
void metrics_reload(int ok);
/* A request is held (wait=), and one is let go for result. */
void metrics_wait_started(void);
void metrics_wait_finished(enum metrics_wait_result result);
/* Fleet mode: Redis usable (1) or not (0); a Redis command that failed or timed out. */
void metrics_redis_up(int up);
void metrics_redis_error(void);
/* An access log line was dropped: its writer is behind by a whole buffer. */
void metrics_access_log_dropped(void);

/* Appends the whole exposition to out. 0, or -1 when out of memory. */
int metrics_render(struct evbuffer *out);

#endif
