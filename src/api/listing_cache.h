/*
 * listing_cache.h - rendered GET answers kept until their token changes.
 *
 * What a booting member polls (its token's listing) is the same bytes until
 * the token changes, so it is rendered once and served from here. An entry
 * is found by the node it shows, the variant of the answer (recursive,
 * sorted) and the node's stamp from registry_get: a changed token has a new
 * stamp, so a stale entry is never matched, and no one needs to tell the
 * cache about changes. The node pointer is only compared, never followed: a
 * freed node's address reused by a new node comes with a new stamp.
 *
 * The cache has a fixed number of slots (a new entry replaces whatever held
 * its slot) and keeps only answers up to LISTING_CACHE_MAX_BODY_BYTES, so its
 * memory is bounded: LISTING_CACHE_SLOTS * LISTING_CACHE_MAX_BODY_BYTES at
 * worst, a few hundred KiB for 3-member listings.
 *
 * Only answers that depend on nothing but the tree may be stored: not one
 * that shows a TTL (its seconds left change with the clock).
 */
#ifndef DISCO_API_LISTING_CACHE_H
#define DISCO_API_LISTING_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Slots: a power of two. Tokens polled at the same time fit many times. */
#define LISTING_CACHE_SLOTS 512
/* Longer answers (a token with hundreds of members) are rendered each time. */
#define LISTING_CACHE_MAX_BODY_BYTES (8 * 1024)

typedef struct listing_cache listing_cache_t;

/* Returns NULL when out of memory. */
listing_cache_t *listing_cache_new(void);
void listing_cache_free(listing_cache_t *lc);

/*
 * The stored answer for (`node`, `variant`) if it was stored with `stamp`:
 * sets *data (valid until the next listing_cache_store) and *len and returns
 * true. A stamp of 0 never matches.
 */
bool listing_cache_find(const listing_cache_t *lc, const void *node, unsigned variant,
                        uint64_t stamp, const char **data, size_t *len);

/*
 * Stores a copy of an answer for (`node`, `variant`) at `stamp`, replacing
 * what its slot held. Does nothing for stamp 0, an answer over
 * LISTING_CACHE_MAX_BODY_BYTES, or when out of memory (the slot is then
 * left empty): the cache is an optimisation, never needed for an answer.
 */
void listing_cache_store(listing_cache_t *lc, const void *node, unsigned variant, uint64_t stamp,
                         const char *data, size_t len);

#endif
