/*
 * loop.c - the event loop; see loop.h.
 *
 * Timer sources are few (the HTTP server's FIFO deadline lists, the api's
 * wall-clock tick), so each turn simply asks every one of them; there is
 * no heap of individual timers here. Owners that need many deadlines keep
 * their own structure (see server/conn.c's lists of equal durations).
 */
#include "loop/loop.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "util/timeutil.h"

#define LOOP_MAX_EVENTS 256
#define LOOP_MAX_HOOKS 8
/* The longest a turn waits: a cheap safety net for a source that forgot
 * to ask for a deadline. */
#define LOOP_MAX_WAIT_MS 1000

struct hook {
    union {
        loop_timer_fn timer;
        loop_turn_fn turn;
    } fn;
    void *ctx;
};

struct loop {
    int epfd;
    uint64_t now_ms;
    struct hook timers[LOOP_MAX_HOOKS];
    size_t n_timers;
    struct hook turn_ends[LOOP_MAX_HOOKS];
    size_t n_turn_ends;
    loop_io_t signal_io;
    loop_signal_fn on_signal;
    void *signal_ctx;
    bool in_turn;     /* no re-entry */
    pthread_t thread; /* the one that runs the loop */
};

loop_t *loop_new(void)
{
    loop_t *loop = calloc(1, sizeof *loop);
    if (!loop)
        return NULL;
    loop->signal_io.fd = -1;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) {
        free(loop);
        return NULL;
    }
    loop->now_ms = time_mono_ms();
    loop->thread = pthread_self();
    return loop;
}

bool loop_on_thread(const loop_t *loop)
{
    return pthread_equal(loop->thread, pthread_self()) != 0;
}

void loop_free(loop_t *loop)
{
    if (!loop)
        return;
    if (loop->signal_io.fd >= 0)
        close(loop->signal_io.fd);
    close(loop->epfd);
    free(loop);
}

int loop_io_start(loop_t *loop, loop_io_t *io, int fd, uint32_t events, loop_io_fn on_ready)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -errno;
    io->fd = fd;
    io->events = events;
    io->on_ready = on_ready;
    return 0;
}

void loop_io_modify(loop_t *loop, loop_io_t *io, uint32_t events)
{
    assert(io->fd >= 0);
    if (io->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = io};
    /* Fails only for a descriptor epoll no longer has, which the owner
     * meets again at its next read or write. */
    (void)epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev);
    io->events = events;
}

void loop_io_stop(loop_t *loop, loop_io_t *io)
{
    if (io->fd < 0)
        return;
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    io->fd = -1;
}

int loop_add_timer(loop_t *loop, loop_timer_fn fn, void *ctx)
{
    /* a slot loop_remove_timer() emptied first */
    for (size_t i = 0; i < loop->n_timers; i++) {
        if (!loop->timers[i].fn.timer) {
            loop->timers[i] = (struct hook){.fn.timer = fn, .ctx = ctx};
            return 0;
        }
    }
    if (loop->n_timers == LOOP_MAX_HOOKS)
        return -ENOMEM;
    loop->timers[loop->n_timers++] = (struct hook){.fn.timer = fn, .ctx = ctx};
    return 0;
}

void loop_remove_timer(loop_t *loop, loop_timer_fn fn, void *ctx)
{
    /* The slot is emptied, not closed up: run_timers() may be iterating. */
    for (size_t i = 0; i < loop->n_timers; i++)
        if (loop->timers[i].fn.timer == fn && loop->timers[i].ctx == ctx)
            loop->timers[i] = (struct hook){.fn.timer = NULL, .ctx = NULL};
}

int loop_add_turn_end(loop_t *loop, loop_turn_fn fn, void *ctx)
{
    if (loop->n_turn_ends == LOOP_MAX_HOOKS)
        return -ENOMEM;
    loop->turn_ends[loop->n_turn_ends++] = (struct hook){.fn.turn = fn, .ctx = ctx};
    return 0;
}

static void on_signal_fd(loop_io_t *io, uint32_t events)
{
    (void)events;
    loop_t *loop = (loop_t *)((char *)io - offsetof(loop_t, signal_io));
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof si) == sizeof si)
        loop->on_signal(loop->signal_ctx, (int)si.ssi_signo);
}

int loop_watch_signals(loop_t *loop, const int *signals, size_t n, loop_signal_fn fn, void *ctx)
{
    assert(loop->signal_io.fd < 0);
    sigset_t mask;
    sigemptyset(&mask);
    for (size_t i = 0; i < n; i++)
        sigaddset(&mask, signals[i]);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0)
        return -errno;
    int fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    loop->on_signal = fn;
    loop->signal_ctx = ctx;
    int rc = loop_io_start(loop, &loop->signal_io, fd, EPOLLIN, on_signal_fd);
    if (rc != 0)
        close(fd);
    return rc;
}

uint64_t loop_now_ms(const loop_t *loop)
{
    return loop->now_ms;
}

void loop_update_clock(loop_t *loop)
{
    loop->now_ms = time_mono_ms();
}

/* Runs every timer source; returns the earliest instant one asks for, at
 * most LOOP_MAX_WAIT_MS from `now`. */
static uint64_t run_timers(loop_t *loop, uint64_t now)
{
    uint64_t next = now + LOOP_MAX_WAIT_MS;
    for (size_t i = 0; i < loop->n_timers; i++) {
        if (!loop->timers[i].fn.timer)
            continue; /* removed */
        uint64_t want = loop->timers[i].fn.timer(loop->timers[i].ctx, now);
        if (want && want < next)
            next = want;
    }
    return next;
}

static void run_turn_ends(loop_t *loop)
{
    for (size_t i = 0; i < loop->n_turn_ends; i++)
        loop->turn_ends[i].fn.turn(loop->turn_ends[i].ctx);
}

int loop_run_once(loop_t *loop, int max_wait_ms)
{
    assert(!loop->in_turn);
    assert(loop_on_thread(loop));
    loop->in_turn = true;
    uint64_t now = loop->now_ms = time_mono_ms();
    run_timers(loop, now);
    run_turn_ends(loop);
    /* The end-of-turn work may have set deadlines (a pipelined request
     * parked): ask again, so the wait ends in time for them. Nothing is
     * due a second time, so this only reads the sources' next instants. */
    uint64_t next = run_timers(loop, now);
    int wait_ms = next > now ? (int)(next - now) : 0;
    if (max_wait_ms >= 0 && max_wait_ms < wait_ms)
        wait_ms = max_wait_ms;
    struct epoll_event events[LOOP_MAX_EVENTS];
    int n = epoll_wait(loop->epfd, events, LOOP_MAX_EVENTS, wait_ms);
    if (n < 0) {
        loop->in_turn = false;
        return errno == EINTR ? 0 : -errno;
    }
    loop->now_ms = time_mono_ms();
    for (int i = 0; i < n; i++) {
        loop_io_t *io = events[i].data.ptr;
        /* An earlier callback of this batch may have stopped it; its
         * owner frees it only at the end of the turn. */
        if (io->fd >= 0)
            io->on_ready(io, events[i].events);
    }
    run_turn_ends(loop);
    loop->in_turn = false;
    return 0;
}
