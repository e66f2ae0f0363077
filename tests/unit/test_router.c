/*
 * Router: segment boundaries, longest match, hosts, methods, 404 / 405 and
 * Allow, and path normalisation.
 */

#include <check.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#include "http_parse.h"
#include "router.h"

#define M(id) ((uint32_t) 1 << (id))

static kou_str_t
kou_t_str(const char *s)
{
    kou_str_t r = { s, strlen(s) };

    return r;
}

/* Route table under test; tests fill it, kou_t_build() makes the router. */
static kou_route_t   kou_t_routes[16];
static size_t        kou_t_nroutes;
static kou_router_t *kou_t_rt;

static kou_route_t *
kou_t_route(const char *path, bool prefix, uint32_t methods)
{
    kou_route_t *r = &kou_t_routes[kou_t_nroutes];

    memset(r, 0, sizeof(*r));
    r->path = kou_t_str(path);
    r->prefix = prefix;
    r->methods = methods;
    r->index = kou_t_nroutes++;
    return r;
}

static void
kou_t_build(void)
{
    kou_t_rt = kou_router_create(kou_t_routes, kou_t_nroutes);
    ck_assert_ptr_nonnull(kou_t_rt);
}

static void
kou_t_setup(void)
{
    kou_t_nroutes = 0;
    kou_t_rt = NULL;
}

static void
kou_t_teardown(void)
{
    kou_router_free(kou_t_rt);
}

static const char *kou_t_known[] = {
    "", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
    "TRACE", "PATCH"
};

/* Method id as the parser would give it (case-sensitive). */
static unsigned
kou_t_method_id(const char *m)
{
    for (unsigned i = 1; i < kou_nelem(kou_t_known); i++) {
        if (strcmp(m, kou_t_known[i]) == 0) {
            return i;
        }
    }
    return KOU_METHOD_UNKNOWN;
}

/*
 * Match and return the status; *idx is the index of the route returned
 * (-1 when none).
 */
static int
kou_t_match(const char *host, const char *method, const char *path, int *idx)
{
    const kou_route_t *out = NULL;
    int                rc;

    rc = kou_router_match(kou_t_rt, kou_t_str(host), kou_t_str(path),
                          kou_t_str(method), kou_t_method_id(method), &out);
    *idx = out != NULL ? (int) out->index : -1;
    return rc;
}

/* The route index for a request that must succeed. */
static int
kou_t_ok(const char *host, const char *method, const char *path)
{
    int idx;

    ck_assert_int_eq(kou_t_match(host, method, path, &idx), KOU_OK);
    return idx;
}

static int
kou_t_status(const char *host, const char *method, const char *path)
{
    int idx;

    return kou_t_match(host, method, path, &idx);
}

/* The Allow value after a 405, as a C string. */
static const char *
kou_t_allow(const char *host, const char *method, const char *path)
{
    static char        buf[256];
    const kou_route_t *out = NULL;
    size_t             n;

    ck_assert_int_eq(kou_router_match(kou_t_rt, kou_t_str(host),
                                      kou_t_str(path), kou_t_str(method),
                                      kou_t_method_id(method), &out),
                     405);
    ck_assert_ptr_nonnull(out);
    n = kou_router_allow(kou_t_rt, kou_t_str(host), out, buf,
                         sizeof(buf) - 1);
    buf[n] = '\0';
    return buf;
}

/* ---- paths ---- */

START_TEST(test_prefix_segment_boundary)
{
    kou_t_route("/api", true, 0);
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("", "GET", "/api"), 0);
    ck_assert_int_eq(kou_t_ok("", "GET", "/api/"), 0);
    ck_assert_int_eq(kou_t_ok("", "GET", "/api/x/y"), 0);
    ck_assert_int_eq(kou_t_status("", "GET", "/apix"), 404);
    ck_assert_int_eq(kou_t_status("", "GET", "/ap"), 404);
    ck_assert_int_eq(kou_t_status("", "GET", "/API"), 404);
    ck_assert_int_eq(kou_t_status("", "GET", "/api%2Fx"), 404);
    ck_assert_int_eq(kou_t_status("", "GET", "/"), 404);
}
END_TEST

START_TEST(test_prefix_with_trailing_slash)
{
    kou_t_route("/api/", true, 0);
    kou_t_build();
    ck_assert_int_eq(kou_t_status("", "GET", "/api"), 404);
    ck_assert_int_eq(kou_t_ok("", "GET", "/api/"), 0);
    ck_assert_int_eq(kou_t_ok("", "GET", "/api/x"), 0);
    ck_assert_int_eq(kou_t_status("", "GET", "/apix"), 404);
}
END_TEST

START_TEST(test_exact_path)
{
    kou_t_route("/api", false, 0);
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("", "GET", "/api"), 0);
    ck_assert_int_eq(kou_t_status("", "GET", "/api/"), 404);
    ck_assert_int_eq(kou_t_status("", "GET", "/api/x"), 404);
    ck_assert_int_eq(kou_t_status("", "GET", "/apix"), 404);
}
END_TEST

START_TEST(test_longest_match_wins)
{
    kou_t_route("/", true, 0);                  /* 0: catch-all */
    kou_t_route("/api", true, 0);               /* 1 */
    kou_t_route("/api/v1/status", false, 0);    /* 2 */
    kou_t_route("/api/v1", true, 0);            /* 3: later, but longer */
    kou_t_route("/", false, 0);                 /* 4: exact root */
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("", "GET", "/api/v1/status"), 2);
    ck_assert_int_eq(kou_t_ok("", "GET", "/api/v1/status/x"), 3);
    ck_assert_int_eq(kou_t_ok("", "GET", "/api/v1"), 3);
    ck_assert_int_eq(kou_t_ok("", "GET", "/api/v10"), 1);
    ck_assert_int_eq(kou_t_ok("", "GET", "/api"), 1);
    ck_assert_int_eq(kou_t_ok("", "GET", "/apix"), 0);
    ck_assert_int_eq(kou_t_ok("", "GET", "/anything/else"), 0);
    /* Same path "/": config order, the prefix came first. */
    ck_assert_int_eq(kou_t_ok("", "GET", "/"), 0);
}
END_TEST

START_TEST(test_same_path_config_order)
{
    kou_route_t *a, *b;

    /* Array order differs from config order: index decides. */
    a = kou_t_route("/x", true, 0);
    b = kou_t_route("/x", true, 0);
    a->index = 7;
    b->index = 3;
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("", "GET", "/x"), 3);
}
END_TEST

START_TEST(test_no_routes_404)
{
    kou_t_build();
    ck_assert_int_eq(kou_t_status("", "GET", "/"), 404);
    ck_assert_int_eq(kou_router_knows_method(kou_t_rt, kou_t_str("PURGE")),
                     false);
}
END_TEST

/* ---- methods ---- */

START_TEST(test_405_with_allow)
{
    kou_t_route("/x", false, M(KOU_METHOD_POST) | M(KOU_METHOD_GET));
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("", "GET", "/x"), 0);
    ck_assert_int_eq(kou_t_ok("", "POST", "/x"), 0);
    ck_assert_int_eq(kou_t_ok("", "HEAD", "/x"), 0);  /* GET brings HEAD */
    ck_assert_int_eq(kou_t_status("", "DELETE", "/x"), 405);
    ck_assert_str_eq(kou_t_allow("", "DELETE", "/x"), "GET, HEAD, POST");
    ck_assert_str_eq(kou_t_allow("", "get", "/x"), "GET, HEAD, POST");
    ck_assert_int_eq(kou_t_status("", "DELETE", "/y"), 404);
}
END_TEST

START_TEST(test_head_alone_does_not_allow_get)
{
    kou_t_route("/h", false, M(KOU_METHOD_HEAD));
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("", "HEAD", "/h"), 0);
    ck_assert_str_eq(kou_t_allow("", "GET", "/h"), "HEAD");
}
END_TEST

START_TEST(test_method_union_same_path)
{
    kou_t_route("/x", false, M(KOU_METHOD_GET));             /* 0 */
    kou_t_route("/x", false, M(KOU_METHOD_DELETE));          /* 1 */
    kou_t_route("/x", false, M(KOU_METHOD_PUT));             /* 2 */
    kou_t_route("/", true, M(KOU_METHOD_PATCH));             /* 3 */
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("", "GET", "/x"), 0);
    ck_assert_int_eq(kou_t_ok("", "DELETE", "/x"), 1);
    ck_assert_int_eq(kou_t_ok("", "PUT", "/x"), 2);
    /* The longest path decides; "/" allowing PATCH does not help. */
    ck_assert_str_eq(kou_t_allow("", "PATCH", "/x"), "GET, HEAD, PUT, DELETE");
    ck_assert_int_eq(kou_t_ok("", "PATCH", "/y"), 3);
}
END_TEST

START_TEST(test_allow_exact_vs_prefix_same_path)
{
    kou_t_route("/a", true, M(KOU_METHOD_GET));     /* 0 */
    kou_t_route("/a", false, M(KOU_METHOD_POST));   /* 1 */
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("", "POST", "/a"), 1);
    ck_assert_int_eq(kou_t_ok("", "GET", "/a"), 0);
    ck_assert_int_eq(kou_t_status("", "POST", "/a/b"), 405);
    /* On /a both routes apply; on /a/b only the prefix. */
    ck_assert_str_eq(kou_t_allow("", "PUT", "/a"), "GET, HEAD, POST");
    ck_assert_str_eq(kou_t_allow("", "PUT", "/a/b"), "GET, HEAD");
}
END_TEST

START_TEST(test_unknown_methods_named)
{
    static kou_str_t names[] = { KOU_STR("PURGE"), KOU_STR("MKCOL") };
    static kou_str_t names2[] = { KOU_STR("PURGE"), KOU_STR("LOCK") };
    kou_route_t     *r;

    r = kou_t_route("/cache", true, M(KOU_METHOD_GET));      /* 0 */
    r->method_names = names;
    r->nmethod_names = 2;
    r = kou_t_route("/cache", true, 0);                      /* 1 */
    r->method_names = names2;
    r->nmethod_names = 2;
    kou_t_route("/open", true, 0);                           /* 2 */
    kou_t_build();

    ck_assert(kou_router_knows_method(kou_t_rt, kou_t_str("PURGE")));
    ck_assert(kou_router_knows_method(kou_t_rt, kou_t_str("LOCK")));
    ck_assert(!kou_router_knows_method(kou_t_rt, kou_t_str("purge")));
    ck_assert(!kou_router_knows_method(kou_t_rt, kou_t_str("PURG")));
    ck_assert(!kou_router_knows_method(kou_t_rt, kou_t_str("FOO")));

    ck_assert_int_eq(kou_t_ok("", "PURGE", "/cache/x"), 0);
    ck_assert_int_eq(kou_t_ok("", "MKCOL", "/cache/x"), 0);
    ck_assert_int_eq(kou_t_ok("", "LOCK", "/cache/x"), 1);
    ck_assert_int_eq(kou_t_ok("", "GET", "/cache/x"), 0);
    /* Methods are case-sensitive; route 1 names only unknown methods. */
    ck_assert_int_eq(kou_t_status("", "purge", "/cache/x"), 405);
    ck_assert_str_eq(kou_t_allow("", "POST", "/cache/x"),
                     "GET, HEAD, PURGE, MKCOL, LOCK");
    /* A route with no method set takes any method, unknown ones too. */
    ck_assert_int_eq(kou_t_ok("", "FOO", "/open"), 2);
    ck_assert_int_eq(kou_t_ok("", "DELETE", "/open"), 2);
}
END_TEST

START_TEST(test_allow_truncated_at_whole_names)
{
    const kou_route_t *out;
    char               buf[16];
    size_t             n;

    kou_t_route("/x", false, M(KOU_METHOD_GET) | M(KOU_METHOD_OPTIONS));
    kou_t_build();
    ck_assert_int_eq(kou_router_match(kou_t_rt, kou_t_str(""),
                                      kou_t_str("/x"), kou_t_str("PUT"),
                                      KOU_METHOD_PUT, &out),
                     405);
    memset(buf, '#', sizeof(buf));
    n = kou_router_allow(kou_t_rt, kou_t_str(""), out, buf, 12);
    ck_assert_uint_le(n, 12);
    ck_assert_int_eq((int) n, 9);
    ck_assert(memcmp(buf, "GET, HEAD", 9) == 0);
    ck_assert_int_eq(buf[12], '#');
    n = kou_router_allow(kou_t_rt, kou_t_str(""), out, buf, sizeof(buf));
    ck_assert_int_eq((int) n, 9);
    n = kou_router_allow(kou_t_rt, kou_t_str(""), out, buf, 0);
    ck_assert_int_eq((int) n, 0);
}
END_TEST

/* ---- hosts ---- */

START_TEST(test_host_exact)
{
    static kou_str_t hosts[] = { KOU_STR("example.com") };
    kou_route_t     *r;

    r = kou_t_route("/h", false, 0);
    r->hosts = hosts;
    r->nhosts = 1;
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("example.com", "GET", "/h"), 0);
    ck_assert_int_eq(kou_t_ok("EXAMPLE.Com", "GET", "/h"), 0);
    ck_assert_int_eq(kou_t_ok("example.com.", "GET", "/h"), 0);
    ck_assert_int_eq(kou_t_status("www.example.com", "GET", "/h"), 404);
    ck_assert_int_eq(kou_t_status("example.co", "GET", "/h"), 404);
    ck_assert_int_eq(kou_t_status("example.comm", "GET", "/h"), 404);
    ck_assert_int_eq(kou_t_status("", "GET", "/h"), 404);
}
END_TEST

START_TEST(test_host_wildcard)
{
    static kou_str_t hosts[] = { KOU_STR("*.example.org"),
                                 KOU_STR("other.net") };
    kou_route_t     *r;

    r = kou_t_route("/w", true, 0);
    r->hosts = hosts;
    r->nhosts = 2;
    kou_t_build();
    ck_assert_int_eq(kou_t_ok("a.example.org", "GET", "/w"), 0);
    ck_assert_int_eq(kou_t_ok("a.b.Example.ORG", "GET", "/w"), 0);
    ck_assert_int_eq(kou_t_ok("other.net", "GET", "/w"), 0);
    ck_assert_int_eq(kou_t_status("example.org", "GET", "/w"), 404);
    ck_assert_int_eq(kou_t_status(".example.org", "GET", "/w"), 404);
    ck_assert_int_eq(kou_t_status("aexample.org", "GET", "/w"), 404);
    ck_assert_int_eq(kou_t_status("a.example.org.evil", "GET", "/w"), 404);
    ck_assert_int_eq(kou_t_status("", "GET", "/w"), 404);
}
END_TEST

START_TEST(test_host_selects_route_and_allow)
{
    static kou_str_t h1[] = { KOU_STR("a.test") };
    static kou_str_t h2[] = { KOU_STR("*.b.test") };
    kou_route_t     *r;

    r = kou_t_route("/p", true, M(KOU_METHOD_GET));          /* 0 */
    r->hosts = h1;
    r->nhosts = 1;
    r = kou_t_route("/p", true, M(KOU_METHOD_POST));         /* 1 */
    r->hosts = h2;
    r->nhosts = 1;
    kou_t_route("/p", true, M(KOU_METHOD_PUT));              /* 2: any */
    kou_t_route("/", true, 0);                               /* 3 */
    r = kou_t_route("/only", false, 0);                      /* 4 */
    r->hosts = h1;
    r->nhosts = 1;
    kou_t_build();

    ck_assert_int_eq(kou_t_ok("a.test", "GET", "/p/1"), 0);
    ck_assert_int_eq(kou_t_ok("x.b.test", "POST", "/p/1"), 1);
    ck_assert_int_eq(kou_t_ok("x.b.test", "PUT", "/p/1"), 2);
    ck_assert_str_eq(kou_t_allow("a.test", "POST", "/p"), "GET, HEAD, PUT");
    ck_assert_str_eq(kou_t_allow("x.b.test", "GET", "/p"), "POST, PUT");
    ck_assert_str_eq(kou_t_allow("c.test", "GET", "/p"), "PUT");
    /* A host that no route of a path takes falls through to shorter ones. */
    ck_assert_int_eq(kou_t_ok("a.test", "GET", "/only"), 4);
    ck_assert_int_eq(kou_t_ok("c.test", "GET", "/only"), 3);
}
END_TEST

/* ---- normalisation ---- */

typedef struct {
    const char *in;
    int         rc;
    const char *out;
} kou_t_norm_t;

static const kou_t_norm_t kou_t_norms[] = {
    { "/", KOU_OK, "/" },
    { "/a/b", KOU_OK, "/a/b" },
    { "/%41", KOU_OK, "/A" },
    { "/%7e%7E", KOU_OK, "/~~" },
    { "/%25", KOU_OK, "/%25" },
    { "/100%25", KOU_OK, "/100%25" },
    { "/%25%2f", KOU_OK, "/%25%2F" },
    { "/a%252F", KOU_OK, "/a%252F" },
    { "/a%252f", KOU_OK, "/a%252f" },
    { "/a%2525", KOU_OK, "/a%2525" },
    { "/a%25%", 400, NULL },
    { "/a%2fb", KOU_OK, "/a%2Fb" },
    { "/a%2Fb", KOU_OK, "/a%2Fb" },
    { "/a/..%2fb", KOU_OK, "/a/..%2Fb" },
    { "/%00", 400, NULL },
    { "/a%00b", 400, NULL },
    { "/%zz", 400, NULL },
    { "/%4", 400, NULL },
    { "/%", 400, NULL },
    { "/a%g1", 400, NULL },
    { "/a%1g", 400, NULL },
    { "", 400, NULL },
    { "a/b", 400, NULL },
    { "%2Fa", 400, NULL },
    { "/a/./b", KOU_OK, "/a/b" },
    { "/a/../b", KOU_OK, "/b" },
    { "/a/b/../c/./d", KOU_OK, "/a/c/d" },
    { "/../", 400, NULL },
    { "/..", 400, NULL },
    { "/../a", 400, NULL },
    { "/a/../..", 400, NULL },
    { "/a/b/../../../c", 400, NULL },
    { "/%2e%2e/", 400, NULL },
    { "/a/%2E%2e/b", KOU_OK, "/b" },
    { "/a/.%2e", KOU_OK, "/" },
    { "/a/%2e/b", KOU_OK, "/a/b" },
    { "/a%2e%2e/", KOU_OK, "/a../" },
    { "/a/%2e%2e/", KOU_OK, "/" },
    { "/a/%25/%2e%2e/b", KOU_OK, "/a/b" },
    { "/a/%252e%252e/b", KOU_OK, "/a/%252e%252e/b" },
    { "/a/%25%2e/b", KOU_OK, "/a/%25./b" },
    { "/a/.", KOU_OK, "/a/" },
    { "/a/..", KOU_OK, "/" },
    { "/a/b/..", KOU_OK, "/a/" },
    { "/.", KOU_OK, "/" },
    { "/./", KOU_OK, "/" },
    { "/a/./", KOU_OK, "/a/" },
    { "/a//b", KOU_OK, "/a//b" },
    { "//", KOU_OK, "//" },
    { "/a//../b", KOU_OK, "/a/b" },
    { "//..", KOU_OK, "/" },
    { "/a/.../b", KOU_OK, "/a/.../b" },
    { "/a/.b/..c", KOU_OK, "/a/.b/..c" },
    { "/a./b..", KOU_OK, "/a./b.." },
    { "/hello", KOU_OK, "/hello" },
    { "/static/style.min.css", KOU_OK, "/static/style.min.css" },
    { "/a/b.", KOU_OK, "/a/b." },
};

/* Paths the shortcut must take (kou_t_norms checks it is right to). */
START_TEST(test_normal_paths_skip_the_copy)
{
    static const char *const normal[] = {
        "/", "/hello", "/a//b", "/static/style.min.css", "/a./b..", "/a/b."
    };
    static const char *const not_normal[] = {
        "", "hello", "/.", "/a/.b", "/a/..", "/%41", "/a%2Fb"
    };

    for (size_t i = 0; i < kou_nelem(normal); i++) {
        ck_assert_msg(kou_path_is_normal((const u_char *) normal[i],
                                         strlen(normal[i])), "%s", normal[i]);
    }
    for (size_t i = 0; i < kou_nelem(not_normal); i++) {
        ck_assert_msg(!kou_path_is_normal((const u_char *) not_normal[i],
                                          strlen(not_normal[i])),
                      "%s", not_normal[i]);
    }
}
END_TEST

START_TEST(test_normalize_cases)
{
    const kou_t_norm_t *t = &kou_t_norms[_i];
    size_t              n = strlen(t->in), len = 0;
    u_char             *src, *dst;
    int                 rc;

    /* Exact-size buffers: an over-read or over-write shows under ASan. */
    src = malloc(n + 1);
    dst = malloc(n + 1);
    ck_assert_ptr_nonnull(src);
    ck_assert_ptr_nonnull(dst);
    memcpy(src, t->in, n);
    rc = kou_path_normalize(src, n, dst, &len);
    ck_assert_msg(rc == t->rc, "%s: rc %d, want %d", t->in, rc, t->rc);
    /* the shortcut may only claim a path that normalises to itself */
    if (kou_path_is_normal(src, n)) {
        ck_assert_msg(rc == KOU_OK && len == n && memcmp(dst, src, n) == 0,
                      "%s: kou_path_is_normal, but it changes", t->in);
    }
    if (t->rc == KOU_OK) {
        ck_assert_msg(len == strlen(t->out)
                          && memcmp(dst, t->out, len) == 0,
                      "%s: got \"%.*s\", want \"%s\"", t->in, (int) len,
                      (const char *) dst, t->out);
    }
    free(src);
    free(dst);
}
END_TEST

/*
 * Every escape, in both cases of hex digit: it decodes to its byte, except
 * that a '/' or a '%' comes out as "%2F" or "%25" (so a '%' in the result
 * always starts one of those two) and a NUL is refused.
 */
START_TEST(test_normalize_every_escape)
{
    static const char hex[] = "0123456789abcdef";

    for (unsigned v = 0; v < 256; v++) {
        for (int upper = 0; upper < 2; upper++) {
            u_char src[6], dst[6];
            size_t len = 0;
            int    rc;

            src[0] = '/';
            src[1] = 'x';
            src[2] = '%';
            src[3] = (u_char) (upper ? toupper(hex[v >> 4]) : hex[v >> 4]);
            src[4] = (u_char) (upper ? toupper(hex[v & 15]) : hex[v & 15]);
            src[5] = 'y';
            rc = kou_path_normalize(src, sizeof(src), dst, &len);

            if (v == 0) {
                ck_assert_int_eq(rc, 400);
                continue;
            }
            ck_assert_msg(rc == KOU_OK, "%%%02x: rc %d", v, rc);
            if (v == '/' || v == '%') {
                ck_assert_uint_eq(len, 6);
                ck_assert_int_eq(memcmp(dst, v == '/' ? "/x%2Fy" : "/x%25y",
                                        6), 0);
            } else {
                ck_assert_uint_eq(len, 4);
                ck_assert_int_eq(memcmp(dst, "/x", 2), 0);
                ck_assert_uint_eq(dst[2], v);
                ck_assert_uint_eq(dst[3], 'y');
            }
        }
    }
}
END_TEST

START_TEST(test_normalize_then_route)
{
    static const struct {
        const char *raw;
        int         status;
        int         route;
    } cases[] = {
        { "/api/x", KOU_OK, 0 },
        { "/api/../apix", 404, -1 },
        { "/api%2Fx", 404, -1 },
        { "/%61pi/x", KOU_OK, 0 },
        { "/api/%2e%2e/admin/", KOU_OK, 1 },
        { "/admin/./", KOU_OK, 1 },
        { "/100%25", KOU_OK, 2 },
        { "/100%2525", 404, -1 },
        { "/%31%30%30%25", KOU_OK, 2 },
    };

    kou_t_route("/api", true, 0);
    kou_t_route("/admin/", true, 0);
    kou_t_route("/100%25", false, 0);
    kou_t_build();
    for (size_t i = 0; i < kou_nelem(cases); i++) {
        u_char buf[64];
        size_t len;
        int    idx;
        char   path[64];

        ck_assert_int_eq(kou_path_normalize((const u_char *) cases[i].raw,
                                            strlen(cases[i].raw), buf, &len),
                         KOU_OK);
        snprintf(path, sizeof(path), "%.*s", (int) len, (char *) buf);
        ck_assert_int_eq(kou_t_match("", "GET", path, &idx),
                         cases[i].status);
        if (cases[i].status == KOU_OK) {
            ck_assert_int_eq(idx, cases[i].route);
        }
    }
}
END_TEST

static Suite *
kou_router_suite(void)
{
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("match");
    TCase *tn = tcase_create("normalize");

    tcase_add_checked_fixture(tc, kou_t_setup, kou_t_teardown);
    tcase_add_test(tc, test_prefix_segment_boundary);
    tcase_add_test(tc, test_prefix_with_trailing_slash);
    tcase_add_test(tc, test_exact_path);
    tcase_add_test(tc, test_longest_match_wins);
    tcase_add_test(tc, test_same_path_config_order);
    tcase_add_test(tc, test_no_routes_404);
    tcase_add_test(tc, test_405_with_allow);
    tcase_add_test(tc, test_head_alone_does_not_allow_get);
    tcase_add_test(tc, test_method_union_same_path);
    tcase_add_test(tc, test_allow_exact_vs_prefix_same_path);
    tcase_add_test(tc, test_unknown_methods_named);
    tcase_add_test(tc, test_allow_truncated_at_whole_names);
    tcase_add_test(tc, test_host_exact);
    tcase_add_test(tc, test_host_wildcard);
    tcase_add_test(tc, test_host_selects_route_and_allow);
    tcase_add_test(tc, test_normalize_then_route);
    suite_add_tcase(s, tc);

    tcase_add_loop_test(tn, test_normalize_cases, 0,
                        (int) kou_nelem(kou_t_norms));
    tcase_add_test(tn, test_normalize_every_escape);
    tcase_add_test(tn, test_normal_paths_skip_the_copy);
    suite_add_tcase(s, tn);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(kou_router_suite());
    int      failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
