/*
 * main.c -- wires config, server and signals together; no logic of its own
 * beyond the command line and the process lifecycle.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include <curl/curl.h>
#include <event2/event.h>

#include "conf.h"
#include "linger.h"
#include "log.h"
#include "redis.h"
#include "metrics.h"
#include "server.h"
#include "tls.h"

#define CONF_ERRORS_MAX	       8192
#define GATEWAY_TRIM_THRESHOLD (2 * 1024 * 1024)
#define GATEWAY_MMAP_THRESHOLD (1024 * 1024)

struct gateway {
	struct event_base *base;
	struct server *server;
	const char *conf_path;
	int64_t drain_timeout_ms;
	struct event *drain_timer;
	int stopping;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: gumloop-gateway [-c FILE] [-t] [-V] [-h]\n"
		"  -c FILE   config file (default: %s when installed, else conf/gateway.conf)\n"
		"  -t        check the config and every secret, print \"config ok\"\n"
		"  -V        print the version\n"
		"  -h        this help\n",
		SYSCONFDIR "/gumloop-gateway/gumloop-gateway.conf");
}

/* An installed binary reads $sysconfdir; one run from the build tree, conf/. */
static const char *default_conf_path(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n > 0) {
		self[n] = '\0';
		if (strncmp(self, SBINDIR "/", strlen(SBINDIR) + 1) == 0)
			return SYSCONFDIR "/gumloop-gateway/gumloop-gateway.conf";
	}
	return "conf/gateway.conf";
}

static struct conf *load(const char *path)
{
	char *errors = malloc(CONF_ERRORS_MAX);
	struct conf *conf;

	if (errors == NULL)
		return NULL;
	errors[0] = '\0';
	conf = conf_load(path, errors, CONF_ERRORS_MAX);
	if (conf == NULL) {
		char *line, *save = NULL;

		for (line = strtok_r(errors, "\n", &save); line != NULL;
		     line = strtok_r(NULL, "\n", &save))
			log_error("%s", line);
	}
	free(errors);
	return conf;
}

/*
 * Every client connection is a file descriptor, and so is every upstream one
 * (status calls share upstream_max_connections, each download has its own) and
 * every socket lingering after an error close: take the hard limit, and say so
 * when even that is below what they add up to (accepting then pauses on EMFILE
 * instead of at max_connections).
 */
static void raise_fd_limit(const struct conf *conf)
{
	struct rlimit limit;
	rlim_t wanted = (rlim_t)conf->max_connections + (rlim_t)conf->max_downloads +
			(rlim_t)conf->upstream_max_connections + LINGER_MAX + 64;

	if (getrlimit(RLIMIT_NOFILE, &limit) != 0)
		return;
	if (limit.rlim_cur < limit.rlim_max) {
		limit.rlim_cur = limit.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &limit) != 0)
			log_warn("cannot raise RLIMIT_NOFILE: %s", strerror(errno));
	}
	if (limit.rlim_max < wanted)
		log_warn("RLIMIT_NOFILE is %llu, below the %llu that max_connections and "
			 "max_downloads need",
			 (unsigned long long)limit.rlim_max, (unsigned long long)wanted);
}

/*
 * systemd's readiness protocol (Type=notify), when built with libsystemd and run
 * with NOTIFY_SOCKET: a datagram to the service manager, nothing otherwise.
 */
static void notify(const char *state)
{
#ifdef HAVE_SYSTEMD
	int rc = sd_notify(0, state);

	if (rc < 0)
		log_warn("sd_notify: %s", strerror(-rc));
#else
	(void)state;
#endif
}

/* RELOADING=1 with the time it began (systemd 253's Type=notify-reload wants it). */
static void notify_reloading(void)
{
	struct timespec now;
	char state[64];

	if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) {
		notify("RELOADING=1");
		return;
	}
	snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
		 (unsigned long long)now.tv_sec * 1000000ULL +
			 (unsigned long long)now.tv_nsec / 1000ULL);
	notify(state);
}

static void on_drained(void *arg)
{
	struct gateway *gateway = arg;

	log_info("all requests finished, exiting");
	event_base_loopexit(gateway->base, NULL);
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct gateway *gateway = arg;

	(void)fd;
	(void)what;
	log_warn("drain_timeout reached, closing the connections still open");
	event_base_loopexit(gateway->base, NULL);
}

static void on_stop(evutil_socket_t signal_number, short what, void *arg)
{
	struct gateway *gateway = arg;
	struct timeval timeout = {
		.tv_sec = gateway->drain_timeout_ms / 1000,
		.tv_usec = (gateway->drain_timeout_ms % 1000) * 1000,
	};

	(void)what;
	if (gateway->stopping) {
		log_warn("second signal %d, exiting now", (int)signal_number);
		event_base_loopexit(gateway->base, NULL);
		return;
	}
	gateway->stopping = 1;
	log_info("signal %d: draining (readyz answers 503, new requests are refused), finishing "
		 "requests in flight",
		 (int)signal_number);
	notify("STOPPING=1");
	if (event_add(gateway->drain_timer, &timeout) < 0)
		event_base_loopexit(gateway->base, NULL);
	server_drain(gateway->server, on_drained, gateway);
}

static void on_reload(evutil_socket_t signal_number, short what, void *arg)
{
	struct gateway *gateway = arg;
	struct conf *conf;

	(void)signal_number;
	(void)what;
	if (gateway->stopping)
		return;
	notify_reloading();
	conf = load(gateway->conf_path);
	if (conf == NULL) {
		log_error("reload: %s has errors, the running config stays in force",
			  gateway->conf_path);
		metrics_reload(0);
		notify("READY=1\nSTATUS=reload failed, the previous config is in force");
		return;
	}
	{
		int64_t drain_timeout_ms = conf->drain_timeout_ms;

		if (server_reload(gateway->server, conf) < 0) {
			log_error("reload: cannot apply %s, the running config stays in force",
				  gateway->conf_path);
			conf_free(conf);
			metrics_reload(0);
			notify("READY=1\nSTATUS=reload failed, the previous config is in force");
			return;
		}
		gateway->drain_timeout_ms = drain_timeout_ms;
	}
	metrics_reload(1);
	log_info("reload: %s is in force", gateway->conf_path);
	notify("READY=1\nSTATUS=serving");
}

/*
 * evhttp turns reading and writing on and off several times per request; with
 * epoll's changelist those changes are folded into one epoll_ctl per socket and
 * loop turn instead of one each (about a fifth more requests per second).
 */
static struct event_base *new_event_base(void)
{
	struct event_config *config = event_config_new();
	struct event_base *base = NULL;

	if (config != NULL &&
	    event_config_set_flag(config, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0)
		base = event_base_new_with_config(config);
	if (config != NULL)
		event_config_free(config);
	return base != NULL ? base : event_base_new();
}

static int run(struct gateway *gateway, struct conf *conf)
{
	struct event *signals[4] = { NULL };
	int numbers[4] = { SIGTERM, SIGINT, SIGHUP, 0 };
	int status = 1;
	size_t i;

	gateway->base = new_event_base();
	if (gateway->base == NULL)
		goto done;
	gateway->drain_timeout_ms = conf->drain_timeout_ms;
	gateway->drain_timer = evtimer_new(gateway->base, on_drain_timeout, gateway);
	if (gateway->drain_timer == NULL)
		goto done;
	for (i = 0; numbers[i] != 0; i++) {
		signals[i] = evsignal_new(gateway->base, numbers[i],
					  numbers[i] == SIGHUP ? on_reload : on_stop, gateway);
		if (signals[i] == NULL || event_add(signals[i], NULL) < 0)
			goto done;
	}
	raise_fd_limit(conf);
	gateway->server = server_new(gateway->base, conf);
	if (gateway->server == NULL) {
		conf_free(conf);
		conf = NULL;
		goto done;
	}
	conf = NULL;
	log_info("gumloop-gateway %s started", PACKAGE_VERSION);
	/* the listeners are bound: a unit ordered after this one may connect */
	notify("READY=1\nSTATUS=serving");
	if (event_base_dispatch(gateway->base) < 0)
		goto done;
	status = 0;
done:
	if (conf != NULL)
		conf_free(conf);
	server_free(gateway->server);
	for (i = 0; i < 3; i++) {
		if (signals[i] != NULL)
			event_free(signals[i]);
	}
	if (gateway->drain_timer != NULL)
		event_free(gateway->drain_timer);
	if (gateway->base != NULL)
		event_base_free(gateway->base);
	return status;
}

int main(int argc, char **argv)
{
	struct gateway gateway = { 0 };
	struct conf *conf;
	int check_only = 0, option, status;

	gateway.conf_path = NULL;
	while ((option = getopt(argc, argv, "c:tVh")) != -1) {
		switch (option) {
		case 'c':
			gateway.conf_path = optarg;
			break;
		case 't':
			check_only = 1;
			break;
		case 'V':
			printf("gumloop-gateway %s%s\n", PACKAGE_VERSION,
#ifdef HAVE_SYSTEMD
			       " (sd_notify)"
#else
			       ""
#endif
			);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (gateway.conf_path == NULL)
		gateway.conf_path = default_conf_path();
	log_set_debug(getenv("GUMLOOP_GATEWAY_DEBUG") != NULL);
	conf = load(gateway.conf_path);
	if (conf == NULL)
		return 1;
	if (check_only) {
		char why[256];

		/* the certificate and key as the listeners will load them, not just readable */
		if (conf->tls_cert != NULL && conf->tls_key != NULL) {
			SSL_CTX *context = tls_context_new(conf->tls_cert, conf->tls_key);

			if (context == NULL) {
				conf_free(conf);
				return 1;
			}
			SSL_CTX_free(context);
		}
		if (conf->redis != NULL && redis_check(conf, why, sizeof(why)) < 0) {
			fprintf(stderr, "gumloop-gateway: redis %s does not answer: %s\n",
				conf->redis, why);
			conf_free(conf);
			return 1;
		}
		conf_free(conf);
		printf("config ok\n");
		return 0;
	}
	/*
	 * Downloads allocate and free buffers of tens of KiB all the time; without
	 * slack at the top of the heap glibc gives pages back and faults them in
	 * again for each one.
	 */
	if (mallopt(M_TRIM_THRESHOLD, GATEWAY_TRIM_THRESHOLD) != 1 ||
	    mallopt(M_MMAP_THRESHOLD, GATEWAY_MMAP_THRESHOLD) != 1)
		log_warn("mallopt failed: downloads may be slower");
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR || curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
		log_error("cannot initialise the process");
		conf_free(conf);
		return 1;
	}
	status = run(&gateway, conf);
	curl_global_cleanup();
	return status;
}
