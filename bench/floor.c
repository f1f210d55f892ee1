/*
 * floor.c -- the floor of the gateway's stack, for bench/run cache: one evhttp
 * server on one event base, set up as the gateway sets up its own, that answers
 * GET /export_status with the bytes the gateway sends on a cache hit. It has no
 * cache, no query parsing, no checks, no metrics and no upstream: what a request
 * costs here is libevent's share of what it costs the gateway. Built by bench/run
 * into its temp dir; not built by make, not installed.
 *
 *	floor HOST PORT BODY ETAG
 *
 * BODY is the JSON the gateway answered for the export id wrk asks for, ETAG
 * the ETag it sent with it; the bench checks that both send the same headers
 * and body before it measures.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

/* As gateway/listeners.c: libevent listens with 128, and a burst gets SYNs dropped. */
#define FLOOR_BACKLOG 4096

/*
 * The gateway's headers on a hit, in its order (gateway/server.c: add_cache_headers,
 * then send_reply); evhttp adds Date and Content-Length after them here, where the
 * gateway writes its own (the same values, in the same place). Age and the ttl follow the entry's age: with the bench's 2 s TTL
 * a hit says Age 0, ttl=1, max-age=1 in the entry's first second and 1, 0, 0 in its
 * second. These are the first second's, the same length as the others.
 */
static const char *floor_headers[][2] = {
	{ "X-Cache", "HIT" },
	{ "Cache-Status", "gumloop-gateway; hit; ttl=1" },
	{ "Age", "0" },
	{ "Cache-Control", "private, max-age=1" },
	{ "ETag", NULL }, /* argv's: the entry's, which the gateway makes once per entry */
	{ "Content-Type", "application/json" },
};
#define FLOOR_ETAG_HEADER 4

struct floor_answer {
	const char *body; /* argv's, lives as long as the process */
	size_t body_length;
};

static int floor_add_headers(struct evhttp_request *req)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);

	for (size_t i = 0; i < sizeof(floor_headers) / sizeof(floor_headers[0]); i++) {
		if (evhttp_add_header(headers, floor_headers[i][0], floor_headers[i][1]) != 0)
			return -1;
	}
	return 0;
}

static void floor_on_request(struct evhttp_request *req, void *arg)
{
	const struct floor_answer *answer = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	struct evbuffer *body = evhttp_request_get_output_buffer(req);

	if (path == NULL || strcmp(path, "/export_status") != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, NULL);
		return;
	}
	/* By reference: the gateway copies its entry's body, and the floor is below that. */
	if (floor_add_headers(req) != 0 ||
	    evbuffer_add_reference(body, answer->body, answer->body_length, NULL, NULL) != 0) {
		fprintf(stderr, "floor: out of memory answering\n");
		evhttp_clear_headers(evhttp_request_get_output_headers(req));
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	evhttp_send_reply(req, HTTP_OK, NULL, NULL);
}

/*
 * As gateway/main.c: epoll's changelist folds evhttp's turning reading and writing
 * on and off into one epoll_ctl per socket and loop turn.
 */
static struct event_base *floor_event_base(void)
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

/*
 * The gateway sets TCP_NODELAY on every client socket; Linux copies it from the
 * listening socket to the sockets it accepts. A second listen() only changes the
 * backlog.
 */
static int floor_tune_listener(evutil_socket_t fd)
{
	int on = 1;

	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) != 0) {
		fprintf(stderr, "floor: TCP_NODELAY: %s\n", strerror(errno));
		return -1;
	}
	if (listen(fd, FLOOR_BACKLOG) != 0) {
		fprintf(stderr, "floor: listen backlog %d: %s\n", FLOOR_BACKLOG, strerror(errno));
		return -1;
	}
	return 0;
}

static int floor_parse_port(const char *text, ev_uint16_t *port)
{
	char *end = NULL;
	long value;

	errno = 0;
	value = strtol(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0' || value < 1 || value > 65535)
		return -1;
	*port = (ev_uint16_t)value;
	return 0;
}

int main(int argc, char **argv)
{
	struct floor_answer answer;
	struct event_base *base = NULL;
	struct evhttp *http = NULL;
	struct evhttp_bound_socket *bound;
	ev_uint16_t port;
	int status = 1;

	if (argc != 5 || floor_parse_port(argv[2], &port) != 0) {
		fprintf(stderr, "usage: floor HOST PORT BODY ETAG\n");
		return 2;
	}
	floor_headers[FLOOR_ETAG_HEADER][1] = argv[4];
	answer.body = argv[3];
	answer.body_length = strlen(argv[3]);
	base = floor_event_base();
	if (base == NULL) {
		fprintf(stderr, "floor: cannot make an event base\n");
		goto done;
	}
	http = evhttp_new(base);
	if (http == NULL) {
		fprintf(stderr, "floor: cannot make an evhttp\n");
		goto done;
	}
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET);
	evhttp_set_gencb(http, floor_on_request, &answer);
	bound = evhttp_bind_socket_with_handle(http, argv[1], port);
	if (bound == NULL) {
		fprintf(stderr, "floor: cannot bind %s:%u: %s\n", argv[1], (unsigned)port,
			strerror(errno));
		goto done;
	}
	if (floor_tune_listener(evhttp_bound_socket_get_fd(bound)) != 0)
		goto done;
	fprintf(stderr, "floor: listening on http://%s:%u\n", argv[1], (unsigned)port);
	if (event_base_dispatch(base) != 0) {
		fprintf(stderr, "floor: the event loop failed\n");
		goto done;
	}
	status = 0;
done:
	if (http != NULL)
		evhttp_free(http);
	if (base != NULL)
		event_base_free(base);
	return status;
}
