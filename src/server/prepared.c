/*
 * prepared.c - an answer's bytes: the status line and headers written by
 * hand (this runs for every answer), and answers formatted once and shared
 * by every request one event wakes.
 */
#include <stdlib.h>
#include <string.h>

#include "server/server_internal.h"

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 303: return "See Other";
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

void format_reply(buf_t *o, const http_reply_t *r, bool is_head, bool close, bool http10_keep_alive)
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

const char *prepared_bytes(const http_prepared_t *p, size_t *len)
{
    *len = p->len;
    return p->bytes;
}
