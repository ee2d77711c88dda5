/*
 * discovery.h - the discovery.etcd.io endpoints (discovery.c): /new,
 * /health, /metrics, /robots.txt and the front page.
 *
 * Each handler answers `req` before it returns (the router calls it on the
 * event loop thread); none parks.
 */
#ifndef DISCO_API_DISCOVERY_H
#define DISCO_API_DISCOVERY_H

#include "api/api.h"

void discovery_new(api_t *api, const http_request_t *req);
void discovery_health(api_t *api, const http_request_t *req);
void discovery_metrics(api_t *api, const http_request_t *req);
void discovery_robots(api_t *api, const http_request_t *req);
void discovery_index_page(api_t *api, const http_request_t *req);

#endif
