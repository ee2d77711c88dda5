/*
 * api.h - what disco answers on HTTP: the discovery.etcd.io surface
 * (/new, /<token>..., /health, /metrics, /robots.txt, /) and the etcd v2
 * keys path (/v2/keys/_etcd/registry/<token>...), over one registry.
 *
 * api_handle() is the server's request handler; api_tick() its periodic
 * callback (TTL expiry). Both run on the event loop thread.
 */
#ifndef DISCO_API_API_H
#define DISCO_API_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "registry/registry.h"
#include "server/http.h"

typedef struct api api_t;

typedef struct api_config {
    /* URL prefix /new prints before the token, e.g. "https://disco.example".
     * NULL or "": "http://" + the request's Host header. */
    const char *host_prefix;
    /* Token lifecycle: a token is removed no sooner than min_age_ms after
     * its creation, by a sweep every gc_every_ms (0: never). */
    uint64_t min_age_ms;
    uint64_t gc_every_ms;
    /* Longest key below a token (bytes after "/<token>", decoded) and
     * longest value a write may carry: 400 errorCode 209 beyond them.
     * 0: API_DEFAULT_MAX_KEY_BYTES / API_DEFAULT_MAX_VALUE_BYTES. */
    size_t max_key_bytes;
    size_t max_value_bytes;
    /* /new per client address (IPv6 per /64): a token bucket refilled at
     * new_rate_per_s with room for new_burst; 429 with Retry-After beyond.
     * new_rate_per_s 0: no limit. */
    uint32_t new_rate_per_s;
    uint32_t new_burst;
    /* The server listens on every interface (0.0.0.0, [::]): /new warns
     * when the prefix it prints is a loopback URL. */
    bool listens_on_all;
} api_config_t;

#define API_DEFAULT_MAX_KEY_BYTES 1024
#define API_DEFAULT_MAX_VALUE_BYTES (8 * 1024)
/* Client addresses whose /new budget is remembered (fixed memory, about
 * 64 bytes each); the least recently seen is forgotten first. */
#define API_NEW_RATE_MAX_ADDRESSES 16384

/* Whether a URL prefix names a loopback host (localhost, 127.0.0.0/8,
 * [::1]): a URL no other machine can reach. */
bool api_prefix_is_loopback(const char *prefix);

/* Returns NULL when out of memory. `reg` and `backend` (where changes
 * become final; NULL: nothing is kept, answers never wait) are not owned. */
api_t *api_new(registry_t *reg, backend_t *backend, const api_config_t *cfg);
void api_free(api_t *api);
/* Lets /metrics report connection counts (optional). */
void api_set_server(api_t *api, http_server_t *srv);

/* http_handler_fn: routes one request. `ctx` is the api_t. */
void api_handle(void *ctx, const http_request_t *req);
/* is_streaming of the server config: gRPC streaming calls (etcd's Watch). */
bool api_is_streaming(void *ctx, const char *path, const char *content_type);
/* The server's tick: expires TTLs and sweeps old tokens; returns the next
 * wall-clock instant due. */
int64_t api_tick(void *ctx, int64_t now_ns);
/* The server's render_error (http_error_fn): its own refusals (400, 405,
 * 408, 413, 431, 501, 503, 505) as etcd JSON errors with the current
 * index, because a discovery client reads every answer on its paths as etcd
 * JSON: errorCode 300 when the service failed (500, 503: retry), 209 when
 * the request did. `ctx` is the api_t. */
void api_render_error(void *ctx, int status, const char *cause, buf_t *body, http_reply_t *r);
/* The server's on_notify: the store made more changes durable; answers
 * that waited for them go out. */
void api_on_durable(void *ctx);

#endif
