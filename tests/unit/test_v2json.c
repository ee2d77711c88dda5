/*
 * test_v2json.c - api/v2json.h: etcd v2 answers, byte for byte.
 *
 * Ground truth: etcd 3.4's structs (v2store.Event, NodeExtern, v2error.Error)
 * and /work/shared/data/etcd34-discovery-capture.log, the answers a real
 * etcd 3.4 gave three members bootstrapping through token "tok2". The
 * CAPTURE_* strings below are copied verbatim from that log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/v2json.h"
#include "registry/registry.h"
#include "util/buf.h"
#include "util/timeutil.h"

#define T0 (1700000000LL * NS_PER_SEC) /* 2023-11-14T22:13:20Z */
#define MS (NS_PER_MS)

static const reg_ttl_t NO_TTL = {false, 0};

/* Compares a buffer with an expected text, whole and exact. */
static void assert_buf(buf_t *b, const char *want)
{
    assert_false(buf_failed(b));
    assert_string_equal(buf_cstr(b), want);
    assert_int_equal(b->len, strlen(want));
}

/* ---- errors ------------------------------------------------------------ */

static void check_error(int code, const char *cause, uint64_t index, const char *want)
{
    buf_t b = BUF_INIT;
    v2json_error(&b, code, cause, index);
    assert_buf(&b, want);
    buf_free(&b);
}

static void test_error_json(void **state)
{
    (void)state;
    check_error(100, "/x", 7,
                "{\"errorCode\":100,\"message\":\"Key not found\",\"cause\":\"/x\",\"index\":7}\n");
    /* cause is omitempty in etcd's Error. */
    check_error(100, "", 7, "{\"errorCode\":100,\"message\":\"Key not found\",\"index\":7}\n");
    check_error(300, NULL, 0,
                "{\"errorCode\":300,\"message\":\"Raft Internal Error\",\"index\":0}\n");
    /* Answers real etcd 3.4.23 gave. */
    check_error(101, "[a != b] [3 != 8]", 8,
                "{\"errorCode\":101,\"message\":\"Compare failed\",\"cause\":\"[a != b] [3 != 8]\","
                "\"index\":8}\n");
    check_error(
        104, "/t/f", 4,
        "{\"errorCode\":104,\"message\":\"Not a directory\",\"cause\":\"/t/f\",\"index\":4}\n");
    check_error(
        105, "/c/k", 9,
        "{\"errorCode\":105,\"message\":\"Key already exists\",\"cause\":\"/c/k\",\"index\":9}\n");
    check_error(
        210, "invalid URL escape \"%4\"", 0,
        "{\"errorCode\":210,\"message\":\"Invalid POST form\",\"cause\":\"invalid URL escape "
        "\\\"%4\\\"\",\"index\":0}\n");
    /* The cause goes through Go's escaping. */
    check_error(
        209, "<a&b>\n", 18446744073709551615ULL,
        "{\"errorCode\":209,\"message\":\"Invalid field\",\"cause\":\"\\u003ca\\u0026b\\u003e\\n\","
        "\"index\":18446744073709551615}\n");
}

static void test_error_messages(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *msg;
    } table[] = {
        {100, "Key not found"},
        {101, "Compare failed"},
        {102, "Not a file"},
        {104, "Not a directory"},
        {105, "Key already exists"},
        {107, "Root is read only"},
        {108, "Directory not empty"},
        {110, "The request requires user authentication"},
        {200, "Value is Required in POST form"},
        {201, "PrevValue is Required in POST form"},
        {202, "The given TTL in POST form is not a number"},
        {203, "The given index in POST form is not a number"},
        {209, "Invalid field"},
        {210, "Invalid POST form"},
        {211, "Value provided on refresh"},
        {212, "A TTL must be provided on refresh"},
        {300, "Raft Internal Error"},
        {401, "The event in requested index is outdated and cleared"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const char *got = v2json_error_message(table[i].code);
        if (strcmp(got, table[i].msg) != 0)
            fail_msg("code %d: want \"%s\", got \"%s\"", table[i].code, table[i].msg, got);
    }
}

/*
 * Regression test. The bug it found, now fixed: v2json.h promises "etcd's message for an error
 * code", but codes etcd 3.4 defines are missing and come back as "Unknown error" (etcd:
 * server/etcdserver/api/v2error/error.go). None is emitted today, but 301 is already mapped to 500
 * by v2json_error_status.
 */
static void test_error_messages_missing_codes(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *msg;
    } table[] = {
        {103, "Reached the max number of peers in the cluster"},
        {106, "The prefix of given key is a keyword in etcd"},
        {109, "Peer address has existed"},
        {204, "Value or TTL is required in POST form"},
        {205, "The given timeout in POST form is not a number"},
        {206, "Name is required in POST form"},
        {207, "Index or value is required"},
        {208, "Index and value cannot both be specified"},
        {301, "During Leader Election"},
        {400, "watcher is cleared due to etcd recovery"},
    };
    int wrong = 0;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const char *got = v2json_error_message(table[i].code);
        if (strcmp(got, table[i].msg) != 0) {
            print_error("code %d: want \"%s\", got \"%s\"\n", table[i].code, table[i].msg, got);
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
}

static void test_error_status(void **state)
{
    (void)state;
    static const int table[][2] = {
        {100, 404}, {101, 412}, {102, 403}, {104, 400}, {105, 412}, {107, 400},
        {108, 403}, {110, 401}, {200, 400}, {201, 400}, {202, 400}, {203, 400},
        {209, 400}, {210, 400}, {300, 500}, {301, 500}, {401, 400}, {999, 400},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        int got = v2json_error_status(table[i][0]);
        if (got != table[i][1])
            fail_msg("code %d: want status %d, got %d", table[i][0], table[i][1], got);
    }
}

/* ---- events built by hand -------------------------------------------- */

static void check_event(const reg_event_t *ev, bool no_value, const char *want)
{
    buf_t b = BUF_INIT;
    v2json_event(&b, ev, no_value);
    assert_buf(&b, want);
    buf_free(&b);
}

static void test_event_field_order(void **state)
{
    (void)state;
    reg_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.action = REG_ACT_SET;
    ev.index = 9;
    ev.node.key = "/_etcd/registry/t/k";
    ev.node.value = "v";
    ev.node.created_index = 9;
    ev.node.modified_index = 9;
    ev.node.expire_ns = T0 + 10250 * MS;
    ev.node.ttl_s = 10;
    ev.has_prev = true;
    ev.prev.key = "/_etcd/registry/t/k";
    ev.prev.value = "old";
    ev.prev.created_index = 3;
    ev.prev.modified_index = 5;
    ev.prev.expire_ns = T0 + 20 * NS_PER_SEC;
    ev.prev.ttl_s = 20;
    check_event(
        &ev, false,
        "{\"action\":\"set\",\"node\":{\"key\":\"/_etcd/registry/t/k\",\"value\":\"v\","
        "\"expiration\":\"2023-11-14T22:13:30.25Z\",\"ttl\":10,\"modifiedIndex\":9,"
        "\"createdIndex\":9},\"prevNode\":{\"key\":\"/_etcd/registry/t/k\",\"value\":\"old\","
        "\"expiration\":\"2023-11-14T22:13:40Z\",\"ttl\":20,\"modifiedIndex\":5,"
        "\"createdIndex\":3}}\n");

    /* noValueOnSuccess: the action alone. */
    check_event(&ev, true, "{\"action\":\"set\"}\n");

    /* An expiration whose ttl is 0 keeps the expiration, drops the ttl. */
    ev.has_prev = false;
    ev.node.ttl_s = 0;
    check_event(&ev, false,
                "{\"action\":\"set\",\"node\":{\"key\":\"/_etcd/registry/t/k\",\"value\":\"v\","
                "\"expiration\":\"2023-11-14T22:13:30.25Z\",\"modifiedIndex\":9,"
                "\"createdIndex\":9}}\n");
}

static void test_event_empty_value_dir_and_delete(void **state)
{
    (void)state;
    reg_event_t ev;
    memset(&ev, 0, sizeof ev);
    /* A file with an empty value keeps "value":"" (Value is a *string). */
    ev.action = REG_ACT_CREATE;
    ev.index = 4;
    ev.node.key = "/_etcd/registry/t/e";
    ev.node.value = "";
    ev.node.created_index = 4;
    ev.node.modified_index = 4;
    check_event(&ev, false,
                "{\"action\":\"create\",\"node\":{\"key\":\"/_etcd/registry/t/e\",\"value\":\"\","
                "\"modifiedIndex\":4,\"createdIndex\":4}}\n");

    /* A directory: "dir":true and no value. */
    ev.node.value = NULL;
    ev.node.is_dir = true;
    ev.node.expire_ns = T0 + 5 * NS_PER_SEC;
    ev.node.ttl_s = 5;
    check_event(&ev, false,
                "{\"action\":\"create\",\"node\":{\"key\":\"/_etcd/registry/t/e\",\"dir\":true,"
                "\"expiration\":\"2023-11-14T22:13:25Z\",\"ttl\":5,\"modifiedIndex\":4,"
                "\"createdIndex\":4}}\n");

    /* A delete, shaped like real etcd 3.4.23's answer. */
    memset(&ev, 0, sizeof ev);
    ev.action = REG_ACT_DELETE;
    ev.index = 6;
    ev.node.key = "/t/f2";
    ev.node.created_index = 5;
    ev.node.modified_index = 6;
    ev.has_prev = true;
    ev.prev.key = "/t/f2";
    ev.prev.value = "1";
    ev.prev.created_index = 5;
    ev.prev.modified_index = 5;
    check_event(&ev, false,
                "{\"action\":\"delete\",\"node\":{\"key\":\"/t/f2\",\"modifiedIndex\":6,"
                "\"createdIndex\":5},\"prevNode\":{\"key\":\"/t/f2\",\"value\":\"1\","
                "\"modifiedIndex\":5,\"createdIndex\":5}}\n");

    /* Escaping applies to keys and values. */
    memset(&ev, 0, sizeof ev);
    ev.action = REG_ACT_CAS;
    ev.index = 11;
    ev.node.key = "/t/<k>";
    ev.node.value = "a&b\x01\xe2\x80\xa8\xff";
    ev.node.created_index = 10;
    ev.node.modified_index = 11;
    check_event(&ev, false,
                "{\"action\":\"compareAndSwap\",\"node\":{\"key\":\"/t/\\u003ck\\u003e\","
                "\"value\":\"a\\u0026b\\u0001\\u2028\\ufffd\",\"modifiedIndex\":11,"
                "\"createdIndex\":10}}\n");
}

static void test_event_action_names(void **state)
{
    (void)state;
    static const struct {
        enum reg_action a;
        const char *want;
    } table[] = {
        {REG_ACT_CREATE, "{\"action\":\"create\"}\n"},
        {REG_ACT_SET, "{\"action\":\"set\"}\n"},
        {REG_ACT_UPDATE, "{\"action\":\"update\"}\n"},
        {REG_ACT_CAS, "{\"action\":\"compareAndSwap\"}\n"},
        {REG_ACT_DELETE, "{\"action\":\"delete\"}\n"},
        {REG_ACT_CAD, "{\"action\":\"compareAndDelete\"}\n"},
        {REG_ACT_EXPIRE, "{\"action\":\"expire\"}\n"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        reg_event_t ev;
        memset(&ev, 0, sizeof ev);
        ev.action = table[i].a;
        ev.node.key = "/k";
        check_event(&ev, true, table[i].want);
    }
}

/* ---- the capture ------------------------------------------------------ */

#define TOK2 "/_etcd/registry/tok2"
#define M1_KEY TOK2 "/86f5e6aacb2ddcde"
#define M2_KEY TOK2 "/3b62ccdc1fb836af"
#define M3_KEY TOK2 "/f300e4e68af0f023"
#define M1_NODE                                                                                    \
    "{\"key\":\"/_etcd/registry/tok2/86f5e6aacb2ddcde\",\"value\":\"m1=http://127.0.0.1:21380\","  \
    "\"modifiedIndex\":5,\"createdIndex\":5}"
#define M2_NODE                                                                                    \
    "{\"key\":\"/_etcd/registry/tok2/3b62ccdc1fb836af\",\"value\":\"m2=http://127.0.0.1:22380\","  \
    "\"modifiedIndex\":6,\"createdIndex\":6}"

static const char CAPTURE_SIZE_GET[] =
    "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/tok2/_config/size\",\"value\":\"3\","
    "\"modifiedIndex\":4,\"createdIndex\":4}}\n";
static const char CAPTURE_EMPTY_LISTING[] =
    "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/tok2\",\"dir\":true,"
    "\"modifiedIndex\":4,\"createdIndex\":4}}\n";
static const char CAPTURE_CREATE_M1[] =
    "{\"action\":\"create\",\"node\":{\"key\":\"/_etcd/registry/tok2/86f5e6aacb2ddcde\","
    "\"value\":\"m1=http://127.0.0.1:21380\",\"modifiedIndex\":5,\"createdIndex\":5}}\n";
static const char CAPTURE_CREATE_M2[] =
    "{\"action\":\"create\",\"node\":{\"key\":\"/_etcd/registry/tok2/3b62ccdc1fb836af\","
    "\"value\":\"m2=http://127.0.0.1:22380\",\"modifiedIndex\":6,\"createdIndex\":6}}\n";
static const char CAPTURE_CREATE_M3[] =
    "{\"action\":\"create\",\"node\":{\"key\":\"/_etcd/registry/tok2/f300e4e68af0f023\","
    "\"value\":\"m3=http://127.0.0.1:23380\",\"modifiedIndex\":7,\"createdIndex\":7}}\n";
static const char CAPTURE_LISTING_1[] =
    "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/"
    "tok2\",\"dir\":true,\"nodes\":[" M1_NODE "],\"modifiedIndex\":4,\"createdIndex\":4}}\n";
static const char CAPTURE_LISTING_2[] = "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/"
                                        "tok2\",\"dir\":true,\"nodes\":[" M1_NODE "," M2_NODE
                                        "],\"modifiedIndex\":4,\"createdIndex\":4}}\n";
/* The capture cut this answer short; this is all of it that was logged. */
static const char CAPTURE_LISTING_3_PREFIX[] =
    "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/"
    "tok2\",\"dir\":true,\"nodes\":[" M1_NODE "," M2_NODE
    ",{\"key\":\"/_etcd/registry/tok2/f300e4e68af0f023\","
    "\"value\":\"m3=http://127.0.0.1:23380\",\"modif";

/* Checks a get's answer; returns whether v2json_get said it shows a TTL. */
static bool check_get(registry_t *reg, const char *key, bool recursive, bool sorted, int64_t now_ns,
                      const char *want, uint64_t want_index)
{
    reg_result_t r;
    registry_get(reg, key, now_ns, &r);
    assert_int_equal(r.err, REG_OK);
    assert_non_null(r.node);
    assert_int_equal(r.index, want_index);
    buf_t b = BUF_INIT;
    bool shows_ttl = v2json_get(&b, r.node, recursive, sorted, r.now_ns);
    assert_buf(&b, want);
    buf_free(&b);
    reg_result_clear(&r);
    return shows_ttl;
}

/* Renders a registry event through the cached wire form. */
static void check_wire(const reg_event_t *cev, const char *want)
{
    reg_event_t *ev = (reg_event_t *)cev;
    const char *data = NULL;
    size_t len = 0;
    assert_true(v2json_event_wire(ev, &data, &len));
    assert_int_equal(len, strlen(want));
    assert_memory_equal(data, want, len);
}

static int n_fired;
static const reg_event_t *fired_event;

static void on_event(reg_waiter_t *w, const reg_event_t *ev)
{
    (void)w;
    n_fired++;
    fired_event = ev;
}

static void create_member(registry_t *reg, const char *key, const char *value,
                          const char *want_body, uint64_t want_index)
{
    reg_result_t r;
    registry_create(reg, key, false, value, false, NO_TTL, T0, &r);
    assert_int_equal(r.err, REG_OK);
    assert_int_equal(r.index, want_index);
    assert_non_null(r.event);
    buf_t b = BUF_INIT;
    v2json_event(&b, r.event, false);
    assert_buf(&b, want_body);
    buf_free(&b);
    reg_result_clear(&r);
}

static void test_capture_bootstrap(void **state)
{
    (void)state;
    registry_t *reg = registry_new(NULL);
    assert_non_null(reg);
    reg_result_t r;
    /* Three writes elsewhere, so tok2 is created at index 4 as in the capture. */
    static const char *const fillers[] = {"f1", "f2", "f3"};
    for (int i = 0; i < 3; i++) {
        registry_create_token(reg, fillers[i], 3, T0, &r);
        assert_int_equal(r.err, REG_OK);
        reg_result_clear(&r);
    }
    registry_create_token(reg, "tok2", 3, T0, &r);
    assert_int_equal(r.err, REG_OK);
    assert_int_equal(r.index, 4);
    reg_result_clear(&r);

    /* Steps 1-2: the size and the empty listing (_config hidden, no "nodes"). */
    check_get(reg, TOK2 "/_config/size", false, false, T0, CAPTURE_SIZE_GET, 4);
    check_get(reg, TOK2, false, false, T0, CAPTURE_EMPTY_LISTING, 4);

    /* Step 3: the first member's PUT ?prevExist=false. */
    create_member(reg, M1_KEY, "m1=http://127.0.0.1:21380", CAPTURE_CREATE_M1, 5);

    /* Step 4: the self-watch with waitIndex=5 is answered from history. */
    reg_waiter_t w;
    registry_watch(reg, M1_KEY, false, 5, &w, on_event, NULL, &r);
    assert_int_equal(r.err, REG_OK);
    assert_int_equal(r.index, 5); /* X-Etcd-Index: 5 */
    assert_non_null(r.event);
    check_wire(r.event, CAPTURE_CREATE_M1);
    reg_result_clear(&r);

    /* Nothing here has a TTL: the answer depends on the tree alone. */
    assert_false(check_get(reg, TOK2, false, false, T0, CAPTURE_LISTING_1, 5));

    /* Step 6: the directory watch from X-Etcd-Index+1 parks, then the second
     * member's create answers it; X-Etcd-Index is 5 (when the wait began). */
    n_fired = 0;
    registry_watch(reg, TOK2, true, 6, &w, on_event, NULL, &r);
    assert_int_equal(r.err, REG_OK);
    assert_null(r.event);
    assert_int_equal(w.start_index, 5);
    reg_result_clear(&r);
    create_member(reg, M2_KEY, "m2=http://127.0.0.1:22380", CAPTURE_CREATE_M2, 6);
    assert_int_equal(n_fired, 1);
    check_wire(fired_event, CAPTURE_CREATE_M2);

    check_get(reg, TOK2, false, false, T0, CAPTURE_LISTING_2, 6);

    n_fired = 0;
    registry_watch(reg, TOK2, true, 7, &w, on_event, NULL, &r);
    assert_null(r.event);
    assert_int_equal(w.start_index, 6);
    reg_result_clear(&r);
    create_member(reg, M3_KEY, "m3=http://127.0.0.1:23380", CAPTURE_CREATE_M3, 7);
    assert_int_equal(n_fired, 1);
    check_wire(fired_event, CAPTURE_CREATE_M3);

    /* The full listing starts with what the capture logged. */
    registry_get(reg, TOK2, T0, &r);
    assert_int_equal(r.err, REG_OK);
    assert_int_equal(r.index, 7);
    buf_t b = BUF_INIT;
    v2json_get(&b, r.node, false, false, r.now_ns);
    assert_false(buf_failed(&b));
    size_t plen = sizeof CAPTURE_LISTING_3_PREFIX - 1;
    assert_true(b.len > plen);
    assert_memory_equal(b.data, CAPTURE_LISTING_3_PREFIX, plen);
    assert_string_equal(b.data + plen, "iedIndex\":7,\"createdIndex\":7}],\"modifiedIndex\":4,"
                                       "\"createdIndex\":4}}\n");
    buf_free(&b);
    /* sorted=true orders by key: 3b62.. < 86f5.. < f300.. */
    buf_init(&b);
    v2json_get(&b, r.node, false, true, r.now_ns);
    const char *p1 = strstr(buf_cstr(&b), "3b62ccdc1fb836af");
    const char *p2 = strstr(buf_cstr(&b), "86f5e6aacb2ddcde");
    const char *p3 = strstr(buf_cstr(&b), "f300e4e68af0f023");
    assert_non_null(p1);
    assert_non_null(p2);
    assert_non_null(p3);
    assert_true(p1 < p2 && p2 < p3);
    buf_free(&b);
    reg_result_clear(&r);

    registry_free(reg);
}

/* ---- listings from a live tree ---------------------------------------- */

#define TT "/_etcd/registry/t"

static registry_t *reg_with_token_t(void)
{
    registry_t *reg = registry_new(NULL);
    assert_non_null(reg);
    reg_result_t r;
    registry_create_token(reg, "t", 3, T0, &r);
    assert_int_equal(r.err, REG_OK);
    assert_int_equal(r.index, 1);
    reg_result_clear(&r);
    return reg;
}

static void put(registry_t *reg, const char *key, bool is_dir, const char *value, reg_ttl_t ttl,
                int64_t now_ns)
{
    reg_result_t r;
    registry_create(reg, key, is_dir, value, false, ttl, now_ns, &r);
    assert_int_equal(r.err, REG_OK);
    reg_result_clear(&r);
}

static void test_listing_sorted_vs_creation_order(void **state)
{
    (void)state;
    registry_t *reg = reg_with_token_t();
    put(reg, TT "/b", false, "2", NO_TTL, T0);
    put(reg, TT "/a", false, "3", NO_TTL, T0);
    put(reg, TT "/c", false, "4", NO_TTL, T0);
#define NB                                                                                         \
    "{\"key\":\"/_etcd/registry/t/b\",\"value\":\"2\",\"modifiedIndex\":2,\"createdIndex\":2}"
#define NA                                                                                         \
    "{\"key\":\"/_etcd/registry/t/a\",\"value\":\"3\",\"modifiedIndex\":3,\"createdIndex\":3}"
#define NC                                                                                         \
    "{\"key\":\"/_etcd/registry/t/c\",\"value\":\"4\",\"modifiedIndex\":4,\"createdIndex\":4}"
    check_get(
        reg, TT, false, false, T0,
        "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t\",\"dir\":true,\"nodes\":[" NB
        "," NA "," NC "],\"modifiedIndex\":1,\"createdIndex\":1}}\n",
        4);
    check_get(
        reg, TT, false, true, T0,
        "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t\",\"dir\":true,\"nodes\":[" NA
        "," NB "," NC "],\"modifiedIndex\":1,\"createdIndex\":1}}\n",
        4);
#undef NA
#undef NB
#undef NC
    registry_free(reg);
}

static void test_listing_recursive_and_hidden(void **state)
{
    (void)state;
    registry_t *reg = reg_with_token_t();
    put(reg, TT "/d/x", false, "1", NO_TTL, T0);       /* 2: d and x */
    put(reg, TT "/d/e", true, NULL, NO_TTL, T0);       /* 3 */
    put(reg, TT "/_h", false, "h", NO_TTL, T0);        /* 4, hidden */
    put(reg, TT "/d/_hid", false, "h", NO_TTL, T0);    /* 5, hidden */
    put(reg, TT "/f", false, "", NO_TTL, T0);          /* 6, empty value */
    put(reg, TT "/d/e/_only", false, "h", NO_TTL, T0); /* 7: e has only hidden children */

#define DFLAT                                                                                      \
    "{\"key\":\"/_etcd/registry/t/d\",\"dir\":true,\"modifiedIndex\":2,\"createdIndex\":2}"
#define FNODE                                                                                      \
    "{\"key\":\"/_etcd/registry/t/f\",\"value\":\"\",\"modifiedIndex\":6,\"createdIndex\":6}"
#define XNODE                                                                                      \
    "{\"key\":\"/_etcd/registry/t/d/x\",\"value\":\"1\",\"modifiedIndex\":2,\"createdIndex\":2}"
#define ENODE                                                                                      \
    "{\"key\":\"/_etcd/registry/t/d/e\",\"dir\":true,\"modifiedIndex\":3,\"createdIndex\":3}"
    /* Not recursive: child directories without their children. */
    check_get(
        reg, TT, false, false, T0,
        "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t\",\"dir\":true,\"nodes\":[" DFLAT
        "," FNODE "],\"modifiedIndex\":1,\"createdIndex\":1}}\n",
        7);
    /* Recursive: nested, hidden nodes left out at every level, an empty
     * (or all-hidden) directory without "nodes". */
    check_get(reg, TT, true, false, T0,
              "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t\",\"dir\":true,\"nodes\":["
              "{\"key\":\"/_etcd/registry/t/d\",\"dir\":true,\"nodes\":[" XNODE "," ENODE "],"
              "\"modifiedIndex\":2,\"createdIndex\":2}," FNODE
              "],\"modifiedIndex\":1,\"createdIndex\":1}}\n",
              7);
    /* Recursive and sorted: every level sorted. */
    check_get(reg, TT, true, true, T0,
              "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t\",\"dir\":true,\"nodes\":["
              "{\"key\":\"/_etcd/registry/t/d\",\"dir\":true,\"nodes\":[" ENODE "," XNODE "],"
              "\"modifiedIndex\":2,\"createdIndex\":2}," FNODE
              "],\"modifiedIndex\":1,\"createdIndex\":1}}\n",
              7);
    /* A hidden node read directly is shown. */
    check_get(reg, TT "/_h", false, false, T0,
              "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t/_h\",\"value\":\"h\","
              "\"modifiedIndex\":4,\"createdIndex\":4}}\n",
              7);
    /* A file with an empty value keeps "value":"". */
    check_get(reg, TT "/f", false, false, T0, "{\"action\":\"get\",\"node\":" FNODE "}\n", 7);
#undef DFLAT
#undef FNODE
#undef XNODE
#undef ENODE
    registry_free(reg);
}

static void test_listing_ttl(void **state)
{
    (void)state;
    registry_t *reg = reg_with_token_t();
    reg_ttl_t ten = {true, 10};
    /* Expires at T0+10.25s. */
    put(reg, TT "/ttl", true, NULL, ten, T0 + 250 * MS); /* 2 */
    put(reg, TT "/ttl/c", false, "v", NO_TTL, T0);       /* 3 */
    put(reg, TT "/k", false, "<v>", ten, T0);            /* 4: expires T0+10s */
#define CNODE                                                                                      \
    "{\"key\":\"/_etcd/registry/t/ttl/c\",\"value\":\"v\",\"modifiedIndex\":3,\"createdIndex\":3}"
    /* 8.75 s left: ttl rounds up to 9. Field order: key dir expiration ttl
     * nodes modifiedIndex createdIndex. */
    assert_true(
        check_get(reg, TT "/ttl", false, false, T0 + 1500 * MS,
                  "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t/ttl\",\"dir\":true,"
                  "\"expiration\":\"2023-11-14T22:13:30.25Z\",\"ttl\":9,\"nodes\":[" CNODE "],"
                  "\"modifiedIndex\":2,\"createdIndex\":2}}\n",
                  4));
    /* Exactly 1 s left: 1. */
    assert_true(
        check_get(reg, TT "/ttl", false, false, T0 + 9250 * MS,
                  "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t/ttl\",\"dir\":true,"
                  "\"expiration\":\"2023-11-14T22:13:30.25Z\",\"ttl\":1,\"nodes\":[" CNODE "],"
                  "\"modifiedIndex\":2,\"createdIndex\":2}}\n",
                  4));
    /* A file: key value expiration ttl modifiedIndex createdIndex. */
    assert_true(check_get(reg, TT "/k", false, false, T0 + 1 * MS,
                          "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t/"
                          "k\",\"value\":\"\\u003cv\\u003e\","
                          "\"expiration\":\"2023-11-14T22:13:30Z\",\"ttl\":10,\"modifiedIndex\":4,"
                          "\"createdIndex\":4}}\n",
                          4));
    /* Inside a listing, children carry their own expiration. */
    assert_true(check_get(
        reg, TT, false, false, T0 + 2 * NS_PER_SEC,
        "{\"action\":\"get\",\"node\":{\"key\":\"/_etcd/registry/t\",\"dir\":true,\"nodes\":["
        "{\"key\":\"/_etcd/registry/t/"
        "ttl\",\"dir\":true,\"expiration\":\"2023-11-14T22:13:30.25Z\","
        "\"ttl\":9,\"modifiedIndex\":2,\"createdIndex\":2},"
        "{\"key\":\"/_etcd/registry/t/k\",\"value\":\"\\u003cv\\u003e\","
        "\"expiration\":\"2023-11-14T22:13:30Z\",\"ttl\":8,\"modifiedIndex\":4,"
        "\"createdIndex\":4}],\"modifiedIndex\":1,\"createdIndex\":1}}\n",
        4));
    /* A TTL only below what is shown does not count. */
    assert_false(check_get(reg, TT "/ttl/c", false, false, T0,
                           "{\"action\":\"get\",\"node\":" CNODE "}\n", 4));
#undef CNODE
    registry_free(reg);
}

/* ---- events from a live registry ------------------------------------- */

static void test_registry_events_render(void **state)
{
    (void)state;
    registry_t *reg = reg_with_token_t();
    reg_result_t r;

    registry_set(reg, TT "/s", false, "a", NO_TTL, T0, &r); /* 2 */
    assert_int_equal(r.err, REG_OK);
    reg_result_clear(&r);
    registry_set(reg, TT "/s", false, "b", NO_TTL, T0, &r); /* 3 */
    assert_int_equal(r.err, REG_OK);
    buf_t b = BUF_INIT;
    v2json_event(&b, r.event, false);
    assert_buf(
        &b, "{\"action\":\"set\",\"node\":{\"key\":\"/_etcd/registry/t/s\",\"value\":\"b\","
            "\"modifiedIndex\":3,\"createdIndex\":3},\"prevNode\":{\"key\":"
            "\"/_etcd/registry/t/s\",\"value\":\"a\",\"modifiedIndex\":2,\"createdIndex\":2}}\n");
    buf_reset(&b);
    v2json_event(&b, r.event, true);
    assert_buf(&b, "{\"action\":\"set\"}\n");
    buf_free(&b);
    reg_result_clear(&r);

    /* Expire: node without value, prevNode with its expiration (ttl 0 is
     * omitted), the shape real etcd 3.4.23 answered. */
    reg_ttl_t ten = {true, 10};
    put(reg, TT "/e", false, "v", ten, T0); /* 4 */
    assert_int_equal(registry_expire(reg, T0 + 10 * NS_PER_SEC), 0);
    assert_int_equal(registry_index(reg), 5);
    reg_waiter_t w;
    registry_watch(reg, TT "/e", false, 5, &w, on_event, NULL, &r);
    assert_int_equal(r.err, REG_OK);
    assert_non_null(r.event);
    check_wire(
        r.event,
        "{\"action\":\"expire\",\"node\":{\"key\":\"/_etcd/registry/t/e\",\"modifiedIndex\":5,"
        "\"createdIndex\":4},\"prevNode\":{\"key\":\"/_etcd/registry/t/e\",\"value\":\"v\","
        "\"expiration\":\"2023-11-14T22:13:30Z\",\"modifiedIndex\":4,\"createdIndex\":4}}\n");
    reg_result_clear(&r);

    /* Recursive delete of a directory. */
    put(reg, TT "/dir/x", false, "1", NO_TTL, T0);       /* 6 */
    registry_delete(reg, TT "/dir", true, true, T0, &r); /* 7 */
    assert_int_equal(r.err, REG_OK);
    buf_init(&b);
    v2json_event(&b, r.event, false);
    assert_buf(&b,
               "{\"action\":\"delete\",\"node\":{\"key\":\"/_etcd/registry/t/dir\",\"dir\":true,"
               "\"modifiedIndex\":7,\"createdIndex\":6},\"prevNode\":{\"key\":"
               "\"/_etcd/registry/t/dir\",\"dir\":true,\"modifiedIndex\":6,\"createdIndex\":6}}\n");
    buf_free(&b);
    reg_result_clear(&r);
    registry_free(reg);
}

static void test_event_wire_is_cached(void **state)
{
    (void)state;
    registry_t *reg = reg_with_token_t();
    reg_result_t r;
    registry_create(reg, TT "/m", false, "x", false, NO_TTL, T0, &r);
    assert_int_equal(r.err, REG_OK);
    reg_event_t *ev = (reg_event_t *)r.event;
    assert_null(ev->wire);
    const char *d1 = NULL, *d2 = NULL;
    size_t l1 = 0, l2 = 0;
    assert_true(v2json_event_wire(ev, &d1, &l1));
    assert_true(v2json_event_wire(ev, &d2, &l2));
    assert_ptr_equal(d1, d2);
    assert_ptr_equal(d1, ev->wire);
    assert_int_equal(l1, l2);
    assert_int_equal(l1, ev->wire_len);
    static const char want[] = "{\"action\":\"create\",\"node\":{\"key\":\"/_etcd/registry/t/m\","
                               "\"value\":\"x\",\"modifiedIndex\":2,\"createdIndex\":2}}\n";
    assert_int_equal(l1, sizeof want - 1);
    assert_memory_equal(d1, want, l1);
    reg_result_clear(&r);
    registry_free(reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_error_messages),
        cmocka_unit_test(test_error_messages_missing_codes),
        cmocka_unit_test(test_error_status),
        cmocka_unit_test(test_event_field_order),
        cmocka_unit_test(test_event_empty_value_dir_and_delete),
        cmocka_unit_test(test_event_action_names),
        cmocka_unit_test(test_capture_bootstrap),
        cmocka_unit_test(test_listing_sorted_vs_creation_order),
        cmocka_unit_test(test_listing_recursive_and_hidden),
        cmocka_unit_test(test_listing_ttl),
        cmocka_unit_test(test_registry_events_render),
        cmocka_unit_test(test_event_wire_is_cached),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
