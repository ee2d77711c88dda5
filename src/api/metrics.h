/*
 * metrics.h - request counters and their Prometheus text rendering.
 *
 * The three counters of discovery.etcd.io keep their names and labels
 * ({code,method}, method in lower case) so existing dashboards keep working;
 * disco adds its own under the disco_ prefix: latency histograms of the
 * answers per endpoint and of the store's syncs (util/histogram.h).
 *
 * Loop thread only, except what the gauges point to (see there).
 */
#ifndef DISCO_API_METRICS_H
#define DISCO_API_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "util/histogram.h"

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

/*
 * Records how long one answer on `ep` took, from its handler's start to the
 * moment it was handed to the server (a held answer's wait for the store
 * included). Long polls that parked are not recorded: their time is the
 * client's wait for a change, not disco's work.
 */
void metrics_observe(metrics_t *m, enum metrics_endpoint ep, uint64_t ns);

/* Counts one member registration, one token brought to its size. */
void metrics_count_registration(metrics_t *m);
void metrics_count_completed_token(metrics_t *m);

/* Counts tokens removed by age. */
void metrics_count_removed_tokens(metrics_t *m, uint64_t n);

/* Point-in-time values rendered next to the counters. */
typedef struct metrics_gauges {
    size_t tokens;
    size_t parked_waits; /* every parked watch, v2 and v3 */
    size_t parked_v3;    /* of which v3 watch-stream watches */
    size_t connections;
    uint64_t index;
    /* the store's own counters (store_stats_t) */
    uint64_t store_log_frames, store_checkpoints, store_direct_commits;
    /* The store's sync durations (backend_stats_t); NULL: not rendered.
     * Written by the store's writer thread while they are read. */
    const histogram_t *store_log_sync, *store_checkpoint_sync, *store_direct_sync;
    /* The etcd backend's mirror (backend_stats_t's etcd_*); rendered only
     * when is_etcd. etcd_endpoint is borrowed for the render. */
    bool is_etcd, etcd_live;
    uint64_t etcd_lag_revisions, etcd_lag_ms;
    const char *etcd_endpoint;
    uint64_t etcd_txns_committed, etcd_txns_lost_guard, etcd_txns_failed, etcd_txns_unknown;
    uint64_t etcd_watch_restarts;
} metrics_gauges_t;

void metrics_render(const metrics_t *m, const metrics_gauges_t *g, buf_t *out);

#endif
