/*
 * http_text.c -- decimal numbers and HTTP dates for reply headers (http_text.h).
 */
#include "http_text.h"

#include <string.h>

char *http_text_u64(char *out, uint64_t value)
{
	char digits[HTTP_TEXT_U64_SIZE];
	size_t n = 0;

	do {
		digits[n++] = (char)('0' + value % 10);
		value /= 10;
	} while (value != 0);
	for (size_t i = 0; i < n; i++)
		out[i] = digits[n - 1 - i];
	out[n] = '\0';
	return out;
}

char *http_text_prefixed_i64(char *out, size_t size, const char *prefix, int64_t value)
{
	size_t length = strlen(prefix);
	char number[HTTP_TEXT_U64_SIZE + 1];
	/* the magnitude as unsigned: -INT64_MIN does not fit an int64_t */
	uint64_t magnitude = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
	size_t digits;

	number[0] = '-';
	http_text_u64(number + 1, magnitude);
	digits = strlen(number + 1) + (value < 0);
	if (length + digits + 1 > size)
		return NULL;
	memcpy(out, prefix, length);
	memcpy(out + length, value < 0 ? number : number + 1, digits + 1);
	return out;
}

static void two_digits(char *out, int value)
{
	out[0] = (char)('0' + value / 10 % 10);
	out[1] = (char)('0' + value % 10);
}

int http_date_format(time_t t, char *out)
{
	static const char days[] = "SunMonTueWedThuFriSat";
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
		return -1;
	memcpy(out, days + 3 * tm.tm_wday, 3);
	memcpy(out + 3, ", ", 2);
	two_digits(out + 5, tm.tm_mday);
	out[7] = ' ';
	memcpy(out + 8, months + 3 * tm.tm_mon, 3);
	out[11] = ' ';
	two_digits(out + 12, (tm.tm_year + 1900) / 100);
	two_digits(out + 14, (tm.tm_year + 1900) % 100);
	out[16] = ' ';
	two_digits(out + 17, tm.tm_hour);
	out[19] = ':';
	two_digits(out + 20, tm.tm_min);
	out[22] = ':';
	two_digits(out + 23, tm.tm_sec);
	memcpy(out + 25, " GMT", 5);
	return 0;
}

const char *http_date_now(struct http_date *date)
{
	time_t now = time(NULL);

	if (now != date->second) {
		if (http_date_format(now, date->text) < 0)
			memcpy(date->text, "Thu, 01 Jan 1970 00:00:00 GMT", HTTP_DATE_SIZE);
		date->second = now;
	}
	return date->text;
}
