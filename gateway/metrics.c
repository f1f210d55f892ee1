/*
 * metrics.c -- counters and one histogram, kept in a static table (the gateway
 * runs one event loop), rendered as Prometheus text. Labels come from fixed sets
 * or status codes, never from client input or configuration values.
 */
#include "metrics.h"

#include <stdio.h>

#include <event2/buffer.h>

#define CODES 600

static const double upstream_buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
					   0.5,	  1,	2.5,   5,    10,  30 };
#define BUCKET_COUNT (sizeof(upstream_buckets) / sizeof(upstream_buckets[0]))

static struct {
	uint64_t requests[ROUTE_COUNT][CODES];
	uint64_t cache[METRICS_CACHE_RESULT_COUNT];
	uint64_t upstream_codes[CODES];
	uint64_t upstream_errors;
	uint64_t upstream_timeouts;
	uint64_t upstream_buckets[BUCKET_COUNT]; /* not cumulative; summed when rendered */
	uint64_t upstream_count;
	double upstream_sum;
	int64_t downloads_active;
	uint64_t downloads[METRICS_DOWNLOAD_RESULT_COUNT];
	uint64_t download_bytes;
	int64_t connections_open;
	uint64_t reloads_ok;
	uint64_t reloads_failed;
	uint64_t access_log_dropped;
	int64_t waiting;
	uint64_t downloads_joined;
	uint64_t spool_bytes;
	uint64_t waits[METRICS_WAIT_RESULT_COUNT];
	int redis_up;
	uint64_t redis_errors;
} counters;

static const char *const cache_names[METRICS_CACHE_RESULT_COUNT] = {
	"hit",
	"miss",
	"coalesced",
	"stale",
};
static const char *const wait_names[METRICS_WAIT_RESULT_COUNT] = {
	"final",
	"changed",
	"timeout",
};
static const char *const download_names[METRICS_DOWNLOAD_RESULT_COUNT] = {
	"complete",
	"aborted",
	"failed",
};

void metrics_request(enum route route, int code)
{
	if (route < ROUTE_COUNT && code >= 100 && code < CODES)
		counters.requests[route][code]++;
}

void metrics_cache(enum metrics_cache_result result)
{
	if (result < METRICS_CACHE_RESULT_COUNT)
		counters.cache[result]++;
}

void metrics_upstream(int code, int timed_out, double seconds)
{
	size_t i;

	if (code >= 100 && code < CODES)
		counters.upstream_codes[code]++;
	else if (timed_out)
		counters.upstream_timeouts++;
	else
		counters.upstream_errors++;
	for (i = 0; i < BUCKET_COUNT && seconds > upstream_buckets[i]; i++)
		;
	if (i < BUCKET_COUNT)
		counters.upstream_buckets[i]++;
	counters.upstream_count++;
	counters.upstream_sum += seconds;
}

void metrics_wait_started(void)
{
	counters.waiting++;
}

void metrics_wait_finished(enum metrics_wait_result result)
{
	counters.waiting--;
	if (result < METRICS_WAIT_RESULT_COUNT)
		counters.waits[result]++;
}

void metrics_download_joined(void)
{
	counters.downloads_joined++;
}

void metrics_download_transfer_failed(void)
{
	counters.downloads[METRICS_DOWNLOAD_FAILED]++;
}

void metrics_spool_bytes(uint64_t bytes)
{
	counters.spool_bytes = bytes;
}

void metrics_redis_up(int up)
{
	counters.redis_up = up;
}

void metrics_redis_error(void)
{
	counters.redis_errors++;
}

void metrics_download_started(void)
{
	counters.downloads_active++;
}

void metrics_download_finished(enum metrics_download_result result)
{
	counters.downloads_active--;
	if (result < METRICS_DOWNLOAD_RESULT_COUNT)
		counters.downloads[result]++;
}

void metrics_download_bytes(uint64_t bytes)
{
	counters.download_bytes += bytes;
}

void metrics_connection_opened(void)
{
	counters.connections_open++;
}

void metrics_connection_closed(void)
{
	counters.connections_open--;
}

void metrics_reload(int ok)
{
	if (ok)
		counters.reloads_ok++;
	else
		counters.reloads_failed++;
}

void metrics_access_log_dropped(void)
{
	counters.access_log_dropped++;
}

static int family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
	return evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int render_requests(struct evbuffer *out)
{
	int failed = family(out, "gumloop_gateway_requests_total", "counter",
			    "Requests answered, by route and status code (499: client left).") < 0;

	for (int route = 0; route < ROUTE_COUNT; route++) {
		for (int code = 100; code < CODES; code++) {
			if (counters.requests[route][code] == 0)
				continue;
			failed |= evbuffer_add_printf(
					  out,
					  "gumloop_gateway_requests_total{route=\"%s\",code=\"%d\"}"
					  " %llu\n",
					  route_name((enum route)route), code,
					  (unsigned long long)counters.requests[route][code]) < 0;
		}
	}
	return failed ? -1 : 0;
}

static int render_cache(struct evbuffer *out)
{
	int failed = family(out, "gumloop_gateway_cache_total", "counter",
			    "Status answers by cache result.") < 0;

	for (int i = 0; i < METRICS_CACHE_RESULT_COUNT; i++)
		failed |= evbuffer_add_printf(
				  out, "gumloop_gateway_cache_total{result=\"%s\"} %llu\n",
				  cache_names[i], (unsigned long long)counters.cache[i]) < 0;
	return failed ? -1 : 0;
}

static int render_upstream(struct evbuffer *out)
{
	uint64_t cumulative = 0;
	int failed = family(out, "gumloop_gateway_upstream_requests_total", "counter",
			    "Upstream calls by HTTP status, or error/timeout.") < 0;

	for (int code = 100; code < CODES; code++) {
		if (counters.upstream_codes[code] != 0)
			failed |= evbuffer_add_printf(
					  out,
					  "gumloop_gateway_upstream_requests_total{code=\"%d\"} "
					  "%llu\n",
					  code,
					  (unsigned long long)counters.upstream_codes[code]) < 0;
	}
	failed |= evbuffer_add_printf(
			  out,
			  "gumloop_gateway_upstream_requests_total{code=\"error\"} %llu\n"
			  "gumloop_gateway_upstream_requests_total{code=\"timeout\"} %llu\n",
			  (unsigned long long)counters.upstream_errors,
			  (unsigned long long)counters.upstream_timeouts) < 0;
	failed |= family(out, "gumloop_gateway_upstream_duration_seconds", "histogram",
			 "Time of upstream calls, until the whole answer arrived.") < 0;
	for (size_t i = 0; i < BUCKET_COUNT; i++) {
		cumulative += counters.upstream_buckets[i];
		failed |= evbuffer_add_printf(out,
					      "gumloop_gateway_upstream_duration_seconds_bucket{le="
					      "\"%g\"} %llu\n",
					      upstream_buckets[i],
					      (unsigned long long)cumulative) < 0;
	}
	failed |= evbuffer_add_printf(
			  out,
			  "gumloop_gateway_upstream_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
			  "gumloop_gateway_upstream_duration_seconds_sum %.6f\n"
			  "gumloop_gateway_upstream_duration_seconds_count %llu\n",
			  (unsigned long long)counters.upstream_count, counters.upstream_sum,
			  (unsigned long long)counters.upstream_count) < 0;
	return failed ? -1 : 0;
}

static int render_downloads_and_process(struct evbuffer *out)
{
	int failed = family(out, "gumloop_gateway_downloads_active", "gauge",
			    "CSV downloads being relayed now.") < 0;

	failed |= evbuffer_add_printf(out, "gumloop_gateway_downloads_active %lld\n",
				      (long long)counters.downloads_active) < 0;
	failed |= family(out, "gumloop_gateway_downloads_total", "counter",
			 "CSV downloads by how they ended.") < 0;
	for (int i = 0; i < METRICS_DOWNLOAD_RESULT_COUNT; i++)
		failed |= evbuffer_add_printf(
				  out, "gumloop_gateway_downloads_total{result=\"%s\"} %llu\n",
				  download_names[i], (unsigned long long)counters.downloads[i]) < 0;
	failed |= evbuffer_add_printf(out,
				      "gumloop_gateway_downloads_total{result=\"joined\"} %llu\n",
				      (unsigned long long)counters.downloads_joined) < 0;
	failed |= family(out, "gumloop_gateway_spool_bytes", "gauge",
			 "Bytes in download spools (fan-out) now.") < 0;
	failed |= evbuffer_add_printf(out, "gumloop_gateway_spool_bytes %llu\n",
				      (unsigned long long)counters.spool_bytes) < 0;
	failed |= family(out, "gumloop_gateway_redis_up", "gauge",
			 "Fleet mode: 1 while Redis answers, 0 while this gateway runs alone.") < 0;
	failed |= evbuffer_add_printf(out, "gumloop_gateway_redis_up %d\n", counters.redis_up) < 0;
	failed |= family(out, "gumloop_gateway_redis_errors_total", "counter",
			 "Fleet mode: Redis commands that failed, were refused or timed out.") < 0;
	failed |= evbuffer_add_printf(out, "gumloop_gateway_redis_errors_total %llu\n",
				      (unsigned long long)counters.redis_errors) < 0;
	failed |= family(out, "gumloop_gateway_download_bytes_total", "counter",
			 "CSV bytes relayed to clients.") < 0;
	failed |= evbuffer_add_printf(out, "gumloop_gateway_download_bytes_total %llu\n",
				      (unsigned long long)counters.download_bytes) < 0;
	failed |= family(out, "gumloop_gateway_connections_open", "gauge",
			 "Client connections open now.") < 0;
	failed |= evbuffer_add_printf(out, "gumloop_gateway_connections_open %lld\n",
				      (long long)counters.connections_open) < 0;
	failed |= family(out, "gumloop_gateway_config_reloads_total", "counter",
			 "SIGHUP reloads by result.") < 0;
	failed |= evbuffer_add_printf(
			  out,
			  "gumloop_gateway_config_reloads_total{result=\"ok\"} %llu\n"
			  "gumloop_gateway_config_reloads_total{result=\"failed\"} %llu\n",
			  (unsigned long long)counters.reloads_ok,
			  (unsigned long long)counters.reloads_failed) < 0;
	failed |= family(out, "gumloop_gateway_access_log_dropped_total", "counter",
			 "Access log lines dropped because the log could not be written fast "
			 "enough.") < 0;
	failed |= evbuffer_add_printf(out, "gumloop_gateway_access_log_dropped_total %llu\n",
				      (unsigned long long)counters.access_log_dropped) < 0;
	return failed ? -1 : 0;
}

static int render_waits(struct evbuffer *out)
{
	int failed = family(out, "gumloop_gateway_waiting", "gauge",
			    "Status requests held now (wait=, Prefer: wait).") < 0;

	failed |= evbuffer_add_printf(out, "gumloop_gateway_waiting %lld\n",
				      (long long)counters.waiting) < 0;
	failed |= family(out, "gumloop_gateway_wait_total", "counter",
			 "Held status requests by what ended their wait.") < 0;
	for (int i = 0; i < METRICS_WAIT_RESULT_COUNT; i++)
		failed |= evbuffer_add_printf(
				  out, "gumloop_gateway_wait_total{result=\"%s\"} %llu\n",
				  wait_names[i], (unsigned long long)counters.waits[i]) < 0;
	return failed ? -1 : 0;
}

int metrics_render(struct evbuffer *out)
{
	if (render_requests(out) < 0 || render_cache(out) < 0 || render_upstream(out) < 0 ||
	    render_downloads_and_process(out) < 0 || render_waits(out) < 0)
		return -1;
	return 0;
}
