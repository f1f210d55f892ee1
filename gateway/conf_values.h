/*
 * conf_values.h -- the forms of a config value: numbers, durations and sizes
 * (design.md: "Durations take ms, s, m, h; sizes take k, m, g"), listen
 * addresses and address lists. Pure parsers, each with unit tests in unit_conf.
 */
#ifndef GATEWAY_CONF_VALUES_H
#define GATEWAY_CONF_VALUES_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>

/* Between the items of a list value. */
#define VALUE_LIST_SEPARATORS " \t,"

#define SECOND_MS INT64_C(1000)
#define MINUTE_MS (60 * SECOND_MS)
#define HOUR_MS	  (60 * MINUTE_MS)
#define DAY_MS	  (24 * HOUR_MS)

/* Reads one or more decimal digits at *text, moving it past them; -1 on none or overflow. */
MUST_CHECK int value_parse_digits(const char **text, uint64_t *value);

/* "250ms", "2s", "5m", "1h"; a bare number is seconds. 0 on success, -1 on error. */
MUST_CHECK int value_parse_duration(const char *text, int64_t *ms);

/* The largest unit that divides ms exactly ("90s", "250ms", "0ms"), into out. */
void value_format_duration(int64_t ms, char *out, size_t outlen);

/* "512", "64k", "16m", "1g" (powers of 1024). 0 on success, -1 on error. */
MUST_CHECK int value_parse_size(const char *text, uint64_t *bytes);

struct cidr;
struct conf_listen;

/*
 * "HOST:PORT" or "[V6]:PORT" (numeric: no DNS), then optionally " tls". On
 * success fills *listen (host and text allocated, the caller's), else -1 and why.
 */
MUST_CHECK int value_parse_listen(const char *text, struct conf_listen *listen, char *why,
				  size_t whylen);

/*
 * Addresses and CIDRs separated by VALUE_LIST_SEPARATORS, at least one. On
 * success replaces *cidrs (freeing the old list) and *count; else -1 and why.
 */
MUST_CHECK int value_parse_cidr_list(const char *text, struct cidr **cidrs, size_t *count,
				     char *why, size_t whylen);

#endif
