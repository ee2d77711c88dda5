/*
 * backend_etcd.c - the registry as a mirror of an etcd v3 prefix, written
 * through guarded transactions (ETCD-BACKEND.md, design (a)).
 *
 * The mirror: one etcd watch on the prefix, from the revision after the
 * last one applied (at start: revision 1, so a prefix whose history etcd
 * still has is replayed whole, history included, unless that history is
 * longer than ETCD_REPLAY_MAX_REVISIONS: then the mirror is loaded from a
 * range at etcd's current revision, as after a compaction below, and
 * watched from the next one). Each revision's events
 * are read back into one registry change (etcd_layout_read_revision) and
 * applied with registry_deliver(), in revision order. The mirror is live
 * once it has applied the prefix's newest revision as a linearizable range
 * saw it right after the watch was created; until then, and whenever the
 * watch is down, /health says so and writes are refused.
 *
 * Writes: the registry proposes a validated event with its guard
 * (propose_txn); this sends one Txn built by etcd_layout_plan() and tells
 * the registry the verdict (registry_settle):
 *   succeeded            committed at the Txn's revision;
 *   guard failed         lost; the failure branch's ranges name the
 *                        revision of the winner, which the mirror must
 *                        apply before the request is validated again;
 *   gRPC error, unsent   failed (etcd did not apply it);
 *   unknown (timeout, connection lost after sending, leader change)
 *                        held until ETCD_WRITE_BUDGET_MS after its
 *                        sending (inside etcd's v2 discovery PUT budget)
 *                        while the watch may
 *                        still show this proposal's action marker (it names
 *                        this instance and the proposal's seq): seen, it is
 *                        committed at that revision; not seen, failed.
 * Indexes are etcd revisions plus the prefix's index offset (P index_base,
 * written by `disco migrate`; 0 when absent), converted only where the
 * registry and etcd meet (v2_index, etcd_rev); the durable index is the
 * last revision applied, so an answer is never held behind the mirror.
 *
 * Startup on a prefix whose early history etcd compacted: the mirror is
 * loaded from a range at the compact revision (load_snapshot), then
 * watched from the next one. Progress reports (asked for every minute)
 * move the mirror's revision on a quiet prefix, so a watch started again
 * after a failover asks for a recent revision.
 *
 * A running mirror whose watch must start again from a revision etcd
 * compacted is brought up to date from a range the same way (sets and
 * updates above its revision, keys gone removed, tokens gone whole
 * removed as their removal by age is; resync_removals), and watches on
 * tokens whose history it cannot replay exactly are answered "event index
 * cleared" (resync_clear_inexact).
 *
 * Keys with a TTL: one etcd lease per write with a TTL, granted first,
 * then named on the key's put in the write's Txn (propose_with_lease).
 * etcd decides the expiry: its delete (no action marker) comes back as
 * v2's "expire"; the registry's own TTL timer stays off on this backend.
 * The TTL's expiry instant rides in the marker, so every instance shows it.
 *
 * Old tokens (--gcfreq, --minage): any instance may sweep; each removal is
 * one Txn guarded by the token's version key still being the one made at
 * its creation (etcd_layout_plan_gc), so a second removal of the same
 * token, from this instance or another, changes nothing. The mirror
 * removes the token when the removal's revision is delivered (its "gc"
 * marker).
 *
 * History: the mirror keeps the bodies of the recent events only (the
 * registry's ring, as with the local store); fetch() finds none, and a
 * watch from an older waitIndex is answered as etcd answers it, 401 "event
 * index cleared" (docs/decisions.md).
 */
#include "backend/backend_etcd.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "backend/etcd_layout.h"
#include "backend/etcd_txn.h"
#include "etcd/client.h"
#include "loop/loop.h"
#include "registry/registry.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/timeutil.h"

/* etcd's v2 discovery client gives its registration PUT 5 s and treats a
 * timeout or a 5xx as fatal: every proposal is answered within this much of
 * its sending (its Txn deadline, then the hold of an unknown outcome),
 * leaving a second for the answer's way back and the client's own work. */
#define ETCD_V2DISCOVERY_PUT_BUDGET_MS 5000
#define ETCD_WRITE_BUDGET_MS 4000
/* Deadline of one transaction, waiting for a connection included. */
#define ETCD_TXN_TIMEOUT_MS 2000
/* An unknown outcome is held, looking for its marker, until the write's
 * budget is spent: at least this long, past a typical leader election
 * counted from the Txn's sending (ETCD-BACKEND.md §4: 1.8-2.7 s). */
#define ETCD_UNKNOWN_HOLD_MS (ETCD_WRITE_BUDGET_MS - ETCD_TXN_TIMEOUT_MS)
/* Writes are still taken this long after the mirror or the connection went
 * down (etcd_writable): a failover to another member, an election and the
 * watch's return (1.8-2.7 s measured, more on a loaded machine) fit in it;
 * a write taken meanwhile is still answered within ETCD_WRITE_BUDGET_MS. */
#define ETCD_WRITE_GRACE_MS 10000
_Static_assert(ETCD_TXN_TIMEOUT_MS + ETCD_UNKNOWN_HOLD_MS <= ETCD_WRITE_BUDGET_MS &&
                   ETCD_WRITE_BUDGET_MS + 1000 <= ETCD_V2DISCOVERY_PUT_BUDGET_MS,
               "a write's answer must fit etcd's v2 discovery PUT budget with a margin");
#define ETCD_RANGE_TIMEOUT_MS 5000
/* A range over the whole prefix (the snapshot a start or a resync loads,
 * the catch-up range sorted by mod revision, which etcd answers only after
 * reading every key under the prefix): hundreds of thousands of keys on a
 * big prefix, on an etcd busy with other work. */
#define ETCD_PREFIX_RANGE_TIMEOUT_MS 30000
/* A start replays the prefix's history through the watch only when etcd's
 * history since the mirror's revision is at most this long; a longer one is
 * loaded from one range at etcd's current revision instead (load_from_range,
 * docs/decisions.md). etcd 3.4 catches a watch up 1000 revisions per round,
 * each round reading every revision from the watch's to the newest: a
 * replay costs etcd the square of its length (100,000 tokens, 400,000
 * revisions: ~120 revisions/s, no load within ETCD_LOAD_TIMEOUT_MS). */
#define ETCD_REPLAY_MAX_REVISIONS 20000
/* A watch etcd ended (no leader, ...) is asked for again after this. */
#define ETCD_WATCH_RETRY_MS 500
/* A mirror lag (/metrics) this old asks the watch for progress: revisions
 * of keys outside the prefix then stop counting as lag. */
#define ETCD_LAG_PROGRESS_MS 1000

typedef struct unknown_txn {
    struct unknown_txn *next;
    uint64_t seq;
    uint64_t deadline_ms;
    char why[96];
} unknown_txn_t;

/* A call in flight: freed by its callback, or by close (the client makes
 * no callback after it is freed). */
typedef struct call_ctx {
    struct call_ctx *next, *prev;
    struct etcd_backend *be;
    uint64_t seq;          /* a Txn's proposal; 0 for the catch-up range */
    etcd_txn_plan_t *plan; /* owned: a Txn waiting for its lease, or NULL */

    /* When the call was made (a Txn's budget counts from it). */
    uint64_t started_ms;
} call_ctx_t;

typedef struct etcd_backend {
    backend_t base;
    loop_t *loop;
    etcd_client_t *client;
    registry_t *reg;
    etcd_client_config_t ccfg;
    char **endpoints;
    size_t n_endpoints;
    char *prefix, *range_end;
    char *marker_key; /* P act: every transaction of ours puts it */
    char *cacert, *cert, *key, *user, *password;
    char instance[33]; /* random, names this process in markers */
    etcd_watch_t *watch;
    uint64_t watch_retry_ms; /* when to ask for the watch again; 0: not due */
    uint64_t applied;        /* last revision applied to the mirror */
    int64_t index_base;      /* v2 index = revision + index_base (P index_base) */
    bool base_read;          /* the index_base range answered (at load) */
    uint64_t base_rev;       /* its mod revision then (0: absent) */
    uint64_t start_rev;      /* etcd's revision in that range's header (0: unknown) */
    bool start_by_range;     /* loaded from a range at start by choice, not a compaction */
    bool snapshot_due;       /* a failed snapshot range is asked for again (not a watch) */
    uint64_t catch_up;       /* the prefix's newest revision at watch creation */
    bool catch_up_known;
    bool live;
    bool broken; /* the mirror missed history: it cannot be live again */

    /* When writes were last seen possible (etcd_writable). */
    uint64_t writable_ms;
    /* For /metrics (etcd_stats): etcd's newest revision seen in any
     * answer's header; the revision up to which the watch last showed the
     * mirror complete, and when; counters. */
    uint64_t etcd_revision, current_revision, current_ms;
    uint64_t behind_ms;       /* since when etcd_revision is past the mirror; 0: it is not */
    uint64_t lag_progress_ms; /* when etcd_stats last asked for progress */
    uint64_t n_committed, n_lost_guard, n_failed, n_unknown, n_watch_restarts;
    bool watch_started;
    unknown_txn_t *unknown;
    call_ctx_t *calls;
    etcd_kv_event_t *scratch;
    size_t scratch_cap;
} etcd_backend_t;

static etcd_backend_t *eb_of(backend_t *be)
{
    return (etcd_backend_t *)be;
}

/* A revision as the registry's index, and back (0 stays 0: "unknown").
 * The offset is fixed for the prefix's life, so both are one-to-one. */
static uint64_t v2_index(const etcd_backend_t *eb, uint64_t rev)
{
    return rev ? (uint64_t)((int64_t)rev + eb->index_base) : 0;
}

static int64_t etcd_rev(const etcd_backend_t *eb, uint64_t index)
{
    return (int64_t)index - eb->index_base;
}

static call_ctx_t *call_new(etcd_backend_t *eb, uint64_t seq)
{
    call_ctx_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->be = eb;
    c->seq = seq;
    c->started_ms = eb->loop ? loop_now_ms(eb->loop) : 0;
    c->next = eb->calls;
    if (eb->calls)
        eb->calls->prev = c;
    eb->calls = c;
    return c;
}

static void call_free(call_ctx_t *c)
{
    etcd_backend_t *eb = c->be;
    if (c->prev)
        c->prev->next = c->next;
    else
        eb->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->plan) {
        etcd_txn_plan_free(c->plan);
        free(c->plan);
    }
    free(c);
}

static void set_live(etcd_backend_t *eb, bool live)
{
    if (live == eb->live)
        return;
    eb->live = live;
    if (!live && eb->loop)
        eb->writable_ms = loop_now_ms(eb->loop); /* the grace counts from here */
    if (live)
        log_info("etcd mirror live at revision %" PRIu64 " (%s)", eb->applied,
                 etcd_client_endpoint(eb->client) ? etcd_client_endpoint(eb->client) : "?");
    else
        log_warn("etcd mirror not live (last applied revision %" PRIu64 ")", eb->applied);
}

static void check_caught_up(etcd_backend_t *eb)
{
    if (!eb->broken && eb->watch && eb->catch_up_known && eb->applied >= eb->catch_up)
        set_live(eb, true);
}

/* etcd's revision as an answer's header shows it (for the lag metric). */
static uint64_t mirror_complete_to(const etcd_backend_t *eb)
{
    return eb->applied > eb->current_revision ? eb->applied : eb->current_revision;
}

static void note_etcd_revision(etcd_backend_t *eb, const Etcdserverpb__ResponseHeader *h)
{
    if (h && (uint64_t)h->revision > eb->etcd_revision)
        eb->etcd_revision = (uint64_t)h->revision;
    if (eb->etcd_revision > mirror_complete_to(eb) && !eb->behind_ms && eb->loop)
        eb->behind_ms = loop_now_ms(eb->loop);
}

/* A watch response shows the mirror complete up to its header's revision:
 * etcd sends a watch every event in its range up to it first. */
static void note_mirror_current(etcd_backend_t *eb, const Etcdserverpb__ResponseHeader *h)
{
    note_etcd_revision(eb, h);
    if (!h || !eb->loop)
        return;
    if ((uint64_t)h->revision > eb->current_revision)
        eb->current_revision = (uint64_t)h->revision;
    eb->current_ms = loop_now_ms(eb->loop);
    if (mirror_complete_to(eb) >= eb->etcd_revision)
        eb->behind_ms = 0;
}

/* ---- the mirror: one watch ------------------------------------------------ */

static void start_watch(etcd_backend_t *eb);

/* The prefix's newest revision, for "caught up": a linearizable read of
 * the marker key (range_newest). */
static void on_catch_up_range(void *ctx, const etcd_result_t *res)
{
    call_ctx_t *c = ctx;
    etcd_backend_t *eb = c->be;
    call_free(c);
    if (res->outcome != ETCD_OK) {
        log_warn("etcd: cannot read the prefix's newest revision (%s); asking again", res->message);
        eb->watch_retry_ms = loop_now_ms(eb->loop) + ETCD_WATCH_RETRY_MS;
        return;
    }
    const Etcdserverpb__RangeResponse *r = (const Etcdserverpb__RangeResponse *)res->resp;
    note_etcd_revision(eb, r->header);
    eb->catch_up = r->n_kvs ? (uint64_t)r->kvs[0]->mod_revision : 0;
    eb->catch_up_known = true;
    check_caught_up(eb);
}

/* The barrier of a refused write: the prefix's newest revision, which the
 * mirror must reach before the write is validated again. */
static void on_barrier_range(void *ctx, const etcd_result_t *res)
{
    call_ctx_t *c = ctx;
    etcd_backend_t *eb = c->be;
    uint64_t seq = c->seq;
    call_free(c);
    uint64_t newest = 0; /* unknown: validated again against the mirror as it is */
    if (res->outcome == ETCD_OK) {
        const Etcdserverpb__RangeResponse *r = (const Etcdserverpb__RangeResponse *)res->resp;
        newest = r->n_kvs ? (uint64_t)r->kvs[0]->mod_revision : 0;
    }
    registry_settle(eb->reg, seq, REG_SETTLE_LOST, v2_index(eb, newest), NULL);
}

/*
 * The revision of the prefix's newest change, as a linearizable read of
 * the one key every transaction of ours puts (P act), whose mod revision
 * it is. Sorting the prefix by mod revision would give the same answer
 * with the keys etcd deletes itself (lease expiries) counted too, but
 * etcd 3.4 reads and sorts every key of the range for that, on every
 * start, failover and refused write: seconds for 100,000 tokens. An expiry
 * newer than the marker is then applied a moment after "caught up", as
 * if it had come a moment later.
 */
static int range_newest(etcd_backend_t *eb, uint64_t seq, int timeout_ms, etcd_done_fn done)
{
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key = (ProtobufCBinaryData){strlen(eb->marker_key), (uint8_t *)eb->marker_key};
    rq.keys_only = true;
    call_ctx_t *c = call_new(eb, seq);
    if (!c)
        return -ENOMEM;
    int rc = etcd_range(eb->client, &rq, timeout_ms, done, c);
    if (rc != 0)
        call_free(c);
    return rc;
}

static int ask_catch_up(etcd_backend_t *eb)
{
    return range_newest(eb, 0, ETCD_PREFIX_RANGE_TIMEOUT_MS, on_catch_up_range);
}

static int etcd_propose_barrier(backend_t *be, uint64_t seq)
{
    etcd_backend_t *eb = eb_of(be);
    if (!eb->client || !eb->live)
        return -ENOTCONN; /* the refusal stands as the mirror shows it */
    return range_newest(eb, seq, ETCD_RANGE_TIMEOUT_MS, on_barrier_range);
}

/* Our proposal `seq` shows in the watch: settles one whose outcome was
 * unknown. */
static void marker_seen(etcd_backend_t *eb, uint64_t seq, uint64_t rev)
{
    for (unknown_txn_t **pp = &eb->unknown; *pp; pp = &(*pp)->next) {
        if ((*pp)->seq == seq) {
            unknown_txn_t *u = *pp;
            *pp = u->next;
            free(u);
            log_info("etcd: a write whose answer was lost was applied at revision %" PRIu64, rev);
            registry_settle(eb->reg, seq, REG_SETTLE_COMMITTED, v2_index(eb, rev), NULL);
            return;
        }
    }
}

/* A token's removal by age (its "gc" marker) into the mirror; consumes
 * `ch`. */
static void apply_token_removal(etcd_backend_t *eb, uint64_t rev, etcd_change_t *ch)
{
    size_t plen = strlen(REGISTRY_PREFIX "/");
    assert(strlen(ch->key) > plen); /* etcd_layout_read_revision checked the name */
    eb->applied = rev;
    int rc = registry_deliver_token_removal(eb->reg, ch->key + plen, strlen(ch->key + plen),
                                            v2_index(eb, rev));
    assert(rc == 0); /* rev is above every revision applied */
    (void)rc;
    etcd_change_clear(ch);
}

/* Whether a revision writes P index_base to other than the offset this
 * mirror was loaded with (a migration's claim, or its offset when the
 * mirror loaded without one). */
static bool index_base_moved(const etcd_backend_t *eb, const etcd_kv_event_t *evs, size_t n)
{
    size_t plen = strlen(eb->prefix), klen = sizeof "index_base" - 1;
    for (size_t i = 0; i < n; i++) {
        if (evs[i].key_len != plen + klen || memcmp(evs[i].key, eb->prefix, plen) != 0 ||
            memcmp(evs[i].key + plen, "index_base", klen) != 0)
            continue;
        int64_t base;
        return evs[i].is_delete ||
               !etcd_layout_parse_index_base(evs[i].value, evs[i].value_len, &base) ||
               base != eb->index_base;
    }
    return false;
}

/* One revision's events into the mirror. */
static void apply_revision(etcd_backend_t *eb, uint64_t rev, const etcd_kv_event_t *evs, size_t n)
{
    if (rev <= eb->applied || eb->broken)
        return; /* a replay from an earlier start: applied already */
    if (rev > eb->base_rev && index_base_moved(eb, evs, n)) {
        /* A migration into this prefix while the instance ran: every index
         * it applied is off by the new offset. */
        log_error("etcd: %sindex_base was written at revision %" PRIu64 " (a `disco migrate` "
                  "into this prefix while this instance ran); the mirror stops: restart this "
                  "instance",
                  eb->prefix, rev);
        eb->broken = true;
        set_live(eb, false);
        return;
    }
    etcd_change_t ch;
    int rc = etcd_layout_read_revision(eb->prefix, evs, n, &ch);
    if (rc == -ENOMEM) {
        log_error("etcd: out of memory reading revision %" PRIu64 "; the mirror stops", rev);
        eb->broken = true;
        set_live(eb, false);
        return;
    }
    if (rc != 0 || !ch.has_change) {
        if (rc != 0)
            log_warn("etcd: revision %" PRIu64 " under the prefix is not disco's; skipped", rev);
        eb->applied = rev;
        registry_advance(eb->reg, v2_index(eb, rev));
        return;
    }
    if (ch.removes_token) {
        apply_token_removal(eb, rev, &ch);
        return;
    }
    reg_delivered_t d = {.action = ch.action,
                         .key = ch.key,
                         .is_dir = ch.is_dir,
                         .value = ch.value,
                         .index = v2_index(eb, rev),
                         /* A token's creation time is the one its creator
                          * wrote (P m/), so that every instance, and this
                          * one after a restart, sweeps it at the same age. */
                         .wall_ns = ch.created_ns ? ch.created_ns : time_wall_ns(),
                         .expire_ns = ch.expire_ns,
                         .own_seq = strcmp(ch.instance, eb->instance) == 0 ? ch.seq : 0};
    /* Applied from the registry's point of view before it answers the
     * writes this settles: their answers must not wait for it. */
    uint64_t before = eb->applied;
    eb->applied = rev;
    rc = registry_deliver(eb->reg, &d);
    if (rc != 0) {
        eb->applied = before;
        /* The mirror and etcd disagree: every later change may too. */
        log_error("etcd: revision %" PRIu64 " (%s %s) does not fit the mirror (%s); the mirror "
                  "stops: restart this instance",
                  rev, reg_action_name(ch.action), ch.key, strerror(-rc));
        eb->broken = true;
        set_live(eb, false);
        etcd_change_clear(&ch);
        return;
    }
    if (strcmp(ch.instance, eb->instance) == 0)
        marker_seen(eb, ch.seq, rev);
    etcd_change_clear(&ch);
}

/*
 * Startup on a prefix whose early history etcd compacted away: the mirror
 * is built from a range of the prefix at the compact revision C, then the
 * watch goes on from C + 1. The range has each key's state, not its
 * history, so one change is made up per key and revision: a create (the
 * token's size: a set) at its create revision, the deepest key of each
 * revision (the directories on its way come with it, as they came with
 * the transaction that made them), and an update at its mod revision for
 * a file changed since. What the mirror then shows equals what a mirror
 * fed from the start shows, but for the created index of a file replaced
 * by a v2 set (etcd keeps the key's create revision) and for history
 * before C, which watches cannot replay.
 */
typedef struct snap_change {
    uint64_t rev;
    int depth;
    bool is_update;
    const Etcdserverpb__KeyValue *kv; /* NULL: a removal (gone_key) */
    char *gone_key;                   /* owned; a resync's removal of this v2 key */
    bool gone_is_dir;
    bool gone_is_token; /* gone_key is a token's directory: removed whole (by age) */
} snap_change_t;

static int snap_change_order(const void *a, const void *b)
{
    const snap_change_t *x = a, *y = b;
    if (x->rev != y->rev)
        return x->rev < y->rev ? -1 : 1;
    return y->depth - x->depth; /* the deepest key of a revision first */
}

typedef struct created_at {
    char *v2key;
    uint64_t rev;
} created_at_t;

static int created_at_order(const void *a, const void *b)
{
    return strcmp(((const created_at_t *)a)->v2key, ((const created_at_t *)b)->v2key);
}

/* A token's creation time as its creator wrote it (P m/<token>): a mirror
 * loaded from a range dates each token as the watch would have, so that
 * its page and its removal by age agree with every other instance. */
typedef struct token_born {
    const char *name; /* into the range's key, not terminated */
    size_t len;
    int64_t ns;
} token_born_t;

static int token_born_order(const void *a, const void *b)
{
    const token_born_t *x = a, *y = b;
    int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The creation time of token `name` (len bytes) in `ts`, or 0. */
static int64_t token_born_at(const token_born_t *ts, size_t n, const char *name, size_t len)
{
    token_born_t want = {name, len, 0};
    const token_born_t *t = n ? bsearch(&want, ts, n, sizeof *ts, token_born_order) : NULL;
    return t ? t->ns : 0;
}

/* The v2 createdIndex kept apart for files a set replaced (P c/...). */
static created_at_t *created_index_of(created_at_t *cs, size_t n, const char *v2key)
{
    created_at_t want = {(char *)v2key, 0};
    return n ? bsearch(&want, cs, n, sizeof *cs, created_at_order) : NULL;
}

/*
 * A resync's removals: keys of the mirror that the range `r` (the prefix
 * at revision `at`) no longer has were deleted somewhere in (after, at].
 * Which revision etcd gave each deletion is lost with the history; each is
 * given a revision of that span that no key of the range was created or
 * modified at (a deletion's transaction puts no k/ key, so there are at
 * least as many as there were deletions), the lowest first. Appended to
 * `*chs` (grown as needed). A token that is gone whole was removed by age
 * on another instance (only a sweep removes a token's directory): it is
 * removed here as that removal's delivery would have removed it, at a
 * free revision too (the sweep's transaction puts no k/ key either).
 */
typedef struct gone_scan {
    char **present; /* sorted v2 keys of the range */
    size_t n_present;
    snap_change_t *gone;
    size_t n_gone, cap_gone;
} gone_scan_t;

static int str_order(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int rev_order(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bool gone_scan_exists(void *ctx, const char *key)
{
    gone_scan_t *g = ctx;
    return g->n_present && bsearch(&key, g->present, g->n_present, sizeof *g->present, str_order);
}

static int gone_scan_add(void *ctx, const char *key, bool is_dir)
{
    gone_scan_t *g = ctx;
    bool is_token = !strchr(key + strlen(REGISTRY_PREFIX "/"), '/');
    assert(!is_token || is_dir);
    if (g->n_gone == g->cap_gone) {
        size_t cap = g->cap_gone ? 2 * g->cap_gone : 16;
        snap_change_t *n = realloc(g->gone, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        g->gone = n;
        g->cap_gone = cap;
    }
    char *k = strdup(key);
    if (!k)
        return -ENOMEM;
    int depth = 0;
    for (const char *p = key; *p; p++)
        depth += *p == '/';
    g->gone[g->n_gone++] = (snap_change_t){
        .depth = depth, .gone_key = k, .gone_is_dir = is_dir, .gone_is_token = is_token};
    return 0;
}

/* Whether `kv` is a P <kind>/ key with a v2 key in it (etcd_layout.c reads
 * it so): then a NULL from reading it is out of memory. */
static bool names_v2_key(const char *prefix, char kind, const Etcdserverpb__KeyValue *kv)
{
    size_t plen = strlen(prefix), len = kv->key.len;
    if (len < plen + 3 || memcmp(kv->key.data, prefix, plen) != 0 ||
        kv->key.data[plen] != (uint8_t)kind || kv->key.data[plen + 1] != '/')
        return false;
    bool is_dir = kv->key.data[len - 1] == '/';
    if (is_dir && kind == 'c')
        return false; /* P c/ keys are files' only */
    return len - plen - 2 - is_dir > 0;
}

static int resync_removals(etcd_backend_t *eb, const Etcdserverpb__RangeResponse *r, uint64_t after,
                           uint64_t at, snap_change_t **chs, size_t *n)
{
    gone_scan_t g = {0};
    uint64_t *used = calloc(2 * r->n_kvs + 1, sizeof *used);
    size_t n_used = 0;
    int rc = 0;
    g.present = calloc(r->n_kvs + 1, sizeof *g.present);
    if (!used || !g.present)
        rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < r->n_kvs; i++) {
        const Etcdserverpb__KeyValue *kv = r->kvs[i];
        bool is_dir;
        char *key =
            etcd_layout_v2_key(eb->prefix, (const char *)kv->key.data, kv->key.len, &is_dir);
        char *created = key ? NULL
                            : etcd_layout_v2_key_of_created(eb->prefix, (const char *)kv->key.data,
                                                            kv->key.len);
        if ((!key && names_v2_key(eb->prefix, 'k', kv)) ||
            (!key && !created && names_v2_key(eb->prefix, 'c', kv))) {
            free(created);
            rc = -ENOMEM; /* not read: a key must not look gone, a revision free */
            break;
        }
        if (!key && !created)
            continue; /* v/, m/, act: the deletions' own transactions put them */
        if (key)
            g.present[g.n_present++] = key;
        free(created);
        used[n_used++] = (uint64_t)kv->create_revision;
        used[n_used++] = (uint64_t)kv->mod_revision;
    }
    if (rc == 0) {
        qsort(g.present, g.n_present, sizeof *g.present, str_order);
        qsort(used, n_used, sizeof *used, rev_order);
        rc = registry_resync_find_gone(eb->reg, gone_scan_exists, gone_scan_add, &g);
    }
    /* The lowest free revisions, shallowest removal first (a directory
     * before nothing below it: topmost keys only, so any order works). */
    uint64_t rev = after;
    size_t u = 0, placed = 0;
    for (size_t i = 0; rc == 0 && i < g.n_gone; i++) {
        for (rev++; u < n_used && used[u] <= rev; u++)
            if (used[u] == rev)
                rev++;
        if (rev > at)
            break;
        g.gone[i].rev = rev;
        placed++;
    }
    if (rc == 0 && placed < g.n_gone)
        log_warn("etcd: resync: %zu keys deleted while the mirror was away have no revision "
                 "left to be removed at; they stay until a restart",
                 g.n_gone - placed);
    if (rc == 0 && placed) {
        snap_change_t *grown = realloc(*chs, (*n + placed) * sizeof *grown);
        if (!grown) {
            rc = -ENOMEM;
        } else {
            *chs = grown;
            memcpy(grown + *n, g.gone, placed * sizeof *grown);
            *n += placed;
        }
    }
    for (size_t i = rc == 0 ? placed : 0; i < g.n_gone; i++)
        free(g.gone[i].gone_key); /* the placed ones now belong to *chs */
    free(g.gone);
    for (size_t i = 0; g.present && i < g.n_present; i++)
        free(g.present[i]);
    free(g.present);
    free(used);
    return rc;
}

/*
 * Applies the range `r` (the prefix at one revision) to the mirror: every
 * made-up change above revision `after` (0: an empty mirror, at start; else
 * the last revision applied, when a running watch had to start again past
 * a compaction: then what changed in between comes as sets, updates and
 * removals at revisions range_rev or below, and a change that does not
 * fit is skipped with a warning).
 */
/*
 * Before a resync's changes are applied: a token whose changes in the gap
 * cannot be replayed exactly (a removal, an update, a key made again: each
 * hides events etcd no longer has) has its history up to `range_rev`
 * cleared, so its parked watchers get etcd's 401 instead of a made-up
 * event. A token that only gained keys written once (members registering)
 * is replayed exactly: each key's create revision is its event's index.
 */
static void resync_clear_inexact(etcd_backend_t *eb, const snap_change_t *chs, size_t n,
                                 uint64_t range_rev)
{
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__KeyValue *kv = chs[i].kv;
        if (!kv) {
            /* A token gone whole is answered as its removal answers:
             * nothing it saw before matters once it is gone. */
            if (!chs[i].gone_is_token)
                registry_resync_clear(eb->reg, chs[i].gone_key, v2_index(eb, range_rev));
            continue;
        }
        bool is_dir;
        char *key =
            etcd_layout_v2_key(eb->prefix, (const char *)kv->key.data, kv->key.len, &is_dir);
        if (!key)
            continue; /* v/, m/, act, c/: not the tree */
        if (chs[i].is_update || registry_has_key(eb->reg, key))
            registry_resync_clear(eb->reg, key, v2_index(eb, range_rev));
        free(key);
    }
}

/* One of resync_removals' removals into the mirror. */
static int resync_remove(etcd_backend_t *eb, const snap_change_t *ch)
{
    if (ch->gone_is_token) {
        /* As its "gc" marker's delivery (apply_token_removal) would. */
        uint64_t before = eb->applied;
        eb->applied = ch->rev;
        if (registry_resync_remove_token(eb->reg, ch->gone_key, v2_index(eb, ch->rev)) != 0) {
            log_warn("etcd: resync: the token %s (removed while the mirror was away) cannot be "
                     "removed from it; it stays until a restart",
                     ch->gone_key);
            eb->applied = before;
        }
        return 0;
    }
    reg_delivered_t d = {.action = REG_ACT_DELETE,
                         .key = ch->gone_key,
                         .is_dir = ch->gone_is_dir,
                         .index = v2_index(eb, ch->rev),
                         .wall_ns = time_wall_ns()};
    uint64_t before = eb->applied;
    eb->applied = ch->rev;
    int rc = registry_deliver(eb->reg, &d);
    if (rc == -EINVAL) {
        log_warn("etcd: resync: %s (deleted while the mirror was away) cannot be removed from "
                 "it; skipped",
                 ch->gone_key);
        eb->applied = before;
        return 0;
    }
    if (rc != 0)
        eb->applied = before;
    return rc;
}

static int load_snapshot(etcd_backend_t *eb, const Etcdserverpb__RangeResponse *r, uint64_t after,
                         uint64_t range_rev)
{
    snap_change_t *chs = calloc(2 * r->n_kvs + 1, sizeof *chs);
    created_at_t *cs = calloc(r->n_kvs + 1, sizeof *cs);
    token_born_t *born = calloc(r->n_kvs + 1, sizeof *born);
    size_t n = 0, n_cs = 0, n_born = 0;
    int rc = chs && cs && born ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < r->n_kvs; i++) {
        const Etcdserverpb__KeyValue *kv = r->kvs[i];
        token_born_t *t = &born[n_born];
        if (etcd_layout_parse_meta(eb->prefix, (const char *)kv->key.data, kv->key.len,
                                   (const char *)kv->value.data, kv->value.len, &t->name, &t->len,
                                   &t->ns)) {
            n_born++;
            continue;
        }
        char *c =
            etcd_layout_v2_key_of_created(eb->prefix, (const char *)kv->key.data, kv->key.len);
        if (c)
            cs[n_cs++] = (created_at_t){c, (uint64_t)kv->mod_revision};
    }
    if (n_cs)
        qsort(cs, n_cs, sizeof *cs, created_at_order);
    if (n_born)
        qsort(born, n_born, sizeof *born, token_born_order);
    for (size_t i = 0; rc == 0 && i < r->n_kvs; i++) {
        const Etcdserverpb__KeyValue *kv = r->kvs[i];
        bool is_dir = kv->key.len && kv->key.data[kv->key.len - 1] == '/';
        int depth = is_dir ? -1 : 0; /* a directory's trailing '/' is no level */
        for (size_t k = 0; k < kv->key.len; k++)
            depth += kv->key.data[k] == '/';
        uint64_t created = (uint64_t)kv->create_revision;
        if (n_cs && !is_dir) {
            bool d;
            char *v2 = etcd_layout_v2_key(eb->prefix, (const char *)kv->key.data, kv->key.len, &d);
            created_at_t *at = v2 ? created_index_of(cs, n_cs, v2) : NULL;
            if (at)
                created = at->rev;
            free(v2);
        }
        if (created > after)
            chs[n++] = (snap_change_t){.rev = created, .depth = depth, .kv = kv};
        if (!is_dir && (uint64_t)kv->mod_revision > created && (uint64_t)kv->mod_revision > after)
            chs[n++] = (snap_change_t){
                .rev = (uint64_t)kv->mod_revision, .depth = depth, .is_update = true, .kv = kv};
    }
    for (size_t i = 0; i < n_cs; i++)
        free(cs[i].v2key);
    free(cs);
    if (rc != 0) {
        free(born);
        free(chs);
        return rc;
    }
    if (after > 0 && (rc = resync_removals(eb, r, after, range_rev, &chs, &n)) != 0) {
        free(born);
        free(chs);
        return rc;
    }
    qsort(chs, n, sizeof *chs, snap_change_order);
    if (after > 0)
        resync_clear_inexact(eb, chs, n, range_rev);
    uint64_t last = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const Etcdserverpb__KeyValue *kv = chs[i].kv;
        if (chs[i].rev == last)
            continue; /* a directory made by the same transaction */
        if (!kv) {
            rc = resync_remove(eb, &chs[i]);
            last = chs[i].rev;
            continue;
        }
        bool is_dir;
        char *key =
            etcd_layout_v2_key(eb->prefix, (const char *)kv->key.data, kv->key.len, &is_dir);
        if (!key)
            continue; /* not a token's key (v/, m/, act) */
        size_t plen = strlen(REGISTRY_PREFIX "/");
        const char *rest = strchr(key + plen, '/');
        if (!rest) { /* a token's directory alone: made with its size */
            free(key);
            continue;
        }
        char *value = is_dir ? NULL : strndup((const char *)kv->value.data, kv->value.len);
        if (!is_dir && !value) {
            free(key);
            rc = -ENOMEM;
            break;
        }
        bool is_size = strcmp(rest, "/_config/size") == 0;
        int64_t wall = 0;
        if (is_size && !chs[i].is_update)
            wall = token_born_at(born, n_born, key + plen, (size_t)(rest - key - plen));
        /* At a resync a file may exist already (deleted and made again in
         * between): a set replaces it. */
        bool set = is_size || (after > 0 && !is_dir);
        reg_delivered_t d = {.action = chs[i].is_update ? REG_ACT_UPDATE
                                       : set            ? REG_ACT_SET
                                                        : REG_ACT_CREATE,
                             .key = key,
                             .is_dir = is_dir,
                             .value = value,
                             .index = v2_index(eb, chs[i].rev),
                             .wall_ns = wall ? wall : time_wall_ns()};
        uint64_t before = eb->applied;
        eb->applied = chs[i].rev;
        rc = registry_deliver(eb->reg, &d);
        if (rc == -EINVAL && after > 0) {
            log_warn("etcd: resync: the key %s at revision %" PRIu64 " does not fit the mirror; "
                     "skipped",
                     key, chs[i].rev);
            eb->applied = before;
            rc = 0;
        } else if (rc != 0) {
            log_error("etcd: the key %s at revision %" PRIu64 " does not fit the mirror (%s)", key,
                      chs[i].rev, strerror(-rc));
        }
        last = chs[i].rev;
        free(key);
        free(value);
    }
    /* Each token's version (P v/<token>, written by every change to it) is
     * the revision its next write is guarded on: the token's last change
     * may be a delete, which left no key above to show its revision. */
    size_t plen = strlen(eb->prefix);
    for (size_t i = 0; rc == 0 && i < r->n_kvs; i++) {
        const Etcdserverpb__KeyValue *kv = r->kvs[i];
        if (kv->key.len > plen + 2 && memcmp(kv->key.data + plen, "v/", 2) == 0 &&
            memcmp(kv->key.data, eb->prefix, plen) == 0)
            registry_learn_token_version(eb->reg, (const char *)kv->key.data + plen + 2,
                                         kv->key.len - plen - 2,
                                         v2_index(eb, (uint64_t)kv->mod_revision));
    }
    for (size_t i = 0; i < n; i++)
        free(chs[i].gone_key);
    free(chs);
    free(born);
    return rc;
}

static void on_snapshot_range(void *ctx, const etcd_result_t *res)
{
    call_ctx_t *c = ctx;
    etcd_backend_t *eb = c->be;
    uint64_t at = c->seq; /* the revision the range was made at; 0: etcd's current */
    call_free(c);
    if (res->outcome != ETCD_OK) {
        log_warn("etcd: cannot range the prefix at revision %" PRIu64 " (%s); trying again", at,
                 res->message);
        /* Again as a range, at etcd's revision then (`at` may be compacted
         * meanwhile), not as a watch replaying what the range skips. */
        eb->snapshot_due = true;
        eb->watch_retry_ms = loop_now_ms(eb->loop) + ETCD_WATCH_RETRY_MS;
        return;
    }
    const Etcdserverpb__RangeResponse *r = (const Etcdserverpb__RangeResponse *)res->resp;
    if (at == 0) {
        if (!r->header || r->header->revision <= 0) {
            log_warn("etcd: a range of the prefix without its revision; trying again");
            eb->snapshot_due = true;
            eb->watch_retry_ms = loop_now_ms(eb->loop) + ETCD_WATCH_RETRY_MS;
            return;
        }
        at = (uint64_t)r->header->revision;
    }
    /* A start by choice loads into an empty mirror (a migrated prefix's
     * applied revision is only where its history starts): a load, not a
     * resync against what the mirror holds. */
    assert(!eb->start_by_range || registry_token_count(eb->reg) == 0);
    uint64_t after = eb->start_by_range ? 0 : eb->applied;
    int rc = load_snapshot(eb, r, after, at);
    if (rc != 0) {
        eb->broken = true;
        set_live(eb, false);
        return;
    }
    if (at > eb->applied) {
        eb->applied = at;
        registry_advance(eb->reg, v2_index(eb, at));
    }
    if (eb->start_by_range)
        log_info("etcd: the mirror was loaded from the prefix's state at revision %" PRIu64
                 " (%zu tokens); earlier history is not replayed",
                 at, registry_token_count(eb->reg));
    else if (after == 0)
        log_info("etcd: the prefix's history before revision %" PRIu64
                 " is compacted: the mirror was loaded from its state at that revision (%zu "
                 "tokens)",
                 at, registry_token_count(eb->reg));
    else
        log_warn("etcd: revisions %" PRIu64 " to %" PRIu64 " were compacted before the mirror "
                 "saw them: it was brought up to date from the prefix's state at %" PRIu64
                 " (keys deleted in between removed)",
                 after + 1, at, at);
    eb->start_by_range = false; /* a later range is a resync */
    start_watch(eb);
}

/* etcd's history starts at `compact`, after what the mirror has applied, or
 * a start skips a long history (ETCD_REPLAY_MAX_REVISIONS): load the state
 * at that revision (0: etcd's current one). */
static void load_from_range(etcd_backend_t *eb, uint64_t compact)
{
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key = (ProtobufCBinaryData){strlen(eb->prefix), (uint8_t *)eb->prefix};
    rq.range_end = (ProtobufCBinaryData){strlen(eb->range_end), (uint8_t *)eb->range_end};
    rq.revision = (int64_t)compact;
    call_ctx_t *c = call_new(eb, compact);
    int rc = c ? etcd_range(eb->client, &rq, ETCD_PREFIX_RANGE_TIMEOUT_MS, on_snapshot_range, c)
               : -ENOMEM;
    if (rc != 0) {
        if (c)
            call_free(c);
        eb->broken = true;
        log_error("etcd: cannot ask for the prefix at revision %" PRIu64 ": %s", compact,
                  strerror(-rc));
    }
}

static void on_watch(void *ctx, const Etcdserverpb__WatchResponse *resp)
{
    etcd_backend_t *eb = ctx;
    if (!resp) { /* the stream ended: the client moves to another endpoint */
        eb->watch = NULL;
        set_live(eb, false);
        start_watch(eb);
        return;
    }
    if (resp->canceled) {
        eb->watch = NULL;
        set_live(eb, false);
        if (resp->compact_revision > 0) {
            load_from_range(eb, (uint64_t)resp->compact_revision);
        } else {
            log_warn("etcd: the watch was ended (%s); asking again",
                     resp->cancel_reason ? resp->cancel_reason : "no reason");
            eb->watch_retry_ms = loop_now_ms(eb->loop) + ETCD_WATCH_RETRY_MS;
        }
        return;
    }
    if (!resp->created && resp->n_events == 0 && resp->header && resp->watch_id == -1) {
        /* The answer to a progress request (etcd_watch_progress), for the
         * lag metric only. etcd before 3.4.25 and 3.5.8 sends it on its
         * own path with the store's revision, whether or not this watch
         * has been sent the events below it (etcd issue 15220): it can
         * overtake events still queued, and taken as "applied up to here"
         * it would make the mirror skip them. */
        if (eb->live && !eb->broken)
            note_mirror_current(eb, resp->header);
        return;
    }
    if (!resp->created && resp->n_events == 0 && resp->header &&
        (uint64_t)resp->header->revision > eb->applied && !eb->broken) {
        /* A periodic progress report of this watch (progress_notify):
         * etcd sends it in order with the watch's events, and only to a
         * watch that has been sent every event up to this revision. */
        eb->applied = (uint64_t)resp->header->revision;
        registry_advance(eb->reg, v2_index(eb, eb->applied));
        check_caught_up(eb);
        if (eb->live)
            note_mirror_current(eb, resp->header);
        return;
    }
    if (resp->created) {
        eb->catch_up_known = false;
        if (ask_catch_up(eb) != 0)
            eb->watch_retry_ms = loop_now_ms(eb->loop) + ETCD_WATCH_RETRY_MS;
    }
    if (resp->n_events > eb->scratch_cap) {
        etcd_kv_event_t *s = realloc(eb->scratch, resp->n_events * sizeof *s);
        if (!s) {
            log_error("etcd: out of memory reading the watch; the mirror stops");
            eb->broken = true;
            set_live(eb, false);
            return;
        }
        eb->scratch = s;
        eb->scratch_cap = resp->n_events;
    }
    /* Events come in revision order; one revision (one transaction) is
     * never split across responses (no fragmenting asked for). */
    size_t i = 0;
    while (i < resp->n_events) {
        uint64_t rev = (uint64_t)resp->events[i]->kv->mod_revision;
        size_t n = 0;
        for (; i < resp->n_events && (uint64_t)resp->events[i]->kv->mod_revision == rev; i++) {
            const Etcdserverpb__Event *e = resp->events[i];
            eb->scratch[n++] = (etcd_kv_event_t){
                .is_delete = e->type == ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE,
                .key = (const char *)e->kv->key.data,
                .key_len = e->kv->key.len,
                .value = (const char *)e->kv->value.data,
                .value_len = e->kv->value.len,
            };
        }
        apply_revision(eb, rev, eb->scratch, n);
    }
    check_caught_up(eb);
    /* A live watch has been sent every event up to its header's revision
     * (a created answer's header is etcd's revision, not the watch's). */
    if (eb->live && !resp->created)
        note_mirror_current(eb, resp->header);
    else
        note_etcd_revision(eb, resp->header);
}

static void start_watch(etcd_backend_t *eb)
{
    if (eb->broken)
        return;
    Etcdserverpb__WatchCreateRequest rq = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    rq.key = (ProtobufCBinaryData){strlen(eb->prefix), (uint8_t *)eb->prefix};
    rq.range_end = (ProtobufCBinaryData){strlen(eb->range_end), (uint8_t *)eb->range_end};
    rq.start_revision = (int64_t)eb->applied + 1;
    /* etcd's own progress reports (every 10 minutes in 3.4) keep a quiet
     * prefix's mirror at a recent revision, so that a watch that must
     * start again after a failover starts from one compaction has not
     * removed (with the retention docs/operating.md asks for). */
    rq.progress_notify = true;
    if (eb->watch_started)
        eb->n_watch_restarts++;
    eb->watch_started = true;
    eb->watch = etcd_watch(eb->client, &rq, on_watch, eb);
    eb->watch_retry_ms = eb->watch ? 0 : loop_now_ms(eb->loop) + ETCD_WATCH_RETRY_MS;
}

/* ---- writes ------------------------------------------------------------- */

static void on_txn(void *ctx, const etcd_result_t *res)
{
    call_ctx_t *c = ctx;
    etcd_backend_t *eb = c->be;
    uint64_t seq = c->seq;
    uint64_t started_ms = c->started_ms;
    call_free(c);
    switch (res->outcome) {
    case ETCD_OK: {
        const Etcdserverpb__TxnResponse *r = (const Etcdserverpb__TxnResponse *)res->resp;
        uint64_t rev = r->header ? (uint64_t)r->header->revision : 0;
        note_etcd_revision(eb, r->header);
        if (r->succeeded) {
            eb->n_committed++;
            registry_settle(eb->reg, seq, REG_SETTLE_COMMITTED, v2_index(eb, rev), NULL);
            return;
        }
        eb->n_lost_guard++;
        /* Lost: the failure branch ranged what the guard looked at; the
         * newest of them is the winner the mirror must show first. */
        uint64_t winner = 0;
        for (size_t i = 0; i < r->n_responses; i++) {
            const Etcdserverpb__ResponseOp *op = r->responses[i];
            if (op->response_case != ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE)
                continue;
            for (size_t k = 0; k < op->response_range->n_kvs; k++)
                if ((uint64_t)op->response_range->kvs[k]->mod_revision > winner)
                    winner = (uint64_t)op->response_range->kvs[k]->mod_revision;
        }
        registry_settle(eb->reg, seq, REG_SETTLE_LOST, v2_index(eb, winner), NULL);
        return;
    }
    case ETCD_GRPC:
    case ETCD_UNSENT: {
        eb->n_failed++;
        char why[160];
        snprintf(why, sizeof why, "etcd did not take the change (%s); retry", res->message);
        registry_settle(eb->reg, seq, REG_SETTLE_FAILED, 0, why);
        return;
    }
    case ETCD_UNKNOWN: {
        eb->n_unknown++;
        unknown_txn_t *u = calloc(1, sizeof *u);
        if (!u) {
            registry_settle(eb->reg, seq, REG_SETTLE_FAILED, 0,
                            "the outcome of this change is unknown; retry");
            return;
        }
        u->seq = seq;
        /* The hold ends when the write's budget does, counted from its
         * sending: an answer etcd gave early with an unknown outcome
         * ("leader changed") is held longer, one that timed out less. */
        uint64_t now = loop_now_ms(eb->loop);
        u->deadline_ms = started_ms + ETCD_WRITE_BUDGET_MS;
        if (u->deadline_ms < now)
            u->deadline_ms = now;
        snprintf(u->why, sizeof u->why, "%s", res->message);
        u->next = eb->unknown;
        eb->unknown = u;
        log_warn("etcd: no answer to a write (%s); holding it for %" PRIu64 " ms", res->message,
                 u->deadline_ms - now);
        return;
    }
    }
}

/* The plan as a Txn, its call numbered `seq` (etcd_txn_send_plan encodes
 * it before it returns: `plan` may go right after). */
static int send_plan_to(etcd_backend_t *eb, const etcd_txn_plan_t *plan, uint64_t seq,
                        etcd_done_fn done)
{
    call_ctx_t *c = call_new(eb, seq);
    if (!c)
        return -ENOMEM;
    int rc = etcd_txn_send_plan(eb->client, plan, ETCD_TXN_TIMEOUT_MS, done, c);
    if (rc != 0)
        call_free(c);
    return rc;
}

static int send_plan(etcd_backend_t *eb, const etcd_txn_plan_t *plan, uint64_t seq)
{
    return send_plan_to(eb, plan, seq, on_txn);
}

/* ---- keys with a TTL: a lease first, then the Txn ------------------------- */

/* The lease of a write with a TTL: granted, its Txn goes now; else the
 * write failed, certainly not applied (its Txn was never sent; a lease
 * granted without an answer attaches nothing and runs out by itself). */
static void on_lease_granted(void *ctx, const etcd_result_t *res)
{
    call_ctx_t *c = ctx;
    etcd_backend_t *eb = c->be;
    uint64_t seq = c->seq;
    etcd_txn_plan_t *plan = c->plan;
    c->plan = NULL;
    call_free(c);
    char why[192];
    int rc = -EIO;
    if (res->outcome == ETCD_OK) {
        const Etcdserverpb__LeaseGrantResponse *r =
            (const Etcdserverpb__LeaseGrantResponse *)res->resp;
        for (size_t i = 0; i < plan->n_success; i++)
            if (plan->success[i].lease == -1) /* marked by propose_with_lease */
                plan->success[i].lease = r->id;
        rc = r->id > 0 ? send_plan(eb, plan, seq) : -EIO;
        snprintf(why, sizeof why, "%s", rc == -ENOMEM ? "out of memory" : "etcd granted no lease");
    } else {
        snprintf(why, sizeof why, "etcd did not grant the key's lease (%s); retry", res->message);
    }
    etcd_txn_plan_free(plan);
    free(plan);
    if (rc != 0)
        registry_settle(eb->reg, seq, REG_SETTLE_FAILED, 0, why);
}

/* A write of a key with a TTL: one new lease for it (v2's TTL is per key),
 * then its Txn with the lease on the key's put. */
static int propose_with_lease(etcd_backend_t *eb, etcd_txn_plan_t *plan, const reg_event_t *ev,
                              uint64_t seq)
{
    /* Marked now, filled with the lease's id once granted. */
    if (etcd_layout_plan_set_lease(plan, eb->prefix, ev->node.key, ev->node.is_dir, -1) == 0) {
        etcd_txn_plan_free(plan);
        return -EINVAL; /* a plan that puts no key: not a write with a TTL */
    }
    call_ctx_t *c = call_new(eb, seq);
    etcd_txn_plan_t *owned = malloc(sizeof *owned);
    if (!c || !owned) {
        if (c)
            call_free(c);
        free(owned);
        etcd_txn_plan_free(plan);
        return -ENOMEM;
    }
    *owned = *plan; /* moved */
    c->plan = owned;
    Etcdserverpb__LeaseGrantRequest rq = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    rq.ttl = etcd_layout_lease_seconds(ev->node.expire_ns, time_wall_ns());
    int rc = etcd_lease_grant(eb->client, &rq, ETCD_TXN_TIMEOUT_MS, on_lease_granted, c);
    if (rc != 0)
        call_free(c);
    return rc;
}

static int etcd_propose_txn(backend_t *be, const reg_event_t *ev, const backend_guard_t *g,
                            uint64_t seq)
{
    etcd_backend_t *eb = eb_of(be);
    if (!eb->client)
        return -ENOTCONN;
    backend_guard_t rg = *g; /* the guard's index as the revision etcd compares */
    if (rg.kind == BACKEND_GUARD_TOKEN_AT)
        rg.token_index = (uint64_t)etcd_rev(eb, g->token_index);
    etcd_txn_plan_t plan;
    int rc = etcd_layout_plan(eb->prefix, ev, &rg, eb->instance, seq, &plan);
    if (rc != 0)
        return rc;
    bool removal =
        ev->action == REG_ACT_DELETE || ev->action == REG_ACT_CAD || ev->action == REG_ACT_EXPIRE;
    if (ev->node.expire_ns && !removal)
        return propose_with_lease(eb, &plan, ev, seq);
    rc = send_plan(eb, &plan, seq);
    etcd_txn_plan_free(&plan);
    return rc;
}

/* ---- the loop's timer: held unknown outcomes, watch retries -------------- */

static uint64_t etcd_timer(void *ctx, uint64_t now_ms)
{
    etcd_backend_t *eb = ctx;
    uint64_t next = 0;
    for (unknown_txn_t **pp = &eb->unknown; *pp;) {
        unknown_txn_t *u = *pp;
        if (now_ms >= u->deadline_ms) {
            *pp = u->next;
            char why[192];
            snprintf(why, sizeof why,
                     "etcd did not confirm this change in time (%s); its outcome is unknown: "
                     "read before retrying",
                     u->why);
            uint64_t seq = u->seq;
            free(u);
            registry_settle(eb->reg, seq, REG_SETTLE_FAILED, 0, why);
            continue;
        }
        if (!next || u->deadline_ms < next)
            next = u->deadline_ms;
        pp = &u->next;
    }
    if (eb->watch_retry_ms && now_ms >= eb->watch_retry_ms) {
        eb->watch_retry_ms = 0;
        if (!eb->watch && eb->snapshot_due) {
            eb->snapshot_due = false;
            load_from_range(eb, 0);
        } else if (!eb->watch) {
            start_watch(eb);
        } else if (!eb->catch_up_known && ask_catch_up(eb) != 0) {
            eb->watch_retry_ms = now_ms + ETCD_WATCH_RETRY_MS;
        }
    }
    if (eb->watch_retry_ms && (!next || eb->watch_retry_ms < next))
        next = eb->watch_retry_ms;
    return next;
}

/* ---- the backend's calls ------------------------------------------------ */

/* P index_base, read once at load: the offset of a migrated prefix. */
static void on_index_base_range(void *ctx, const etcd_result_t *res)
{
    call_ctx_t *c = ctx;
    etcd_backend_t *eb = c->be;
    call_free(c);
    eb->base_read = true;
    if (res->outcome != ETCD_OK) {
        log_error("etcd: cannot read the prefix's index offset: %s", res->message);
        eb->broken = true;
        return;
    }
    const Etcdserverpb__RangeResponse *r = (const Etcdserverpb__RangeResponse *)res->resp;
    note_etcd_revision(eb, r->header);
    if (r->header && r->header->revision > 0)
        eb->start_rev = (uint64_t)r->header->revision;
    if (r->n_kvs == 0)
        return; /* never migrated into: indexes are revisions */
    const Etcdserverpb__KeyValue *kv = r->kvs[0];
    if (!etcd_layout_parse_index_base((const char *)kv->value.data, kv->value.len,
                                      &eb->index_base)) {
        log_error("etcd: %sindex_base is not an index offset (a `disco migrate` into this prefix "
                  "did not finish?): \"%.*s\"",
                  eb->prefix, (int)(kv->value.len > 80 ? 80 : kv->value.len),
                  (const char *)kv->value.data);
        eb->broken = true;
        return;
    }
    /* The prefix's history starts with the migration (the key's first
     * write): what the prefix held before it was removed by then. */
    if (kv->create_revision > 1)
        eb->applied = (uint64_t)kv->create_revision - 1;
    eb->base_rev = (uint64_t)kv->mod_revision; /* the claim and the offset, replayed */
    log_info("etcd: %s was migrated from an embedded store: index = revision %+" PRId64
             " (history from revision %" PRId64 ")",
             eb->prefix, eb->index_base, kv->create_revision);
}

static int read_index_base(etcd_backend_t *eb, uint64_t deadline, char *err)
{
    char *key = etcd_layout_index_base_key(eb->prefix);
    call_ctx_t *c = key ? call_new(eb, 0) : NULL;
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    if (key)
        rq.key = (ProtobufCBinaryData){strlen(key), (uint8_t *)key};
    int rc =
        c ? etcd_range(eb->client, &rq, ETCD_LOAD_TIMEOUT_MS, on_index_base_range, c) : -ENOMEM;
    free(key);
    if (rc != 0) {
        if (c)
            call_free(c);
        snprintf(err, 256, "etcd: cannot read %sindex_base: %s", eb->prefix, strerror(-rc));
        return -1;
    }
    while (!eb->base_read && loop_now_ms(eb->loop) < deadline) {
        rc = loop_run_once(eb->loop, 100);
        if (rc != 0) {
            snprintf(err, 256, "event loop failed reading the etcd prefix: %s", strerror(-rc));
            return -1;
        }
    }
    if (!eb->base_read || eb->broken) {
        snprintf(err, 256,
                 "etcd (%s): %sindex_base could not be read, or names a migration that did not "
                 "finish (see the log)",
                 eb->endpoints[0], eb->prefix);
        return -1;
    }
    return 0;
}

static int etcd_load(backend_t *be, struct registry *reg, char *err)
{
    etcd_backend_t *eb = eb_of(be);
    assert(eb->loop); /* backend_etcd_new() */
    eb->reg = reg;
    eb->client = etcd_client_new(eb->loop, &eb->ccfg, err);
    if (!eb->client)
        return -1;
    if (loop_add_timer(eb->loop, etcd_timer, eb) != 0) {
        snprintf(err, 256, "out of memory starting the etcd backend");
        return -1;
    }
    uint64_t deadline = loop_now_ms(eb->loop) + ETCD_LOAD_TIMEOUT_MS;
    if (read_index_base(eb, deadline, err) != 0)
        return -1;
    if (eb->start_rev > eb->applied + ETCD_REPLAY_MAX_REVISIONS) {
        log_info("etcd: %" PRIu64 " revisions since the prefix's start are too many to replay "
                 "quickly: the mirror is loaded from the prefix's state at revision %" PRIu64
                 ", and watched from the next one",
                 eb->start_rev - eb->applied, eb->start_rev);
        eb->start_by_range = true;
        load_from_range(eb, eb->start_rev);
    } else {
        start_watch(eb);
    }
    while (!eb->live && !eb->broken && loop_now_ms(eb->loop) < deadline) {
        int rc = loop_run_once(eb->loop, 100);
        if (rc != 0) {
            snprintf(err, 256, "event loop failed loading the etcd mirror: %s", strerror(-rc));
            return -1;
        }
    }
    if (!eb->live) {
        snprintf(err, 256,
                 "etcd (%s): the mirror of %s could not be loaded within %d s (last revision "
                 "applied: %" PRIu64 ")",
                 eb->endpoints[0], eb->prefix, ETCD_LOAD_TIMEOUT_MS / 1000, eb->applied);
        return -1;
    }
    log_info("etcd mirror of %s loaded: %zu tokens, revision %" PRIu64 ", instance %s", eb->prefix,
             registry_token_count(reg), eb->applied, eb->instance);
    return 0;
}

static int etcd_propose(backend_t *be, const reg_event_t *ev)
{
    (void)be;
    (void)ev;
    assert(!"the registry proposes through propose_txn (applies_on_propose is false)");
    return -EINVAL;
}

/* A removal by age: whichever instance's Txn wins, the mirror removes the
 * token when the winner's revision is delivered; a lost guard means it is
 * gone already (or about to be), and a failure is tried again by the next
 * sweep. */
static void on_gc_txn(void *ctx, const etcd_result_t *res)
{
    call_ctx_t *c = ctx;
    call_free(c);
    if (res->outcome != ETCD_OK)
        log_warn("etcd: removing an old token failed (%s); the next sweep tries again",
                 res->message);
}

static int etcd_remove_token(backend_t *be, const char *name, const uint64_t *indexes, size_t n)
{
    etcd_backend_t *eb = eb_of(be);
    /* The token's first event is its creation, in the Txn that made its
     * version key: that key's create revision. */
    assert(n > 0);
    if (!eb->client || !eb->live || n == 0)
        return -ENOTCONN;
    etcd_txn_plan_t plan;
    int rc = etcd_layout_plan_gc(eb->prefix, name, (uint64_t)etcd_rev(eb, indexes[0]), eb->instance,
                                 &plan);
    if (rc != 0)
        return rc;
    rc = send_plan_to(eb, &plan, 0, on_gc_txn);
    etcd_txn_plan_free(&plan);
    return rc;
}

static reg_event_t *etcd_fetch(backend_t *be, uint64_t index)
{
    (void)be;
    (void)index;
    /* The mirror keeps recent events only; an older one is not read back
     * from etcd (a watch from before them gets 401, as from etcd). */
    return NULL;
}

static uint64_t etcd_durable_index(backend_t *be)
{
    return v2_index(eb_of(be), eb_of(be)->applied);
}

/* Everything applied counts as "readable", so the registry keeps only its
 * recent window of event bodies (RECENT_EVENTS revisions), as with the
 * local store, rather than every event of the prefix. */
static uint64_t etcd_readable_index(backend_t *be)
{
    return v2_index(eb_of(be), eb_of(be)->applied);
}

static int etcd_notify_fd(backend_t *be)
{
    (void)be;
    return -1; /* answers wait in the registry, not behind a durable index */
}

static void etcd_drain_notify(backend_t *be)
{
    (void)be;
}

static bool etcd_live(backend_t *be)
{
    return eb_of(be)->live;
}

/*
 * Writes are taken while the mirror is live and a connection is up, and
 * for ETCD_WRITE_GRACE_MS after that stopped being so: a failover (the
 * member this instance talked to killed, its watch created again on
 * another) takes a moment, and a write refused at once with a 503 in it
 * would be fatal to an etcd member registering (its v2 discovery client
 * does not retry). A write taken then waits for a connection within its
 * Txn's deadline and is answered within its budget like any other.
 * /health?writes=1 follows the same answer.
 */
static bool etcd_writable(backend_t *be)
{
    etcd_backend_t *eb = eb_of(be);
    if (!eb->client || !eb->loop || eb->broken)
        return false;
    uint64_t now = loop_now_ms(eb->loop);
    if (eb->live && etcd_client_connected(eb->client)) {
        eb->writable_ms = now;
        return true;
    }
    return eb->writable_ms && now - eb->writable_ms < ETCD_WRITE_GRACE_MS;
}

static void etcd_stats(backend_t *be, backend_stats_t *out)
{
    etcd_backend_t *eb = eb_of(be);
    memset(out, 0, sizeof *out);
    out->is_etcd = true;
    out->etcd_live = eb->live;
    /* Complete up to the newer of what was applied and what the watch
     * last vouched for. Revisions of keys outside the prefix look like lag
     * until a watch response covers them: a lag older than a second asks
     * the watch for progress (at most once a second), so it is gone by the
     * next scrape if the mirror is in fact current. */
    uint64_t have = mirror_complete_to(eb);
    uint64_t now = eb->loop ? loop_now_ms(eb->loop) : 0;
    out->etcd_lag_revisions = eb->etcd_revision > have ? eb->etcd_revision - have : 0;
    if (!eb->live)
        out->etcd_lag_ms = eb->current_ms && now > eb->current_ms ? now - eb->current_ms : 0;
    else if (out->etcd_lag_revisions > 0 && eb->behind_ms && now > eb->behind_ms)
        out->etcd_lag_ms = now - eb->behind_ms;
    if (out->etcd_lag_ms >= ETCD_LAG_PROGRESS_MS && eb->live && eb->client &&
        now - eb->lag_progress_ms >= ETCD_LAG_PROGRESS_MS) {
        eb->lag_progress_ms = now;
        (void)etcd_watch_progress(eb->client); /* -ENOTCONN: the lag stands */
    }
    out->etcd_endpoint = eb->client ? etcd_client_endpoint(eb->client) : NULL;
    out->etcd_txns_committed = eb->n_committed;
    out->etcd_txns_lost_guard = eb->n_lost_guard;
    out->etcd_txns_failed = eb->n_failed;
    out->etcd_txns_unknown = eb->n_unknown;
    out->etcd_watch_restarts = eb->n_watch_restarts;
}

void backend_etcd_stop(backend_t *be)
{
    etcd_backend_t *eb = eb_of(be);
    if (eb->loop)
        loop_remove_timer(eb->loop, etcd_timer, eb);
    etcd_client_free(eb->client); /* no callbacks after this */
    eb->client = NULL;
    eb->loop = NULL;
    eb->watch = NULL;
    eb->live = false;
}

static void etcd_close(backend_t *be)
{
    etcd_backend_t *eb = eb_of(be);
    backend_etcd_stop(be);
    while (eb->calls)
        call_free(eb->calls);
    while (eb->unknown) {
        unknown_txn_t *u = eb->unknown;
        eb->unknown = u->next;
        free(u);
    }
    for (size_t i = 0; i < eb->n_endpoints; i++)
        free(eb->endpoints[i]);
    free(eb->endpoints);
    free(eb->prefix);
    free(eb->range_end);
    free(eb->marker_key);
    free(eb->cacert);
    free(eb->cert);
    free(eb->key);
    free(eb->user);
    free(eb->password);
    free(eb->scratch);
    free(eb);
}

static const struct backend_ops etcd_ops = {
    .load = etcd_load,
    .propose = etcd_propose,
    .propose_txn = etcd_propose_txn,
    .propose_barrier = etcd_propose_barrier,
    .remove_token = etcd_remove_token,
    .fetch = etcd_fetch,
    .durable_index = etcd_durable_index,
    .readable_index = etcd_readable_index,
    .notify_fd = etcd_notify_fd,
    .drain_notify = etcd_drain_notify,
    .writable = etcd_writable,
    .live = etcd_live,
    .stats = etcd_stats,
    .close = etcd_close,
    .applies_on_propose = false,
    .name = "etcd",
};

void backend_etcd_set_loop(backend_t *be, struct loop *loop)
{
    assert(!eb_of(be)->client); /* before backend_load() */
    eb_of(be)->loop = loop;
}

backend_t *backend_etcd_new(const backend_etcd_config_t *cfg, char *err)
{
    etcd_backend_t *eb = calloc(1, sizeof *eb);
    if (!eb) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    eb->base.ops = &etcd_ops;
    bool failed = false;
    eb->endpoints = calloc(cfg->n_endpoints ? cfg->n_endpoints : 1, sizeof *eb->endpoints);
    failed = !eb->endpoints;
    for (size_t i = 0; !failed && i < cfg->n_endpoints; i++) {
        eb->endpoints[i] = buf_strdup_or_null(cfg->endpoints[i], &failed);
        eb->n_endpoints = i + 1;
    }
    eb->prefix = buf_strdup_or_null(cfg->prefix, &failed);
    eb->range_end = eb->prefix ? etcd_layout_prefix_end(eb->prefix) : NULL;
    eb->marker_key = eb->prefix ? etcd_layout_marker_key(eb->prefix) : NULL;
    failed |= !eb->range_end || !eb->marker_key;
    eb->cacert = buf_strdup_or_null(cfg->cacert, &failed);
    eb->cert = buf_strdup_or_null(cfg->cert, &failed);
    eb->key = buf_strdup_or_null(cfg->key, &failed);
    eb->user = buf_strdup_or_null(cfg->user, &failed);
    eb->password = buf_strdup_or_null(cfg->password, &failed);
    unsigned char raw[16];
    size_t got = 0;
    while (!failed && got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0)
            got += (size_t)n;
    }
    if (failed || got < sizeof raw || cfg->n_endpoints == 0) {
        snprintf(err, 256, "%s",
                 cfg->n_endpoints == 0 ? "--etcd-endpoints names no endpoint"
                 : failed              ? "out of memory"
                                       : "getrandom failed");
        etcd_close(&eb->base);
        return NULL;
    }
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(eb->instance + 2 * i, 3, "%02x", raw[i]);
    eb->ccfg = (etcd_client_config_t){.endpoints = (const char *const *)eb->endpoints,
                                      .n_endpoints = eb->n_endpoints,
                                      .cacert = eb->cacert,
                                      .cert = eb->cert,
                                      .key = eb->key,
                                      .user = eb->user,
                                      .password = eb->password};
    return &eb->base;
}
