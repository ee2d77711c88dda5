/*
 * page.h - the token page: what a person's browser gets at /<token>.
 *
 * A discovery URL is pasted into configs, but it is also the first thing an
 * operator opens when a cluster does not form. For a browser, disco answers
 * an HTML page that says what the token holds and what that means: size,
 * age, when it goes, every registration in registration order (the first
 * `size` are the cluster, the rest were turned away), the state in words
 * with what to do next, and the flags and Butane config that use it. The
 * page is whole on arrival (rendered here, no external assets, works
 * offline) and keeps itself current: its script long-polls the token's v2
 * watch and reloads on a change.
 *
 * Every other client keeps getting etcd's JSON byte for byte: the page is
 * only for a request that asks for HTML explicitly (page_wants_html).
 *
 * Loop thread only, like every handler.
 */
#ifndef DISCO_API_PAGE_H
#define DISCO_API_PAGE_H

#include <stdbool.h>

#include "api/api.h"

/*
 * Whether an Accept header value (several headers joined by ", "; NULL or
 * "" when there was none) prefers HTML to etcd's JSON: "text/html" is
 * listed explicitly, with a q above that of every range that matches JSON
 * (application/json, application/ *, * / *). A browser's navigation
 * ("text/html,...,* / *;q=0.8") does; curl's "* / *", fetch()'s default and
 * etcd's Go client (no Accept) do not, nor does a tie. A range with a
 * malformed q is ignored.
 */
bool page_wants_html(const char *accept);

/*
 * Whether `req` is one the token page answers: GET or HEAD of exactly
 * "/<token>" (a valid token name, no query, no deeper key) whose Accept
 * header prefers HTML. Anything else on a token path is the v2 API.
 */
bool page_is_token_page_request(const http_request_t *req);

/*
 * Answers `req` (one for which page_is_token_page_request() holds) with the
 * token's page: 200 for a token that exists, 404 with an explanation (the
 * registry's cause) for one that does not. The answer goes through
 * api_send, so, like a JSON read, it leaves once the state it shows is
 * durable. Answers before it returns.
 */
void page_token(api_t *api, const http_request_t *req);

/*
 * The headers every HTML answer of disco carries (Content-Security-Policy
 * allowing only the page's own inline style and script by `nonce`, no
 * caching, no sniffing, no referrer), appended to `out` as "Name: value\r\n"
 * lines. `nonce` is NULL for a page without script.
 */
void page_put_html_headers(buf_t *out, const char *nonce);

/* A fresh CSP nonce: 32 hex characters from the kernel's CSPRNG. Returns
 * false when none could be had (the page then goes without its script). */
#define PAGE_NONCE_CHARS 32
bool page_make_nonce(char out[PAGE_NONCE_CHARS + 1]);

/* The page's shared style sheet, for the front page too: one
 * "<style nonce=...>" element appended to `out`. */
void page_put_style(buf_t *out, const char *nonce);

/* A form that makes a new token of `size` (POST /new, see discovery.c),
 * appended to `out`. */
void page_put_new_form(buf_t *out, unsigned size);

#endif
