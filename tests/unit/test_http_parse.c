/*
 * The HTTP/1.1 request parser and chunked decoder against RFC 9110 and
 * RFC 9112 (DESIGN §3 says which input gets which status), in every tier
 * this CPU can run.
 *
 * Every case is parsed three ways: whole, byte by byte (the buffer growing
 * one byte at a time), and split in two at every offset. Each buffer ends
 * flush against a PROT_NONE page, so an over-read crashes (and once starts
 * right after one, so that reading before the buffer crashes too), and
 * sits at a new address on every call, so a parser that kept pointers
 * across calls fails. The three ways must agree on the status and on every
 * slice, compared by offset, and every tier must give what the scalar tier
 * gives. The cases are a table, the same shapes at every length from 1 to
 * 200 bytes (so that every vector boundary falls everywhere), and
 * mutations of valid requests from a seeded generator (KOU_TEST_SEED
 * overrides the seed, which is printed). The kernels are also compared
 * with the scalar ones directly, on random bytes.
 */

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kou_build.h"
#include "http_parse.h"
#include "http_parse_kernel.h"

/*
 * Check records every passing ck_assert (a write per call); the loops here
 * assert millions of times, so they only call into Check on failure.
 */
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            ck_abort_msg(__VA_ARGS__);                                       \
        }                                                                    \
    } while (0)

/* ---- guard pages ---- */

#define ARENA (256 * 1024)  /* readable bytes between two guard pages */

static u_char *arena;

static void
guard_setup(void)
{
    long    pg = sysconf(_SC_PAGESIZE);
    u_char *m;

    m = mmap(NULL, ARENA + 2 * (size_t) pg, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert(m != MAP_FAILED);
    ck_assert_int_eq(mprotect(m, (size_t) pg, PROT_NONE), 0);
    ck_assert_int_eq(mprotect(m + pg + ARENA, (size_t) pg, PROT_NONE), 0);
    arena = m + pg;
}

/* Copy n bytes so that they end at the guard page; returns their start. */
static const u_char *
flush(const void *s, size_t n)
{
    u_char *d = arena + ARENA - n;

    CHECK(n <= ARENA, "input of %zu bytes too large", n);
    memmove(d, s, n);
    return d;
}

/*
 * Copy n bytes so that they start right after a guard page: a kernel that
 * read before the buffer it was given would crash here.
 */
static const u_char *
flush_front(const void *s, size_t n)
{
    CHECK(n <= ARENA, "input of %zu bytes too large", n);
    memmove(arena, s, n);
    return arena;
}

/* A printable rendering of an input, for failure messages. */
static const char *
show(const char *in, size_t n)
{
    static char out[512];
    size_t      o = 0, i;

    for (i = 0; i < n && o < sizeof(out) - 8; i++) {
        u_char c = (u_char) in[i];
        if (c == '\r') {
            o += (size_t) snprintf(out + o, sizeof(out) - o, "\\r");
        } else if (c == '\n') {
            o += (size_t) snprintf(out + o, sizeof(out) - o, "\\n");
        } else if (c < 0x20 || c >= 0x7f || c == '\\') {
            o += (size_t) snprintf(out + o, sizeof(out) - o, "\\x%02x", c);
        } else {
            out[o++] = (char) c;
        }
    }
    out[o] = '\0';
    return out;
}

/* ---- tiers ---- */

/*
 * A tier as the tests run it. The AVX-512 tier takes its VBMI kernels when
 * the CPU has VBMI; the kernels without are then run as a variant of their
 * own, so that both are tested on such a CPU.
 */
typedef struct {
    const char               *name;
    unsigned                  tier;
    const kou_http_kernels_t *k;     /* NULL: what set_tier chooses */
} variant_t;

static variant_t variants[KOU_SIMD_COUNT + 1];
static size_t    nvariants;

/* Called once in main(); the forked tests inherit the list. */
static void
variants_setup(void)
{
    static const variant_t all[] = {
        { "scalar", KOU_SIMD_SCALAR, NULL },
        { "sse42", KOU_SIMD_SSE42, NULL },
        { "avx2", KOU_SIMD_AVX2, NULL },
#ifdef KOU_HAVE_X86_TIERS
        { "avx512-novbmi", KOU_SIMD_AVX512, &kou_http_kernels_avx512 },
#endif
        { "avx512", KOU_SIMD_AVX512, NULL },
    };
    size_t i;

    nvariants = 0;
    for (i = 0; i < kou_nelem(all); i++) {
        if (!kou_http_parser_tier_available(all[i].tier)) {
            printf("http_parse: tier %s not available here, skipped\n",
                   all[i].name);
            continue;
        }
        variants[nvariants++] = all[i];
    }
    printf("http_parse: tiers tested:");
    for (i = 0; i < nvariants; i++) {
        printf(" %s", variants[i].name);
    }
    printf("\n");
}

static void
use_variant(size_t v)
{
    CHECK(kou_http_parser_set_tier(variants[v].tier) == KOU_OK,
          "tier %s cannot be set", variants[v].name);
    if (variants[v].k != NULL) {
        kou_http_kernels = variants[v].k;
        kou_http_head = variants[v].k->head;
    }
}

/* ---- the request table ---- */

#define MAXH 40

#define F_CHUNKED 0x01u
#define F_CLOSE   0x02u
#define F_KA      0x04u
#define F_UPGRADE 0x08u
#define F_EXPECT  0x10u
#define F_CL      0x20u   /* content_length is .cl, not -1 */

typedef struct {
    const char *in;
    size_t      len;
    int         rc;         /* KOU_OK (0), KOU_AGAIN or a status */
    /* for KOU_OK: the parse; NULL strings mean "" */
    unsigned    mid;
    const char *m, *t, *path, *q, *host, *port;
    unsigned    form;
    unsigned    ver;
    size_t      nh;
    int64_t     cl;
    unsigned    f;
    const char *hn, *hv;    /* a field that must be there with this value */
    size_t      head;       /* head_len when the input goes on after it */
    /* limits; 0 takes the default */
    size_t      rl, hb, mh;
} hcase_t;

#define IN(s) .in = (s), .len = sizeof(s) - 1

/* the common accepted shapes */
#define GET_ROOT(nh_) \
    .mid = KOU_METHOD_GET, .m = "GET", .t = "/", .path = "/", .host = "h", \
    .ver = 11, .nh = (nh_)
#define GET_ROOT10(nh_) \
    .mid = KOU_METHOD_GET, .m = "GET", .t = "/", .path = "/", .ver = 10, \
    .nh = (nh_)
#define POST_ROOT(nh_) \
    .mid = KOU_METHOD_POST, .m = "POST", .t = "/", .path = "/", \
    .host = "h", .ver = 11, .nh = (nh_)

#define RQ   "GET / HTTP/1.1\r\nHost: h\r\n"
#define RQ10 "GET / HTTP/1.0\r\n"
#define PQ   "POST / HTTP/1.1\r\nHost: h\r\n"

static const hcase_t hcases[] = {
    /* ---- request line, methods (RFC 9112 §3, RFC 9110 §9) ---- */
    { IN(RQ "\r\n"), GET_ROOT(1), .hn = "Host", .hv = "h" },
    { IN("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_HEAD,
      .m = "HEAD", .t = "/", .path = "/", .host = "h", .ver = 11, .nh = 1 },
    { IN("POST /p HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_POST,
      .m = "POST", .t = "/p", .path = "/p", .host = "h", .ver = 11,
      .nh = 1 },
    { IN("PUT /p HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_PUT,
      .m = "PUT", .t = "/p", .path = "/p", .host = "h", .ver = 11, .nh = 1 },
    { IN("DELETE /p HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_DELETE,
      .m = "DELETE", .t = "/p", .path = "/p", .host = "h", .ver = 11,
      .nh = 1 },
    { IN("OPTIONS /p HTTP/1.1\r\nHost: h\r\n\r\n"),
      .mid = KOU_METHOD_OPTIONS, .m = "OPTIONS", .t = "/p", .path = "/p",
      .host = "h", .ver = 11, .nh = 1 },
    { IN("TRACE /p HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_TRACE,
      .m = "TRACE", .t = "/p", .path = "/p", .host = "h", .ver = 11,
      .nh = 1 },
    { IN("PATCH /p HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_PATCH,
      .m = "PATCH", .t = "/p", .path = "/p", .host = "h", .ver = 11,
      .nh = 1 },
    /* methods are case-sensitive: a valid token the server does not know */
    { IN("get / HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_UNKNOWN,
      .m = "get", .t = "/", .path = "/", .host = "h", .ver = 11, .nh = 1 },
    { IN("Get / HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_UNKNOWN,
      .m = "Get", .t = "/", .path = "/", .host = "h", .ver = 11, .nh = 1 },
    { IN("GETS / HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_UNKNOWN,
      .m = "GETS", .t = "/", .path = "/", .host = "h", .ver = 11, .nh = 1 },
    { IN("PURGE /f HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_UNKNOWN,
      .m = "PURGE", .t = "/f", .path = "/f", .host = "h", .ver = 11,
      .nh = 1 },
    { IN("M-SEARCH / HTTP/1.1\r\nHost: h\r\n\r\n"),
      .mid = KOU_METHOD_UNKNOWN, .m = "M-SEARCH", .t = "/", .path = "/",
      .host = "h", .ver = 11, .nh = 1 },
    { IN("!#$%&'*+-.^_`|~9Zz / HTTP/1.1\r\nHost: h\r\n\r\n"),
      .mid = KOU_METHOD_UNKNOWN, .m = "!#$%&'*+-.^_`|~9Zz", .t = "/",
      .path = "/", .host = "h", .ver = 11, .nh = 1 },
    { IN("G(T / HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GE T / HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("G/T / HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("G:T / HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("{GET} / HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("G\"T / HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("G\0ET / HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("G\xc3\x89T / HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN(" GET / HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET\t/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET\f/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET\r/ HTTP/1.0\r\n\r\n"), .rc = 400 },

    /* exactly one SP between the three parts */
    { IN("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /  HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0 x\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /\r\n\r\n"), .rc = 400 },
    { IN("GET / \r\n\r\n"), .rc = 400 },
    { IN("GET\r\n\r\n"), .rc = 400 },
    { IN("GET /a b/ HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },

    /* one empty line may precede the request line (RFC 9112 §2.2) */
    { IN("\r\n" RQ "\r\n"), GET_ROOT(1) },
    { IN("\r\n\r\n" RQ "\r\n"), .rc = 400 },
    { IN("\n" RQ "\r\n"), .rc = 400 },
    { IN("\r" RQ "\r\n"), .rc = 400 },
    { IN("\r\n"), .rc = KOU_AGAIN },

    /* ---- version (RFC 9112 §2.3, RFC 9110 §2.5, §15.6.6) ---- */
    { IN(RQ10 "\r\n"), GET_ROOT10(0) },
    { IN("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), GET_ROOT(1) },
    { IN("GET / HTTP/1.9\r\nHost: h\r\n\r\n"), GET_ROOT(1) },
    { IN("GET / HTTP/1.2\r\n\r\n"), .rc = 400 },   /* served as 1.1 */
    { IN("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), .rc = 505 },
    { IN("GET / HTTP/3.0\r\nHost: h\r\n\r\n"), .rc = 505 },
    { IN("GET / HTTP/0.9\r\n\r\n"), .rc = 505 },
    { IN("GET / HTTP/9.9\r\n\r\n"), .rc = 505 },
    /* 505 is decided on the request line, before any field */
    { IN("GET / HTTP/2.0\r\nBad Field\r\n\r\n"), .rc = 505 },
    /* a malformed line is 400 even when its version is unsupported */
    { IN("G(T / HTTP/2.0\r\n\r\n"), .rc = 400 },
    { IN("GET /# HTTP/2.0\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.10\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/10.0\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / http/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / Http/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1,1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/a.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTT/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET / ICE/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET / RTSP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET / IHTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\0\r\n\r\n"), .rc = 400 },

    /* ---- line ends: CRLF only (RFC 9112 §2.2) ---- */
    { IN("GET / HTTP/1.0\n\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h\r\n\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\rHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\r"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h\r\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h\r\n\r\r"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: a\r\n\rZGET /e HTTP/1.1\r\n\r\n"),
      .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h\r\nFoo: 1\rBar: 2\r\n\r\n"), .rc = 400 },
    { IN("POST / HTTP/1.1\r\nHost: h\r\nx:x\nTransfer-Encoding: chunked"
         "\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h\r\nDummy: x\nContent-Length: 23\r\n\r\n"),
      .rc = 400 },

    /* ---- request-target: origin-form (RFC 9112 §3.2.1, RFC 3986) ---- */
    { IN("GET /a/b/c HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "/a/b/c", .path = "/a/b/c", .host = "h", .ver = 11,
      .nh = 1 },
    { IN("GET /a?b=c&d HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "/a?b=c&d", .path = "/a", .q = "b=c&d", .host = "h",
      .ver = 11, .nh = 1 },
    { IN("GET /? HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "/?", .path = "/", .host = "h", .ver = 11, .nh = 1 },
    { IN("GET /a??b/c?d HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "/a??b/c?d", .path = "/a", .q = "?b/c?d", .host = "h",
      .ver = 11, .nh = 1 },
    { IN("GET //x// HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "//x//", .path = "//x//", .host = "h", .ver = 11,
      .nh = 1 },
    { IN("GET /%41%2f%2F?%20%7e HTTP/1.1\r\nHost: h\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "/%41%2f%2F?%20%7e",
      .path = "/%41%2f%2F", .q = "%20%7e", .host = "h", .ver = 11, .nh = 1 },
    { IN("GET /!$&'()*+,;=:@-._~ HTTP/1.1\r\nHost: h\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "/!$&'()*+,;=:@-._~",
      .path = "/!$&'()*+,;=:@-._~", .host = "h", .ver = 11, .nh = 1 },
    { IN("GET /test.cgi?foo=bar?baz HTTP/1.1\r\nHost: h\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "/test.cgi?foo=bar?baz",
      .path = "/test.cgi", .q = "foo=bar?baz", .host = "h", .ver = 11,
      .nh = 1 },
    { IN("GET /%4 HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /%4G HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /% HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /%%41 HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /?%zz HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /?a% HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /#frag HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET /a?b#c HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /with_\"quotes\" HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /a<b> HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /a\\b HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /a^b HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /a`b HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /{a} HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /?query=| HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /[a] HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET /\x01 HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET /\0 HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET /\x7f HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET /\xce\xb4 HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },

    /* ---- absolute-form (RFC 9112 §3.2.2, RFC 9110 §4.2) ---- */
    { IN("GET http://example.com/a?b HTTP/1.1\r\nHost: x\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "http://example.com/a?b",
      .path = "/a", .q = "b", .host = "example.com",
      .form = KOU_TARGET_ABSOLUTE, .ver = 11, .nh = 1 },
    { IN("GET HTTP://Example.COM:8080 HTTP/1.1\r\nHost: x\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "HTTP://Example.COM:8080",
      .path = "/", .host = "Example.COM", .port = "8080",
      .form = KOU_TARGET_ABSOLUTE, .ver = 11, .nh = 1 },
    { IN("GET https://h/ HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "https://h/", .path = "/", .host = "h",
      .form = KOU_TARGET_ABSOLUTE, .ver = 11, .nh = 1 },
    { IN("GET http://hypnotoad.org?hail=all HTTP/1.1\r\nHost: x\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "http://hypnotoad.org?hail=all",
      .path = "/", .q = "hail=all", .host = "hypnotoad.org",
      .form = KOU_TARGET_ABSOLUTE, .ver = 11, .nh = 1 },
    { IN("GET http://h: HTTP/1.0\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "http://h:", .path = "/", .host = "h",
      .form = KOU_TARGET_ABSOLUTE, .ver = 10 },
    /* the target names the host; Host is checked but not used */
    { IN("GET http://foo:81/ HTTP/1.0\r\nHost: bar\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "http://foo:81/", .path = "/",
      .host = "foo", .port = "81", .form = KOU_TARGET_ABSOLUTE, .ver = 10,
      .nh = 1 },
    { IN("GET http://[::1]:8080/x HTTP/1.1\r\nHost:\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "http://[::1]:8080/x",
      .path = "/x", .host = "[::1]", .port = "8080",
      .form = KOU_TARGET_ABSOLUTE, .ver = 11, .nh = 1 },
    { IN("GET http://[v1.fe80::a+en1]/ HTTP/1.0\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "http://[v1.fe80::a+en1]/",
      .path = "/", .host = "[v1.fe80::a+en1]", .form = KOU_TARGET_ABSOLUTE,
      .ver = 10 },
    { IN("GET http://127.0.0.1/ HTTP/1.0\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "http://127.0.0.1/", .path = "/", .host = "127.0.0.1",
      .form = KOU_TARGET_ABSOLUTE, .ver = 10 },
    { IN("GET http://foo_bar/ HTTP/1.0\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "http://foo_bar/", .path = "/", .host = "foo_bar",
      .form = KOU_TARGET_ABSOLUTE, .ver = 10 },
    { IN("GET http://h%41.c1e/ HTTP/1.0\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "http://h%41.c1e/", .path = "/", .host = "h%41.c1e",
      .form = KOU_TARGET_ABSOLUTE, .ver = 10 },
    { IN("GET http://h/ HTTP/1.1\r\n\r\n"), .rc = 400 },
    { IN("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET http:/h/ HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET http: HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET http:// HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET http:///a HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET http://:80/ HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET http://foo@localhost:80/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://a%12:b!&*$@h:1234/t HTTP/1.1\r\nHost: h\r\n\r\n"),
      .rc = 400 },
    { IN("GET http://h/a#f HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET http://h#f HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET http://localhost:80x/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://localhost:80:80/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://localhost::80/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://[::1/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://[4712::abcd::]/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://4713::abcd:8001/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    /* hosts some resolvers read as IPv4 and others as names */
    { IN("GET http://017700000001/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://0x7f.1/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://127.01.0.1/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://%3127.0.0.1/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://1.2.3.256/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://example.123/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://a.0x/ HTTP/1.0\r\n\r\n"), .rc = 400 },
    { IN("GET http://h%4/ HTTP/1.0\r\n\r\n"), .rc = 400 },

    /* ---- authority-form, CONNECT only (RFC 9112 §3.2.3) ---- */
    { IN("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"),
      .mid = KOU_METHOD_CONNECT, .m = "CONNECT", .t = "h:443", .host = "h",
      .port = "443", .form = KOU_TARGET_AUTHORITY, .ver = 11, .nh = 1 },
    { IN("CONNECT [::1]:443 HTTP/1.0\r\n\r\n"), .mid = KOU_METHOD_CONNECT,
      .m = "CONNECT", .t = "[::1]:443", .host = "[::1]", .port = "443",
      .form = KOU_TARGET_AUTHORITY, .ver = 10 },
    { IN("CONNECT 10.0.0.1:80 HTTP/1.0\r\n\r\n"), .mid = KOU_METHOD_CONNECT,
      .m = "CONNECT", .t = "10.0.0.1:80", .host = "10.0.0.1", .port = "80",
      .form = KOU_TARGET_AUTHORITY, .ver = 10 },
    { IN("CONNECT h HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("CONNECT h: HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("CONNECT :443 HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("CONNECT http://h:443/ HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("CONNECT u@h:443 HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("CONNECT * HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET h:443 HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },

    /* ---- asterisk-form, OPTIONS only (RFC 9112 §3.2.4) ---- */
    { IN("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_OPTIONS,
      .m = "OPTIONS", .t = "*", .host = "h", .form = KOU_TARGET_ASTERISK,
      .ver = 11, .nh = 1 },
    { IN("OPTIONS /* HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_OPTIONS,
      .m = "OPTIONS", .t = "/*", .path = "/*", .host = "h", .ver = 11,
      .nh = 1 },
    { IN("GET * HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("M-SEARCH * HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("OPTIONS ** HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 400 },

    /* ---- field lines (RFC 9112 §5, RFC 9110 §5.5) ---- */
    { IN(RQ "Foo: bar\r\n\r\n"), GET_ROOT(2), .hn = "Foo", .hv = "bar" },
    { IN(RQ "Foo:bar\r\n\r\n"), GET_ROOT(2), .hn = "Foo", .hv = "bar" },
    { IN(RQ "Foo: \t bar \t \r\n\r\n"), GET_ROOT(2), .hn = "Foo",
      .hv = "bar" },
    { IN(RQ "Foo:\r\n\r\n"), GET_ROOT(2), .hn = "Foo", .hv = "" },
    { IN(RQ "Foo: \t \r\n\r\n"), GET_ROOT(2), .hn = "Foo", .hv = "" },
    { IN(RQ "Foo: a b\tc\r\n\r\n"), GET_ROOT(2), .hn = "Foo",
      .hv = "a b\tc" },
    { IN(RQ "X:y:z\r\n\r\n"), GET_ROOT(2), .hn = "X", .hv = "y:z" },
    { IN(RQ "Test: D\xc3\xbcsseldorf\r\n\r\n"), GET_ROOT(2), .hn = "Test",
      .hv = "D\xc3\xbcsseldorf" },
    { IN(RQ "Header2: \xff" "Value2\r\n\r\n"), GET_ROOT(2), .hn = "Header2",
      .hv = "\xff" "Value2" },
    { IN(RQ "!#$%&'*+-.^_`|~: x\r\n\r\n"), GET_ROOT(2),
      .hn = "!#$%&'*+-.^_`|~", .hv = "x" },
    { IN(RQ "Link: <http://e.com/>; rel=\"tag\"\r\n\r\n"), GET_ROOT(2),
      .hn = "Link", .hv = "<http://e.com/>; rel=\"tag\"" },
    { IN(RQ "aaaaaaaaaaaaa:++++++++++\r\n\r\n"), GET_ROOT(2),
      .hn = "aaaaaaaaaaaaa", .hv = "++++++++++" },
    { IN(RQ "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n\r\n"),
      GET_ROOT(8), .hn = "G", .hv = "7" },
    { IN(RQ "Foo : bar\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo\t: bar\r\n\r\n"), .rc = 400 },
    { IN(RQ ": bar\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo bar\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo bar: x\r\n\r\n"), .rc = 400 },
    { IN(RQ "Fo@: x\r\n\r\n"), .rc = 400 },
    { IN(RQ "Fo\": x\r\n\r\n"), .rc = 400 },
    { IN(RQ "F(o): x\r\n\r\n"), .rc = 400 },
    { IN(RQ "F/o: x\r\n\r\n"), .rc = 400 },
    { IN(RQ "F\xc3\xa9: x\r\n\r\n"), .rc = 400 },
    { IN(RQ "F\x01o: x\r\n\r\n"), .rc = 400 },
    { IN(RQ "F\0o: x\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo\x01\test: Bar\r\n\r\n"), .rc = 400 },
    /* obs-fold (RFC 9112 §5.2) */
    { IN("GET / HTTP/1.0\r\n Foo: bar\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo: bar\r\n baz\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo: bar\r\n\tbaz\r\n\r\n"), .rc = 400 },
    { IN(RQ "name\r\n : value\r\n\r\n"), .rc = 400 },
    /* CTL except HTAB, and DEL, are not field content */
    { IN(RQ "Foo: b\0ar\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo: b\x01" "ar\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo: hello\x0cworld\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo: \x1b\r\n\r\n"), .rc = 400 },
    { IN(RQ "Foo: a\x7f" "b\r\n\r\n"), .rc = 400 },
    { IN(RQ "Connection: keep\ralive\r\n\r\n"), .rc = 400 },

    /* ---- Host (RFC 9110 §7.2, RFC 9112 §3.2) ---- */
    { IN("GET / HTTP/1.1\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: h\r\nHost: h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nhOsT: h\r\n\r\n"), GET_ROOT(1), .hn = "hOsT",
      .hv = "h" },
    { IN("GET / HTTP/1.1\r\nHost:   h  \r\n\r\n"), GET_ROOT(1) },
    { IN("GET / HTTP/1.1\r\nHost: h:8080\r\n\r\n"), GET_ROOT(1),
      .port = "8080" },
    { IN("GET / HTTP/1.1\r\nHost: h:\r\n\r\n"), GET_ROOT(1) },
    { IN("GET / HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "/", .path = "/",
      .host = "239.255.255.250", .port = "1900", .ver = 11, .nh = 1 },
    { IN("GET / HTTP/1.0\r\nHost: [4711::abcd]:8000\r\n\r\n"),
      GET_ROOT10(1), .host = "[4711::abcd]", .port = "8000" },
    { IN("GET / HTTP/1.0\r\nHost: foo_bar.example.com\r\n\r\n"),
      GET_ROOT10(1), .host = "foo_bar.example.com" },
    { IN("GET / HTTP/1.0\r\nHost: 0.0.0.0=5000\r\n\r\n"), GET_ROOT10(1),
      .host = "0.0.0.0=5000" },
    { IN("GET / HTTP/1.0\r\nHost: example.com.\r\n\r\n"), GET_ROOT10(1),
      .host = "example.com." },
    { IN("GET / HTTP/1.0\r\nHost: [::ffff:1.2.3.4]\r\n\r\n"), GET_ROOT10(1),
      .host = "[::ffff:1.2.3.4]" },
    { IN("GET / HTTP/1.0\r\nHost: [1:2:3:4:5:6:7:8]\r\n\r\n"), GET_ROOT10(1),
      .host = "[1:2:3:4:5:6:7:8]" },
    { IN("GET / HTTP/1.0\r\nHost: [::1:2:3:4:5:6:7]\r\n\r\n"),
      GET_ROOT10(1), .host = "[::1:2:3:4:5:6:7]" },
    { IN("GET / HTTP/1.0\r\nHost: [1:2:3:4:5:6:1.2.3.4]\r\n\r\n"),
      GET_ROOT10(1), .host = "[1:2:3:4:5:6:1.2.3.4]" },
    { IN("GET / HTTP/1.0\r\nHost: [4711:abcd::]\r\n\r\n"), GET_ROOT10(1),
      .host = "[4711:abcd::]" },
    { IN("GET / HTTP/1.0\r\nHost: [v7.a:b]\r\n\r\n"), GET_ROOT10(1),
      .host = "[v7.a:b]" },
    { IN("GET / HTTP/1.1\r\nHost:\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: :80\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: localhost:80 x\r\n\r"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: u@h\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h/p\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: h?\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: abc\xa0\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: abc\\foo\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 4714::abcd:8001\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 127.0.0.1.\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 123\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [1:2:3:4:5:6:7:8:9]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [1:2:3:4:5:6:7]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [12345::]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [:1]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [1:]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [1::2::3]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [::1]x\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [g::1]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [::1.2.3]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [v.a]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [fe80::1%25eth0]\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: []\r\n\r\n"), .rc = 400 },
    /* IPv4: a plain dotted quad or nothing that looks like a number */
    { IN("GET / HTTP/1.0\r\nHost: 255.255.255.255\r\n\r\n"), GET_ROOT10(1),
      .host = "255.255.255.255" },
    { IN("GET / HTTP/1.0\r\nHost: 0.0.0.0:0\r\n\r\n"), GET_ROOT10(1),
      .host = "0.0.0.0", .port = "0" },
    { IN("GET / HTTP/1.0\r\nHost: 10.0.0.1x\r\n\r\n"), GET_ROOT10(1),
      .host = "10.0.0.1x" },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.3\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.3.4.5\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 00.1.2.3\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.3.04\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 300.1.1.1\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 1.1.1.1000\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 4294967553.1.1.1\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 1..1.1\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: .1.1.1\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.3.4:8x\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.1\r\nHost: 10.200.0.9:8080\r\n\r\n"),
      .mid = KOU_METHOD_GET, .m = "GET", .t = "/", .path = "/", .ver = 11,
      .nh = 1, .host = "10.200.0.9", .port = "8080" },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.3.0\r\n\r\n"), GET_ROOT10(1),
      .host = "1.2.3.0" },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.3.4.\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.3.\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.256.4\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: 1.2.30.400\r\n\r\n"), .rc = 400 },
    { IN("GET / HTTP/1.0\r\nHost: [::ffff:1.2.3.04]\r\n\r\n"),
      .rc = 400 },

    /* ---- Content-Length (RFC 9110 §8.6, RFC 9112 §6.3) ---- */
    { IN(PQ "Content-Length: 5\r\n\r\nhello"), POST_ROOT(2), .f = F_CL,
      .cl = 5, .head = sizeof(PQ "Content-Length: 5\r\n\r\n") - 1 },
    { IN(PQ "Content-Length: 0\r\n\r\n"), POST_ROOT(2), .f = F_CL, .cl = 0 },
    { IN(PQ "Content-Length: 003\r\n\r\n"), POST_ROOT(2), .f = F_CL,
      .cl = 3 },
    { IN(PQ "conTENT-Length:\t42\t  \r\n\r\n"), POST_ROOT(2), .f = F_CL,
      .cl = 42 },
    { IN(PQ "Content-Length: 9223372036854775807\r\n\r\n"), POST_ROOT(2),
      .f = F_CL, .cl = INT64_MAX },
    { IN(PQ "Content-Length: 42, 42\r\n\r\n"), POST_ROOT(2), .f = F_CL,
      .cl = 42 },
    { IN(PQ "Content-Length: 5,5 ,\t05\r\n\r\n"), POST_ROOT(2), .f = F_CL,
      .cl = 5 },
    { IN(PQ "Content-Length: 7\r\nContent-Length: 7\r\n\r\n"), POST_ROOT(3),
      .f = F_CL, .cl = 7 },
    { IN(PQ "Content-Length: 9223372036854775808\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: 1000000000000000000000\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: -1\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: +1\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: 1.0\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: 0x10\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: 4 2\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length:\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: 5, 6\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: 5,\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: ,5\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: 1\r\nContent-Length: 2\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length : 5\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content\rLength: 3\r\n\r\n"), .rc = 400 },
    { IN(PQ "Content-Length: 3\r\n\rabc"), .rc = 400 },

    /* ---- Transfer-Encoding (RFC 9112 §6.1, §6.3, §7) ---- */
    { IN(PQ "Transfer-Encoding: chunked\r\n\r\n"), POST_ROOT(2),
      .f = F_CHUNKED },
    { IN(PQ "transfer-encoding: CHUNKED \r\n\r\n"), POST_ROOT(2),
      .f = F_CHUNKED },
    { IN(PQ "Transfer-Encoding: , chunked,\r\n\r\n"), POST_ROOT(2),
      .f = F_CHUNKED },
    { IN(PQ "Transfer-Encoding: gzip, chunked\r\n\r\n"), .rc = 501 },
    { IN(PQ "Transfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"),
      .rc = 501 },
    { IN(PQ "Transfer-Encoding: gzip;q=1, chunked\r\n\r\n"), .rc = 501 },
    { IN(PQ "Transfer-Encoding: x;a=\"b,c\" ; d = e,chunked\r\n\r\n"),
      .rc = 501 },
    { IN(PQ "Transfer-Encoding: identity\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: pigeons\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: chunked, gzip\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"),
      .rc = 400 },
    { IN(PQ "Transfer-Encoding: chunked, chunked\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
            "\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: chunkedchunked\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: chu nked\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: chunked;x=1\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: gzip;, chunked\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: gzip;a=\"b, chunked\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding:\r\n\r\n"), .rc = 400 },
    { IN(PQ "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
      .rc = 400 },
    { IN(PQ "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
      .rc = 400 },
    /* ambiguous framing outranks an unimplemented coding */
    { IN(PQ "Content-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
      .rc = 400 },
    { IN("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
      .rc = 400 },

    /* ---- Connection (RFC 9110 §7.6.1) ---- */
    { IN(RQ "Connection: close\r\n\r\n"), GET_ROOT(2), .f = F_CLOSE },
    { IN(RQ "Connection: CLOSE\t\r\n\r\n"), GET_ROOT(2), .f = F_CLOSE },
    { IN(RQ "Connection: Keep-Alive\r\n\r\n"), GET_ROOT(2), .f = F_KA },
    { IN(RQ "Connection: Upgrade\r\nUpgrade: ws\r\n\r\n"), GET_ROOT(3),
      .f = F_UPGRADE, .hn = "Upgrade", .hv = "ws" },
    { IN(RQ "Connection: close, token, upgrade, token, keep-alive\r\n\r\n"),
      GET_ROOT(2), .f = F_CLOSE | F_KA | F_UPGRADE },
    { IN(RQ "Connection: keep-alive, , close\r\n\r\n"), GET_ROOT(2),
      .f = F_CLOSE | F_KA },
    { IN(RQ "Connection: closed, x-close\r\n\r\n"), GET_ROOT(2) },
    { IN(RQ "Connection: clo se\r\n\r\n"), .rc = 400 },
    { IN(RQ "Connection: close;x\r\n\r\n"), .rc = 400 },
    { IN(RQ "Connection : upgrade\r\n\r\n"), .rc = 400 },

    /* ---- Expect (RFC 9110 §10.1.1) ---- */
    { IN(PQ "Expect: 100-continue\r\n\r\n"), POST_ROOT(2), .f = F_EXPECT },
    { IN(PQ "Expect: 100-Continue\r\n\r\n"), POST_ROOT(2), .f = F_EXPECT },
    { IN(PQ "Expect:\r\n\r\n"), POST_ROOT(2) },
    { IN("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"),
      .mid = KOU_METHOD_POST, .m = "POST", .t = "/", .path = "/", .ver = 10,
      .nh = 1 },
    { IN(PQ "Expect: foo\r\n\r\n"), .rc = 417 },
    { IN(PQ "Expect: 100-continue, foo\r\n\r\n"), .rc = 417 },
    { IN(PQ "Expect: 100-continue; a=b\r\n\r\n"), .rc = 417 },
    { IN(PQ "Expect: 200-ok\r\n\r\n"), .rc = 417 },
    /* every 400 and 501 wins over 417, wherever it is in the head */
    { IN("POST / HTTP/1.1\r\nExpect: foo\r\n\r\n"), .rc = 400 },
    { IN(PQ "Expect: foo\r\nContent-Length: x\r\n\r\n"), .rc = 400 },
    { IN(PQ "Expect: foo\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
      .rc = 501 },

    /* ---- the head ends; what follows is not looked at ---- */
    { IN(RQ "\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"), GET_ROOT(1),
      .head = sizeof(RQ "\r\n") - 1 },
    { IN(RQ "\r\n\0\x01\xff garbage"), GET_ROOT(1),
      .head = sizeof(RQ "\r\n") - 1 },
    { IN(""), .rc = KOU_AGAIN },
    { IN("GET"), .rc = KOU_AGAIN },
    { IN(RQ), .rc = KOU_AGAIN },
    { IN(RQ "\r"), .rc = KOU_AGAIN },
    { IN(RQ "Foo: bar"), .rc = KOU_AGAIN },

    /* ---- limits: the positions of DESIGN §3 ---- */
    /* "GET /a HTTP/1.1" is 15 bytes */
    { IN("GET /a HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "/a", .path = "/a", .host = "h", .ver = 11, .nh = 1,
      .rl = 15 },
    { IN("GET /a HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 414, .rl = 14 },
    { IN("\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n"), .mid = KOU_METHOD_GET,
      .m = "GET", .t = "/a", .path = "/a", .host = "h", .ver = 11, .nh = 1,
      .rl = 15 },
    { IN("\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 414, .rl = 14 },
    /* without its CRLF yet */
    { IN("GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), .rc = 414, .rl = 16 },
    /* structure is judged on whole lines, the length on the way */
    { IN("G(T /aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), .rc = 414, .rl = 16 },
    /* a byte no request line may hold is seen on the way too */
    { IN("GET /\x01" "aaaaaaaaaaaaaaaaaaaaaaaaaaa"), .rc = 400, .rl = 16 },
    { IN("GET /aaaaaaaaaa\n"), .rc = 400, .rl = 16 },
    { IN("GET /aaaaaaaaaaa\n"), .rc = 400, .rl = 16 },
    { IN("GET /aaaaaaaaaaaa\n"), .rc = 414, .rl = 16 },
    /* the head, 27 bytes here, may be exactly the block limit */
    { IN(RQ "\r\n"), GET_ROOT(1), .hb = 27 },
    { IN(RQ "\r\n"), .rc = 431, .hb = 26 },
    { IN("\r\n" RQ "\r\n"), GET_ROOT(1), .hb = 29 },
    { IN("\r\n" RQ "\r\n"), .rc = 431, .hb = 28 },
    { IN(RQ "X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
      .rc = 431, .hb = 40 },
    /* a byte no field line may hold, before the limit, is itself */
    { IN(RQ "Bad\x01Name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
      .rc = 400, .hb = 40 },
    /* but a line's structure is judged only once the line is complete */
    { IN(RQ "Bad Name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
      .rc = 431, .hb = 40 },
    { IN(RQ "A: 1\r\n\r\n"), GET_ROOT(2), .mh = 2 },
    { IN(RQ "A: 1\r\nB: 2\r\n\r\n"), .rc = 431, .mh = 2 },
    { IN(RQ "A: 1\r\nB: 2\r\n"), .rc = 431, .mh = 2 },
    { IN(RQ "A: 1\r\n\r\n"), .rc = 431, .mh = 1 },

    /* ---- answered as soon as no later byte can change the answer ---- */
    /* the request line, when its version is in, CRLF or not */
    { IN("GET / HTTP/5.6"), .rc = 505 },
    { IN("GET / HTTP/0.9"), .rc = 505 },
    { IN("GET / HTTP/2.0x\r\nHost: h\r\n\r\n"), .rc = 505 },
    { IN("GET / HTTP/2.00\r\n\r\n"), .rc = 505 },
    { IN("GET / HTTP/2.0\0"), .rc = 505 },
    { IN("GET /# HTTP/5.6"), .rc = 400 },
    { IN("G(T / HTTP/1.1"), .rc = 400 },
    { IN(" / HTTP/1.1"), .rc = 400 },
    { IN("CONNECT h HTTP/1.1"), .rc = 400 },
    { IN("GET / HTTP/1.1x"), .rc = 400 },
    { IN("GET / HTTP/1.1 "), .rc = 400 },
    { IN("GET / HTTP/1.10"), .rc = 400 },
    { IN("GET / HTTPS"), .rc = 400 },
    { IN("GET / http"), .rc = 400 },
    { IN("GET / X"), .rc = 400 },
    { IN("GET /a b"), .rc = 400 },
    { IN("GET / HTTP/x"), .rc = 400 },
    { IN("GET / HTTP/1,"), .rc = 400 },
    { IN("GET / HTTP/1.x"), .rc = 400 },
    { IN("GET /\r"), .rc = 400 },
    { IN("GET / HTTP/1.\r"), .rc = 400 },
    { IN("GET / HTTP/1.1"), .rc = KOU_AGAIN },
    { IN("GET / HTTP/1."), .rc = KOU_AGAIN },
    { IN("GET / HTTP/"), .rc = KOU_AGAIN },
    { IN("GET / H"), .rc = KOU_AGAIN },
    { IN("GET / "), .rc = KOU_AGAIN },
    { IN("GET / HTTP/1.1\r"), .rc = KOU_AGAIN },
    { IN("\r\nGET / HTTP/9.9"), .rc = 505 },
    { IN("\r\nGET / HTTP/1.1\r\n"), .rc = KOU_AGAIN },
    /* a decision at an earlier position than the limit wins */
    { IN("GET / HTTP/2.0aaaaaaaaaaaaaaaaaaaa"), .rc = 505, .rl = 16 },
    { IN("GET / HTTP/1.1aaaaaaaaaaaaaaaaaaaa"), .rc = 400, .rl = 16 },
    { IN("GET / HTTP/1.1aaaaaaaaaaaaaaaaaaaa"), .rc = 414, .rl = 13 },
    { IN("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), GET_ROOT(1), .rl = 14 },
    { IN("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), .rc = 414, .rl = 13 },
    { IN("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), .rc = 505, .hb = 14 },
    { IN("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), .rc = 431, .hb = 13 },
    /* obs-fold, at its first byte */
    { IN("GET / HTTP/1.1\r\nHost: localhost\r\n Host: foo"), .rc = 400 },
    { IN(RQ " "), .rc = 400 },
    { IN(RQ "\t"), .rc = 400 },
    { IN(RQ10 " "), .rc = 400 },
    { IN(RQ "Foo: bar\r\n\tbaz"), .rc = 400 },
    { IN(RQ " aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
      .rc = 400, .hb = 40 },
};

/* ---- running a request case ---- */

typedef struct {
    long        off;   /* -1: not inside the buffer */
    size_t      n;
    const char *ext;   /* the pointer itself when not inside */
} slice_t;

typedef struct {
    int      rc;
    size_t   head_len;
    unsigned mid, form, ver, bits;
    size_t   nh;
    int64_t  cl;
    slice_t  s[6 + 2 * MAXH];
} snap_t;

static slice_t
slice_of(kou_str_t v, const u_char *buf, size_t len)
{
    slice_t   r = { -1, v.n, v.p };
    uintptr_t a = (uintptr_t) v.p, b = (uintptr_t) buf;

    if (a >= b && a + v.n <= b + len) {
        r.off = (long) (a - b);
        r.ext = NULL;
    }
    return r;
}

static void
snap(snap_t *s, const kou_http_parser_t *p, const u_char *buf, size_t len,
     int rc)
{
    size_t i;

    memset(s, 0, sizeof(*s));
    s->rc = rc;
    if (rc != KOU_OK) {
        return;
    }
    s->head_len = p->head_len;
    s->mid = p->method_id;
    s->form = p->target_form;
    s->ver = p->version;
    s->nh = p->nheaders;
    s->cl = p->content_length;
    s->bits = p->chunked | p->conn_close << 1 | p->conn_keep_alive << 2
              | p->conn_upgrade << 3 | p->expect_continue << 4;
    s->s[0] = slice_of(p->method, buf, len);
    s->s[1] = slice_of(p->target, buf, len);
    s->s[2] = slice_of(p->path, buf, len);
    s->s[3] = slice_of(p->query, buf, len);
    s->s[4] = slice_of(p->host, buf, len);
    s->s[5] = slice_of(p->port, buf, len);
    CHECK(p->nheaders <= MAXH, "%zu fields", p->nheaders);
    for (i = 0; i < p->nheaders; i++) {
        s->s[6 + 2 * i] = slice_of(p->headers[i].name, buf, len);
        s->s[7 + 2 * i] = slice_of(p->headers[i].value, buf, len);
    }
}

static void
same(const snap_t *a, const snap_t *b, const char *label, const char *how)
{
    size_t i;

    CHECK(a->rc == b->rc, "%s: %s gives %d, the reference %d", label,
                  how, b->rc, a->rc);
    CHECK(memcmp(a, b, offsetof(snap_t, s)) == 0,
                  "%s: %s parses differently", label, how);
    for (i = 0; i < kou_nelem(a->s); i++) {
        CHECK(a->s[i].off == b->s[i].off && a->s[i].n == b->s[i].n
                      && a->s[i].ext == b->s[i].ext,
                      "%s: %s gives slice %zu at %ld+%zu, the reference "
                      "at %ld+%zu",
                      label, how, i, b->s[i].off, b->s[i].n, a->s[i].off,
                      a->s[i].n);
    }
}

static kou_http_limits_t
limits_for(const hcase_t *c)
{
    kou_http_limits_t l = { 1024, 4096, 32 };

    if (c->rl) {
        l.max_request_line = c->rl;
    }
    if (c->hb) {
        l.max_header_block = c->hb;
    }
    if (c->mh) {
        l.max_headers = c->mh;
    }
    return l;
}

static void
expect_str(kou_str_t got, const char *want, const char *what,
           const char *label)
{
    if (want == NULL) {
        want = "";
    }
    CHECK(got.p != NULL, "%s: %s is NULL", label, what);
    CHECK(got.n == strlen(want)
                  && (got.n == 0 || memcmp(got.p, want, got.n) == 0),
                  "%s: %s is \"%.*s\", expected \"%s\"", label, what,
                  (int) got.n, got.p, want);
}

static bool
is_tchar(int c)
{
    return c > 0 && strchr("!#$%&'*+-.^_`|~0123456789"
                           "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                           "abcdefghijklmnopqrstuvwxyz", c) != NULL;
}

/* What a user of an accepted request relies on. */
static void
check_parse(const hcase_t *c, const kou_http_parser_t *p, const char *label)
{
    size_t i;
    bool   found = false;

    CHECK(c->m != NULL, "%s: the table lacks the expected parse",
                  label);
    expect_str(p->method, c->m, "method", label);
    CHECK(p->method_id == c->mid, "%s: method_id %u, expected %u",
                  label, p->method_id, c->mid);
    expect_str(p->target, c->t, "target", label);
    expect_str(p->path, c->path, "path", label);
    expect_str(p->query, c->q, "query", label);
    expect_str(p->host, c->host, "host", label);
    expect_str(p->port, c->port, "port", label);
    CHECK(p->target_form == c->form, "%s: form %u, expected %u",
                  label, p->target_form, c->form);
    CHECK(p->version == c->ver, "%s: version %u, expected %u", label,
                  p->version, c->ver);
    CHECK(p->nheaders == c->nh, "%s: %zu fields, expected %zu",
                  label, p->nheaders, c->nh);
    CHECK(p->content_length == (c->f & F_CL ? c->cl : -1),
                  "%s: content_length %" PRId64, label, p->content_length);
    CHECK(p->chunked == !!(c->f & F_CHUNKED), "%s: chunked", label);
    CHECK(p->conn_close == !!(c->f & F_CLOSE), "%s: close", label);
    CHECK(p->conn_keep_alive == !!(c->f & F_KA), "%s: keep-alive",
                  label);
    CHECK(p->conn_upgrade == !!(c->f & F_UPGRADE), "%s: upgrade",
                  label);
    CHECK(p->expect_continue == !!(c->f & F_EXPECT), "%s: expect",
                  label);
    CHECK(p->head_len == (c->head ? c->head : c->len),
                  "%s: head_len %zu", label, p->head_len);

    for (i = 0; i < p->nheaders; i++) {
        kou_str_t n = p->headers[i].name, v = p->headers[i].value;
        size_t    j;

        CHECK(n.n > 0, "%s: empty field name", label);
        for (j = 0; j < n.n; j++) {
            CHECK(is_tchar((u_char) n.p[j]), "%s: name byte", label);
        }
        CHECK(n.p[n.n] == ':', "%s: name not followed by ':'", label);
        CHECK(v.n == 0 || (v.p[0] != ' ' && v.p[0] != '\t'
                                   && v.p[v.n - 1] != ' '
                                   && v.p[v.n - 1] != '\t'),
                      "%s: value keeps its OWS", label);
        if (c->hn && strlen(c->hn) == n.n && memcmp(n.p, c->hn, n.n) == 0
            && !found)
        {
            expect_str(v, c->hv, "field value", label);
            found = true;
        }
    }
    CHECK(c->hn == NULL || found, "%s: no field %s", label, c->hn);
}

/*
 * Parse the case whole in the tier in use, then byte by byte and split in
 * two at every offset that is 1 modulo `stride` (none when 0), and demand
 * the same answer each time.
 * When `full`, check the whole parse against the table. Leaves the whole
 * parse in *sw.
 */
static void
parse_ways(const hcase_t *c, const char *label, const char *tier, bool full,
           size_t stride, snap_t *sw)
{
    kou_http_limits_t lim = limits_for(c);
    kou_header_t      hw[MAXH], hq[MAXH];
    kou_http_parser_t w, q;
    snap_t            sq;
    const u_char     *b;
    size_t            k, s;
    char              how[64];
    int               rc;

    b = flush(c->in, c->len);
    kou_http_parser_init(&w, &lim, hw);
    rc = kou_http_parse_request(&w, b, c->len);
    snap(sw, &w, b, c->len, rc);
    if (full) {
        CHECK(rc == c->rc, "%s: status %d, expected %d", label, rc, c->rc);
        if (rc == KOU_OK) {
            check_parse(c, &w, label);
        }
    }

    /* the same bytes against the guard page in front */
    b = flush_front(c->in, c->len);
    kou_http_parser_init(&q, &lim, hq);
    rc = kou_http_parse_request(&q, b, c->len);
    snap(&sq, &q, b, c->len, rc);
    snprintf(how, sizeof(how), "at the front guard [%s]", tier);
    same(sw, &sq, label, how);

    /* growing one byte at a time, asked twice when nothing was new */
    kou_http_parser_init(&q, &lim, hq);
    rc = KOU_AGAIN;
    b = NULL;
    for (k = 0; k <= c->len && rc == KOU_AGAIN; k++) {
        b = flush(c->in, k);
        rc = kou_http_parse_request(&q, b, k);
        if (rc == KOU_AGAIN) {
            rc = kou_http_parse_request(&q, b, k);
        }
    }
    snap(&sq, &q, b, k - 1, rc);
    snprintf(how, sizeof(how), "byte by byte [%s]", tier);
    same(sw, &sq, label, how);

    if (stride == 0) {
        return;
    }
    snprintf(how, sizeof(how), "split [%s]", tier);
    for (s = 1; s < c->len; s += stride) {
        kou_http_parser_init(&q, &lim, hq);
        b = flush(c->in, s);
        rc = kou_http_parse_request(&q, b, s);
        if (rc == KOU_AGAIN) {
            b = flush(c->in, c->len);
            rc = kou_http_parse_request(&q, b, c->len);
        }
        snap(&sq, &q, b, c->len, rc);
        same(sw, &sq, label, how);
    }
}

/*
 * Run the case in every tier, all three ways each; check the scalar
 * parse against the table when `full`, and every other tier against the
 * scalar one. Returns the status.
 */
static int
run_cases_ways(const hcase_t *c, const char *label, bool full, size_t stride)
{
    snap_t ref, sv;
    char   how[64];
    size_t v;

    for (v = 0; v < nvariants; v++) {
        use_variant(v);
        parse_ways(c, label, variants[v].name, full && v == 0, stride,
                   v == 0 ? &ref : &sv);
        if (v > 0) {
            snprintf(how, sizeof(how), "%s, whole,", variants[v].name);
            same(&ref, &sv, label, how);
        }
    }
    return ref.rc;
}

static int
run_request(const hcase_t *c, const char *label, bool full)
{
    return run_cases_ways(c, label, full, 1);
}

/*
 * Table tests run in groups: Check forks once per test, and a fork of a
 * sanitized process costs more than a group of cases.
 */
#define GROUP 32
#define NGROUPS(a) ((int) ((kou_nelem(a) + GROUP - 1) / GROUP))

START_TEST(test_request_table)
{
    char   label[640];
    size_t i;

    for (i = (size_t) _i * GROUP;
         i < kou_min((size_t) (_i + 1) * GROUP, kou_nelem(hcases)); i++)
    {
        snprintf(label, sizeof(label), "request %zu: %s", i,
                 show(hcases[i].in, hcases[i].len));
        run_request(&hcases[i], label, true);
    }
}
END_TEST

/* ---- every byte value in every position (RFC 9110, RFC 3986 sets) ---- */

#define UNRESERVED "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" \
                   "0123456789-._~"
#define SUB_DELIMS "!$&'()*+,;="

static bool
in_set(int c, const char *set)
{
    return c != 0 && strchr(set, c) != NULL;
}

static bool
is_pchar(int c)
{
    return in_set(c, UNRESERVED SUB_DELIMS ":@");
}

/* field-vchar, SP, HTAB: what a field value may hold (RFC 9110 §5.5) */
static bool
is_field_byte(int c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static bool
is_qdtext(int c)
{
    return c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b)
           || (c >= 0x5d && c <= 0x7e) || c >= 0x80;
}

typedef struct {
    const char *pre, *post;
    bool      (*ok)(int c);
    int         ok_rc;   /* status when ok(c): KOU_OK, or e.g. 505 */
    int         bad_rc;
} position_t;

static bool
pos_method(int c)
{
    return is_tchar(c);
}

static bool
pos_target(int c)
{
    return is_pchar(c) || c == '/' || c == '?';
}

static bool
pos_name(int c)
{
    return is_tchar(c) || c == ':';
}

static bool
pos_host(int c)
{
    return in_set(c, UNRESERVED SUB_DELIMS);
}

/* after "http://a": '/' and '?' end the authority, which stays valid */
static bool
pos_abs_host(int c)
{
    return in_set(c, UNRESERVED SUB_DELIMS "/?");
}

static bool
pos_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool
pos_major(int c)
{
    return c == '1';
}

static const position_t positions[] = {
    { "G", "T / HTTP/1.1\r\nHost: h\r\n\r\n", pos_method, KOU_OK, 400 },
    { "GET /a", "c HTTP/1.1\r\nHost: h\r\n\r\n", pos_target, KOU_OK, 400 },
    { "GET /?a", "c HTTP/1.1\r\nHost: h\r\n\r\n", pos_target, KOU_OK, 400 },
    { "GET http://h/a", "c HTTP/1.1\r\nHost: h\r\n\r\n", pos_target, KOU_OK,
      400 },
    { "GET / HTTP/1.", "\r\nHost: h\r\n\r\n", pos_digit, KOU_OK, 400 },
    { "GET / HTTP/", ".1\r\nHost: h\r\n\r\n", pos_major, KOU_OK, 400 },
    { RQ "X", "Y: v\r\n\r\n", pos_name, KOU_OK, 400 },
    { RQ "X: a", "c\r\n\r\n", is_field_byte, KOU_OK, 400 },
    { "GET / HTTP/1.1\r\nHost: a", "c\r\n\r\n", pos_host, KOU_OK, 400 },
    { "GET http://a", "c/ HTTP/1.1\r\nHost: h\r\n\r\n", pos_abs_host,
      KOU_OK, 400 },
};

START_TEST(test_request_bytes)
{
    const position_t *ps = &positions[_i];
    char              in[256], label[640];
    hcase_t           c = { 0 };
    int               b, want, rc;
    size_t            n1 = strlen(ps->pre), n2 = strlen(ps->post);

    for (b = 0; b < 256; b++) {
        memcpy(in, ps->pre, n1);
        in[n1] = (char) b;
        memcpy(in + n1 + 1, ps->post, n2);
        c.in = in;
        c.len = n1 + 1 + n2;
        snprintf(label, sizeof(label), "byte 0x%02x in %s", b,
                 show(in, c.len));
        want = ps->ok(b) ? ps->ok_rc : ps->bad_rc;
        /* a digit other than 1 before the dot is a version we lack */
        if (ps->ok == pos_major && pos_digit(b) && b != '1') {
            want = 505;
        }
        rc = run_request(&c, label, false);
        CHECK(rc == want, "%s: status %d, expected %d", label, rc,
                      want);
    }
}
END_TEST

/* ---- the same shapes at every length: vector boundaries everywhere ---- */

#define MAXLEN 200

/*
 * Splits of these cases every 13 bytes: at every offset they would cost
 * more than all the rest; the table and the random inputs split
 * everywhere.
 */
#define LEN_STRIDE 13

/* n bytes cycling through set, after `first` when it is not NUL. */
static size_t
fill(char *d, size_t n, const char *set, char first)
{
    size_t i, k = strlen(set);

    for (i = 0; i < n; i++) {
        d[i] = set[i % k];
    }
    if (first != '\0' && n > 0) {
        d[0] = first;
    }
    return n;
}

/* Two places for a fault in n bytes: the last, and one that wanders. */
static size_t
fault_at(size_t n, int which)
{
    return which == 0 ? n - 1 : (n * 13 + 5) % n;
}

static const char len_value[] = "vaZ0 ~!\t\x80\xff\"(),/:;<=>?@[\\]{}x\xc3\xa9";
static const char len_path[] = "abc-._~!$&'()*+,;=:@/XYZ09";
static const char len_query[] = "q?/=&a1:@-._~!$'()*+,;";
static const char len_tchar[] = "x!#$%&'*+-.^_`|~09AZaz";
static const char bad_value[] = "\0\x01\x08\n\x0b\x1f\x7f\r";
static const char bad_target[] = "\"#<>\\^`{|}[] \x7f\x80\x01";
static const char bad_name[] = "()<>@,;\\\"/[]?={} \t\x80\x01";
static const char bad_method[] = "(),/:;<=>?@[\\]{}\"\x80\x01";

enum { LEN_VALUE, LEN_PATH, LEN_QUERY, LEN_NAME, LEN_METHOD, LEN_LIMITS,
       LEN_KINDS };

START_TEST(test_request_lengths)
{
    static char in[2 * MAXLEN + 128], part[MAXLEN + 3];
    char        label[640], *t;
    hcase_t     c;
    size_t      n, o, k, j;
    int         w;

    for (n = 1; n <= MAXLEN; n++) {
        memset(&c, 0, sizeof(c));
        c.in = in;
        switch (_i) {
        case LEN_VALUE:
            fill(part, n, len_value, 'v');
            part[n - 1] = 'v';
            o = (size_t) sprintf(in, RQ "X: ");
            k = o;
            memcpy(in + o, part, n);
            o += n;
            o += (size_t) sprintf(in + o, "\r\n\r\n");
            part[n] = '\0';
            c = (hcase_t) { .in = in, .len = o, GET_ROOT(2), .hn = "X",
                            .hv = part };
            break;
        case LEN_PATH:
            o = (size_t) sprintf(in, "GET /");
            k = o;
            o += fill(in + o, n, len_path, '\0');
            o += (size_t) sprintf(in + o, " HTTP/1.1\r\nHost: h\r\n\r\n");
            memcpy(part, in + 4, n + 1);
            part[n + 1] = '\0';
            c = (hcase_t) { .in = in, .len = o, .mid = KOU_METHOD_GET,
                            .m = "GET", .t = part, .path = part,
                            .host = "h", .ver = 11, .nh = 1 };
            break;
        case LEN_QUERY:
            o = (size_t) sprintf(in, "GET /?");
            k = o;
            o += fill(in + o, n, len_query, '\0');
            o += (size_t) sprintf(in + o, " HTTP/1.1\r\nHost: h\r\n\r\n");
            memcpy(part, in + 4, n + 2);
            part[n + 2] = '\0';
            c = (hcase_t) { .in = in, .len = o, .mid = KOU_METHOD_GET,
                            .m = "GET", .t = part, .path = "/",
                            .q = part + 2, .host = "h", .ver = 11,
                            .nh = 1 };
            break;
        case LEN_NAME:
            o = (size_t) sprintf(in, RQ);
            k = o;
            o += fill(in + o, n, len_tchar, '\0');
            memcpy(part, in + k, n);
            part[n] = '\0';
            o += (size_t) sprintf(in + o, ": v\r\n\r\n");
            c = (hcase_t) { .in = in, .len = o, GET_ROOT(2), .hn = part,
                            .hv = "v" };
            break;
        case LEN_METHOD:
            k = 0;
            o = fill(in, n, len_tchar, '\0');
            memcpy(part, in, n);
            part[n] = '\0';
            o += (size_t) sprintf(in + o, " / HTTP/1.1\r\nHost: h\r\n\r\n");
            c = (hcase_t) { .in = in, .len = o, .mid = KOU_METHOD_UNKNOWN,
                            .m = part, .t = "/", .path = "/", .host = "h",
                            .ver = 11, .nh = 1 };
            break;
        default:
            /* a long target, then a long value, against the limits */
            o = (size_t) sprintf(in, "GET /");
            o += fill(in + o, n, len_path, '\0');
            j = o + 9;                      /* the request line's length */
            o += (size_t) sprintf(in + o, " HTTP/1.1\r\nHost: h\r\nX: ");
            o += fill(in + o, n, len_value, 'v');
            o += (size_t) sprintf(in + o, "v\r\n\r\n");
            c = (hcase_t) { .in = in, .len = o, .rc = KOU_OK };
            for (w = 0; w < 6; w++) {
                c.rl = w == 0 ? j : w == 1 ? j - 1 : w == 2 ? 5 + (n * 7) % n
                                                            : 0;
                c.hb = w == 3 ? o : w == 4 ? o - 1 : w == 5 ? o - 1 - n / 2
                                                            : 0;
                c.rc = w == 1 || w == 2 ? 414 : w >= 4 ? 431 : KOU_OK;
                snprintf(label, sizeof(label), "limits %d at %zu: %s", w, n,
                         show(in, o));
                CHECK(run_cases_ways(&c, label, false, LEN_STRIDE) == c.rc,
                      "%s: status", label);
            }
            continue;
        }

        snprintf(label, sizeof(label), "length %zu: %s", n, show(in, c.len));
        run_cases_ways(&c, label, true, LEN_STRIDE);

        /* a byte the part may not hold, in two places */
        for (w = 0; w < 2; w++) {
            const char *bad = _i == LEN_VALUE ? bad_value
                              : _i == LEN_NAME ? bad_name
                              : _i == LEN_METHOD ? bad_method : bad_target;
            size_t      nb = _i == LEN_VALUE ? sizeof(bad_value) - 1
                             : strlen(bad);

            t = in + k + fault_at(n, w);
            *t = bad[(n + (size_t) w) % nb];
            c = (hcase_t) { .in = in, .len = c.len, .rc = 400 };
            snprintf(label, sizeof(label), "length %zu, fault: %s", n,
                     show(in, c.len));
            run_cases_ways(&c, label, true, LEN_STRIDE);
            /* put the good byte back for the second fault */
            *t = _i == LEN_PATH ? part[1 + fault_at(n, w)]
                 : _i == LEN_QUERY ? part[2 + fault_at(n, w)]
                 : part[fault_at(n, w)];
        }
    }
}
END_TEST

/* ---- mutations of valid requests, every tier against the scalar one ---- */

#define RND_GROUPS 10
#define RND_PER    10000   /* inputs per group: 100,000 in all */
#define RND_MAX    2048

static uint64_t rnd_seed = 0x6b6f757269657231ull;
static uint64_t rnd_state;

/* xorshift64*: cheap, and the same sequence on every machine */
static uint32_t
rnd(void)
{
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return (uint32_t) ((rnd_state * 0x2545f4914f6cdd1dull) >> 32);
}

static size_t
rnd_below(size_t n)
{
    return n ? rnd() % n : 0;
}

/* Realistic requests the table's short cases do not look like. */
static const char *const rnd_seeds[] = {
    /* TechEmpower plaintext */
    "GET /plaintext HTTP/1.1\r\nHost: server\r\nUser-Agent: Mozilla/5.0 "
    "(X11; Linux x86_64) Gecko/20130501 Firefox/30.0 AppleWebKit/600.00 "
    "Chrome/30.0.0000.0 Trident/10.0 Safari/600.00\r\nCookie: "
    "uid=12345678901234567890; __utma=1.1234567890.1234567890.1234567890."
    "1234567890.12; wd=2560x1600\r\nAccept: text/html,application/xhtml+xml,"
    "application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\n"
    "Connection: keep-alive\r\n\r\n",
    /* a browser */
    "GET /wp-content/uploads/2010/03/hello-kitty-darth-vader-pink.jpg "
    "HTTP/1.1\r\nHost: www.kittyhell.com\r\nUser-Agent: Mozilla/5.0 "
    "(Macintosh; U; Intel Mac OS X 10.6; ja-JP-mac; rv:1.9.2.3) "
    "Gecko/20100401 Firefox/3.6.3 Pathtraq/0.9\r\nAccept: text/html,"
    "application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    "Accept-Language: ja,en-us;q=0.7,en;q=0.3\r\nAccept-Encoding: "
    "gzip,deflate\r\nAccept-Charset: Shift_JIS,utf-8;q=0.7,*;q=0.7\r\n"
    "Keep-Alive: 115\r\nConnection: keep-alive\r\nCookie: "
    "wp_ozh_wsa_visits=2; wp_ozh_wsa_visit_lasttime=xxxxxxxxxx; "
    "__utma=xxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.x; "
    "__utmz=xxxxxxxxx.xxxxxxxxxx.x.x.utmccn=(referral)|utmcsr=reader."
    "livedoor.com|utmcct=/reader/|utmcmd=referral\r\n\r\n",
    "POST /api/v1/items?id=42&x=%20y HTTP/1.1\r\nHost: api.example.com:8443"
    "\r\nContent-Type: application/json\r\nContent-Length: 13\r\n"
    "Expect: 100-continue\r\n\r\n{\"a\":\"b\"}\r\n",
    "PUT /up HTTP/1.1\r\nHost: [::1]:80\r\nTransfer-Encoding: chunked\r\n"
    "Connection: close, Upgrade\r\nUpgrade: websocket\r\n\r\n5\r\nhello\r\n",
    "GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: ignored\r\n"
    "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nVia: 1.1 proxy\r\n\r\n",
    "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
    "Proxy-Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: h\r\nAccess-Control-Request-Method: PUT\r\n"
    "\r\n",
    "\r\nGET / HTTP/1.0\r\nUser-Agent: ab\r\nX-Obs: \xe2\x82\xac \t done\r\n"
    "\r\n",
};

/* Bytes a mutation likes to bring in: the ones the parser decides on. */
static const char rnd_bytes[] = "\r\n \t\0\x7f\x80\xff:%?#/H1.;,\"=(@";

static size_t
mutate(u_char *b, size_t n)
{
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    size_t   i, k, m;
    unsigned rounds = 1 + rnd() % 4;

    while (rounds--) {
        i = rnd_below(n + 1);
        switch (rnd() % 9) {
        case 7:     /* a letter for a letter: mostly still valid */
            if (i < n && strchr(alnum, b[i]) != NULL && b[i] != '\0') {
                b[i] = (u_char) alnum[rnd_below(sizeof(alnum) - 1)];
            }
            break;
        case 8:     /* a letter more: lengths and alignments move */
            if (n < RND_MAX && i > 0 && strchr(alnum, b[i - 1]) != NULL
                && b[i - 1] != '\0')
            {
                memmove(b + i + 1, b + i, n - i);
                b[i] = (u_char) alnum[rnd_below(sizeof(alnum) - 1)];
                n++;
            }
            break;
        case 0:     /* overwrite with a byte that matters */
            if (i < n) {
                b[i] = (u_char) rnd_bytes[rnd_below(sizeof(rnd_bytes) - 1)];
            }
            break;
        case 1:     /* overwrite with any byte */
            if (i < n) {
                b[i] = (u_char) rnd();
            }
            break;
        case 2:     /* insert a byte that matters */
            if (n < RND_MAX) {
                memmove(b + i + 1, b + i, n - i);
                b[i] = (u_char) rnd_bytes[rnd_below(sizeof(rnd_bytes) - 1)];
                n++;
            }
            break;
        case 3:     /* delete a few bytes */
            k = 1 + rnd_below(8);     /* kou_min evaluates twice */
            k = kou_min(k, n - i);
            memmove(b + i, b + i + k, n - i - k);
            n -= k;
            break;
        case 4:     /* duplicate a range, as a repeated field would */
            k = rnd_below(n + 1);
            m = rnd_below(96);
            m = kou_min(m, n - k);
            if (n + m <= RND_MAX) {
                memmove(b + i + m, b + i, n - i);
                memmove(b + i, b + (k >= i ? k + m : k), m);
                n += m;
            }
            break;
        case 5:     /* stop short: a partial head */
            n = i;
            break;
        default:    /* nothing: the valid request itself */
            break;
        }
        if (rnd() % 2) {
            /* one round of harm in two is enough */
            break;
        }
    }
    return n;
}

/*
 * Parse one input in every tier, whole and split in two at `split`, byte
 * by byte too when `bytewise`; all must equal the scalar whole parse.
 */
static int
run_random(const hcase_t *c, const char *label, size_t split, bool bytewise)
{
    kou_http_limits_t lim = limits_for(c);
    kou_header_t      h[MAXH];
    kou_http_parser_t p;
    snap_t            ref, sv;
    const u_char     *b;
    char              how[64];
    size_t            v, k;
    int               rc;

    for (v = 0; v < nvariants; v++) {
        use_variant(v);

        b = flush(c->in, c->len);
        kou_http_parser_init(&p, &lim, h);
        rc = kou_http_parse_request(&p, b, c->len);
        snap(v == 0 ? &ref : &sv, &p, b, c->len, rc);
        if (v > 0) {
            snprintf(how, sizeof(how), "%s, whole,", variants[v].name);
            same(&ref, &sv, label, how);
        }

        kou_http_parser_init(&p, &lim, h);
        b = flush_front(c->in, c->len);
        rc = kou_http_parse_request(&p, b, c->len);
        snap(&sv, &p, b, c->len, rc);
        snprintf(how, sizeof(how), "%s, at the front guard,",
                 variants[v].name);
        same(&ref, &sv, label, how);

        kou_http_parser_init(&p, &lim, h);
        b = flush(c->in, split);
        rc = kou_http_parse_request(&p, b, split);
        if (rc == KOU_AGAIN) {
            b = flush(c->in, c->len);
            rc = kou_http_parse_request(&p, b, c->len);
        }
        snap(&sv, &p, b, c->len, rc);
        snprintf(how, sizeof(how), "%s, split at %zu,", variants[v].name,
                 split);
        same(&ref, &sv, label, how);

        if (!bytewise) {
            continue;
        }
        kou_http_parser_init(&p, &lim, h);
        rc = KOU_AGAIN;
        for (k = 0; k <= c->len && rc == KOU_AGAIN; k++) {
            b = flush(c->in, k);
            rc = kou_http_parse_request(&p, b, k);
        }
        snap(&sv, &p, b, k - 1, rc);
        snprintf(how, sizeof(how), "%s, byte by byte,", variants[v].name);
        same(&ref, &sv, label, how);
    }
    return ref.rc;
}

START_TEST(test_request_random)
{
    static u_char buf[RND_MAX];
    char          label[640];
    hcase_t       c;
    size_t        n, t, seeds, tally[7] = { 0 };
    const char   *src;
    int           rc, i;

    seeds = kou_nelem(rnd_seeds) + kou_nelem(hcases);
    rnd_state = rnd_seed + (uint64_t) _i * 0x9e3779b97f4a7c15ull;
    if (rnd_state == 0) {
        rnd_state = 1;
    }
    for (i = 0; i < RND_PER; i++) {
        memset(&c, 0, sizeof(c));
        /* half the time a realistic request, else one of the table's */
        t = rnd() % 2 ? rnd_below(kou_nelem(rnd_seeds)) : rnd_below(seeds);
        if (t < kou_nelem(rnd_seeds)) {
            src = rnd_seeds[t];
            n = strlen(src);
        } else {
            /* the table's cases, good or not, are seeds too */
            src = hcases[t - kou_nelem(rnd_seeds)].in;
            n = hcases[t - kou_nelem(rnd_seeds)].len;
        }
        memcpy(buf, src, n);
        n = mutate(buf, n);
        c.in = (const char *) buf;
        c.len = n;
        /* limits that fall inside the input, one time in four */
        if (rnd() % 4 == 0) {
            c.rl = 1 + rnd_below(n + 2);
            c.hb = 1 + rnd_below(n + 4);
            c.mh = 1 + rnd_below(12);
        }
        snprintf(label, sizeof(label), "seed %#" PRIx64 " group %d input %d:"
                 " %s", rnd_seed, _i, i, show(c.in, c.len));
        rc = run_random(&c, label, rnd_below(n + 1), i % 64 == 0);
        tally[rc == KOU_OK ? 0 : rc == KOU_AGAIN ? 1 : rc == 400 ? 2
              : rc == 414 ? 3 : rc == 431 ? 4 : rc == 505 ? 5 : 6]++;
    }
    /* a generator that only made 400s would test little: say what it made */
    printf("http_parse: random group %d (seed %#" PRIx64 "): %d inputs: "
           "%zu ok, %zu again, %zu 400, %zu 414, %zu 431, %zu 505, "
           "%zu other\n", _i, rnd_seed, RND_PER, tally[0], tally[1],
           tally[2], tally[3], tally[4], tally[5], tally[6]);
    CHECK(tally[0] > RND_PER / 50 && tally[2] > RND_PER / 50,
          "the mutations are too one-sided");
}
END_TEST

/* ---- the kernels themselves, every tier against the scalar ones ---- */

#define KERN_ROUNDS 40000

/*
 * Random bytes around every class boundary, scanned from random starts to
 * random ends, the end flush against a guard page and, the other time,
 * the buffer's start right after one. A kernel that differs from the
 * scalar one anywhere, its SPs included, fails here even when the parser
 * would have reached the same status anyway.
 */
START_TEST(test_kernels)
{
    static const char alpha[] = " \r\n\t\0\x01\x1f\x7f\x80\xff:/?%#\"()@"
                                "aZ09-._~!$&'*+,;=|^`{}[]\\<>";
    const kou_http_kernels_t *ref = &kou_http_kernels_scalar, *k;
    u_char                    in[256];
    const u_char             *b;
    kou_http_lines_t          lr, lk;
    kou_http_first_t          fr, fk;
    size_t                    n, i, e, v, set, sr[2], sk[2], r, q;
    int                       round, front;

    kou_http_kernels_prepare();
    rnd_state = rnd_seed ^ 0x4b45524eull;
    for (round = 0; round < KERN_ROUNDS; round++) {
        n = rnd_below(sizeof(in) + 1);
        for (i = 0; i < n; i++) {
            in[i] = rnd() % 4 ? (u_char) alpha[rnd_below(sizeof(alpha) - 1)]
                              : (u_char) rnd();
        }
        e = rnd_below(n + 1);
        i = rnd_below(e + 1);
        front = round & 1;
        /* only buf[0..e) may be read: the rest is not even there */
        b = front ? flush_front(in, e) : flush(in, e);
        for (v = 1; v < nvariants; v++) {
            use_variant(v);
            k = kou_http_kernels;

            r = ref->request_line(b, i, e, sr);
            q = k->request_line(b, i, e, sk);
            CHECK(r == q && sr[0] == sk[0] && sr[1] == sk[1],
                  "%s request_line [%zu,%zu) of %s: %zu %zu %zu, scalar "
                  "%zu %zu %zu", variants[v].name, i, e, show((char *) in, e),
                  q, sk[0], sk[1], r, sr[0], sr[1]);

            r = ref->field_line(b, i, e);
            q = k->field_line(b, i, e);
            CHECK(r == q, "%s field_line [%zu,%zu) of %s: %zu, scalar %zu",
                  variants[v].name, i, e, show((char *) in, e), q, r);

            if (i < e) {
                lr = ref->lines(b, i, e);
                lk = k->lines(b, i, e);
                CHECK(lr.bad == lk.bad && lr.ntc == lk.ntc,
                      "%s lines [%zu,%zu) of %s: %016llx %016llx, scalar "
                      "%016llx %016llx", variants[v].name, i, e,
                      show((char *) in, e), (unsigned long long) lk.bad,
                      (unsigned long long) lk.ntc,
                      (unsigned long long) lr.bad,
                      (unsigned long long) lr.ntc);
            }

            if (e > 0) {
                fr = ref->first(b, e);
                fk = k->first(b, e);
                CHECK(fr.bad == fk.bad && fr.ntc == fk.ntc
                      && fr.npath == fk.npath && fr.nreg == fk.nreg,
                      "%s first [0,%zu) of %s: %016llx %016llx %016llx "
                      "%016llx, scalar %016llx %016llx %016llx %016llx",
                      variants[v].name, e, show((char *) in, e),
                      (unsigned long long) fk.bad,
                      (unsigned long long) fk.ntc,
                      (unsigned long long) fk.npath,
                      (unsigned long long) fk.nreg,
                      (unsigned long long) fr.bad,
                      (unsigned long long) fr.ntc,
                      (unsigned long long) fr.npath,
                      (unsigned long long) fr.nreg);
            }

            for (set = 0; set < KOU_HTTP_SET_FL_BAD; set++) {
                r = ref->span(b, i, e, (unsigned) set);
                q = k->span(b, i, e, (unsigned) set);
                CHECK(r == q, "%s span %zu [%zu,%zu) of %s: %zu, scalar %zu",
                      variants[v].name, set, i, e, show((char *) in, e), q,
                      r);
            }
        }
    }
}
END_TEST

/* ---- tiers: choice and names ---- */

START_TEST(test_tiers)
{
    /* the default: the fastest as measured, AVX2 before AVX-512 */
    static const unsigned order[] = {
        KOU_SIMD_AVX2, KOU_SIMD_AVX512, KOU_SIMD_SSE42, KOU_SIMD_SCALAR
    };
    const char *best = NULL;
    unsigned    t;

    for (t = 0; best == NULL; t++) {
        if (kou_http_parser_tier_available(order[t])) {
            best = kou_http_parser_tier_name(order[t]);
        }
    }

    ck_assert(kou_http_parser_tier_available(KOU_SIMD_SCALAR));
    ck_assert(!kou_http_parser_tier_available(KOU_SIMD_COUNT));
    ck_assert_int_eq(kou_http_parser_set_tier(KOU_SIMD_COUNT), KOU_ERROR);
    ck_assert_str_eq(kou_http_parser_tier_name(KOU_SIMD_AVX2), "avx2");
    ck_assert_str_eq(kou_http_parser_tier_name(99), "unknown");

    for (t = 0; t < KOU_SIMD_COUNT; t++) {
        if (!kou_http_parser_tier_available(t)) {
            ck_assert_int_eq(kou_http_parser_set_tier(t), KOU_ERROR);
            continue;
        }
        /* KOURIER_SIMD forces a tier the CPU has */
        ck_assert_int_eq(setenv("KOURIER_SIMD",
                                kou_http_parser_tier_name(t), 1), 0);
        ck_assert_int_eq(kou_http_parser_select(), KOU_OK);
        ck_assert_str_eq(kou_http_parser_tier(), kou_http_parser_tier_name(t));
    }

    /* unset, the default; named wrongly, the same and an error */
    unsetenv("KOURIER_SIMD");
    ck_assert_int_eq(kou_http_parser_select(), KOU_OK);
    ck_assert_str_eq(kou_http_parser_tier(), best);
    setenv("KOURIER_SIMD", "mmx", 1);
    ck_assert_int_eq(kou_http_parser_select(), KOU_ERROR);
    ck_assert_str_eq(kou_http_parser_tier(), best);
    unsetenv("KOURIER_SIMD");
}
END_TEST

/* ---- limits on partial input, at realistic sizes ---- */

START_TEST(test_request_line_limit_partial)
{
    kou_http_limits_t lim = { 8192, 65536, 100 };
    kou_header_t      h[100];
    kou_http_parser_t p;
    static char       in[9000];
    const u_char     *b;
    size_t            n;

    memset(in, 'a', sizeof(in));
    memcpy(in, "GET /", 5);
    kou_http_parser_init(&p, &lim, h);
    /* fed in uneven pieces: AGAIN up to the limit, 414 one byte past it */
    for (n = 1; n <= 8192; n += 997) {
        b = flush(in, n);
        ck_assert_int_eq(kou_http_parse_request(&p, b, n), KOU_AGAIN);
    }
    b = flush(in, 8192);
    ck_assert_int_eq(kou_http_parse_request(&p, b, 8192), KOU_AGAIN);
    b = flush(in, 8193);
    ck_assert_int_eq(kou_http_parse_request(&p, b, 8193), 414);

    /* whole, the same */
    kou_http_parser_init(&p, &lim, h);
    b = flush(in, sizeof(in));
    ck_assert_int_eq(kou_http_parse_request(&p, b, sizeof(in)), 414);
}
END_TEST

START_TEST(test_header_block_limit_partial)
{
    kou_http_limits_t lim = { 8192, 4096, 100 };
    kou_header_t      h[100];
    kou_http_parser_t p;
    static char       in[5000];
    const u_char     *b;
    size_t            n;

    memset(in, 'v', sizeof(in));
    memcpy(in, RQ "Cookie: ", sizeof(RQ "Cookie: ") - 1);
    kou_http_parser_init(&p, &lim, h);
    for (n = 1; n <= 4096; n += 401) {
        b = flush(in, n);
        ck_assert_int_eq(kou_http_parse_request(&p, b, n), KOU_AGAIN);
    }
    b = flush(in, 4096);
    ck_assert_int_eq(kou_http_parse_request(&p, b, 4096), KOU_AGAIN);
    b = flush(in, 4097);
    ck_assert_int_eq(kou_http_parse_request(&p, b, 4097), 431);
}
END_TEST

START_TEST(test_field_count_limit)
{
    kou_http_limits_t lim = { 8192, 65536, 100 };
    kou_header_t      h[100];
    kou_http_parser_t p;
    static char       in[4096];
    const u_char     *b;
    size_t            n = 0;
    int               i;

    n += (size_t) sprintf(in + n, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (i = 1; i < 100; i++) {
        n += (size_t) sprintf(in + n, "X-%d: %d\r\n", i, i);
    }
    /* exactly 100 fields: accepted */
    memcpy(in + n, "\r\n", 2);
    kou_http_parser_init(&p, &lim, h);
    b = flush(in, n + 2);
    ck_assert_int_eq(kou_http_parse_request(&p, b, n + 2), KOU_OK);
    ck_assert_uint_eq(p.nheaders, 100);
    expect_str(p.headers[99].value, "99", "last field", "100 fields");

    /* the 101st is refused as soon as it is complete */
    n += (size_t) sprintf(in + n, "X-100: 100\r\n");
    kou_http_parser_init(&p, &lim, h);
    b = flush(in, n);
    ck_assert_int_eq(kou_http_parse_request(&p, b, n), 431);
}
END_TEST

/* The caller may move the bytes between calls: slices follow the last. */
START_TEST(test_request_moved)
{
    static const char in[] = "GET /x?y HTTP/1.1\r\nHost: h:1\r\nA: b\r\n\r\n";
    kou_http_limits_t lim = { 1024, 4096, 8 };
    kou_header_t      h[8];
    kou_http_parser_t p;
    u_char            one[64], two[64];

    memcpy(one, in, 20);
    memset(one + 20, 0, sizeof(one) - 20);
    kou_http_parser_init(&p, &lim, h);
    ck_assert_int_eq(kou_http_parse_request(&p, one, 20), KOU_AGAIN);
    memset(one, 0, sizeof(one));
    memcpy(two, in, sizeof(in) - 1);
    ck_assert_int_eq(kou_http_parse_request(&p, two, sizeof(in) - 1),
                     KOU_OK);
    ck_assert_ptr_eq(p.method.p, (const char *) two);
    ck_assert_ptr_eq(p.path.p, (const char *) two + 4);
    ck_assert_ptr_eq(p.host.p, (const char *) two + 25);
    ck_assert_ptr_eq(p.headers[1].value.p, (const char *) two + 33);
    expect_str(p.query, "y", "query", "moved");
    expect_str(p.port, "1", "port", "moved");
}
END_TEST

START_TEST(test_method_names)
{
    static const char *names[KOU_METHOD_COUNT] = {
        "", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
        "TRACE", "PATCH"
    };
    unsigned i;

    for (i = 0; i < KOU_METHOD_COUNT; i++) {
        expect_str(kou_http_method_name(i), names[i], "name", names[i]);
    }
    expect_str(kou_http_method_name(KOU_METHOD_COUNT), "", "name", "out");
    expect_str(kou_http_method_name(~0u), "", "name", "out");
}
END_TEST

/* ---- chunked decoder (RFC 9112 §7.1) ---- */

typedef struct {
    const char *in;
    size_t      len;
    int         rc;        /* KOU_DONE, KOU_AGAIN, 400, 431 */
    const char *data;      /* payload delivered, for DONE and AGAIN */
    size_t      dlen;
    size_t      used;      /* bytes of body when DONE, if not all */
    size_t      maxtr;     /* 0: 1024 */
} ccase_t;

#define D(s) .data = (s), .dlen = sizeof(s) - 1
#define END  "0\r\n\r\n"

static const ccase_t ccases[] = {
    { IN(END), .rc = KOU_DONE, D("") },
    { IN("000\r\n\r\n"), .rc = KOU_DONE, D("") },
    { IN("5\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5\r\nhello\r\n6\r\n world\r\n" END), .rc = KOU_DONE,
      D("hello world") },
    { IN("A\r\n0123456789\r\n" END), .rc = KOU_DONE, D("0123456789") },
    { IN("a\r\n0123456789\r\n" END), .rc = KOU_DONE, D("0123456789") },
    { IN("1e\r\nall your base are belong to us\r\n" END), .rc = KOU_DONE,
      D("all your base are belong to us") },
    { IN("0005\r\nhello\r\n000\r\n\r\n"), .rc = KOU_DONE, D("hello") },
    { IN("00000000000000000000001\r\nx\r\n" END), .rc = KOU_DONE, D("x") },
    { IN("3\r\n\r\n\0\r\n" END), .rc = KOU_DONE, D("\r\n\0") },
    /* chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / qs ) ] ) */
    { IN("5;a\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;a=b\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5 ;a=b\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5\t; \ta\t = \tb\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;a;b;c=d\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;a=\"q\"\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;a=\"\"\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;a=\"x y;z=,\"\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;a=\"\\\"x\\\\\"\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;a=\"\xff\\\xfe\"\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;a=\"x\"\t;b\r\nhello\r\n" END), .rc = KOU_DONE, D("hello") },
    { IN("5;ilovew3;somuchlove=aretheseparametersfor;another=withvalue\r\n"
         "hello\r\n6;blahblah;blah\r\n world\r\n" END), .rc = KOU_DONE,
      D("hello world") },
    { IN("5;ilovew3=\"I \\\"love\\\"; \\\\extensions\\\\\";somuchlove="
         "\"aretheseparametersfor\";blah;foo=bar\r\nhello\r\n" END),
      .rc = KOU_DONE, D("hello") },
    { IN("0;a=b\r\n\r\n"), .rc = KOU_DONE, D("") },
    /* trailer section */
    { IN("5\r\nhello\r\n0\r\nVary: *\r\nContent-Type: text/plain\r\n\r\n"),
      .rc = KOU_DONE, D("hello") },
    { IN("0\r\nX:\r\n\r\n"), .rc = KOU_DONE, D("") },
    { IN("0\r\nX:  a \t\r\n\r\n"), .rc = KOU_DONE, D("") },
    { IN("0\r\nX: D\xc3\xbcsseldorf\r\n\r\n"), .rc = KOU_DONE, D("") },
    /* the body ends; the next request is not ours */
    { IN(END "GET / HTTP/1.1\r\n"), .rc = KOU_DONE, D(""), .used = 5 },
    { IN("1\r\nx\r\n" END "\r\n"), .rc = KOU_DONE, D("x"), .used = 11 },
    /* incomplete */
    { IN(""), .rc = KOU_AGAIN, D("") },
    { IN("5\r\nhel"), .rc = KOU_AGAIN, D("hel") },
    { IN("5\r\nhello\r\n0\r\n"), .rc = KOU_AGAIN, D("hello") },
    { IN("5\r\nhello\r\n0\r\nX: y\r\n"), .rc = KOU_AGAIN, D("hello") },
    { IN("ffffffffffffffff\r\nabc"), .rc = KOU_AGAIN, D("abc") },
    { IN("0000000000000000ffffffffffffffff;x=y\r\nab"), .rc = KOU_AGAIN,
      D("ab") },
    /* chunk-size */
    { IN("10000000000000000\r\n"), .rc = 400 },
    { IN("fffffffffffffffff\r\n"), .rc = 400 },
    { IN("x\r\n"), .rc = 400 },
    { IN("\r\n"), .rc = 400 },
    { IN(" 5\r\nhello\r\n" END), .rc = 400 },
    { IN("-5\r\n"), .rc = 400 },
    { IN("+5\r\n"), .rc = 400 },
    { IN("0x5\r\n"), .rc = 400 },
    { IN("5 \r\nhello\r\n" END), .rc = 400 },
    { IN("a \r\n0123456789\r\n" END), .rc = 400 },
    { IN("2 erfrferferf\r\naa\r\n0 rrrr\r\n\r\n"), .rc = 400 },
    /* line ends */
    { IN("5\nhello\r\n" END), .rc = 400 },
    { IN("5\rXhello\r\n" END), .rc = 400 },
    { IN("5\r\r;ABCD\r\n34\r\nE\r\n" END), .rc = 400 },
    { IN("3 \n  \r\nfoo\r\n" END), .rc = 400 },
    { IN("5\r\nhello\n" END), .rc = 400 },
    { IN("5\r\nhello\r\r\n" END), .rc = 400 },
    { IN("5\r\nhelloX\r\n" END), .rc = 400 },
    { IN("5\r\nABCDE0\r\n"), .rc = 400 },
    { IN("5\r\nhell\r\n" END), .rc = 400 },
    { IN("3\r\nfoo\r\n\r\n"), .rc = 400 },
    /* chunk-ext */
    { IN("2;\r\naa\r\n" END), .rc = 400 },
    { IN("5;=b\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=b;\r\nhello\r\n" END), .rc = 400 },
    { IN("5;;a\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a \r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=b \r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=\"b\" \r\nhello\r\n" END), .rc = 400 },
    { IN("5;a b\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=b c\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=@\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=\x80\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=\"b\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=\"b\"c\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=\"\x01\"\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=\"\\\x01\"\r\nhello\r\n" END), .rc = 400 },
    { IN("5;a=\"\x7f\"\r\nhello\r\n" END), .rc = 400 },
    { IN("5;ilovew3=\"abc\";somuchlove=\"def; ghi\r\nhello\r\n" END),
      .rc = 400 },
    { IN("5;a\0\r\nhello\r\n" END), .rc = 400 },
    /* trailer fields */
    { IN("0\r\n Foo: x\r\n\r\n"), .rc = 400 },
    { IN("0\r\n\tFoo: x\r\n\r\n"), .rc = 400 },
    { IN("0\r\nFoo: x\r\n y\r\n\r\n"), .rc = 400 },
    { IN("0\r\n: x\r\n\r\n"), .rc = 400 },
    { IN("0\r\nFoo : x\r\n\r\n"), .rc = 400 },
    { IN("0\r\nFoo\r\n\r\n"), .rc = 400 },
    { IN("0\r\nF@o: x\r\n\r\n"), .rc = 400 },
    { IN("0\r\nFoo: a\x01\r\n\r\n"), .rc = 400 },
    { IN("0\r\nFoo: a\0\r\n\r\n"), .rc = 400 },
    { IN("0\r\nFoo: a\nBar: b\r\n\r\n"), .rc = 400 },
    { IN("0\r\nFoo: a\r\n\n"), .rc = 400 },
    { IN("0\r\nFoo: a\rBar: b\r\n\r\n"), .rc = 400 },
    { IN("0\r\n\n"), .rc = 400 },
    { IN("0\r\n\r\r"), .rc = 400 },
    { IN("0\n\r\n"), .rc = 400 },
    /* trailer limit: "X: ab\r\n" is 7 bytes; the final CRLF is not counted */
    { IN("0\r\nX: ab\r\n\r\n"), .rc = KOU_DONE, D(""), .maxtr = 7 },
    { IN("0\r\nX: ab\r\n\r\n"), .rc = 431, .maxtr = 6 },
    { IN("0\r\nX-Long: abcdefghijklmnopqrstuvwxyz"), .rc = 431, .maxtr = 10 },
    { IN("0\r\nX: a\r\nY: b\r\nZ: c\r\n\r\n"), .rc = 431, .maxtr = 15 },
};

/*
 * Feed the body in pieces of the given sizes (the last piece takes the
 * rest), each piece flush against the guard page, calling again while the
 * decoder says KOU_OK. Collects the payload; returns the final status.
 */
static int
feed_chunked(const char *in, size_t len, size_t maxtr, const size_t *cuts,
             size_t ncuts, char *out, size_t *outn, size_t *used)
{
    kou_http_chunked_t ch;
    const u_char      *b;
    kou_str_t          d;
    size_t             off = 0, piece, got, k = 0;
    int                rc = KOU_AGAIN;

    kou_http_chunked_init(&ch, maxtr);
    *outn = 0;
    *used = 0;
    while (off < len || k == 0) {
        piece = k < ncuts ? kou_min(cuts[k], len - off) : len - off;
        k++;
        b = flush(in + off, piece);
        do {
            rc = kou_http_parse_chunked(&ch, b, piece, &got, &d);
            CHECK(got <= piece, "consumed more than given");
            /* KOU_OK means "call again with the rest": there is a rest */
            CHECK(rc != KOU_OK || got < piece, "KOU_OK with nothing left");
            CHECK(rc != KOU_AGAIN || got == piece, "KOU_AGAIN left bytes");
            CHECK((uintptr_t) d.p >= (uintptr_t) b
                  && (uintptr_t) d.p + d.n <= (uintptr_t) b + got,
                  "payload outside what was consumed");
            memcpy(out + *outn, d.p, d.n);
            *outn += d.n;
            *used += got;
            b += got;
            piece -= got;
            off += got;
        } while (rc == KOU_OK);
        if (rc != KOU_AGAIN) {
            return rc;
        }
        CHECK(piece == 0, "KOU_AGAIN left bytes unconsumed");
        if (len == 0) {
            break;
        }
    }
    return rc;
}

static void
run_chunked(const ccase_t *c, const char *label)
{
    char   want[4096], got[4096];
    size_t wn, gn, wu, gu, s, k, maxtr = c->maxtr ? c->maxtr : 1024;
    size_t cuts[2], ones[4096];
    int    rc, rc2;

    rc = feed_chunked(c->in, c->len, maxtr, NULL, 0, want, &wn, &wu);
    CHECK(rc == c->rc, "%s: status %d, expected %d", label, rc,
                  c->rc);
    if (rc == KOU_DONE || rc == KOU_AGAIN) {
        CHECK(wn == c->dlen && memcmp(want, c->data, wn) == 0,
                      "%s: payload \"%s\"", label, show(want, wn));
    }
    if (rc == KOU_DONE) {
        CHECK(wu == (c->used ? c->used : c->len),
                      "%s: consumed %zu", label, wu);
    }

    for (k = 0; k < c->len; k++) {
        ones[k] = 1;
    }
    rc2 = feed_chunked(c->in, c->len, maxtr, ones, c->len, got, &gn, &gu);
    CHECK(rc2 == rc, "%s: byte by byte %d, whole %d", label, rc2,
                  rc);
    if (rc == KOU_DONE || rc == KOU_AGAIN) {
        CHECK(gn == wn && memcmp(got, want, wn) == 0 && gu == wu,
                      "%s: byte by byte payload differs", label);
    }

    for (s = 1; s < c->len; s++) {
        cuts[0] = s;
        rc2 = feed_chunked(c->in, c->len, maxtr, cuts, 1, got, &gn, &gu);
        CHECK(rc2 == rc, "%s: split at %zu %d, whole %d", label, s,
                      rc2, rc);
        if (rc == KOU_DONE || rc == KOU_AGAIN) {
            CHECK(gn == wn && memcmp(got, want, wn) == 0
                          && gu == wu,
                          "%s: split at %zu payload differs", label, s);
        }
    }
}

START_TEST(test_chunked_table)
{
    char   label[640];
    size_t i;

    for (i = (size_t) _i * GROUP;
         i < kou_min((size_t) (_i + 1) * GROUP, kou_nelem(ccases)); i++)
    {
        snprintf(label, sizeof(label), "chunked %zu: %s", i,
                 show(ccases[i].in, ccases[i].len));
        run_chunked(&ccases[i], label);
    }
}
END_TEST

typedef struct {
    const char *pre, *post;
    bool      (*ok)(int c);
} cposition_t;

static bool
pos_ext_name(int c)
{
    return is_tchar(c) || c == '=' || c == ';';
}

static bool
pos_ext_value(int c)
{
    return is_tchar(c) || c == ' ' || c == '\t';
}

static bool
pos_quoted_pair(int c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static const cposition_t cpositions[] = {
    { "1;a", "c\r\nx\r\n" END, pos_ext_name },
    { "1;a=", "c\r\nx\r\n" END, pos_ext_value },
    { "1;a=\"", "\"\r\nx\r\n" END, is_qdtext },
    { "1;a=\"\\", "\"\r\nx\r\n" END, pos_quoted_pair },
    { "0\r\nX", "Y: v\r\n\r\n", pos_name },
    { "0\r\nX: a", "c\r\n\r\n", is_field_byte },
};

START_TEST(test_chunked_bytes)
{
    const cposition_t *ps = &cpositions[_i];
    char               in[64], out[64], label[256];
    size_t             n1 = strlen(ps->pre), n2 = strlen(ps->post), on, u;
    size_t             len, s, cuts[1];
    int                b, rc, want;

    for (b = 0; b < 256; b++) {
        memcpy(in, ps->pre, n1);
        in[n1] = (char) b;
        memcpy(in + n1 + 1, ps->post, n2);
        len = n1 + 1 + n2;
        snprintf(label, sizeof(label), "byte 0x%02x in %s", b, show(in, len));
        want = ps->ok(b) ? KOU_DONE : 400;
        rc = feed_chunked(in, len, 1024, NULL, 0, out, &on, &u);
        CHECK(rc == want, "%s: status %d, expected %d", label, rc,
                      want);
        for (s = 1; s < len; s++) {
            cuts[0] = s;
            rc = feed_chunked(in, len, 1024, cuts, 1, out, &on, &u);
            CHECK(rc == want, "%s: split at %zu: %d", label, s, rc);
        }
    }
}
END_TEST

/*
 * The chunk-size line, size and extensions, is bounded: a client cannot
 * keep the decoder reading one forever. The byte past the bound is 400,
 * however the line arrives; the bound is per line.
 */
START_TEST(test_chunk_line_limit)
{
    enum { M = KOU_HTTP_CHUNK_LINE_MAX };
    static char   in[3 * M];
    static size_t ones[3 * M];
    static const struct {
        const char *head;   /* then `fill` up to `line` bytes, then tail */
        char        fill;
        size_t      line;
        const char *tail;
        int         rc;
    } cs[] = {
        { "1;", 'a', M, "\r\nx\r\n0\r\n\r\n", KOU_DONE },
        { "1;", 'a', M + 1, "\r\nx\r\n0\r\n\r\n", 400 },
        { "1", ' ', M, ";a\r\nx\r\n0\r\n\r\n", 400 },
        { "0;", 'b', M + 1, "\r\n\r\n", 400 },
        { "", '0', M, "\r\n\r\n", KOU_DONE },
        { "", '0', M, "1\r\nx\r\n0\r\n\r\n", 400 },
        { "1;x=\"", 'q', M - 1, "\"\r\nx\r\n0\r\n\r\n", KOU_DONE },
        { "1;x=\"", 'q', M, "\"\r\nx\r\n0\r\n\r\n", 400 },
    };
    char   out[64];
    size_t i, n, h, on, u, s, cuts[1];
    int    rc;

    for (i = 0; i < 3 * M; i++) {
        ones[i] = 1;
    }
    for (i = 0; i < kou_nelem(cs); i++) {
        h = strlen(cs[i].head);
        memcpy(in, cs[i].head, h);
        n = cs[i].line;
        memset(in + h, cs[i].fill, n - h);
        memcpy(in + n, cs[i].tail, strlen(cs[i].tail));
        n += strlen(cs[i].tail);

        rc = feed_chunked(in, n, 1024, NULL, 0, out, &on, &u);
        CHECK(rc == cs[i].rc, "line case %zu: status %d", i, rc);
        /* every 400 here is the byte at offset M of the line */
        CHECK(rc != 400 || u == M, "line case %zu: 400 after %zu bytes", i,
              u);
        rc = feed_chunked(in, n, 1024, ones, n, out, &on, &u);
        CHECK(rc == cs[i].rc, "line case %zu byte by byte: %d", i, rc);
        for (s = 1; s < n; s += 509) {
            cuts[0] = s;
            rc = feed_chunked(in, n, 1024, cuts, 1, out, &on, &u);
            CHECK(rc == cs[i].rc, "line case %zu split at %zu: %d", i, s,
                  rc);
        }
    }

    /* the bound is per line: two long ones in a row are fine */
    n = 0;
    for (i = 0; i < 2; i++) {
        memcpy(in + n, "1;", 2);
        memset(in + n + 2, 'e', M - 2);
        memcpy(in + n + M, "\r\nz\r\n", 5);
        n += M + 5;
    }
    memcpy(in + n, "0\r\n\r\n", 5);
    n += 5;
    rc = feed_chunked(in, n, 1024, NULL, 0, out, &on, &u);
    ck_assert_int_eq(rc, KOU_DONE);
    ck_assert_uint_eq(on, 2);
}
END_TEST

/* A chunk larger than any buffer is streamed in pieces as it comes. */
START_TEST(test_chunked_streaming)
{
    kou_http_chunked_t ch;
    kou_str_t          d;
    size_t             used;
    static u_char      body[70000];
    size_t             off = 0, total = 0, piece;

    memcpy(body, "10000\r\n", 7);           /* 65536 bytes */
    memset(body + 7, 'z', 65536);
    memcpy(body + 7 + 65536, "\r\n0\r\n\r\n", 7);
    kou_http_chunked_init(&ch, 0);

    while (off < 7 + 65536 + 7) {
        piece = kou_min((size_t) 1000, 7 + 65536 + 7 - off);
        int rc = kou_http_parse_chunked(&ch, body + off, piece, &used, &d);
        total += d.n;
        off += used;
        if (rc == KOU_DONE) {
            break;
        }
        CHECK(rc == KOU_AGAIN || rc == KOU_OK, "status %d", rc);
        CHECK(d.n == 0 || d.p[0] == 'z', "payload is not the chunk's");
    }
    ck_assert_uint_eq(total, 65536);
    ck_assert_uint_eq(off, 7 + 65536 + 7);
    /* done is done */
    ck_assert_int_eq(kou_http_parse_chunked(&ch, body, 5, &used, &d),
                     KOU_DONE);
    ck_assert_uint_eq(used, 0);
}
END_TEST

static Suite *
http_parse_suite(void)
{
    Suite *s = suite_create("http_parse");
    TCase *tc;

    tc = tcase_create("request");
    tcase_add_checked_fixture(tc, guard_setup, NULL);
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_request_table, 0, NGROUPS(hcases));
    tcase_add_loop_test(tc, test_request_bytes, 0,
                        (int) kou_nelem(positions));
    tcase_add_test(tc, test_request_line_limit_partial);
    tcase_add_test(tc, test_header_block_limit_partial);
    tcase_add_test(tc, test_field_count_limit);
    tcase_add_test(tc, test_request_moved);
    tcase_add_test(tc, test_method_names);
    tcase_add_loop_test(tc, test_request_lengths, 0, LEN_KINDS);
    tcase_add_loop_test(tc, test_request_random, 0, RND_GROUPS);
    tcase_add_test(tc, test_kernels);
    tcase_add_test(tc, test_tiers);
    suite_add_tcase(s, tc);

    tc = tcase_create("chunked");
    tcase_add_checked_fixture(tc, guard_setup, NULL);
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_chunked_table, 0, NGROUPS(ccases));
    tcase_add_loop_test(tc, test_chunked_bytes, 0,
                        (int) kou_nelem(cpositions));
    tcase_add_test(tc, test_chunked_streaming);
    tcase_add_test(tc, test_chunk_line_limit);
    suite_add_tcase(s, tc);

    return s;
}

int
main(void)
{
    SRunner *sr;
    int      failed;

    if (getenv("KOU_TEST_SEED") != NULL) {
        rnd_seed = strtoull(getenv("KOU_TEST_SEED"), NULL, 0);
    }
    printf("http_parse: random seed %#" PRIx64 " (KOU_TEST_SEED to change)"
           "\n", rnd_seed);
    variants_setup();
    fflush(stdout);
    sr = srunner_create(http_parse_suite());

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
