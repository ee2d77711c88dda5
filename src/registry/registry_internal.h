/*
 * registry_internal.h - what the files of the registry share, and nothing
 * outside src/registry/ may include. registry.h is the public contract.
 *
 * The files, one concern each:
 *   registry.c  the object, its bounds, preparing and applying an event
 *               (the only code that mutates a tree), commit and replay
 *   tree.c      nodes, the child index of large directories, keys
 *   ttl.c       the expiry heap and registry_expire
 *   history.c   each token's list of event indexes, the ring of recent
 *               events, reading older ones back from the backend
 *   watch.c     parked watchers: matching, notifying, history scans
 *   tokens.c    the token table: create, find, sweep
 *   ops.c       the etcd v2 operations, validated into events
 *   event.c     events and node snapshots
 *   deliver.c   writes through a backend that applies on delivery (etcd):
 *               pending proposals, delivered changes, settlements
 *
 * Invariants every file keeps (asserted in debug and sanitizer builds):
 *   - one thread: the one that made the registry (REG_ASSERT_OWNER);
 *   - no re-entry: a watcher callback or the backend never calls back into
 *     a registry write (reg->busy);
 *   - room before change: prepare_change() makes every allocation and
 *     reservation an event needs; apply_change() and what follows it in
 *     commit() cannot fail.
 */
#ifndef DISCO_REGISTRY_REGISTRY_INTERNAL_H
#define DISCO_REGISTRY_REGISTRY_INTERNAL_H

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Token creation must survive a failed allocation in the hash table rather
 * than exit the process (uthash's default). */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#include "backend/backend.h"
#include "registry/registry.h"

/*
 * Children lookup of a large directory: open addressing with linear probing
 * over the child pointers, keyed by name. Small directories (a token's three
 * members) have none and are scanned, which costs no memory per node.
 */
typedef struct child_index {
    struct reg_node **slots;
    size_t cap; /* power of two, at least twice the children */
} child_index_t;

/* Directories with more children than this get a child_index. */
#define CHILD_INDEX_MIN 16

struct reg_node {
    union {
        char *value;          /* files */
        child_index_t *index; /* directories: large ones only, else NULL */
    };
    uint64_t created_index;
    uint64_t modified_index;
    int64_t expire_ns; /* 0 = permanent */
    /* Siblings are singly linked: unlinking scans, which is cheap where it
     * happens (small directories; deletes are rare), and a member is one
     * pointer smaller. */
    struct reg_node *parent, *first_child, *last_child, *next;
    uint32_t heap_pos; /* 1-based position in the TTL heap; 0 = not there */
    uint32_t n_children;
    bool is_dir;
    /* The last segment of the key only: the full key is the parent's key
     * and this name (a token directory: REGISTRY_PREFIX/<token>), built
     * when needed. Full keys in every node cost more memory than all the
     * rest of a member. */
    char name[];
};

typedef struct reg_token {
    UT_hash_handle hh;
    const char *name; /* hash key: the directory's name */
    reg_node_t *dir;
    int64_t created_ns;
    uint64_t *events; /* indexes of the token's whole history, in order */
    size_t n_events, cap_events;
    reg_waiter_t *waiters;
    size_t n_keys; /* nodes below the directory, _config excluded */
    /* Backends that apply on delivery (etcd): the index of the token's last
     * delivered change other than an expiry, which is the revision of its
     * version key (a lease's expiry does not rewrite it); 0: none yet. */
    uint64_t version_index;
    /* Watches from this index or below get "event index cleared": a
     * resync lost the history up to it (registry_resync_clear); 0: none. */
    uint64_t cleared_index;
} reg_token_t;

/*
 * A client's write as it was asked, kept while its proposal is pending so
 * that it can be validated again after a lost guard (deliver.c). Strings
 * are borrowed while the operation runs and owned in a pending copy.
 */
enum reg_op_kind {
    REG_OP_CREATE,
    REG_OP_SET,
    REG_OP_UPDATE,
    REG_OP_CAS,
    REG_OP_DELETE,
    REG_OP_CAD,
    REG_OP_CREATE_TOKEN,
    REG_OP_CATCH_UP, /* registry_await_catch_up: nothing to run, only the wait */
};
typedef struct reg_op {
    enum reg_op_kind kind;
    char *key; /* the key as given; CREATE_TOKEN: the token's name */
    char *value;
    char *prev_value;
    uint64_t prev_index;
    reg_ttl_t ttl;
    bool is_dir, unique, recursive;
    unsigned size; /* CREATE_TOKEN */
} reg_op_t;

typedef struct reg_pending reg_pending_t;

struct registry {
    reg_token_t *tokens; /* uthash head */
    size_t n_tokens;
    size_t n_waiters;
    uint64_t index;
    size_t max_keys;
    size_t max_events;
    backend_t *backend;       /* NULL: in memory only */
    backend_t *owned_backend; /* made by registry_new() over a store */
    reg_node_t **heap;        /* TTL min-heap by expire_ns */
    size_t heap_len, heap_cap;
    /* Recent events, owned: ring[(i + ring_head) & (ring_cap - 1)] holds the
     * event with index ring_base + i for i < ring_len (NULL: none, e.g. its
     * token was removed). Older events are fetched from the backend. */
    reg_event_t **ring;
    size_t ring_cap, ring_head, ring_len;
    uint64_t ring_base;
    reg_event_t *fetched; /* the last event read back from the backend */
    /* Tokens removed by age (tombstones.c): a hash by name, and a ring of
     * REGISTRY_MAX_TOMBSTONES slots, oldest overwritten first. */
    struct reg_tombstone *tombstones;
    struct reg_tombstone **tombstone_ring;
    size_t tombstone_next;
    /* deliver.c: the write being run (set by the public operations), the
     * pending one being validated again, and the pending writes. */
    const reg_op_t *cur_op;
    reg_pending_t *retrying;
    reg_pending_t *pending;
    size_t n_pending;
    uint64_t next_ticket, next_seq;
    /* Backends that apply on delivery (etcd): the highest in-order name
     * (POST) handed out, so that writes in flight at once never pick the
     * same one (ops.c, inorder_name); unused with the local store. */
    uint64_t inorder_high;
    pthread_t owner; /* the thread that made the registry */
    bool busy;       /* inside commit(): no re-entry */
};

/* Events kept in memory once the backend can read them back: enough for
 * members that watch what just happened; older history is read back. */
#define RECENT_EVENTS 4096

#define REG_ASSERT_OWNER(reg) assert(pthread_equal((reg)->owner, pthread_self()))

/* ---- registry.c --------------------------------------------------------- */

/* Errors into a result; the cause is copied (NULL if out of memory). */
void reg_fail(registry_t *reg, reg_result_t *out, enum reg_errcode code, const char *cause);
void reg_fail_nomem(registry_t *reg, reg_result_t *out);
/* An error whose cause is a node's key. */
void reg_fail_at(registry_t *reg, reg_result_t *out, enum reg_errcode code, const reg_node_t *n);
/*
 * Makes a validated live event happen: checks the token's event bound,
 * reserves, proposes it to the backend, applies, records and notifies.
 * Takes ownership of `ev`. Fills `out` (the event, or the error; on error
 * nothing changed).
 */
void reg_commit(registry_t *reg, reg_event_t *ev, reg_result_t *out);

/* Runs `call` (a write operation filling `out`) with `op` as the write
 * being run, unless a pending write is being validated again (its own op is
 * then current); a refusal may then be checked again (reg_recheck_refusal). */
#define REG_WITH_OP(reg, op, out, call)                                                            \
    do {                                                                                           \
        const reg_op_t *saved_op_ = (reg)->cur_op;                                                 \
        if (!saved_op_)                                                                            \
            (reg)->cur_op = (op);                                                                  \
        call;                                                                                      \
        if (!saved_op_)                                                                            \
            reg_recheck_refusal((reg), (op), (out));                                               \
        (reg)->cur_op = saved_op_;                                                                 \
    } while (0)

/* Applies an event a backend delivered (index above the registry's): the
 * same prepare, apply, record and notify as a committed write, without
 * proposing it. Takes `ev`. 0, -EINVAL (it does not fit the tree) or
 * -ENOMEM; on error nothing changed. */
int reg_apply_delivered(registry_t *reg, reg_event_t *ev);

/* ---- deliver.c ---------------------------------------------------------- */

/* reg_commit() with a backend that applies on delivery: proposes `ev`
 * (taken) for the current op and fills `out` as pending. */
void reg_propose_pending(registry_t *reg, reg_event_t *ev, reg_result_t *out);
/* A write the mirror refused (`out`, from operation `op`), with a backend
 * that applies on delivery: made pending behind a barrier, to be validated
 * again once the mirror has caught up with the backend (backend.h,
 * propose_barrier). Otherwise, or when that cannot be set up, `out` stays
 * the refusal. */
void reg_recheck_refusal(registry_t *reg, const reg_op_t *op, reg_result_t *out);
/* How many times the pending write being validated again (reg->retrying)
 * has lost its guard so far; 0 when none is. */
unsigned reg_retry_losses(const registry_t *reg);
/* Frees every pending write without telling anyone (registry_free). */
void reg_pending_free_all(registry_t *reg);

/* ---- tree.c ------------------------------------------------------------- */

/* Go's path.Clean(path.Join("/", key)); a new string or NULL. */
char *reg_clean_key(const char *key);
/* What every operation on a key does first: checks the calling thread,
 * clears `out`, and returns the cleaned key (the caller frees it), or NULL
 * with `out` failed for lack of memory. */
char *reg_begin_op(registry_t *reg, const char *key, reg_result_t *out);
/* Splits a clean key into token name and the rest ("/a/b", or ""). */
bool reg_split_token(const char *key, const char **name, size_t *name_len, const char **rest);
/* Whether `rest` is "/_config" or below it. */
bool reg_rest_in_config(const char *rest);
/* The full key as a new string, or NULL when out of memory. */
char *reg_node_key_dup(const reg_node_t *n);
reg_node_t *reg_node_new(const char *name, size_t name_len, bool is_dir, const char *value,
                         uint64_t index);
/* Links `child` last under `parent`; cannot fail (a child index that cannot
 * grow is dropped: lookups fall back to scanning). */
void reg_node_link(reg_node_t *parent, reg_node_t *child);
void reg_node_unlink(reg_node_t *n);
/* Frees a node and its subtree, taking them off the TTL heap. */
void reg_node_free_tree(registry_t *reg, reg_node_t *n);
reg_node_t *reg_node_child(const reg_node_t *dir, const char *name, size_t len);
size_t reg_subtree_size(const reg_node_t *n);
/* etcd's internalGet from the token directory; NULL with `out` filled. */
reg_node_t *reg_walk(registry_t *reg, reg_token_t *t, const char *rest, reg_result_t *out);

/* ---- ops.c -------------------------------------------------------------- */

/* The length of an in-order name (POST): etcd's %020d of an index. */
#define REG_INORDER_NAME_LEN 20
/* Scans the children of `dir` (a directory, or NULL: none) for in-order
 * names (REG_INORDER_NAME_LEN digits, below 10^19): *highest (if not NULL)
 * is the highest one, 0 if none. False when a child's name starts with a
 * digit without being an in-order name (it would sort among or after
 * them). */
bool reg_inorder_scan(const reg_node_t *dir, uint64_t *highest);
/* Builds and commits an event that rewrites or removes node `n`. */
void reg_commit_change(registry_t *reg, reg_node_t *n, enum reg_action action, const char *value,
                       int64_t expire_ns, int64_t now_ns, reg_result_t *out);

/* ---- ttl.c -------------------------------------------------------------- */

/* Makes sure one more node fits in the heap. 0 or -ENOMEM. */
int reg_heap_reserve(registry_t *reg);
/* Sets a node's expiry and keeps the heap in step; a node not yet in the
 * heap needs a reg_heap_reserve() made since the last insertion. */
void reg_node_set_expiry(registry_t *reg, reg_node_t *n, int64_t expire_ns);
void reg_heap_remove(registry_t *reg, reg_node_t *n);

/* ---- history.c ---------------------------------------------------------- */

/* Makes room in the ring for the event with `index` (above all held). */
int reg_ring_reserve(registry_t *reg, uint64_t index);
/* Places `ev` (owned) after reg_ring_reserve(ev->index) succeeded. */
void reg_ring_push(registry_t *reg, reg_event_t *ev);
/* Frees events beyond the recent window that the backend can read back. */
void reg_ring_trim(registry_t *reg, uint64_t readable);
void reg_ring_drop_front(registry_t *reg);
/* Drops the recent events of a removed token. */
void reg_ring_forget(registry_t *reg, const uint64_t *indexes, size_t n);
/* Makes sure one more index fits in `t`'s history. 0 or -ENOMEM. */
int reg_history_reserve(reg_token_t *t);
/* Appends to a token's history; reg_history_reserve() made the space. */
void reg_history_append(reg_token_t *t, uint64_t index);
/* The event at `index`, borrowed (valid until the next call): from memory
 * when recent, else read back from the backend. NULL when there is none. */
const reg_event_t *reg_event_at(registry_t *reg, uint64_t index);

/* ---- tombstones.c ------------------------------------------------------- */

typedef struct reg_tombstone reg_tombstone_t;
/* Remembers that token `name` was removed by age (best effort: nothing is
 * remembered when memory runs out). */
void reg_tombstone_add(registry_t *reg, const char *name, int64_t created_ns, int64_t removed_ns);
void reg_tombstones_free(registry_t *reg);

/* ---- event.c ------------------------------------------------------------ */

void reg_snap_free(reg_snap_t *s);
/* etcd's node.Repr(false, false): the node without its children. */
int reg_snap_of(reg_snap_t *s, const reg_node_t *n, int64_t now_ns);
reg_event_t *reg_event_new(enum reg_action action, uint64_t index, int64_t now_ns, const char *key,
                           bool is_dir, const char *value, uint64_t created_index,
                           int64_t expire_ns);
bool reg_is_removal(enum reg_action a);

/* ---- watch.c ------------------------------------------------------------ */

/* Before a directory is removed: marks the watchers of nodes below it. */
void reg_mark_removed_watchers(registry_t *reg, reg_token_t *t, const reg_event_t *ev);
/* Fires the watchers of `t` that `ev` reaches. */
void reg_notify(registry_t *reg, reg_token_t *t, const reg_event_t *ev);
/* Is waiter `w` to be fired? May change `w` (a one-event mark it consumes). */
typedef bool (*reg_waiter_match_fn)(reg_waiter_t *w, const void *match_ctx);
/*
 * Fires the watchers of `t` for which match(w, match_ctx) holds: match is
 * called once per parked waiter, in parking order; every matching waiter is
 * unlinked first, and only then is each told, in that order, with
 * on_event(w, ev). A callback may therefore unwatch itself, but must not end
 * another watcher's request (it may be on the list still to be told).
 */
void reg_fire_waiters(registry_t *reg, reg_token_t *t, reg_waiter_match_fn match,
                      const void *match_ctx, const reg_event_t *ev);
void reg_waiter_unlink(registry_t *reg, reg_waiter_t *w);

/* ---- tokens.c ----------------------------------------------------------- */

reg_token_t *reg_find_token(registry_t *reg, const char *name, size_t len);
/* A new token, in the table. NULL when out of memory (nothing changed). */
reg_token_t *reg_token_new(registry_t *reg, const char *name, size_t len, uint64_t index,
                           int64_t now_ns);
/* Frees a token with its tree; its parked watchers are dropped silently. */
void reg_token_free(registry_t *reg, reg_token_t *t);
/* Takes a token out of the table and frees it with its tree. */
void reg_token_remove(registry_t *reg, reg_token_t *t);
/* Resolves a clean key to its token; NULL with `out` filled (100). */
reg_token_t *reg_lookup_token(registry_t *reg, const char *clean, const char **rest,
                              reg_result_t *out);
/* A write of <token>/_config/size of a token not yet there creates it;
 * true if it handled the request. */
bool reg_maybe_create_token(registry_t *reg, const char *clean, enum reg_action action, bool is_dir,
                            const char *value, int64_t now_ns, reg_result_t *out);

#endif
