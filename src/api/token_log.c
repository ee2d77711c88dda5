/*
 * token_log.c - token events as log lines, and the cause of a missing
 * token explained; see token_log.h.
 */
#include "api/token_log.h"

#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "util/log.h"

/* The token of a full v2 key and what follows it ("" or "/m1/..."). */
static bool token_of(const char *key, const char **name, size_t *len, const char **rest)
{
    static const char prefix[] = REGISTRY_PREFIX "/";
    if (strncmp(key, prefix, sizeof prefix - 1) != 0)
        return false;
    *name = key + sizeof prefix - 1;
    *len = strcspn(*name, "/");
    *rest = *name + *len;
    return *len > 0;
}

/* The member `rest` names, or NULL: one segment, not hidden ("/m1",
 * "/m1/"), or a v3 member's "/members/<id>". */
static const char *member_of(const char *rest)
{
    static const char v3[] = "/members/";
    if (strncmp(rest, v3, sizeof v3 - 1) == 0 && rest[sizeof v3 - 1] != '\0')
        rest += sizeof v3 - 2;
    if (rest[0] != '/' || rest[1] == '\0' || rest[1] == '_')
        return NULL;
    size_t n = strcspn(rest + 1, "/");
    return rest[1 + n] == '\0' || strcmp(rest + 1 + n, "/") == 0 ? rest + 1 : NULL;
}

static uint64_t pair_hash(const char *name, size_t len, const char *addr)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *p = addr; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h ? h : 1; /* 0 marks an empty slot */
}

/* Marks (token, client address) seen; returns whether it was already. */
static bool seen_before(api_t *api, const char *name, size_t len, const char *addr)
{
    if (!api->token_seen)
        return true; /* no table (out of memory at start): never claim "new" */
    uint64_t h = pair_hash(name, len, addr);
    uint64_t *slot = &api->token_seen[h % TOKEN_LOG_SEEN_SLOTS];
    bool was = *slot == h;
    *slot = h;
    return was;
}

size_t token_log_who_size(const token_log_who_t *who)
{
    return strlen(who->path) + strlen(who->peer) + strlen(who->peer_addr) + 3;
}

token_log_who_t token_log_who_keep(const token_log_who_t *who, char *space)
{
    size_t path = strlen(who->path) + 1, peer = strlen(who->peer) + 1;
    token_log_who_t kept = *who;
    kept.path = strcpy(space, who->path);
    kept.peer = strcpy(space + path, who->peer);
    kept.peer_addr = strcpy(space + path + peer, who->peer_addr);
    return kept;
}

void token_log_created(api_t *api, const token_log_who_t *who, const char *token, unsigned size)
{
    (void)api;
    log_info("token %s created: size %u, by %s", token, size, who->peer);
}

static void explain_missing(api_t *api, const token_log_who_t *who, const char *name, size_t len,
                            reg_result_t *res)
{
    buf_t cause = BUF_INIT;
    buf_printf(&cause, "%s/%.*s: ", REGISTRY_PREFIX, (int)len, name);
    registry_explain_missing_token(api->reg, name, len, &cause);
    if (buf_failed(&cause)) {
        buf_free(&cause);
        return;
    }
    free(res->cause);
    res->cause = buf_steal(&cause);
    log_info("%s %s from %s: %s", who->method_name, who->path, who->peer, res->cause);
}

static void log_write(api_t *api, const token_log_who_t *who, const char *name, size_t len,
                      const char *rest, const reg_event_t *ev)
{
    reg_token_summary_t sum;
    if (!registry_token_summary(api->reg, name, len, &sum))
        return;
    seen_before(api, name, len, who->peer_addr);
    bool removal = ev->action == REG_ACT_DELETE || ev->action == REG_ACT_CAD;
    const char *member = member_of(rest);
    const char *via = who->v3 ? " (v3)" : "";
    if (strcmp(rest, "/_config/size") == 0 && !ev->has_prev && !removal) {
        log_info("token %.*s created: size %u, by %s (%s)", (int)len, name, sum.size, who->peer,
                 who->v3 ? "v3 API" : "v2 keys API");
    } else if (member && removal) {
        log_info("token %.*s: member %s deleted by %s (%zu of %u left)", (int)len, name, member,
                 who->peer, sum.members, sum.size);
    } else if (member && !ev->has_prev && !ev->node.is_dir) {
        log_info("token %.*s: member registered%s, %zu of %u, by %s: %s", (int)len, name, via,
                 sum.members, sum.size, who->peer, ev->node.value ? ev->node.value : "");
        if (sum.size && sum.members == sum.size)
            log_info("token %.*s complete: all %u members registered", (int)len, name, sum.size);
        else if (sum.size && sum.members > sum.size)
            log_info("token %.*s: %zu registered, more than its size %u (%s)", (int)len, name,
                     sum.members, sum.size,
                     who->v3 ? "the late ones are not among the first by create_revision: "
                               "etcd 3.6+ members then exit"
                             : "the extra ones are proxies");
    }
}

static void log_read(api_t *api, const token_log_who_t *who, const char *name, size_t len)
{
    reg_token_summary_t sum;
    if (seen_before(api, name, len, who->peer_addr) ||
        !registry_token_summary(api->reg, name, len, &sum) || !sum.size || sum.members < sum.size)
        return;
    log_warn("token %.*s (complete, %zu of %u) read by a new address %s: a machine given a used "
             "token joins as a proxy of these members, and fails if they are gone (a stale "
             "token? make a new one for a new cluster)",
             (int)len, name, sum.members, sum.size, who->peer);
}

void token_log_v2(api_t *api, const token_log_who_t *who, const char *key, reg_result_t *res)
{
    const char *name, *rest;
    size_t len;
    if (!token_of(key, &name, &len, &rest))
        return;
    if (res->err == REG_E_KEY_NOT_FOUND && res->token_missing)
        explain_missing(api, who, name, len, res);
    else if (!res->err && res->event && who->method != HTTP_GET)
        log_write(api, who, name, len, rest, res->event);
    else if (!res->err && res->node && (rest[0] == '\0' || strcmp(rest, "/") == 0))
        log_read(api, who, name, len);
}
