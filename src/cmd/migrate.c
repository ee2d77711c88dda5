/*
 * migrate.c - `disco migrate`: copies an embedded store's tokens into an
 * empty etcd prefix, so that an operator who outgrows one box moves to
 * several instances on etcd (`disco serve --etcd-endpoints`) without losing
 * the tokens that are mid-bootstrap (docs/operating.md, "Moving up from one
 * box"; docs/decisions.md).
 *
 * What it does, in order:
 *   1. Opens the store in --data-dir. store_lmdb_open() takes the
 *      directory's flock (disco.lock), so a store that a running `disco
 *      serve` holds is refused, naming its PID. The store hands back every
 *      event it keeps (the whole history of every live token), in index
 *      order, and the highest index it ever used (M).
 *   2. Claims the prefix: one Txn whose compare covers the whole prefix
 *      range (create_revision == 0 for every key in it, i.e. it is empty)
 *      and puts P index_base = "migrating ...". A prefix with any key in it
 *      is refused, and so is a second migration.
 *   3. Copies each event as the Txn the etcd backend itself would have sent
 *      for it (etcd_layout_plan: the node, its directories, P v/, P m/ and
 *      the action marker P act), guarded by the claim instead (P index_base
 *      is still the claim), one event per Txn and in index order: the
 *      backend's mirror reads one registry change per revision. Events keep
 *      their index: with B = (index of the first event) - (its revision),
 *      event i must land at revision index_i - B, and the gaps in between
 *      (indexes of events the store no longer keeps: removed tokens) are
 *      filled with that many empty writes to a key outside the prefix
 *      (sent concurrently, MIGRATE_FILL_WINDOW at a time). If another client
 *      of the same etcd cluster writes meanwhile, an event may land later
 *      than planned: its index then grows (the order is kept) and the
 *      summary says how many did.
 *   4. Fills up to M, then one Txn (still guarded by the claim) puts
 *      P index_base = B. Every index the new instances make is then above
 *      M, above every index the store handed out, so a member that waits
 *      with waitIndex = N (N <= M + 1) misses no event and sees none twice.
 *
 * On a failure half way (etcd unreachable, the claim lost), the copy is
 * removed with one guarded DeleteRange of the prefix when etcd still
 * answers; otherwise P index_base stays "migrating ...", which `disco
 * serve` refuses to load, and the message says how to remove the prefix
 * by hand. Nothing in the store is changed either way.
 *
 * Keys with a TTL keep their expiry, as the etcd backend writes them: the
 * key's last write is put with a new etcd lease of the seconds it has left
 * (rounded up), its marker naming the same expiry instant, so instances
 * show the store's ttl/expiration and etcd expires the key. A key whose TTL
 * ran out while the store was stopped (the embedded store would expire it
 * at its next sweep) is copied, then removed after the last event with a
 * marker-less delete, which instances read as v2's expire, at an index
 * above M. A failure half way leaves the leases it granted to run out by
 * themselves: the rollback deletes their keys, and a lease with no key
 * left changes nothing when it ends. The summary counts both kinds.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend/etcd_layout.h"
#include "backend/etcd_txn.h"
#include "cmd/cli_common.h"
#include "cmd/cmd.h"
#include "etcd/client.h"
#include "loop/loop.h"
#include "registry/registry.h"
#include "store/store.h"
#include "util/timeutil.h"

/* One call's deadline, waiting for a connection included. */
#define MIGRATE_CALL_TIMEOUT_MS 10000
/* Empty writes in flight at once while filling an index gap. */
#define MIGRATE_FILL_WINDOW 64
/* The etcd endpoints one command takes. */
#define MIGRATE_MAX_ENDPOINTS 16
/* The longest token name taken (disco makes 32 hex digits). */
#define MIGRATE_MAX_TOKEN_BYTES 256

static const char migrate_usage[] =
    "usage: disco migrate --data-dir DIR --etcd-endpoints URLS [--etcd-prefix P]\n"
    "                     [etcd TLS/auth flags]\n"
    "\n"
    "Copies every token of an embedded store (stopped) into an empty etcd prefix,\n"
    "keeping each event's index, and writes the prefix's index offset so that every\n"
    "index made afterwards is above every index the store handed out. Then start\n"
    "`disco serve --etcd-endpoints URLS --etcd-prefix P` instances on it.\n"
    "\n"
    "  --data-dir DIR         the embedded store (DISC_DATA_DIR); no disco may run on it\n"
    "  --etcd-endpoints URLS  etcd client URLs, comma-separated (DISC_ETCD_ENDPOINTS)\n"
    "  --etcd-prefix P        the prefix to fill; it must be empty (DISC_ETCD_PREFIX,\n"
    "                         default " ETCD_LAYOUT_DEFAULT_PREFIX ")\n"
    "  --etcd-cacert FILE     PEM CA bundle for https:// endpoints (DISC_ETCD_CACERT)\n"
    "  --etcd-cert FILE       PEM client certificate for etcd (DISC_ETCD_CERT)\n"
    "  --etcd-key FILE        PEM key of --etcd-cert (DISC_ETCD_KEY)\n"
    "  --etcd-user NAME       etcd user (DISC_ETCD_USER)\n"
    "  --etcd-password PW     its password (DISC_ETCD_PASSWORD)\n"
    "\n"
    "Exit codes: 0 copied; 1 failed (nothing left in the prefix unless the message\n"
    "says so); 2 usage error.\n";

/* ---- the store's events ---------------------------------------------------- */

typedef struct event_list {
    reg_event_t **v;
    size_t n, cap;
    uint64_t max_index; /* the highest index the store ever used */
} event_list_t;

static int collect_event(void *ctx, reg_event_t *ev)
{
    event_list_t *l = ctx;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? 2 * l->cap : 1024;
        reg_event_t **v = realloc(l->v, ncap * sizeof *v);
        if (!v) {
            reg_event_free(ev);
            return -ENOMEM;
        }
        l->v = v;
        l->cap = ncap;
    }
    l->v[l->n++] = ev;
    return 0;
}

static void collect_raise_index(void *ctx, uint64_t index)
{
    event_list_t *l = ctx;
    if (index > l->max_index)
        l->max_index = index;
}

static void event_list_free(event_list_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        reg_event_free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* The token of a registry key (into `out`, NUL-ended); false outside one. */
static bool token_of(const char *key, char *out, size_t out_size)
{
    static const char rp[] = REGISTRY_PREFIX "/";
    if (strncmp(key, rp, sizeof rp - 1) != 0)
        return false;
    const char *t = key + sizeof rp - 1;
    const char *end = strchr(t, '/');
    size_t len = end ? (size_t)(end - t) : strlen(t);
    if (len == 0 || len >= out_size)
        return false;
    memcpy(out, t, len);
    out[len] = '\0';
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- etcd, one call at a time --------------------------------------------- */

typedef struct migrate {
    loop_t *loop;
    etcd_client_t *client;
    const char *prefix;
    char *prefix_end, *base_key, *fill_key;
    int64_t claim_rev; /* P index_base's mod revision while we own it */
    int64_t last_rev;  /* the highest revision etcd reported to us */
    /* The call in flight (one at a time, but for the fill window). */
    bool done;
    etcd_outcome_t outcome;
    char message[256];
    bool succeeded;      /* a Txn's verdict */
    int64_t revision;    /* its header's revision */
    int64_t range_count; /* the failure branch's range (the claim) */
    int64_t lease_id;    /* a LeaseGrant's answer */
    size_t fill_pending, fill_failed;
} migrate_t;

static void note_revision(migrate_t *m, int64_t rev)
{
    if (rev > m->last_rev)
        m->last_rev = rev;
}

static void on_txn_done(void *ctx, const etcd_result_t *res)
{
    migrate_t *m = ctx;
    m->done = true;
    m->outcome = res->outcome;
    snprintf(m->message, sizeof m->message, "%s", res->message);
    m->succeeded = false;
    m->revision = 0;
    m->range_count = 0;
    if (res->outcome != ETCD_OK)
        return;
    const Etcdserverpb__TxnResponse *r = (const Etcdserverpb__TxnResponse *)res->resp;
    m->succeeded = r->succeeded;
    m->revision = r->header ? r->header->revision : 0;
    note_revision(m, m->revision);
    for (size_t i = 0; i < r->n_responses; i++)
        if (r->responses[i]->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE)
            m->range_count += r->responses[i]->response_range->count;
}

static void on_fill_done(void *ctx, const etcd_result_t *res)
{
    migrate_t *m = ctx;
    m->fill_pending--;
    if (res->outcome != ETCD_OK) {
        m->fill_failed++;
        snprintf(m->message, sizeof m->message, "%s", res->message);
        return;
    }
    const Etcdserverpb__TxnResponse *r = (const Etcdserverpb__TxnResponse *)res->resp;
    if (r->header)
        note_revision(m, r->header->revision);
}

/* Runs the loop until `*flag` says done (the client bounds every call by
 * its deadline, so this ends). -1 when the loop itself failed. */
static int run_until(migrate_t *m, const bool *done, const size_t *pending)
{
    while (done ? !*done : *pending > 0) {
        int rc = loop_run_once(m->loop, 100);
        if (rc != 0) {
            snprintf(m->message, sizeof m->message, "event loop: %s", strerror(-rc));
            return -1;
        }
    }
    return 0;
}

/* The Txn of `plan`, sent and waited for. With `is_claim`, the claim's
 * two parts that a plan does not express: its compare (the plan's only
 * one) covers the whole prefix range, and its failure branch (the plan's
 * only op there, a RANGE of the prefix) counts the keys in that range.
 * 0 with m->succeeded / m->revision set, or -1 with m->message. */
static int txn_sync(migrate_t *m, const etcd_txn_plan_t *plan, bool is_claim)
{
    etcd_txn_request_t rq;
    if (etcd_txn_request_init(&rq, plan) != 0) {
        snprintf(m->message, sizeof m->message, "out of memory");
        return -1;
    }
    if (is_claim) {
        assert(plan->n_cmps == 1 && plan->n_failure == 1 && plan->failure[0].kind == ETCD_OP_RANGE);
        ProtobufCBinaryData end = {strlen(m->prefix_end), (uint8_t *)m->prefix_end};
        rq.cmps[0].range_end = end;
        Etcdserverpb__RangeRequest *count = &rq.ops[plan->n_success].range;
        count->range_end = end;
        count->keys_only = false;
        count->count_only = true;
    }
    int rc = -1;
    m->done = false;
    int src = etcd_txn(m->client, &rq.txn, MIGRATE_CALL_TIMEOUT_MS, on_txn_done, m);
    etcd_txn_request_clear(&rq);
    if (src != 0)
        snprintf(m->message, sizeof m->message, "cannot send a transaction: %s", strerror(-src));
    else if (run_until(m, &m->done, NULL) == 0)
        rc = m->outcome == ETCD_OK ? 0 : -1;
    return rc;
}

/* A plan of one compare and `n_ops` success ops, borrowing all of them
 * (never given to etcd_txn_plan_free). */
static etcd_txn_plan_t plan_of(etcd_cmp_t cmp, etcd_op_t *ops, size_t n_ops)
{
    etcd_txn_plan_t p = {.cmps = {cmp}, .n_cmps = 1, .success = ops, .n_success = n_ops};
    return p;
}

/* `ops` in one Txn guarded by the claim (the prefix is ours alone while
 * P index_base is still the claim), sent and waited for. 0 when applied
 * (m->revision set), or -1 with m->message. */
static int claimed_sync(migrate_t *m, etcd_op_t *ops, size_t n_ops)
{
    etcd_cmp_t guard = {.kind = ETCD_CMP_MOD_EQ, .key = m->base_key, .rev = m->claim_rev};
    etcd_txn_plan_t plan = plan_of(guard, ops, n_ops);
    if (txn_sync(m, &plan, false) != 0)
        return -1;
    if (!m->succeeded) {
        snprintf(m->message, sizeof m->message,
                 "%sindex_base changed under the migration (another client wrote it)", m->prefix);
        return -1;
    }
    return 0;
}

static void on_lease_done(void *ctx, const etcd_result_t *res)
{
    migrate_t *m = ctx;
    m->done = true;
    m->outcome = res->outcome;
    snprintf(m->message, sizeof m->message, "%s", res->message);
    m->lease_id = 0;
    if (res->outcome == ETCD_OK)
        m->lease_id = ((const Etcdserverpb__LeaseGrantResponse *)res->resp)->id;
}

/* A new etcd lease of `ttl_s` seconds; 0 with m->lease_id set (> 0), or
 * -1 with m->message. */
static int lease_sync(migrate_t *m, int64_t ttl_s)
{
    Etcdserverpb__LeaseGrantRequest rq = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    rq.ttl = ttl_s;
    m->done = false;
    int rc = etcd_lease_grant(m->client, &rq, MIGRATE_CALL_TIMEOUT_MS, on_lease_done, m);
    if (rc != 0) {
        snprintf(m->message, sizeof m->message, "cannot ask for a lease: %s", strerror(-rc));
        return -1;
    }
    if (run_until(m, &m->done, NULL) != 0)
        return -1;
    if (m->outcome == ETCD_OK && m->lease_id <= 0)
        snprintf(m->message, sizeof m->message, "etcd granted no lease");
    return m->outcome == ETCD_OK && m->lease_id > 0 ? 0 : -1;
}

/* Empty writes to a key outside the prefix until etcd's revision is at
 * least `upto` (each write is one revision; the mirror never sees them). */
static int fill_to(migrate_t *m, int64_t upto, uint64_t *filled)
{
    etcd_op_t put = {.kind = ETCD_OP_PUT, .key = m->fill_key};
    etcd_txn_plan_t plan = {.success = &put, .n_success = 1};
    etcd_txn_request_t rq;
    if (etcd_txn_request_init(&rq, &plan) != 0) {
        snprintf(m->message, sizeof m->message, "out of memory");
        return -1;
    }
    int rc = 0;
    while (rc == 0 && m->last_rev < upto) {
        /* Never more in flight than revisions still missing: etcd numbers
         * them in whatever order it takes them, all are alike. */
        int64_t missing = upto - m->last_rev;
        while (m->fill_pending < MIGRATE_FILL_WINDOW && (int64_t)m->fill_pending < missing) {
            int src = etcd_txn(m->client, &rq.txn, MIGRATE_CALL_TIMEOUT_MS, on_fill_done, m);
            if (src != 0) {
                snprintf(m->message, sizeof m->message, "cannot send a write: %s", strerror(-src));
                rc = -1;
                break;
            }
            m->fill_pending++;
            (*filled)++;
        }
        if (run_until(m, NULL, &m->fill_pending) != 0 || m->fill_failed)
            rc = -1;
    }
    etcd_txn_request_clear(&rq);
    return rc;
}

/* Removes a partial copy; false when etcd did not take it. */
static bool roll_back(migrate_t *m)
{
    etcd_op_t ops[2] = {{.kind = ETCD_OP_DELETE_PREFIX, .key = (char *)m->prefix},
                        {.kind = ETCD_OP_DELETE, .key = m->fill_key}};
    return claimed_sync(m, ops, 2) == 0;
}

/* ---- the command ------------------------------------------------------------ */

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

typedef struct migrate_flags {
    const char *data_dir, *endpoints, *prefix, *cacert, *cert, *key, *user, *password;
} migrate_flags_t;

static int parse_flags(int argc, char **argv, migrate_flags_t *f)
{
    f->data_dir = env_or("DISC_DATA_DIR", NULL);
    f->endpoints = env_or("DISC_ETCD_ENDPOINTS", NULL);
    f->prefix = env_or("DISC_ETCD_PREFIX", ETCD_LAYOUT_DEFAULT_PREFIX);
    f->cacert = env_or("DISC_ETCD_CACERT", NULL);
    f->cert = env_or("DISC_ETCD_CERT", NULL);
    f->key = env_or("DISC_ETCD_KEY", NULL);
    f->user = env_or("DISC_ETCD_USER", NULL);
    f->password = env_or("DISC_ETCD_PASSWORD", NULL);
    struct {
        const char *name;
        const char **dst;
    } table[] = {{"data-dir", &f->data_dir},  {"etcd-endpoints", &f->endpoints},
                 {"etcd-prefix", &f->prefix}, {"etcd-cacert", &f->cacert},
                 {"etcd-cert", &f->cert},     {"etcd-key", &f->key},
                 {"etcd-user", &f->user},     {"etcd-password", &f->password}};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(migrate_usage, stdout);
            return 1;
        }
        int rc = 0;
        for (size_t t = 0; rc == 0 && t < sizeof table / sizeof table[0]; t++)
            rc = cli_flag_value(argc, argv, &i, table[t].name, table[t].dst);
        if (rc < 0) {
            fprintf(stderr, "disco migrate: flag %s needs a value\n", a);
            return -1;
        }
        if (rc == 0) {
            fprintf(stderr, "disco migrate: unexpected argument \"%s\"\n\n%s", a, migrate_usage);
            return -1;
        }
    }
    if (!f->data_dir || !*f->data_dir || !f->endpoints || !*f->endpoints) {
        fprintf(stderr, "disco migrate: --data-dir and --etcd-endpoints are required\n\n%s",
                migrate_usage);
        return -1;
    }
    size_t plen = strlen(f->prefix);
    if (plen == 0 || f->prefix[plen - 1] != '/') {
        fprintf(stderr, "disco migrate: --etcd-prefix \"%s\" must end with '/'\n", f->prefix);
        return -1;
    }
    return 0;
}

/* The store's events, read with the store's own lock held. */
static int read_store(const char *dir, event_list_t *events)
{
    /* store_lmdb_open() makes a store where there is none: a mistyped
     * --data-dir would then copy nothing and claim the prefix. */
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "disco migrate: %s holds no disco store (%s: %s)\n", dir, path,
                strerror(errno));
        return -1;
    }
    char err[256] = "";
    store_lmdb_options_t opt = {.map_size_bytes = STORE_LMDB_DEFAULT_MAP_BYTES};
    store_t *st = store_lmdb_open(dir, &opt, err);
    if (!st) {
        fprintf(stderr, "disco migrate: %s\n", err);
        return -1;
    }
    store_replay_sink_t sink = {collect_event, collect_raise_index, events};
    int rc = store_load(st, &sink, err);
    store_close(st);
    if (rc != 0) {
        fprintf(stderr, "disco migrate: reading %s: %s\n", dir, err);
        return -1;
    }
    for (size_t i = 0; i < events->n; i++) /* the store's contract; checked */
        if (events->v[i]->index > events->max_index ||
            (i > 0 && events->v[i]->index <= events->v[i - 1]->index)) {
            fprintf(stderr, "disco migrate: %s: events out of index order at %" PRIu64 "\n", dir,
                    events->v[i]->index);
            return -1;
        }
    return 0;
}

/* The sorted, distinct tokens the events touch (NULL on no memory). */
static char **tokens_of(const event_list_t *events, size_t *n_out)
{
    char **t = calloc(events->n + 1, sizeof *t);
    size_t n = 0;
    for (size_t i = 0; t && i < events->n; i++) {
        char tok[MIGRATE_MAX_TOKEN_BYTES];
        if (!token_of(events->v[i]->node.key, tok, sizeof tok))
            continue;
        if (!(t[n] = strdup(tok))) {
            while (n > 0)
                free(t[--n]);
            free(t);
            return NULL;
        }
        n++;
    }
    if (!t)
        return NULL;
    qsort(t, n, sizeof *t, cmp_str);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (w > 0 && strcmp(t[w - 1], t[i]) == 0)
            free(t[i]);
        else
            t[w++] = t[i];
    }
    *n_out = w;
    return t;
}

/* An event's key and its place in the list, sorted by key then place. */
typedef struct keyed_event {
    const char *key;
    size_t i;
} keyed_event_t;

static int keyed_event_order(const void *a, const void *b)
{
    const keyed_event_t *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

/* Per event: whether no later event writes its key (its put or delete is
 * what the key is at the end). NULL on no memory. */
static bool *last_writes(const event_list_t *events)
{
    keyed_event_t *order = malloc((events->n + 1) * sizeof *order);
    bool *last = calloc(events->n + 1, sizeof *last);
    if (!order || !last) {
        free(order);
        free(last);
        return NULL;
    }
    for (size_t i = 0; i < events->n; i++)
        order[i] = (keyed_event_t){events->v[i]->node.key, i};
    qsort(order, events->n, sizeof *order, keyed_event_order);
    for (size_t k = 0; k < events->n; k++)
        last[order[k].i] = k + 1 == events->n || strcmp(order[k].key, order[k + 1].key) != 0;
    free(order);
    return last;
}

static bool is_removal(enum reg_action a)
{
    return a == REG_ACT_DELETE || a == REG_ACT_CAD || a == REG_ACT_EXPIRE;
}

/* What the copy did, for the summary and the steps after it. */
typedef struct copy_stats {
    uint64_t filled, moved, skipped;
    uint64_t leased; /* keys put with an etcd lease: their TTL still ran */
    /* Events of keys whose TTL had run out when they were copied (their
     * last write): expired after the copy. Room for every event. */
    size_t *expired;
    size_t n_expired;
} copy_stats_t;

/* Copies the events; 0, or -1 with m->message (the claim is held).
 * A key with a TTL is put with a lease of what is left of it, as the etcd
 * backend puts one (its marker names the same expiry), when this event
 * is what the key is at the end; an earlier write of the key keeps its
 * expiry in its marker (history) but gets no lease: the later write puts
 * the key again, and a lease running out in between would expire it in
 * the middle of the copy. */
static int copy_events(migrate_t *m, const event_list_t *events, int64_t base, char **tokens,
                       size_t n_tokens, bool *seen, const bool *is_last, copy_stats_t *st)
{
    for (size_t i = 0; i < events->n; i++) {
        reg_event_t *ev = events->v[i];
        char tok[MIGRATE_MAX_TOKEN_BYTES];
        if (!token_of(ev->node.key, tok, sizeof tok) || ev->action == REG_ACT_GET) {
            fprintf(stderr, "disco migrate: skipped event %" PRIu64 " (%s): not in a token\n",
                    ev->index, ev->node.key);
            st->skipped++;
            continue;
        }
        char *want = tok;
        char **hit = bsearch(&want, tokens, n_tokens, sizeof *tokens, cmp_str);
        assert(hit); /* tokens_of() saw every event */
        bool *first = &seen[hit - tokens];
        /* The token's first event makes the token (its directory and
         * creation time), as /new does on the etcd backend. */
        backend_guard_t g = {.kind = *first ? BACKEND_GUARD_TOKEN_AT : BACKEND_GUARD_TOKEN_NEW};
        *first = true;
        etcd_txn_plan_t plan;
        int rc = etcd_layout_plan(m->prefix, ev, &g, "migrate", ev->index, &plan);
        if (rc != 0) {
            snprintf(m->message, sizeof m->message, "event %" PRIu64 " (%s): %s", ev->index,
                     ev->node.key, strerror(-rc));
            return -1;
        }
        int64_t target = (int64_t)ev->index - base;
        if (fill_to(m, target - 1, &st->filled) != 0) {
            etcd_txn_plan_free(&plan);
            return -1;
        }
        if (ev->node.expire_ns && !is_removal(ev->action) && is_last[i]) {
            /* Granted just before its put: the clock of the TTL is the
             * wall clock of both the store and this copy. */
            int64_t now_ns = time_wall_ns();
            if (ev->node.expire_ns <= now_ns) {
                st->expired[st->n_expired++] = i;
            } else if (lease_sync(m, etcd_layout_lease_seconds(ev->node.expire_ns, now_ns)) != 0) {
                etcd_txn_plan_free(&plan);
                return -1;
            } else if (etcd_layout_plan_set_lease(&plan, m->prefix, ev->node.key, ev->node.is_dir,
                                                  m->lease_id) > 0) {
                st->leased++;
            }
        }
        /* The claim guards every copy, not the backend's per-token compare. */
        rc = claimed_sync(m, plan.success, plan.n_success);
        etcd_txn_plan_free(&plan);
        if (rc != 0)
            return -1;
        if (m->revision != target)
            st->moved++;
    }
    return 0;
}

/* Whether an event after `idx` removed a directory above its key. */
static bool removed_later(const event_list_t *events, size_t idx)
{
    const char *key = events->v[idx]->node.key;
    for (size_t j = idx + 1; j < events->n; j++) {
        const reg_event_t *ev = events->v[j];
        size_t len = strlen(ev->node.key);
        if (is_removal(ev->action) && ev->node.is_dir && strncmp(key, ev->node.key, len) == 0 &&
            key[len] == '/')
            return true;
    }
    return false;
}

/* Expires the keys whose TTL had run out before they were copied, each in
 * a revision of its own with no marker, the way etcd removes a key whose
 * lease ran out (an instance shows v2's "expire"), as the embedded store
 * would have at its next sweep. Guarded by the claim. 0, or -1 with
 * m->message. */
static int expire_copied(migrate_t *m, const event_list_t *events, copy_stats_t *st)
{
    size_t kept = 0;
    for (size_t k = 0; k < st->n_expired; k++) {
        const reg_event_t *ev = events->v[st->expired[k]];
        if (removed_later(events, st->expired[k]))
            continue; /* gone with its directory already */
        char *key = etcd_layout_key(m->prefix, ev->node.key, ev->node.is_dir);
        /* A file's P c/ key is under the same lease as the file. */
        char *created = ev->node.is_dir ? NULL : etcd_layout_created_key(m->prefix, ev->node.key);
        if (!key || (!ev->node.is_dir && !created)) {
            free(key);
            free(created);
            snprintf(m->message, sizeof m->message, "out of memory");
            return -1;
        }
        etcd_op_t ops[2] = {{.kind = ETCD_OP_DELETE, .key = key},
                            {.kind = ETCD_OP_DELETE, .key = created}};
        int rc = claimed_sync(m, ops, created ? 2 : 1);
        free(key);
        free(created);
        if (rc != 0)
            return -1;
        kept++;
    }
    st->n_expired = kept;
    return 0;
}

int cmd_migrate(int argc, char **argv)
{
    migrate_flags_t f;
    int prc = parse_flags(argc, argv, &f);
    if (prc != 0)
        return prc > 0 ? 0 : 2;

    char *list = strdup(f.endpoints);
    const char *eps[MIGRATE_MAX_ENDPOINTS];
    size_t n_eps = 0;
    for (char *save = NULL, *p = list ? strtok_r(list, ",", &save) : NULL; p;
         p = strtok_r(NULL, ",", &save)) {
        if (n_eps == MIGRATE_MAX_ENDPOINTS) {
            fprintf(stderr, "disco migrate: at most %d etcd endpoints\n", MIGRATE_MAX_ENDPOINTS);
            free(list);
            return 2;
        }
        eps[n_eps++] = p;
    }
    if (!list || n_eps == 0) {
        fprintf(stderr, "disco migrate: --etcd-endpoints names no endpoint\n");
        free(list);
        return list ? 2 : 1;
    }

    event_list_t events = {0};
    if (read_store(f.data_dir, &events) != 0) {
        event_list_free(&events);
        free(list);
        return 1;
    }
    size_t n_tokens = 0;
    char **tokens = tokens_of(&events, &n_tokens);
    bool *seen = calloc(n_tokens + 1, sizeof *seen);
    bool *is_last = last_writes(&events);
    copy_stats_t st = {.expired = calloc(events.n + 1, sizeof *st.expired)};
    printf("disco migrate: %s: %zu events of %zu tokens; highest index used %" PRIu64 "\n",
           f.data_dir, events.n, n_tokens, events.max_index);
    fflush(stdout);

    migrate_t m = {.prefix = f.prefix};
    int status = 1;
    bool claimed = false;
    m.loop = loop_new();
    m.prefix_end = etcd_layout_prefix_end(f.prefix);
    m.base_key = etcd_layout_index_base_key(f.prefix);
    /* Outside the prefix (at or after its range end), so no mirror sees
     * the fill writes. */
    m.fill_key = m.prefix_end ? malloc(strlen(m.prefix_end) + sizeof "migrate-fill") : NULL;
    if (m.fill_key)
        sprintf(m.fill_key, "%smigrate-fill", m.prefix_end);
    if (!tokens || !seen || !is_last || !st.expired || !m.loop || !m.base_key || !m.fill_key) {
        fprintf(stderr, "disco migrate: out of memory\n");
        goto done;
    }
    char err[256] = "";
    etcd_client_config_t ccfg = {.endpoints = eps,
                                 .n_endpoints = n_eps,
                                 .cacert = f.cacert,
                                 .cert = f.cert,
                                 .key = f.key,
                                 .user = f.user,
                                 .password = f.password};
    m.client = etcd_client_new(m.loop, &ccfg, err);
    if (!m.client) {
        fprintf(stderr, "disco migrate: %s\n", err);
        goto done;
    }

    /* 2. The claim: the prefix must be empty. */
    char claim_value[128];
    snprintf(claim_value, sizeof claim_value, "%s since %lld (pid %ld)",
             ETCD_LAYOUT_INDEX_BASE_MIGRATING, (long long)time(NULL), (long)getpid());
    etcd_cmp_t empty = {.kind = ETCD_CMP_CREATE_EQ, .key = (char *)f.prefix, .rev = 0};
    etcd_op_t claim = {.kind = ETCD_OP_PUT, .key = m.base_key, .value = claim_value};
    etcd_txn_plan_t claim_plan = plan_of(empty, &claim, 1);
    claim_plan.failure[0] = (etcd_op_t){.kind = ETCD_OP_RANGE, .key = (char *)f.prefix};
    claim_plan.n_failure = 1;
    if (txn_sync(&m, &claim_plan, true) != 0) {
        fprintf(stderr, "disco migrate: etcd (%s): %s\n", eps[0], m.message);
        goto done;
    }
    if (!m.succeeded) {
        fprintf(stderr,
                "disco migrate: the prefix %s on etcd is not empty (%" PRId64 " keys): refused; "
                "a migration goes into an empty prefix only\n",
                f.prefix, m.range_count);
        goto done;
    }
    claimed = true;
    m.claim_rev = m.revision;
    int64_t first_rev = m.claim_rev + 1;
    /* B: the first event lands on the revision after the claim with its
     * own index; every later one on index - B. */
    int64_t base =
        events.n ? (int64_t)events.v[0]->index - first_rev : (int64_t)events.max_index - first_rev;

    /* 3. The events, each at its index. */
    if (copy_events(&m, &events, base, tokens, n_tokens, seen, is_last, &st) != 0) {
        fprintf(stderr, "disco migrate: etcd (%s): %s\n", eps[0], m.message);
        goto done;
    }
    /* 4. Up to the store's highest index, then the offset: the next write
     * is at least max_index + 1. Keys whose TTL ran out before the copy
     * are expired first, above max_index too (they are new events). */
    int64_t final_target = (int64_t)events.max_index - base;
    if (fill_to(&m, final_target - (st.n_expired ? 0 : 1), &st.filled) != 0 ||
        expire_copied(&m, &events, &st) != 0) {
        fprintf(stderr, "disco migrate: etcd (%s): %s\n", eps[0], m.message);
        goto done;
    }
    char base_value[24];
    snprintf(base_value, sizeof base_value, "%" PRId64, base);
    etcd_cmp_t ours = {.kind = ETCD_CMP_MOD_EQ, .key = m.base_key, .rev = m.claim_rev};
    etcd_op_t finish[2] = {{.kind = ETCD_OP_PUT, .key = m.base_key, .value = base_value},
                           {.kind = ETCD_OP_DELETE, .key = m.fill_key}};
    etcd_txn_plan_t finish_plan = plan_of(ours, finish, 2);
    if (txn_sync(&m, &finish_plan, false) != 0 || !m.succeeded) {
        fprintf(stderr, "disco migrate: etcd (%s): the last step failed: %s\n", eps[0],
                m.outcome == ETCD_OK && !m.succeeded ? "the claim was lost" : m.message);
        goto done;
    }
    claimed = false;
    printf("disco migrate: copied %zu events into %s (etcd revisions %" PRId64 "-%" PRId64
           ", %" PRIu64 " empty writes to keep indexes); index = revision %+" PRId64 "\n",
           events.n - (size_t)st.skipped, f.prefix, first_rev, m.revision, st.filled, base);
    if (st.moved)
        printf("disco migrate: %" PRIu64 " events got a higher index than before (another client "
               "wrote to etcd meanwhile); their order is kept\n",
               st.moved);
    if (st.leased || st.n_expired)
        printf("disco migrate: keys with a TTL: %" PRIu64 " copied with an etcd lease of the "
               "time they had left, %zu expired (their TTL ran out before the copy)\n",
               st.leased, st.n_expired);
    printf("disco migrate: done: every index from now on is above %" PRIu64 "; start disco serve "
           "--etcd-endpoints %s --etcd-prefix %s\n",
           events.max_index, f.endpoints, f.prefix);
    status = 0;
done:
    if (claimed) {
        if (roll_back(&m))
            fprintf(stderr, "disco migrate: the partial copy in %s was removed; nothing changed\n",
                    f.prefix);
        else
            fprintf(stderr,
                    "disco migrate: the partial copy in %s could not be removed (%s); `disco "
                    "serve` refuses the prefix while %sindex_base says \"migrating\": remove it "
                    "with `etcdctl del --prefix %s` before running this again\n",
                    f.prefix, m.message, f.prefix, f.prefix);
    }
    etcd_client_free(m.client);
    loop_free(m.loop);
    free(m.prefix_end);
    free(m.base_key);
    free(m.fill_key);
    for (size_t i = 0; tokens && i < n_tokens; i++)
        free(tokens[i]);
    free(tokens);
    free(seen);
    free(is_last);
    free(st.expired);
    event_list_free(&events);
    free(list);
    return status;
}
