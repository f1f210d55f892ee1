/*
 * conf_values.c -- the forms a config value takes (conf_values.h), parsed
 * without side effects other than the allocations handed to the caller.
 */
#include "conf_values.h"

#include "cidr.h"
#include "conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
	const char *suffix;
	int64_t ms;
} duration_units[] = { { "h", HOUR_MS }, { "m", MINUTE_MS }, { "s", SECOND_MS }, { "ms", 1 } };

int value_parse_digits(const char **text, uint64_t *value)
{
	const char *p = *text;
	uint64_t result = 0;

	if (!isdigit((unsigned char)*p))
		return -1;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned digit = (unsigned)(*p - '0');

		if (result > (UINT64_MAX - digit) / 10)
			return -1;
		result = result * 10 + digit;
	}
	*text = p;
	*value = result;
	return 0;
}

/* Integers only ("1.5s" is an error): write "1500ms". */
int value_parse_duration(const char *text, int64_t *ms)
{
	uint64_t number;
	size_t i;

	if (!text || value_parse_digits(&text, &number) == -1)
		return -1;
	if (*text == '\0') /* a bare number is seconds */
		text = "s";
	for (i = 0; i < sizeof(duration_units) / sizeof(duration_units[0]); i++) {
		int64_t unit = duration_units[i].ms;

		if (strcmp(text, duration_units[i].suffix) != 0)
			continue;
		if (number > (uint64_t)(INT64_MAX / unit))
			return -1;
		*ms = (int64_t)number * unit;
		return 0;
	}
	return -1;
}

void value_format_duration(int64_t ms, char *out, size_t outlen)
{
	size_t i;

	for (i = 0; i < sizeof(duration_units) / sizeof(duration_units[0]); i++) {
		if (ms != 0 && ms % duration_units[i].ms == 0)
			break;
	}
	if (i == sizeof(duration_units) / sizeof(duration_units[0]))
		i--; /* 0 */
	snprintf(out, outlen, "%" PRId64 "%s", ms / duration_units[i].ms, duration_units[i].suffix);
}

int value_parse_size(const char *text, uint64_t *bytes)
{
	uint64_t number, multiplier;

	if (!text || value_parse_digits(&text, &number) == -1)
		return -1;
	switch (*text) {
	case '\0':
		multiplier = 1;
		break;
	case 'k':
	case 'K':
		multiplier = UINT64_C(1) << 10;
		break;
	case 'm':
	case 'M':
		multiplier = UINT64_C(1) << 20;
		break;
	case 'g':
	case 'G':
		multiplier = UINT64_C(1) << 30;
		break;
	default:
		return -1;
	}
	if (*text != '\0' && text[1] != '\0')
		return -1;
	if (number > UINT64_MAX / multiplier)
		return -1;
	*bytes = number * multiplier;
	return 0;
}

/* "HOST:PORT" or "[V6]:PORT", then optionally " tls". */
int value_parse_listen(const char *text, struct conf_listen *listen, char *why, size_t whylen)
{
	char address[INET6_ADDRSTRLEN + 8], host[INET6_ADDRSTRLEN];
	unsigned char binary[16];
	size_t address_length = strcspn(text, " \t");
	const char *rest = text + address_length + strspn(text + address_length, " \t");
	const char *host_start = address, *colon, *port_text;
	int family = AF_INET;
	uint64_t port;

	if (address_length >= sizeof(address)) {
		snprintf(why, whylen, "bad address (expected HOST:PORT or [IPV6]:PORT)");
		return -1;
	}
	memcpy(address, text, address_length);
	address[address_length] = '\0';
	colon = strrchr(address, ':');
	if (address[0] == '[') {
		host_start++;
		family = AF_INET6;
		if (!colon || colon == address || colon[-1] != ']') {
			snprintf(why, whylen, "bad address (expected [IPV6]:PORT)");
			return -1;
		}
		address[colon - 1 - address] = '\0';
	} else if (!colon) {
		snprintf(why, whylen, "missing port (expected HOST:PORT)");
		return -1;
	} else {
		address[colon - address] = '\0';
	}
	if (family == AF_INET && strchr(address, ':')) {
		snprintf(why, whylen, "IPv6 addresses are written in brackets: [::1]:8080");
		return -1;
	}
	if (inet_pton(family, host_start, binary) != 1) {
		snprintf(why, whylen, "host must be a numeric IPv4 or [IPv6] address");
		return -1;
	}
	port_text = colon + 1;
	if (value_parse_digits(&port_text, &port) == -1 || *port_text != '\0' || port > 65535) {
		snprintf(why, whylen, "port must be a number from 0 to 65535");
		return -1;
	}
	if (*rest != '\0' && strcmp(rest, "tls") != 0) {
		snprintf(why, whylen, "unexpected '%s' after the address (only 'tls' is allowed)",
			 rest);
		return -1;
	}
	inet_ntop(family, binary, host, sizeof(host));
	listen->host = strdup(host);
	listen->port = (uint16_t)port;
	listen->tls = *rest != '\0';
	if (asprintf(&listen->text, family == AF_INET6 ? "[%s]:%u%s" : "%s:%u%s", host,
		     listen->port, listen->tls ? " tls" : "") < 0)
		listen->text = NULL;
	if (!listen->host || !listen->text) {
		free(listen->host);
		free(listen->text);
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	return 0;
}

int value_parse_cidr_list(const char *text, struct cidr **cidrs, size_t *count, char *why,
			  size_t whylen)
{
	char *copy = strdup(text), *token, *saveptr = NULL;
	struct cidr *list = NULL, *grown;
	size_t length = 0;

	if (!copy)
		goto out_of_memory;
	for (token = strtok_r(copy, VALUE_LIST_SEPARATORS, &saveptr); token;
	     token = strtok_r(NULL, VALUE_LIST_SEPARATORS, &saveptr)) {
		grown = reallocarray(list, length + 1, sizeof(*list));
		if (!grown)
			goto out_of_memory;
		list = grown;
		if (cidr_parse(token, &list[length]) == -1) {
			snprintf(why, whylen,
				 "'%s' is not an address or CIDR (10.0.0.0/8, ::1/128)", token);
			goto fail;
		}
		length++;
	}
	if (length == 0) {
		snprintf(why, whylen, "missing value");
		goto fail;
	}
	free(copy);
	free(*cidrs);
	*cidrs = list;
	*count = length;
	return 0;
out_of_memory:
	snprintf(why, whylen, "out of memory");
fail:
	free(copy);
	free(list);
	return -1;
}
