/*
 * waiters.c - the client side of the "park" benchmark: N long-poll watches
 * on one token, one PUT, and the time until the last watch has its answer.
 *
 * A Python client reading 10,000 sockets through selectors spends more time
 * than the server it measures; this one reads them with epoll and does
 * nothing else, so the figure is the server's.
 *
 * usage: disco-waiters HOST PORT COUNT TOKEN [TIMEOUT_S]
 *
 *   1. Opens COUNT connections to HOST:PORT (source addresses spread over
 *      127.0.0.1 .. 127.0.0.8, so that no one address runs out of ephemeral
 *      ports) and sends on each
 *        GET /v2/keys/_etcd/registry/TOKEN?recursive=true&wait=true
 *      then prints "sent COUNT" on stdout.
 *   2. Waits for a line on stdin: the caller has checked that the server
 *      holds all the watches (disco's /metrics, or a pause for etcd).
 *      Whatever arrives on the watches meanwhile is read (etcd sends its
 *      headers at once, disco nothing).
 *   3. Sends PUT /v2/keys/_etcd/registry/TOKEN/wake on a connection opened
 *      beforehand, taking the time just before the send, and reads every
 *      socket until each watch has its answer or TIMEOUT_S (default 60)
 *      passes. Prints one line:
 *        answered=K of=N last_ms=L first_ms=F put_ms=P put_status=S
 *      with times in milliseconds from the PUT; then waits for stdin to
 *      close before it closes the connections. Exits 0 when all N answered.
 *
 * A watch is answered when its event body has arrived whole: the status
 * line says 200, the bytes `"action"` have come (they are in the event JSON
 * and in no header), and after them the newline that ends etcd's JSON
 * (JSON strings escape newlines, so the first one ends the body). This holds
 * for disco's Content-Length answer and for etcd's chunked one, whose
 * headers come long before the body.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Loopback source addresses 127.0.0.1 .. 127.0.0.SOURCE_ADDRESSES. */
#define SOURCE_ADDRESSES 8
#define READ_BUF_BYTES (64 * 1024)
#define MAX_EVENTS 1024
#define DEFAULT_TIMEOUT_S 60

static const char action_mark[] = "\"action\"";
#define MARK_LEN (sizeof action_mark - 1)
static const char status_ok[] = "HTTP/1.1 200 ";
#define STATUS_LEN (sizeof status_ok - 1)

enum watch_state { WS_STATUS, WS_HEAD_AND_BODY, WS_BODY_END, WS_ANSWERED, WS_FAILED };

/* One watch connection, followed through its answer without buffering it. */
typedef struct watch {
    int fd;
    enum watch_state state;
    unsigned char seen; /* status bytes checked, or bytes of action_mark matched */
} watch_t;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/*
 * Advances a watch over newly read bytes. The mark is matched across reads one byte at a
 * time: its only self-overlap is the quote that starts and ends it, so on
 * a mismatch the match restarts at 1 if the byte is a quote, else at 0.
 */
static void watch_feed(watch_t *w, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        switch (w->state) {
        case WS_STATUS:
            if (ch != status_ok[w->seen]) {
                w->state = WS_FAILED;
                return;
            }
            if (++w->seen == STATUS_LEN) {
                w->state = WS_HEAD_AND_BODY;
                w->seen = 0;
            }
            break;
        case WS_HEAD_AND_BODY:
            if (ch == action_mark[w->seen])
                w->seen++;
            else
                w->seen = ch == '"';
            if (w->seen == MARK_LEN)
                w->state = WS_BODY_END;
            break;
        case WS_BODY_END:
            if (ch == '\n') {
                w->state = WS_ANSWERED;
                return;
            }
            break;
        case WS_ANSWERED:
        case WS_FAILED: return; /* later bytes (etcd's last chunk) do not matter */
        }
    }
}

/* A blocking TCP connection from 127.0.0.(1 + i % SOURCE_ADDRESSES). */
static int connect_from(const struct sockaddr_in *to, unsigned i)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    /* The port is chosen at connect(), per destination: many more than one
     * address's ephemeral range fit. */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in from = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(0x7f000001u + i % SOURCE_ADDRESSES)};
    if (bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        connect(fd, (const struct sockaddr *)to, sizeof *to) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static int epoll_add(int ep, int fd, void *ptr)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = ptr};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* Reads what a watch has and returns its state after. A closed or failed
 * socket leaves the epoll set. */
static enum watch_state watch_read(int ep, watch_t *w, char *buf)
{
    ssize_t n = recv(w->fd, buf, READ_BUF_BYTES, MSG_DONTWAIT);
    if (n > 0) {
        watch_feed(w, buf, (size_t)n);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        if (w->state != WS_ANSWERED)
            w->state = WS_FAILED;
        epoll_ctl(ep, EPOLL_CTL_DEL, w->fd, NULL);
    }
    return w->state;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: %s HOST PORT COUNT TOKEN [TIMEOUT_S]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *token = argv[4];
    int port = atoi(argv[2]);
    long count = atol(argv[3]);
    double timeout_ms = (argc == 6 ? atof(argv[5]) : DEFAULT_TIMEOUT_S) * 1e3;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1 || port <= 0 || count <= 0) {
        fprintf(stderr, "waiters: want an IPv4 host, a port and a positive count\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    char watch_req[512], put_req[512];
    int wl = snprintf(watch_req, sizeof watch_req,
                      "GET /v2/keys/_etcd/registry/%s?recursive=true&wait=true HTTP/1.1\r\n"
                      "Host: %s:%d\r\n\r\n",
                      token, host, port);
    static const char put_body[] = "value=m%3Dhttp%3A%2F%2F127.0.0.1%3A1";
    int pl = snprintf(put_req, sizeof put_req,
                      "PUT /v2/keys/_etcd/registry/%s/wake HTTP/1.1\r\n"
                      "Host: %s:%d\r\n"
                      "Content-Type: application/x-www-form-urlencoded\r\n"
                      "Content-Length: %zu\r\n\r\n%s",
                      token, host, port, sizeof put_body - 1, put_body);
    if (wl <= 0 || (size_t)wl >= sizeof watch_req || pl <= 0 || (size_t)pl >= sizeof put_req) {
        fprintf(stderr, "waiters: token too long\n");
        return 2;
    }

    watch_t *watches = calloc((size_t)count, sizeof *watches);
    char *buf = malloc(READ_BUF_BYTES);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!watches || !buf || ep < 0) {
        fprintf(stderr, "waiters: out of memory or descriptors\n");
        return 1;
    }
    for (long i = 0; i < count; i++) {
        watch_t *w = &watches[i];
        w->fd = connect_from(&to, (unsigned)i);
        if (w->fd < 0 || !send_all(w->fd, watch_req, (size_t)wl) || epoll_add(ep, w->fd, w) != 0) {
            fprintf(stderr, "waiters: watch %ld of %ld: %s\n", i + 1, count, strerror(errno));
            return 1;
        }
    }
    printf("sent %ld\n", count);
    fflush(stdout);

    /* Until the caller says go: read what comes early, and stdin. */
    static char stdin_tag;
    if (epoll_add(ep, STDIN_FILENO, &stdin_tag) != 0) {
        fprintf(stderr, "waiters: cannot watch stdin: %s\n", strerror(errno));
        return 1;
    }
    struct epoll_event events[MAX_EVENTS];
    for (bool go = false; !go;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == &stdin_tag)
                go = read(STDIN_FILENO, buf, READ_BUF_BYTES) >= 0 ||
                     errno != EINTR; /* a line or EOF */
            else
                watch_read(ep, events[i].data.ptr, buf);
        }
    }
    /* A watch that ended before the PUT (answered, closed, not 200) is not
     * waited for; it is reported below. */
    long early = 0;
    for (long i = 0; i < count; i++)
        early += watches[i].state == WS_ANSWERED || watches[i].state == WS_FAILED;
    epoll_ctl(ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);

    int put_fd = connect_from(&to, 0);
    if (put_fd < 0 || epoll_add(ep, put_fd, NULL) != 0) {
        fprintf(stderr, "waiters: PUT connection: %s\n", strerror(errno));
        return 1;
    }
    double t0 = now_ms();
    if (!send_all(put_fd, put_req, (size_t)pl)) {
        fprintf(stderr, "waiters: sending the PUT: %s\n", strerror(errno));
        return 1;
    }
    long answered = 0, failed = 0;
    double first_ms = -1, last_ms = -1, put_ms = -1;
    int put_status = 0;
    while (answered + failed + early < count) {
        double left = t0 + timeout_ms - now_ms();
        if (left <= 0)
            break;
        int n = epoll_wait(ep, events, MAX_EVENTS, (int)left + 1);
        for (int i = 0; i < n; i++) {
            watch_t *w = events[i].data.ptr;
            if (!w) { /* the PUT's own answer: its status, then ignored */
                ssize_t k = recv(put_fd, buf, READ_BUF_BYTES, MSG_DONTWAIT);
                if (put_ms < 0 && k > 12) {
                    put_ms = now_ms() - t0;
                    put_status = atoi(buf + 9);
                }
                if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
                    epoll_ctl(ep, EPOLL_CTL_DEL, put_fd, NULL);
            } else if (w->state < WS_ANSWERED) {
                enum watch_state st = watch_read(ep, w, buf);
                if (st == WS_ANSWERED) {
                    last_ms = now_ms() - t0;
                    if (answered++ == 0)
                        first_ms = last_ms;
                } else if (st == WS_FAILED) {
                    failed++;
                }
            } else {
                watch_read(ep, w, buf); /* etcd's last chunk, or a close */
            }
        }
    }
    printf("answered=%ld of=%ld last_ms=%.3f first_ms=%.3f put_ms=%.3f put_status=%d\n", answered,
           count, last_ms, first_ms, put_ms, put_status);
    fflush(stdout);
    /* The connections stay open until stdin closes, so that the caller can
     * look at the server before a wave of closes reaches it. */
    while (read(STDIN_FILENO, buf, READ_BUF_BYTES) > 0 || errno == EINTR)
        ;
    if (early)
        fprintf(stderr, "waiters: %ld watches ended before the PUT\n", early);
    if (failed)
        fprintf(stderr, "waiters: %ld watches closed or answered other than 200\n", failed);
    return answered == count ? 0 : 1;
}
