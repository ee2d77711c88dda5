/*
 * backend.h - the seam between the registry and durability.
 *
 * The registry (registry/registry.h) is the in-memory authority that
 * validates v2 operations and turns each into one reg_event_t; a backend
 * makes those events durable, hands them back at startup and reads old ones
 * back for watches. The registry talks only to this interface.
 *
 * Two shapes fit it:
 *
 *   local (backend_local.c): over a store_t
 *     (store/store.h: LMDB with a write-ahead log, or memory). The registry
 *     assigns the index, reserves everything the change needs, proposes the
 *     event (the store queues an encoded copy: the only step that may fail),
 *     then applies it to the tree, which cannot fail any more. The store's
 *     writer thread makes it durable later; answers wait for
 *     durable_index() to reach their index (api.c).
 *
 *   etcd (backend_etcd.c; see ../shared/docs/ETCD-BACKEND.md): several disco
 *     processes in front of one etcd cluster. propose_txn() sends the event
 *     as a guarded transaction (backend_guard_t), and the registry applies
 *     it only when etcd's watch delivers it back, in etcd's order, on the
 *     loop thread (registry_deliver; registry.h); the backend settles each
 *     proposal with registry_settle(). Indexes are etcd revisions. A key
 *     with a TTL has an etcd lease, and its expiry is delivered back; old
 *     tokens are removed by guarded transactions, also delivered back. The
 *     calls below say what each does there.
 *
 * Threading: every call is made on the registry's loop thread and none
 * blocks it (work that blocks happens on the backend's own threads).
 */
#ifndef DISCO_BACKEND_BACKEND_H
#define DISCO_BACKEND_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "registry/event.h"

struct histogram; /* util/histogram.h */

struct backend;
struct registry;
struct store;

/* Counters a backend keeps about its own work (for /metrics); a backend
 * that does not do a kind of work leaves its counter at 0. */
typedef struct backend_stats {
    uint64_t log_frames;     /* batches made durable as one log frame */
    uint64_t checkpoints;    /* moves of logged batches into the main store */
    uint64_t direct_commits; /* batches committed straight to the main store */
    /* Their durations (util/histogram.h), valid while the backend is; NULL
     * when it does no such work. */
    const struct histogram *log_sync, *checkpoint_sync, *direct_sync;
    /* A mirror of etcd (backend_etcd.c) only; is_etcd false otherwise. */
    bool is_etcd;
    bool etcd_live;
    uint64_t etcd_lag_revisions; /* etcd's newest known revision past the mirror's */
    uint64_t etcd_lag_ms;        /* since the mirror was last known current; 0: it is */
    const char *etcd_endpoint;   /* the member in use; borrowed until the loop turns */
    uint64_t etcd_txns_committed, etcd_txns_lost_guard, etcd_txns_failed, etcd_txns_unknown;
    uint64_t etcd_watch_restarts; /* the mirror's watch created again (failover, ...) */
} backend_stats_t;

/*
 * What a backend that applies on delivery (etcd) must check in the same
 * transaction as the write, so that two instances validating against
 * their own mirrors cannot both succeed (ETCD-BACKEND.md, design (a)).
 */
enum backend_guard_kind {
    /* The token does not exist yet (its creation: /new, or a write of
     * _config/size). */
    BACKEND_GUARD_TOKEN_NEW,
    /* The token exists and the key does not (neither as a file nor as a
     * directory): a create directly below the token, the registration hot
     * path. Writes to other keys of the token do not conflict with it. */
    BACKEND_GUARD_KEY_ABSENT,
    /* The token is still at `token_index`: its last change is the one the
     * mirror validated against (every other write). */
    BACKEND_GUARD_TOKEN_AT,
    /* An in-order key (POST) in the token's directory or in a directory
     * right below it: the token exists, that directory is not a file, and
     * no key of the directory whose name starts with a digit sorts at or
     * after the new key's name. So in-order names sort in the order etcd
     * created them, and POSTs to one directory conflict only when another
     * one with a higher name was created first. */
    BACKEND_GUARD_IN_ORDER,
};
typedef struct backend_guard {
    enum backend_guard_kind kind;
    uint64_t token_index; /* BACKEND_GUARD_TOKEN_AT */
} backend_guard_t;

struct backend_ops {
    /*
     * Startup: replays everything kept into `reg` (empty) through
     * registry_replay(). 0, or -1 with a one-line reason in `err` (256
     * bytes). etcd: a range read of the keyspace at one revision, then a
     * watch from the next revision.
     */
    int (*load)(struct backend *be, struct registry *reg, char *err);
    /*
     * Takes a validated change. `ev` is borrowed: the backend copies what
     * it keeps before returning. 0, or -errno with nothing taken (the
     * registry then refuses the change, and applies nothing).
     *   local: the store queues the encoded event; the registry applies it
     *     right after (applies_on_propose), so the change is visible before
     *     it is durable, and answers wait for durable_index().
     *   etcd: a guarded transaction is sent; nothing is applied until the
     *     watch delivers it (applies_on_propose false); a lost guard means
     *     another process changed the token first, and the client's request
     *     is validated again against the newer tree.
     */
    int (*propose)(struct backend *be, const reg_event_t *ev);
    /*
     * Backends that apply on delivery only (else NULL): sends `ev` (borrowed,
     * copied as needed; its index is only the registry's guess) as one
     * transaction guarded by `g`. 0, or -errno with nothing sent. Later,
     * from the loop, the backend calls registry_settle(seq) exactly once
     * (unless closed first): committed at the revision (which it then
     * delivers), guard lost, or failed; an unknown outcome is held and
     * looked for (the action marker carries `seq`) before it is failed.
     */
    int (*propose_txn)(struct backend *be, const reg_event_t *ev, const backend_guard_t *g,
                       uint64_t seq);
    /*
     * Backends that apply on delivery only (else NULL): a write this
     * instance's mirror refused may have been refused for a change it has
     * not seen yet (a token made through another instance a moment ago).
     * Learns the newest revision that could matter (etcd: a linearizable
     * read of the prefix) and calls registry_settle(seq, REG_SETTLE_LOST,
     * that revision) once, from the loop: the write is then validated again
     * once the mirror has caught up. 0 or -errno (nothing to come).
     */
    int (*propose_barrier)(struct backend *be, uint64_t seq);
    /* Removes a token by age with the events at `indexes` (its history).
     * 0 or -errno (nothing done; the sweep tries again later). etcd: one
     * guarded Txn deleting the token's keys, sent by any instance; the
     * removal happens when it is delivered (registry_deliver_token_removal),
     * and `indexes[0]` (the token's creation revision) is the guard. */
    int (*remove_token)(struct backend *be, const char *name, const uint64_t *indexes, size_t n);
    /* Reads back the event at `index` (a new event the caller frees with
     * reg_event_free), or NULL if there is none. Only events up to
     * readable_index() need to be found: the registry keeps newer ones in
     * memory. etcd: none is read back (always NULL); see readable_index. */
    reg_event_t *(*fetch)(struct backend *be, uint64_t index);
    /* The highest index known durable: answers up to it may go. Only grows.
     * etcd: the revision of the last write this process saw committed. */
    uint64_t (*durable_index)(struct backend *be);
    /* The highest index up to which fetch() finds every event that exists;
     * may trail durable_index(). Only grows. etcd: the last revision
     * applied, though fetch() finds nothing: so the registry keeps only its
     * recent window of events, and a watch from before it gets 401 "event
     * index cleared" (registry_watch), as from etcd. */
    uint64_t (*readable_index)(struct backend *be);
    /* A descriptor that becomes readable when the durable index moves (or,
     * etcd, when watched changes arrive), -1 if it never lags; and the call
     * that drains it. */
    int (*notify_fd)(struct backend *be);
    void (*drain_notify)(struct backend *be);
    /* Whether new writes should be accepted now: false when the disk or the
     * map is nearly full, or commits are failing (etcd: no quorum). */
    bool (*writable)(struct backend *be);
    /* Whether reads are served from a state that is being kept up to date
     * (etcd: the mirror is loaded and its watch is up); NULL: always. */
    bool (*live)(struct backend *be);
    void (*stats)(struct backend *be, backend_stats_t *out);
    /* Flushes what is queued and releases everything, the backend too. */
    void (*close)(struct backend *be);
    /* Whether the registry applies a change as soon as propose() took it
     * (local), rather than when the backend delivers it back (etcd). */
    bool applies_on_propose;
    /* A short name for logs ("memory", "lmdb", "etcd"). */
    const char *name;
};

typedef struct backend {
    const struct backend_ops *ops;
} backend_t;

static inline int backend_load(backend_t *be, struct registry *reg, char *err)
{
    return be->ops->load(be, reg, err);
}
static inline int backend_propose(backend_t *be, const reg_event_t *ev)
{
    return be->ops->propose(be, ev);
}
static inline int backend_propose_txn(backend_t *be, const reg_event_t *ev,
                                      const backend_guard_t *g, uint64_t seq)
{
    return be->ops->propose_txn(be, ev, g, seq);
}
static inline int backend_propose_barrier(backend_t *be, uint64_t seq)
{
    return be->ops->propose_barrier(be, seq);
}
static inline int backend_remove_token(backend_t *be, const char *name, const uint64_t *indexes,
                                       size_t n)
{
    return be->ops->remove_token(be, name, indexes, n);
}
static inline reg_event_t *backend_fetch(backend_t *be, uint64_t index)
{
    return be->ops->fetch(be, index);
}
static inline uint64_t backend_durable_index(backend_t *be)
{
    return be->ops->durable_index(be);
}
static inline uint64_t backend_readable_index(backend_t *be)
{
    return be->ops->readable_index(be);
}
static inline int backend_notify_fd(backend_t *be)
{
    return be->ops->notify_fd(be);
}
static inline void backend_drain_notify(backend_t *be)
{
    be->ops->drain_notify(be);
}
static inline bool backend_writable(backend_t *be)
{
    return be->ops->writable(be);
}
static inline bool backend_live(backend_t *be)
{
    return !be->ops->live || be->ops->live(be);
}
static inline void backend_stats(backend_t *be, backend_stats_t *out)
{
    be->ops->stats(be, out);
}
static inline void backend_close(backend_t *be)
{
    be->ops->close(be);
}
static inline const char *backend_name(const backend_t *be)
{
    return be->ops->name;
}

/*
 * The local backend over `store` (not owned: backend_close() frees only the
 * backend; the caller closes the store after). NULL when out of memory.
 */
backend_t *backend_local_new(struct store *store);

#endif
