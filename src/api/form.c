/*
 * form.c - URL query and urlencoded-form decoding; see form.h.
 */
#include "api/form.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void form_init(form_t *f)
{
    memset(f, 0, sizeof *f);
}

/* The decoded names and values of one form_parse call, each NUL-terminated:
 * one allocation, whatever the number of pairs. */
struct form_text {
    form_text_t *next;
    char data[];
};

void form_free(form_t *f)
{
    while (f->texts) {
        form_text_t *t = f->texts;
        f->texts = t->next;
        free(t);
    }
    free(f->params);
    free(f->error);
    form_init(f);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Go keeps the first escape error, but a ';' error replaces any earlier
 * one (net/url parseQuery). */
static void set_error(form_t *f, const char *msg, bool replace)
{
    if (f->error && !replace)
        return;
    char *copy = strdup(msg);
    if (!copy)
        return; /* the earlier error, if any, still stands */
    free(f->error);
    f->error = copy;
}

/* Go's strconv.Quote of a short byte string (a bad %-escape). */
static void go_quote(char *out, size_t cap, const char *s, size_t len)
{
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < len && o + 6 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            out[o++] = (char)c;
        } else if (c >= 0x80 && i + 1 < len && (c & 0xE0) == 0xC0 &&
                   ((unsigned char)s[i + 1] & 0xC0) == 0x80 && c >= 0xC2) {
            out[o++] = (char)c; /* a whole two-byte UTF-8 character */
            out[o++] = s[++i];
        } else {
            static const char hex[] = "0123456789abcdef";
            const char *esc = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : NULL;
            if (esc) {
                out[o++] = esc[0];
                out[o++] = esc[1];
            } else {
                out[o++] = '\\';
                out[o++] = 'x';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
            }
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

/*
 * Go's url.unescape into `out` (room for len + 1 bytes), NUL-terminated,
 * with the decoded length in *out_len. On a bad escape returns false and
 * writes Go's message into err_out (which must hold 64 bytes).
 */
static bool unescape_into(const char *s, size_t len, bool plus_is_space, char *out, size_t *out_len,
                          char *err_out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            int hi = i + 1 < len ? hexval(s[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                size_t el = len - i < 3 ? len - i : 3;
                char quoted[32];
                go_quote(quoted, sizeof quoted, s + i, el);
                snprintf(err_out, 64, "invalid URL escape %s", quoted);
                return false;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            out[o++] = ' ';
        } else {
            out[o++] = c;
        }
    }
    out[o] = '\0';
    *out_len = o;
    return true;
}

/* A NUL byte, raw or as "%00", which C strings (and keys) cannot carry:
 * kept, it would silently cut a value or key short. */
static bool has_nul(const char *s, size_t len)
{
    if (memchr(s, '\0', len))
        return true;
    for (size_t i = 0; i + 2 < len; i++)
        if (s[i] == '%' && s[i + 1] == '0' && s[i + 2] == '0')
            return true;
    return false;
}

static int add_param(form_t *f, const char *name, const char *value)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        form_param_t *p = realloc(f->params, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        f->params = p;
        f->cap = cap;
    }
    f->params[f->n].name = name;
    f->params[f->n].value = value;
    f->n++;
    return 0;
}

int form_parse(form_t *f, const char *s, size_t len)
{
    if (len == 0)
        return 0;
    /* A pair decodes to at most its own length plus one byte (the '='
     * becomes the name's NUL, and the value gets a NUL), or plus two when
     * it has no '='. */
    size_t pairs = 1;
    for (const char *amp = s; (amp = memchr(amp, '&', (size_t)(s + len - amp))); amp++)
        pairs++;
    form_text_t *text = malloc(sizeof *text + len + 2 * pairs);
    if (!text)
        return -ENOMEM;
    text->next = f->texts;
    f->texts = text;
    char *out = text->data;
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && s[i] != '&')
            i++;
        const char *pair = s + start;
        size_t plen = i - start;
        if (i < len)
            i++; /* the '&' */
        if (plen == 0)
            continue;
        if (memchr(pair, ';', plen)) {
            set_error(f, "invalid semicolon separator in query", true);
            continue;
        }
        if (has_nul(pair, plen)) {
            set_error(f, "invalid NUL byte in form value", false);
            continue;
        }
        const char *eq = memchr(pair, '=', plen);
        size_t nlen = eq ? (size_t)(eq - pair) : plen;
        char err[64];
        char *name = out;
        size_t name_len, value_len = 0;
        if (!unescape_into(pair, nlen, true, name, &name_len, err)) {
            set_error(f, err, false);
            continue;
        }
        char *value = name + name_len + 1;
        if (!eq) {
            *value = '\0';
        } else if (!unescape_into(eq + 1, plen - nlen - 1, true, value, &value_len, err)) {
            set_error(f, err, false);
            continue;
        }
        out = value + value_len + 1;
        if (add_param(f, name, value) != 0)
            return -ENOMEM;
    }
    return 0;
}

bool form_is_urlencoded(const char *ct)
{
    static const char form[] = "application/x-www-form-urlencoded";
    size_t n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return n == sizeof form - 1 && strncasecmp(ct, form, n) == 0;
}

const char *form_get(const form_t *f, const char *name)
{
    /* The first byte rules out most names without a call: a v2 request
     * looks up about fifteen names, most of them absent. */
    for (size_t i = 0; i < f->n; i++)
        if (f->params[i].name[0] == name[0] && strcmp(f->params[i].name, name) == 0)
            return f->params[i].value;
    return NULL;
}

bool form_has(const form_t *f, const char *name)
{
    return form_get(f, name) != NULL;
}

char *form_unescape_path(const char *s, size_t len, int *bad_escape)
{
    char err[64];
    *bad_escape = 0;
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t out_len;
    /* A NUL would cut the key short. */
    if (!unescape_into(s, len, false, out, &out_len, err) || has_nul(s, len)) {
        free(out);
        *bad_escape = 1;
        return NULL;
    }
    return out;
}

bool form_parse_bool(const char *s, bool *out)
{
    /* The twelve spellings, by first byte: 1 t T TRUE true True, 0 f F
     * FALSE false False. Every v2 request parses six of these. */
    const char *rest = s + 1;
    bool ok;
    switch (s[0]) {
    case '1':
    case '0': ok = *rest == '\0'; break;
    case 't': ok = *rest == '\0' || strcmp(rest, "rue") == 0; break;
    case 'T': ok = *rest == '\0' || strcmp(rest, "rue") == 0 || strcmp(rest, "RUE") == 0; break;
    case 'f': ok = *rest == '\0' || strcmp(rest, "alse") == 0; break;
    case 'F': ok = *rest == '\0' || strcmp(rest, "alse") == 0 || strcmp(rest, "ALSE") == 0; break;
    default: ok = false; break;
    }
    if (ok)
        *out = s[0] == '1' || s[0] == 't' || s[0] == 'T';
    return ok;
}

bool form_parse_u64(const char *s, uint64_t *out)
{
    if (!*s)
        return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}
