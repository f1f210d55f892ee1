/*
 * hex.h -- one hexadecimal digit's value, for the parsers of client and
 * upstream bytes (%-escapes, \u escapes), and bytes written as hex.
 */
#ifndef GATEWAY_HEX_H
#define GATEWAY_HEX_H

#include <stddef.h>

/* 0..15, or -1 when c is not a hex digit. */
static inline int hex_digit(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* count bytes as 2 * count lowercase hex digits at out, then a NUL. */
static inline void hex_encode(const unsigned char *bytes, size_t count, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < count; i++) {
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 15];
	}
	out[2 * count] = '\0';
}

#endif
