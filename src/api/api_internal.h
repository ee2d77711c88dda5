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

/* A request remembered for the access log (api/access_log.c). */
typedef struct access_rec access_rec_t;

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
    /* The request whose handler runs now and when it started (monotonic
     * ns), for the latency histograms: an answer to it is timed; answers
     * to others sent meanwhile (watches a write wakes) are not.
     * is_handling is false between handler calls. */
    bool is_handling;
    http_req_t handling;
    uint64_t handling_started_ns;
    /* (token, client address) pairs seen, TOKEN_LOG_SEEN_SLOTS hashes
     * (api/token_log.h); NULL: not kept. */
    uint64_t *token_seen;
    bool listens_on_all;  /* api_config_t.listens_on_all */
    access_rec_t *access; /* by request slot; only with an access log */
    size_t n_access;
    /* v3 watch streams with messages waiting until durable (api/v3.c). */
    struct v3_stream *v3_pending;
    /* v3 watches whose waiter is parked in the registry (api/v3.c): the
     * registry's waiter count less these is the v2 long-polls. */
    size_t v3_parked;
    /* The event v3 watches were last sent, encoded once for all of them
     * (api/v3.c): its index, the revision its header shows, and the bytes
     * of the header and of the Event without and with prev_kv (empty: not
     * encoded yet). */
    uint64_t v3_ev_index, v3_ev_rev;
    buf_t v3_ev_header, v3_ev_bytes[2];
};

#endif
