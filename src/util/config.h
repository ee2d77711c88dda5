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

typedef struct serve_config {
    const char *addr;         /* --addr, DISC_ADDR */
    const char *host;         /* --host, DISC_HOST; NULL: derived (see docs) */
    const char *data_dir;     /* --data-dir, DISC_DATA_DIR */
    uint64_t wait_timeout_ms; /* --wait-timeout, DISC_WAIT_TIMEOUT */
    uint64_t minage_ms;       /* --minage, DISC_MINAGE */
    uint64_t gcfreq_ms;       /* --gcfreq, DISC_GCFREQ */
    uint64_t map_size_bytes;  /* --map-size, DISC_MAP_SIZE */
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
