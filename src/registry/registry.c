/*
 * registry.c - tokens, their v2 key trees, the global index, histories,
 * TTL expiry and parked watchers. See registry.h for the rules.
 *
 * Shape of the data:
 *   registry --hash--> token --dir--> node tree (children in creation order)
 *                        |--> events[] (the token's whole history, by index)
 *                        '--> waiters (doubly linked list of parked watches)
 *   registry --heap--> nodes with a TTL, by expiry instant
 *
 * Every operation follows etcd's v2 store (server/etcdserver/api/v2store):
 * validate against the live tree, build the event, then apply_event(), which
 * is the only function that mutates a tree. Keeping all mutation in one
 * function that takes only the event is what lets a durable store rebuild
 * the registry by replaying its log.
 */
#include "registry/registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "store/store.h"
#include "util/buf.h"
#include "util/timeutil.h"

/*
 * Children lookup of a large directory: open addressing with linear probing
 * over the child pointers, keyed by name. Small directories (a token's three
 * members) have none and are scanned, which costs no memory per node.
 */
typedef struct child_index {
    struct reg_node **slots;
    size_t cap; /* power of two, at least twice the children */
} child_index_t;

/* Directories with more children than this get a child_index. */
#define CHILD_INDEX_MIN 16

struct reg_node {
    union {
        char *value;          /* files */
        child_index_t *index; /* directories: large ones only, else NULL */
    };
    uint64_t created_index;
    uint64_t modified_index;
    int64_t expire_ns; /* 0 = permanent */
    /* Siblings are singly linked: unlinking scans, which is cheap where it
     * happens (small directories; deletes are rare), and a member is one
     * pointer smaller. */
    struct reg_node *parent, *first_child, *last_child, *next;
    uint32_t heap_pos; /* 1-based position in the TTL heap; 0 = not there */
    uint32_t n_children;
    bool is_dir;
    /* The last segment of the key only: the full key is the parent's key
     * and this name (a token directory: REGISTRY_PREFIX/<token>), built
     * when needed. Full keys in every node cost more memory than all the
     * rest of a member. */
    char name[];
};

typedef struct reg_token {
    UT_hash_handle hh;
    const char *name; /* hash key: the directory's name */
    reg_node_t *dir;
    int64_t created_ns;
    uint64_t *events; /* indexes of the token's whole history, in order */
    size_t n_events, cap_events;
    reg_waiter_t *waiters;
    size_t n_keys; /* nodes below the directory, _config excluded */
} reg_token_t;

struct registry {
    reg_token_t *tokens; /* uthash head */
    size_t n_tokens;
    size_t n_waiters;
    uint64_t index;
    size_t max_keys;
    store_t *store;
    reg_node_t **heap; /* TTL min-heap by expire_ns */
    size_t heap_len, heap_cap;
    /* Recent events, owned: ring[(i + ring_head) & (ring_cap - 1)] holds the
     * event with index ring_base + i for i < ring_len (NULL: none, e.g. its
     * token was removed). Older events are fetched from the store. */
    reg_event_t **ring;
    size_t ring_cap, ring_head, ring_len;
    uint64_t ring_base;
    reg_event_t *fetched; /* the last event read back from the store */
    /* A write failed half-way (out of memory): some tree may hold a change
     * no event records, so gets give no stamps any more. */
    bool has_unrecorded_change;
};

/* Events kept in memory once the store can read them back: enough for members that
 * watch what just happened; older history is read back from the store. */
#define RECENT_EVENTS 4096

/* ---- small helpers ---------------------------------------------------- */

const char *reg_action_name(enum reg_action action)
{
    static const char *const names[] = {
        [REG_ACT_GET] = "get",
        [REG_ACT_CREATE] = "create",
        [REG_ACT_SET] = "set",
        [REG_ACT_UPDATE] = "update",
        [REG_ACT_CAS] = "compareAndSwap",
        [REG_ACT_DELETE] = "delete",
        [REG_ACT_CAD] = "compareAndDelete",
        [REG_ACT_EXPIRE] = "expire",
    };
    return names[action];
}

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

void reg_result_clear(reg_result_t *r)
{
    free(r->cause);
    memset(r, 0, sizeof *r);
}

static void fail(registry_t *reg, reg_result_t *out, enum reg_errcode code, const char *cause)
{
    out->err = code;
    out->cause = dup_str(cause);
    out->index = reg->index;
    out->event = NULL;
    out->node = NULL;
}

static void fail_nomem(registry_t *reg, reg_result_t *out)
{
    fail(reg, out, REG_E_INTERNAL, "out of memory");
}

static char *node_key_dup(const reg_node_t *n);

/* An error whose cause is a node's key. */
static void fail_at(registry_t *reg, reg_result_t *out, enum reg_errcode code, const reg_node_t *n)
{
    char *key = node_key_dup(n);
    if (!key) {
        fail_nomem(reg, out);
        return;
    }
    fail(reg, out, code, key);
    free(key);
}

/* ---- node accessors --------------------------------------------------- */

void reg_node_put_key(const reg_node_t *n, buf_t *out)
{
    if (n->parent) {
        reg_node_put_key(n->parent, out);
        buf_putc(out, '/');
    } else {
        buf_puts(out, REGISTRY_PREFIX "/");
    }
    buf_puts(out, n->name);
}

const char *reg_node_name(const reg_node_t *n)
{
    return n->name;
}

/* The full key as a new string, or NULL when out of memory. */
static char *node_key_dup(const reg_node_t *n)
{
    buf_t b = BUF_INIT;
    reg_node_put_key(n, &b);
    if (buf_failed(&b)) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

const char *reg_node_value(const reg_node_t *n)
{
    return n->is_dir ? NULL : n->value;
}
bool reg_node_is_dir(const reg_node_t *n)
{
    return n->is_dir;
}
bool reg_node_is_hidden(const reg_node_t *n)
{
    return n->name[0] == '_';
}
uint64_t reg_node_created_index(const reg_node_t *n)
{
    return n->created_index;
}
uint64_t reg_node_modified_index(const reg_node_t *n)
{
    return n->modified_index;
}
int64_t reg_node_expire_ns(const reg_node_t *n)
{
    return n->expire_ns;
}
const reg_node_t *reg_node_first_child(const reg_node_t *n)
{
    return n->first_child;
}
const reg_node_t *reg_node_next_sibling(const reg_node_t *n)
{
    return n->next;
}
size_t reg_node_child_count(const reg_node_t *n)
{
    return n->n_children;
}

/* ---- keys ------------------------------------------------------------- */

/*
 * Go's path.Clean(path.Join("/", key)): duplicate slashes, trailing slashes,
 * "." and ".." resolved lexically. Returns a new string or NULL (no memory).
 */
static char *clean_key(const char *key)
{
    size_t len = strlen(key);
    char *out = malloc(len + 2);
    if (!out)
        return NULL;
    size_t o = 0;
    const char *p = key;
    while (*p) {
        while (*p == '/')
            p++;
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        size_t sl = (size_t)(p - seg);
        if (sl == 0 || (sl == 1 && seg[0] == '.'))
            continue;
        if (sl == 2 && seg[0] == '.' && seg[1] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--; /* drop the slash too */
            continue;
        }
        out[o++] = '/';
        memcpy(out + o, seg, sl);
        o += sl;
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return out;
}

/*
 * Splits a clean key into its token name and the rest. Returns false when the
 * key is not inside a token (including the token-less prefix itself).
 */
static bool split_token(const char *key, const char **name, size_t *name_len, const char **rest)
{
    static const char prefix[] = REGISTRY_PREFIX "/";
    if (strncmp(key, prefix, sizeof prefix - 1) != 0)
        return false;
    const char *t = key + sizeof prefix - 1;
    const char *slash = strchr(t, '/');
    *name = t;
    *name_len = slash ? (size_t)(slash - t) : strlen(t);
    *rest = slash ? slash : t + *name_len;
    return *name_len > 0;
}

bool registry_valid_token_name(const char *name, size_t len)
{
    if (len == 0 || len > REGISTRY_MAX_TOKEN_BYTES || name[0] == '_' || name[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static reg_token_t *find_token(registry_t *reg, const char *name, size_t len)
{
    reg_token_t *t = NULL;
    HASH_FIND(hh, reg->tokens, name, len, t);
    return t;
}

/* ---- TTL heap ----------------------------------------------------------- */

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

static void heap_remove(registry_t *reg, reg_node_t *n)
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

/* Sets a node's expiry and keeps the heap in step. 0 or -ENOMEM. */
static int node_set_expiry(registry_t *reg, reg_node_t *n, int64_t expire_ns)
{
    if (!expire_ns) {
        heap_remove(reg, n);
        n->expire_ns = 0;
        return 0;
    }
    if (!n->heap_pos) {
        if (reg->heap_len == reg->heap_cap) {
            size_t cap = reg->heap_cap ? reg->heap_cap * 2 : 64;
            reg_node_t **h = realloc(reg->heap, cap * sizeof *h);
            if (!h)
                return -ENOMEM;
            reg->heap = h;
            reg->heap_cap = cap;
        }
        reg->heap[reg->heap_len++] = n;
        n->heap_pos = reg->heap_len;
    }
    n->expire_ns = expire_ns;
    heap_sift(reg, n->heap_pos - 1);
    return 0;
}

/* ---- tree --------------------------------------------------------------- */

static reg_node_t *node_new(const char *name, size_t name_len, bool is_dir, const char *value,
                            uint64_t index)
{
    reg_node_t *n = calloc(1, sizeof *n + name_len + 1);
    if (!n)
        return NULL;
    n->value = is_dir ? NULL : strdup(value ? value : "");
    if (!is_dir && !n->value) {
        free(n);
        return NULL;
    }
    memcpy(n->name, name, name_len);
    n->name[name_len] = '\0';
    n->is_dir = is_dir;
    n->created_index = n->modified_index = index;
    return n;
}

static size_t name_hash(const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return (size_t)h;
}

static bool name_is(const reg_node_t *n, const char *name, size_t len)
{
    return strncmp(n->name, name, len) == 0 && n->name[len] == '\0';
}

static void index_put(child_index_t *ix, reg_node_t *n)
{
    size_t mask = ix->cap - 1, i = name_hash(n->name, strlen(n->name)) & mask;
    while (ix->slots[i])
        i = (i + 1) & mask;
    ix->slots[i] = n;
}

/* (Re)builds a directory's index for its current children; -ENOMEM keeps
 * the old one (lookups stay correct: the list is authoritative). */
static int index_build(reg_node_t *dir, size_t cap)
{
    child_index_t *ix = dir->index ? dir->index : calloc(1, sizeof *ix);
    reg_node_t **slots = ix ? calloc(cap, sizeof *slots) : NULL;
    if (!slots) {
        if (ix && !dir->index)
            free(ix);
        return -ENOMEM;
    }
    free(ix->slots);
    ix->slots = slots;
    ix->cap = cap;
    dir->index = ix;
    for (reg_node_t *c = dir->first_child; c; c = c->next)
        index_put(ix, c);
    return 0;
}

static void index_remove(child_index_t *ix, const reg_node_t *n)
{
    size_t mask = ix->cap - 1, i = name_hash(n->name, strlen(n->name)) & mask;
    while (ix->slots[i] && ix->slots[i] != n)
        i = (i + 1) & mask;
    if (!ix->slots[i])
        return;
    ix->slots[i] = NULL;
    /* Backward-shift: re-place the rest of the probe run. */
    for (size_t j = (i + 1) & mask; ix->slots[j]; j = (j + 1) & mask) {
        reg_node_t *m = ix->slots[j];
        ix->slots[j] = NULL;
        index_put(ix, m);
    }
}

static void index_free(reg_node_t *dir)
{
    if (dir->index) {
        free(dir->index->slots);
        free(dir->index);
        dir->index = NULL;
    }
}

static void node_link(reg_node_t *parent, reg_node_t *child)
{
    child->parent = parent;
    child->next = NULL;
    if (parent->last_child)
        parent->last_child->next = child;
    else
        parent->first_child = child;
    parent->last_child = child;
    parent->n_children++;
    child_index_t *ix = parent->index;
    if (ix && parent->n_children * 2 <= ix->cap)
        index_put(ix, child);
    else if (parent->n_children > CHILD_INDEX_MIN &&
             index_build(parent, ix ? ix->cap * 2 : 64) != 0)
        index_free(parent); /* no memory: fall back to scanning */
}

static void node_unlink(reg_node_t *n)
{
    reg_node_t *p = n->parent;
    if (!p)
        return;
    if (p->index)
        index_remove(p->index, n);
    reg_node_t *prev = NULL;
    for (reg_node_t *c = p->first_child; c != n; c = c->next)
        prev = c;
    if (prev)
        prev->next = n->next;
    else
        p->first_child = n->next;
    if (p->last_child == n)
        p->last_child = prev;
    p->n_children--;
    n->parent = n->next = NULL;
}

/* Frees a node and its subtree (already unlinked or being freed whole). */
static void node_free_tree(registry_t *reg, reg_node_t *n)
{
    reg_node_t *c = n->first_child;
    while (c) {
        reg_node_t *next = c->next;
        node_free_tree(reg, c);
        c = next;
    }
    heap_remove(reg, n);
    if (n->is_dir)
        index_free(n);
    else
        free(n->value);
    free(n);
}

static reg_node_t *node_child(const reg_node_t *dir, const char *name, size_t len)
{
    const child_index_t *ix = dir->index;
    if (ix) {
        size_t mask = ix->cap - 1;
        for (size_t i = name_hash(name, len) & mask; ix->slots[i]; i = (i + 1) & mask)
            if (name_is(ix->slots[i], name, len))
                return ix->slots[i];
        return NULL;
    }
    for (reg_node_t *c = dir->first_child; c; c = c->next)
        if (name_is(c, name, len))
            return c;
    return NULL;
}

/*
 * Walks `rest` (e.g. "/a/b") from the token directory, like etcd's
 * internalGet: a file in the middle is 104 Not a directory (cause: the
 * file), a missing segment is 100 Key not found (cause: the path up to it).
 */
static reg_node_t *walk(registry_t *reg, reg_token_t *t, const char *rest, reg_result_t *out)
{
    reg_node_t *n = t->dir;
    const char *p = rest;
    while (*p) {
        p++; /* the slash */
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        if (!n->is_dir) {
            fail_at(reg, out, REG_E_NOT_DIR, n);
            return NULL;
        }
        reg_node_t *c = node_child(n, seg, (size_t)(p - seg));
        if (!c) {
            buf_t b = BUF_INIT;
            reg_node_put_key(n, &b);
            buf_putc(&b, '/');
            buf_append(&b, seg, (size_t)(p - seg));
            fail(reg, out, REG_E_KEY_NOT_FOUND, buf_cstr(&b));
            buf_free(&b);
            return NULL;
        }
        n = c;
    }
    return n;
}

/* ---- snapshots and events ----------------------------------------------- */

static void snap_free(reg_snap_t *s)
{
    free(s->key);
    free(s->value);
}

/* etcd's node.Repr(false, false): the node without its children. */
static int snap_of(reg_snap_t *s, const reg_node_t *n, int64_t now_ns)
{
    memset(s, 0, sizeof *s);
    s->key = node_key_dup(n);
    s->value = n->is_dir ? NULL : strdup(n->value);
    if (!s->key || (!n->is_dir && !s->value)) {
        snap_free(s);
        return -ENOMEM;
    }
    s->is_dir = n->is_dir;
    s->created_index = n->created_index;
    s->modified_index = n->modified_index;
    s->expire_ns = n->expire_ns;
    s->ttl_s = time_ttl_left_s(n->expire_ns, now_ns);
    return 0;
}

void reg_event_free(reg_event_t *ev)
{
    if (!ev)
        return;
    snap_free(&ev->node);
    if (ev->has_prev)
        snap_free(&ev->prev);
    free(ev->wire);
    free(ev);
}

static reg_event_t *event_new(enum reg_action action, uint64_t index, int64_t now_ns,
                              const char *key, bool is_dir, const char *value,
                              uint64_t created_index, int64_t expire_ns)
{
    reg_event_t *ev = calloc(1, sizeof *ev);
    if (!ev)
        return NULL;
    ev->action = action;
    ev->index = index;
    ev->wall_ns = now_ns;
    ev->node.key = strdup(key);
    ev->node.value = value ? strdup(value) : NULL;
    if (!ev->node.key || (value && !ev->node.value)) {
        reg_event_free(ev);
        return NULL;
    }
    ev->node.is_dir = is_dir;
    ev->node.created_index = created_index;
    ev->node.modified_index = index;
    ev->node.expire_ns = expire_ns;
    ev->node.ttl_s = time_ttl_left_s(expire_ns, now_ns);
    return ev;
}

/* Appends to a token's history; record_room() made the space. */
static void history_append(reg_token_t *t, uint64_t index)
{
    t->events[t->n_events++] = index;
}

/* ---- recent events ------------------------------------------------------ */

static reg_event_t **ring_slot(registry_t *reg, uint64_t index)
{
    if (index < reg->ring_base || index - reg->ring_base >= reg->ring_len)
        return NULL;
    return &reg->ring[(reg->ring_head + (index - reg->ring_base)) & (reg->ring_cap - 1)];
}

static void ring_drop_front(registry_t *reg)
{
    reg_event_t **slot = &reg->ring[reg->ring_head];
    reg_event_free(*slot);
    *slot = NULL;
    reg->ring_head = (reg->ring_head + 1) & (reg->ring_cap - 1);
    reg->ring_base++;
    reg->ring_len--;
}

/* Frees events beyond the recent window that the store can read back
 * (none without a store: then memory is the only copy). */
static void ring_trim(registry_t *reg, uint64_t readable)
{
    while (reg->store && reg->ring_len > RECENT_EVENTS &&
           (!reg->ring[reg->ring_head] || reg->ring[reg->ring_head]->index <= readable))
        ring_drop_front(reg);
}

/*
 * Makes room for the event with `index` (above every event held): slots for
 * any skipped indexes (events removed before a replay) stay empty. A long
 * gap past events the store can read back restarts the window. 0 or -ENOMEM.
 */
static int ring_reserve(registry_t *reg, uint64_t index)
{
    if (reg->ring_len == 0)
        reg->ring_base = index;
    if (index < reg->ring_base)
        return -EINVAL;
    uint64_t readable = reg->store ? store_readable_index(reg->store) : 0;
    while (reg->store && reg->ring_len &&
           index - reg->ring_base >= (uint64_t)reg->ring_cap + RECENT_EVENTS &&
           (!reg->ring[reg->ring_head] || reg->ring[reg->ring_head]->index <= readable))
        ring_drop_front(reg);
    if (reg->ring_len == 0)
        reg->ring_base = index;
    if (index - reg->ring_base > ((uint64_t)1 << 32))
        return -ENOMEM; /* a window that large means the store is stuck */
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

/* Places `ev` (owned) after ring_reserve(ev->index) succeeded. */
static void ring_push(registry_t *reg, reg_event_t *ev)
{
    size_t need = (size_t)(ev->index - reg->ring_base) + 1;
    while (reg->ring_len < need) {
        reg->ring[(reg->ring_head + reg->ring_len) & (reg->ring_cap - 1)] = NULL;
        reg->ring_len++;
    }
    *ring_slot(reg, ev->index) = ev;
}

/*
 * Reserves everything recording `ev` needs (its ring slot, a history entry
 * in an existing token), so that once the tree has changed nothing can fail.
 */
static int record_room(registry_t *reg, const reg_event_t *ev)
{
    if (ring_reserve(reg, ev->index) != 0)
        return -ENOMEM;
    const char *name, *rest;
    size_t len;
    reg_token_t *t =
        split_token(ev->node.key, &name, &len, &rest) ? find_token(reg, name, len) : NULL;
    if (t && t->n_events == t->cap_events) {
        size_t cap = t->cap_events * 2;
        uint64_t *e = realloc(t->events, cap * sizeof *e);
        if (!e)
            return -ENOMEM;
        t->events = e;
        t->cap_events = cap;
    }
    return 0;
}

/*
 * The event at `index`, borrowed: from memory when recent, else read back
 * from the store into reg->fetched (valid until the next fetch). NULL when
 * there is none.
 */
static const reg_event_t *event_at(registry_t *reg, uint64_t index)
{
    reg_event_t **slot = ring_slot(reg, index);
    if (slot)
        return *slot;
    if (!reg->store)
        return NULL;
    reg_event_free(reg->fetched);
    reg->fetched = store_fetch(reg->store, index);
    return reg->fetched;
}

/* Drops the recent events of a removed token. */
static void ring_forget(registry_t *reg, const uint64_t *indexes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        reg_event_t **slot = ring_slot(reg, indexes[i]);
        if (slot) {
            reg_event_free(*slot);
            *slot = NULL;
        }
    }
}

/* ---- tokens ------------------------------------------------------------- */

static reg_token_t *token_new(registry_t *reg, const char *name, size_t len, uint64_t index,
                              int64_t now_ns)
{
    reg_token_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->dir = node_new(name, len, true, NULL, index);
    t->cap_events = 4; /* a token, its size and a few members */
    t->events = malloc(t->cap_events * sizeof *t->events);
    if (!t->dir || !t->events) {
        free(t->events);
        if (t->dir)
            node_free_tree(reg, t->dir);
        free(t);
        return NULL;
    }
    t->name = t->dir->name; /* the directory's name is the token's */
    t->created_ns = now_ns;
    HASH_ADD_KEYPTR(hh, reg->tokens, t->name, len, t);
    reg->n_tokens++;
    return t;
}

static void token_free(registry_t *reg, reg_token_t *t)
{
    for (reg_waiter_t *w = t->waiters; w;) {
        reg_waiter_t *next = w->next;
        free(w->key);
        w->key = NULL;
        w->token = NULL;
        w->next = w->prev = NULL;
        reg->n_waiters--;
        w = next;
    }
    free(t->events);
    node_free_tree(reg, t->dir);
    free(t);
}

registry_t *registry_new(store_t *store)
{
    registry_t *reg = calloc(1, sizeof *reg);
    if (!reg)
        return NULL;
    reg->store = store;
    reg->max_keys = REGISTRY_DEFAULT_MAX_KEYS;
    return reg;
}

void registry_free(registry_t *reg)
{
    if (!reg)
        return;
    reg_token_t *t, *tmp;
    HASH_ITER(hh, reg->tokens, t, tmp)
    {
        HASH_DEL(reg->tokens, t);
        token_free(reg, t);
    }
    free(reg->heap);
    while (reg->ring_len)
        ring_drop_front(reg);
    free(reg->ring);
    reg_event_free(reg->fetched);
    free(reg);
}

void registry_set_max_keys(registry_t *reg, size_t max_keys)
{
    reg->max_keys = max_keys;
}

uint64_t registry_index(const registry_t *reg)
{
    return reg->index;
}
size_t registry_token_count(const registry_t *reg)
{
    return reg->n_tokens;
}
size_t registry_waiter_count(const registry_t *reg)
{
    return reg->n_waiters;
}

/* ---- key accounting ------------------------------------------------------ */

static bool rest_in_config(const char *rest)
{
    return strncmp(rest, "/_config", 8) == 0 && (rest[8] == '\0' || rest[8] == '/');
}

static size_t subtree_size(const reg_node_t *n)
{
    size_t total = 1;
    for (const reg_node_t *c = n->first_child; c; c = c->next)
        total += subtree_size(c);
    return total;
}

/* ---- applying events ---------------------------------------------------- */

/*
 * Makes the tree reflect `ev` (already validated). Creates the token on the
 * first event of a token. Returns 0 or -ENOMEM; on failure the tree may hold
 * a new empty intermediate directory, which is harmless.
 */
static int apply_event(registry_t *reg, const reg_event_t *ev, reg_token_t **token_out)
{
    const char *name, *rest;
    size_t name_len;
    if (!split_token(ev->node.key, &name, &name_len, &rest))
        return -EINVAL;
    reg_token_t *t = find_token(reg, name, name_len);
    if (!t) {
        t = token_new(reg, name, name_len, ev->index, ev->wall_ns);
        if (!t)
            return -ENOMEM;
    }
    *token_out = t;
    if (*rest == '\0')
        return -EINVAL; /* no event rewrites or removes a token directory */

    /* Find the parent directory, creating missing ones (etcd's checkDir). */
    reg_node_t *dir = t->dir;
    const char *p = rest;
    const char *last = rest;
    while (*p) {
        last = p;
        p++;
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        if (!*p)
            break; /* seg is the node itself */
        reg_node_t *c = node_child(dir, seg, (size_t)(p - seg));
        if (!c) {
            c = node_new(seg, (size_t)(p - seg), true, NULL, ev->index);
            if (!c)
                return -ENOMEM;
            node_link(dir, c);
            t->n_keys += !rest_in_config(rest);
        } else if (!c->is_dir) {
            return -EINVAL; /* a path through a file: no live write makes one */
        }
        dir = c;
    }
    const char *leaf = last + 1;
    reg_node_t *n = node_child(dir, leaf, strlen(leaf));

    switch (ev->action) {
    case REG_ACT_CREATE:
    case REG_ACT_SET: {
        if (n && (n->is_dir || ev->action == REG_ACT_CREATE))
            return -EINVAL; /* create never overwrites; set replaces only files */
        if (n) {
            node_unlink(n);
            node_free_tree(reg, n);
            t->n_keys -= !rest_in_config(rest);
        }
        n = node_new(leaf, strlen(leaf), ev->node.is_dir, ev->node.value, ev->index);
        if (!n)
            return -ENOMEM;
        node_link(dir, n);
        t->n_keys += !rest_in_config(rest);
        return node_set_expiry(reg, n, ev->node.expire_ns);
    }
    case REG_ACT_UPDATE:
    case REG_ACT_CAS:
        if (!n)
            return -EINVAL;
        if (!n->is_dir) { /* etcd's node.Write ignores directories */
            char *v = strdup(ev->node.value ? ev->node.value : "");
            if (!v)
                return -ENOMEM;
            free(n->value);
            n->value = v;
            n->modified_index = ev->index;
        }
        return node_set_expiry(reg, n, ev->node.expire_ns);
    case REG_ACT_DELETE:
    case REG_ACT_CAD:
    case REG_ACT_EXPIRE:
        if (!n)
            return -EINVAL;
        if (!rest_in_config(rest))
            t->n_keys -= subtree_size(n);
        node_unlink(n);
        node_free_tree(reg, n);
        return 0;
    case REG_ACT_GET: break;
    }
    return -EINVAL;
}

/* ---- watching ----------------------------------------------------------- */

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* etcd's isHidden: a path below the watched one crosses a '_' segment. */
static bool hidden_below(const char *watch_key, const char *key)
{
    size_t wl = strlen(watch_key);
    if (wl > strlen(key))
        return false;
    const char *after = key + wl;
    /* path.Clean("/" + after) contains "/_" */
    for (const char *p = after; *p; p++)
        if (p[0] == '_' && (p == after || p[-1] == '/'))
            return true;
    return false;
}

static bool is_removal(enum reg_action a)
{
    return a == REG_ACT_DELETE || a == REG_ACT_EXPIRE;
}

/* Does a live event reach this parked watcher? (etcd's watcherHub.notify) */
static bool waiter_matches(reg_waiter_t *w, const reg_event_t *ev)
{
    bool removed = w->removed_hit; /* good for this event only */
    w->removed_hit = false;
    if (ev->index < w->since_index)
        return false;
    const char *key = ev->node.key;
    if (strcmp(key, w->key) == 0)
        return true;
    size_t wl = strlen(w->key);
    bool below = strncmp(key, w->key, wl) == 0 && key[wl] == '/';
    if (w->recursive && below && !hidden_below(w->key, key))
        return true;
    /* A removed directory takes its watched descendants with it: marked by
     * mark_removed_watchers() before the subtree went. */
    return removed;
}

/* Does a past event answer a new watch? (etcd's EventHistory.scan) */
static bool history_matches(const char *key, bool recursive, const reg_event_t *ev)
{
    if (strcmp(ev->node.key, key) == 0)
        return true;
    if (recursive) {
        size_t kl = strlen(key);
        if (strncmp(ev->node.key, key, kl) == 0 && ev->node.key[kl] == '/')
            return true;
    }
    return is_removal(ev->action) && ev->has_prev && ev->prev.is_dir &&
           has_prefix(key, ev->prev.key);
}

/* Does a node exist at `key` (a clean key inside token `t`)? */
static bool key_exists(registry_t *reg, reg_token_t *t, const char *key)
{
    const char *name, *rest;
    size_t len;
    reg_result_t probe = {0};
    if (!split_token(key, &name, &len, &rest))
        return false;
    bool found = walk(reg, t, rest, &probe) != NULL;
    reg_result_clear(&probe);
    return found;
}

/*
 * Before a directory is removed: etcd notifies the watchers of every node
 * in the removed subtree, and only of those, so mark watchers below the
 * directory whose key still names a node.
 */
static void mark_removed_watchers(registry_t *reg, reg_token_t *t, const reg_event_t *ev)
{
    if (!is_removal(ev->action) || !ev->node.is_dir)
        return;
    size_t kl = strlen(ev->node.key);
    for (reg_waiter_t *w = t->waiters; w; w = w->next)
        w->removed_hit = strncmp(w->key, ev->node.key, kl) == 0 && w->key[kl] == '/' &&
                         key_exists(reg, t, w->key);
}

static void waiter_unlink(registry_t *reg, reg_waiter_t *w)
{
    reg_token_t *t = w->token;
    if (w->prev)
        w->prev->next = w->next;
    else
        t->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    w->token = NULL;
    free(w->key);
    w->key = NULL;
    reg->n_waiters--;
}

static void notify(registry_t *reg, reg_token_t *t, const reg_event_t *ev)
{
    /* Detach first: a callback may unwatch or close other connections. */
    reg_waiter_t *fire = NULL, **tail = &fire;
    for (reg_waiter_t *w = t->waiters; w;) {
        reg_waiter_t *next = w->next;
        if (waiter_matches(w, ev)) {
            waiter_unlink(reg, w);
            *tail = w;
            tail = &w->next;
        }
        w = next;
    }
    while (fire) {
        reg_waiter_t *w = fire;
        fire = w->next;
        w->next = NULL;
        w->on_event(w, ev);
    }
}

void registry_unwatch(registry_t *reg, reg_waiter_t *w)
{
    if (w->token)
        waiter_unlink(reg, w);
}

void registry_unwatch_all(registry_t *reg, void (*cb)(reg_waiter_t *w))
{
    reg_token_t *t, *tmp;
    HASH_ITER(hh, reg->tokens, t, tmp)
    {
        while (t->waiters) {
            reg_waiter_t *w = t->waiters;
            waiter_unlink(reg, w);
            cb(w);
        }
    }
}

/* ---- committing a change ------------------------------------------------ */

/*
 * Applies a validated event, records it and tells the store and the
 * watchers. Takes ownership of `ev`. Fills `out` with the event on success.
 */
static void commit(registry_t *reg, reg_event_t *ev, reg_result_t *out)
{
    reg_token_t *t = NULL;
    const char *name, *rest;
    size_t len;
    if (split_token(ev->node.key, &name, &len, &rest) && (t = find_token(reg, name, len)))
        mark_removed_watchers(reg, t, ev);
    /* Room first, so that nothing below can fail after the tree changed. */
    int rc = record_room(reg, ev);
    if (rc == 0) {
        rc = apply_event(reg, ev, &t);
        if (rc != 0)
            reg->has_unrecorded_change = true;
    }
    if (rc == 0) {
        history_append(t, ev->index);
        ring_push(reg, ev);
    }
    if (rc != 0) {
        reg_event_free(ev);
        fail_nomem(reg, out);
        return;
    }
    reg->index = ev->index;
    if (reg->store)
        store_append(reg->store, ev);
    out->err = REG_OK;
    out->index = ev->index;
    out->event = ev;
    notify(reg, t, ev);
    ring_trim(reg, reg->store ? store_readable_index(reg->store) : 0);
}

/* ---- operations --------------------------------------------------------- */

/* Resolves a key to its token. Errors: not inside a token, unknown token. */
static reg_token_t *lookup_token(registry_t *reg, const char *clean, const char **rest,
                                 reg_result_t *out)
{
    const char *name;
    size_t len;
    if (!split_token(clean, &name, &len, rest)) {
        fail(reg, out, REG_E_KEY_NOT_FOUND, clean);
        return NULL;
    }
    reg_token_t *t = find_token(reg, name, len);
    if (!t) {
        char *cause = strndup(clean, (size_t)(name + len - clean));
        fail(reg, out, REG_E_KEY_NOT_FOUND, cause ? cause : clean);
        free(cause);
    }
    return t;
}

bool registry_key_in_config(const char *key)
{
    char *clean = clean_key(key);
    const char *name, *rest;
    size_t len;
    bool in = clean && split_token(clean, &name, &len, &rest) && rest_in_config(rest);
    free(clean);
    return in;
}

/* The writes a token refuses: its directory, and _config once it exists. */
static bool write_forbidden(registry_t *reg, const char *rest, const char *clean, reg_result_t *out)
{
    if (*rest == '\0') {
        buf_t b = BUF_INIT;
        buf_printf(&b, "%s is a token directory; it is removed only when the token expires", clean);
        fail(reg, out, REG_E_ROOT_READ_ONLY, buf_cstr(&b));
        buf_free(&b);
        return true;
    }
    if (rest_in_config(rest)) {
        if (strcmp(rest, "/_config/size") == 0) {
            fail(reg, out, REG_E_NODE_EXIST, clean); /* the size never changes */
        } else {
            buf_t b = BUF_INIT;
            buf_printf(&b, "%s is read-only: _config holds only the size", clean);
            fail(reg, out, REG_E_ROOT_READ_ONLY, buf_cstr(&b));
            buf_free(&b);
        }
        return true;
    }
    return false;
}

/* Parses a token size the way etcd's discovery client does, with bounds. */
static bool parse_size(const char *value, unsigned *size)
{
    if (!value || !*value || strlen(value) > 9)
        return false;
    unsigned v = 0;
    for (const char *p = value; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v < REGISTRY_MIN_SIZE || v > REGISTRY_MAX_SIZE)
        return false;
    *size = v;
    return true;
}

/*
 * A write whose key is <token>/_config/size of a token that does not exist
 * yet creates the token. Returns true if it handled the request.
 */
static bool maybe_create_token(registry_t *reg, const char *clean, enum reg_action action,
                               bool is_dir, const char *value, int64_t now_ns, reg_result_t *out)
{
    const char *name, *rest;
    size_t len;
    if (!split_token(clean, &name, &len, &rest) || strcmp(rest, "/_config/size") != 0 ||
        find_token(reg, name, len))
        return false;
    if (!registry_valid_token_name(name, len)) {
        fail(reg, out, REG_E_INVALID_FIELD,
             "a token name is 1-64 characters of A-Z a-z 0-9 . _ - and starts with a letter or "
             "digit");
        return true;
    }
    unsigned size;
    if (is_dir || !parse_size(value, &size)) {
        char msg[128];
        snprintf(msg, sizeof msg, "the size must be a whole number from %d to %d",
                 REGISTRY_MIN_SIZE, REGISTRY_MAX_SIZE);
        fail(reg, out, REG_E_INVALID_FIELD, msg);
        return true;
    }
    char sv[16];
    snprintf(sv, sizeof sv, "%u", size);
    reg_event_t *ev =
        event_new(action, reg->index + 1, now_ns, clean, false, sv, reg->index + 1, 0);
    if (!ev) {
        fail_nomem(reg, out);
        return true;
    }
    commit(reg, ev, out);
    return true;
}

void registry_create_token(registry_t *reg, const char *name, unsigned size, int64_t now_ns,
                           reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    buf_t b = BUF_INIT;
    buf_printf(&b, "%s/%s/_config/size", REGISTRY_PREFIX, name);
    char sv[16];
    snprintf(sv, sizeof sv, "%u", size);
    if (buf_failed(&b)) {
        fail_nomem(reg, out);
    } else if (find_token(reg, name, strlen(name))) {
        fail(reg, out, REG_E_NODE_EXIST, buf_cstr(&b));
    } else if (!maybe_create_token(reg, buf_cstr(&b), REG_ACT_SET, false, sv, now_ns, out)) {
        fail(reg, out, REG_E_INVALID_FIELD, "invalid token name");
    }
    buf_free(&b);
}

void registry_get(registry_t *reg, const char *key, int64_t now_ns, reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    char *clean = clean_key(key);
    if (!clean) {
        fail_nomem(reg, out);
        return;
    }
    const char *rest;
    reg_token_t *t = lookup_token(reg, clean, &rest, out);
    reg_node_t *n = t ? walk(reg, t, rest, out) : NULL;
    if (n) {
        out->err = REG_OK;
        out->index = reg->index;
        out->node = n;
        out->now_ns = now_ns;
        if (t->n_events && !reg->has_unrecorded_change)
            out->stamp = t->events[t->n_events - 1];
    }
    free(clean);
}

static int64_t expiry_of(reg_ttl_t ttl, int64_t now_ns)
{
    if (!ttl.has_ttl)
        return 0;
    uint64_t max_s = (uint64_t)(INT64_MAX - now_ns) / NS_PER_SEC;
    uint64_t s = ttl.ttl_s > max_s ? max_s : ttl.ttl_s;
    return now_ns + (int64_t)s * NS_PER_SEC;
}

/* etcd's internalCreate; `replace` is Set's "overwrite a file". */
static void create_or_set(registry_t *reg, const char *key, bool is_dir, const char *value,
                          bool unique, enum reg_action action, reg_ttl_t ttl, int64_t now_ns,
                          reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    char *clean = clean_key(key);
    if (!clean) {
        fail_nomem(reg, out);
        return;
    }
    uint64_t next = reg->index + 1;
    if (unique) {
        char *k = malloc(strlen(clean) + 24);
        if (!k) {
            free(clean);
            fail_nomem(reg, out);
            return;
        }
        sprintf(k, "%s/%020llu", strcmp(clean, "/") == 0 ? "" : clean, (unsigned long long)next);
        free(clean);
        clean = k;
    }
    if (maybe_create_token(reg, clean, action, is_dir, value, now_ns, out)) {
        free(clean);
        return;
    }
    const char *rest;
    reg_token_t *t = lookup_token(reg, clean, &rest, out);
    if (!t || write_forbidden(reg, rest, clean, out)) {
        free(clean);
        return;
    }
    bool replace = action == REG_ACT_SET;
    reg_node_t *prev = NULL;
    if (replace) {
        /* Set looks the key up first: a file on the way is 104, missing is fine. */
        reg_result_t probe = {0};
        prev = walk(reg, t, rest, &probe);
        if (!prev && probe.err != REG_E_KEY_NOT_FOUND) {
            *out = probe;
            free(clean);
            return;
        }
        reg_result_clear(&probe);
    }
    /* Walk the parent path: a file on the way is 104 Not a directory, with
     * the file as the cause (etcd's checkDir). */
    reg_node_t *dir = t->dir;
    const char *p = rest, *leaf = rest;
    while (*p) {
        p++;
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        if (!*p) {
            leaf = seg;
            break;
        }
        reg_node_t *c = node_child(dir, seg, (size_t)(p - seg));
        if (!c)
            break; /* created by apply_event */
        if (!c->is_dir) {
            fail_at(reg, out, REG_E_NOT_DIR, c);
            free(clean);
            return;
        }
        dir = c;
    }
    reg_node_t *existing = *p == '\0' ? node_child(dir, leaf, strlen(leaf)) : NULL;
    /* Keys this write adds: the missing directories on the way and the leaf. */
    size_t adding = 0;
    if (*p) {
        adding = 1;
        for (const char *q = p; *q; q++)
            adding += *q == '/';
        /* p stops after the first missing segment: count it and the rest */
    } else if (!existing) {
        adding = 1;
    }
    if (adding && t->n_keys + adding > reg->max_keys) {
        buf_t b = BUF_INIT;
        buf_printf(&b, "token %s holds %zu keys, the most allowed; use a new token", t->name,
                   t->n_keys);
        fail(reg, out, REG_E_TOO_MANY_KEYS, buf_cstr(&b));
        buf_free(&b);
        free(clean);
        return;
    }
    if (existing && !replace) {
        fail(reg, out, REG_E_NODE_EXIST, clean);
        free(clean);
        return;
    }
    if (existing && existing->is_dir) {
        fail(reg, out, REG_E_NOT_FILE, clean);
        free(clean);
        return;
    }
    int64_t expire_ns = expiry_of(ttl, now_ns);
    reg_event_t *ev = event_new(action, next, now_ns, clean, is_dir,
                                is_dir ? NULL : (value ? value : ""), next, expire_ns);
    if (ev && existing) {
        ev->has_prev = true;
        if (snap_of(&ev->prev, existing, now_ns) != 0) {
            ev->has_prev = false;
            reg_event_free(ev);
            ev = NULL;
        }
    }
    free(clean);
    if (!ev) {
        fail_nomem(reg, out);
        return;
    }
    commit(reg, ev, out);
}

void registry_create(registry_t *reg, const char *key, bool is_dir, const char *value, bool unique,
                     reg_ttl_t ttl, int64_t now_ns, reg_result_t *out)
{
    create_or_set(reg, key, is_dir, value, unique, REG_ACT_CREATE, ttl, now_ns, out);
}

void registry_set(registry_t *reg, const char *key, bool is_dir, const char *value, reg_ttl_t ttl,
                  int64_t now_ns, reg_result_t *out)
{
    create_or_set(reg, key, is_dir, value, false, REG_ACT_SET, ttl, now_ns, out);
}

/* Finds an existing node for update/CAS/delete; NULL with `out` filled. */
static reg_node_t *existing_for_write(registry_t *reg, const char *clean, reg_result_t *out)
{
    const char *rest;
    reg_token_t *t = lookup_token(reg, clean, &rest, out);
    if (!t)
        return NULL;
    reg_node_t *n = walk(reg, t, rest, out);
    if (!n)
        return NULL;
    if (write_forbidden(reg, rest, clean, out))
        return NULL;
    return n;
}

/* Builds and commits an event that rewrites or removes node `n`. */
static void commit_change(registry_t *reg, reg_node_t *n, enum reg_action action, const char *value,
                          int64_t expire_ns, int64_t now_ns, reg_result_t *out)
{
    uint64_t next = reg->index + 1;
    bool removal = action == REG_ACT_DELETE || action == REG_ACT_CAD || action == REG_ACT_EXPIRE;
    const char *v = removal || n->is_dir ? NULL : (value ? value : "");
    char *key = node_key_dup(n);
    reg_event_t *ev = !key ? NULL
                           : event_new(action, next, now_ns, key, n->is_dir, v, n->created_index,
                                       removal ? 0 : expire_ns);
    free(key);
    if (ev) {
        ev->has_prev = true;
        if (snap_of(&ev->prev, n, now_ns) != 0) {
            ev->has_prev = false;
            reg_event_free(ev);
            ev = NULL;
        }
    }
    if (!ev) {
        fail_nomem(reg, out);
        return;
    }
    commit(reg, ev, out);
}

void registry_update(registry_t *reg, const char *key, const char *value, reg_ttl_t ttl,
                     int64_t now_ns, reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    char *clean = clean_key(key);
    if (!clean) {
        fail_nomem(reg, out);
        return;
    }
    reg_node_t *n = existing_for_write(reg, clean, out);
    if (n && n->is_dir && value && *value)
        fail(reg, out, REG_E_NOT_FILE, clean);
    else if (n)
        commit_change(reg, n, REG_ACT_UPDATE, value, expiry_of(ttl, now_ns), now_ns, out);
    free(clean);
}

/* etcd's getCompareFailCause. */
static char *compare_cause(const reg_node_t *n, const char *prev_value, uint64_t prev_index)
{
    bool index_ok = prev_index == 0 || n->modified_index == prev_index;
    bool value_ok = !*prev_value || strcmp(n->value, prev_value) == 0;
    buf_t b = BUF_INIT;
    if (!value_ok)
        buf_printf(&b, "[%s != %s]", prev_value, n->value);
    if (!value_ok && !index_ok)
        buf_putc(&b, ' ');
    if (!index_ok)
        buf_printf(&b, "[%llu != %llu]", (unsigned long long)prev_index,
                   (unsigned long long)n->modified_index);
    return buf_failed(&b) ? (buf_free(&b), NULL) : buf_steal(&b);
}

/* Runs the compare of CAS/CAD; false with `out` filled when it fails. */
static bool compare_ok(registry_t *reg, const reg_node_t *n, const char *clean,
                       const char *prev_value, uint64_t prev_index, reg_result_t *out)
{
    if (n->is_dir) {
        fail(reg, out, REG_E_NOT_FILE, clean);
        return false;
    }
    bool index_ok = prev_index == 0 || n->modified_index == prev_index;
    bool value_ok = !*prev_value || strcmp(n->value, prev_value) == 0;
    if (index_ok && value_ok)
        return true;
    char *cause = compare_cause(n, prev_value, prev_index);
    if (!cause) {
        fail_nomem(reg, out);
        return false;
    }
    fail(reg, out, REG_E_TEST_FAILED, cause);
    free(cause);
    return false;
}

void registry_compare_and_swap(registry_t *reg, const char *key, const char *prev_value,
                               uint64_t prev_index, const char *value, reg_ttl_t ttl,
                               int64_t now_ns, reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    char *clean = clean_key(key);
    if (!clean) {
        fail_nomem(reg, out);
        return;
    }
    reg_node_t *n = existing_for_write(reg, clean, out);
    if (n && compare_ok(reg, n, clean, prev_value ? prev_value : "", prev_index, out))
        commit_change(reg, n, REG_ACT_CAS, value, expiry_of(ttl, now_ns), now_ns, out);
    free(clean);
}

void registry_delete(registry_t *reg, const char *key, bool is_dir, bool recursive, int64_t now_ns,
                     reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    char *clean = clean_key(key);
    if (!clean) {
        fail_nomem(reg, out);
        return;
    }
    if (recursive)
        is_dir = true;
    reg_node_t *n = existing_for_write(reg, clean, out);
    if (n && n->is_dir && !is_dir)
        fail(reg, out, REG_E_NOT_FILE, clean);
    else if (n && n->is_dir && n->n_children && !recursive)
        fail(reg, out, REG_E_DIR_NOT_EMPTY, clean);
    else if (n)
        commit_change(reg, n, REG_ACT_DELETE, NULL, 0, now_ns, out);
    free(clean);
}

void registry_compare_and_delete(registry_t *reg, const char *key, const char *prev_value,
                                 uint64_t prev_index, int64_t now_ns, reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    char *clean = clean_key(key);
    if (!clean) {
        fail_nomem(reg, out);
        return;
    }
    reg_node_t *n = existing_for_write(reg, clean, out);
    if (n && compare_ok(reg, n, clean, prev_value ? prev_value : "", prev_index, out))
        commit_change(reg, n, REG_ACT_CAD, NULL, 0, now_ns, out);
    free(clean);
}

int64_t registry_expire(registry_t *reg, int64_t now_ns)
{
    while (reg->heap_len && reg->heap[0]->expire_ns <= now_ns) {
        reg_node_t *n = reg->heap[0];
        reg_result_t r = {0};
        commit_change(reg, n, REG_ACT_EXPIRE, NULL, 0, now_ns, &r);
        if (r.err) {
            /* Out of memory: leave the key for the next tick. */
            reg_result_clear(&r);
            return now_ns + NS_PER_SEC;
        }
        reg_result_clear(&r);
    }
    return reg->heap_len ? reg->heap[0]->expire_ns : 0;
}

int registry_replay(registry_t *reg, reg_event_t *ev)
{
    reg_token_t *t = NULL;
    int rc = ev->index > reg->index ? record_room(reg, ev) : -EINVAL;
    if (rc == 0) {
        rc = apply_event(reg, ev, &t);
        if (rc != 0)
            reg->has_unrecorded_change = true;
    }
    if (rc != 0) {
        reg_event_free(ev);
        return rc;
    }
    history_append(t, ev->index);
    ring_push(reg, ev);
    reg->index = ev->index;
    /* Everything replayed came from the store: keep only the recent window. */
    ring_trim(reg, UINT64_MAX);
    return 0;
}

void registry_raise_index(registry_t *reg, uint64_t index)
{
    if (index > reg->index)
        reg->index = index;
}

size_t registry_sweep_tokens(registry_t *reg, int64_t cutoff_ns, size_t max_tokens)
{
    size_t removed = 0;
    /* uthash iterates in insertion order, which is creation order: the
     * oldest tokens come first, so the sweep stops at the first young one. */
    while (removed < max_tokens && reg->tokens && reg->tokens->created_ns < cutoff_ns) {
        reg_token_t *t = reg->tokens;
        if (reg->store && store_remove_token(reg->store, t->name, t->events, t->n_events) != 0)
            break; /* try again on the next sweep */
        ring_forget(reg, t->events, t->n_events);
        /* Wake watchers: their token is gone. */
        while (t->waiters) {
            reg_waiter_t *w = t->waiters;
            waiter_unlink(reg, w);
            w->on_event(w, NULL);
        }
        HASH_DEL(reg->tokens, t);
        reg->n_tokens--;
        token_free(reg, t);
        removed++;
    }
    return removed;
}

void registry_watch(registry_t *reg, const char *key, bool recursive, uint64_t wait_index,
                    reg_waiter_t *w, reg_waiter_cb on_event, void *ctx, reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    memset(w, 0, sizeof *w);
    char *clean = clean_key(key);
    if (!clean) {
        fail_nomem(reg, out);
        return;
    }
    const char *rest;
    reg_token_t *t = lookup_token(reg, clean, &rest, out);
    if (!t) {
        free(clean);
        return;
    }
    uint64_t since = wait_index ? wait_index : reg->index + 1;
    out->err = REG_OK;
    out->index = reg->index;
    /* Binary search for the first event at or after `since`. */
    size_t lo = 0, hi = t->n_events;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->events[mid] < since)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < t->n_events; i++) {
        const reg_event_t *ev = event_at(reg, t->events[i]);
        if (!ev) {
            fail(reg, out, REG_E_INTERNAL, "cannot read the token's history back from the store");
            free(clean);
            return;
        }
        if (history_matches(clean, recursive, ev)) {
            out->event = ev;
            free(clean);
            return;
        }
    }
    w->key = clean;
    w->token = t;
    w->since_index = since;
    w->start_index = reg->index;
    w->recursive = recursive;
    w->on_event = on_event;
    w->ctx = ctx;
    w->next = t->waiters;
    if (t->waiters)
        t->waiters->prev = w;
    t->waiters = w;
    reg->n_waiters++;
}
