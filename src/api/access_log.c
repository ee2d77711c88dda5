/*
 * access_log.c - requests remembered until their answer, for the access
 * log; see access_log.h.
 */
#include "api/access_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/timeutil.h"

/* One request in flight: indexed by its handle's slot. */
struct access_rec {
    uint32_t gen;
    bool live;
    char addr[48];
    int64_t wall_ns;
    char *line; /* "GET /path?query HTTP/1.1", owned */
};

void access_log_begin(api_t *api, const http_request_t *req)
{
    if (!log_access_enabled())
        return;
    uint32_t slot = req->handle.slot;
    if (slot >= api->n_access) {
        size_t n = slot + 1 > 2 * api->n_access ? slot + 1 : 2 * api->n_access;
        access_rec_t *grown = realloc(api->access, n * sizeof *grown);
        if (!grown)
            return;
        memset(grown + api->n_access, 0, (n - api->n_access) * sizeof *grown);
        api->access = grown;
        api->n_access = n;
    }
    access_rec_t *r = &api->access[slot];
    buf_t line = BUF_INIT;
    buf_printf(&line, "%s %s%s%s HTTP/1.1", req->method_name, req->path, req->query_len ? "?" : "",
               req->query);
    if (buf_failed(&line)) {
        buf_free(&line);
        return;
    }
    free(r->line); /* a request that ended unanswered (client gone) */
    r->line = buf_steal(&line);
    r->gen = req->handle.gen;
    r->live = true;
    r->wall_ns = time_wall_ns();
    snprintf(r->addr, sizeof r->addr, "%s", req->peer_addr);
}

void access_log_end(api_t *api, http_req_t c, int status, size_t body_bytes)
{
    if (c.slot >= api->n_access)
        return;
    access_rec_t *r = &api->access[c.slot];
    if (!r->live || r->gen != c.gen)
        return;
    log_access(r->addr, (long long)r->wall_ns, r->line, status, body_bytes);
    free(r->line);
    r->line = NULL;
    r->live = false;
}

void access_log_free(api_t *api)
{
    for (size_t i = 0; i < api->n_access; i++)
        free(api->access[i].line);
    free(api->access);
    api->access = NULL;
    api->n_access = 0;
}
