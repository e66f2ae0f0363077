/*
 * The byte-classification kernels of the HTTP/1.1 parser: the only code
 * that differs between tiers. One state machine (http_parse.c) calls them
 * through a table of function pointers, once per line or per part of a
 * line, never per byte.
 *
 * Every kernel returns the least k in [i, e) such that buf[k] is outside
 * its class, or e when there is none. It may read any byte of buf[0..e),
 * including bytes before i (a vector ending at e may reach back), and none
 * at or after e. The scalar kernels in http_parse.c are the definition;
 * each tier must return the same k for every input.
 *
 * Private to the parser: tier files and http_parse.c include it, nothing
 * else should.
 */

#ifndef KOU_HTTP_PARSE_KERNEL_H
#define KOU_HTTP_PARSE_KERNEL_H

#include "kou.h"

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
} kou_http_sets_t;

extern kou_http_sets_t kou_http_sets;

typedef struct {
    size_t end;
    size_t name;
} kou_http_line_t;

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
     * field_line for a scan that starts a line: end is what field_line
     * returns, name the first k >= i that is not a tchar, or e (never
     * more than end, since every tchar is in the field-line class). Two
     * values in registers, not one through memory: this runs per line.
     */
    kou_http_line_t (*field_start)(const u_char *buf, size_t i, size_t e);
    /* Class kou_http_sets.<set>, one of the first four. */
    size_t (*span)(const u_char *buf, size_t i, size_t e, unsigned set);
} kou_http_kernels_t;

/*
 * The kernels of the tier in use, set by kou_http_parser_set_tier. Tests
 * point it at kou_http_kernels_avx512 to run the AVX-512 tier without
 * VBMI on a CPU that has it.
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

#endif /* KOU_HTTP_PARSE_KERNEL_H */
