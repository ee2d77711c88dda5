/*
 * discovery.h - the discovery.etcd.io endpoints (discovery.c): /new,
 * /health, /metrics, /robots.txt and the front page.
 *
 * Each handler answers `req` before it returns (the router calls it on the
 * event loop thread); none parks.
 */
#ifndef DISCO_API_DISCOVERY_H
#define DISCO_API_DISCOVERY_H

#include <stdbool.h>
#include <stdint.h>

#include "api/api.h"
#include "util/buf.h"

void discovery_new(api_t *api, const http_request_t *req);
void discovery_health(api_t *api, const http_request_t *req);
void discovery_metrics(api_t *api, const http_request_t *req);
void discovery_robots(api_t *api, const http_request_t *req);
void discovery_index_page(api_t *api, const http_request_t *req);

/*
 * Appends the URL prefix a token of this server is printed under, e.g.
 * "https://disco.example": --host if set, else "http://" + the request's
 * Host header. Returns false, appending nothing, when there is neither a
 * --host nor a Host header fit to print back. Allocation failures set
 * out's error flag.
 */
bool discovery_url_prefix(api_t *api, const http_request_t *req, buf_t *out);

/*
 * Takes one token creation from the budget of the request's client address
 * (IPv4 address or IPv6 /64; --new-rate, --new-burst), the budget /new
 * spends: a token made by a write of <token>/_config/size on the v2 keys
 * path takes from it too. Returns 0 when there was room (and takes one),
 * else the whole seconds until there is (>= 1), taking nothing. Always 0
 * when the limit is off.
 */
uint64_t discovery_take_new_budget(api_t *api, const http_request_t *req);

#endif
