/*
 * cidr.c -- address ranges for the allowlists: parsed once at load, matched on
 * every request (so plain loops over a few bytes, no allocation).
 */
#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

/* A prefix length: decimal digits only, no sign. */
static int parse_prefix(const char *text, uint64_t *value)
{
	uint64_t result = 0;

	if (*text == '\0')
		return -1;
	for (; *text != '\0'; text++) {
		if (*text < '0' || *text > '9' || result > 1000)
			return -1;
		result = result * 10 + (uint64_t)(*text - '0');
	}
	*value = result;
	return 0;
}

int cidr_parse(const char *text, struct cidr *cidr)
{
	char address[INET6_ADDRSTRLEN];
	const char *slash = strchr(text, '/');
	size_t address_length = slash ? (size_t)(slash - text) : strlen(text);
	unsigned max_prefix;
	uint64_t prefix;
	unsigned i;

	if (address_length == 0 || address_length >= sizeof(address))
		return -1;
	memcpy(address, text, address_length);
	address[address_length] = '\0';
	memset(cidr, 0, sizeof(*cidr));
	if (strchr(address, ':')) {
		cidr->family = AF_INET6;
		max_prefix = 128;
	} else {
		cidr->family = AF_INET;
		max_prefix = 32;
	}
	if (inet_pton(cidr->family, address, cidr->addr) != 1)
		return -1;
	prefix = max_prefix;
	if (slash) {
		const char *p = slash + 1;

		if (parse_prefix(p, &prefix) == -1 || prefix > max_prefix)
			return -1;
	}
	cidr->prefix = (unsigned)prefix;
	for (i = 0; i < max_prefix / 8; i++) {
		if (i * 8 >= prefix)
			cidr->addr[i] = 0;
		else if (i * 8 + 8 > prefix)
			cidr->addr[i] &= (unsigned char)(0xff << (8 - (prefix - i * 8)));
	}
	return 0;
}

static int prefix_matches(const unsigned char *address, const struct cidr *cidr)
{
	unsigned whole_bytes = cidr->prefix / 8;
	unsigned rest_bits = cidr->prefix % 8;
	unsigned char mask;

	if (memcmp(address, cidr->addr, whole_bytes) != 0)
		return 0;
	if (rest_bits == 0)
		return 1;
	mask = (unsigned char)(0xff << (8 - rest_bits));
	return (address[whole_bytes] & mask) == cidr->addr[whole_bytes];
}

/*
 * An address is looked at in both forms, so 127.0.0.1 and ::ffff:127.0.0.1 match
 * 127.0.0.0/8 and ::ffff:127.0.0.0/104 alike.
 */
int cidr_match(const struct cidr *cidrs, size_t count, const struct sockaddr *addr)
{
	static const unsigned char v4_mapped_prefix[12] = {
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
	};
	unsigned char v6[16];
	const unsigned char *v4 = NULL;
	size_t i;

	if (!addr)
		return 0;
	if (addr->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;

		memcpy(v6, v4_mapped_prefix, sizeof(v4_mapped_prefix));
		memcpy(v6 + 12, &sin->sin_addr, 4);
		v4 = v6 + 12;
	} else if (addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;

		memcpy(v6, &sin6->sin6_addr, 16);
		if (memcmp(v6, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0)
			v4 = v6 + 12;
	} else {
		return 0;
	}
	for (i = 0; i < count; i++) {
		if (cidrs[i].family == AF_INET6 && prefix_matches(v6, &cidrs[i]))
			return 1;
		if (cidrs[i].family == AF_INET && v4 && prefix_matches(v4, &cidrs[i]))
			return 1;
	}
	return 0;
}
