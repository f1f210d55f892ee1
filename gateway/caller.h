/*
 * caller.h -- who is calling, for the API routes: the client's token (401),
 * its rate (429) and its scopes (403), answered as design.md orders them. The
 * decisions are auth.c's; these turn them into the client's answer.
 */
#ifndef GATEWAY_CALLER_H
#define GATEWAY_CALLER_H

#include "attributes.h"

struct exchange;

/*
 * The client making ex, by its token, and one request taken from its rate:
 * 0 with *client its index (-1 without [client] sections), or -1 when ex was
 * answered (401, or 429 with Retry-After).
 */
MUST_CHECK int caller_identify(struct exchange *ex, int *client);

/* 0 when client has scope (enum conf_scope), else -1 with ex answered 403. */
MUST_CHECK int caller_may(struct exchange *ex, int client, unsigned scope);

#endif
