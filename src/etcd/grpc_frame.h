/*
 * grpc_frame.h - gRPC's length-prefixed messages and grpc-message text
 * (the gRPC over HTTP/2 spec), for a client of etcd.
 *
 * A message on the wire is one flag byte (0: not compressed), a 4-byte
 * big-endian length, then the protobuf bytes. Nothing here allocates
 * except grpc_message_decode().
 */
#ifndef DISCO_ETCD_GRPC_FRAME_H
#define DISCO_ETCD_GRPC_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define GRPC_PREFIX_BYTES 5
/* What we send at most: etcd's default --max-request-bytes is 1.5 MiB,
 * grpc-go's receive limit in etcd is that plus a margin; 4 MiB bounds it. */
#define GRPC_MAX_SEND_MESSAGE_BYTES (4u * 1024 * 1024)
/* What we accept at most: a Range over a large prefix (clientv3 allows
 * 2 GiB; disco's prefix holds far less). */
#define GRPC_MAX_RECV_MESSAGE_BYTES (256u * 1024 * 1024)

/* Writes the 5-byte prefix of an uncompressed message of `len` bytes. */
void grpc_frame_put_prefix(uint8_t *out, size_t len);

/*
 * Looks at the message starting at `data` (`len` bytes available). 0: not
 * whole yet; > 0: the bytes the whole framed message takes (prefix
 * included), its payload length in *msg_len; -EPROTONOSUPPORT: compressed
 * (we never offer an encoding); -EMSGSIZE: longer than
 * GRPC_MAX_RECV_MESSAGE_BYTES.
 */
int grpc_frame_parse(const uint8_t *data, size_t len, size_t *msg_len);

/* grpc-message's percent-encoding undone; malloc'd, NUL-terminated; NULL
 * when out of memory. */
char *grpc_message_decode(const char *value, size_t len);

#endif
