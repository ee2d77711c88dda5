/*
 * discovery.c - the discovery.etcd.io endpoints: /new, /health, /metrics,
 * /robots.txt and the front page.
 *
 * /new answers in plain text on purpose: it is read by people and scripts
 * (`curl .../new?size=3`), not by etcd members, and discovery.etcd.io did
 * the same.
 */
#include "api/discovery.h"

#include <arpa/inet.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "api/access_log.h"
#include "api/api_internal.h"
#include "api/form.h"
#include "api/token_log.h"
#include "util/log.h"
#include "util/timeutil.h"

#define DEFAULT_SIZE 3
#define TOKEN_BYTES 16 /* 32 hex characters */

static void send_text(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
                      int status, const char *text)
{
    http_reply_t r = {.status = status,
                      .content_type = "text/plain; charset=utf-8",
                      .body = text,
                      .body_len = strlen(text)};
    api_send(api, c, ep, method, &r);
}

/* 32 lowercase hex characters from the kernel's CSPRNG. */
static int make_token(char out[2 * TOKEN_BYTES + 1])
{
    unsigned char raw[TOKEN_BYTES];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0)
            return -1;
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < TOKEN_BYTES; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * TOKEN_BYTES] = '\0';
    return 0;
}

/* A Host header we are willing to print back in a URL. */
static bool host_is_sane(const char *h)
{
    if (!*h || strlen(h) > 255)
        return false;
    for (const char *p = h; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_'))
            return false;
    }
    return true;
}

/* The rate-limit key of a client: its IPv4 address, or the /64 of its
 * IPv6 address (one host usually holds a whole /64). No address (a local
 * socket): one shared key. */
static size_t client_key(const char *addr, unsigned char key[16])
{
    if (inet_pton(AF_INET, addr, key) == 1)
        return 4;
    if (inet_pton(AF_INET6, addr, key) == 1)
        return 8;
    return 0;
}

bool api_prefix_is_loopback(const char *prefix)
{
    const char *h = strstr(prefix, "://");
    h = h ? h + 3 : prefix;
    size_t n = strcspn(h, ":/");
    if (h[0] == '[')
        return strncmp(h, "[::1]", 5) == 0;
    return (n == 9 && strncasecmp(h, "localhost", 9) == 0) || strncmp(h, "127.", 4) == 0;
}

uint64_t discovery_take_new_budget(api_t *api, const http_request_t *req)
{
    if (!api->new_limit)
        return 0;
    unsigned char key[16];
    size_t key_len = client_key(req->peer_addr, key);
    uint64_t wait_ms = ratelimit_take(api->new_limit, key, key_len, time_mono_ms());
    return (wait_ms + 999) / 1000;
}

/* Takes one token from the client's budget; if it is spent, answers 429
 * with Retry-After and returns false. */
static bool take_new_budget(api_t *api, const http_request_t *req)
{
    uint64_t retry_s = discovery_take_new_budget(api, req);
    if (retry_s == 0)
        return true;
    char headers[64], msg[128];
    snprintf(headers, sizeof headers, "Retry-After: %llu\r\n", (unsigned long long)retry_s);
    snprintf(msg, sizeof msg, "too many new tokens from your address; retry in %llu s\n",
             (unsigned long long)retry_s);
    http_reply_t r = {.status = 429,
                      .content_type = "text/plain; charset=utf-8",
                      .extra_headers = headers,
                      .body = msg,
                      .body_len = strlen(msg)};
    api_send(api, req->handle, METRICS_NEW, req->method_name, &r);
    return false;
}

/* GET, PUT and POST make a token; any other method (HEAD included: link
 * prefetchers and probes send it) answers 405 and makes none. Returns
 * false when it answered. */
static bool new_method_allowed(api_t *api, const http_request_t *req)
{
    int m = req->method;
    if (m == HTTP_GET || m == HTTP_PUT || m == HTTP_POST)
        return true;
    static const char msg[] = "method not allowed: /new makes a token on GET, PUT or POST\n";
    http_reply_t r = {.status = 405,
                      .content_type = "text/plain; charset=utf-8",
                      .extra_headers = "Allow: GET, PUT, POST\r\n",
                      .body = msg,
                      .body_len = sizeof msg - 1};
    api_send(api, req->handle, METRICS_NEW, req->method_name, &r);
    return false;
}

void discovery_new(api_t *api, const http_request_t *req)
{
    const char *method = req->method_name;
    if (!new_method_allowed(api, req) || !take_new_budget(api, req))
        return;
    form_t f;
    form_init(&f);
    if (form_is_urlencoded(req->content_type))
        form_parse(&f, req->body, req->body_len);
    form_parse(&f, req->query, req->query_len);
    const char *sv = form_get(&f, "size");
    uint64_t size = DEFAULT_SIZE;
    char msg[160];
    if (f.error) {
        snprintf(msg, sizeof msg, "bad query: %s\n", f.error);
        send_text(api, req->handle, METRICS_NEW, method, 400, msg);
        form_free(&f);
        return;
    }
    if (sv && *sv &&
        (!form_parse_u64(sv, &size) || size < REGISTRY_MIN_SIZE || size > REGISTRY_MAX_SIZE)) {
        snprintf(msg, sizeof msg, "size must be a whole number from %d to %d\n", REGISTRY_MIN_SIZE,
                 REGISTRY_MAX_SIZE);
        send_text(api, req->handle, METRICS_NEW, method, 400, msg);
        form_free(&f);
        return;
    }
    form_free(&f);
    if (!api_check_writable(api, req->handle, METRICS_NEW, method))
        return;

    buf_t prefix = BUF_INIT;
    if (api->host_prefix) {
        buf_puts(&prefix, api->host_prefix);
    } else if (host_is_sane(req->host)) {
        buf_puts(&prefix, req->is_tls ? "https://" : "http://");
        buf_puts(&prefix, req->host);
    } else {
        send_text(api, req->handle, METRICS_NEW, method, 400,
                  "no usable Host header: start disco with --host to set the URL prefix\n");
        return;
    }
    char token[2 * TOKEN_BYTES + 1];
    reg_result_t res = {0};
    res.err = REG_E_NODE_EXIST;
    for (int tries = 0; tries < 3 && res.err == REG_E_NODE_EXIST; tries++) {
        reg_result_clear(&res);
        if (make_token(token) != 0) {
            log_error("getrandom failed; cannot make a token");
            res.err = REG_E_INTERNAL;
            break;
        }
        registry_create_token(api->reg, token, (unsigned)size, time_wall_ns(), &res);
    }
    if (res.err) {
        send_text(api, req->handle, METRICS_NEW, method, 503,
                  "cannot create a token right now; try again\n");
    } else {
        token_log_created(api, req, token, (unsigned)size);
        if (api->listens_on_all && api_prefix_is_loopback(buf_cstr(&prefix)))
            log_warn("/new printed the loopback URL %s/%s (from %s) while disco listens on "
                     "every interface: other machines cannot reach it; ask with the name "
                     "members use, or start disco with --host",
                     buf_cstr(&prefix), token, api->host_prefix ? "--host" : "the Host header");
        buf_putc(&prefix, '/');
        buf_puts(&prefix, token);
        http_reply_t r = {.status = 200,
                          .content_type = "text/plain; charset=utf-8",
                          .body = prefix.data,
                          .body_len = prefix.len};
        api_send(api, req->handle, METRICS_NEW, method, &r);
    }
    reg_result_clear(&res);
    buf_free(&prefix);
}

void discovery_health(api_t *api, const http_request_t *req)
{
    bool ok = !api->backend || backend_writable(api->backend);
    send_text(api, req->handle, METRICS_HEALTH, req->method_name, ok ? 200 : 503,
              ok ? "OK" : "store unavailable");
}

void discovery_metrics(api_t *api, const http_request_t *req)
{
    metrics_gauges_t g = {
        .tokens = registry_token_count(api->reg),
        .parked_waits = registry_waiter_count(api->reg),
        .connections = api->srv ? http_server_connection_count(api->srv) : 0,
        .index = registry_index(api->reg),
    };
    if (api->backend) {
        backend_stats_t st = {0};
        backend_stats(api->backend, &st);
        g.store_log_frames = st.log_frames;
        g.store_checkpoints = st.checkpoints;
        g.store_direct_commits = st.direct_commits;
        g.store_log_sync = st.log_sync;
        g.store_checkpoint_sync = st.checkpoint_sync;
        g.store_direct_sync = st.direct_sync;
    }
    buf_t body = BUF_INIT;
    metrics_render(api->metrics, &g, &body);
    http_reply_t r = {.status = buf_failed(&body) ? 500 : 200,
                      .content_type = "text/plain; version=0.0.4; charset=utf-8",
                      .body = body.data,
                      .body_len = buf_failed(&body) ? 0 : body.len};
    access_log_end(api, req->handle, r.status, r.body_len);
    http_reply(req->handle, &r);
    buf_free(&body);
}

void discovery_robots(api_t *api, const http_request_t *req)
{
    static const char robots[] = "User-agent: *\nDisallow: /\n";
    access_log_end(api, req->handle, 200, sizeof robots - 1);
    http_reply_simple(req->handle, 200, "text/plain; charset=utf-8", robots, sizeof robots - 1);
}

void discovery_index_page(api_t *api, const http_request_t *req)
{
    static const char page[] =
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>disco</title></head>\n"
        "<body>\n<h1>disco: etcd cluster discovery</h1>\n"
        "<p>This service helps the members of a new etcd cluster find each other.</p>\n"
        "<p>Get a discovery URL for a cluster of 3 members:</p>\n"
        "<pre>curl -s 'http://HOST/new?size=3'</pre>\n"
        "<p>then start every member with <code>--discovery=&lt;that URL&gt;</code>. "
        "A token bootstraps one cluster, once; members beyond the size become proxies.</p>\n"
        "<p>The etcd v2 keys form works too: "
        "<code>--discovery=http://HOST/v2/keys/_etcd/registry/&lt;token&gt;</code>.</p>\n"
        "</body></html>\n";
    access_log_end(api, req->handle, 200, sizeof page - 1);
    http_reply_simple(req->handle, 200, "text/html; charset=utf-8", page, sizeof page - 1);
}
