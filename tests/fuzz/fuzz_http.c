/*
 * fuzz_http.c - raw bytes from a client, through the real HTTP server
 * (parser, limits, refusals, pipelining, parking) and router into the v2
 * and discovery handlers, on an in-memory registry.
 *
 * The input is what one client sends on one connection, then it shuts
 * its write side. Checked beyond "no crash, leak or undefined behaviour":
 * whatever comes back is a sequence of well-framed HTTP/1.1 answers
 * (when the input holds no HEAD, whose answers carry no body), and a
 * refusal on the discovery paths is never plain text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_world.h"

static void check_answer(void *ctx, int status, const char *content_type, const char *body,
                         size_t body_len)
{
    (void)ctx;
    (void)body;
    (void)body_len;
    /* /new answers its own errors in text; everything else errs in JSON.
     * A server refusal (the request never reached a handler) is JSON too. */
    if (status >= 400 && strcmp(content_type, "application/json") != 0 &&
        strcmp(content_type, "text/plain; charset=utf-8") != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_world_t w;
    if (fuzz_world_init(&w, true) != 0)
        abort();
    int fd = fuzz_world_connect(&w);
    if (fd < 0)
        abort();
    buf_t out = BUF_INIT;
    fuzz_world_exchange(&w, fd, data, size, true, &out);
    if (buf_failed(&out))
        abort();
    if (out.len && memcmp(out.data, "HTTP/1.1 ", out.len < 9 ? out.len : 9) != 0)
        abort();
    if (!memmem(data, size, "HEAD", 4))
        fuzz_each_answer(&out, false, check_answer, NULL);
    buf_free(&out);
    close(fd);
    fuzz_world_free(&w);
    return 0;
}
