/*
 * linger.h -- lingering close (nginx's lingering_close): closing a socket with
 * unread input makes the kernel answer with a reset, which can destroy an answer
 * before the client has read it. A socket closed after an error is instead kept
 * (through a duplicate), shut down for writing, and read and dropped until the
 * client closes, within bounds. Which connections linger is the listeners'.
 */
#ifndef GATEWAY_LINGER_H
#define GATEWAY_LINGER_H

#include "attributes.h"

struct event_base;
struct linger_set;

/* Drained for at most this long between reads, and this long in all (nginx: 5 s, 30 s). */
#define LINGER_IDLE_MS	2000
#define LINGER_TOTAL_MS 10000
/* At most this many sockets linger at once; beyond, a socket is closed as usual. */
#define LINGER_MAX 256

MUST_CHECK struct linger_set *linger_set_new(struct event_base *base);

/* Closes every lingering socket now and frees. NULL is allowed. */
void linger_set_free(struct linger_set *set);

/*
 * fd is about to be closed by its owner after the answer was written: keep the
 * socket open through a duplicate, send the FIN now, and drain what comes. The
 * owner still closes fd itself. Returns 0 when it lingers, -1 (nothing done)
 * when the set is full or fd is -1.
 */
int linger_start(struct linger_set *set, int fd);

#endif
