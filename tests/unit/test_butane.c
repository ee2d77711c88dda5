/*
 * test_butane.c - util/butane.h: the Flatcar etcd-member config that the
 * token page and `disco new --butane` both hand out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "util/butane.h"
#include "util/html.h"

/* The whole text, to the byte, is kept as a file beside this one: what
 * Flatcar's guide gives, with GOLDEN_URL, readable as the YAML it is. */
#define GOLDEN_URL "https://disco.example/0123456789abcdef0123456789abcdef"
#define GOLDEN_MAX_BYTES 8192

/* Reads data/<name> beside this source file into `out` (NUL-terminated);
 * returns its length. */
static size_t read_golden(const char *name, char *out, size_t cap)
{
    char path[4096];
    const char *slash = strrchr(__FILE__, '/');
    int dir_len = slash ? (int)(slash - __FILE__) : 1;
    int n = snprintf(path, sizeof path, "%.*s/data/%s", dir_len, slash ? __FILE__ : ".", name);
    assert_true(n > 0 && (size_t)n < sizeof path);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    size_t len = fread(out, 1, cap - 1, f);
    assert_false(ferror(f));
    assert_true(feof(f)); /* all of it fitted */
    fclose(f);
    out[len] = '\0';
    return len;
}

static void test_config_is_the_guides_with_the_url(void **state)
{
    (void)state;
    static char want[GOLDEN_MAX_BYTES];
    size_t want_len = read_golden("butane_etcd_member.bu", want, sizeof want);
    buf_t b = BUF_INIT;
    butane_put_etcd_member(&b, GOLDEN_URL);
    assert_false(buf_failed(&b));
    assert_string_equal(buf_cstr(&b), want);
    assert_int_equal(b.len, want_len);
    buf_free(&b);
}

static void test_appends_to_what_is_there(void **state)
{
    (void)state;
    buf_t b = BUF_INIT;
    buf_puts(&b, "# head\n");
    butane_put_etcd_member(&b, "http://h/t");
    assert_false(buf_failed(&b));
    const char *s = buf_cstr(&b);
    assert_int_equal(strncmp(s, "# head\nvariant: flatcar\n", 24), 0);
    const char *tail = "--discovery=\"http://h/t\"\n";
    assert_string_equal(s + b.len - strlen(tail), tail);
    buf_free(&b);
}

/* The text is plain: the URL goes in as it is, and escaping it is the
 * reader's; escaped as a whole for the page, every quote becomes &#34;
 * and nothing else in the config changes. */
static void test_plain_text_escaped_by_the_reader(void **state)
{
    (void)state;
    buf_t b = BUF_INIT, html = BUF_INIT;
    butane_put_etcd_member(&b, "http://h/a<b>&\"c'");
    assert_non_null(strstr(buf_cstr(&b), "--discovery=\"http://h/a<b>&\"c'\"\n"));
    html_put_escaped(&html, b.data, b.len);
    const char *h = buf_cstr(&html);
    assert_non_null(strstr(h, "--discovery=&#34;http://h/a&lt;b&gt;&amp;&#34;c&#39;&#34;\n"));
    assert_non_null(strstr(h, "--listen-peer-urls=&#34;http://${COREOS_CUSTOM_PRIVATE_IPV4}:2380"
                              "&#34; \\\n"));
    assert_null(strchr(h, '"'));
    buf_free(&b);
    buf_free(&html);
}

static void test_empty_url(void **state)
{
    (void)state;
    buf_t b = BUF_INIT;
    butane_put_etcd_member(&b, "");
    assert_false(buf_failed(&b));
    static char want[GOLDEN_MAX_BYTES];
    size_t want_len = read_golden("butane_etcd_member.bu", want, sizeof want);
    assert_int_equal(b.len, want_len - strlen(GOLDEN_URL));
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_is_the_guides_with_the_url),
        cmocka_unit_test(test_appends_to_what_is_there),
        cmocka_unit_test(test_plain_text_escaped_by_the_reader),
        cmocka_unit_test(test_empty_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
