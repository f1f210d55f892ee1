/*
 * clock.h -- the gateway's one notion of "now" for timers and TTLs: the
 * monotonic clock in milliseconds (never the wall clock, which jumps).
 */
#ifndef GATEWAY_CLOCK_H
#define GATEWAY_CLOCK_H

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in ms; coarse: CLOCK_MONOTONIC_COARSE (a few ms, cheaper). */
static inline int64_t clock_ms(int coarse)
{
	struct timespec now;

	clock_gettime(coarse ? CLOCK_MONOTONIC_COARSE : CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static inline int64_t now_ms(void)
{
	return clock_ms(0);
}

#endif
