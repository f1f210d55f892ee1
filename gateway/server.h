/*
 * server.h -- the HTTP side: evhttp on every listen address, routing, request
 * validation, the answers clients get, the access log, drain on shutdown and
 * config reload. Upstream transport lives in upstream.c, decisions on who may
 * call in auth.c.
 */
#ifndef GATEWAY_SERVER_H
#define GATEWAY_SERVER_H

#include "attributes.h"

struct event_base;
struct conf;
struct server;

/*
 * Binds every listener of conf and starts serving on base. On success the server
 * owns conf; on failure (logged) returns NULL and the caller still owns conf.
 */
MUST_CHECK struct server *server_new(struct event_base *base, struct conf *conf);

/* Closes everything at once, in-flight requests included. NULL is allowed. */
void server_free(struct server *server);

/*
 * Applies a new config: listeners whose text did not change keep their socket,
 * new ones are bound first, so a bind failure leaves the old config in force.
 * Returns 0 and owns new_conf, or -1 (logged) and the caller still owns it.
 */
MUST_CHECK int server_reload(struct server *server, struct conf *new_conf);

/*
 * Stops accepting (listeners closed at once), answers the requests in flight
 * with "Connection: close", and calls drained(arg) once none is left; possibly
 * right away, always from the event loop, never from inside this call.
 */
void server_drain(struct server *server, void (*drained)(void *arg), void *arg);

#endif
