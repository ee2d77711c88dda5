/*
 * test_http.c - server/http.h: answers prepared once for many connections
 * (http_prepare, http_reply_prepared) leave as exactly the bytes
 * http_reply would write, in every request shape, from parked and
 * unparked requests, also when the socket takes only part of them.
 *
 * The server runs without a listening socket, through its test seam:
 * clients are socketpairs, and each loop turn is run by hand.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/http.h"
#include "server_pair.h"

#define MAX_PARKED 8

static const char json_body[] = "{\"action\":\"set\",\"node\":{\"key\":\"/k\",\"value\":\"v\"}}\n";

/* What the handler does with each request. */
enum answer_mode { ANSWER_REPLY, ANSWER_PREPARED };

static struct {
    enum answer_mode mode;
    http_reply_t reply;            /* the answer to "/now" */
    http_req_t parked[MAX_PARKED]; /* requests to "/park", in arrival order */
    size_t n_parked;
    size_t park_ends;
} T;

static void on_park_end(http_req_t c, void *ctx, enum http_park_end why)
{
    (void)c;
    (void)ctx;
    (void)why;
    T.park_ends++;
}

static void answer(http_req_t c, enum answer_mode mode)
{
    if (mode == ANSWER_REPLY) {
        http_reply(c, &T.reply);
        return;
    }
    http_prepared_t *p = http_prepare(&T.reply);
    assert_non_null(p);
    http_reply_prepared(c, p);
    http_prepared_unref(p); /* whatever was not sent must have been copied */
}

static void handler(void *ctx, const http_request_t *req)
{
    (void)ctx;
    if (strcmp(req->path, "/park") == 0) {
        assert_true(T.n_parked < MAX_PARKED);
        T.parked[T.n_parked++] = req->handle;
        http_park(req->handle, HTTP_PARK_WATCH, on_park_end, NULL);
    } else {
        answer(req->handle, T.mode);
    }
}

static int setup(void **state)
{
    memset(&T, 0, sizeof T);
    T.reply = (http_reply_t){.status = 200,
                             .content_type = "application/json",
                             .has_etcd_index = true,
                             .etcd_index = 42,
                             .body = json_body,
                             .body_len = sizeof json_body - 1};
    http_server_config_t cfg = {
        .addr = NULL, .wait_timeout_ms = 60 * 1000, .handler = handler, .notify_fd = -1};
    char err[256];
    http_server_t *srv = http_server_new(&cfg, err);
    if (!srv)
        return -1;
    *state = srv;
    return 0;
}

static int teardown(void **state)
{
    http_server_free(*state);
    return 0;
}

/* What the server answers `req` on a fresh connection in `mode`. */
static void answer_of(http_server_t *srv, const char *req, enum answer_mode mode, buf_t *out)
{
    T.mode = mode;
    int fd = sp_connect(srv, 0);
    sp_exchange(srv, fd, req, out);
    close(fd);
}

static void assert_same_bytes(const buf_t *a, const buf_t *b)
{
    assert_true(a->len > 0);
    assert_int_equal(a->len, b->len);
    assert_memory_equal(a->data, b->data, a->len);
}

static const char *const shapes[] = {
    "GET /now HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /now HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "GET /now HTTP/1.0\r\n\r\n",
    "GET /now HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "HEAD /now HTTP/1.1\r\nHost: x\r\n\r\n",
    /* two pipelined: both answers leave in one write */
    "GET /now HTTP/1.1\r\nHost: x\r\n\r\nGET /now HTTP/1.1\r\nHost: x\r\n\r\n",
};

/* An unparked request: the prepared answer is what http_reply writes. */
static void test_prepared_same_bytes_as_reply(void **state)
{
    http_server_t *srv = *state;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        buf_t want = BUF_INIT, got = BUF_INIT;
        answer_of(srv, shapes[i], ANSWER_REPLY, &want);
        answer_of(srv, shapes[i], ANSWER_PREPARED, &got);
        assert_same_bytes(&want, &got);
        buf_free(&want);
        buf_free(&got);
    }
}

/* Extra headers travel with a prepared answer, copied. */
static void test_prepared_keeps_extra_headers(void **state)
{
    http_server_t *srv = *state;
    char headers[] = "Retry-After: 5\r\n";
    T.reply.extra_headers = headers;
    buf_t want = BUF_INIT, got = BUF_INIT;
    answer_of(srv, shapes[0], ANSWER_REPLY, &want);
    T.mode = ANSWER_PREPARED;
    http_prepared_t *p = http_prepare(&T.reply);
    assert_non_null(p);
    memset(headers, 'x', sizeof headers - 1); /* the caller's copy is gone */
    int fd = sp_connect(srv, 0);
    sp_exchange(srv, fd, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n", &got);
    assert_int_equal(got.len, 0);
    http_reply_prepared(T.parked[0], p);
    http_prepared_unref(p);
    sp_exchange(srv, fd, NULL, &got);
    assert_same_bytes(&want, &got);
    assert_non_null(strstr(got.data, "Retry-After: 5\r\n"));
    close(fd);
    buf_free(&want);
    buf_free(&got);
}

/*
 * One prepared answer wakes several parked requests of different shapes:
 * each gets the bytes http_reply would have written to it, and a request
 * pipelined behind a parked one is answered after it.
 */
static void test_prepared_wakes_parked(void **state)
{
    http_server_t *srv = *state;
    /* each request, and the same shape answered at once by http_reply */
    static const char *const parked[][2] = {
        {"GET /park HTTP/1.1\r\nHost: x\r\n\r\n", "GET /now HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"GET /park HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         "GET /now HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"},
        {"GET /park HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
         "GET /now HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"},
        {"GET /park HTTP/1.1\r\nHost: x\r\n\r\nGET /now HTTP/1.1\r\nHost: x\r\n\r\n",
         "GET /now HTTP/1.1\r\nHost: x\r\n\r\nGET /now HTTP/1.1\r\nHost: x\r\n\r\n"},
    };
    enum { N = sizeof parked / sizeof parked[0] };
    buf_t want[N], got[N];
    int fds[N];
    for (size_t i = 0; i < N; i++) {
        buf_init(&want[i]);
        buf_init(&got[i]);
        answer_of(srv, parked[i][1], ANSWER_REPLY, &want[i]);
    }
    T.mode = ANSWER_REPLY; /* for the pipelined "/now" */
    for (size_t i = 0; i < N; i++) {
        fds[i] = sp_connect(srv, 0);
        sp_exchange(srv, fds[i], parked[i][0], &got[i]);
        assert_int_equal(got[i].len, 0);
    }
    assert_int_equal(T.n_parked, N);
    http_prepared_t *p = http_prepare(&T.reply);
    assert_non_null(p);
    for (size_t i = 0; i < N; i++)
        http_reply_prepared(T.parked[i], p);
    http_prepared_unref(p);
    for (size_t i = 0; i < N; i++) {
        sp_exchange(srv, fds[i], NULL, &got[i]);
        assert_same_bytes(&want[i], &got[i]);
        close(fds[i]);
        buf_free(&want[i]);
        buf_free(&got[i]);
    }
    assert_int_equal(T.park_ends, 0); /* answered, not ended otherwise */
}

/* A socket that takes only part of a shared answer gets the rest later,
 * from a copy: the shared bytes are freed right after the call. */
static void test_prepared_partial_write(void **state)
{
    http_server_t *srv = *state;
    size_t big = 512 * 1024;
    char *body = malloc(big);
    assert_non_null(body);
    for (size_t i = 0; i < big; i++)
        body[i] = (char)('a' + i % 26);
    T.reply.body = body;
    T.reply.body_len = big;
    buf_t want = BUF_INIT, got = BUF_INIT;
    answer_of(srv, shapes[0], ANSWER_REPLY, &want);
    assert_true(want.len > big);

    int fd = sp_connect(srv, 4096);
    sp_exchange(srv, fd, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n", &got);
    http_prepared_t *p = http_prepare(&T.reply);
    assert_non_null(p);
    http_reply_prepared(T.parked[0], p);
    http_prepared_unref(p);
    free(body);
    sp_exchange(srv, fd, NULL, &got);
    assert_same_bytes(&want, &got);
    close(fd);
    buf_free(&want);
    buf_free(&got);
}

/* References: the last unref frees (the sanitizer build checks leaks). */
static void test_prepared_references(void **state)
{
    (void)state;
    http_reply_t r = {.status = 404, .body = "", .body_len = 0};
    http_prepared_t *p = http_prepare(&r);
    assert_non_null(p);
    assert_ptr_equal(http_prepared_ref(p), p);
    assert_int_equal(http_prepared_reply(p)->status, 404);
    assert_null(http_prepared_reply(p)->content_type);
    http_prepared_unref(p);
    http_prepared_unref(p);
    http_prepared_unref(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_prepared_same_bytes_as_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prepared_keeps_extra_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prepared_wakes_parked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prepared_partial_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prepared_references, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
