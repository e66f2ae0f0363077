/*
 * delay: the asynchronous handler example. It answers after a pause without
 * blocking the worker: the content hook arms a timer on the worker's event
 * loop and returns KOU_PENDING; the timer's callback sends the response.
 *
 *     routes:
 *       - path: /slow
 *         handler: delay
 *         delay: 2s            # optional, default 250ms
 *
 * The response is 200 text/plain "delayed <N>ms\n". If the client goes away
 * (or the worker shuts down) first, the request's cleanup callback removes
 * the timer so that it never fires for a request that no longer exists.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <kourier/module.h>

typedef struct {
    uint64_t ms;
} kou_delay_route_t;

/* One per pending request, from the request's pool. */
typedef struct {
    kou_request_t *r;
    kou_htimer_t  *timer;       /* NULL once fired or removed */
    uint64_t       ms;
    char           body[48];
} kou_delay_ctx_t;

static const kou_host_t *kou_delay_host;

static const kou_conf_key_t kou_delay_conf[] = {
    { "delay", KOU_CONF_DURATION, KOU_SCOPE_ROUTE, 0, "250ms",
      "how long to wait before answering" },
    { NULL, 0, 0, 0, NULL, NULL }
};

static int
kou_delay_configure_route(void *state, const kou_conf_t *route,
                          void **route_state, char *err, size_t errlen)
{
    const kou_host_t  *host = kou_delay_host;
    kou_delay_route_t *dr;

    (void) state;

    dr = malloc(sizeof(*dr));
    if (dr == NULL) {
        return host->conf_error(route, err, errlen, "delay: out of memory");
    }

    if (host->conf_duration(host->conf_get(route, "delay"), &dr->ms)
        != KOU_OK)
    {
        free(dr);
        return host->conf_error(route, err, errlen,
                                "delay: cannot read \"delay\"");
    }

    *route_state = dr;
    return KOU_OK;
}

static void
kou_delay_fire(void *arg)
{
    static const kou_header_t text[] = {
        { KOU_STR_INIT("Content-Type"), KOU_STR_INIT("text/plain") }
    };
    const kou_host_t *host = kou_delay_host;
    kou_delay_ctx_t  *ctx = arg;
    int               n;

    /*
     * The server frees a timer once it has fired, and responding may end
     * the request and run the cleanup below at once: forget the timer first
     * so the cleanup does not remove it a second time.
     */
    ctx->timer = NULL;

    n = snprintf(ctx->body, sizeof(ctx->body), "delayed %" PRIu64 "ms\n",
                 ctx->ms);

    /* A failure here means the connection is already gone: nothing to do. */
    (void) host->respond(ctx->r, 200, text, 1,
                         (kou_str_t) { ctx->body, (size_t) n });
}

/* The request ended: normally, or because the client or the worker left. */
static void
kou_delay_cleanup(void *arg)
{
    kou_delay_ctx_t *ctx = arg;

    if (ctx->timer != NULL) {
        kou_delay_host->timer_del(ctx->timer);
        ctx->timer = NULL;
    }
}

static int
kou_delay_content(kou_request_t *r, void *state, void *route_state)
{
    const kou_host_t  *host = kou_delay_host;
    kou_delay_route_t *dr = route_state;
    kou_delay_ctx_t   *ctx;

    (void) state;

    ctx = host->palloc(r, sizeof(*ctx));
    if (ctx == NULL) {
        return 503;
    }
    ctx->r = r;
    ctx->timer = NULL;
    ctx->ms = dr->ms;

    /*
     * Cleanup first: if it cannot be registered nothing has been started
     * yet, and once it is registered it copes with a timer that is NULL.
     */
    if (host->cleanup_add(r, kou_delay_cleanup, ctx) != KOU_OK) {
        return 503;
    }

    ctx->timer = host->timer_add(dr->ms, kou_delay_fire, ctx);
    if (ctx->timer == NULL) {
        return 503;
    }

    return KOU_PENDING;
}

static void
kou_delay_route_free(void *state, void *route_state)
{
    (void) state;

    free(route_state);
}

static const kou_module_t kou_delay_module = {
    KOU_MODULE_HEADER("delay", "1.0.0"),
    .conf = kou_delay_conf,
    .configure_route = kou_delay_configure_route,
    .content = kou_delay_content,
    .route_free = kou_delay_route_free,
};

KOU_EXPORT const kou_module_t *
kourier_module(const kou_host_t *host)
{
    kou_delay_host = host;
    return &kou_delay_module;
}
