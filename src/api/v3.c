/*
 * v3.c - etcd's v3 gRPC calls that discovery makes (see v3.h), answered
 * from the v2 registry.
 *
 * How v3 sees the registry: a v3 key is the v2 key with the same bytes
 * (/_etcd/registry/<token>/_config/size, /_etcd/registry/<token>/members/<id>),
 * only files are keys (v2 directories do not exist in v3), the global index
 * is the revision, a node's createdIndex its create_revision and its
 * modifiedIndex its mod_revision. So a v3 Put is one more event in the
 * token's history, visible to v2 watches and listings, and a v2 write is
 * visible to v3 Ranges.
 *
 * gRPC framing: a unary call's body is one message (a 5-byte prefix:
 * compressed flag, big-endian length; then protobuf); the answer is
 * :status 200, content-type application/grpc, one message, and the
 * trailer grpc-status 0. Errors are trailers-only answers with
 * grpc-status and grpc-message, etcd's codes and texts (clientv3 matches
 * some texts, e.g. the Authenticate one).
 *
 * Every answer leaves through api_send: it is held until the state it
 * shows is durable, like a v2 answer.
 */
#include "api/v3.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_internal.h"
#include "api/discovery.h"
#include "api/token_log.h"
#include "backend/backend.h"
#include "etcd_v3.pb-c.h"
#include "util/log.h"
#include "util/timeutil.h"

/* gRPC status codes (grpc/status.h). */
enum grpc_code {
    GRPC_OK = 0,
    GRPC_INVALID_ARGUMENT = 3,
    GRPC_NOT_FOUND = 5,
    GRPC_PERMISSION_DENIED = 7,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_FAILED_PRECONDITION = 9,
    GRPC_OUT_OF_RANGE = 11,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14,
};

/* etcd's own texts (api/v3rpc/rpctypes/error.go). */
#define ETCD_E_PERMISSION_DENIED "etcdserver: permission denied"
#define ETCD_E_AUTH_NOT_ENABLED "etcdserver: authentication is not enabled"
#define ETCD_E_EMPTY_KEY "etcdserver: key is not provided"
#define ETCD_E_KEY_NOT_FOUND "etcdserver: key not found"
#define ETCD_E_VALUE_PROVIDED "etcdserver: value is provided"
#define ETCD_E_LEASE_PROVIDED "etcdserver: lease is provided"
#define ETCD_E_LEASE_NOT_FOUND "etcdserver: requested lease not found"
#define ETCD_E_COMPACTED "etcdserver: mvcc: required revision has been compacted"
#define ETCD_E_FUTURE_REV "etcdserver: mvcc: required revision is a future revision"
#define ETCD_E_TOO_MANY_REQUESTS "etcdserver: too many requests"
#define ETCD_E_REQUEST_TOO_LARGE "etcdserver: request is too large"

#define GRPC_PREFIX_BYTES 5
#define TOKEN_KEY_PREFIX REGISTRY_PREFIX "/"
#define MEMBERS_DIR "members"

/* ---- answers ------------------------------------------------------------ */

/* grpc-message is percent-encoded (the gRPC HTTP/2 spec): bytes outside
 * printable ASCII, and '%'. */
static void put_grpc_message(buf_t *out, const char *msg)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        if (*p < 0x20 || *p > 0x7e || *p == '%') {
            buf_putc(out, '%');
            buf_putc(out, hex[*p >> 4]);
            buf_putc(out, hex[*p & 15]);
        } else {
            buf_putc(out, (char)*p);
        }
    }
}

static void send_error(api_t *api, http_req_t h, enum grpc_code code, const char *msg)
{
    buf_t t = BUF_INIT;
    buf_printf(&t, "grpc-status: %d\r\ngrpc-message: ", (int)code);
    put_grpc_message(&t, msg);
    buf_puts(&t, "\r\n");
    http_reply_t r = {.status = 200,
                      .content_type = "application/grpc",
                      .trailers = buf_failed(&t) ? "grpc-status: 13\r\n" : buf_cstr(&t)};
    api_send(api, h, METRICS_V3, "POST", &r);
    buf_free(&t);
}

/* The largest message disco sends: gRPC's default receive limit, which
 * every client but clientv3 keeps. Past it the call ends as grpc-go ends
 * one whose answer is past its send limit (RESOURCE_EXHAUSTED), rather
 * than the client failing on a message it was never going to take. */
#define V3_MAX_SEND_MESSAGE 4194304u /* 4 MiB */
#define V3_E_SEND_TOO_LARGE "grpc: trying to send message larger than max"
/* A message this small is built on the stack, not the heap. */
#define V3_STACK_MESSAGE_BYTES 512

static void send_message(api_t *api, http_req_t h, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > V3_MAX_SEND_MESSAGE) {
        char msg[120];
        snprintf(msg, sizeof msg, V3_E_SEND_TOO_LARGE " (%zu vs. %u)", n, V3_MAX_SEND_MESSAGE);
        send_error(api, h, GRPC_RESOURCE_EXHAUSTED, msg);
        return;
    }
    /* Most answers (a Put's, a small Range's) fit on the stack. */
    uint8_t stack[V3_STACK_MESSAGE_BYTES];
    uint8_t *body = GRPC_PREFIX_BYTES + n <= sizeof stack ? stack : malloc(GRPC_PREFIX_BYTES + n);
    if (!body) {
        send_error(api, h, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
        return;
    }
    body[0] = 0; /* not compressed */
    body[1] = (uint8_t)(n >> 24);
    body[2] = (uint8_t)(n >> 16);
    body[3] = (uint8_t)(n >> 8);
    body[4] = (uint8_t)n;
    protobuf_c_message_pack(m, body + GRPC_PREFIX_BYTES);
    http_reply_t r = {.status = 200,
                      .content_type = "application/grpc",
                      .body = (const char *)body,
                      .body_len = GRPC_PREFIX_BYTES + n,
                      .trailers = "grpc-status: 0\r\n"};
    api_send(api, h, METRICS_V3, "POST", &r); /* copies the body */
    if (body != stack)
        free(body);
}

/* "<registry prefix>/<token>" into `dir` (truncated to `len`, as
 * snprintf would), without snprintf's cost on every Put. */
static void token_dir(char *dir, size_t len, const char *token)
{
    assert(len > 0);
    size_t p = strlen(TOKEN_KEY_PREFIX), t = strlen(token);
    if (p > len - 1)
        p = len - 1;
    memcpy(dir, TOKEN_KEY_PREFIX, p);
    if (t > len - 1 - p)
        t = len - 1 - p;
    memcpy(dir + p, token, t);
    dir[p + t] = '\0';
}

static uint64_t fnv1a64(const char *a, const char *b)
{
    uint64_t x = 14695981039346656037ull;
    for (const char *s = a; *s; s++)
        x = (x ^ (unsigned char)*s) * 1099511628211ull;
    for (const char *s = b; *s; s++)
        x = (x ^ (unsigned char)*s) * 1099511628211ull;
    return x;
}

/* etcd's header: cluster and member ids stable for this instance (from
 * its listening address), the current revision, a constant term. */
static void fill_header(api_t *api, Etcdserverpb__ResponseHeader *hd)
{
    etcdserverpb__response_header__init(hd);
    const char *addr = api->srv ? http_server_address(api->srv) : "";
    hd->cluster_id = fnv1a64("disco cluster ", addr);
    hd->member_id = fnv1a64("disco member ", addr);
    hd->revision = (int64_t)registry_index(api->reg);
    hd->raft_term = 1;
}

/* ---- keys --------------------------------------------------------------- */

/* A key as bytes. */
typedef struct bytes {
    const uint8_t *data;
    size_t len;
} bytes_t;

static int bytes_cmp(bytes_t a, bytes_t b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.data, b.data, n) : 0;
    return c ? c : (a.len < b.len ? -1 : a.len > b.len);
}

/* Whether `k` is in [key, range_end) as etcd reads a Range: no range_end
 * means exactly `key`; range_end "\0" means every key from `key` on. */
static bool in_range(bytes_t k, bytes_t key, bytes_t end)
{
    if (end.len == 0)
        return bytes_cmp(k, key) == 0;
    if (bytes_cmp(k, key) < 0)
        return false;
    return (end.len == 1 && end.data[0] == 0) || bytes_cmp(k, end) < 0;
}

/* The token a key lies in: "/_etcd/registry/<token>[/...]"; false for a
 * key outside every token. */
static bool token_of(bytes_t key, char *name, size_t name_size)
{
    size_t pl = sizeof TOKEN_KEY_PREFIX - 1;
    if (key.len <= pl || memcmp(key.data, TOKEN_KEY_PREFIX, pl) != 0)
        return false;
    const uint8_t *t = key.data + pl;
    size_t n = 0;
    while (pl + n < key.len && t[n] != '/')
        n++;
    if (!registry_valid_token_name((const char *)t, n) || n >= name_size)
        return false;
    memcpy(name, t, n);
    name[n] = '\0';
    return true;
}

/* ---- Range -------------------------------------------------------------- */

typedef struct kv_item {
    char *key; /* owned, NUL-terminated */
    size_t key_len;
    const char *value; /* borrowed from the tree until the next registry call */
    uint64_t create_rev, mod_rev;
} kv_item_t;

typedef struct kv_list {
    kv_item_t *items;
    size_t n, cap;
    bool failed;
} kv_list_t;

static void collect(const reg_node_t *n, bytes_t key, bytes_t end, kv_list_t *out)
{
    for (const reg_node_t *ch = reg_node_first_child(n); ch && !out->failed;
         ch = reg_node_next_sibling(ch)) {
        if (reg_node_is_dir(ch)) {
            collect(ch, key, end, out);
            continue;
        }
        buf_t k = BUF_INIT;
        reg_node_put_key(ch, &k);
        if (buf_failed(&k)) {
            out->failed = true;
            return;
        }
        if (!in_range((bytes_t){(const uint8_t *)k.data, k.len}, key, end)) {
            buf_free(&k);
            continue;
        }
        if (out->n == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 8;
            kv_item_t *items = realloc(out->items, cap * sizeof *items);
            if (!items) {
                buf_free(&k);
                out->failed = true;
                return;
            }
            out->items = items;
            out->cap = cap;
        }
        size_t len = k.len;
        out->items[out->n++] = (kv_item_t){.key = buf_steal(&k),
                                           .key_len = len,
                                           .value = reg_node_value(ch),
                                           .create_rev = reg_node_created_index(ch),
                                           .mod_rev = reg_node_modified_index(ch)};
    }
}

static void kv_list_free(kv_list_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i].key);
    free(l->items);
}

/* The sort of one Range, for qsort's comparator. */
static int sort_target, sort_descending;

static int cmp_item(const void *pa, const void *pb)
{
    const kv_item_t *a = pa, *b = pb;
    int c;
    switch (sort_target) {
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__CREATE:
        c = a->create_rev < b->create_rev ? -1 : a->create_rev > b->create_rev;
        break;
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__MOD:
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VERSION:
        c = a->mod_rev < b->mod_rev ? -1 : a->mod_rev > b->mod_rev;
        break;
    case ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VALUE: c = strcmp(a->value, b->value); break;
    default:
        c = bytes_cmp((bytes_t){(const uint8_t *)a->key, a->key_len},
                      (bytes_t){(const uint8_t *)b->key, b->key_len});
    }
    return sort_descending ? -c : c;
}

static void fill_kv(Etcdserverpb__KeyValue *kv, const kv_item_t *it, bool keys_only)
{
    etcdserverpb__key_value__init(kv);
    kv->key = (ProtobufCBinaryData){it->key_len, (uint8_t *)it->key};
    kv->create_revision = (int64_t)it->create_rev;
    kv->mod_revision = (int64_t)it->mod_rev;
    /* v2 nodes keep no write count: 1 until a key is overwritten, then 2
     * (docs/decisions.md). */
    kv->version = it->mod_rev == it->create_rev ? 1 : 2;
    if (!keys_only && it->value)
        kv->value = (ProtobufCBinaryData){strlen(it->value), (uint8_t *)it->value};
}

static bool rev_filter_passes(const Etcdserverpb__RangeRequest *rq, const kv_item_t *it)
{
    int64_t c = (int64_t)it->create_rev, m = (int64_t)it->mod_rev;
    return !(rq->min_mod_revision && m < rq->min_mod_revision) &&
           !(rq->max_mod_revision && m > rq->max_mod_revision) &&
           !(rq->min_create_revision && c < rq->min_create_revision) &&
           !(rq->max_create_revision && c > rq->max_create_revision);
}

static void v3_range(api_t *api, http_req_t h, const uint8_t *msg, size_t len)
{
    Etcdserverpb__RangeRequest *rq = etcdserverpb__range_request__unpack(NULL, len, msg);
    if (!rq) {
        send_error(api, h, GRPC_INTERNAL, "grpc: error unmarshalling request");
        return;
    }
    uint64_t now_rev = registry_index(api->reg);
    if (rq->key.len == 0) {
        send_error(api, h, GRPC_INVALID_ARGUMENT, ETCD_E_EMPTY_KEY);
    } else if (rq->revision > 0 && (uint64_t)rq->revision > now_rev) {
        send_error(api, h, GRPC_OUT_OF_RANGE, ETCD_E_FUTURE_REV);
    } else if (rq->revision > 0 && (uint64_t)rq->revision < now_rev) {
        /* Older revisions are not served in this version: etcd's own error
         * for a revision it no longer has (docs/decisions.md). */
        send_error(api, h, GRPC_OUT_OF_RANGE, ETCD_E_COMPACTED);
    } else {
        bytes_t key = {rq->key.data, rq->key.len}, end = {rq->range_end.data, rq->range_end.len};
        kv_list_t list = {0};
        char token[REGISTRY_MAX_TOKEN_BYTES + 1];
        /* Tokens are never listed: a range shows the keys of the one token
         * its start key names. */
        if (token_of(key, token, sizeof token)) {
            char dir[sizeof TOKEN_KEY_PREFIX + sizeof token];
            token_dir(dir, sizeof dir, token);
            reg_result_t res = {0};
            registry_get(api->reg, dir, time_wall_ns(), &res);
            if (res.err == REG_OK && res.node)
                collect(res.node, key, end, &list);
            reg_result_clear(&res);
        }
        if (list.failed) {
            send_error(api, h, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
            kv_list_free(&list);
            etcdserverpb__range_request__free_unpacked(rq, NULL);
            return;
        }
        /* Filters, then etcd's order: by key, unless a sort is asked for
         * (a target without an order means ascending). */
        size_t kept = 0;
        for (size_t i = 0; i < list.n; i++) {
            if (rev_filter_passes(rq, &list.items[i]))
                list.items[kept++] = list.items[i];
            else
                free(list.items[i].key);
        }
        list.n = kept;
        sort_target = ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY;
        sort_descending = 0;
        if (list.n > 1)
            qsort(list.items, list.n, sizeof *list.items, cmp_item);
        int order = rq->sort_order;
        if (order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE &&
            rq->sort_target != ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY)
            order = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND;
        if (order != ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE && list.n > 1) {
            sort_target = rq->sort_target;
            sort_descending = order == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND;
            qsort(list.items, list.n, sizeof *list.items, cmp_item);
        }
        size_t shown = rq->count_only ? 0 : list.n;
        if (rq->limit > 0 && (uint64_t)rq->limit < shown)
            shown = (size_t)rq->limit;
        Etcdserverpb__KeyValue *kvs = calloc(shown ? shown : 1, sizeof *kvs);
        Etcdserverpb__KeyValue **kvp = calloc(shown ? shown : 1, sizeof *kvp);
        if (!kvs || !kvp) {
            send_error(api, h, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
        } else {
            for (size_t i = 0; i < shown; i++) {
                fill_kv(&kvs[i], &list.items[i], rq->keys_only);
                kvp[i] = &kvs[i];
            }
            Etcdserverpb__ResponseHeader hd;
            fill_header(api, &hd);
            Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
            resp.header = &hd;
            resp.n_kvs = shown;
            resp.kvs = kvp;
            resp.count = (int64_t)list.n;
            resp.more = !rq->count_only && shown < list.n;
            send_message(api, h, &resp.base);
        }
        free(kvs);
        free(kvp);
        kv_list_free(&list);
    }
    etcdserverpb__range_request__free_unpacked(rq, NULL);
}

/* ---- Put ---------------------------------------------------------------- */

/* The shapes a Put may write (docs/decisions.md). */
enum put_shape { PUT_REFUSED, PUT_SIZE, PUT_MEMBER };

static enum put_shape put_shape_of(bytes_t key, char *token, size_t token_size)
{
    if (memchr(key.data, 0, key.len) || !token_of(key, token, token_size))
        return PUT_REFUSED;
    size_t off = sizeof TOKEN_KEY_PREFIX - 1 + strlen(token);
    const char *rest = (const char *)key.data + off;
    size_t rest_len = key.len - off;
    static const char size_key[] = "/_config/size";
    static const char members[] = "/" MEMBERS_DIR "/";
    if (rest_len == sizeof size_key - 1 && memcmp(rest, size_key, rest_len) == 0)
        return PUT_SIZE;
    if (rest_len > sizeof members - 1 && memcmp(rest, members, sizeof members - 1) == 0) {
        const char *id = rest + sizeof members - 1;
        size_t id_len = rest_len - (sizeof members - 1);
        /* An id is one segment with a token name's characters (etcd's are
         * lowercase hex). */
        if (registry_valid_token_name(id, id_len))
            return PUT_MEMBER;
    }
    return PUT_REFUSED;
}

/* Whether token directory `tok` holds a v2 member: a child other than
 * _config and members/. */
static bool token_has_v2_members(const reg_node_t *tok)
{
    for (const reg_node_t *ch = reg_node_first_child(tok); ch; ch = reg_node_next_sibling(ch)) {
        const char *name = reg_node_name(ch);
        if (strcmp(name, "_config") != 0 && strcmp(name, MEMBERS_DIR) != 0)
            return true;
    }
    return false;
}

/* Whether token directory `tok` holds v3 members (a members/ directory). */
static bool token_has_v3_members(const reg_node_t *tok)
{
    for (const reg_node_t *ch = reg_node_first_child(tok); ch; ch = reg_node_next_sibling(ch))
        if (strcmp(reg_node_name(ch), MEMBERS_DIR) == 0 && reg_node_is_dir(ch))
            return true;
    return false;
}

bool v3_token_refuses_v2_member(api_t *api, const char *key)
{
    bytes_t k = {(const uint8_t *)key, strlen(key)};
    char token[REGISTRY_MAX_TOKEN_BYTES + 1];
    if (!token_of(k, token, sizeof token))
        return false;
    size_t off = sizeof TOKEN_KEY_PREFIX - 1 + strlen(token);
    const char *rest = key + off;
    /* A v2 member is a key right below the token (or a POST to the token
     * itself); _config is refused elsewhere. */
    while (*rest == '/')
        rest++;
    size_t seg = strcspn(rest, "/");
    if (rest[seg + strspn(rest + seg, "/")] != '\0')
        return false; /* deeper than one segment: not a member key */
    if ((seg == 7 && memcmp(rest, "_config", 7) == 0) ||
        (seg == sizeof MEMBERS_DIR - 1 && memcmp(rest, MEMBERS_DIR, seg) == 0))
        return false;
    char dir[sizeof TOKEN_KEY_PREFIX + sizeof token];
    token_dir(dir, sizeof dir, token);
    reg_result_t res = {0};
    registry_get(api->reg, dir, time_wall_ns(), &res);
    bool refused = res.err == REG_OK && res.node && token_has_v3_members(res.node);
    reg_result_clear(&res);
    return refused;
}

/* A registry error as etcd would answer its kind. */
static void send_reg_error(api_t *api, http_req_t h, const reg_result_t *res)
{
    char msg[256];
    snprintf(msg, sizeof msg, "disco: %s", res->cause ? res->cause : "the change was refused");
    if (res->err == REG_E_TOO_MANY_KEYS)
        send_error(api, h, GRPC_RESOURCE_EXHAUSTED, msg);
    else if (res->err == REG_E_INTERNAL)
        send_error(api, h, GRPC_UNAVAILABLE, msg); /* out of memory or store: retry */
    else
        send_error(api, h, GRPC_FAILED_PRECONDITION, msg);
}

/* The answer to a Put that changed nothing or something: the header, and
 * the previous kv when asked for and there was one. */
static void send_put_ok(api_t *api, http_req_t h, bool want_prev, const reg_snap_t *prev)
{
    Etcdserverpb__ResponseHeader hd;
    fill_header(api, &hd);
    Etcdserverpb__PutResponse resp = ETCDSERVERPB__PUT_RESPONSE__INIT;
    resp.header = &hd;
    Etcdserverpb__KeyValue kv;
    if (want_prev && prev && !prev->is_dir) {
        kv_item_t it = {.key = prev->key,
                        .key_len = strlen(prev->key),
                        .value = prev->value,
                        .create_rev = prev->created_index,
                        .mod_rev = prev->modified_index};
        fill_kv(&kv, &it, false);
        resp.prev_kv = &kv;
    }
    send_message(api, h, &resp.base);
}

/* A whole number of 1..REGISTRY_MAX_SIZE, in decimal without sign or
 * leading zero; 0 otherwise. */
static unsigned parse_size(const char *v)
{
    if (!*v || *v == '0' || strlen(v) > 4)
        return 0;
    unsigned n = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        n = n * 10 + (unsigned)(*p - '0');
    }
    return n >= REGISTRY_MIN_SIZE && n <= REGISTRY_MAX_SIZE ? n : 0;
}

/*
 * A Put in progress. With the etcd backend B's mirror may lag etcd: a size
 * key Put through instance A a moment ago may not be here yet, and another
 * instance's create or delete of the same member may be on its way. A Put
 * the mirror refuses is then decided again once the mirror has caught up
 * with etcd (the registry's catch-up re-check, reg_recheck_refusal, which
 * v2 writes use too): the registry waits for that and answers the write's
 * refusal, and the Put is run again from the top against the mirror as it
 * now is, so it ends as an etcd Put would (a lost race to create a member
 * overwrites it; one to overwrite a deleted member creates it). Each run
 * after a refusal has waited for etcd's newest revision, so the runs are
 * bounded: past V3_PUT_MAX_RUNS the last refusal stands.
 */
#define V3_PUT_MAX_RUNS 4

typedef struct v3_put {
    api_t *api;
    enum put_shape shape;
    bool want_prev;
    /* Runs so far; from the second on, the mirror has caught up with etcd
     * as of the refusal (or the wait) that caused the run, and absence is
     * final. */
    unsigned runs;
    bool catching_up;                /* pending on registry_await_catch_up, not on a write */
    const char *token, *key, *value; /* the caller's, or after the struct (put_dup) */
    token_log_who_t who;             /* the same */
} v3_put_t;

static void put_run(v3_put_t *put, http_req_t h, const http_request_t *req);

/* A copy in one allocation (freed with free()), or NULL. */
static v3_put_t *put_dup(const v3_put_t *put)
{
    size_t t = strlen(put->token) + 1, k = strlen(put->key) + 1, v = strlen(put->value) + 1;
    v3_put_t *cp = malloc(sizeof *cp + t + k + v + token_log_who_size(&put->who));
    if (!cp)
        return NULL;
    *cp = *put;
    char *p = (char *)(cp + 1);
    cp->token = memcpy(p, put->token, t);
    cp->key = memcpy(p + t, put->key, k);
    cp->value = memcpy(p + t + k, put->value, v);
    cp->who = token_log_who_keep(&put->who, p + t + k + v);
    return cp;
}

/* Whether a settled refusal may be a race the mirror had not seen: a
 * pending write is refused only after the catch-up re-check, so the mirror
 * now shows the winner and the Put can be decided again. Limits and the
 * registry's own trouble are not races. */
static bool put_may_run_again(const v3_put_t *put, const reg_result_t *res)
{
    return res->err != REG_OK && res->err != REG_E_INTERNAL && res->err != REG_E_TOO_MANY_KEYS &&
           res->err != REG_E_INVALID_FIELD && put->runs < V3_PUT_MAX_RUNS;
}

/* A Put that changed the registry: its token log line, then its answer. */
static void send_put_done(const v3_put_t *put, http_req_t h, const reg_result_t *res)
{
    reg_result_t logged = *res; /* token_log changes only a refusal's cause */
    token_log_v2(put->api, &put->who, put->key, &logged);
    send_put_ok(put->api, h, put->want_prev,
                res->event && res->event->has_prev ? &res->event->prev : NULL);
}

static void answer_pending_put(void *ctx, http_req_t h, const reg_result_t *res)
{
    v3_put_t *put = ctx; /* freed by api_await_write after this returns */
    if (put->catching_up ? res->err == REG_OK : put_may_run_again(put, res)) {
        put->catching_up = false;
        put->runs++;
        put_run(put, h, NULL); /* copies `put` if it waits again */
    } else if (res->err != REG_OK) {
        send_reg_error(put->api, h, res);
    } else {
        send_put_done(put, h, res);
    }
}

/* True when `res` is pending and its answer will come later. */
static bool await_put(const v3_put_t *put, http_req_t h, const reg_result_t *res)
{
    if (!res->pending)
        return false;
    v3_put_t *cp = put_dup(put);
    if (!cp) {
        registry_forget(put->api->reg, res->ticket);
        send_error(put->api, h, GRPC_UNAVAILABLE, "disco: out of memory");
        return true;
    }
    api_await_write(put->api, h, METRICS_V3, "POST", res->ticket, answer_pending_put, cp);
    return true;
}

/* Answers the outcome of a registry write made for `put`. */
static void put_answer(const v3_put_t *put, http_req_t h, const reg_result_t *res)
{
    if (await_put(put, h, res))
        ; /* answered when it settles */
    else if (res->err != REG_OK)
        send_reg_error(put->api, h, res);
    else
        send_put_done(put, h, res);
}

/*
 * The token is not in the mirror on a first run. With the etcd backend it
 * may be in etcd already: the Put waits until the mirror has caught up
 * with etcd and then runs again, deciding from the mirror. A backend that
 * applies on propose has nothing to wait for: the mirror is the store, and
 * the token is absent.
 */
static void put_await_token(const v3_put_t *put, http_req_t h)
{
    reg_result_t res = {0};
    registry_await_catch_up(put->api->reg, &res);
    v3_put_t waiting = *put;
    waiting.catching_up = true;
    if (res.err != REG_OK)
        send_reg_error(put->api, h, &res);
    else if (!await_put(&waiting, h, &res))
        send_error(put->api, h, GRPC_PERMISSION_DENIED, ETCD_E_PERMISSION_DENIED);
    reg_result_clear(&res);
}

/* `req` is NULL on a run after a refusal: the budget was taken already. */
static void put_size(const v3_put_t *put, http_req_t h, const http_request_t *req)
{
    api_t *api = put->api;
    int64_t now = time_wall_ns();
    reg_result_t cur = {0};
    registry_get(api->reg, put->key, now, &cur);
    if (cur.err == REG_OK && cur.node) {
        /* The token exists: the same size again changes nothing. */
        const char *has = reg_node_value(cur.node) ? reg_node_value(cur.node) : "";
        reg_snap_t prev = {.key = (char *)put->key,
                           .value = (char *)reg_node_value(cur.node),
                           .created_index = reg_node_created_index(cur.node),
                           .modified_index = reg_node_modified_index(cur.node)};
        if (strcmp(has, put->value) == 0)
            send_put_ok(api, h, put->want_prev, &prev);
        else
            send_error(api, h, GRPC_PERMISSION_DENIED, ETCD_E_PERMISSION_DENIED);
        reg_result_clear(&cur);
        return;
    }
    reg_result_clear(&cur);
    unsigned size = parse_size(put->value);
    if (!size) {
        send_error(api, h, GRPC_INVALID_ARGUMENT,
                   "disco: the cluster size must be a whole number from 1 to 1000");
        return;
    }
    /* Creating a token is what /new does: the same budget. */
    if (req && discovery_take_new_budget(api, req) != 0) {
        send_error(api, h, GRPC_RESOURCE_EXHAUSTED, ETCD_E_TOO_MANY_REQUESTS);
        return;
    }
    /* A token made elsewhere meanwhile: refused (REG_E_NODE_EXIST) after
     * the catch-up re-check, and decided again above. */
    reg_result_t res = {0};
    registry_create_token(api->reg, put->token, size, now, &res);
    put_answer(put, h, &res); /* a new token's size key has no previous kv */
    reg_result_clear(&res);
}

static void put_member(const v3_put_t *put, http_req_t h)
{
    api_t *api = put->api;
    int64_t now = time_wall_ns();
    char dir[sizeof TOKEN_KEY_PREFIX + REGISTRY_MAX_TOKEN_BYTES + 1];
    token_dir(dir, sizeof dir, put->token);
    reg_result_t tok = {0};
    registry_get(api->reg, dir, now, &tok);
    if (tok.err != REG_OK || !tok.node) {
        reg_result_clear(&tok);
        if (put->runs == 0)
            put_await_token(put, h);
        else
            send_error(api, h, GRPC_PERMISSION_DENIED, ETCD_E_PERMISSION_DENIED);
        return;
    }
    bool v2_kind = token_has_v2_members(tok.node);
    reg_result_clear(&tok);
    if (v2_kind) {
        send_error(api, h, GRPC_FAILED_PRECONDITION,
                   "disco: the discovery token is used by v2 members; register with the v2 API");
        return;
    }
    reg_result_t cur = {0};
    registry_get(api->reg, put->key, now, &cur);
    bool exists = cur.err == REG_OK && cur.node;
    bool is_dir = exists && reg_node_is_dir(cur.node);
    reg_result_clear(&cur);
    if (is_dir) {
        send_error(api, h, GRPC_PERMISSION_DENIED, ETCD_E_PERMISSION_DENIED);
        return;
    }
    reg_ttl_t no_ttl = {0};
    reg_result_t res = {0};
    /* A re-registration keeps create_revision, as an etcd Put does: v2's
     * update keeps createdIndex, its set would not. A create or delete by
     * another instance meanwhile refuses these (REG_E_NODE_EXIST,
     * REG_E_KEY_NOT_FOUND) after the catch-up re-check, and the Put is
     * decided again against the mirror that then shows it. */
    if (exists)
        registry_update(api->reg, put->key, put->value, no_ttl, now, &res);
    else
        registry_create(api->reg, put->key, false, put->value, false, no_ttl, now, &res);
    put_answer(put, h, &res);
    reg_result_clear(&res);
}

static void put_run(v3_put_t *put, http_req_t h, const http_request_t *req)
{
    assert(put->shape == PUT_SIZE || put->shape == PUT_MEMBER);
    if (put->shape == PUT_SIZE)
        put_size(put, h, req);
    else
        put_member(put, h);
}

static void v3_put(api_t *api, const http_request_t *req, const uint8_t *msg, size_t len)
{
    http_req_t h = req->handle;
    token_log_who_t who = token_log_who(req);
    who.v3 = true;
    Etcdserverpb__PutRequest *rq = etcdserverpb__put_request__unpack(NULL, len, msg);
    if (!rq) {
        send_error(api, h, GRPC_INTERNAL, "grpc: error unmarshalling request");
        return;
    }
    char token[REGISTRY_MAX_TOKEN_BYTES + 1];
    bytes_t key = {rq->key.data, rq->key.len};
    enum put_shape shape = key.len ? put_shape_of(key, token, sizeof token) : PUT_REFUSED;
    char *k = NULL, *v = NULL;
    if (key.len == 0) {
        send_error(api, h, GRPC_INVALID_ARGUMENT, ETCD_E_EMPTY_KEY);
    } else if (rq->ignore_value && rq->value.len) {
        send_error(api, h, GRPC_INVALID_ARGUMENT, ETCD_E_VALUE_PROVIDED);
    } else if (rq->ignore_lease && rq->lease) {
        send_error(api, h, GRPC_INVALID_ARGUMENT, ETCD_E_LEASE_PROVIDED);
    } else if (rq->lease) {
        send_error(api, h, GRPC_NOT_FOUND, ETCD_E_LEASE_NOT_FOUND); /* disco grants none */
    } else if (shape == PUT_REFUSED) {
        send_error(api, h, GRPC_PERMISSION_DENIED, ETCD_E_PERMISSION_DENIED);
    } else if (rq->value.len > api->max_value_bytes ||
               (rq->value.len && memchr(rq->value.data, 0, rq->value.len))) {
        send_error(api, h, GRPC_INVALID_ARGUMENT, ETCD_E_REQUEST_TOO_LARGE);
    } else if (api->backend && !backend_writable(api->backend)) {
        send_error(api, h, GRPC_UNAVAILABLE,
                   "disco: the store is full or failing: writes are refused until it recovers");
    } else if (!(k = strndup((const char *)key.data, key.len)) ||
               !(v = strndup(rq->value.len ? (const char *)rq->value.data : "", rq->value.len))) {
        send_error(api, h, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
    } else if (rq->ignore_value) {
        /* Keep the value that is there: only an existing key has one. */
        reg_result_t cur = {0};
        registry_get(api->reg, k, time_wall_ns(), &cur);
        char *old = cur.err == REG_OK && cur.node && reg_node_value(cur.node)
                        ? strdup(reg_node_value(cur.node))
                        : NULL;
        bool found = cur.err == REG_OK && cur.node;
        reg_result_clear(&cur);
        if (!found)
            send_error(api, h, GRPC_INVALID_ARGUMENT, ETCD_E_KEY_NOT_FOUND);
        else if (!old)
            send_error(api, h, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
        else
            put_run(&(v3_put_t){api, shape, rq->prev_kv, 0, false, token, k, old, who}, h, req);
        free(old);
    } else {
        put_run(&(v3_put_t){api, shape, rq->prev_kv, 0, false, token, k, v, who}, h, req);
    }
    free(k);
    free(v);
    etcdserverpb__put_request__free_unpacked(rq, NULL);
}

/* ---- Watch -------------------------------------------------------------- */

/*
 * A Watch call is one bidirectional stream holding any number of watches.
 * Each watch is a registry waiter on its token (recursive on the token
 * directory for a range, or on one key), re-armed after every event from
 * the next revision: history first (start_revision in the past replays),
 * then live events. Messages leave in order, each once the state it shows
 * is durable: a stream queues them while the store lags (`out`), and
 * v3_on_durable lets them out.
 */
typedef struct v3_stream v3_stream_t;

/* Watches one Watch call may hold at once, and one connection across its
 * streams. A booting member holds one; the bounds keep a hostile client
 * from parking unbounded memory. Past them a create is refused as etcd
 * refuses one it cannot make (created and canceled together, watch_id -1,
 * the reason in cancel_reason): clientv3 then closes that watch's channel
 * with the reason, and the stream's other watches go on. */
#define V3_MAX_WATCHES_PER_STREAM 100
#define V3_MAX_WATCHES_PER_CONN 1000
/* A WatchRequest holds a key and a range end, each at most a value long,
 * and a few small fields: larger is not one a client means. */
#define V3_MAX_WATCH_MESSAGE(api) (2 * (api)->max_value_bytes + 1024)
#define V3_STR_(x) #x
#define V3_STR(x) V3_STR_(x)

typedef struct v3_watch {
    reg_waiter_t w;
    v3_stream_t *vs;
    struct v3_watch *next;
    int64_t id;
    buf_t key, end;  /* the range, as bytes */
    char *watch_key; /* the registry key its waiter watches, or NULL (no token) */
    bool recursive;
    uint64_t next_rev;
    bool prev_kv, no_put, no_delete;
    bool parked; /* its waiter is in the registry (counted in api->v3_parked) */
    bool paused; /* held back while its stream is stalled; goes on from next_rev */
} v3_watch_t;

struct v3_stream {
    api_t *api;
    http_req_t req;
    buf_t in; /* bytes of a message not yet whole */
    v3_watch_t *watches;
    long n_watches;     /* in `watches`, each counted in *conn_watches too */
    long *conn_watches; /* the connection's count (http_conn_counter) */
    int64_t next_id;
    /* messages waiting until the store has made `out_index` durable */
    buf_t out;
    uint64_t out_index;
    /* Out of memory while a registry notification ran: its other waiters
     * may still be called, so nothing is freed then; the stream ends on
     * the next v3_on_durable (it is on the pending list) or client message. */
    bool broken;
    bool too_large; /* broken by an event past V3_MAX_SEND_MESSAGE */
    bool too_slow;  /* broken: its client asked on without reading (-ENOBUFS) */
    /* The client reads too slowly (HTTP_STREAM_STALLED): its watches
     * deliver nothing more and leave the registry, as etcd's unsynced
     * watchers do; on_watch_drain replays from each one's next_rev. The
     * events wait in the token's history, not here. */
    bool stalled;
    bool is_pending;
    v3_stream_t *pending_next, *pending_prev;
};

static void pending_unlink(v3_stream_t *vs)
{
    if (!vs->is_pending)
        return;
    api_t *api = vs->api;
    if (vs->pending_prev)
        vs->pending_prev->pending_next = vs->pending_next;
    else
        api->v3_pending = vs->pending_next;
    if (vs->pending_next)
        vs->pending_next->pending_prev = vs->pending_prev;
    vs->pending_next = vs->pending_prev = NULL;
    vs->is_pending = false;
}

/* The waiter left the registry (fired, or unwatched). */
static void watch_unparked(v3_watch_t *wt)
{
    if (!wt->parked)
        return;
    wt->parked = false;
    assert(wt->vs->api->v3_parked > 0);
    wt->vs->api->v3_parked--;
}

static void watch_free(v3_stream_t *vs, v3_watch_t *wt)
{
    registry_unwatch(vs->api->reg, &wt->w);
    watch_unparked(wt);
    buf_free(&wt->key);
    buf_free(&wt->end);
    free(wt->watch_key);
    free(wt);
}

/* Gives the stream's watches back to its connection's count (before the
 * request is answered: the pointer may dangle after). */
static void stream_uncount(v3_stream_t *vs)
{
    if (!vs->n_watches)
        return;
    assert(*vs->conn_watches >= vs->n_watches);
    *vs->conn_watches -= vs->n_watches;
    vs->n_watches = 0;
}

/* Frees the stream and its watches; its request is answered or ended. */
static void stream_free(v3_stream_t *vs)
{
    stream_uncount(vs);
    while (vs->watches) {
        v3_watch_t *wt = vs->watches;
        vs->watches = wt->next;
        watch_free(vs, wt);
    }
    pending_unlink(vs);
    buf_free(&vs->in);
    buf_free(&vs->out);
    free(vs);
}

static const http_reply_t grpc_head = {.status = 200, .content_type = "application/grpc"};

/* Ends the call with a gRPC status, dropping what waits. */
static void stream_end(v3_stream_t *vs, enum grpc_code code, const char *msg)
{
    buf_t t = BUF_INIT;
    buf_printf(&t, "grpc-status: %d\r\ngrpc-message: ", (int)code);
    put_grpc_message(&t, msg);
    buf_puts(&t, "\r\n");
    http_reply_t r = grpc_head;
    r.trailers = buf_failed(&t) ? "grpc-status: 13\r\n" : buf_cstr(&t);
    metrics_count(vs->api->metrics, METRICS_V3, 200, "POST");
    stream_uncount(vs);
    http_reply(vs->req, &r);
    buf_free(&t);
    stream_free(vs);
}

static void pending_link(v3_stream_t *vs)
{
    api_t *api = vs->api;
    if (vs->is_pending)
        return;
    vs->is_pending = true;
    vs->pending_next = api->v3_pending;
    if (api->v3_pending)
        api->v3_pending->pending_prev = vs;
    api->v3_pending = vs;
}

/* Out of memory for a message: the stream cannot go on as etcd's would
 * (a lost event), so it ends, later (see `broken`). */
static void stream_break(v3_stream_t *vs)
{
    vs->broken = true;
    vs->out_index = 0;
    buf_free(&vs->out);
    pending_link(vs);
}

/* Ends a broken stream with why it broke. */
static void stream_end_broken(v3_stream_t *vs)
{
    stream_end(vs, GRPC_RESOURCE_EXHAUSTED,
               vs->too_large  ? V3_E_SEND_TOO_LARGE " (4194304)"
               : vs->too_slow ? "disco: the client does not read its answers"
                              : "disco: out of memory");
}

/* Hands what `out` holds to the stream. Returns false when the stream is
 * broken (see stream_break). */
static bool stream_send_out(v3_stream_t *vs)
{
    int rc = http_stream_send(vs->req, &grpc_head, vs->out.data, vs->out.len);
    buf_reset(&vs->out);
    if (rc == HTTP_STREAM_STALLED) {
        vs->stalled = true;
    } else if (rc == -ENOBUFS) {
        vs->too_slow = true;
        stream_break(vs);
        return false;
    } else if (rc < 0 && rc != -ESTALE) {
        stream_break(vs);
        return false;
    }
    return true;
}

static bool stream_queued(v3_stream_t *vs, uint64_t index);

/* Sends (or queues until durable) one message showing state `index`.
 * Returns false when the stream is broken (see stream_break). */
static bool stream_queue(v3_stream_t *vs, const ProtobufCMessage *m, uint64_t index)
{
    if (vs->broken)
        return false;
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > V3_MAX_SEND_MESSAGE) {
        /* An event the client cannot take: the watch cannot go on without
         * it, so the stream ends (see stream_break). */
        vs->too_large = true;
        stream_break(vs);
        return false;
    }
    size_t at = vs->out.len;
    buf_reserve(&vs->out, GRPC_PREFIX_BYTES + n);
    if (buf_failed(&vs->out)) {
        stream_break(vs);
        return false;
    }
    uint8_t prefix[GRPC_PREFIX_BYTES] = {0, (uint8_t)(n >> 24), (uint8_t)(n >> 16),
                                         (uint8_t)(n >> 8), (uint8_t)n};
    buf_append(&vs->out, prefix, sizeof prefix);
    protobuf_c_message_pack(m, (uint8_t *)vs->out.data + at + GRPC_PREFIX_BYTES);
    vs->out.len += n;
    return stream_queued(vs, index);
}

/* A message is whole in `out`: it leaves now, or once `index` is durable. */
static bool stream_queued(v3_stream_t *vs, uint64_t index)
{
    if (index > vs->out_index)
        vs->out_index = index;
    api_t *api = vs->api;
    if (api->backend && backend_durable_index(api->backend) < vs->out_index) {
        pending_link(vs);
        return true;
    }
    return stream_send_out(vs);
}

void v3_on_durable(api_t *api)
{
    uint64_t durable = api->backend ? backend_durable_index(api->backend) : UINT64_MAX;
    for (v3_stream_t *vs = api->v3_pending, *next; vs; vs = next) {
        next = vs->pending_next;
        if (vs->out_index > durable)
            continue;
        pending_unlink(vs);
        if (vs->broken || !stream_send_out(vs))
            stream_end_broken(vs);
    }
}

/* A watch response without events; `compact_rev` > 0 with `canceled`
 * only (send_watch_compacted). */
static bool send_watch_answer(v3_stream_t *vs, int64_t id, bool created, bool canceled,
                              const char *reason, uint64_t compact_rev, uint64_t index)
{
    Etcdserverpb__ResponseHeader hd;
    fill_header(vs->api, &hd);
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    resp.header = &hd;
    resp.watch_id = id;
    resp.created = created;
    resp.canceled = canceled;
    resp.compact_revision = (int64_t)compact_rev;
    resp.cancel_reason = (char *)(reason ? reason : "");
    return stream_queue(vs, &resp.base, index);
}

static bool send_watch_response(v3_stream_t *vs, int64_t id, bool created, bool canceled,
                                const char *reason, uint64_t index)
{
    return send_watch_answer(vs, id, created, canceled, reason, 0, index);
}

/* etcd's answer to a watch whose start revision was compacted (its
 * watchable store): canceled, with the compact revision and no reason;
 * clientv3 reads a compact_revision as ErrCompacted, and its user reads
 * the state and watches again from there. `compact_rev` is the lowest
 * revision a watch of that token can start from again. */
static bool send_watch_compacted(v3_stream_t *vs, int64_t id, uint64_t compact_rev, uint64_t index)
{
    assert(compact_rev > 0);
    return send_watch_answer(vs, id, false, true, NULL, compact_rev, index);
}

static void fill_event_kv(Etcdserverpb__KeyValue *kv, const reg_snap_t *n, uint64_t index,
                          bool is_delete)
{
    etcdserverpb__key_value__init(kv);
    kv->key = (ProtobufCBinaryData){strlen(n->key), (uint8_t *)n->key};
    if (is_delete) {
        kv->mod_revision = (int64_t)index; /* as etcd: a tombstone's revision */
        return;
    }
    kv->create_revision = (int64_t)n->created_index;
    kv->mod_revision = (int64_t)n->modified_index;
    kv->version = n->modified_index == n->created_index ? 1 : 2;
    if (n->value)
        kv->value = (ProtobufCBinaryData){strlen(n->value), (uint8_t *)n->value};
}

/*
 * A woken event goes to every watch it matches within one registry
 * notification (and a replay reads the same events again): its Event
 * message, with and without prev_kv, and the response header of the
 * revision it is sent at are encoded once and kept in the api (the
 * v3_ev_* fields); each watch's WatchResponse is put together from those
 * bytes and its watch id. Fields go in protobuf-c's order (header 1,
 * watch_id 2, events 11), so the bytes are exactly what packing the whole
 * message would give.
 */
#define PB_TAG_HEADER 0x0a   /* field 1, length-delimited */
#define PB_TAG_WATCH_ID 0x10 /* field 2, varint */
#define PB_TAG_EVENTS 0x5a   /* field 11, length-delimited */
#define V3_EV_KEEP_BYTES (64 * 1024)

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Empties `b`, giving back a large event's memory. */
static void ev_buf_clear(buf_t *b)
{
    if (b->cap > V3_EV_KEEP_BYTES)
        buf_free(b);
    else
        buf_reset(b);
}

void v3_free(api_t *api)
{
    buf_free(&api->v3_ev_header);
    buf_free(&api->v3_ev_bytes[0]);
    buf_free(&api->v3_ev_bytes[1]);
}

/* Packs `m` into `b` (empty). False when out of memory. */
static bool pack_into(buf_t *b, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    assert(b->len == 0);
    buf_reserve(b, n);
    if (buf_failed(b))
        return false;
    protobuf_c_message_pack(m, (uint8_t *)b->data);
    b->len = n;
    return true;
}

/* The header and Event bytes of `ev` as sent now (encoded on first use).
 * False when out of memory. */
static bool event_encoded(api_t *api, const reg_event_t *ev, bool with_prev, const buf_t **header,
                          const buf_t **event)
{
    uint64_t rev = registry_index(api->reg);
    if (api->v3_ev_index != ev->index || api->v3_ev_rev != rev) {
        ev_buf_clear(&api->v3_ev_header);
        ev_buf_clear(&api->v3_ev_bytes[0]);
        ev_buf_clear(&api->v3_ev_bytes[1]);
        api->v3_ev_index = ev->index;
        api->v3_ev_rev = rev;
    }
    bool ok = true;
    if (api->v3_ev_header.len == 0) {
        Etcdserverpb__ResponseHeader hd;
        fill_header(api, &hd);
        ok = pack_into(&api->v3_ev_header, &hd.base);
    }
    buf_t *b = &api->v3_ev_bytes[with_prev];
    if (ok && b->len == 0) {
        bool is_delete = ev->action == REG_ACT_DELETE || ev->action == REG_ACT_CAD ||
                         ev->action == REG_ACT_EXPIRE;
        Etcdserverpb__KeyValue kv, prev;
        fill_event_kv(&kv, &ev->node, ev->index, is_delete);
        Etcdserverpb__Event e = ETCDSERVERPB__EVENT__INIT;
        e.type = is_delete ? ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE
                           : ETCDSERVERPB__EVENT__EVENT_TYPE__PUT;
        e.kv = &kv;
        if (with_prev) {
            fill_event_kv(&prev, &ev->prev, ev->index, false);
            e.prev_kv = &prev;
        }
        ok = pack_into(b, &e.base);
    }
    if (!ok) {
        api->v3_ev_index = 0; /* nothing half-made is kept */
        ev_buf_clear(&api->v3_ev_header);
        ev_buf_clear(b);
        return false;
    }
    *header = &api->v3_ev_header;
    *event = b;
    return true;
}

/* Queues WatchResponse{header, watch_id, events: [event]} from encoded
 * parts. Returns false when the stream is broken. */
static bool stream_queue_event(v3_stream_t *vs, int64_t id, const buf_t *header, const buf_t *event,
                               uint64_t index)
{
    if (vs->broken)
        return false;
    size_t n = 1 + varint_len(header->len) + header->len + 1 + varint_len(event->len) + event->len;
    if (id != 0)
        n += 1 + varint_len((uint64_t)id); /* proto3: a zero id is not sent */
    if (n > V3_MAX_SEND_MESSAGE) {
        vs->too_large = true; /* see stream_queue */
        stream_break(vs);
        return false;
    }
    buf_reserve(&vs->out, GRPC_PREFIX_BYTES + n);
    if (buf_failed(&vs->out)) {
        stream_break(vs);
        return false;
    }
    uint8_t *p = (uint8_t *)vs->out.data + vs->out.len, *start = p;
    *p++ = 0;
    *p++ = (uint8_t)(n >> 24);
    *p++ = (uint8_t)(n >> 16);
    *p++ = (uint8_t)(n >> 8);
    *p++ = (uint8_t)n;
    *p++ = PB_TAG_HEADER;
    p = put_varint(p, header->len);
    memcpy(p, header->data, header->len);
    p += header->len;
    if (id != 0) {
        *p++ = PB_TAG_WATCH_ID;
        p = put_varint(p, (uint64_t)id);
    }
    *p++ = PB_TAG_EVENTS;
    p = put_varint(p, event->len);
    memcpy(p, event->data, event->len);
    p += event->len;
    assert((size_t)(p - start) == GRPC_PREFIX_BYTES + n);
    (void)start;
    vs->out.len += GRPC_PREFIX_BYTES + n;
    return stream_queued(vs, index);
}

/* Sends event `ev` to watch `wt` if it is in its range. Returns false when
 * the stream ended. */
static bool watch_deliver(v3_watch_t *wt, const reg_event_t *ev)
{
    if (ev->node.is_dir)
        return true; /* v3 has no directories */
    bytes_t k = {(const uint8_t *)ev->node.key, strlen(ev->node.key)};
    if (!in_range(k, (bytes_t){(const uint8_t *)wt->key.data, wt->key.len},
                  (bytes_t){(const uint8_t *)wt->end.data, wt->end.len}))
        return true;
    bool is_delete =
        ev->action == REG_ACT_DELETE || ev->action == REG_ACT_CAD || ev->action == REG_ACT_EXPIRE;
    if ((is_delete && wt->no_delete) || (!is_delete && wt->no_put))
        return true;
    api_t *api = wt->vs->api;
    const buf_t *header, *event;
    if (!event_encoded(api, ev, wt->prev_kv && ev->has_prev && !ev->prev.is_dir, &header, &event)) {
        stream_break(wt->vs);
        return false;
    }
    return stream_queue_event(wt->vs, wt->id, header, event, registry_index(api->reg));
}

static void on_watch_event(reg_waiter_t *w, const reg_event_t *ev);

/* Replays history from wt->next_rev, then parks the waiter. Returns false
 * when the stream ended. */
static bool watch_pump(v3_watch_t *wt)
{
    if (!wt->watch_key)
        return true; /* no such token: nothing will ever match */
    for (;;) {
        if (wt->vs->stalled) {
            wt->paused = true; /* on_watch_drain goes on from next_rev */
            return true;
        }
        reg_result_t out = {0};
        registry_watch(wt->vs->api->reg, wt->watch_key, wt->recursive, wt->next_rev, &wt->w,
                       on_watch_event, wt, &out);
        if (out.err == REG_E_EVENT_INDEX_CLEARED) {
            /* Its start is before the history the mirror has whole (a
             * resync past an etcd compaction, or older than the events
             * kept): as etcd answers a compacted start. */
            uint64_t from = out.history_from;
            reg_result_clear(&out);
            return send_watch_compacted(wt->vs, wt->id, from, registry_index(wt->vs->api->reg));
        }
        if (out.err != REG_OK) {
            /* The token is gone (or its history unreadable): the watch
             * cannot go on, as etcd cancels a compacted one. */
            char reason[200];
            snprintf(reason, sizeof reason, "disco: %s", out.cause ? out.cause : "watch ended");
            reg_result_clear(&out);
            return send_watch_response(wt->vs, wt->id, false, true, reason,
                                       registry_index(wt->vs->api->reg));
        }
        const reg_event_t *ev = out.event;
        if (!ev) {
            reg_result_clear(&out);
            wt->parked = true;
            wt->vs->api->v3_parked++;
            return true; /* parked */
        }
        wt->next_rev = ev->index + 1;
        bool live = watch_deliver(wt, ev);
        reg_result_clear(&out);
        if (!live)
            return false;
    }
}

static void on_watch_event(reg_waiter_t *w, const reg_event_t *ev)
{
    v3_watch_t *wt = w->ctx;
    watch_unparked(wt); /* the registry let go of the waiter to call this */
    if (wt->vs->broken)
        return; /* ends soon; its waiters must stay valid until then */
    if (!ev) {
        send_watch_response(wt->vs, wt->id, false, true, "disco: the token was removed",
                            registry_index(wt->vs->api->reg));
        return;
    }
    if (ev == REG_EVENT_CLEARED) {
        /* A resync lost the history it waits in: watched again from the
         * same revision, the registry refuses it and says from which
         * revision the history is whole again (watch_pump cancels it with
         * that compact_revision). */
        watch_pump(wt);
        return;
    }
    if (wt->vs->stalled) {
        /* Its client reads too slowly: the event waits in the history. */
        wt->next_rev = ev->index;
        wt->paused = true;
        return;
    }
    wt->next_rev = ev->index + 1;
    if (watch_deliver(wt, ev))
        watch_pump(wt); /* re-armed from the next revision */
}

/* The stalled stream drained (http_stream_on_drain): its paused watches
 * replay what they missed from the history, until all are live again or
 * the stream stalls again. */
static void on_watch_drain(http_req_t req, void *ctx)
{
    (void)req;
    v3_stream_t *vs = ctx;
    vs->stalled = false;
    for (v3_watch_t *wt = vs->watches; wt && !vs->stalled && !vs->broken; wt = wt->next) {
        if (!wt->paused)
            continue;
        wt->paused = false;
        if (!watch_pump(wt))
            break;
    }
    if (vs->broken) {
        /* Outside every registry notification: it can end now. */
        pending_unlink(vs);
        stream_end_broken(vs);
    }
}

static bool watch_create(v3_stream_t *vs, const Etcdserverpb__WatchCreateRequest *cr)
{
    api_t *api = vs->api;
    int64_t id = vs->next_id;
    if (cr->watch_id > 0) {
        for (v3_watch_t *o = vs->watches; o; o = o->next)
            if (o->id == cr->watch_id)
                return send_watch_response(vs, cr->watch_id, true, true,
                                           "etcdserver: duplicate watch ID",
                                           registry_index(api->reg));
        id = cr->watch_id;
    }
    if (vs->n_watches >= V3_MAX_WATCHES_PER_STREAM)
        return send_watch_response(vs, -1, true, true,
                                   "disco: too many watches on this stream (at most " V3_STR(
                                       V3_MAX_WATCHES_PER_STREAM) ")",
                                   registry_index(api->reg));
    if (*vs->conn_watches >= V3_MAX_WATCHES_PER_CONN)
        return send_watch_response(vs, -1, true, true,
                                   "disco: too many watches on this connection (at most " V3_STR(
                                       V3_MAX_WATCHES_PER_CONN) ")",
                                   registry_index(api->reg));
    v3_watch_t *wt = calloc(1, sizeof *wt);
    if (!wt) {
        stream_end(vs, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
        return false;
    }
    wt->vs = vs;
    wt->id = id;
    if (id >= vs->next_id)
        vs->next_id = id + 1;
    buf_append(&wt->key, cr->key.data, cr->key.len);
    buf_append(&wt->end, cr->range_end.data, cr->range_end.len);
    for (size_t i = 0; i < cr->n_filters; i++) {
        if (cr->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT)
            wt->no_put = true;
        else if (cr->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE)
            wt->no_delete = true;
    }
    wt->prev_kv = cr->prev_kv;
    uint64_t now_rev = registry_index(api->reg);
    wt->next_rev = cr->start_revision > 0 ? (uint64_t)cr->start_revision : now_rev + 1;
    char token[REGISTRY_MAX_TOKEN_BYTES + 1];
    bytes_t key = {cr->key.data, cr->key.len};
    bool ok = true;
    if (key.len && !memchr(key.data, 0, key.len) && token_of(key, token, sizeof token)) {
        if (cr->range_end.len) {
            buf_t dir = BUF_INIT;
            buf_printf(&dir, "%s%s", TOKEN_KEY_PREFIX, token);
            wt->watch_key = buf_steal(&dir);
            wt->recursive = true;
        } else {
            wt->watch_key = strndup((const char *)key.data, key.len);
        }
        ok = wt->watch_key != NULL;
    }
    if (!ok || buf_failed(&wt->key) || buf_failed(&wt->end)) {
        watch_free(vs, wt);
        stream_end(vs, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
        return false;
    }
    wt->next = vs->watches;
    vs->watches = wt;
    vs->n_watches++;
    (*vs->conn_watches)++;
    /* `created` first, then history and live events. */
    if (!send_watch_response(vs, id, true, false, NULL, now_rev))
        return false;
    return watch_pump(wt);
}

static bool watch_cancel(v3_stream_t *vs, int64_t id)
{
    for (v3_watch_t **p = &vs->watches; *p; p = &(*p)->next) {
        if ((*p)->id != id)
            continue;
        v3_watch_t *wt = *p;
        *p = wt->next;
        watch_free(vs, wt);
        assert(vs->n_watches > 0);
        vs->n_watches--;
        (*vs->conn_watches)--;
        return send_watch_response(vs, id, false, true, NULL, registry_index(vs->api->reg));
    }
    return true; /* an unknown id: ignored, as etcd does */
}

/* One WatchRequest. Returns false when the stream ended. */
static bool watch_request(v3_stream_t *vs, const uint8_t *msg, size_t len)
{
    Etcdserverpb__WatchRequest *rq = etcdserverpb__watch_request__unpack(NULL, len, msg);
    if (!rq) {
        stream_end(vs, GRPC_INTERNAL, "grpc: error unmarshalling request");
        return false;
    }
    bool live = true;
    switch (rq->request_union_case) {
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST:
        live = watch_create(vs, rq->create_request);
        break;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST:
        live = watch_cancel(vs, rq->cancel_request->watch_id);
        break;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST:
        live = send_watch_response(vs, -1, false, false, NULL, registry_index(vs->api->reg));
        break;
    default: break; /* an empty request: nothing to do */
    }
    etcdserverpb__watch_request__free_unpacked(rq, NULL);
    return live;
}

static void on_watch_body(http_req_t req, void *ctx, const char *data, size_t len, bool end)
{
    (void)req;
    v3_stream_t *vs = ctx;
    if (vs->broken) {
        pending_unlink(vs);
        stream_end_broken(vs);
        return;
    }
    if (end)
        return; /* etcd keeps sending after the client closes its side */
    buf_append(&vs->in, data, len);
    if (buf_failed(&vs->in)) {
        stream_end(vs, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
        return;
    }
    while (vs->in.len >= GRPC_PREFIX_BYTES) {
        const uint8_t *b = (const uint8_t *)vs->in.data;
        size_t mlen = (size_t)b[1] << 24 | (size_t)b[2] << 16 | (size_t)b[3] << 8 | b[4];
        if (b[0] != 0) {
            stream_end(vs, GRPC_UNIMPLEMENTED, "grpc: compressed messages are not supported");
            return;
        }
        if (mlen > V3_MAX_WATCH_MESSAGE(vs->api)) {
            char msg[100];
            snprintf(msg, sizeof msg, "grpc: received message larger than max (%zu vs. %zu)", mlen,
                     V3_MAX_WATCH_MESSAGE(vs->api));
            stream_end(vs, GRPC_RESOURCE_EXHAUSTED, msg);
            return;
        }
        if (vs->in.len < GRPC_PREFIX_BYTES + mlen)
            return;
        if (!watch_request(vs, b + GRPC_PREFIX_BYTES, mlen))
            return;
        buf_consume(&vs->in, GRPC_PREFIX_BYTES + mlen);
    }
}

static void on_watch_end(http_req_t req, void *ctx, enum http_park_end why)
{
    v3_stream_t *vs = ctx;
    if (why == HTTP_PARK_CLOSED) {
        stream_free(vs); /* the stream or its connection is gone */
        return;
    }
    if (why == HTTP_PARK_TIMEOUT) {
        http_park(req, HTTP_PARK_WATCH, on_watch_end, vs); /* a watch waits as long as it likes */
        return;
    }
    stream_end(vs, GRPC_UNAVAILABLE, "disco: the server is stopping");
}

static void v3_watch(api_t *api, const http_request_t *req)
{
    v3_stream_t *vs = calloc(1, sizeof *vs);
    if (!vs) {
        send_error(api, req->handle, GRPC_RESOURCE_EXHAUSTED, "disco: out of memory");
        return;
    }
    vs->api = api;
    vs->req = req->handle;
    vs->conn_watches = http_conn_counter(req->handle);
    assert(vs->conn_watches); /* the request is live while its handler runs */
    http_park(req->handle, HTTP_PARK_WATCH, on_watch_end, vs);
    http_stream_on_drain(req->handle, on_watch_drain, vs);
    if (http_stream_on_body(req->handle, on_watch_body, vs) != 0) {
        /* Not a stream (the client sent its whole body at once): handle
         * what came, and the call stays open for the events. */
        on_watch_body(req->handle, vs, req->body, req->body_len, false);
    }
}

/* ---- dispatch ----------------------------------------------------------- */

bool v3_is_grpc(const http_request_t *req)
{
    static const char ct[] = "application/grpc";
    return req->is_h2 && strncasecmp(req->content_type, ct, sizeof ct - 1) == 0 &&
           (req->content_type[sizeof ct - 1] == '\0' || req->content_type[sizeof ct - 1] == '+' ||
            req->content_type[sizeof ct - 1] == ';');
}

bool v3_is_streaming(const char *path, const char *content_type)
{
    http_request_t probe = {.content_type = content_type, .is_h2 = true};
    return v3_is_grpc(&probe) && strcmp(path, "/etcdserverpb.KV/Range") != 0 &&
           strcmp(path, "/etcdserverpb.KV/Put") != 0 &&
           strcmp(path, "/etcdserverpb.Auth/Authenticate") != 0;
}

void v3_handle(api_t *api, const http_request_t *req)
{
    http_req_t h = req->handle;
    const char *path = req->path;
    /* One unary message: the 5-byte prefix, then exactly its length. */
    const uint8_t *b = (const uint8_t *)req->body;
    size_t mlen = 0;
    bool framed = req->body_len >= GRPC_PREFIX_BYTES;
    if (framed) {
        mlen = (size_t)b[1] << 24 | (size_t)b[2] << 16 | (size_t)b[3] << 8 | b[4];
        framed = mlen == req->body_len - GRPC_PREFIX_BYTES;
    }
    if (strcmp(path, "/etcdserverpb.Auth/Authenticate") == 0) {
        send_error(api, h, GRPC_FAILED_PRECONDITION, ETCD_E_AUTH_NOT_ENABLED);
        return;
    }
    if (strcmp(path, "/etcdserverpb.Watch/Watch") == 0) {
        v3_watch(api, req);
        return;
    }
    bool is_range = strcmp(path, "/etcdserverpb.KV/Range") == 0;
    bool is_put = strcmp(path, "/etcdserverpb.KV/Put") == 0;
    if (!is_range && !is_put) {
        char msg[160];
        snprintf(msg, sizeof msg, "unknown method %.120s", path);
        send_error(api, h, GRPC_UNIMPLEMENTED, msg);
    } else if (framed && b[0] != 0) {
        send_error(api, h, GRPC_UNIMPLEMENTED,
                   "grpc: compressed messages are not supported (no grpc-encoding is offered)");
    } else if (!framed) {
        send_error(api, h, GRPC_INTERNAL, "grpc: the request is not one length-prefixed message");
    } else if (is_range) {
        v3_range(api, h, b + GRPC_PREFIX_BYTES, mlen);
    } else {
        v3_put(api, req, b + GRPC_PREFIX_BYTES, mlen);
    }
}
