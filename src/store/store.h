/*
 * store.h - where the registry's changes go to be kept.
 *
 * The registry is the in-memory authority on the event loop thread; a store
 * makes its changes durable. Every change is one reg_event_t (it carries the
 * full new state of the node it touches), so a store only has to keep the
 * stream of events in index order, hand it back at startup (replay), and
 * read single events back by index: the registry keeps only recent events
 * in memory and fetches older ones when a watch asks for them.
 *
 * Implementations:
 *   - store_memory: keeps nothing; for tests, fuzzing and `--data-dir ""`;
 *   - store_lmdb: the embedded default; group commit on a writer thread,
 *     one synchronous write-ahead log write per batch, moved into LMDB in
 *     bulk. The HTTP layer holds each answer until the store reports the
 *     index it reflects as durable;
 *   - (planned) an etcd store, where the commit is an etcd transaction.
 *
 * Contract for every implementation: store_append() never blocks the event
 * loop; changes are made durable in index order; store_durable_index() and
 * store_readable_index() only grow.
 */
#ifndef DISCO_STORE_STORE_H
#define DISCO_STORE_STORE_H

#include <stdbool.h>
#include <stdint.h>

/* For reg_event_t only: the store knows events, never the registry that
 * applies them (load() hands them to a callback). */
#include "registry/event.h"

struct histogram; /* util/histogram.h */

struct store;

/*
 * Where load() hands back what a store keeps. Both calls happen on the
 * calling thread, during load() only.
 */
typedef struct store_replay_sink {
    /* Each kept event, in index order. Takes ownership of `ev` (also when
     * it fails). 0 to go on, or -errno to stop the load: -EINVAL when the
     * event does not follow the ones before it (the store is corrupt),
     * -ENOMEM. */
    int (*replay)(void *ctx, reg_event_t *ev);
    /* Once, after the last event: the highest index the store ever used,
     * at least that of every event replayed. Indexes never repeat, even
     * after the events that used them are removed. */
    void (*raise_index)(void *ctx, uint64_t index);
    void *ctx;
} store_replay_sink_t;

/* Counters a store keeps about its own work (for /metrics); a store that
 * does not do a kind of work leaves its counter at 0. */
typedef struct store_stats {
    uint64_t log_frames;     /* batches made durable as one log frame */
    uint64_t checkpoints;    /* moves of logged batches into the main store */
    uint64_t direct_commits; /* batches committed straight to the main store */
    /* How long each of those took, the sync included; owned by the store,
     * valid until store_close(), written by its writer thread. NULL: the
     * store does no such work. */
    const struct histogram *log_sync, *checkpoint_sync, *direct_sync;
} store_stats_t;

struct store_ops {
    /* Startup: hands everything kept to `sink` (see above). 0, or -1 with
     * a one-line reason in `err` (256 bytes). */
    int (*load)(struct store *st, const store_replay_sink_t *sink, char *err);
    /* Queues `ev` (already applied in memory) to be kept. 0 or -errno. */
    int (*append)(struct store *st, const reg_event_t *ev);
    /* Queues the removal of a token and the events at `indexes`. 0 or -errno. */
    int (*remove_token)(struct store *st, const char *name, const uint64_t *indexes, size_t n);
    /* Reads back the event at `index` (a new event the caller frees with
     * reg_event_free), or NULL if there is none. Only durable events need
     * to be found: the registry keeps the others in memory. Loop thread. */
    reg_event_t *(*fetch)(struct store *st, uint64_t index);
    /* The highest index known to be durable. */
    uint64_t (*durable_index)(struct store *st);
    /* The highest index up to which fetch() finds every event that exists.
     * It may trail durable_index: a store can make events durable in one
     * place (a log) before it files them where fetch() reads. */
    uint64_t (*readable_index)(struct store *st);
    /* A file descriptor that becomes readable when the durable index moves
     * (-1: it never lags), and the call that drains it. */
    int (*notify_fd)(struct store *st);
    void (*drain_notify)(struct store *st);
    /* Whether a new write should be accepted now: false when the disk or
     * the store's map is nearly full, or commits are failing. */
    bool (*writable)(struct store *st);
    /* Fills `out`; loop thread. */
    void (*stats)(struct store *st, store_stats_t *out);
    /* Flushes what is queued and releases everything. */
    void (*close)(struct store *st);
    /* A short name for logs ("memory", "lmdb", "etcd"). */
    const char *name;
};

typedef struct store {
    const struct store_ops *ops;
} store_t;

static inline int store_load(store_t *st, const store_replay_sink_t *sink, char *err)
{
    return st->ops->load(st, sink, err);
}
static inline int store_append(store_t *st, const reg_event_t *ev)
{
    return st->ops->append(st, ev);
}
static inline int store_remove_token(store_t *st, const char *name, const uint64_t *indexes,
                                     size_t n)
{
    return st->ops->remove_token(st, name, indexes, n);
}
static inline reg_event_t *store_fetch(store_t *st, uint64_t index)
{
    return st->ops->fetch(st, index);
}
static inline uint64_t store_durable_index(store_t *st)
{
    return st->ops->durable_index(st);
}
static inline uint64_t store_readable_index(store_t *st)
{
    return st->ops->readable_index(st);
}
static inline int store_notify_fd(store_t *st)
{
    return st->ops->notify_fd(st);
}
static inline void store_drain_notify(store_t *st)
{
    st->ops->drain_notify(st);
}
static inline bool store_writable(store_t *st)
{
    return st->ops->writable(st);
}
static inline void store_stats(store_t *st, store_stats_t *out)
{
    st->ops->stats(st, out);
}
static inline void store_close(store_t *st)
{
    st->ops->close(st);
}
static inline const char *store_name(const store_t *st)
{
    return st->ops->name;
}

/* A store that keeps nothing: every change is "durable" at once. */
store_t *store_memory_new(void);

typedef struct store_lmdb_options {
    size_t map_size_bytes; /* upper bound of the data file */
} store_lmdb_options_t;

#define STORE_LMDB_DEFAULT_MAP_BYTES ((size_t)8 << 30)

/*
 * Opens (or creates) the embedded store in `dir`: takes the directory's
 * lock, checks the format, starts the writer thread. Refuses a directory
 * locked by another process (naming it), a corrupt or foreign one, rather
 * than resetting anything. NULL with a one-line reason in `err` (256 bytes).
 */
store_t *store_lmdb_open(const char *dir, const store_lmdb_options_t *opt, char *err);

#endif
