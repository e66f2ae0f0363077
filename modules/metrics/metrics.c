/*
 * metrics: the server's counters in the Prometheus text exposition format
 * (version 0.0.4), and per-route request counters and latency histograms
 * kept by a log hook.
 *
 *     modules:
 *       metrics: {}                  # max_series: 512, max_routes: 64
 *     hooks:
 *       log: [metrics]
 *     routes:
 *       - path: /metrics
 *         handler: metrics
 *         allow: [127.0.0.1, 10.0.0.0/8, "::1"]   # optional
 *
 * Storage. Everything the module counts lives in one block of the server's
 * shared memory (host->shm_alloc), so that it outlives reloads and worker
 * restarts. The block holds two registries, shared by every worker, and
 * one row of values per statistics slot:
 *
 *   routes   max_routes entries: a route's path, claimed by CAS on a word
 *            that carries the name's hash; its index is the route's id.
 *   series   max_series words, an open-addressing table keyed by
 *            (route id, method, status code) packed in 64 bits and claimed
 *            by a single CAS: the first request of a new combination
 *            inserts it, lock-free, without a system call.
 *   slot s   [ unattributed | series counts | per route: 12 buckets, sum ]
 *
 * Only the worker that owns a slot writes its row (plain relaxed stores,
 * no read-modify-write), and the scrape sums every row. A respawned worker
 * gets its predecessor's slot and so carries on its totals; a slot left by
 * a drained generation is reused by a later worker, so its counts are
 * neither lost nor counted twice. A series, once registered, is never
 * removed: a route dropped by a reload keeps its final counts, as a
 * Prometheus counter must.
 *
 * The block's name carries its geometry; changing max_series or
 * max_routes in a reload starts a new block (the counters restart at zero,
 * which Prometheus reads as a counter reset).
 */

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kourier/module.h>

#include "../shm_table.h"

/* Histogram bucket bounds (µs), Prometheus's default .005 s .. 10 s. */
#define KOU_METRICS_NBOUNDS 11
#define KOU_METRICS_NBUCKETS (KOU_METRICS_NBOUNDS + 1)     /* with +Inf */
#define KOU_METRICS_HIST_W (KOU_METRICS_NBUCKETS + 1)      /* with sum */

/* Longest route path the registry stores (a longer one is not counted). */
#define KOU_METRICS_ROUTE_MAX 244

#define KOU_METRICS_CACHE 32               /* per-route lookup cache */

#define KOU_METRICS_CLAIMED KOU_SHM_CLAIMED   /* series keys, too */

/* Methods with a label of their own; anything else is "other". */
enum {
    KOU_METHOD_GET, KOU_METHOD_HEAD, KOU_METHOD_POST, KOU_METHOD_PUT,
    KOU_METHOD_DELETE, KOU_METHOD_CONNECT, KOU_METHOD_OPTIONS,
    KOU_METHOD_TRACE, KOU_METHOD_PATCH, KOU_METHOD_OTHER, KOU_METHOD_N
};

static const char *const kou_metrics_methods[KOU_METHOD_N] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
    "PATCH", "other"
};

static const uint64_t kou_metrics_bounds_us[KOU_METRICS_NBOUNDS] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
    5000000, 10000000
};

static const char *const kou_metrics_le[KOU_METRICS_NBUCKETS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "+Inf"
};

/* A route's entry in the shared registry (256 bytes). */
typedef struct {
    uint64_t state;                       /* CLAIMED | READY | hash */
    uint32_t len;
    char     name[KOU_METRICS_ROUTE_MAX];
} kou_metrics_rent_t;

/* A client network of an `allow` list. */
typedef struct {
    int           family;                 /* AF_INET, AF_INET6, AF_UNIX */
    unsigned      bits;
    unsigned char addr[16];
} kou_metrics_net_t;

typedef struct kou_metrics_route_s kou_metrics_route_t;

/* Per-route state: what the log hook needs without hashing a string. */
struct kou_metrics_route_s {
    kou_metrics_route_t *next;            /* every route of the config */
    kou_str_t            name;            /* the route's path, from config */
    int                  id;              /* in the registry, -1: none */
    int                  handler;         /* metrics serves this route */
    int                  restricted;      /* `allow` given ([]: nobody) */
    size_t               nallow;
    kou_metrics_net_t   *allow;
    uint64_t            *hist;            /* its histogram in our row */
    /* the series counters of (code, method) pairs seen: csel is 0 when
       empty, else 1 + (code << 4 | method) */
    uint32_t             csel[KOU_METRICS_CACHE];
    uint64_t            *cctr[KOU_METRICS_CACHE];
};

typedef struct {
    uint32_t             max_series;      /* a power of two */
    uint32_t             max_routes;
    kou_metrics_route_t *routes;
    kou_metrics_route_t  none;            /* requests no route matched */

    /* The shared block, NULL until worker_init found it. */
    kou_metrics_rent_t  *rents;
    uint64_t            *keys;
    uint64_t            *rows;
    size_t               stride;          /* uint64_t per slot row */
    int                  nslots;
    uint64_t            *mine;            /* this worker's row */
} kou_metrics_t;

/* Offsets in a slot row. */
#define KOU_ROW_UNATTRIBUTED 0
#define KOU_ROW_SERIES 1
#define KOU_ROW_HIST(m) (KOU_ROW_SERIES + (size_t) (m)->max_series)

static const kou_host_t *kou_metrics_host;

/* Is field f of the host table there (a server older than this header)? */
#define KOU_HOST_HAS(h, f) \
    ((h)->size >= offsetof(kou_host_t, f) + sizeof((h)->f))

static const kou_conf_key_t kou_metrics_conf[] = {
    { "max_series", KOU_CONF_INT, KOU_SCOPE_MODULE, 0, "512",
      "most (route, method, code) request series kept" },
    { "max_routes", KOU_CONF_INT, KOU_SCOPE_MODULE, 0, "64",
      "most distinct routes with a latency histogram" },
    { "allow", KOU_CONF_LIST, KOU_SCOPE_ROUTE, 0, NULL,
      "client networks that may scrape (address, address/bits or unix)" },
    { NULL, 0, 0, 0, NULL, NULL }
};

/* ---- counters: one writer per row ---- */

static inline void
kou_metrics_add(uint64_t *v, uint64_t n)
{
    /* single writer: no atomic read-modify-write (no lock prefix) */
    __atomic_store_n(v, __atomic_load_n(v, __ATOMIC_RELAXED) + n,
                     __ATOMIC_RELAXED);
}

static inline uint64_t
kou_metrics_get(const uint64_t *v)
{
    return __atomic_load_n(v, __ATOMIC_RELAXED);
}

/* ---- configuration ---- */

static int
kou_metrics_configure(const kou_conf_t *conf, void **state, char *err,
                      size_t errlen)
{
    const kou_host_t *host = kou_metrics_host;
    const kou_conf_t *n;
    kou_metrics_t    *m;
    int64_t           series, routes;

    n = host->conf_get(conf, "max_series");
    if (host->conf_int(n, &series) != KOU_OK || series < 16
        || series > 65536)
    {
        return host->conf_error(n, err, errlen,
                                "metrics: max_series must be 16..65536");
    }
    n = host->conf_get(conf, "max_routes");
    if (host->conf_int(n, &routes) != KOU_OK || routes < 1
        || routes > 4096)
    {
        return host->conf_error(n, err, errlen,
                                "metrics: max_routes must be 1..4096");
    }

    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return host->conf_error(conf, err, errlen, "metrics: out of memory");
    }
    m->max_series = 16;
    while (m->max_series < (uint32_t) series) {
        m->max_series <<= 1;
    }
    m->max_routes = (uint32_t) routes;
    m->none.name = KOU_STR("");
    m->none.id = -1;
    *state = m;
    return KOU_OK;
}

/* Parse one `allow` item: "unix", an address, or address/bits. */
static int
kou_metrics_net(const kou_conf_t *item, kou_metrics_net_t *net, char *err,
                size_t errlen)
{
    const kou_host_t *host = kou_metrics_host;
    kou_str_t         s;
    char              buf[64], *slash, *end;
    unsigned long     bits;
    unsigned          max;

    if (host->conf_str(item, &s) != KOU_OK || s.n == 0
        || s.n >= sizeof(buf))
    {
        goto bad;
    }
    memcpy(buf, s.p, s.n);
    buf[s.n] = '\0';
    memset(net, 0, sizeof(*net));
    if (strcmp(buf, "unix") == 0) {
        net->family = AF_UNIX;
        return KOU_OK;
    }

    slash = strchr(buf, '/');
    if (slash != NULL) {
        *slash++ = '\0';
    }
    if (inet_pton(AF_INET, buf, net->addr) == 1) {
        net->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, net->addr) == 1) {
        net->family = AF_INET6;
        max = 128;
    } else {
        goto bad;
    }
    net->bits = max;
    if (slash != NULL) {
        if (*slash < '0' || *slash > '9') {
            goto bad;
        }
        bits = strtoul(slash, &end, 10);
        if (*end != '\0' || bits > max) {
            goto bad;
        }
        net->bits = (unsigned) bits;
    }
    return KOU_OK;

bad:
    return host->conf_error(item, err, errlen,
                            "metrics: allow: expected an IPv4 or IPv6 "
                            "address, optionally /bits, or \"unix\"");
}

static int
kou_metrics_configure_route(void *state, const kou_conf_t *route,
                            void **route_state, char *err, size_t errlen)
{
    const kou_host_t    *host = kou_metrics_host;
    kou_metrics_t       *m = state;
    kou_metrics_route_t *mr;
    const kou_conf_t    *n, *allow;
    kou_str_t            handler = { "", 0 };

    mr = calloc(1, sizeof(*mr));
    if (mr == NULL) {
        return host->conf_error(route, err, errlen, "metrics: out of memory");
    }
    mr->id = -1;

    n = host->conf_get(route, "path");
    if (n == NULL) {
        n = host->conf_get(route, "prefix");
    }
    if (n == NULL || host->conf_str(n, &mr->name) != KOU_OK) {
        free(mr);
        return host->conf_error(route, err, errlen,
                                "metrics: route without a path");
    }
    n = host->conf_get(route, "handler");
    if (n != NULL) {
        (void) host->conf_str(n, &handler);
    }
    mr->handler = handler.n == 7 && memcmp(handler.p, "metrics", 7) == 0;

    /*
     * The module is a log hook of every route, so the server accepts its
     * route keys everywhere. An `allow` that restricts nothing is worse
     * than an error: refuse it where metrics does not serve the route.
     */
    allow = host->conf_get(route, "allow");
    if (allow != NULL && !mr->handler) {
        free(mr);
        return host->conf_error(allow, err, errlen,
                                "metrics: \"allow\" applies only to a route "
                                "whose handler is metrics");
    }
    mr->restricted = allow != NULL;
    if (allow != NULL && host->conf_len(allow) > 0) {
        mr->nallow = host->conf_len(allow);
        mr->allow = calloc(mr->nallow, sizeof(kou_metrics_net_t));
        if (mr->allow == NULL) {
            free(mr);
            return host->conf_error(route, err, errlen,
                                    "metrics: out of memory");
        }
        for (size_t i = 0; i < mr->nallow; i++) {
            if (kou_metrics_net(host->conf_at(allow, i, NULL), &mr->allow[i],
                                err, errlen) != KOU_OK)
            {
                free(mr->allow);
                free(mr);
                return KOU_ERROR;
            }
        }
    }

    mr->next = m->routes;
    m->routes = mr;
    *route_state = mr;
    return KOU_OK;
}

static void
kou_metrics_route_free(void *state, void *route_state)
{
    kou_metrics_t        *m = state;
    kou_metrics_route_t  *mr = route_state;
    kou_metrics_route_t **pp;

    for (pp = &m->routes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == mr) {
            *pp = mr->next;
            break;
        }
    }
    free(mr->allow);
    free(mr);
}

static void
kou_metrics_destroy(void *state)
{
    free(state);
}

/* ---- the shared registries ---- */

static uint64_t
kou_metrics_hash(kou_str_t s)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);      /* FNV-1a */

    for (size_t i = 0; i < s.n; i++) {
        h = (h ^ (unsigned char) s.p[i]) * UINT64_C(0x100000001b3);
    }
    h &= KOU_SHM_HMASK;
    return h != 0 ? h : 1;
}

/*
 * The registry index of route `name`, inserting it: -1 when the name is
 * too long or the registry is full. Runs at worker_init only.
 *
 * Claimed without a lock, the same way by every process (shm_table.h).
 */
static int
kou_metrics_route_id(kou_metrics_t *m, kou_str_t name)
{
    uint64_t h = kou_metrics_hash(name);

    if (name.n > KOU_METRICS_ROUTE_MAX) {
        return -1;
    }
    for (uint32_t i = 0; i < m->max_routes; i++) {
        uint32_t            k = (uint32_t) ((h + i) % m->max_routes);
        kou_metrics_rent_t *e = &m->rents[k];

        switch (kou_shm_probe(&e->state, h)) {
        case KOU_SHM_WRITE:
            memcpy(e->name, name.p, name.n);
            e->len = (uint32_t) name.n;
            kou_shm_publish(&e->state, h);
            return (int) k;
        case KOU_SHM_COMPARE:
            if (e->len == name.n && memcmp(e->name, name.p, name.n) == 0) {
                return (int) k;
            }
            break;
        case KOU_SHM_OTHER:
            break;
        }
    }
    return -1;
}

static inline uint64_t
kou_metrics_key(int route, unsigned method, unsigned code)
{
    return KOU_METRICS_CLAIMED | ((uint64_t) route << 24)
           | ((uint64_t) method << 16) | code;
}

/*
 * The series index of `key`, inserting it: -1 when the table is full.
 * Lock-free: an empty word is claimed by one CAS, and a word never changes
 * once claimed.
 */
static int32_t
kou_metrics_series(kou_metrics_t *m, uint64_t key)
{
    uint32_t mask = m->max_series - 1;
    uint32_t h = (uint32_t) ((key * UINT64_C(0x9e3779b97f4a7c15)) >> 40);

    for (uint32_t i = 0; i <= mask; i++) {
        uint64_t *w = &m->keys[(h + i) & mask];
        uint64_t  cur = __atomic_load_n(w, __ATOMIC_ACQUIRE);

        if (cur == 0) {
            uint64_t expect = 0;
            if (__atomic_compare_exchange_n(w, &expect, key, 0,
                                            __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
            {
                return (int32_t) ((h + i) & mask);
            }
            cur = expect;
        }
        if (cur == key) {
            return (int32_t) ((h + i) & mask);
        }
    }
    return -1;
}

/* ---- worker ---- */

/* Give route mr its registry index, and its histogram in this row. */
static void
kou_metrics_attach(kou_metrics_t *m, kou_metrics_route_t *mr)
{
    mr->id = kou_metrics_route_id(m, mr->name);
    mr->hist = mr->id < 0 ? NULL
               : m->mine + KOU_ROW_HIST(m)
                 + (size_t) mr->id * KOU_METRICS_HIST_W;
}

static int
kou_metrics_worker_init(void *state)
{
    const kou_host_t *host = kou_metrics_host;
    kou_metrics_t    *m = state;
    char              name[64];
    size_t            head, size;
    int               slot;
    unsigned char    *p;

    if (!KOU_HOST_HAS(host, server_stats)) {
        host->log(KOU_LOG_ERR, "metrics: this server has no shared "
                  "statistics (ABI too old): nothing is counted");
        return KOU_OK;
    }
    m->nslots = host->stats_slots();
    slot = host->stats_slot();
    if (m->nslots <= 0 || slot < 0 || slot >= m->nslots) {
        return KOU_OK;
    }

    m->stride = 1 + m->max_series
                + (size_t) m->max_routes * KOU_METRICS_HIST_W;
    m->stride = (m->stride + 15) & ~(size_t) 15;    /* 128-byte rows */
    head = (size_t) m->max_routes * sizeof(kou_metrics_rent_t)
           + (size_t) m->max_series * sizeof(uint64_t);
    head = (head + 127) & ~(size_t) 127;
    size = head + (size_t) m->nslots * m->stride * sizeof(uint64_t);

    snprintf(name, sizeof(name), "metrics.v1.s%u.r%u.n%d", m->max_series,
             m->max_routes, m->nslots);
    p = host->shm_alloc(name, size);
    if (p == NULL) {
        host->log(KOU_LOG_ERR, "metrics: cannot get %zu bytes of shared "
                  "memory: raise the top-level \"shared_memory\" (or lower "
                  "max_series / max_routes); requests are not counted",
                  size);
        return KOU_OK;
    }
    m->rents = (kou_metrics_rent_t *) p;
    m->keys = (uint64_t *) (p + (size_t) m->max_routes
                                * sizeof(kou_metrics_rent_t));
    m->rows = (uint64_t *) (p + head);
    m->mine = m->rows + (size_t) slot * m->stride;

    m->none.id = -2;          /* registered at its first request */
    for (kou_metrics_route_t *mr = m->routes; mr != NULL; mr = mr->next) {
        kou_metrics_attach(m, mr);
        if (mr->id < 0) {
            host->log(KOU_LOG_WARN, "metrics: route \"%.*s\" is not "
                      "counted per route (name over %d bytes, or more than "
                      "max_routes %u routes)", (int) mr->name.n, mr->name.p,
                      KOU_METRICS_ROUTE_MAX, m->max_routes);
        }
    }
    return KOU_OK;
}

static unsigned
kou_metrics_method(kou_str_t s)
{
    /*
     * Candidates by length, each compared in one or two loads (a memcmp
     * of a constant length is inlined): no call per request.
     */
    switch (s.n) {
    case 3:
        if (memcmp(s.p, "GET", 3) == 0) {
            return KOU_METHOD_GET;
        }
        if (memcmp(s.p, "PUT", 3) == 0) {
            return KOU_METHOD_PUT;
        }
        break;
    case 4:
        if (memcmp(s.p, "POST", 4) == 0) {
            return KOU_METHOD_POST;
        }
        if (memcmp(s.p, "HEAD", 4) == 0) {
            return KOU_METHOD_HEAD;
        }
        break;
    case 5:
        if (memcmp(s.p, "PATCH", 5) == 0) {
            return KOU_METHOD_PATCH;
        }
        if (memcmp(s.p, "TRACE", 5) == 0) {
            return KOU_METHOD_TRACE;
        }
        break;
    case 6:
        if (memcmp(s.p, "DELETE", 6) == 0) {
            return KOU_METHOD_DELETE;
        }
        break;
    case 7:
        if (memcmp(s.p, "OPTIONS", 7) == 0) {
            return KOU_METHOD_OPTIONS;
        }
        if (memcmp(s.p, "CONNECT", 7) == 0) {
            return KOU_METHOD_CONNECT;
        }
        break;
    }
    return KOU_METHOD_OTHER;
}

/*
 * The log hook: one series counter, one histogram bucket and the sum, all
 * in this worker's row. No lock, no system call; the shared series table
 * is probed only for a (method, code) the route has not seen before in
 * this worker.
 */
static int
kou_metrics_log(kou_request_t *r, void *state, void *route_state)
{
    const kou_host_t          *host = kou_metrics_host;
    kou_metrics_t             *m = state;
    kou_metrics_route_t       *mr = route_state != NULL ? route_state
                                                        : &m->none;
    kou_request_info_t         local;
    const kou_request_info_t  *info;
    uint64_t                  *row = m->mine, dur, now;
    unsigned                   method, code, c, b;
    uint32_t                   sel;
    int32_t                    idx;

    if (row == NULL) {
        return KOU_OK;
    }
    if (mr->id < 0) {
        if (mr->id == -2) {
            kou_metrics_attach(m, mr);
        }
        if (mr->id < 0) {
            kou_metrics_add(&row[KOU_ROW_UNATTRIBUTED], 1);
            return KOU_OK;
        }
    }

    if (KOU_HOST_HAS(host, log_info) && host->log_info != NULL) {
        /* gathered once for every log hook (ABI 1.3) */
        info = host->log_info(r);
    } else {
        local.size = sizeof(local);
        (void) host->request_info(r, &local);
        if (local.size < sizeof(local)) {
            /* an older server: what it does not know is 0 */
            memset((char *) &local + local.size, 0,
                   sizeof(local) - local.size);
        }
        info = &local;
    }

    method = kou_metrics_method(host->method(r));
    code = info->status >= 100 && info->status <= 999
           ? (unsigned) info->status : 0;
    sel = (uint32_t) (code << 4 | method) + 1;
    c = (code * 7 + method) & (KOU_METRICS_CACHE - 1);
    if (mr->csel[c] != sel) {
        idx = kou_metrics_series(m, kou_metrics_key(mr->id, method, code));
        /* a full table stays full: the request stays unattributed */
        mr->cctr[c] = idx >= 0 ? &row[KOU_ROW_SERIES + (size_t) idx]
                               : &row[KOU_ROW_UNATTRIBUTED];
        mr->csel[c] = sel;
    }
    kou_metrics_add(mr->cctr[c], 1);

    if (info->end_us != 0) {
        dur = info->end_us >= info->start_us ? info->end_us - info->start_us
                                             : 0;
    } else {
        /* aborted: it lasted until now */
        now = host->now_ms() * 1000;
        dur = now >= info->start_us ? now - info->start_us : 0;
    }
    for (b = 0; b < KOU_METRICS_NBOUNDS; b++) {
        if (dur <= kou_metrics_bounds_us[b]) {
            break;
        }
    }
    kou_metrics_add(&mr->hist[b], 1);
    kou_metrics_add(&mr->hist[KOU_METRICS_NBUCKETS], dur);
    return KOU_OK;
}

/* ---- the exposition ---- */

typedef struct {
    char  *p;
    size_t n;
    size_t cap;
    int    oom;
} kou_metrics_buf_t;

static int
kou_metrics_grow(kou_metrics_buf_t *b, size_t more)
{
    size_t cap;
    char  *p;

    if (b->oom) {
        return KOU_ERROR;
    }
    if (b->n + more <= b->cap) {
        return KOU_OK;
    }
    cap = b->cap ? b->cap : 16384;
    while (cap < b->n + more) {
        cap *= 2;
    }
    p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = 1;
        return KOU_ERROR;
    }
    b->p = p;
    b->cap = cap;
    return KOU_OK;
}

static void
kou_metrics_put(kou_metrics_buf_t *b, const char *s, size_t n)
{
    if (kou_metrics_grow(b, n) == KOU_OK) {
        memcpy(b->p + b->n, s, n);
        b->n += n;
    }
}

#define KOU_PUTS(b, lit) kou_metrics_put((b), (lit), sizeof(lit) - 1)

static void
kou_metrics_printf(kou_metrics_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
kou_metrics_printf(kou_metrics_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    int     n;

    if (kou_metrics_grow(b, 256) != KOU_OK) {
        return;
    }
    va_start(ap, fmt);
    n = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t) n >= b->cap - b->n) {
        if (kou_metrics_grow(b, (size_t) n + 1) != KOU_OK) {
            return;
        }
        va_start(ap, fmt);
        n = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
    }
    b->n += (size_t) n;
}

/* kou_emit_pt for host->metrics_collect: other modules' series. */
static void
kou_metrics_emit(void *arg, const char *p, size_t n)
{
    kou_metrics_put(arg, p, n);
}

/* A label value, escaped as the format requires: \\, \" and \n. */
static void
kou_metrics_value(kou_metrics_buf_t *b, kou_str_t v)
{
    if (kou_metrics_grow(b, 2 * v.n) != KOU_OK) {
        return;
    }
    for (size_t i = 0; i < v.n; i++) {
        char c = v.p[i];
        if (c == '\\' || c == '"') {
            b->p[b->n++] = '\\';
            b->p[b->n++] = c;
        } else if (c == '\n') {
            b->p[b->n++] = '\\';
            b->p[b->n++] = 'n';
        } else {
            b->p[b->n++] = c;
        }
    }
}

static void
kou_metrics_cstr(kou_metrics_buf_t *b, const char *s)
{
    kou_metrics_value(b, (kou_str_t) { s, strlen(s) });
}

static void
kou_metrics_family(kou_metrics_buf_t *b, const char *name, const char *type,
                   const char *help)
{
    kou_metrics_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                       type);
}

/* A sample without labels. */
static void
kou_metrics_u64(kou_metrics_buf_t *b, const char *name, const char *type,
                const char *help, uint64_t v)
{
    kou_metrics_family(b, name, type, help);
    kou_metrics_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void
kou_metrics_server(kou_metrics_buf_t *b, const kou_server_stats_t *st)
{
    static const int     parse[KOU_STATS_NPARSE] = KOU_STATS_PARSE_STATUSES;
    static const char   *states[3] = { "reading", "writing", "idle" };
    uint64_t             acc = 0, in = 0, out = 0, tok = 0, tfail = 0;
    uint64_t             conns[3] = { 0, 0, 0 };
    uint64_t             perr[KOU_STATS_NPARSE];
    int64_t              last;

    memset(perr, 0, sizeof(perr));
    for (int s = 0; s < st->nslots; s++) {
        const kou_slot_stats_t *sl = &st->slots[s];

        acc += kou_metrics_get(&sl->connections_accepted);
        in += kou_metrics_get(&sl->bytes_in);
        out += kou_metrics_get(&sl->bytes_out);
        tok += kou_metrics_get(&sl->tls_handshakes_ok);
        tfail += kou_metrics_get(&sl->tls_handshakes_failed);
        for (int i = 0; i < KOU_STATS_NPARSE; i++) {
            perr[i] += kou_metrics_get(&sl->parse_errors[i]);
        }
        /* a slot without a live worker keeps no connection */
        if (kou_metrics_get(&sl->pid) != 0) {
            conns[0] += kou_metrics_get(&sl->conns_reading);
            conns[1] += kou_metrics_get(&sl->conns_writing);
            conns[2] += kou_metrics_get(&sl->conns_idle);
        }
    }

    kou_metrics_family(b, "kourier_build_info", "gauge",
                       "Version and request parser tier of the server.");
    KOU_PUTS(b, "kourier_build_info{version=\"");
    kou_metrics_cstr(b, st->version != NULL ? st->version : "");
    KOU_PUTS(b, "\",simd=\"");
    kou_metrics_cstr(b, st->simd != NULL ? st->simd : "");
    KOU_PUTS(b, "\"} 1\n");

    kou_metrics_u64(b, "kourier_start_time_seconds", "gauge",
                    "When the server started, in unix seconds.",
                    (uint64_t) st->start_time);
    kou_metrics_u64(b, "kourier_config_generation", "gauge",
                    "Configuration generation being served.",
                    st->generation);

    kou_metrics_family(b, "kourier_config_reloads_total", "counter",
                       "Configuration reloads, by result.");
    kou_metrics_printf(b, "kourier_config_reloads_total{result=\"ok\"} %"
                       PRIu64 "\n", st->reloads_ok);
    kou_metrics_printf(b, "kourier_config_reloads_total{result=\"error\"} %"
                       PRIu64 "\n", st->reloads_error);

    /* the start-up load is the first successful one */
    last = st->last_reload_ok_time != 0 ? st->last_reload_ok_time
                                        : st->start_time;
    kou_metrics_u64(b, "kourier_config_last_reload_success_timestamp_seconds",
                    "gauge", "When the configuration being served was "
                    "loaded, in unix seconds.", (uint64_t) last);
    kou_metrics_u64(b, "kourier_worker_restarts_total", "counter",
                    "Workers started again after dying unexpectedly.",
                    st->worker_restarts);
    kou_metrics_u64(b, "kourier_connections_accepted_total", "counter",
                    "Client connections accepted.", acc);

    kou_metrics_family(b, "kourier_connections", "gauge",
                       "Open client connections, by state.");
    for (int i = 0; i < 3; i++) {
        kou_metrics_printf(b, "kourier_connections{state=\"%s\"} %" PRIu64
                           "\n", states[i], conns[i]);
    }

    kou_metrics_u64(b, "kourier_http_request_bytes_total", "counter",
                    "Bytes of requests received (head and body).", in);
    kou_metrics_u64(b, "kourier_http_response_bytes_total", "counter",
                    "Bytes of responses sent (head and body).", out);

    kou_metrics_family(b, "kourier_http_parse_errors_total", "counter",
                       "Requests refused by the parser, by response "
                       "status.");
    for (int i = 0; i < KOU_STATS_NPARSE; i++) {
        kou_metrics_printf(b, "kourier_http_parse_errors_total{status=\"%d\"}"
                           " %" PRIu64 "\n", parse[i], perr[i]);
    }

    kou_metrics_family(b, "kourier_tls_handshakes_total", "counter",
                       "TLS handshakes, by result.");
    kou_metrics_printf(b, "kourier_tls_handshakes_total{result=\"ok\"} %"
                       PRIu64 "\n", tok);
    kou_metrics_printf(b, "kourier_tls_handshakes_total{result=\"error\"} %"
                       PRIu64 "\n", tfail);
}

/* A route's name from the registry, or NULL while it is not ready. */
static int
kou_metrics_rname(const kou_metrics_t *m, uint32_t id, kou_str_t *out)
{
    const kou_metrics_rent_t *e = &m->rents[id];
    uint64_t st = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE);

    if (!(st & KOU_SHM_READY) || e->len > KOU_METRICS_ROUTE_MAX) {
        return KOU_DECLINED;
    }
    out->p = e->name;
    out->n = e->len;
    return KOU_OK;
}

static uint64_t
kou_metrics_sum(const kou_metrics_t *m, size_t off)
{
    uint64_t v = 0;

    for (int s = 0; s < m->nslots; s++) {
        v += kou_metrics_get(&m->rows[(size_t) s * m->stride + off]);
    }
    return v;
}

static void
kou_metrics_requests(kou_metrics_buf_t *b, const kou_metrics_t *m)
{
    kou_metrics_family(b, "kourier_http_requests_total", "counter",
                       "Requests answered, by route, method and status "
                       "code (0: no response was sent).");
    for (uint32_t i = 0; i < m->max_series; i++) {
        uint64_t  key = __atomic_load_n(&m->keys[i], __ATOMIC_ACQUIRE);
        uint32_t  route = (uint32_t) (key >> 24) & 0xffff;
        unsigned  method = (unsigned) (key >> 16) & 0xff;
        kou_str_t rname;

        if (key == 0 || route >= m->max_routes || method >= KOU_METHOD_N
            || kou_metrics_rname(m, route, &rname) != KOU_OK)
        {
            continue;
        }
        KOU_PUTS(b, "kourier_http_requests_total{route=\"");
        kou_metrics_value(b, rname);
        kou_metrics_printf(b, "\",method=\"%s\",code=\"%u\"} %" PRIu64 "\n",
                           kou_metrics_methods[method],
                           (unsigned) (key & 0xffff),
                           kou_metrics_sum(m, KOU_ROW_SERIES + i));
    }
}

static void
kou_metrics_histograms(kou_metrics_buf_t *b, const kou_metrics_t *m)
{
    static const char *name = "kourier_http_request_duration_seconds";

    kou_metrics_family(b, name, "histogram",
                       "Time from the end of the request head to the end "
                       "of the response, by route.");
    for (uint32_t id = 0; id < m->max_routes; id++) {
        uint64_t  v[KOU_METRICS_HIST_W], cum = 0;
        size_t    off = KOU_ROW_HIST(m) + (size_t) id * KOU_METRICS_HIST_W;
        kou_str_t rname;

        if (kou_metrics_rname(m, id, &rname) != KOU_OK) {
            continue;
        }
        for (int k = 0; k < KOU_METRICS_HIST_W; k++) {
            v[k] = kou_metrics_sum(m, off + (size_t) k);
        }
        /*
         * Buckets are stored apart and made cumulative here, from one
         * snapshot, so that +Inf and _count agree whatever the workers do
         * meanwhile.
         */
        for (int k = 0; k < KOU_METRICS_NBUCKETS; k++) {
            cum += v[k];
            kou_metrics_printf(b, "%s_bucket{route=\"", name);
            kou_metrics_value(b, rname);
            kou_metrics_printf(b, "\",le=\"%s\"} %" PRIu64 "\n",
                               kou_metrics_le[k], cum);
        }
        kou_metrics_printf(b, "%s_sum{route=\"", name);
        kou_metrics_value(b, rname);
        kou_metrics_printf(b, "\"} %" PRIu64 ".%06" PRIu64 "\n",
                           v[KOU_METRICS_NBUCKETS] / 1000000,
                           v[KOU_METRICS_NBUCKETS] % 1000000);
        kou_metrics_printf(b, "%s_count{route=\"", name);
        kou_metrics_value(b, rname);
        kou_metrics_printf(b, "\"} %" PRIu64 "\n", cum);
    }
}

/* Does `addr` (as remote_addr gives it) fall in one of the networks? */
static int
kou_metrics_allowed(const kou_metrics_route_t *mr, kou_str_t addr)
{
    unsigned char a[16];
    char          buf[64];
    int           family;

    if (!mr->restricted) {
        return 1;
    }
    if (addr.n == 0 || addr.n >= sizeof(buf)) {
        return 0;
    }
    memcpy(buf, addr.p, addr.n);
    buf[addr.n] = '\0';
    if (strcmp(buf, "unix") == 0) {
        family = AF_UNIX;
    } else if (inet_pton(AF_INET, buf, a) == 1) {
        family = AF_INET;
    } else if (inet_pton(AF_INET6, buf, a) == 1) {
        family = AF_INET6;
        /* an IPv4 client on a dual-stack socket: ::ffff:a.b.c.d */
        if (memcmp(a, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
            memmove(a, a + 12, 4);
            family = AF_INET;
        }
    } else {
        return 0;
    }

    for (size_t i = 0; i < mr->nallow; i++) {
        const kou_metrics_net_t *net = &mr->allow[i];
        unsigned                 full = net->bits / 8, rest = net->bits % 8;

        if (net->family != family) {
            continue;
        }
        if (family == AF_UNIX) {
            return 1;
        }
        if (memcmp(a, net->addr, full) != 0) {
            continue;
        }
        if (rest == 0
            || ((a[full] ^ net->addr[full]) & (0xff00u >> rest) & 0xff) == 0)
        {
            return 1;
        }
    }
    return 0;
}

static int
kou_metrics_content(kou_request_t *r, void *state, void *route_state)
{
    static const kou_header_t allow405[] = {
        { KOU_STR_INIT("Allow"), KOU_STR_INIT("GET, HEAD") },
        { KOU_STR_INIT("Content-Type"), KOU_STR_INIT("text/plain") }
    };
    static const kou_header_t text[] = {
        { KOU_STR_INIT("Content-Type"), KOU_STR_INIT("text/plain") }
    };
    static const kou_header_t prom[] = {
        { KOU_STR_INIT("Content-Type"),
          KOU_STR_INIT("text/plain; version=0.0.4; charset=utf-8") },
        { KOU_STR_INIT("Cache-Control"), KOU_STR_INIT("no-store") }
    };
    const kou_host_t          *host = kou_metrics_host;
    kou_metrics_t             *m = state;
    kou_metrics_route_t       *mr = route_state;
    const kou_server_stats_t  *st = NULL;
    kou_metrics_buf_t          b = { NULL, 0, 0, 0 };
    kou_str_t                  method = host->method(r);
    int                        rc;

    if (!((method.n == 3 && memcmp(method.p, "GET", 3) == 0)
          || (method.n == 4 && memcmp(method.p, "HEAD", 4) == 0)))
    {
        rc = host->respond(r, 405, allow405, 2,
                           KOU_STR("Method Not Allowed\n"));
        return rc == KOU_OK ? KOU_DONE : KOU_ERROR;
    }
    if (mr != NULL && !kou_metrics_allowed(mr, host->remote_addr(r))) {
        rc = host->respond(r, 403, text, 1, KOU_STR("Forbidden\n"));
        return rc == KOU_OK ? KOU_DONE : KOU_ERROR;
    }

    if (KOU_HOST_HAS(host, server_stats)) {
        st = host->server_stats();
    }
    if (st != NULL) {
        kou_metrics_server(&b, st);
    }
    kou_metrics_family(&b, "kourier_module_info", "gauge",
                       "Modules loaded by the configuration being served.");
    if (KOU_HOST_HAS(host, module_at)) {
        kou_str_t name, version;

        for (size_t i = 0; host->module_at(i, &name, &version) == KOU_OK; i++) {
            KOU_PUTS(&b, "kourier_module_info{name=\"");
            kou_metrics_value(&b, name);
            KOU_PUTS(&b, "\",version=\"");
            kou_metrics_value(&b, version);
            KOU_PUTS(&b, "\"} 1\n");
        }
    } else {
        KOU_PUTS(&b, "kourier_module_info{name=\"metrics\",version=\"");
        KOU_PUTS(&b, "1.0.0\"} 1\n");
    }

    if (m->rows != NULL) {
        kou_metrics_requests(&b, m);
        kou_metrics_histograms(&b, m);
        kou_metrics_u64(&b, "kourier_metrics_unattributed_requests_total",
                        "counter", "Requests counted in no request series "
                        "(max_series or max_routes reached).",
                        kou_metrics_sum(m, KOU_ROW_UNATTRIBUTED));
    }

    /* series other modules keep (the proxy's kourier_upstream_*) */
    if (KOU_HOST_HAS(host, metrics_collect)) {
        host->metrics_collect(kou_metrics_emit, &b);
    }

    if (b.oom) {
        free(b.p);
        return 503;
    }
    rc = host->respond(r, 200, prom, 2, (kou_str_t) { b.p, b.n });
    free(b.p);
    return rc == KOU_OK ? KOU_DONE : KOU_ERROR;
}

static const kou_module_t kou_metrics_module = {
    KOU_MODULE_HEADER("metrics", "1.0.0"),
    .conf = kou_metrics_conf,
    .configure = kou_metrics_configure,
    .configure_route = kou_metrics_configure_route,
    .worker_init = kou_metrics_worker_init,
    .content = kou_metrics_content,
    .log = kou_metrics_log,
    .route_free = kou_metrics_route_free,
    .destroy = kou_metrics_destroy,
};

KOU_EXPORT const kou_module_t *
kourier_module(const kou_host_t *host)
{
    kou_metrics_host = host;
    return &kou_metrics_module;
}
