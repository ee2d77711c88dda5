/*
 * reply.h - how the api's handlers answer: every answer is counted in the
 * metrics and, on a discovery path, held until the state it shows is
 * durable (see reply.c). Loop thread only.
 */
#ifndef DISCO_API_REPLY_H
#define DISCO_API_REPLY_H

#include <stdbool.h>
#include <stdint.h>

#include "api/api.h"
#include "api/metrics.h"
#include "server/http.h"

/* Whether a write may start now (the store has room and commits work);
 * if not, answers 503 in etcd JSON and returns false. */
bool api_check_writable(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method);

/* Sends `r` and counts it under `ep`, once the state it shows is durable.
 * `method` is a static string (http_method_str()'s or a literal). */
void api_send(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
              const http_reply_t *r);
/* The same with an answer shared by many connections; a held answer takes
 * its own reference, the caller keeps its own. */
void api_send_prepared(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
                       http_prepared_t *p);
/*
 * Counts what a successful write means for discovery: a new key directly
 * below a token (not its _config) is a registration; one that brings the
 * token's members to its size completes the token. `ev` is the write's
 * event.
 */
void api_note_write(api_t *api, const reg_event_t *ev);

/* An etcd JSON error answer (status from the code unless `status` != 0). */
void api_send_v2_error(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
                       int status, int code, const char *cause, uint64_t index);

#endif
