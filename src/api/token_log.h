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

/*
 * Who asked, as the lines name it. Borrowed from the request
 * (token_log_who) while its handler runs; a write the etcd backend answers
 * later keeps a copy (token_log_who_keep, its strings in space the caller
 * owns) so that its line, logged when the answer is known, still names the
 * client.
 */
typedef struct token_log_who {
    int method;              /* enum http_method */
    const char *method_name; /* "GET", ... (static) */
    const char *path;        /* the request's raw path */
    const char *peer;        /* "address:port" */
    const char *peer_addr;   /* the address alone */
    bool v3;                 /* a v3 gRPC call (the lines say so) */
} token_log_who_t;

static inline token_log_who_t token_log_who(const http_request_t *req)
{
    return (token_log_who_t){req->method, req->method_name, req->path,
                             req->peer,   req->peer_addr,   false};
}

/* The bytes token_log_who_keep needs for `who`'s strings. */
size_t token_log_who_size(const token_log_who_t *who);

/* `who` with its strings copied into `space` (token_log_who_size bytes). */
token_log_who_t token_log_who_keep(const token_log_who_t *who, char *space);

/* /new made `token` of `size` for `who`. */
void token_log_created(api_t *api, const token_log_who_t *who, const char *token, unsigned size);

/*
 * After a v2 operation or a v3 Put on `key` (a full registry key) for
 * `who`, before its answer is sent (a pending write: once its outcome is
 * known): logs the token event `res` is, if any, and when `res` is
 * REG_E_KEY_NOT_FOUND because the token does not exist, replaces
 * res->cause with "<token key>: <why>" (the key first, as etcd's cause,
 * then what the registry knows: expired and when, never issued, or
 * malformed and how) and logs that with the client's address. Leaves
 * res->cause as it was when out of memory.
 */
void token_log_v2(api_t *api, const token_log_who_t *who, const char *key, reg_result_t *res);

#endif
