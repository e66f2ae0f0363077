/*
 * Routing: which route serves (host, method, path).
 *
 * Routes are exact paths or prefixes with a segment boundary ("/api" matches
 * "/api" and "/api/x", never "/apix"; a prefix ending in "/" matches what
 * starts with it). The longest matching path wins; among routes with the
 * same path, the first in config order whose host and method set match.
 * The table is built once per generation and is read-only afterwards.
 */

#ifndef KOU_ROUTER_H
#define KOU_ROUTER_H

#include "kou.h"

typedef struct kou_route_s kou_route_t;

struct kou_route_s {
    kou_str_t   path;          /* as configured, starts with '/' */
    bool        prefix;        /* prefix: vs path: */
    uint32_t    methods;       /* bit (1 << kou_method_e); 0 = any method */
    kou_str_t  *method_names;  /* methods: entries not known to the parser */
    size_t      nmethod_names;
    kou_str_t  *hosts;         /* "example.com" or "*.example.org"; none = any */
    size_t      nhosts;
    size_t      index;         /* position in the config */
    void       *data;          /* owner's (the generation's route entry) */
};

typedef struct kou_router_s kou_router_t;

/*
 * Build a router over routes[0..n). The array must outlive the router.
 * Returns NULL when out of memory. Runs in the master and the workers.
 */
kou_router_t *kou_router_create(kou_route_t *routes, size_t n);
void kou_router_free(kou_router_t *rt);

/*
 * Match a request. host is the request's host without port (may be empty),
 * path is normalised (see kou_path_normalize), method/method_id come from
 * the parser. Returns:
 *   KOU_OK - *out is the route
 *   404    - no route's path (and host) matches
 *   405    - a route's path matches but not the method; *out is set to the
 *            longest-matching route and kou_router_allow() gives the Allow
 *            value
 */
int kou_router_match(const kou_router_t *rt, kou_str_t host, kou_str_t path,
                     kou_str_t method, unsigned method_id,
                     const kou_route_t **out);

/*
 * Write the Allow field value ("GET, HEAD") for the path of route `matched`
 * (union of the method sets of routes with that same path and host match)
 * into buf. Returns its length (truncated to size).
 */
size_t kou_router_allow(const kou_router_t *rt, kou_str_t host,
                        const kou_route_t *matched, char *buf, size_t size);

/* Does any route name this (parser-unknown) method? (else 501) */
bool kou_router_knows_method(const kou_router_t *rt, kou_str_t method);

/*
 * Normalise a raw origin-form path into dst (which has room for n bytes):
 * percent-decode every %HH except "%2F" and "%25" (kept encoded, upper-case:
 * a '/' so that it never acts as a separator, a '%' so that the result
 * cannot be mistaken for an escape) and except encoded NUL (400); remove
 * "." and ".." segments (RFC 3986 §5.2.4); merge nothing else. The only '%'
 * left in the result therefore starts "%2F" or "%25". A ".." that would
 * climb above the root, a path not starting with '/', or a bad %-escape
 * returns 400. On KOU_OK *dst_len is set.
 */
int kou_path_normalize(const u_char *src, size_t n, u_char *dst,
                       size_t *dst_len);

/*
 * Is src[0..n) already what kou_path_normalize would make of it (starts
 * with '/', no '%', no "." or ".." segment)? Then it can be used as is.
 */
static inline bool
kou_path_is_normal(const u_char *src, size_t n)
{
    if (n == 0 || src[0] != '/') {
        return false;
    }
    for (size_t i = 1; i < n; i++) {
        if (src[i] == '%' || (src[i] == '.' && src[i - 1] == '/')) {
            return false;
        }
    }
    return true;
}

#endif /* KOU_ROUTER_H */
