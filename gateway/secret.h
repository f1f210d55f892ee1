/*
 * secret.h -- where the gateway's secrets come from (env:NAME, file:/path,
 * credential:NAME, or a literal) and how they go away (wiped before freed). Small on purpose, so it
 * can be audited alone: no secret value ever reaches an error message here.
 */
#ifndef GATEWAY_SECRET_H
#define GATEWAY_SECRET_H

#include "attributes.h"

#include <stddef.h>

#define SECRET_MAX_BYTES 4096 /* a secret file larger than this is an error */

/*
 * Resolves a secret spec: "env:NAME", "file:/path" (the whole file, one
 * trailing newline stripped), "credential:NAME" (the file NAME in systemd's
 * $CREDENTIALS_DIRECTORY, read as file: is) or a literal. Empty results and control
 * characters are errors. On success *value is a new string owned by the caller
 * (free it with secret_free) and 0 is returned; on error -1 and a message
 * (naming the variable or file, never the value) in err. *insecure is set to 1
 * when a file secret is readable by group or others.
 */
MUST_CHECK int secret_resolve(const char *spec, char **value, int *insecure, char *err,
			      size_t errlen);

/* Wipes (OPENSSL_cleanse) and frees. NULL is allowed. */
void secret_free(char *secret);

#endif
