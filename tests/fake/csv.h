/*
 * csv.h -- the fake upstream's CSV: a file of any size that is never stored,
 * byte i being byte i % 32 of line i / 32 ("%010llu,abcdefghijklmnopqrst\n"),
 * so a test can check any range of it; and the one Range form the fake serves.
 */
#ifndef FAKE_CSV_H
#define FAKE_CSV_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* FAKE_CSV_MAX_SIZE (script.h) bounds the file: 10-digit line numbers reach far above it. */
#define FAKE_CSV_DIGITS 10
#define FAKE_CSV_TAIL	",abcdefghijklmnopqrst\n"
#define FAKE_CSV_LINE	((size_t)FAKE_CSV_DIGITS + sizeof(FAKE_CSV_TAIL) - 1)
_Static_assert(FAKE_CSV_LINE == 32, "tests rely on 32-byte CSV lines");

/* Appends bytes [offset, offset + length) of the file to out. 0, or -1. */
int fake_csv_add(struct evbuffer *out, uint64_t offset, size_t length);

enum fake_range { FAKE_RANGE_IGNORED, FAKE_RANGE_SATISFIABLE, FAKE_RANGE_UNSATISFIABLE };

/* One range of bytes=A-B, bytes=A- or bytes=-N; anything else is ignored (RFC 9110 14.2). */
enum fake_range fake_range_parse(const char *value, uint64_t size, uint64_t *first, uint64_t *last);

#endif
