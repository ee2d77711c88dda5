/*
 * ops.c - the etcd v2 operations (server/etcdserver/api/v2store): each
 * validates against the live tree and builds one event, which reg_commit()
 * makes happen. Nothing here changes a tree.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/timeutil.h"

static bool write_forbidden(registry_t *reg, const char *rest, const char *clean,
                            reg_result_t *out);

void registry_get(registry_t *reg, const char *key, int64_t now_ns, reg_result_t *out)
{
    char *clean = reg_begin_op(reg, key, out);
    if (!clean)
        return;
    const char *rest;
    reg_token_t *t = reg_lookup_token(reg, clean, &rest, out);
    reg_node_t *n = t ? reg_walk(reg, t, rest, out) : NULL;
    if (n) {
        out->err = REG_OK;
        out->index = reg->index;
        out->node = n;
        out->now_ns = now_ns;
        if (t->n_events)
            out->stamp = t->events[t->n_events - 1];
    }
    free(clean);
}

static int64_t expiry_of(reg_ttl_t ttl, int64_t now_ns)
{
    if (!ttl.has_ttl)
        return 0;
    uint64_t max_s = (uint64_t)(INT64_MAX - now_ns) / NS_PER_SEC;
    uint64_t s = ttl.ttl_s > max_s ? max_s : ttl.ttl_s;
    return now_ns + (int64_t)s * NS_PER_SEC;
}

bool reg_inorder_scan(const reg_node_t *dir, uint64_t *highest)
{
    bool only_inorder = true;
    uint64_t high = 0;
    for (const reg_node_t *c = dir ? dir->first_child : NULL; c; c = c->next) {
        if (c->name[0] < '0' || c->name[0] > '9')
            continue;
        size_t len = strspn(c->name, "0123456789");
        /* A name from 10^19 up is no index a store here hands out (etcd
         * revisions are int64) and may be beyond 2^64 - 1: no in-order
         * name could be made to sort after it, so it is a name like any
         * other that starts with a digit. */
        if (len != REG_INORDER_NAME_LEN || c->name[len] != '\0' || c->name[0] != '0') {
            only_inorder = false;
            continue;
        }
        uint64_t v = strtoull(c->name, NULL, 10);
        if (v > high)
            high = v;
    }
    if (highest)
        *highest = high;
    return only_inorder;
}

/*
 * The number of a new in-order key in directory `clean`. etcd's v2 names
 * it by its createdIndex: the registry's next index, which is exact when
 * the registry assigns indexes (local store). A backend that applies on
 * delivery decides the index later, so several POSTs in flight at once
 * would all guess the same one: there the name is also above every name
 * handed out and every in-order name the directory holds, and the
 * backend's guard (BACKEND_GUARD_IN_ORDER) keeps names in creation order.
 */
static uint64_t inorder_name(registry_t *reg, const char *clean, uint64_t next)
{
    if (!reg->backend || reg->backend->ops->applies_on_propose)
        return next;
    const char *name, *rest;
    size_t len;
    reg_token_t *t =
        reg_split_token(clean, &name, &len, &rest) ? reg_find_token(reg, name, len) : NULL;
    reg_node_t *dir = NULL;
    if (t) {
        reg_result_t probe = {0};
        dir = reg_walk(reg, t, rest, &probe);
        reg_result_clear(&probe);
    }
    uint64_t held = 0;
    if (dir && dir->is_dir)
        reg_inorder_scan(dir, &held);
    uint64_t n = next;
    if (n <= reg->inorder_high)
        n = reg->inorder_high + 1;
    if (n <= held)
        n = held + 1;
    /* A POST that lost to another instance's jumps ahead, further each
     * time: that instance's next names climb by one a round trip, and a
     * name above them wins whichever lands first (a lower name landing
     * later passes too, and sorts before it as it was created before). */
    unsigned losses = reg_retry_losses(reg);
    if (losses)
        n += (uint64_t)1 << (losses < 10 ? losses : 10);
    /* A name from 10^19 up follows a client's own name there (see
     * reg_inorder_scan): it is not remembered, or every later POST of this
     * instance, in every directory, would be named above it. */
    if (n < 10000000000000000000ULL)
        reg->inorder_high = n;
    return n;
}

/* etcd's internalCreate; `replace` is Set's "overwrite a file". */
static void create_or_set(registry_t *reg, const char *key, bool is_dir, const char *value,
                          bool unique, enum reg_action action, reg_ttl_t ttl, int64_t now_ns,
                          reg_result_t *out)
{
    char *clean = reg_begin_op(reg, key, out);
    if (!clean)
        return;
    uint64_t next = reg->index + 1;
    if (unique) {
        char *k = malloc(strlen(clean) + 24);
        if (!k) {
            free(clean);
            reg_fail_nomem(reg, out);
            return;
        }
        sprintf(k, "%s/%020llu", strcmp(clean, "/") == 0 ? "" : clean,
                (unsigned long long)inorder_name(reg, clean, next));
        free(clean);
        clean = k;
    }
    if (reg_maybe_create_token(reg, clean, action, is_dir, value, now_ns, out)) {
        free(clean);
        return;
    }
    const char *rest;
    reg_token_t *t = reg_lookup_token(reg, clean, &rest, out);
    if (!t || write_forbidden(reg, rest, clean, out)) {
        free(clean);
        return;
    }
    bool replace = action == REG_ACT_SET;
    reg_node_t *prev = NULL;
    if (replace) {
        /* Set looks the key up first: a file on the way is 104, missing is fine. */
        reg_result_t probe = {0};
        prev = reg_walk(reg, t, rest, &probe);
        if (!prev && probe.err != REG_E_KEY_NOT_FOUND) {
            *out = probe;
            free(clean);
            return;
        }
        reg_result_clear(&probe);
    }
    /* Walk the parent path: a file on the way is 104 Not a directory, with
     * the file as the cause (etcd's checkDir). */
    reg_node_t *dir = t->dir;
    const char *p = rest, *leaf = rest;
    while (*p) {
        p++;
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        if (!*p) {
            leaf = seg;
            break;
        }
        reg_node_t *c = reg_node_child(dir, seg, (size_t)(p - seg));
        if (!c)
            break; /* the rest is made by apply_change() */
        if (!c->is_dir) {
            reg_fail_at(reg, out, REG_E_NOT_DIR, c);
            free(clean);
            return;
        }
        dir = c;
    }
    reg_node_t *existing = *p == '\0' ? reg_node_child(dir, leaf, strlen(leaf)) : NULL;
    /* Keys this write adds: the missing directories on the way and the leaf. */
    size_t adding = 0;
    if (*p) {
        adding = 1;
        for (const char *q = p; *q; q++)
            adding += *q == '/';
        /* p stops after the first missing segment: count it and the rest */
    } else if (!existing) {
        adding = 1;
    }
    if (adding && t->n_keys + adding > reg->max_keys) {
        buf_t b = BUF_INIT;
        buf_printf(&b, "token %s holds %zu keys, the most allowed; use a new token", t->name,
                   t->n_keys);
        reg_fail(reg, out, REG_E_TOO_MANY_KEYS, buf_cstr(&b));
        buf_free(&b);
        free(clean);
        return;
    }
    if (existing && !replace) {
        reg_fail(reg, out, REG_E_NODE_EXIST, clean);
        free(clean);
        return;
    }
    if (existing && existing->is_dir) {
        reg_fail(reg, out, REG_E_NOT_FILE, clean);
        free(clean);
        return;
    }
    int64_t expire_ns = expiry_of(ttl, now_ns);
    reg_event_t *ev = reg_event_new(action, next, now_ns, clean, is_dir,
                                    is_dir ? NULL : (value ? value : ""), next, expire_ns);
    if (ev && existing) {
        ev->has_prev = true;
        if (reg_snap_of(&ev->prev, existing, now_ns) != 0) {
            ev->has_prev = false;
            reg_event_free(ev);
            ev = NULL;
        }
    }
    free(clean);
    if (!ev) {
        reg_fail_nomem(reg, out);
        return;
    }
    reg_commit(reg, ev, out);
}

/* The public writes below name themselves as a reg_op_t first: a backend
 * that applies on delivery may need to run them again (deliver.c). */
void registry_create(registry_t *reg, const char *key, bool is_dir, const char *value, bool unique,
                     reg_ttl_t ttl, int64_t now_ns, reg_result_t *out)
{
    reg_op_t op = {.kind = REG_OP_CREATE,
                   .key = (char *)key,
                   .value = (char *)value,
                   .is_dir = is_dir,
                   .unique = unique,
                   .ttl = ttl};
    REG_WITH_OP(reg, &op, out,
                create_or_set(reg, key, is_dir, value, unique, REG_ACT_CREATE, ttl, now_ns, out));
}

void registry_set(registry_t *reg, const char *key, bool is_dir, const char *value, reg_ttl_t ttl,
                  int64_t now_ns, reg_result_t *out)
{
    reg_op_t op = {.kind = REG_OP_SET,
                   .key = (char *)key,
                   .value = (char *)value,
                   .is_dir = is_dir,
                   .ttl = ttl};
    REG_WITH_OP(reg, &op, out,
                create_or_set(reg, key, is_dir, value, false, REG_ACT_SET, ttl, now_ns, out));
}

/* Finds an existing node for update/CAS/delete; NULL with `out` filled. */
static reg_node_t *existing_for_write(registry_t *reg, const char *clean, reg_result_t *out)
{
    const char *rest;
    reg_token_t *t = reg_lookup_token(reg, clean, &rest, out);
    if (!t)
        return NULL;
    reg_node_t *n = reg_walk(reg, t, rest, out);
    if (!n)
        return NULL;
    if (write_forbidden(reg, rest, clean, out))
        return NULL;
    return n;
}

/* Builds and commits an event that rewrites or removes node `n`. */
void reg_commit_change(registry_t *reg, reg_node_t *n, enum reg_action action, const char *value,
                       int64_t expire_ns, int64_t now_ns, reg_result_t *out)
{
    uint64_t next = reg->index + 1;
    bool removal = action == REG_ACT_DELETE || action == REG_ACT_CAD || action == REG_ACT_EXPIRE;
    const char *v = removal || n->is_dir ? NULL : (value ? value : "");
    char *key = reg_node_key_dup(n);
    reg_event_t *ev = !key ? NULL
                           : reg_event_new(action, next, now_ns, key, n->is_dir, v,
                                           n->created_index, removal ? 0 : expire_ns);
    free(key);
    if (ev) {
        ev->has_prev = true;
        if (reg_snap_of(&ev->prev, n, now_ns) != 0) {
            ev->has_prev = false;
            reg_event_free(ev);
            ev = NULL;
        }
    }
    if (!ev) {
        reg_fail_nomem(reg, out);
        return;
    }
    reg_commit(reg, ev, out);
}

static void update_op(registry_t *reg, const char *key, const char *value, reg_ttl_t ttl,
                      int64_t now_ns, reg_result_t *out)
{
    char *clean = reg_begin_op(reg, key, out);
    if (!clean)
        return;
    reg_node_t *n = existing_for_write(reg, clean, out);
    if (n && n->is_dir && value && *value)
        reg_fail(reg, out, REG_E_NOT_FILE, clean);
    else if (n)
        reg_commit_change(reg, n, REG_ACT_UPDATE, value, expiry_of(ttl, now_ns), now_ns, out);
    free(clean);
}

void registry_update(registry_t *reg, const char *key, const char *value, reg_ttl_t ttl,
                     int64_t now_ns, reg_result_t *out)
{
    reg_op_t op = {.kind = REG_OP_UPDATE, .key = (char *)key, .value = (char *)value, .ttl = ttl};
    REG_WITH_OP(reg, &op, out, update_op(reg, key, value, ttl, now_ns, out));
}

/* etcd's getCompareFailCause. */
static char *compare_cause(const reg_node_t *n, const char *prev_value, uint64_t prev_index)
{
    bool index_ok = prev_index == 0 || n->modified_index == prev_index;
    bool value_ok = !*prev_value || strcmp(n->value, prev_value) == 0;
    buf_t b = BUF_INIT;
    if (!value_ok)
        buf_printf(&b, "[%s != %s]", prev_value, n->value);
    if (!value_ok && !index_ok)
        buf_putc(&b, ' ');
    if (!index_ok)
        buf_printf(&b, "[%llu != %llu]", (unsigned long long)prev_index,
                   (unsigned long long)n->modified_index);
    return buf_failed(&b) ? (buf_free(&b), NULL) : buf_steal(&b);
}

/* Runs the compare of CAS/CAD; false with `out` filled when it fails. */
static bool compare_ok(registry_t *reg, const reg_node_t *n, const char *clean,
                       const char *prev_value, uint64_t prev_index, reg_result_t *out)
{
    if (n->is_dir) {
        reg_fail(reg, out, REG_E_NOT_FILE, clean);
        return false;
    }
    bool index_ok = prev_index == 0 || n->modified_index == prev_index;
    bool value_ok = !*prev_value || strcmp(n->value, prev_value) == 0;
    if (index_ok && value_ok)
        return true;
    char *cause = compare_cause(n, prev_value, prev_index);
    if (!cause) {
        reg_fail_nomem(reg, out);
        return false;
    }
    reg_fail(reg, out, REG_E_TEST_FAILED, cause);
    free(cause);
    return false;
}

static void cas_op(registry_t *reg, const char *key, const char *prev_value, uint64_t prev_index,
                   const char *value, reg_ttl_t ttl, int64_t now_ns, reg_result_t *out)
{
    char *clean = reg_begin_op(reg, key, out);
    if (!clean)
        return;
    reg_node_t *n = existing_for_write(reg, clean, out);
    if (n && compare_ok(reg, n, clean, prev_value ? prev_value : "", prev_index, out))
        reg_commit_change(reg, n, REG_ACT_CAS, value, expiry_of(ttl, now_ns), now_ns, out);
    free(clean);
}

void registry_compare_and_swap(registry_t *reg, const char *key, const char *prev_value,
                               uint64_t prev_index, const char *value, reg_ttl_t ttl,
                               int64_t now_ns, reg_result_t *out)
{
    reg_op_t op = {.kind = REG_OP_CAS,
                   .key = (char *)key,
                   .value = (char *)value,
                   .prev_value = (char *)prev_value,
                   .prev_index = prev_index,
                   .ttl = ttl};
    REG_WITH_OP(reg, &op, out, cas_op(reg, key, prev_value, prev_index, value, ttl, now_ns, out));
}

static void delete_op(registry_t *reg, const char *key, bool is_dir, bool recursive, int64_t now_ns,
                      reg_result_t *out)
{
    char *clean = reg_begin_op(reg, key, out);
    if (!clean)
        return;
    if (recursive)
        is_dir = true;
    reg_node_t *n = existing_for_write(reg, clean, out);
    if (n && n->is_dir && !is_dir)
        reg_fail(reg, out, REG_E_NOT_FILE, clean);
    else if (n && n->is_dir && n->n_children && !recursive)
        reg_fail(reg, out, REG_E_DIR_NOT_EMPTY, clean);
    else if (n)
        reg_commit_change(reg, n, REG_ACT_DELETE, NULL, 0, now_ns, out);
    free(clean);
}

void registry_delete(registry_t *reg, const char *key, bool is_dir, bool recursive, int64_t now_ns,
                     reg_result_t *out)
{
    reg_op_t op = {
        .kind = REG_OP_DELETE, .key = (char *)key, .is_dir = is_dir, .recursive = recursive};
    REG_WITH_OP(reg, &op, out, delete_op(reg, key, is_dir, recursive, now_ns, out));
}

static void cad_op(registry_t *reg, const char *key, const char *prev_value, uint64_t prev_index,
                   int64_t now_ns, reg_result_t *out)
{
    char *clean = reg_begin_op(reg, key, out);
    if (!clean)
        return;
    reg_node_t *n = existing_for_write(reg, clean, out);
    if (n && compare_ok(reg, n, clean, prev_value ? prev_value : "", prev_index, out))
        reg_commit_change(reg, n, REG_ACT_CAD, NULL, 0, now_ns, out);
    free(clean);
}

void registry_compare_and_delete(registry_t *reg, const char *key, const char *prev_value,
                                 uint64_t prev_index, int64_t now_ns, reg_result_t *out)
{
    reg_op_t op = {.kind = REG_OP_CAD,
                   .key = (char *)key,
                   .prev_value = (char *)prev_value,
                   .prev_index = prev_index};
    REG_WITH_OP(reg, &op, out, cad_op(reg, key, prev_value, prev_index, now_ns, out));
}

/* The writes a token refuses: its directory, and _config once it exists. */
static bool write_forbidden(registry_t *reg, const char *rest, const char *clean, reg_result_t *out)
{
    if (*rest == '\0') {
        buf_t b = BUF_INIT;
        buf_printf(&b, "%s is a token directory; it is removed only when the token expires", clean);
        reg_fail(reg, out, REG_E_ROOT_READ_ONLY, buf_cstr(&b));
        buf_free(&b);
        return true;
    }
    if (reg_rest_in_config(rest)) {
        if (strcmp(rest, "/_config/size") == 0) {
            reg_fail(reg, out, REG_E_NODE_EXIST, clean); /* the size never changes */
        } else {
            buf_t b = BUF_INIT;
            buf_printf(&b, "%s is read-only: _config holds only the size", clean);
            reg_fail(reg, out, REG_E_ROOT_READ_ONLY, buf_cstr(&b));
            buf_free(&b);
        }
        return true;
    }
    return false;
}
