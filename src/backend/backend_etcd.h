/*
 * backend_etcd.h - the backend over an etcd v3 cluster (backend_etcd.c):
 * several disco instances, each a full mirror of one etcd prefix, writes as
 * guarded transactions (ETCD-BACKEND.md, design (a); layout in
 * etcd_layout.h).
 */
#ifndef DISCO_BACKEND_BACKEND_ETCD_H
#define DISCO_BACKEND_BACKEND_ETCD_H

#include <stdbool.h>
#include <stddef.h>

#include "backend/backend.h"

struct loop;

typedef struct backend_etcd_config {
    const char *const *endpoints; /* client URLs, tried in order */
    size_t n_endpoints;
    const char *prefix;                                /* "/disco/": starts and ends with '/' */
    const char *cacert, *cert, *key, *user, *password; /* NULL: none */
} backend_etcd_config_t;

/*
 * The backend. Strings are copied. NULL with a one-line reason in `err`
 * (256 bytes). Nothing is sent before backend_load(), which needs the loop
 * (backend_etcd_set_loop: the server's, made after the registry that uses
 * this backend; every call and callback then runs on it) and builds the
 * mirror: it runs the loop until the mirror has caught up with etcd, or
 * fails after ETCD_LOAD_TIMEOUT_MS.
 */
backend_t *backend_etcd_new(const backend_etcd_config_t *cfg, char *err);
void backend_etcd_set_loop(backend_t *be, struct loop *loop);
/* Closes the connection to etcd and leaves the loop, before the loop is
 * freed: no more callbacks; the backend still answers its calls (not
 * writable) until backend_close(). */
void backend_etcd_stop(backend_t *be);

#define ETCD_LOAD_TIMEOUT_MS 60000

#endif
