/*
 * v3.h - etcd's v3 gRPC API as far as discovery needs it (v3.c), over the
 * same registry as the v2 API: the global index is the v3 revision.
 *
 * Served on HTTP/2 streams whose content-type is application/grpc:
 *   /etcdserverpb.KV/Range              a key, or a range inside one token
 *   /etcdserverpb.KV/Put                the size key (creates the token) and
 *                                       members/<id> of an existing token
 *   /etcdserverpb.Auth/Authenticate     FAILED_PRECONDITION, as an etcd
 *                                       without auth
 *   anything else                       UNIMPLEMENTED
 * The key shapes and their answers are in docs/decisions.md ("etcd v3").
 */
#ifndef DISCO_API_V3_H
#define DISCO_API_V3_H

#include <stdbool.h>

#include "api/api.h"

/* Whether `req` is a gRPC call (content-type application/grpc[+proto]). */
bool v3_is_grpc(const http_request_t *req);

/* Whether a request to `path` is a gRPC streaming call, handed over as
 * soon as its headers are in (api_is_streaming): every gRPC method but the
 * unary ones disco serves, so that Watch streams and unknown methods are
 * answered without waiting for the client to end its side. */
bool v3_is_streaming(const char *path, const char *content_type);

/* The store made more of the registry durable: watch messages waiting
 * for it go out (called from api_on_durable). */
void v3_on_durable(api_t *api);
/* Frees what the v3 calls keep in `api` (api_free calls it). */
void v3_free(api_t *api);

/* Answers one gRPC call: at once, or once the state it shows is durable
 * (the stream's request is held until then, as v2 answers are). */
void v3_handle(api_t *api, const http_request_t *req);

/*
 * "A token serves one kind of member": whether a v2 write of `key` (a full,
 * decoded v2 key) would register a v2 member in a token whose members
 * registered through v3 (it has a members/ directory). The v2 handler
 * refuses such a write with 403.
 */
bool v3_token_refuses_v2_member(api_t *api, const char *key);

#endif
