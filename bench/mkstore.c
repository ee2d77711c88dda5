/*
 * mkstore.c - fills a disco data dir with N tokens of M members each, for
 * the "big store" benchmark (RSS and startup time of `disco serve` on it).
 *
 * It writes through the same registry and LMDB store code as the service,
 * so the records are exactly what a live disco would have written, only
 * without HTTP in between.
 *
 * usage: disco-mkstore DATA_DIR TOKENS MEMBERS
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "registry/registry.h"
#include "store/store.h"
#include "util/timeutil.h"

/* Events in flight before the filler waits for the writer to catch up. */
#define MAX_UNCOMMITTED 20000

static void wait_durable(store_t *st, registry_t *reg, uint64_t lag)
{
    while (registry_index(reg) - store_durable_index(st) > lag) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static int replay_into_registry(void *reg, reg_event_t *ev)
{
    return registry_replay(reg, ev);
}

static void raise_registry_index(void *reg, uint64_t index)
{
    registry_raise_index(reg, index);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s DATA_DIR TOKENS MEMBERS\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    long tokens = atol(argv[2]), members = atol(argv[3]);
    char err[256];
    mkdir(dir, 0700); /* the parent must exist; an existing dir is fine */
    store_lmdb_options_t opt = {.map_size_bytes = (size_t)32 << 30};
    store_t *st = store_lmdb_open(dir, &opt, err);
    if (!st) {
        fprintf(stderr, "mkstore: %s\n", err);
        return 1;
    }
    registry_t *reg = registry_new(st);
    store_replay_sink_t sink = {replay_into_registry, raise_registry_index, reg};
    if (!reg || store_load(st, &sink, err) != 0) {
        fprintf(stderr, "mkstore: %s\n", reg ? err : "out of memory");
        return 1;
    }
    reg_ttl_t no_ttl = {false, 0};
    for (long t = 0; t < tokens; t++) {
        char name[40], key[128], value[96];
        snprintf(name, sizeof name, "%032lx", (unsigned long)t * 2654435761UL + 1);
        reg_result_t r;
        int64_t now = time_wall_ns();
        registry_create_token(reg, name, (unsigned)members, now, &r);
        if (r.err) {
            fprintf(stderr, "mkstore: token %s: error %d %s\n", name, r.err, r.cause);
            return 1;
        }
        reg_result_clear(&r);
        for (long m = 0; m < members; m++) {
            snprintf(key, sizeof key, "%s/%s/%016lx", REGISTRY_PREFIX, name,
                     (unsigned long)(t * 31 + m) * 0x9E3779B97F4A7C15UL);
            snprintf(value, sizeof value, "m%ld=http://10.%ld.%ld.%ld:2380", m, (t >> 16) & 255,
                     (t >> 8) & 255, t & 255);
            registry_create(reg, key, false, value, false, no_ttl, now, &r);
            if (r.err) {
                fprintf(stderr, "mkstore: %s: error %d %s\n", key, r.err, r.cause);
                return 1;
            }
            reg_result_clear(&r);
        }
        wait_durable(st, reg, MAX_UNCOMMITTED);
    }
    wait_durable(st, reg, 0);
    printf("mkstore: %ld tokens x %ld members, index %llu\n", tokens, members,
           (unsigned long long)registry_index(reg));
    store_close(st);
    registry_free(reg);
    return 0;
}
