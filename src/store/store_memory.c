/*
 * store_memory.c - the store that keeps nothing.
 *
 * Used when disco runs without a data directory and by tests that exercise
 * the registry alone. It still tracks the highest index it was given so the
 * "durable index" contract holds for callers that wait on it.
 */
#include <stdlib.h>

#include "store/store.h"

typedef struct memory_store {
    store_t base;
    uint64_t last_index;
} memory_store_t;

static int memory_append(store_t *st, const reg_event_t *ev)
{
    ((memory_store_t *)st)->last_index = ev->index;
    return 0;
}

static uint64_t memory_durable_index(store_t *st) { return ((memory_store_t *)st)->last_index; }

static bool memory_healthy(store_t *st)
{
    (void)st;
    return true;
}

static void memory_close(store_t *st) { free(st); }

static const struct store_ops memory_ops = {
    .append = memory_append,
    .durable_index = memory_durable_index,
    .healthy = memory_healthy,
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
