/*
 * status.c - `disco status URL`: reads a token, probes the peer URLs of its
 * first `size` members (by createdIndex, the order etcd's discovery uses to
 * pick members; later ones are proxies that never listen on a peer port)
 * with a TCP connect each, all at once, and says what it sees and what is
 * likely wrong. The exit code says the same to scripts (cli_common.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cmd/cli_common.h"
#include "cmd/cmd.h"
#include "cmd/httpc.h"
#include "cmd/minijson.h"
#include "util/buf.h"
#include "util/timeutil.h"

#define STATUS_DEFAULT_PROBE_TIMEOUT_MS 2000
/* Peer URLs probed at most (a token holds at most 1000 members). */
#define STATUS_MAX_PROBES 4096

static const char status_usage[] =
    "usage: disco status [--json] [--probe-timeout DUR] [TLS flags] URL\n"
    "\n"
    "Reads the discovery token at URL (https://disco.example/<token>, or the\n"
    "etcd v2 form .../v2/keys/_etcd/registry/<token>), probes the peer URLs of\n"
    "its first `size` members with a TCP connect and says what it sees.\n"
    "\n"
    "  --json               one JSON object on stdout, for scripts\n"
    "  --probe-timeout DUR  how long a peer may take to accept (default 2s)\n" CLI_TLS_USAGE "\n"
    "Exit codes:\n"
    "  0  complete, and every member's peer port answers\n"
    "  2  usage error\n"
    "  3  waiting for more members to register\n"
    "  4  complete, but no member's peer port answers: a stale token, used by a\n"
    "     cluster that is gone; make a new token for a new cluster\n"
    "  5  some members' peer ports answer and some don't (a firewall on the\n"
    "     peer port? members down?)\n"
    "  6  the token is unknown or expired (the output says which)\n"
    "  7  the server is unreachable, or TLS failed\n";

/* One peer URL of a member, and what its probe saw. */
typedef struct probe {
    size_t member;
    char *url;
    int fd;
    int err; /* 0: accepted; else an errno (ETIMEDOUT when it never did) */
} probe_t;

typedef struct member {
    char *name;   /* before '=' in the first "name=url" of the value */
    char *value;  /* as registered */
    bool in_size; /* one of the first `size` by createdIndex */
    bool answers; /* a peer URL accepted a connection (in_size only) */
    int err;      /* the first probe error, when none answered */
    unsigned long long created_index;
} member_t;

typedef struct report {
    const char *url;
    unsigned long long size;
    member_t *members;
    size_t n_members;
    probe_t *probes;
    size_t n_probes;
} report_t;

static int by_created_index(const void *a, const void *b)
{
    const member_t *x = a, *y = b;
    return x->created_index < y->created_index ? -1 : x->created_index > y->created_index;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Starts a non-blocking connect to the peer URL; sets p->fd or p->err. */
static void probe_start(probe_t *p)
{
    httpc_url_t u;
    p->fd = -1;
    if (httpc_parse_url(p->url, &u) != 0) {
        p->err = EINVAL;
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(u.host, u.port, &hints, &res) != 0) {
        p->err = EHOSTUNREACH;
        httpc_url_free(&u);
        return;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        p->err = errno;
    } else if (connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
        p->err = 0;
        close(fd);
    } else if (errno == EINPROGRESS) {
        p->fd = fd;
        p->err = ETIMEDOUT;
    } else {
        p->err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    httpc_url_free(&u);
}

/* Every probe at once, for at most `timeout_ms` together. */
static int probe_all(probe_t *probes, size_t n, long long timeout_ms)
{
    struct pollfd *pfd = calloc(n ? n : 1, sizeof *pfd);
    if (!pfd)
        return -1;
    for (size_t i = 0; i < n; i++)
        probe_start(&probes[i]);
    long long deadline = mono_ms() + timeout_ms;
    for (;;) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (probes[i].fd >= 0)
                pfd[k++] = (struct pollfd){.fd = probes[i].fd, .events = POLLOUT};
        long long left = deadline - mono_ms();
        if (k == 0 || left <= 0)
            break;
        if (poll(pfd, k, (int)left) < 0 && errno != EINTR)
            break;
        for (size_t j = 0; j < k; j++) {
            if (!pfd[j].revents)
                continue;
            for (size_t i = 0; i < n; i++) {
                if (probes[i].fd != pfd[j].fd)
                    continue;
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                if (getsockopt(probes[i].fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
                    soerr = errno;
                probes[i].err = soerr;
                close(probes[i].fd);
                probes[i].fd = -1;
            }
        }
    }
    for (size_t i = 0; i < n; i++)
        if (probes[i].fd >= 0) {
            close(probes[i].fd);
            probes[i].fd = -1; /* err stays ETIMEDOUT */
        }
    free(pfd);
    return 0;
}

/* Splits a member's value ("name=url[,name=url...]") into its peer URLs,
 * appended to r->probes. */
static int add_probes(report_t *r, size_t member, const char *value)
{
    const char *p = value;
    while (*p) {
        size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        const char *url = eq ? eq + 1 : p;
        size_t ulen = len - (size_t)(url - p);
        if (ulen > 0) {
            if (r->n_probes == STATUS_MAX_PROBES)
                return 0;
            probe_t *np = realloc(r->probes, (r->n_probes + 1) * sizeof *np);
            if (!np)
                return -1;
            r->probes = np;
            np[r->n_probes] = (probe_t){.member = member, .url = strndup(url, ulen), .fd = -1};
            if (!np[r->n_probes].url)
                return -1;
            r->n_probes++;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

static void report_free(report_t *r)
{
    for (size_t i = 0; i < r->n_members; i++) {
        free(r->members[i].name);
        free(r->members[i].value);
    }
    for (size_t i = 0; i < r->n_probes; i++)
        free(r->probes[i].url);
    free(r->members);
    free(r->probes);
}

/* Fills r->members from a v2 listing of the token directory. */
static int read_members(report_t *r, const mj_value_t *listing)
{
    const mj_value_t *nodes = mj_get(mj_get(listing, "node"), "nodes");
    size_t n = 0;
    for (const mj_value_t *m = nodes ? nodes->child : NULL; m; m = m->next)
        n++;
    r->members = calloc(n ? n : 1, sizeof *r->members);
    if (!r->members)
        return -1;
    for (const mj_value_t *m = nodes ? nodes->child : NULL; m; m = m->next) {
        const char *key = mj_get_str(m, "key"), *value = mj_get_str(m, "value");
        const char *base = key ? strrchr(key, '/') : NULL;
        if (!value || (base && base[1] == '_'))
            continue; /* a directory, or a hidden key: not a member */
        member_t *mb = &r->members[r->n_members];
        mb->created_index = mj_get_u64(m, "createdIndex", 0);
        mb->value = strdup(value);
        size_t nl = strcspn(value, "=");
        mb->name = strndup(value, value[nl] ? nl : 0);
        if (!mb->value || !mb->name)
            return -1;
        r->n_members++;
    }
    qsort(r->members, r->n_members, sizeof *r->members, by_created_index);
    for (size_t i = 0; i < r->n_members; i++) {
        r->members[i].in_size = i < r->size;
        if (r->members[i].in_size && add_probes(r, i, r->members[i].value) != 0)
            return -1;
    }
    return 0;
}

static const char *state_name(int code)
{
    switch (code) {
    case CLI_EXIT_OK: return "healthy";
    case CLI_EXIT_WAITING: return "waiting";
    case CLI_EXIT_STALE: return "stale";
    case CLI_EXIT_PARTIAL: return "partial";
    case CLI_EXIT_UNKNOWN_TOKEN: return "unknown";
    case CLI_EXIT_UNREACHABLE: return "unreachable";
    default: return "error";
    }
}

/* Prints the outcome, as text or one JSON object, and returns `code`. */
static int finish(const report_t *r, bool json, int code, const char *message)
{
    if (!json) {
        if (r && r->size) {
            printf("token %s: size %llu, %zu registered\n", r->url, r->size, r->n_members);
            for (size_t i = 0; i < r->n_members; i++) {
                const member_t *m = &r->members[i];
                printf("  %-6s %s", m->in_size ? "member" : "extra", m->value);
                if (!m->in_size)
                    printf("  (proxy: not probed)\n");
                else if (m->answers)
                    printf("  peer answers\n");
                else
                    printf("  peer does not answer (%s)\n",
                           m->err == ETIMEDOUT ? "timed out" : strerror(m->err));
            }
        }
        bool is_failure = code == CLI_EXIT_UNREACHABLE || code == CLI_EXIT_FAILED;
        fprintf(is_failure ? stderr : stdout, "%s\n", message);
        return code;
    }
    buf_t b = BUF_INIT;
    const char *state = state_name(code);
    if (code == CLI_EXIT_UNKNOWN_TOKEN && strncmp(message, "the token is expired", 20) == 0)
        state = "expired";
    buf_printf(&b, "{\"state\":\"%s\",\"exit_code\":%d,\"message\":", state, code);
    buf_put_json_string(&b, message, strlen(message));
    if (r) {
        buf_puts(&b, ",\"url\":");
        buf_put_json_string(&b, r->url, strlen(r->url));
        buf_printf(&b, ",\"size\":%llu,\"registered\":%zu,\"members\":[", r->size, r->n_members);
        for (size_t i = 0; i < r->n_members; i++) {
            const member_t *m = &r->members[i];
            buf_puts(&b, i ? ",{\"name\":" : "{\"name\":");
            buf_put_json_string(&b, m->name, strlen(m->name));
            buf_puts(&b, ",\"value\":");
            buf_put_json_string(&b, m->value, strlen(m->value));
            buf_printf(&b, ",\"created_index\":%llu,\"role\":\"%s\",\"peer_answers\":%s",
                       m->created_index, m->in_size ? "member" : "extra",
                       !m->in_size  ? "null"
                       : m->answers ? "true"
                                    : "false");
            if (m->in_size && !m->answers) {
                const char *e = m->err == ETIMEDOUT ? "timed out" : strerror(m->err);
                buf_puts(&b, ",\"peer_error\":");
                buf_put_json_string(&b, e, strlen(e));
            }
            buf_putc(&b, '}');
        }
        buf_putc(&b, ']');
    }
    buf_puts(&b, "}\n");
    if (buf_failed(&b)) {
        fprintf(stderr, "disco status: out of memory\n");
        code = CLI_EXIT_FAILED;
    } else {
        fputs(buf_cstr(&b), stdout);
    }
    buf_free(&b);
    return code;
}

/* GETs `url` and parses its JSON body. Returns 0 with *doc set (and
 * *status), or an exit code with `msg` set. */
static int get_json(const char *url, const httpc_tls_t *tls, int *status, mj_value_t **doc,
                    char *msg, size_t msg_len)
{
    httpc_response_t res;
    char err[256];
    enum httpc_error e = httpc_request("GET", url, NULL, tls, 0, &res, err);
    if (e != HTTPC_OK) {
        snprintf(msg, msg_len, "cannot read the token: %s", err);
        return e == HTTPC_E_CONNECT || e == HTTPC_E_TLS ? CLI_EXIT_UNREACHABLE : CLI_EXIT_FAILED;
    }
    *status = res.status;
    *doc = mj_parse(res.body, res.body_len);
    if (!*doc) {
        snprintf(msg, msg_len, "%s answered %d with something that is not etcd JSON: %.200s", url,
                 res.status, res.body);
        httpc_response_free(&res);
        return *status >= 500 ? CLI_EXIT_UNREACHABLE : CLI_EXIT_FAILED;
    }
    httpc_response_free(&res);
    return 0;
}

/* What a 404 errorCode 100 for the token says, in a sentence. */
static void explain_missing(const mj_value_t *doc, char *msg, size_t msg_len)
{
    const char *cause = mj_get_str(doc, "cause");
    if (!cause)
        cause = "";
    /* disco's causes (registry/tombstones.c); another server's are the
     * bare key, which says neither */
    const char *which = strstr(cause, ": this token expired")     ? "expired"
                        : strstr(cause, ": this token was never") ? "unknown (never issued)"
                        : strstr(cause, ": not a token")          ? "malformed"
                                                                  : "unknown or expired";
    snprintf(msg, msg_len, "the token is %s: %s", which, cause);
}

int cmd_status(int argc, char **argv)
{
    const char *url = NULL, *probe_timeout = "2s";
    bool json = false;
    httpc_tls_t tls = {0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(status_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (strcmp(a, "--json") == 0) {
            json = true;
            continue;
        }
        int rc = cli_flag_value(argc, argv, &i, "probe-timeout", &probe_timeout);
        if (rc == 0)
            rc = cli_tls_flag(argc, argv, &i, &tls);
        if (rc < 0) {
            fprintf(stderr, "disco status: flag %s needs a value\n", a);
            return CLI_EXIT_USAGE;
        }
        if (rc == 0 && (strncmp(a, "--", 2) == 0 || url)) {
            fprintf(stderr, "disco status: unexpected argument \"%s\"\n\n%s", a, status_usage);
            return CLI_EXIT_USAGE;
        }
        if (rc == 0)
            url = a;
    }
    uint64_t probe_ms = 0;
    if (time_parse_duration_ms(probe_timeout, &probe_ms) != 0 || probe_ms < 1 || probe_ms > 60000) {
        fprintf(stderr, "disco status: bad --probe-timeout \"%s\": want 1ms to 60s, like 2s\n",
                probe_timeout);
        return CLI_EXIT_USAGE;
    }
    httpc_url_t u;
    if (!url || httpc_parse_url(url, &u) != 0 || strchr(url, '?')) {
        fprintf(stderr, "disco status: want a token URL like https://disco.example/<token>\n\n%s",
                status_usage);
        return CLI_EXIT_USAGE;
    }
    httpc_url_free(&u);
    char base[2048], req_url[2100], msg[8192];
    size_t bl = strlen(url);
    while (bl > 0 && url[bl - 1] == '/')
        bl--;
    if (bl >= sizeof base) {
        fprintf(stderr, "disco status: the URL is too long\n");
        return CLI_EXIT_USAGE;
    }
    memcpy(base, url, bl);
    base[bl] = '\0';
    report_t r = {.url = base};
    mj_value_t *doc = NULL;
    int status = 0;

    /* The size first, as etcd's discovery does. */
    snprintf(req_url, sizeof req_url, "%s/_config/size", base);
    int code = get_json(req_url, &tls, &status, &doc, msg, sizeof msg);
    if (code != 0)
        return finish(NULL, json, code, msg);
    if (status == 404 && mj_get_u64(doc, "errorCode", 0) == 100) {
        explain_missing(doc, msg, sizeof msg);
        mj_free(doc);
        return finish(NULL, json, CLI_EXIT_UNKNOWN_TOKEN, msg);
    }
    const char *sv = mj_get_str(mj_get(doc, "node"), "value");
    r.size = sv ? strtoull(sv, NULL, 10) : 0;
    if (status != 200 || r.size == 0) {
        snprintf(msg, sizeof msg, "%s answered %d without a token size: is this a discovery URL?",
                 req_url, status);
        mj_free(doc);
        return finish(NULL, json, status >= 500 ? CLI_EXIT_UNREACHABLE : CLI_EXIT_FAILED, msg);
    }
    mj_free(doc);
    doc = NULL;

    code = get_json(base, &tls, &status, &doc, msg, sizeof msg);
    if (code != 0)
        return finish(NULL, json, code, msg);
    if (status == 404 && mj_get_u64(doc, "errorCode", 0) == 100) {
        explain_missing(doc, msg, sizeof msg); /* it expired between the two reads */
        mj_free(doc);
        return finish(NULL, json, CLI_EXIT_UNKNOWN_TOKEN, msg);
    }
    if (status != 200 || read_members(&r, doc) != 0 ||
        probe_all(r.probes, r.n_probes, (long long)probe_ms) != 0) {
        snprintf(msg, sizeof msg, "cannot read the members of %s (answer %d)", base, status);
        mj_free(doc);
        report_free(&r);
        return finish(NULL, json, CLI_EXIT_FAILED, msg);
    }
    mj_free(doc);
    for (size_t i = 0; i < r.n_probes; i++) {
        member_t *m = &r.members[r.probes[i].member];
        if (r.probes[i].err == 0)
            m->answers = true;
        else if (!m->err)
            m->err = r.probes[i].err;
    }
    size_t in_size = r.n_members < r.size ? r.n_members : (size_t)r.size, answering = 0;
    for (size_t i = 0; i < in_size; i++)
        answering += r.members[i].answers;
    size_t extras = r.n_members - in_size;
    char extra_note[128] = "";
    if (extras)
        snprintf(extra_note, sizeof extra_note,
                 "; %zu more registered beyond the size (proxies, not probed)", extras);
    if (r.n_members < r.size) {
        unsigned long long more = r.size - r.n_members;
        snprintf(msg, sizeof msg,
                 "waiting for %llu more member%s to register (%zu of %llu); %zu of the "
                 "registered answer on their peer port",
                 more, more == 1 ? "" : "s", r.n_members, r.size, answering);
        code = CLI_EXIT_WAITING;
    } else if (answering == in_size) {
        snprintf(msg, sizeof msg, "complete: all %zu members answer on their peer port%s", in_size,
                 extra_note);
        code = CLI_EXIT_OK;
    } else if (answering == 0) {
        snprintf(msg, sizeof msg,
                 "stale token: complete, but none of its %zu members answers on its peer "
                 "port; the cluster that used it is gone. New machines given this URL become "
                 "proxies of dead peers: make a new token (disco new) for a new cluster%s",
                 in_size, extra_note);
        code = CLI_EXIT_STALE;
    } else {
        snprintf(msg, sizeof msg,
                 "%zu of %zu members answer on their peer port and %zu do not: a firewall on "
                 "the peer port (2380)? those members down?%s",
                 answering, in_size, in_size - answering, extra_note);
        code = CLI_EXIT_PARTIAL;
    }
    code = finish(&r, json, code, msg);
    report_free(&r);
    return code;
}
