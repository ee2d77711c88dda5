/*
 * transport.h - how a connection's bytes move: plain TCP now, TLS next.
 *
 * The connection code (server/conn.c) reads, writes and shuts down only
 * through these calls, so a transport that encrypts (or a test transport)
 * is one file that fills a transport_ops_t. A transport never blocks: its
 * descriptor is non-blocking and it answers "not now" with -EAGAIN.
 *
 * What a transport with state of its own (TLS) will need beyond plain
 * TCP is already in the contract: recv may need the socket writable (a
 * TLS renegotiation or a handshake message) and send may need it
 * readable; it says so through `wants`, which the connection adds to the
 * events it watches.
 */
#ifndef DISCO_SERVER_TRANSPORT_H
#define DISCO_SERVER_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct transport transport_t;

typedef struct transport_ops {
    /* Bytes received (> 0), 0 at the end of the peer's stream, -EAGAIN
     * when nothing can be read now, or another -errno. -EPROTO: the peer
     * speaks another protocol than the transport (plain HTTP to a TLS
     * port); the transport has become a plain one, so that a refusal the
     * peer can read may be written (transport_tls.h). */
    ssize_t (*recv)(transport_t *t, char *buf, size_t len);
    /* Bytes taken (> 0), -EAGAIN when none can be taken now, or another
     * -errno (the peer is gone: EPIPE, ECONNRESET). */
    ssize_t (*send)(transport_t *t, const char *buf, size_t len);
    /* Ends our direction of the stream (a FIN, or TLS close_notify then a
     * FIN); reading goes on. */
    void (*shutdown_write)(transport_t *t);
    /* Closes the descriptor and releases the transport's own state. */
    void (*close)(transport_t *t);
    const char *name; /* "tcp", "tls" */
} transport_ops_t;

struct transport {
    const transport_ops_t *ops;
    int fd;
    /* Extra epoll events the transport needs for its own progress (0 for
     * plain TCP). */
    uint32_t wants;
    /* A handshake is under way (TLS): no bytes yet, and the time it takes
     * counts as reading a request head (the header timeout). */
    bool is_handshaking;
    void *state; /* the transport's own (NULL for plain TCP) */
};

/* A plain TCP (or any stream socket) transport over `fd`, which it owns
 * from now on. No allocation. */
void transport_plain_init(transport_t *t, int fd);

static inline ssize_t transport_recv(transport_t *t, char *buf, size_t len)
{
    return t->ops->recv(t, buf, len);
}
static inline ssize_t transport_send(transport_t *t, const char *buf, size_t len)
{
    return t->ops->send(t, buf, len);
}
static inline void transport_shutdown_write(transport_t *t)
{
    t->ops->shutdown_write(t);
}
static inline void transport_close(transport_t *t)
{
    t->ops->close(t);
}

#endif
