/*
 * minijson.c - a recursive-descent JSON reader; see minijson.h.
 */
#include "cmd/minijson.h"

#include <stdlib.h>
#include <string.h>

#include "util/buf.h"

typedef struct reader {
    const char *p, *end;
    int depth;
} reader_t;

static void skip_ws(reader_t *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(buf_t *b, unsigned cp)
{
    if (cp < 0x80) {
        buf_putc(b, (char)cp);
    } else if (cp < 0x800) {
        buf_putc(b, (char)(0xc0 | (cp >> 6)));
        buf_putc(b, (char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        buf_putc(b, (char)(0xe0 | (cp >> 12)));
        buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3f)));
        buf_putc(b, (char)(0x80 | (cp & 0x3f)));
    } else {
        buf_putc(b, (char)(0xf0 | (cp >> 18)));
        buf_putc(b, (char)(0x80 | ((cp >> 12) & 0x3f)));
        buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3f)));
        buf_putc(b, (char)(0x80 | (cp & 0x3f)));
    }
}

/* A string literal at r->p (the opening quote); returns it owned, or NULL. */
static char *read_string(reader_t *r)
{
    if (r->p >= r->end || *r->p != '"')
        return NULL;
    r->p++;
    buf_t b = BUF_INIT;
    while (r->p < r->end && *r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        if (c < 0x20)
            goto fail;
        if (c != '\\') {
            buf_putc(&b, (char)c);
            continue;
        }
        if (r->p >= r->end)
            goto fail;
        char e = *r->p++;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char to[] = "\"\\/\b\f\n\r\t";
            buf_putc(&b, to[simple - "\"\\/bfnrt"]);
            continue;
        }
        unsigned cp, lo;
        if (e != 'u' || r->end - r->p < 4 || hex4(r->p, &cp) != 0)
            goto fail;
        r->p += 4;
        if (cp >= 0xd800 && cp < 0xdc00 && r->end - r->p >= 6 && r->p[0] == '\\' &&
            r->p[1] == 'u' && hex4(r->p + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            r->p += 6;
        } else if (cp >= 0xd800 && cp < 0xe000) {
            cp = 0xfffd;
        }
        put_utf8(&b, cp);
    }
    if (r->p >= r->end)
        goto fail;
    r->p++;
    if (buf_failed(&b))
        goto fail;
    char *s = b.len ? buf_steal(&b) : strdup("");
    buf_free(&b);
    return s;
fail:
    buf_free(&b);
    return NULL;
}

static mj_value_t *read_value(reader_t *r);

static int literal(reader_t *r, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
        return -1;
    r->p += n;
    return 0;
}

/* The members of an array or object; r->p is after the opening bracket. */
static int read_members(reader_t *r, mj_value_t *v, char close, int named)
{
    mj_value_t **tail = &v->child;
    skip_ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return 0;
    }
    for (;;) {
        char *name = NULL;
        skip_ws(r);
        if (named) {
            name = read_string(r);
            skip_ws(r);
            if (!name || r->p >= r->end || *r->p != ':') {
                free(name);
                return -1;
            }
            r->p++;
        }
        mj_value_t *m = read_value(r);
        if (!m) {
            free(name);
            return -1;
        }
        m->name = name;
        *tail = m;
        tail = &m->next;
        skip_ws(r);
        if (r->p >= r->end)
            return -1;
        if (*r->p == close) {
            r->p++;
            return 0;
        }
        if (*r->p++ != ',')
            return -1;
    }
}

static mj_value_t *read_value(reader_t *r)
{
    skip_ws(r);
    if (r->p >= r->end || ++r->depth > MINIJSON_MAX_DEPTH)
        return NULL;
    mj_value_t *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    int rc = 0;
    char c = *r->p;
    if (c == '{' || c == '[') {
        r->p++;
        v->type = c == '{' ? MJ_OBJECT : MJ_ARRAY;
        rc = read_members(r, v, c == '{' ? '}' : ']', c == '{');
    } else if (c == '"') {
        v->type = MJ_STRING;
        v->str = read_string(r);
        rc = v->str ? 0 : -1;
    } else if (c == 't' || c == 'f' || c == 'n') {
        v->type = c == 't' ? MJ_TRUE : c == 'f' ? MJ_FALSE : MJ_NULL;
        rc = literal(r, c == 't' ? "true" : c == 'f' ? "false" : "null");
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        const char *s = r->p;
        while (r->p < r->end && strchr("+-.eE0123456789", *r->p) && *r->p)
            r->p++;
        v->type = MJ_NUMBER;
        v->num_text = strndup(s, (size_t)(r->p - s));
        rc = v->num_text ? 0 : -1;
        if (v->num_text)
            v->num = strtod(v->num_text, NULL);
    } else {
        rc = -1;
    }
    r->depth--;
    if (rc != 0) {
        mj_free(v);
        return NULL;
    }
    return v;
}

mj_value_t *mj_parse(const char *text, size_t len)
{
    reader_t r = {.p = text, .end = text + len};
    mj_value_t *v = read_value(&r);
    skip_ws(&r);
    if (v && r.p != r.end) {
        mj_free(v);
        return NULL;
    }
    return v;
}

void mj_free(mj_value_t *v)
{
    while (v) {
        mj_value_t *next = v->next;
        mj_free(v->child);
        free(v->name);
        free(v->str);
        free(v->num_text);
        free(v);
        v = next;
    }
}

const mj_value_t *mj_get(const mj_value_t *obj, const char *name)
{
    if (!obj || obj->type != MJ_OBJECT)
        return NULL;
    for (const mj_value_t *m = obj->child; m; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

const char *mj_get_str(const mj_value_t *obj, const char *name)
{
    const mj_value_t *v = mj_get(obj, name);
    return v && v->type == MJ_STRING ? v->str : NULL;
}

unsigned long long mj_get_u64(const mj_value_t *obj, const char *name, unsigned long long def)
{
    const mj_value_t *v = mj_get(obj, name);
    if (!v || v->type != MJ_NUMBER || !v->num_text || v->num_text[0] == '-')
        return def;
    char *end;
    unsigned long long n = strtoull(v->num_text, &end, 10);
    return *end ? def : n;
}
