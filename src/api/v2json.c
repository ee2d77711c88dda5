/*
 * v2json.c - etcd v2 answers on the wire; see v2json.h.
 *
 * Node field order, from etcd's NodeExtern: key, value, dir, expiration,
 * ttl, nodes, modifiedIndex, createdIndex. A file's value is always present
 * (even ""), a directory never has one; empty fields are omitted.
 */
#include "api/v2json.h"

#include <stdlib.h>
#include <string.h>

#include "util/timeutil.h"

const char *v2json_error_message(int code)
{
    switch (code) {
    case 100: return "Key not found";
    case 101: return "Compare failed";
    case 102: return "Not a file";
    case 103: return "Reached the max number of peers in the cluster";
    case 104: return "Not a directory";
    case 105: return "Key already exists";
    case 106: return "The prefix of given key is a keyword in etcd";
    case 107: return "Root is read only";
    case 108: return "Directory not empty";
    case 109: return "Peer address has existed";
    case 110: return "The request requires user authentication";
    case 200: return "Value is Required in POST form";
    case 201: return "PrevValue is Required in POST form";
    case 202: return "The given TTL in POST form is not a number";
    case 203: return "The given index in POST form is not a number";
    case 204: return "Value or TTL is required in POST form";
    case 205: return "The given timeout in POST form is not a number";
    case 206: return "Name is required in POST form";
    case 207: return "Index or value is required";
    case 208: return "Index and value cannot both be specified";
    case 209: return "Invalid field";
    case 210: return "Invalid POST form";
    case 211: return "Value provided on refresh";
    case 212: return "A TTL must be provided on refresh";
    case 300: return "Raft Internal Error";
    case 301: return "During Leader Election";
    case 400: return "watcher is cleared due to etcd recovery";
    case 401: return "The event in requested index is outdated and cleared";
    case 402: return "Standby Internal Error";
    case 403: return "Invalid active size";
    case 404: return "Standby remove delay";
    case 500: return "Internal error in client";
    default: return "Unknown error";
    }
}

int v2json_error_status(int code)
{
    switch (code) {
    case 100: return 404;
    case 101:
    case 105: return 412;
    case 102:
    case 103: /* disco: a token's key limit (etcd 3 never sends 103) */
    case 108: return 403;
    case 110: return 401;
    case 300:
    case 301: return 500;
    default: return 400;
    }
}

void v2json_error(buf_t *b, int code, const char *cause, uint64_t index)
{
    buf_puts(b, "{\"errorCode\":");
    buf_put_u64(b, (uint64_t)code);
    buf_puts(b, ",\"message\":");
    const char *msg = v2json_error_message(code);
    buf_put_json_string(b, msg, strlen(msg));
    if (cause && *cause) {
        buf_puts(b, ",\"cause\":");
        buf_put_json_string(b, cause, strlen(cause));
    }
    buf_puts(b, ",\"index\":");
    buf_put_u64(b, index);
    buf_puts(b, "}\n");
}

static void put_expiry(buf_t *b, int64_t expire_ns, int64_t ttl_s)
{
    if (!expire_ns)
        return;
    char ts[40];
    size_t n = time_format_rfc3339nano(expire_ns, ts);
    buf_puts(b, ",\"expiration\":\"");
    buf_append(b, ts, n);
    buf_putc(b, '"');
    if (ttl_s) {
        buf_puts(b, ",\"ttl\":");
        buf_put_i64(b, ttl_s);
    }
}

static void put_indexes(buf_t *b, uint64_t modified, uint64_t created)
{
    if (modified) {
        buf_puts(b, ",\"modifiedIndex\":");
        buf_put_u64(b, modified);
    }
    if (created) {
        buf_puts(b, ",\"createdIndex\":");
        buf_put_u64(b, created);
    }
}

static void put_key(buf_t *b, const char *key)
{
    buf_puts(b, "{\"key\":");
    buf_put_json_string(b, key, strlen(key));
}

static void put_snap(buf_t *b, const reg_snap_t *s)
{
    put_key(b, s->key);
    if (s->value) {
        buf_puts(b, ",\"value\":");
        buf_put_json_string(b, s->value, strlen(s->value));
    }
    if (s->is_dir)
        buf_puts(b, ",\"dir\":true");
    put_expiry(b, s->expire_ns, s->ttl_s);
    put_indexes(b, s->modified_index, s->created_index);
    buf_putc(b, '}');
}

void v2json_event(buf_t *b, const reg_event_t *ev, bool no_value)
{
    buf_puts(b, "{\"action\":\"");
    buf_puts(b, reg_action_name(ev->action));
    buf_putc(b, '"');
    if (!no_value) {
        buf_puts(b, ",\"node\":");
        put_snap(b, &ev->node);
        if (ev->has_prev) {
            buf_puts(b, ",\"prevNode\":");
            put_snap(b, &ev->prev);
        }
    }
    buf_puts(b, "}\n");
}

bool v2json_event_wire(reg_event_t *ev, const char **data, size_t *len)
{
    if (!ev->wire) {
        buf_t b = BUF_INIT;
        v2json_event(&b, ev, false);
        if (buf_failed(&b)) {
            buf_free(&b);
            return false;
        }
        ev->wire_len = b.len;
        ev->wire = buf_steal(&b);
    }
    *data = ev->wire;
    *len = ev->wire_len;
    return true;
}

/* Siblings share their parent's key, so ordering by name orders by key. */
static int by_key(const void *a, const void *b)
{
    return strcmp(reg_node_name(*(const reg_node_t *const *)a),
                  reg_node_name(*(const reg_node_t *const *)b));
}

/*
 * A listing walks down the tree carrying one key buffer: it holds the
 * current node's key, and a child's key is that plus "/" and its name, so
 * no key is built from the root twice.
 */
typedef struct render {
    buf_t *out;
    buf_t key;
    bool recursive, sorted;
    int64_t now_ns;
    bool shows_ttl; /* a node with a TTL was rendered */
} render_t;

static void put_node(render_t *r, const reg_node_t *n, bool with_children);

/* The visible children of a directory (r->key holds its key), in creation
 * order or by key. */
static void put_children(render_t *r, const reg_node_t *dir)
{
    size_t count = 0;
    for (const reg_node_t *c = reg_node_first_child(dir); c; c = reg_node_next_sibling(c))
        count += !reg_node_is_hidden(c);
    if (count == 0)
        return;
    const reg_node_t *stack_list[16];
    const reg_node_t **list = count <= 16 ? stack_list : malloc(count * sizeof *list);
    if (!list) {
        r->out->failed = true;
        return;
    }
    size_t i = 0;
    for (const reg_node_t *c = reg_node_first_child(dir); c; c = reg_node_next_sibling(c))
        if (!reg_node_is_hidden(c))
            list[i++] = c;
    if (r->sorted)
        qsort(list, count, sizeof *list, by_key);
    size_t dir_len = r->key.len;
    buf_puts(r->out, ",\"nodes\":[");
    for (i = 0; i < count; i++) {
        if (i)
            buf_putc(r->out, ',');
        buf_truncate(&r->key, dir_len);
        buf_putc(&r->key, '/');
        buf_puts(&r->key, reg_node_name(list[i]));
        put_node(r, list[i], r->recursive);
    }
    buf_truncate(&r->key, dir_len);
    buf_putc(r->out, ']');
    if (list != stack_list)
        free(list);
}

/* One node; r->key holds its key. */
static void put_node(render_t *r, const reg_node_t *n, bool with_children)
{
    buf_t *b = r->out;
    if (buf_failed(&r->key))
        b->failed = true;
    put_key(b, buf_cstr(&r->key));
    const char *v = reg_node_value(n);
    if (v) {
        buf_puts(b, ",\"value\":");
        buf_put_json_string(b, v, strlen(v));
    } else {
        buf_puts(b, ",\"dir\":true");
    }
    int64_t exp = reg_node_expire_ns(n);
    if (exp)
        r->shows_ttl = true;
    put_expiry(b, exp, time_ttl_left_s(exp, r->now_ns));
    if (!v && with_children)
        put_children(r, n);
    put_indexes(b, reg_node_modified_index(n), reg_node_created_index(n));
    buf_putc(b, '}');
}

bool v2json_get(buf_t *b, const reg_node_t *n, bool recursive, bool sorted, int64_t now_ns)
{
    render_t r = {
        .out = b, .key = BUF_INIT, .recursive = recursive, .sorted = sorted, .now_ns = now_ns};
    reg_node_put_key(n, &r.key);
    buf_puts(b, "{\"action\":\"get\",\"node\":");
    /* The node asked for always lists its children; deeper levels only
     * when recursive (etcd's loadInternalNode then Repr). */
    put_node(&r, n, true);
    buf_puts(b, "}\n");
    buf_free(&r.key);
    return r.shows_ttl;
}
