/*
 * access_log.c -- a byte queue between the loop and one writer thread. The loop
 * formats a line (plain appends, no printf) and appends it under a mutex (a
 * memcpy); the writer swaps the queue for its empty spare and writes it out: to a
 * regular file in one write(), to anything else (a pipe: stderr under systemd) at
 * most PIPE_BUF bytes at a time cut at line ends, so lines are never interleaved
 * with others'.
 */
#include "access_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

struct access_log {
	int fd;
	int json;  /* JSON lines */
	int owned; /* ours to close (not stderr) */
	int whole; /* a regular file: a batch goes in one write() */
	pthread_t writer;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	char *queue; /* ACCESS_LOG_BUFFER_BYTES; lines waiting */
	size_t queued;
	char *spare; /* ACCESS_LOG_BUFFER_BYTES; the writer's, swapped with queue */
	int stopping;
	int write_failed; /* reported once */
	/* the loop's: the current second as "time" shows it */
	time_t second;
	char second_text[32];
};

/* Writes all of data; unless whole, a line-ended piece of at most PIPE_BUF at a time. */
static int write_lines(int fd, int whole, const char *data, size_t length)
{
	while (length > 0) {
		size_t piece = length;
		ssize_t n;

		if (!whole && piece > PIPE_BUF) {
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

/*
 * Nothing to undo when the writer is cancelled in write(): the buffers are the
 * log's. The handler is there for how the thread unwinds: with a cleanup buffer,
 * glibc unwinds a C thread by longjmp, which ASan sees and unpoisons the stack
 * for; without one it is a forced unwind ASan does not see, and it reports the
 * stack's stale redzones when the cancelled thread exits (google/sanitizers#1399).
 */
static void writer_cancelled(void *arg)
{
	(void)arg;
}

static void *writer_main(void *arg)
{
	struct access_log *log = arg;
	int stopping = 0, failed;

	/* cancellable only inside write(), never holding the lock */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	pthread_cleanup_push(writer_cancelled, log);
	while (!stopping) {
		struct timespec until;
		char *batch;
		size_t length;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += ACCESS_LOG_FLUSH_MS / 1000;
		pthread_mutex_lock(&log->lock);
		while (log->queued == 0 && !log->stopping &&
		       pthread_cond_timedwait(&log->wake, &log->lock, &until) == 0)
			;
		length = log->queued;
		batch = log->queue;
		log->queue = log->spare;
		log->spare = batch;
		log->queued = 0;
		stopping = log->stopping;
		pthread_mutex_unlock(&log->lock);
		/* written outside the lock: the loop goes on appending meanwhile */
		if (length == 0)
			continue;
		pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
		failed = write_lines(log->fd, log->whole, batch, length) < 0;
		pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
		if (failed && !log->write_failed) {
			log->write_failed = 1;
			log_warn("access log: write failed: %s; lines are lost", strerror(errno));
		}
	}
	pthread_cleanup_pop(0);
	return NULL;
}

int access_log_open(const char *target, int json, struct access_log **out)
{
	struct access_log *log;
	struct stat st;

	*out = NULL;
	if (strcmp(target, "off") == 0)
		return 0;
	log = calloc(1, sizeof(*log));
	if (log == NULL || (log->queue = malloc(ACCESS_LOG_BUFFER_BYTES)) == NULL ||
	    (log->spare = malloc(ACCESS_LOG_BUFFER_BYTES)) == NULL)
		goto fail;
	log->json = json;
	log->second = (time_t)-1;
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
	log->whole = fstat(log->fd, &st) == 0 && S_ISREG(st.st_mode);
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
	if (log != NULL) {
		free(log->queue);
		free(log->spare);
	}
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
	free(log->spare);
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

/* A line being built: an append past cap fills it up to cap and sets full. */
struct line {
	char *out;
	size_t cap, at;
	int full;
};

static void put(struct line *l, const char *text, size_t length)
{
	if (length > l->cap - l->at) {
		length = l->cap - l->at;
		l->full = 1;
	}
	memcpy(l->out + l->at, text, length);
	l->at += length;
}

static void put_str(struct line *l, const char *text)
{
	put(l, text != NULL ? text : "-", text != NULL ? strlen(text) : 1);
}

static void put_number(struct line *l, unsigned long long value, int negative)
{
	char digits[24];
	size_t at = sizeof(digits);

	do {
		digits[--at] = (char)('0' + value % 10);
		value /= 10;
	} while (value > 0);
	if (negative)
		digits[--at] = '-';
	put(l, digits + at, sizeof(digits) - at);
}

static void put_long(struct line *l, long value)
{
	put_number(l, value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value,
		   value < 0);
}

/* Milliseconds with one decimal, as %.1f would (rounded half up; never negative). */
static void put_ms(struct line *l, double ms)
{
	unsigned long long tenths = ms > 0 ? (unsigned long long)(ms * 10 + 0.5) : 0;
	char decimal[2] = { '.', (char)('0' + tenths % 10) };

	put_number(l, tenths / 10, 0);
	put(l, decimal, sizeof(decimal));
}

/* text as a JSON string (quoted), or null when absent or empty. */
static void put_json_string(struct line *l, const char *text)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *c, *run;

	if (text == NULL || text[0] == '\0') {
		put(l, "null", 4);
		return;
	}
	put(l, "\"", 1);
	for (run = c = (const unsigned char *)text; *c != '\0'; c++) {
		char escape[6];

		if (*c >= 0x20 && *c < 0x7f && *c != '"' && *c != '\\')
			continue;
		put(l, (const char *)run, (size_t)(c - run));
		run = c + 1;
		if (*c == '"' || *c == '\\') {
			escape[0] = '\\';
			escape[1] = (char)*c;
			put(l, escape, 2);
		} else {
			/* any other byte as its Latin-1 code point: valid JSON for any input */
			memcpy(escape, "\\u00", 4);
			escape[4] = hex[*c >> 4];
			escape[5] = hex[*c & 15];
			put(l, escape, 6);
		}
	}
	put(l, (const char *)run, (size_t)(c - run));
	put(l, "\"", 1);
}

/* "time": UTC with milliseconds; the second's text is kept from line to line. */
static void put_time(struct access_log *log, struct line *l)
{
	struct timespec now;
	struct tm tm;
	char millis[7];
	long ms;

	if (clock_gettime(CLOCK_REALTIME, &now) != 0) {
		put(l, "\"?\"", 3);
		return;
	}
	if (now.tv_sec != log->second) {
		if (gmtime_r(&now.tv_sec, &tm) == NULL ||
		    strftime(log->second_text, sizeof(log->second_text), "%Y-%m-%dT%H:%M:%S",
			     &tm) == 0) {
			put(l, "\"?\"", 3);
			return;
		}
		log->second = now.tv_sec;
	}
	ms = now.tv_nsec / 1000000;
	millis[0] = '.';
	millis[1] = (char)('0' + ms / 100);
	millis[2] = (char)('0' + ms / 10 % 10);
	millis[3] = (char)('0' + ms % 10);
	millis[4] = 'Z';
	millis[5] = '"';
	put(l, "\"", 1);
	put_str(l, log->second_text);
	put(l, millis, 6);
}

#define PUT_LITERAL(l, text) put((l), (text), sizeof(text) - 1)

/* ,"NAME":VALUE, VALUE as a JSON string (or null). */
#define PUT_JSON_FIELD(l, name, value)                                                             \
	do {                                                                                       \
		PUT_LITERAL(l, ",\"" name "\":");                                                  \
		put_json_string(l, value);                                                         \
	} while (0)

/* The entry as one JSON object and a newline; full when it does not fit. */
static void json_line(struct access_log *log, const struct access_log_entry *entry,
		      const char *peer, struct line *l)
{
	PUT_LITERAL(l, "{\"time\":");
	put_time(log, l);
	PUT_JSON_FIELD(l, "peer", peer);
	PUT_JSON_FIELD(l, "client", entry->client);
	PUT_JSON_FIELD(l, "credential", entry->credential);
	PUT_JSON_FIELD(l, "method", entry->method);
	PUT_JSON_FIELD(l, "path", entry->path);
	PUT_JSON_FIELD(l, "route", entry->route);
	PUT_LITERAL(l, ",\"status\":");
	put_long(l, entry->status);
	PUT_LITERAL(l, ",\"bytes\":");
	put_number(l, entry->bytes, 0);
	PUT_LITERAL(l, ",\"duration_ms\":");
	put_ms(l, entry->ms);
	PUT_JSON_FIELD(l, "cache", entry->cache);
	PUT_LITERAL(l, ",\"upstream_status\":");
	if (entry->upstream_status > 0)
		put_long(l, entry->upstream_status);
	else
		PUT_LITERAL(l, "null");
	PUT_JSON_FIELD(l, "export_id", entry->export_id);
	PUT_JSON_FIELD(l, "wait", entry->wait);
	PUT_JSON_FIELD(l, "fanout", entry->joined ? "joined" : NULL);
	PUT_JSON_FIELD(l, "outcome", entry->outcome);
	PUT_LITERAL(l, "}\n");
}

static const char *or_dash(const char *text)
{
	return text != NULL && text[0] != '\0' ? text : "-";
}

/* 'PEER client=C credential=K "METHOD PATH" STATUS BYTES MSms cache=X upstream=U
 * export=ID[ wait=W][ joined][ OUTCOME]' and a newline; full when cut short. */
static void text_line(const struct access_log_entry *entry, const char *peer, struct line *l)
{
	put_str(l, peer);
	PUT_LITERAL(l, " client=");
	put_str(l, or_dash(entry->client));
	PUT_LITERAL(l, " credential=");
	put_str(l, or_dash(entry->credential));
	PUT_LITERAL(l, " \"");
	put_str(l, entry->method);
	PUT_LITERAL(l, " ");
	put_str(l, entry->path);
	PUT_LITERAL(l, "\" ");
	put_long(l, entry->status);
	PUT_LITERAL(l, " ");
	put_number(l, entry->bytes, 0);
	PUT_LITERAL(l, " ");
	put_ms(l, entry->ms);
	PUT_LITERAL(l, "ms cache=");
	put_str(l, or_dash(entry->cache));
	PUT_LITERAL(l, " upstream=");
	put_long(l, entry->upstream_status);
	PUT_LITERAL(l, " export=");
	put_str(l, or_dash(entry->export_id));
	if (entry->wait != NULL) {
		PUT_LITERAL(l, " wait=");
		put_str(l, entry->wait);
	}
	if (entry->joined)
		PUT_LITERAL(l, " joined");
	if (entry->outcome != NULL) {
		PUT_LITERAL(l, " ");
		put_str(l, entry->outcome);
	}
	PUT_LITERAL(l, "\n");
}

void access_log_request(struct access_log *log, const struct access_log_entry *entry)
{
	char peer[INET6_ADDRSTRLEN], out[2048];
	struct line l = { .out = out, .cap = sizeof(out) };

	if (log == NULL)
		return;
	format_peer(entry->peer, peer, sizeof(peer));
	if (log->json) {
		json_line(log, entry, peer, &l);
		/* fields are bounded (LOG_PATH_MAX and the like): a line that does not fit
		 * is not written half, which would not be JSON */
		if (l.full)
			metrics_access_log_dropped();
		else
			access_log_append(log, out, l.at);
		return;
	}
	text_line(entry, peer, &l);
	if (l.full) /* a text line is cut rather than lost */
		out[l.at - 1] = '\n';
	access_log_append(log, out, l.at);
}
