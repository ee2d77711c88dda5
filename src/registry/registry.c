/*
 * registry.c - the registry object, its bounds, and the one path by which
 * an event changes it. See registry.h for the rules and
 * registry_internal.h for how the other files divide the work.
 *
 * Shape of the data:
 *   registry --hash--> token --dir--> node tree (children in creation order)
 *                        |--> events[] (the token's whole history, by index)
 *                        '--> waiters (doubly linked list of parked watches)
 *   registry --heap--> nodes with a TTL, by expiry instant
 *   registry --ring--> recent events; older ones are read back from the backend
 *
 * Every change is an event, and apply_change() is the only code that mutates
 * a tree: keeping all mutation in one function that takes only the event
 * is what lets a backend rebuild the registry by replaying its log. An event
 * happens in two halves: prepare_change() makes every allocation and
 * reservation (a new token, missing directories, the new node or value, a
 * heap slot, a history slot, a ring slot) and can fail, changing nothing
 * visible; apply_change() then only links and frees, and cannot fail.
 * Between the two, the backend is asked to take the event: if it refuses,
 * the prepared room is given back and nothing happened.
 */
#include "registry/registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/timeutil.h"

/* ---- results ------------------------------------------------------------ */

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

void reg_result_clear(reg_result_t *r)
{
    free(r->cause);
    memset(r, 0, sizeof *r);
}

void reg_fail(registry_t *reg, reg_result_t *out, enum reg_errcode code, const char *cause)
{
    out->err = code;
    out->cause = dup_str(cause);
    out->index = reg->index;
    out->event = NULL;
    out->node = NULL;
}

void reg_fail_nomem(registry_t *reg, reg_result_t *out)
{
    reg_fail(reg, out, REG_E_INTERNAL, "out of memory");
}

/* An error whose cause is a node's key. */
void reg_fail_at(registry_t *reg, reg_result_t *out, enum reg_errcode code, const reg_node_t *n)
{
    char *key = reg_node_key_dup(n);
    if (!key) {
        reg_fail_nomem(reg, out);
        return;
    }
    reg_fail(reg, out, code, key);
    free(key);
}

/* ---- the object --------------------------------------------------------- */

registry_t *registry_new_with_backend(backend_t *backend)
{
    registry_t *reg = calloc(1, sizeof *reg);
    if (!reg)
        return NULL;
    reg->backend = backend;
    reg->max_keys = REGISTRY_DEFAULT_MAX_KEYS;
    reg->max_events = REGISTRY_DEFAULT_MAX_EVENTS;
    reg->owner = pthread_self();
    return reg;
}

registry_t *registry_new(struct store *store)
{
    backend_t *be = NULL;
    if (store && !(be = backend_local_new(store)))
        return NULL;
    registry_t *reg = registry_new_with_backend(be);
    if (!reg) {
        if (be)
            backend_close(be);
        return NULL;
    }
    reg->owned_backend = be;
    return reg;
}

void registry_free(registry_t *reg)
{
    if (!reg)
        return;
    REG_ASSERT_OWNER(reg);
    reg_token_t *t, *tmp;
    HASH_ITER(hh, reg->tokens, t, tmp)
    {
        HASH_DEL(reg->tokens, t);
        reg_token_free(reg, t);
    }
    reg_tombstones_free(reg);
    reg_pending_free_all(reg);
    free(reg->heap);
    while (reg->ring_len)
        reg_ring_drop_front(reg);
    free(reg->ring);
    reg_event_free(reg->fetched);
    if (reg->owned_backend)
        backend_close(reg->owned_backend);
    free(reg);
}

void registry_set_max_keys(registry_t *reg, size_t max_keys)
{
    reg->max_keys = max_keys;
}

void registry_set_max_events(registry_t *reg, size_t max_events)
{
    assert(max_events >= 1); /* a token's creation is its first event */
    reg->max_events = max_events;
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

/* ---- preparing and applying an event ------------------------------------ */

/*
 * Everything apply_change() needs, made by prepare_change(). Until applied,
 * the new nodes belong to it; undo_change() frees them.
 */
typedef struct reg_change {
    reg_token_t *token;
    bool token_is_new;     /* made by prepare_change(): in the table, empty */
    bool in_config;        /* the key is <token>/_config or below */
    reg_node_t *dir;       /* the deepest existing directory on the path */
    reg_node_t *chain;     /* new directories below `dir`, top first, linked
                              one below the other; NULL when none is missing */
    reg_node_t *chain_end; /* the deepest of them */
    size_t chain_len;
    reg_node_t *target; /* the node at the key, if it exists */
    reg_node_t *fresh;  /* create/set: the new node */
    char *value;        /* update/CAS of a file: the new value */
} reg_change_t;

/* Gives back what prepare_change() made; the registry is as before it. */
static void undo_change(registry_t *reg, reg_change_t *c)
{
    if (c->chain)
        reg_node_free_tree(reg, c->chain);
    if (c->fresh)
        reg_node_free_tree(reg, c->fresh);
    free(c->value);
    if (c->token_is_new)
        reg_token_remove(reg, c->token);
    memset(c, 0, sizeof *c);
}

/*
 * Checks that `ev` fits the tree and makes everything applying it needs.
 * 0; -EINVAL when it does not fit (a corrupt log: no validated live write
 * gets here); -ENOMEM. On error nothing visible changed (a grown ring or
 * heap array is not visible).
 */
static int prepare_change(registry_t *reg, const reg_event_t *ev, reg_change_t *c)
{
    memset(c, 0, sizeof *c);
    const char *name, *rest;
    size_t name_len;
    if (!reg_split_token(ev->node.key, &name, &name_len, &rest) || *rest == '\0')
        return -EINVAL; /* no event rewrites or removes a token directory */
    c->in_config = reg_rest_in_config(rest);
    int rc = -ENOMEM;
    c->token = reg_find_token(reg, name, name_len);
    if (!c->token) {
        c->token = reg_token_new(reg, name, name_len, ev->index, ev->wall_ns);
        if (!c->token)
            return -ENOMEM;
        c->token_is_new = true;
    }
    if (reg_ring_reserve(reg, ev->index) != 0 || reg_history_reserve(c->token) != 0)
        goto fail;
    if (ev->node.expire_ns && reg_heap_reserve(reg) != 0)
        goto fail;

    /* The parent directory; missing ones are made (etcd's checkDir). */
    reg_node_t *dir = c->token->dir;
    const char *p = rest, *last = rest;
    while (*p) {
        last = p;
        p++;
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        if (!*p)
            break; /* seg is the node itself */
        size_t len = (size_t)(p - seg);
        if (c->chain) {
            reg_node_t *d = reg_node_new(seg, len, true, NULL, ev->index);
            if (!d)
                goto fail;
            reg_node_link(c->chain_end, d);
            c->chain_end = d;
            c->chain_len++;
            continue;
        }
        reg_node_t *child = reg_node_child(dir, seg, len);
        if (child && !child->is_dir) {
            rc = -EINVAL; /* a path through a file: no live write makes one */
            goto fail;
        }
        if (child) {
            dir = child;
            continue;
        }
        c->chain = c->chain_end = reg_node_new(seg, len, true, NULL, ev->index);
        if (!c->chain)
            goto fail;
        c->chain_len = 1;
    }
    c->dir = dir;
    const char *leaf = last + 1;
    c->target = c->chain ? NULL : reg_node_child(dir, leaf, strlen(leaf));

    rc = -EINVAL;
    switch (ev->action) {
    case REG_ACT_CREATE:
    case REG_ACT_SET:
        if (c->target && (c->target->is_dir || ev->action == REG_ACT_CREATE))
            goto fail; /* create never overwrites; set replaces only files */
        c->fresh = reg_node_new(leaf, strlen(leaf), ev->node.is_dir, ev->node.value, ev->index);
        if (!c->fresh) {
            rc = -ENOMEM;
            goto fail;
        }
        return 0;
    case REG_ACT_UPDATE:
    case REG_ACT_CAS:
        if (!c->target)
            goto fail;
        if (!c->target->is_dir) { /* etcd's node.Write ignores directories */
            c->value = strdup(ev->node.value ? ev->node.value : "");
            if (!c->value) {
                rc = -ENOMEM;
                goto fail;
            }
        }
        return 0;
    case REG_ACT_DELETE:
    case REG_ACT_CAD:
    case REG_ACT_EXPIRE:
        if (!c->target)
            goto fail;
        return 0;
    case REG_ACT_GET: break;
    }
fail:
    undo_change(reg, c);
    return rc;
}

/* Makes the tree reflect `ev` with what prepare_change() made. Cannot fail. */
static void apply_change(registry_t *reg, const reg_event_t *ev, reg_change_t *c)
{
    reg_token_t *t = c->token;
    reg_node_t *parent = c->dir;
    if (c->chain) {
        reg_node_link(c->dir, c->chain);
        if (!c->in_config)
            t->n_keys += c->chain_len;
        parent = c->chain_end;
    }
    reg_node_t *n = c->target;
    switch (ev->action) {
    case REG_ACT_CREATE:
    case REG_ACT_SET:
        if (n) {
            reg_node_unlink(n);
            reg_node_free_tree(reg, n);
            t->n_keys -= !c->in_config;
        }
        reg_node_link(parent, c->fresh);
        t->n_keys += !c->in_config;
        reg_node_set_expiry(reg, c->fresh, ev->node.expire_ns);
        break;
    case REG_ACT_UPDATE:
    case REG_ACT_CAS:
        if (c->value) {
            free(n->value);
            n->value = c->value;
            n->modified_index = ev->index;
        }
        reg_node_set_expiry(reg, n, ev->node.expire_ns);
        break;
    case REG_ACT_DELETE:
    case REG_ACT_CAD:
    case REG_ACT_EXPIRE:
        if (!c->in_config)
            t->n_keys -= reg_subtree_size(n);
        reg_node_unlink(n);
        reg_node_free_tree(reg, n);
        break;
    case REG_ACT_GET: assert(!"prepare_change() refuses a get"); break;
    }
    /* The change owns nothing any more: the tree does. */
    c->chain = c->fresh = NULL;
    c->value = NULL;
    c->token_is_new = false;
}

/* Records an applied event: the token's history, the ring, the index. */
static void record_event(registry_t *reg, reg_token_t *t, reg_event_t *ev)
{
    reg_history_append(t, ev->index);
    reg_ring_push(reg, ev);
    reg->index = ev->index;
}

/* ---- committing a change ------------------------------------------------ */

/* The cause of a write refused by the event bound. */
static void fail_too_many_events(registry_t *reg, const reg_token_t *t, reg_result_t *out)
{
    buf_t b = BUF_INIT;
    buf_printf(&b,
               "token %s holds %zu events, the most allowed (--max-events-per-token); use a "
               "new token",
               t->name, t->n_events);
    reg_fail(reg, out, REG_E_TOO_MANY_KEYS,
             buf_failed(&b) ? "too many events (--max-events-per-token)" : buf_cstr(&b));
    buf_free(&b);
}

/* The half of a change that cannot fail: apply, record, notify. */
static void apply_prepared(registry_t *reg, reg_event_t *ev, reg_change_t *c, reg_result_t *out)
{
    reg->busy = true;
    reg_token_t *t = c->token;
    reg_mark_removed_watchers(reg, t, ev);
    apply_change(reg, ev, c);
    record_event(reg, t, ev);
    out->err = REG_OK;
    out->index = ev->index;
    out->event = ev;
    reg_notify(reg, t, ev);
    reg_ring_trim(reg, reg->backend ? backend_readable_index(reg->backend) : 0);
    reg->busy = false;
}

void reg_commit(registry_t *reg, reg_event_t *ev, reg_result_t *out)
{
    REG_ASSERT_OWNER(reg);
    assert(!reg->busy); /* a watcher callback must not write */
    assert(ev->index == reg->index + 1);
    const char *name, *rest;
    size_t len;
    reg_token_t *t =
        reg_split_token(ev->node.key, &name, &len, &rest) ? reg_find_token(reg, name, len) : NULL;
    /* The bound keeps every history scan short; an expiry is the clock's
     * doing, not a client's, and is never refused. */
    if (t && ev->action != REG_ACT_EXPIRE && t->n_events >= reg->max_events) {
        fail_too_many_events(reg, t, out);
        reg_event_free(ev);
        return;
    }
    if (reg->backend && !reg->backend->ops->applies_on_propose) {
        /* Applied when the backend delivers it back, in its order. */
        reg_propose_pending(reg, ev, out);
        return;
    }
    reg_change_t c;
    int rc = prepare_change(reg, ev, &c);
    if (rc == 0 && reg->backend && backend_propose(reg->backend, ev) != 0) {
        undo_change(reg, &c);
        reg_event_free(ev);
        reg_fail(reg, out, REG_E_INTERNAL, "the store cannot take the change now; retry");
        return;
    }
    if (rc != 0) {
        assert(rc == -ENOMEM); /* operations validate before they commit */
        reg_event_free(ev);
        if (rc == -ENOMEM)
            reg_fail_nomem(reg, out);
        else
            reg_fail(reg, out, REG_E_INTERNAL, "the change does not fit the tree");
        return;
    }
    apply_prepared(reg, ev, &c, out);
}

int reg_apply_delivered(registry_t *reg, reg_event_t *ev)
{
    REG_ASSERT_OWNER(reg);
    assert(!reg->busy);
    reg_change_t c;
    int rc = ev->index > reg->index ? prepare_change(reg, ev, &c) : -EINVAL;
    if (rc != 0) {
        reg_event_free(ev);
        return rc;
    }
    reg_result_t out = {0};
    apply_prepared(reg, ev, &c, &out);
    return 0;
}

int registry_replay(registry_t *reg, reg_event_t *ev)
{
    REG_ASSERT_OWNER(reg);
    reg_change_t c;
    int rc = ev->index > reg->index ? prepare_change(reg, ev, &c) : -EINVAL;
    if (rc != 0) {
        reg_event_free(ev);
        return rc;
    }
    reg_token_t *t = c.token;
    apply_change(reg, ev, &c);
    record_event(reg, t, ev);
    /* Everything replayed came from the backend: keep only the recent window. */
    reg_ring_trim(reg, UINT64_MAX);
    return 0;
}

void registry_raise_index(registry_t *reg, uint64_t index)
{
    if (index > reg->index)
        reg->index = index;
}
