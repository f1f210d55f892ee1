/*
 * gumloop.c -- one Gumloop API request on a libcurl easy handle (gumloop.h).
 * The credential goes into headers only, never into a log line: a copy made on
 * the way is wiped, and so is the list when freed.
 */
#include "config.h"

#include "gumloop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "conf.h"
#include "log.h"
#include "query.h"

#define GUMLOOP_USER_AGENT     "gumloop-gateway/" PACKAGE_VERSION
#define GUMLOOP_MAX_CONNECT_MS 10000L
/* libcurl's own lifetime for a parsed CA bundle. */
#define GUMLOOP_CA_CACHE_SECONDS (24L * 3600)

/* Appends "name: value" to *headers, wiping the temporary copy. */
static int add_header(struct curl_slist **headers, const char *name, const char *value)
{
	char line[SECRET_MAX_BYTES + 64];
	struct curl_slist *list;
	int n = snprintf(line, sizeof(line), "%s: %s", name, value);

	if (n < 0 || (size_t)n >= sizeof(line))
		return -1;
	list = curl_slist_append(*headers, line);
	OPENSSL_cleanse(line, sizeof(line));
	if (list == NULL)
		return -1;
	*headers = list;
	return 0;
}

static char *status_url(CURL *easy, const char *base, const struct conf_credential *credential,
			const struct query *q)
{
	char *user_id = curl_easy_escape(easy, credential->user_id, 0);
	char *export_id = curl_easy_escape(easy, q->data_export_id, 0);
	char *url = NULL;

	if (user_id != NULL && export_id != NULL &&
	    asprintf(&url, "%s/export_status?user_id=%s&data_export_id=%s%s", base, user_id,
		     export_id, q->download ? "&download=true" : "") < 0)
		url = NULL;
	curl_free(user_id);
	curl_free(export_id);
	return url;
}

static char *export_url(const char *base)
{
	char *url = NULL;

	if (asprintf(&url, "%s/export_data", base) < 0)
		url = NULL;
	return url;
}

/* The credential's headers, and what the answer may be. */
static int add_headers(struct curl_slist **headers, const struct gumloop_request *request)
{
	const struct conf_credential *credential = request->credential;
	char bearer[SECRET_MAX_BYTES + 16];
	int n = snprintf(bearer, sizeof(bearer), "Bearer %s", credential->api_key);
	int rc = -1;

	if (n < 0 || (size_t)n >= sizeof(bearer) ||
	    add_header(headers, "Authorization", bearer) < 0)
		goto done;
	if (credential->kind == CONF_CREDENTIAL_PERSONAL &&
	    add_header(headers, "x-auth-key", credential->user_id) < 0)
		goto done;
	if ((request->q == NULL || !request->q->download) &&
	    add_header(headers, "Accept", "application/json") < 0)
		goto done;
	/* an export's body; no "Expect: 100-continue" round trip before it */
	if (request->body != NULL && (add_header(headers, "Content-Type", "application/json") < 0 ||
				      add_header(headers, "Expect", "") < 0))
		goto done;
	/* Content codings are refused (framing.c), so ask for none. */
	if (add_header(headers, "Accept-Encoding", "identity") < 0)
		goto done;
	if ((request->range != NULL && add_header(headers, "Range", request->range) < 0) ||
	    (request->if_range != NULL && add_header(headers, "If-Range", request->if_range) < 0))
		goto done;
	rc = 0;
done:
	OPENSSL_cleanse(bearer, sizeof(bearer));
	return rc;
}

/*
 * How long libcurl may keep its parsed CA bundle: never from before the last
 * reload, so a bundle replaced under the same path is read again. libcurl
 * drops a cached copy older than this many whole seconds; in the first second
 * after a reload 0 makes it read the bundle for every new connection (and
 * cache none), after that the copy from before the reload is always older.
 */
static long ca_cache_seconds(int64_t conf_age_ms)
{
	int64_t since = conf_age_ms / 1000;

	return since < GUMLOOP_CA_CACHE_SECONDS ? (long)since : GUMLOOP_CA_CACHE_SECONDS;
}

int gumloop_configure(CURL *easy, const struct gumloop_request *request,
		      struct curl_slist **headers)
{
	const struct conf *conf = request->conf;
	char *url = request->q != NULL
			    ? status_url(easy, conf->upstream, request->credential, request->q)
			    : export_url(conf->upstream);
	long connect_ms = conf->upstream_timeout_ms < GUMLOOP_MAX_CONNECT_MS
				  ? (long)conf->upstream_timeout_ms
				  : GUMLOOP_MAX_CONNECT_MS;

	if (url == NULL || add_headers(headers, request) < 0)
		goto fail;
	SETOPT(easy, CURLOPT_URL, url);
	SETOPT(easy, CURLOPT_HTTPHEADER, *headers);
	SETOPT(easy, CURLOPT_PROTOCOLS_STR, "https");
	SETOPT(easy, CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (conf->upstream_ca != NULL) {
		SETOPT(easy, CURLOPT_CAINFO, conf->upstream_ca);
		/* only that bundle: Debian's libcurl also trusts /etc/ssl/certs by default */
		SETOPT(easy, CURLOPT_CAPATH, NULL);
	}
	SETOPT(easy, CURLOPT_CA_CACHE_TIMEOUT, ca_cache_seconds(request->conf_age_ms));
	SETOPT(easy, CURLOPT_MAXAGE_CONN, (long)(conf->upstream_keepalive_timeout_ms / 1000));
	SETOPT(easy, CURLOPT_NOSIGNAL, 1L);
	/* a download's whole transfer has no time limit: its idle timer watches it */
	if (request->q == NULL || !request->q->download)
		SETOPT(easy, CURLOPT_TIMEOUT_MS, (long)conf->upstream_timeout_ms);
	if (request->body != NULL) {
		SETOPT(easy, CURLOPT_POST, 1L);
		SETOPT(easy, CURLOPT_POSTFIELDS, request->body);
		SETOPT(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)request->body_length);
		/*
		 * Never sent twice: libcurl sends a request again on a fresh connection
		 * when a reused one turns out dead before the answer, and a second POST
		 * could start a second export. A connection of its own has nothing to
		 * retry on (exports are rare; the handshake is cheap beside them).
		 */
		SETOPT(easy, CURLOPT_FRESH_CONNECT, 1L);
		SETOPT(easy, CURLOPT_FORBID_REUSE, 1L);
	}
	if (request->stream)
		SETOPT(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	SETOPT(easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
	SETOPT(easy, CURLOPT_USERAGENT, GUMLOOP_USER_AGENT);
	free(url);
	return 0;
fail:
	free(url);
	return -1;
}

void gumloop_headers_free(struct curl_slist *headers)
{
	struct curl_slist *header;

	for (header = headers; header != NULL; header = header->next)
		OPENSSL_cleanse(header->data, strlen(header->data));
	curl_slist_free_all(headers);
}
