/*
 * listeners.h -- where clients connect: an evhttp for plain HTTP and one for
 * TLS, a bound socket per listen line (kept across reloads when the line did not
 * change), accepting paused at max_connections and on EMFILE, a deadline for a
 * connection to send its request (slowloris), and every connection reported when
 * it opens and when it closes. Answering requests is the server's.
 */
#ifndef GATEWAY_LISTENERS_H
#define GATEWAY_LISTENERS_H

#include "attributes.h"

#include <stddef.h>

struct event_base;
struct evhttp_request;
struct evhttp_connection;
struct conf;
struct listeners;
struct listeners_connection; /* an open connection, as the listeners keep it */

struct listeners_callbacks {
	/* A complete request on an open connection; context is opened's. */
	void (*request)(struct evhttp_request *req, void *context, void *arg);
	/* A request on a connection accepted without the gateway's bufferevent, or
	 * whose opened returned NULL (out of memory then): not watched or limited,
	 * so it is to be refused and closed. */
	void (*unserved)(struct evhttp_request *req, void *arg);
	/* A connection was accepted; returns its context (NULL: its requests are refused). The
	 * handle is for listeners_idle, valid until closed. */
	void *(*opened)(struct evhttp_connection *evcon, struct listeners_connection *handle,
			void *arg);
	/* evhttp is freeing the connection; context is opened's. */
	void (*closed)(struct evhttp_connection *evcon, void *context, void *arg);
};

/* Nothing bound yet: listeners_apply does that. NULL (logged) on failure. */
struct listeners *listeners_new(struct event_base *base,
				const struct listeners_callbacks *callbacks, void *arg);

/* Closes every socket and connection (closed fires for each) and frees. */
void listeners_free(struct listeners *listeners);

/*
 * Makes the listen lines, TLS certificate and limits of conf the ones in force.
 * Unchanged lines keep their sockets; new ones are bound (and the TLS files read)
 * before anything changes, so on failure (logged, -1) the old set stays.
 */
MUST_CHECK int listeners_apply(struct listeners *listeners, const struct conf *conf);

/* Stops accepting for good (shutdown); open connections stay. */
void listeners_close(struct listeners *listeners);

/*
 * A request on handle's connection was answered and it stays open: its request deadline
 * restarts, and with restore_timeouts so does the socket's write timeout
 * (the server turns them off while a download streams).
 */
void listeners_idle(struct listeners *listeners, struct listeners_connection *handle,
		    int restore_timeouts);

/*
 * For a request not answered in its dispatch turn, from then to its end (capped
 * 1, then 0): what the client sends meanwhile is buffered up to a bound, then
 * no longer read, since evhttp keeps reading while it streams an answer (to see
 * a close) and nobody takes those bytes. evcon may be NULL (gone).
 */
void listeners_cap_input(struct evhttp_connection *evcon, int capped);

/*
 * For an answer given in the turn its request came: evcon is not read until
 * evhttp has written it (evhttp reads again for the next request). One
 * event_del, where the cap would cost two re-arms of the read event.
 */
void listeners_pause_input(struct evhttp_connection *evcon);

/*
 * evcon will be closed by us (after an error answer, or a cut download): when
 * it is, its socket is shut down for writing and the client's unread bytes are
 * read and dropped until it closes, so the kernel does not reset the answer.
 */
void listeners_linger(struct listeners *listeners, struct evhttp_connection *evcon);

#endif
