/*
 * server_pair.c - see server_pair.h.
 */
#include "server_pair.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

/* Loop turns without progress before an exchange counts as settled, and
 * the most turns one exchange may take. */
#define SETTLED_TURNS 3
#define MAX_TURNS 100000

http_server_t *sp_api_server(api_t *api)
{
    if (!api)
        return NULL;
    http_server_config_t cfg = {.addr = NULL,
                                .wait_timeout_ms = 60 * 1000,
                                .handler = api_handle,
                                .handler_ctx = api,
                                .render_error = api_render_error,
                                .render_error_ctx = api,
                                .notify_fd = -1};
    char err[256];
    return http_server_new(&cfg, err);
}

int sp_connect(http_server_t *srv, int sndbuf_bytes)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    if (sndbuf_bytes > 0)
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf_bytes, sizeof sndbuf_bytes);
    assert_int_equal(http_server_adopt(srv, sv[1]), 0);
    return sv[0];
}

void sp_exchange(http_server_t *srv, int fd, const char *req, buf_t *out)
{
    size_t len = req ? strlen(req) : 0, sent = 0;
    char tmp[16384];
    for (int turn = 0, still = 0; turn < MAX_TURNS && still < SETTLED_TURNS; turn++) {
        bool moved = false;
        if (sent < len) {
            ssize_t n = send(fd, req + sent, len - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
                moved = true;
            }
        }
        assert_int_equal(http_server_run_once(srv, 0), 0);
        ssize_t n;
        while ((n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT)) > 0) {
            buf_append(out, tmp, (size_t)n);
            moved = true;
        }
        still = moved ? 0 : still + 1;
    }
    assert_int_equal(sent, len);
    assert_false(buf_failed(out));
}
