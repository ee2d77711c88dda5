/*
 * client.h - a gRPC client of etcd's v3 API, driven by disco's own loop.
 *
 * The etcd backend (backend/backend_etcd.c) talks to the backing etcd
 * cluster only through this. One HTTP/2 connection (nghttp2 client session
 * over a plain or TLS socket, non-blocking, registered on the loop like any
 * other descriptor; no threads) carries every unary call and one long-lived
 * Watch stream. Messages are the protobuf-c types generated from
 * proto/etcd_v3.proto (the same codec the v3 surface serves with).
 *
 * Endpoints: tried in order; when the connection fails (connect refused,
 * reset, TLS failure, no answer to a PING within the keep-alive bound) the
 * client moves to the next one, with a back-off, and keeps trying for as
 * long as it lives. With a user, Auth/Authenticate runs on every new
 * connection and its token rides on every call (`token` metadata); a call
 * refused with "invalid auth token" (an expired simple token) is sent
 * again once with a new one. A refused Authenticate (wrong password) ends
 * the calls waiting for it with ETCD_GRPC and etcd's code and message.
 * No call is sent before etcd's SETTINGS frame arrived on a connection.
 *
 * Calls made while no connection is up wait (bounded by their deadline)
 * and are sent when one is. A call's outcome is one of:
 *   ETCD_OK         the answer arrived (`resp` is the decoded message);
 *   ETCD_GRPC       etcd answered with a gRPC error (`code`, `message`);
 *                   e.g. OUT_OF_RANGE (11) "etcdserver: mvcc: required
 *                   revision has been compacted" for a Range at a compacted
 *                   revision (the first version said FAILED_PRECONDITION);
 *   ETCD_UNSENT     never written to any connection before it failed or the
 *                   deadline passed: etcd certainly did not apply it;
 *   ETCD_UNKNOWN    written, but the connection failed or the deadline passed
 *                   before an answer: a write may or may not have been
 *                   applied (the backend must find out; see ETCD-BACKEND.md).
 *                   Also for a write (Txn, Compact, LeaseGrant, LeaseRevoke)
 *                   that etcd answered with an error that leaves this open:
 *                   UNAVAILABLE ("request timed out", "leader changed",
 *                   "server stopped"), DEADLINE_EXCEEDED, CANCELLED, UNKNOWN,
 *                   INTERNAL; `code` and `message` are then etcd's. (Added
 *                   after the first version of this header: an
 *                   ETCD_GRPC "request timed out" for a Txn would have read
 *                   as "not applied", which it need not be.)
 * A call that was not sent when its connection failed (or that etcd
 * refused unprocessed: REFUSED_STREAM, streams past a GOAWAY) waits for the
 * next connection, within its deadline; ETCD_UNSENT comes only at the
 * deadline.
 * Exactly one callback per accepted call, always from the loop (never from
 * inside the call that started it), unless etcd_client_free() ran first;
 * then none.
 *
 * The Watch stream: watches are created on the current connection's one
 * Watch stream. When the connection moves, the stream ends: every watch
 * gets one callback with `resp == NULL` (ended) and its owner creates it
 * again from the revision after the last one it applied.
 *
 * Threading: everything on the loop's thread.
 */
#ifndef DISCO_ETCD_CLIENT_H
#define DISCO_ETCD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "etcd_v3.pb-c.h"

struct loop;

typedef struct etcd_client etcd_client_t;

typedef struct etcd_client_config {
    const char *const *endpoints; /* "http://127.0.0.1:2379", "https://h:2379", "h:2379" */
    size_t n_endpoints;
    const char *cacert;       /* PEM file; NULL: the system's trust store */
    const char *cert;         /* client certificate for mutual TLS, or NULL */
    const char *key;          /* its key, or NULL */
    const char *user;         /* etcd user for Auth/Authenticate, or NULL */
    const char *password;     /* its password */
    unsigned dial_timeout_ms; /* connect + TLS handshake per endpoint */
    unsigned keepalive_ms;    /* PING when idle this long; fail over if unanswered */
} etcd_client_config_t;

typedef enum etcd_outcome {
    ETCD_OK = 0,
    ETCD_GRPC,
    ETCD_UNSENT,
    ETCD_UNKNOWN,
} etcd_outcome_t;

typedef struct etcd_result {
    etcd_outcome_t outcome;
    int code;            /* gRPC status when ETCD_GRPC, else 0 */
    const char *message; /* grpc-message or a reason; never NULL */
    /* ETCD_OK: the decoded response, borrowed for the callback only. Its
     * type is the one the call names (e.g. Etcdserverpb__RangeResponse). */
    const ProtobufCMessage *resp;
} etcd_result_t;

typedef void (*etcd_done_fn)(void *ctx, const etcd_result_t *res);

/* Starts connecting to the first endpoint. NULL with a one-line reason in
 * `err` (256 bytes) when the configuration is unusable (bad endpoint, TLS
 * files unreadable); an unreachable etcd is not an error here. https://
 * endpoints offer ALPN h2 and check etcd's certificate against `cacert`
 * and the endpoint's host (an IP address must be in its subjectAltName).
 * Ignores SIGPIPE for the process (TLS writes use write(2)), as disco's
 * server does. Endpoint names are resolved on the loop thread at each dial
 * (getaddrinfo blocks: give addresses or names from /etc/hosts). */
etcd_client_t *etcd_client_new(struct loop *loop, const etcd_client_config_t *cfg, char *err);
/* Ends every call and watch without callbacks, closes, frees. NULL is fine. */
void etcd_client_free(etcd_client_t *c);

/* Whether a connection is up now (etcd's HTTP/2 SETTINGS arrived;
 * Authenticate may still run), and which endpoint it is on (while none is
 * up: the one tried next). */
bool etcd_client_connected(const etcd_client_t *c);
const char *etcd_client_endpoint(const etcd_client_t *c);

/*
 * Unary calls. The request is encoded before the call returns (the caller
 * keeps ownership of it). `timeout_ms` bounds the whole call from now,
 * including waiting for a connection. 0, or -errno with no callback to come
 * (-ENOMEM; -EINVAL for a request too large).
 */
int etcd_range(etcd_client_t *c, const Etcdserverpb__RangeRequest *rq, unsigned timeout_ms,
               etcd_done_fn done, void *ctx);
int etcd_txn(etcd_client_t *c, const Etcdserverpb__TxnRequest *rq, unsigned timeout_ms,
             etcd_done_fn done, void *ctx);
/* Compacts etcd's history up to rq->revision (a CompactionResponse). */
int etcd_compact(etcd_client_t *c, const Etcdserverpb__CompactionRequest *rq, unsigned timeout_ms,
                 etcd_done_fn done, void *ctx);
int etcd_lease_grant(etcd_client_t *c, const Etcdserverpb__LeaseGrantRequest *rq,
                     unsigned timeout_ms, etcd_done_fn done, void *ctx);
int etcd_lease_revoke(etcd_client_t *c, const Etcdserverpb__LeaseRevokeRequest *rq,
                      unsigned timeout_ms, etcd_done_fn done, void *ctx);
/* One keep-alive of a lease (the LeaseKeepAlive stream, one message each
 * way); the answer is an Etcdserverpb__LeaseKeepAliveResponse. */
int etcd_lease_keepalive_once(etcd_client_t *c, int64_t lease_id, unsigned timeout_ms,
                              etcd_done_fn done, void *ctx);

/*
 * Watches. `on_event` gets every WatchResponse for this watch (created,
 * events, progress, canceled with compact_revision) and finally one call
 * with `resp == NULL` when the stream ended (connection moved or closed);
 * after that the handle is dead. A response with `canceled` set (etcd
 * ended the watch: compacted start revision, no leader, ...) is the last
 * callback instead: no resp == NULL follows it and the handle is dead after
 * it returns. rq->watch_id is ignored: the client numbers its watches (etcd
 * >= 3.4 takes the client's watch_id). A response to a progress request
 * (watch_id -1) goes to every watch on the stream; etcd's answer to a
 * create it refuses (watch_id -1 too, with created and canceled set: an
 * empty range) goes to that watch only, as its last callback. Watches asked for while
 * no connection is up are created when one is. Every callback of this
 * client (calls and watches) may make calls, create and cancel watches,
 * and free the client (nothing of it runs after that).
 * With rq->fragment set, etcd's fragments are handed out as they come (not
 * joined). Returns a handle, or NULL (-ENOMEM).
 */
typedef struct etcd_watch etcd_watch_t;
typedef void (*etcd_watch_fn)(void *ctx, const Etcdserverpb__WatchResponse *resp);
etcd_watch_t *etcd_watch(etcd_client_t *c, const Etcdserverpb__WatchCreateRequest *rq,
                         etcd_watch_fn on_event, void *ctx);
/* Cancels; no more callbacks for it (not even the ending one). Not on a
 * dead handle (after its last callback). */
void etcd_watch_cancel(etcd_watch_t *w);
/* Asks for a progress notification on the stream (WatchProgressRequest):
 * every watch on it then gets a response with the current revision.
 * -ENOTCONN when no Watch stream is open, -ENOMEM. */
int etcd_watch_progress(etcd_client_t *c);

#endif
