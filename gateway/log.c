/*
 * log.c -- diagnostic lines on stderr. Secrets must never be passed in here:
 * callers log names of credentials and clients, not their values.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

static int debug_enabled;

static void log_line(const char *priority, const char *level, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void log_line(const char *priority, const char *level, const char *fmt, va_list ap)
{
	char line[2048];

	vsnprintf(line, sizeof(line), fmt, ap);
	fprintf(stderr, "%sgumloop-gateway: %s: %s\n", priority, level, line);
}

#define LOG_FUNCTION(name, priority, level, guard)                                                 \
	void name(const char *fmt, ...)                                                            \
	{                                                                                          \
		va_list ap;                                                                        \
		if (!(guard))                                                                      \
			return;                                                                    \
		va_start(ap, fmt);                                                                 \
		log_line(priority, level, fmt, ap);                                                \
		va_end(ap);                                                                        \
	}

LOG_FUNCTION(log_error, "<3>", "error", 1)
LOG_FUNCTION(log_warn, "<4>", "warning", 1)
LOG_FUNCTION(log_info, "<6>", "info", 1)
LOG_FUNCTION(log_debug, "<7>", "debug", debug_enabled)

void log_set_debug(int on)
{
	debug_enabled = on;
}
