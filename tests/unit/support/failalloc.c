/*
 * failalloc.c - see failalloc.h. The __wrap_ functions stand in for the
 * allocator wherever the linker was told to wrap it; __real_ is libc's.
 */
#include "failalloc.h"

#include <stddef.h>

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);

void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

static unsigned long countdown; /* 0: disarmed */
static bool failed;

void failalloc_arm(unsigned long nth)
{
    countdown = nth;
    failed = false;
}

bool failalloc_disarm(void)
{
    countdown = 0;
    return failed;
}

/* Counts one allocation; true when it is the one to fail. */
static bool should_fail(void)
{
    if (countdown == 0 || --countdown != 0)
        return false;
    failed = true;
    return true;
}

void *__wrap_malloc(size_t size)
{
    return should_fail() ? NULL : __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
    return should_fail() ? NULL : __real_realloc(p, size);
}

char *__wrap_strdup(const char *s)
{
    return should_fail() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return should_fail() ? NULL : __real_strndup(s, n);
}
