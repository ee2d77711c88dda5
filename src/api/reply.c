/*
 * reply.c - every answer on a discovery path leaves through here: it is
 * counted in the metrics, and held until the state it shows is durable.
 *
 * With the write-ahead log that is the next group commit, a millisecond or
 * so away. A held answer parks its request (HTTP_PARK_HOLD) and waits in a
 * FIFO of non-decreasing index; api_on_durable() lets out every answer the
 * backend's durable index now covers. A held answer names its request by
 * handle: if the client goes first, the server ends the park and the
 * answer is dropped (on_held_end), so nothing is written to a closed or
 * reused connection.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "api/access_log.h"
#include "api/api_internal.h"
#include "api/v2json.h"
#include "api/v3.h"
#include "util/log.h"
#include "util/timeutil.h"

struct held_reply {
    held_reply_t *next, *prev;
    api_t *api;
    http_req_t req;
    uint64_t index; /* the state this answer shows */
    enum metrics_endpoint ep;
    const char *method;  /* static: http_method_str()'s or a literal */
    uint64_t started_ns; /* its handler's start, or 0: not timed */
    /* An answer shared with other connections (one reference), or NULL and
     * the answer is `reply`, whose body and extra_headers point into `data`
     * (a handler's buffers are gone when the answer leaves); content_type
     * is always a static string. */
    http_prepared_t *prepared;
    http_reply_t reply;
    char data[];
};

/*
 * When the handler of `c` started, if `c` is the request being handled now,
 * else 0: an answer given later (a woken or timed-out long poll) is not
 * timed, its time being the client's wait.
 */
static uint64_t answer_started_ns(const api_t *api, http_req_t c)
{
    if (!api->is_handling || api->handling.srv != c.srv || api->handling.slot != c.slot ||
        api->handling.gen != c.gen)
        return 0;
    return api->handling_started_ns;
}

/* Every answer on a discovery path is counted here, and timed when it has
 * a start. */
static void count_answer(api_t *api, enum metrics_endpoint ep, int status, const char *method,
                         uint64_t started_ns)
{
    metrics_count(api->metrics, ep, status, method);
    if (started_ns)
        metrics_observe(api->metrics, ep, histogram_now_ns() - started_ns);
}

static void held_unlink(api_t *api, held_reply_t *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else
        api->held_head = h->next;
    if (h->next)
        h->next->prev = h->prev;
    else
        api->held_tail = h->prev;
    h->next = h->prev = NULL;
}

static void held_free(held_reply_t *h)
{
    http_prepared_unref(h->prepared);
    free(h);
}

/*
 * The server ends a held answer's request: the client went away (drop the
 * answer), the wait timeout passed (503: not confirmed in time), or the
 * server is stopping (keep waiting).
 */
static void on_held_end(http_req_t c, void *ctx, enum http_park_end why)
{
    held_reply_t *h = ctx;
    api_t *api = h->api;
    if (why == HTTP_PARK_SHUTDOWN) {
        /* The change is applied and its commit is moments away: answering
         * 503 now would make a member give up on a registration that does
         * land. Keep waiting; the shutdown grace period bounds it. */
        http_park(c, HTTP_PARK_HOLD, on_held_end, h);
        return;
    }
    held_unlink(api, h);
    if (why != HTTP_PARK_CLOSED) {
        /* Not confirmed in time: a retryable 5xx, never a false success. */
        api_send_v2_error(api, c, h->ep, h->method, 503, 300,
                          "the store has not confirmed this change yet; retry",
                          registry_index(api->reg));
    }
    held_free(h);
}

/*
 * Every answer on a discovery path shows the registry as of its current
 * index; it may leave only once the store has made that index durable.
 * With group commit that is the next commit, a millisecond or so away.
 */
static bool must_hold(api_t *api, enum metrics_endpoint ep, int status)
{
    /* A 5xx shows no state: it never waits. */
    if (ep == METRICS_HEALTH || !api->backend || status >= 500)
        return false;
    return backend_durable_index(api->backend) < registry_index(api->reg);
}

/* A held answer with room for `data_bytes`, or NULL when out of memory. */
static held_reply_t *held_new(api_t *api, http_req_t c, enum metrics_endpoint ep,
                              const char *method, size_t data_bytes)
{
    held_reply_t *h = malloc(sizeof *h + data_bytes);
    if (!h)
        return NULL;
    h->next = h->prev = NULL;
    h->api = api;
    h->req = c;
    h->index = registry_index(api->reg);
    h->ep = ep;
    h->method = method;
    h->started_ns = answer_started_ns(api, c);
    h->prepared = NULL;
    return h;
}

/* Queues `h` behind the answers already waiting and parks its request. */
static void held_push(api_t *api, held_reply_t *h)
{
    h->prev = api->held_tail;
    if (api->held_tail)
        api->held_tail->next = h;
    else
        api->held_head = h;
    api->held_tail = h;
    http_park(h->req, HTTP_PARK_HOLD, on_held_end, h);
}

static void hold_failed(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method)
{
    log_warn("out of memory holding an answer; answering 503");
    api_send_v2_error(api, c, ep, method, 503, 300, "out of memory; retry", 0);
}

void api_send(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
              const http_reply_t *r)
{
    if (must_hold(api, ep, r->status)) {
        size_t hlen = r->extra_headers ? strlen(r->extra_headers) : 0;
        size_t tlen = r->trailers ? strlen(r->trailers) : 0;
        held_reply_t *h = held_new(api, c, ep, method, r->body_len + 1 + hlen + 1 + tlen + 1);
        if (!h) {
            hold_failed(api, c, ep, method);
            return;
        }
        h->reply = *r;
        if (r->body_len)
            memcpy(h->data, r->body, r->body_len);
        h->data[r->body_len] = '\0';
        h->reply.body = h->data;
        if (r->extra_headers) {
            char *headers = h->data + r->body_len + 1;
            memcpy(headers, r->extra_headers, hlen + 1);
            h->reply.extra_headers = headers;
        }
        if (r->trailers) {
            char *trailers = h->data + r->body_len + 1 + hlen + 1;
            memcpy(trailers, r->trailers, tlen + 1);
            h->reply.trailers = trailers;
        }
        held_push(api, h);
        return;
    }
    count_answer(api, ep, r->status, method, answer_started_ns(api, c));
    access_log_end(api, c, r->status, r->body_len);
    http_reply(c, r);
}

void api_send_prepared(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
                       http_prepared_t *p)
{
    int status = http_prepared_reply(p)->status;
    if (must_hold(api, ep, status)) {
        held_reply_t *h = held_new(api, c, ep, method, 0);
        if (!h) {
            hold_failed(api, c, ep, method);
            return;
        }
        h->prepared = http_prepared_ref(p);
        held_push(api, h);
        return;
    }
    count_answer(api, ep, status, method, answer_started_ns(api, c));
    access_log_end(api, c, status, http_prepared_reply(p)->body_len);
    http_reply_prepared(c, p);
}

void api_on_durable(void *ctx)
{
    api_t *api = ctx;
    backend_drain_notify(api->backend);
    uint64_t durable = backend_durable_index(api->backend);
    while (api->held_head && api->held_head->index <= durable) {
        held_reply_t *h = api->held_head;
        held_unlink(api, h);
        /* Live: a held answer whose request ended was unlinked then
         * (on_held_end), so its handle cannot be stale here. */
        int rc;
        if (h->prepared) {
            const http_reply_t *pr = http_prepared_reply(h->prepared);
            count_answer(api, h->ep, pr->status, h->method, h->started_ns);
            access_log_end(api, h->req, pr->status, pr->body_len);
            rc = http_reply_prepared(h->req, h->prepared);
        } else {
            count_answer(api, h->ep, h->reply.status, h->method, h->started_ns);
            access_log_end(api, h->req, h->reply.status, h->reply.body_len);
            rc = http_reply(h->req, &h->reply);
        }
        assert(rc == 0);
        (void)rc;
        held_free(h);
    }
    v3_on_durable(api);
}

bool api_check_writable(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method)
{
    if (!api->backend || backend_writable(api->backend))
        return true;
    if (ep == METRICS_NEW) {
        static const char msg[] = "the store is full or failing: no new tokens until it "
                                  "recovers; retry later\n";
        http_reply_t r = {.status = 503,
                          .content_type = "text/plain; charset=utf-8",
                          .extra_headers = "Retry-After: 5\r\n",
                          .body = msg,
                          .body_len = sizeof msg - 1};
        count_answer(api, ep, 503, method, answer_started_ns(api, c));
        access_log_end(api, c, 503, r.body_len);
        http_reply(c, &r);
    } else {
        api_send_v2_error(api, c, ep, method, 503, 300,
                          "the store is full or failing: writes are refused until it recovers; "
                          "retry later",
                          registry_index(api->reg));
    }
    return false;
}

void api_send_v2_error(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
                       int status, int code, const char *cause, uint64_t index)
{
    buf_t body = BUF_INIT;
    v2json_error(&body, code, cause, index);
    http_reply_t r = {.status = status ? status : v2json_error_status(code),
                      .content_type = "application/json",
                      .has_etcd_index = true,
                      .etcd_index = index,
                      .body = body.data,
                      .body_len = body.len};
    if (buf_failed(&body)) {
        r.status = 500;
        r.body = NULL;
        r.body_len = 0;
    }
    if (status == 405)
        r.extra_headers = "Allow: GET, HEAD, PUT, POST, DELETE\r\n";
    api_send(api, c, ep, method, &r);
    buf_free(&body);
}

/* The size in a token's _config/size, or 0 when it has none. */
static uint64_t token_size(const reg_node_t *token)
{
    for (const reg_node_t *c = reg_node_first_child(token); c; c = reg_node_next_sibling(c)) {
        if (strcmp(reg_node_name(c), "_config") != 0 || !reg_node_is_dir(c))
            continue;
        for (const reg_node_t *s = reg_node_first_child(c); s; s = reg_node_next_sibling(s)) {
            const char *v = reg_node_value(s);
            if (strcmp(reg_node_name(s), "size") == 0 && v)
                return strtoull(v, NULL, 10);
        }
    }
    return 0;
}

void api_note_write(api_t *api, const reg_event_t *ev)
{
    bool created = ev->action == REG_ACT_CREATE || (ev->action == REG_ACT_SET && !ev->has_prev);
    static const char prefix[] = REGISTRY_PREFIX "/";
    const char *key = ev->node.key;
    if (!created || ev->node.is_dir || strncmp(key, prefix, sizeof prefix - 1) != 0)
        return;
    const char *token = key + sizeof prefix - 1;
    const char *slash = strchr(token, '/');
    if (!slash || slash == token || strchr(slash + 1, '/') || slash[1] == '_')
        return; /* not a member: deeper, or _config and other hidden keys */
    metrics_count_registration(api->metrics);

    /* Rare (a few per token), so the token is looked up again rather than
     * passed down from the write. */
    char token_key[sizeof prefix + REGISTRY_MAX_TOKEN_BYTES];
    size_t len = (size_t)(slash - key);
    if (len >= sizeof token_key)
        return;
    memcpy(token_key, key, len);
    token_key[len] = '\0';
    reg_result_t res = {0};
    registry_get(api->reg, token_key, time_wall_ns(), &res);
    if (!res.err && res.node) {
        uint64_t members = 0, size = token_size(res.node);
        for (const reg_node_t *c = reg_node_first_child(res.node); c; c = reg_node_next_sibling(c))
            members += !reg_node_is_hidden(c);
        if (size > 0 && members == size)
            metrics_count_completed_token(api->metrics);
    }
    reg_result_clear(&res);
}

/* ---- writes whose outcome is pending (etcd) ------------------------------ */

typedef struct awaited_write {
    api_t *api;
    http_req_t req;
    enum metrics_endpoint ep;
    const char *method;
    uint64_t ticket;
    api_answer_fn answer;
    void *ctx;
} awaited_write_t;

static void on_write_settled(void *ctx, const reg_result_t *res)
{
    awaited_write_t *aw = ctx;
    aw->answer(aw->ctx, aw->req, res);
    free(aw->ctx);
    free(aw);
}

static void on_awaited_end(http_req_t c, void *ctx, enum http_park_end why)
{
    awaited_write_t *aw = ctx;
    if (why == HTTP_PARK_SHUTDOWN) {
        /* The outcome is moments away (bounded by the backend's hold);
         * the shutdown grace period bounds the wait. */
        http_park(c, HTTP_PARK_HOLD, on_awaited_end, aw);
        return;
    }
    registry_forget(aw->api->reg, aw->ticket);
    if (why != HTTP_PARK_CLOSED) {
        /* Not settled in time: a retryable error in the answer's own shape
         * (v2 JSON, gRPC), never a success. */
        reg_result_t r = {.err = REG_E_INTERNAL,
                          .cause = "the change has not been confirmed in time; read before "
                                   "retrying",
                          .index = registry_index(aw->api->reg)};
        aw->answer(aw->ctx, c, &r);
    }
    free(aw->ctx);
    free(aw);
}

void api_await_write(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
                     uint64_t ticket, api_answer_fn answer, void *ctx)
{
    awaited_write_t *aw = malloc(sizeof *aw);
    if (!aw) {
        free(ctx);
        registry_forget(api->reg, ticket);
        hold_failed(api, c, ep, method);
        return;
    }
    *aw = (awaited_write_t){api, c, ep, method, ticket, answer, ctx};
    registry_await(api->reg, ticket, on_write_settled, aw);
    http_park(c, HTTP_PARK_HOLD, on_awaited_end, aw);
}
