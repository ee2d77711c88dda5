/*
 * watch.c - parked watchers: which events reach them (etcd's watcherHub),
 * which past event answers a new watch (etcd's EventHistory.scan, over the
 * token's history: at most registry_set_max_events() events), and waking them.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"
#include "util/buf.h"
#include "util/timeutil.h"

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* etcd's isHidden: a path below the watched one crosses a '_' segment. */
static bool hidden_below(const char *watch_key, const char *key)
{
    size_t wl = strlen(watch_key);
    if (wl > strlen(key))
        return false;
    const char *after = key + wl;
    /* path.Clean("/" + after) contains "/_" */
    for (const char *p = after; *p; p++)
        if (p[0] == '_' && (p == after || p[-1] == '/'))
            return true;
    return false;
}

/* Does a live event reach this parked watcher? (etcd's watcherHub.notify) */
static bool waiter_matches(reg_waiter_t *w, const reg_event_t *ev)
{
    bool removed = w->removed_hit; /* good for this event only */
    w->removed_hit = false;
    if (ev->index < w->since_index)
        return false;
    const char *key = ev->node.key;
    if (strcmp(key, w->key) == 0)
        return true;
    size_t wl = strlen(w->key);
    bool below = strncmp(key, w->key, wl) == 0 && key[wl] == '/';
    if (w->recursive && below && !hidden_below(w->key, key))
        return true;
    /* A removed directory takes its watched descendants with it: marked by
     * reg_mark_removed_watchers() before the subtree went. */
    return removed;
}

/* Does a past event answer a new watch? (etcd's EventHistory.scan) */
static bool history_matches(const char *key, bool recursive, const reg_event_t *ev)
{
    if (strcmp(ev->node.key, key) == 0)
        return true;
    if (recursive) {
        size_t kl = strlen(key);
        if (strncmp(ev->node.key, key, kl) == 0 && ev->node.key[kl] == '/')
            return true;
    }
    return reg_is_removal(ev->action) && ev->has_prev && ev->prev.is_dir &&
           has_prefix(key, ev->prev.key);
}

/* Does a node exist at `key` (a clean key inside token `t`)? */
static bool key_exists(registry_t *reg, reg_token_t *t, const char *key)
{
    const char *name, *rest;
    size_t len;
    reg_result_t probe = {0};
    if (!reg_split_token(key, &name, &len, &rest))
        return false;
    bool found = reg_walk(reg, t, rest, &probe) != NULL;
    reg_result_clear(&probe);
    return found;
}

/*
 * Before a directory is removed: etcd notifies the watchers of every node
 * in the removed subtree, and only of those, so mark watchers below the
 * directory whose key still names a node.
 */
void reg_mark_removed_watchers(registry_t *reg, reg_token_t *t, const reg_event_t *ev)
{
    if (!reg_is_removal(ev->action) || !ev->node.is_dir)
        return;
    size_t kl = strlen(ev->node.key);
    for (reg_waiter_t *w = t->waiters; w; w = w->next)
        w->removed_hit = strncmp(w->key, ev->node.key, kl) == 0 && w->key[kl] == '/' &&
                         key_exists(reg, t, w->key);
}

void reg_waiter_unlink(registry_t *reg, reg_waiter_t *w)
{
    reg_token_t *t = w->token;
    if (w->prev)
        w->prev->next = w->next;
    else
        t->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    w->token = NULL;
    free(w->key);
    w->key = NULL;
    reg->n_waiters--;
}

void reg_fire_waiters(registry_t *reg, reg_token_t *t, reg_waiter_match_fn match,
                      const void *match_ctx, const reg_event_t *ev)
{
    /* Detach first, then call: a callback answers its own request and may
     * unwatch itself. It must not end other watchers' requests (close their
     * connections): their waiters are on `fire`, and ending a request frees
     * its waiter. The server guarantees it: an answer frees the request's
     * slot before any write, so a failed write closes nobody else. */
    reg_waiter_t *fire = NULL, **tail = &fire;
    for (reg_waiter_t *w = t->waiters; w;) {
        reg_waiter_t *next = w->next;
        if (match(w, match_ctx)) {
            reg_waiter_unlink(reg, w);
            *tail = w;
            tail = &w->next;
        }
        w = next;
    }
    while (fire) {
        reg_waiter_t *w = fire;
        fire = w->next;
        w->next = NULL;
        w->on_event(w, ev);
    }
}

static bool event_reaches(reg_waiter_t *w, const void *ev)
{
    return waiter_matches(w, ev);
}

void reg_notify(registry_t *reg, reg_token_t *t, const reg_event_t *ev)
{
    reg_fire_waiters(reg, t, event_reaches, ev, ev);
}

void registry_unwatch(registry_t *reg, reg_waiter_t *w)
{
    if (w->token)
        reg_waiter_unlink(reg, w);
}

void registry_unwatch_all(registry_t *reg, void (*cb)(reg_waiter_t *w))
{
    reg_token_t *t, *tmp;
    HASH_ITER(hh, reg->tokens, t, tmp)
    {
        while (t->waiters) {
            reg_waiter_t *w = t->waiters;
            reg_waiter_unlink(reg, w);
            cb(w);
        }
    }
}

void registry_watch(registry_t *reg, const char *key, bool recursive, uint64_t wait_index,
                    reg_waiter_t *w, reg_waiter_cb on_event, void *ctx, reg_result_t *out)
{
    memset(w, 0, sizeof *w);
    char *clean = reg_begin_op(reg, key, out);
    if (!clean)
        return;
    const char *rest;
    reg_token_t *t = reg_lookup_token(reg, clean, &rest, out);
    if (!t) {
        free(clean);
        return;
    }
    uint64_t since = wait_index ? wait_index : reg->index + 1;
    if (since <= t->cleared_index) {
        /* A resync lost this stretch of the token's history (deliver.c). */
        char cause[96];
        snprintf(cause, sizeof cause,
                 "the requested history has been cleared [%" PRIu64 "/%" PRIu64 "]",
                 t->cleared_index + 1, since);
        reg_fail(reg, out, REG_E_EVENT_INDEX_CLEARED, cause);
        out->history_from = t->cleared_index + 1;
        free(clean);
        return;
    }
    out->err = REG_OK;
    out->index = reg->index;
    /* Binary search for the first event at or after `since`. */
    size_t lo = 0, hi = t->n_events;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->events[mid] < since)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < t->n_events; i++) {
        const reg_event_t *ev = reg_event_at(reg, t->events[i]);
        if (!ev && reg->backend && !reg->backend->ops->applies_on_propose &&
            t->events[i] < reg->ring_base) {
            /* A mirror of etcd keeps only the recent events' bodies (the
             * ring): an older waitIndex gets etcd's own answer. */
            char cause[96];
            snprintf(cause, sizeof cause, "the requested history has been cleared [%llu/%llu]",
                     (unsigned long long)reg->ring_base, (unsigned long long)since);
            reg_fail(reg, out, REG_E_EVENT_INDEX_CLEARED, cause);
            out->history_from = reg->ring_base;
            free(clean);
            return;
        }
        if (!ev) {
            reg_fail(reg, out, REG_E_INTERNAL,
                     "cannot read the token's history back from the store");
            free(clean);
            return;
        }
        if (history_matches(clean, recursive, ev)) {
            out->event = ev;
            free(clean);
            return;
        }
    }
    w->key = clean;
    w->token = t;
    w->since_index = since;
    w->start_index = reg->index;
    w->recursive = recursive;
    w->on_event = on_event;
    w->ctx = ctx;
    w->next = t->waiters;
    if (t->waiters)
        t->waiters->prev = w;
    t->waiters = w;
    reg->n_waiters++;
}
