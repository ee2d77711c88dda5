/*
 * transport_plain.c - the transport over a plain stream socket: recv(2),
 * send(2) and shutdown(2), with EINTR retried and SIGPIPE never raised.
 */
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/transport.h"

static ssize_t plain_recv(transport_t *t, char *buf, size_t len)
{
    for (;;) {
        ssize_t n = recv(t->fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static ssize_t plain_send(transport_t *t, const char *buf, size_t len)
{
    for (;;) {
        ssize_t n = send(t->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0)
            return n;
        if (n == 0)
            return -EAGAIN; /* nothing taken: treat as "not now" */
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static void plain_shutdown_write(transport_t *t)
{
    shutdown(t->fd, SHUT_WR);
}

static void plain_close(transport_t *t)
{
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
}

static const transport_ops_t plain_ops = {
    .recv = plain_recv,
    .send = plain_send,
    .shutdown_write = plain_shutdown_write,
    .close = plain_close,
    .name = "tcp",
};

void transport_plain_init(transport_t *t, int fd)
{
    t->ops = &plain_ops;
    t->fd = fd;
    t->wants = 0;
    t->is_handshaking = false;
    t->state = NULL;
}
