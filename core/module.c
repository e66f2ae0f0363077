/*
 * Module loader and the host function table.
 *
 * Loading order for one generation: dlopen every module, check its ABI,
 * validate its config and the route keys it owns against its schema, then
 * configure the modules and their routes. Any failure unloads everything
 * and reports one message naming the .so or the config position.
 */

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "event.h"
#include "http_request.h"
#include "http_upstream.h"
#include "log.h"
#include "module.h"
#include "shm.h"

/* ---- host timers and fd watches ---- */

struct kou_htimer_s {
    kou_timer_t     t;
    kou_callback_pt cb;
    void           *arg;
};

struct kou_io_s {
    kou_ev_t   ev;
    kou_post_t post;   /* deferred free */
    kou_io_pt  cb;
    void      *arg;
};

static void
kou_htimer_fire(kou_timer_t *t)
{
    kou_htimer_t   *ht = t->data;
    kou_callback_pt cb = ht->cb;
    void           *arg = ht->arg;

    free(ht);
    cb(arg);
}

static kou_htimer_t *
kou_host_timer_add(uint64_t ms, kou_callback_pt cb, void *arg)
{
    kou_htimer_t *ht = malloc(sizeof(*ht));

    if (ht == NULL) {
        return NULL;
    }
    ht->cb = cb;
    ht->arg = arg;
    kou_timer_init(&ht->t, kou_htimer_fire, ht);
    kou_timer_add(&ht->t, ms);
    return ht;
}

static void
kou_host_timer_del(kou_htimer_t *ht)
{
    if (ht != NULL) {
        kou_timer_del(&ht->t);
        free(ht);
    }
}

static uint64_t
kou_host_now_ms(void)
{
    return kou_loop.now;
}

static void
kou_io_handler(kou_ev_t *ev, uint32_t events)
{
    kou_io_t *io = ev->data;
    unsigned  e = 0;

    if (events & EPOLLIN) {
        e |= KOU_IO_READ;
    }
    if (events & EPOLLOUT) {
        e |= KOU_IO_WRITE;
    }
    if (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
        e |= KOU_IO_HUP;
    }
    io->cb(io, ev->fd, e, io->arg);
}

static void
kou_io_dead(kou_ev_t *ev, uint32_t events)
{
    (void) ev;
    (void) events;
}

static void
kou_io_free(kou_post_t *p)
{
    free(kou_container_of(p, kou_io_t, post));
}

static uint32_t
kou_io_events(unsigned events)
{
    uint32_t e = EPOLLET | EPOLLRDHUP;

    if (events & KOU_IO_READ) {
        e |= EPOLLIN;
    }
    if (events & KOU_IO_WRITE) {
        e |= EPOLLOUT;
    }
    return e;
}

static kou_io_t *
kou_host_io_add(int fd, unsigned events, kou_io_pt cb, void *arg)
{
    kou_io_t *io = calloc(1, sizeof(*io));

    if (io == NULL) {
        return NULL;
    }
    io->ev.fd = fd;
    io->ev.handler = kou_io_handler;
    io->ev.data = io;
    io->cb = cb;
    io->arg = arg;
    if (kou_loop_add(&io->ev, kou_io_events(events)) != KOU_OK) {
        free(io);
        return NULL;
    }
    return io;
}

static int
kou_host_io_mod(kou_io_t *io, unsigned events)
{
    return kou_loop_mod(&io->ev, kou_io_events(events));
}

static void
kou_host_io_del(kou_io_t *io)
{
    if (io == NULL) {
        return;
    }
    (void) kou_loop_del(&io->ev);
    /* an event for it may still be queued in this batch: free afterwards */
    io->ev.handler = kou_io_dead;
    io->post.handler = kou_io_free;
    kou_loop_post(&io->post);
}

static int
kou_host_conf_error(const kou_conf_t *node, char *err, size_t errlen,
                    const char *fmt, ...)
{
    char    msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return kou_conf_error(node, err, errlen, "%s", msg);
}

static int
kou_host_stats_slot(void)
{
    return kou_slot_id;
}

static int
kou_host_stats_slots(void)
{
    return kou_shm != NULL ? kou_shm->pub.nslots : 0;
}

static const kou_server_stats_t *
kou_host_server_stats(void)
{
    return kou_shm != NULL ? &kou_shm->pub : NULL;
}

/* What the host's path and module-list functions answer from: the set
   being loaded (configure time) or loaded (serving). */
static const kou_modules_t *kou_modules_current;

static int
kou_host_conf_path(const kou_conf_t *node, char *buf, size_t size)
{
    kou_str_t s;
    int       n;

    if (kou_conf_str(node, &s) != KOU_OK || s.n == 0 || size == 0) {
        return KOU_ERROR;
    }
    if (s.p[0] == '/' || kou_modules_current == NULL) {
        n = snprintf(buf, size, "%.*s", (int) s.n, s.p);
    } else {
        n = snprintf(buf, size, "%s/%.*s", kou_modules_current->cf->prefix,
                     (int) s.n, s.p);
    }
    return n > 0 && (size_t) n < size ? KOU_OK : KOU_ERROR;
}

static size_t
kou_host_module_count(void)
{
    return kou_modules_current != NULL ? kou_modules_current->n : 0;
}

static int
kou_host_module_at(size_t i, kou_str_t *name, kou_str_t *version)
{
    const kou_module_inst_t *mi;

    if (kou_modules_current == NULL || i >= kou_modules_current->n) {
        return KOU_DECLINED;
    }
    mi = &kou_modules_current->mods[i];
    name->p = mi->conf->name;
    name->n = strlen(mi->conf->name);
    version->p = mi->m != NULL ? mi->m->version : "";
    version->n = strlen(version->p);
    return KOU_OK;
}

/* Does module m's table reach field f? (older modules have shorter ones) */
#define KOU_MODULE_HAS(m, f) \
    ((m)->size >= offsetof(kou_module_t, f) + sizeof((m)->f))

static size_t
kou_host_metrics_collect(kou_emit_pt emit, void *arg)
{
    size_t n = 0;

    if (kou_modules_current == NULL) {
        return 0;
    }
    for (size_t i = 0; i < kou_modules_current->n; i++) {
        const kou_module_inst_t *mi = &kou_modules_current->mods[i];

        if (mi->m != NULL && KOU_MODULE_HAS(mi->m, metrics)
            && mi->m->metrics != NULL)
        {
            mi->m->metrics(mi->state, emit, arg);
            n++;
        }
    }
    return n;
}

const kou_host_t kou_host = {
    .abi_major = KOU_ABI_MAJOR,
    .abi_minor = KOU_ABI_MINOR,
    .size = sizeof(kou_host_t),

    .log = kou_log,

    .conf_get = kou_conf_get,
    .conf_str = kou_conf_str,
    .conf_int = kou_conf_int,
    .conf_bool = kou_conf_bool,
    .conf_size = kou_conf_size,
    .conf_duration = kou_conf_duration,
    .conf_len = kou_conf_len,
    .conf_at = kou_conf_at,
    .conf_error = kou_host_conf_error,

    .method = kou_r_method,
    .target = kou_r_target,
    .path = kou_r_path,
    .query = kou_r_query,
    .host = kou_r_host,
    .version = kou_r_version,
    .header_count = kou_r_header_count,
    .header_at = kou_r_header_at,
    .header = kou_r_header,
    .content_length = kou_r_content_length,
    .remote_addr = kou_r_remote_addr,
    .route = kou_r_route,
    .palloc = kou_r_palloc,
    .cleanup_add = kou_r_cleanup_add,

    .read_body = kou_r_read_body,

    .respond = kou_r_respond,
    .start = kou_r_start,
    .write = kou_r_write,
    .finish = kou_r_finish,
    .response_header_add = kou_r_response_header_add,
    .response_status = kou_r_response_status,

    .now_ms = kou_host_now_ms,
    .timer_add = kou_host_timer_add,
    .timer_del = kou_host_timer_del,
    .io_add = kou_host_io_add,
    .io_mod = kou_host_io_mod,
    .io_del = kou_host_io_del,

    .sendfile = kou_r_sendfile,
    .request_info = kou_r_request_info,
    .shm_alloc = kou_shm_alloc,
    .stats_slot = kou_host_stats_slot,
    .stats_slots = kou_host_stats_slots,
    .server_stats = kou_host_server_stats,

    .parse_response = kou_host_parse_response,
    .chunked_init = kou_host_chunked_init,
    .chunked_parse = kou_host_chunked_parse,
    .read_body_pause = kou_r_read_body_pause,
    .is_tls = kou_r_is_tls,
    .abort = kou_r_abort,
    .upgrade = kou_r_upgrade,

    .conf_path = kou_host_conf_path,
    .module_count = kou_host_module_count,
    .module_at = kou_host_module_at,

    .var_set = kou_r_var_set,
    .var_get = kou_r_var_get,
    .metrics_collect = kou_host_metrics_collect,
    .tunnel_timeout = kou_r_tunnel_timeout,
    .headers = kou_r_headers,
    .log_info = kou_r_log_info,
};

/* ---- loader ---- */

/* The smallest kou_module_t a module may hand us: up to the log hook. */
#define KOU_MODULE_MIN_SIZE \
    (offsetof(kou_module_t, log) + sizeof(kou_hook_pt))

static int
kou_module_open(kou_module_inst_t *mi, char *err, size_t errlen)
{
    const char         *path = mi->conf->path;
    kou_module_entry_pt entry;
    const kou_module_t *m;

    dlerror();
    mi->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (mi->handle == NULL) {
        const char *e = dlerror();
        snprintf(err, errlen, "%s: cannot load: %s", path, e ? e : "unknown");
        return KOU_ERROR;
    }
    *(void **) &entry = dlsym(mi->handle, KOU_MODULE_ENTRY);
    if (entry == NULL) {
        snprintf(err, errlen,
                 "%s: no " KOU_MODULE_ENTRY " symbol (not a Kourier module?)",
                 path);
        return KOU_ERROR;
    }
    m = entry(&kou_host);
    if (m == NULL) {
        snprintf(err, errlen, "%s: " KOU_MODULE_ENTRY "() returned NULL",
                 path);
        return KOU_ERROR;
    }
    if (m->abi_major != KOU_ABI_MAJOR) {
        snprintf(err, errlen, "%s: abi_major is %u, this server speaks ABI %d.%d",
                 path, m->abi_major, KOU_ABI_MAJOR, KOU_ABI_MINOR);
        return KOU_ERROR;
    }
    if (m->abi_minor > KOU_ABI_MINOR) {
        snprintf(err, errlen,
                 "%s: abi_minor is %u, newer than this server's ABI %d.%d",
                 path, m->abi_minor, KOU_ABI_MAJOR, KOU_ABI_MINOR);
        return KOU_ERROR;
    }
    if (m->size < KOU_MODULE_MIN_SIZE) {
        snprintf(err, errlen, "%s: size is %zu, expected at least %zu", path,
                 m->size, (size_t) KOU_MODULE_MIN_SIZE);
        return KOU_ERROR;
    }
    if (m->name == NULL || m->version == NULL) {
        snprintf(err, errlen, "%s: module has no name or version", path);
        return KOU_ERROR;
    }
    mi->m = m;
    return KOU_OK;
}

/* Prefix a module's configure message with the config position. */
static void
kou_module_err(const kou_config_t *cf, const kou_conf_t *node,
               const char *name, const char *msg, char *err, size_t errlen)
{
    size_t fl = strlen(cf->file);

    if (strncmp(msg, cf->file, fl) == 0 && msg[fl] == ':') {
        snprintf(err, errlen, "%s", msg);
        return;
    }
    snprintf(err, errlen, "%s:%u:%u: module \"%s\": %s", node->file,
             node->line, node->col, name, msg[0] ? msg : "configure failed");
}

/* Modules that act on route ri: its handler, then every hook module. */
static size_t
kou_route_modules(const kou_config_t *cf, size_t ri, size_t *out)
{
    size_t n = 0;

    out[n++] = cf->routes[ri].handler;
    for (int ph = 0; ph < KOU_PHASE_COUNT; ph++) {
        for (size_t i = 0; i < cf->nhooks[ph]; i++) {
            size_t mi = cf->hooks[ph][i];
            bool   dup = false;

            for (size_t k = 0; k < n; k++) {
                dup = dup || out[k] == mi;
            }
            if (!dup) {
                out[n++] = mi;
            }
        }
    }
    return n;
}

int
kou_modules_load(kou_config_t *cf, kou_modules_t **out, char *err,
                 size_t errlen)
{
    static const char *const skip_module[] = { "path", NULL };
    kou_modules_t *ms;
    size_t        *list = NULL;
    const kou_conf_key_t **schemas = NULL;
    char           msg[1024];

    ms = calloc(1, sizeof(*ms));
    if (ms == NULL) {
        goto nomem;
    }
    ms->cf = cf;
    ms->n = cf->nmodules;
    kou_modules_current = ms;
    ms->mods = calloc(cf->nmodules + 1, sizeof(kou_module_inst_t));
    ms->route_state = calloc(cf->nroutes * cf->nmodules + 1, sizeof(void *));
    list = calloc(cf->nmodules + 1, sizeof(size_t));
    schemas = calloc(cf->nmodules + 1, sizeof(*schemas));
    if (ms->mods == NULL || ms->route_state == NULL || list == NULL
        || schemas == NULL)
    {
        goto nomem;
    }

    for (size_t i = 0; i < cf->nmodules; i++) {
        kou_module_inst_t *mi = &ms->mods[i];
        mi->conf = &cf->modules[i];
        if (kou_module_open(mi, err, errlen) != KOU_OK) {
            goto failed;
        }
        schemas[0] = mi->m->conf;
        if (kou_conf_validate(mi->conf->node, schemas, mi->m->conf ? 1 : 0,
                              KOU_SCOPE_MODULE, skip_module, err, errlen)
            != KOU_OK)
        {
            goto failed;
        }
    }

    for (size_t ri = 0; ri < cf->nroutes; ri++) {
        kou_route_conf_t *rc = &cf->routes[ri];
        size_t            n = kou_route_modules(cf, ri, list), ns = 0;
        const kou_module_t *h = ms->mods[rc->handler].m;

        if (h->content == NULL) {
            const kou_conf_t *hn = kou_conf_get(rc->node, "handler");
            kou_conf_error(hn ? hn : rc->node, err, errlen,
                           "module \"%s\" has no content handler and cannot "
                           "serve a route", cf->modules[rc->handler].name);
            goto failed;
        }
        for (size_t k = 0; k < n; k++) {
            if (ms->mods[list[k]].m->conf != NULL) {
                schemas[ns++] = ms->mods[list[k]].m->conf;
            }
        }
        if (kou_conf_validate(rc->node, schemas, ns, KOU_SCOPE_ROUTE,
                              kou_route_core_keys, err, errlen) != KOU_OK)
        {
            goto failed;
        }
    }

    for (size_t i = 0; i < cf->nmodules; i++) {
        kou_module_inst_t *mi = &ms->mods[i];

        if (mi->m->configure == NULL) {
            mi->configured = true;
            continue;
        }
        msg[0] = '\0';
        if (mi->m->configure(mi->conf->node, &mi->state, msg, sizeof(msg))
            != KOU_OK)
        {
            kou_module_err(cf, mi->conf->node, mi->conf->name, msg, err,
                           errlen);
            goto failed;
        }
        mi->configured = true;
    }

    for (size_t ri = 0; ri < cf->nroutes; ri++) {
        kou_route_conf_t *rc = &cf->routes[ri];
        size_t            n = kou_route_modules(cf, ri, list);

        for (size_t k = 0; k < n; k++) {
            kou_module_inst_t *mi = &ms->mods[list[k]];

            if (mi->m->configure_route == NULL) {
                continue;
            }
            msg[0] = '\0';
            if (mi->m->configure_route(mi->state, rc->node,
                                       &ms->route_state[ri * ms->n + list[k]],
                                       msg, sizeof(msg)) != KOU_OK)
            {
                kou_module_err(cf, rc->node, mi->conf->name, msg, err, errlen);
                goto failed;
            }
        }
    }

    free(list);
    free(schemas);
    *out = ms;
    return KOU_OK;

nomem:
    snprintf(err, errlen, "out of memory loading modules");
failed:
    free(list);
    free(schemas);
    kou_modules_unload(ms);
    return KOU_ERROR;
}

int
kou_modules_worker_init(kou_modules_t *ms, char *err, size_t errlen)
{
    for (size_t i = 0; i < ms->n; i++) {
        kou_module_inst_t *mi = &ms->mods[i];

        if (mi->m->worker_init != NULL
            && mi->m->worker_init(mi->state) != KOU_OK)
        {
            snprintf(err, errlen, "module \"%s\": worker_init failed",
                     mi->conf->name);
            return KOU_ERROR;
        }
        mi->inited = true;
    }
    return KOU_OK;
}

void
kou_modules_worker_exit(kou_modules_t *ms)
{
    for (size_t i = ms->n; i-- > 0;) {
        kou_module_inst_t *mi = &ms->mods[i];

        if (mi->inited && mi->m->worker_exit != NULL) {
            mi->m->worker_exit(mi->state);
        }
        mi->inited = false;
    }
}

void
kou_modules_reopen(kou_modules_t *ms)
{
    for (size_t i = 0; ms != NULL && i < ms->n; i++) {
        const kou_module_t *m = ms->mods[i].m;

        if (KOU_MODULE_HAS(m, reopen) && m->reopen != NULL) {
            m->reopen(ms->mods[i].state);
        }
    }
}

void
kou_modules_unload(kou_modules_t *ms)
{
    if (ms == NULL) {
        return;
    }
    if (kou_modules_current == ms) {
        kou_modules_current = NULL;
    }
    for (size_t i = 0; ms->mods != NULL && i < ms->n; i++) {
        kou_module_inst_t *mi = &ms->mods[i];

        if (mi->m != NULL && mi->configured && KOU_MODULE_HAS(mi->m, destroy))
        {
            for (size_t ri = 0; mi->m->route_free != NULL
                                && ri < ms->cf->nroutes; ri++)
            {
                void *rs = ms->route_state[ri * ms->n + i];
                if (rs != NULL) {
                    mi->m->route_free(mi->state, rs);
                }
            }
            if (mi->m->destroy != NULL) {
                mi->m->destroy(mi->state);
            }
        }
    }
    for (size_t i = 0; ms->mods != NULL && i < ms->n; i++) {
        if (ms->mods[i].handle != NULL) {
            dlclose(ms->mods[i].handle);
        }
    }
    free(ms->mods);
    free(ms->route_state);
    free(ms);
}
