/*
 * token_log.h - a token's life as log lines an operator can follow, and
 * the explaining cause of a "Key not found" for a token that does not
 * exist.
 *
 * One line per event: a token created (size, client address), a member
 * registered ("k of N", client address), the token complete, a complete
 * token read by an address that had not touched it before (a machine given
 * a used token: it will become a proxy of the members there), a member
 * deleted. Expiry is logged by the registry's sweep (registry/tokens.c).
 */
#ifndef DISCO_API_TOKEN_LOG_H
#define DISCO_API_TOKEN_LOG_H

#include "api/api.h"

/* Addresses remembered per token for "read by a new address": a
 * direct-mapped table of hashes of (token, address), 8 bytes each; a
 * collision forgets an older pair, so a line may repeat, never be lost. */
#define TOKEN_LOG_SEEN_SLOTS 8192

/* /new made `token` of `size` for `req`'s client. */
void token_log_created(api_t *api, const http_request_t *req, const char *token, unsigned size);

/*
 * After a v2 operation on `key` (a full v2 key) for `req`, before its
 * answer is sent: logs the token event `res` is, if any, and when `res`
 * is REG_E_KEY_NOT_FOUND because the token does not exist, replaces
 * res->cause with "<token key>: <why>" (the key first, as etcd's cause,
 * then what the registry knows: expired and when, never issued, or
 * malformed and how) and logs that with the client's address. Leaves
 * res->cause as it was when out of memory.
 */
void token_log_v2(api_t *api, const http_request_t *req, const char *key, reg_result_t *res);

#endif
