/*
 * fuzz_world.c - one disco per fuzz input, over a store that lags; see
 * fuzz_world.h.
 */
#include "fuzz_world.h"

#include <assert.h>
#include <errno.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/timeutil.h"

/* Loop turns without progress before an exchange counts as settled. */
#define SETTLED_TURNS 3
#define MAX_TURNS 4096
/* How long an exchange lets real time pass for answers still due: a few
 * wait timeouts, so a watch parked behind held answers still ends. */
#define WAIT_FOR_ANSWERS_MS (FUZZ_WAIT_TIMEOUT_MS * 3 + 30)

/* ---- the lagging store -------------------------------------------------- */

/*
 * store_memory underneath (it keeps events for fetch), with a durable index
 * that only moves on the world's durability tick, reported through an
 * eventfd as store_lmdb's writer thread reports its commits. Readable
 * trails durable, as in store_lmdb, so the registry keeps the newest
 * events in memory.
 */
struct fuzz_store {
    store_t base;
    store_t *inner;
    uint64_t appended; /* highest index appended */
    uint64_t durable;  /* highest index reported durable; <= appended */
    int efd;
};

static int fs_load(store_t *st, const store_replay_sink_t *sink, char *err)
{
    return store_load(((fuzz_store_t *)st)->inner, sink, err);
}

static int fs_append(store_t *st, const reg_event_t *ev)
{
    fuzz_store_t *fs = (fuzz_store_t *)st;
    int rc = store_append(fs->inner, ev);
    if (rc == 0 && ev->index > fs->appended)
        fs->appended = ev->index;
    return rc;
}

static int fs_remove_token(store_t *st, const char *name, const uint64_t *indexes, size_t n)
{
    return store_remove_token(((fuzz_store_t *)st)->inner, name, indexes, n);
}

static reg_event_t *fs_fetch(store_t *st, uint64_t index)
{
    fuzz_store_t *fs = (fuzz_store_t *)st;
    return index <= fs->durable ? store_fetch(fs->inner, index) : NULL;
}

static uint64_t fs_durable_index(store_t *st)
{
    return ((fuzz_store_t *)st)->durable;
}

static int fs_notify_fd(store_t *st)
{
    return ((fuzz_store_t *)st)->efd;
}

static void fs_drain_notify(store_t *st)
{
    uint64_t v;
    while (read(((fuzz_store_t *)st)->efd, &v, sizeof v) == (ssize_t)sizeof v)
        ;
}

static bool fs_writable(store_t *st)
{
    (void)st;
    return true;
}

static void fs_stats(store_t *st, store_stats_t *out)
{
    (void)st;
    *out = (store_stats_t){0};
}

static void fs_close(store_t *st)
{
    fuzz_store_t *fs = (fuzz_store_t *)st;
    store_close(fs->inner);
    if (fs->efd >= 0)
        close(fs->efd);
    free(fs);
}

static const struct store_ops fuzz_store_ops = {
    .load = fs_load,
    .append = fs_append,
    .remove_token = fs_remove_token,
    .fetch = fs_fetch,
    .durable_index = fs_durable_index,
    .readable_index = fs_durable_index,
    .notify_fd = fs_notify_fd,
    .drain_notify = fs_drain_notify,
    .writable = fs_writable,
    .stats = fs_stats,
    .close = fs_close,
    .name = "fuzz-lagging",
};

static fuzz_store_t *fuzz_store_new(void)
{
    fuzz_store_t *fs = calloc(1, sizeof *fs);
    if (!fs)
        return NULL;
    fs->base.ops = &fuzz_store_ops;
    fs->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    fs->inner = store_memory_new();
    if (fs->efd < 0 || !fs->inner) {
        if (fs->inner)
            store_close(fs->inner);
        if (fs->efd >= 0)
            close(fs->efd);
        free(fs);
        return NULL;
    }
    return fs;
}

/* Everything appended is durable now; the loop learns it from the eventfd. */
static void fuzz_store_commit(fuzz_store_t *fs)
{
    assert(fs->durable <= fs->appended);
    if (fs->durable == fs->appended)
        return;
    fs->durable = fs->appended;
    uint64_t one = 1;
    if (write(fs->efd, &one, sizeof one) != (ssize_t)sizeof one)
        abort(); /* an eventfd counter cannot overflow in one input */
}

/* ---- the world ------------------------------------------------------------ */

int fuzz_world_init(fuzz_world_t *w, bool server_ticks)
{
    memset(w, 0, sizeof *w);
    w->store = fuzz_store_new();
    if (!w->store)
        return -1;
    w->backend = backend_local_new(&w->store->base);
    w->reg = w->backend ? registry_new_with_backend(w->backend) : NULL;
    if (!w->reg) {
        fuzz_world_free(w);
        return -1;
    }
    int64_t now = time_wall_ns();
    reg_result_t res;
    registry_create_token(w->reg, FUZZ_TOKEN, 3, now, &res);
    reg_result_clear(&res);
    reg_ttl_t none = {0};
    registry_create(w->reg, FUZZ_MEMBER1, false, "m1=http://10.0.0.1:2380", false, none, now, &res);
    reg_result_clear(&res);
    registry_create(w->reg, FUZZ_MEMBER2, false, "m2=http://10.0.0.2:2380", false, none, now, &res);
    reg_result_clear(&res);
    registry_create_token(w->reg, FUZZ_BG_TOKEN, 3, now, &res);
    reg_result_clear(&res);
    fuzz_store_commit(w->store);
    fs_drain_notify(&w->store->base); /* the world starts durable, not "just committed" */
    api_config_t acfg = {.host_prefix = "http://disco.test",
                         .min_age_ms = 60 * 1000,
                         .gc_every_ms = 1000,
                         .new_rate_per_s = 10,
                         .new_burst = 20};
    w->api = api_new(w->reg, w->backend, &acfg);
    if (!w->api) {
        fuzz_world_free(w);
        return -1;
    }
    http_server_config_t scfg = {
        .addr = NULL,
        .wait_timeout_ms = FUZZ_WAIT_TIMEOUT_MS,
        .max_header_bytes = FUZZ_MAX_HEADER_BYTES,
        .max_body_bytes = FUZZ_MAX_BODY_BYTES,
        .max_conns = FUZZ_MAX_CONNS,
        .handler = api_handle,
        .handler_ctx = w->api,
        .is_streaming = api_is_streaming,
        .render_error = api_render_error,
        .render_error_ctx = w->api,
        .tick = server_ticks ? api_tick : NULL,
        .tick_ctx = w->api,
        .notify_fd = w->store->efd,
        .on_notify = api_on_durable,
    };
    char err[256];
    w->srv = http_server_new(&scfg, err);
    if (!w->srv) {
        fprintf(stderr, "fuzz_world_init: %s\n", err);
        fuzz_world_free(w);
        return -1;
    }
    api_set_server(w->api, w->srv);
    return 0;
}

void fuzz_world_free(fuzz_world_t *w)
{
    http_server_free(w->srv);
    api_free(w->api);
    registry_free(w->reg);
    if (w->backend)
        backend_close(w->backend); /* not the store: it is ours */
    if (w->store)
        fs_close(&w->store->base);
    memset(w, 0, sizeof *w);
}

int fuzz_world_connect(fuzz_world_t *w)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        return -1;
    if (http_server_adopt(w->srv, sv[1]) != 0) { /* it closed sv[1] */
        close(sv[0]);
        return -1;
    }
    return sv[0];
}

bool fuzz_world_store_lags(const fuzz_world_t *w)
{
    return w->store->durable < w->store->appended;
}

void fuzz_world_turn(fuzz_world_t *w, int wait_ms, bool bg_write)
{
    w->turns++;
    if (w->turns % FUZZ_DURABLE_EVERY_TURNS == 0)
        fuzz_store_commit(w->store);
    if (bg_write && w->turns % FUZZ_BG_WRITE_EVERY_TURNS == 0) {
        reg_result_t res;
        reg_ttl_t none = {0};
        registry_set(w->reg, FUZZ_BG_KEY, false, "v", none, time_wall_ns(), &res);
        reg_result_clear(&res);
    }
    if (http_server_run_once(w->srv, wait_ms) != 0)
        abort();
}

/* Reads what the server sent; returns true once it has closed. */
static bool collect(int fd, buf_t *out, bool *moved)
{
    char tmp[16384];
    for (;;) {
        ssize_t n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n > 0) {
            buf_append(out, tmp, (size_t)n);
            *moved = true;
        } else if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            return true;
        } else {
            return false;
        }
    }
}

bool fuzz_world_exchange_until(fuzz_world_t *w, int fd, const uint8_t *data, size_t len,
                               bool half_close, bool (*waiting)(void *ctx, const buf_t *out),
                               void *ctx, buf_t *out)
{
    size_t sent = 0;
    bool shut = false;
    uint64_t wait_until_ms = 0; /* while answers are awaited: when to give up */
    bool done_waiting = waiting == NULL;
    for (int turn = 0, still = 0; turn < MAX_TURNS; turn++) {
        bool moved = false;
        if (sent < len) {
            ssize_t n = send(fd, data + sent, len - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
                moved = true;
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                sent = len; /* the server closed; what is left cannot go */
            }
        }
        if (sent == len && half_close && !shut && done_waiting) {
            shutdown(fd, SHUT_WR);
            shut = true;
            moved = true;
        }
        bool passing_time = wait_until_ms != 0 && !done_waiting;
        fuzz_world_turn(w, passing_time ? 1 : 0, passing_time);
        if (collect(fd, out, &moved)) {
            /* Let the store catch up, so that whatever still waits for it
             * (an answer held for this connection) meets the durable index
             * now rather than the world's end. */
            for (int i = 0; i < FUZZ_DURABLE_EVERY_TURNS && fuzz_world_store_lags(w); i++)
                fuzz_world_turn(w, 0, false);
            return true;
        }
        still = moved ? 0 : still + 1;
        if (still < SETTLED_TURNS || sent < len || fuzz_world_store_lags(w))
            continue;
        /* Settled: let real time pass while answers are due, within bounds. */
        if (!done_waiting) {
            if (!wait_until_ms)
                wait_until_ms = time_mono_ms() + WAIT_FOR_ANSWERS_MS;
            if (waiting(ctx, out) && time_mono_ms() < wait_until_ms)
                continue;
            done_waiting = true;
            still = 0;
            continue; /* half-close (if asked), then settle again */
        }
        if (half_close && !shut)
            continue;
        break;
    }
    return false;
}

bool fuzz_world_exchange(fuzz_world_t *w, int fd, const uint8_t *data, size_t len, bool half_close,
                         buf_t *out)
{
    return fuzz_world_exchange_until(w, fd, data, len, half_close, NULL, NULL, out);
}

/* ---- answers ------------------------------------------------------------ */

/* The value of header `name` ("\r\ncontent-length:" form, lower case) in a
 * head, into `val`; false if absent. */
static bool head_header(const char *head, size_t len, const char *name, char *val, size_t val_len)
{
    size_t nlen = strlen(name);
    val[0] = '\0';
    for (size_t i = 0; i + nlen <= len; i++) {
        if (strncasecmp(head + i, name, nlen) != 0)
            continue;
        const char *p = head + i + nlen;
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, "\r");
        snprintf(val, val_len, "%.*s", (int)n, p);
        return true;
    }
    return false;
}

/* Content-Length of a head, or -1 if absent. Aborts on a malformed one. */
static long head_content_length(const char *head, size_t len)
{
    char v[32];
    if (!head_header(head, len, "\r\ncontent-length:", v, sizeof v))
        return -1;
    char *end;
    long n = strtol(v, &end, 10);
    if (end == v || *end || n < 0) {
        fprintf(stderr, "bad Content-Length: %s\n", v);
        abort();
    }
    return n;
}

/* Whether answer `i` is to a HEAD request, as far as the caller knows. */
typedef bool (*is_head_fn)(const void *ctx, size_t i);

/*
 * The walk both walkers share: frames each answer (a HEAD answer has no
 * body, with the one exception fuzz_each_request_answer documents) and
 * calls `fn` with it. With `partial`, an answer cut short ends the walk.
 */
static size_t walk_answers(const buf_t *out, bool partial, is_head_fn is_head, const void *head_ctx,
                           void (*fn)(void *ctx, const fuzz_answer_t *a), void *ctx)
{
    size_t count = 0;
    if (out->len == 0)
        return 0;
    const char *p = out->data, *end = out->data + out->len;
    while (p < end) {
        size_t left = (size_t)(end - p);
        if (memcmp(p, "HTTP/1.1 ", left < 9 ? left : 9) != 0 || (left < 12 && !partial)) {
            fprintf(stderr, "answer %zu is not an HTTP/1.1 answer: %.*s\n", count,
                    (int)(left < 80 ? left : 80), p);
            abort();
        }
        const char *hend = memmem(p, left, "\r\n\r\n", 4);
        if (!hend) {
            if (partial)
                break;
            fprintf(stderr, "answer %zu: a head cut short\n", count);
            abort(); /* disco writes whole answers */
        }
        int status = atoi(p + 9);
        if (status < 100 || status > 599)
            abort();
        char head[4096];
        size_t hlen = (size_t)(hend - p);
        if (hlen >= sizeof head)
            abort();
        memcpy(head, p, hlen);
        head[hlen] = '\0';
        const char *body = hend + 4;
        if (status == 100) { /* interim: no body, no length, not counted */
            p = body;
            continue;
        }
        long cl = head_content_length(head, hlen);
        if (cl < 0) {
            fprintf(stderr, "answer %zu has no Content-Length\n", count);
            abort(); /* every final answer carries a length */
        }
        char ct[128], conn[64];
        head_header(head, hlen, "\r\ncontent-type:", ct, sizeof ct);
        head_header(head, hlen, "\r\nconnection:", conn, sizeof conn);
        fuzz_answer_t a = {.index = count,
                           .status = status,
                           .content_type = ct,
                           .connection = conn,
                           .has_content_length = true,
                           .content_length = (size_t)cl,
                           .body = body};
        size_t after = (size_t)(end - body);
        if (is_head(head_ctx, count)) {
            /* A refusal that stopped reading the head before it knew the
             * request was a HEAD, its body last on the wire. */
            a.head_refusal = (status == 400 || status == 431) && strcasecmp(conn, "close") == 0 &&
                             cl > 0 && after == (size_t)cl;
            a.body_len = a.head_refusal ? (size_t)cl : 0;
        } else {
            a.body_len = (size_t)cl;
        }
        if (after < a.body_len) {
            if (partial)
                break;
            fprintf(stderr, "answer %zu: body cut short (%zu of %zu bytes)\n", count, after,
                    a.body_len);
            abort();
        }
        if (fn)
            fn(ctx, &a);
        count++;
        p = body + a.body_len;
    }
    return count;
}

static bool all_head(const void *ctx, size_t i)
{
    (void)i;
    return *(const bool *)ctx;
}

struct plain_walk {
    void (*fn)(void *ctx, int status, const char *content_type, const char *body, size_t body_len);
    void *ctx;
};

static void plain_answer(void *ctx, const fuzz_answer_t *a)
{
    struct plain_walk *pw = ctx;
    if (pw->fn)
        pw->fn(pw->ctx, a->status, a->content_type, a->body, a->body_len);
}

size_t fuzz_each_answer(const buf_t *out, bool head,
                        void (*fn)(void *ctx, int status, const char *content_type,
                                   const char *body, size_t body_len),
                        void *ctx)
{
    struct plain_walk pw = {fn, ctx};
    return walk_answers(out, false, all_head, &head, plain_answer, &pw);
}

static bool request_is_head(const void *ctx, size_t i)
{
    const fuzz_requests_t *reqs = ctx;
    return i < reqs->n && i < FUZZ_MAX_REQUESTS && reqs->r[i].method == HTTP_HEAD;
}

struct request_walk {
    const fuzz_requests_t *reqs;
    void (*fn)(void *ctx, const fuzz_request_t *req, const fuzz_answer_t *a);
    void *ctx;
};

static void request_answer(void *ctx, const fuzz_answer_t *a)
{
    struct request_walk *rw = ctx;
    const fuzz_request_t *req =
        a->index < rw->reqs->n && a->index < FUZZ_MAX_REQUESTS ? &rw->reqs->r[a->index] : NULL;
    if (rw->fn)
        rw->fn(rw->ctx, req, a);
}

size_t fuzz_each_request_answer(const buf_t *out, const fuzz_requests_t *reqs, bool partial,
                                void (*fn)(void *ctx, const fuzz_request_t *req,
                                           const fuzz_answer_t *a),
                                void *ctx)
{
    struct request_walk rw = {reqs, fn, ctx};
    return walk_answers(out, partial, request_is_head, reqs, request_answer, &rw);
}

/* ---- the reference parse ---------------------------------------------------- */

struct ref_parse {
    fuzz_requests_t *out;
    buf_t url; /* of the current request */
    bool in_message;
};

static fuzz_request_t *ref_current(struct ref_parse *rp)
{
    size_t i = rp->out->n - 1;
    return i < FUZZ_MAX_REQUESTS ? &rp->out->r[i] : NULL;
}

static int ref_begin(http_parser *p)
{
    struct ref_parse *rp = p->data;
    rp->out->n++;
    rp->in_message = true;
    buf_reset(&rp->url);
    fuzz_request_t *r = ref_current(rp);
    if (r)
        *r = (fuzz_request_t){.method = -1, .path = FUZZ_PATH_UNKNOWN};
    return 0;
}

static int ref_url(http_parser *p, const char *at, size_t len)
{
    struct ref_parse *rp = p->data;
    buf_append(&rp->url, at, len);
    return 0;
}

/* The path as disco's dispatch finds it (server/http.c split_target). */
static enum fuzz_path_kind ref_path_kind(const buf_t *url)
{
    const char *u = url->data ? url->data : "";
    size_t len = url->len, off = 0, plen = 0;
    if (len > 0 && u[0] == '/') {
        plen = strcspn(u, "?#");
        if (plen > len)
            plen = len;
    } else {
        struct http_parser_url pu;
        http_parser_url_init(&pu);
        if (len == 0 || http_parser_parse_url(u, len, 0, &pu) != 0 ||
            !(pu.field_set & (1 << UF_PATH)))
            return FUZZ_PATH_UNKNOWN; /* disco refuses it: 400 */
        off = pu.field_data[UF_PATH].off;
        plen = pu.field_data[UF_PATH].len;
    }
    if (plen == 4 && memcmp(u + off, "/new", 4) == 0)
        return FUZZ_PATH_NEW;
    if ((plen == 7 && memcmp(u + off, "/health", 7) == 0) ||
        (plen == 8 && memcmp(u + off, "/metrics", 8) == 0))
        return FUZZ_PATH_TEXT;
    return FUZZ_PATH_JSON;
}

static int ref_headers_complete(http_parser *p)
{
    struct ref_parse *rp = p->data;
    fuzz_request_t *r = ref_current(rp);
    if (r) {
        r->method = (int)p->method;
        r->http10 = p->http_major == 1 && p->http_minor == 0;
        r->headers_done = true;
        buf_cstr(&rp->url); /* NUL-terminated: strcspn needs an end */
        if (buf_failed(&rp->url))
            abort();
        r->path = ref_path_kind(&rp->url);
    }
    return 0;
}

static int ref_complete(http_parser *p)
{
    struct ref_parse *rp = p->data;
    fuzz_request_t *r = ref_current(rp);
    if (r)
        r->complete = true;
    if (rp->out->n_complete == rp->out->n - 1)
        rp->out->n_complete = rp->out->n;
    rp->in_message = false;
    return 0;
}

void fuzz_parse_requests(const uint8_t *data, size_t len, fuzz_requests_t *out)
{
    memset(out, 0, sizeof *out);
    http_parser_settings settings;
    http_parser_settings_init(&settings);
    settings.on_message_begin = ref_begin;
    settings.on_url = ref_url;
    settings.on_headers_complete = ref_headers_complete;
    settings.on_message_complete = ref_complete;
    struct ref_parse rp = {.out = out, .url = BUF_INIT};
    http_parser parser;
    http_parser_init(&parser, HTTP_REQUEST);
    parser.data = &rp;
    size_t n = http_parser_execute(&parser, &settings, (const char *)data, len);
    /* A request line that failed before on_message_begin (a bad first
     * byte) still is a request disco answers (with a refusal). */
    if (n < len && HTTP_PARSER_ERRNO(&parser) != HPE_OK && !rp.in_message) {
        out->n++;
        fuzz_request_t *r = ref_current(&rp);
        if (r)
            *r = (fuzz_request_t){.method = -1, .path = FUZZ_PATH_UNKNOWN};
    }
    buf_free(&rp.url);
}
