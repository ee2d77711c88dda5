/*
 * codec.c - the on-disk form of a registry event; see codec.h.
 */
#include "store/codec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/le.h"
#include "util/timeutil.h"

enum {
    F_DIR = 1 << 0,
    F_HAS_PREV = 1 << 1,
    F_PREV_DIR = 1 << 2,
    F_VALUE = 1 << 3,
    F_PREV_VALUE = 1 << 4,
};

static void put_u64(buf_t *b, uint64_t v)
{
    buf_put_le(b, v, 8);
}

static void put_str(buf_t *b, const char *s)
{
    size_t n = strlen(s);
    buf_put_le(b, n, 4);
    buf_append(b, s, n);
}

void codec_encode_event(buf_t *out, const reg_event_t *ev)
{
    unsigned flags = (ev->node.is_dir ? F_DIR : 0) | (ev->node.value ? F_VALUE : 0);
    if (ev->has_prev)
        flags |=
            F_HAS_PREV | (ev->prev.is_dir ? F_PREV_DIR : 0) | (ev->prev.value ? F_PREV_VALUE : 0);
    unsigned char head[3] = {CODEC_VERSION, (unsigned char)ev->action, (unsigned char)flags};
    buf_append(out, head, 3);
    put_u64(out, ev->index);
    put_u64(out, (uint64_t)ev->wall_ns);
    put_u64(out, ev->node.created_index);
    put_u64(out, (uint64_t)ev->node.expire_ns);
    put_str(out, ev->node.key);
    if (ev->node.value)
        put_str(out, ev->node.value);
    if (ev->has_prev) {
        put_u64(out, ev->prev.created_index);
        put_u64(out, ev->prev.modified_index);
        put_u64(out, (uint64_t)ev->prev.expire_ns);
        if (ev->prev.value)
            put_str(out, ev->prev.value);
    }
}

typedef struct reader {
    const unsigned char *p, *end;
    bool bad;
} reader_t;

static uint64_t get_u64(reader_t *r)
{
    if (r->end - r->p < 8) {
        r->bad = true;
        return 0;
    }
    uint64_t v = le_load(r->p, 8);
    r->p += 8;
    return v;
}

static char *get_str(reader_t *r)
{
    if (r->end - r->p < 4) {
        r->bad = true;
        return NULL;
    }
    size_t n = (size_t)le_load(r->p, 4);
    r->p += 4;
    if ((size_t)(r->end - r->p) < n || memchr(r->p, '\0', n)) {
        r->bad = true;
        return NULL;
    }
    char *s = malloc(n + 1);
    if (!s)
        return NULL;
    memcpy(s, r->p, n);
    s[n] = '\0';
    r->p += n;
    return s;
}

reg_event_t *codec_decode_event(const void *data, size_t len)
{
    reader_t r = {data, (const unsigned char *)data + len, false};
    if (len < 3 || r.p[0] != CODEC_VERSION || r.p[1] > REG_ACT_EXPIRE) {
        errno = EINVAL;
        return NULL;
    }
    reg_event_t *ev = calloc(1, sizeof *ev);
    if (!ev) {
        errno = ENOMEM;
        return NULL;
    }
    ev->action = (enum reg_action)r.p[1];
    unsigned flags = r.p[2];
    r.p += 3;
    ev->index = get_u64(&r);
    ev->wall_ns = (int64_t)get_u64(&r);
    ev->node.created_index = get_u64(&r);
    ev->node.expire_ns = (int64_t)get_u64(&r);
    ev->node.modified_index = ev->index;
    ev->node.is_dir = flags & F_DIR;
    ev->node.ttl_s = time_ttl_left_s(ev->node.expire_ns, ev->wall_ns);
    bool oom = false;
    if (!r.bad) {
        ev->node.key = get_str(&r);
        oom |= !r.bad && !ev->node.key;
    }
    if (!r.bad && !oom && (flags & F_VALUE)) {
        ev->node.value = get_str(&r);
        oom |= !r.bad && !ev->node.value;
    }
    if (!r.bad && !oom && (flags & F_HAS_PREV)) {
        ev->has_prev = true;
        ev->prev.created_index = get_u64(&r);
        ev->prev.modified_index = get_u64(&r);
        ev->prev.expire_ns = (int64_t)get_u64(&r);
        ev->prev.is_dir = flags & F_PREV_DIR;
        ev->prev.ttl_s = time_ttl_left_s(ev->prev.expire_ns, ev->wall_ns);
        ev->prev.key = ev->node.key ? strdup(ev->node.key) : NULL;
        oom |= !ev->prev.key;
        if (!r.bad && !oom && (flags & F_PREV_VALUE)) {
            ev->prev.value = get_str(&r);
            oom |= !r.bad && !ev->prev.value;
        }
    }
    if (r.bad || oom || r.p != r.end || !ev->node.key || ev->index == 0) {
        reg_event_free(ev);
        errno = oom ? ENOMEM : EINVAL;
        return NULL;
    }
    return ev;
}
