/*
 * http.h - the HTTP/1.1 server: one epoll thread, keep-alive, pipelining,
 * parked requests, timeouts and graceful shutdown.
 *
 * The server knows nothing of discovery: it parses requests (with
 * libhttp-parser), hands each complete one to a handler, and writes the
 * handler's reply. A handler either replies at once (http_reply) or parks
 * the request (http_park) and replies later from another callback on the
 * same thread, e.g. when a registry event wakes it. While a request is
 * parked, later pipelined requests on that connection wait their turn, so
 * answers always leave in request order.
 *
 * Costs by design: a parked request holds its socket and its connection
 * struct (a few hundred bytes); request buffers are released as soon as the
 * handler has run. Timeouts live in one FIFO list per kind (idle, request,
 * write, parked): every entry of a list has the same duration, so deadlines
 * are in insertion order and checking one is O(1).
 */
#ifndef DISCO_SERVER_HTTP_H
#define DISCO_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on what a client may send. */
#define HTTP_MAX_HEADER_BYTES (16 * 1024) /* request line + headers: 431 */
#define HTTP_MAX_BODY_BYTES (1024 * 1024) /* 413 */
/* Keep-alive connections idle longer than Go's 90 s client pool timeout, so a
 * member never sends a request on a socket disco is closing. */
#define HTTP_IDLE_TIMEOUT_MS (120 * 1000)
/* From a request's first byte to its last (slow-sender bound). */
#define HTTP_REQUEST_TIMEOUT_MS (15 * 1000)
/* How long a client may take to read an answer. */
#define HTTP_WRITE_TIMEOUT_MS (30 * 1000)
/* On SIGTERM: how long open connections get to finish. */
#define HTTP_SHUTDOWN_GRACE_MS (5 * 1000)

typedef struct http_server http_server_t;
typedef struct http_conn http_conn_t;

/* A complete request. Valid only during the handler call. */
typedef struct http_request {
    int method;              /* enum http_method from http_parser.h */
    const char *method_name; /* "GET", ... */
    const char *path;        /* raw, still percent-encoded, NUL-terminated */
    size_t path_len;
    const char *query; /* raw, without '?', NUL-terminated ("" if none) */
    size_t query_len;
    const char *body; /* NUL-terminated ("" if none) */
    size_t body_len;
    const char *content_type; /* "" if absent */
    const char *host;         /* "" if absent */
    const char *peer;         /* the client's address, for logs and limits */
    http_conn_t *conn;
} http_request_t;

typedef struct http_reply {
    int status;
    const char *content_type; /* NULL: no Content-Type header */
    bool has_etcd_index;      /* adds X-Etcd-Index */
    uint64_t etcd_index;
    const char *extra_headers; /* preformatted "Name: value\r\n" lines, or NULL */
    const char *body;
    size_t body_len;
} http_reply_t;

/* Called for every complete request; must reply or park before returning. */
typedef void (*http_handler_fn)(void *ctx, const http_request_t *req);

/* Why a parked request ends without a reply from its owner. */
enum http_park_end {
    HTTP_PARK_TIMEOUT,  /* the wait timeout passed: the owner must reply now */
    HTTP_PARK_SHUTDOWN, /* the server is stopping: the owner must reply now */
    HTTP_PARK_CLOSED,   /* the client went away: the owner must not reply */
};
typedef void (*http_park_fn)(http_conn_t *c, void *ctx, enum http_park_end why);

typedef struct http_server_config {
    const char *addr;         /* "host:port", ":port" or "[v6]:port" */
    uint64_t wait_timeout_ms; /* parked requests end after this */
    http_handler_fn handler;
    void *handler_ctx;
    /* Called on every loop turn with the wall clock; returns the next
     * wall-clock instant it wants to run at (0: no wish). Drives TTLs. */
    int64_t (*tick)(void *ctx, int64_t now_ns);
    void *tick_ctx;
    /* An extra file descriptor to watch (-1: none): on_notify(tick_ctx) runs
     * when it becomes readable. The store's "durable" signal. */
    int notify_fd;
    void (*on_notify)(void *ctx);
} http_server_config_t;

/*
 * Binds and listens. Returns NULL with a message in `err` (256 bytes) when
 * the address is bad or busy.
 */
http_server_t *http_server_new(const http_server_config_t *cfg, char *err);
/* The bound address as "host:port" (useful with port 0). */
const char *http_server_address(const http_server_t *srv);
/*
 * Runs until SIGTERM or SIGINT, then stops accepting, ends parked requests
 * (HTTP_PARK_SHUTDOWN), lets answers drain for up to HTTP_SHUTDOWN_GRACE_MS
 * and returns 0. Returns -errno if the loop itself fails.
 */
int http_server_run(http_server_t *srv);
void http_server_free(http_server_t *srv);

/* Open connections and parked requests right now. */
size_t http_server_connection_count(const http_server_t *srv);

/* Answers the connection's current request. */
void http_reply(http_conn_t *c, const http_reply_t *r);
/* Shorthand for a small text or JSON answer. */
void http_reply_simple(http_conn_t *c, int status, const char *content_type, const char *body,
                       size_t body_len);
/*
 * Parks the current request: `on_end` fires once if it ends otherwise than
 * by http_reply (see enum http_park_end). The wait timeout starts now, also
 * when an already parked request is parked again with a new owner.
 */
void http_park(http_conn_t *c, http_park_fn on_end, void *ctx);

/* The standard reason phrase of a status code. */
const char *http_status_text(int status);

#endif
