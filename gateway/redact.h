/*
 * redact.h -- configured secrets taken out of bytes an upstream sent, before a
 * client sees them. Defence in depth: an upstream error body that echoes the
 * request (a debug page, a misconfigured proxy) would otherwise carry the
 * gateway's API key to whoever asked. Pure: no I/O.
 */
#ifndef GATEWAY_REDACT_H
#define GATEWAY_REDACT_H

#include "attributes.h"

#include <stddef.h>

struct conf;

/* What a secret is replaced with. */
#define REDACT_MARK "[redacted]"
/* Shorter values are not searched for (a short user id would match anywhere). */
#define REDACT_MIN_BYTES 8

/*
 * text[0..length) with every api_key, user_id and client token of conf that is
 * at least REDACT_MIN_BYTES long replaced by REDACT_MARK. Returns 1 with a new
 * NUL-terminated copy in *redacted (the caller frees it) and its length; 0 when
 * nothing was found (*redacted NULL: text may be sent as it is); -1 when out of
 * memory (text must not be sent either).
 */
MUST_CHECK int redact_secrets(const char *text, size_t length, const struct conf *conf,
			      char **redacted, size_t *redacted_length);

#endif
