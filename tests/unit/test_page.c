/*
 * test_page.c - api/page.h's content negotiation (who gets the token page
 * and who keeps etcd's JSON) and util/html.h's escaper.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "api/page.h"
#include "util/html.h"

/* What browsers send when they navigate to a page. */
static const char chrome[] = "text/html,application/xhtml+xml,application/xml;q=0.9,"
                             "image/avif,image/webp,image/apng,*/*;q=0.8,"
                             "application/signed-exchange;v=b3;q=0.7";
static const char firefox[] = "text/html,application/xhtml+xml,application/xml;q=0.9,"
                              "*/*;q=0.8";

static void test_browsers_get_html(void **state)
{
    (void)state;
    assert_true(page_wants_html(chrome));
    assert_true(page_wants_html(firefox));
    assert_true(page_wants_html("text/html"));
    assert_true(page_wants_html("TEXT/HTML ; q=1.0"));
    assert_true(page_wants_html("application/json;q=0.5, text/html"));
    assert_true(page_wants_html("text/html;level=1;q=0.9, */*;q=0.1"));
    /* two Accept headers, joined by the server */
    assert_true(page_wants_html("*/*;q=0.1, text/html"));
}

static void test_api_clients_get_json(void **state)
{
    (void)state;
    assert_false(page_wants_html(NULL)); /* etcd's Go client sends none */
    assert_false(page_wants_html(""));
    assert_false(page_wants_html("*/*")); /* curl, fetch() */
    assert_false(page_wants_html("application/json"));
    assert_false(page_wants_html("text/*"));         /* not explicit */
    assert_false(page_wants_html("text/html, */*")); /* a tie */
    assert_false(page_wants_html("text/html;q=0.5, application/*;q=0.5"));
    assert_false(page_wants_html("application/json, text/html;q=0.9"));
    assert_false(page_wants_html("text/html;q=0"));     /* not acceptable */
    assert_false(page_wants_html("text/html;q=bogus")); /* malformed: ignored */
    assert_false(page_wants_html("text/html;q=1.5"));
    assert_false(page_wants_html("text/html;q=0.1234"));
    assert_false(page_wants_html("text/htmlx"));
    assert_false(page_wants_html(",,;;,"));
}

static void check_escape(const char *in, const char *want)
{
    buf_t b = BUF_INIT;
    html_puts_escaped(&b, in);
    assert_false(buf_failed(&b));
    assert_string_equal(buf_cstr(&b), want);
    buf_free(&b);
}

static void test_html_escape(void **state)
{
    (void)state;
    check_escape("", "");
    check_escape("plain", "plain");
    check_escape("<b id=\"x\">&'</b>", "&lt;b id=&#34;x&#34;&gt;&amp;&#39;&lt;/b&gt;");
    check_escape("a&b", "a&amp;b");
    check_escape("\xc3\xa9<", "\xc3\xa9&lt;"); /* UTF-8 passes through */
    buf_t b = BUF_INIT;
    html_puts_escaped(&b, NULL);
    assert_int_equal(b.len, 0);
    html_put_escaped(&b, "<x>", 2); /* only `len` bytes */
    assert_string_equal(buf_cstr(&b), "&lt;x");
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_browsers_get_html),
        cmocka_unit_test(test_api_clients_get_json),
        cmocka_unit_test(test_html_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
