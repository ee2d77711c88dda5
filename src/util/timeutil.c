/*
 * timeutil.c - clocks, Go-style durations and RFC 3339 timestamps.
 */
#include "util/timeutil.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t time_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t time_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

int64_t time_ttl_left_s(int64_t expire_ns, int64_t now_ns)
{
    if (!expire_ns)
        return 0;
    int64_t d = expire_ns - now_ns;
    return d / NS_PER_SEC + (d % NS_PER_SEC > 0);
}

/*
 * Go's time.ParseDuration, in integer nanoseconds: [+]{digits[.digits]unit}+
 * or "0". Negative durations are refused (no setting of disco takes one).
 */
int time_parse_duration_ms(const char *s, uint64_t *out_ms)
{
    static const struct {
        const char *name;
        uint64_t ns;
    } units[] = {
        {"ns", 1},           {"us", 1000},         {"\xc2\xb5s", 1000}, /* U+00B5 micro sign */
        {"\xce\xbcs", 1000},                                            /* U+03BC Greek mu */
        {"ms", 1000000},     {"s", 1000000000ULL}, {"m", 60000000000ULL}, {"h", 3600000000000ULL}};
    if (!s || !*s)
        return -1;
    if (*s == '+')
        s++;
    if (strcmp(s, "0") == 0) {
        *out_ms = 0;
        return 0;
    }
    if (!*s)
        return -1;
    uint64_t total = 0;
    while (*s) {
        uint64_t whole = 0, frac = 0, scale = 1;
        bool digits = false;
        for (; *s >= '0' && *s <= '9'; s++, digits = true) {
            if (whole > (UINT64_MAX - 9) / 10)
                return -1;
            whole = whole * 10 + (uint64_t)(*s - '0');
        }
        if (*s == '.') {
            s++;
            for (; *s >= '0' && *s <= '9'; s++, digits = true) {
                if (scale < 1000000000000000000ULL) { /* extra digits are dropped, as in Go */
                    frac = frac * 10 + (uint64_t)(*s - '0');
                    scale *= 10;
                }
            }
        }
        if (!digits)
            return -1;
        size_t best = 0, best_len = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t n = strlen(units[i].name);
            if (strncmp(s, units[i].name, n) == 0 && n > best_len)
                best = i, best_len = n;
        }
        if (best_len == 0)
            return -1;
        uint64_t unit = units[best].ns;
        if (whole > UINT64_MAX / unit)
            return -1;
        uint64_t v = whole * unit;
        /* frac/scale of a unit, without floating point */
        uint64_t f = (uint64_t)((unsigned __int128)frac * unit / scale);
        if (v > UINT64_MAX - f || total > UINT64_MAX - v - f)
            return -1;
        total += v + f;
        s += best_len;
    }
    *out_ms = total / 1000000ULL;
    return 0;
}

size_t time_format_rfc3339nano(int64_t wall_ns, char out[40])
{
    time_t sec = (time_t)(wall_ns / NS_PER_SEC);
    long nsec = (long)(wall_ns % NS_PER_SEC);
    if (nsec < 0) {
        nsec += NS_PER_SEC;
        sec -= 1;
    }
    struct tm tm;
    gmtime_r(&sec, &tm);
    int n = snprintf(out, 40, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (nsec) {
        char frac[16];
        snprintf(frac, sizeof frac, ".%09ld", nsec);
        size_t fl = strlen(frac);
        while (frac[fl - 1] == '0')
            frac[--fl] = '\0';
        memcpy(out + n, frac, fl + 1);
        n += (int)fl;
    }
    out[n++] = 'Z';
    out[n] = '\0';
    return (size_t)n;
}
