/*
 * server.c - the HTTP server as a whole: the listening socket and the
 * connection limit, signals, the loop's hooks (deadlines, the wall-clock
 * tick, end-of-turn work), graceful stop, and the test seam.
 *
 * With TLS (cfg.tls) the main listener's connections speak TLS, and a
 * second listener (cfg.plain_addr) may serve plain HTTP beside it.
 *
 * The model is in http.h; connections are in conn.c, HTTP/1.1 framing in
 * http1.c, request handles in request.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/server_internal.h"
#include "util/log.h"
#include "util/timeutil.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* New connections taken per loop turn, so a connect flood cannot starve
 * the connections already open (the listening socket stays readable). */
#define MAX_ACCEPTS_PER_TURN 256
/* Of a connection refused past the limit, request bytes read and dropped
 * before the 503, so that closing it does not reset the answer away. */
#define REJECT_DRAIN_BYTES (16 * 1024)
/* At most one "connection refused" log line per this long. */
#define REJECT_LOG_EVERY_MS (10 * 1000)
#define DEFAULT_ALLOWED_METHODS                                                                    \
    ((1ull << HTTP_GET) | (1ull << HTTP_HEAD) | (1ull << HTTP_PUT) | (1ull << HTTP_POST) |         \
     (1ull << HTTP_DELETE))

/* ---- accept ------------------------------------------------------------- */

/* One log line at most every REJECT_LOG_EVERY_MS for refused connections. */
static void note_rejected(http_server_t *s)
{
    s->rejected_since_log++;
    uint64_t now = loop_now_ms(s->loop);
    if (now - s->last_reject_log_ms >= REJECT_LOG_EVERY_MS) {
        log_warn("%zu connection(s) refused (503, or closed if TLS): %zu open, the limit",
                 s->rejected_since_log, s->n_conns);
        s->last_reject_log_ms = now;
        s->rejected_since_log = 0;
    }
}

/*
 * Past the connection limit: answers 503 at once and closes, so a client
 * (an etcd member retries 5xx with backoff) learns why instead of waiting
 * in the listen backlog. What the client already sent is read first, so
 * that closing does not reset the connection before the answer is read.
 */
static void reject_busy(http_server_t *s, int fd)
{
    for (size_t got = 0; got < REJECT_DRAIN_BYTES;) {
        ssize_t n = recv(fd, s->rbuf, READ_CHUNK_BYTES, MSG_DONTWAIT);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf_t body = BUF_INIT, out = BUF_INIT;
    http_reply_t r;
    http1_render_error(s, 503, "too many open connections; retry later", &body, &r);
    format_reply(&out, &r, false, true, false);
    if (!buf_failed(&out) && send(fd, out.data, out.len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        (void)0; /* best effort: the client may be gone already */
    buf_free(&out);
    buf_free(&body);
    shutdown(fd, SHUT_WR);
    close(fd);
    note_rejected(s);
}

/*
 * Takes a connection, or answers it 503 past the limit. A TLS client
 * could not read a plain 503: past the limit its socket is just closed.
 */
static void take_connection(http_server_t *s, int fd, const struct sockaddr_storage *sa,
                            struct tls_ctx *tls)
{
    if (s->n_conns >= s->cfg.max_conns || s->stopping) {
        if (!tls) {
            reject_busy(s, fd);
            return;
        }
        close(fd);
        note_rejected(s);
        return;
    }
    if (conn_add(s, fd, sa, tls) != 0)
        log_warn("cannot take a connection: out of memory");
}

/* Accepts what waits on the listener `lio`; its connections speak TLS
 * with `tls` (NULL: plain). */
static void accept_all_on(http_server_t *s, loop_io_t *lio, struct tls_ctx *tls)
{
    for (int i = 0; i < MAX_ACCEPTS_PER_TURN; i++) {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(lio->fd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && s->spare_fd >= 0) {
                /* Out of descriptors: free the spare one to take the
                 * connection off the backlog and answer it 503, rather
                 * than let the listening socket wake the loop forever. */
                close(s->spare_fd);
                fd = accept4(lio->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd >= 0 && !tls)
                    reject_busy(s, fd);
                else if (fd >= 0)
                    close(fd);
                s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                return;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warn("accept: %s", strerror(errno));
            return;
        }
        take_connection(s, fd, &sa, tls);
    }
}

/* The main listener: TLS when configured. */
static void accept_all(loop_io_t *io, uint32_t events)
{
    (void)events;
    http_server_t *s = (http_server_t *)((char *)io - offsetof(http_server_t, listen_io));
    accept_all_on(s, io, s->cfg.tls);
}

/* The plaintext listener beside TLS (--plain-addr). */
static void accept_all_plain(loop_io_t *io, uint32_t events)
{
    (void)events;
    http_server_t *s = (http_server_t *)((char *)io - offsetof(http_server_t, plain_listen_io));
    accept_all_on(s, io, NULL);
}

/* ---- stop and the loop's hooks ------------------------------------------ */

static void stop_listener(http_server_t *s, loop_io_t *lio)
{
    int fd = lio->fd;
    if (fd < 0)
        return;
    loop_io_stop(s->loop, lio);
    close(fd);
}

static void stop_listening(http_server_t *s)
{
    stop_listener(s, &s->listen_io);
    stop_listener(s, &s->plain_listen_io);
}

static void begin_shutdown(http_server_t *s)
{
    s->stopping = true;
    s->stop_deadline_ms = loop_now_ms(s->loop) + HTTP_SHUTDOWN_GRACE_MS;
    stop_listening(s);
    for (http_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->h2) {
            h2_shutdown(c); /* may close c (unlinked, not freed) */
        } else if (conn_is_parked(c)) {
            c->close_after_write = true;
            req_end_parked(c, HTTP_PARK_SHUTDOWN); /* may close c (unlinked, not freed) */
        } else if (!c->in_request && c->req == REQ_NONE && c->out.len == c->out_off) {
            conn_close(c);
        } else {
            c->close_after_write = true;
        }
    }
}

static void on_signal(void *ctx, int signo)
{
    http_server_t *s = ctx;
    if (signo == SIGHUP) {
        if (s->cfg.on_reload) {
            log_info("received SIGHUP: reloading");
            s->cfg.on_reload(s->cfg.reload_ctx);
        } else {
            log_info("received SIGHUP: nothing to reload; still serving");
        }
        return;
    }
    if (!s->stopping) {
        log_info("received %s; stopping: no new connections, parked waits answered, %zu "
                 "connections open",
                 strsignal(signo), s->n_conns);
        if (s->cfg.on_stop)
            s->cfg.on_stop(s->cfg.stop_ctx);
        begin_shutdown(s);
    }
}

/* The loop's timer source: connection deadlines, then the owner's tick
 * (wall clock: TTLs), whose wish is turned into a monotonic instant. */
static uint64_t on_timers(void *ctx, uint64_t now_ms)
{
    http_server_t *s = ctx;
    uint64_t next = 0;
    if (s->cfg.tick) {
        int64_t now_wall = time_wall_ns();
        int64_t wake_ns = s->cfg.tick(s->cfg.tick_ctx, now_wall);
        if (wake_ns) {
            int64_t d_ms = (wake_ns - now_wall) / NS_PER_MS + 1;
            next = now_ms + (uint64_t)(d_ms < 0 ? 0 : d_ms);
        }
    }
    uint64_t conn_next = conn_expire_timers(s, now_ms);
    if (conn_next && (next == 0 || conn_next < next))
        next = conn_next;
    return next;
}

/* End of every turn: pipelined bytes that waited, then closed connections
 * freed, outside every callback's stack. */
static void on_turn_end(void *ctx)
{
    http_server_t *s = ctx;
    conn_drain_resumes(s);
    conn_free_closed(s);
}

static void on_notify(loop_io_t *io, uint32_t events)
{
    (void)events;
    http_server_t *s = (http_server_t *)((char *)io - offsetof(http_server_t, notify_io));
    s->cfg.on_notify(s->cfg.tick_ctx);
}

int http_server_run(http_server_t *s)
{
    for (;;) {
        int rc = loop_run_once(s->loop, -1);
        if (rc < 0)
            return rc;
        if (s->stopping && (s->n_conns == 0 || loop_now_ms(s->loop) >= s->stop_deadline_ms))
            break;
    }
    while (s->conns)
        conn_close(s->conns);
    on_turn_end(s);
    return 0;
}

int http_server_run_once(http_server_t *s, int timeout_ms)
{
    return loop_run_once(s->loop, timeout_ms < 0 ? 0 : timeout_ms);
}

int http_server_adopt(http_server_t *s, int fd)
{
    return http_server_adopt_tls(s, fd, NULL);
}

int http_server_adopt_tls(http_server_t *s, int fd, struct tls_ctx *tls)
{
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    memset(&sa, 0, sizeof sa);
    if (getpeername(fd, (struct sockaddr *)&sa, &sl) != 0)
        sa.ss_family = AF_UNSPEC;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    loop_update_clock(s->loop); /* called between loop turns */
    if (s->n_conns >= s->cfg.max_conns || s->stopping) {
        take_connection(s, fd, &sa, tls); /* refuses it */
        return 0;
    }
    return conn_add(s, fd, &sa, tls);
}

struct loop *http_server_loop(http_server_t *s)
{
    return s->loop;
}

/* ---- setup -------------------------------------------------------------- */

static int split_addr(const char *addr, char *host, size_t hlen, char *port, size_t plen)
{
    const char *colon;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':')
            return -1;
        snprintf(host, hlen, "%.*s", (int)(end - addr - 1), addr + 1);
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return -1;
        snprintf(host, hlen, "%.*s", (int)(colon - addr), addr);
    }
    snprintf(port, plen, "%s", colon + 1);
    return port[0] ? 0 : -1;
}

static int listen_on(const char *addr, char *bound, size_t blen, char *err)
{
    char host[256], port[32];
    if (split_addr(addr, host, sizeof host, port, sizeof port) != 0) {
        snprintf(err, 256, "bad address \"%s\": want host:port, :port or [v6]:port", addr);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, 256, "cannot resolve \"%s\": %s", addr, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    /* With no host, try the IPv6 wildcard first: it takes IPv4 too. */
    for (int pass = host[0] ? 1 : 0; pass < 2 && fd < 0; pass++) {
        for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
            if (pass == 0 && ai->ai_family != AF_INET6)
                continue;
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0)
                continue;
            int one = 1, zero = 0;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (ai->ai_family == AF_INET6 && !host[0])
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
            if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0)
                break;
            snprintf(err, 256, "cannot listen on %s: %s", addr, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (!err[0])
            snprintf(err, 256, "cannot listen on %s", addr);
        return -1;
    }
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    char ip[INET6_ADDRSTRLEN];
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    format_peer(&sa, bound, blen, ip, sizeof ip);
    return fd;
}

/* "Allow: DELETE, GET, ...\r\n" from the allowed-methods mask. */
static void format_allow_header(uint64_t methods, char *out, size_t len)
{
    size_t o = (size_t)snprintf(out, len, "Allow:");
    const char *sep = " ";
    for (int m = 0; m < 64 && o < len; m++) {
        if (!(methods & (1ull << m)))
            continue;
        o += (size_t)snprintf(out + o, len - o, "%s%s", sep, http_method_str((enum http_method)m));
        sep = ", ";
    }
    if (o < len)
        snprintf(out + o, len - o, "\r\n");
}

http_server_t *http_server_new(const http_server_config_t *cfg, char *err)
{
    err[0] = '\0';
    http_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->listen_io.fd = s->notify_io.fd = s->plain_listen_io.fd = s->spare_fd = -1;
    s->free_slot = REQ_NONE;
    http_server_config_t *c = &s->cfg;
    if (!c->max_header_bytes)
        c->max_header_bytes = HTTP_DEFAULT_MAX_HEADER_BYTES;
    if (c->max_header_bytes > HTTP_MAX_HEADER_BYTES_CEILING)
        c->max_header_bytes = HTTP_MAX_HEADER_BYTES_CEILING;
    if (!c->max_body_bytes)
        c->max_body_bytes = HTTP_DEFAULT_MAX_BODY_BYTES;
    if (!c->max_conns)
        c->max_conns = HTTP_DEFAULT_MAX_CONNS;
    if (!c->idle_timeout_ms)
        c->idle_timeout_ms = HTTP_DEFAULT_IDLE_TIMEOUT_MS;
    if (!c->header_timeout_ms)
        c->header_timeout_ms = HTTP_DEFAULT_HEADER_TIMEOUT_MS;
    if (!c->body_timeout_ms)
        c->body_timeout_ms = HTTP_DEFAULT_BODY_TIMEOUT_MS;
    if (!c->allowed_methods)
        c->allowed_methods = DEFAULT_ALLOWED_METHODS;
    format_allow_header(c->allowed_methods, s->allow_header, sizeof s->allow_header);
    s->timers[TL_IDLE].duration_ms = c->idle_timeout_ms;
    s->timers[TL_HEADER].duration_ms = c->header_timeout_ms;
    s->timers[TL_BODY].duration_ms = c->body_timeout_ms;
    s->timers[TL_WRITE].duration_ms = HTTP_WRITE_TIMEOUT_MS;
    s->timers[TL_PARKED].duration_ms = c->wait_timeout_ms;
    s->timers[TL_LINGER].duration_ms = LINGER_MS;
    http1_init_settings(&s->settings);
    s->rbuf = malloc(READ_CHUNK_BYTES);
    s->loop = loop_new();
    if (!s->rbuf || !s->loop || loop_add_timer(s->loop, on_timers, s) != 0 ||
        loop_add_turn_end(s->loop, on_turn_end, s) != 0) {
        snprintf(err, 256, "cannot set up the event loop: %s", strerror(errno));
        http_server_free(s);
        return NULL;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!cfg->addr) {
        snprintf(s->address, sizeof s->address, "none");
    } else {
        int fd = listen_on(cfg->addr, s->address, sizeof s->address, err);
        if (fd < 0) {
            http_server_free(s);
            return NULL;
        }
        int rc = loop_io_start(s->loop, &s->listen_io, fd, EPOLLIN, accept_all);
        if (rc != 0)
            close(fd);
        if (rc == 0 && cfg->tls && cfg->plain_addr) {
            fd = listen_on(cfg->plain_addr, s->plain_address, sizeof s->plain_address, err);
            if (fd < 0) {
                http_server_free(s);
                return NULL;
            }
            rc = loop_io_start(s->loop, &s->plain_listen_io, fd, EPOLLIN, accept_all_plain);
            if (rc != 0)
                close(fd);
        }
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        static const int signals[] = {SIGTERM, SIGINT, SIGHUP};
        if (rc == 0)
            rc = loop_watch_signals(s->loop, signals, sizeof signals / sizeof signals[0], on_signal,
                                    s);
        if (rc != 0) {
            snprintf(err, 256, "cannot set up the event loop: %s", strerror(-rc));
            http_server_free(s);
            return NULL;
        }
    }
    if (cfg->notify_fd >= 0 && cfg->on_notify) {
        int rc = loop_io_start(s->loop, &s->notify_io, cfg->notify_fd, EPOLLIN, on_notify);
        if (rc != 0) {
            snprintf(err, 256, "cannot watch the store: %s", strerror(-rc));
            http_server_free(s);
            return NULL;
        }
    }
    return s;
}

const char *http_server_address(const http_server_t *s)
{
    return s->address;
}

const char *http_server_plain_address(const http_server_t *s)
{
    return s->plain_listen_io.fd >= 0 ? s->plain_address : NULL;
}

size_t http_server_connection_count(const http_server_t *s)
{
    return s->n_conns;
}

void http_server_free(http_server_t *s)
{
    if (!s)
        return;
    while (s->conns)
        conn_close(s->conns);
    conn_drain_resumes(s);
    conn_free_closed(s);
    if (s->loop) {
        stop_listening(s);
        loop_io_stop(s->loop, &s->notify_io); /* the store owns that descriptor */
    }
    if (s->spare_fd >= 0)
        close(s->spare_fd);
    loop_free(s->loop);
    req_slots_free_all(s);
    free(s->rbuf);
    free(s);
}
