/*
 * cli_common.h - what `disco new` and `disco status` share: the TLS flags
 * and the one way both read a "--name value" / "--name=value" flag.
 */
#ifndef DISCO_CMD_CLI_COMMON_H
#define DISCO_CMD_CLI_COMMON_H

#include <stdbool.h>
#include <string.h>

#include "cmd/httpc.h"

/* The exit codes of the CLI subcommands (docs/operating.md). */
enum cli_exit {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILED = 1, /* the server refused (new) or answered nonsense */
    CLI_EXIT_USAGE = 2,
    CLI_EXIT_WAITING = 3,
    CLI_EXIT_STALE = 4,
    CLI_EXIT_PARTIAL = 5,
    CLI_EXIT_UNKNOWN_TOKEN = 6,
    CLI_EXIT_UNREACHABLE = 7,
};

/*
 * If argv[*i] is flag `name` ("--name value" or "--name=value"), sets
 * *value (pointing into argv), advances *i past it and returns 1; returns
 * -1 when the flag lacks its value, 0 when argv[*i] is another argument.
 */
static inline int cli_flag_value(int argc, char **argv, int *i, const char *name,
                                 const char **value)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, "--", 2) != 0 || strncmp(a + 2, name, n) != 0)
        return 0;
    if (a[2 + n] == '=') {
        *value = a + 3 + n;
        return 1;
    }
    if (a[2 + n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *value = argv[++*i];
    return 1;
}

/* Takes --cacert, --cert and --key into `tls`; same contract as above. */
static inline int cli_tls_flag(int argc, char **argv, int *i, httpc_tls_t *tls)
{
    int rc = cli_flag_value(argc, argv, i, "cacert", &tls->cacert);
    if (rc == 0)
        rc = cli_flag_value(argc, argv, i, "cert", &tls->cert);
    if (rc == 0)
        rc = cli_flag_value(argc, argv, i, "key", &tls->key);
    return rc;
}

#define CLI_TLS_USAGE                                                                              \
    "  --cacert FILE    CA certificates (PEM) that sign the server's certificate;\n"               \
    "                   default: the system's, or SSL_CERT_FILE when set\n"                        \
    "  --cert FILE      client certificate (PEM) for a server that asks for one\n"                 \
    "  --key FILE       its private key (PEM; default: in --cert)\n"

#endif
