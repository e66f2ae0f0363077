/*
 * The scalar reference HTTP/1.1 request parser and chunked decoder. The
 * contract is in http_parse.h; which input gets which status is DESIGN §3.
 *
 * SIMD variants must agree with this file byte for byte, so its semantics
 * are kept easy to restate:
 *
 *   1. The head is cut into lines by one scan per line that stops at the
 *      first byte outside the line's class (request line: SP and VCHAR;
 *      field line: HTAB, SP, VCHAR, obs-text). That byte must be CR, and the
 *      next one LF; anything else is 400.
 *   2. Only a complete line is parsed for structure (request line, field
 *      name, value) and meaning (Host, Content-Length, ...), so every status
 *      is decided at the LF that ends the line holding the fault, and a
 *      request split anywhere gives the same answer as a whole one.
 *   3. Limits are positions: the byte at offset max_header_block is 431,
 *      an in-class byte at offset max_request_line of the request line is
 *      414. Both are seen in step 1, before the line is complete.
 *   4. Decisions that need the whole head (Host missing, TE with CL, a
 *      coding we do not implement, an expectation we cannot meet) are taken
 *      at the empty line, in that order.
 *
 * Resuming costs nothing: p->pos is where step 1 stopped, and no byte
 * before it is classified again.
 */

#include <stdlib.h>

#include "http_parse.h"

/* Where p->pos stands. */
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

static inline kou_str_t
kou_http_str(const u_char *buf, size_t s, size_t e)
{
    return (kou_str_t) { (const char *) buf + s, e - s };
}

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

/*
 * Scan bytes of class cls and valid pct-encodings ("%" HEXDIG HEXDIG) from
 * buf[i]; return the index of the first byte that is neither. A '%' not
 * followed by two hex digits stops the scan at the '%', so callers that
 * demand a delimiter there reject it.
 */
static size_t
kou_http_scan_pct(const u_char *buf, size_t i, size_t e, const u_char *cls)
{
    for ( ;; ) {
        while (i < e && cls[buf[i]]) {
            i++;
        }
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
 */
static bool
kou_http_ipv4(const u_char *s, size_t n)
{
    size_t   i = 0, b;
    unsigned parts = 0, v;

    for ( ;; ) {
        b = i;
        v = 0;
        while (i < n && i - b < 3 && kou_http_is_digit(s[i])) {
            v = v * 10 + (unsigned) (s[i] - '0');
            i++;
        }
        if (i == b || v > 255 || (i - b > 1 && s[b] == '0')) {
            return false;
        }
        parts++;
        if (i == n) {
            return parts == 4;
        }
        if (s[i] != '.' || parts == 4) {
            return false;
        }
        i++;
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
kou_http_numeric_host(const u_char *s, size_t n)
{
    size_t b, i;

    if (n > 0 && s[n - 1] == '.') {
        n--;
    }
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

/*
 * uri-host [ ":" port ] in buf[s..e) (RFC 3986 §3.2.2-3), as an authority
 * without userinfo or as a Host value. On success *hend is where the host
 * ends; a port, possibly empty, runs from *hend + 1 to e when *hend < e.
 * The host may be empty: whether that is allowed is the caller's call.
 */
static bool
kou_http_host_port(const u_char *buf, size_t s, size_t e, size_t *hend)
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
        i = kou_http_scan_pct(buf, s, e, kou_http_regname);
        if (kou_http_numeric_host(buf + s, i - s)
            && !kou_http_ipv4(buf + s, i - s))
        {
            return false;
        }
    }
    *hend = i;
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
 * outside the sets are 400.
 */
static int
kou_http_path_query(kou_http_parser_t *p, const u_char *buf, size_t s,
                    size_t e)
{
    size_t i, q;

    i = kou_http_scan_pct(buf, s, e, kou_http_path);
    kou_http_span(&p->path, s, i - s);
    if (i == e) {
        kou_http_span(&p->query, e, 0);
        return KOU_OK;
    }
    if (buf[i] != '?') {
        return 400;
    }
    q = i + 1;
    if (kou_http_scan_pct(buf, q, e, kou_http_query) != e) {
        return 400;
    }
    kou_http_span(&p->query, q, e - q);
    return KOU_OK;
}

/*
 * The request-target in buf[s..e), non-empty, VCHAR only. Its form must
 * suit the method (RFC 9112 §3.2): CONNECT takes authority-form and only
 * it, '*' is for OPTIONS, every other target is origin-form or an http(s)
 * absolute-form.
 */
static int
kou_http_target(kou_http_parser_t *p, const u_char *buf, size_t s, size_t e)
{
    size_t    i, a, hend;
    kou_str_t t;

    kou_http_span(&p->target, s, e - s);

    if (p->method_id == KOU_METHOD_CONNECT) {
        /* RFC 9110 §9.3.6: the port is required, there is no default */
        if (!kou_http_host_port(buf, s, e, &hend) || hend == s
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
        return kou_http_path_query(p, buf, s, e);
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
    if (!kou_http_host_port(buf, a, i, &hend) || hend == a) {
        return 400;
    }
    p->target_form = KOU_TARGET_ABSOLUTE;
    kou_http_set_host(p, a, hend, i);
    if (i == e || buf[i] == '?') {
        p->flags |= KOU_HP_ROOT_PATH;
    }
    return kou_http_path_query(p, buf, i, e);
}

static unsigned
kou_http_method_lookup(const u_char *m, size_t n)
{
    unsigned id;

    for (id = 1; id < KOU_METHOD_COUNT; id++) {
        if (kou_http_methods[id].n == n
            && memcmp(kou_http_methods[id].p, m, n) == 0)
        {
            return id;
        }
    }
    return KOU_METHOD_UNKNOWN;
}

/*
 * The request line buf[s..e), CRLF excluded, SP and VCHAR only:
 * method SP request-target SP HTTP-version. All 400s come before the 505
 * so that a malformed line is never reported as a version problem.
 */
static int
kou_http_request_line(kou_http_parser_t *p, const u_char *buf, size_t s,
                      size_t e)
{
    size_t        i, t, te;
    const u_char *v;
    int           rc;

    i = kou_http_skip_tchar(buf, s, e);
    if (i == s || i == e || buf[i] != ' ') {
        return 400;
    }
    kou_http_span(&p->method, s, i - s);
    p->method_id = kou_http_method_lookup(buf + s, i - s);

    t = ++i;
    while (i < e && buf[i] != ' ') {
        i++;
    }
    if (i == t || i == e) {
        return 400;
    }
    te = i++;

    v = buf + i;
    if (e - i != 8 || memcmp(v, "HTTP/", 5) != 0 || !kou_http_is_digit(v[5])
        || v[6] != '.' || !kou_http_is_digit(v[7]))
    {
        return 400;
    }

    rc = kou_http_target(p, buf, t, te);
    if (rc != KOU_OK) {
        return rc;
    }

    /* RFC 9110 §2.5: a higher minor version is served as the highest we do */
    if (v[5] != '1') {
        return 505;
    }
    p->version = v[7] == '0' ? 10 : 11;
    return KOU_OK;
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
        if (!params && kou_str_eq_lit(kou_http_str(buf, nb, ne), "chunked")) {
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
    size_t    b, t;
    kou_str_t o;

    while (kou_http_list_next(buf, &i, e, &b, &t)) {
        if (kou_http_skip_tchar(buf, b, t) != t) {
            return 400;
        }
        o = kou_http_str(buf, b, t);
        if (kou_str_eq_lit(o, "close")) {
            p->conn_close = 1;
        } else if (kou_str_eq_lit(o, "keep-alive")) {
            p->conn_keep_alive = 1;
        } else if (kou_str_eq_lit(o, "upgrade")) {
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
        if (kou_str_eq_lit(kou_http_str(buf, b, t), "100-continue")) {
            p->expect_continue = p->version != 10;
        } else {
            p->flags |= KOU_HP_EXPECT_BAD;
        }
    }
}

/*
 * Host (RFC 9110 §7.2): at most one, valid uri-host [":" port]. When the
 * target carries the authority the field is only checked: the target's
 * host wins (RFC 9112 §3.2.2). Otherwise it must name a host.
 */
static int
kou_http_field_host(kou_http_parser_t *p, const u_char *buf, size_t s,
                    size_t e)
{
    size_t hend;

    if (p->flags & KOU_HP_HOST) {
        return 400;
    }
    p->flags |= KOU_HP_HOST;
    if (!kou_http_host_port(buf, s, e, &hend)) {
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

/*
 * A field line buf[s..e), CRLF excluded, HTAB/SP/VCHAR/obs-text only:
 * field-name ":" OWS field-value OWS. A name that does not start the line
 * (obs-fold) or is followed by whitespace is not a token: 400.
 */
static int
kou_http_field_line(kou_http_parser_t *p, const u_char *buf, size_t s,
                    size_t e)
{
    size_t        i, vs, ve;
    kou_header_t *h;
    kou_str_t     name;

    i = kou_http_skip_tchar(buf, s, e);
    if (i == s || i == e || buf[i] != ':') {
        return 400;
    }
    if (p->nheaders == p->limits->max_headers) {
        return 431;
    }
    vs = kou_http_skip_ows(buf, i + 1, e);
    for (ve = e; ve > vs && kou_http_is_ows(buf[ve - 1]); ve--) {
        /* void */
    }
    h = &p->headers[p->nheaders++];
    kou_http_span(&h->name, s, i - s);
    kou_http_span(&h->value, vs, ve - vs);

    name = kou_http_str(buf, s, i);
    switch (name.n) {
    case 4:
        if (kou_str_eq_lit(name, "host")) {
            return kou_http_field_host(p, buf, vs, ve);
        }
        break;
    case 6:
        if (kou_str_eq_lit(name, "expect")) {
            kou_http_field_expect(p, buf, vs, ve);
        }
        break;
    case 10:
        if (kou_str_eq_lit(name, "connection")) {
            return kou_http_field_connection(p, buf, vs, ve);
        }
        break;
    case 14:
        if (kou_str_eq_lit(name, "content-length")) {
            return kou_http_field_cl(p, buf, vs, ve);
        }
        break;
    case 17:
        if (kou_str_eq_lit(name, "transfer-encoding")) {
            return kou_http_field_te(p, buf, vs, ve);
        }
        break;
    }
    return KOU_OK;
}

/* The empty line arrived: decisions that need every field, then results. */
static int
kou_http_head_done(kou_http_parser_t *p, const u_char *buf)
{
    size_t i;

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

    kou_http_rebase(&p->method, buf);
    kou_http_rebase(&p->target, buf);
    kou_http_rebase(&p->path, buf);
    kou_http_rebase(&p->query, buf);
    kou_http_rebase(&p->host, buf);
    kou_http_rebase(&p->port, buf);
    if (p->flags & KOU_HP_ROOT_PATH) {
        p->path = KOU_STR("/");
    }
    for (i = 0; i < p->nheaders; i++) {
        kou_http_rebase(&p->headers[i].name, buf);
        kou_http_rebase(&p->headers[i].value, buf);
    }
    return KOU_OK;
}

void
kou_http_parser_init(kou_http_parser_t *p, const kou_http_limits_t *lim,
                     kou_header_t *headers)
{
    memset(p, 0, sizeof(*p));
    p->limits = lim;
    p->headers = headers;
    p->state = KOU_HP_REQUEST_LINE;
    p->content_length = -1;
}

int
kou_http_parse_request(kou_http_parser_t *p, const u_char *buf, size_t len)
{
    const kou_http_limits_t *lim = p->limits;
    size_t                   end, stop, pos;
    int                      rc;

    /* a byte at offset max_header_block is one too many: never look at it */
    end = kou_min(len, lim->max_header_block);
    pos = p->pos;

    for ( ;; ) {
        switch (p->state) {

        case KOU_HP_REQUEST_LINE:
            stop = end;
            if (end - p->line_start > lim->max_request_line) {
                stop = p->line_start + lim->max_request_line;
            }
            while (pos < stop && kou_http_rl[buf[pos]]) {
                pos++;
            }
            if (pos == end) {
                goto more;
            }
            if (buf[pos] != '\r') {
                /* only an in-class byte can stop the scan at the limit */
                return kou_http_rl[buf[pos]] ? 414 : 400;
            }
            pos++;
            p->state = KOU_HP_REQUEST_LF;
            /* fall through */

        case KOU_HP_REQUEST_LF:
            if (pos == end) {
                goto more;
            }
            if (buf[pos] != '\n') {
                return 400;
            }
            pos++;
            if (pos - 2 == p->line_start) {
                /* RFC 9112 §2.2: one empty line before the request */
                if (p->line_start != 0) {
                    return 400;
                }
                p->line_start = pos;
                p->state = KOU_HP_REQUEST_LINE;
                continue;
            }
            rc = kou_http_request_line(p, buf, p->line_start, pos - 2);
            if (rc != KOU_OK) {
                return rc;
            }
            p->line_start = pos;
            p->state = KOU_HP_FIELD_LINE;
            /* fall through */

        case KOU_HP_FIELD_LINE:
            while (pos < end && kou_http_fl[buf[pos]]) {
                pos++;
            }
            if (pos == end) {
                goto more;
            }
            if (buf[pos] != '\r') {
                return 400;
            }
            pos++;
            p->state = KOU_HP_FIELD_LF;
            /* fall through */

        case KOU_HP_FIELD_LF:
            if (pos == end) {
                goto more;
            }
            if (buf[pos] != '\n') {
                return 400;
            }
            pos++;
            if (pos - 2 == p->line_start) {
                p->head_len = pos;
                return kou_http_head_done(p, buf);
            }
            rc = kou_http_field_line(p, buf, p->line_start, pos - 2);
            if (rc != KOU_OK) {
                return rc;
            }
            p->line_start = pos;
            p->state = KOU_HP_FIELD_LINE;
            continue;
        }
    }

more:
    p->pos = pos;
    return len > end ? 431 : KOU_AGAIN;
}

kou_str_t
kou_http_method_name(unsigned method_id)
{
    if (method_id >= KOU_METHOD_COUNT) {
        method_id = KOU_METHOD_UNKNOWN;
    }
    return kou_http_methods[method_id];
}

/* ---- chunked body decoder (RFC 9112 §7.1) ---- */

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

/* ---- tiers: the scalar reference is the only one built so far ---- */

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

bool
kou_http_parser_tier_available(unsigned tier)
{
    return tier == KOU_SIMD_SCALAR;
}

int
kou_http_parser_set_tier(unsigned tier)
{
    if (!kou_http_parser_tier_available(tier)) {
        return KOU_ERROR;
    }
    kou_http_tier = tier;
    return KOU_OK;
}

int
kou_http_parser_select(void)
{
    const char *want = getenv("KOURIER_SIMD");

    kou_http_tier = KOU_SIMD_SCALAR;
    if (want == NULL || *want == '\0') {
        return KOU_OK;
    }
    for (unsigned t = 0; t < KOU_SIMD_COUNT; t++) {
        if (strcmp(want, kou_http_parser_tier_name(t)) == 0) {
            return kou_http_parser_set_tier(t);
        }
    }
    return KOU_ERROR;
}
