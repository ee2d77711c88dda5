/*
 * v3watchers.c - the client side of the "v3park" benchmark: N etcd v3
 * watches (gRPC Watch over h2c), one v3 Put, and the time until the last
 * watch has its event. The v3 counterpart of waiters.c.
 *
 * usage: disco-v3watchers HOST PORT CONNS WATCHES_PER_STREAM PREFIX [TIMEOUT_S]
 *
 *   1. Opens CONNS HTTP/2 connections (h2c by prior knowledge, as grpc-go
 *      does; source addresses spread over 127.0.0.1 .. 127.0.0.8), each with
 *      one Watch stream (POST /etcdserverpb.Watch/Watch) that sends
 *      WATCHES_PER_STREAM WatchCreateRequests for the keys under PREFIX
 *      (range_end: PREFIX with its last byte plus one). CONNS x 1 is what
 *      that many etcd members would do; CONNS x 100 puts many watches on
 *      each stream (disco takes at most 100 a stream, 1000 a connection).
 *      Reads until every watch is confirmed (a WatchResponse with
 *      created=true; one with canceled=true ends the run) and prints
 *      "created N".
 *   2. Waits for a line on stdin (the caller measures the server's memory).
 *   3. Sends a v3 Put of PREFIX "wake" on a connection opened beforehand,
 *      taking the time just before the send, and reads every connection
 *      until each watch has a WatchResponse with an event or TIMEOUT_S
 *      (default 60) passes. Prints one line:
 *        answered=K of=N last_ms=L first_ms=F put_ms=P put_status=S
 *      (times from the Put; S the Put's grpc-status), then waits for stdin
 *      to close before it closes the connections. Exits 0 when all N had
 *      their event.
 *
 * HTTP/2 framing and flow control are libnghttp2's (the client side of the
 * library disco's h2.c serves with); gRPC's 5-byte message prefix and the
 * few protobuf fields used are encoded and read here by hand.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SOURCE_ADDRESSES 8
#define READ_BUF_BYTES (64 * 1024)
#define MAX_EVENTS 1024
#define DEFAULT_TIMEOUT_S 60
/* Large windows, so that a stream carrying many watches' events is never
 * held back by flow control (the figure is the server's, not a window's). */
#define WINDOW_BYTES (1 << 30)

/* One HTTP/2 connection with one stream: a Watch stream, or the Put. */
typedef struct h2conn {
    int fd;
    nghttp2_session *session;
    int32_t stream_id;
    bool is_put;
    unsigned char *body; /* the request body (gRPC messages) and what is sent */
    size_t body_len, body_sent;
    unsigned char *in; /* gRPC bytes received on the stream, not yet parsed */
    size_t in_len, in_cap;
    long created, events; /* WatchResponses with created=true, with events */
    long watches;
    int grpc_status;       /* the Put's, from its trailers; -1 until then */
    bool closed, want_out; /* stream ended; EPOLLOUT asked for */
} h2conn_t;

static struct {
    int ep;
    long created, canceled, answered, watches;
    double t0, first_ms, last_ms, put_ms;
    bool go;
} g = {.first_ms = -1, .last_ms = -1, .put_ms = -1};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- protobuf, by hand ---------------------------------------------------- */

static size_t pb_varint(unsigned char *p, uint64_t v)
{
    size_t n = 0;
    do {
        p[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return n;
}

static size_t pb_bytes(unsigned char *p, unsigned field, const void *data, size_t len)
{
    size_t n = pb_varint(p, (uint64_t)field << 3 | 2);
    n += pb_varint(p + n, len);
    memcpy(p + n, data, len);
    return n + len;
}

/* Reads a varint at *p (< end); false when truncated. */
static bool pb_read_varint(const unsigned char **p, const unsigned char *end, uint64_t *v)
{
    *v = 0;
    for (unsigned shift = 0; *p < end && shift < 64; shift += 7) {
        unsigned char b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/* A gRPC message prefix (not compressed, big-endian length) before msg. */
static size_t grpc_frame(unsigned char *out, const unsigned char *msg, size_t len)
{
    out[0] = 0;
    out[1] = (unsigned char)(len >> 24);
    out[2] = (unsigned char)(len >> 16);
    out[3] = (unsigned char)(len >> 8);
    out[4] = (unsigned char)len;
    memcpy(out + 5, msg, len);
    return 5 + len;
}

/* One WatchResponse: whether it says created (field 3) and whether it
 * carries events (field 11). */
static void watch_response(h2conn_t *c, const unsigned char *p, size_t len)
{
    const unsigned char *end = p + len;
    bool created = false, canceled = false, event = false;
    while (p < end) {
        uint64_t tag, v;
        if (!pb_read_varint(&p, end, &tag))
            return;
        switch (tag & 7) {
        case 0:
            if (!pb_read_varint(&p, end, &v))
                return;
            if (tag >> 3 == 3 && v)
                created = true;
            if (tag >> 3 == 4 && v)
                canceled = true;
            break;
        case 2:
            if (!pb_read_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return;
            p += v;
            if (tag >> 3 == 11)
                event = true;
            break;
        case 1: p += 8; break;
        case 5: p += 4; break;
        default: return;
        }
    }
    if (canceled) { /* e.g. past the server's watches per stream */
        g.canceled++;
        return;
    }
    if (created) {
        c->created++;
        g.created++;
    }
    if (event && g.go) {
        c->events++;
        g.last_ms = now_ms() - g.t0;
        if (g.answered++ == 0)
            g.first_ms = g.last_ms;
    }
}

/* ---- nghttp2 callbacks ----------------------------------------------------- */

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)s, (void)flags;
    h2conn_t *c = ud;
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? NGHTTP2_ERR_WOULDBLOCK
                                                 : NGHTTP2_ERR_CALLBACK_FAILURE;
    return n;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    (void)s, (void)flags, (void)id;
    h2conn_t *c = ud;
    if (c->is_put)
        return 0;
    if (c->in_len + len > c->in_cap) {
        size_t cap = (c->in_len + len) * 2;
        unsigned char *in = realloc(c->in, cap);
        if (!in)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->in = in;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, data, len);
    c->in_len += len;
    size_t at = 0;
    while (c->in_len - at >= 5) {
        size_t mlen = (size_t)c->in[at + 1] << 24 | (size_t)c->in[at + 2] << 16 |
                      (size_t)c->in[at + 3] << 8 | c->in[at + 4];
        if (c->in_len - at - 5 < mlen)
            break;
        watch_response(c, c->in + at + 5, mlen);
        at += 5 + mlen;
    }
    memmove(c->in, c->in + at, c->in_len - at);
    c->in_len -= at;
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)s, (void)f, (void)flags, (void)vlen;
    h2conn_t *c = ud;
    if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        c->grpc_status = atoi((const char *)value);
        if (c->is_put && g.put_ms < 0)
            g.put_ms = now_ms() - g.t0;
    }
    return 0;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t err, void *ud)
{
    (void)s, (void)id, (void)err;
    ((h2conn_t *)ud)->closed = true;
    return 0;
}

/* The request body: the prebuilt messages; a Watch stream then stays open
 * (deferred, never ended), the Put's ends. */
static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    (void)s, (void)id, (void)src;
    h2conn_t *c = ud;
    size_t n = c->body_len - c->body_sent;
    if (n == 0 && !c->is_put)
        return NGHTTP2_ERR_DEFERRED;
    if (n > len)
        n = len;
    memcpy(buf, c->body + c->body_sent, n);
    c->body_sent += n;
    if (c->is_put && c->body_sent == c->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static nghttp2_session_callbacks *callbacks(void)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return NULL;
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    return cb;
}

/* ---- connections ----------------------------------------------------------- */

static int connect_from(const struct sockaddr_in *to, unsigned i)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in from = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(0x7f000001u + i % SOURCE_ADDRESSES)};
    if (bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        connect(fd, (const struct sockaddr *)to, sizeof *to) != 0 ||
        fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends what the session has; asks for EPOLLOUT while the socket is full. */
static bool conn_flush(h2conn_t *c)
{
    if (nghttp2_session_send(c->session) != 0)
        return false;
    bool want = nghttp2_session_want_write(c->session) != 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        if (epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
            return false;
        c->want_out = want;
    }
    return true;
}

static bool conn_open(h2conn_t *c, const struct sockaddr_in *to, unsigned i,
                      nghttp2_session_callbacks *cb, const char *path, const char *authority)
{
    c->grpc_status = -1;
    c->fd = connect_from(to, i);
    if (c->fd < 0 || nghttp2_session_client_new(&c->session, cb, c) != 0)
        return false;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_BYTES},
                                   {NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    if (nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
        nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, WINDOW_BYTES) != 0)
        return false;
#define NV(n, v)                                                                                   \
    {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME}
    nghttp2_nv hdrs[] = {NV(":method", "POST"),
                         NV(":scheme", "http"),
                         NV(":path", path),
                         NV(":authority", authority),
                         NV("content-type", "application/grpc"),
                         NV("te", "trailers")};
#undef NV
    nghttp2_data_provider prd = {.read_callback = body_read};
    c->stream_id =
        nghttp2_submit_request(c->session, NULL, hdrs, sizeof hdrs / sizeof *hdrs, &prd, c);
    if (c->stream_id < 0)
        return false;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    return epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) == 0;
}

/* Reads what the socket has into the session; false when the connection
 * failed or closed. */
static bool conn_read(h2conn_t *c, unsigned char *buf)
{
    for (;;) {
        ssize_t n = recv(c->fd, buf, READ_BUF_BYTES, 0);
        if (n > 0) {
            if (nghttp2_session_mem_recv(c->session, buf, (size_t)n) != n)
                return false;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return conn_flush(c);
        return false;
    }
}

int main(int argc, char **argv)
{
    if (argc < 6 || argc > 7) {
        fprintf(stderr, "usage: %s HOST PORT CONNS WATCHES_PER_STREAM PREFIX [TIMEOUT_S]\n",
                argv[0]);
        return 2;
    }
    const char *host = argv[1], *prefix = argv[5];
    int port = atoi(argv[2]);
    long conns = atol(argv[3]), per = atol(argv[4]);
    size_t plen = strlen(prefix);
    double timeout_ms = (argc == 7 ? atof(argv[6]) : DEFAULT_TIMEOUT_S) * 1e3;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1 || port <= 0 || conns <= 0 || per <= 0 ||
        plen == 0 || plen > 512 || (unsigned char)prefix[plen - 1] == 0xff) {
        fprintf(stderr, "v3watchers: want an IPv4 host, a port, positive counts, a prefix\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    g.watches = conns * per;
    char authority[64];
    snprintf(authority, sizeof authority, "%s:%d", host, port);

    /* WatchRequest{create_request=1: WatchCreateRequest{key=1, range_end=2}},
     * framed, WATCHES_PER_STREAM times: one body shared by every stream. */
    unsigned char end[513], create[1100], msg[1100];
    memcpy(end, prefix, plen);
    end[plen - 1]++;
    size_t cl = pb_bytes(create, 1, prefix, plen);
    cl += pb_bytes(create + cl, 2, end, plen);
    size_t ml = pb_bytes(msg, 1, create, cl);
    unsigned char one[1200];
    size_t framed = grpc_frame(one, msg, ml);
    unsigned char *watch_body = malloc(framed * (size_t)per);
    /* PutRequest{key=1: PREFIX "wake", value=2} */
    unsigned char key[520], put_msg[600], put_body[700];
    memcpy(key, prefix, plen);
    memcpy(key + plen, "wake", 4);
    static const char value[] = "wake=http://127.0.0.1:1";
    size_t pl = pb_bytes(put_msg, 1, key, plen + 4);
    pl += pb_bytes(put_msg + pl, 2, value, sizeof value - 1);
    size_t put_len = grpc_frame(put_body, put_msg, pl);

    h2conn_t *cs = calloc((size_t)conns + 1, sizeof *cs), *put = &cs[conns];
    unsigned char *buf = malloc(READ_BUF_BYTES);
    nghttp2_session_callbacks *cb = callbacks();
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!watch_body || !cs || !buf || !cb || g.ep < 0) {
        fprintf(stderr, "v3watchers: out of memory or descriptors\n");
        return 1;
    }
    for (long i = 0; i < per; i++)
        memcpy(watch_body + i * framed, one, framed);

    for (long i = 0; i < conns; i++) {
        h2conn_t *c = &cs[i];
        c->body = watch_body;
        c->body_len = framed * (size_t)per;
        c->watches = per;
        if (!conn_open(c, &to, (unsigned)i, cb, "/etcdserverpb.Watch/Watch", authority) ||
            !conn_flush(c)) {
            fprintf(stderr, "v3watchers: connection %ld of %ld: %s\n", i + 1, conns,
                    strerror(errno));
            return 1;
        }
    }
    struct epoll_event events[MAX_EVENTS];
    double deadline = now_ms() + timeout_ms;
    while (g.created < g.watches) {
        int n = epoll_wait(g.ep, events, MAX_EVENTS, 1000);
        for (int i = 0; i < n; i++) {
            h2conn_t *c = events[i].data.ptr;
            if (!conn_read(c, buf) || c->closed) {
                fprintf(stderr, "v3watchers: a Watch stream ended before its watches were made\n");
                return 1;
            }
            if (g.canceled) {
                fprintf(stderr, "v3watchers: the server canceled %ld watches at their creation\n",
                        g.canceled);
                return 1;
            }
        }
        if (now_ms() > deadline) {
            fprintf(stderr, "v3watchers: %ld of %ld watches created in time\n", g.created,
                    g.watches);
            return 1;
        }
    }
    printf("created %ld\n", g.watches);
    fflush(stdout);

    /* The Put's connection is made now (its handshake done before the
     * line), and its request submitted only at the go. */
    put->is_put = true;
    put->grpc_status = -1;
    put->fd = connect_from(&to, 0);
    if (put->fd < 0 || nghttp2_session_client_new(&put->session, cb, put) != 0 ||
        nghttp2_submit_settings(put->session, NGHTTP2_FLAG_NONE, NULL, 0) != 0) {
        fprintf(stderr, "v3watchers: the Put's connection: %s\n", strerror(errno));
        return 1;
    }
    struct epoll_event pev = {.events = EPOLLIN, .data.ptr = put};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, put->fd, &pev) != 0 || !conn_flush(put))
        return 1;

    /* Until the caller says go: serve the connections (SETTINGS, PINGs). */
    static char stdin_tag;
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, STDIN_FILENO, &sev) != 0)
        return 1;
    while (!g.go) {
        int n = epoll_wait(g.ep, events, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == &stdin_tag) {
                char line[64];
                g.go = read(STDIN_FILENO, line, sizeof line) >= 0 || errno != EINTR;
            } else if (!conn_read(events[i].data.ptr, buf)) {
                fprintf(stderr, "v3watchers: a connection failed while parked\n");
                return 1;
            }
        }
    }
    epoll_ctl(g.ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);

#define NV(n, v)                                                                                   \
    {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME}
    nghttp2_nv hdrs[] = {NV(":method", "POST"),
                         NV(":scheme", "http"),
                         NV(":path", "/etcdserverpb.KV/Put"),
                         NV(":authority", authority),
                         NV("content-type", "application/grpc"),
                         NV("te", "trailers")};
#undef NV
    put->body = put_body;
    put->body_len = put_len;
    nghttp2_data_provider prd = {.read_callback = body_read};
    g.t0 = now_ms();
    if (nghttp2_submit_request(put->session, NULL, hdrs, sizeof hdrs / sizeof *hdrs, &prd, put) <
            0 ||
        !conn_flush(put)) {
        fprintf(stderr, "v3watchers: sending the Put failed\n");
        return 1;
    }
    /* Until every event and the Put's own answer (its trailers) are in. */
    while (g.answered < g.watches || put->grpc_status < 0) {
        double left = g.t0 + timeout_ms - now_ms();
        if (left <= 0)
            break;
        int n = epoll_wait(g.ep, events, MAX_EVENTS, (int)left + 1);
        for (int i = 0; i < n; i++) {
            h2conn_t *c = events[i].data.ptr;
            if (!conn_read(c, buf)) {
                epoll_ctl(g.ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->closed = true;
            }
        }
    }
    printf("answered=%ld of=%ld last_ms=%.3f first_ms=%.3f put_ms=%.3f put_status=%d\n", g.answered,
           g.watches, g.last_ms, g.first_ms, g.put_ms, put->grpc_status);
    fflush(stdout);
    while (read(STDIN_FILENO, buf, READ_BUF_BYTES) > 0 || errno == EINTR)
        ;
    return g.answered == g.watches ? 0 : 1;
}
