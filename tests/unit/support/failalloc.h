/*
 * failalloc.h - allocation-failure injection for unit tests, in the spirit
 * of SQLite's malloc tests: arm it with N and the Nth allocation from then
 * on (malloc, calloc, realloc, strdup, strndup) returns NULL; every other
 * one succeeds.
 *
 * Works by link-time wrapping: a test linked with failalloc.c must also be
 * linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup,
 * --wrap=strndup (see tests/CMakeLists.txt). Only calls from objects linked
 * statically into the test (disco_core, the test itself) are wrapped, not
 * calls made inside shared libraries. Not thread-safe: single-threaded
 * code only.
 */
#ifndef DISCO_TEST_FAILALLOC_H
#define DISCO_TEST_FAILALLOC_H

#include <stdbool.h>

/* From now on, the `nth` allocation (1 = the next one) fails, once. */
void failalloc_arm(unsigned long nth);
/* Stops failing; returns whether an allocation was failed since arming. */
bool failalloc_disarm(void);

#endif
