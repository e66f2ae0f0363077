/*
 * access_log: one line per request, written by a log hook.
 *
 *     modules:
 *       access_log:
 *         file: /var/log/kourier/access.log
 *         format: combined          # or common, json, or a format string
 *         buffer: 64k               # flushed when full ...
 *         flush: 1s                 # ... or this long after the first line
 *     hooks:
 *       log: [access_log]
 *
 * A format string mixes text with variables, `$name` or `${name}` (`$$` is
 * a dollar sign); see kou_alog_vars below and docs/access_log.md. Values
 * are escaped so that a request cannot forge a line: in text formats `"`,
 * `\`, control bytes and bytes >= 0x7f become \xHH; in JSON, strings are
 * escaped as JSON requires and bytes that are not UTF-8 become \u00HH.
 *
 * Each worker keeps its own buffer and writes whole lines with one write(2)
 * per flush on an O_APPEND descriptor, so the workers' lines never mix. The
 * descriptor is non-blocking: a regular file never makes the worker wait
 * longer than the page cache does, and a FIFO whose reader is slow makes
 * the module drop lines, not stall requests. A failure (full disk, file
 * not writable, FIFO without a reader) is logged once, with the number of
 * lines lost logged once it works again. SIGUSR1 reopens the file (after
 * logrotate moved it).
 *
 * A relative `file` is relative to the server's working directory.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <kourier/module.h>

typedef enum {
    KOU_ALOG_TEXT,                  /* literal text of the format */
    KOU_ALOG_REMOTE_ADDR,
    KOU_ALOG_TIME_LOCAL,
    KOU_ALOG_TIME_ISO8601,
    KOU_ALOG_REQUEST,
    KOU_ALOG_METHOD,
    KOU_ALOG_URI,
    KOU_ALOG_HOST,
    KOU_ALOG_STATUS,
    KOU_ALOG_BYTES_SENT,
    KOU_ALOG_BODY_BYTES_SENT,
    KOU_ALOG_REQUEST_LENGTH,
    KOU_ALOG_REQUEST_TIME,
    KOU_ALOG_ROUTE,
    KOU_ALOG_HEADER,                /* $http_NAME */
    KOU_ALOG_VAR                    /* set by a module: $upstream_*, $var_* */
} kou_alog_var_e;

typedef struct {
    const char    *name;
    kou_alog_var_e var;
} kou_alog_varname_t;

static const kou_alog_varname_t kou_alog_vars[] = {
    { "remote_addr", KOU_ALOG_REMOTE_ADDR },
    { "time_local", KOU_ALOG_TIME_LOCAL },
    { "time_iso8601", KOU_ALOG_TIME_ISO8601 },
    { "request", KOU_ALOG_REQUEST },
    { "request_method", KOU_ALOG_METHOD },
    { "request_uri", KOU_ALOG_URI },
    { "host", KOU_ALOG_HOST },
    { "status", KOU_ALOG_STATUS },
    { "bytes_sent", KOU_ALOG_BYTES_SENT },
    { "body_bytes_sent", KOU_ALOG_BODY_BYTES_SENT },
    { "request_length", KOU_ALOG_REQUEST_LENGTH },
    { "request_time", KOU_ALOG_REQUEST_TIME },
    { "route", KOU_ALOG_ROUTE },
    { NULL, KOU_ALOG_TEXT }
};

#define KOU_ALOG_COMMON \
    "$remote_addr - - [$time_local] \"$request\" $status $body_bytes_sent"
#define KOU_ALOG_COMBINED \
    KOU_ALOG_COMMON " \"$http_referer\" \"$http_user_agent\""

typedef struct {
    kou_alog_var_e var;
    kou_str_t      s;               /* the text, or the header's name */
} kou_alog_op_t;

typedef enum {
    KOU_ALOG_CUSTOM,                /* a format string: the ops */
    KOU_ALOG_PRESET_COMMON,
    KOU_ALOG_PRESET_COMBINED,
    KOU_ALOG_PRESET_JSON
} kou_alog_preset_e;

typedef struct {
    char          *file;            /* NUL-terminated */
    int            json;
    int            preset;          /* kou_alog_preset_e */
    kou_alog_op_t *ops;
    size_t         nops;
    char          *names;           /* storage of the header names */
    size_t         cap;             /* buffer size */
    uint64_t       flush_ms;

    /* worker state */
    int            fd;              /* -1: not open */
    char          *buf;
    size_t         len;
    kou_htimer_t  *timer;           /* the flush timer, NULL when idle */
    int            failing;         /* a failure was reported */
    uint64_t       lost;            /* lines dropped since then */
    uint64_t       open_ms;         /* last attempt to open */
    int64_t        tsec;            /* the second the times below show */
    char           tlocal[40];
    size_t         tlocal_n;
    char           tpre[64];        /* " - - [tlocal] \"" (preset lines) */
    size_t         tpre_n;
    int            status;          /* the status and body size ... */
    uint64_t       body;
    char           spiece[48];      /* ... in "\" STATUS BODY" (presets) */
    size_t         spiece_n;
    char           tiso[40];
    size_t         tiso_n;
} kou_alog_t;

/* A line being formatted at the end of the buffer. */
typedef struct {
    char  *p;
    size_t n;
    size_t cap;
    int    over;                    /* something did not fit */
} kou_alog_w_t;

static const kou_host_t *kou_alog_host;

/* host->headers and log_info, NULL on a server before ABI 1.3 */
static const kou_header_t *(*kou_alog_host_headers)(kou_request_t *r,
                                                     size_t *n);
static const kou_request_info_t *(*kou_alog_host_log_info)(
    kou_request_t *r);

/* Is field f of the host table there (a server older than this header)? */
#define KOU_HOST_HAS(h, f) \
    ((h)->size >= offsetof(kou_host_t, f) + sizeof((h)->f))

static const kou_conf_key_t kou_alog_conf[] = {
    { "file", KOU_CONF_STR, KOU_SCOPE_MODULE, 1, NULL,
      "the log file (appended to, created 0644 if missing)" },
    { "format", KOU_CONF_STR, KOU_SCOPE_MODULE, 0, "combined",
      "combined, common, json, or a format string with $variables" },
    { "buffer", KOU_CONF_SIZE, KOU_SCOPE_MODULE, 0, "64k",
      "per-worker buffer, written when full" },
    { "flush", KOU_CONF_DURATION, KOU_SCOPE_MODULE, 0, "1s",
      "longest time a line waits in the buffer" },
    { NULL, 0, 0, 0, NULL, NULL }
};

/* ---- configuration ---- */

/*
 * The request's facts: those the server gathers once for every log hook
 * (ABI 1.3), or a copy in *local.
 */
static inline const kou_request_info_t *
kou_alog_info(kou_request_t *r, kou_request_info_t *local)
{
    if (kou_alog_host_log_info != NULL) {
        return kou_alog_host_log_info(r);
    }
    local->size = sizeof(*local);
    (void) kou_alog_host->request_info(r, local);
    if (local->size < sizeof(*local)) {
        /* an older server: what it does not know is 0 */
        memset((char *) local + local->size, 0,
               sizeof(*local) - local->size);
    }
    return local;
}

/* Body bytes of the response; head and body on a server before ABI 1.1. */
static uint64_t
kou_alog_body_bytes(const kou_request_info_t *info)
{
    if (info->size >= offsetof(kou_request_info_t, body_bytes_out)
                          + sizeof(info->body_bytes_out))
    {
        return info->body_bytes_out;
    }
    return info->bytes_out;
}

static void
kou_alog_free(kou_alog_t *al)
{
    if (al != NULL) {
        free(al->file);
        free(al->ops);
        free(al->names);
        free(al);
    }
}

static int
kou_alog_isname(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '_';
}

/*
 * Compile a format string into ops. Header names are stored in al->names
 * ("$http_user_agent" looks up "user-agent"), which is sized for the
 * worst case before the ops point into it.
 */
static int
kou_alog_compile(kou_alog_t *al, const kou_conf_t *node, kou_str_t f,
                 char *err, size_t errlen)
{
    const kou_host_t *host = kou_alog_host;
    size_t            i = 0, nn = 0;

    al->ops = calloc(f.n + 1, sizeof(kou_alog_op_t));
    al->names = malloc(f.n + 1);
    if (al->ops == NULL || al->names == NULL) {
        return host->conf_error(node, err, errlen, "access_log: out of "
                                "memory");
    }

    while (i < f.n) {
        kou_alog_op_t *op = &al->ops[al->nops];
        size_t         start = i, ns, ne;
        int            brace;

        if (f.p[i] != '$' || (i + 1 < f.n && f.p[i + 1] == '$')) {
            /* text up to the next variable; "$$" is a literal '$' */
            if (f.p[i] == '$') {
                start = ++i;
            }
            i++;
            while (i < f.n && f.p[i] != '$') {
                i++;
            }
            op->var = KOU_ALOG_TEXT;
            op->s = (kou_str_t) { f.p + start, i - start };
            al->nops++;
            continue;
        }

        brace = i + 1 < f.n && f.p[i + 1] == '{';
        ns = ne = i + 1 + (size_t) brace;
        while (ne < f.n && kou_alog_isname(f.p[ne])) {
            ne++;
        }
        if (ne == ns || (brace && (ne >= f.n || f.p[ne] != '}'))) {
            return host->conf_error(node, err, errlen, "access_log: format: "
                                    "\"$\" at offset %zu is not followed "
                                    "by a variable name (write $$ for a "
                                    "dollar sign)", i);
        }
        i = ne + (size_t) brace;

        kou_str_t name = { f.p + ns, ne - ns };
        if (name.n > 5 && memcmp(name.p, "http_", 5) == 0) {
            op->var = KOU_ALOG_HEADER;
            op->s.p = al->names + nn;
            for (size_t k = 5; k < name.n; k++) {
                al->names[nn++] = name.p[k] == '_' ? '-' : name.p[k];
            }
            op->s.n = name.n - 5;
            al->nops++;
            continue;
        }
        if ((name.n > 9 && memcmp(name.p, "upstream_", 9) == 0)
            || (name.n > 4 && memcmp(name.p, "var_", 4) == 0))
        {
            /* a request variable (var_set): $var_x names "x" */
            size_t skip = name.p[0] == 'v' ? 4 : 0;

            op->var = KOU_ALOG_VAR;
            op->s.p = al->names + nn;
            for (size_t k = skip; k < name.n; k++) {
                char c = name.p[k];

                al->names[nn++] = c >= 'A' && c <= 'Z' ? c + 32 : c;
            }
            op->s.n = name.n - skip;
            al->nops++;
            continue;
        }
        for (const kou_alog_varname_t *v = kou_alog_vars; ; v++) {
            if (v->name == NULL) {
                return host->conf_error(node, err, errlen,
                                        "access_log: format: unknown "
                                        "variable $%.*s (see "
                                        "docs/access_log.md)",
                                        (int) name.n, name.p);
            }
            if (strlen(v->name) == name.n
                && memcmp(v->name, name.p, name.n) == 0)
            {
                op->var = v->var;
                break;
            }
        }
        al->nops++;
    }
    return KOU_OK;
}

static int
kou_alog_configure(const kou_conf_t *conf, void **state, char *err,
                   size_t errlen)
{
    const kou_host_t *host = kou_alog_host;
    const kou_conf_t *n;
    kou_alog_t       *al;
    kou_str_t         s;
    uint64_t          size;

    if (!KOU_HOST_HAS(host, request_info)) {
        return host->conf_error(conf, err, errlen, "access_log: this server "
                                "is too old (no request_info)");
    }
    al = calloc(1, sizeof(*al));
    if (al == NULL) {
        return host->conf_error(conf, err, errlen, "access_log: out of "
                                "memory");
    }
    al->fd = -1;
    al->tsec = -1;
    al->status = -1;

    n = host->conf_get(conf, "file");
    if (host->conf_str(n, &s) != KOU_OK || s.n == 0
        || memchr(s.p, '\0', s.n) != NULL)
    {
        kou_alog_free(al);
        return host->conf_error(n, err, errlen, "access_log: file: expected "
                                "a file name");
    }
    if (KOU_HOST_HAS(host, conf_path)) {
        /* relative to the prefix, like the server's own paths */
        char path[4096];
        if (host->conf_path(n, path, sizeof(path)) != KOU_OK) {
            kou_alog_free(al);
            return host->conf_error(n, err, errlen, "access_log: file: "
                                    "path too long");
        }
        al->file = strdup(path);
    } else {
        al->file = strndup(s.p, s.n);
    }
    if (al->file == NULL) {
        kou_alog_free(al);
        return host->conf_error(n, err, errlen, "access_log: out of memory");
    }
    if (s.p[0] == '/') {
        /*
         * Catch a mistyped directory at `kourier -t` time. Only for paths
         * written absolute: a relative one may name a directory (logs/)
         * that the deployment creates before starting the server.
         */
        char       *dir = strdup(al->file);
        char       *slash = dir != NULL ? strrchr(dir, '/') : NULL;
        struct stat st;
        int         ok;

        if (slash != NULL) {
            slash[slash == dir ? 1 : 0] = '\0';
        }
        ok = dir == NULL || (stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
        free(dir);
        if (!ok) {
            kou_alog_free(al);
            return host->conf_error(n, err, errlen, "access_log: file: the "
                                    "directory of %s does not exist", s.p);
        }
    }

    n = host->conf_get(conf, "format");
    if (host->conf_str(n, &s) != KOU_OK) {
        kou_alog_free(al);
        return host->conf_error(n, err, errlen, "access_log: format: "
                                "expected text");
    }
    if (s.n == 4 && memcmp(s.p, "json", 4) == 0) {
        al->json = 1;
        al->preset = KOU_ALOG_PRESET_JSON;
    } else {
        if (s.n == 8 && memcmp(s.p, "combined", 8) == 0) {
            s = KOU_STR(KOU_ALOG_COMBINED);
            al->preset = KOU_ALOG_PRESET_COMBINED;
        } else if (s.n == 6 && memcmp(s.p, "common", 6) == 0) {
            s = KOU_STR(KOU_ALOG_COMMON);
            al->preset = KOU_ALOG_PRESET_COMMON;
        } else if (s.n == 0) {
            kou_alog_free(al);
            return host->conf_error(n, err, errlen, "access_log: format: "
                                    "empty");
        }
        if (kou_alog_compile(al, n, s, err, errlen) != KOU_OK) {
            kou_alog_free(al);
            return KOU_ERROR;
        }
    }

    n = host->conf_get(conf, "buffer");
    if (host->conf_size(n, &size) != KOU_OK || size < 4096
        || size > 64 * 1024 * 1024)
    {
        kou_alog_free(al);
        return host->conf_error(n, err, errlen, "access_log: buffer: must "
                                "be 4k..64m");
    }
    al->cap = (size_t) size;

    n = host->conf_get(conf, "flush");
    if (host->conf_duration(n, &al->flush_ms) != KOU_OK
        || al->flush_ms == 0)
    {
        kou_alog_free(al);
        return host->conf_error(n, err, errlen, "access_log: flush: must be "
                                "a positive duration");
    }

    *state = al;
    return KOU_OK;
}

static void
kou_alog_destroy(void *state)
{
    kou_alog_free(state);
}

/* ---- the file ---- */

static size_t
kou_alog_lines(const char *p, size_t n)
{
    size_t lines = 0;
    const char *end = p + n, *q;

    while ((q = memchr(p, '\n', (size_t) (end - p))) != NULL) {
        lines++;
        p = q + 1;
    }
    return lines;
}

/* Report a failure once; later ones only count the lines lost. */
static void
kou_alog_failed(kou_alog_t *al, const char *what, int e)
{
    if (!al->failing) {
        al->failing = 1;
        kou_alog_host->log(KOU_LOG_ERR, "access_log: %s %s: %s; lines are "
                           "dropped until it works again", what, al->file,
                           strerror(e));
    }
}

static void
kou_alog_recovered(kou_alog_t *al)
{
    if (al->failing) {
        al->failing = 0;
        kou_alog_host->log(KOU_LOG_NOTICE, "access_log: writing %s again "
                           "(%" PRIu64 " lines lost)", al->file, al->lost);
        al->lost = 0;
    }
}

static int
kou_alog_open(kou_alog_t *al)
{
    int fd;

    al->open_ms = kou_alog_host->now_ms();
    fd = open(al->file, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK
                        | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd < 0) {
        kou_alog_failed(al, "cannot open", errno);
    }
    return fd;
}

/*
 * Write the buffer. What a non-blocking descriptor does not take now (a
 * FIFO whose reader is slow) stays for the next flush; what fails is
 * dropped and counted.
 */
static void
kou_alog_flush(kou_alog_t *al)
{
    size_t  off = 0;
    ssize_t n;
    int     wrote = 0;

    while (off < al->len) {
        if (al->fd < 0) {
            al->lost += kou_alog_lines(al->buf + off, al->len - off);
            off = al->len;
            break;
        }
        n = write(al->fd, al->buf + off, al->len - off);
        if (n > 0) {
            off += (size_t) n;
            wrote = 1;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        kou_alog_failed(al, "cannot write", n < 0 ? errno : EIO);
        al->lost += kou_alog_lines(al->buf + off, al->len - off);
        off = al->len;
        wrote = 0;
    }
    if (off > 0) {
        memmove(al->buf, al->buf + off, al->len - off);
        al->len -= off;
    }
    if (wrote) {
        kou_alog_recovered(al);
    }
}

static void
kou_alog_tick(void *arg)
{
    kou_alog_t *al = arg;

    al->timer = NULL;               /* freed by the server once fired */
    kou_alog_flush(al);
    if (al->len > 0) {
        al->timer = kou_alog_host->timer_add(al->flush_ms, kou_alog_tick, al);
    }
}

static int
kou_alog_worker_init(void *state)
{
    kou_alog_t *al = state;

    al->buf = malloc(al->cap);
    if (al->buf == NULL) {
        kou_alog_host->log(KOU_LOG_ERR, "access_log: out of memory");
        return KOU_ERROR;
    }
    al->fd = kou_alog_open(al);
    return KOU_OK;
}

static void
kou_alog_worker_exit(void *state)
{
    kou_alog_t *al = state;

    if (al->timer != NULL) {
        kou_alog_host->timer_del(al->timer);
        al->timer = NULL;
    }
    if (al->buf != NULL) {
        kou_alog_flush(al);
        if (al->len > 0) {
            al->lost += kou_alog_lines(al->buf, al->len);
            kou_alog_host->log(KOU_LOG_WARN, "access_log: %s: %" PRIu64
                               " lines lost at exit", al->file, al->lost);
        }
    }
    if (al->fd >= 0) {
        close(al->fd);
        al->fd = -1;
    }
    free(al->buf);
    al->buf = NULL;
    al->len = 0;
}

/* SIGUSR1: what is buffered goes to the old file, then the new one. */
static void
kou_alog_reopen(void *state)
{
    kou_alog_t *al = state;
    int         fd;

    if (al->buf == NULL) {
        return;
    }
    kou_alog_flush(al);
    fd = kou_alog_open(al);
    if (fd < 0) {
        return;                     /* keep writing where we were */
    }
    if (al->fd >= 0) {
        close(al->fd);
    }
    al->fd = fd;                    /* the next write says if it works */
}

/* ---- formatting ---- */

static void
kou_alog_raw(kou_alog_w_t *w, const char *p, size_t n)
{
    if (w->over) {
        return;                     /* a cut line gets nothing more */
    }
    if (n > w->cap - w->n) {
        n = w->cap - w->n;
        w->over = 1;
    }
    if (n <= 8) {
        /* the format's bits of text: cheaper than a call to memcpy */
        for (size_t i = 0; i < n; i++) {
            w->p[w->n + i] = p[i];
        }
    } else {
        memcpy(w->p + w->n, p, n);
    }
    w->n += n;
}

/* Bytes a text format writes as \xHH: controls, `"`, `\`, >= 0x7f. */
static const unsigned char kou_alog_escape[256] = {
    [0x00 ... 0x1f] = 1, ['"'] = 1, ['\\'] = 1, [0x7f ... 0xff] = 1
};

/*
 * A value in a text format ("-" when empty). Runs of plain bytes are
 * copied at once: most values have nothing to escape.
 */
static void
kou_alog_text(kou_alog_w_t *w, kou_str_t s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t            i = 0, run;

    if (w->over) {
        return;
    }
    if (s.n == 0) {
        kou_alog_raw(w, "-", 1);
        return;
    }
    while (i < s.n) {
        unsigned char c;

        for (run = i; run < s.n
                      && !kou_alog_escape[(unsigned char) s.p[run]]; run++)
        {
            /* plain */
        }
        kou_alog_raw(w, s.p + i, run - i);
        if (run == s.n || w->over) {
            return;
        }
        if (w->cap - w->n < 4) {
            w->over = 1;
            return;
        }
        c = (unsigned char) s.p[run];
        w->p[w->n++] = '\\';
        w->p[w->n++] = 'x';
        w->p[w->n++] = hex[c >> 4];
        w->p[w->n++] = hex[c & 0xf];
        i = run + 1;
    }
}

/* Length of the valid UTF-8 sequence at p (0 if it is not one). */
static size_t
kou_alog_utf8(const unsigned char *p, size_t n)
{
    size_t   len;
    uint32_t cp;

    if (p[0] < 0xc2 || p[0] > 0xf4) {
        return 0;
    }
    len = p[0] < 0xe0 ? 2 : p[0] < 0xf0 ? 3 : 4;
    if (n < len) {
        return 0;
    }
    cp = p[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)
        || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    {
        return 0;
    }
    return len;
}

/* A JSON string with its quotes; bytes that are not UTF-8 as \u00HH. */
static void
kou_alog_jstr(kou_alog_w_t *w, kou_str_t s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *) s.p;

    if (w->over) {
        return;
    }
    kou_alog_raw(w, "\"", 1);
    for (size_t i = 0; i < s.n; ) {
        unsigned char c = p[i];
        size_t        u;

        if (w->cap - w->n < 7) {
            w->over = 1;
            return;
        }
        if (c == '"' || c == '\\') {
            w->p[w->n++] = '\\';
            w->p[w->n++] = (char) c;
            i++;
        } else if (c >= 0x20 && c < 0x7f) {
            w->p[w->n++] = (char) c;
            i++;
        } else if (c >= 0x80 && (u = kou_alog_utf8(p + i, s.n - i)) > 0) {
            memcpy(w->p + w->n, p + i, u);
            w->n += u;
            i += u;
        } else {
            memcpy(w->p + w->n, "\\u00", 4);
            w->n += 4;
            w->p[w->n++] = hex[c >> 4];
            w->p[w->n++] = hex[c & 0xf];
            i++;
        }
    }
    kou_alog_raw(w, "\"", 1);
}

/* Decimal digits by hand: snprintf costs more than the rest of a line. */
static void
kou_alog_u64(kou_alog_w_t *w, uint64_t v)
{
    char  buf[20];
    char *p = buf + sizeof(buf);

    do {
        *--p = (char) ('0' + v % 10);
        v /= 10;
    } while (v != 0);
    kou_alog_raw(w, p, (size_t) (buf + sizeof(buf) - p));
}

/* Microseconds as seconds with millisecond resolution ("0.004"). */
static void
kou_alog_secs(kou_alog_w_t *w, uint64_t us)
{
    uint64_t ms = (us + 500) / 1000;
    char     frac[4];

    kou_alog_u64(w, ms / 1000);
    frac[0] = '.';
    frac[1] = (char) ('0' + ms % 1000 / 100);
    frac[2] = (char) ('0' + ms % 100 / 10);
    frac[3] = (char) ('0' + ms % 10);
    kou_alog_raw(w, frac, 4);
}

/* Both time forms, formatted once per second. */
static __attribute__((noinline)) void
kou_alog_clock_set(kou_alog_t *al, int64_t sec)
{
    time_t    t = (time_t) sec;
    struct tm tm;
    char      z[8];

    al->tsec = sec;
    if (localtime_r(&t, &tm) == NULL) {
        memset(&tm, 0, sizeof(tm));
    }
    al->tlocal_n = strftime(al->tlocal, sizeof(al->tlocal),
                            "%d/%b/%Y:%H:%M:%S %z", &tm);
    /* ISO 8601 wants the offset as +hh:mm, strftime gives +hhmm */
    al->tiso_n = strftime(al->tiso, sizeof(al->tiso), "%Y-%m-%dT%H:%M:%S",
                          &tm);
    if (strftime(z, sizeof(z), "%z", &tm) == 5) {
        al->tiso_n += (size_t) snprintf(al->tiso + al->tiso_n,
                                        sizeof(al->tiso) - al->tiso_n,
                                        "%.3s:%.2s", z, z + 3);
    }
    /* tlocal holds at most 39 bytes, so this piece fits tpre */
    al->tpre_n = (size_t) snprintf(al->tpre, sizeof(al->tpre),
                                   " - - [%.*s] \"", (int) al->tlocal_n,
                                   al->tlocal);
}

static inline void
kou_alog_clock(kou_alog_t *al, int64_t sec)
{
    if (sec != al->tsec) {
        kou_alog_clock_set(al, sec);
    }
}

static uint64_t
kou_alog_duration(const kou_request_info_t *info)
{
    uint64_t end = info->end_us;

    if (end == 0) {
        end = kou_alog_host->now_ms() * 1000;   /* aborted: until now */
    }
    return end > info->start_us ? end - info->start_us : 0;
}

static kou_str_t
kou_alog_header(kou_request_t *r, kou_str_t name)
{
    kou_str_t v = { "", 0 };

    if (kou_alog_host->header(r, name, 0, &v) != KOU_OK) {
        v.p = "";
        v.n = 0;
    }
    return v;
}

/* A variable a module set on the request, "" when none (or no ABI 1.2). */
static kou_str_t
kou_alog_variable(kou_request_t *r, kou_str_t name)
{
    kou_str_t v = { "", 0 };

    if (!KOU_HOST_HAS(kou_alog_host, var_get)
        || kou_alog_host->var_get(r, name, &v) != KOU_OK)
    {
        v.p = "";
        v.n = 0;
    }
    return v;
}

static void
kou_alog_var(kou_alog_t *al, kou_alog_w_t *w, const kou_alog_op_t *op,
             kou_request_t *r, const kou_request_info_t *info)
{
    const kou_host_t *host = kou_alog_host;

    switch (op->var) {
    case KOU_ALOG_TEXT:
        kou_alog_raw(w, op->s.p, op->s.n);
        break;
    case KOU_ALOG_REMOTE_ADDR:
        kou_alog_text(w, host->remote_addr(r));
        break;
    case KOU_ALOG_TIME_LOCAL:
        kou_alog_raw(w, al->tlocal, al->tlocal_n);
        break;
    case KOU_ALOG_TIME_ISO8601:
        kou_alog_raw(w, al->tiso, al->tiso_n);
        break;
    case KOU_ALOG_REQUEST:
        kou_alog_text(w, info->request_line);
        break;
    case KOU_ALOG_METHOD:
        kou_alog_text(w, host->method(r));
        break;
    case KOU_ALOG_URI:
        kou_alog_text(w, host->target(r));
        break;
    case KOU_ALOG_HOST:
        kou_alog_text(w, host->host(r));
        break;
    case KOU_ALOG_STATUS:
        kou_alog_u64(w, (uint64_t) (info->status > 0 ? info->status : 0));
        break;
    case KOU_ALOG_BYTES_SENT:
        kou_alog_u64(w, info->bytes_out);
        break;
    case KOU_ALOG_BODY_BYTES_SENT:
        kou_alog_u64(w, kou_alog_body_bytes(info));
        break;
    case KOU_ALOG_REQUEST_LENGTH:
        kou_alog_u64(w, info->bytes_in);
        break;
    case KOU_ALOG_REQUEST_TIME:
        kou_alog_secs(w, kou_alog_duration(info));
        break;
    case KOU_ALOG_VAR:
        kou_alog_text(w, kou_alog_variable(r, op->s));
        break;
    case KOU_ALOG_ROUTE:
        kou_alog_text(w, info->route);
        break;
    case KOU_ALOG_HEADER:
        kou_alog_text(w, kou_alog_header(r, op->s));
        break;
    }
}

/* A JSON member: ,"name":"value" (value escaped). */
static void
kou_alog_jfield(kou_alog_w_t *w, const char *name, kou_str_t v)
{
    kou_alog_raw(w, ",\"", 2);
    kou_alog_raw(w, name, strlen(name));
    kou_alog_raw(w, "\":", 2);
    kou_alog_jstr(w, v);
}

static void
kou_alog_jnum(kou_alog_w_t *w, const char *name, uint64_t v)
{
    kou_alog_raw(w, ",\"", 2);
    kou_alog_raw(w, name, strlen(name));
    kou_alog_raw(w, "\":", 2);
    kou_alog_u64(w, v);
}

/*
 * A member from a request variable: a JSON string, or null when it is not
 * set. Several upstream attempts make a list ("0.002, 0.004"), so values
 * stay strings rather than numbers.
 */
static void
kou_alog_jvar(kou_alog_w_t *w, const char *member, kou_request_t *r,
              kou_str_t name)
{
    kou_str_t v = kou_alog_variable(r, name);

    kou_alog_raw(w, member, strlen(member));
    if (v.n == 0) {
        kou_alog_raw(w, "null", 4);
    } else {
        kou_alog_jstr(w, v);
    }
}

static void
kou_alog_json(kou_alog_t *al, kou_alog_w_t *w, kou_request_t *r,
              const kou_request_info_t *info)
{
    const kou_host_t *host = kou_alog_host;
    kou_str_t         v;

    kou_alog_raw(w, "{\"time\":\"", 9);
    kou_alog_raw(w, al->tiso, al->tiso_n);
    kou_alog_raw(w, "\"", 1);
    kou_alog_jfield(w, "remote_addr", host->remote_addr(r));
    kou_alog_jfield(w, "request", info->request_line);
    kou_alog_jfield(w, "method", host->method(r));
    kou_alog_jfield(w, "uri", host->target(r));
    kou_alog_jfield(w, "host", host->host(r));
    kou_alog_jnum(w, "status", (uint64_t) (info->status > 0 ? info->status
                                                          : 0));
    kou_alog_jnum(w, "bytes_sent", info->bytes_out);
    kou_alog_jnum(w, "body_bytes_sent", kou_alog_body_bytes(info));
    kou_alog_jnum(w, "request_length", info->bytes_in);
    kou_alog_raw(w, ",\"request_time\":", 16);
    kou_alog_secs(w, kou_alog_duration(info));
    kou_alog_jvar(w, ",\"upstream_addr\":", r, KOU_STR("upstream_addr"));
    kou_alog_jvar(w, ",\"upstream_status\":", r,
                  KOU_STR("upstream_status"));
    kou_alog_jvar(w, ",\"upstream_response_time\":", r,
                  KOU_STR("upstream_response_time"));
    v = KOU_STR("referer");
    kou_alog_jfield(w, "referer", kou_alog_header(r, v));
    v = KOU_STR("user-agent");
    kou_alog_jfield(w, "user_agent", kou_alog_header(r, v));
    kou_alog_jfield(w, "route", info->route);
    if (info->aborted) {
        kou_alog_raw(w, ",\"aborted\":true", 15);
    }
    kou_alog_raw(w, "}", 1);
}

/* ---- the common and combined formats, unchecked ---- */

/*
 * Sixteen bytes at a time (GNU vector extensions: SSE2 on x86-64, NEON on
 * arm64, plain words elsewhere).
 */
typedef signed char   kou_alog_v16_t __attribute__((vector_size(16)));
typedef unsigned char kou_alog_u16_t __attribute__((vector_size(16)));
typedef uint64_t      kou_alog_v2_t __attribute__((vector_size(16)));

/*
 * All-ones lanes where v holds a byte that a text format writes as is.
 * Adding 1 maps 0x20..0x7e to 0x21..0x7f, the only bytes then above 0x20
 * as signed chars: the controls, 0x7f and the bytes >= 0x80 fail one
 * comparison; '"' and '\\' are tested apart.
 */
static inline kou_alog_v2_t
kou_alog_ok16(kou_alog_v16_t v)
{
    kou_alog_v16_t s = (kou_alog_v16_t) ((kou_alog_u16_t) v + 1);

    return (kou_alog_v2_t) (s > 0x20)
           & ~(kou_alog_v2_t) ((v == '"') | (v == '\\'));
}

static inline kou_alog_v2_t
kou_alog_ok8(uint64_t a, uint64_t b)
{
    return kou_alog_ok16((kou_alog_v16_t) (kou_alog_v2_t) { a, b });
}

/*
 * Copy a value into the line as it is ("-" when empty) and clear in *ok
 * the lanes of bytes that should have been escaped; the caller checks *ok
 * once for the whole line. A value moves in two overlapping loads (of 4,
 * 8 or 16 bytes; the bytes they share are checked twice), a long one 16
 * bytes at a time, the last load overlapping. The caller has made sure
 * that s.n + 1 bytes are free at d. Returns the new end.
 */
static inline __attribute__((always_inline)) char *
kou_alog_copy(char *d, kou_str_t s, kou_alog_v2_t *ok)
{
    const char *p = s.p;
    size_t      n = s.n;

    if (n >= 16) {
        kou_alog_v16_t a, b;
        size_t         i;

        for (i = 0; i + 32 < n; i += 16) {
            memcpy(&a, p + i, 16);
            *ok &= kou_alog_ok16(a);
            memcpy(d + i, &a, 16);
        }
        /* the last 16 to 32 bytes */
        memcpy(&a, p + i, 16);
        memcpy(&b, p + n - 16, 16);
        *ok &= kou_alog_ok16(a) & kou_alog_ok16(b);
        memcpy(d + i, &a, 16);
        memcpy(d + n - 16, &b, 16);
    } else if (n >= 8) {
        uint64_t a, b;

        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
        *ok &= kou_alog_ok8(a, b);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        uint64_t x;

        memcpy(&a, p, 4);
        memcpy(&b, p + n - 4, 4);
        x = a | (uint64_t) b << 32;
        *ok &= kou_alog_ok8(x, x);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else if (n > 0) {
        /* first, middle and last byte: all three for n = 3, fewer below */
        unsigned char a = (unsigned char) p[0];
        unsigned char b = (unsigned char) p[n / 2];
        unsigned char c = (unsigned char) p[n - 1];
        uint64_t      x = a | (uint64_t) b << 8 | (uint64_t) c << 16;

        x |= x << 24 | x << 48;
        *ok &= kou_alog_ok8(x, x);
        d[0] = (char) a;
        d[n / 2] = (char) b;
        d[n - 1] = (char) c;
    } else {
        *d = '-';
        return d + 1;
    }
    return d + n;
}

/* Decimal, written in place: the digits are counted first. */
static char *
kou_alog_put_u64(char *d, uint64_t v)
{
    size_t n = 1;

    if (v < 100) {
        /* the body of most small responses, and the status */
        if (v >= 10) {
            *d++ = (char) ('0' + v / 10);
        }
        *d = (char) ('0' + v % 10);
        return d + 1;
    }
    for (uint64_t t = v; t >= 10; t /= 10) {
        n++;
    }
    for (size_t i = n; i > 0; i--) {
        d[i - 1] = (char) ('0' + v % 10);
        v /= 10;
    }
    return d + n;
}

/*
 * Is the field name at p (of the length tested by the caller) "referer",
 * or "user-agent", in any case? Setting bit 0x20 lowercases a letter and
 * turns no other byte into one, so the comparison is exact; the '-' is
 * compared as is.
 */
static inline int
kou_alog_is_referer(const char *p)
{
    uint32_t a, b, ka, kb;

    memcpy(&a, p, 4);
    memcpy(&b, p + 3, 4);
    memcpy(&ka, "refe", 4);
    memcpy(&kb, "erer", 4);
    return ((a | 0x20202020u) ^ ka) == 0 && ((b | 0x20202020u) ^ kb) == 0;
}

static inline int
kou_alog_is_user_agent(const char *p)
{
    uint64_t a, fold, ka;
    uint16_t b, kb;

    memcpy(&a, p, 8);
    memcpy(&b, p + 8, 2);
    memcpy(&fold, "\x20\x20\x20\x20\x00\x20\x20\x20", 8);
    memcpy(&ka, "user-age", 8);
    memcpy(&kb, "nt", 2);
    return (a | fold) == ka && (uint16_t) (b | 0x2020u) == kb;
}

/*
 * The common and combined formats, the ones most servers log, written
 * straight into the buffer. The values are fetched first, so one check of
 * the room covers the whole line (the pieces of the format are copied in
 * whole words, which may write up to 64 bytes past what they keep), and
 * copied as they are. Returns the line's length, or 0 when it might not
 * fit or a value holds a byte to escape: the caller then writes the line
 * with the general, checked code, which escapes.
 */
static size_t
kou_alog_preset(kou_alog_t *al, char *buf, size_t room, kou_request_t *r,
                const kou_request_info_t *info)
{
    kou_str_t      addr = kou_alog_host->remote_addr(r);
    kou_str_t      ref = { "", 0 }, ua = { "", 0 };
    kou_alog_v2_t  ok = { ~(uint64_t) 0, ~(uint64_t) 0 };
    uint64_t       body;
    char          *d = buf;

    if (al->preset == KOU_ALOG_PRESET_COMBINED) {
        const kou_header_t *h;
        size_t              n;

        if (kou_alog_host_headers == NULL) {
            ref = kou_alog_header(r, KOU_STR("referer"));
            ua = kou_alog_header(r, KOU_STR("user-agent"));
        } else {
            /* backwards, so that the first field of a name wins */
            h = kou_alog_host_headers(r, &n);
            while (n-- > 0) {
                if (h[n].name.n == 7 && kou_alog_is_referer(h[n].name.p)) {
                    ref = h[n].value;
                } else if (h[n].name.n == 10
                           && kou_alog_is_user_agent(h[n].name.p))
                {
                    ua = h[n].value;
                }
            }
        }
    }
    if (128 + addr.n + info->request_line.n + ref.n + ua.n > room) {
        return 0;
    }

    d = kou_alog_copy(d, addr, &ok);
    /* " - - [time] \"", whole: see kou_alog_clock */
    memcpy(d, al->tpre, sizeof(al->tpre));
    d += al->tpre_n;
    d = kou_alog_copy(d, info->request_line, &ok);
    body = kou_alog_body_bytes(info);
    if (info->status != al->status || body != al->body) {
        /* "\" 200 1234", kept while the next responses are alike */
        char *s = al->spiece;

        *s++ = '"';
        *s++ = ' ';
        s = kou_alog_put_u64(s, (uint64_t) (info->status > 0 ? info->status
                                                            : 0));
        *s++ = ' ';
        s = kou_alog_put_u64(s, body);
        al->spiece_n = (size_t) (s - al->spiece);
        al->status = info->status;
        al->body = body;
    }
    memcpy(d, al->spiece, sizeof(al->spiece));
    d += al->spiece_n;
    if (al->preset == KOU_ALOG_PRESET_COMBINED) {
        memcpy(d, " \"", 2);
        d = kou_alog_copy(d + 2, ref, &ok);
        memcpy(d, "\" \"", 3);
        d = kou_alog_copy(d + 3, ua, &ok);
        *d++ = '"';
    }
    *d++ = '\n';

    if ((ok[0] & ok[1]) != ~(uint64_t) 0) {
        return 0;
    }
    return (size_t) (d - buf);
}

static void
kou_alog_format(kou_alog_t *al, kou_alog_w_t *w, kou_request_t *r,
                const kou_request_info_t *info)
{
    if (al->json) {
        kou_alog_json(al, w, r, info);
    } else {
        for (size_t i = 0; i < al->nops; i++) {
            kou_alog_var(al, w, &al->ops[i], r, info);
        }
    }
    kou_alog_raw(w, "\n", 1);
}

/* A line is in the buffer: write it out when the buffer is full. */
static inline void
kou_alog_added(kou_alog_t *al, size_t n)
{
    al->len += n;
    if (al->len == al->cap) {
        kou_alog_flush(al);
    }
    if (al->len > 0 && al->timer == NULL) {
        al->timer = kou_alog_host->timer_add(al->flush_ms, kou_alog_tick, al);
    }
}

/*
 * A line by the general, checked code: format it at the end of the
 * buffer, flush first when it does not fit, truncate it when it is
 * longer than the whole buffer.
 */
static __attribute__((noinline)) int
kou_alog_log_checked(kou_alog_t *al, kou_request_t *r)
{
    kou_request_info_t        local;
    const kou_request_info_t *info;
    kou_alog_w_t              w;

    if (al->buf == NULL) {
        return KOU_OK;
    }
    if (al->fd < 0) {
        /* try again once a second: the directory may have appeared */
        if (kou_alog_host->now_ms() - al->open_ms >= 1000) {
            al->fd = kou_alog_open(al);
        }
        if (al->fd < 0) {
            al->lost++;
            return KOU_OK;
        }
    }

    info = kou_alog_info(r, &local);
    kou_alog_clock(al, info->start_time);

    for (int attempt = 0; ; attempt++) {
        w.p = al->buf + al->len;
        w.n = 0;
        w.cap = al->cap - al->len;
        w.over = 0;
        kou_alog_format(al, &w, r, info);
        if (!w.over) {
            break;
        }
        if (al->len == 0) {
            /* longer than the buffer: keep its start, end it cleanly */
            if (w.n > w.cap - 1) {
                w.n = w.cap - 1;
            }
            w.p[w.n++] = '\n';
            break;
        }
        if (attempt == 0) {
            kou_alog_flush(al);
        }
        if (attempt > 0 || al->len > 0) {
            /* the file does not keep up: drop this line */
            kou_alog_failed(al, "cannot keep up with", EAGAIN);
            al->lost++;
            return KOU_OK;
        }
    }
    kou_alog_added(al, w.n);
    return KOU_OK;
}

/*
 * The log hook. No system call unless the buffer is full. The common and
 * combined formats take the unchecked path when they can (file open, room
 * enough, nothing to escape), the rest the checked one.
 */
static int
kou_alog_log(kou_request_t *r, void *state, void *route_state)
{
    kou_alog_t               *al = state;
    kou_request_info_t        local;
    const kou_request_info_t *info;
    size_t                    n;

    (void) route_state;

    if ((al->preset != KOU_ALOG_PRESET_COMMON
         && al->preset != KOU_ALOG_PRESET_COMBINED)
        || al->buf == NULL || al->fd < 0)
    {
        return kou_alog_log_checked(al, r);
    }
    info = kou_alog_info(r, &local);
    kou_alog_clock(al, info->start_time);
    n = kou_alog_preset(al, al->buf + al->len, al->cap - al->len, r, info);
    if (n == 0) {
        return kou_alog_log_checked(al, r);
    }
    kou_alog_added(al, n);
    return KOU_OK;
}

static const kou_module_t kou_alog_module = {
    KOU_MODULE_HEADER("access_log", "1.0.0"),
    .conf = kou_alog_conf,
    .configure = kou_alog_configure,
    .worker_init = kou_alog_worker_init,
    .worker_exit = kou_alog_worker_exit,
    .log = kou_alog_log,
    .destroy = kou_alog_destroy,
    .reopen = kou_alog_reopen,
};

KOU_EXPORT const kou_module_t *
kourier_module(const kou_host_t *host)
{
    kou_alog_host = host;
    kou_alog_host_headers = KOU_HOST_HAS(host, headers) ? host->headers
                                                         : NULL;
    kou_alog_host_log_info = KOU_HOST_HAS(host, log_info) ? host->log_info
                                                           : NULL;
    return &kou_alog_module;
}
