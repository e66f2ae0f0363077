/*
 * What a module needs to talk HTTP/1.1 to another server (the proxy, and
 * any module that does the same): a strict response parser, the chunked
 * decoder behind an opaque state, back-pressure on the request body, and
 * a way to cut a response short. These are the ABI 1.1 host functions;
 * module.c puts them in kou_host.
 */

#ifndef KOU_HTTP_UPSTREAM_H
#define KOU_HTTP_UPSTREAM_H

#include "kou.h"

/*
 * Parse a response head from buf[0..len). head_request: the request was
 * HEAD (no body whatever the fields say). Stateless: every call scans from
 * buf[0], so the caller may move the bytes between calls; slices in h point
 * into buf. Reads only h->headers, h->max_headers and h->max_head from h
 * (h->size is the host wrapper's business). Returns KOU_OK, KOU_AGAIN
 * (valid so far, incomplete) or KOU_ERROR with h->error set to a static
 * text. Errors are reported at the first byte that makes the head invalid,
 * even before the head is complete. Framing follows RFC 9112 section 6.3:
 * 1xx, 204, 304 and responses to HEAD have no body; Transfer-Encoding
 * together with Content-Length, differing Content-Length values, "chunked"
 * twice and Transfer-Encoding in HTTP/1.0 are errors; chunked last means
 * chunked; another final coding means read until close (KOU_RESP_TE_OTHER
 * is set whenever a coding other than chunked is named).
 */
int kou_http_parse_response(const u_char *buf, size_t len, bool head_request,
                            kou_response_head_t *h);

/* ---- host functions (module.c puts them in kou_host) ---- */

/*
 * parse_response for modules: method decides HEAD; writes at most h->size
 * bytes of *h (a module built with a smaller structure is safe).
 */
int kou_host_parse_response(const char *buf, size_t len, kou_str_t method,
                            kou_response_head_t *h);

/* The core's chunked decoder (http_parse.h) behind kou_chunked_t. */
void kou_host_chunked_init(kou_chunked_t *ch, size_t max_trailer);
int kou_host_chunked_parse(kou_chunked_t *ch, const char *buf, size_t len,
                           size_t *consumed, kou_str_t *data);

/*
 * Pause (paused != 0) or resume handing request body bytes to the body
 * callback. Resuming posts the connection so feeding goes on from the loop.
 * KOU_OK.
 */
int kou_r_read_body_pause(kou_request_t *r, int paused);

/* 1 when the request came over TLS. */
int kou_r_is_tls(kou_request_t *r);

/*
 * Close the client connection after the current callback: the response is
 * cut short and the request ends aborted (its cleanups run from the loop).
 * KOU_OK.
 */
int kou_r_abort(kou_request_t *r);

/*
 * Answer 101 and turn the connection into a tunnel (see kou_host_t
 * .upgrade): the client's bytes go to on_data through the body machinery
 * (an endless body, ended by the client's FIN), the module's go out raw
 * with write(); finish() half-closes the client side once the output is
 * flushed, and the request ends when both directions have. KOU_OK or
 * KOU_ERROR (nothing sent).
 */
int kou_r_upgrade(kou_request_t *r, const kou_header_t *headers,
                  size_t nheaders, kou_body_pt on_data, void *arg);

#endif /* KOU_HTTP_UPSTREAM_H */
