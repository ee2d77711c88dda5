/*
 * serve.c - `disco serve`: opens the store, replays it into the registry,
 * and runs the HTTP server until SIGTERM. Flags and environment are parsed
 * by util/config; the request handling lives in api/.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "api/api.h"
#include "backend/backend.h"
#include "backend/backend_etcd.h"
#include "cmd/cmd.h"
#include "loop/loop.h"
#include "registry/registry.h"
#include "server/http.h"
#include "server/transport_tls.h"
#include "store/store.h"
#include "util/config.h"
#include "util/log.h"
#include "util/sdnotify.h"

/* mkdir -p */
static int make_dirs(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Descriptors kept aside from connections: listening socket, epoll,
 * signalfd, the store's files and eventfd, logs, a spare for accept(). */
#define FD_RESERVE 64
/* Go's http.Transport closes idle connections after 90 s. */
#define GO_CLIENT_IDLE_TIMEOUT_MS (90 * 1000)

/*
 * Raises the open-files limit so that --max-conns connections fit; if the
 * hard limit is lower, lowers max_conns to what fits, with a warning.
 */
static void fit_connection_limit(uint64_t *max_conns, bool asked)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)*max_conns + FD_RESERVE;
    if (rl.rlim_cur < want) {
        rlim_t before = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            rl.rlim_cur = before;
    }
    if (rl.rlim_cur < want) {
        uint64_t fit =
            rl.rlim_cur > 2 * FD_RESERVE ? (uint64_t)rl.rlim_cur - FD_RESERVE : FD_RESERVE;
        /* The default is a ceiling, not a request: fitting it to the host's
         * limit is only worth a warning when the operator asked for more. */
        log_msg(asked ? LOG_WARN : LOG_DEBUG,
                "the open-files limit (%llu) is too low for --max-conns %llu; serving at most "
                "%llu connections (raise it with ulimit -n or LimitNOFILE=)",
                (unsigned long long)rl.rlim_cur, (unsigned long long)*max_conns,
                (unsigned long long)fit);
        *max_conns = fit;
    }
}

/* Whether --addr listens on every interface: ":port", "0.0.0.0:port",
 * "[::]:port". */
static bool addr_is_wildcard(const char *addr)
{
    return addr[0] == ':' || strncmp(addr, "0.0.0.0:", 8) == 0 || strncmp(addr, "[::]:", 5) == 0;
}

/* --host default when --addr names a host: http://HOST:PORT, or
 * https://HOST:PORT when --addr serves TLS. A wildcard address is no URL
 * anyone can reach: each request's Host header then gives the prefix. */
static char *derive_host(const char *addr, bool is_tls)
{
    if (addr_is_wildcard(addr))
        return NULL;
    size_t n = strlen(addr) + 9;
    char *h = malloc(n);
    if (h)
        snprintf(h, n, "%s://%s", is_tls ? "https" : "http", addr);
    return h;
}

/*
 * systemd's watchdog: WATCHDOG=1 every half of $WATCHDOG_USEC, sent from
 * the event loop itself, so a loop that stops turning stops the pings and
 * systemd restarts the service (WatchdogSec= in the unit).
 */
typedef struct watchdog {
    uint64_t every_ms;
    uint64_t next_ms; /* 0: ping on the first turn */
} watchdog_t;

static uint64_t watchdog_timer(void *ctx, uint64_t now_ms)
{
    watchdog_t *wd = ctx;
    if (now_ms >= wd->next_ms) {
        int rc = sdnotify_send("WATCHDOG=1");
        if (rc != 0)
            log_warn("systemd watchdog ping failed: %s", strerror(-rc));
        wd->next_ms = now_ms + wd->every_ms;
    }
    return wd->next_ms;
}

static void notify(const char *state)
{
    int rc = sdnotify_send(state);
    if (rc != 0)
        log_warn("cannot notify systemd ($NOTIFY_SOCKET): %s", strerror(-rc));
}

/* http_server_config_t.on_stop: SIGTERM began the graceful stop. */
static void notify_stopping(void *ctx)
{
    (void)ctx;
    notify("STOPPING=1\nSTATUS=stopping: draining connections");
}

/* SIGHUP: the TLS material again from the same paths; a failure keeps the
 * old one. Open connections keep theirs either way. */
static void reload_tls(void *ctx)
{
    char summary[256], err[256];
    if (tls_ctx_reload(ctx, summary, err) == 0)
        log_info("TLS reloaded: %s", summary);
    else
        log_error("TLS reload failed, still serving the previous certificate: %s", err);
}

/* The etcd backend of --etcd-endpoints (a comma-separated list). */
static backend_t *etcd_backend_from(const serve_config_t *cfg, char *err)
{
    char *list = strdup(cfg->etcd_endpoints);
    const char *endpoints[64];
    size_t n = 0;
    if (!list) {
        snprintf(err, 256, "out of memory at startup");
        return NULL;
    }
    for (char *save = NULL, *e = strtok_r(list, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
        if (n == sizeof endpoints / sizeof *endpoints) {
            snprintf(err, 256, "--etcd-endpoints: at most %zu endpoints", n);
            free(list);
            return NULL;
        }
        endpoints[n++] = e;
    }
    backend_etcd_config_t ecfg = {.endpoints = endpoints,
                                  .n_endpoints = n,
                                  .prefix = cfg->etcd_prefix,
                                  .cacert = cfg->etcd_cacert,
                                  .cert = cfg->etcd_cert,
                                  .key = cfg->etcd_key,
                                  .user = cfg->etcd_user,
                                  .password = cfg->etcd_password};
    backend_t *be = backend_etcd_new(&ecfg, err);
    free(list);
    return be;
}

int cmd_serve(int argc, char **argv)
{
    serve_config_t cfg;
    char err[256];
    int rc;
    if (config_parse_serve(argc, argv, &cfg, err) != 0) {
        fprintf(stderr, "disco serve: %s\n", err);
        return 2;
    }
    enum log_format lf = LOG_FORMAT_TEXT;
    log_parse_format(cfg.log_format, &lf); /* checked by config_parse_serve */
    log_set_format(lf);
    if (cfg.help) {
        fputs(config_serve_usage, stdout);
        return 0;
    }
    if (cfg.version) {
        printf("disco %s\n", DISCO_VERSION);
        return 0;
    }
    if (cfg.access_log && (rc = log_access_open(cfg.access_log)) != 0) {
        log_error("cannot open the access log %s: %s", cfg.access_log, strerror(-rc));
        return 1;
    }
    bool in_memory = cfg.data_dir[0] == '\0';
    store_t *store = NULL;
    backend_t *backend = NULL;
    if (cfg.etcd_endpoints) {
        /* A mirror of an etcd prefix: no local store (loaded below, once
         * the server's loop exists). */
        if (!(backend = etcd_backend_from(&cfg, err))) {
            log_error("%s", err);
            return 1;
        }
    } else {
        rc = in_memory ? 0 : make_dirs(cfg.data_dir);
        if (rc != 0) {
            log_error("cannot create data dir %s: %s", cfg.data_dir, strerror(-rc));
            return 1;
        }
        store_lmdb_options_t sopt = {.map_size_bytes = (size_t)cfg.map_size_bytes};
        store = in_memory ? store_memory_new() : store_lmdb_open(cfg.data_dir, &sopt, err);
        if (!store) {
            log_error("%s", in_memory ? "out of memory at startup" : err);
            return 1;
        }
        backend = backend_local_new(store);
    }
    registry_t *reg = backend ? registry_new_with_backend(backend) : NULL;
    if (reg) {
        registry_set_max_keys(reg, (size_t)cfg.max_keys_per_token);
        registry_set_max_events(reg, (size_t)cfg.max_events_per_token);
    }
    if (!reg || (store && backend_load(backend, reg, err) != 0)) {
        log_error("%s", reg ? err : "out of memory at startup");
        registry_free(reg);
        if (backend)
            backend_close(backend);
        if (store)
            store_close(store);
        return 1;
    }
    tls_ctx_t *tls = NULL;
    if (cfg.tls_cert) {
        tls_files_t files = {.cert_path = cfg.tls_cert,
                             .key_path = cfg.tls_key,
                             .client_ca_path = cfg.tls_client_ca};
        tls = tls_ctx_new(&files, err);
        if (!tls) {
            log_error("%s", err);
            registry_free(reg);
            backend_close(backend);
            if (store)
                store_close(store);
            return 1;
        }
    }
    char *derived = cfg.host ? NULL : derive_host(cfg.addr, tls != NULL);
    api_config_t acfg = {.host_prefix = cfg.host ? cfg.host : derived,
                         .min_age_ms = cfg.minage_ms,
                         .gc_every_ms = cfg.gcfreq_ms,
                         .max_key_bytes = (size_t)cfg.max_key_bytes,
                         .max_value_bytes = (size_t)cfg.max_value_bytes,
                         .new_rate_per_s = (uint32_t)cfg.new_rate_per_s,
                         .new_burst = (uint32_t)cfg.new_burst,
                         .listens_on_all = addr_is_wildcard(cfg.addr)};
    if (cfg.host && acfg.listens_on_all && api_prefix_is_loopback(cfg.host))
        log_warn("--host %s is a loopback URL but disco listens on every interface (--addr %s): "
                 "tokens from /new will name a URL other machines cannot reach",
                 cfg.host, cfg.addr);
    api_t *api = api_new(reg, backend, &acfg);
    if (!api) {
        log_error("out of memory at startup");
        free(derived);
        return 1;
    }
    fit_connection_limit(&cfg.max_conns, cfg.max_conns_set);
    if (cfg.idle_timeout_ms <= GO_CLIENT_IDLE_TIMEOUT_MS)
        log_warn("--idle-timeout %llums is not above Go's 90s: an etcd member may send its "
                 "registration on a connection disco is closing, and that PUT is not retried",
                 (unsigned long long)cfg.idle_timeout_ms);
    http_server_config_t scfg = {
        .addr = cfg.addr,
        .wait_timeout_ms = cfg.wait_timeout_ms,
        .max_header_bytes = (size_t)cfg.max_header_bytes,
        .max_body_bytes = (size_t)cfg.max_body_bytes,
        .max_conns = (size_t)cfg.max_conns,
        .idle_timeout_ms = cfg.idle_timeout_ms,
        .header_timeout_ms = cfg.header_timeout_ms,
        .body_timeout_ms = cfg.body_timeout_ms,
        .handler = api_handle,
        .handler_ctx = api,
        .is_streaming = api_is_streaming,
        .render_error = api_render_error,
        .render_error_ctx = api,
        .tick = api_tick,
        .tick_ctx = api,
        .notify_fd = backend_notify_fd(backend),
        .on_notify = api_on_durable,
        .on_stop = notify_stopping,
        .tls = tls,
        .plain_addr = cfg.plain_addr,
        .on_reload = tls ? reload_tls : NULL,
        .reload_ctx = tls,
    };
    http_server_t *srv = http_server_new(&scfg, err);
    if (!srv) {
        log_error("%s", err);
        free(derived);
        return 1;
    }
    api_set_server(api, srv);
    if (!store) {
        backend_etcd_set_loop(backend, http_server_loop(srv));
        if (backend_load(backend, reg, err) != 0) {
            log_error("%s", err);
            backend_etcd_stop(backend);
            http_server_free(srv);
            api_free(api);
            registry_free(reg);
            backend_close(backend);
            free(derived);
            return 1;
        }
    }
    if (tls) {
        char summary[256];
        tls_ctx_describe(tls, summary, sizeof summary);
        log_info("TLS on %s (TLS 1.2 and 1.3%s): %s; plain HTTP on %s", http_server_address(srv),
                 tls_ctx_requires_client_cert(tls) ? ", client certificates required" : "", summary,
                 http_server_plain_address(srv) ? http_server_plain_address(srv) : "none");
    }
    log_info("disco %s serving on %s (store: %s; data dir: %s; /new prints %s; wait timeout: "
             "%llums)",
             DISCO_VERSION, http_server_address(srv), store ? store_name(store) : "etcd",
             !store      ? cfg.etcd_prefix
             : in_memory ? "none"
                         : cfg.data_dir,
             acfg.host_prefix ? acfg.host_prefix
             : tls            ? "https://<Host header> (http:// on the plain listener)"
                              : "http://<Host header>",
             (unsigned long long)cfg.wait_timeout_ms);
    log_info("limits: head %llu B, body %llu B, key %llu B, value %llu B, %llu keys and %llu "
             "events a token, %llu connections, /new %llu/s burst %llu an address (0: off); "
             "timeouts: head %llums, body %llums, idle %llums",
             (unsigned long long)cfg.max_header_bytes, (unsigned long long)cfg.max_body_bytes,
             (unsigned long long)cfg.max_key_bytes, (unsigned long long)cfg.max_value_bytes,
             (unsigned long long)cfg.max_keys_per_token,
             (unsigned long long)cfg.max_events_per_token, (unsigned long long)cfg.max_conns,
             (unsigned long long)cfg.new_rate_per_s, (unsigned long long)cfg.new_burst,
             (unsigned long long)cfg.header_timeout_ms, (unsigned long long)cfg.body_timeout_ms,
             (unsigned long long)cfg.idle_timeout_ms);
    uint64_t watchdog_usec = sdnotify_watchdog_usec();
    watchdog_t wd = {.every_ms = watchdog_usec / 2000};
    if (watchdog_usec > 0 && wd.every_ms == 0)
        wd.every_ms = 1;
    if (wd.every_ms > 0 && loop_add_timer(http_server_loop(srv), watchdog_timer, &wd) != 0)
        log_warn("out of memory arming the systemd watchdog; it will restart disco");
    /* Listening, the store loaded: members may come. */
    notify("READY=1\nSTATUS=serving");
    rc = http_server_run(srv);
    size_t tokens = registry_token_count(reg);
    if (!store)
        backend_etcd_stop(backend); /* its client lives on the server's loop */
    http_server_free(srv);
    if (store)
        store_close(store); /* commits what is queued before the registry goes */
    api_free(api);
    registry_free(reg);
    backend_close(backend);
    tls_ctx_free(tls);
    free(derived);
    log_access_close();
    if (rc != 0) {
        log_error("event loop failed: %s", strerror(-rc));
        return 1;
    }
    log_info("disco stopped cleanly (%zu tokens in the registry)", tokens);
    return 0;
}
