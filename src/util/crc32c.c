/*
 * crc32c.c - table-driven CRC-32C; see crc32c.h.
 *
 * One table lookup per byte is plenty here: a log frame is a few KiB and
 * the fdatasync that follows it costs a hundred times more.
 */
#include "util/crc32c.h"

#include <pthread.h>

#define POLY 0x82f63b78u /* Castagnoli, bit-reversed */

static uint32_t table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void build_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[i] = c;
    }
}

uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&table_once, build_table);
    const unsigned char *p = data;
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}
