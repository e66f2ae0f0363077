/*
 * hello: the smallest useful Kourier module, and the one the tutorial in
 * docs/modules.md builds step by step.
 *
 *     routes:
 *       - path: /hello
 *         handler: hello
 *         greeting: Hi there      # optional, default "Hello, World!"
 *
 * GET and HEAD get 200 text/plain with the greeting as the body. A route
 * that leaves `methods` out lets every method through to the handler; those
 * other methods get 405 with "Allow: GET, HEAD".
 *
 * This is also the plaintext benchmark endpoint, so the request path does no
 * allocation and no formatting: everything it sends is prepared once per
 * route in configure_route.
 */

#include <stdlib.h>
#include <string.h>

#include <kourier/module.h>

typedef struct kou_hello_route_s kou_hello_route_t;

struct kou_hello_route_s {
    kou_str_t          greeting;    /* points into the config: no copy */
    kou_header_t       headers[1];
};

static const kou_host_t *kou_hello_host;

static const kou_conf_key_t kou_hello_conf[] = {
    { "greeting", KOU_CONF_STR, KOU_SCOPE_ROUTE, 0, "Hello, World!",
      "the response body" },
    { NULL, 0, 0, 0, NULL, NULL }
};

static const kou_header_t kou_hello_405_headers[] = {
    { KOU_STR_INIT("Allow"), KOU_STR_INIT("GET, HEAD") },
    { KOU_STR_INIT("Content-Type"), KOU_STR_INIT("text/plain") }
};

static int
kou_hello_configure_route(void *state, const kou_conf_t *route,
                          void **route_state, char *err, size_t errlen)
{
    const kou_host_t  *host = kou_hello_host;
    kou_hello_route_t *hr;

    (void) state;

    hr = malloc(sizeof(*hr));
    if (hr == NULL) {
        return host->conf_error(route, err, errlen,
                                "hello: out of memory");
    }

    /* The schema gives "greeting" a default, so the key is always there. */
    if (host->conf_str(host->conf_get(route, "greeting"), &hr->greeting)
        != KOU_OK)
    {
        free(hr);
        return host->conf_error(route, err, errlen,
                                "hello: cannot read \"greeting\"");
    }

    hr->headers[0].name = KOU_STR("Content-Type");
    hr->headers[0].value = KOU_STR("text/plain");

    *route_state = hr;
    return KOU_OK;
}

static int
kou_hello_content(kou_request_t *r, void *state, void *route_state)
{
    const kou_host_t  *host = kou_hello_host;
    kou_hello_route_t *hr = route_state;
    kou_str_t          m = host->method(r);
    int                rc;

    (void) state;

    /* Methods are case-sensitive (RFC 9110 section 9.1). */
    if ((m.n == 3 && memcmp(m.p, "GET", 3) == 0)
        || (m.n == 4 && memcmp(m.p, "HEAD", 4) == 0))
    {
        /* For HEAD the server sends the same header block and no body. */
        rc = host->respond(r, 200, hr->headers, 1, hr->greeting);

    } else {
        rc = host->respond(r, 405, kou_hello_405_headers, 2,
                           KOU_STR("Method Not Allowed\n"));
    }

    return rc == KOU_OK ? KOU_DONE : KOU_ERROR;
}

/*
 * The loader calls this for every route state configure_route produced,
 * before it unloads the module. It matters most to the processes that only
 * load the configuration to check it (kourier -t, the reload validation):
 * without it each check would leak one block per route.
 */
static void
kou_hello_route_free(void *state, void *route_state)
{
    (void) state;

    free(route_state);
}

static const kou_module_t kou_hello_module = {
    KOU_MODULE_HEADER("hello", "1.0.0"),
    .conf = kou_hello_conf,
    .configure_route = kou_hello_configure_route,
    .content = kou_hello_content,
    .route_free = kou_hello_route_free,
};

KOU_EXPORT const kou_module_t *
kourier_module(const kou_host_t *host)
{
    kou_hello_host = host;
    return &kou_hello_module;
}
