/*
 * test_wal.c - store/wal.h, the write-ahead log file, and util/crc32c.h.
 *
 * What the store's crash safety rests on: a replay returns exactly the
 * frames appended under one generation and salt, in order, and stops at a
 * torn frame, at a frame of another generation or salt, at stale bytes
 * out of chain, and at the end of the file. A log of format 1 is still
 * read, by its own reader only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <errno.h>

#include "store/wal.h"
#include "util/crc32c.h"

#define LOG_BYTES (4 * WAL_ALIGN)
#define SALT 0x5a17u /* tests that are not about salts use one */

typedef struct seen {
    size_t n;
    char payload[16][64];
    size_t len[16];
} seen_t;

static int collect(void *ctx, const unsigned char *p, size_t len)
{
    seen_t *s = ctx;
    assert_true(s->n < 16);
    memcpy(s->payload[s->n], p, len < 64 ? len : 64); /* enough to compare */
    s->len[s->n] = len;
    s->n++;
    return 0;
}

static int stop_at_second(void *ctx, const unsigned char *p, size_t len)
{
    seen_t *s = ctx;
    collect(ctx, p, len);
    return s->n == 2 ? 42 : 0;
}

/* A fresh directory per test, removed by teardown. */
typedef struct fixture {
    char dir[64];
    char path[96];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/disco-test-wal-XXXXXX");
    if (!f || !mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/log", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static wal_t *open_log(fixture_t *f)
{
    char err[256] = "";
    wal_t *w = wal_open(f->path, LOG_BYTES, 0, err);
    if (!w)
        fail_msg("wal_open: %s", err);
    return w;
}

static void append_str(wal_t *w, const char *s)
{
    assert_int_equal(wal_append(w, s, strlen(s)), 0);
}

static void test_crc32c_known_values(void **state)
{
    (void)state;
    /* The standard check value of CRC-32C, and continuation in pieces. */
    assert_int_equal(crc32c(0, "123456789", 9), 0xe3069283u);
    assert_int_equal(crc32c(crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
    assert_int_equal(crc32c(0, "", 0), 0);
}

static void test_new_log_is_preallocated_and_empty(void **state)
{
    fixture_t *f = *state;
    wal_t *w = open_log(f);
    struct stat sb;
    assert_int_equal(stat(f->path, &sb), 0);
    assert_int_equal(sb.st_size, LOG_BYTES);
    assert_true((size_t)sb.st_blocks * 512 >= LOG_BYTES); /* blocks exist, not a hole */
    seen_t s = {0};
    assert_int_equal(wal_replay(w, 0, SALT, collect, &s), 0);
    assert_int_equal(s.n, 0); /* zeros are no frame, even for generation 0 */
    wal_close(w);
}

static void test_frames_come_back_in_order_after_reopen(void **state)
{
    fixture_t *f = *state;
    wal_t *w = open_log(f);
    wal_restart(w, 7, SALT);
    append_str(w, "one");
    append_str(w, "");
    append_str(w, "three");
    wal_close(w);

    w = open_log(f);
    seen_t s = {0};
    assert_int_equal(wal_replay(w, 7, SALT, collect, &s), 0);
    assert_int_equal(s.n, 3);
    assert_memory_equal(s.payload[0], "one", 3);
    assert_int_equal(s.len[1], 0);
    assert_memory_equal(s.payload[2], "three", 5);
    seen_t other = {0};
    assert_int_equal(wal_replay(w, 6, SALT, collect, &other), 0);
    assert_int_equal(other.n, 0);
    wal_close(w);
}

static void test_torn_frame_ends_the_replay(void **state)
{
    fixture_t *f = *state;
    wal_t *w = open_log(f);
    wal_restart(w, 1, SALT);
    append_str(w, "kept");
    append_str(w, "torn");
    append_str(w, "after");
    wal_close(w);
    /* Damage one payload byte of the second frame. */
    FILE *fp = fopen(f->path, "r+b");
    assert_non_null(fp);
    fseek(fp, (long)(WAL_ALIGN + WAL_FRAME_OVERHEAD + 1), SEEK_SET); /* frames start on blocks */
    fputc('X', fp);
    fclose(fp);

    w = open_log(f);
    seen_t s = {0};
    assert_int_equal(wal_replay(w, 1, SALT, collect, &s), 0);
    assert_int_equal(s.n, 1);
    assert_memory_equal(s.payload[0], "kept", 4);
    wal_close(w);
}

static void test_restart_makes_old_frames_dead(void **state)
{
    fixture_t *f = *state;
    wal_t *w = open_log(f);
    wal_restart(w, 1, SALT);
    append_str(w, "old-a");
    append_str(w, "old-b");
    append_str(w, "old-c");
    wal_restart(w, 2, SALT);
    append_str(w, "new-a"); /* same length as old-a: old-b follows it */
    seen_t s = {0};
    assert_int_equal(wal_replay(w, 2, SALT, collect, &s), 0);
    assert_int_equal(s.n, 1);
    assert_memory_equal(s.payload[0], "new-a", 5);
    /* Generation 1's first frame is overwritten: nothing of it is found. */
    seen_t old = {0};
    assert_int_equal(wal_replay(w, 1, SALT, collect, &old), 0);
    assert_int_equal(old.n, 0);
    wal_close(w);
}

static void test_room_and_full_log(void **state)
{
    fixture_t *f = *state;
    wal_t *w = open_log(f);
    wal_restart(w, 3, SALT);
    assert_int_equal(wal_capacity(w), LOG_BYTES - WAL_FRAME_OVERHEAD);
    assert_int_equal(wal_room(w), wal_capacity(w));
    static char big[2 * WAL_ALIGN];
    memset(big, 'b', sizeof big);
    /* A small frame still takes a whole block. */
    assert_int_equal(wal_append(w, big, 900), 0);
    assert_int_equal(wal_room(w), LOG_BYTES - WAL_ALIGN - WAL_FRAME_OVERHEAD);
    /* One just over a block takes two. */
    assert_int_equal(wal_append(w, big, WAL_ALIGN), 0);
    assert_int_equal(wal_room(w), WAL_ALIGN - WAL_FRAME_OVERHEAD);
    assert_int_equal(wal_append(w, big, WAL_ALIGN), -ENOSPC);
    /* A payload that fills the log exactly still fits; then nothing does. */
    assert_int_equal(wal_append(w, big, wal_room(w)), 0);
    assert_int_equal(wal_room(w), 0);
    assert_int_equal(wal_append(w, big, 0), -ENOSPC);
    wal_close(w);

    w = open_log(f);
    seen_t s = {0};
    assert_int_equal(wal_replay(w, 3, SALT, stop_at_second, &s), 42); /* fn's result stops it */
    assert_int_equal(s.n, 2);
    wal_close(w);
}

static void test_existing_file_keeps_its_size(void **state)
{
    fixture_t *f = *state;
    wal_close(open_log(f));
    char err[256] = "";
    wal_t *w = wal_open(f->path, 2 * LOG_BYTES, 0, err);
    assert_non_null(w);
    assert_int_equal(wal_capacity(w), LOG_BYTES - WAL_FRAME_OVERHEAD);
    wal_close(w);
    /* A file too short to hold a frame is refused, not reset. */
    assert_int_equal(truncate(f->path, 10), 0);
    assert_null(wal_open(f->path, LOG_BYTES, 0, err));
    assert_non_null(strstr(err, "damaged"));
}

/* Where O_DIRECT is refused (tmpfs before Linux 6.6, some network file
 * systems) the log writes through the page cache and fdatasyncs. */
static void test_log_without_direct_io(void **state)
{
    fixture_t *f = *state;
    char err[256] = "";
    wal_t *w = wal_open(f->path, LOG_BYTES, WAL_NO_DIRECT, err);
    assert_non_null(w);
    wal_restart(w, 9, SALT);
    append_str(w, "buffered");
    append_str(w, "too");
    wal_close(w);
    w = open_log(f); /* and the frames read the same either way */
    seen_t s = {0};
    assert_int_equal(wal_replay(w, 9, SALT, collect, &s), 0);
    assert_int_equal(s.n, 2);
    assert_memory_equal(s.payload[0], "buffered", 8);
    assert_memory_equal(s.payload[1], "too", 3);
    wal_close(w);
}

/*
 * The attack chaining stops: a client's value is logged as payload, and the
 * bytes of that payload that land on a block boundary are a well-formed
 * frame of the *next* generation (guessable: generations count up). After
 * the checkpoint restarts the log, a crash behind one short frame leaves
 * the forged frame right where the second frame of the new generation
 * would be. It must not be replayed.
 */
static void test_forged_frame_in_an_old_payload_is_not_replayed(void **state)
{
    fixture_t *f = *state;
    /* The forged frame: what a log of generation 2 holds as its first frame. */
    char scratch[128];
    snprintf(scratch, sizeof scratch, "%s/scratch", f->dir);
    char err[256] = "";
    wal_t *s = wal_open(scratch, LOG_BYTES, 0, err);
    assert_non_null(s);
    wal_restart(s, 2, 0x1111);
    append_str(s, "forged");
    wal_close(s);
    static unsigned char forged[WAL_ALIGN];
    FILE *fp = fopen(scratch, "rb");
    assert_non_null(fp);
    assert_int_equal(fread(forged, 1, sizeof forged, fp), sizeof forged);
    fclose(fp);
    unlink(scratch);

    /* Generation 1 logs a payload whose second block is that frame. */
    static unsigned char payload[2 * WAL_ALIGN - WAL_FRAME_OVERHEAD];
    memset(payload, 'v', sizeof payload);
    memcpy(payload + WAL_ALIGN - WAL_FRAME_OVERHEAD, forged,
           sizeof payload - (WAL_ALIGN - WAL_FRAME_OVERHEAD));
    wal_t *w = open_log(f);
    wal_restart(w, 1, 0x2222);
    assert_int_equal(wal_append(w, payload, sizeof payload), 0);
    /* Checkpoint: generation 2 (here even under the same salt as the
     * forger's, to show the chain alone stops it), one short frame, crash. */
    wal_restart(w, 2, 0x1111);
    append_str(w, "real");
    wal_close(w);

    w = open_log(f);
    seen_t seen = {0};
    assert_int_equal(wal_replay(w, 2, 0x1111, collect, &seen), 0);
    assert_int_equal(seen.n, 1);
    assert_memory_equal(seen.payload[0], "real", 4);
    wal_close(w);
}

/*
 * A generation number used twice (a data.mdb restored from a backup next
 * to a log written after it) must not revive the frames of its first use:
 * each use has its own salt.
 */
static void test_reused_generation_does_not_revive_old_frames(void **state)
{
    fixture_t *f = *state;
    wal_t *w = open_log(f);
    wal_restart(w, 5, 0xaaaa);
    append_str(w, "first-use-a");
    append_str(w, "first-use-b");
    wal_restart(w, 5, 0xbbbb); /* nothing written under it yet */
    wal_close(w);

    w = open_log(f);
    seen_t seen = {0};
    assert_int_equal(wal_replay(w, 5, 0xbbbb, collect, &seen), 0);
    assert_int_equal(seen.n, 0);
    wal_close(w);
}

/* A format-1 frame (before chain and salt), built by hand as that release
 * wrote it: "DWAL", length, gen, CRC-32C from 0 of length+gen+payload. */
static void put_format1_frame(FILE *fp, long off, uint64_t gen, const char *payload)
{
    unsigned char head[WAL_FRAME_OVERHEAD] = {0};
    size_t len = strlen(payload);
    memcpy(head, "DWAL", 4);
    for (int i = 0; i < 4; i++)
        head[4 + i] = (unsigned char)(len >> (8 * i));
    for (int i = 0; i < 8; i++)
        head[8 + i] = (unsigned char)(gen >> (8 * i));
    uint32_t crc = crc32c(crc32c(0, head + 4, 12), payload, len);
    for (int i = 0; i < 4; i++)
        head[16 + i] = (unsigned char)(crc >> (8 * i));
    assert_int_equal(fseek(fp, off, SEEK_SET), 0);
    assert_int_equal(fwrite(head, 1, sizeof head, fp), sizeof head);
    assert_int_equal(fwrite(payload, 1, len, fp), len);
}

static void test_format1_log_is_read_by_its_own_reader_only(void **state)
{
    fixture_t *f = *state;
    wal_close(open_log(f));
    FILE *fp = fopen(f->path, "r+b");
    assert_non_null(fp);
    put_format1_frame(fp, 0, 4, "old-one");
    put_format1_frame(fp, WAL_ALIGN, 4, "old-two");
    put_format1_frame(fp, 2 * WAL_ALIGN, 3, "older-gen");
    fclose(fp);

    wal_t *w = open_log(f);
    seen_t s = {0};
    assert_int_equal(wal_replay_format1(w, 4, collect, &s), 0);
    assert_int_equal(s.n, 2);
    assert_memory_equal(s.payload[0], "old-one", 7);
    assert_memory_equal(s.payload[1], "old-two", 7);
    seen_t none = {0};
    assert_int_equal(wal_replay(w, 4, SALT, collect, &none), 0);
    assert_int_equal(none.n, 0);
    /* Restarted in format 2: the old frames are gone for both readers. */
    wal_restart(w, 5, SALT);
    append_str(w, "new");
    assert_int_equal(wal_replay(w, 5, SALT, collect, &none), 0);
    assert_int_equal(none.n, 1);
    seen_t old = {0};
    assert_int_equal(wal_replay_format1(w, 4, collect, &old), 0);
    assert_int_equal(old.n, 0);
    wal_close(w);
}

/* The chain survives a reopen; another salt reads nothing; a real frame
 * moved out of its place in the chain ends the replay there. */
static void test_chain_continues_across_reopen_and_salts_differ(void **state)
{
    fixture_t *f = *state;
    wal_t *w = open_log(f);
    wal_restart(w, 8, 0x1234);
    append_str(w, "a");
    append_str(w, "b");
    append_str(w, "c");
    wal_close(w);
    w = open_log(f);
    seen_t s = {0};
    assert_int_equal(wal_replay(w, 8, 0x1234, collect, &s), 0);
    assert_int_equal(s.n, 3);
    seen_t other = {0};
    assert_int_equal(wal_replay(w, 8, 0x1235, collect, &other), 0);
    assert_int_equal(other.n, 0); /* same generation, another salt: nothing */
    /* The second frame moved to the third's place breaks the chain there. */
    wal_close(w);
    static unsigned char block[WAL_ALIGN];
    FILE *fp = fopen(f->path, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, WAL_ALIGN, SEEK_SET), 0);
    assert_int_equal(fread(block, 1, sizeof block, fp), sizeof block);
    assert_int_equal(fseek(fp, 2 * WAL_ALIGN, SEEK_SET), 0);
    assert_int_equal(fwrite(block, 1, sizeof block, fp), sizeof block);
    fclose(fp);
    w = open_log(f);
    seen_t moved = {0};
    assert_int_equal(wal_replay(w, 8, 0x1234, collect, &moved), 0);
    assert_int_equal(moved.n, 2);
    assert_memory_equal(moved.payload[1], "b", 1);
    wal_close(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_known_values),
        cmocka_unit_test_setup_teardown(test_new_log_is_preallocated_and_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frames_come_back_in_order_after_reopen, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_torn_frame_ends_the_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_makes_old_frames_dead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_room_and_full_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_existing_file_keeps_its_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_without_direct_io, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_frame_in_an_old_payload_is_not_replayed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reused_generation_does_not_revive_old_frames, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_format1_log_is_read_by_its_own_reader_only, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_chain_continues_across_reopen_and_salts_differ, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
