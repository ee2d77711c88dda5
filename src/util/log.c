/*
 * log.c - one-line log records on stderr and the access log; see log.h.
 */
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static enum log_format format = LOG_FORMAT_TEXT;
static int access_fd = -1;
static int access_fd_owned;

void log_set_level(enum log_level level)
{
    min_level = level;
}

void log_set_format(enum log_format f)
{
    format = f;
}

int log_parse_format(const char *name, enum log_format *out)
{
    if (strcmp(name, "text") == 0)
        *out = LOG_FORMAT_TEXT;
    else if (strcmp(name, "json") == 0)
        *out = LOG_FORMAT_JSON;
    else
        return -1;
    return 0;
}

/* Appends `s` to line[*n..cap) as the inside of a JSON string; stops
 * before a cut escape. */
static void put_json_text(char *line, size_t *n, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t k = 0;
        if (c == '"' || c == '\\') {
            esc[k++] = '\\';
            esc[k++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            k = 6;
        } else {
            esc[k++] = (char)c;
        }
        if (*n + k >= cap)
            return;
        memcpy(line + *n, esc, k);
        *n += k;
    }
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (level < min_level)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[96];
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t msg_len = m < 0 ? 0 : (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;
    char line[4096 + 128];
    size_t len;
    if (format == LOG_FORMAT_JSON) {
        len = (size_t)snprintf(line, sizeof line, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"",
                               stamp, names[level]);
        /* room for the closing "}\n" is kept out of the escape's budget */
        put_json_text(line, &len, sizeof line - 3, msg, msg_len);
        memcpy(line + len, "\"}", 2);
        len += 2;
    } else {
        len = (size_t)snprintf(line, sizeof line, "%s %s ", stamp, names[level]);
        memcpy(line + len, msg, msg_len);
        for (size_t i = len; i < len + msg_len; i++) {
            unsigned char ch = (unsigned char)line[i];
            /* Still one line, and no terminal control sequence from a
             * client's value (ESC ...) reaches the operator's screen. */
            if (ch < 0x20 || ch == 0x7f)
                line[i] = ch == '\t' ? ' ' : '?';
        }
        len += msg_len;
    }
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

int log_access_open(const char *path)
{
    log_access_close();
    if (strcmp(path, "-") == 0) {
        access_fd = STDOUT_FILENO;
        access_fd_owned = 0;
        return 0;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    access_fd = fd;
    access_fd_owned = 1;
    return 0;
}

void log_access_close(void)
{
    if (access_fd >= 0 && access_fd_owned)
        close(access_fd);
    access_fd = -1;
}

int log_access_enabled(void)
{
    return access_fd >= 0;
}

void log_access(const char *client_addr, long long wall_ns, const char *request_line, int status,
                size_t body_bytes)
{
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    if (access_fd < 0)
        return;
    time_t secs = (time_t)(wall_ns / 1000000000LL);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char line[2048];
    int n = snprintf(line, sizeof line, "%s - - [%02d/%s/%04d:%02d:%02d:%02d +0000] \"",
                     *client_addr ? client_addr : "-", tm.tm_mday, months[tm.tm_mon],
                     tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    size_t len = n < 0 ? 0 : (size_t)n;
    static const char hex[] = "0123456789abcdef";
    for (const char *p = request_line; *p && len + 8 < sizeof line - 64; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            line[len++] = '\\';
            line[len++] = 'x';
            line[len++] = hex[c >> 4];
            line[len++] = hex[c & 15];
        } else {
            line[len++] = (char)c;
        }
    }
    n = snprintf(line + len, sizeof line - len, "\" %d %zu\n", status, body_bytes);
    len += n < 0 ? 0 : (size_t)n;
    ssize_t w;
    do
        w = write(access_fd, line, len);
    while (w < 0 && errno == EINTR);
}
