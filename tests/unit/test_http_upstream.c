/*
 * The upstream response parser (http_upstream.c) against RFC 9112: status
 * line, field syntax, framing (section 6.3) and the smuggling cases a proxy
 * must refuse; and the chunked decoder as modules reach it.
 *
 * Every case is parsed whole, then at every shorter length: a valid head
 * must say "need more" (KOU_AGAIN) at every prefix, and an invalid one may
 * be refused early but, once refused, must stay refused as bytes are added.
 * Each buffer ends flush against a PROT_NONE page, so an over-read crashes,
 * and body bytes after a head (NUL bytes among them) must not change the
 * verdict.
 */

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "http_upstream.h"

#define CHECK(cond, ...)              \
    do {                              \
        if (!(cond)) {                \
            ck_abort_msg(__VA_ARGS__); \
        }                             \
    } while (0)

/* ---- guard page ---- */

#define ARENA (64 * 1024)

static u_char *arena;

static void
guard_setup(void)
{
    long    pg = sysconf(_SC_PAGESIZE);
    u_char *m;

    m = mmap(NULL, ARENA + (size_t) pg, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert(m != MAP_FAILED);
    ck_assert_int_eq(mprotect(m + ARENA, (size_t) pg, PROT_NONE), 0);
    arena = m;
}

/* n bytes of s, ending at the guard page. */
static const u_char *
flush(const void *s, size_t n)
{
    u_char *d = arena + ARENA - n;

    CHECK(n <= ARENA, "input too large");
    memmove(d, s, n);
    return d;
}

static kou_header_t fields[16];

static int
parse(const void *s, size_t n, bool head, kou_response_head_t *h)
{
    memset(h, 0, sizeof(*h));
    h->size = sizeof(*h);
    h->headers = fields;
    h->max_headers = 16;
    h->max_head = 4096;
    return kou_http_parse_response(flush(s, n), n, head, h);
}

/* ---- the table ---- */

#define ANY -2   /* content_length not checked */

typedef struct {
    const char *in;
    bool        head;        /* the request was HEAD */
    int         rc;          /* KOU_OK or KOU_ERROR */
    int         status;
    int         body;        /* KOU_BODY_* */
    int64_t     length;      /* content_length, or ANY */
    unsigned    flags;
    const char *error;       /* substring of h->error */
} kou_case_t;

#define OK_(in, st, body, len, fl) \
    { in, false, KOU_OK, st, body, len, fl, NULL }
#define HEAD_(in, st, body, len) \
    { in, true, KOU_OK, st, body, len, 0, NULL }
#define BAD_(in, err) \
    { in, false, KOU_ERROR, 0, 0, ANY, 0, err }

static const kou_case_t cases[] = {
    /* framing */
    OK_("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 200,
        KOU_BODY_LENGTH, 5, 0),
    OK_("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200,
        KOU_BODY_LENGTH, 0, 0),
    OK_("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 200,
        KOU_BODY_CHUNKED, -1, 0),
    OK_("HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n", 200,
        KOU_BODY_CHUNKED, -1, 0),
    OK_("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 200,
        KOU_BODY_CHUNKED, -1, KOU_RESP_TE_OTHER),
    OK_("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n"
        "Transfer-Encoding: chunked\r\n\r\n", 200, KOU_BODY_CHUNKED, -1,
        KOU_RESP_TE_OTHER),
    OK_("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 200,
        KOU_BODY_CLOSE, -1, KOU_RESP_TE_OTHER),
    OK_("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 200,
        KOU_BODY_CLOSE, -1, KOU_RESP_TE_OTHER),
    OK_("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", 200,
        KOU_BODY_CHUNKED, -1, 0),
    OK_("HTTP/1.1 200 OK\r\n\r\n", 200, KOU_BODY_CLOSE, -1, 0),
    OK_("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", 200,
        KOU_BODY_LENGTH, 3, 0),
    OK_("HTTP/1.1 204 No Content\r\n\r\n", 204, KOU_BODY_NONE, -1, 0),
    OK_("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 304,
        KOU_BODY_NONE, 10, 0),
    OK_("HTTP/1.1 100 Continue\r\n\r\n", 100, KOU_BODY_NONE, -1, 0),
    OK_("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 103,
        KOU_BODY_NONE, -1, 0),
    OK_("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\n\r\n", 101, KOU_BODY_NONE, -1,
        KOU_RESP_UPGRADE),
    HEAD_("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 200,
          KOU_BODY_NONE, 1000),
    HEAD_("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 200,
          KOU_BODY_NONE, -1),
    /* equal lengths, repeated or listed, are one length */
    OK_("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n",
        200, KOU_BODY_LENGTH, 7, 0),
    OK_("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", 200,
        KOU_BODY_LENGTH, 7, 0),
    OK_("HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n", 200,
        KOU_BODY_LENGTH, 7, 0),
    OK_("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\n",
        200, KOU_BODY_LENGTH, INT64_MAX, 0),
    /* connection tokens */
    OK_("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        200, KOU_BODY_LENGTH, 0, KOU_RESP_CLOSE),
    OK_("HTTP/1.0 200 OK\r\nConnection: Keep-Alive, X-Foo\r\n"
        "Content-Length: 0\r\n\r\n", 200, KOU_BODY_LENGTH, 0,
        KOU_RESP_KEEP_ALIVE),
    /* status line details */
    OK_("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", 200, KOU_BODY_LENGTH,
        0, 0),
    OK_("HTTP/1.1 599 Whatever it is\t(tab)\r\n\r\n", 599, KOU_BODY_CLOSE,
        -1, 0),
    OK_("HTTP/1.1 200 \xc3\xa9t\xc3\xa9\r\nX: caf\xc3\xa9\r\n\r\n", 200,
        KOU_BODY_CLOSE, -1, 0),
    OK_("HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n", 200,
        KOU_BODY_LENGTH, 0, 0),
    OK_("HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Sp:   \r\n\r\n", 200,
        KOU_BODY_CLOSE, -1, 0),

    /* smuggling and ambiguity */
    BAD_("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
         "Transfer-Encoding: chunked\r\n\r\n", "Content-Length"),
    BAD_("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
         "Content-Length: 5\r\n\r\n", "Content-Length"),
    BAD_("HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n"
         "Content-Length: 0\r\n\r\n", "Content-Length"),
    BAD_("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
         "differing"),
    BAD_("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", "differing"),
    BAD_("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", "Content-Length"),
    BAD_("HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n", "Content-Length"),
    BAD_("HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n", "Content-Length"),
    BAD_("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", "Content-Length"),
    BAD_("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n",
         "overflow"),
    BAD_("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
         "twice"),
    BAD_("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
         "Transfer-Encoding: chunked\r\n\r\n", "twice"),
    BAD_("HTTP/1.1 200 OK\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
         "Transfer-Encoding"),
    BAD_("HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n", "Transfer-Encoding"),
    BAD_("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "1.0"),

    /* status line */
    BAD_("HTTP/1.1 20 OK\r\n\r\n", "status code"),
    BAD_("HTTP/1.1 2000 OK\r\n\r\n", "SP after the status"),
    BAD_("HTTP/1.1 099 OK\r\n\r\n", "status code"),
    BAD_("HTTP/1.1 600 OK\r\n\r\n", "status code"),
    BAD_("HTTP/1.1 200OK\r\n\r\n", "SP after the status"),
    BAD_("HTTP/1.1 200\r\n\r\n", "SP after the status"),
    BAD_("HTTP/1.1  200 OK\r\n\r\n", "status code"),
    BAD_("http/1.1 200 OK\r\n\r\n", "HTTP/1.x"),
    BAD_("HTTP/2 200 OK\r\n\r\n", "HTTP/1.x"),
    BAD_("HTTP/2.0 200 OK\r\n\r\n", "HTTP/1.x"),
    BAD_("HTTP/1.x 200 OK\r\n\r\n", "version"),
    BAD_("HTTP/1.10 200 OK\r\n\r\n", "SP after the version"),
    BAD_(" HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.x"),
    BAD_("\r\nHTTP/1.1 200 OK\r\n\r\n", "HTTP/1.x"),
    BAD_("HTTP/1.1 200 OK\n\r\n", "reason"),
    BAD_("HTTP/1.1 200 O\x01K\r\n\r\n", "reason"),
    BAD_("HTTP/1.1 200 O\x7fK\r\n\r\n", "reason"),
    BAD_("HTTP/1.1 200 OK\rX\r\n\r\n", "CR not followed by LF"),

    /* fields */
    BAD_("HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", "whitespace before the colon"),
    BAD_("HTTP/1.1 200 OK\r\nX-A\t: 1\r\n\r\n",
         "whitespace before the colon"),
    BAD_("HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", "obs-fold"),
    BAD_("HTTP/1.1 200 OK\r\nX-A: 1\r\n\tfolded\r\n\r\n", "obs-fold"),
    BAD_("HTTP/1.1 200 OK\r\n: empty\r\n\r\n", "empty field name"),
    BAD_("HTTP/1.1 200 OK\r\nX(A): 1\r\n\r\n", "field name"),
    BAD_("HTTP/1.1 200 OK\r\nX-A 1\r\n\r\n", "whitespace before the colon"),
    BAD_("HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "field name"),
    BAD_("HTTP/1.1 200 OK\r\nX-A: a\x01" "b\r\n\r\n", "control byte"),
    BAD_("HTTP/1.1 200 OK\r\nX-A: a\x7f" "b\r\n\r\n", "control byte"),
    BAD_("HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n", "CR not followed by LF"),
    BAD_("HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\r\n", "bare LF"),
    BAD_("HTTP/1.1 200 OK\r\nX-A: 1\r\n\n", "field name"),
    BAD_("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\r\n", "CR not followed by LF"),
};

/* NUL bytes in heads: string literals cannot carry them in the table. */
#define NUL_(s) { s, sizeof(s) - 1 }

static const struct {
    const char *in;
    size_t      n;
} nul_cases[] = {
    NUL_("HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n"),
    NUL_("HTTP/1.1 200 O\0K\r\n\r\n"),
    NUL_("HTTP/1.1 2\0" "0 OK\r\n\r\n"),
    NUL_("HTTP/1.1 200 OK\r\nX\0A: 1\r\n\r\n"),
    NUL_("HTTP\0/1.1 200 OK\r\n\r\n"),
    NUL_("HTTP/1.1 200 OK\r\n\0\r\n\r\n"),
};

static void
check_ok(const kou_case_t *c, const kou_response_head_t *h, size_t n)
{
    CHECK(h->status == c->status, "%s: status %d, want %d", c->in, h->status,
          c->status);
    CHECK(h->body == c->body, "%s: body %d, want %d", c->in, h->body,
          c->body);
    CHECK(c->length == ANY || h->content_length == c->length,
          "%s: content_length %lld, want %lld", c->in,
          (long long) h->content_length, (long long) c->length);
    CHECK(h->flags == c->flags, "%s: flags %#x, want %#x", c->in, h->flags,
          c->flags);
    CHECK(h->head_len == n, "%s: head_len %zu, want %zu", c->in, h->head_len,
          n);
}

START_TEST(test_table)
{
    const kou_case_t   *c = &cases[_i];
    size_t              n = strlen(c->in), refused = 0;
    kou_response_head_t h;
    char                buf[1024];
    int                 rc;

    rc = parse(c->in, n, c->head, &h);
    CHECK(rc == c->rc, "%s: rc %d, want %d (%s)", c->in, rc, c->rc,
          h.error ? h.error : "");
    if (rc == KOU_OK) {
        check_ok(c, &h, n);
        CHECK(h.error == NULL, "%s: error set on success", c->in);
        /* body bytes, NUL and CR LF among them, change nothing */
        CHECK(n + 6 < sizeof(buf), "case too long");
        memcpy(buf, c->in, n);
        memcpy(buf + n, "\0\r\nab\n", 6);
        rc = parse(buf, n + 6, c->head, &h);
        CHECK(rc == KOU_OK, "%s + body: rc %d", c->in, rc);
        check_ok(c, &h, n);
    } else {
        CHECK(h.error != NULL && strstr(h.error, c->error) != NULL,
              "%s: error \"%s\", want one naming \"%s\"", c->in,
              h.error ? h.error : "(none)", c->error);
    }

    /* every prefix: valid so far, or refused for good */
    for (size_t k = 0; k < n; k++) {
        rc = parse(c->in, k, c->head, &h);
        if (c->rc == KOU_OK) {
            CHECK(rc == KOU_AGAIN, "%s: prefix of %zu bytes: rc %d (%s)",
                  c->in, k, rc, h.error ? h.error : "");
            continue;
        }
        CHECK(rc == KOU_AGAIN || rc == KOU_ERROR,
              "%s: prefix of %zu bytes: rc %d", c->in, k, rc);
        if (rc == KOU_ERROR && refused == 0) {
            refused = k;
        }
        CHECK(refused == 0 || rc == KOU_ERROR,
              "%s: refused at %zu bytes but not at %zu", c->in, refused, k);
    }
}
END_TEST

START_TEST(test_nul)
{
    kou_response_head_t h;

    for (size_t i = 0; i < sizeof(nul_cases) / sizeof(nul_cases[0]); i++) {
        int rc = parse(nul_cases[i].in, nul_cases[i].n, false, &h);

        CHECK(rc == KOU_ERROR, "NUL case %zu: rc %d", i, rc);
    }
}
END_TEST

START_TEST(test_fields_and_slices)
{
    static const char  in[] = "HTTP/1.1 404 Not  Found \r\n"
                              "Content-Type: text/plain \t\r\n"
                              "X-Empty:\r\n"
                              "Set-Cookie:a=1\r\n"
                              "Content-Length: 3\r\n\r\nabc";
    const u_char       *b;
    kou_response_head_t h;

    memset(&h, 0, sizeof(h));
    h.headers = fields;
    h.max_headers = 16;
    h.max_head = 4096;
    b = flush(in, sizeof(in) - 1);
    ck_assert_int_eq(kou_http_parse_response(b, sizeof(in) - 1, false, &h),
                     KOU_OK);
    ck_assert_int_eq(h.version, 11);
    ck_assert_int_eq(h.status, 404);
    /* the reason phrase is opaque: kept as sent */
    ck_assert_uint_eq(h.reason.n, 11);
    ck_assert(memcmp(h.reason.p, "Not  Found ", 11) == 0);
    ck_assert_ptr_eq(h.reason.p, (const char *) b + 13);
    ck_assert_uint_eq(h.nheaders, 4);
    ck_assert(kou_str_eq(fields[0].name, KOU_STR("Content-Type")));
    ck_assert(kou_str_eq(fields[0].value, KOU_STR("text/plain")));
    ck_assert(kou_str_eq(fields[1].name, KOU_STR("X-Empty")));
    ck_assert_uint_eq(fields[1].value.n, 0);
    ck_assert(kou_str_eq(fields[2].value, KOU_STR("a=1")));
    ck_assert_uint_eq(h.head_len, sizeof(in) - 1 - 3);
    ck_assert(memcmp(b + h.head_len, "abc", 3) == 0);
}
END_TEST

START_TEST(test_version_10)
{
    kou_response_head_t h;

    ck_assert_int_eq(parse("HTTP/1.0 200 OK\r\n\r\n", 19, false, &h),
                     KOU_OK);
    ck_assert_int_eq(h.version, 10);
    ck_assert_int_eq(parse("HTTP/1.1 200 OK\r\n\r\n", 19, false, &h),
                     KOU_OK);
    ck_assert_int_eq(h.version, 11);
}
END_TEST

START_TEST(test_limits)
{
    char                big[6000];
    kou_response_head_t h;
    size_t              n;
    int                 rc;

    /* more fields than the caller's array */
    n = (size_t) snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 17; i++) {
        n += (size_t) snprintf(big + n, sizeof(big) - n, "X-%d: v\r\n", i);
    }
    n += (size_t) snprintf(big + n, sizeof(big) - n, "\r\n");
    ck_assert_int_eq(parse(big, n, false, &h), KOU_ERROR);
    ck_assert_ptr_nonnull(strstr(h.error, "too many fields"));

    /* sixteen is fine */
    n = (size_t) snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 16; i++) {
        n += (size_t) snprintf(big + n, sizeof(big) - n, "X-%d: v\r\n", i);
    }
    n += (size_t) snprintf(big + n, sizeof(big) - n, "\r\n");
    ck_assert_int_eq(parse(big, n, false, &h), KOU_OK);

    /* a head that cannot end within max_head (4096) is refused as soon as
     * that many bytes are in, not left waiting */
    n = (size_t) snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\nX-Big: ");
    memset(big + n, 'a', sizeof(big) - n);
    rc = parse(big, 4095, false, &h);
    ck_assert_int_eq(rc, KOU_AGAIN);
    rc = parse(big, 4096, false, &h);
    ck_assert_int_eq(rc, KOU_ERROR);
    ck_assert_ptr_nonnull(strstr(h.error, "too large"));
    rc = parse(big, sizeof(big), false, &h);
    ck_assert_int_eq(rc, KOU_ERROR);

    /* a complete head of exactly max_head bytes is accepted */
    n = (size_t) snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\nX-Big: ");
    memset(big + n, 'a', 4096 - n - 4);
    memcpy(big + 4096 - 4, "\r\n\r\n", 4);
    ck_assert_int_eq(parse(big, 4096, false, &h), KOU_OK);
    ck_assert_uint_eq(h.head_len, 4096);
}
END_TEST

/* The host wrapper: method by name, and a caller's smaller structure. */
START_TEST(test_host_wrapper)
{
    static const char   in[] = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
    kou_response_head_t h;
    size_t              small = offsetof(kou_response_head_t, error);

    memset(&h, 0, sizeof(h));
    h.size = sizeof(h);
    h.headers = fields;
    h.max_headers = 16;
    h.max_head = 4096;
    ck_assert_int_eq(kou_host_parse_response(in, sizeof(in) - 1,
                                             KOU_STR("GET"), &h),
                     KOU_OK);
    ck_assert_int_eq(h.body, KOU_BODY_LENGTH);
    ck_assert_uint_eq(h.size, sizeof(h));
    ck_assert_int_eq(kou_host_parse_response(in, sizeof(in) - 1,
                                             KOU_STR("HEAD"), &h),
                     KOU_OK);
    ck_assert_int_eq(h.body, KOU_BODY_NONE);
    ck_assert_int_eq(h.content_length, 4);

    /* a module that knows fewer fields gets no write past them */
    h.size = small;
    h.error = (const char *) &h;   /* sentinel */
    ck_assert_int_eq(kou_host_parse_response("HTTP/9", 6, KOU_STR("GET"), &h),
                     KOU_ERROR);
    ck_assert_ptr_eq(h.error, (const char *) &h);
    ck_assert_uint_eq(h.size, small);

    /* too small to be used at all */
    h.size = offsetof(kou_response_head_t, status);
    ck_assert_int_eq(kou_host_parse_response(in, sizeof(in) - 1,
                                             KOU_STR("GET"), &h),
                     KOU_ERROR);
}
END_TEST

/* ---- chunked decoding through the module-facing functions ---- */

static size_t
dechunk(const char *in, size_t n, size_t piece, char *out, int *last_rc)
{
    kou_chunked_t ch;
    size_t        got = 0, have = 0, off = 0;
    int           rc = KOU_AGAIN;
    char          buf[512];

    kou_host_chunked_init(&ch, 1024);
    while (off < n || have > 0) {
        size_t add = kou_min(piece, n - off);
        size_t consumed = 0;

        memcpy(buf + have, in + off, add);
        have += add;
        off += add;
        for (;;) {
            kou_str_t d = { NULL, 0 };

            rc = kou_host_chunked_parse(&ch, buf, have, &consumed, &d);
            if (rc > 0) {
                *last_rc = rc;
                return got;
            }
            memcpy(out + got, d.p, d.n);
            got += d.n;
            memmove(buf, buf + consumed, have - consumed);
            have -= consumed;
            if (rc != KOU_OK) {
                break;
            }
        }
        if (rc == KOU_DONE || (rc == KOU_AGAIN && off == n)) {
            break;
        }
    }
    *last_rc = rc;
    return got;
}

START_TEST(test_chunked)
{
    static const char good[] = "5\r\nhello\r\n1;ext=1\r\n \r\n"
                               "6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    char              out[256];
    int               rc;

    for (size_t piece = 1; piece <= sizeof(good); piece++) {
        size_t n = dechunk(good, sizeof(good) - 1, piece, out, &rc);

        ck_assert_int_eq(rc, KOU_DONE);
        ck_assert_uint_eq(n, 12);
        ck_assert(memcmp(out, "hello  world", 12) == 0);
    }
    (void) dechunk("5\r\nhelloXX", 10, 10, out, &rc);
    ck_assert_int_eq(rc, 400);
    (void) dechunk("zz\r\n", 4, 4, out, &rc);
    ck_assert_int_eq(rc, 400);
    (void) dechunk("3\r\nabc", 6, 6, out, &rc);
    ck_assert_int_eq(rc, KOU_AGAIN);
}
END_TEST

static Suite *
http_upstream_suite(void)
{
    Suite *s = suite_create("http_upstream");
    TCase *tc = tcase_create("response");

    tcase_add_checked_fixture(tc, guard_setup, NULL);
    tcase_add_loop_test(tc, test_table, 0,
                        (int) (sizeof(cases) / sizeof(cases[0])));
    tcase_add_test(tc, test_nul);
    tcase_add_test(tc, test_fields_and_slices);
    tcase_add_test(tc, test_version_10);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_host_wrapper);
    suite_add_tcase(s, tc);

    tc = tcase_create("chunked");
    tcase_add_test(tc, test_chunked);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(http_upstream_suite());
    int      failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
