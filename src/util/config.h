/*
 * config.h - `disco serve` settings from flags and DISC_* environment
 * variables. A flag wins over its environment variable, which wins over
 * the default. Flags take "--name value" or "--name=value".
 */
#ifndef DISCO_UTIL_CONFIG_H
#define DISCO_UTIL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#define CONFIG_DEFAULT_ADDR ":8087"
#define CONFIG_DEFAULT_DATA_DIR "disco-data"
#define CONFIG_DEFAULT_WAIT_TIMEOUT "60s"
#define CONFIG_DEFAULT_MINAGE "168h"
#define CONFIG_DEFAULT_GCFREQ "5m"
#define CONFIG_DEFAULT_MAP_SIZE "8GiB"
/* Limits on what clients may send and hold (docs/decisions.md). */
#define CONFIG_DEFAULT_MAX_HEADER_BYTES "16KiB"
#define CONFIG_DEFAULT_MAX_BODY_BYTES "64KiB"
#define CONFIG_DEFAULT_MAX_KEY_BYTES "1KiB"
#define CONFIG_DEFAULT_MAX_VALUE_BYTES "8KiB"
#define CONFIG_DEFAULT_MAX_CONNS "32768"
#define CONFIG_DEFAULT_MAX_KEYS_PER_TOKEN "2048"
/* Keep in step with REGISTRY_DEFAULT_MAX_EVENTS (docs/decisions.md). */
#define CONFIG_DEFAULT_MAX_EVENTS_PER_TOKEN "5000"
#define CONFIG_DEFAULT_NEW_RATE "10"
#define CONFIG_DEFAULT_NEW_BURST "20"
#define CONFIG_DEFAULT_HEADER_TIMEOUT "10s"
#define CONFIG_DEFAULT_BODY_TIMEOUT "15s"
#define CONFIG_DEFAULT_IDLE_TIMEOUT "120s"
#define CONFIG_DEFAULT_ETCD_PREFIX "/disco/"
/* Bounds checked at startup. */
#define CONFIG_MIN_HEADER_BYTES (1024)
#define CONFIG_MAX_HEADER_BYTES (64 * 1024) /* libhttp-parser stops at 80 KiB */
#define CONFIG_MIN_BODY_BYTES (1024)
#define CONFIG_MAX_BODY_BYTES (64 * 1024 * 1024)
/* Longest --minage and --gcfreq: 10 years and 1 year. Anything longer is a
 * typo; the bounds also keep their nanoseconds inside int64_t. */
#define CONFIG_MAX_MINAGE_MS (87600ULL * 3600 * 1000)
#define CONFIG_MAX_GCFREQ_MS (8760ULL * 3600 * 1000)

typedef struct serve_config {
    const char *addr;              /* --addr, DISC_ADDR */
    const char *host;              /* --host, DISC_HOST; NULL: derived (see docs) */
    const char *data_dir;          /* --data-dir, DISC_DATA_DIR */
    uint64_t wait_timeout_ms;      /* --wait-timeout, DISC_WAIT_TIMEOUT */
    uint64_t minage_ms;            /* --minage, DISC_MINAGE */
    uint64_t gcfreq_ms;            /* --gcfreq, DISC_GCFREQ */
    uint64_t map_size_bytes;       /* --map-size, DISC_MAP_SIZE */
    uint64_t max_header_bytes;     /* --max-header-bytes, DISC_MAX_HEADER_BYTES */
    uint64_t max_body_bytes;       /* --max-body-bytes, DISC_MAX_BODY_BYTES */
    uint64_t max_key_bytes;        /* --max-key-bytes, DISC_MAX_KEY_BYTES */
    uint64_t max_value_bytes;      /* --max-value-bytes, DISC_MAX_VALUE_BYTES */
    uint64_t max_conns;            /* --max-conns, DISC_MAX_CONNS */
    uint64_t max_keys_per_token;   /* --max-keys-per-token, DISC_MAX_KEYS_PER_TOKEN */
    uint64_t max_events_per_token; /* --max-events-per-token, DISC_MAX_EVENTS_PER_TOKEN */
    uint64_t new_rate_per_s;       /* --new-rate, DISC_NEW_RATE; 0: unlimited */
    uint64_t new_burst;            /* --new-burst, DISC_NEW_BURST */
    uint64_t header_timeout_ms;    /* --header-timeout, DISC_HEADER_TIMEOUT */
    uint64_t body_timeout_ms;      /* --body-timeout, DISC_BODY_TIMEOUT */
    uint64_t idle_timeout_ms;      /* --idle-timeout, DISC_IDLE_TIMEOUT */
    const char *log_format;        /* --log-format, DISC_LOG_FORMAT: "text" or "json" */
    const char *access_log;        /* --access-log, DISC_ACCESS_LOG: a file, "-" (stdout) or NULL */
    bool max_conns_set;            /* --max-conns or DISC_MAX_CONNS was given */
    const char *tls_cert;          /* --tls-cert, DISC_TLS_CERT; NULL: no TLS */
    const char *tls_key;           /* --tls-key, DISC_TLS_KEY */
    const char *tls_client_ca;     /* --tls-client-ca, DISC_TLS_CLIENT_CA; NULL: none */
    const char *plain_addr;        /* --plain-addr, DISC_PLAIN_ADDR; NULL: none */
    /* The etcd backend (docs/operating.md, "Several instances on etcd"):
     * with endpoints, the registry is a mirror of an etcd cluster's prefix
     * and --data-dir is not used. */
    const char *etcd_endpoints; /* --etcd-endpoints, DISC_ETCD_ENDPOINTS: URLs, comma-separated */
    const char *etcd_prefix;    /* --etcd-prefix, DISC_ETCD_PREFIX */
    const char *etcd_cacert;    /* --etcd-cacert, DISC_ETCD_CACERT */
    const char *etcd_cert;      /* --etcd-cert, DISC_ETCD_CERT */
    const char *etcd_key;       /* --etcd-key, DISC_ETCD_KEY */
    const char *etcd_user;      /* --etcd-user, DISC_ETCD_USER */
    const char *etcd_password;  /* --etcd-password, DISC_ETCD_PASSWORD */
    bool help;
    bool version;
} serve_config_t;

/*
 * Fills `cfg` from argv (after the subcommand) and the environment.
 * Returns 0, or -1 with a one-line reason in `err` (256 bytes).
 * Strings point into argv or the environment.
 */
int config_parse_serve(int argc, char **argv, serve_config_t *cfg, char *err);

/* Parses "512MiB", "8GiB", "1048576" (K/M/G and KiB/MiB/GiB are powers of
 * two). Returns 0, or -1 when malformed. */
int config_parse_size(const char *s, uint64_t *out_bytes);

/* The --help text of `disco serve`. */
extern const char config_serve_usage[];

#endif
