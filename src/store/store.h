/*
 * store.h - where the registry's changes go to be kept.
 *
 * The registry is the in-memory authority on the event loop thread; a store
 * makes its changes durable. Every change is one reg_event_t (it carries the
 * full new state of the node it touches), so a store only has to keep the
 * stream of events in index order and hand it back at startup (replay).
 *
 * Implementations:
 *   - store_memory: keeps nothing; for tests, fuzzing and `--data-dir ""`;
 *   - (planned) an LMDB store with group commit on a writer thread: it
 *     acknowledges a change only after fsync, so the HTTP layer holds each
 *     answer until the store reports the change's index as durable;
 *   - (planned) an etcd store, where the commit is an etcd transaction.
 *
 * Contract for every implementation: store_append() never blocks the event
 * loop; changes are made durable in index order; store_durable_index() only
 * grows.
 */
#ifndef DISCO_STORE_STORE_H
#define DISCO_STORE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "registry/registry.h"

struct store;

struct store_ops {
    /* Queues `ev` (already applied in memory) to be kept. 0 or -errno. */
    int (*append)(struct store *st, const reg_event_t *ev);
    /* The highest index known to be durable. */
    uint64_t (*durable_index)(struct store *st);
    /* Whether the store can take a write now (GET /health). */
    bool (*healthy)(struct store *st);
    /* Flushes what is queued and releases everything. */
    void (*close)(struct store *st);
    /* A short name for logs ("memory", "lmdb", "etcd"). */
    const char *name;
};

typedef struct store {
    const struct store_ops *ops;
} store_t;

static inline int store_append(store_t *st, const reg_event_t *ev)
{
    return st->ops->append(st, ev);
}
static inline uint64_t store_durable_index(store_t *st) { return st->ops->durable_index(st); }
static inline bool store_healthy(store_t *st) { return st->ops->healthy(st); }
static inline void store_close(store_t *st) { st->ops->close(st); }
static inline const char *store_name(const store_t *st) { return st->ops->name; }

/* A store that keeps nothing: every change is "durable" at once. */
store_t *store_memory_new(void);

#endif
