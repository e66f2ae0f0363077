/*
 * Definitions shared by every core file: the public ABI, return codes,
 * intrusive lists and small helpers.
 */

#ifndef KOU_KOU_H
#define KOU_KOU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include <kourier/module.h>

typedef unsigned char u_char;

#define kou_min(a, b) ((a) < (b) ? (a) : (b))
#define kou_max(a, b) ((a) > (b) ? (a) : (b))
#define kou_nelem(a)  (sizeof(a) / sizeof((a)[0]))

#define kou_likely(x)   __builtin_expect(!!(x), 1)
#define kou_unlikely(x) __builtin_expect(!!(x), 0)

#define kou_container_of(p, type, member) \
    ((type *) ((char *) (p) - offsetof(type, member)))

/* Case-insensitive comparison of a kou_str_t with a lower-case literal. */
static inline bool
kou_str_eq_lc(kou_str_t s, const char *lc, size_t n)
{
    if (s.n != n) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        u_char c = (u_char) s.p[i];
        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        }
        if (c != (u_char) lc[i]) {
            return false;
        }
    }
    return true;
}

#define kou_str_eq_lit(s, lit) kou_str_eq_lc((s), (lit), sizeof(lit) - 1)

/* ASCII case-insensitive equality of two strings (field names). */
static inline bool
kou_str_caseeq(kou_str_t a, kou_str_t b)
{
    if (a.n != b.n) {
        return false;
    }
    for (size_t i = 0; i < a.n; i++) {
        u_char x = (u_char) a.p[i], y = (u_char) b.p[i];

        if (x != y) {
            x = x >= 'A' && x <= 'Z' ? x | 0x20 : x;
            y = y >= 'A' && y <= 'Z' ? y | 0x20 : y;
            if (x != y) {
                return false;
            }
        }
    }
    return true;
}

/* Exact comparison. */
static inline bool
kou_str_eq(kou_str_t a, kou_str_t b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

/*
 * Intrusive circular doubly-linked list. A head is a node linked to itself;
 * an unlinked node has next == NULL so that "is it linked?" is O(1).
 */
typedef struct kou_list_s kou_list_t;
struct kou_list_s {
    kou_list_t *next;
    kou_list_t *prev;
};

static inline void
kou_list_init(kou_list_t *h)
{
    h->next = h->prev = h;
}

static inline bool
kou_list_empty(const kou_list_t *h)
{
    return h->next == h;
}

static inline void
kou_list_insert_tail(kou_list_t *h, kou_list_t *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

static inline void
kou_list_remove(kou_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = NULL;
}

static inline bool
kou_list_linked(const kou_list_t *n)
{
    return n->next != NULL;
}

#endif /* KOU_KOU_H */
