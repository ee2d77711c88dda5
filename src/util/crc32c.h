/*
 * crc32c.h - CRC-32C (Castagnoli), the checksum that tells a complete
 * write-ahead log frame from a torn or stale one.
 */
#ifndef DISCO_UTIL_CRC32C_H
#define DISCO_UTIL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues the checksum `crc` (0 to start) over `len` bytes at `data`. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
