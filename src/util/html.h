/*
 * html.h - text into HTML, safely.
 *
 * One escaper for every value a page shows: what a client wrote (member
 * names, peer URLs, token names) must reach a browser as text, never as
 * markup. The same five characters as Go's html.EscapeString, which is
 * enough both between tags and inside a double- or single-quoted
 * attribute value.
 */
#ifndef DISCO_UTIL_HTML_H
#define DISCO_UTIL_HTML_H

#include <stddef.h>

#include "util/buf.h"

/*
 * Appends `len` bytes of `s` to `out` with & < > " ' replaced by &amp;
 * &lt; &gt; &#34; &#39;; every other byte, NUL and invalid UTF-8
 * included, is copied as it is (a browser shows invalid UTF-8 as U+FFFD,
 * as text). Allocation failures set out's sticky error flag (util/buf.h).
 */
void html_put_escaped(buf_t *out, const char *s, size_t len);
/* The same for a NUL-terminated string; NULL appends nothing. */
void html_puts_escaped(buf_t *out, const char *s);

#endif
