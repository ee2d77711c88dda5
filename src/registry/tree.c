/*
 * tree.c - a token's key tree: nodes (children in creation order), the
 * child index of large directories, keys and the walk along them.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/timeutil.h"

/*
 * Go's path.Clean(path.Join("/", key)): duplicate slashes, trailing slashes,
 * "." and ".." resolved lexically. Returns a new string or NULL (no memory).
 */
char *reg_clean_key(const char *key)
{
    size_t len = strlen(key);
    char *out = malloc(len + 2);
    if (!out)
        return NULL;
    size_t o = 0;
    const char *p = key;
    while (*p) {
        while (*p == '/')
            p++;
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        size_t sl = (size_t)(p - seg);
        if (sl == 0 || (sl == 1 && seg[0] == '.'))
            continue;
        if (sl == 2 && seg[0] == '.' && seg[1] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--; /* drop the slash too */
            continue;
        }
        out[o++] = '/';
        memcpy(out + o, seg, sl);
        o += sl;
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return out;
}

char *reg_begin_op(registry_t *reg, const char *key, reg_result_t *out)
{
    REG_ASSERT_OWNER(reg);
    memset(out, 0, sizeof *out);
    char *clean = reg_clean_key(key);
    if (!clean)
        reg_fail_nomem(reg, out);
    return clean;
}

/*
 * Splits a clean key into its token name and the rest. Returns false when the
 * key is not inside a token (including the token-less prefix itself).
 */
bool reg_split_token(const char *key, const char **name, size_t *name_len, const char **rest)
{
    static const char prefix[] = REGISTRY_PREFIX "/";
    if (strncmp(key, prefix, sizeof prefix - 1) != 0)
        return false;
    const char *t = key + sizeof prefix - 1;
    const char *slash = strchr(t, '/');
    *name = t;
    *name_len = slash ? (size_t)(slash - t) : strlen(t);
    *rest = slash ? slash : t + *name_len;
    return *name_len > 0;
}

bool reg_rest_in_config(const char *rest)
{
    return strncmp(rest, "/_config", 8) == 0 && (rest[8] == '\0' || rest[8] == '/');
}

bool registry_key_in_config(const char *key)
{
    char *clean = reg_clean_key(key);
    const char *name, *rest;
    size_t len;
    bool in = clean && reg_split_token(clean, &name, &len, &rest) && reg_rest_in_config(rest);
    free(clean);
    return in;
}

void reg_node_put_key(const reg_node_t *n, buf_t *out)
{
    if (n->parent) {
        reg_node_put_key(n->parent, out);
        buf_putc(out, '/');
    } else {
        buf_puts(out, REGISTRY_PREFIX "/");
    }
    buf_puts(out, n->name);
}

const char *reg_node_name(const reg_node_t *n)
{
    return n->name;
}

/* The full key as a new string, or NULL when out of memory. */
char *reg_node_key_dup(const reg_node_t *n)
{
    buf_t b = BUF_INIT;
    reg_node_put_key(n, &b);
    if (buf_failed(&b)) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

const char *reg_node_value(const reg_node_t *n)
{
    return n->is_dir ? NULL : n->value;
}

bool reg_node_is_dir(const reg_node_t *n)
{
    return n->is_dir;
}

bool reg_node_is_hidden(const reg_node_t *n)
{
    return n->name[0] == '_';
}

uint64_t reg_node_created_index(const reg_node_t *n)
{
    return n->created_index;
}

uint64_t reg_node_modified_index(const reg_node_t *n)
{
    return n->modified_index;
}

int64_t reg_node_expire_ns(const reg_node_t *n)
{
    return n->expire_ns;
}

const reg_node_t *reg_node_first_child(const reg_node_t *n)
{
    return n->first_child;
}

const reg_node_t *reg_node_next_sibling(const reg_node_t *n)
{
    return n->next;
}

size_t reg_node_child_count(const reg_node_t *n)
{
    return n->n_children;
}

reg_node_t *reg_node_new(const char *name, size_t name_len, bool is_dir, const char *value,
                         uint64_t index)
{
    reg_node_t *n = calloc(1, sizeof *n + name_len + 1);
    if (!n)
        return NULL;
    n->value = is_dir ? NULL : strdup(value ? value : "");
    if (!is_dir && !n->value) {
        free(n);
        return NULL;
    }
    memcpy(n->name, name, name_len);
    n->name[name_len] = '\0';
    n->is_dir = is_dir;
    n->created_index = n->modified_index = index;
    return n;
}

static size_t name_hash(const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return (size_t)h;
}

static bool name_is(const reg_node_t *n, const char *name, size_t len)
{
    return strncmp(n->name, name, len) == 0 && n->name[len] == '\0';
}

static void index_put(child_index_t *ix, reg_node_t *n)
{
    size_t mask = ix->cap - 1, i = name_hash(n->name, strlen(n->name)) & mask;
    while (ix->slots[i])
        i = (i + 1) & mask;
    ix->slots[i] = n;
}

/* (Re)builds a directory's index for its current children; -ENOMEM keeps
 * the old one (lookups stay correct: the list is authoritative). */
static int index_build(reg_node_t *dir, size_t cap)
{
    child_index_t *ix = dir->index ? dir->index : calloc(1, sizeof *ix);
    reg_node_t **slots = ix ? calloc(cap, sizeof *slots) : NULL;
    if (!slots) {
        if (ix && !dir->index)
            free(ix);
        return -ENOMEM;
    }
    free(ix->slots);
    ix->slots = slots;
    ix->cap = cap;
    dir->index = ix;
    for (reg_node_t *c = dir->first_child; c; c = c->next)
        index_put(ix, c);
    return 0;
}

static void index_remove(child_index_t *ix, const reg_node_t *n)
{
    size_t mask = ix->cap - 1, i = name_hash(n->name, strlen(n->name)) & mask;
    while (ix->slots[i] && ix->slots[i] != n)
        i = (i + 1) & mask;
    if (!ix->slots[i])
        return;
    ix->slots[i] = NULL;
    /* Backward-shift: re-place the rest of the probe run. */
    for (size_t j = (i + 1) & mask; ix->slots[j]; j = (j + 1) & mask) {
        reg_node_t *m = ix->slots[j];
        ix->slots[j] = NULL;
        index_put(ix, m);
    }
}

static void index_free(reg_node_t *dir)
{
    if (dir->index) {
        free(dir->index->slots);
        free(dir->index);
        dir->index = NULL;
    }
}

void reg_node_link(reg_node_t *parent, reg_node_t *child)
{
    child->parent = parent;
    child->next = NULL;
    if (parent->last_child)
        parent->last_child->next = child;
    else
        parent->first_child = child;
    parent->last_child = child;
    parent->n_children++;
    child_index_t *ix = parent->index;
    if (ix && parent->n_children * 2 <= ix->cap)
        index_put(ix, child);
    else if (parent->n_children > CHILD_INDEX_MIN &&
             index_build(parent, ix ? ix->cap * 2 : 64) != 0)
        index_free(parent); /* no memory: fall back to scanning */
}

void reg_node_unlink(reg_node_t *n)
{
    reg_node_t *p = n->parent;
    if (!p)
        return;
    if (p->index)
        index_remove(p->index, n);
    reg_node_t *prev = NULL;
    for (reg_node_t *c = p->first_child; c != n; c = c->next)
        prev = c;
    if (prev)
        prev->next = n->next;
    else
        p->first_child = n->next;
    if (p->last_child == n)
        p->last_child = prev;
    p->n_children--;
    n->parent = n->next = NULL;
}

/* Frees a node and its subtree (already unlinked or being freed whole). */
void reg_node_free_tree(registry_t *reg, reg_node_t *n)
{
    reg_node_t *c = n->first_child;
    while (c) {
        reg_node_t *next = c->next;
        reg_node_free_tree(reg, c);
        c = next;
    }
    reg_heap_remove(reg, n);
    if (n->is_dir)
        index_free(n);
    else
        free(n->value);
    free(n);
}

reg_node_t *reg_node_child(const reg_node_t *dir, const char *name, size_t len)
{
    const child_index_t *ix = dir->index;
    if (ix) {
        size_t mask = ix->cap - 1;
        for (size_t i = name_hash(name, len) & mask; ix->slots[i]; i = (i + 1) & mask)
            if (name_is(ix->slots[i], name, len))
                return ix->slots[i];
        return NULL;
    }
    for (reg_node_t *c = dir->first_child; c; c = c->next)
        if (name_is(c, name, len))
            return c;
    return NULL;
}

/*
 * Walks `rest` (e.g. "/a/b") from the token directory, like etcd's
 * internalGet: a file in the middle is 104 Not a directory (cause: the
 * file), a missing segment is 100 Key not found (cause: the path up to it).
 */
reg_node_t *reg_walk(registry_t *reg, reg_token_t *t, const char *rest, reg_result_t *out)
{
    reg_node_t *n = t->dir;
    const char *p = rest;
    while (*p) {
        p++; /* the slash */
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        if (!n->is_dir) {
            reg_fail_at(reg, out, REG_E_NOT_DIR, n);
            return NULL;
        }
        reg_node_t *c = reg_node_child(n, seg, (size_t)(p - seg));
        if (!c) {
            buf_t b = BUF_INIT;
            reg_node_put_key(n, &b);
            buf_putc(&b, '/');
            buf_append(&b, seg, (size_t)(p - seg));
            reg_fail(reg, out, REG_E_KEY_NOT_FOUND, buf_cstr(&b));
            buf_free(&b);
            return NULL;
        }
        n = c;
    }
    return n;
}

size_t reg_subtree_size(const reg_node_t *n)
{
    size_t total = 1;
    for (const reg_node_t *c = n->first_child; c; c = c->next)
        total += reg_subtree_size(c);
    return total;
}
