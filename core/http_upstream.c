/*
 * Talking to upstream servers: the response parser, the chunked decoder for
 * modules, request-body back-pressure and aborting a response.
 *
 * The response parser is the request parser's counterpart and as strict:
 * a proxy that relays what its upstream sends is only as safe as the
 * parser that reads it, and a response whose framing two implementations
 * could read differently (Content-Length with Transfer-Encoding, two
 * lengths) is how responses get smuggled. It keeps no state: a response
 * head is small and arrives in one or two reads, so scanning it again from
 * the start is cheaper than the bookkeeping of a resumable parser.
 */

#include "conn.h"
#include "http_parse.h"
#include "http_request.h"
#include "http_upstream.h"

_Static_assert(sizeof(kou_chunked_t) >= sizeof(kou_http_chunked_t),
               "kou_chunked_t is too small for the core's decoder");
_Static_assert(_Alignof(kou_chunked_t) >= _Alignof(kou_http_chunked_t),
               "kou_chunked_t is not aligned for the core's decoder");


/* field-vchar, SP and HTAB: what a field value or reason phrase may hold */
static inline bool
kou_up_text(u_char ch)
{
    return ch == '\t' || (ch >= 0x20 && ch != 0x7f);
}

/* ---- status line and fields ---- */

#define KOU_UP_FAIL(h, msg) \
    do {                    \
        (h)->error = (msg); \
        return KOU_ERROR;   \
    } while (0)

/*
 * Status line: "HTTP/1.x SP 3DIGIT SP reason CRLF". Every byte is judged
 * as soon as it is there, so a bad prefix fails without waiting for more.
 * Sets *pos past the CRLF on KOU_OK.
 */
static int
kou_up_status_line(const u_char *buf, size_t len, kou_response_head_t *h,
                   size_t *pos)
{
    static const char proto[] = "HTTP/1.";
    size_t            i, rs;

    for (i = 0; i < sizeof(proto) - 1; i++) {
        if (i == len) {
            return KOU_AGAIN;
        }
        if (buf[i] != (u_char) proto[i]) {
            KOU_UP_FAIL(h, "malformed status line (not HTTP/1.x)");
        }
    }
    if (i == len) {
        return KOU_AGAIN;
    }
    if (buf[i] < '0' || buf[i] > '9') {
        KOU_UP_FAIL(h, "malformed HTTP version");
    }
    h->version = buf[i] == '0' ? 10 : 11;
    i++;
    if (i == len) {
        return KOU_AGAIN;
    }
    if (buf[i] != ' ') {
        KOU_UP_FAIL(h, "malformed status line (no SP after the version)");
    }
    i++;
    h->status = 0;
    for (size_t k = 0; k < 3; k++, i++) {
        if (i == len) {
            return KOU_AGAIN;
        }
        if (buf[i] < '0' || buf[i] > '9' || (k == 0 && (buf[i] < '1'
                                                        || buf[i] > '5')))
        {
            KOU_UP_FAIL(h, "malformed status code");
        }
        h->status = h->status * 10 + (buf[i] - '0');
    }
    if (i == len) {
        return KOU_AGAIN;
    }
    if (buf[i] != ' ') {
        KOU_UP_FAIL(h, "malformed status line (no SP after the status)");
    }
    rs = ++i;
    for (;; i++) {
        if (i == len) {
            return KOU_AGAIN;
        }
        if (buf[i] == '\r') {
            break;
        }
        if (!kou_up_text(buf[i])) {
            KOU_UP_FAIL(h, "invalid byte in the reason phrase");
        }
    }
    h->reason.p = (const char *) buf + rs;
    h->reason.n = i - rs;
    if (i + 1 == len) {
        return KOU_AGAIN;
    }
    if (buf[i + 1] != '\n') {
        KOU_UP_FAIL(h, "CR not followed by LF");
    }
    *pos = i + 2;
    return KOU_OK;
}

/*
 * One field line at buf[*pos]. KOU_OK with the field in *f, KOU_DONE at
 * the empty line that ends the head (*pos past it), KOU_AGAIN, KOU_ERROR.
 */
static int
kou_up_field(const u_char *buf, size_t len, kou_response_head_t *h,
             size_t *pos, kou_header_t *f)
{
    size_t i = *pos, ns, vs, ve;

    if (i == len) {
        return KOU_AGAIN;
    }
    if (buf[i] == '\r') {
        if (i + 1 == len) {
            return KOU_AGAIN;
        }
        if (buf[i + 1] != '\n') {
            KOU_UP_FAIL(h, "CR not followed by LF");
        }
        *pos = i + 2;
        return KOU_DONE;
    }
    if (buf[i] == ' ' || buf[i] == '\t') {
        KOU_UP_FAIL(h, "obs-fold (a field line starting with whitespace)");
    }
    ns = i;
    for (;; i++) {
        if (i == len) {
            return KOU_AGAIN;
        }
        if (buf[i] == ':') {
            break;
        }
        if (!kou_http_tchar[buf[i]]) {
            KOU_UP_FAIL(h, buf[i] == ' ' || buf[i] == '\t'
                               ? "whitespace before the colon of a field"
                               : "invalid byte in a field name");
        }
    }
    if (i == ns) {
        KOU_UP_FAIL(h, "empty field name");
    }
    f->name.p = (const char *) buf + ns;
    f->name.n = i - ns;
    i++;
    while (i < len && (buf[i] == ' ' || buf[i] == '\t')) {
        i++;
    }
    vs = i;
    for (;; i++) {
        if (i == len) {
            return KOU_AGAIN;
        }
        if (buf[i] == '\r') {
            break;
        }
        if (!kou_up_text(buf[i])) {
            KOU_UP_FAIL(h, buf[i] == '\n' ? "bare LF as a line end"
                                          : "control byte in a field value");
        }
    }
    ve = i;
    while (ve > vs && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t')) {
        ve--;
    }
    f->value.p = (const char *) buf + vs;
    f->value.n = ve - vs;
    if (i + 1 == len) {
        return KOU_AGAIN;
    }
    if (buf[i + 1] != '\n') {
        KOU_UP_FAIL(h, "CR not followed by LF");
    }
    *pos = i + 2;
    return KOU_OK;
}

/* ---- list-valued fields ---- */

/*
 * Next element of a comma-separated list (RFC 9110 section 5.6.1), empty
 * elements skipped. Returns false at the end.
 */
static bool
kou_up_list_next(kou_str_t v, size_t *at, kou_str_t *el)
{
    size_t i = *at, s, e;

    for (;;) {
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ',')) {
            i++;
        }
        if (i == v.n) {
            *at = i;
            return false;
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
            return true;
        }
    }
}

/* Content-Length: one or more equal 1*DIGIT values, without overflow. */
static int
kou_up_content_length(kou_str_t v, kou_response_head_t *h)
{
    kou_str_t el;
    size_t    at = 0;
    bool      any = false;

    while (kou_up_list_next(v, &at, &el)) {
        int64_t n = 0;

        for (size_t i = 0; i < el.n; i++) {
            if (el.p[i] < '0' || el.p[i] > '9') {
                KOU_UP_FAIL(h, "malformed Content-Length");
            }
            int d = el.p[i] - '0';

            if (n > (INT64_MAX - d) / 10) {
                KOU_UP_FAIL(h, "Content-Length overflows");
            }
            n = n * 10 + d;
        }
        if (h->content_length >= 0 && h->content_length != n) {
            KOU_UP_FAIL(h, "differing Content-Length values");
        }
        h->content_length = n;
        any = true;
    }
    if (!any) {
        KOU_UP_FAIL(h, "empty Content-Length");
    }
    return KOU_OK;
}

/*
 * Transfer-Encoding: transfer-coding = token *( OWS ";" OWS parameter ).
 * Parameters are not interpreted; the coding name must be a token.
 * *chunked_last tells whether the last coding seen is chunked.
 */
static int
kou_up_transfer_encoding(kou_str_t v, kou_response_head_t *h,
                         unsigned *nchunked, bool *chunked_last)
{
    kou_str_t el;
    size_t    at = 0;
    bool      any = false;

    while (kou_up_list_next(v, &at, &el)) {
        size_t n = 0;

        while (n < el.n && kou_http_tchar[(u_char) el.p[n]]) {
            n++;
        }
        if (n == 0) {
            KOU_UP_FAIL(h, "malformed Transfer-Encoding");
        }
        if (kou_str_eq_lit(((kou_str_t){ el.p, n }), "chunked")) {
            if (++*nchunked > 1) {
                KOU_UP_FAIL(h, "Transfer-Encoding names chunked twice");
            }
            *chunked_last = true;
        } else {
            if (*nchunked > 0) {
                *chunked_last = false;
            }
            h->flags |= KOU_RESP_TE_OTHER;
        }
        any = true;
    }
    if (!any) {
        KOU_UP_FAIL(h, "empty Transfer-Encoding");
    }
    return KOU_OK;
}

static void
kou_up_connection(kou_str_t v, kou_response_head_t *h)
{
    kou_str_t el;
    size_t    at = 0;

    while (kou_up_list_next(v, &at, &el)) {
        if (kou_str_eq_lit(el, "close")) {
            h->flags |= KOU_RESP_CLOSE;
        } else if (kou_str_eq_lit(el, "keep-alive")) {
            h->flags |= KOU_RESP_KEEP_ALIVE;
        } else if (kou_str_eq_lit(el, "upgrade")) {
            h->flags |= KOU_RESP_UPGRADE;
        }
    }
}

/* ---- the parser ---- */

int
kou_http_parse_response(const u_char *buf, size_t len, bool head_request,
                        kou_response_head_t *h)
{
    size_t   pos = 0, limit = kou_min(len, h->max_head);
    bool     te = false, chunked_last = false;
    unsigned nchunked = 0;
    int      rc;

    h->error = NULL;
    h->status = 0;
    h->version = 0;
    h->reason.p = NULL;
    h->reason.n = 0;
    h->nheaders = 0;
    h->head_len = 0;
    h->body = KOU_BODY_NONE;
    h->content_length = -1;
    h->flags = 0;

    /* NUL, like every CTL, fails the byte classes of every part */
    rc = kou_up_status_line(buf, limit, h, &pos);
    for (;;) {
        kou_header_t f;

        if (rc == KOU_AGAIN) {
            if (len >= h->max_head) {
                KOU_UP_FAIL(h, "response head too large");
            }
            return KOU_AGAIN;
        }
        if (rc != KOU_OK) {
            return KOU_ERROR;
        }
        rc = kou_up_field(buf, limit, h, &pos, &f);
        if (rc == KOU_DONE) {
            break;
        }
        if (rc != KOU_OK) {
            continue;
        }
        if (h->nheaders == h->max_headers) {
            KOU_UP_FAIL(h, "too many fields in the response head");
        }
        h->headers[h->nheaders++] = f;
    }
    h->head_len = pos;

    for (size_t i = 0; i < h->nheaders; i++) {
        const kou_header_t *f = &h->headers[i];

        if (kou_str_eq_lit(f->name, "content-length")) {
            if (kou_up_content_length(f->value, h) != KOU_OK) {
                return KOU_ERROR;
            }
        } else if (kou_str_eq_lit(f->name, "transfer-encoding")) {
            te = true;
            if (kou_up_transfer_encoding(f->value, h, &nchunked,
                                         &chunked_last)
                != KOU_OK)
            {
                return KOU_ERROR;
            }
        } else if (kou_str_eq_lit(f->name, "connection")) {
            kou_up_connection(f->value, h);
        }
    }
    /*
     * Ambiguous framing is refused whatever the status: even where no body
     * follows (204, HEAD) a proxy must not keep using a connection whose
     * peer frames messages in a way another reader would not.
     */
    if (te && h->content_length >= 0) {
        KOU_UP_FAIL(h, "Transfer-Encoding together with Content-Length");
    }
    if (te && h->version == 10) {
        KOU_UP_FAIL(h, "Transfer-Encoding in an HTTP/1.0 response");
    }
    if (head_request || h->status < 200 || h->status == 204
        || h->status == 304)
    {
        h->body = KOU_BODY_NONE;
    } else if (te) {
        h->body = chunked_last ? KOU_BODY_CHUNKED : KOU_BODY_CLOSE;
    } else if (h->content_length >= 0) {
        h->body = KOU_BODY_LENGTH;
    } else {
        h->body = KOU_BODY_CLOSE;
    }
    return KOU_OK;
}

/* ---- host functions ---- */

int
kou_host_parse_response(const char *buf, size_t len, kou_str_t method,
                        kou_response_head_t *h)
{
    kou_response_head_t out;
    size_t              size;
    int                 rc;

    if (h == NULL || h->size < offsetof(kou_response_head_t, error)
        || (h->headers == NULL && h->max_headers > 0))
    {
        return KOU_ERROR;
    }
    size = kou_min(h->size, sizeof(out));
    memset(&out, 0, sizeof(out));
    out.headers = h->headers;
    out.max_headers = h->max_headers;
    out.max_head = h->max_head;
    rc = kou_http_parse_response((const u_char *) buf, len,
                                 kou_str_eq(method, KOU_STR("HEAD")), &out);
    out.size = h->size;
    memcpy(h, &out, size);
    return rc;
}

void
kou_host_chunked_init(kou_chunked_t *ch, size_t max_trailer)
{
    memset(ch, 0, sizeof(*ch));
    kou_http_chunked_init((kou_http_chunked_t *) (void *) ch, max_trailer);
}

int
kou_host_chunked_parse(kou_chunked_t *ch, const char *buf, size_t len,
                       size_t *consumed, kou_str_t *data)
{
    return kou_http_parse_chunked((kou_http_chunked_t *) (void *) ch,
                                  (const u_char *) buf, len, consumed, data);
}

int
kou_r_read_body_pause(kou_request_t *r, int paused)
{
    kou_conn_t *c = r->c;

    if (paused) {
        r->body_paused = 1;
        return KOU_OK;
    }
    if (r->body_paused) {
        r->body_paused = 0;
        if (!c->in_process) {
            kou_conn_post(c);
        }
    }
    return KOU_OK;
}

int
kou_r_is_tls(kou_request_t *r)
{
    return r->c->tls != NULL;
}

int
kou_r_abort(kou_request_t *r)
{
    kou_conn_t *c = r->c;

    /*
     * What is queued goes out now, as far as the socket takes it, so the
     * client sees where the message stops. No write-done callback may run
     * from here: the caller is in the middle of giving up.
     */
    r->done_cb = NULL;
    if (!c->error && c->out_bytes > 0) {
        kou_conn_flush(c);
    }
    /*
     * c->error makes the next run close the connection and abort the
     * request (its log entry says so). Pausing the body first keeps the
     * handler's body callback from running in that last run.
     */
    r->keep_alive = 0;
    r->body_paused = 1;
    c->error = 1;
    if (!c->in_process) {
        kou_conn_post(c);
    }
    return KOU_OK;
}


int
kou_r_upgrade(kou_request_t *r, const kou_header_t *headers, size_t nheaders,
              kou_body_pt on_data, void *arg)
{
    static const char conn_upgrade[] = "Connection: upgrade\r\n";
    kou_conn_t       *c = r->c;
    kou_str_t         reason = kou_http_reason(101);
    kou_str_t         date = kou_http_date_line();
    kou_str_t         v;
    size_t            size = 64 + reason.n + date.n + sizeof(conn_upgrade);
    u_char           *p, *start;

    if (r->head_sent || r->resp_done || c->error || on_data == NULL
        || r->p.version != 11 || !r->p.conn_upgrade || r->p.chunked
        || r->p.content_length > 0
        || kou_r_header(r, KOU_STR("Upgrade"), 0, &v) != KOU_OK)
    {
        return KOU_ERROR;
    }
    for (size_t i = 0; i < nheaders; i++) {
        if (!kou_http_header_valid(&headers[i])) {
            return KOU_ERROR;
        }
        size += headers[i].name.n + headers[i].value.n + 4;
    }
    start = p = kou_conn_reserve(c, size);
    if (p == NULL) {
        c->error = 1;
        return KOU_ERROR;
    }
    memcpy(p, "HTTP/1.1 101 ", 13);
    p += 13;
    memcpy(p, reason.p, reason.n);
    p += reason.n;
    memcpy(p, "\r\nServer: kourier\r\n", 19);
    p += 19;
    memcpy(p, date.p, date.n);
    p += date.n;
    memcpy(p, conn_upgrade, sizeof(conn_upgrade) - 1);
    p += sizeof(conn_upgrade) - 1;
    for (size_t i = 0; i < nheaders; i++) {
        const kou_header_t *h = &headers[i];

        /* the server owns the framing and Connection, even here */
        if (kou_str_eq_lit(h->name, "connection")
            || kou_str_eq_lit(h->name, "content-length")
            || kou_str_eq_lit(h->name, "transfer-encoding"))
        {
            continue;
        }
        memcpy(p, h->name.p, h->name.n);
        p += h->name.n;
        *p++ = ':';
        *p++ = ' ';
        memcpy(p, h->value.p, h->value.n);
        p += h->value.n;
        *p++ = '\r';
        *p++ = '\n';
    }
    *p++ = '\r';
    *p++ = '\n';
    kou_conn_commit(c, (size_t) (p - start));

    r->status = 101;
    r->head_sent = 1;
    r->resp_length = -1;
    r->resp_chunked = 0;
    r->resp_no_body = 0;
    r->keep_alive = 0;
    c->closing = 1;

    /*
     * From here the client's bytes are an endless body: the body machinery
     * already streams and pauses the way a tunnel needs, and works the same
     * over TLS; the tunnel has its own idle timer (tunnel_timeout), and the
     * client's FIN or close_notify is the body's end (last = 1).
     */
    r->tunnel = 1;
    r->body_done = 0;
    r->body_left = UINT64_MAX;
    r->body_cb = on_data;
    r->body_arg = arg;
    r->body_wanted = 1;
    r->body_paused = 0;
    if (!c->in_process) {
        kou_conn_post(c);
    }
    return KOU_OK;
}
