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
    "  --data-dir DIR       where the registry is kept (DISC_DATA_DIR,\n"
    "                       default " CONFIG_DEFAULT_DATA_DIR ")\n"
    "  --wait-timeout DUR   how long a watch (wait=true) is held before it is\n"
    "                       answered with an empty 200, as etcd's client expects\n"
    "                       (DISC_WAIT_TIMEOUT, default " CONFIG_DEFAULT_WAIT_TIMEOUT ")\n"
    "  --version            print the version\n"
    "  --help               this text\n"
    "\n"
    "Durations are Go-style: 300ms, 30s, 5m, 168h.\n";

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
    } opts[] = {{"addr", "DISC_ADDR"},
                {"host", "DISC_HOST"},
                {"data-dir", "DISC_DATA_DIR"},
                {"wait-timeout", "DISC_WAIT_TIMEOUT"}};
    enum { N_OPTS = sizeof opts / sizeof opts[0] };
    const char *val[N_OPTS] = {
        env_or("DISC_ADDR", CONFIG_DEFAULT_ADDR), env_or("DISC_HOST", NULL),
        env_or("DISC_DATA_DIR", CONFIG_DEFAULT_DATA_DIR),
        env_or("DISC_WAIT_TIMEOUT", CONFIG_DEFAULT_WAIT_TIMEOUT)};
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
        snprintf(err, 256, "bad --wait-timeout \"%s\": want a positive duration like 60s",
                 val[3]);
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
