/*
 * test_listing_cache.c - api/listing_cache.h: the slots themselves, then the
 * cache as the v2 keys handler uses it, through the real HTTP server and
 * api on socketpairs: after any change in a token, a GET must answer
 * exactly what a fresh render of the tree gives, never the bytes kept from
 * before.
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

#include "api/api.h"
#include "api/listing_cache.h"
#include "api/v2json.h"
#include "registry/registry.h"
#include "server/http.h"
#include "server_pair.h"
#include "util/buf.h"
#include "util/timeutil.h"

/* ---- the slots ----------------------------------------------------------- */

static void expect_found(const listing_cache_t *lc, const void *node, unsigned variant,
                         uint64_t stamp, const char *want)
{
    const char *data = NULL;
    size_t len = 0;
    assert_true(listing_cache_find(lc, node, variant, stamp, &data, &len));
    assert_int_equal(len, strlen(want));
    assert_memory_equal(data, want, len);
}

static void expect_not_found(const listing_cache_t *lc, const void *node, unsigned variant,
                             uint64_t stamp)
{
    const char *data = NULL;
    size_t len = 0;
    assert_false(listing_cache_find(lc, node, variant, stamp, &data, &len));
}

static void test_find_needs_node_variant_and_stamp(void **state)
{
    (void)state;
    listing_cache_t *lc = listing_cache_new();
    assert_non_null(lc);
    static char node_a[16], node_b[16];
    expect_not_found(lc, node_a, 0, 5); /* empty */
    listing_cache_store(lc, node_a, 0, 5, "answer", 6);
    expect_found(lc, node_a, 0, 5, "answer");
    expect_not_found(lc, node_a, 0, 6); /* the token changed */
    expect_not_found(lc, node_a, 0, 4);
    expect_not_found(lc, node_a, 1, 5); /* another variant (recursive) */
    expect_not_found(lc, node_b, 0, 5); /* another node */
    /* A newer rendering replaces the old one. */
    listing_cache_store(lc, node_a, 0, 6, "newer answer", 12);
    expect_found(lc, node_a, 0, 6, "newer answer");
    expect_not_found(lc, node_a, 0, 5);
    listing_cache_free(lc);
}

static void test_stamp_zero_and_big_answers_are_not_kept(void **state)
{
    (void)state;
    listing_cache_t *lc = listing_cache_new();
    assert_non_null(lc);
    static char node[16];
    listing_cache_store(lc, node, 0, 0, "x", 1);
    expect_not_found(lc, node, 0, 0);
    char *big = malloc(LISTING_CACHE_MAX_BODY_BYTES + 1);
    assert_non_null(big);
    memset(big, 'b', LISTING_CACHE_MAX_BODY_BYTES + 1);
    listing_cache_store(lc, node, 0, 7, big, LISTING_CACHE_MAX_BODY_BYTES + 1);
    expect_not_found(lc, node, 0, 7);
    listing_cache_store(lc, node, 0, 7, big, LISTING_CACHE_MAX_BODY_BYTES);
    const char *data;
    size_t len;
    assert_true(listing_cache_find(lc, node, 0, 7, &data, &len));
    assert_int_equal(len, LISTING_CACHE_MAX_BODY_BYTES);
    free(big);
    listing_cache_free(lc);
}

/* Many nodes share the slots: whatever a lookup finds is what was stored
 * for exactly that node, variant and stamp. */
static void test_many_nodes_never_mix(void **state)
{
    (void)state;
    listing_cache_t *lc = listing_cache_new();
    assert_non_null(lc);
    enum { NODES = 4 * LISTING_CACHE_SLOTS };
    char *nodes = calloc(NODES, 16);
    assert_non_null(nodes);
    char text[32];
    for (size_t i = 0; i < NODES; i++) {
        for (unsigned v = 0; v < 4; v++) {
            int n = snprintf(text, sizeof text, "%zu/%u", i, v);
            listing_cache_store(lc, nodes + 16 * i, v, i + 1, text, (size_t)n);
        }
    }
    size_t hits = 0;
    for (size_t i = 0; i < NODES; i++) {
        for (unsigned v = 0; v < 4; v++) {
            const char *data;
            size_t len;
            if (!listing_cache_find(lc, nodes + 16 * i, v, i + 1, &data, &len))
                continue;
            int n = snprintf(text, sizeof text, "%zu/%u", i, v);
            assert_int_equal(len, (size_t)n);
            assert_memory_equal(data, text, len);
            hits++;
        }
    }
    assert_true(hits > 0 && hits <= LISTING_CACHE_SLOTS);
    free(nodes);
    listing_cache_free(lc);
}

/* ---- through the server ------------------------------------------------- */

#define TOKEN REGISTRY_PREFIX "/tok"
#define LISTING "/v2/keys/_etcd/registry/tok?quorum=false&recursive=false&sorted=false"

typedef struct world {
    registry_t *reg;
    api_t *api;
    http_server_t *srv;
    int fd; /* the client's end */
} world_t;

static int setup_world(void **state)
{
    world_t *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    *state = w;
    w->fd = -1;
    w->reg = registry_new(NULL);
    if (!w->reg)
        return -1;
    reg_result_t r;
    registry_create_token(w->reg, "tok", 3, time_wall_ns(), &r);
    reg_result_clear(&r);
    api_config_t acfg = {.host_prefix = "http://disco.test"};
    w->api = api_new(w->reg, NULL, &acfg);
    if (!w->api)
        return -1;
    w->srv = sp_api_server(w->api);
    if (!w->srv)
        return -1;
    w->fd = sp_connect(w->srv, 0);
    return 0;
}

static int teardown_world(void **state)
{
    world_t *w = *state;
    if (!w)
        return 0;
    if (w->fd >= 0)
        close(w->fd);
    http_server_free(w->srv);
    api_free(w->api);
    registry_free(w->reg);
    free(w);
    return 0;
}

/* Sends one request on the kept-alive connection and returns the body of
 * its answer (in `body`), checking the status. */
static void exchange(world_t *w, const char *method, const char *target, const char *form,
                     int want_status, buf_t *body)
{
    char req[1024];
    int n = form ? snprintf(req, sizeof req,
                            "%s %s HTTP/1.1\r\nHost: t\r\nContent-Type: "
                            "application/x-www-form-urlencoded\r\nContent-Length: %zu\r\n\r\n%s",
                            method, target, strlen(form), form)
                 : snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: t\r\n\r\n", method, target);
    assert_true(n > 0 && (size_t)n < sizeof req);
    buf_t in = BUF_INIT;
    sp_exchange(w->srv, w->fd, req, &in);
    const char *text = buf_cstr(&in);
    const char *end = strstr(text, "\r\n\r\n");
    const char *cl = strstr(text, "Content-Length: ");
    if (!end || !cl || cl > end)
        fail_msg("%s %s: no complete answer: %s", method, target, text);
    size_t blen = strtoul(cl + 16, NULL, 10);
    size_t head = (size_t)(end + 4 - text);
    assert_int_equal(in.len, head + blen); /* one answer, nothing more */
    int status = atoi(text + 9);
    if (status != want_status)
        fail_msg("%s %s: want %d, got %d: %s", method, target, want_status, status, text);
    buf_reset(body);
    buf_append(body, end + 4, blen);
    buf_free(&in);
}

/* The listing a fresh render of the tree gives right now. */
static void fresh_listing(world_t *w, const char *key, bool recursive, bool sorted, buf_t *out)
{
    reg_result_t r;
    registry_get(w->reg, key, time_wall_ns(), &r);
    assert_int_equal(r.err, REG_OK);
    buf_reset(out);
    v2json_get(out, r.node, recursive, sorted, r.now_ns);
    assert_false(buf_failed(out));
    reg_result_clear(&r);
}

/* A GET of the listing answers exactly a fresh render; returns it in `got`. */
static void expect_listing_fresh(world_t *w, const char *target, const char *key, bool recursive,
                                 bool sorted, buf_t *got)
{
    buf_t want = BUF_INIT;
    exchange(w, "GET", target, NULL, 200, got);
    fresh_listing(w, key, recursive, sorted, &want);
    assert_string_equal(buf_cstr(got), buf_cstr(&want));
    buf_free(&want);
}

static void test_put_and_delete_are_seen_at_once(void **state)
{
    world_t *w = *state;
    buf_t a = BUF_INIT, b = BUF_INIT, scratch = BUF_INIT;
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &a);
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &b); /* served again */
    assert_string_equal(buf_cstr(&a), buf_cstr(&b));

    /* A member registers: the next poll shows it. */
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/m1?prevExist=false", "value=one", 201,
             &scratch);
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &b);
    assert_string_not_equal(buf_cstr(&a), buf_cstr(&b));
    assert_non_null(strstr(buf_cstr(&b), "\"value\":\"one\""));

    /* A value changes in place (same node, same size of answer). */
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/m1", "value=two", 200, &scratch);
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &b);
    assert_non_null(strstr(buf_cstr(&b), "\"value\":\"two\""));
    assert_null(strstr(buf_cstr(&b), "\"value\":\"one\""));

    /* compareAndSwap, then delete. */
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/m1?prevValue=two", "value=six", 200, &scratch);
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &b);
    assert_non_null(strstr(buf_cstr(&b), "\"value\":\"six\""));
    exchange(w, "DELETE", "/v2/keys/_etcd/registry/tok/m1", NULL, 200, &scratch);
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &b);
    assert_string_equal(buf_cstr(&a), buf_cstr(&b)); /* back to the empty listing */

    /* The discovery surface shows the same listing as /v2/keys. */
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/m2", "value=m2", 201, &scratch);
    expect_listing_fresh(w, "/tok", TOKEN, false, false, &a);
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &b);
    assert_string_equal(buf_cstr(&a), buf_cstr(&b));
    buf_free(&a);
    buf_free(&b);
    buf_free(&scratch);
}

/* recursive and sorted answers are kept apart from the plain one. */
static void test_variants_are_kept_apart(void **state)
{
    world_t *w = *state;
    buf_t got = BUF_INIT, scratch = BUF_INIT;
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/zz", "value=z", 201, &scratch);
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/aa/inner", "value=i", 201, &scratch);
    for (int round = 0; round < 2; round++) {
        expect_listing_fresh(w, "/v2/keys/_etcd/registry/tok", TOKEN, false, false, &got);
        expect_listing_fresh(w, "/v2/keys/_etcd/registry/tok?recursive=true", TOKEN, true, false,
                             &got);
        assert_non_null(strstr(buf_cstr(&got), "inner"));
        expect_listing_fresh(w, "/v2/keys/_etcd/registry/tok?sorted=true", TOKEN, false, true,
                             &got);
        expect_listing_fresh(w, "/v2/keys/_etcd/registry/tok?sorted=true&recursive=true", TOKEN,
                             true, true, &got);
        expect_listing_fresh(w, "/v2/keys/_etcd/registry/tok/aa", TOKEN "/aa", false, false, &got);
    }
    /* A change deep down is seen in the recursive listing at the top. */
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/aa/inner", "value=j", 200, &scratch);
    expect_listing_fresh(w, "/v2/keys/_etcd/registry/tok?recursive=true", TOKEN, true, false, &got);
    assert_non_null(strstr(buf_cstr(&got), "\"value\":\"j\""));
    buf_free(&got);
    buf_free(&scratch);
}

/* An expiry is a change of the token like any other. */
static void test_expiry_is_seen_at_once(void **state)
{
    world_t *w = *state;
    buf_t got = BUF_INIT, scratch = BUF_INIT;
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/d/x", "value=x&ttl=100", 201, &scratch);
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/m", "value=m", 201, &scratch);
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &got);
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &got);
    api_tick(w->api, time_wall_ns() + 200 * NS_PER_SEC); /* x expires */
    expect_listing_fresh(w, LISTING, TOKEN, false, false, &got);
    expect_listing_fresh(w, "/v2/keys/_etcd/registry/tok?recursive=true", TOKEN, true, false, &got);
    assert_null(strstr(buf_cstr(&got), "/d/x"));
    buf_free(&got);
    buf_free(&scratch);
}

/* A listing that shows a TTL counts it down: never served from before. */
static void test_ttl_listing_counts_down(void **state)
{
    world_t *w = *state;
    buf_t first = BUF_INIT, later = BUF_INIT, scratch = BUF_INIT;
    exchange(w, "PUT", "/v2/keys/_etcd/registry/tok/m?ttl=100", "value=m", 201, &scratch);
    exchange(w, "GET", LISTING, NULL, 200, &first);
    assert_non_null(strstr(buf_cstr(&first), "\"ttl\":100"));
    usleep(1100 * 1000);
    exchange(w, "GET", LISTING, NULL, 200, &later);
    assert_non_null(strstr(buf_cstr(&later), "\"ttl\":99"));
    buf_free(&first);
    buf_free(&later);
    buf_free(&scratch);
}

#define W(fn) cmocka_unit_test_setup_teardown(fn, setup_world, teardown_world)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find_needs_node_variant_and_stamp),
        cmocka_unit_test(test_stamp_zero_and_big_answers_are_not_kept),
        cmocka_unit_test(test_many_nodes_never_mix),
        W(test_put_and_delete_are_seen_at_once),
        W(test_variants_are_kept_apart),
        W(test_expiry_is_seen_at_once),
        W(test_ttl_listing_counts_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
