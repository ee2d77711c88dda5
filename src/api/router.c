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
 *   /<token>              for a browser (Accept prefers text/html): the
 *                         token's page (page.c); everyone else gets JSON
 *   gRPC (HTTP/2, content-type application/grpc): etcd's v3 API (v3.c)
 *
 * The key part of a path is percent-decoded here, once, and handed to the
 * v2 handler as a full v2 key.
 */
#include <http_parser.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "api/access_log.h"
#include "api/api_internal.h"
#include "api/discovery.h"
#include "api/form.h"
#include "api/page.h"
#include "api/v2keys.h"
#include "api/v3.h"
#include "util/html.h"

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

/* Whether `path` has an empty segment ("a//b", "//a"); a trailing "/" is
 * not one. */
static bool has_empty_segment(const char *path)
{
    return strstr(path, "//") != NULL;
}

/* Appends `path` with runs of '/' collapsed to one, percent-escaped as Go's
 * url.URL.EscapedPath does: A-Z a-z 0-9 - _ . ~ $ & + , / : ; = @ stay,
 * every other byte becomes %XX. */
static void put_clean_escaped_path(buf_t *out, const char *path)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const char *p = path; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '/' && p[1] == '/')
            continue;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            (c && strchr("-_.~$&+,/:;=@", c))) {
            buf_putc(out, (char)c);
        } else {
            buf_putc(out, '%');
            buf_putc(out, hex[c >> 4]);
            buf_putc(out, hex[c & 15]);
        }
    }
}

/*
 * Answers a path with an empty segment the way etcd does: its Go ServeMux
 * cleans the path and redirects, 301 with Location = the cleaned path plus
 * the original query, and runs no handler, so nothing is written.
 * `url_prefix` is the raw part of the path already matched ("/v2/keys" or
 * ""), `decoded` the rest, percent-decoded. As Go's http.Redirect: GET and
 * HEAD get a short HTML body (HEAD its headers only); other methods none.
 */
static void redirect_to_clean_path(api_t *api, const http_request_t *req, const char *url_prefix,
                                   const char *decoded, enum metrics_endpoint ep)
{
    buf_t url = BUF_INIT, location = BUF_INIT, body = BUF_INIT;
    buf_puts(&url, url_prefix);
    put_clean_escaped_path(&url, decoded);
    size_t path_len = url.len;
    if (req->query_len) {
        buf_putc(&url, '?');
        buf_append(&url, req->query, req->query_len);
    }
    /* Location as Go's hexEscapeNonASCII leaves it; the server refuses
     * control bytes in a request target, but a header must never carry
     * one, so those are escaped too. */
    static const char hex[] = "0123456789ABCDEF";
    buf_puts(&location, "Location: ");
    for (size_t i = 0; i < url.len; i++) {
        unsigned char c = (unsigned char)url.data[i];
        if (i >= path_len && (c <= ' ' || c >= 0x7f)) {
            buf_putc(&location, '%');
            buf_putc(&location, hex[c >> 4]);
            buf_putc(&location, hex[c & 15]);
        } else {
            buf_putc(&location, (char)c);
        }
    }
    buf_puts(&location, "\r\n");
    bool is_get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    if (is_get) {
        buf_puts(&body, "<a href=\"");
        html_put_escaped(&body, url.data, url.len);
        buf_puts(&body, "\">Moved Permanently</a>.\n\n");
    }
    if (buf_failed(&url) || buf_failed(&location) || buf_failed(&body)) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, 300, "out of memory",
                          registry_index(api->reg));
    } else {
        http_reply_t r = {.status = 301,
                          .content_type = is_get ? "text/html; charset=utf-8" : NULL,
                          .extra_headers = buf_cstr(&location),
                          .body = body.data,
                          .body_len = body.len};
        api_send(api, req->handle, ep, req->method_name, &r);
    }
    buf_free(&url);
    buf_free(&location);
    buf_free(&body);
}

/* Decodes the key part of a path and sends it to the v2 handler. */
static void route_keys(api_t *api, const http_request_t *req, const char *url_prefix,
                       const char *raw, size_t len, const char *prefix, enum metrics_endpoint ep,
                       bool config_read_only)
{
    int bad = 0;
    char *decoded = form_unescape_path(raw, len, &bad);
    if (!decoded) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, bad ? 209 : 300,
                          bad ? "the path has a malformed %-escape or a NUL byte" : "out of memory",
                          registry_index(api->reg));
        return;
    }
    if (has_dot_segment(decoded)) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, 209,
                          "the path must not contain \".\" or \"..\" segments",
                          registry_index(api->reg));
        free(decoded);
        return;
    }
    if (has_empty_segment(decoded)) {
        redirect_to_clean_path(api, req, url_prefix, decoded, ep);
        free(decoded);
        return;
    }
    size_t pl = strlen(prefix), dl = strlen(decoded);
    char *key = malloc(pl + dl + 2);
    if (!key) {
        free(decoded);
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, 300, "out of memory",
                          registry_index(api->reg));
        return;
    }
    memcpy(key, prefix, pl);
    memcpy(key + pl, decoded, dl + 1);
    if (pl + dl == 0)
        strcpy(key, "/");
    if ((req->method == HTTP_PUT || req->method == HTTP_POST) &&
        v3_token_refuses_v2_member(api, key)) {
        /* A token serves one kind of member (docs/decisions.md). */
        api_send_v2_error(api, req->handle, ep, req->method_name, 403, 107,
                          "the discovery token is used by v3 members; register with the v3 API",
                          registry_index(api->reg));
    } else {
        v2keys_handle(api, req, key, ep, config_read_only);
    }
    free(key);
    free(decoded);
}

bool api_is_streaming(void *ctx, const char *path, const char *content_type)
{
    (void)ctx;
    return v3_is_streaming(path, content_type);
}

void api_handle(void *ctx, const http_request_t *req)
{
    api_t *api = ctx;
    const char *path = req->path;
    static const char keys[] = "/v2/keys";
    /* For the latency histograms (reply.c). */
    api->is_handling = true;
    api->handling = req->handle;
    api->handling_started_ns = histogram_now_ns();
    access_log_begin(api, req);
    if (v3_is_grpc(req)) {
        v3_handle(api, req);
    } else if (strcmp(path, "/") == 0) {
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
        route_keys(api, req, keys, path + sizeof keys - 1, req->path_len - (sizeof keys - 1), "",
                   METRICS_V2_KEYS, false);
    } else if (page_is_token_page_request(req)) {
        page_token(api, req); /* a browser asking for /<token> */
    } else {
        route_keys(api, req, "", path, req->path_len, REGISTRY_PREFIX, METRICS_TOKEN, true);
    }
    api->is_handling = false;
}
