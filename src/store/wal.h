/*
 * wal.h - a write-ahead log in one preallocated file: each append is one
 * frame made durable by a single synchronous write.
 *
 * Why: an LMDB commit syncs twice (the data pages, then the meta page) and
 * rewrites B-tree pages; appending a checksummed frame to a file whose
 * blocks already exist syncs once and only the bytes written. The store
 * acknowledges writes once their frame is durable and moves them into LMDB
 * later, many frames per LMDB commit (see store_lmdb.c).
 *
 * Where the file system allows it, frames are written with O_DIRECT |
 * O_DSYNC: one request that is durable when write() returns, which costs
 * the kernel about half the CPU time and latency of a buffered write
 * followed by fdatasync (measured on the machine of bench/RESULTS.md).
 * Where O_DIRECT is refused (tmpfs before Linux 6.6, some network file
 * systems) the log falls back to exactly that.
 *
 * Frames are written from the start of the file, one after the other, each
 * starting at a multiple of WAL_ALIGN (what O_DIRECT needs) and tagged with
 * a generation number. Restarting the log under a new generation makes
 * every older frame dead without touching the disk: a reader stops at the
 * first frame that is torn (bad checksum), of another generation, out of
 * chain, or past the end. The caller keeps the current generation and its
 * salt somewhere durable (LMDB's meta) before writing under them.
 *
 * Chain and salt (as SQLite's WAL): each generation has a random 64-bit
 * salt, and each frame's checksum is seeded with the previous frame's
 * checksum, the first frame's with the salt. So a frame is only replayed
 * when every frame before it in the file is the one that was written just
 * before it under this very generation: stale bytes left from an older
 * generation (say, a client's value logged as payload that happens to hold
 * a well-formed frame on a block boundary) or from an earlier use of the
 * same generation number never pass, whatever they claim.
 *
 * The file format is WAL_FORMAT; wal_replay_format1() reads the log of
 * format 1 (unchained, unsalted frames) once, to upgrade a data dir.
 *
 * Not thread-safe: one thread (the store's writer) owns a log.
 */
#ifndef DISCO_STORE_WAL_H
#define DISCO_STORE_WAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct wal wal_t;

/* The on-disk format this code writes (see wal.c). */
#define WAL_FORMAT 2

/* Bytes a frame adds to its payload, and where frames start. */
#define WAL_FRAME_OVERHEAD 24
#define WAL_ALIGN 4096

/*
 * Opens the log at `path`, creating it `bytes` long (rounded down to a
 * multiple of WAL_ALIGN) if it does not exist.
 * A new file is filled with zeros and synced, so that later writes never
 * allocate blocks and fdatasync flushes data only. An existing file keeps
 * its size. NULL with a one-line reason in `err` (256 bytes).
 */
wal_t *wal_open(const char *path, size_t bytes, unsigned flags, char *err);

/* wal_open() flags. */
#define WAL_NO_DIRECT 1u /* buffered writes and fdatasync even where O_DIRECT works */

/*
 * Calls `fn` with each frame's payload of generation `gen` under `salt`, in
 * order from the start, until a frame is torn, of another generation or
 * salt, out of chain, or the file ends. Stops early and returns fn's result
 * when it is not 0; else 0, or -errno when the file cannot be read. The
 * payload is valid only during the call.
 */
int wal_replay(wal_t *w, uint64_t gen, uint64_t salt,
               int (*fn)(void *ctx, const unsigned char *payload, size_t len), void *ctx);

/*
 * The same for a log written in format 1 (frames checksummed one by one,
 * neither chained nor salted): only to move such a log into the store once
 * at startup, before the log is restarted in the current format.
 */
int wal_replay_format1(wal_t *w, uint64_t gen,
                       int (*fn)(void *ctx, const unsigned char *payload, size_t len), void *ctx);

/* Writes the next frames from the start of the file under generation
 * `gen` and `salt` (never used together before: the caller records both
 * durably first, and draws the salt at random); everything already in the
 * file is dead. No I/O. */
void wal_restart(wal_t *w, uint64_t gen, uint64_t salt);

/* The largest payload wal_append() takes now, and in an empty log. The
 * log fills by whole WAL_ALIGN blocks, so small frames use more room. */
size_t wal_room(const wal_t *w);
size_t wal_capacity(const wal_t *w);

/*
 * Appends one frame holding `len` bytes (at most wal_room()) and waits
 * until it is durable. 0, or -errno: then the frame may be partly on disk
 * and must be treated as lost; the log itself stays usable (the next frame
 * is written at the same place, chained to the last frame that succeeded).
 * Allocates only when a frame is larger than any before it.
 */
int wal_append(wal_t *w, const void *payload, size_t len);

void wal_close(wal_t *w);

#endif
