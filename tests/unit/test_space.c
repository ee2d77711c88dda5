/*
 * test_space.c - store/space.h: the store's free-space figure and the
 * reserve it keeps for accepted writes.
 *
 * The arithmetic on its own, then against a real LMDB environment: the
 * count follows what LMDB uses and frees, and as long as the figure is
 * above the reserve for a commit's bytes, that commit fits the map.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "store/space.h"

#define KIB ((size_t)1024)
#define MIB (KIB * KIB)
#define PAGE ((size_t)4096)

static void test_free_counts_freelist_and_unreached_pages(void **state)
{
    (void)state;
    store_space_t s = {.page_bytes = PAGE,
                       .map_pages = 1000,
                       .file_pages = 300,
                       .tree_pages = 250,
                       .disk_free_bytes = SIZE_MAX};
    /* 50 pages on the freelist, 700 the file has not reached. */
    assert_int_equal(store_space_free_bytes(&s), 750 * PAGE);
    /* Unreached pages need disk blocks: the disk limits them, not the
     * freelist's (the file already has those blocks). */
    s.disk_free_bytes = 10 * PAGE;
    assert_int_equal(store_space_free_bytes(&s), 60 * PAGE);
    s.disk_free_bytes = 0;
    assert_int_equal(store_space_free_bytes(&s), 50 * PAGE);
    /* A file that fills its map, with every page in a tree: nothing. */
    s = (store_space_t){PAGE, 1000, 1000, 1000, SIZE_MAX};
    assert_int_equal(store_space_free_bytes(&s), 0);
    /* Never negative, whatever the figures say. */
    s = (store_space_t){PAGE, 10, 12, 20, SIZE_MAX};
    assert_int_equal(store_space_free_bytes(&s), 0);
}

static void test_reserve_is_bytes_for_pending_writes_not_a_share_of_the_map(void **state)
{
    (void)state;
    size_t idle = store_space_reserve_bytes(0, PAGE);
    assert_int_equal(idle, STORE_SPACE_MARGIN_BYTES + 2 * STORE_SPACE_COMMIT_COPIED_PAGES * PAGE);
    /* What the issue measured: an empty store with 12 MiB free on its disk
     * (default 8 GiB map, so 5% of it was 410 MiB) takes writes. */
    assert_true(idle < MIB);
    store_space_t s = {PAGE, ((size_t)8 << 30) / PAGE, 10, 8, 12 * MIB};
    assert_true(store_space_free_bytes(&s) > idle);
    /* It grows with what is pending: twice the bytes, for half-full leaves. */
    assert_int_equal(store_space_reserve_bytes(1 * MIB, PAGE),
                     idle + STORE_SPACE_WRITE_AMPLIFICATION * MIB);
    /* Larger pages copy more per commit. */
    assert_true(store_space_reserve_bytes(0, 16 * KIB) > idle);
}

/* A fresh LMDB environment in a temporary directory. */
typedef struct env_fixture {
    char dir[64];
    MDB_env *env;
    MDB_dbi dbi;
} env_fixture_t;

static int env_setup(void **state)
{
    env_fixture_t *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/disco-test-space-XXXXXX");
    if (!mkdtemp(f->dir) || mdb_env_create(&f->env) != 0 ||
        mdb_env_set_mapsize(f->env, 4 * MIB) != 0 || mdb_env_set_maxdbs(f->env, 4) != 0 ||
        mdb_env_open(f->env, f->dir, MDB_NOTLS | MDB_NOSYNC, 0600) != 0)
        return -1;
    MDB_txn *txn;
    if (mdb_txn_begin(f->env, NULL, 0, &txn) != 0 ||
        mdb_dbi_open(txn, "events", MDB_CREATE, &f->dbi) != 0 || mdb_txn_commit(txn) != 0)
        return -1;
    *state = f;
    return 0;
}

static int env_teardown(void **state)
{
    env_fixture_t *f = *state;
    mdb_env_close(f->env);
    char path[128];
    snprintf(path, sizeof path, "%s/data.mdb", f->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", f->dir);
    unlink(path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static size_t free_now(env_fixture_t *f)
{
    MDB_txn *txn;
    assert_int_equal(mdb_txn_begin(f->env, NULL, MDB_RDONLY, &txn), 0);
    store_space_t s = {0};
    assert_int_equal(store_space_count(txn, &f->dbi, 1, &s), 0);
    mdb_txn_abort(txn);
    assert_true(s.tree_pages <= s.file_pages);
    return store_space_free_bytes(&s);
}

/* Puts `n` records of `len` bytes from key `first` on, in one commit. */
static int put_records(env_fixture_t *f, uint64_t first, size_t n, size_t len)
{
    static unsigned char value[8192];
    memset(value, 'v', sizeof value);
    MDB_txn *txn;
    int rc = mdb_txn_begin(f->env, NULL, 0, &txn);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        uint64_t key = __builtin_bswap64(first + i); /* big-endian: in order */
        MDB_val k = {8, &key}, v = {len, value};
        rc = mdb_put(txn, f->dbi, &k, &v, 0);
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

static void test_count_follows_what_lmdb_uses_and_frees(void **state)
{
    env_fixture_t *f = *state;
    size_t empty = free_now(f);
    assert_true(empty >= 4 * MIB - 16 * PAGE);
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(put_records(f, 1 + 100 * i, 100, 1000), 0);
    size_t full = free_now(f);
    assert_true(full + MIB <= empty); /* 1000 records of 1000 bytes */
    assert_true(full + 3 * MIB >= empty);
    /* Deleting everything puts the pages on the freelist: they count
     * again, though the file keeps its size. */
    MDB_txn *txn;
    assert_int_equal(mdb_txn_begin(f->env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_drop(txn, f->dbi, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    assert_true(free_now(f) >= empty - 16 * PAGE);
}

/*
 * The property the store relies on: a commit of `bytes` of records starts
 * only while free space is above store_space_reserve_bytes(bytes) (the
 * loop refuses writes otherwise), and such a commit must fit. Fill the map
 * commit by commit, each time checking the figure first.
 */
static void test_a_commit_within_the_reserve_fits(void **state)
{
    env_fixture_t *f = *state;
    const size_t batch = 8, len = 600;
    /* What the store charges per entry: the record and 64 bytes more. */
    const size_t pending = batch * (len + 64);
    uint64_t key = 1;
    size_t commits = 0;
    for (;; commits++) {
        size_t room = free_now(f);
        if (room <= store_space_reserve_bytes(pending, PAGE))
            break; /* the store would refuse the writes now */
        assert_int_equal(put_records(f, key, batch, len), 0);
        key += batch;
    }
    assert_true(commits > 100); /* the map did fill, most of it */
    /* And the reserve is not far too large: the map really is nearly full
     * (less than a few reserves are left to LMDB). */
    int rc = 0;
    size_t extra = 0;
    while ((rc = put_records(f, key, batch, len)) == 0 && extra < 1000) {
        key += batch;
        extra++;
    }
    assert_int_equal(rc, MDB_MAP_FULL);
    assert_true(extra * pending < 4 * store_space_reserve_bytes(pending, PAGE));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_counts_freelist_and_unreached_pages),
        cmocka_unit_test(test_reserve_is_bytes_for_pending_writes_not_a_share_of_the_map),
        cmocka_unit_test_setup_teardown(test_count_follows_what_lmdb_uses_and_frees, env_setup,
                                        env_teardown),
        cmocka_unit_test_setup_teardown(test_a_commit_within_the_reserve_fits, env_setup,
                                        env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
