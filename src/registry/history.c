/*
 * history.c - each token's history (the indexes of its events, whole-life,
 * bounded by registry_set_max_events) and the ring of recent events; older
 * events are read back from the backend when a watch asks for them.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/timeutil.h"

/* Appends to a token's history; reg_history_reserve() made the space. */
void reg_history_append(reg_token_t *t, uint64_t index)
{
    assert(t->n_events < t->cap_events);
    t->events[t->n_events++] = index;
}

static reg_event_t **ring_slot(registry_t *reg, uint64_t index)
{
    if (index < reg->ring_base || index - reg->ring_base >= reg->ring_len)
        return NULL;
    return &reg->ring[(reg->ring_head + (index - reg->ring_base)) & (reg->ring_cap - 1)];
}

void reg_ring_drop_front(registry_t *reg)
{
    reg_event_t **slot = &reg->ring[reg->ring_head];
    reg_event_free(*slot);
    *slot = NULL;
    reg->ring_head = (reg->ring_head + 1) & (reg->ring_cap - 1);
    reg->ring_base++;
    reg->ring_len--;
}

/* Frees events beyond the recent window that the backend can read back
 * (none without a backend: then memory is the only copy). */
void reg_ring_trim(registry_t *reg, uint64_t readable)
{
    while (reg->backend && reg->ring_len > RECENT_EVENTS &&
           (!reg->ring[reg->ring_head] || reg->ring[reg->ring_head]->index <= readable))
        reg_ring_drop_front(reg);
}

/*
 * Makes room for the event with `index` (above every event held): slots for
 * any skipped indexes (events removed before a replay) stay empty. A long
 * gap past events the backend can read back restarts the window. 0 or -ENOMEM.
 */
int reg_ring_reserve(registry_t *reg, uint64_t index)
{
    if (reg->ring_len == 0)
        reg->ring_base = index;
    if (index < reg->ring_base)
        return -EINVAL;
    uint64_t readable = reg->backend ? backend_readable_index(reg->backend) : 0;
    while (reg->backend && reg->ring_len &&
           index - reg->ring_base >= (uint64_t)reg->ring_cap + RECENT_EVENTS &&
           (!reg->ring[reg->ring_head] || reg->ring[reg->ring_head]->index <= readable))
        reg_ring_drop_front(reg);
    if (reg->ring_len == 0)
        reg->ring_base = index;
    if (index - reg->ring_base > ((uint64_t)1 << 32))
        return -ENOMEM; /* a window that large means the backend is stuck */
    size_t need = (size_t)(index - reg->ring_base) + 1;
    if (need > reg->ring_cap) {
        size_t cap = reg->ring_cap ? reg->ring_cap : 64;
        while (cap < need)
            cap *= 2;
        reg_event_t **r = calloc(cap, sizeof *r);
        if (!r)
            return -ENOMEM;
        for (size_t i = 0; i < reg->ring_len; i++)
            r[i] = reg->ring[(reg->ring_head + i) & (reg->ring_cap - 1)];
        free(reg->ring);
        reg->ring = r;
        reg->ring_cap = cap;
        reg->ring_head = 0;
    }
    return 0;
}

/* Places `ev` (owned) after reg_ring_reserve(ev->index) succeeded. */
void reg_ring_push(registry_t *reg, reg_event_t *ev)
{
    size_t need = (size_t)(ev->index - reg->ring_base) + 1;
    assert(ev->index >= reg->ring_base && need <= reg->ring_cap);
    while (reg->ring_len < need) {
        reg->ring[(reg->ring_head + reg->ring_len) & (reg->ring_cap - 1)] = NULL;
        reg->ring_len++;
    }
    *ring_slot(reg, ev->index) = ev;
}

/*
 * The event at `index`, borrowed: from memory when recent, else read back
 * from the backend into reg->fetched (valid until the next fetch). NULL when
 * there is none.
 */
const reg_event_t *reg_event_at(registry_t *reg, uint64_t index)
{
    reg_event_t **slot = ring_slot(reg, index);
    if (slot)
        return *slot;
    if (!reg->backend)
        return NULL;
    reg_event_free(reg->fetched);
    reg->fetched = backend_fetch(reg->backend, index);
    return reg->fetched;
}

/* Drops the recent events of a removed token. */
void reg_ring_forget(registry_t *reg, const uint64_t *indexes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        reg_event_t **slot = ring_slot(reg, indexes[i]);
        if (slot) {
            reg_event_free(*slot);
            *slot = NULL;
        }
    }
}

int reg_history_reserve(reg_token_t *t)
{
    if (t->n_events < t->cap_events)
        return 0;
    size_t cap = t->cap_events ? t->cap_events * 2 : 4;
    uint64_t *e = realloc(t->events, cap * sizeof *e);
    if (!e)
        return -ENOMEM;
    t->events = e;
    t->cap_events = cap;
    return 0;
}
