/*
 * ratelimit.h - token buckets per key (a client address), in a table of
 * bounded size.
 *
 * Each key has a bucket of `burst` tokens that refills at `rate_per_s`
 * tokens a second; a request takes one token or is refused with the time
 * until one is back. The table holds at most `max_keys` buckets, all
 * allocated up front: when it is full, the key seen least recently loses
 * its bucket (it starts over with a full one when it comes back), so memory
 * stays fixed however many addresses a flood comes from.
 *
 * Lookups hash the key with a per-table random seed, so a client cannot
 * choose addresses that collide. Single-threaded, no allocation after
 * ratelimit_new().
 */
#ifndef DISCO_UTIL_RATELIMIT_H
#define DISCO_UTIL_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

/* Longest key: an IPv6 address. */
#define RATELIMIT_MAX_KEY_BYTES 16

typedef struct ratelimit ratelimit_t;

/*
 * A table for up to `max_keys` keys (>= 1); rate_per_s >= 1, burst >= 1.
 * Returns NULL when out of memory or given zeros.
 */
ratelimit_t *ratelimit_new(uint32_t rate_per_s, uint32_t burst, size_t max_keys);
void ratelimit_free(ratelimit_t *rl);

/*
 * Takes one token from the bucket of `key` (key_len <= RATELIMIT_MAX_KEY_BYTES,
 * longer keys are cut) at monotonic time `now_ms`. Returns 0 when allowed,
 * else the milliseconds until a token is back (>= 1); a refused request
 * takes nothing.
 */
uint64_t ratelimit_take(ratelimit_t *rl, const void *key, size_t key_len, uint64_t now_ms);

/* Keys in the table now. */
size_t ratelimit_count(const ratelimit_t *rl);

#endif
