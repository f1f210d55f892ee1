/*
 * access_log.h -- the access log: one line per request, handed to a writer
 * thread so a slow disk or a pipe nobody reads (journald stuck, a full FIFO)
 * never stalls the event loop. What the request line is made of is the
 * server's; this module only moves finished lines to their file.
 */
#ifndef GATEWAY_ACCESS_LOG_H
#define GATEWAY_ACCESS_LOG_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Lines waiting for the writer, at most; beyond it new lines are dropped and counted. */
#define ACCESS_LOG_BUFFER_BYTES (1024 * 1024)
/* The writer writes at least this often (lines reach the file within it). */
#define ACCESS_LOG_FLUSH_MS 1000

struct access_log;

/*
 * target is "-" (stderr), "off" or a path (opened for appending, created 0640);
 * json: lines are JSON objects (access_log_format = json), else text.
 * Returns 0 with *log set (NULL for "off"), or -1 (logged) when the file cannot
 * be opened or the writer thread cannot start.
 */
MUST_CHECK int access_log_open(const char *target, int json, struct access_log **log);

/*
 * Writes what is queued and stops the writer: waits up to ACCESS_LOG_FLUSH_MS for
 * it, then gives up on the rest (a writer stuck on a full pipe is cancelled).
 * NULL is allowed.
 */
void access_log_close(struct access_log *log);

/* Queues one line (its newline included). Never blocks on I/O. NULL: off. */
void access_log_append(struct access_log *log, const char *line, size_t length);

/* One request, as the access log tells it. Strings are printable already. */
struct access_log_entry {
	const struct sockaddr_storage *peer;
	const char *client;	/* "" when none */
	const char *credential; /* "" when none */
	const char *method;
	const char *path;  /* never the query string */
	const char *route; /* the endpoint, as the metrics name it */
	int status;
	size_t bytes;
	double ms;
	const char *cache; /* X-Cache, or NULL */
	long upstream_status;
	const char *export_id; /* "" when none */
	const char *wait;      /* how a wait= hold ended ("final", ...), or NULL */
	int joined;	       /* a download that shared another's transfer */
	const char *outcome;   /* who ended it when not the usual way, or NULL */
};

/*
 * Queues the entry's line. Text: 'PEER client=C credential=K "METHOD PATH" STATUS
 * BYTES MSms cache=X upstream=U export=ID[ wait=W][ joined][ OUTCOME]'. JSON: one
 * object with the same fields plus "time" (UTC, ms) and "route"; absent values
 * are null, every string escaped (valid JSON whatever the bytes). NULL log: off.
 */
void access_log_request(struct access_log *log, const struct access_log_entry *entry);

#endif
