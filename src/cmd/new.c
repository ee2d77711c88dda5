/*
 * new.c - `disco new`: asks a disco (or discovery.etcd.io) for a token and
 * prints its URL, or with --butane the Butane config of Flatcar's
 * cluster-discovery guide with that URL filled in.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cli_common.h"
#include "cmd/cmd.h"
#include "cmd/httpc.h"
#include "util/butane.h"

static const char new_usage[] =
    "usage: disco new [--size N] [--server URL] [--butane] [TLS flags]\n"
    "\n"
    "Makes a discovery token and prints its URL.\n"
    "\n"
    "  --size N         members of the cluster, 1-1000 (default 3)\n"
    "  --server URL     the discovery service, e.g. https://disco.example\n"
    "                   (DISC_SERVER)\n"
    "  --butane         print the Butane config of Flatcar's cluster-discovery\n"
    "                   guide with the new URL filled in, instead of the URL\n" CLI_TLS_USAGE "\n"
    "Exit codes: 0 made; 1 the server refused (its answer is printed);\n"
    "2 usage error; 7 server unreachable or TLS failure.\n";

int cmd_new(int argc, char **argv)
{
    const char *size = "3", *server = getenv("DISC_SERVER");
    bool butane = false;
    httpc_tls_t tls = {0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(new_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (strcmp(a, "--butane") == 0) {
            butane = true;
            continue;
        }
        int rc = cli_flag_value(argc, argv, &i, "size", &size);
        if (rc == 0)
            rc = cli_flag_value(argc, argv, &i, "server", &server);
        if (rc == 0)
            rc = cli_tls_flag(argc, argv, &i, &tls);
        if (rc < 0) {
            fprintf(stderr, "disco new: flag %s needs a value\n", a);
            return CLI_EXIT_USAGE;
        }
        if (rc == 0) {
            fprintf(stderr, "disco new: unexpected argument \"%s\"\n\n%s", a, new_usage);
            return CLI_EXIT_USAGE;
        }
    }
    char *end;
    long n = strtol(size, &end, 10);
    if (!*size || *end || n < 1 || n > 1000) {
        fprintf(stderr, "disco new: bad --size \"%s\": want a whole number from 1 to 1000\n", size);
        return CLI_EXIT_USAGE;
    }
    if (!server || !*server) {
        fprintf(stderr, "disco new: which server? give --server URL or set DISC_SERVER\n");
        return CLI_EXIT_USAGE;
    }
    httpc_url_t u;
    if (httpc_parse_url(server, &u) != 0) {
        fprintf(stderr, "disco new: bad --server \"%s\": want a URL like https://disco.example\n",
                server);
        return CLI_EXIT_USAGE;
    }
    httpc_url_free(&u);
    size_t sl = strlen(server);
    while (sl > 0 && server[sl - 1] == '/')
        sl--;
    char url[2048];
    if (snprintf(url, sizeof url, "%.*s/new?size=%ld", (int)sl, server, n) >= (int)sizeof url) {
        fprintf(stderr, "disco new: --server is too long\n");
        return CLI_EXIT_USAGE;
    }
    httpc_response_t res;
    char err[256];
    enum httpc_error e = httpc_request("GET", url, NULL, &tls, 0, &res, err);
    if (e != HTTPC_OK) {
        fprintf(stderr, "disco new: %s\n", err);
        return e == HTTPC_E_CONNECT || e == HTTPC_E_TLS ? CLI_EXIT_UNREACHABLE : CLI_EXIT_FAILED;
    }
    /* The answer is the URL in plain text; a trailing newline is allowed. */
    size_t len = res.body_len;
    while (len > 0 && (res.body[len - 1] == '\n' || res.body[len - 1] == '\r'))
        len--;
    res.body[len] = '\0';
    int rc = CLI_EXIT_OK;
    if (res.status != 200 ||
        (strncmp(res.body, "http://", 7) != 0 && strncmp(res.body, "https://", 8) != 0)) {
        fprintf(stderr, "disco new: %s answered %d: %s\n", server, res.status, res.body);
        rc = CLI_EXIT_FAILED;
    } else if (butane) {
        /* The config (util/butane.h) under a comment line that Butane
         * ignores and the operator reads. */
        buf_t config = BUF_INIT;
        buf_printf(&config,
                   "# discovery URL: %s (one cluster, once: make a new one for every "
                   "cluster)\n",
                   res.body);
        butane_put_etcd_member(&config, res.body);
        if (buf_failed(&config)) {
            fprintf(stderr, "disco new: out of memory\n");
            rc = CLI_EXIT_FAILED;
        } else {
            fwrite(config.data, 1, config.len, stdout);
        }
        buf_free(&config);
    } else {
        printf("%s\n", res.body);
    }
    httpc_response_free(&res);
    return rc;
}
