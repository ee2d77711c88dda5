/*
 * tlsconns.c - the client side of the TLS benchmarks: new TLS connections
 * a second (full handshakes), and many TLS connections held idle or parked
 * in a long-poll, for the server's memory per connection.
 *
 * usage:
 *   disco-tlsconns rate HOST PORT PATH CONCURRENCY SECONDS
 *   disco-tlsconns hold HOST PORT PATH|- COUNT [plain]
 *
 * rate: keeps CONCURRENCY connections in flight for SECONDS; each one
 *   connects, makes a full TLS handshake (a fresh SSL object that offers no
 *   session and no ticket: never a resumption), sends one GET PATH, reads
 *   the whole answer (Content-Length), and closes. Prints
 *     done=N failed=F seconds=S rate=R
 *   with R the completed connections a second. `h2load --h1` reuses each
 *   connection for all of its client's requests, and `openssl s_time` runs
 *   one connection at a time; this keeps the server busy as wrk does.
 * hold: opens COUNT connections (64 handshakes at a time), sends GET PATH on
 *   each (a long-poll, to park it) or nothing with "-" (idle keep-alive),
 *   prints "held COUNT" and waits for stdin to close before it closes them.
 *   With "plain" it speaks plain TCP: the same connections without TLS,
 *   so that the difference is what TLS costs the server.
 *
 * Source addresses are spread over 127.0.0.1 .. 127.0.0.8 (as in
 * waiters.c), so that closed connections in TIME_WAIT do not exhaust one
 * address's ephemeral ports. Exits 0 when no connection failed.
 */
/* memmem and strcasestr: _GNU_SOURCE comes from the build (CMakeLists.txt). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SOURCE_ADDRESSES 8
#define HOLD_CONCURRENCY 64
#define ANSWER_BYTES (16 * 1024)
#define MAX_EVENTS 256

enum conn_state { CS_FREE, CS_CONNECT, CS_HANDSHAKE, CS_WRITE, CS_READ, CS_HELD };

typedef struct conn {
    int fd;
    enum conn_state state;
    SSL *ssl;                  /* NULL in plain mode */
    size_t sent, got;          /* request bytes sent, answer bytes read */
    char answer[ANSWER_BYTES]; /* rate mode: the answer, to find its end */
    unsigned char want_events; /* EPOLLIN/EPOLLOUT currently asked for */
} conn_t;

static struct {
    struct sockaddr_in to;
    SSL_CTX *ctx; /* NULL: plain TCP */
    char request[512];
    size_t request_len; /* 0: hold idle, send nothing */
    bool rate;          /* rate mode: close after the answer */
    int ep;
    unsigned next_source;
    long done, failed;
} g;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void conn_close(conn_t *c)
{
    if (c->ssl)
        SSL_free(c->ssl); /* no close_notify: most HTTP clients just close */
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->ssl = NULL;
    c->fd = -1;
    c->state = CS_FREE;
}

static bool conn_want(conn_t *c, unsigned events)
{
    if (c->want_events == events)
        return true;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    c->want_events = (unsigned char)events;
    return epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev) == 0;
}

/* Starts a connection in slot c: non-blocking connect from the next source
 * address. */
static bool conn_open(conn_t *c)
{
    memset(c, 0, offsetof(conn_t, answer));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return false;
    int one = 1;
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in from = {.sin_family = AF_INET,
                               .sin_addr.s_addr =
                                   htonl(0x7f000001u + g.next_source++ % SOURCE_ADDRESSES)};
    if (bind(c->fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        (connect(c->fd, (struct sockaddr *)&g.to, sizeof g.to) != 0 && errno != EINPROGRESS)) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    c->want_events = EPOLLOUT;
    c->state = CS_CONNECT;
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    return true;
}

/* Whether the answer in c->answer is whole: headers and Content-Length
 * bytes of body. Sets *ok to whether its status is 200. */
static bool answer_whole(conn_t *c, bool *ok)
{
    char *end = memmem(c->answer, c->got, "\r\n\r\n", 4);
    if (!end)
        return false;
    *ok = c->got >= 13 && memcmp(c->answer, "HTTP/1.1 200 ", 13) == 0;
    *end = '\0';
    const char *cl = strcasestr(c->answer, "\r\ncontent-length:");
    *end = '\r';
    size_t body = cl ? strtoul(cl + 17, NULL, 10) : 0;
    return c->got >= (size_t)(end + 4 - c->answer) + body;
}

/* An OpenSSL call's outcome: 1 done, 0 wait (events asked for), -1 failed. */
static int ssl_wait(conn_t *c, int r)
{
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ: return conn_want(c, EPOLLIN) ? 0 : -1;
    case SSL_ERROR_WANT_WRITE: return conn_want(c, EPOLLOUT) ? 0 : -1;
    default: return -1;
    }
}

/* Drives c as far as it goes without waiting. Returns false when it failed
 * (the caller closes it). */
static bool conn_step(conn_t *c)
{
    for (;;) {
        switch (c->state) {
        case CS_CONNECT: {
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
                return false;
            if (g.ctx) {
                c->ssl = SSL_new(g.ctx);
                if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
                    return false;
                SSL_set_connect_state(c->ssl);
            }
            c->state = g.ctx ? CS_HANDSHAKE : CS_WRITE;
            break;
        }
        case CS_HANDSHAKE: {
            int r = SSL_do_handshake(c->ssl);
            if (r != 1)
                return ssl_wait(c, r) == 0;
            c->state = CS_WRITE;
            break;
        }
        case CS_WRITE:
            if (c->sent == g.request_len) {
                c->state = g.rate ? CS_READ : CS_HELD;
                if (c->state == CS_HELD) {
                    g.done++;
                    return conn_want(c, 0);
                }
                break;
            }
            if (c->ssl) {
                int r = SSL_write(c->ssl, g.request + c->sent, (int)(g.request_len - c->sent));
                if (r <= 0)
                    return ssl_wait(c, r) == 0;
                c->sent += (size_t)r;
            } else {
                ssize_t r = send(c->fd, g.request + c->sent, g.request_len - c->sent, MSG_NOSIGNAL);
                if (r < 0 && errno == EAGAIN)
                    return conn_want(c, EPOLLOUT);
                if (r <= 0)
                    return false;
                c->sent += (size_t)r;
            }
            break;
        case CS_READ: {
            if (c->got == sizeof c->answer)
                return false; /* larger than any answer measured here */
            int r = SSL_read(c->ssl, c->answer + c->got, (int)(sizeof c->answer - c->got));
            if (r <= 0)
                return ssl_wait(c, r) == 0;
            c->got += (size_t)r;
            bool ok;
            if (answer_whole(c, &ok)) {
                if (!ok)
                    return false;
                g.done++;
                conn_close(c);
                return true;
            }
            break;
        }
        case CS_HELD:
        case CS_FREE: return true;
        }
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s rate HOST PORT PATH CONCURRENCY SECONDS\n"
            "       %s hold HOST PORT PATH|- COUNT [plain]\n",
            argv0, argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 6)
        usage(argv[0]);
    g.rate = strcmp(argv[1], "rate") == 0;
    if (g.rate ? argc != 7 : strcmp(argv[1], "hold") != 0 || argc > 7)
        usage(argv[0]);
    const char *host = argv[2], *path = argv[4];
    int port = atoi(argv[3]);
    long n = atol(argv[5]);
    double seconds = g.rate ? atof(argv[6]) : 0;
    bool plain = !g.rate && argc == 7;
    if (plain && strcmp(argv[6], "plain") != 0)
        usage(argv[0]);
    g.to.sin_family = AF_INET;
    g.to.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &g.to.sin_addr) != 1 || port <= 0 || n <= 0 ||
        (g.rate && (seconds <= 0 || strcmp(path, "-") == 0)))
        usage(argv[0]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (strcmp(path, "-") != 0) {
        int len = snprintf(g.request, sizeof g.request, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                           path, host, port);
        if (len <= 0 || (size_t)len >= sizeof g.request)
            usage(argv[0]);
        g.request_len = (size_t)len;
    }
    if (!plain) {
        g.ctx = SSL_CTX_new(TLS_client_method());
        if (!g.ctx) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        /* Every handshake a full one: no client session cache, no tickets. */
        SSL_CTX_set_session_cache_mode(g.ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(g.ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_verify(g.ctx, SSL_VERIFY_NONE, NULL); /* the bench's own certificate */
    }
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    conn_t *conns = calloc((size_t)n, sizeof *conns); /* rate: n in flight; hold: n held */
    if (g.ep < 0 || !conns) {
        fprintf(stderr, "tlsconns: out of memory or descriptors\n");
        return 1;
    }
    for (long i = 0; i < n; i++)
        conns[i].fd = -1;

    struct epoll_event events[MAX_EVENTS];
    if (g.rate) {
        double t0 = now_s(), end = t0 + seconds;
        for (long i = 0; i < n; i++)
            if (!conn_open(&conns[i])) { /* driven from its first EPOLLOUT */
                g.failed++;
                conn_close(&conns[i]);
            }
        for (double t = t0; t < end; t = now_s()) {
            int k = epoll_wait(g.ep, events, MAX_EVENTS, (int)((end - t) * 1e3) + 1);
            for (int i = 0; i < k; i++) {
                conn_t *c = events[i].data.ptr;
                if (!conn_step(c)) {
                    g.failed++;
                    conn_close(c);
                }
            }
            for (long i = 0; i < n; i++) /* refill the slots that finished */
                while (conns[i].state == CS_FREE && now_s() < end)
                    if (conn_open(&conns[i]))
                        break;
                    else {
                        g.failed++;
                        conn_close(&conns[i]);
                        if (g.failed > 1000)
                            goto out;
                    }
        }
    out:;
        double took = now_s() - t0;
        printf("done=%ld failed=%ld seconds=%.3f rate=%.1f\n", g.done, g.failed, took,
               g.done / took);
        return g.failed ? 1 : 0;
    }

    /* hold: HOLD_CONCURRENCY at a time until all are held. */
    long opened = 0, in_flight = 0;
    while (g.done < n) {
        while (in_flight < HOLD_CONCURRENCY && opened < n) {
            conn_t *c = &conns[opened++];
            if (!conn_open(c)) {
                fprintf(stderr, "tlsconns: connection %ld: %s\n", opened, strerror(errno));
                ERR_print_errors_fp(stderr);
                return 1;
            }
            in_flight++;
        }
        if (g.done == n)
            break;
        int k = epoll_wait(g.ep, events, MAX_EVENTS, 30000);
        if (k <= 0) {
            fprintf(stderr, "tlsconns: no progress in 30 s (%ld of %ld held)\n", g.done, n);
            return 1;
        }
        for (int i = 0; i < k; i++) {
            conn_t *c = events[i].data.ptr;
            if (c->state == CS_HELD)
                continue;
            if (!conn_step(c)) {
                fprintf(stderr, "tlsconns: a connection failed (%ld held)\n", g.done);
                ERR_print_errors_fp(stderr);
                return 1;
            }
            in_flight -= c->state == CS_HELD;
        }
    }
    printf("held %ld\n", n);
    fflush(stdout);
    char buf[256];
    while (read(STDIN_FILENO, buf, sizeof buf) > 0 || errno == EINTR)
        ;
    return 0;
}
