/*
 * config.c - `disco serve` settings from flags and DISC_* variables.
 */
#include "util/config.h"

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
    "  --version            print the version\n"
    "  --help               this text\n"
    "\n"
    "Durations are Go-style: 300ms, 30s, 5m, 168h.\n";

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

int config_parse_serve(int argc, char **argv, serve_config_t *cfg, char *err)
{
    static const struct {
        const char *flag;
        const char *env;
    } opts[] = {{"addr", "DISC_ADDR"},         {"host", "DISC_HOST"},
                {"data-dir", "DISC_DATA_DIR"}, {"wait-timeout", "DISC_WAIT_TIMEOUT"},
                {"minage", "DISC_MINAGE"},     {"gcfreq", "DISC_GCFREQ"},
                {"map-size", "DISC_MAP_SIZE"}};
    enum { N_OPTS = sizeof opts / sizeof opts[0] };
    const char *defaults[N_OPTS] = {CONFIG_DEFAULT_ADDR,     NULL,
                                    CONFIG_DEFAULT_DATA_DIR, CONFIG_DEFAULT_WAIT_TIMEOUT,
                                    CONFIG_DEFAULT_MINAGE,   CONFIG_DEFAULT_GCFREQ,
                                    CONFIG_DEFAULT_MAP_SIZE};
    const char *val[N_OPTS];
    for (int j = 0; j < N_OPTS; j++)
        val[j] = env_or(opts[j].env, defaults[j]);
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
        for (int j = 0; j < N_OPTS; j++)
            if (strlen(opts[j].flag) == nlen && strncmp(opts[j].flag, name, nlen) == 0)
                k = j;
        if (k < 0) {
            snprintf(err, 256, "unknown flag \"%s\" (see disco serve --help)", a);
            return -1;
        }
        if (eq) {
            val[k] = eq + 1;
        } else if (i + 1 < argc) {
            val[k] = argv[++i];
        } else {
            snprintf(err, 256, "flag --%s needs a value", opts[k].flag);
            return -1;
        }
    }
    cfg->addr = val[0];
    cfg->host = val[1] && *val[1] ? val[1] : NULL;
    cfg->data_dir = val[2];
    if (time_parse_duration_ms(val[3], &cfg->wait_timeout_ms) != 0 || cfg->wait_timeout_ms == 0) {
        snprintf(err, 256, "bad --wait-timeout \"%s\": want a positive duration like 60s", val[3]);
        return -1;
    }
    if (time_parse_duration_ms(val[4], &cfg->minage_ms) != 0) {
        snprintf(err, 256, "bad --minage \"%s\": want a duration like 168h", val[4]);
        return -1;
    }
    if (time_parse_duration_ms(val[5], &cfg->gcfreq_ms) != 0) {
        snprintf(err, 256, "bad --gcfreq \"%s\": want a duration like 5m, or 0", val[5]);
        return -1;
    }
    if (config_parse_size(val[6], &cfg->map_size_bytes) != 0 ||
        cfg->map_size_bytes < ((uint64_t)1 << 20)) {
        snprintf(err, 256, "bad --map-size \"%s\": want a size of at least 1MiB, like 8GiB",
                 val[6]);
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
