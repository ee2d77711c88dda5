/*
 * space.h - how much room the LMDB store has left, and how much it must
 * keep in reserve for the writes it has already accepted.
 *
 * Why a reserve: a failed LMDB commit cannot be taken back from the
 * in-memory registry, so the store refuses new writes (503) while free
 * space is not above what the accepted writes not yet in LMDB still need
 * to get there. That need is counted in bytes from what is pending, not as
 * a share of --map-size: an empty store on a nearly full disk still takes
 * writes as long as they really fit.
 *
 * Everything is counted through LMDB's public API: mdb_env_info() (the
 * map's size, the last page the data file has reached) and mdb_stat() on
 * each tree (its branch, leaf and overflow pages; DBI 0 is LMDB's own
 * freelist tree, as LMDB's mdb_stat tool reads it). A page in the file that
 * no tree holds is on the freelist: reusable without new disk blocks.
 * Nothing here reads LMDB's private record layouts, so an LMDB upgrade
 * cannot silently change the figures.
 *
 * Header-only (static inline), for store_lmdb.c's writer thread and the
 * unit tests.
 */
#ifndef DISCO_STORE_SPACE_H
#define DISCO_STORE_SPACE_H

#include <lmdb.h>
#include <stddef.h>
#include <stdint.h>

/* LMDB's two meta pages (0 and 1) belong to no tree. */
#define STORE_SPACE_META_PAGES 2
/*
 * A record costs up to twice its bytes in pages: keys are indexes in
 * increasing order, and LMDB splits a full leaf in the middle, so the
 * leaves left behind are about half full. (Each queued entry is already
 * charged its key and node overhead on top of the record: store_lmdb.c.)
 */
#define STORE_SPACE_WRITE_AMPLIFICATION 2
/*
 * Pages one commit copies besides the records' own: the path from the root
 * to each leaf it writes (the events tree is at most 4 levels deep below
 * about 10^8 events), the meta tree, the main tree's root and the
 * freelist's own records. Counted twice: the pages a commit frees can be
 * reused only after the next commit.
 */
#define STORE_SPACE_COMMIT_COPIED_PAGES 32
/* Slack for a large write accepted between two measures, and for LMDB's
 * freelist growing as it records freed pages. */
#define STORE_SPACE_MARGIN_BYTES ((size_t)256 * 1024)

/* What a measure found. */
typedef struct store_space {
    size_t page_bytes;
    size_t map_pages;       /* --map-size, in pages */
    size_t file_pages;      /* pages the data file has reached (last page + 1) */
    size_t tree_pages;      /* pages held by the meta pages and every tree */
    size_t disk_free_bytes; /* for new blocks of the data file; SIZE_MAX: no limit */
} store_space_t;

/* Free bytes: pages on the freelist, plus the part of the map the file has
 * not reached yet as far as the disk has room for it. */
static inline size_t store_space_free_bytes(const store_space_t *s)
{
    size_t reusable = s->file_pages > s->tree_pages ? s->file_pages - s->tree_pages : 0;
    size_t fresh = s->map_pages > s->file_pages ? s->map_pages - s->file_pages : 0;
    size_t fresh_bytes = fresh * s->page_bytes;
    if (fresh_bytes > s->disk_free_bytes)
        fresh_bytes = s->disk_free_bytes;
    return reusable * s->page_bytes + fresh_bytes;
}

/*
 * Free bytes that must remain for `pending_bytes` of accepted writes not
 * yet in LMDB (queued, logged or being retried) to be committed: what
 * their records take in pages, what the commits copy, and a margin. New
 * writes are accepted only while free space is above it.
 */
static inline size_t store_space_reserve_bytes(size_t pending_bytes, size_t page_bytes)
{
    return STORE_SPACE_MARGIN_BYTES + 2 * STORE_SPACE_COMMIT_COPIED_PAGES * page_bytes +
           STORE_SPACE_WRITE_AMPLIFICATION * pending_bytes;
}

/*
 * Fills `out` (all but disk_free_bytes, set to SIZE_MAX) from the snapshot
 * `txn` sees of an environment whose trees are the main tree and the
 * `n_dbis` named ones at `dbis`. Call it where no other transaction
 * commits meanwhile: the file's last page comes from the newest commit.
 * 0, or an LMDB error.
 */
static inline int store_space_count(MDB_txn *txn, const MDB_dbi *dbis, size_t n_dbis,
                                    store_space_t *out)
{
    MDB_env *env = mdb_txn_env(txn);
    MDB_envinfo info;
    MDB_stat st;
    int rc = mdb_env_info(env, &info);
    if (rc == 0)
        rc = mdb_env_stat(env, &st); /* the main tree, and the page size */
    if (rc != 0)
        return rc;
    out->page_bytes = st.ms_psize;
    out->map_pages = info.me_mapsize / st.ms_psize;
    out->file_pages = info.me_last_pgno + 1;
    out->disk_free_bytes = SIZE_MAX;
    size_t pages =
        STORE_SPACE_META_PAGES + st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
    rc = mdb_stat(txn, 0 /* the freelist tree */, &st);
    for (size_t i = 0; rc == 0; i++) {
        pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
        if (i == n_dbis)
            break;
        rc = mdb_stat(txn, dbis[i], &st);
    }
    out->tree_pages = pages;
    return rc;
}

#endif
