/*
 * Timer wheel: expiry order, exactness, re-arming from handlers, the bound
 * that kou_timer_next() promises, long delays and long jumps of the clock.
 */

#include <check.h>
#include <stdlib.h>

#include "timer.h"

#define KOU_T_MAX 10000

/*
 * Check records every passing assertion (a write per call); in the loops
 * that check millions of values, assert only once a value is wrong.
 */
#define KOU_T_CHECK(cond, assertion) \
    do {                             \
        if (!(cond)) {               \
            assertion;               \
        }                            \
    } while (0)
#define KOU_T_EQ(a, b) KOU_T_CHECK((a) == (b), ck_assert_uint_eq(a, b))
#define KOU_T_LE(a, b) KOU_T_CHECK((a) <= (b), ck_assert_uint_le(a, b))
#define KOU_T_LT(a, b) KOU_T_CHECK((a) < (b), ck_assert_uint_lt(a, b))

/* What a handler saw: one record per firing, in firing order. */
typedef struct {
    uint64_t expire;
    uint64_t seq;     /* arming order */
    uint64_t now;     /* the wheel's clock when it fired */
    size_t   id;
} kou_t_fire_t;

typedef struct {
    kou_timer_t timer;
    size_t      id;
    uint64_t    seq;
    bool        armed;       /* model: should be armed */
    uint64_t    expire;      /* model: expected expiry */
    int         action;      /* what the handler does, see kou_t_handler */
    uint64_t    arg;
    size_t      other;
} kou_t_obj_t;

enum {
    KOU_T_RECORD = 0,
    KOU_T_REARM,        /* start itself again with delay arg */
    KOU_T_STOP_OTHER,   /* stop objs[other] */
    KOU_T_START_OTHER,  /* start objs[other] with delay arg */
    KOU_T_REARM_RANDOM  /* start itself again with a random delay */
};

static kou_timer_wheel_t kou_t_wheel;
static kou_t_obj_t       kou_t_objs[KOU_T_MAX];
static kou_t_fire_t      kou_t_fired[4 * KOU_T_MAX];
static size_t            kou_t_nfired;
static uint64_t          kou_t_seq;
static uint64_t          kou_t_rng = 0x9e3779b97f4a7c15ull;

static uint64_t
kou_t_rand(void)
{
    /* xorshift64*: deterministic, so a failure replays. */
    kou_t_rng ^= kou_t_rng >> 12;
    kou_t_rng ^= kou_t_rng << 25;
    kou_t_rng ^= kou_t_rng >> 27;
    return kou_t_rng * 0x2545f4914f6cdd1dull;
}

static uint64_t kou_t_delay(void);

static void
kou_t_start(size_t id, uint64_t delay)
{
    kou_t_obj_t *o = &kou_t_objs[id];

    kou_timer_start(&kou_t_wheel, &o->timer, delay);
    o->seq = kou_t_seq++;
    o->armed = true;
    o->expire = kou_t_wheel.now + delay;
}

static void
kou_t_stop(size_t id)
{
    kou_timer_stop(&kou_t_wheel, &kou_t_objs[id].timer);
    kou_t_objs[id].armed = false;
}

static void
kou_t_handler(kou_timer_t *t)
{
    kou_t_obj_t *o = t->data;

    KOU_T_CHECK(!kou_timer_armed(t), ck_assert(!kou_timer_armed(t)));
    KOU_T_LT(kou_t_nfired, kou_nelem(kou_t_fired));
    kou_t_fired[kou_t_nfired].expire = t->expire;
    kou_t_fired[kou_t_nfired].seq = o->seq;
    kou_t_fired[kou_t_nfired].now = kou_t_wheel.now;
    kou_t_fired[kou_t_nfired].id = o->id;
    kou_t_nfired++;
    o->armed = false;

    switch (o->action) {
    case KOU_T_REARM:
        kou_t_start(o->id, o->arg);
        break;
    case KOU_T_STOP_OTHER:
        kou_t_stop(o->other);
        break;
    case KOU_T_START_OTHER:
        kou_t_start(o->other, o->arg);
        break;
    case KOU_T_REARM_RANDOM:
        kou_t_start(o->id, kou_t_delay());
        break;
    default:
        break;
    }
}

static void
kou_t_setup_at(uint64_t now)
{
    kou_timer_wheel_init(&kou_t_wheel, now);
    for (size_t i = 0; i < KOU_T_MAX; i++) {
        memset(&kou_t_objs[i], 0, sizeof(kou_t_objs[i]));
        kou_t_objs[i].id = i;
        kou_timer_init(&kou_t_objs[i].timer, kou_t_handler, &kou_t_objs[i]);
    }
    kou_t_nfired = 0;
    kou_t_seq = 0;
}

static void
kou_t_setup(void)
{
    kou_t_setup_at(1000);
}

/* Firings are in (expiry, arming order) and none fired before its time. */
static void
kou_t_check_order(void)
{
    for (size_t i = 0; i < kou_t_nfired; i++) {
        KOU_T_LE(kou_t_fired[i].expire, kou_t_fired[i].now);
        if (i == 0) {
            continue;
        }
        KOU_T_LE(kou_t_fired[i - 1].expire, kou_t_fired[i].expire);
        if (kou_t_fired[i - 1].expire == kou_t_fired[i].expire) {
            KOU_T_LT(kou_t_fired[i - 1].seq, kou_t_fired[i].seq);
        }
    }
}

/* A delay drawn from a random scale, so every level and overflow is hit. */
static uint64_t
kou_t_delay(void)
{
    static const unsigned bits[] = { 0, 3, 6, 7, 12, 13, 18, 19, 24, 26, 30 };
    unsigned b = bits[kou_t_rand() % kou_nelem(bits)];

    return b == 0 ? 0 : kou_t_rand() % ((uint64_t) 1 << b);
}

/* ---- order and exactness ---- */

START_TEST(test_order_10000_ms_by_ms)
{
    /* Stepping 1 ms at a time, each timer fires at exactly its expiry. */
    for (size_t i = 0; i < KOU_T_MAX; i++) {
        kou_t_start(i, 1 + kou_t_rand() % 20000);
    }
    KOU_T_EQ(kou_t_wheel.count, KOU_T_MAX);
    for (uint64_t now = 1001; now <= 1000 + 20000; now++) {
        kou_timer_advance(&kou_t_wheel, now);
    }
    KOU_T_EQ(kou_t_nfired, KOU_T_MAX);
    KOU_T_EQ(kou_t_wheel.count, 0);
    kou_t_check_order();
    for (size_t i = 0; i < kou_t_nfired; i++) {
        KOU_T_EQ(kou_t_fired[i].now, kou_t_fired[i].expire);
    }
    ck_assert_int_eq(kou_timer_next(&kou_t_wheel), -1);
}
END_TEST

START_TEST(test_order_10000_random_steps)
{
    /*
     * Delays from 0 to 2^30 ms, the clock moving by random steps: every
     * timer fires in the first advance that reaches its expiry, in order.
     */
    uint64_t prev = kou_t_wheel.now;

    for (size_t i = 0; i < KOU_T_MAX; i++) {
        kou_t_start(i, kou_t_delay());
    }
    while (kou_t_wheel.count > 0) {
        size_t   before = kou_t_nfired;
        uint64_t now = prev + kou_t_delay() + 1;

        kou_timer_advance(&kou_t_wheel, now);
        for (size_t i = before; i < kou_t_nfired; i++) {
            /* delay 0 at the start: due at once, fires at the first */
            KOU_T_CHECK(kou_t_fired[i].expire > prev
                            || kou_t_fired[i].expire == 1000,
                        ck_assert_uint_gt(kou_t_fired[i].expire, prev));
            KOU_T_LE(kou_t_fired[i].expire, now);
            KOU_T_EQ(kou_t_fired[i].now, now);
        }
        prev = now;
    }
    KOU_T_EQ(kou_t_nfired, KOU_T_MAX);
    kou_t_check_order();
    for (size_t i = 0; i < KOU_T_MAX; i++) {
        KOU_T_EQ(kou_timer_armed(&kou_t_objs[i].timer), false);
    }
}
END_TEST

START_TEST(test_ties_in_arming_order_across_levels)
{
    /*
     * Same expiry, armed at different times: from overflow, level 3,
     * level 2, level 1 and level 0. They fire in arming order.
     */
    uint64_t expire = 1000 + ((uint64_t) 1 << 25) + 77;
    uint64_t at[] = { 1000, expire - 3000000, expire - 100000,
                      expire - 1000, expire - 10, expire - 1 };

    for (size_t i = 0; i < kou_nelem(at); i++) {
        kou_timer_advance(&kou_t_wheel, at[i]);
        kou_t_start(i, expire - at[i]);
    }
    /* And one armed first at a later time, then reset to the same one. */
    kou_t_start(10, 5);
    kou_t_start(10, expire - kou_t_wheel.now);
    kou_timer_advance(&kou_t_wheel, expire - 1);
    ck_assert_uint_eq(kou_t_nfired, 0);
    kou_timer_advance(&kou_t_wheel, expire);
    ck_assert_uint_eq(kou_t_nfired, kou_nelem(at) + 1);
    for (size_t i = 0; i < kou_nelem(at); i++) {
        ck_assert_uint_eq(kou_t_fired[i].id, i);
    }
    ck_assert_uint_eq(kou_t_fired[kou_nelem(at)].id, 10);
}
END_TEST

START_TEST(test_tie_armed_by_handler_at_block_start)
{
    /*
     * A (armed first, at level 1) and B (armed by a handler just before
     * A's 64 ms block starts) expire together: A first.
     */
    kou_t_objs[1].action = KOU_T_START_OTHER;
    kou_t_objs[1].other = 2;
    kou_t_objs[1].arg = 1;
    kou_t_start(0, 88);                  /* 1088, a block start */
    kou_t_start(1, 87);
    kou_timer_advance(&kou_t_wheel, 1087);
    ck_assert_uint_eq(kou_t_nfired, 1);
    kou_timer_advance(&kou_t_wheel, 1088);
    ck_assert_uint_eq(kou_t_nfired, 3);
    ck_assert_uint_eq(kou_t_fired[1].id, 0);
    ck_assert_uint_eq(kou_t_fired[2].id, 2);
}
END_TEST

/* ---- start, reset, stop ---- */

START_TEST(test_reset_moves_expiry)
{
    kou_t_start(0, 100);
    kou_timer_advance(&kou_t_wheel, 1050);
    kou_t_start(0, 100);                 /* now due at 1150 */
    kou_timer_advance(&kou_t_wheel, 1149);
    ck_assert_uint_eq(kou_t_nfired, 0);
    kou_timer_advance(&kou_t_wheel, 1150);
    ck_assert_uint_eq(kou_t_nfired, 1);
    ck_assert_uint_eq(kou_t_fired[0].now, 1150);

    /* Reset to a shorter delay, from another level. */
    kou_t_start(1, 100000);
    kou_t_start(1, 3);
    ck_assert_uint_eq(kou_t_wheel.count, 1);
    kou_timer_advance(&kou_t_wheel, 1153);
    ck_assert_uint_eq(kou_t_nfired, 2);
    kou_timer_advance(&kou_t_wheel, 1000000);
    ck_assert_uint_eq(kou_t_nfired, 2);
}
END_TEST

START_TEST(test_stop_never_fires)
{
    kou_t_start(0, 10);
    kou_t_start(1, 10);
    kou_t_start(2, 5000000);
    kou_t_start(3, 0);
    kou_t_start(4, (uint64_t) 1 << 30);
    kou_t_stop(0);
    kou_t_stop(2);
    kou_t_stop(3);
    kou_t_stop(4);
    ck_assert(!kou_timer_armed(&kou_t_objs[0].timer));
    ck_assert_uint_eq(kou_t_wheel.count, 1);
    kou_timer_advance(&kou_t_wheel, 1000 + ((uint64_t) 1 << 31));
    ck_assert_uint_eq(kou_t_nfired, 1);
    ck_assert_uint_eq(kou_t_fired[0].id, 1);
    ck_assert_int_eq(kou_timer_next(&kou_t_wheel), -1);
}
END_TEST

START_TEST(test_stop_unarmed_is_noop)
{
    kou_t_start(1, 20);
    kou_t_stop(0);                       /* never armed */
    kou_t_stop(0);
    ck_assert_uint_eq(kou_t_wheel.count, 1);
    ck_assert(kou_timer_armed(&kou_t_objs[1].timer));
    kou_timer_advance(&kou_t_wheel, 1020);
    ck_assert_uint_eq(kou_t_nfired, 1);
    kou_t_stop(1);                       /* already fired */
    ck_assert_uint_eq(kou_t_wheel.count, 0);
}
END_TEST

START_TEST(test_stop_last_of_slot_keeps_next_exact)
{
    /*
     * Emptying a slot by stop must clear its trace: next() then points at
     * the remaining timer, and the stopped slot's time passes quietly.
     */
    kou_t_start(0, 5);
    kou_t_start(1, 300);
    kou_t_stop(0);
    ck_assert_int_gt(kou_timer_next(&kou_t_wheel), 5);
    ck_assert_int_le(kou_timer_next(&kou_t_wheel), 300);
    kou_timer_advance(&kou_t_wheel, 1299);
    ck_assert_uint_eq(kou_t_nfired, 0);
    kou_timer_advance(&kou_t_wheel, 1300);
    ck_assert_uint_eq(kou_t_nfired, 1);
}
END_TEST

/* ---- handlers ---- */

START_TEST(test_handler_rearms_itself_delay_0)
{
    kou_t_objs[0].action = KOU_T_REARM;
    kou_t_objs[0].arg = 0;
    kou_t_start(0, 10);
    kou_timer_advance(&kou_t_wheel, 1010);
    /* Fired once; re-armed and due, but not run again in the same call. */
    ck_assert_uint_eq(kou_t_nfired, 1);
    ck_assert(kou_timer_armed(&kou_t_objs[0].timer));
    ck_assert_int_eq(kou_timer_next(&kou_t_wheel), 0);
    kou_timer_advance(&kou_t_wheel, 1010);
    ck_assert_uint_eq(kou_t_nfired, 2);
    kou_timer_advance(&kou_t_wheel, 5000);
    ck_assert_uint_eq(kou_t_nfired, 3);
    ck_assert_uint_eq(kou_t_fired[2].expire, 1010);
    kou_t_check_order();
}
END_TEST

START_TEST(test_handler_rearms_itself_periodic)
{
    /* Delays count from the clock the advance moved to, not the expiry. */
    kou_t_objs[0].action = KOU_T_REARM;
    kou_t_objs[0].arg = 7;
    kou_t_start(0, 7);
    kou_timer_advance(&kou_t_wheel, 1100);
    ck_assert_uint_eq(kou_t_nfired, 1);
    ck_assert_uint_eq(kou_t_objs[0].timer.expire, 1107);
    for (uint64_t now = 1101; now <= 1107 + 70; now++) {
        kou_timer_advance(&kou_t_wheel, now);
    }
    ck_assert_uint_eq(kou_t_nfired, 12);
    for (size_t i = 1; i < kou_t_nfired; i++) {
        ck_assert_uint_eq(kou_t_fired[i].now, 1100 + 7 * i);
    }
}
END_TEST

START_TEST(test_handler_stops_other_due_same_tick)
{
    kou_t_objs[0].action = KOU_T_STOP_OTHER;
    kou_t_objs[0].other = 1;
    kou_t_start(0, 50);
    kou_t_start(1, 50);                  /* same tick, after 0 */
    kou_t_start(2, 50);
    kou_timer_advance(&kou_t_wheel, 1050);
    ck_assert_uint_eq(kou_t_nfired, 2);
    ck_assert_uint_eq(kou_t_fired[0].id, 0);
    ck_assert_uint_eq(kou_t_fired[1].id, 2);
    ck_assert(!kou_timer_armed(&kou_t_objs[1].timer));
    ck_assert_uint_eq(kou_t_wheel.count, 0);
}
END_TEST

START_TEST(test_handler_stops_other_due_later_in_advance)
{
    kou_t_objs[0].action = KOU_T_STOP_OTHER;
    kou_t_objs[0].other = 1;
    kou_t_start(0, 50);
    kou_t_start(1, 5000);                /* due in the same advance */
    kou_t_start(2, 6000);
    kou_timer_advance(&kou_t_wheel, 100000);
    ck_assert_uint_eq(kou_t_nfired, 2);
    ck_assert_uint_eq(kou_t_fired[1].id, 2);
}
END_TEST

START_TEST(test_handler_restarts_other_due)
{
    /* A due timer re-armed by an earlier handler leaves this advance. */
    kou_t_objs[0].action = KOU_T_START_OTHER;
    kou_t_objs[0].other = 1;
    kou_t_objs[0].arg = 30;
    kou_t_start(0, 10);
    kou_t_start(1, 20);
    kou_timer_advance(&kou_t_wheel, 1025);
    ck_assert_uint_eq(kou_t_nfired, 1);
    ck_assert_uint_eq(kou_t_objs[1].timer.expire, 1055);
    kou_timer_advance(&kou_t_wheel, 1054);
    ck_assert_uint_eq(kou_t_nfired, 1);
    kou_timer_advance(&kou_t_wheel, 1055);
    ck_assert_uint_eq(kou_t_nfired, 2);
}
END_TEST

START_TEST(test_handler_arms_within_window_fires_later)
{
    /*
     * The clock reads now_ms while handlers run: a 5 ms timer armed by a
     * handler of a tick that expired long ago still gets its 5 ms.
     */
    kou_t_objs[0].action = KOU_T_START_OTHER;
    kou_t_objs[0].other = 1;
    kou_t_objs[0].arg = 5;
    kou_t_start(0, 10);
    kou_timer_advance(&kou_t_wheel, 2000);
    ck_assert_uint_eq(kou_t_nfired, 1);
    ck_assert_uint_eq(kou_t_fired[0].now, 2000);
    ck_assert(kou_timer_armed(&kou_t_objs[1].timer));
    kou_timer_advance(&kou_t_wheel, 2004);
    ck_assert_uint_eq(kou_t_nfired, 1);
    kou_timer_advance(&kou_t_wheel, 2005);
    ck_assert_uint_eq(kou_t_nfired, 2);
}
END_TEST

START_TEST(test_delay_0_outside_advance)
{
    kou_t_start(0, 0);
    ck_assert_int_eq(kou_timer_next(&kou_t_wheel), 0);
    kou_t_start(1, 1);
    kou_timer_advance(&kou_t_wheel, 1000);   /* same time: 0 fires */
    ck_assert_uint_eq(kou_t_nfired, 1);
    ck_assert_uint_eq(kou_t_fired[0].id, 0);
    kou_timer_advance(&kou_t_wheel, 1001);
    ck_assert_uint_eq(kou_t_nfired, 2);
}
END_TEST

/* ---- next() ---- */

START_TEST(test_next_values)
{
    ck_assert_int_eq(kou_timer_next(&kou_t_wheel), -1);
    kou_t_start(0, 5);
    ck_assert_int_ge(kou_timer_next(&kou_t_wheel), 1);
    ck_assert_int_le(kou_timer_next(&kou_t_wheel), 5);
    kou_timer_advance(&kou_t_wheel, 1005);
    ck_assert_int_eq(kou_timer_next(&kou_t_wheel), -1);

    kou_t_start(1, 10 * 3600 * 1000);
    ck_assert_int_ge(kou_timer_next(&kou_t_wheel), 1);
    ck_assert_int_le(kou_timer_next(&kou_t_wheel), 10 * 3600 * 1000);
}
END_TEST

/* Sleep as next() says until the timer fires: never early, few wake-ups. */
static void
kou_t_sleep_until_fired(uint64_t delay)
{
    uint64_t expire = kou_t_wheel.now + delay;
    size_t   wakeups = 0;
    size_t   before = kou_t_nfired;

    kou_t_start(0, delay);
    while (kou_t_nfired == before) {
        int64_t n = kou_timer_next(&kou_t_wheel);

        ck_assert_int_ge(n, 0);
        ck_assert_uint_le(kou_t_wheel.now + (uint64_t) n, expire);
        kou_timer_advance(&kou_t_wheel, kou_t_wheel.now + (uint64_t) n);
        ck_assert_uint_le(++wakeups, 12);
    }
    ck_assert_uint_eq(kou_t_fired[before].now, expire);
}

START_TEST(test_next_sleep_loop)
{
    static const uint64_t delays[] = {
        1, 63, 64, 65, 4095, 4096, 4097, 262143, 262144, 262145,
        16777215, 16777216, 16777217, 3 * 86400000ull, 30 * 86400000ull
    };

    for (size_t i = 0; i < kou_nelem(delays); i++) {
        kou_t_sleep_until_fired(delays[i]);
        /* And again from an unaligned clock. */
        kou_timer_advance(&kou_t_wheel, kou_t_wheel.now + 12345 + i);
        kou_t_sleep_until_fired(delays[i]);
    }
}
END_TEST

/* ---- long delays, big jumps ---- */

START_TEST(test_long_delays_exact)
{
    /*
     * Delays at and around every level boundary and deep into overflow,
     * from a clock just before a 2^24 boundary: each fires at the advance
     * that reaches its expiry and not at the one just before.
     */
    static const uint64_t delays[] = {
        63, 64, 65, 4095, 4096, 4097, 262143, 262144, 262145,
        16777215, 16777216, 16777217, 33554432 + 5, 3 * 86400000ull,
        30 * 86400000ull, 400 * 86400000ull
    };
    uint64_t start = ((uint64_t) 5 << 24) - 3;

    kou_t_setup_at(start);
    for (size_t i = 0; i < kou_nelem(delays); i++) {
        kou_t_start(i, delays[i]);
    }
    for (size_t i = 0; i < kou_nelem(delays); i++) {
        kou_timer_advance(&kou_t_wheel, start + delays[i] - 1);
        ck_assert_uint_eq(kou_t_nfired, i);
        kou_timer_advance(&kou_t_wheel, start + delays[i]);
        ck_assert_uint_eq(kou_t_nfired, i + 1);
        ck_assert_uint_eq(kou_t_fired[i].id, i);
    }
}
END_TEST

START_TEST(test_big_jump_runs_all_in_order)
{
    /* Ten days at once: everything due fires in order, the rest waits. */
    uint64_t jump = 10 * 86400000ull;
    size_t   due = 0;

    for (size_t i = 0; i < 2000; i++) {
        uint64_t d = kou_t_rand() % (2 * jump);

        kou_t_start(i, d);
        due += d <= jump;
    }
    kou_timer_advance(&kou_t_wheel, 1000 + jump);
    ck_assert_uint_eq(kou_t_nfired, due);
    kou_t_check_order();
    ck_assert_uint_eq(kou_t_wheel.count, 2000 - due);
    ck_assert_int_gt(kou_timer_next(&kou_t_wheel), 0);
    kou_timer_advance(&kou_t_wheel, 1000 + 2 * jump);
    ck_assert_uint_eq(kou_t_nfired, 2000);
    kou_t_check_order();
}
END_TEST

START_TEST(test_clock_never_goes_back)
{
    kou_timer_advance(&kou_t_wheel, 5000);
    kou_t_start(0, 10);
    kou_timer_advance(&kou_t_wheel, 10);
    ck_assert_uint_eq(kou_t_wheel.now, 5000);
    ck_assert_uint_eq(kou_t_nfired, 0);
    kou_timer_advance(&kou_t_wheel, 5010);
    ck_assert_uint_eq(kou_t_nfired, 1);
}
END_TEST

/* ---- against a model ---- */

/*
 * Random starts, resets, stops and advances on 300 timers, compared with
 * a brute-force model: what fires, in which order, and next()'s bound.
 */
static void
kou_t_model_run(uint64_t start, uint64_t seed, size_t steps)
{
    enum { N = 300 };
    static kou_t_fire_t expect[N];

    kou_t_rng = seed;
    kou_t_setup_at(start);
    /*
     * A third of the timers re-arm themselves when they fire: what they
     * arm must not fire in the same advance, and must keep its order.
     */
    for (size_t i = 0; i < N; i += 3) {
        kou_t_objs[i].action = KOU_T_REARM_RANDOM;
    }

    for (size_t step = 0; step < steps; step++) {
        uint64_t r = kou_t_rand() % 10;
        size_t   id = kou_t_rand() % N;

        if (r < 5) {
            kou_t_start(id, kou_t_delay());
        } else if (r < 7) {
            kou_t_stop(id);
        } else {
            uint64_t now = kou_t_wheel.now + kou_t_delay();
            size_t   n = 0;

            for (size_t i = 0; i < N; i++) {
                if (kou_t_objs[i].armed && kou_t_objs[i].expire <= now) {
                    /* insertion sort by (expire, seq) */
                    size_t j = n++;

                    while (j > 0
                           && (expect[j - 1].expire > kou_t_objs[i].expire
                               || (expect[j - 1].expire
                                       == kou_t_objs[i].expire
                                   && expect[j - 1].seq > kou_t_objs[i].seq)))
                    {
                        expect[j] = expect[j - 1];
                        j--;
                    }
                    expect[j].expire = kou_t_objs[i].expire;
                    expect[j].seq = kou_t_objs[i].seq;
                    expect[j].id = i;
                }
            }
            kou_t_nfired = 0;
            kou_timer_advance(&kou_t_wheel, now);
            KOU_T_EQ(kou_t_nfired, n);
            for (size_t i = 0; i < n; i++) {
                KOU_T_EQ(kou_t_fired[i].id, expect[i].id);
                KOU_T_EQ(kou_t_fired[i].expire, expect[i].expire);
            }
        }

        /* next(): -1 iff nothing armed, never past the earliest expiry. */
        {
            uint64_t min = UINT64_MAX;
            size_t   armed = 0;
            int64_t  next = kou_timer_next(&kou_t_wheel);

            for (size_t i = 0; i < N; i++) {
                KOU_T_EQ(kou_timer_armed(&kou_t_objs[i].timer),
                         kou_t_objs[i].armed);
                if (kou_t_objs[i].armed) {
                    armed++;
                    min = kou_min(min, kou_t_objs[i].expire);
                }
            }
            KOU_T_EQ(kou_t_wheel.count, armed);
            if (armed == 0) {
                KOU_T_CHECK(next == -1, ck_assert_int_eq(next, -1));
            } else {
                KOU_T_CHECK(next >= 0, ck_assert_int_ge(next, 0));
                KOU_T_LE(kou_t_wheel.now + (uint64_t) next, min);
            }
        }
    }
}

START_TEST(test_model_random)
{
    kou_t_model_run(0, 1, 60000);
    kou_t_model_run(((uint64_t) 1 << 24) - 70, 2, 60000);
    kou_t_model_run(((uint64_t) 1 << 40) - 4097, 3, 60000);
    kou_t_model_run(123456789, 4, 60000);
}
END_TEST

static Suite *
kou_timer_suite(void)
{
    Suite *s = suite_create("timer");
    TCase *tc = tcase_create("core");

    tcase_add_checked_fixture(tc, kou_t_setup, NULL);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_order_10000_ms_by_ms);
    tcase_add_test(tc, test_order_10000_random_steps);
    tcase_add_test(tc, test_ties_in_arming_order_across_levels);
    tcase_add_test(tc, test_tie_armed_by_handler_at_block_start);
    tcase_add_test(tc, test_reset_moves_expiry);
    tcase_add_test(tc, test_stop_never_fires);
    tcase_add_test(tc, test_stop_unarmed_is_noop);
    tcase_add_test(tc, test_stop_last_of_slot_keeps_next_exact);
    tcase_add_test(tc, test_handler_rearms_itself_delay_0);
    tcase_add_test(tc, test_handler_rearms_itself_periodic);
    tcase_add_test(tc, test_handler_stops_other_due_same_tick);
    tcase_add_test(tc, test_handler_stops_other_due_later_in_advance);
    tcase_add_test(tc, test_handler_restarts_other_due);
    tcase_add_test(tc, test_handler_arms_within_window_fires_later);
    tcase_add_test(tc, test_delay_0_outside_advance);
    tcase_add_test(tc, test_next_values);
    tcase_add_test(tc, test_next_sleep_loop);
    tcase_add_test(tc, test_long_delays_exact);
    tcase_add_test(tc, test_big_jump_runs_all_in_order);
    tcase_add_test(tc, test_clock_never_goes_back);
    tcase_add_test(tc, test_model_random);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(kou_timer_suite());
    int      failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
