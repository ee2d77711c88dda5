/*
 * fuzz_world.h - a whole disco for one fuzz input: a registry over the
 * local backend and a store whose durable index lags (so answers are held,
 * as with LMDB), the api, and the HTTP server without a listening socket,
 * driven one loop turn at a time through its test seam (http_server_adopt,
 * http_server_run_once). Clients are socketpairs.
 *
 * The store keeps its events in memory (store_memory) but reports them
 * durable only every FUZZ_DURABLE_EVERY_TURNS loop turns, through an
 * eventfd as the LMDB store's writer thread does. The wait timeout is
 * FUZZ_WAIT_TIMEOUT_MS, so a parked watch ends within an input's run when
 * the driver lets real time pass (fuzz_world_exchange_until); while it
 * does, the world writes to a token of its own (FUZZ_BG_TOKEN) every few
 * turns, so watches time out while a write is not yet durable and their
 * empty answers are held.
 *
 * Each input gets a fresh world, so a crash reproduces from its input
 * alone and the leak checker sees everything freed.
 */
#ifndef DISCO_FUZZ_WORLD_H
#define DISCO_FUZZ_WORLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/api.h"
#include "backend/backend.h"
#include "registry/registry.h"
#include "server/http.h"
#include "store/store.h"
#include "util/buf.h"

/* The token every world starts with, and its two members. */
#define FUZZ_TOKEN "tok"
#define FUZZ_MEMBER1 "/_etcd/registry/tok/86f5e6aacb2ddcde"
#define FUZZ_MEMBER2 "/_etcd/registry/tok/1b4a4c5f6e7d8c9b"
/* The token the world itself writes to while time passes (key "k"). */
#define FUZZ_BG_TOKEN "bg"
#define FUZZ_BG_KEY "/_etcd/registry/bg/k"

/* Small limits so fuzzing reaches them with short inputs. */
#define FUZZ_MAX_HEADER_BYTES 4096
#define FUZZ_MAX_BODY_BYTES 4096
#define FUZZ_MAX_CONNS 64
/* Short, so parked watches reach it; each input that waits for one costs
 * about this much real time. */
#define FUZZ_WAIT_TIMEOUT_MS 20
/* The store reports what was appended as durable every this many turns. */
#define FUZZ_DURABLE_EVERY_TURNS 4
/* While time passes, the world writes FUZZ_BG_KEY every this many turns. */
#define FUZZ_BG_WRITE_EVERY_TURNS 3

typedef struct fuzz_store fuzz_store_t;

typedef struct fuzz_world {
    registry_t *reg;
    api_t *api;
    http_server_t *srv;
    fuzz_store_t *store;
    backend_t *backend; /* the local backend over `store` */
    uint64_t turns;     /* loop turns run so far */
} fuzz_world_t;

/* Builds a world; with `server_ticks` the server drives TTLs and token
 * sweeps from the real clock, else the caller calls api_tick itself.
 * Everything the world starts with is durable. Returns 0, or -1 (out of
 * memory, no epoll or eventfd). */
int fuzz_world_init(fuzz_world_t *w, bool server_ticks);
/* Closes every connection (parked requests end as "client gone"), then
 * frees server, api, registry and store. */
void fuzz_world_free(fuzz_world_t *w);

/* A new connection; returns the client's end (non-blocking), or -1. */
int fuzz_world_connect(fuzz_world_t *w);

/* Whether appended changes are not yet reported durable. */
bool fuzz_world_store_lags(const fuzz_world_t *w);

/*
 * One loop turn: the store's durability tick, a background write if
 * `bg_write` and it is due, then http_server_run_once(srv, wait_ms).
 * Aborts if the loop fails.
 */
void fuzz_world_turn(fuzz_world_t *w, int wait_ms, bool bg_write);

/*
 * Sends `len` bytes from client end `fd` while running the server, and
 * appends what comes back to `out`. Once all is sent and nothing moves
 * (and the store has caught up), it asks `waiting(ctx, out)` (if given)
 * whether answers are still due: while it says so, real time passes in
 * 1 ms turns with background writes, up to FUZZ_WAIT_TIMEOUT_MS * 3 + 30
 * ms. Then, if `half_close`, it shuts the client's write side down and
 * runs until the server closes or nothing moves again. Returns true if
 * the server closed the connection.
 */
bool fuzz_world_exchange_until(fuzz_world_t *w, int fd, const uint8_t *data, size_t len,
                               bool half_close, bool (*waiting)(void *ctx, const buf_t *out),
                               void *ctx, buf_t *out);
/* The same with no waiting. */
bool fuzz_world_exchange(fuzz_world_t *w, int fd, const uint8_t *data, size_t len, bool half_close,
                         buf_t *out);

/*
 * Walks the HTTP/1.1 answers in `out`. For each it calls `fn` with the
 * status, the Content-Type ("" if none) and the body; `head` says the
 * answers are to HEAD (no body). Aborts on a malformed stream: every
 * answer disco writes must frame correctly. Returns how many it saw.
 */
size_t fuzz_each_answer(const buf_t *out, bool head,
                        void (*fn)(void *ctx, int status, const char *content_type,
                                   const char *body, size_t body_len),
                        void *ctx);

/* ---- answers matched to the requests they answer ----------------------- */

/* What the checker knows of one request of a client's bytes. */
enum fuzz_path_kind {
    FUZZ_PATH_UNKNOWN, /* the request line did not parse: a server refusal */
    FUZZ_PATH_NEW,     /* /new: may answer its own errors in text/plain */
    FUZZ_PATH_TEXT,    /* /health, /metrics: may fail in text/plain */
    FUZZ_PATH_JSON,    /* every other path: errors are etcd JSON */
};

typedef struct fuzz_request {
    int method; /* enum http_method, -1 when the request line did not parse */
    enum fuzz_path_kind path;
    bool http10;       /* HTTP/1.0 (known once the request line parsed) */
    bool headers_done; /* its head parsed completely */
    bool complete;     /* its body too: disco hands it to a handler */
} fuzz_request_t;

#define FUZZ_MAX_REQUESTS 128

typedef struct fuzz_requests {
    fuzz_request_t r[FUZZ_MAX_REQUESTS];
    size_t n;          /* requests begun (r[] holds the first FUZZ_MAX_REQUESTS) */
    size_t n_complete; /* leading complete requests */
} fuzz_requests_t;

/*
 * Splits a client's bytes into requests with libhttp-parser, the parser
 * disco uses, so answer i can be matched to request i: disco answers in
 * request order, and after refusing a request it answers nothing more.
 * Disco refuses some requests the parser accepts (limits, smuggling
 * shapes); those answers are refusals of the request at the same place.
 */
void fuzz_parse_requests(const uint8_t *data, size_t len, fuzz_requests_t *out);

/* One answer as fuzz_each_request_answer hands it over. */
typedef struct fuzz_answer {
    size_t index; /* which answer: 0, 1, ... (100 Continue not counted) */
    int status;
    const char *content_type; /* "" if none */
    const char *connection;   /* the Connection header's value, "" if none */
    bool has_content_length;
    size_t content_length;
    const char *body;  /* the body on the wire */
    size_t body_len;   /* 0 for a HEAD answer */
    bool head_refusal; /* an answer to a HEAD that is a refusal sent with
                        * its body: see fuzz_each_request_answer */
} fuzz_answer_t;

/*
 * Walks the answers in `out` as answers to `reqs`: answer i to a HEAD
 * request has no body. One exception, the only place the stream may
 * carry bytes a HEAD answer does not announce: a server refusal (400 or
 * 431 with "Connection: close", the last answer) of a HEAD request whose
 * head disco stopped reading before it was complete (a limit or a
 * smuggling shape) may carry its body, as disco does not know yet that
 * the request is a HEAD; it is reported with `head_refusal`.
 * With `partial` an answer cut short at the end is not an error (the
 * walk stops there), else it aborts. Aborts on a malformed stream.
 * Returns how many answers it saw.
 */
size_t fuzz_each_request_answer(const buf_t *out, const fuzz_requests_t *reqs, bool partial,
                                void (*fn)(void *ctx, const fuzz_request_t *req,
                                           const fuzz_answer_t *a),
                                void *ctx);

#endif
