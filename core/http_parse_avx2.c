/*
 * AVX2 kernels of the HTTP/1.1 parser (contract in http_parse_kernel.h):
 * 32 bytes a step. The request-line class is a range compare; every other
 * class is a nibble lookup into the tables of kou_http_sets: the low
 * nibble picks a byte of bits from the set's table (vpshufb), the high
 * nibble picks the bit, and bytes above 0x7f pick none. The two nibbles
 * are split once per step and serve every set looked up in it. Built with
 * -mavx2 and BMI1/BMI2 (every AVX2 CPU has them; the tier is chosen only
 * where the CPU says so), and only called once the CPU has been seen to
 * run it. The tier's fast path (kou_avx2_head) is the template of
 * http_parse_fast.h with these kernels inlined.
 *
 * A scan whose end is 32 bytes or more into the buffer finishes with one
 * load that ends at e, reaching back over bytes already passed and
 * shifting them out; only a buffer shorter than a vector is walked a byte
 * at a time. The common case of each kernel (a whole vector from i, an
 * answer inside it) runs first and calls nothing, so that it needs no
 * stack frame.
 */

#include <immintrin.h>

#include "http_parse_fast.h"

/* One bit per high nibble below 8, none above: a byte's bit in a table. */
static const int8_t kou_avx2_hib[32] __attribute__((aligned(32))) = {
    1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0
};

typedef struct {
    __m256i lo;   /* low nibbles */
    __m256i hb;   /* each byte's bit, from its high nibble */
} kou_avx2_nib_t;

static inline kou_avx2_nib_t
kou_avx2_nibbles(__m256i v)
{
    __m256i        f = _mm256_load_si256((const __m256i *) kou_http_sets.low4);
    kou_avx2_nib_t n;

    n.lo = _mm256_and_si256(v, f);
    n.hb = _mm256_shuffle_epi8(
        _mm256_load_si256((const __m256i *) kou_avx2_hib),
        _mm256_and_si256(_mm256_srli_epi16(v, 4), f));
    return n;
}

/*
 * The bytes outside kou_http_sets.<set>, one bit each (every byte above
 * 0x7f is): the mask a search for the end of a run wants, without a NOT.
 */
static inline uint32_t
kou_avx2_out(kou_avx2_nib_t n, unsigned set)
{
    __m256i t = _mm256_broadcastsi128_si256(
        _mm_load_si128((const __m128i *) kou_http_sets.nibble[set]));

    return (uint32_t) _mm256_movemask_epi8(_mm256_cmpeq_epi8(
        _mm256_and_si256(_mm256_shuffle_epi8(t, n.lo), n.hb),
        _mm256_setzero_si256()));
}

/* The bytes in kou_http_sets.<set>, one bit each. */
static inline uint32_t
kou_avx2_in(kou_avx2_nib_t n, unsigned set)
{
    return ~kou_avx2_out(n, set);
}

/*
 * kou_avx2_out of two vectors, lo's first, shifted right by shl and shh
 * to drop bytes before the start or after the end: the bits that come in
 * are zeros, which the caller's fill covers. Written out in scalars: the
 * compiler would otherwise gather the masks into a vector through the
 * stack.
 */
static inline __attribute__((always_inline)) uint64_t
kou_avx2_out64(kou_avx2_nib_t lo, kou_avx2_nib_t hi, unsigned shl,
               unsigned shh, unsigned set)
{
    return (uint64_t) (kou_avx2_out(lo, set) >> shl)
           | (uint64_t) (kou_avx2_out(hi, set) >> shh) << 32;
}

/* Not SP..'~': adding 0x60 maps that range, and only it, to -128..-34. */
static inline uint32_t
kou_avx2_rl_bad(__m256i v)
{
    __m256i x = _mm256_add_epi8(v, _mm256_set1_epi8(0x60));

    return (uint32_t) _mm256_movemask_epi8(
        _mm256_cmpgt_epi8(x, _mm256_set1_epi8(-34)));
}

static inline __m256i
kou_avx2_load(const u_char *p)
{
    return _mm256_loadu_si256((const __m256i *) p);
}

/*
 * First byte of buf[i..e) outside the set (fl: inside FL_BAD), at least 32
 * bytes from the start of buf to e, or any length when byte-walking.
 */
static inline __attribute__((always_inline)) size_t
kou_avx2_scan(const u_char *buf, size_t i, size_t e, unsigned set, bool fl)
{
    uint32_t m;
    size_t   sh;

    while (e - i >= 32) {
        m = kou_avx2_in(kou_avx2_nibbles(kou_avx2_load(buf + i)), set);
        m = fl ? m : ~m;
        if (m) {
            return i + (size_t) __builtin_ctz(m);
        }
        i += 32;
    }
    if (i == e) {
        return e;
    }
    if (e >= 32) {
        sh = 32 - (e - i);
        m = kou_avx2_in(kou_avx2_nibbles(kou_avx2_load(buf + e - 32)), set);
        m = (fl ? m : ~m) >> sh;
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
kou_avx2_field_line(const u_char *buf, size_t i, size_t e)
{
    return kou_avx2_scan(buf, i, e, KOU_HTTP_SET_FL_BAD, true);
}

static inline __attribute__((always_inline)) size_t
kou_avx2_span(const u_char *buf, size_t i, size_t e, unsigned set)
{
    return kou_avx2_scan(buf, i, e, set, false);
}

static inline void
kou_avx2_take_sp(size_t sp[2], size_t *n, size_t base, uint32_t s)
{
    while (*n < 2 && s != 0) {
        sp[(*n)++] = base + (size_t) __builtin_ctz(s);
        s &= s - 1;
    }
}

static __attribute__((noinline)) size_t
kou_avx2_request_line_rest(const u_char *buf, size_t i, size_t e,
                           size_t sp[2], size_t n)
{
    __m256i  v, spc = _mm256_set1_epi8(' ');
    uint32_t m, s;
    size_t   k, sh;

    for ( ;; ) {
        if (e - i >= 32) {
            v = kou_avx2_load(buf + i);
            m = kou_avx2_rl_bad(v);
            s = (uint32_t) _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, spc));
        } else if (i == e) {
            k = e;
            break;
        } else if (e >= 32) {
            sh = 32 - (e - i);
            v = kou_avx2_load(buf + e - 32);
            m = kou_avx2_rl_bad(v) >> sh;
            s = (uint32_t) _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, spc))
                >> sh;
            k = m ? i + (size_t) __builtin_ctz(m) : e;
            kou_avx2_take_sp(sp, &n, i, m ? s & ((m & -m) - 1) : s);
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
            kou_avx2_take_sp(sp, &n, i, s & ((m & -m) - 1));
            break;
        }
        kou_avx2_take_sp(sp, &n, i, s);
        i += 32;
    }
    while (n < 2) {
        sp[n++] = k;
    }
    return k;
}

static size_t
kou_avx2_request_line(const u_char *buf, size_t i, size_t e, size_t sp[2])
{
    __m256i  v;
    uint32_t m, s;

    if (e - i >= 32) {
        /* the common line: in one vector, with both its SPs */
        v = kou_avx2_load(buf + i);
        m = kou_avx2_rl_bad(v);
        s = (uint32_t) _mm256_movemask_epi8(
                _mm256_cmpeq_epi8(v, _mm256_set1_epi8(' ')))
            & ((m & -m) - 1);
        if (m != 0 && (s & (s - 1)) != 0) {
            sp[0] = i + (size_t) __builtin_ctz(s);
            s &= s - 1;
            sp[1] = i + (size_t) __builtin_ctz(s);
            return i + (size_t) __builtin_ctz(m);
        }
    }
    return kou_avx2_request_line_rest(buf, i, e, sp, 0);
}

/* The masks of two vectors' bytes, as kou_avx2_out64 takes them. */
static inline __attribute__((always_inline)) kou_http_lines_t
kou_avx2_lines2(kou_avx2_nib_t lo, kou_avx2_nib_t hi, unsigned shl,
                unsigned shh, uint64_t fill)
{
    kou_http_lines_t r;

    r.bad = ~kou_avx2_out64(lo, hi, shl, shh, KOU_HTTP_SET_FL_BAD) | fill;
    r.ntc = kou_avx2_out64(lo, hi, shl, shh, KOU_HTTP_SET_TCHAR) | fill;
    return r;
}

/*
 * Fewer than 64 bytes left in a buffer shorter than 64: vectors that end
 * at e, shifted, or, in a buffer shorter than one, a copy padded with
 * NULs (which are in no class, as the positions past e must be). The high
 * half of a vector that ends at e stands for bytes past it when it is all
 * there is, so it is shifted out whole (a NUL vector's masks are ones,
 * which the fill also sets).
 */
static __attribute__((noinline)) kou_http_lines_t
kou_avx2_lines_tail(const u_char *buf, size_t i, size_t e)
{
    u_char         tmp[32] __attribute__((aligned(32)));
    kou_avx2_nib_t lo, hi;
    size_t         n = e - i;

    if (n > 32) {
        lo = kou_avx2_nibbles(kou_avx2_load(buf + i));
        hi = kou_avx2_nibbles(kou_avx2_load(buf + e - 32));
        return kou_avx2_lines2(lo, hi, 0, (unsigned) (64 - n), ~0ull << n);
    }
    if (e >= 32) {
        lo = kou_avx2_nibbles(kou_avx2_load(buf + e - 32));
    } else {
        memset(tmp, 0, sizeof(tmp));
        memcpy(tmp, buf + i, n);
        lo = kou_avx2_nibbles(_mm256_load_si256((const __m256i *) tmp));
        n = 32;
    }
    return kou_avx2_lines2(lo, lo, (unsigned) (32 - n), 0, ~0ull << (e - i));
}

static inline __attribute__((always_inline)) kou_http_lines_t
kou_avx2_lines(const u_char *buf, size_t i, size_t e)
{
    kou_http_lines_t r;
    size_t           n = e - i;

    if (n >= 64) {
        return kou_avx2_lines2(kou_avx2_nibbles(kou_avx2_load(buf + i)),
                               kou_avx2_nibbles(kou_avx2_load(buf + i + 32)),
                               0, 0, 0);
    }
    if (e < 64) {
        return kou_avx2_lines_tail(buf, i, e);
    }
    /*
     * The last block of a head, mostly: the 64 bytes that end at e,
     * shifted down to i, the same vectors as a whole block.
     */
    r = kou_avx2_lines2(kou_avx2_nibbles(kou_avx2_load(buf + e - 64)),
                        kou_avx2_nibbles(kou_avx2_load(buf + e - 32)),
                        0, 0, 0);
    r.bad = r.bad >> (64 - n) | ~0ull << n;
    r.ntc = r.ntc >> (64 - n) | ~0ull << n;
    return r;
}

/*
 * kou_avx2_lines for the fast path: a whole block's ntc mask only where
 * the caller needs it or the block ends a line (kou_http_lines_lazy_fn).
 */
static inline __attribute__((always_inline)) kou_http_lines_t
kou_avx2_lines_lazy(const u_char *buf, size_t i, size_t e, bool ntc)
{
    kou_avx2_nib_t   lo, hi;
    kou_http_lines_t r;

    if (e - i < 64) {
        return kou_avx2_lines(buf, i, e);
    }
    lo = kou_avx2_nibbles(kou_avx2_load(buf + i));
    hi = kou_avx2_nibbles(kou_avx2_load(buf + i + 32));
    r.bad = ~kou_avx2_out64(lo, hi, 0, 0, KOU_HTTP_SET_FL_BAD);
    r.ntc = ntc || r.bad != 0
            ? kou_avx2_out64(lo, hi, 0, 0, KOU_HTTP_SET_TCHAR) : 0;
    return r;
}

/* The masks of first from two vectors, bits at or after e filled. */
static inline __attribute__((always_inline)) kou_http_first_t
kou_avx2_first2(kou_avx2_nib_t lo, kou_avx2_nib_t hi, unsigned shh,
                uint64_t fill)
{
    kou_http_first_t r;

    r.bad = ~kou_avx2_out64(lo, hi, 0, shh, KOU_HTTP_SET_FL_BAD) | fill;
    r.ntc = kou_avx2_out64(lo, hi, 0, shh, KOU_HTTP_SET_TCHAR) | fill;
    r.npath = kou_avx2_out64(lo, hi, 0, shh, KOU_HTTP_SET_PATH) | fill;
    r.nreg = kou_avx2_out64(lo, hi, 0, shh, KOU_HTTP_SET_REGNAME) | fill;
    return r;
}

/*
 * A buffer of 32 bytes or fewer: a copy padded with NULs, out of line so
 * that the fast path's frame needs no alignment for it.
 */
static __attribute__((noinline)) kou_http_first_t
kou_avx2_first_short(const u_char *buf, size_t e)
{
    u_char         tmp[32] __attribute__((aligned(32)));
    kou_avx2_nib_t lo;

    memset(tmp, 0, sizeof(tmp));
    memcpy(tmp, buf, e);
    lo = kou_avx2_nibbles(_mm256_load_si256((const __m256i *) tmp));
    /* the second half is all fill */
    return kou_avx2_first2(lo, lo, 0, ~0ull << e);
}

static inline __attribute__((always_inline)) kou_http_first_t
kou_avx2_first(const u_char *buf, size_t e)
{
    if (__builtin_expect(e >= 64, 1)) {
        return kou_avx2_first2(kou_avx2_nibbles(kou_avx2_load(buf)),
                               kou_avx2_nibbles(kou_avx2_load(buf + 32)),
                               0, 0);
    }
    if (e > 32) {
        /* as lines_tail: the second vector ends at e */
        return kou_avx2_first2(kou_avx2_nibbles(kou_avx2_load(buf)),
                               kou_avx2_nibbles(kou_avx2_load(buf + e - 32)),
                               (unsigned) (64 - e), ~0ull << e);
    }
    return kou_avx2_first_short(buf, e);
}

static int
kou_avx2_head(kou_http_parser_t *p, const u_char *buf, size_t len)
{
    return kou_http_head_fast(p, buf, len, kou_avx2_first, kou_avx2_lines,
                              kou_avx2_lines_lazy, kou_avx2_field_line,
                              kou_avx2_span);
}

const kou_http_kernels_t kou_http_kernels_avx2 = {
    kou_avx2_request_line,
    kou_avx2_field_line,
    kou_avx2_lines,
    true,
    kou_avx2_span,
    kou_avx2_first,
    kou_avx2_head
};
