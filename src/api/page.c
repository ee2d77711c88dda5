/*
 * page.c - the token page (see page.h): content negotiation, the page's
 * facts read from the registry, and the HTML.
 *
 * What the page shows comes from the same registry reads a member makes
 * (a get of the token directory, of its _config/size) plus two instants
 * the v2 JSON does not carry: when the token was made and when its
 * `size`-th member registered. Both are the wall clock of an event the
 * token's history holds (the history is whole: registry.h), read with a
 * watch that history answers at once, so no new registry interface is
 * needed and nothing is parked.
 *
 * Every value that came from a client (member keys and values, the Host
 * header through the URL prefix) is written through html_put_escaped, and
 * none goes into the script: the script reads only the index, from a data
 * attribute, and the page's own path. A Content-Security-Policy with a
 * per-answer nonce backs that up: markup that slipped through could run no
 * script and load nothing.
 */
#include "api/page.h"

#include <assert.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "api/api_internal.h"
#include "api/discovery.h"
#include "util/butane.h"
#include "util/html.h"
#include "util/timeutil.h"

/* Registrations shown in full; the registry bounds a token's keys anyway
 * (--max-keys-per-token), this bounds one answer whatever that flag says. */
#define PAGE_MAX_ROWS 5000
/* The first `size` rows are always kept: the members and when the last
 * of them came are never cut off. */
_Static_assert(REGISTRY_MAX_SIZE <= PAGE_MAX_ROWS, "a whole cluster fits in the rows kept");
/* A long-poll that fails (server restarting, network gone) is retried
 * after a delay that doubles from the first to the last. */
#define PAGE_RETRY_FIRST_MS 1000
#define PAGE_RETRY_MAX_MS 30000

/* ---- content negotiation ------------------------------------------------ */

/* Parses an RFC 9110 qvalue ("0", "0.5", "1.000") into thousandths.
 * Returns -1 when it is malformed. */
static int parse_qvalue(const char *s, size_t n)
{
    if (n == 0 || (s[0] != '0' && s[0] != '1'))
        return -1;
    int q = (s[0] - '0') * 1000;
    if (n == 1)
        return q;
    if (s[1] != '.' || n > 5)
        return -1;
    int scale = 100;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        q += (s[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

static const char *skip_ows(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* The first `c` in [p, end), or `end`. */
static const char *find_char(const char *p, const char *end, char c)
{
    while (p < end && *p != c)
        p++;
    return p;
}

static const char *trim_ows_end(const char *start, const char *end)
{
    while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    return end;
}

/* The q of one media range's parameters ("; q=0.8; x=y"), 1000 when it
 * has none, -1 when its q is malformed. */
static int range_q(const char *params, const char *end)
{
    const char *p = params;
    while (p < end) {
        assert(*p == ';');
        p = skip_ows(p + 1, end);
        const char *pe = find_char(p, end, ';');
        const char *ve = trim_ows_end(p, pe);
        if (ve - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=')
            return parse_qvalue(p + 2, (size_t)(ve - p - 2));
        p = pe;
    }
    return 1000;
}

static bool range_is(const char *r, size_t n, const char *name)
{
    return n == strlen(name) && strncasecmp(r, name, n) == 0;
}

bool page_wants_html(const char *accept)
{
    if (!accept)
        return false;
    int html_q = -1, json_q = -1; /* -1: not listed */
    const char *p = accept, *end = accept + strlen(accept);
    while (p < end) {
        const char *e = find_char(p, end, ',');
        const char *r = skip_ows(p, e);
        const char *params = find_char(r, e, ';');
        size_t rn = (size_t)(trim_ows_end(r, params) - r);
        int q = range_q(params, trim_ows_end(params, e));
        if (q >= 0) {
            if (range_is(r, rn, "text/html") && q > html_q)
                html_q = q;
            else if ((range_is(r, rn, "application/json") || range_is(r, rn, "application/*") ||
                      range_is(r, rn, "*/*")) &&
                     q > json_q)
                json_q = q;
        }
        p = e + 1;
    }
    return html_q > 0 && html_q > json_q;
}

bool page_is_token_page_request(const http_request_t *req)
{
    if (req->method != HTTP_GET && req->method != HTTP_HEAD)
        return false;
    if (req->query_len != 0 || req->path_len < 2 || req->path[0] != '/')
        return false;
    /* A valid token name has no '/' and no '%': the raw path is the name. */
    if (!registry_valid_token_name(req->path + 1, req->path_len - 1))
        return false;
    return page_wants_html(req->accept);
}

/* ---- shared pieces ------------------------------------------------------ */

bool page_make_nonce(char out[PAGE_NONCE_CHARS + 1])
{
    unsigned char raw[PAGE_NONCE_CHARS / 2];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, GRND_NONBLOCK);
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[PAGE_NONCE_CHARS] = '\0';
    return true;
}

void page_put_html_headers(buf_t *out, const char *nonce)
{
    buf_puts(out, "Cache-Control: no-store\r\n"
                  "Vary: Accept\r\n"
                  "X-Content-Type-Options: nosniff\r\n"
                  "Referrer-Policy: no-referrer\r\n"
                  "Content-Security-Policy: default-src 'none'; ");
    if (nonce)
        buf_printf(out, "script-src 'nonce-%s'; style-src 'nonce-%s'; ", nonce, nonce);
    buf_puts(out, "connect-src 'self'; form-action 'self'; base-uri 'none'; "
                  "frame-ancestors 'none'\r\n");
}

void page_put_style(buf_t *out, const char *nonce)
{
    buf_puts(out, "<style");
    if (nonce)
        buf_printf(out, " nonce=\"%s\"", nonce);
    buf_puts(out, ">\n"
                  "body{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;"
                  "padding:0 1rem;color:#1b1b1b;background:#fff;line-height:1.45}\n"
                  "code,pre{font-family:ui-monospace,monospace;font-size:.9em}\n"
                  "pre{background:#f3f3f3;padding:.75rem;overflow-x:auto;border-radius:4px}\n"
                  "table{border-collapse:collapse;width:100%}\n"
                  "th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;"
                  "vertical-align:top;overflow-wrap:anywhere}\n"
                  "tr.extra td{color:#7a4b00;background:#fff6e5}\n"
                  ".state{font-size:1.2rem;font-weight:600;padding:.6rem .8rem;"
                  "border-radius:4px}\n"
                  ".waiting{background:#e8f0fe}.complete{background:#e6f4ea}"
                  ".overfull{background:#fce8e6}.unknown{background:#f3f3f3}\n"
                  "dt{font-weight:600;float:left;clear:left;width:9rem}"
                  "dd{margin:0 0 .3rem 9.5rem}\n"
                  "#live{color:#555;font-size:.9em}\n"
                  "</style>\n");
}

void page_put_new_form(buf_t *out, unsigned size)
{
    buf_printf(out,
               "<form method=\"post\" action=\"/new\">"
               "<label>Size <input name=\"size\" type=\"number\" min=\"%d\" max=\"%d\" "
               "value=\"%u\"></label> <button type=\"submit\">Make a new token</button>"
               "</form>\n",
               REGISTRY_MIN_SIZE, REGISTRY_MAX_SIZE, size);
}

/* "2026-12-02 05:40:15 UTC" */
static void put_time(buf_t *out, int64_t wall_ns)
{
    time_t s = (time_t)(wall_ns / NS_PER_SEC);
    struct tm tm;
    char text[48];
    if (!gmtime_r(&s, &tm) || strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0) {
        buf_puts(out, "(unknown)");
        return;
    }
    buf_puts(out, text);
}

/* A duration for people: "45 s", "12 min", "5 h 3 min", "9 days". */
static void put_duration(buf_t *out, int64_t ns)
{
    int64_t s = ns / NS_PER_SEC;
    if (s < 0)
        s = 0;
    if (s < 60)
        buf_printf(out, "%lld s", (long long)s);
    else if (s < 3600)
        buf_printf(out, "%lld min", (long long)(s / 60));
    else if (s < 48 * 3600)
        buf_printf(out, "%lld h %lld min", (long long)(s / 3600), (long long)(s % 3600 / 60));
    else
        buf_printf(out, "%lld days %lld h", (long long)(s / 86400), (long long)(s % 86400 / 3600));
}

/* ---- what the page shows ------------------------------------------------ */

/* One registration: offsets into the facts' `strings` buffer, so the
 * strings outlive the registry read they were copied from. */
typedef struct page_row {
    uint64_t created_index;
    size_t id_off, value_off; /* value_off == SIZE_MAX: a directory */
} page_row_t;

typedef struct page_facts {
    const char *token;
    unsigned size;
    uint64_t index;      /* X-Etcd-Index when read: the page's watch starts after it */
    int64_t created_ns;  /* 0: unknown */
    int64_t complete_ns; /* when the size-th registration came; 0: not complete/unknown */
    page_row_t *rows;    /* registration order (createdIndex) */
    size_t n_rows;       /* registrations (all, even beyond PAGE_MAX_ROWS) */
    size_t n_rows_kept;  /* rows[] entries */
    buf_t strings;       /* NUL-separated ids and values */
    bool is_v3;          /* v3 members: rows come from <token>/members/ */
} page_facts_t;

static void never_fires(reg_waiter_t *w, const reg_event_t *ev)
{
    (void)w;
    (void)ev;
    assert(!"page.c unwatches before returning to the loop");
}

/*
 * The wall-clock instant of the event that created `key` at
 * `created_index`, or 0 when the history cannot say (a store read failed).
 * A watch from that index on that key is answered from the token's history
 * at once by exactly that event (nothing changes `key` between its
 * creation and itself); should it park all the same, it is taken back.
 */
static int64_t created_at_ns(registry_t *reg, const char *key, uint64_t created_index)
{
    reg_waiter_t w;
    reg_result_t res = {0};
    int64_t at = 0;
    registry_watch(reg, key, false, created_index, &w, never_fires, NULL, &res);
    if (res.err == REG_OK && res.event && res.event->index == created_index)
        at = res.event->wall_ns;
    if (res.err == REG_OK && !res.event)
        registry_unwatch(reg, &w);
    reg_result_clear(&res);
    return at;
}

static int compare_rows(const void *a, const void *b)
{
    const page_row_t *x = a, *y = b;
    return x->created_index < y->created_index ? -1 : x->created_index > y->created_index;
}

/*
 * Reads what the page shows of `token`. Returns REG_OK, or the registry's
 * error with its cause in `res` (the caller clears it); -ENOMEM as
 * REG_E_INTERNAL.
 */
static enum reg_errcode read_facts(api_t *api, const char *token, page_facts_t *f,
                                   reg_result_t *res)
{
    registry_t *reg = api->reg;
    int64_t now = time_wall_ns();
    buf_t key = BUF_INIT;
    buf_printf(&key, "%s/%s", REGISTRY_PREFIX, token);
    size_t dir_len = key.len;
    if (buf_failed(&key))
        return REG_E_INTERNAL;

    /* The registrations: the token directory's visible children, as the
     * member's own get sees them (etcd's discovery client drops _config). */
    registry_get(reg, buf_cstr(&key), now, res);
    if (res->err) {
        buf_free(&key);
        return res->err;
    }
    f->index = res->index;
    const reg_node_t *dir = res->node;
    /* A token of v3 members (etcd 3.6+: --discovery-token) keeps them in
     * <token>/members/<id>; a token serves one kind of member, so such a
     * directory means every registration is in it. */
    for (const reg_node_t *c = reg_node_first_child(dir); c; c = reg_node_next_sibling(c)) {
        if (reg_node_is_dir(c) && strcmp(reg_node_name(c), "members") == 0) {
            dir = c;
            f->is_v3 = true;
            break;
        }
    }
    size_t n = 0;
    for (const reg_node_t *c = reg_node_first_child(dir); c; c = reg_node_next_sibling(c))
        if (!reg_node_is_hidden(c))
            n++;
    f->n_rows = n;
    f->n_rows_kept = n < PAGE_MAX_ROWS ? n : PAGE_MAX_ROWS;
    f->rows = f->n_rows_kept ? calloc(f->n_rows_kept, sizeof *f->rows) : NULL;
    if (f->n_rows_kept && !f->rows) {
        buf_free(&key);
        return REG_E_INTERNAL;
    }
    size_t i = 0;
    for (const reg_node_t *c = reg_node_first_child(dir); c && i < f->n_rows_kept;
         c = reg_node_next_sibling(c)) {
        if (reg_node_is_hidden(c))
            continue;
        page_row_t *r = &f->rows[i++];
        r->created_index = reg_node_created_index(c);
        r->id_off = f->strings.len;
        buf_append(&f->strings, reg_node_name(c), strlen(reg_node_name(c)) + 1);
        if (reg_node_is_dir(c)) {
            r->value_off = SIZE_MAX;
        } else {
            const char *v = reg_node_value(c) ? reg_node_value(c) : "";
            r->value_off = f->strings.len;
            buf_append(&f->strings, v, strlen(v) + 1);
        }
    }
    assert(i == f->n_rows_kept);
    reg_result_clear(res);
    if (buf_failed(&f->strings)) { /* offsets past the end: use none of them */
        buf_free(&key);
        return REG_E_INTERNAL;
    }
    /* Children are kept in creation order, which is createdIndex order;
     * sorting costs nothing on sorted input and keeps the page right if
     * that ever changes. */
    if (f->n_rows_kept > 1) /* qsort wants a non-NULL array even for no rows */
        qsort(f->rows, f->n_rows_kept, sizeof *f->rows, compare_rows);

    /* The size, and when it was set: the token's creation. */
    buf_puts(&key, "/_config/size");
    registry_get(reg, buf_cstr(&key), now, res);
    if (res->err == REG_OK && reg_node_value(res->node)) {
        unsigned long v = strtoul(reg_node_value(res->node), NULL, 10);
        f->size = v >= REGISTRY_MIN_SIZE && v <= REGISTRY_MAX_SIZE ? (unsigned)v : 0;
        uint64_t ci = reg_node_created_index(res->node);
        reg_result_clear(res);
        f->created_ns = created_at_ns(reg, buf_cstr(&key), ci);
    }
    reg_result_clear(res);

    /* When the size-th registration came: the token is complete since. */
    if (f->size && f->n_rows_kept >= f->size) {
        const page_row_t *last = &f->rows[f->size - 1];
        buf_truncate(&key, dir_len);
        buf_putc(&key, '/');
        buf_puts(&key, f->strings.data + last->id_off);
        if (!buf_failed(&key))
            f->complete_ns = created_at_ns(reg, buf_cstr(&key), last->created_index);
    }
    bool failed = buf_failed(&key);
    buf_free(&key);
    return failed ? REG_E_INTERNAL : REG_OK;
}

/* ---- the HTML ----------------------------------------------------------- */

static void put_head(buf_t *out, const char *title_token, const char *nonce)
{
    buf_puts(out, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                  "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                  "<meta name=\"robots\" content=\"noindex\">\n<title>");
    if (title_token) {
        buf_puts(out, "disco: token ");
        html_puts_escaped(out, title_token);
    } else {
        buf_puts(out, "disco: etcd cluster discovery");
    }
    buf_puts(out, "</title>\n");
    page_put_style(out, nonce);
    buf_puts(out, "</head>\n");
}

/*
 * One registration's value as etcd writes it: "name=peerURL", or several
 * "name=peerURL" joined by ',' for a member with more than one peer URL.
 * Shown as the name and the URLs, one per line; a value of another shape
 * is shown as it is, under the name column.
 */
static void put_member_cells(buf_t *out, const char *value)
{
    const char *eq = strchr(value, '=');
    if (!eq || eq == value) {
        buf_puts(out, "<td class=\"name\"><em>not name=URL:</em> ");
        html_puts_escaped(out, value);
        buf_puts(out, "</td><td class=\"peers\"></td>");
        return;
    }
    buf_puts(out, "<td class=\"name\">");
    html_put_escaped(out, value, (size_t)(eq - value));
    buf_puts(out, "</td><td class=\"peers\">");
    const char *p = value;
    bool first = true;
    while (*p) {
        size_t n = strcspn(p, ",");
        const char *e = memchr(p, '=', n);
        const char *url = e ? e + 1 : p;
        if (!first)
            buf_puts(out, "<br>");
        html_put_escaped(out, url, (size_t)(p + n - url));
        first = false;
        p += n;
        if (*p == ',')
            p++;
    }
    buf_puts(out, "</td>");
}

static void put_rows(buf_t *out, const page_facts_t *f)
{
    if (f->n_rows == 0) {
        buf_puts(out, "<p id=\"no-members\">No machine has registered yet.</p>\n");
        return;
    }
    buf_puts(out, "<table id=\"members\"><thead><tr><th>#</th><th>Role</th><th>Name</th>"
                  "<th>Peer URLs</th><th>Member ID</th><th>Registered at index</th></tr>"
                  "</thead>\n<tbody>\n");
    for (size_t i = 0; i < f->n_rows_kept; i++) {
        const page_row_t *r = &f->rows[i];
        bool is_member = f->size == 0 || i < f->size;
        buf_printf(out, "<tr class=\"%s\"><td>%zu</td><td class=\"role\">%s</td>",
                   is_member ? "member" : "extra", i + 1, is_member ? "member" : "extra (proxy)");
        if (r->value_off == SIZE_MAX)
            buf_puts(out, "<td class=\"name\"><em>a directory</em></td><td class=\"peers\"></td>");
        else
            put_member_cells(out, f->strings.data + r->value_off);
        buf_puts(out, "<td><code>");
        html_puts_escaped(out, f->strings.data + r->id_off);
        buf_printf(out, "</code></td><td>%llu</td></tr>\n", (unsigned long long)r->created_index);
    }
    buf_puts(out, "</tbody></table>\n");
    if (f->n_rows > f->n_rows_kept)
        buf_printf(out, "<p>%zu more registrations are not shown.</p>\n",
                   f->n_rows - f->n_rows_kept);
}

/* The state in words and what to do next. */
static void put_state(buf_t *out, const page_facts_t *f, const char *url_html)
{
    size_t n = f->n_rows;
    unsigned size = f->size;
    if (size == 0) {
        buf_puts(out, "<p id=\"state\" class=\"state unknown\">This token has no readable "
                      "size.</p>\n");
        return;
    }
    if (n < size) {
        size_t more = size - n;
        buf_printf(out,
                   "<p id=\"state\" class=\"state waiting\">Waiting for %zu more "
                   "(%zu of %u registered).</p>\n",
                   more, n, size);
        buf_printf(out,
                   "<p id=\"next\">Start the remaining %zu machine%s with this discovery URL. "
                   "Each etcd member registers here, then waits until all %u have; the cluster "
                   "forms when the last one arrives. A machine you started that is not listed "
                   "below has not reached this server: check its <code>--discovery</code> "
                   "URL and that it can reach <code>%s</code>.</p>\n",
                   more, more == 1 ? "" : "s", size, url_html);
        return;
    }
    if (n == size) {
        buf_puts(out, "<p id=\"state\" class=\"state complete\">Complete since ");
        if (f->complete_ns)
            put_time(out, f->complete_ns);
        else
            buf_puts(out, "(time unknown)");
        buf_printf(out, ": all %u members registered.</p>\n", size);
        buf_puts(out, "<p id=\"next\">A token bootstraps one cluster, once. If the machines below "
                      "are running, there is nothing to do. If <strong>new machines</strong> are "
                      "reading this token now, this is likely a <strong>stale token</strong>: a "
                      "machine that reads a complete token does not join; etcd makes it a proxy "
                      "of the members below (or stops with \"cluster is full\"), and if those "
                      "members are gone it proxies to nothing. Make a new token for a new "
                      "cluster:</p>\n");
        page_put_new_form(out, size);
        return;
    }
    buf_printf(out,
               "<p id=\"state\" class=\"state overfull\">More registrations than size: %zu "
               "registered for a size of %u.</p>\n",
               n, size);
    buf_printf(out,
               "<p id=\"next\">The first %u registrations, in order, are the cluster; the "
               "%zu after them were told the cluster is full and run as proxies (or stopped). "
               "Either more machines were started with this URL than the size, or machines "
               "meant for a new cluster were given this old token (a stale token). For a new "
               "or a bigger cluster, make a new token:</p>\n",
               size, n - size);
    page_put_new_form(out, size);
}

static void put_facts(buf_t *out, api_t *api, const page_facts_t *f, const char *url_html)
{
    int64_t now = time_wall_ns();
    buf_printf(out, "<dl>\n<dt>Discovery URL</dt><dd><code id=\"url\">%s</code></dd>\n", url_html);
    buf_printf(out, "<dt>Size</dt><dd id=\"size\">%u</dd>\n", f->size);
    buf_puts(out, "<dt>Created</dt><dd id=\"created\">");
    if (f->created_ns) {
        put_time(out, f->created_ns);
        buf_puts(out, " (");
        put_duration(out, now - f->created_ns);
        buf_puts(out, " ago)");
    } else {
        buf_puts(out, "(unknown)");
    }
    buf_puts(out, "</dd>\n<dt>Expires</dt><dd id=\"expires\">");
    if (api->gc_every_ns <= 0) {
        buf_puts(out, "never: this server does not remove old tokens (<code>--gcfreq 0</code>)");
    } else if (!f->created_ns) {
        buf_puts(out, "when older than ");
        put_duration(out, api->min_age_ns);
        buf_puts(out, " (<code>--minage</code>)");
    } else {
        int64_t due = f->created_ns + api->min_age_ns;
        if (due <= now) {
            buf_puts(out, "due now: older than <code>--minage</code> (");
            put_duration(out, api->min_age_ns);
            buf_puts(out, "); the next sweep removes it");
        } else {
            buf_puts(out, "removed after ");
            put_time(out, due);
            buf_puts(out, " (in ");
            put_duration(out, due - now);
            buf_puts(out, "; <code>--minage</code> ");
            put_duration(out, api->min_age_ns);
            buf_puts(out, ")");
        }
    }
    buf_puts(out, "</dd>\n</dl>\n");
}

/*
 * The Butane config of Flatcar's cluster-discovery guide (util/butane.h),
 * with this token's URL, and the etcd flags. `url` is the token's URL as
 * it is; `url_html` and `host_port_html` (the URL's authority) are
 * HTML-escaped already.
 */
static void put_usage(buf_t *out, const page_facts_t *f, const char *url, const char *url_html,
                      const char *host_port_html)
{
    buf_puts(out, "<h2>Flatcar (Butane)</h2>\n"
                  "<p>Boot every machine of the cluster with the same config "
                  "(from Flatcar's cluster discovery guide):</p>\n<pre id=\"butane\">");
    /* The config is plain text: escaped as a whole, it shows in the page as
     * `disco new --butane` prints it. */
    buf_t butane = BUF_INIT;
    butane_put_etcd_member(&butane, url);
    if (buf_failed(&butane))
        out->failed = true;
    else
        html_put_escaped(out, butane.data, butane.len);
    buf_free(&butane);
    buf_puts(out, "</pre>\n"
                  "<p>Change <code>COREOS_CUSTOM_PRIVATE_IPV4</code> to the variable Afterburn "
                  "sets on your platform.</p>\n");
    buf_puts(out, "<h2>etcd flags</h2>\n<p>v2 discovery (etcd 2.x to 3.6), what this server "
                  "answers:</p>\n<pre id=\"flags-v2\">--discovery=");
    buf_puts(out, url_html);
    buf_puts(out, "</pre>\n<p>v3 discovery (etcd 3.6 and later) names the token and the "
                  "endpoints apart and reads them through etcd's v3 gRPC API:</p>\n"
                  "<pre id=\"flags-v3\">--discovery-token=");
    html_puts_escaped(out, f->token);
    buf_puts(out, " --discovery-endpoints=");
    buf_puts(out, host_port_html);
    buf_puts(out, f->is_v3 ? "</pre>\n<p>This token serves v3 members: the first "
                             "registration decides, and members of the other kind are "
                             "refused.</p>\n"
                           : "</pre>\n<p>A token serves one kind of member: the first "
                             "registration decides, and members of the other kind are "
                             "refused.</p>\n");
}

/*
 * The page's script: long-polls the token's v2 watch from the index the
 * page shows and reloads the page when anything changes, so what is shown
 * is always the server's rendering. An empty 200 is disco's "no event
 * within --wait-timeout": ask again. A failure backs off, and says so.
 */
static void put_script(buf_t *out, const char *nonce)
{
    buf_printf(out,
               "<p id=\"live\">This page reloads itself when the token changes.</p>\n"
               "<script nonce=\"%s\">\n",
               nonce);
    buf_printf(out,
               "(function () {\n"
               "  var idx = Number(document.body.getAttribute('data-index'));\n"
               "  var live = document.getElementById('live');\n"
               "  var delay = %d;\n"
               "  function retry() {\n"
               "    live.textContent = 'Live updates paused (server unreachable); retrying.';\n"
               "    setTimeout(poll, delay);\n"
               "    delay = Math.min(delay * 2, %d);\n"
               "  }\n"
               "  function poll() {\n"
               "    var url = location.pathname + '?wait=true&recursive=true&waitIndex=' + "
               "(idx + 1);\n"
               "    fetch(url, {headers: {'Accept': 'application/json'}, cache: 'no-store'})\n"
               "      .then(function (r) { return r.text().then(function (t) {\n"
               "        if (r.status === 200 && t === '') { delay = %d; poll(); return; }\n"
               "        var j = JSON.parse(t);\n"
               "        if (j && (j.action || j.errorCode)) { location.reload(); return; }\n"
               "        retry();\n"
               "      }); })\n"
               "      .catch(retry);\n"
               "  }\n"
               "  poll();\n"
               "})();\n"
               "</script>\n",
               PAGE_RETRY_FIRST_MS, PAGE_RETRY_MAX_MS, PAGE_RETRY_FIRST_MS);
}

/* The URL's "host:port" for --discovery-endpoints: what follows "://" up
 * to the next '/', with the scheme's default port when it names none. */
static void put_host_port(buf_t *out, const char *prefix)
{
    const char *h = strstr(prefix, "://");
    bool https = strncmp(prefix, "https://", 8) == 0;
    h = h ? h + 3 : prefix;
    size_t n = strcspn(h, "/");
    html_put_escaped(out, h, n);
    const char *close = memchr(h, ']', n);
    const char *port = memchr(close ? close : h, ':', n - (size_t)((close ? close : h) - h));
    if (!port)
        buf_puts(out, https ? ":443" : ":80");
}

static void send_page(api_t *api, const http_request_t *req, int status, buf_t *body,
                      const char *nonce, bool has_index, uint64_t index)
{
    buf_t headers = BUF_INIT;
    page_put_html_headers(&headers, nonce);
    if (buf_failed(body) || buf_failed(&headers)) {
        api_send_v2_error(api, req->handle, METRICS_TOKEN, req->method_name, 0, 300,
                          "out of memory", registry_index(api->reg));
    } else {
        http_reply_t r = {.status = status,
                          .content_type = "text/html; charset=utf-8",
                          .has_etcd_index = has_index,
                          .etcd_index = index,
                          .extra_headers = buf_cstr(&headers),
                          .body = body->data,
                          .body_len = body->len};
        api_send(api, req->handle, METRICS_TOKEN, req->method_name, &r);
    }
    buf_free(&headers);
}

/* A token that is not here: the registry's cause, what it can mean, and a
 * way to make one. */
static void send_unknown(api_t *api, const http_request_t *req, const char *token,
                         const reg_result_t *res, const char *nonce)
{
    buf_t body = BUF_INIT;
    put_head(&body, token, nonce);
    buf_puts(&body, "<body>\n<p><a href=\"/\">disco</a>: etcd cluster discovery</p>\n"
                    "<h1>Token <code>");
    html_puts_escaped(&body, token);
    buf_puts(&body, "</code></h1>\n<p id=\"state\" class=\"state unknown\">No such token "
                    "here.</p>\n<p id=\"cause\">What a member is told: <code>100: Key not "
                    "found (");
    html_puts_escaped(&body, res->cause ? res->cause : "");
    buf_puts(&body, ")</code></p>\n<p>A token that was never made on this server, a mistyped "
                    "one, and one removed by age (<code>--minage</code>) all end here. Members "
                    "given this URL cannot register. Make a new token and give its URL to "
                    "every machine of the new cluster:</p>\n");
    page_put_new_form(&body, 3);
    buf_puts(&body, "</body></html>\n");
    send_page(api, req, 404, &body, nonce, true, res->index);
    buf_free(&body);
}

void page_token(api_t *api, const http_request_t *req)
{
    assert(page_is_token_page_request(req));
    const char *token = req->path + 1;
    char nonce_buf[PAGE_NONCE_CHARS + 1];
    const char *nonce = page_make_nonce(nonce_buf) ? nonce_buf : NULL;

    page_facts_t f = {.token = token, .strings = BUF_INIT};
    reg_result_t res = {0};
    enum reg_errcode err = read_facts(api, token, &f, &res);
    if (err == REG_E_KEY_NOT_FOUND) {
        send_unknown(api, req, token, &res, nonce);
    } else if (err != REG_OK) {
        api_send_v2_error(api, req->handle, METRICS_TOKEN, req->method_name, 0, 300,
                          res.cause ? res.cause : "out of memory", registry_index(api->reg));
    } else {
        buf_t url = BUF_INIT, url_html = BUF_INIT, host_port_html = BUF_INIT, body = BUF_INIT;
        if (!discovery_url_prefix(api, req, &url))
            buf_puts(&url, "http://HOST"); /* no --host and no usable Host header */
        put_host_port(&host_port_html, buf_cstr(&url));
        buf_putc(&url, '/');
        buf_puts(&url, token);
        html_put_escaped(&url_html, url.data, url.len);
        const char *uh = buf_cstr(&url_html);

        put_head(&body, token, nonce);
        buf_printf(&body, "<body data-index=\"%llu\">\n", (unsigned long long)f.index);
        buf_puts(&body, "<p><a href=\"/\">disco</a>: etcd cluster discovery</p>\n"
                        "<h1>Token <code>");
        html_puts_escaped(&body, token);
        buf_puts(&body, "</code></h1>\n");
        put_state(&body, &f, uh);
        put_facts(&body, api, &f, uh);
        buf_printf(&body, "<h2>Registrations (%zu)</h2>\n", f.n_rows);
        put_rows(&body, &f);
        put_usage(&body, &f, buf_cstr(&url), uh, buf_cstr(&host_port_html));
        if (nonce)
            put_script(&body, nonce);
        else
            buf_puts(&body, "<p id=\"live\">Reload this page to see changes.</p>\n");
        buf_puts(&body, "</body></html>\n");
        if (buf_failed(&url) || buf_failed(&url_html) || buf_failed(&host_port_html))
            body.failed = true;
        send_page(api, req, 200, &body, nonce, true, f.index);
        buf_free(&url);
        buf_free(&url_html);
        buf_free(&host_port_html);
        buf_free(&body);
    }
    reg_result_clear(&res);
    free(f.rows);
    buf_free(&f.strings);
}
