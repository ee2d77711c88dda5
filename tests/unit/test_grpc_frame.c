/*
 * test_grpc_frame.c - etcd/grpc_frame.h: gRPC's 5-byte message prefix
 * (written, and parsed from partial, whole, compressed and oversized
 * input) and grpc-message's percent-decoding (etcd sends its errors
 * through it; a malformed escape is kept as grpc-go keeps it).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "etcd/grpc_frame.h"

static void test_prefix_round_trip(void **state)
{
    (void)state;
    uint8_t buf[GRPC_PREFIX_BYTES + 300] = {0};
    grpc_frame_put_prefix(buf, 300);
    assert_memory_equal(buf, "\x00\x00\x00\x01\x2c", 5);
    size_t mlen = 0;
    assert_int_equal(grpc_frame_parse(buf, sizeof buf, &mlen), GRPC_PREFIX_BYTES + 300);
    assert_int_equal(mlen, 300);
}

static void test_parse_waits_for_the_whole_message(void **state)
{
    (void)state;
    uint8_t buf[GRPC_PREFIX_BYTES + 10] = {0};
    grpc_frame_put_prefix(buf, 10);
    size_t mlen = 99;
    for (size_t n = 0; n < sizeof buf; n++)
        assert_int_equal(grpc_frame_parse(buf, n, &mlen), 0);
    assert_int_equal(mlen, 99); /* untouched until whole */
    assert_int_equal(grpc_frame_parse(buf, sizeof buf, &mlen), (int)sizeof buf);
    /* an empty message is whole with its prefix alone */
    grpc_frame_put_prefix(buf, 0);
    assert_int_equal(grpc_frame_parse(buf, GRPC_PREFIX_BYTES, &mlen), GRPC_PREFIX_BYTES);
    assert_int_equal(mlen, 0);
}

static void test_parse_refuses_compressed_and_oversized(void **state)
{
    (void)state;
    uint8_t buf[GRPC_PREFIX_BYTES] = {1, 0, 0, 0, 0};
    size_t mlen;
    assert_int_equal(grpc_frame_parse(buf, sizeof buf, &mlen), -EPROTONOSUPPORT);
    grpc_frame_put_prefix(buf, (size_t)GRPC_MAX_RECV_MESSAGE_BYTES + 1);
    assert_int_equal(grpc_frame_parse(buf, sizeof buf, &mlen), -EMSGSIZE);
    memset(buf, 0xff, sizeof buf);
    buf[0] = 0;
    assert_int_equal(grpc_frame_parse(buf, sizeof buf, &mlen), -EMSGSIZE);
}

static void check_decode(const char *in, const char *want)
{
    char *got = grpc_message_decode(in, strlen(in));
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void test_message_decode(void **state)
{
    (void)state;
    check_decode("etcdserver: mvcc: required revision has been compacted",
                 "etcdserver: mvcc: required revision has been compacted");
    check_decode("a%20b%25c%0A", "a b%c\n");
    check_decode("%E2%9C%93", "\xe2\x9c\x93");
    /* malformed escapes stay as they are */
    check_decode("100%", "100%");
    check_decode("%4", "%4");
    check_decode("%zz%4g", "%zz%4g");
    check_decode("", "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_round_trip),
        cmocka_unit_test(test_parse_waits_for_the_whole_message),
        cmocka_unit_test(test_parse_refuses_compressed_and_oversized),
        cmocka_unit_test(test_message_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
