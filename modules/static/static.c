/*
 * static: serves the files under a route's `root`.
 *
 *     routes:
 *       - prefix: /
 *         handler: static
 *         root: /srv/www              # required
 *         index: [index.html]         # tried in order for ".../"
 *         autoindex: off              # HTML listing when no index exists
 *         mime_types: { wasm: application/wasm }
 *         default_type: application/octet-stream
 *         etag: on
 *         max_ranges: 64              # 0: no range requests
 *         follow_symlinks: within_root    # never | within_root | always
 *         precompressed: off          # or [br, gzip], in preference order
 *         cache_control: "max-age=3600"
 *         open_file_cache: { entries: 1000, validity: 1s }   # or off
 *
 * The file for a request is root + the request's whole path (nginx's
 * `root`, not `alias`): a route with prefix /static and root /srv/www
 * serves /srv/www/static/x.css for /static/x.css.
 *
 * What it promises (docs/static.md says it for users):
 *
 * - GET and HEAD only; anything else is 405 with "Allow: GET, HEAD".
 * - Nothing outside the root is ever opened. The core has already decoded
 *   the path and refused a ".." above "/"; an encoded slash ("%2F") would
 *   be a separator nobody asked for and gets 404. Every open starts at a
 *   descriptor of the root and goes down with openat2(RESOLVE_BENEATH) or,
 *   on kernels without it, an O_NOFOLLOW walk or a check of where the
 *   opened file really is: no window between a check and the open.
 * - Validators are strong (inode, size, mtime); conditional requests and
 *   ranges follow RFC 9110 sections 13 and 14.
 * - The body goes out through host->sendfile: the server sends the file
 *   with sendfile(2), so a 2 GB file costs no more memory than 4 KiB.
 *   Content-Length is the size fstat() gave for the open descriptor; a
 *   file truncated while it is sent makes the server cut the connection.
 *
 * The open-file cache is per worker and per route: descriptors and stat
 * results keyed by relative path, least recently used first out, each
 * entry reopened once it is older than `validity`. Everything the handler
 * does is synchronous, so an entry cannot go away under a request; the
 * server duplicates the descriptor it is given, so a cached one may be
 * closed while its bytes are still being sent.
 */

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define KOU_STATIC_HAVE_OPENAT2 1
#endif
#endif

#ifndef KOU_STATIC_HAVE_OPENAT2
/* only passed to the stub of kou_static_openat2, which fails with ENOSYS */
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_NO_SYMLINKS   0x04
#define RESOLVE_BENEATH       0x08
#endif

#include <kourier/module.h>

#define KOU_STATIC_GZIP 0x1u
#define KOU_STATIC_BR   0x2u

/* Open flags for anything served: O_NONBLOCK so that a FIFO never blocks. */
#define KOU_STATIC_OPEN_FLAGS (O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)

/* Stale entries evicted from the cold end per lookup. */
#define KOU_STATIC_SWEEP 4

/* Bounds on what the configuration may ask for. */
#define KOU_STATIC_MAX_RANGES 1000
#define KOU_STATIC_MAX_INDEX  255

typedef enum {
    KOU_STATIC_LINKS_NEVER,
    KOU_STATIC_LINKS_WITHIN,
    KOU_STATIC_LINKS_ALWAYS
} kou_static_links_e;

typedef enum {
    KOU_STATIC_REG,
    KOU_STATIC_DIR,
    KOU_STATIC_OTHER
} kou_static_kind_e;

typedef struct {
    const char *ext;       /* lower case, no dot */
    const char *type;
} kou_static_mime_t;

/* What a lookup found: an open file or directory, or the errno. */
typedef struct {
    int               fd;          /* -1 unless kind is REG or DIR */
    int               err;         /* 0, or the errno of the failed open */
    kou_static_kind_e kind;
    uint64_t          dev;
    uint64_t          ino;
    int64_t           size;
    int64_t           mtime;       /* seconds */
    long              mtime_ns;
    kou_str_t         mime;        /* from the key's extension */
    size_t            etag_len;    /* 0: no ETag (etag: off) */
    char              etag[64];    /* with its quotes */
    char              last_modified[32];
} kou_static_file_t;

typedef struct kou_static_entry_s kou_static_entry_t;

struct kou_static_entry_s {
    kou_static_entry_t *hnext;      /* hash chain */
    kou_static_entry_t *prev;       /* LRU: head.next is the newest */
    kou_static_entry_t *next;
    uint64_t            hash;
    uint64_t            checked_ms; /* when it was opened */
    uint64_t            pin;        /* request that last used it */
    kou_static_file_t   f;
    size_t              keylen;
    char               *key;        /* NUL-terminated, right after it:
                                       a pointer, not a flexible array,
                                       so the struct can be a sentinel */
};

typedef struct {
    kou_static_entry_t **buckets;   /* NULL until the first request */
    size_t               mask;
    kou_static_entry_t   lru;       /* sentinel */
    size_t               n;
    size_t               max;       /* 0: the cache is off */
    uint64_t             valid_ms;
} kou_static_cache_t;

typedef struct {
    char                 *root;         /* as configured (malloc) */
    kou_str_t            *index;        /* names, into the config */
    size_t                nindex;
    size_t                index_max;    /* longest index name */
    int                   autoindex;
    int                   etag;
    kou_static_mime_t    *mime;         /* mime_types, checked first */
    size_t                nmime;
    kou_str_t             default_type;
    unsigned              max_ranges;
    kou_static_links_e    links;
    unsigned              codings[2];   /* precompressed, preferred first */
    size_t                ncodings;
    kou_str_t             cache_control; /* n == 0: none */

    /* per worker */
    int                   root_fd;
    uint64_t              root_checked;
    uint64_t              root_dev;
    uint64_t              root_ino;
    char                 *root_real;    /* where root_fd really is */
    size_t                root_real_len;
    uint64_t              seq;          /* requests served, for pins */
    kou_static_cache_t    cache;
} kou_static_route_t;

typedef struct {
    int64_t start;
    int64_t end;       /* inclusive */
} kou_static_range_t;

/* One request being served; lives on the handler's stack. */
typedef struct {
    kou_request_t      *r;
    kou_static_route_t *sr;
    uint64_t            now;
    uint64_t            seq;
    int                 head;
    kou_str_t           if_match;
    kou_str_t           if_none_match;
    kou_str_t           if_modified_since;
    kou_str_t           if_unmodified_since;
    kou_str_t           range;
    kou_str_t           if_range;
    unsigned            nrange;        /* Range fields received */
    unsigned            accept;        /* KOU_STATIC_GZIP | KOU_STATIC_BR */
} kou_static_req_t;

static const kou_host_t *kou_static_host;

/*
 * Whether openat2 works here: -1 until the first root is opened, where a
 * harmless call finds out. A seccomp filter may answer EPERM instead of
 * ENOSYS for a system call it does not know, and EPERM on every file
 * would read as "forbidden" everywhere.
 */
static int kou_static_have_openat2 = -1;

static uint64_t kou_static_boundary_seq;

static const kou_conf_key_t kou_static_conf[] = {
    { "root", KOU_CONF_STR, KOU_SCOPE_ROUTE, 1, NULL,
      "the directory the request path is looked up in" },
    { "index", KOU_CONF_LIST, KOU_SCOPE_ROUTE, 0, "index.html",
      "file names tried in order for a path ending in /" },
    { "autoindex", KOU_CONF_BOOL, KOU_SCOPE_ROUTE, 0, "off",
      "list a directory that has no index file" },
    { "mime_types", KOU_CONF_MAP, KOU_SCOPE_ROUTE, 0, NULL,
      "extension -> media type, before the built-in table" },
    { "default_type", KOU_CONF_STR, KOU_SCOPE_ROUTE, 0,
      "application/octet-stream", "media type of unknown extensions" },
    { "etag", KOU_CONF_BOOL, KOU_SCOPE_ROUTE, 0, "on",
      "send a strong ETag from inode, size and mtime" },
    { "max_ranges", KOU_CONF_INT, KOU_SCOPE_ROUTE, 0, "64",
      "most ranges in one request (more: the whole file); 0: no ranges" },
    { "follow_symlinks", KOU_CONF_STR, KOU_SCOPE_ROUTE, 0, "within_root",
      "never, within_root or always" },
    { "precompressed", KOU_CONF_LIST, KOU_SCOPE_ROUTE, 0, "off",
      "off, or a list of br and gzip: serve x.br / x.gz siblings" },
    { "cache_control", KOU_CONF_STR, KOU_SCOPE_ROUTE, 0, NULL,
      "Cache-Control value for files" },
    { "open_file_cache", KOU_CONF_ANY, KOU_SCOPE_ROUTE, 0, NULL,
      "off, or { entries: N, validity: DURATION } (default 1000, 1s)" },
    { NULL, 0, 0, 0, NULL, NULL }
};

/*
 * The built-in media types, sorted by extension for bsearch. Text types
 * say UTF-8: what nearly every site today is written in.
 */
static const kou_static_mime_t kou_static_mime_builtin[] = {
    { "7z", "application/x-7z-compressed" },
    { "aac", "audio/aac" },
    { "apng", "image/apng" },
    { "atom", "application/atom+xml" },
    { "avi", "video/x-msvideo" },
    { "avif", "image/avif" },
    { "bin", "application/octet-stream" },
    { "bmp", "image/bmp" },
    { "br", "application/x-brotli" },
    { "bz2", "application/x-bzip2" },
    { "css", "text/css; charset=utf-8" },
    { "csv", "text/csv; charset=utf-8" },
    { "deb", "application/vnd.debian.binary-package" },
    { "doc", "application/msword" },
    { "docx", "application/vnd.openxmlformats-officedocument."
              "wordprocessingml.document" },
    { "eot", "application/vnd.ms-fontobject" },
    { "epub", "application/epub+zip" },
    { "flac", "audio/flac" },
    { "gif", "image/gif" },
    { "gz", "application/gzip" },
    { "htm", "text/html; charset=utf-8" },
    { "html", "text/html; charset=utf-8" },
    { "ico", "image/vnd.microsoft.icon" },
    { "ics", "text/calendar; charset=utf-8" },
    { "iso", "application/x-iso9660-image" },
    { "jar", "application/java-archive" },
    { "jpeg", "image/jpeg" },
    { "jpg", "image/jpeg" },
    { "js", "text/javascript; charset=utf-8" },
    { "json", "application/json" },
    { "jsonld", "application/ld+json" },
    { "m4a", "audio/mp4" },
    { "m4v", "video/mp4" },
    { "map", "application/json" },
    { "md", "text/markdown; charset=utf-8" },
    { "mid", "audio/midi" },
    { "midi", "audio/midi" },
    { "mjs", "text/javascript; charset=utf-8" },
    { "mkv", "video/x-matroska" },
    { "mov", "video/quicktime" },
    { "mp3", "audio/mpeg" },
    { "mp4", "video/mp4" },
    { "mpeg", "video/mpeg" },
    { "mpg", "video/mpeg" },
    { "odp", "application/vnd.oasis.opendocument.presentation" },
    { "ods", "application/vnd.oasis.opendocument.spreadsheet" },
    { "odt", "application/vnd.oasis.opendocument.text" },
    { "oga", "audio/ogg" },
    { "ogg", "audio/ogg" },
    { "ogv", "video/ogg" },
    { "opus", "audio/opus" },
    { "otf", "font/otf" },
    { "pdf", "application/pdf" },
    { "png", "image/png" },
    { "ppt", "application/vnd.ms-powerpoint" },
    { "pptx", "application/vnd.openxmlformats-officedocument."
              "presentationml.presentation" },
    { "rar", "application/vnd.rar" },
    { "rpm", "application/x-rpm" },
    { "rss", "application/rss+xml" },
    { "rtf", "application/rtf" },
    { "svg", "image/svg+xml" },
    { "svgz", "image/svg+xml" },
    { "tar", "application/x-tar" },
    { "tgz", "application/gzip" },
    { "tif", "image/tiff" },
    { "tiff", "image/tiff" },
    { "ttf", "font/ttf" },
    { "txt", "text/plain; charset=utf-8" },
    { "wasm", "application/wasm" },
    { "wav", "audio/wav" },
    { "weba", "audio/webm" },
    { "webm", "video/webm" },
    { "webmanifest", "application/manifest+json" },
    { "webp", "image/webp" },
    { "woff", "font/woff" },
    { "woff2", "font/woff2" },
    { "xhtml", "application/xhtml+xml" },
    { "xls", "application/vnd.ms-excel" },
    { "xlsx", "application/vnd.openxmlformats-officedocument."
              "spreadsheetml.sheet" },
    { "xml", "application/xml" },
    { "xz", "application/x-xz" },
    { "yaml", "application/yaml" },
    { "yml", "application/yaml" },
    { "zip", "application/zip" },
    { "zst", "application/zstd" },
};

static const char *const kou_static_days[] = {
    "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"
};

static const char *const kou_static_months[] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
};

static const kou_header_t kou_static_405_headers[] = {
    { KOU_STR_INIT("Allow"), KOU_STR_INIT("GET, HEAD") },
    { KOU_STR_INIT("Content-Type"), KOU_STR_INIT("text/plain") }
};

/* ---- small helpers ---- */

static int
kou_static_str_eq_lc(kou_str_t s, const char *lc)
{
    size_t n = strlen(lc);

    if (s.n != n) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (tolower((unsigned char) s.p[i]) != lc[i]) {
            return 0;
        }
    }
    return 1;
}

static int
kou_static_is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static int
kou_static_is_tchar(unsigned char c)
{
    return isalnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Header values may not hold CR, LF or NUL (the server refuses them). */
static int
kou_static_value_ok(kou_str_t v)
{
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] == '\r' || v.p[i] == '\n' || v.p[i] == '\0') {
            return 0;
        }
    }
    return 1;
}

static char *
kou_static_put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define kou_static_put_lit(p, lit) kou_static_put((p), (lit), sizeof(lit) - 1)

static char *
kou_static_put_u64(char *p, uint64_t v)
{
    char   tmp[24];
    size_t n = 0;

    do {
        tmp[n++] = (char) ('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0) {
        *p++ = tmp[--n];
    }
    return p;
}

static char *
kou_static_put_hex(char *p, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char              tmp[16];
    size_t            n = 0;

    do {
        tmp[n++] = hex[v & 0xf];
        v >>= 4;
    } while (v != 0);
    while (n > 0) {
        *p++ = tmp[--n];
    }
    return p;
}

/* ---- dates (RFC 9110 section 5.6.7) ---- */

/* Days since 1970-01-01 of a proleptic Gregorian date (m 1..12). */
static int64_t
kou_static_days_from_civil(int64_t y, int m, int d)
{
    int64_t  era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static char *
kou_static_put_2d(char *p, int v)
{
    *p++ = (char) ('0' + v / 10 % 10);
    *p++ = (char) ('0' + v % 10);
    return p;
}

/*
 * IMF-fixdate of t into buf: always 29 characters and a NUL, a year out
 * of 0..9999 being clamped (the format has four digits for it).
 */
static void
kou_static_http_date(int64_t t, char *buf)
{
    struct tm tm;
    time_t    tt;
    char     *p = buf;

    if (t < -62167219200) {
        t = -62167219200;          /* 0000-01-01 */
    } else if (t > 253402300799) {
        t = 253402300799;          /* 9999-12-31 23:59:59 */
    }
    tt = (time_t) t;
    if (gmtime_r(&tt, &tm) == NULL) {
        memset(&tm, 0, sizeof(tm));
        tm.tm_mday = 1;
        tm.tm_year = 70;
        tm.tm_wday = 4;
    }
    p = kou_static_put(p, kou_static_days[tm.tm_wday], 3);
    p = kou_static_put_lit(p, ", ");
    p = kou_static_put_2d(p, tm.tm_mday);
    *p++ = ' ';
    p = kou_static_put(p, kou_static_months[tm.tm_mon], 3);
    *p++ = ' ';
    p = kou_static_put_2d(p, (tm.tm_year + 1900) / 100);
    p = kou_static_put_2d(p, (tm.tm_year + 1900) % 100);
    *p++ = ' ';
    p = kou_static_put_2d(p, tm.tm_hour);
    *p++ = ':';
    p = kou_static_put_2d(p, tm.tm_min);
    *p++ = ':';
    p = kou_static_put_2d(p, tm.tm_sec);
    p = kou_static_put_lit(p, " GMT");
    *p = '\0';
}

static int
kou_static_digits(const char **pp, const char *e, size_t n, int *out)
{
    const char *p = *pp;
    int         v = 0;

    if ((size_t) (e - p) < n) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }
        v = v * 10 + (p[i] - '0');
    }
    *pp = p + n;
    *out = v;
    return 0;
}

static int
kou_static_lit(const char **pp, const char *e, const char *lit)
{
    size_t n = strlen(lit);

    if ((size_t) (e - *pp) < n || memcmp(*pp, lit, n) != 0) {
        return -1;
    }
    *pp += n;
    return 0;
}

static int
kou_static_month(const char **pp, const char *e, int *out)
{
    for (int i = 0; i < 12; i++) {
        if (kou_static_lit(pp, e, kou_static_months[i]) == 0) {
            *out = i + 1;
            return 0;
        }
    }
    return -1;
}

static int
kou_static_clock(const char **pp, const char *e, int *h, int *m, int *s)
{
    if (kou_static_digits(pp, e, 2, h) != 0
        || kou_static_lit(pp, e, ":") != 0
        || kou_static_digits(pp, e, 2, m) != 0
        || kou_static_lit(pp, e, ":") != 0
        || kou_static_digits(pp, e, 2, s) != 0)
    {
        return -1;
    }
    return 0;
}

/*
 * An HTTP-date in any of the three forms a recipient must accept
 * (IMF-fixdate, rfc850-date, asctime-date) as Unix seconds; -1 when the
 * value is not one (the field is then ignored, as RFC 9110 says).
 */
static int64_t
kou_static_parse_date(kou_str_t v)
{
    const char *p = v.p, *e = v.p + v.n;
    int         day, mon, year, h, mi, s, dim;
    static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31,
                                 30, 31 };

    while (p < e && isalpha((unsigned char) *p)) {
        p++;
    }
    if (p == v.p) {
        return -1;
    }
    if (p < e && *p == ',') {
        p++;
        if (kou_static_lit(&p, e, " ") != 0
            || kou_static_digits(&p, e, 2, &day) != 0)
        {
            return -1;
        }
        if (p < e && *p == ' ') {
            /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
            p++;
            if (kou_static_month(&p, e, &mon) != 0
                || kou_static_lit(&p, e, " ") != 0
                || kou_static_digits(&p, e, 4, &year) != 0)
            {
                return -1;
            }
        } else {
            /* rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT */
            if (kou_static_lit(&p, e, "-") != 0
                || kou_static_month(&p, e, &mon) != 0
                || kou_static_lit(&p, e, "-") != 0
                || kou_static_digits(&p, e, 2, &year) != 0)
            {
                return -1;
            }
            /* RFC 9110: a year more than 50 years ahead is the past */
            year += year < 70 ? 2000 : 1900;
        }
        if (kou_static_lit(&p, e, " ") != 0
            || kou_static_clock(&p, e, &h, &mi, &s) != 0
            || kou_static_lit(&p, e, " GMT") != 0)
        {
            return -1;
        }
    } else {
        /* asctime-date: Sun Nov  6 08:49:37 1994 */
        if (kou_static_lit(&p, e, " ") != 0
            || kou_static_month(&p, e, &mon) != 0
            || kou_static_lit(&p, e, " ") != 0)
        {
            return -1;
        }
        if (p < e && *p == ' ') {
            p++;
            if (kou_static_digits(&p, e, 1, &day) != 0) {
                return -1;
            }
        } else if (kou_static_digits(&p, e, 2, &day) != 0) {
            return -1;
        }
        if (kou_static_lit(&p, e, " ") != 0
            || kou_static_clock(&p, e, &h, &mi, &s) != 0
            || kou_static_lit(&p, e, " ") != 0
            || kou_static_digits(&p, e, 4, &year) != 0)
        {
            return -1;
        }
    }
    if (p != e) {
        return -1;
    }
    dim = mdays[mon - 1];
    if (mon == 2 && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
    {
        dim = 28;
    }
    if (day < 1 || day > dim || h > 23 || mi > 59 || s > 60) {
        return -1;
    }
    if (s == 60) {
        s = 59;  /* a leap second is the second before it, for ordering */
    }
    return kou_static_days_from_civil(year, mon, day) * 86400
           + (int64_t) h * 3600 + mi * 60 + s;
}

/* ---- media types ---- */

static int
kou_static_mime_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const kou_static_mime_t *) elem)->ext);
}

/* The media type of a file name (its last segment's extension). */
static kou_str_t
kou_static_mime_of(const kou_static_route_t *sr, const char *name,
                   size_t len)
{
    const kou_static_mime_t *m;
    const char              *dot = NULL;
    char                     ext[16];
    size_t                   n;

    for (size_t i = len; i > 0; i--) {
        if (name[i - 1] == '/') {
            break;
        }
        if (name[i - 1] == '.') {
            dot = name + i - 1;
            break;
        }
    }
    if (dot == NULL || (dot > name && dot[-1] == '/') || dot == name) {
        return sr->default_type;  /* no extension, or a dot file */
    }
    n = (size_t) (name + len - dot - 1);
    if (n == 0 || n >= sizeof(ext)) {
        return sr->default_type;
    }
    for (size_t i = 0; i < n; i++) {
        ext[i] = (char) tolower((unsigned char) dot[1 + i]);
    }
    ext[n] = '\0';
    for (size_t i = 0; i < sr->nmime; i++) {
        if (strcmp(sr->mime[i].ext, ext) == 0) {
            return (kou_str_t) { sr->mime[i].type,
                                 strlen(sr->mime[i].type) };
        }
    }
    m = bsearch(ext, kou_static_mime_builtin,
                sizeof(kou_static_mime_builtin)
                    / sizeof(kou_static_mime_builtin[0]),
                sizeof(kou_static_mime_builtin[0]), kou_static_mime_cmp);
    if (m == NULL) {
        return sr->default_type;
    }
    return (kou_str_t) { m->type, strlen(m->type) };
}

/* ---- opening files without leaving the root ---- */

static int
kou_static_openat2(int dfd, const char *path, int flags, uint64_t resolve)
{
#if defined(KOU_STATIC_HAVE_OPENAT2) && defined(SYS_openat2)
    struct open_how how;
    int             fd, tries = 0;

    memset(&how, 0, sizeof(how));
    how.flags = (uint64_t) flags;
    how.resolve = resolve;
    do {
        /* EAGAIN: a rename or mount raced the lookup; it is safe to retry */
        fd = (int) syscall(SYS_openat2, dfd, path, &how, sizeof(how));
    } while (fd < 0 && (errno == EAGAIN || errno == EINTR) && ++tries < 8);
    return fd;
#else
    (void) dfd;
    (void) path;
    (void) flags;
    (void) resolve;
    errno = ENOSYS;
    return -1;
#endif
}

/*
 * follow_symlinks: never, without openat2: one component at a time, each
 * opened O_PATH | O_NOFOLLOW under the one before and checked to be a
 * directory, so that no symbolic link is ever followed.
 */
static int
kou_static_walk_nofollow(int root, const char *path, int flags)
{
    struct stat st;
    const char *p = path, *s;
    char        comp[NAME_MAX + 1];
    int         dfd = root, fd, err;

    for (;;) {
        s = strchr(p, '/');
        if (s == NULL) {
            fd = openat(dfd, p, flags | O_NOFOLLOW);
            err = errno;
            break;
        }
        if ((size_t) (s - p) > NAME_MAX) {
            fd = -1;
            err = ENAMETOOLONG;
            break;
        }
        memcpy(comp, p, (size_t) (s - p));
        comp[s - p] = '\0';
        fd = openat(dfd, comp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        err = errno;
        if (fd >= 0 && fstat(fd, &st) != 0) {
            err = errno;
            close(fd);
            fd = -1;
        } else if (fd >= 0 && !S_ISDIR(st.st_mode)) {
            err = S_ISLNK(st.st_mode) ? ELOOP : ENOTDIR;
            close(fd);
            fd = -1;
        }
        if (fd < 0) {
            break;
        }
        if (dfd != root) {
            close(dfd);
        }
        dfd = fd;
        p = s + 1;
    }
    if (dfd != root) {
        close(dfd);
    }
    errno = err;
    return fd;
}

/*
 * Is the open file fd under the root? Asked of the kernel after the open
 * (/proc/self/fd names the object actually opened), so a symlink swapped
 * in between cannot fool it. Without /proc the answer is no.
 */
static int
kou_static_beneath(const kou_static_route_t *sr, int fd)
{
    char    link[40], buf[PATH_MAX];
    ssize_t n;
    size_t  rl = sr->root_real_len;

    if (sr->root_real == NULL) {
        return 0;
    }
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, buf, sizeof(buf));
    if (n <= 0 || (size_t) n >= sizeof(buf) || buf[0] != '/') {
        return 0;
    }
    if (rl == 1) {
        return 1;  /* root: / */
    }
    return (size_t) n >= rl && memcmp(buf, sr->root_real, rl) == 0
           && ((size_t) n == rl || buf[rl] == '/');
}

/*
 * Open key (a relative path without empty, "." or ".." segments; "" is
 * the root itself) under the root, following symbolic links only as
 * follow_symlinks allows. Returns the descriptor, or -1 with errno: ELOOP
 * for a link that may not be followed, EXDEV for one that leads out.
 */
static int
kou_static_open_path(kou_static_route_t *sr, const char *key)
{
    const char *path = key[0] != '\0' ? key : ".";
    int         fd, err;

    switch (sr->links) {
    case KOU_STATIC_LINKS_ALWAYS:
        return openat(sr->root_fd, path, KOU_STATIC_OPEN_FLAGS);

    case KOU_STATIC_LINKS_NEVER:
        if (kou_static_have_openat2) {
            fd = kou_static_openat2(sr->root_fd, path, KOU_STATIC_OPEN_FLAGS,
                                    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
                                    | RESOLVE_NO_MAGICLINKS);
            if (fd >= 0 || errno != ENOSYS) {
                return fd;
            }
            kou_static_have_openat2 = 0;
        }
        return kou_static_walk_nofollow(sr->root_fd, path,
                                        KOU_STATIC_OPEN_FLAGS);

    default:
        if (kou_static_have_openat2) {
            fd = kou_static_openat2(sr->root_fd, path, KOU_STATIC_OPEN_FLAGS,
                                    RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS);
            /*
             * EXDEV is an escape, or an absolute link, which
             * RESOLVE_BENEATH refuses even when it points back inside:
             * the check below tells them apart.
             */
            if (fd >= 0 || (errno != ENOSYS && errno != EXDEV)) {
                return fd;
            }
            if (errno == ENOSYS) {
                kou_static_have_openat2 = 0;
            }
        }
        fd = openat(sr->root_fd, path, KOU_STATIC_OPEN_FLAGS);
        if (fd < 0) {
            return -1;
        }
        if (!kou_static_beneath(sr, fd)) {
            err = EXDEV;
            close(fd);
            errno = err;
            return -1;
        }
        return fd;
    }
}

/* Fill f for key: open it, stat it, compute its validators. */
static void
kou_static_file_open(kou_static_route_t *sr, const char *key, size_t len,
                     kou_static_file_t *f)
{
    struct stat st;
    char       *p;
    int         fd;

    memset(f, 0, offsetof(kou_static_file_t, etag));
    f->etag[0] = '\0';
    f->last_modified[0] = '\0';
    f->fd = -1;
    f->kind = KOU_STATIC_OTHER;

    fd = kou_static_open_path(sr, key);
    if (fd < 0) {
        f->err = errno;
        return;
    }
    if (fstat(fd, &st) != 0) {
        f->err = errno;
        close(fd);
        return;
    }
    if (S_ISREG(st.st_mode)) {
        f->kind = KOU_STATIC_REG;
        f->fd = fd;
    } else if (S_ISDIR(st.st_mode)) {
        f->kind = KOU_STATIC_DIR;
        f->fd = fd;
    } else {
        close(fd);   /* a device, FIFO or socket is never served */
    }
    f->dev = (uint64_t) st.st_dev;
    f->ino = (uint64_t) st.st_ino;
    f->size = (int64_t) st.st_size;
    f->mtime = (int64_t) st.st_mtim.tv_sec;
    f->mtime_ns = st.st_mtim.tv_nsec;
    if (f->kind != KOU_STATIC_REG) {
        return;
    }
    f->mime = kou_static_mime_of(sr, key, len);
    kou_static_http_date(f->mtime, f->last_modified);
    if (sr->etag) {
        /* strong: a new inode, size or mtime (to the ns) is a new tag */
        p = f->etag;
        *p++ = '"';
        p = kou_static_put_hex(p, f->ino);
        *p++ = '-';
        p = kou_static_put_hex(p, (uint64_t) f->size);
        *p++ = '-';
        p = kou_static_put_hex(p, (uint64_t) f->mtime * 1000000000u
                                      + (uint64_t) f->mtime_ns);
        *p++ = '"';
        *p = '\0';
        f->etag_len = (size_t) (p - f->etag);
    }
}

/* ---- the open-file cache ---- */

static uint64_t
kou_static_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;  /* FNV-1a */

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char) s[i];
        h *= 0x100000001b3u;
    }
    return h;
}

static void
kou_static_lru_unlink(kou_static_entry_t *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void
kou_static_lru_push(kou_static_cache_t *c, kou_static_entry_t *e)
{
    e->next = c->lru.next;
    e->prev = &c->lru;
    c->lru.next->prev = e;
    c->lru.next = e;
}

static void
kou_static_cache_remove(kou_static_cache_t *c, kou_static_entry_t *e)
{
    kou_static_entry_t **pp = &c->buckets[e->hash & c->mask];

    while (*pp != e) {
        pp = &(*pp)->hnext;
    }
    *pp = e->hnext;
    kou_static_lru_unlink(e);
    c->n--;
    if (e->f.fd >= 0) {
        close(e->f.fd);
    }
    free(e);
}

/* Drop every entry the current request does not use (pin != seq). */
static void
kou_static_cache_flush(kou_static_cache_t *c, uint64_t seq)
{
    kou_static_entry_t *e, *prev;

    if (c->buckets == NULL) {
        return;
    }
    for (e = c->lru.prev; e != &c->lru; e = prev) {
        prev = e->prev;
        if (e->pin != seq) {
            kou_static_cache_remove(c, e);
        }
    }
}

static int
kou_static_cache_init(kou_static_cache_t *c)
{
    size_t n = 16;

    while (n < c->max * 2 && n < ((size_t) 1 << 20)) {
        n <<= 1;
    }
    c->buckets = calloc(n, sizeof(*c->buckets));
    if (c->buckets == NULL) {
        return KOU_ERROR;
    }
    c->mask = n - 1;
    return KOU_OK;
}

static void
kou_static_close_file(void *arg)
{
    kou_static_file_t *f = arg;

    if (f->fd >= 0) {
        close(f->fd);
        f->fd = -1;
    }
}

/*
 * The file for key (len bytes, NUL-terminated), from the cache when it has
 * a fresh entry. *out stays valid until the handler returns: entries used
 * by this request are pinned against eviction. KOU_OK (the result may be
 * an error in (*out)->err) or KOU_ERROR when out of memory.
 */
static int
kou_static_get(kou_static_req_t *q, const char *key, size_t len,
               kou_static_file_t **out)
{
    const kou_host_t   *host = kou_static_host;
    kou_static_route_t *sr = q->sr;
    kou_static_cache_t *c = &sr->cache;
    kou_static_entry_t *e, *tail;
    kou_static_file_t  *f;
    uint64_t            h;

    if (c->max == 0) {
        f = host->palloc(q->r, sizeof(*f));
        if (f == NULL) {
            return KOU_ERROR;
        }
        kou_static_file_open(sr, key, len, f);
        if (f->fd >= 0
            && host->cleanup_add(q->r, kou_static_close_file, f) != KOU_OK)
        {
            close(f->fd);
            return KOU_ERROR;
        }
        *out = f;
        return KOU_OK;
    }
    if (c->buckets == NULL && kou_static_cache_init(c) != KOU_OK) {
        return KOU_ERROR;
    }

    h = kou_static_hash(key, len);
    for (e = c->buckets[h & c->mask]; e != NULL; e = e->hnext) {
        if (e->hash == h && e->keylen == len && memcmp(e->key, key, len) == 0)
        {
            break;
        }
    }
    if (e != NULL && q->now - e->checked_ms < c->valid_ms) {
        kou_static_lru_unlink(e);
        kou_static_lru_push(c, e);
        e->pin = q->seq;
        *out = &e->f;
        return KOU_OK;
    }
    if (e != NULL) {
        kou_static_cache_remove(c, e);  /* stale: look again */
    }
    /* entries nobody asked for lately hold descriptors: let them go */
    for (int i = 0; i < KOU_STATIC_SWEEP; i++) {
        tail = c->lru.prev;
        if (tail == &c->lru || tail->pin == q->seq
            || q->now - tail->checked_ms < c->valid_ms)
        {
            break;
        }
        kou_static_cache_remove(c, tail);
    }

    e = malloc(sizeof(*e) + len + 1);
    if (e == NULL) {
        return KOU_ERROR;
    }
    e->key = (char *) (e + 1);
    memcpy(e->key, key, len + 1);
    e->keylen = len;
    e->hash = h;
    e->checked_ms = q->now;
    e->pin = q->seq;
    kou_static_file_open(sr, key, len, &e->f);
    if (e->f.err == EMFILE || e->f.err == ENFILE) {
        /* our descriptors may be what filled the table */
        kou_static_cache_flush(c, q->seq);
        kou_static_file_open(sr, key, len, &e->f);
    }
    if (e->f.err == EMFILE || e->f.err == ENFILE || e->f.err == ENOMEM
        || e->f.err == EAGAIN || e->f.err == EINTR || e->f.err == EIO)
    {
        /* a passing condition: answer it, do not remember it */
        f = host->palloc(q->r, sizeof(*f));
        if (f == NULL) {
            free(e);
            return KOU_ERROR;
        }
        *f = e->f;
        free(e);
        *out = f;
        return KOU_OK;
    }

    e->hnext = c->buckets[h & c->mask];
    c->buckets[h & c->mask] = e;
    kou_static_lru_push(c, e);
    c->n++;
    while (c->n > c->max) {
        tail = c->lru.prev;
        if (tail->pin == q->seq) {
            break;  /* everything older is in use by this request */
        }
        kou_static_cache_remove(c, tail);
    }
    *out = &e->f;
    return KOU_OK;
}

/*
 * Make sure root_fd is open and not older than the cache's validity, so
 * that a root that is a symbolic link switched by a deployment is
 * followed. A root that became another directory empties the cache.
 * KOU_OK or an errno.
 */
static int
kou_static_root_open(kou_static_route_t *sr, uint64_t now, uint64_t seq)
{
    struct stat st;
    char        link[40], buf[PATH_MAX];
    ssize_t     n;
    int         fd, err;

    if (sr->root_fd >= 0 && sr->cache.max > 0
        && now - sr->root_checked < sr->cache.valid_ms)
    {
        return 0;
    }
    fd = open(sr->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return errno;
    }
    if (fstat(fd, &st) != 0) {
        err = errno;
        close(fd);
        return err;
    }
    if (sr->root_fd >= 0) {
        close(sr->root_fd);
        if ((uint64_t) st.st_dev != sr->root_dev
            || (uint64_t) st.st_ino != sr->root_ino)
        {
            kou_static_cache_flush(&sr->cache, seq);
        }
    }
    sr->root_fd = fd;
    sr->root_checked = now;
    if (kou_static_have_openat2 < 0) {
        int probe = kou_static_openat2(fd, ".", O_PATH | O_CLOEXEC,
                                       RESOLVE_BENEATH);

        kou_static_have_openat2 = probe >= 0;
        if (probe >= 0) {
            close(probe);
        }
    }
    sr->root_dev = (uint64_t) st.st_dev;
    sr->root_ino = (uint64_t) st.st_ino;

    if (sr->links == KOU_STATIC_LINKS_WITHIN) {
        free(sr->root_real);
        sr->root_real = NULL;
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        n = readlink(link, buf, sizeof(buf));
        if (n > 0 && (size_t) n < sizeof(buf) && buf[0] == '/') {
            buf[n] = '\0';
            sr->root_real = strdup(buf);
        } else {
            sr->root_real = realpath(sr->root, NULL);
        }
        sr->root_real_len = sr->root_real ? strlen(sr->root_real) : 0;
    }
    return 0;
}

/* ---- responses ---- */

static const char *
kou_static_reason(int status)
{
    switch (status) {
    case 301: return "301 Moved Permanently\n";
    case 400: return "400 Bad Request\n";
    case 403: return "403 Forbidden\n";
    case 404: return "404 Not Found\n";
    case 405: return "405 Method Not Allowed\n";
    case 412: return "412 Precondition Failed\n";
    case 416: return "416 Range Not Satisfiable\n";
    default:  return "error\n";
    }
}

/*
 * A short text answer. Answered here rather than by returning the status
 * to the server, which would close the connection: a browser's 404 for
 * favicon.ico should not cost it its keep-alive connection.
 */
static int
kou_static_answer(kou_static_req_t *q, int status, kou_header_t *h, size_t n)
{
    const kou_host_t *host = kou_static_host;
    const char       *body = kou_static_reason(status);

    h[n].name = KOU_STR("Content-Type");
    h[n].value = KOU_STR("text/plain");
    n++;
    if (host->respond(q->r, status, h, n, (kou_str_t) { body, strlen(body) })
        != KOU_OK)
    {
        return KOU_ERROR;
    }
    return KOU_DONE;
}

static int
kou_static_plain(kou_static_req_t *q, int status)
{
    kou_header_t h[1];

    return kou_static_answer(q, status, h, 0);
}

/*
 * A log line for a refused request. The request-target is logged as
 * received: the parser let no control character through, so the line
 * cannot be forged by the client.
 */
static void
kou_static_refuse_log(kou_static_req_t *q, const char *why)
{
    const kou_host_t *host = kou_static_host;
    kou_str_t         t = host->target(q->r), a = host->remote_addr(q->r);

    host->log(KOU_LOG_NOTICE, "static: client %.*s: \"%.*s\" refused: %s",
              (int) a.n, a.p, (int) (t.n > 256 ? 256 : t.n), t.p, why);
}

/* Answer a failed lookup. */
static int
kou_static_fail(kou_static_req_t *q, int err)
{
    const kou_host_t *host = kou_static_host;

    switch (err) {
    case ENOENT:
    case ENOTDIR:
    case ENAMETOOLONG:
        return kou_static_plain(q, 404);
    case EACCES:
    case EPERM:
        return kou_static_plain(q, 403);
    case ELOOP:
        kou_static_refuse_log(q, "symbolic link (follow_symlinks)");
        return kou_static_plain(q, 403);
    case EXDEV:
        kou_static_refuse_log(q, "symbolic link out of the root");
        return kou_static_plain(q, 403);
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case EAGAIN:
        host->log(KOU_LOG_WARN, "static: open under %s: %s", q->sr->root,
                  strerror(err));
        return 503;
    default:
        host->log(KOU_LOG_ERR, "static: open under %s: %s", q->sr->root,
                  strerror(err));
        return KOU_ERROR;
    }
}

/* Characters a path segment may hold unencoded (RFC 3986 pchar). */
static int
kou_static_pchar(unsigned char c)
{
    return isalnum(c) || (c != 0 && strchr("-._~!$&'()*+,;=:@", c) != NULL);
}

/* 301 to the slash form of a directory, with the query kept. */
static int
kou_static_redirect(kou_static_req_t *q, const char *key, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    const kou_host_t *host = kou_static_host;
    kou_str_t         query = host->query(q->r);
    kou_header_t      h[2];
    char             *loc, *p;

    loc = host->palloc(q->r, 3 * len + query.n + 4);
    if (loc == NULL) {
        return 503;
    }
    /*
     * Built from the cleaned path, never from the raw target: it starts
     * with exactly one slash, so it cannot read as "//host/".
     */
    p = loc;
    *p++ = '/';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char) key[i];

        if (c == '/' || kou_static_pchar(c)) {
            *p++ = (char) c;
        } else {
            *p++ = '%';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
        }
    }
    if (len > 0) {
        *p++ = '/';
    }
    if (query.n > 0) {
        *p++ = '?';
        p = kou_static_put(p, query.p, query.n);
    }
    h[0].name = KOU_STR("Location");
    h[0].value = (kou_str_t) { loc, (size_t) (p - loc) };
    return kou_static_answer(q, 301, h, 1);
}

/* ---- request fields ---- */

/* One pass over the request's fields for everything the handler reads. */
static void
kou_static_scan(kou_static_req_t *q)
{
    const kou_host_t *host = kou_static_host;
    size_t            n = host->header_count(q->r);
    kou_header_t      h;

    for (size_t i = 0; i < n; i++) {
        if (host->header_at(q->r, i, &h) != KOU_OK) {
            break;
        }
        switch (h.name.n) {
        case 5:
            if (kou_static_str_eq_lc(h.name, "range")) {
                q->range = h.value;
                q->nrange++;
            }
            break;
        case 8:
            if (kou_static_str_eq_lc(h.name, "if-match")) {
                q->if_match = h.value;
            } else if (kou_static_str_eq_lc(h.name, "if-range")) {
                q->if_range = h.value;
            }
            break;
        case 13:
            if (kou_static_str_eq_lc(h.name, "if-none-match")) {
                q->if_none_match = h.value;
            }
            break;
        case 15:
            if (kou_static_str_eq_lc(h.name, "accept-encoding")) {
                q->accept = KOU_STATIC_GZIP | KOU_STATIC_BR;  /* parsed later */
            }
            break;
        case 17:
            if (kou_static_str_eq_lc(h.name, "if-modified-since")) {
                q->if_modified_since = h.value;
            }
            break;
        case 19:
            if (kou_static_str_eq_lc(h.name, "if-unmodified-since")) {
                q->if_unmodified_since = h.value;
            }
            break;
        default:
            break;
        }
    }
}

/*
 * Is a qvalue zero ("0", "0.", "0.000")? Anything else, malformed
 * included, counts as acceptance.
 */
static int
kou_static_q_zero(const char *p, const char *e)
{
    if (p == e || *p != '0') {
        return 0;
    }
    p++;
    if (p < e && *p == '.') {
        p++;
        while (p < e && *p == '0') {
            p++;
        }
    }
    return p == e;
}

/*
 * The precompressed codings the client accepts, from every
 * Accept-Encoding field (RFC 9110 section 12.5.3): a coding with q=0 is
 * refused, "*" covers codings not named, x-gzip is gzip.
 */
static unsigned
kou_static_accept(kou_static_req_t *q)
{
    const kou_host_t *host = kou_static_host;
    kou_str_t         v;
    unsigned          named = 0, ok = 0, star = 0;

    for (size_t nth = 0; host->header(q->r, KOU_STR("Accept-Encoding"), nth,
                                      &v) == KOU_OK; nth++)
    {
        const char *p = v.p, *e = v.p + v.n;

        while (p < e) {
            const char *t, *te;
            unsigned    bit = 0;
            int         zero = 0, is_star = 0;

            while (p < e && (kou_static_is_ows(*p) || *p == ',')) {
                p++;
            }
            t = p;
            while (p < e && kou_static_is_tchar((unsigned char) *p)) {
                p++;
            }
            te = p;
            if (te == t) {
                break;  /* not a token: stop reading this field */
            }
            if (kou_static_str_eq_lc((kou_str_t) { t, (size_t) (te - t) },
                                     "gzip")
                || kou_static_str_eq_lc((kou_str_t) { t, (size_t) (te - t) },
                                        "x-gzip"))
            {
                bit = KOU_STATIC_GZIP;
            } else if (kou_static_str_eq_lc(
                           (kou_str_t) { t, (size_t) (te - t) }, "br"))
            {
                bit = KOU_STATIC_BR;
            } else if (te - t == 1 && *t == '*') {
                is_star = 1;
            }
            /* parameters: only q matters */
            for (;;) {
                const char *n, *ne, *val;

                while (p < e && kou_static_is_ows(*p)) {
                    p++;
                }
                if (p == e || *p != ';') {
                    break;
                }
                p++;
                while (p < e && kou_static_is_ows(*p)) {
                    p++;
                }
                n = p;
                while (p < e && kou_static_is_tchar((unsigned char) *p)) {
                    p++;
                }
                ne = p;
                if (p < e && *p == '=') {
                    p++;
                }
                val = p;
                while (p < e && *p != ';' && *p != ','
                       && !kou_static_is_ows(*p))
                {
                    p++;
                }
                if (ne - n == 1 && (*n == 'q' || *n == 'Q')) {
                    zero = kou_static_q_zero(val, p);
                }
            }
            while (p < e && *p != ',') {
                p++;  /* whatever else is there belongs to this element */
            }
            if (is_star) {
                star = !zero;
            } else if (bit != 0) {
                named |= bit;
                if (zero) {
                    ok &= ~bit;
                } else {
                    ok |= bit;
                }
            }
        }
    }
    return ok | (star ? (KOU_STATIC_GZIP | KOU_STATIC_BR) & ~named : 0);
}

/*
 * Does the list of entity-tags in v match etag? weak: RFC 9110's weak
 * comparison (If-None-Match), else the strong one (If-Match, If-Range).
 * "*" matches any current representation. A malformed list matches
 * nothing from the point where it stops making sense.
 */
static int
kou_static_etag_match(kou_str_t v, const kou_static_file_t *f, int weak)
{
    const char *p = v.p, *e = v.p + v.n;

    while (p < e) {
        const char *t;
        int         is_weak = 0;

        while (p < e && (kou_static_is_ows(*p) || *p == ',')) {
            p++;
        }
        if (p == e) {
            break;
        }
        if (*p == '*') {
            return 1;
        }
        if (e - p >= 2 && p[0] == 'W' && p[1] == '/') {
            is_weak = 1;
            p += 2;
        }
        if (p == e || *p != '"') {
            return 0;
        }
        t = p++;
        while (p < e && *p != '"') {
            p++;
        }
        if (p == e) {
            return 0;
        }
        p++;
        if (f->etag_len > 0 && (weak || !is_weak)
            && (size_t) (p - t) == f->etag_len
            && memcmp(t, f->etag, f->etag_len) == 0)
        {
            return 1;
        }
    }
    return 0;
}

/* Any of the fields named `name` matches (list fields may be repeated). */
static int
kou_static_etag_match_all(kou_static_req_t *q, kou_str_t name,
                          const kou_static_file_t *f, int weak)
{
    const kou_host_t *host = kou_static_host;
    kou_str_t         v;

    for (size_t nth = 0; host->header(q->r, name, nth, &v) == KOU_OK; nth++)
    {
        if (kou_static_etag_match(v, f, weak)) {
            return 1;
        }
    }
    return 0;
}

/*
 * RFC 9110 section 13.2.2, steps 1 to 4, for GET and HEAD: 412, 304 or 0
 * (go on to the range step).
 */
static int
kou_static_preconditions(kou_static_req_t *q, const kou_static_file_t *f)
{
    int64_t t;

    if (q->if_match.p != NULL) {
        if (!kou_static_etag_match_all(q, KOU_STR("If-Match"), f, 0)) {
            return 412;
        }
    } else if (q->if_unmodified_since.p != NULL) {
        t = kou_static_parse_date(q->if_unmodified_since);
        if (t >= 0 && f->mtime > t) {
            return 412;
        }
    }
    if (q->if_none_match.p != NULL) {
        if (kou_static_etag_match_all(q, KOU_STR("If-None-Match"), f, 1)) {
            return 304;
        }
    } else if (q->if_modified_since.p != NULL) {
        t = kou_static_parse_date(q->if_modified_since);
        if (t >= 0 && f->mtime <= t) {
            return 304;
        }
    }
    return 0;
}

/* If-Range (section 13.1.5): does the client's copy still match? */
static int
kou_static_if_range(kou_static_req_t *q, const kou_static_file_t *f)
{
    kou_str_t v = q->if_range;
    int64_t   t;

    if (v.p == NULL) {
        return 1;
    }
    if (v.n > 0 && (v.p[0] == '"' || v.p[0] == 'W')) {
        /* only a strong match counts; a weak tag never does */
        return v.n > 0 && v.p[0] == '"' && f->etag_len == v.n
               && memcmp(v.p, f->etag, v.n) == 0;
    }
    t = kou_static_parse_date(v);
    return t >= 0 && t == f->mtime;
}

/* Decimal digits into *out, saturating (a huge position is just big). */
static const char *
kou_static_pos(const char *p, const char *e, int64_t *out)
{
    const char *s = p;
    int64_t     v = 0;

    while (p < e && *p >= '0' && *p <= '9') {
        int d = *p++ - '0';

        v = v > (INT64_MAX - d) / 10 ? INT64_MAX : v * 10 + d;
    }
    *out = v;
    return p == s ? NULL : p;
}

static int
kou_static_range_cmp(const void *a, const void *b)
{
    const kou_static_range_t *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * Parse a Range value (RFC 9110 section 14.1.2) against a representation
 * of len bytes. Returns 0 to ignore it and send the whole file (invalid
 * syntax, another unit, more than max ranges, overlapping ranges), 416
 * when no range is satisfiable, or 206 with the satisfiable ranges in
 * out[0..*n) in the order asked. out has room for max entries.
 */
static int
kou_static_parse_range(kou_str_t v, int64_t len, unsigned max,
                       kou_static_range_t *out, size_t *n,
                       kou_static_range_t *sorted)
{
    const char *p = v.p, *e = v.p + v.n;
    size_t      specs = 0, k = 0;

    if (e - p < 6 || !kou_static_str_eq_lc((kou_str_t) { p, 6 }, "bytes=")) {
        return 0;
    }
    p += 6;
    for (;;) {
        int64_t first, last;

        while (p < e && (kou_static_is_ows(*p) || *p == ',')) {
            p++;  /* empty list elements are allowed (section 5.6.1) */
        }
        if (p == e) {
            break;
        }
        if (++specs > max) {
            return 0;
        }
        if (*p == '-') {
            p = kou_static_pos(p + 1, e, &last);
            if (p == NULL) {
                return 0;
            }
            if (last > 0 && len > 0) {
                out[k].start = last >= len ? 0 : len - last;
                out[k].end = len - 1;
                k++;
            }
        } else {
            p = kou_static_pos(p, e, &first);
            if (p == NULL || p == e || *p != '-') {
                return 0;
            }
            p++;
            last = INT64_MAX;
            if (p < e && *p >= '0' && *p <= '9') {
                p = kou_static_pos(p, e, &last);
                if (last < first) {
                    return 0;  /* invalid: the whole field is ignored */
                }
            }
            if (first < len) {
                out[k].start = first;
                out[k].end = last >= len ? len - 1 : last;
                k++;
            }
        }
        while (p < e && kou_static_is_ows(*p)) {
            p++;
        }
        if (p < e && *p != ',') {
            return 0;
        }
    }
    if (specs == 0) {
        return 0;
    }
    if (k == 0) {
        return 416;
    }
    if (k > 1) {
        memcpy(sorted, out, k * sizeof(*out));
        qsort(sorted, k, sizeof(*sorted), kou_static_range_cmp);
        for (size_t i = 1; i < k; i++) {
            if (sorted[i].start <= sorted[i - 1].end) {
                return 0;  /* overlapping: one copy of the file instead */
            }
        }
    }
    *n = k;
    return 206;
}

/* ---- sending a file ---- */

/* "bytes START-END/LEN" at p. */
static char *
kou_static_put_range(char *p, const kou_static_range_t *rg, int64_t len)
{
    p = kou_static_put_lit(p, "bytes ");
    p = kou_static_put_u64(p, (uint64_t) rg->start);
    *p++ = '-';
    p = kou_static_put_u64(p, (uint64_t) rg->end);
    *p++ = '/';
    return kou_static_put_u64(p, (uint64_t) len);
}

/* The body of a 200 or a single-range 206: start, sendfile, finish. */
static int
kou_static_send(kou_static_req_t *q, int status, kou_header_t *h, size_t n,
                const kou_static_file_t *f, int64_t off, int64_t len)
{
    const kou_host_t *host = kou_static_host;

    if (host->start(q->r, status, h, n, len) != KOU_OK) {
        return KOU_ERROR;
    }
    /* for HEAD the server only counts the bytes */
    if (host->sendfile(q->r, f->fd, off, len) != KOU_OK) {
        return KOU_ERROR;
    }
    (void) host->finish(q->r);
    return KOU_DONE;
}

/*
 * multipart/byteranges (RFC 9110 section 14.6): each part's head is
 * written, then its bytes queued with sendfile; the total length is known
 * before the first byte goes out.
 */
static int
kou_static_send_multi(kou_static_req_t *q, kou_header_t *h, size_t n,
                      const kou_static_file_t *f, kou_str_t mime,
                      const kou_static_range_t *rg, size_t nr)
{
    const kou_host_t *host = kou_static_host;
    kou_str_t        *heads;
    char              boundary[32], *ct, *p;
    size_t            blen, tail_len;
    uint64_t          b, total = 0;
    static const char tail_fmt[] = "\r\n--%s--\r\n";
    char              tail[64];

    /* unique enough that no file holds it by chance (RFC 2046 5.1.1) */
    if (kou_static_boundary_seq == 0) {
        kou_static_boundary_seq = (uint64_t) getpid() << 40
                                  ^ (uint64_t) time(NULL) ^ q->now << 20;
    }
    b = ++kou_static_boundary_seq * 0x9e3779b97f4a7c15u;
    p = kou_static_put_lit(boundary, "kourier");
    p = kou_static_put_hex(p, b | (uint64_t) 1 << 63);
    *p = '\0';
    blen = (size_t) (p - boundary);

    heads = host->palloc(q->r, nr * sizeof(*heads));
    ct = host->palloc(q->r, blen + 40);
    if (heads == NULL || ct == NULL) {
        return 503;
    }
    for (size_t i = 0; i < nr; i++) {
        char *s = host->palloc(q->r, blen + mime.n + 128);

        if (s == NULL) {
            return 503;
        }
        p = kou_static_put_lit(s, "\r\n--");
        p = kou_static_put(p, boundary, blen);
        p = kou_static_put_lit(p, "\r\nContent-Type: ");
        p = kou_static_put(p, mime.p, mime.n);
        p = kou_static_put_lit(p, "\r\nContent-Range: ");
        p = kou_static_put_range(p, &rg[i], f->size);
        p = kou_static_put_lit(p, "\r\n\r\n");
        heads[i] = (kou_str_t) { s, (size_t) (p - s) };
        total += heads[i].n + (uint64_t) (rg[i].end - rg[i].start + 1);
    }
    tail_len = (size_t) snprintf(tail, sizeof(tail), tail_fmt, boundary);
    total += tail_len;

    p = kou_static_put_lit(ct, "multipart/byteranges; boundary=");
    p = kou_static_put(p, boundary, blen);
    h[n].name = KOU_STR("Content-Type");
    h[n].value = (kou_str_t) { ct, (size_t) (p - ct) };
    n++;

    if (host->start(q->r, 206, h, n, (int64_t) total) != KOU_OK) {
        return KOU_ERROR;
    }
    for (size_t i = 0; i < nr; i++) {
        if (host->write(q->r, heads[i], NULL, NULL) != KOU_OK
            || host->sendfile(q->r, f->fd, rg[i].start,
                              rg[i].end - rg[i].start + 1) != KOU_OK)
        {
            return KOU_ERROR;
        }
    }
    if (host->write(q->r, (kou_str_t) { tail, tail_len }, NULL, NULL)
        != KOU_OK)
    {
        return KOU_ERROR;
    }
    (void) host->finish(q->r);
    return KOU_DONE;
}

/*
 * Answer with file f (regular), whose media type is mime; encoding is
 * the Content-Encoding of a precompressed sibling (n == 0 for none).
 */
static int
kou_static_serve(kou_static_req_t *q, const kou_static_file_t *f,
                 kou_str_t mime, kou_str_t encoding)
{
    const kou_host_t   *host = kou_static_host;
    kou_static_route_t *sr = q->sr;
    kou_static_range_t *rg, *sorted;
    kou_header_t        h[10];
    size_t              n = 0, nr = 0;
    char               *cr, *p;
    int                 rc;

    /* the validators and what caches need go with 200, 206 and 304 */
    if (f->etag_len > 0) {
        h[n].name = KOU_STR("ETag");
        h[n].value = (kou_str_t) { f->etag, f->etag_len };
        n++;
    }
    h[n].name = KOU_STR("Last-Modified");
    h[n].value = (kou_str_t) { f->last_modified, 29 };
    n++;
    if (sr->cache_control.n > 0) {
        h[n].name = KOU_STR("Cache-Control");
        h[n].value = sr->cache_control;
        n++;
    }
    if (sr->ncodings > 0) {
        h[n].name = KOU_STR("Vary");
        h[n].value = KOU_STR("Accept-Encoding");
        n++;
    }

    rc = kou_static_preconditions(q, f);
    if (rc == 412) {
        return kou_static_plain(q, 412);
    }
    if (rc == 304) {
        if (host->respond(q->r, 304, h, n, KOU_STR("")) != KOU_OK) {
            return KOU_ERROR;
        }
        return KOU_DONE;
    }

    if (encoding.n > 0) {
        h[n].name = KOU_STR("Content-Encoding");
        h[n].value = encoding;
        n++;
    }
    if (sr->max_ranges > 0) {
        h[n].name = KOU_STR("Accept-Ranges");
        h[n].value = KOU_STR("bytes");
        n++;
    }

    /* Range is defined for GET only; HEAD gets the 200 header block */
    if (q->range.p != NULL && !q->head && q->nrange == 1
        && sr->max_ranges > 0 && kou_static_if_range(q, f))
    {
        rg = host->palloc(q->r, 2 * sr->max_ranges * sizeof(*rg));
        cr = host->palloc(q->r, 80);
        if (rg == NULL || cr == NULL) {
            return 503;
        }
        sorted = rg + sr->max_ranges;
        rc = kou_static_parse_range(q->range, f->size, sr->max_ranges, rg,
                                    &nr, sorted);
        if (rc == 416) {
            p = kou_static_put_lit(cr, "bytes */");
            p = kou_static_put_u64(p, (uint64_t) f->size);
            h[n].name = KOU_STR("Content-Range");
            h[n].value = (kou_str_t) { cr, (size_t) (p - cr) };
            return kou_static_answer(q, 416, h, n + 1);
        }
        if (rc == 206 && nr == 1) {
            p = kou_static_put_range(cr, &rg[0], f->size);
            h[n].name = KOU_STR("Content-Range");
            h[n].value = (kou_str_t) { cr, (size_t) (p - cr) };
            n++;
            h[n].name = KOU_STR("Content-Type");
            h[n].value = mime;
            n++;
            return kou_static_send(q, 206, h, n, f, rg[0].start,
                                   rg[0].end - rg[0].start + 1);
        }
        if (rc == 206) {
            return kou_static_send_multi(q, h, n, f, mime, rg, nr);
        }
    }

    h[n].name = KOU_STR("Content-Type");
    h[n].value = mime;
    n++;
    return kou_static_send(q, 200, h, n, f, 0, f->size);
}

/* ---- directory listings ---- */

typedef struct {
    char    *name;
    size_t   len;
    int      dir;
    int64_t  size;
    int64_t  mtime;
} kou_static_dirent_t;

static int
kou_static_dirent_cmp(const void *a, const void *b)
{
    const kou_static_dirent_t *x = a, *y = b;

    if (x->dir != y->dir) {
        return y->dir - x->dir;   /* directories first */
    }
    return strcmp(x->name, y->name);
}

/* Escape for HTML text and attribute values. */
static char *
kou_static_put_html(char *p, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&':  p = kou_static_put_lit(p, "&amp;"); break;
        case '<':  p = kou_static_put_lit(p, "&lt;"); break;
        case '>':  p = kou_static_put_lit(p, "&gt;"); break;
        case '"':  p = kou_static_put_lit(p, "&quot;"); break;
        case '\'': p = kou_static_put_lit(p, "&#39;"); break;
        default:   *p++ = s[i]; break;
        }
    }
    return p;
}

/*
 * A name as a relative URL path segment: everything but the unreserved
 * characters is percent-encoded, so that "a:b" cannot read as a scheme
 * and nothing in it needs HTML escaping.
 */
static char *
kou_static_put_href(char *p, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];

        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            *p++ = (char) c;
        } else {
            *p++ = '%';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
        }
    }
    return p;
}

static void
kou_static_dirents_free(kou_static_dirent_t *ents, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(ents[i].name);
    }
    free(ents);
}

/*
 * An HTML listing of directory d (key is its relative path). Names that
 * start with a dot are left out, as they are by convention hidden.
 */
static int
kou_static_autoindex(kou_static_req_t *q, const kou_static_file_t *d,
                     const char *key, size_t keylen)
{
    static const kou_header_t html[] = {
        { KOU_STR_INIT("Content-Type"),
          KOU_STR_INIT("text/html; charset=utf-8") }
    };
    const kou_host_t    *host = kou_static_host;
    kou_static_dirent_t *ents = NULL, *grown;
    size_t               n = 0, cap = 0, size;
    struct dirent       *de;
    struct stat          st;
    DIR                 *dir;
    char                *out, *p;
    int                  fd, flags, rc;

    /* a description of our own: the cached one's offset is not ours */
    fd = openat(d->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return kou_static_fail(q, errno);
    }
    dir = fdopendir(fd);
    if (dir == NULL) {
        rc = errno;
        close(fd);
        return kou_static_fail(q, rc);
    }
    flags = q->sr->links == KOU_STATIC_LINKS_NEVER ? AT_SYMLINK_NOFOLLOW : 0;

    size = 512 + 12 * keylen;
    while ((de = readdir(dir)) != NULL) {
        size_t len = strlen(de->d_name);

        if (de->d_name[0] == '.') {
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            grown = realloc(ents, cap * sizeof(*ents));
            if (grown == NULL) {
                goto failed;
            }
            ents = grown;
        }
        ents[n].name = strdup(de->d_name);
        if (ents[n].name == NULL) {
            goto failed;
        }
        ents[n].len = len;
        ents[n].dir = 0;
        ents[n].size = -1;
        ents[n].mtime = 0;
        if (fstatat(dirfd(dir), de->d_name, &st, flags) == 0) {
            ents[n].dir = S_ISDIR(st.st_mode);
            ents[n].size = S_ISREG(st.st_mode) ? (int64_t) st.st_size : -1;
            ents[n].mtime = (int64_t) st.st_mtim.tv_sec;
        }
        /* href (3x), text (6x), the row's markup, date and size */
        size += 9 * len + 128;
        n++;
    }
    closedir(dir);
    dir = NULL;
    if (n > 1) {
        qsort(ents, n, sizeof(*ents), kou_static_dirent_cmp);
    }

    out = host->palloc(q->r, size);
    if (out == NULL) {
        kou_static_dirents_free(ents, n);
        return 503;
    }
    p = out;
    p = kou_static_put_lit(p, "<!DOCTYPE html>\n<html><head>"
                              "<meta charset=\"utf-8\"><title>Index of /");
    p = kou_static_put_html(p, key, keylen);
    if (keylen > 0) {
        *p++ = '/';
    }
    p = kou_static_put_lit(p, "</title></head>\n<body>\n<h1>Index of /");
    p = kou_static_put_html(p, key, keylen);
    if (keylen > 0) {
        *p++ = '/';
    }
    p = kou_static_put_lit(p, "</h1>\n<table>\n");
    if (keylen > 0) {
        p = kou_static_put_lit(p, "<tr><td><a href=\"../\">../</a></td>"
                              "<td></td><td></td></tr>\n");
    }
    for (size_t i = 0; i < n; i++) {
        struct tm tm;
        time_t    t = (time_t) ents[i].mtime;
        char      date[32];
        int       dn;

        if (gmtime_r(&t, &tm) == NULL) {
            memset(&tm, 0, sizeof(tm));
        }
        dn = snprintf(date, sizeof(date), "%04d-%02d-%02d %02d:%02d",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                      tm.tm_hour, tm.tm_min);
        p = kou_static_put_lit(p, "<tr><td><a href=\"");
        p = kou_static_put_href(p, ents[i].name, ents[i].len);
        if (ents[i].dir) {
            *p++ = '/';
        }
        p = kou_static_put_lit(p, "\">");
        p = kou_static_put_html(p, ents[i].name, ents[i].len);
        if (ents[i].dir) {
            *p++ = '/';
        }
        p = kou_static_put_lit(p, "</a></td><td>");
        p = kou_static_put(p, date, (size_t) (dn > 0 ? dn : 0));
        p = kou_static_put_lit(p, "</td><td>");
        if (ents[i].size >= 0) {
            p = kou_static_put_u64(p, (uint64_t) ents[i].size);
        } else {
            *p++ = '-';
        }
        p = kou_static_put_lit(p, "</td></tr>\n");
    }
    p = kou_static_put_lit(p, "</table>\n</body></html>\n");
    kou_static_dirents_free(ents, n);

    if (host->respond(q->r, 200, html, 1,
                      (kou_str_t) { out, (size_t) (p - out) }) != KOU_OK)
    {
        return KOU_ERROR;
    }
    return KOU_DONE;

failed:
    if (dir != NULL) {
        closedir(dir);
    }
    kou_static_dirents_free(ents, n);
    return 503;
}

/* ---- the handler ---- */

/*
 * The request path as a key: no leading, trailing or repeated slash, "%25"
 * decoded. *dir says whether it ended in "/". Returns 0, or the status to
 * answer (404 for an encoded slash, 400 for what the core should already
 * have refused).
 */
static int
kou_static_key(kou_static_req_t *q, char *buf, size_t *len, int *dir)
{
    const kou_host_t *host = kou_static_host;
    kou_str_t         path = host->path(q->r);
    size_t            w = 0, seg;

    *dir = path.n == 0 || path.p[path.n - 1] == '/';
    for (size_t i = 0; i < path.n; i++) {
        char c = path.p[i];

        if (c == '/') {
            if (w > 0 && buf[w - 1] != '/') {
                buf[w++] = '/';
            }
            continue;
        }
        if (c == '%') {
            if (path.n - i >= 3 && path.p[i + 1] == '2'
                && (path.p[i + 2] == 'F' || path.p[i + 2] == 'f'))
            {
                kou_static_refuse_log(q, "encoded slash in the path");
                return 404;
            }
            if (path.n - i < 3 || path.p[i + 1] != '2' || path.p[i + 2] != '5')
            {
                kou_static_refuse_log(q, "stray '%' in the path");
                return 400;
            }
            i += 2;
        } else if (c == '\0') {
            kou_static_refuse_log(q, "NUL in the path");
            return 400;
        }
        buf[w++] = c;
    }
    if (w > 0 && buf[w - 1] == '/') {
        w--;
    }
    buf[w] = '\0';

    /* the core removed dot segments; never trust that with a file system */
    seg = 0;
    for (size_t i = 0; i <= w; i++) {
        if (i == w || buf[i] == '/') {
            if ((i - seg == 1 && buf[seg] == '.')
                || (i - seg == 2 && buf[seg] == '.' && buf[seg + 1] == '.'))
            {
                kou_static_refuse_log(q, "dot segment in the path");
                return 400;
            }
            seg = i + 1;
        }
    }
    *len = w;
    return 0;
}

/* Look for a precompressed sibling of name the client accepts. */
static int
kou_static_sibling(kou_static_req_t *q, char *name, size_t len,
                   kou_static_file_t **out, kou_str_t *encoding)
{
    kou_static_route_t *sr = q->sr;
    kou_static_file_t  *f;
    unsigned            accept = kou_static_accept(q);

    *out = NULL;
    for (size_t i = 0; i < sr->ncodings; i++) {
        unsigned   c = sr->codings[i];
        const char *ext = c == KOU_STATIC_BR ? ".br" : ".gz";

        if (!(accept & c)) {
            continue;
        }
        memcpy(name + len, ext, 4);
        if (kou_static_get(q, name, len + 3, &f) != KOU_OK) {
            name[len] = '\0';
            return KOU_ERROR;
        }
        name[len] = '\0';
        if (f->err == 0 && f->kind == KOU_STATIC_REG) {
            *out = f;
            *encoding = c == KOU_STATIC_BR ? KOU_STR("br") : KOU_STR("gzip");
            return KOU_OK;
        }
    }
    return KOU_OK;
}

static int
kou_static_content(kou_request_t *r, void *state, void *route_state)
{
    const kou_host_t   *host = kou_static_host;
    kou_static_route_t *sr = route_state;
    kou_static_req_t    q;
    kou_static_file_t  *f = NULL, *d, *z;
    kou_str_t           m = host->method(r), encoding = { "", 0 };
    size_t              len, nlen = 0;
    char               *key, *name = NULL;
    int                 dir, rc;

    (void) state;

    memset(&q, 0, sizeof(q));
    q.r = r;
    q.sr = sr;
    if (m.n == 4 && memcmp(m.p, "HEAD", 4) == 0) {
        q.head = 1;
    } else if (m.n != 3 || memcmp(m.p, "GET", 3) != 0) {
        if (host->respond(r, 405, kou_static_405_headers, 2,
                          KOU_STR("405 Method Not Allowed\n")) != KOU_OK)
        {
            return KOU_ERROR;
        }
        return KOU_DONE;
    }
    q.now = host->now_ms();
    q.seq = ++sr->seq;

    /* room for "/" + an index name + ".br" after the key */
    key = host->palloc(r, host->path(r).n + sr->index_max + 8);
    if (key == NULL) {
        return 503;
    }
    rc = kou_static_key(&q, key, &len, &dir);
    if (rc != 0) {
        return kou_static_plain(&q, rc);
    }
    rc = kou_static_root_open(sr, q.now, q.seq);
    if (rc != 0) {
        host->log(KOU_LOG_ERR, "static: root %s: %s", sr->root,
                  strerror(rc));
        return kou_static_fail(&q, rc);
    }
    kou_static_scan(&q);

    if (dir) {
        /* the index first: a directory that is searchable only still works */
        for (size_t i = 0; i < sr->nindex; i++) {
            kou_str_t ix = sr->index[i];
            size_t    o = len > 0 ? len + 1 : 0;

            if (len > 0) {
                key[len] = '/';
            }
            memcpy(key + o, ix.p, ix.n);
            key[o + ix.n] = '\0';
            if (kou_static_get(&q, key, o + ix.n, &f) != KOU_OK) {
                return 503;
            }
            if (f->err == 0 && f->kind == KOU_STATIC_REG) {
                name = key;
                nlen = o + ix.n;
                break;
            }
            if (f->err != 0 && f->err != ENOENT && f->err != ENOTDIR) {
                key[len] = '\0';
                return kou_static_fail(&q, f->err);
            }
            f = NULL;
        }
        if (name == NULL) {
            key[len] = '\0';
            if (kou_static_get(&q, key, len, &d) != KOU_OK) {
                return 503;
            }
            if (d->err != 0) {
                return kou_static_fail(&q, d->err);
            }
            if (d->kind != KOU_STATIC_DIR) {
                return kou_static_plain(&q, 404);  /* "file/" */
            }
            if (sr->autoindex) {
                return kou_static_autoindex(&q, d, key, len);
            }
            return kou_static_plain(&q, 403);
        }
    } else {
        if (kou_static_get(&q, key, len, &f) != KOU_OK) {
            return 503;
        }
        if (f->err != 0) {
            return kou_static_fail(&q, f->err);
        }
        if (f->kind == KOU_STATIC_DIR) {
            return kou_static_redirect(&q, key, len);
        }
        if (f->kind != KOU_STATIC_REG) {
            kou_static_refuse_log(&q, "not a regular file");
            return kou_static_plain(&q, 403);
        }
        name = key;
        nlen = len;
    }

    if (sr->ncodings > 0 && q.accept != 0) {
        if (kou_static_sibling(&q, name, nlen, &z, &encoding) != KOU_OK) {
            return 503;
        }
        if (z != NULL) {
            return kou_static_serve(&q, z, f->mime, encoding);
        }
    }
    return kou_static_serve(&q, f, f->mime, encoding);
}

/* ---- configuration ---- */

static int
kou_static_conf_cache(kou_static_route_t *sr, const kou_conf_t *node,
                      char *err, size_t errlen)
{
    const kou_host_t *host = kou_static_host;
    const kou_conf_t *v;
    kou_str_t         k;
    int64_t           entries;
    uint64_t          ms;
    int               on;

    sr->cache.max = 1000;
    sr->cache.valid_ms = 1000;
    if (node == NULL) {
        return KOU_OK;
    }
    if (host->conf_bool(node, &on) == KOU_OK) {
        if (!on) {
            sr->cache.max = 0;
        }
        return KOU_OK;
    }
    if (host->conf_str(node, &k) == KOU_OK) {
        goto invalid;   /* a scalar that is not a boolean */
    }
    for (size_t i = 0; (v = host->conf_at(node, i, &k)) != NULL; i++) {
        if (k.n == 0) {
            goto invalid;   /* a list, not a mapping */
        }
        if (kou_static_str_eq_lc(k, "entries")) {
            if (host->conf_int(v, &entries) != KOU_OK || entries < 0
                || entries > 1000000)
            {
                return host->conf_error(v, err, errlen,
                                        "open_file_cache: entries: expected "
                                        "an integer from 0 to 1000000");
            }
            sr->cache.max = (size_t) entries;
        } else if (kou_static_str_eq_lc(k, "validity")) {
            if (host->conf_duration(v, &ms) != KOU_OK) {
                return host->conf_error(v, err, errlen,
                                        "open_file_cache: validity: expected "
                                        "a duration such as 500ms or 5s");
            }
            sr->cache.valid_ms = ms;
        } else {
            return host->conf_error(v, err, errlen,
                                    "open_file_cache: unknown key \"%.*s\" "
                                    "(expected entries, validity)",
                                    (int) k.n, k.p);
        }
    }
    if (sr->cache.valid_ms == 0) {
        sr->cache.max = 0;  /* valid for no time at all: no cache */
    }
    return KOU_OK;

invalid:
    return host->conf_error(node, err, errlen,
                            "open_file_cache: expected off, on or "
                            "{ entries: N, validity: DURATION }");
}

static int
kou_static_conf_mime(kou_static_route_t *sr, const kou_conf_t *node,
                     char *err, size_t errlen)
{
    const kou_host_t *host = kou_static_host;
    const kou_conf_t *v;
    kou_str_t         k, t;
    size_t            n;

    if (node == NULL || (n = host->conf_len(node)) == 0) {
        return KOU_OK;
    }
    sr->mime = calloc(n, sizeof(*sr->mime));
    if (sr->mime == NULL) {
        return host->conf_error(node, err, errlen, "static: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        char *ext;

        v = host->conf_at(node, i, &k);
        if (k.n > 0 && k.p[0] == '.') {
            k.p++;
            k.n--;
        }
        if (host->conf_str(v, &t) != KOU_OK || t.n == 0
            || !kou_static_value_ok(t))
        {
            return host->conf_error(v, err, errlen,
                                    "mime_types: expected a media type "
                                    "such as text/html");
        }
        if (k.n == 0 || k.n >= 16 || memchr(k.p, '/', k.n) != NULL
            || memchr(k.p, '.', k.n) != NULL)
        {
            return host->conf_error(v, err, errlen,
                                    "mime_types: \"%.*s\" is not a file "
                                    "extension (up to 15 characters, no dot "
                                    "inside)", (int) k.n, k.p);
        }
        ext = malloc(k.n + 1);
        if (ext == NULL) {
            return host->conf_error(node, err, errlen,
                                    "static: out of memory");
        }
        for (size_t j = 0; j < k.n; j++) {
            ext[j] = (char) tolower((unsigned char) k.p[j]);
        }
        ext[k.n] = '\0';
        sr->mime[i].ext = ext;
        sr->mime[i].type = t.p;   /* NUL-terminated, owned by the config */
        sr->nmime = i + 1;
    }
    return KOU_OK;
}

static void
kou_static_route_free(void *state, void *route_state)
{
    kou_static_route_t *sr = route_state;
    kou_static_cache_t *c;

    (void) state;

    if (sr == NULL) {
        return;
    }
    c = &sr->cache;
    if (c->buckets != NULL) {
        while (c->lru.next != &c->lru) {
            kou_static_cache_remove(c, c->lru.next);
        }
        free(c->buckets);
    }
    if (sr->root_fd >= 0) {
        close(sr->root_fd);
    }
    for (size_t i = 0; i < sr->nmime; i++) {
        free((char *) sr->mime[i].ext);
    }
    free(sr->mime);
    free(sr->index);
    free(sr->root_real);
    free(sr->root);
    free(sr);
}

static int
kou_static_configure_route(void *state, const kou_conf_t *route,
                           void **route_state, char *err, size_t errlen)
{
    const kou_host_t   *host = kou_static_host;
    const kou_conf_t   *node, *v;
    kou_static_route_t *sr;
    kou_str_t           s;
    struct stat         st;
    int64_t             i64;
    int                 b;

    (void) state;

    sr = calloc(1, sizeof(*sr));
    if (sr == NULL) {
        return host->conf_error(route, err, errlen, "static: out of memory");
    }
    sr->root_fd = -1;
    sr->cache.lru.next = sr->cache.lru.prev = &sr->cache.lru;

    node = host->conf_get(route, "root");
    if (host->conf_str(node, &s) != KOU_OK || s.n == 0
        || memchr(s.p, '\0', s.n) != NULL)
    {
        host->conf_error(node ? node : route, err, errlen,
                         "root: expected a directory");
        goto failed;
    }
    if (host->size >= offsetof(kou_host_t, conf_path) + sizeof(void *)) {
        /* relative to the prefix, like the server's own paths */
        char path[4096];
        if (host->conf_path(node, path, sizeof(path)) != KOU_OK) {
            host->conf_error(node, err, errlen, "root: path too long");
            goto failed;
        }
        sr->root = strdup(path);
    } else {
        sr->root = strndup(s.p, s.n);
    }
    if (sr->root == NULL) {
        host->conf_error(node, err, errlen, "static: out of memory");
        goto failed;
    }
    /* caught by `kourier -t` rather than by the first request */
    if (stat(sr->root, &st) != 0) {
        host->conf_error(node, err, errlen, "root: %s: %s", sr->root,
                         strerror(errno));
        goto failed;
    }
    if (!S_ISDIR(st.st_mode)) {
        host->conf_error(node, err, errlen, "root: %s is not a directory",
                         sr->root);
        goto failed;
    }

    node = host->conf_get(route, "index");
    sr->nindex = host->conf_len(node);
    if (sr->nindex > 0) {
        sr->index = calloc(sr->nindex, sizeof(*sr->index));
        if (sr->index == NULL) {
            host->conf_error(node, err, errlen, "static: out of memory");
            goto failed;
        }
    }
    for (size_t i = 0; i < sr->nindex; i++) {
        v = host->conf_at(node, i, NULL);
        if (host->conf_str(v, &s) != KOU_OK || s.n == 0
            || s.n > KOU_STATIC_MAX_INDEX || memchr(s.p, '/', s.n) != NULL
            || memchr(s.p, '\0', s.n) != NULL
            || (s.n == 1 && s.p[0] == '.')
            || (s.n == 2 && s.p[0] == '.' && s.p[1] == '.'))
        {
            host->conf_error(v ? v : node, err, errlen,
                             "index: expected file names (no \"/\")");
            goto failed;
        }
        sr->index[i] = s;
        if (s.n > sr->index_max) {
            sr->index_max = s.n;
        }
    }

    if (host->conf_bool(host->conf_get(route, "autoindex"), &sr->autoindex)
            != KOU_OK
        || host->conf_bool(host->conf_get(route, "etag"), &sr->etag)
            != KOU_OK)
    {
        host->conf_error(route, err, errlen, "static: cannot read booleans");
        goto failed;
    }

    if (kou_static_conf_mime(sr, host->conf_get(route, "mime_types"), err,
                             errlen) != KOU_OK)
    {
        goto failed;
    }

    node = host->conf_get(route, "default_type");
    if (host->conf_str(node, &sr->default_type) != KOU_OK
        || sr->default_type.n == 0 || !kou_static_value_ok(sr->default_type))
    {
        host->conf_error(node ? node : route, err, errlen,
                         "default_type: expected a media type");
        goto failed;
    }

    node = host->conf_get(route, "max_ranges");
    if (host->conf_int(node, &i64) != KOU_OK || i64 < 0
        || i64 > KOU_STATIC_MAX_RANGES)
    {
        host->conf_error(node ? node : route, err, errlen,
                         "max_ranges: expected an integer from 0 to %d",
                         KOU_STATIC_MAX_RANGES);
        goto failed;
    }
    sr->max_ranges = (unsigned) i64;

    node = host->conf_get(route, "follow_symlinks");
    if (host->conf_str(node, &s) != KOU_OK) {
        s = KOU_STR("");
    }
    if (kou_static_str_eq_lc(s, "never")) {
        sr->links = KOU_STATIC_LINKS_NEVER;
    } else if (kou_static_str_eq_lc(s, "within_root")) {
        sr->links = KOU_STATIC_LINKS_WITHIN;
    } else if (kou_static_str_eq_lc(s, "always")) {
        sr->links = KOU_STATIC_LINKS_ALWAYS;
    } else {
        host->conf_error(node ? node : route, err, errlen,
                         "follow_symlinks: expected never, within_root or "
                         "always, got \"%.*s\"", (int) s.n, s.p);
        goto failed;
    }

    node = host->conf_get(route, "precompressed");
    for (size_t i = 0; i < host->conf_len(node); i++) {
        unsigned c;

        v = host->conf_at(node, i, NULL);
        if (host->conf_str(v, &s) != KOU_OK) {
            s = KOU_STR("");
        }
        if (host->conf_len(node) == 1 && host->conf_bool(v, &b) == KOU_OK
            && !b)
        {
            break;   /* precompressed: off */
        }
        if (kou_static_str_eq_lc(s, "gzip")) {
            c = KOU_STATIC_GZIP;
        } else if (kou_static_str_eq_lc(s, "br")) {
            c = KOU_STATIC_BR;
        } else {
            host->conf_error(v ? v : node, err, errlen,
                             "precompressed: expected off or a list of br "
                             "and gzip, got \"%.*s\"", (int) s.n, s.p);
            goto failed;
        }
        if (sr->ncodings == 2
            || (sr->ncodings == 1 && sr->codings[0] == c))
        {
            host->conf_error(v, err, errlen,
                             "precompressed: \"%.*s\" given twice",
                             (int) s.n, s.p);
            goto failed;
        }
        sr->codings[sr->ncodings++] = c;
    }

    node = host->conf_get(route, "cache_control");
    if (node != NULL
        && (host->conf_str(node, &sr->cache_control) != KOU_OK
            || !kou_static_value_ok(sr->cache_control)))
    {
        host->conf_error(node, err, errlen,
                         "cache_control: expected a header value");
        goto failed;
    }

    if (kou_static_conf_cache(sr, host->conf_get(route, "open_file_cache"),
                              err, errlen) != KOU_OK)
    {
        goto failed;
    }

    *route_state = sr;
    return KOU_OK;

failed:
    kou_static_route_free(NULL, sr);
    return KOU_ERROR;
}

static const kou_module_t kou_static_module = {
    KOU_MODULE_HEADER("static", "1.0.0"),
    .conf = kou_static_conf,
    .configure_route = kou_static_configure_route,
    .content = kou_static_content,
    .route_free = kou_static_route_free,
};

KOU_EXPORT const kou_module_t *
kourier_module(const kou_host_t *host)
{
    /* bodies go out with host->sendfile: a server without it cannot serve */
    if (host->size < offsetof(kou_host_t, sendfile) + sizeof(void *)
        || host->sendfile == NULL)
    {
        host->log(KOU_LOG_ERR, "static: this server has no sendfile in its "
                  "host table (ABI %u.%u)", (unsigned) host->abi_major,
                  (unsigned) host->abi_minor);
        return NULL;
    }
    kou_static_host = host;
    return &kou_static_module;
}
