/*
 * codec.h - the on-disk form of a registry event.
 *
 * A compact little-endian record, versioned by its first byte. Fields that
 * can be derived are not stored: the node's modifiedIndex is the event
 * index, the previous node has the same key, and TTLs left are recomputed
 * from the expiry instants and the event's own wall-clock time.
 */
#ifndef DISCO_STORE_CODEC_H
#define DISCO_STORE_CODEC_H

#include <stddef.h>

#include "registry/event.h"
#include "util/buf.h"

#define CODEC_VERSION 1

/* Appends the record for `ev` to `out` (check buf_failed). */
void codec_encode_event(buf_t *out, const reg_event_t *ev);

/*
 * Decodes a record into a new event (free with reg_event_free). Returns
 * NULL when the record is malformed (errno EINVAL) or memory runs out
 * (ENOMEM).
 */
reg_event_t *codec_decode_event(const void *data, size_t len);

#endif
