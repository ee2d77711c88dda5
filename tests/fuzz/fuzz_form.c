/*
 * fuzz_form.c - api/form.h against a reference decoder written from the
 * rules form.h states (Go's net/url: '&' separates, empty pairs skipped,
 * '+' is a space in forms, a ';' or a bad %-escape is an error and the
 * pair is dropped, and disco refuses a NUL byte, escaped or raw).
 *
 * The first input byte picks what is fuzzed: a form, a path, or the
 * bool and number parsers; the rest is the text.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/form.h"

static int ref_hex(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reference unescape: returns false on a bad escape or a NUL byte. */
static bool ref_unescape(const uint8_t *s, size_t len, bool plus_is_space, char *out,
                         size_t *out_len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (c == '%') {
            if (i + 2 >= len || ref_hex(s[i + 1]) < 0 || ref_hex(s[i + 2]) < 0)
                return false;
            c = (uint8_t)(ref_hex(s[i + 1]) << 4 | ref_hex(s[i + 2]));
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (c == 0)
            return false;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    *out_len = o;
    return true;
}

static void check_form(const uint8_t *s, size_t len)
{
    form_t f;
    form_init(&f);
    if (form_parse(&f, (const char *)s, len) != 0) {
        form_free(&f); /* out of memory: nothing to compare */
        return;
    }
    char *name = malloc(len + 1), *value = malloc(len + 1);
    if (!name || !value)
        abort();
    size_t expect_n = 0;
    bool expect_error = false, semicolon = false;
    for (size_t i = 0; i <= len;) {
        size_t start = i;
        while (i < len && s[i] != '&')
            i++;
        const uint8_t *pair = s + start;
        size_t plen = i - start;
        i++;
        if (plen == 0)
            continue;
        if (memchr(pair, ';', plen)) {
            expect_error = semicolon = true;
            continue;
        }
        const uint8_t *eq = memchr(pair, '=', plen);
        size_t nlen = eq ? (size_t)(eq - pair) : plen, name_len, value_len = 0;
        if (!ref_unescape(pair, nlen, true, name, &name_len) ||
            (eq && !ref_unescape(eq + 1, plen - nlen - 1, true, value, &value_len))) {
            expect_error = true;
            continue;
        }
        if (!eq)
            value[0] = '\0';
        /* The expected pair must be the next one decoded, byte for byte. */
        if (expect_n >= f.n)
            abort();
        const form_param_t *p = &f.params[expect_n++];
        if (strlen(p->name) != name_len || memcmp(p->name, name, name_len) != 0)
            abort();
        if (strlen(p->value) != value_len || memcmp(p->value, value, value_len) != 0)
            abort();
    }
    if (expect_n != f.n || expect_error != (f.error != NULL))
        abort();
    if (semicolon && strcmp(f.error, "invalid semicolon separator in query") != 0)
        abort();
    if (f.n && form_get(&f, f.params[0].name) != f.params[0].value)
        abort(); /* the first value of a name wins */
    free(name);
    free(value);
    form_free(&f);
}

static void check_path(const uint8_t *s, size_t len)
{
    int bad = 0;
    char *got = form_unescape_path((const char *)s, len, &bad);
    char *want = malloc(len + 1);
    if (!want)
        abort();
    size_t want_len;
    bool ok = ref_unescape(s, len, false, want, &want_len);
    if (got) {
        if (!ok || strlen(got) != want_len || memcmp(got, want, want_len) != 0)
            abort();
    } else if (ok || !bad) {
        abort(); /* refused a good path, or called a bad one "out of memory" */
    }
    free(got);
    free(want);
}

static void check_scalars(const uint8_t *s, size_t len)
{
    char *str = malloc(len + 1);
    if (!str)
        abort();
    memcpy(str, s, len);
    str[len] = '\0';
    if (strlen(str) == len) {
        uint64_t v = 0;
        bool digits = len > 0 && strspn(str, "0123456789") == len;
        bool fits =
            digits && (len < 20 || (len == 20 && strcmp(str, "18446744073709551615") <= 0) ||
                       (len > 20 && strspn(str, "0") >= len - 20 &&
                        strcmp(str + len - 20, "18446744073709551615") <= 0));
        bool parsed = form_parse_u64(str, &v);
        if (parsed != fits)
            abort();
        if (parsed) {
            char back[32];
            snprintf(back, sizeof back, "%llu", (unsigned long long)v);
            size_t zeros = strspn(str, "0");
            const char *sig = zeros == len ? "0" : str + zeros;
            if (strcmp(back, sig) != 0)
                abort();
        }
        bool b;
        static const char *const good[] = {"1", "t", "T", "TRUE",  "true",  "True",
                                           "0", "f", "F", "FALSE", "false", "False"};
        bool known = false;
        for (size_t i = 0; i < 12; i++)
            if (strcmp(str, good[i]) == 0)
                known = true;
        if (form_parse_bool(str, &b) != known)
            abort();
    }
    free(str);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    switch (data[0] % 3) {
    case 0: check_form(data + 1, size - 1); break;
    case 1: check_path(data + 1, size - 1); break;
    default: check_scalars(data + 1, size - 1); break;
    }
    return 0;
}
