/*
 * minijson.h - a small JSON reader for the CLI: parses one document into a
 * tree the caller walks and frees. Enough for etcd's v2 answers; not used
 * by the server, whose JSON is written, never read.
 */
#ifndef DISCO_CMD_MINIJSON_H
#define DISCO_CMD_MINIJSON_H

#include <stddef.h>

/* Deepest nesting accepted: a token listing is 4 levels deep. */
#define MINIJSON_MAX_DEPTH 32

enum mj_type { MJ_NULL, MJ_FALSE, MJ_TRUE, MJ_NUMBER, MJ_STRING, MJ_ARRAY, MJ_OBJECT };

/* A value. Objects and arrays list their members in document order
 * (`child`, then `next`); an object member has its `name`. Strings are
 * decoded UTF-8, NUL-terminated (a \u0000 inside ends them early). */
typedef struct mj_value {
    enum mj_type type;
    char *name;     /* member name inside an object, else NULL */
    char *str;      /* MJ_STRING */
    double num;     /* MJ_NUMBER */
    char *num_text; /* MJ_NUMBER as written, for exact integers */
    struct mj_value *child, *next;
} mj_value_t;

/* Parses `text` (len bytes). Returns the root, or NULL when the text is not
 * one JSON value (or memory ran out). Free with mj_free. */
mj_value_t *mj_parse(const char *text, size_t len);
void mj_free(mj_value_t *v);
/* The member `name` of an object; NULL when absent or `obj` is no object. */
const mj_value_t *mj_get(const mj_value_t *obj, const char *name);
/* A string member's text, or NULL. */
const char *mj_get_str(const mj_value_t *obj, const char *name);
/* A whole-number member (unsigned), or `def` when absent or not one. */
unsigned long long mj_get_u64(const mj_value_t *obj, const char *name, unsigned long long def);

#endif
