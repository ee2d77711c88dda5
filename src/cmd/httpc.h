/*
 * httpc.h - the small HTTP/1.1 client of `disco new` and `disco status`:
 * one request per connection ("Connection: close"), http:// and https://
 * (OpenSSL), blocking with a deadline. Not for the server: the event loop
 * never calls it.
 */
#ifndef DISCO_CMD_HTTPC_H
#define DISCO_CMD_HTTPC_H

#include <stddef.h>

/* How long a whole request may take (connect, TLS, send, answer). */
#define HTTPC_DEFAULT_TIMEOUT_MS 10000
/* Largest answer read; a token listing is a few KiB. */
#define HTTPC_MAX_ANSWER_BYTES (8 * 1024 * 1024)

/* TLS settings for https:// URLs; any field may be NULL. Without `cacert`
 * the system's trust store is used, which OpenSSL takes from SSL_CERT_FILE
 * (and SSL_CERT_DIR) when set. `cert` and `key` present a client
 * certificate (mutual TLS). */
typedef struct httpc_tls {
    const char *cacert;
    const char *cert;
    const char *key;
} httpc_tls_t;

/* An answer: `body` is NUL-terminated and owned (free with
 * httpc_response_free). */
typedef struct httpc_response {
    int status;
    char *body;
    size_t body_len;
} httpc_response_t;

/* What went wrong when httpc_request returns nonzero. */
enum httpc_error {
    HTTPC_OK = 0,
    HTTPC_E_URL = 1,     /* not an http:// or https:// URL we can use */
    HTTPC_E_CONNECT = 2, /* name not resolved, refused, timed out, reset */
    HTTPC_E_TLS = 3,     /* handshake, certificate or key failure */
    HTTPC_E_ANSWER = 4,  /* the answer is not HTTP we can read, or too big */
    HTTPC_E_NOMEM = 5,
};

/*
 * Sends `method` `url` (with `form`, an application/x-www-form-urlencoded
 * body, when not NULL) and reads the whole answer into `out`. Returns
 * HTTPC_OK, or an error with one line saying why in `err` (256 bytes);
 * `out` is then empty. `timeout_ms` 0: HTTPC_DEFAULT_TIMEOUT_MS.
 */
enum httpc_error httpc_request(const char *method, const char *url, const char *form,
                               const httpc_tls_t *tls, int timeout_ms, httpc_response_t *out,
                               char *err);
void httpc_response_free(httpc_response_t *r);

/* A URL split into its parts; host without brackets. Strings are owned
 * (httpc_url_free). */
typedef struct httpc_url {
    int is_https;
    char *host;
    char *port; /* "80"/"443" when the URL names none */
    char *path; /* from the first '/', query included; "/" when empty */
} httpc_url_t;

/* Returns 0, or -1 when `url` is not an http(s) URL with a host. */
int httpc_parse_url(const char *url, httpc_url_t *out);
void httpc_url_free(httpc_url_t *u);

#endif
