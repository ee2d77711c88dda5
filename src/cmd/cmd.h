/*
 * cmd.h - the subcommands of the `disco` command, one file each under
 * src/cmd/. main.c only dispatches to them.
 *
 * Each takes the arguments after its own name (argv[0] is the first flag,
 * not the subcommand) and returns the process exit status: 0 success,
 * 1 a runtime failure (logged), 2 a usage error (printed on stderr).
 */
#ifndef DISCO_CMD_CMD_H
#define DISCO_CMD_CMD_H

#ifndef DISCO_VERSION
#define DISCO_VERSION "0.0.0-dev"
#endif

/* `disco serve [flags]`: runs the service until SIGTERM (cmd/serve.c). */
int cmd_serve(int argc, char **argv);
/* `disco new [flags]`: asks a server for a token and prints its URL
 * (cmd/new.c). */
int cmd_new(int argc, char **argv);
/* `disco status [flags] URL`: what a token's members look like from here;
 * exit codes in cmd/cli_common.h (cmd/status.c). */
int cmd_status(int argc, char **argv);
/* `disco migrate [flags]`: copies a stopped embedded store's tokens into an
 * empty etcd prefix (cmd/migrate.c). */
int cmd_migrate(int argc, char **argv);

#endif
