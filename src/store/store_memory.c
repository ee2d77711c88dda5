/*
 * store_memory.c - the store that keeps everything in memory only.
 *
 * Used when disco runs without a data directory (`--data-dir ""`). Nothing
 * survives a restart, but it keeps the encoded events by index so the
 * registry can fetch old history back, exactly as from the LMDB store.
 * Every change is "durable" at once.
 */
#include <errno.h>
#include <stdlib.h>

#include "store/codec.h"
#include "store/store.h"

typedef struct memory_store {
    store_t base;
    uint64_t last_index;
    buf_t *records; /* records[index - 1]; empty when absent */
    size_t cap;
} memory_store_t;

static int memory_load(store_t *st, const store_replay_sink_t *sink, char *err)
{
    (void)st, (void)sink, (void)err;
    return 0;
}

static int memory_append(store_t *st, const reg_event_t *ev)
{
    memory_store_t *ms = (memory_store_t *)st;
    if (ev->index > ms->cap) {
        size_t cap = ms->cap ? ms->cap : 1024;
        while (cap < ev->index)
            cap *= 2;
        buf_t *r = realloc(ms->records, cap * sizeof *r);
        if (!r)
            return -ENOMEM;
        for (size_t i = ms->cap; i < cap; i++)
            buf_init(&r[i]);
        ms->records = r;
        ms->cap = cap;
    }
    buf_t *rec = &ms->records[ev->index - 1];
    buf_reset(rec);
    codec_encode_event(rec, ev);
    ms->last_index = ev->index;
    return buf_failed(rec) ? -ENOMEM : 0;
}

static int memory_remove_token(store_t *st, const char *name, const uint64_t *indexes, size_t n)
{
    (void)name;
    memory_store_t *ms = (memory_store_t *)st;
    for (size_t i = 0; i < n; i++)
        if (indexes[i] && indexes[i] <= ms->cap)
            buf_free(&ms->records[indexes[i] - 1]);
    return 0;
}

static reg_event_t *memory_fetch(store_t *st, uint64_t index)
{
    memory_store_t *ms = (memory_store_t *)st;
    if (!index || index > ms->cap || !ms->records[index - 1].len)
        return NULL;
    return codec_decode_event(ms->records[index - 1].data, ms->records[index - 1].len);
}

static uint64_t memory_durable_index(store_t *st)
{
    return ((memory_store_t *)st)->last_index;
}

static int memory_notify_fd(store_t *st)
{
    (void)st;
    return -1;
}

static void memory_drain_notify(store_t *st)
{
    (void)st;
}

static bool memory_writable(store_t *st)
{
    (void)st;
    return true;
}

static void memory_close(store_t *st)
{
    memory_store_t *ms = (memory_store_t *)st;
    for (size_t i = 0; i < ms->cap; i++)
        buf_free(&ms->records[i]);
    free(ms->records);
    free(ms);
}

static void memory_stats(store_t *st, store_stats_t *out)
{
    (void)st;
    *out = (store_stats_t){0}; /* nothing is logged or committed */
}

static const struct store_ops memory_ops = {
    .load = memory_load,
    .append = memory_append,
    .remove_token = memory_remove_token,
    .fetch = memory_fetch,
    .durable_index = memory_durable_index,
    .readable_index = memory_durable_index,
    .notify_fd = memory_notify_fd,
    .drain_notify = memory_drain_notify,
    .writable = memory_writable,
    .stats = memory_stats,
    .close = memory_close,
    .name = "memory",
};

store_t *store_memory_new(void)
{
    memory_store_t *ms = calloc(1, sizeof *ms);
    if (!ms)
        return NULL;
    ms->base.ops = &memory_ops;
    return &ms->base;
}
