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
 * a generation number. Restarting the log under a new
 * generation makes every older frame dead without touching the disk: a
 * reader stops at the first frame that is torn (bad checksum), of another
 * generation, or past the end. The caller keeps the current generation
 * somewhere durable (LMDB's meta) and never reuses one.
 *
 * Not thread-safe: one thread (the store's writer) owns a log.
 */
#ifndef DISCO_STORE_WAL_H
#define DISCO_STORE_WAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct wal wal_t;

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
 * Calls `fn` with each frame's payload of generation `gen`, in order from
 * the start, until a frame is torn, of another generation, or the file
 * ends. Stops early and returns fn's result when it is not 0; else 0, or
 * -errno when the file cannot be read.
 */
int wal_replay(wal_t *w, uint64_t gen,
               int (*fn)(void *ctx, const unsigned char *payload, size_t len), void *ctx);

/* Writes the next frames from the start of the file under generation
 * `gen`; everything already in the file is dead. No I/O. */
void wal_restart(wal_t *w, uint64_t gen);

/* The largest payload wal_append() takes now, and in an empty log. The
 * log fills by whole WAL_ALIGN blocks, so small frames use more room. */
size_t wal_room(const wal_t *w);
size_t wal_capacity(const wal_t *w);

/*
 * Appends one frame holding `len` bytes (at most wal_room()) and waits
 * until it is durable. 0, or -errno: then the frame may be partly on disk and must be
 * treated as lost; the log itself stays usable (the next frame is written
 * at the same place).
 */
int wal_append(wal_t *w, const void *payload, size_t len);

void wal_close(wal_t *w);

#endif
