/*
 * sdnotify.h - systemd's service notification protocol without libsystemd.
 *
 * The protocol is one datagram of "KEY=value\n" lines sent to the
 * AF_UNIX socket named by $NOTIFY_SOCKET: a path, or an abstract-namespace
 * name when it starts with '@'. systemd sets it for Type=notify units; when
 * it is unset every call here does nothing and returns 0, so disco behaves
 * the same outside systemd.
 *
 * disco sends READY=1 once it listens and the store is loaded, STOPPING=1
 * when SIGTERM starts the graceful stop, and WATCHDOG=1 every half of
 * $WATCHDOG_USEC from the event loop (so a wedged loop gets restarted).
 * Any thread may call these; nothing is kept between calls.
 */
#ifndef DISCO_UTIL_SDNOTIFY_H
#define DISCO_UTIL_SDNOTIFY_H

#include <stdint.h>

/*
 * Sends `state` ("READY=1\nSTATUS=serving", no trailing newline needed) as
 * one datagram to $NOTIFY_SOCKET. 0 when sent or when $NOTIFY_SOCKET is
 * unset; -errno when the address is malformed (-EINVAL), too long
 * (-ENAMETOOLONG) or the send fails. Never blocks: the socket is
 * non-blocking, and a full receiver queue is reported as -EAGAIN.
 */
int sdnotify_send(const char *state);

/*
 * The watchdog interval systemd asked for, in microseconds: $WATCHDOG_USEC
 * when it is set, a positive decimal number, and $WATCHDOG_PID is unset or
 * names this process (as sd_watchdog_enabled() decides); else 0.
 */
uint64_t sdnotify_watchdog_usec(void);

#endif
