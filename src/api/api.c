/*
 * api.c - the api's lifetime (api_new/api_free), the server's error
 * renderer and its tick. Routing lives in router.c, the handlers in
 * discovery.c and v2keys.c, the reply helpers (answers held until durable,
 * metrics counted) in reply.c.
 */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/access_log.h"
#include "api/api_internal.h"
#include "api/token_log.h"
#include "api/v2json.h"
#include "api/v3.h"
#include "util/log.h"
#include "util/timeutil.h"

api_t *api_new(registry_t *reg, backend_t *backend, const api_config_t *cfg)
{
    api_t *api = calloc(1, sizeof *api);
    if (!api)
        return NULL;
    api->reg = reg;
    api->backend = backend;
    api->listens_on_all = cfg->listens_on_all;
    api->min_age_ns = (int64_t)cfg->min_age_ms * NS_PER_MS;
    api->gc_every_ns = (int64_t)cfg->gc_every_ms * NS_PER_MS;
    api->metrics = metrics_new();
    api->listings = listing_cache_new();
    api->token_seen = calloc(TOKEN_LOG_SEEN_SLOTS, sizeof *api->token_seen);
    api->max_key_bytes = cfg->max_key_bytes ? cfg->max_key_bytes : API_DEFAULT_MAX_KEY_BYTES;
    api->max_value_bytes =
        cfg->max_value_bytes ? cfg->max_value_bytes : API_DEFAULT_MAX_VALUE_BYTES;
    if (cfg->new_rate_per_s) {
        api->new_limit = ratelimit_new(cfg->new_rate_per_s, cfg->new_burst ? cfg->new_burst : 1,
                                       API_NEW_RATE_MAX_ADDRESSES);
        if (!api->new_limit) {
            api_free(api);
            return NULL;
        }
    }
    if (cfg->host_prefix && *cfg->host_prefix) {
        size_t n = strlen(cfg->host_prefix);
        while (n > 0 && cfg->host_prefix[n - 1] == '/')
            n--; /* "https://x/" and "https://x" print the same URL */
        api->host_prefix = strndup(cfg->host_prefix, n);
    }
    if (!api->metrics || !api->listings || !api->token_seen ||
        (cfg->host_prefix && *cfg->host_prefix && !api->host_prefix)) {
        api_free(api);
        return NULL;
    }
    return api;
}

void api_free(api_t *api)
{
    if (!api)
        return;
    metrics_free(api->metrics);
    http_prepared_unref(api->watch_answer);
    listing_cache_free(api->listings);
    ratelimit_free(api->new_limit);
    free(api->host_prefix);
    free(api->token_seen);
    access_log_free(api);
    v3_free(api);
    free(api);
}

void api_set_server(api_t *api, http_server_t *srv)
{
    api->srv = srv;
}

void api_render_error(void *ctx, int status, const char *cause, buf_t *body, http_reply_t *r)
{
    api_t *api = ctx;
    uint64_t index = registry_index(api->reg);
    /* 300 says "the service failed, retry"; anything else was the request */
    bool service_failed = status == 500 || status == 503;
    v2json_error(body, service_failed ? REG_E_INTERNAL : REG_E_INVALID_FIELD, cause, index);
    r->content_type = "application/json";
    r->has_etcd_index = true;
    r->etcd_index = index;
}

/* Max tokens removed per sweep step: keeps each store transaction small. */
#define GC_BATCH_TOKENS 256

int64_t api_tick(void *ctx, int64_t now_ns)
{
    api_t *api = ctx;
    int64_t next = registry_expire(api->reg, now_ns);
    if (api->gc_every_ns > 0 && now_ns >= api->next_gc_ns) {
        size_t n = registry_sweep_tokens(api->reg, now_ns - api->min_age_ns, GC_BATCH_TOKENS);
        if (n) {
            metrics_count_removed_tokens(api->metrics, n);
            log_info("removed %zu tokens older than the minimum age", n);
        }
        /* A full batch means more are due: continue on the next turn. */
        api->next_gc_ns = n == GC_BATCH_TOKENS ? now_ns : now_ns + api->gc_every_ns;
    }
    if (api->gc_every_ns > 0 && (next == 0 || api->next_gc_ns < next))
        next = api->next_gc_ns;
    return next;
}
