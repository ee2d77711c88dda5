/*
 * metrics.c - request counters in the Prometheus text format 0.0.4.
 *
 * A request counter is keyed by (endpoint, status, method). There are few
 * distinct keys in practice, so they sit in a small array searched
 * linearly; an unknown method is folded into "other" to bound the array.
 */
#include "api/metrics.h"

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
}
