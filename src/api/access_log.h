/*
 * access_log.h - the api's side of the access log (util/log.h): what a
 * request was, kept from its handler call until its answer is decided.
 *
 * A request is remembered by its handle's slot and generation, so a late
 * answer (held until durable, a woken watch) finds its own line, and an
 * answer whose request was never recorded (the server's own refusals,
 * which no handler sees) writes nothing. Costs nothing when no access log
 * is open.
 */
#ifndef DISCO_API_ACCESS_LOG_H
#define DISCO_API_ACCESS_LOG_H

#include "api/api.h"

/* Records `req` (method, target, client address, arrival time). Out of
 * memory: the request is not logged. */
void access_log_begin(api_t *api, const http_request_t *req);
/* Writes the line of the request `c` answered with `status` and
 * `body_bytes`, and forgets it. Nothing when `c` was not recorded. */
void access_log_end(api_t *api, http_req_t c, int status, size_t body_bytes);
/* Frees what is recorded (api_free). */
void access_log_free(api_t *api);

#endif
