/*
 * histogram.h - a latency histogram with fixed buckets, written by one
 * thread and read by any, without a lock.
 *
 * Made for two hot paths: the event loop timing each answer, and the
 * store's writer thread timing each log write and checkpoint. Each has
 * exactly one writer, so an observation is a relaxed load and store of two
 * counters (no locked instruction); a reader on another thread (/metrics)
 * loads them relaxed and may see an observation half made, which a scrape
 * cannot tell from one made a moment later. Buckets are Prometheus' `le`
 * (less or equal) bounds in nanoseconds, shared by every histogram so they
 * can be compared and summed.
 */
#ifndef DISCO_UTIL_HISTOGRAM_H
#define DISCO_UTIL_HISTOGRAM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* 100 us to 10 s: an answer from memory takes tens of microseconds, one
 * held for a group commit about a millisecond, a sync on a slow disk tens
 * of milliseconds; past 10 s something is wrong and +Inf says so. */
#define HISTOGRAM_BOUNDS 16
static const uint64_t histogram_bounds_ns[HISTOGRAM_BOUNDS] = {
    100000ULL,     250000ULL,     500000ULL,     1000000ULL,     2500000ULL,   5000000ULL,
    10000000ULL,   25000000ULL,   50000000ULL,   100000000ULL,   250000000ULL, 500000000ULL,
    1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL,
};

typedef struct histogram {
    /* bucket[i]: observations in (bounds[i-1], bounds[i]]; the last one,
     * bucket[HISTOGRAM_BOUNDS], those above every bound (not cumulative:
     * the renderer sums). */
    _Atomic uint64_t bucket[HISTOGRAM_BOUNDS + 1];
    _Atomic uint64_t sum_ns;
} histogram_t;

/* Records one duration. Only the histogram's one writer thread may call it. */
static inline void histogram_observe(histogram_t *h, uint64_t ns)
{
    size_t i = 0;
    while (i < HISTOGRAM_BOUNDS && ns > histogram_bounds_ns[i])
        i++;
    /* Single writer: load + store is an increment nobody can interleave. */
    atomic_store_explicit(&h->bucket[i],
                          atomic_load_explicit(&h->bucket[i], memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&h->sum_ns, atomic_load_explicit(&h->sum_ns, memory_order_relaxed) + ns,
                          memory_order_relaxed);
}

/* The monotonic clock in nanoseconds (vDSO: no system call). */
static inline uint64_t histogram_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

#endif
