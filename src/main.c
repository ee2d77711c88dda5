/*
 * main.c - the `disco` command: subcommand dispatch only. Each subcommand
 * lives in its own file under src/cmd/ (cmd/cmd.h).
 */
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

static const char usage[] =
    "usage: disco <command> [flags]\n"
    "\n"
    "commands:\n"
    "  serve      run the etcd cluster-discovery service (disco serve --help)\n"
    "  new        make a discovery token and print its URL (disco new --help)\n"
    "  status     what a token's members look like from here (disco status --help)\n"
    "  migrate    copy an embedded store's tokens into etcd (disco migrate --help)\n"
    "  version    print the version\n"
    "  help       this text\n";

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("disco %s\n", DISCO_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "serve") == 0)
        return cmd_serve(argc - 2, argv + 2);
    if (strcmp(argv[1], "new") == 0)
        return cmd_new(argc - 2, argv + 2);
    if (strcmp(argv[1], "status") == 0)
        return cmd_status(argc - 2, argv + 2);
    if (strcmp(argv[1], "migrate") == 0)
        return cmd_migrate(argc - 2, argv + 2);
    fprintf(stderr, "disco: unknown command \"%s\"\n\n%s", argv[1], usage);
    return 2;
}
