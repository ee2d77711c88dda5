/*
 * v2keys.c - etcd's v2 keys API over the registry.
 *
 * Request parsing follows etcd 3.4's parseKeyRequest (the order of checks
 * decides which error a bad request gets), and the choice of store
 * operation follows its v2 applier: PUT is create (prevExist=false), update
 * (prevExist=true), compareAndSwap (prevValue/prevIndex) or set; DELETE is
 * compareAndDelete or delete; POST is an in-order create; GET is a read or,
 * with wait=true, a watch that may park.
 *
 * Deliberate differences, documented in docs/decisions.md: `refresh` and
 * `stream` are not supported (400 and ignored respectively).
 */
#include "api/v2keys.h"

#include <assert.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "api/discovery.h"
#include "api/form.h"
#include "api/listing_cache.h"
#include "api/token_log.h"
#include "api/v2json.h"
#include "util/timeutil.h"

/* A watch parked on a connection until an event, a timeout or a close. */
typedef struct parked_watch {
    reg_waiter_t w;
    api_t *api;
    http_req_t req;
    enum metrics_endpoint ep;
} parked_watch_t;

/* What a v2 request asks for, once its parameters are parsed. */
typedef struct v2_params {
    uint64_t prev_index, wait_index;
    bool recursive, sorted, wait, dir, no_value_on_success;
    const char *prev_value; /* "" when absent */
    const char *value;      /* "" when absent */
    reg_ttl_t ttl;
    int prev_exist; /* -1 absent, 0 false, 1 true */
} v2_params_t;

typedef struct param_error {
    int code;
    const char *cause;
} param_error_t;

static bool get_u64(const form_t *f, const char *name, uint64_t *out)
{
    const char *v = form_get(f, name);
    *out = 0;
    return !v || form_parse_u64(v, out);
}

static bool get_bool(const form_t *f, const char *name, bool *out)
{
    const char *v = form_get(f, name);
    *out = false;
    return !v || form_parse_bool(v, out);
}

/* etcd's parseKeyRequest, check by check. Returns false with *err set. */
static bool parse_params(const form_t *f, int method, v2_params_t *p, param_error_t *err)
{
    static const char *const bools[] = {"recursive", "sorted", "wait", "dir", "quorum", "stream"};
    static const char *const bool_causes[] = {
        "invalid value for \"recursive\"", "invalid value for \"sorted\"",
        "invalid value for \"wait\"",      "invalid value for \"dir\"",
        "invalid value for \"quorum\"",    "invalid value for \"stream\""};
    memset(p, 0, sizeof *p);
    p->prev_exist = -1;
    if (!get_u64(f, "prevIndex", &p->prev_index)) {
        *err = (param_error_t){203, "invalid value for \"prevIndex\""};
        return false;
    }
    if (!get_u64(f, "waitIndex", &p->wait_index)) {
        *err = (param_error_t){203, "invalid value for \"waitIndex\""};
        return false;
    }
    bool vals[6];
    for (size_t i = 0; i < 6; i++) {
        if (!get_bool(f, bools[i], &vals[i])) {
            *err = (param_error_t){209, bool_causes[i]};
            return false;
        }
    }
    p->recursive = vals[0];
    p->sorted = vals[1];
    p->wait = vals[2];
    p->dir = vals[3];
    if (p->wait && method != HTTP_GET) {
        *err = (param_error_t){209, "\"wait\" can only be used with GET requests"};
        return false;
    }
    const char *pv = form_get(f, "prevValue");
    if (pv && !*pv) {
        *err = (param_error_t){201, "\"prevValue\" cannot be empty"};
        return false;
    }
    p->prev_value = pv ? pv : "";
    if (!get_bool(f, "noValueOnSuccess", &p->no_value_on_success)) {
        *err = (param_error_t){209, "invalid value for \"noValueOnSuccess\""};
        return false;
    }
    const char *ttl = form_get(f, "ttl");
    if (ttl && *ttl) {
        if (!form_parse_u64(ttl, &p->ttl.ttl_s)) {
            *err = (param_error_t){202, "invalid value for \"ttl\""};
            return false;
        }
        p->ttl.has_ttl = true;
    }
    if (form_has(f, "prevExist")) {
        bool b;
        if (!form_parse_bool(form_get(f, "prevExist"), &b)) {
            *err = (param_error_t){209, "invalid value for prevExist"};
            return false;
        }
        p->prev_exist = b;
    }
    if (form_has(f, "refresh")) {
        *err = (param_error_t){209, "refresh is not supported by this discovery service"};
        return false;
    }
    const char *v = form_get(f, "value");
    p->value = v ? v : "";
    return true;
}

/*
 * The body of a get's answer: from the listing cache while the node's token
 * is unchanged, else rendered into `body` and kept for the next poll unless
 * it shows a TTL (seconds left change with the clock). Sets body->failed
 * when out of memory.
 */
static void get_body(api_t *api, const reg_result_t *res, const v2_params_t *p, buf_t *body,
                     const char **data, size_t *len)
{
    unsigned variant = (p->recursive ? 1u : 0u) | (p->sorted ? 2u : 0u);
    if (listing_cache_find(api->listings, res->node, variant, res->stamp, data, len))
        return;
    bool shows_ttl = v2json_get(body, res->node, p->recursive, p->sorted, res->now_ns);
    if (!shows_ttl && !buf_failed(body))
        listing_cache_store(api->listings, res->node, variant, res->stamp, body->data, body->len);
    *data = body->data;
    *len = body->len;
}

/* A write's answer: its event (201 when it made a node, else 200). */
static void send_write_event(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
                             const reg_result_t *res, bool no_value_on_success)
{
    const reg_event_t *ev = res->event;
    api_note_write(api, ev); /* registrations and completed tokens (metrics) */
    bool created = ev->action == REG_ACT_CREATE || (ev->action == REG_ACT_SET && !ev->has_prev);
    bool no_value =
        no_value_on_success && (ev->action == REG_ACT_SET || ev->action == REG_ACT_CAS ||
                                ev->action == REG_ACT_CREATE || ev->action == REG_ACT_UPDATE);
    buf_t body = BUF_INIT;
    v2json_event(&body, ev, no_value);
    if (buf_failed(&body)) {
        buf_free(&body);
        api_send_v2_error(api, c, ep, method, 0, 300, "out of memory", res->index);
        return;
    }
    http_reply_t r = {.status = created ? 201 : 200,
                      .content_type = "application/json",
                      .has_etcd_index = true,
                      .etcd_index = res->index,
                      .body = body.data,
                      .body_len = body.len};
    api_send(api, c, ep, method, &r);
    buf_free(&body);
}

static void send_result(api_t *api, const http_request_t *req, enum metrics_endpoint ep,
                        reg_result_t *res, const v2_params_t *p)
{
    if (res->err) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, res->err, res->cause,
                          res->index);
        return;
    }
    if (res->event) {
        send_write_event(api, req->handle, ep, req->method_name, res, p->no_value_on_success);
        return;
    }
    buf_t body = BUF_INIT;
    const char *data = NULL;
    size_t len = 0;
    get_body(api, res, p, &body, &data, &len);
    if (buf_failed(&body)) {
        buf_free(&body);
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, 300, "out of memory",
                          res->index);
        return;
    }
    http_reply_t r = {.status = 200,
                      .content_type = "application/json",
                      .has_etcd_index = true,
                      .etcd_index = res->index,
                      .body = data,
                      .body_len = len};
    api_send(api, req->handle, ep, req->method_name, &r);
    buf_free(&body);
}

/* A write whose outcome is pending (the etcd backend), answered once the
 * registry settles it: what the answer needs of the request. */
typedef struct pending_answer {
    api_t *api;
    enum metrics_endpoint ep;
    const char *method;
    bool no_value_on_success;
    token_log_who_t who; /* its strings in `space`, after the key */
    char space[];        /* the full v2 key, for the log line; who's strings */
} pending_answer_t;

static void answer_pending(void *ctx, http_req_t c, const reg_result_t *res)
{
    pending_answer_t *pa = ctx;
    /* Logged as a settled write is, with a cause of our own (token_log
     * may replace it; `res` is the registry's). */
    reg_result_t logged = *res;
    logged.cause = res->cause ? strdup(res->cause) : NULL;
    if (logged.cause || !res->cause)
        token_log_v2(pa->api, &pa->who, pa->space, &logged);
    const char *cause = logged.cause ? logged.cause : res->cause;
    if (res->err == REG_E_INTERNAL) /* not made, or not known: retryable */
        api_send_v2_error(pa->api, c, pa->ep, pa->method, 503, res->err, cause, res->index);
    else if (res->err)
        api_send_v2_error(pa->api, c, pa->ep, pa->method, 0, res->err, cause, res->index);
    else
        send_write_event(pa->api, c, pa->ep, pa->method, res, pa->no_value_on_success);
    free(logged.cause);
}

static void await_pending(api_t *api, const http_request_t *req, const char *key,
                          enum metrics_endpoint ep, const reg_result_t *res, const v2_params_t *p)
{
    size_t key_len = strlen(key) + 1;
    token_log_who_t who = token_log_who(req);
    pending_answer_t *pa = malloc(sizeof *pa + key_len + token_log_who_size(&who));
    if (!pa) {
        registry_forget(api->reg, res->ticket);
        api_send_v2_error(api, req->handle, ep, req->method_name, 503, 300, "out of memory",
                          res->index);
        return;
    }
    *pa = (pending_answer_t){api, ep, req->method_name, p->no_value_on_success,
                             token_log_who_keep(&who, pa->space + key_len)};
    memcpy(pa->space, key, key_len);
    api_await_write(api, req->handle, ep, req->method_name, res->ticket, answer_pending, pa);
}

/* ---- watches ---------------------------------------------------------- */

/*
 * The whole HTTP answer to a watch that `ev` answers, for X-Etcd-Index
 * `etcd_index`. One event wakes every watcher of a token at once, and those
 * that began at the same index get the same bytes, so the last answer is
 * kept (api->watch_answer) and shared. NULL when out of memory.
 */
static http_prepared_t *watch_answer(api_t *api, const reg_event_t *ev, uint64_t etcd_index)
{
    if (api->watch_answer && api->watch_answer_index == ev->index &&
        api->watch_answer_etcd_index == etcd_index)
        return api->watch_answer;
    const char *data;
    size_t len;
    if (!v2json_event_wire((reg_event_t *)ev, &data, &len))
        return NULL;
    http_reply_t r = {.status = 200,
                      .content_type = "application/json",
                      .has_etcd_index = true,
                      .etcd_index = etcd_index,
                      .body = data,
                      .body_len = len};
    http_prepared_t *p = http_prepare(&r);
    if (!p)
        return NULL;
    http_prepared_unref(api->watch_answer);
    api->watch_answer = p;
    api->watch_answer_index = ev->index;
    api->watch_answer_etcd_index = etcd_index;
    return p;
}

static void send_event(parked_watch_t *pw, const reg_event_t *ev)
{
    http_prepared_t *p = watch_answer(pw->api, ev, pw->w.start_index);
    if (!p) {
        api_send_v2_error(pw->api, pw->req, pw->ep, "GET", 0, 300, "out of memory",
                          pw->w.start_index);
        return;
    }
    api_send_prepared(pw->api, pw->req, pw->ep, "GET", p);
}

static void send_empty(parked_watch_t *pw)
{
    /* etcd's client reads "200 with an empty body" as "ask again". */
    http_reply_t r = {.status = 200,
                      .content_type = "application/json",
                      .has_etcd_index = true,
                      .etcd_index = pw->w.start_index};
    api_send(pw->api, pw->req, pw->ep, "GET", &r);
}

static void on_watch_event(reg_waiter_t *w, const reg_event_t *ev)
{
    parked_watch_t *pw = w->ctx;
    if (ev == REG_EVENT_CLEARED) /* a resync lost the history it waits in */
        api_send_v2_error(pw->api, pw->req, pw->ep, "GET", 0, REG_E_EVENT_INDEX_CLEARED,
                          "the requested history has been cleared (etcd compacted it)",
                          registry_index(pw->api->reg));
    else if (ev)
        send_event(pw, ev);
    else
        send_empty(pw); /* the token was removed; the next request learns it */
    free(pw);
}

static void on_park_end(http_req_t c, void *ctx, enum http_park_end why)
{
    parked_watch_t *pw = ctx;
    (void)c;
    registry_unwatch(pw->api->reg, &pw->w);
    if (why != HTTP_PARK_CLOSED)
        send_empty(pw);
    free(pw);
}

static void handle_watch(api_t *api, const http_request_t *req, const char *key,
                         enum metrics_endpoint ep, const v2_params_t *p)
{
    parked_watch_t *pw = calloc(1, sizeof *pw);
    if (!pw) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, 300, "out of memory",
                          registry_index(api->reg));
        return;
    }
    pw->api = api;
    pw->req = req->handle;
    pw->ep = ep;
    reg_result_t res;
    registry_watch(api->reg, key, p->recursive, p->wait_index, &pw->w, on_watch_event, pw, &res);
    if (res.err) {
        token_log_who_t who = token_log_who(req);
        token_log_v2(api, &who, key, &res);
        send_result(api, req, ep, &res, p);
        free(pw);
    } else if (res.event) {
        pw->w.start_index = res.index;
        send_event(pw, res.event);
        free(pw);
    } else {
        http_park(req->handle, HTTP_PARK_WATCH, on_park_end, pw);
    }
    reg_result_clear(&res);
}

/* ---- the handler -------------------------------------------------------- */

/* Bytes of `key` below its token: "m1/x" of "/_etcd/registry/tok/m1/x";
 * the whole key when it is not under a token. */
static size_t key_bytes_below_token(const char *key)
{
    static const char prefix[] = REGISTRY_PREFIX "/";
    if (strncmp(key, prefix, sizeof prefix - 1) != 0)
        return strlen(key);
    const char *rest = strchr(key + sizeof prefix - 1, '/');
    return rest ? strlen(rest + 1) : 0;
}

/* The configured size limits on keys and values, and no NUL byte hidden in
 * a form body (C strings would cut the value there). Answers 400
 * errorCode 209 naming the limit and returns false when one is broken. */
static bool within_limits(api_t *api, const http_request_t *req, const char *key,
                          enum metrics_endpoint ep, bool form_body)
{
    char cause[160];
    size_t kb = key_bytes_below_token(key);
    if (kb > api->max_key_bytes) {
        snprintf(cause, sizeof cause,
                 "the key is %zu bytes below its token; the limit is %zu (--max-key-bytes)", kb,
                 api->max_key_bytes);
    } else if (form_body && memchr(req->body, '\0', req->body_len)) {
        snprintf(cause, sizeof cause, "a NUL byte in the form body");
    } else {
        return true;
    }
    api_send_v2_error(api, req->handle, ep, req->method_name, 400, REG_E_INVALID_FIELD, cause,
                      registry_index(api->reg));
    return false;
}

/* A full v2 key split at its token: "/_etcd/registry/<name><rest>". */
typedef struct token_key {
    const char *name;
    size_t name_len;
    const char *rest; /* "" for the token directory, "/_config/size", ... */
    size_t rest_len;  /* without trailing slashes */
} token_key_t;

static bool split_token_key(const char *key, token_key_t *tk)
{
    static const char prefix[] = REGISTRY_PREFIX "/";
    if (strncmp(key, prefix, sizeof prefix - 1) != 0)
        return false;
    tk->name = key + sizeof prefix - 1;
    tk->name_len = strcspn(tk->name, "/");
    tk->rest = tk->name + tk->name_len;
    tk->rest_len = strlen(tk->rest);
    while (tk->rest_len > 0 && tk->rest[tk->rest_len - 1] == '/')
        tk->rest_len--;
    return tk->name_len > 0;
}

/*
 * A PUT or DELETE of an existing token's directory. etcd refuses most of
 * them, and disco answers those exactly as etcd does: a value, a dir=true
 * set, a compare or a non-recursive delete of a directory is 403 errorCode
 * 102 (not a file), prevExist=false 412/105, a dir=true delete of a
 * non-empty directory 403/108. What etcd allows (a recursive delete, an
 * update without a value) disco still refuses, since a token ends only by
 * age, with 403 errorCode 107 (docs/decisions.md). Returns false, having
 * answered nothing, for any other request.
 */
static bool refuse_token_dir_write(api_t *api, const http_request_t *req, const char *key,
                                   enum metrics_endpoint ep, const v2_params_t *p)
{
    int m = req->method;
    token_key_t tk;
    if ((m != HTTP_PUT && m != HTTP_DELETE) || !split_token_key(key, &tk) || tk.rest_len != 0)
        return false;
    reg_result_t res;
    registry_get(api->reg, key, time_wall_ns(), &res);
    if (res.err) {
        reg_result_clear(&res); /* an unknown token: the operation says 404 itself */
        return false;
    }
    /* A token directory always holds its _config. */
    assert(reg_node_is_dir(res.node) && reg_node_child_count(res.node) > 0);
    buf_t cause = BUF_INIT;
    reg_node_put_key(res.node, &cause);
    reg_result_clear(&res);
    bool compare = p->prev_index > 0 || *p->prev_value;
    int status = 0, code = REG_E_NOT_FILE;
    if (m == HTTP_PUT && p->prev_exist == 0) {
        code = REG_E_NODE_EXIST;
    } else if (m == HTTP_PUT && p->prev_exist == 1 && !compare && !*p->value) {
        code = 0; /* etcd: an update of the directory's TTL */
    } else if (m == HTTP_DELETE && !compare && p->recursive) {
        code = 0; /* etcd: removes the token */
    } else if (m == HTTP_DELETE && !compare && p->dir) {
        code = REG_E_DIR_NOT_EMPTY;
    }
    if (code == 0) {
        status = 403;
        code = REG_E_ROOT_READ_ONLY;
        buf_puts(&cause, " is a token directory; it is removed only when the token expires");
    }
    if (buf_failed(&cause))
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, REG_E_INTERNAL,
                          "out of memory", registry_index(api->reg));
    else
        api_send_v2_error(api, req->handle, ep, req->method_name, status, code, buf_cstr(&cause),
                          registry_index(api->reg));
    buf_free(&cause);
    return true;
}

/*
 * A write that would create a token (a set or create of <token>/_config/size
 * of a token that does not exist) takes from the same per-address budget as
 * /new; when it is spent, answers 429 with Retry-After in etcd JSON,
 * errorCode 300 ("retry later"), and returns true. Member writes never
 * take from it.
 */
static bool refuse_token_over_budget(api_t *api, const http_request_t *req, const char *key,
                                     enum metrics_endpoint ep, const v2_params_t *p)
{
    static const char size_key[] = "/_config/size";
    token_key_t tk;
    bool compare = p->prev_index > 0 || *p->prev_value;
    if (req->method != HTTP_PUT || p->prev_exist == 1 || compare || !split_token_key(key, &tk) ||
        tk.rest_len != sizeof size_key - 1 || strncmp(tk.rest, size_key, tk.rest_len) != 0)
        return false;
    reg_result_t res;
    registry_get(api->reg, key, time_wall_ns(), &res);
    bool exists = res.err != REG_E_KEY_NOT_FOUND;
    reg_result_clear(&res);
    if (exists)
        return false; /* refused or answered by the registry: 412/105 */
    uint64_t retry_s = discovery_take_new_budget(api, req);
    if (retry_s == 0)
        return false;
    char headers[64], cause[128];
    snprintf(headers, sizeof headers, "Retry-After: %llu\r\n", (unsigned long long)retry_s);
    snprintf(cause, sizeof cause,
             "too many new tokens from your address (--new-rate); retry in %llu s",
             (unsigned long long)retry_s);
    uint64_t index = registry_index(api->reg);
    buf_t body = BUF_INIT;
    v2json_error(&body, REG_E_INTERNAL, cause, index);
    if (buf_failed(&body)) {
        buf_free(&body);
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, REG_E_INTERNAL,
                          "out of memory", index);
        return true;
    }
    http_reply_t r = {.status = 429,
                      .content_type = "application/json",
                      .has_etcd_index = true,
                      .etcd_index = index,
                      .extra_headers = headers,
                      .body = body.data,
                      .body_len = body.len};
    api_send(api, req->handle, ep, req->method_name, &r);
    buf_free(&body);
    return true;
}

void v2keys_handle(api_t *api, const http_request_t *req, const char *key, enum metrics_endpoint ep,
                   bool config_read_only)
{
    int m = req->method;
    if (m != HTTP_GET && m != HTTP_HEAD && m != HTTP_PUT && m != HTTP_POST && m != HTTP_DELETE) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 405, 209,
                          "method not allowed: use GET, HEAD, PUT, POST or DELETE",
                          registry_index(api->reg));
        return;
    }
    bool form_body = (m == HTTP_PUT || m == HTTP_POST) && form_is_urlencoded(req->content_type);
    if (!within_limits(api, req, key, ep, form_body))
        return;
    form_t f;
    form_init(&f);
    int rc = 0;
    char cause[160];
    if (form_body)
        rc = form_parse(&f, req->body, req->body_len); /* body values win: parse first */
    if (rc == 0)
        rc = form_parse(&f, req->query, req->query_len);
    v2_params_t p;
    param_error_t perr;
    if (rc != 0) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, 300, "out of memory", 0);
    } else if (f.error) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, 210, f.error, 0);
    } else if (!parse_params(&f, m, &p, &perr)) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, perr.code, perr.cause, 0);
    } else if ((m == HTTP_PUT || m == HTTP_POST) && strlen(p.value) > api->max_value_bytes) {
        snprintf(cause, sizeof cause,
                 "the value is %zu bytes; the limit is %zu (--max-value-bytes)", strlen(p.value),
                 api->max_value_bytes);
        api_send_v2_error(api, req->handle, ep, req->method_name, 400, REG_E_INVALID_FIELD, cause,
                          registry_index(api->reg));
    } else if (config_read_only && m != HTTP_GET && m != HTTP_HEAD && registry_key_in_config(key)) {
        api_send_v2_error(api, req->handle, ep, req->method_name, 0, 107,
                          "a token's _config is read-only here; tokens are made with /new",
                          registry_index(api->reg));
    } else if (p.wait) {
        handle_watch(api, req, key, ep, &p);
    } else if (refuse_token_dir_write(api, req, key, ep, &p) ||
               refuse_token_over_budget(api, req, key, ep, &p)) {
        /* answered */
    } else if (m != HTTP_GET && m != HTTP_HEAD &&
               !api_check_writable(api, req->handle, ep, req->method_name)) {
        /* answered 503 */
    } else {
        reg_result_t res;
        int64_t now = time_wall_ns();
        registry_t *reg = api->reg;
        bool compare = p.prev_index > 0 || *p.prev_value;
        if (m == HTTP_GET || m == HTTP_HEAD) {
            registry_get(reg, key, now, &res);
        } else if (m == HTTP_POST) {
            registry_create(reg, key, p.dir, p.value, true, p.ttl, now, &res);
        } else if (m == HTTP_DELETE) {
            if (compare)
                registry_compare_and_delete(reg, key, p.prev_value, p.prev_index, now, &res);
            else
                registry_delete(reg, key, p.dir, p.recursive, now, &res);
        } else if (p.prev_exist == 1 && !compare) {
            registry_update(reg, key, p.value, p.ttl, now, &res);
        } else if (p.prev_exist == 0) {
            registry_create(reg, key, p.dir, p.value, false, p.ttl, now, &res);
        } else if (compare) {
            registry_compare_and_swap(reg, key, p.prev_value, p.prev_index, p.value, p.ttl, now,
                                      &res);
        } else {
            registry_set(reg, key, p.dir, p.value, p.ttl, now, &res);
        }
        if (res.pending) {
            await_pending(api, req, key, ep, &res, &p);
        } else {
            token_log_who_t who = token_log_who(req);
            token_log_v2(api, &who, key, &res);
            send_result(api, req, ep, &res, &p);
        }
        reg_result_clear(&res);
    }
    form_free(&f);
}
