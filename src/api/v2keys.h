/*
 * v2keys.h - etcd's v2 keys API over the registry (v2keys.c), for both
 * surfaces: /v2/keys/<key> and /<token>/<key>.
 */
#ifndef DISCO_API_V2KEYS_H
#define DISCO_API_V2KEYS_H

#include <stdbool.h>

#include "api/api.h"
#include "api/metrics.h"

/*
 * Answers `req` for the full, decoded v2 key `key` (borrowed for the call),
 * counting it under `ep`: at once, or later from a watch or once the store
 * has made the answer's state durable (the request is parked until then).
 * With `config_read_only` (the /<token> surface), writes under a token's
 * _config are refused.
 */
void v2keys_handle(api_t *api, const http_request_t *req, const char *key, enum metrics_endpoint ep,
                   bool config_read_only);

#endif
