/*
 * fuzz_tls.c - the HTTP server through the TLS transport.
 *
 * The input's first byte picks the path; the rest is what one client
 * sends on one connection, adopted as a TLS connection (the server's
 * certificate is made at startup, ECDSA P-256, self-signed):
 *   even: a real OpenSSL client on the other end of the socketpair does
 *     the handshake and sends the bytes encrypted, so they reach the same
 *     connection code, parser and handlers as fuzz_http's, decrypted by
 *     the transport (record boundaries, partial writes, held and parked
 *     answers, the client's close_notify then half-close);
 *   odd: the bytes go raw, no TLS at all: the transport's first-byte
 *     check, the plain-HTTP refusal, and OpenSSL refusing garbage.
 *
 * Checked beyond "no crash, leak or undefined behaviour": over TLS, what
 * comes back decrypts to well-framed HTTP/1.1 answers, each matched to a
 * request of the input (fuzz_each_request_answer aborts otherwise); raw,
 * whatever comes back is a TLS alert or nothing, or, when the client
 * spoke first with an upper-case letter (plain HTTP), exactly the 400
 * that says so.
 */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz_world.h"
#include "server/transport_tls.h"

/* Loop turns an input may take: before everything is sent and answered,
 * and after the half-close. Each waits at most 1 ms. */
#define MAX_TURNS_BEFORE_CLOSE 150
#define MAX_TURNS_AFTER_CLOSE 100

static tls_ctx_t *server_tls;
static SSL_CTX *client_ctx;

/* A self-signed P-256 certificate and its key, written to temporary
 * files for tls_ctx_new, which reads files as `disco serve` does. */
static void make_server_tls(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!key || !x)
        abort();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"fuzz", -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509_set_pubkey(x, key);
    if (!X509_sign(x, key, EVP_sha256()))
        abort();
    char cert_path[] = "/tmp/disco-fuzz-cert-XXXXXX", key_path[] = "/tmp/disco-fuzz-key-XXXXXX";
    int cfd = mkstemp(cert_path), kfd = mkstemp(key_path);
    FILE *cf = cfd >= 0 ? fdopen(cfd, "w") : NULL, *kf = kfd >= 0 ? fdopen(kfd, "w") : NULL;
    if (!cf || !kf || !PEM_write_X509(cf, x) ||
        !PEM_write_PrivateKey(kf, key, NULL, NULL, 0, NULL, NULL))
        abort();
    fclose(cf);
    fclose(kf);
    char err[256];
    tls_files_t files = {.cert_path = cert_path, .key_path = key_path};
    server_tls = tls_ctx_new(&files, err);
    unlink(cert_path);
    unlink(key_path);
    if (!server_tls) {
        fprintf(stderr, "fuzz_tls: %s\n", err);
        abort();
    }
    X509_free(x);
    EVP_PKEY_free(key);
    client_ctx = SSL_CTX_new(TLS_client_method());
    if (!client_ctx)
        abort();
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    static const unsigned char alpn[] = "\x02h2\x08http/1.1";
    SSL_CTX_set_alpn_protos(client_ctx, alpn, sizeof alpn - 1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    make_server_tls();
    return 0;
}

/* Reads what the server sent, decrypted, into `out`; false once the
 * server's stream has ended (or failed). */
static bool client_read(SSL *cl, buf_t *out)
{
    char chunk[16384];
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(cl, chunk, sizeof chunk);
        if (n > 0) {
            buf_append(out, chunk, (size_t)n);
            continue;
        }
        int e = SSL_get_error(cl, n);
        ERR_clear_error();
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
    }
}

static void over_tls(fuzz_world_t *w, int fd, const uint8_t *data, size_t size,
                     const fuzz_requests_t *reqs, buf_t *out)
{
    SSL *cl = SSL_new(client_ctx);
    if (!cl || SSL_set_fd(cl, fd) != 1)
        abort();
    SSL_set_connect_state(cl);
    bool handshaken = false, open = true, half_closed = false;
    size_t sent = 0;
    int after_close = 0;
    for (int turn = 0; open && turn < MAX_TURNS_BEFORE_CLOSE + MAX_TURNS_AFTER_CLOSE; turn++) {
        ERR_clear_error();
        if (!handshaken) {
            int rc = SSL_do_handshake(cl);
            handshaken = rc == 1;
            if (rc <= 0) {
                int e = SSL_get_error(cl, rc);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                    abort(); /* the server's handshake must succeed */
            }
        }
        if (handshaken && sent < size) {
            int n = SSL_write(cl, data + sent, (int)(size - sent > 4000 ? 4000 : size - sent));
            if (n > 0)
                sent += (size_t)n;
        }
        if (handshaken)
            open = client_read(cl, out);
        bool answered = fuzz_each_request_answer(out, reqs, true, NULL, NULL) >= reqs->n_complete;
        if (handshaken && sent == size && !half_closed &&
            (answered || turn >= MAX_TURNS_BEFORE_CLOSE)) {
            ERR_clear_error();
            (void)SSL_shutdown(cl); /* close_notify, then the FIN */
            shutdown(fd, SHUT_WR);
            half_closed = true;
        }
        if (half_closed && ++after_close > MAX_TURNS_AFTER_CLOSE)
            break;
        fuzz_world_turn(w, 1, true);
    }
    ERR_clear_error();
    SSL_free(cl);
}

/* Raw bytes to the TLS port: sent, half-closed, and what comes back
 * gathered until the server closes. */
static void raw(fuzz_world_t *w, int fd, const uint8_t *data, size_t size, buf_t *out)
{
    size_t sent = 0;
    bool half_closed = false;
    for (int turn = 0; turn < MAX_TURNS_BEFORE_CLOSE + MAX_TURNS_AFTER_CLOSE; turn++) {
        if (sent < size) {
            ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
        }
        if (sent == size && !half_closed) {
            shutdown(fd, SHUT_WR);
            half_closed = true;
        }
        char chunk[4096];
        ssize_t n;
        while ((n = recv(fd, chunk, sizeof chunk, 0)) > 0)
            buf_append(out, chunk, (size_t)n);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            return; /* the server closed */
        fuzz_world_turn(w, 1, false);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    bool is_raw = data[0] & 1;
    data++;
    size--;
    static fuzz_requests_t reqs; /* large: not on the stack */
    fuzz_parse_requests(data, size, &reqs);
    fuzz_world_t w;
    if (fuzz_world_init(&w, true) != 0)
        abort();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    if (http_server_adopt_tls(w.srv, sv[1], server_tls) != 0)
        abort();
    buf_t out = BUF_INIT;
    if (is_raw) {
        raw(&w, sv[0], data, size, &out);
        if (buf_failed(&out))
            abort();
        bool plain = size > 0 && data[0] >= 'A' && data[0] <= 'Z';
        if (plain && out.len && strncmp(out.data, "HTTP/1.1 400 ", 13) != 0)
            abort(); /* plain HTTP gets the plain 400, nothing else */
        if (!plain && out.len && (unsigned char)out.data[0] != 0x15)
            abort(); /* anything else gets a TLS alert or nothing */
    } else {
        over_tls(&w, sv[0], data, size, &reqs, &out);
        if (buf_failed(&out))
            abort();
        fuzz_each_request_answer(&out, &reqs, true, NULL, NULL); /* aborts if malformed */
    }
    buf_free(&out);
    close(sv[0]);
    fuzz_world_free(&w);
    return 0;
}
