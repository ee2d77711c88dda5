/*
 * etcdtxn.c - drives etcd directly with the transactions disco's etcd
 * backend sends, for the etcd benchmarks of bench/bench.py:
 *
 *   fill  writes TOKENS tokens of MEMBERS members each into PREFIX, one
 *         transaction per event (the token's creation, then each member's
 *         registration), CONCURRENCY of them in flight on one connection:
 *         the fast way to give a mirror 100,000 tokens to load. (One event
 *         per transaction, not batches of many: an instance's mirror reads
 *         one registry change per etcd revision.)
 *   reg   registrations of fresh member keys over tokens "benchreg<i>"
 *         (made by `fill ... 0` first), each the very transaction disco
 *         sends for `PUT ?prevExist=false` (etcd_layout_plan, guard "token
 *         exists, key absent"), CONCURRENCY in flight over CONNS
 *         connections, for SECONDS: the ceiling that disco's durable
 *         registration throughput is compared with.
 *
 * usage: disco-etcdtxn fill ENDPOINTS PREFIX TOKENS MEMBERS CONCURRENCY
 *        disco-etcdtxn reg ENDPOINTS PREFIX TOKENS SECONDS CONCURRENCY CONNS RUN
 * Prints one line: "txns N seconds S rate R mean_ms M failed F".
 * ENDPOINTS: comma-separated (each connection uses them in order).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/etcd_layout.h"
#include "backend/etcd_txn.h"
#include "etcd/client.h"
#include "loop/loop.h"
#include "registry/registry.h"

#define MAX_CONNS 8
#define MAX_CONCURRENCY 1024
#define CALL_TIMEOUT_MS 30000

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct slot {
    struct bench *b;
    double sent_s;
} slot_t;

typedef struct bench {
    loop_t *loop;
    etcd_client_t *conns[MAX_CONNS];
    int n_conns;
    const char *prefix;
    bool is_fill;
    long tokens, members, run;
    double stop_s;  /* reg: no new call after this */
    uint64_t next;  /* the next event's number */
    uint64_t total; /* fill: events to send */
    uint64_t in_flight, done, failed;
    double lat_sum_s;
    slot_t slots[MAX_CONCURRENCY];
} bench_t;

static void on_done(void *ctx, const etcd_result_t *res);

/* Sends event number b->next on slot `s`; false when there is none. */
static bool send_next(bench_t *b, slot_t *s)
{
    if (b->is_fill ? b->next >= b->total : now_s() >= b->stop_s)
        return false;
    uint64_t n = b->next++;
    char key[160], value[64];
    reg_event_t ev = {0};
    backend_guard_t g = {.kind = BACKEND_GUARD_KEY_ABSENT};
    if (b->is_fill) {
        /* First every token's creation, then (once they all committed:
         * a registration's guard needs its token) every member. */
        uint64_t t = n, m = 0;
        if (n >= (uint64_t)b->tokens) {
            t = (n - (uint64_t)b->tokens) / (uint64_t)b->members;
            m = (n - (uint64_t)b->tokens) % (uint64_t)b->members + 1;
        }
        if (m == 0) {
            snprintf(key, sizeof key, REGISTRY_PREFIX "/benchreg%" PRIu64 "/_config/size", t);
            snprintf(value, sizeof value, "%ld", b->members ? b->members : 3);
            ev.action = REG_ACT_SET;
            g.kind = BACKEND_GUARD_TOKEN_NEW;
        } else {
            snprintf(key, sizeof key, REGISTRY_PREFIX "/benchreg%" PRIu64 "/%016" PRIx64, t, m);
            snprintf(value, sizeof value, "m%" PRIu64 "=http://127.0.0.1:%" PRIu64, m, 2379 + m);
            ev.action = REG_ACT_CREATE;
        }
    } else {
        snprintf(key, sizeof key, REGISTRY_PREFIX "/benchreg%" PRIu64 "/r%ld-%" PRIu64,
                 n % (uint64_t)b->tokens, b->run, n);
        snprintf(value, sizeof value, "m1=http://127.0.0.1:2380");
        ev.action = REG_ACT_CREATE;
    }
    ev.node.key = key;
    ev.node.value = value;
    ev.wall_ns = (int64_t)(now_s() * 1e9);
    etcd_txn_plan_t plan;
    if (etcd_layout_plan(b->prefix, &ev, &g, "bench", n, &plan) != 0) {
        b->failed++;
        return false;
    }
    s->sent_s = now_s();
    int rc =
        etcd_txn_send_plan(b->conns[n % (uint64_t)b->n_conns], &plan, CALL_TIMEOUT_MS, on_done, s);
    etcd_txn_plan_free(&plan);
    if (rc != 0) {
        b->failed++;
        return false;
    }
    b->in_flight++;
    return true;
}

static void on_done(void *ctx, const etcd_result_t *res)
{
    slot_t *s = ctx;
    bench_t *b = s->b;
    b->in_flight--;
    b->done++;
    b->lat_sum_s += now_s() - s->sent_s;
    if (res->outcome != ETCD_OK || !((const Etcdserverpb__TxnResponse *)res->resp)->succeeded)
        b->failed++;
    (void)send_next(b, s);
}

int main(int argc, char **argv)
{
    static bench_t b;
    bool fill = argc == 7 && strcmp(argv[1], "fill") == 0;
    bool reg = argc == 9 && strcmp(argv[1], "reg") == 0;
    if (!fill && !reg) {
        fprintf(stderr, "usage: disco-etcdtxn fill ENDPOINTS PREFIX TOKENS MEMBERS CONCURRENCY\n"
                        "       disco-etcdtxn reg ENDPOINTS PREFIX TOKENS SECONDS CONCURRENCY "
                        "CONNS RUN\n");
        return 2;
    }
    b.is_fill = fill;
    b.prefix = argv[3];
    b.tokens = atol(argv[4]);
    long concurrency = atol(argv[6]);
    if (fill) {
        b.members = atol(argv[5]);
        b.total = (uint64_t)b.tokens * (uint64_t)(b.members + 1);
        b.n_conns = 1;
    } else {
        b.stop_s = now_s() + atof(argv[5]);
        b.n_conns = atoi(argv[7]);
        b.run = atol(argv[8]);
    }
    if (b.tokens < 1 || concurrency < 1 || concurrency > MAX_CONCURRENCY || b.n_conns < 1 ||
        b.n_conns > MAX_CONNS) {
        fprintf(stderr, "disco-etcdtxn: bad numbers\n");
        return 2;
    }
    char *list = strdup(argv[2]);
    const char *eps[16];
    size_t n_eps = 0;
    for (char *save = NULL, *p = list ? strtok_r(list, ",", &save) : NULL; p && n_eps < 16;
         p = strtok_r(NULL, ",", &save))
        eps[n_eps++] = p;
    b.loop = loop_new();
    if (!b.loop || n_eps == 0) {
        fprintf(stderr, "disco-etcdtxn: no endpoints or no memory\n");
        return 1;
    }
    for (int i = 0; i < b.n_conns; i++) {
        char err[256];
        etcd_client_config_t cfg = {.endpoints = eps, .n_endpoints = n_eps};
        if (!(b.conns[i] = etcd_client_new(b.loop, &cfg, err))) {
            fprintf(stderr, "disco-etcdtxn: %s\n", err);
            return 1;
        }
    }
    double t0 = now_s();
    if (reg)
        b.stop_s = t0 + atof(argv[5]);
    /* fill: two phases (tokens, then members); reg: one. */
    uint64_t all = b.total;
    for (int phase = 0; phase < (fill ? 2 : 1); phase++) {
        if (fill)
            b.total = phase == 0 ? (uint64_t)b.tokens : all;
        for (long i = 0; i < concurrency; i++) {
            b.slots[i].b = &b;
            if (!send_next(&b, &b.slots[i]))
                break;
        }
        while (b.in_flight > 0)
            if (loop_run_once(b.loop, 100) != 0)
                return 1;
    }
    double secs = now_s() - t0;
    printf("txns %" PRIu64 " seconds %.3f rate %.1f mean_ms %.3f failed %" PRIu64 "\n", b.done,
           secs, (double)b.done / secs, b.done ? 1000.0 * b.lat_sum_s / (double)b.done : 0.0,
           b.failed);
    for (int i = 0; i < b.n_conns; i++)
        etcd_client_free(b.conns[i]);
    loop_free(b.loop);
    free(list);
    return b.failed ? 1 : 0;
}
