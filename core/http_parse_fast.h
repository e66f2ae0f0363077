/*
 * What the general HTTP/1.1 request parser (http_parse.c) and the fast
 * path of each vector tier share: the parser's state, the small helpers
 * both use, the functions of http_parse.c the fast path calls, and two
 * templates, the line finder and the fast path itself.
 *
 * The templates take the kernels as function arguments. A tier passes its
 * own, which are then inlined and compiled with the tier's flags (its
 * instructions, BMI's shifts and bit counts), so that the path a request
 * of the usual shape takes makes no call to classify a byte; the general
 * parser passes the table's. A tier's fast path is kou_http_kernels_t's
 * head.
 *
 * Private to the parser: http_parse.c and the tier files include it.
 */

#ifndef KOU_HTTP_PARSE_FAST_H
#define KOU_HTTP_PARSE_FAST_H

#ifdef __BMI__
#include <immintrin.h>
#endif

#include "http_parse.h"
#include "http_parse_kernel.h"

/* hidden, as in http_parse.h */
#pragma GCC visibility push(hidden)

/*
 * Where p->pos stands. The request line is 0: the inline
 * kou_http_parser_init and kou_http_parse_request of http_parse.h write
 * and test that number.
 */
enum {
    KOU_HP_REQUEST_LINE = 0,  /* request line, or the leading empty line */
    KOU_HP_REQUEST_LF,        /* its CR seen */
    KOU_HP_FIELD_LINE,        /* a field line, or the empty line ending all */
    KOU_HP_FIELD_LF           /* its CR seen */
};

/* p->flags: what the fields said so far. */
#define KOU_HP_HOST        0x01u  /* a Host field was seen */
#define KOU_HP_CL          0x02u  /* a Content-Length field was seen */
#define KOU_HP_TE          0x04u  /* a Transfer-Encoding field was seen */
#define KOU_HP_TE_CHUNKED  0x08u  /* the last coding so far is chunked */
#define KOU_HP_TE_OTHER    0x10u  /* some coding is not chunked */
#define KOU_HP_EXPECT_BAD  0x20u  /* an expectation other than 100-continue */
#define KOU_HP_ROOT_PATH   0x40u  /* absolute-form without a path */
#define KOU_HP_SP1         0x80u  /* p->method spans the method */
#define KOU_HP_SP2         0x100u /* p->target spans the target */
#define KOU_HP_RL_DONE     0x200u /* the request line was judged: good */

/*
 * The index of the lowest set bit of m != 0, as a size_t: through
 * unsigned, which saves the sign extension of the builtin's int.
 */
static inline size_t
kou_http_ctz(uint64_t m)
{
#ifdef __BMI__
    /* a tier built for BMI: tzcnt into a 64-bit register, nothing else */
    return (size_t) _tzcnt_u64(m);
#else
    return (unsigned) __builtin_ctzll(m);
#endif
}

/* Bits s..e-1 of m, s < e <= 64, shifted down to bit 0. */
static inline uint64_t
kou_http_bits(uint64_t m, size_t s, size_t e)
{
#ifdef __BMI2__
    /* bzhi clears the bits from e up, e = 64 included */
    return _bzhi_u64(m, (unsigned) e) >> s;
#else
    return (m & ~0ull >> (64 - e)) >> s;
#endif
}

/* CR LF at p, p[1] readable: one 16-bit compare once inlined. */
static inline bool
kou_http_crlf(const u_char *p)
{
    return memcmp(p, "\r\n", 2) == 0;
}


static inline kou_str_t
kou_http_str(const u_char *buf, size_t s, size_t e)
{
    return (kou_str_t) { (const char *) buf + s, e - s };
}

/*
 * Whether n bytes of a field line equal lc, a lower-case literal of
 * letters, digits, '-', ':' and SP, ignoring case. OR-ing 0x20 into a
 * byte turns A-Z into a-z and leaves those literal bytes as they are; the
 * only other bytes it maps onto them are controls, which no field line
 * holds (HTAB becomes ')'). So a word at a time is exact, and the
 * literal's length is a constant once inlined, which unrolls the loop.
 */
static inline __attribute__((always_inline)) bool
kou_http_lc_eq(const u_char *s, const char *lc, size_t n)
{
    uint64_t a, b;
    uint32_t c, d;
    size_t   i;

    if (n >= 8) {
        for (i = 0; i + 8 <= n; i += 8) {
            memcpy(&a, s + i, 8);
            memcpy(&b, lc + i, 8);
            if ((a | 0x2020202020202020ull) != b) {
                return false;
            }
        }
        if (i == n) {
            return true;
        }
        /* the last word overlaps the one before */
        memcpy(&a, s + n - 8, 8);
        memcpy(&b, lc + n - 8, 8);
        return (a | 0x2020202020202020ull) == b;
    }
    if (n >= 4) {
        memcpy(&c, s, 4);
        memcpy(&d, lc, 4);
        if ((c | 0x20202020u) != d) {
            return false;
        }
        memcpy(&c, s + n - 4, 4);
        memcpy(&d, lc + n - 4, 4);
        return (c | 0x20202020u) == d;
    }
    for (i = 0; i < n; i++) {
        if ((s[i] | 0x20) != (u_char) lc[i]) {
            return false;
        }
    }
    return true;
}

#define kou_http_lc_is(s, n, lit)                                            \
    ((n) == sizeof(lit) - 1 && kou_http_lc_eq((s), (lit), sizeof(lit) - 1))

/*
 * Until the head is complete a slice holds an offset in its pointer; the
 * integer-to-pointer conversion is implementation-defined, not undefined,
 * and no such pointer is ever dereferenced before kou_http_rebase.
 */
static inline void
kou_http_span(kou_str_t *s, size_t off, size_t n)
{
    s->p = (const char *) (uintptr_t) off;
    s->n = n;
}

static inline void
kou_http_rebase(kou_str_t *s, const u_char *buf)
{
    s->p = (const char *) buf + (uintptr_t) s->p;
}

/* The request line's slices, offsets until the head is complete. */
static inline void
kou_http_rebase_line(kou_http_parser_t *p, const u_char *buf)
{
    kou_http_rebase(&p->method, buf);
    kou_http_rebase(&p->target, buf);
    kou_http_rebase(&p->path, buf);
    kou_http_rebase(&p->query, buf);
    kou_http_rebase(&p->host, buf);
    kou_http_rebase(&p->port, buf);
}

/* ---- in http_parse.c, for the fast path ---- */

/*
 * The names whose fields the parser reads, by length: the first letter,
 * lower-case, of the one name of that length (0: none).
 */
extern const u_char kou_http_named[32];

/* Method by name, KOU_METHOD_UNKNOWN for any other. */
unsigned kou_http_method_lookup(const u_char *m, size_t n);

/*
 * Judge the request line: method SP request-target SP HTTP-version, the
 * spans of the first two in p->method and p->target (as offsets), the
 * version's 8 bytes at buf[v] already known to match "HTTP/" DIGIT "."
 * DIGIT, and buf[0..rd) readable. KOU_OK or the status.
 */
int kou_http_request_line(kou_http_parser_t *p, const u_char *buf, size_t v,
                          size_t rd);

/* What a request line sets, back to "none yet". */
void kou_http_rl_reset(kou_http_parser_t *p);

/*
 * What a field means to the parser, if anything: the name buf[s..s+n),
 * the value buf[vs..ve) with OWS trimmed, buf[0..rd) readable.
 */
int kou_http_field_meaning(kou_http_parser_t *p, const u_char *buf,
                           size_t s, size_t n, size_t vs, size_t ve,
                           size_t rd);

/*
 * A Host value buf[s..e) whose run of reg-name bytes ends at hend: KOU_OK
 * or the status.
 */
int kou_http_field_host_at(kou_http_parser_t *p, const u_char *buf,
                           size_t s, size_t e, size_t rd, size_t hend);

/*
 * The empty line arrived: decisions that need every field, then results.
 * The first n0 headers came in earlier calls and hold offsets.
 */
int kou_http_head_done(kou_http_parser_t *p, const u_char *buf, size_t n0);


/*
 * A call that ends before the head does: p->headers[from..] up to h, stored
 * as pointers into buf, become offsets, as a later call expects them all.
 */
void kou_http_headers_unbase(kou_http_parser_t *p, const u_char *buf,
                             size_t from, kou_header_t *h);

/* ---- templates ---- */

typedef kou_http_first_t (*kou_http_first_fn)(const u_char *buf, size_t e);
typedef kou_http_lines_t (*kou_http_lines_fn)(const u_char *buf, size_t i,
                                              size_t e);
typedef size_t (*kou_http_scan_fn)(const u_char *buf, size_t i, size_t e);
/*
 * lines, where the ntc mask may be left out (any value) when ntc is false
 * and the block has no bad byte: a block inside a line whose name has
 * ended, which only the bad mask can end.
 */
typedef kou_http_lines_t (*kou_http_lines_lazy_fn)(const u_char *buf,
                                                   size_t i, size_t e,
                                                   bool ntc);
typedef size_t (*kou_http_span_fn)(const u_char *buf, size_t i, size_t e,
                                   unsigned set);

/* Where a field line ends, and its name. */
typedef struct {
    size_t end;
    size_t name;
} kou_http_line_t;

/*
 * The two masks field lines are found with, of the 64 bytes from base,
 * and the first block's reg-name mask for the fast path's Host: locals
 * of the parsing functions whose address no call takes, so that they
 * stay in registers from one line to the next.
 */
typedef struct {
    size_t   base;
    uint64_t bad;
    uint64_t ntc;
    uint64_t nreg;            /* of the first block: kou_http_first_t */
} kou_http_scan_t;

/*
 * kou_http_line when the block at hand does not hold the line's end:
 * the blocks after it, as many as the line takes. The name's end is
 * found on the way (every bad byte is a non-tchar, so by the line's end
 * at the latest).
 */
static inline __attribute__((always_inline)) kou_http_line_t
kou_http_line_slow(kou_http_lines_fn lines, kou_http_lines_lazy_fn lazy,
                   kou_http_scan_fn field_line, kou_http_span_fn span,
                   bool blocks, const u_char *buf, size_t end,
                   kou_http_scan_t *b, size_t i)
{
    kou_http_line_t  r;
    kou_http_lines_t m;
    size_t           j, s;
    uint64_t         mm;
    unsigned         n;

    if (!blocks) {
        /* the same two answers, by scanning */
        r.name = span(buf, i, end, KOU_HTTP_SET_TCHAR);
        r.end = field_line(buf, r.name, end);
        return r;
    }
    r.name = SIZE_MAX;
    if (i - b->base < 64) {
        mm = b->ntc >> (i - b->base);
        if (mm != 0) {
            r.name = i + kou_http_ctz(mm);
        }
        j = b->base + 64;
    } else {
        /*
         * Blocks at multiples of 64 from the start of buf: where the next
         * one is does not wait for the lines before it, so its loads can
         * issue while those lines are still being looked at.
         */
        j = i & ~(size_t) 63;
    }
    for (n = 0; ; n++) {
        if (j >= end) {
            /* the fill bits of a last block would have answered */
            r.end = end;
            r.name = kou_min(r.name, end);
            return r;
        }
        if (n == 2 && r.name != SIZE_MAX) {
            /*
             * A line longer than that (a long cookie, say): the
             * field-line scan alone is cheaper than the masks, which the
             * next line classifies where it starts.
             */
            r.end = field_line(buf, j, end);
            return r;
        }
        /*
         * Where the block holds no line end, its ntc mask is never read:
         * a line that starts in a block ends in it.
         */
        m = lazy != NULL ? lazy(buf, j, end, r.name == SIZE_MAX)
                         : lines(buf, j, end);
        b->base = j;
        b->bad = m.bad;
        b->ntc = m.ntc;
        s = kou_max(i, j);
        if (r.name == SIZE_MAX && (mm = m.ntc >> (s - j)) != 0) {
            r.name = s + kou_http_ctz(mm);
        }
        if ((mm = m.bad >> (s - j)) != 0) {
            r.end = s + kou_http_ctz(mm);
            return r;
        }
        j += 64;
    }
}

/*
 * The line that starts at i: where it ends (its first byte outside the
 * field-line class, end if none) and where its name does (its first
 * non-tchar), both from the block at hand when the line's end is in it.
 * The kernels are a tier's, which are then inlined, or a table's; blocks
 * is the table's or true where the caller knows it is, so that the code
 * for a tier without blocks is left out there.
 */
static inline __attribute__((always_inline)) kou_http_line_t
kou_http_line(kou_http_lines_fn lines, kou_http_lines_lazy_fn lazy,
              kou_http_scan_fn field_line, kou_http_span_fn span,
              bool blocks, const u_char *buf, size_t end,
              kou_http_scan_t *b, size_t i)
{
    kou_http_line_t r;
    size_t          off = i - b->base;
    uint64_t        m;

    if (__builtin_expect(off < 64, 1)) {
        m = b->bad >> off;
        if (__builtin_expect(m != 0, 1)) {
            r.end = i + kou_http_ctz(m);
            r.name = i + kou_http_ctz(b->ntc >> off);
            return r;
        }
    }
    /* inlined too, so that the block stays in registers */
    return kou_http_line_slow(lines, lazy, field_line, span, blocks, buf,
                              end, b, i);
}

/*
 * The request line of a first call, when it has the shape nearly all
 * have: token SP target SP "HTTP/1.1" or "HTTP/1.0" CRLF, all of it in
 * buf[0..end) and within the limit. Such a line is judged by the same
 * function as any other (kou_http_request_line), with the same spans: the
 * target, once valid, holds no SP, so the SPs are the ones the general
 * path would have found. Returns the offset after the LF; or 0 for any
 * other line and for a line that is not acceptable, with what the general
 * path reads of p as it was (the spans of method, target, path and query
 * may hold the attempt's, which the general path sets again before any
 * use), so that every status keeps the one source that ties it to a
 * position. Either way *b holds the masks of the first block.
 */
static inline __attribute__((always_inline)) size_t
kou_http_request_fast(kou_http_parser_t *p, const u_char *buf, size_t end,
                      kou_http_first_fn first, kou_http_scan_fn field_line,
                      kou_http_span_fn span, kou_http_scan_t *b)
{
    kou_http_first_t m;
    size_t           me, e, v, ts, te;
    uint64_t         w, v11, v10;
    unsigned         id;

    m = first(buf, end);
    b->base = 0;
    b->bad = m.bad;
    b->ntc = m.ntc;
    b->nreg = m.nreg;
    if (m.ntc == 0) {
        return 0;
    }
    me = kou_http_ctz(m.ntc);
    if (me == 0 || me >= end || buf[me] != ' ') {
        return 0;
    }
    /*
     * The first byte outside the field-line class: the CR, if all is
     * well. A method is tchars and SP is in the class, so it is also the
     * first such byte after the method, found without waiting for it.
     */
    e = m.bad != 0 ? kou_http_ctz(m.bad) : field_line(buf, 64, end);
    if (e + 1 >= end || e > p->limits->max_request_line || e < me + 11
        || !kou_http_crlf(buf + e) || buf[e - 9] != ' ')
    {
        return 0;
    }
    v = e - 8;
    memcpy(&w, buf + v, 8);
    memcpy(&v11, "HTTP/1.1", 8);
    memcpy(&v10, "HTTP/1.0", 8);
    if (w != v11 && w != v10) {
        return 0;
    }
    ts = me + 1;
    te = v - 1;
    kou_http_span(&p->method, 0, me);
    kou_http_span(&p->target, ts, te - ts);
    /* GET, what nearly all are, without the call */
    id = __builtin_expect(me == 3 && memcmp(buf, "GET", 3) == 0, 1)
         ? KOU_METHOD_GET : kou_http_method_lookup(buf, me);
    if (__builtin_expect(buf[ts] == '/' && id != KOU_METHOD_CONNECT
                         && (__builtin_expect(te <= 64, 1)
                             ? kou_http_bits(m.npath, ts, te) == 0
                             : span(buf, ts, end, KOU_HTTP_SET_PATH) >= te),
                         1))
    {
        /*
         * What kou_http_request_line decides of such a line, without a
         * call: the method is a token (the mask said so), the target the
         * plain origin-form, the version one of the two compared above.
         */
        p->flags = KOU_HP_SP1 | KOU_HP_SP2 | KOU_HP_RL_DONE;
        p->method_id = id;
        p->target_form = KOU_TARGET_ORIGIN;
        kou_http_span(&p->path, ts, te - ts);
        kou_http_span(&p->query, te, 0);
        p->version = buf[v + 7] == '0' ? 10 : 11;
        return e + 2;
    }
    p->flags = KOU_HP_SP1 | KOU_HP_SP2;
    if (kou_http_request_line(p, buf, v, end) != KOU_OK) {
        /* undo what it set; the general path sets it again */
        kou_http_rl_reset(p);
        return 0;
    }
    p->flags |= KOU_HP_RL_DONE;
    return e + 2;
}

/*
 * A first call's whole head, when it has the shape nearly all have: the
 * request line of kou_http_request_fast, then field lines each of them
 * whole in buf[0..end), a non-empty name, ": " (the colon and one SP), a
 * value that neither starts nor ends with OWS, room for one more header.
 * Such a line is taken with what the general loop would do with it (the
 * same header stored, the same kou_http_field_meaning).
 *
 * At the first other line it stops, leaves p as a call that ended right
 * before that line would have left it (headers as offsets, pos at the
 * line), and hands buf[0..len) to the general code, which goes on from
 * there as it would after any split, and decides every fault, limit and
 * incomplete line. So no status comes from here but KOU_OK and those of
 * the meaning of a field the general code would have taken alike.
 */
static inline __attribute__((always_inline)) int
kou_http_head_fast(kou_http_parser_t *p, const u_char *buf, size_t len,
                   kou_http_first_fn first, kou_http_lines_fn lines,
                   kou_http_lines_lazy_fn lazy, kou_http_scan_fn field_line,
                   kou_http_span_fn span)
{
    /* a byte at offset max_header_block is one too many */
    size_t                    end = kou_min(len,
                                            p->limits->max_header_block);
    kou_header_t             *h = p->headers;
    kou_header_t             *hlim = h + p->limits->max_headers;
    kou_http_scan_t           b;
    kou_http_line_t           line;
    size_t                    ls, e, name, vs, n, hend;
    u_char                    c;
    int                       rc;

    ls = kou_http_request_fast(p, buf, end, first, field_line, span, &b);
    if (ls == 0) {
        return kou_http_parse_general(p, buf, len);
    }

    for ( ;; ) {
        /* only a tier with blocks comes here: the constant drops the rest */
        line = kou_http_line(lines, lazy, field_line, span, true, buf, end,
                             &b, ls);
        e = line.end;
        name = line.name;
        if (__builtin_expect(e + 1 >= end || !kou_http_crlf(buf + e), 0)) {
            break;
        }
        if (e == ls) {
            p->nheaders = (size_t) (h - p->headers);
            p->head_len = e + 2;
            /* kou_http_head_done's usual case, without the call */
            if ((p->flags & (KOU_HP_HOST | KOU_HP_TE | KOU_HP_EXPECT_BAD
                             | KOU_HP_ROOT_PATH))
                == KOU_HP_HOST)
            {
                kou_http_rebase_line(p, buf);
                return KOU_OK;
            }
            return kou_http_head_done(p, buf, 0);
        }
        /*
         * The name ends in ": ", the usual colon and one SP, at most at
         * the CR (buf[e + 1] is in the input); any other OWS is left to
         * the general loop.
         */
        if (__builtin_expect(memcmp(buf + name, ": ", 2) != 0 || name == ls
                             || h == hlim, 0))
        {
            break;
        }
        /*
         * With ": " before the CR, vs is at most the CR, so buf[vs] is in
         * the input. buf[e - 1] is in the field-line class or the SP, so
         * at most SP only if it is OWS; the first value byte may be the
         * CR of an empty value, which is left to the general loop too.
         */
        vs = name + 2;
        if (__builtin_expect(buf[vs] <= ' ', 0)
            || __builtin_expect(buf[e - 1] <= ' ', 0))
        {
            break;
        }
        h->name = kou_http_str(buf, ls, name);
        h->value = kou_http_str(buf, vs, e);
        h++;
        n = name - ls;
        /*
         * Without the bound check: a longer name that passes is one of
         * no length kou_http_field_meaning reads, which it lets through.
         */
        if (kou_http_named[n % sizeof(kou_http_named)] == (buf[ls] | 0x20))
        {
            /*
             * What kou_http_field_connection makes of the usual line,
             * compared whole: ':', SP and '-' are among the bytes OR-ing
             * 0x20 leaves as they are (kou_http_lc_eq).
             */
            if (n == 10 && e - ls == 22
                && kou_http_lc_eq(buf + ls, "connection: keep-alive", 22))
            {
                p->conn_keep_alive = 1;
            } else if (n == 4 && kou_http_lc_eq(buf + ls, "host", 4)) {
                /* the reg-name run: from the first block's mask if there */
                hend = kou_min(e < 64 ? vs + kou_http_ctz(b.nreg >> vs)
                                      : span(buf, vs, end,
                                             KOU_HTTP_SET_REGNAME),
                               e);
                /*
                 * A name alone, that does not end in what a number can
                 * end in (kou_http_numeric_host), the first Host of an
                 * origin-form request: taken here. Any other value, port
                 * and IP literal included, by the one that judges all.
                 */
                c = buf[hend - 1] | 0x20;
                if (hend == e && !(p->flags & KOU_HP_HOST)
                    && p->target_form == KOU_TARGET_ORIGIN
                    && (u_char) (c - '0') > 9 && (u_char) (c - 'a') > 5
                    && c != 'x' && c != '.')
                {
                    p->flags |= KOU_HP_HOST;
                    kou_http_span(&p->host, vs, e - vs);
                    kou_http_span(&p->port, e, 0);
                } else {
                    rc = kou_http_field_host_at(p, buf, vs, e, end, hend);
                    if (rc != KOU_OK) {
                        p->nheaders = (size_t) (h - p->headers);
                        return rc;
                    }
                }
            } else {
                rc = kou_http_field_meaning(p, buf, ls, n, vs, e, end);
                if (rc != KOU_OK) {
                    p->nheaders = (size_t) (h - p->headers);
                    return rc;
                }
            }
        }
        ls = e + 2;
    }

    /* as kou_http_parse_general leaves a call that ends at ls */
    kou_http_headers_unbase(p, buf, 0, h);
    p->pos = ls;
    p->line_start = ls;
    p->state = KOU_HP_FIELD_LINE;
    return kou_http_parse_general(p, buf, len);
}


#pragma GCC visibility pop

#endif /* KOU_HTTP_PARSE_FAST_H */
