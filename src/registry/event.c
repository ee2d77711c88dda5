/*
 * event.c - events and the node snapshots they carry.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/timeutil.h"

const char *reg_action_name(enum reg_action action)
{
    static const char *const names[] = {
        [REG_ACT_GET] = "get",
        [REG_ACT_CREATE] = "create",
        [REG_ACT_SET] = "set",
        [REG_ACT_UPDATE] = "update",
        [REG_ACT_CAS] = "compareAndSwap",
        [REG_ACT_DELETE] = "delete",
        [REG_ACT_CAD] = "compareAndDelete",
        [REG_ACT_EXPIRE] = "expire",
    };
    return names[action];
}

void reg_snap_free(reg_snap_t *s)
{
    free(s->key);
    free(s->value);
}

/* etcd's node.Repr(false, false): the node without its children. */
int reg_snap_of(reg_snap_t *s, const reg_node_t *n, int64_t now_ns)
{
    memset(s, 0, sizeof *s);
    s->key = reg_node_key_dup(n);
    s->value = n->is_dir ? NULL : strdup(n->value);
    if (!s->key || (!n->is_dir && !s->value)) {
        reg_snap_free(s);
        return -ENOMEM;
    }
    s->is_dir = n->is_dir;
    s->created_index = n->created_index;
    s->modified_index = n->modified_index;
    s->expire_ns = n->expire_ns;
    s->ttl_s = time_ttl_left_s(n->expire_ns, now_ns);
    return 0;
}

void reg_event_free(reg_event_t *ev)
{
    if (!ev)
        return;
    reg_snap_free(&ev->node);
    if (ev->has_prev)
        reg_snap_free(&ev->prev);
    free(ev->wire);
    free(ev);
}

reg_event_t *reg_event_new(enum reg_action action, uint64_t index, int64_t now_ns, const char *key,
                           bool is_dir, const char *value, uint64_t created_index,
                           int64_t expire_ns)
{
    reg_event_t *ev = calloc(1, sizeof *ev);
    if (!ev)
        return NULL;
    ev->action = action;
    ev->index = index;
    ev->wall_ns = now_ns;
    ev->node.key = strdup(key);
    ev->node.value = value ? strdup(value) : NULL;
    if (!ev->node.key || (value && !ev->node.value)) {
        reg_event_free(ev);
        return NULL;
    }
    ev->node.is_dir = is_dir;
    ev->node.created_index = created_index;
    ev->node.modified_index = index;
    ev->node.expire_ns = expire_ns;
    ev->node.ttl_s = time_ttl_left_s(expire_ns, now_ns);
    return ev;
}

bool reg_is_removal(enum reg_action a)
{
    return a == REG_ACT_DELETE || a == REG_ACT_EXPIRE;
}
