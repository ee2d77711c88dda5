/*
 * test_buf.c - util/buf.h (JSON string escaping, integers, the buffer
 * itself), util/le.h and util/timeutil.h (RFC 3339 timestamps, Go durations).
 *
 * The JSON escaping must equal Go's encoding/json byte for byte, as built
 * into Debian's etcd 3.4.23 (go1.19.8): <>& as \u003c \u003e \u0026, \n \r \t
 * short forms, every other control byte as \u00XX (Go 1.22+ would write \b
 * and \f; etcd 3.4 does not), U+2028/U+2029 escaped, and each byte that does
 * not start a valid UTF-8 sequence replaced by \ufffd.
 *
 * Linked with support/failalloc.c (tests/CMakeLists.txt) so that
 * buf_strdup_or_null() is also seen failing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "failalloc.h"
#include "util/buf.h"
#include "util/le.h"
#include "util/timeutil.h"

/* Renders s[0..len) as a JSON string and compares the whole buffer. */
static void check_json(const char *s, size_t len, const char *want)
{
    buf_t b = BUF_INIT;
    buf_put_json_string(&b, s, len);
    assert_false(buf_failed(&b));
    assert_int_equal(b.len, strlen(want));
    assert_string_equal(buf_cstr(&b), want);
    buf_free(&b);
}

#define CHECK_JSON(lit, want) check_json((lit), sizeof(lit) - 1, (want))

static void test_json_plain_and_empty(void **state)
{
    (void)state;
    CHECK_JSON("", "\"\"");
    CHECK_JSON("abc XYZ 019 /:=,.-_~", "\"abc XYZ 019 /:=,.-_~\"");
    /* Only `len` bytes are read. */
    check_json("abcdef", 2, "\"ab\"");
}

static void test_json_html_characters(void **state)
{
    (void)state;
    CHECK_JSON("<>&", "\"\\u003c\\u003e\\u0026\"");
    CHECK_JSON("a<b>c&d", "\"a\\u003cb\\u003ec\\u0026d\"");
}

static void test_json_quote_and_backslash(void **state)
{
    (void)state;
    CHECK_JSON("a\"b\\c", "\"a\\\"b\\\\c\"");
}

static void test_json_control_bytes(void **state)
{
    (void)state;
    CHECK_JSON("\n\r\t", "\"\\n\\r\\t\"");
    /* NUL, SOH, BS, FF, US: \u00XX with lowercase hex (go1.19 has no \b \f). */
    CHECK_JSON("\x00\x01\x08\x0c\x1f", "\"\\u0000\\u0001\\u0008\\u000c\\u001f\"");
    /* DEL is not escaped by Go. */
    CHECK_JSON("a\x7f"
               "b",
               "\"a\x7f"
               "b\"");
    CHECK_JSON("x\x1by", "\"x\\u001by\"");
}

static void test_json_line_separators(void **state)
{
    (void)state;
    CHECK_JSON("\xe2\x80\xa8", "\"\\u2028\"");
    CHECK_JSON("a\xe2\x80\xa9"
               "b",
               "\"a\\u2029b\"");
    /* Neighbours of U+2028/2029 are ordinary characters. */
    CHECK_JSON("\xe2\x80\xa7\xe2\x80\xaa", "\"\xe2\x80\xa7\xe2\x80\xaa\"");
}

static void test_json_valid_multibyte_kept(void **state)
{
    (void)state;
    /* e-acute (2 bytes), euro (3), grinning face (4), U+10FFFF (4). */
    CHECK_JSON("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf",
               "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\"");
}

static void test_json_invalid_utf8(void **state)
{
    (void)state;
    /* Go replaces each byte that does not start a valid sequence. */
    CHECK_JSON("\xff", "\"\\ufffd\"");
    CHECK_JSON("a\x80"
               "b",
               "\"a\\ufffdb\"");
    /* Overlong NUL: two bad bytes. */
    CHECK_JSON("\xc0\x80", "\"\\ufffd\\ufffd\"");
    /* UTF-16 surrogate U+D800 encoded: three bad bytes. */
    CHECK_JSON("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
    /* Truncated sequences. */
    CHECK_JSON("\xe2\x82", "\"\\ufffd\\ufffd\"");
    CHECK_JSON("\xf0\x9f\x98", "\"\\ufffd\\ufffd\\ufffd\"");
    /* Beyond U+10FFFF. */
    CHECK_JSON("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    /* A bad lead byte followed by ASCII keeps the ASCII. */
    CHECK_JSON("\xe2(\xa1", "\"\\ufffd(\\ufffd\"");
    /* Invalid byte next to HTML characters and a valid rune. */
    CHECK_JSON("<\xfe\xc3\xa9>", "\"\\u003c\\ufffd\xc3\xa9\\u003e\"");
}

static void test_json_appends(void **state)
{
    (void)state;
    buf_t b = BUF_INIT;
    buf_puts(&b, "{\"k\":");
    buf_put_json_string(&b, "v", 1);
    buf_putc(&b, '}');
    assert_string_equal(buf_cstr(&b), "{\"k\":\"v\"}");
    assert_int_equal(b.len, 9);
    buf_free(&b);
}

static void check_u64(uint64_t v, const char *want)
{
    buf_t b = BUF_INIT;
    buf_put_u64(&b, v);
    assert_string_equal(buf_cstr(&b), want);
    assert_int_equal(b.len, strlen(want));
    buf_free(&b);
}

static void check_i64(int64_t v, const char *want)
{
    buf_t b = BUF_INIT;
    buf_put_i64(&b, v);
    assert_string_equal(buf_cstr(&b), want);
    assert_int_equal(b.len, strlen(want));
    buf_free(&b);
}

static void test_put_u64(void **state)
{
    (void)state;
    check_u64(0, "0");
    check_u64(7, "7");
    check_u64(10, "10");
    check_u64(1234567890123ULL, "1234567890123");
    check_u64(UINT64_MAX, "18446744073709551615");
}

static void test_put_i64(void **state)
{
    (void)state;
    check_i64(0, "0");
    check_i64(-1, "-1");
    check_i64(42, "42");
    check_i64(INT64_MAX, "9223372036854775807");
    check_i64(INT64_MIN, "-9223372036854775808");
}

static void test_buffer_basics(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_string_equal(buf_cstr(&b), "");
    assert_int_equal(b.len, 0);
    assert_null(buf_steal(&b));

    buf_printf(&b, "%s-%d", "abc", 12);
    assert_string_equal(buf_cstr(&b), "abc-12");
    buf_consume(&b, 4);
    assert_string_equal(buf_cstr(&b), "12");
    assert_int_equal(b.len, 2);

    /* A formatted piece longer than buf_printf's stack buffer. */
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    buf_printf(&b, "<%s>", big);
    assert_int_equal(b.len, 2 + 1 + 599 + 1);
    assert_int_equal(buf_cstr(&b)[2], '<');
    assert_int_equal(buf_cstr(&b)[b.len - 1], '>');
    assert_int_equal(buf_cstr(&b)[b.len], '\0');

    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(buf_cstr(&b), "");
    buf_puts(&b, "kept");
    char *s = buf_steal(&b);
    assert_string_equal(s, "kept");
    assert_int_equal(b.len, 0);
    assert_null(b.data);
    free(s);
    buf_free(&b);
}

/* ---- time_format_rfc3339nano ---------------------------------------- */

static void check_time(int64_t ns, const char *want)
{
    char out[40];
    memset(out, '#', sizeof out);
    size_t n = time_format_rfc3339nano(ns, out);
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
}

static void test_rfc3339nano(void **state)
{
    (void)state;
    check_time(0, "1970-01-01T00:00:00Z");
    check_time(1500000000LL, "1970-01-01T00:00:01.5Z");
    check_time(1700000000LL * NS_PER_SEC, "2023-11-14T22:13:20Z");
    check_time(1700000000LL * NS_PER_SEC + 123456789, "2023-11-14T22:13:20.123456789Z");
    check_time(1700000000LL * NS_PER_SEC + 100000000, "2023-11-14T22:13:20.1Z");
    check_time(1700000000LL * NS_PER_SEC + 120000, "2023-11-14T22:13:20.00012Z");
    check_time(1700000000LL * NS_PER_SEC + 1, "2023-11-14T22:13:20.000000001Z");
    /* A timestamp real etcd 3.4 printed as an expiration. */
    check_time(1795626693LL * NS_PER_SEC + 724181476, "2026-11-25T17:11:33.724181476Z");
    /* Before the epoch: Go floors to the previous second. */
    check_time(-1, "1969-12-31T23:59:59.999999999Z");
}

/* ---- time_parse_duration_ms ----------------------------------------- */

static void check_duration(const char *s, uint64_t want_ms)
{
    uint64_t ms = 987654321;
    int rc = time_parse_duration_ms(s, &ms);
    if (rc != 0)
        fail_msg("duration \"%s\" rejected", s);
    if (ms != want_ms)
        fail_msg("duration \"%s\": want %llu ms, got %llu ms", s, (unsigned long long)want_ms,
                 (unsigned long long)ms);
}

static void check_bad_duration(const char *s)
{
    uint64_t ms = 0;
    if (time_parse_duration_ms(s, &ms) != -1)
        fail_msg("duration \"%s\" accepted as %llu ms", s, (unsigned long long)ms);
}

static void test_duration_valid(void **state)
{
    (void)state;
    check_duration("168h", 604800000ULL);
    check_duration("1h30m", 5400000ULL);
    check_duration("300ms", 300);
    check_duration("0", 0);
    check_duration("0s", 0);
    check_duration("5m", 300000);
    check_duration("5m30s", 330000);
    check_duration("1.5h", 5400000ULL);
    check_duration("2s", 2000);
    check_duration(".5s", 500);
    check_duration("1500us", 1);   /* rounds down */
    check_duration("999999ns", 0); /* rounds down */
    check_duration("2000000ns", 2);
    check_duration("1h1m1s1ms", 3661001ULL);
}

static void test_duration_bad(void **state)
{
    (void)state;
    check_bad_duration("");
    check_bad_duration("h");
    check_bad_duration("5"); /* a unit is required except for "0" */
    check_bad_duration("00");
    check_bad_duration("-1s"); /* negative */
    check_bad_duration("1x");
    check_bad_duration("1d");
    check_bad_duration("s5");
    check_bad_duration(" 1s");
    check_bad_duration("1s ");
    check_bad_duration("1h 30m");
    check_bad_duration("1h30");
    check_bad_duration("1.5.5s");
    check_bad_duration("1hm");
    check_bad_duration("1mss");
}

/*
 * Regression test. The bug it found, now fixed: time_parse_duration_ms reads numbers with strtod,
 * so it accepts inputs Go's time.ParseDuration rejects: an exponent ("1e3s" is `unknown unit "e3s"`
 * in Go) and hexadecimal ("0x10s"). disco parses them as 1000 s and 16 s.
 */
static void test_duration_accepts_non_go_numbers(void **state)
{
    (void)state;
    check_bad_duration("1e3s");
    check_bad_duration("0x10s");
}

/*
 * Regression test. The bug it found, now fixed: sums in binary floating point, so a decimal
 * fraction can lose a millisecond that Go's exact integer arithmetic keeps: Go:
 * ParseDuration("1.001s") = 1001 ms, disco gives 1000 ms; Go: ParseDuration("2.01s") = 2010 ms,
 * disco gives 2009 ms.
 */
static void test_duration_fraction_rounding(void **state)
{
    (void)state;
    check_duration("1.001s", 1001);
    check_duration("2.01s", 2010);
}

/*
 * Regression test. The bug it found, now fixed: valid Go durations rejected. Go's ParseDuration
 * takes a leading '+' ("+5s" = 5 s) and both micro signs, U+00B5 "\xc2\xb5s"
 * and U+03BC "\xce\xbcs". disco returns -1 for "+5s" and "1\xce\xbcs".
 */
static void test_duration_rejects_valid_go_forms(void **state)
{
    (void)state;
    check_duration("2000\xc2\xb5s", 2); /* U+00B5, accepted today */
    check_duration("+5s", 5000);
    check_duration("2000\xce\xbcs", 2);
}

static void test_little_endian_round_trip(void **state)
{
    (void)state;
    buf_t b = BUF_INIT;
    buf_put_le(&b, 0x0102030405060708ull, 8);
    buf_put_le(&b, 0xa1b2c3d4ull, 4);
    buf_put_le(&b, 0xffffull << 16 | 0x7f, 1); /* only the low byte */
    assert_int_equal(b.len, 13);
    assert_memory_equal(b.data, "\x08\x07\x06\x05\x04\x03\x02\x01\xd4\xc3\xb2\xa1\x7f", 13);
    const unsigned char *p = (const unsigned char *)b.data;
    assert_int_equal(le_load(p, 8), 0x0102030405060708ull);
    assert_int_equal(le_load(p + 8, 4), 0xa1b2c3d4ull);
    unsigned char x[8];
    le_store(x, UINT64_MAX - 1, 8);
    assert_int_equal(le_load(x, 8), UINT64_MAX - 1);
    buf_free(&b);
}

static void test_strdup_or_null(void **state)
{
    (void)state;
    bool failed = false;
    assert_null(buf_strdup_or_null(NULL, &failed));
    assert_false(failed);

    const char *src = "etcd.example:2379";
    char *d = buf_strdup_or_null(src, &failed);
    assert_non_null(d);
    assert_ptr_not_equal(d, src);
    assert_string_equal(d, src);
    assert_false(failed);
    free(d);

    d = buf_strdup_or_null("", &failed);
    assert_non_null(d);
    assert_string_equal(d, "");
    free(d);

    /* The copy cannot be made: NULL, and the flag is set. */
    failalloc_arm(1);
    assert_null(buf_strdup_or_null(src, &failed));
    assert_true(failalloc_disarm());
    assert_true(failed);

    /* A later success never clears it. */
    d = buf_strdup_or_null(src, &failed);
    assert_non_null(d);
    assert_true(failed);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_plain_and_empty),
        cmocka_unit_test(test_json_html_characters),
        cmocka_unit_test(test_json_quote_and_backslash),
        cmocka_unit_test(test_json_control_bytes),
        cmocka_unit_test(test_json_line_separators),
        cmocka_unit_test(test_json_valid_multibyte_kept),
        cmocka_unit_test(test_json_invalid_utf8),
        cmocka_unit_test(test_json_appends),
        cmocka_unit_test(test_put_u64),
        cmocka_unit_test(test_put_i64),
        cmocka_unit_test(test_buffer_basics),
        cmocka_unit_test(test_rfc3339nano),
        cmocka_unit_test(test_duration_valid),
        cmocka_unit_test(test_duration_bad),
        cmocka_unit_test(test_duration_accepts_non_go_numbers),
        cmocka_unit_test(test_duration_fraction_rounding),
        cmocka_unit_test(test_duration_rejects_valid_go_forms),
        cmocka_unit_test(test_little_endian_round_trip),
        cmocka_unit_test(test_strdup_or_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
