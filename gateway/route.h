/*
 * route.h -- the endpoints the gateway serves, as the router (checks.c), the
 * server and the metrics name them.
 */
#ifndef GATEWAY_ROUTE_H
#define GATEWAY_ROUTE_H

enum route {
	ROUTE_EXPORT_STATUS,
	ROUTE_EXPORT_DATA,
	ROUTE_HEALTHZ,
	ROUTE_READYZ,
	ROUTE_METRICS,
	ROUTE_OTHER, /* no such endpoint, or a target that is not routed at all */
	ROUTE_COUNT,
};

/* The route's name in metrics labels and the access log. */
static inline const char *route_name(enum route route)
{
	static const char *const names[ROUTE_COUNT] = {
		"export_status", "export_data", "healthz", "readyz", "metrics", "other",
	};

	return route >= 0 && route < ROUTE_COUNT ? names[route] : "other";
}

#endif
