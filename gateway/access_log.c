/*
 * access_log.c -- a byte queue between the loop and one writer thread. The loop
 * appends under a mutex (a memcpy); the writer swaps the queue for an empty one
 * and writes it out, at most PIPE_BUF bytes at a time cut at line ends, so lines
 * on a shared pipe (stderr under systemd) are never interleaved with others.
 */
#include "access_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

struct access_log {
	int fd;
	int json;  /* JSON lines */
	int owned; /* ours to close (not stderr) */
	pthread_t writer;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	char *queue; /* ACCESS_LOG_BUFFER_BYTES; lines waiting */
	size_t queued;
	int stopping;
	int write_failed; /* reported once */
};

/* Writes all of data, a line-ended piece of at most PIPE_BUF at a time. */
static int write_lines(int fd, const char *data, size_t length)
{
	while (length > 0) {
		size_t piece = length;
		ssize_t n;

		if (piece > PIPE_BUF) {
			const char *end = memrchr(data, '\n', PIPE_BUF);

			piece = end != NULL ? (size_t)(end - data) + 1 : PIPE_BUF;
		}
		n = write(fd, data, piece);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		data += n;
		length -= (size_t)n;
	}
	return 0;
}

static void *writer_main(void *arg)
{
	struct access_log *log = arg;
	char *batch = malloc(ACCESS_LOG_BUFFER_BYTES);
	int stopping = 0, failed;

	/* cancellable only inside write(), never holding the lock */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	if (batch == NULL)
		return NULL;
	pthread_cleanup_push(free, batch);
	while (!stopping) {
		struct timespec until;
		size_t length;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += ACCESS_LOG_FLUSH_MS / 1000;
		pthread_mutex_lock(&log->lock);
		while (log->queued == 0 && !log->stopping &&
		       pthread_cond_timedwait(&log->wake, &log->lock, &until) == 0)
			;
		length = log->queued;
		memcpy(batch, log->queue, length);
		log->queued = 0;
		stopping = log->stopping;
		pthread_mutex_unlock(&log->lock);
		/* written outside the lock: the loop goes on appending meanwhile */
		if (length == 0)
			continue;
		pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
		failed = write_lines(log->fd, batch, length) < 0;
		pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
		if (failed && !log->write_failed) {
			log->write_failed = 1;
			log_warn("access log: write failed: %s; lines are lost", strerror(errno));
		}
	}
	pthread_cleanup_pop(1);
	return NULL;
}

int access_log_open(const char *target, int json, struct access_log **out)
{
	struct access_log *log;

	*out = NULL;
	if (strcmp(target, "off") == 0)
		return 0;
	log = calloc(1, sizeof(*log));
	if (log == NULL || (log->queue = malloc(ACCESS_LOG_BUFFER_BYTES)) == NULL)
		goto fail;
	log->json = json;
	if (strcmp(target, "-") == 0) {
		log->fd = STDERR_FILENO;
	} else {
		log->fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (log->fd < 0) {
			log_error("access_log: cannot open %s: %s", target, strerror(errno));
			goto fail;
		}
		log->owned = 1;
	}
	if (pthread_mutex_init(&log->lock, NULL) != 0)
		goto fail;
	if (pthread_cond_init(&log->wake, NULL) != 0) {
		pthread_mutex_destroy(&log->lock);
		goto fail;
	}
	if (pthread_create(&log->writer, NULL, writer_main, log) != 0) {
		log_error("access_log: cannot start the writer thread");
		pthread_cond_destroy(&log->wake);
		pthread_mutex_destroy(&log->lock);
		goto fail;
	}
	*out = log;
	return 0;
fail:
	if (log != NULL && log->owned)
		close(log->fd);
	if (log != NULL)
		free(log->queue);
	free(log);
	return -1;
}

void access_log_append(struct access_log *log, const char *line, size_t length)
{
	int dropped = 0;

	if (log == NULL)
		return;
	pthread_mutex_lock(&log->lock);
	if (log->queued + length <= ACCESS_LOG_BUFFER_BYTES) {
		memcpy(log->queue + log->queued, line, length);
		log->queued += length;
		if (log->queued >= ACCESS_LOG_BUFFER_BYTES / 4)
			pthread_cond_signal(&log->wake);
	} else {
		dropped = 1;
	}
	pthread_mutex_unlock(&log->lock);
	if (dropped)
		metrics_access_log_dropped();
}

void access_log_close(struct access_log *log)
{
	struct timespec until;

	if (log == NULL)
		return;
	pthread_mutex_lock(&log->lock);
	log->stopping = 1;
	pthread_cond_signal(&log->wake);
	pthread_mutex_unlock(&log->lock);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ACCESS_LOG_FLUSH_MS / 1000;
	if (pthread_timedjoin_np(log->writer, NULL, &until) != 0) {
		/* stuck in write(), a cancellation point: nothing of it is needed any more */
		log_warn("access log: the writer is stuck; dropping what is queued");
		pthread_cancel(log->writer);
		pthread_join(log->writer, NULL);
	}
	pthread_cond_destroy(&log->wake);
	pthread_mutex_destroy(&log->lock);
	if (log->owned && close(log->fd) != 0)
		log_warn("access log: close: %s", strerror(errno));
	free(log->queue);
	free(log);
}

static void format_peer(const struct sockaddr_storage *peer, char *out, size_t cap)
{
	const void *address = NULL;

	if (peer->ss_family == AF_INET)
		address = &((const struct sockaddr_in *)(const void *)peer)->sin_addr;
	else if (peer->ss_family == AF_INET6)
		address = &((const struct sockaddr_in6 *)(const void *)peer)->sin6_addr;
	if (address == NULL || inet_ntop(peer->ss_family, address, out, (socklen_t)cap) == NULL)
		snprintf(out, cap, "?");
}

static const char *or_dash(const char *text)
{
	return text != NULL && text[0] != '\0' ? text : "-";
}

/* Appends text as a JSON string (quoted), or null; false when out of room. */
static int json_string(char *out, size_t cap, size_t *at, const char *text)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *c;

	if (text == NULL || text[0] == '\0') {
		if (*at + 4 >= cap)
			return 0;
		memcpy(out + *at, "null", 4);
		*at += 4;
		return 1;
	}
	if (*at + 1 >= cap)
		return 0;
	out[(*at)++] = '"';
	for (c = (const unsigned char *)text; *c != '\0'; c++) {
		if (*at + 7 >= cap)
			return 0;
		if (*c == '"' || *c == '\\') {
			out[(*at)++] = '\\';
			out[(*at)++] = (char)*c;
		} else if (*c < 0x20 || *c >= 0x7f) {
			/* any other byte as its Latin-1 code point: valid JSON for any input */
			memcpy(out + *at, "\\u00", 4);
			out[*at + 4] = hex[*c >> 4];
			out[*at + 5] = hex[*c & 15];
			*at += 6;
		} else {
			out[(*at)++] = (char)*c;
		}
	}
	out[(*at)++] = '"';
	return 1;
}

/* Appends printf output; false when out of room. */
static int json_raw(char *out, size_t cap, size_t *at, const char *format, ...)
	__attribute__((format(printf, 4, 5)));

static int json_raw(char *out, size_t cap, size_t *at, const char *format, ...)
{
	va_list args;
	int n;

	va_start(args, format);
	n = vsnprintf(out + *at, cap - *at, format, args);
	va_end(args);
	if (n < 0 || (size_t)n >= cap - *at)
		return 0;
	*at += (size_t)n;
	return 1;
}

static void now_utc(char *out, size_t cap)
{
	struct timespec now;
	struct tm tm;

	if (clock_gettime(CLOCK_REALTIME, &now) != 0 || gmtime_r(&now.tv_sec, &tm) == NULL ||
	    strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
		snprintf(out, cap, "?");
		return;
	}
	snprintf(out + strlen(out), cap - strlen(out), ".%03ldZ", now.tv_nsec / 1000000);
}

/* The entry as one JSON object and a newline; 0 when it does not fit in cap. */
static size_t json_line(const struct access_log_entry *entry, const char *peer, char *out,
			size_t cap)
{
	char time[40];
	size_t at = 0;
	int ok;

	now_utc(time, sizeof(time));
	ok = json_raw(out, cap, &at, "{\"time\":") && json_string(out, cap, &at, time) &&
	     json_raw(out, cap, &at, ",\"peer\":") && json_string(out, cap, &at, peer) &&
	     json_raw(out, cap, &at, ",\"client\":") && json_string(out, cap, &at, entry->client) &&
	     json_raw(out, cap, &at, ",\"credential\":") &&
	     json_string(out, cap, &at, entry->credential) &&
	     json_raw(out, cap, &at, ",\"method\":") && json_string(out, cap, &at, entry->method) &&
	     json_raw(out, cap, &at, ",\"path\":") && json_string(out, cap, &at, entry->path) &&
	     json_raw(out, cap, &at, ",\"route\":") && json_string(out, cap, &at, entry->route) &&
	     json_raw(out, cap, &at, ",\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.1f",
		      entry->status, entry->bytes, entry->ms) &&
	     json_raw(out, cap, &at, ",\"cache\":") && json_string(out, cap, &at, entry->cache) &&
	     (entry->upstream_status > 0
		      ? json_raw(out, cap, &at, ",\"upstream_status\":%ld", entry->upstream_status)
		      : json_raw(out, cap, &at, ",\"upstream_status\":null")) &&
	     json_raw(out, cap, &at, ",\"export_id\":") &&
	     json_string(out, cap, &at, entry->export_id) &&
	     json_raw(out, cap, &at, ",\"wait\":") && json_string(out, cap, &at, entry->wait) &&
	     json_raw(out, cap, &at, ",\"fanout\":") &&
	     json_string(out, cap, &at, entry->joined ? "joined" : NULL) &&
	     json_raw(out, cap, &at, ",\"outcome\":") &&
	     json_string(out, cap, &at, entry->outcome) && json_raw(out, cap, &at, "}\n");
	return ok ? at : 0;
}

void access_log_request(struct access_log *log, const struct access_log_entry *entry)
{
	char peer[INET6_ADDRSTRLEN], line[2048];
	int length;

	if (log == NULL)
		return;
	format_peer(entry->peer, peer, sizeof(peer));
	if (log->json) {
		size_t n = json_line(entry, peer, line, sizeof(line));

		/* fields are bounded (LOG_PATH_MAX and the like): a line that does not fit
		 * is not written half, which would not be JSON */
		if (n > 0)
			access_log_append(log, line, n);
		else
			metrics_access_log_dropped();
		return;
	}
	length = snprintf(line, sizeof(line),
			  "%s client=%s credential=%s \"%s %s\" %d %zu %.1fms cache=%s "
			  "upstream=%ld export=%s%s%s%s%s%s\n",
			  peer, or_dash(entry->client), or_dash(entry->credential), entry->method,
			  entry->path, entry->status, entry->bytes, entry->ms,
			  or_dash(entry->cache), entry->upstream_status, or_dash(entry->export_id),
			  entry->wait ? " wait=" : "", entry->wait ? entry->wait : "",
			  entry->joined ? " joined" : "", entry->outcome ? " " : "",
			  entry->outcome ? entry->outcome : "");
	if (length <= 0)
		return;
	if ((size_t)length >= sizeof(line)) {
		length = sizeof(line) - 1;
		line[length - 1] = '\n';
	}
	access_log_append(log, line, (size_t)length);
}
