/*
 * fuzz_etcd_client.c - what an etcd server sends, fed to disco's etcd
 * client (src/etcd/client.c): nghttp2's client session, gRPC framing and
 * trailers, unary answers, the Watch stream's messages, GOAWAY/RST_STREAM,
 * and the client's bookkeeping of outcomes.
 *
 * Each input: a listening socket on 127.0.0.1 (port chosen by the kernel),
 * a client dialing it with a Range, a Txn and a watch waiting; the
 * connection is accepted, the server's SETTINGS frame written (so calls
 * go out), then the input; the loop turns a bounded number of times while
 * the client's bytes are read and dropped; then the server side closes,
 * the loop turns again, and the client is freed.
 *
 * Checked beyond "no crash, leak or undefined behaviour": every call's
 * callback runs at most once; a watch gets nothing after its last
 * callback (resp == NULL or canceled).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "etcd/client.h"
#include "loop/loop.h"

#define TURNS_WITH_INPUT 8
#define TURNS_AFTER_CLOSE 4
#define CALL_TIMEOUT_MS 20

static const uint8_t server_settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};

typedef struct {
    int calls_done[2];
    bool watch_over;
} fuzz_state_t;

static void on_call(void *ctx, const etcd_result_t *res)
{
    int *count = ctx;
    if (++*count > 1) {
        fprintf(stderr, "a call's callback ran twice\n");
        abort();
    }
    if (!res->message)
        abort();
}

static void on_watch(void *ctx, const Etcdserverpb__WatchResponse *r)
{
    fuzz_state_t *st = ctx;
    if (st->watch_over) {
        fprintf(stderr, "a watch callback after its last one\n");
        abort();
    }
    if (!r || r->canceled)
        st->watch_over = true;
}

static void drain(int fd)
{
    char buf[16384];
    while (read(fd, buf, sizeof buf) > 0) {
    }
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return; /* the client went away: fine */
        p += w;
        n -= (size_t)w;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t slen = sizeof sa;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &slen) < 0)
        abort();
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    const char *eps[] = {ep};
    etcd_client_config_t cfg = {
        .endpoints = eps, .n_endpoints = 1, .dial_timeout_ms = 1000, .keepalive_ms = 60000};
    loop_t *loop = loop_new();
    char err[256];
    etcd_client_t *c = loop ? etcd_client_new(loop, &cfg, err) : NULL;
    if (!c)
        abort();

    fuzz_state_t st = {0};
    Etcdserverpb__RangeRequest rr = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rr.key = (ProtobufCBinaryData){3, (uint8_t *)"/k/"};
    rr.range_end = (ProtobufCBinaryData){3, (uint8_t *)"/k0"};
    Etcdserverpb__TxnRequest tr = ETCDSERVERPB__TXN_REQUEST__INIT;
    Etcdserverpb__WatchCreateRequest wr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    wr.key = rr.key;
    wr.range_end = rr.range_end;
    if (etcd_range(c, &rr, CALL_TIMEOUT_MS, on_call, &st.calls_done[0]) < 0 ||
        etcd_txn(c, &tr, CALL_TIMEOUT_MS, on_call, &st.calls_done[1]) < 0 ||
        !etcd_watch(c, &wr, on_watch, &st))
        abort();

    int sfd = -1;
    for (int i = 0; i < 50 && sfd < 0; i++) {
        loop_run_once(loop, 2);
        sfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    }
    if (sfd >= 0) {
        write_all(sfd, server_settings, sizeof server_settings);
        loop_run_once(loop, 1);
        drain(sfd);
        write_all(sfd, data, size);
        for (int i = 0; i < TURNS_WITH_INPUT; i++) {
            loop_run_once(loop, 1);
            drain(sfd);
        }
        close(sfd);
    }
    close(lfd); /* no reconnection: refused from now on */
    for (int i = 0; i < TURNS_AFTER_CLOSE; i++)
        loop_run_once(loop, 1);
    etcd_client_free(c);
    loop_free(loop);
    return 0;
}
