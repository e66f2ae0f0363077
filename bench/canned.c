/*
 * canned: the floor of the kernel path a server pays for, as a reference
 * row in bench/run. It parses nothing: it accepts, reads whatever arrives,
 * counts the "\r\n\r\n" that end request heads (a head may straddle two
 * reads) and answers each with the same canned 13-byte response, with one
 * write per read. No server that parses and validates requests can beat it
 * on the same machine; how close one gets is the figure of interest.
 *
 *   canned -p PORT [-h 127.0.0.1] [-s USEC]
 *
 * -s spins USEC microseconds of CPU per request: a server with a known,
 * fixed capacity, against which bench/run checks that two load generators
 * count the same rate when neither of them is the bottleneck.
 *
 * Prints "listening on ADDR:PORT" on stderr once ready (port 0 picks one),
 * runs until SIGTERM, then prints how many requests it answered (a check
 * on any client's count). Single process, single thread, edge-triggered
 * epoll.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Same header set and length as Kourier's answer, Date included. */
static const char kou_canned_resp[] =
    "HTTP/1.1 200 OK\r\n"
    "Server: kourier\r\n"
    "Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
    "Content-Length: 13\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "Hello, World!";

#define KOU_CANNED_LEN  (sizeof(kou_canned_resp) - 1)
#define KOU_CANNED_RBUF 65536

typedef struct {
    int     fd;
    int     tail;            /* bytes of "\r\n\r\n" ending the last read */
    char   *out;             /* unsent answers, only when the client lags */
    size_t  out_len, out_cap;
} kou_canned_conn_t;

static volatile sig_atomic_t kou_canned_stop;
static long                  kou_canned_spin_ns;
static unsigned long long    kou_canned_answered;

static void
kou_canned_spin(size_t requests)
{
    struct timespec ts;
    long long       end, now;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (long long) ts.tv_sec * 1000000000 + ts.tv_nsec;
    end = now + (long long) requests * kou_canned_spin_ns;
    while (now < end) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (long long) ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
}

static void
kou_canned_on_term(int sig)
{
    (void) sig;
    kou_canned_stop = 1;
}

static void
kou_canned_close(kou_canned_conn_t *c)
{
    close(c->fd);
    free(c->out);
    free(c);
}

/* Appends n answers to the pending output; returns -1 when out of memory. */
static int
kou_canned_queue(kou_canned_conn_t *c, size_t n)
{
    size_t need = c->out_len + n * KOU_CANNED_LEN;

    if (need > c->out_cap) {
        size_t cap = need * 2;
        char  *p = realloc(c->out, cap);

        if (p == NULL) {
            return -1;
        }
        c->out = p;
        c->out_cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(c->out + c->out_len, kou_canned_resp, KOU_CANNED_LEN);
        c->out_len += KOU_CANNED_LEN;
    }
    return 0;
}

static int
kou_canned_flush(kou_canned_conn_t *c)
{
    size_t off = 0;

    while (off < c->out_len) {
        ssize_t n = write(c->fd, c->out + off, c->out_len - off);

        if (n < 0) {
            if (errno == EAGAIN) {
                break;
            }
            return -1;
        }
        off += (size_t) n;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    return 0;
}

/* Counts request ends in a read, carrying a partial "\r\n\r\n" across. */
static size_t
kou_canned_count(kou_canned_conn_t *c, const char *p, size_t n)
{
    static const char  end[] = "\r\n\r\n";
    size_t             count = 0;
    int                t = c->tail;

    for (size_t i = 0; i < n; i++) {
        if (p[i] == end[t]) {
            if (++t == 4) {
                count++;
                t = 0;
            }
        } else {
            t = p[i] == '\r' ? 1 : 0;
        }
    }
    c->tail = t;
    return count;
}

int
main(int argc, char **argv)
{
    const char          *host = "127.0.0.1";
    int                  port = 0, one = 1, ep, lfd, opt;
    struct sockaddr_in   sa;
    socklen_t            salen = sizeof(sa);
    struct epoll_event   ev, evs[512];
    struct rlimit        rl;
    static char          rbuf[KOU_CANNED_RBUF];

    while ((opt = getopt(argc, argv, "h:p:s:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 's': kou_canned_spin_ns = atol(optarg) * 1000; break;
        default:
            fprintf(stderr, "usage: canned [-h ADDR] [-p PORT] [-s USEC]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, kou_canned_on_term);
    signal(SIGINT, kou_canned_on_term);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (lfd < 0 || bind(lfd, (struct sockaddr *) &sa, sizeof(sa)) != 0
        || listen(lfd, 4096) != 0
        || getsockname(lfd, (struct sockaddr *) &sa, &salen) != 0)
    {
        fprintf(stderr, "canned: listen: %s\n", strerror(errno));
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "canned: listening on %s:%d\n", host, ntohs(sa.sin_port));

    while (!kou_canned_stop) {
        int n = epoll_wait(ep, evs, 512, -1);

        for (int i = 0; i < n; i++) {
            kou_canned_conn_t *c = evs[i].data.ptr;

            if (c == NULL) {
                int fd;

                while ((fd = accept4(lfd, NULL, NULL,
                                     SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
                {
                    c = calloc(1, sizeof(*c));
                    if (c == NULL) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
                               sizeof(one));
                    ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
                    ev.data.ptr = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (c->out_len > 0 && kou_canned_flush(c) != 0) {
                kou_canned_close(c);
                continue;
            }
            for (;;) {
                ssize_t r = read(c->fd, rbuf, sizeof(rbuf));
                size_t  k;

                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) {
                        break;
                    }
                    kou_canned_close(c);
                    break;
                }
                k = kou_canned_count(c, rbuf, (size_t) r);
                if (k == 0) {
                    continue;
                }
                kou_canned_answered += k;
                if (kou_canned_spin_ns) {
                    kou_canned_spin(k);
                }
                if (kou_canned_queue(c, k) != 0 || kou_canned_flush(c) != 0) {
                    kou_canned_close(c);
                    break;
                }
            }
        }
    }
    /* lets bench/run and a reader check a client's count against ours */
    fprintf(stderr, "canned: answered %llu requests\n", kou_canned_answered);
    return 0;
}
