/*
 * etcd_layout.c - the registry in an etcd keyspace: keys, the action
 * marker, the guarded transaction of a change, and a revision's events read
 * back into one change (see etcd_layout.h for the layout).
 */
#include "backend/etcd_layout.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/timeutil.h"

static const char registry_prefix[] = REGISTRY_PREFIX "/";

/* buf_t's result as a new string, or NULL (and the buffer freed). */
static char *finish(buf_t *b)
{
    if (buf_failed(b)) {
        buf_free(b);
        return NULL;
    }
    return buf_steal(b);
}

static char *layout_key(const char *prefix, char kind, const char *v2key, bool is_dir)
{
    size_t plen = sizeof registry_prefix - 1;
    if (strncmp(v2key, registry_prefix, plen) != 0 || v2key[plen] == '\0')
        return NULL;
    buf_t b = BUF_INIT;
    buf_printf(&b, "%s%c/%s", prefix, kind, v2key + plen);
    if (is_dir)
        buf_putc(&b, '/');
    return finish(&b);
}

char *etcd_layout_key(const char *prefix, const char *v2key, bool is_dir)
{
    return layout_key(prefix, 'k', v2key, is_dir);
}

char *etcd_layout_created_key(const char *prefix, const char *v2key)
{
    return layout_key(prefix, 'c', v2key, false);
}

static char *v2_key_of(const char *prefix, char kind, const char *key, size_t len, bool *is_dir)
{
    size_t plen = strlen(prefix);
    if (len < plen + 3 || memcmp(key, prefix, plen) != 0 || key[plen] != kind ||
        key[plen + 1] != '/')
        return NULL;
    const char *rest = key + plen + 2;
    size_t rlen = len - plen - 2;
    *is_dir = rest[rlen - 1] == '/';
    if (*is_dir)
        rlen--;
    if (rlen == 0)
        return NULL;
    buf_t b = BUF_INIT;
    buf_puts(&b, registry_prefix);
    buf_append(&b, rest, rlen);
    return finish(&b);
}

char *etcd_layout_v2_key(const char *prefix, const char *key, size_t len, bool *is_dir)
{
    return v2_key_of(prefix, 'k', key, len, is_dir);
}

char *etcd_layout_v2_key_of_created(const char *prefix, const char *key, size_t len)
{
    bool is_dir;
    char *k = v2_key_of(prefix, 'c', key, len, &is_dir);
    if (k && is_dir) {
        free(k);
        return NULL;
    }
    return k;
}

static char *keyed(const char *prefix, const char *kind, const char *token, size_t len)
{
    buf_t b = BUF_INIT;
    buf_printf(&b, "%s%s", prefix, kind);
    buf_append(&b, token, len);
    return finish(&b);
}

char *etcd_layout_version_key(const char *prefix, const char *token, size_t token_len)
{
    return keyed(prefix, "v/", token, token_len);
}

char *etcd_layout_meta_key(const char *prefix, const char *token, size_t token_len)
{
    return keyed(prefix, "m/", token, token_len);
}

char *etcd_layout_marker_key(const char *prefix)
{
    return keyed(prefix, "act", "", 0);
}

char *etcd_layout_index_base_key(const char *prefix)
{
    return keyed(prefix, "index_base", "", 0);
}

bool etcd_layout_parse_index_base(const char *value, size_t len, int64_t *base)
{
    /* A signed decimal that fits int64_t, nothing else (no spaces). */
    char digits[24];
    if (len == 0 || len >= sizeof digits)
        return false;
    memcpy(digits, value, len);
    digits[len] = '\0';
    size_t i = digits[0] == '-' ? 1 : 0;
    if (digits[i] == '\0')
        return false;
    for (; digits[i]; i++)
        if (digits[i] < '0' || digits[i] > '9')
            return false;
    errno = 0;
    char *end;
    long long v = strtoll(digits, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *base = (int64_t)v;
    return true;
}

char *etcd_layout_prefix_end(const char *key)
{
    size_t len = strlen(key);
    char *end = strdup(key);
    if (!end)
        return NULL;
    /* Raise the last byte that can be raised; 0xff bytes drop off (etcd's
     * GetPrefixRangeEnd). Our keys are printable, so this is the last one. */
    while (len > 0) {
        unsigned char c = (unsigned char)end[len - 1];
        if (c < 0xff) {
            end[len - 1] = (char)(c + 1);
            end[len] = '\0';
            return end;
        }
        len--;
    }
    end[0] = '\0'; /* every key */
    return end;
}

static char *marker_with_expiry(enum reg_action action, const char *instance, uint64_t seq,
                                const char *v2key, bool is_dir, int64_t expire_ns)
{
    buf_t b = BUF_INIT;
    buf_printf(&b, "%s %s %" PRIu64 " %c", reg_action_name(action), instance, seq,
               is_dir ? 'D' : 'F');
    if (expire_ns > 0)
        buf_printf(&b, "@%" PRId64, expire_ns);
    buf_printf(&b, " %s", v2key);
    return finish(&b);
}

char *etcd_layout_marker(enum reg_action action, const char *instance, uint64_t seq,
                         const char *v2key, bool is_dir)
{
    return marker_with_expiry(action, instance, seq, v2key, is_dir, 0);
}

static const char gc_action[] = "gc";

char *etcd_layout_gc_marker(const char *instance, const char *token)
{
    buf_t b = BUF_INIT;
    buf_printf(&b, "%s %s %s", gc_action, instance, token);
    return finish(&b);
}

static bool action_of(const char *name, size_t len, enum reg_action *out)
{
    for (int a = REG_ACT_CREATE; a <= REG_ACT_EXPIRE; a++) {
        const char *n = reg_action_name((enum reg_action)a);
        if (strlen(n) == len && memcmp(n, name, len) == 0) {
            *out = (enum reg_action)a;
            return true;
        }
    }
    return false;
}

/* The next space-separated field of [*p, end); false at the end. */
static bool field(const char **p, const char *end, const char **f, size_t *flen)
{
    const char *s = *p;
    const char *sp = memchr(s, ' ', (size_t)(end - s));
    if (!sp)
        return false;
    *f = s;
    *flen = (size_t)(sp - s);
    *p = sp + 1;
    return *flen > 0;
}

/* 1 to `max_digits` digits and nothing else; false otherwise. With 20
 * digits (a uint64's longest) the value may wrap: callers that need a range
 * check it themselves, or take at most 19. */
static bool parse_digits(const char *f, size_t flen, size_t max_digits, uint64_t *out)
{
    if (flen == 0 || flen > max_digits)
        return false;
    uint64_t n = 0;
    for (size_t i = 0; i < flen; i++) {
        if (f[i] < '0' || f[i] > '9')
            return false;
        n = n * 10 + (uint64_t)(f[i] - '0');
    }
    *out = n;
    return true;
}

/* Digits only, at most 19 (fits int64); false otherwise. */
static bool parse_decimal(const char *f, size_t flen, uint64_t *out)
{
    return parse_digits(f, flen, 19, out);
}

bool etcd_layout_parse_meta(const char *prefix, const char *key, size_t key_len, const char *value,
                            size_t value_len, const char **token, size_t *token_len,
                            int64_t *created_ns)
{
    size_t plen = strlen(prefix);
    uint64_t ns;
    if (key_len <= plen + 2 || memcmp(key, prefix, plen) != 0 || memcmp(key + plen, "m/", 2) != 0 ||
        !value || !parse_decimal(value, value_len, &ns) || ns > INT64_MAX)
        return false;
    *token = key + plen + 2;
    *token_len = key_len - plen - 2;
    *created_ns = (int64_t)ns;
    return true;
}

bool etcd_layout_parse_marker(const char *value, size_t len, enum reg_action *action,
                              char *instance, size_t instance_size, uint64_t *seq, char **v2key,
                              bool *is_dir, int64_t *expire_ns)
{
    *v2key = NULL;
    *expire_ns = 0;
    const char *p = value, *end = value + len, *f;
    size_t flen;
    if (!field(&p, end, &f, &flen) || !action_of(f, flen, action))
        return false;
    if (!field(&p, end, &f, &flen) || flen >= instance_size)
        return false;
    memcpy(instance, f, flen);
    instance[flen] = '\0';
    /* A proposal's seq counts from 1: 19 digits are more than any makes,
     * and a longer field would wrap into another proposal's seq. */
    if (!field(&p, end, &f, &flen) || !parse_decimal(f, flen, seq))
        return false;
    if (!field(&p, end, &f, &flen) || (f[0] != 'D' && f[0] != 'F'))
        return false;
    *is_dir = f[0] == 'D';
    if (flen > 1) { /* "F@<expire ns>": a key with a TTL */
        uint64_t ns;
        if (f[1] != '@' || !parse_decimal(f + 2, flen - 2, &ns) || ns == 0 || ns > INT64_MAX)
            return false;
        *expire_ns = (int64_t)ns;
    }
    if (p >= end || *p != '/')
        return false;
    *v2key = strndup(p, (size_t)(end - p));
    return *v2key != NULL;
}

/* ---- plans ---------------------------------------------------------------- */

void etcd_txn_plan_free(etcd_txn_plan_t *plan)
{
    for (size_t i = 0; i < plan->n_cmps; i++) {
        free(plan->cmps[i].key);
        free(plan->cmps[i].range_end);
    }
    for (size_t i = 0; i < plan->n_success; i++) {
        free(plan->success[i].key);
        free(plan->success[i].value);
    }
    free(plan->success);
    for (size_t i = 0; i < plan->n_failure; i++)
        free(plan->failure[i].key);
    memset(plan, 0, sizeof *plan);
}

/* Adders: each takes `key` (owned, may be NULL = out of memory). */
static int add_cmp(etcd_txn_plan_t *plan, enum etcd_cmp_kind kind, char *key, int64_t rev)
{
    assert(plan->n_cmps < ETCD_PLAN_MAX_CMPS);
    if (!key)
        return -ENOMEM;
    plan->cmps[plan->n_cmps++] = (etcd_cmp_t){kind, key, rev, NULL};
    return 0;
}

/*
 * The compares of an in-order key (BACKEND_GUARD_IN_ORDER) `v2key` below
 * the token that starts at `token` (`token_len` bytes): its directory is
 * not a file (unless it is the token's), and no key of the directory from
 * the new key's name to the end of the names starting with a digit exists
 * (in-order names are digits only, so a higher one sorts there; a key
 * below one, P k/.../<name>/..., too).
 */
static int add_in_order_cmps(const char *prefix, const char *v2key, const char *token,
                             size_t token_len, etcd_txn_plan_t *plan)
{
    const char *leaf = strrchr(v2key, '/');
    assert(leaf && leaf > token + token_len - 1);
    char *dir = strndup(v2key, (size_t)(leaf - v2key));
    if (!dir)
        return -ENOMEM;
    int rc = 0;
    if (leaf != token + token_len) /* a directory below the token */
        rc = add_cmp(plan, ETCD_CMP_CREATE_EQ, etcd_layout_key(prefix, dir, false), 0);
    char *digits = NULL, *last = NULL, *end = NULL;
    if (rc == 0) {
        digits = malloc(strlen(dir) + 3);
        if (digits)
            sprintf(digits, "%s/9", dir);
        last = digits ? etcd_layout_key(prefix, digits, false) : NULL;
        end = last ? etcd_layout_prefix_end(last) : NULL;
        rc = add_cmp(plan, ETCD_CMP_CREATE_EQ, end ? etcd_layout_key(prefix, v2key, false) : NULL,
                     0);
    }
    if (rc == 0) {
        plan->cmps[plan->n_cmps - 1].range_end = end;
        end = NULL;
    }
    free(end);
    free(last);
    free(digits);
    free(dir);
    return rc;
}

static int add_op(etcd_txn_plan_t *plan, size_t *cap, enum etcd_op_kind kind, char *key,
                  const char *value)
{
    char *v = NULL;
    if (!key || (value && !(v = strdup(value)))) {
        free(key);
        return -ENOMEM;
    }
    if (plan->n_success == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        etcd_op_t *ops = realloc(plan->success, ncap * sizeof *ops);
        if (!ops) {
            free(key);
            free(v);
            return -ENOMEM;
        }
        plan->success = ops;
        *cap = ncap;
    }
    plan->success[plan->n_success++] = (etcd_op_t){kind, key, v, 0};
    return 0;
}

static int add_failure_range(etcd_txn_plan_t *plan, char *key)
{
    assert(plan->n_failure < ETCD_PLAN_MAX_FAILURE);
    if (!key)
        return -ENOMEM;
    plan->failure[plan->n_failure++] = (etcd_op_t){ETCD_OP_RANGE, key, NULL, 0};
    return 0;
}

/* Puts a directory key for every directory on the way from the token to
 * the key's parent (the token's own included when `with_token`): a write
 * makes the missing ones (etcd v2's checkDir). Existing ones are written
 * again, which changes nothing the mirror shows. */
static int put_dirs(const char *prefix, const char *v2key, bool with_token, etcd_txn_plan_t *plan,
                    size_t *cap)
{
    size_t plen = sizeof registry_prefix - 1;
    const char *token_end = strchr(v2key + plen, '/');
    assert(token_end); /* checked by the caller */
    const char *p = with_token ? token_end : strchr(token_end + 1, '/');
    for (; p; p = strchr(p + 1, '/')) {
        char *dir = strndup(v2key, (size_t)(p - v2key));
        char *key = dir ? etcd_layout_key(prefix, dir, true) : NULL;
        free(dir);
        int rc = add_op(plan, cap, ETCD_OP_PUT, key, "");
        if (rc != 0)
            return rc;
    }
    return 0;
}

int etcd_layout_plan(const char *prefix, const reg_event_t *ev, const backend_guard_t *g,
                     const char *instance, uint64_t seq, etcd_txn_plan_t *plan)
{
    memset(plan, 0, sizeof *plan);
    const char *key = ev->node.key;
    size_t plen = sizeof registry_prefix - 1;
    if (strncmp(key, registry_prefix, plen) != 0)
        return -EINVAL;
    const char *token = key + plen;
    const char *token_end = strchr(token, '/');
    if (!token_end || token_end == token)
        return -EINVAL; /* no event writes a token directory itself */
    size_t token_len = (size_t)(token_end - token);
    bool is_dir = ev->node.is_dir;
    size_t cap = 0;
    int rc = 0;

    switch (g->kind) {
    case BACKEND_GUARD_TOKEN_NEW:
        rc =
            add_cmp(plan, ETCD_CMP_CREATE_EQ, etcd_layout_version_key(prefix, token, token_len), 0);
        break;
    case BACKEND_GUARD_KEY_ABSENT:
        rc =
            add_cmp(plan, ETCD_CMP_CREATE_GT, etcd_layout_version_key(prefix, token, token_len), 0);
        if (rc == 0)
            rc = add_cmp(plan, ETCD_CMP_CREATE_EQ, etcd_layout_key(prefix, key, false), 0);
        if (rc == 0)
            rc = add_cmp(plan, ETCD_CMP_CREATE_EQ, etcd_layout_key(prefix, key, true), 0);
        if (rc == 0)
            rc = add_failure_range(plan, etcd_layout_key(prefix, key, false));
        if (rc == 0)
            rc = add_failure_range(plan, etcd_layout_key(prefix, key, true));
        break;
    case BACKEND_GUARD_IN_ORDER:
        rc =
            add_cmp(plan, ETCD_CMP_CREATE_GT, etcd_layout_version_key(prefix, token, token_len), 0);
        if (rc == 0)
            rc = add_in_order_cmps(prefix, key, token, token_len, plan);
        break;
    case BACKEND_GUARD_TOKEN_AT:
        rc = add_cmp(plan, ETCD_CMP_MOD_EQ, etcd_layout_version_key(prefix, token, token_len),
                     (int64_t)g->token_index);
        break;
    }
    /* Whoever won, the token's version says at which revision. */
    if (rc == 0)
        rc = add_failure_range(plan, etcd_layout_version_key(prefix, token, token_len));

    switch (ev->action) {
    case REG_ACT_CREATE:
    case REG_ACT_SET:
        if (rc == 0)
            rc = put_dirs(prefix, key, g->kind == BACKEND_GUARD_TOKEN_NEW, plan, &cap);
        __attribute__((fallthrough)); /* then the node itself */
    case REG_ACT_UPDATE:
    case REG_ACT_CAS:
        if (rc == 0)
            rc = add_op(plan, &cap, ETCD_OP_PUT, etcd_layout_key(prefix, key, is_dir),
                        is_dir ? "" : (ev->node.value ? ev->node.value : ""));
        /* A set that replaces a file makes a new v2 node; etcd keeps the
         * key's create_revision, so the new createdIndex is kept apart. */
        if (rc == 0 && ev->action == REG_ACT_SET && ev->has_prev && !is_dir)
            rc = add_op(plan, &cap, ETCD_OP_PUT, etcd_layout_created_key(prefix, key), "");
        break;
    case REG_ACT_DELETE:
    case REG_ACT_CAD:
    case REG_ACT_EXPIRE:
        if (rc == 0)
            rc = add_op(plan, &cap, is_dir ? ETCD_OP_DELETE_PREFIX : ETCD_OP_DELETE,
                        etcd_layout_key(prefix, key, is_dir), NULL);
        if (rc == 0) { /* and the created index kept for it (or below it) */
            char *c = etcd_layout_created_key(prefix, key);
            if (c && is_dir) {
                char *cd = malloc(strlen(c) + 2);
                if (cd)
                    sprintf(cd, "%s/", c);
                free(c);
                c = cd;
            }
            rc = add_op(plan, &cap, is_dir ? ETCD_OP_DELETE_PREFIX : ETCD_OP_DELETE, c, NULL);
        }
        break;
    case REG_ACT_GET: rc = -EINVAL; break;
    }
    if (rc == 0 && g->kind == BACKEND_GUARD_TOKEN_NEW) {
        char wall[24];
        snprintf(wall, sizeof wall, "%" PRId64, ev->wall_ns);
        rc = add_op(plan, &cap, ETCD_OP_PUT, etcd_layout_meta_key(prefix, token, token_len), wall);
    }
    if (rc == 0)
        rc = add_op(plan, &cap, ETCD_OP_PUT, etcd_layout_version_key(prefix, token, token_len), "");
    if (rc == 0) {
        bool removal = ev->action == REG_ACT_DELETE || ev->action == REG_ACT_CAD ||
                       ev->action == REG_ACT_EXPIRE;
        char *marker = marker_with_expiry(ev->action, instance, seq, key, is_dir,
                                          removal ? 0 : ev->node.expire_ns);
        rc = marker ? add_op(plan, &cap, ETCD_OP_PUT, etcd_layout_marker_key(prefix), marker)
                    : -ENOMEM;
        free(marker);
    }
    if (rc != 0)
        etcd_txn_plan_free(plan);
    return rc;
}

int64_t etcd_layout_lease_seconds(int64_t expire_ns, int64_t now_ns)
{
    int64_t left = expire_ns - now_ns;
    if (left <= NS_PER_SEC)
        return 1;
    return left / NS_PER_SEC + (left % NS_PER_SEC != 0);
}

size_t etcd_layout_plan_set_lease(etcd_txn_plan_t *plan, const char *prefix, const char *v2key,
                                  bool is_dir, int64_t lease)
{
    char *node_key = etcd_layout_key(prefix, v2key, is_dir);
    char *created_key = is_dir ? NULL : etcd_layout_created_key(prefix, v2key);
    size_t n = 0;
    for (size_t i = 0; i < plan->n_success; i++) {
        etcd_op_t *op = &plan->success[i];
        if (op->kind == ETCD_OP_PUT && ((node_key && strcmp(op->key, node_key) == 0) ||
                                        (created_key && strcmp(op->key, created_key) == 0))) {
            op->lease = lease;
            n++;
        }
    }
    free(node_key);
    free(created_key);
    return n;
}

int etcd_layout_plan_gc(const char *prefix, const char *token, uint64_t created_rev,
                        const char *instance, etcd_txn_plan_t *plan)
{
    memset(plan, 0, sizeof *plan);
    size_t len = strlen(token), cap = 0;
    buf_t dir = BUF_INIT;
    buf_printf(&dir, "%s%s", registry_prefix, token);
    char *token_dir = finish(&dir);
    char *created_dir = NULL;
    int rc = token_dir ? 0 : -ENOMEM;
    if (rc == 0) {
        char *c = etcd_layout_created_key(prefix, token_dir); /* P c/<token> */
        buf_t b = BUF_INIT;
        if (c)
            buf_printf(&b, "%s/", c);
        free(c);
        created_dir = c ? finish(&b) : NULL;
        if (!c)
            buf_free(&b);
    }
    if (rc == 0)
        rc = add_cmp(plan, ETCD_CMP_CREATE_EQ, etcd_layout_version_key(prefix, token, len),
                     (int64_t)created_rev);
    if (rc == 0)
        rc = add_op(plan, &cap, ETCD_OP_DELETE_PREFIX, etcd_layout_key(prefix, token_dir, true),
                    NULL);
    if (rc == 0) {
        rc = add_op(plan, &cap, ETCD_OP_DELETE_PREFIX, created_dir, NULL);
        created_dir = NULL; /* owned by the plan (or freed) */
    }
    if (rc == 0)
        rc = add_op(plan, &cap, ETCD_OP_DELETE, etcd_layout_version_key(prefix, token, len), NULL);
    if (rc == 0)
        rc = add_op(plan, &cap, ETCD_OP_DELETE, etcd_layout_meta_key(prefix, token, len), NULL);
    if (rc == 0) {
        char *marker = etcd_layout_gc_marker(instance, token);
        rc = marker ? add_op(plan, &cap, ETCD_OP_PUT, etcd_layout_marker_key(prefix), marker)
                    : -ENOMEM;
        free(marker);
    }
    /* Who removed it, if this one was too late: nothing to learn, the
     * delivery of the winner's removal is what the mirror waits for. */
    free(created_dir);
    free(token_dir);
    if (rc != 0)
        etcd_txn_plan_free(plan);
    return rc;
}

/* ---- reading a revision ----------------------------------------------------- */

void etcd_change_clear(etcd_change_t *c)
{
    free(c->key);
    free(c->value);
    memset(c, 0, sizeof *c);
}

static bool key_is(const etcd_kv_event_t *e, const char *key)
{
    size_t len = strlen(key);
    return e->key_len == len && memcmp(e->key, key, len) == 0;
}

/* "gc <instance> <token>": the token's removal by age, into `out` (its key
 * NULL when out of memory). False: not a gc marker. */
static bool read_gc_marker(const char *value, size_t len, etcd_change_t *out)
{
    size_t alen = sizeof gc_action - 1;
    if (len <= alen + 1 || memcmp(value, gc_action, alen) != 0 || value[alen] != ' ')
        return false;
    const char *p = value + alen + 1, *end = value + len, *f;
    size_t flen;
    if (!field(&p, end, &f, &flen) || flen >= sizeof out->instance || p >= end)
        return false;
    if (!registry_valid_token_name(p, (size_t)(end - p)))
        return false;
    memcpy(out->instance, f, flen);
    out->instance[flen] = '\0';
    buf_t b = BUF_INIT;
    buf_puts(&b, registry_prefix);
    buf_append(&b, p, (size_t)(end - p));
    out->key = finish(&b);
    out->has_change = true;
    out->removes_token = true;
    out->action = REG_ACT_DELETE;
    out->is_dir = true;
    return true;
}

int etcd_layout_read_revision(const char *prefix, const etcd_kv_event_t *evs, size_t n,
                              etcd_change_t *out)
{
    memset(out, 0, sizeof *out);
    char *marker_key = etcd_layout_marker_key(prefix);
    if (!marker_key)
        return -ENOMEM;
    const etcd_kv_event_t *marker = NULL;
    for (size_t i = 0; i < n && !marker; i++)
        if (!evs[i].is_delete && key_is(&evs[i], marker_key))
            marker = &evs[i];
    free(marker_key);

    if (!marker) {
        /* No transaction of ours: a token key deleted alone is an expiry
         * (a lease ran out); anything else is not the mirror's business. */
        for (size_t i = 0; i < n; i++) {
            bool is_dir;
            char *v2 = evs[i].is_delete
                           ? etcd_layout_v2_key(prefix, evs[i].key, evs[i].key_len, &is_dir)
                           : NULL;
            if (v2) {
                out->has_change = true;
                out->action = REG_ACT_EXPIRE;
                out->key = v2;
                out->is_dir = is_dir;
                return 0;
            }
        }
        return 0;
    }
    if (read_gc_marker(marker->value, marker->value_len, out))
        return out->key ? 0 : -ENOMEM;
    /* A token's creation writes its creation time (P m/<token>). */
    for (size_t i = 0; i < n; i++) {
        const char *token;
        size_t token_len;
        int64_t ns;
        if (!evs[i].is_delete &&
            etcd_layout_parse_meta(prefix, evs[i].key, evs[i].key_len, evs[i].value,
                                   evs[i].value_len, &token, &token_len, &ns))
            out->created_ns = ns;
    }
    char *v2key = NULL;
    if (!etcd_layout_parse_marker(marker->value, marker->value_len, &out->action, out->instance,
                                  sizeof out->instance, &out->seq, &v2key, &out->is_dir,
                                  &out->expire_ns))
        return -EINVAL; /* a marker not of this layout */
    out->key = v2key;
    out->has_change = true;
    bool removal = out->action == REG_ACT_DELETE || out->action == REG_ACT_CAD ||
                   out->action == REG_ACT_EXPIRE;
    if (removal || out->is_dir)
        return 0;
    char *node_key = etcd_layout_key(prefix, v2key, false);
    if (!node_key) {
        etcd_change_clear(out);
        return -ENOMEM;
    }
    int rc = -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!evs[i].is_delete && key_is(&evs[i], node_key)) {
            out->value = strndup(evs[i].value ? evs[i].value : "", evs[i].value_len);
            rc = out->value ? 0 : -ENOMEM;
            break;
        }
    }
    free(node_key);
    if (rc != 0)
        etcd_change_clear(out);
    return rc;
}
