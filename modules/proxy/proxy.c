/*
 * proxy: an HTTP/1.1 reverse proxy on the public module ABI.
 *
 *     modules:
 *       proxy: {}
 *     routes:
 *       - prefix: /api
 *         handler: proxy
 *         upstreams:
 *           - 127.0.0.1:9001
 *           - { address: "[::1]:9002", weight: 2, max_fails: 3 }
 *           - { address: backup.internal:9000, backup: true }
 *         balance: least_conn
 *
 * Everything runs on the worker's event loop: the upstream sockets are
 * watched with io_add, timeouts are host timers, nothing blocks. Each
 * worker has its own peers' state (connections in flight, failures) and
 * its own pool of idle keep-alive connections per peer.
 *
 * A request goes: pick a peer (round-robin, least connections or a hash,
 * skipping peers that are down or already tried), take an idle connection
 * from its pool (checked for a close the upstream sent while it was idle)
 * or connect, send the head, stream the body, parse the response head with
 * the server's strict parser, stream the response body back, and return
 * the connection to the pool when the exchange ended cleanly.
 *
 * Memory is bounded in both directions. The request body is paused
 * (read_body_pause) whenever the upstream socket does not take it, so at
 * most one input buffer of it waits here. The response is read into one
 * buffer, handed to the client with write(), and the next read waits for
 * write()'s done callback: a slow client slows the upstream read.
 *
 * An upstream response that is malformed, ambiguous (Content-Length with
 * Transfer-Encoding, two lengths) or unexpected (a 101 nobody asked for) is
 * never relayed: the client gets 502 and the upstream connection is closed.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <kourier/module.h>

#include "../shm_table.h"

#define KOU_PROXY_BUF         (64 * 1024)  /* response read buffer */
#define KOU_PROXY_MAX_HEAD    (32 * 1024)  /* upstream response head */
#define KOU_PROXY_MAX_FIELDS  128
#define KOU_PROXY_MAX_TRAILER 16384
#define KOU_PROXY_PIECE       16384        /* most bytes per write() */
#define KOU_PROXY_CONN_TOKENS 16
#define KOU_PROXY_FREE_BUFS   32
#define KOU_PROXY_STALE_MAX   8            /* replays after stale conns */
#define KOU_PROXY_HASH_TRIES  20
#define KOU_PROXY_PEEK_AFTER  1000         /* ms idle before a MSG_PEEK */
#define KOU_PROXY_TRIES       4            /* attempt records in a ctx */
#define KOU_PROXY_ADDR_MAX    120          /* peer address as text */

/* The read buffer carries the response's field array after its bytes. */
#define KOU_PROXY_BUF_ALLOC \
    (KOU_PROXY_BUF + KOU_PROXY_MAX_FIELDS * sizeof(kou_header_t))

/*
 * Shared statistics (kourier_upstream_* series): one registry entry per
 * (route, upstream) and, per statistics slot, KOU_PS_W counters for each.
 */
#define KOU_PROXY_NAME_MAX    240          /* route + upstream, bytes */
#define KOU_PS_REQ            0            /* 5: responses by class */
#define KOU_PS_FAIL           5            /* 4: failures by reason */
#define KOU_PS_BUCKET         9            /* 12: histogram, last +Inf */
#define KOU_PS_SUM            21           /* ms */
#define KOU_PS_ACTIVE         22           /* gauge */
#define KOU_PS_IDLE           23           /* gauge */
#define KOU_PS_DOWN           24           /* down until (ms, monotonic) */
#define KOU_PS_W              32
#define KOU_PS_NBOUNDS        11

/* Failure reasons of kourier_upstream_failures_total. */
#define KOU_PR_CONNECT        0
#define KOU_PR_TIMEOUT        1
#define KOU_PR_INVALID        2
#define KOU_PR_CLOSED         3
#define KOU_PR_NONE           -1

#define kou_proxy_min(a, b) ((a) < (b) ? (a) : (b))

/* Is field f of the host table there (a server older than this header)? */
#define KOU_HOST_HAS(h, f) \
    ((h)->size >= offsetof(kou_host_t, f) + sizeof((h)->f))

typedef enum {
    KOU_PROXY_RR = 0,
    KOU_PROXY_LEAST_CONN,
    KOU_PROXY_HASH
} kou_proxy_balance_e;

typedef enum {
    KOU_PROXY_KEY_ADDR = 0,
    KOU_PROXY_KEY_PATH,
    KOU_PROXY_KEY_TARGET,
    KOU_PROXY_KEY_HOST,
    KOU_PROXY_KEY_HEADER
} kou_proxy_key_e;

/* Why an attempt failed; decides retries, health and the status. */
typedef enum {
    KOU_PF_CONNECT = 0,      /* refused, unreachable, reset while connecting */
    KOU_PF_CONNECT_TIMEOUT,
    KOU_PF_SEND,             /* error writing the request */
    KOU_PF_SEND_TIMEOUT,
    KOU_PF_READ,             /* error or close before the response head */
    KOU_PF_READ_TIMEOUT,
    KOU_PF_INVALID,          /* a response we refuse to relay */
    KOU_PF_STALE             /* a pooled connection the upstream closed */
} kou_proxy_fail_e;

typedef struct kou_proxy_module_s kou_proxy_module_t;
typedef struct kou_proxy_route_s  kou_proxy_route_t;
typedef struct kou_proxy_peer_s   kou_proxy_peer_t;
typedef struct kou_proxy_uconn_s  kou_proxy_uconn_t;
typedef struct kou_proxy_ctx_s    kou_proxy_ctx_t;
typedef struct kou_proxy_fbuf_s   kou_proxy_fbuf_t;

/* A connection to a peer: in use by one request, or idle in the pool. */
struct kou_proxy_uconn_s {
    kou_proxy_uconn_t *next;        /* pool list, most recent first */
    kou_proxy_uconn_t *prev;
    kou_proxy_peer_t  *peer;
    kou_proxy_ctx_t   *ctx;         /* the request using it, NULL idle */
    kou_io_t          *io;
    /*
     * One timer per connection serves every deadline it has: connect,
     * send, read while a request uses it, the keep-alive timeout while it
     * is idle. It is re-armed only when it fires or when a nearer
     * deadline appears, so a pooled request costs no timer call.
     */
    kou_htimer_t      *timer;
    uint64_t           timer_due;
    int                fd;
    uint64_t           requests;    /* requests sent on it */
    uint64_t           idle_since;  /* ms, when it went to the pool */
};

struct kou_proxy_peer_s {
    char                   *name;       /* as configured: Host, logs */
    size_t                  name_len;
    char                    text[KOU_PROXY_ADDR_MAX];  /* the address */
    size_t                  text_len;
    struct sockaddr_storage addr;
    socklen_t               addrlen;
    int64_t                 weight;
    int64_t                 max_fails;
    uint64_t                fail_timeout;
    int                     backup;
    size_t                  index;

    /* this worker's view */
    int64_t                 cw;         /* smooth round-robin weight */
    uint64_t                active;     /* requests in flight */
    uint64_t                fails;      /* in the current window */
    uint64_t                fail_start;
    uint64_t                down_until;
    kou_proxy_uconn_t      *idle;       /* pool: head (most recent) */
    kou_proxy_uconn_t      *idle_tail;
    uint64_t                nidle;
    kou_htimer_t           *trim;       /* pool over keepalive: trim soon */
    kou_proxy_route_t      *pr;
    uint64_t               *st;         /* this slot's counters, or NULL */
};

struct kou_proxy_route_s {
    kou_proxy_route_t  *next;        /* the module's list (worker_exit) */
    kou_proxy_module_t *m;
    kou_str_t           name;        /* the route's path, for metrics */
    kou_proxy_peer_t   *peers;       /* primaries first, then backups */
    size_t              npeers;
    size_t              nprimary;
    int64_t             primary_weight;
    unsigned            balance;
    unsigned            hash_key;
    kou_str_t           hash_header;
    int64_t             keepalive;
    uint64_t            keepalive_timeout;
    int64_t             keepalive_requests;
    uint64_t            connect_timeout;
    uint64_t            tick;            /* the shortest timeout, >= 1 */
    uint64_t            send_timeout;
    uint64_t            read_timeout;
    int64_t             retries;
    uint64_t            retry_timeout;
    int                 preserve_host;
    int                 buffering;
    uint64_t            buffer_size;
    int                 upgrade;
    kou_header_t       *set_headers;
    size_t              nset;
    kou_str_t          *remove_headers;
    size_t              nremove;
};

/* A (route, upstream) entry of the shared registry: 256 bytes. */
typedef struct {
    uint64_t state;                  /* CLAIMED | READY | hash */
    uint32_t route_len;
    uint32_t addr_len;
    char     name[KOU_PROXY_NAME_MAX];   /* route, then upstream */
} kou_proxy_sent_t;

struct kou_proxy_module_s {
    kou_proxy_route_t *routes;
    uint32_t           max_upstreams;

    /* the shared block, NULL until worker_init found it */
    kou_proxy_sent_t  *ents;
    uint64_t          *rows;         /* nslots rows of max_upstreams */
    int                nslots;
    unsigned char     *configured;   /* entries this config uses */
};

/* One attempt of a request, for the upstream_* variables. */
typedef struct {
    kou_proxy_peer_t *peer;
    uint64_t          start;         /* ms */
    int64_t           connect;       /* ms after start, -1: not connected */
    int64_t           header;        /* ms after start, -1: no head */
    int64_t           end;           /* ms after start, -1: going on */
    int               status;        /* 0: none yet */
} kou_proxy_try_t;

/* A free read buffer (per worker). */
struct kou_proxy_fbuf_s {
    kou_proxy_fbuf_t *next;
};

/* One request's state, from the request's pool. */
struct kou_proxy_ctx_s {
    kou_request_t      *r;
    kou_proxy_route_t  *pr;
    kou_proxy_peer_t   *peer;        /* of the current attempt */
    kou_proxy_uconn_t  *uc;          /* of the current attempt */
    unsigned char      *tried;       /* per peer */
    uint64_t            start_ms;
    uint64_t            connect_start;
    uint64_t            last_read;
    uint64_t            last_write;
    unsigned            attempts;    /* counted against retries */
    unsigned            stale;       /* replays after stale connections */
    kou_proxy_try_t    *tries;       /* attempt records */
    unsigned            ntries;
    unsigned            maxtries;
    kou_proxy_try_t     try0[KOU_PROXY_TRIES];

    /* the request going up */
    kou_str_t           method;
    char               *head;        /* for the current peer */
    size_t              head_len;
    size_t              head_off;    /* bytes of it written */
    char               *obuf;        /* body bytes not written yet */
    size_t              olen;
    size_t              opos;
    size_t              ocap;
    uint64_t            body_in;     /* body bytes taken from the client */

    /* the response coming down */
    char               *in;
    size_t              in_start;
    size_t              in_end;
    size_t              scanned;     /* head bytes known to hold no LF */
    uint64_t            in_total;    /* bytes read on this attempt */
    kou_header_t       *fields;
    kou_response_head_t rh;
    kou_chunked_t       ch;
    uint64_t            remaining;   /* KOU_BODY_LENGTH */
    uint64_t            unacked;     /* written since the last drain */

    unsigned            idempotent:1;
    unsigned            req_chunked:1;
    unsigned            req_cl:1;        /* the client sent Content-Length */
    unsigned            body_last:1;     /* the client's body is all in */
    unsigned            wrote:1;         /* this attempt wrote a byte */
    unsigned            reused:1;        /* this attempt's conn was pooled */
    unsigned            connected:1;
    unsigned            writable:1;
    unsigned            readable:1;
    unsigned            rdhup:1;         /* the peer's FIN was reported */
    unsigned            paused:1;        /* the client body is paused */
    unsigned            head_done:1;     /* the response head went out */
    unsigned            up_done:1;       /* the response is all read */
    unsigned            dirty:1;         /* bytes after the response */
    unsigned            waiting:1;       /* for write()'s done callback */
    unsigned            finished:1;      /* answered or given up */
    unsigned            dead:1;          /* the request has ended */
    unsigned            upgrade_req:1;   /* asked the upstream to upgrade */
    unsigned            tunnel:1;        /* switched protocols */
    unsigned            up_shut:1;       /* tunnel: our FIN went up */
    unsigned            replay:1;        /* next attempt replays a stale one */
};

static const kou_host_t *kou_proxy_host;
static kou_proxy_fbuf_t *kou_proxy_free_bufs;
static unsigned          kou_proxy_nfree;
static int               kou_proxy_exiting;

static void kou_proxy_io(kou_io_t *io, int fd, unsigned events, void *arg);
static void kou_proxy_uc_timer(void *arg);
static void kou_proxy_next(kou_proxy_ctx_t *ctx);
static void kou_proxy_read(kou_proxy_ctx_t *ctx);
static void kou_proxy_timer_set(kou_proxy_ctx_t *ctx);
static void kou_proxy_tunnel_done(kou_proxy_ctx_t *ctx);
static void kou_proxy_body(kou_request_t *r, kou_str_t data, int last,
                           void *arg);

static const kou_header_t kou_proxy_text[] = {
    { KOU_STR_INIT("Content-Type"), KOU_STR_INIT("text/plain") }
};

/* ---- small helpers ---- */

/* s[0..n) equals lc (lowercase), ignoring ASCII case. */
static inline int
kou_proxy_lc(const char *s, const char *lc, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char) s[i];

        c += (unsigned) (c - 'A' < 26u) << 5;   /* A-Z to a-z */
        if (c != (unsigned char) lc[i]) {
            return 0;
        }
    }
    return 1;
}

#define kou_proxy_eq(a, lit) \
    ((a).n == sizeof(lit) - 1 && kou_proxy_lc((a).p, (lit), sizeof(lit) - 1))

/* Two field names equal ignoring ASCII case. */
static int
kou_proxy_eq_str(kou_str_t a, kou_str_t b)
{
    if (a.n != b.n) {
        return 0;
    }
    for (size_t i = 0; i < a.n; i++) {
        unsigned x = (unsigned char) a.p[i], y = (unsigned char) b.p[i];

        x += (unsigned) (x - 'A' < 26u) << 5;
        y += (unsigned) (y - 'A' < 26u) << 5;
        if (x != y) {
            return 0;
        }
    }
    return 1;
}

/*
 * Add d to counter f of the peer's shared statistics. Only this worker
 * writes its slot's row: a relaxed load and store, no locked instruction.
 */
static inline void
kou_proxy_stat(const kou_proxy_peer_t *peer, unsigned f, int64_t d)
{
    uint64_t *v = peer->st;

    if (v != NULL) {
        __atomic_store_n(&v[f], __atomic_load_n(&v[f], __ATOMIC_RELAXED)
                                    + (uint64_t) d, __ATOMIC_RELAXED);
    }
}

/* Next element of a comma-separated list; 0 at the end. */
static int
kou_proxy_list_next(kou_str_t v, size_t *at, kou_str_t *el)
{
    size_t i = *at, s, e;

    for (;;) {
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ',')) {
            i++;
        }
        if (i == v.n) {
            *at = i;
            return 0;
        }
        s = i;
        while (i < v.n && v.p[i] != ',') {
            i++;
        }
        e = i;
        while (e > s && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t')) {
            e--;
        }
        if (e > s) {
            el->p = v.p + s;
            el->n = e - s;
            *at = i;
            return 1;
        }
    }
}

/*
 * A field name (a token, as both parsers guarantee) equals the literal lc
 * of lowercase letters and '-', ignoring case: compared a word at a time
 * after OR-ing 0x20 into every byte, which folds A-Z onto a-z and maps no
 * other token byte onto a letter or '-'. n is a constant once inlined, so
 * each call is a few loads and compares.
 */
static inline __attribute__((always_inline)) int
kou_proxy_tok(const char *p, const char *lc, size_t n)
{
    uint64_t a, b, c, d;
    uint32_t x, y, u, v;
    uint16_t h, k;

    if (n >= 8) {
        for (size_t off = 0; off + 8 <= n; off += 8) {
            memcpy(&a, p + off, 8);
            memcpy(&b, lc + off, 8);
            if ((a | UINT64_C(0x2020202020202020)) != b) {
                return 0;
            }
        }
        memcpy(&c, p + n - 8, 8);
        memcpy(&d, lc + n - 8, 8);
        return (c | UINT64_C(0x2020202020202020)) == d;
    }
    if (n >= 4) {
        memcpy(&x, p, 4);
        memcpy(&y, lc, 4);
        memcpy(&u, p + n - 4, 4);
        memcpy(&v, lc + n - 4, 4);
        return (x | 0x20202020u) == y && (u | 0x20202020u) == v;
    }
    memcpy(&h, p, 2);
    memcpy(&k, lc, 2);
    return (uint16_t) (h | 0x2020u) == k
           && (n < 3
               || ((unsigned char) p[2] | 0x20) == (unsigned char) lc[2]);
}

/*
 * What a field name means to the proxy. One switch on the length and at
 * most two word comparisons per field: the head of every request and
 * response goes through it.
 */
typedef enum {
    KOU_FN_OTHER = 0,
    KOU_FN_HOP,              /* hop-by-hop (RFC 9110 section 7.6.1) */
    KOU_FN_CONNECTION,       /* hop-by-hop, and names more */
    KOU_FN_UPGRADE,          /* hop-by-hop unless tunnelling */
    KOU_FN_HOST,
    KOU_FN_CONTENT_LENGTH,
    KOU_FN_EXPECT,
    KOU_FN_XFF,
    KOU_FN_XFP,
    KOU_FN_XFH,
    KOU_FN_VIA,
    KOU_FN_SERVER,
    KOU_FN_DATE
} kou_proxy_fname_e;

static kou_proxy_fname_e
kou_proxy_fname(kou_str_t n)
{
    const char *p = n.p;

    switch (n.n) {
    case 2:
        return kou_proxy_tok(p, "te", 2) ? KOU_FN_HOP : KOU_FN_OTHER;
    case 3:
        return kou_proxy_tok(p, "via", 3) ? KOU_FN_VIA : KOU_FN_OTHER;
    case 4:
        if (kou_proxy_tok(p, "host", 4)) {
            return KOU_FN_HOST;
        }
        return kou_proxy_tok(p, "date", 4) ? KOU_FN_DATE : KOU_FN_OTHER;
    case 6:
        if (kou_proxy_tok(p, "expect", 6)) {
            return KOU_FN_EXPECT;
        }
        return kou_proxy_tok(p, "server", 6) ? KOU_FN_SERVER : KOU_FN_OTHER;
    case 7:
        if (kou_proxy_tok(p, "upgrade", 7)) {
            return KOU_FN_UPGRADE;
        }
        return kou_proxy_tok(p, "trailer", 7) ? KOU_FN_HOP : KOU_FN_OTHER;
    case 10:
        if (kou_proxy_tok(p, "connection", 10)) {
            return KOU_FN_CONNECTION;
        }
        return kou_proxy_tok(p, "keep-alive", 10) ? KOU_FN_HOP : KOU_FN_OTHER;
    case 14:
        return kou_proxy_tok(p, "content-length", 14) ? KOU_FN_CONTENT_LENGTH
                                                     : KOU_FN_OTHER;
    case 15:
        return kou_proxy_tok(p, "x-forwarded-for", 15) ? KOU_FN_XFF
                                                      : KOU_FN_OTHER;
    case 16:
        if (kou_proxy_tok(p, "proxy-connection", 16)) {
            return KOU_FN_HOP;
        }
        return kou_proxy_tok(p, "x-forwarded-host", 16) ? KOU_FN_XFH
                                                       : KOU_FN_OTHER;
    case 17:
        if (kou_proxy_tok(p, "transfer-encoding", 17)) {
            return KOU_FN_HOP;
        }
        return kou_proxy_tok(p, "x-forwarded-proto", 17) ? KOU_FN_XFP
                                                        : KOU_FN_OTHER;
    default:
        return KOU_FN_OTHER;
    }
}

/* The fields RFC 9110 section 7.6.1 says a proxy must not forward. */
static int
kou_proxy_hop_by_hop(kou_str_t name)
{
    kou_proxy_fname_e k = kou_proxy_fname(name);

    return k == KOU_FN_HOP || k == KOU_FN_CONNECTION || k == KOU_FN_UPGRADE;
}

static int
kou_proxy_in(kou_str_t name, const kou_str_t *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (kou_proxy_eq_str(name, list[i])) {
            return 1;
        }
    }
    return 0;
}

static char *
kou_proxy_put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define kou_proxy_put_lit(p, lit) kou_proxy_put((p), (lit), sizeof(lit) - 1)

static char *
kou_proxy_put_field(char *p, kou_str_t name, kou_str_t value)
{
    p = kou_proxy_put(p, name.p, name.n);
    p = kou_proxy_put_lit(p, ": ");
    p = kou_proxy_put(p, value.p, value.n);
    return kou_proxy_put_lit(p, "\r\n");
}

static uint64_t
kou_proxy_hash(const char *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char) p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t
kou_proxy_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* ---- read buffers ---- */

static char *
kou_proxy_buf_get(void)
{
    kou_proxy_fbuf_t *b = kou_proxy_free_bufs;

    if (b != NULL) {
        kou_proxy_free_bufs = b->next;
        kou_proxy_nfree--;
        return (char *) b;
    }
    return malloc(KOU_PROXY_BUF_ALLOC);
}

static void
kou_proxy_buf_put(char *p)
{
    kou_proxy_fbuf_t *b = (kou_proxy_fbuf_t *) (void *) p;

    if (p == NULL) {
        return;
    }
    if (kou_proxy_nfree >= KOU_PROXY_FREE_BUFS || kou_proxy_exiting) {
        free(p);
        return;
    }
    b->next = kou_proxy_free_bufs;
    kou_proxy_free_bufs = b;
    kou_proxy_nfree++;
}

static void
kou_proxy_bufs_free(void)
{
    while (kou_proxy_free_bufs != NULL) {
        kou_proxy_fbuf_t *b = kou_proxy_free_bufs;

        kou_proxy_free_bufs = b->next;
        free(b);
    }
    kou_proxy_nfree = 0;
}

/* ---- upstream connections and the pool ---- */

static void
kou_proxy_uconn_close(kou_proxy_uconn_t *uc)
{
    const kou_host_t *host = kou_proxy_host;

    if (uc->timer != NULL) {
        host->timer_del(uc->timer);
    }
    if (uc->io != NULL) {
        host->io_del(uc->io);
    }
    close(uc->fd);
    free(uc);
}

static void
kou_proxy_pool_unlink(kou_proxy_uconn_t *uc)
{
    kou_proxy_peer_t *peer = uc->peer;

    if (uc->prev != NULL) {
        uc->prev->next = uc->next;
    } else {
        peer->idle = uc->next;
    }
    if (uc->next != NULL) {
        uc->next->prev = uc->prev;
    } else {
        peer->idle_tail = uc->prev;
    }
    uc->next = uc->prev = NULL;
    peer->nidle--;
    kou_proxy_stat(peer, KOU_PS_IDLE, -1);
}

/*
 * Make the connection's timer fire by `due` (ms of the loop clock). A
 * timer already due earlier is kept: it re-evaluates when it fires.
 * KOU_OK, or KOU_ERROR when out of memory.
 */
static int
kou_proxy_uc_arm(kou_proxy_uconn_t *uc, uint64_t due)
{
    const kou_host_t *host = kou_proxy_host;
    uint64_t          now = host->now_ms();

    if (uc->timer != NULL) {
        if (uc->timer_due <= due) {
            return KOU_OK;
        }
        host->timer_del(uc->timer);
    }
    uc->timer = host->timer_add(due > now ? due - now : 0,
                                kou_proxy_uc_timer, uc);
    uc->timer_due = due;
    return uc->timer != NULL ? KOU_OK : KOU_ERROR;
}

/*
 * An idle connection is usable if the upstream has neither closed it nor
 * sent anything on it: one MSG_PEEK says which, without consuming.
 */
static int
kou_proxy_uconn_alive(kou_proxy_uconn_t *uc)
{
    char    b;
    ssize_t n = recv(uc->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Close the least recently used idle connections over `keepalive`. */
static void
kou_proxy_pool_trim(void *arg)
{
    kou_proxy_peer_t *peer = arg;

    peer->trim = NULL;              /* freed by the server once fired */
    while (peer->nidle > (uint64_t) peer->pr->keepalive) {
        kou_proxy_uconn_t *old = peer->idle_tail;

        kou_proxy_pool_unlink(old);
        kou_proxy_uconn_close(old);
    }
}

static void
kou_proxy_pool_put(kou_proxy_uconn_t *uc)
{
    kou_proxy_peer_t  *peer = uc->peer;
    kou_proxy_route_t *pr = peer->pr;

    uc->ctx = NULL;
    if (peer->nidle >= (uint64_t) pr->keepalive && peer->trim == NULL) {
        /*
         * Full. The pool is trimmed back to `keepalive` once this round
         * of events is done, not now: under load, responses that end
         * together are followed by requests that start together, and a
         * connection closed here would be opened again a moment later.
         */
        peer->trim = kou_proxy_host->timer_add(0, kou_proxy_pool_trim,
                                               peer);
        if (peer->trim == NULL) {
            kou_proxy_uconn_close(uc);
            return;
        }
    }
    uc->idle_since = kou_proxy_host->now_ms();
    if (kou_proxy_uc_arm(uc, uc->idle_since + pr->keepalive_timeout)
        != KOU_OK)
    {
        kou_proxy_uconn_close(uc);
        return;
    }
    uc->prev = NULL;
    uc->next = peer->idle;
    if (peer->idle != NULL) {
        peer->idle->prev = uc;
    } else {
        peer->idle_tail = uc;
    }
    peer->idle = uc;
    peer->nidle++;
    kou_proxy_stat(peer, KOU_PS_IDLE, 1);
}

/*
 * The most recently used idle connection. A close the upstream sent while
 * the connection sat in the pool is normally seen by the event watch
 * (kou_proxy_idle_event) before the connection is wanted again. It can
 * arrive in the same batch of events as the request that wants it, though,
 * which is likely only when the connection was idle long enough for the
 * upstream's keep-alive timeout to run out: then one MSG_PEEK checks.
 * A connection that was busy a moment ago is taken without that system
 * call; if it turns out closed all the same, the request is replayed on a
 * fresh one when that is safe (KOU_PF_STALE).
 */
static kou_proxy_uconn_t *
kou_proxy_pool_get(kou_proxy_peer_t *peer)
{
    kou_proxy_uconn_t *uc;
    uint64_t           now = kou_proxy_host->now_ms();

    while ((uc = peer->idle) != NULL) {
        kou_proxy_pool_unlink(uc);
        if (now - uc->idle_since < KOU_PROXY_PEEK_AFTER
            || kou_proxy_uconn_alive(uc))
        {
            return uc;
        }
        kou_proxy_uconn_close(uc);
    }
    return NULL;
}

/* An event on an idle connection: the upstream closed it (or misbehaved). */
static void
kou_proxy_idle_event(kou_proxy_uconn_t *uc, unsigned events)
{
    if (!(events & (KOU_IO_READ | KOU_IO_HUP)) || kou_proxy_uconn_alive(uc)) {
        return;
    }
    kou_proxy_pool_unlink(uc);
    kou_proxy_uconn_close(uc);
}

static void
kou_proxy_pools_close(kou_proxy_route_t *pr)
{
    for (size_t i = 0; i < pr->npeers; i++) {
        kou_proxy_peer_t  *peer = &pr->peers[i];
        kou_proxy_uconn_t *uc;

        while ((uc = peer->idle) != NULL) {
            kou_proxy_pool_unlink(uc);
            kou_proxy_uconn_close(uc);
        }
        if (peer->trim != NULL) {
            kou_proxy_host->timer_del(peer->trim);
            peer->trim = NULL;
        }
    }
}

/* ---- peers: health and balancing ---- */

static int
kou_proxy_peer_up(const kou_proxy_peer_t *peer, uint64_t now)
{
    return peer->down_until <= now;
}

static void
kou_proxy_peer_failed(kou_proxy_peer_t *peer)
{
    uint64_t now = kou_proxy_host->now_ms();

    if (peer->max_fails == 0) {
        return;
    }
    if (peer->fails == 0 || now - peer->fail_start >= peer->fail_timeout) {
        peer->fails = 0;
        peer->fail_start = now;
    }
    if (++peer->fails >= (uint64_t) peer->max_fails) {
        peer->fails = 0;
        peer->down_until = now + peer->fail_timeout;
        if (peer->st != NULL) {
            __atomic_store_n(&peer->st[KOU_PS_DOWN], peer->down_until,
                             __ATOMIC_RELAXED);
        }
        kou_proxy_host->log(KOU_LOG_WARN,
                            "proxy: upstream %s (%s) is down for %llu ms "
                            "after %lld failure(s)", peer->name, peer->text,
                            (unsigned long long) peer->fail_timeout,
                            (long long) peer->max_fails);
    }
}

static int
kou_proxy_usable(kou_proxy_ctx_t *ctx, kou_proxy_peer_t *peer, uint64_t now)
{
    return !ctx->tried[peer->index] && kou_proxy_peer_up(peer, now);
}

/*
 * Smooth weighted round-robin over the usable peers of [from, to) whose
 * load (active / weight) is `load_num / load_den` when least is set: every
 * candidate gains its weight, the heaviest is picked and pays the total.
 * Over a round each peer is picked in proportion to its weight, spread out
 * rather than in bursts.
 */
static kou_proxy_peer_t *
kou_proxy_swrr(kou_proxy_ctx_t *ctx, size_t from, size_t to, int least,
               const kou_proxy_peer_t *ref)
{
    kou_proxy_route_t *pr = ctx->pr;
    kou_proxy_peer_t  *best = NULL;
    uint64_t           now = kou_proxy_host->now_ms();
    int64_t            total = 0;

    for (size_t i = from; i < to; i++) {
        kou_proxy_peer_t *p = &pr->peers[i];

        if (!kou_proxy_usable(ctx, p, now)) {
            continue;
        }
        if (least && p->active * (uint64_t) ref->weight
                         != ref->active * (uint64_t) p->weight)
        {
            continue;
        }
        p->cw += p->weight;
        total += p->weight;
        if (best == NULL || p->cw > best->cw) {
            best = p;
        }
    }
    if (best != NULL) {
        best->cw -= total;
    }
    return best;
}

static kou_proxy_peer_t *
kou_proxy_least(kou_proxy_ctx_t *ctx, size_t from, size_t to)
{
    kou_proxy_route_t *pr = ctx->pr;
    kou_proxy_peer_t  *min = NULL;
    uint64_t           now = kou_proxy_host->now_ms();

    for (size_t i = from; i < to; i++) {
        kou_proxy_peer_t *p = &pr->peers[i];

        if (!kou_proxy_usable(ctx, p, now)) {
            continue;
        }
        /* p->active / p->weight < min->active / min->weight */
        if (min == NULL || p->active * (uint64_t) min->weight
                               < min->active * (uint64_t) p->weight)
        {
            min = p;
        }
    }
    if (min == NULL) {
        return NULL;
    }
    /* ties share the load by weight */
    return kou_proxy_swrr(ctx, from, to, 1, min);
}

static uint64_t
kou_proxy_hash_key(kou_proxy_ctx_t *ctx)
{
    const kou_host_t  *host = kou_proxy_host;
    kou_proxy_route_t *pr = ctx->pr;
    kou_request_t     *r = ctx->r;
    kou_str_t          k = { "", 0 };
    uint64_t           h = 0xcbf29ce484222325ull;

    switch (pr->hash_key) {
    case KOU_PROXY_KEY_ADDR:
        k = host->remote_addr(r);
        break;
    case KOU_PROXY_KEY_PATH:
        k = host->path(r);
        break;
    case KOU_PROXY_KEY_TARGET:
        k = host->target(r);
        break;
    case KOU_PROXY_KEY_HOST:
        k = host->host(r);
        break;
    default:
        if (host->header(r, pr->hash_header, 0, &k) != KOU_OK) {
            k.p = "";
            k.n = 0;
        }
        break;
    }
    return kou_proxy_mix(kou_proxy_hash(k.p, k.n, h));
}

/*
 * Hash: the key picks a point on the primaries' total weight; a peer that
 * is down or already tried sends the key on to a rehashed point, and after
 * a few misses the pick falls back to round-robin, so one dead peer moves
 * only its own keys.
 */
static kou_proxy_peer_t *
kou_proxy_by_hash(kou_proxy_ctx_t *ctx)
{
    kou_proxy_route_t *pr = ctx->pr;
    uint64_t           h = kou_proxy_hash_key(ctx);
    uint64_t           now = kou_proxy_host->now_ms();

    for (unsigned t = 0; t < KOU_PROXY_HASH_TRIES && pr->primary_weight > 0;
         t++)
    {
        uint64_t w = h % (uint64_t) pr->primary_weight;

        for (size_t i = 0; i < pr->nprimary; i++) {
            kou_proxy_peer_t *p = &pr->peers[i];

            if (w >= (uint64_t) p->weight) {
                w -= (uint64_t) p->weight;
                continue;
            }
            if (kou_proxy_usable(ctx, p, now)) {
                return p;
            }
            break;
        }
        h = kou_proxy_mix(h + t + 1);
    }
    return kou_proxy_swrr(ctx, 0, pr->nprimary, 0, NULL);
}

/* The peer for the next attempt, backups only when no primary is usable. */
static kou_proxy_peer_t *
kou_proxy_pick(kou_proxy_ctx_t *ctx)
{
    kou_proxy_route_t *pr = ctx->pr;
    kou_proxy_peer_t  *p;

    switch (pr->balance) {
    case KOU_PROXY_LEAST_CONN:
        p = kou_proxy_least(ctx, 0, pr->nprimary);
        break;
    case KOU_PROXY_HASH:
        p = kou_proxy_by_hash(ctx);
        break;
    default:
        p = kou_proxy_swrr(ctx, 0, pr->nprimary, 0, NULL);
        break;
    }
    if (p == NULL && pr->npeers > pr->nprimary) {
        p = pr->balance == KOU_PROXY_LEAST_CONN
                ? kou_proxy_least(ctx, pr->nprimary, pr->npeers)
                : kou_proxy_swrr(ctx, pr->nprimary, pr->npeers, 0, NULL);
    }
    return p;
}

/* ---- the request head ---- */

/*
 * The target in origin form: an absolute-form target loses its scheme and
 * authority. The result may start with '?' (an empty path), before which
 * the caller writes "/".
 */
static kou_str_t
kou_proxy_origin_target(kou_str_t t)
{
    const char *s, *end = t.p + t.n;

    if (t.n > 0 && t.p[0] == '/') {
        return t;
    }
    s = memchr(t.p, ':', t.n);
    if (s == NULL || end - s < 3 || s[1] != '/' || s[2] != '/') {
        return t;
    }
    for (s += 3; s < end && *s != '/' && *s != '?'; s++) {
        /* skip the authority */
    }
    if (s == end) {
        return KOU_STR("/");
    }
    /* "http://h?q" keeps "?q": the caller writes the "/" before it */
    return (kou_str_t){ s, (size_t) (end - s) };
}

/* Decimal digits of v at p; returns the end. */
static char *
kou_proxy_put_u64(char *p, uint64_t v)
{
    char  tmp[20];
    char *t = tmp + sizeof(tmp);

    do {
        *--t = (char) ('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return kou_proxy_put(p, t, (size_t) (tmp + sizeof(tmp) - t));
}

/* Per field of the request: keep it, or why not (kou_proxy_build_head). */
#define KOU_RF_KEEP 0
#define KOU_RF_DROP 1
#define KOU_RF_XFF  2
#define KOU_RF_VIA  3
#define KOU_RF_UPG  4

/*
 * Serialise the head sent to `peer` into request memory: request line in
 * origin form, Host (the peer's or the client's), the client's end-to-end
 * fields, X-Forwarded-For/-Proto/-Host, Via, set_headers, framing.
 *
 * Two passes over the fields: the first classifies each one by name
 * (kou_proxy_fname: a switch on the length), collects the names the
 * Connection fields list and sizes the output; the second writes. The
 * configured set_headers / remove_headers lists are only looked at when
 * the route has them.
 */
static int
kou_proxy_build_head(kou_proxy_ctx_t *ctx, kou_proxy_peer_t *peer)
{
    const kou_host_t  *host = kou_proxy_host;
    kou_proxy_route_t *pr = ctx->pr;
    kou_request_t     *r = ctx->r;
    kou_str_t          target_raw = host->target(r);
    kou_str_t          target = kou_proxy_origin_target(target_raw);
    kou_str_t          addr = host->remote_addr(r);
    kou_str_t          tokens[KOU_PROXY_CONN_TOKENS];
    kou_header_t      *hs, hs_local[32];
    unsigned char     *cls, cls_local[32];
    kou_str_t          client_host = { "", 0 }, host_value;
    size_t             nh = host->header_count(r), ntok = 0, size;
    size_t             nxff = 0, nvia = 0, nupg = 0;
    int64_t            cl = host->content_length(r);
    char              *p, *start;
    int                have_host = 0, ver = host->version(r);

    if (nh <= 32) {
        hs = hs_local;
        cls = cls_local;
    } else {
        hs = host->palloc(r, nh * (sizeof(kou_header_t) + 1));
        if (hs == NULL) {
            return KOU_ERROR;
        }
        cls = (unsigned char *) (hs + nh);
    }

    /* 256: the fixed text around the values, about 180 bytes at most */
    size = ctx->method.n + target.n + peer->name_len + addr.n + 256;
    for (size_t i = 0; i < nh; i++) {
        kou_header_t *h = &hs[i];
        unsigned      c = KOU_RF_DROP;

        (void) host->header_at(r, i, h);
        size += h->name.n + h->value.n + 4;
        switch (kou_proxy_fname(h->name)) {
        case KOU_FN_OTHER:
        case KOU_FN_SERVER:
        case KOU_FN_DATE:
            c = KOU_RF_KEEP;
            break;
        case KOU_FN_HOST:
            if (!have_host) {
                client_host = h->value;
                have_host = 1;
            }
            break;
        case KOU_FN_XFF:
            c = KOU_RF_XFF;
            nxff++;
            break;
        case KOU_FN_VIA:
            c = KOU_RF_VIA;
            nvia++;
            break;
        case KOU_FN_UPGRADE:
            c = KOU_RF_UPG;
            nupg++;
            break;
        case KOU_FN_CONNECTION: {
            size_t    at = 0;
            kou_str_t el;

            while (ntok < KOU_PROXY_CONN_TOKENS
                   && kou_proxy_list_next(h->value, &at, &el))
            {
                tokens[ntok++] = el;
            }
            break;
        }
        case KOU_FN_CONTENT_LENGTH:
            ctx->req_cl = 1;   /* "Content-Length: 0" is sent on too */
            break;
        default:
            break;   /* hop-by-hop, Expect, X-Forwarded-Proto/Host */
        }
        cls[i] = (unsigned char) c;
    }
    if ((target_raw.n > 0 && target_raw.p[0] != '/') || !have_host) {
        /* absolute form: the target's authority is the host (RFC 9112) */
        client_host = host->host(r);
    }
    host_value = pr->preserve_host && client_host.n > 0
                     ? client_host
                     : (kou_str_t){ peer->name, peer->name_len };
    size += host_value.n + client_host.n;
    for (size_t i = 0; i < pr->nset; i++) {
        size += pr->set_headers[i].name.n + pr->set_headers[i].value.n + 4;
    }

    start = p = host->palloc(r, size);
    if (p == NULL) {
        return KOU_ERROR;
    }
    p = kou_proxy_put(p, ctx->method.p, ctx->method.n);
    *p++ = ' ';
    if (target.p[0] == '?') {
        *p++ = '/';
    }
    p = kou_proxy_put(p, target.p, target.n);
    p = kou_proxy_put_lit(p, " HTTP/1.1\r\nHost: ");
    p = kou_proxy_put(p, host_value.p, host_value.n);
    p = kou_proxy_put_lit(p, "\r\n");

    for (size_t i = 0; i < nh; i++) {
        kou_str_t n = hs[i].name;

        if (cls[i] != KOU_RF_KEEP
            || (ntok > 0 && kou_proxy_in(n, tokens, ntok))
            || (pr->nremove > 0
                && kou_proxy_in(n, pr->remove_headers, pr->nremove)))
        {
            continue;
        }
        if (pr->nset > 0) {
            size_t k;

            for (k = 0; k < pr->nset; k++) {
                if (kou_proxy_eq_str(n, pr->set_headers[k].name)) {
                    break;
                }
            }
            if (k < pr->nset) {
                continue;
            }
        }
        p = kou_proxy_put_field(p, n, hs[i].value);
    }

    /* X-Forwarded-For and Via: the chain so far, then this hop */
    p = kou_proxy_put_lit(p, "X-Forwarded-For: ");
    for (size_t i = 0; nxff > 0 && i < nh; i++) {
        if (cls[i] == KOU_RF_XFF && hs[i].value.n > 0) {
            p = kou_proxy_put(p, hs[i].value.p, hs[i].value.n);
            p = kou_proxy_put_lit(p, ", ");
        }
    }
    p = kou_proxy_put(p, addr.p, addr.n);
    if (host->is_tls(r)) {
        p = kou_proxy_put_lit(p, "\r\nX-Forwarded-Proto: https\r\n");
    } else {
        p = kou_proxy_put_lit(p, "\r\nX-Forwarded-Proto: http\r\n");
    }
    if (client_host.n > 0) {
        p = kou_proxy_put_field(p, KOU_STR("X-Forwarded-Host"), client_host);
    }
    p = kou_proxy_put_lit(p, "Via: ");
    for (size_t i = 0; nvia > 0 && i < nh; i++) {
        if (cls[i] == KOU_RF_VIA && hs[i].value.n > 0) {
            p = kou_proxy_put(p, hs[i].value.p, hs[i].value.n);
            p = kou_proxy_put_lit(p, ", ");
        }
    }
    p = ver == 10 ? kou_proxy_put_lit(p, "1.0 kourier\r\n")
                  : kou_proxy_put_lit(p, "1.1 kourier\r\n");

    for (size_t i = 0; i < pr->nset; i++) {
        if (pr->set_headers[i].value.n > 0) {
            p = kou_proxy_put_field(p, pr->set_headers[i].name,
                                    pr->set_headers[i].value);
        }
    }
    if (ctx->req_chunked) {
        p = kou_proxy_put_lit(p, "Transfer-Encoding: chunked\r\n");
    } else if (cl > 0 || ctx->req_cl) {
        p = kou_proxy_put_lit(p, "Content-Length: ");
        p = kou_proxy_put_u64(p, (uint64_t) (cl > 0 ? cl : 0));
        p = kou_proxy_put_lit(p, "\r\n");
    }
    if (ctx->upgrade_req) {
        /* the one hop-by-hop request this proxy passes on, by choice */
        p = kou_proxy_put_lit(p, "Connection: upgrade\r\nUpgrade: ");
        for (size_t i = 0, k = 0; nupg > 0 && i < nh; i++) {
            if (cls[i] == KOU_RF_UPG) {
                if (k++ > 0) {
                    p = kou_proxy_put_lit(p, ", ");
                }
                p = kou_proxy_put(p, hs[i].value.p, hs[i].value.n);
            }
        }
        p = kou_proxy_put_lit(p, "\r\n");
    } else if (pr->keepalive == 0) {
        p = kou_proxy_put_lit(p, "Connection: close\r\n");
    }
    p = kou_proxy_put_lit(p, "\r\n");

    ctx->head = start;
    ctx->head_len = (size_t) (p - start);
    ctx->head_off = 0;
    return KOU_OK;
}

/* ---- attempts: the upstream_* variables and the statistics ---- */

static const uint64_t kou_proxy_bounds_ms[KOU_PS_NBOUNDS] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000
};

static kou_proxy_try_t *
kou_proxy_try_cur(kou_proxy_ctx_t *ctx)
{
    return ctx->ntries > 0 ? &ctx->tries[ctx->ntries - 1] : NULL;
}

/*
 * A new attempt on `peer`. A replay after a stale pooled connection is
 * the same attempt carried on over a fresh connection: it is not listed
 * twice, and its times count from the first try.
 */
static void
kou_proxy_try_begin(kou_proxy_ctx_t *ctx, kou_proxy_peer_t *peer)
{
    kou_proxy_try_t *t;

    if (ctx->replay && ctx->ntries > 0) {
        ctx->replay = 0;
        t = &ctx->tries[ctx->ntries - 1];
    } else {
        if (ctx->ntries == ctx->maxtries) {
            kou_proxy_try_t *nt = kou_proxy_host->palloc(
                ctx->r, 2 * ctx->maxtries * sizeof(kou_proxy_try_t));

            if (nt != NULL) {
                memcpy(nt, ctx->tries, ctx->ntries * sizeof(*nt));
                ctx->tries = nt;
                ctx->maxtries *= 2;
            } else {
                ctx->ntries--;   /* out of memory: the last one is lost */
            }
        }
        t = &ctx->tries[ctx->ntries++];
        t->start = kou_proxy_host->now_ms();
    }
    t->peer = peer;
    t->connect = t->header = t->end = -1;
    t->status = 0;
}

static void
kou_proxy_try_connected(kou_proxy_ctx_t *ctx)
{
    kou_proxy_try_t *t = kou_proxy_try_cur(ctx);

    if (t != NULL) {
        t->connect = (int64_t) (kou_proxy_host->now_ms() - t->start);
    }
}

/* The upstream's response head has come. */
static void
kou_proxy_try_header(kou_proxy_ctx_t *ctx, int status)
{
    kou_proxy_try_t *t = kou_proxy_try_cur(ctx);

    if (t == NULL) {
        return;
    }
    t->header = (int64_t) (kou_proxy_host->now_ms() - t->start);
    t->status = status;
    if (status >= 100 && status <= 599) {
        kou_proxy_stat(t->peer, KOU_PS_REQ + (unsigned) (status / 100 - 1),
                       1);
    }
}

/*
 * The attempt is over: `reason` is a KOU_PR_* failure (or KOU_PR_NONE),
 * `status` what it gives the client when the upstream sent none. A
 * response head received is timed into the histogram, once.
 */
static void
kou_proxy_try_end(kou_proxy_ctx_t *ctx, int reason, int status)
{
    kou_proxy_try_t *t = kou_proxy_try_cur(ctx);
    uint64_t         ms;
    unsigned         b;

    if (t == NULL || t->end >= 0) {
        return;
    }
    ms = kou_proxy_host->now_ms() - t->start;
    t->end = (int64_t) ms;
    if (t->status == 0) {
        t->status = status;
    }
    if (reason != KOU_PR_NONE) {
        kou_proxy_stat(t->peer, KOU_PS_FAIL + (unsigned) reason, 1);
    }
    if (t->header >= 0) {
        for (b = 0; b < KOU_PS_NBOUNDS && ms > kou_proxy_bounds_ms[b]; b++) {
            /* the first bucket that holds it */
        }
        kou_proxy_stat(t->peer, KOU_PS_BUCKET + b, 1);
        kou_proxy_stat(t->peer, KOU_PS_SUM, (int64_t) ms);
    }
}

/* Milliseconds as seconds with three decimals: "0.012". */
static char *
kou_proxy_put_ms(char *p, int64_t ms)
{
    if (ms < 0) {
        *p++ = '-';
        return p;
    }
    p = kou_proxy_put_u64(p, (uint64_t) ms / 1000);
    *p++ = '.';
    *p++ = (char) ('0' + ms / 100 % 10);
    *p++ = (char) ('0' + ms / 10 % 10);
    *p++ = (char) ('0' + ms % 10);
    return p;
}

/*
 * Publish the attempts as request variables for log hooks, one value per
 * attempt joined by ", " as nginx does: upstream_addr, upstream_status,
 * upstream_connect_time, upstream_header_time, upstream_response_time
 * ("-" where an attempt has no such value). Called before the request
 * completes (log hooks run at completion); an attempt still going on (a
 * tunnel) shows its time so far.
 */
static void
kou_proxy_vars(kou_proxy_ctx_t *ctx)
{
    static const kou_str_t names[5] = {
        KOU_STR_INIT("upstream_addr"), KOU_STR_INIT("upstream_status"),
        KOU_STR_INIT("upstream_connect_time"),
        KOU_STR_INIT("upstream_header_time"),
        KOU_STR_INIT("upstream_response_time")
    };
    const kou_host_t *host = kou_proxy_host;
    char              buf[1024], *p;
    uint64_t          now = host->now_ms();

    if (ctx->ntries == 0 || !KOU_HOST_HAS(host, var_set)) {
        return;
    }
    if (ctx->ntries == 1) {
        /* the usual case, without the loops */
        const kou_proxy_try_t *t = &ctx->tries[0];

        (void) host->var_set(ctx->r, names[0],
                             (kou_str_t){ t->peer->text, t->peer->text_len });
        p = buf;
        if (t->status > 0) {
            p = kou_proxy_put_u64(p, (uint64_t) t->status);
        } else {
            *p++ = '-';
        }
        (void) host->var_set(ctx->r, names[1],
                             (kou_str_t){ buf, (size_t) (p - buf) });
        p = kou_proxy_put_ms(buf, t->connect);
        (void) host->var_set(ctx->r, names[2],
                             (kou_str_t){ buf, (size_t) (p - buf) });
        p = kou_proxy_put_ms(buf, t->header);
        (void) host->var_set(ctx->r, names[3],
                             (kou_str_t){ buf, (size_t) (p - buf) });
        p = kou_proxy_put_ms(buf, t->end >= 0 ? t->end
                                              : (int64_t) (now - t->start));
        (void) host->var_set(ctx->r, names[4],
                             (kou_str_t){ buf, (size_t) (p - buf) });
        return;
    }
    for (unsigned k = 0; k < 5; k++) {
        p = buf;
        for (unsigned i = 0; i < ctx->ntries; i++) {
            const kou_proxy_try_t *t = &ctx->tries[i];

            if ((size_t) (buf + sizeof(buf) - p) < KOU_PROXY_ADDR_MAX + 4) {
                break;   /* a very long list is cut, never overflows */
            }
            if (i > 0) {
                p = kou_proxy_put_lit(p, ", ");
            }
            switch (k) {
            case 0:
                p = kou_proxy_put(p, t->peer->text, t->peer->text_len);
                break;
            case 1:
                if (t->status > 0) {
                    p = kou_proxy_put_u64(p, (uint64_t) t->status);
                } else {
                    *p++ = '-';
                }
                break;
            case 2:
                p = kou_proxy_put_ms(p, t->connect);
                break;
            case 3:
                p = kou_proxy_put_ms(p, t->header);
                break;
            default:
                p = kou_proxy_put_ms(p, t->end >= 0
                                            ? t->end
                                            : (int64_t) (now - t->start));
                break;
            }
        }
        (void) host->var_set(ctx->r, names[k],
                             (kou_str_t){ buf, (size_t) (p - buf) });
    }
}

/* ---- ending a request ---- */

/* Let go of the current connection: to the pool, or closed. */
static void
kou_proxy_detach(kou_proxy_ctx_t *ctx, int reuse)
{
    kou_proxy_uconn_t *uc = ctx->uc;

    if (uc == NULL) {
        return;
    }
    ctx->uc = NULL;
    uc->ctx = NULL;
    if (ctx->peer != NULL && ctx->peer->active > 0) {
        ctx->peer->active--;
    }
    kou_proxy_stat(uc->peer, KOU_PS_ACTIVE, -1);
    if (reuse && !kou_proxy_exiting) {
        kou_proxy_pool_put(uc);
    } else {
        kou_proxy_uconn_close(uc);
    }
}

static void
kou_proxy_error(kou_proxy_ctx_t *ctx, int status)
{
    const kou_host_t *host = kou_proxy_host;
    kou_str_t         body = status == 504 ? KOU_STR("504 Gateway Timeout\n")
                                           : KOU_STR("502 Bad Gateway\n");

    ctx->finished = 1;
    kou_proxy_try_end(ctx, KOU_PR_NONE, status);
    kou_proxy_vars(ctx);
    if (host->respond(ctx->r, status, kou_proxy_text, 1, body) != KOU_OK) {
        (void) host->abort(ctx->r);
    }
}

/* The kourier_upstream_failures_total reason of a failure. */
static int
kou_proxy_reason(int kind)
{
    switch (kind) {
    case KOU_PF_CONNECT:
        return KOU_PR_CONNECT;
    case KOU_PF_CONNECT_TIMEOUT:
    case KOU_PF_SEND_TIMEOUT:
    case KOU_PF_READ_TIMEOUT:
        return KOU_PR_TIMEOUT;
    case KOU_PF_INVALID:
        return KOU_PR_INVALID;
    case KOU_PF_STALE:
        return KOU_PR_NONE;   /* no fault of the upstream's */
    default:
        return KOU_PR_CLOSED;
    }
}

static int
kou_proxy_can_retry(kou_proxy_ctx_t *ctx, int kind)
{
    kou_proxy_route_t *pr = ctx->pr;
    uint64_t           now = kou_proxy_host->now_ms();

    if (ctx->head_done || ctx->body_in > 0) {
        return 0;   /* something went down the line: not replayable */
    }
    if (kind == KOU_PF_STALE) {
        return ctx->stale < KOU_PROXY_STALE_MAX
               && (ctx->idempotent || !ctx->wrote);
    }
    if ((int64_t) ctx->attempts > pr->retries) {
        return 0;
    }
    if (pr->retry_timeout > 0 && now - ctx->start_ms >= pr->retry_timeout) {
        return 0;
    }
    switch (kind) {
    case KOU_PF_CONNECT:
    case KOU_PF_CONNECT_TIMEOUT:
        return 1;   /* the request never reached the upstream */
    case KOU_PF_SEND:
    case KOU_PF_READ:
        return ctx->idempotent || !ctx->wrote;
    default:
        return 0;   /* a slow or broken upstream gets no second request */
    }
}

/*
 * The current attempt failed. The connection is closed, the peer's health
 * pays unless the failure was a pooled connection closed while idle, and
 * the request goes to the next peer when that is safe, else it gets 502
 * (504 for a send or read timeout), or is cut short if the response
 * already started.
 */
static void
kou_proxy_fail(kou_proxy_ctx_t *ctx, int kind, const char *why, int err)
{
    const kou_host_t *host = kou_proxy_host;
    kou_proxy_peer_t *peer = ctx->peer;
    /*
     * 504 once the upstream has the request and is too slow with it; a
     * connect that does not complete is a failure to reach it: 502.
     */
    int               timeout = kind == KOU_PF_SEND_TIMEOUT
                                || kind == KOU_PF_READ_TIMEOUT;
    int               retry;

    kou_proxy_detach(ctx, 0);
    retry = kou_proxy_can_retry(ctx, kind);
    if (kind == KOU_PF_STALE && retry) {
        ctx->replay = 1;   /* the attempt goes on over a fresh connection */
    } else {
        kou_proxy_try_end(ctx, kou_proxy_reason(kind), timeout ? 504 : 502);
    }
    if (kind != KOU_PF_STALE) {
        host->log(KOU_LOG_ERR, "proxy: upstream %s (%s): %s%s%s", peer->name,
                  peer->text, why, err ? ": " : "", err ? strerror(err) : "");
        kou_proxy_peer_failed(peer);
    } else if (!retry) {
        /* an idle close is no fault of the upstream's: no health penalty */
        host->log(KOU_LOG_ERR, "proxy: upstream %s (%s): closed a kept-alive "
                  "connection as it was reused, and the request cannot be "
                  "sent again", peer->name, peer->text);
    }
    if (ctx->head_done) {
        ctx->finished = 1;
        kou_proxy_vars(ctx);
        (void) host->abort(ctx->r);
        return;
    }
    if (retry) {
        if (kind == KOU_PF_STALE) {
            /* the same peer may serve it on a fresh connection */
            ctx->stale++;
            ctx->tried[peer->index] = 0;
            ctx->attempts--;
        }
        kou_proxy_next(ctx);
        return;
    }
    kou_proxy_error(ctx, timeout ? 504 : 502);
}

/* ---- sending the request ---- */

static int
kou_proxy_obuf_add(kou_proxy_ctx_t *ctx, const char *p, size_t n)
{
    if (ctx->olen + n > ctx->ocap) {
        size_t cap = ctx->ocap ? ctx->ocap : 4096;
        char  *nb;

        if (ctx->opos > 0) {
            memmove(ctx->obuf, ctx->obuf + ctx->opos, ctx->olen - ctx->opos);
            ctx->olen -= ctx->opos;
            ctx->opos = 0;
        }
        while (cap < ctx->olen + n) {
            cap *= 2;
        }
        if (cap != ctx->ocap) {
            nb = realloc(ctx->obuf, cap);
            if (nb == NULL) {
                return KOU_ERROR;
            }
            ctx->obuf = nb;
            ctx->ocap = cap;
        }
    }
    memcpy(ctx->obuf + ctx->olen, p, n);
    ctx->olen += n;
    return KOU_OK;
}

static int
kou_proxy_pending(const kou_proxy_ctx_t *ctx)
{
    return ctx->head_off < ctx->head_len || ctx->opos < ctx->olen;
}

/* Everything of the request has been written. */
static int
kou_proxy_req_sent(const kou_proxy_ctx_t *ctx)
{
    return ctx->body_last && !kou_proxy_pending(ctx);
}

/*
 * Write the head's rest and the queued body. KOU_OK when all is written,
 * KOU_AGAIN when the socket is full, KOU_ERROR (errno) otherwise.
 */
static int
kou_proxy_flush(kou_proxy_ctx_t *ctx)
{
    while (kou_proxy_pending(ctx)) {
        struct iovec  iov[2];
        struct msghdr mh;
        int           n = 0;
        ssize_t       w;
        size_t        hw;

        if (ctx->head_off < ctx->head_len) {
            iov[n].iov_base = ctx->head + ctx->head_off;
            iov[n++].iov_len = ctx->head_len - ctx->head_off;
        }
        if (ctx->opos < ctx->olen) {
            iov[n].iov_base = ctx->obuf + ctx->opos;
            iov[n++].iov_len = ctx->olen - ctx->opos;
        }
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t) n;
        w = sendmsg(ctx->uc->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ctx->writable = 0;
                return KOU_AGAIN;
            }
            return KOU_ERROR;
        }
        ctx->wrote = 1;
        ctx->last_write = kou_proxy_host->now_ms();
        hw = kou_proxy_min((size_t) w, ctx->head_len - ctx->head_off);
        ctx->head_off += hw;
        ctx->opos += (size_t) w - hw;
    }
    ctx->olen = ctx->opos = 0;
    return KOU_OK;
}

/*
 * Push the request as far as the socket takes it, and let the client's
 * body flow only while nothing waits here.
 */
static void
kou_proxy_send(kou_proxy_ctx_t *ctx)
{
    const kou_host_t *host = kou_proxy_host;
    int               rc = KOU_OK;

    if (!ctx->connected) {
        return;
    }
    if (ctx->writable && kou_proxy_pending(ctx)) {
        rc = kou_proxy_flush(ctx);
        if (rc == KOU_ERROR) {
            int err = errno;

            if (ctx->reused && ctx->in_total == 0
                && (err == EPIPE || err == ECONNRESET))
            {
                kou_proxy_fail(ctx, KOU_PF_STALE, "", 0);
            } else {
                kou_proxy_fail(ctx, KOU_PF_SEND, "cannot send the request",
                               err);
            }
            return;
        }
    }
    if (rc == KOU_OK && !ctx->body_last && ctx->paused
        && (!ctx->up_done || ctx->tunnel))
    {
        ctx->paused = 0;
        (void) host->read_body_pause(ctx->r, 0);
    }
    if (rc == KOU_OK && ctx->tunnel && kou_proxy_req_sent(ctx)
        && !ctx->up_shut)
    {
        /*
         * The client half-closed the tunnel and all it sent is up: pass
         * its FIN on, and go on relaying what the upstream still sends.
         */
        ctx->up_shut = 1;
        if (shutdown(ctx->uc->fd, SHUT_WR) != 0 && errno != ENOTCONN) {
            kou_proxy_fail(ctx, KOU_PF_SEND, "cannot shut down the tunnel",
                           errno);
            return;
        }
        if (ctx->up_done) {
            kou_proxy_tunnel_done(ctx);
            return;
        }
    }
    kou_proxy_timer_set(ctx);
}

/* Request body from the client: frame it, queue it, send what goes. */
static void
kou_proxy_body(kou_request_t *r, kou_str_t data, int last, void *arg)
{
    kou_proxy_ctx_t *ctx = arg;
    int              rc = KOU_OK;

    if (ctx->finished || ctx->dead || ctx->body_last) {
        return;
    }
    if (data.n > 0) {
        if (ctx->req_chunked) {
            char line[24];
            int  n = snprintf(line, sizeof(line), "%zx\r\n", data.n);

            rc = kou_proxy_obuf_add(ctx, line, (size_t) n);
            if (rc == KOU_OK) {
                rc = kou_proxy_obuf_add(ctx, data.p, data.n);
            }
            if (rc == KOU_OK) {
                rc = kou_proxy_obuf_add(ctx, "\r\n", 2);
            }
        } else {
            rc = kou_proxy_obuf_add(ctx, data.p, data.n);
        }
        ctx->body_in += data.n;
    }
    if (last) {
        ctx->body_last = 1;
        if (ctx->req_chunked && rc == KOU_OK) {
            rc = kou_proxy_obuf_add(ctx, "0\r\n\r\n", 5);
        }
    }
    if (rc != KOU_OK) {
        kou_proxy_host->log(KOU_LOG_ERR, "proxy: out of memory");
        kou_proxy_detach(ctx, 0);
        kou_proxy_error(ctx, 502);
        return;
    }
    if (kou_proxy_pending(ctx) && !ctx->paused) {
        /* hold the client until this is written */
        ctx->paused = 1;
        (void) kou_proxy_host->read_body_pause(r, 1);
    }
    if (ctx->uc != NULL) {
        kou_proxy_send(ctx);
    }
}

/* ---- connecting ---- */

static int
kou_proxy_connect(kou_proxy_ctx_t *ctx, kou_proxy_peer_t *peer, int *err)
{
    const kou_host_t  *host = kou_proxy_host;
    kou_proxy_uconn_t *uc;
    int                fd, one = 1;

    fd = socket(peer->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK
                                          | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return KOU_ERROR;
    }
    if (peer->addr.ss_family != AF_UNIX) {
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (connect(fd, (struct sockaddr *) &peer->addr, peer->addrlen) < 0
        && errno != EINPROGRESS)
    {
        *err = errno;
        close(fd);
        return KOU_ERROR;
    }
    uc = calloc(1, sizeof(*uc));
    if (uc == NULL) {
        *err = ENOMEM;
        close(fd);
        return KOU_ERROR;
    }
    uc->fd = fd;
    uc->peer = peer;
    uc->io = host->io_add(fd, KOU_IO_READ | KOU_IO_WRITE, kou_proxy_io, uc);
    if (uc->io == NULL) {
        *err = errno ? errno : ENOMEM;
        close(fd);
        free(uc);
        return KOU_ERROR;
    }
    uc->ctx = ctx;
    ctx->uc = uc;
    ctx->connected = 0;
    ctx->writable = 0;
    ctx->connect_start = host->now_ms();
    return KOU_OK;
}

/* Reset what an attempt owns, for a new one. */
static void
kou_proxy_attempt_reset(kou_proxy_ctx_t *ctx)
{
    ctx->in_start = ctx->in_end = ctx->scanned = 0;
    ctx->in_total = 0;
    ctx->wrote = 0;
    ctx->reused = 0;
    ctx->connected = 0;
    ctx->writable = 0;
    ctx->readable = 0;
    ctx->rdhup = 0;
    ctx->up_done = 0;
    ctx->dirty = 0;
    /* a body not yet taken from the client is framed again from scratch */
    ctx->olen = ctx->opos = 0;
    if (ctx->body_last && ctx->req_chunked) {
        (void) kou_proxy_obuf_add(ctx, "0\r\n\r\n", 5);
    }
}

/* Start the next attempt: pick a peer, reuse or connect, send. */
static void
kou_proxy_next(kou_proxy_ctx_t *ctx)
{
    const kou_host_t *host = kou_proxy_host;

    for (;;) {
        kou_proxy_peer_t  *peer = kou_proxy_pick(ctx);
        kou_proxy_uconn_t *uc;
        int                err = 0;

        if (peer == NULL) {
            if (ctx->attempts == 0) {
                host->log(KOU_LOG_ERR, "proxy: route %.*s: every upstream "
                          "is down", (int) host->route(ctx->r).n,
                          host->route(ctx->r).p);
            }
            kou_proxy_error(ctx, 502);
            return;
        }
        ctx->tried[peer->index] = 1;
        ctx->attempts++;
        ctx->peer = peer;
        kou_proxy_try_begin(ctx, peer);
        kou_proxy_attempt_reset(ctx);
        if (kou_proxy_build_head(ctx, peer) != KOU_OK) {
            host->log(KOU_LOG_ERR, "proxy: out of memory");
            kou_proxy_error(ctx, 502);
            return;
        }
        peer->active++;

        uc = kou_proxy_pool_get(peer);
        if (uc != NULL) {
            uc->ctx = ctx;
            ctx->uc = uc;
            ctx->reused = 1;
            ctx->connected = 1;
            ctx->writable = 1;
            uc->requests++;
            kou_proxy_stat(peer, KOU_PS_ACTIVE, 1);
            kou_proxy_try_connected(ctx);
            kou_proxy_send(ctx);
            return;
        }
        if (kou_proxy_connect(ctx, peer, &err) == KOU_OK) {
            ctx->uc->requests++;
            kou_proxy_stat(peer, KOU_PS_ACTIVE, 1);
            kou_proxy_timer_set(ctx);
            return;
        }
        peer->active--;
        kou_proxy_try_end(ctx, err == ENOMEM || err == EMFILE
                                       || err == ENFILE
                                   ? KOU_PR_NONE : KOU_PR_CONNECT, 502);
        host->log(KOU_LOG_ERR, "proxy: upstream %s (%s): cannot connect: %s",
                  peer->name, peer->text, strerror(err));
        if (err != ENOMEM && err != EMFILE && err != ENFILE) {
            kou_proxy_peer_failed(peer);
        }
        if (!kou_proxy_can_retry(ctx, KOU_PF_CONNECT)) {
            kou_proxy_error(ctx, 502);
            return;
        }
    }
}

/* ---- timers ---- */

/* A request's deadlines have come, or may have: see which. */
static void
kou_proxy_timer_fire(kou_proxy_ctx_t *ctx)
{
    kou_proxy_route_t *pr = ctx->pr;
    uint64_t           now = kou_proxy_host->now_ms();

    if (ctx->finished) {
        return;
    }
    if (!ctx->connected) {
        if (now - ctx->connect_start >= pr->connect_timeout) {
            kou_proxy_fail(ctx, KOU_PF_CONNECT_TIMEOUT,
                           "connect timed out", 0);
            return;
        }
    } else {
        if (kou_proxy_pending(ctx) && !ctx->writable
            && now - ctx->last_write >= pr->send_timeout)
        {
            kou_proxy_fail(ctx, KOU_PF_SEND_TIMEOUT, "send timed out", 0);
            return;
        }
        if (!ctx->up_done && !ctx->waiting && !ctx->tunnel
            && (kou_proxy_req_sent(ctx) || ctx->head_done)
            && now - ctx->last_read >= pr->read_timeout)
        {
            kou_proxy_fail(ctx, KOU_PF_READ_TIMEOUT, "read timed out", 0);
            return;
        }
    }
    kou_proxy_timer_set(ctx);
}

/* The connection's timer: a request's deadlines, or the idle timeout. */
static void
kou_proxy_uc_timer(void *arg)
{
    kou_proxy_uconn_t *uc = arg;
    kou_proxy_route_t *pr = uc->peer->pr;
    uint64_t           now = kou_proxy_host->now_ms();

    uc->timer = NULL;   /* freed by the server once fired */
    if (uc->ctx != NULL) {
        kou_proxy_timer_fire(uc->ctx);
        return;
    }
    if (now - uc->idle_since >= pr->keepalive_timeout) {
        kou_proxy_pool_unlink(uc);
        kou_proxy_uconn_close(uc);
        return;
    }
    if (kou_proxy_uc_arm(uc, uc->idle_since + pr->keepalive_timeout)
        != KOU_OK)
    {
        kou_proxy_pool_unlink(uc);
        kou_proxy_uconn_close(uc);
    }
}

/*
 * Keep the connection's timer due by the nearest of: the connect deadline,
 * the send deadline (only while the socket refuses the request), the read
 * deadline (only once the request is sent and the client is not what is
 * holding things up; never in a tunnel, whose idle timeout the server
 * keeps for both directions). Progress does not re-arm it: when it fires
 * early it re-arms for what is left. It is never armed further than the
 * route's shortest timeout ahead, so that no later deadline (the idle timeout
 * once the connection is pooled, the next request's) is ever nearer than
 * the armed one: a busy connection costs about one timer call per
 * shortest timeout, not one per request.
 */
static void
kou_proxy_timer_set(kou_proxy_ctx_t *ctx)
{
    const kou_host_t  *host = kou_proxy_host;
    kou_proxy_route_t *pr = ctx->pr;
    uint64_t           now = host->now_ms(), due = UINT64_MAX;

    if (ctx->uc == NULL || ctx->finished) {
        return;
    }
    if (!ctx->connected) {
        due = ctx->connect_start + pr->connect_timeout;
    } else {
        if (kou_proxy_pending(ctx) && !ctx->writable) {
            due = kou_proxy_min(due, ctx->last_write + pr->send_timeout);
        }
        if (!ctx->up_done && !ctx->waiting && !ctx->tunnel
            && (kou_proxy_req_sent(ctx) || ctx->head_done))
        {
            if (ctx->last_read < ctx->last_write && !ctx->head_done
                && ctx->in_total == 0)
            {
                /* the read timeout counts from the end of the request */
                ctx->last_read = ctx->last_write;
            }
            due = kou_proxy_min(due, ctx->last_read + pr->read_timeout);
        }
    }
    if (due == UINT64_MAX) {
        return;   /* a pending timer finds nothing due and stops */
    }
    due = kou_proxy_min(due, now + pr->tick);
    if (kou_proxy_uc_arm(ctx->uc, due) != KOU_OK) {
        host->log(KOU_LOG_ERR, "proxy: out of memory");
        kou_proxy_detach(ctx, 0);
        kou_proxy_error(ctx, 502);
    }
}

/* ---- the response ---- */

/* The response is all read: the connection goes back, the client's ends. */
static void
kou_proxy_complete(kou_proxy_ctx_t *ctx)
{
    kou_proxy_route_t *pr = ctx->pr;
    kou_proxy_uconn_t *uc = ctx->uc;
    const kou_response_head_t *rh = &ctx->rh;
    int                keep;

    /* a FIN already reported with the response would not be reported
     * again while the connection sits in the pool */
    keep = pr->keepalive > 0 && !ctx->dirty && !ctx->rdhup
           && kou_proxy_req_sent(ctx)
           && rh->body != KOU_BODY_CLOSE && !(rh->flags & KOU_RESP_CLOSE)
           && (rh->version == 11 || (rh->flags & KOU_RESP_KEEP_ALIVE))
           && uc != NULL && (int64_t) uc->requests < pr->keepalive_requests;
    ctx->finished = 1;
    kou_proxy_try_end(ctx, KOU_PR_NONE, 0);
    kou_proxy_vars(ctx);
    kou_proxy_detach(ctx, keep);
    if (kou_proxy_host->finish(ctx->r) != KOU_OK) {
        (void) kou_proxy_host->abort(ctx->r);
    }
}

/*
 * The response fields for the client, into out (room for nheaders + 1):
 * everything end-to-end, without the hop-by-hop fields, the framing (the
 * server frames the message itself), and Server and Date (the server
 * writes its own), and with this hop added to Via. A 101 that opens a
 * tunnel keeps its Upgrade fields. One pass classifies; the names that
 * Connection fields list (rare) are taken out afterwards.
 */
static int
kou_proxy_resp_fields(kou_proxy_ctx_t *ctx, int tunnel, kou_header_t *out,
                      size_t *nout)
{
    const kou_response_head_t *rh = &ctx->rh;
    const kou_header_t        *f = ctx->fields;
    kou_str_t                  tokens[KOU_PROXY_CONN_TOKENS];
    size_t                     ntok = 0, n = 0, vlen = 0;
    char                      *via, *v;

    for (size_t i = 0; i < rh->nheaders; i++) {
        switch (kou_proxy_fname(f[i].name)) {
        case KOU_FN_OTHER:
        case KOU_FN_HOST:
        case KOU_FN_EXPECT:
        case KOU_FN_XFF:
        case KOU_FN_XFP:
        case KOU_FN_XFH:
            out[n++] = f[i];
            break;
        case KOU_FN_VIA:
            vlen += f[i].value.n + 2;
            break;
        case KOU_FN_UPGRADE:
            if (tunnel) {
                out[n++] = f[i];
            }
            break;
        case KOU_FN_CONNECTION: {
            size_t    at = 0;
            kou_str_t el;

            while (ntok < KOU_PROXY_CONN_TOKENS
                   && kou_proxy_list_next(f[i].value, &at, &el))
            {
                tokens[ntok++] = el;
            }
            break;
        }
        default:
            break;   /* hop-by-hop, Content-Length, Server, Date */
        }
    }
    if (ntok > 0) {
        size_t k = 0;

        for (size_t i = 0; i < n; i++) {
            /* a tunnel's Upgrade stays, though "Connection: upgrade" */
            if (!kou_proxy_in(out[i].name, tokens, ntok)
                || (tunnel && kou_proxy_eq(out[i].name, "upgrade")))
            {
                out[k++] = out[i];
            }
        }
        n = k;
    }
    out[n].name = KOU_STR("Via");
    if (vlen == 0) {
        out[n].value = rh->version == 10 ? KOU_STR("1.0 kourier")
                                         : KOU_STR("1.1 kourier");
    } else {
        via = v = kou_proxy_host->palloc(ctx->r, vlen + 16);
        if (via == NULL) {
            return KOU_ERROR;
        }
        for (size_t i = 0; i < rh->nheaders; i++) {
            if (f[i].value.n > 0 && kou_proxy_eq(f[i].name, "via")) {
                v = kou_proxy_put(v, f[i].value.p, f[i].value.n);
                v = kou_proxy_put_lit(v, ", ");
            }
        }
        v = rh->version == 10 ? kou_proxy_put_lit(v, "1.0 kourier")
                              : kou_proxy_put_lit(v, "1.1 kourier");
        out[n].value.p = via;
        out[n].value.n = (size_t) (v - via);
    }
    *nout = n + 1;
    return KOU_OK;
}

static int
kou_proxy_start(kou_proxy_ctx_t *ctx)
{
    const kou_response_head_t *rh = &ctx->rh;
    kou_header_t               hs[KOU_PROXY_MAX_FIELDS + 1];
    size_t                     n;
    int64_t                    length = -1;

    /* start() writes the head out at once: the array may be local */
    if (kou_proxy_resp_fields(ctx, 0, hs, &n) != KOU_OK) {
        return KOU_ERROR;
    }
    if (rh->body == KOU_BODY_LENGTH
        || (rh->body == KOU_BODY_NONE && rh->content_length >= 0))
    {
        length = rh->content_length;
    }
    return kou_proxy_host->start(ctx->r, rh->status, hs, n, length);
}

/* Hand body bytes to the client in pieces the server keeps in its pool. */
static int
kou_proxy_emit(kou_proxy_ctx_t *ctx, const char *p, size_t n)
{
    while (n > 0) {
        size_t k = kou_proxy_min(n, (size_t) KOU_PROXY_PIECE);

        if (kou_proxy_host->write(ctx->r, (kou_str_t){ p, k }, NULL, NULL)
            != KOU_OK)
        {
            return KOU_ERROR;
        }
        ctx->unacked += k;
        p += k;
        n -= k;
    }
    return KOU_OK;
}

static void
kou_proxy_drained(kou_request_t *r, void *arg)
{
    kou_proxy_ctx_t *ctx = arg;

    (void) r;
    ctx->waiting = 0;
    ctx->unacked = 0;
    if (ctx->finished || ctx->dead || ctx->uc == NULL) {
        return;
    }
    /* the read timeout restarts: the wait was the client's, not ours */
    ctx->last_read = kou_proxy_host->now_ms();
    kou_proxy_read(ctx);
}

/* The client is gone while we were relaying: drop the upstream side. */
static void
kou_proxy_client_gone(kou_proxy_ctx_t *ctx)
{
    ctx->finished = 1;
    kou_proxy_try_end(ctx, KOU_PR_NONE, 0);
    kou_proxy_vars(ctx);
    kou_proxy_detach(ctx, 0);
    (void) kou_proxy_host->abort(ctx->r);
}

/*
 * Both directions of a tunnel have ended (each side's FIN passed on to
 * the other): the upstream connection is done with. The server ends the
 * request once its own side is done as well.
 */
static void
kou_proxy_tunnel_done(kou_proxy_ctx_t *ctx)
{
    ctx->finished = 1;
    kou_proxy_detach(ctx, 0);
}

/*
 * The upstream half-closed the tunnel, every byte before its FIN relayed:
 * finish() passes the FIN on to the client once those bytes are out, and
 * the client's side goes on until it ends too (kou_proxy_send).
 */
static void
kou_proxy_tunnel_eof(kou_proxy_ctx_t *ctx)
{
    ctx->up_done = 1;
    kou_proxy_try_end(ctx, KOU_PR_NONE, 0);
    kou_proxy_vars(ctx);
    if (kou_proxy_host->finish(ctx->r) != KOU_OK) {
        kou_proxy_client_gone(ctx);
        return;
    }
    if (ctx->up_shut) {
        kou_proxy_tunnel_done(ctx);
    }
}

/*
 * The upstream switched protocols: so does the client connection, and
 * from here bytes are relayed as they are, both ways; each side's FIN is
 * passed on to the other (half-close), and the tunnel ends when both
 * directions have. Returns as kou_proxy_head does.
 */
static int
kou_proxy_tunnel(kou_proxy_ctx_t *ctx)
{
    const kou_host_t *host = kou_proxy_host;
    kou_header_t     *hs;
    size_t            n;
    kou_str_t         v;
    size_t            at = 0;
    int               asked = 0;

    hs = host->palloc(ctx->r, (ctx->rh.nheaders + 1) * sizeof(*hs));

    /* only an upgrade this proxy asked for, to a protocol it named */
    for (size_t i = 0; i < ctx->rh.nheaders; i++) {
        if (kou_proxy_eq(ctx->fields[i].name, "upgrade")
            && kou_proxy_list_next(ctx->fields[i].value, &at, &v))
        {
            asked = 1;
        }
    }
    if (!ctx->upgrade_req || !asked) {
        kou_proxy_fail(ctx, KOU_PF_INVALID, "101 Switching Protocols to a "
                       "request that did not ask to upgrade", 0);
        return 0;
    }
    if (hs == NULL || kou_proxy_resp_fields(ctx, 1, hs, &n) != KOU_OK
        || host->upgrade(ctx->r, hs, n, kou_proxy_body, ctx) != KOU_OK)
    {
        kou_proxy_fail(ctx, KOU_PF_INVALID, "cannot switch the client "
                       "connection", 0);
        return 0;
    }
    if (KOU_HOST_HAS(host, tunnel_timeout)) {
        /* idle both ways for read_timeout: nginx's proxy_read_timeout */
        (void) host->tunnel_timeout(ctx->r, ctx->pr->read_timeout);
    }
    ctx->peer->fails = 0;
    ctx->head_done = 1;
    ctx->tunnel = 1;
    kou_proxy_try_header(ctx, 101);
    kou_proxy_vars(ctx);
    ctx->in_start += ctx->rh.head_len;
    ctx->rh.body = KOU_BODY_CLOSE;
    /* the client's side starts over as a stream without an end */
    ctx->body_last = 0;
    ctx->req_chunked = 0;
    ctx->paused = 0;
    return 1;
}

/*
 * Parse the head when a line end has arrived. Returns 1 when the caller
 * may go on (head done, or need more), 0 when the request is settled.
 */
static int
kou_proxy_head(kou_proxy_ctx_t *ctx)
{
    const kou_host_t *host = kou_proxy_host;
    int               rc;

    for (;;) {
        size_t avail = ctx->in_end - ctx->in_start;

        if (ctx->scanned < avail
            && memchr(ctx->in + ctx->in_start + ctx->scanned, '\n',
                      avail - ctx->scanned) == NULL
            && avail < KOU_PROXY_MAX_HEAD)
        {
            ctx->scanned = avail;
            return 1;   /* no new line end: nothing to judge yet */
        }
        if (avail == 0) {
            return 1;
        }
        rc = host->parse_response(ctx->in + ctx->in_start, avail, ctx->method,
                                  &ctx->rh);
        if (rc == KOU_AGAIN) {
            ctx->scanned = avail;
            return 1;
        }
        if (rc != KOU_OK) {
            kou_proxy_fail(ctx, KOU_PF_INVALID, ctx->rh.error, 0);
            return 0;
        }
        if (ctx->rh.status == 101) {
            return kou_proxy_tunnel(ctx);
        }
        if (ctx->rh.status >= 200) {
            break;
        }
        /* interim responses are ours: the server sends its own 100 */
        ctx->in_start += ctx->rh.head_len;
        ctx->scanned = 0;
    }

    if (ctx->rh.flags & KOU_RESP_TE_OTHER) {
        kou_proxy_fail(ctx, KOU_PF_INVALID, "Transfer-Encoding other than "
                       "chunked cannot be relayed", 0);
        return 0;
    }
    ctx->peer->fails = 0;
    kou_proxy_try_header(ctx, ctx->rh.status);
    if (kou_proxy_start(ctx) != KOU_OK) {
        /* the client is gone, or out of memory */
        kou_proxy_client_gone(ctx);
        return 0;
    }
    ctx->head_done = 1;
    ctx->in_start += ctx->rh.head_len;
    switch (ctx->rh.body) {
    case KOU_BODY_LENGTH:
        ctx->remaining = (uint64_t) ctx->rh.content_length;
        ctx->up_done = ctx->remaining == 0;
        break;
    case KOU_BODY_CHUNKED:
        host->chunked_init(&ctx->ch, KOU_PROXY_MAX_TRAILER);
        break;
    case KOU_BODY_CLOSE:
        break;
    default:
        ctx->up_done = 1;
        break;
    }
    return 1;
}

/*
 * Relay the body bytes in the buffer. Returns 1 to go on, 0 when the
 * request is settled or waits for the client.
 */
static int
kou_proxy_body_out(kou_proxy_ctx_t *ctx)
{
    const kou_host_t *host = kou_proxy_host;

    while (ctx->in_start < ctx->in_end && !ctx->up_done) {
        const char *p = ctx->in + ctx->in_start;
        size_t      n = ctx->in_end - ctx->in_start;

        if (ctx->rh.body == KOU_BODY_LENGTH) {
            n = (size_t) kou_proxy_min((uint64_t) n, ctx->remaining);
            ctx->remaining -= n;
            ctx->in_start += n;
            ctx->up_done = ctx->remaining == 0;
            if (kou_proxy_emit(ctx, p, n) != KOU_OK) {
                kou_proxy_client_gone(ctx);
                return 0;
            }
        } else if (ctx->rh.body == KOU_BODY_CHUNKED) {
            size_t    used = 0;
            kou_str_t d = { NULL, 0 };
            int       rc = host->chunked_parse(&ctx->ch, p, n, &used, &d);

            if (rc > 0) {
                host->log(KOU_LOG_ERR, "proxy: upstream %s (%s): malformed "
                          "chunked body: response cut short",
                          ctx->peer->name, ctx->peer->text);
                kou_proxy_peer_failed(ctx->peer);
                kou_proxy_try_end(ctx, KOU_PR_INVALID, 0);
                kou_proxy_client_gone(ctx);
                return 0;
            }
            ctx->in_start += used;
            if (d.n > 0 && kou_proxy_emit(ctx, d.p, d.n) != KOU_OK) {
                kou_proxy_client_gone(ctx);
                return 0;
            }
            if (rc == KOU_DONE) {
                ctx->up_done = 1;
            } else if (rc == KOU_AGAIN) {
                break;
            }
        } else {
            ctx->in_start += n;
            if (kou_proxy_emit(ctx, p, n) != KOU_OK) {
                kou_proxy_client_gone(ctx);
                return 0;
            }
        }
    }
    if (ctx->up_done && ctx->in_start < ctx->in_end) {
        ctx->dirty = 1;   /* more than the message: never reuse */
    }
    if (ctx->in_start == ctx->in_end) {
        ctx->in_start = ctx->in_end = 0;
    }
    if (ctx->up_done) {
        kou_proxy_complete(ctx);
        return 0;
    }
    if (ctx->unacked > 0
        && (!ctx->pr->buffering || ctx->unacked >= ctx->pr->buffer_size))
    {
        /* back-pressure: read on once the client has taken this */
        if (host->write(ctx->r, (kou_str_t){ "", 0 }, kou_proxy_drained, ctx)
            != KOU_OK)
        {
            kou_proxy_client_gone(ctx);
            return 0;
        }
        ctx->waiting = 1;
        return 0;
    }
    return 1;
}

/* The upstream closed its side (or failed) at this point of the exchange. */
static void
kou_proxy_eof(kou_proxy_ctx_t *ctx, int err)
{
    const kou_host_t *host = kou_proxy_host;

    if (!ctx->head_done) {
        if (ctx->reused && ctx->in_total == 0
            && (err == 0 || err == ECONNRESET || err == EPIPE))
        {
            kou_proxy_fail(ctx, KOU_PF_STALE, "", 0);
            return;
        }
        kou_proxy_fail(ctx, KOU_PF_READ, ctx->in_total == 0
                       ? "closed the connection without a response"
                       : "closed the connection in the response head", err);
        return;
    }
    if (ctx->tunnel && err == 0) {
        kou_proxy_tunnel_eof(ctx);
        return;
    }
    if (ctx->rh.body == KOU_BODY_CLOSE && err == 0) {
        ctx->up_done = 1;
        kou_proxy_complete(ctx);
        return;
    }
    host->log(KOU_LOG_ERR, "proxy: upstream %s (%s): connection %s in the "
              "response body: response cut short", ctx->peer->name,
              ctx->peer->text, err ? "failed" : "closed");
    kou_proxy_peer_failed(ctx->peer);
    kou_proxy_try_end(ctx, KOU_PR_CLOSED, 0);
    kou_proxy_client_gone(ctx);
}

/* Read and relay until the socket is empty or the client holds us back. */
static void
kou_proxy_read(kou_proxy_ctx_t *ctx)
{
    kou_proxy_uconn_t *uc = ctx->uc;

    for (;;) {
        ssize_t n;
        size_t  want;

        if (ctx->finished || ctx->uc != uc || ctx->waiting
            || (ctx->tunnel && ctx->up_done))
        {
            return;
        }
        if (ctx->in_start < ctx->in_end || (ctx->head_done && ctx->up_done)) {
            if (!ctx->head_done && !kou_proxy_head(ctx)) {
                return;
            }
            if (ctx->head_done && !kou_proxy_body_out(ctx)) {
                return;
            }
            if (!ctx->head_done && ctx->in_end - ctx->in_start
                                       >= KOU_PROXY_MAX_HEAD)
            {
                kou_proxy_fail(ctx, KOU_PF_INVALID, "response head too large",
                               0);
                return;
            }
        }
        if (!ctx->readable) {
            kou_proxy_timer_set(ctx);
            return;
        }
        if (ctx->in == NULL) {
            ctx->in = kou_proxy_buf_get();
            if (ctx->in == NULL) {
                kou_proxy_host->log(KOU_LOG_ERR, "proxy: out of memory");
                kou_proxy_fail(ctx, KOU_PF_INVALID, "out of memory", 0);
                return;
            }
            ctx->fields = (kou_header_t *) (void *) (ctx->in
                                                     + KOU_PROXY_BUF);
            ctx->rh.headers = ctx->fields;
        }
        if (ctx->in_end == KOU_PROXY_BUF && ctx->in_start > 0) {
            memmove(ctx->in, ctx->in + ctx->in_start,
                    ctx->in_end - ctx->in_start);
            ctx->in_end -= ctx->in_start;
            ctx->in_start = 0;
        }
        want = KOU_PROXY_BUF - ctx->in_end;
        n = read(uc->fd, ctx->in + ctx->in_end, want);
        if (n > 0) {
            ctx->in_end += (size_t) n;
            ctx->in_total += (uint64_t) n;
            ctx->last_read = kou_proxy_host->now_ms();
            if ((size_t) n < want && !ctx->rdhup) {
                /*
                 * Drained: the next arrival is a new edge. Not so for a
                 * FIN reported with these bytes: no event will tell of
                 * it again, so read on to the end of file.
                 */
                ctx->readable = 0;
            }
            continue;
        }
        if (n == 0) {
            ctx->readable = 0;
            kou_proxy_eof(ctx, 0);
            return;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            ctx->readable = 0;
            kou_proxy_timer_set(ctx);
            return;
        }
        kou_proxy_eof(ctx, errno);
        return;
    }
}

/* Readiness of an upstream socket. */
static void
kou_proxy_io(kou_io_t *io, int fd, unsigned events, void *arg)
{
    kou_proxy_uconn_t *uc = arg;
    kou_proxy_ctx_t   *ctx = uc->ctx;

    (void) io;
    if (ctx == NULL) {
        kou_proxy_idle_event(uc, events);
        return;
    }
    if (!ctx->connected) {
        int       err = 0;
        socklen_t len = sizeof(err);

        if (!(events & (KOU_IO_WRITE | KOU_IO_HUP))) {
            return;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
            err = errno;
        }
        if (err != 0) {
            kou_proxy_fail(ctx, KOU_PF_CONNECT, "cannot connect", err);
            return;
        }
        ctx->connected = 1;
        ctx->writable = 1;
        ctx->last_write = kou_proxy_host->now_ms();
        kou_proxy_try_connected(ctx);
        kou_proxy_send(ctx);
        if (ctx->uc != uc) {
            return;
        }
    } else if (events & KOU_IO_WRITE) {
        ctx->writable = 1;
        kou_proxy_send(ctx);
        if (ctx->uc != uc) {
            return;
        }
    }
    if (events & (KOU_IO_READ | KOU_IO_HUP)) {
        ctx->readable = 1;
        if (events & KOU_IO_HUP) {
            ctx->rdhup = 1;
        }
        kou_proxy_read(ctx);
    }
}

/* ---- the handler ---- */

/* The request has ended, completed or not: release what it holds. */
static void
kou_proxy_cleanup(void *arg)
{
    kou_proxy_ctx_t *ctx = arg;

    ctx->dead = 1;
    /* the client left first: an attempt cut short is over all the same */
    kou_proxy_try_end(ctx, KOU_PR_NONE, 0);
    if (ctx->uc != NULL) {
        /*
         * The client left mid-exchange. A connection on which nothing was
         * written nor read is as clean as an idle one; any other is in an
         * unknown state and is closed, which also tells the upstream the
         * request is cancelled.
         */
        kou_proxy_detach(ctx, ctx->connected && !ctx->wrote
                                  && ctx->in_total == 0);
    }
    free(ctx->obuf);
    ctx->obuf = NULL;
    kou_proxy_buf_put(ctx->in);
    ctx->in = NULL;
}

static int
kou_proxy_idempotent(kou_str_t m)
{
    static const char *const safe[] = {
        "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", NULL
    };

    for (size_t i = 0; safe[i] != NULL; i++) {
        if (m.n == strlen(safe[i]) && memcmp(m.p, safe[i], m.n) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * An upgrade request (RFC 9110 section 7.8): HTTP/1.1, Connection naming
 * "upgrade", an Upgrade field, and no body.
 */
static int
kou_proxy_wants_upgrade(kou_request_t *r)
{
    const kou_host_t *host = kou_proxy_host;
    kou_str_t         v, el;
    int               conn = 0;

    if (host->version(r) != 11 || host->content_length(r) != 0
        || host->header(r, KOU_STR("Upgrade"), 0, &v) != KOU_OK)
    {
        return 0;
    }
    for (size_t i = 0; host->header(r, KOU_STR("Connection"), i, &v)
                       == KOU_OK;
         i++)
    {
        size_t at = 0;

        while (kou_proxy_list_next(v, &at, &el)) {
            conn |= kou_proxy_eq(el, "upgrade");
        }
    }
    return conn;
}

static int
kou_proxy_content(kou_request_t *r, void *state, void *route_state)
{
    const kou_host_t  *host = kou_proxy_host;
    kou_proxy_route_t *pr = route_state;
    kou_proxy_ctx_t   *ctx;

    (void) state;

    ctx = host->palloc(r, sizeof(*ctx));
    if (ctx == NULL) {
        return 503;
    }
    memset(ctx, 0, sizeof(*ctx));
    ctx->r = r;
    ctx->pr = pr;
    ctx->start_ms = host->now_ms();
    ctx->method = host->method(r);
    ctx->idempotent = kou_proxy_idempotent(ctx->method);
    ctx->req_chunked = host->content_length(r) < 0;
    ctx->upgrade_req = pr->upgrade && kou_proxy_wants_upgrade(r);
    ctx->tried = host->palloc(r, pr->npeers);
    if (ctx->tried == NULL) {
        return 503;
    }
    memset(ctx->tried, 0, pr->npeers);
    ctx->tries = ctx->try0;
    ctx->maxtries = KOU_PROXY_TRIES;
    ctx->rh.size = sizeof(ctx->rh);
    ctx->rh.max_headers = KOU_PROXY_MAX_FIELDS;
    ctx->rh.max_head = KOU_PROXY_MAX_HEAD;
    if (host->cleanup_add(r, kou_proxy_cleanup, ctx) != KOU_OK) {
        return 503;
    }

    /*
     * The body waits (paused) until an upstream connection takes it; a
     * request without one gets its last=1 call at once.
     */
    ctx->paused = 1;
    (void) host->read_body_pause(r, 1);
    if (host->read_body(r, kou_proxy_body, ctx) != KOU_OK) {
        return KOU_ERROR;
    }
    kou_proxy_next(ctx);
    return KOU_PENDING;
}

/* ---- configuration ---- */

static const kou_conf_key_t kou_proxy_conf[] = {
    { "max_upstreams", KOU_CONF_INT, KOU_SCOPE_MODULE, 0, "128",
      "most (route, upstream) pairs with kourier_upstream_* series" },
    { "upstreams", KOU_CONF_LIST, KOU_SCOPE_ROUTE, 1, NULL,
      "host:port items, or {address, weight, max_fails, fail_timeout, "
      "backup}" },
    { "balance", KOU_CONF_STR, KOU_SCOPE_ROUTE, 0, "round_robin",
      "round_robin, least_conn or hash" },
    { "hash_key", KOU_CONF_STR, KOU_SCOPE_ROUTE, 0, "remote_addr",
      "remote_addr, path, target, host or header:NAME" },
    { "keepalive", KOU_CONF_INT, KOU_SCOPE_ROUTE, 0, "32",
      "idle connections kept per worker and upstream" },
    { "keepalive_timeout", KOU_CONF_DURATION, KOU_SCOPE_ROUTE, 0, "60s",
      "how long an idle upstream connection is kept" },
    { "keepalive_requests", KOU_CONF_INT, KOU_SCOPE_ROUTE, 0, "1000",
      "requests per upstream connection before it is closed" },
    { "connect_timeout", KOU_CONF_DURATION, KOU_SCOPE_ROUTE, 0, "5s",
      "limit for connecting to an upstream" },
    { "send_timeout", KOU_CONF_DURATION, KOU_SCOPE_ROUTE, 0, "60s",
      "longest wait for the upstream to take request bytes" },
    { "read_timeout", KOU_CONF_DURATION, KOU_SCOPE_ROUTE, 0, "60s",
      "longest wait for response bytes from the upstream" },
    { "retries", KOU_CONF_INT, KOU_SCOPE_ROUTE, 0, "1",
      "further upstreams tried after a failure" },
    { "retry_timeout", KOU_CONF_DURATION, KOU_SCOPE_ROUTE, 0, "0",
      "no retry after this long since the request came (0: no limit)" },
    { "preserve_host", KOU_CONF_BOOL, KOU_SCOPE_ROUTE, 0, "false",
      "send the client's Host instead of the upstream's address" },
    { "set_headers", KOU_CONF_MAP, KOU_SCOPE_ROUTE, 0, NULL,
      "request fields to set (an empty value removes the field)" },
    { "remove_headers", KOU_CONF_LIST, KOU_SCOPE_ROUTE, 0, NULL,
      "request fields not to forward" },
    { "buffering", KOU_CONF_BOOL, KOU_SCOPE_ROUTE, 0, "false",
      "read ahead of a slow client, up to buffer_size" },
    { "buffer_size", KOU_CONF_SIZE, KOU_SCOPE_ROUTE, 0, "1m",
      "how far ahead of the client buffering reads" },
    { "upgrade", KOU_CONF_BOOL, KOU_SCOPE_ROUTE, 0, "false",
      "tunnel Upgrade requests (WebSocket) once the upstream says 101" },
    { NULL, 0, 0, 0, NULL, NULL }
};

static int
kou_proxy_token(kou_str_t s)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";

    if (s.n == 0) {
        return 0;
    }
    for (size_t i = 0; i < s.n; i++) {
        unsigned char c = (unsigned char) s.p[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
              || (c >= 'A' && c <= 'Z') || (c != 0 && strchr(extra, c))))
        {
            return 0;
        }
    }
    return 1;
}

static int
kou_proxy_add_peer(kou_proxy_route_t *pr, size_t *cap, const char *name,
                   const struct sockaddr *sa, socklen_t len,
                   const kou_proxy_peer_t *tmpl)
{
    kou_proxy_peer_t *p;

    if (pr->npeers == *cap) {
        size_t            ncap = *cap ? *cap * 2 : 4;
        kou_proxy_peer_t *np = realloc(pr->peers, ncap * sizeof(*np));

        if (np == NULL) {
            return KOU_ERROR;
        }
        pr->peers = np;
        *cap = ncap;
    }
    p = &pr->peers[pr->npeers];
    *p = *tmpl;
    p->name = strdup(name);
    if (p->name == NULL) {
        return KOU_ERROR;
    }
    p->name_len = strlen(name);
    memcpy(&p->addr, sa, len);
    p->addrlen = len;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
        char                      a[INET_ADDRSTRLEN];

        inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a));
        snprintf(p->text, sizeof(p->text), "%s:%u", a,
                 (unsigned) ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
        char                       a[INET6_ADDRSTRLEN];

        inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof(a));
        snprintf(p->text, sizeof(p->text), "[%s]:%u", a,
                 (unsigned) ntohs(in6->sin6_port));
    } else {
        const struct sockaddr_un *un = (const struct sockaddr_un *) sa;

        snprintf(p->text, sizeof(p->text), "unix:%.*s",
                 (int) (sizeof(p->text) - 6), un->sun_path);
    }
    p->text_len = strlen(p->text);
    pr->npeers++;
    return KOU_OK;
}

/*
 * "host:port", "[v6]:port" or "unix:/path". Names are resolved here, at
 * configuration time (never on the request path): each address a name
 * has becomes a peer of its own.
 */
static int
kou_proxy_address(kou_proxy_route_t *pr, size_t *cap, const kou_conf_t *node,
                  kou_str_t a, const kou_proxy_peer_t *tmpl, char *err,
                  size_t errlen)
{
    const kou_host_t   *host = kou_proxy_host;
    char                hostpart[256], port[8], name[300];
    struct addrinfo     hints, *res = NULL, *ai;
    const char         *colon;
    size_t              hl;
    int                 rc;

    if (a.n >= sizeof(name)) {
        return host->conf_error(node, err, errlen, "upstream address too "
                                "long");
    }
    memcpy(name, a.p, a.n);
    name[a.n] = '\0';

    if (a.n > 5 && memcmp(a.p, "unix:", 5) == 0) {
        struct sockaddr_un un;

        memset(&un, 0, sizeof(un));
        un.sun_family = AF_UNIX;
        if (a.n - 5 >= sizeof(un.sun_path) || a.p[5] != '/') {
            return host->conf_error(node, err, errlen, "upstream \"%s\": "
                                    "expected unix:/absolute/path", name);
        }
        memcpy(un.sun_path, a.p + 5, a.n - 5);
        if (kou_proxy_add_peer(pr, cap, "localhost",
                               (struct sockaddr *) &un, sizeof(un), tmpl)
            != KOU_OK)
        {
            return host->conf_error(node, err, errlen, "out of memory");
        }
        return KOU_OK;
    }

    colon = memrchr(a.p, ':', a.n);
    if (colon == NULL || colon == a.p || (size_t) (a.p + a.n - colon) < 2
        || (size_t) (a.p + a.n - colon - 1) >= sizeof(port))
    {
        return host->conf_error(node, err, errlen, "upstream \"%s\": "
                                "expected host:port", name);
    }
    hl = (size_t) (colon - a.p);
    memcpy(port, colon + 1, (size_t) (a.p + a.n - colon - 1));
    port[a.p + a.n - colon - 1] = '\0';
    {
        char *end;
        long  pn = strtol(port, &end, 10);

        if (*end != '\0' || pn < 1 || pn > 65535 || port[0] < '0'
            || port[0] > '9')
        {
            return host->conf_error(node, err, errlen, "upstream \"%s\": "
                                    "bad port \"%s\"", name, port);
        }
    }
    if (a.p[0] == '[') {
        if (hl < 3 || a.p[hl - 1] != ']') {
            return host->conf_error(node, err, errlen, "upstream \"%s\": "
                                    "expected [IPv6]:port", name);
        }
        memcpy(hostpart, a.p + 1, hl - 2);
        hostpart[hl - 2] = '\0';
    } else {
        if (hl >= sizeof(hostpart) || memchr(a.p, ':', hl) != NULL) {
            return host->conf_error(node, err, errlen, "upstream \"%s\": "
                                    "expected host:port (an IPv6 address "
                                    "goes in brackets)", name);
        }
        memcpy(hostpart, a.p, hl);
        hostpart[hl] = '\0';
    }

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = a.p[0] == '[' ? AI_NUMERICHOST : 0;
    rc = getaddrinfo(hostpart, port, &hints, &res);
    if (rc != 0) {
        return host->conf_error(node, err, errlen, "upstream \"%s\": cannot "
                                "resolve \"%s\": %s", name, hostpart,
                                gai_strerror(rc));
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int dup = 0;

        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) {
            continue;
        }
        for (size_t i = 0; i < pr->npeers; i++) {
            dup |= pr->peers[i].addrlen == ai->ai_addrlen
                   && memcmp(&pr->peers[i].addr, ai->ai_addr,
                             ai->ai_addrlen) == 0;
        }
        if (dup) {
            continue;
        }
        if (kou_proxy_add_peer(pr, cap, name, ai->ai_addr, ai->ai_addrlen,
                               tmpl)
            != KOU_OK)
        {
            freeaddrinfo(res);
            return host->conf_error(node, err, errlen, "out of memory");
        }
    }
    freeaddrinfo(res);
    return KOU_OK;
}

/* One item of `upstreams`: a scalar address or a mapping. */
static int
kou_proxy_upstream(kou_proxy_route_t *pr, size_t *cap, const kou_conf_t *item,
                   int want_backup, char *err, size_t errlen)
{
    const kou_host_t *host = kou_proxy_host;
    kou_proxy_peer_t  t;
    const kou_conf_t *addr = item, *v;
    kou_str_t         a, key;
    int               b = 0;

    memset(&t, 0, sizeof(t));
    t.weight = 1;
    t.max_fails = 1;
    t.fail_timeout = 10000;
    if (host->conf_str(item, &a) != KOU_OK) {
        size_t n = host->conf_len(item);

        for (size_t i = 0; i < n; i++) {
            v = host->conf_at(item, i, &key);
            if (key.n == 0) {
                return host->conf_error(v ? v : item, err, errlen,
                                        "upstream: expected host:port or a "
                                        "mapping");
            }
            if (!kou_proxy_eq(key, "address") && !kou_proxy_eq(key, "weight")
                && !kou_proxy_eq(key, "max_fails")
                && !kou_proxy_eq(key, "fail_timeout")
                && !kou_proxy_eq(key, "backup"))
            {
                return host->conf_error(v, err, errlen, "unknown key \"%.*s\" "
                                        "in upstream (expected one of: "
                                        "address, weight, max_fails, "
                                        "fail_timeout, backup)",
                                        (int) key.n, key.p);
            }
        }
        addr = host->conf_get(item, "address");
        if (addr == NULL || host->conf_str(addr, &a) != KOU_OK) {
            return host->conf_error(item, err, errlen, "upstream needs "
                                    "\"address\": host:port");
        }
        if ((v = host->conf_get(item, "weight")) != NULL
            && (host->conf_int(v, &t.weight) != KOU_OK || t.weight < 1
                || t.weight > 1000000))
        {
            return host->conf_error(v, err, errlen, "weight: expected an "
                                    "integer from 1 to 1000000");
        }
        if ((v = host->conf_get(item, "max_fails")) != NULL
            && (host->conf_int(v, &t.max_fails) != KOU_OK || t.max_fails < 0))
        {
            return host->conf_error(v, err, errlen, "max_fails: expected an "
                                    "integer >= 0 (0: never marked down)");
        }
        if ((v = host->conf_get(item, "fail_timeout")) != NULL
            && host->conf_duration(v, &t.fail_timeout) != KOU_OK)
        {
            return host->conf_error(v, err, errlen, "fail_timeout: expected "
                                    "a duration");
        }
        if ((v = host->conf_get(item, "backup")) != NULL
            && host->conf_bool(v, &b) != KOU_OK)
        {
            return host->conf_error(v, err, errlen, "backup: expected true "
                                    "or false");
        }
    }
    t.backup = b;
    if (b != want_backup) {
        return KOU_OK;
    }
    return kou_proxy_address(pr, cap, addr, a, &t, err, errlen);
}

static void
kou_proxy_route_free(void *state, void *route_state)
{
    kou_proxy_module_t *m = state;
    kou_proxy_route_t  *pr = route_state, **pp;

    if (pr == NULL) {
        return;
    }
    if (m != NULL) {
        for (pp = &m->routes; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == pr) {
                *pp = pr->next;
                break;
            }
        }
    }
    kou_proxy_pools_close(pr);
    for (size_t i = 0; i < pr->npeers; i++) {
        free(pr->peers[i].name);
    }
    free(pr->peers);
    free(pr->set_headers);
    free(pr->remove_headers);
    free(pr);
}

static int
kou_proxy_configure_route(void *state, const kou_conf_t *route,
                          void **route_state, char *err, size_t errlen)
{
    const kou_host_t   *host = kou_proxy_host;
    kou_proxy_module_t *m = state;
    kou_proxy_route_t  *pr;
    const kou_conf_t   *ups, *v;
    kou_str_t           s;
    size_t              cap = 0, n;
    int                 rc = KOU_ERROR;

    pr = calloc(1, sizeof(*pr));
    if (pr == NULL) {
        return host->conf_error(route, err, errlen, "out of memory");
    }
    ups = host->conf_get(route, "upstreams");
    n = host->conf_len(ups);
    /* primaries first, then backups: the balancer takes ranges */
    for (int backup = 0; backup <= 1; backup++) {
        for (size_t i = 0; i < n; i++) {
            if (kou_proxy_upstream(pr, &cap, host->conf_at(ups, i, NULL),
                                   backup, err, errlen)
                != KOU_OK)
            {
                goto failed;
            }
        }
        if (backup == 0) {
            pr->nprimary = pr->npeers;
        }
    }
    if (pr->nprimary == 0) {
        host->conf_error(ups ? ups : route, err, errlen, "upstreams: at "
                         "least one upstream that is not a backup is needed");
        goto failed;
    }
    for (size_t i = 0; i < pr->npeers; i++) {
        pr->peers[i].index = i;
        pr->peers[i].pr = pr;
        if (i < pr->nprimary) {
            pr->primary_weight += pr->peers[i].weight;
        }
    }

    v = host->conf_get(route, "balance");
    (void) host->conf_str(v, &s);
    if (kou_proxy_eq(s, "round_robin")) {
        pr->balance = KOU_PROXY_RR;
    } else if (kou_proxy_eq(s, "least_conn")) {
        pr->balance = KOU_PROXY_LEAST_CONN;
    } else if (kou_proxy_eq(s, "hash")) {
        pr->balance = KOU_PROXY_HASH;
    } else {
        host->conf_error(v, err, errlen, "balance: expected round_robin, "
                         "least_conn or hash");
        goto failed;
    }
    v = host->conf_get(route, "hash_key");
    (void) host->conf_str(v, &s);
    if (kou_proxy_eq(s, "remote_addr")) {
        pr->hash_key = KOU_PROXY_KEY_ADDR;
    } else if (kou_proxy_eq(s, "path")) {
        pr->hash_key = KOU_PROXY_KEY_PATH;
    } else if (kou_proxy_eq(s, "target")) {
        pr->hash_key = KOU_PROXY_KEY_TARGET;
    } else if (kou_proxy_eq(s, "host")) {
        pr->hash_key = KOU_PROXY_KEY_HOST;
    } else if (s.n > 7 && strncasecmp(s.p, "header:", 7) == 0
               && kou_proxy_token((kou_str_t){ s.p + 7, s.n - 7 }))
    {
        pr->hash_key = KOU_PROXY_KEY_HEADER;
        pr->hash_header.p = s.p + 7;   /* the config outlives the route */
        pr->hash_header.n = s.n - 7;
    } else {
        host->conf_error(v, err, errlen, "hash_key: expected remote_addr, "
                         "path, target, host or header:NAME");
        goto failed;
    }

    if (host->conf_int(host->conf_get(route, "keepalive"), &pr->keepalive)
            != KOU_OK
        || pr->keepalive < 0)
    {
        host->conf_error(host->conf_get(route, "keepalive"), err, errlen,
                         "keepalive: expected an integer >= 0");
        goto failed;
    }
    if (host->conf_int(host->conf_get(route, "keepalive_requests"),
                       &pr->keepalive_requests) != KOU_OK
        || pr->keepalive_requests < 1)
    {
        host->conf_error(host->conf_get(route, "keepalive_requests"), err,
                         errlen, "keepalive_requests: expected an integer "
                         ">= 1");
        goto failed;
    }
    if (host->conf_int(host->conf_get(route, "retries"), &pr->retries)
            != KOU_OK
        || pr->retries < 0)
    {
        host->conf_error(host->conf_get(route, "retries"), err, errlen,
                         "retries: expected an integer >= 0");
        goto failed;
    }
    if (host->conf_duration(host->conf_get(route, "keepalive_timeout"),
                            &pr->keepalive_timeout) != KOU_OK
        || host->conf_duration(host->conf_get(route, "connect_timeout"),
                               &pr->connect_timeout) != KOU_OK
        || host->conf_duration(host->conf_get(route, "send_timeout"),
                               &pr->send_timeout) != KOU_OK
        || host->conf_duration(host->conf_get(route, "read_timeout"),
                               &pr->read_timeout) != KOU_OK
        || host->conf_duration(host->conf_get(route, "retry_timeout"),
                               &pr->retry_timeout) != KOU_OK
        || host->conf_bool(host->conf_get(route, "preserve_host"),
                           &pr->preserve_host) != KOU_OK
        || host->conf_bool(host->conf_get(route, "buffering"),
                           &pr->buffering) != KOU_OK
        || host->conf_size(host->conf_get(route, "buffer_size"),
                           &pr->buffer_size) != KOU_OK
        || host->conf_bool(host->conf_get(route, "upgrade"), &pr->upgrade)
               != KOU_OK)
    {
        host->conf_error(route, err, errlen, "proxy: cannot read the route's "
                         "settings");
        goto failed;
    }
    if (pr->connect_timeout == 0 || pr->send_timeout == 0
        || pr->read_timeout == 0)
    {
        host->conf_error(route, err, errlen, "proxy: connect_timeout, "
                         "send_timeout and read_timeout must not be 0");
        goto failed;
    }
    pr->tick = kou_proxy_min(pr->connect_timeout,
                             kou_proxy_min(pr->send_timeout,
                                           pr->read_timeout));
    if (pr->keepalive > 0 && pr->keepalive_timeout > 0) {
        pr->tick = kou_proxy_min(pr->tick, pr->keepalive_timeout);
    }
    if (pr->tick == 0) {
        pr->tick = 1;
    }
    /* the route as written, the label of its kourier_upstream_* series */
    if (((v = host->conf_get(route, "path")) != NULL
         || (v = host->conf_get(route, "prefix")) != NULL)
        && host->conf_str(v, &s) == KOU_OK)
    {
        pr->name = s;      /* the config outlives the route */
    }

    if ((v = host->conf_get(route, "set_headers")) != NULL) {
        n = host->conf_len(v);
        pr->set_headers = calloc(n + 1, sizeof(kou_header_t));
        if (pr->set_headers == NULL) {
            host->conf_error(v, err, errlen, "out of memory");
            goto failed;
        }
        for (size_t i = 0; i < n; i++) {
            kou_header_t     *h = &pr->set_headers[i];
            const kou_conf_t *val = host->conf_at(v, i, &h->name);

            if (!kou_proxy_token(h->name) || kou_proxy_hop_by_hop(h->name)
                || kou_proxy_eq(h->name, "host")
                || kou_proxy_eq(h->name, "content-length"))
            {
                host->conf_error(val, err, errlen, "set_headers: \"%.*s\" "
                                 "is not a field name that can be set",
                                 (int) h->name.n, h->name.p);
                goto failed;
            }
            if (host->conf_str(val, &h->value) != KOU_OK
                || memchr(h->value.p, '\r', h->value.n) != NULL
                || memchr(h->value.p, '\n', h->value.n) != NULL)
            {
                host->conf_error(val, err, errlen, "set_headers: the value "
                                 "of \"%.*s\" must be one line of text",
                                 (int) h->name.n, h->name.p);
                goto failed;
            }
        }
        pr->nset = n;
    }
    if ((v = host->conf_get(route, "remove_headers")) != NULL) {
        n = host->conf_len(v);
        pr->remove_headers = calloc(n + 1, sizeof(kou_str_t));
        if (pr->remove_headers == NULL) {
            host->conf_error(v, err, errlen, "out of memory");
            goto failed;
        }
        for (size_t i = 0; i < n; i++) {
            const kou_conf_t *item = host->conf_at(v, i, NULL);

            if (host->conf_str(item, &pr->remove_headers[i]) != KOU_OK
                || !kou_proxy_token(pr->remove_headers[i]))
            {
                host->conf_error(item, err, errlen, "remove_headers: "
                                 "expected field names");
                goto failed;
            }
        }
        pr->nremove = n;
    }

    pr->m = m;
    if (m != NULL) {
        pr->next = m->routes;
        m->routes = pr;
    }
    *route_state = pr;
    return KOU_OK;

failed:
    kou_proxy_route_free(NULL, pr);
    return rc;
}

static int
kou_proxy_configure(const kou_conf_t *conf, void **state, char *err,
                    size_t errlen)
{
    const kou_host_t   *host = kou_proxy_host;
    const kou_conf_t   *n = host->conf_get(conf, "max_upstreams");
    kou_proxy_module_t *m;
    int64_t             max = 128;

    if (n != NULL && (host->conf_int(n, &max) != KOU_OK || max < 1
                      || max > 65536))
    {
        return host->conf_error(n, err, errlen, "proxy: max_upstreams must "
                                "be 1..65536");
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return host->conf_error(conf, err, errlen, "proxy: out of memory");
    }
    m->max_upstreams = (uint32_t) max;
    *state = m;
    return KOU_OK;
}

/* ---- shared statistics: the kourier_upstream_* series ---- */

static uint64_t
kou_proxy_fnv(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char) p[i]) * UINT64_C(0x100000001b3);
    }
    return h;
}

/*
 * The registry index of (route, upstream), inserting it; -1 when the
 * names are too long or the registry is full. Runs in worker_init, where
 * the workers of a generation (and those of the next, during a reload)
 * may race for the same entry, claimed without a lock (shm_table.h). The
 * same pair finds the same entry in every process and across reloads, so
 * its counts carry on.
 */
static int
kou_proxy_entry(kou_proxy_module_t *m, kou_str_t route, kou_str_t addr)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    if (route.n + addr.n > KOU_PROXY_NAME_MAX) {
        return -1;
    }
    h = kou_proxy_fnv(h, route.p, route.n);
    h = kou_proxy_fnv(h, "", 1);
    h = kou_proxy_fnv(h, addr.p, addr.n) & KOU_SHM_HMASK;
    if (h == 0) {
        h = 1;
    }
    for (uint32_t i = 0; i < m->max_upstreams; i++) {
        uint32_t          k = (uint32_t) ((h + i) % m->max_upstreams);
        kou_proxy_sent_t *e = &m->ents[k];

        switch (kou_shm_probe(&e->state, h)) {
        case KOU_SHM_WRITE:
            memcpy(e->name, route.p, route.n);
            memcpy(e->name + route.n, addr.p, addr.n);
            e->route_len = (uint32_t) route.n;
            e->addr_len = (uint32_t) addr.n;
            kou_shm_publish(&e->state, h);
            return (int) k;
        case KOU_SHM_COMPARE:
            if (e->route_len == route.n && e->addr_len == addr.n
                && memcmp(e->name, route.p, route.n) == 0
                && memcmp(e->name + route.n, addr.p, addr.n) == 0)
            {
                return (int) k;
            }
            break;
        case KOU_SHM_OTHER:
            break;
        }
    }
    return -1;
}

static int
kou_proxy_worker_init(void *state)
{
    const kou_host_t   *host = kou_proxy_host;
    kou_proxy_module_t *m = state;
    uint64_t           *row;
    unsigned char      *p;
    char                name[64];
    size_t              head, size;
    int                 slot, lost = 0;

    if (!KOU_HOST_HAS(host, server_stats)) {
        return KOU_OK;   /* no shared memory: no kourier_upstream_* series */
    }
    m->nslots = host->stats_slots();
    slot = host->stats_slot();
    if (m->nslots <= 0 || slot < 0 || slot >= m->nslots) {
        return KOU_OK;
    }
    head = (size_t) m->max_upstreams * sizeof(kou_proxy_sent_t);
    size = head + (size_t) m->nslots * m->max_upstreams * KOU_PS_W
                  * sizeof(uint64_t);
    /* the geometry is in the name: another one is another block */
    snprintf(name, sizeof(name), "proxy.upstreams.v1.e%" PRIu32 ".s%d",
             m->max_upstreams, m->nslots);
    p = host->shm_alloc(name, size);
    m->configured = calloc(m->max_upstreams, 1);
    if (p == NULL || m->configured == NULL) {
        host->log(KOU_LOG_ERR, "proxy: cannot get %zu bytes of shared "
                  "memory for the upstream statistics: raise the top-level "
                  "\"shared_memory\" or lower max_upstreams; upstreams are "
                  "not counted", size);
        free(m->configured);
        m->configured = NULL;
        return KOU_OK;
    }
    m->ents = (kou_proxy_sent_t *) (void *) p;
    m->rows = (uint64_t *) (void *) (p + head);
    row = m->rows + (size_t) slot * m->max_upstreams * KOU_PS_W;

    /* the gauges of a worker this slot had before are stale */
    for (uint32_t e = 0; e < m->max_upstreams; e++) {
        uint64_t *v = row + (size_t) e * KOU_PS_W;

        __atomic_store_n(&v[KOU_PS_ACTIVE], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&v[KOU_PS_IDLE], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&v[KOU_PS_DOWN], 0, __ATOMIC_RELAXED);
    }
    for (kou_proxy_route_t *pr = m->routes; pr != NULL; pr = pr->next) {
        for (size_t i = 0; i < pr->npeers; i++) {
            kou_proxy_peer_t *peer = &pr->peers[i];
            int               id = kou_proxy_entry(m, pr->name,
                                                   (kou_str_t){
                                                       peer->text,
                                                       peer->text_len });

            if (id < 0) {
                lost++;
                continue;
            }
            peer->st = row + (size_t) id * KOU_PS_W;
            m->configured[id] = 1;
        }
    }
    if (lost > 0) {
        host->log(KOU_LOG_WARN, "proxy: %d upstream(s) have no "
                  "kourier_upstream_* series: more than max_upstreams "
                  "(%" PRIu32 ") route and upstream pairs, or names over "
                  "%d bytes", lost, m->max_upstreams, KOU_PROXY_NAME_MAX);
    }
    return KOU_OK;
}

/* Text for a metrics scrape, handed to emit in pieces. */
typedef struct {
    kou_emit_pt emit;
    void       *arg;
    size_t      n;
    char        buf[8192];
} kou_proxy_out_t;

static void
kou_proxy_out(kou_proxy_out_t *o, const char *p, size_t n)
{
    if (o->n + n > sizeof(o->buf)) {
        o->emit(o->arg, o->buf, o->n);
        o->n = 0;
        if (n > sizeof(o->buf)) {
            o->emit(o->arg, p, n);
            return;
        }
    }
    memcpy(o->buf + o->n, p, n);
    o->n += n;
}

#define kou_proxy_out_lit(o, lit) kou_proxy_out((o), (lit), sizeof(lit) - 1)

static void
kou_proxy_out_u64(kou_proxy_out_t *o, uint64_t v)
{
    char b[24];

    kou_proxy_out(o, b, (size_t) (kou_proxy_put_u64(b, v) - b));
}

/* A label value, escaped as the format wants: \\, \" and \n. */
static void
kou_proxy_out_value(kou_proxy_out_t *o, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (p[i]) {
        case '\\':
            kou_proxy_out_lit(o, "\\\\");
            break;
        case '"':
            kou_proxy_out_lit(o, "\\\"");
            break;
        case '\n':
            kou_proxy_out_lit(o, "\\n");
            break;
        default:
            kou_proxy_out(o, &p[i], 1);
            break;
        }
    }
}

/* `name{route="...",upstream="..."` (the caller closes the braces). */
static void
kou_proxy_out_series(kou_proxy_out_t *o, const char *name,
                     const kou_proxy_sent_t *e)
{
    kou_proxy_out(o, name, strlen(name));
    kou_proxy_out_lit(o, "{route=\"");
    kou_proxy_out_value(o, e->name, e->route_len);
    kou_proxy_out_lit(o, "\",upstream=\"");
    kou_proxy_out_value(o, e->name + e->route_len, e->addr_len);
    kou_proxy_out_lit(o, "\"");
}

static void
kou_proxy_out_family(kou_proxy_out_t *o, const char *name, const char *type,
                     const char *help)
{
    kou_proxy_out_lit(o, "# HELP ");
    kou_proxy_out(o, name, strlen(name));
    kou_proxy_out_lit(o, " ");
    kou_proxy_out(o, help, strlen(help));
    kou_proxy_out_lit(o, "\n# TYPE ");
    kou_proxy_out(o, name, strlen(name));
    kou_proxy_out_lit(o, " ");
    kou_proxy_out(o, type, strlen(type));
    kou_proxy_out_lit(o, "\n");
}

/* Entry e's names, or NULL while it is not ready. */
static const kou_proxy_sent_t *
kou_proxy_ready(const kou_proxy_module_t *m, uint32_t e)
{
    const kou_proxy_sent_t *ent = &m->ents[e];
    uint64_t st = __atomic_load_n(&ent->state, __ATOMIC_ACQUIRE);

    if (!(st & KOU_SHM_READY)
        || (size_t) ent->route_len + ent->addr_len > KOU_PROXY_NAME_MAX)
    {
        return NULL;
    }
    return ent;
}

/* Counter f of entry e summed over the slots (live ones only: `live`). */
static uint64_t
kou_proxy_sum(const kou_proxy_module_t *m, uint32_t e, unsigned f,
              const kou_server_stats_t *live)
{
    uint64_t v = 0;

    for (int s = 0; s < m->nslots; s++) {
        if (live != NULL
            && (s >= live->nslots
                || __atomic_load_n(&live->slots[s].pid, __ATOMIC_RELAXED)
                       == 0))
        {
            continue;
        }
        v += __atomic_load_n(&m->rows[((size_t) s * m->max_upstreams + e)
                                      * KOU_PS_W + f], __ATOMIC_RELAXED);
    }
    return v;
}

/*
 * The metrics callback: the kourier_upstream_* series, summed over every
 * worker's slot. Counters and the histogram cover every (route, upstream)
 * ever registered (a pair a reload dropped keeps its final counts); the
 * gauges cover the pairs of the configuration this worker serves, and
 * only live workers' slots.
 */
static void
kou_proxy_metrics(void *state, kou_emit_pt emit, void *arg)
{
    static const char *const classes[5] = {
        "1xx", "2xx", "3xx", "4xx", "5xx"
    };
    static const char *const reasons[4] = {
        "connect", "timeout", "invalid", "closed"
    };
    static const char *const le[KOU_PS_NBOUNDS + 1] = {
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
        "5", "10", "+Inf"
    };
    static const char *hist = "kourier_upstream_response_duration_seconds";
    const kou_host_t         *host = kou_proxy_host;
    const kou_proxy_module_t *m = state;
    const kou_server_stats_t *live = NULL;
    const kou_proxy_sent_t   *e;
    kou_proxy_out_t          *o;
    uint64_t                  now = host->now_ms();

    if (m == NULL || m->rows == NULL) {
        return;
    }
    o = malloc(sizeof(*o));
    if (o == NULL) {
        return;
    }
    o->emit = emit;
    o->arg = arg;
    o->n = 0;
    live = host->server_stats();

    kou_proxy_out_family(o, "kourier_upstream_requests_total", "counter",
                         "Responses received from upstream servers, by "
                         "route, upstream and status class.");
    for (uint32_t i = 0; i < m->max_upstreams; i++) {
        if ((e = kou_proxy_ready(m, i)) == NULL) {
            continue;
        }
        for (unsigned c = 0; c < 5; c++) {
            kou_proxy_out_series(o, "kourier_upstream_requests_total", e);
            kou_proxy_out_lit(o, ",code=\"");
            kou_proxy_out(o, classes[c], 3);
            kou_proxy_out_lit(o, "\"} ");
            kou_proxy_out_u64(o, kou_proxy_sum(m, i, KOU_PS_REQ + c, NULL));
            kou_proxy_out_lit(o, "\n");
        }
    }

    kou_proxy_out_family(o, "kourier_upstream_failures_total", "counter",
                         "Attempts that failed, by route, upstream and "
                         "reason (connect, timeout, invalid response, "
                         "connection closed).");
    for (uint32_t i = 0; i < m->max_upstreams; i++) {
        if ((e = kou_proxy_ready(m, i)) == NULL) {
            continue;
        }
        for (unsigned r = 0; r < 4; r++) {
            kou_proxy_out_series(o, "kourier_upstream_failures_total", e);
            kou_proxy_out_lit(o, ",reason=\"");
            kou_proxy_out(o, reasons[r], strlen(reasons[r]));
            kou_proxy_out_lit(o, "\"} ");
            kou_proxy_out_u64(o, kou_proxy_sum(m, i, KOU_PS_FAIL + r, NULL));
            kou_proxy_out_lit(o, "\n");
        }
    }

    kou_proxy_out_family(o, hist, "histogram",
                         "Time from the start of an attempt to the end of "
                         "the upstream's response, by route and upstream.");
    for (uint32_t i = 0; i < m->max_upstreams; i++) {
        uint64_t v[KOU_PS_NBOUNDS + 1], cum = 0;
        char     b[32];

        if ((e = kou_proxy_ready(m, i)) == NULL) {
            continue;
        }
        /* one snapshot made cumulative: +Inf and _count always agree */
        for (unsigned k = 0; k <= KOU_PS_NBOUNDS; k++) {
            v[k] = kou_proxy_sum(m, i, KOU_PS_BUCKET + k, NULL);
        }
        for (unsigned k = 0; k <= KOU_PS_NBOUNDS; k++) {
            cum += v[k];
            kou_proxy_out_series(o, "kourier_upstream_response_duration_"
                                 "seconds_bucket", e);
            kou_proxy_out_lit(o, ",le=\"");
            kou_proxy_out(o, le[k], strlen(le[k]));
            kou_proxy_out_lit(o, "\"} ");
            kou_proxy_out_u64(o, cum);
            kou_proxy_out_lit(o, "\n");
        }
        kou_proxy_out_series(o, "kourier_upstream_response_duration_"
                             "seconds_sum", e);
        kou_proxy_out_lit(o, "} ");
        kou_proxy_out(o, b, (size_t) (kou_proxy_put_ms(
                                          b, (int64_t) kou_proxy_sum(
                                                 m, i, KOU_PS_SUM, NULL))
                                      - b));
        kou_proxy_out_lit(o, "\n");
        kou_proxy_out_series(o, "kourier_upstream_response_duration_"
                             "seconds_count", e);
        kou_proxy_out_lit(o, "} ");
        kou_proxy_out_u64(o, cum);
        kou_proxy_out_lit(o, "\n");
    }

    kou_proxy_out_family(o, "kourier_upstream_up", "gauge",
                         "1 when no worker has taken the upstream out "
                         "(passive health: max_fails within fail_timeout), "
                         "else 0.");
    for (uint32_t i = 0; m->configured != NULL && i < m->max_upstreams;
         i++)
    {
        int up = 1;

        if (!m->configured[i] || (e = kou_proxy_ready(m, i)) == NULL) {
            continue;
        }
        for (int s = 0; s < m->nslots && live != NULL; s++) {
            if (s < live->nslots
                && __atomic_load_n(&live->slots[s].pid, __ATOMIC_RELAXED)
                   != 0
                && __atomic_load_n(&m->rows[((size_t) s * m->max_upstreams
                                             + i) * KOU_PS_W + KOU_PS_DOWN],
                                   __ATOMIC_RELAXED) > now)
            {
                up = 0;
            }
        }
        kou_proxy_out_series(o, "kourier_upstream_up", e);
        kou_proxy_out_lit(o, "} ");
        kou_proxy_out_u64(o, (uint64_t) up);
        kou_proxy_out_lit(o, "\n");
    }

    kou_proxy_out_family(o, "kourier_upstream_connections", "gauge",
                         "Connections to the upstream: in use by a request "
                         "(active) or kept for the next one (idle).");
    for (uint32_t i = 0; m->configured != NULL && i < m->max_upstreams;
         i++)
    {
        if (!m->configured[i] || (e = kou_proxy_ready(m, i)) == NULL) {
            continue;
        }
        kou_proxy_out_series(o, "kourier_upstream_connections", e);
        kou_proxy_out_lit(o, ",state=\"active\"} ");
        kou_proxy_out_u64(o, kou_proxy_sum(m, i, KOU_PS_ACTIVE, live));
        kou_proxy_out_lit(o, "\n");
        kou_proxy_out_series(o, "kourier_upstream_connections", e);
        kou_proxy_out_lit(o, ",state=\"idle\"} ");
        kou_proxy_out_u64(o, kou_proxy_sum(m, i, KOU_PS_IDLE, live));
        kou_proxy_out_lit(o, "\n");
    }
    if (o->n > 0) {
        emit(arg, o->buf, o->n);
    }
    free(o);
}

static void
kou_proxy_worker_exit(void *state)
{
    kou_proxy_module_t *m = state;

    kou_proxy_exiting = 1;
    for (kou_proxy_route_t *pr = m->routes; pr != NULL; pr = pr->next) {
        kou_proxy_pools_close(pr);
    }
    kou_proxy_bufs_free();
}

static void
kou_proxy_destroy(void *state)
{
    kou_proxy_module_t *m = state;

    if (m != NULL) {
        free(m->configured);
    }
    free(m);
    kou_proxy_bufs_free();
}

static const kou_module_t kou_proxy_module = {
    KOU_MODULE_HEADER("proxy", "1.0.0"),
    .conf = kou_proxy_conf,
    .configure = kou_proxy_configure,
    .configure_route = kou_proxy_configure_route,
    .worker_init = kou_proxy_worker_init,
    .worker_exit = kou_proxy_worker_exit,
    .content = kou_proxy_content,
    .route_free = kou_proxy_route_free,
    .destroy = kou_proxy_destroy,
    .metrics = kou_proxy_metrics,
};

KOU_EXPORT const kou_module_t *
kourier_module(const kou_host_t *host)
{
    if (host->abi_minor < 1
        || host->size < offsetof(kou_host_t, abort) + sizeof(void *))
    {
        host->log(KOU_LOG_ERR, "proxy: needs ABI 1.1 (parse_response, "
                  "read_body_pause...), this server has %u.%u",
                  (unsigned) host->abi_major, (unsigned) host->abi_minor);
        return NULL;
    }
    kou_proxy_host = host;
    return &kou_proxy_module;
}
