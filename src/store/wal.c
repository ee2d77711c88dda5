/*
 * wal.c - the write-ahead log file; see wal.h.
 *
 * A frame on disk (format 2), little-endian:
 *   u32 magic   "DWL2"
 *   u32 length  of the payload
 *   u64 gen     the log's generation when the frame was written
 *   u32 crc     CRC-32C of length, gen and the payload, continued from the
 *               chain value: the previous frame's crc, or for the first
 *               frame of a generation CRC-32C of its salt (8 bytes, LE)
 *   u32 zero
 *   payload
 *   zeros up to the next multiple of WAL_ALIGN
 *
 * Format 1 (disco before the chain) had the magic "DWAL" and each crc
 * started from 0; it is only read (wal_replay_format1).
 */
#include "store/wal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/crc32c.h"
#include "util/le.h"

#define MAGIC 0x324c5744u         /* "DWL2" read as a little-endian u32 */
#define MAGIC_FORMAT1 0x4c415744u /* "DWAL" */
#define FILL_CHUNK (1 << 20)

struct wal {
    int fd;        /* buffered: replay reads, and writes when not direct */
    int direct_fd; /* O_DIRECT | O_DSYNC, or -1 */
    size_t size;   /* of the file, a multiple of WAL_ALIGN */
    size_t end;    /* where the next frame goes */
    uint64_t gen;
    uint32_t chain;       /* seed of the next frame's crc: the last one written */
    unsigned char *block; /* aligned staging buffer for one frame */
    size_t block_cap;
};

static size_t align_up(size_t n)
{
    return (n + WAL_ALIGN - 1) / WAL_ALIGN * WAL_ALIGN;
}

/* The checksum covers the length and generation fields and the payload,
 * continued from `seed`. */
static uint32_t frame_crc(uint32_t seed, const unsigned char *head, const void *payload, size_t len)
{
    return crc32c(crc32c(seed, head + 4, 12), payload, len);
}

/* The seed of a generation's first frame. */
static uint32_t salt_seed(uint64_t salt)
{
    unsigned char b[8];
    le_store(b, salt, 8);
    return crc32c(0, b, sizeof b);
}

/* Writes zeros over the whole file and syncs it. */
static int fill_new(int fd, size_t bytes)
{
    char *zeros = calloc(1, FILL_CHUNK);
    if (!zeros)
        return -ENOMEM;
    int rc = 0;
    for (size_t off = 0; rc == 0 && off < bytes;) {
        size_t n = bytes - off < FILL_CHUNK ? bytes - off : FILL_CHUNK;
        ssize_t w = pwrite(fd, zeros, n, (off_t)off);
        if (w < 0)
            rc = -errno;
        else
            off += (size_t)w;
    }
    free(zeros);
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    return rc;
}

/* Syncs the directory holding `path`, so that a name just given survives
 * a power loss: frames acknowledged in the file are no use under a name
 * the next start does not look for. */
static int sync_parent_dir(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    int rc = fsync(dfd) != 0 ? -errno : 0;
    close(dfd);
    return rc;
}

wal_t *wal_open(const char *path, size_t bytes, unsigned flags, char *err)
{
    bytes = bytes / WAL_ALIGN * WAL_ALIGN;
    if (bytes < 2 * WAL_ALIGN) {
        snprintf(err, 256, "write-ahead log size %zu is too small", bytes);
        return NULL;
    }
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        /* Fill under a temporary name, so a crash never leaves a short log. */
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.new", path);
        fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int rc = fd < 0 ? -errno : fill_new(fd, bytes);
        if (rc == 0 && rename(tmp, path) != 0)
            rc = -errno;
        if (rc == 0)
            rc = sync_parent_dir(path);
        if (rc != 0) {
            snprintf(err, 256, "cannot create the write-ahead log %.150s: %s", path, strerror(-rc));
            if (fd >= 0)
                close(fd);
            unlink(tmp);
            return NULL;
        }
    }
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        snprintf(err, 256, "cannot open the write-ahead log %.150s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if ((size_t)sb.st_size < 2 * WAL_ALIGN) {
        snprintf(err, 256, "the write-ahead log %.150s is damaged (%lld bytes)", path,
                 (long long)sb.st_size);
        close(fd);
        return NULL;
    }
    wal_t *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, 256, "out of memory");
        close(fd);
        return NULL;
    }
    w->size = (size_t)sb.st_size / WAL_ALIGN * WAL_ALIGN;
    w->fd = fd;
    w->direct_fd = flags & WAL_NO_DIRECT ? -1 : open(path, O_RDWR | O_CLOEXEC | O_DIRECT | O_DSYNC);
    return w;
}

/* Replays frames with `magic` and generation `gen`; with `chained`, each
 * frame's crc continues from the one before it, the first from `seed`;
 * otherwise every crc starts from `seed`. */
static int replay_frames(wal_t *w, uint32_t magic, uint64_t gen, bool chained, uint32_t seed,
                         int (*fn)(void *ctx, const unsigned char *payload, size_t len), void *ctx)
{
    int fd = w->fd;
    unsigned char *payload = NULL;
    size_t cap = 0;
    int rc = 0;
    for (size_t off = 0; off + WAL_FRAME_OVERHEAD <= w->size;) {
        unsigned char head[WAL_FRAME_OVERHEAD];
        ssize_t n = pread(fd, head, sizeof head, (off_t)off);
        if (n < 0) {
            rc = -errno;
            break;
        }
        if ((size_t)n < sizeof head || le_load(head, 4) != magic || le_load(head + 8, 8) != gen)
            break;
        size_t len = (size_t)le_load(head + 4, 4);
        if (len > w->size - off - WAL_FRAME_OVERHEAD)
            break;
        if (len > cap) {
            unsigned char *p = realloc(payload, len);
            if (!p) {
                rc = -ENOMEM;
                break;
            }
            payload = p;
            cap = len;
        }
        n = len ? pread(fd, payload, len, (off_t)(off + WAL_FRAME_OVERHEAD)) : 0;
        if (n < 0) {
            rc = -errno;
            break;
        }
        uint32_t crc = (size_t)n == len ? frame_crc(seed, head, payload, len) : 0;
        if ((size_t)n != len || crc != le_load(head + 16, 4))
            break;
        if (chained)
            seed = crc;
        rc = fn(ctx, payload, len);
        if (rc != 0)
            break;
        off += align_up(WAL_FRAME_OVERHEAD + len);
    }
    free(payload);
    return rc;
}

int wal_replay(wal_t *w, uint64_t gen, uint64_t salt,
               int (*fn)(void *ctx, const unsigned char *payload, size_t len), void *ctx)
{
    return replay_frames(w, MAGIC, gen, true, salt_seed(salt), fn, ctx);
}

int wal_replay_format1(wal_t *w, uint64_t gen,
                       int (*fn)(void *ctx, const unsigned char *payload, size_t len), void *ctx)
{
    return replay_frames(w, MAGIC_FORMAT1, gen, false, 0, fn, ctx);
}

void wal_restart(wal_t *w, uint64_t gen, uint64_t salt)
{
    w->gen = gen;
    w->chain = salt_seed(salt);
    w->end = 0;
}

size_t wal_room(const wal_t *w)
{
    size_t left = w->size - w->end;
    return left >= WAL_FRAME_OVERHEAD ? left - WAL_FRAME_OVERHEAD : 0;
}

size_t wal_capacity(const wal_t *w)
{
    return w->size - WAL_FRAME_OVERHEAD;
}

int wal_append(wal_t *w, const void *payload, size_t len)
{
    if (len > UINT32_MAX || w->size - w->end < WAL_FRAME_OVERHEAD + len)
        return -ENOSPC;
    /* The frame goes out as whole aligned blocks from one aligned buffer:
     * header, payload, zeros to the block's end. */
    size_t want = align_up(WAL_FRAME_OVERHEAD + len);
    if (want > w->block_cap) {
        void *p;
        if (posix_memalign(&p, WAL_ALIGN, want) != 0)
            return -ENOMEM;
        free(w->block);
        w->block = p;
        w->block_cap = want;
    }
    unsigned char *head = w->block;
    le_store(head, MAGIC, 4);
    le_store(head + 4, len, 4);
    le_store(head + 8, w->gen, 8);
    uint32_t crc = frame_crc(w->chain, head, payload, len);
    le_store(head + 16, crc, 4);
    le_store(head + 20, 0, 4);
    memcpy(head + WAL_FRAME_OVERHEAD, payload, len);
    memset(head + WAL_FRAME_OVERHEAD + len, 0, want - WAL_FRAME_OVERHEAD - len);
    for (size_t done = 0; done < want;) {
        /* Short writes are rare on a regular file; finish if one happens
         * (the rest stays block-aligned as long as the kernel keeps it). */
        int fd = w->direct_fd >= 0 ? w->direct_fd : w->fd;
        ssize_t n = pwrite(fd, head + done, want - done, (off_t)(w->end + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)n;
    }
    if (w->direct_fd < 0 && fdatasync(w->fd) != 0)
        return -errno;
    /* Only a frame known durable extends the chain: after a failure the
     * next frame replaces this one, chained to the frame before it. */
    w->chain = crc;
    w->end += want;
    return 0;
}

void wal_close(wal_t *w)
{
    if (!w)
        return;
    close(w->fd);
    if (w->direct_fd >= 0)
        close(w->direct_fd);
    free(w->block);
    free(w);
}
