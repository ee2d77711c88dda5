/*
 * test_etcd_client.c - etcd/client.h against a scripted HTTP/2 server (an
 * nghttp2 server session on a loopback socket, in this process, on the
 * same loop turns): the answers a real etcd gives rarely and at bad
 * moments, where the outcome decides whether a write may have been applied.
 *
 *   - a write answered UNAVAILABLE ("request timed out") is ETCD_UNKNOWN,
 *     a read answered so is ETCD_GRPC;
 *   - a stream refused unprocessed (RST_STREAM REFUSED_STREAM) goes out
 *     again and its answer is the call's;
 *   - a GOAWAY that leaves a call unprocessed: the call moves to the next
 *     connection;
 *   - nothing is sent before the server's SETTINGS;
 *   - a Watch stream refused UNAVAILABLE ("no leader", etcd's answer to
 *     `hasleader` on a member without one) ends the watches and moves the
 *     client to another member, with a back-off, instead of re-opening the
 *     stream on the same member as fast as it refuses; so does any other
 *     refusal of the stream (UNIMPLEMENTED);
 *   - a server that closes every connection before its SETTINGS is dialed
 *     with the back-off, not once per loop turn;
 *   - a create etcd refuses (watch_id -1, created, canceled) ends only the
 *     watch it answers.
 * Real etcd behaviour (answers, watches, failover, TLS, auth) is covered by
 * tests/e2e/test_etcd_client.py.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "etcd/client.h"
#include "loop/loop.h"

/* Every wait here is bounded by turns of at most 2 ms each. */
#define MAX_TURNS 2000
#define CALL_TIMEOUT_MS 3000

enum behaviour {
    ANSWER_OK,           /* an empty RangeResponse/TxnResponse */
    ANSWER_UNAVAILABLE,  /* trailers-only grpc-status 14 */
    REFUSE_FIRST,        /* RST_STREAM REFUSED_STREAM for the first request, then OK */
    GOAWAY_FIRST,        /* GOAWAY (last stream 0) on the first connection, then OK */
    NO_SETTINGS,         /* the server never sends its SETTINGS */
    WATCH_NO_LEADER,     /* every stream refused at its HEADERS: grpc-status 14 */
    CLOSE_AT_ONCE,       /* every connection closed as soon as it is accepted */
    WATCH_UNIMPLEMENTED, /* every stream refused at its HEADERS: grpc-status 12 (a
                          * gRPC server that is not etcd) */
    WATCH_REFUSE_FIRST,  /* the Watch stream: the first create refused as etcd 3.4
                          * refuses one (watch_id -1, created, canceled), the
                          * second created (watch_id 2) */
};

typedef struct server {
    enum behaviour how;
    int lfd, fd;
    nghttp2_session *ng;
    int requests; /* requests whose body arrived, over all connections */
    int connections;
    int streams; /* WATCH_NO_LEADER: streams refused */
    uint8_t body[128];
    size_t body_len, body_off;
} server_t;

typedef struct result {
    int calls;
    etcd_result_t res;
    char message[256];
} result_t;

static void on_done(void *ctx, const etcd_result_t *res)
{
    result_t *r = ctx;
    r->calls++;
    r->res = *res;
    snprintf(r->message, sizeof r->message, "%s", res->message);
    r->res.message = r->message;
    r->res.resp = NULL; /* borrowed for the callback only */
}

/* ---- the scripted server ------------------------------------------------ */

static ssize_t srv_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *user)
{
    (void)ng, (void)flags;
    server_t *s = user;
    ssize_t n = send(s->fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return NGHTTP2_ERR_WOULDBLOCK;
    return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}

static ssize_t srv_read_body(nghttp2_session *ng, int32_t sid, uint8_t *out, size_t len,
                             uint32_t *flags, nghttp2_data_source *src, void *user)
{
    (void)src;
    server_t *s = user;
    size_t n = s->body_len - s->body_off < len ? s->body_len - s->body_off : len;
    memcpy(out, s->body + s->body_off, n);
    s->body_off += n;
    if (s->body_off == s->body_len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_nv tr[] = {{(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0}};
        nghttp2_submit_trailer(ng, sid, tr, 1);
    }
    return (ssize_t)n;
}

static void answer_ok(server_t *s, int32_t sid)
{
    /* An empty message is a valid RangeResponse and TxnResponse. */
    memset(s->body, 0, 5);
    s->body_len = 5;
    s->body_off = 0;
    nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
                       {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0}};
    nghttp2_data_provider prd = {.read_callback = srv_read_body};
    assert_int_equal(nghttp2_submit_response(s->ng, sid, nv, 2, &prd), 0);
}

static ssize_t srv_read_watch(nghttp2_session *ng, int32_t sid, uint8_t *out, size_t len,
                              uint32_t *flags, nghttp2_data_source *src, void *user)
{
    (void)ng, (void)sid, (void)flags, (void)src;
    server_t *s = user;
    size_t n = s->body_len - s->body_off < len ? s->body_len - s->body_off : len;
    if (n == 0)
        return NGHTTP2_ERR_DEFERRED; /* the stream stays open, as etcd's does */
    memcpy(out, s->body + s->body_off, n);
    s->body_off += n;
    return (ssize_t)n;
}

/* Appends a framed WatchResponse to the server's body. */
static void put_watch_response(server_t *s, const Etcdserverpb__WatchResponse *r)
{
    size_t n = etcdserverpb__watch_response__get_packed_size(r);
    assert_true(s->body_len + 5 + n <= sizeof s->body);
    uint8_t *p = s->body + s->body_len;
    p[0] = 0;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    etcdserverpb__watch_response__pack(r, p + 5);
    s->body_len += 5 + n;
}

/* etcd 3.4's answers to two creates, the first of an empty range ("b" to
 * "a"): a refused create carries watch_id -1, not the client's id. */
static void answer_watch_refuse_first(server_t *s, int32_t sid)
{
    Etcdserverpb__WatchResponse refused = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    refused.watch_id = -1;
    refused.created = true;
    refused.canceled = true;
    refused.cancel_reason = "mvcc: watcher range is empty";
    Etcdserverpb__WatchResponse created = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    created.watch_id = 2;
    created.created = true;
    s->body_len = s->body_off = 0;
    put_watch_response(s, &refused);
    put_watch_response(s, &created);
    nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
                       {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0}};
    nghttp2_data_provider prd = {.read_callback = srv_read_watch};
    assert_int_equal(nghttp2_submit_response(s->ng, sid, nv, 2, &prd), 0);
}

static int srv_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    server_t *s = user;
    if (s->how == WATCH_REFUSE_FIRST && f->hd.type == NGHTTP2_HEADERS &&
        f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        s->streams++;
        answer_watch_refuse_first(s, f->hd.stream_id);
        return 0;
    }
    if ((s->how == WATCH_NO_LEADER || s->how == WATCH_UNIMPLEMENTED) &&
        f->hd.type == NGHTTP2_HEADERS) {
        bool is_12 = s->how == WATCH_UNIMPLEMENTED;
        const char *msg = is_12 ? "unknown service etcdserverpb.Watch" : "etcdserver: no leader";
        nghttp2_nv nv[] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
            {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
            {(uint8_t *)"grpc-status", (uint8_t *)(is_12 ? "12" : "14"), 11, 2, 0},
            {(uint8_t *)"grpc-message", (uint8_t *)msg, 12, strlen(msg), 0},
        };
        s->streams++;
        assert_int_equal(nghttp2_submit_response(ng, f->hd.stream_id, nv, 4, NULL), 0);
        return 0;
    }
    if (f->hd.stream_id == 0 || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    int n = ++s->requests;
    int32_t sid = f->hd.stream_id;
    if (s->how == WATCH_NO_LEADER || s->how == WATCH_UNIMPLEMENTED)
        return 0; /* answered at its HEADERS (srv_begin_headers) */
    switch (s->how) {
    case ANSWER_OK:
    case NO_SETTINGS:
    case WATCH_NO_LEADER:
    case WATCH_UNIMPLEMENTED:
    case CLOSE_AT_ONCE:
    case WATCH_REFUSE_FIRST: answer_ok(s, sid); break;
    case ANSWER_UNAVAILABLE: {
        static const char msg[] = "etcdserver: request timed out";
        nghttp2_nv nv[] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
            {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
            {(uint8_t *)"grpc-status", (uint8_t *)"14", 11, 2, 0},
            {(uint8_t *)"grpc-message", (uint8_t *)msg, 12, sizeof msg - 1, 0},
        };
        assert_int_equal(nghttp2_submit_response(ng, sid, nv, 4, NULL), 0);
        break;
    }
    case REFUSE_FIRST:
        if (n == 1)
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, sid, NGHTTP2_REFUSED_STREAM);
        else
            answer_ok(s, sid);
        break;
    case GOAWAY_FIRST:
        if (s->connections == 1)
            nghttp2_submit_goaway(ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
        else
            answer_ok(s, sid);
        break;
    }
    return 0;
}

static void server_close_conn(server_t *s)
{
    if (s->ng)
        nghttp2_session_del(s->ng);
    s->ng = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

/* One step of the server: accept, read, answer, write. */
static void server_pump(server_t *s)
{
    if (s->fd < 0) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        s->connections++;
        if (s->how == CLOSE_AT_ONCE) {
            close(fd);
            return;
        }
        s->fd = fd;
        nghttp2_session_callbacks *cb;
        assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
        nghttp2_session_callbacks_set_send_callback(cb, srv_send);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, srv_frame_recv);
        assert_int_equal(nghttp2_session_server_new(&s->ng, cb, s), 0);
        nghttp2_session_callbacks_del(cb);
        if (s->how != NO_SETTINGS)
            assert_int_equal(nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, NULL, 0), 0);
    }
    uint8_t buf[16384];
    ssize_t n;
    while ((n = recv(s->fd, buf, sizeof buf, 0)) > 0) {
        if (s->how == NO_SETTINGS) {
            /* Read and ignored: a server that never speaks HTTP/2. */
            continue;
        }
        if (nghttp2_session_mem_recv(s->ng, buf, (size_t)n) < 0) {
            server_close_conn(s);
            return;
        }
    }
    if (n == 0) {
        server_close_conn(s);
        return;
    }
    if (s->how != NO_SETTINGS)
        nghttp2_session_send(s->ng);
    if (s->how == GOAWAY_FIRST && s->connections == 1 && s->requests > 0 &&
        !nghttp2_session_want_write(s->ng))
        server_close_conn(s); /* after the GOAWAY went out */
}

static void server_start(server_t *s, enum behaviour how, char *endpoint, size_t len)
{
    memset(s, 0, sizeof *s);
    s->how = how;
    s->fd = -1;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(s->lfd, 8), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(endpoint, len, "http://127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
}

static void server_stop(server_t *s)
{
    server_close_conn(s);
    close(s->lfd);
}

/* ---- the client side ---------------------------------------------------- */

typedef struct fixture {
    loop_t *loop;
    server_t srv;
    etcd_client_t *c;
    char endpoint[64];
} fixture_t;

static void fixture_start(fixture_t *f, enum behaviour how)
{
    f->loop = loop_new();
    assert_non_null(f->loop);
    server_start(&f->srv, how, f->endpoint, sizeof f->endpoint);
    const char *eps[] = {f->endpoint};
    etcd_client_config_t cfg = {
        .endpoints = eps, .n_endpoints = 1, .dial_timeout_ms = 1000, .keepalive_ms = 60000};
    char err[256];
    f->c = etcd_client_new(f->loop, &cfg, err);
    assert_non_null(f->c);
}

static void fixture_stop(fixture_t *f)
{
    etcd_client_free(f->c);
    server_stop(&f->srv);
    loop_free(f->loop);
}

/* Turns the loop (and the server) until `r` has its answer. */
static void run_until_done(fixture_t *f, const result_t *r)
{
    for (int i = 0; i < MAX_TURNS && r->calls == 0; i++) {
        loop_run_once(f->loop, 2);
        server_pump(&f->srv);
    }
    assert_int_equal(r->calls, 1);
}

static int start_range(fixture_t *f, result_t *r)
{
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key = (ProtobufCBinaryData){2, (uint8_t *)"/k"};
    return etcd_range(f->c, &rq, CALL_TIMEOUT_MS, on_done, r);
}

static int start_txn(fixture_t *f, result_t *r)
{
    Etcdserverpb__TxnRequest rq = ETCDSERVERPB__TXN_REQUEST__INIT;
    return etcd_txn(f->c, &rq, CALL_TIMEOUT_MS, on_done, r);
}

static void test_answer_ok(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, ANSWER_OK);
    result_t r = {0};
    assert_int_equal(start_range(&f, &r), 0);
    assert_int_equal(r.calls, 0); /* never from inside the call */
    run_until_done(&f, &r);
    assert_int_equal(r.res.outcome, ETCD_OK);
    assert_true(etcd_client_connected(f.c));
    fixture_stop(&f);
}

static void test_unavailable_write_is_unknown_read_is_grpc(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, ANSWER_UNAVAILABLE);
    result_t txn = {0}, range = {0};
    assert_int_equal(start_txn(&f, &txn), 0);
    run_until_done(&f, &txn);
    assert_int_equal(txn.res.outcome, ETCD_UNKNOWN);
    assert_int_equal(txn.res.code, 14);
    assert_string_equal(txn.message, "etcdserver: request timed out");
    assert_int_equal(start_range(&f, &range), 0);
    run_until_done(&f, &range);
    assert_int_equal(range.res.outcome, ETCD_GRPC);
    assert_int_equal(range.res.code, 14);
    fixture_stop(&f);
}

static void test_refused_stream_goes_out_again(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, REFUSE_FIRST);
    result_t r = {0};
    assert_int_equal(start_txn(&f, &r), 0);
    run_until_done(&f, &r);
    assert_int_equal(r.res.outcome, ETCD_OK);
    assert_int_equal(f.srv.requests, 2);
    assert_int_equal(f.srv.connections, 1);
    fixture_stop(&f);
}

static void test_goaway_moves_the_call_to_a_new_connection(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, GOAWAY_FIRST);
    result_t r = {0};
    assert_int_equal(start_txn(&f, &r), 0);
    run_until_done(&f, &r);
    assert_int_equal(r.res.outcome, ETCD_OK);
    assert_int_equal(f.srv.requests, 2);
    assert_int_equal(f.srv.connections, 2);
    fixture_stop(&f);
}

static void test_nothing_is_sent_before_the_servers_settings(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, NO_SETTINGS);
    result_t r = {0};
    Etcdserverpb__TxnRequest rq = ETCDSERVERPB__TXN_REQUEST__INIT;
    assert_int_equal(etcd_txn(f.c, &rq, 200, on_done, &r), 0);
    run_until_done(&f, &r);
    /* The preface went out, no request did: certainly not applied. */
    assert_int_equal(r.res.outcome, ETCD_UNSENT);
    assert_false(etcd_client_connected(f.c));
    fixture_stop(&f);
}

static void test_free_with_calls_in_flight_calls_nothing(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, NO_SETTINGS);
    result_t r = {0};
    assert_int_equal(start_range(&f, &r), 0);
    for (int i = 0; i < 5; i++) {
        loop_run_once(f.loop, 2);
        server_pump(&f.srv);
    }
    fixture_stop(&f);
    assert_int_equal(r.calls, 0);
}

typedef struct watch_ctx {
    fixture_t *f;
    Etcdserverpb__WatchCreateRequest rq;
    int ended;
} watch_ctx_t;

static void on_watch_again(void *ctx, const Etcdserverpb__WatchResponse *r)
{
    watch_ctx_t *w = ctx;
    if (r)
        return;
    w->ended++;
    /* what the backend does: create it again */
    assert_non_null(etcd_watch(w->f->c, &w->rq, on_watch_again, w));
}

static void watch_refused_moves_with_backoff(enum behaviour how)
{
    fixture_t f;
    fixture_start(&f, how);
    watch_ctx_t w = {.f = &f};
    Etcdserverpb__WatchCreateRequest rq = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    rq.key = (ProtobufCBinaryData){2, (uint8_t *)"/k"};
    w.rq = rq;
    assert_non_null(etcd_watch(f.c, &w.rq, on_watch_again, &w));
    for (int i = 0; i < MAX_TURNS && f.srv.connections < 2; i++) {
        loop_run_once(f.loop, 2);
        server_pump(&f.srv);
    }
    assert_true(f.srv.connections >= 2); /* it left the member */
    assert_true(w.ended >= 1);
    /* ~300 ms more: with the back-off (50, 100, 200 ms ...) a handful of
     * streams, not one per round trip */
    loop_update_clock(f.loop);
    uint64_t until = loop_now_ms(f.loop) + 300;
    int streams_before = f.srv.streams;
    for (int i = 0; i < MAX_TURNS && loop_now_ms(f.loop) < until; i++) {
        loop_run_once(f.loop, 2);
        server_pump(&f.srv);
    }
    assert_true(f.srv.streams - streams_before <= 10);
    fixture_stop(&f);
}

static void test_watch_refused_no_leader_moves_with_backoff(void **state)
{
    (void)state;
    watch_refused_moves_with_backoff(WATCH_NO_LEADER);
}

/* Any refusal of the Watch stream (here a gRPC server that is not etcd:
 * UNIMPLEMENTED) would come again at once on the same connection: the
 * client moves on with a back-off instead of reopening the stream as fast
 * as it is refused. */
static void test_watch_refused_otherwise_moves_with_backoff(void **state)
{
    (void)state;
    watch_refused_moves_with_backoff(WATCH_UNIMPLEMENTED);
}

typedef struct watch_seen {
    int calls, created, canceled, ended;
    int after_last; /* callbacks after the last one (canceled or ended) */
    bool is_over;
} watch_seen_t;

static void on_watch_seen(void *ctx, const Etcdserverpb__WatchResponse *r)
{
    watch_seen_t *w = ctx;
    w->calls++;
    if (w->is_over)
        w->after_last++;
    if (!r) {
        w->ended++;
        w->is_over = true;
        return;
    }
    if (r->created && !r->canceled)
        w->created++;
    if (r->canceled) {
        w->canceled++;
        w->is_over = true;
    }
}

/* etcd answers a create it refuses (an empty range; a duplicate id) with
 * watch_id -1, created and canceled: that ends the one watch whose create
 * it answers (the oldest not answered yet), not every watch on the
 * stream as a progress answer (also watch_id -1) would. */
static void test_refused_create_ends_only_its_watch(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, WATCH_REFUSE_FIRST);
    watch_seen_t a = {0}, b = {0};
    Etcdserverpb__WatchCreateRequest empty = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    empty.key = (ProtobufCBinaryData){1, (uint8_t *)"b"};
    empty.range_end = (ProtobufCBinaryData){1, (uint8_t *)"a"};
    Etcdserverpb__WatchCreateRequest good = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    good.key = (ProtobufCBinaryData){2, (uint8_t *)"/k"};
    assert_non_null(etcd_watch(f.c, &empty, on_watch_seen, &a));
    assert_non_null(etcd_watch(f.c, &good, on_watch_seen, &b));
    for (int i = 0; i < MAX_TURNS && b.calls < 2 && !(b.created && a.calls); i++) {
        loop_run_once(f.loop, 2);
        server_pump(&f.srv);
    }
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.canceled, 1);
    assert_int_equal(b.canceled, 0);
    assert_int_equal(b.created, 1);
    /* the connection ends: the live watch ends, the refused one is over */
    server_close_conn(&f.srv);
    for (int i = 0; i < MAX_TURNS && b.ended == 0; i++)
        loop_run_once(f.loop, 2);
    assert_int_equal(b.ended, 1);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.after_last + b.after_last, 0);
    fixture_stop(&f);
}

/* A server that takes the TCP connection and closes it before any HTTP/2
 * (a wrong port, a proxy without a backend, etcd refusing the client's
 * certificate after a TLS 1.3 handshake): the connection never was up,
 * so the client backs off between rounds instead of dialing again at
 * once, as fast as the server closes. */
static void test_closed_before_settings_backs_off(void **state)
{
    (void)state;
    fixture_t f;
    fixture_start(&f, CLOSE_AT_ONCE);
    result_t r = {0};
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key = (ProtobufCBinaryData){2, (uint8_t *)"/k"};
    assert_int_equal(etcd_range(f.c, &rq, 400, on_done, &r), 0);
    loop_update_clock(f.loop);
    uint64_t until = loop_now_ms(f.loop) + 300;
    for (int i = 0; i < MAX_TURNS && loop_now_ms(f.loop) < until; i++) {
        loop_run_once(f.loop, 2);
        server_pump(&f.srv);
    }
    /* back-off 50, 100, 200 ms: a handful of dials, not one per turn */
    assert_true(f.srv.connections >= 1);
    assert_true(f.srv.connections <= 10);
    run_until_done(&f, &r);
    assert_int_equal(r.res.outcome, ETCD_UNSENT);
    fixture_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_ok),
        cmocka_unit_test(test_unavailable_write_is_unknown_read_is_grpc),
        cmocka_unit_test(test_refused_stream_goes_out_again),
        cmocka_unit_test(test_goaway_moves_the_call_to_a_new_connection),
        cmocka_unit_test(test_nothing_is_sent_before_the_servers_settings),
        cmocka_unit_test(test_free_with_calls_in_flight_calls_nothing),
        cmocka_unit_test(test_watch_refused_no_leader_moves_with_backoff),
        cmocka_unit_test(test_refused_create_ends_only_its_watch),
        cmocka_unit_test(test_closed_before_settings_backs_off),
        cmocka_unit_test(test_watch_refused_otherwise_moves_with_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
