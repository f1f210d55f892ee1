/*
 * tls.c -- OpenSSL server contexts for the listeners. Read at start and on every
 * SIGHUP, so a renewed certificate is picked up without a restart; connections
 * already open keep the context they were accepted with (OpenSSL counts refs).
 */
#include "tls.h"

#include <openssl/err.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>

#include "log.h"

/* TLS 1.2 suites: ECDHE key exchange and AEAD only (TLS 1.3 suites are all such). */
#define TLS_CIPHERS                                                                                \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static void log_openssl(const char *what, const char *file)
{
	char reason[256] = "unknown error";
	unsigned long code = ERR_get_error();

	if (code != 0)
		ERR_error_string_n(code, reason, sizeof(reason));
	ERR_clear_error();
	log_error("tls: %s %s: %s", what, file ? file : "", reason);
}

SSL_CTX *tls_context_new(const char *cert_file, const char *key_file)
{
	SSL_CTX *context = SSL_CTX_new(TLS_server_method());

	if (context == NULL) {
		log_openssl("cannot make a context", NULL);
		return NULL;
	}
	if (SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_cipher_list(context, TLS_CIPHERS) != 1) {
		log_openssl("cannot set the protocol versions and ciphers", NULL);
		goto fail;
	}
	SSL_CTX_set_options(context, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
					     SSL_OP_CIPHER_SERVER_PREFERENCE);
	if (SSL_CTX_use_certificate_chain_file(context, cert_file) != 1) {
		log_openssl("cannot load the certificate chain", cert_file);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(context, key_file, SSL_FILETYPE_PEM) != 1) {
		log_openssl("cannot load the private key", key_file);
		goto fail;
	}
	if (SSL_CTX_check_private_key(context) != 1) {
		log_openssl("the private key does not match the certificate", key_file);
		goto fail;
	}
	return context;
fail:
	SSL_CTX_free(context);
	return NULL;
}

struct bufferevent *tls_bufferevent_new(struct event_base *base, SSL_CTX *context)
{
	SSL *ssl = SSL_new(context);
	struct bufferevent *bev;

	if (ssl == NULL) {
		log_openssl("cannot make a connection", NULL);
		return NULL;
	}
	bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
					     BEV_OPT_CLOSE_ON_FREE);
	/* On failure libevent frees ssl itself (BEV_OPT_CLOSE_ON_FREE): not again here. */
	if (bev == NULL)
		return NULL;
	/* A client that just closes the socket is common, not an attack. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}
