/*
 * log.h - one-line log records on stderr, and the optional access log.
 *
 * Every record is a single line, so that journald, docker logs and grep all
 * see whole events: by default an RFC 3339 UTC timestamp, the level and the
 * message; with LOG_FORMAT_JSON one JSON object per line,
 * {"time":"...","level":"info","msg":"..."}, in which bytes outside
 * printable ASCII are escaped (\u00XX) so that every line parses.
 *
 * Not thread-safe beyond what one fwrite of a whole line gives: records
 * come from the event loop thread and, rarely, the store's writer.
 */
#ifndef DISCO_UTIL_LOG_H
#define DISCO_UTIL_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

/* Records below `level` are dropped. The default is LOG_INFO. */
void log_set_level(enum log_level level);
/* The default is LOG_FORMAT_TEXT. */
void log_set_format(enum log_format format);
/* "text" or "json" into *out; -1 for anything else. */
int log_parse_format(const char *name, enum log_format *out);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/*
 * The access log: one line per answer in Common Log Format, as
 * discovery.etcd.io wrote it (Apache's "common"): host - - [time] "request
 * line" status bytes. `path` "-" writes to stdout; otherwise the file is
 * opened for appending (created 0640). Returns 0 or -errno. Each line is
 * one write(2), so a reader never sees half a line.
 */
int log_access_open(const char *path);
void log_access_close(void);
/* Whether an access log is open (the api records requests only then). */
int log_access_enabled(void);
/* One access line. `request_line` ("GET /new?size=3 HTTP/1.1") has
 * control bytes and '"' escaped here; `wall_ns` is when the request came. */
void log_access(const char *client_addr, long long wall_ns, const char *request_line, int status,
                size_t body_bytes);

#endif
