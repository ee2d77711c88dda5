/*
 * registry.h - the discovery registry: tokens, their etcd v2 key trees, the
 * global index, each token's event history, TTL expiry and parked watchers.
 *
 * This is the only place where etcd v2 store semantics live (create, set,
 * update, compareAndSwap, delete, compareAndDelete, expire, get, watch), with
 * the rules of a discovery service on top:
 *   - every key lives in a token: /_etcd/registry/<token>/...; nothing outside
 *     a token exists, and tokens are never listed;
 *   - a token is created by setting /_etcd/registry/<token>/_config/size to a
 *     whole number (registry_create_token or a write of that key); after that
 *     _config is read-only and the token directory cannot be deleted, so one
 *     token can bootstrap one cluster, ever;
 *   - each token keeps its whole event history, so a watch never gets
 *     "event index cleared" for an index at or after the token's creation.
 *
 * Threading: single-threaded. The event loop thread owns the registry; no
 * function here blocks or takes a lock.
 *
 * Keys passed in are full v2 keys ("/_etcd/registry/tok/id"), already
 * percent-decoded; the registry cleans them (duplicate and trailing slashes).
 *
 * Every mutation becomes one reg_event_t with the next global index.
 * Everything recording it needs is reserved first (memory, the history and
 * ring slots, the backend's queue: see backend/backend.h); only then is it
 * applied to the tree, appended to the token's history and handed to the
 * matching parked watchers, steps that cannot fail. So a change that fails
 * for lack of memory, or that the backend does not take, leaves the
 * registry exactly as it was (REG_E_INTERNAL).
 *
 * Bounds: a token holds at most registry_set_max_keys() keys and
 * registry_set_max_events() events over its whole life, so that its
 * history is whole (a watch can replay from any index of the token) and a
 * watch's scan of it takes bounded time.
 */
#ifndef DISCO_REGISTRY_REGISTRY_H
#define DISCO_REGISTRY_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "registry/event.h"
#include "util/buf.h"

#define REGISTRY_PREFIX "/_etcd/registry"
/* Longest token name accepted through the v2 keys path. */
#define REGISTRY_MAX_TOKEN_BYTES 64

struct store;
struct backend;

/* etcd v2 error codes the registry produces (see api/v2json.h for texts). */
enum reg_errcode {
    REG_OK = 0,
    REG_E_KEY_NOT_FOUND = 100,
    REG_E_TEST_FAILED = 101,
    REG_E_NOT_FILE = 102,
    REG_E_TOO_MANY_KEYS = 103, /* etcd's "max number of peers"; disco: keys per token */
    REG_E_NOT_DIR = 104,
    REG_E_NODE_EXIST = 105,
    REG_E_ROOT_READ_ONLY = 107,
    REG_E_DIR_NOT_EMPTY = 108,
    REG_E_INVALID_FIELD = 209,
    REG_E_INTERNAL = 300, /* out of memory or store failure */
    /* etcd's 401 "event index cleared", HTTP 400 as etcd answers it; only
     * with a backend that applies on delivery: a watch from an index older
     * than the history kept, or one whose history a resync lost
     * (registry_resync_clear). */
    REG_E_EVENT_INDEX_CLEARED = 401,
};

/* A live node of a token's tree; read it through the accessors below. */
typedef struct reg_node reg_node_t;

/* Appends the node's full key ("/_etcd/registry/tok/id") to `out`. */
void reg_node_put_key(const reg_node_t *n, buf_t *out);
/* The last segment of the key ("id"). */
const char *reg_node_name(const reg_node_t *n);
/* NULL for directories. */
const char *reg_node_value(const reg_node_t *n);
bool reg_node_is_dir(const reg_node_t *n);
/* Keys whose last segment starts with '_' are hidden from listings. */
bool reg_node_is_hidden(const reg_node_t *n);
uint64_t reg_node_created_index(const reg_node_t *n);
uint64_t reg_node_modified_index(const reg_node_t *n);
int64_t reg_node_expire_ns(const reg_node_t *n);
/* Children in creation order; NULL at the end. */
const reg_node_t *reg_node_first_child(const reg_node_t *n);
const reg_node_t *reg_node_next_sibling(const reg_node_t *n);
size_t reg_node_child_count(const reg_node_t *n);

/*
 * The outcome of an operation. On error, `err` is the etcd code, `cause` the
 * etcd cause text (owned; free with reg_result_clear) and `index` the current
 * index. On success, `index` is the X-Etcd-Index to report, and either
 * `event` (a write or a watch answered from history) or `node` (a get) is
 * set; for a get, `now_ns` is the instant TTLs are measured from.
 * `event` and `node` are borrowed: valid until the next call into the
 * registry (an old event may have been read back from the store into a
 * buffer the next read reuses).
 */
typedef struct reg_result {
    enum reg_errcode err;
    char *cause;
    uint64_t index;
    const reg_event_t *event;
    const reg_node_t *node;
    int64_t now_ns;
    /* For a get: a stamp of the state of the node's token (see
     * registry_get); 0 when there is none. */
    uint64_t stamp;
    /* On REG_E_KEY_NOT_FOUND: the key's token does not exist (the cause is
     * still etcd's, the key; registry_explain_missing_token says why). */
    bool token_missing;
    /* On REG_E_EVENT_INDEX_CLEARED from a watch: the lowest index a watch
     * of that token can start from now, its history whole from there (a
     * v3 watch's compact_revision). */
    uint64_t history_from;
    /* A write whose backend applies on delivery (etcd): validated and
     * proposed, its outcome not known yet. err is REG_OK, event and node
     * NULL; registry_await(ticket) learns the outcome later. */
    bool pending;
    uint64_t ticket;
} reg_result_t;

void reg_result_clear(reg_result_t *r);

/* Optional TTL of a write: has_ttl=false means "permanent". */
typedef struct reg_ttl {
    bool has_ttl;
    uint64_t ttl_s;
} reg_ttl_t;

typedef struct registry registry_t;

/*
 * Creates an empty registry whose writes go to `backend` (not owned; NULL
 * for a purely in-memory registry, as in unit tests and fuzzing). Returns
 * NULL when out of memory. The registry belongs to the calling thread: every
 * call must come from it (asserted in debug builds).
 */
registry_t *registry_new_with_backend(struct backend *backend);
/*
 * The same over a local `store` (not owned; NULL: in memory only): the
 * registry makes and owns a local backend (backend_local_new) for it.
 */
registry_t *registry_new(struct store *store);
/* Frees everything; parked watchers are dropped without a callback. */
void registry_free(registry_t *reg);

uint64_t registry_index(const registry_t *reg);
size_t registry_token_count(const registry_t *reg);
size_t registry_waiter_count(const registry_t *reg);

/*
 * Bounds the keys (files and directories, _config excluded) one token may
 * hold; a write that would create more is refused with REG_E_TOO_MANY_KEYS.
 * Members beyond a token's size become proxies and never register, so a
 * healthy token holds at most `size` keys. Default REGISTRY_DEFAULT_MAX_KEYS.
 */
#define REGISTRY_DEFAULT_MAX_KEYS 2048
void registry_set_max_keys(registry_t *reg, size_t max_keys_per_token);

/*
 * Bounds the events one token may hold over its life (its creation
 * included): a write past it is refused with REG_E_TOO_MANY_KEYS and a
 * cause naming --max-events-per-token. Expiries and the token's removal
 * are never refused. A bootstrap makes a few events per member; the bound
 * is what keeps a watch's scan of a token's history short (docs/decisions.md).
 * Default REGISTRY_DEFAULT_MAX_EVENTS.
 */
#define REGISTRY_DEFAULT_MAX_EVENTS 5000
void registry_set_max_events(registry_t *reg, size_t max_events_per_token);

/* The bounds of a token size. */
#define REGISTRY_MIN_SIZE 1
#define REGISTRY_MAX_SIZE 1000

/*
 * Whether `name` may name a token: 1..REGISTRY_MAX_TOKEN_BYTES of
 * [A-Za-z0-9._-], not starting with '_' or '.'.
 */
bool registry_valid_token_name(const char *name, size_t len);

/*
 * Whether `key` (a full v2 key, cleaned here) is a token's _config
 * directory or lies below it: the part of a token clients may not write.
 */
bool registry_key_in_config(const char *key);

/*
 * Creates token `name` with cluster size `size` (a "set" event of
 * <token>/_config/size). Fails with REG_E_NODE_EXIST if the token exists.
 */
void registry_create_token(registry_t *reg, const char *name, unsigned size, int64_t now_ns,
                           reg_result_t *out);

/*
 * etcd v2 store operations; see etcd's v2 store for the exact semantics.
 *
 * A get also sets out->stamp: the index of the last event of the node's
 * token. Every change to a token's tree is an event of that token with a new
 * index, and indexes are never reused, so two gets of one node (the same
 * pointer) that return the same nonzero stamp show the same subtree, apart
 * from TTLs, which count down with the clock. This lets an answer rendered
 * once be served until the token changes. The stamp is 0 (no promise) for a
 * token without events. (A write that fails changes nothing, so no tree
 * holds a change that no event records.)
 */
void registry_get(registry_t *reg, const char *key, int64_t now_ns, reg_result_t *out);
void registry_create(registry_t *reg, const char *key, bool is_dir, const char *value, bool unique,
                     reg_ttl_t ttl, int64_t now_ns, reg_result_t *out);
void registry_set(registry_t *reg, const char *key, bool is_dir, const char *value, reg_ttl_t ttl,
                  int64_t now_ns, reg_result_t *out);
void registry_update(registry_t *reg, const char *key, const char *value, reg_ttl_t ttl,
                     int64_t now_ns, reg_result_t *out);
/* prev_value "" and prev_index 0 mean "not compared". */
void registry_compare_and_swap(registry_t *reg, const char *key, const char *prev_value,
                               uint64_t prev_index, const char *value, reg_ttl_t ttl,
                               int64_t now_ns, reg_result_t *out);
void registry_delete(registry_t *reg, const char *key, bool is_dir, bool recursive, int64_t now_ns,
                     reg_result_t *out);
void registry_compare_and_delete(registry_t *reg, const char *key, const char *prev_value,
                                 uint64_t prev_index, int64_t now_ns, reg_result_t *out);

/*
 * Expires every key whose TTL ran out by `now_ns`, one "expire" event each.
 * Returns the wall-clock instant of the next expiry, or 0 if none is due.
 * With a backend that applies on delivery (etcd) it does nothing and
 * returns 0: there the backend's leases decide, and their expiries come
 * back as delivered "expire" changes.
 */
int64_t registry_expire(registry_t *reg, int64_t now_ns);

/*
 * Startup: re-applies an event read back from the backend, in index order,
 * without telling the backend or any watcher. Not bounded by
 * registry_set_max_events(): a store kept under a higher bound loads whole.
 * Takes ownership of `ev` (also on failure). Returns 0, -EINVAL if the
 * event does not follow the registry (out of order, or it does not fit the
 * tree: a corrupt log), or -ENOMEM; on error the registry is as before.
 */
int registry_replay(registry_t *reg, reg_event_t *ev);

/*
 * Raises the global index to at least `index`: after replay, the store's
 * record of the last index it ever used, so that removed tokens do not let
 * indexes repeat.
 */
void registry_raise_index(registry_t *reg, uint64_t index);

/*
 * Removes up to `max_tokens` tokens created before `cutoff_ns`, oldest
 * first, with all their keys and history; each removal is passed to the
 * backend first (one it refuses stops the sweep, to be tried again), and watchers parked on a
 * removed token get on_event(w, NULL). Returns how many were removed; fewer than `max_tokens` means
 * none older than the cutoff is left.
 */
size_t registry_sweep_tokens(registry_t *reg, int64_t cutoff_ns, size_t max_tokens);
/*
 * With a backend that applies on delivery (etcd), registry_sweep_tokens()
 * only asks the backend to remove each old token (a guarded transaction any
 * instance may send) and returns 0; the removal happens here, when the
 * backend delivers it at `index`: the token, its keys and history go, a
 * tombstone explains a later 404, its watchers get on_event(w, NULL) and
 * the removal is logged. A token the mirror does not hold (removed
 * already) only advances the index. 0, or -EINVAL for an index not above
 * the registry's.
 */
int registry_deliver_token_removal(registry_t *reg, const char *name, size_t len, uint64_t index);

/*
 * Tokens removed by age are remembered (name, creation and removal time) so
 * that a request for one can be told it expired and when: at most this
 * many, the oldest forgotten first, in memory only (registry/tombstones.c).
 */
#define REGISTRY_MAX_TOMBSTONES 16384

/*
 * Appends to `out` one sentence saying why token `name` (len bytes) does not
 * exist: malformed (and what is wrong with it), expired (and when, from its
 * tombstone) or never issued. For a cause after REG_E_KEY_NOT_FOUND with
 * token_missing set.
 */
void registry_explain_missing_token(registry_t *reg, const char *name, size_t len, buf_t *out);

/* A token at a glance, for logs and the CLI's questions. */
typedef struct reg_token_summary {
    unsigned size;      /* from _config/size; 0 when it cannot be read */
    size_t members;     /* values directly in the token directory (v2 members) and in its
                           members/ directory (v3 members), hidden ones excluded */
    int64_t created_ns; /* wall clock */
} reg_token_summary_t;

/* Fills `out` and returns true when token `name` (len bytes) exists. */
bool registry_token_summary(registry_t *reg, const char *name, size_t len,
                            reg_token_summary_t *out);

/*
 * A parked watch. The caller owns the memory (typically embedded in a
 * connection) and must keep it alive until on_event fires or it calls
 * registry_unwatch(). on_event fires at most once, after which the waiter is
 * no longer registered; it must not call back into registry writes. `ev` is
 * NULL when the watched token was removed.
 */
typedef struct reg_waiter reg_waiter_t;
typedef void (*reg_waiter_cb)(reg_waiter_t *w, const reg_event_t *ev);
/* The `ev` of on_event when a resync cleared the history the watch was
 * parked on (registry_resync_clear): the answer is etcd's 401 "event index
 * cleared". Never an event to render. */
extern const reg_event_t reg_event_cleared;
#define REG_EVENT_CLEARED (&reg_event_cleared)
struct reg_waiter {
    reg_waiter_t *next, *prev; /* registry-private links */
    void *token;               /* registry-private */
    char *key;                 /* registry-private, owned */
    uint64_t since_index;
    uint64_t start_index; /* X-Etcd-Index of the answer: index when the watch began */
    bool recursive;
    bool removed_hit; /* registry-private */
    reg_waiter_cb on_event;
    void *ctx; /* for the caller */
};

/*
 * Watches `key` for the first event with index >= wait_index (0 = the next
 * one). If history already holds one, `out->event` is set and nothing is
 * parked; otherwise `w` is parked (out->event NULL) and on_event fires later.
 * Errors (bad key, unknown token) come back in `out` and nothing is parked.
 * In every case out->index is the X-Etcd-Index for the answer.
 */
void registry_watch(registry_t *reg, const char *key, bool recursive, uint64_t wait_index,
                    reg_waiter_t *w, reg_waiter_cb on_event, void *ctx, reg_result_t *out);
/* Removes a parked waiter (timeout, client gone). Safe on an unparked one. */
void registry_unwatch(registry_t *reg, reg_waiter_t *w);
/* Removes every parked waiter, calling `cb` on each (shutdown). */
void registry_unwatch_all(registry_t *reg, void (*cb)(reg_waiter_t *w));

/*
 * ---- Writes through a backend that applies on delivery (etcd) ----------
 *
 * With such a backend (backend.h: applies_on_propose false) a write is
 * validated against the mirror, proposed as a guarded transaction, and
 * returns at once with out->pending and a ticket. Nothing is applied until
 * the backend delivers the change back (registry_deliver, in revision
 * order, from every instance alike). The backend then settles the
 * proposal: committed at a revision (the answer is the event at that
 * revision, once applied), guard lost (the request is validated again
 * against the mirror once it has applied the winner, and proposed again or
 * answered with the registry's error), or failed (REG_E_INTERNAL).
 */

/* Called exactly once with the outcome (a write's event, or an error); the
 * result is borrowed for the call. Never from inside the call that made the
 * write; always from the loop (a delivery or a settlement). */
typedef void (*reg_settled_fn)(void *ctx, const reg_result_t *res);
/* Asks for the outcome of `ticket` (from a pending result). */
void registry_await(registry_t *reg, uint64_t ticket, reg_settled_fn fn, void *ctx);
/* The one who awaited is gone: the write goes on, nobody is told. */
void registry_forget(registry_t *reg, uint64_t ticket);
/* Pending writes (for tests and metrics). */
size_t registry_pending_count(const registry_t *reg);

/* A change as a backend delivers it: the registry builds the event (the
 * previous node from its own tree, which is the state just before). */
typedef struct reg_delivered {
    enum reg_action action;
    const char *key; /* full v2 key, clean */
    bool is_dir;
    const char *value; /* files written; NULL otherwise */
    uint64_t index;    /* the backend's revision; above registry_index() */
    int64_t wall_ns;
    int64_t expire_ns; /* 0: permanent */
    /* This instance's proposal `seq` made the change (its action marker
     * says so), else 0: the delivery is that proposal's verdict, whatever
     * the backend's answer to it says or fails to say later. */
    uint64_t own_seq;
} reg_delivered_t;
/*
 * Applies a delivered change, records it and wakes its watchers; then
 * answers the pending writes it settles. 0; -EINVAL when it does not fit
 * the mirror (the mirror must be rebuilt); -ENOMEM (nothing changed).
 */
int registry_deliver(registry_t *reg, const reg_delivered_t *d);
/* The backend has seen everything up to `index` (a progress report, or a
 * revision with nothing for the mirror): pending writes waiting for it go. */
void registry_advance(registry_t *reg, uint64_t index);
/*
 * The backend read the token `name` (len bytes)'s version as of `index`
 * (etcd's P v/<token> at a snapshot load: the token's last change, which
 * may be a delete that left no key to show it). Raises the version its
 * writes are guarded on to `index`, never lowers it; nothing for a token
 * the mirror does not have.
 */
void registry_learn_token_version(registry_t *reg, const char *name, size_t len, uint64_t index);

/* Whether the mirror has a node at the clean full v2 key `key`. */
bool registry_has_key(registry_t *reg, const char *key);
/*
 * A resync could not rebuild the history of the token named by `key` (any
 * key in it) exactly up to `through`: watches from an index at or below
 * it are answered REG_E_EVENT_INDEX_CLEARED from now on, and the ones
 * parked from such an index get on_event(w, REG_EVENT_CLEARED) now.
 * Nothing for a key outside any token.
 */
void registry_resync_clear(registry_t *reg, const char *key, uint64_t through);
/*
 * A resync found the token `key` (its directory's full v2 key) gone whole
 * from the source: removed by age on another instance while this one's
 * backend could not follow (etcd compacted the removal's revision). The
 * token goes as if its removal had been delivered at `index`
 * (registry_deliver_token_removal: the same tombstone, log line and
 * on_event(w, NULL) to its watchers), `index` being a revision of the gap
 * the backend chose. 0; -EINVAL for an index not above the registry's or a
 * key that is no token of the mirror (nothing changed).
 */
int registry_resync_remove_token(registry_t *reg, const char *key, uint64_t index);
/*
 * A resync (the backend missed history it cannot replay, e.g. past an etcd
 * compaction, and compares the mirror with the source's state): calls
 * `gone` for every key of the mirror that `exists` says the source no
 * longer has, topmost only (a directory, not also its children; a token's
 * own directory too), before anything changes. Both callbacks get the full
 * v2 key, borrowed for the call. Nothing is changed here: the backend then
 * delivers the removals it chooses. 0, -ENOMEM, or the first non-zero
 * return of `gone`.
 */
typedef bool (*reg_exists_fn)(void *ctx, const char *key);
typedef int (*reg_gone_fn)(void *ctx, const char *key, bool is_dir);
int registry_resync_find_gone(registry_t *reg, reg_exists_fn exists, reg_gone_fn gone, void *ctx);

/*
 * A wait for the mirror to catch up with its backend (one that applies on
 * delivery, etcd): `out` is pending until the mirror has applied the
 * backend's newest revision as of now (backend.h, propose_barrier), then
 * settles REG_OK with no event. What a caller waits for that found
 * something missing in the mirror which another instance may have made a
 * moment ago, before it decides again. With a backend that applies on
 * propose (the mirror is the store) `out` is REG_OK at once, not pending;
 * REG_E_INTERNAL when the wait cannot be set up.
 */
void registry_await_catch_up(registry_t *reg, reg_result_t *out);

enum reg_settle {
    REG_SETTLE_COMMITTED, /* applied at `index` */
    REG_SETTLE_LOST,      /* the guard failed; the winner is at or below `index` (a guard
                           * on the token's version: its revision, which the retry then
                           * guards on; 0: unknown) */
    REG_SETTLE_FAILED,    /* not applied, or unknown after the hold: `why` */
};
/* The backend's verdict on proposal `seq` (backend.h's propose_txn). */
void registry_settle(registry_t *reg, uint64_t seq, enum reg_settle how, uint64_t index,
                     const char *why);

#endif
