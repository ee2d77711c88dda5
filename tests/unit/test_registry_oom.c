/*
 * test_registry_oom.c - registry/registry.h under allocation failure.
 *
 * For every operation, and for every N along it, the Nth allocation fails
 * (support/failalloc.h). After each run either the operation succeeded and
 * the registry is exactly as after an undisturbed run, or it failed and the
 * registry is exactly as before it: same index, same trees, same histories,
 * same parked watchers, no watcher woken. Then the same operation, retried
 * with memory back, succeeds. This is the "make all room first, then apply
 * infallibly" rule of registry.c, checked from the outside.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "failalloc.h"
#include "registry/registry.h"
#include "store/store.h"
#include "util/buf.h"
#include "util/timeutil.h"

#define T0 (1700000000LL * NS_PER_SEC)
#define SEC NS_PER_SEC
#define KEY(rest) REGISTRY_PREFIX "/tok/" rest
/* No operation here makes anywhere near this many allocations. */
#define MAX_ALLOCS_PER_OP 10000

static const reg_ttl_t NO_TTL = {false, 0};

/* The world one run works on; rebuilt for every run. */
typedef struct world {
    store_t *store;
    registry_t *reg;
    reg_waiter_t on_a, below_d, parked_by_op;
    int fired; /* waiter callbacks so far */
} world_t;

static world_t W;

static void on_event(reg_waiter_t *w, const reg_event_t *ev)
{
    (void)w;
    (void)ev;
    W.fired++;
}

static void ok_or_die(reg_result_t *r)
{
    if (r->err != REG_OK)
        fail_msg("fixture: error %d (%s)", (int)r->err, r->cause ? r->cause : "");
    reg_result_clear(r);
}

/* Tokens "old" (for the sweep) and "tok" with files, a directory, a TTL
 * key and two parked watchers, in a registry with a (memory) store. */
static void world_build(void)
{
    memset(&W, 0, sizeof W);
    W.store = store_memory_new();
    W.reg = registry_new(W.store);
    assert_non_null(W.reg);
    reg_result_t r;
    registry_create_token(W.reg, "old", 3, T0 - 1000 * SEC, &r);
    ok_or_die(&r);
    registry_create_token(W.reg, "tok", 3, T0, &r);
    ok_or_die(&r);
    registry_set(W.reg, KEY("a"), false, "1", NO_TTL, T0, &r);
    ok_or_die(&r);
    registry_set(W.reg, KEY("d/x"), false, "2", NO_TTL, T0, &r);
    ok_or_die(&r);
    registry_set(W.reg, KEY("d/y/z"), false, "3", NO_TTL, T0, &r);
    ok_or_die(&r);
    reg_ttl_t ttl = {true, 10};
    registry_set(W.reg, KEY("t"), false, "4", ttl, T0, &r);
    ok_or_die(&r);
    registry_watch(W.reg, KEY("a"), false, 0, &W.on_a, on_event, NULL, &r);
    assert_null(r.event);
    ok_or_die(&r);
    registry_watch(W.reg, KEY("d/x"), false, 0, &W.below_d, on_event, NULL, &r);
    assert_null(r.event);
    ok_or_die(&r);
}

static void world_free(void)
{
    registry_free(W.reg);
    store_close(W.store);
}

/* ---- a canonical dump of everything observable ----------------------------- */

static void dump_node(registry_t *reg, const reg_node_t *n, buf_t *out)
{
    reg_node_put_key(n, out);
    buf_printf(out, " dir=%d value=%s created=%llu modified=%llu expire=%lld\n", reg_node_is_dir(n),
               reg_node_value(n) ? reg_node_value(n) : "-",
               (unsigned long long)reg_node_created_index(n),
               (unsigned long long)reg_node_modified_index(n), (long long)reg_node_expire_ns(n));
    for (const reg_node_t *c = reg_node_first_child(n); c; c = reg_node_next_sibling(c))
        dump_node(reg, c, out);
}

static void dump_snap(const reg_snap_t *s, buf_t *out)
{
    buf_printf(out, "%s dir=%d value=%s created=%llu modified=%llu expire=%lld", s->key, s->is_dir,
               s->value ? s->value : "-", (unsigned long long)s->created_index,
               (unsigned long long)s->modified_index, (long long)s->expire_ns);
}

static void noop_cb(reg_waiter_t *w, const reg_event_t *ev)
{
    (void)w;
    (void)ev;
}

/* The tree and the whole history of each token the tests use. */
static char *dump(registry_t *reg)
{
    static const char *const names[] = {"old", "tok", "new", "new2"};
    buf_t out = BUF_INIT;
    buf_printf(&out, "index=%llu tokens=%zu waiters=%zu fired=%d\n",
               (unsigned long long)registry_index(reg), registry_token_count(reg),
               registry_waiter_count(reg), W.fired);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char dir[128];
        snprintf(dir, sizeof dir, REGISTRY_PREFIX "/%s", names[i]);
        reg_result_t r;
        registry_get(reg, dir, T0, &r);
        if (r.err) {
            buf_printf(&out, "%s: absent\n", names[i]);
            reg_result_clear(&r);
            continue;
        }
        dump_node(reg, r.node, &out);
        reg_result_clear(&r);
        /* Every event of the token, by a recursive watch from each index. */
        uint64_t since = 1;
        for (;;) {
            reg_waiter_t w;
            registry_watch(reg, dir, true, since, &w, noop_cb, NULL, &r);
            assert_int_equal(r.err, REG_OK);
            if (!r.event) {
                registry_unwatch(reg, &w);
                reg_result_clear(&r);
                break;
            }
            const reg_event_t *ev = r.event;
            buf_printf(&out, "  ev %llu %s wall=%lld ", (unsigned long long)ev->index,
                       reg_action_name(ev->action), (long long)ev->wall_ns);
            dump_snap(&ev->node, &out);
            if (ev->has_prev) {
                buf_puts(&out, " prev ");
                dump_snap(&ev->prev, &out);
            }
            buf_putc(&out, '\n');
            since = ev->index + 1;
            reg_result_clear(&r);
        }
    }
    assert_false(buf_failed(&out));
    return buf_steal(&out);
}

/* ---- the operations ---------------------------------------------------- */

/* Each runs one operation on W.reg and says whether it succeeded. */
typedef bool (*op_fn)(void);

static bool result_ok(reg_result_t *r)
{
    bool ok = r->err == REG_OK;
    reg_result_clear(r);
    return ok;
}

static bool op_create_token(void)
{
    reg_result_t r;
    registry_create_token(W.reg, "new", 5, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_create_token_by_write(void)
{
    reg_result_t r;
    registry_set(W.reg, REGISTRY_PREFIX "/new2/_config/size", false, "3", NO_TTL, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_create_with_new_dirs(void)
{
    reg_result_t r;
    registry_create(W.reg, KEY("p/q/r"), false, "v", false, NO_TTL, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_create_unique(void)
{
    reg_result_t r;
    registry_create(W.reg, KEY("queue"), false, "v", true, NO_TTL, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_create_dir(void)
{
    reg_result_t r;
    registry_create(W.reg, KEY("newdir"), true, NULL, false, NO_TTL, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_set_replace(void)
{
    reg_result_t r;
    registry_set(W.reg, KEY("a"), false, "9", NO_TTL, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_set_with_ttl(void)
{
    reg_result_t r;
    reg_ttl_t ttl = {true, 30};
    registry_set(W.reg, KEY("s"), false, "v", ttl, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_set_ttl_key_permanent(void)
{
    reg_result_t r;
    registry_set(W.reg, KEY("t"), false, "v", NO_TTL, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_update(void)
{
    reg_result_t r;
    reg_ttl_t ttl = {true, 60};
    registry_update(W.reg, KEY("a"), "u", ttl, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_cas(void)
{
    reg_result_t r;
    registry_compare_and_swap(W.reg, KEY("a"), "1", 0, "c", NO_TTL, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_delete_file(void)
{
    reg_result_t r;
    registry_delete(W.reg, KEY("a"), false, false, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_delete_dir_recursive(void)
{
    reg_result_t r;
    registry_delete(W.reg, KEY("d"), true, true, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_cad(void)
{
    reg_result_t r;
    registry_compare_and_delete(W.reg, KEY("a"), "1", 0, T0 + SEC, &r);
    return result_ok(&r);
}

static bool op_expire(void)
{
    int64_t now = T0 + 20 * SEC;
    int64_t next = registry_expire(W.reg, now);
    return next == 0; /* the only TTL key went; a failure retries in a second */
}

static bool op_sweep(void)
{
    return registry_sweep_tokens(W.reg, T0 - 500 * SEC, 10) == 1;
}

static bool op_watch_history(void)
{
    reg_result_t r;
    reg_waiter_t w;
    registry_watch(W.reg, KEY("d"), true, 1, &w, on_event, NULL, &r);
    bool ok = r.err == REG_OK && r.event && r.event->index == 4;
    reg_result_clear(&r);
    return ok;
}

static bool op_watch_park(void)
{
    reg_result_t r;
    registry_watch(W.reg, KEY("zz"), false, 0, &W.parked_by_op, on_event, NULL, &r);
    bool ok = r.err == REG_OK && !r.event;
    reg_result_clear(&r);
    return ok;
}

static bool op_get(void)
{
    reg_result_t r;
    registry_get(W.reg, KEY("d/y"), T0, &r);
    return result_ok(&r);
}

/* ---- the harness ------------------------------------------------------- */

static void check_every_failure(op_fn op, const char *name)
{
    /* What an undisturbed run leaves. */
    world_build();
    assert_true(op());
    char *want_after = dump(W.reg);
    world_free();

    unsigned long n;
    for (n = 1; n <= MAX_ALLOCS_PER_OP; n++) {
        world_build();
        char *before = dump(W.reg);
        failalloc_arm(n);
        bool ok = op();
        bool hit = failalloc_disarm();
        char *after = dump(W.reg);
        if (ok) {
            if (strcmp(after, want_after) != 0)
                fail_msg("%s, allocation %lu failed, yet it succeeded with another result:\n"
                         "--- want\n%s--- got\n%s",
                         name, n, want_after, after);
        } else {
            if (strcmp(after, before) != 0)
                fail_msg("%s, allocation %lu failed: the registry changed:\n--- before\n%s"
                         "--- after\n%s",
                         name, n, before, after);
            if (!op())
                fail_msg("%s, allocation %lu failed: a retry failed too", name, n);
            char *retried = dump(W.reg);
            if (strcmp(retried, want_after) != 0)
                fail_msg("%s, allocation %lu failed: the retry's result differs:\n--- want\n%s"
                         "--- got\n%s",
                         name, n, want_after, retried);
            free(retried);
        }
        free(before);
        free(after);
        world_free();
        if (!hit)
            break; /* the operation made fewer than n allocations: all covered */
    }
    assert_true(n <= MAX_ALLOCS_PER_OP);
    free(want_after);
}

#define OOM_TEST(op)                                                                               \
    static void test_oom_##op(void **state)                                                        \
    {                                                                                              \
        (void)state;                                                                               \
        check_every_failure(op_##op, #op);                                                         \
    }

OOM_TEST(create_token)
OOM_TEST(create_token_by_write)
OOM_TEST(create_with_new_dirs)
OOM_TEST(create_unique)
OOM_TEST(create_dir)
OOM_TEST(set_replace)
OOM_TEST(set_with_ttl)
OOM_TEST(set_ttl_key_permanent)
OOM_TEST(update)
OOM_TEST(cas)
OOM_TEST(delete_file)
OOM_TEST(delete_dir_recursive)
OOM_TEST(cad)
OOM_TEST(expire)
OOM_TEST(sweep)
OOM_TEST(watch_history)
OOM_TEST(watch_park)
OOM_TEST(get)

/* A recursive delete that fails must not leave its mark on the watchers
 * below the directory: the next, unrelated change must wake none of them. */
static void test_oom_failed_dir_delete_wakes_nobody(void **state)
{
    (void)state;
    for (unsigned long n = 1; n <= MAX_ALLOCS_PER_OP; n++) {
        world_build();
        /* "tok" then holds 8 events, so the delete's must grow its history:
         * an allocation after the directory's watchers are found. */
        for (int i = 0; i < 3; i++) {
            reg_result_t r;
            registry_set(W.reg, KEY("f"), false, "v", NO_TTL, T0, &r);
            ok_or_die(&r);
        }
        failalloc_arm(n);
        bool ok = op_delete_dir_recursive();
        bool hit = failalloc_disarm();
        if (!ok) {
            reg_result_t r;
            registry_set(W.reg, KEY("unrelated"), false, "v", NO_TTL, T0 + SEC, &r);
            assert_int_equal(r.err, REG_OK);
            reg_result_clear(&r);
            if (W.fired != 0)
                fail_msg("allocation %lu failed in the delete; the next change woke %d watchers", n,
                         W.fired);
            assert_int_equal(registry_waiter_count(W.reg), 2);
        }
        world_free();
        if (!hit)
            return;
    }
    fail_msg("the delete made more than %d allocations", MAX_ALLOCS_PER_OP);
}

/* The first token of a registry also makes the token table (uthash's):
 * that allocation failing must not exit the process or leave a token. */
static void test_oom_first_token(void **state)
{
    (void)state;
    for (unsigned long n = 1; n <= MAX_ALLOCS_PER_OP; n++) {
        registry_t *reg = registry_new(NULL);
        assert_non_null(reg);
        reg_result_t r;
        failalloc_arm(n);
        registry_create_token(reg, "first", 3, T0, &r);
        bool hit = failalloc_disarm();
        if (r.err == REG_OK) {
            assert_int_equal(registry_index(reg), 1);
            assert_int_equal(registry_token_count(reg), 1);
        } else {
            assert_int_equal(r.err, REG_E_INTERNAL);
            assert_int_equal(registry_index(reg), 0);
            assert_int_equal(registry_token_count(reg), 0);
            reg_result_clear(&r);
            registry_create_token(reg, "first", 3, T0, &r);
            assert_int_equal(r.err, REG_OK);
        }
        reg_result_clear(&r);
        registry_get(reg, REGISTRY_PREFIX "/first/_config/size", T0, &r);
        assert_int_equal(r.err, REG_OK);
        reg_result_clear(&r);
        registry_free(reg);
        if (!hit)
            return;
    }
    fail_msg("creating a token made more than %d allocations", MAX_ALLOCS_PER_OP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oom_first_token),
        cmocka_unit_test(test_oom_failed_dir_delete_wakes_nobody),
        cmocka_unit_test(test_oom_create_token),
        cmocka_unit_test(test_oom_create_token_by_write),
        cmocka_unit_test(test_oom_create_with_new_dirs),
        cmocka_unit_test(test_oom_create_unique),
        cmocka_unit_test(test_oom_create_dir),
        cmocka_unit_test(test_oom_set_replace),
        cmocka_unit_test(test_oom_set_with_ttl),
        cmocka_unit_test(test_oom_set_ttl_key_permanent),
        cmocka_unit_test(test_oom_update),
        cmocka_unit_test(test_oom_cas),
        cmocka_unit_test(test_oom_delete_file),
        cmocka_unit_test(test_oom_delete_dir_recursive),
        cmocka_unit_test(test_oom_cad),
        cmocka_unit_test(test_oom_expire),
        cmocka_unit_test(test_oom_sweep),
        cmocka_unit_test(test_oom_watch_history),
        cmocka_unit_test(test_oom_watch_park),
        cmocka_unit_test(test_oom_get),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
