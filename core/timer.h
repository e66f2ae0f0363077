/*
 * Hierarchical timer wheel.
 *
 * Timers are intrusive: the caller embeds a kou_timer_t (in a connection, a
 * request...) so that start, reset and stop are O(1), allocate nothing and
 * make no system call. Only kou_timer_advance() looks at the clock the caller
 * gives it. Resolution is 1 ms. One wheel per worker; not thread-safe.
 */

#ifndef KOU_TIMER_H
#define KOU_TIMER_H

#include "kou.h"

typedef struct kou_timer_s kou_timer_t;
typedef void (*kou_timer_pt)(kou_timer_t *t);

struct kou_timer_s {
    kou_list_t   node;     /* in a wheel slot; node.next == NULL: not armed */
    uint64_t     expire;   /* absolute time in ms */
    kou_timer_pt handler;
    void        *data;
};

#define KOU_TIMER_LEVELS 4
#define KOU_TIMER_SLOTS  64   /* per level: 64^4 ms ~ 4.6 hours of range */

/*
 * Private except for `now` (read-only to callers). Level L slot i holds the
 * timers whose expiry lies in the i-th 64^L ms block of the current 64^(L+1)
 * ms block, counted from `tick` + 1; see timer.c.
 */
typedef struct {
    uint64_t   now;                    /* time of the last advance, ms */
    uint64_t   tick;                   /* last ms the wheel has processed */
    size_t     count;                  /* armed timers */
    uint64_t   bitmap[KOU_TIMER_LEVELS];  /* non-empty slots per level */
    kou_list_t slots[KOU_TIMER_LEVELS][KOU_TIMER_SLOTS];
    kou_list_t overflow;               /* beyond the last level's range */
    uint64_t   overflow_min;           /* <= every expiry in overflow */
    kou_list_t due;                    /* armed with delay 0: next advance */
} kou_timer_wheel_t;

/* Initialise an empty wheel whose clock reads now_ms. */
void kou_timer_wheel_init(kou_timer_wheel_t *w, uint64_t now_ms);

/* Prepare a timer (not armed). */
void kou_timer_init(kou_timer_t *t, kou_timer_pt handler, void *data);

/*
 * Arm t to fire delay_ms after the wheel's current time (w->now), re-arming
 * it if it was armed already; re-arming counts as arming anew for the order
 * of ties. A delay of 0 makes the timer due at once: it fires at the next
 * kou_timer_advance() call, never inside the one that is running. Delays
 * are capped at 2^62 ms. O(1).
 */
void kou_timer_start(kou_timer_wheel_t *w, kou_timer_t *t, uint64_t delay_ms);

/* Disarm t; a no-op when it is not armed. O(1). */
void kou_timer_stop(kou_timer_wheel_t *w, kou_timer_t *t);

static inline bool
kou_timer_armed(const kou_timer_t *t)
{
    return t->node.next != NULL;
}

/*
 * Move the wheel's clock to now_ms (never backwards) and run the handler of
 * every timer whose expiry is <= now_ms, in expiry order (ties in arming
 * order). A timer is disarmed before its handler runs; handlers may start or
 * stop any timer, including the one that fired. The clock reads now_ms
 * while handlers run, so a timer they arm expires after now_ms, except one
 * armed with delay 0, which fires at the next call: a handler that re-arms
 * itself cannot keep a call from returning. Cost: the timers that fire
 * and their cascades; stretches of time with no timer in them cost nothing,
 * however long. Must not be called from a handler.
 */
void kou_timer_advance(kou_timer_wheel_t *w, uint64_t now_ms);

/*
 * How long the event loop may sleep, in ms, without running any timer
 * late: 0 if one is already due, -1 when no timer is armed. May be shorter
 * than the exact time to the next expiry (never longer).
 */
int64_t kou_timer_next(const kou_timer_wheel_t *w);

#endif /* KOU_TIMER_H */
