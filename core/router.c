/*
 * Routing (see router.h for the contract).
 *
 * Routes are few (tens), so the table is an array of pointers sorted by
 * path length, longest first, then config order: the first route that
 * matches a request's path and host has the longest matching path, and the
 * routes sharing that length follow it. A match is a linear scan with a
 * memcmp per candidate; no trie pays for itself at this size.
 */

#include <stdlib.h>

#include "http_parse.h"
#include "router.h"

struct kou_router_s {
    kou_route_t **sorted;
    size_t        n;
};

/*
 * Known method names in kou_method_e order; a copy of the parser's, so the
 * router links without it. Checked against the enum size at compile time.
 */
static const kou_str_t kou_router_method_names[] = {
    { "", 0 },
    KOU_STR("GET"),
    KOU_STR("HEAD"),
    KOU_STR("POST"),
    KOU_STR("PUT"),
    KOU_STR("DELETE"),
    KOU_STR("CONNECT"),
    KOU_STR("OPTIONS"),
    KOU_STR("TRACE"),
    KOU_STR("PATCH"),
};

_Static_assert(kou_nelem(kou_router_method_names) == KOU_METHOD_COUNT,
               "router method names out of step with kou_method_e");

#define KOU_ROUTER_BIT(m) ((uint32_t) 1 << (m))
#define KOU_ROUTER_ALL_KNOWN \
    (((uint32_t) 1 << KOU_METHOD_COUNT) - KOU_ROUTER_BIT(KOU_METHOD_GET))

static int
kou_router_cmp(const void *a, const void *b)
{
    const kou_route_t *ra = *(kou_route_t *const *) a;
    const kou_route_t *rb = *(kou_route_t *const *) b;

    if (ra->path.n != rb->path.n) {
        return ra->path.n > rb->path.n ? -1 : 1;
    }
    /* Then config order, by position in the array if index ties. */
    if (ra->index != rb->index) {
        return ra->index < rb->index ? -1 : 1;
    }
    return ra < rb ? -1 : (ra > rb);
}

kou_router_t *
kou_router_create(kou_route_t *routes, size_t n)
{
    kou_router_t *rt;

    rt = calloc(1, sizeof(*rt));
    if (rt == NULL) {
        return NULL;
    }
    rt->n = n;
    if (n > 0) {
        rt->sorted = malloc(n * sizeof(*rt->sorted));
        if (rt->sorted == NULL) {
            free(rt);
            return NULL;
        }
        for (size_t i = 0; i < n; i++) {
            rt->sorted[i] = &routes[i];
        }
        qsort(rt->sorted, n, sizeof(*rt->sorted), kou_router_cmp);
    }
    return rt;
}

void
kou_router_free(kou_router_t *rt)
{
    if (rt == NULL) {
        return;
    }
    free(rt->sorted);
    free(rt);
}

/* Exact path, or prefix ending at a segment boundary of path. */
static bool
kou_router_path_match(const kou_route_t *r, kou_str_t path)
{
    if (path.n < r->path.n
        || (r->path.n > 0 && memcmp(path.p, r->path.p, r->path.n) != 0))
    {
        return false;
    }
    if (path.n == r->path.n) {
        return true;
    }
    if (!r->prefix) {
        return false;
    }
    return (r->path.n > 0 && r->path.p[r->path.n - 1] == '/')
           || path.p[r->path.n] == '/';
}

static bool
kou_router_ci_eq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        u_char x = (u_char) a[i], y = (u_char) b[i];

        if (x >= 'A' && x <= 'Z') {
            x |= 0x20;
        }
        if (y >= 'A' && y <= 'Z') {
            y |= 0x20;
        }
        if (x != y) {
            return false;
        }
    }
    return true;
}

/*
 * host is compared without one trailing dot ("example.com." names the same
 * host). "*.suffix" needs at least one byte before ".suffix", so it
 * matches every subdomain and never the bare suffix.
 */
static bool
kou_router_host_match(const kou_route_t *r, kou_str_t host)
{
    if (r->nhosts == 0) {
        return true;
    }
    if (host.n > 0 && host.p[host.n - 1] == '.') {
        host.n--;
    }
    for (size_t i = 0; i < r->nhosts; i++) {
        kou_str_t h = r->hosts[i];

        if (h.n >= 2 && h.p[0] == '*' && h.p[1] == '.') {
            size_t sn = h.n - 1;     /* ".suffix" */

            if (host.n > sn
                && kou_router_ci_eq(host.p + host.n - sn, h.p + 1, sn))
            {
                return true;
            }
        } else if (h.n == host.n && kou_router_ci_eq(h.p, host.p, h.n)) {
            return true;
        }
    }
    return false;
}

static bool
kou_router_names_method(const kou_route_t *r, kou_str_t method)
{
    for (size_t i = 0; i < r->nmethod_names; i++) {
        if (kou_str_eq(r->method_names[i], method)) {
            return true;
        }
    }
    return false;
}

/* A route with no method set at all takes every method. */
static bool
kou_router_method_match(const kou_route_t *r, kou_str_t method,
                        unsigned method_id)
{
    if (r->methods == 0 && r->nmethod_names == 0) {
        return true;
    }
    if (method_id != KOU_METHOD_UNKNOWN && method_id < KOU_METHOD_COUNT) {
        if (r->methods & KOU_ROUTER_BIT(method_id)) {
            return true;
        }
        /* HEAD is GET without the body (RFC 9110 §9.3.2). */
        if (method_id == KOU_METHOD_HEAD
            && (r->methods & KOU_ROUTER_BIT(KOU_METHOD_GET)))
        {
            return true;
        }
    }
    return kou_router_names_method(r, method);
}

int
kou_router_match(const kou_router_t *rt, kou_str_t host, kou_str_t path,
                 kou_str_t method, unsigned method_id,
                 const kou_route_t **out)
{
    const kou_route_t *first = NULL, *first_exact = NULL;
    size_t             len = 0;

    for (size_t i = 0; i < rt->n; i++) {
        const kou_route_t *r = rt->sorted[i];

        if (first != NULL && r->path.n != len) {
            break;     /* shorter paths lose to the one found */
        }
        if (!kou_router_path_match(r, path)
            || !kou_router_host_match(r, host))
        {
            continue;
        }
        if (kou_router_method_match(r, method, method_id)) {
            *out = r;
            return KOU_OK;
        }
        if (first == NULL) {
            first = r;
            len = r->path.n;
        }
        if (first_exact == NULL && !r->prefix) {
            first_exact = r;
        }
    }

    if (first == NULL) {
        return 404;
    }

    /*
     * An exact route in the set means the request path is that path, which
     * kou_router_allow() can then tell from a prefix-only match.
     */
    *out = first_exact != NULL ? first_exact : first;
    return 405;
}

/* Append s to buf[*len..size) with ", " before it, only if all of it fits. */
static void
kou_router_allow_add(char *buf, size_t size, size_t *len, bool *full,
                     kou_str_t s)
{
    size_t need = s.n + (*len > 0 ? 2 : 0);

    if (*full || size - *len < need) {
        *full = true;
        return;
    }
    if (*len > 0) {
        buf[(*len)++] = ',';
        buf[(*len)++] = ' ';
    }
    memcpy(buf + *len, s.p, s.n);
    *len += s.n;
}

/*
 * Routes that would have matched the request: same path, host matches, and
 * for a prefix `matched` (the request may be longer than its path) only
 * other prefixes.
 */
static bool
kou_router_same_set(const kou_route_t *r, const kou_route_t *matched,
                    kou_str_t host)
{
    return kou_str_eq(r->path, matched->path)
           && (r->prefix || !matched->prefix)
           && kou_router_host_match(r, host);
}

size_t
kou_router_allow(const kou_router_t *rt, kou_str_t host,
                 const kou_route_t *matched, char *buf, size_t size)
{
    uint32_t methods = 0;
    size_t   len = 0;
    bool     full = false;

    for (size_t i = 0; i < rt->n; i++) {
        const kou_route_t *r = rt->sorted[i];

        if (!kou_router_same_set(r, matched, host)) {
            continue;
        }
        methods |= r->methods == 0 && r->nmethod_names == 0
                       ? KOU_ROUTER_ALL_KNOWN
                       : r->methods;
    }
    if (methods & KOU_ROUTER_BIT(KOU_METHOD_GET)) {
        methods |= KOU_ROUTER_BIT(KOU_METHOD_HEAD);
    }

    for (unsigned m = KOU_METHOD_GET; m < KOU_METHOD_COUNT; m++) {
        if (methods & KOU_ROUTER_BIT(m)) {
            kou_router_allow_add(buf, size, &len, &full,
                                 kou_router_method_names[m]);
        }
    }

    /* Then the names the parser does not know, once each. */
    for (size_t i = 0; i < rt->n; i++) {
        const kou_route_t *r = rt->sorted[i];

        if (!kou_router_same_set(r, matched, host)) {
            continue;
        }
        for (size_t k = 0; k < r->nmethod_names; k++) {
            kou_str_t name = r->method_names[k];
            bool      seen = false;

            for (unsigned m = KOU_METHOD_GET; m < KOU_METHOD_COUNT; m++) {
                if ((methods & KOU_ROUTER_BIT(m))
                    && kou_str_eq(name, kou_router_method_names[m]))
                {
                    seen = true;
                }
            }
            /* Earlier in this route, or in an earlier route of the set. */
            for (size_t k2 = 0; k2 < k && !seen; k2++) {
                seen = kou_str_eq(name, r->method_names[k2]);
            }
            for (size_t j = 0; j < i && !seen; j++) {
                const kou_route_t *q = rt->sorted[j];

                seen = kou_router_same_set(q, matched, host)
                       && kou_router_names_method(q, name);
            }
            if (!seen) {
                kou_router_allow_add(buf, size, &len, &full, name);
            }
        }
    }
    return len;
}

bool
kou_router_knows_method(const kou_router_t *rt, kou_str_t method)
{
    for (size_t i = 0; i < rt->n; i++) {
        if (kou_router_names_method(rt->sorted[i], method)) {
            return true;
        }
    }
    return false;
}

static int
kou_router_hex(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

int
kou_path_normalize(const u_char *src, size_t n, u_char *dst,
                   size_t *dst_len)
{
    size_t m = 0, r, w;

    if (n == 0 || src[0] != '/') {
        return 400;
    }

    /*
     * Pass 1: percent-decoding. "%2F" stays encoded so that it can never
     * split a segment, and "%25" too: decoded, "%252F" would read as an
     * encoded slash and "/a%25" could not be told from a bad escape. Both
     * are kept in one spelling so that routes compare them byte for byte.
     * The output is never longer than the input.
     */
    for (size_t i = 0; i < n; i++) {
        u_char c = src[i];

        if (c == '%') {
            int hi, lo;

            if (n - i < 3) {
                return 400;
            }
            hi = kou_router_hex(src[i + 1]);
            lo = kou_router_hex(src[i + 2]);
            if (hi < 0 || lo < 0) {
                return 400;
            }
            c = (u_char) (hi << 4 | lo);
            i += 2;
            if (c == '/' || c == '%') {
                dst[m++] = '%';
                dst[m++] = '2';
                dst[m++] = c == '/' ? 'F' : '5';
                continue;
            }
        }
        if (c == '\0') {
            return 400;
        }
        dst[m++] = c;
    }

    /*
     * Pass 2, in place: RFC 3986 §5.2.4 on the decoded segments (so "%2e"
     * is a dot), except that climbing above the root is an error instead
     * of being ignored. The output is a run of "/segment"; a "." or ".."
     * as the last segment leaves a trailing "/".
     */
    w = 0;
    r = 0;
    while (r < m) {
        size_t s = r + 1, e = s;
        bool   last;

        while (e < m && dst[e] != '/') {
            e++;
        }
        last = e == m;

        if (e - s == 1 && dst[s] == '.') {
            if (last) {
                dst[w++] = '/';
            }
        } else if (e - s == 2 && dst[s] == '.' && dst[s + 1] == '.') {
            if (w == 0) {
                return 400;
            }
            while (dst[--w] != '/') {
                /* back to the start of the last output segment */
            }
            if (last) {
                dst[w++] = '/';
            }
        } else {
            memmove(dst + w, dst + r, e - r);
            w += e - r;
        }
        r = e;
    }

    *dst_len = w;
    return KOU_OK;
}
