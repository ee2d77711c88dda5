/*
 * timeutil.c - clocks, Go-style durations and RFC 3339 timestamps.
 */
#include "util/timeutil.h"

#include <ctype.h>
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

int time_parse_duration_ms(const char *s, uint64_t *out_ms)
{
    static const struct {
        const char *name;
        double ms;
    } units[] = {{"ns", 1e-6}, {"us", 1e-3}, {"µs", 1e-3}, {"ms", 1}, {"s", 1e3},
                 {"m", 60e3},  {"h", 3600e3}};
    if (!s || !*s)
        return -1;
    if (strcmp(s, "0") == 0) {
        *out_ms = 0;
        return 0;
    }
    double total = 0;
    while (*s) {
        if (!isdigit((unsigned char)*s) && *s != '.')
            return -1;
        char *end;
        double v = strtod(s, &end);
        if (end == s)
            return -1;
        s = end;
        size_t best = 0, best_len = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t n = strlen(units[i].name);
            if (strncmp(s, units[i].name, n) == 0 && n > best_len)
                best = i, best_len = n;
        }
        if (best_len == 0)
            return -1;
        total += v * units[best].ms;
        s += best_len;
    }
    if (total < 0 || total > 1e15)
        return -1;
    *out_ms = (uint64_t)total;
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
