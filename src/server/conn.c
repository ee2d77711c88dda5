/*
 * conn.c - a client connection: its transport, buffers, deadlines, output,
 * half-close, linger and close.
 *
 * Life of a connection:
 *   accept -> IDLE --first byte--> READING --complete--> handler
 *     handler replied: answer queued; back to IDLE (or READING the next
 *                      pipelined request already buffered)
 *     handler parked:  PARKED until a reply, timeout, shutdown or close;
 *                      bytes that arrive meanwhile wait in `pending`
 *   the client half-closes (EOF on read): no request comes after the ones
 *                    already received; those are answered (a parked watch
 *                    ends, as the client stopped asking), then the
 *                    connection closes
 *   an answer with "Connection: close" (the client's wish, or a refusal):
 *                    written, FIN sent, then LINGERING: input dropped until
 *                    the client closes too (or LINGER_MS), so that no reset
 *                    destroys the answer in flight
 *   any state: peer reset or error -> closed (the owner of a parked
 *   request told); freed at the end of the loop turn, so that nothing up
 *   the stack or later in an epoll batch touches freed memory.
 *
 * Deadlines live in one FIFO list per kind (idle, header, body, write,
 * parked, linger): every entry of a list has the same duration, so
 * deadlines are in insertion order and checking one is O(1).
 */
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/server_internal.h"
#include "server/transport_tls.h"
#include "util/log.h"

static void conn_on_ready(loop_io_t *io, uint32_t events);

/* ---- events and timers -------------------------------------------------- */

void conn_update_events(http_conn_t *c)
{
    if (c->closed)
        return;
    uint32_t ev = 0;
    /* RDHUP tells a parked request's client is gone; after EOF nothing is
     * read any more (a level-triggered RDHUP would fire forever). */
    if (!c->read_eof)
        ev |= (c->rdhup_seen ? 0 : EPOLLRDHUP) | (c->read_paused ? 0 : EPOLLIN);
    if (c->want_write)
        ev |= EPOLLOUT;
    ev |= c->tp.wants;
    loop_io_modify(c->srv->loop, &c->io, ev);
}

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
    c->deadline_ms = loop_now_ms(s->loop) + s->timers[tl].duration_ms;
    c->tprev = s->timers[tl].tail;
    c->tnext = NULL;
    if (c->tprev)
        c->tprev->tnext = c;
    else
        s->timers[tl].head = c;
    s->timers[tl].tail = c;
}

bool conn_is_parked(const http_conn_t *c)
{
    return c->req != REQ_NONE && c->srv->slots[c->req].state == REQ_PARKED;
}

/* Puts the connection on the list its state calls for. */
void conn_update_timer(http_conn_t *c)
{
    if (c->closed)
        return;
    enum timer_list want;
    if (c->h2 && !c->lingering && c->out.len == c->out_off && h2_has_streams(c)) {
        /* HTTP/2 with streams open: each stream is a request whose owner
         * ends it; the connection itself waits for them. */
        timer_unlink(c);
        return;
    }
    if (c->lingering)
        want = TL_LINGER;
    else if (conn_is_parked(c))
        want = TL_PARKED;
    else if (c->out.len > c->out_off)
        want = TL_WRITE;
    else if (c->in_request && c->headers_done)
        want = TL_BODY;
    else if (c->in_request || c->pending.len || c->tp.is_handshaking || c->sniff_len)
        want = TL_HEADER; /* a first byte started a request (or a preface); a TLS
                             handshake counts as a slow head (slowloris) */
    else
        want = TL_IDLE;
    if (want == c->tl)
        return; /* the deadline runs from when the state began */
    timer_unlink(c);
    timer_link(c, want);
}

void conn_restart_timer(http_conn_t *c)
{
    timer_unlink(c);
    conn_update_timer(c);
}

/* ---- output ------------------------------------------------------------- */

/* After the last answer: FIN now, then close once the client has closed
 * too (or lingered). */
static void conn_begin_linger(http_conn_t *c)
{
    transport_shutdown_write(&c->tp);
    c->lingering = true;
    c->close_after_write = false;
    if (c->read_eof) {
        conn_close(c); /* the client has closed its side already */
        return;
    }
    c->read_paused = false;
    buf_free(&c->pending);
    conn_update_events(c);
    conn_update_timer(c);
}

/* Writes what it can now; asks for EPOLLOUT for the rest. */
void conn_flush(http_conn_t *c)
{
    if (c->closed || c->close_queued)
        return;
    bool moved = false;
    uint32_t wants_before = c->tp.wants;
    while (c->out_off < c->out.len) {
        ssize_t n = transport_send(&c->tp, c->out.data + c->out_off, c->out.len - c->out_off);
        if (c->tp.wants != wants_before) {
            conn_update_events(c); /* TLS: a write that waits to read */
            wants_before = c->tp.wants;
        }
        if (n > 0) {
            c->out_off += (size_t)n;
            moved = true;
        } else if (n == -EAGAIN) {
            if (!c->want_write) {
                c->want_write = true;
                conn_update_events(c);
            }
            /* The write timeout runs between two writes that move bytes
             * (as nginx's send_timeout): a client reading a long backlog
             * slowly is not cut off, one that reads nothing is. */
            if (moved && c->tl == TL_WRITE)
                conn_restart_timer(c);
            else
                conn_update_timer(c);
            return;
        } else {
            /* The peer is gone. Close at the end of the turn, not here: a
             * write can come from inside another request's owner (an event
             * that wakes watches on many connections, an HTTP/2 stream
             * answered while its siblings are being notified), and closing
             * tells every owner on this connection that its request ended. */
            conn_close_later(c);
            return;
        }
    }
    buf_reset(&c->out);
    c->out_off = 0;
    if (c->out.cap > 16 * 1024)
        buf_free(&c->out); /* do not keep a big answer's memory per socket */
    if (c->want_write) {
        c->want_write = false;
        conn_update_events(c);
    }
    if (c->close_after_write && c->req == REQ_NONE) {
        conn_begin_linger(c);
        return;
    }
    conn_update_timer(c);
}

/*
 * Writes `data` now if nothing is queued before it, so that bytes shared
 * by many connections are not copied for each; what the socket does not
 * take at once is queued in `out` like any answer. conn_flush() then does
 * the bookkeeping (EPOLLOUT, timers, close after write), and meets again
 * any error the direct send met.
 */
void conn_write_now(http_conn_t *c, const char *data, size_t len)
{
    size_t sent = 0;
    if (c->out.len == c->out_off) {
        ssize_t n = transport_send(&c->tp, data, len);
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

/*
 * Queues a visit at the end of the loop turn: to parse pipelined bytes that
 * waited (`pending`), or to finish after a half-close. Without either there
 * is nothing to resume: a woken parked request costs no second visit.
 */
void conn_schedule_resume(http_conn_t *c)
{
    if (c->resume_queued || c->closed ||
        (c->pending.len == 0 && !c->read_eof && !c->close_queued && !c->h2_resume && !c->h2_write))
        return;
    c->resume_queued = true;
    c->resume_next = c->srv->resume_head;
    c->srv->resume_head = c;
}

void conn_request_done(http_conn_t *c, bool was_parked)
{
    if (buf_failed(&c->out)) {
        log_warn("out of memory writing an answer to %s; closing", c->peer);
        conn_close(c);
        return;
    }
    if (was_parked) {
        /* Answered from another connection's callback: write now, and parse
         * any pipelined bytes on the next loop turn, outside this stack. */
        conn_schedule_resume(c);
        conn_flush(c);
    } else if (c->read_eof) {
        conn_schedule_resume(c);
    }
}

/*
 * After a half-close: once no request is in flight and every byte the
 * client sent has been parsed, nothing more can come; close after the
 * answers are out. A parked watch ends at once: its client stopped asking.
 */
static void conn_finish_after_eof(http_conn_t *c)
{
    if (c->closed || !c->read_eof)
        return;
    if (c->h2 || !c->proto_known) {
        /* HTTP/2 needs both directions; what is queued is still sent. */
        c->close_after_write = true;
        conn_flush(c);
        return;
    }
    if (conn_is_parked(c)) {
        if (c->srv->slots[c->req].park_kind == HTTP_PARK_WATCH)
            conn_close(c);
        return; /* a held answer goes out first */
    }
    if (c->req != REQ_NONE || c->pending.len)
        return;
    c->close_after_write = true;
    conn_flush(c);
}

void conn_close_later(http_conn_t *c)
{
    c->close_queued = true;
    conn_schedule_resume(c);
}

/* Parses bytes that waited while a request was parked. */
static void conn_resume(http_conn_t *c)
{
    c->resume_queued = false;
    if (c->close_queued) {
        conn_close(c); /* outside every owner's stack: see conn_flush */
        return;
    }
    if (c->h2_resume) {
        c->h2_resume = false;
        h2_resume_stalled(c); /* stalled streams that drained go on (h2.c) */
        if (c->closed)
            return;
    }
    if (c->h2_write) {
        h2_write_queued(c); /* the turn's HTTP/2 frames, in one write */
        if (c->closed)
            return;
    }
    if (c->closed || conn_is_parked(c)) {
        conn_finish_after_eof(c);
        return;
    }
    if (c->pending.len) {
        buf_t data = c->pending;
        buf_init(&c->pending);
        http1_feed(c, data.data, data.len);
        buf_free(&data);
        if (c->closed)
            return;
        if (c->read_paused && c->pending.len <= MAX_PENDING_BYTES) {
            c->read_paused = false;
            conn_update_events(c);
        }
    }
    conn_flush(c);
    conn_finish_after_eof(c);
}

void conn_drain_resumes(http_server_t *s)
{
    while (s->resume_head) {
        http_conn_t *c = s->resume_head;
        s->resume_head = c->resume_next;
        c->resume_next = NULL;
        if (c->closed) {
            c->resume_queued = false; /* on the closed list: freed there */
            continue;
        }
        conn_resume(c);
    }
}

/* ---- close -------------------------------------------------------------- */

static void conn_free(http_conn_t *c)
{
    http1_request_reset(c, false);
    buf_free(&c->pending);
    buf_free(&c->out);
    free(c);
}

/*
 * Closes the transport and unlinks the connection at once, telling the
 * owner of a request in flight; the struct itself is freed at the end of
 * the loop turn (conn_free_closed), because callers up the stack and later
 * events of the same epoll batch may still look at it (they see `closed`).
 */
void conn_close(http_conn_t *c)
{
    if (c->closed)
        return;
    http_server_t *s = c->srv;
    c->closed = true;
    timer_unlink(c);
    loop_io_stop(s->loop, &c->io);
    transport_close(&c->tp);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    c->closed_next = s->closed_head;
    s->closed_head = c;
    /* Last: the owner's callback may answer other connections. */
    h2_conn_closed(c);
    req_end_parked(c, HTTP_PARK_CLOSED);
    assert(c->req == REQ_NONE);
}

void conn_free_closed(http_server_t *s)
{
    while (s->closed_head) {
        http_conn_t *c = s->closed_head;
        s->closed_head = c->closed_next;
        /* still on the resume list: conn_drain_resumes runs first, always */
        assert(!c->resume_queued);
        conn_free(c);
    }
}

/* ---- accept ------------------------------------------------------------- */

/* "address:port" for logs, and the address alone for per-client limits;
 * an IPv4-mapped IPv6 address is shown as the IPv4 address it is. */
void format_peer(const struct sockaddr_storage *sa, char *out, size_t len, char *addr,
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

_Static_assert(READ_CHUNK_BYTES >= 16 * 1024, "a whole TLS record fits one read (transport_tls.h)");

int conn_add(http_server_t *s, int fd, const struct sockaddr_storage *sa, struct tls_ctx *tls)
{
    http_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails on a socketpair */
    if (!tls) {
        transport_plain_init(&c->tp, fd);
    } else if (transport_tls_init(&c->tp, fd, tls) != 0) {
        free(c); /* the socket is closed */
        return -ENOMEM;
    }
    c->srv = s;
    c->tl = TL_NONE;
    c->req = REQ_NONE;
    format_peer(sa, c->peer, sizeof c->peer, c->peer_addr, sizeof c->peer_addr);
    http1_init_conn(c);
    int rc = loop_io_start(s->loop, &c->io, fd, EPOLLIN | EPOLLRDHUP, conn_on_ready);
    if (rc != 0) {
        transport_close(&c->tp);
        free(c);
        return rc;
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    conn_update_timer(c);
    return 0;
}

/* ---- input -------------------------------------------------------------- */

/* Reads and drops what a client sends after its last answer. */
static void conn_linger_read(http_conn_t *c)
{
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t n = transport_recv(&c->tp, c->srv->rbuf, READ_CHUNK_BYTES);
        if (n > 0) {
            c->lingered_bytes += (size_t)n;
            if (c->lingered_bytes <= LINGER_MAX_BYTES)
                continue;
        } else if (n == -EAGAIN) {
            return;
        }
        conn_close(c); /* EOF, an error, or too much */
        return;
    }
}

/*
 * A TLS handshake completed: the connection waits for its first request
 * now (the idle timeout). This is where a connection whose ALPN chose
 * "h2" will be handed to the HTTP/2 code; "h2" is not offered yet
 * (transport_tls.c, alpn_offer), so every connection speaks HTTP/1.1.
 */
static void conn_handshake_done(http_conn_t *c)
{
    /* With ALPN "h2" the client's first bytes are the HTTP/2 preface, which
     * conn_sniff() recognises as on a plain connection; with "http/1.1" or
     * none they are an HTTP/1.1 request. */
    const char *alpn = transport_tls_alpn(&c->tp);
    assert(!alpn || strcmp(alpn, "http/1.1") == 0 || strcmp(alpn, "h2") == 0);
    (void)alpn;
    conn_update_timer(c);
}

/* The client half-closed: nothing more will be read. */
static void conn_read_eof(http_conn_t *c)
{
    c->read_eof = true;
    conn_update_events(c);
    /* A request cut short by the EOF stays half-parsed: bytes of it may
     * still wait in `pending`, and it is dropped with the connection. */
    conn_finish_after_eof(c);
}

/*
 * The first bytes decide the protocol: the HTTP/2 client preface means
 * h2c with prior knowledge, anything else HTTP/1.1. A prefix of the
 * preface waits in `sniff` until it is whole or stops matching.
 */
static void conn_sniff(http_conn_t *c, const char *data, size_t len)
{
    static const char preface[] = H2_CLIENT_PREFACE;
    size_t have = c->sniff_len;
    assert(have < H2_CLIENT_PREFACE_BYTES);
    size_t take = len < H2_CLIENT_PREFACE_BYTES - have ? len : H2_CLIENT_PREFACE_BYTES - have;
    bool match = memcmp(data, preface + have, take) == 0;
    if (match && have + take < H2_CLIENT_PREFACE_BYTES) {
        memcpy(c->sniff + have, data, take);
        c->sniff_len = (uint8_t)(have + take);
        return;
    }
    c->proto_known = true;
    c->sniff_len = 0;
    if (!match) {
        if (have)
            http1_feed(c, c->sniff, have);
        if (!c->closed)
            http1_feed(c, data, len);
        return;
    }
    buf_t first = BUF_INIT;
    buf_append(&first, c->sniff, have);
    buf_append(&first, data, len);
    if (buf_failed(&first) || h2_start(c, first.data, first.len) != 0) {
        log_warn("out of memory starting HTTP/2 with %s; closing", c->peer);
        conn_close(c);
    }
    buf_free(&first);
}

static void conn_readable(http_conn_t *c)
{
    http_server_t *s = c->srv;
    if (c->lingering) {
        conn_linger_read(c);
        return;
    }
    for (int rounds = 0; rounds < 16 && !c->closed && !c->read_paused && !c->read_eof; rounds++) {
        bool was_handshaking = c->tp.is_handshaking;
        uint32_t wants_before = c->tp.wants;
        ssize_t n = transport_recv(&c->tp, s->rbuf, READ_CHUNK_BYTES);
        if (c->tp.wants != wants_before)
            conn_update_events(c);
        if (was_handshaking && !c->tp.is_handshaking)
            conn_handshake_done(c);
        if (n > 0) {
            if (c->h2)
                h2_feed(c, s->rbuf, (size_t)n);
            else if (c->proto_known)
                http1_feed(c, s->rbuf, (size_t)n);
            else
                conn_sniff(c, s->rbuf, (size_t)n);
            if (!c->closed) {
                conn_flush(c);
                conn_update_timer(c);
            }
            if ((size_t)n < READ_CHUNK_BYTES)
                return;
        } else if (n == 0) {
            conn_read_eof(c);
            return;
        } else if (n == -EAGAIN) {
            return;
        } else if (n == -EPROTO) {
            /* The transport is plain now: answer as nginx does. */
            http1_refuse(c, 400, "The plain HTTP request was sent to HTTPS port");
            return;
        } else {
            conn_close(c);
            return;
        }
    }
}

static void conn_on_ready(loop_io_t *io, uint32_t events)
{
    http_conn_t *c = (http_conn_t *)io; /* io is the first member */
    if (c->close_queued)
        return; /* closed at the end of this turn */
    if (events & (EPOLLERR | EPOLLHUP)) {
        conn_close(c);
        return;
    }
    if ((events & EPOLLRDHUP) && c->read_paused) {
        /* The client stopped sending while its bytes wait unread (behind a
         * parked request, or behind answers it has not read yet). A parked
         * watch's client is gone. Otherwise answers are still owed: stop
         * asking for RDHUP (level-triggered) and meet the EOF when reading
         * resumes, after what waits has been answered. */
        if (conn_is_parked(c) && c->srv->slots[c->req].park_kind == HTTP_PARK_WATCH) {
            conn_close(c);
            return;
        }
        c->rdhup_seen = true;
        conn_update_events(c);
        events &= ~(uint32_t)EPOLLRDHUP;
    }
    /* A TLS transport may need the other direction for its own progress:
     * a handshake (or a read) that waits to write, a write that waits to
     * read. */
    uint32_t tp_wants = c->tp.wants;
    if ((events & EPOLLIN) && (tp_wants & EPOLLIN) && c->want_write)
        events |= EPOLLOUT;
    if ((events & EPOLLOUT) && (tp_wants & EPOLLOUT) && !c->want_write)
        events |= EPOLLIN;
    if (events & EPOLLOUT) {
        conn_flush(c);
        if (c->closed)
            return;
        if (c->h2 && c->out.len == c->out_off) {
            h2_flush(c); /* frames held back while output was backed up */
            if (c->closed)
                return;
        }
        if (!conn_is_parked(c))
            conn_schedule_resume(c);
    }
    if (events & (EPOLLIN | EPOLLRDHUP))
        conn_readable(c);
}

/* ---- deadlines ---------------------------------------------------------- */

uint64_t conn_expire_timers(http_server_t *s, uint64_t now_ms)
{
    uint64_t next = 0;
    for (int tl = 0; tl < TL_COUNT; tl++) {
        http_conn_t *c;
        while ((c = s->timers[tl].head) && c->deadline_ms <= now_ms) {
            timer_unlink(c);
            if (tl == TL_PARKED) {
                req_end_parked(c, HTTP_PARK_TIMEOUT);
                if (!c->closed)
                    conn_update_timer(c);
            } else if (tl == TL_HEADER && c->tp.is_handshaking) {
                /* No answer can be read before the handshake: just close. */
                log_debug("closing %s: the TLS handshake did not finish within %llu ms", c->peer,
                          (unsigned long long)s->timers[TL_HEADER].duration_ms);
                conn_close(c);
            } else if (tl == TL_HEADER) {
                char why[96];
                snprintf(why, sizeof why, "the request headers did not arrive within %llu ms",
                         (unsigned long long)s->timers[TL_HEADER].duration_ms);
                http1_refuse(c, 408, why);
            } else if (tl == TL_BODY) {
                char why[96];
                snprintf(why, sizeof why, "the request body did not arrive within %llu ms",
                         (unsigned long long)s->timers[TL_BODY].duration_ms);
                http1_refuse(c, 408, why);
            } else if (tl == TL_IDLE && c->h2) {
                h2_goaway(c); /* a gRPC client reconnects on GOAWAY, quietly */
            } else {
                conn_close(c);
            }
        }
        if (c && (next == 0 || c->deadline_ms < next))
            next = c->deadline_ms;
    }
    uint64_t h2_next = h2_expire_streams(s, now_ms);
    if (h2_next && (next == 0 || h2_next < next))
        next = h2_next;
    return next;
}
