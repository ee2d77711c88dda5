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
#include "api/page.h"
#include "api/token_log.h"
#include "util/html.h"
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

/*
 * Answers a made token's URL (in `url`). Plain text, as discovery.etcd.io
 * did; but the front page's form (a POST from a browser, which asks for
 * HTML) is sent on to the token's page with 303 See Other, the body still
 * the URL for a client that does not follow it. The Location is the
 * page's path: the browser stays on the host it used.
 */
static void send_new_token_url(api_t *api, const http_request_t *req, buf_t *url, const char *token)
{
    buf_t location = BUF_INIT;
    bool to_page = req->method == HTTP_POST && page_wants_html(req->accept);
    if (to_page)
        buf_printf(&location, "Location: /%s\r\n", token);
    if (buf_failed(url) || buf_failed(&location)) {
        send_text(api, req->handle, METRICS_NEW, req->method_name, 503,
                  "out of memory; try again\n");
    } else {
        http_reply_t r = {.status = to_page ? 303 : 200,
                          .content_type = "text/plain; charset=utf-8",
                          .extra_headers = to_page ? buf_cstr(&location) : NULL,
                          .body = url->data,
                          .body_len = url->len};
        api_send(api, req->handle, METRICS_NEW, req->method_name, &r);
    }
    buf_free(&location);
}

bool discovery_url_prefix(api_t *api, const http_request_t *req, buf_t *out)
{
    if (api->host_prefix) {
        buf_puts(out, api->host_prefix);
    } else if (host_is_sane(req->host)) {
        buf_puts(out, req->is_tls ? "https://" : "http://");
        buf_puts(out, req->host);
    } else {
        return false;
    }
    return true;
}

/* A /new whose token is pending in etcd: what its answer needs. */
typedef struct pending_new {
    api_t *api;
    const char *method;
    bool to_page;
    unsigned size;
    token_log_who_t who; /* its strings in `url`, after the URL */
    char token[2 * TOKEN_BYTES + 1];
    char url[]; /* prefix/token, then who's strings */
} pending_new_t;

static void answer_pending_new(void *ctx, http_req_t c, const reg_result_t *res)
{
    pending_new_t *pn = ctx;
    if (res->err) {
        send_text(pn->api, c, METRICS_NEW, pn->method, 503,
                  "cannot create a token right now; try again\n");
        return;
    }
    token_log_created(pn->api, &pn->who, pn->token, pn->size);
    char location[sizeof pn->token + 16];
    snprintf(location, sizeof location, "Location: /%s\r\n", pn->token);
    http_reply_t r = {.status = pn->to_page ? 303 : 200,
                      .content_type = "text/plain; charset=utf-8",
                      .extra_headers = pn->to_page ? location : NULL,
                      .body = pn->url,
                      .body_len = strlen(pn->url)};
    api_send(pn->api, c, METRICS_NEW, pn->method, &r);
}

static void await_new(api_t *api, const http_request_t *req, const reg_result_t *res, buf_t *prefix,
                      const char *token, unsigned size)
{
    buf_putc(prefix, '/');
    buf_puts(prefix, token);
    token_log_who_t who = token_log_who(req);
    pending_new_t *pn =
        buf_failed(prefix) ? NULL : malloc(sizeof *pn + prefix->len + 1 + token_log_who_size(&who));
    if (!pn) {
        registry_forget(api->reg, res->ticket);
        send_text(api, req->handle, METRICS_NEW, req->method_name, 503,
                  "out of memory; try again\n");
        return;
    }
    pn->api = api;
    pn->method = req->method_name;
    pn->to_page = req->method == HTTP_POST && page_wants_html(req->accept);
    snprintf(pn->token, sizeof pn->token, "%s", token);
    memcpy(pn->url, prefix->data, prefix->len);
    pn->url[prefix->len] = '\0';
    pn->size = size;
    pn->who = token_log_who_keep(&who, pn->url + prefix->len + 1);
    api_await_write(api, req->handle, METRICS_NEW, req->method_name, res->ticket,
                    answer_pending_new, pn);
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
    if (!discovery_url_prefix(api, req, &prefix)) {
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
    } else if (res.pending) {
        await_new(api, req, &res, &prefix, token, (unsigned)size);
    } else {
        token_log_who_t who = token_log_who(req);
        token_log_created(api, &who, token, (unsigned)size);
        if (api->listens_on_all && api_prefix_is_loopback(buf_cstr(&prefix)))
            log_warn("/new printed the loopback URL %s/%s (from %s) while disco listens on "
                     "every interface: other machines cannot reach it; ask with the name "
                     "members use, or start disco with --host",
                     buf_cstr(&prefix), token, api->host_prefix ? "--host" : "the Host header");
        buf_putc(&prefix, '/');
        buf_puts(&prefix, token);
        send_new_token_url(api, req, &prefix, token);
    }
    reg_result_clear(&res);
    buf_free(&prefix);
}

void discovery_health(api_t *api, const http_request_t *req)
{
    if (api->backend && api->backend->ops->live) {
        /* A mirror (etcd): 200 while it is live, so reads and parked
         * watches are served; writes are reported apart (a second line),
         * and ?writes=1 makes them decide the status (docs/operating.md). */
        bool live = backend_live(api->backend);
        bool writable = backend_writable(api->backend);
        bool want_writes = strstr(req->query, "writes=1") != NULL;
        bool ok = live && (!want_writes || writable);
        char body[96];
        snprintf(body, sizeof body, "%s\nwrites: %s\n", live ? "OK" : "mirror not live",
                 writable ? "OK" : "unavailable");
        send_text(api, req->handle, METRICS_HEALTH, req->method_name, ok ? 200 : 503, body);
        return;
    }
    bool ok = !api->backend || backend_writable(api->backend);
    send_text(api, req->handle, METRICS_HEALTH, req->method_name, ok ? 200 : 503,
              ok ? "OK" : "store unavailable");
}

void discovery_metrics(api_t *api, const http_request_t *req)
{
    metrics_gauges_t g = {
        .tokens = registry_token_count(api->reg),
        .parked_waits = registry_waiter_count(api->reg),
        .parked_v3 = api->v3_parked,
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
        g.is_etcd = st.is_etcd;
        g.etcd_live = st.etcd_live;
        g.etcd_lag_revisions = st.etcd_lag_revisions;
        g.etcd_lag_ms = st.etcd_lag_ms;
        g.etcd_endpoint = st.etcd_endpoint;
        g.etcd_txns_committed = st.etcd_txns_committed;
        g.etcd_txns_lost_guard = st.etcd_txns_lost_guard;
        g.etcd_txns_failed = st.etcd_txns_failed;
        g.etcd_txns_unknown = st.etcd_txns_unknown;
        g.etcd_watch_restarts = st.etcd_watch_restarts;
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

/*
 * The front page: what this service is, the URL prefix its tokens really
 * get (from --host or the Host header, as /new prints them), how to make a
 * token with curl, and a form that makes one and opens its page.
 */
void discovery_index_page(api_t *api, const http_request_t *req)
{
    char nonce_buf[PAGE_NONCE_CHARS + 1];
    const char *nonce = page_make_nonce(nonce_buf) ? nonce_buf : NULL;
    buf_t prefix = BUF_INIT, body = BUF_INIT, headers = BUF_INIT;
    bool has_prefix = discovery_url_prefix(api, req, &prefix);
    buf_puts(&body, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                    "<title>disco: etcd cluster discovery</title>\n");
    page_put_style(&body, nonce);
    buf_puts(&body, "</head>\n<body>\n<h1>disco: etcd cluster discovery</h1>\n"
                    "<p>This service helps the members of a new etcd cluster find each other. "
                    "A token bootstraps one cluster, once; members beyond its size become "
                    "proxies.</p>\n<h2>Make a token</h2>\n");
    page_put_new_form(&body, DEFAULT_SIZE);
    buf_puts(&body, "<p>or from a shell:</p>\n<pre id=\"curl\">curl -s &#39;");
    if (has_prefix)
        html_put_escaped(&body, prefix.data, prefix.len);
    else
        buf_puts(&body, "http://HOST");
    buf_printf(&body, "/new?size=%d&#39;</pre>\n", DEFAULT_SIZE);
    buf_puts(&body, "<p>Tokens made here look like <code id=\"prefix\">");
    if (has_prefix)
        html_put_escaped(&body, prefix.data, prefix.len);
    else
        buf_puts(&body, "http://HOST");
    buf_puts(&body, "/&lt;token&gt;</code>; start every member with "
                    "<code>--discovery=&lt;that URL&gt;</code>. Open the URL in a browser to "
                    "see who has registered.</p>\n");
    if (!has_prefix)
        buf_puts(&body, "<p id=\"no-prefix\">This request had no usable Host header: start "
                        "disco with <code>--host</code> to set the URL prefix.</p>\n");
    buf_puts(&body, "<p>The etcd v2 keys form works too: "
                    "<code>--discovery=&lt;prefix&gt;/v2/keys/_etcd/registry/&lt;token&gt;"
                    "</code>.</p>\n</body></html>\n");
    page_put_html_headers(&headers, nonce);
    if (buf_failed(&prefix) || buf_failed(&body) || buf_failed(&headers)) {
        static const char oom[] = "out of memory; try again\n";
        access_log_end(api, req->handle, 503, sizeof oom - 1);
        http_reply_simple(req->handle, 503, "text/plain; charset=utf-8", oom, sizeof oom - 1);
    } else {
        http_reply_t r = {.status = 200,
                          .content_type = "text/html; charset=utf-8",
                          .extra_headers = buf_cstr(&headers),
                          .body = body.data,
                          .body_len = body.len};
        access_log_end(api, req->handle, 200, body.len);
        http_reply(req->handle, &r);
    }
    buf_free(&prefix);
    buf_free(&body);
    buf_free(&headers);
}
