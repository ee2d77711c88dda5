/*
 * grpc_frame.c - gRPC message framing and grpc-message decoding
 * (grpc_frame.h).
 */
#include "etcd/grpc_frame.h"

#include <errno.h>
#include <stdlib.h>

void grpc_frame_put_prefix(uint8_t *out, size_t len)
{
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

int grpc_frame_parse(const uint8_t *data, size_t len, size_t *msg_len)
{
    if (len < GRPC_PREFIX_BYTES)
        return 0;
    if (data[0] != 0)
        return -EPROTONOSUPPORT;
    size_t n = (size_t)data[1] << 24 | (size_t)data[2] << 16 | (size_t)data[3] << 8 | data[4];
    if (n > GRPC_MAX_RECV_MESSAGE_BYTES)
        return -EMSGSIZE;
    if (len - GRPC_PREFIX_BYTES < n)
        return 0;
    *msg_len = n;
    return (int)(GRPC_PREFIX_BYTES + n);
}

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

char *grpc_message_decode(const char *value, size_t len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        /* a malformed escape is kept as it is, as grpc-go does */
        if (value[i] == '%' && i + 2 < len && (hi = hex_value(value[i + 1])) >= 0 &&
            (lo = hex_value(value[i + 2])) >= 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = value[i];
        }
    }
    out[o] = '\0';
    return out;
}
