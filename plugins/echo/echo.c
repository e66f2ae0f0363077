/*
 * echo: answers any request with a JSON description of exactly what the
 * server received, every byte string base64-encoded so that nothing needs
 * escaping and nothing is lost:
 *
 *     {"method": B64, "uri": B64, "version": B64,
 *      "headers": [[B64name, B64value], ...], "body": B64}
 *
 * "uri" is the request-target as received, "version" is "HTTP/1.1" or
 * "HTTP/1.0", the headers are in the order received and the body is
 * de-chunked. The integration tests use it to see the request the way a
 * handler sees it; it also shows how a module reads a request body.
 *
 *     routes:
 *       - prefix: /echo
 *         handler: echo
 *
 * The body size limit is the route's max_body, enforced by the server before
 * a byte reaches this module.
 */

#include <string.h>

#include <kourier/module.h>

/* The first buffer when the length is not declared (chunked). */
#define KOU_ECHO_FIRST_CHUNK  4096
/* Never trust a declared length for more than this up front. */
#define KOU_ECHO_MAX_PREALLOC (1024 * 1024)

typedef struct {
    char   *buf;
    size_t  len;
    size_t  cap;
    int     failed;     /* out of memory: answer 503 once the body is in */
} kou_echo_ctx_t;

static const kou_host_t *kou_echo_host;

static const char kou_echo_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Length of the base64 form of n bytes, padding included. */
static size_t
kou_echo_b64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

/*
 * Write s as a quoted base64 string (RFC 4648 section 4, with padding) at p;
 * returns the end. The caller sized the buffer with kou_echo_b64_len() + 2.
 */
static char *
kou_echo_put_b64(char *p, kou_str_t s)
{
    const unsigned char *in = (const unsigned char *) s.p;
    size_t               i = 0;
    uint32_t             v;

    *p++ = '"';

    for (; s.n - i >= 3; i += 3) {
        v = (uint32_t) in[i] << 16 | (uint32_t) in[i + 1] << 8 | in[i + 2];
        *p++ = kou_echo_b64[v >> 18];
        *p++ = kou_echo_b64[v >> 12 & 0x3f];
        *p++ = kou_echo_b64[v >> 6 & 0x3f];
        *p++ = kou_echo_b64[v & 0x3f];
    }

    if (s.n - i == 1) {
        v = (uint32_t) in[i] << 16;
        *p++ = kou_echo_b64[v >> 18];
        *p++ = kou_echo_b64[v >> 12 & 0x3f];
        *p++ = '=';
        *p++ = '=';

    } else if (s.n - i == 2) {
        v = (uint32_t) in[i] << 16 | (uint32_t) in[i + 1] << 8;
        *p++ = kou_echo_b64[v >> 18];
        *p++ = kou_echo_b64[v >> 12 & 0x3f];
        *p++ = kou_echo_b64[v >> 6 & 0x3f];
        *p++ = '=';
    }

    *p++ = '"';
    return p;
}

static char *
kou_echo_put(char *p, const char *lit)
{
    size_t n = strlen(lit);

    memcpy(p, lit, n);
    return p + n;
}

/* Build and send the JSON answer once the whole body is in ctx. */
static void
kou_echo_answer(kou_request_t *r, kou_echo_ctx_t *ctx)
{
    static const kou_header_t json[] = {
        { KOU_STR_INIT("Content-Type"), KOU_STR_INIT("application/json") }
    };
    const kou_host_t *host = kou_echo_host;
    kou_str_t         method, target, version, body;
    kou_header_t      h;
    size_t            nheaders, size, i;
    char             *out, *p;

    method = host->method(r);
    target = host->target(r);
    version = host->version(r) == 10 ? KOU_STR("HTTP/1.0")
                                     : KOU_STR("HTTP/1.1");
    body.p = ctx->buf;
    body.n = ctx->len;
    nheaders = host->header_count(r);

    /*
     * One exact-size allocation: every string costs its base64 length plus
     * two quotes; the rest is punctuation, counted generously.
     */
    size = sizeof("{\"method\": , \"uri\": , \"version\": , \"headers\": [], "
                  "\"body\": }")
           + kou_echo_b64_len(method.n) + 2
           + kou_echo_b64_len(target.n) + 2
           + kou_echo_b64_len(version.n) + 2
           + kou_echo_b64_len(body.n) + 2;

    for (i = 0; i < nheaders; i++) {
        if (host->header_at(r, i, &h) != KOU_OK) {
            nheaders = i;
            break;
        }
        size += sizeof(", [, ]") + kou_echo_b64_len(h.name.n) + 2
                + kou_echo_b64_len(h.value.n) + 2;
    }

    out = host->palloc(r, size);
    if (out == NULL) {
        host->respond(r, 503, NULL, 0, KOU_STR("Out of memory\n"));
        return;
    }

    p = kou_echo_put(out, "{\"method\": ");
    p = kou_echo_put_b64(p, method);
    p = kou_echo_put(p, ", \"uri\": ");
    p = kou_echo_put_b64(p, target);
    p = kou_echo_put(p, ", \"version\": ");
    p = kou_echo_put_b64(p, version);
    p = kou_echo_put(p, ", \"headers\": [");

    for (i = 0; i < nheaders; i++) {
        host->header_at(r, i, &h);
        p = kou_echo_put(p, i == 0 ? "[" : ", [");
        p = kou_echo_put_b64(p, h.name);
        p = kou_echo_put(p, ", ");
        p = kou_echo_put_b64(p, h.value);
        *p++ = ']';
    }

    p = kou_echo_put(p, "], \"body\": ");
    p = kou_echo_put_b64(p, body);
    *p++ = '}';

    host->respond(r, 200, json, 1, (kou_str_t) { out, (size_t) (p - out) });
}

/*
 * Append a piece of the body. The buffer comes from the request's pool,
 * which cannot realloc: a full buffer is replaced by one twice as large and
 * the old one is simply left to the pool (freed with the request), so the
 * waste is bounded by the final size.
 */
static void
kou_echo_on_body(kou_request_t *r, kou_str_t data, int last, void *arg)
{
    const kou_host_t *host = kou_echo_host;
    kou_echo_ctx_t   *ctx = arg;
    size_t            cap;
    char             *buf;

    if (data.n > 0 && !ctx->failed) {
        if (ctx->cap - ctx->len < data.n) {
            cap = ctx->cap ? ctx->cap * 2 : KOU_ECHO_FIRST_CHUNK;
            while (cap - ctx->len < data.n) {
                cap *= 2;
            }

            buf = host->palloc(r, cap);
            if (buf == NULL) {
                /* Keep reading so the connection stays in sync. */
                ctx->failed = 1;
                goto done;
            }

            if (ctx->len > 0) {
                memcpy(buf, ctx->buf, ctx->len);
            }
            ctx->buf = buf;
            ctx->cap = cap;
        }

        memcpy(ctx->buf + ctx->len, data.p, data.n);
        ctx->len += data.n;
    }

done:

    if (!last) {
        return;
    }

    if (ctx->failed) {
        host->respond(r, 503, NULL, 0, KOU_STR("Out of memory\n"));
        return;
    }

    kou_echo_answer(r, ctx);
}

static int
kou_echo_content(kou_request_t *r, void *state, void *route_state)
{
    const kou_host_t *host = kou_echo_host;
    kou_echo_ctx_t   *ctx;
    int64_t           length;

    (void) state;
    (void) route_state;

    ctx = host->palloc(r, sizeof(*ctx));
    if (ctx == NULL) {
        return 503;
    }
    memset(ctx, 0, sizeof(*ctx));

    /* A declared length lets the common case fill a single buffer. */
    length = host->content_length(r);
    if (length > 0 && length <= KOU_ECHO_MAX_PREALLOC) {
        ctx->buf = host->palloc(r, (size_t) length);
        if (ctx->buf == NULL) {
            return 503;
        }
        ctx->cap = (size_t) length;
    }

    if (host->read_body(r, kou_echo_on_body, ctx) != KOU_OK) {
        return KOU_ERROR;
    }

    /*
     * The answer is sent from kou_echo_on_body(), possibly already (a body
     * that was in the buffer, or none at all); either way this hook is done
     * and the server takes it from here.
     */
    return KOU_PENDING;
}

static const kou_module_t kou_echo_module = {
    KOU_MODULE_HEADER("echo", "1.0.0"),
    .content = kou_echo_content,
};

KOU_EXPORT const kou_module_t *
kourier_module(const kou_host_t *host)
{
    kou_echo_host = host;
    return &kou_echo_module;
}
