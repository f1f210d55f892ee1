/*
 * log.h -- diagnostic logging to stderr, systemd style (one line per event, a
 * "<N>" priority prefix journald understands). Not the access log.
 */
#ifndef GATEWAY_LOG_H
#define GATEWAY_LOG_H

#define LOG_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

void log_error(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_warn(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_info(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_debug(const char *fmt, ...) LOG_PRINTF(1, 2);

/* 1 enables log_debug (off by default; GUMLOOP_GATEWAY_DEBUG=1 turns it on). */
void log_set_debug(int on);

#endif
