/*
 * fuzz_http.c - raw bytes from a client, through the real HTTP server
 * (parser, limits, refusals, pipelining, parking, answers held until the
 * store has made a change durable, wait timeouts) and router into the v2
 * and discovery handlers, over the fuzz world's lagging store.
 *
 * The input is what one client sends on one connection, then it shuts its
 * write side: at once when the input's last byte is odd; else once the
 * answers to its complete requests are in, or a bounded wait (a few wait
 * timeouts, while the world writes elsewhere) has passed. So both a
 * half-close while answers are held or parked and a watch that reaches
 * its wait timeout while a write is not yet durable are fuzzed.
 *
 * Checked beyond "no crash, leak or undefined behaviour": whatever comes
 * back is a sequence of well-framed HTTP/1.1 answers, each matched to the
 * request it answers by a reference parse of the input (libhttp-parser,
 * the parser disco uses), and
 *   - an answer to a HEAD carries no body (fuzz_world.h names the one
 *     refusal that may);
 *   - every answer >= 400 is application/json (etcd's JSON error), a
 *     server refusal too, except the answers of /new (its own errors are
 *     text/plain, as discovery.etcd.io's) and of /health and /metrics
 *     (plain text services);
 *   - an answer to an HTTP/1.0 request says "Connection: keep-alive" or
 *     "Connection: close"; one to HTTP/1.1 never says keep-alive;
 *   - unless the input may hold a watch (whose client, once it half-closes,
 *     is gone and needs no answer), every complete request gets its
 *     answer, up to one that says "Connection: close": a half-close does
 *     not lose answers, held ones included.
 */
#include <http_parser.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "fuzz_world.h"

static void fail(const fuzz_request_t *req, const fuzz_answer_t *a, const char *why)
{
    fprintf(stderr, "answer %zu (status %d, %s, Connection \"%s\") to a request %s: %s\n", a->index,
            a->status, a->content_type, a->connection,
            !req                       ? "beyond those the input holds"
            : req->method == HTTP_HEAD ? "with HEAD"
                                       : "of another method",
            why);
    abort();
}

static void check_answer(void *ctx, const fuzz_request_t *req, const fuzz_answer_t *a)
{
    (void)ctx;
    if (a->status >= 400 && strcmp(a->content_type, "application/json") != 0) {
        /* The request's own handler may answer in text on these paths. */
        bool text_ok = req && (req->path == FUZZ_PATH_NEW || req->path == FUZZ_PATH_TEXT) &&
                       strcmp(a->content_type, "text/plain; charset=utf-8") == 0;
        if (!text_ok)
            fail(req, a, "an error that is not etcd JSON");
    }
    if (req && req->headers_done) {
        if (req->http10 && strcasecmp(a->connection, "keep-alive") != 0 &&
            strcasecmp(a->connection, "close") != 0)
            fail(req, a, "an answer to HTTP/1.0 that says neither keep-alive nor close");
        if (!req->http10 && strcasecmp(a->connection, "keep-alive") == 0)
            fail(req, a, "an answer to HTTP/1.1 that says keep-alive");
    }
    if (a->head_refusal && (!req || req->method != HTTP_HEAD))
        abort(); /* only a HEAD's refusal is framed that way */
}

/* Whether some request of the input may be a watch: "wait" as a query or
 * form key, maybe with a letter %-escaped (keys are case-sensitive). */
static bool may_hold_a_watch(const uint8_t *data, size_t size)
{
    static const char *const marks[] = {"wait", "%77", "%61", "%69", "%74"};
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++)
        for (size_t j = 0; j + strlen(marks[i]) <= size; j++)
            if (strncasecmp((const char *)data + j, marks[i], strlen(marks[i])) == 0)
                return true;
    return false;
}

struct walk_end {
    bool last_says_close; /* the last answer seen says "Connection: close" */
};

static void check_and_note(void *ctx, const fuzz_request_t *req, const fuzz_answer_t *a)
{
    struct walk_end *we = ctx;
    check_answer(NULL, req, a);
    we->last_says_close = strcasecmp(a->connection, "close") == 0;
}

/* Whether answers to complete requests are still due. */
static bool answers_due(void *ctx, const buf_t *out)
{
    const fuzz_requests_t *reqs = ctx;
    return fuzz_each_request_answer(out, reqs, true, NULL, NULL) < reqs->n_complete;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Bytes that open with the HTTP/2 client preface are HTTP/2, whose
     * answers are frames: fuzz_h2's input, not this target's. */
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if (size >= sizeof preface - 1 && memcmp(data, preface, sizeof preface - 1) == 0)
        return 0;
    static fuzz_requests_t reqs; /* large: not on the stack */
    fuzz_parse_requests(data, size, &reqs);
    fuzz_world_t w;
    if (fuzz_world_init(&w, true) != 0)
        abort();
    int fd = fuzz_world_connect(&w);
    if (fd < 0)
        abort();
    buf_t out = BUF_INIT;
    bool wait_first = size == 0 || (data[size - 1] & 1) == 0;
    fuzz_world_exchange_until(&w, fd, data, size, true, wait_first ? answers_due : NULL, &reqs,
                              &out);
    if (buf_failed(&out))
        abort();
    struct walk_end we = {false};
    size_t answers = fuzz_each_request_answer(&out, &reqs, false, check_and_note, &we);
    if (answers < reqs.n_complete && !we.last_says_close && !may_hold_a_watch(data, size)) {
        fprintf(stderr, "%zu answers to %zu complete requests, the last not closing\n", answers,
                reqs.n_complete);
        abort();
    }
    buf_free(&out);
    close(fd);
    fuzz_world_free(&w);
    return 0;
}
