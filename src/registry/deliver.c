/*
 * deliver.c - writes through a backend that applies on delivery (etcd; see
 * registry.h, "Writes through a backend that applies on delivery").
 *
 * Several disco instances share one etcd cluster, each with a full mirror
 * of it in its registry. A write here is validated against the mirror by
 * the same code as with the local store (ops.c), but instead of being
 * applied it is proposed (backend propose_txn) under a guard that fails if
 * another instance changed what the validation looked at. The change comes
 * back through the backend's watch like everyone else's (registry_deliver),
 * so every mirror applies the same changes in the same (revision) order.
 *
 * A pending write remembers the client's operation (reg_op_t). The backend
 * settles each proposal once:
 *   committed at R: answered with the event at R as soon as the mirror has
 *     applied R (so a client reads its own write on this instance);
 *   guard lost, winner at or below R: once the mirror has applied R the
 *     operation runs again against it, and is proposed again or answered
 *     with the registry's error (412/105 for the loser of a race);
 *   failed: answered REG_E_INTERNAL with the backend's reason.
 * A delivery that names one of this instance's proposals (own_seq) is that
 * proposal's verdict too: committed at the delivered revision.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/timeutil.h"

/* A write validated again this many times after lost guards is failed:
 * each loss means another write to the token won, so this bounds only a
 * token under a storm of writes. */
#define MAX_GUARD_RETRIES 16

enum pending_state {
    PENDING_PROPOSED,  /* sent; no verdict yet */
    PENDING_COMMITTED, /* applied at wait_index; answer once the mirror is there */
    PENDING_RETRY,     /* guard lost; run again once the mirror is at wait_index */
    PENDING_HELD,      /* an in-order create behind the one in flight to its directory */
};

struct reg_pending {
    reg_pending_t *next;
    uint64_t ticket; /* the caller's name for it, fixed */
    uint64_t seq;    /* the current proposal's (a new one per retry) */
    enum pending_state state;
    uint64_t wait_index;
    unsigned retries;
    /* The current proposal is guarded by the token's version
     * (BACKEND_GUARD_TOKEN_AT): a loss then names that version's revision. */
    bool version_guarded;
    /* The current proposal is an in-order create (BACKEND_GUARD_IN_ORDER):
     * its directory's key (owned), else NULL. */
    char *inorder_dir;
    reg_op_t op; /* owned copies of the strings */
    reg_settled_fn fn;
    void *ctx;
};

static void pending_free(reg_pending_t *p)
{
    free(p->inorder_dir);
    free(p->op.key);
    free(p->op.value);
    free(p->op.prev_value);
    free(p);
}

static reg_pending_t *pending_new(registry_t *reg, const reg_op_t *op)
{
    reg_pending_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    bool failed = false;
    p->op = *op;
    p->op.key = buf_strdup_or_null(op->key, &failed);
    p->op.value = buf_strdup_or_null(op->value, &failed);
    p->op.prev_value = buf_strdup_or_null(op->prev_value, &failed);
    if (failed) {
        pending_free(p);
        return NULL;
    }
    p->ticket = ++reg->next_ticket;
    return p;
}

static void pending_link(registry_t *reg, reg_pending_t *p)
{
    p->next = reg->pending;
    reg->pending = p;
    reg->n_pending++;
}

static void pending_unlink(registry_t *reg, reg_pending_t *p)
{
    for (reg_pending_t **pp = &reg->pending; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            reg->n_pending--;
            return;
        }
    }
    assert(!"a pending write not in the list");
}

static reg_pending_t *find_by(registry_t *reg, uint64_t ticket, uint64_t seq)
{
    for (reg_pending_t *p = reg->pending; p; p = p->next)
        if ((ticket && p->ticket == ticket) || (seq && p->seq == seq))
            return p;
    return NULL;
}

/*
 * Whether `ev`, made by the current operation in token `t` (its key's rest
 * below the token: `rest`), can be guarded as an in-order key
 * (BACKEND_GUARD_IN_ORDER): a POST into the token's directory or into a
 * directory right below it, whose in-order names are the only names there
 * that start with a digit (another one could sort among them).
 */
static bool in_order_guardable(registry_t *reg, reg_token_t *t, const reg_event_t *ev,
                               const char *rest)
{
    const reg_op_t *op = reg->cur_op;
    if (!op || op->kind != REG_OP_CREATE || !op->unique || ev->action != REG_ACT_CREATE ||
        ev->has_prev || rest[0] != '/')
        return false;
    const char *leaf = strrchr(rest, '/');
    const reg_node_t *dir = t->dir;
    if (leaf != rest) {
        const char *sub = rest + 1;
        if (strchr(sub, '/') != leaf)
            return false; /* deeper: the token's version guards it */
        dir = reg_node_child(t->dir, sub, (size_t)(leaf - sub));
        if (dir && !dir->is_dir)
            return false; /* refused by the operation; never proposed */
    }
    return reg_inorder_scan(dir, NULL);
}

/*
 * The guard for `ev` against the mirror as it is now: a new token must not
 * exist; a create right below the token needs only its own key absent (so
 * that registrations of different members never conflict); an in-order
 * key needs no higher one in its directory; anything else needs the token
 * unchanged since its last event.
 */
static void guard_for(registry_t *reg, const reg_event_t *ev, backend_guard_t *g)
{
    const char *name, *rest;
    size_t len;
    bool split = reg_split_token(ev->node.key, &name, &len, &rest);
    assert(split); /* validated by the operation */
    (void)split;
    reg_token_t *t = reg_find_token(reg, name, len);
    memset(g, 0, sizeof *g);
    if (!t) {
        g->kind = BACKEND_GUARD_TOKEN_NEW;
    } else if (in_order_guardable(reg, t, ev, rest)) {
        g->kind = BACKEND_GUARD_IN_ORDER;
    } else if (ev->action == REG_ACT_CREATE && !ev->has_prev && rest[0] == '/' &&
               !strchr(rest + 1, '/')) {
        g->kind = BACKEND_GUARD_KEY_ABSENT;
    } else {
        g->kind = BACKEND_GUARD_TOKEN_AT;
        /* The revision of the token's version key: its last change but an
         * expiry (a lease running out rewrites no version key). */
        g->token_index = t->version_index ? t->version_index
                         : t->n_events    ? t->events[t->n_events - 1]
                                          : 0;
    }
}

/* `out` says "pending, answered later through `p`'s ticket". */
static void say_pending(const registry_t *reg, const reg_pending_t *p, reg_result_t *out)
{
    out->err = REG_OK;
    out->index = reg->index;
    out->pending = true;
    out->ticket = p->ticket;
}

/* Is an in-order create to directory `dir` sent and not yet answered? */
static bool in_order_in_flight(const registry_t *reg, const char *dir)
{
    for (const reg_pending_t *p = reg->pending; p; p = p->next)
        if (p->state == PENDING_PROPOSED && p->inorder_dir && strcmp(p->inorder_dir, dir) == 0)
            return true;
    return false;
}

/*
 * In-order creates (POST) to one directory go to etcd one at a time from
 * this instance: etcd may apply Txns in flight at once in any order, and
 * each one applied after a higher name loses its guard (about ln k of k
 * in flight would win a round). Sent one at a time, this instance's names
 * are created in their order and lose only to another instance's.
 */
void reg_propose_pending(registry_t *reg, reg_event_t *ev, reg_result_t *out)
{
    assert(reg->cur_op); /* every public write names its operation */
    reg_pending_t *p = reg->retrying;
    bool fresh = !p;
    if (fresh && !(p = pending_new(reg, reg->cur_op))) {
        reg_event_free(ev);
        reg_fail_nomem(reg, out);
        return;
    }
    backend_guard_t g;
    guard_for(reg, ev, &g);
    char *dir = NULL;
    const char *leaf = NULL; /* an in-order key's name */
    if (g.kind == BACKEND_GUARD_IN_ORDER) {
        const char *slash = strrchr(ev->node.key, '/');
        assert(slash); /* a key below a token */
        leaf = slash + 1;
        if (!(dir = strndup(ev->node.key, (size_t)(slash - ev->node.key)))) {
            if (fresh)
                pending_free(p);
            reg_event_free(ev);
            reg_fail_nomem(reg, out);
            return;
        }
    }
    free(p->inorder_dir);
    p->inorder_dir = dir;
    if (dir && in_order_in_flight(reg, dir)) {
        /* Validated again and named when its turn comes (release_held);
         * the name just handed out is not used, so it is given again:
         * on a quiet cluster names stay equal to createdIndex. */
        if (strtoull(leaf, NULL, 10) == reg->inorder_high)
            reg->inorder_high--;
        reg_event_free(ev);
        p->state = PENDING_HELD;
        if (fresh)
            pending_link(reg, p);
        say_pending(reg, p, out);
        return;
    }
    p->seq = ++reg->next_seq;
    p->state = PENDING_PROPOSED;
    p->version_guarded = g.kind == BACKEND_GUARD_TOKEN_AT;
    int rc = backend_propose_txn(reg->backend, ev, &g, p->seq);
    reg_event_free(ev);
    if (rc != 0) {
        if (fresh)
            pending_free(p);
        reg_fail(reg, out, REG_E_INTERNAL,
                 rc == -ENOMEM ? "out of memory" : "the backend cannot take the change now; retry");
        return;
    }
    if (fresh)
        pending_link(reg, p);
    say_pending(reg, p, out);
}

/* Whether the backend applies on delivery and can set a barrier. */
static bool has_barriers(const registry_t *reg)
{
    const backend_t *be = reg->backend;
    return be && !be->ops->applies_on_propose && be->ops->propose_barrier;
}

/* `op` made pending behind a barrier (run again once the mirror has caught
 * up with the backend), `out` set to say so; NULL (and `out` unchanged)
 * when that cannot be set up. */
static reg_pending_t *pending_behind_barrier(registry_t *reg, const reg_op_t *op, reg_result_t *out)
{
    assert(has_barriers(reg));
    reg_pending_t *p = pending_new(reg, op);
    if (!p)
        return NULL;
    p->seq = ++reg->next_seq;
    p->state = PENDING_PROPOSED;
    p->version_guarded = false;
    if (backend_propose_barrier(reg->backend, p->seq) != 0) {
        pending_free(p);
        return NULL;
    }
    pending_link(reg, p);
    reg_result_clear(out);
    say_pending(reg, p, out);
    return p;
}

void reg_recheck_refusal(registry_t *reg, const reg_op_t *op, reg_result_t *out)
{
    /* Refusals that another instance's change cannot turn into a success:
     * malformed input, and this instance's own trouble. */
    if (!has_barriers(reg) || reg->retrying || out->err == REG_OK || out->err == REG_E_INTERNAL ||
        out->err == REG_E_INVALID_FIELD)
        return;
    pending_behind_barrier(reg, op, out); /* else the refusal as it is */
}

unsigned reg_retry_losses(const registry_t *reg)
{
    return reg->retrying ? reg->retrying->retries : 0;
}

void registry_await_catch_up(registry_t *reg, reg_result_t *out)
{
    REG_ASSERT_OWNER(reg);
    reg_result_clear(out);
    out->index = reg->index;
    if (!has_barriers(reg))
        return; /* the mirror is the store: caught up */
    reg_op_t op = {.kind = REG_OP_CATCH_UP};
    if (!pending_behind_barrier(reg, &op, out))
        reg_fail(reg, out, REG_E_INTERNAL, "the backend cannot be asked now; retry");
}

/*
 * A guard on the token's version was lost to the revision etcd named (the
 * version key's own), which the mirror has now applied: that revision is
 * the token's version. A mirror loaded from a range saw each key's state
 * but not the deletions that rewrote the version key; without this its
 * guard would name an older version, and lose again on every retry. A
 * wrong revision here can only make the next guard fail, never pass.
 */
static void learn_token_version(registry_t *reg, const reg_pending_t *p)
{
    assert(p->state == PENDING_RETRY && p->wait_index <= reg->index);
    const char *name, *rest;
    size_t len;
    if (!p->version_guarded || p->wait_index == 0 ||
        !reg_split_token(p->op.key, &name, &len, &rest))
        return;
    reg_token_t *t = reg_find_token(reg, name, len);
    if (t && t->version_index < p->wait_index)
        t->version_index = p->wait_index;
}

/* Runs a pending write's operation again against the mirror. */
static void run_again(registry_t *reg, reg_pending_t *p, reg_result_t *out)
{
    const reg_op_t *op = &p->op;
    int64_t now = time_wall_ns();
    reg->retrying = p;
    reg->cur_op = op;
    switch (op->kind) {
    case REG_OP_CREATE:
        registry_create(reg, op->key, op->is_dir, op->value, op->unique, op->ttl, now, out);
        break;
    case REG_OP_SET: registry_set(reg, op->key, op->is_dir, op->value, op->ttl, now, out); break;
    case REG_OP_UPDATE: registry_update(reg, op->key, op->value, op->ttl, now, out); break;
    case REG_OP_CAS:
        registry_compare_and_swap(reg, op->key, op->prev_value, op->prev_index, op->value, op->ttl,
                                  now, out);
        break;
    case REG_OP_DELETE: registry_delete(reg, op->key, op->is_dir, op->recursive, now, out); break;
    case REG_OP_CAD:
        registry_compare_and_delete(reg, op->key, op->prev_value, op->prev_index, now, out);
        break;
    case REG_OP_CREATE_TOKEN: registry_create_token(reg, op->key, op->size, now, out); break;
    case REG_OP_CATCH_UP: out->index = reg->index; break; /* REG_OK: caught up */
    }
    reg->retrying = NULL;
    reg->cur_op = NULL;
}

/* Tells the one who awaits `p` (if anyone) and frees it; `p` is unlinked. */
static void answer(reg_pending_t *p, const reg_result_t *res)
{
    if (p->fn)
        p->fn(p->ctx, res);
    pending_free(p);
}

/* Whether `dir` has an in-order create in flight: one of the `n` listed in
 * `flying`, or searched for when the list could not be made (NULL). */
static bool dir_busy(const registry_t *reg, const char *const *flying, size_t n, const char *dir)
{
    if (n == 0)
        return false;
    if (!flying)
        return in_order_in_flight(reg, dir);
    for (size_t i = 0; i < n; i++)
        if (strcmp(flying[i], dir) == 0)
            return true;
    return false;
}

/*
 * Runs again the oldest held in-order create of each directory that has
 * none in flight any more. Each run sends it (its directory is then in
 * flight), holds it again behind a write just sent, or answers it.
 */
static void release_held(registry_t *reg)
{
    for (;;) {
        /* The directories with an in-order create in flight are listed
         * once, not searched for each held write: thousands of POSTs held
         * behind one directory's must not cost the square of their number
         * on every delivery. */
        size_t n_flying = 0, n_held = 0;
        for (const reg_pending_t *p = reg->pending; p; p = p->next) {
            n_flying += p->state == PENDING_PROPOSED && p->inorder_dir;
            n_held += p->state == PENDING_HELD;
        }
        if (!n_held)
            return;
        const char **flying = n_flying ? malloc(n_flying * sizeof *flying) : NULL;
        if (flying) {
            size_t i = 0;
            for (const reg_pending_t *p = reg->pending; p; p = p->next)
                if (p->state == PENDING_PROPOSED && p->inorder_dir)
                    flying[i++] = p->inorder_dir;
            assert(i == n_flying);
        }
        reg_pending_t *next = NULL;
        for (reg_pending_t *p = reg->pending; p; p = p->next)
            if (p->state == PENDING_HELD && (!next || p->ticket < next->ticket) &&
                !dir_busy(reg, flying, n_flying, p->inorder_dir))
                next = p;
        free(flying);
        if (!next)
            return;
        reg_result_t res = {0};
        run_again(reg, next, &res);
        if (!res.pending) {
            pending_unlink(reg, next);
            answer(next, &res);
        }
        reg_result_clear(&res);
    }
}

/*
 * Answers or re-runs every pending write the mirror has now caught up
 * with. A re-run may propose again (it stays pending) or fail at once.
 */
static void pending_check(registry_t *reg)
{
    reg_pending_t *ready = NULL, **tail = &ready;
    for (reg_pending_t **pp = &reg->pending; *pp;) {
        reg_pending_t *p = *pp;
        if ((p->state == PENDING_COMMITTED || p->state == PENDING_RETRY) &&
            p->wait_index <= reg->index) {
            *pp = p->next;
            reg->n_pending--;
            p->next = NULL;
            *tail = p;
            tail = &p->next;
        } else {
            pp = &p->next;
        }
    }
    while (ready) {
        reg_pending_t *p = ready;
        ready = p->next;
        p->next = NULL;
        reg_result_t res = {0};
        if (p->state == PENDING_COMMITTED) {
            const reg_event_t *ev = reg_event_at(reg, p->wait_index);
            if (ev) {
                res.index = ev->index;
                res.event = ev;
            } else {
                /* Applied and already gone (its token removed): the write
                 * happened, but there is nothing to show. */
                reg_fail(reg, &res, REG_E_INTERNAL, "the change was applied and then removed");
            }
            answer(p, &res);
        } else if (++p->retries > MAX_GUARD_RETRIES) {
            reg_fail(reg, &res, REG_E_INTERNAL, "the token kept changing; retry");
            answer(p, &res);
        } else {
            /* Linked again first: a new proposal must find it by seq. */
            pending_link(reg, p);
            learn_token_version(reg, p);
            run_again(reg, p, &res);
            if (!res.pending) {
                pending_unlink(reg, p);
                answer(p, &res);
            }
        }
        reg_result_clear(&res);
    }
    release_held(reg);
}

void registry_settle(registry_t *reg, uint64_t seq, enum reg_settle how, uint64_t index,
                     const char *why)
{
    REG_ASSERT_OWNER(reg);
    reg_pending_t *p = find_by(reg, 0, seq);
    if (!p || p->state != PENDING_PROPOSED)
        return; /* an older proposal of a write retried since, or freed */
    if (how == REG_SETTLE_FAILED) {
        pending_unlink(reg, p);
        reg_result_t res = {0};
        reg_fail(reg, &res, REG_E_INTERNAL, why ? why : "the change could not be made; retry");
        answer(p, &res);
        reg_result_clear(&res);
        release_held(reg);
        return;
    }
    p->state = how == REG_SETTLE_COMMITTED ? PENDING_COMMITTED : PENDING_RETRY;
    p->wait_index = index;
    pending_check(reg);
}

void registry_await(registry_t *reg, uint64_t ticket, reg_settled_fn fn, void *ctx)
{
    REG_ASSERT_OWNER(reg);
    reg_pending_t *p = find_by(reg, ticket, 0);
    assert(p); /* a ticket from a pending result is settled from the loop, later */
    if (p) {
        p->fn = fn;
        p->ctx = ctx;
    }
}

void registry_forget(registry_t *reg, uint64_t ticket)
{
    reg_pending_t *p = find_by(reg, ticket, 0);
    if (p) {
        p->fn = NULL;
        p->ctx = NULL;
    }
}

size_t registry_pending_count(const registry_t *reg)
{
    return reg->n_pending;
}

void reg_pending_free_all(registry_t *reg)
{
    while (reg->pending) {
        reg_pending_t *p = reg->pending;
        reg->pending = p->next;
        pending_free(p);
    }
    reg->n_pending = 0;
}

/* The node at a clean key, or NULL. */
static reg_node_t *live_node(registry_t *reg, const char *key)
{
    const char *name, *rest;
    size_t len;
    if (!reg_split_token(key, &name, &len, &rest))
        return NULL;
    reg_token_t *t = reg_find_token(reg, name, len);
    if (!t)
        return NULL;
    reg_result_t probe = {0};
    reg_node_t *n = reg_walk(reg, t, rest, &probe);
    reg_result_clear(&probe);
    return n;
}

int registry_deliver(registry_t *reg, const reg_delivered_t *d)
{
    REG_ASSERT_OWNER(reg);
    if (d->index <= reg->index)
        return -EINVAL;
    reg_node_t *prev = live_node(reg, d->key);
    bool removal = reg_is_removal(d->action);
    bool rewrite = d->action == REG_ACT_UPDATE || d->action == REG_ACT_CAS;
    if ((removal || rewrite) && !prev)
        return -EINVAL; /* the mirror missed a change */
    /* etcd v2: create and set make a new node; update and CAS keep it. */
    uint64_t created = rewrite || removal ? prev->created_index : d->index;
    bool is_dir = prev && (removal || rewrite) ? prev->is_dir : d->is_dir;
    const char *value = removal || is_dir ? NULL : (d->value ? d->value : "");
    reg_event_t *ev = reg_event_new(d->action, d->index, d->wall_ns, d->key, is_dir, value, created,
                                    removal ? 0 : d->expire_ns);
    if (!ev)
        return -ENOMEM;
    if (prev) {
        ev->has_prev = true;
        if (reg_snap_of(&ev->prev, prev, d->wall_ns) != 0) {
            ev->has_prev = false;
            reg_event_free(ev);
            return -ENOMEM;
        }
    }
    int rc = reg_apply_delivered(reg, ev);
    if (rc == 0) {
        const char *name, *rest;
        size_t len;
        reg_token_t *t =
            reg_split_token(d->key, &name, &len, &rest) ? reg_find_token(reg, name, len) : NULL;
        if (t && d->action != REG_ACT_EXPIRE)
            t->version_index = d->index;
        /* Our own proposal, applied: committed at this revision, even if
         * the backend's answer to it is lost (an unknown outcome whose
         * marker the watch showed before the answer was due). */
        reg_pending_t *own = d->own_seq ? find_by(reg, 0, d->own_seq) : NULL;
        if (own && own->state == PENDING_PROPOSED) {
            own->state = PENDING_COMMITTED;
            own->wait_index = d->index;
        }
        pending_check(reg);
    }
    return rc;
}

const reg_event_t reg_event_cleared;

bool registry_has_key(registry_t *reg, const char *key)
{
    REG_ASSERT_OWNER(reg);
    return live_node(reg, key) != NULL;
}

/* Was this waiter parked from an index whose history is now cleared? */
static bool parked_from_cleared(reg_waiter_t *w, const void *token)
{
    const reg_token_t *t = token;
    return w->since_index <= t->cleared_index;
}

void registry_resync_clear(registry_t *reg, const char *key, uint64_t through)
{
    REG_ASSERT_OWNER(reg);
    const char *name, *rest;
    size_t len;
    reg_token_t *t =
        reg_split_token(key, &name, &len, &rest) ? reg_find_token(reg, name, len) : NULL;
    if (!t)
        return;
    if (through > t->cleared_index)
        t->cleared_index = through;
    reg_fire_waiters(reg, t, parked_from_cleared, t, REG_EVENT_CLEARED);
}

int registry_resync_remove_token(registry_t *reg, const char *key, uint64_t index)
{
    REG_ASSERT_OWNER(reg);
    const char *name, *rest;
    size_t len;
    if (!reg_split_token(key, &name, &len, &rest) || *rest != '\0' ||
        !reg_find_token(reg, name, len))
        return -EINVAL;
    /* Whatever else the token saw in the gap, its removal is its last
     * event: its watchers are told it is gone, as on a delivery, and the
     * next request learns it expired. */
    return registry_deliver_token_removal(reg, name, len, index);
}

static int find_gone_below(const reg_node_t *dir, reg_exists_fn exists, reg_gone_fn gone, void *ctx)
{
    for (const reg_node_t *c = dir->first_child; c; c = c->next) {
        char *key = reg_node_key_dup(c);
        if (!key)
            return -ENOMEM;
        int rc = 0;
        if (!exists(ctx, key))
            rc = gone(ctx, key, c->is_dir);
        else if (c->is_dir)
            rc = find_gone_below(c, exists, gone, ctx); /* as deep as a key has segments */
        free(key);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int registry_resync_find_gone(registry_t *reg, reg_exists_fn exists, reg_gone_fn gone, void *ctx)
{
    REG_ASSERT_OWNER(reg);
    reg_token_t *t, *tmp;
    HASH_ITER(hh, reg->tokens, t, tmp)
    {
        char *key = reg_node_key_dup(t->dir);
        if (!key)
            return -ENOMEM;
        int rc =
            exists(ctx, key) ? find_gone_below(t->dir, exists, gone, ctx) : gone(ctx, key, true);
        free(key);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void registry_learn_token_version(registry_t *reg, const char *name, size_t len, uint64_t index)
{
    REG_ASSERT_OWNER(reg);
    reg_token_t *t = reg_find_token(reg, name, len);
    if (t && t->version_index < index)
        t->version_index = index;
}

void registry_advance(registry_t *reg, uint64_t index)
{
    REG_ASSERT_OWNER(reg);
    if (index > reg->index)
        reg->index = index;
    pending_check(reg);
}
