/*
 * html.c - HTML escaping (see html.h).
 *
 * Runs of bytes that need no escape are appended in one piece: a page of a
 * token with many members is mostly such runs.
 */
#include "util/html.h"

#include <string.h>

void html_put_escaped(buf_t *out, const char *s, size_t len)
{
    size_t run = 0; /* start of the bytes not appended yet */
    for (size_t i = 0; i < len; i++) {
        const char *rep;
        switch (s[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&#34;"; break;
        case '\'': rep = "&#39;"; break;
        default: continue;
        }
        buf_append(out, s + run, i - run);
        buf_puts(out, rep);
        run = i + 1;
    }
    buf_append(out, s + run, len - run);
}

void html_puts_escaped(buf_t *out, const char *s)
{
    if (s)
        html_put_escaped(out, s, strlen(s));
}
