/*
 * The byte-classification kernels of the HTTP/1.1 parser: the only code
 * that differs between tiers. One state machine (http_parse.c) calls them
 * through a table of function pointers, once per 64-byte block of the
 * head, or per part of a line where a block does not answer, never per
 * byte.
 *
 * Every scanning kernel returns the least k in [i, e) such that buf[k] is
 * outside its class, or e when there is none; lines returns bit masks
 * instead. A kernel may read any byte of buf[0..e), including bytes before
 * i (a vector ending at e may reach back), and none at or after e. The
 * scalar kernels in http_parse.c are the definition; each tier must return
 * the same results for every input.
 *
 * Private to the parser: tier files and http_parse.c include it, nothing
 * else should.
 */

#ifndef KOU_HTTP_PARSE_KERNEL_H
#define KOU_HTTP_PARSE_KERNEL_H

#include "kou.h"
#include "http_parse.h"

/* hidden, as in http_parse.h */
#pragma GCC visibility push(hidden)

/*
 * Sets of bytes below 0x80, as the vector code looks them up. The first
 * four are what the span kernel scans; the last is the complement, among
 * bytes below 0x80, of the field-line class (every byte above is in it).
 */
enum {
    KOU_HTTP_SET_TCHAR = 0,   /* tchar: methods, field names */
    KOU_HTTP_SET_PATH,        /* pchar without '%', plus '/' */
    KOU_HTTP_SET_QUERY,       /* the path set plus '?' */
    KOU_HTTP_SET_REGNAME,     /* unreserved and sub-delims: reg-name */
    KOU_HTTP_SET_FL_BAD,      /* CTL but HTAB, and DEL */
    KOU_HTTP_SETS
};

/*
 * The sets in the two shapes vector code wants, derived from the scalar
 * tables by kou_http_kernels_prepare() so that no tier restates a set:
 *   nibble[s][lo]: bit h set iff byte (h << 4 | lo) is in set s, h < 8;
 *   ascii[b]:      bit s set iff byte b (< 0x80) is in set s.
 */
typedef struct {
    u_char nibble[KOU_HTTP_SETS][16] __attribute__((aligned(16)));
    u_char ascii[128] __attribute__((aligned(64)));
    /*
     * 0x0f in every byte: loaded, where a constant would be built anew
     * (three instructions) at every place a kernel is inlined.
     */
    u_char low4[32] __attribute__((aligned(32)));
} kou_http_sets_t;

extern kou_http_sets_t kou_http_sets;

/*
 * What lines says of 64 bytes, bit j for byte i + j; a bit is also set
 * for every position at or after e, so that a search for the next set bit
 * never passes the end of the input.
 */
typedef struct {
    uint64_t bad;             /* outside the field-line class */
    uint64_t ntc;             /* not a tchar (every bad byte is one) */
} kou_http_lines_t;

/*
 * What first says of buf[0..64): the masks of lines, and two more that
 * judge the usual request line's target and Host value without a scan.
 * As in lines, every bit at or after e is set.
 */
typedef struct {
    uint64_t bad;
    uint64_t ntc;
    uint64_t npath;           /* not in KOU_HTTP_SET_PATH */
    uint64_t nreg;            /* not in KOU_HTTP_SET_REGNAME */
} kou_http_first_t;

typedef struct {
    /*
     * Class SP and VCHAR (0x20-0x7e). Also sets sp[0] and sp[1] to the
     * first two SPs in [i, k), k the return value, or to k where there
     * are fewer.
     */
    size_t (*request_line)(const u_char *buf, size_t i, size_t e,
                           size_t sp[2]);
    /* Class HTAB, SP, VCHAR, obs-text: all but 0x00-0x08, 0x0a-0x1f, DEL. */
    size_t (*field_line)(const u_char *buf, size_t i, size_t e);
    /*
     * The masks of buf[i..i+64), i < e: the head is classified 64 bytes
     * at a time, ahead of the lines, so that finding where a field line
     * and its name end is a bit search, not a scan that must wait for the
     * line before it. Returned by value, in two registers, so that the
     * loop over lines keeps them there.
     */
    kou_http_lines_t (*lines)(const u_char *buf, size_t i, size_t e);
    /*
     * Whether the parser should find lines with lines: a tier that
     * classifies a byte at a time does better scanning each line, and
     * keeps lines only as the definition the tests compare with.
     */
    bool blocks;
    /* Class kou_http_sets.<set>, one of the first four. */
    size_t (*span)(const u_char *buf, size_t i, size_t e, unsigned set);
    /*
     * The first block of a head, e > 0: the request line, and the Host
     * field that usually follows it, are checked in its masks.
     */
    kou_http_first_t (*first)(const u_char *buf, size_t e);
    /*
     * The tier's fast path, the template of http_parse_fast.h with these
     * kernels inlined; NULL where there is none (scalar). What
     * kou_http_parse_request does on a first call: it hands over to the
     * general code where the head is not of the usual shape.
     */
    int (*head)(kou_http_parser_t *p, const u_char *buf, size_t len);
} kou_http_kernels_t;

/*
 * The kernels of the tier in use, set by kou_http_parser_set_tier, which
 * also sets kou_http_head to their head. Tests point both at
 * kou_http_kernels_avx512 to run the AVX-512 tier without VBMI on a CPU
 * that has it.
 */
extern const kou_http_kernels_t *kou_http_kernels;

/* The definition, in http_parse.c. */
extern const kou_http_kernels_t kou_http_kernels_scalar;

/* Each is defined by its tier's file, built only where it can be. */
extern const kou_http_kernels_t kou_http_kernels_sse42;
extern const kou_http_kernels_t kou_http_kernels_avx2;
extern const kou_http_kernels_t kou_http_kernels_avx512;
extern const kou_http_kernels_t kou_http_kernels_avx512vbmi;

/*
 * Fill kou_http_sets from the scalar tables, on the first call only; set
 * tier calls it before it lets a vector tier run.
 */
void kou_http_kernels_prepare(void);

#pragma GCC visibility pop

#endif /* KOU_HTTP_PARSE_KERNEL_H */
