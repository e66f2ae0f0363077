/*
 * Client connections of a worker: accept, buffers, reads, coalesced
 * writes, timers, lingering close.
 *
 * Memory: an idle keep-alive connection owns only its kou_conn_t; the input
 * buffer comes from a per-worker free list when bytes arrive and goes back
 * when the connection is idle with nothing buffered. Output goes to a chain
 * of blocks (also from a free list) written with one writev per batch.
 *
 * TLS (c->tls != NULL) changes only the edges: kou_conn_read decrypts into
 * the same input buffer, and kou_conn_flush encrypts the chain into a
 * ciphertext buffer written with one write per batch (see tls.h). For such
 * a connection out_bytes counts plaintext still in the chain plus
 * ciphertext not yet written, so "out_bytes == 0" still means "everything
 * reached the kernel".
 */

#ifndef KOU_CONN_H
#define KOU_CONN_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "event.h"
#include "kou.h"
#include "timer.h"

typedef struct kou_conn_s kou_conn_t;
typedef struct kou_tls_conn_s kou_tls_conn_t;
typedef struct kou_tls_listener_s kou_tls_listener_t;

typedef struct kou_listener_s {
    kou_ev_t                ev;
    char                   *text;     /* address as configured */
    struct sockaddr_storage addr;
    socklen_t               addrlen;
    bool                    active;   /* registered with the loop */
    kou_tls_listener_t     *tls;      /* HTTPS listener, or NULL */
} kou_listener_t;

typedef struct kou_obuf_s kou_obuf_t;
/*
 * A link of the output chain: bytes in data[], or (fd >= 0) a range of a
 * file sent with sendfile(2), pos and last then being file offsets.
 */
struct kou_obuf_s {
    kou_obuf_t *next;
    size_t      pos;     /* first byte not yet written */
    size_t      last;    /* end of data */
    size_t      size;    /* capacity of data[]; 0 for a file range */
    int         fd;      /* -1 for memory; owned (closed) by the chain */
    u_char      data[];
};

typedef enum {
    KOU_CONN_IDLE = 0,   /* between requests, nothing buffered */
    KOU_CONN_HEAD,       /* part of a request head received */
    KOU_CONN_ACTIVE,     /* a request is being served */
    KOU_CONN_LINGER      /* error sent; reading and dropping before close */
} kou_conn_state_e;

typedef enum {
    KOU_TIMER_NONE = 0,
    KOU_TIMER_HEADER,
    KOU_TIMER_BODY,
    KOU_TIMER_IDLE,
    KOU_TIMER_SEND,
    KOU_TIMER_LINGER,
    KOU_TIMER_HANDSHAKE,
    KOU_TIMER_TUNNEL     /* an upgraded connection moved no byte */
} kou_conn_timer_e;

struct kou_conn_s {
    kou_ev_t        ev;
    kou_timer_t     timer;
    kou_post_t      post;        /* resume after an async completion */
    kou_list_t      link;        /* kou_worker.conns */

    u_char         *in;          /* input buffer or NULL */
    size_t          in_size;
    size_t          in_start;    /* first byte not consumed */
    size_t          in_end;      /* end of received bytes */

    kou_obuf_t     *out_head;
    kou_obuf_t     *out_tail;
    size_t          out_bytes;   /* queued, not yet written */
    uint64_t        queued;      /* bytes ever queued (for request stats) */

    kou_tls_conn_t *tls;         /* TLS state (tls.c), or NULL */

    struct kou_request_s *r;     /* the request being served, or NULL */
    struct kou_request_s *parsing; /* holds the parser while a head is partial */

    unsigned        state;       /* kou_conn_state_e */
    unsigned        timer_kind;  /* kou_conn_timer_e */
    uint64_t        linger_until;
    uint64_t        requests;    /* served on this connection */

    unsigned        readable:1;    /* more input may be waiting */
    unsigned        eof:1;         /* the peer shut down its side */
    unsigned        closing:1;     /* close once the output is written */
    unsigned        in_process:1;  /* inside kou_conn_run */
    unsigned        write_blocked:1;
    unsigned        draining:1;    /* worker is stopping: last response */
    unsigned        error:1;       /* socket error; drop output */
    unsigned        linger:1;      /* lingering close after the output */
    unsigned        rdhup:1;       /* the peer's FIN was reported */
    unsigned        sock_readable:1;  /* the socket itself may have bytes
                                         (TLS: readable also counts the
                                         ciphertext already read) */
    unsigned        wr_shut:1;     /* our side is shut down (a tunnel
                                      half-closed by its module) */
    unsigned        wr_notified:1; /* TLS close_notify queued for that */

    char            addr_text[48];
    kou_str_t       addr;
};

/* Listener readiness: accept what is queued (runs in a worker). */
void kou_conn_accept_handler(kou_ev_t *ev, uint32_t events);

/* Queue n bytes for output (copied). KOU_OK or KOU_ERROR (no memory). */
int kou_conn_out(kou_conn_t *c, const void *data, size_t n);

/*
 * Reserve n contiguous bytes at the end of the output chain; the caller
 * writes at most n bytes there and commits how many with kou_conn_commit.
 */
u_char *kou_conn_reserve(kou_conn_t *c, size_t n);
void kou_conn_commit(kou_conn_t *c, size_t n);

/*
 * Queue `len` bytes of file fd from `off`; the chain takes ownership of fd
 * (it closes it once sent or dropped). KOU_OK or KOU_ERROR (fd closed).
 */
int kou_conn_out_file(kou_conn_t *c, int fd, uint64_t off, uint64_t len);

/* Move the connection to state s, keeping the shared gauges right. */
void kou_conn_state(kou_conn_t *c, unsigned s);

/* Write queued output now; sets write_blocked when the kernel is full. */
void kou_conn_flush(kou_conn_t *c);

/* Process everything that can be processed; flush; set the timer. */
void kou_conn_run(kou_conn_t *c);

/* Schedule kou_conn_run after the current callback (async completion). */
void kou_conn_post(kou_conn_t *c);

/* Close at once, aborting any request in flight. */
void kou_conn_close(kou_conn_t *c);

/* Read into the input buffer. Returns bytes read (0: none), or KOU_ERROR. */
ssize_t kou_conn_read(kou_conn_t *c);

/* Make sure an input buffer exists. KOU_OK or KOU_ERROR. */
int kou_conn_in_alloc(kou_conn_t *c);

/* Close idle connections and mark the others to close after their response. */
void kou_conn_drain_all(void);

/* Close every connection (fast stop). */
void kou_conn_close_all(void);

#endif /* KOU_CONN_H */
