/*
 * test_api.c - api/api.h: parked watches woken by one change share one
 * rendered answer, every answer waits until the store has made the
 * state it shows durable, and the router's redirect of unclean paths.
 *
 * A whole disco without sockets to the outside: registry, api and the HTTP
 * server through its test seam (socketpairs, loop turns run by hand), over
 * a store whose durable index the test moves itself.
 */
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

#include "api/api.h"
#include "registry/registry.h"
#include "server_pair.h"
#include "store/store.h"
#include "util/timeutil.h"

#define WATCH_TOK                                                                                  \
    "GET /v2/keys/_etcd/registry/tok?recursive=true&wait=true HTTP/1.1\r\nHost: x\r\n\r\n"

/* ---- a store that keeps nothing and is durable when the test says ----- */

typedef struct test_store {
    store_t base;
    uint64_t durable;
} test_store_t;

static int ts_load(store_t *st, const store_replay_sink_t *sink, char *err)
{
    (void)st, (void)sink, (void)err;
    return 0;
}
static int ts_append(store_t *st, const reg_event_t *ev)
{
    (void)st, (void)ev;
    return 0;
}
static int ts_remove_token(store_t *st, const char *name, const uint64_t *indexes, size_t n)
{
    (void)st, (void)name, (void)indexes, (void)n;
    return 0;
}
static reg_event_t *ts_fetch(store_t *st, uint64_t index)
{
    (void)st, (void)index;
    return NULL;
}
static uint64_t ts_durable_index(store_t *st)
{
    return ((test_store_t *)st)->durable;
}
static int ts_notify_fd(store_t *st)
{
    (void)st;
    return -1;
}
static void ts_drain_notify(store_t *st)
{
    (void)st;
}
static bool ts_writable(store_t *st)
{
    (void)st;
    return true;
}
static void ts_stats(store_t *st, store_stats_t *out)
{
    (void)st;
    *out = (store_stats_t){0};
}
static void ts_close(store_t *st)
{
    (void)st;
}

static const struct store_ops test_store_ops = {
    .load = ts_load,
    .append = ts_append,
    .remove_token = ts_remove_token,
    .fetch = ts_fetch,
    .durable_index = ts_durable_index,
    .readable_index = ts_durable_index, /* nothing is ever read back */
    .notify_fd = ts_notify_fd,
    .drain_notify = ts_drain_notify,
    .writable = ts_writable,
    .stats = ts_stats,
    .close = ts_close,
    .name = "test",
};

/* ---- the world ----------------------------------------------------------- */

typedef struct world {
    test_store_t store;
    backend_t *backend; /* over `store` */
    registry_t *reg;
    api_t *api;
    http_server_t *srv;
} world_t;

/* Makes everything written so far durable and lets held answers go. */
static void make_durable(world_t *w)
{
    w->store.durable = registry_index(w->reg);
    api_on_durable(w->api);
}

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    w->store.base.ops = &test_store_ops;
    w->backend = backend_local_new(&w->store.base);
    if (!w->backend)
        return -1;
    w->reg = registry_new_with_backend(w->backend);
    reg_result_t res;
    registry_create_token(w->reg, "tok", 3, time_wall_ns(), &res);
    reg_result_clear(&res);
    registry_create_token(w->reg, "other", 3, time_wall_ns(), &res);
    reg_result_clear(&res);
    api_config_t acfg = {.host_prefix = "http://disco.test"};
    w->api = api_new(w->reg, w->backend, &acfg);
    w->srv = sp_api_server(w->api);
    if (!w->reg || !w->api || !w->srv)
        return -1;
    make_durable(w);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;
    http_server_free(w->srv);
    api_free(w->api);
    registry_free(w->reg);
    backend_close(w->backend);
    free(w);
    return 0;
}

static int open_watch(world_t *w)
{
    int fd = sp_connect(w->srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(w->srv, fd, WATCH_TOK, &out);
    assert_int_equal(out.len, 0); /* parked */
    return fd;
}

/* A PUT of `value` at `key` on its own connection; returns the connection
 * with the answer not yet read. */
static int put(world_t *w, const char *key, const char *value)
{
    char req[512];
    snprintf(req, sizeof req,
             "PUT /v2/keys/_etcd/registry/%s HTTP/1.1\r\nHost: x\r\n"
             "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %zu\r\n\r\n"
             "value=%s",
             key, strlen("value=") + strlen(value), value);
    int fd = sp_connect(w->srv, 0);
    buf_t out = BUF_INIT;
    sp_exchange(w->srv, fd, req, &out);
    assert_int_equal(out.len, 0); /* held until durable */
    return fd;
}

/* The exact answer a watch that began at `etcd_index` gets for the
 * creation of tok/<name> = <value> at `index`. */
static void expected_answer(buf_t *b, uint64_t etcd_index, const char *name, const char *value,
                            uint64_t index)
{
    char body[256];
    int n = snprintf(body, sizeof body,
                     "{\"action\":\"set\",\"node\":{\"key\":\"/_etcd/registry/tok/%s\","
                     "\"value\":\"%s\",\"modifiedIndex\":%llu,\"createdIndex\":%llu}}\n",
                     name, value, (unsigned long long)index, (unsigned long long)index);
    buf_printf(b,
               "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Index: %llu\r\n"
               "Content-Length: %d\r\n\r\n%s",
               (unsigned long long)etcd_index, n, body);
}

static void assert_answer(world_t *w, int fd, const buf_t *want)
{
    buf_t got = BUF_INIT;
    sp_exchange(w->srv, fd, NULL, &got);
    assert_int_equal(got.len, want->len);
    assert_memory_equal(got.data, want->data, want->len);
    buf_free(&got);
}

/* ---- tests --------------------------------------------------------------- */

/* N watchers, one change: nothing leaves before the change is durable,
 * then each watcher gets the same exact bytes, and the writer its 201. */
static void test_woken_watchers_wait_for_durable_then_share(void **state)
{
    world_t *w = *state;
    enum { N = 5 };
    int fds[N];
    uint64_t start = registry_index(w->reg);
    for (int i = 0; i < N; i++)
        fds[i] = open_watch(w);
    int writer = put(w, "tok/m1", "x");
    buf_t none = BUF_INIT;
    for (int i = 0; i < N; i++) {
        sp_exchange(w->srv, fds[i], NULL, &none);
        assert_int_equal(none.len, 0);
    }
    make_durable(w);
    buf_t want = BUF_INIT;
    expected_answer(&want, start, "m1", "x", start + 1);
    for (int i = 0; i < N; i++) {
        assert_answer(w, fds[i], &want);
        close(fds[i]);
    }
    buf_t put_answer = BUF_INIT;
    sp_exchange(w->srv, writer, NULL, &put_answer);
    assert_memory_equal(put_answer.data, "HTTP/1.1 201 Created\r\n", 22);
    close(writer);
    buf_free(&want);
    buf_free(&put_answer);
}

/* Watchers that began at different indexes get the same event with their
 * own X-Etcd-Index. */
static void test_shared_answer_keeps_each_start_index(void **state)
{
    world_t *w = *state;
    uint64_t first_start = registry_index(w->reg);
    int early = open_watch(w);
    close(put(w, "other/m1", "y")); /* another token moves the index */
    make_durable(w);
    uint64_t second_start = registry_index(w->reg);
    int late = open_watch(w);
    int late2 = open_watch(w);
    close(put(w, "tok/m2", "z"));
    make_durable(w);
    buf_t want_early = BUF_INIT, want_late = BUF_INIT;
    expected_answer(&want_early, first_start, "m2", "z", second_start + 1);
    expected_answer(&want_late, second_start, "m2", "z", second_start + 1);
    assert_answer(w, early, &want_early);
    assert_answer(w, late, &want_late);
    assert_answer(w, late2, &want_late);
    close(early);
    close(late);
    close(late2);
    buf_free(&want_early);
    buf_free(&want_late);
}

/* A woken watcher whose client leaves before the commit is dropped; the
 * others still get their answer (the sanitizer build checks for leaks). */
static void test_client_gone_while_held(void **state)
{
    world_t *w = *state;
    uint64_t start = registry_index(w->reg);
    int stays = open_watch(w), leaves = open_watch(w);
    int writer = put(w, "tok/m3", "v");
    close(leaves);
    buf_t none = BUF_INIT;
    sp_exchange(w->srv, stays, NULL, &none); /* the server sees the close */
    assert_int_equal(none.len, 0);
    make_durable(w);
    buf_t want = BUF_INIT;
    expected_answer(&want, start, "m3", "v", start + 1);
    assert_answer(w, stays, &want);
    close(stays);
    close(writer);
    buf_free(&want);
}

/* A watch answered from history (waitIndex in the past) is the same
 * rendering, sent at once when the event is durable. */
static void test_history_answer(void **state)
{
    world_t *w = *state;
    close(put(w, "tok/m4", "h"));
    make_durable(w);
    uint64_t index = registry_index(w->reg);
    char req[256];
    snprintf(req, sizeof req,
             "GET /v2/keys/_etcd/registry/tok/m4?wait=true&waitIndex=%llu HTTP/1.1\r\n"
             "Host: x\r\n\r\n",
             (unsigned long long)index);
    int fd = sp_connect(w->srv, 0);
    buf_t got = BUF_INIT, want = BUF_INIT;
    sp_exchange(w->srv, fd, req, &got);
    expected_answer(&want, index, "m4", "h", index);
    assert_int_equal(got.len, want.len);
    assert_memory_equal(got.data, want.data, want.len);
    close(fd);
    buf_free(&got);
    buf_free(&want);
}

/* One request on its own connection; the whole answer in `got`. */
static void exchange(world_t *w, const char *req, buf_t *got)
{
    int fd = sp_connect(w->srv, 0);
    sp_exchange(w->srv, fd, req, got);
    close(fd);
}

static void assert_bytes(const buf_t *got, const char *want)
{
    assert_int_equal(got->len, strlen(want));
    assert_memory_equal(got->data, want, got->len);
}

/* A doubled slash is etcd's (Go ServeMux's) 301 to the clean path, with
 * Go's escaping: the path escaped, the query as sent but for non-ASCII
 * bytes in Location, HTML-escaped in the body. It writes nothing. */
static void test_empty_segment_redirects(void **state)
{
    world_t *w = *state;
    uint64_t index = registry_index(w->reg);
    buf_t got = BUF_INIT;
    exchange(w, "GET /tok//a%20b!?x=%41&y=\xc3\xa9\"< HTTP/1.1\r\nHost: x\r\n\r\n", &got);
    assert_bytes(&got, "HTTP/1.1 301 Moved Permanently\r\n"
                       "Content-Type: text/html; charset=utf-8\r\n"
                       "Location: /tok/a%20b%21?x=%41&y=%C3%A9\"<\r\n"
                       "Content-Length: 72\r\n\r\n"
                       "<a href=\"/tok/a%20b%21?x=%41&amp;y=\xc3\xa9&#34;&lt;\">"
                       "Moved Permanently</a>.\n\n");
    buf_reset(&got);
    exchange(w,
             "PUT /v2/keys/_etcd/registry/tok//m9 HTTP/1.1\r\nHost: x\r\n"
             "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\n"
             "value=v",
             &got);
    assert_bytes(&got, "HTTP/1.1 301 Moved Permanently\r\n"
                       "Location: /v2/keys/_etcd/registry/tok/m9\r\n"
                       "Content-Length: 0\r\n\r\n");
    assert_int_equal(registry_index(w->reg), index); /* nothing written */
    buf_free(&got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_woken_watchers_wait_for_durable_then_share, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_shared_answer_keeps_each_start_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_gone_while_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_segment_redirects, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
