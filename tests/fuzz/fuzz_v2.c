/*
 * fuzz_v2.c - sequences of well-formed requests on the etcd v2 keys and
 * discovery surfaces, end to end (server, router, v2 parameter parsing,
 * registry, watches, TTL expiry, token sweeps) on a registry over a
 * lagging in-memory store (fuzz_world.c) that starts with token "tok" and
 * two members.
 *
 * Where fuzz_http explores HTTP syntax, this target spends its inputs on
 * meaning: the input is up to MAX_RECORDS records separated by NUL bytes;
 * each record is one request on its own connection (kept open, so a
 * parked watch can be woken by a later write or expiry):
 *   byte 0: bits 0-2 the method and a parameter (see kinds[]), bits 3-4
 *           the surface (prefixes[]), bits 5-7 how far the clock jumps
 *           after it (jumps_s[]), driving TTL expiry and token sweeps;
 *   then "path\nquery\nbody": bytes the URL cannot carry are %-escaped;
 *           '%' itself is kept, so the fuzzer can write its own escapes.
 * Checked: every answer frames correctly, and on the discovery surfaces
 * (everything but bare paths) every answer with a body is one etcd JSON
 * object and a newline, never plain text.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_world.h"
#include "util/timeutil.h"

#define MAX_RECORDS 24

static const struct {
    const char *method;
    const char *query; /* appended to the fuzzed query */
} kinds[8] = {{"GET", ""},
              {"PUT", ""},
              {"POST", ""},
              {"DELETE", ""},
              {"HEAD", ""},
              {"GET", "wait=true"},
              {"PUT", "prevExist=false"},
              {"GET", "recursive=true&wait=true"}};
static const char *const prefixes[4] = {"/v2/keys/_etcd/registry/" FUZZ_TOKEN "/",
                                        "/" FUZZ_TOKEN "/", "/v2/keys/", "/"};
static const int64_t jumps_s[8] = {0, 0, 0, 1, 5, 30, 120, 4000};

typedef struct conn {
    int fd;
    bool head, json_surface;
    buf_t out;
} conn_t;

/* Percent-escapes what a request target cannot carry raw. */
static void put_url_bytes(buf_t *b, const uint8_t *s, size_t len, bool in_query)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (c <= 0x20 || c >= 0x7f || c == '#' || (!in_query && c == '?')) {
            buf_putc(b, '%');
            buf_putc(b, hex[c >> 4]);
            buf_putc(b, hex[c & 15]);
        } else {
            buf_putc(b, (char)c);
        }
    }
}

static const uint8_t *field(const uint8_t **p, const uint8_t *end, size_t *len)
{
    const uint8_t *start = *p, *nl = memchr(start, '\n', (size_t)(end - start));
    const uint8_t *stop = nl ? nl : end;
    *len = (size_t)(stop - start);
    *p = nl ? nl + 1 : end;
    return start;
}

static void check_json_answer(void *ctx, int status, const char *content_type, const char *body,
                              size_t body_len)
{
    (void)ctx;
    if (body_len == 0)
        return; /* "nothing yet" after a wait, a HEAD, a redirect of a write */
    static const char link[] = "<a href=\"", tail[] = "\">Moved Permanently</a>.\n\n";
    if (status == 301) {
        /* A path with an empty segment: Go's redirect page, as etcd sends */
        if (strcmp(content_type, "text/html; charset=utf-8") != 0 ||
            body_len < sizeof link + sizeof tail || memcmp(body, link, sizeof link - 1) != 0 ||
            memcmp(body + body_len - (sizeof tail - 1), tail, sizeof tail - 1) != 0) {
            fprintf(stderr, "not a redirect page (%s): %.*s\n", content_type, (int)body_len, body);
            abort();
        }
        return;
    }
    if (strcmp(content_type, "application/json") != 0 || body[0] != '{' || body_len < 3 ||
        memcmp(body + body_len - 2, "}\n", 2) != 0) {
        fprintf(stderr, "not etcd JSON (%s): %.*s\n", content_type, (int)body_len, body);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_world_t w;
    if (fuzz_world_init(&w, false) != 0)
        abort();
    conn_t conns[MAX_RECORDS];
    size_t n_conns = 0;
    int64_t offset_ns = 0;
    uint64_t last_index = registry_index(w.reg);
    const uint8_t *p = data, *end = data + size;
    while (p < end && n_conns < MAX_RECORDS) {
        const uint8_t *nul = memchr(p, 0, (size_t)(end - p));
        const uint8_t *rec_end = nul ? nul : end;
        const uint8_t *r = p;
        p = nul ? nul + 1 : end;
        if (r == rec_end)
            continue;
        uint8_t ctl = *r++;
        size_t path_len, query_len, body_len;
        const uint8_t *path = field(&r, rec_end, &path_len);
        const uint8_t *query = field(&r, rec_end, &query_len);
        const uint8_t *body = r;
        body_len = (size_t)(rec_end - r);
        int kind = ctl & 7, surface = (ctl >> 3) & 3;

        buf_t req = BUF_INIT;
        buf_puts(&req, kinds[kind].method);
        buf_putc(&req, ' ');
        buf_puts(&req, prefixes[surface]);
        put_url_bytes(&req, path, path_len, false);
        if (query_len || *kinds[kind].query) {
            buf_putc(&req, '?');
            put_url_bytes(&req, query, query_len, true);
            if (query_len && *kinds[kind].query)
                buf_putc(&req, '&');
            buf_puts(&req, kinds[kind].query);
        }
        buf_printf(&req,
                   " HTTP/1.1\r\nHost: disco.test\r\n"
                   "Content-Type: application/x-www-form-urlencoded\r\n"
                   "Content-Length: %zu\r\n\r\n",
                   body_len);
        buf_append(&req, body, body_len);
        if (buf_failed(&req))
            abort();

        conn_t *c = &conns[n_conns];
        c->fd = fuzz_world_connect(&w);
        if (c->fd < 0)
            abort();
        c->head = kind == 4;
        c->json_surface = surface != 3;
        buf_init(&c->out);
        n_conns++;
        fuzz_world_exchange(&w, c->fd, (const uint8_t *)req.data, req.len, false, &c->out);
        buf_free(&req);

        offset_ns += jumps_s[ctl >> 5] * NS_PER_SEC;
        if (offset_ns) {
            api_tick(w.api, time_wall_ns() + offset_ns);
            http_server_run_once(w.srv, 0); /* write what expiry woke */
        }
        uint64_t index = registry_index(w.reg);
        if (index < last_index)
            abort(); /* the global index never goes back */
        last_index = index;
    }
    /* Collect what parked requests got later, then check every answer. */
    for (size_t i = 0; i < n_conns; i++) {
        fuzz_world_exchange(&w, conns[i].fd, NULL, 0, false, &conns[i].out);
        fuzz_each_answer(&conns[i].out, conns[i].head,
                         conns[i].json_surface ? check_json_answer : NULL, NULL);
        buf_free(&conns[i].out);
        close(conns[i].fd);
    }
    fuzz_world_free(&w);
    return 0;
}
