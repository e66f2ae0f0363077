/*
 * Connections: accept, input buffer management, output chain, flush,
 * timers and close. The HTTP logic is in http_request.c; this file moves
 * bytes and decides when a connection has been quiet for too long.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn.h"
#include "http_request.h"
#include "log.h"
#include "shm.h"
#include "tls.h"
#include "worker.h"

#define KOU_OBUF_SIZE     16384
#define KOU_OUT_HIGH      (256 * 1024)   /* stop parsing pipelined input */
#define KOU_LINGER_MS     2000
#define KOU_LINGER_MAX_MS 10000
#define KOU_ACCEPT_BATCH  64
#define KOU_IOV_MAX       64

/* Free lists: input buffers and standard output blocks. */
typedef struct kou_free_s kou_free_t;
struct kou_free_s {
    kou_free_t *next;
};

static kou_free_t *kou_in_free;
static kou_free_t *kou_obuf_free;

static void kou_conn_ev_handler(kou_ev_t *ev, uint32_t events);
static void kou_conn_timer_handler(kou_timer_t *t);
static void kou_conn_post_handler(kou_post_t *p);
static void kou_conn_finish_run(kou_conn_t *c);
static void kou_conn_ev_closed(kou_ev_t *ev, uint32_t events);
static bool kou_conn_peer_gone(kou_conn_t *c);
static void kou_conn_free_post(kou_post_t *p);
static void kou_conn_handshake(kou_conn_t *c);

int
kou_conn_in_alloc(kou_conn_t *c)
{
    if (c->in != NULL) {
        return KOU_OK;
    }
    if (kou_in_free != NULL) {
        c->in = (u_char *) kou_in_free;
        kou_in_free = kou_in_free->next;
    } else {
        c->in = malloc(kou_worker.in_size);
        if (c->in == NULL) {
            return KOU_ERROR;
        }
    }
    c->in_size = kou_worker.in_size;
    c->in_start = c->in_end = 0;
    return KOU_OK;
}

static void
kou_conn_in_release(kou_conn_t *c)
{
    kou_free_t *f;

    if (c->in == NULL) {
        return;
    }
    f = (kou_free_t *) c->in;
    f->next = kou_in_free;
    kou_in_free = f;
    c->in = NULL;
    c->in_start = c->in_end = c->in_size = 0;
}

static kou_obuf_t *
kou_obuf_alloc(size_t need)
{
    kou_obuf_t *b;

    if (need <= KOU_OBUF_SIZE && kou_obuf_free != NULL) {
        b = (kou_obuf_t *) kou_obuf_free;
        kou_obuf_free = kou_obuf_free->next;
    } else {
        size_t size = kou_max(need, (size_t) KOU_OBUF_SIZE);
        b = malloc(sizeof(kou_obuf_t) + size);
        if (b == NULL) {
            return NULL;
        }
        b->size = size;
    }
    b->next = NULL;
    b->pos = b->last = 0;
    b->fd = -1;
    return b;
}

static void
kou_obuf_release(kou_obuf_t *b)
{
    kou_free_t *f;

    if (b->fd >= 0) {
        close(b->fd);
        free(b);
        return;
    }
    if (b->size != KOU_OBUF_SIZE) {
        free(b);
        return;
    }
    f = (kou_free_t *) b;
    f->next = kou_obuf_free;
    kou_obuf_free = f;
}

u_char *
kou_conn_reserve(kou_conn_t *c, size_t n)
{
    kou_obuf_t *b = c->out_tail;

    if (b == NULL || b->fd >= 0 || b->size - b->last < n) {
        b = kou_obuf_alloc(n);
        if (b == NULL) {
            return NULL;
        }
        if (c->out_tail != NULL) {
            c->out_tail->next = b;
        } else {
            c->out_head = b;
        }
        c->out_tail = b;
    }
    return b->data + b->last;
}

void
kou_conn_commit(kou_conn_t *c, size_t n)
{
    c->out_tail->last += n;
    c->out_bytes += n;
    c->queued += n;
}

int
kou_conn_out(kou_conn_t *c, const void *data, size_t n)
{
    const u_char *p = data;

    while (n > 0) {
        kou_obuf_t *b = c->out_tail;
        size_t      room = b != NULL && b->fd < 0 ? b->size - b->last : 0;

        if (room == 0) {
            /* big writes get one block; small ones share standard blocks */
            if (kou_conn_reserve(c, n > KOU_OBUF_SIZE ? n : 1) == NULL) {
                return KOU_ERROR;
            }
            continue;
        }
        room = kou_min(room, n);
        memcpy(b->data + b->last, p, room);
        kou_conn_commit(c, room);
        p += room;
        n -= room;
    }
    return KOU_OK;
}

int
kou_conn_out_file(kou_conn_t *c, int fd, uint64_t off, uint64_t len)
{
    kou_obuf_t *b;

    if (len == 0) {
        close(fd);
        return KOU_OK;
    }
    b = malloc(sizeof(kou_obuf_t));
    if (b == NULL) {
        close(fd);
        return KOU_ERROR;
    }
    b->next = NULL;
    b->fd = fd;
    b->pos = (size_t) off;
    b->last = (size_t) (off + len);
    b->size = 0;
    if (c->out_tail != NULL) {
        c->out_tail->next = b;
    } else {
        c->out_head = b;
    }
    c->out_tail = b;
    c->out_bytes += (size_t) len;
    c->queued += len;
    return KOU_OK;
}

/*
 * Send the file range at the head of the chain. Returns bytes sent, 0 when
 * the socket is full, -1 on error (c->error set).
 */
static ssize_t
kou_conn_send_file(kou_conn_t *c, kou_obuf_t *b)
{
    for (;;) {
        off_t   off = (off_t) b->pos;
        size_t  want = kou_min(b->last - b->pos, (size_t) 1 << 30);
        ssize_t w = sendfile(c->ev.fd, b->fd, &off, want);

        if (w > 0) {
            return w;
        }
        if (w == 0) {
            /* the file shrank after its length was announced */
            kou_log_error("client %s: file ended %zu bytes early: closing",
                          c->addr_text, b->last - b->pos);
            c->error = 1;
            return -1;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN) {
            return 0;
        }
        kou_log_debug("client %s: sendfile: %s", c->addr_text,
                      strerror(errno));
        c->error = 1;
        return -1;
    }
}

static void
kou_conn_out_free(kou_conn_t *c)
{
    kou_obuf_t *b, *next;

    for (b = c->out_head; b != NULL; b = next) {
        next = b->next;
        kou_obuf_release(b);
    }
    c->out_head = c->out_tail = NULL;
    c->out_bytes = 0;
}

/*
 * Some output was written after the socket had been full: the send timeout
 * counts from the last progress, not from the start of the response.
 */
static inline void
kou_conn_progress(kou_conn_t *c)
{
    if (c->write_blocked) {
        c->write_blocked = 0;
        if (c->timer_kind == KOU_TIMER_SEND) {
            kou_timer_add(&c->timer, kou_worker.cf->limits.send_timeout);
        }
    }
}

/*
 * Plain TCP: the memory blocks of the chain go out with one writev per
 * batch, file ranges with sendfile. KOU_OK once everything is written,
 * KOU_AGAIN when the kernel is full, KOU_ERROR (chain dropped).
 */
static int
kou_conn_flush_plain(kou_conn_t *c)
{
    struct iovec iov[KOU_IOV_MAX];

    while (c->out_bytes > 0) {
        int         n = 0;
        ssize_t     w;
        size_t      asked = 0, written;
        kou_obuf_t *b = c->out_head;

        if (b->fd < 0 && b->pos == b->last && b->next != NULL) {
            c->out_head = b->next;   /* an emptied block before a file */
            kou_obuf_release(b);
            continue;
        }
        if (b->fd >= 0) {
            w = kou_conn_send_file(c, b);
            if (w < 0) {
                kou_conn_out_free(c);
                return KOU_ERROR;
            }
            if (w == 0) {
                c->write_blocked = 1;
                return KOU_AGAIN;
            }
            b->pos += (size_t) w;
            c->out_bytes -= (size_t) w;
            kou_conn_progress(c);
            if (b->pos == b->last) {
                c->out_head = b->next;
                if (c->out_head == NULL) {
                    c->out_tail = NULL;
                }
                kou_obuf_release(b);
            }
            /*
             * No short-write shortcut here: sendfile also comes back short
             * at the end of a file cut after its length was announced, and
             * only the next call tells that from a full socket.
             */
            continue;
        }
        for (; b != NULL && b->fd < 0 && n < KOU_IOV_MAX; b = b->next) {
            if (b->last > b->pos) {
                iov[n].iov_base = b->data + b->pos;
                iov[n].iov_len = b->last - b->pos;
                asked += iov[n].iov_len;
                n++;
            }
        }
        if (b != NULL && b->fd >= 0) {
            /*
             * A file follows (a response head before its body): MSG_MORE
             * lets the kernel put the head and the first file bytes in the
             * same segment instead of sending the head alone.
             */
            struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t) n };
            w = sendmsg(c->ev.fd, &mh, MSG_MORE | MSG_NOSIGNAL);
        } else if (n == 1) {
            /*
             * send/sendmsg rather than write/writev: the socket calls skip
             * the file-position lock and the VFS layers, measurably
             * cheaper per request.
             */
            w = send(c->ev.fd, iov[0].iov_base, iov[0].iov_len,
                     MSG_NOSIGNAL);
        } else {
            struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t) n };
            w = sendmsg(c->ev.fd, &mh, MSG_NOSIGNAL);
        }
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                c->write_blocked = 1;
                return KOU_AGAIN;
            }
            kou_log_debug("client %s: write: %s", c->addr_text,
                          strerror(errno));
            c->error = 1;
            kou_conn_out_free(c);
            return KOU_ERROR;
        }
        c->out_bytes -= (size_t) w;
        written = (size_t) w;
        while (c->out_head != NULL && c->out_head->fd < 0) {
            b = c->out_head;
            size_t left = b->last - b->pos;
            if ((size_t) w < left) {
                b->pos += (size_t) w;
                break;
            }
            w -= (ssize_t) left;
            b->pos = b->last;
            if (b->next == NULL) {
                /* keep the tail block for the next response */
                b->pos = b->last = 0;
                break;
            }
            c->out_head = b->next;
            kou_obuf_release(b);
            if (w == 0 && c->out_head->fd >= 0) {
                break;
            }
        }
        kou_conn_progress(c);
        if (written < asked) {
            /*
             * A short send means the socket buffer is full (and the kernel
             * has noted that it must report space): another call now would
             * only fail with EAGAIN.
             */
            c->write_blocked = 1;
            return KOU_AGAIN;
        }
    }
    return KOU_OK;
}

/*
 * TLS: plaintext of the chain (file ranges read with pread) is encrypted
 * into the connection's ciphertext buffer while it has room for a record;
 * a memory block is one SSL_write per 16 KiB, so a batch of pipelined
 * responses sharing a block becomes one record. Returns KOU_ERROR on a TLS
 * or file error.
 */
static int
kou_conn_tls_fill(kou_conn_t *c)
{
    kou_obuf_t *b;
    ssize_t     n;

    while ((b = c->out_head) != NULL && kou_tls_room(c)) {
        if (b->pos == b->last) {
            if (b->next == NULL) {
                b->pos = b->last = 0;   /* the tail block is reused */
                break;
            }
            c->out_head = b->next;
            kou_obuf_release(b);
            continue;
        }
        if (b->fd >= 0) {
            n = kou_tls_write_file(c, b->fd, b->pos, b->last - b->pos);
        } else {
            n = kou_tls_write(c, b->data + b->pos, b->last - b->pos);
        }
        if (n < 0) {
            return KOU_ERROR;
        }
        b->pos += (size_t) n;
        c->out_bytes -= (size_t) n;
        if (b->pos == b->last && b->fd >= 0) {
            c->out_head = b->next;
            if (c->out_head == NULL) {
                c->out_tail = NULL;
            }
            kou_obuf_release(b);
        }
    }
    return KOU_OK;
}

/*
 * Alternate between writing the ciphertext buffer and refilling it, so
 * memory stays at a few records however large the response, and a write
 * that does not complete stops the encryption too (back-pressure).
 */
static int
kou_conn_flush_tls(kou_conn_t *c)
{
    size_t before;
    int    rc;

    for (;;) {
        if (kou_tls_unsent(c)) {
            before = c->out_bytes;
            rc = kou_tls_send(c);
            if (c->out_bytes < before) {
                kou_conn_progress(c);
            }
            if (rc == KOU_AGAIN) {
                c->write_blocked = 1;
                return KOU_AGAIN;
            }
            if (rc != KOU_OK) {
                c->error = 1;
                kou_conn_out_free(c);
                return KOU_ERROR;
            }
        }
        if (c->out_bytes == 0) {
            return KOU_OK;
        }
        if (kou_conn_tls_fill(c) != KOU_OK || !kou_tls_unsent(c)) {
            /* nothing to write although bytes are counted: give up */
            c->error = 1;
            kou_conn_out_free(c);
            return KOU_ERROR;
        }
    }
}

void
kou_conn_flush(kou_conn_t *c)
{
    int rc;

    if (c->error) {
        kou_conn_out_free(c);
        return;
    }
    rc = c->tls == NULL ? kou_conn_flush_plain(c) : kou_conn_flush_tls(c);
    if (rc != KOU_OK) {
        return;
    }
    c->write_blocked = 0;
    /* An empty chain keeps no block: idle connections hold no memory. */
    if (c->out_head != NULL && c->r == NULL) {
        kou_conn_out_free(c);
    }
    if (c->r != NULL) {
        kou_http_output_drained(c);
    }
}

ssize_t
kou_conn_read(kou_conn_t *c)
{
    ssize_t total = 0;

    if (c->tls != NULL) {
        return kou_tls_read(c);
    }
    if (kou_conn_in_alloc(c) != KOU_OK) {
        return KOU_ERROR;
    }
    while (c->in_end < c->in_size) {
        size_t  want = c->in_size - c->in_end;
        ssize_t n = recv(c->ev.fd, c->in + c->in_end, want, 0);

        if (n > 0) {
            c->in_end += (size_t) n;
            total += n;
            if ((size_t) n < want) {
                /*
                 * A short read drained the socket: edge-triggered epoll
                 * reports the next arrival, so skip the read that would
                 * only say EAGAIN. Unless the peer's FIN was reported: then
                 * the next read is the one that says so.
                 */
                c->readable = c->rdhup;
                break;
            }
            continue;
        }
        if (n == 0) {
            c->eof = 1;
            c->readable = 0;
            break;
        }
        if (errno == EINTR) {
            continue;
        }
        c->readable = 0;
        if (errno != EAGAIN) {
            c->error = 1;
            c->eof = 1;
        }
        break;
    }
    return total;
}

/* The shared gauge a state counts in (LINGER counts as writing). */
static uint64_t *
kou_conn_gauge(unsigned state)
{
    switch (state) {
    case KOU_CONN_IDLE:
        return &kou_slot->conns_idle;
    case KOU_CONN_HEAD:
        return &kou_slot->conns_reading;
    default:
        return &kou_slot->conns_writing;
    }
}

void
kou_conn_state(kou_conn_t *c, unsigned s)
{
    if (c->state == s) {
        return;
    }
    if (kou_slot != NULL) {
        (*kou_conn_gauge(c->state))--;
        (*kou_conn_gauge(s))++;
    }
    c->state = s;
}

static void
kou_conn_set_timer(kou_conn_t *c, unsigned kind, uint64_t ms)
{
    if (c->timer_kind == kind && kou_timer_armed(&c->timer)
        && kind == KOU_TIMER_HEADER)
    {
        return;  /* the header timeout counts from the first byte */
    }
    c->timer_kind = kind;
    if (kind == KOU_TIMER_NONE) {
        kou_timer_del(&c->timer);
    } else {
        kou_timer_add(&c->timer, ms);
    }
}

/*
 * An upgraded connection has one idle timeout for both directions: it
 * runs while no byte moves either way (the client's bytes handed to the
 * module, the module's queued for the client), whatever each side has
 * half-closed, and while the module holds the client back (a module that
 * waits on its other end keeps its own send timeout for that). Output
 * the client does not take is the send timeout's business, as always.
 */
static void
kou_conn_tunnel_timer(kou_conn_t *c, kou_request_t *r)
{
    uint64_t ms = r->tunnel_ms_set ? r->tunnel_ms
                                   : kou_worker.cf->limits.idle_timeout;

    if (ms == 0) {
        kou_conn_set_timer(c, KOU_TIMER_NONE, 0);
    } else if (c->timer_kind != KOU_TIMER_TUNNEL || r->body_progress) {
        r->body_progress = 0;
        kou_conn_set_timer(c, KOU_TIMER_TUNNEL, ms);
    }
}

/* Choose the timer that fits what the connection is waiting for. */
static void
kou_conn_update_timer(kou_conn_t *c)
{
    const kou_limits_t *l = &kou_worker.cf->limits;

    if (c->state == KOU_CONN_LINGER) {
        return;
    }
    if (c->out_bytes > 0) {
        if (c->timer_kind != KOU_TIMER_SEND) {
            kou_conn_set_timer(c, KOU_TIMER_SEND, l->send_timeout);
        }
        return;
    }
    switch (c->state) {
    case KOU_CONN_IDLE:
        if (c->requests == 0) {
            kou_conn_set_timer(c, KOU_TIMER_HEADER, l->header_timeout);
        } else if (c->timer_kind != KOU_TIMER_IDLE) {
            kou_conn_set_timer(c, KOU_TIMER_IDLE, l->idle_timeout);
        }
        break;
    case KOU_CONN_HEAD:
        kou_conn_set_timer(c, KOU_TIMER_HEADER, l->header_timeout);
        break;
    case KOU_CONN_ACTIVE:
        if (c->r != NULL && c->r->tunnel) {
            kou_conn_tunnel_timer(c, c->r);
        } else if (c->r != NULL && !c->r->body_done
            && (c->r->body_cb != NULL || c->r->resp_done)
            && (!c->r->body_paused || c->r->resp_done))
        {
            /* body_timeout is the longest pause between two reads */
            if (c->timer_kind != KOU_TIMER_BODY || c->r->body_progress) {
                c->r->body_progress = 0;
                kou_conn_set_timer(c, KOU_TIMER_BODY, l->body_timeout);
            }
        } else {
            kou_conn_set_timer(c, KOU_TIMER_NONE, 0);
        }
        break;
    }
}

/*
 * After an error response: stop sending, keep reading (and dropping) for a
 * while so the client reads our response instead of a reset caused by
 * unread data in our receive queue.
 */
static void
kou_conn_linger(kou_conn_t *c)
{
    if (c->error || c->eof) {
        kou_conn_close(c);
        return;
    }
    if (c->tls != NULL) {
        kou_tls_shutdown(c);   /* close_notify before the FIN */
    }
    shutdown(c->ev.fd, SHUT_WR);
    kou_conn_state(c, KOU_CONN_LINGER);
    c->linger_until = kou_loop.now + KOU_LINGER_MAX_MS;
    c->timer_kind = KOU_TIMER_LINGER;
    kou_timer_add(&c->timer, KOU_LINGER_MS);
    kou_conn_post(c);
}

static void
kou_conn_linger_read(kou_conn_t *c)
{
    u_char  buf[4096];
    ssize_t n;

    for (;;) {
        n = recv(c->ev.fd, buf, sizeof(buf), 0);
        if (n > 0) {
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        break;
    }
    if (n == 0 || (n < 0 && errno != EAGAIN)
        || kou_loop.now >= c->linger_until)
    {
        kou_conn_close(c);
        return;
    }
    kou_timer_add(&c->timer, KOU_LINGER_MS);
}

void
kou_conn_run(kou_conn_t *c)
{
    if (c->state == KOU_CONN_LINGER) {
        kou_conn_linger_read(c);
        return;
    }

    c->in_process = 1;
    for (;;) {
        kou_request_t *r = c->r;

        if (r != NULL) {
            if (!r->body_done && (r->body_cb != NULL || r->resp_done)) {
                if (kou_http_body_feed(r) != KOU_OK) {
                    break;
                }
            }
            if (r->resp_done && r->body_done) {
                kou_http_request_finalize(r);
                continue;
            }
            if (!r->body_done && (r->body_cb != NULL || r->resp_done)
                && c->in_start == c->in_end)
            {
                if (c->eof) {
                    if (r->tunnel && !c->error) {
                        /* a half-close, passed on once the module resumes */
                        break;
                    }
                    /* the client went away in the middle of its body */
                    c->error = 1;
                    break;
                }
                if (c->readable) {
                    ssize_t n = kou_conn_read(c);
                    if (n > 0 || c->eof) {
                        continue;
                    }
                    if (n < 0) {
                        c->error = 1;
                        break;
                    }
                }
            }
            if (c->rdhup && !r->head_sent && r->body_done
                && kou_conn_peer_gone(c))
            {
                /*
                 * The client left while its handler works (a slow
                 * backend): abort, so the handler's cleanups cancel the
                 * work instead of finishing it for nobody.
                 */
                kou_log_info("client %s: closed the connection before the "
                             "response", c->addr_text);
                c->error = 1;
                break;
            }
            break;  /* waiting for the handler or for input */
        }

        if (c->closing || c->error) {
            break;
        }
        if (c->out_bytes > KOU_OUT_HIGH) {
            break;  /* resumed when the output drains */
        }

        if (c->in_start == c->in_end) {
            if (c->in != NULL) {
                c->in_start = c->in_end = 0;
            }
            if (c->readable && !c->eof) {
                ssize_t n = kou_conn_read(c);
                if (n > 0) {
                    continue;
                }
                if (n < 0) {
                    c->error = 1;
                    break;
                }
            }
            kou_conn_state(c, KOU_CONN_IDLE);
            if (c->eof) {
                c->closing = 1;
            }
            break;
        }

        /* a head that is all there goes straight from idle to active */
        int rc = kou_http_request_begin(c);
        if (rc == KOU_AGAIN) {
            kou_conn_state(c, KOU_CONN_HEAD);
            if (c->in_end == c->in_size && c->in_start > 0) {
                /* make room: the parser keeps offsets, not pointers */
                memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
                c->in_end -= c->in_start;
                c->in_start = 0;
            }
            if (c->eof) {
                c->closing = 1;
                break;
            }
            if (c->readable && c->in_end < c->in_size) {
                ssize_t n = kou_conn_read(c);
                if (n > 0) {
                    continue;
                }
            }
            break;
        }
        if (rc != KOU_OK) {
            break;
        }
    }
    c->in_process = 0;
    kou_conn_finish_run(c);
}

/*
 * The module ended its direction of a tunnel and every byte of it has
 * reached the kernel: send our FIN (after a TLS close_notify) and keep
 * reading the client's side until its own end.
 */
static void
kou_conn_shutdown_write(kou_conn_t *c)
{
    if (c->tls != NULL && !c->wr_notified) {
        /*
         * close_notify first; the FIN only once it has reached the kernel
         * (this runs again when the output has drained), or the client
         * would see a cut stream instead of a half-close.
         */
        c->wr_notified = 1;
        kou_tls_shutdown(c);
        if (c->out_bytes > 0) {
            return;
        }
    }
    c->wr_shut = 1;
    if (shutdown(c->ev.fd, SHUT_WR) != 0) {
        kou_log_debug("client %s: shutdown: %s", c->addr_text,
                      strerror(errno));
        c->error = 1;
    }
}

/*
 * The end of every run: write what was produced, then decide between
 * closing, lingering, waiting for output to drain, or waiting for input.
 */
static void
kou_conn_finish_run(kou_conn_t *c)
{
    if (c->error) {
        kou_conn_close(c);
        return;
    }
    if (c->out_bytes > 0) {
        kou_conn_flush(c);
        if (c->error) {
            kou_conn_close(c);
            return;
        }
        if (c->out_bytes == 0 && c->r != NULL
            && (c->r->resp_done || c->r->body_cb != NULL))
        {
            /* write-done callbacks or a finished response may let us go on */
            kou_conn_post(c);
        }
    }
    if (c->r != NULL && c->r->tunnel && c->r->resp_done && !c->wr_shut
        && c->out_bytes == 0)
    {
        kou_conn_shutdown_write(c);
        if (c->error) {
            kou_conn_close(c);
            return;
        }
    }
    if (c->closing && c->r == NULL) {
        if (c->out_bytes > 0) {
            kou_conn_update_timer(c);   /* send timeout while it drains */
            return;
        }
        if (c->linger) {
            kou_conn_linger(c);
        } else {
            kou_conn_close(c);
        }
        return;
    }
    if (c->r == NULL && c->in_start == c->in_end && c->in != NULL
        && c->out_bytes == 0)
    {
        kou_conn_in_release(c);
    }
    if (kou_worker.draining && c->r == NULL && c->out_bytes == 0
        && c->state == KOU_CONN_IDLE && c->requests > 0)
    {
        kou_conn_close(c);
        return;
    }
    kou_conn_update_timer(c);
}

/*
 * Has the peer closed its side with nothing left to read? One MSG_PEEK,
 * used only after EPOLLRDHUP while a request waits for its handler. A TLS
 * peer's close_notify is data, so TLS connections answer "no".
 */
static bool
kou_conn_peer_gone(kou_conn_t *c)
{
    char b;

    if (c->tls != NULL || c->in_start != c->in_end) {
        return false;
    }
    return recv(c->ev.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static void
kou_conn_ev_handler(kou_ev_t *ev, uint32_t events)
{
    kou_conn_t *c = ev->data;

    if (c->state == KOU_CONN_LINGER) {
        kou_conn_linger_read(c);
        return;
    }
    if (events & (EPOLLRDHUP | EPOLLHUP)) {
        c->rdhup = 1;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        c->readable = 1;
        c->sock_readable = 1;
    }
    if (events & (EPOLLHUP | EPOLLERR)) {
        if (!(events & EPOLLIN)) {
            c->error = 1;
        }
    }
    if ((events & EPOLLERR) && c->eof && c->r != NULL && c->r->tunnel) {
        /*
         * A reset after the client's half-close: nothing reads the socket
         * any more to find out, and the module may be waiting on its
         * other end.
         */
        c->error = 1;
    }
    if ((events & EPOLLOUT) && c->out_bytes > 0) {
        kou_conn_flush(c);
    }
    kou_conn_run(c);
}

/* Readiness of a TLS connection whose handshake is not finished. */
static void
kou_conn_hs_ev_handler(kou_ev_t *ev, uint32_t events)
{
    kou_conn_t *c = ev->data;

    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        c->readable = 1;
        c->sock_readable = 1;
    }
    if ((events & EPOLLOUT) && c->out_bytes > 0) {
        kou_conn_flush(c);
        if (c->error) {
            if (kou_slot != NULL) {
                kou_slot->tls_handshakes_failed++;
            }
            kou_conn_close(c);
            return;
        }
    }
    if (c->sock_readable) {
        kou_conn_handshake(c);
    }
}

/*
 * One step of a TLS handshake. The timeout counts from the accept and is
 * not re-armed by progress: a client trickling handshake bytes gets no
 * more time than a silent one.
 */
static void
kou_conn_handshake(kou_conn_t *c)
{
    switch (kou_tls_handshake(c)) {
    case KOU_OK:
        if (kou_slot != NULL) {
            kou_slot->tls_handshakes_ok++;
        }
        /* the rest of the flight (tickets) goes out with the response */
        c->ev.handler = kou_conn_ev_handler;
        kou_conn_run(c);
        return;
    case KOU_AGAIN:
        if (c->out_bytes > 0) {
            kou_conn_flush(c);
            if (c->error) {
                break;
            }
        }
        if (c->timer_kind != KOU_TIMER_HANDSHAKE) {
            c->timer_kind = KOU_TIMER_HANDSHAKE;
            kou_timer_add(&c->timer,
                          kou_worker.cf->limits.tls_handshake_timeout);
        }
        return;
    case KOU_DECLINED:
        /* plain HTTP: answer in plain text, close like any error */
        if (kou_slot != NULL) {
            kou_slot->tls_handshakes_failed++;
        }
        c->ev.handler = kou_conn_ev_handler;
        c->closing = 1;
        c->linger = 1;
        kou_conn_run(c);
        return;
    default:
        /* one try at sending the alert OpenSSL queued */
        kou_conn_flush(c);
        break;
    }
    if (kou_slot != NULL && kou_tls_handshake_started(c)) {
        kou_slot->tls_handshakes_failed++;
    }
    kou_conn_close(c);
}

static void
kou_conn_ev_closed(kou_ev_t *ev, uint32_t events)
{
    (void) ev;
    (void) events;
}

static void
kou_conn_free_post(kou_post_t *p)
{
    free(kou_container_of(p, kou_conn_t, post));
}

static void
kou_conn_post_handler(kou_post_t *p)
{
    kou_conn_t *c = kou_container_of(p, kou_conn_t, post);

    kou_conn_run(c);
}

void
kou_conn_post(kou_conn_t *c)
{
    kou_loop_post(&c->post);
}

static void
kou_conn_timer_handler(kou_timer_t *t)
{
    kou_conn_t *c = t->data;

    switch (c->timer_kind) {
    case KOU_TIMER_HEADER:
        if (c->state == KOU_CONN_HEAD && c->in_end > c->in_start) {
            kou_log_info("client %s: request head not received in time",
                         c->addr_text);
            kou_http_error(c, NULL, 408, NULL);
            kou_conn_run(c);
            return;
        }
        kou_conn_close(c);
        return;
    case KOU_TIMER_BODY:
        kou_log_info("client %s: request body not received in time",
                     c->addr_text);
        kou_http_error(c, c->r, 408, NULL);
        kou_conn_run(c);
        return;
    case KOU_TIMER_SEND:
        kou_log_info("client %s: send timed out", c->addr_text);
        kou_conn_close(c);
        return;
    case KOU_TIMER_TUNNEL:
        kou_log_info("client %s: tunnel idle for too long: closed",
                     c->addr_text);
        kou_conn_close(c);
        return;
    case KOU_TIMER_HANDSHAKE:
        kou_log_info("client %s: TLS handshake not completed in time",
                     c->addr_text);
        if (kou_slot != NULL) {
            kou_slot->tls_handshakes_failed++;
        }
        kou_conn_close(c);
        return;
    case KOU_TIMER_LINGER:
        if (kou_loop.now >= c->linger_until) {
            kou_conn_close(c);
            return;
        }
        kou_conn_linger_read(c);
        return;
    default:
        kou_conn_close(c);
        return;
    }
}

void
kou_conn_close(kou_conn_t *c)
{
    if (c->r != NULL) {
        kou_http_request_abort(c->r);
    }
    if (c->parsing != NULL) {
        kou_http_request_free(c->parsing);
        c->parsing = NULL;
    }
    if (kou_slot != NULL) {
        (*kou_conn_gauge(c->state))--;
    }
    kou_timer_del(&c->timer);
    kou_loop_unpost(&c->post);
    if (c->tls != NULL) {
        kou_tls_shutdown(c);
        kou_conn_out_free(c);
        kou_tls_conn_free(c);
    }
    kou_conn_out_free(c);
    kou_conn_in_release(c);
    /* close() removes the fd from epoll: no epoll_ctl needed */
    close(c->ev.fd);
    kou_list_remove(&c->link);
    kou_worker.nconns--;
    /*
     * Freed after the current batch of events: an event for this
     * connection may still be waiting in the array epoll_wait filled.
     */
    c->ev.handler = kou_conn_ev_closed;
    c->post.handler = kou_conn_free_post;
    kou_loop_post(&c->post);
    if (kou_worker.accept_paused && !kou_worker.draining) {
        kou_worker_accept_resume();
    }
}

static void
kou_conn_addr_text(kou_conn_t *c, const struct sockaddr_storage *ss)
{
    const char *t = NULL;

    if (ss->ss_family == AF_INET) {
        t = inet_ntop(AF_INET, &((const struct sockaddr_in *) ss)->sin_addr,
                      c->addr_text, sizeof(c->addr_text));
    } else if (ss->ss_family == AF_INET6) {
        t = inet_ntop(AF_INET6,
                      &((const struct sockaddr_in6 *) ss)->sin6_addr,
                      c->addr_text, sizeof(c->addr_text));
    }
    if (t == NULL) {
        strcpy(c->addr_text, "unix");
    }
    c->addr.p = c->addr_text;
    c->addr.n = strlen(c->addr_text);
}

void
kou_conn_accept_handler(kou_ev_t *ev, uint32_t events)
{
    kou_listener_t *ls = ev->data;

    if (!ls->active) {
        return;  /* closed by a drain earlier in this batch of events */
    }
    for (int i = 0; i < KOU_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t               len = sizeof(ss);
        kou_conn_t             *c;
        int                     fd, one = 1;

        if (kou_worker.nconns >= kou_worker.cf->limits.max_connections) {
            kou_worker_accept_pause();
            return;
        }
        fd = accept4(ls->ev.fd, (struct sockaddr *) &ss, &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno != EAGAIN) {
                kou_log_error("accept on %s: %s", ls->text, strerror(errno));
            }
            return;
        }
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            kou_log_error("accept on %s: out of memory", ls->text);
            close(fd);
            return;
        }
        if (ss.ss_family != AF_UNIX) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        c->ev.fd = fd;
        c->ev.handler = kou_conn_ev_handler;
        c->ev.data = c;
        c->post.handler = kou_conn_post_handler;
        kou_timer_init(&c->timer, kou_conn_timer_handler, c);
        kou_conn_addr_text(c, &ss);
        kou_list_insert_tail(&kou_worker.conns, &c->link);
        kou_worker.nconns++;
        if (kou_slot != NULL) {
            kou_slot->connections_accepted++;
            kou_slot->conns_idle++;   /* calloc: c->state is IDLE */
        }

        if (ls->tls != NULL) {
            if (kou_tls_conn_create(c, ls->tls) != KOU_OK) {
                kou_log_error("accept on %s: no memory for TLS", ls->text);
                kou_conn_close(c);
                continue;
            }
            c->ev.handler = kou_conn_hs_ev_handler;
        }
        if (kou_loop_add(&c->ev, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
            != KOU_OK)
        {
            kou_log_error("epoll_ctl: %s", strerror(errno));
            kou_conn_close(c);
            continue;
        }
        /* Data usually arrives with the connection (deferred accept). */
        c->readable = 1;
        c->sock_readable = 1;
        if (c->tls != NULL) {
            kou_conn_handshake(c);
        } else {
            kou_conn_run(c);
        }
    }
    (void) events;
}

void
kou_conn_drain_all(void)
{
    kou_list_t *q, *next;

    for (q = kou_worker.conns.next; q != &kou_worker.conns; q = next) {
        kou_conn_t *c = kou_container_of(q, kou_conn_t, link);

        next = q->next;
        c->draining = 1;
        /*
         * Only connections idle after a response are closed now. A fresh
         * one has not sent its first request yet but its client is about
         * to: it gets that request answered (with Connection: close).
         */
        if (c->r == NULL && c->out_bytes == 0 && c->requests > 0
            && c->state == KOU_CONN_IDLE && c->in_end == c->in_start)
        {
            kou_conn_close(c);
        }
    }
}

void
kou_conn_close_all(void)
{
    while (!kou_list_empty(&kou_worker.conns)) {
        kou_conn_close(kou_container_of(kou_worker.conns.next, kou_conn_t,
                                        link));
    }
}
