/*
 * h2.c - HTTP/2 on a connection, through libnghttp2, driven by the loop.
 *
 * A sibling of http1.c: conn.c reads and writes the bytes, this file only
 * hands them to an nghttp2 session (nghttp2_session_mem_recv) and moves
 * what the session wants to send into the connection's output buffer
 * (nghttp2_session_mem_send); the session does no I/O of its own and owns
 * no descriptor. nghttp2 answers SETTINGS and PINGs, keeps flow control
 * and HPACK, and ignores unknown settings and frames.
 *
 * Each stream whose request is complete (END_STREAM seen) becomes a
 * request slot, exactly as an HTTP/1.1 request does (request.c): the
 * handler gets a handle, replies at once or parks it, and a late answer
 * finds the stream or nothing. Many streams of one connection are in
 * flight at once; the answer to each is queued on its own stream, so
 * answers need no ordering between streams. A stream that the client
 * resets, and every stream of a connection that ends, ends its request's
 * owner (HTTP_PARK_CLOSED) exactly once. A parked stream waits the
 * server's wait timeout from its park, as an HTTP/1.1 request does: the
 * server keeps one list of parked streams in deadline order (every entry
 * waits the same duration), checked with the connections' deadlines.
 *
 * Answers are HTTP/2 responses: :status, the reply's headers (names
 * lower-cased), its body, and for gRPC its trailers (http_reply_t's
 * `trailers`); no body and trailers make one HEADERS frame with
 * END_STREAM (gRPC "trailers-only").
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/server_internal.h"
#include "util/log.h"

/* Streams a client may open at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
#define H2_MAX_CONCURRENT_STREAMS 128
/* Stop asking the session for frames while this much output is unsent;
 * EPOLLOUT asks again. */
#define H2_MAX_UNSENT_BYTES (256 * 1024)
/* Header fields of one response, :status and trailers included. */
#define H2_MAX_RESPONSE_FIELDS 24
/*
 * Output the client's flow control holds back (answers' bytes queued on
 * their streams that the session may not send yet). A streaming answer
 * (a Watch call) that leaves more than H2_STREAM_QUEUED_BYTES_MAX on its
 * stream, or more than H2_CONN_QUEUED_BYTES_MAX across the connection,
 * stalls: its owner is told (HTTP_STREAM_STALLED) to produce nothing more
 * until the stream drains to half of it (http_stream_on_drain). 64 KiB is
 * grpc-go's per-stream write quota (a server's Send blocks past it).
 * A stalled stream still takes up to H2_STALLED_EXTRA_BYTES_MAX of
 * answers to what its client asks (created, canceled); past that its
 * client asks without reading, and the stream is reset. A unary answer
 * that finds the connection past H2_CONN_UNREAD_BYTES_MAX ends the
 * connection (GOAWAY ENHANCE_YOUR_CALM): its client has let answers pile
 * up unread. That bound is four of the largest messages (4 MiB, v3.c), so
 * that a client reading a few large answers slowly is not cut off. So one
 * connection holds at most about H2_CONN_UNREAD_BYTES_MAX plus one message
 * per stream.
 */
#define H2_STREAM_QUEUED_BYTES_MAX (64 * 1024)
#define H2_CONN_QUEUED_BYTES_MAX (1024 * 1024)
#define H2_STALLED_EXTRA_BYTES_MAX (64 * 1024)
#define H2_CONN_UNREAD_BYTES_MAX (16 * 1024 * 1024)
/* Answer bytes queued on a connection's streams past which h2_flush writes
 * at once instead of at the end of the turn: at most the smallest bound
 * above, so that a stream is never stalled by bytes that only wait for
 * the turn to end. */
#define H2_FLUSH_QUEUED_BYTES H2_STREAM_QUEUED_BYTES_MAX
_Static_assert(H2_FLUSH_QUEUED_BYTES <= H2_STREAM_QUEUED_BYTES_MAX &&
                   H2_FLUSH_QUEUED_BYTES <= H2_CONN_QUEUED_BYTES_MAX,
               "a turn's queued bytes must not look like a stalled client");

/* Trailers this short live in the stream itself (a gRPC success is
 * "grpc-status: 0\r\n"): no allocation per answer. */
#define H2_TRAILERS_INLINE_BYTES 32
/* Header or trailer lines of one answer copied on the stack (longer ones
 * on the heap) to be lower-cased. */
#define H2_LINES_STACK_BYTES 512

typedef struct h2_stream h2_stream_t;
struct h2_stream {
    int32_t id;
    uint32_t slot; /* the request's slot while it is in flight, else REQ_NONE */
    bool dispatched;
    int method; /* enum http_method, -1 until :method is seen */
    size_t header_bytes;
    buf_t path, content_type, authority, accept, body;
    /* a streaming request: where its body goes, once the owner says */
    bool streaming;
    http_body_fn body_fn;
    void *body_ctx;
    /* the answer: body bytes not yet taken by the session */
    buf_t resp;
    size_t resp_off;
    char *trailers; /* "name: value\r\n" lines: trailers_inline, owned, or NULL */
    char trailers_inline[H2_TRAILERS_INLINE_BYTES]; /* a short one (grpc-status: 0) */
    bool resp_started;                              /* the response HEADERS are submitted */
    bool resp_end;      /* the body is whole: trailers (or END_STREAM) follow it */
    bool resp_deferred; /* the session waits for more body (NGHTTP2_ERR_DEFERRED) */
    /* flow control: see H2_STREAM_QUEUED_BYTES_MAX */
    bool stalled;         /* the owner was told to wait for drain_fn */
    bool overflowed;      /* past H2_STALLED_EXTRA_BYTES_MAX: its end is a reset */
    size_t stalled_extra; /* bytes taken while stalled */
    http_drain_fn drain_fn;
    void *drain_ctx;
    h2_stream_t *next, *prev;
    struct h2_conn *h;
    /* On one of the server's deadline lists while it waits for its client
     * (its head, its body) or for its owner (parked): see h2_deadlines. */
    int8_t dl; /* enum h2_deadline */
    uint64_t deadline_ms;
    h2_stream_t *pnext, *pprev;
};

typedef struct h2_conn {
    nghttp2_session *ng;
    http_conn_t *c;
    h2_stream_t *streams;
    size_t n_streams;
    size_t queued_bytes; /* the streams' unsent answer bytes, summed */
    size_t n_stalled;    /* streams with `stalled` set */
    bool drain_ready;    /* bytes left a stalled connection: look again */
    bool in_recv;        /* inside nghttp2_session_mem_recv: no mem_send now */
    bool dead;           /* the connection closed: free after mem_recv returns */
} h2_conn_t;

/* ---- streams ------------------------------------------------------------ */

static h2_stream_t *stream_of(h2_conn_t *h, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h->ng, id);
}

/* The timer list whose duration each deadline list has. */
static const enum timer_list dl_timer[H2_DL_COUNT] = {
    [H2_DL_HEADER] = TL_HEADER, [H2_DL_BODY] = TL_BODY, [H2_DL_PARKED] = TL_PARKED};

/* Takes the stream off its deadline list, if it is on one. */
static void dl_unlink(http_server_t *s, h2_stream_t *st)
{
    if (st->dl == H2_DL_NONE)
        return;
    assert(st->dl >= 0 && st->dl < H2_DL_COUNT);
    if (st->pprev)
        st->pprev->pnext = st->pnext;
    else
        s->h2_deadlines[st->dl].head = st->pnext;
    if (st->pnext)
        st->pnext->pprev = st->pprev;
    else
        s->h2_deadlines[st->dl].tail = st->pprev;
    st->pnext = st->pprev = NULL;
    st->dl = H2_DL_NONE;
}

/* Puts the stream at the tail of list `dl`, its deadline from now. Every
 * entry of a list waits the same duration, so each list stays in deadline
 * order (as conn.c's lists). */
static void dl_link(http_server_t *s, h2_stream_t *st, enum h2_deadline dl)
{
    dl_unlink(s, st);
    st->dl = (int8_t)dl;
    st->deadline_ms = loop_now_ms(s->loop) + s->timers[dl_timer[dl]].duration_ms;
    st->pprev = s->h2_deadlines[dl].tail;
    st->pnext = NULL;
    if (st->pprev)
        st->pprev->pnext = st;
    else
        s->h2_deadlines[dl].head = st;
    s->h2_deadlines[dl].tail = st;
}

static void stream_drop_trailers(h2_stream_t *st)
{
    if (st->trailers != st->trailers_inline)
        free(st->trailers);
    st->trailers = NULL;
}

/* Keeps a copy of `lines` (or none, for NULL) as the stream's trailers:
 * 0, or -ENOMEM. */
static int stream_keep_trailers(h2_stream_t *st, const char *lines)
{
    stream_drop_trailers(st);
    if (!lines)
        return 0;
    size_t len = strlen(lines);
    if (len < sizeof st->trailers_inline) {
        memcpy(st->trailers_inline, lines, len + 1);
        st->trailers = st->trailers_inline;
        return 0;
    }
    st->trailers = strdup(lines);
    return st->trailers ? 0 : -ENOMEM;
}

/* A writable copy of `lines`: in `stack` when it fits, else on the heap;
 * NULL for NULL or when out of memory. Freed with lines_free. */
static char *lines_copy(const char *lines, char *stack, size_t stack_len)
{
    if (!lines)
        return NULL;
    size_t len = strlen(lines);
    if (len < stack_len) {
        memcpy(stack, lines, len + 1);
        return stack;
    }
    return strdup(lines);
}

static void lines_free(char *copy, char *stack)
{
    if (copy != stack)
        free(copy);
}

/* Decimal `v` into `out` (NUL-terminated; `len` at least 21 for any
 * value), without snprintf's cost on every answer's :status. */
static void fmt_u64(char *out, size_t len, uint64_t v)
{
    char tmp[21];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    assert(n < len);
    for (size_t i = 0; i < n && i + 1 < len; i++)
        out[i] = tmp[n - 1 - i];
    out[n < len ? n : len - 1] = '\0';
}

/* Answer bytes of `st` the session has not taken yet. */
static size_t stream_unsent(const h2_stream_t *st)
{
    assert(st->resp_off <= st->resp.len);
    return st->resp.len - st->resp_off;
}

static void stream_free(h2_stream_t *st)
{
    h2_conn_t *h = st->h;
    assert(h->queued_bytes >= stream_unsent(st));
    h->queued_bytes -= stream_unsent(st);
    if (st->stalled) {
        assert(h->n_stalled > 0);
        h->n_stalled--;
    }
    dl_unlink(st->h->c->srv, st);
    buf_free(&st->path);
    buf_free(&st->content_type);
    buf_free(&st->authority);
    buf_free(&st->accept);
    buf_free(&st->body);
    buf_free(&st->resp);
    stream_drop_trailers(st);
    free(st);
}

static void stream_unlink(h2_conn_t *h, h2_stream_t *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    st->next = st->prev = NULL;
    h->n_streams--;
}

/* Ends the stream's request, if one is in flight, telling its owner. */
static void stream_end_request(h2_conn_t *h, h2_stream_t *st)
{
    if (st->slot == REQ_NONE)
        return;
    uint32_t slot = st->slot;
    st->slot = REQ_NONE;
    req_end_closed(h->c->srv, slot);
}

/* The owner of the stream's request neither answered nor parked it again
 * (req_tell_owner freed the slot): nobody will, so the stream is reset. */
static void stream_reset_unanswered(h2_conn_t *h, h2_stream_t *st)
{
    st->slot = REQ_NONE;
    nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* ---- the answer's body -------------------------------------------------- */

/* Appends "name: value\r\n" lines as header fields (names lower-cased in
 * place in `lines`, which the caller owns and keeps until the submit). */
static size_t add_lines(nghttp2_nv *nv, size_t n, size_t max, char *lines)
{
    char *p = lines;
    while (p && *p && n < max) {
        char *eol = strstr(p, "\r\n");
        if (!eol)
            break;
        char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            for (char *q = p; q < colon; q++)
                *q = (char)tolower((unsigned char)*q);
            char *v = colon + 1;
            while (v < eol && *v == ' ')
                v++;
            nv[n++] = (nghttp2_nv){(uint8_t *)p, (uint8_t *)v, (size_t)(colon - p),
                                   (size_t)(eol - v), NGHTTP2_NV_FLAG_NONE};
        }
        p = eol + 2;
    }
    return n;
}

static ssize_t read_answer(nghttp2_session *ng, int32_t stream_id, uint8_t *out, size_t length,
                           uint32_t *flags, nghttp2_data_source *source, void *user_data)
{
    h2_conn_t *h = user_data;
    h2_stream_t *st = source->ptr;
    size_t left = stream_unsent(st);
    size_t n = left < length ? left : length;
    if (n)
        memcpy(out, st->resp.data + st->resp_off, n);
    st->resp_off += n;
    assert(h->queued_bytes >= n);
    h->queued_bytes -= n;
    if (n && h->n_stalled)
        h->drain_ready = true; /* h2_flush looks whether a stalled stream may go on */
    if (st->resp_off < st->resp.len)
        return (ssize_t)n;
    buf_reset(&st->resp); /* all taken: the buffer starts over */
    st->resp_off = 0;
    if (!st->resp_end) {
        if (n)
            return (ssize_t)n;
        st->resp_deferred = true; /* h2_stream_send resumes it */
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (st->trailers) {
        nghttp2_nv nv[H2_MAX_RESPONSE_FIELDS];
        size_t nn = add_lines(nv, 0, H2_MAX_RESPONSE_FIELDS, st->trailers);
        /* The session copies the fields; the stream keeps `trailers` anyway. */
        if (nghttp2_submit_trailer(ng, stream_id, nv, nn) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

void h2_reply(http_conn_t *c, int32_t stream_id, bool is_head, const http_reply_t *r)
{
    h2_conn_t *h = c->h2;
    assert(h && !h->dead);
    h2_stream_t *st = stream_of(h, stream_id);
    if (!st)
        return; /* reset by the client meanwhile */
    /* Its slot was freed by the caller: the request is answered. */
    st->slot = REQ_NONE;
    dl_unlink(c->srv, st);
    if (st->resp_started && st->overflowed) {
        /* Its client asked on and on without reading (see
         * H2_STALLED_EXTRA_BYTES_MAX): what waits is dropped and the stream
         * reset; grpc-go's client reads ENHANCE_YOUR_CALM as
         * RESOURCE_EXHAUSTED. */
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_ENHANCE_YOUR_CALM);
        h2_flush(c);
        return;
    }
    if (st->resp_started) {
        /* A streamed answer: the rest of the body, then the trailers. */
        buf_append(&st->resp, r->body, r->body_len);
        if (!buf_failed(&st->resp))
            h->queued_bytes += r->body_len;
        if (buf_failed(&st->resp) || stream_keep_trailers(st, r->trailers) != 0) {
            log_warn("out of memory ending stream %d of %s; resetting it", (int)stream_id, c->peer);
            nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR);
        } else {
            st->resp_end = true;
            if (st->resp_deferred) {
                st->resp_deferred = false;
                nghttp2_session_resume_data(h->ng, stream_id);
            }
        }
        h2_flush(c);
        return;
    }

    char status[8], index[24];
    fmt_u64(status, sizeof status, (unsigned)r->status);
    nghttp2_nv nv[H2_MAX_RESPONSE_FIELDS];
    size_t n = 0;
    nv[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), 0};
    if (r->content_type)
        nv[n++] = (nghttp2_nv){(uint8_t *)"content-type", (uint8_t *)r->content_type, 12,
                               strlen(r->content_type), 0};
    if (r->has_etcd_index) {
        fmt_u64(index, sizeof index, r->etcd_index);
        nv[n++] = (nghttp2_nv){(uint8_t *)"x-etcd-index", (uint8_t *)index, 12, strlen(index), 0};
    }
    /* add_lines lower-cases names in place: the lines are copied, on the
     * stack when they fit (the session copies the fields on submit). */
    char extra_stack[H2_LINES_STACK_BYTES], trailers_stack[H2_LINES_STACK_BYTES];
    char *extra = lines_copy(r->extra_headers, extra_stack, sizeof extra_stack);
    char *trailers = NULL;
    size_t body_len = is_head ? 0 : r->body_len;
    if (r->extra_headers && !extra)
        goto oom;
    n = add_lines(nv, n, H2_MAX_RESPONSE_FIELDS, extra);
    if (body_len && h->queued_bytes > H2_CONN_UNREAD_BYTES_MAX) {
        /* See H2_CONN_UNREAD_BYTES_MAX: the client reads none of its answers. */
        lines_free(extra, extra_stack);
        log_info("HTTP/2: %s leaves %zu bytes of answers unread; closing", c->peer,
                 h->queued_bytes);
        if (nghttp2_session_terminate_session(h->ng, NGHTTP2_ENHANCE_YOUR_CALM) != 0)
            conn_close_later(c);
        h2_flush(c);
        return;
    }
    int rc;
    if (body_len == 0 && r->trailers) {
        /* Trailers-only: one HEADERS frame that ends the stream. */
        trailers = lines_copy(r->trailers, trailers_stack, sizeof trailers_stack);
        if (!trailers)
            goto oom;
        n = add_lines(nv, n, H2_MAX_RESPONSE_FIELDS, trailers);
        rc = nghttp2_submit_response(h->ng, stream_id, nv, n, NULL); /* copies the fields */
        lines_free(trailers, trailers_stack);
    } else {
        assert(stream_unsent(st) == 0); /* nothing was sent on it yet */
        buf_reset(&st->resp);
        st->resp_off = 0;
        buf_append(&st->resp, r->body, body_len);
        if (buf_failed(&st->resp) || stream_keep_trailers(st, r->trailers) != 0)
            goto oom;
        h->queued_bytes += body_len;
        st->resp_end = true;
        st->resp_started = true;
        nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_answer};
        rc = nghttp2_submit_response(h->ng, stream_id, nv, n, &dp);
    }
    lines_free(extra, extra_stack);
    if (rc != 0)
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR);
    h2_flush(c);
    return;
oom:
    lines_free(extra, extra_stack);
    log_warn("out of memory answering stream %d of %s; resetting it", (int)stream_id, c->peer);
    nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR);
    h2_flush(c);
}

/* ---- dispatch ----------------------------------------------------------- */

static int method_of(const uint8_t *name, size_t len)
{
    for (int m = 0; m <= HTTP_SOURCE; m++) {
        const char *s = http_method_str((enum http_method)m);
        if (strlen(s) == len && memcmp(s, name, len) == 0)
            return m;
    }
    return -1;
}

/* Answers a request the server refuses on its own (no slot yet). */
static void stream_refuse(h2_conn_t *h, h2_stream_t *st, int status, const char *cause)
{
    buf_t body = BUF_INIT;
    http_reply_t r = {.status = status};
    http1_render_error(h->c->srv, status, cause, &body, &r);
    r.body = body.data;
    r.body_len = buf_failed(&body) ? 0 : body.len;
    h2_reply(h->c, st->id, false, &r);
    buf_free(&body);
}

/* Whether the stream is a gRPC call (content-type application/grpc, or
 * application/grpc+proto and the like). */
static bool is_grpc(h2_stream_t *st)
{
    static const char ct[] = "application/grpc";
    const char *t = buf_cstr(&st->content_type);
    return !buf_failed(&st->content_type) && strncasecmp(t, ct, sizeof ct - 1) == 0 &&
           strchr("+;", t[sizeof ct - 1]) != NULL; /* '\0' too */
}

/* Refuses a gRPC call the server cannot take, as a gRPC server does: a
 * trailers-only answer with grpc-status (`msg` needs no percent-encoding:
 * printable ASCII without '%'). */
static void stream_refuse_grpc(h2_conn_t *h, h2_stream_t *st, int code, const char *msg)
{
    char trailers[200];
    snprintf(trailers, sizeof trailers, "grpc-status: %d\r\ngrpc-message: %s\r\n", code, msg);
    http_reply_t r = {.status = 200, .content_type = "application/grpc", .trailers = trailers};
    h2_reply(h->c, st->id, false, &r);
}

static void stream_dispatch(h2_conn_t *h, h2_stream_t *st)
{
    http_conn_t *c = h->c;
    http_server_t *s = c->srv;
    st->dispatched = true;
    dl_unlink(s, st); /* read whole; parking puts it on the parked list */
    if (buf_failed(&st->path) || buf_failed(&st->body) || buf_failed(&st->content_type) ||
        buf_failed(&st->authority) || buf_failed(&st->accept)) {
        stream_refuse(h, st, 500, "out of memory");
        return;
    }
    if (st->method < 0 || st->path.len == 0) {
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_PROTOCOL_ERROR);
        return;
    }
    if (!(s->cfg.allowed_methods & (1ull << st->method))) {
        stream_refuse(h, st, 405, "method not allowed");
        return;
    }
    uint32_t slot = req_slot_new_stream(s, c, st->id);
    if (slot == REQ_NONE) {
        stream_refuse(h, st, 500, "out of memory");
        return;
    }
    st->slot = slot;
    req_slot_t *q = &s->slots[slot];
    q->is_head = st->method == HTTP_HEAD;
    q->is_http10 = false;
    q->keep_alive = true;
    q->park_kind = HTTP_PARK_WATCH;
    char *path = st->path.data;
    char *query = strchr(path, '?');
    size_t qlen = 0;
    if (query) {
        *query++ = '\0';
        qlen = strlen(query);
    } else {
        query = "";
    }
    http_request_t req = {
        .method = st->method,
        .method_name = http_method_str((enum http_method)st->method),
        .path = path,
        .path_len = strlen(path),
        .query = query,
        .query_len = qlen,
        .body = buf_cstr(&st->body),
        .body_len = st->body.len,
        .content_type = buf_cstr(&st->content_type),
        .host = buf_cstr(&st->authority),
        .accept = buf_cstr(&st->accept),
        .is_tls = strcmp(c->tp.ops->name, "tls") == 0,
        .peer = c->peer,
        .peer_addr = c->peer_addr,
        .handle = req_handle(s, slot),
        .is_h2 = true,
        .is_streaming = st->streaming,
    };
    s->cfg.handler(s->cfg.handler_ctx, &req);
    if (c->closed || h->dead)
        return;
    if (st->slot == slot && s->slots[slot].state == REQ_HANDLING) {
        log_error("handler gave no answer to %s %s", req.method_name, req.path);
        req_slot_free(s, slot);
        st->slot = REQ_NONE;
        stream_refuse(h, st, 500, "no answer");
        return;
    }
    /* The request's bytes are not needed any more (an answer keeps its own). */
    buf_free(&st->path);
    buf_free(&st->body);
    buf_free(&st->content_type);
    buf_free(&st->authority);
    buf_free(&st->accept);
}

/* ---- nghttp2 callbacks -------------------------------------------------- */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    h2_conn_t *h = user_data;
    if (h->dead)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_stream_t *st = calloc(1, sizeof *st);
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    st->id = frame->hd.stream_id;
    st->h = h;
    st->slot = REQ_NONE;
    st->method = -1;
    st->dl = H2_DL_NONE;
    if (nghttp2_session_set_stream_user_data(ng, st->id, st) != 0) {
        free(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->n_streams++;
    /* Its head must be whole within --header-timeout, as an HTTP/1.1 one
     * (CONTINUATION frames that never end hold the whole connection). */
    dl_link(h->c->srv, st, H2_DL_HEADER);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    (void)flags;
    h2_conn_t *h = user_data;
    if (h->dead)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers of a request: dropped, as HTTP/1.1's are */
    h2_stream_t *st = stream_of(h, frame->hd.stream_id);
    if (!st)
        return 0;
    /* The same bound as an HTTP/1.1 head (RFC 9113's 32 bytes per field). */
    st->header_bytes += namelen + valuelen + 32;
    if (st->header_bytes > h->c->srv->cfg.max_header_bytes) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
#define IS(lit) (namelen == sizeof lit - 1 && memcmp(name, lit, namelen) == 0)
    if (IS(":path"))
        buf_append(&st->path, value, valuelen);
    else if (IS(":method"))
        st->method = method_of(value, valuelen);
    else if (IS(":authority") || IS("host"))
        buf_append(&st->authority, value, valuelen);
    else if (IS("content-type"))
        buf_append(&st->content_type, value, valuelen);
    else if (IS("accept")) {
        /* every Accept field is one list (RFC 9110), as on HTTP/1.1 */
        if (st->accept.len)
            buf_puts(&st->accept, ", ");
        buf_append(&st->accept, value, valuelen);
    }
#undef IS
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user_data)
{
    (void)flags;
    (void)ng;
    h2_conn_t *h = user_data;
    if (h->dead)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    h2_stream_t *st = stream_of(h, stream_id);
    if (st && st->streaming) {
        if (st->slot != REQ_NONE && st->body_fn)
            st->body_fn(req_handle(h->c->srv, st->slot), st->body_ctx, (const char *)data, len,
                        false);
        return 0;
    }
    if (!st || st->dispatched)
        return 0;
    size_t max = h->c->srv->cfg.max_body_bytes;
    if (st->body.len + len > max) {
        st->dispatched = true; /* nothing more of it is read */
        dl_unlink(h->c->srv, st);
        if (is_grpc(st)) {
            /* A gRPC client reads only a grpc-status: grpc-go's own answer
             * to a message past its limit, with the length its prefix
             * declares (the body is one length-prefixed message). */
            uint8_t pre[5] = {0};
            size_t have = st->body.len < 5 ? st->body.len : 5;
            if (have)
                memcpy(pre, st->body.data, have);
            memcpy(pre + have, data, len < 5 - have ? len : 5 - have);
            unsigned long mlen = (unsigned long)pre[1] << 24 | (unsigned long)pre[2] << 16 |
                                 (unsigned long)pre[3] << 8 | pre[4];
            char msg[120];
            snprintf(msg, sizeof msg, "grpc: received message larger than max (%lu vs. %zu)", mlen,
                     max > 5 ? max - 5 : 0);
            stream_refuse_grpc(h, st, 8 /* RESOURCE_EXHAUSTED */, msg);
        } else {
            stream_refuse(h, st, 413, NULL);
        }
        return 0;
    }
    buf_append(&st->body, data, len);
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    (void)ng;
    h2_conn_t *h = user_data;
    if (h->dead)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    h2_stream_t *st = stream_of(h, frame->hd.stream_id);
    if (!st)
        return 0;
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    http_server_t *s = h->c->srv;
    if (!st->dispatched && !end && frame->hd.type == NGHTTP2_HEADERS &&
        frame->headers.cat == NGHTTP2_HCAT_REQUEST && s->cfg.is_streaming &&
        !buf_failed(&st->path) && !buf_failed(&st->content_type) &&
        s->cfg.is_streaming(s->cfg.handler_ctx, buf_cstr(&st->path), buf_cstr(&st->content_type))) {
        st->streaming = true; /* handed over now; its body follows */
        stream_dispatch(h, st);
        return 0;
    }
    if (!end) {
        /* The head is in; its body must be within --body-timeout. */
        if (!st->dispatched && frame->hd.type == NGHTTP2_HEADERS)
            dl_link(s, st, H2_DL_BODY);
        return 0;
    }
    if (!st->dispatched) {
        stream_dispatch(h, st);
    } else if (st->streaming && st->slot != REQ_NONE && st->body_fn) {
        /* The client closed its side of a streaming request. */
        st->body_fn(req_handle(s, st->slot), st->body_ctx, "", 0, true);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    (void)error_code;
    h2_conn_t *h = user_data;
    if (h->dead)
        return 0; /* h2_conn_closed frees every stream itself */
    h2_stream_t *st = stream_of(h, stream_id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(ng, stream_id, NULL);
    stream_unlink(h, st);
    stream_end_request(h, st); /* reset by the client before its answer */
    stream_free(st);
    return 0;
}

/* ---- the session -------------------------------------------------------- */

static void h2_free(h2_conn_t *h)
{
    nghttp2_session_del(h->ng);
    while (h->streams) {
        h2_stream_t *st = h->streams;
        stream_unlink(h, st);
        stream_free(st);
    }
    free(h);
}

int h2_start(http_conn_t *c, const char *first, size_t len)
{
    assert(!c->h2 && len >= H2_CLIENT_PREFACE_BYTES);
    h2_conn_t *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->c = c;
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) {
        free(h);
        return -ENOMEM;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    int rc = nghttp2_session_server_new(&h->ng, cb, h);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) {
        free(h);
        return -ENOMEM;
    }
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_CONCURRENT_STREAMS},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)c->srv->cfg.max_header_bytes},
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, settings,
                                sizeof settings / sizeof settings[0]) != 0) {
        nghttp2_session_del(h->ng);
        free(h);
        return -ENOMEM;
    }
    c->h2 = h;
    h2_feed(c, first, len);
    return 0;
}

void h2_feed(http_conn_t *c, const char *data, size_t len)
{
    h2_conn_t *h = c->h2;
    assert(h && !h->in_recv);
    h->in_recv = true;
    ssize_t n = nghttp2_session_mem_recv(h->ng, (const uint8_t *)data, len);
    h->in_recv = false;
    if (h->dead) {
        h2_free(h); /* the connection closed while the session ran */
        return;
    }
    if (n < 0) {
        /* A protocol error: the session has queued GOAWAY with the error
         * where the protocol wants one; send what it has, then close. */
        log_info("HTTP/2 error from %s: %s", c->peer, nghttp2_strerror((int)n));
        c->close_after_write = true;
    }
    h2_flush(c);
}

/* Writes what the session has. It may run inside another connection's
 * callback (an owner answering from a registry notification): a failure
 * therefore closes the connection only at the end of the turn
 * (conn_close_later), never under that callback. */
static void h2_write_now(http_conn_t *c)
{
    h2_conn_t *h = c->h2;
    if (!h || h->in_recv || h->dead || c->closed || c->close_queued)
        return;
    c->h2_write = false; /* a queued visit finds nothing left to do */
    while (c->out.len - c->out_off < H2_MAX_UNSENT_BYTES) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->ng, &data);
        if (n < 0) {
            log_info("HTTP/2 error towards %s: %s", c->peer, nghttp2_strerror((int)n));
            conn_close_later(c);
            return;
        }
        if (n == 0)
            break;
        buf_append(&c->out, data, (size_t)n);
    }
    if (buf_failed(&c->out)) {
        log_warn("out of memory writing to %s; closing", c->peer);
        conn_close_later(c);
        return;
    }
    if (h->drain_ready && h->n_stalled && h->queued_bytes <= H2_CONN_QUEUED_BYTES_MAX / 2) {
        /* Stalled owners go on at the end of the turn (h2_resume_stalled),
         * outside whatever stack this flush runs in. */
        h->drain_ready = false;
        c->h2_resume = true;
        conn_schedule_resume(c);
    }
    /* After GOAWAY both ways the session is done: close once written. */
    if (!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng))
        c->close_after_write = true;
    conn_flush(c);
    conn_update_timer(c);
}

/*
 * Frames are gathered per connection and written once at the end of the
 * loop turn (the resume queue), as HTTP/1.1's answers are: a registry
 * event that wakes many watches on one connection, or many streams
 * answered in one turn, leave in one write instead of one per message.
 * A connection whose queued answers reach H2_FLUSH_QUEUED_BYTES is
 * written at once, so that the flow-control bounds above
 * (H2_STREAM_QUEUED_BYTES_MAX and the others) still count only what the
 * client holds back, never what merely waits for the end of the turn.
 */
void h2_flush(http_conn_t *c)
{
    h2_conn_t *h = c->h2;
    if (!h || h->dead || c->closed || c->close_queued)
        return;
    if (h->queued_bytes >= H2_FLUSH_QUEUED_BYTES && !h->in_recv) {
        h2_write_now(c);
        return;
    }
    c->h2_write = true;
    conn_schedule_resume(c);
}

void h2_write_queued(http_conn_t *c)
{
    c->h2_write = false;
    h2_write_now(c);
}

void h2_shutdown(http_conn_t *c)
{
    h2_conn_t *h = c->h2;
    http_server_t *s = c->srv;
    assert(h && !h->in_recv);
    /* No frames leave while the owners are told (a stream that closes on
     * the way would free its neighbour under this walk). */
    h->in_recv = true;
    for (h2_stream_t *st = h->streams; st && !h->dead; st = st->next) {
        if (st->slot == REQ_NONE)
            continue;
        req_slot_t *q = &s->slots[st->slot];
        if (q->state != REQ_PARKED || !q->park_fn)
            continue;
        if (req_tell_owner(s, st->slot, HTTP_PARK_SHUTDOWN))
            stream_reset_unanswered(h, st);
    }
    h->in_recv = false;
    if (h->dead) {
        h2_free(h); /* an owner closed the connection */
        return;
    }
    /* GOAWAY(NO_ERROR): no new streams; those open finish, then the
     * session wants nothing more and h2_flush closes the connection. */
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    h2_flush(c);
}

void h2_goaway(http_conn_t *c)
{
    h2_conn_t *h = c->h2;
    assert(h && !h->in_recv);
    /* GOAWAY(NO_ERROR) with the last stream seen; once it is written the
     * session wants nothing more and h2_flush closes the connection. */
    if (nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR) != 0) {
        conn_close(c);
        return;
    }
    h2_flush(c);
}

bool h2_has_streams(const http_conn_t *c)
{
    return c->h2 && c->h2->n_streams > 0;
}

void h2_conn_closed(http_conn_t *c)
{
    h2_conn_t *h = c->h2;
    if (!h)
        return;
    h->dead = true; /* callbacks from here on do nothing */
    c->h2 = NULL;
    /* Each owner is told once; its callback may answer other connections
     * (never this one: its handles are stale). */
    for (h2_stream_t *st = h->streams; st; st = st->next)
        stream_end_request(h, st);
    if (!h->in_recv)
        h2_free(h);
    /* else h2_feed frees it when nghttp2_session_mem_recv returns */
}

void h2_stream_parked(http_conn_t *c, int32_t stream_id)
{
    h2_conn_t *h = c->h2;
    h2_stream_t *st = h ? stream_of(h, stream_id) : NULL;
    if (!st)
        return;
    /* A stream that parks again goes to the tail, its wait from now. */
    dl_link(c->srv, st, H2_DL_PARKED);
}

/* A stream's head did not arrive whole in time: no other frame may come
 * on the connection until it does, so the connection ends, with
 * GOAWAY(PROTOCOL_ERROR) as nginx ends an HTTP/2 client that timed out. */
static void expire_header(h2_stream_t *st)
{
    h2_conn_t *h = st->h;
    http_conn_t *c = h->c;
    log_debug("closing HTTP/2 connection %s: a request head did not arrive within %llu ms", c->peer,
              (unsigned long long)c->srv->timers[TL_HEADER].duration_ms);
    if (nghttp2_session_terminate_session(h->ng, NGHTTP2_PROTOCOL_ERROR) != 0) {
        conn_close(c);
        return;
    }
    h2_flush(c);
}

/* A request's body did not arrive whole in time: that stream gets the
 * answer HTTP/1.1 gives (408), a gRPC call UNAVAILABLE, which its client
 * retries; the connection and its other streams go on. */
static void expire_body(h2_stream_t *st)
{
    h2_conn_t *h = st->h;
    char why[96];
    snprintf(why, sizeof why, "the request body did not arrive within %llu ms",
             (unsigned long long)h->c->srv->timers[TL_BODY].duration_ms);
    assert(!st->dispatched); /* dispatching takes it off the list */
    st->dispatched = true;   /* what more comes of it is dropped */
    if (is_grpc(st)) {
        char msg[110];
        snprintf(msg, sizeof msg, "disco: %s", why);
        stream_refuse_grpc(h, st, 14 /* UNAVAILABLE */, msg);
    } else {
        stream_refuse(h, st, 408, why);
    }
}

static void expire_parked(h2_stream_t *st)
{
    h2_conn_t *h = st->h;
    http_conn_t *c = h->c;
    http_server_t *s = c->srv;
    if (st->slot == REQ_NONE)
        return;
    req_slot_t *q = &s->slots[st->slot];
    if (q->state != REQ_PARKED || !q->park_fn)
        return;
    /* As in h2_shutdown: no frames leave (and no stream of this
     * connection is freed) while the owner runs. */
    h->in_recv = true;
    bool unanswered = req_tell_owner(s, st->slot, HTTP_PARK_TIMEOUT);
    h->in_recv = false;
    if (h->dead) {
        h2_free(h); /* the owner closed the connection */
        return;
    }
    if (unanswered)
        stream_reset_unanswered(h, st);
    h2_flush(c);
}

uint64_t h2_expire_streams(http_server_t *s, uint64_t now_ms)
{
    uint64_t next = 0;
    for (int dl = 0; dl < H2_DL_COUNT; dl++) {
        h2_stream_t *st;
        while ((st = s->h2_deadlines[dl].head) && st->deadline_ms <= now_ms) {
            dl_unlink(s, st);
            assert(!st->h->dead && !st->h->in_recv);
            if (dl == H2_DL_HEADER)
                expire_header(st);
            else if (dl == H2_DL_BODY)
                expire_body(st);
            else
                expire_parked(st);
        }
        if (st && (next == 0 || st->deadline_ms < next))
            next = st->deadline_ms;
    }
    return next;
}

int h2_stream_on_body(http_conn_t *c, int32_t stream_id, http_body_fn fn, void *ctx)
{
    h2_conn_t *h = c->h2;
    h2_stream_t *st = h ? stream_of(h, stream_id) : NULL;
    if (!st || !st->streaming)
        return -EINVAL;
    st->body_fn = fn;
    st->body_ctx = ctx;
    return 0;
}

int h2_stream_on_drain(http_conn_t *c, int32_t stream_id, http_drain_fn fn, void *ctx)
{
    h2_conn_t *h = c->h2;
    h2_stream_t *st = h ? stream_of(h, stream_id) : NULL;
    if (!st || !st->streaming)
        return -EINVAL;
    st->drain_fn = fn;
    st->drain_ctx = ctx;
    return 0;
}

int h2_stream_send(http_conn_t *c, int32_t stream_id, const http_reply_t *head, const char *data,
                   size_t len)
{
    h2_conn_t *h = c->h2;
    h2_stream_t *st = h ? stream_of(h, stream_id) : NULL;
    if (!st || st->slot == REQ_NONE || st->resp_end)
        return -EINVAL;
    if (st->overflowed)
        return -ENOBUFS;
    if (st->stalled) {
        st->stalled_extra += len;
        if (st->stalled_extra > H2_STALLED_EXTRA_BYTES_MAX) {
            st->overflowed = true; /* h2_reply resets it */
            return -ENOBUFS;
        }
    }
    buf_append(&st->resp, data, len);
    if (buf_failed(&st->resp))
        return -ENOMEM;
    h->queued_bytes += len;
    if (!st->resp_started) {
        if (!head)
            return -EINVAL;
        char status[8];
        fmt_u64(status, sizeof status, (unsigned)head->status);
        nghttp2_nv nv[2];
        size_t n = 0;
        nv[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), 0};
        if (head->content_type)
            nv[n++] = (nghttp2_nv){(uint8_t *)"content-type", (uint8_t *)head->content_type, 12,
                                   strlen(head->content_type), 0};
        nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_answer};
        if (nghttp2_submit_response(h->ng, stream_id, nv, n, &dp) != 0)
            return -ENOMEM;
        st->resp_started = true;
    } else if (st->resp_deferred) {
        st->resp_deferred = false;
        nghttp2_session_resume_data(h->ng, stream_id);
    }
    h2_flush(c);
    st = stream_of(h, stream_id); /* a reset sent on the way may have closed it */
    if (!st)
        return 0;
    /* What the session took is gone; what is left waits for the client. */
    if (!st->stalled && (stream_unsent(st) > H2_STREAM_QUEUED_BYTES_MAX ||
                         h->queued_bytes > H2_CONN_QUEUED_BYTES_MAX)) {
        st->stalled = true;
        st->stalled_extra = 0;
        h->n_stalled++;
    }
    return st->stalled ? HTTP_STREAM_STALLED : 0;
}

/* Whether stalled stream `st` may go on: it and its connection have
 * drained to half their bounds (half, so that a stream is not woken for
 * every frame the client lets through). */
static bool stream_may_go_on(const h2_conn_t *h, const h2_stream_t *st)
{
    return stream_unsent(st) <= H2_STREAM_QUEUED_BYTES_MAX / 2 &&
           h->queued_bytes <= H2_CONN_QUEUED_BYTES_MAX / 2;
}

void h2_resume_stalled(http_conn_t *c)
{
    h2_conn_t *h = c->h2;
    if (!h || h->dead)
        return;
    assert(!h->in_recv);
    http_server_t *s = c->srv;
    /* No frames leave while the owners run (as in h2_shutdown): no stream
     * closes, so none is freed under this walk; what they send is flushed
     * after it. */
    h->in_recv = true;
    for (h2_stream_t *st = h->streams; st && !h->dead; st = st->next) {
        if (!st->stalled || !stream_may_go_on(h, st))
            continue;
        st->stalled = false;
        h->n_stalled--;
        if (st->slot != REQ_NONE && st->drain_fn && s->slots[st->slot].state != REQ_FREE)
            st->drain_fn(req_handle(s, st->slot), st->drain_ctx);
    }
    h->in_recv = false;
    if (h->dead) {
        h2_free(h); /* an owner closed the connection */
        return;
    }
    h2_write_now(c); /* run from the resume queue: the turn ends here */
}
