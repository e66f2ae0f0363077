/*
 * AVX-512 kernels of the HTTP/1.1 parser (contract in http_parse_kernel.h):
 * 64 bytes a step, in two tables. Both need AVX-512BW and VL, and BMI1
 * and BMI2, the flags this file is built with; the second also uses VBMI,
 * and only its functions are built for it (target attribute), so the
 * first runs on a CPU without VBMI. Each table's fast path is the
 * template of http_parse_fast.h with its kernels inlined.
 *
 *   kou_http_kernels_avx512:     sets by nibble lookup (vpshufb per lane,
 *                                as in the AVX2 tier);
 *   kou_http_kernels_avx512vbmi: sets by one vpermi2b into the 128-byte
 *                                table kou_http_sets.ascii, bytes above
 *                                0x7f taken out by their sign.
 *
 * The last step of a scan is a masked load: masked-off bytes are not read,
 * so no load reaches e whatever the alignment, and no scan needs a byte
 * loop.
 */

#include <immintrin.h>

#include "http_parse_fast.h"

/* One bit per high nibble below 8, none above: a byte's bit in a table. */
static const int8_t kou_512_hib[16] __attribute__((aligned(16))) = {
    1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0
};

typedef struct {
    __m512i lo;   /* low nibbles */
    __m512i hb;   /* each byte's bit, from its high nibble */
} kou_512_nib_t;

/* All of buf[i..e) when under 64 bytes, else 64: masked off, not read. */
static inline __mmask64
kou_512_room(size_t i, size_t e)
{
    return e - i >= 64 ? ~(__mmask64) 0 : ((__mmask64) 1 << (e - i)) - 1;
}

static inline __m512i
kou_512_load(__mmask64 k, const u_char *p)
{
    return _mm512_maskz_loadu_epi8(k, p);
}

static inline kou_512_nib_t
kou_512_nibbles(__m512i v)
{
    __m512i       f = _mm512_set1_epi8(0x0f);
    kou_512_nib_t n;

    n.lo = _mm512_and_si512(v, f);
    n.hb = _mm512_shuffle_epi8(
        _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *) kou_512_hib)),
        _mm512_and_si512(_mm512_srli_epi16(v, 4), f));
    return n;
}

/* The bytes in kou_http_sets.<set>. */
static inline __mmask64
kou_512_in(kou_512_nib_t n, unsigned set)
{
    __m512i t = _mm512_broadcast_i32x4(
        _mm_load_si128((const __m128i *) kou_http_sets.nibble[set]));

    return _mm512_test_epi8_mask(_mm512_shuffle_epi8(t, n.lo), n.hb);
}

/* Not SP..'~': v - 0x20 above 0x5e, unsigned. */
static inline __mmask64
kou_512_rl_bad(__m512i v)
{
    return _mm512_cmpgt_epu8_mask(_mm512_sub_epi8(v, _mm512_set1_epi8(0x20)),
                                  _mm512_set1_epi8(0x5e));
}

static inline size_t
kou_512_at(size_t i, __mmask64 m)
{
    return i + (size_t) __builtin_ctzll(m);
}

/*
 * First byte of buf[i..e) outside the set (fl: inside FL_BAD). Whole
 * vectors are plain loads: a masked load in the loop would carry the mask
 * register from one step to the next, and serialise them.
 */
static inline __attribute__((always_inline)) size_t
kou_512_scan(const u_char *buf, size_t i, size_t e, unsigned set, bool fl)
{
    __mmask64 k, m;

    while (e - i >= 64) {
        m = kou_512_in(kou_512_nibbles(_mm512_loadu_si512(buf + i)), set);
        m = fl ? m : ~m;
        if (m) {
            return kou_512_at(i, m);
        }
        i += 64;
    }
    k = kou_512_room(i, e);
    m = kou_512_in(kou_512_nibbles(kou_512_load(k, buf + i)), set);
    m = (fl ? m : ~m) & k;
    return m ? kou_512_at(i, m) : e;
}

static inline __attribute__((always_inline)) size_t
kou_512_field_line(const u_char *buf, size_t i, size_t e)
{
    return kou_512_scan(buf, i, e, KOU_HTTP_SET_FL_BAD, true);
}

static inline __attribute__((always_inline)) size_t
kou_512_span(const u_char *buf, size_t i, size_t e, unsigned set)
{
    return kou_512_scan(buf, i, e, set, false);
}

static inline void
kou_512_take_sp(size_t sp[2], size_t *n, size_t base, uint64_t s)
{
    while (*n < 2 && s != 0) {
        sp[(*n)++] = base + (size_t) __builtin_ctzll(s);
        s &= s - 1;
    }
}

static size_t
kou_512_request_line(const u_char *buf, size_t i, size_t e, size_t sp[2])
{
    __m512i   v;
    __mmask64 k, m, s;
    size_t    n = 0, r;

    for ( ;; ) {
        k = kou_512_room(i, e);
        v = e - i >= 64 ? _mm512_loadu_si512(buf + i)
                        : kou_512_load(k, buf + i);
        m = kou_512_rl_bad(v) & k;
        s = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(' ')) & k;
        if (m) {
            r = kou_512_at(i, m);
            kou_512_take_sp(sp, &n, i, s & ((m & -m) - 1));
            break;
        }
        kou_512_take_sp(sp, &n, i, s);
        if (e - i <= 64) {
            r = e;
            break;
        }
        i += 64;
    }
    while (n < 2) {
        sp[n++] = r;
    }
    return r;
}

/*
 * The masks of buf[i..i+64): masked-off bytes past e read as NULs, which
 * are in no class, and their bits are set as the contract asks.
 */
static inline __attribute__((always_inline)) kou_http_lines_t
kou_512_lines(const u_char *buf, size_t i, size_t e)
{
    kou_512_nib_t    n;
    __mmask64        k;
    kou_http_lines_t r;

    k = kou_512_room(i, e);
    n = kou_512_nibbles(e - i >= 64 ? _mm512_loadu_si512(buf + i)
                                    : kou_512_load(k, buf + i));
    r.bad = kou_512_in(n, KOU_HTTP_SET_FL_BAD) | ~k;
    r.ntc = ~kou_512_in(n, KOU_HTTP_SET_TCHAR) | ~k;
    return r;
}

static inline __attribute__((always_inline)) kou_http_first_t
kou_512_first(const u_char *buf, size_t e)
{
    kou_512_nib_t    n;
    __mmask64        k;
    kou_http_first_t r;

    k = kou_512_room(0, e);
    n = kou_512_nibbles(e >= 64 ? _mm512_loadu_si512(buf)
                                : kou_512_load(k, buf));
    r.bad = kou_512_in(n, KOU_HTTP_SET_FL_BAD) | ~k;
    r.ntc = ~kou_512_in(n, KOU_HTTP_SET_TCHAR) | ~k;
    r.npath = ~kou_512_in(n, KOU_HTTP_SET_PATH) | ~k;
    r.nreg = ~kou_512_in(n, KOU_HTTP_SET_REGNAME) | ~k;
    return r;
}

static int
kou_512_head(kou_http_parser_t *p, const u_char *buf, size_t len)
{
    return kou_http_head_fast(p, buf, len, kou_512_first, kou_512_lines,
                              NULL, kou_512_field_line, kou_512_span);
}

const kou_http_kernels_t kou_http_kernels_avx512 = {
    kou_512_request_line,
    kou_512_field_line,
    kou_512_lines,
    true,
    kou_512_span,
    kou_512_first,
    kou_512_head
};

/* ---- VBMI ---- */

#define KOU_VBMI __attribute__((target("avx512vbmi")))

/* The bytes in kou_http_sets.<set>: its bit in ascii[v], v below 0x80. */
static inline KOU_VBMI __mmask64
kou_512vbmi_in(__m512i v, unsigned set)
{
    __m512i t0 = _mm512_load_si512(kou_http_sets.ascii);
    __m512i t1 = _mm512_load_si512(kou_http_sets.ascii + 64);

    return _mm512_mask_test_epi8_mask(
        ~_mm512_movepi8_mask(v), _mm512_permutex2var_epi8(t0, v, t1),
        _mm512_set1_epi8((char) (1u << set)));
}

static inline __attribute__((always_inline)) KOU_VBMI size_t
kou_512vbmi_span(const u_char *buf, size_t i, size_t e, unsigned set)
{
    __mmask64 k, m;

    while (e - i >= 64) {
        m = ~kou_512vbmi_in(_mm512_loadu_si512(buf + i), set);
        if (m) {
            return kou_512_at(i, m);
        }
        i += 64;
    }
    k = kou_512_room(i, e);
    m = ~kou_512vbmi_in(kou_512_load(k, buf + i), set) & k;
    return m ? kou_512_at(i, m) : e;
}

static inline __attribute__((always_inline)) KOU_VBMI kou_http_lines_t
kou_512vbmi_lines(const u_char *buf, size_t i, size_t e)
{
    __m512i          v;
    __mmask64        k;
    kou_http_lines_t r;

    k = kou_512_room(i, e);
    v = e - i >= 64 ? _mm512_loadu_si512(buf + i) : kou_512_load(k, buf + i);
    r.bad = kou_512vbmi_in(v, KOU_HTTP_SET_FL_BAD) | ~k;
    r.ntc = ~kou_512vbmi_in(v, KOU_HTTP_SET_TCHAR) | ~k;
    return r;
}

/* One permute classifies the bytes for every set at once. */
static inline __attribute__((always_inline)) KOU_VBMI kou_http_first_t
kou_512vbmi_first(const u_char *buf, size_t e)
{
    __m512i          v, c;
    __mmask64        k, hi;
    kou_http_first_t r;

    k = kou_512_room(0, e);
    v = e >= 64 ? _mm512_loadu_si512(buf) : kou_512_load(k, buf);
    c = _mm512_permutex2var_epi8(_mm512_load_si512(kou_http_sets.ascii), v,
                                 _mm512_load_si512(kou_http_sets.ascii + 64));
    hi = _mm512_movepi8_mask(v);
    r.bad = _mm512_mask_test_epi8_mask(
                ~hi, c, _mm512_set1_epi8(1 << KOU_HTTP_SET_FL_BAD))
            | ~k;
    r.ntc = ~_mm512_mask_test_epi8_mask(
                 ~hi, c, _mm512_set1_epi8(1 << KOU_HTTP_SET_TCHAR))
            | ~k;
    r.npath = ~_mm512_mask_test_epi8_mask(
                   ~hi, c, _mm512_set1_epi8(1 << KOU_HTTP_SET_PATH))
              | ~k;
    r.nreg = ~_mm512_mask_test_epi8_mask(
                  ~hi, c, _mm512_set1_epi8(1 << KOU_HTTP_SET_REGNAME))
             | ~k;
    return r;
}

static KOU_VBMI int
kou_512vbmi_head(kou_http_parser_t *p, const u_char *buf, size_t len)
{
    return kou_http_head_fast(p, buf, len, kou_512vbmi_first,
                              kou_512vbmi_lines, NULL, kou_512_field_line,
                              kou_512vbmi_span);
}

const kou_http_kernels_t kou_http_kernels_avx512vbmi = {
    kou_512_request_line,
    kou_512_field_line,
    kou_512vbmi_lines,
    true,
    kou_512vbmi_span,
    kou_512vbmi_first,
    kou_512vbmi_head
};
