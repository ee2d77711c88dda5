/*
 * etcd_probe - runs one command of the etcd client (src/etcd/client.h)
 * against real etcd endpoints and prints what came back as JSON lines, for
 * tests/e2e/test_etcd_client.py. Not installed.
 *
 *   etcd_probe [--timeout MS] [--keepalive MS] [--dial MS] [--user U --password P]
 *              [--cacert PEM] [--cert PEM --key PEM] ENDPOINTS CMD ARGS...
 *   ENDPOINTS    comma-separated (http://127.0.0.1:2379,...)
 *   range KEY [END]           one Range
 *   put KEY VALUE             a Txn with no compares that puts
 *   txn-create KEY VALUE      put if create_revision(KEY) == 0, else range it
 *   compact REV               Compact (physical)
 *   watch PREFIX FROMREV N    watch the prefix from FROMREV; one line per
 *                             WatchResponse; ends after N events, a cancel
 *                             or the end of the stream
 *   watch-resume PREFIX FROMREV N   as watch, but when the stream ends
 *                             ({"ended":true}) the watch is created again
 *                             from the revision after the last one seen
 *   lease-grant TTL           LeaseGrant
 *   lease-keepalive ID        one LeaseKeepAlive exchange
 *   lease-revoke ID           LeaseRevoke
 *   range-at KEY REV          a Range at revision REV
 *   watch-progress PREFIX     a watch from now; once created, a progress
 *                             request; the answer to it (watch_id -1) is
 *                             printed, the watch canceled, then a Range
 *   range-wait KEY            a Range, then {"ready":...}, then waits for a
 *                             line on stdin and does a second Range
 *   ranges KEY N GAP_MS       N Ranges, GAP_MS apart, each on its own line
 *   watch-late PREFIX GAP_MS  a watch from now ("tag":"first"); GAP_MS after
 *                             it is created, a second watch on the same
 *                             stream ("tag":"late", created again when it
 *                             ends, at most 5 times); once that one is
 *                             created, a put of PREFIX "k"; ends at its
 *                             event or its cancel
 *
 * Every call prints {"outcome":"OK"|"GRPC"|"UNSENT"|"UNKNOWN","code":..,
 * "message":..,...} with the response's fields for OK. Exit status 0 when
 * the command ran (whatever the outcomes), 2 for bad usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "etcd/client.h"
#include "loop/loop.h"
#include "util/buf.h"

static loop_t *loop;
static etcd_client_t *client;
static bool finished;
static unsigned timeout_ms = 5000;
static const char *cmd_key;
static long ranges_left, gap_ms;
static long events_left;
static uint64_t next_range_at;
static loop_io_t stdin_io;

static void emit(buf_t *b)
{
    buf_putc(b, '}');
    if (buf_failed(b)) {
        fprintf(stderr, "etcd_probe: out of memory\n");
        exit(1);
    }
    printf("%s\n", buf_cstr(b));
    fflush(stdout);
    buf_free(b);
}

static void put_bytes(buf_t *b, const char *name, ProtobufCBinaryData d)
{
    buf_printf(b, ",\"%s\":", name);
    buf_put_json_string(b, (const char *)d.data, d.len);
}

static void put_kv(buf_t *b, const Etcdserverpb__KeyValue *kv)
{
    buf_puts(b, "{\"key\":");
    buf_put_json_string(b, (const char *)kv->key.data, kv->key.len);
    put_bytes(b, "value", kv->value);
    buf_printf(b,
               ",\"create_revision\":%lld,\"mod_revision\":%lld,\"version\":%lld,\"lease\":%lld}",
               (long long)kv->create_revision, (long long)kv->mod_revision, (long long)kv->version,
               (long long)kv->lease);
}

static void put_range(buf_t *b, const Etcdserverpb__RangeResponse *r)
{
    buf_printf(b, ",\"revision\":%lld,\"count\":%lld,\"kvs\":[",
               (long long)(r->header ? r->header->revision : 0), (long long)r->count);
    for (size_t i = 0; i < r->n_kvs; i++) {
        if (i)
            buf_putc(b, ',');
        put_kv(b, r->kvs[i]);
    }
    buf_putc(b, ']');
}

static const char *outcome_name(etcd_outcome_t o)
{
    switch (o) {
    case ETCD_OK: return "OK";
    case ETCD_GRPC: return "GRPC";
    case ETCD_UNSENT: return "UNSENT";
    case ETCD_UNKNOWN: return "UNKNOWN";
    }
    return "?";
}

static void head(buf_t *b, const etcd_result_t *res)
{
    buf_init(b);
    buf_printf(b, "{\"outcome\":\"%s\",\"code\":%d,\"message\":", outcome_name(res->outcome),
               res->code);
    buf_put_json_string(b, res->message, strlen(res->message));
    buf_puts(b, ",\"endpoint\":");
    const char *ep = etcd_client_endpoint(client);
    buf_put_json_string(b, ep, strlen(ep));
}

static void on_range(void *ctx, const etcd_result_t *res)
{
    buf_t b;
    head(&b, res);
    if (res->outcome == ETCD_OK)
        put_range(&b, (const Etcdserverpb__RangeResponse *)res->resp);
    emit(&b);
    if (ctx)
        finished = true;
}

static void on_txn(void *ctx, const etcd_result_t *res)
{
    (void)ctx;
    buf_t b;
    head(&b, res);
    if (res->outcome == ETCD_OK) {
        const Etcdserverpb__TxnResponse *r = (const Etcdserverpb__TxnResponse *)res->resp;
        buf_printf(&b, ",\"succeeded\":%s,\"revision\":%lld,\"responses\":[",
                   r->succeeded ? "true" : "false",
                   (long long)(r->header ? r->header->revision : 0));
        for (size_t i = 0; i < r->n_responses; i++) {
            if (i)
                buf_putc(&b, ',');
            const Etcdserverpb__ResponseOp *op = r->responses[i];
            if (op->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE) {
                buf_puts(&b, "{\"range\":true");
                put_range(&b, op->response_range);
                buf_putc(&b, '}');
            } else {
                buf_printf(&b, "{\"case\":%d}", (int)op->response_case);
            }
        }
        buf_putc(&b, ']');
    }
    emit(&b);
    finished = true;
}

static void on_compact(void *ctx, const etcd_result_t *res)
{
    (void)ctx;
    buf_t b;
    head(&b, res);
    emit(&b);
    finished = true;
}

static void on_lease(void *ctx, const etcd_result_t *res)
{
    const char *what = ctx;
    buf_t b;
    head(&b, res);
    if (res->outcome == ETCD_OK && strcmp(what, "grant") == 0) {
        const Etcdserverpb__LeaseGrantResponse *r =
            (const Etcdserverpb__LeaseGrantResponse *)res->resp;
        buf_printf(&b, ",\"id\":%lld,\"ttl\":%lld", (long long)r->id, (long long)r->ttl);
    } else if (res->outcome == ETCD_OK && strcmp(what, "keepalive") == 0) {
        const Etcdserverpb__LeaseKeepAliveResponse *r =
            (const Etcdserverpb__LeaseKeepAliveResponse *)res->resp;
        buf_printf(&b, ",\"id\":%lld,\"ttl\":%lld", (long long)r->id, (long long)r->ttl);
    }
    emit(&b);
    finished = true;
}

static void on_watch(void *ctx, const Etcdserverpb__WatchResponse *r)
{
    (void)ctx;
    buf_t b;
    buf_init(&b);
    if (!r) {
        buf_puts(&b, "{\"ended\":true");
        emit(&b);
        finished = true;
        return;
    }
    buf_printf(&b,
               "{\"watch_id\":%lld,\"revision\":%lld,\"created\":%s,\"canceled\":%s,"
               "\"compact_revision\":%lld,\"cancel_reason\":",
               (long long)r->watch_id, (long long)(r->header ? r->header->revision : 0),
               r->created ? "true" : "false", r->canceled ? "true" : "false",
               (long long)r->compact_revision);
    const char *reason = r->cancel_reason ? r->cancel_reason : "";
    buf_put_json_string(&b, reason, strlen(reason));
    if (ctx)
        buf_printf(&b, ",\"tag\":\"%s\"", (const char *)ctx);
    buf_puts(&b, ",\"endpoint\":");
    const char *ep = etcd_client_endpoint(client);
    buf_put_json_string(&b, ep, strlen(ep));
    buf_puts(&b, ",\"events\":[");
    for (size_t i = 0; i < r->n_events; i++) {
        const Etcdserverpb__Event *ev = r->events[i];
        buf_printf(&b, "%s{\"type\":\"%s\",\"kv\":", i ? "," : "",
                   ev->type == ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE ? "DELETE" : "PUT");
        if (ev->kv)
            put_kv(&b, ev->kv);
        else
            buf_puts(&b, "null");
        buf_putc(&b, '}');
    }
    buf_putc(&b, ']');
    emit(&b);
    events_left -= (long)r->n_events;
    if (r->canceled || events_left <= 0)
        finished = true;
}

static int64_t range_rev;

static int do_range(const char *key, const char *end, void *ctx)
{
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.revision = range_rev;
    rq.key = (ProtobufCBinaryData){strlen(key), (uint8_t *)key};
    if (end)
        rq.range_end = (ProtobufCBinaryData){strlen(end), (uint8_t *)end};
    return etcd_range(client, &rq, timeout_ms, on_range, ctx);
}

static etcd_watch_t *progress_watch;

static void on_progress_watch(void *ctx, const Etcdserverpb__WatchResponse *r)
{
    (void)ctx;
    long keep = events_left;
    events_left = 1; /* on_watch prints; it must not end the command */
    on_watch(NULL, r);
    events_left = keep;
    finished = false;
    if (!r || r->canceled) {
        finished = true;
        return;
    }
    if (r->created) {
        int rc = etcd_watch_progress(client);
        if (rc < 0) {
            fprintf(stderr, "etcd_probe: progress: %s\n", strerror(-rc));
            finished = true;
        }
    } else if (r->watch_id == -1) {
        etcd_watch_cancel(progress_watch);
        progress_watch = NULL;
        /* the connection and its Watch stream stay usable */
        if (do_range(cmd_key, NULL, &finished) < 0)
            finished = true;
    }
}

static Etcdserverpb__WatchCreateRequest resume_rq;
static int64_t resume_next_rev;

static void on_resume_watch(void *ctx, const Etcdserverpb__WatchResponse *r)
{
    (void)ctx;
    if (!r) {
        buf_t b;
        buf_init(&b);
        buf_puts(&b, "{\"ended\":true,\"endpoint\":");
        const char *ep = etcd_client_endpoint(client);
        buf_put_json_string(&b, ep, strlen(ep));
        emit(&b);
        resume_rq.start_revision = resume_next_rev;
        if (!etcd_watch(client, &resume_rq, on_resume_watch, NULL))
            finished = true;
        return;
    }
    if (r->created && resume_next_rev == 0 && r->header)
        resume_next_rev = r->header->revision + 1;
    for (size_t i = 0; i < r->n_events; i++)
        if (r->events[i]->kv && r->events[i]->kv->mod_revision >= resume_next_rev)
            resume_next_rev = r->events[i]->kv->mod_revision + 1;
    on_watch(NULL, r);
}

static Etcdserverpb__WatchCreateRequest late_rq;
static uint64_t late_at;
static int late_creates;
static bool late_put_sent;

/* Prints a watch response (or its end) without ending the command. */
static void print_watch(const char *tag, const Etcdserverpb__WatchResponse *r)
{
    if (!r) {
        buf_t b;
        buf_init(&b);
        buf_printf(&b, "{\"ended\":true,\"tag\":\"%s\"", tag);
        emit(&b);
        return;
    }
    long keep = events_left;
    events_left = 1L << 30;
    on_watch((void *)tag, r);
    events_left = keep;
    finished = false;
}

static void on_first_watch(void *ctx, const Etcdserverpb__WatchResponse *r)
{
    (void)ctx;
    print_watch("first", r);
    if (r && r->created && !r->canceled && late_at == 0)
        late_at = loop_now_ms(loop) + (uint64_t)gap_ms;
}

static void on_late_put(void *ctx, const etcd_result_t *res)
{
    (void)ctx;
    buf_t b;
    head(&b, res);
    emit(&b);
    if (res->outcome != ETCD_OK)
        finished = true;
}

static void on_late_watch(void *ctx, const Etcdserverpb__WatchResponse *r)
{
    (void)ctx;
    print_watch("late", r);
    if (!r) {
        /* what an owner does: create it again */
        if (++late_creates > 5 || !etcd_watch(client, &late_rq, on_late_watch, NULL))
            finished = true;
        return;
    }
    if (r->canceled || r->n_events > 0) {
        finished = true;
        return;
    }
    if (r->created && !late_put_sent) {
        late_put_sent = true;
        char key[256];
        snprintf(key, sizeof key, "%.*sk", (int)late_rq.key.len, (const char *)late_rq.key.data);
        Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
        put.key = (ProtobufCBinaryData){strlen(key), (uint8_t *)key};
        put.value = (ProtobufCBinaryData){4, (uint8_t *)"late"};
        Etcdserverpb__RequestOp op = ETCDSERVERPB__REQUEST_OP__INIT;
        op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        op.request_put = &put;
        Etcdserverpb__RequestOp *ops[] = {&op};
        Etcdserverpb__TxnRequest rq = ETCDSERVERPB__TXN_REQUEST__INIT;
        rq.n_success = 1;
        rq.success = ops;
        if (etcd_txn(client, &rq, timeout_ms, on_late_put, NULL) < 0)
            finished = true;
    }
}

static uint64_t late_timer(void *ctx, uint64_t now)
{
    (void)ctx;
    if (late_at == 0 || late_creates > 0)
        return 0;
    if (now < late_at)
        return late_at;
    late_creates = 1;
    if (!etcd_watch(client, &late_rq, on_late_watch, NULL))
        finished = true;
    return 0;
}

static void on_stdin(loop_io_t *io, uint32_t events)
{
    (void)events;
    char line[64];
    ssize_t n = read(io->fd, line, sizeof line);
    (void)n;
    loop_io_stop(loop, io);
    if (do_range(cmd_key, NULL, &finished) < 0)
        finished = true;
}

static void on_first_range(void *ctx, const etcd_result_t *res)
{
    (void)ctx;
    on_range(NULL, res);
    printf("{\"ready\":true}\n");
    fflush(stdout);
    if (loop_io_start(loop, &stdin_io, 0, EPOLLIN, on_stdin) < 0)
        finished = true;
}

static uint64_t ranges_timer(void *ctx, uint64_t now)
{
    (void)ctx;
    if (ranges_left <= 0 || next_range_at == 0)
        return 0;
    if (now < next_range_at)
        return next_range_at;
    ranges_left--;
    next_range_at = ranges_left > 0 ? now + (uint64_t)gap_ms : 0;
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key = (ProtobufCBinaryData){strlen(cmd_key), (uint8_t *)cmd_key};
    if (etcd_range(client, &rq, timeout_ms, on_range, ranges_left == 0 ? &finished : NULL) < 0)
        finished = true;
    return next_range_at;
}

/* "/a/" -> "/a0": the end of a prefix range (last byte + 1). */
static char *prefix_end(const char *p)
{
    size_t n = strlen(p);
    char *e = strdup(p);
    if (!e || n == 0)
        return e;
    e[n - 1] = (char)(e[n - 1] + 1);
    return e;
}

static int usage(void)
{
    fprintf(stderr, "usage: etcd_probe [--timeout MS] [--keepalive MS] [--dial MS] ENDPOINTS "
                    "range|put|txn-create|compact|watch|range-wait|ranges ARGS...\n");
    return 2;
}

int main(int argc, char **argv)
{
    etcd_client_config_t cfg = {0};
    int i = 1;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        unsigned v = (unsigned)strtoul(argv[i + 1], NULL, 10);
        if (strcmp(argv[i], "--user") == 0)
            cfg.user = argv[i + 1];
        else if (strcmp(argv[i], "--password") == 0)
            cfg.password = argv[i + 1];
        else if (strcmp(argv[i], "--cacert") == 0)
            cfg.cacert = argv[i + 1];
        else if (strcmp(argv[i], "--cert") == 0)
            cfg.cert = argv[i + 1];
        else if (strcmp(argv[i], "--key") == 0)
            cfg.key = argv[i + 1];
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout_ms = v;
        else if (strcmp(argv[i], "--keepalive") == 0)
            cfg.keepalive_ms = v;
        else if (strcmp(argv[i], "--dial") == 0)
            cfg.dial_timeout_ms = v;
        else
            return usage();
    }
    if (argc - i < 2)
        return usage();
    char *eps_copy = strdup(argv[i]);
    const char *eps[16];
    size_t n_eps = 0;
    for (char *save = NULL, *t = strtok_r(eps_copy, ",", &save); t && n_eps < 16;
         t = strtok_r(NULL, ",", &save))
        eps[n_eps++] = t;
    cfg.endpoints = eps;
    cfg.n_endpoints = n_eps;
    const char *cmd = argv[i + 1];
    char **args = argv + i + 2;
    int nargs = argc - i - 2;

    loop = loop_new();
    char err[256];
    client = loop ? etcd_client_new(loop, &cfg, err) : NULL;
    if (!client) {
        fprintf(stderr, "etcd_probe: %s\n", loop ? err : "no loop");
        return 1;
    }
    int rc = 0;
    char *end = NULL;
    if (strcmp(cmd, "range") == 0 && (nargs == 1 || nargs == 2)) {
        rc = do_range(args[0], nargs == 2 ? args[1] : NULL, &finished);
    } else if ((strcmp(cmd, "put") == 0 || strcmp(cmd, "txn-create") == 0) && nargs == 2) {
        ProtobufCBinaryData key = {strlen(args[0]), (uint8_t *)args[0]};
        Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
        put.key = key;
        put.value = (ProtobufCBinaryData){strlen(args[1]), (uint8_t *)args[1]};
        Etcdserverpb__RequestOp put_op = ETCDSERVERPB__REQUEST_OP__INIT;
        put_op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        put_op.request_put = &put;
        Etcdserverpb__RangeRequest get = ETCDSERVERPB__RANGE_REQUEST__INIT;
        get.key = key;
        Etcdserverpb__RequestOp get_op = ETCDSERVERPB__REQUEST_OP__INIT;
        get_op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
        get_op.request_range = &get;
        Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT;
        cmp.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
        cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
        cmp.key = key;
        cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        cmp.create_revision = 0;
        Etcdserverpb__Compare *cmps[] = {&cmp};
        Etcdserverpb__RequestOp *succ[] = {&put_op}, *fail[] = {&get_op};
        Etcdserverpb__TxnRequest rq = ETCDSERVERPB__TXN_REQUEST__INIT;
        if (strcmp(cmd, "txn-create") == 0) {
            rq.n_compare = 1;
            rq.compare = cmps;
            rq.n_failure = 1;
            rq.failure = fail;
        }
        rq.n_success = 1;
        rq.success = succ;
        rc = etcd_txn(client, &rq, timeout_ms, on_txn, NULL);
    } else if (strcmp(cmd, "compact") == 0 && nargs == 1) {
        Etcdserverpb__CompactionRequest rq = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
        rq.revision = strtoll(args[0], NULL, 10);
        rq.physical = true;
        rc = etcd_compact(client, &rq, timeout_ms, on_compact, NULL);
    } else if (strcmp(cmd, "watch") == 0 && nargs == 3) {
        end = prefix_end(args[0]);
        Etcdserverpb__WatchCreateRequest rq = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
        rq.key = (ProtobufCBinaryData){strlen(args[0]), (uint8_t *)args[0]};
        rq.range_end = (ProtobufCBinaryData){end ? strlen(end) : 0, (uint8_t *)end};
        rq.start_revision = strtoll(args[1], NULL, 10);
        rq.prev_kv = true;
        events_left = strtol(args[2], NULL, 10);
        rc = etcd_watch(client, &rq, on_watch, NULL) ? 0 : -ENOMEM;
    } else if (strcmp(cmd, "watch-resume") == 0 && nargs == 3) {
        end = prefix_end(args[0]);
        Etcdserverpb__WatchCreateRequest rq = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
        rq.key = (ProtobufCBinaryData){strlen(args[0]), (uint8_t *)args[0]};
        rq.range_end = (ProtobufCBinaryData){end ? strlen(end) : 0, (uint8_t *)end};
        rq.start_revision = strtoll(args[1], NULL, 10);
        resume_next_rev = rq.start_revision;
        resume_rq = rq;
        events_left = strtol(args[2], NULL, 10);
        rc = etcd_watch(client, &rq, on_resume_watch, NULL) ? 0 : -ENOMEM;
    } else if (strcmp(cmd, "lease-grant") == 0 && nargs == 1) {
        Etcdserverpb__LeaseGrantRequest rq = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
        rq.ttl = strtoll(args[0], NULL, 10);
        rc = etcd_lease_grant(client, &rq, timeout_ms, on_lease, "grant");
    } else if (strcmp(cmd, "lease-keepalive") == 0 && nargs == 1) {
        rc = etcd_lease_keepalive_once(client, strtoll(args[0], NULL, 10), timeout_ms, on_lease,
                                       "keepalive");
    } else if (strcmp(cmd, "lease-revoke") == 0 && nargs == 1) {
        Etcdserverpb__LeaseRevokeRequest rq = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
        rq.id = strtoll(args[0], NULL, 10);
        rc = etcd_lease_revoke(client, &rq, timeout_ms, on_lease, "revoke");
    } else if (strcmp(cmd, "range-at") == 0 && nargs == 2) {
        range_rev = strtoll(args[1], NULL, 10);
        rc = do_range(args[0], NULL, &finished);
    } else if (strcmp(cmd, "watch-progress") == 0 && nargs == 1) {
        cmd_key = args[0];
        end = prefix_end(args[0]);
        Etcdserverpb__WatchCreateRequest rq = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
        rq.key = (ProtobufCBinaryData){strlen(args[0]), (uint8_t *)args[0]};
        rq.range_end = (ProtobufCBinaryData){end ? strlen(end) : 0, (uint8_t *)end};
        progress_watch = etcd_watch(client, &rq, on_progress_watch, NULL);
        rc = progress_watch ? 0 : -ENOMEM;
    } else if (strcmp(cmd, "range-wait") == 0 && nargs == 1) {
        cmd_key = args[0];
        Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
        rq.key = (ProtobufCBinaryData){strlen(cmd_key), (uint8_t *)cmd_key};
        rc = etcd_range(client, &rq, timeout_ms, on_first_range, NULL);
    } else if (strcmp(cmd, "ranges") == 0 && nargs == 3) {
        cmd_key = args[0];
        ranges_left = strtol(args[1], NULL, 10);
        gap_ms = strtol(args[2], NULL, 10);
        next_range_at = 1;
        rc = ranges_left > 0 ? loop_add_timer(loop, ranges_timer, NULL) : -EINVAL;
    } else if (strcmp(cmd, "watch-late") == 0 && nargs == 2) {
        end = prefix_end(args[0]);
        Etcdserverpb__WatchCreateRequest rq = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
        rq.key = (ProtobufCBinaryData){strlen(args[0]), (uint8_t *)args[0]};
        rq.range_end = (ProtobufCBinaryData){end ? strlen(end) : 0, (uint8_t *)end};
        late_rq = rq;
        gap_ms = strtol(args[1], NULL, 10);
        rc = loop_add_timer(loop, late_timer, NULL);
        if (rc == 0)
            rc = etcd_watch(client, &rq, on_first_watch, NULL) ? 0 : -ENOMEM;
    } else {
        etcd_client_free(client);
        loop_free(loop);
        free(eps_copy);
        return usage();
    }
    if (rc < 0) {
        fprintf(stderr, "etcd_probe: %s\n", strerror(-rc));
        finished = true;
    }
    while (!finished)
        loop_run_once(loop, -1);
    etcd_client_free(client);
    loop_free(loop);
    free(end);
    free(eps_copy);
    return 0;
}
