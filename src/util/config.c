/*
 * config.c - `disco serve` settings from flags and DISC_* variables.
 */
#include "util/config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/timeutil.h"

const char config_serve_usage[] =
    "usage: disco serve [flags]\n"
    "\n"
    "Runs the etcd cluster-discovery service.\n"
    "\n"
    "  --addr ADDR          listen address: host:port, :port or [v6]:port\n"
    "                       (DISC_ADDR, default " CONFIG_DEFAULT_ADDR ")\n"
    "  --host URL           URL prefix that /new prints before a token, e.g.\n"
    "                       https://disco.example (DISC_HOST; default: http://HOST:PORT\n"
    "                       from --addr, or from the request's Host header when\n"
    "                       --addr has no host)\n"
    "  --data-dir DIR       where the registry is kept, durably (DISC_DATA_DIR,\n"
    "                       default " CONFIG_DEFAULT_DATA_DIR "); \"\" keeps it in memory only\n"
    "  --minage DUR         a token is removed no sooner than this after its\n"
    "                       creation (DISC_MINAGE, default " CONFIG_DEFAULT_MINAGE ")\n"
    "  --gcfreq DUR         how often old tokens are looked for; 0 never\n"
    "                       (DISC_GCFREQ, default " CONFIG_DEFAULT_GCFREQ ")\n"
    "  --map-size SIZE      upper bound of the store file, e.g. 512MiB\n"
    "                       (DISC_MAP_SIZE, default " CONFIG_DEFAULT_MAP_SIZE ")\n"
    "  --wait-timeout DUR   how long a watch (wait=true) is held before it is\n"
    "                       answered with an empty 200, as etcd's client expects\n"
    "                       (DISC_WAIT_TIMEOUT, default " CONFIG_DEFAULT_WAIT_TIMEOUT ")\n"
    "\n"
    "Limits on what clients may send and hold (past one, a clear answer):\n"
    "  --max-header-bytes SIZE  request line + headers, 1KiB-64KiB; 431 beyond\n"
    "                       (DISC_MAX_HEADER_BYTES, default " CONFIG_DEFAULT_MAX_HEADER_BYTES ")\n"
    "  --max-body-bytes SIZE    a request body; 413 beyond\n"
    "                       (DISC_MAX_BODY_BYTES, default " CONFIG_DEFAULT_MAX_BODY_BYTES ")\n"
    "  --max-key-bytes SIZE     a key below its token; 400 (errorCode 209) beyond\n"
    "                       (DISC_MAX_KEY_BYTES, default " CONFIG_DEFAULT_MAX_KEY_BYTES ")\n"
    "  --max-value-bytes SIZE   a value; 400 (errorCode 209) beyond\n"
    "                       (DISC_MAX_VALUE_BYTES, default " CONFIG_DEFAULT_MAX_VALUE_BYTES ")\n"
    "  --max-keys-per-token N   keys one token may hold; 403 (errorCode 103) beyond\n"
    "                       (DISC_MAX_KEYS_PER_TOKEN, default " CONFIG_DEFAULT_MAX_KEYS_PER_TOKEN
    ")\n"
    "  --max-events-per-token N  changes one token's history may hold (its whole\n"
    "                       life: watches replay from any index); 403 (errorCode 103)\n"
    "                       beyond; expiries are never refused\n"
    "                       (DISC_MAX_EVENTS_PER_TOKEN, "
    "default " CONFIG_DEFAULT_MAX_EVENTS_PER_TOKEN ")\n"
    "  --max-conns N        open connections, parked watches included; a new\n"
    "                       connection past it gets 503 and is closed\n"
    "                       (DISC_MAX_CONNS, default " CONFIG_DEFAULT_MAX_CONNS ")\n"
    "  --new-rate N         /new per client address (IPv6: per /64), tokens a\n"
    "                       second; 429 with Retry-After beyond; 0 no limit\n"
    "                       (DISC_NEW_RATE, default " CONFIG_DEFAULT_NEW_RATE ")\n"
    "  --new-burst N        /new a client address may make at once\n"
    "                       (DISC_NEW_BURST, default " CONFIG_DEFAULT_NEW_BURST ")\n"
    "  --header-timeout DUR a request's headers must arrive within this of its\n"
    "                       first byte; 408 and close beyond\n"
    "                       (DISC_HEADER_TIMEOUT, default " CONFIG_DEFAULT_HEADER_TIMEOUT ")\n"
    "  --body-timeout DUR   a request's body must arrive within this of its\n"
    "                       headers; 408 and close beyond\n"
    "                       (DISC_BODY_TIMEOUT, default " CONFIG_DEFAULT_BODY_TIMEOUT ")\n"
    "  --idle-timeout DUR   an idle keep-alive connection is closed after this;\n"
    "                       keep it above 90s, Go's client idle timeout\n"
    "                       (DISC_IDLE_TIMEOUT, default " CONFIG_DEFAULT_IDLE_TIMEOUT ")\n"
    "\n"
    "Logs:\n"
    "  --log-format FMT     text (default) or json: one JSON object per line\n"
    "                       (DISC_LOG_FORMAT)\n"
    "  --access-log FILE    one line per answer in Common Log Format, appended to\n"
    "                       FILE, or \"-\" for stdout (DISC_ACCESS_LOG; default none)\n"
    "\n"
    "TLS (HTTPS on --addr; SIGHUP reloads the files from the same paths):\n"
    "  --tls-cert FILE      PEM certificate (and chain); with it --addr serves TLS\n"
    "                       only, TLS 1.2 and 1.3 (DISC_TLS_CERT)\n"
    "  --tls-key FILE       PEM private key of --tls-cert (DISC_TLS_KEY)\n"
    "  --tls-client-ca FILE PEM CA bundle: a client without a certificate from it\n"
    "                       is refused at the handshake (DISC_TLS_CLIENT_CA)\n"
    "  --plain-addr ADDR    serve plain HTTP on ADDR as well (DISC_PLAIN_ADDR)\n"
    "\n"
    "Several instances on one etcd v3 cluster (instead of --data-dir):\n"
    "  --etcd-endpoints URLS  etcd client URLs, comma-separated, tried in order\n"
    "                       (DISC_ETCD_ENDPOINTS; default none: the embedded store)\n"
    "  --etcd-prefix PREFIX the keys disco owns in etcd\n"
    "                       (DISC_ETCD_PREFIX, default " CONFIG_DEFAULT_ETCD_PREFIX ")\n"
    "  --etcd-cacert FILE   PEM CA bundle for https:// endpoints (DISC_ETCD_CACERT)\n"
    "  --etcd-cert FILE     PEM client certificate for etcd (DISC_ETCD_CERT)\n"
    "  --etcd-key FILE      PEM key of --etcd-cert (DISC_ETCD_KEY)\n"
    "  --etcd-user NAME     etcd user (DISC_ETCD_USER)\n"
    "  --etcd-password PW   its password (DISC_ETCD_PASSWORD)\n"
    "\n"
    "  --version            print the version\n"
    "  --help               this text\n"
    "\n"
    "Durations are Go-style: 300ms, 30s, 5m, 168h; each has a range, and a value\n"
    "out of it stops disco at startup with exit code 2.\n";

int config_parse_size(const char *s, uint64_t *out_bytes)
{
    static const struct {
        const char *suffix;
        int shift;
    } units[] = {{"", 0}, {"K", 10}, {"KiB", 10}, {"M", 20}, {"MiB", 20}, {"G", 30}, {"GiB", 30}};
    char *end;
    if (!s || *s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            if (v > (UINT64_MAX >> units[i].shift))
                return -1;
            *out_bytes = (uint64_t)v << units[i].shift;
            return 0;
        }
    }
    return -1;
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* A whole number of things ("32768"), no sign, no suffix. */
static int parse_count(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

enum value_kind { V_STRING, V_DURATION, V_SIZE, V_COUNT };

/* One setting: its flag, variable, default, kind, bounds (inclusive, for
 * numbers) and where it goes. The help text says the same. */
typedef struct option {
    const char *flag;
    const char *env;
    const char *def;
    enum value_kind kind;
    uint64_t min, max;
    size_t offset;    /* in serve_config_t */
    const char *want; /* for the error message */
} option_t;

#define NUM(field) offsetof(serve_config_t, field)
#define HOUR_MS (3600ULL * 1000)
#define DAY_MS (24 * HOUR_MS)

static const option_t options[] = {
    {"addr", "DISC_ADDR", CONFIG_DEFAULT_ADDR, V_STRING, 0, 0, NUM(addr), NULL},
    {"host", "DISC_HOST", NULL, V_STRING, 0, 0, NUM(host), NULL},
    {"data-dir", "DISC_DATA_DIR", CONFIG_DEFAULT_DATA_DIR, V_STRING, 0, 0, NUM(data_dir), NULL},
    {"wait-timeout", "DISC_WAIT_TIMEOUT", CONFIG_DEFAULT_WAIT_TIMEOUT, V_DURATION, 1, DAY_MS,
     NUM(wait_timeout_ms), "a duration from 1ms to 24h, like 60s"},
    {"minage", "DISC_MINAGE", CONFIG_DEFAULT_MINAGE, V_DURATION, 0, CONFIG_MAX_MINAGE_MS,
     NUM(minage_ms), "a duration from 0 to 87600h (10 years), like 168h"},
    {"gcfreq", "DISC_GCFREQ", CONFIG_DEFAULT_GCFREQ, V_DURATION, 0, CONFIG_MAX_GCFREQ_MS,
     NUM(gcfreq_ms), "a duration up to 8760h (a year) like 5m, or 0 (never)"},
    {"map-size", "DISC_MAP_SIZE", CONFIG_DEFAULT_MAP_SIZE, V_SIZE, 1u << 20, UINT64_MAX,
     NUM(map_size_bytes), "a size of at least 1MiB, like 8GiB"},
    {"max-header-bytes", "DISC_MAX_HEADER_BYTES", CONFIG_DEFAULT_MAX_HEADER_BYTES, V_SIZE,
     CONFIG_MIN_HEADER_BYTES, CONFIG_MAX_HEADER_BYTES, NUM(max_header_bytes),
     "a size from 1KiB to 64KiB"},
    {"max-body-bytes", "DISC_MAX_BODY_BYTES", CONFIG_DEFAULT_MAX_BODY_BYTES, V_SIZE,
     CONFIG_MIN_BODY_BYTES, CONFIG_MAX_BODY_BYTES, NUM(max_body_bytes),
     "a size from 1KiB to 64MiB"},
    {"max-key-bytes", "DISC_MAX_KEY_BYTES", CONFIG_DEFAULT_MAX_KEY_BYTES, V_SIZE, 1, 1u << 20,
     NUM(max_key_bytes), "a size from 1 to 1MiB"},
    {"max-value-bytes", "DISC_MAX_VALUE_BYTES", CONFIG_DEFAULT_MAX_VALUE_BYTES, V_SIZE, 1,
     CONFIG_MAX_BODY_BYTES, NUM(max_value_bytes), "a size from 1 to 64MiB"},
    {"max-conns", "DISC_MAX_CONNS", CONFIG_DEFAULT_MAX_CONNS, V_COUNT, 1, 1u << 24, NUM(max_conns),
     "a whole number from 1 to 16777216"},
    {"max-keys-per-token", "DISC_MAX_KEYS_PER_TOKEN", CONFIG_DEFAULT_MAX_KEYS_PER_TOKEN, V_COUNT, 1,
     1u << 24, NUM(max_keys_per_token), "a whole number from 1 to 16777216"},
    {"max-events-per-token", "DISC_MAX_EVENTS_PER_TOKEN", CONFIG_DEFAULT_MAX_EVENTS_PER_TOKEN,
     V_COUNT, 1, 1u << 24, NUM(max_events_per_token), "a whole number from 1 to 16777216"},
    {"new-rate", "DISC_NEW_RATE", CONFIG_DEFAULT_NEW_RATE, V_COUNT, 0, 1000000, NUM(new_rate_per_s),
     "a whole number of tokens per second (0: no limit)"},
    {"new-burst", "DISC_NEW_BURST", CONFIG_DEFAULT_NEW_BURST, V_COUNT, 1, 1000000, NUM(new_burst),
     "a whole number from 1"},
    {"header-timeout", "DISC_HEADER_TIMEOUT", CONFIG_DEFAULT_HEADER_TIMEOUT, V_DURATION, 1, HOUR_MS,
     NUM(header_timeout_ms), "a duration from 1ms to 1h, like 10s"},
    {"body-timeout", "DISC_BODY_TIMEOUT", CONFIG_DEFAULT_BODY_TIMEOUT, V_DURATION, 1, HOUR_MS,
     NUM(body_timeout_ms), "a duration from 1ms to 1h, like 15s"},
    {"idle-timeout", "DISC_IDLE_TIMEOUT", CONFIG_DEFAULT_IDLE_TIMEOUT, V_DURATION, 1, DAY_MS,
     NUM(idle_timeout_ms), "a duration from 1ms to 24h, like 120s"},
    {"log-format", "DISC_LOG_FORMAT", "text", V_STRING, 0, 0, NUM(log_format), NULL},
    {"access-log", "DISC_ACCESS_LOG", NULL, V_STRING, 0, 0, NUM(access_log), NULL},
    {"tls-cert", "DISC_TLS_CERT", NULL, V_STRING, 0, 0, NUM(tls_cert), NULL},
    {"tls-key", "DISC_TLS_KEY", NULL, V_STRING, 0, 0, NUM(tls_key), NULL},
    {"tls-client-ca", "DISC_TLS_CLIENT_CA", NULL, V_STRING, 0, 0, NUM(tls_client_ca), NULL},
    {"plain-addr", "DISC_PLAIN_ADDR", NULL, V_STRING, 0, 0, NUM(plain_addr), NULL},
    {"etcd-endpoints", "DISC_ETCD_ENDPOINTS", NULL, V_STRING, 0, 0, NUM(etcd_endpoints), NULL},
    {"etcd-prefix", "DISC_ETCD_PREFIX", CONFIG_DEFAULT_ETCD_PREFIX, V_STRING, 0, 0,
     NUM(etcd_prefix), NULL},
    {"etcd-cacert", "DISC_ETCD_CACERT", NULL, V_STRING, 0, 0, NUM(etcd_cacert), NULL},
    {"etcd-cert", "DISC_ETCD_CERT", NULL, V_STRING, 0, 0, NUM(etcd_cert), NULL},
    {"etcd-key", "DISC_ETCD_KEY", NULL, V_STRING, 0, 0, NUM(etcd_key), NULL},
    {"etcd-user", "DISC_ETCD_USER", NULL, V_STRING, 0, 0, NUM(etcd_user), NULL},
    {"etcd-password", "DISC_ETCD_PASSWORD", NULL, V_STRING, 0, 0, NUM(etcd_password), NULL},
};
enum { N_OPTIONS = sizeof options / sizeof options[0] };

/* Durations become int64_t nanoseconds (timers, the sweep's cutoff): every
 * bound above must keep that multiplication from overflowing. */
_Static_assert(CONFIG_MAX_MINAGE_MS <= INT64_MAX / 1000000, "minage fits int64 ns");
_Static_assert(CONFIG_MAX_GCFREQ_MS <= INT64_MAX / 1000000, "gcfreq fits int64 ns");
_Static_assert(DAY_MS <= INT64_MAX / 1000000, "timeouts fit int64 ns");

static int set_option(const option_t *o, const char *v, serve_config_t *cfg, char *err)
{
    char *field = (char *)cfg + o->offset;
    if (o->kind == V_STRING) {
        memcpy(field, &v, sizeof v);
        return 0;
    }
    uint64_t n = 0;
    int rc = o->kind == V_DURATION ? time_parse_duration_ms(v, &n)
             : o->kind == V_SIZE   ? config_parse_size(v, &n)
                                   : parse_count(v, &n);
    if (rc != 0 || n < o->min || n > o->max) {
        snprintf(err, 256, "bad --%s \"%s\": want %s", o->flag, v, o->want);
        return -1;
    }
    memcpy(field, &n, sizeof n);
    return 0;
}

int config_parse_serve(int argc, char **argv, serve_config_t *cfg, char *err)
{
    const char *val[N_OPTIONS];
    bool given[N_OPTIONS];
    for (int j = 0; j < N_OPTIONS; j++) {
        val[j] = env_or(options[j].env, options[j].def);
        given[j] = val[j] != options[j].def;
    }
    /* An empty DISC_DATA_DIR means "memory only", like --data-dir "". */
    if (getenv("DISC_DATA_DIR") && !*getenv("DISC_DATA_DIR"))
        val[2] = "";
    memset(cfg, 0, sizeof *cfg);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cfg->help = true;
            continue;
        }
        if (strcmp(a, "--version") == 0) {
            cfg->version = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, 256, "unexpected argument \"%s\" (see disco serve --help)", a);
            return -1;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        int k = -1;
        for (int j = 0; j < N_OPTIONS; j++)
            if (strlen(options[j].flag) == nlen && strncmp(options[j].flag, name, nlen) == 0)
                k = j;
        if (k < 0) {
            snprintf(err, 256, "unknown flag \"%s\" (see disco serve --help)", a);
            return -1;
        }
        given[k] = true;
        if (eq) {
            val[k] = eq + 1;
        } else if (i + 1 < argc) {
            val[k] = argv[++i];
        } else {
            snprintf(err, 256, "flag --%s needs a value", options[k].flag);
            return -1;
        }
    }
    for (int j = 0; j < N_OPTIONS; j++)
        if (set_option(&options[j], val[j], cfg, err) != 0)
            return -1;
    for (int j = 0; j < N_OPTIONS; j++)
        if (strcmp(options[j].flag, "max-conns") == 0)
            cfg->max_conns_set = given[j];
    if (strcmp(cfg->log_format, "text") != 0 && strcmp(cfg->log_format, "json") != 0) {
        snprintf(err, 256, "bad --log-format \"%s\": want text or json", cfg->log_format);
        return -1;
    }
    if (cfg->access_log && !*cfg->access_log)
        cfg->access_log = NULL;
    if (cfg->host && !*cfg->host)
        cfg->host = NULL;
    const char **tls_strings[] = {&cfg->tls_cert, &cfg->tls_key, &cfg->tls_client_ca,
                                  &cfg->plain_addr};
    for (size_t j = 0; j < sizeof tls_strings / sizeof tls_strings[0]; j++)
        if (*tls_strings[j] && !**tls_strings[j])
            *tls_strings[j] = NULL; /* "" is unset, as for --host */
    if (!cfg->tls_cert != !cfg->tls_key) {
        snprintf(err, 256, "--tls-cert and --tls-key go together: give both, or neither");
        return -1;
    }
    if (!cfg->tls_cert && (cfg->tls_client_ca || cfg->plain_addr)) {
        snprintf(err, 256, "--%s needs --tls-cert and --tls-key",
                 cfg->tls_client_ca ? "tls-client-ca" : "plain-addr");
        return -1;
    }
    const char **etcd_strings[] = {&cfg->etcd_endpoints, &cfg->etcd_cacert, &cfg->etcd_cert,
                                   &cfg->etcd_key,       &cfg->etcd_user,   &cfg->etcd_password};
    for (size_t j = 0; j < sizeof etcd_strings / sizeof etcd_strings[0]; j++)
        if (*etcd_strings[j] && !**etcd_strings[j])
            *etcd_strings[j] = NULL;
    if (!cfg->etcd_endpoints && (cfg->etcd_cacert || cfg->etcd_cert || cfg->etcd_key ||
                                 cfg->etcd_user || cfg->etcd_password)) {
        snprintf(err, 256, "the --etcd-* flags need --etcd-endpoints");
        return -1;
    }
    if (!cfg->etcd_cert != !cfg->etcd_key || !cfg->etcd_user != !cfg->etcd_password) {
        snprintf(err, 256, "--etcd-%s and --etcd-%s go together: give both, or neither",
                 !cfg->etcd_cert != !cfg->etcd_key ? "cert" : "user",
                 !cfg->etcd_cert != !cfg->etcd_key ? "key" : "password");
        return -1;
    }
    if (cfg->etcd_endpoints && (cfg->etcd_prefix[0] != '/' || strchr(cfg->etcd_prefix, ' ') ||
                                cfg->etcd_prefix[strlen(cfg->etcd_prefix) - 1] != '/')) {
        snprintf(err, 256, "bad --etcd-prefix \"%s\": want a path that starts and ends with /",
                 cfg->etcd_prefix);
        return -1;
    }
    if (cfg->host && strncmp(cfg->host, "http://", 7) != 0 &&
        strncmp(cfg->host, "https://", 8) != 0) {
        snprintf(err, 256, "bad --host \"%s\": want a URL prefix like https://disco.example",
                 cfg->host);
        return -1;
    }
    return 0;
}
