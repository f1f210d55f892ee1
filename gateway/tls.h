/*
 * tls.h -- TLS on the listeners: the server context made from tls_cert and
 * tls_key, and the bufferevent evhttp asks for on each accepted TLS connection.
 * Not for upstream TLS, which is libcurl's.
 */
#ifndef GATEWAY_TLS_H
#define GATEWAY_TLS_H

#include <openssl/ssl.h>

struct event_base;
struct bufferevent;

/*
 * A context with the certificate chain and key (PEM files, key checked against
 * the certificate), TLS 1.2 at least, forward-secret AEAD ciphers only. NULL on
 * error, logged with the file and OpenSSL's reason. Free with SSL_CTX_free.
 */
SSL_CTX *tls_context_new(const char *cert_file, const char *key_file);

/* A server-side TLS bufferevent on no socket yet (evhttp sets it). NULL on error. */
struct bufferevent *tls_bufferevent_new(struct event_base *base, SSL_CTX *context);

#endif
