/*
 * store_lmdb.c - the embedded durable store: the registry's event log in
 * LMDB, fed through a write-ahead log by one writer thread.
 *
 * Layout of the data directory:
 *   disco.lock   flock()ed by the running disco; holds its PID
 *   disco.wal    the write-ahead log (wal.h), preallocated
 *   data.mdb     LMDB data: "meta" (format, last_index, wal_gen, wal_salt)
 *                and "events" (8-byte big-endian index -> codec record)
 *   lock.mdb     LMDB's reader table
 *
 * Durability: the event loop thread encodes each event and queues it. The
 * writer takes everything queued and writes it as one frame of the log,
 * synchronously (wal.h): one synchronous write per batch, however many
 * writes it holds. Only then does it publish the new durable index and wake the loop
 * through an eventfd; the loop releases the answers that waited for it. So
 * a 2xx leaves only after its change is on disk.
 *
 * Checkpoints: every CHECKPOINT_MS (or when the log is half full) the writer
 * files everything logged since the last checkpoint into LMDB in one
 * transaction, which also records the log's next generation and a new
 * random salt for it (wal.h: frames are chained from the salt). Once that
 * commit is durable the log restarts under that generation, which makes the
 * old frames dead. At startup, frames of the generation LMDB names are
 * applied to LMDB before anything is read: they are exactly the writes
 * acknowledged since the last checkpoint. Applying a frame twice is
 * harmless (a put writes the same record under the same index, a removal
 * deletes what may already be gone), so a crash at any point loses nothing
 * that was acknowledged. A batch too large for the log, or a log that
 * cannot be written, goes straight into LMDB (LMDB syncs its own commit).
 *
 * Format: meta's "format" names the on-disk format. Format 1 (disco up to
 * f71921c) had an unchained, unsalted log; a data dir of format 1 has its
 * log replayed with the format-1 reader once at startup, and the commit
 * that files it into LMDB also records format 2 with a new generation and
 * salt. A crash before that commit leaves format 1 as it was.
 *
 * Space: LMDB fails a transaction when its map or the disk is full. A
 * failed commit cannot be taken back from the in-memory registry, so disco
 * refuses new writes early instead: the writer measures free space (LMDB's
 * public page counts and statvfs) after every commit and every second when
 * idle, and store_writable() says no while it is not above the reserve the
 * accepted writes not yet in LMDB need to get there, in bytes (space.h).
 * If a checkpoint fails anyway, logged writes stay in the log (durable) and
 * the checkpoint is retried every second; a batch that fits nowhere is kept
 * and retried. Nothing is dropped.
 */
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "store/codec.h"
#include "store/space.h"
#include "store/store.h"
#include "store/wal.h"
#include "util/buf.h"
#include "util/histogram.h"
#include "util/le.h"
#include "util/log.h"
#include "util/timeutil.h"

#define FORMAT_TAG "disco-registry-2"
#define FORMAT1_TAG "disco-registry-1" /* read once, then upgraded */
#define LOCK_FILE "disco.lock"
#define WAL_FILE "disco.wal"
#define RETRY_MS 1000
/* The log is a sixteenth of the map, within these bounds. */
#define WAL_MIN_BYTES ((size_t)256 * 1024)
#define WAL_MAX_BYTES ((size_t)64 << 20)
/* Logged writes move into LMDB at least this often. Longer means fewer,
 * larger LMDB commits; the events not yet there stay in the registry's
 * memory (store_readable_index), and startup replays at most this much. */
#define CHECKPOINT_MS 250

/*
 * Queued writes are kept encoded, in the very bytes a log frame carries
 * (see "log frames" below), appended to chunks: the loop thread allocates
 * nothing per write, the writer logs a chunk as it is and later files it
 * into LMDB by decoding it, with the code that replays the log at startup.
 */
typedef struct chunk {
    struct chunk *next;
    buf_t ops;          /* encoded entries */
    uint64_t max_index; /* the highest index put, 0 if none */
    size_t bytes;       /* what it adds to queued_bytes */
} chunk_t;

/* The writer thread's own state. */
typedef struct writer {
    wal_t *wal;
    uint64_t wal_gen;      /* generation of the frames being written */
    uint64_t wal_salt;     /* and its salt */
    chunk_t *logged;       /* in the log, not yet in LMDB, in order */
    chunk_t **logged_tail; /* where the next logged chunk goes */
    uint64_t logged_max;   /* highest index among them */
    uint64_t logged_since; /* time_mono_ms() of the first of them */
    chunk_t *retry;        /* a batch that is neither logged nor in LMDB */
    uint64_t next_try_ms;  /* no commit attempt before this after a failure */
    bool wal_failing;      /* the last log write failed (logged once) */
} writer_t;

typedef struct lmdb_store {
    store_t base;
    char *dir;
    int lock_fd;
    int event_fd;
    MDB_env *env;
    MDB_dbi dbi_meta, dbi_events;
    MDB_txn *read_txn; /* loop thread: a reset read transaction for fetch */
    bool is_format1;   /* opened at format 1: open_log() upgrades it */
    size_t map_bytes;
    size_t page_bytes;
    writer_t wr;
    /* shared with the writer thread, under `mu` */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    chunk_t *queued;     /* the loop appends here; the writer takes it whole */
    size_t queued_bytes; /* queued, logged or being retried: not in LMDB yet */
    bool stopping;
    /* published by the writer */
    _Atomic uint64_t durable_index;
    _Atomic uint64_t readable_index;
    _Atomic size_t free_bytes;
    _Atomic bool commit_failing;
    _Atomic uint64_t n_log_frames, n_checkpoints, n_direct_commits;
    /* Durations of the same, sync included (writer thread only writes). */
    histogram_t log_sync, checkpoint_sync, direct_sync;
    bool full; /* loop thread only: writes refused until room is back */
    pthread_t writer;
    bool writer_started;
} lmdb_store_t;

static void chunks_free(chunk_t *c)
{
    while (c) {
        chunk_t *next = c->next;
        buf_free(&c->ops);
        free(c);
        c = next;
    }
}

static size_t chunks_bytes(const chunk_t *c)
{
    size_t n = 0;
    for (; c; c = c->next)
        n += c->bytes;
    return n;
}

static void index_key(uint64_t index, unsigned char out[8])
{
    uint64_t be = htobe64(index);
    memcpy(out, &be, 8);
}

/*
 * A new log salt: random, so that no two generations share one, even when
 * a generation number comes back (a data.mdb restored from a backup).
 * Falls back on the clocks and the PID when the kernel gives no random
 * bytes (a salt only has to differ from the last ones, not be secret from
 * this host).
 */
static uint64_t new_salt(void)
{
    uint64_t salt = 0;
    if (getrandom(&salt, sizeof salt, GRND_NONBLOCK) != (ssize_t)sizeof salt) {
        static _Atomic uint64_t counter;
        salt = (time_mono_ms() << 20) ^ (uint64_t)time_wall_ns() ^ ((uint64_t)getpid() << 40) ^
               atomic_fetch_add(&counter, 1);
    }
    return salt;
}

/* ---- space ---------------------------------------------------------- */

/* Free bytes in the map, as far as the disk has room for them (space.h).
 * Writer thread (or before it starts): no commit runs meanwhile. A measure
 * that fails says 0: writes are refused rather than risked. */
static size_t measure_free(lmdb_store_t *ls)
{
    MDB_txn *txn;
    if (mdb_txn_begin(ls->env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    MDB_dbi dbis[] = {ls->dbi_meta, ls->dbi_events};
    store_space_t sp = {0};
    int rc = store_space_count(txn, dbis, sizeof dbis / sizeof dbis[0], &sp);
    mdb_txn_abort(txn);
    if (rc != 0)
        return 0;
    struct statvfs vfs;
    if (statvfs(ls->dir, &vfs) == 0)
        sp.disk_free_bytes = (size_t)vfs.f_bavail * vfs.f_frsize;
    return store_space_free_bytes(&sp);
}

/* Free bytes below which writes are refused, with `pending` bytes of
 * accepted writes not in LMDB yet. */
static size_t reserve_bytes(const lmdb_store_t *ls, size_t pending)
{
    return store_space_reserve_bytes(pending, ls->page_bytes);
}

/* ---- LMDB records ------------------------------------------------------- */

static int put_event(MDB_txn *txn, MDB_dbi dbi, uint64_t index, const void *rec, size_t len)
{
    unsigned char kb[8];
    index_key(index, kb);
    MDB_val k = {8, kb}, v = {len, (void *)rec};
    return mdb_put(txn, dbi, &k, &v, 0);
}

/* Deleting what is already gone is fine: removals may be applied twice. */
static int del_event(MDB_txn *txn, MDB_dbi dbi, uint64_t index)
{
    unsigned char kb[8];
    index_key(index, kb);
    MDB_val k = {8, kb};
    int rc = mdb_del(txn, dbi, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* A big-endian u64 under `name` in meta; 0 when absent. */
static uint64_t get_meta_u64(MDB_txn *txn, MDB_dbi dbi, const char *name)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    uint64_t be = 0;
    if (mdb_get(txn, dbi, &k, &v) == 0 && v.mv_size == 8)
        memcpy(&be, v.mv_data, 8);
    return be64toh(be);
}

static int put_meta_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t value)
{
    unsigned char vb[8];
    index_key(value, vb);
    MDB_val k = {strlen(name), (void *)name}, v = {8, vb};
    return mdb_put(txn, dbi, &k, &v, 0);
}

/* Keeps meta's last_index at least `index`: indexes never repeat, even
 * after the events that used them are removed. */
static int raise_last_index(lmdb_store_t *ls, MDB_txn *txn, uint64_t index)
{
    if (index <= get_meta_u64(txn, ls->dbi_meta, "last_index"))
        return 0;
    return put_meta_u64(txn, ls->dbi_meta, "last_index", index);
}

/* ---- log frames ----------------------------------------------------------- */

/*
 * A frame's payload, and a chunk, is a run of entries, little-endian:
 *   'P' u64 index, u32 length, the codec record     (a put)
 *   'R' u32 count, count x u64 index                 (a token removal)
 */
typedef struct entry {
    bool is_removal;
    uint64_t index;               /* put */
    const unsigned char *record;  /* put */
    size_t record_len;            /* put */
    const unsigned char *indexes; /* removal: count x u64 */
    size_t n_indexes;             /* removal */
    const unsigned char *start;   /* the whole entry, encoded */
    size_t len;
} entry_t;

/* Decodes the entry at *p (before `end`) and moves *p past it. 0, or
 * -EINVAL when the bytes are not an entry. */
static int next_entry(const unsigned char **p, const unsigned char *end, entry_t *e)
{
    const unsigned char *q = *p;
    size_t left = (size_t)(end - q);
    memset(e, 0, sizeof *e);
    e->start = q;
    if (left >= 13 && q[0] == 'P') {
        e->index = le_load(q + 1, 8);
        e->record_len = (size_t)le_load(q + 9, 4);
        e->record = q + 13;
        if (left - 13 < e->record_len)
            return -EINVAL;
        e->len = 13 + e->record_len;
    } else if (left >= 5 && q[0] == 'R') {
        e->is_removal = true;
        e->n_indexes = (size_t)le_load(q + 1, 4);
        e->indexes = q + 5;
        if ((left - 5) / 8 < e->n_indexes)
            return -EINVAL;
        e->len = 5 + 8 * e->n_indexes;
    } else {
        return -EINVAL;
    }
    *p = q + e->len;
    return 0;
}

/* Applies a run of entries to `txn`, counting into *max_index and *n_ops.
 * 0, -EINVAL for malformed bytes, or an LMDB error (positive). */
static int apply_entries(lmdb_store_t *ls, MDB_txn *txn, const unsigned char *p, size_t len,
                         uint64_t *max_index, size_t *n_ops)
{
    const unsigned char *end = p + len;
    while (p < end) {
        entry_t e;
        if (next_entry(&p, end, &e) != 0)
            return -EINVAL;
        int rc = 0;
        if (e.is_removal) {
            for (size_t i = 0; i < e.n_indexes && rc == 0; i++)
                rc = del_event(txn, ls->dbi_events, le_load(e.indexes + 8 * i, 8));
        } else {
            rc = put_event(txn, ls->dbi_events, e.index, e.record, e.record_len);
            if (e.index > *max_index)
                *max_index = e.index;
        }
        if (rc != 0)
            return rc;
        (*n_ops)++;
    }
    return 0;
}

/* Startup: applies the logged frames to one LMDB transaction. */
typedef struct replay {
    lmdb_store_t *ls;
    MDB_txn *txn;
    int mdb_rc; /* the LMDB error that stopped it, if any */
    uint64_t max_index;
    size_t frames, ops;
} replay_t;

static int apply_frame(void *ctx, const unsigned char *p, size_t len)
{
    replay_t *r = ctx;
    int rc = apply_entries(r->ls, r->txn, p, len, &r->max_index, &r->ops);
    if (rc > 0) {
        r->mdb_rc = rc;
        return 1;
    }
    if (rc == 0)
        r->frames++;
    return rc;
}

/* ---- LMDB commits --------------------------------------------------------- */

/*
 * Files `chunks` into LMDB in one transaction and commits it (LMDB syncs
 * before returning). With `wal_gen` not 0, the same commit records it and
 * `wal_salt` as the log's next generation. *max_index is the highest index
 * put.
 */
static int write_batch(lmdb_store_t *ls, const chunk_t *chunks, uint64_t wal_gen, uint64_t wal_salt,
                       uint64_t *max_index)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(ls->env, NULL, 0, &txn);
    if (rc != 0)
        return rc;
    *max_index = 0;
    size_t n_ops = 0;
    for (const chunk_t *c = chunks; c && rc == 0; c = c->next)
        rc = apply_entries(ls, txn, (const unsigned char *)c->ops.data, c->ops.len, max_index,
                           &n_ops);
    if (rc < 0)
        rc = MDB_CORRUPTED; /* our own bytes: cannot happen */
    if (rc == 0)
        rc = raise_last_index(ls, txn, *max_index);
    if (rc == 0 && wal_gen)
        rc = put_meta_u64(txn, ls->dbi_meta, "wal_gen", wal_gen);
    if (rc == 0 && wal_gen)
        rc = put_meta_u64(txn, ls->dbi_meta, "wal_salt", wal_salt);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

/* Keys deleted per transaction when removals must make room on their own. */
#define REMOVAL_CHUNK_KEYS 32

/* Commits one removal entry on its own, a few keys per transaction. */
static bool commit_removal(lmdb_store_t *ls, const entry_t *e)
{
    for (size_t i = 0; i < e->n_indexes; i += REMOVAL_CHUNK_KEYS) {
        MDB_txn *txn;
        if (mdb_txn_begin(ls->env, NULL, 0, &txn) != 0)
            return false;
        int rc = 0;
        for (size_t j = i; rc == 0 && j < e->n_indexes && j < i + REMOVAL_CHUNK_KEYS; j++)
            rc = del_event(txn, ls->dbi_events, le_load(e->indexes + 8 * j, 8));
        rc = rc == 0 ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), rc);
        if (rc != 0)
            return false;
    }
    return true;
}

static bool removal_covers(const entry_t *e, uint64_t index)
{
    for (size_t i = 0; i < e->n_indexes; i++)
        if (le_load(e->indexes + 8 * i, 8) == index)
            return true;
    return false;
}

/*
 * After a commit failed with a full map: commits the token removals in
 * `c` on their own (deleting copies B-tree pages too, so one big removal
 * may not fit either) and rewrites `c` without them and without the puts
 * of events they cover (their token is gone). c->max_index stays: once
 * the chunk is kept, the dropped puts count as done too (nobody can read
 * them). Memory failures leave `c` as it was: applying
 * a removal twice is harmless.
 */
static void commit_removals_first(lmdb_store_t *ls, chunk_t *c)
{
    const unsigned char *p = (const unsigned char *)c->ops.data, *end = p + c->ops.len;
    size_t n = 0, n_done = 0;
    entry_t *all = NULL;
    for (const unsigned char *q = p; q < end; n++) {
        entry_t e;
        if (next_entry(&q, end, &e) != 0)
            return;
    }
    all = malloc((n ? n : 1) * sizeof *all);
    bool *done = calloc(n ? n : 1, sizeof *done);
    buf_t kept = BUF_INIT;
    if (!all || !done)
        goto out;
    for (size_t i = 0; i < n; i++) {
        next_entry(&p, end, &all[i]);
        if (all[i].is_removal && commit_removal(ls, &all[i])) {
            done[i] = true;
            n_done++;
        }
    }
    if (n_done == 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        bool drop = done[i];
        for (size_t j = 0; !drop && !all[i].is_removal && j < n; j++)
            drop = done[j] && removal_covers(&all[j], all[i].index);
        if (!drop)
            buf_append(&kept, all[i].start, all[i].len);
    }
    if (!buf_failed(&kept)) {
        buf_free(&c->ops);
        c->ops = kept;
        kept = (buf_t)BUF_INIT;
    }
out:
    buf_free(&kept);
    free(all);
    free(done);
}

/* ---- the writer thread -------------------------------------------------- */

static void wake_loop(lmdb_store_t *ls)
{
    uint64_t one = 1;
    ssize_t n = write(ls->event_fd, &one, sizeof one);
    (void)n; /* a full counter still wakes the loop */
}

static void raise_atomic(_Atomic uint64_t *v, uint64_t to)
{
    if (to > atomic_load(v))
        atomic_store(v, to);
}

/* Everything up to `index` is durable: answers waiting for it may go. */
static void publish_durable(lmdb_store_t *ls, uint64_t index)
{
    raise_atomic(&ls->durable_index, index);
    wake_loop(ls);
}

/* `bytes` of ops left the queue's account (they are in LMDB or dropped). */
static void release_bytes(lmdb_store_t *ls, size_t bytes)
{
    pthread_mutex_lock(&ls->mu);
    ls->queued_bytes -= bytes;
    pthread_mutex_unlock(&ls->mu);
}

/* After every commit: a measure costs a few mdb_stat() calls and one
 * statvfs(), nothing next to the commit's own sync. */
static void update_free(lmdb_store_t *ls)
{
    atomic_store(&ls->free_bytes, measure_free(ls));
}

static void note_failure(lmdb_store_t *ls, const char *what, const char *why)
{
    writer_t *wr = &ls->wr;
    if (!atomic_load(&ls->commit_failing))
        log_error("store: %s in %s: %s; writes are refused and it is retried every second", what,
                  ls->dir, why);
    atomic_store(&ls->commit_failing, true);
    wr->next_try_ms = time_mono_ms() + RETRY_MS;
}

/*
 * Files everything logged into LMDB with one commit that also moves the log
 * to its next generation, then restarts the log. On a full map, commits the
 * removals among them first and tries once more. true when done.
 */
static bool checkpoint(lmdb_store_t *ls)
{
    writer_t *wr = &ls->wr;
    for (int attempt = 0; wr->logged && attempt < 2; attempt++) {
        uint64_t max_index, salt = new_salt();
        uint64_t started_ns = histogram_now_ns();
        int rc = write_batch(ls, wr->logged, wr->wal_gen + 1, salt, &max_index);
        if (rc == 0) {
            histogram_observe(&ls->checkpoint_sync, histogram_now_ns() - started_ns);
            wr->wal_salt = salt;
            wal_restart(wr->wal, ++wr->wal_gen, salt);
            atomic_fetch_add(&ls->n_checkpoints, 1);
            size_t bytes = chunks_bytes(wr->logged);
            chunks_free(wr->logged);
            wr->logged = NULL;
            raise_atomic(&ls->readable_index, wr->logged_max);
            /* Free space first: the reserve must not shrink by what this
             * commit filed before free space shows what it took. */
            update_free(ls);
            release_bytes(ls, bytes);
            return true;
        }
        note_failure(ls, "moving logged writes into LMDB failed", mdb_strerror(rc));
        if (rc != MDB_MAP_FULL)
            break;
        for (chunk_t *c = wr->logged; c; c = c->next)
            commit_removals_first(ls, c);
    }
    atomic_store(&ls->free_bytes, measure_free(ls));
    return wr->logged == NULL;
}

/*
 * Makes the chunk `c` durable: as one log frame, or straight into LMDB when
 * it cannot be logged (larger than the log, or the log fails). When neither
 * works it waits in wr->retry, in front of everything queued.
 */
static void keep_batch(lmdb_store_t *ls, chunk_t *c)
{
    writer_t *wr = &ls->wr;
    size_t len = c->ops.len;
    bool loggable = len <= wal_capacity(wr->wal), checkpointed = true;
    if (loggable && len > wal_room(wr->wal))
        checkpointed = checkpoint(ls); /* makes room when it works */
    if (loggable && len <= wal_room(wr->wal)) {
        uint64_t started_ns = histogram_now_ns();
        int rc = wal_append(wr->wal, c->ops.data, len);
        if (rc == 0 && wr->wal_failing) {
            wr->wal_failing = false;
            log_info("store: %s/" WAL_FILE " can be written again", ls->dir);
        }
        if (rc == 0) {
            histogram_observe(&ls->log_sync, histogram_now_ns() - started_ns);
            if (!wr->logged) {
                wr->logged_since = time_mono_ms();
                wr->logged_tail = &wr->logged;
            }
            atomic_fetch_add(&ls->n_log_frames, 1);
            *wr->logged_tail = c;
            wr->logged_tail = &c->next;
            if (c->max_index > wr->logged_max)
                wr->logged_max = c->max_index;
            publish_durable(ls, c->max_index);
            return;
        }
        if (!wr->wal_failing)
            log_warn("store: cannot write %s/" WAL_FILE ": %s; committing to LMDB directly",
                     ls->dir, strerror(-rc));
        wr->wal_failing = true;
    }
    /* Straight into LMDB, after what is logged: order matters. */
    if (wr->logged && (!checkpointed || !checkpoint(ls))) {
        wr->retry = c;
        return;
    }
    uint64_t committed_max, started_ns = histogram_now_ns();
    int rc = write_batch(ls, c, 0, 0, &committed_max);
    if (rc == 0) {
        histogram_observe(&ls->direct_sync, histogram_now_ns() - started_ns);
        uint64_t top = c->max_index; /* dropped puts (see below) included */
        atomic_fetch_add(&ls->n_direct_commits, 1);
        update_free(ls);
        release_bytes(ls, c->bytes);
        chunks_free(c);
        raise_atomic(&ls->readable_index, top);
        publish_durable(ls, top);
        wr->retry = NULL;
        return;
    }
    note_failure(ls, "a commit failed", mdb_strerror(rc));
    if (rc == MDB_MAP_FULL)
        commit_removals_first(ls, c);
    atomic_store(&ls->free_bytes, measure_free(ls));
    wr->retry = c;
}

static bool checkpoint_due(const writer_t *wr, uint64_t now)
{
    /* `now` may be older than logged_since (taken before the batch was
     * logged): that is not due, not an unsigned wrap-around. */
    return wr->logged && now >= wr->next_try_ms &&
           ((now >= wr->logged_since && now - wr->logged_since >= CHECKPOINT_MS) ||
            wal_room(wr->wal) < wal_capacity(wr->wal) / 2);
}

/* With `mu` held: waits until there is something to do. Measures free
 * space when idle for a second: room may come back from outside. */
static void wait_for_work(lmdb_store_t *ls)
{
    writer_t *wr = &ls->wr;
    for (;;) {
        uint64_t now = time_mono_ms();
        if (ls->stopping || (ls->queued && !wr->retry) || checkpoint_due(wr, now) ||
            (wr->retry && now >= wr->next_try_ms))
            return;
        uint64_t wake = now + 1000;
        if (wr->retry && wr->next_try_ms < wake)
            wake = wr->next_try_ms;
        if (wr->logged) {
            uint64_t at = wr->logged_since + CHECKPOINT_MS;
            at = at > wr->next_try_ms ? at : wr->next_try_ms;
            wake = at < wake ? at : wake;
        }
        struct timespec ts = {(time_t)(wake / 1000), (long)(wake % 1000) * 1000000L};
        if (pthread_cond_timedwait(&ls->cv, &ls->mu, &ts) == ETIMEDOUT && !ls->queued &&
            !wr->logged && !wr->retry) {
            pthread_mutex_unlock(&ls->mu);
            atomic_store(&ls->free_bytes, measure_free(ls));
            pthread_mutex_lock(&ls->mu);
        }
    }
}

static void *writer_main(void *arg)
{
    lmdb_store_t *ls = arg;
    writer_t *wr = &ls->wr;
    for (;;) {
        pthread_mutex_lock(&ls->mu);
        wait_for_work(ls);
        bool stopping = ls->stopping;
        chunk_t *batch = NULL;
        if (!wr->retry) { /* a batch being retried goes first, alone */
            batch = ls->queued;
            ls->queued = NULL;
        }
        pthread_mutex_unlock(&ls->mu);

        uint64_t now = time_mono_ms();
        if (wr->retry && (stopping || now >= wr->next_try_ms)) {
            batch = wr->retry;
            wr->retry = NULL;
        }
        if (batch)
            keep_batch(ls, batch);
        if (wr->logged && (stopping || checkpoint_due(wr, now)))
            checkpoint(ls);
        if (!wr->retry && !wr->logged && atomic_load(&ls->commit_failing)) {
            atomic_store(&ls->commit_failing, false);
            log_info("store: commits work again in %s", ls->dir);
        }
        if (stopping) {
            pthread_mutex_lock(&ls->mu);
            bool more = ls->queued && !wr->retry;
            pthread_mutex_unlock(&ls->mu);
            if (!more)
                break;
        }
    }
    if (wr->retry) {
        log_error("store: stopping with %zu bytes not committed (never acknowledged)",
                  wr->retry->ops.len);
        chunks_free(wr->retry);
        wr->retry = NULL;
    }
    if (wr->logged)
        log_warn("store: stopping with writes only in %s/" WAL_FILE
                 "; they move into LMDB at the next start",
                 ls->dir);
    return NULL;
}

/* ---- the interface, on the loop thread ---------------------------------- */

/*
 * With `mu` held: the chunk the loop appends to, started if the writer took
 * the last one. NULL when out of memory.
 */
static chunk_t *queue_chunk(lmdb_store_t *ls)
{
    if (!ls->queued)
        ls->queued = calloc(1, sizeof *ls->queued);
    return ls->queued;
}

/* With `mu` held: after appending an entry of `bytes` from `at` on, makes
 * it count, or takes it back if memory ran out while encoding it. */
static int entry_done(lmdb_store_t *ls, chunk_t *c, size_t at, size_t bytes)
{
    if (buf_failed(&c->ops)) {
        buf_truncate(&c->ops, at);
        c->ops.failed = false; /* what came before is intact */
        return -ENOMEM;
    }
    c->bytes += bytes;
    ls->queued_bytes += bytes;
    pthread_cond_signal(&ls->cv);
    return 0;
}

static int lmdb_append(store_t *st, const reg_event_t *ev)
{
    lmdb_store_t *ls = (lmdb_store_t *)st;
    pthread_mutex_lock(&ls->mu);
    chunk_t *c = queue_chunk(ls);
    int rc = -ENOMEM;
    if (c) {
        size_t at = c->ops.len;
        buf_putc(&c->ops, 'P');
        buf_put_le(&c->ops, ev->index, 8);
        buf_put_le(&c->ops, 0, 4); /* the record's length, known below */
        size_t rec_at = c->ops.len;
        codec_encode_event(&c->ops, ev);
        if (!buf_failed(&c->ops)) {
            le_store((unsigned char *)c->ops.data + rec_at - 4, c->ops.len - rec_at, 4);
        }
        rc = entry_done(ls, c, at, c->ops.len - at + 64);
        if (rc == 0 && ev->index > c->max_index)
            c->max_index = ev->index;
    }
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

static int lmdb_remove_token(store_t *st, const char *name, const uint64_t *indexes, size_t n)
{
    (void)name;
    lmdb_store_t *ls = (lmdb_store_t *)st;
    if (n > UINT32_MAX)
        return -E2BIG;
    pthread_mutex_lock(&ls->mu);
    chunk_t *c = queue_chunk(ls);
    int rc = -ENOMEM;
    if (c) {
        size_t at = c->ops.len;
        buf_putc(&c->ops, 'R');
        buf_put_le(&c->ops, n, 4);
        for (size_t i = 0; i < n; i++)
            buf_put_le(&c->ops, indexes[i], 8);
        rc = entry_done(ls, c, at, 64 * (n + 1));
    }
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

static reg_event_t *lmdb_fetch(store_t *st, uint64_t index)
{
    lmdb_store_t *ls = (lmdb_store_t *)st;
    /* One read transaction, reset between uses: renewing is cheap. */
    int rc = ls->read_txn ? mdb_txn_renew(ls->read_txn)
                          : mdb_txn_begin(ls->env, NULL, MDB_RDONLY, &ls->read_txn);
    if (rc != 0)
        return NULL;
    unsigned char kb[8];
    index_key(index, kb);
    MDB_val k = {8, kb}, v;
    reg_event_t *ev = NULL;
    if (mdb_get(ls->read_txn, ls->dbi_events, &k, &v) == 0)
        ev = codec_decode_event(v.mv_data, v.mv_size);
    mdb_txn_reset(ls->read_txn);
    return ev;
}

static uint64_t lmdb_durable_index(store_t *st)
{
    return atomic_load(&((lmdb_store_t *)st)->durable_index);
}

static uint64_t lmdb_readable_index(store_t *st)
{
    return atomic_load(&((lmdb_store_t *)st)->readable_index);
}

static int lmdb_notify_fd(store_t *st)
{
    return ((lmdb_store_t *)st)->event_fd;
}

static void lmdb_drain_notify(store_t *st)
{
    uint64_t v;
    ssize_t n = read(((lmdb_store_t *)st)->event_fd, &v, sizeof v);
    (void)n;
}

static bool lmdb_writable(store_t *st)
{
    lmdb_store_t *ls = (lmdb_store_t *)st;
    if (atomic_load(&ls->commit_failing))
        return false;
    pthread_mutex_lock(&ls->mu);
    size_t queued = ls->queued_bytes;
    pthread_mutex_unlock(&ls->mu);
    size_t reserve = reserve_bytes(ls, queued);
    size_t free_now = atomic_load(&ls->free_bytes);
    /* Hysteresis: once full, stay full until half a reserve more is free,
     * so writes do not flap between refused and accepted. */
    if (ls->full && free_now > reserve + reserve / 2) {
        ls->full = false;
        log_info("store: room again in %s (%zu bytes free, %zu reserved for %zu bytes of "
                 "writes not yet in LMDB); writes accepted",
                 ls->dir, free_now, reserve, queued);
    } else if (!ls->full && free_now <= reserve) {
        ls->full = true;
        log_warn("store: %s is nearly full: %zu bytes free, not above the %zu bytes reserved "
                 "for committing %zu bytes of accepted writes not yet in LMDB; writes refused "
                 "until room returns",
                 ls->dir, free_now, reserve, queued);
    }
    return !ls->full;
}

static void lmdb_stats(store_t *st, store_stats_t *out)
{
    lmdb_store_t *ls = (lmdb_store_t *)st;
    out->log_frames = atomic_load(&ls->n_log_frames);
    out->checkpoints = atomic_load(&ls->n_checkpoints);
    out->direct_commits = atomic_load(&ls->n_direct_commits);
    out->log_sync = &ls->log_sync;
    out->checkpoint_sync = &ls->checkpoint_sync;
    out->direct_sync = &ls->direct_sync;
}

static void lmdb_close(store_t *st)
{
    lmdb_store_t *ls = (lmdb_store_t *)st;
    if (ls->writer_started) {
        pthread_mutex_lock(&ls->mu);
        ls->stopping = true;
        pthread_cond_signal(&ls->cv);
        pthread_mutex_unlock(&ls->mu);
        pthread_join(ls->writer, NULL);
    }
    chunks_free(ls->queued);
    chunks_free(ls->wr.logged); /* still in the log when their checkpoint failed */
    chunks_free(ls->wr.retry);
    wal_close(ls->wr.wal);
    if (ls->read_txn)
        mdb_txn_abort(ls->read_txn);
    if (ls->env)
        mdb_env_close(ls->env);
    if (ls->event_fd >= 0)
        close(ls->event_fd);
    if (ls->lock_fd >= 0)
        close(ls->lock_fd); /* releases the flock */
    pthread_mutex_destroy(&ls->mu);
    pthread_cond_destroy(&ls->cv);
    free(ls->dir);
    free(ls);
}

/*
 * Drops the pages of our data file from the resident set. LMDB does not say
 * where it mapped the file (me_mapaddr is set only for fixed maps), so the
 * range comes from /proc/self/maps. Best effort: failing changes nothing.
 */
static void release_map_pages(lmdb_store_t *ls)
{
    char path[4096], line[4096 + 128];
    snprintf(path, sizeof path, "%s/data.mdb", ls->dir);
    char real[4096];
    if (!realpath(path, real))
        return;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        unsigned long start, end;
        char *file = strchr(line, '/');
        if (!file || sscanf(line, "%lx-%lx", &start, &end) != 2)
            continue;
        file[strcspn(file, "\n")] = '\0';
        if (strcmp(file, real) == 0)
            madvise((void *)start, end - start, MADV_DONTNEED);
    }
    fclose(f);
}

static int lmdb_load(store_t *st, const store_replay_sink_t *sink, char *err)
{
    lmdb_store_t *ls = (lmdb_store_t *)st;
    MDB_txn *txn;
    int rc = mdb_txn_begin(ls->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        snprintf(err, 256, "cannot read the store in %s: %s", ls->dir, mdb_strerror(rc));
        return -1;
    }
    MDB_cursor *cur;
    rc = mdb_cursor_open(txn, ls->dbi_events, &cur);
    MDB_val k, v;
    size_t n = 0;
    uint64_t top = 0; /* the highest index replayed, then ever used */
    int result = 0;
    while (rc == 0 && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        reg_event_t *ev = codec_decode_event(v.mv_data, v.mv_size);
        uint64_t key_index = 0;
        if (k.mv_size == 8) {
            memcpy(&key_index, k.mv_data, 8);
            key_index = be64toh(key_index);
        }
        if (!ev || ev->index != key_index) {
            snprintf(err, 256, "the store in %s is corrupt: bad record at index %llu", ls->dir,
                     (unsigned long long)key_index);
            reg_event_free(ev);
            result = -1;
            break;
        }
        int r = sink->replay(sink->ctx, ev);
        if (r != 0) {
            snprintf(err, 256, "the store in %s is corrupt: event %llu does not apply (%s)",
                     ls->dir, (unsigned long long)key_index,
                     r == -ENOMEM ? "out of memory" : "inconsistent");
            result = -1;
            break;
        }
        top = key_index;
        n++;
    }
    if (result == 0 && rc != MDB_NOTFOUND && rc != 0) {
        snprintf(err, 256, "cannot read the store in %s: %s", ls->dir, mdb_strerror(rc));
        result = -1;
    }
    mdb_cursor_close(cur);
    if (result == 0) {
        uint64_t last = get_meta_u64(txn, ls->dbi_meta, "last_index");
        top = last > top ? last : top;
        sink->raise_index(sink->ctx, top);
    }
    mdb_txn_abort(txn);
    if (result == 0) {
        /* Replay touched every page of the map; they are a read-only shared
         * mapping of the data file, so let them go from our resident set
         * (they stay in the page cache and fault back in when read). */
        release_map_pages(ls);
        atomic_store(&ls->durable_index, top);
        atomic_store(&ls->readable_index, top);
        log_info("store: loaded %zu events, index %llu from %s", n, (unsigned long long)top,
                 ls->dir);
    }
    return result;
}

static const struct store_ops lmdb_ops = {
    .load = lmdb_load,
    .append = lmdb_append,
    .remove_token = lmdb_remove_token,
    .fetch = lmdb_fetch,
    .durable_index = lmdb_durable_index,
    .readable_index = lmdb_readable_index,
    .notify_fd = lmdb_notify_fd,
    .drain_notify = lmdb_drain_notify,
    .writable = lmdb_writable,
    .stats = lmdb_stats,
    .close = lmdb_close,
    .name = "lmdb",
};

/* ---- opening ------------------------------------------------------------ */

/* Takes the directory lock; names the holder if another process has it. */
static int take_lock(lmdb_store_t *ls, char *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/" LOCK_FILE, ls->dir);
    ls->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (ls->lock_fd < 0) {
        snprintf(err, 256, "cannot open %.180s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(ls->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(ls->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        snprintf(err, 256, "data dir %s is in use by another disco (process %s); stop it first",
                 ls->dir, pid[0] ? pid : "unknown");
        return -1;
    }
    char line[32];
    int len = snprintf(line, sizeof line, "%ld\n", (long)getpid());
    if (ftruncate(ls->lock_fd, 0) != 0 || pwrite(ls->lock_fd, line, (size_t)len, 0) != len)
        log_warn("cannot write the PID into %s", path);
    return 0;
}

static bool file_exists(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static void remove_file(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

/* Is this a directory we may initialise (empty but for our lock file)? */
static bool dir_is_fresh(const char *dir, bool *has_data)
{
    DIR *d = opendir(dir);
    if (!d)
        return false;
    bool fresh = true;
    *has_data = false;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            strcmp(e->d_name, LOCK_FILE) == 0)
            continue;
        if (strcmp(e->d_name, "data.mdb") == 0)
            *has_data = true;
        else if (strcmp(e->d_name, "lock.mdb") != 0 && strcmp(e->d_name, WAL_FILE) != 0 &&
                 strcmp(e->d_name, WAL_FILE ".new") != 0)
            fresh = false;
    }
    closedir(d);
    return fresh;
}

static int open_env(lmdb_store_t *ls, bool has_data, char *err)
{
    int rc = mdb_env_create(&ls->env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(ls->env, ls->map_bytes);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(ls->env, 4);
    if (rc == 0)
        rc = mdb_env_open(ls->env, ls->dir, MDB_NOTLS, 0600);
    if (rc != 0) {
        snprintf(err, 256, "cannot open the store in %s: %s%s", ls->dir, mdb_strerror(rc),
                 has_data ? " (corrupt or not a disco data dir; refusing to reset it)" : "");
        return -1;
    }
    MDB_envinfo info;
    MDB_stat stat;
    mdb_env_info(ls->env, &info);
    mdb_env_stat(ls->env, &stat);
    ls->map_bytes = info.me_mapsize;
    ls->page_bytes = stat.ms_psize;

    MDB_txn *txn;
    rc = mdb_txn_begin(ls->env, NULL, 0, &txn);
    if (rc != 0) {
        snprintf(err, 256, "cannot open the store in %s: %s", ls->dir, mdb_strerror(rc));
        return -1;
    }
    /* An existing data file must already hold our format tag, or format 1's
     * (upgraded by open_log()). */
    unsigned flags = has_data ? 0 : MDB_CREATE;
    rc = mdb_dbi_open(txn, "meta", flags, &ls->dbi_meta);
    MDB_val fk = {6, "format"}, fv;
    if (rc == 0 && has_data) {
        rc = mdb_get(txn, ls->dbi_meta, &fk, &fv);
        ls->is_format1 = rc == 0 && fv.mv_size == strlen(FORMAT1_TAG) &&
                         memcmp(fv.mv_data, FORMAT1_TAG, fv.mv_size) == 0;
        if (rc == 0 && !ls->is_format1 &&
            (fv.mv_size != strlen(FORMAT_TAG) || memcmp(fv.mv_data, FORMAT_TAG, fv.mv_size) != 0))
            rc = MDB_INCOMPATIBLE;
    } else if (rc == 0) {
        fv = (MDB_val){strlen(FORMAT_TAG), FORMAT_TAG};
        rc = mdb_put(txn, ls->dbi_meta, &fk, &fv, 0);
    }
    if (rc == 0)
        rc = mdb_dbi_open(txn, "events", flags, &ls->dbi_events);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc != 0) {
        snprintf(err, 256, "%s is not a disco data dir of this version (%s); refusing to touch it",
                 ls->dir, mdb_strerror(rc));
        return -1;
    }
    return 0;
}

/*
 * Opens the write-ahead log (creating it on first use) and moves what it
 * holds into LMDB: the frames of the generation and salt LMDB names are the
 * writes acknowledged after the last checkpoint. The same commit moves the
 * log to a generation never used before, with a new salt, so no frame is
 * ever applied after a newer state, whatever is left in the file. A data
 * dir of format 1 has its log read with that format's reader, and the same
 * commit records the current format: the upgrade is one atomic step.
 */
static int open_log(lmdb_store_t *ls, char *err)
{
    writer_t *wr = &ls->wr;
    size_t bytes = ls->map_bytes / 16;
    bytes = bytes < WAL_MIN_BYTES ? WAL_MIN_BYTES : bytes > WAL_MAX_BYTES ? WAL_MAX_BYTES : bytes;
    char path[4096];
    snprintf(path, sizeof path, "%s/" WAL_FILE, ls->dir);
    wr->wal = wal_open(path, bytes, 0, err);
    if (!wr->wal)
        return -1;
    MDB_txn *txn;
    int rc = mdb_txn_begin(ls->env, NULL, 0, &txn);
    if (rc != 0) {
        snprintf(err, 256, "cannot open the store in %s: %s", ls->dir, mdb_strerror(rc));
        return -1;
    }
    uint64_t gen = get_meta_u64(txn, ls->dbi_meta, "wal_gen");
    uint64_t salt = get_meta_u64(txn, ls->dbi_meta, "wal_salt"), next_salt = new_salt();
    replay_t r = {.ls = ls, .txn = txn};
    int wrc = ls->is_format1 ? wal_replay_format1(wr->wal, gen, apply_frame, &r)
                             : wal_replay(wr->wal, gen, salt, apply_frame, &r);
    rc = r.mdb_rc;
    if (wrc == 0 && rc == 0)
        rc = raise_last_index(ls, txn, r.max_index);
    if (wrc == 0 && rc == 0)
        rc = put_meta_u64(txn, ls->dbi_meta, "wal_gen", gen + 1);
    if (wrc == 0 && rc == 0)
        rc = put_meta_u64(txn, ls->dbi_meta, "wal_salt", next_salt);
    if (wrc == 0 && rc == 0 && ls->is_format1) {
        MDB_val fk = {6, "format"}, fv = {strlen(FORMAT_TAG), FORMAT_TAG};
        rc = mdb_put(txn, ls->dbi_meta, &fk, &fv, 0);
    }
    if (wrc == 0 && rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (wrc < 0) {
        snprintf(err, 256, "cannot apply %.150s: %s", path,
                 wrc == -EINVAL ? "a frame is malformed (not disco's, or damaged)"
                                : strerror(-wrc));
        return -1;
    }
    if (rc != 0) {
        snprintf(err, 256, "cannot apply %.150s to the store: %s%s", path, mdb_strerror(rc),
                 rc == MDB_MAP_FULL ? " (raise --map-size)" : "");
        return -1;
    }
    wal_restart(wr->wal, gen + 1, next_salt);
    wr->wal_gen = gen + 1;
    wr->wal_salt = next_salt;
    if (r.frames)
        log_info("store: applied %zu logged batches (%zu writes) from %s", r.frames, r.ops, path);
    if (ls->is_format1)
        log_info("store: upgraded %s from on-disk format " FORMAT1_TAG " to " FORMAT_TAG
                 " (log frames chained and salted)",
                 ls->dir);
    ls->is_format1 = false;
    return 0;
}

store_t *store_lmdb_open(const char *dir, const store_lmdb_options_t *opt, char *err)
{
    lmdb_store_t *ls = calloc(1, sizeof *ls);
    if (!ls) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    ls->base.ops = &lmdb_ops;
    ls->lock_fd = ls->event_fd = -1;
    ls->map_bytes = opt && opt->map_size_bytes ? opt->map_size_bytes : STORE_LMDB_DEFAULT_MAP_BYTES;
    pthread_mutex_init(&ls->mu, NULL);
    pthread_condattr_t ca; /* the writer's deadlines are time_mono_ms() */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ls->cv, &ca);
    pthread_condattr_destroy(&ca);
    ls->dir = strdup(dir);
    bool has_data = false;
    bool had_lock_file = file_exists(dir, LOCK_FILE), had_lmdb_lock = file_exists(dir, "lock.mdb");
    bool refused = false;
    if (!ls->dir) {
        snprintf(err, 256, "out of memory");
    } else if (access(dir, R_OK | W_OK | X_OK) != 0) {
        snprintf(err, 256, "cannot use data dir %s: %s", dir, strerror(errno));
    } else if (!dir_is_fresh(dir, &has_data) && !has_data) {
        snprintf(err, 256, "%s holds files that are not disco's; use an empty or a disco data dir",
                 dir);
    } else if (take_lock(ls, err) != 0) {
        /* err says who holds it; leave its files alone */
    } else if (open_env(ls, has_data, err) != 0) {
        refused = true; /* corrupt or foreign: undo only what we added */
    } else if (open_log(ls, err) != 0) {
        /* err says why; the log and the data are left as they are */
    } else {
        ls->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        atomic_store(&ls->free_bytes, measure_free(ls));
        /* The writer must never take a process signal (SIGTERM belongs to
         * the event loop's signalfd): start it with every signal blocked. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int prc = ls->event_fd >= 0 ? pthread_create(&ls->writer, NULL, writer_main, ls) : -1;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (prc == 0) {
            ls->writer_started = true;
            return &ls->base;
        }
        snprintf(err, 256, "cannot start the store writer: %s", strerror(errno));
    }
    lmdb_close(&ls->base);
    if (refused) {
        if (!had_lmdb_lock)
            remove_file(dir, "lock.mdb");
        if (!had_lock_file)
            remove_file(dir, LOCK_FILE);
    }
    return NULL;
}
