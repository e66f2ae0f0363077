/*
 * SSE4.2 kernels of the HTTP/1.1 parser (contract in http_parse_kernel.h):
 * 16 bytes a step, the AVX2 tier's method at half the width. The
 * request-line class is a range compare; every other class is a nibble
 * lookup with pshufb (SSSE3) into the tables of kou_http_sets. pcmpestri
 * would take the sets as ranges, but its latency is several times that of
 * the two shuffles. Built with -msse4.2 alone; the tier's fast path is the
 * template of http_parse_fast.h with these kernels inlined.
 *
 * A scan whose end is 16 bytes or more into the buffer finishes with one
 * load that ends at e, shifting out bytes already passed; only a buffer
 * shorter than a vector is walked a byte at a time.
 */

#include <immintrin.h>

#include "http_parse_fast.h"

/* One bit per high nibble below 8, none above: a byte's bit in a table. */
static const int8_t kou_sse_hib[16] __attribute__((aligned(16))) = {
    1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0
};

typedef struct {
    __m128i lo;   /* low nibbles */
    __m128i hb;   /* each byte's bit, from its high nibble */
} kou_sse_nib_t;

static inline kou_sse_nib_t
kou_sse_nibbles(__m128i v)
{
    __m128i       f = _mm_set1_epi8(0x0f);
    kou_sse_nib_t n;

    n.lo = _mm_and_si128(v, f);
    n.hb = _mm_shuffle_epi8(_mm_load_si128((const __m128i *) kou_sse_hib),
                            _mm_and_si128(_mm_srli_epi16(v, 4), f));
    return n;
}

/* The bytes in kou_http_sets.<set>, one bit each. */
static inline uint32_t
kou_sse_in(kou_sse_nib_t n, unsigned set)
{
    __m128i t = _mm_load_si128((const __m128i *) kou_http_sets.nibble[set]);

    return ~(uint32_t) _mm_movemask_epi8(_mm_cmpeq_epi8(
               _mm_and_si128(_mm_shuffle_epi8(t, n.lo), n.hb),
               _mm_setzero_si128()))
           & 0xffff;
}

/* Not SP..'~': adding 0x60 maps that range, and only it, to -128..-34. */
static inline uint32_t
kou_sse_rl_bad(__m128i v)
{
    __m128i x = _mm_add_epi8(v, _mm_set1_epi8(0x60));

    return (uint32_t) _mm_movemask_epi8(_mm_cmpgt_epi8(x, _mm_set1_epi8(-34)));
}

static inline __m128i
kou_sse_load(const u_char *p)
{
    return _mm_loadu_si128((const __m128i *) p);
}

/* First byte of buf[i..e) outside the set (fl: inside FL_BAD). */
static inline __attribute__((always_inline)) size_t
kou_sse_scan(const u_char *buf, size_t i, size_t e, unsigned set, bool fl)
{
    uint32_t m;
    size_t   sh;

    while (e - i >= 16) {
        m = kou_sse_in(kou_sse_nibbles(kou_sse_load(buf + i)), set);
        m = fl ? m : ~m & 0xffff;
        if (m) {
            return i + (size_t) __builtin_ctz(m);
        }
        i += 16;
    }
    if (i == e) {
        return e;
    }
    if (e >= 16) {
        sh = 16 - (e - i);
        m = kou_sse_in(kou_sse_nibbles(kou_sse_load(buf + e - 16)), set);
        m = (fl ? m : ~m & 0xffff) >> sh;
        return m ? i + (size_t) __builtin_ctz(m) : e;
    }
    /* a buffer shorter than a vector: the same tables, a byte at a time */
    for ( ; i < e; i++) {
        u_char c = buf[i];
        bool   in = c < 0x80
                    && (kou_http_sets.nibble[set][c & 0x0f] >> (c >> 4) & 1);

        if (in == fl) {
            break;
        }
    }
    return i;
}

static inline __attribute__((always_inline)) size_t
kou_sse_field_line(const u_char *buf, size_t i, size_t e)
{
    return kou_sse_scan(buf, i, e, KOU_HTTP_SET_FL_BAD, true);
}

static inline __attribute__((always_inline)) size_t
kou_sse_span(const u_char *buf, size_t i, size_t e, unsigned set)
{
    return kou_sse_scan(buf, i, e, set, false);
}

static inline void
kou_sse_take_sp(size_t sp[2], size_t *n, size_t base, uint32_t s)
{
    while (*n < 2 && s != 0) {
        sp[(*n)++] = base + (size_t) __builtin_ctz(s);
        s &= s - 1;
    }
}

static size_t
kou_sse_request_line(const u_char *buf, size_t i, size_t e, size_t sp[2])
{
    __m128i  v, spc = _mm_set1_epi8(' ');
    uint32_t m, s;
    size_t   n = 0, k, sh;

    for ( ;; ) {
        if (e - i >= 16) {
            v = kou_sse_load(buf + i);
            m = kou_sse_rl_bad(v);
            s = (uint32_t) _mm_movemask_epi8(_mm_cmpeq_epi8(v, spc));
        } else if (i == e) {
            k = e;
            break;
        } else if (e >= 16) {
            sh = 16 - (e - i);
            v = kou_sse_load(buf + e - 16);
            m = kou_sse_rl_bad(v) >> sh;
            s = (uint32_t) _mm_movemask_epi8(_mm_cmpeq_epi8(v, spc)) >> sh;
            k = m ? i + (size_t) __builtin_ctz(m) : e;
            kou_sse_take_sp(sp, &n, i, m ? s & ((m & -m) - 1) : s);
            break;
        } else {
            for (k = i; k < e && buf[k] >= 0x20 && buf[k] <= 0x7e; k++) {
                if (buf[k] == ' ' && n < 2) {
                    sp[n++] = k;
                }
            }
            break;
        }
        if (m) {
            k = i + (size_t) __builtin_ctz(m);
            kou_sse_take_sp(sp, &n, i, s & ((m & -m) - 1));
            break;
        }
        kou_sse_take_sp(sp, &n, i, s);
        i += 16;
    }
    while (n < 2) {
        sp[n++] = k;
    }
    return k;
}

/* The masks of the 64 bytes at p, all readable, or'ed with fill. */
static inline kou_http_lines_t
kou_sse_lines64(const u_char *p, uint64_t fill)
{
    kou_sse_nib_t    n;
    kou_http_lines_t r = { 0, 0 };
    unsigned         j;

    for (j = 0; j < 4; j++) {
        n = kou_sse_nibbles(kou_sse_load(p + 16 * j));
        r.bad |= (uint64_t) kou_sse_in(n, KOU_HTTP_SET_FL_BAD) << (16 * j);
        r.ntc |= (uint64_t) (~kou_sse_in(n, KOU_HTTP_SET_TCHAR) & 0xffff)
                 << (16 * j);
    }
    r.bad |= fill;
    r.ntc |= fill;
    return r;
}

/*
 * Fewer than 64 bytes left: the 64 that end at e, shifted, or, in a
 * buffer shorter than that, a copy padded with NULs (which are in no
 * class, as the positions past e must be).
 */
static __attribute__((noinline)) kou_http_lines_t
kou_sse_lines_tail(const u_char *buf, size_t i, size_t e)
{
    u_char           tmp[64] __attribute__((aligned(16)));
    size_t           n = e - i;
    kou_http_lines_t r;

    if (e >= 64) {
        r = kou_sse_lines64(buf + e - 64, 0);
        r.bad >>= 64 - n;
        r.ntc >>= 64 - n;
    } else {
        memset(tmp, 0, sizeof(tmp));
        memcpy(tmp, buf + i, n);
        r = kou_sse_lines64(tmp, 0);
    }
    r.bad |= ~0ull << n;
    r.ntc |= ~0ull << n;
    return r;
}

static inline __attribute__((always_inline)) kou_http_lines_t
kou_sse_lines(const u_char *buf, size_t i, size_t e)
{
    if (e - i >= 64) {
        return kou_sse_lines64(buf + i, 0);
    }
    return kou_sse_lines_tail(buf, i, e);
}

static inline __attribute__((always_inline)) kou_http_first_t
kou_sse_first(const u_char *buf, size_t e)
{
    u_char           tmp[64] __attribute__((aligned(16)));
    const u_char    *p = buf;
    kou_sse_nib_t    n;
    kou_http_first_t r = { 0, 0, 0, 0 };
    uint64_t         fill = 0;
    unsigned         j;

    if (e < 64) {
        memset(tmp, 0, sizeof(tmp));
        memcpy(tmp, buf, e);
        p = tmp;
        fill = ~0ull << e;
    }
    for (j = 0; j < 4; j++) {
        n = kou_sse_nibbles(kou_sse_load(p + 16 * j));
        r.bad |= (uint64_t) kou_sse_in(n, KOU_HTTP_SET_FL_BAD) << (16 * j);
        r.ntc |= (uint64_t) (~kou_sse_in(n, KOU_HTTP_SET_TCHAR) & 0xffff)
                 << (16 * j);
        r.npath |= (uint64_t) (~kou_sse_in(n, KOU_HTTP_SET_PATH) & 0xffff)
                   << (16 * j);
        r.nreg |= (uint64_t) (~kou_sse_in(n, KOU_HTTP_SET_REGNAME) & 0xffff)
                  << (16 * j);
    }
    r.bad |= fill;
    r.ntc |= fill;
    r.npath |= fill;
    r.nreg |= fill;
    return r;
}

static int
kou_sse_head(kou_http_parser_t *p, const u_char *buf, size_t len)
{
    return kou_http_head_fast(p, buf, len, kou_sse_first, kou_sse_lines,
                              NULL, kou_sse_field_line, kou_sse_span);
}

const kou_http_kernels_t kou_http_kernels_sse42 = {
    kou_sse_request_line,
    kou_sse_field_line,
    kou_sse_lines,
    true,
    kou_sse_span,
    kou_sse_first,
    kou_sse_head
};
