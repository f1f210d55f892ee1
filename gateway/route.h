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
	ROUTE_METRICS,
	ROUTE_OTHER, /* no such endpoint, or a target that is not routed at all */
	ROUTE_COUNT,
};

#endif
