/*
 * backend_local.c - the backend over a local store_t (LMDB with its
 * write-ahead log, or memory): each call is the store's, one indirect call
 * deeper, with no copy or allocation of its own on the write path.
 */
#include <stdlib.h>

#include "backend/backend.h"
#include "registry/registry.h"
#include "store/store.h"

typedef struct local_backend {
    backend_t base;
    store_t *store; /* not owned */
} local_backend_t;

static store_t *store_of(backend_t *be)
{
    return ((local_backend_t *)be)->store;
}

/* The store hands its events back through these at startup (store.h):
 * the store does not know the registry, the backend joins the two. */
static int replay_into_registry(void *reg, reg_event_t *ev)
{
    return registry_replay(reg, ev);
}

static void raise_registry_index(void *reg, uint64_t index)
{
    registry_raise_index(reg, index);
}

static int local_load(backend_t *be, struct registry *reg, char *err)
{
    store_replay_sink_t sink = {replay_into_registry, raise_registry_index, reg};
    return store_load(store_of(be), &sink, err);
}
static int local_propose(backend_t *be, const reg_event_t *ev)
{
    return store_append(store_of(be), ev);
}
static int local_remove_token(backend_t *be, const char *name, const uint64_t *indexes, size_t n)
{
    return store_remove_token(store_of(be), name, indexes, n);
}
static reg_event_t *local_fetch(backend_t *be, uint64_t index)
{
    return store_fetch(store_of(be), index);
}
static uint64_t local_durable_index(backend_t *be)
{
    return store_durable_index(store_of(be));
}
static uint64_t local_readable_index(backend_t *be)
{
    return store_readable_index(store_of(be));
}
static int local_notify_fd(backend_t *be)
{
    return store_notify_fd(store_of(be));
}
static void local_drain_notify(backend_t *be)
{
    store_drain_notify(store_of(be));
}
static bool local_writable(backend_t *be)
{
    return store_writable(store_of(be));
}
static void local_stats(backend_t *be, backend_stats_t *out)
{
    store_stats_t st;
    store_stats(store_of(be), &st);
    out->log_frames = st.log_frames;
    out->checkpoints = st.checkpoints;
    out->direct_commits = st.direct_commits;
    out->log_sync = st.log_sync;
    out->checkpoint_sync = st.checkpoint_sync;
    out->direct_sync = st.direct_sync;
}
static void local_close(backend_t *be)
{
    free(be);
}

static const struct backend_ops local_ops = {
    .load = local_load,
    .propose = local_propose,
    .remove_token = local_remove_token,
    .fetch = local_fetch,
    .durable_index = local_durable_index,
    .readable_index = local_readable_index,
    .notify_fd = local_notify_fd,
    .drain_notify = local_drain_notify,
    .writable = local_writable,
    .stats = local_stats,
    .close = local_close,
    .applies_on_propose = true,
    .name = "local",
};

backend_t *backend_local_new(store_t *store)
{
    local_backend_t *lb = calloc(1, sizeof *lb);
    if (!lb)
        return NULL;
    lb->base.ops = &local_ops;
    lb->store = store;
    return &lb->base;
}
