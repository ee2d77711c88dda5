/*
 * client.c - the gRPC client of etcd's v3 API (client.h), on disco's loop.
 *
 * One connection at a time: a non-blocking TCP socket (behind the transport
 * seam, server/transport.h, so TLS is one more transport), an nghttp2
 * client session over it (h2c with prior knowledge for http://), every
 * unary call as one stream, and at most one Watch stream. nghttp2 does no
 * I/O of its own: the send callback writes through the transport, bytes
 * read are fed to nghttp2_session_mem_recv.
 *
 * Callbacks to the owner never run inside nghttp2 (an owner may free the
 * client or start calls from them): the session callbacks only record
 * what happened (a call's outcome moves it to the `done` list, Watch
 * stream bytes are appended to `win`), and deliver() hands it out after
 * mem_recv returns, from the loop's I/O callback or the client's timer.
 *
 * When a call counts as sent (UNSENT vs UNKNOWN): the moment nghttp2 asks
 * for the bytes of its message (the DATA frame's read callback). A gRPC
 * server acts on a message only when it has all of it, and before that
 * moment no byte of it exists anywhere but here. A call whose deadline
 * passes before that is detached from its stream, so the read callback
 * finds nothing and nghttp2 resets the stream instead of sending the
 * message: an UNSENT answer is never contradicted by a late write. Calls
 * that were not sent when a connection ends, or that etcd refused without
 * processing (REFUSED_STREAM, e.g. streams past a GOAWAY), wait for the
 * next connection within their deadline.
 *
 * Deadlines, dialing, back-off and keep-alive PINGs are checked by one
 * timer source per client, which scans the calls in flight (a backend has
 * a handful; no heap needed).
 */
#include "etcd/client.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uthash.h>

#include "etcd/grpc_frame.h"
#include "loop/loop.h"
#include "server/transport.h"
#include "server/transport_tls.h"
#include "util/buf.h"
#include "util/log.h"

/* Per-stream and per-connection receive windows: a Range over a whole
 * prefix may be megabytes, and etcd should not wait for WINDOW_UPDATEs. */
#define ETCD_STREAM_WINDOW_BYTES (16 * 1024 * 1024)
#define ETCD_CONN_WINDOW_BYTES (64 * 1024 * 1024)
/* Bytes read per read(); at least one TLS record. */
#define ETCD_READ_CHUNK_BYTES 16384
/* Back-off between rounds over all endpoints (each failed round doubles it). */
#define ETCD_BACKOFF_MIN_MS 50
#define ETCD_BACKOFF_MAX_MS 2000
/* Defaults for a zero dial timeout / keep-alive in the configuration. */
#define ETCD_DEFAULT_DIAL_TIMEOUT_MS 2000
#define ETCD_DEFAULT_KEEPALIVE_MS 5000
/* Header fields of one request: the fixed ones plus token/hasleader. */
#define ETCD_MAX_REQUEST_FIELDS 10

typedef struct etcd_endpoint {
    char *url; /* as configured, for etcd_client_endpoint() */
    char *host, *port, *authority;
    bool is_tls;
} etcd_endpoint_t;

enum conn_state {
    CONN_BACKOFF,     /* no socket; the next dial at retry_at_ms */
    CONN_CONNECTING,  /* connect() in progress */
    CONN_HANDSHAKING, /* TLS handshake in progress (the session exists, sends nothing) */
    CONN_UP,          /* the session is live */
};

typedef struct etcd_call etcd_call_t;
struct etcd_call {
    etcd_client_t *c;
    const char *path;
    const ProtobufCMessageDescriptor *resp_desc;
    uint8_t *req; /* the framed message, owned */
    size_t req_len, req_off;
    uint64_t deadline_ms;
    int32_t stream_id;   /* -1 while waiting for a connection */
    bool is_write;       /* Txn, leases, Compact: see grpc_code_leaves_write_unknown */
    bool is_internal;    /* Auth/Authenticate of this connection: no token, goes first */
    bool has_auth_retry; /* sent again once after "invalid auth token" */
    bool is_sent;        /* message bytes were handed to a connection */
    buf_t resp;          /* DATA received */
    int grpc_status;     /* -1 until the trailers (or trailers-only headers) */
    char *grpc_message;
    int http_status;
    /* outcome, once on the done list */
    etcd_outcome_t outcome;
    int code;
    char *reason;
    etcd_done_fn done;
    void *ctx;
    etcd_call_t *next, *prev; /* `active` or `done` list */
    UT_hash_handle hh;        /* by_stream, while stream_id >= 0 */
};

struct etcd_watch {
    etcd_client_t *c;
    int64_t id;      /* client-chosen watch_id (etcd >= 3.4 honours it) */
    uint8_t *create; /* the framed WatchRequest, owned */
    size_t create_len;
    bool is_sent;           /* created on the current Watch stream */
    bool is_answered;       /* etcd answered its create (or sent it anything) */
    bool is_canceled;       /* by the owner: free, no more callbacks */
    bool is_ended;          /* by the stream or etcd: one last callback, then free */
    bool is_final_canceled; /* the resp == NULL callback is replaced by etcd's cancel */
    etcd_watch_fn fn;
    void *ctx;
    etcd_watch_t *next, *prev;
};

struct etcd_client {
    loop_t *loop;
    etcd_endpoint_t *eps;
    size_t n_eps, ep_idx;
    char *user, *password, *cacert, *cert, *key;
    unsigned dial_timeout_ms, keepalive_ms;
    tls_ctx_t *tls; /* when an endpoint is https:// */
    char *token;    /* Auth/Authenticate's answer on this connection */
    bool is_authed, is_auth_in_flight;

    enum conn_state state;
    uint64_t retry_at_ms, dial_deadline_ms;
    unsigned backoff_ms;
    size_t failures_in_round; /* endpoints failed since the last connection was up */
    loop_io_t io;
    transport_t t;
    bool has_transport;
    nghttp2_session *ng;
    bool write_blocked;
    /* etcd's SETTINGS frame arrived: it speaks HTTP/2 and, over TLS, has
     * accepted us (TLS 1.3 refuses a client certificate only after the
     * client's handshake is done). No call is sent before. */
    bool has_peer_settings;
    uint64_t last_rx_ms, ping_sent_ms;

    etcd_call_t *active; /* waiting or on a stream */
    etcd_call_t *done, *done_tail;
    etcd_call_t *by_stream; /* uthash on stream_id */

    etcd_watch_t *watches;
    int64_t next_watch_id;
    int32_t watch_sid; /* the Watch stream, or -1 */
    buf_t wout;        /* framed WatchRequests not yet taken by nghttp2 */
    bool wout_deferred;
    buf_t win; /* Watch stream bytes not yet parsed */
    bool watch_stream_closed;
    int watch_grpc_status; /* from the Watch stream's trailers, or -1 */
    int watch_http_status; /* its :status, or 0 */
    /* The connection ends for a member's sickness (no leader), not the
     * network: the next dial counts towards the back-off. */
    bool is_member_sick;

    int busy;       /* inside deliver() or an entry point */
    bool is_doomed; /* etcd_client_free() ran while busy */
};

static void flush(etcd_client_t *c);
static void fail_connection(etcd_client_t *c, const char *why);
static void deliver(etcd_client_t *c);
static void client_destroy(etcd_client_t *c);
static void start_auth(etcd_client_t *c);

/* ---- calls -------------------------------------------------------------- */

static void list_unlink(etcd_call_t **head, etcd_call_t *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        *head = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->next = k->prev = NULL;
}

static void call_free(etcd_call_t *k)
{
    free(k->req);
    buf_free(&k->resp);
    free(k->grpc_message);
    free(k->reason);
    free(k);
}

/* Takes the call off its stream: nghttp2's callbacks for that stream find
 * nothing from now on (a DATA read then resets the stream). */
static void call_detach(etcd_call_t *k)
{
    if (k->stream_id >= 0) {
        HASH_DEL(k->c->by_stream, k);
        k->stream_id = -1;
    }
}

/* Moves an active call to the done list with its outcome (delivered by
 * deliver(), outside nghttp2). */
static void call_finish(etcd_call_t *k, etcd_outcome_t outcome, int code, const char *reason)
{
    etcd_client_t *c = k->c;
    call_detach(k);
    list_unlink(&c->active, k);
    k->outcome = outcome;
    k->code = code;
    free(k->reason);
    k->reason = strdup(reason ? reason : "");
    /* out of memory: the callback then gets a fixed text (deliver) */
    k->prev = c->done_tail;
    k->next = NULL;
    if (c->done_tail)
        c->done_tail->next = k;
    else
        c->done = k;
    c->done_tail = k;
}

/* Back to waiting for a connection (nothing of it was sent). */
static void call_requeue(etcd_call_t *k)
{
    assert(!k->is_sent);
    call_detach(k);
    buf_reset(&k->resp);
    k->req_off = 0;
    k->grpc_status = -1;
    k->http_status = 0;
    free(k->grpc_message);
    k->grpc_message = NULL;
}

/*
 * gRPC errors that do not say whether a write was applied: etcd answers
 * "request timed out" (also "... due to previous leader failure" and "...
 * due to connection lost"), "server stopped", "leader changed" as
 * UNAVAILABLE, and a stream cut short is CANCELLED, DEADLINE_EXCEEDED,
 * UNKNOWN or INTERNAL. For a write these are ETCD_UNKNOWN (code and
 * message kept), so the owner never takes one for "not applied".
 */
static bool grpc_code_leaves_write_unknown(int code)
{
    return code == 1 /* CANCELLED */ || code == 2 /* UNKNOWN */ ||
           code == 4 /* DEADLINE_EXCEEDED */ || code == 13 /* INTERNAL */ ||
           code == 14 /* UNAVAILABLE */;
}

/* The stream of a call closed: its outcome from what arrived. */
static void call_stream_closed(etcd_call_t *k, uint32_t error_code)
{
    char why[96];
    etcd_client_t *c = k->c;
    if (k->grpc_status == 16 /* UNAUTHENTICATED */ && c->user && !k->is_internal &&
        !k->has_auth_retry && k->grpc_message && strstr(k->grpc_message, "invalid auth token")) {
        /* Simple tokens expire (etcd's --auth-token-ttl) and are one
         * member's: etcd checked the token before anything else, so the
         * call was not applied; it goes again once with a new token. */
        k->has_auth_retry = true;
        k->is_sent = false;
        call_requeue(k);
        free(c->token);
        c->token = NULL;
        c->is_authed = false;
        return;
    }
    if (k->grpc_status == 0) {
        call_finish(k, ETCD_OK, 0, "");
    } else if (k->grpc_status > 0) {
        const char *msg = k->grpc_message ? k->grpc_message : "";
        if (k->is_write && grpc_code_leaves_write_unknown(k->grpc_status))
            call_finish(k, ETCD_UNKNOWN, k->grpc_status, msg);
        else
            call_finish(k, ETCD_GRPC, k->grpc_status, msg);
    } else if (!k->is_sent || error_code == NGHTTP2_REFUSED_STREAM) {
        /* Not processed (RFC 9113 8.7): it may go out again. */
        k->is_sent = false;
        call_requeue(k);
    } else {
        if (k->http_status && k->http_status != 200)
            snprintf(why, sizeof why, "etcd answered HTTP status %d", k->http_status);
        else
            snprintf(why, sizeof why, "the stream ended without a gRPC status (h2 error %u)",
                     (unsigned)error_code);
        call_finish(k, ETCD_UNKNOWN, 0, why);
    }
}

/* ---- the Watch stream --------------------------------------------------- */

/* Whether a watch the owner canceled may be freed: not while etcd still
 * owes the answer to its create, which a refused create carries without
 * our watch_id (deliver_watch_response matches it by order). */
static bool watch_may_free(const etcd_watch_t *w)
{
    return !w->is_sent || w->is_answered || w->is_ended;
}

static void watch_free(etcd_watch_t *w)
{
    etcd_client_t *c = w->c;
    if (w->prev)
        w->prev->next = w->next;
    else
        c->watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    free(w->create);
    free(w);
}

/* Appends a framed message to the Watch stream and wakes its DATA source. */
static int watch_stream_queue(etcd_client_t *c, const uint8_t *msg, size_t len)
{
    assert(c->watch_sid >= 0);
    buf_append(&c->wout, msg, len);
    if (buf_failed(&c->wout))
        return -ENOMEM;
    if (c->wout_deferred) {
        c->wout_deferred = false;
        nghttp2_session_resume_data(c->ng, c->watch_sid);
    }
    return 0;
}

static ssize_t watch_read(nghttp2_session *ng, int32_t stream_id, uint8_t *out, size_t length,
                          uint32_t *flags, nghttp2_data_source *source, void *user_data)
{
    (void)ng, (void)flags, (void)source;
    etcd_client_t *c = user_data;
    if (stream_id != c->watch_sid)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = c->wout.len < length ? c->wout.len : length;
    if (n == 0) {
        c->wout_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    memcpy(out, c->wout.data, n);
    buf_consume(&c->wout, n);
    return (ssize_t)n;
}

/* Sends the create requests of watches not yet on the stream. */
static void watch_send_creates(etcd_client_t *c)
{
    for (etcd_watch_t *w = c->watches; w; w = w->next) {
        if (w->is_sent || w->is_canceled || w->is_ended)
            continue;
        if (watch_stream_queue(c, w->create, w->create_len) < 0) {
            fail_connection(c, "out of memory");
            return;
        }
        w->is_sent = true;
    }
}

static int submit_request(etcd_client_t *c, const char *path, bool is_watch, bool with_token,
                          nghttp2_data_provider *prd, void *stream_data);

/* Opens the Watch stream when a watch wants one and the connection can. */
static void watch_stream_open(etcd_client_t *c)
{
    if (c->state != CONN_UP || !c->has_peer_settings || c->watch_sid >= 0 ||
        (c->user && !c->is_authed) || !nghttp2_session_check_request_allowed(c->ng))
        return;
    bool wanted = false;
    for (etcd_watch_t *w = c->watches; w; w = w->next)
        wanted |= !w->is_sent && !w->is_canceled && !w->is_ended;
    if (!wanted)
        return;
    nghttp2_data_provider prd = {.source.ptr = c, .read_callback = watch_read};
    int32_t sid = submit_request(c, "/etcdserverpb.Watch/Watch", true, true, &prd, NULL);
    if (sid < 0) {
        fail_connection(c, "cannot open the Watch stream");
        return;
    }
    c->watch_sid = sid;
    c->watch_stream_closed = false;
    c->watch_grpc_status = -1;
    c->watch_http_status = 0;
    buf_reset(&c->wout);
    buf_reset(&c->win);
    c->wout_deferred = false;
    watch_send_creates(c);
}

/* The Watch stream is gone (and its last bytes handed out): every watch
 * created on it ends. */
static void watch_stream_end(etcd_client_t *c)
{
    c->watch_sid = -1;
    c->watch_stream_closed = false;
    buf_reset(&c->wout);
    buf_reset(&c->win); /* a message cut short by the end, if any */
    c->wout_deferred = false;
    for (etcd_watch_t *w = c->watches; w; w = w->next)
        if (w->is_sent)
            w->is_ended = true;
}

/* ---- nghttp2 callbacks -------------------------------------------------- */

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t length, int flags,
                       void *user_data)
{
    (void)ng, (void)flags;
    etcd_client_t *c = user_data;
    ssize_t n = transport_send(&c->t, (const char *)data, length);
    if (n == -EAGAIN) {
        c->write_blocked = true;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (n < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return n;
}

static ssize_t call_read(nghttp2_session *ng, int32_t stream_id, uint8_t *out, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *user_data)
{
    (void)ng, (void)source;
    etcd_client_t *c = user_data;
    etcd_call_t *k;
    HASH_FIND_INT(c->by_stream, &stream_id, k);
    if (!k) /* answered (deadline) before this: reset, never send it */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    k->is_sent = true;
    size_t left = k->req_len - k->req_off;
    size_t n = left < length ? left : length;
    memcpy(out, k->req + k->req_off, n);
    k->req_off += n;
    if (k->req_off == k->req_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    (void)ng, (void)flags;
    etcd_client_t *c = user_data;
    int32_t sid = frame->hd.stream_id;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (sid == c->watch_sid) {
        /* trailers end the stream: its close does the rest */
        if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0)
            c->watch_grpc_status = atoi((const char *)value);
        else if (namelen == 7 && memcmp(name, ":status", 7) == 0)
            c->watch_http_status = atoi((const char *)value);
        return 0;
    }
    etcd_call_t *k;
    HASH_FIND_INT(c->by_stream, &sid, k);
    if (!k)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        k->http_status = atoi((const char *)value);
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        k->grpc_status = atoi((const char *)value);
        if (k->grpc_status < 0)
            k->grpc_status = 2; /* UNKNOWN: nonsense from the peer */
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        free(k->grpc_message);
        k->grpc_message = grpc_message_decode((const char *)value, valuelen);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user_data)
{
    (void)flags;
    etcd_client_t *c = user_data;
    buf_t *into;
    if (stream_id == c->watch_sid) {
        into = &c->win;
    } else {
        etcd_call_t *k;
        HASH_FIND_INT(c->by_stream, &stream_id, k);
        if (!k)
            return 0;
        into = &k->resp;
    }
    if (into->len + len > GRPC_MAX_RECV_MESSAGE_BYTES + GRPC_PREFIX_BYTES) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
        return 0;
    }
    buf_append(into, data, len);
    if (buf_failed(into))
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* the connection ends: calls see UNKNOWN */
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    etcd_client_t *c = user_data;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        nghttp2_session_get_stream_local_close(ng, frame->hd.stream_id) == 0) {
        /* The server's trailers end the call even while our side still has
         * (or may have) something to send: grpc-go then resets the stream
         * itself, a server that does not would leave it open forever. */
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
    }
    if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK) &&
        !c->has_peer_settings) {
        c->has_peer_settings = true; /* flush() after mem_recv sends the calls */
        c->failures_in_round = 0;    /* etcd is there: the back-off starts over */
        c->backoff_ms = ETCD_BACKOFF_MIN_MS;
        log_info("etcd: connected to %s", c->eps[c->ep_idx].url);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    (void)ng;
    etcd_client_t *c = user_data;
    if (stream_id == c->watch_sid) {
        c->watch_stream_closed = true; /* deliver() ends the watches after the bytes */
        return 0;
    }
    etcd_call_t *k;
    HASH_FIND_INT(c->by_stream, &stream_id, k);
    if (k)
        call_stream_closed(k, error_code);
    return 0;
}

/* ---- the connection ----------------------------------------------------- */

static int submit_request(etcd_client_t *c, const char *path, bool is_watch, bool with_token,
                          nghttp2_data_provider *prd, void *stream_data)
{
    const etcd_endpoint_t *ep = &c->eps[c->ep_idx];
    nghttp2_nv nv[ETCD_MAX_REQUEST_FIELDS];
    size_t n = 0;
#define NV(k, v)                                                                                   \
    nv[n++] =                                                                                      \
        (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), NGHTTP2_NV_FLAG_NONE}
    NV(":method", "POST");
    NV(":scheme", ep->is_tls ? "https" : "http");
    NV(":path", path);
    NV(":authority", ep->authority);
    NV("content-type", "application/grpc");
    NV("te", "trailers");
    /* Without it a Watch stream on a member that lost its leader stays open
     * and silent; with it etcd ends the stream (UNAVAILABLE "no leader"),
     * as clientv3's WithRequireLeader does. */
    if (is_watch)
        NV("hasleader", "true");
    if (with_token && c->token)
        NV("token", c->token);
#undef NV
    assert(n <= ETCD_MAX_REQUEST_FIELDS);
    return nghttp2_submit_request(c->ng, NULL, nv, n, prd, stream_data);
}

/* Puts the calls waiting for a connection on streams. */
static void submit_pending(etcd_client_t *c)
{
    if (c->state != CONN_UP || !c->has_peer_settings)
        return;
    start_auth(c);
    for (etcd_call_t *k = c->active; k; k = k->next) {
        if (k->stream_id >= 0)
            continue;
        if (c->user && !c->is_authed && !k->is_internal)
            continue; /* after the token */
        if (!nghttp2_session_check_request_allowed(c->ng))
            return; /* GOAWAY received: the next connection takes them */
        nghttp2_data_provider prd = {.source.ptr = NULL, .read_callback = call_read};
        int32_t sid = submit_request(c, k->path, false, !k->is_internal, &prd, NULL);
        if (sid < 0) {
            fail_connection(c, "cannot submit a request");
            return;
        }
        k->stream_id = sid;
        HASH_ADD_INT(c->by_stream, stream_id, k);
    }
}

static void update_events(etcd_client_t *c)
{
    if (c->io.fd < 0)
        return;
    uint32_t ev = EPOLLIN | (c->has_transport ? c->t.wants : 0);
    /* while the handshake runs, only what it waits for (EPOLLOUT would
     * be ready all along) */
    if (c->state == CONN_CONNECTING || (c->state == CONN_UP && c->write_blocked))
        ev |= EPOLLOUT;
    loop_io_modify(c->loop, &c->io, ev);
}

/* Writes what the session has to send, as far as the socket takes it. */
static void flush(etcd_client_t *c)
{
    if (c->state != CONN_UP)
        return;
    submit_pending(c);
    if (c->state != CONN_UP)
        return;
    watch_stream_open(c);
    if (c->state != CONN_UP)
        return;
    c->write_blocked = false;
    int rv = nghttp2_session_send(c->ng);
    if (rv != 0) {
        fail_connection(c,
                        rv == NGHTTP2_ERR_CALLBACK_FAILURE ? "write failed" : nghttp2_strerror(rv));
        return;
    }
    if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)) {
        fail_connection(c, "the session ended (GOAWAY)");
        return;
    }
    update_events(c);
}

static void close_socket(etcd_client_t *c)
{
    int fd = c->io.fd;
    if (fd >= 0)
        loop_io_stop(c->loop, &c->io);
    if (c->has_transport) {
        transport_close(&c->t); /* it owns the descriptor */
        c->has_transport = false;
    } else if (fd >= 0) {
        close(fd); /* still connecting */
    }
    free(c->token);
    c->token = NULL;
    c->is_authed = false;
    c->is_auth_in_flight = false;
    if (c->ng) {
        nghttp2_session_del(c->ng);
        c->ng = NULL;
    }
    c->write_blocked = false;
    c->has_peer_settings = false;
}

/* Moves to the next endpoint: at once after a connection that was up,
 * after a back-off once every endpoint failed in a row. */
static void schedule_next(etcd_client_t *c, bool was_up)
{
    uint64_t now = loop_now_ms(c->loop);
    c->ep_idx = (c->ep_idx + 1) % c->n_eps;
    c->state = CONN_BACKOFF;
    if (was_up) {
        c->failures_in_round = 0;
        c->backoff_ms = ETCD_BACKOFF_MIN_MS;
        c->retry_at_ms = now;
        return;
    }
    if (++c->failures_in_round < c->n_eps) {
        c->retry_at_ms = now;
        return;
    }
    c->failures_in_round = 0;
    c->retry_at_ms = now + c->backoff_ms;
    c->backoff_ms =
        c->backoff_ms * 2 > ETCD_BACKOFF_MAX_MS ? ETCD_BACKOFF_MAX_MS : c->backoff_ms * 2;
}

static void fail_connection(etcd_client_t *c, const char *why)
{
    if (c->state == CONN_BACKOFF)
        return;
    /* Up means etcd spoke HTTP/2 (its SETTINGS came): a server that takes
     * the connection and closes it (a wrong port, a refused client
     * certificate under TLS 1.3) counts towards the back-off, or it would
     * be dialed again at once, as fast as it closes. */
    bool was_up = c->state == CONN_UP && c->has_peer_settings && !c->is_member_sick;
    c->is_member_sick = false;
    log_warn("etcd: %s: %s", c->eps[c->ep_idx].url, why);
    /* Calls on this connection: sent ones may have been applied. */
    etcd_call_t *k, *tmp;
    HASH_ITER(hh, c->by_stream, k, tmp)
    {
        if (k->is_internal) {
            call_detach(k);
            list_unlink(&c->active, k);
            call_free(k);
        } else if (k->is_sent) {
            char msg[160];
            snprintf(msg, sizeof msg, "connection to %s lost: %s", c->eps[c->ep_idx].url, why);
            call_finish(k, ETCD_UNKNOWN, 0, msg);
        } else {
            call_requeue(k);
        }
    }
    assert(c->by_stream == NULL);
    /* This connection's Authenticate, waiting or answered but not yet
     * delivered, dies with it (the next connection runs its own). */
    for (etcd_call_t *n = NULL, *w = c->active; w; w = n) {
        n = w->next;
        if (w->is_internal) {
            list_unlink(&c->active, w);
            call_free(w);
        }
    }
    for (etcd_call_t *n = NULL, *w = c->done; w; w = n) {
        n = w->next;
        if (w->is_internal) {
            if (w == c->done_tail)
                c->done_tail = w->prev;
            list_unlink(&c->done, w);
            call_free(w);
        }
    }
    if (c->watch_sid >= 0) {
        /* What the stream brought before the end is still handed out
         * (deliver_watch parses `win` first), then its watches end. */
        c->watch_sid = -1;
        c->watch_stream_closed = true;
        buf_reset(&c->wout);
        c->wout_deferred = false;
    }
    close_socket(c);
    schedule_next(c, was_up);
}

static void on_io(loop_io_t *io, uint32_t events);

static int session_start(etcd_client_t *c)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return -ENOMEM;
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    int rv = nghttp2_session_client_new(&c->ng, cb, c);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0)
        return -ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, ETCD_STREAM_WINDOW_BYTES},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64 * 1024},
    };
    if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0,
                                              ETCD_CONN_WINDOW_BYTES) != 0)
        return -ENOMEM;
    return 0;
}

/* The session may send: h2 is agreed (TLS) or assumed (h2c). */
static void on_session_ready(etcd_client_t *c)
{
    if (c->eps[c->ep_idx].is_tls) {
        const char *alpn = transport_tls_alpn(&c->t);
        if (!alpn || strcmp(alpn, "h2") != 0) {
            fail_connection(c, "the server did not agree to HTTP/2 (ALPN h2)");
            return;
        }
    }
    c->state = CONN_UP;
    c->last_rx_ms = loop_now_ms(c->loop);
    c->ping_sent_ms = 0;
    flush(c);
}

static void on_connected(etcd_client_t *c)
{
    const etcd_endpoint_t *ep = &c->eps[c->ep_idx];
    int fd = c->io.fd;
    if (ep->is_tls) {
        loop_io_stop(c->loop, &c->io); /* the transport closes fd if it fails */
        if (transport_tls_client_init(&c->t, fd, c->tls, ep->host) < 0) {
            fail_connection(c, "cannot start TLS");
            return;
        }
        c->has_transport = true;
        if (loop_io_start(c->loop, &c->io, fd, EPOLLIN | c->t.wants, on_io) < 0) {
            fail_connection(c, "cannot watch the socket");
            return;
        }
    } else {
        transport_plain_init(&c->t, fd);
        c->has_transport = true;
    }
    if (session_start(c) < 0) {
        fail_connection(c, "out of memory");
        return;
    }
    if (ep->is_tls) {
        c->state = CONN_HANDSHAKING; /* on_io drives it (the ClientHello first) */
        update_events(c);
        return;
    }
    on_session_ready(c);
}

static void start_connect(etcd_client_t *c)
{
    const etcd_endpoint_t *ep = &c->eps[c->ep_idx];
    assert(c->state == CONN_BACKOFF && c->io.fd < 0);
    c->state = CONN_CONNECTING; /* fail_connection() below moves on */
    c->dial_deadline_ms = loop_now_ms(c->loop) + c->dial_timeout_ms;
    /* Names are resolved here, synchronously: endpoints are normally
     * addresses or names in /etc/hosts; a slow resolver holds the loop. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(ep->host, ep->port, &hints, &ai);
    if (gai != 0) {
        fail_connection(c, gai_strerror(gai));
        return;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        fail_connection(c, strerror(errno));
        return;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    int err = errno;
    freeaddrinfo(ai);
    if (rc < 0 && err != EINPROGRESS) {
        close(fd);
        fail_connection(c, strerror(err));
        return;
    }
    if (loop_io_start(c->loop, &c->io, fd, EPOLLIN | EPOLLOUT, on_io) < 0) {
        close(fd);
        fail_connection(c, "cannot watch the socket");
        return;
    }
}

static void read_some(etcd_client_t *c)
{
    char chunk[ETCD_READ_CHUNK_BYTES];
    for (;;) {
        ssize_t n = transport_recv(&c->t, chunk, sizeof chunk);
        if (n == -EAGAIN)
            return;
        if (n == 0) {
            fail_connection(c, "etcd closed the connection");
            return;
        }
        if (n < 0) {
            fail_connection(c, strerror((int)-n));
            return;
        }
        c->last_rx_ms = loop_now_ms(c->loop);
        c->ping_sent_ms = 0;
        ssize_t rv = nghttp2_session_mem_recv(c->ng, (const uint8_t *)chunk, (size_t)n);
        if (rv < 0) {
            fail_connection(c, nghttp2_strerror((int)rv));
            return;
        }
        if ((size_t)n < sizeof chunk)
            return;
    }
}

static void on_io(loop_io_t *io, uint32_t events)
{
    etcd_client_t *c = (etcd_client_t *)((char *)io - offsetof(etcd_client_t, io));
    c->busy++;
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err)
            fail_connection(c, strerror(err));
        else if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            on_connected(c);
    } else if (c->state == CONN_HANDSHAKING) {
        read_some(c); /* recv drives the handshake; bytes after it go to the session */
        if (c->state == CONN_HANDSHAKING && !c->t.is_handshaking)
            on_session_ready(c);
        else
            update_events(c);
    } else if (c->state == CONN_UP) {
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP) || c->t.wants)
            read_some(c);
        flush(c);
    }
    deliver(c);
    if (--c->busy == 0 && c->is_doomed)
        client_destroy(c);
}

/* ---- deadlines ---------------------------------------------------------- */

static uint64_t earlier(uint64_t a, uint64_t b)
{
    return a == 0 ? b : b == 0 ? a : (a < b ? a : b);
}

static void expire_calls(etcd_client_t *c, uint64_t now)
{
    etcd_call_t *k = c->active, *next;
    for (; k; k = next) {
        next = k->next;
        if (k->deadline_ms > now)
            continue;
        if (!k->is_sent) {
            if (k->stream_id >= 0 && c->ng)
                nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, k->stream_id, NGHTTP2_CANCEL);
            call_finish(k, ETCD_UNSENT, 0,
                        c->state == CONN_UP ? "deadline exceeded before the call was sent"
                                            : "deadline exceeded: no connection to etcd");
        } else {
            if (c->ng)
                nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, k->stream_id, NGHTTP2_CANCEL);
            call_finish(k, ETCD_UNKNOWN, 0, "deadline exceeded waiting for etcd's answer");
        }
    }
}

/* Connecting, in the TLS handshake, or waiting for etcd's SETTINGS: the
 * dial timeout runs. */
static bool is_dialing(const etcd_client_t *c)
{
    return c->state == CONN_CONNECTING || c->state == CONN_HANDSHAKING ||
           (c->state == CONN_UP && !c->has_peer_settings);
}

static uint64_t on_timer(void *ctx, uint64_t now)
{
    etcd_client_t *c = ctx;
    c->busy++;
    if (c->state == CONN_BACKOFF && now >= c->retry_at_ms)
        start_connect(c);
    if (is_dialing(c) && now >= c->dial_deadline_ms)
        fail_connection(c, c->state == CONN_CONNECTING    ? "dial timeout"
                           : c->state == CONN_HANDSHAKING ? "TLS handshake timeout"
                                                          : "no HTTP/2 SETTINGS from etcd in time");
    if (c->state == CONN_UP) {
        if (c->ping_sent_ms && now - c->ping_sent_ms >= c->keepalive_ms) {
            fail_connection(c, "no answer to a keep-alive PING");
        } else if (!c->ping_sent_ms && now - c->last_rx_ms >= c->keepalive_ms) {
            if (nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, NULL) == 0)
                c->ping_sent_ms = now;
        }
    }
    expire_calls(c, now);
    flush(c);
    deliver(c);

    uint64_t next = 0;
    if (c->state == CONN_BACKOFF)
        next = earlier(next, c->retry_at_ms > now ? c->retry_at_ms : now + 1);
    if (is_dialing(c))
        next = earlier(next, c->dial_deadline_ms);
    if (c->state == CONN_UP)
        next = earlier(next, c->ping_sent_ms ? c->ping_sent_ms + c->keepalive_ms
                                             : c->last_rx_ms + c->keepalive_ms);
    for (etcd_call_t *k = c->active; k; k = k->next)
        next = earlier(next, k->deadline_ms);
    if (--c->busy == 0 && c->is_doomed) {
        client_destroy(c);
        return 0;
    }
    return next;
}

/* ---- delivery ----------------------------------------------------------- */

static void deliver_call(etcd_call_t *k)
{
    etcd_result_t res = {.outcome = k->outcome,
                         .code = k->code,
                         .message = k->reason ? k->reason : "out of memory",
                         .resp = NULL};
    ProtobufCMessage *msg = NULL;
    if (k->outcome == ETCD_OK) {
        const uint8_t *body = (const uint8_t *)k->resp.data;
        size_t mlen;
        int rc = grpc_frame_parse(body, k->resp.len, &mlen);
        if (rc <= 0 || (size_t)rc != k->resp.len) {
            res.outcome = ETCD_GRPC;
            res.code = 13; /* INTERNAL, as grpc-go says of a broken answer */
            res.message = rc == -EPROTONOSUPPORT ? "etcd sent a compressed message"
                                                 : "etcd's answer is not one gRPC message";
        } else {
            msg = protobuf_c_message_unpack(k->resp_desc, NULL, mlen, body + GRPC_PREFIX_BYTES);
            if (!msg) {
                res.outcome = ETCD_GRPC;
                res.code = 13;
                res.message = "grpc: failed to unmarshal the received message";
            }
            res.resp = msg;
        }
        if (res.outcome != ETCD_OK && k->is_write) /* it did answer: the write went through */
            res.outcome = ETCD_UNKNOWN;
    }
    k->done(k->ctx, &res);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
}

/*
 * Whether etcd refused a create because the Watch stream's token expired:
 * the token rides on the stream's HEADERS only, so a simple token that
 * expired (--auth-token-ttl of disuse) fails every later create on that
 * stream with "invalid auth token" (etcd 3.4: watch_id -1, created,
 * canceled), however often the owner asks again.
 */
static bool watch_token_expired(const etcd_client_t *c, const Etcdserverpb__WatchResponse *r)
{
    return c->user && r->created && r->canceled && r->cancel_reason &&
           strstr(r->cancel_reason, "invalid auth token") != NULL;
}

/* A new token, then a new Watch stream: this one is reset, so its watches
 * end (resp == NULL) and their owners create them again, on the new one.
 * The refused create was not applied: it ends the same way. */
static void watch_stream_renew(etcd_client_t *c)
{
    free(c->token);
    c->token = NULL;
    c->is_authed = false;
    if (c->watch_sid >= 0 && c->ng && !c->watch_stream_closed) {
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, c->watch_sid, NGHTTP2_CANCEL);
        flush(c); /* sends the reset (its close is handled by deliver_watch) and Authenticate */
    }
}

/* Hands one WatchResponse to the watches it is for. */
static void deliver_watch_response(etcd_client_t *c, const Etcdserverpb__WatchResponse *r)
{
    etcd_watch_t *w, *next;
    if (watch_token_expired(c, r)) {
        log_info("etcd: %s: the Watch stream's token expired; renewing it", c->eps[c->ep_idx].url);
        watch_stream_renew(c);
        return;
    }
    if (r->watch_id == -1 && r->created) {
        /* A create etcd refused (an empty range, a duplicate id) is
         * answered with watch_id -1, created and canceled, not with our
         * id. etcd answers creates in the order they came, as they were
         * sent (list order): it is the oldest one not answered yet. */
        for (w = c->watches; w; w = w->next)
            if (w->is_sent && !w->is_answered && !w->is_ended)
                break;
        if (!w)
            return;
        w->is_answered = true;
        if (w->is_canceled)
            return; /* the owner let go of it: freed by deliver_watch */
        if (r->canceled) {
            w->is_ended = true;
            w->is_final_canceled = true;
        }
        w->fn(w->ctx, r);
        return;
    }
    for (w = c->watches; w; w = next) {
        next = w->next;
        if (w->is_sent && r->watch_id == w->id)
            w->is_answered = true;
        if (!w->is_sent || w->is_canceled || w->is_ended)
            continue;
        /* watch_id -1: the answer to a progress request, for every watch */
        if (r->watch_id != -1 && r->watch_id != w->id)
            continue;
        if (r->canceled && r->watch_id == w->id) {
            w->is_ended = true;
            w->is_final_canceled = true;
        }
        w->fn(w->ctx, r);
        if (c->is_doomed)
            return;
    }
}

static void deliver_watch(etcd_client_t *c)
{
    /* Whole messages in `win` first: they came before any end. */
    while (!c->is_doomed && c->win.len >= GRPC_PREFIX_BYTES) {
        size_t mlen;
        int rc = grpc_frame_parse((const uint8_t *)c->win.data, c->win.len, &mlen);
        if (rc == 0)
            break;
        if (rc < 0) {
            buf_reset(&c->win);
            fail_connection(c, "the Watch stream is not gRPC");
            break;
        }
        Etcdserverpb__WatchResponse *r = etcdserverpb__watch_response__unpack(
            NULL, mlen, (const uint8_t *)c->win.data + GRPC_PREFIX_BYTES);
        buf_consume(&c->win, (size_t)rc);
        if (!r) {
            buf_reset(&c->win);
            fail_connection(c, "a WatchResponse that does not decode");
            break;
        }
        deliver_watch_response(c, r);
        etcdserverpb__watch_response__free_unpacked(r, NULL);
    }
    if (c->watch_stream_closed && !c->is_doomed) {
        int status = c->watch_grpc_status, http_status = c->watch_http_status;
        watch_stream_end(c);
        /* Refused by the server: UNAVAILABLE ("no leader" for hasleader,
         * "server stopped"), or anything else a server that cannot serve
         * watches says (UNIMPLEMENTED from a gRPC server that is not etcd,
         * an HTTP error from a proxy). Our own reset has no status. */
        if ((status > 0 || (http_status != 0 && http_status != 200)) && c->state == CONN_UP) {
            /* This member cannot serve watches now; re-created here, they
             * would be refused again at once, in a loop as fast as the
             * refusals. Another member may; this one after the back-off. */
            char why[96];
            if (status == 14)
                snprintf(why, sizeof why, "the Watch stream ended UNAVAILABLE (no leader?)");
            else if (status > 0)
                snprintf(why, sizeof why, "the Watch stream ended with gRPC status %d", status);
            else
                snprintf(why, sizeof why, "the Watch stream was answered HTTP %d", http_status);
            c->is_member_sick = true;
            fail_connection(c, why);
        }
    }
    /* Ends, and frees what is over. */
    etcd_watch_t *w, *next;
    for (w = c->watches; w && !c->is_doomed; w = next) {
        next = w->next;
        if (w->is_canceled) {
            if (watch_may_free(w))
                watch_free(w);
        } else if (w->is_ended) {
            bool tell = !w->is_final_canceled;
            w->is_canceled = true; /* no callback after this one */
            if (tell)
                w->fn(w->ctx, NULL);
            next = w->next; /* the callback may have added watches; frees wait for us */
            watch_free(w);
        }
    }
}

static void deliver(etcd_client_t *c)
{
    c->busy++;
    while (c->done && !c->is_doomed) {
        etcd_call_t *k = c->done;
        c->done = k->next;
        if (!c->done)
            c->done_tail = NULL;
        k->next = k->prev = NULL;
        deliver_call(k);
        call_free(k);
    }
    if (!c->is_doomed)
        deliver_watch(c);
    c->busy--;
}

/* ---- the public calls --------------------------------------------------- */

/* A new call, waiting for a stream (the caller flushes). */
static int make_call(etcd_client_t *c, const char *path, const ProtobufCMessage *rq,
                     const ProtobufCMessageDescriptor *resp_desc, bool is_write,
                     unsigned timeout_ms, etcd_done_fn done, void *ctx, etcd_call_t **out)
{
    assert(loop_on_thread(c->loop));
    assert(!c->is_doomed);
    size_t mlen = protobuf_c_message_get_packed_size(rq);
    if (mlen > GRPC_MAX_SEND_MESSAGE_BYTES)
        return -EINVAL;
    etcd_call_t *k = calloc(1, sizeof *k);
    if (!k)
        return -ENOMEM;
    k->req = malloc(GRPC_PREFIX_BYTES + mlen);
    if (!k->req) {
        free(k);
        return -ENOMEM;
    }
    grpc_frame_put_prefix(k->req, mlen);
    protobuf_c_message_pack(rq, k->req + GRPC_PREFIX_BYTES);
    k->req_len = GRPC_PREFIX_BYTES + mlen;
    k->c = c;
    k->path = path;
    k->resp_desc = resp_desc;
    k->is_write = is_write;
    k->stream_id = -1;
    k->grpc_status = -1;
    buf_init(&k->resp);
    k->deadline_ms = loop_now_ms(c->loop) + timeout_ms;
    k->done = done;
    k->ctx = ctx;
    k->next = c->active;
    if (c->active)
        c->active->prev = k;
    c->active = k;
    if (out)
        *out = k;
    return 0;
}

static int start_call(etcd_client_t *c, const char *path, const ProtobufCMessage *rq,
                      const ProtobufCMessageDescriptor *resp_desc, bool is_write,
                      unsigned timeout_ms, etcd_done_fn done, void *ctx)
{
    int rc = make_call(c, path, rq, resp_desc, is_write, timeout_ms, done, ctx, NULL);
    if (rc == 0)
        flush(c);
    return rc;
}

/* ---- authentication ----------------------------------------------------- */

/* Every call that waits for this connection's token. */
static void fail_waiting_calls(etcd_client_t *c, int code, const char *msg)
{
    for (etcd_call_t *n = NULL, *k = c->active; k; k = n) {
        n = k->next;
        if (!k->is_internal && k->stream_id < 0)
            call_finish(k, ETCD_GRPC, code, msg);
    }
}

static void auth_done(void *ctx, const etcd_result_t *res)
{
    etcd_client_t *c = ctx;
    c->is_auth_in_flight = false;
    if (res->outcome == ETCD_OK) {
        const Etcdserverpb__AuthenticateResponse *r =
            (const Etcdserverpb__AuthenticateResponse *)res->resp;
        free(c->token);
        c->token = strdup(r->token ? r->token : "");
        if (!c->token) {
            fail_connection(c, "out of memory");
            return;
        }
        c->is_authed = true;
        flush(c);
        return;
    }
    char msg[300];
    snprintf(msg, sizeof msg, "authentication as %s: %s", c->user, res->message);
    if (res->outcome == ETCD_GRPC) {
        /* A refusal (wrong password, auth not enabled is fine): the calls
         * waiting for it were never sent; tell their owners why now. */
        log_error("etcd: %s: %s", c->eps[c->ep_idx].url, msg);
        fail_waiting_calls(c, res->code, msg);
    }
    fail_connection(c, msg);
}

/* Runs Auth/Authenticate first on a connection, when there is a user. */
static void start_auth(etcd_client_t *c)
{
    if (!c->user || c->is_authed || c->is_auth_in_flight || c->state != CONN_UP)
        return;
    Etcdserverpb__AuthenticateRequest rq = ETCDSERVERPB__AUTHENTICATE_REQUEST__INIT;
    rq.name = c->user;
    rq.password = c->password ? c->password : "";
    etcd_call_t *k;
    if (make_call(c, "/etcdserverpb.Auth/Authenticate", &rq.base,
                  &etcdserverpb__authenticate_response__descriptor, false, c->dial_timeout_ms,
                  auth_done, c, &k) < 0) {
        fail_connection(c, "out of memory");
        return;
    }
    k->is_internal = true;
    c->is_auth_in_flight = true;
}

int etcd_range(etcd_client_t *c, const Etcdserverpb__RangeRequest *rq, unsigned timeout_ms,
               etcd_done_fn done, void *ctx)
{
    return start_call(c, "/etcdserverpb.KV/Range", &rq->base,
                      &etcdserverpb__range_response__descriptor, false, timeout_ms, done, ctx);
}

int etcd_txn(etcd_client_t *c, const Etcdserverpb__TxnRequest *rq, unsigned timeout_ms,
             etcd_done_fn done, void *ctx)
{
    return start_call(c, "/etcdserverpb.KV/Txn", &rq->base, &etcdserverpb__txn_response__descriptor,
                      true, timeout_ms, done, ctx);
}

int etcd_compact(etcd_client_t *c, const Etcdserverpb__CompactionRequest *rq, unsigned timeout_ms,
                 etcd_done_fn done, void *ctx)
{
    return start_call(c, "/etcdserverpb.KV/Compact", &rq->base,
                      &etcdserverpb__compaction_response__descriptor, true, timeout_ms, done, ctx);
}

int etcd_lease_grant(etcd_client_t *c, const Etcdserverpb__LeaseGrantRequest *rq,
                     unsigned timeout_ms, etcd_done_fn done, void *ctx)
{
    return start_call(c, "/etcdserverpb.Lease/LeaseGrant", &rq->base,
                      &etcdserverpb__lease_grant_response__descriptor, true, timeout_ms, done, ctx);
}

int etcd_lease_revoke(etcd_client_t *c, const Etcdserverpb__LeaseRevokeRequest *rq,
                      unsigned timeout_ms, etcd_done_fn done, void *ctx)
{
    return start_call(c, "/etcdserverpb.Lease/LeaseRevoke", &rq->base,
                      &etcdserverpb__lease_revoke_response__descriptor, true, timeout_ms, done,
                      ctx);
}

int etcd_lease_keepalive_once(etcd_client_t *c, int64_t lease_id, unsigned timeout_ms,
                              etcd_done_fn done, void *ctx)
{
    /* etcd's LeaseKeepAlive handler answers each request before it reads
     * the next, so one request then END_STREAM is a unary call: the
     * answer, then grpc-status 0. */
    Etcdserverpb__LeaseKeepAliveRequest rq = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    rq.id = lease_id;
    return start_call(c, "/etcdserverpb.Lease/LeaseKeepAlive", &rq.base,
                      &etcdserverpb__lease_keep_alive_response__descriptor, false, timeout_ms, done,
                      ctx);
}

/* Encodes a WatchRequest with its gRPC prefix into *out (malloc'd). */
static int pack_watch_request(const Etcdserverpb__WatchRequest *wr, uint8_t **out, size_t *len)
{
    size_t mlen = etcdserverpb__watch_request__get_packed_size(wr);
    if (mlen > GRPC_MAX_SEND_MESSAGE_BYTES)
        return -EINVAL;
    uint8_t *p = malloc(GRPC_PREFIX_BYTES + mlen);
    if (!p)
        return -ENOMEM;
    grpc_frame_put_prefix(p, mlen);
    etcdserverpb__watch_request__pack(wr, p + GRPC_PREFIX_BYTES);
    *out = p;
    *len = GRPC_PREFIX_BYTES + mlen;
    return 0;
}

etcd_watch_t *etcd_watch(etcd_client_t *c, const Etcdserverpb__WatchCreateRequest *rq,
                         etcd_watch_fn on_event, void *ctx)
{
    assert(loop_on_thread(c->loop));
    etcd_watch_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    Etcdserverpb__WatchCreateRequest cr = *rq;
    cr.watch_id = ++c->next_watch_id;
    Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
    wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    wr.create_request = &cr;
    if (pack_watch_request(&wr, &w->create, &w->create_len) < 0) {
        free(w);
        return NULL;
    }
    w->c = c;
    w->id = cr.watch_id;
    w->fn = on_event;
    w->ctx = ctx;
    /* appended: creates go out in the order asked */
    etcd_watch_t **pp = &c->watches, *prev = NULL;
    while (*pp) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    *pp = w;
    w->prev = prev;
    if (c->watch_sid >= 0)
        watch_send_creates(c);
    flush(c);
    return w;
}

void etcd_watch_cancel(etcd_watch_t *w)
{
    if (!w)
        return;
    etcd_client_t *c = w->c;
    assert(!w->is_canceled);
    if (w->is_sent && !w->is_ended && c->watch_sid >= 0) {
        Etcdserverpb__WatchCancelRequest cr = ETCDSERVERPB__WATCH_CANCEL_REQUEST__INIT;
        cr.watch_id = w->id;
        Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
        wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST;
        wr.cancel_request = &cr;
        uint8_t *p;
        size_t len;
        /* Out of memory: etcd keeps the watch; its responses find no
         * handle and are dropped, which is all a cancel promises here. */
        if (pack_watch_request(&wr, &p, &len) == 0) {
            (void)watch_stream_queue(c, p, len);
            free(p);
        }
    }
    w->is_canceled = true;
    if (c->busy == 0 && watch_may_free(w))
        watch_free(w);
    /* else deliver_watch() frees it (it may be the one being delivered, or
     * etcd still owes the answer to its create) */
    flush(c);
}

int etcd_watch_progress(etcd_client_t *c)
{
    if (c->watch_sid < 0)
        return -ENOTCONN;
    Etcdserverpb__WatchProgressRequest pr = ETCDSERVERPB__WATCH_PROGRESS_REQUEST__INIT;
    Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
    wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST;
    wr.progress_request = &pr;
    uint8_t *p;
    size_t len;
    int rc = pack_watch_request(&wr, &p, &len);
    if (rc < 0)
        return rc;
    rc = watch_stream_queue(c, p, len);
    free(p);
    if (rc == 0)
        flush(c);
    return rc;
}

/* ---- life --------------------------------------------------------------- */

/* "http://h:p", "https://h:p", "h:p", "[v6]:p" into an endpoint. */
static int parse_endpoint(const char *url, etcd_endpoint_t *ep, char *err)
{
    const char *p = url;
    ep->is_tls = false;
    if (strncmp(p, "http://", 7) == 0) {
        p += 7;
    } else if (strncmp(p, "https://", 8) == 0) {
        p += 8;
        ep->is_tls = true;
    } else if (strstr(p, "://")) {
        snprintf(err, 256, "etcd endpoint %s: only http:// and https:// are supported", url);
        return -1;
    }
    size_t len = strcspn(p, "/");
    if (p[len] == '/' && p[len + 1] != '\0') {
        snprintf(err, 256, "etcd endpoint %s: a path is not supported", url);
        return -1;
    }
    const char *host = p, *host_end, *port;
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(p, ']', len);
        if (!host_end) {
            snprintf(err, 256, "etcd endpoint %s: unterminated [", url);
            return -1;
        }
        port = host_end + 1 < p + len && host_end[1] == ':' ? host_end + 2 : NULL;
    } else {
        host_end = memchr(p, ':', len);
        port = host_end ? host_end + 1 : NULL;
        if (!host_end)
            host_end = p + len;
    }
    size_t port_len = port ? (size_t)(p + len - port) : 0;
    if (host_end == host ||
        (port && (port_len == 0 || port_len > 5 || strspn(port, "0123456789") < port_len))) {
        snprintf(err, 256, "etcd endpoint %s: expected host:port", url);
        return -1;
    }
    ep->url = strdup(url);
    ep->host = strndup(host, (size_t)(host_end - host));
    ep->port = port ? strndup(port, port_len) : strdup("2379");
    ep->authority = strndup(p, len);
    if (!ep->url || !ep->host || !ep->port || !ep->authority) {
        snprintf(err, 256, "out of memory");
        return -1;
    }
    return 0;
}

etcd_client_t *etcd_client_new(struct loop *loop, const etcd_client_config_t *cfg, char *err)
{
    if (cfg->n_endpoints == 0) {
        snprintf(err, 256, "no etcd endpoints");
        return NULL;
    }
    etcd_client_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    c->loop = loop;
    c->io.fd = -1;
    c->watch_sid = -1;
    c->state = CONN_BACKOFF;
    c->backoff_ms = ETCD_BACKOFF_MIN_MS;
    buf_init(&c->wout);
    buf_init(&c->win);
    c->dial_timeout_ms = cfg->dial_timeout_ms ? cfg->dial_timeout_ms : ETCD_DEFAULT_DIAL_TIMEOUT_MS;
    c->keepalive_ms = cfg->keepalive_ms ? cfg->keepalive_ms : ETCD_DEFAULT_KEEPALIVE_MS;
    c->eps = calloc(cfg->n_endpoints, sizeof *c->eps);
    if (!c->eps) {
        snprintf(err, 256, "out of memory");
        goto fail;
    }
    c->n_eps = cfg->n_endpoints;
    for (size_t i = 0; i < cfg->n_endpoints; i++) {
        if (parse_endpoint(cfg->endpoints[i], &c->eps[i], err) < 0)
            goto fail;
    }
    bool any_tls = false;
    for (size_t i = 0; i < c->n_eps; i++)
        any_tls |= c->eps[i].is_tls;
    if (any_tls) {
        tls_client_files_t files = {
            .ca_path = cfg->cacert, .cert_path = cfg->cert, .key_path = cfg->key, .alpn = "\x02h2"};
        c->tls = tls_client_ctx_new(&files, err);
        if (!c->tls)
            goto fail;
    }
    bool failed = false;
    c->user = buf_strdup_or_null(cfg->user, &failed);
    c->password = buf_strdup_or_null(cfg->password, &failed);
    c->cacert = buf_strdup_or_null(cfg->cacert, &failed);
    c->cert = buf_strdup_or_null(cfg->cert, &failed);
    c->key = buf_strdup_or_null(cfg->key, &failed);
    if (failed) {
        snprintf(err, 256, "out of memory");
        goto fail;
    }
    /* A peer that closes makes write(2) raise SIGPIPE: OpenSSL writes with
     * write(2), not send(MSG_NOSIGNAL). disco's server ignores it too. */
    signal(SIGPIPE, SIG_IGN);
    if (loop_add_timer(loop, on_timer, c) < 0) {
        snprintf(err, 256, "out of memory");
        goto fail;
    }
    c->retry_at_ms = loop_now_ms(loop);
    start_connect(c);
    return c;
fail:
    client_destroy(c);
    return NULL;
}

static void client_destroy(etcd_client_t *c)
{
    loop_remove_timer(c->loop, on_timer, c);
    close_socket(c);
    etcd_call_t *k;
    while ((k = c->active)) {
        call_detach(k);
        list_unlink(&c->active, k);
        call_free(k);
    }
    while ((k = c->done)) {
        c->done = k->next;
        call_free(k);
    }
    while (c->watches)
        watch_free(c->watches);
    for (size_t i = 0; c->eps && i < c->n_eps; i++) {
        free(c->eps[i].url);
        free(c->eps[i].host);
        free(c->eps[i].port);
        free(c->eps[i].authority);
    }
    free(c->eps);
    tls_ctx_free(c->tls);
    free(c->user);
    if (c->password)
        memset(c->password, 0, strlen(c->password));
    free(c->password);
    free(c->cacert);
    free(c->cert);
    free(c->key);
    buf_free(&c->wout);
    buf_free(&c->win);
    free(c);
}

void etcd_client_free(etcd_client_t *c)
{
    if (!c)
        return;
    if (c->busy) {
        c->is_doomed = true; /* the entry point on the stack frees it */
        return;
    }
    client_destroy(c);
}

bool etcd_client_connected(const etcd_client_t *c)
{
    return c->state == CONN_UP && c->has_peer_settings;
}

const char *etcd_client_endpoint(const etcd_client_t *c)
{
    return c->eps[c->ep_idx].url;
}
