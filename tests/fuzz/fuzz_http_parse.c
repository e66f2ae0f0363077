/*
 * Fuzz target for the request parser and the chunked body decoder
 * (core/http_parse.h).
 *
 * Every input is parsed by every tier this CPU and build can run, under two
 * sets of limits (the server's defaults, and small ones that put 414 and 431
 * within reach of short inputs), twice per tier: whole, and split in two at
 * an offset derived from the input, the second call seeing the bytes moved
 * to another address. Every run must give exactly what the scalar reference
 * gives on the whole input: the status, head_len, each result field and
 * every slice's offset and length. The chunked decoder runs on the input and,
 * when the head says chunked, on the bytes after the head, whole, split and
 * one byte at a time; again every tier and every split must agree.
 *
 * A disagreement or a broken contract is printed and turned into abort(),
 * which libFuzzer records as a crash and `make check` (through replay.c) as
 * a failure. Split inputs sit flush against a PROT_NONE page, so a read
 * past the end crashes even in a build without ASan.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kou.h"
#include "http_parse.h"
#include "fuzz.h"

#define KOU_FZ_MAX_HEADERS 100
#define KOU_FZ_MAX_VALUES  (16 + 3 * 2 * (6 + 2 * KOU_FZ_MAX_HEADERS))

static const kou_http_limits_t kou_fz_limits[] = {
    { 8 * 1024, 16 * 1024, KOU_FZ_MAX_HEADERS },
    { 64, 256, 8 },
};

/* What one run produced, flattened so that runs compare value by value. */
typedef struct {
    size_t      n;
    int64_t     v[KOU_FZ_MAX_VALUES];
    const char *what[KOU_FZ_MAX_VALUES];
} kou_fz_record_t;

/* Where the current run stands, for the report of a failure. */
typedef struct {
    const char *check;        /* "request" or "chunked" */
    unsigned    tier;
    size_t      limits;       /* index in kou_fz_limits */
    const char *how;          /* "whole", "split", "bytes" */
    size_t      split;
} kou_fz_run_t;

static u_char *kou_fz_region;
static size_t  kou_fz_region_size;

static void kou_fz_fail(const kou_fz_run_t *run, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void
kou_fz_fail(const kou_fz_run_t *run, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "fuzz_http_parse: %s, tier %s, limits #%zu, %s",
            run->check, kou_http_parser_tier_name(run->tier), run->limits,
            run->how);
    if (strcmp(run->how, "split") == 0) {
        fprintf(stderr, " at %zu", run->split);
    }
    fprintf(stderr, ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    abort();
}

/*
 * Copy n bytes so that they end where a PROT_NONE page begins. The region
 * grows (it is never freed: one per process) when an input needs more.
 */
static const u_char *
kou_fz_place(const u_char *data, size_t n)
{
    size_t page = (size_t) sysconf(_SC_PAGESIZE);
    size_t need = (n + page - 1) / page * page;
    void  *m;

    if (need == 0) {
        need = page;
    }
    if (need > kou_fz_region_size) {
        if (kou_fz_region != NULL) {
            munmap(kou_fz_region, kou_fz_region_size + page);
        }
        m = mmap(NULL, need + page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED || mprotect((u_char *) m + need, page,
                                        PROT_NONE) != 0) {
            perror("fuzz_http_parse: mmap");
            abort();
        }
        kou_fz_region = m;
        kou_fz_region_size = need;
    }
    if (n > 0) {
        memcpy(kou_fz_region + kou_fz_region_size - n, data, n);
    }
    return kou_fz_region + kou_fz_region_size - n;
}

static uint64_t
kou_fz_hash(uint64_t h, const void *p, size_t n)
{
    const u_char *s = p;

    /* FNV-1a: only ever compared with itself */
    for (size_t i = 0; i < n; i++) {
        h = (h ^ s[i]) * 0x100000001b3ull;
    }
    return h;
}

static void
kou_fz_put(const kou_fz_run_t *run, kou_fz_record_t *rec, const char *what,
           int64_t v)
{
    if (rec->n == KOU_FZ_MAX_VALUES) {
        kou_fz_fail(run, "more values than the record holds");
    }
    rec->what[rec->n] = what;
    rec->v[rec->n++] = v;
}

/*
 * A slice of a complete head: its offset and length. It must lie in the
 * head; the one exception, a slice the parser builds itself (the "/" of an
 * absolute-form target without a path), is recorded by its content. An
 * empty slice has no meaningful position.
 */
static void
kou_fz_put_slice(const kou_fz_run_t *run, kou_fz_record_t *rec,
                 const char *what, kou_str_t s, const u_char *buf,
                 size_t head_len)
{
    const u_char *p = (const u_char *) s.p;

    if (s.n == 0) {
        kou_fz_put(run, rec, what, 0);
    } else if (p >= buf && p <= buf + head_len) {
        if (s.n > head_len - (size_t) (p - buf)) {
            kou_fz_fail(run, "%s runs past the head", what);
        }
        kou_fz_put(run, rec, what, p - buf);
    } else {
        if (strcmp(what, "path") != 0) {
            kou_fz_fail(run, "%s points outside the buffer", what);
        }
        kou_fz_put(run, rec, what,
                   -(int64_t) (kou_fz_hash(14695981039346656037ull, s.p, s.n)
                               >> 1) - 1);
    }
    kou_fz_put(run, rec, what, (int64_t) s.n);
}

static void
kou_fz_put_request(const kou_fz_run_t *run, kou_fz_record_t *rec,
                   const kou_http_parser_t *p, int rc, const u_char *buf,
                   size_t len)
{
    const kou_http_limits_t *lim = &kou_fz_limits[run->limits];
    size_t                   i;

    switch (rc) {
    case KOU_OK: case KOU_AGAIN:
    case 400: case 413: case 414: case 417: case 431: case 501: case 505:
        break;
    default:
        kou_fz_fail(run, "unexpected return value %d", rc);
    }
    kou_fz_put(run, rec, "status", rc);
    if (rc != KOU_OK) {
        return;
    }

    if (p->head_len == 0 || p->head_len > len
        || p->head_len > lim->max_header_block)
    {
        kou_fz_fail(run, "head_len %zu of %zu bytes", p->head_len, len);
    }
    if (p->nheaders > lim->max_headers) {
        kou_fz_fail(run, "%zu headers over the limit", p->nheaders);
    }
    if (p->version != 10 && p->version != 11) {
        kou_fz_fail(run, "version %u", p->version);
    }
    if (p->method.n == 0 || p->target.n == 0
        || p->method_id >= KOU_METHOD_COUNT)
    {
        kou_fz_fail(run, "empty method or target, or bad method_id");
    }
    if (p->chunked && p->content_length != -1) {
        kou_fz_fail(run, "chunked with a Content-Length");
    }

    kou_fz_put(run, rec, "head_len", (int64_t) p->head_len);
    kou_fz_put(run, rec, "method_id", p->method_id);
    kou_fz_put(run, rec, "target_form", p->target_form);
    kou_fz_put(run, rec, "version", p->version);
    kou_fz_put(run, rec, "content_length", p->content_length);
    kou_fz_put(run, rec, "flags", p->chunked | p->conn_close << 1
               | p->conn_keep_alive << 2 | p->conn_upgrade << 3
               | p->expect_continue << 4);
    kou_fz_put(run, rec, "nheaders", (int64_t) p->nheaders);
    kou_fz_put_slice(run, rec, "method", p->method, buf, p->head_len);
    kou_fz_put_slice(run, rec, "target", p->target, buf, p->head_len);
    kou_fz_put_slice(run, rec, "path", p->path, buf, p->head_len);
    kou_fz_put_slice(run, rec, "query", p->query, buf, p->head_len);
    kou_fz_put_slice(run, rec, "host", p->host, buf, p->head_len);
    kou_fz_put_slice(run, rec, "port", p->port, buf, p->head_len);
    for (i = 0; i < p->nheaders; i++) {
        kou_fz_put_slice(run, rec, "header name", p->headers[i].name, buf,
                         p->head_len);
        kou_fz_put_slice(run, rec, "header value", p->headers[i].value, buf,
                         p->head_len);
    }
}

/*
 * Parse data whole (from an exact-size heap copy, where ASan sees reads on
 * either side) or, when run->split is inside the input, first its prefix
 * and then all of it, each copy flush against the guard page: the second
 * call finds the bytes at another address, as after a buffer is moved.
 * Returns the status; the results are recorded in *rec.
 */
static int
kou_fz_request(const kou_fz_run_t *run, kou_fz_record_t *rec,
               kou_http_parser_t *p, kou_header_t *headers,
               const uint8_t *data, size_t size)
{
    const kou_http_limits_t *lim = &kou_fz_limits[run->limits];
    u_char                  *copy = NULL;
    const u_char            *buf;
    size_t                   len;
    int                      rc;

    kou_http_parser_init(p, lim, headers);
    if (strcmp(run->how, "split") == 0) {
        buf = kou_fz_place(data, run->split);
        len = run->split;
        rc = kou_http_parse_request(p, buf, len);
        if (rc == KOU_AGAIN) {
            buf = kou_fz_place(data, size);
            len = size;
            rc = kou_http_parse_request(p, buf, len);
        }
    } else {
        copy = malloc(size ? size : 1);
        if (copy == NULL) {
            abort();
        }
        memcpy(copy, data, size);
        buf = copy;
        len = size;
        rc = kou_http_parse_request(p, buf, len);
    }
    rec->n = 0;
    kou_fz_put_request(run, rec, p, rc, buf, len);
    free(copy);
    return rc;
}

/*
 * Decode data with the chunked decoder, given first its first `first`
 * bytes, then `step` more at a time, each piece copied flush against the
 * guard page (the decoder keeps no pointer between calls). Records the
 * final status, the bytes consumed and the payload delivered.
 */
static void
kou_fz_chunked(const kou_fz_run_t *run, kou_fz_record_t *rec,
               const u_char *data, size_t len, size_t max_trailer,
               size_t first, size_t step)
{
    kou_http_chunked_t ch;
    kou_str_t          out;
    const u_char      *piece;
    size_t             off = 0, avail, consumed, payload = 0;
    uint64_t           h = 14695981039346656037ull;
    int                rc;

    kou_http_chunked_init(&ch, max_trailer);
    avail = kou_min(first, len);
    for ( ;; ) {
        piece = kou_fz_place(data + off, avail - off);
        consumed = (size_t) -1;
        rc = kou_http_parse_chunked(&ch, piece, avail - off, &consumed, &out);
        if (consumed > avail - off) {
            kou_fz_fail(run, "consumed %zu of %zu bytes", consumed,
                        avail - off);
        }
        if (out.n > 0
            && ((const u_char *) out.p < piece
                || (const u_char *) out.p + out.n > piece + consumed))
        {
            kou_fz_fail(run, "payload outside what was consumed");
        }
        h = kou_fz_hash(h, out.p, out.n);
        payload += out.n;
        off += consumed;

        if (rc == KOU_OK) {
            if (consumed == 0) {
                kou_fz_fail(run, "KOU_OK without progress");
            }
            continue;
        }
        if (rc == KOU_AGAIN) {
            if (off != avail) {
                kou_fz_fail(run, "KOU_AGAIN with %zu bytes left",
                            avail - off);
            }
            if (avail == len) {
                break;
            }
            avail = len - avail > step ? avail + step : len;
            continue;
        }
        if (rc != KOU_DONE && rc != 400 && rc != 431) {
            kou_fz_fail(run, "unexpected return value %d", rc);
        }
        break;
    }

    rec->n = 0;
    kou_fz_put(run, rec, "status", rc);
    kou_fz_put(run, rec, "consumed", (int64_t) off);
    kou_fz_put(run, rec, "payload bytes", (int64_t) payload);
    kou_fz_put(run, rec, "payload hash", (int64_t) (h >> 1));
}

static void
kou_fz_compare(const kou_fz_run_t *run, const kou_fz_record_t *ref,
               const kou_fz_record_t *got)
{
    size_t i, n = kou_min(ref->n, got->n);

    for (i = 0; i < n; i++) {
        if (ref->v[i] != got->v[i] || ref->what[i] != got->what[i]) {
            kou_fz_fail(run, "%s is %lld, scalar whole gives %s %lld",
                        got->what[i], (long long) got->v[i], ref->what[i],
                        (long long) ref->v[i]);
        }
    }
    if (ref->n != got->n) {
        kou_fz_fail(run, "%zu result values, scalar whole gives %zu",
                    got->n, ref->n);
    }
}

/*
 * The chunked decoder on data, whole, split, and byte by byte, against
 * the reference record *ref (filled by the first call: scalar, whole).
 */
static void
kou_fz_chunked_all(kou_fz_run_t *run, kou_fz_record_t *ref, bool have_ref,
                   const u_char *data, size_t len)
{
    kou_fz_record_t got;
    size_t          max_trailer = kou_fz_limits[run->limits].max_header_block;

    run->check = "chunked";
    run->how = "whole";
    kou_fz_chunked(run, have_ref ? &got : ref, data, len, max_trailer,
                   len, len);
    if (have_ref) {
        kou_fz_compare(run, ref, &got);
    }
    run->how = "split";
    kou_fz_chunked(run, &got, data, len, max_trailer, run->split, len);
    kou_fz_compare(run, ref, &got);
    run->how = "bytes";
    kou_fz_chunked(run, &got, data, len, max_trailer, 1, 1);
    kou_fz_compare(run, ref, &got);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static kou_fz_record_t ref, got, ch_ref, body_ref;
    static kou_header_t    headers[KOU_FZ_MAX_HEADERS];
    kou_http_parser_t      p;
    kou_fz_run_t           run;
    size_t                 body_at = 0;
    bool                   first, body;
    int                    rc;

    memset(&run, 0, sizeof(run));
    /* any offset strictly inside the input; none for 0 or 1 byte */
    run.split = size < 2 ? size
                         : 1 + kou_fz_hash(14695981039346656037ull, data,
                                           size) % (size - 1);

    for (run.limits = 0; run.limits < kou_nelem(kou_fz_limits);
         run.limits++)
    {
        first = true;
        body = false;
        for (run.tier = 0; run.tier < KOU_SIMD_COUNT; run.tier++) {
            if (!kou_http_parser_tier_available(run.tier)) {
                continue;
            }
            if (kou_http_parser_set_tier(run.tier) != KOU_OK) {
                kou_fz_fail(&run, "available but cannot be set");
            }

            run.check = "request";
            run.how = "whole";
            rc = kou_fz_request(&run, first ? &ref : &got, &p, headers,
                                data, size);
            if (first && rc == KOU_OK && p.chunked) {
                body = true;
                body_at = p.head_len;
            }
            if (!first) {
                kou_fz_compare(&run, &ref, &got);
            }
            if (size >= 2) {
                run.how = "split";
                kou_fz_request(&run, &got, &p, headers, data, size);
                kou_fz_compare(&run, &ref, &got);
            }

            kou_fz_chunked_all(&run, &ch_ref, !first, data, size);
            if (body) {
                /* the body as the server would decode it */
                kou_fz_chunked_all(&run, &body_ref, !first, data + body_at,
                                   size - body_at);
            }
            first = false;
        }
    }
    return 0;
}
