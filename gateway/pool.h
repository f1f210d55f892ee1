/*
 * pool.h -- the upstream connections: two libcurl multi handles (status calls,
 * downloads) driven by the gateway's libevent loop, after curl's hiperfifo.c,
 * and the connections they keep for reuse. An idle pooled connection is shut
 * down when anything arrives on it or after the keep-alive time, so no call is
 * ever answered with bytes another call's upstream left behind. It knows
 * sockets and transfers, not what a transfer is for: that is upstream.c's.
 */
#ifndef GATEWAY_POOL_H
#define GATEWAY_POOL_H

#include "attributes.h"

#include <stdint.h>

#include <curl/curl.h>
#include <openssl/ssl.h>

struct event_base;
struct pools;

enum pool_kind {
	POOL_STATUS,   /* status calls: at most upstream_max_connections at once */
	POOL_DOWNLOAD, /* downloads: at most max_downloads */
	POOL_COUNT,
};

struct pools_handlers {
	/* A transfer of easy finished with code; it is still in its multi handle. */
	void (*done)(CURL *easy, CURLcode code, void *arg);
	/* libcurl now waits on fd for easy, or (CURL_SOCKET_BAD) on nothing. */
	void (*socket)(CURL *easy, curl_socket_t fd, void *arg);
};

/* Both multi handles on base. NULL (logged) on failure. */
MUST_CHECK struct pools *pools_new(struct event_base *base, const struct pools_handlers *handlers,
				   void *arg);

/* Closes every pooled connection and frees; transfers must be removed first. */
void pools_free(struct pools *pools);

/* Connections at once per pool (more transfers queue), and the keep-alive time. */
void pools_set_limits(struct pools *pools, long status_connections, long download_connections,
		      int64_t keepalive_ms);

CURLM *pools_multi(struct pools *pools, enum pool_kind kind);

/* Sets the options of easy the pools rely on (socket close, pre-request check). */
MUST_CHECK int pools_prepare(struct pools *pools, CURL *easy);

/* Runs libcurl for fd of kind's multi handle now (may finish transfers). */
void pools_action(struct pools *pools, enum pool_kind kind, curl_socket_t fd, int flags);

/*
 * easy's transfer ended cleanly: if libcurl kept its connection, it is idle
 * now, or shut down at once when bytes already wait behind the answer (ssl is
 * the connection's as seen while the transfer was attached, or NULL).
 */
void pools_transfer_done(struct pools *pools, CURL *easy, SSL *ssl);

#endif
