/*
 * test_registry_deliver.c - registry/deliver.c: writes through a backend
 * that applies on delivery (etcd). Two registries stand for two disco
 * instances on one etcd cluster; the test plays etcd: it decides which
 * proposal wins, delivers the change to both mirrors in revision order and
 * settles each proposal.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "registry/registry.h"
#include "util/buf.h"
#include "util/timeutil.h"

#define T0 (1700000000LL * NS_PER_SEC)
#define TOKDIR REGISTRY_PREFIX "/tok"
#define K(rest) TOKDIR "/" rest

/* K() of a string known at run time; valid until the next call. */
static const char *K_DYN(const char *rest)
{
    static char key[256];
    snprintf(key, sizeof key, TOKDIR "/%s", rest);
    return key;
}

static const reg_ttl_t NO_TTL = {false, 0};

/* A backend that only records what it is asked to propose. */
typedef struct fake_backend {
    backend_t base;
    int n_proposed;
    uint64_t last_seq;
    backend_guard_t last_guard;
    enum reg_action last_action;
    char last_key[256];
    uint64_t applied; /* what the test delivered: durable_index */
    bool refuse;
    int n_barriers;
    uint64_t barrier_seq;
    int n_removes;
    char removed[64];
    uint64_t removed_created; /* indexes[0] of the last removal asked for */
} fake_backend_t;

static int fake_remove_token(backend_t *be, const char *name, const uint64_t *indexes, size_t n)
{
    fake_backend_t *f = (fake_backend_t *)be;
    assert_true(n > 0);
    f->n_removes++;
    snprintf(f->removed, sizeof f->removed, "%s", name);
    f->removed_created = indexes[0];
    return 0;
}

static int fake_propose_barrier(backend_t *be, uint64_t seq)
{
    fake_backend_t *f = (fake_backend_t *)be;
    f->n_barriers++;
    f->barrier_seq = seq;
    return 0;
}

static int fake_propose_txn(backend_t *be, const reg_event_t *ev, const backend_guard_t *g,
                            uint64_t seq)
{
    fake_backend_t *f = (fake_backend_t *)be;
    if (f->refuse)
        return -EIO;
    f->n_proposed++;
    f->last_seq = seq;
    f->last_guard = *g;
    f->last_action = ev->action;
    snprintf(f->last_key, sizeof f->last_key, "%s", ev->node.key);
    return 0;
}
static int fake_propose(backend_t *be, const reg_event_t *ev)
{
    (void)be;
    (void)ev;
    fail_msg("propose() is not used when the backend applies on delivery");
    return -EINVAL;
}
static uint64_t fake_durable(backend_t *be)
{
    return ((fake_backend_t *)be)->applied;
}
static reg_event_t *fake_fetch(backend_t *be, uint64_t index)
{
    (void)be;
    (void)index;
    return NULL;
}

static const struct backend_ops fake_ops = {
    .propose = fake_propose,
    .propose_txn = fake_propose_txn,
    .propose_barrier = fake_propose_barrier,
    .remove_token = fake_remove_token,
    .fetch = fake_fetch,
    .durable_index = fake_durable,
    .readable_index = fake_durable,
    .applies_on_propose = false,
    .name = "fake-etcd",
};

typedef struct instance {
    fake_backend_t be;
    registry_t *reg;
} instance_t;

static void instance_init(instance_t *in)
{
    memset(in, 0, sizeof *in);
    in->be.base.ops = &fake_ops;
    in->reg = registry_new_with_backend(&in->be.base);
    assert_non_null(in->reg);
}

/* What a settled write answered. */
typedef struct outcome {
    int calls;
    enum reg_errcode err;
    uint64_t index;
    enum reg_action action;
    char key[256];
    uint64_t ticket;
} outcome_t;

static void on_settled(void *ctx, const reg_result_t *res)
{
    outcome_t *o = ctx;
    o->calls++;
    o->err = res->err;
    o->index = res->index;
    if (res->event) {
        o->action = res->event->action;
        snprintf(o->key, sizeof o->key, "%s", res->event->node.key);
    }
}

/* etcd delivers a change to every mirror. */
static void deliver(instance_t **all, size_t n, enum reg_action action, const char *key,
                    const char *value, uint64_t rev)
{
    reg_delivered_t d = {.action = action, .key = key, .value = value, .index = rev, .wall_ns = T0};
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(registry_deliver(all[i]->reg, &d), 0);
        all[i]->be.applied = rev;
    }
}

/* A write made pending on `in`, awaited into `o`. */
static void await(instance_t *in, reg_result_t *res, outcome_t *o)
{
    assert_int_equal(res->err, REG_OK);
    assert_true(res->pending);
    assert_null(res->event);
    memset(o, 0, sizeof *o);
    o->ticket = res->ticket;
    registry_await(in->reg, res->ticket, on_settled, o);
    reg_result_clear(res);
}

/* Token "tok" created through instance a at revision 2, seen by both. */
static void make_token(instance_t *a, instance_t *b)
{
    instance_t *all[] = {a, b};
    reg_result_t res;
    outcome_t o;
    registry_create_token(a->reg, "tok", 3, T0, &res);
    await(a, &res, &o);
    assert_int_equal(a->be.last_guard.kind, BACKEND_GUARD_TOKEN_NEW);
    assert_int_equal(registry_token_count(a->reg), 0); /* not applied on propose */
    /* The verdict may come before the change is delivered: the answer waits. */
    registry_settle(a->reg, a->be.last_seq, REG_SETTLE_COMMITTED, 2, NULL);
    assert_int_equal(o.calls, 0);
    deliver(all, 2, REG_ACT_SET, K("_config/size"), "3", 2);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.err, REG_OK);
    assert_int_equal(o.index, 2);
    assert_int_equal(registry_token_count(a->reg), 1);
    assert_int_equal(registry_token_count(b->reg), 1);
    assert_int_equal(registry_pending_count(a->reg), 0);
}

/* Two fresh instances, token "tok" made through a and seen by both. */
static void two_with_token(instance_t *a, instance_t *b)
{
    instance_init(a);
    instance_init(b);
    make_token(a, b);
}

static void test_token_applied_on_delivery_only(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    reg_result_t res;
    registry_get(b.reg, K("_config/size"), T0, &res);
    assert_int_equal(res.err, REG_OK);
    assert_string_equal(reg_node_value(res.node), "3");
    assert_int_equal(reg_node_created_index(res.node), 2);
    reg_result_clear(&res);
    registry_free(a.reg);
    registry_free(b.reg);
}

/* The hot path: two instances register the same member at once; etcd lets
 * the first transaction win; the loser validates again and gets 105. */
static void test_race_on_one_key_one_wins(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    instance_t *all[] = {&a, &b};
    reg_result_t ra, rb;
    outcome_t oa, ob;
    registry_create(a.reg, K("m1"), false, "a", false, NO_TTL, T0, &ra);
    await(&a, &ra, &oa);
    assert_int_equal(a.be.last_guard.kind, BACKEND_GUARD_KEY_ABSENT);
    registry_create(b.reg, K("m1"), false, "b", false, NO_TTL, T0, &rb);
    await(&b, &rb, &ob);
    assert_int_equal(b.be.n_proposed, 1);

    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_COMMITTED, 5, NULL);
    registry_settle(b.reg, b.be.last_seq, REG_SETTLE_LOST, 5, NULL);
    assert_int_equal(oa.calls + ob.calls, 0); /* neither mirror has rev 5 yet */
    deliver(all, 2, REG_ACT_CREATE, K("m1"), "a", 5);
    assert_int_equal(oa.calls, 1);
    assert_int_equal(oa.err, REG_OK);
    assert_int_equal(oa.index, 5);
    assert_int_equal(oa.action, REG_ACT_CREATE);
    assert_string_equal(oa.key, K("m1"));
    assert_int_equal(ob.calls, 1);
    assert_int_equal(ob.err, REG_E_NODE_EXIST);
    assert_int_equal(ob.index, 5);
    assert_int_equal(b.be.n_proposed, 1); /* refused by validation, not proposed again */

    reg_result_t ga, gb;
    registry_get(a.reg, K("m1"), T0, &ga);
    registry_get(b.reg, K("m1"), T0, &gb);
    assert_string_equal(reg_node_value(ga.node), "a");
    assert_string_equal(reg_node_value(gb.node), "a");
    assert_int_equal(reg_node_created_index(gb.node), 5);
    reg_result_clear(&ga);
    reg_result_clear(&gb);
    registry_free(a.reg);
    registry_free(b.reg);
}

/* Any other write is guarded by the token's last index; losing to a change
 * of another key of the token, it is proposed again and then wins. */
static void test_lost_guard_is_proposed_again(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    instance_t *all[] = {&a, &b};
    deliver(all, 2, REG_ACT_CREATE, K("m1"), "v1", 3);
    deliver(all, 2, REG_ACT_CREATE, K("m2"), "v2", 4);

    reg_result_t rb;
    outcome_t ob;
    registry_compare_and_swap(b.reg, K("m1"), "v1", 0, "w1", NO_TTL, T0, &rb);
    await(&b, &rb, &ob);
    assert_int_equal(b.be.last_guard.kind, BACKEND_GUARD_TOKEN_AT);
    assert_int_equal(b.be.last_guard.token_index, 4);
    uint64_t first_seq = b.be.last_seq;

    /* A deleted m2 first (rev 6, after a gap: another prefix's rev 5). */
    registry_settle(b.reg, first_seq, REG_SETTLE_LOST, 6, NULL);
    deliver(all, 2, REG_ACT_DELETE, K("m2"), NULL, 6);
    assert_int_equal(ob.calls, 0);
    assert_int_equal(b.be.n_proposed, 2);
    assert_true(b.be.last_seq != first_seq);
    assert_int_equal(b.be.last_guard.token_index, 6);
    /* A late verdict on the first proposal changes nothing. */
    registry_settle(b.reg, first_seq, REG_SETTLE_FAILED, 0, "late");
    assert_int_equal(ob.calls, 0);

    registry_settle(b.reg, b.be.last_seq, REG_SETTLE_COMMITTED, 7, NULL);
    deliver(all, 2, REG_ACT_CAS, K("m1"), "w1", 7);
    assert_int_equal(ob.calls, 1);
    assert_int_equal(ob.err, REG_OK);
    assert_int_equal(ob.action, REG_ACT_CAS);
    assert_int_equal(ob.index, 7);

    reg_result_t g;
    registry_get(a.reg, K("m1"), T0, &g);
    assert_string_equal(reg_node_value(g.node), "w1");
    assert_int_equal(reg_node_created_index(g.node), 3);
    assert_int_equal(reg_node_modified_index(g.node), 7);
    reg_result_clear(&g);
    registry_free(a.reg);
    registry_free(b.reg);
}

/* In-order keys (POST) to one directory: sent one at a time, each named
 * above every name handed out and every in-order name the mirror holds;
 * a loss to another instance's higher name renames above it. */
static void test_in_order_keys_one_at_a_time(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    instance_t *all[] = {&a, &b};
    int sent = a.be.n_proposed; /* the token's creation */
    reg_result_t r[3];
    outcome_t o[3];
    for (int i = 0; i < 3; i++) {
        registry_create(a.reg, TOKDIR, false, "job", true, NO_TTL, T0, &r[i]);
        await(&a, &r[i], &o[i]);
    }
    assert_int_equal(a.be.n_proposed, sent + 1); /* the others wait their turn */
    assert_int_equal(a.be.last_guard.kind, BACKEND_GUARD_IN_ORDER);
    assert_string_equal(a.be.last_key, K("00000000000000000003"));
    assert_int_equal(registry_pending_count(a.reg), 3);

    /* Answered: the next one goes, named after it. */
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_COMMITTED, 3, NULL);
    assert_int_equal(a.be.n_proposed, sent + 2);
    assert_string_equal(a.be.last_key, K("00000000000000000004"));
    deliver(all, 2, REG_ACT_CREATE, K("00000000000000000003"), "job", 3);
    assert_int_equal(o[0].calls, 1);
    assert_int_equal(o[0].err, REG_OK);

    /* b's POST got a higher name created first: a's loses, then is named
     * above it, 2 further for its first loss (b's next names climb). */
    deliver(all, 2, REG_ACT_CREATE, K("00000000000000000009"), "other", 5);
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_LOST, 5, NULL);
    assert_int_equal(a.be.n_proposed, sent + 3);
    assert_int_equal(a.be.last_guard.kind, BACKEND_GUARD_IN_ORDER);
    assert_string_equal(a.be.last_key, K("00000000000000000012"));
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_FAILED, 0, "gone");
    assert_int_equal(o[1].calls, 1);
    assert_int_equal(o[1].err, REG_E_INTERNAL);
    /* A failed one lets the next go too. */
    assert_int_equal(a.be.n_proposed, sent + 4);
    assert_string_equal(a.be.last_key, K("00000000000000000013"));
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_COMMITTED, 6, NULL);
    deliver(all, 2, REG_ACT_CREATE, K("00000000000000000013"), "job", 6);
    assert_int_equal(o[2].calls, 1);
    assert_int_equal(o[2].err, REG_OK);
    assert_string_equal(o[2].key, K("00000000000000000013"));
    assert_int_equal(registry_pending_count(a.reg), 0);

    /* A directory where a name that is not in-order starts with a digit:
     * the token's version guards the POST, as any other write. */
    deliver(all, 2, REG_ACT_CREATE, K("q/7up"), "x", 7);
    registry_create(a.reg, K("q"), false, "job", true, NO_TTL, T0, &r[0]);
    await(&a, &r[0], &o[0]);
    assert_int_equal(a.be.last_guard.kind, BACKEND_GUARD_TOKEN_AT);
    registry_free(a.reg);
    registry_free(b.reg);
}

/*
 * Client names next to in-order ones. A 20-digit name from 10^19 up (a
 * client's PUT; beyond 2^64 - 1 here) can have no in-order name after it:
 * a POST beside it is named from the index and guarded by the token's
 * version, not by "no higher name". One just below 10^19 gets the POST
 * after it named above it, there only: POSTs to other directories are
 * named as before.
 */
static void test_in_order_beside_client_names(void **state)
{
    (void)state;
    static const struct {
        const char *existing, *want;
        enum backend_guard_kind guard;
    } cases[] = {
        {"q/99999999999999999999", "q/00000000000000000004", BACKEND_GUARD_TOKEN_AT},
        {"q/09999999999999999999", "q/10000000000000000000", BACKEND_GUARD_IN_ORDER},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        instance_t a, b;
        two_with_token(&a, &b);
        instance_t *all[] = {&a, &b};
        deliver(all, 2, REG_ACT_CREATE, K_DYN(cases[i].existing), "x", 3);
        reg_result_t r;
        outcome_t o;
        registry_create(a.reg, K("q"), false, "job", true, NO_TTL, T0, &r);
        await(&a, &r, &o);
        assert_int_equal(a.be.last_guard.kind, cases[i].guard);
        assert_string_equal(a.be.last_key, K_DYN(cases[i].want));
        registry_settle(a.reg, a.be.last_seq, REG_SETTLE_COMMITTED, 4, NULL);
        deliver(all, 2, REG_ACT_CREATE, K_DYN(cases[i].want), "job", 4);
        assert_int_equal(o.calls, 1);
        assert_int_equal(o.err, REG_OK);
        registry_create(a.reg, K("other"), false, "job", true, NO_TTL, T0, &r);
        await(&a, &r, &o);
        assert_int_equal(a.be.last_guard.kind, BACKEND_GUARD_IN_ORDER);
        assert_string_equal(a.be.last_key, K("other/00000000000000000005"));
        registry_free(a.reg);
        registry_free(b.reg);
    }
}

static void test_failed_and_refused_writes(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    reg_result_t r;
    outcome_t o;
    registry_create(a.reg, K("m1"), false, "a", false, NO_TTL, T0, &r);
    await(&a, &r, &o);
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_FAILED, 0, "etcd did not answer; retry");
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.err, REG_E_INTERNAL);
    assert_int_equal(registry_pending_count(a.reg), 0);

    a.be.refuse = true;
    registry_create(a.reg, K("m1"), false, "a", false, NO_TTL, T0, &r);
    assert_int_equal(r.err, REG_E_INTERNAL);
    assert_false(r.pending);
    reg_result_clear(&r);
    assert_int_equal(registry_pending_count(a.reg), 0);

    /* A forgotten write goes on; nobody is told. */
    a.be.refuse = false;
    registry_create(a.reg, K("m2"), false, "a", false, NO_TTL, T0, &r);
    await(&a, &r, &o);
    registry_forget(a.reg, o.ticket);
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_COMMITTED, 3, NULL);
    instance_t *all[] = {&a, &b};
    deliver(all, 2, REG_ACT_CREATE, K("m2"), "a", 3);
    assert_int_equal(o.calls, 0);
    assert_int_equal(registry_pending_count(a.reg), 0);
    registry_free(a.reg);
    registry_free(b.reg);
}

static int woken;
static uint64_t woken_index;
static const reg_event_t *woken_ev; /* NULL: the token was removed */
static void on_watch(reg_waiter_t *w, const reg_event_t *ev)
{
    (void)w;
    woken++;
    woken_ev = ev;
    woken_index = ev && ev != REG_EVENT_CLEARED ? ev->index : 0;
}

/* A long poll parked on B is answered by a registration made through A. */
static void test_watch_on_b_answered_by_write_on_a(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    instance_t *all[] = {&a, &b};
    reg_waiter_t w;
    reg_result_t res;
    woken = 0;
    registry_watch(b.reg, TOKDIR, true, 3, &w, on_watch, NULL, &res);
    assert_int_equal(res.err, REG_OK);
    assert_null(res.event);
    reg_result_clear(&res);
    registry_create(a.reg, K("m1"), false, "a", false, NO_TTL, T0, &res);
    reg_result_clear(&res);
    assert_int_equal(woken, 0);
    deliver(all, 2, REG_ACT_CREATE, K("m1"), "a", 9);
    assert_int_equal(woken, 1);
    assert_int_equal(woken_index, 9);
    registry_free(a.reg);
    registry_free(b.reg);
}

/* A write refused by a mirror that lags (the token was just made through
 * another instance) is validated again once the mirror has caught up; a
 * refusal that stands is answered after that. */
static void test_refusal_checked_again_after_catching_up(void **state)
{
    (void)state;
    instance_t a, b;
    instance_init(&a);
    instance_init(&b);
    instance_t *only_a[] = {&a}, *only_b[] = {&b}, *all[] = {&a, &b};
    reg_result_t r;
    outcome_t o;
    registry_create_token(a.reg, "tok", 3, T0, &r);
    await(&a, &r, &o);
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_COMMITTED, 2, NULL);
    deliver(only_a, 1, REG_ACT_SET, K("_config/size"), "3", 2);
    assert_int_equal(o.err, REG_OK);

    /* B has not seen the token yet: not a 404, a barrier. */
    registry_create(b.reg, K("m1"), false, "b", false, NO_TTL, T0, &r);
    await(&b, &r, &o);
    assert_int_equal(b.be.n_barriers, 1);
    assert_int_equal(b.be.n_proposed, 0);
    registry_settle(b.reg, b.be.barrier_seq, REG_SETTLE_LOST, 2, NULL);
    assert_int_equal(o.calls, 0); /* B's mirror is not at 2 yet */
    deliver(only_b, 1, REG_ACT_SET, K("_config/size"), "3", 2);
    assert_int_equal(o.calls, 0);
    assert_int_equal(b.be.n_proposed, 1); /* valid now: proposed */
    assert_int_equal(b.be.last_guard.kind, BACKEND_GUARD_KEY_ABSENT);
    registry_settle(b.reg, b.be.last_seq, REG_SETTLE_COMMITTED, 3, NULL);
    deliver(all, 2, REG_ACT_CREATE, K("m1"), "b", 3);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.err, REG_OK);
    assert_int_equal(o.index, 3);

    /* A refusal that stands: answered once, after the barrier. */
    registry_create(a.reg, K("m1"), false, "a", false, NO_TTL, T0, &r);
    await(&a, &r, &o);
    registry_settle(a.reg, a.be.barrier_seq, REG_SETTLE_LOST, 3, NULL);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.err, REG_E_NODE_EXIST);
    assert_int_equal(a.be.n_barriers, 1);
    assert_int_equal(registry_pending_count(a.reg), 0);
    registry_free(a.reg);
    registry_free(b.reg);
}

/* A caller's wait for the mirror to catch up settles, with no event, once
 * the mirror has applied what was newest when it asked; nothing is
 * proposed. A registry that is its own store has nothing to wait for. */
static void test_await_catch_up(void **state)
{
    (void)state;
    instance_t a, b;
    instance_init(&a);
    instance_init(&b);
    instance_t *only_a[] = {&a}, *only_b[] = {&b};
    reg_result_t r = {0};
    outcome_t o;
    registry_create_token(a.reg, "tok", 3, T0, &r);
    await(&a, &r, &o);
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_COMMITTED, 2, NULL);
    deliver(only_a, 1, REG_ACT_SET, K("_config/size"), "3", 2);

    registry_await_catch_up(b.reg, &r);
    await(&b, &r, &o);
    assert_int_equal(b.be.n_barriers, 1);
    registry_settle(b.reg, b.be.barrier_seq, REG_SETTLE_LOST, 2, NULL);
    assert_int_equal(o.calls, 0); /* B's mirror is not at 2 yet */
    deliver(only_b, 1, REG_ACT_SET, K("_config/size"), "3", 2);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.err, REG_OK);
    assert_int_equal(o.index, 2);
    assert_int_equal(o.key[0], '\0'); /* no event */
    assert_int_equal(b.be.n_proposed, 0);
    assert_int_equal(registry_pending_count(b.reg), 0);
    assert_true(registry_has_key(b.reg, K("_config/size")));

    registry_t *alone = registry_new(NULL);
    assert_non_null(alone);
    registry_await_catch_up(alone, &r);
    assert_int_equal(r.err, REG_OK);
    assert_false(r.pending);
    reg_result_clear(&r);
    registry_free(alone);
    registry_free(a.reg);
    registry_free(b.reg);
}

/* A delivery the mirror cannot take (it missed a change) is refused. */
static void test_delivery_that_does_not_fit(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    reg_delivered_t d = {.action = REG_ACT_DELETE, .key = K("nope"), .index = 5, .wall_ns = T0};
    assert_int_equal(registry_deliver(a.reg, &d), -EINVAL);
    d.action = REG_ACT_CREATE;
    d.value = "x";
    d.index = 2; /* not above the mirror's index */
    assert_int_equal(registry_deliver(a.reg, &d), -EINVAL);
    assert_int_equal(registry_index(a.reg), 2);
    registry_free(a.reg);
    registry_free(b.reg);
}

/* A key with a TTL: the backend (etcd's lease) expires it, not the
 * registry's clock; its expiry, delivered, rewrites no version key, so the
 * next write of the token is guarded by the change before it. */
static void test_expiry_is_the_backends(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    instance_t *all[] = {&a, &b};
    reg_delivered_t d = {.action = REG_ACT_CREATE,
                         .key = K("eph"),
                         .value = "v",
                         .index = 3,
                         .wall_ns = T0,
                         .expire_ns = T0 + 2 * NS_PER_SEC};
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(registry_deliver(all[i]->reg, &d), 0);
    reg_result_t res;
    registry_get(b.reg, K("eph"), T0, &res);
    assert_int_equal(res.err, REG_OK);
    assert_int_equal(reg_node_expire_ns(res.node), T0 + 2 * NS_PER_SEC);
    reg_result_clear(&res);
    /* Long past its TTL: still there until the backend says so. */
    assert_int_equal(registry_expire(a.reg, T0 + 60 * NS_PER_SEC), 0);
    assert_int_equal(a.be.n_proposed, 1); /* the token only */
    registry_get(a.reg, K("eph"), T0 + 60 * NS_PER_SEC, &res);
    assert_int_equal(res.err, REG_OK);
    reg_result_clear(&res);
    deliver(all, 2, REG_ACT_EXPIRE, K("eph"), NULL, 4);
    registry_get(a.reg, K("eph"), T0, &res);
    assert_int_equal(res.err, REG_E_KEY_NOT_FOUND);
    reg_result_clear(&res);
    outcome_t o;
    registry_set(a.reg, K("x"), false, "1", NO_TTL, T0, &res);
    await(&a, &res, &o);
    assert_int_equal(a.be.last_guard.kind, BACKEND_GUARD_TOKEN_AT);
    assert_int_equal(a.be.last_guard.token_index, 3); /* not the expiry's 4 */
    registry_free(a.reg);
    registry_free(b.reg);
}

/* Sweeps: each instance asks its backend to remove an old token; the token
 * goes when the removal is delivered, on both, and a second delivered
 * removal of it changes nothing. */
static void test_sweep_removes_on_delivery(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    assert_int_equal(registry_sweep_tokens(a.reg, T0 + NS_PER_SEC, 16), 0);
    assert_int_equal(registry_sweep_tokens(b.reg, T0 + NS_PER_SEC, 16), 0);
    assert_int_equal(a.be.n_removes, 1);
    assert_int_equal(b.be.n_removes, 1);
    assert_string_equal(b.be.removed, "tok");
    assert_int_equal(b.be.removed_created, 2);        /* the token's creation revision */
    assert_int_equal(registry_token_count(a.reg), 1); /* not yet delivered */
    /* Younger than the cutoff: not asked for. */
    assert_int_equal(registry_sweep_tokens(a.reg, T0, 16), 0);
    assert_int_equal(a.be.n_removes, 1);
    instance_t *all[] = {&a, &b};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(registry_deliver_token_removal(all[i]->reg, "tok", 3, 7), 0);
        assert_int_equal(registry_token_count(all[i]->reg), 0);
        assert_int_equal(registry_index(all[i]->reg), 7);
        reg_result_t res;
        registry_get(all[i]->reg, K("_config/size"), T0, &res);
        assert_int_equal(res.err, REG_E_KEY_NOT_FOUND);
        assert_true(res.token_missing);
        reg_result_clear(&res);
        /* not above the index: refused; unknown token: only advances */
        assert_int_equal(registry_deliver_token_removal(all[i]->reg, "tok", 3, 7), -EINVAL);
        assert_int_equal(registry_deliver_token_removal(all[i]->reg, "tok", 3, 9), 0);
        assert_int_equal(registry_index(all[i]->reg), 9);
    }
    registry_free(a.reg);
    registry_free(b.reg);
}

/* The mirror keeps recent event bodies only: a watch from before them gets
 * etcd's 401 "event index cleared"; a recent one is answered. */
static void test_old_wait_index_is_cleared(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    instance_t *all[] = {&a, &b};
    deliver(all, 2, REG_ACT_CREATE, K("m1"), "x", 3);
    reg_waiter_t w;
    reg_result_t res;
    registry_watch(a.reg, K("m1"), false, 3, &w, NULL, NULL, &res);
    assert_int_equal(res.err, REG_OK);
    assert_non_null(res.event);
    reg_result_clear(&res);
    /* Many revisions later (other keys of the etcd cluster), one change. */
    deliver(all, 2, REG_ACT_CREATE, K("m2"), "y", 3 + 10000);
    registry_watch(a.reg, K("m1"), false, 3, &w, NULL, NULL, &res);
    assert_int_equal(res.err, REG_E_EVENT_INDEX_CLEARED);
    assert_non_null(strstr(res.cause, "cleared"));
    uint64_t from = res.history_from; /* where a watch can start again */
    assert_true(from > 3 && from <= 3 + 10000);
    reg_result_clear(&res);
    registry_watch(a.reg, K("m2"), false, from, &w, NULL, NULL, &res);
    assert_int_equal(res.err, REG_OK);
    assert_non_null(res.event);
    reg_result_clear(&res);
    registry_watch(a.reg, K("m2"), false, 4, &w, NULL, NULL, &res);
    assert_int_equal(res.err, REG_OK);
    assert_non_null(res.event);
    assert_int_equal(res.event->index, 3 + 10000);
    reg_result_clear(&res);
    registry_free(a.reg);
    registry_free(b.reg);
}

/*
 * A resync past an etcd compaction: a token whose gap it cannot replay has
 * its history cleared (its parked watchers get REG_EVENT_CLEARED, a watch
 * from the gap is refused and told where the history is whole again); a
 * token gone whole is removed as a delivered removal removes it.
 */
static void test_resync_clears_and_removes_tokens(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    instance_t *all[] = {&a, &b};
    deliver(all, 2, REG_ACT_CREATE, K("m1"), "x", 3);
    reg_waiter_t w;
    reg_result_t res;
    woken = 0;
    registry_watch(b.reg, TOKDIR, true, 4, &w, on_watch, NULL, &res);
    assert_int_equal(res.err, REG_OK);
    assert_null(res.event);
    reg_result_clear(&res);
    registry_resync_clear(b.reg, K("m1"), 6);
    assert_int_equal(woken, 1);
    assert_ptr_equal(woken_ev, REG_EVENT_CLEARED);
    registry_watch(b.reg, TOKDIR, true, 6, &w, on_watch, NULL, &res);
    assert_int_equal(res.err, REG_E_EVENT_INDEX_CLEARED);
    assert_int_equal(res.history_from, 7);
    reg_result_clear(&res);
    registry_watch(b.reg, TOKDIR, true, 7, &w, on_watch, NULL, &res);
    assert_int_equal(res.err, REG_OK); /* parked: exact from there */
    assert_null(res.event);
    reg_result_clear(&res);
    /* Gone whole in the gap: removed at a revision of it, watchers told. */
    assert_int_equal(registry_resync_remove_token(b.reg, K("m1"), 5), -EINVAL); /* no token */
    assert_int_equal(registry_resync_remove_token(b.reg, REGISTRY_PREFIX "/other", 5), -EINVAL);
    assert_int_equal(registry_resync_remove_token(b.reg, TOKDIR, 3), -EINVAL); /* not above */
    assert_int_equal(registry_token_count(b.reg), 1);
    assert_int_equal(registry_resync_remove_token(b.reg, TOKDIR, 5), 0);
    assert_int_equal(woken, 2);
    assert_null(woken_ev);
    assert_int_equal(registry_token_count(b.reg), 0);
    assert_int_equal(registry_index(b.reg), 5);
    registry_get(b.reg, K("m1"), T0, &res);
    assert_int_equal(res.err, REG_E_KEY_NOT_FOUND);
    assert_true(res.token_missing);
    reg_result_clear(&res);
    buf_t why = {0};
    registry_explain_missing_token(b.reg, "tok", 3, &why);
    assert_false(buf_failed(&why));
    assert_non_null(strstr(why.data, "expired"));
    buf_free(&why);
    assert_int_equal(registry_resync_remove_token(b.reg, TOKDIR, 6), -EINVAL); /* gone */
    registry_free(a.reg);
    registry_free(b.reg);
}

/*
 * A mirror loaded from a range (etcd compacted its history) sees each key's
 * state, not a deletion: the token's version key (rewritten by the delete
 * of m2 at revision 5) is newer than anything the mirror shows of the
 * token. A write guarded by the token's version loses once to that
 * revision, which the mirror has applied: the guard of the next proposal is
 * the version etcd named, so the write goes through instead of losing
 * again until the retries run out.
 */
static void test_stale_token_version_is_learned_from_a_lost_guard(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    instance_t *all[] = {&a, &b};
    deliver(all, 2, REG_ACT_CREATE, K("m1"), "v1", 3);
    /* m2 made at 4 and deleted at 5: what a range at 5 does not show. */
    registry_advance(b.reg, 5);
    b.be.applied = 5;

    reg_result_t rb;
    outcome_t ob;
    registry_update(b.reg, K("m1"), "w1", NO_TTL, T0, &rb);
    await(&b, &rb, &ob);
    assert_int_equal(b.be.last_guard.kind, BACKEND_GUARD_TOKEN_AT);
    assert_int_equal(b.be.last_guard.token_index, 3);
    /* etcd: the version key is at 5, which the mirror has applied. */
    registry_settle(b.reg, b.be.last_seq, REG_SETTLE_LOST, 5, NULL);
    assert_int_equal(ob.calls, 0);
    assert_int_equal(b.be.n_proposed, 2);
    assert_int_equal(b.be.last_guard.kind, BACKEND_GUARD_TOKEN_AT);
    assert_int_equal(b.be.last_guard.token_index, 5);
    registry_settle(b.reg, b.be.last_seq, REG_SETTLE_COMMITTED, 6, NULL);
    deliver(&all[1], 1, REG_ACT_UPDATE, K("m1"), "w1", 6);
    assert_int_equal(ob.calls, 1);
    assert_int_equal(ob.err, REG_OK);
    assert_int_equal(ob.index, 6);
    registry_free(a.reg);
    registry_free(b.reg);
}

/*
 * The watch may show this instance's own change (its marker names the
 * proposal) before the Txn's answer, and that answer may then be lost (the
 * connection drops: the outcome is unknown, and the watch, started again
 * after the revision, never shows the marker again). The delivery is the
 * verdict: the write is answered with its event, and a late "failed" from
 * the backend changes nothing.
 */
static void test_own_delivery_settles_the_proposal(void **state)
{
    (void)state;
    instance_t a, b;
    two_with_token(&a, &b);
    reg_result_t ra;
    outcome_t oa;
    registry_create(a.reg, K("m1"), false, "a", false, NO_TTL, T0, &ra);
    await(&a, &ra, &oa);
    reg_delivered_t d = {.action = REG_ACT_CREATE,
                         .key = K("m1"),
                         .value = "a",
                         .index = 5,
                         .wall_ns = T0,
                         .own_seq = a.be.last_seq};
    assert_int_equal(registry_deliver(a.reg, &d), 0);
    assert_int_equal(oa.calls, 1);
    assert_int_equal(oa.err, REG_OK);
    assert_int_equal(oa.index, 5);
    assert_int_equal(oa.action, REG_ACT_CREATE);
    assert_int_equal(registry_pending_count(a.reg), 0);
    registry_settle(a.reg, a.be.last_seq, REG_SETTLE_FAILED, 0, "outcome unknown");
    assert_int_equal(oa.calls, 1);
    /* Another instance's seq that happens to be equal settles nothing. */
    reg_result_t rb;
    outcome_t ob;
    d.own_seq = 0;
    assert_int_equal(registry_deliver(b.reg, &d), 0);
    registry_create(b.reg, K("m2"), false, "b", false, NO_TTL, T0, &rb);
    await(&b, &rb, &ob);
    reg_delivered_t other = {.action = REG_ACT_CREATE,
                             .key = K("m3"),
                             .value = "c",
                             .index = 6,
                             .wall_ns = T0,
                             .own_seq = 0};
    assert_int_equal(registry_deliver(b.reg, &other), 0);
    assert_int_equal(ob.calls, 0);
    assert_int_equal(registry_pending_count(b.reg), 1);
    registry_free(a.reg);
    registry_free(b.reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_applied_on_delivery_only),
        cmocka_unit_test(test_race_on_one_key_one_wins),
        cmocka_unit_test(test_lost_guard_is_proposed_again),
        cmocka_unit_test(test_in_order_keys_one_at_a_time),
        cmocka_unit_test(test_in_order_beside_client_names),
        cmocka_unit_test(test_failed_and_refused_writes),
        cmocka_unit_test(test_watch_on_b_answered_by_write_on_a),
        cmocka_unit_test(test_refusal_checked_again_after_catching_up),
        cmocka_unit_test(test_delivery_that_does_not_fit),
        cmocka_unit_test(test_expiry_is_the_backends),
        cmocka_unit_test(test_sweep_removes_on_delivery),
        cmocka_unit_test(test_old_wait_index_is_cleared),
        cmocka_unit_test(test_resync_clears_and_removes_tokens),
        cmocka_unit_test(test_stale_token_version_is_learned_from_a_lost_guard),
        cmocka_unit_test(test_own_delivery_settles_the_proposal),
        cmocka_unit_test(test_await_catch_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
