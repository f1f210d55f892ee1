/*
 * csv.c -- the fake upstream's CSV generator and Range parser (csv.h).
 */
#include "csv.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "script.h"

/* Byte i of the file is byte i % 32 of line i / 32; line n is "%010llu" + FAKE_CSV_TAIL. */
int fake_csv_add(struct evbuffer *out, uint64_t offset, size_t length)
{
	struct evbuffer_iovec space;
	char line[FAKE_CSV_LINE + 1];
	size_t column = (size_t)(offset % FAKE_CSV_LINE);
	char *dst;
	int written;

	written = snprintf(line, sizeof(line), "%0*" PRIu64 FAKE_CSV_TAIL, FAKE_CSV_DIGITS,
			   offset / FAKE_CSV_LINE);
	if (written != (int)FAKE_CSV_LINE)
		return -1;
	if (evbuffer_reserve_space(out, (ev_ssize_t)length, &space, 1) != 1)
		return -1;
	dst = space.iov_base;
	space.iov_len = length;
	while (length > 0) {
		size_t take = FAKE_CSV_LINE - column;
		size_t digit;

		if (take > length)
			take = length;
		memcpy(dst, line + column, take);
		dst += take;
		length -= take;
		column = 0;
		/* Counting in ASCII is ~10x cheaper than a snprintf per line. */
		for (digit = FAKE_CSV_DIGITS; digit-- > 0;) {
			if (line[digit] != '9') {
				line[digit]++;
				break;
			}
			line[digit] = '0';
		}
	}
	return evbuffer_commit_space(out, &space, 1);
}

/* One range of bytes=A-B, bytes=A- or bytes=-N; anything else is ignored (RFC 9110 14.2). */
enum fake_range fake_range_parse(const char *value, uint64_t size, uint64_t *first, uint64_t *last)
{
	const char *p;
	uint64_t a, b;

	if (strncasecmp(value, "bytes=", 6) != 0 || strchr(value, ',') != NULL)
		return FAKE_RANGE_IGNORED;
	p = value + 6;
	if (*p == '-') {
		if (fake_parse_digits(p + 1, &p, &b) != 0 || *p != '\0')
			return FAKE_RANGE_IGNORED;
		if (b == 0 || size == 0)
			return FAKE_RANGE_UNSATISFIABLE;
		*first = b >= size ? 0 : size - b;
		*last = size - 1;
		return FAKE_RANGE_SATISFIABLE;
	}
	if (fake_parse_digits(p, &p, &a) != 0 || *p++ != '-')
		return FAKE_RANGE_IGNORED;
	if (*p == '\0') {
		b = UINT64_MAX;
	} else if (fake_parse_digits(p, &p, &b) != 0 || *p != '\0' || b < a) {
		return FAKE_RANGE_IGNORED;
	}
	if (a >= size)
		return FAKE_RANGE_UNSATISFIABLE;
	*first = a;
	*last = b >= size ? size - 1 : b;
	return FAKE_RANGE_SATISFIABLE;
}
