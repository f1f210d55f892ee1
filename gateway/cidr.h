/*
 * cidr.h -- address ranges: "10.0.0.0/8", "::1/128", "192.168.1.7" (one host),
 * parsed and matched against a peer address. Pure: no I/O.
 */
#ifndef GATEWAY_CIDR_H
#define GATEWAY_CIDR_H

#include "attributes.h"

#include <stddef.h>
#include <sys/socket.h>

struct cidr {
	int family;		/* AF_INET or AF_INET6 */
	unsigned char addr[16]; /* network address, host bits cleared */
	unsigned prefix;	/* 0..32 or 0..128 */
};

/* 0 on success, -1 on error. */
MUST_CHECK int cidr_parse(const char *text, struct cidr *cidr);

/* 1 if addr (AF_INET, AF_INET6, IPv4-mapped IPv6 too) is inside any of cidrs. */
int cidr_match(const struct cidr *cidrs, size_t count, const struct sockaddr *addr);

#endif
