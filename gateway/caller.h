/*
 * caller.h -- who is calling, for the API routes: the client's token (401),
 * its rate (429) and its scopes (403), answered as design.md orders them. The
 * decisions are auth.c's; these turn them into the client's answer.
 */
#ifndef GATEWAY_CALLER_H
#define GATEWAY_CALLER_H

#include "attributes.h"

struct exchange;

/* What comes after the rate check when it needed a Redis round trip. */
typedef void (*caller_next_cb)(struct exchange *ex, int client);

/*
 * The client making ex, by its token, and one request taken from its rate:
 * 0 with *client its index (-1 without [client] sections), or -1 when ex was
 * answered (401, or 429 with Retry-After). In fleet mode the rate is the
 * fleet's (one bucket per client in Redis): 1 then, and later either next
 * (ex, client) is called or ex is answered 429 (Redis trouble: the local
 * bucket decides).
 */
MUST_CHECK int caller_identify(struct exchange *ex, int *client, caller_next_cb next);
/* ex is going away: a rate check in flight is dropped. */
void caller_detach(struct exchange *ex);

/* 0 when client has scope (enum conf_scope), else -1 with ex answered 403. */
MUST_CHECK int caller_may(struct exchange *ex, int client, unsigned scope);

#endif
