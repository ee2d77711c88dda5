/*
 * metrics.h - request counters and their Prometheus text rendering.
 *
 * The three counters of discovery.etcd.io keep their names and labels
 * ({code,method}, method in lower case) so existing dashboards keep working;
 * disco adds its own under the disco_ prefix.
 */
#ifndef DISCO_API_METRICS_H
#define DISCO_API_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

enum metrics_endpoint {
    METRICS_NEW,     /* endpoint_new_requests_total */
    METRICS_HEALTH,  /* endpoint_health_requests_total */
    METRICS_TOKEN,   /* endpoint_token_requests_total: /<token>... */
    METRICS_V2_KEYS, /* disco_v2_keys_requests_total: /v2/keys/... */
    METRICS_V3,      /* disco_v3_requests_total: etcd v3 gRPC calls (by :status, "POST") */
    METRICS_ENDPOINT_COUNT
};

typedef struct metrics metrics_t;

metrics_t *metrics_new(void);
void metrics_free(metrics_t *m);

/* Counts one answered request. `method` is the HTTP method ("GET"). */
void metrics_count(metrics_t *m, enum metrics_endpoint ep, int status, const char *method);

/* Counts tokens removed by age. */
void metrics_count_removed_tokens(metrics_t *m, uint64_t n);

/* Point-in-time values rendered next to the counters. */
typedef struct metrics_gauges {
    size_t tokens;
    size_t parked_waits;
    size_t connections;
    uint64_t index;
    /* the store's own counters (store_stats_t) */
    uint64_t store_log_frames, store_checkpoints, store_direct_commits;
} metrics_gauges_t;

void metrics_render(const metrics_t *m, const metrics_gauges_t *g, buf_t *out);

#endif
