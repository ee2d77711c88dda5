/*
 * etcd_txn.h - a transaction plan (etcd_layout.h) as etcd's TxnRequest,
 * the one conversion that the etcd backend, `disco migrate` and the etcd
 * benchmark all send.
 *
 * It lives here, beside the layout, and not in src/etcd: the plan is the
 * layout's type, and the gRPC client stays a client of etcd's API that
 * knows nothing of how disco lays out its keys. It is not in
 * etcd_layout.c either, which stays free of protobuf so that its mappings
 * are tested as plain data (tests/unit/test_etcd_layout.c).
 *
 * The request points into the plan (keys, values: not copied), so the plan
 * must outlive it; etcd_txn() encodes before it returns, so both may go
 * right after the call. A caller may adjust the request before sending it
 * (a compare over a key range, a count instead of a read in a failure
 * branch): every part is reachable through the struct.
 */
#ifndef DISCO_BACKEND_ETCD_TXN_H
#define DISCO_BACKEND_ETCD_TXN_H

#include <stddef.h>

#include "backend/etcd_layout.h"
#include "etcd/client.h"
#include "etcd_v3.pb-c.h"

/* One op's message and what it owns. */
typedef struct etcd_txn_op_msg {
    Etcdserverpb__RequestOp op;
    Etcdserverpb__PutRequest put;
    Etcdserverpb__DeleteRangeRequest del;
    Etcdserverpb__RangeRequest range;
    char *range_end; /* owned: a DELETE_PREFIX's end */
} etcd_txn_op_msg_t;

typedef struct etcd_txn_request {
    Etcdserverpb__TxnRequest txn; /* what to send */
    Etcdserverpb__Compare cmps[ETCD_PLAN_MAX_CMPS];
    Etcdserverpb__Compare *cmp_ptrs[ETCD_PLAN_MAX_CMPS];
    /* The success ops, then the failure ops (txn.failure points at the
     * first of those in op_ptrs). */
    etcd_txn_op_msg_t *ops;
    Etcdserverpb__RequestOp **op_ptrs;
    size_t n_ops;
} etcd_txn_request_t;

/*
 * Fills `rq` with `plan` as a TxnRequest: each compare and op kind as
 * etcd_layout.h defines it (a RANGE reads one key's key only; a PUT names
 * its lease when it has one). 0, or -ENOMEM with nothing left to free.
 * Free with etcd_txn_request_clear(), whatever was sent.
 */
int etcd_txn_request_init(etcd_txn_request_t *rq, const etcd_txn_plan_t *plan);
void etcd_txn_request_clear(etcd_txn_request_t *rq);

/*
 * The plan sent as it is: etcd_txn() with its request built and freed
 * here. 0, or -errno with no callback to come (as etcd_txn()).
 */
int etcd_txn_send_plan(etcd_client_t *c, const etcd_txn_plan_t *plan, unsigned timeout_ms,
                       etcd_done_fn done, void *ctx);

#endif
