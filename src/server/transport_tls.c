/*
 * transport_tls.c - TLS 1.2 and 1.3 over OpenSSL behind the transport
 * seam: the certificate material (load, reload), the handshake driven from
 * recv inside the event loop, plain HTTP on the TLS port told apart from a
 * ClientHello, and ALPN.
 *
 * Policy (docs/decisions.md, "TLS"): TLS 1.2 and 1.3 only; for TLS 1.2 only
 * ECDHE key exchange with AEAD ciphers (Mozilla's "intermediate" list
 * without DHE); TLS 1.3's suites are OpenSSL's defaults, all AEAD. No
 * renegotiation (a client-driven CPU cost, and TLS 1.3 has none), no
 * compression (CRIME). A client closing without close_notify is a plain
 * EOF, as for TCP: most HTTP clients do that.
 *
 * Memory: SSL_MODE_RELEASE_BUFFERS frees a connection's record buffers
 * while it has nothing in flight, so an idle keep-alive or a parked
 * long-poll holds only OpenSSL's per-connection state.
 */
#include "server/transport_tls.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"

#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
/* Ties resumed sessions to this service, which OpenSSL requires once
 * client certificates are verified. */
#define SESSION_ID_CONTEXT "disco"
/* The most plaintext one TLS record carries. */
#define TLS_MAX_RECORD_PLAINTEXT_BYTES SSL3_RT_MAX_PLAIN_LENGTH
/* The first byte of a TLS record that carries a handshake message. */
#define TLS_RECORD_HANDSHAKE 0x16

/*
 * What ALPN offers, in wire form (length-prefixed names), preferred first:
 * HTTP/2 (gRPC needs it: etcd's v3 clients) and HTTP/1.1. A client that
 * agreed on h2 starts with the HTTP/2 preface, which conn.c recognises as
 * on a plain connection.
 */
static const unsigned char alpn_offer[] = "\x02h2\x08http/1.1";

struct tls_ctx {
    SSL_CTX *ssl_ctx; /* the current material; connections hold their own reference */
    char *cert_path, *key_path, *client_ca_path;
};

/* ---- errors ------------------------------------------------------------- */

/* OpenSSL's last queued error as text (the queue is emptied), or `dflt`. */
static void ssl_error_text(char *out, size_t len, const char *dflt)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    if (last)
        ERR_error_string_n(last, out, len);
    else
        snprintf(out, len, "%s", dflt);
}

/* ---- the material ------------------------------------------------------- */

/* Only the protocol this server speaks on TLS is agreed to; a client
 * offering nothing we speak gets no ALPN answer and HTTP/1.1. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    unsigned char *chosen = NULL;
    if (SSL_select_next_proto(&chosen, outlen, alpn_offer, sizeof alpn_offer - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

/* An SSL_CTX from the files, or NULL with the reason in `err`. */
static SSL_CTX *build_ssl_ctx(const tls_ctx_t *t, char *err)
{
    char why[200];
    ERR_clear_error();
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    if (!c) {
        ssl_error_text(why, sizeof why, "out of memory");
        snprintf(err, 256, "cannot set up TLS: %s", why);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Partial writes and a moving buffer: conn.c retries a write with the
     * bytes left, possibly from another buffer (a shared answer first, its
     * unsent rest copied into the connection's output). */
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_set_cipher_list(c, TLS12_CIPHERS) != 1) {
        ssl_error_text(why, sizeof why, "no cipher");
        snprintf(err, 256, "cannot set the TLS 1.2 ciphers: %s", why);
        goto fail;
    }
    SSL_CTX_set_session_id_context(c, (const unsigned char *)SESSION_ID_CONTEXT,
                                   sizeof SESSION_ID_CONTEXT - 1);
    /* One TLS 1.3 session ticket after a handshake, not OpenSSL's two: a
     * client keeps one per server (Go's crypto/tls, which etcd builds with,
     * replaces it; so do Python's and curl's), and each ticket is the session
     * encoded and encrypted, about 6% of a full handshake's CPU (bench/RESULTS.md). */
    SSL_CTX_set_num_tickets(c, 1);
    SSL_CTX_set_alpn_select_cb(c, alpn_select, NULL);
    if (SSL_CTX_use_certificate_chain_file(c, t->cert_path) != 1) {
        ssl_error_text(why, sizeof why, "unreadable");
        snprintf(err, 256, "cannot load the certificate %s: %s", t->cert_path, why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c, t->key_path, SSL_FILETYPE_PEM) != 1) {
        ssl_error_text(why, sizeof why, "unreadable");
        snprintf(err, 256, "cannot load the key %s: %s", t->key_path, why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        ssl_error_text(why, sizeof why, "mismatch");
        snprintf(err, 256, "the key %s does not match the certificate %s: %s", t->key_path,
                 t->cert_path, why);
        goto fail;
    }
    if (t->client_ca_path) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->client_ca_path);
        if (!names || SSL_CTX_load_verify_locations(c, t->client_ca_path, NULL) != 1) {
            if (names)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            ssl_error_text(why, sizeof why, "no certificate in it");
            snprintf(err, 256, "cannot load the client CA %s: %s", t->client_ca_path, why);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(c, names); /* takes `names` */
        /* Mutual TLS: no certificate, or one that does not chain to the
         * CA, fails the handshake (as etcd's --client-cert-auth). */
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return c;
fail:
    SSL_CTX_free(c);
    return NULL;
}

tls_ctx_t *tls_ctx_new(const tls_files_t *files, char *err)
{
    assert(files->cert_path && files->key_path);
    tls_ctx_t *t = calloc(1, sizeof *t);
    bool failed = !t;
    if (t) {
        t->cert_path = buf_strdup_or_null(files->cert_path, &failed);
        t->key_path = buf_strdup_or_null(files->key_path, &failed);
        t->client_ca_path = buf_strdup_or_null(files->client_ca_path, &failed);
    }
    if (failed) {
        snprintf(err, 256, "out of memory");
        tls_ctx_free(t);
        return NULL;
    }
    t->ssl_ctx = build_ssl_ctx(t, err);
    if (!t->ssl_ctx) {
        tls_ctx_free(t);
        return NULL;
    }
    return t;
}

int tls_ctx_reload(tls_ctx_t *t, char *summary, char *err)
{
    SSL_CTX *fresh = build_ssl_ctx(t, err);
    if (!fresh)
        return -1;
    /* Open connections hold references to the old context: it lives on
     * until the last of them closes. */
    SSL_CTX_free(t->ssl_ctx);
    t->ssl_ctx = fresh;
    tls_ctx_describe(t, summary, 256);
    return 0;
}

void tls_ctx_describe(const tls_ctx_t *t, char *out, size_t len)
{
    X509 *x = SSL_CTX_get0_certificate(t->ssl_ctx);
    char subject[128] = "?", serial[80] = "?", not_after[32] = "?";
    if (x) {
        X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof subject);
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        if (hex)
            snprintf(serial, sizeof serial, "%s", hex);
        OPENSSL_free(hex);
        BN_free(bn);
        struct tm tm;
        if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
            strftime(not_after, sizeof not_after, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    snprintf(out, len, "certificate %s (subject %s, serial %s, not after %s), key %s%s%s",
             t->cert_path, subject, serial, not_after, t->key_path,
             t->client_ca_path ? ", client certificates from " : "",
             t->client_ca_path ? t->client_ca_path : "");
}

bool tls_ctx_requires_client_cert(const tls_ctx_t *t)
{
    return t->client_ca_path != NULL;
}

void tls_ctx_free(tls_ctx_t *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ssl_ctx);
    free(t->cert_path);
    free(t->key_path);
    free(t->client_ca_path);
    free(t);
}

/* ---- the transport ------------------------------------------------------ */

static const transport_ops_t tls_ops;

/*
 * Before the first byte of the handshake: a TLS client starts with a
 * handshake record; an HTTP client with a method, in capitals. Only that
 * one byte is peeked; anything else goes to OpenSSL, which refuses it.
 * Returns 0 (TLS, or let OpenSSL judge), -EPROTO (plain HTTP), 1 for EOF,
 * or -EAGAIN / -errno.
 */
static int peek_first_byte(transport_t *t)
{
    unsigned char b;
    for (;;) {
        ssize_t n = recv(t->fd, &b, 1, MSG_PEEK);
        if (n == 1)
            return b >= 'A' && b <= 'Z' ? -EPROTO : 0;
        if (n == 0)
            return 1;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

/* After SSL_accept/read/write returned `rc` <= 0: -EAGAIN with `wants`
 * set, 0 for the end of the stream, or -errno. */
static ssize_t tls_failure(transport_t *t, SSL *ssl, int rc, const char *what)
{
    int e = SSL_get_error(ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ: t->wants = EPOLLIN; return -EAGAIN;
    case SSL_ERROR_WANT_WRITE: t->wants = EPOLLOUT; return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL: {
        int err = errno ? errno : ECONNRESET;
        ERR_clear_error();
        return err == EWOULDBLOCK ? -EAGAIN : -err;
    }
    default: {
        char why[200];
        ssl_error_text(why, sizeof why, "protocol error");
        log_debug("TLS %s failed on fd %d: %s", what, t->fd, why);
        return -ECONNABORTED;
    }
    }
}

/* One call of SSL_connect or SSL_accept (`step`), with tls_handshake's
 * answers: 0 with `is_handshaking` cleared once done, else tls_failure's. */
static ssize_t tls_handshake_step(transport_t *t, SSL *ssl, int (*step)(SSL *))
{
    ERR_clear_error();
    errno = 0;
    int rc = step(ssl);
    if (rc != 1)
        return tls_failure(t, ssl, rc, "handshake");
    t->is_handshaking = false;
    t->wants = 0;
    return 0;
}

/* Drives the handshake. Done: 0 with `is_handshaking` cleared; not done:
 * what recv answers (-EAGAIN, 0 for the end of the stream, -errno). */
static ssize_t tls_handshake(transport_t *t)
{
    SSL *ssl = t->state;
    if (!SSL_is_server(ssl)) {
        /* A client (transport_tls_client_init): it speaks first. */
        return tls_handshake_step(t, ssl, SSL_connect);
    }
    if (BIO_number_read(SSL_get_rbio(ssl)) == 0) {
        int rc = peek_first_byte(t);
        if (rc == -EPROTO) {
            /* Plain HTTP: become a plain transport over the same socket,
             * with the request still unread, so that the refusal goes
             * out in plain HTTP and the request is read and dropped. */
            SSL_free(ssl);
            transport_plain_init(t, t->fd);
            return -EPROTO;
        }
        if (rc != 0) {
            t->wants = 0;
            return rc == 1 ? 0 : rc; /* EOF before any byte: the end of the stream */
        }
    }
    return tls_handshake_step(t, ssl, SSL_accept);
}

static ssize_t tls_recv(transport_t *t, char *buf, size_t len)
{
    if (t->is_handshaking) {
        ssize_t rc = tls_handshake(t);
        if (rc != 0 || t->is_handshaking)
            return rc;
    }
    SSL *ssl = t->state;
    /* Fill the buffer as recv(2) would: SSL_read returns one record at a
     * time. Another record is read only while a whole one fits: a record
     * split across calls would leave its rest inside OpenSSL, where epoll
     * cannot see it (read-ahead is off, so nothing else is ever kept
     * there). The connection reads READ_CHUNK_BYTES (64 KiB) at a time.
     * Only after a full record: a shorter one (a request, a small body's
     * end) is most often the last the client sent, and asking for another
     * would cost a read(2) that finds the socket empty, one in three of a
     * keep-alive GET's. What does follow is still in the socket, where the
     * level-triggered epoll reports it (conn.c reads again only after a
     * full READ_CHUNK_BYTES as well). */
    size_t got = 0;
    while (got == 0 || len - got >= TLS_MAX_RECORD_PLAINTEXT_BYTES) {
        ERR_clear_error();
        errno = 0;
        int chunk = len - got > INT_MAX ? INT_MAX : (int)(len - got);
        int n = SSL_read(ssl, buf + got, chunk);
        if (n > 0) {
            got += (size_t)n;
            if ((size_t)n < TLS_MAX_RECORD_PLAINTEXT_BYTES)
                break;
            continue;
        }
        if (got > 0)
            break; /* the condition comes back on the next call */
        return tls_failure(t, ssl, n, "read");
    }
    t->wants = 0;
    return (ssize_t)got;
}

static ssize_t tls_send(transport_t *t, const char *buf, size_t len)
{
    if (t->is_handshaking) {
        /* Nothing is written before the handshake completes: no answer
         * exists before a request has been read. */
        ssize_t rc = tls_handshake(t);
        if (rc < 0 && rc != -EAGAIN)
            return rc;
        if (t->is_handshaking)
            return rc == 0 ? -EPIPE : -EAGAIN;
    }
    SSL *ssl = t->state;
    ERR_clear_error();
    errno = 0;
    int n = SSL_write(ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    if (n > 0) {
        t->wants = 0;
        return n;
    }
    ssize_t rc = tls_failure(t, ssl, n, "write");
    return rc == 0 ? -EPIPE : rc;
}

static void tls_shutdown_write(transport_t *t)
{
    SSL *ssl = t->state;
    if (!t->is_handshaking) {
        /* close_notify, best effort: a full socket buffer loses it, and
         * the FIN below still ends the stream. */
        ERR_clear_error();
        (void)SSL_shutdown(ssl);
        ERR_clear_error();
    }
    shutdown(t->fd, SHUT_WR);
}

static void tls_close(transport_t *t)
{
    SSL_free(t->state);
    t->state = NULL;
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
}

static const transport_ops_t tls_ops = {
    .recv = tls_recv,
    .send = tls_send,
    .shutdown_write = tls_shutdown_write,
    .close = tls_close,
    .name = "tls",
};

int transport_tls_init(transport_t *t, int fd, tls_ctx_t *ctx)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ssl_ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        close(fd);
        return -ENOMEM;
    }
    SSL_set_accept_state(ssl);
    t->ops = &tls_ops;
    t->fd = fd;
    t->wants = 0;
    t->is_handshaking = true;
    t->state = ssl;
    return 0;
}

const char *transport_tls_alpn(const transport_t *t)
{
    if (t->ops != &tls_ops || t->is_handshaking)
        return NULL;
    const unsigned char *p;
    unsigned int n;
    SSL_get0_alpn_selected(t->state, &p, &n);
    if (n == 8 && memcmp(p, "http/1.1", 8) == 0)
        return "http/1.1";
    if (n == 2 && memcmp(p, "h2", 2) == 0)
        return "h2";
    return NULL;
}

/* ---- the client side ---------------------------------------------------- */

/*
 * The same policy as the server's (TLS 1.2 and 1.3, the ECDHE+AEAD list,
 * no renegotiation or compression); the server's certificate must chain to
 * `ca_path` (or the system's store) and name the host dialed.
 */
tls_ctx_t *tls_client_ctx_new(const tls_client_files_t *files, char *err)
{
    char why[200];
    bool failed = false;
    tls_ctx_t *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    t->cert_path = buf_strdup_or_null(files->cert_path, &failed);
    t->key_path = buf_strdup_or_null(files->key_path, &failed);
    t->client_ca_path = buf_strdup_or_null(files->ca_path, &failed); /* here: the servers' CA */
    ERR_clear_error();
    SSL_CTX *c = failed ? NULL : SSL_CTX_new(TLS_client_method());
    if (!c) {
        ssl_error_text(why, sizeof why, "out of memory");
        snprintf(err, 256, "cannot set up TLS: %s", why);
        goto fail;
    }
    t->ssl_ctx = c;
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_set_cipher_list(c, TLS12_CIPHERS) != 1) {
        ssl_error_text(why, sizeof why, "no cipher");
        snprintf(err, 256, "cannot set the TLS 1.2 ciphers: %s", why);
        goto fail;
    }
    if (files->alpn && SSL_CTX_set_alpn_protos(c, (const unsigned char *)files->alpn,
                                               (unsigned)strlen(files->alpn)) != 0) {
        snprintf(err, 256, "cannot set ALPN");
        goto fail;
    }
    int ok = files->ca_path ? SSL_CTX_load_verify_locations(c, files->ca_path, NULL)
                            : SSL_CTX_set_default_verify_paths(c);
    if (ok != 1) {
        ssl_error_text(why, sizeof why, "no certificate in it");
        snprintf(err, 256, "cannot load the CA %s: %s",
                 files->ca_path ? files->ca_path : "(system)", why);
        goto fail;
    }
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    if ((files->cert_path != NULL) != (files->key_path != NULL)) {
        snprintf(err, 256, "a client certificate needs its key, and a key its certificate");
        goto fail;
    }
    if (files->cert_path) {
        if (SSL_CTX_use_certificate_chain_file(c, files->cert_path) != 1) {
            ssl_error_text(why, sizeof why, "unreadable");
            snprintf(err, 256, "cannot load the certificate %s: %s", files->cert_path, why);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(c, files->key_path, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(c) != 1) {
            ssl_error_text(why, sizeof why, "unreadable or not the certificate's");
            snprintf(err, 256, "cannot load the key %s: %s", files->key_path, why);
            goto fail;
        }
    }
    return t;
fail:
    tls_ctx_free(t);
    return NULL;
}

int transport_tls_client_init(transport_t *t, int fd, tls_ctx_t *ctx, const char *host)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ssl_ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
        goto fail;
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    /* The name (or address) the certificate must carry; SNI for names only
     * (RFC 6066 forbids literal addresses there). */
    if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1
              : (SSL_set1_host(ssl, host) != 1 || SSL_set_tlsext_host_name(ssl, host) != 1))
        goto fail;
    SSL_set_connect_state(ssl);
    t->ops = &tls_ops;
    t->fd = fd;
    t->wants = EPOLLOUT; /* the ClientHello goes first */
    t->is_handshaking = true;
    t->state = ssl;
    return 0;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    close(fd);
    return -ENOMEM;
}
