/*
 * etcd_layout.h - how the registry's tokens and events live in an etcd
 * keyspace (design (a) of ETCD-BACKEND.md), as pure functions: no I/O, no
 * protobuf, so that every mapping is unit-tested on its own
 * (tests/unit/test_etcd_layout.c). etcd_txn.c turns the plans into
 * etcd messages; backend_etcd.c reads etcd's answers back through here.
 *
 * Keys under the prefix P (--etcd-prefix, "/disco/" by default):
 *   P k/<token>/<path>    a file of the token's v2 tree, value = its value
 *   P k/<token>/<path>/   a directory (the token's own: P k/<token>/), so
 *                         directories keep their own created revision
 *   P v/<token>           the token's version key: every write to the token
 *                         rewrites it, so its mod_revision is the index of
 *                         the token's last event (the per-token guard)
 *   P m/<token>           the token's creation wall time (ns), for sweeps
 *   P c/<token>/<path>    a file that a v2 set replaced: its mod_revision is
 *                         the file's v2 createdIndex (etcd keeps a key's
 *                         create_revision across puts; v2's set makes a new
 *                         node). Read only when loading from a range.
 *   P act                 the action marker, written in every transaction:
 *                         "<action> <instance> <seq> <F|D>[@<expire ns>] <v2 key>"
 *                         (the expiry of a key with a TTL: the instances
 *                         that did not write it show the same TTL), or
 *                         "gc <instance> <token>" for a token removed by age
 *   P index_base          the index offset of a prefix filled by `disco
 *                         migrate` (docs/operating.md): a signed decimal B;
 *                         while the migration runs, "migrating ..." instead
 *                         (a mirror refuses to load such a prefix). Absent:
 *                         B = 0. Its create_revision is where the prefix's
 *                         history starts.
 *
 * A key with a TTL is put with an etcd lease of that many seconds (its
 * P c/ key too); etcd deletes both when the lease runs out, in a revision
 * with no marker: the mirror reads that as v2's expire.
 *
 * The v2 index of an event is the revision of its transaction plus B, so
 * that indexes an embedded store handed out before a migration stay below
 * every index made after it.
 *
 * Strings returned are new (the caller frees them) or NULL when out of
 * memory.
 */
#ifndef DISCO_BACKEND_ETCD_LAYOUT_H
#define DISCO_BACKEND_ETCD_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "registry/event.h"
#include "registry/registry.h"

#define ETCD_LAYOUT_DEFAULT_PREFIX "/disco/"

/* The etcd key of v2 key `v2key` (a full, clean registry key), a directory
 * when `is_dir`; NULL when the key is not inside a token. */
char *etcd_layout_key(const char *prefix, const char *v2key, bool is_dir);
/* The v2 key of etcd key `key` (len bytes) below P k/, and whether it is a
 * directory; NULL when it is not one (another part of the layout). */
char *etcd_layout_v2_key(const char *prefix, const char *key, size_t len, bool *is_dir);
/* The same for P c/ keys (etcd_layout_created_key). */
char *etcd_layout_v2_key_of_created(const char *prefix, const char *key, size_t len);
/* P c/<token>/<path> of a file's v2 key; NULL outside a token. */
char *etcd_layout_created_key(const char *prefix, const char *v2key);
/* P v/<token>, P m/<token>, P act. */
char *etcd_layout_version_key(const char *prefix, const char *token, size_t token_len);
char *etcd_layout_meta_key(const char *prefix, const char *token, size_t token_len);
char *etcd_layout_marker_key(const char *prefix);
/* Reads a P m/<token> key and its value (the token's creation time, wall
 * clock ns): true with *token (into `key`, not terminated), *token_len and
 * *created_ns set; false for any other key or a value that is no time. */
bool etcd_layout_parse_meta(const char *prefix, const char *key, size_t key_len, const char *value,
                            size_t value_len, const char **token, size_t *token_len,
                            int64_t *created_ns);
/* P index_base (see above). */
char *etcd_layout_index_base_key(const char *prefix);
/* Reads its value: true with *base set for a finished migration's offset;
 * false for anything else (a migration still running, garbage). */
bool etcd_layout_parse_index_base(const char *value, size_t len, int64_t *base);
/* The value a migration writes first: refused by the parser above. */
#define ETCD_LAYOUT_INDEX_BASE_MIGRATING "migrating"

/* The end of a prefix range: `key` with its last byte raised (etcd's
 * range_end for "every key starting with key"). */
char *etcd_layout_prefix_end(const char *key);

/* The marker's value, and its parts back (false: not a marker of ours;
 * *v2key then NULL; else a new string). */
char *etcd_layout_marker(enum reg_action action, const char *instance, uint64_t seq,
                         const char *v2key, bool is_dir);
bool etcd_layout_parse_marker(const char *value, size_t len, enum reg_action *action,
                              char *instance, size_t instance_size, uint64_t *seq, char **v2key,
                              bool *is_dir, int64_t *expire_ns);
/* The marker of a token's removal by age. */
char *etcd_layout_gc_marker(const char *instance, const char *token);

/* ---- a transaction, as a plan -------------------------------------------- */

enum etcd_cmp_kind {
    ETCD_CMP_CREATE_EQ, /* create_revision(key) == rev (0: absent) */
    ETCD_CMP_CREATE_GT, /* create_revision(key) > rev (0: present) */
    ETCD_CMP_MOD_EQ,    /* mod_revision(key) == rev */
};
enum etcd_op_kind {
    ETCD_OP_PUT,
    ETCD_OP_DELETE,        /* one key */
    ETCD_OP_DELETE_PREFIX, /* every key starting with `key` */
    ETCD_OP_RANGE,         /* one key (failure branches: who won) */
};
typedef struct etcd_cmp {
    enum etcd_cmp_kind kind;
    char *key;
    int64_t rev;
    /* Not NULL: the compare holds for every key in [key, range_end), and
     * for none there (etcd's Compare.range_end). */
    char *range_end;
} etcd_cmp_t;
typedef struct etcd_op {
    enum etcd_op_kind kind;
    char *key;
    char *value;   /* PUT only */
    int64_t lease; /* PUT only: the key's lease (0: none) */
} etcd_op_t;

#define ETCD_PLAN_MAX_CMPS 4
#define ETCD_PLAN_MAX_FAILURE 3
typedef struct etcd_txn_plan {
    etcd_cmp_t cmps[ETCD_PLAN_MAX_CMPS];
    size_t n_cmps;
    etcd_op_t *success; /* owned array */
    size_t n_success;
    etcd_op_t failure[ETCD_PLAN_MAX_FAILURE];
    size_t n_failure;
} etcd_txn_plan_t;

/*
 * The transaction that makes `ev` (validated against the mirror) happen
 * under guard `g`, its marker naming `instance` and `seq`. 0 or -ENOMEM
 * (the plan is then empty); -EINVAL for an event outside a token. Free
 * with etcd_txn_plan_free().
 */
int etcd_layout_plan(const char *prefix, const reg_event_t *ev, const backend_guard_t *g,
                     const char *instance, uint64_t seq, etcd_txn_plan_t *plan);
void etcd_txn_plan_free(etcd_txn_plan_t *plan);
/* The seconds of the lease for a key expiring at `expire_ns`, at `now_ns`
 * (wall clock): what is left, rounded up, at least 1 (etcd raises a
 * shorter lease to its minimum, about 1.5 s with default timings). */
int64_t etcd_layout_lease_seconds(int64_t expire_ns, int64_t now_ns);
/*
 * Puts `v2key`'s key (and its P c/ key, when the plan writes it) under
 * `lease`: the key with a TTL. Returns how many puts now carry it (0: the
 * plan does not put that key).
 */
size_t etcd_layout_plan_set_lease(etcd_txn_plan_t *plan, const char *prefix, const char *v2key,
                                  bool is_dir, int64_t lease);
/*
 * The removal of token `token` by age: guarded by its version key still
 * being the one made at `created_rev` (the token's creation revision), so
 * that a second sweep of the same token, from any instance, changes
 * nothing; it deletes every key of the token and writes the gc marker.
 * 0 or -ENOMEM (the plan is then empty).
 */
int etcd_layout_plan_gc(const char *prefix, const char *token, uint64_t created_rev,
                        const char *instance, etcd_txn_plan_t *plan);

/* ---- a revision's events, back into a registry change --------------------- */

typedef struct etcd_kv_event {
    bool is_delete;
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
} etcd_kv_event_t;

/* What one revision means for the mirror. */
typedef struct etcd_change {
    bool has_change; /* false: nothing for the mirror (only advance) */
    enum reg_action action;
    char *key; /* v2 key, owned */
    bool is_dir;
    char *value; /* owned; NULL when none */
    /* From the marker: which instance's proposal this was (else ""). */
    char instance[64];
    uint64_t seq;
    int64_t expire_ns;  /* the key's TTL expiry (wall clock), 0: none */
    int64_t created_ns; /* a token's creation: its P m/ value, 0: not in this revision */
    /* A token removed by age (gc marker): `key` is the token's directory. */
    bool removes_token;
} etcd_change_t;

/*
 * Reads the events of one revision (all of one transaction). With a marker
 * the change is the marker's action on its key, its value from the key's
 * put (a gc marker: the token's removal); without one, a delete of a
 * token's key is an expiry (a lease ran out). 0, -ENOMEM, or -EINVAL (a marker naming a key the
 * revision does not write: not a transaction of this layout).
 */
int etcd_layout_read_revision(const char *prefix, const etcd_kv_event_t *evs, size_t n,
                              etcd_change_t *out);
void etcd_change_clear(etcd_change_t *c);

#endif
