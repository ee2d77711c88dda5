/*
 * test_config.c - util/config.h: `disco serve` flags, their bounds and
 * their error messages.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/config.h"
#include "util/timeutil.h"

/* Parses one flag and its value; returns parse_serve's result. */
static int parse_one(const char *flag, const char *value, serve_config_t *cfg, char *err)
{
    char *argv[] = {(char *)flag, (char *)value};
    return config_parse_serve(2, argv, cfg, err);
}

static void test_defaults(void **state)
{
    (void)state;
    serve_config_t cfg;
    char err[256] = "";
    assert_int_equal(config_parse_serve(0, NULL, &cfg, err), 0);
    assert_int_equal(cfg.minage_ms, 168ULL * 3600 * 1000);
    assert_int_equal(cfg.gcfreq_ms, 5ULL * 60 * 1000);
    assert_int_equal(cfg.max_events_per_token, 5000);
}

/* Every duration ends up in nanoseconds in an int64_t somewhere: a value
 * whose nanoseconds do not fit, or that is absurd, is refused at parse time
 * naming the flag (the first sweep used to remove every token). */
static void test_durations_out_of_range_are_refused(void **state)
{
    (void)state;
    static const char *const flags[] = {"--minage",         "--gcfreq",       "--wait-timeout",
                                        "--header-timeout", "--body-timeout", "--idle-timeout"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        serve_config_t cfg;
        char err[256] = "";
        assert_int_equal(parse_one(flags[i], "4000000h", &cfg, err), -1);
        if (!strstr(err, flags[i]))
            fail_msg("%s 4000000h: message does not name the flag: %s", flags[i], err);
        err[0] = '\0';
        assert_int_equal(parse_one(flags[i], "2562048h", &cfg, err), -1); /* > INT64 ns */
        assert_non_null(strstr(err, flags[i]));
        /* and every accepted maximum still fits in int64 nanoseconds */
        assert_int_equal(parse_one(flags[i], "1s", &cfg, err), 0);
    }
}

static void test_minage_bounds(void **state)
{
    (void)state;
    serve_config_t cfg;
    char err[256] = "";
    assert_int_equal(parse_one("--minage", "87600h", &cfg, err), 0);
    assert_int_equal(cfg.minage_ms, 87600ULL * 3600 * 1000);
    assert_true(cfg.minage_ms <= (uint64_t)INT64_MAX / NS_PER_MS);
    assert_int_equal(parse_one("--minage", "87601h", &cfg, err), -1);
    assert_non_null(strstr(err, "--minage"));
    assert_int_equal(parse_one("--minage", "0", &cfg, err), 0);
    assert_int_equal(parse_one("--gcfreq", "0", &cfg, err), 0);
    assert_int_equal(cfg.gcfreq_ms, 0);
}

static void test_env_is_checked_too(void **state)
{
    (void)state;
    serve_config_t cfg;
    char err[256] = "";
    setenv("DISC_MINAGE", "4000000h", 1);
    int rc = config_parse_serve(0, NULL, &cfg, err);
    unsetenv("DISC_MINAGE");
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, "--minage"));
}

static void test_max_events_per_token(void **state)
{
    (void)state;
    serve_config_t cfg;
    char err[256] = "";
    assert_int_equal(parse_one("--max-events-per-token", "50", &cfg, err), 0);
    assert_int_equal(cfg.max_events_per_token, 50);
    assert_int_equal(parse_one("--max-events-per-token", "0", &cfg, err), -1);
    assert_non_null(strstr(err, "--max-events-per-token"));
    setenv("DISC_MAX_EVENTS_PER_TOKEN", "77", 1);
    int rc = config_parse_serve(0, NULL, &cfg, err);
    unsetenv("DISC_MAX_EVENTS_PER_TOKEN");
    assert_int_equal(rc, 0);
    assert_int_equal(cfg.max_events_per_token, 77);
}

/* TLS flags come as a whole: a certificate with its key; a client CA or a
 * plain listener only beside TLS. */
static void test_tls_flags_go_together(void **state)
{
    (void)state;
    serve_config_t cfg;
    char err[256] = "";
    char *both[] = {"--tls-cert", "c.pem", "--tls-key=k.pem", "--plain-addr", ":80"};
    assert_int_equal(config_parse_serve(5, both, &cfg, err), 0);
    assert_string_equal(cfg.tls_cert, "c.pem");
    assert_string_equal(cfg.tls_key, "k.pem");
    assert_string_equal(cfg.plain_addr, ":80");
    assert_null(cfg.tls_client_ca);
    assert_int_equal(parse_one("--tls-cert", "c.pem", &cfg, err), -1);
    assert_non_null(strstr(err, "--tls-key"));
    assert_int_equal(parse_one("--tls-client-ca", "ca.pem", &cfg, err), -1);
    assert_non_null(strstr(err, "--tls-client-ca needs --tls-cert"));
    assert_int_equal(parse_one("--plain-addr", ":80", &cfg, err), -1);
    assert_non_null(strstr(err, "--plain-addr needs --tls-cert"));
    setenv("DISC_TLS_CERT", "c.pem", 1);
    setenv("DISC_TLS_KEY", "k.pem", 1);
    int rc = config_parse_serve(0, NULL, &cfg, err);
    unsetenv("DISC_TLS_CERT");
    unsetenv("DISC_TLS_KEY");
    assert_int_equal(rc, 0);
    assert_string_equal(cfg.tls_key, "k.pem");
    assert_int_equal(config_parse_serve(0, NULL, &cfg, err), 0);
    assert_null(cfg.tls_cert);
}

static void test_etcd_flags(void **state)
{
    (void)state;
    serve_config_t cfg;
    char err[256] = "";
    assert_int_equal(config_parse_serve(0, NULL, &cfg, err), 0);
    assert_null(cfg.etcd_endpoints); /* the embedded store by default */
    assert_string_equal(cfg.etcd_prefix, "/disco/");
    char *ok[] = {"--etcd-endpoints",
                  "http://127.0.0.1:2379,http://127.0.0.1:22379",
                  "--etcd-prefix=/d2/",
                  "--etcd-user",
                  "u",
                  "--etcd-password",
                  "p"};
    assert_int_equal(config_parse_serve(7, ok, &cfg, err), 0);
    assert_string_equal(cfg.etcd_prefix, "/d2/");
    assert_string_equal(cfg.etcd_user, "u");
    /* The etcd flags need endpoints; pairs go together; a prefix is a path. */
    assert_int_equal(parse_one("--etcd-cacert", "ca.pem", &cfg, err), -1);
    assert_non_null(strstr(err, "--etcd-endpoints"));
    char *half[] = {"--etcd-endpoints", "http://e:2379", "--etcd-cert", "c.pem"};
    assert_int_equal(config_parse_serve(4, half, &cfg, err), -1);
    assert_non_null(strstr(err, "--etcd-cert and --etcd-key"));
    char *user[] = {"--etcd-endpoints", "http://e:2379", "--etcd-user", "u"};
    assert_int_equal(config_parse_serve(4, user, &cfg, err), -1);
    assert_non_null(strstr(err, "--etcd-user and --etcd-password"));
    char *bad[] = {"--etcd-endpoints", "http://e:2379", "--etcd-prefix", "disco"};
    assert_int_equal(config_parse_serve(4, bad, &cfg, err), -1);
    assert_non_null(strstr(err, "--etcd-prefix"));
    setenv("DISC_ETCD_ENDPOINTS", "http://e:2379", 1);
    int rc = config_parse_serve(0, NULL, &cfg, err);
    unsetenv("DISC_ETCD_ENDPOINTS");
    assert_int_equal(rc, 0);
    assert_string_equal(cfg.etcd_endpoints, "http://e:2379");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_durations_out_of_range_are_refused),
        cmocka_unit_test(test_minage_bounds),
        cmocka_unit_test(test_env_is_checked_too),
        cmocka_unit_test(test_max_events_per_token),
        cmocka_unit_test(test_tls_flags_go_together),
        cmocka_unit_test(test_etcd_flags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
