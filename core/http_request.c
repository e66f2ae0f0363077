/*
 * The life of a request in a worker.
 *
 * One request at a time per connection: pipelined requests wait in the
 * input buffer until the one before them is finalised, so responses are in
 * order by construction and a rejected request can never let the next one
 * through (the connection closes after an error).
 *
 * The head's slices point into the connection's input buffer, which is not
 * moved while a request is active; body bytes stream through the space
 * after the head and are handed to the handler without a copy.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "conn.h"
#include "http_request.h"
#include "log.h"
#include "module.h"
#include "router.h"
#include "shm.h"
#include "worker.h"

#define KOU_ARENA_INLINE 2048
#define KOU_ARENA_BLOCK  4096

static kou_request_t *kou_r_free;

/*
 * Request timing uses the loop's clock, read once per batch of events: a
 * clock_gettime per request would cost more than the handler of a
 * pipelined plaintext request. Durations are exact to one loop iteration.
 */
static inline uint64_t
kou_http_now_us(void)
{
    return kou_loop.now_us;
}

const u_char kou_http_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
    ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1,
    ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
    ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
    ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* ---- allocation ---- */

static size_t
kou_http_request_size(void)
{
    return sizeof(kou_request_t)
           + kou_worker.plimits.max_headers * sizeof(kou_header_t)
           + KOU_ARENA_INLINE;
}

static kou_request_t *
kou_http_request_alloc(kou_conn_t *c)
{
    kou_request_t *r = kou_r_free;
    size_t         nh = kou_worker.plimits.max_headers;

    if (r != NULL) {
        kou_r_free = r->next_free;
    } else {
        r = malloc(kou_http_request_size());
        if (r == NULL) {
            return NULL;
        }
    }
    memset(r, 0, sizeof(*r));
    r->c = c;
    r->resp_length = -1;
    r->a_pos = (u_char *) &r->headers[nh];
    r->a_end = r->a_pos + KOU_ARENA_INLINE;
    r->resp_extra_tail = &r->resp_extra;
    kou_http_parser_init(&r->p, &kou_worker.plimits, r->headers);
    return r;
}

void
kou_http_request_free(kou_request_t *r)
{
    kou_arena_block_t *b, *next;

    for (b = r->a_blocks; b != NULL; b = next) {
        next = b->next;
        free(b);
    }
    r->a_blocks = NULL;
    r->next_free = kou_r_free;
    kou_r_free = r;
}

void
kou_http_request_pool_free(void)
{
    while (kou_r_free != NULL) {
        kou_request_t *r = kou_r_free;
        kou_r_free = r->next_free;
        free(r);
    }
}

void *
kou_r_palloc(kou_request_t *r, size_t n)
{
    u_char *p;

    n = (n + 15) & ~(size_t) 15;
    p = (u_char *) (((uintptr_t) r->a_pos + 15) & ~(uintptr_t) 15);
    if (p + n <= r->a_end) {
        r->a_pos = p + n;
        return p;
    }
    /* a new block; the rest of the old one is abandoned (arenas are short) */
    size_t             size = kou_max(n, (size_t) KOU_ARENA_BLOCK);
    kou_arena_block_t *b = malloc(sizeof(kou_arena_block_t) + 16 + size);

    if (b == NULL) {
        return NULL;
    }
    b->next = r->a_blocks;
    r->a_blocks = b;
    p = (u_char *) (((uintptr_t) (b + 1) + 15) & ~(uintptr_t) 15);
    r->a_pos = p + n;
    r->a_end = p + size;
    return p;
}

int
kou_r_cleanup_add(kou_request_t *r, kou_callback_pt cb, void *arg)
{
    kou_cleanup_t *cl = kou_r_palloc(r, sizeof(*cl));

    if (cl == NULL) {
        return KOU_ERROR;
    }
    cl->cb = cb;
    cl->arg = arg;
    cl->next = r->cleanups;
    r->cleanups = cl;
    return KOU_OK;
}

/* The bytes of a variable name: [a-z0-9_]. */
static const u_char kou_var_char[256] = {
    ['0' ... '9'] = 1, ['a' ... 'z'] = 1, ['_'] = 1
};

int
kou_r_var_set(kou_request_t *r, kou_str_t name, kou_str_t value)
{
    kou_var_t *v;
    char      *p;

    if (name.n == 0 || name.n > 64) {
        return KOU_ERROR;
    }
    for (size_t i = 0; i < name.n; i++) {
        if (!kou_var_char[(u_char) name.p[i]]) {
            return KOU_ERROR;
        }
    }
    for (v = r->vars; v != NULL; v = v->next) {
        if (v->name.n == name.n && memcmp(v->name.p, name.p, name.n) == 0) {
            break;
        }
    }
    /* a replaced value's old copy stays in the arena: requests are short */
    p = kou_r_palloc(r, (v == NULL ? sizeof(*v) + name.n : 0) + value.n + 1);
    if (p == NULL) {
        return KOU_ERROR;
    }
    if (v == NULL) {
        v = (kou_var_t *) p;
        p += sizeof(*v);
        memcpy(p, name.p, name.n);
        v->name.p = p;
        v->name.n = name.n;
        p += name.n;
        v->next = r->vars;
        r->vars = v;
    }
    if (value.n > 0) {
        memcpy(p, value.p, value.n);
    }
    p[value.n] = '\0';
    v->value.p = p;
    v->value.n = value.n;
    return KOU_OK;
}

int
kou_r_var_get(kou_request_t *r, kou_str_t name, kou_str_t *value)
{
    for (const kou_var_t *v = r->vars; v != NULL; v = v->next) {
        if (v->name.n == name.n && memcmp(v->name.p, name.p, name.n) == 0) {
            *value = v->value;
            return KOU_OK;
        }
    }
    return KOU_DECLINED;
}

static void
kou_http_run_cleanups(kou_request_t *r)
{
    while (r->cleanups != NULL) {
        kou_cleanup_t *cl = r->cleanups;
        r->cleanups = cl->next;
        cl->cb(cl->arg);
    }
}

/* ---- hooks ---- */

/*
 * log_info's facts: those of kou_http_info_r, gathered by the first log
 * hook of the request being logged (kou_http_logging) that asks.
 */
static kou_request_info_t kou_http_info;
static kou_request_t     *kou_http_info_r;
static kou_request_t     *kou_http_logging;

static void
kou_http_call_log_hooks(kou_request_t *r, const size_t *hooks, size_t n)
{
    kou_modules_t *ms = kou_worker.mods;
    kou_request_t *outer = kou_http_logging;
    void         **rs = r->route == NULL ? NULL
                        : &ms->route_state[r->route->route.index * ms->n];

    kou_http_logging = r;
    kou_http_info_r = NULL;
    for (const size_t *h = hooks; h < hooks + n; h++) {
        kou_module_inst_t *m = &ms->mods[*h];

        if (m->m->log != NULL) {
            m->m->log(r, m->state, rs == NULL ? NULL : rs[*h]);
        }
    }
    kou_http_logging = outer;
    kou_http_info_r = NULL;
}

/* Requests that matched no route (404, 405, 501) are logged too. */
static inline void
kou_http_run_log_hooks(kou_request_t *r)
{
    kou_config_t *cf = kou_worker.cf;

    if (cf->nhooks[KOU_PHASE_LOG] > 0) {
        kou_http_call_log_hooks(r, cf->hooks[KOU_PHASE_LOG],
                                cf->nhooks[KOU_PHASE_LOG]);
    }
}

void
kou_http_request_finalize(kou_request_t *r)
{
    kou_conn_t *c = r->c;

    if (kou_slot != NULL) {
        kou_slot->requests++;
        kou_slot->bytes_in += r->p.head_len + r->body_seen;
        kou_slot->bytes_out += c->queued - r->out_mark;
    }
    kou_http_run_log_hooks(r);
    kou_http_run_cleanups(r);
    c->r = NULL;
    c->requests++;
    kou_conn_state(c, KOU_CONN_IDLE);
    if (!r->keep_alive || c->draining || kou_worker.draining) {
        c->closing = 1;
    }
    if (c->in_start == c->in_end && c->in != NULL) {
        c->in_start = c->in_end = 0;
    }
    kou_http_request_free(r);
}

void
kou_http_request_abort(kou_request_t *r)
{
    kou_conn_t *c = r->c;

    /* log hooks see aborted requests too (request_info says so) */
    r->aborted = 1;
    kou_http_run_log_hooks(r);
    kou_http_run_cleanups(r);
    c->r = NULL;
    kou_http_request_free(r);
}

/* ---- errors ---- */

void
kou_http_error(kou_conn_t *c, kou_request_t *r, int status,
               const char *allow)
{
    char      head[512];
    char      body[96];
    kou_str_t reason = kou_http_reason(status);
    kou_str_t date = kou_http_date_line();
    int       hn, bn;
    bool      head_only = r != NULL && r->p.method_id == KOU_METHOD_HEAD;

    c->closing = 1;
    kou_shm_parse_error(status);
    if (r != NULL) {
        r->keep_alive = 0;
        r->body_done = 1;
        r->end_us = kou_http_now_us();
        if (r->head_sent) {
            /*
             * Too late for a status: cut the response short so the client
             * sees a truncated message, never a well-formed wrong one.
             */
            c->linger = 0;
            r->resp_done = 1;
            return;
        }
        r->status = status;
        r->head_sent = 1;
        r->resp_done = 1;
    }
    c->linger = 1;

    bn = snprintf(body, sizeof(body), "%d %.*s\n", status, (int) reason.n,
                  reason.p);
    hn = snprintf(head, sizeof(head),
                  "HTTP/1.1 %d %.*s\r\nServer: kourier\r\n%.*s"
                  "Content-Type: text/plain\r\nContent-Length: %d\r\n"
                  "Connection: close\r\n%s%s%s\r\n",
                  status, (int) reason.n, reason.p, (int) date.n, date.p, bn,
                  allow ? "Allow: " : "", allow ? allow : "",
                  allow ? "\r\n" : "");
    if (kou_conn_out(c, head, (size_t) hn) != KOU_OK
        || (!head_only && kou_conn_out(c, body, (size_t) bn) != KOU_OK))
    {
        c->error = 1;
    }
}

/* ---- dispatch ---- */

static void
kou_http_fail(kou_request_t *r, int status, const char *allow)
{
    kou_conn_t *c = r->c;

    kou_log_info("client %s: \"%.*s %.*s\" answered %d", c->addr_text,
                 (int) r->p.method.n, r->p.method.p, (int) kou_min(r->p.target.n, 256),
                 r->p.target.p, status);
    kou_http_error(c, r, status, allow);
}

/* Run the handler's content hook and act on what it returns. */
static void
kou_http_run_content(kou_request_t *r)
{
    kou_modules_t     *ms = kou_worker.mods;
    size_t             mi = r->route->handler;
    size_t             ri = r->route->route.index;
    kou_module_inst_t *m = &ms->mods[mi];
    int                rc;

    r->in_content = 1;
    rc = m->m->content(r, m->state, kou_modules_route_state(ms, ri, mi));
    r->in_content = 0;

    if (r->resp_done) {
        return;
    }
    switch (rc) {
    case KOU_PENDING:
        return;
    case KOU_OK:
    case KOU_DONE:
        if (r->head_sent) {
            return;  /* a streamed response goes on from callbacks */
        }
        kou_log_error("module \"%s\" returned without a response",
                      m->conf->name);
        kou_http_fail(r, 500, NULL);
        return;
    case KOU_DECLINED:
        kou_http_fail(r, 404, NULL);
        return;
    default:
        if (rc >= 400 && rc <= 599) {
            kou_http_fail(r, rc, NULL);
        } else {
            kou_http_fail(r, 500, NULL);
        }
        return;
    }
}

/* Route, set up the body, run the request hooks and the handler. */
static void
kou_http_dispatch(kou_request_t *r)
{
    kou_http_parser_t *p = &r->p;
    const kou_route_t *route;
    kou_config_t      *cf = kou_worker.cf;
    kou_modules_t     *ms = kou_worker.mods;
    u_char            *path;
    size_t             plen;
    int                rc;

    r->keep_alive = !p->conn_close
                    && (p->version == 11 || p->conn_keep_alive);

    if (p->method_id == KOU_METHOD_UNKNOWN
        && !kou_router_knows_method(kou_worker.router, p->method))
    {
        /* only a route that names a method makes it known (DESIGN §3) */
        kou_http_fail(r, 501, NULL);
        return;
    }
    if (p->target_form == KOU_TARGET_ASTERISK) {
        static const kou_header_t allow = {
            { "Allow", 5 }, { "GET, HEAD, POST, OPTIONS", 24 }
        };
        r->body_done = p->content_length <= 0 && !p->chunked;
        if (!r->body_done) {
            kou_http_fail(r, 400, NULL);
            return;
        }
        kou_r_respond(r, 200, &allow, 1, (kou_str_t){ "", 0 });
        return;
    }
    if (p->target_form == KOU_TARGET_AUTHORITY) {
        kou_http_fail(r, 501, NULL);  /* no tunnelling */
        return;
    }

    if (kou_path_is_normal((const u_char *) p->path.p, p->path.n)) {
        r->path = p->path;          /* the common case: nothing to undo */
    } else {
        path = kou_r_palloc(r, p->path.n + 1);
        if (path == NULL) {
            kou_http_fail(r, 503, NULL);
            return;
        }
        if (kou_path_normalize((const u_char *) p->path.p, p->path.n, path,
                               &plen)
            != KOU_OK)
        {
            kou_http_fail(r, 400, NULL);
            return;
        }
        r->path.p = (const char *) path;
        r->path.n = plen;
    }

    rc = kou_router_match(kou_worker.router, p->host, r->path, p->method,
                          p->method_id, &route);
    if (rc != KOU_OK && p->method_id == KOU_METHOD_UNKNOWN) {
        /*
         * A method the server does not know is served only by a route that
         * names it or takes any method; anything else is "not implemented"
         * rather than "not found" or "not allowed".
         */
        kou_http_fail(r, 501, NULL);
        return;
    }
    if (rc != KOU_OK) {
        char allow[256];

        if (rc == 405) {
            size_t n = kou_router_allow(kou_worker.router, p->host, route,
                                        allow, sizeof(allow) - 1);
            allow[n] = '\0';
        }
        kou_http_fail(r, rc, rc == 405 ? allow : NULL);
        return;
    }
    r->route = route->data;
    r->max_body = r->route->max_body;

    if (p->chunked) {
        kou_http_chunked_init(&r->chunked, cf->limits.max_header_block);
    } else if (p->content_length > 0) {
        if ((uint64_t) p->content_length > r->max_body) {
            kou_http_fail(r, 413, NULL);
            return;
        }
        r->body_left = (uint64_t) p->content_length;
    } else {
        r->body_done = 1;
    }

    for (size_t i = 0; i < cf->nhooks[KOU_PHASE_REQUEST]; i++) {
        size_t             mi = cf->hooks[KOU_PHASE_REQUEST][i];
        kou_module_inst_t *m = &ms->mods[mi];

        if (m->m->request == NULL) {
            continue;
        }
        rc = m->m->request(r, m->state,
                           kou_modules_route_state(ms, route->index, mi));
        if (r->resp_done || rc == KOU_DONE) {
            if (!r->resp_done && !r->head_sent) {
                kou_http_fail(r, 500, NULL);
            }
            return;
        }
        if (rc == KOU_OK || rc == KOU_DECLINED) {
            continue;
        }
        kou_http_fail(r, rc >= 400 && rc <= 599 ? rc : 500, NULL);
        return;
    }

    kou_http_run_content(r);
}

int
kou_http_request_begin(kou_conn_t *c)
{
    kou_request_t *r = c->parsing;
    int            rc;

    if (r == NULL) {
        r = kou_http_request_alloc(c);
        if (r == NULL) {
            kou_log_error("client %s: out of memory", c->addr_text);
            c->error = 1;
            return KOU_ERROR;
        }
        c->parsing = r;
    }

    rc = kou_http_parse_request(&r->p, c->in + c->in_start,
                                c->in_end - c->in_start);
    if (rc == KOU_AGAIN) {
        if (c->in_start == 0 && c->in_end == c->in_size) {
            /* the buffer is sized above the limits; this is a safety net */
            rc = 431;
        } else {
            return KOU_AGAIN;
        }
    }
    c->parsing = NULL;
    if (rc != KOU_OK) {
        kou_log_info("client %s: malformed request answered %d",
                     c->addr_text, rc);
        kou_http_request_free(r);
        kou_http_error(c, NULL, rc, NULL);
        return KOU_ERROR;
    }

    c->r = r;
    kou_conn_state(c, KOU_CONN_ACTIVE);
    c->in_start += r->p.head_len;
    r->head_end = c->in_start;
    r->start_ms = kou_loop.now;
    r->start_us = kou_http_now_us();
    r->start_time = kou_loop.wall;
    r->out_mark = c->queued;

    kou_http_dispatch(r);
    return KOU_OK;
}

/* ---- request body ---- */

static void
kou_http_body_deliver(kou_request_t *r, const u_char *p, size_t n, int last)
{
    if (r->body_cb == NULL || (r->resp_done && !r->tunnel)) {
        /*
         * Discarding: the response is already complete. Not so in a
         * tunnel, where the module's finish() ends only its direction.
         */
        return;
    }
    r->body_cb(r, (kou_str_t){ (const char *) p, n }, last, r->body_arg);
}

int
kou_http_body_feed(kou_request_t *r)
{
    kou_conn_t *c = r->c;

    while (!r->body_done && c->in_start < c->in_end) {
        const u_char *avail = c->in + c->in_start;
        size_t        n = c->in_end - c->in_start;

        if (r->body_paused && (!r->resp_done || r->tunnel)) {
            break;  /* back-pressure: the bytes wait in the buffer */
        }

        if (!r->p.chunked) {
            size_t take = (size_t) kou_min((uint64_t) n, r->body_left);

            c->in_start += take;
            r->body_progress = 1;
            r->body_left -= take;
            r->body_seen += take;
            if (r->body_left == 0) {
                r->body_done = 1;
            }
            kou_http_body_deliver(r, avail, take, r->body_done);
            continue;
        }

        size_t    consumed = 0;
        kou_str_t data = { NULL, 0 };
        int       rc = kou_http_parse_chunked(&r->chunked, avail, n,
                                              &consumed, &data);

        if (rc > 0) {
            kou_log_info("client %s: malformed chunked body answered %d",
                         c->addr_text, rc);
            kou_http_error(c, r, rc, NULL);
            return KOU_ERROR;
        }
        c->in_start += consumed;
        r->body_progress = 1;
        r->body_seen += data.n;
        if (r->body_seen > r->max_body) {
            kou_log_info("client %s: body over %llu bytes", c->addr_text,
                         (unsigned long long) r->max_body);
            kou_http_error(c, r, 413, NULL);
            return KOU_ERROR;
        }
        if (rc == KOU_DONE) {
            r->body_done = 1;
            kou_http_body_deliver(r, (const u_char *) data.p, data.n, 1);
            break;
        }
        if (data.n > 0) {
            kou_http_body_deliver(r, (const u_char *) data.p, data.n, 0);
        }
        if (rc == KOU_AGAIN) {
            break;
        }
    }
    if (r->tunnel && !r->body_done && c->eof && !c->error
        && c->in_start == c->in_end && !r->body_paused)
    {
        /*
         * The client half-closed the tunnel (its FIN after every byte it
         * sent): the end of its stream, not of the connection. The module
         * passes it on; the bytes it still writes go out as before.
         */
        r->body_done = 1;
        r->body_progress = 1;
        kou_http_body_deliver(r, (const u_char *) "", 0, 1);
        return KOU_OK;
    }
    if (c->r == r && c->in_start == c->in_end && !r->body_done) {
        /* everything after the head was consumed: reuse the space */
        c->in_start = c->in_end = r->head_end;
    }
    return KOU_OK;
}

int
kou_r_read_body(kou_request_t *r, kou_body_pt on_data, void *arg)
{
    kou_conn_t *c = r->c;

    if (r->body_cb != NULL || r->head_sent) {
        return KOU_ERROR;
    }
    r->body_cb = on_data;
    r->body_arg = arg;
    r->body_wanted = 1;
    if (r->body_done) {
        on_data(r, (kou_str_t){ "", 0 }, 1, arg);
        return KOU_OK;
    }
    if (r->p.expect_continue && r->p.version == 11
        && c->in_start == c->in_end)
    {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (kou_conn_out(c, cont, sizeof(cont) - 1) != KOU_OK) {
            return KOU_ERROR;
        }
    }
    if (!c->in_process) {
        kou_conn_post(c);
    }
    return KOU_OK;
}

int
kou_r_tunnel_timeout(kou_request_t *r, uint64_t ms)
{
    if (!r->tunnel) {
        return KOU_ERROR;
    }
    r->tunnel_ms = ms;
    r->tunnel_ms_set = 1;
    r->body_progress = 1;   /* re-armed with the new value */
    if (!r->c->in_process) {
        kou_conn_post(r->c);
    }
    return KOU_OK;
}

/* ---- response ---- */

bool
kou_http_header_valid(const kou_header_t *h)
{
    if (h->name.n == 0) {
        return false;
    }
    for (size_t i = 0; i < h->name.n; i++) {
        if (!kou_http_tchar[(u_char) h->name.p[i]]) {
            return false;
        }
    }
    for (size_t i = 0; i < h->value.n; ) {
        uint64_t x;

        if (h->value.n - i >= 8) {
            /* no byte below 0x0e in eight: none of CR, LF, NUL */
            memcpy(&x, h->value.p + i, 8);
            if (((x - 0x0e0e0e0e0e0e0e0eull) & ~x & 0x8080808080808080ull)
                == 0)
            {
                i += 8;
                continue;
            }
        }
        for (size_t e = kou_min(i + 8, h->value.n); i < e; i++) {
            u_char ch = (u_char) h->value.p[i];

            if (ch == '\r' || ch == '\n' || ch == '\0') {
                return false;
            }
        }
    }
    return true;
}

/* Does a comma-separated field value contain the token `close`? */
static bool
kou_http_has_close(kou_str_t v)
{
    size_t i = 0;

    while (i < v.n) {
        size_t s, e;

        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ',')) {
            i++;
        }
        s = i;
        while (i < v.n && v.p[i] != ',') {
            i++;
        }
        e = i;
        while (e > s && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t')) {
            e--;
        }
        if (kou_str_eq_lit(((kou_str_t){ v.p + s, e - s }), "close")) {
            return true;
        }
    }
    return false;
}

enum { KOU_H_KEEP, KOU_H_SKIP, KOU_H_CLOSE };

static int
kou_http_header_class(const kou_header_t *h)
{
    if (kou_str_eq_lit(h->name, "content-length")
        || kou_str_eq_lit(h->name, "transfer-encoding"))
    {
        return KOU_H_SKIP;
    }
    if (kou_str_eq_lit(h->name, "connection")) {
        return kou_http_has_close(h->value) ? KOU_H_CLOSE : KOU_H_SKIP;
    }
    return KOU_H_KEEP;
}

static u_char *
kou_http_put(u_char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define kou_http_put_lit(p, lit) kou_http_put((p), (lit), sizeof(lit) - 1)

static u_char *
kou_http_put_u64(u_char *p, uint64_t v)
{
    char   tmp[24];
    size_t n = 0;

    do {
        tmp[n++] = (char) ('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0) {
        *p++ = (u_char) tmp[--n];
    }
    return p;
}

/*
 * Serialise the status line and fields into the output chain. The core
 * owns framing: Content-Length / Transfer-Encoding / Connection come from
 * here, never from the handler.
 */
static int
kou_http_send_head(kou_request_t *r, int status, const kou_header_t *headers,
                   size_t nheaders, int64_t length)
{
    kou_conn_t     *c = r->c;
    kou_config_t   *cf = kou_worker.cf;
    kou_modules_t  *ms = kou_worker.mods;
    kou_str_t       lines;
    kou_hdr_list_t *x;
    bool            handler_close = false, cl = false;
    size_t          size;
    u_char         *p, *start;

    if (r->head_sent || c->error) {
        return KOU_ERROR;
    }
    if (status < 100 || status > 599 || (status >= 100 && status < 200)) {
        kou_log_error("module response status %d refused", status);
        return KOU_ERROR;
    }
    size = 160;
    for (size_t i = 0; i < nheaders; i++) {
        if (!kou_http_header_valid(&headers[i])) {
            kou_log_error("module response field \"%.*s\" refused: "
                          "invalid name or value",
                          (int) kou_min(headers[i].name.n, 64),
                          headers[i].name.p);
            return KOU_ERROR;
        }
        if (kou_http_header_class(&headers[i]) == KOU_H_CLOSE) {
            handler_close = true;
        }
        size += headers[i].name.n + headers[i].value.n + 4;
    }

    r->status = status;
    r->resp_length = length;
    r->resp_no_body = r->p.method_id == KOU_METHOD_HEAD || status == 204
                      || status == 304;
    if (handler_close || c->draining || kou_worker.draining
        || (r->p.expect_continue && !r->body_wanted && !r->body_done))
    {
        r->keep_alive = 0;
    }
    if (status != 204 && status != 304) {
        if (length >= 0) {
            cl = true;
        } else if (r->p.version == 11) {
            r->resp_chunked = 1;
        } else {
            r->keep_alive = 0;  /* close-delimited */
        }
    }
    if (r->resp_no_body) {
        r->resp_chunked = 0;
    }

    for (size_t i = 0; r->route != NULL && i < cf->nhooks[KOU_PHASE_RESPONSE];
         i++)
    {
        size_t             mi = cf->hooks[KOU_PHASE_RESPONSE][i];
        kou_module_inst_t *m = &ms->mods[mi];

        if (m->m->response != NULL) {
            (void) m->m->response(r, m->state,
                                  kou_modules_route_state(ms,
                                                          r->route->route.index,
                                                          mi));
        }
    }
    for (x = r->resp_extra; x != NULL; x = x->next) {
        size += x->h.name.n + x->h.value.n + 4;
    }

    lines = kou_http_status_lines(status);
    size += lines.n;

    start = p = kou_conn_reserve(c, size);
    if (p == NULL) {
        c->error = 1;
        return KOU_ERROR;
    }
    p = kou_http_put(p, lines.p, lines.n);
    if (cl) {
        p = kou_http_put_lit(p, "Content-Length: ");
        p = kou_http_put_u64(p, (uint64_t) length);
        p = kou_http_put_lit(p, "\r\n");
    } else if (r->resp_chunked || (r->p.method_id == KOU_METHOD_HEAD
                                   && length < 0 && r->p.version == 11
                                   && status != 204 && status != 304))
    {
        p = kou_http_put_lit(p, "Transfer-Encoding: chunked\r\n");
    }
    if (!r->keep_alive) {
        p = kou_http_put_lit(p, "Connection: close\r\n");
    } else if (r->p.version == 10) {
        p = kou_http_put_lit(p, "Connection: keep-alive\r\n");
    }
    for (size_t i = 0; i < nheaders; i++) {
        if (kou_http_header_class(&headers[i]) != KOU_H_KEEP) {
            continue;
        }
        p = kou_http_put(p, headers[i].name.p, headers[i].name.n);
        p = kou_http_put_lit(p, ": ");
        p = kou_http_put(p, headers[i].value.p, headers[i].value.n);
        p = kou_http_put_lit(p, "\r\n");
    }
    for (x = r->resp_extra; x != NULL; x = x->next) {
        p = kou_http_put(p, x->h.name.p, x->h.name.n);
        p = kou_http_put_lit(p, ": ");
        p = kou_http_put(p, x->h.value.p, x->h.value.n);
        p = kou_http_put_lit(p, "\r\n");
    }
    p = kou_http_put_lit(p, "\r\n");
    kou_conn_commit(c, (size_t) (p - start));

    r->head_sent = 1;
    if (!r->keep_alive) {
        c->closing = 1;
    }
    return KOU_OK;
}

/* The response is complete: let the connection go on. */
static void
kou_http_response_complete(kou_request_t *r)
{
    r->resp_done = 1;
    r->end_us = kou_http_now_us();
    if (!r->c->in_process) {
        kou_conn_post(r->c);
    }
}

int
kou_r_start(kou_request_t *r, int status, const kou_header_t *headers,
            size_t nheaders, int64_t length)
{
    if (length < -1) {
        return KOU_ERROR;
    }
    return kou_http_send_head(r, status, headers, nheaders, length);
}

int
kou_r_write(kou_request_t *r, kou_str_t data, kou_write_done_pt done,
            void *arg)
{
    kou_conn_t *c = r->c;

    if (!r->head_sent || r->resp_done || c->error) {
        return KOU_ERROR;
    }
    if (done != NULL && r->done_cb != NULL) {
        return KOU_AGAIN;
    }
    if (r->resp_length >= 0
        && r->resp_sent + data.n > (uint64_t) r->resp_length)
    {
        kou_log_error("module wrote past its Content-Length %lld",
                      (long long) r->resp_length);
        return KOU_ERROR;
    }
    r->resp_sent += data.n;
    if (r->tunnel && data.n > 0) {
        r->body_progress = 1;   /* the tunnel is not idle */
    }
    if (!r->resp_no_body && data.n > 0) {
        if (r->resp_chunked) {
            char line[24];
            int  n = snprintf(line, sizeof(line), "%zx\r\n", data.n);
            if (kou_conn_out(c, line, (size_t) n) != KOU_OK
                || kou_conn_out(c, data.p, data.n) != KOU_OK
                || kou_conn_out(c, "\r\n", 2) != KOU_OK)
            {
                c->error = 1;
                return KOU_ERROR;
            }
        } else if (kou_conn_out(c, data.p, data.n) != KOU_OK) {
            c->error = 1;
            return KOU_ERROR;
        }
    }
    if (done != NULL) {
        r->done_cb = done;
        r->done_arg = arg;
    }
    if (!c->in_process) {
        kou_conn_post(c);
    }
    return KOU_OK;
}

int
kou_r_sendfile(kou_request_t *r, int fd, int64_t offset, int64_t length)
{
    kou_conn_t *c = r->c;
    int         dup;

    if (!r->head_sent || r->resp_done || c->error || offset < 0
        || length < 0)
    {
        return KOU_ERROR;
    }
    if (r->resp_length >= 0
        && r->resp_sent + (uint64_t) length > (uint64_t) r->resp_length)
    {
        kou_log_error("module sent a file past its Content-Length %lld",
                      (long long) r->resp_length);
        return KOU_ERROR;
    }
    r->resp_sent += (uint64_t) length;
    if (r->resp_no_body || length == 0) {
        return KOU_OK;
    }
    /* our own descriptor: the module may close or cache its copy */
    dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) {
        kou_log_error("sendfile: dup: %s", strerror(errno));
        return KOU_ERROR;
    }
    if (r->resp_chunked) {
        char line[24];
        int  n = snprintf(line, sizeof(line), "%llx\r\n",
                          (unsigned long long) length);
        if (kou_conn_out(c, line, (size_t) n) != KOU_OK) {
            close(dup);
            c->error = 1;
            return KOU_ERROR;
        }
    }
    if (kou_conn_out_file(c, dup, (uint64_t) offset, (uint64_t) length)
            != KOU_OK
        || (r->resp_chunked && kou_conn_out(c, "\r\n", 2) != KOU_OK))
    {
        c->error = 1;
        return KOU_ERROR;
    }
    if (!c->in_process) {
        kou_conn_post(c);
    }
    return KOU_OK;
}

static void
kou_http_fill_info(kou_request_t *r, kou_request_info_t *i)
{
    const kou_http_parser_t *p = &r->p;

    i->status = r->status;
    i->bytes_in = p->head_len + r->body_seen;
    i->bytes_out = r->c->queued - r->out_mark;
    i->start_us = r->start_us;
    i->end_us = r->end_us;
    i->start_time = r->start_time;
    /* the request line runs from the method to the end of the version */
    i->request_line.p = p->method.p;
    i->request_line.n = (size_t) (p->target.p + p->target.n
                                  + sizeof(" HTTP/1.1") - 1 - p->method.p);
    i->route = r->route != NULL ? r->route->route.path
                                : (kou_str_t){ "", 0 };
    i->aborted = r->aborted;
    i->body_bytes_out = r->resp_no_body ? 0 : r->resp_sent;
}

const kou_request_info_t *
kou_r_log_info(kou_request_t *r)
{
    if (r != kou_http_info_r) {
        kou_http_info.size = sizeof(kou_http_info);
        kou_http_fill_info(r, &kou_http_info);
        /* kept only while the hooks run: nothing changes r meanwhile */
        kou_http_info_r = r == kou_http_logging ? r : NULL;
    }
    return &kou_http_info;
}

int
kou_r_request_info(kou_request_t *r, kou_request_info_t *info)
{
    kou_request_info_t tmp;
    size_t             size = info->size;

    /*
     * Log hooks call this for every request: a module built against this
     * header (or a newer one) is filled in place, an older one through a
     * copy cut to its size.
     */
    if (size >= sizeof(*info) || size == 0) {
        info->size = sizeof(*info);
        kou_http_fill_info(r, info);
        return KOU_OK;
    }
    tmp.size = size;
    kou_http_fill_info(r, &tmp);
    memcpy(info, &tmp, size);
    return KOU_OK;
}

int
kou_r_finish(kou_request_t *r)
{
    kou_conn_t *c = r->c;

    if (!r->head_sent || r->resp_done) {
        return KOU_ERROR;
    }
    /*
     * In a tunnel this ends the module's direction only: once the queued
     * bytes are out, the connection half-closes (conn.c) and the client's
     * bytes keep flowing to on_data until its own end.
     */
    if (r->resp_chunked && !r->resp_no_body) {
        if (kou_conn_out(c, "0\r\n\r\n", 5) != KOU_OK) {
            c->error = 1;
        }
    }
    if (r->resp_length >= 0 && r->resp_sent < (uint64_t) r->resp_length
        && !r->resp_no_body)
    {
        kou_log_error("module finished after %llu of %lld bytes: "
                      "closing the connection",
                      (unsigned long long) r->resp_sent,
                      (long long) r->resp_length);
        c->closing = 1;
        r->keep_alive = 0;
    }
    kou_http_response_complete(r);
    return KOU_OK;
}

int
kou_r_respond(kou_request_t *r, int status, const kou_header_t *headers,
              size_t nheaders, kou_str_t body)
{
    if (kou_http_send_head(r, status, headers, nheaders, (int64_t) body.n)
        != KOU_OK)
    {
        return KOU_ERROR;
    }
    if (body.n > 0 && !r->resp_no_body
        && kou_conn_out(r->c, body.p, body.n) != KOU_OK)
    {
        r->c->error = 1;
    }
    r->resp_sent = body.n;
    kou_http_response_complete(r);
    return KOU_OK;
}

int
kou_r_response_header_add(kou_request_t *r, kou_str_t name, kou_str_t value)
{
    kou_hdr_list_t *x;

    if (r->head_sent) {
        return KOU_ERROR;
    }
    x = kou_r_palloc(r, sizeof(*x));
    if (x == NULL) {
        return KOU_ERROR;
    }
    x->h.name = name;
    x->h.value = value;
    x->next = NULL;
    if (!kou_http_header_valid(&x->h)
        || kou_http_header_class(&x->h) != KOU_H_KEEP)
    {
        return KOU_ERROR;
    }
    *r->resp_extra_tail = x;
    r->resp_extra_tail = &x->next;
    return KOU_OK;
}

int
kou_r_response_status(kou_request_t *r)
{
    return r->status;
}

void
kou_http_output_drained(kou_conn_t *c)
{
    kou_request_t *r = c->r;

    if (r != NULL && r->done_cb != NULL) {
        kou_write_done_pt cb = r->done_cb;

        r->done_cb = NULL;
        cb(r, r->done_arg);
    }
}

/* ---- request accessors ---- */

kou_str_t
kou_r_method(kou_request_t *r)
{
    return r->p.method;
}

kou_str_t
kou_r_target(kou_request_t *r)
{
    return r->p.target;
}

kou_str_t
kou_r_path(kou_request_t *r)
{
    return r->path;
}

kou_str_t
kou_r_query(kou_request_t *r)
{
    return r->p.query;
}

kou_str_t
kou_r_host(kou_request_t *r)
{
    return r->p.host;
}

int
kou_r_version(kou_request_t *r)
{
    return (int) r->p.version;
}

size_t
kou_r_header_count(kou_request_t *r)
{
    return r->p.nheaders;
}

int
kou_r_header_at(kou_request_t *r, size_t i, kou_header_t *out)
{
    if (i >= r->p.nheaders) {
        return KOU_DECLINED;
    }
    *out = r->headers[i];
    return KOU_OK;
}

const kou_header_t *
kou_r_headers(kou_request_t *r, size_t *n)
{
    *n = r->p.nheaders;
    return r->headers;
}

int
kou_r_header(kou_request_t *r, kou_str_t name, size_t nth, kou_str_t *value)
{
    for (size_t i = 0; i < r->p.nheaders; i++) {
        if (!kou_str_caseeq(r->headers[i].name, name)) {
            continue;
        }
        if (nth-- == 0) {
            *value = r->headers[i].value;
            return KOU_OK;
        }
    }
    return KOU_DECLINED;
}

int64_t
kou_r_content_length(kou_request_t *r)
{
    if (r->p.chunked) {
        return -1;
    }
    return r->p.content_length < 0 ? 0 : r->p.content_length;
}

kou_str_t
kou_r_remote_addr(kou_request_t *r)
{
    return r->c->addr;
}

kou_str_t
kou_r_route(kou_request_t *r)
{
    if (r->route == NULL) {
        return (kou_str_t){ "", 0 };
    }
    return r->route->route.path;
}
