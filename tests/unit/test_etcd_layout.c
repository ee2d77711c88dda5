/*
 * test_etcd_layout.c - backend/etcd_layout.h: keys, the action marker, the
 * guarded transaction of each kind of change, and a revision's events read
 * back into the change that made them.
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

#include "backend/etcd_layout.h"

#define P "/disco/"
#define V2(rest) REGISTRY_PREFIX "/tok/" rest

static void test_keys(void **state)
{
    (void)state;
    char *k = etcd_layout_key(P, V2("m1"), false);
    assert_string_equal(k, "/disco/k/tok/m1");
    free(k);
    k = etcd_layout_key(P, V2("_config"), true);
    assert_string_equal(k, "/disco/k/tok/_config/");
    free(k);
    k = etcd_layout_key(P, REGISTRY_PREFIX "/tok", true);
    assert_string_equal(k, "/disco/k/tok/");
    free(k);
    assert_null(etcd_layout_key(P, "/other/tok/m1", false));

    bool is_dir = true;
    const char *ek = "/disco/k/tok/a/b";
    k = etcd_layout_v2_key(P, ek, strlen(ek), &is_dir);
    assert_string_equal(k, V2("a/b"));
    assert_false(is_dir);
    free(k);
    ek = "/disco/k/tok/";
    k = etcd_layout_v2_key(P, ek, strlen(ek), &is_dir);
    assert_string_equal(k, REGISTRY_PREFIX "/tok");
    assert_true(is_dir);
    free(k);
    ek = "/disco/v/tok";
    assert_null(etcd_layout_v2_key(P, ek, strlen(ek), &is_dir));

    k = etcd_layout_version_key(P, "tok", 3);
    assert_string_equal(k, "/disco/v/tok");
    free(k);
    k = etcd_layout_prefix_end("/disco/");
    assert_string_equal(k, "/disco0");
    free(k);
}

static void test_marker_round_trip(void **state)
{
    (void)state;
    char *m = etcd_layout_marker(REG_ACT_CAS, "inst-1", 42, V2("a b/c"), false);
    assert_string_equal(m, "compareAndSwap inst-1 42 F " V2("a b/c"));
    enum reg_action a;
    char inst[64];
    uint64_t seq;
    char *key;
    bool is_dir;
    int64_t expire_ns = -1;
    assert_true(etcd_layout_parse_marker(m, strlen(m), &a, inst, sizeof inst, &seq, &key, &is_dir,
                                         &expire_ns));
    assert_int_equal(expire_ns, 0);
    assert_int_equal(a, REG_ACT_CAS);
    assert_string_equal(inst, "inst-1");
    assert_int_equal(seq, 42);
    assert_string_equal(key, V2("a b/c")); /* spaces in a key survive: it comes last */
    assert_false(is_dir);
    free(key);
    free(m);
    const char *bad[] = {"", "get x 1 F /k", "create x 1 X /k", "create x 1z F /k",
                         "create x 1 F k", "create  1 F /k",
                         /* 2^64 + 42: would wrap to seq 42 */
                         "create x 18446744073709551658 F /k"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(etcd_layout_parse_marker(bad[i], strlen(bad[i]), &a, inst, sizeof inst, &seq,
                                              &key, &is_dir, &expire_ns));
}

static reg_event_t event(enum reg_action action, const char *key, bool is_dir, const char *value)
{
    reg_event_t ev = {.action = action, .index = 9, .wall_ns = 123};
    ev.node.key = (char *)key;
    ev.node.is_dir = is_dir;
    ev.node.value = (char *)value;
    return ev;
}

static const etcd_op_t *find_op(const etcd_txn_plan_t *p, enum etcd_op_kind kind, const char *key)
{
    for (size_t i = 0; i < p->n_success; i++)
        if (p->success[i].kind == kind && strcmp(p->success[i].key, key) == 0)
            return &p->success[i];
    return NULL;
}

/* The registration hot path: token exists, key absent as file and dir. */
static void test_plan_registration(void **state)
{
    (void)state;
    reg_event_t ev = event(REG_ACT_CREATE, V2("m1"), false, "n1=http://10.0.0.1:2380");
    backend_guard_t g = {.kind = BACKEND_GUARD_KEY_ABSENT};
    etcd_txn_plan_t p;
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 7, &p), 0);
    assert_int_equal(p.n_cmps, 3);
    assert_int_equal(p.cmps[0].kind, ETCD_CMP_CREATE_GT);
    assert_string_equal(p.cmps[0].key, "/disco/v/tok");
    assert_int_equal(p.cmps[1].kind, ETCD_CMP_CREATE_EQ);
    assert_string_equal(p.cmps[1].key, "/disco/k/tok/m1");
    assert_string_equal(p.cmps[2].key, "/disco/k/tok/m1/");
    assert_int_equal(p.cmps[2].rev, 0);
    /* The member, the token's version and the marker; no directory puts. */
    assert_int_equal(p.n_success, 3);
    const etcd_op_t *put = find_op(&p, ETCD_OP_PUT, "/disco/k/tok/m1");
    assert_non_null(put);
    assert_string_equal(put->value, "n1=http://10.0.0.1:2380");
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/v/tok"));
    put = find_op(&p, ETCD_OP_PUT, "/disco/act");
    assert_non_null(put);
    assert_string_equal(put->value, "create i1 7 F " V2("m1"));
    /* Who won shows on the failure branch. */
    assert_int_equal(p.n_failure, 3);
    assert_string_equal(p.failure[2].key, "/disco/v/tok");
    etcd_txn_plan_free(&p);
}

/* An in-order key: no key of its directory sorts at or after its name
 * among those starting with a digit; below the token, its directory is
 * not a file. */
static void test_plan_in_order(void **state)
{
    (void)state;
    reg_event_t ev = event(REG_ACT_CREATE, V2("00000000000000000042"), false, "job");
    backend_guard_t g = {.kind = BACKEND_GUARD_IN_ORDER};
    etcd_txn_plan_t p;
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 7, &p), 0);
    assert_int_equal(p.n_cmps, 2);
    assert_int_equal(p.cmps[0].kind, ETCD_CMP_CREATE_GT);
    assert_string_equal(p.cmps[0].key, "/disco/v/tok");
    assert_null(p.cmps[0].range_end);
    assert_int_equal(p.cmps[1].kind, ETCD_CMP_CREATE_EQ);
    assert_int_equal(p.cmps[1].rev, 0);
    assert_string_equal(p.cmps[1].key, "/disco/k/tok/00000000000000000042");
    assert_string_equal(p.cmps[1].range_end, "/disco/k/tok/:");
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/00000000000000000042"));
    assert_string_equal(p.failure[p.n_failure - 1].key, "/disco/v/tok");
    etcd_txn_plan_free(&p);

    ev = event(REG_ACT_CREATE, V2("q/00000000000000000043"), false, "job");
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 8, &p), 0);
    assert_int_equal(p.n_cmps, 3);
    assert_int_equal(p.cmps[1].kind, ETCD_CMP_CREATE_EQ);
    assert_string_equal(p.cmps[1].key, "/disco/k/tok/q");
    assert_null(p.cmps[1].range_end);
    assert_string_equal(p.cmps[2].key, "/disco/k/tok/q/00000000000000000043");
    assert_string_equal(p.cmps[2].range_end, "/disco/k/tok/q/:");
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/q/"));
    etcd_txn_plan_free(&p);
}

static void test_plan_token_creation(void **state)
{
    (void)state;
    reg_event_t ev = event(REG_ACT_SET, V2("_config/size"), false, "3");
    backend_guard_t g = {.kind = BACKEND_GUARD_TOKEN_NEW};
    etcd_txn_plan_t p;
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 1, &p), 0);
    assert_int_equal(p.n_cmps, 1);
    assert_int_equal(p.cmps[0].kind, ETCD_CMP_CREATE_EQ);
    assert_string_equal(p.cmps[0].key, "/disco/v/tok");
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/"));
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/_config/"));
    assert_string_equal(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/_config/size")->value, "3");
    assert_string_equal(find_op(&p, ETCD_OP_PUT, "/disco/m/tok")->value, "123");
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/v/tok"));
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/act"));
    assert_int_equal(p.n_success, 6);
    etcd_txn_plan_free(&p);
}

/* A write with a TTL: its expiry rides in the marker, the lease goes on the
 * key's put (and on its P c/ key), nowhere else. */
static void test_plan_ttl_key(void **state)
{
    (void)state;
    reg_event_t ev = event(REG_ACT_SET, V2("eph"), false, "v");
    ev.node.expire_ns = 1700000000123456789;
    ev.has_prev = true; /* a set over a file: the P c/ key is written too */
    backend_guard_t g = {.kind = BACKEND_GUARD_TOKEN_AT, .token_index = 5};
    etcd_txn_plan_t p;
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 4, &p), 0);
    const etcd_op_t *m = find_op(&p, ETCD_OP_PUT, "/disco/act");
    assert_string_equal(m->value, "set i1 4 F@1700000000123456789 " V2("eph"));
    assert_int_equal(etcd_layout_plan_set_lease(&p, P, V2("eph"), false, 77), 2);
    for (size_t i = 0; i < p.n_success; i++) {
        bool leased = strcmp(p.success[i].key, "/disco/k/tok/eph") == 0 ||
                      strcmp(p.success[i].key, "/disco/c/tok/eph") == 0;
        assert_int_equal(p.success[i].lease, leased ? 77 : 0);
    }
    /* and the marker reads back */
    enum reg_action a;
    char inst[64];
    uint64_t seq;
    char *key;
    bool is_dir;
    int64_t expire_ns;
    assert_true(etcd_layout_parse_marker(m->value, strlen(m->value), &a, inst, sizeof inst, &seq,
                                         &key, &is_dir, &expire_ns));
    assert_int_equal(a, REG_ACT_SET);
    assert_int_equal(expire_ns, 1700000000123456789);
    assert_string_equal(key, V2("eph"));
    free(key);
    etcd_txn_plan_free(&p);
    const char *bad[] = {"set i1 4 F@ /k", "set i1 4 F@12x /k", "set i1 4 F@0 /k",
                         "set i1 4 F#1 /k", "set i1 4 F@99999999999999999999 /k"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(etcd_layout_parse_marker(bad[i], strlen(bad[i]), &a, inst, sizeof inst, &seq,
                                              &key, &is_dir, &expire_ns));
    /* A removal carries no expiry. */
    reg_event_t del = event(REG_ACT_DELETE, V2("eph"), false, NULL);
    del.node.expire_ns = 1700000000123456789;
    assert_int_equal(etcd_layout_plan(P, &del, &g, "i1", 5, &p), 0);
    assert_string_equal(find_op(&p, ETCD_OP_PUT, "/disco/act")->value, "delete i1 5 F " V2("eph"));
    etcd_txn_plan_free(&p);
}

/* A token's removal by age: guarded by its creation, every key of it gone. */
static void test_plan_gc(void **state)
{
    (void)state;
    etcd_txn_plan_t p;
    assert_int_equal(etcd_layout_plan_gc(P, "tok", 12, "i1", &p), 0);
    assert_int_equal(p.n_cmps, 1);
    assert_int_equal(p.cmps[0].kind, ETCD_CMP_CREATE_EQ);
    assert_string_equal(p.cmps[0].key, "/disco/v/tok");
    assert_int_equal(p.cmps[0].rev, 12);
    assert_non_null(find_op(&p, ETCD_OP_DELETE_PREFIX, "/disco/k/tok/"));
    assert_non_null(find_op(&p, ETCD_OP_DELETE_PREFIX, "/disco/c/tok/"));
    assert_non_null(find_op(&p, ETCD_OP_DELETE, "/disco/v/tok"));
    assert_non_null(find_op(&p, ETCD_OP_DELETE, "/disco/m/tok"));
    assert_string_equal(find_op(&p, ETCD_OP_PUT, "/disco/act")->value, "gc i1 tok");
    assert_int_equal(p.n_success, 5);
    assert_int_equal(p.n_failure, 0);
    etcd_txn_plan_free(&p);
}

static void test_plan_guarded_by_token_version(void **state)
{
    (void)state;
    reg_event_t ev = event(REG_ACT_DELETE, V2("d"), true, NULL);
    backend_guard_t g = {.kind = BACKEND_GUARD_TOKEN_AT, .token_index = 17};
    etcd_txn_plan_t p;
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 2, &p), 0);
    assert_int_equal(p.n_cmps, 1);
    assert_int_equal(p.cmps[0].kind, ETCD_CMP_MOD_EQ);
    assert_int_equal(p.cmps[0].rev, 17);
    /* A directory goes with everything below it. */
    assert_non_null(find_op(&p, ETCD_OP_DELETE_PREFIX, "/disco/k/tok/d/"));
    assert_non_null(find_op(&p, ETCD_OP_DELETE_PREFIX, "/disco/c/tok/d/"));
    etcd_txn_plan_free(&p);

    ev = event(REG_ACT_CREATE, V2("a/b/c"), false, "x");
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 3, &p), 0);
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/a/"));
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/a/b/"));
    assert_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/")); /* the token exists */
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/a/b/c"));
    etcd_txn_plan_free(&p);

    /* A set that replaces a file keeps its new createdIndex apart. */
    ev = event(REG_ACT_SET, V2("m1"), false, "y");
    ev.has_prev = true;
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 5, &p), 0);
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/k/tok/m1"));
    assert_non_null(find_op(&p, ETCD_OP_PUT, "/disco/c/tok/m1"));
    etcd_txn_plan_free(&p);
    ev = event(REG_ACT_DELETE, V2("m1"), false, NULL);
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 6, &p), 0);
    assert_non_null(find_op(&p, ETCD_OP_DELETE, "/disco/k/tok/m1"));
    assert_non_null(find_op(&p, ETCD_OP_DELETE, "/disco/c/tok/m1"));
    etcd_txn_plan_free(&p);
    char *v2 = etcd_layout_v2_key_of_created(P, "/disco/c/tok/m1", 15);
    assert_string_equal(v2, V2("m1"));
    free(v2);

    ev = event(REG_ACT_CREATE, "/elsewhere/x", false, "x");
    assert_int_equal(etcd_layout_plan(P, &ev, &g, "i1", 4, &p), -EINVAL);
}

#define KV(del, k, v)                                                                              \
    {                                                                                              \
        del, k, sizeof k - 1, v, sizeof v - 1                                                      \
    }

static void test_read_revision(void **state)
{
    (void)state;
    /* A transaction made by the plan above, as the watch delivers it. */
    etcd_kv_event_t txn[] = {
        KV(false, "/disco/k/tok/m1", "n1=http://10.0.0.1:2380"),
        KV(false, "/disco/v/tok", ""),
        KV(false, "/disco/act", "create i1 7 F " V2("m1")),
    };
    etcd_change_t c;
    assert_int_equal(etcd_layout_read_revision(P, txn, 3, &c), 0);
    assert_true(c.has_change);
    assert_int_equal(c.action, REG_ACT_CREATE);
    assert_string_equal(c.key, V2("m1"));
    assert_string_equal(c.value, "n1=http://10.0.0.1:2380");
    assert_string_equal(c.instance, "i1");
    assert_int_equal(c.seq, 7);
    etcd_change_clear(&c);

    /* A recursive delete: many deletes, one change. */
    etcd_kv_event_t del[] = {
        KV(true, "/disco/k/tok/d/", ""),
        KV(true, "/disco/k/tok/d/x", ""),
        KV(false, "/disco/v/tok", ""),
        KV(false, "/disco/act", "delete i2 3 D " V2("d")),
    };
    assert_int_equal(etcd_layout_read_revision(P, del, 4, &c), 0);
    assert_int_equal(c.action, REG_ACT_DELETE);
    assert_true(c.is_dir);
    assert_null(c.value);
    etcd_change_clear(&c);

    /* A lease that ran out: a delete with no marker is an expiry. */
    etcd_kv_event_t exp[] = {KV(true, "/disco/k/tok/m2", "")};
    assert_int_equal(etcd_layout_read_revision(P, exp, 1, &c), 0);
    assert_int_equal(c.action, REG_ACT_EXPIRE);
    assert_string_equal(c.key, V2("m2"));
    etcd_change_clear(&c);

    /* Nothing for the mirror. */
    etcd_kv_event_t other[] = {KV(false, "/disco/m/tok", "1")};
    assert_int_equal(etcd_layout_read_revision(P, other, 1, &c), 0);
    assert_false(c.has_change);

    /* A token's creation: its creation time from P m/. A TTL key: its
     * expiry from the marker. */
    etcd_kv_event_t made[] = {
        KV(false, "/disco/k/tok/", ""),
        KV(false, "/disco/k/tok/_config/", ""),
        KV(false, "/disco/k/tok/_config/size", "3"),
        KV(false, "/disco/m/tok", "1700000000000000001"),
        KV(false, "/disco/v/tok", ""),
        KV(false, "/disco/act", "set i1 1 F " V2("_config/size")),
    };
    assert_int_equal(etcd_layout_read_revision(P, made, 6, &c), 0);
    assert_int_equal(c.created_ns, 1700000000000000001);
    assert_int_equal(c.expire_ns, 0);
    assert_false(c.removes_token);
    etcd_change_clear(&c);
    etcd_kv_event_t ttl[] = {
        KV(false, "/disco/k/tok/eph", "v"),
        KV(false, "/disco/v/tok", ""),
        KV(false, "/disco/act", "create i1 2 F@1700000002000000000 " V2("eph")),
    };
    assert_int_equal(etcd_layout_read_revision(P, ttl, 3, &c), 0);
    assert_int_equal(c.action, REG_ACT_CREATE);
    assert_int_equal(c.expire_ns, 1700000002000000000);
    assert_int_equal(c.created_ns, 0);
    assert_string_equal(c.value, "v");
    etcd_change_clear(&c);

    /* A removal by age. */
    etcd_kv_event_t gc[] = {
        KV(true, "/disco/k/tok/", ""),        KV(true, "/disco/k/tok/m1", ""),
        KV(true, "/disco/v/tok", ""),         KV(true, "/disco/m/tok", ""),
        KV(false, "/disco/act", "gc i2 tok"),
    };
    assert_int_equal(etcd_layout_read_revision(P, gc, 5, &c), 0);
    assert_true(c.has_change);
    assert_true(c.removes_token);
    assert_string_equal(c.key, REGISTRY_PREFIX "/tok");
    assert_string_equal(c.instance, "i2");
    etcd_change_clear(&c);
    etcd_kv_event_t bad_gc[] = {KV(false, "/disco/act", "gc i2 ../x")};
    assert_int_equal(etcd_layout_read_revision(P, bad_gc, 1, &c), -EINVAL);

    /* A marker whose key the revision does not write. */
    etcd_kv_event_t broken[] = {KV(false, "/disco/act", "create i1 7 F " V2("m9"))};
    assert_int_equal(etcd_layout_read_revision(P, broken, 1, &c), -EINVAL);
    assert_null(c.key);
}

/* P index_base: a finished migration's signed offset, nothing else. */
static void test_index_base(void **state)
{
    (void)state;
    char *k = etcd_layout_index_base_key("/disco/");
    assert_string_equal(k, "/disco/index_base");
    free(k);
    int64_t b = 99;
    assert_true(etcd_layout_parse_index_base("-6", 2, &b));
    assert_int_equal(b, -6);
    assert_true(etcd_layout_parse_index_base("1234", 4, &b));
    assert_int_equal(b, 1234);
    assert_false(etcd_layout_parse_index_base("migrating since 1 (pid 2)", 25, &b));
    assert_false(etcd_layout_parse_index_base("", 0, &b));
    assert_false(etcd_layout_parse_index_base("-", 1, &b));
    assert_false(etcd_layout_parse_index_base("12 ", 3, &b));
    assert_false(etcd_layout_parse_index_base("99999999999999999999", 20, &b));
    assert_int_equal(b, 1234);
}

/* A lease covers what is left of a TTL, rounded up, at least 1 s. */
static void test_lease_seconds(void **state)
{
    (void)state;
    const int64_t s = 1000000000;
    assert_int_equal(etcd_layout_lease_seconds(100 * s, 70 * s), 30);
    assert_int_equal(etcd_layout_lease_seconds(100 * s + 1, 70 * s), 31);
    assert_int_equal(etcd_layout_lease_seconds(100 * s, 100 * s - s / 2), 1);
    assert_int_equal(etcd_layout_lease_seconds(100 * s, 120 * s), 1);
}

/* A token's creation time, read back from P m/<token>. */
static void test_parse_meta(void **state)
{
    (void)state;
    char *k = etcd_layout_meta_key("/disco/", "abc", 3);
    const char *tok = NULL;
    size_t len = 0;
    int64_t ns = 0;
    assert_true(
        etcd_layout_parse_meta("/disco/", k, strlen(k), "1700000000123", 13, &tok, &len, &ns));
    assert_int_equal(len, 3);
    assert_memory_equal(tok, "abc", 3);
    assert_int_equal(ns, 1700000000123LL);
    assert_false(etcd_layout_parse_meta("/disco/", k, strlen(k), "12x", 3, &tok, &len, &ns));
    assert_false(etcd_layout_parse_meta("/disco/", k, strlen(k), NULL, 0, &tok, &len, &ns));
    assert_false(etcd_layout_parse_meta("/disco/", k, strlen(k), "99999999999999999999", 20, &tok,
                                        &len, &ns));
    assert_false(etcd_layout_parse_meta("/other/", k, strlen(k), "1", 1, &tok, &len, &ns));
    assert_false(etcd_layout_parse_meta("/disco/", "/disco/m/", 9, "1", 1, &tok, &len, &ns));
    assert_false(etcd_layout_parse_meta("/disco/", "/disco/v/abc", 12, "1", 1, &tok, &len, &ns));
    free(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_marker_round_trip),
        cmocka_unit_test(test_plan_registration),
        cmocka_unit_test(test_plan_in_order),
        cmocka_unit_test(test_plan_token_creation),
        cmocka_unit_test(test_plan_guarded_by_token_version),
        cmocka_unit_test(test_plan_ttl_key),
        cmocka_unit_test(test_plan_gc),
        cmocka_unit_test(test_read_revision),
        cmocka_unit_test(test_index_base),
        cmocka_unit_test(test_parse_meta),
        cmocka_unit_test(test_lease_seconds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
