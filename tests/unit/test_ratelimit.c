/*
 * test_ratelimit.c - util/ratelimit.h: burst, refill, the wait it reports,
 * independence of keys, and a table that stays bounded and consistent
 * under churn (eviction, backward-shift deletion).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/ratelimit.h"

static uint64_t take_u32(ratelimit_t *rl, uint32_t key, uint64_t now_ms)
{
    return ratelimit_take(rl, &key, sizeof key, now_ms);
}

static void test_burst_then_refused_with_wait(void **state)
{
    (void)state;
    ratelimit_t *rl = ratelimit_new(10, 20, 16);
    assert_non_null(rl);
    for (int i = 0; i < 20; i++)
        assert_int_equal(take_u32(rl, 1, 1000), 0);
    /* empty: one token comes back after 100 ms at 10/s */
    assert_int_equal(take_u32(rl, 1, 1000), 100);
    assert_int_equal(take_u32(rl, 1, 1060), 40);
    assert_int_equal(take_u32(rl, 1, 1100), 0);
    assert_int_equal(take_u32(rl, 1, 1100), 100);
    ratelimit_free(rl);
}

static void test_refill_is_capped_at_burst(void **state)
{
    (void)state;
    ratelimit_t *rl = ratelimit_new(10, 3, 16);
    assert_non_null(rl);
    for (int i = 0; i < 3; i++)
        assert_int_equal(take_u32(rl, 7, 0), 0);
    assert_true(take_u32(rl, 7, 0) > 0);
    /* a very long absence: full again, never more than the burst */
    uint64_t later = UINT64_MAX / 2;
    for (int i = 0; i < 3; i++)
        assert_int_equal(take_u32(rl, 7, later), 0);
    assert_true(take_u32(rl, 7, later) > 0);
    /* time going backwards takes nothing and gives nothing */
    assert_true(take_u32(rl, 7, 5) > 0);
    ratelimit_free(rl);
}

static void test_keys_are_independent(void **state)
{
    (void)state;
    ratelimit_t *rl = ratelimit_new(1, 1, 16);
    assert_non_null(rl);
    assert_int_equal(ratelimit_take(rl, "a", 1, 0), 0);
    assert_int_equal(ratelimit_take(rl, "a", 1, 0), 1000);
    assert_int_equal(ratelimit_take(rl, "b", 1, 0), 0);
    assert_int_equal(ratelimit_take(rl, "ab", 2, 0), 0);
    /* keys longer than the maximum are cut, not overrun */
    char long_key[64];
    memset(long_key, 'k', sizeof long_key);
    assert_int_equal(ratelimit_take(rl, long_key, sizeof long_key, 0), 0);
    assert_int_equal(ratelimit_take(rl, long_key, RATELIMIT_MAX_KEY_BYTES, 0), 1000);
    assert_int_equal(ratelimit_count(rl), 4);
    ratelimit_free(rl);
}

static void test_bad_parameters(void **state)
{
    (void)state;
    assert_null(ratelimit_new(0, 1, 1));
    assert_null(ratelimit_new(1, 0, 1));
    assert_null(ratelimit_new(1, 1, 0));
}

/* The least recently seen key is evicted when the table is full; the
 * table never grows past its size. */
static void test_lru_eviction(void **state)
{
    (void)state;
    ratelimit_t *rl = ratelimit_new(1, 1, 3);
    assert_non_null(rl);
    assert_int_equal(take_u32(rl, 1, 0), 0);
    assert_int_equal(take_u32(rl, 2, 0), 0);
    assert_int_equal(take_u32(rl, 3, 0), 0);
    assert_true(take_u32(rl, 1, 0) > 0);     /* 1 is now the most recent */
    assert_int_equal(take_u32(rl, 4, 0), 0); /* evicts 2 */
    assert_int_equal(ratelimit_count(rl), 3);
    assert_true(take_u32(rl, 1, 0) > 0);     /* kept: still empty */
    assert_true(take_u32(rl, 3, 0) > 0);     /* kept */
    assert_int_equal(take_u32(rl, 2, 0), 0); /* forgotten: a fresh bucket */
    ratelimit_free(rl);
}

/* Churn through many more keys than slots; every key still in the table
 * must be found with its state (an index broken by deletion would lose
 * keys or find a wrong one). Model: the last `size` distinct keys used. */
static void test_churn_keeps_index_consistent(void **state)
{
    (void)state;
    enum { SIZE = 37, KEYS = 200, STEPS = 20000 };
    ratelimit_t *rl = ratelimit_new(1, 1, SIZE);
    assert_non_null(rl);
    uint64_t last_use[KEYS] = {0}; /* step+1 of the last use; 0 never */
    uint64_t t = 0;
    unsigned seed = 12345;
    for (uint64_t step = 1; step <= STEPS; step++) {
        seed = seed * 1103515245u + 12345u;
        uint32_t key = (seed >> 8) % KEYS;
        /* In the table iff fewer than SIZE other distinct keys were used since. */
        size_t newer = 0;
        if (last_use[key])
            for (uint32_t k = 0; k < KEYS; k++)
                if (k != key && last_use[k] > last_use[key])
                    newer++;
        bool present = last_use[key] && newer < SIZE;
        /* Time stands still: a present key's bucket is empty, a new one full. */
        uint64_t wait = take_u32(rl, key, t);
        if (present)
            assert_true(wait > 0);
        else
            assert_int_equal(wait, 0);
        last_use[key] = step;
        assert_true(ratelimit_count(rl) <= SIZE);
    }
    ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refused_with_wait),
        cmocka_unit_test(test_refill_is_capped_at_burst),
        cmocka_unit_test(test_keys_are_independent),
        cmocka_unit_test(test_bad_parameters),
        cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_churn_keeps_index_consistent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
