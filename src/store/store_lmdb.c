/*
 * store_lmdb.c - the embedded durable store: the registry's event log in
 * LMDB, written by one writer thread with group commit.
 *
 * Layout of the data directory:
 *   disco.lock   flock()ed by the running disco; holds its PID
 *   data.mdb     LMDB data: "meta" (format, last_index) and "events"
 *                (8-byte big-endian index -> codec record)
 *   lock.mdb     LMDB's reader table
 *
 * Durability: the event loop thread encodes each event and queues it; the
 * writer takes everything queued, writes it in one transaction and commits
 * (LMDB fsyncs the data file before the commit returns). Only then does it
 * publish the new durable index and wake the loop through an eventfd; the
 * loop releases the answers that waited for it. So a 2xx leaves only after
 * its change is on disk, and many concurrent writes share one fsync.
 *
 * Space: LMDB fails a transaction when its map or the disk is full. A
 * failed commit cannot be taken back from the in-memory registry, so disco
 * refuses new writes early instead: the writer measures free space after
 * every commit (and every second when idle) and store_writable() says no
 * while less than a safety reserve is left. If a commit fails anyway, the
 * writer keeps the batch and retries every second; nothing is dropped.
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
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "store/codec.h"
#include "store/store.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/timeutil.h"

#define FORMAT_TAG "disco-registry-1"
#define LOCK_FILE "disco.lock"
/* Refuse writes when less than this is free (map or disk), plus twice
 * what is queued: room for the copy-on-write pages of the next commits. */
#define RESERVE_MIN_BYTES ((size_t)512 * 1024)
#define RESERVE_MAP_FRACTION 20 /* 1/20 = 5% of the map */
#define RETRY_MS 1000
/* Free space is measured after a commit at most this often (and every
 * second when idle): the measure walks LMDB's freelist and calls statvfs. */
#define MEASURE_EVERY_MS 100

typedef struct op {
    struct op *next;
    bool is_removal;
    uint64_t index;    /* put: the event's index */
    buf_t record;      /* put: the encoded event */
    uint64_t *indexes; /* removal: the token's event indexes */
    size_t n_indexes;
} op_t;

typedef struct lmdb_store {
    store_t base;
    char *dir;
    int lock_fd;
    int event_fd;
    MDB_env *env;
    MDB_dbi dbi_meta, dbi_events;
    MDB_txn *read_txn; /* loop thread: a reset read transaction for fetch */
    size_t map_bytes;
    size_t page_bytes;
    /* shared with the writer thread, under `mu` */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    op_t *head, *tail;
    size_t queued_bytes;
    bool stopping;
    /* published by the writer */
    _Atomic uint64_t durable_index;
    _Atomic size_t free_bytes;
    _Atomic bool commit_failing;
    bool full; /* loop thread only: writes refused until room is back */
    pthread_t writer;
    bool writer_started;
} lmdb_store_t;

static void op_free(op_t *op)
{
    buf_free(&op->record);
    free(op->indexes);
    free(op);
}

static void index_key(uint64_t index, unsigned char out[8])
{
    uint64_t be = htobe64(index);
    memcpy(out, &be, 8);
}

/* ---- space ---------------------------------------------------------- */

/* Free bytes in the map (never-used pages + the freelist) and on disk. */
static size_t measure_free(lmdb_store_t *ls)
{
    MDB_envinfo info;
    MDB_txn *txn;
    size_t free_pages = 0;
    if (mdb_env_info(ls->env, &info) != 0 || mdb_txn_begin(ls->env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    size_t map_pages = info.me_mapsize / ls->page_bytes;
    size_t used_high = info.me_last_pgno + 1;
    free_pages = map_pages > used_high ? map_pages - used_high : 0;
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, 0 /* the freelist */, &cur) == 0) {
        MDB_val k, v;
        while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
            size_t n;
            memcpy(&n, v.mv_data, sizeof n); /* first word: page count */
            free_pages += n;
        }
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    size_t map_free = free_pages * ls->page_bytes;
    struct statvfs vfs;
    if (statvfs(ls->dir, &vfs) == 0) {
        size_t disk_free = (size_t)vfs.f_bavail * vfs.f_frsize;
        /* Pages never used yet need disk blocks; reused ones do not. */
        size_t fresh = map_pages > used_high ? (map_pages - used_high) * ls->page_bytes : 0;
        if (disk_free < fresh)
            map_free -= fresh - disk_free;
    }
    return map_free;
}

/* Free bytes below which writes are refused, with `queued` bytes pending. */
static size_t reserve_bytes(const lmdb_store_t *ls, size_t queued)
{
    return RESERVE_MIN_BYTES + ls->map_bytes / RESERVE_MAP_FRACTION + 2 * queued;
}

/* ---- the writer thread -------------------------------------------------- */

static int write_batch(lmdb_store_t *ls, op_t *batch, uint64_t *max_index)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(ls->env, NULL, 0, &txn);
    if (rc != 0)
        return rc;
    *max_index = 0;
    for (op_t *op = batch; op && rc == 0; op = op->next) {
        unsigned char kb[8];
        MDB_val k = {8, kb};
        if (op->is_removal) {
            for (size_t i = 0; i < op->n_indexes && rc == 0; i++) {
                index_key(op->indexes[i], kb);
                rc = mdb_del(txn, ls->dbi_events, &k, NULL);
                if (rc == MDB_NOTFOUND)
                    rc = 0;
            }
        } else {
            index_key(op->index, kb);
            MDB_val v = {op->record.len, op->record.data};
            rc = mdb_put(txn, ls->dbi_events, &k, &v, 0);
            if (op->index > *max_index)
                *max_index = op->index;
        }
    }
    if (rc == 0 && *max_index) {
        unsigned char vb[8];
        index_key(*max_index, vb);
        MDB_val k = {10, "last_index"}, v = {8, vb};
        rc = mdb_put(txn, ls->dbi_meta, &k, &v, 0);
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn); /* fsyncs */
}

/* Keys deleted per transaction when removals must make room on their own. */
#define REMOVAL_CHUNK_KEYS 32

static bool covers(const op_t *removal, uint64_t index)
{
    for (size_t i = 0; i < removal->n_indexes; i++)
        if (removal->indexes[i] == index)
            return true;
    return false;
}

/*
 * After a batch failed with a full map: commits its token removals on their
 * own, a few keys per transaction (deleting copies B-tree pages too, so one
 * big removal may not fit either), and drops the puts of events that a
 * committed removal covers (their token is gone). Returns what is left to
 * retry; *dropped_max is raised to the highest index dropped.
 */
static op_t *commit_removals_first(lmdb_store_t *ls, op_t *batch, uint64_t *dropped_max)
{
    for (op_t *op = batch; op; op = op->next) {
        if (!op->is_removal)
            continue;
        bool ok = true;
        for (size_t i = 0; ok && i < op->n_indexes; i += REMOVAL_CHUNK_KEYS) {
            MDB_txn *txn;
            if (mdb_txn_begin(ls->env, NULL, 0, &txn) != 0) {
                ok = false;
                break;
            }
            int rc = 0;
            for (size_t j = i; rc == 0 && j < op->n_indexes && j < i + REMOVAL_CHUNK_KEYS; j++) {
                unsigned char kb[8];
                MDB_val k = {8, kb};
                index_key(op->indexes[j], kb);
                rc = mdb_del(txn, ls->dbi_events, &k, NULL);
                if (rc == MDB_NOTFOUND)
                    rc = 0;
            }
            if (rc == 0)
                rc = mdb_txn_commit(txn);
            else
                mdb_txn_abort(txn);
            ok = rc == 0;
        }
        if (ok)
            op->index = UINT64_MAX; /* mark: committed (deletes are idempotent) */
    }
    /* Rebuild the list without committed removals and the puts they cover. */
    size_t n = 0;
    for (op_t *op = batch; op; op = op->next)
        n++;
    op_t **ops = malloc(n * sizeof *ops);
    if (!ops)
        return batch; /* everything is retried; deleting twice is harmless */
    n = 0;
    for (op_t *op = batch; op; op = op->next)
        ops[n++] = op;
    op_t *keep = NULL, **tail = &keep;
    for (size_t i = 0; i < n; i++) {
        op_t *op = ops[i];
        bool drop = op->is_removal && op->index == UINT64_MAX;
        for (size_t j = 0; !drop && !op->is_removal && j < n; j++)
            drop = ops[j]->is_removal && ops[j]->index == UINT64_MAX && covers(ops[j], op->index);
        if (drop && !op->is_removal && op->index > *dropped_max)
            *dropped_max = op->index;
        ops[i] = drop ? op : NULL; /* what remains in ops[] is freed below */
        if (!drop) {
            *tail = op;
            tail = &op->next;
        }
    }
    *tail = NULL;
    for (size_t i = 0; i < n; i++)
        if (ops[i])
            op_free(ops[i]);
    free(ops);
    return keep;
}

static void wake_loop(lmdb_store_t *ls)
{
    uint64_t one = 1;
    ssize_t n = write(ls->event_fd, &one, sizeof one);
    (void)n; /* a full counter still wakes the loop */
}

static void *writer_main(void *arg)
{
    lmdb_store_t *ls = arg;
    uint64_t last_measure_ms = 0;
    op_t *retry = NULL; /* a batch whose commit failed */
    size_t retry_bytes = 0;
    uint64_t dropped_max = 0; /* highest index of puts dropped with their token */
    pthread_mutex_lock(&ls->mu);
    for (;;) {
        while (!ls->head && !retry && !ls->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            if (pthread_cond_timedwait(&ls->cv, &ls->mu, &ts) == ETIMEDOUT) {
                pthread_mutex_unlock(&ls->mu);
                atomic_store(&ls->free_bytes, measure_free(ls)); /* space may be back */
                pthread_mutex_lock(&ls->mu);
            }
        }
        if (ls->stopping && !ls->head && !retry)
            break;
        /* Take everything queued, after a batch that is being retried. */
        op_t *batch = retry, *taken = ls->head;
        size_t taken_bytes = ls->queued_bytes;
        ls->head = ls->tail = NULL;
        if (batch) {
            op_t *t = batch;
            while (t->next)
                t = t->next;
            t->next = taken;
        } else {
            batch = taken;
        }
        bool stopping = ls->stopping;
        pthread_mutex_unlock(&ls->mu);

        uint64_t max_index = 0;
        int rc = batch ? write_batch(ls, batch, &max_index) : 0;
        if (rc == 0) {
            if (atomic_load(&ls->commit_failing))
                log_info("store: commits work again in %s", ls->dir);
            atomic_store(&ls->commit_failing, false);
            while (batch) {
                op_t *next = batch->next;
                op_free(batch);
                batch = next;
            }
            if (dropped_max > max_index)
                max_index = dropped_max;
            dropped_max = 0;
            if (max_index)
                atomic_store(&ls->durable_index, max_index);
            retry = NULL;
            wake_loop(ls);
            /* Exact near the limit, estimated when there is plenty of room. */
            if (time_mono_ms() - last_measure_ms >= MEASURE_EVERY_MS ||
                atomic_load(&ls->free_bytes) < 4 * reserve_bytes(ls, 0)) {
                atomic_store(&ls->free_bytes, measure_free(ls));
                last_measure_ms = time_mono_ms();
            } else {
                /* Until the next measure, count what this commit used (its
                 * records and the copied pages) so the estimate never lags
                 * behind a burst of writes. */
                size_t used = 2 * (taken_bytes + retry_bytes) + ls->page_bytes;
                size_t before = atomic_load(&ls->free_bytes);
                atomic_store(&ls->free_bytes, before > used ? before - used : 0);
            }
            pthread_mutex_lock(&ls->mu);
            ls->queued_bytes -= taken_bytes + retry_bytes;
            retry_bytes = 0;
        } else {
            if (!atomic_load(&ls->commit_failing))
                log_error("store: commit failed in %s: %s; writes are refused and the batch is "
                          "retried every second",
                          ls->dir, mdb_strerror(rc));
            atomic_store(&ls->commit_failing, true);
            if (rc == MDB_MAP_FULL)
                batch = commit_removals_first(ls, batch, &dropped_max);
            atomic_store(&ls->free_bytes, measure_free(ls));
            retry = batch;
            retry_bytes += taken_bytes;
            if (!retry) {
                /* The removals were all there was, and they are committed:
                 * every op taken so far is resolved. */
                if (dropped_max > atomic_load(&ls->durable_index))
                    atomic_store(&ls->durable_index, dropped_max);
                dropped_max = 0;
                atomic_store(&ls->commit_failing, false);
                log_info("store: removals made room in %s", ls->dir);
                wake_loop(ls);
                pthread_mutex_lock(&ls->mu);
                ls->queued_bytes -= retry_bytes;
                retry_bytes = 0;
                continue; /* with the lock held, as the loop expects */
            }
            if (stopping) {
                log_error("store: stopping with %zu bytes not committed", retry_bytes);
                while (retry) {
                    op_t *next = retry->next;
                    op_free(retry);
                    retry = next;
                }
                pthread_mutex_lock(&ls->mu);
                break;
            }
            struct timespec ts = {RETRY_MS / 1000, (RETRY_MS % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            pthread_mutex_lock(&ls->mu);
        }
    }
    pthread_mutex_unlock(&ls->mu);
    return NULL;
}

/* ---- the interface, on the loop thread ---------------------------------- */

static void enqueue(lmdb_store_t *ls, op_t *op, size_t bytes)
{
    pthread_mutex_lock(&ls->mu);
    if (ls->tail)
        ls->tail->next = op;
    else
        ls->head = op;
    ls->tail = op;
    ls->queued_bytes += bytes;
    pthread_cond_signal(&ls->cv);
    pthread_mutex_unlock(&ls->mu);
}

static int lmdb_append(store_t *st, const reg_event_t *ev)
{
    lmdb_store_t *ls = (lmdb_store_t *)st;
    op_t *op = calloc(1, sizeof *op);
    if (!op)
        return -ENOMEM;
    op->index = ev->index;
    codec_encode_event(&op->record, ev);
    if (buf_failed(&op->record)) {
        op_free(op);
        return -ENOMEM;
    }
    enqueue(ls, op, op->record.len + 64);
    return 0;
}

static int lmdb_remove_token(store_t *st, const char *name, const uint64_t *indexes, size_t n)
{
    (void)name;
    lmdb_store_t *ls = (lmdb_store_t *)st;
    op_t *op = calloc(1, sizeof *op);
    if (!op)
        return -ENOMEM;
    op->is_removal = true;
    op->indexes = malloc((n ? n : 1) * sizeof *op->indexes);
    if (!op->indexes) {
        free(op);
        return -ENOMEM;
    }
    memcpy(op->indexes, indexes, n * sizeof *indexes);
    op->n_indexes = n;
    enqueue(ls, op, 64 * (n + 1));
    return 0;
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
        log_info("store: room again in %s; writes accepted", ls->dir);
    } else if (!ls->full && free_now <= reserve) {
        ls->full = true;
        log_warn("store: %s is nearly full (%zu bytes free); writes refused until room returns",
                 ls->dir, free_now);
    }
    return !ls->full;
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
    while (ls->head) {
        op_t *next = ls->head->next;
        op_free(ls->head);
        ls->head = next;
    }
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

static int lmdb_load(store_t *st, registry_t *reg, char *err)
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
        int r = registry_replay(reg, ev);
        if (r != 0) {
            snprintf(err, 256, "the store in %s is corrupt: event %llu does not apply (%s)",
                     ls->dir, (unsigned long long)key_index,
                     r == -ENOMEM ? "out of memory" : "inconsistent");
            result = -1;
            break;
        }
        n++;
    }
    if (result == 0 && rc != MDB_NOTFOUND && rc != 0) {
        snprintf(err, 256, "cannot read the store in %s: %s", ls->dir, mdb_strerror(rc));
        result = -1;
    }
    mdb_cursor_close(cur);
    MDB_val lk = {10, "last_index"}, lv;
    if (result == 0 && mdb_get(txn, ls->dbi_meta, &lk, &lv) == 0 && lv.mv_size == 8) {
        uint64_t last;
        memcpy(&last, lv.mv_data, 8);
        registry_raise_index(reg, be64toh(last));
    }
    mdb_txn_abort(txn);
    if (result == 0) {
        /* Replay touched every page of the map; they are a read-only shared
         * mapping of the data file, so let them go from our resident set
         * (they stay in the page cache and fault back in when read). */
        release_map_pages(ls);
        atomic_store(&ls->durable_index, registry_index(reg));
        log_info("store: loaded %zu events, %zu tokens, index %llu from %s", n,
                 registry_token_count(reg), (unsigned long long)registry_index(reg), ls->dir);
    }
    return result;
}

static const struct store_ops lmdb_ops = {
    .load = lmdb_load,
    .append = lmdb_append,
    .remove_token = lmdb_remove_token,
    .fetch = lmdb_fetch,
    .durable_index = lmdb_durable_index,
    .notify_fd = lmdb_notify_fd,
    .drain_notify = lmdb_drain_notify,
    .writable = lmdb_writable,
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
        else if (strcmp(e->d_name, "lock.mdb") != 0)
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
    /* An existing data file must already hold our format tag. */
    unsigned flags = has_data ? 0 : MDB_CREATE;
    rc = mdb_dbi_open(txn, "meta", flags, &ls->dbi_meta);
    MDB_val fk = {6, "format"}, fv;
    if (rc == 0 && has_data) {
        rc = mdb_get(txn, ls->dbi_meta, &fk, &fv);
        if (rc == 0 &&
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
    pthread_cond_init(&ls->cv, NULL);
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
