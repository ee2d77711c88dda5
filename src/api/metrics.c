/*
 * metrics.c - request counters in the Prometheus text format 0.0.4.
 *
 * A request counter is keyed by (endpoint, status, method). There are few
 * distinct keys in practice, so they sit in a small array searched
 * linearly; an unknown method is folded into "other" to bound the array.
 */
#include "api/metrics.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_SERIES 256

typedef struct series {
    enum metrics_endpoint ep;
    int status;
    char method[8];
    uint64_t count;
} series_t;

struct metrics {
    series_t series[MAX_SERIES];
    size_t n;
    uint64_t tokens_removed;
    uint64_t registrations, tokens_completed;
    histogram_t latency[METRICS_ENDPOINT_COUNT]; /* the loop thread writes them */
};

/* The `endpoint` label of disco_request_duration_seconds. */
static const char *const latency_labels[METRICS_ENDPOINT_COUNT] = {
    [METRICS_NEW] = "new",         [METRICS_HEALTH] = "health", [METRICS_TOKEN] = "token",
    [METRICS_V2_KEYS] = "v2_keys", [METRICS_V3] = "v3",
};

static const struct {
    const char *name;
    const char *help;
} endpoints[METRICS_ENDPOINT_COUNT] = {
    [METRICS_NEW] =
        {"endpoint_new_requests_total",
         "How many /new requests processed, partitioned by status code and HTTP method."},
    [METRICS_HEALTH] = {"endpoint_health_requests_total",
                        "How many /health requests processed, partitioned by status code and HTTP "
                        "method."},
    [METRICS_TOKEN] = {"endpoint_token_requests_total",
                       "How many /token requests processed, partitioned by status code and HTTP "
                       "method."},
    [METRICS_V2_KEYS] = {"disco_v2_keys_requests_total",
                         "How many /v2/keys requests processed, partitioned by status code and "
                         "HTTP method."},
    [METRICS_V3] = {"disco_v3_requests_total",
                    "How many etcd v3 gRPC calls processed, partitioned by HTTP status code and "
                    "method."},
};

metrics_t *metrics_new(void)
{
    return calloc(1, sizeof(metrics_t));
}

void metrics_free(metrics_t *m)
{
    free(m);
}

static void method_label(const char *method, char out[8])
{
    static const char *const known[] = {"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcasecmp(method, known[i]) == 0) {
            size_t j = 0;
            for (; known[i][j]; j++)
                out[j] = (char)(known[i][j] + 32);
            out[j] = '\0';
            return;
        }
    }
    strcpy(out, "other");
}

void metrics_count(metrics_t *m, enum metrics_endpoint ep, int status, const char *method)
{
    char label[8];
    method_label(method, label);
    for (size_t i = 0; i < m->n; i++) {
        series_t *s = &m->series[i];
        if (s->ep == ep && s->status == status && strcmp(s->method, label) == 0) {
            s->count++;
            return;
        }
    }
    if (m->n == MAX_SERIES)
        return; /* bounded on purpose; statuses and methods are few */
    series_t *s = &m->series[m->n++];
    s->ep = ep;
    s->status = status;
    strcpy(s->method, label);
    s->count = 1;
}

void metrics_observe(metrics_t *m, enum metrics_endpoint ep, uint64_t ns)
{
    assert(ep < METRICS_ENDPOINT_COUNT);
    histogram_observe(&m->latency[ep], ns);
}

void metrics_count_registration(metrics_t *m)
{
    m->registrations++;
}

void metrics_count_completed_token(metrics_t *m)
{
    m->tokens_completed++;
}

void metrics_count_removed_tokens(metrics_t *m, uint64_t n)
{
    m->tokens_removed += n;
}

static void gauge(buf_t *out, const char *name, const char *help, uint64_t v)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s ", name, help, name, name);
    buf_put_u64(out, v);
    buf_putc(out, '\n');
}

static void counter(buf_t *out, const char *name, const char *help, uint64_t v)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s ", name, help, name, name);
    buf_put_u64(out, v);
    buf_putc(out, '\n');
}

static void histogram_head(buf_t *out, const char *name, const char *help)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
}

/* One histogram's series under `label` ("endpoint=\"new\""). The count is
 * the sum of the buckets read, so _count and the +Inf bucket agree even
 * while the writer thread goes on. */
static void histogram_series(buf_t *out, const char *name, const char *label, const histogram_t *h)
{
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= HISTOGRAM_BOUNDS; i++) {
        cumulative += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        if (i < HISTOGRAM_BOUNDS)
            buf_printf(out, "%s_bucket{%s,le=\"%g\"} ", name, label,
                       (double)histogram_bounds_ns[i] / 1e9);
        else
            buf_printf(out, "%s_bucket{%s,le=\"+Inf\"} ", name, label);
        buf_put_u64(out, cumulative);
        buf_putc(out, '\n');
    }
    uint64_t sum_ns = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
    buf_printf(out, "%s_sum{%s} %llu.%09llu\n%s_count{%s} ", name, label,
               (unsigned long long)(sum_ns / 1000000000ULL),
               (unsigned long long)(sum_ns % 1000000000ULL), name, label);
    buf_put_u64(out, cumulative);
    buf_putc(out, '\n');
}

/* The etcd backend's mirror: its lag, the member in use, its transactions
 * by outcome, its watch's restarts (docs/operating.md). */
static void render_etcd(const metrics_gauges_t *g, buf_t *out)
{
    gauge(out, "disco_etcd_mirror_live",
          "1 while the mirror of the etcd prefix is live (reads and watches served from it).",
          g->etcd_live ? 1 : 0);
    gauge(out, "disco_etcd_mirror_lag_revisions",
          "etcd revisions known to exist that the mirror has not shown to be applied.",
          g->etcd_lag_revisions);
    buf_printf(out,
               "# HELP disco_etcd_mirror_lag_seconds How long the mirror has been behind etcd "
               "(0 while it is current), from the last progress report or event header.\n"
               "# TYPE disco_etcd_mirror_lag_seconds gauge\n"
               "disco_etcd_mirror_lag_seconds %llu.%03llu\n",
               (unsigned long long)(g->etcd_lag_ms / 1000),
               (unsigned long long)(g->etcd_lag_ms % 1000));
    buf_puts(out, "# HELP disco_etcd_endpoint The etcd member this instance talks to (value 1).\n"
                  "# TYPE disco_etcd_endpoint gauge\n"
                  "disco_etcd_endpoint{endpoint=");
    /* A label value escapes backslash, quote and newline, nothing else. */
    buf_putc(out, '"');
    for (const char *p = g->etcd_endpoint ? g->etcd_endpoint : ""; *p; p++) {
        if (*p == '\\' || *p == '"')
            buf_putc(out, '\\');
        if (*p == '\n')
            buf_puts(out, "\\n");
        else
            buf_putc(out, *p);
    }
    buf_puts(out, "\"} 1\n");
    static const char txns[] = "disco_etcd_txns_total";
    buf_printf(out,
               "# HELP %s Transactions sent to etcd for writes, by outcome: committed, "
               "lost_guard (another write won; validated again), failed (certainly not "
               "applied), unknown (held for its marker).\n# TYPE %s counter\n",
               txns, txns);
    const struct {
        const char *outcome;
        uint64_t v;
    } by[] = {{"committed", g->etcd_txns_committed},
              {"lost_guard", g->etcd_txns_lost_guard},
              {"failed", g->etcd_txns_failed},
              {"unknown", g->etcd_txns_unknown}};
    for (size_t i = 0; i < sizeof by / sizeof by[0]; i++) {
        buf_printf(out, "%s{outcome=\"%s\"} ", txns, by[i].outcome);
        buf_put_u64(out, by[i].v);
        buf_putc(out, '\n');
    }
    counter(out, "disco_etcd_watch_restarts_total",
            "Times the mirror's etcd watch was created again (failover, etcd ended it, "
            "compaction).",
            g->etcd_watch_restarts);
}

void metrics_render(const metrics_t *m, const metrics_gauges_t *g, buf_t *out)
{
    for (int ep = 0; ep < METRICS_ENDPOINT_COUNT; ep++) {
        buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", endpoints[ep].name, endpoints[ep].help,
                   endpoints[ep].name);
        for (size_t i = 0; i < m->n; i++) {
            const series_t *s = &m->series[i];
            if ((int)s->ep != ep)
                continue;
            buf_printf(out, "%s{code=\"%d\",method=\"%s\"} ", endpoints[ep].name, s->status,
                       s->method);
            buf_put_u64(out, s->count);
            buf_putc(out, '\n');
        }
    }
    counter(out, "disco_tokens_removed_total",
            "Tokens removed because they reached the minimum age.", m->tokens_removed);
    counter(out, "disco_registrations_total",
            "Members registered: keys created directly below a token (not its _config).",
            m->registrations);
    counter(out, "disco_tokens_completed_total",
            "Registrations that brought a token's members to its size.", m->tokens_completed);
    counter(out, "disco_store_log_frames_total",
            "Batches of writes made durable as one write-ahead log frame.", g->store_log_frames);
    counter(out, "disco_store_checkpoints_total", "Moves of logged writes into the data file.",
            g->store_checkpoints);
    counter(out, "disco_store_direct_commits_total",
            "Batches committed straight to the data file (too large for the log, or it failed).",
            g->store_direct_commits);
    gauge(out, "disco_tokens", "Tokens in the registry.", g->tokens);
    gauge(out, "disco_parked_waits", "Long-poll watches waiting for an event.", g->parked_waits);
    gauge(out, "disco_connections", "Open client connections.", g->connections);
    gauge(out, "disco_index", "The registry's global etcd index.", g->index);
    buf_printf(out, "# HELP disco_parked_watches Long-poll watches waiting for an event, by "
                    "protocol.\n# TYPE disco_parked_watches gauge\n"
                    "disco_parked_watches{protocol=\"v2\"} ");
    assert(g->parked_v3 <= g->parked_waits);
    buf_put_u64(out, g->parked_waits - g->parked_v3);
    buf_puts(out, "\ndisco_parked_watches{protocol=\"v3\"} ");
    buf_put_u64(out, g->parked_v3);
    buf_putc(out, '\n');
    if (g->is_etcd)
        render_etcd(g, out);

    static const char lat[] = "disco_request_duration_seconds";
    histogram_head(out, lat,
                   "Time from a request's handler to its answer (a wait for the store "
                   "included), by endpoint; long polls that parked are left out.");
    for (int ep = 0; ep < METRICS_ENDPOINT_COUNT; ep++) {
        char label[48];
        assert(latency_labels[ep]); /* every endpoint has its label */
        snprintf(label, sizeof label, "endpoint=\"%s\"", latency_labels[ep]);
        histogram_series(out, lat, label, &m->latency[ep]);
    }
    if (g->store_log_sync || g->store_checkpoint_sync || g->store_direct_sync) {
        static const char sync[] = "disco_store_sync_duration_seconds";
        histogram_head(out, sync,
                       "Time the store's writer took to make a batch durable, by kind: a "
                       "write-ahead log frame, a checkpoint into the data file, a direct "
                       "commit.");
        if (g->store_log_sync)
            histogram_series(out, sync, "op=\"log\"", g->store_log_sync);
        if (g->store_checkpoint_sync)
            histogram_series(out, sync, "op=\"checkpoint\"", g->store_checkpoint_sync);
        if (g->store_direct_sync)
            histogram_series(out, sync, "op=\"direct\"", g->store_direct_sync);
    }
}
