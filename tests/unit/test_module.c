/*
 * The module loader (core/module.c): what a user sees when a module cannot
 * be used, and that a good one is configured from its routes.
 *
 * Every test writes a real kourier.yaml into a fresh directory, loads it
 * with kou_config_load() (which must accept it: the faults are all in the
 * modules) and then runs kou_modules_load() on it. The modules are the
 * fixtures in tests/fixtures/ and the hello plugin, as built in this tree.
 */

#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "module.h"

#define KOU_FIXTURES KOU_BUILD_DIR "/tests/fixtures/.libs/"
#define KOU_PLUGINS  KOU_BUILD_DIR "/plugins/.libs/"

static char kou_test_dir[256];
static char kou_test_mods[300];
static char kou_test_file[300];
static char kou_test_err[1024];

static kou_config_t  *kou_test_cf;
static kou_modules_t *kou_test_ms;

static void
kou_test_setup(void)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(kou_test_dir, sizeof(kou_test_dir), "%s/kou-test-module-XXXXXX",
             tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
    ck_assert_msg(mkdtemp(kou_test_dir) != NULL, "mkdtemp: %s",
                  strerror(errno));

    /* An empty modules directory: only explicit paths can be found. */
    snprintf(kou_test_mods, sizeof(kou_test_mods), "%s/modules",
             kou_test_dir);
    ck_assert_int_eq(mkdir(kou_test_mods, 0700), 0);

    snprintf(kou_test_file, sizeof(kou_test_file), "%s/kourier.yaml",
             kou_test_dir);

    kou_test_cf = NULL;
    kou_test_ms = NULL;
    kou_test_err[0] = '\0';
}

static void
kou_test_teardown(void)
{
    char path[400];

    kou_modules_unload(kou_test_ms);
    kou_config_free(kou_test_cf);

    unlink(kou_test_file);
    snprintf(path, sizeof(path), "%s/notamodule.so", kou_test_dir);
    unlink(path);
    rmdir(kou_test_mods);
    rmdir(kou_test_dir);
}

static void
kou_test_write(const char *path, const char *fmt, ...)
{
    va_list ap;
    FILE   *f;

    f = fopen(path, "w");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));

    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);

    ck_assert_int_eq(fclose(f), 0);
}

/*
 * Write a config that declares one module at `so` (line 4, its map opening
 * at column 13 when the name has 8 characters) and one route it handles,
 * followed by `route_extra` (lines from 8 on). The config must load.
 */
static void
kou_test_config(const char *name, const char *so, const char *route_extra)
{
    const char *const dirs[] = { kou_test_mods, NULL };

    kou_test_write(kou_test_file,
                   "listen:\n"                              /* 1 */
                   "  - address: 127.0.0.1:0\n"             /* 2 */
                   "modules:\n"                             /* 3 */
                   "  %s: { path: \"%s\" }\n"               /* 4 */
                   "routes:\n"                              /* 5 */
                   "  - path: /\n"                          /* 6 */
                   "    handler: %s\n"                      /* 7 */
                   "%s",                                    /* 8... */
                   name, so, name, route_extra);

    ck_assert_msg(kou_config_load(kou_test_file, kou_test_dir, dirs,
                                  &kou_test_cf, kou_test_err,
                                  sizeof(kou_test_err)) == KOU_OK,
                  "config refused: %s", kou_test_err);
}

/* Load the modules, expecting a refusal; the message is in kou_test_err. */
static void
kou_test_load_fails(void)
{
    int rc;

    rc = kou_modules_load(kou_test_cf, &kou_test_ms, kou_test_err,
                          sizeof(kou_test_err));
    ck_assert_msg(rc == KOU_ERROR, "module loaded: rc %d", rc);
    kou_test_ms = NULL;

    ck_assert_msg(kou_test_err[0] != '\0', "no error message");
}

/* Assert that the message holds each of the strings, in this order. */
static void
kou_test_says(const char *first, ...)
{
    const char *want, *at = kou_test_err;
    va_list     ap;

    va_start(ap, first);
    for (want = first; want != NULL; want = va_arg(ap, const char *)) {
        at = strstr(at, want);
        ck_assert_msg(at != NULL, "message lacks \"%s\" (in order): %s",
                      want, kou_test_err);
        at += strlen(want);
    }
    va_end(ap);
}

START_TEST(test_bad_abi_major)
{
    const char *so = KOU_FIXTURES "mod_badabi.so";

    kou_test_config("badabi", so, "");
    kou_test_load_fails();

    /* "PATH: abi_major is 2, this server speaks ABI 1.0" */
    kou_test_says(so, "abi_major", "2", "1", NULL);
    ck_assert_msg(strstr(kou_test_err, "abi_major is 1") == NULL,
                  "the module's value is the wrong one: %s", kou_test_err);
}
END_TEST

START_TEST(test_no_entry_symbol)
{
    const char *so = KOU_FIXTURES "mod_noentry.so";

    kou_test_config("noentry", so, "");
    kou_test_load_fails();

    kou_test_says(so, "kourier_module", NULL);
}
END_TEST

START_TEST(test_not_a_shared_object)
{
    char so[400];

    snprintf(so, sizeof(so), "%s/notamodule.so", kou_test_dir);
    kou_test_write(so, "this is text, not ELF\n");

    kou_test_config("notamod", so, "");
    kou_test_load_fails();

    kou_test_says(so, "cannot load", NULL);
}
END_TEST

START_TEST(test_configure_fails)
{
    char where[400];

    kou_test_config("failconf", KOU_FIXTURES "mod_failconf.so", "");
    kou_test_load_fails();

    /*
     * The module reported its own config map (line 4, column 13, the '{'),
     * so the message is the module's, not prefixed a second time.
     */
    snprintf(where, sizeof(where), "%s:4:13:", kou_test_file);
    ck_assert_msg(strncmp(kou_test_err, where, strlen(where)) == 0,
                  "message does not start with \"%s\": %s", where,
                  kou_test_err);
    kou_test_says("failconf: refusing on purpose", NULL);
    ck_assert_msg(strstr(kou_test_err + 1, kou_test_file) == NULL,
                  "file named twice: %s", kou_test_err);
}
END_TEST

START_TEST(test_hello_route_keys)
{
    const kou_conf_t *node;
    const kou_str_t  *greeting;
    char              so[] = KOU_PLUGINS "hello.so";
    int               rc;

    kou_test_config("hello", so,
                    "    greeting: Hi\n"                    /* 8 */
                    "  - path: /plain\n"                    /* 9 */
                    "    handler: hello\n");                /* 10 */

    rc = kou_modules_load(kou_test_cf, &kou_test_ms, kou_test_err,
                          sizeof(kou_test_err));
    ck_assert_msg(rc == KOU_OK, "hello refused: %s", kou_test_err);

    ck_assert_uint_eq(kou_test_ms->n, 1);
    ck_assert_str_eq(kou_test_ms->mods[0].m->name, "hello");
    ck_assert_ptr_nonnull(kou_test_ms->mods[0].m->content);

    /* The route without the key got the schema's default. */
    node = kou_conf_get(kou_test_cf->routes[1].node, "greeting");
    ck_assert_ptr_nonnull(node);
    ck_assert_str_eq(node->value, "Hello, World!");

    /*
     * What each route will answer: hello's route state begins with the
     * greeting it sends as the body.
     */
    greeting = kou_modules_route_state(kou_test_ms, 0, 0);
    ck_assert_ptr_nonnull(greeting);
    ck_assert_uint_eq(greeting->n, 2);
    ck_assert_int_eq(memcmp(greeting->p, "Hi", 2), 0);

    greeting = kou_modules_route_state(kou_test_ms, 1, 0);
    ck_assert_ptr_nonnull(greeting);
    ck_assert_uint_eq(greeting->n, sizeof("Hello, World!") - 1);
    ck_assert_int_eq(memcmp(greeting->p, "Hello, World!", greeting->n), 0);
}
END_TEST

START_TEST(test_hello_unknown_route_key)
{
    char where[400];

    kou_test_config("hello", KOU_PLUGINS "hello.so",
                    "    greting: Hi\n");                   /* 8 */
    kou_test_load_fails();

    snprintf(where, sizeof(where), "%s:8:5:", kou_test_file);
    kou_test_says(where, "greting", NULL);
}
END_TEST

START_TEST(test_hello_wrong_type)
{
    char where[400];

    /* A string key given a mapping. */
    kou_test_config("hello", KOU_PLUGINS "hello.so",
                    "    greeting: { a: b }\n");            /* 8 */
    kou_test_load_fails();

    snprintf(where, sizeof(where), "%s:8:", kou_test_file);
    kou_test_says(where, "greeting", NULL);
}
END_TEST

static Suite *
kou_module_suite(void)
{
    Suite *s = suite_create("module");
    TCase *tc;

    tc = tcase_create("refused");
    tcase_add_checked_fixture(tc, kou_test_setup, kou_test_teardown);
    tcase_add_test(tc, test_bad_abi_major);
    tcase_add_test(tc, test_no_entry_symbol);
    tcase_add_test(tc, test_not_a_shared_object);
    tcase_add_test(tc, test_configure_fails);
    tcase_add_test(tc, test_hello_unknown_route_key);
    tcase_add_test(tc, test_hello_wrong_type);
    suite_add_tcase(s, tc);

    tc = tcase_create("loaded");
    tcase_add_checked_fixture(tc, kou_test_setup, kou_test_teardown);
    tcase_add_test(tc, test_hello_route_keys);
    suite_add_tcase(s, tc);

    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(kou_module_suite());
    int      failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
