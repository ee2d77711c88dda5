/*
 * router.c - which handler answers which path (api_handle, declared in
 * api.h):
 *
 *   /                     front page          /new        a token
 *   /health               store health        /metrics    Prometheus text
 *   /robots.txt           keep crawlers out
 *   /v2/keys/<key>        etcd v2 keys API (tokens live under
 *                         /_etcd/registry/<token>)
 *   /<token>[/<key>]      the same registry as discovery.etcd.io showed it;
 *                         a token's _config is read-only there
 *
 * The key part of a path is percent-decoded here, once, and handed to the
 * v2 handler as a full v2 key.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "api/discovery.h"
#include "api/form.h"
#include "api/v2keys.h"

/* Any "." or ".." segment: refused rather than resolved, so a URL names
 * exactly the key it shows. */
static bool has_dot_segment(const char *path)
{
    for (const char *p = path; *p; p++) {
        if (*p != '/')
            continue;
        const char *s = p + 1;
        size_t n = strcspn(s, "/");
        if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
            return true;
    }
    return false;
}

/* Decodes the key part of a path and sends it to the v2 handler. */
static void route_keys(api_t *api, const http_request_t *req, const char *raw, size_t len,
                       const char *prefix, enum metrics_endpoint ep, bool config_read_only)
{
    int bad = 0;
    char *decoded = form_unescape_path(raw, len, &bad);
    if (!decoded) {
        api_send_v2_error(api, req->conn, ep, req->method_name, 0, bad ? 209 : 300,
                          bad ? "the path has a malformed %-escape or a NUL byte" : "out of memory",
                          registry_index(api->reg));
        return;
    }
    if (has_dot_segment(decoded)) {
        api_send_v2_error(api, req->conn, ep, req->method_name, 0, 209,
                          "the path must not contain \".\" or \"..\" segments",
                          registry_index(api->reg));
        free(decoded);
        return;
    }
    size_t pl = strlen(prefix), dl = strlen(decoded);
    char *key = malloc(pl + dl + 2);
    if (!key) {
        free(decoded);
        api_send_v2_error(api, req->conn, ep, req->method_name, 0, 300, "out of memory",
                          registry_index(api->reg));
        return;
    }
    memcpy(key, prefix, pl);
    memcpy(key + pl, decoded, dl + 1);
    if (pl + dl == 0)
        strcpy(key, "/");
    v2keys_handle(api, req, key, ep, config_read_only);
    free(key);
    free(decoded);
}

void api_handle(void *ctx, const http_request_t *req)
{
    api_t *api = ctx;
    const char *path = req->path;
    static const char keys[] = "/v2/keys";
    if (strcmp(path, "/") == 0) {
        discovery_index_page(api, req);
    } else if (strcmp(path, "/new") == 0) {
        discovery_new(api, req);
    } else if (strcmp(path, "/health") == 0) {
        discovery_health(api, req);
    } else if (strcmp(path, "/metrics") == 0) {
        discovery_metrics(api, req);
    } else if (strcmp(path, "/robots.txt") == 0) {
        discovery_robots(api, req);
    } else if (strncmp(path, keys, sizeof keys - 1) == 0 &&
               (path[sizeof keys - 1] == '/' || path[sizeof keys - 1] == '\0')) {
        route_keys(api, req, path + sizeof keys - 1, req->path_len - (sizeof keys - 1), "",
                   METRICS_V2_KEYS, false);
    } else {
        route_keys(api, req, path, req->path_len, REGISTRY_PREFIX, METRICS_TOKEN, true);
    }
}
