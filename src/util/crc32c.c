/*
 * crc32c.c - CRC-32C; see crc32c.h.
 *
 * x86-64 processors since 2008 compute CRC-32C in hardware (SSE4.2's crc32
 * instruction, 8 bytes at a time); elsewhere a table does one byte per
 * step. Both give the same values: the unit tests check the standard one.
 */
#include "util/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_HW_CRC 1
#endif

#define POLY 0x82f63b78u /* Castagnoli, bit-reversed */

static uint32_t table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static int use_hw;

static void init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[i] = c;
    }
#ifdef HAVE_HW_CRC
    use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_table(uint32_t crc, const unsigned char *p, size_t len)
{
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#ifdef HAVE_HW_CRC
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                         size_t len)
{
    uint64_t c = crc;
    for (; len >= 8; len -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
    }
    crc = (uint32_t)c;
    for (; len; len--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}
#endif

uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&table_once, init);
#ifdef HAVE_HW_CRC
    if (use_hw)
        return ~crc_hw(~crc, data, len);
#endif
    return ~crc_table(~crc, data, len);
}
