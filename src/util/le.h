/*
 * le.h - little-endian integers in byte strings: the on-disk formats (the
 * codec's records, the write-ahead log's frames and entries) all use them,
 * whatever the host's byte order.
 */
#ifndef DISCO_UTIL_LE_H
#define DISCO_UTIL_LE_H

#include <stdint.h>

/* Stores the low `bytes` (1..8) bytes of `v` at p, least significant first. */
static inline void le_store(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Reads `bytes` (1..8) bytes at p, least significant first. */
static inline uint64_t le_load(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

#endif
