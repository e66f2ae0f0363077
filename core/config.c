/*
 * kourier.yaml: libyaml events -> a tree of kou_conf_t nodes that remember
 * where they were written -> the core's typed view (kou_config_t), plus
 * schema checks for the keys modules own.
 *
 * Everything a configuration owns (nodes, strings, arrays, the kou_config_t
 * itself) lives in one arena freed by kou_config_free(): a generation drops
 * its whole configuration at once, so per-object frees would only add ways
 * to leak on the many error paths of a validator.
 */

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <yaml.h>

#include "config.h"
#include "http_parse.h"

/* Nesting beyond this is a mistake or an attack, and we recurse per level. */
#define KOU_CONF_MAX_DEPTH   64
/* A configuration file is small; refuse to slurp something that is not. */
#define KOU_CONF_MAX_FILE    (16u * 1024 * 1024)
#define KOU_CONF_MAX_WORKERS 1024
/* Longer timeouts are typos, and would overflow "now + timeout" math. */
#define KOU_CONF_MAX_TIMEOUT (365ull * 24 * 3600 * 1000)

const char *const kou_route_core_keys[] = {
    "path", "prefix", "methods", "host", "handler", "max_body", NULL
};

static const char *const kou_conf_top_keys[] = {
    "workers", "pid_file", "error_log", "shutdown_timeout", "user", "group",
    "limits", "listen", "modules", "hooks", "routes", "shared_memory",
    "tls_ticket_rotation", NULL
};

static const char *const kou_conf_listen_keys[] = {
    "address", "backlog", "tls", NULL
};

static const char *const kou_conf_phase_names[KOU_PHASE_COUNT + 1] = {
    "request", "response", "log", NULL
};

/* ---- the arena ---- */

#define KOU_ARENA_BLOCK 8192

typedef struct kou_arena_block_s kou_arena_block_t;

struct kou_arena_block_s {
    kou_arena_block_t *next;
    size_t             size;
    size_t             used;
    max_align_t        data[];
};

typedef struct {
    kou_arena_block_t *head;   /* the block small allocations come from */
} kou_arena_t;

/*
 * Zeroed memory aligned for any type, or NULL. Big requests get a block of
 * their own, linked behind the head so the head's free space is not lost.
 * With KOU_DEBUG_ALLOC every request is its own malloc, so ASan sees each.
 */
static void *
kou_arena_alloc(kou_arena_t *a, size_t n)
{
    kou_arena_block_t *b;
    size_t             align = alignof(max_align_t);
    size_t             size;
    bool               own;
    char              *p;

    if (n > SIZE_MAX / 2) {
        return NULL;
    }
    n = (n + align - 1) & ~(align - 1);
    if (n == 0) {
        n = align;
    }

    b = a->head;
    if (b != NULL && b->size - b->used >= n) {
        p = (char *) b->data + b->used;
        b->used += n;
        memset(p, 0, n);
        return p;
    }

#ifdef KOU_DEBUG_ALLOC
    own = true;
#else
    own = n > KOU_ARENA_BLOCK / 4;
#endif
    size = own ? n : KOU_ARENA_BLOCK;
    b = malloc(sizeof(kou_arena_block_t) + size);
    if (b == NULL) {
        return NULL;
    }
    b->size = size;
    b->used = n;
    if (own && a->head != NULL) {
        b->next = a->head->next;
        a->head->next = b;
    } else {
        b->next = a->head;
        a->head = b;
    }
    memset(b->data, 0, n);
    return b->data;
}

static char *
kou_arena_strndup(kou_arena_t *a, const char *s, size_t n)
{
    char *p = kou_arena_alloc(a, n + 1);

    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static void
kou_arena_destroy(kou_arena_t *a)
{
    kou_arena_block_t *b, *next;

    if (a == NULL) {
        return;
    }
    for (b = a->head; b != NULL; b = next) {
        next = b->next;
        free(b);
    }
    free(a);
}

/* ---- errors ---- */

static int
kou_conf_verr(char *err, size_t errlen, const char *file, unsigned line,
              unsigned col, const char *fmt, va_list ap)
{
    int n;

    if (err == NULL || errlen == 0) {
        return KOU_ERROR;
    }
    if (line == 0) {
        n = snprintf(err, errlen, "%s: ", file);
    } else {
        n = snprintf(err, errlen, "%s:%u:%u: ", file, line, col);
    }
    if (n >= 0 && (size_t) n < errlen) {
        vsnprintf(err + n, errlen - (size_t) n, fmt, ap);
    }
    return KOU_ERROR;
}

static int
kou_conf_errat(char *err, size_t errlen, const char *file, unsigned line,
               unsigned col, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static int
kou_conf_errat(char *err, size_t errlen, const char *file, unsigned line,
               unsigned col, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kou_conf_verr(err, errlen, file, line, col, fmt, ap);
    va_end(ap);
    return KOU_ERROR;
}

int
kou_conf_error(const kou_conf_t *node, char *err, size_t errlen,
               const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (node == NULL) {
        if (err != NULL && errlen > 0) {
            vsnprintf(err, errlen, fmt, ap);
        }
    } else {
        kou_conf_verr(err, errlen, node->file != NULL ? node->file : "?",
                      node->line, node->col, fmt, ap);
    }
    va_end(ap);
    return KOU_ERROR;
}

static bool
kou_conf_is_null(const kou_conf_t *n)
{
    return n->type == KOU_NODE_SCALAR && !n->quoted && n->len == 0;
}

/*
 * What a node is, for "expected X, got Y": a short, printable rendering of
 * a scalar (YAML can quote control characters into one), or its kind.
 */
static const char *
kou_conf_show(const kou_conf_t *n, char *buf, size_t size)
{
    size_t i, o, max = 48;

    if (n == NULL) {
        return "nothing";
    }
    if (n->type == KOU_NODE_SEQ) {
        return "a list";
    }
    if (n->type == KOU_NODE_MAP) {
        return "a mapping";
    }
    if (kou_conf_is_null(n)) {
        return "nothing";
    }
    if (size < max + 8) {
        return "a value";
    }
    o = 0;
    buf[o++] = '"';
    for (i = 0; i < n->len && i < max; i++) {
        u_char c = (u_char) n->value[i];
        buf[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char) c;
    }
    if (i < n->len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* "a, b, c" from a NULL-terminated list. */
static void
kou_conf_join_keys(const char *const *keys, char *buf, size_t size)
{
    size_t o = 0;
    int    n;

    buf[0] = '\0';
    for (size_t i = 0; keys[i] != NULL && o < size; i++) {
        n = snprintf(buf + o, size - o, "%s%s", i > 0 ? ", " : "", keys[i]);
        if (n < 0) {
            break;
        }
        o += (size_t) n;
    }
}

static bool
kou_conf_in(const char *const *list, const char *s)
{
    if (list == NULL) {
        return false;
    }
    for (size_t i = 0; list[i] != NULL; i++) {
        if (strcmp(list[i], s) == 0) {
            return true;
        }
    }
    return false;
}

/* ---- scalar syntax ---- */

/* Leading decimal digits of s[0..n) into *v; the count of digits, or -1. */
static ssize_t
kou_parse_digits(const char *s, size_t n, uint64_t *v)
{
    size_t   i;
    uint64_t x = 0;

    for (i = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        unsigned d = (unsigned) (s[i] - '0');
        if (x > (UINT64_MAX - d) / 10) {
            return -1;
        }
        x = x * 10 + d;
    }
    *v = x;
    return (ssize_t) i;
}

static int
kou_parse_int(const char *s, size_t n, int64_t *out)
{
    bool     neg = false;
    uint64_t v;
    ssize_t  d;

    if (n > 0 && s[0] == '-') {
        neg = true;
        s++;
        n--;
    }
    d = kou_parse_digits(s, n, &v);
    if (d <= 0 || (size_t) d != n) {
        return KOU_ERROR;
    }
    if (neg) {
        if (v > (uint64_t) INT64_MAX + 1) {
            return KOU_ERROR;
        }
        *out = v == (uint64_t) INT64_MAX + 1 ? INT64_MIN : -(int64_t) v;
    } else {
        if (v > (uint64_t) INT64_MAX) {
            return KOU_ERROR;
        }
        *out = (int64_t) v;
    }
    return KOU_OK;
}

int
kou_parse_size(const char *s, size_t n, uint64_t *out)
{
    uint64_t v, mult = 1;
    ssize_t  d;

    d = kou_parse_digits(s, n, &v);
    if (d <= 0) {
        return KOU_ERROR;
    }
    if ((size_t) d + 1 == n) {
        switch (s[d]) {
        case 'k': case 'K': mult = 1024; break;
        case 'm': case 'M': mult = 1024 * 1024; break;
        case 'g': case 'G': mult = 1024 * 1024 * 1024; break;
        default: return KOU_ERROR;
        }
    } else if ((size_t) d != n) {
        return KOU_ERROR;
    }
    if (v > UINT64_MAX / mult) {
        return KOU_ERROR;
    }
    *out = v * mult;
    return KOU_OK;
}

int
kou_parse_duration(const char *s, size_t n, uint64_t *out_ms)
{
    uint64_t    v, mult;
    ssize_t     d;
    const char *u;
    size_t      un;

    d = kou_parse_digits(s, n, &v);
    if (d <= 0) {
        return KOU_ERROR;
    }
    u = s + d;
    un = n - (size_t) d;
    if (un == 0 || (un == 1 && u[0] == 's')) {
        mult = 1000;
    } else if (un == 2 && u[0] == 'm' && u[1] == 's') {
        mult = 1;
    } else if (un == 1 && u[0] == 'm') {
        mult = 60 * 1000;
    } else if (un == 1 && u[0] == 'h') {
        mult = 3600 * 1000;
    } else {
        return KOU_ERROR;
    }
    if (v > UINT64_MAX / mult) {
        return KOU_ERROR;
    }
    *out_ms = v * mult;
    return KOU_OK;
}

int
kou_parse_bool(const char *s, size_t n, int *out)
{
    kou_str_t v = { s, n };

    if (kou_str_eq_lit(v, "true") || kou_str_eq_lit(v, "on")
        || kou_str_eq_lit(v, "yes"))
    {
        *out = 1;
        return KOU_OK;
    }
    if (kou_str_eq_lit(v, "false") || kou_str_eq_lit(v, "off")
        || kou_str_eq_lit(v, "no"))
    {
        *out = 0;
        return KOU_OK;
    }
    return KOU_ERROR;
}

/* ---- node accessors ---- */

const kou_conf_t *
kou_conf_get(const kou_conf_t *map, const char *key)
{
    size_t n;

    if (map == NULL || map->type != KOU_NODE_MAP || key == NULL) {
        return NULL;
    }
    n = strlen(key);
    for (size_t i = 0; i < map->n; i++) {
        if (map->keys[i]->len == n && memcmp(map->keys[i]->value, key, n) == 0)
        {
            return map->items[i];
        }
    }
    return NULL;
}

/* The key node of `key` in map (for errors that point at the key). */
static const kou_conf_t *
kou_conf_get_key(const kou_conf_t *map, const char *key)
{
    size_t n = strlen(key);

    for (size_t i = 0; i < map->n; i++) {
        if (map->keys[i]->len == n && memcmp(map->keys[i]->value, key, n) == 0)
        {
            return map->keys[i];
        }
    }
    return NULL;
}

int
kou_conf_str(const kou_conf_t *node, kou_str_t *out)
{
    if (node == NULL || node->type != KOU_NODE_SCALAR) {
        return KOU_ERROR;
    }
    out->p = node->value;
    out->n = node->len;
    return KOU_OK;
}

int
kou_conf_int(const kou_conf_t *node, int64_t *out)
{
    if (node == NULL || node->type != KOU_NODE_SCALAR) {
        return KOU_ERROR;
    }
    return kou_parse_int(node->value, node->len, out);
}

int
kou_conf_bool(const kou_conf_t *node, int *out)
{
    if (node == NULL || node->type != KOU_NODE_SCALAR) {
        return KOU_ERROR;
    }
    return kou_parse_bool(node->value, node->len, out);
}

int
kou_conf_size(const kou_conf_t *node, uint64_t *out)
{
    if (node == NULL || node->type != KOU_NODE_SCALAR) {
        return KOU_ERROR;
    }
    return kou_parse_size(node->value, node->len, out);
}

int
kou_conf_duration(const kou_conf_t *node, uint64_t *out_ms)
{
    if (node == NULL || node->type != KOU_NODE_SCALAR) {
        return KOU_ERROR;
    }
    return kou_parse_duration(node->value, node->len, out_ms);
}

size_t
kou_conf_len(const kou_conf_t *node)
{
    if (node == NULL) {
        return 0;
    }
    return node->type == KOU_NODE_SCALAR ? 1 : node->n;
}

const kou_conf_t *
kou_conf_at(const kou_conf_t *node, size_t i, kou_str_t *key)
{
    if (key != NULL) {
        key->p = "";
        key->n = 0;
    }
    if (node == NULL) {
        return NULL;
    }
    if (node->type == KOU_NODE_SCALAR) {
        return i == 0 ? node : NULL;
    }
    if (i >= node->n) {
        return NULL;
    }
    if (node->type == KOU_NODE_MAP && key != NULL) {
        key->p = node->keys[i]->value;
        key->n = node->keys[i]->len;
    }
    return node->items[i];
}

/* ---- YAML -> node tree ---- */

typedef struct {
    kou_arena_t   *arena;
    const char    *file;      /* the arena's copy, shared by every node */
    const u_char  *text;
    size_t         textlen;
    yaml_parser_t  parser;
    char          *err;
    size_t         errlen;
} kou_conf_parse_t;

static kou_conf_t *
kou_conf_node(kou_arena_t *a, const char *file, unsigned type, unsigned line,
              unsigned col)
{
    kou_conf_t *n = kou_arena_alloc(a, sizeof(kou_conf_t));

    if (n != NULL) {
        n->type = type;
        n->line = line;
        n->col = col;
        n->file = file;
        n->arena = a;
    }
    return n;
}

static int
kou_conf_oom(kou_conf_parse_t *ps)
{
    return kou_conf_errat(ps->err, ps->errlen, ps->file, 0, 0,
                          "out of memory");
}

static int
kou_conf_mark_err(kou_conf_parse_t *ps, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
kou_conf_mark_err(kou_conf_parse_t *ps, yaml_mark_t m, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kou_conf_verr(ps->err, ps->errlen, ps->file, (unsigned) m.line + 1,
                  (unsigned) m.column + 1, fmt, ap);
    va_end(ap);
    return KOU_ERROR;
}

static int
kou_conf_yaml_error(kou_conf_parse_t *ps)
{
    yaml_parser_t *p = &ps->parser;
    const char    *problem = p->problem != NULL ? p->problem : "unknown error";
    unsigned       line = 1, col = 1;

    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return kou_conf_oom(ps);

    case YAML_READER_ERROR:
        /* The reader reports a byte offset, not a mark. */
        for (size_t i = 0; i < p->problem_offset && i < ps->textlen; i++) {
            if (ps->text[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        return kou_conf_errat(ps->err, ps->errlen, ps->file, line, col,
                              "not valid YAML text: %s", problem);

    default:
        if (p->context != NULL) {
            return kou_conf_mark_err(ps, p->problem_mark,
                                     "YAML syntax error: %s (%s at %zu:%zu)",
                                     problem, p->context,
                                     p->context_mark.line + 1,
                                     p->context_mark.column + 1);
        }
        return kou_conf_mark_err(ps, p->problem_mark, "YAML syntax error: %s",
                                 problem);
    }
}

static int
kou_conf_next(kou_conf_parse_t *ps, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&ps->parser, ev)) {
        return kou_conf_yaml_error(ps);
    }
    return KOU_OK;
}

/* Make room for one more entry in arr (and keys, for maps) of n entries. */
static int
kou_conf_grow(kou_arena_t *a, kou_conf_t *node, size_t *cap)
{
    kou_conf_t **items, **keys;
    size_t       ncap;

    if (node->n < *cap) {
        return KOU_OK;
    }
    ncap = *cap == 0 ? 4 : *cap * 2;
    items = kou_arena_alloc(a, ncap * sizeof(kou_conf_t *));
    if (items == NULL) {
        return KOU_ERROR;
    }
    if (node->n > 0) {
        memcpy(items, node->items, node->n * sizeof(kou_conf_t *));
    }
    node->items = items;
    if (node->type == KOU_NODE_MAP) {
        keys = kou_arena_alloc(a, ncap * sizeof(kou_conf_t *));
        if (keys == NULL) {
            return KOU_ERROR;
        }
        if (node->n > 0) {
            memcpy(keys, node->keys, node->n * sizeof(kou_conf_t *));
        }
        node->keys = keys;
    }
    *cap = ncap;
    return KOU_OK;
}

static int kou_conf_build(kou_conf_parse_t *ps, yaml_event_t *ev,
                          unsigned depth, kou_conf_t **out);

static int
kou_conf_build_scalar(kou_conf_parse_t *ps, yaml_event_t *ev,
                      kou_conf_t **out)
{
    kou_conf_t *n;
    const char *v = (const char *) ev->data.scalar.value;
    size_t      len = ev->data.scalar.length;

    if (memchr(v, '\0', len) != NULL) {
        return kou_conf_mark_err(ps, ev->start_mark,
                                 "a NUL character is not allowed in a value");
    }
    n = kou_conf_node(ps->arena, ps->file, KOU_NODE_SCALAR,
                      (unsigned) ev->start_mark.line + 1,
                      (unsigned) ev->start_mark.column + 1);
    if (n == NULL) {
        return kou_conf_oom(ps);
    }
    n->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE
                && ev->data.scalar.style != YAML_ANY_SCALAR_STYLE;

    /* The YAML null spellings become an empty unquoted scalar. */
    if (!n->quoted
        && ((len == 1 && v[0] == '~')
            || (len == 4 && (memcmp(v, "null", 4) == 0
                             || memcmp(v, "Null", 4) == 0
                             || memcmp(v, "NULL", 4) == 0))))
    {
        len = 0;
    }
    n->value = kou_arena_strndup(ps->arena, v, len);
    if (n->value == NULL) {
        return kou_conf_oom(ps);
    }
    n->len = len;
    *out = n;
    return KOU_OK;
}

static int
kou_conf_build_seq(kou_conf_parse_t *ps, kou_conf_t *node, unsigned depth)
{
    yaml_event_t ev;
    kou_conf_t  *item;
    size_t       cap = 0;
    int          rc;

    for ( ;; ) {
        if (kou_conf_next(ps, &ev) != KOU_OK) {
            return KOU_ERROR;
        }
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return KOU_OK;
        }
        rc = kou_conf_build(ps, &ev, depth + 1, &item);
        yaml_event_delete(&ev);
        if (rc != KOU_OK) {
            return KOU_ERROR;
        }
        if (kou_conf_grow(ps->arena, node, &cap) != KOU_OK) {
            return kou_conf_oom(ps);
        }
        node->items[node->n++] = item;
    }
}

static int
kou_conf_build_map(kou_conf_parse_t *ps, kou_conf_t *node, unsigned depth)
{
    yaml_event_t ev;
    kou_conf_t  *key, *value;
    size_t       cap = 0;
    int          rc;

    for ( ;; ) {
        if (kou_conf_next(ps, &ev) != KOU_OK) {
            return KOU_ERROR;
        }
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return KOU_OK;
        }
        if (ev.type == YAML_SEQUENCE_START_EVENT
            || ev.type == YAML_MAPPING_START_EVENT)
        {
            rc = kou_conf_mark_err(ps, ev.start_mark,
                                   "a key must be a plain value, not a %s",
                                   ev.type == YAML_SEQUENCE_START_EVENT
                                   ? "list" : "mapping");
            yaml_event_delete(&ev);
            return rc;
        }
        rc = kou_conf_build(ps, &ev, depth + 1, &key);
        yaml_event_delete(&ev);
        if (rc != KOU_OK) {
            return KOU_ERROR;
        }

        for (size_t i = 0; i < node->n; i++) {
            const kou_conf_t *k = node->keys[i];
            if (k->len == key->len && memcmp(k->value, key->value, k->len) == 0)
            {
                return kou_conf_error(key, ps->err, ps->errlen,
                                      "duplicate key \"%s\" (first at "
                                      "line %u, column %u)",
                                      key->value, k->line, k->col);
            }
        }

        if (kou_conf_next(ps, &ev) != KOU_OK) {
            return KOU_ERROR;
        }
        rc = kou_conf_build(ps, &ev, depth + 1, &value);
        yaml_event_delete(&ev);
        if (rc != KOU_OK) {
            return KOU_ERROR;
        }
        if (kou_conf_grow(ps->arena, node, &cap) != KOU_OK) {
            return kou_conf_oom(ps);
        }
        node->keys[node->n] = key;
        node->items[node->n++] = value;
    }
}

/*
 * Build the node that starts with *ev (the caller deletes *ev). Anchors and
 * aliases are refused: they would let one written position stand for many,
 * and errors must point at the text the user has to change.
 */
static int
kou_conf_build(kou_conf_parse_t *ps, yaml_event_t *ev, unsigned depth,
               kou_conf_t **out)
{
    kou_conf_t    *n;
    const yaml_char_t *anchor;
    unsigned       type;

    if (depth > KOU_CONF_MAX_DEPTH) {
        return kou_conf_mark_err(ps, ev->start_mark,
                                 "nested more than %d levels deep",
                                 KOU_CONF_MAX_DEPTH);
    }

    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        break;
    case YAML_ALIAS_EVENT:
        return kou_conf_mark_err(ps, ev->start_mark,
                                 "aliases (*%s) are not supported: write the "
                                 "value out", ev->data.alias.anchor);
    default:
        return kou_conf_mark_err(ps, ev->start_mark,
                                 "unexpected YAML structure");
    }
    if (anchor != NULL) {
        return kou_conf_mark_err(ps, ev->start_mark,
                                 "anchors (&%s) are not supported: write the "
                                 "value out", anchor);
    }

    if (ev->type == YAML_SCALAR_EVENT) {
        return kou_conf_build_scalar(ps, ev, out);
    }

    type = ev->type == YAML_SEQUENCE_START_EVENT ? KOU_NODE_SEQ : KOU_NODE_MAP;
    n = kou_conf_node(ps->arena, ps->file, type,
                      (unsigned) ev->start_mark.line + 1,
                      (unsigned) ev->start_mark.column + 1);
    if (n == NULL) {
        return kou_conf_oom(ps);
    }
    *out = n;
    if (type == KOU_NODE_SEQ) {
        return kou_conf_build_seq(ps, n, depth);
    }
    return kou_conf_build_map(ps, n, depth);
}

/* The stream: at most one document; *root stays NULL for an empty file. */
static int
kou_conf_build_stream(kou_conf_parse_t *ps, kou_conf_t **root)
{
    yaml_event_t ev;
    bool         seen = false;
    int          rc;

    *root = NULL;
    for ( ;; ) {
        if (kou_conf_next(ps, &ev) != KOU_OK) {
            return KOU_ERROR;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            yaml_event_delete(&ev);
            return KOU_OK;

        case YAML_DOCUMENT_START_EVENT:
            if (seen) {
                rc = kou_conf_mark_err(ps, ev.start_mark,
                                       "a second YAML document: the "
                                       "configuration is one document");
                yaml_event_delete(&ev);
                return rc;
            }
            seen = true;
            yaml_event_delete(&ev);
            if (kou_conf_next(ps, &ev) != KOU_OK) {
                return KOU_ERROR;
            }
            rc = kou_conf_build(ps, &ev, 0, root);
            yaml_event_delete(&ev);
            if (rc != KOU_OK) {
                return KOU_ERROR;
            }
            break;

        default:
            /* stream start, document end */
            yaml_event_delete(&ev);
            break;
        }
    }
}

static int
kou_conf_read_file(const char *file, u_char **out, size_t *outlen, char *err,
                   size_t errlen)
{
    int     fd;
    u_char *buf = NULL, *nbuf;
    size_t  len = 0, cap = 0;
    ssize_t n;

    fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return kou_conf_errat(err, errlen, file, 0, 0, "cannot open: %s",
                              strerror(errno));
    }
    for ( ;; ) {
        if (len == cap) {
            if (cap >= KOU_CONF_MAX_FILE) {
                kou_conf_errat(err, errlen, file, 0, 0,
                               "larger than %u bytes: not a configuration",
                               KOU_CONF_MAX_FILE);
                goto failed;
            }
            cap = cap == 0 ? 8192 : cap * 2;
            nbuf = realloc(buf, cap);
            if (nbuf == NULL) {
                kou_conf_errat(err, errlen, file, 0, 0, "out of memory");
                goto failed;
            }
            buf = nbuf;
        }
        n = read(fd, buf + len, cap - len);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            kou_conf_errat(err, errlen, file, 0, 0, "cannot read: %s",
                           strerror(errno));
            goto failed;
        }
        if (n == 0) {
            break;
        }
        len += (size_t) n;
    }
    close(fd);
    *out = buf;
    *outlen = len;
    return KOU_OK;

failed:
    close(fd);
    free(buf);
    return KOU_ERROR;
}

/* ---- the core's keys ---- */

typedef struct {
    kou_config_t *cf;
    kou_arena_t  *arena;
    char         *err;
    size_t        errlen;
} kou_conf_ctx_t;

static int
kou_conf_ctx_oom(kou_conf_ctx_t *c)
{
    return kou_conf_errat(c->err, c->errlen, c->cf->file, 0, 0,
                          "out of memory");
}

/* "NAME: expected WHAT, got VALUE" at the value. */
static int
kou_conf_bad(kou_conf_ctx_t *c, const kou_conf_t *n, const char *name,
             const char *what)
{
    char buf[64];

    return kou_conf_error(n, c->err, c->errlen, "%s: expected %s, got %s",
                          name, what, kou_conf_show(n, buf, sizeof(buf)));
}

static int
kou_conf_check_keys(kou_conf_ctx_t *c, const kou_conf_t *map,
                    const char *const *keys, const char *where)
{
    char list[512];

    for (size_t i = 0; i < map->n; i++) {
        if (!kou_conf_in(keys, map->keys[i]->value)) {
            kou_conf_join_keys(keys, list, sizeof(list));
            return kou_conf_error(map->keys[i], c->err, c->errlen,
                                  "unknown key \"%s\" %s (expected one of: "
                                  "%s)", map->keys[i]->value, where, list);
        }
    }
    return KOU_OK;
}

/* A relative path joined to the prefix, in the arena. */
static char *
kou_conf_resolve(kou_conf_ctx_t *c, const char *path)
{
    const char *prefix = c->cf->prefix;
    size_t      pn = strlen(prefix), n = strlen(path);
    bool        slash;
    char       *p;

    if (path[0] == '/') {
        return kou_arena_strndup(c->arena, path, n);
    }
    slash = pn > 0 && prefix[pn - 1] != '/';
    p = kou_arena_alloc(c->arena, pn + slash + n + 1);
    if (p != NULL) {
        memcpy(p, prefix, pn);
        if (slash) {
            p[pn] = '/';
        }
        memcpy(p + pn + slash, path, n + 1);
    }
    return p;
}

static int
kou_conf_get_str(kou_conf_ctx_t *c, const kou_conf_t *n, const char *name,
                 const char *what, char **out)
{
    if (n->type != KOU_NODE_SCALAR || n->len == 0) {
        return kou_conf_bad(c, n, name, what);
    }
    *out = n->value;
    return KOU_OK;
}

static int
kou_conf_get_path(kou_conf_ctx_t *c, const kou_conf_t *n, const char *name,
                  char **out)
{
    char *s = NULL;

    if (kou_conf_get_str(c, n, name, "a file path", &s) != KOU_OK) {
        return KOU_ERROR;
    }
    *out = kou_conf_resolve(c, s);
    return *out != NULL ? KOU_OK : kou_conf_ctx_oom(c);
}

static int
kou_conf_get_int(kou_conf_ctx_t *c, const kou_conf_t *n, const char *name,
                 int64_t min, int64_t max, int64_t *out)
{
    char what[96];

    if (kou_conf_int(n, out) != KOU_OK || *out < min || *out > max) {
        snprintf(what, sizeof(what), "an integer from %" PRId64 " to %" PRId64,
                 min, max);
        return kou_conf_bad(c, n, name, what);
    }
    return KOU_OK;
}

static int
kou_conf_get_duration(kou_conf_ctx_t *c, const kou_conf_t *n,
                      const char *name, uint64_t *out)
{
    if (kou_conf_duration(n, out) != KOU_OK || *out == 0
        || *out > KOU_CONF_MAX_TIMEOUT)
    {
        return kou_conf_bad(c, n, name, "a duration from 1ms to 8760h, "
                            "such as 250ms, 10s, 5m or 1h");
    }
    return KOU_OK;
}

static int
kou_conf_get_size(kou_conf_ctx_t *c, const kou_conf_t *n, const char *name,
                  bool nonzero, uint64_t *out)
{
    if (kou_conf_size(n, out) != KOU_OK || (nonzero && *out == 0)) {
        return kou_conf_bad(c, n, name, nonzero
                            ? "a size above 0, such as 512, 16k, 1m or 2g"
                            : "a size such as 512, 16k, 1m or 2g");
    }
    return KOU_OK;
}

static int
kou_conf_workers(kou_conf_ctx_t *c, const kou_conf_t *root)
{
    const kou_conf_t *n = kou_conf_get(root, "workers");
    int64_t           v;
    long              cpus;

    if (n == NULL || (n->type == KOU_NODE_SCALAR
                      && strcmp(n->value, "auto") == 0))
    {
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
        c->cf->workers = (int) kou_min(kou_max(cpus, 1L),
                                       (long) KOU_CONF_MAX_WORKERS);
        return KOU_OK;
    }
    if (kou_conf_int(n, &v) != KOU_OK || v < 1 || v > KOU_CONF_MAX_WORKERS) {
        return kou_conf_bad(c, n, "workers", "an integer from 1 to 1024 or "
                            "\"auto\" (one per CPU)");
    }
    c->cf->workers = (int) v;
    return KOU_OK;
}

static int
kou_conf_files(kou_conf_ctx_t *c, const kou_conf_t *root)
{
    kou_config_t     *cf = c->cf;
    const kou_conf_t *n;

    n = kou_conf_get(root, "pid_file");
    if (n != NULL) {
        if (kou_conf_get_path(c, n, "pid_file", &cf->pid_file) != KOU_OK) {
            return KOU_ERROR;
        }
    } else {
        cf->pid_file = kou_conf_resolve(c, "logs/kourier.pid");
    }

    n = kou_conf_get(root, "error_log");
    if (n != NULL && n->type == KOU_NODE_SCALAR
        && strcmp(n->value, "stderr") == 0)
    {
        cf->error_log = n->value;
    } else if (n != NULL) {
        if (kou_conf_get_path(c, n, "error_log", &cf->error_log) != KOU_OK) {
            return KOU_ERROR;
        }
    } else {
        cf->error_log = kou_conf_resolve(c, "logs/error.log");
    }
    if (cf->pid_file == NULL || cf->error_log == NULL) {
        return kou_conf_ctx_oom(c);
    }

    n = kou_conf_get(root, "user");
    if (n != NULL && kou_conf_get_str(c, n, "user", "a user name",
                                      &cf->user) != KOU_OK)
    {
        return KOU_ERROR;
    }
    n = kou_conf_get(root, "group");
    if (n != NULL && kou_conf_get_str(c, n, "group", "a group name",
                                      &cf->group) != KOU_OK)
    {
        return KOU_ERROR;
    }

    cf->shutdown_timeout = 30000;
    n = kou_conf_get(root, "shutdown_timeout");
    if (n != NULL && kou_conf_get_duration(c, n, "shutdown_timeout",
                                           &cf->shutdown_timeout) != KOU_OK)
    {
        return KOU_ERROR;
    }

    /* untouched pages of an anonymous mapping cost nothing: be generous */
    cf->shared_memory = 32 * 1024 * 1024;
    n = kou_conf_get(root, "shared_memory");
    if (n != NULL) {
        if (kou_conf_get_size(c, n, "shared_memory", false,
                              &cf->shared_memory) != KOU_OK)
        {
            return KOU_ERROR;
        }
        if (cf->shared_memory < 64 * 1024
            || cf->shared_memory > (uint64_t) 1024 * 1024 * 1024)
        {
            return kou_conf_bad(c, n, "shared_memory",
                                "a size from 64k to 1g");
        }
    }

    /*
     * A ticket key encrypts for one period and decrypts for one more, so a
     * ticket lives one to two periods; more than 7 days would exceed what
     * RFC 8446 allows a ticket lifetime to be.
     */
    cf->tls_ticket_rotation = 12 * 3600 * 1000;
    n = kou_conf_get(root, "tls_ticket_rotation");
    if (n != NULL) {
        if (kou_conf_duration(n, &cf->tls_ticket_rotation) != KOU_OK
            || cf->tls_ticket_rotation < 1000
            || cf->tls_ticket_rotation > 7ull * 24 * 3600 * 1000)
        {
            return kou_conf_bad(c, n, "tls_ticket_rotation",
                                "a duration from 1s to 168h, such as 12h");
        }
    }
    return KOU_OK;
}

typedef enum {
    KOU_LIMIT_DURATION,
    KOU_LIMIT_SIZE,     /* may be 0 */
    KOU_LIMIT_SIZE1,    /* at least 1 byte */
    KOU_LIMIT_COUNT     /* integer >= 1 */
} kou_limit_kind_e;

static const struct {
    const char *key;
    unsigned    kind;       /* kou_limit_kind_e */
    size_t      off;
    uint64_t    def;
    int64_t     max;        /* KOU_LIMIT_COUNT only */
} kou_conf_limits[] = {
#define KOU_LIM(k, kind, def, max) \
    { #k, kind, offsetof(kou_limits_t, k), def, max }
    KOU_LIM(header_timeout, KOU_LIMIT_DURATION, 10000, 0),
    KOU_LIM(body_timeout, KOU_LIMIT_DURATION, 30000, 0),
    KOU_LIM(idle_timeout, KOU_LIMIT_DURATION, 60000, 0),
    KOU_LIM(send_timeout, KOU_LIMIT_DURATION, 30000, 0),
    KOU_LIM(max_request_line, KOU_LIMIT_SIZE1, 8 * 1024, 0),
    KOU_LIM(max_header_block, KOU_LIMIT_SIZE1, 16 * 1024, 0),
    /* the parser keeps an array of this many fields per connection */
    KOU_LIM(max_headers, KOU_LIMIT_COUNT, 100, 65535),
    KOU_LIM(max_body, KOU_LIMIT_SIZE, 1024 * 1024, 0),
    KOU_LIM(max_connections, KOU_LIMIT_COUNT, 10000, 1000000000),
    KOU_LIM(tls_handshake_timeout, KOU_LIMIT_DURATION, 10000, 0),
#undef KOU_LIM
};

static int
kou_conf_limits_load(kou_conf_ctx_t *c, const kou_conf_t *root)
{
    const kou_conf_t *map, *n;
    const char       *keys[kou_nelem(kou_conf_limits) + 1];
    uint64_t         *v;
    int64_t           iv;
    int               rc;

    for (size_t i = 0; i < kou_nelem(kou_conf_limits); i++) {
        v = (uint64_t *) ((char *) &c->cf->limits + kou_conf_limits[i].off);
        *v = kou_conf_limits[i].def;
        keys[i] = kou_conf_limits[i].key;
    }
    keys[kou_nelem(kou_conf_limits)] = NULL;

    map = kou_conf_get(root, "limits");
    if (map == NULL) {
        return KOU_OK;
    }
    if (map->type != KOU_NODE_MAP) {
        return kou_conf_bad(c, map, "limits", "a mapping of limits");
    }
    if (kou_conf_check_keys(c, map, keys, "in limits") != KOU_OK) {
        return KOU_ERROR;
    }

    for (size_t i = 0; i < kou_nelem(kou_conf_limits); i++) {
        n = kou_conf_get(map, kou_conf_limits[i].key);
        if (n == NULL) {
            continue;
        }
        v = (uint64_t *) ((char *) &c->cf->limits + kou_conf_limits[i].off);
        switch (kou_conf_limits[i].kind) {
        case KOU_LIMIT_DURATION:
            rc = kou_conf_get_duration(c, n, kou_conf_limits[i].key, v);
            break;
        case KOU_LIMIT_SIZE:
        case KOU_LIMIT_SIZE1:
            rc = kou_conf_get_size(c, n, kou_conf_limits[i].key,
                                   kou_conf_limits[i].kind == KOU_LIMIT_SIZE1,
                                   v);
            break;
        default:
            rc = kou_conf_get_int(c, n, kou_conf_limits[i].key, 1,
                                  kou_conf_limits[i].max, &iv);
            if (rc == KOU_OK) {
                *v = (uint64_t) iv;
            }
            break;
        }
        if (rc != KOU_OK) {
            return KOU_ERROR;
        }
    }
    return KOU_OK;
}

#define KOU_CONF_ADDR_FORMS \
    "an address: IPv4:PORT, [IPv6]:PORT, *:PORT or unix:/PATH"

static int
kou_conf_addr(kou_conf_ctx_t *c, const kou_conf_t *n, kou_listen_conf_t *lc)
{
    const char         *s = n->value, *host, *port, *end;
    char                buf[INET6_ADDRSTRLEN + 1], *path;
    size_t              hn;
    uint64_t            pv;
    ssize_t             d;
    struct sockaddr_in  *sin;
    struct sockaddr_in6 *sin6;
    struct sockaddr_un  *sun;

    if (n->type != KOU_NODE_SCALAR || n->len == 0) {
        return kou_conf_bad(c, n, "listen", KOU_CONF_ADDR_FORMS);
    }

    if (strncmp(s, "unix:", 5) == 0) {
        if (s[5] == '\0') {
            return kou_conf_bad(c, n, "listen", "a socket path after unix:");
        }
        path = kou_conf_resolve(c, s + 5);
        if (path == NULL) {
            return kou_conf_ctx_oom(c);
        }
        sun = (struct sockaddr_un *) &lc->addr;
        if (strlen(path) >= sizeof(sun->sun_path)) {
            return kou_conf_error(n, c->err, c->errlen,
                                  "listen: unix socket path \"%s\" is too "
                                  "long (%zu bytes, at most %zu)", path,
                                  strlen(path), sizeof(sun->sun_path) - 1);
        }
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, path, strlen(path) + 1);
        lc->addrlen = (socklen_t) (offsetof(struct sockaddr_un, sun_path)
                                   + strlen(path) + 1);
        return KOU_OK;
    }

    if (s[0] == '[') {
        host = s + 1;
        end = strchr(host, ']');
        if (end == NULL || end[1] != ':') {
            return kou_conf_bad(c, n, "listen", KOU_CONF_ADDR_FORMS);
        }
        port = end + 2;
    } else {
        host = s;
        end = strrchr(s, ':');
        if (end == NULL) {
            return kou_conf_error(n, c->err, c->errlen,
                                  "listen: \"%s\" has no port: expected %s",
                                  s, KOU_CONF_ADDR_FORMS);
        }
        port = end + 1;
    }

    d = kou_parse_digits(port, strlen(port), &pv);
    if (d <= 0 || (size_t) d != strlen(port) || d > 5 || pv > 65535) {
        return kou_conf_error(n, c->err, c->errlen,
                              "listen: bad port \"%s\" in \"%s\" (expected "
                              "0 to 65535)", port, s);
    }

    hn = (size_t) (end - host);
    if (hn >= sizeof(buf)) {
        goto bad_host;
    }
    memcpy(buf, host, hn);
    buf[hn] = '\0';

    if (s[0] == '[') {
        sin6 = (struct sockaddr_in6 *) &lc->addr;
        if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1) {
            goto bad_host;
        }
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t) pv);
        lc->addrlen = sizeof(struct sockaddr_in6);
        return KOU_OK;
    }

    sin = (struct sockaddr_in *) &lc->addr;
    if (strcmp(buf, "*") == 0) {
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, buf, &sin->sin_addr) != 1) {
        goto bad_host;
    }
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t) pv);
    lc->addrlen = sizeof(struct sockaddr_in);
    return KOU_OK;

bad_host:
    return kou_conf_error(n, c->err, c->errlen,
                          "listen: \"%.*s\" in \"%s\" is not an IP address "
                          "(expected %s; %s)",
                          (int) kou_min(hn, 64), host, s,
                          KOU_CONF_ADDR_FORMS,
                          s[0] != '[' && memchr(host, ':', hn) != NULL
                          ? "an IPv6 address goes in brackets"
                          : "host names are not resolved");
}

/* The node holding the address of a listen entry (scalar or map form). */
static const kou_conf_t *
kou_conf_listen_addr_node(const kou_conf_t *entry)
{
    return entry->type == KOU_NODE_MAP ? kou_conf_get(entry, "address")
                                       : entry;
}

static bool
kou_conf_same_addr(const kou_listen_conf_t *a, const kou_listen_conf_t *b)
{
    const struct sockaddr_in  *a4, *b4;
    const struct sockaddr_in6 *a6, *b6;

    if (a->addr.ss_family != b->addr.ss_family) {
        return false;
    }
    switch (a->addr.ss_family) {
    case AF_INET:
        a4 = (const struct sockaddr_in *) &a->addr;
        b4 = (const struct sockaddr_in *) &b->addr;
        /* port 0 asks for a fresh ephemeral port each time */
        return a4->sin_port != 0 && a4->sin_port == b4->sin_port
               && a4->sin_addr.s_addr == b4->sin_addr.s_addr;
    case AF_INET6:
        a6 = (const struct sockaddr_in6 *) &a->addr;
        b6 = (const struct sockaddr_in6 *) &b->addr;
        return a6->sin6_port != 0 && a6->sin6_port == b6->sin6_port
               && memcmp(&a6->sin6_addr, &b6->sin6_addr,
                         sizeof(a6->sin6_addr)) == 0;
    default:
        return strcmp(((const struct sockaddr_un *) &a->addr)->sun_path,
                      ((const struct sockaddr_un *) &b->addr)->sun_path) == 0;
    }
}

/* ---- tls: blocks of listen entries ---- */

static bool kou_conf_host_ok(const char *s, size_t n);

static const char *const kou_conf_tls_keys[] = {
    "certificate", "key", "certificates", "protocols", "ciphers",
    "ciphersuites", "groups", NULL
};

static const char *const kou_conf_tls_cert_keys[] = {
    "server_names", "certificate", "key", NULL
};

/*
 * An OpenSSL list setting: one string ("A:B") or a list of strings joined
 * with ':'. Whether OpenSSL knows the names is checked when it loads them.
 */
static int
kou_conf_tls_list(kou_conf_ctx_t *c, const kou_conf_t *n, const char *name,
                  char **out)
{
    const kou_conf_t *item;
    size_t            len = 0, cnt = kou_conf_len(n);
    char             *p;

    if (n->type == KOU_NODE_MAP || kou_conf_is_null(n) || cnt == 0) {
        return kou_conf_bad(c, n, name, "a colon-separated string or a list "
                            "of names");
    }
    for (size_t i = 0; i < cnt; i++) {
        item = kou_conf_at(n, i, NULL);
        if (item->type != KOU_NODE_SCALAR || item->len == 0) {
            return kou_conf_bad(c, item, name, "a name");
        }
        len += item->len + 1;
    }
    p = kou_arena_alloc(c->arena, len);
    if (p == NULL) {
        return kou_conf_ctx_oom(c);
    }
    *out = p;
    for (size_t i = 0; i < cnt; i++) {
        item = kou_conf_at(n, i, NULL);
        if (i > 0) {
            *p++ = ':';
        }
        memcpy(p, item->value, item->len);
        p += item->len;
    }
    *p = '\0';
    return KOU_OK;
}

static int
kou_conf_tls_protocols(kou_conf_ctx_t *c, const kou_conf_t *n,
                       unsigned *out)
{
    const kou_conf_t *item;
    size_t            cnt = kou_conf_len(n);
    char              buf[64];
    unsigned          bit;

    if (n->type == KOU_NODE_MAP || kou_conf_is_null(n) || cnt == 0) {
        return kou_conf_bad(c, n, "protocols", "a list of TLSv1.2 and/or "
                            "TLSv1.3");
    }
    *out = 0;
    for (size_t i = 0; i < cnt; i++) {
        item = kou_conf_at(n, i, NULL);
        if (item->type != KOU_NODE_SCALAR) {
            return kou_conf_bad(c, item, "protocols", "TLSv1.2 or TLSv1.3");
        }
        if (strcasecmp(item->value, "TLSv1.2") == 0) {
            bit = KOU_TLS_V12;
        } else if (strcasecmp(item->value, "TLSv1.3") == 0) {
            bit = KOU_TLS_V13;
        } else if (strcasecmp(item->value, "TLSv1") == 0
                   || strcasecmp(item->value, "TLSv1.0") == 0
                   || strcasecmp(item->value, "TLSv1.1") == 0
                   || strncasecmp(item->value, "SSL", 3) == 0)
        {
            return kou_conf_error(item, c->err, c->errlen,
                                  "protocols: %s is not offered: versions "
                                  "before TLS 1.2 are obsolete (RFC 8996); "
                                  "expected TLSv1.2 or TLSv1.3",
                                  kou_conf_show(item, buf, sizeof(buf)));
        } else {
            return kou_conf_bad(c, item, "protocols", "TLSv1.2 or TLSv1.3");
        }
        if (*out & bit) {
            return kou_conf_error(item, c->err, c->errlen,
                                  "protocols: %s is listed twice",
                                  item->value);
        }
        *out |= bit;
    }
    return KOU_OK;
}

/*
 * server_names of one certificates: entry. A name may appear under one
 * certificate only: with two, which one a client gets would depend on the
 * order of the list, which nobody reading it would guess.
 */
static int
kou_conf_tls_names(kou_conf_ctx_t *c, const kou_conf_t *n,
                   kou_tls_conf_t *tc, kou_tls_cert_conf_t *cc)
{
    const kou_conf_t *item;
    size_t            cnt = kou_conf_len(n);
    char              buf[64];

    if (n->type == KOU_NODE_MAP || kou_conf_is_null(n) || cnt == 0) {
        return kou_conf_bad(c, n, "server_names", "a list of host names");
    }
    cc->names = kou_arena_alloc(c->arena, cnt * sizeof(kou_str_t));
    if (cc->names == NULL) {
        return kou_conf_ctx_oom(c);
    }
    for (size_t i = 0; i < cnt; i++) {
        char *lc;

        item = kou_conf_at(n, i, NULL);
        if (item->type != KOU_NODE_SCALAR || item->len == 0
            || item->value[0] == '['
            || !kou_conf_host_ok(item->value, item->len))
        {
            return kou_conf_error(item, c->err, c->errlen,
                                  "server_names: %s is not a host name "
                                  "(expected a name such as example.com or "
                                  "*.example.org)",
                                  kou_conf_show(item, buf, sizeof(buf)));
        }
        lc = kou_arena_strndup(c->arena, item->value, item->len);
        if (lc == NULL) {
            return kou_conf_ctx_oom(c);
        }
        for (size_t k = 0; k < item->len; k++) {
            lc[k] = (char) tolower((u_char) lc[k]);
        }
        for (size_t e = 0; e < tc->ncerts; e++) {
            for (size_t k = 0; k < tc->certs[e].nnames; k++) {
                kou_str_t s = { lc, item->len };
                if (kou_str_eq(tc->certs[e].names[k], s)) {
                    return kou_conf_error(item, c->err, c->errlen,
                                          "server_names: \"%s\" is already "
                                          "served by another certificate "
                                          "of this listener", lc);
                }
            }
        }
        for (size_t k = 0; k < cc->nnames; k++) {
            kou_str_t s = { lc, item->len };
            if (kou_str_eq(cc->names[k], s)) {
                return kou_conf_error(item, c->err, c->errlen,
                                      "server_names: \"%s\" is listed twice",
                                      lc);
            }
        }
        cc->names[cc->nnames].p = lc;
        cc->names[cc->nnames].n = item->len;
        cc->nnames++;
    }
    return KOU_OK;
}

/* certificate + key of `map` (the tls: map or a certificates: entry). */
static int
kou_conf_tls_pair(kou_conf_ctx_t *c, const kou_conf_t *map,
                  kou_tls_cert_conf_t *cc)
{
    const kou_conf_t *cert = kou_conf_get(map, "certificate");
    const kou_conf_t *key = kou_conf_get(map, "key");

    if (cert == NULL || key == NULL) {
        return kou_conf_error(cert != NULL ? kou_conf_get_key(map,
                                                              "certificate")
                              : key != NULL ? kou_conf_get_key(map, "key")
                              : map, c->err, c->errlen,
                              "tls: %s (a PEM file)",
                              cert != NULL ? "\"certificate\" needs \"key\""
                              : key != NULL ? "\"key\" needs \"certificate\""
                              : "expected \"certificate\" and \"key\"");
    }
    if (kou_conf_get_path(c, cert, "certificate", &cc->certificate)
            != KOU_OK
        || kou_conf_get_path(c, key, "key", &cc->key) != KOU_OK)
    {
        return KOU_ERROR;
    }
    cc->cert_node = cert;
    cc->key_node = key;
    return KOU_OK;
}

static int
kou_conf_tls(kou_conf_ctx_t *c, const kou_conf_t *map, kou_listen_conf_t *lc)
{
    const kou_conf_t *list, *n, *entry;
    kou_tls_conf_t   *tc;
    size_t            cnt = 0;
    bool              top;

    if (map->type != KOU_NODE_MAP) {
        return kou_conf_bad(c, map, "tls", "a mapping of TLS settings");
    }
    if (kou_conf_check_keys(c, map, kou_conf_tls_keys, "in tls")
        != KOU_OK)
    {
        return KOU_ERROR;
    }
    tc = kou_arena_alloc(c->arena, sizeof(kou_tls_conf_t));
    if (tc == NULL) {
        return kou_conf_ctx_oom(c);
    }
    tc->node = map;
    tc->protocols = KOU_TLS_V12 | KOU_TLS_V13;

    top = kou_conf_get(map, "certificate") != NULL
          || kou_conf_get(map, "key") != NULL;
    list = kou_conf_get(map, "certificates");
    if (list != NULL) {
        if (list->type != KOU_NODE_SEQ || list->n == 0) {
            return kou_conf_bad(c, list, "certificates", "a list of "
                                "{server_names, certificate, key} entries");
        }
        cnt = list->n;
    }
    if (!top && list == NULL) {
        return kou_conf_error(map, c->err, c->errlen,
                              "tls: expected \"certificate\" and \"key\" "
                              "(PEM files), or \"certificates\" (a list of "
                              "{server_names, certificate, key})");
    }
    tc->certs = kou_arena_alloc(c->arena, (cnt + 1)
                                          * sizeof(kou_tls_cert_conf_t));
    if (tc->certs == NULL) {
        return kou_conf_ctx_oom(c);
    }
    if (top) {
        if (kou_conf_tls_pair(c, map, &tc->certs[0]) != KOU_OK) {
            return KOU_ERROR;
        }
        tc->ncerts = 1;
    }
    for (size_t i = 0; i < cnt; i++) {
        kou_tls_cert_conf_t *cc = &tc->certs[tc->ncerts];

        entry = list->items[i];
        if (entry->type != KOU_NODE_MAP) {
            return kou_conf_bad(c, entry, "certificates", "a mapping with "
                                "server_names, certificate and key");
        }
        if (kou_conf_check_keys(c, entry, kou_conf_tls_cert_keys,
                                "in a certificates entry") != KOU_OK
            || kou_conf_tls_pair(c, entry, cc) != KOU_OK)
        {
            return KOU_ERROR;
        }
        n = kou_conf_get(entry, "server_names");
        if (n == NULL) {
            return kou_conf_error(entry, c->err, c->errlen,
                                  "certificates entry needs \"server_names\" "
                                  "(the host names it serves)");
        }
        if (kou_conf_tls_names(c, n, tc, cc) != KOU_OK) {
            return KOU_ERROR;
        }
        tc->ncerts++;
    }

    n = kou_conf_get(map, "protocols");
    if (n != NULL && kou_conf_tls_protocols(c, n, &tc->protocols) != KOU_OK) {
        return KOU_ERROR;
    }
    n = kou_conf_get(map, "ciphers");
    if (n != NULL) {
        if (kou_conf_tls_list(c, n, "ciphers", &tc->ciphers) != KOU_OK) {
            return KOU_ERROR;
        }
        tc->ciphers_node = n;
    }
    n = kou_conf_get(map, "ciphersuites");
    if (n != NULL) {
        if (kou_conf_tls_list(c, n, "ciphersuites", &tc->ciphersuites)
            != KOU_OK)
        {
            return KOU_ERROR;
        }
        tc->ciphersuites_node = n;
    }
    n = kou_conf_get(map, "groups");
    if (n != NULL) {
        if (kou_conf_tls_list(c, n, "groups", &tc->groups) != KOU_OK) {
            return KOU_ERROR;
        }
        tc->groups_node = n;
    }
    lc->tls = map;
    lc->tls_conf = tc;
    return KOU_OK;
}

static int
kou_conf_listen_entry(kou_conf_ctx_t *c, const kou_conf_t *entry,
                      kou_listen_conf_t *lc)
{
    const kou_conf_t *addr, *n;
    int64_t           v;

    lc->node = entry;
    lc->backlog = 511;
    addr = entry;

    if (entry->type == KOU_NODE_SEQ) {
        return kou_conf_bad(c, entry, "listen", KOU_CONF_ADDR_FORMS
                            ", or a mapping with \"address\"");
    }
    if (entry->type == KOU_NODE_MAP) {
        if (kou_conf_check_keys(c, entry, kou_conf_listen_keys,
                                "in a listen entry") != KOU_OK)
        {
            return KOU_ERROR;
        }
        addr = kou_conf_get(entry, "address");
        if (addr == NULL) {
            return kou_conf_error(entry, c->err, c->errlen,
                                  "listen entry needs \"address\" (%s)",
                                  KOU_CONF_ADDR_FORMS);
        }
        n = kou_conf_get(entry, "backlog");
        if (n != NULL) {
            if (kou_conf_get_int(c, n, "backlog", 1, 65535, &v) != KOU_OK) {
                return KOU_ERROR;
            }
            lc->backlog = (int) v;
        }
        n = kou_conf_get(entry, "tls");
        if (n != NULL && kou_conf_tls(c, n, lc) != KOU_OK) {
            return KOU_ERROR;
        }
    }
    if (kou_conf_addr(c, addr, lc) != KOU_OK) {
        return KOU_ERROR;
    }
    lc->text = addr->value;
    return KOU_OK;
}

static int
kou_conf_listen_load(kou_conf_ctx_t *c, const kou_conf_t *root)
{
    kou_config_t     *cf = c->cf;
    const kou_conf_t *list, *a, *b;
    size_t            n;

    list = kou_conf_get(root, "listen");
    if (list == NULL) {
        return kou_conf_error(root, c->err, c->errlen,
                              "missing required key \"listen\" (a list of "
                              "addresses such as 127.0.0.1:8080)");
    }
    if (list->type == KOU_NODE_MAP || kou_conf_is_null(list)) {
        return kou_conf_bad(c, list, "listen", "a list of addresses");
    }
    n = kou_conf_len(list);
    if (n == 0) {
        return kou_conf_error(list, c->err, c->errlen,
                              "listen: expected at least one address");
    }
    cf->listen = kou_arena_alloc(c->arena, n * sizeof(kou_listen_conf_t));
    if (cf->listen == NULL) {
        return kou_conf_ctx_oom(c);
    }
    for (size_t i = 0; i < n; i++) {
        if (kou_conf_listen_entry(c, kou_conf_at(list, i, NULL),
                                  &cf->listen[i]) != KOU_OK)
        {
            return KOU_ERROR;
        }
        for (size_t j = 0; j < i; j++) {
            if (kou_conf_same_addr(&cf->listen[j], &cf->listen[i])) {
                a = kou_conf_listen_addr_node(cf->listen[j].node);
                b = kou_conf_listen_addr_node(cf->listen[i].node);
                return kou_conf_error(b, c->err, c->errlen,
                                      "listen: duplicate address \"%s\" "
                                      "(already at line %u, column %u as "
                                      "\"%s\")", b->value, a->line, a->col,
                                      a->value);
            }
        }
        cf->nlisten++;
    }
    return KOU_OK;
}

static bool
kou_conf_module_name_ok(const char *s, size_t n)
{
    if (n == 0) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')
              || s[i] == '_'))
        {
            return false;
        }
    }
    return true;
}

/* An explicit path must name a readable regular file. */
static int
kou_conf_module_file(kou_conf_ctx_t *c, const kou_conf_t *at,
                     const char *name, const char *path)
{
    struct stat st;

    if (access(path, R_OK) != 0) {
        return kou_conf_error(at, c->err, c->errlen,
                              "module \"%s\": cannot read %s: %s", name, path,
                              strerror(errno));
    }
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        return kou_conf_error(at, c->err, c->errlen,
                              "module \"%s\": %s is not a regular file", name,
                              path);
    }
    return KOU_OK;
}

static int
kou_conf_module_search(kou_conf_ctx_t *c, const kou_conf_t *key,
                       const char *const *dirs, kou_module_conf_t *mc)
{
    char   list[512];
    size_t dn, nn = strlen(mc->name), o = 0;
    char  *p;
    int    n;

    if (dirs == NULL || dirs[0] == NULL) {
        return kou_conf_error(key, c->err, c->errlen,
                              "module \"%s\": no \"path\" given and no "
                              "modules directory to look for %s.so in",
                              mc->name, mc->name);
    }
    for (size_t i = 0; dirs[i] != NULL; i++) {
        dn = strlen(dirs[i]);
        while (dn > 1 && dirs[i][dn - 1] == '/') {
            dn--;
        }
        p = kou_arena_alloc(c->arena, dn + 1 + nn + sizeof(".so"));
        if (p == NULL) {
            return kou_conf_ctx_oom(c);
        }
        sprintf(p, "%.*s/%s.so", (int) dn, dirs[i], mc->name);
        if (access(p, R_OK) == 0) {
            mc->path = p;
            return KOU_OK;
        }
    }

    list[0] = '\0';
    for (size_t i = 0; dirs[i] != NULL && o < sizeof(list); i++) {
        n = snprintf(list + o, sizeof(list) - o, "%s%s", i > 0 ? ", " : "",
                     dirs[i]);
        if (n < 0) {
            break;
        }
        o += (size_t) n;
    }
    return kou_conf_error(key, c->err, c->errlen,
                          "module \"%s\": %s.so not found in %s (give its "
                          "\"path\")", mc->name, mc->name, list);
}

static int
kou_conf_modules_load(kou_conf_ctx_t *c, const kou_conf_t *root,
                      const char *const *dirs)
{
    kou_config_t      *cf = c->cf;
    const kou_conf_t  *map, *key, *pn;
    kou_conf_t        *val;
    kou_module_conf_t *mc;
    char              *path;

    map = kou_conf_get(root, "modules");
    if (map == NULL) {
        return KOU_OK;
    }
    if (map->type != KOU_NODE_MAP) {
        return kou_conf_bad(c, map, "modules",
                            "a mapping of module names to their settings");
    }
    if (map->n > 0) {
        cf->modules = kou_arena_alloc(c->arena,
                                      map->n * sizeof(kou_module_conf_t));
        if (cf->modules == NULL) {
            return kou_conf_ctx_oom(c);
        }
    }

    for (size_t i = 0; i < map->n; i++) {
        key = map->keys[i];
        val = map->items[i];
        mc = &cf->modules[i];

        if (!kou_conf_module_name_ok(key->value, key->len)) {
            return kou_conf_error(key, c->err, c->errlen,
                                  "module name \"%s\" is not valid (expected "
                                  "lower-case letters, digits and _)",
                                  key->value);
        }
        mc->name = key->value;

        if (kou_conf_is_null(val)) {
            /* "name:" alone declares a module with no settings */
            val = kou_conf_node(c->arena, val->file, KOU_NODE_MAP, val->line,
                                val->col);
            if (val == NULL) {
                return kou_conf_ctx_oom(c);
            }
            map->items[i] = val;
        } else if (val->type != KOU_NODE_MAP) {
            char what[128];
            snprintf(what, sizeof(what), "a mapping of its settings (or "
                     "nothing, or {})");
            return kou_conf_error(val, c->err, c->errlen,
                                  "module \"%s\": expected %s", mc->name,
                                  what);
        }
        mc->node = val;

        pn = kou_conf_get(val, "path");
        if (pn != NULL) {
            if (kou_conf_get_path(c, pn, "path", &path) != KOU_OK
                || kou_conf_module_file(c, pn, mc->name, path) != KOU_OK)
            {
                return KOU_ERROR;
            }
            mc->path = path;
        } else if (kou_conf_module_search(c, key, dirs, mc) != KOU_OK) {
            return KOU_ERROR;
        }
        cf->nmodules++;
    }
    return KOU_OK;
}

/* Index of the declared module named by scalar n, or an error. */
static int
kou_conf_module_ref(kou_conf_ctx_t *c, const kou_conf_t *n, const char *name,
                    size_t *index)
{
    kou_config_t *cf = c->cf;
    char          list[512], buf[64];
    size_t        o = 0;
    int           k;

    if (n->type != KOU_NODE_SCALAR || n->len == 0) {
        return kou_conf_bad(c, n, name, "a module name");
    }
    for (size_t i = 0; i < cf->nmodules; i++) {
        if (strcmp(cf->modules[i].name, n->value) == 0) {
            *index = i;
            return KOU_OK;
        }
    }

    list[0] = '\0';
    for (size_t i = 0; i < cf->nmodules && o < sizeof(list); i++) {
        k = snprintf(list + o, sizeof(list) - o, "%s%s", i > 0 ? ", " : "",
                     cf->modules[i].name);
        if (k < 0) {
            break;
        }
        o += (size_t) k;
    }
    return kou_conf_error(n, c->err, c->errlen,
                          "%s: %s is not a declared module (declare it under "
                          "\"modules\"; declared: %s)", name,
                          kou_conf_show(n, buf, sizeof(buf)),
                          cf->nmodules > 0 ? list : "none");
}

static int
kou_conf_hooks_load(kou_conf_ctx_t *c, const kou_conf_t *root)
{
    kou_config_t     *cf = c->cf;
    const kou_conf_t *map, *key, *list, *item;
    char              names[128], name[64];
    unsigned          ph;
    size_t            n, idx;

    map = kou_conf_get(root, "hooks");
    if (map == NULL) {
        return KOU_OK;
    }
    if (map->type != KOU_NODE_MAP) {
        return kou_conf_bad(c, map, "hooks",
                            "a mapping of phases (request, response, log) "
                            "to lists of modules");
    }
    for (size_t i = 0; i < map->n; i++) {
        key = map->keys[i];
        list = map->items[i];
        for (ph = 0; ph < KOU_PHASE_COUNT; ph++) {
            if (strcmp(key->value, kou_conf_phase_names[ph]) == 0) {
                break;
            }
        }
        if (ph == KOU_PHASE_COUNT) {
            kou_conf_join_keys(kou_conf_phase_names, names, sizeof(names));
            return kou_conf_error(key, c->err, c->errlen,
                                  "unknown hook phase \"%s\" (expected one "
                                  "of: %s)", key->value, names);
        }
        snprintf(name, sizeof(name), "hooks.%s", key->value);
        if (list->type == KOU_NODE_MAP || kou_conf_is_null(list)) {
            return kou_conf_bad(c, list, name, "a list of module names");
        }
        n = kou_conf_len(list);
        if (n > 0) {
            cf->hooks[ph] = kou_arena_alloc(c->arena, n * sizeof(size_t));
            if (cf->hooks[ph] == NULL) {
                return kou_conf_ctx_oom(c);
            }
        }
        for (size_t j = 0; j < n; j++) {
            item = kou_conf_at(list, j, NULL);
            if (kou_conf_module_ref(c, item, name, &idx) != KOU_OK) {
                return KOU_ERROR;
            }
            for (size_t k = 0; k < j; k++) {
                if (cf->hooks[ph][k] == idx) {
                    return kou_conf_error(item, c->err, c->errlen,
                                          "%s: module \"%s\" is listed "
                                          "twice", name, item->value);
                }
            }
            cf->hooks[ph][j] = idx;
            cf->nhooks[ph]++;
        }
    }
    return KOU_OK;
}

static bool
kou_conf_tchar(u_char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
        || (ch >= '0' && ch <= '9'))
    {
        return true;
    }
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static const char *const kou_conf_methods[KOU_METHOD_COUNT] = {
    [KOU_METHOD_GET] = "GET",         [KOU_METHOD_HEAD] = "HEAD",
    [KOU_METHOD_POST] = "POST",       [KOU_METHOD_PUT] = "PUT",
    [KOU_METHOD_DELETE] = "DELETE",   [KOU_METHOD_CONNECT] = "CONNECT",
    [KOU_METHOD_OPTIONS] = "OPTIONS", [KOU_METHOD_TRACE] = "TRACE",
    [KOU_METHOD_PATCH] = "PATCH",
};

/*
 * Methods are case-sensitive (RFC 9110 §9.1): "get" is a method of its own,
 * which the parser reports as unknown and the router matches by name.
 */
static int
kou_conf_route_methods(kou_conf_ctx_t *c, const kou_conf_t *list,
                       kou_route_t *rt)
{
    const kou_conf_t *item;
    size_t            n;
    unsigned          m;
    bool              dup;

    if (list->type == KOU_NODE_MAP || kou_conf_is_null(list)) {
        return kou_conf_bad(c, list, "methods", "a list of methods such as "
                            "[GET, HEAD]");
    }
    n = kou_conf_len(list);
    if (n == 0) {
        return kou_conf_error(list, c->err, c->errlen,
                              "methods: expected at least one method (leave "
                              "\"methods\" out to allow any)");
    }
    rt->method_names = kou_arena_alloc(c->arena, n * sizeof(kou_str_t));
    if (rt->method_names == NULL) {
        return kou_conf_ctx_oom(c);
    }

    for (size_t i = 0; i < n; i++) {
        item = kou_conf_at(list, i, NULL);
        if (item->type != KOU_NODE_SCALAR || item->len == 0) {
            return kou_conf_bad(c, item, "methods", "a method such as GET");
        }
        for (size_t j = 0; j < item->len; j++) {
            if (!kou_conf_tchar((u_char) item->value[j])) {
                char buf[64];
                return kou_conf_error(item, c->err, c->errlen,
                                      "methods: %s is not a valid method "
                                      "name (expected a token such as GET)",
                                      kou_conf_show(item, buf, sizeof(buf)));
            }
        }
        for (m = 1; m < KOU_METHOD_COUNT; m++) {
            if (strcmp(item->value, kou_conf_methods[m]) == 0) {
                break;
            }
        }
        if (m < KOU_METHOD_COUNT) {
            rt->methods |= 1u << m;
            continue;
        }
        dup = false;
        for (size_t j = 0; j < rt->nmethod_names; j++) {
            if (strcmp(rt->method_names[j].p, item->value) == 0) {
                dup = true;
            }
        }
        if (!dup) {
            rt->method_names[rt->nmethod_names].p = item->value;
            rt->method_names[rt->nmethod_names].n = item->len;
            rt->nmethod_names++;
        }
    }
    if (rt->nmethod_names == 0) {
        rt->method_names = NULL;
    }
    return KOU_OK;
}

/* "example.com", "*.example.org", "127.0.0.1" or "[::1]". */
static bool
kou_conf_host_ok(const char *s, size_t n)
{
    size_t label = 0;

    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        for (size_t i = 1; i + 1 < n; i++) {
            if (!isxdigit((u_char) s[i]) && s[i] != ':' && s[i] != '.') {
                return false;
            }
        }
        return n > 2;
    }
    if (n >= 2 && s[0] == '*' && s[1] == '.') {
        s += 2;
        n -= 2;
    }
    if (n == 0 || n > 253) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (label == 0) {
                return false;
            }
            label = 0;
        } else if (isalnum((u_char) s[i]) || s[i] == '-') {
            if (++label > 63) {
                return false;
            }
        } else {
            return false;
        }
    }
    return label > 0;
}

static int
kou_conf_route_hosts(kou_conf_ctx_t *c, const kou_conf_t *list,
                     kou_route_t *rt)
{
    const kou_conf_t *item;
    size_t            n;
    char              buf[64];

    if (list->type == KOU_NODE_MAP || kou_conf_is_null(list)) {
        return kou_conf_bad(c, list, "host", "a host name or a list of them");
    }
    n = kou_conf_len(list);
    if (n == 0) {
        return kou_conf_error(list, c->err, c->errlen,
                              "host: expected at least one host name (leave "
                              "\"host\" out to allow any)");
    }
    rt->hosts = kou_arena_alloc(c->arena, n * sizeof(kou_str_t));
    if (rt->hosts == NULL) {
        return kou_conf_ctx_oom(c);
    }
    for (size_t i = 0; i < n; i++) {
        item = kou_conf_at(list, i, NULL);
        if (item->type != KOU_NODE_SCALAR
            || !kou_conf_host_ok(item->value, item->len))
        {
            return kou_conf_error(item, c->err, c->errlen,
                                  "host: %s is not a host name (expected a "
                                  "name such as example.com or "
                                  "*.example.org)",
                                  kou_conf_show(item, buf, sizeof(buf)));
        }
        rt->hosts[i].p = item->value;
        rt->hosts[i].n = item->len;
        rt->nhosts++;
    }
    return KOU_OK;
}

/*
 * Requests are matched after normalisation, so a route path that is not in
 * normal form could never match: say so now rather than serve 404s.
 */
static int
kou_conf_route_path(kou_conf_ctx_t *c, const kou_conf_t *n, const char *name,
                    kou_route_t *rt)
{
    const char *s = n->value, *seg;
    size_t      sn;

    if (n->type != KOU_NODE_SCALAR || n->len == 0 || s[0] != '/') {
        return kou_conf_bad(c, n, name, "a path starting with \"/\"");
    }
    for (size_t i = 0; i < n->len; i++) {
        u_char      ch = (u_char) s[i];
        const char *what = ch == ' ' ? "a space"
                           : ch < 0x20 || ch == 0x7f ? "a control character"
                           : ch == '?' ? "'?' (the query is not matched)"
                           : ch == '#' ? "'#'" : NULL;
        if (what != NULL) {
            return kou_conf_error(n, c->err, c->errlen,
                                  "%s: \"%s\" contains %s, which a route "
                                  "path cannot", name, s, what);
        }
    }
    for (seg = s; seg != NULL; seg = strchr(seg + 1, '/')) {
        sn = strcspn(seg + 1, "/");
        if ((sn == 1 && seg[1] == '.')
            || (sn == 2 && seg[1] == '.' && seg[2] == '.'))
        {
            return kou_conf_error(n, c->err, c->errlen,
                                  "%s: \"%s\" has a \".\" or \"..\" segment "
                                  "(requests are matched after those are "
                                  "removed)", name, s);
        }
    }
    rt->path.p = s;
    rt->path.n = n->len;
    return KOU_OK;
}

static int
kou_conf_route(kou_conf_ctx_t *c, kou_conf_t *map, size_t i)
{
    kou_config_t     *cf = c->cf;
    kou_route_conf_t *rc = &cf->routes[i];
    const kou_conf_t *path, *prefix, *n, *k1, *k2;

    rc->node = map;
    rc->route.index = i;
    rc->route.data = rc;
    rc->max_body = cf->limits.max_body;

    if (map->type != KOU_NODE_MAP) {
        return kou_conf_bad(c, map, "routes", "a route (a mapping with "
                            "\"path\" or \"prefix\", and \"handler\")");
    }

    path = kou_conf_get(map, "path");
    prefix = kou_conf_get(map, "prefix");
    if (path != NULL && prefix != NULL) {
        k1 = kou_conf_get_key(map, "path");
        k2 = kou_conf_get_key(map, "prefix");
        if (k2->line < k1->line || (k2->line == k1->line && k2->col < k1->col))
        {
            k2 = k1;
        }
        return kou_conf_error(k2, c->err, c->errlen,
                              "route has both \"path\" and \"prefix\": use "
                              "\"path\" for one exact path or \"prefix\" for "
                              "a subtree");
    }
    if (path == NULL && prefix == NULL) {
        return kou_conf_error(map, c->err, c->errlen,
                              "route needs \"path\" (an exact path) or "
                              "\"prefix\" (a subtree)");
    }
    rc->route.prefix = prefix != NULL;
    if (kou_conf_route_path(c, path != NULL ? path : prefix,
                            path != NULL ? "path" : "prefix",
                            &rc->route) != KOU_OK)
    {
        return KOU_ERROR;
    }

    n = kou_conf_get(map, "handler");
    if (n == NULL) {
        return kou_conf_error(map, c->err, c->errlen,
                              "route needs \"handler\" (the module that "
                              "answers it)");
    }
    if (kou_conf_module_ref(c, n, "handler", &rc->handler) != KOU_OK) {
        return KOU_ERROR;
    }

    n = kou_conf_get(map, "methods");
    if (n != NULL && kou_conf_route_methods(c, n, &rc->route) != KOU_OK) {
        return KOU_ERROR;
    }
    n = kou_conf_get(map, "host");
    if (n != NULL && kou_conf_route_hosts(c, n, &rc->route) != KOU_OK) {
        return KOU_ERROR;
    }
    n = kou_conf_get(map, "max_body");
    if (n != NULL
        && kou_conf_get_size(c, n, "max_body", false, &rc->max_body) != KOU_OK)
    {
        return KOU_ERROR;
    }
    return KOU_OK;
}

static int
kou_conf_routes_load(kou_conf_ctx_t *c, const kou_conf_t *root)
{
    kou_config_t     *cf = c->cf;
    const kou_conf_t *list;

    list = kou_conf_get(root, "routes");
    if (list == NULL) {
        return KOU_OK;
    }
    if (list->type != KOU_NODE_SEQ) {
        return kou_conf_bad(c, list, "routes", "a list of routes");
    }
    if (list->n > 0) {
        cf->routes = kou_arena_alloc(c->arena,
                                     list->n * sizeof(kou_route_conf_t));
        if (cf->routes == NULL) {
            return kou_conf_ctx_oom(c);
        }
    }
    for (size_t i = 0; i < list->n; i++) {
        if (kou_conf_route(c, list->items[i], i) != KOU_OK) {
            return KOU_ERROR;
        }
        cf->nroutes++;
    }
    return KOU_OK;
}

/*
 * Order matters: routes need limits (max_body's default) and modules
 * (handlers), hooks need modules.
 */
static int
kou_conf_core(kou_conf_ctx_t *c, const char *const *modules_dirs)
{
    const kou_conf_t *root = c->cf->root;
    char              buf[64];

    if (root == NULL) {
        return kou_conf_errat(c->err, c->errlen, c->cf->file, 1, 1,
                              "the file is empty (expected a mapping with at "
                              "least \"listen\")");
    }
    if (root->type != KOU_NODE_MAP) {
        return kou_conf_error(root, c->err, c->errlen,
                              "expected a mapping of settings at the top "
                              "level, got %s",
                              kou_conf_show(root, buf, sizeof(buf)));
    }
    if (kou_conf_check_keys(c, root, kou_conf_top_keys, "at the top level")
            != KOU_OK
        || kou_conf_workers(c, root) != KOU_OK
        || kou_conf_files(c, root) != KOU_OK
        || kou_conf_limits_load(c, root) != KOU_OK
        || kou_conf_listen_load(c, root) != KOU_OK
        || kou_conf_modules_load(c, root, modules_dirs) != KOU_OK
        || kou_conf_hooks_load(c, root) != KOU_OK
        || kou_conf_routes_load(c, root) != KOU_OK)
    {
        return KOU_ERROR;
    }
    return KOU_OK;
}

int
kou_config_load(const char *file, const char *prefix,
                const char *const *modules_dirs, kou_config_t **out,
                char *err, size_t errlen)
{
    kou_arena_t     *arena;
    kou_config_t    *cf;
    kou_conf_parse_t ps;
    kou_conf_ctx_t   c;
    u_char          *text = NULL;
    size_t           textlen = 0;
    int              rc;

    *out = NULL;
    if (err != NULL && errlen > 0) {
        err[0] = '\0';
    }

    arena = calloc(1, sizeof(kou_arena_t));
    if (arena == NULL) {
        return kou_conf_errat(err, errlen, file, 0, 0, "out of memory");
    }
    cf = kou_arena_alloc(arena, sizeof(kou_config_t));
    if (cf == NULL
        || (cf->file = kou_arena_strndup(arena, file, strlen(file))) == NULL
        || (cf->prefix = kou_arena_strndup(arena, prefix ? prefix : ".",
                                           strlen(prefix ? prefix : ".")))
           == NULL)
    {
        kou_arena_destroy(arena);
        return kou_conf_errat(err, errlen, file, 0, 0, "out of memory");
    }
    cf->arena = arena;

    if (kou_conf_read_file(file, &text, &textlen, err, errlen) != KOU_OK) {
        goto failed;
    }

    memset(&ps, 0, sizeof(ps));
    ps.arena = arena;
    ps.file = cf->file;
    ps.text = text;
    ps.textlen = textlen;
    ps.err = err;
    ps.errlen = errlen;
    if (!yaml_parser_initialize(&ps.parser)) {
        kou_conf_errat(err, errlen, file, 0, 0, "out of memory");
        goto failed;
    }
    yaml_parser_set_input_string(&ps.parser, text, textlen);
    rc = kou_conf_build_stream(&ps, &cf->root);
    yaml_parser_delete(&ps.parser);
    free(text);
    text = NULL;
    if (rc != KOU_OK) {
        goto failed;
    }

    c.cf = cf;
    c.arena = arena;
    c.err = err;
    c.errlen = errlen;
    if (kou_conf_core(&c, modules_dirs) != KOU_OK) {
        goto failed;
    }
    *out = cf;
    return KOU_OK;

failed:
    free(text);
    kou_config_free(cf);
    return KOU_ERROR;
}

void
kou_config_free(kou_config_t *cf)
{
    if (cf != NULL) {
        /* cf itself lives in the arena */
        kou_arena_destroy(cf->arena);
    }
}

/* ---- schema validation ---- */

static const char *
kou_conf_type_name(kou_conf_type_e t)
{
    switch (t) {
    case KOU_CONF_STR:      return "a string";
    case KOU_CONF_INT:      return "an integer";
    case KOU_CONF_BOOL:     return "true or false (or on/off, yes/no)";
    case KOU_CONF_SIZE:     return "a size such as 512, 16k, 1m or 2g";
    case KOU_CONF_DURATION: return "a duration such as 250ms, 10s, 5m or 1h";
    case KOU_CONF_LIST:     return "a list";
    case KOU_CONF_MAP:      return "a mapping";
    default:                return "any value";
    }
}

static bool
kou_conf_type_ok(const kou_conf_t *n, kou_conf_type_e t)
{
    int64_t  i;
    int      b;
    uint64_t u;

    switch (t) {
    case KOU_CONF_STR:
        return n->type == KOU_NODE_SCALAR;
    case KOU_CONF_INT:
        return kou_conf_int(n, &i) == KOU_OK;
    case KOU_CONF_BOOL:
        return kou_conf_bool(n, &b) == KOU_OK;
    case KOU_CONF_SIZE:
        return kou_conf_size(n, &u) == KOU_OK;
    case KOU_CONF_DURATION:
        return kou_conf_duration(n, &u) == KOU_OK;
    case KOU_CONF_LIST:
        return n->type == KOU_NODE_SEQ
               || (n->type == KOU_NODE_SCALAR && !kou_conf_is_null(n));
    case KOU_CONF_MAP:
        return n->type == KOU_NODE_MAP;
    default:
        return true;
    }
}

/* The keys a map in `scope` may hold, for "expected one of: ...". */
static void
kou_conf_allowed(const kou_conf_key_t *const *schemas, size_t nschemas,
                 unsigned scope, const char *const *skip, char *buf,
                 size_t size)
{
    size_t o = 0;
    int    n;
    bool   seen;

    buf[0] = '\0';
    for (size_t i = 0; skip != NULL && skip[i] != NULL && o < size; i++) {
        n = snprintf(buf + o, size - o, "%s%s", o > 0 ? ", " : "", skip[i]);
        o += n > 0 ? (size_t) n : 0;
    }
    for (size_t s = 0; s < nschemas; s++) {
        for (const kou_conf_key_t *k = schemas[s]; k != NULL && k->key != NULL;
             k++)
        {
            if (!(k->scope & scope) || kou_conf_in(skip, k->key)) {
                continue;
            }
            seen = false;
            for (size_t s2 = 0; s2 <= s && !seen; s2++) {
                for (const kou_conf_key_t *k2 = schemas[s2];
                     k2 != NULL && k2->key != NULL && k2 != k; k2++)
                {
                    if ((k2->scope & scope) && strcmp(k2->key, k->key) == 0) {
                        seen = true;
                        break;
                    }
                }
            }
            if (seen || o >= size) {
                continue;
            }
            n = snprintf(buf + o, size - o, "%s%s", o > 0 ? ", " : "",
                         k->key);
            o += n > 0 ? (size_t) n : 0;
        }
    }
    if (o == 0) {
        snprintf(buf, size, "none");
    }
}

static int
kou_conf_add_default(kou_conf_t *map, const kou_conf_key_t *k, char *err,
                     size_t errlen)
{
    kou_arena_t *a = map->arena;
    kou_conf_t  *key, *val, **keys, **items;

    if (a == NULL) {
        return kou_conf_error(map, err, errlen, "out of memory");
    }
    key = kou_conf_node(a, map->file, KOU_NODE_SCALAR, map->line, map->col);
    val = kou_conf_node(a, map->file, KOU_NODE_SCALAR, map->line, map->col);
    keys = kou_arena_alloc(a, (map->n + 1) * sizeof(kou_conf_t *));
    items = kou_arena_alloc(a, (map->n + 1) * sizeof(kou_conf_t *));
    if (key == NULL || val == NULL || keys == NULL || items == NULL) {
        return kou_conf_error(map, err, errlen, "out of memory");
    }
    key->len = strlen(k->key);
    key->value = kou_arena_strndup(a, k->key, key->len);
    val->len = strlen(k->default_value);
    val->value = kou_arena_strndup(a, k->default_value, val->len);
    /* a default is text, not YAML: "" stays an empty string, not null */
    val->quoted = true;
    if (key->value == NULL || val->value == NULL) {
        return kou_conf_error(map, err, errlen, "out of memory");
    }
    if (map->n > 0) {
        memcpy(keys, map->keys, map->n * sizeof(kou_conf_t *));
        memcpy(items, map->items, map->n * sizeof(kou_conf_t *));
    }
    keys[map->n] = key;
    items[map->n] = val;
    map->keys = keys;
    map->items = items;
    map->n++;
    return KOU_OK;
}

int
kou_conf_validate(kou_conf_t *map, const kou_conf_key_t *const *schemas,
                  size_t nschemas, unsigned scope,
                  const char *const *skip, char *err, size_t errlen)
{
    const char           *where = scope == KOU_SCOPE_ROUTE ? "in route"
                                  : "in module settings";
    const kou_conf_key_t *k;
    const kou_conf_t     *key, *val;
    char                  list[768], buf[64];
    bool                  known;

    if (map == NULL) {
        return KOU_ERROR;
    }
    if (map->type != KOU_NODE_MAP) {
        return kou_conf_error(map, err, errlen,
                              "expected a mapping, got %s",
                              kou_conf_show(map, buf, sizeof(buf)));
    }

    for (size_t i = 0; i < map->n; i++) {
        key = map->keys[i];
        val = map->items[i];
        if (kou_conf_in(skip, key->value)) {
            continue;
        }
        known = false;
        for (size_t s = 0; s < nschemas; s++) {
            for (k = schemas[s]; k != NULL && k->key != NULL; k++) {
                if (!(k->scope & scope) || strcmp(k->key, key->value) != 0) {
                    continue;
                }
                known = true;
                if (!kou_conf_type_ok(val, k->type)) {
                    return kou_conf_error(val, err, errlen,
                                          "%s: expected %s, got %s%s%s%s",
                                          k->key, kou_conf_type_name(k->type),
                                          kou_conf_show(val, buf, sizeof(buf)),
                                          k->help ? " (" : "",
                                          k->help ? k->help : "",
                                          k->help ? ")" : "");
                }
            }
        }
        if (!known) {
            kou_conf_allowed(schemas, nschemas, scope, skip, list,
                             sizeof(list));
            return kou_conf_error(key, err, errlen,
                                  "unknown key \"%s\" %s (expected one of: "
                                  "%s)", key->value, where, list);
        }
    }

    for (size_t s = 0; s < nschemas; s++) {
        for (k = schemas[s]; k != NULL && k->key != NULL; k++) {
            if (!(k->scope & scope) || kou_conf_get(map, k->key) != NULL) {
                continue;
            }
            if (k->required) {
                return kou_conf_error(map, err, errlen,
                                      "missing required key \"%s\"%s%s%s",
                                      k->key, k->help ? " (" : "",
                                      k->help ? k->help : "",
                                      k->help ? ")" : "");
            }
            if (k->default_value == NULL) {
                continue;
            }
            if (kou_conf_add_default(map, k, err, errlen) != KOU_OK) {
                return KOU_ERROR;
            }
            if (!kou_conf_type_ok(map->items[map->n - 1], k->type)) {
                return kou_conf_error(map, err, errlen,
                                      "module schema error: the default "
                                      "\"%s\" of \"%s\" is not %s",
                                      k->default_value, k->key,
                                      kou_conf_type_name(k->type));
            }
        }
    }
    return KOU_OK;
}
