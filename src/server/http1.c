/*
 * http1.c - HTTP/1.1 framing over libhttp-parser: the parser's callbacks,
 * the limits and refusals checked while a request arrives, and the hand-off
 * of each complete request to the handler.
 *
 * Bytes are read into one loop-wide buffer and fed to the parser at once;
 * only the URL, the few headers disco uses and the body are copied, so an
 * idle or parked connection owns no read buffer. One request is handled at
 * a time: while one is in flight (parked or held), later pipelined bytes
 * wait unparsed, which keeps answers in request order without a queue.
 */
#include <assert.h>
#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/server_internal.h"
#include "util/log.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

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
        conn_restart_timer(c);
    else
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
                 {"transfer-encoding", HDR_TRANSFER_ENCODING},
                 {"accept", HDR_ACCEPT}};
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
        else if (c->hslot == HDR_ACCEPT && c->accept.len)
            buf_puts(&c->accept, ", ");
    }
    buf_t *dst = c->hslot == HDR_CONTENT_TYPE        ? &c->content_type
                 : c->hslot == HDR_HOST              ? &c->host
                 : c->hslot == HDR_EXPECT            ? &c->expect
                 : c->hslot == HDR_TRANSFER_ENCODING ? &c->transfer_encoding
                 : c->hslot == HDR_ACCEPT            ? &c->accept
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
        buf_failed(&c->expect) || buf_failed(&c->transfer_encoding) || buf_failed(&c->accept))
        return refuse(c, 500, "out of memory");
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > s->cfg.max_body_bytes)
        return refuse(c, 413, NULL);
    if (c->expect.len && strcasecmp(buf_cstr(&c->expect), "100-continue") == 0)
        buf_puts(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
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

void http1_request_reset(http_conn_t *c, bool keep)
{
    request_buf_done(&c->url, keep);
    request_buf_done(&c->body, keep);
    request_buf_done(&c->content_type, keep);
    request_buf_done(&c->host, keep);
    request_buf_done(&c->expect, keep);
    request_buf_done(&c->transfer_encoding, keep);
    request_buf_done(&c->accept, keep);
    c->message_done = false;
    c->in_request = false;
    c->headers_done = false;
}

/* The answer to a request the server refuses itself, rendered by the
 * configured renderer (see http_error_fn). `extra_headers` may be NULL. */
void http1_render_error(http_server_t *s, int status, const char *cause, buf_t *body,
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
void http1_refuse(http_conn_t *c, int status, const char *cause)
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
    http1_render_error(s, status, text, &body, &r);
    /* No request is in flight: a refusal comes before any handler, or
     * instead of the answer a handler failed to give (its slot is gone). */
    assert(c->req == REQ_NONE);
    c->close_after_write = true;
    c->in_request = false; /* nothing more is parsed: the stream is not trusted */
    buf_free(&c->pending);
    bool is_head = c->headers_done && c->parser.method == HTTP_HEAD;
    bool is_http10 = c->parser.http_major == 1 && c->parser.http_minor == 0;
    format_reply(&c->out, &r, is_head, true, is_http10);
    buf_free(&body);
    if (buf_failed(&c->out)) {
        conn_close(c);
        return;
    }
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
        buf_failed(&c->host) || buf_failed(&c->accept)) {
        http1_refuse(c, 500, "out of memory");
        return;
    }
    size_t path_off, plen, query_off, qlen;
    if (!split_target(buf_cstr(&c->url), c->url.len, &path_off, &plen, &query_off, &qlen)) {
        http1_refuse(c, 400, "malformed request target");
        return;
    }
    uint32_t slot = req_slot_new(s, c);
    if (slot == REQ_NONE) {
        http1_refuse(c, 500, "out of memory");
        return;
    }
    /* What the answer's shape depends on is the request's own, copied
     * now: the parser moves on before a parked answer is written. */
    req_slot_t *q = &s->slots[slot];
    q->is_head = c->parser.method == HTTP_HEAD;
    q->is_http10 = c->parser.http_major == 1 && c->parser.http_minor == 0;
    q->keep_alive = c->keep_alive;
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
        .accept = buf_cstr(&c->accept),
        .peer = c->peer,
        .peer_addr = c->peer_addr,
        .handle = req_handle(s, slot),
        .is_tls = strcmp(c->tp.ops->name, "tls") == 0,
    };
    s->cfg.handler(s->cfg.handler_ctx, &req);
    if (c->closed)
        return; /* closed while answering (a write failed) */
    if (c->req == slot && s->slots[slot].state == REQ_HANDLING) {
        log_error("handler gave no answer to %s %s", req.method_name, req.path);
        req_slot_free(s, slot);
        http1_refuse(c, 500, "no answer");
        return;
    }
    http1_request_reset(c, !conn_is_parked(c));
}

/* Whether `ch` may appear in a method name (RFC 9110's tchar). */
static bool is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/*
 * libhttp-parser says "invalid method" both for a well-formed method it
 * does not know ("BREW / HTTP/1.1": 501, the method is not implemented) and
 * for bytes that are no request line at all (a TLS ClientHello, binary
 * junk: 400, the request is malformed). A method is a token followed by a
 * space; `data` starts where this request's bytes were fed from.
 */
static bool looks_like_method(const char *data, size_t len)
{
    size_t i = 0;
    while (i < len && (data[i] == '\r' || data[i] == '\n'))
        i++; /* empty lines before a request are allowed */
    size_t start = i;
    while (i < len && is_tchar((unsigned char)data[i]))
        i++;
    return i > start && (i == len || data[i] == ' ');
}

/* Status and cause for a request libhttp-parser refused. */
static int parse_error_status(const http_conn_t *c, enum http_errno err, const char *data,
                              size_t len, const char **cause)
{
    *cause = c->parse_error_cause;
    if (c->parse_error_status)
        return c->parse_error_status;
    switch (err) {
    case HPE_INVALID_METHOD:
        if (!looks_like_method(data, len)) {
            *cause = "malformed request line (is this TLS or another protocol on a plain "
                     "HTTP port?)";
            return 400;
        }
        *cause = "method not implemented";
        return 501;
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
 * keeps the rest in `pending`) while a request is in flight or output backs
 * up.
 */
void http1_feed(http_conn_t *c, const char *data, size_t len)
{
    /* Nothing after a closing answer (a refusal, or the last request before
     * a stop) starts another request. */
    while (len > 0 && !c->lingering && !c->closed && !(c->close_after_write && !c->in_request)) {
        /* Bytes that waited go first: new bytes queue behind them, so a
         * request is never parsed ahead of one that arrived earlier. */
        if (c->req != REQ_NONE || c->out.len - c->out_off > MAX_UNSENT_BYTES || c->pending.len) {
            buf_append(&c->pending, data, len);
            if (c->pending.len > MAX_PENDING_BYTES && !c->read_paused) {
                c->read_paused = true; /* EPOLLRDHUP still reports a close */
                conn_update_events(c);
            }
            if (c->req == REQ_NONE)
                conn_schedule_resume(c);
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
            int status = parse_error_status(c, err, data, len, &cause);
            http1_refuse(c, status, cause);
            return;
        } else if (n < len) {
            /* The parser stops early only for a protocol switch. */
            http1_refuse(c, 400, "protocol upgrade is not supported");
            return;
        } else if (c->in_request && !c->headers_done &&
                   c->parser.nread > c->srv->cfg.max_header_bytes) {
            http1_refuse(c, 431, NULL);
            return;
        }
        data += n;
        len -= n;
        if (c->message_done) {
            dispatch(c);
            if (c->closed || c->close_after_write || c->lingering)
                return; /* nothing after a "Connection: close" answer */
        }
    }
}

void http1_init_conn(http_conn_t *c)
{
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
}

void http1_init_settings(http_parser_settings *st)
{
    memset(st, 0, sizeof *st);
    st->on_message_begin = on_message_begin;
    st->on_url = on_url;
    st->on_header_field = on_header_field;
    st->on_header_value = on_header_value;
    st->on_headers_complete = on_headers_complete;
    st->on_body = on_body;
    st->on_message_complete = on_message_complete;
}
