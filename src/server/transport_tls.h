/*
 * transport_tls.h - TLS (OpenSSL) behind the transport seam, and the
 * certificate material connections are made from.
 *
 * A tls_ctx_t holds the server's certificate, key and (optionally) the CA
 * that client certificates must chain to, loaded from files; it can load
 * them again from the same paths (SIGHUP) without touching connections
 * already open, which keep the material they were accepted with (each
 * OpenSSL connection holds a reference to its SSL_CTX).
 *
 * A TLS transport does its handshake inside recv: until it completes,
 * recv answers -EAGAIN (or an error) and never returns bytes, `wants`
 * says which epoll events the handshake waits for, and `is_handshaking`
 * is set so the connection counts the time against its header timeout.
 *
 * Everything here runs on the loop thread; nothing blocks.
 */
#ifndef DISCO_SERVER_TRANSPORT_TLS_H
#define DISCO_SERVER_TRANSPORT_TLS_H

#include <stdbool.h>

#include "server/transport.h"

typedef struct tls_ctx tls_ctx_t;

typedef struct tls_files {
    const char *cert_path;      /* PEM: the certificate, then its chain */
    const char *key_path;       /* PEM: its private key */
    const char *client_ca_path; /* PEM CA bundle; NULL: no client certificates asked */
} tls_files_t;

/*
 * Loads the material named by `files` (the paths are copied). Returns NULL
 * with a one-line reason in `err` (256 bytes): a file that cannot be read,
 * a key that does not match the certificate, out of memory.
 */
tls_ctx_t *tls_ctx_new(const tls_files_t *files, char *err);
/*
 * Loads the material again from the same paths. On success new
 * connections get it from now on and `summary` (256 bytes) describes it;
 * on failure (-1, the reason in `err`) the old material stays in use.
 * Connections already open keep theirs in either case.
 */
int tls_ctx_reload(tls_ctx_t *ctx, char *summary, char *err);
/* One line on the loaded certificate: subject, serial, expiry. */
void tls_ctx_describe(const tls_ctx_t *ctx, char *out, size_t len);
/* Whether client certificates are required (--tls-client-ca). */
bool tls_ctx_requires_client_cert(const tls_ctx_t *ctx);
/* Frees the context; connections still open keep working (refcounted). */
void tls_ctx_free(tls_ctx_t *ctx);

/*
 * A server-side TLS transport over the connected, non-blocking socket
 * `fd`, which it owns from now on (closed by transport_close, or here on
 * failure). Returns 0, or -ENOMEM.
 *
 * recv should be given at least 16 KiB (a whole record): with less, the
 * rest of a record would wait inside OpenSSL, unseen by epoll.
 *
 * recv's extra answer: -EPROTO when the client spoke plain HTTP instead
 * of TLS. The transport has then turned into a plain one (its ops are
 * the plain transport's), so that the caller can write a plain-HTTP
 * refusal, as nginx does ("The plain HTTP request was sent to HTTPS
 * port").
 */
int transport_tls_init(transport_t *t, int fd, tls_ctx_t *ctx);

/*
 * The protocol ALPN chose ("http/1.1"), or NULL (none: HTTP/1.1) or when
 * `t` is no TLS transport or its handshake is not done. Only "http/1.1"
 * is offered today; when the HTTP/2 code exists, "h2" is added to the
 * offer (alpn_select in transport_tls.c) and a connection whose ALPN is
 * "h2" is handed to it once its handshake completes (conn.c,
 * conn_sync_transport).
 */
const char *transport_tls_alpn(const transport_t *t);

/*
 * The client side (disco dialing TLS servers: etcd). A client context holds
 * the CA the servers' certificates must chain to (NULL: the system's
 * store), an optional client certificate and key for mutual TLS, and the
 * ALPN protocols offered in wire form (e.g. "\x02h2"; NULL: none). NULL with
 * a one-line reason in `err` (256 bytes). Freed with tls_ctx_free();
 * tls_ctx_reload()/describe() are for server contexts only.
 */
typedef struct tls_client_files {
    const char *ca_path;
    const char *cert_path;
    const char *key_path;
    const char *alpn;
} tls_client_files_t;
tls_ctx_t *tls_client_ctx_new(const tls_client_files_t *files, char *err);

/*
 * A client-side TLS transport over the connected, non-blocking socket
 * `fd` (owned from now on; closed here on failure). The server's
 * certificate must name `host` (a DNS name, or an IP address in its
 * subjectAltName). The handshake runs inside recv (and send answers
 * -EAGAIN until it is done), driven by the events in `wants`; the caller
 * calls recv once the socket is watched to send the ClientHello. 0, or
 * -ENOMEM. transport_tls_alpn() tells the protocol agreed once done.
 */
int transport_tls_client_init(transport_t *t, int fd, tls_ctx_t *ctx, const char *host);

#endif
