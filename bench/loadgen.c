/*
 * loadgen: a minimal pipelined HTTP/1.1 load generator.
 *
 * wrk parses every response with a general parser and runs Lua to build
 * pipelined batches, so against a fast server on the same machine it runs
 * out of CPU before the server does. This tool does the least a client can
 * do and still verify what it counts: every connection writes one prebuilt
 * buffer of `depth` requests, then reads until `depth` responses have been
 * framed by Content-Length, checking each status line and body length, and
 * only then writes the next batch. Latency is measured per batch (for
 * depth 1, per request).
 *
 *   loadgen -p PORT [-h 127.0.0.1] [-u /hello] [-c conns] [-t threads]
 *           [-d depth] [-D seconds] [-w warmup] [-b body_len] [-L]
 *           [-a cpu,cpu...]
 *   loadgen -p PORT -H N          hold N idle keep-alive connections
 *
 * Load mode prints one line of key=value pairs (requests, rps, p50_us,
 * p99_us, ...), which bench/run parses. Hold mode opens N connections, makes
 * one request on each, prints "held N" and waits for SIGTERM or EOF on
 * stdin; its sockets close with a reset so that no TIME_WAIT is left to
 * exhaust the ephemeral ports of the next run.
 *
 * Not part of the server and not part of `make check`: bench/run builds it
 * with `cc -O2 -pthread`.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define KOU_LG_RBUF      (256 * 1024)
/* Latency histogram: 1 us buckets below 64 ms, 1 ms buckets up to 64 s. */
#define KOU_LG_FINE      65536
#define KOU_LG_COARSE    65536

typedef struct {
    int       fd;
    size_t    woff;          /* bytes of the batch already written */
    int       want;          /* responses still expected in this batch */
    size_t    rlen;          /* bytes held in rbuf */
    size_t    body_left;     /* body bytes of the current response */
    int       in_body;
    uint64_t  t_start;       /* when the batch was written, ns */
    char     *rbuf;
} kou_lg_conn_t;

typedef struct {
    pthread_t        tid;
    int              cpu;
    int              nconns;
    uint64_t         requests;
    uint64_t         batches;
    uint64_t         errors;
    uint64_t         reconnects;
    uint64_t         resp_bytes;
    uint32_t        *fine;
    uint32_t        *coarse;
    char             err[256];
} kou_lg_thread_t;

static struct sockaddr_in  kou_lg_addr;
static char               *kou_lg_req;
static size_t              kou_lg_req_len;
static int                 kou_lg_depth = 1;
static long                kou_lg_body_len = -1;
static int                 kou_lg_lowat;
static volatile int        kou_lg_stop;
static volatile int        kou_lg_measuring;
static uint64_t            kou_lg_measure_start;

static uint64_t
kou_lg_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static void
kou_lg_die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void
kou_lg_raise_nofile(rlim_t want)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want) {
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* A blocking connect keeps the set-up simple; it happens before timing. */
static int
kou_lg_connect(int linger_reset)
{
    int fd, one = 1;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (linger_reset) {
        struct linger lg = { 1, 0 };

        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    if (connect(fd, (struct sockaddr *) &kou_lg_addr, sizeof(kou_lg_addr))
        != 0)
    {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void
kou_lg_record(kou_lg_thread_t *t, uint64_t ns)
{
    uint64_t us = ns / 1000;

    if (us < KOU_LG_FINE) {
        t->fine[us]++;
    } else if (us / 1000 < KOU_LG_COARSE) {
        t->coarse[us / 1000]++;
    } else {
        t->coarse[KOU_LG_COARSE - 1]++;
    }
}

/* Case-insensitive search for "content-length:" inside a header block. */
static long
kou_lg_content_length(const char *p, size_t n)
{
    static const char  name[] = "\ncontent-length:";
    size_t             k = sizeof(name) - 1;

    for (size_t i = 0; i + k <= n; i++) {
        size_t j;

        for (j = 0; j < k; j++) {
            char c = p[i + j];

            if (c >= 'A' && c <= 'Z') {
                c |= 0x20;
            }
            if (c != name[j]) {
                break;
            }
        }
        if (j == k) {
            const char *q = p + i + k, *end = p + n;
            long        v = 0;

            while (q < end && (*q == ' ' || *q == '\t')) {
                q++;
            }
            if (q == end || *q < '0' || *q > '9') {
                return -1;
            }
            while (q < end && *q >= '0' && *q <= '9') {
                v = v * 10 + (*q++ - '0');
            }
            return v;
        }
    }
    return -1;
}

/*
 * Frame as many responses as rbuf holds. Returns 0, or -1 with t->err set
 * when a response is not "HTTP/1.1 200" or its length is not the expected
 * one: a benchmark that counts errors as answers measures nothing.
 */
static int
kou_lg_parse(kou_lg_thread_t *t, kou_lg_conn_t *c)
{
    size_t off = 0;

    while (off < c->rlen && c->want > 0) {
        if (c->in_body) {
            size_t take = c->rlen - off;

            if (take > c->body_left) {
                take = c->body_left;
            }
            off += take;
            c->body_left -= take;
            if (c->body_left > 0) {
                break;
            }
            c->in_body = 0;
            c->want--;
            if (kou_lg_measuring) {
                t->requests++;
            }
            continue;
        }

        char   *p = c->rbuf + off, *eoh;
        size_t  n = c->rlen - off;
        long    cl;

        eoh = memmem(p, n, "\r\n\r\n", 4);
        if (eoh == NULL) {
            if (n > 16384) {
                snprintf(t->err, sizeof(t->err), "header block over 16 KiB");
                return -1;
            }
            break;
        }
        if (n < 13 || memcmp(p, "HTTP/1.1 200 ", 13) != 0) {
            snprintf(t->err, sizeof(t->err), "unexpected status: %.*s",
                     (int) (memchr(p, '\r', n) ? (char *) memchr(p, '\r', n)
                                                 - p : 40), p);
            return -1;
        }
        cl = kou_lg_content_length(p, (size_t) (eoh - p) + 2);
        if (cl < 0 || (kou_lg_body_len >= 0 && cl != kou_lg_body_len)) {
            snprintf(t->err, sizeof(t->err),
                     "Content-Length %ld, expected %ld", cl, kou_lg_body_len);
            return -1;
        }
        if (kou_lg_measuring && t->resp_bytes == 0) {
            t->resp_bytes = (uint64_t) (eoh - p) + 4 + (uint64_t) cl;
        }
        off += (size_t) (eoh - p) + 4;
        c->body_left = (size_t) cl;
        c->in_body = 1;
        if (cl == 0) {
            c->in_body = 0;
            c->want--;
            if (kou_lg_measuring) {
                t->requests++;
            }
        }
    }
    if (c->want == 0 && off < c->rlen) {
        snprintf(t->err, sizeof(t->err), "%zu bytes beyond the last response",
                 c->rlen - off);
        return -1;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    return 0;
}

static int
kou_lg_send(kou_lg_conn_t *c)
{
    while (c->woff < kou_lg_req_len) {
        ssize_t n = write(c->fd, kou_lg_req + c->woff,
                          kou_lg_req_len - c->woff);

        if (n < 0) {
            return errno == EAGAIN ? 0 : -1;
        }
        c->woff += (size_t) n;
    }
    return 0;
}

static int
kou_lg_start_batch(kou_lg_conn_t *c)
{
    c->woff = 0;
    c->want = kou_lg_depth;
    c->t_start = kou_lg_now();
    return kou_lg_send(c);
}

static int
kou_lg_reconnect(kou_lg_thread_t *t, int ep, kou_lg_conn_t *c)
{
    struct epoll_event ev;

    close(c->fd);
    t->reconnects++;
    c->fd = kou_lg_connect(0);
    if (c->fd < 0) {
        return -1;
    }
    c->rlen = 0;
    c->in_body = 0;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
    ev.data.ptr = c;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        return -1;
    }
    return kou_lg_start_batch(c);
}

static void *
kou_lg_thread(void *arg)
{
    kou_lg_thread_t     *t = arg;
    kou_lg_conn_t       *conns;
    struct epoll_event   ev, evs[256];
    int                  ep;

    if (t->cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(t->cpu, &set);
        sched_setaffinity(0, sizeof(set), &set);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t) t->nconns, sizeof(*conns));
    if (ep < 0 || conns == NULL) {
        kou_lg_die("setup");
    }
    for (int i = 0; i < t->nconns; i++) {
        kou_lg_conn_t *c = &conns[i];

        c->rbuf = malloc(KOU_LG_RBUF);
        c->fd = kou_lg_connect(0);
        if (c->rbuf == NULL || c->fd < 0) {
            kou_lg_die("connect");
        }
        ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
        ev.data.ptr = c;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
            kou_lg_die("epoll_ctl");
        }
    }
    for (int i = 0; i < t->nconns; i++) {
        if (kou_lg_start_batch(&conns[i]) != 0) {
            kou_lg_die("write");
        }
    }

    while (!kou_lg_stop) {
        int n = epoll_wait(ep, evs, 256, 100);

        for (int i = 0; i < n; i++) {
            kou_lg_conn_t *c = evs[i].data.ptr;

            if (c->woff < kou_lg_req_len && kou_lg_send(c) != 0) {
                goto reset;
            }
            for (;;) {
                ssize_t r = read(c->fd, c->rbuf + c->rlen,
                                 KOU_LG_RBUF - c->rlen);

                if (r == 0) {
                    goto reset;
                }
                if (r < 0) {
                    if (errno == EAGAIN) {
                        break;
                    }
                    goto reset;
                }
                c->rlen += (size_t) r;
                if (kou_lg_parse(t, c) != 0) {
                    t->errors++;
                    kou_lg_stop = 1;
                    break;
                }
                if (c->want == 0) {
                    uint64_t now = kou_lg_now();

                    if (kou_lg_measuring && c->t_start
                        >= kou_lg_measure_start)
                    {
                        kou_lg_record(t, now - c->t_start);
                        t->batches++;
                    }
                    if (kou_lg_lowat && c->rlen == 0 && t->resp_bytes) {
                        int lw = (int) (t->resp_bytes * kou_lg_depth);

                        setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &lw,
                                   sizeof(lw));
                    }
                    if (kou_lg_start_batch(c) != 0) {
                        goto reset;
                    }
                }
            }
            continue;
        reset:
            /*
             * The server closed (a keep-alive request limit) or reset the
             * connection: the batch in flight is lost, reconnect and go on;
             * the count of reconnects is reported.
             */
            if (kou_lg_stop || kou_lg_reconnect(t, ep, c) != 0) {
                if (!kou_lg_stop) {
                    snprintf(t->err, sizeof(t->err), "reconnect failed: %s",
                             strerror(errno));
                    t->errors++;
                    kou_lg_stop = 1;
                }
            }
        }
    }
    for (int i = 0; i < t->nconns; i++) {
        close(conns[i].fd);
        free(conns[i].rbuf);
    }
    free(conns);
    close(ep);
    return NULL;
}

static void
kou_lg_on_term(int sig)
{
    (void) sig;
    kou_lg_stop = 1;
}

/* Hold mode: measure what an idle keep-alive connection costs a server. */
static int
kou_lg_hold(int n)
{
    int    *fds = calloc((size_t) n, sizeof(int));
    char    buf[4096];
    int     done = 0;

    if (fds == NULL) {
        kou_lg_die("calloc");
    }
    kou_lg_raise_nofile((rlim_t) n + 64);
    for (int i = 0; i < n; i++) {
        fds[i] = kou_lg_connect(1);
        if (fds[i] < 0) {
            fprintf(stderr, "loadgen: connection %d: %s\n", i,
                    strerror(errno));
            return 1;
        }
        if (write(fds[i], kou_lg_req, kou_lg_req_len)
            != (ssize_t) kou_lg_req_len)
        {
            kou_lg_die("write");
        }
        /* Read each answer so the server is back to idle on every one. */
        if (i % 256 == 255 || i == n - 1) {
            for (int j = done; j <= i; j++) {
                struct pollfd pfd = { fds[j], POLLIN, 0 };
                size_t        got = 0;

                while (got == 0 || memmem(buf, got, "\r\n\r\n", 4) == NULL) {
                    ssize_t r;

                    if (poll(&pfd, 1, 10000) != 1) {
                        fprintf(stderr, "loadgen: no answer on %d\n", j);
                        return 1;
                    }
                    r = read(fds[j], buf + got, sizeof(buf) - 1 - got);
                    if (r <= 0) {
                        fprintf(stderr, "loadgen: connection %d closed\n",
                                j);
                        return 1;
                    }
                    got += (size_t) r;
                }
                if (memcmp(buf, "HTTP/1.1 200 ", 13) != 0) {
                    fprintf(stderr, "loadgen: unexpected status on %d\n", j);
                    return 1;
                }
            }
            done = i + 1;
        }
    }
    printf("held %d\n", n);
    fflush(stdout);
    signal(SIGTERM, kou_lg_on_term);
    signal(SIGINT, kou_lg_on_term);
    while (!kou_lg_stop) {
        struct pollfd pfd = { 0, POLLIN, 0 };

        if (poll(&pfd, 1, 200) == 1 && read(0, buf, sizeof(buf)) <= 0) {
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        close(fds[i]);
    }
    free(fds);
    return 0;
}

static uint64_t
kou_lg_percentile(uint64_t *fine, uint64_t *coarse, uint64_t total,
                  double q)
{
    uint64_t rank = (uint64_t) (q * (double) total), seen = 0;

    if (rank >= total && total > 0) {
        rank = total - 1;
    }
    for (uint64_t i = 0; i < KOU_LG_FINE; i++) {
        seen += fine[i];
        if (seen > rank) {
            return i;
        }
    }
    for (uint64_t i = 0; i < KOU_LG_COARSE; i++) {
        seen += coarse[i];
        if (seen > rank) {
            return i * 1000;
        }
    }
    return 0;
}

static void
kou_lg_usage(void)
{
    fprintf(stderr,
        "usage: loadgen -p PORT [-h ADDR] [-u PATH] [-c CONNS] [-t THREADS]\n"
        "               [-d DEPTH] [-D SECONDS] [-w WARMUP] [-b BODYLEN] [-L]"
        "\n               [-a CPU,CPU,...]\n"
        "       loadgen -p PORT [-h ADDR] [-u PATH] -H CONNS\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    const char       *host = "127.0.0.1", *path = "/hello", *cpus = NULL;
    int               port = 0, nconns = 10, nthreads = 1, hold = 0, opt;
    double            duration = 5, warmup = 1;
    kou_lg_thread_t  *th;
    char              one[512];
    int               one_len;

    while ((opt = getopt(argc, argv, "h:p:u:c:t:d:D:w:b:LH:a:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 't': nthreads = atoi(optarg); break;
        case 'd': kou_lg_depth = atoi(optarg); break;
        case 'D': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'b': kou_lg_body_len = atol(optarg); break;
        case 'L': kou_lg_lowat = 1; break;
        case 'H': hold = atoi(optarg); break;
        case 'a': cpus = optarg; break;
        default: kou_lg_usage();
        }
    }
    if (port <= 0 || nconns < 1 || nthreads < 1 || kou_lg_depth < 1) {
        kou_lg_usage();
    }
    if (nthreads > nconns) {
        nthreads = nconns;
    }
    signal(SIGPIPE, SIG_IGN);
    kou_lg_addr.sin_family = AF_INET;
    kou_lg_addr.sin_port = htons((uint16_t) port);
    if (inet_pton(AF_INET, host, &kou_lg_addr.sin_addr) != 1) {
        kou_lg_usage();
    }

    one_len = snprintf(one, sizeof(one),
                       "GET %s HTTP/1.1\r\nHost: %s:%d\r\n"
                       "User-Agent: kourier-bench\r\nAccept: */*\r\n\r\n",
                       path, host, port);
    if (hold) {
        kou_lg_req = one;
        kou_lg_req_len = (size_t) one_len;
        return kou_lg_hold(hold);
    }
    kou_lg_req_len = (size_t) one_len * (size_t) kou_lg_depth;
    kou_lg_req = malloc(kou_lg_req_len);
    if (kou_lg_req == NULL) {
        kou_lg_die("malloc");
    }
    for (int i = 0; i < kou_lg_depth; i++) {
        memcpy(kou_lg_req + (size_t) i * (size_t) one_len, one,
               (size_t) one_len);
    }
    kou_lg_raise_nofile((rlim_t) nconns + 64);

    th = calloc((size_t) nthreads, sizeof(*th));
    if (th == NULL) {
        kou_lg_die("calloc");
    }
    for (int i = 0; i < nthreads; i++) {
        th[i].nconns = nconns / nthreads + (i < nconns % nthreads);
        th[i].cpu = -1;
        th[i].fine = calloc(KOU_LG_FINE, sizeof(uint32_t));
        th[i].coarse = calloc(KOU_LG_COARSE, sizeof(uint32_t));
        if (th[i].fine == NULL || th[i].coarse == NULL) {
            kou_lg_die("calloc");
        }
    }
    if (cpus != NULL) {
        const char *p = cpus;

        for (int i = 0; i < nthreads && *p; i++) {
            th[i].cpu = atoi(p);
            p = strchr(p, ',');
            p = p ? p + 1 : "";
        }
    }
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&th[i].tid, NULL, kou_lg_thread, &th[i]) != 0) {
            kou_lg_die("pthread_create");
        }
    }

    struct timespec ts;
    uint64_t        t0, t1;

    ts.tv_sec = (time_t) warmup;
    ts.tv_nsec = (long) ((warmup - (double) ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
    t0 = kou_lg_now();
    kou_lg_measure_start = t0;
    kou_lg_measuring = 1;
    ts.tv_sec = (time_t) duration;
    ts.tv_nsec = (long) ((duration - (double) ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !kou_lg_stop) {
    }
    kou_lg_measuring = 0;
    t1 = kou_lg_now();
    kou_lg_stop = 1;

    uint64_t  req = 0, batches = 0, errors = 0, reconnects = 0, rbytes = 0;
    uint64_t *fine = calloc(KOU_LG_FINE, sizeof(uint64_t));
    uint64_t *coarse = calloc(KOU_LG_COARSE, sizeof(uint64_t));
    int       rc = 0;

    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i].tid, NULL);
        req += th[i].requests;
        batches += th[i].batches;
        errors += th[i].errors;
        reconnects += th[i].reconnects;
        if (th[i].resp_bytes) {
            rbytes = th[i].resp_bytes;
        }
        for (int j = 0; j < KOU_LG_FINE; j++) {
            fine[j] += th[i].fine[j];
        }
        for (int j = 0; j < KOU_LG_COARSE; j++) {
            coarse[j] += th[i].coarse[j];
        }
        if (th[i].err[0]) {
            fprintf(stderr, "loadgen: thread %d: %s\n", i, th[i].err);
            rc = 1;
        }
    }

    double secs = (double) (t1 - t0) / 1e9;

    printf("requests=%llu seconds=%.3f rps=%.0f p50_us=%llu p99_us=%llu "
           "p999_us=%llu batches=%llu errors=%llu reconnects=%llu "
           "resp_bytes=%llu\n",
           (unsigned long long) req, secs, (double) req / secs,
           (unsigned long long) kou_lg_percentile(fine, coarse, batches, 0.5),
           (unsigned long long) kou_lg_percentile(fine, coarse, batches,
                                                  0.99),
           (unsigned long long) kou_lg_percentile(fine, coarse, batches,
                                                  0.999),
           (unsigned long long) batches, (unsigned long long) errors,
           (unsigned long long) reconnects, (unsigned long long) rbytes);
    return rc;
}
