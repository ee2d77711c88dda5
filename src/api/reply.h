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

/*
 * A write whose outcome is pending (reg_result_t.pending: a backend that
 * applies on delivery, etcd): parks `c` until the registry settles
 * `ticket`, then calls `answer(ctx, c, res)`, which must answer `c`
 * (REG_E_INTERNAL: not made, or not known; a retryable error). When the
 * wait timeout passes first, `answer` gets REG_E_INTERNAL too; when the
 * client goes first, it is not called. Either way `ctx` is freed with
 * free() once the write no longer needs it. With out of memory, answers
 * 503 at once (the write goes on). `method` is static.
 */
typedef void (*api_answer_fn)(void *ctx, http_req_t c, const reg_result_t *res);
void api_await_write(api_t *api, http_req_t c, enum metrics_endpoint ep, const char *method,
                     uint64_t ticket, api_answer_fn answer, void *ctx);

#endif
