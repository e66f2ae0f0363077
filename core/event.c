/*
 * The event loop. Deliberately small: epoll_wait, dispatch, posted work,
 * timers. Everything protocol-related lives in the handlers.
 */

#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "event.h"
#include "log.h"

#define KOU_LOOP_EVENTS 512

kou_loop_t kou_loop = { .epfd = -1 };

void
kou_loop_update_time(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    kou_loop.now_us = (uint64_t) ts.tv_sec * 1000000
                      + (uint64_t) ts.tv_nsec / 1000;
    kou_loop.now = kou_loop.now_us / 1000;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    kou_loop.wall = ts.tv_sec;
}

int
kou_loop_init(void)
{
    kou_loop.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (kou_loop.epfd < 0) {
        return KOU_ERROR;
    }
    kou_loop_update_time();
    kou_timer_wheel_init(&kou_loop.timers, kou_loop.now);
    kou_list_init(&kou_loop.posted);
    kou_loop.stop = false;
    return KOU_OK;
}

void
kou_loop_close(void)
{
    if (kou_loop.epfd >= 0) {
        close(kou_loop.epfd);
        kou_loop.epfd = -1;
    }
}

static int
kou_loop_ctl(int op, kou_ev_t *ev, uint32_t events)
{
    struct epoll_event ee = { .events = events, .data.ptr = ev };

    return epoll_ctl(kou_loop.epfd, op, ev->fd, &ee) == 0 ? KOU_OK : KOU_ERROR;
}

int
kou_loop_add(kou_ev_t *ev, uint32_t events)
{
    return kou_loop_ctl(EPOLL_CTL_ADD, ev, events);
}

int
kou_loop_mod(kou_ev_t *ev, uint32_t events)
{
    return kou_loop_ctl(EPOLL_CTL_MOD, ev, events);
}

int
kou_loop_del(kou_ev_t *ev)
{
    return kou_loop_ctl(EPOLL_CTL_DEL, ev, 0);
}

void
kou_loop_post(kou_post_t *p)
{
    if (!kou_list_linked(&p->node)) {
        kou_list_insert_tail(&kou_loop.posted, &p->node);
    }
}

void
kou_loop_unpost(kou_post_t *p)
{
    if (kou_list_linked(&p->node)) {
        kou_list_remove(&p->node);
    }
}

/*
 * Posted work may post more work (a connection resumed by an async
 * completion answers, which completes another...). Run until the queue is
 * empty but take the queue as it is at the start of each pass, so that one
 * busy connection cannot starve the others of epoll_wait forever.
 */
static void
kou_loop_run_posted(void)
{
    kou_list_t batch;

    while (!kou_list_empty(&kou_loop.posted)) {
        kou_list_init(&batch);
        /* move the whole queue to batch */
        batch.next = kou_loop.posted.next;
        batch.prev = kou_loop.posted.prev;
        batch.next->prev = &batch;
        batch.prev->next = &batch;
        kou_list_init(&kou_loop.posted);

        while (!kou_list_empty(&batch)) {
            kou_post_t *p = kou_container_of(batch.next, kou_post_t, node);
            kou_list_remove(&p->node);
            p->handler(p);
        }
    }
}

void
kou_loop_once(int max_wait_ms)
{
    struct epoll_event events[KOU_LOOP_EVENTS];
    int64_t            next;
    int                n, timeout;

    next = kou_timer_next(&kou_loop.timers);
    timeout = next < 0 ? -1 : (int) kou_min(next, (int64_t) 60000);
    if (max_wait_ms >= 0 && (timeout < 0 || timeout > max_wait_ms)) {
        timeout = max_wait_ms;
    }
    if (!kou_list_empty(&kou_loop.posted)) {
        timeout = 0;
    }

    n = epoll_wait(kou_loop.epfd, events, KOU_LOOP_EVENTS, timeout);
    kou_loop_update_time();
    /*
     * Bring the wheel to the new time before any handler runs: a timer
     * armed by a handler counts from now, not from the last advance.
     */
    kou_timer_advance(&kou_loop.timers, kou_loop.now);

    if (n < 0 && errno != EINTR) {
        kou_log_error("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
        kou_ev_t *ev = events[i].data.ptr;
        ev->handler(ev, events[i].events);
    }

    kou_loop_run_posted();
    kou_timer_advance(&kou_loop.timers, kou_loop.now);
    kou_loop_run_posted();
}
