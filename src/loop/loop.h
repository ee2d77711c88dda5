/*
 * loop.h - the event loop: file descriptors, deadlines, signals and
 * end-of-turn work, on one epoll instance and one thread.
 *
 * It knows nothing of HTTP (Redis' ae.c is the model). The server, the
 * store's "durable" signal and later any outgoing connection register here.
 *
 * A turn: the clock is read once; every timer source runs what is due and
 * says when it next wants to run; end-of-turn work runs, and the sources
 * are asked again (that work may have set deadlines); epoll waits until
 * the earliest deadline (or the caller's bound); each ready descriptor's
 * callback runs; end-of-turn work runs again. Work deferred to the end of a
 * turn (freeing closed connections, parsing bytes that waited) therefore
 * never runs inside another callback's stack.
 *
 * Threading: every function here is for the loop's thread only, and no
 * callback may re-enter loop_run_once().
 */
#ifndef DISCO_LOOP_LOOP_H
#define DISCO_LOOP_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

typedef struct loop loop_t;

/*
 * A watched descriptor, embedded in whatever owns it (no allocation per
 * descriptor). `events` are epoll's bits (EPOLLIN, EPOLLOUT, EPOLLRDHUP);
 * the callback gets the bits epoll reported.
 */
typedef struct loop_io loop_io_t;
typedef void (*loop_io_fn)(loop_io_t *io, uint32_t events);
struct loop_io {
    int fd;          /* -1 while not watched */
    uint32_t events; /* what is asked of epoll now */
    loop_io_fn on_ready;
};

/* Runs what is due at `now_ms` (monotonic); returns the monotonic instant
 * it next wants to run at, or 0 for "no wish". */
typedef uint64_t (*loop_timer_fn)(void *ctx, uint64_t now_ms);
typedef void (*loop_turn_fn)(void *ctx);
typedef void (*loop_signal_fn)(void *ctx, int signo);

/* NULL when out of memory or epoll cannot be had. */
loop_t *loop_new(void);
/* Closes the signal descriptor and epoll; watched descriptors stay open
 * (their owners close them). */
void loop_free(loop_t *loop);

/* Starts watching `fd` with `events`. 0 or -errno. */
int loop_io_start(loop_t *loop, loop_io_t *io, int fd, uint32_t events, loop_io_fn on_ready);
/* Changes what is watched; costs nothing when it is unchanged. */
void loop_io_modify(loop_t *loop, loop_io_t *io, uint32_t events);
/* Stops watching (the descriptor stays open); io->fd becomes -1. */
void loop_io_stop(loop_t *loop, loop_io_t *io);

/* Registers a timer source or end-of-turn work; both run every turn, in
 * the order registered. 0 or -ENOMEM. */
int loop_add_timer(loop_t *loop, loop_timer_fn fn, void *ctx);
int loop_add_turn_end(loop_t *loop, loop_turn_fn fn, void *ctx);
/* Unregisters a timer source (the same fn and ctx); a no-op when it is not
 * registered. Safe from inside any callback, the timer itself included:
 * it never runs again once this returns. */
void loop_remove_timer(loop_t *loop, loop_timer_fn fn, void *ctx);

/*
 * Delivers `signals` (blocked for the whole process from now on) through
 * the loop: `fn` runs on the loop thread for each one received. One call
 * per loop. 0 or -errno.
 */
int loop_watch_signals(loop_t *loop, const int *signals, size_t n, loop_signal_fn fn, void *ctx);

/* The monotonic clock as of the start of this turn, in ms. */
uint64_t loop_now_ms(const loop_t *loop);
/* Reads the clock again (for work done between turns). */
void loop_update_clock(loop_t *loop);

/* Whether the caller runs on the loop's thread (the one that made it):
 * for assert()s in code that must never run elsewhere. */
bool loop_on_thread(const loop_t *loop);

/* One turn; waits at most `max_wait_ms` (-1: until the next deadline, and
 * at most a second). 0 or -errno when epoll fails. */
int loop_run_once(loop_t *loop, int max_wait_ms);

#endif
