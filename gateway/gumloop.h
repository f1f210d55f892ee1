/*
 * gumloop.h -- what one request to Gumloop's API looks like, set on a libcurl
 * easy handle: the URL and method (../shared/gumloop-export-status.md and
 * gumloop-export-data.md), the credential's
 * headers, TLS verification against the configured CA, timeouts and the user
 * agent. Knows nothing of the event loop or of a call's callbacks (upstream.c).
 */
#ifndef GATEWAY_GUMLOOP_H
#define GATEWAY_GUMLOOP_H

#include "attributes.h"

#include <stdint.h>

#include <curl/curl.h>

struct conf;
struct conf_credential;
struct query;

struct gumloop_request {
	const struct conf *conf;
	const struct conf_credential *credential;
	const struct query *q; /* a status call's or a download's; NULL: an export */
	const char *body;      /* an export's JSON (POST /export_data), else NULL */
	size_t body_length;
	const char *range, *if_range; /* a download's, passed through; or NULL */
	int stream;		      /* a download relayed as it arrives: HTTP/1.1 only */
	int64_t conf_age_ms;	      /* since the config (and its CA bundle) was applied */
};

/*
 * Sets the request's options on easy. *headers receives the header list
 * libcurl sends (it holds the API key): it must outlive the transfer, and be
 * freed with gumloop_headers_free, also when this fails. 0, or -1 (logged).
 */
MUST_CHECK int gumloop_configure(CURL *easy, const struct gumloop_request *request,
				 struct curl_slist **headers);

/* For gumloop.c and upstream.c: sets a libcurl option, or logs which and goes to fail. */
#define SETOPT(easy, option, value)                                                                \
	do {                                                                                       \
		if (curl_easy_setopt(easy, option, value) != CURLE_OK) {                           \
			log_error("%s: curl_easy_setopt(%s) failed", __func__, #option);           \
			goto fail;                                                                 \
		}                                                                                  \
	} while (0)

/* Wipes every header line, then frees the list. NULL is allowed. */
void gumloop_headers_free(struct curl_slist *headers);

#endif
