/*
 * ttl.c - keys with a TTL: a min-heap of nodes by expiry instant, and
 * registry_expire, which turns each key whose time ran out into an
 * "expire" event (never refused by the event bound).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/timeutil.h"

static void heap_swap(registry_t *reg, size_t a, size_t b)
{
    reg_node_t *t = reg->heap[a];
    reg->heap[a] = reg->heap[b];
    reg->heap[b] = t;
    reg->heap[a]->heap_pos = a + 1;
    reg->heap[b]->heap_pos = b + 1;
}

static void heap_sift(registry_t *reg, size_t i)
{
    while (i > 0 && reg->heap[(i - 1) / 2]->expire_ns > reg->heap[i]->expire_ns) {
        heap_swap(reg, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < reg->heap_len && reg->heap[l]->expire_ns < reg->heap[m]->expire_ns)
            m = l;
        if (r < reg->heap_len && reg->heap[r]->expire_ns < reg->heap[m]->expire_ns)
            m = r;
        if (m == i)
            return;
        heap_swap(reg, i, m);
        i = m;
    }
}

void reg_heap_remove(registry_t *reg, reg_node_t *n)
{
    if (!n->heap_pos)
        return;
    size_t i = n->heap_pos - 1;
    n->heap_pos = 0;
    reg->heap_len--;
    if (i == reg->heap_len)
        return;
    reg->heap[i] = reg->heap[reg->heap_len];
    reg->heap[i]->heap_pos = i + 1;
    heap_sift(reg, i);
}

int reg_heap_reserve(registry_t *reg)
{
    if (reg->heap_len < reg->heap_cap)
        return 0;
    size_t cap = reg->heap_cap ? reg->heap_cap * 2 : 64;
    reg_node_t **h = realloc(reg->heap, cap * sizeof *h);
    if (!h)
        return -ENOMEM;
    reg->heap = h;
    reg->heap_cap = cap;
    return 0;
}

void reg_node_set_expiry(registry_t *reg, reg_node_t *n, int64_t expire_ns)
{
    if (!expire_ns) {
        reg_heap_remove(reg, n);
        n->expire_ns = 0;
        return;
    }
    if (!n->heap_pos) {
        assert(reg->heap_len < reg->heap_cap); /* reg_heap_reserve() made room */
        reg->heap[reg->heap_len++] = n;
        n->heap_pos = reg->heap_len;
    }
    n->expire_ns = expire_ns;
    heap_sift(reg, n->heap_pos - 1);
}

int64_t registry_expire(registry_t *reg, int64_t now_ns)
{
    /* A backend that applies on delivery (etcd) decides expiries itself: a
     * key with a TTL has an etcd lease, and its expiry comes back through
     * the watch as a delivered "expire" (backend_etcd.c). Expiring it here
     * too would make every instance propose its own delete. The heap is
     * still kept: it is what the nodes' TTLs are read from. */
    if (reg->backend && !reg->backend->ops->applies_on_propose)
        return 0;
    while (reg->heap_len && reg->heap[0]->expire_ns <= now_ns) {
        reg_node_t *n = reg->heap[0];
        reg_result_t r = {0};
        reg_commit_change(reg, n, REG_ACT_EXPIRE, NULL, 0, now_ns, &r);
        if (r.err) {
            /* Out of memory: leave the key for the next tick. */
            reg_result_clear(&r);
            return now_ns + NS_PER_SEC;
        }
        reg_result_clear(&r);
    }
    return reg->heap_len ? reg->heap[0]->expire_ns : 0;
}
