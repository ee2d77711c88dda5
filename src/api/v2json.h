/*
 * v2json.h - etcd v2 answers on the wire: events, node trees and errors.
 *
 * The byte layout follows etcd 3.4's Go structs exactly (field order, which
 * fields are omitted when empty, Go's string escaping, a trailing newline),
 * because real members parse these answers and the differential test
 * compares them with a real etcd.
 */
#ifndef DISCO_API_V2JSON_H
#define DISCO_API_V2JSON_H

#include <stdbool.h>
#include <stdint.h>

#include "registry/registry.h"
#include "util/buf.h"

/* etcd's message for an error code ("Key not found", ...). */
const char *v2json_error_message(int code);
/* etcd's HTTP status for an error code (404, 412, 403, 401, 500 or 400). */
int v2json_error_status(int code);

/* {"errorCode":N,"message":M,"cause":C,"index":I}\n ("cause" omitted if empty). */
void v2json_error(buf_t *b, int code, const char *cause, uint64_t index);

/*
 * {"action":A,"node":{...},"prevNode":{...}}\n for a write or watch event.
 * With `no_value`, etcd's noValueOnSuccess: only {"action":A}.
 */
void v2json_event(buf_t *b, const reg_event_t *ev, bool no_value);

/*
 * The cached rendering of an event (see reg_event_t.wire): renders on first
 * use. Returns false when out of memory.
 */
bool v2json_event_wire(reg_event_t *ev, const char **data, size_t *len);

/*
 * {"action":"get","node":{...}}\n for a read of a live node. Returns whether
 * the answer shows a TTL: then it depends on `now_ns` (the seconds left),
 * not only on the tree.
 */
bool v2json_get(buf_t *b, const reg_node_t *n, bool recursive, bool sorted, int64_t now_ns);

#endif
