/*
 * form.h - URL query and urlencoded-form decoding with Go's net/url rules.
 *
 * etcd reads its v2 parameters with Go's Request.ParseForm, so disco decodes
 * them the same way to answer the same inputs the same way: '&' separates
 * pairs, a pair without '=' has an empty value, '+' is a space, a ';' or a
 * bad %-escape is an error (Go's own message is kept as the error text),
 * and body parameters come before query parameters when a name repeats.
 * Unlike Go, a NUL byte (raw or %00) is an error too: C strings cannot
 * carry it.
 */
#ifndef DISCO_API_FORM_H
#define DISCO_API_FORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decoded names and values point into the form's text blocks. */
typedef struct form_param {
    const char *name;
    const char *value;
} form_param_t;

typedef struct form_text form_text_t; /* private */

typedef struct form {
    form_param_t *params;
    size_t n, cap;
    char *error;        /* first decoding error (Go's text), or NULL */
    form_text_t *texts; /* one block of decoded text per form_parse call */
} form_t;

void form_init(form_t *f);
void form_free(form_t *f);

/*
 * Decodes `len` bytes of "a=1&b=2" and appends the pairs. Decoding goes on
 * past a bad pair, as Go's does; f->error keeps Go's error: the first bad
 * escape, unless a ';' (which always wins) comes later.
 * Returns 0, or -ENOMEM.
 */
int form_parse(form_t *f, const char *s, size_t len);

/*
 * Whether a Content-Type names an urlencoded form (Go's ParseForm reads a
 * body only then): the media type, case-insensitive, parameters ignored.
 */
bool form_is_urlencoded(const char *content_type);

/* The first value of `name`, or NULL when absent. */
const char *form_get(const form_t *f, const char *name);
bool form_has(const form_t *f, const char *name);

/*
 * Percent-decodes a URL path ('+' stays '+'). Returns a new NUL-terminated
 * string, or NULL with *bad_escape set (1) on a malformed escape or a NUL
 * byte (raw or %00), or unset (0) when out of memory.
 */
char *form_unescape_path(const char *s, size_t len, int *bad_escape);

/* Go's strconv.ParseBool: 1 t T TRUE true True 0 f F FALSE false False. */
bool form_parse_bool(const char *s, bool *out);
/* Go's strconv.ParseUint(s, 10, 64): digits only, no sign, no overflow. */
bool form_parse_u64(const char *s, uint64_t *out);

#endif
