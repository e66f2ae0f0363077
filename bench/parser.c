/*
 * Parser micro-benchmark: Kourier's request parser, every tier this CPU and
 * build can run, beside picohttpparser's phr_parse_request (as Debian's
 * libh2o ships it), on the same fixed set of requests in the same harness.
 *
 *   parser [-r RUNS] [-t SECONDS] [-c CPU] [-m] [-k CASE] [-P PROCS]
 *   parser -p PARSER [-k CASE] [-n ITERS]
 *
 * Each (request, parser) pair is timed RUNS times (default 11) for about
 * SECONDS of thread CPU time each (default 0.1), in rounds of one run per
 * parser; the median run is reported with the min-max spread, as ns per
 * request and GB/s of head bytes parsed (a body is skipped, never parsed,
 * by either). -c pins the process to one CPU. -m prints a Markdown table
 * (for docs/benchmarks.md) instead of text. -k times one case only.
 *
 * -P runs the whole measurement in PROCS fresh processes, one after the
 * other, and reports the median of their medians, the spread of those,
 * and the median of each process's own ratio to pico. Both parsers' times
 * move by several per cent from one process to the next (the stack's
 * place in memory, which is chosen anew at each start, seems to be what
 * matters), far more than between the runs of one process; a single
 * process's ratio is one draw of that.
 *
 * -p runs one parser (a tier name or "pico") ITERS times (default 100000)
 * over case number CASE (0-based, in the table's order; default: every
 * case), untimed: a fixed workload for a profiler or an instruction
 * counter, e.g. valgrind --tool=callgrind, to compare builds with.
 *
 * The comparison is not like for like in one respect, and the table should
 * be read with it in mind: phr_parse_request splits the head into method,
 * path, version and (name, value) pairs and checks the bytes' classes,
 * while kou_http_parse_request also validates the target's grammar, Host,
 * Content-Length and Transfer-Encoding, and fills in the framing and
 * connection decisions a server acts on. Before timing, both must accept
 * every request and agree on its head length.
 *
 * Built by bench/parser.sh; not a test, never part of `make check`.
 */

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kou.h"
#include "http_parse.h"

/* picohttpparser's public API (picohttpparser.h), declared here because
 * Debian ships the library but not that header. */
struct phr_header {
    const char *name;
    size_t      name_len;
    const char *value;
    size_t      value_len;
};

int phr_parse_request(const char *buf, size_t len, const char **method,
                      size_t *method_len, const char **path,
                      size_t *path_len, int *minor_version,
                      struct phr_header *headers, size_t *num_headers,
                      size_t last_len);

#define KOU_BP_MAX_HEADERS 100
#define KOU_BP_PIPELINE    16
#define KOU_BP_PICO        KOU_SIMD_COUNT     /* "tier" index of pico */

typedef struct {
    const char *name;
    u_char     *buf;          /* one or more whole requests */
    size_t      len;
    size_t      nreq;         /* requests in buf */
    size_t      head_bytes;   /* bytes of all heads (what is parsed) */
    size_t      body;         /* body bytes after each head */
} kou_bp_case_t;

typedef struct {
    double ns_per_req[KOU_SIMD_COUNT + 1];
    double lo[KOU_SIMD_COUNT + 1];
    double hi[KOU_SIMD_COUNT + 1];
    double ratio[KOU_SIMD_COUNT + 1];   /* time / pico's */
    bool   ran[KOU_SIMD_COUNT + 1];
} kou_bp_result_t;

#define KOU_BP_MAX_PROCS  64

static const kou_http_limits_t kou_bp_limits = {
    8 * 1024, 16 * 1024, KOU_BP_MAX_HEADERS
};

static kou_header_t      kou_bp_headers[KOU_BP_MAX_HEADERS];
static struct phr_header kou_bp_phr[KOU_BP_MAX_HEADERS];

/* Results go here so the compiler cannot drop a parse. */
static volatile size_t kou_bp_sink;

static const char kou_bp_browser[] =
    "GET /docs/guide/index.html?lang=en&ref=nav HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", "
    "\"Not-A.Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,"
    "image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-Mode: navigate\r\n"
    "Sec-Fetch-User: ?1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "Referer: https://www.example.com/docs/\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-GB,en-US;q=0.9,en;q=0.8,fr;q=0.7\r\n"
    "Cookie: _ga=GA1.2.1234567890.1700000000; theme=dark; "
    "sid=3f9a1c0e7b5d4e2f8a6c\r\n"
    "\r\n";

static const char kou_bp_tfb[] =
    "GET /plaintext HTTP/1.1\r\n"
    "Host: tfb-server\r\n"
    "Accept: text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9,"
    "application/xml;q=0.8,*/*;q=0.7\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

static const char kou_bp_json[] =
    "{\"id\":12345,\"name\":\"Kourier\",\"tags\":[\"http\",\"server\",\"c\"],"
    "\"active\":true,\"owner\":{\"login\":\"someone\",\"id\":42},"
    "\"description\":\"a small body that a REST client would post\"}";

static void
kou_bp_die(const char *msg)
{
    fprintf(stderr, "parser: %s\n", msg);
    exit(1);
}

static void
kou_bp_add(kou_bp_case_t *c, const char *name, const char *req, size_t body,
           size_t copies)
{
    size_t n = strlen(req), i;

    c->name = name;
    c->nreq = copies;
    c->len = n * copies;
    c->body = body;
    c->head_bytes = (n - body) * copies;
    c->buf = malloc(c->len);
    if (c->buf == NULL) {
        kou_bp_die("out of memory");
    }
    for (i = 0; i < copies; i++) {
        memcpy(c->buf + i * n, req, n);
    }
}

static size_t
kou_bp_cases(kou_bp_case_t *cases)
{
    static char cookie[4096 + 512], post[1024];
    size_t      n = 0, i, at;

    kou_bp_add(&cases[n++], "wrk default",
               "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", 0, 1);
    kou_bp_add(&cases[n++], "TechEmpower plaintext", kou_bp_tfb, 0, 1);
    kou_bp_add(&cases[n++], "curl",
               "GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
               "User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n", 0, 1);
    kou_bp_add(&cases[n++], "browser navigation", kou_bp_browser, 0, 1);

    at = (size_t) snprintf(cookie, sizeof(cookie),
                           "GET /account HTTP/1.1\r\nHost: www.example.com"
                           "\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)"
                           "\r\nAccept: */*\r\nCookie: ");
    for (i = 0; at + 4 < sizeof(cookie) && i < 4096; i++) {
        /* name=value pairs of cookie-octets */
        cookie[at++] = i % 24 == 23 ? ';' : i % 24 == 0 && i ? ' '
                     : i % 24 == 8 ? '=' : (char) ('a' + i % 26);
    }
    memcpy(cookie + at, "\r\n\r\n", 5);
    kou_bp_add(&cases[n++], "4 KB cookie", cookie, 0, 1);

    snprintf(post, sizeof(post),
             "POST /api/v1/items HTTP/1.1\r\nHost: api.example.com\r\n"
             "User-Agent: python-requests/2.31.0\r\n"
             "Accept-Encoding: gzip, deflate\r\nAccept: */*\r\n"
             "Connection: keep-alive\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             sizeof(kou_bp_json) - 1, kou_bp_json);
    kou_bp_add(&cases[n++], "POST JSON", post, sizeof(kou_bp_json) - 1, 1);

    kou_bp_add(&cases[n++], "TechEmpower pipelined x16", kou_bp_tfb, 0,
               KOU_BP_PIPELINE);
    return n;
}

/* One parse of every request of c; returns the bytes of heads, 0 if one
 * was not accepted. */
static inline size_t
kou_bp_kourier(const kou_bp_case_t *c)
{
    kou_http_parser_t p;
    size_t            off = 0, sum = 0;

    while (off < c->len) {
        kou_http_parser_init(&p, &kou_bp_limits, kou_bp_headers);
        if (kou_http_parse_request(&p, c->buf + off, c->len - off)
            != KOU_OK)
        {
            return 0;
        }
        sum += p.head_len;
        off += p.head_len + (p.content_length > 0
                             ? (size_t) p.content_length : 0);
    }
    return sum;
}

static inline size_t
kou_bp_pico(const kou_bp_case_t *c)
{
    const char *method, *path;
    size_t      method_len, path_len, nh, off = 0, sum = 0;
    int         minor, rc;

    while (off < c->len) {
        nh = KOU_BP_MAX_HEADERS;
        rc = phr_parse_request((const char *) c->buf + off, c->len - off,
                               &method, &method_len, &path, &path_len,
                               &minor, kou_bp_phr, &nh, 0);
        if (rc <= 0) {
            return 0;
        }
        sum += (size_t) rc;
        off += (size_t) rc + c->body;
    }
    return sum;
}

/*
 * The thread's CPU time, not the wall clock: on a shared machine the time
 * the benchmark spends descheduled would otherwise land in whichever row
 * was running.
 */
static double
kou_bp_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double) ts.tv_sec * 1e9 + (double) ts.tv_nsec;
}

/* ns for `iters` passes over c with parser `which`. */
static double
kou_bp_time(const kou_bp_case_t *c, unsigned which, size_t iters)
{
    double t0, t1;
    size_t i, sum = 0;

    if (which != KOU_BP_PICO) {
        kou_http_parser_set_tier(which);
    }
    t0 = kou_bp_now();
    if (which == KOU_BP_PICO) {
        for (i = 0; i < iters; i++) {
            sum += kou_bp_pico(c);
        }
    } else {
        for (i = 0; i < iters; i++) {
            sum += kou_bp_kourier(c);
        }
    }
    t1 = kou_bp_now();
    kou_bp_sink += sum;
    return t1 - t0;
}

static int
kou_bp_cmp(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;

    return x < y ? -1 : x > y;
}

static bool
kou_bp_runs(unsigned which)
{
    return which == KOU_BP_PICO || kou_http_parser_tier_available(which);
}

/*
 * Time every parser on c: calibrate each to about `seconds` a run, then
 * take the runs in rounds, one run of each parser per round, so that
 * drift of a shared machine lands on every parser of a request alike.
 */
static void
kou_bp_measure(const kou_bp_case_t *c, unsigned runs, double seconds,
               kou_bp_result_t *r)
{
    static double per[KOU_SIMD_COUNT + 1][64];
    size_t        iters[KOU_SIMD_COUNT + 1];
    double        ns;
    unsigned      which, i;

    for (which = 0; which <= KOU_BP_PICO; which++) {
        if (!kou_bp_runs(which)) {
            continue;
        }
        iters[which] = 1;
        for ( ;; ) {
            ns = kou_bp_time(c, which, iters[which]);
            if (ns > seconds * 1e9 / 8 || iters[which] > ((size_t) 1 << 40)) {
                break;
            }
            iters[which] *= 2;
        }
        iters[which] = (size_t) ((double) iters[which] * seconds * 1e9 / ns)
                       + 1;
    }

    for (i = 0; i < runs; i++) {
        for (which = 0; which <= KOU_BP_PICO; which++) {
            if (kou_bp_runs(which)) {
                per[which][i] = kou_bp_time(c, which, iters[which])
                                / (double) iters[which] / (double) c->nreq;
            }
        }
    }

    for (which = 0; which <= KOU_BP_PICO; which++) {
        if (!kou_bp_runs(which)) {
            continue;
        }
        qsort(per[which], runs, sizeof(double), kou_bp_cmp);
        r->ns_per_req[which] = per[which][runs / 2];
        r->lo[which] = per[which][0];
        r->hi[which] = per[which][runs - 1];
        r->ran[which] = true;
    }
    for (which = 0; which <= KOU_BP_PICO; which++) {
        if (r->ran[which]) {
            r->ratio[which] = r->ns_per_req[which]
                              / r->ns_per_req[KOU_BP_PICO];
        }
    }
}

/*
 * -P: run this program procs times with -Q (raw results on stdout), each
 * a fresh process, and gather: per request and parser, the median of the
 * processes' medians, their spread, and the median of their ratios.
 */
static void
kou_bp_procs(unsigned procs, char **args, size_t ncases,
             kou_bp_result_t *res)
{
    static double ns[16][KOU_SIMD_COUNT + 1][KOU_BP_MAX_PROCS];
    static double ra[16][KOU_SIMD_COUNT + 1][KOU_BP_MAX_PROCS];
    static unsigned got[16][KOU_SIMD_COUNT + 1];
    unsigned      k, which, n;
    size_t        i;
    int           fd[2], status;
    pid_t         pid;
    FILE         *in;
    double        t, lo, hi, q;

    for (k = 0; k < procs; k++) {
        if (pipe(fd) != 0) {
            kou_bp_die("pipe failed");
        }
        pid = fork();
        if (pid < 0) {
            kou_bp_die("fork failed");
        }
        if (pid == 0) {
            dup2(fd[1], STDOUT_FILENO);
            close(fd[0]);
            close(fd[1]);
            /* a new image: the kernel places its stack anew */
            execv("/proc/self/exe", args);
            _exit(127);
        }
        close(fd[1]);
        in = fdopen(fd[0], "r");
        if (in == NULL) {
            kou_bp_die("fdopen failed");
        }
        while (fscanf(in, "%zu %u %lf %lf %lf %lf", &i, &which, &t, &lo,
                      &hi, &q) == 6)
        {
            if (i < ncases && which <= KOU_BP_PICO
                && got[i][which] < KOU_BP_MAX_PROCS)
            {
                ns[i][which][got[i][which]] = t;
                ra[i][which][got[i][which]++] = q;
            }
        }
        fclose(in);
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)
            || WEXITSTATUS(status) != 0)
        {
            kou_bp_die("a measuring process failed");
        }
    }

    for (i = 0; i < ncases; i++) {
        for (which = 0; which <= KOU_BP_PICO; which++) {
            n = got[i][which];
            if (n == 0) {
                continue;
            }
            qsort(ns[i][which], n, sizeof(double), kou_bp_cmp);
            qsort(ra[i][which], n, sizeof(double), kou_bp_cmp);
            res[i].ns_per_req[which] = ns[i][which][n / 2];
            res[i].lo[which] = ns[i][which][0];
            res[i].hi[which] = ns[i][which][n - 1];
            res[i].ratio[which] = ra[i][which][n / 2];
            res[i].ran[which] = true;
        }
    }
}

static const char *
kou_bp_name(unsigned which)
{
    return which == KOU_BP_PICO ? "pico" : kou_http_parser_tier_name(which);
}

int
main(int argc, char **argv)
{
    static kou_bp_case_t   cases[16];
    static kou_bp_result_t res[16];
    unsigned               runs = 11, which, order, prof = UINT_MAX;
    unsigned               procs = 1;
    double                 seconds = 0.1, gbs, bytes;
    bool                   md = false, raw = false;
    char                   rs[16], ts[32], cs[16], ks[24];
    char                  *args[12];
    size_t                 ncases, i, iters = 100000, only = SIZE_MAX;
    int                    opt, cpu = -1;
    cpu_set_t              set;

    while ((opt = getopt(argc, argv, "r:t:c:mp:k:n:P:Q")) != -1) {
        switch (opt) {
        case 'r':
            runs = (unsigned) atoi(optarg);
            break;
        case 't':
            seconds = atof(optarg);
            break;
        case 'c':
            cpu = atoi(optarg);
            break;
        case 'm':
            md = true;
            break;
        case 'p':
            for (prof = 0; prof <= KOU_BP_PICO; prof++) {
                if (strcmp(optarg, kou_bp_name(prof)) == 0) {
                    break;
                }
            }
            if (prof > KOU_BP_PICO || !kou_bp_runs(prof)) {
                kou_bp_die("-p takes a tier this CPU runs, or pico");
            }
            break;
        case 'k':
            only = (size_t) atol(optarg);
            break;
        case 'n':
            iters = (size_t) atol(optarg);
            break;
        case 'P':
            procs = (unsigned) atoi(optarg);
            break;
        case 'Q':
            /* a process of -P: raw results for the parent */
            raw = true;
            break;
        default:
            fprintf(stderr, "usage: parser [-r RUNS] [-t SECONDS] [-c CPU]"
                            " [-m] [-k CASE] [-P PROCS]\n"
                            "       parser -p PARSER [-k CASE] [-n ITERS]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 64 || seconds <= 0 || procs < 1
        || procs > KOU_BP_MAX_PROCS)
    {
        kou_bp_die("-r takes 1..64, -P 1..64, -t a positive number of "
                   "seconds");
    }
    if (cpu >= 0) {
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set) != 0) {
            fprintf(stderr, "parser: cannot pin to CPU %d: %s\n", cpu,
                    strerror(errno));
            return 1;
        }
    }

    ncases = kou_bp_cases(cases);

    /* both parsers must accept every request and agree on its length */
    for (i = 0; i < ncases; i++) {
        size_t want = cases[i].head_bytes;

        for (which = 0; which <= KOU_BP_PICO; which++) {
            size_t got;

            if (which < KOU_BP_PICO) {
                if (!kou_http_parser_tier_available(which)) {
                    continue;
                }
                kou_http_parser_set_tier(which);
                got = kou_bp_kourier(&cases[i]);
            } else {
                got = kou_bp_pico(&cases[i]);
            }
            if (got != want) {
                fprintf(stderr, "parser: %s finds %zu bytes of heads in "
                        "\"%s\", not %zu\n", kou_bp_name(which), got,
                        cases[i].name, want);
                return 1;
            }
        }
    }

    if (prof <= KOU_BP_PICO) {
        for (i = 0; i < ncases; i++) {
            if (only == SIZE_MAX || only == i) {
                (void) kou_bp_time(&cases[i], prof, iters);
            }
        }
        return 0;
    }

    if (procs > 1) {
        i = 0;
        args[i++] = argv[0];
        args[i++] = (char *) "-Q";
        snprintf(rs, sizeof(rs), "%u", runs);
        args[i++] = (char *) "-r";
        args[i++] = rs;
        snprintf(ts, sizeof(ts), "%.17g", seconds);
        args[i++] = (char *) "-t";
        args[i++] = ts;
        if (cpu >= 0) {
            snprintf(cs, sizeof(cs), "%d", cpu);
            args[i++] = (char *) "-c";
            args[i++] = cs;
        }
        if (only != SIZE_MAX) {
            snprintf(ks, sizeof(ks), "%zu", only);
            args[i++] = (char *) "-k";
            args[i++] = ks;
        }
        args[i] = NULL;
        kou_bp_procs(procs, args, ncases, res);
    } else {
        for (i = 0; i < ncases; i++) {
            if (only == SIZE_MAX || only == i) {
                kou_bp_measure(&cases[i], runs, seconds, &res[i]);
            }
        }
    }

    if (raw) {
        for (i = 0; i < ncases; i++) {
            for (which = 0; which <= KOU_BP_PICO; which++) {
                if (res[i].ran[which]) {
                    printf("%zu %u %.17g %.17g %.17g %.17g\n", i, which,
                           res[i].ns_per_req[which], res[i].lo[which],
                           res[i].hi[which], res[i].ratio[which]);
                }
            }
        }
        return 0;
    }

    if (procs > 1) {
        printf("median of %u processes, each the median of %u runs of "
               "%.2f s of CPU time per request and parser; min-max of the "
               "processes' medians; time/pico the median of the processes' "
               "own ratios%s\n", procs, runs, seconds, md ? "\n" : "");
    } else {
        printf("median of %u runs of %.2f s of CPU time per request and "
               "parser%s\n", runs, seconds, md ? "\n" : "");
    }
    if (md) {
        printf("| request | head bytes | parser | ns/request | min–max "
               "| GB/s | time ×pico |\n"
               "|---|---:|---|---:|---:|---:|---:|\n");
    } else {
        printf("%-26s %6s  %-7s %10s %17s %7s %10s\n", "request",
               "bytes", "parser", "ns/req", "min-max", "GB/s",
               "time/pico");
    }
    for (i = 0; i < ncases; i++) {
        bytes = (double) cases[i].head_bytes / (double) cases[i].nreq;
        for (order = 0; order <= KOU_BP_PICO; order++) {
            which = order == 0 ? KOU_BP_PICO : order - 1;
            if (!res[i].ran[which]) {
                continue;
            }
            gbs = bytes / res[i].ns_per_req[which];
            if (md) {
                printf("| %s | %.0f | %s | %.1f | %.1f–%.1f | %.2f "
                       "| %.2f |\n",
                       order == 0 ? cases[i].name : "",
                       bytes, kou_bp_name(which),
                       res[i].ns_per_req[which], res[i].lo[which],
                       res[i].hi[which], gbs, res[i].ratio[which]);
            } else {
                printf("%-26s %6.0f  %-7s %10.1f %8.1f-%-8.1f %7.2f %10.2f\n",
                       order == 0 ? cases[i].name : "", bytes,
                       kou_bp_name(which), res[i].ns_per_req[which],
                       res[i].lo[which], res[i].hi[which], gbs,
                       res[i].ratio[which]);
            }
        }
    }
    return 0;
}
