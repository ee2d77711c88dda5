/*
 * etcd_txn.c - a transaction plan as etcd's TxnRequest (see etcd_txn.h
 * for why this is its own module).
 */
#include "backend/etcd_txn.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Borrowed bytes: protobuf-c reads them while encoding, never frees them. */
static void fill_bytes(ProtobufCBinaryData *b, const char *s)
{
    b->len = s ? strlen(s) : 0;
    b->data = (uint8_t *)s;
}

static void fill_compare(Etcdserverpb__Compare *m, const etcd_cmp_t *cmp)
{
    Etcdserverpb__Compare init = ETCDSERVERPB__COMPARE__INIT;
    *m = init;
    fill_bytes(&m->key, cmp->key);
    fill_bytes(&m->range_end, cmp->range_end);
    switch (cmp->kind) {
    case ETCD_CMP_CREATE_EQ:
    case ETCD_CMP_CREATE_GT:
        m->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
        m->result = cmp->kind == ETCD_CMP_CREATE_EQ
                        ? ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL
                        : ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER;
        m->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        m->create_revision = cmp->rev;
        break;
    case ETCD_CMP_MOD_EQ:
        m->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD;
        m->result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
        m->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
        m->mod_revision = cmp->rev;
        break;
    }
}

static int fill_op(etcd_txn_op_msg_t *m, const etcd_op_t *op)
{
    Etcdserverpb__RequestOp oinit = ETCDSERVERPB__REQUEST_OP__INIT;
    m->op = oinit;
    switch (op->kind) {
    case ETCD_OP_PUT: {
        Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
        m->put = p;
        fill_bytes(&m->put.key, op->key);
        fill_bytes(&m->put.value, op->value);
        m->put.lease = op->lease;
        m->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        m->op.request_put = &m->put;
        break;
    }
    case ETCD_OP_DELETE:
    case ETCD_OP_DELETE_PREFIX: {
        Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
        m->del = d;
        fill_bytes(&m->del.key, op->key);
        if (op->kind == ETCD_OP_DELETE_PREFIX) {
            if (!(m->range_end = etcd_layout_prefix_end(op->key)))
                return -ENOMEM;
            fill_bytes(&m->del.range_end, m->range_end);
        }
        m->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
        m->op.request_delete_range = &m->del;
        break;
    }
    case ETCD_OP_RANGE: {
        Etcdserverpb__RangeRequest r = ETCDSERVERPB__RANGE_REQUEST__INIT;
        m->range = r;
        fill_bytes(&m->range.key, op->key);
        m->range.keys_only = true;
        m->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
        m->op.request_range = &m->range;
        break;
    }
    }
    return 0;
}

int etcd_txn_request_init(etcd_txn_request_t *rq, const etcd_txn_plan_t *plan)
{
    assert(plan->n_cmps <= ETCD_PLAN_MAX_CMPS && plan->n_failure <= ETCD_PLAN_MAX_FAILURE);
    memset(rq, 0, sizeof *rq);
    rq->n_ops = plan->n_success + plan->n_failure;
    /* One more than needed: calloc(0) may give NULL. */
    rq->ops = calloc(rq->n_ops + 1, sizeof *rq->ops);
    rq->op_ptrs = calloc(rq->n_ops + 1, sizeof *rq->op_ptrs);
    if (!rq->ops || !rq->op_ptrs) {
        etcd_txn_request_clear(rq);
        return -ENOMEM;
    }
    for (size_t i = 0; i < plan->n_cmps; i++) {
        fill_compare(&rq->cmps[i], &plan->cmps[i]);
        rq->cmp_ptrs[i] = &rq->cmps[i];
    }
    for (size_t i = 0; i < rq->n_ops; i++) {
        const etcd_op_t *op =
            i < plan->n_success ? &plan->success[i] : &plan->failure[i - plan->n_success];
        if (fill_op(&rq->ops[i], op) != 0) {
            etcd_txn_request_clear(rq);
            return -ENOMEM;
        }
        rq->op_ptrs[i] = &rq->ops[i].op;
    }
    Etcdserverpb__TxnRequest init = ETCDSERVERPB__TXN_REQUEST__INIT;
    rq->txn = init;
    rq->txn.n_compare = plan->n_cmps;
    rq->txn.compare = rq->cmp_ptrs;
    rq->txn.n_success = plan->n_success;
    rq->txn.success = rq->op_ptrs;
    rq->txn.n_failure = plan->n_failure;
    rq->txn.failure = rq->op_ptrs + plan->n_success;
    return 0;
}

void etcd_txn_request_clear(etcd_txn_request_t *rq)
{
    if (rq->ops)
        for (size_t i = 0; i < rq->n_ops; i++)
            free(rq->ops[i].range_end);
    free(rq->ops);
    free(rq->op_ptrs);
    memset(rq, 0, sizeof *rq);
}

int etcd_txn_send_plan(etcd_client_t *c, const etcd_txn_plan_t *plan, unsigned timeout_ms,
                       etcd_done_fn done, void *ctx)
{
    etcd_txn_request_t rq;
    int rc = etcd_txn_request_init(&rq, plan);
    if (rc != 0)
        return rc;
    rc = etcd_txn(c, &rq.txn, timeout_ms, done, ctx);
    etcd_txn_request_clear(&rq);
    return rc;
}
