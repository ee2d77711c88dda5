/*
 * http.c - the HTTP/1.1 server; see http.h for the model.
 *
 * Life of a connection:
 *   accept -> IDLE --first byte--> READING --complete--> handler
 *     handler replied: answer queued; back to IDLE (or READING the next
 *                      pipelined request already buffered)
 *     handler parked:  PARKED until http_reply, timeout, shutdown or close;
 *                      bytes that arrive meanwhile wait in `pending`
 *   an answer with "Connection: close" (the client's wish, or a refusal):
 *                    written, FIN sent, then LINGERING: input dropped until
 *                    the client closes too (or LINGER_MS), so that no reset
 *                    destroys the answer in flight
 *   any state: peer close or error -> closed; freed at the end of the loop
 *   turn, so that nothing up the stack or later in an epoll batch touches
 *   freed memory.
 * Reading one request at a time keeps answers in order without a queue.
 *
 * Bytes are read into one loop-wide buffer and fed to the parser at once;
 * only the URL, the few headers disco uses and the body are copied, so an
 * idle or parked connection owns no read buffer.
 */
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"
#include "util/timeutil.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

#define READ_CHUNK_BYTES (64 * 1024)
/* Pipelined bytes held while a request is parked or answers back up. */
#define MAX_PENDING_BYTES (64 * 1024)
/* Stop taking pipelined requests while this much output is unsent. */
#define MAX_UNSENT_BYTES (1024 * 1024)
#define MAX_EVENTS 256
/* New connections taken per loop turn, so a connect flood cannot starve
 * the connections already open (the listening socket stays readable). */
#define MAX_ACCEPTS_PER_TURN 256
/* Of a connection refused past the limit, request bytes read and dropped
 * before the 503, so that closing it does not reset the answer away. */
#define REJECT_DRAIN_BYTES (16 * 1024)
/* After a last answer and our FIN, how long (and how many bytes) the
 * client's remaining input is read and dropped before the socket closes.
 * Closing with unread input would send a reset, which can destroy the
 * answer before the client reads it (a 413 while the body still flows). */
#define LINGER_MS (2 * 1000)
#define LINGER_MAX_BYTES (1024 * 1024)
/* At most one "connection refused" log line per this long. */
#define REJECT_LOG_EVERY_MS (10 * 1000)
#define DEFAULT_ALLOWED_METHODS                                                                    \
    ((1ull << HTTP_GET) | (1ull << HTTP_HEAD) | (1ull << HTTP_PUT) | (1ull << HTTP_POST) |         \
     (1ull << HTTP_DELETE))

enum timer_list {
    TL_NONE = -1,
    TL_IDLE,
    TL_HEADER,
    TL_BODY,
    TL_WRITE,
    TL_PARKED,
    TL_LINGER,
    TL_COUNT
};

/* Which header a value belongs to, while the parser streams it. */
enum hdr_slot { HDR_OTHER, HDR_CONTENT_TYPE, HDR_HOST, HDR_EXPECT, HDR_TRANSFER_ENCODING };

struct http_conn {
    int fd;
    http_server_t *srv;
    http_parser parser;
    /* timers */
    enum timer_list tl;
    uint64_t deadline_ms;
    http_conn_t *tnext, *tprev;
    /* the request being read */
    buf_t url, body, content_type, host, expect, transfer_encoding;
    char hname[32]; /* the current header name, lower-cased, if short */
    size_t hname_len;
    enum hdr_slot hslot;
    bool in_value;
    unsigned host_headers, te_headers;
    size_t trailer_bytes;
    /* The bytes being fed to the parser start here; `last_nonblank` is the
     * last byte before them that is not a space or tab (obs-fold check). */
    const char *feed_base;
    char last_nonblank;
    int parse_error_status;        /* decided in a parser callback */
    const char *parse_error_cause; /* a static string, or NULL */
    bool message_done;
    bool in_request;   /* bytes of a request have arrived */
    bool headers_done; /* ... and all of its headers */
    bool keep_alive;
    bool is_head;
    bool replied;
    /* parking */
    bool parked;
    http_park_fn park_fn;
    void *park_ctx;
    /* bytes received but not yet parsed */
    buf_t pending;
    /* output */
    buf_t out;
    size_t out_off;
    bool close_after_write;
    bool lingering; /* answered, FIN sent: input is dropped until EOF */
    size_t lingered_bytes;
    bool want_write; /* EPOLLOUT armed */
    bool read_paused;
    /* queued to resume parsing `pending` on the next loop turn */
    bool resume_queued;
    http_conn_t *resume_next;
    /* closed, freed at the end of the loop turn */
    http_conn_t *closed_next;
    /* all connections */
    http_conn_t *next, *prev;
    char peer[64];
    char peer_addr[INET6_ADDRSTRLEN];
};

struct http_server {
    http_server_config_t cfg;
    int epfd, listen_fd, signal_fd;
    int spare_fd; /* closed to make room for accept() when out of descriptors */
    char address[80];
    char *rbuf;
    char allow_header[200]; /* "Allow: GET, ...\r\n" */
    http_parser_settings settings;
    http_conn_t *conns;
    size_t n_conns;
    struct {
        http_conn_t *head, *tail;
        uint64_t duration_ms;
    } timers[TL_COUNT];
    http_conn_t *resume_head;
    http_conn_t *closed_head;
    /* The monotonic clock as of the current loop turn, read once per turn
     * rather than on every timer change (three per request): deadlines run
     * from it, at most one turn's work early. */
    uint64_t now_ms;
    uint64_t last_reject_log_ms;
    size_t rejected_since_log;
    bool stopping;
    uint64_t stop_deadline_ms;
};

/* epoll data tags for the non-connection fds */
static char listen_tag, signal_tag, notify_tag;

static void conn_close(http_conn_t *c);
static void conn_feed(http_conn_t *c, const char *data, size_t len);
static void conn_update_timer(http_conn_t *c);

/* ---- small helpers ---------------------------------------------------- */

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static int epoll_set(http_server_t *srv, int op, int fd, uint32_t events, void *ptr)
{
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    return epoll_ctl(srv->epfd, op, fd, &ev);
}

static void conn_update_epoll(http_conn_t *c)
{
    uint32_t ev = EPOLLRDHUP;
    if (!c->read_paused)
        ev |= EPOLLIN;
    if (c->want_write)
        ev |= EPOLLOUT;
    epoll_set(c->srv, EPOLL_CTL_MOD, c->fd, ev, c);
}

/* ---- timers ------------------------------------------------------------- */

static void timer_unlink(http_conn_t *c)
{
    if (c->tl == TL_NONE)
        return;
    http_server_t *s = c->srv;
    if (c->tprev)
        c->tprev->tnext = c->tnext;
    else
        s->timers[c->tl].head = c->tnext;
    if (c->tnext)
        c->tnext->tprev = c->tprev;
    else
        s->timers[c->tl].tail = c->tprev;
    c->tnext = c->tprev = NULL;
    c->tl = TL_NONE;
}

static void timer_link(http_conn_t *c, enum timer_list tl)
{
    http_server_t *s = c->srv;
    c->tl = tl;
    c->deadline_ms = s->now_ms + s->timers[tl].duration_ms;
    c->tprev = s->timers[tl].tail;
    c->tnext = NULL;
    if (c->tprev)
        c->tprev->tnext = c;
    else
        s->timers[tl].head = c;
    s->timers[tl].tail = c;
}

/* Puts the connection on the list its state calls for. */
static void conn_update_timer(http_conn_t *c)
{
    enum timer_list want;
    if (c->lingering)
        want = TL_LINGER;
    else if (c->parked)
        want = TL_PARKED;
    else if (c->out.len > c->out_off)
        want = TL_WRITE;
    else if (c->in_request && c->headers_done)
        want = TL_BODY;
    else if (c->in_request || c->pending.len)
        want = TL_HEADER;
    else
        want = TL_IDLE;
    if (want == c->tl)
        return; /* the deadline runs from when the state began */
    timer_unlink(c);
    timer_link(c, want);
}

/* ---- output ------------------------------------------------------------- */

/* Writes what it can now; arms EPOLLOUT for the rest. */
static void conn_flush(http_conn_t *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_write) {
                c->want_write = true;
                conn_update_epoll(c);
            }
            conn_update_timer(c);
            return;
        } else {
            conn_close(c);
            return;
        }
    }
    buf_reset(&c->out);
    c->out_off = 0;
    if (c->out.cap > 16 * 1024)
        buf_free(&c->out); /* do not keep a big answer's memory per socket */
    if (c->want_write) {
        c->want_write = false;
        conn_update_epoll(c);
    }
    if (c->close_after_write) {
        /* FIN now; close once the client has closed too (or lingered) */
        shutdown(c->fd, SHUT_WR);
        c->lingering = true;
        c->close_after_write = false;
        c->parked = false;
        if (c->read_paused) {
            c->read_paused = false;
            conn_update_epoll(c);
        }
        buf_free(&c->pending);
        conn_update_timer(c);
        return;
    }
    conn_update_timer(c);
}

/* The status line, headers and (unless `is_head`) body of an answer. */
static void format_reply(buf_t *o, const http_reply_t *r, bool is_head, bool close,
                         bool http10_keep_alive)
{
    /* Pieces, not printf: this runs for every answer. */
    buf_puts(o, "HTTP/1.1 ");
    buf_put_u64(o, (uint64_t)(unsigned)r->status);
    buf_putc(o, ' ');
    buf_puts(o, http_status_text(r->status));
    buf_puts(o, "\r\n");
    if (r->content_type) {
        buf_puts(o, "Content-Type: ");
        buf_puts(o, r->content_type);
        buf_puts(o, "\r\n");
    }
    if (r->has_etcd_index) {
        buf_puts(o, "X-Etcd-Index: ");
        buf_put_u64(o, r->etcd_index);
        buf_puts(o, "\r\n");
    }
    if (r->extra_headers)
        buf_puts(o, r->extra_headers);
    buf_puts(o, "Content-Length: ");
    buf_put_u64(o, r->body_len);
    buf_puts(o, "\r\n");
    if (close)
        buf_puts(o, "Connection: close\r\n");
    else if (http10_keep_alive)
        buf_puts(o, "Connection: keep-alive\r\n");
    buf_puts(o, "\r\n");
    if (!is_head)
        buf_append(o, r->body, r->body_len);
}

static bool is_http10(const http_conn_t *c)
{
    return c->parser.http_major == 1 && c->parser.http_minor == 0;
}

static void append_reply(http_conn_t *c, const http_reply_t *r)
{
    format_reply(&c->out, r, c->is_head, c->close_after_write, is_http10(c));
}

/*
 * Writes `data` now if nothing is queued before it, so that bytes shared
 * by many connections are not copied for each; what the socket does not
 * take at once is queued in `out` like any answer. conn_flush() then does
 * the bookkeeping (EPOLLOUT, timers, close after write), and meets again
 * any error the direct send met.
 */
static void conn_write_now(http_conn_t *c, const char *data, size_t len)
{
    size_t sent = 0;
    if (c->out.len == c->out_off) {
        ssize_t n;
        do
            n = send(c->fd, data, len, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n > 0)
            sent = (size_t)n;
    }
    if (sent < len)
        buf_append(&c->out, data + sent, len - sent);
    if (buf_failed(&c->out)) {
        log_warn("out of memory writing an answer to %s; closing", c->peer);
        conn_close(c);
        return;
    }
    conn_flush(c);
}

/* Queues the parsing of pipelined bytes that waited (`pending`) for the
 * next loop turn. Without such bytes there is nothing to resume: a woken
 * parked request costs no second visit. */
static void schedule_resume(http_conn_t *c)
{
    if (c->resume_queued || c->fd < 0 || c->pending.len == 0)
        return;
    c->resume_queued = true;
    c->resume_next = c->srv->resume_head;
    c->srv->resume_head = c;
}

/* What every answer does first. Returns whether the request was parked,
 * or -1 when it must not be answered (already answered, or closed). */
static int reply_begin(http_conn_t *c)
{
    if (c->replied || c->fd < 0)
        return -1;
    c->replied = true;
    bool was_parked = c->parked;
    c->parked = false;
    c->park_fn = NULL;
    if (!c->keep_alive || c->srv->stopping)
        c->close_after_write = true;
    return was_parked;
}

/* What every answer does once it is queued in `out`. */
static void reply_end(http_conn_t *c, bool was_parked)
{
    if (buf_failed(&c->out)) {
        log_warn("out of memory writing an answer to %s; closing", c->peer);
        conn_close(c);
        return;
    }
    if (was_parked) {
        /* Answered from another connection's callback: write now, and parse
         * any pipelined bytes on the next loop turn, outside this stack. */
        schedule_resume(c);
        conn_flush(c);
    }
}

void http_reply(http_conn_t *c, const http_reply_t *r)
{
    int was_parked = reply_begin(c);
    if (was_parked < 0)
        return;
    append_reply(c, r);
    reply_end(c, was_parked);
}

struct http_prepared {
    unsigned refs;
    http_reply_t reply; /* body and extra_headers point into `bytes` */
    size_t len;         /* the formatted answer, body last: bytes[0..len) */
    char bytes[];       /* the answer, NUL, the extra headers, NUL */
};

http_prepared_t *http_prepare(const http_reply_t *r)
{
    buf_t answer = BUF_INIT;
    format_reply(&answer, r, false, false, false);
    size_t hlen = r->extra_headers ? strlen(r->extra_headers) : 0;
    http_prepared_t *p = NULL;
    if (!buf_failed(&answer))
        p = malloc(sizeof *p + answer.len + 1 + hlen + 1);
    if (p) {
        p->refs = 1;
        p->reply = *r;
        p->len = answer.len;
        memcpy(p->bytes, answer.data, answer.len + 1);
        p->reply.body = p->bytes + answer.len - r->body_len; /* the answer ends with it */
        if (r->extra_headers) {
            char *headers = p->bytes + answer.len + 1;
            memcpy(headers, r->extra_headers, hlen + 1);
            p->reply.extra_headers = headers;
        }
    }
    buf_free(&answer);
    return p;
}

http_prepared_t *http_prepared_ref(http_prepared_t *p)
{
    p->refs++;
    return p;
}

void http_prepared_unref(http_prepared_t *p)
{
    if (p && --p->refs == 0)
        free(p);
}

const http_reply_t *http_prepared_reply(const http_prepared_t *p)
{
    return &p->reply;
}

void http_reply_prepared(http_conn_t *c, const http_prepared_t *p)
{
    int was_parked = reply_begin(c);
    if (was_parked < 0)
        return;
    if (c->is_head || c->close_after_write || is_http10(c)) {
        append_reply(c, &p->reply); /* not the shape it was formatted for */
        reply_end(c, was_parked);
    } else if (was_parked) {
        schedule_resume(c);
        conn_write_now(c, p->bytes, p->len);
    } else {
        buf_append(&c->out, p->bytes, p->len); /* written with what follows */
        reply_end(c, false);
    }
}

void http_reply_simple(http_conn_t *c, int status, const char *content_type, const char *body,
                       size_t body_len)
{
    http_reply_t r = {
        .status = status, .content_type = content_type, .body = body, .body_len = body_len};
    http_reply(c, &r);
}

void http_park(http_conn_t *c, http_park_fn on_end, void *ctx)
{
    timer_unlink(c); /* a fresh deadline */
    c->parked = true;
    c->park_fn = on_end;
    c->park_ctx = ctx;
    conn_update_timer(c);
}

/* ---- parser callbacks ------------------------------------------------- */

/* Refuses the request from inside a parser callback; conn_feed answers. */
static int refuse(http_conn_t *c, int status, const char *cause)
{
    c->parse_error_status = status;
    c->parse_error_cause = cause;
    return -1;
}

/* Whether the head, up to `end` in the bytes being fed, is over the limit.
 * p->nread counts the head bytes of earlier feeds. */
static bool head_too_long(http_conn_t *c, const char *end)
{
    return (size_t)c->parser.nread + (size_t)(end - c->feed_base) > c->srv->cfg.max_header_bytes;
}

static int on_message_begin(http_parser *p)
{
    http_conn_t *c = p->data;
    c->in_request = true;
    c->headers_done = false;
    c->hname_len = 0;
    c->in_value = false;
    c->hslot = HDR_OTHER;
    c->host_headers = c->te_headers = 0;
    c->trailer_bytes = 0;
    /* Each request's head gets the whole header timeout from its own first
     * byte, also when it follows another on a kept-alive connection. */
    if (c->tl == TL_IDLE || c->tl == TL_HEADER || c->tl == TL_BODY)
        timer_unlink(c);
    conn_update_timer(c);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    if (head_too_long(c, at + len))
        return refuse(c, 431, NULL);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)at[i];
        if (ch <= 0x20 || ch == 0x7f)
            return refuse(c, 400, "a control character in the request target");
    }
    buf_append(&c->url, at, len);
    return 0;
}

/* Trailer fields after a chunked body: bounded like a head, then dropped
 * (a trailer must not change what the headers said). */
static int on_trailer_bytes(http_conn_t *c, size_t len)
{
    c->trailer_bytes += len;
    return c->trailer_bytes > c->srv->cfg.max_header_bytes ? refuse(c, 431, NULL) : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    if (c->headers_done)
        return on_trailer_bytes(c, len);
    if (head_too_long(c, at + len))
        return refuse(c, 431, NULL);
    if (c->in_value) { /* a new header starts */
        c->in_value = false;
        c->hname_len = 0;
    }
    for (size_t i = 0; i < len; i++) {
        /* "Content-Length : 5" is a smuggling shape (RFC 9112 5.1) */
        if (at[i] == ' ' || at[i] == '\t')
            return refuse(c, 400, "whitespace in a header name");
        if (c->hname_len < sizeof c->hname)
            c->hname[c->hname_len] = (char)((at[i] >= 'A' && at[i] <= 'Z') ? at[i] + 32 : at[i]);
        c->hname_len++;
    }
    return 0;
}

static enum hdr_slot slot_of(const http_conn_t *c)
{
    static const struct {
        const char *name;
        enum hdr_slot slot;
    } known[] = {{"content-type", HDR_CONTENT_TYPE},
                 {"host", HDR_HOST},
                 {"expect", HDR_EXPECT},
                 {"transfer-encoding", HDR_TRANSFER_ENCODING}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (c->hname_len == strlen(known[i].name) &&
            memcmp(c->hname, known[i].name, c->hname_len) == 0)
            return known[i].slot;
    return HDR_OTHER;
}

/* Whether a header value piece starts a line (after blanks): obs-fold,
 * which RFC 9112 5.2 lets a server refuse and which proxies read
 * differently. A value piece that merely continues at the start of a new
 * read follows a non-blank byte of the previous read instead. */
static bool is_folded(const http_conn_t *c, const char *at)
{
    const char *q = at;
    while (q > c->feed_base && (q[-1] == ' ' || q[-1] == '\t'))
        q--;
    char before = q > c->feed_base ? q[-1] : c->last_nonblank;
    return before == '\n';
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    if (c->headers_done)
        return on_trailer_bytes(c, len);
    if (head_too_long(c, at + len))
        return refuse(c, 431, NULL);
    if (len && is_folded(c, at))
        return refuse(c, 400, "a header folded over several lines (obs-fold)");
    if (!c->in_value) {
        c->in_value = true;
        c->hslot = slot_of(c);
        if (c->hslot == HDR_HOST)
            c->host_headers++;
        else if (c->hslot == HDR_TRANSFER_ENCODING)
            c->te_headers++;
    }
    buf_t *dst = c->hslot == HDR_CONTENT_TYPE        ? &c->content_type
                 : c->hslot == HDR_HOST              ? &c->host
                 : c->hslot == HDR_EXPECT            ? &c->expect
                 : c->hslot == HDR_TRANSFER_ENCODING ? &c->transfer_encoding
                                                     : NULL;
    if (dst)
        buf_append(dst, at, len);
    return 0;
}

/* "chunked", the only transfer coding a request may use here, once. */
static bool transfer_encoding_ok(http_conn_t *c)
{
    if (c->te_headers == 0)
        return true;
    if (c->te_headers > 1)
        return false;
    const char *v = buf_cstr(&c->transfer_encoding);
    size_t n = c->transfer_encoding.len;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return n == 7 && strncasecmp(v, "chunked", 7) == 0;
}

static int on_headers_complete(http_parser *p)
{
    http_conn_t *c = p->data;
    http_server_t *s = c->srv;
    c->headers_done = true;
    if (p->http_major != 1)
        return refuse(c, 505, "only HTTP/1.0 and HTTP/1.1 are spoken here");
    if (p->method >= 64 || !(s->cfg.allowed_methods & (1ull << p->method)))
        return refuse(c, 405, "method not allowed");
    if (c->host_headers > 1)
        return refuse(c, 400, "more than one Host header");
    if (c->host_headers == 0 && p->http_minor >= 1)
        return refuse(c, 400, "an HTTP/1.1 request without a Host header");
    if (!transfer_encoding_ok(c))
        return refuse(c, 501, "only \"Transfer-Encoding: chunked\" is supported");
    if (buf_failed(&c->url) || buf_failed(&c->content_type) || buf_failed(&c->host) ||
        buf_failed(&c->expect) || buf_failed(&c->transfer_encoding))
        return refuse(c, 500, "out of memory");
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > s->cfg.max_body_bytes)
        return refuse(c, 413, NULL);
    if (c->expect.len && strcasecmp(buf_cstr(&c->expect), "100-continue") == 0)
        buf_puts(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
    c->is_head = p->method == HTTP_HEAD;
    conn_update_timer(c); /* now the body timeout */
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    if (c->body.len + len > c->srv->cfg.max_body_bytes)
        return refuse(c, 413, NULL);
    buf_append(&c->body, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    http_conn_t *c = p->data;
    c->message_done = true;
    c->keep_alive = http_should_keep_alive(p) != 0;
    http_parser_pause(p, 1); /* handle it outside the parser */
    return 0;
}

/* ---- requests ----------------------------------------------------------- */

/* Empties a request buffer; keeps a small allocation for the next request
 * on a busy connection, but never on a parked one (parking must be cheap). */
static void request_buf_done(buf_t *b, bool keep)
{
    if (keep && b->cap <= 1024)
        buf_reset(b);
    else
        buf_free(b);
}

static void request_reset(http_conn_t *c, bool keep)
{
    request_buf_done(&c->url, keep);
    request_buf_done(&c->body, keep);
    request_buf_done(&c->content_type, keep);
    request_buf_done(&c->host, keep);
    request_buf_done(&c->expect, keep);
    request_buf_done(&c->transfer_encoding, keep);
    c->message_done = false;
    c->in_request = false;
    c->headers_done = false;
    c->replied = false;
    c->is_head = false;
}

/* The answer to a request the server refuses itself, rendered by the
 * configured renderer (see http_error_fn). `extra_headers` may be NULL. */
static void render_error(http_server_t *s, int status, const char *cause, buf_t *body,
                         http_reply_t *r)
{
    *r = (http_reply_t){.status = status};
    if (s->cfg.render_error) {
        s->cfg.render_error(s->cfg.render_error_ctx, status, cause, body, r);
    } else {
        buf_puts(body, cause);
        buf_putc(body, '\n');
        r->content_type = "text/plain; charset=utf-8";
    }
    r->status = status;
    r->extra_headers = status == 405   ? s->allow_header
                       : status == 503 ? "Retry-After: " STRINGIFY(HTTP_BUSY_RETRY_AFTER_S) "\r\n"
                                       : NULL;
    if (buf_failed(body)) {
        r->body = NULL;
        r->body_len = 0;
    } else {
        r->body = body->data;
        r->body_len = body->len;
    }
}

/* Answers a request the server refused, then closes the connection: after
 * a malformed or unwanted request the stream cannot be trusted. */
static void reply_error_and_close(http_conn_t *c, int status, const char *cause)
{
    http_server_t *s = c->srv;
    char text[160];
    if (!cause && status == 431)
        snprintf(text, sizeof text, "the request line and headers exceed %zu bytes",
                 s->cfg.max_header_bytes);
    else if (!cause && status == 413)
        snprintf(text, sizeof text, "the request body exceeds %zu bytes", s->cfg.max_body_bytes);
    else
        snprintf(text, sizeof text, "%s", cause ? cause : http_status_text(status));
    buf_t body = BUF_INIT;
    http_reply_t r;
    render_error(s, status, text, &body, &r);
    c->close_after_write = true;
    c->replied = false;
    c->parked = false;
    c->park_fn = NULL;
    c->is_head = c->headers_done && c->parser.method == HTTP_HEAD;
    http_reply(c, &r);
    buf_free(&body);
    conn_flush(c);
}

/*
 * Finds the path and the query (length 0: none) of a request target.
 * The usual origin-form ("/path?query#fragment") is split by hand:
 * libhttp-parser has already checked it byte by byte, with the same state
 * machine http_parser_parse_url runs, while it read the request line, so
 * only the first '?' and '#' matter, as they do to http_parser_parse_url.
 * Other forms (absolute-form, '*') go to http_parser_parse_url. Returns
 * false when the target is malformed or has no path.
 */
static bool split_target(const char *url, size_t len, size_t *path_off, size_t *path_len,
                         size_t *query_off, size_t *query_len)
{
    *query_off = *query_len = 0;
    if (len > 0 && url[0] == '/') {
        size_t i = 0;
        while (i < len && url[i] != '?' && url[i] != '#')
            i++;
        *path_off = 0;
        *path_len = i;
        if (i < len && url[i] == '?') {
            size_t q = ++i;
            while (i < len && url[i] != '#')
                i++;
            *query_off = q;
            *query_len = i - q;
        }
        return true;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (len == 0 || http_parser_parse_url(url, len, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH)))
        return false;
    *path_off = u.field_data[UF_PATH].off;
    *path_len = u.field_data[UF_PATH].len;
    if (u.field_set & (1 << UF_QUERY)) {
        *query_off = u.field_data[UF_QUERY].off;
        *query_len = u.field_data[UF_QUERY].len;
    }
    return true;
}

static void dispatch(http_conn_t *c)
{
    http_server_t *s = c->srv;
    if (buf_failed(&c->url) || buf_failed(&c->body) || buf_failed(&c->content_type) ||
        buf_failed(&c->host)) {
        reply_error_and_close(c, 500, "out of memory");
        return;
    }
    size_t path_off, plen, query_off, qlen;
    if (!split_target(buf_cstr(&c->url), c->url.len, &path_off, &plen, &query_off, &qlen)) {
        reply_error_and_close(c, 400, "malformed request target");
        return;
    }
    /* Split in place: path and query become NUL-terminated strings. */
    char *base = c->url.data;
    char *path = base + path_off;
    char *query = "";
    if (qlen) {
        query = base + query_off;
        query[qlen] = '\0';
    }
    path[plen] = '\0';
    http_request_t req = {
        .method = c->parser.method,
        .method_name = http_method_str(c->parser.method),
        .path = path,
        .path_len = plen,
        .query = query,
        .query_len = qlen,
        .body = buf_cstr(&c->body),
        .body_len = c->body.len,
        .content_type = buf_cstr(&c->content_type),
        .host = buf_cstr(&c->host),
        .peer = c->peer,
        .peer_addr = c->peer_addr,
        .conn = c,
    };
    /* A new request has no answer yet: the previous one may have been
     * answered late (parked or held), after its dispatch returned. */
    c->replied = false;
    s->cfg.handler(s->cfg.handler_ctx, &req);
    if (c->fd < 0)
        return; /* closed while answering (a write failed) */
    if (!c->replied && !c->parked) {
        log_error("handler gave no answer to %s %s", req.method_name, req.path);
        reply_error_and_close(c, 500, "no answer");
        return;
    }
    request_reset(c, !c->parked);
}

/* Status and cause for a request libhttp-parser refused. */
static int parse_error_status(const http_conn_t *c, enum http_errno err, const char **cause)
{
    *cause = c->parse_error_cause;
    if (c->parse_error_status)
        return c->parse_error_status;
    switch (err) {
    case HPE_INVALID_METHOD: *cause = "method not implemented"; return 501;
    case HPE_INVALID_TRANSFER_ENCODING:
        *cause = "only \"Transfer-Encoding: chunked\" is supported";
        return 501;
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        *cause = "Content-Length given twice, or with Transfer-Encoding";
        return 400;
    case HPE_INVALID_CONTENT_LENGTH: *cause = "invalid Content-Length or chunk size"; return 400;
    case HPE_HEADER_OVERFLOW: *cause = NULL; return 431;
    default: *cause = http_errno_description(err); return 400;
    }
}

/* The last byte of data[0..n) that is not a space or tab, else `prev`. */
static char last_nonblank(const char *data, size_t n, char prev)
{
    while (n > 0 && (data[n - 1] == ' ' || data[n - 1] == '\t'))
        n--;
    return n ? data[n - 1] : prev;
}

/*
 * Feeds bytes to the parser and handles each complete request. Stops (and
 * keeps the rest in `pending`) while a request is parked or output backs up.
 */
static void conn_feed(http_conn_t *c, const char *data, size_t len)
{
    while (len > 0 && !c->lingering) {
        if (c->parked || c->out.len - c->out_off > MAX_UNSENT_BYTES) {
            buf_append(&c->pending, data, len);
            if (c->pending.len > MAX_PENDING_BYTES && !c->read_paused) {
                c->read_paused = true; /* EPOLLRDHUP still reports a close */
                conn_update_epoll(c);
            }
            return;
        }
        c->feed_base = data;
        size_t n = http_parser_execute(&c->parser, &c->srv->settings, data, len);
        c->last_nonblank = last_nonblank(data, n, c->last_nonblank);
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        if (err == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
        } else if (err != HPE_OK) {
            const char *cause;
            int status = parse_error_status(c, err, &cause);
            reply_error_and_close(c, status, cause);
            return;
        } else if (n < len) {
            /* The parser stops early only for a protocol switch. */
            reply_error_and_close(c, 400, "protocol upgrade is not supported");
            return;
        } else if (c->in_request && !c->headers_done &&
                   c->parser.nread > c->srv->cfg.max_header_bytes) {
            reply_error_and_close(c, 431, NULL);
            return;
        }
        data += n;
        len -= n;
        if (c->message_done) {
            dispatch(c);
            if (c->fd < 0 || c->close_after_write || c->lingering)
                return; /* nothing after a "Connection: close" answer */
        }
    }
}

/* Parses bytes that waited while a request was parked. */
static void conn_resume(http_conn_t *c)
{
    c->resume_queued = false;
    if (c->fd < 0 || c->parked)
        return;
    if (c->pending.len) {
        buf_t data = c->pending;
        buf_init(&c->pending);
        conn_feed(c, data.data, data.len);
        buf_free(&data);
        if (c->fd < 0)
            return;
        if (c->read_paused && c->pending.len <= MAX_PENDING_BYTES) {
            c->read_paused = false;
            conn_update_epoll(c);
        }
    }
    conn_flush(c);
}

/* ---- connections -------------------------------------------------------- */

static void conn_free(http_conn_t *c)
{
    request_reset(c, false);
    buf_free(&c->pending);
    buf_free(&c->out);
    free(c);
}

/*
 * Closes the socket and unlinks the connection at once; the struct itself
 * is freed at the end of the loop turn (free_closed), because callers up
 * the stack and later events of the same epoll batch may still look at it
 * (they see fd < 0).
 */
static void conn_close(http_conn_t *c)
{
    if (c->fd < 0)
        return;
    http_server_t *s = c->srv;
    if (c->parked && c->park_fn) {
        c->parked = false;
        c->park_fn(c, c->park_ctx, HTTP_PARK_CLOSED);
    }
    timer_unlink(c);
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    c->closed_next = s->closed_head;
    s->closed_head = c;
}

static void free_closed(http_server_t *s)
{
    while (s->closed_head) {
        http_conn_t *c = s->closed_head;
        s->closed_head = c->closed_next;
        if (c->resume_queued) {
            /* still on the resume list: drain_resumes runs first, always */
            log_error("internal: freeing a connection queued for resume");
        }
        conn_free(c);
    }
}

/* "address:port" for logs, and the address alone for per-client limits;
 * an IPv4-mapped IPv6 address is shown as the IPv4 address it is. */
static void format_peer(const struct sockaddr_storage *sa, char *out, size_t len, char *addr,
                        size_t addr_len)
{
    addr[0] = '\0';
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, addr, (socklen_t)addr_len);
        snprintf(out, len, "%s:%d", addr, ntohs(in->sin_port));
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], addr, (socklen_t)addr_len);
            snprintf(out, len, "%s:%d", addr, ntohs(in6->sin6_port));
        } else {
            inet_ntop(AF_INET6, &in6->sin6_addr, addr, (socklen_t)addr_len);
            snprintf(out, len, "[%s]:%d", addr, ntohs(in6->sin6_port));
        }
    } else {
        snprintf(out, len, "local");
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
    render_error(s, 503, "too many open connections; retry later", &body, &r);
    format_reply(&out, &r, false, true, false);
    if (!buf_failed(&out) && send(fd, out.data, out.len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        (void)0; /* best effort: the client may be gone already */
    buf_free(&out);
    buf_free(&body);
    shutdown(fd, SHUT_WR);
    close(fd);
    s->rejected_since_log++;
    uint64_t now = time_mono_ms();
    if (now - s->last_reject_log_ms >= REJECT_LOG_EVERY_MS) {
        log_warn("%zu connection(s) refused with 503: %zu open, the limit", s->rejected_since_log,
                 s->n_conns);
        s->last_reject_log_ms = now;
        s->rejected_since_log = 0;
    }
}

/* Takes a connected, non-blocking socket into the loop. Returns 0 or
 * -errno (the socket is closed then). */
static int conn_add(http_server_t *s, int fd, const struct sockaddr_storage *sa)
{
    if (s->n_conns >= s->cfg.max_conns || s->stopping) {
        reject_busy(s, fd);
        return 0;
    }
    http_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails on a socketpair */
    c->fd = fd;
    c->srv = s;
    c->tl = TL_NONE;
    format_peer(sa, c->peer, sizeof c->peer, c->peer_addr, sizeof c->peer_addr);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (epoll_set(s, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP, c) != 0) {
        int e = errno;
        close(fd);
        free(c);
        return -e;
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    conn_update_timer(c);
    return 0;
}

static void accept_all(http_server_t *s)
{
    for (int i = 0; i < MAX_ACCEPTS_PER_TURN; i++) {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(s->listen_fd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && s->spare_fd >= 0) {
                /* Out of descriptors: free the spare one to take the
                 * connection off the backlog and answer it 503, rather
                 * than let the listening socket wake the loop forever. */
                close(s->spare_fd);
                fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd >= 0)
                    reject_busy(s, fd);
                s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                return;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warn("accept: %s", strerror(errno));
            return;
        }
        if (conn_add(s, fd, &sa) != 0)
            log_warn("cannot take a connection: out of memory");
    }
}

/* Reads and drops what a client sends after its last answer. */
static void conn_linger_read(http_conn_t *c)
{
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t n = recv(c->fd, c->srv->rbuf, READ_CHUNK_BYTES, 0);
        if (n > 0) {
            c->lingered_bytes += (size_t)n;
            if (c->lingered_bytes <= LINGER_MAX_BYTES)
                continue;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        conn_close(c); /* EOF, an error, or too much */
        return;
    }
}

static void conn_readable(http_conn_t *c)
{
    http_server_t *s = c->srv;
    if (c->lingering) {
        conn_linger_read(c);
        return;
    }
    for (int rounds = 0; rounds < 16 && c->fd >= 0 && !c->read_paused; rounds++) {
        ssize_t n = recv(c->fd, s->rbuf, READ_CHUNK_BYTES, 0);
        if (n > 0) {
            conn_feed(c, s->rbuf, (size_t)n);
            if (c->fd >= 0) {
                conn_flush(c);
                if (c->fd >= 0)
                    conn_update_timer(c);
            }
            if ((size_t)n < READ_CHUNK_BYTES)
                return;
        } else if (n == 0) {
            /* The client half-closed. Answer what was complete, then go. */
            if (c->parked || c->out.len > c->out_off) {
                if (!c->parked)
                    c->close_after_write = true;
                else
                    conn_close(c); /* nobody will read a parked answer */
            } else {
                conn_close(c);
            }
            return;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else {
            conn_close(c);
            return;
        }
    }
}

static void conn_event(http_conn_t *c, uint32_t events)
{
    if (events & (EPOLLERR | EPOLLHUP)) {
        conn_close(c);
        return;
    }
    if ((events & EPOLLRDHUP) && (c->parked || c->read_paused)) {
        conn_close(c); /* the waiting client is gone */
        return;
    }
    if (events & EPOLLOUT) {
        conn_flush(c);
        if (c->fd < 0)
            return;
        if (!c->parked)
            schedule_resume(c);
    }
    if (events & (EPOLLIN | EPOLLRDHUP))
        conn_readable(c);
}

/* ---- timers and the loop ------------------------------------------------ */

static void expire_timers(http_server_t *s, uint64_t now_ms)
{
    for (int tl = 0; tl < TL_COUNT; tl++) {
        http_conn_t *c;
        while ((c = s->timers[tl].head) && c->deadline_ms <= now_ms) {
            timer_unlink(c);
            if (tl == TL_PARKED && c->parked && c->park_fn) {
                http_park_fn fn = c->park_fn;
                c->park_fn = NULL;
                fn(c, c->park_ctx, HTTP_PARK_TIMEOUT);
                if (c->fd >= 0 && c->parked) { /* the owner did not answer: close */
                    c->parked = false;
                    conn_close(c);
                }
            } else if (tl == TL_HEADER) {
                char why[96];
                snprintf(why, sizeof why, "the request headers did not arrive within %llu ms",
                         (unsigned long long)s->timers[TL_HEADER].duration_ms);
                reply_error_and_close(c, 408, why);
            } else if (tl == TL_BODY) {
                char why[96];
                snprintf(why, sizeof why, "the request body did not arrive within %llu ms",
                         (unsigned long long)s->timers[TL_BODY].duration_ms);
                reply_error_and_close(c, 408, why);
            } else {
                conn_close(c);
            }
        }
    }
}

static int next_timeout_ms(http_server_t *s, uint64_t now_ms, int64_t wake_ns)
{
    uint64_t next = now_ms + 1000;
    for (int tl = 0; tl < TL_COUNT; tl++)
        if (s->timers[tl].head && s->timers[tl].head->deadline_ms < next)
            next = s->timers[tl].head->deadline_ms;
    if (wake_ns) {
        int64_t d_ms = (wake_ns - time_wall_ns()) / NS_PER_MS + 1;
        if (d_ms < 0)
            d_ms = 0;
        if (now_ms + (uint64_t)d_ms < next)
            next = now_ms + (uint64_t)d_ms;
    }
    return next > now_ms ? (int)(next - now_ms) : 0;
}

static void drain_resumes(http_server_t *s)
{
    while (s->resume_head) {
        http_conn_t *c = s->resume_head;
        s->resume_head = c->resume_next;
        c->resume_next = NULL;
        if (c->fd < 0) {
            c->resume_queued = false; /* on the closed list: freed there */
            continue;
        }
        conn_resume(c);
    }
}

static void begin_shutdown(http_server_t *s)
{
    s->stopping = true;
    s->stop_deadline_ms = time_mono_ms() + HTTP_SHUTDOWN_GRACE_MS;
    if (s->listen_fd >= 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->listen_fd, NULL);
        close(s->listen_fd);
        s->listen_fd = -1;
    }
    for (http_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->parked && c->park_fn) {
            http_park_fn fn = c->park_fn;
            c->park_fn = NULL;
            fn(c, c->park_ctx, HTTP_PARK_SHUTDOWN);
        } else if (!c->in_request && c->out.len == c->out_off) {
            conn_close(c);
        } else {
            c->close_after_write = true;
        }
    }
}

/* One loop turn: the tick, due timers, then the events that come within
 * `max_wait_ms` (-1: until the next timer). */
static int loop_turn(http_server_t *s, int max_wait_ms)
{
    struct epoll_event events[MAX_EVENTS];
    uint64_t now = s->now_ms = time_mono_ms();
    int64_t wake_ns = s->cfg.tick ? s->cfg.tick(s->cfg.tick_ctx, time_wall_ns()) : 0;
    expire_timers(s, now);
    drain_resumes(s);
    free_closed(s);
    int wait_ms = next_timeout_ms(s, now, wake_ns);
    if (max_wait_ms >= 0 && max_wait_ms < wait_ms)
        wait_ms = max_wait_ms;
    int n = epoll_wait(s->epfd, events, MAX_EVENTS, wait_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    s->now_ms = time_mono_ms();
    for (int i = 0; i < n; i++) {
        void *p = events[i].data.ptr;
        if (p == &listen_tag) {
            accept_all(s);
        } else if (p == &notify_tag) {
            s->cfg.on_notify(s->cfg.tick_ctx);
        } else if (p == &signal_tag) {
            struct signalfd_siginfo si;
            while (read(s->signal_fd, &si, sizeof si) == sizeof si) {
                if (!s->stopping) {
                    log_info("received %s; stopping: no new connections, parked waits "
                             "answered, %zu connections open",
                             strsignal((int)si.ssi_signo), s->n_conns);
                    begin_shutdown(s);
                }
            }
        } else {
            http_conn_t *c = p;
            if (c->fd >= 0)
                conn_event(c, events[i].events);
        }
    }
    drain_resumes(s);
    free_closed(s);
    return 0;
}

int http_server_run(http_server_t *s)
{
    for (;;) {
        int rc = loop_turn(s, -1);
        if (rc < 0)
            return rc;
        if (s->stopping && (s->n_conns == 0 || time_mono_ms() >= s->stop_deadline_ms))
            break;
    }
    while (s->conns)
        conn_close(s->conns);
    drain_resumes(s);
    free_closed(s);
    return 0;
}

int http_server_run_once(http_server_t *s, int timeout_ms)
{
    return loop_turn(s, timeout_ms < 0 ? 0 : timeout_ms);
}

int http_server_adopt(http_server_t *s, int fd)
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
    s->now_ms = time_mono_ms(); /* called between loop turns */
    return conn_add(s, fd, &sa);
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
    s->now_ms = time_mono_ms();
    s->cfg = *cfg;
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
    s->epfd = s->listen_fd = s->signal_fd = s->spare_fd = -1;
    s->rbuf = malloc(READ_CHUNK_BYTES);
    s->timers[TL_IDLE].duration_ms = c->idle_timeout_ms;
    s->timers[TL_HEADER].duration_ms = c->header_timeout_ms;
    s->timers[TL_BODY].duration_ms = c->body_timeout_ms;
    s->timers[TL_WRITE].duration_ms = HTTP_WRITE_TIMEOUT_MS;
    s->timers[TL_PARKED].duration_ms = c->wait_timeout_ms;
    s->timers[TL_LINGER].duration_ms = LINGER_MS;
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!s->rbuf || s->epfd < 0) {
        snprintf(err, 256, "cannot set up the event loop: %s", strerror(errno));
        http_server_free(s);
        return NULL;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!cfg->addr) {
        snprintf(s->address, sizeof s->address, "none");
    } else {
        s->listen_fd = listen_on(cfg->addr, s->address, sizeof s->address, err);
        if (s->listen_fd < 0) {
            http_server_free(s);
            return NULL;
        }
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        s->signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
        if (s->signal_fd < 0 ||
            epoll_set(s, EPOLL_CTL_ADD, s->listen_fd, EPOLLIN, &listen_tag) != 0 ||
            epoll_set(s, EPOLL_CTL_ADD, s->signal_fd, EPOLLIN, &signal_tag) != 0) {
            snprintf(err, 256, "cannot set up the event loop: %s", strerror(errno));
            http_server_free(s);
            return NULL;
        }
    }
    if (cfg->notify_fd >= 0 && cfg->on_notify &&
        epoll_set(s, EPOLL_CTL_ADD, cfg->notify_fd, EPOLLIN, &notify_tag) != 0) {
        snprintf(err, 256, "cannot watch the store: %s", strerror(errno));
        http_server_free(s);
        return NULL;
    }
    return s;
}

const char *http_server_address(const http_server_t *s)
{
    return s->address;
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
    drain_resumes(s);
    free_closed(s);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->spare_fd >= 0)
        close(s->spare_fd);
    if (s->signal_fd >= 0)
        close(s->signal_fd);
    if (s->epfd >= 0)
        close(s->epfd);
    free(s->rbuf);
    free(s);
}
