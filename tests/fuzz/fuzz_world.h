/*
 * fuzz_world.h - a whole disco for one fuzz input: an in-memory registry
 * (no store), the api, and the HTTP server without a listening socket,
 * driven one loop turn at a time through its test seam
 * (http_server_adopt, http_server_run_once). Clients are socketpairs.
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
#include "registry/registry.h"
#include "server/http.h"
#include "util/buf.h"

/* The token every world starts with, and its two members. */
#define FUZZ_TOKEN "tok"
#define FUZZ_MEMBER1 "/_etcd/registry/tok/86f5e6aacb2ddcde"
#define FUZZ_MEMBER2 "/_etcd/registry/tok/1b4a4c5f6e7d8c9b"

/* Small limits so fuzzing reaches them with short inputs. */
#define FUZZ_MAX_HEADER_BYTES 4096
#define FUZZ_MAX_BODY_BYTES 4096
#define FUZZ_MAX_CONNS 64

typedef struct fuzz_world {
    registry_t *reg;
    api_t *api;
    http_server_t *srv;
} fuzz_world_t;

/* Builds a world; with `server_ticks` the server drives TTLs and token
 * sweeps from the real clock, else the caller calls api_tick itself.
 * Returns 0, or -1 (out of memory, no epoll). */
int fuzz_world_init(fuzz_world_t *w, bool server_ticks);
/* Closes every connection (parked requests end as "client gone"), then
 * frees server, api and registry. */
void fuzz_world_free(fuzz_world_t *w);

/* A new connection; returns the client's end (non-blocking), or -1. */
int fuzz_world_connect(fuzz_world_t *w);

/*
 * Sends `len` bytes from client end `fd` (then shuts its write side down
 * if `half_close`) while running the server, and appends what comes back
 * to `out`, until the server closes, or nothing moves for a few turns.
 * Returns true if the server closed the connection.
 */
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

#endif
