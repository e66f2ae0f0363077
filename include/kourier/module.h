/*
 * Kourier module ABI.
 *
 * This is the only header a module includes. A module is a shared object
 * that exports exactly one symbol, kourier_module(); the server passes it a
 * table of host functions (kou_host_t) and receives a description of the
 * module (kou_module_t). A module links against no symbol of the server.
 *
 * Both structures are append-only: fields are never reordered or removed,
 * new ones go at the end and bump KOU_ABI_MINOR. A module built against an
 * older minor keeps working; the server refuses a module whose abi_major
 * differs from its own or whose abi_minor is newer than its own.
 *
 * Threading: each worker process is single-threaded. Every callback runs on
 * the worker's event loop; nothing here is thread-safe and nothing needs to be.
 */

#ifndef KOURIER_MODULE_H
#define KOURIER_MODULE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** ABI version this header describes. */
#define KOU_ABI_MAJOR 1
#define KOU_ABI_MINOR 3

/** Export macro for the entry function. */
#define KOU_EXPORT __attribute__((visibility("default")))

/**
 * Return codes shared by the server and modules. Hooks may also return an
 * HTTP status (100..599), which the server answers with an error response.
 */
#define KOU_OK        0   /**< go on / success */
#define KOU_ERROR    -1   /**< failure; a hook returning it yields a 500 */
#define KOU_AGAIN    -2   /**< not ready yet (would block, need more input) */
#define KOU_DECLINED -3   /**< not mine: the next hook runs; not an error */
#define KOU_DONE     -4   /**< the response has been produced */
#define KOU_PENDING  -5   /**< the hook will finish later from a callback */

/** Log levels for kou_host_t.log. */
#define KOU_LOG_ERR    3
#define KOU_LOG_WARN   4
#define KOU_LOG_NOTICE 5
#define KOU_LOG_INFO   6
#define KOU_LOG_DEBUG  7

/** Events for kou_host_t.io_add / io_mod (edge-triggered). */
#define KOU_IO_READ  0x1u
#define KOU_IO_WRITE 0x2u
#define KOU_IO_HUP   0x4u  /**< reported only: peer closed or error */

/** A byte string: pointer and length, not NUL-terminated. */
typedef struct kou_str_s {
    const char *p;
    size_t      n;
} kou_str_t;

/** A string literal as a kou_str_t (an expression). */
#define KOU_STR(s) ((kou_str_t){ (s), sizeof(s) - 1 })

/** A string literal as a kou_str_t initialiser (for static data). */
#define KOU_STR_INIT(s) { (s), sizeof(s) - 1 }

/** A header field: name and value, both without surrounding whitespace. */
typedef struct kou_header_s {
    kou_str_t name;
    kou_str_t value;
} kou_header_t;

/** A request in flight. Opaque: use the accessors in kou_host_t. */
typedef struct kou_request_s kou_request_t;

/** A node of the parsed configuration. Opaque: use the conf_* accessors. */
typedef struct kou_conf_s kou_conf_t;

/** A one-shot timer created by kou_host_t.timer_add. */
typedef struct kou_htimer_s kou_htimer_t;

/** A file descriptor watched by the worker's event loop. */
typedef struct kou_io_s kou_io_t;

/**
 * Facts about a request for log hooks (host->request_info). Append-only:
 * `size` is what the server filled in.
 */
typedef struct kou_request_info_s {
    size_t    size;
    int       status;          /**< 0 if no response was produced */
    uint64_t  bytes_in;        /**< head + body bytes received */
    uint64_t  bytes_out;       /**< head + body bytes queued to the client */
    uint64_t  start_us;        /**< CLOCK_MONOTONIC µs when the head was in */
    uint64_t  end_us;          /**< ... when the response completed (0: not) */
    int64_t   start_time;      /**< wall clock, unix seconds, of start */
    kou_str_t request_line;    /**< as received, without CRLF */
    kou_str_t route;           /**< the matched route's path, "" if none */
    int       aborted;         /**< 1 if the connection ended it early */
    uint64_t  body_bytes_out;  /**< response body bytes, without the head
                                    or chunk framing (ABI 1.1) */
} kou_request_info_t;

/** Parse-error statuses counted per slot, in this order. */
#define KOU_STATS_PARSE_STATUSES { 400, 408, 413, 414, 417, 431, 501, 505 }
#define KOU_STATS_NPARSE 8

/**
 * Per-slot counters the server keeps in shared memory (one writer each).
 * Counters only grow; gauges are reset when a slot gets a new worker.
 */
typedef struct kou_slot_stats_s {
    uint64_t pid;                 /**< the worker using the slot, 0 none */
    uint64_t connections_accepted;
    uint64_t conns_reading;       /**< gauge */
    uint64_t conns_writing;       /**< gauge */
    uint64_t conns_idle;          /**< gauge */
    uint64_t requests;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t parse_errors[KOU_STATS_NPARSE];
    uint64_t tls_handshakes_ok;
    uint64_t tls_handshakes_failed;
    uint64_t reserved[16];
} kou_slot_stats_t;

/** Server-wide state shared by the master (host->server_stats). */
typedef struct kou_server_stats_s {
    size_t            size;
    uint64_t          generation;
    uint64_t          reloads_ok;
    uint64_t          reloads_error;
    int64_t           last_reload_ok_time;   /**< unix seconds, 0 never */
    uint64_t          worker_restarts;
    int64_t           start_time;            /**< unix seconds */
    const char       *version;
    const char       *simd;                  /**< parser tier */
    int               nslots;
    const kou_slot_stats_t *slots;           /**< nslots entries */
} kou_server_stats_t;

/** Types of configuration values, checked by the server before configure. */
typedef enum {
    KOU_CONF_STR,       /**< any scalar, taken as text */
    KOU_CONF_INT,       /**< decimal integer, optionally negative */
    KOU_CONF_BOOL,      /**< true/false, on/off, yes/no */
    KOU_CONF_SIZE,      /**< bytes with optional k/m/g suffix (1024-based) */
    KOU_CONF_DURATION,  /**< ms/s/m/h suffix; a bare number is seconds */
    KOU_CONF_LIST,      /**< a YAML sequence (or a single scalar) */
    KOU_CONF_MAP,       /**< a YAML mapping */
    KOU_CONF_ANY        /**< not checked */
} kou_conf_type_e;

/** Where a key may appear. */
#define KOU_SCOPE_MODULE 0x1u  /**< under modules: NAME: */
#define KOU_SCOPE_ROUTE  0x2u  /**< in a route handled (or hooked) by the module */

/**
 * One key of a module's configuration schema. The array ends with an entry
 * whose key is NULL. The server reports unknown keys, wrong types and missing
 * required keys with file:line:column before the module sees its config, and
 * materialises default_value (parsed as `type`) for absent optional keys.
 */
typedef struct kou_conf_key_s {
    const char     *key;
    kou_conf_type_e type;
    unsigned        scope;          /**< KOU_SCOPE_* bits */
    int             required;
    const char     *default_value;  /**< NULL: no default */
    const char     *help;           /**< one line, for docs and errors */
} kou_conf_key_t;

/**
 * A request-phase hook. module_state is what configure() produced;
 * route_state is what configure_route() produced for the matched route (NULL
 * when the module has no configure_route). Returns KOU_OK / KOU_DECLINED (go
 * on), KOU_DONE (a response was produced), KOU_PENDING (it will be produced
 * later from a callback), KOU_ERROR (500) or an HTTP status >= 400.
 */
typedef int (*kou_hook_pt)(kou_request_t *r, void *module_state,
                           void *route_state);

/** Body data callback: `last` is 1 on the final call (data may be empty). */
typedef void (*kou_body_pt)(kou_request_t *r, kou_str_t data, int last,
                            void *arg);

/** Generic callbacks. */
typedef void (*kou_callback_pt)(void *arg);
typedef void (*kou_write_done_pt)(kou_request_t *r, void *arg);
typedef void (*kou_io_pt)(kou_io_t *io, int fd, unsigned events, void *arg);

/**
 * A text sink (ABI 1.2): receives `n` bytes at `p`; used to collect
 * metric series from modules at scrape time.
 */
typedef void (*kou_emit_pt)(void *arg, const char *p, size_t n);

/** How a response body is delimited (kou_response_head_t.body). */
#define KOU_BODY_NONE    0  /**< no body: HEAD, 1xx, 204, 304 */
#define KOU_BODY_LENGTH  1  /**< content_length bytes */
#define KOU_BODY_CHUNKED 2  /**< chunked coding: decode with chunked_parse */
#define KOU_BODY_CLOSE   3  /**< everything until the connection closes */

/** Facts of a response head (kou_response_head_t.flags). */
#define KOU_RESP_CLOSE      0x1u  /**< Connection names "close" */
#define KOU_RESP_KEEP_ALIVE 0x2u  /**< Connection names "keep-alive" */
#define KOU_RESP_UPGRADE    0x4u  /**< Connection names "upgrade" */
#define KOU_RESP_TE_OTHER   0x8u  /**< Transfer-Encoding names a coding
                                       other than chunked */

/**
 * A response head parsed by host->parse_response (a proxy reading its
 * upstream). The caller fills the first four fields; the rest is output.
 * Slices point into the buffer given to parse_response.
 */
typedef struct kou_response_head_s {
    size_t        size;            /**< in: sizeof(kou_response_head_t) */
    kou_header_t *headers;         /**< in: array for the fields */
    size_t        max_headers;     /**< in: its length; more is an error */
    size_t        max_head;        /**< in: most bytes the head may take */

    int           status;          /**< 100..599 */
    int           version;         /**< 10 or 11 (HTTP/1.x, x > 1, is 11) */
    kou_str_t     reason;          /**< may be empty */
    size_t        nheaders;
    size_t        head_len;        /**< status line + fields + final CRLF */
    int           body;            /**< KOU_BODY_* */
    /**
     * The Content-Length value when the head has one (even where it does
     * not frame a body: a response to HEAD, a 304), -1 otherwise.
     */
    int64_t       content_length;
    unsigned      flags;           /**< KOU_RESP_* */
    const char   *error;           /**< after KOU_ERROR: what was wrong */
} kou_response_head_t;

/**
 * State of a chunked-body decoder (host->chunked_init, chunked_parse).
 * Opaque: the caller only provides the storage.
 */
typedef struct kou_chunked_s {
    uint64_t opaque[8];
} kou_chunked_t;

/**
 * The server's function table, passed to kourier_module(). Valid for the
 * life of the process. Check `size` before using a field added after the
 * minor version you were built against.
 */
typedef struct kou_host_s {
    uint32_t abi_major;
    uint32_t abi_minor;
    size_t   size;              /**< sizeof(kou_host_t) in the server */

    /* ---- logging ---- */

    /** Write a line to the error log (no trailing newline needed). */
    void (*log)(int level, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

    /* ---- configuration (validated against the schema already) ---- */

    /** The value of `key` in a mapping node, or NULL if absent. */
    const kou_conf_t *(*conf_get)(const kou_conf_t *map, const char *key);
    /** A scalar as text (NUL-terminated, owned by the config). */
    int (*conf_str)(const kou_conf_t *node, kou_str_t *out);
    int (*conf_int)(const kou_conf_t *node, int64_t *out);
    int (*conf_bool)(const kou_conf_t *node, int *out);
    int (*conf_size)(const kou_conf_t *node, uint64_t *out);
    /** A duration in milliseconds. */
    int (*conf_duration)(const kou_conf_t *node, uint64_t *out_ms);
    /** Number of items of a list or entries of a map; 1 for a scalar. */
    size_t (*conf_len)(const kou_conf_t *node);
    /**
     * Item i of a list (a scalar counts as a one-item list) or value i of a
     * map; for a map, *key receives the key when key is not NULL.
     */
    const kou_conf_t *(*conf_at)(const kou_conf_t *node, size_t i,
                                 kou_str_t *key);
    /**
     * Format "file:line:col: message" for `node` into err (for configure
     * errors). Returns KOU_ERROR so callers can `return host->conf_error(...)`.
     */
    int (*conf_error)(const kou_conf_t *node, char *err, size_t errlen,
                      const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

    /* ---- request ---- */

    kou_str_t (*method)(kou_request_t *r);
    /** The request-target exactly as received. */
    kou_str_t (*target)(kou_request_t *r);
    /**
     * The normalised path used for routing: percent-decoded except "%2F"
     * and "%25", which stay encoded so the path is unambiguous.
     */
    kou_str_t (*path)(kou_request_t *r);
    /** The query string without '?', empty when there is none. */
    kou_str_t (*query)(kou_request_t *r);
    /** Host from the Host field or the absolute-form target. */
    kou_str_t (*host)(kou_request_t *r);
    /** 10 for HTTP/1.0, 11 for HTTP/1.1. */
    int (*version)(kou_request_t *r);
    size_t (*header_count)(kou_request_t *r);
    /** Field i in the order received; KOU_OK or KOU_DECLINED past the end. */
    int (*header_at)(kou_request_t *r, size_t i, kou_header_t *out);
    /** The nth (0-based) field named `name` (case-insensitive). */
    int (*header)(kou_request_t *r, kou_str_t name, size_t nth,
                  kou_str_t *value);
    /** Declared body length, -1 when chunked, 0 when there is no body. */
    int64_t (*content_length)(kou_request_t *r);
    /** The client address as text ("127.0.0.1", "::1", "unix"). */
    kou_str_t (*remote_addr)(kou_request_t *r);
    /** The matched route's path or prefix as written in the config. */
    kou_str_t (*route)(kou_request_t *r);
    /**
     * Memory that lives until the request ends; NULL when out of memory.
     * Aligned for any type.
     */
    void *(*palloc)(kou_request_t *r, size_t n);
    /**
     * Run cb(arg) when the request ends, normally or aborted (client gone,
     * timeout, worker exit). Callbacks run in reverse order of registration.
     * This is where a pending handler stops its timers and closes its fds.
     */
    int (*cleanup_add)(kou_request_t *r, kou_callback_pt cb, void *arg);

    /* ---- request body ---- */

    /**
     * Stream the body to on_data: de-chunked, in pieces as they arrive, the
     * last call with last=1. Sends "100 Continue" first if the client asked
     * for it. on_data may run before read_body returns. Framing errors,
     * timeouts and the size limit are answered by the server (400/408/413);
     * the handler then sees only its cleanup callbacks. Returns KOU_OK, or
     * KOU_ERROR if called twice or after the response started.
     */
    int (*read_body)(kou_request_t *r, kou_body_pt on_data, void *arg);

    /* ---- response: the server does the framing ---- */

    /**
     * A complete response with a body of known length. Content-Length,
     * Transfer-Encoding and Connection fields in `headers` are ignored (the
     * server frames the message), except that "Connection: close" closes the
     * connection after the response. Names must be tokens and values must
     * not contain CR, LF or NUL, or KOU_ERROR is returned and nothing is sent.
     */
    int (*respond)(kou_request_t *r, int status, const kou_header_t *headers,
                   size_t nheaders, kou_str_t body);
    /**
     * Start a streamed response. length >= 0: exactly that many bytes will be
     * written; -1: unknown (chunked for HTTP/1.1, close-delimited for 1.0).
     */
    int (*start)(kou_request_t *r, int status, const kou_header_t *headers,
                 size_t nheaders, int64_t length);
    /**
     * Queue body bytes (copied). If done is not NULL it runs once the queued
     * output has gone to the kernel: the way to apply back-pressure.
     * KOU_ERROR if the connection is gone or too many bytes for the length.
     */
    int (*write)(kou_request_t *r, kou_str_t data, kou_write_done_pt done,
                 void *arg);
    /** End a streamed response. */
    int (*finish)(kou_request_t *r);
    /** Add a response field; valid until the status line is sent. */
    int (*response_header_add)(kou_request_t *r, kou_str_t name,
                               kou_str_t value);
    /** Response status once decided (0 before). */
    int (*response_status)(kou_request_t *r);

    /* ---- the worker's event loop ---- */

    /** Milliseconds of the loop's clock (cached per iteration). */
    uint64_t (*now_ms)(void);
    /**
     * A one-shot timer firing cb(arg) after ms milliseconds. The timer is
     * freed after it fires; do not timer_del it then. NULL when out of memory.
     */
    kou_htimer_t *(*timer_add)(uint64_t ms, kou_callback_pt cb, void *arg);
    void (*timer_del)(kou_htimer_t *t);
    /**
     * Watch fd (non-blocking) for KOU_IO_* events, edge-triggered: after an
     * event, read/write until EAGAIN. NULL on failure.
     */
    kou_io_t *(*io_add)(int fd, unsigned events, kou_io_pt cb, void *arg);
    int (*io_mod)(kou_io_t *io, unsigned events);
    /** Stop watching; does not close the fd. */
    void (*io_del)(kou_io_t *io);

    /* ---- files (static content) ---- */

    /**
     * Queue `length` bytes of the regular file `fd` from `offset` as
     * response body, after start() with a known length. The server
     * duplicates fd, so the caller may close or cache its own at once.
     * Sent with sendfile(2) where the connection allows it (plain TCP),
     * else read into buffers; either way in bounded memory. If the file is
     * shorter than announced when it is sent, the connection is closed
     * (the client sees a short message, never a wrong one). KOU_OK or
     * KOU_ERROR.
     */
    int (*sendfile)(kou_request_t *r, int fd, int64_t offset, int64_t length);

    /* ---- what log hooks need ---- */

    /** Fill *info (see kou_request_info_t); KOU_OK. */
    int (*request_info)(kou_request_t *r, kou_request_info_t *info);

    /* ---- shared memory and server state (metrics) ---- */

    /**
     * A named block of `size` bytes, zeroed at creation, in memory shared
     * by the master and every worker of every generation: it survives
     * reloads and worker restarts. The first call with a name creates it;
     * later calls (any process) return the same block if the size is the
     * same, NULL otherwise or when the segment is full (its size is the
     * top-level `shared_memory` key). Call it from configure or
     * worker_init, not per request. NULL in `kourier -t`.
     */
    void *(*shm_alloc)(const char *name, size_t size);
    /**
     * This worker's statistics slot, 0 <= slot < stats_slots(). No two
     * live workers share a slot; a worker respawned after a crash gets the
     * slot of the one it replaces (so per-slot totals carry on), and a
     * slot freed by a drained worker is reused. -1 outside a worker.
     */
    int (*stats_slot)(void);
    int (*stats_slots)(void);
    /** Counters kept by the server itself; see kou_server_stats_t. */
    const kou_server_stats_t *(*server_stats)(void);

    /* ---- ABI 1.1: what a proxy needs (usable by any module) ---- */

    /**
     * Parse a response head from buf[0..len) as strictly as requests are
     * parsed (RFC 9112): "HTTP/1.x SP 3DIGIT SP reason CRLF", token field
     * names, no whitespace before the colon, no obs-fold, no CTL or NUL in
     * values, CRLF line ends only. `method` is the request's method: the
     * framing (h->body) follows RFC 9112 section 6.3 for it. Stateless:
     * call again with the whole buffer when more bytes have arrived.
     * Returns KOU_OK (the head is h->head_len bytes; a 1xx is a complete
     * head too: skip it and parse the next), KOU_AGAIN (incomplete, valid
     * so far) or KOU_ERROR (h->error says why; never relay such a
     * response): a malformed head, one larger than h->max_head or with
     * more than h->max_headers fields, Transfer-Encoding together with
     * Content-Length, differing or malformed Content-Length values,
     * "chunked" twice, or Transfer-Encoding in an HTTP/1.0 response.
     */
    int (*parse_response)(const char *buf, size_t len, kou_str_t method,
                          kou_response_head_t *h);
    /**
     * Prepare a chunked-body decoder; a trailer section longer than
     * max_trailer bytes is an error.
     */
    void (*chunked_init)(kou_chunked_t *ch, size_t max_trailer);
    /**
     * Decode chunked data from buf[0..len): consumes framing and at most
     * one run of payload, returned in *data (a slice of buf, maybe empty);
     * *consumed says how many bytes were used. Returns KOU_OK (call again
     * with the rest), KOU_AGAIN (all of buf consumed, more needed), KOU_DONE
     * (last chunk and trailers complete; bytes after *consumed are not the
     * body's), or an HTTP status (400: malformed, 431: trailers too long).
     */
    int (*chunked_parse)(kou_chunked_t *ch, const char *buf, size_t len,
                         size_t *consumed, kou_str_t *data);
    /**
     * Back-pressure on the request body (after read_body): while paused
     * (paused = 1), on_data is not called; the body stays in the input
     * buffer and, once that is full, in the kernel, which slows the
     * client. paused = 0 resumes delivery (from the event loop, not inside
     * this call). The body timeout keeps counting while paused. KOU_OK.
     */
    int (*read_body_pause)(kou_request_t *r, int paused);
    /** 1 when the client connection is TLS (X-Forwarded-Proto), else 0. */
    int (*is_tls)(kou_request_t *r);
    /**
     * Give up on a response that cannot be completed (an upstream that
     * died half-way): the client connection is closed, so the client sees
     * a truncated message, never a complete wrong one; the request ends as
     * aborted and its cleanups run (not inside this call). Before the
     * status line has gone out, answering an error status with respond()
     * is usually better. KOU_OK.
     */
    int (*abort)(kou_request_t *r);
    /**
     * Switch the connection to another protocol (RFC 9110 section 7.8)
     * for a request that asked for it ("Connection: upgrade" and an
     * Upgrade field, HTTP/1.1, no body). Sends "101 Switching Protocols"
     * with Connection: upgrade and `headers` (which should hold the
     * Upgrade field chosen), then the connection carries raw bytes both
     * ways: the client's to on_data (in pieces, as they arrive; it
     * replaces any body callback, and read_body_pause holds them back),
     * the module's with write() (its done callback gives back-pressure).
     * Each direction ends on its own (TCP half-close). The client's FIN
     * (over TLS its close_notify; a FIN without one is a truncation, an
     * error) is the end of its stream: on_data gets last=1 after its
     * last byte, and write() still works. finish() is the end of the module's
     * stream: once the queued bytes are sent, the server shuts down its
     * sending side (a TLS connection sends close_notify, then the FIN)
     * and goes on passing the client's bytes to on_data. The request ends
     * normally (log hooks, then cleanups) when both directions have
     * ended. abort(), a reset or read error from the client, a send
     * timeout and the tunnel's idle timeout (see tunnel_timeout; by
     * default limits.idle_timeout, never body_timeout) close the
     * connection at once and end the request as aborted. Response hooks
     * do not run for the 101. KOU_OK, or KOU_ERROR (nothing sent) when
     * the request did not ask to upgrade, has a body, or the response
     * has started.
     */
    int (*upgrade)(kou_request_t *r, const kou_header_t *headers,
                   size_t nheaders, kou_body_pt on_data, void *arg);

    /* ---- ABI 1.1: paths and the module list ---- */

    /**
     * A path given in the configuration, resolved the way the server
     * resolves its own: an absolute path as is, a relative one against the
     * prefix (-p, default the directory kourier started in). Writes a
     * NUL-terminated path to buf; KOU_OK, or KOU_ERROR when the node is not
     * a scalar or the result does not fit.
     */
    int (*conf_path)(const kou_conf_t *node, char *buf, size_t size);
    /** Modules of the configuration this process serves, in config order. */
    size_t (*module_count)(void);
    /** Name (as configured) and version of module i; KOU_DECLINED past the end. */
    int (*module_at)(size_t i, kou_str_t *name, kou_str_t *version);

    /* ---- ABI 1.2: request variables and module metrics ---- */
    /**
     * Attach a named value to the request, for log hooks and other
     * modules (name and value are copied into request memory). Names are
     * 1 to 64 bytes of [a-z0-9_]; setting a name again replaces its
     * value. The proxy module sets upstream_addr, upstream_status,
     * upstream_connect_time, upstream_header_time and
     * upstream_response_time (seconds with millisecond resolution, as
     * "0.012"); the access_log module prints any of them as $name.
     * KOU_OK, or KOU_ERROR (bad name, out of memory).
     */
    int (*var_set)(kou_request_t *r, kou_str_t name, kou_str_t value);
    /** The value last set under name: KOU_OK, or KOU_DECLINED if none. */
    int (*var_get)(kou_request_t *r, kou_str_t name, kou_str_t *value);
    /**
     * Ask every module of this configuration that has a metrics callback
     * (kou_module_t.metrics) to write its series through emit, in config
     * order. The metrics module calls it at scrape time. Returns how many
     * modules wrote.
     */
    size_t (*metrics_collect)(kou_emit_pt emit, void *arg);
    /**
     * After upgrade(): close the tunnel once it has moved no byte in
     * either direction for `ms` milliseconds (bytes of the client passed
     * to on_data, bytes of the module queued with write()), whatever
     * each side has half-closed and while read_body_pause holds the
     * client back. 0: the server never closes it for idleness. Output
     * the client does not take is still bound by limits.send_timeout.
     * Until this is called the tunnel's idle timeout is
     * limits.idle_timeout. KOU_OK, or KOU_ERROR when the request has not
     * been upgraded.
     */
    int (*tunnel_timeout)(kou_request_t *r, uint64_t ms);

    /* ---- ABI 1.3: cheaper log hooks ---- */
    /**
     * The request's header fields in the order received, *n of them (the
     * same as header_at gives one by one). The array and the strings
     * belong to the request: read them, keep nothing past its end. For a
     * module that looks for several fields, one pass over the array costs
     * less than one header() call per name.
     */
    const kou_header_t *(*headers)(kou_request_t *r, size_t *n);
    /**
     * request_info without a copy, for log hooks: the facts of r in the
     * server's memory (size is sizeof(kou_request_info_t) of the
     * server). During the log hooks of a request they are gathered once,
     * for all of them; the pointer is valid until the hook returns
     * (outside a log hook, until the next call). Never NULL.
     */
    const kou_request_info_t *(*log_info)(kou_request_t *r);
} kou_host_t;

/**
 * What a module is. Returned by kourier_module(); must stay valid while the
 * module is loaded (a static const object is the usual choice).
 */
typedef struct kou_module_s {
    uint32_t    abi_major;    /**< KOU_ABI_MAJOR */
    uint32_t    abi_minor;    /**< KOU_ABI_MINOR */
    size_t      size;         /**< sizeof(kou_module_t) */
    const char *name;
    const char *version;
    const kou_conf_key_t *conf;  /**< schema, NULL-key terminated; may be NULL */

    /**
     * Build the module's state from its validated config (the map under
     * modules: NAME:). Runs in each worker and in the validation child.
     * Returns KOU_OK, or KOU_ERROR with a message in err.
     */
    int (*configure)(const kou_conf_t *conf, void **state, char *err,
                     size_t errlen);
    /** Build per-route state for a route that uses the module. */
    int (*configure_route)(void *state, const kou_conf_t *route,
                           void **route_state, char *err, size_t errlen);
    /** After configuration, in the worker, before serving. */
    int (*worker_init)(void *state);
    /** When the worker exits. */
    void (*worker_exit)(void *state);

    kou_hook_pt request;   /**< after the header block, before content */
    kou_hook_pt content;   /**< the route's handler */
    kou_hook_pt response;  /**< before the status line goes out */
    kou_hook_pt log;       /**< after the response is complete */

    /**
     * Free what configure_route produced (may be NULL). Runs before the
     * module is unloaded, in every process that configured it.
     */
    void (*route_free)(void *state, void *route_state);
    /** Free what configure produced (may be NULL); runs after route_free. */
    void (*destroy)(void *state);
    /** Reopen files after SIGUSR1 (log rotation); in each worker. */
    void (*reopen)(void *state);
    /**
     * ABI 1.2 (may be NULL): write this module's metric series through
     * emit, in the Prometheus text exposition format (HELP and TYPE lines,
     * then samples; metric names should start with "kourier_"). Runs in
     * the worker that serves a scrape: read counters every worker keeps
     * in shared memory (shm_alloc, stats_slot) so that the whole server
     * is reported.
     */
    void (*metrics)(void *state, kou_emit_pt emit, void *arg);
} kou_module_t;

/** Initialiser for the first five fields of kou_module_t. */
#define KOU_MODULE_HEADER(name, version) \
    KOU_ABI_MAJOR, KOU_ABI_MINOR, sizeof(kou_module_t), (name), (version)

/** The one symbol a module exports. */
typedef const kou_module_t *(*kou_module_entry_pt)(const kou_host_t *host);
#define KOU_MODULE_ENTRY "kourier_module"

KOU_EXPORT const kou_module_t *kourier_module(const kou_host_t *host);

#ifdef __cplusplus
}
#endif

#endif /* KOURIER_MODULE_H */
