/*
 * event.h - one change of the registry, as the registry, the backends (the
 * store's log, an etcd cluster) and the v2 renderer all see it.
 *
 * It lives apart from registry.h so that what only keeps or renders events
 * does not depend on the registry's operations.
 */
#ifndef DISCO_REGISTRY_EVENT_H
#define DISCO_REGISTRY_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum reg_action {
    REG_ACT_GET,
    REG_ACT_CREATE,
    REG_ACT_SET,
    REG_ACT_UPDATE,
    REG_ACT_CAS,
    REG_ACT_DELETE,
    REG_ACT_CAD,
    REG_ACT_EXPIRE,
};

/* etcd's action name ("create", "compareAndSwap", ...). */
const char *reg_action_name(enum reg_action action);

/* A node as an event carries it: a snapshot, independent of the live tree. */
typedef struct reg_snap {
    char *key;   /* full key, owned */
    char *value; /* owned; NULL for directories and for delete/expire nodes */
    bool is_dir;
    uint64_t created_index;
    uint64_t modified_index;
    int64_t expire_ns; /* wall-clock expiry; 0 = permanent */
    int64_t ttl_s;     /* seconds left when the event happened (0 = none) */
} reg_snap_t;

/* One change of the registry. The registry keeps recent events in memory
 * and reads older ones back from its backend (see backend/backend.h). */
typedef struct reg_event {
    enum reg_action action;
    uint64_t index;  /* global index of this change == node.modified_index */
    int64_t wall_ns; /* when it happened */
    reg_snap_t node;
    bool has_prev;
    reg_snap_t prev;
    /* The rendered v2 JSON answer for this event, cached by whoever renders
     * it first (see api/v2json.h); freed with the event. */
    char *wire;
    size_t wire_len;
} reg_event_t;

/* Frees an event that is not owned by a registry (e.g. a decoded one). */
void reg_event_free(reg_event_t *ev);

#endif
