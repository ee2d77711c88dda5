/*
 * timeutil.h - clocks, Go-style durations and RFC 3339 timestamps.
 *
 * Two clocks on purpose: timeouts use the monotonic clock (immune to the wall
 * clock being set), while TTL expirations are wall-clock instants because
 * etcd shows them to clients as RFC 3339 dates and they survive restarts.
 */
#ifndef DISCO_UTIL_TIMEUTIL_H
#define DISCO_UTIL_TIMEUTIL_H

#include <stddef.h>
#include <stdint.h>

#define NS_PER_SEC 1000000000LL
#define NS_PER_MS 1000000LL

/* Monotonic milliseconds, for timeouts. */
uint64_t time_mono_ms(void);
/* Wall-clock nanoseconds since the Unix epoch, for TTLs and token ages. */
int64_t time_wall_ns(void);

/*
 * Whole seconds left until `expire_ns` as etcd reports a TTL: rounded up
 * while positive (1..n, never n+1), truncated toward zero otherwise. 0 for
 * a permanent key (expire_ns == 0).
 */
int64_t time_ttl_left_s(int64_t expire_ns, int64_t now_ns);

/*
 * Parses a Go duration ("300ms", "1.5h", "168h", "1h30m"; units ns us ms s m
 * h) into milliseconds, rounding down. A bare "0" is accepted. Returns 0 on
 * success, -1 on a malformed or negative value.
 */
int time_parse_duration_ms(const char *s, uint64_t *out_ms);

/*
 * Formats a wall-clock instant as Go's time.RFC3339Nano in UTC: fractional
 * seconds with trailing zeros removed, "Z" suffix. `out` needs 40 bytes.
 * Returns the length written.
 */
size_t time_format_rfc3339nano(int64_t wall_ns, char out[40]);

#endif
