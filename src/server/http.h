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
 * Requests are named by handles (http_req_t), never by connection
 * pointers: an answer that arrives after its client is gone does nothing,
 * and whoever parked a request is told when it ends otherwise.
 *
 * Costs by design: a parked request holds its socket, its connection
 * struct (a few hundred bytes) and a request slot (40 bytes); request
 * buffers are released as soon as the handler has run. Timeouts live in one FIFO list per kind
 * (idle, header, body, write, parked, linger): every entry of a list has the same duration, so
 * deadlines are in insertion order and checking one is O(1).
 *
 * Hostile input: the server refuses, before any handler runs and then
 * closes the connection, a head over max_header_bytes (431), a body over
 * max_body_bytes (413), a head or body that is too slow (408), a method
 * outside allowed_methods (405, with Allow) or unknown (501), a request
 * line that is no request line (a TLS ClientHello: 400), a transfer
 * coding other than a single "chunked" (501), an HTTP version other than
 * 1.x (505), and the request-smuggling shapes: Content-Length with
 * Transfer-Encoding, repeated or malformed Content-Length, obs-fold,
 * whitespace before a header's colon, a missing or repeated Host in
 * HTTP/1.1, control bytes in the target (400). Past max_conns a new
 * connection gets 503 at once. The body of each of these answers comes
 * from the configured error renderer.
 */
#ifndef DISCO_SERVER_HTTP_H
#define DISCO_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/*
 * Limits and timeouts. The DEFAULT_ values apply when the matching field of
 * http_server_config_t is 0; `disco serve` passes its flags (same defaults).
 */
/* Request line + headers, counted as raw bytes: beyond it, 431. */
#define HTTP_DEFAULT_MAX_HEADER_BYTES (16 * 1024)
/* libhttp-parser refuses heads over 80 KiB on its own; stay below it so the
 * configured limit is the one that answers. */
#define HTTP_MAX_HEADER_BYTES_CEILING (64 * 1024)
/* A request body (after chunked decoding): beyond it, 413. */
#define HTTP_DEFAULT_MAX_BODY_BYTES (64 * 1024)
/* Open connections, parked ones included; past it a new connection gets an
 * immediate 503 and is closed. */
#define HTTP_DEFAULT_MAX_CONNS 32768
/* Keep-alive connections idle longer than Go's 90 s client pool timeout, so a
 * member never sends a request on a socket disco is closing. */
#define HTTP_DEFAULT_IDLE_TIMEOUT_MS (120 * 1000)
/* From a request's first byte to the end of its headers (slowloris): 408. */
#define HTTP_DEFAULT_HEADER_TIMEOUT_MS (10 * 1000)
/* From the end of the headers to the end of the body: 408. */
#define HTTP_DEFAULT_BODY_TIMEOUT_MS (15 * 1000)
/* How long a client may go without reading any of its pending answers. */
#define HTTP_WRITE_TIMEOUT_MS (30 * 1000)
/* On SIGTERM: how long open connections get to finish. */
#define HTTP_SHUTDOWN_GRACE_MS (5 * 1000)
/* Retry-After (seconds) on the 503 past the connection limit. */
#define HTTP_BUSY_RETRY_AFTER_S 1

typedef struct http_server http_server_t;

/*
 * A request as whoever answers it holds it: a generation-checked handle,
 * not a pointer into the connection. A handle stays valid from the
 * handler call until the request is answered (http_reply*) or its
 * connection ends; after that every call with it does nothing and returns
 * -ESTALE, so an answer that outlives its client cannot touch freed
 * memory. A holder that parks a request is always told when it ends
 * otherwise (http_park_fn), like libuv's close callback. HTTP/1.1 has one
 * request in flight per connection; an HTTP/2 stream will be one more
 * request on the same connection.
 */
typedef struct http_req {
    http_server_t *srv;
    uint32_t slot;
    uint32_t gen;
} http_req_t;

/* A complete request. The struct is valid only during the handler call;
 * `handle` until the request is answered or ends. */
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
    const char *accept;       /* every Accept header, joined by ", "; "" if absent */
    const char *peer;         /* the client's "address:port", for logs */
    const char *peer_addr;    /* the client's IP address alone, for limits: "192.0.2.1",
                                 "2001:db8::1" (IPv4-mapped IPv6 shown as IPv4); "" when the
                                 socket has none (a socketpair) */
    http_req_t handle;
    bool is_tls;       /* arrived over TLS: the URL the client used is https:// */
    bool is_h2;        /* an HTTP/2 stream (h2c on the same port, or TLS with ALPN h2) */
    bool is_streaming; /* its body comes later (see http_stream_on_body) */
} http_request_t;

typedef struct http_reply {
    int status;
    const char *content_type; /* NULL: no Content-Type header */
    bool has_etcd_index;      /* adds X-Etcd-Index */
    uint64_t etcd_index;
    const char *extra_headers; /* preformatted "Name: value\r\n" lines, or NULL */
    const char *body;
    size_t body_len;
    /* HTTP/2 only (ignored on HTTP/1.1): preformatted "name: value\r\n"
     * lines sent as trailers after the body (gRPC's grpc-status), or NULL.
     * With no body they join the response headers in one HEADERS frame
     * that ends the stream (gRPC's "trailers-only" answer). */
    const char *trailers;
} http_reply_t;

/* Called for every complete request; must reply or park before returning. */
typedef void (*http_handler_fn)(void *ctx, const http_request_t *req);

/* Why a parked request ends without a reply from its owner. */
enum http_park_end {
    HTTP_PARK_TIMEOUT,  /* the wait timeout passed: the owner must reply now, or park
                           the request again (a fresh wait), else it is closed */
    HTTP_PARK_SHUTDOWN, /* the server is stopping: the owner must reply now or park
                           again (the shutdown grace period bounds it) */
    HTTP_PARK_CLOSED,   /* the connection ended: the owner must drop the handle (a
                           reply with it would do nothing) */
};
/*
 * What a parked request waits for, which decides what a client that
 * half-closes (shutdown(SHUT_WR), a FIN) gets:
 *   HTTP_PARK_WATCH: an answer not decided yet (a long-poll): the client
 *     stopped asking, so the request ends (HTTP_PARK_CLOSED), as Go's
 *     server cancels a request whose client closed;
 *   HTTP_PARK_HOLD: an answer decided and waiting to be allowed out (a
 *     write not yet durable): it is still written, then the connection
 *     closes.
 */
enum http_park_kind { HTTP_PARK_WATCH, HTTP_PARK_HOLD };
typedef void (*http_park_fn)(http_req_t req, void *ctx, enum http_park_end why);

/*
 * Renders the answer to a request the server refuses on its own, before or
 * instead of the handler: 400 (malformed), 405 (method not allowed), 408
 * (too slow), 413, 431, 500, 501 (method or transfer coding not
 * implemented), 503 (past the connection limit), 505. `cause` says why in
 * one line. The renderer appends the body to `body` and sets
 * r->content_type and, if it wants, r->has_etcd_index/etcd_index; the server
 * adds Allow, Retry-After and Connection itself. Runs on the loop thread.
 */
typedef void (*http_error_fn)(void *ctx, int status, const char *cause, buf_t *body,
                              http_reply_t *r);

typedef struct http_server_config {
    /* "host:port", ":port" or "[v6]:port". NULL: no listening socket and no
     * signal handling, for the test seam below. */
    const char *addr;
    uint64_t wait_timeout_ms; /* parked requests end after this */
    /* Limits; 0 means the HTTP_DEFAULT_ value. */
    size_t max_header_bytes; /* capped at HTTP_MAX_HEADER_BYTES_CEILING */
    size_t max_body_bytes;
    size_t max_conns;
    uint64_t idle_timeout_ms;
    uint64_t header_timeout_ms;
    uint64_t body_timeout_ms;
    /* Methods a request may use: bit (1 << enum http_method). Others get 405
     * with an Allow header listing these; a method libhttp-parser does not
     * know gets 501. 0: GET, HEAD, PUT, POST, DELETE. */
    uint64_t allowed_methods;
    http_handler_fn handler;
    void *handler_ctx;
    /* HTTP/2 requests for which this returns true (called with handler_ctx
     * once their headers are in, before any body) are streaming requests
     * (a gRPC bidi call): handed to the handler at once, their body
     * arriving later through http_stream_on_body. NULL: none. */
    bool (*is_streaming)(void *ctx, const char *path, const char *content_type);
    /* Error answers (see http_error_fn); NULL: one line of plain text. */
    http_error_fn render_error;
    void *render_error_ctx;
    /* SIGHUP (reload): NULL logs that there is nothing to reload. */
    void (*on_reload)(void *ctx);
    void *reload_ctx;
    /* Called on every loop turn with the wall clock; returns the next
     * wall-clock instant it wants to run at (0: no wish). Drives TTLs. */
    int64_t (*tick)(void *ctx, int64_t now_ns);
    void *tick_ctx;
    /* An extra file descriptor to watch (-1: none): on_notify(tick_ctx) runs
     * when it becomes readable. The store's "durable" signal. */
    int notify_fd;
    void (*on_notify)(void *ctx);
    /* SIGTERM or SIGINT starts the graceful stop: called once, on the loop
     * thread, before parked requests are ended (systemd's STOPPING=1).
     * NULL: nothing. */
    void (*on_stop)(void *ctx);
    void *stop_ctx;
    /* TLS (server/transport_tls.h), owned by the caller and kept until
     * http_server_free: with it, `addr` serves TLS only. NULL: plain. */
    struct tls_ctx *tls;
    /* With `tls`: a plaintext listener too ("host:port"), or NULL. */
    const char *plain_addr;
} http_server_config_t;

/*
 * Binds and listens. Returns NULL with a message in `err` (256 bytes) when
 * the address is bad or busy.
 */
http_server_t *http_server_new(const http_server_config_t *cfg, char *err);
/* The bound address as "host:port" (useful with port 0). */
const char *http_server_address(const http_server_t *srv);
/* The plaintext listener's bound address beside TLS, or NULL when none. */
const char *http_server_plain_address(const http_server_t *srv);
/* The server's event loop, for other descriptors and timers to join. */
struct loop;
struct loop *http_server_loop(http_server_t *srv);
/*
 * Runs until SIGTERM or SIGINT, then stops accepting, ends parked requests
 * (HTTP_PARK_SHUTDOWN), lets answers drain for up to HTTP_SHUTDOWN_GRACE_MS
 * and returns 0. Returns -errno if the loop itself fails.
 */
int http_server_run(http_server_t *srv);
void http_server_free(http_server_t *srv);

/*
 * Test seam, for fuzzing (tests/fuzz) and tests that need no sockets: with
 * cfg->addr NULL the server has no listening socket; http_server_adopt()
 * hands it an already connected stream socket (e.g. one end of a
 * socketpair), which it owns from then on (closed on failure too), and
 * http_server_run_once() runs one loop turn: timers, then events for at most
 * `timeout_ms` (0: only what is ready). Both return 0 or -errno.
 */
int http_server_adopt(http_server_t *srv, int fd);
/* The same for a connection whose client speaks TLS with `tls` (the fuzz
 * target through the TLS transport). */
int http_server_adopt_tls(http_server_t *srv, int fd, struct tls_ctx *tls);
int http_server_run_once(http_server_t *srv, int timeout_ms);

/* Open connections and parked requests right now. */
size_t http_server_connection_count(const http_server_t *srv);

/*
 * Answers `req` (0) or does nothing when the handle is stale (-ESTALE:
 * answered already, or its connection ended). The answer is shaped for
 * the request as it arrived: no body for HEAD, HTTP/1.0 keep-alive rules,
 * "Connection: close" when the client asked for it or the server is
 * stopping. After a client half-closes, the connection closes once every
 * request it sent has been answered (the answers do not say so: more of
 * them may follow).
 */
int http_reply(http_req_t req, const http_reply_t *r);
/* Shorthand for a small text or JSON answer. */
int http_reply_simple(http_req_t req, int status, const char *content_type, const char *body,
                      size_t body_len);
/*
 * An answer formatted once for many connections: one event wakes N parked
 * watches whose answers are the same bytes. http_prepare() copies `r` (body
 * and extra headers included; content_type stays a pointer to the static
 * string it always is) and formats it as an HTTP/1.1 keep-alive answer to
 * a GET; the result holds one reference, and whoever shares it takes one
 * more with http_prepared_ref(). Returns NULL when out of memory.
 */
typedef struct http_prepared http_prepared_t;
http_prepared_t *http_prepare(const http_reply_t *r);
http_prepared_t *http_prepared_ref(http_prepared_t *p);
/* Drops a reference; the last one frees it. NULL is fine. */
void http_prepared_unref(http_prepared_t *p);
/* The reply it was made from (its body and headers now live in `p`). */
const http_reply_t *http_prepared_reply(const http_prepared_t *p);
/*
 * Answers `req` with `p`, exactly as http_reply(req, <the reply p was made
 * from>) would. A woken parked request with nothing else queued is written
 * straight from the shared bytes (only what the socket does not take at
 * once is copied); a request of another shape (HEAD, HTTP/1.0, "Connection:
 * close") gets its own formatting. The caller keeps its reference. 0 or
 * -ESTALE, as http_reply.
 */
int http_reply_prepared(http_req_t req, const http_prepared_t *p);
/*
 * Parks `req` (during its handler call, or again from its park callback):
 * `on_end` fires once if it ends otherwise than by a reply (see enum
 * http_park_end); `kind` says what a half-closing client gets. The wait
 * timeout starts now, also when a parked request is parked again with a
 * new owner. 0 or -ESTALE.
 */
int http_park(http_req_t req, enum http_park_kind kind, http_park_fn on_end, void *ctx);
/*
 * Streaming requests (HTTP/2 only; see is_streaming in the config). The
 * handler parks the request (HTTP_PARK_WATCH) and names where its body
 * goes: `on_body` gets each piece in order as it arrives, then once
 * `end` (the client closed its side; len 0). It is not called after the
 * request is answered or ends. The owner answers in pieces with
 * http_stream_send (the first call sends `head`'s status and headers;
 * later ones may pass NULL) and ends the answer with http_reply (more
 * body and the trailers). 0, -ESTALE, -EINVAL (not a streaming HTTP/2
 * request) or -ENOMEM.
 */
typedef void (*http_body_fn)(http_req_t req, void *ctx, const char *data, size_t len, bool end);
int http_stream_on_body(http_req_t req, http_body_fn on_body, void *ctx);
int http_stream_send(http_req_t req, const http_reply_t *head, const char *data, size_t len);
/*
 * Flow control on a streaming answer. http_stream_send takes the bytes in
 * every case but an error; it returns HTTP_STREAM_STALLED when the client
 * lets answers pile up unread (its flow-control window shut): the owner
 * then produces nothing more it can hold back until `on_drain` is called
 * (once, from the loop, outside other callbacks, while the request is
 * live). What a client asks for meanwhile may still be answered, within a
 * bound: past it http_stream_send returns -ENOBUFS, and the owner ends the
 * request (http_reply), which then resets the stream. 0, -ESTALE or
 * -EINVAL (not a streaming HTTP/2 request).
 */
#define HTTP_STREAM_STALLED 1
typedef void (*http_drain_fn)(http_req_t req, void *ctx);
int http_stream_on_drain(http_req_t req, http_drain_fn on_drain, void *ctx);

/* Whether `req` may still be answered. */
bool http_req_is_live(http_req_t req);

/* A count the owner keeps on the request's connection (watches held
 * across the streams of one HTTP/2 connection, for a per-connection
 * limit). It starts at 0 with the connection. The pointer stays valid
 * while the request is live and through the owner's HTTP_PARK_CLOSED
 * callback (a connection outlives the requests on it); not after the
 * request is answered. NULL with a stale handle. */
long *http_conn_counter(http_req_t req);

/* The standard reason phrase of a status code. */
const char *http_status_text(int status);

#endif
