/*
 * kourier.yaml loading: every mistake a user can make is reported at the
 * file:line:column they must edit, with what was expected; a full config
 * resolves to the values the server will use; module schemas are checked
 * and their defaults become readable; scalar syntax edge cases.
 */

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/*
 * By path: "config.h" alone finds autoconf's header in the build directory,
 * which comes first on the include path.
 */
#include "../../core/config.h"
#include "http_parse.h"

/* short enough that every path built from them fits PATH_MAX */
#define KOU_TC_DIRLEN 256

static char        kou_tc_dir[KOU_TC_DIRLEN / 2];   /* prefix, config files */
static char        kou_tc_mods1[KOU_TC_DIRLEN];  /* hello.so, echo.so */
static char        kou_tc_mods2[KOU_TC_DIRLEN];  /* echo.so, metrics.so... */
static const char *kou_tc_dirs[3];

static void
kou_tc_touch(const char *dir, const char *name)
{
    char  path[PATH_MAX];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    fclose(f);
}

static void
kou_tc_mkdir(char *out, const char *name)
{
    snprintf(out, KOU_TC_DIRLEN, "%s/%s", kou_tc_dir, name);
    ck_assert_int_eq(mkdir(out, 0700), 0);
}

static void
kou_tc_setup(void)
{
    char        plugins[KOU_TC_DIRLEN];
    const char *tmp = getenv("TMPDIR");

    if (tmp == NULL || strlen(tmp) > 64) {
        tmp = "/tmp";
    }
    snprintf(kou_tc_dir, sizeof(kou_tc_dir), "%s/kou-config-XXXXXX",
             tmp);
    ck_assert_ptr_nonnull(mkdtemp(kou_tc_dir));
    kou_tc_mkdir(kou_tc_mods1, "mods1");
    kou_tc_mkdir(kou_tc_mods2, "mods2");
    kou_tc_mkdir(plugins, "plugins");
    kou_tc_touch(kou_tc_mods1, "hello.so");
    kou_tc_touch(kou_tc_mods1, "echo.so");
    kou_tc_touch(kou_tc_mods2, "echo.so");
    kou_tc_touch(kou_tc_mods2, "metrics.so");
    kou_tc_touch(kou_tc_mods2, "access_log.so");
    kou_tc_touch(kou_tc_mods2, "static.so");
    kou_tc_touch(kou_tc_mods2, "proxy.so");
    kou_tc_touch(plugins, "hello.so");
    kou_tc_dirs[0] = kou_tc_mods1;
    kou_tc_dirs[1] = kou_tc_mods2;
    kou_tc_dirs[2] = NULL;
}

static int
kou_tc_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void
kou_tc_teardown(void)
{
    nftw(kou_tc_dir, kou_tc_rm, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write yaml to DIR/t<tag>.yaml; the path goes to out. */
static void
kou_tc_write(char *out, int tag, const char *yaml)
{
    FILE *f;

    snprintf(out, PATH_MAX, "%s/t%d.yaml", kou_tc_dir, tag);
    f = fopen(out, "w");
    ck_assert_msg(f != NULL, "cannot create %s", out);
    ck_assert_int_eq(fputs(yaml, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

static kou_config_t *
kou_tc_load_ok(int tag, const char *yaml)
{
    char          path[PATH_MAX], err[1024] = "";
    kou_config_t *cf = NULL;
    int           rc;

    kou_tc_write(path, tag, yaml);
    rc = kou_config_load(path, kou_tc_dir, kou_tc_dirs, &cf, err,
                         sizeof(err));
    ck_assert_msg(rc == KOU_OK, "line %d: load failed: %s", tag, err);
    ck_assert_ptr_nonnull(cf);
    return cf;
}

/*
 * The load must fail with "PATH:line:col: " followed by a message that
 * contains each needle.
 */
static void
kou_tc_load_err(int tag, const char *yaml, unsigned line, unsigned col,
                const char *needle, const char *needle2)
{
    char          path[PATH_MAX], want[PATH_MAX + 64], err[1024] = "";
    kou_config_t *cf = (kou_config_t *) &cf;
    int           rc;

    kou_tc_write(path, tag, yaml);
    rc = kou_config_load(path, kou_tc_dir, kou_tc_dirs, &cf, err,
                         sizeof(err));
    ck_assert_msg(rc == KOU_ERROR, "line %d: loaded but should fail", tag);
    ck_assert_msg(cf == NULL, "line %d: *out not NULL on failure", tag);
    snprintf(want, sizeof(want), "%s:%u:%u: ", path, line, col);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0,
                  "line %d: got \"%s\", want prefix \"%s\"", tag, err, want);
    ck_assert_msg(strstr(err + strlen(want), needle) != NULL,
                  "line %d: \"%s\" lacks \"%s\"", tag, err, needle);
    ck_assert_msg(needle2 == NULL || strstr(err, needle2) != NULL,
                  "line %d: \"%s\" lacks \"%s\"", tag, err, needle2);
}

#define ERR(yaml, line, col, needle) \
    kou_tc_load_err(__LINE__, yaml, line, col, needle, NULL)
#define ERR2(yaml, line, col, needle, needle2) \
    kou_tc_load_err(__LINE__, yaml, line, col, needle, needle2)

#define L "listen: [\"127.0.0.1:8080\"]\n"
#define LM L "modules: {hello: {}}\n"

/* ---- scalar syntax ---- */

START_TEST(test_parse_size)
{
    static const struct {
        const char *s;
        int         rc;
        uint64_t    v;
    } t[] = {
        { "0", KOU_OK, 0 },
        { "512", KOU_OK, 512 },
        { "16k", KOU_OK, 16384 },
        { "16K", KOU_OK, 16384 },
        { "1m", KOU_OK, 1048576 },
        { "3M", KOU_OK, 3145728 },
        { "2g", KOU_OK, 2147483648ull },
        { "2G", KOU_OK, 2147483648ull },
        { "18446744073709551615", KOU_OK, UINT64_MAX },
        { "18446744073709551616", KOU_ERROR, 0 },
        { "17179869183g", KOU_OK, 17179869183ull << 30 },
        { "17179869184g", KOU_ERROR, 0 },
        { "", KOU_ERROR, 0 },
        { "k", KOU_ERROR, 0 },
        { "-1", KOU_ERROR, 0 },
        { "+1", KOU_ERROR, 0 },
        { "1.5k", KOU_ERROR, 0 },
        { "16kb", KOU_ERROR, 0 },
        { "16 k", KOU_ERROR, 0 },
        { " 16", KOU_ERROR, 0 },
        { "16t", KOU_ERROR, 0 },
    };

    for (size_t i = 0; i < kou_nelem(t); i++) {
        uint64_t v = 777;
        int      rc = kou_parse_size(t[i].s, strlen(t[i].s), &v);
        ck_assert_msg(rc == t[i].rc, "\"%s\": rc %d", t[i].s, rc);
        if (rc == KOU_OK) {
            ck_assert_msg(v == t[i].v, "\"%s\": %llu", t[i].s,
                          (unsigned long long) v);
        }
    }
    /* only n bytes are looked at */
    {
        uint64_t v;
        ck_assert_int_eq(kou_parse_size("16kX", 3, &v), KOU_OK);
        ck_assert_uint_eq(v, 16384);
    }
}
END_TEST

START_TEST(test_parse_duration)
{
    static const struct {
        const char *s;
        int         rc;
        uint64_t    ms;
    } t[] = {
        { "250ms", KOU_OK, 250 },
        { "10s", KOU_OK, 10000 },
        { "5m", KOU_OK, 300000 },
        { "1h", KOU_OK, 3600000 },
        { "7", KOU_OK, 7000 },
        { "0", KOU_OK, 0 },
        { "0ms", KOU_OK, 0 },
        { "18446744073709551615ms", KOU_OK, UINT64_MAX },
        { "18446744073709552s", KOU_ERROR, 0 },
        { "5124095576030432h", KOU_ERROR, 0 },
        { "-1s", KOU_ERROR, 0 },
        { "1d", KOU_ERROR, 0 },
        { "5M", KOU_ERROR, 0 },
        { "ms", KOU_ERROR, 0 },
        { "", KOU_ERROR, 0 },
        { "10 s", KOU_ERROR, 0 },
        { "1.5s", KOU_ERROR, 0 },
        { "10sec", KOU_ERROR, 0 },
        { "1m30s", KOU_ERROR, 0 },
    };

    for (size_t i = 0; i < kou_nelem(t); i++) {
        uint64_t v = 777;
        int      rc = kou_parse_duration(t[i].s, strlen(t[i].s), &v);
        ck_assert_msg(rc == t[i].rc, "\"%s\": rc %d", t[i].s, rc);
        if (rc == KOU_OK) {
            ck_assert_msg(v == t[i].ms, "\"%s\": %llu", t[i].s,
                          (unsigned long long) v);
        }
    }
}
END_TEST

START_TEST(test_parse_bool)
{
    static const char *yes[] = { "true", "on", "yes", "True", "YES" };
    static const char *no[] = { "false", "off", "no", "False", "OFF" };
    static const char *bad[] = { "", "1", "0", "y", "yess", "tru", "nope" };
    int                v;

    for (size_t i = 0; i < kou_nelem(yes); i++) {
        v = 7;
        ck_assert_int_eq(kou_parse_bool(yes[i], strlen(yes[i]), &v), KOU_OK);
        ck_assert_int_eq(v, 1);
        v = 7;
        ck_assert_int_eq(kou_parse_bool(no[i], strlen(no[i]), &v), KOU_OK);
        ck_assert_int_eq(v, 0);
    }
    for (size_t i = 0; i < kou_nelem(bad); i++) {
        ck_assert_msg(kou_parse_bool(bad[i], strlen(bad[i]), &v) == KOU_ERROR,
                      "\"%s\" accepted", bad[i]);
    }
}
END_TEST

/* ---- mistakes ---- */

START_TEST(test_err_yaml_syntax)
{
    ERR(L "workers: 2: 3\n", 2, 11, "YAML syntax error: mapping values");
    /* a key indented one space less than its siblings */
    ERR2(L "routes:\n  - path: /a\n   handler: x\n", 4, 4,
         "YAML syntax error: did not find expected '-' indicator",
         "while parsing a block collection at 3:3");
    ERR(L "routes: [\n", 3, 1, "YAML syntax error");
    ERR(L "user: \"abc\xff\"\n", 2, 11, "not valid YAML text");
    ERR(L "\tworkers: 2\n", 2, 1, "YAML syntax error");
}
END_TEST

START_TEST(test_err_yaml_structure)
{
    ERR(L "pid_file: &p a.pid\n", 2, 11, "anchors (&p) are not supported");
    ERR("user: &u www\ngroup: *u\n" L, 1, 7, "anchors");
    ERR(L "---\nworkers: 2\n", 2, 1, "second YAML document");
    ERR(L "? [a, b]\n: 1\n", 2, 3, "a key must be a plain value");
    ERR(L "workers: 2\nworkers: 3\n", 3, 1,
        "duplicate key \"workers\" (first at line 2, column 1)");
    ERR(LM "routes:\n  - path: /a\n    handler: hello\n    path: /b\n", 6, 5,
        "duplicate key \"path\"");
    ERR(L "pid_file: *nope\n", 2, 11, "aliases (*nope) are not supported");
    {
        /* the depth limit, before anything deeper is looked at */
        char yaml[512];
        int  o = snprintf(yaml, sizeof(yaml), L "x: ");
        for (int i = 0; i < 70; i++) {
            yaml[o++] = '[';
        }
        for (int i = 0; i < 70; i++) {
            yaml[o++] = ']';
        }
        yaml[o++] = '\n';
        yaml[o] = '\0';
        ERR(yaml, 2, 68, "nested more than 64 levels deep");
    }
    ERR("", 1, 1, "empty");
    ERR("# nothing but a comment\n", 1, 1, "empty");
    ERR("- listen\n", 1, 1, "expected a mapping of settings at the top level");
}
END_TEST

START_TEST(test_err_cannot_open)
{
    char          path[PATH_MAX], want[PATH_MAX + 64], err[512];
    kou_config_t *cf = (kou_config_t *) &cf;

    snprintf(path, sizeof(path), "%s/no-such.yaml", kou_tc_dir);
    ck_assert_int_eq(kou_config_load(path, kou_tc_dir, kou_tc_dirs, &cf, err,
                                     sizeof(err)), KOU_ERROR);
    ck_assert_ptr_null(cf);
    snprintf(want, sizeof(want), "%s: cannot open: %s", path,
             strerror(ENOENT));
    ck_assert_str_eq(err, want);

    /* a short buffer gets a truncated, terminated message */
    ck_assert_int_eq(kou_config_load(path, kou_tc_dir, kou_tc_dirs, &cf, err,
                                     8), KOU_ERROR);
    ck_assert_uint_eq(strlen(err), 7);
    ck_assert(strncmp(err, want, 7) == 0);
}
END_TEST

START_TEST(test_err_top_level)
{
    ERR2(L "wokers: 2\n", 2, 1, "unknown key \"wokers\" at the top level",
         "expected one of: workers, pid_file,");
    ERR("workers: 2\nroutes: []\n", 1, 1,
        "missing required key \"listen\"");
    ERR(L "workers: lots\n", 2, 10,
        "workers: expected an integer from 1 to 1024 or \"auto\"");
    ERR(L "workers: 0\n", 2, 10, "workers: expected an integer");
    ERR(L "workers: 99999999999999999999\n", 2, 10, "workers: expected");
    ERR(L "workers:\n", 2, 9, "got nothing");
    ERR(L "shutdown_timeout: 10x\n", 2, 19,
        "shutdown_timeout: expected a duration");
    ERR(L "shutdown_timeout: 0\n", 2, 19, "from 1ms");
    ERR(L "pid_file: [a, b]\n", 2, 11, "pid_file: expected a file path, "
        "got a list");
    ERR(L "user: \"\"\n", 2, 7, "user: expected a user name");
    ERR(L "routes: {path: /}\n", 2, 9, "routes: expected a list of routes");
}
END_TEST

START_TEST(test_err_limits)
{
    ERR2(L "limits:\n  header_timeout: 5s\n  max_bdy: 1m\n", 4, 3,
         "unknown key \"max_bdy\" in limits",
         "header_timeout, body_timeout, idle_timeout, send_timeout, "
         "max_request_line, max_header_block, max_headers, max_body, "
         "max_connections");
    ERR(L "limits:\n  max_body: 12q\n", 3, 13, "max_body: expected a size");
    ERR(L "limits:\n  max_body: 99999999999g\n", 3, 13, "max_body: expected");
    ERR(L "limits:\n  idle_timeout: soon\n", 3, 17,
        "idle_timeout: expected a duration");
    ERR(L "limits:\n  idle_timeout: 0\n", 3, 17, "idle_timeout");
    ERR(L "limits:\n  max_headers: 10k\n", 3, 16,
        "max_headers: expected an integer from 1 to 65535");
    ERR(L "limits:\n  max_request_line: 0\n", 3, 21, "a size above 0");
    ERR(L "limits: 5\n", 2, 9, "limits: expected a mapping");
}
END_TEST

START_TEST(test_err_listen)
{
    ERR("listen:\n  - 127.0.0.1:8080\n  - 300.0.0.1:80\n", 3, 5,
        "\"300.0.0.1\" in \"300.0.0.1:80\" is not an IP address");
    ERR("listen: [\"127.0.0.1:65536\"]\n", 1, 10, "bad port \"65536\"");
    ERR("listen: [\"127.0.0.1:\"]\n", 1, 10, "bad port");
    ERR("listen: [\"127.0.0.1\"]\n", 1, 10, "has no port");
    ERR("listen: [\"localhost:80\"]\n", 1, 10, "not an IP address");
    ERR("listen: [\"::1:80\"]\n", 1, 10, "an IPv6 address goes in brackets");
    ERR("listen: [\"[::1]\"]\n", 1, 10, "[IPv6]:PORT");
    ERR("listen: [\"[::g]:80\"]\n", 1, 10, "not an IP address");
    ERR("listen: [\"unix:\"]\n", 1, 10, "socket path");
    ERR("listen: [\"unix:/" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]\n",
        1, 10, "too long");
    ERR("listen: []\n", 1, 9, "at least one address");
    ERR("listen:\n", 1, 8, "listen: expected a list of addresses");
    ERR("listen:\n  - address: 127.0.0.1:80\n    port: 80\n", 3, 5,
        "unknown key \"port\" in a listen entry");
    ERR("listen:\n  - backlog: 5\n", 2, 5, "needs \"address\"");
    ERR("listen:\n  - address: 127.0.0.1:80\n    backlog: -1\n", 3, 14,
        "backlog: expected an integer from 1");
    ERR("listen:\n  - address: 127.0.0.1:80\n    tls: on\n", 3, 10,
        "tls: expected a mapping");
    /* duplicates, including two spellings of one address */
    ERR("listen:\n  - 127.0.0.1:8080\n  - address: 127.0.0.1:8080\n", 3, 14,
        "duplicate address \"127.0.0.1:8080\" (already at line 2, column 5");
    ERR("listen:\n  - \"*:80\"\n  - 0.0.0.0:80\n", 3, 5,
        "duplicate address \"0.0.0.0:80\"");
    ERR("listen:\n  - \"[::1]:80\"\n  - \"[0::1]:80\"\n", 3, 5,
        "duplicate address");
    ERR("listen:\n  - unix:/tmp/k.sock\n  - unix:/tmp/k.sock\n", 3, 5,
        "duplicate address");
}
END_TEST

/* Syntax only: the files themselves are OpenSSL's business (tls.c). */
#define LT "listen:\n  - address: 127.0.0.1:443\n    tls:\n"
#define LTC LT "      certificate: c.pem\n      key: k.pem\n"

START_TEST(test_err_tls)
{
    ERR("listen:\n  - address: 127.0.0.1:80\n    tls: {certificate: c}\n",
        3, 11, "tls: \"certificate\" needs \"key\"");
    ERR("listen:\n  - address: 127.0.0.1:80\n    tls: {key: k}\n",
        3, 11, "tls: \"key\" needs \"certificate\"");
    ERR("listen:\n  - address: 127.0.0.1:80\n    tls: {}\n", 3, 10,
        "expected \"certificate\" and \"key\"");
    ERR2(LTC "      cert: x\n", 6, 7, "unknown key \"cert\" in tls",
         "certificate, key, certificates, protocols, ciphers, "
         "ciphersuites, groups");
    ERR(LT "      certificate: \"\"\n      key: k\n", 4, 20,
        "certificate: expected a file path");
    ERR(LTC "      protocols: [TLSv1.1]\n", 6, 19,
        "protocols: \"TLSv1.1\" is not offered: versions before TLS 1.2 "
        "are obsolete");
    ERR(LTC "      protocols: [TLSv1.3, tlsv1.3]\n", 6, 28, "listed twice");
    ERR(LTC "      protocols: [QUIC]\n", 6, 19,
        "protocols: expected TLSv1.2 or TLSv1.3");
    ERR(LTC "      protocols: []\n", 6, 18, "protocols: expected a list");
    ERR(LTC "      ciphers: []\n", 6, 16,
        "ciphers: expected a colon-separated string or a list of names");
    ERR(LTC "      groups: [X25519, {a: b}]\n", 6, 24, "groups: expected "
        "a name");
    ERR(LTC "      certificates: {server_names: [a]}\n", 6, 21,
        "certificates: expected a list");
    ERR(LTC "      certificates:\n        - {certificate: a, key: b}\n", 7,
        11, "certificates entry needs \"server_names\"");
    ERR(LTC "      certificates:\n        - {server_names: [a.test], "
        "certificate: a}\n", 7, 36, "\"certificate\" needs \"key\"");
    ERR(LTC "      certificates:\n        - {server_names: [\"a b\"], "
        "certificate: a, key: b}\n", 7, 27,
        "server_names: \"a b\" is not a host name");
    ERR(LTC "      certificates:\n        - {server_names: [\"[::1]\"], "
        "certificate: a, key: b}\n", 7, 27, "is not a host name");
    ERR(LTC "      certificates:\n"
        "        - {server_names: [a.test, b.test], certificate: a, key: b}\n"
        "        - {server_names: [c.test, B.TEST], certificate: c, key: d}\n",
        8, 35, "\"b.test\" is already served by another certificate");
    ERR(LTC "      certificates:\n"
        "        - {server_names: [a.test, A.test], certificate: a, key: b}\n",
        7, 35, "\"a.test\" is listed twice");
    ERR(L "limits:\n  tls_handshake_timeout: 0\n", 3, 26,
        "tls_handshake_timeout: expected a duration");
    ERR(L "tls_ticket_rotation: 500ms\n", 2, 22,
        "tls_ticket_rotation: expected a duration from 1s to 168h");
    ERR(L "tls_ticket_rotation: 8d\n", 2, 22, "tls_ticket_rotation");
}
END_TEST

START_TEST(test_err_modules)
{
    char yaml[PATH_MAX + 128], want[PATH_MAX + 64];

    snprintf(want, sizeof(want), "nosuch.so not found in %s, %s",
             kou_tc_mods1, kou_tc_mods2);
    ERR2(L "modules:\n  hello: {}\n  nosuch: {}\n", 4, 3,
         "module \"nosuch\"", want);

    snprintf(want, sizeof(want), "cannot read %s/nothere/hello.so: %s",
             kou_tc_dir, strerror(ENOENT));
    ERR2(L "modules:\n  hello: {path: nothere/hello.so}\n", 3, 17,
         "module \"hello\"", want);

    snprintf(yaml, sizeof(yaml), L "modules:\n  hello: {path: %s}\n",
             kou_tc_mods1);
    ERR(yaml, 3, 17, "is not a regular file");

    ERR(L "modules:\n  Hello: {}\n", 3, 3,
        "module name \"Hello\" is not valid");
    ERR(L "modules:\n  hello: 5\n", 3, 10, "module \"hello\": expected a "
        "mapping");
    ERR(L "modules: [hello]\n", 2, 10, "modules: expected a mapping");
}
END_TEST

START_TEST(test_err_modules_no_dirs)
{
    char          path[PATH_MAX], err[512];
    kou_config_t *cf;

    kou_tc_write(path, __LINE__, L "modules: {hello: {}}\n");
    ck_assert_int_eq(kou_config_load(path, kou_tc_dir, NULL, &cf, err,
                                     sizeof(err)), KOU_ERROR);
    ck_assert_ptr_nonnull(strstr(err, ":2:11: module \"hello\": no \"path\""));
}
END_TEST

START_TEST(test_err_hooks)
{
    ERR2(LM "hooks:\n  log: [hello, nope]\n", 4, 16,
         "hooks.log: \"nope\" is not a declared module", "declared: hello");
    ERR2(LM "hooks:\n  content: [hello]\n", 4, 3,
         "unknown hook phase \"content\"",
         "expected one of: request, response, log");
    ERR(LM "hooks:\n  log: [hello, hello]\n", 4, 16, "listed twice");
    ERR(LM "hooks:\n  log:\n", 4, 7, "hooks.log: expected a list");
    ERR(L "hooks:\n  request: nope\n", 3, 12, "declared: none");
}
END_TEST

START_TEST(test_err_routes)
{
    ERR(LM "routes:\n  - path: /a\n    prefix: /b\n    handler: hello\n",
        5, 5, "route has both \"path\" and \"prefix\"");
    ERR(LM "routes:\n  - handler: hello\n", 4, 5,
        "route needs \"path\" (an exact path) or \"prefix\"");
    ERR(LM "routes:\n  - path: /a\n", 4, 5, "route needs \"handler\"");
    ERR2(LM "routes:\n  - path: /a\n    handler: nope\n", 5, 14,
         "handler: \"nope\" is not a declared module", "declared: hello");
    ERR(LM "routes:\n  - path: hello\n    handler: hello\n", 4, 11,
        "path: expected a path starting with \"/\", got \"hello\"");
    ERR(LM "routes:\n  - prefix:\n    handler: hello\n", 4, 12,
        "prefix: expected a path starting with \"/\", got nothing");
    ERR(LM "routes:\n  - path: /a/../b\n    handler: hello\n", 4, 11,
        "\"..\" segment");
    ERR(LM "routes:\n  - path: \"/a b\"\n    handler: hello\n", 4, 11,
        "path: \"/a b\" contains a space");
    ERR(LM "routes:\n  - prefix: /a?b\n    handler: hello\n", 4, 13,
        "contains '?'");
    ERR(LM "routes:\n  - path: /a\n    handler: hello\n"
        "    methods: [GET, \"G T\"]\n", 6, 20,
        "methods: \"G T\" is not a valid method name");
    ERR(LM "routes:\n  - path: /a\n    handler: hello\n    methods: []\n",
        6, 14, "at least one method");
    ERR(LM "routes:\n  - path: /a\n    handler: hello\n"
        "    host: [example.com, \"ex ample.com\"]\n", 6, 25,
        "host: \"ex ample.com\" is not a host name");
    ERR(LM "routes:\n  - path: /a\n    handler: hello\n    host: \"*\"\n",
        6, 11, "is not a host name");
    ERR(LM "routes:\n  - path: /a\n    handler: hello\n    max_body: lots\n",
        6, 15, "max_body: expected a size");
    ERR(LM "routes:\n  - /a\n", 4, 5, "routes: expected a route");
}
END_TEST

/* ---- good configurations ---- */

static const char kou_tc_full[] =
    "# DESIGN §6, without user\n"
    "workers: 3\n"
    "pid_file: run/kourier.pid\n"
    "error_log: stderr\n"
    "shutdown_timeout: 45s\n"
    "group: nogroup\n"
    "\n"
    "limits:\n"
    "  header_timeout: 5s\n"
    "  body_timeout: 250ms\n"
    "  idle_timeout: 2m\n"
    "  send_timeout: 1h\n"
    "  max_request_line: 4k\n"
    "  max_header_block: 32K\n"
    "  max_headers: 50\n"
    "  max_body: 2m\n"
    "  max_connections: 512\n"
    "\n"
    "listen:\n"
    "  - address: 127.0.0.1:8080\n"
    "  - address: \"[::1]:8080\"\n"
    "    backlog: 128\n"
    "  - \"*:0\"\n"
    "  - \"*:0\"\n"
    "  - unix:run/k.sock\n"
    "  - address: 127.0.0.1:8443\n"
    "\n"
    "modules:\n"
    "  static: {}\n"
    "  proxy:\n"
    "  metrics: ~\n"
    "  access_log: { format: combined }\n"
    "  hello: { path: plugins/hello.so }\n"
    "  echo:\n"
    "    color: blue\n"
    "\n"
    "hooks:\n"
    "  log: [metrics, access_log]\n"
    "  request: echo\n"
    "\n"
    "routes:\n"
    "  - path: /metrics\n"
    "    handler: metrics\n"
    "  - prefix: /api\n"
    "    handler: proxy\n"
    "    upstreams: [127.0.0.1:9001, 127.0.0.1:9002]\n"
    "    max_body: 10m\n"
    "  - path: /hello\n"
    "    methods: [GET, get, PURGE, PURGE, GET]\n"
    "    host: [example.com, \"*.example.org\", 127.0.0.1, \"[::1]\"]\n"
    "    handler: hello\n"
    "    greeting: Hello\n"
    "  - prefix: /\n"
    "    methods: HEAD\n"
    "    host: localhost\n"
    "    handler: static\n"
    "    root: docs/site\n";

START_TEST(test_full)
{
    kou_config_t              *cf = kou_tc_load_ok(__LINE__, kou_tc_full);
    char                       want[PATH_MAX + 64];
    const struct sockaddr_in  *sin;
    const struct sockaddr_in6 *sin6;
    const struct sockaddr_un  *sun;
    const kou_route_t         *rt;
    kou_str_t                  s;

    ck_assert_str_eq(cf->prefix, kou_tc_dir);
    ck_assert_int_eq(cf->workers, 3);
    snprintf(want, sizeof(want), "%s/run/kourier.pid", kou_tc_dir);
    ck_assert_str_eq(cf->pid_file, want);
    ck_assert_str_eq(cf->error_log, "stderr");
    ck_assert_uint_eq(cf->shutdown_timeout, 45000);
    ck_assert_ptr_null(cf->user);
    ck_assert_str_eq(cf->group, "nogroup");

    ck_assert_uint_eq(cf->limits.header_timeout, 5000);
    ck_assert_uint_eq(cf->limits.body_timeout, 250);
    ck_assert_uint_eq(cf->limits.idle_timeout, 120000);
    ck_assert_uint_eq(cf->limits.send_timeout, 3600000);
    ck_assert_uint_eq(cf->limits.max_request_line, 4096);
    ck_assert_uint_eq(cf->limits.max_header_block, 32768);
    ck_assert_uint_eq(cf->limits.max_headers, 50);
    ck_assert_uint_eq(cf->limits.max_body, 2 * 1048576);
    ck_assert_uint_eq(cf->limits.max_connections, 512);

    /* listen */
    ck_assert_uint_eq(cf->nlisten, 6);
    sin = (const struct sockaddr_in *) &cf->listen[0].addr;
    ck_assert_int_eq(sin->sin_family, AF_INET);
    ck_assert_uint_eq(ntohs(sin->sin_port), 8080);
    ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr), 0x7f000001);
    ck_assert_uint_eq(cf->listen[0].addrlen, sizeof(struct sockaddr_in));
    ck_assert_str_eq(cf->listen[0].text, "127.0.0.1:8080");
    ck_assert_int_eq(cf->listen[0].backlog, 511);
    ck_assert_ptr_null(cf->listen[0].tls);
    ck_assert_uint_eq(cf->listen[0].node->line, 20);
    ck_assert_uint_eq(cf->listen[0].node->col, 5);

    sin6 = (const struct sockaddr_in6 *) &cf->listen[1].addr;
    ck_assert_int_eq(sin6->sin6_family, AF_INET6);
    ck_assert_uint_eq(ntohs(sin6->sin6_port), 8080);
    ck_assert(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
    ck_assert_uint_eq(cf->listen[1].addrlen, sizeof(struct sockaddr_in6));
    ck_assert_str_eq(cf->listen[1].text, "[::1]:8080");
    ck_assert_int_eq(cf->listen[1].backlog, 128);

    /* "*" is any IPv4 address; port 0 twice is two ephemeral ports */
    for (size_t i = 2; i < 4; i++) {
        sin = (const struct sockaddr_in *) &cf->listen[i].addr;
        ck_assert_int_eq(sin->sin_family, AF_INET);
        ck_assert_uint_eq(sin->sin_port, 0);
        ck_assert_uint_eq(sin->sin_addr.s_addr, htonl(INADDR_ANY));
    }

    sun = (const struct sockaddr_un *) &cf->listen[4].addr;
    ck_assert_int_eq(sun->sun_family, AF_UNIX);
    snprintf(want, sizeof(want), "%s/run/k.sock", kou_tc_dir);
    ck_assert_str_eq(sun->sun_path, want);
    ck_assert_str_eq(cf->listen[4].text, "unix:run/k.sock");

    ck_assert_ptr_null(cf->listen[5].tls);

    /* modules: the search order of the directories, explicit paths */
    ck_assert_uint_eq(cf->nmodules, 6);
    ck_assert_str_eq(cf->modules[0].name, "static");
    snprintf(want, sizeof(want), "%s/static.so", kou_tc_mods2);
    ck_assert_str_eq(cf->modules[0].path, want);
    ck_assert_str_eq(cf->modules[1].name, "proxy");
    ck_assert_str_eq(cf->modules[2].name, "metrics");
    ck_assert_str_eq(cf->modules[4].name, "hello");
    snprintf(want, sizeof(want), "%s/plugins/hello.so", kou_tc_dir);
    ck_assert_str_eq(cf->modules[4].path, want);
    ck_assert_str_eq(cf->modules[5].name, "echo");
    snprintf(want, sizeof(want), "%s/echo.so", kou_tc_mods1);
    ck_assert_str_eq(cf->modules[5].path, want);
    for (size_t i = 0; i < cf->nmodules; i++) {
        ck_assert_ptr_nonnull(cf->modules[i].node);
        ck_assert_uint_eq(cf->modules[i].node->type, KOU_NODE_MAP);
    }
    ck_assert_uint_eq(kou_conf_len(cf->modules[1].node), 0);  /* null */
    ck_assert_uint_eq(kou_conf_len(cf->modules[2].node), 0);  /* ~ */
    ck_assert_int_eq(kou_conf_str(kou_conf_get(cf->modules[3].node, "format"),
                                  &s), KOU_OK);
    ck_assert(kou_str_eq(s, KOU_STR("combined")));
    ck_assert_ptr_nonnull(kou_conf_get(cf->modules[4].node, "path"));
    ck_assert_int_eq(kou_conf_str(kou_conf_get(cf->modules[5].node, "color"),
                                  &s), KOU_OK);
    ck_assert(kou_str_eq(s, KOU_STR("blue")));

    /* hooks, in the order written */
    ck_assert_uint_eq(cf->nhooks[KOU_PHASE_LOG], 2);
    ck_assert_uint_eq(cf->hooks[KOU_PHASE_LOG][0], 2);
    ck_assert_uint_eq(cf->hooks[KOU_PHASE_LOG][1], 3);
    ck_assert_uint_eq(cf->nhooks[KOU_PHASE_REQUEST], 1);
    ck_assert_uint_eq(cf->hooks[KOU_PHASE_REQUEST][0], 5);
    ck_assert_uint_eq(cf->nhooks[KOU_PHASE_RESPONSE], 0);

    /* routes */
    ck_assert_uint_eq(cf->nroutes, 4);
    for (size_t i = 0; i < cf->nroutes; i++) {
        ck_assert_uint_eq(cf->routes[i].route.index, i);
        ck_assert_ptr_eq(cf->routes[i].route.data, &cf->routes[i]);
        ck_assert_ptr_nonnull(cf->routes[i].node);
    }
    rt = &cf->routes[0].route;
    ck_assert(kou_str_eq(rt->path, KOU_STR("/metrics")));
    ck_assert(!rt->prefix);
    ck_assert_uint_eq(rt->methods, 0);
    ck_assert_uint_eq(rt->nhosts, 0);
    ck_assert_uint_eq(cf->routes[0].handler, 2);
    ck_assert_uint_eq(cf->routes[0].max_body, 2 * 1048576);

    rt = &cf->routes[1].route;
    ck_assert(kou_str_eq(rt->path, KOU_STR("/api")));
    ck_assert(rt->prefix);
    ck_assert_uint_eq(cf->routes[1].handler, 1);
    ck_assert_uint_eq(cf->routes[1].max_body, 10 * 1048576);
    ck_assert_uint_eq(kou_conf_len(kou_conf_get(cf->routes[1].node,
                                                "upstreams")), 2);

    rt = &cf->routes[2].route;
    ck_assert_uint_eq(rt->methods, 1u << KOU_METHOD_GET);
    ck_assert_uint_eq(rt->nmethod_names, 2);
    ck_assert(kou_str_eq(rt->method_names[0], KOU_STR("get")));
    ck_assert(kou_str_eq(rt->method_names[1], KOU_STR("PURGE")));
    ck_assert_uint_eq(rt->nhosts, 4);
    ck_assert(kou_str_eq(rt->hosts[0], KOU_STR("example.com")));
    ck_assert(kou_str_eq(rt->hosts[1], KOU_STR("*.example.org")));
    ck_assert(kou_str_eq(rt->hosts[3], KOU_STR("[::1]")));
    ck_assert_uint_eq(cf->routes[2].handler, 4);
    ck_assert_int_eq(kou_conf_str(kou_conf_get(cf->routes[2].node,
                                               "greeting"), &s), KOU_OK);
    ck_assert(kou_str_eq(s, KOU_STR("Hello")));

    rt = &cf->routes[3].route;
    ck_assert(kou_str_eq(rt->path, KOU_STR("/")));
    ck_assert(rt->prefix);
    ck_assert_uint_eq(rt->methods, 1u << KOU_METHOD_HEAD);
    ck_assert_uint_eq(rt->nmethod_names, 0);
    ck_assert_uint_eq(rt->nhosts, 1);
    ck_assert(kou_str_eq(rt->hosts[0], KOU_STR("localhost")));
    ck_assert_uint_eq(cf->routes[3].handler, 0);

    kou_config_free(cf);
}
END_TEST

START_TEST(test_defaults)
{
    kou_config_t *cf = kou_tc_load_ok(__LINE__, "listen: 127.0.0.1:0\n");
    char          want[PATH_MAX + 64];
    long          cpus = sysconf(_SC_NPROCESSORS_ONLN);

    ck_assert_int_eq(cf->workers, cpus < 1 ? 1 : cpus > 1024 ? 1024 : cpus);
    snprintf(want, sizeof(want), "%s/logs/kourier.pid", kou_tc_dir);
    ck_assert_str_eq(cf->pid_file, want);
    snprintf(want, sizeof(want), "%s/logs/error.log", kou_tc_dir);
    ck_assert_str_eq(cf->error_log, want);
    ck_assert_uint_eq(cf->shutdown_timeout, 30000);
    ck_assert_ptr_null(cf->user);
    ck_assert_ptr_null(cf->group);
    ck_assert_uint_eq(cf->limits.header_timeout, 10000);
    ck_assert_uint_eq(cf->limits.body_timeout, 30000);
    ck_assert_uint_eq(cf->limits.idle_timeout, 60000);
    ck_assert_uint_eq(cf->limits.send_timeout, 30000);
    ck_assert_uint_eq(cf->limits.max_request_line, 8192);
    ck_assert_uint_eq(cf->limits.max_header_block, 16384);
    ck_assert_uint_eq(cf->limits.max_headers, 100);
    ck_assert_uint_eq(cf->limits.max_body, 1048576);
    ck_assert_uint_eq(cf->limits.max_connections, 10000);
    ck_assert_uint_eq(cf->nlisten, 1);
    ck_assert_int_eq(cf->listen[0].backlog, 511);
    ck_assert_uint_eq(cf->nmodules, 0);
    ck_assert_uint_eq(cf->nroutes, 0);
    for (int i = 0; i < KOU_PHASE_COUNT; i++) {
        ck_assert_uint_eq(cf->nhooks[i], 0);
    }
    kou_config_free(cf);

    /* "auto" spelled out, absolute paths kept as written, a relative file */
    cf = kou_tc_load_ok(__LINE__, L "workers: auto\npid_file: /run/k.pid\n"
                        "error_log: /var/log/k.log\n");
    ck_assert_int_eq(cf->workers, cpus < 1 ? 1 : cpus > 1024 ? 1024 : cpus);
    ck_assert_str_eq(cf->pid_file, "/run/k.pid");
    ck_assert_str_eq(cf->error_log, "/var/log/k.log");
    kou_config_free(cf);
}
END_TEST

START_TEST(test_tls)
{
    kou_config_t         *cf;
    const kou_tls_conf_t *tc;
    char                  want[PATH_MAX + 64];

    /* one certificate; what is left out takes its default */
    cf = kou_tc_load_ok(__LINE__, "listen:\n  - 127.0.0.1:80\n"
                        "  - address: 127.0.0.1:443\n    tls:\n"
                        "      certificate: tls/c.pem\n"
                        "      key: /etc/k.pem\n");
    ck_assert_ptr_null(cf->listen[0].tls_conf);
    tc = cf->listen[1].tls_conf;
    ck_assert_ptr_nonnull(tc);
    ck_assert_ptr_eq(cf->listen[1].tls, tc->node);
    ck_assert_uint_eq(tc->ncerts, 1);
    snprintf(want, sizeof(want), "%s/tls/c.pem", kou_tc_dir);
    ck_assert_str_eq(tc->certs[0].certificate, want);
    ck_assert_str_eq(tc->certs[0].key, "/etc/k.pem");
    ck_assert_uint_eq(tc->certs[0].nnames, 0);
    ck_assert_uint_eq(tc->certs[0].key_node->line, 6);
    ck_assert_uint_eq(tc->protocols, KOU_TLS_V12 | KOU_TLS_V13);
    ck_assert_ptr_null(tc->ciphers);
    ck_assert_ptr_null(tc->ciphersuites);
    ck_assert_ptr_null(tc->groups);
    ck_assert_uint_eq(cf->limits.tls_handshake_timeout, 10000);
    ck_assert_uint_eq(cf->tls_ticket_rotation, 12 * 3600 * 1000);
    kou_config_free(cf);

    /* SNI entries after the default; lists joined for OpenSSL */
    cf = kou_tc_load_ok(__LINE__, "tls_ticket_rotation: 1h\n"
                        "limits: {tls_handshake_timeout: 3s}\n"
                        "listen:\n  - address: 127.0.0.1:443\n    tls:\n"
                        "      certificate: d.pem\n      key: d.key\n"
                        "      protocols: TLSv1.3\n"
                        "      ciphers: [ECDHE-RSA-AES128-GCM-SHA256, "
                        "ECDHE-RSA-AES256-GCM-SHA384]\n"
                        "      ciphersuites: TLS_AES_128_GCM_SHA256\n"
                        "      groups: X25519:P-256\n"
                        "      certificates:\n"
                        "        - server_names: [Example.COM, "
                        "\"*.example.org\"]\n"
                        "          certificate: e.pem\n"
                        "          key: e.key\n");
    ck_assert_uint_eq(cf->tls_ticket_rotation, 3600 * 1000);
    ck_assert_uint_eq(cf->limits.tls_handshake_timeout, 3000);
    tc = cf->listen[0].tls_conf;
    ck_assert_uint_eq(tc->ncerts, 2);
    ck_assert_uint_eq(tc->protocols, KOU_TLS_V13);
    ck_assert_str_eq(tc->ciphers, "ECDHE-RSA-AES128-GCM-SHA256:"
                                  "ECDHE-RSA-AES256-GCM-SHA384");
    ck_assert_str_eq(tc->ciphersuites, "TLS_AES_128_GCM_SHA256");
    ck_assert_str_eq(tc->groups, "X25519:P-256");
    ck_assert_uint_eq(tc->certs[0].nnames, 0);
    ck_assert_uint_eq(tc->certs[1].nnames, 2);
    ck_assert(kou_str_eq(tc->certs[1].names[0], KOU_STR("example.com")));
    ck_assert(kou_str_eq(tc->certs[1].names[1], KOU_STR("*.example.org")));
    snprintf(want, sizeof(want), "%s/e.key", kou_tc_dir);
    ck_assert_str_eq(tc->certs[1].key, want);
    kou_config_free(cf);

    /* without a top-level pair the first entry is the default */
    cf = kou_tc_load_ok(__LINE__, "listen:\n  - address: 127.0.0.1:443\n"
                        "    tls:\n      certificates:\n"
                        "        - {server_names: [a.test], certificate: a, "
                        "key: b}\n");
    ck_assert_uint_eq(cf->listen[0].tls_conf->ncerts, 1);
    ck_assert_uint_eq(cf->listen[0].tls_conf->certs[0].nnames, 1);
    kou_config_free(cf);
}
END_TEST

START_TEST(test_relative_file_and_prefix)
{
    char          cwd[PATH_MAX], path[PATH_MAX], err[512];
    kou_config_t *cf;

    /* the file name is kept as given, relative paths join the prefix */
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
    ck_assert_int_eq(chdir(kou_tc_dir), 0);
    kou_tc_write(path, 1, "listen: [unix:k.sock]\nworkers: [1]\n");
    ck_assert_int_eq(kou_config_load("t1.yaml", "/srv/", kou_tc_dirs, &cf,
                                     err, sizeof(err)), KOU_ERROR);
    ck_assert_ptr_nonnull(strstr(err, "t1.yaml:2:10: workers: expected"));
    ck_assert(strncmp(err, "t1.yaml:", 8) == 0);
    kou_tc_write(path, 2, "listen: [unix:k.sock]\n");
    ck_assert_int_eq(kou_config_load("t2.yaml", "/srv/", kou_tc_dirs, &cf,
                                     err, sizeof(err)), KOU_OK);
    ck_assert_str_eq(cf->file, "t2.yaml");
    ck_assert_str_eq(cf->prefix, "/srv/");
    ck_assert_str_eq(((struct sockaddr_un *) &cf->listen[0].addr)->sun_path,
                     "/srv/k.sock");
    ck_assert_str_eq(cf->pid_file, "/srv/logs/kourier.pid");
    kou_config_free(cf);
    ck_assert_int_eq(chdir(cwd), 0);
}
END_TEST

/* ---- node accessors ---- */

START_TEST(test_accessors)
{
    kou_config_t     *cf;
    const kou_conf_t *root, *n, *m;
    kou_str_t         key, s;
    int64_t           i;
    uint64_t          u;
    int               b;
    char              err[256];

    cf = kou_tc_load_ok(__LINE__, L
                        "modules:\n"
                        "  hello:\n"
                        "    big: 9223372036854775807\n"
                        "    small: -9223372036854775808\n"
                        "    over: 9223372036854775808\n"
                        "    flag: off\n"
                        "    q: \"10s\"\n"
                        "    list: [a, b, c]\n"
                        "    one: x\n"
                        "    empty: ''\n"
                        "    nul: ~\n");
    root = cf->root;
    ck_assert_ptr_eq(kou_conf_get(root, "nope"), NULL);
    ck_assert_ptr_eq(kou_conf_get(kou_conf_get(root, "listen"), "x"), NULL);
    n = cf->modules[0].node;

    ck_assert_int_eq(kou_conf_int(kou_conf_get(n, "big"), &i), KOU_OK);
    ck_assert(i == INT64_MAX);
    ck_assert_int_eq(kou_conf_int(kou_conf_get(n, "small"), &i), KOU_OK);
    ck_assert(i == INT64_MIN);
    ck_assert_int_eq(kou_conf_int(kou_conf_get(n, "over"), &i), KOU_ERROR);
    ck_assert_int_eq(kou_conf_int(kou_conf_get(n, "flag"), &i), KOU_ERROR);
    ck_assert_int_eq(kou_conf_bool(kou_conf_get(n, "flag"), &b), KOU_OK);
    ck_assert_int_eq(b, 0);
    /* quoting does not change what a value means */
    ck_assert_int_eq(kou_conf_duration(kou_conf_get(n, "q"), &u), KOU_OK);
    ck_assert_uint_eq(u, 10000);
    ck_assert_int_eq(kou_conf_size(kou_conf_get(n, "q"), &u), KOU_ERROR);
    ck_assert_int_eq(kou_conf_int(NULL, &i), KOU_ERROR);

    m = kou_conf_get(n, "list");
    ck_assert_uint_eq(kou_conf_len(m), 3);
    ck_assert_int_eq(kou_conf_str(m, &s), KOU_ERROR);
    ck_assert_int_eq(kou_conf_str(kou_conf_at(m, 2, &key), &s), KOU_OK);
    ck_assert(kou_str_eq(s, KOU_STR("c")));
    ck_assert_uint_eq(key.n, 0);
    ck_assert_ptr_null(kou_conf_at(m, 3, NULL));

    m = kou_conf_get(n, "one");
    ck_assert_uint_eq(kou_conf_len(m), 1);
    ck_assert_ptr_eq(kou_conf_at(m, 0, NULL), m);
    ck_assert_ptr_null(kou_conf_at(m, 1, NULL));
    ck_assert_uint_eq(kou_conf_len(NULL), 0);
    ck_assert_ptr_null(kou_conf_at(NULL, 0, NULL));

    ck_assert_uint_eq(kou_conf_len(n), 9);
    m = kou_conf_at(n, 5, &key);
    ck_assert(kou_str_eq(key, KOU_STR("list")));
    ck_assert_uint_eq(m->type, KOU_NODE_SEQ);

    /* '' is an empty string, ~ is null: both read as "" */
    ck_assert_int_eq(kou_conf_str(kou_conf_get(n, "empty"), &s), KOU_OK);
    ck_assert_uint_eq(s.n, 0);
    ck_assert_int_eq(kou_conf_str(kou_conf_get(n, "nul"), &s), KOU_OK);
    ck_assert_uint_eq(s.n, 0);

    m = kou_conf_get(n, "flag");
    ck_assert_int_eq(kou_conf_error(m, err, sizeof(err), "bad %s", "flag"),
                     KOU_ERROR);
    ck_assert(strstr(err, ".yaml:7:11: bad flag") != NULL);
    ck_assert_uint_eq(m->line, 7);
    ck_assert_uint_eq(m->col, 11);
    kou_config_free(cf);
}
END_TEST

/* ---- schemas ---- */

static const kou_conf_key_t kou_tc_hello_schema[] = {
    { "greeting", KOU_CONF_STR, KOU_SCOPE_ROUTE, 0, "Hello", "text to send" },
    { "repeat", KOU_CONF_INT, KOU_SCOPE_ROUTE | KOU_SCOPE_MODULE, 0, "1",
      NULL },
    { "root", KOU_CONF_STR, KOU_SCOPE_MODULE, 1, NULL, "directory to serve" },
    { "timeout", KOU_CONF_DURATION, KOU_SCOPE_MODULE, 0, "5s", NULL },
    { "gzip", KOU_CONF_BOOL, KOU_SCOPE_MODULE, 0, NULL, NULL },
    { "buf", KOU_CONF_SIZE, KOU_SCOPE_MODULE, 0, NULL, NULL },
    { "upstreams", KOU_CONF_LIST, KOU_SCOPE_MODULE, 0, NULL, NULL },
    { "extra", KOU_CONF_MAP, KOU_SCOPE_MODULE, 0, NULL, NULL },
    { NULL, 0, 0, 0, NULL, NULL }
};

/* A second schema sharing the route (a hook module's route keys). */
static const kou_conf_key_t kou_tc_log_schema[] = {
    { "log_tag", KOU_CONF_STR, KOU_SCOPE_ROUTE, 0, NULL, NULL },
    { NULL, 0, 0, 0, NULL, NULL }
};

static const char *const kou_tc_module_skip[] = { "path", NULL };

static int
kou_tc_validate_module(int tag, const char *settings, char *err,
                       size_t errlen, kou_config_t **out)
{
    char                        yaml[1024];
    const kou_conf_key_t *const schemas[] = { kou_tc_hello_schema };

    snprintf(yaml, sizeof(yaml), L "modules:\n  hello:\n%s", settings);
    *out = kou_tc_load_ok(tag, yaml);
    return kou_conf_validate((*out)->modules[0].node, schemas, 1,
                             KOU_SCOPE_MODULE, kou_tc_module_skip, err,
                             errlen);
}

START_TEST(test_validate_module)
{
    kou_config_t     *cf;
    char              err[1024];
    const kou_conf_t *n;
    kou_str_t         s;
    uint64_t          ms;
    int64_t           i;

    /* defaults are materialised and read like written values */
    ck_assert_int_eq(kou_tc_validate_module(__LINE__,
                                            "    root: /srv\n"
                                            "    path: plugins/hello.so\n"
                                            "    gzip: yes\n"
                                            "    buf: 64k\n"
                                            "    upstreams: a:1\n"
                                            "    extra: {a: 1}\n",
                                            err, sizeof(err), &cf), KOU_OK);
    n = cf->modules[0].node;
    ck_assert_int_eq(kou_conf_duration(kou_conf_get(n, "timeout"), &ms),
                     KOU_OK);
    ck_assert_uint_eq(ms, 5000);
    ck_assert_int_eq(kou_conf_int(kou_conf_get(n, "repeat"), &i), KOU_OK);
    ck_assert_int_eq(i, 1);
    ck_assert_int_eq(kou_conf_str(kou_conf_get(n, "timeout"), &s), KOU_OK);
    ck_assert(kou_str_eq(s, KOU_STR("5s")));
    /* a route-only key gets no default in module settings */
    ck_assert_ptr_null(kou_conf_get(n, "greeting"));
    /* a default points at the map, so errors about it are still placed */
    ck_assert_uint_eq(kou_conf_get(n, "timeout")->line, 4);
    kou_config_free(cf);

    /* a written value wins over the default */
    ck_assert_int_eq(kou_tc_validate_module(__LINE__,
                                            "    root: /srv\n"
                                            "    timeout: 250ms\n",
                                            err, sizeof(err), &cf), KOU_OK);
    ck_assert_int_eq(kou_conf_duration(kou_conf_get(cf->modules[0].node,
                                                    "timeout"), &ms), KOU_OK);
    ck_assert_uint_eq(ms, 250);
    ck_assert_uint_eq(kou_conf_len(cf->modules[0].node), 3);
    kou_config_free(cf);

    /* required key missing: reported at the module's map */
    ck_assert_int_eq(kou_tc_validate_module(__LINE__, "    gzip: on\n",
                                            err, sizeof(err), &cf),
                     KOU_ERROR);
    ck_assert_ptr_nonnull(strstr(err, ".yaml:4:5: missing required key "
                                 "\"root\" (directory to serve)"));
    kou_config_free(cf);

    /* unknown key, listing what is allowed (route-only keys are not) */
    ck_assert_int_eq(kou_tc_validate_module(__LINE__,
                                            "    root: /srv\n"
                                            "    rot: /srv\n",
                                            err, sizeof(err), &cf),
                     KOU_ERROR);
    ck_assert_ptr_nonnull(strstr(err, ".yaml:5:5: unknown key \"rot\" in "
                                 "module settings (expected one of: path, "
                                 "repeat, root, timeout, gzip, buf, "
                                 "upstreams, extra)"));
    kou_config_free(cf);

    /* wrong types */
    static const struct {
        const char *yaml;
        const char *want;
    } bad[] = {
        { "    root: /srv\n    repeat: many\n",
          ".yaml:5:13: repeat: expected an integer, got \"many\"" },
        { "    root: /srv\n    gzip: maybe\n", ":5:11: gzip: expected true" },
        { "    root: /srv\n    buf: 1x\n", ":5:10: buf: expected a size" },
        { "    root: /srv\n    timeout: 1d\n",
          ":5:14: timeout: expected a duration" },
        { "    root: /srv\n    upstreams: {a: 1}\n",
          ":5:16: upstreams: expected a list, got a mapping" },
        { "    root: /srv\n    extra: [1]\n",
          ":5:12: extra: expected a mapping, got a list" },
        { "    root: [a]\n", ":4:11: root: expected a string, got a list "
          "(directory to serve)" },
        { "    root: /srv\n    greeting: hi\n",
          ":5:5: unknown key \"greeting\"" },
    };
    for (size_t k = 0; k < kou_nelem(bad); k++) {
        ck_assert_int_eq(kou_tc_validate_module(__LINE__, bad[k].yaml, err,
                                                sizeof(err), &cf), KOU_ERROR);
        ck_assert_msg(strstr(err, bad[k].want) != NULL, "\"%s\" lacks \"%s\"",
                      err, bad[k].want);
        kou_config_free(cf);
    }
}
END_TEST

START_TEST(test_validate_route)
{
    kou_config_t               *cf;
    char                        err[1024];
    kou_str_t                   s;
    kou_conf_t                 *route;
    const kou_conf_key_t *const schemas[] = { kou_tc_hello_schema,
                                              kou_tc_log_schema };

    cf = kou_tc_load_ok(__LINE__, LM
                        "routes:\n"
                        "  - path: /hello\n"
                        "    handler: hello\n"
                        "    log_tag: h\n"
                        "  - path: /other\n"
                        "    handler: hello\n"
                        "    greeting: Hi\n"
                        "    rot: x\n"
                        "  - path: /third\n"
                        "    handler: hello\n"
                        "    root: /srv\n");

    route = cf->routes[0].node;
    ck_assert_int_eq(kou_conf_validate(route, schemas, 2, KOU_SCOPE_ROUTE,
                                       kou_route_core_keys, err, sizeof(err)),
                     KOU_OK);
    ck_assert_int_eq(kou_conf_str(kou_conf_get(route, "greeting"), &s),
                     KOU_OK);
    ck_assert(kou_str_eq(s, KOU_STR("Hello")));
    ck_assert_ptr_nonnull(kou_conf_get(route, "repeat"));
    ck_assert_ptr_null(kou_conf_get(route, "timeout"));
    /* a second validation finds the defaults as present, adds nothing */
    ck_assert_uint_eq(kou_conf_len(route), 5);
    ck_assert_int_eq(kou_conf_validate(route, schemas, 2, KOU_SCOPE_ROUTE,
                                       kou_route_core_keys, err, sizeof(err)),
                     KOU_OK);
    ck_assert_uint_eq(kou_conf_len(route), 5);

    ck_assert_int_eq(kou_conf_validate(cf->routes[1].node, schemas, 2,
                                       KOU_SCOPE_ROUTE, kou_route_core_keys,
                                       err, sizeof(err)), KOU_ERROR);
    ck_assert_msg(strstr(err, ".yaml:10:5: unknown key \"rot\" in route "
                         "(expected one of: path, prefix, methods, host, "
                         "handler, max_body, greeting, repeat, log_tag)")
                  != NULL, "%s", err);

    /* a module-scope key is not a route key */
    ck_assert_int_eq(kou_conf_validate(cf->routes[2].node, schemas, 2,
                                       KOU_SCOPE_ROUTE, kou_route_core_keys,
                                       err, sizeof(err)), KOU_ERROR);
    ck_assert_msg(strstr(err, ".yaml:13:5: unknown key \"root\" in route")
                  != NULL, "%s", err);

    /* only the handler's schema: log_tag is unknown */
    ck_assert_int_eq(kou_conf_validate(cf->routes[0].node, schemas, 1,
                                       KOU_SCOPE_ROUTE, kou_route_core_keys,
                                       err, sizeof(err)), KOU_ERROR);
    ck_assert_msg(strstr(err, ".yaml:6:5: unknown key \"log_tag\"") != NULL,
                  "%s", err);
    kou_config_free(cf);
}
END_TEST

START_TEST(test_validate_bad_default)
{
    static const kou_conf_key_t broken[] = {
        { "n", KOU_CONF_INT, KOU_SCOPE_MODULE, 0, "ten", NULL },
        { NULL, 0, 0, 0, NULL, NULL }
    };
    const kou_conf_key_t *const schemas[] = { broken };
    kou_config_t               *cf;
    char                        err[512];

    cf = kou_tc_load_ok(__LINE__, L "modules: {hello: }\n");
    ck_assert_int_eq(kou_conf_validate(cf->modules[0].node, schemas, 1,
                                       KOU_SCOPE_MODULE, kou_tc_module_skip,
                                       err, sizeof(err)), KOU_ERROR);
    ck_assert_ptr_nonnull(strstr(err, "the default \"ten\" of \"n\" is not "
                                 "an integer"));
    kou_config_free(cf);
}
END_TEST

static Suite *
kou_tc_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc;

    tc = tcase_create("syntax");
    tcase_add_test(tc, test_parse_size);
    tcase_add_test(tc, test_parse_duration);
    tcase_add_test(tc, test_parse_bool);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_add_unchecked_fixture(tc, kou_tc_setup, kou_tc_teardown);
    tcase_add_test(tc, test_err_yaml_syntax);
    tcase_add_test(tc, test_err_yaml_structure);
    tcase_add_test(tc, test_err_cannot_open);
    tcase_add_test(tc, test_err_top_level);
    tcase_add_test(tc, test_err_limits);
    tcase_add_test(tc, test_err_listen);
    tcase_add_test(tc, test_err_tls);
    tcase_add_test(tc, test_err_modules);
    tcase_add_test(tc, test_err_modules_no_dirs);
    tcase_add_test(tc, test_err_hooks);
    tcase_add_test(tc, test_err_routes);
    suite_add_tcase(s, tc);

    tc = tcase_create("load");
    tcase_add_unchecked_fixture(tc, kou_tc_setup, kou_tc_teardown);
    tcase_add_test(tc, test_full);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_tls);
    tcase_add_test(tc, test_relative_file_and_prefix);
    tcase_add_test(tc, test_accessors);
    suite_add_tcase(s, tc);

    tc = tcase_create("validate");
    tcase_add_unchecked_fixture(tc, kou_tc_setup, kou_tc_teardown);
    tcase_add_test(tc, test_validate_module);
    tcase_add_test(tc, test_validate_route);
    tcase_add_test(tc, test_validate_bad_default);
    suite_add_tcase(s, tc);

    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(kou_tc_suite());
    int      failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
