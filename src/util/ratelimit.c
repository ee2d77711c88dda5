/*
 * ratelimit.c - token buckets per key in a fixed table; see ratelimit.h.
 *
 * Layout: a pool of `max_keys` entries, an open-addressing index of twice as
 * many slots (linear probing, deletion by backward shift, so no tombstones
 * build up under churn), and a doubly linked LRU list through the entries.
 * Tokens are kept in thousandths so integer arithmetic refills exactly.
 */
#include "util/ratelimit.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define MILLI 1000u
#define NO_ENTRY UINT32_MAX

typedef struct rl_entry {
    uint8_t key[RATELIMIT_MAX_KEY_BYTES];
    uint8_t key_len;
    uint64_t milli_tokens;
    uint64_t last_ms;
    uint32_t newer, older; /* LRU links (NO_ENTRY at the ends) */
    uint32_t slot;         /* where the index points at it */
} rl_entry_t;

struct ratelimit {
    uint64_t rate_per_s;
    uint64_t cap_milli; /* burst * MILLI */
    uint64_t seed;
    rl_entry_t *entries;
    size_t max_keys, used;
    uint32_t *slots; /* entry index + 1; 0 = empty */
    size_t slot_mask;
    uint32_t newest, oldest;
};

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_key(const ratelimit_t *rl, const uint8_t *key, size_t len)
{
    uint64_t h = rl->seed ^ (len * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < len; i += 8) {
        uint64_t w = 0;
        memcpy(&w, key + i, len - i < 8 ? len - i : 8);
        h = mix64(h ^ w) + 0x9e3779b97f4a7c15ull;
    }
    return mix64(h);
}

ratelimit_t *ratelimit_new(uint32_t rate_per_s, uint32_t burst, size_t max_keys)
{
    if (!rate_per_s || !burst || !max_keys || max_keys > UINT32_MAX / 4)
        return NULL;
    ratelimit_t *rl = calloc(1, sizeof *rl);
    if (!rl)
        return NULL;
    size_t nslots = 4;
    while (nslots < 2 * max_keys)
        nslots *= 2;
    rl->entries = calloc(max_keys, sizeof *rl->entries);
    rl->slots = calloc(nslots, sizeof *rl->slots);
    if (!rl->entries || !rl->slots) {
        ratelimit_free(rl);
        return NULL;
    }
    rl->rate_per_s = rate_per_s;
    rl->cap_milli = (uint64_t)burst * MILLI;
    rl->max_keys = max_keys;
    rl->slot_mask = nslots - 1;
    rl->newest = rl->oldest = NO_ENTRY;
    if (getrandom(&rl->seed, sizeof rl->seed, GRND_NONBLOCK) != (ssize_t)sizeof rl->seed) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts); /* no entropy yet: still varies per run */
        rl->seed = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uintptr_t)rl);
    }
    return rl;
}

void ratelimit_free(ratelimit_t *rl)
{
    if (!rl)
        return;
    free(rl->entries);
    free(rl->slots);
    free(rl);
}

size_t ratelimit_count(const ratelimit_t *rl)
{
    return rl->used;
}

/* ---- LRU list ---- */

static void lru_unlink(ratelimit_t *rl, uint32_t i)
{
    rl_entry_t *e = &rl->entries[i];
    if (e->newer != NO_ENTRY)
        rl->entries[e->newer].older = e->older;
    else
        rl->newest = e->older;
    if (e->older != NO_ENTRY)
        rl->entries[e->older].newer = e->newer;
    else
        rl->oldest = e->newer;
    e->newer = e->older = NO_ENTRY;
}

static void lru_push_newest(ratelimit_t *rl, uint32_t i)
{
    rl_entry_t *e = &rl->entries[i];
    e->newer = NO_ENTRY;
    e->older = rl->newest;
    if (rl->newest != NO_ENTRY)
        rl->entries[rl->newest].newer = i;
    rl->newest = i;
    if (rl->oldest == NO_ENTRY)
        rl->oldest = i;
}

/* ---- index ---- */

static size_t home_slot(const ratelimit_t *rl, const rl_entry_t *e)
{
    return (size_t)hash_key(rl, e->key, e->key_len) & rl->slot_mask;
}

/* Empties slot `hole` and shifts later entries of its probe run back, so
 * that every entry stays reachable from its home slot. */
static void index_remove(ratelimit_t *rl, size_t hole)
{
    rl->slots[hole] = 0;
    for (size_t j = (hole + 1) & rl->slot_mask; rl->slots[j]; j = (j + 1) & rl->slot_mask) {
        rl_entry_t *e = &rl->entries[rl->slots[j] - 1];
        size_t home = home_slot(rl, e);
        /* Move it if its home is not within (hole, j] cyclically. */
        bool between = hole < j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!between) {
            rl->slots[hole] = rl->slots[j];
            e->slot = (uint32_t)hole;
            rl->slots[j] = 0;
            hole = j;
        }
    }
}

uint64_t ratelimit_take(ratelimit_t *rl, const void *key, size_t key_len, uint64_t now_ms)
{
    uint8_t k[RATELIMIT_MAX_KEY_BYTES] = {0};
    if (key_len > RATELIMIT_MAX_KEY_BYTES)
        key_len = RATELIMIT_MAX_KEY_BYTES;
    memcpy(k, key, key_len);
    size_t slot = (size_t)hash_key(rl, k, key_len) & rl->slot_mask;
    rl_entry_t *e = NULL;
    for (; rl->slots[slot]; slot = (slot + 1) & rl->slot_mask) {
        rl_entry_t *cand = &rl->entries[rl->slots[slot] - 1];
        if (cand->key_len == key_len && memcmp(cand->key, k, key_len) == 0) {
            e = cand;
            break;
        }
    }
    uint32_t idx;
    if (e) {
        idx = (uint32_t)(e - rl->entries);
        lru_unlink(rl, idx);
        if (now_ms > e->last_ms) {
            /* Clamp first: a long absence must not overflow the product. */
            uint64_t elapsed = now_ms - e->last_ms;
            uint64_t full_after_ms = rl->cap_milli / rl->rate_per_s + 1;
            if (elapsed > full_after_ms)
                elapsed = full_after_ms;
            e->milli_tokens += elapsed * rl->rate_per_s;
            if (e->milli_tokens > rl->cap_milli)
                e->milli_tokens = rl->cap_milli;
            e->last_ms = now_ms;
        }
    } else {
        if (rl->used < rl->max_keys) {
            idx = (uint32_t)rl->used++;
        } else {
            /* Full: the least recently seen key gives up its bucket. */
            idx = rl->oldest;
            lru_unlink(rl, idx);
            index_remove(rl, rl->entries[idx].slot);
            /* the removal may have shifted our free slot's run: probe again */
            slot = (size_t)hash_key(rl, k, key_len) & rl->slot_mask;
            while (rl->slots[slot])
                slot = (slot + 1) & rl->slot_mask;
        }
        e = &rl->entries[idx];
        memcpy(e->key, k, sizeof e->key);
        e->key_len = (uint8_t)key_len;
        e->milli_tokens = rl->cap_milli;
        e->last_ms = now_ms;
        e->slot = (uint32_t)slot;
        rl->slots[slot] = idx + 1;
    }
    lru_push_newest(rl, idx);
    if (e->milli_tokens >= MILLI) {
        e->milli_tokens -= MILLI;
        return 0;
    }
    uint64_t missing = MILLI - e->milli_tokens;
    return (missing + rl->rate_per_s - 1) / rl->rate_per_s;
}
