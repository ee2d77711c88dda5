/*
 * api_internal.h - what the files of api/ share; not part of the interface.
 */
#ifndef DISCO_API_API_INTERNAL_H
#define DISCO_API_API_INTERNAL_H

#include <stdbool.h>

#include "api/api.h"
#include "api/listing_cache.h"
#include "api/metrics.h"
#include "api/reply.h"
#include "util/buf.h"
#include "util/ratelimit.h"

/* An answer waiting until the store has made the state it shows durable. */
typedef struct held_reply held_reply_t;

struct api {
    registry_t *reg;
    backend_t *backend; /* NULL: nothing is kept */
    metrics_t *metrics;
    http_server_t *srv;
    char *host_prefix; /* NULL: from the Host header */
    int64_t min_age_ns, gc_every_ns;
    int64_t next_gc_ns;
    held_reply_t *held_head, *held_tail; /* FIFO, non-decreasing index */
    size_t max_key_bytes, max_value_bytes;
    ratelimit_t *new_limit;    /* NULL: /new is not rate limited */
    listing_cache_t *listings; /* rendered GET answers (api/listing_cache.h) */
    /* The last watch answer (one reference): the N watchers one event wakes
     * share it. It shows event `watch_answer_index` with X-Etcd-Index
     * `watch_answer_etcd_index`. */
    http_prepared_t *watch_answer;
    uint64_t watch_answer_index, watch_answer_etcd_index;
    /* v3 watch streams with messages waiting until durable (api/v3.c). */
    struct v3_stream *v3_pending;
};

#endif
