/*
 * The HTTP/1.1 request parser (RFC 9112, RFC 9110): request line, header
 * block, framing decisions, and the chunked body decoder.
 *
 * Zero-copy: every result is a slice of the caller's buffer. Resumable: on
 * KOU_AGAIN the caller appends bytes and calls again with the whole buffer
 * (same start, longer length); the parser keeps offsets, not pointers, so the
 * caller may move the bytes between calls. Slices are valid pointers into the
 * buffer passed to the call that returned KOU_OK.
 *
 * Return values of the parse functions: KOU_OK (complete), KOU_AGAIN (need
 * more bytes), or the HTTP status the client must get (400, 413, 414, 417,
 * 431, 501, 505). See DESIGN §3 for which input gets which status.
 */

#ifndef KOU_HTTP_PARSE_H
#define KOU_HTTP_PARSE_H

#include "kou.h"

/*
 * Every definition of the core is hidden (-fvisibility=hidden); saying so
 * of the declarations too lets the compiler address the parser's tables
 * and call its functions directly in the position-independent code
 * libtool builds, not through the GOT, which costs a register and an
 * instruction at each use in the fast path.
 */
#pragma GCC visibility push(hidden)

typedef enum {
    KOU_METHOD_UNKNOWN = 0,   /* a valid token the parser does not know */
    KOU_METHOD_GET,
    KOU_METHOD_HEAD,
    KOU_METHOD_POST,
    KOU_METHOD_PUT,
    KOU_METHOD_DELETE,
    KOU_METHOD_CONNECT,
    KOU_METHOD_OPTIONS,
    KOU_METHOD_TRACE,
    KOU_METHOD_PATCH,
    KOU_METHOD_COUNT
} kou_method_e;

typedef enum {
    KOU_TARGET_ORIGIN = 0,    /* /path?query */
    KOU_TARGET_ABSOLUTE,      /* http://host:port/path?query */
    KOU_TARGET_AUTHORITY,     /* host:port, CONNECT only */
    KOU_TARGET_ASTERISK       /* *, OPTIONS only */
} kou_target_form_e;

typedef struct {
    size_t max_request_line;  /* request line without CRLF; over it: 414 */
    size_t max_header_block;  /* whole head incl. request line; over: 431 */
    size_t max_headers;       /* field lines; over it: 431 */
} kou_http_limits_t;

typedef struct {
    /*
     * In an order that lets kou_http_parser_init write what it sets in a
     * few wide stores: the fields it sets, 16 bytes at a time, come first.
     */

    /* ---- input ---- */
    const kou_http_limits_t *limits;
    kou_header_t *headers;    /* caller's array, limits->max_headers long */

    /* ---- private resumable state (offsets into the buffer) ---- */
    size_t   pos;             /* next byte to examine */
    size_t   line_start;      /* first byte of the line being scanned */
    unsigned state;           /* which kind of line pos is in */
    unsigned flags;           /* what the fields seen so far said */

    /*
     * ---- results, valid after KOU_OK ----
     * Until then the slices hold offsets, not pointers: that is what lets
     * the caller move the bytes between calls.
     */
    unsigned  method_id;      /* kou_method_e */
    unsigned  target_form;    /* kou_target_form_e */
    /*
     * uri-host without port, from the target (absolute or authority form)
     * or from Host
     */
    kou_str_t host;
    kou_str_t port;           /* digits, empty if none */
    size_t    nheaders;
    size_t    head_len;       /* bytes of request line + fields + final CRLF */
    int64_t   content_length; /* -1 when absent */
    unsigned  version;        /* 10 or 11 (HTTP/1.x with x>1 is 11) */
    unsigned  chunked:1;          /* Transfer-Encoding: ..., chunked */
    unsigned  conn_close:1;       /* Connection has "close" */
    unsigned  conn_keep_alive:1;  /* Connection has "keep-alive" */
    unsigned  conn_upgrade:1;     /* Connection has "upgrade" */
    unsigned  expect_continue:1;  /* Expect: 100-continue */
    kou_str_t method;
    kou_str_t target;         /* as received */
    /* raw (still percent-encoded); "" for * and authority-form */
    kou_str_t path;
    kou_str_t query;          /* after '?', without it; empty if none */
} kou_http_parser_t;

/*
 * Prepare p for a new request. headers must hold limits->max_headers.
 * Inline, as it runs once per request: only what a parse does not always
 * set (method, target, path and query are set by every request line that
 * passes); state 0 is the request line.
 */
static inline void
kou_http_parser_init(kou_http_parser_t *p, const kou_http_limits_t *lim,
                     kou_header_t *headers)
{
    p->limits = lim;
    p->headers = headers;
    p->pos = 0;
    p->line_start = 0;
    p->state = 0;
    p->flags = 0;
    p->method_id = KOU_METHOD_UNKNOWN;
    p->target_form = KOU_TARGET_ORIGIN;
    p->host.p = NULL;
    p->host.n = 0;
    p->port.p = NULL;
    p->port.n = 0;
    p->nheaders = 0;
    p->head_len = 0;
    p->content_length = -1;
    p->version = 0;
    p->chunked = 0;
    p->conn_close = 0;
    p->conn_keep_alive = 0;
    p->conn_upgrade = 0;
    p->expect_continue = 0;
}

/*
 * Parse the head of a request from buf[0..len). One leading empty line
 * (CRLF) before the request line is skipped (it counts in head_len). On
 * KOU_OK the head is p->head_len bytes and the results are filled in; body
 * bytes (if any) start at buf + p->head_len. Unknown but valid token methods
 * return KOU_OK with method_id KOU_METHOD_UNKNOWN (the caller decides 501).
 * Limits are applied to partial input: a request line that already exceeds
 * the limit without its CRLF gets 414 at once. Faults are answered as soon
 * as no later byte can change the answer: a field line starting with SP or
 * HTAB (obs-fold) is 400 at that byte; a request line is judged when the
 * 8 bytes of its version are in, so "GET / HTTP/2.0" is 505 before its
 * CRLF (and stays 505 whatever follows), "GET / HTTP/1.1x" is 400 at the
 * "x". After any result other than KOU_AGAIN, call kou_http_parser_init
 * before parsing the next request.
 */
static inline int
kou_http_parse_request(kou_http_parser_t *p, const u_char *buf, size_t len);

/*
 * The general state machine: kou_http_parse_request for any call, from
 * whatever state p is in. Only kou_http_parse_request and the tiers'
 * fast paths call it.
 */
int kou_http_parse_general(kou_http_parser_t *p, const u_char *buf,
                           size_t len);

/*
 * The fast path of the tier in use (NULL for scalar), set with the tier:
 * a first call's head in the usual shape, handed over to the general
 * code where it is not. Only kou_http_parse_request calls it.
 */
extern int (*kou_http_head)(kou_http_parser_t *p, const u_char *buf,
                            size_t len);

/*
 * Inline, so that a first call goes straight to the tier's fast path: a
 * first call is one where p is as kou_http_parser_init left it (state 0,
 * the request line, at offset 0).
 */
static inline int
kou_http_parse_request(kou_http_parser_t *p, const u_char *buf, size_t len)
{
    if (p->state == 0 && p->pos == 0 && len != 0 && kou_http_head != NULL) {
        return kou_http_head(p, buf, len);
    }
    return kou_http_parse_general(p, buf, len);
}

/*
 * Implementation tiers. All give byte-for-byte the same results; they
 * differ only in how many bytes they classify per instruction. avx2
 * needs AVX2, BMI1 and BMI2; avx512 AVX-512BW and VL, BMI1 and BMI2, and
 * uses VBMI's byte permutes where the CPU has them. Only scalar is built
 * for other CPUs than x86-64.
 */
typedef enum {
    KOU_SIMD_SCALAR = 0,
    KOU_SIMD_SSE42,
    KOU_SIMD_AVX2,
    KOU_SIMD_AVX512,
    KOU_SIMD_COUNT
} kou_simd_tier_e;

/*
 * Choose the tier for this process, once, at start-up, before any thread
 * parses: the one named by the environment variable KOURIER_SIMD (scalar,
 * sse42, avx2, avx512) if set and usable, else the fastest the CPU runs:
 * avx2, then avx512, sse42, scalar (AVX-512 measured no faster than AVX2
 * on the short lines of HTTP heads). Returns KOU_OK, or KOU_ERROR (with that
 * default selected) when KOURIER_SIMD names a tier that is unknown or that
 * this CPU or build cannot run.
 */
int kou_http_parser_select(void);

/*
 * Force a tier (tests, benchmarks); like select, not while another thread
 * parses. KOU_ERROR if it cannot run here.
 */
int kou_http_parser_set_tier(unsigned tier);

/* Can this tier run on this CPU, and was it built? */
bool kou_http_parser_tier_available(unsigned tier);

/* The tier in use, or the name of `tier`: "scalar", "sse42", ... */
const char *kou_http_parser_tier(void);
const char *kou_http_parser_tier_name(unsigned tier);

/* Name of a known method, for logs and Allow. */
kou_str_t kou_http_method_name(unsigned method_id);

/* ---- chunked body decoder ---- */

/*
 * The most bytes a chunk-size line may hold, chunk-size and chunk-exts,
 * CRLF excluded; the byte after them that is not its CR is 400. Without a
 * bound a client could keep the decoder reading extensions forever.
 */
#define KOU_HTTP_CHUNK_LINE_MAX 4096

typedef struct {
    unsigned state;
    uint64_t remaining;       /* bytes left in the current chunk */
    size_t   line_bytes;      /* bytes of the current chunk-size line */
    size_t   trailer_bytes;   /* bytes of trailer field lines seen */
    size_t   max_trailer;     /* limit for the trailer section; over: 431 */
} kou_http_chunked_t;

void kou_http_chunked_init(kou_http_chunked_t *ch, size_t max_trailer);

/*
 * Decode from buf[0..len). Sets *consumed to the bytes consumed and *data to
 * a slice of chunk payload (possibly empty) found at the start of what was
 * consumed... precisely: each call consumes framing bytes up to and
 * including at most one run of payload, which it returns in *data (a slice
 * of buf). Returns:
 *   KOU_OK    - *data (maybe empty) delivered; call again with the rest
 *   KOU_AGAIN - everything given was consumed (*data may hold payload);
 *               more input is needed
 *   KOU_DONE  - the last chunk and the trailer section are complete;
 *               *consumed bytes belong to the body, the rest to the next
 *               request
 *   400       - bad chunk-size, chunk-ext, missing CRLF, bad trailer field,
 *               chunk-size line over KOU_HTTP_CHUNK_LINE_MAX
 *   431       - trailer section over max_trailer
 * Chunk sizes that overflow 64 bits are 400.
 */
int kou_http_parse_chunked(kou_http_chunked_t *ch, const u_char *buf,
                           size_t len, size_t *consumed, kou_str_t *data);

#pragma GCC visibility pop

#endif /* KOU_HTTP_PARSE_H */
