/*
 * test_request.c - server/request.c: the life of a request handle.
 *
 * A handle stays good until its request is answered or its connection
 * ends; afterwards every call with it does nothing (-ESTALE). Every end
 * other than a reply reaches the park owner exactly once. What an answer
 * looks like is decided by the request as it arrived (HEAD, HTTP/1.0), not
 * by whatever the connection parsed since. A client that half-closes gets
 * the answers already owed (held), while a watch it stopped asking for ends.
 *
 * The server runs without a listening socket (http.h's test seam); clients
 * are socketpairs and each loop turn is run by hand.
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/http.h"
#include "server_pair.h"

#define MAX_PARKED 8
/* The wait timeout of the test server: short, so timeouts happen within a
 * few loop turns. */
#define WAIT_MS 20

static const char body[] = "{\"k\":\"v\"}\n";

/* What the park callback does when a wait times out. */
enum on_timeout { TIMEOUT_ANSWER, TIMEOUT_HOLD_AGAIN, TIMEOUT_NOTHING };

static struct {
    enum http_park_kind kind;
    enum on_timeout on_timeout;
    http_req_t parked[MAX_PARKED];
    size_t n_parked;
    size_t ends[3]; /* by enum http_park_end */
    http_req_t last_ended;
} T;

static const http_reply_t answer = {
    .status = 200, .content_type = "application/json", .body = body, .body_len = sizeof body - 1};

static void on_end(http_req_t req, void *ctx, enum http_park_end why)
{
    (void)ctx;
    T.ends[why]++;
    T.last_ended = req;
    if (why == HTTP_PARK_CLOSED) {
        /* the handle is stale already: a reply does nothing */
        assert_int_equal(http_reply(req, &answer), -ESTALE);
        return;
    }
    if (T.on_timeout == TIMEOUT_ANSWER)
        assert_int_equal(http_reply(req, &answer), 0);
    else if (T.on_timeout == TIMEOUT_HOLD_AGAIN)
        assert_int_equal(http_park(req, HTTP_PARK_HOLD, on_end, NULL), 0);
}

static void handler(void *ctx, const http_request_t *req)
{
    (void)ctx;
    if (strcmp(req->path, "/park") == 0) {
        assert_true(T.n_parked < MAX_PARKED);
        T.parked[T.n_parked++] = req->handle;
        assert_int_equal(http_park(req->handle, T.kind, on_end, NULL), 0);
    } else {
        assert_int_equal(http_reply(req->handle, &answer), 0);
        /* answered: the handle is spent */
        assert_int_equal(http_reply(req->handle, &answer), -ESTALE);
        assert_false(http_req_is_live(req->handle));
    }
}

static int setup(void **state)
{
    memset(&T, 0, sizeof T);
    http_server_config_t cfg = {
        .addr = NULL, .wait_timeout_ms = WAIT_MS, .handler = handler, .notify_fd = -1};
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

/* Runs the server until `ms` have passed (loop turns of at most 5 ms). */
static void run_for(http_server_t *srv, int ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        assert_int_equal(http_server_run_once(srv, 5), 0);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
}

/* Reads what the server sent until EOF or nothing more comes; returns
 * whether the server closed the connection. */
static bool read_all(http_server_t *srv, int fd, buf_t *out)
{
    char tmp[4096];
    for (int turn = 0; turn < 50; turn++) {
        assert_int_equal(http_server_run_once(srv, 2), 0);
        ssize_t n;
        while ((n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT)) > 0)
            buf_append(out, tmp, (size_t)n);
        if (n == 0)
            return true;
    }
    return false;
}

static size_t count(buf_t *b, const char *needle)
{
    size_t n = 0;
    for (const char *p = buf_cstr(b); (p = strstr(p, needle)); p++)
        n++;
    return n;
}

/* The client goes away while its request is parked: the owner is told
 * once, and the handle it kept is stale. */
static void test_close_tells_the_owner(void **state)
{
    http_server_t *srv = *state;
    int fd = sp_connect(srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(srv, fd, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n", &out);
    assert_int_equal(T.n_parked, 1);
    assert_true(http_req_is_live(T.parked[0]));
    close(fd);
    run_for(srv, 5);
    assert_int_equal(T.ends[HTTP_PARK_CLOSED], 1);
    assert_false(http_req_is_live(T.parked[0]));
    assert_int_equal(http_reply(T.parked[0], &answer), -ESTALE);
    assert_int_equal(http_park(T.parked[0], HTTP_PARK_HOLD, on_end, NULL), -ESTALE);
    assert_int_equal(http_server_connection_count(srv), 0);
    buf_free(&out);
}

/* A slot reused by a later request does not answer to the old handle. */
static void test_reused_slot_ignores_old_handle(void **state)
{
    http_server_t *srv = *state;
    buf_t out = BUF_INIT;
    int a = sp_connect(srv, 0);
    sp_exchange(srv, a, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n", &out);
    close(a);
    run_for(srv, 5);
    http_req_t old = T.parked[0];
    int b = sp_connect(srv, 0);
    sp_exchange(srv, b, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n", &out);
    assert_int_equal(T.n_parked, 2);
    assert_int_equal(T.parked[1].slot, old.slot); /* the same slot, reused */
    assert_int_equal(http_reply(old, &answer), -ESTALE);
    assert_int_equal(out.len, 0); /* nothing reached the new client */
    assert_int_equal(http_reply(T.parked[1], &answer), 0);
    sp_exchange(srv, b, NULL, &out);
    assert_int_equal(count(&out, "HTTP/1.1 200 OK"), 1);
    close(b);
    buf_free(&out);
}

/*
 * The wait times out and the owner parks the request again to hold its
 * answer (what the api does while a write is not yet durable): the
 * connection stays, and the held answer reaches the client later. Before
 * request handles the server closed the connection under the new owner.
 */
static void test_timeout_then_hold_then_answer(void **state)
{
    http_server_t *srv = *state;
    T.on_timeout = TIMEOUT_HOLD_AGAIN;
    int fd = sp_connect(srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(srv, fd, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n", &out);
    run_for(srv, WAIT_MS + 10);
    assert_true(T.ends[HTTP_PARK_TIMEOUT] >= 1);
    assert_int_equal(T.ends[HTTP_PARK_CLOSED], 0);
    assert_true(http_req_is_live(T.parked[0]));
    assert_int_equal(http_server_connection_count(srv), 1);
    assert_int_equal(http_reply(T.parked[0], &answer), 0);
    assert_false(read_all(srv, fd, &out));
    assert_int_equal(count(&out, "HTTP/1.1 200 OK"), 1);
    close(fd);
    buf_free(&out);
}

/* An owner that neither answers nor parks again on a timeout: the
 * connection is closed, and nobody is told twice. */
static void test_timeout_without_answer_closes(void **state)
{
    http_server_t *srv = *state;
    T.on_timeout = TIMEOUT_NOTHING;
    int fd = sp_connect(srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(srv, fd, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n", &out);
    run_for(srv, WAIT_MS + 10);
    assert_int_equal(T.ends[HTTP_PARK_TIMEOUT], 1);
    assert_int_equal(T.ends[HTTP_PARK_CLOSED], 0);
    assert_true(read_all(srv, fd, &out));
    assert_int_equal(out.len, 0);
    assert_false(http_req_is_live(T.parked[0]));
    close(fd);
    buf_free(&out);
}

/*
 * A parked HEAD answered after a GET was pipelined behind it: the HEAD's
 * answer has no body, the GET's has one. (The shape used to be read from
 * the connection when the answer left.)
 */
static void test_parked_head_answer_has_no_body(void **state)
{
    http_server_t *srv = *state;
    int fd = sp_connect(srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(srv, fd,
                "HEAD /park HTTP/1.1\r\nHost: x\r\n\r\nGET /now HTTP/1.1\r\nHost: x\r\n\r\n", &out);
    assert_int_equal(out.len, 0);
    assert_int_equal(http_reply(T.parked[0], &answer), 0);
    sp_exchange(srv, fd, NULL, &out);
    assert_int_equal(count(&out, "HTTP/1.1 200 OK"), 2);
    assert_int_equal(count(&out, body), 1); /* the GET's only */
    /* and it comes last, after the HEAD's headers and the GET's */
    assert_ptr_equal(strstr(buf_cstr(&out), body), out.data + out.len - (sizeof body - 1));
    close(fd);
    buf_free(&out);
}

/* An HTTP/1.0 keep-alive request answered while parked keeps its shape. */
static void test_parked_http10_keeps_its_shape(void **state)
{
    http_server_t *srv = *state;
    int fd = sp_connect(srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(srv, fd, "GET /park HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &out);
    assert_int_equal(http_reply(T.parked[0], &answer), 0);
    sp_exchange(srv, fd, NULL, &out);
    assert_non_null(strstr(buf_cstr(&out), "Connection: keep-alive\r\n"));
    close(fd);
    buf_free(&out);
}

/* Half-close with a held answer: it is still written, then the server
 * closes; a request pipelined behind it is answered too. */
static void test_half_close_gets_held_answers(void **state)
{
    http_server_t *srv = *state;
    T.kind = HTTP_PARK_HOLD;
    int fd = sp_connect(srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(srv, fd,
                "PUT /park HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
                "GET /now HTTP/1.1\r\nHost: x\r\n\r\n",
                &out);
    shutdown(fd, SHUT_WR);
    run_for(srv, 5);
    assert_int_equal(T.ends[HTTP_PARK_CLOSED], 0);
    assert_int_equal(http_reply(T.parked[0], &answer), 0);
    assert_true(read_all(srv, fd, &out));
    assert_int_equal(count(&out, "HTTP/1.1 200 OK"), 2);
    close(fd);
    buf_free(&out);
}

/* Half-close under a parked watch: the client stopped asking, the watch
 * ends (its owner told once) and the connection closes. */
static void test_half_close_ends_a_watch(void **state)
{
    http_server_t *srv = *state;
    T.kind = HTTP_PARK_WATCH;
    int fd = sp_connect(srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(srv, fd, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n", &out);
    shutdown(fd, SHUT_WR);
    assert_true(read_all(srv, fd, &out));
    assert_int_equal(T.ends[HTTP_PARK_CLOSED], 1);
    assert_int_equal(out.len, 0);
    close(fd);
    buf_free(&out);
}

/* Half-close right after a request answered at once: the answer arrives
 * whole, then EOF. */
static void test_half_close_after_plain_request(void **state)
{
    http_server_t *srv = *state;
    int fd = sp_connect(srv, 0);
    buf_t out = BUF_INIT;
    assert_int_equal(send(fd, "GET /now HTTP/1.1\r\nHost: x\r\n\r\n", 30, 0), 30);
    shutdown(fd, SHUT_WR);
    assert_true(read_all(srv, fd, &out));
    assert_int_equal(count(&out, "HTTP/1.1 200 OK"), 1);
    assert_int_equal(count(&out, body), 1);
    close(fd);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_close_tells_the_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reused_slot_ignores_old_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_then_hold_then_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_without_answer_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parked_head_answer_has_no_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parked_http10_keeps_its_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_close_gets_held_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_close_ends_a_watch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_close_after_plain_request, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
