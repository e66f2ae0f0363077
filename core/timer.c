/*
 * Hierarchical timer wheel (see timer.h for the contract).
 *
 * Placement. Let B = tick + 1, the next millisecond the wheel will process.
 * A timer expiring at E >= B goes to the level of the highest 6-bit group in
 * which E and B differ: level 0 when they share everything above the low 6
 * bits, level 3 when they share everything above bit 24, the overflow list
 * beyond. Slot i of level L then holds exactly the timers of one 64^L ms
 * block (the i-th of the current 64^(L+1) ms block), so a timer never fires
 * early or late: when B reaches the start of that block the slot is
 * "cascaded" (its timers placed again, one level lower or more), and a
 * level 0 slot holds the timers of exactly one millisecond.
 *
 * Invariants, outside the inner steps of kou_timer_advance():
 *   - level 0 has no slot below B's index set, levels 1..3 none at or below
 *     B's index: those blocks are over; so the lowest non-empty level's
 *     lowest set bit is the next thing that happens, and nothing else needs
 *     to be looked at (that is what makes advance and next cheap);
 *   - every timer in overflow expires in a later 2^24 ms block than B, and
 *     overflow_min is a lower bound of their expiries (not exact: a stop
 *     does not raise it, which only costs an early look).
 *
 * Arming order of ties. Each list is appended to in arming order, and a
 * cascade moves a slot into slots that are empty (they belong to a block
 * that has just started). A timer armed later than another with the same
 * expiry is placed at the same or a lower level, because B only grows, and
 * the cascade that would bring the earlier one down to it always runs
 * before anything is armed against the new B. So every list stays in
 * arming order for equal expiries.
 *
 * Due list. A timer armed with delay 0 expires at the current clock. It goes
 * on `due`, run first by the next advance; all of them expire no later than
 * anything in the wheel, so expiry order holds across calls.
 */

#include "timer.h"

#define KOU_TIMER_BITS    6
#define KOU_TIMER_SPAN    (KOU_TIMER_BITS * KOU_TIMER_LEVELS)  /* 24 */
#define KOU_TIMER_MAX_DELAY ((uint64_t) 1 << 62)
#define KOU_TIMER_NONE    UINT64_MAX
#define KOU_TIMER_OVERFLOW KOU_TIMER_LEVELS

/* A pointer-free time: an expiry block start and the level it belongs to. */
typedef struct {
    uint64_t time;
    unsigned level;   /* 0..3, or KOU_TIMER_OVERFLOW */
} kou_timer_event_t;

static void kou_timer_place(kou_timer_wheel_t *w, kou_timer_t *t);

void
kou_timer_wheel_init(kou_timer_wheel_t *w, uint64_t now_ms)
{
    w->now = now_ms;
    w->tick = now_ms;
    w->count = 0;
    for (unsigned l = 0; l < KOU_TIMER_LEVELS; l++) {
        w->bitmap[l] = 0;
        for (unsigned i = 0; i < KOU_TIMER_SLOTS; i++) {
            kou_list_init(&w->slots[l][i]);
        }
    }
    kou_list_init(&w->overflow);
    w->overflow_min = KOU_TIMER_NONE;
    kou_list_init(&w->due);
}

void
kou_timer_init(kou_timer_t *t, kou_timer_pt handler, void *data)
{
    t->node.next = NULL;
    t->node.prev = NULL;
    t->expire = 0;
    t->handler = handler;
    t->data = data;
}

/* Move every node of from to the tail of to (to may be non-empty). */
static void
kou_timer_splice(kou_list_t *from, kou_list_t *to)
{
    if (kou_list_empty(from)) {
        return;
    }
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    kou_list_init(from);
}

static void
kou_timer_place(kou_timer_wheel_t *w, kou_timer_t *t)
{
    uint64_t base = w->tick + 1;
    uint64_t diff = t->expire ^ base;
    unsigned level, i;

    if (diff >> KOU_TIMER_SPAN) {
        kou_list_insert_tail(&w->overflow, &t->node);
        if (t->expire < w->overflow_min) {
            w->overflow_min = t->expire;
        }
        return;
    }
    level = diff ? (unsigned) (63 - __builtin_clzll(diff)) / KOU_TIMER_BITS
                 : 0;
    i = (unsigned) (t->expire >> (level * KOU_TIMER_BITS))
        & (KOU_TIMER_SLOTS - 1);
    kou_list_insert_tail(&w->slots[level][i], &t->node);
    w->bitmap[level] |= (uint64_t) 1 << i;
}

void
kou_timer_stop(kou_timer_wheel_t *w, kou_timer_t *t)
{
    kou_list_t *head;
    uintptr_t   first, last, h;

    if (!kou_timer_armed(t)) {
        return;
    }

    /*
     * When t is alone in its list its neighbour is the head. If that head
     * is a slot, the slot becomes empty and its bit must go: the address
     * tells which slot, so no field in the timer has to remember it.
     */
    head = t->node.next;
    if (head == t->node.prev) {
        first = (uintptr_t) &w->slots[0][0];
        last = (uintptr_t) &w->slots[KOU_TIMER_LEVELS - 1][KOU_TIMER_SLOTS - 1];
        h = (uintptr_t) head;
        if (h >= first && h <= last) {
            size_t k = (size_t) (head - &w->slots[0][0]);
            w->bitmap[k / KOU_TIMER_SLOTS] &=
                ~((uint64_t) 1 << (k % KOU_TIMER_SLOTS));
        }
    }
    kou_list_remove(&t->node);
    w->count--;
}

void
kou_timer_start(kou_timer_wheel_t *w, kou_timer_t *t, uint64_t delay_ms)
{
    kou_timer_stop(w, t);

    if (delay_ms > KOU_TIMER_MAX_DELAY) {
        delay_ms = KOU_TIMER_MAX_DELAY;
    }
    t->expire = w->now + delay_ms;
    w->count++;

    if (delay_ms == 0) {
        kou_list_insert_tail(&w->due, &t->node);
        return;
    }

    /* now >= tick always, so expire >= tick + 1 as placement requires. */
    kou_timer_place(w, t);
}

/*
 * The next thing the wheel must do: the expiry of the lowest set slot of
 * level 0, else the start of the block of the lowest set slot of the lowest
 * non-empty level (every timer of a level expires after every timer of the
 * levels below it), else the block of overflow_min in overflow.
 */
static kou_timer_event_t
kou_timer_next_event(const kou_timer_wheel_t *w)
{
    kou_timer_event_t ev;
    uint64_t          base = w->tick + 1;

    for (unsigned l = 0; l < KOU_TIMER_LEVELS; l++) {
        if (w->bitmap[l] != 0) {
            unsigned shift = l * KOU_TIMER_BITS;
            uint64_t i = (uint64_t) __builtin_ctzll(w->bitmap[l]);
            uint64_t upper = base >> (shift + KOU_TIMER_BITS);

            ev.time = (upper << (shift + KOU_TIMER_BITS)) | (i << shift);
            ev.level = l;
            return ev;
        }
    }

    if (!kou_list_empty(&w->overflow)) {
        uint64_t next_block = ((base >> KOU_TIMER_SPAN) + 1) << KOU_TIMER_SPAN;
        uint64_t min_block = (w->overflow_min >> KOU_TIMER_SPAN)
                             << KOU_TIMER_SPAN;

        ev.time = kou_max(next_block, min_block);
        ev.level = KOU_TIMER_OVERFLOW;
        return ev;
    }

    ev.time = KOU_TIMER_NONE;
    ev.level = 0;
    return ev;
}

/* Place again every timer of slot i of level l (whose block starts now). */
static void
kou_timer_cascade(kou_timer_wheel_t *w, unsigned l, unsigned i)
{
    kou_list_t list;

    kou_list_init(&list);
    kou_timer_splice(&w->slots[l][i], &list);
    w->bitmap[l] &= ~((uint64_t) 1 << i);

    while (!kou_list_empty(&list)) {
        kou_timer_t *t = kou_container_of(list.next, kou_timer_t, node);

        kou_list_remove(&t->node);
        kou_timer_place(w, t);
    }
}

/*
 * Overflow timers of the 2^24 ms block that starts now move into the
 * levels; the others stay, in order. O(overflow), once per block that
 * overflow_min says holds something.
 */
static void
kou_timer_cascade_overflow(kou_timer_wheel_t *w)
{
    uint64_t    block = (w->tick + 1) >> KOU_TIMER_SPAN;
    uint64_t    min = KOU_TIMER_NONE;
    kou_list_t *n, *next;

    for (n = w->overflow.next; n != &w->overflow; n = next) {
        kou_timer_t *t = kou_container_of(n, kou_timer_t, node);

        next = n->next;
        if ((t->expire >> KOU_TIMER_SPAN) == block) {
            kou_list_remove(n);
            kou_timer_place(w, t);
        } else if (t->expire < min) {
            min = t->expire;
        }
    }
    w->overflow_min = min;
}

/*
 * Restore the invariants after tick moved: if tick + 1 starts a block of
 * some level, the slot of that block must come down before anything is
 * placed against the new base. Highest level first, so that what comes
 * down lands directly where it belongs.
 */
static void
kou_timer_fixup(kou_timer_wheel_t *w)
{
    uint64_t base = w->tick + 1;

    if ((base & (((uint64_t) 1 << KOU_TIMER_SPAN) - 1)) == 0
        && !kou_list_empty(&w->overflow))
    {
        kou_timer_cascade_overflow(w);
    }
    for (unsigned l = KOU_TIMER_LEVELS - 1; l >= 1; l--) {
        unsigned shift = l * KOU_TIMER_BITS;
        unsigned i;

        if ((base & (((uint64_t) 1 << shift) - 1)) != 0) {
            continue;
        }
        i = (unsigned) (base >> shift) & (KOU_TIMER_SLOTS - 1);
        if (w->bitmap[l] & ((uint64_t) 1 << i)) {
            kou_timer_cascade(w, l, i);
        }
    }
}

/*
 * Run the timers of list (a local head). A handler may stop or re-arm any
 * of the others, so the next one is read afresh each time.
 */
static void
kou_timer_run(kou_timer_wheel_t *w, kou_list_t *list)
{
    while (!kou_list_empty(list)) {
        kou_timer_t *t = kou_container_of(list->next, kou_timer_t, node);

        kou_list_remove(&t->node);
        w->count--;
        t->handler(t);
    }
}

void
kou_timer_advance(kou_timer_wheel_t *w, uint64_t now_ms)
{
    kou_list_t list;

    if (now_ms < w->now) {
        now_ms = w->now;
    }
    /* Handlers arm timers against the real time, not the expired tick. */
    w->now = now_ms;

    kou_list_init(&list);
    kou_timer_splice(&w->due, &list);
    kou_timer_run(w, &list);

    for (;;) {
        kou_timer_event_t ev = kou_timer_next_event(w);

        if (ev.time > now_ms) {
            break;
        }
        if (ev.level == 0) {
            unsigned i = (unsigned) ev.time & (KOU_TIMER_SLOTS - 1);

            /* Detach first: the cascade below may refill this slot. */
            w->tick = ev.time;
            kou_timer_splice(&w->slots[0][i], &list);
            w->bitmap[0] &= ~((uint64_t) 1 << i);
            kou_timer_fixup(w);
            kou_timer_run(w, &list);
        } else {
            /* Nothing before ev.time: jump to it and bring its slot down. */
            w->tick = ev.time - 1;
            kou_timer_fixup(w);
        }
    }

    /*
     * Nothing is left at or before now_ms. Blocks skipped over were empty;
     * one starting at now_ms + 1 must come down now.
     */
    w->tick = now_ms;
    kou_timer_fixup(w);
}

int64_t
kou_timer_next(const kou_timer_wheel_t *w)
{
    kou_timer_event_t ev;

    if (!kou_list_empty(&w->due)) {
        return 0;
    }
    if (w->count == 0) {
        return -1;
    }
    ev = kou_timer_next_event(w);
    if (ev.time == KOU_TIMER_NONE) {
        /* Armed timers only in a list being run: advance is in progress. */
        return 0;
    }
    if (ev.time <= w->now) {
        return 0;
    }
    return ev.time - w->now > (uint64_t) INT64_MAX
               ? INT64_MAX
               : (int64_t) (ev.time - w->now);
}
