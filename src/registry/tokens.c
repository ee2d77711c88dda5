/*
 * tokens.c - the token table (a hash by name, in creation order), creating
 * a token (by registry_create_token or a write of its _config/size) and
 * sweeping old ones.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/timeutil.h"

bool registry_valid_token_name(const char *name, size_t len)
{
    if (len == 0 || len > REGISTRY_MAX_TOKEN_BYTES || name[0] == '_' || name[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

reg_token_t *reg_find_token(registry_t *reg, const char *name, size_t len)
{
    reg_token_t *t = NULL;
    HASH_FIND(hh, reg->tokens, name, len, t);
    return t;
}

reg_token_t *reg_token_new(registry_t *reg, const char *name, size_t len, uint64_t index,
                           int64_t now_ns)
{
    reg_token_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->dir = reg_node_new(name, len, true, NULL, index);
    t->cap_events = 4; /* a token, its size and a few members */
    t->events = malloc(t->cap_events * sizeof *t->events);
    if (!t->dir || !t->events)
        goto fail;
    t->name = t->dir->name; /* the directory's name is the token's */
    t->created_ns = now_ns;
    /* uthash (HASH_NONFATAL_OOM) leaves the table as it was when it cannot
     * allocate: the count tells. */
    unsigned before = HASH_COUNT(reg->tokens);
    HASH_ADD_KEYPTR(hh, reg->tokens, t->name, len, t);
    if (HASH_COUNT(reg->tokens) != before + 1)
        goto fail;
    reg->n_tokens++;
    return t;
fail:
    free(t->events);
    if (t->dir)
        reg_node_free_tree(reg, t->dir);
    free(t);
    return NULL;
}

void reg_token_free(registry_t *reg, reg_token_t *t)
{
    for (reg_waiter_t *w = t->waiters; w;) {
        reg_waiter_t *next = w->next;
        free(w->key);
        w->key = NULL;
        w->token = NULL;
        w->next = w->prev = NULL;
        reg->n_waiters--;
        w = next;
    }
    free(t->events);
    reg_node_free_tree(reg, t->dir);
    free(t);
}

/* Resolves a key to its token. Errors: not inside a token, unknown token. */
reg_token_t *reg_lookup_token(registry_t *reg, const char *clean, const char **rest,
                              reg_result_t *out)
{
    const char *name;
    size_t len;
    if (!reg_split_token(clean, &name, &len, rest)) {
        reg_fail(reg, out, REG_E_KEY_NOT_FOUND, clean);
        return NULL;
    }
    reg_token_t *t = reg_find_token(reg, name, len);
    if (!t) {
        char *cause = strndup(clean, (size_t)(name + len - clean));
        reg_fail(reg, out, REG_E_KEY_NOT_FOUND, cause ? cause : clean);
        out->token_missing = true;
        free(cause);
    }
    return t;
}

/* Parses a token size the way etcd's discovery client does, with bounds. */
static bool parse_size(const char *value, unsigned *size)
{
    if (!value || !*value || strlen(value) > 9)
        return false;
    unsigned v = 0;
    for (const char *p = value; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v < REGISTRY_MIN_SIZE || v > REGISTRY_MAX_SIZE)
        return false;
    *size = v;
    return true;
}

/*
 * A write whose key is <token>/_config/size of a token that does not exist
 * yet creates the token. Returns true if it handled the request.
 */
bool reg_maybe_create_token(registry_t *reg, const char *clean, enum reg_action action, bool is_dir,
                            const char *value, int64_t now_ns, reg_result_t *out)
{
    const char *name, *rest;
    size_t len;
    if (!reg_split_token(clean, &name, &len, &rest) || strcmp(rest, "/_config/size") != 0 ||
        reg_find_token(reg, name, len))
        return false;
    if (!registry_valid_token_name(name, len)) {
        reg_fail(reg, out, REG_E_INVALID_FIELD,
                 "a token name is 1-64 characters of A-Z a-z 0-9 . _ - and starts with a letter or "
                 "digit");
        return true;
    }
    unsigned size;
    if (is_dir || !parse_size(value, &size)) {
        char msg[128];
        snprintf(msg, sizeof msg, "the size must be a whole number from %d to %d",
                 REGISTRY_MIN_SIZE, REGISTRY_MAX_SIZE);
        reg_fail(reg, out, REG_E_INVALID_FIELD, msg);
        return true;
    }
    char sv[16];
    snprintf(sv, sizeof sv, "%u", size);
    reg_event_t *ev =
        reg_event_new(action, reg->index + 1, now_ns, clean, false, sv, reg->index + 1, 0);
    if (!ev) {
        reg_fail_nomem(reg, out);
        return true;
    }
    reg_commit(reg, ev, out);
    return true;
}

static void create_token_op(registry_t *reg, const char *name, unsigned size, int64_t now_ns,
                            reg_result_t *out)
{
    memset(out, 0, sizeof *out);
    buf_t b = BUF_INIT;
    buf_printf(&b, "%s/%s/_config/size", REGISTRY_PREFIX, name);
    char sv[16];
    snprintf(sv, sizeof sv, "%u", size);
    if (buf_failed(&b)) {
        reg_fail_nomem(reg, out);
    } else if (reg_find_token(reg, name, strlen(name))) {
        reg_fail(reg, out, REG_E_NODE_EXIST, buf_cstr(&b));
    } else if (!reg_maybe_create_token(reg, buf_cstr(&b), REG_ACT_SET, false, sv, now_ns, out)) {
        reg_fail(reg, out, REG_E_INVALID_FIELD, "invalid token name");
    }
    buf_free(&b);
}

void registry_create_token(registry_t *reg, const char *name, unsigned size, int64_t now_ns,
                           reg_result_t *out)
{
    reg_op_t op = {.kind = REG_OP_CREATE_TOKEN, .key = (char *)name, .size = size};
    REG_WITH_OP(reg, &op, out, create_token_op(reg, name, size, now_ns, out));
}

/* Removes token `t` by age, from the registry only (the backend has it
 * removed already): its recent events, its watchers woken with NULL, a
 * tombstone to explain a later 404, a log line. */
static void remove_token_by_age(registry_t *reg, reg_token_t *t)
{
    reg_ring_forget(reg, t->events, t->n_events);
    /* Wake watchers: their token is gone. */
    while (t->waiters) {
        reg_waiter_t *w = t->waiters;
        reg_waiter_unlink(reg, w);
        w->on_event(w, NULL);
    }
    reg_token_summary_t sum;
    registry_token_summary(reg, t->name, strlen(t->name), &sum);
    char created[40];
    time_format_rfc3339nano(t->created_ns - t->created_ns % NS_PER_SEC, created);
    log_info("token %s expired: removed by age (created %s; %zu of %u members "
             "registered)",
             t->name, created, sum.members, sum.size);
    reg_tombstone_add(reg, t->name, t->created_ns, time_wall_ns());
    reg_token_remove(reg, t);
}

size_t registry_sweep_tokens(registry_t *reg, int64_t cutoff_ns, size_t max_tokens)
{
    REG_ASSERT_OWNER(reg);
    assert(!reg->busy);
    if (reg->backend && !reg->backend->ops->applies_on_propose) {
        /* etcd: every old token's removal is proposed (any instance may:
         * the backend's guard makes a second removal of one token change
         * nothing); the token goes when the backend delivers its removal
         * (registry_deliver_token_removal), on every instance alike. Until
         * then it stays, and the next sweep proposes it again. */
        size_t asked = 0;
        for (reg_token_t *t = reg->tokens; t && asked < max_tokens && t->created_ns < cutoff_ns;
             t = t->hh.next) {
            if (backend_remove_token(reg->backend, t->name, t->events, t->n_events) != 0)
                break; /* try again on the next sweep */
            asked++;
        }
        return 0; /* nothing removed yet */
    }
    size_t removed = 0;
    /* uthash iterates in insertion order, which is creation order: the
     * oldest tokens come first, so the sweep stops at the first young one. */
    while (removed < max_tokens && reg->tokens && reg->tokens->created_ns < cutoff_ns) {
        reg_token_t *t = reg->tokens;
        if (reg->backend &&
            backend_remove_token(reg->backend, t->name, t->events, t->n_events) != 0)
            break; /* try again on the next sweep */
        remove_token_by_age(reg, t);
        removed++;
    }
    return removed;
}

int registry_deliver_token_removal(registry_t *reg, const char *name, size_t len, uint64_t index)
{
    REG_ASSERT_OWNER(reg);
    assert(!reg->busy);
    if (index <= reg->index)
        return -EINVAL;
    reg_token_t *t = reg_find_token(reg, name, len);
    if (t)
        remove_token_by_age(reg, t);
    registry_advance(reg, index); /* and the writes waiting for it go */
    return 0;
}

void reg_token_remove(registry_t *reg, reg_token_t *t)
{
    HASH_DEL(reg->tokens, t);
    reg->n_tokens--;
    reg_token_free(reg, t);
}

/* The files directly in `dir`, hidden ones excluded. */
static size_t visible_files(const reg_node_t *dir)
{
    size_t n = 0;
    for (const reg_node_t *c = reg_node_first_child(dir); c; c = reg_node_next_sibling(c))
        n += !reg_node_is_hidden(c) && !reg_node_is_dir(c);
    return n;
}

bool registry_token_summary(registry_t *reg, const char *name, size_t len, reg_token_summary_t *out)
{
    REG_ASSERT_OWNER(reg);
    memset(out, 0, sizeof *out);
    reg_token_t *t = reg_find_token(reg, name, len);
    if (!t)
        return false;
    out->created_ns = t->created_ns;
    /* v2 members are the token's own files, v3 members (etcd's
     * v3discovery) the files of members/; a token serves one kind, so at
     * most one of the two counts is not 0. */
    const reg_node_t *v3 = reg_node_child(t->dir, "members", 7);
    out->members = visible_files(t->dir) + (v3 && reg_node_is_dir(v3) ? visible_files(v3) : 0);
    const reg_node_t *cfg = reg_node_child(t->dir, "_config", 7);
    const reg_node_t *sz = cfg ? reg_node_child(cfg, "size", 4) : NULL;
    unsigned size;
    if (sz && parse_size(reg_node_value(sz), &size))
        out->size = size;
    return true;
}
