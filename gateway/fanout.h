/*
 * fanout.h -- download fan-out: concurrent downloads of one (user id, export
 * id) share one upstream transfer, written into an unnamed spool file
 * (O_TMPFILE in download_spool_dir) as fast as upstream sends it; each client
 * is sent from the spool (libevent file segments: sendfile on a plain socket)
 * at its own pace. A complete spool may be kept (download_cache_ttl) for later
 * downloads and Range requests of the same key. A client here is driven with
 * the relay's events (relay.h), so the server answers it the same way.
 */
#ifndef GATEWAY_FANOUT_H
#define GATEWAY_FANOUT_H

#include "attributes.h"

#include <stdint.h>

struct cache;
struct conf;
struct conf_credential;
struct event_base;
struct query;
struct relay_events;
struct relay_request;
struct upstream;

struct fanout;
struct fan_client;

MUST_CHECK struct fanout *fanout_new(struct event_base *base, struct upstream *upstream,
				     struct cache *cache, const struct conf *conf);
/* Aborts every transfer and closes every spool (no events fire). */
void fanout_free(struct fanout *fanout);
/* A reload: spool dir, bound and kept-spool TTL for what starts from now on. */
void fanout_set_conf(struct fanout *fanout, const struct conf *conf);

/*
 * The download for credential and q as a client of a shared transfer: one
 * running for the key (*joined = 1), a kept complete spool (*joined = 1; also
 * for a Range request, 206 from the spool), or a new transfer (*joined = 0).
 * Exactly one of events' answer, refused or ended fires later, never from
 * inside this call, as for relay_start. NULL when this download is not for
 * fan-out (HEAD, a Range without a complete spool, fan-out off, spools at
 * download_spool_max, no spool could be made): relay it instead.
 */
MUST_CHECK struct fan_client *fanout_join(struct fanout *fanout,
					  const struct conf_credential *credential,
					  const struct query *q,
					  const struct relay_request *request,
					  const struct relay_events *events, void *arg,
					  int *joined);

/* Everything queued for the client was written: more comes from the spool. */
void fan_client_drained(struct fan_client *client);

/* Body bytes handed to the server for this client so far. */
uint64_t fan_client_bytes_handed(const struct fan_client *client);

/* The client is done or gone (no event fires). The transfer's last client aborts it. */
void fan_client_free(struct fan_client *client);

#endif
