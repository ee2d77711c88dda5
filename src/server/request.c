/*
 * request.c - request slots and the handles that name them.
 *
 * A handle is (server, slot, generation). Slots live in one array that
 * grows on demand and never shrinks; a slot's generation goes up each time
 * it is freed, so a handle kept past its request's end finds a different
 * generation and every call with it does nothing. That is what makes an
 * answer that outlives its client harmless: the connection may be gone,
 * the slot reused by another request, and the late answer still cannot
 * reach either.
 *
 * Every end of a parked request is reported to its owner exactly once:
 * by a reply (the owner's own doing), or through its park callback
 * (timeout, shutdown, connection closed).
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>

#include "server/server_internal.h"

#define SLOTS_FIRST 64

static int slots_grow(http_server_t *s)
{
    uint32_t n = s->n_slots ? s->n_slots * 2 : SLOTS_FIRST;
    if (n <= s->n_slots || n == REQ_NONE)
        return -ENOMEM;
    req_slot_t *slots = realloc(s->slots, (size_t)n * sizeof *slots);
    if (!slots)
        return -ENOMEM;
    for (uint32_t i = s->n_slots; i < n; i++) {
        slots[i] = (req_slot_t){.gen = 1, .state = REQ_FREE};
        slots[i].next_free = i + 1 < n ? i + 1 : s->free_slot;
    }
    s->free_slot = s->n_slots;
    s->slots = slots;
    s->n_slots = n;
    return 0;
}

static uint32_t slot_take(http_server_t *s, http_conn_t *c, int32_t stream_id)
{
    if (s->free_slot == REQ_NONE && slots_grow(s) != 0)
        return REQ_NONE;
    uint32_t i = s->free_slot;
    req_slot_t *q = &s->slots[i];
    assert(q->state == REQ_FREE);
    s->free_slot = q->next_free;
    q->state = REQ_HANDLING;
    q->conn = c;
    q->park_fn = NULL;
    q->park_ctx = NULL;
    q->stream_id = stream_id;
    return i;
}

uint32_t req_slot_new(http_server_t *s, http_conn_t *c)
{
    assert(c->req == REQ_NONE); /* HTTP/1.1: one request in flight */
    assert(!c->h2);
    uint32_t i = slot_take(s, c, 0);
    if (i != REQ_NONE)
        c->req = i;
    return i;
}

uint32_t req_slot_new_stream(http_server_t *s, http_conn_t *c, int32_t stream_id)
{
    assert(c->h2 && stream_id > 0);
    return slot_take(s, c, stream_id);
}

req_slot_t *req_slot_of(http_req_t h)
{
    http_server_t *s = h.srv;
    if (!s || h.slot >= s->n_slots)
        return NULL;
    req_slot_t *q = &s->slots[h.slot];
    return q->gen == h.gen && q->state != REQ_FREE ? q : NULL;
}

http_req_t req_handle(http_server_t *s, uint32_t slot)
{
    return (http_req_t){.srv = s, .slot = slot, .gen = s->slots[slot].gen};
}

void req_slot_free(http_server_t *s, uint32_t slot)
{
    req_slot_t *q = &s->slots[slot];
    assert(q->state != REQ_FREE);
    if (q->conn && q->stream_id == 0 && q->conn->req == slot)
        q->conn->req = REQ_NONE;
    q->gen = q->gen + 1 ? q->gen + 1 : 1; /* never 0: a zeroed handle is never live */
    q->state = REQ_FREE;
    q->conn = NULL;
    q->stream_id = 0;
    q->park_fn = NULL;
    q->park_ctx = NULL;
    q->next_free = s->free_slot;
    s->free_slot = slot;
}

void req_slots_free_all(http_server_t *s)
{
    free(s->slots);
    s->slots = NULL;
    s->n_slots = 0;
    s->free_slot = REQ_NONE;
}

int http_stream_on_body(http_req_t h, http_body_fn on_body, void *ctx)
{
    req_slot_t *q = req_slot_of(h);
    if (!q)
        return -ESTALE;
    return q->stream_id ? h2_stream_on_body(q->conn, q->stream_id, on_body, ctx) : -EINVAL;
}

int http_stream_send(http_req_t h, const http_reply_t *head, const char *data, size_t len)
{
    assert(!h.srv || loop_on_thread(h.srv->loop)); /* loop thread only */
    req_slot_t *q = req_slot_of(h);
    if (!q)
        return -ESTALE;
    return q->stream_id ? h2_stream_send(q->conn, q->stream_id, head, data, len) : -EINVAL;
}

int http_stream_on_drain(http_req_t h, http_drain_fn on_drain, void *ctx)
{
    req_slot_t *q = req_slot_of(h);
    if (!q)
        return -ESTALE;
    return q->stream_id ? h2_stream_on_drain(q->conn, q->stream_id, on_drain, ctx) : -EINVAL;
}

bool http_req_is_live(http_req_t h)
{
    return req_slot_of(h) != NULL;
}

long *http_conn_counter(http_req_t h)
{
    req_slot_t *q = req_slot_of(h);
    return q && q->conn ? &q->conn->owner_count : NULL;
}

int http_reply(http_req_t h, const http_reply_t *r)
{
    assert(!h.srv || loop_on_thread(h.srv->loop)); /* loop thread only */
    req_slot_t *q = req_slot_of(h);
    if (!q)
        return -ESTALE;
    http_conn_t *c = q->conn;
    if (q->stream_id) {
        /* An HTTP/2 stream: the handle goes stale first, then the session
         * queues the answer on the stream. */
        int32_t stream_id = q->stream_id;
        bool is_head = q->is_head;
        assert(c && !c->closed && c->h2);
        req_slot_free(h.srv, h.slot);
        h2_reply(c, stream_id, is_head, r);
        return 0;
    }
    assert(c && !c->closed && c->req == h.slot);
    bool was_parked = q->state == REQ_PARKED;
    if (!q->keep_alive || c->srv->stopping)
        c->close_after_write = true;
    format_reply(&c->out, r, q->is_head, c->close_after_write, q->is_http10);
    req_slot_free(h.srv, h.slot);
    conn_request_done(c, was_parked);
    return 0;
}

int http_reply_simple(http_req_t h, int status, const char *content_type, const char *body,
                      size_t body_len)
{
    http_reply_t r = {
        .status = status, .content_type = content_type, .body = body, .body_len = body_len};
    return http_reply(h, &r);
}

int http_reply_prepared(http_req_t h, const http_prepared_t *p)
{
    req_slot_t *q = req_slot_of(h);
    if (!q)
        return -ESTALE;
    http_conn_t *c = q->conn;
    if (q->stream_id || q->is_head || !q->keep_alive || q->is_http10 || c->close_after_write ||
        c->srv->stopping)
        return http_reply(h, http_prepared_reply(p)); /* not the shape it was made for */
    assert(c && !c->closed && c->req == h.slot);
    bool was_parked = q->state == REQ_PARKED;
    req_slot_free(h.srv, h.slot);
    size_t len;
    const char *bytes = prepared_bytes(p, &len);
    if (was_parked) {
        /* Woken from another connection's callback: write straight from
         * the shared bytes; pipelined bytes wait for the next turn. */
        conn_schedule_resume(c);
        conn_write_now(c, bytes, len);
    } else {
        buf_append(&c->out, bytes, len); /* written with what follows */
        conn_request_done(c, false);
    }
    return 0;
}

int http_park(http_req_t h, enum http_park_kind kind, http_park_fn on_end, void *ctx)
{
    assert(!h.srv || loop_on_thread(h.srv->loop)); /* loop thread only */
    req_slot_t *q = req_slot_of(h);
    if (!q)
        return -ESTALE;
    http_conn_t *c = q->conn;
    assert(on_end);
    q->state = REQ_PARKED;
    q->park_kind = (uint8_t)kind;
    q->park_fn = on_end;
    q->park_ctx = ctx;
    if (q->stream_id) {
        h2_stream_parked(c, q->stream_id); /* the same wait, per stream */
        return 0;
    }
    conn_restart_timer(c); /* the wait starts now */
    if (c->read_eof && kind == HTTP_PARK_WATCH)
        conn_schedule_resume(c); /* the client has stopped asking: end it there */
    return 0;
}

bool req_tell_owner(http_server_t *s, uint32_t slot, enum http_park_end why)
{
    req_slot_t *q = &s->slots[slot];
    assert(why != HTTP_PARK_CLOSED && q->state == REQ_PARKED && q->park_fn);
    http_req_t h = req_handle(s, slot);
    http_park_fn fn = q->park_fn;
    q->park_fn = NULL; /* set again if the owner parks it again */
    fn(h, q->park_ctx, why);
    q = req_slot_of(h); /* the array may have moved; the slot may be gone */
    if (q && q->state == REQ_PARKED && !q->park_fn) {
        /* The owner neither answered nor parked again: nobody will. */
        req_slot_free(s, slot);
        return true;
    }
    return false;
}

void req_end_parked(http_conn_t *c, enum http_park_end why)
{
    http_server_t *s = c->srv;
    if (c->req == REQ_NONE)
        return;
    uint32_t slot = c->req;
    req_slot_t *q = &s->slots[slot];
    http_park_fn fn = q->park_fn;
    if (why == HTTP_PARK_CLOSED || q->state != REQ_PARKED || !fn) {
        /* The connection is going: the handle goes stale first, so that a
         * reply from inside the callback does nothing. */
        http_req_t h = req_handle(s, slot);
        void *ctx = q->park_ctx;
        req_slot_free(s, slot);
        if (fn && why == HTTP_PARK_CLOSED)
            fn(h, ctx, HTTP_PARK_CLOSED);
        return;
    }
    if (req_tell_owner(s, slot, why))
        conn_close(c);
}

void req_end_closed(http_server_t *s, uint32_t slot)
{
    req_slot_t *q = &s->slots[slot];
    assert(q->state != REQ_FREE);
    http_req_t h = req_handle(s, slot);
    http_park_fn fn = q->state == REQ_PARKED ? q->park_fn : NULL;
    void *ctx = q->park_ctx;
    /* Stale first, so that a reply from inside the callback does nothing. */
    req_slot_free(s, slot);
    if (fn)
        fn(h, ctx, HTTP_PARK_CLOSED);
}
