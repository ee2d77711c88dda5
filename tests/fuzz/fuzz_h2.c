/*
 * fuzz_h2.c - raw bytes of an HTTP/2 (h2c) client, through the real
 * server (preface sniff, nghttp2 driven by the loop, streams as request
 * slots, streaming requests) and router into the v3 gRPC calls (Range,
 * Put, Watch streams with watches parked in the registry, Authenticate,
 * unknown methods) and the v2 routes, over the fuzz world's store whose
 * durable index lags (answers and watch messages held).
 *
 * The input is what one client sends after the client preface (added
 * here unless the input starts with it); the client then shuts its write
 * side once nothing moves, so streams still open when the connection
 * ends are ended by the server (every owner told once; the sanitizers and
 * the leak checker see the rest).
 *
 * Checked beyond "no crash, leak or undefined behaviour": what comes back
 * is a sequence of whole HTTP/2 frames (9-byte header, at most the default
 * 16384-byte frame size, no frame cut short), starting with the server's
 * SETTINGS.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_world.h"

#define PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define PREFACE_BYTES 24
#define FRAME_HEADER_BYTES 9
#define DEFAULT_MAX_FRAME_BYTES 16384
#define FRAME_SETTINGS 0x4

static void check_frames(const buf_t *out)
{
    const uint8_t *p = (const uint8_t *)out->data;
    size_t left = out->len, n = 0;
    while (left > 0) {
        if (left < FRAME_HEADER_BYTES) {
            fprintf(stderr, "a frame header cut short after %zu frames\n", n);
            abort();
        }
        size_t len = (size_t)p[0] << 16 | (size_t)p[1] << 8 | p[2];
        if (n == 0 && p[3] != FRAME_SETTINGS) {
            fprintf(stderr, "the server's first frame is type %u, not SETTINGS\n", p[3]);
            abort();
        }
        if (len > DEFAULT_MAX_FRAME_BYTES || left - FRAME_HEADER_BYTES < len) {
            fprintf(stderr, "frame %zu: %zu bytes of payload, %zu left\n", n, len,
                    left - FRAME_HEADER_BYTES);
            abort();
        }
        p += FRAME_HEADER_BYTES + len;
        left -= FRAME_HEADER_BYTES + len;
        n++;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool has_preface = size >= PREFACE_BYTES && memcmp(data, PREFACE, PREFACE_BYTES) == 0;
    uint8_t *in = malloc(size + PREFACE_BYTES);
    if (!in)
        abort();
    size_t len = 0;
    if (!has_preface) {
        memcpy(in, PREFACE, PREFACE_BYTES);
        len = PREFACE_BYTES;
    }
    if (size)
        memcpy(in + len, data, size);
    len += size;
    fuzz_world_t w;
    if (fuzz_world_init(&w, true) != 0)
        abort();
    int fd = fuzz_world_connect(&w);
    if (fd < 0)
        abort();
    buf_t out = BUF_INIT;
    fuzz_world_exchange(&w, fd, in, len, true, &out);
    if (buf_failed(&out))
        abort();
    check_frames(&out);
    buf_free(&out);
    free(in);
    close(fd);
    fuzz_world_free(&w);
    return 0;
}
