/*
 * tombstones.c - what the registry remembers of tokens it removed by age,
 * so that a request for one is told "expired, and when" rather than the
 * same "not found" as a token that never existed.
 *
 * Bounded: at most REGISTRY_MAX_TOMBSTONES entries (about 150 bytes each,
 * so under 2.5 MiB), the oldest forgotten first. Kept in memory only: after
 * a restart, tokens removed before it read as unknown, and the explanation
 * says so.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/timeutil.h"

struct reg_tombstone {
    UT_hash_handle hh;
    int64_t created_ns, removed_ns;
    char name[REGISTRY_MAX_TOKEN_BYTES + 1];
};

void reg_tombstone_add(registry_t *reg, const char *name, int64_t created_ns, int64_t removed_ns)
{
    size_t len = strlen(name);
    if (len > REGISTRY_MAX_TOKEN_BYTES)
        return;
    reg_tombstone_t *t = NULL;
    HASH_FIND(hh, reg->tombstones, name, len, t);
    if (t) {
        /* the same name issued again and removed again: the newer removal */
        t->created_ns = created_ns;
        t->removed_ns = removed_ns;
        return;
    }
    if (!reg->tombstone_ring) {
        reg->tombstone_ring = calloc(REGISTRY_MAX_TOMBSTONES, sizeof *reg->tombstone_ring);
        if (!reg->tombstone_ring)
            return; /* best effort: the token then reads as unknown */
    }
    reg_tombstone_t **slot = &reg->tombstone_ring[reg->tombstone_next];
    if (*slot) { /* full: forget the oldest */
        HASH_DEL(reg->tombstones, *slot);
        free(*slot);
        *slot = NULL;
    }
    t = calloc(1, sizeof *t);
    if (!t)
        return;
    memcpy(t->name, name, len + 1);
    t->created_ns = created_ns;
    t->removed_ns = removed_ns;
    unsigned before = HASH_COUNT(reg->tombstones);
    HASH_ADD(hh, reg->tombstones, name[0], len, t);
    if (HASH_COUNT(reg->tombstones) != before + 1) {
        free(t);
        return;
    }
    *slot = t;
    reg->tombstone_next = (reg->tombstone_next + 1) % REGISTRY_MAX_TOMBSTONES;
    assert(HASH_COUNT(reg->tombstones) <= REGISTRY_MAX_TOMBSTONES);
}

void reg_tombstones_free(registry_t *reg)
{
    HASH_CLEAR(hh, reg->tombstones);
    if (reg->tombstone_ring)
        for (size_t i = 0; i < REGISTRY_MAX_TOMBSTONES; i++)
            free(reg->tombstone_ring[i]);
    free(reg->tombstone_ring);
    reg->tombstone_ring = NULL;
}

/* What is wrong with a token name, or NULL when it is well-formed. */
static const char *malformed_because(const char *name, size_t len, char *why, size_t why_len)
{
    if (len == 0)
        return "the token part of the path is empty";
    if (len > REGISTRY_MAX_TOKEN_BYTES) {
        snprintf(why, why_len, "it is %zu characters long; a token has at most %d", len,
                 REGISTRY_MAX_TOKEN_BYTES);
        return why;
    }
    if (name[0] == '_' || name[0] == '.') {
        snprintf(why, why_len, "it starts with '%c'; a token starts with a letter or digit",
                 name[0]);
        return why;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            snprintf(why, why_len,
                     "byte 0x%02x at position %zu is not one of A-Z a-z 0-9 . _ - (a token is "
                     "what /new printed after the last '/')",
                     c, i + 1);
            return why;
        }
    }
    return NULL;
}

void registry_explain_missing_token(registry_t *reg, const char *name, size_t len, buf_t *out)
{
    REG_ASSERT_OWNER(reg);
    char why[160];
    const char *bad = malformed_because(name, len, why, sizeof why);
    if (bad) {
        buf_puts(out, "not a token: ");
        buf_puts(out, bad);
        return;
    }
    reg_tombstone_t *t = NULL;
    HASH_FIND(hh, reg->tombstones, name, len, t);
    if (t) {
        char removed[40], created[40];
        time_format_rfc3339nano(t->removed_ns - t->removed_ns % NS_PER_SEC, removed);
        time_format_rfc3339nano(t->created_ns - t->created_ns % NS_PER_SEC, created);
        buf_printf(out,
                   "this token expired: it was removed at %s, after its minimum age (created "
                   "%s); make a new token with /new",
                   removed, created);
        return;
    }
    buf_printf(out,
               "this token was never issued by this service (removed tokens are remembered as "
               "expired for the last %d removals since it started); check the URL, or make a "
               "new token with /new",
               REGISTRY_MAX_TOMBSTONES);
}
