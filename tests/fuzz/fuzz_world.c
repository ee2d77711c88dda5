/*
 * fuzz_world.c - one in-memory disco per fuzz input; see fuzz_world.h.
 */
#include "fuzz_world.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/timeutil.h"

/* Loop turns without progress before an exchange counts as settled. */
#define SETTLED_TURNS 3
#define MAX_TURNS 4096

int fuzz_world_init(fuzz_world_t *w, bool server_ticks)
{
    memset(w, 0, sizeof *w);
    w->reg = registry_new(NULL);
    if (!w->reg)
        return -1;
    int64_t now = time_wall_ns();
    reg_result_t res;
    registry_create_token(w->reg, FUZZ_TOKEN, 3, now, &res);
    reg_result_clear(&res);
    reg_ttl_t none = {0};
    registry_create(w->reg, FUZZ_MEMBER1, false, "m1=http://10.0.0.1:2380", false, none, now, &res);
    reg_result_clear(&res);
    registry_create(w->reg, FUZZ_MEMBER2, false, "m2=http://10.0.0.2:2380", false, none, now, &res);
    reg_result_clear(&res);
    api_config_t acfg = {.host_prefix = "http://disco.test",
                         .min_age_ms = 60 * 1000,
                         .gc_every_ms = 1000,
                         .new_rate_per_s = 10,
                         .new_burst = 20};
    w->api = api_new(w->reg, NULL, &acfg);
    if (!w->api) {
        fuzz_world_free(w);
        return -1;
    }
    http_server_config_t scfg = {
        .addr = NULL,
        .wait_timeout_ms = 60 * 1000,
        .max_header_bytes = FUZZ_MAX_HEADER_BYTES,
        .max_body_bytes = FUZZ_MAX_BODY_BYTES,
        .max_conns = FUZZ_MAX_CONNS,
        .handler = api_handle,
        .handler_ctx = w->api,
        .render_error = api_render_error,
        .render_error_ctx = w->api,
        .tick = server_ticks ? api_tick : NULL,
        .tick_ctx = w->api,
        .notify_fd = -1,
    };
    char err[256];
    w->srv = http_server_new(&scfg, err);
    if (!w->srv) {
        fprintf(stderr, "fuzz_world_init: %s\n", err);
        fuzz_world_free(w);
        return -1;
    }
    api_set_server(w->api, w->srv);
    return 0;
}

void fuzz_world_free(fuzz_world_t *w)
{
    http_server_free(w->srv);
    api_free(w->api);
    registry_free(w->reg);
    memset(w, 0, sizeof *w);
}

int fuzz_world_connect(fuzz_world_t *w)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        return -1;
    if (http_server_adopt(w->srv, sv[1]) != 0) { /* it closed sv[1] */
        close(sv[0]);
        return -1;
    }
    return sv[0];
}

bool fuzz_world_exchange(fuzz_world_t *w, int fd, const uint8_t *data, size_t len, bool half_close,
                         buf_t *out)
{
    size_t sent = 0;
    bool shut = false;
    char tmp[16384];
    for (int turn = 0, still = 0; turn < MAX_TURNS && still < SETTLED_TURNS; turn++) {
        bool moved = false;
        if (sent < len) {
            ssize_t n = send(fd, data + sent, len - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
                moved = true;
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                sent = len; /* the server closed; what is left cannot go */
            }
        } else if (half_close && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
            moved = true;
        }
        if (http_server_run_once(w->srv, 0) != 0)
            abort();
        for (;;) {
            ssize_t n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
            if (n > 0) {
                buf_append(out, tmp, (size_t)n);
                moved = true;
            } else if (n == 0) {
                return true;
            } else if (errno == ECONNRESET) {
                return true;
            } else {
                break;
            }
        }
        still = moved ? 0 : still + 1;
    }
    return false;
}

/* Content-Length of a head, or -1 if absent. Aborts on a malformed one. */
static long head_content_length(const char *head, size_t len)
{
    static const char name[] = "\r\ncontent-length:";
    for (size_t i = 0; i + sizeof name - 1 <= len; i++) {
        if (strncasecmp(head + i, name, sizeof name - 1) != 0)
            continue;
        const char *p = head + i + sizeof name - 1;
        while (*p == ' ')
            p++;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0)
            abort();
        return v;
    }
    return -1;
}

static void head_content_type(const char *head, size_t len, char *ct, size_t ct_len)
{
    static const char name[] = "\r\ncontent-type: ";
    ct[0] = '\0';
    for (size_t i = 0; i + sizeof name - 1 <= len; i++) {
        if (strncasecmp(head + i, name, sizeof name - 1) != 0)
            continue;
        const char *p = head + i + sizeof name - 1;
        size_t n = strcspn(p, "\r");
        snprintf(ct, ct_len, "%.*s", (int)n, p);
        return;
    }
}

size_t fuzz_each_answer(const buf_t *out, bool head,
                        void (*fn)(void *ctx, int status, const char *content_type,
                                   const char *body, size_t body_len),
                        void *ctx)
{
    size_t count = 0;
    if (out->len == 0)
        return 0;
    const char *p = out->data, *end = out->data + out->len;
    while (p && p < end) {
        if ((size_t)(end - p) < 12 || memcmp(p, "HTTP/1.1 ", 9) != 0) {
            fprintf(stderr, "not an HTTP/1.1 answer: %.*s\n", (int)(end - p < 80 ? end - p : 80),
                    p);
            abort();
        }
        const char *hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!hend)
            abort(); /* a head cut short: disco writes whole answers */
        int status = atoi(p + 9);
        if (status < 100 || status > 599)
            abort();
        char head_copy[4096];
        size_t hlen = (size_t)(hend - p);
        if (hlen >= sizeof head_copy)
            abort();
        memcpy(head_copy, p, hlen);
        head_copy[hlen] = '\0';
        const char *body = hend + 4;
        if (status == 100) { /* interim: no body, no length */
            p = body;
            continue;
        }
        long cl = head_content_length(head_copy, hlen);
        if (cl < 0)
            abort(); /* every final answer carries a length */
        size_t blen = head ? 0 : (size_t)cl;
        if ((size_t)(end - body) < blen)
            abort();
        char ct[128];
        head_content_type(head_copy, hlen, ct, sizeof ct);
        if (fn)
            fn(ctx, status, ct, body, blen);
        count++;
        p = body + blen;
    }
    return count;
}
