/*
 * httpc.c - a blocking HTTP/1.1 client for the CLI subcommands; see
 * httpc.h. One request per connection, so an answer ends at
 * Content-Length or at the server's close, and nothing is pooled.
 */
#include "cmd/httpc.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"

int httpc_parse_url(const char *url, httpc_url_t *out)
{
    memset(out, 0, sizeof *out);
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0) {
        p = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        p = url + 8;
        out->is_https = 1;
    } else {
        return -1;
    }
    size_t auth_len = strcspn(p, "/?#");
    const char *auth_end = p + auth_len;
    const char *host = p, *host_end, *port = NULL;
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', auth_len);
        if (!host_end)
            return -1;
        if (host_end + 1 < auth_end) {
            if (host_end[1] != ':')
                return -1;
            port = host_end + 2;
        }
    } else {
        const char *colon = memchr(p, ':', auth_len);
        host_end = colon ? colon : auth_end;
        port = colon ? colon + 1 : NULL;
    }
    if (host_end == host || (port && port == auth_end))
        return -1;
    out->host = strndup(host, (size_t)(host_end - host));
    out->port =
        port ? strndup(port, (size_t)(auth_end - port)) : strdup(out->is_https ? "443" : "80");
    size_t path_len = strcspn(auth_end, "#");
    out->path = path_len && *auth_end == '/' ? strndup(auth_end, path_len) : NULL;
    if (!out->path && out->host && out->port) {
        /* "http://h?x" or "http://h": the path is "/" */
        buf_t b = BUF_INIT;
        buf_putc(&b, '/');
        buf_append(&b, auth_end, path_len);
        out->path = buf_failed(&b) ? NULL : buf_steal(&b);
        buf_free(&b);
    }
    if (!out->host || !out->port || !out->path) {
        httpc_url_free(out);
        return -1;
    }
    for (const char *c = out->port; *c; c++)
        if (*c < '0' || *c > '9') {
            httpc_url_free(out);
            return -1;
        }
    return 0;
}

void httpc_url_free(httpc_url_t *u)
{
    free(u->host);
    free(u->port);
    free(u->path);
    memset(u, 0, sizeof *u);
}

void httpc_response_free(httpc_response_t *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Connects to the first address of host:port that answers before the
 * deadline. Returns the (blocking) socket or -1 with `err` set. */
static int connect_before(const httpc_url_t *u, long long deadline_ms, char *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(u->host, u->port, &hints, &res);
    if (rc != 0) {
        snprintf(err, 256, "cannot resolve %s: %s", u->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, last_errno = ETIMEDOUT;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            last_errno = errno;
            close(fd);
            fd = -1;
            continue;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        long long left = deadline_ms - now_ms();
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (left <= 0 || poll(&pfd, 1, (int)left) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
            last_errno = soerr ? soerr : ETIMEDOUT;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, 256, "cannot connect to %s port %s: %s", u->host, u->port,
                 strerror(last_errno));
        return -1;
    }
    /* From here on: blocking I/O bounded by socket timeouts. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    long long left = deadline_ms - now_ms();
    if (left < 1)
        left = 1;
    struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

/* The last OpenSSL error as text, or `fallback`. */
static const char *tls_reason(const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : fallback;
}

/* A TLS session over `fd` that verifies the server against the trust
 * store (or `cacert`) and its name; NULL with `err` set. */
static SSL *tls_start(int fd, const httpc_url_t *u, const httpc_tls_t *tls, SSL_CTX **ctx_out,
                      char *err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    *ctx_out = ctx;
    if (!ctx) {
        snprintf(err, 256, "TLS: out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* One request per connection: the server's close ends the answer, with
     * or without close_notify; Content-Length still catches a cut one. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = tls && tls->cacert ? SSL_CTX_load_verify_locations(ctx, tls->cacert, NULL)
                                : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        snprintf(err, 256, "TLS: cannot load CA certificates %s: %s",
                 tls && tls->cacert ? tls->cacert : "(system)", tls_reason("unreadable"));
        return NULL;
    }
    if (tls && tls->cert) {
        const char *key = tls->key ? tls->key : tls->cert;
        if (SSL_CTX_use_certificate_chain_file(ctx, tls->cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            snprintf(err, 256, "TLS: cannot use client certificate %s / key %s: %s", tls->cert, key,
                     tls_reason("unreadable"));
            return NULL;
        }
    }
    ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
        snprintf(err, 256, "TLS: out of memory");
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_tlsext_host_name(ssl, u->host);
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set1_host(ssl, u->host) != 1) {
        snprintf(err, 256, "TLS: cannot check the name %s", u->host);
        SSL_free(ssl);
        return NULL;
    }
    if (SSL_connect(ssl) != 1) {
        long vr = SSL_get_verify_result(ssl);
        snprintf(err, 256, "TLS handshake with %s failed: %s", u->host,
                 vr != X509_V_OK ? X509_verify_cert_error_string(vr)
                                 : tls_reason("connection closed"));
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

static int io_send(int fd, SSL *ssl, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = ssl ? SSL_write(ssl, p, (int)n) : send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Bytes read (0 at the end of the answer), or -1. */
static ssize_t io_recv(int fd, SSL *ssl, char *p, size_t n)
{
    if (!ssl)
        return recv(fd, p, n, 0);
    int r = SSL_read(ssl, p, (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(ssl, r);
    return e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL ? 0 : -1;
}

/* Splits the raw answer into status and body. */
static enum httpc_error parse_answer(buf_t *raw, httpc_response_t *out, char *err)
{
    const char *d = buf_cstr(raw);
    const char *end_head = strstr(d, "\r\n\r\n");
    int status = 0;
    if (!end_head || sscanf(d, "HTTP/1.%*d %d", &status) != 1 || status < 100 || status > 999) {
        snprintf(err, 256, "the server's answer is not HTTP");
        return HTTPC_E_ANSWER;
    }
    const char *body = end_head + 4;
    size_t body_len = raw->len - (size_t)(body - d);
    /* Content-Length, when given, must match: a shorter answer was cut. */
    for (const char *h = strstr(d, "\r\n"); h && h < end_head; h = strstr(h + 2, "\r\n")) {
        if (strncasecmp(h + 2, "Content-Length:", 15) == 0) {
            unsigned long long cl = strtoull(h + 17, NULL, 10);
            if (cl > body_len) {
                snprintf(err, 256, "the server's answer was cut short");
                return HTTPC_E_ANSWER;
            }
            body_len = (size_t)cl;
        }
        if (strncasecmp(h + 2, "Transfer-Encoding:", 18) == 0) {
            snprintf(err, 256, "the server sent a chunked answer (not supported)");
            return HTTPC_E_ANSWER;
        }
    }
    out->body = malloc(body_len + 1);
    if (!out->body) {
        snprintf(err, 256, "out of memory");
        return HTTPC_E_NOMEM;
    }
    memcpy(out->body, body, body_len);
    out->body[body_len] = '\0';
    out->body_len = body_len;
    out->status = status;
    return HTTPC_OK;
}

enum httpc_error httpc_request(const char *method, const char *url, const char *form,
                               const httpc_tls_t *tls, int timeout_ms, httpc_response_t *out,
                               char *err)
{
    memset(out, 0, sizeof *out);
    httpc_url_t u;
    if (httpc_parse_url(url, &u) != 0) {
        snprintf(err, 256, "\"%s\" is not an http:// or https:// URL", url);
        return HTTPC_E_URL;
    }
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : HTTPC_DEFAULT_TIMEOUT_MS);
    enum httpc_error rc = HTTPC_OK;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    buf_t req = BUF_INIT, raw = BUF_INIT;
    int fd = connect_before(&u, deadline, err);
    if (fd < 0) {
        rc = HTTPC_E_CONNECT;
        goto done;
    }
    if (u.is_https && !(ssl = tls_start(fd, &u, tls, &ctx, err))) {
        rc = HTTPC_E_TLS;
        goto done;
    }
    bool v6 = strchr(u.host, ':') != NULL;
    buf_printf(&req, "%s %s HTTP/1.1\r\nHost: %s%s%s:%s\r\n", method, u.path, v6 ? "[" : "", u.host,
               v6 ? "]" : "", u.port);
    buf_puts(&req, "User-Agent: disco-cli\r\nAccept: application/json, text/plain\r\n"
                   "Connection: close\r\n");
    if (form)
        buf_printf(&req,
                   "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %zu\r\n",
                   strlen(form));
    buf_puts(&req, "\r\n");
    if (form)
        buf_puts(&req, form);
    if (buf_failed(&req)) {
        snprintf(err, 256, "out of memory");
        rc = HTTPC_E_NOMEM;
        goto done;
    }
    if (io_send(fd, ssl, req.data, req.len) != 0) {
        snprintf(err, 256, "cannot send to %s port %s: %s", u.host, u.port,
                 ssl ? tls_reason("TLS write failed") : strerror(errno));
        rc = ssl ? HTTPC_E_TLS : HTTPC_E_CONNECT;
        goto done;
    }
    for (;;) {
        if (buf_reserve(&raw, 16384) != 0) {
            snprintf(err, 256, "out of memory");
            rc = HTTPC_E_NOMEM;
            goto done;
        }
        ssize_t n = io_recv(fd, ssl, raw.data + raw.len, 16384);
        if (n == 0)
            break;
        if (n < 0) {
            snprintf(err, 256, "no answer from %s port %s: %s", u.host, u.port,
                     errno == EAGAIN ? "timed out" : strerror(errno));
            rc = HTTPC_E_CONNECT;
            goto done;
        }
        raw.len += (size_t)n;
        raw.data[raw.len] = '\0'; /* buf_reserve kept room for it; the parse reads a string */
        if (raw.len > HTTPC_MAX_ANSWER_BYTES) {
            snprintf(err, 256, "the answer is larger than %d bytes", HTTPC_MAX_ANSWER_BYTES);
            rc = HTTPC_E_ANSWER;
            goto done;
        }
    }
    if (raw.len == 0) {
        snprintf(err, 256, "%s port %s closed the connection without an answer", u.host, u.port);
        rc = HTTPC_E_CONNECT;
        goto done;
    }
    rc = parse_answer(&raw, out, err);
done:
    if (ssl) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
    }
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    buf_free(&req);
    buf_free(&raw);
    httpc_url_free(&u);
    return rc;
}
