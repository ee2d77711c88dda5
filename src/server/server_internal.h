/*
 * server_internal.h - what the files of server/ share; not an interface.
 *
 *   server.c     listener, accept and the connection limit, signals,
 *                graceful stop, the loop's hooks, the test seam
 *   conn.c       a connection: transport, buffers, timeouts, output,
 *                half-close, linger, close
 *   http1.c      HTTP/1.1 framing on top of libhttp-parser: limits,
 *                refusals, one request at a time, dispatch to the handler
 *   request.c    request slots: the handles (http_req_t) answers go through,
 *                parking, answering
 *   prepared.c   formatting an answer; answers shared by many requests
 *
 * Ownership: the server owns its connections; a connection owns its
 * transport and at most one request slot (HTTP/1.1 answers in order, so
 * one request is in flight); a slot is owned by the request's handler or
 * park owner through its handle until it is answered or its connection
 * ends, when the owner is told (HTTP_PARK_CLOSED).
 */
#ifndef DISCO_SERVER_SERVER_INTERNAL_H
#define DISCO_SERVER_SERVER_INTERNAL_H

#include <arpa/inet.h>
#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop/loop.h"
#include "server/http.h"
#include "server/transport.h"
#include "util/buf.h"

#define READ_CHUNK_BYTES (64 * 1024)
/* Pipelined bytes held while a request is parked or answers back up. */
#define MAX_PENDING_BYTES (64 * 1024)
/* Stop taking pipelined requests while this much output is unsent. */
#define MAX_UNSENT_BYTES (1024 * 1024)
/* After a last answer and our FIN, how long (and how many bytes) the
 * client's remaining input is read and dropped before the socket closes.
 * Closing with unread input would send a reset, which can destroy the
 * answer before the client reads it (a 413 while the body still flows). */
#define LINGER_MS (2 * 1000)
#define LINGER_MAX_BYTES (1024 * 1024)
/* No request slot. */
#define REQ_NONE UINT32_MAX

/* What an HTTP/2 stream waits for, each with its HTTP/1.1 counterpart's
 * duration: its head (TL_HEADER), its body (TL_BODY), its owner (TL_PARKED). */
enum h2_deadline { H2_DL_NONE = -1, H2_DL_HEADER, H2_DL_BODY, H2_DL_PARKED, H2_DL_COUNT };

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
enum hdr_slot {
    HDR_OTHER,
    HDR_CONTENT_TYPE,
    HDR_HOST,
    HDR_EXPECT,
    HDR_TRANSFER_ENCODING,
    HDR_ACCEPT
};

typedef struct http_conn http_conn_t;

enum req_state {
    REQ_FREE,     /* on the free list */
    REQ_HANDLING, /* its handler is running */
    REQ_PARKED,   /* waiting for its owner to answer */
};

/*
 * One request in flight. Everything an answer's shape depends on is
 * copied here when the request is dispatched, because the connection's
 * parser moves on (or is reset) before a parked answer is written.
 */
typedef struct req_slot {
    uint32_t gen;      /* bumped each time the slot is freed: old handles go stale */
    int32_t stream_id; /* an HTTP/2 stream of `conn`; 0: the connection's HTTP/1.1 request */
    uint8_t state;
    uint8_t park_kind; /* enum http_park_kind */
    bool is_head;
    bool is_http10;
    bool keep_alive;
    uint32_t next_free;
    http_conn_t *conn;
    http_park_fn park_fn; /* NULL while the owner is being told of an end */
    void *park_ctx;
} req_slot_t;

struct http_conn {
    loop_io_t io; /* first: the loop hands it back */
    transport_t tp;
    http_server_t *srv;
    http_parser parser;
    /* timers */
    enum timer_list tl;
    uint64_t deadline_ms;
    http_conn_t *tnext, *tprev;
    /* the request being read */
    buf_t url, body, content_type, host, expect, transfer_encoding;
    buf_t accept;   /* every Accept header, joined by ", " as RFC 9110 5.3 allows */
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
    bool keep_alive;   /* of the request just parsed */
    /* the HTTP/1.1 request in flight (a slot index), or REQ_NONE; an HTTP/2
     * connection keeps its requests' slots on its streams (h2.c) */
    uint32_t req;
    /* The protocol, decided by the first bytes: until then they wait in
     * `sniff` (a prefix of the HTTP/2 client preface, at most 24 bytes). */
    bool proto_known;
    uint8_t sniff_len;
    char sniff[24];
    struct h2_conn *h2; /* HTTP/2 state; NULL for HTTP/1.1 */
    bool h2_resume;     /* queued for h2_resume_stalled */
    bool h2_write;      /* queued for h2_write_queued (end of the turn) */
    /* bytes received but not yet parsed */
    buf_t pending;
    /* output */
    buf_t out;
    size_t out_off;
    bool close_after_write;
    bool lingering; /* answered, FIN sent: input is dropped until EOF */
    size_t lingered_bytes;
    long owner_count;  /* see http_conn_counter */
    bool read_eof;     /* the client half-closed: no more requests will come */
    bool rdhup_seen;   /* EPOLLRDHUP reported while reading is paused */
    bool close_queued; /* closed at the end of the turn (conn_close_later) */
    bool want_write;   /* EPOLLOUT wanted */
    bool read_paused;
    bool closed;
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
    loop_t *loop;
    loop_io_t listen_io, notify_io;
    /* With TLS on listen_io: a plaintext listener too (--plain-addr). */
    loop_io_t plain_listen_io;
    char plain_address[80];
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
    /* HTTP/2 streams waiting, one list per kind of wait (enum h2_deadline),
     * oldest first: each entry of a list waits the duration of the timer
     * list the same wait has on HTTP/1.1 (h2.c) */
    struct {
        struct h2_stream *head, *tail;
    } h2_deadlines[H2_DL_COUNT];
    http_conn_t *resume_head;
    http_conn_t *closed_head;
    /* request slots: handles index them */
    req_slot_t *slots;
    uint32_t n_slots, free_slot;
    uint64_t last_reject_log_ms;
    size_t rejected_since_log;
    bool stopping;
    uint64_t stop_deadline_ms;
};

/* ---- request.c ---- */
/* A slot for a request on `c`, or REQ_NONE when out of memory. */
uint32_t req_slot_new(http_server_t *s, http_conn_t *c);
/* The slot a handle names, or NULL when the handle is stale. */
req_slot_t *req_slot_of(http_req_t h);
http_req_t req_handle(http_server_t *s, uint32_t slot);
/* Frees a slot (its handles go stale); clears the connection's link. */
void req_slot_free(http_server_t *s, uint32_t slot);
/*
 * Tells the owner of parked request `slot` (state REQ_PARKED, park_fn set)
 * that its wait ended: `why` is HTTP_PARK_TIMEOUT or HTTP_PARK_SHUTDOWN
 * (a CLOSED end is req_end_closed's). The owner answers, parks it again,
 * or neither. Returns true when it did neither: nobody will answer, so the
 * slot is freed here and the caller ends what carried the request (closes
 * the HTTP/1.1 connection, resets the stream). The one place where an
 * owner hears of a timeout or a shutdown.
 */
bool req_tell_owner(http_server_t *s, uint32_t slot, enum http_park_end why);
/* Tells the owner of `c`'s parked request that it ended (`why`), if there
 * is one; after a CLOSED end the slot is freed. */
void req_end_parked(http_conn_t *c, enum http_park_end why);
/* A slot for HTTP/2 stream `stream_id` of `c` (c->req is left alone), or
 * REQ_NONE when out of memory. */
uint32_t req_slot_new_stream(http_server_t *s, http_conn_t *c, int32_t stream_id);
/* Frees `slot` (its handles go stale), then tells its owner, if it parked
 * it, that it ended (HTTP_PARK_CLOSED): its stream or connection is gone. */
void req_end_closed(http_server_t *s, uint32_t slot);
void req_slots_free_all(http_server_t *s);

/* ---- prepared.c ---- */
/* The status line, headers and (unless `is_head`) body of an answer. */
void format_reply(buf_t *o, const http_reply_t *r, bool is_head, bool close,
                  bool http10_keep_alive);
/* The preformatted bytes of `p` (a keep-alive HTTP/1.1 answer to a GET). */
const char *prepared_bytes(const http_prepared_t *p, size_t *len);

/* ---- conn.c ---- */
/* Takes a connected, non-blocking socket; over TLS with `tls` (NULL:
 * plain). 0, or -errno with the socket closed. */
int conn_add(http_server_t *s, int fd, const struct sockaddr_storage *sa, struct tls_ctx *tls);
void conn_close(http_conn_t *c);
/* Closes `c` at the end of the loop turn, outside every callback's stack:
 * for failures met while writing, which can happen inside the owner of
 * another request (a wake that answers many connections; an HTTP/2 stream
 * answered while its siblings' owners are being notified). Nothing more is
 * written meanwhile. */
void conn_close_later(http_conn_t *c);
void conn_flush(http_conn_t *c);
void conn_write_now(http_conn_t *c, const char *data, size_t len);
void conn_update_timer(http_conn_t *c);
/* The same, with a fresh deadline even when the state is unchanged. */
void conn_restart_timer(http_conn_t *c);
void conn_update_events(http_conn_t *c);
void conn_schedule_resume(http_conn_t *c);
/* Whether `c` has a request waiting for its owner. */
bool conn_is_parked(const http_conn_t *c);
/* After the request in flight on `c` is answered or ends: what comes next
 * (close after a half-close, resume pipelined bytes). */
void conn_request_done(http_conn_t *c, bool was_parked);
void conn_drain_resumes(http_server_t *s);
void conn_free_closed(http_server_t *s);
/* Runs the deadlines due at `now_ms`; returns the next one (0: none). */
uint64_t conn_expire_timers(http_server_t *s, uint64_t now_ms);
void format_peer(const struct sockaddr_storage *sa, char *out, size_t len, char *addr,
                 size_t addr_len);

/* ---- http1.c ---- */
void http1_init_settings(http_parser_settings *settings);
void http1_init_conn(http_conn_t *c);
/* Feeds bytes to the parser and handles each complete request; keeps what
 * must wait in `pending`. */
void http1_feed(http_conn_t *c, const char *data, size_t len);
/* Answers a request the server refuses itself, then closes the connection. */
void http1_refuse(http_conn_t *c, int status, const char *cause);
/* The answer to such a refusal, rendered by the configured renderer. */
void http1_render_error(http_server_t *s, int status, const char *cause, buf_t *body,
                        http_reply_t *r);
/* Empties the request buffers (keeping small ones when `keep`). */
void http1_request_reset(http_conn_t *c, bool keep);

/* ---- h2.c ---- */
/* Bytes that open an HTTP/2 connection with prior knowledge. */
#define H2_CLIENT_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_CLIENT_PREFACE_BYTES 24
/*
 * Serves `c` as HTTP/2 from now on, starting with the bytes already
 * received (`first`, which begin with the client preface; copied or
 * consumed before returning). The entry point for h2c (conn.c's sniff of
 * the preface) and for TLS once ALPN chose "h2". 0, or -ENOMEM (the caller
 * closes the connection).
 */
int h2_start(http_conn_t *c, const char *first, size_t len);
/* Feeds received bytes to the session; answers what completes. */
void h2_feed(http_conn_t *c, const char *data, size_t len);
/* Asks for the session's frames to be written: at the end of the loop
 * turn (the resume queue, c->h2_write), so that every answer and event of
 * one turn leaves in one write per connection; at once when the
 * connection's queued answers reach a bound (h2.c, H2_FLUSH_QUEUED_BYTES). */
void h2_flush(http_conn_t *c);
/* Moves what the session has to send into `c->out` (bounded) and writes
 * it; run from the resume queue for c->h2_write. */
void h2_write_queued(http_conn_t *c);
/* The server is stopping: parked streams' owners are told
 * (HTTP_PARK_SHUTDOWN), then GOAWAY(NO_ERROR); the connection closes when
 * its last stream is done (or at the end of the grace period). */
void h2_shutdown(http_conn_t *c);
/* Ends the connection politely (GOAWAY NO_ERROR, then close): idle. */
void h2_goaway(http_conn_t *c);
/* Whether streams are open (an HTTP/2 connection then has no idle timer). */
bool h2_has_streams(const http_conn_t *c);
/* Answers stream `stream_id` (its slot already freed by the caller). */
void h2_reply(http_conn_t *c, int32_t stream_id, bool is_head, const http_reply_t *r);
/* The streaming API (http.h) on stream `stream_id` of `c`. */
int h2_stream_on_body(http_conn_t *c, int32_t stream_id, http_body_fn fn, void *ctx);
int h2_stream_send(http_conn_t *c, int32_t stream_id, const http_reply_t *head, const char *data,
                   size_t len);
int h2_stream_on_drain(http_conn_t *c, int32_t stream_id, http_drain_fn fn, void *ctx);
/* Tells the owners of stalled streams that have drained (http_stream_on_drain);
 * run from the resume queue (c->h2_resume), outside every other callback. */
void h2_resume_stalled(http_conn_t *c);
/* The connection is closing: every stream's owner is told (once) and the
 * session freed. */
void h2_conn_closed(http_conn_t *c);
/* The stream's request parked (http_park): its wait deadline starts now. */
void h2_stream_parked(http_conn_t *c, int32_t stream_id);
/* Ends the waits of HTTP/2 streams that are over: a head not whole in time
 * ends its connection, a body its stream (408, gRPC UNAVAILABLE), a parked
 * stream's owner is told (HTTP_PARK_TIMEOUT). Returns the next deadline, 0
 * when no stream waits. */
uint64_t h2_expire_streams(http_server_t *s, uint64_t now_ms);

#endif
