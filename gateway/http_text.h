/*
 * http_text.h -- header values the hot path writes, made without printf (on a
 * cache hit, glibc's snprintf cost more than the cache lookup): decimal
 * numbers, and the HTTP date, formatted once per second like nginx's
 * ngx_cached_http_time. Pure but for http_date_now's clock read.
 */
#ifndef GATEWAY_HTTP_TEXT_H
#define GATEWAY_HTTP_TEXT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define HTTP_TEXT_U64_SIZE 21 /* UINT64_MAX's 20 digits and the NUL */
#define HTTP_DATE_SIZE	   30 /* "Sun, 06 Nov 1994 08:49:37 GMT" and the NUL */

/* value in decimal, NUL-terminated, at out (HTTP_TEXT_U64_SIZE bytes); returns out. */
char *http_text_u64(char *out, uint64_t value);

/*
 * prefix then value in decimal ("-" first when negative) into out (size bytes,
 * NUL-terminated); returns out, or NULL when it does not fit.
 */
char *http_text_prefixed_i64(char *out, size_t size, const char *prefix, int64_t value);

/* RFC 9110 5.6.7 IMF-fixdate of t, at out (HTTP_DATE_SIZE bytes); -1 when t is not a date. */
int http_date_format(time_t t, char *out);

struct http_date {
	time_t second; /* of text; 0 (1970) before the first call */
	char text[HTTP_DATE_SIZE];
};

/* The Date header value for now, made again only when the second changed. */
const char *http_date_now(struct http_date *date);

#endif
