/*
 * conf.h -- the gateway's configuration: INI file parsed with inih, validated
 * completely at load, secrets resolved. Not the place for runtime state.
 */
#ifndef GATEWAY_CONF_H
#define GATEWAY_CONF_H

#include "attributes.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cidr.h"
#include "secret.h"

#define CONF_MIN_TOKEN_BYTES 16 /* shorter client tokens are refused */

enum conf_credential_kind {
	CONF_CREDENTIAL_PERSONAL, /* Bearer api_key + x-auth-key: user_id */
	CONF_CREDENTIAL_OAUTH,	  /* Bearer api_key only */
};

struct conf_listen {
	char *text;    /* as written, normalised: "127.0.0.1:8080" or "[::1]:8080 tls" */
	char *host;    /* address without brackets: "127.0.0.1", "::1" */
	uint16_t port; /* 0 allowed: the kernel picks one */
	int tls;
};

struct conf_credential {
	char *name;    /* from [credential NAME] */
	char *user_id; /* resolved secret value */
	char *api_key; /* resolved secret value; never logged */
	enum conf_credential_kind kind;
};

/* What a client may do (scopes = ...): one bit each. */
enum conf_scope {
	CONF_SCOPE_STATUS = 1,	 /* /export_status without download=true */
	CONF_SCOPE_DOWNLOAD = 2, /* /export_status?download=true */
	CONF_SCOPE_EXPORT = 4,	 /* POST /export_data */
};

struct conf_client {
	char *name;	     /* from [client NAME] */
	char *token;	     /* resolved secret value; never logged */
	size_t *credentials; /* indexes into conf->credentials, in the order given */
	size_t credential_count;
	double rate_per_second; /* 0: no limit */
	unsigned scopes;	/* enum conf_scope bits */
};

struct conf {
	char *path; /* the file this was loaded from */

	struct conf_listen *listens; /* at least one */
	size_t listen_count;
	char *tls_cert; /* NULL unless set */
	char *tls_key;

	struct cidr *allow;
	size_t allow_count;
	struct cidr *admin_allow;
	size_t admin_allow_count;

	char *upstream;	   /* https URL without trailing slash */
	char *upstream_ca; /* NULL: system store */

	/* durations, in milliseconds; every default is in conf.c's key table only */
	int64_t upstream_timeout_ms;
	int64_t upstream_idle_timeout_ms;
	int64_t upstream_keepalive_timeout_ms; /* idle pooled connections closed */
	int64_t cache_pending_ttl_ms;
	int64_t cache_final_ttl_ms;
	int64_t cache_error_ttl_ms;
	int64_t cache_stale_if_error_ms;
	int64_t client_timeout_ms;
	int64_t drain_timeout_ms;
	int64_t idempotency_ttl_ms;    /* Idempotency-Key answers kept this long (0: none) */
	int64_t idempotency_max_keys;  /* at most this many, least recently used first out */
	int64_t wait_max_ms;	       /* longest hold for wait= / Prefer: wait (0: off) */
	int64_t max_waiting;	       /* held requests at once; beyond: answered at once */
	int64_t download_cache_ttl_ms; /* a complete spool kept this long (0: not kept) */
	int64_t download_spool_max;    /* bytes, all spools together */
	char *download_spool_dir;      /* where spools are made (O_TMPFILE), or "off" */

	int64_t cache_max_entries;
	int64_t max_connections;
	int64_t max_downloads;
	int64_t upstream_max_connections; /* status calls at once; more queue */

	char *access_log;    /* "-" (stderr), "off", or a path */
	int access_log_json; /* access_log_format = json: JSON lines */

	/* fleet mode: unset redis (NULL) is a gateway on its own */
	char *redis;	  /* normalised: "127.0.0.1:6379", "[::1]:6379", "unix:/path" */
	char *redis_host; /* numeric address, NULL for a unix socket */
	uint16_t redis_port;
	char *redis_unix;     /* socket path, NULL for TCP */
	char *redis_user;     /* ACL user (NULL: the default user) */
	char *redis_password; /* resolved secret value; never logged */
	int64_t redis_db;
	char *redis_prefix; /* of every key and channel */
	int64_t redis_timeout_ms;

	struct conf_credential *credentials; /* at least one; the first is the default */
	size_t credential_count;
	struct conf_client *clients; /* may be empty */
	size_t client_count;
};

/*
 * Loads and validates FILE, resolving every secret. On success returns a new conf
 * owned by the caller (free with conf_free). On failure returns NULL and writes
 * every error found, one per line as "FILE:LINE: KEY: message", into err (always
 * NUL-terminated, truncated to errlen). Warnings (a secret file readable by group
 * or others) go to log_warn and do not fail the load.
 */
MUST_CHECK struct conf *conf_load(const char *path, char *err, size_t errlen);

/* Frees everything, wiping secrets first. NULL is allowed. */
void conf_free(struct conf *conf);

/* Where a key may stand: before any section, or in a [credential]/[client] one. */
enum conf_key_section { CONF_KEY_GLOBAL, CONF_KEY_CREDENTIAL, CONF_KEY_CLIENT };

/*
 * The i-th key of the table every key is defined in (name, section, default as
 * written in a file, NULL when none); 0, or -1 past the last. For the docs test:
 * the README's table and the man page must list the same keys and defaults.
 */
int conf_key_at(size_t i, const char **name, enum conf_key_section *section,
		const char **default_value);

/* Index of the credential with this user id, or -1. */
int conf_find_credential_by_user_id(const struct conf *conf, const char *user_id);

#endif
