/*
 * A request's life inside a worker: routing, the hook phases, the body
 * stream, the response framing, and the host functions modules call.
 */

#ifndef KOU_HTTP_REQUEST_H
#define KOU_HTTP_REQUEST_H

#include "config.h"
#include "conn.h"
#include "http_parse.h"
#include "kou.h"

typedef struct kou_arena_block_s kou_arena_block_t;
struct kou_arena_block_s {
    kou_arena_block_t *next;
};

typedef struct kou_cleanup_s kou_cleanup_t;
struct kou_cleanup_s {
    kou_cleanup_t  *next;
    kou_callback_pt cb;
    void           *arg;
};

typedef struct kou_var_s kou_var_t;
struct kou_var_s {
    kou_var_t *next;
    kou_str_t  name;
    kou_str_t  value;
};

typedef struct kou_hdr_list_s kou_hdr_list_t;
struct kou_hdr_list_s {
    kou_hdr_list_t *next;
    kou_header_t    h;
};

struct kou_request_s {
    kou_request_t          *next_free;   /* worker free list */
    kou_conn_t             *c;
    kou_http_parser_t       p;
    kou_str_t               path;        /* normalised */
    const kou_route_conf_t *route;
    uint64_t                start_ms;
    uint64_t                start_us;    /* CLOCK_MONOTONIC */
    uint64_t                end_us;      /* response complete, 0 before */
    int64_t                 start_time;  /* unix seconds */
    uint64_t                out_mark;    /* c->queued when the head was in */
    size_t                  head_end;    /* offset in c->in after the head */

    /* arena: bump allocation in the inline block, then malloc'd blocks */
    u_char                 *a_pos;
    u_char                 *a_end;
    kou_arena_block_t      *a_blocks;

    kou_cleanup_t          *cleanups;
    kou_var_t              *vars;        /* var_set, newest first */

    /* body */
    kou_http_chunked_t      chunked;
    uint64_t                body_left;   /* Content-Length bytes to come */
    uint64_t                body_seen;   /* payload bytes so far */
    uint64_t                max_body;
    kou_body_pt             body_cb;
    void                   *body_arg;
    unsigned                body_done:1;
    unsigned                body_wanted:1;
    unsigned                body_progress:1;  /* bytes since the timer was armed */
    unsigned                aborted:1;
    unsigned                body_paused:1;    /* read_body_pause: hold on */
    unsigned                tunnel:1;         /* after a 101 (upgrade) */
    unsigned                tunnel_ms_set:1;  /* tunnel_timeout was called */
    uint64_t                tunnel_ms;        /* its value; 0: no timeout */

    /* response */
    unsigned                head_sent:1;
    unsigned                resp_done:1;
    unsigned                resp_chunked:1;
    unsigned                resp_no_body:1;   /* HEAD, 204, 304 */
    unsigned                keep_alive:1;
    unsigned                in_content:1;
    int                     status;
    int64_t                 resp_length;      /* -1 unknown */
    uint64_t                resp_sent;        /* body bytes queued */
    kou_hdr_list_t         *resp_extra;       /* from response hooks */
    kou_hdr_list_t        **resp_extra_tail;
    kou_write_done_pt       done_cb;
    void                   *done_arg;

    kou_header_t            headers[];        /* limits.max_headers */
};

/*
 * Parse and start the request whose head begins at c->in + c->in_start.
 * Returns KOU_OK (a request is active or was answered), KOU_AGAIN (need
 * more bytes) or KOU_ERROR (the connection is closing).
 */
int kou_http_request_begin(kou_conn_t *c);

/*
 * Move body bytes from the input buffer to the handler (or drop them once
 * the response is complete). KOU_OK, or KOU_ERROR after an error response.
 */
int kou_http_body_feed(kou_request_t *r);

/* Log hooks, cleanups, release: the request is over. */
void kou_http_request_finalize(kou_request_t *r);

/* The request is being torn down with its connection. */
void kou_http_request_abort(kou_request_t *r);

/*
 * Answer with an error status (Connection: close, then lingering close).
 * r may be NULL (no request parsed). If a response already started, the
 * connection is simply closed.
 */
void kou_http_error(kou_conn_t *c, kou_request_t *r, int status,
                    const char *allow);

/* Called after a flush emptied the output: run a pending write-done. */
void kou_http_output_drained(kou_conn_t *c);

/* Return a request object to the free list (no hooks, no cleanups). */
void kou_http_request_free(kou_request_t *r);

/* Free the request free list (worker exit). */
void kou_http_request_pool_free(void);

/* tchar (RFC 9110 §5.6.2): 1 for the bytes a token may hold. */
extern const u_char kou_http_tchar[256];

/*
 * A field a module wants to send: a token name and a value without CR, LF
 * or NUL. Shared by responses and by requests a module sends upstream.
 */
bool kou_http_header_valid(const kou_header_t *h);

/* ---- http_response.c ---- */

/* "OK", "Not Found"...; "Unknown" for codes it does not know. */
kou_str_t kou_http_reason(int status);

/* "Date: ...\r\n" for the current second (cached). */
kou_str_t kou_http_date_line(void);

/*
 * The status line, Server and Date fields of a response ("HTTP/1.1 200
 * OK\r\nServer: kourier\r\nDate: ...\r\n"), cached per status for the
 * current second. status is 100..999.
 */
kou_str_t kou_http_status_lines(int status);

/* ---- host functions (module.c puts them in kou_host) ---- */

kou_str_t kou_r_method(kou_request_t *r);
kou_str_t kou_r_target(kou_request_t *r);
kou_str_t kou_r_path(kou_request_t *r);
kou_str_t kou_r_query(kou_request_t *r);
kou_str_t kou_r_host(kou_request_t *r);
int kou_r_version(kou_request_t *r);
size_t kou_r_header_count(kou_request_t *r);
int kou_r_header_at(kou_request_t *r, size_t i, kou_header_t *out);
int kou_r_header(kou_request_t *r, kou_str_t name, size_t nth,
                 kou_str_t *value);
const kou_header_t *kou_r_headers(kou_request_t *r, size_t *n);
const kou_request_info_t *kou_r_log_info(kou_request_t *r);
int64_t kou_r_content_length(kou_request_t *r);
kou_str_t kou_r_remote_addr(kou_request_t *r);
kou_str_t kou_r_route(kou_request_t *r);
void *kou_r_palloc(kou_request_t *r, size_t n);
int kou_r_cleanup_add(kou_request_t *r, kou_callback_pt cb, void *arg);
int kou_r_read_body(kou_request_t *r, kou_body_pt on_data, void *arg);
int kou_r_respond(kou_request_t *r, int status, const kou_header_t *headers,
                  size_t nheaders, kou_str_t body);
int kou_r_start(kou_request_t *r, int status, const kou_header_t *headers,
                size_t nheaders, int64_t length);
int kou_r_write(kou_request_t *r, kou_str_t data, kou_write_done_pt done,
                void *arg);
int kou_r_finish(kou_request_t *r);
int kou_r_response_header_add(kou_request_t *r, kou_str_t name,
                              kou_str_t value);
int kou_r_response_status(kou_request_t *r);
int kou_r_sendfile(kou_request_t *r, int fd, int64_t offset, int64_t length);
int kou_r_request_info(kou_request_t *r, kou_request_info_t *info);
int kou_r_var_set(kou_request_t *r, kou_str_t name, kou_str_t value);
int kou_r_var_get(kou_request_t *r, kou_str_t name, kou_str_t *value);

/*
 * How long the tunnel of an upgraded request may move no byte in either
 * direction before the server closes it (ms; 0: never). Until a module
 * calls it, limits.idle_timeout applies. KOU_OK, or KOU_ERROR when the
 * request has not been upgraded.
 */
int kou_r_tunnel_timeout(kou_request_t *r, uint64_t ms);

#endif /* KOU_HTTP_REQUEST_H */
