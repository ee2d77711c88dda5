/*
 * sdnotify.c - one datagram to $NOTIFY_SOCKET (see sdnotify.h).
 *
 * libsystemd's sd_notify() does the same with more options (passing file
 * descriptors, credentials); disco needs none of them, and not linking
 * libsystemd keeps the static build free of it.
 */
#include "util/sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int sdnotify_send(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !path[0])
        return 0;
    /* A path ("/run/systemd/notify") or an abstract name ("@name"): both
     * are all systemd ever hands out. */
    if (path[0] != '/' && path[0] != '@')
        return -EINVAL;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len > sizeof sa.sun_path - (path[0] == '/')) /* a path needs its NUL */
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: the name's length is the address's */
    socklen_t sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    size_t n = strlen(state);
    ssize_t sent = sendto(fd, state, n, MSG_NOSIGNAL, (struct sockaddr *)&sa, sa_len);
    int rc = sent < 0 ? -errno : (size_t)sent == n ? 0 : -EMSGSIZE;
    close(fd);
    return rc;
}

uint64_t sdnotify_watchdog_usec(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    if (!usec || !usec[0])
        return 0;
    const char *pid = getenv("WATCHDOG_PID");
    if (pid && pid[0]) {
        char *end;
        errno = 0;
        long long p = strtoll(pid, &end, 10);
        if (errno || *end || p != (long long)getpid())
            return 0; /* meant for another process (a parent that exec'd us) */
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(usec, &end, 10);
    if (errno || *end || usec[0] == '-' || v == 0)
        return 0;
    return (uint64_t)v;
}
