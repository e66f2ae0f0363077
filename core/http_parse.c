/*
 * The scalar reference HTTP/1.1 request parser and chunked decoder, and
 * the choice of tier. The contract is in http_parse.h; which input gets
 * which status is DESIGN §3.
 *
 * SIMD tiers share this state machine and differ only in the kernels of
 * http_parse_kernel.h, which classify bytes; the scalar kernels below are
 * their definition. The semantics are kept easy to restate:
 *
 *   1. The head is cut into lines by one scan per line that stops at the
 *      first byte outside the line's class (request line: SP and VCHAR;
 *      field line: HTAB, SP, VCHAR, obs-text). That byte must be CR, and the
 *      next one LF; anything else is 400. A field line may not start with
 *      SP or HTAB (obs-fold): 400 as soon as that byte is seen.
 *   2. A field line is parsed for structure (name, value) and meaning
 *      (Host, Content-Length, ...) once it is complete, so its faults are
 *      decided at the LF that ends it.
 *   3. The request line is judged as soon as the 8 bytes of its
 *      HTTP-version are in, CRLF or not: method, target, then version
 *      (400 before 505). After its second SP, a byte that cannot stand
 *      where it is in "HTTP/" DIGIT "." DIGIT CR is 400 at once. So
 *      "GET / HTTP/5.6" is 505 without waiting for a CRLF that could not
 *      make it acceptable, and "HTTP/2.0x" is 505 too: the decision was
 *      taken at the "0".
 *   4. Limits are positions: the byte at offset max_header_block is 431,
 *      an in-class byte at offset max_request_line of the request line is
 *      414. A decision at an earlier position wins.
 *   5. Decisions that need the whole head (Host missing, TE with CL, a
 *      coding we do not implement, an expectation we cannot meet) are taken
 *      at the empty line, in that order.
 *
 * Every status is thus tied to a position in the input, which is why a
 * request split anywhere gives the same answer as a whole one. Resuming
 * costs next to nothing: p->pos is where step 1 stopped, and no line
 * before it is looked at again (at most the rest of its 64-byte block is
 * classified again, step 1 being done with the masks of whole blocks).
 *
 * A first call first tries the head in the shape nearly all have
 * (kou_http_head_fast, in http_parse_fast.h, built by each vector tier
 * with its kernels inlined): the request line, then field lines that need
 * no more than a colon, one SP and a name to look at, in straight-line
 * code with its state in registers. At the first line of any other shape it
 * hands over to the general code, exactly as if the input had been split
 * right before that line, and the general code decides every status
 * there; the shortcut itself only ever accepts, or reports the status of
 * a field that the general code would have read alike.
 */

#include <stdlib.h>

#include "kou_build.h"
#include "http_parse_fast.h"

/*
 * Character classes, one table each so that every table reads as the ABNF
 * it comes from (range designators cannot OR bits into a shared table).
 */

/* tchar, RFC 9110 §5.6.2: methods, field names, codings, chunk-ext names */
static const u_char kou_http_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
    ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1,
    ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1
};

/* bytes a request line may hold: SP and VCHAR (RFC 9112 §3) */
static const u_char kou_http_rl[256] = {
    [' ' ... '~'] = 1
};

/*
 * bytes a field line may hold: HTAB, SP, VCHAR, obs-text (RFC 9112 §5,
 * RFC 9110 §5.5). Also the second byte of a quoted-pair.
 */
static const u_char kou_http_fl[256] = {
    ['\t'] = 1, [' ' ... '~'] = 1, [0x80 ... 0xff] = 1
};

/*
 * path bytes: pchar without pct-encoded, plus '/' (RFC 3986 §3.3):
 * unreserved, sub-delims, ':', '@', '/'.
 */
static const u_char kou_http_path[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1,
    ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1, [')'] = 1,
    ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1,
    [':'] = 1, ['@'] = 1, ['/'] = 1
};

/* query bytes: path bytes and '?' (RFC 3986 §3.4) */
static const u_char kou_http_query[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1,
    ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1, [')'] = 1,
    ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1,
    [':'] = 1, ['@'] = 1, ['/'] = 1, ['?'] = 1
};

/* reg-name bytes without pct-encoded: unreserved, sub-delims (§3.2.2) */
static const u_char kou_http_regname[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1,
    ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1, [')'] = 1,
    ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1
};

/* qdtext, RFC 9110 §5.6.4 */
static const u_char kou_http_qdtext[256] = {
    ['\t'] = 1, [' '] = 1, ['!'] = 1, ['#' ... '['] = 1, [']' ... '~'] = 1,
    [0x80 ... 0xff] = 1
};

/* HEXDIG, holding the digit's value plus one */
static const u_char kou_http_hex[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5,
    ['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9, ['9'] = 10,
    ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
    ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16
};

static const kou_str_t kou_http_methods[KOU_METHOD_COUNT] = {
    [KOU_METHOD_UNKNOWN] = { "", 0 },
    [KOU_METHOD_GET] = KOU_STR("GET"),
    [KOU_METHOD_HEAD] = KOU_STR("HEAD"),
    [KOU_METHOD_POST] = KOU_STR("POST"),
    [KOU_METHOD_PUT] = KOU_STR("PUT"),
    [KOU_METHOD_DELETE] = KOU_STR("DELETE"),
    [KOU_METHOD_CONNECT] = KOU_STR("CONNECT"),
    [KOU_METHOD_OPTIONS] = KOU_STR("OPTIONS"),
    [KOU_METHOD_TRACE] = KOU_STR("TRACE"),
    [KOU_METHOD_PATCH] = KOU_STR("PATCH")
};

static inline bool
kou_http_is_digit(u_char c)
{
    return c >= '0' && c <= '9';
}

static inline bool
kou_http_is_ows(u_char c)
{
    return c == ' ' || c == '\t';
}

static inline size_t
kou_http_skip_ows(const u_char *buf, size_t i, size_t e)
{
    while (i < e && kou_http_is_ows(buf[i])) {
        i++;
    }
    return i;
}

static inline size_t
kou_http_skip_tchar(const u_char *buf, size_t i, size_t e)
{
    while (i < e && kou_http_tchar[buf[i]]) {
        i++;
    }
    return i;
}

/* ---- the scalar kernels: what every tier's kernels must return ---- */

static size_t
kou_http_scalar_request_line(const u_char *buf, size_t i, size_t e,
                             size_t sp[2])
{
    size_t n = 0, k;

    for (k = i; k < e && kou_http_rl[buf[k]]; k++) {
        if (buf[k] == ' ' && n < 2) {
            sp[n++] = k;
        }
    }
    while (n < 2) {
        sp[n++] = k;
    }
    return k;
}

static size_t
kou_http_scalar_field_line(const u_char *buf, size_t i, size_t e)
{
    while (i < e && kou_http_fl[buf[i]]) {
        i++;
    }
    return i;
}

static const u_char *const kou_http_set_table[KOU_HTTP_SET_FL_BAD] = {
    [KOU_HTTP_SET_TCHAR] = kou_http_tchar,
    [KOU_HTTP_SET_PATH] = kou_http_path,
    [KOU_HTTP_SET_QUERY] = kou_http_query,
    [KOU_HTTP_SET_REGNAME] = kou_http_regname
};

static size_t
kou_http_scalar_span(const u_char *buf, size_t i, size_t e, unsigned set)
{
    const u_char *cls = kou_http_set_table[set];

    while (i < e && cls[buf[i]]) {
        i++;
    }
    return i;
}

static kou_http_lines_t
kou_http_scalar_lines(const u_char *buf, size_t i, size_t e)
{
    kou_http_lines_t m = { ~0ull, ~0ull };
    size_t           j, n = kou_min(e - i, 64);

    for (j = 0; j < n; j++) {
        if (kou_http_fl[buf[i + j]]) {
            m.bad &= ~(1ull << j);
        }
        if (kou_http_tchar[buf[i + j]]) {
            m.ntc &= ~(1ull << j);
        }
    }
    return m;
}

static kou_http_first_t
kou_http_scalar_first(const u_char *buf, size_t e)
{
    kou_http_first_t m = { ~0ull, ~0ull, ~0ull, ~0ull };
    size_t           j, n = kou_min(e, 64);

    for (j = 0; j < n; j++) {
        m.bad &= ~((uint64_t) kou_http_fl[buf[j]] << j);
        m.ntc &= ~((uint64_t) kou_http_tchar[buf[j]] << j);
        m.npath &= ~((uint64_t) kou_http_path[buf[j]] << j);
        m.nreg &= ~((uint64_t) kou_http_regname[buf[j]] << j);
    }
    return m;
}

const kou_http_kernels_t kou_http_kernels_scalar = {
    kou_http_scalar_request_line,
    kou_http_scalar_field_line,
    kou_http_scalar_lines,
    false,
    kou_http_scalar_span,
    kou_http_scalar_first,
    NULL
};

const kou_http_kernels_t *kou_http_kernels = &kou_http_kernels_scalar;

kou_http_sets_t kou_http_sets;

void
kou_http_kernels_prepare(void)
{
    static bool done;
    unsigned    s, b;

    if (done) {
        return;
    }
    done = true;
    memset(kou_http_sets.low4, 0x0f, sizeof(kou_http_sets.low4));
    for (s = 0; s < KOU_HTTP_SETS; s++) {
        for (b = 0; b < 0x80; b++) {
            if (s == KOU_HTTP_SET_FL_BAD ? !kou_http_fl[b]
                                         : kou_http_set_table[s][b])
            {
                kou_http_sets.nibble[s][b & 0x0f] |= (u_char) (1u << (b >> 4));
                kou_http_sets.ascii[b] |= (u_char) (1u << s);
            }
        }
    }
}

/*
 * The kernel's span over buf[i..e) when buf[0..rd), rd >= e, may be read:
 * a kernel given more room uses whole vectors where a short e would send
 * it to its byte loop, and clamping at e gives exactly the shorter scan.
 */
static inline size_t
kou_http_span_to(const u_char *buf, size_t i, size_t e, size_t rd,
                 unsigned set)
{
    return kou_min(kou_http_kernels->span(buf, i, rd, set), e);
}

/*
 * Scan members of the set and valid pct-encodings ("%" HEXDIG HEXDIG) from
 * buf[i], buf[0..rd) readable; return the index of the first byte in
 * [i, e) that is neither, or e. A '%' not followed by two hex digits stops
 * the scan at the '%', so callers that demand a delimiter there reject it.
 */
static size_t
kou_http_span_pct(const u_char *buf, size_t i, size_t e, size_t rd,
                  unsigned set)
{
    for ( ;; ) {
        i = kou_http_span_to(buf, i, e, rd, set);
        if (i == e || buf[i] != '%' || e - i < 3
            || !kou_http_hex[buf[i + 1]] || !kou_http_hex[buf[i + 2]])
        {
            return i;
        }
        i += 3;
    }
}

/*
 * IPv4address of RFC 3986 §3.2.2: four dec-octets, no leading zeros, none
 * above 255. Stricter than inet_aton() on purpose: "0x7f.1" or "0177.1"
 * would name 127.0.0.1 to some resolvers and a reg-name to others.
 *
 * s[n] must be readable and be neither a digit nor '.', so that the scan
 * stops there without a bound check per byte: every caller's host ends
 * at a byte outside reg-name (':', '/', '?', ']', '@', a '%' that does
 * not start an escape, a CR, SP or HTAB), never at the end of the input:
 * no incomplete line is judged.
 */
static inline bool
kou_http_ipv4(const u_char *s, size_t n)
{
    const u_char *e = s + n;
    unsigned      part, v, d;

    for (part = 0; ; part++) {
        if ((v = (unsigned) *s - '0') > 9) {
            return false;
        }
        s++;
        /* a leading 0 is the whole octet: a digit after it stops below */
        if (v != 0 && (d = (unsigned) *s - '0') <= 9) {
            v = v * 10 + d;
            s++;
            if ((d = (unsigned) *s - '0') <= 9) {
                if (v * 10 + d > 255) {
                    return false;
                }
                s++;
            }
        }
        if (part == 3) {
            /* a fourth digit or anything else after the last octet */
            return s == e;
        }
        if (*s != '.') {
            return false;
        }
        s++;
    }
}

/* IPv6address of RFC 3986 §3.2.2, including the dotted-quad tail. */
static bool
kou_http_ipv6(const u_char *s, size_t n)
{
    size_t   i = 0, b;
    unsigned groups = 0;
    bool     elided = false;

    if (n >= 2 && s[0] == ':' && s[1] == ':') {
        elided = true;
        i = 2;
    }
    while (i < n) {
        b = i;
        while (i < n && i - b < 4 && kou_http_hex[s[i]]) {
            i++;
        }
        if (i < n && s[i] == '.') {
            /* ls32 as an IPv4address: it must end the literal */
            if (!kou_http_ipv4(s + b, n - b)) {
                return false;
            }
            groups += 2;
            break;
        }
        if (i == b) {
            return false;
        }
        groups++;
        if (i == n) {
            break;
        }
        if (s[i] != ':') {
            return false;
        }
        i++;
        if (i < n && s[i] == ':') {
            if (elided) {
                return false;
            }
            elided = true;
            i++;
        } else if (i == n) {
            return false;
        }
    }
    return elided ? groups <= 7 : groups == 8;
}

/* The inside of an IP-literal: IPv6address or IPvFuture (RFC 3986). */
static bool
kou_http_ip_literal(const u_char *s, size_t n)
{
    size_t i;

    if (n == 0 || (s[0] | 0x20) != 'v') {
        return kou_http_ipv6(s, n);
    }
    /* "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ) */
    for (i = 1; i < n && kou_http_hex[s[i]]; i++) {
        /* void */
    }
    if (i == 1 || i == n || s[i] != '.' || ++i == n) {
        return false;
    }
    for ( ; i < n; i++) {
        if (!kou_http_regname[s[i]] && s[i] != ':') {
            return false;
        }
    }
    return true;
}

/*
 * Whether a reg-name "ends in a number" the way the WHATWG URL standard
 * decides that a host is IPv4: its last label (one trailing dot ignored) is
 * all digits, or "0x" and hex digits. Such a name is only accepted when it
 * is a plain dotted quad, so that no two readers can disagree on it.
 */
static bool
kou_http_numeric_label(const u_char *s, size_t n)
{
    size_t b, i;

    for (b = n; b > 0 && s[b - 1] != '.'; b--) {
        /* void */
    }
    if (b == n) {
        return false;
    }
    i = b;
    if (n - b >= 2 && s[b] == '0' && (s[b + 1] | 0x20) == 'x') {
        for (i = b + 2; i < n && kou_http_hex[s[i]]; i++) {
            /* void */
        }
        return i == n;
    }
    while (i < n && kou_http_is_digit(s[i])) {
        i++;
    }
    return i == n;
}

static inline bool
kou_http_numeric_host(const u_char *s, size_t n)
{
    if (n > 0 && s[n - 1] == '.') {
        n--;
    }
    /* most names end in a letter no number ends in: no need to look back */
    if (n == 0 || !(kou_http_hex[s[n - 1]] || (s[n - 1] | 0x20) == 'x')) {
        return false;
    }
    return kou_http_numeric_label(s, n);
}

/* Nothing at buf[i..e), or ":" *DIGIT (RFC 3986 §3.2.3). */
static inline bool
kou_http_port(const u_char *buf, size_t i, size_t e)
{
    if (i == e) {
        return true;
    }
    if (buf[i] != ':') {
        return false;
    }
    for (i++; i < e; i++) {
        if (!kou_http_is_digit(buf[i])) {
            return false;
        }
    }
    return true;
}

/*
 * uri-host [ ":" port ] in buf[s..e) (RFC 3986 §3.2.2-3), as an authority
 * without userinfo or as a Host value. On success *hend is where the host
 * ends; a port, possibly empty, runs from *hend + 1 to e when *hend < e.
 * The host may be empty: whether that is allowed is the caller's call.
 * buf[0..rd) may be read.
 */
static bool
kou_http_host_port(const u_char *buf, size_t s, size_t e, size_t rd,
                   size_t *hend)
{
    size_t i = s;

    if (i < e && buf[i] == '[') {
        while (i < e && buf[i] != ']') {
            i++;
        }
        if (i == e || !kou_http_ip_literal(buf + s + 1, i - s - 1)) {
            return false;
        }
        i++;
    } else {
        i = kou_http_span_pct(buf, s, e, rd, KOU_HTTP_SET_REGNAME);
        if (kou_http_numeric_host(buf + s, i - s)
            && !kou_http_ipv4(buf + s, i - s))
        {
            return false;
        }
    }
    *hend = i;
    return kou_http_port(buf, i, e);
}

static void
kou_http_set_host(kou_http_parser_t *p, size_t s, size_t hend, size_t e)
{
    kou_http_span(&p->host, s, hend - s);
    if (hend < e) {
        kou_http_span(&p->port, hend + 1, e - hend - 1);
    } else {
        kou_http_span(&p->port, e, 0);
    }
}

/*
 * absolute-path [ "?" query ] in buf[s..e) (RFC 9112 §3.2.1), also the
 * path-abempty of absolute-form, which may be empty. '#' and every byte
 * outside the sets are 400. buf[0..rd) may be read.
 */
static int
kou_http_path_query(kou_http_parser_t *p, const u_char *buf, size_t s,
                    size_t e, size_t rd)
{
    size_t i, q;

    i = kou_http_span_pct(buf, s, e, rd, KOU_HTTP_SET_PATH);
    kou_http_span(&p->path, s, i - s);
    if (i == e) {
        kou_http_span(&p->query, e, 0);
        return KOU_OK;
    }
    if (buf[i] != '?') {
        return 400;
    }
    q = i + 1;
    if (kou_http_span_pct(buf, q, e, rd, KOU_HTTP_SET_QUERY) != e) {
        return 400;
    }
    kou_http_span(&p->query, q, e - q);
    return KOU_OK;
}

/*
 * The request-target in buf[s..e), non-empty, VCHAR only, buf[0..rd)
 * readable. Its form must suit the method (RFC 9112 §3.2): CONNECT takes
 * authority-form and only it, '*' is for OPTIONS, every other target is
 * origin-form or an http(s) absolute-form.
 */
static int
kou_http_target(kou_http_parser_t *p, const u_char *buf, size_t s, size_t e,
                size_t rd)
{
    size_t    i, a, hend;
    kou_str_t t;

    kou_http_span(&p->target, s, e - s);

    if (p->method_id == KOU_METHOD_CONNECT) {
        /* RFC 9110 §9.3.6: the port is required, there is no default */
        if (!kou_http_host_port(buf, s, e, rd, &hend) || hend == s
            || e - hend < 2)
        {
            return 400;
        }
        p->target_form = KOU_TARGET_AUTHORITY;
        kou_http_set_host(p, s, hend, e);
        kou_http_span(&p->path, e, 0);
        kou_http_span(&p->query, e, 0);
        return KOU_OK;
    }

    if (buf[s] == '/') {
        p->target_form = KOU_TARGET_ORIGIN;
        return kou_http_path_query(p, buf, s, e, rd);
    }

    if (e - s == 1 && buf[s] == '*') {
        if (p->method_id != KOU_METHOD_OPTIONS) {
            return 400;
        }
        p->target_form = KOU_TARGET_ASTERISK;
        kou_http_span(&p->path, e, 0);
        kou_http_span(&p->query, e, 0);
        return KOU_OK;
    }

    /* absolute-form: the scheme is case-insensitive (RFC 3986 §3.1) */
    t = kou_http_str(buf, s, kou_min(e, s + 7));
    if (kou_str_eq_lit(t, "http://")) {
        a = s + 7;
    } else if (kou_str_eq_lit(kou_http_str(buf, s, kou_min(e, s + 8)),
                              "https://"))
    {
        a = s + 8;
    } else {
        return 400;
    }
    for (i = a; i < e && buf[i] != '/' && buf[i] != '?'; i++) {
        /* void */
    }
    /*
     * userinfo stops the host scan at '@' and fails there; an empty host
     * is invalid for http(s) (RFC 9110 §4.2.1).
     */
    if (!kou_http_host_port(buf, a, i, rd, &hend) || hend == a) {
        return 400;
    }
    p->target_form = KOU_TARGET_ABSOLUTE;
    kou_http_set_host(p, a, hend, i);
    if (i == e || buf[i] == '?') {
        p->flags |= KOU_HP_ROOT_PATH;
    }
    return kou_http_path_query(p, buf, i, e, rd);
}

/* The known methods by length first: one or two fixed-size compares. */
unsigned
kou_http_method_lookup(const u_char *m, size_t n)
{
    switch (n) {
    case 3:
        return memcmp(m, "GET", 3) == 0 ? KOU_METHOD_GET
               : memcmp(m, "PUT", 3) == 0 ? KOU_METHOD_PUT
               : KOU_METHOD_UNKNOWN;
    case 4:
        return memcmp(m, "POST", 4) == 0 ? KOU_METHOD_POST
               : memcmp(m, "HEAD", 4) == 0 ? KOU_METHOD_HEAD
               : KOU_METHOD_UNKNOWN;
    case 5:
        return memcmp(m, "PATCH", 5) == 0 ? KOU_METHOD_PATCH
               : memcmp(m, "TRACE", 5) == 0 ? KOU_METHOD_TRACE
               : KOU_METHOD_UNKNOWN;
    case 6:
        return memcmp(m, "DELETE", 6) == 0 ? KOU_METHOD_DELETE
               : KOU_METHOD_UNKNOWN;
    case 7:
        return memcmp(m, "OPTIONS", 7) == 0 ? KOU_METHOD_OPTIONS
               : memcmp(m, "CONNECT", 7) == 0 ? KOU_METHOD_CONNECT
               : KOU_METHOD_UNKNOWN;
    default:
        return KOU_METHOD_UNKNOWN;
    }
}

/* All 400s come before the 505: a malformed line is never a version one. */
int
kou_http_request_line(kou_http_parser_t *p, const u_char *buf, size_t v,
                      size_t rd)
{
    size_t ms = (uintptr_t) p->method.p, me = ms + p->method.n;
    size_t ts = (uintptr_t) p->target.p, te = ts + p->target.n;
    int    rc;

    /* a method we know is a token; only the others need the scan */
    p->method_id = kou_http_method_lookup(buf + ms, me - ms);
    if (p->method_id == KOU_METHOD_UNKNOWN
        && (me == ms
            || kou_http_span_to(buf, ms, me, rd, KOU_HTTP_SET_TCHAR) != me))
    {
        return 400;
    }
    if (te == ts) {
        return 400;
    }
    if (buf[ts] == '/' && p->method_id != KOU_METHOD_CONNECT
        && kou_http_span_to(buf, ts, te, rd, KOU_HTTP_SET_PATH) == te)
    {
        /* origin-form without query or pct-encoding: what most are */
        /*
         * p->target already spans it; path is written apart rather than
         * copied from it, which would load what was just stored in two
         * halves as one, a load the store buffer cannot forward.
         */
        p->target_form = KOU_TARGET_ORIGIN;
        kou_http_span(&p->path, ts, te - ts);
        kou_http_span(&p->query, te, 0);
    } else {
        rc = kou_http_target(p, buf, ts, te, rd);
        if (rc != KOU_OK) {
            return rc;
        }
    }
    /* RFC 9110 §2.5: a higher minor version is served as the highest we do */
    if (buf[v + 5] != '1') {
        return 505;
    }
    p->version = buf[v + 7] == '0' ? 10 : 11;
    return KOU_OK;
}

/*
 * Follow the request line over buf[from..to), bytes the scan found to be
 * SP or VCHAR and that no earlier call saw, sp[] the first two SPs among
 * them (to where fewer), buf[0..rd) readable. The first two SPs of the
 * line are kept as the ends of p->method and p->target; after the second,
 * the bytes must spell "HTTP/" DIGIT "." DIGIT and the line is judged when
 * the last of them is in (point 3 at the top). Returns KOU_OK while the
 * line can still be acceptable, else its status.
 */
static int
kou_http_request_follow(kou_http_parser_t *p, const u_char *buf,
                        size_t to, const size_t sp[2], size_t rd)
{
    static const u_char ver[8] = "HTTP/1.1";
    size_t              v, n, j, k = 0;
    int                 rc;

    if (!(p->flags & KOU_HP_SP2)) {
        if (!(p->flags & KOU_HP_SP1)) {
            if (sp[0] == to) {
                return KOU_OK;
            }
            kou_http_span(&p->method, p->line_start, sp[0] - p->line_start);
            p->flags |= KOU_HP_SP1;
            k = 1;
        }
        if (sp[k] == to) {
            return KOU_OK;
        }
        v = (uintptr_t) p->method.p + p->method.n + 1;
        kou_http_span(&p->target, v, sp[k] - v);
        p->flags |= KOU_HP_SP2;
    }

    v = (uintptr_t) p->target.p + p->target.n + 1;
    if (to <= v) {
        return KOU_OK;
    }
    n = kou_min(to - v, 8);
    /* the usual versions in one compare, the byte loop for the rest */
    if (n < 8 || (memcmp(buf + v, "HTTP/1.1", 8) != 0
                  && memcmp(buf + v, "HTTP/1.0", 8) != 0))
    {
        for (j = 0; j < n; j++) {
            if (j == 5 || j == 7 ? !kou_http_is_digit(buf[v + j])
                                 : buf[v + j] != ver[j])
            {
                return 400;
            }
        }
        if (n < 8) {
            return KOU_OK;
        }
    }
    if (!(p->flags & KOU_HP_RL_DONE)) {
        rc = kou_http_request_line(p, buf, v, rd);
        if (rc != KOU_OK) {
            return rc;
        }
        p->flags |= KOU_HP_RL_DONE;
    }
    /* only CR may follow the version, and CR is not in the scanned class */
    return to > v + 8 ? 400 : KOU_OK;
}

/*
 * Next element of a comma-separated list (RFC 9110 §5.6.1) in buf[*i..e),
 * OWS trimmed; empty elements are skipped as the RFC asks. Returns false
 * when the list is exhausted.
 */
static bool
kou_http_list_next(const u_char *buf, size_t *i, size_t e, size_t *eb,
                   size_t *ee)
{
    size_t j = *i, t;

    while (j < e && (kou_http_is_ows(buf[j]) || buf[j] == ',')) {
        j++;
    }
    if (j == e) {
        *i = j;
        return false;
    }
    *eb = j;
    while (j < e && buf[j] != ',') {
        j++;
    }
    for (t = j; kou_http_is_ows(buf[t - 1]); t--) {
        /* void: the element starts with a non-OWS byte */
    }
    *ee = t;
    *i = j;
    return true;
}

/* quoted-string at buf[i] == '"'; returns the index after it or 0. */
static size_t
kou_http_skip_quoted(const u_char *buf, size_t i, size_t e)
{
    for (i++; i < e; i++) {
        if (buf[i] == '"') {
            return i + 1;
        }
        if (buf[i] == '\\') {
            if (++i == e || !kou_http_fl[buf[i]]) {
                return 0;
            }
        } else if (!kou_http_qdtext[buf[i]]) {
            return 0;
        }
    }
    return 0;
}

/*
 * Content-Length = 1*DIGIT (RFC 9110 §8.6). The same value repeated, in a
 * list or in several fields, is accepted as one; anything else is 400.
 */
static int
kou_http_field_cl(kou_http_parser_t *p, const u_char *buf, size_t i,
                  size_t e)
{
    size_t  b;
    int64_t v, d;

    for ( ;; ) {
        v = 0;
        for (b = i; i < e && kou_http_is_digit(buf[i]); i++) {
            d = buf[i] - '0';
            if (v > (INT64_MAX - d) / 10) {
                return 400;
            }
            v = v * 10 + d;
        }
        if (i == b) {
            return 400;
        }
        if (!(p->flags & KOU_HP_CL)) {
            p->flags |= KOU_HP_CL;
            p->content_length = v;
        } else if (v != p->content_length) {
            return 400;
        }
        i = kou_http_skip_ows(buf, i, e);
        if (i == e) {
            return KOU_OK;
        }
        if (buf[i] != ',') {
            return 400;
        }
        i = kou_http_skip_ows(buf, i + 1, e);
    }
}

/*
 * Transfer-Encoding = #transfer-coding, transfer-coding = token
 * *( OWS ";" OWS token BWS "=" BWS ( token / quoted-string ) ), over all
 * TE fields together. A coding after chunked means chunked is not final
 * or comes twice: 400 at once (RFC 9112 §6.3). A coding with parameters
 * never counts as chunked, which defines none.
 */
static int
kou_http_field_te(kou_http_parser_t *p, const u_char *buf, size_t i,
                  size_t e)
{
    size_t b, j, nb, ne;
    bool   params;

    /* RFC 9112 §6.1: an HTTP/1.0 hop cannot have sent it */
    if (p->version == 10) {
        return 400;
    }
    p->flags |= KOU_HP_TE;

    for ( ;; ) {
        i = kou_http_skip_ows(buf, i, e);
        if (i == e) {
            return KOU_OK;
        }
        if (buf[i] == ',') {
            i++;
            continue;
        }
        b = i;
        i = kou_http_skip_tchar(buf, i, e);
        if (i == b) {
            return 400;
        }
        nb = b;
        ne = i;
        params = false;
        for ( ;; ) {
            j = kou_http_skip_ows(buf, i, e);
            if (j == e || buf[j] != ';') {
                break;
            }
            j = kou_http_skip_ows(buf, j + 1, e);
            b = j;
            j = kou_http_skip_tchar(buf, j, e);
            if (j == b) {
                return 400;
            }
            j = kou_http_skip_ows(buf, j, e);
            if (j == e || buf[j] != '=') {
                return 400;
            }
            j = kou_http_skip_ows(buf, j + 1, e);
            if (j < e && buf[j] == '"') {
                j = kou_http_skip_quoted(buf, j, e);
                if (j == 0) {
                    return 400;
                }
            } else {
                b = j;
                j = kou_http_skip_tchar(buf, j, e);
                if (j == b) {
                    return 400;
                }
            }
            i = j;
            params = true;
        }
        if (p->flags & KOU_HP_TE_CHUNKED) {
            return 400;
        }
        if (!params && kou_http_lc_is(buf + nb, ne - nb, "chunked")) {
            p->flags |= KOU_HP_TE_CHUNKED;
        } else {
            p->flags |= KOU_HP_TE_OTHER;
        }
        i = kou_http_skip_ows(buf, i, e);
        if (i < e && buf[i] != ',') {
            return 400;
        }
    }
}

/* Connection = #connection-option (RFC 9110 §7.6.1), tokens only. */
static int
kou_http_field_connection(kou_http_parser_t *p, const u_char *buf,
                          size_t i, size_t e)
{
    size_t b, t;

    /* the two values nearly every client sends, without the list walk */
    if (kou_http_lc_is(buf + i, e - i, "keep-alive")) {
        p->conn_keep_alive = 1;
        return KOU_OK;
    }
    if (kou_http_lc_is(buf + i, e - i, "close")) {
        p->conn_close = 1;
        return KOU_OK;
    }

    while (kou_http_list_next(buf, &i, e, &b, &t)) {
        if (kou_http_skip_tchar(buf, b, t) != t) {
            return 400;
        }
        if (kou_http_lc_is(buf + b, t - b, "close")) {
            p->conn_close = 1;
        } else if (kou_http_lc_is(buf + b, t - b, "keep-alive")) {
            p->conn_keep_alive = 1;
        } else if (kou_http_lc_is(buf + b, t - b, "upgrade")) {
            p->conn_upgrade = 1;
        }
    }
    return KOU_OK;
}

/*
 * Expect (RFC 9110 §10.1.1): 100-continue is the only expectation there
 * is, and an HTTP/1.0 client cannot read a 100 response, so from it the
 * expectation is ignored. Any other member is remembered and answered 417
 * once the rest of the head has proved well-formed.
 */
static void
kou_http_field_expect(kou_http_parser_t *p, const u_char *buf, size_t i,
                      size_t e)
{
    size_t b, t;

    while (kou_http_list_next(buf, &i, e, &b, &t)) {
        if (kou_http_lc_is(buf + b, t - b, "100-continue")) {
            p->expect_continue = p->version != 10;
        } else {
            p->flags |= KOU_HP_EXPECT_BAD;
        }
    }
}

/*
 * Host (RFC 9110 §7.2): at most one, valid uri-host [":" port]. When the
 * target carries the authority the field is only checked: the target's
 * host wins (RFC 9112 §3.2.2). Otherwise it must name a host. hend is
 * where the run of reg-name bytes from s ends (at most e), as the caller
 * found it.
 */
int
kou_http_field_host_at(kou_http_parser_t *p, const u_char *buf, size_t s,
                       size_t e, size_t rd, size_t hend)
{
    if (p->flags & KOU_HP_HOST) {
        return 400;
    }
    p->flags |= KOU_HP_HOST;
    if (p->target_form == KOU_TARGET_ORIGIN && e > s) {
        /* reg-name or IPv4, then the port if any: what nearly all are */
        if (hend > s && kou_http_port(buf, hend, e)
            && (kou_http_is_digit(buf[hend - 1])
                ? kou_http_ipv4(buf + s, hend - s)
                  || !kou_http_numeric_host(buf + s, hend - s)
                : !kou_http_numeric_host(buf + s, hend - s)))
        {
            kou_http_set_host(p, s, hend, e);
            return KOU_OK;
        }
    }
    if (!kou_http_host_port(buf, s, e, rd, &hend)) {
        return 400;
    }
    if (p->target_form == KOU_TARGET_ABSOLUTE
        || p->target_form == KOU_TARGET_AUTHORITY)
    {
        return KOU_OK;
    }
    if (hend == s) {
        return 400;
    }
    kou_http_set_host(p, s, hend, e);
    return KOU_OK;
}

/* kou_http_field_host_at, with the reg-name run found by a scan */
static inline __attribute__((always_inline)) int
kou_http_field_host(kou_http_parser_t *p, const u_char *buf, size_t s,
                    size_t e, size_t rd)
{
    return kou_http_field_host_at(p, buf, s, e, rd,
                                  kou_http_span_to(buf, s, e, rd,
                                                   KOU_HTTP_SET_REGNAME));
}

/* Most fields are let through by one load and compare, without a call. */
const u_char kou_http_named[32] = {
    [4] = 'h', [6] = 'e', [10] = 'c', [14] = 'c', [17] = 't'
};

int
kou_http_field_meaning(kou_http_parser_t *p, const u_char *buf, size_t s,
                       size_t n, size_t vs, size_t ve, size_t rd)
{
    /* by length first: at most one compare per field */
    switch (n) {
    case 4:
        if (kou_http_lc_eq(buf + s, "host", 4)) {
            return kou_http_field_host(p, buf, vs, ve, rd);
        }
        break;
    case 6:
        if (kou_http_lc_eq(buf + s, "expect", 6)) {
            kou_http_field_expect(p, buf, vs, ve);
        }
        break;
    case 10:
        if (kou_http_lc_eq(buf + s, "connection", 10)) {
            return kou_http_field_connection(p, buf, vs, ve);
        }
        break;
    case 14:
        if (kou_http_lc_eq(buf + s, "content-length", 14)) {
            return kou_http_field_cl(p, buf, vs, ve);
        }
        break;
    case 17:
        if (kou_http_lc_eq(buf + s, "transfer-encoding", 17)) {
            return kou_http_field_te(p, buf, vs, ve);
        }
        break;
    }
    return KOU_OK;
}

int
kou_http_head_done(kou_http_parser_t *p, const u_char *buf, size_t n0)
{
    size_t i;

    /* one test for the usual head: a Host, no TE, no odd Expect */
    if (__builtin_expect((p->flags & (KOU_HP_HOST | KOU_HP_TE
                                      | KOU_HP_EXPECT_BAD))
                         != KOU_HP_HOST, 0))
    {
        if (p->version == 11 && !(p->flags & KOU_HP_HOST)) {
            return 400;
        }
        if (p->flags & KOU_HP_TE) {
            /* RFC 9112 §6.3: never guess between two framings */
            if (p->flags & KOU_HP_CL) {
                return 400;
            }
            if (!(p->flags & KOU_HP_TE_CHUNKED)) {
                return 400;
            }
            if (p->flags & KOU_HP_TE_OTHER) {
                return 501;
            }
            p->chunked = 1;
        }
        if (p->flags & KOU_HP_EXPECT_BAD) {
            return 417;
        }
    }

    kou_http_rebase_line(p, buf);
    if (p->flags & KOU_HP_ROOT_PATH) {
        p->path = KOU_STR("/");
    }
    for (i = 0; i < n0; i++) {
        kou_http_rebase(&p->headers[i].name, buf);
        kou_http_rebase(&p->headers[i].value, buf);
    }
    return KOU_OK;
}

void
kou_http_rl_reset(kou_http_parser_t *p)
{
    p->flags = 0;
    p->method_id = KOU_METHOD_UNKNOWN;
    p->target_form = KOU_TARGET_ORIGIN;
    kou_http_span(&p->host, 0, 0);
    kou_http_span(&p->port, 0, 0);
    p->version = 0;
}


void
kou_http_headers_unbase(kou_http_parser_t *p, const u_char *buf, size_t from,
                        kou_header_t *h)
{
    size_t i;

    p->nheaders = (size_t) (h - p->headers);
    for (i = from; i < p->nheaders; i++) {
        kou_http_span(&p->headers[i].name,
                      (size_t) (p->headers[i].name.p - (const char *) buf),
                      p->headers[i].name.n);
        kou_http_span(&p->headers[i].value,
                      (size_t) (p->headers[i].value.p - (const char *) buf),
                      p->headers[i].value.n);
    }
}

/*
 * The state lives in locals while bytes last and goes back into p only
 * when the call ends; the loop over field lines, where a request spends
 * most of its lines, runs without going through the switch. Field lines
 * are found in the masks of kou_http_line: where one ends and where its
 * name ends are two bit searches from where it starts, so the lines of a
 * head do not wait on a scan each. A field line then costs a few
 * compares: its colon, one SP at each end of the value (more OWS takes
 * the loops), the header limit, and one byte of the name against the
 * names of that length the parser reads.
 *
 * A header found in this call is stored as pointers at once; only those of
 * earlier calls, the first n0, hold offsets to rebase when the head is
 * complete, and when the call ends short, this call's turn into offsets.
 * Each is converted at most once either way, and a head parsed in one call
 * needs no pass over its headers.
 */
int
kou_http_parse_general(kou_http_parser_t *p, const u_char *buf, size_t len)
{
    const kou_http_limits_t  *lim = p->limits;
    const kou_http_kernels_t *k = kou_http_kernels;
    size_t                    end, stop, pos, ls, name = SIZE_MAX, sp[2];
    size_t                    n0 = p->nheaders, e, vs, ve, n;
    kou_header_t             *h, *hlim;
    kou_http_scan_t           ln;
    kou_http_line_t           line;
    unsigned                  state;
    int                       rc;

    /* a byte at offset max_header_block is one too many: never look at it */
    end = kou_min(len, lim->max_header_block);
    pos = p->pos;
    ls = p->line_start;
    state = p->state;
    h = p->headers + n0;
    hlim = p->headers + lim->max_headers;
    /* no block yet: any i - base is at least 64 */
    ln.base = end + 64;
    ln.bad = ln.ntc = 0;

    switch (state) {

    case KOU_HP_REQUEST_LINE:
    request_line:
        stop = end;
        if (end - ls > lim->max_request_line) {
            stop = ls + lim->max_request_line;
        }
        pos = k->request_line(buf, pos, stop, sp);
        p->line_start = ls;
        rc = kou_http_request_follow(p, buf, pos, sp, end);
        if (rc != KOU_OK) {
            return rc;
        }
        if (pos == end) {
            state = KOU_HP_REQUEST_LINE;
            goto more;
        }
        if (buf[pos] != '\r') {
            /* only an in-class byte can stop the scan at the limit */
            return kou_http_rl[buf[pos]] ? 414 : 400;
        }
        if (pos != ls && !(p->flags & KOU_HP_RL_DONE)) {
            /* the line ends before its version does */
            return 400;
        }
        pos++;
        /* fall through */

    case KOU_HP_REQUEST_LF:
        if (pos == end) {
            state = KOU_HP_REQUEST_LF;
            goto more;
        }
        if (buf[pos] != '\n') {
            return 400;
        }
        pos++;
        if (pos - 2 == ls) {
            /* RFC 9112 §2.2: one empty line before the request */
            if (ls != 0) {
                return 400;
            }
            ls = pos;
            goto request_line;
        }
        ls = pos;
        /* fall through */

    case KOU_HP_FIELD_LINE:
        if (pos != ls) {
            /* a line begun in an earlier call: its name is looked at again */
            pos = k->field_line(buf, pos, end);
            name = SIZE_MAX;
            goto field_end;
        }
        for ( ;; ) {
            /*
             * Every tchar is in the field-line class, so the line's first
             * byte outside it is at or after the name's end; the empty
             * line that ends the head is found the same way, at ls.
             */
            line = kou_http_line(k->lines, NULL, k->field_line, k->span,
                                 k->blocks, buf, end, &ln, pos);
            name = line.name;
            pos = line.end;
            if (__builtin_expect(pos + 1 >= end
                                 || !kou_http_crlf(buf + pos), 0))
            {
                /*
                 * obs-fold (RFC 9112 §5.2): no later byte can redeem it.
                 * A line that starts with SP or HTAB has an empty name, so
                 * only then is its first byte looked at. (A whole line
                 * like that is 400 below, for its empty name.)
                 */
                if (name == ls && ls < end && kou_http_is_ows(buf[ls])) {
                    rc = 400;
                    goto fail;
                }
                goto field_end;
            }
            pos += 2;
    field_line:
            /* field-name ":" OWS field-value OWS, buf[e] its CR */
            e = pos - 2;
            if (e == ls) {
                p->nheaders = (size_t) (h - p->headers);
                p->head_len = pos;
                return kou_http_head_done(p, buf, n0);
            }
            if (name == SIZE_MAX) {
                name = kou_http_span_to(buf, ls, e, end, KOU_HTTP_SET_TCHAR);
            }
            /*
             * This also catches a name that ends the line (buf[e] is CR)
             * and one followed by whitespace, which is not a token.
             */
            if (buf[name] != ':' || name == ls) {
                rc = 400;
                goto fail;
            }
            if (h == hlim) {
                rc = 431;
                goto fail;
            }
            /*
             * No bounds: buf[e] is the CR, and buf[name] the colon, stop
             * the loops, and a value of nothing but OWS ends where it
             * starts.
             */
            vs = name + 1 + (buf[name + 1] == ' ');
            ve = e;
            if (__builtin_expect(kou_http_is_ows(buf[vs])
                                 || kou_http_is_ows(buf[ve - 1]), 0))
            {
                /* more than the one SP nearly every client sends */
                while (kou_http_is_ows(buf[vs])) {
                    vs++;
                }
                while (kou_http_is_ows(buf[ve - 1])) {
                    ve--;
                }
                ve = kou_max(ve, vs);
            }
            /* pointers, not offsets: see the comment above */
            h->name = kou_http_str(buf, ls, name);
            h->value = kou_http_str(buf, vs, ve);
            h++;
            n = name - ls;
            if (n < sizeof(kou_http_named)
                && kou_http_named[n] == (buf[ls] | 0x20))
            {
                rc = kou_http_field_meaning(p, buf, ls, n, vs, ve, end);
                if (rc != KOU_OK) {
                    goto fail;
                }
            }
            ls = pos;
        }

    field_end:
        /* the scan stopped short of a whole CRLF: say why */
        if (pos == end) {
            state = KOU_HP_FIELD_LINE;
            goto more;
        }
        if (buf[pos] != '\r') {
            rc = 400;
            goto fail;
        }
        pos++;
        /* fall through */

    case KOU_HP_FIELD_LF:
        if (pos == end) {
            state = KOU_HP_FIELD_LF;
            goto more;
        }
        if (buf[pos] != '\n') {
            rc = 400;
            goto fail;
        }
        pos++;
        if (state == KOU_HP_FIELD_LF) {
            /* resumed between CR and LF: the name was not looked at */
            name = SIZE_MAX;
        }
        goto field_line;
    }

more:
    /* the headers of this call go back to offsets, as the others are */
    kou_http_headers_unbase(p, buf, n0, h);
    p->pos = pos;
    p->line_start = ls;
    p->state = state;
    return len > end ? 431 : KOU_AGAIN;

fail:
    p->nheaders = (size_t) (h - p->headers);
    return rc;
}

int (*kou_http_head)(kou_http_parser_t *p, const u_char *buf, size_t len);

kou_str_t
kou_http_method_name(unsigned method_id)
{
    if (method_id >= KOU_METHOD_COUNT) {
        method_id = KOU_METHOD_UNKNOWN;
    }
    return kou_http_methods[method_id];
}

/* ---- chunked body decoder (RFC 9112 §7.1) ---- */

/* The states up to KOU_CH_EXT_QEND are the chunk-size line's. */
enum {
    KOU_CH_SIZE0 = 0,   /* chunk-size, first HEXDIG */
    KOU_CH_SIZE,        /* chunk-size, further HEXDIG */
    KOU_CH_EXT_WS,      /* BWS that must lead to ';' */
    KOU_CH_EXT_NAME0,   /* after ';': BWS, then chunk-ext-name */
    KOU_CH_EXT_NAME,    /* in chunk-ext-name */
    KOU_CH_EXT_NAME_WS, /* BWS after a name: '=' or ';' must follow */
    KOU_CH_EXT_VAL0,    /* after '=': BWS, then token or quoted-string */
    KOU_CH_EXT_TOKEN,   /* in a token chunk-ext-val */
    KOU_CH_EXT_QS,      /* in a quoted-string */
    KOU_CH_EXT_QP,      /* after a backslash in it */
    KOU_CH_EXT_QEND,    /* after its closing quote */
    KOU_CH_SIZE_LF,     /* CR of the chunk-size line seen */
    KOU_CH_DATA,        /* in chunk-data */
    KOU_CH_DATA_CR,     /* chunk-data done, CR expected */
    KOU_CH_DATA_LF,
    KOU_CH_TRAILER,     /* start of a trailer field line or the final CRLF */
    KOU_CH_TR_NAME,
    KOU_CH_TR_VALUE,
    KOU_CH_TR_LF,
    KOU_CH_END_LF,      /* CR of the final CRLF seen */
    KOU_CH_DONE
};

void
kou_http_chunked_init(kou_http_chunked_t *ch, size_t max_trailer)
{
    memset(ch, 0, sizeof(*ch));
    ch->state = KOU_CH_SIZE0;
    ch->max_trailer = max_trailer;
}

/*
 * Framing is walked one byte at a time: it is a few bytes per chunk, and a
 * per-byte state is what makes any split of the input harmless. Payload is
 * handed out as one slice per call without being looked at.
 */
int
kou_http_parse_chunked(kou_http_chunked_t *ch, const u_char *buf,
                       size_t len, size_t *consumed, kou_str_t *data)
{
    size_t i;
    u_char c;

    data->p = (const char *) buf;
    data->n = 0;

    if (ch->state == KOU_CH_DONE) {
        *consumed = 0;
        return KOU_DONE;
    }

    for (i = 0; i < len; i++) {
        c = buf[i];

        /* the chunk-size line, CRLF excluded, has a bound: see the header */
        if (ch->state <= KOU_CH_EXT_QEND && c != '\r'
            && ++ch->line_bytes > KOU_HTTP_CHUNK_LINE_MAX)
        {
            goto bad;
        }

        switch (ch->state) {

        case KOU_CH_SIZE0:
            if (!kou_http_hex[c]) {
                goto bad;
            }
            ch->remaining = kou_http_hex[c] - 1u;
            ch->state = KOU_CH_SIZE;
            break;

        case KOU_CH_SIZE:
            if (kou_http_hex[c]) {
                if (ch->remaining >> 60) {
                    goto bad;
                }
                ch->remaining = ch->remaining << 4 | (kou_http_hex[c] - 1u);
            } else if (c == '\r') {
                ch->state = KOU_CH_SIZE_LF;
            } else if (c == ';') {
                ch->state = KOU_CH_EXT_NAME0;
            } else if (kou_http_is_ows(c)) {
                ch->state = KOU_CH_EXT_WS;
            } else {
                goto bad;
            }
            break;

        case KOU_CH_EXT_WS:
            if (c == ';') {
                ch->state = KOU_CH_EXT_NAME0;
            } else if (!kou_http_is_ows(c)) {
                goto bad;
            }
            break;

        case KOU_CH_EXT_NAME0:
            if (kou_http_tchar[c]) {
                ch->state = KOU_CH_EXT_NAME;
            } else if (!kou_http_is_ows(c)) {
                goto bad;
            }
            break;

        case KOU_CH_EXT_NAME:
            if (kou_http_tchar[c]) {
                break;
            }
            if (c == '\r') {
                ch->state = KOU_CH_SIZE_LF;
            } else if (c == ';') {
                ch->state = KOU_CH_EXT_NAME0;
            } else if (c == '=') {
                ch->state = KOU_CH_EXT_VAL0;
            } else if (kou_http_is_ows(c)) {
                ch->state = KOU_CH_EXT_NAME_WS;
            } else {
                goto bad;
            }
            break;

        case KOU_CH_EXT_NAME_WS:
            if (c == ';') {
                ch->state = KOU_CH_EXT_NAME0;
            } else if (c == '=') {
                ch->state = KOU_CH_EXT_VAL0;
            } else if (!kou_http_is_ows(c)) {
                goto bad;
            }
            break;

        case KOU_CH_EXT_VAL0:
            if (kou_http_tchar[c]) {
                ch->state = KOU_CH_EXT_TOKEN;
            } else if (c == '"') {
                ch->state = KOU_CH_EXT_QS;
            } else if (!kou_http_is_ows(c)) {
                goto bad;
            }
            break;

        case KOU_CH_EXT_TOKEN:
            if (kou_http_tchar[c]) {
                break;
            }
            /* what may follow a token may follow a quoted-string */
            /* fall through */
        case KOU_CH_EXT_QEND:
            if (c == '\r') {
                ch->state = KOU_CH_SIZE_LF;
            } else if (c == ';') {
                ch->state = KOU_CH_EXT_NAME0;
            } else if (kou_http_is_ows(c)) {
                ch->state = KOU_CH_EXT_WS;
            } else {
                goto bad;
            }
            break;

        case KOU_CH_EXT_QS:
            if (c == '"') {
                ch->state = KOU_CH_EXT_QEND;
            } else if (c == '\\') {
                ch->state = KOU_CH_EXT_QP;
            } else if (!kou_http_qdtext[c]) {
                goto bad;
            }
            break;

        case KOU_CH_EXT_QP:
            if (!kou_http_fl[c]) {
                goto bad;
            }
            ch->state = KOU_CH_EXT_QS;
            break;

        case KOU_CH_SIZE_LF:
            if (c != '\n') {
                goto bad;
            }
            /* a size of zero, however many zeros, is the last-chunk */
            ch->state = ch->remaining ? KOU_CH_DATA : KOU_CH_TRAILER;
            break;

        case KOU_CH_DATA:
            data->p = (const char *) buf + i;
            data->n = ch->remaining < len - i ? (size_t) ch->remaining
                                              : len - i;
            i += data->n;
            ch->remaining -= data->n;
            if (ch->remaining == 0) {
                ch->state = KOU_CH_DATA_CR;
            }
            *consumed = i;
            return i == len ? KOU_AGAIN : KOU_OK;

        case KOU_CH_DATA_CR:
            if (c != '\r') {
                goto bad;
            }
            ch->state = KOU_CH_DATA_LF;
            break;

        case KOU_CH_DATA_LF:
            if (c != '\n') {
                goto bad;
            }
            ch->state = KOU_CH_SIZE0;
            ch->line_bytes = 0;
            break;

        case KOU_CH_TRAILER:
            if (c == '\r') {
                ch->state = KOU_CH_END_LF;
                break;
            }
            if (++ch->trailer_bytes > ch->max_trailer) {
                goto large;
            }
            /* no empty name, no obs-fold (RFC 9112 §5.2) */
            if (!kou_http_tchar[c]) {
                goto bad;
            }
            ch->state = KOU_CH_TR_NAME;
            break;

        case KOU_CH_TR_NAME:
            if (++ch->trailer_bytes > ch->max_trailer) {
                goto large;
            }
            if (c == ':') {
                ch->state = KOU_CH_TR_VALUE;
            } else if (!kou_http_tchar[c]) {
                goto bad;
            }
            break;

        case KOU_CH_TR_VALUE:
            if (++ch->trailer_bytes > ch->max_trailer) {
                goto large;
            }
            if (c == '\r') {
                ch->state = KOU_CH_TR_LF;
            } else if (!kou_http_fl[c]) {
                goto bad;
            }
            break;

        case KOU_CH_TR_LF:
            if (++ch->trailer_bytes > ch->max_trailer) {
                goto large;
            }
            if (c != '\n') {
                goto bad;
            }
            ch->state = KOU_CH_TRAILER;
            break;

        case KOU_CH_END_LF:
            if (c != '\n') {
                goto bad;
            }
            ch->state = KOU_CH_DONE;
            *consumed = i + 1;
            return KOU_DONE;
        }
    }

    *consumed = len;
    return KOU_AGAIN;

bad:
    *consumed = i;
    return 400;

large:
    *consumed = i;
    return 431;
}

/* ---- tiers ---- */

static unsigned kou_http_tier = KOU_SIMD_SCALAR;

const char *
kou_http_parser_tier_name(unsigned tier)
{
    static const char *const names[KOU_SIMD_COUNT] = {
        "scalar", "sse42", "avx2", "avx512"
    };

    return tier < KOU_SIMD_COUNT ? names[tier] : "unknown";
}

const char *
kou_http_parser_tier(void)
{
    return kou_http_parser_tier_name(kou_http_tier);
}

/*
 * __builtin_cpu_supports also asks whether the kernel saves the vector
 * state (XCR0), so a tier it allows can run, not just decode.
 */
bool
kou_http_parser_tier_available(unsigned tier)
{
#ifdef KOU_HAVE_X86_TIERS
    __builtin_cpu_init();
#endif
    switch (tier) {
    case KOU_SIMD_SCALAR:
        return true;
#ifdef KOU_HAVE_X86_TIERS
    case KOU_SIMD_SSE42:
        return __builtin_cpu_supports("sse4.2");
    case KOU_SIMD_AVX2:
        return __builtin_cpu_supports("avx2")
               && __builtin_cpu_supports("bmi")
               && __builtin_cpu_supports("bmi2");
    case KOU_SIMD_AVX512:
        return __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl")
               && __builtin_cpu_supports("bmi")
               && __builtin_cpu_supports("bmi2");
#endif
    default:
        return false;
    }
}

int
kou_http_parser_set_tier(unsigned tier)
{
    const kou_http_kernels_t *k = &kou_http_kernels_scalar;

    if (!kou_http_parser_tier_available(tier)) {
        return KOU_ERROR;
    }
    kou_http_kernels_prepare();
#ifdef KOU_HAVE_X86_TIERS
    switch (tier) {
    case KOU_SIMD_SSE42:
        k = &kou_http_kernels_sse42;
        break;
    case KOU_SIMD_AVX2:
        k = &kou_http_kernels_avx2;
        break;
    case KOU_SIMD_AVX512:
        k = __builtin_cpu_supports("avx512vbmi")
                ? &kou_http_kernels_avx512vbmi : &kou_http_kernels_avx512;
        break;
    }
#endif
    kou_http_kernels = k;
    kou_http_head = k->head;
    kou_http_tier = tier;
    return KOU_OK;
}

int
kou_http_parser_select(void)
{
    /*
     * Fastest first, as measured, which is not widest first: on the
     * development CPU (AMD EPYC, Zen 4) the AVX-512 tier parses the usual
     * heads no faster than AVX2, being ahead only on lines of kilobytes.
     * Its 512-bit operations run as two halves there, while a header line
     * rarely fills even 32 bytes. It stays one KOURIER_SIMD=avx512 away.
     */
    static const unsigned order[] = {
        KOU_SIMD_AVX2, KOU_SIMD_AVX512, KOU_SIMD_SSE42, KOU_SIMD_SCALAR
    };
    const char *want = getenv("KOURIER_SIMD");
    unsigned    t = KOU_SIMD_SCALAR, i;

    for (i = 0; i < kou_nelem(order); i++) {
        if (kou_http_parser_tier_available(order[i])) {
            t = order[i];
            break;
        }
    }
    (void) kou_http_parser_set_tier(t);
    if (want == NULL || *want == '\0') {
        return KOU_OK;
    }
    for (t = 0; t < KOU_SIMD_COUNT; t++) {
        if (strcmp(want, kou_http_parser_tier_name(t)) == 0) {
            return kou_http_parser_set_tier(t);
        }
    }
    return KOU_ERROR;
}
