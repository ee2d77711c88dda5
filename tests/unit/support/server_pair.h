/*
 * server_pair.h - unit tests talk to an in-process HTTP server (built with
 * addr = NULL, see http.h's test seam) over socketpairs, running its loop
 * one turn at a time: no ports, no threads, no timing.
 */
#ifndef DISCO_TEST_SERVER_PAIR_H
#define DISCO_TEST_SERVER_PAIR_H

#include "api/api.h"
#include "server/http.h"
#include "util/buf.h"

/* An in-process server (no listening socket) that hands every request to
 * `api`, with a 60 s wait timeout. NULL when it cannot be built. */
http_server_t *sp_api_server(api_t *api);

/* A new connection to `srv`; returns the client's end (non-blocking).
 * With `sndbuf_bytes` > 0 the server's end gets that small a send buffer.
 * Fails the test when it cannot. */
int sp_connect(http_server_t *srv, int sndbuf_bytes);

/*
 * Sends `req` (NULL: nothing) from the client end `fd` while running the
 * server, and appends whatever comes back to `out`, until nothing moves
 * for a few turns in a row.
 */
void sp_exchange(http_server_t *srv, int fd, const char *req, buf_t *out);

#endif
