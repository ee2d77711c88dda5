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

#endif
