/*
 * listing_cache.c - rendered GET answers kept until their token changes;
 * see listing_cache.h.
 *
 * Direct-mapped: each (node, variant) has one slot. Two hot nodes that share
 * a slot take turns in it, which costs a render each time, never a wrong
 * answer.
 */
#include "api/listing_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    const void *node; /* NULL: empty */
    unsigned variant;
    uint64_t stamp;
    char *data;
    size_t len, cap;
} entry_t;

struct listing_cache {
    entry_t slots[LISTING_CACHE_SLOTS];
};

listing_cache_t *listing_cache_new(void)
{
    return calloc(1, sizeof(listing_cache_t));
}

void listing_cache_free(listing_cache_t *lc)
{
    if (!lc)
        return;
    for (size_t i = 0; i < LISTING_CACHE_SLOTS; i++)
        free(lc->slots[i].data);
    free(lc);
}

static size_t slot_of(const void *node, unsigned variant)
{
    /* Nodes are at least 16-byte aligned: the low bits say nothing. */
    uint64_t h = ((uint64_t)(uintptr_t)node >> 4) ^ ((uint64_t)variant << 40);
    h *= 0x9E3779B97F4A7C15ULL; /* Fibonacci hashing: the top bits mix all */
    return (size_t)(h >> 32) & (LISTING_CACHE_SLOTS - 1);
}

bool listing_cache_find(const listing_cache_t *lc, const void *node, unsigned variant,
                        uint64_t stamp, const char **data, size_t *len)
{
    const entry_t *e = &lc->slots[slot_of(node, variant)];
    if (stamp == 0 || e->node != node || e->variant != variant || e->stamp != stamp)
        return false;
    *data = e->data;
    *len = e->len;
    return true;
}

void listing_cache_store(listing_cache_t *lc, const void *node, unsigned variant, uint64_t stamp,
                         const char *data, size_t len)
{
    if (stamp == 0 || len > LISTING_CACHE_MAX_BODY_BYTES)
        return;
    entry_t *e = &lc->slots[slot_of(node, variant)];
    e->node = NULL;
    if (len > e->cap) {
        char *p = realloc(e->data, len);
        if (!p)
            return;
        e->data = p;
        e->cap = len;
    }
    memcpy(e->data, data, len);
    e->len = len;
    e->node = node;
    e->variant = variant;
    e->stamp = stamp;
}
