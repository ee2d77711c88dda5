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

#include <stdint.h>

#include "registry/registry.h"
#include "server/http.h"
#include "store/store.h"

typedef struct api api_t;

typedef struct api_config {
    /* URL prefix /new prints before the token, e.g. "https://disco.example".
     * NULL or "": "http://" + the request's Host header. */
    const char *host_prefix;
    /* Token lifecycle: a token is removed no sooner than min_age_ms after
     * its creation, by a sweep every gc_every_ms (0: never). */
    uint64_t min_age_ms;
    uint64_t gc_every_ms;
} api_config_t;

/* Returns NULL when out of memory. `reg` and `store` are not owned. */
api_t *api_new(registry_t *reg, store_t *store, const api_config_t *cfg);
void api_free(api_t *api);
/* Lets /metrics report connection counts (optional). */
void api_set_server(api_t *api, http_server_t *srv);

/* http_handler_fn: routes one request. `ctx` is the api_t. */
void api_handle(void *ctx, const http_request_t *req);
/* The server's tick: expires TTLs and sweeps old tokens; returns the next
 * wall-clock instant due. */
int64_t api_tick(void *ctx, int64_t now_ns);
/* The server's on_notify: the store made more changes durable; answers
 * that waited for them go out. */
void api_on_durable(void *ctx);

#endif
