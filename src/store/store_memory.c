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

static int memory_load(store_t *st, registry_t *reg, char *err)
{
    (void)st, (void)reg, (void)err;
    return 0;
}

static int memory_append(store_t *st, const reg_event_t *ev)
{
    ((memory_store_t *)st)->last_index = ev->index;
    return 0;
}

static int memory_remove_token(store_t *st, const char *name, const uint64_t *indexes, size_t n)
{
    (void)st, (void)name, (void)indexes, (void)n;
    return 0;
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
    free(st);
}

static const struct store_ops memory_ops = {
    .load = memory_load,
    .append = memory_append,
    .remove_token = memory_remove_token,
    .durable_index = memory_durable_index,
    .notify_fd = memory_notify_fd,
    .drain_notify = memory_drain_notify,
    .writable = memory_writable,
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
