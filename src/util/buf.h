/*
 * buf.h - growable byte buffers with a sticky error flag.
 *
 * Emitters (JSON, HTTP headers, Prometheus text) append many small pieces.
 * Checking every append would bury the logic, so, like SQLite's StrAccum, a
 * buffer remembers its first allocation failure: later appends do nothing
 * and the caller checks buf_failed() once when the whole text is built.
 */
#ifndef DISCO_UTIL_BUF_H
#define DISCO_UTIL_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct buf {
    char *data;  /* NUL-terminated when len > 0 or after buf_cstr() */
    size_t len;  /* bytes used, not counting the terminating NUL */
    size_t cap;  /* bytes allocated */
    bool failed; /* an allocation failed; contents are incomplete */
} buf_t;

#define BUF_INIT                                                                                   \
    {                                                                                              \
        NULL, 0, 0, false                                                                          \
    }

void buf_init(buf_t *b);
/* Releases the memory; the buffer is empty and reusable afterwards. */
void buf_free(buf_t *b);
/* Empties the buffer but keeps its memory. Clears the error flag. */
void buf_reset(buf_t *b);
/* Makes room for `extra` more bytes (plus a NUL). Returns 0 or -ENOMEM. */
int buf_reserve(buf_t *b, size_t extra);

void buf_append(buf_t *b, const void *data, size_t len);
void buf_puts(buf_t *b, const char *s);
void buf_putc(buf_t *b, char c);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_put_u64(buf_t *b, uint64_t v);
void buf_put_i64(buf_t *b, int64_t v);
/* Appends the low `bytes` (1..8) bytes of `v`, little-endian (util/le.h). */
void buf_put_le(buf_t *b, uint64_t v, int bytes);
/*
 * Appends `s` as a JSON string literal, quotes included, escaped exactly as
 * Go's encoding/json does (etcd's encoder): <, > and & as \u003c.., control
 * bytes as \n \r \t or \u00XX, U+2028/U+2029 escaped, invalid UTF-8 replaced
 * by \ufffd. Byte-for-byte equality with etcd's answers depends on it.
 */
void buf_put_json_string(buf_t *b, const char *s, size_t len);
/* Keeps the first `len` bytes (len <= b->len). */
void buf_truncate(buf_t *b, size_t len);
/* Drops the first n bytes (n <= len). */
void buf_consume(buf_t *b, size_t n);
/* Returns a NUL-terminated view of the contents ("" when empty). */
const char *buf_cstr(buf_t *b);
/* Hands the allocation to the caller (NULL when empty); the buffer is reset. */
char *buf_steal(buf_t *b);

static inline bool buf_failed(const buf_t *b)
{
    return b->failed;
}

/*
 * A heap copy of `s` (free() it), or NULL when `s` is NULL. When the copy
 * cannot be allocated it returns NULL and sets *failed; it never clears
 * *failed. The same sticky-flag idea as the buffer's, for a constructor that
 * copies several optional strings and checks once:
 *     bool failed = false;
 *     x->a = buf_strdup_or_null(cfg->a, &failed);
 *     x->b = buf_strdup_or_null(cfg->b, &failed);
 *     if (failed) ... free both, fail ...
 */
char *buf_strdup_or_null(const char *s, bool *failed);

#endif
