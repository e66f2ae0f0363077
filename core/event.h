/*
 * The worker's event loop: one epoll instance, the timer wheel, a cached
 * clock and a queue of posted work. One loop per process, not thread-safe.
 *
 * Client sockets are registered once, edge-triggered, for both directions
 * (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) so that serving a request never
 * needs an epoll_ctl call.
 */

#ifndef KOU_EVENT_H
#define KOU_EVENT_H

#include <sys/epoll.h>

#include "kou.h"
#include "timer.h"

typedef struct kou_ev_s kou_ev_t;
typedef void (*kou_ev_pt)(kou_ev_t *ev, uint32_t events);

/* An epoll registration; embedded in its owner (connection, listener...). */
struct kou_ev_s {
    int       fd;
    kou_ev_pt handler;
    void     *data;
};

/* Work to run after the current batch of events (async completions). */
typedef struct kou_post_s kou_post_t;
typedef void (*kou_post_pt)(kou_post_t *p);
struct kou_post_s {
    kou_list_t  node;       /* node.next == NULL: not posted */
    kou_post_pt handler;
};

typedef struct {
    int               epfd;
    uint64_t          now;        /* ms, CLOCK_MONOTONIC, per iteration */
    uint64_t          now_us;     /* the same instant in µs */
    time_t            wall;       /* seconds, CLOCK_REALTIME, per iteration */
    kou_timer_wheel_t timers;
    kou_list_t        posted;
    bool              stop;
} kou_loop_t;

extern kou_loop_t kou_loop;

/* Create the epoll instance and start the clock. KOU_OK or KOU_ERROR. */
int kou_loop_init(void);

/* Close the epoll instance (after fork in a process that will not use it). */
void kou_loop_close(void);

/* Register / change / remove ev->fd for `events` (EPOLL* bits). */
int kou_loop_add(kou_ev_t *ev, uint32_t events);
int kou_loop_mod(kou_ev_t *ev, uint32_t events);
int kou_loop_del(kou_ev_t *ev);

/* Queue p to run after the current events (once, however often posted). */
void kou_loop_post(kou_post_t *p);
/* Remove p from the queue if it is there. */
void kou_loop_unpost(kou_post_t *p);

/* Re-read the clocks. */
void kou_loop_update_time(void);

/*
 * One iteration: wait for events (no longer than the next timer allows, or
 * max_wait_ms when >= 0), dispatch them, run posted work, run due timers.
 */
void kou_loop_once(int max_wait_ms);

static inline void
kou_timer_add(kou_timer_t *t, uint64_t ms)
{
    kou_timer_start(&kou_loop.timers, t, ms);
}

static inline void
kou_timer_del(kou_timer_t *t)
{
    kou_timer_stop(&kou_loop.timers, t);
}

#endif /* KOU_EVENT_H */
