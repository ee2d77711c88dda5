/*
 * test_form.c - api/form.h: query and urlencoded-form decoding with Go's
 * net/url rules (url.ParseQuery, url.PathUnescape, strconv.ParseBool,
 * strconv.ParseUint). Expected error texts were checked against Debian's
 * etcd 3.4.23 (go1.19.8), which puts them in errorCode 210's cause.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/form.h"

/* Parses one string into a fresh form. */
static void parse(form_t *f, const char *s)
{
    form_init(f);
    assert_int_equal(form_parse(f, s, strlen(s)), 0);
}

/* Parses `s` and copies the error out, freeing everything before any assert
 * can fail (so a failing test leaks nothing under LeakSanitizer). */
static void parse_error(const char *s, char *out, size_t cap)
{
    form_t f;
    form_init(&f);
    int rc = form_parse(&f, s, strlen(s));
    snprintf(out, cap, "%s", f.error ? f.error : "(none)");
    form_free(&f);
    assert_int_equal(rc, 0);
}

static void test_pairs(void **state)
{
    (void)state;
    form_t f;
    parse(&f, "a=1&b=2");
    assert_null(f.error);
    assert_int_equal(f.n, 2);
    assert_string_equal(f.params[0].name, "a");
    assert_string_equal(f.params[0].value, "1");
    assert_string_equal(f.params[1].name, "b");
    assert_string_equal(f.params[1].value, "2");
    assert_string_equal(form_get(&f, "a"), "1");
    assert_string_equal(form_get(&f, "b"), "2");
    assert_null(form_get(&f, "c"));
    assert_true(form_has(&f, "a"));
    assert_false(form_has(&f, "c"));
    form_free(&f);
    assert_int_equal(f.n, 0);
    assert_null(f.params);
    assert_null(f.error);
}

static void test_missing_equals_and_empty_pairs(void **state)
{
    (void)state;
    form_t f;
    parse(&f, "a&b=&&c=3&");
    assert_null(f.error);
    assert_int_equal(f.n, 3);
    assert_string_equal(form_get(&f, "a"), "");
    assert_true(form_has(&f, "a"));
    assert_string_equal(form_get(&f, "b"), "");
    assert_string_equal(form_get(&f, "c"), "3");
    form_free(&f);

    /* "=1": an empty name, as Go keeps it. */
    parse(&f, "=1");
    assert_null(f.error);
    assert_int_equal(f.n, 1);
    assert_string_equal(form_get(&f, ""), "1");
    form_free(&f);

    /* Only the first '=' splits. */
    parse(&f, "value=m1=http://h:1");
    assert_string_equal(form_get(&f, "value"), "m1=http://h:1");
    form_free(&f);
}

static void test_plus_and_percent(void **state)
{
    (void)state;
    form_t f;
    parse(&f, "q=a+b&x+y=%41%42%2b&v=m1%3Dhttp%3A%2F%2F127.0.0.1%3A21380&e=%e2%82%AC");
    assert_null(f.error);
    assert_string_equal(form_get(&f, "q"), "a b");
    assert_string_equal(form_get(&f, "x y"), "AB+");
    /* The body a real etcd member sent (from the discovery capture). */
    assert_string_equal(form_get(&f, "v"), "m1=http://127.0.0.1:21380");
    assert_string_equal(form_get(&f, "e"), "\xe2\x82\xac");
    form_free(&f);

    parse(&f, "%41=1");
    assert_string_equal(form_get(&f, "A"), "1");
    form_free(&f);
}

static void test_length_is_respected(void **state)
{
    (void)state;
    form_t f;
    form_init(&f);
    const char *s = "a=12&b=3";
    assert_int_equal(form_parse(&f, s, 3), 0);
    assert_int_equal(f.n, 1);
    assert_string_equal(form_get(&f, "a"), "1");
    assert_null(form_get(&f, "b"));
    form_free(&f);
}

static void test_bad_escape(void **state)
{
    (void)state;
    form_t f;
    parse(&f, "k=%zz&b=2");
    assert_non_null(f.error);
    assert_string_equal(f.error, "invalid URL escape \"%zz\"");
    /* The bad pair is dropped, decoding goes on. */
    assert_null(form_get(&f, "k"));
    assert_string_equal(form_get(&f, "b"), "2");
    assert_int_equal(f.n, 1);
    form_free(&f);

    parse(&f, "k=%4");
    assert_string_equal(f.error, "invalid URL escape \"%4\"");
    assert_int_equal(f.n, 0);
    form_free(&f);

    parse(&f, "k=%");
    assert_string_equal(f.error, "invalid URL escape \"%\"");
    form_free(&f);

    /* Go quotes at most three bytes. */
    parse(&f, "k=%%ff");
    assert_string_equal(f.error, "invalid URL escape \"%%f\"");
    form_free(&f);

    /* A bad name is as bad as a bad value. */
    parse(&f, "%g1=x");
    assert_string_equal(f.error, "invalid URL escape \"%g1\"");
    assert_int_equal(f.n, 0);
    form_free(&f);

    /* Between escape errors, the first one is kept (as Go does). */
    parse(&f, "k=%zz&j=%4");
    assert_string_equal(f.error, "invalid URL escape \"%zz\"");
    form_free(&f);
}

static void test_semicolon(void **state)
{
    (void)state;
    form_t f;
    parse(&f, "a=1;b=2&c=3");
    assert_non_null(f.error);
    assert_string_equal(f.error, "invalid semicolon separator in query");
    assert_null(form_get(&f, "a"));
    assert_null(form_get(&f, "b"));
    assert_string_equal(form_get(&f, "c"), "3");
    assert_int_equal(f.n, 1);
    form_free(&f);

    parse(&f, ";");
    assert_string_equal(f.error, "invalid semicolon separator in query");
    assert_int_equal(f.n, 0);
    form_free(&f);
}

/*
 * Regression test. The bug it found, now fixed: Go's url.ParseQuery overwrites any earlier error
 * when it meets a ';' (`err = fmt.Errorf("invalid semicolon separator in query")`, no `if err ==
 * nil`). Real etcd 3.4.23: PUT /v2/keys/t/a?x=%zz&b;c -> cause "invalid semicolon separator in
 * query" disco keeps the first problem: `invalid URL escape "%zz"`.
 */
static void test_semicolon_error_wins_like_go(void **state)
{
    (void)state;
    char got[128];
    parse_error("x=%zz&b;c", got, sizeof got);
    assert_string_equal(got, "invalid semicolon separator in query");
}

/*
 * Regression test. The bug it found, now fixed: Go formats the bad escape with strconv.Quote, which
 * escapes '"', '\\' and bytes that are not printable UTF-8. Real etcd 3.4.23:
 *   PUT /v2/keys/t/a?y=%"1 -> cause `invalid URL escape "%\"1"`
 * disco copies the bytes raw: `invalid URL escape "%"1"`.
 */
static void test_bad_escape_is_go_quoted(void **state)
{
    (void)state;
    char got[128];
    parse_error("y=%\"1", got, sizeof got);
    assert_string_equal(got, "invalid URL escape \"%\\\"1\"");
    parse_error("y=%\xff"
                "1",
                got, sizeof got);
    assert_string_equal(got, "invalid URL escape \"%\\xff1\"");
}

static void test_first_value_wins(void **state)
{
    (void)state;
    form_t f;
    parse(&f, "a=1&a=2");
    assert_int_equal(f.n, 2);
    assert_string_equal(form_get(&f, "a"), "1");
    /* The body is parsed before the query: its value wins. */
    assert_int_equal(form_parse(&f, "a=3&z=9", 7), 0);
    assert_string_equal(form_get(&f, "a"), "1");
    assert_string_equal(form_get(&f, "z"), "9");
    assert_int_equal(f.n, 4);
    form_free(&f);
}

static void test_many_pairs_grow(void **state)
{
    (void)state;
    form_t f;
    form_init(&f);
    char pair[32];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(pair, sizeof pair, "k%d=v%d&", i, i);
        assert_int_equal(form_parse(&f, pair, (size_t)n), 0);
    }
    assert_int_equal(f.n, 100);
    assert_string_equal(form_get(&f, "k0"), "v0");
    assert_string_equal(form_get(&f, "k99"), "v99");
    assert_string_equal(form_get(&f, "k57"), "v57");
    form_free(&f);
}

/* ---- form_parse_bool --------------------------------------------------- */

static void check_bool(const char *s, bool want)
{
    bool v = !want;
    if (!form_parse_bool(s, &v))
        fail_msg("\"%s\" rejected", s);
    if (v != want)
        fail_msg("\"%s\" parsed as %d", s, v);
}

static void test_parse_bool(void **state)
{
    (void)state;
    static const char *const yes[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const no[] = {"0", "f", "F", "FALSE", "false", "False"};
    for (size_t i = 0; i < 6; i++) {
        check_bool(yes[i], true);
        check_bool(no[i], false);
    }
    static const char *const bad[] = {"",   "yes", "no", "tRUE", "TRue", "fALSE", " true",
                                      "1 ", "2",   "on", "y",    "01",   "truee", "-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bool v = false;
        if (form_parse_bool(bad[i], &v))
            fail_msg("\"%s\" accepted", bad[i]);
    }
}

/* ---- form_parse_u64 ---------------------------------------------------- */

static void check_u64(const char *s, uint64_t want)
{
    uint64_t v = 12345;
    if (!form_parse_u64(s, &v))
        fail_msg("\"%s\" rejected", s);
    if (v != want)
        fail_msg("\"%s\" parsed as %llu", s, (unsigned long long)v);
}

static void test_parse_u64(void **state)
{
    (void)state;
    check_u64("0", 0);
    check_u64("5", 5);
    check_u64("007", 7);
    check_u64("1000", 1000);
    check_u64("18446744073709551615", UINT64_MAX);
    static const char *const bad[] = {"-1",
                                      "+1",
                                      "",
                                      "18446744073709551616",
                                      "99999999999999999999",
                                      "184467440737095516150",
                                      " 1",
                                      "1 ",
                                      "0x10",
                                      "1_000",
                                      "1.0",
                                      "1e3",
                                      "abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 0;
        if (form_parse_u64(bad[i], &v))
            fail_msg("\"%s\" accepted as %llu", bad[i], (unsigned long long)v);
    }
}

/* ---- form_unescape_path ------------------------------------------------ */

static void check_path(const char *s, const char *want)
{
    int bad = 7;
    char *out = form_unescape_path(s, strlen(s), &bad);
    assert_non_null(out);
    assert_int_equal(bad, 0);
    assert_string_equal(out, want);
    free(out);
}

static void check_bad_path(const char *s)
{
    int bad = 7;
    char *out = form_unescape_path(s, strlen(s), &bad);
    if (out) {
        free(out);
        fail_msg("path \"%s\" accepted", s);
    }
    assert_int_equal(bad, 1);
}

static void test_unescape_path(void **state)
{
    (void)state;
    check_path("", "");
    check_path("/v2/keys/a", "/v2/keys/a");
    /* '+' stays '+' in a path. */
    check_path("/a+b", "/a+b");
    check_path("/a%2Fb%20c%2b", "/a/b c+");
    check_path("/%e2%82%ac", "/\xe2\x82\xac");
    /* An escaped '%' followed by "00" is not a NUL. */
    check_path("/x%2500", "/x%00");

    check_bad_path("%00");
    check_bad_path("/a%00b");
    check_bad_path("/a%zz");
    check_bad_path("/a%4");
    check_bad_path("/a%");

    /* Only `len` bytes are read. */
    int bad = 7;
    char *out = form_unescape_path("/ab%zz", 3, &bad);
    assert_non_null(out);
    assert_string_equal(out, "/ab");
    assert_int_equal(bad, 0);
    free(out);
}

/* Go reads a body as a form only for this media type, parameters aside. */
static void test_is_urlencoded(void **state)
{
    (void)state;
    assert_true(form_is_urlencoded("application/x-www-form-urlencoded"));
    assert_true(form_is_urlencoded("Application/X-WWW-Form-Urlencoded"));
    assert_true(form_is_urlencoded("application/x-www-form-urlencoded; charset=utf-8"));
    assert_true(form_is_urlencoded("application/x-www-form-urlencoded ;charset=utf-8"));
    assert_false(form_is_urlencoded("application/x-www-form-urlencodedXYZ"));
    assert_false(form_is_urlencoded("application/json"));
    assert_false(form_is_urlencoded("multipart/form-data"));
    assert_false(form_is_urlencoded(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pairs),
        cmocka_unit_test(test_missing_equals_and_empty_pairs),
        cmocka_unit_test(test_plus_and_percent),
        cmocka_unit_test(test_length_is_respected),
        cmocka_unit_test(test_bad_escape),
        cmocka_unit_test(test_semicolon),
        cmocka_unit_test(test_semicolon_error_wins_like_go),
        cmocka_unit_test(test_bad_escape_is_go_quoted),
        cmocka_unit_test(test_first_value_wins),
        cmocka_unit_test(test_many_pairs_grow),
        cmocka_unit_test(test_parse_bool),
        cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_unescape_path),
        cmocka_unit_test(test_is_urlencoded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
