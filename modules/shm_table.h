/*
 * Named entries in a table in shared memory, claimed without a lock by
 * the tree's modules (metrics: routes; proxy: route and upstream pairs).
 *
 * Each entry starts with a 64-bit state word: 0 while free, then
 * hash | CLAIMED once a process has taken it for a name with that hash,
 * then | READY once the name is written. Every process and every
 * generation probes from the same slot for the same name, so a name finds
 * the entry, and the counts, it had before a reload or a restart. A
 * process that finds the hash claimed but not ready waits a little for
 * the claimant; if the claimant died in that window, it writes the same
 * name itself (the same hash means the same bytes, barring a 62-bit
 * collision).
 *
 * Internal to the modules built in this tree: not part of the module ABI.
 */

#ifndef KOU_SHM_TABLE_H
#define KOU_SHM_TABLE_H

#include <stdint.h>

#define KOU_SHM_CLAIMED (UINT64_C(1) << 63)
#define KOU_SHM_READY   (UINT64_C(1) << 62)
#define KOU_SHM_HMASK   (KOU_SHM_READY - 1)

typedef enum {
    KOU_SHM_OTHER,      /* the entry holds another hash: probe on */
    KOU_SHM_WRITE,      /* the caller writes the name, then publishes */
    KOU_SHM_COMPARE     /* a name with this hash is there: compare it */
} kou_shm_probe_e;

/*
 * Probe the entry whose state word is *state for hash h (already masked
 * with KOU_SHM_HMASK, not 0).
 */
static inline kou_shm_probe_e
kou_shm_probe(uint64_t *state, uint64_t h)
{
    uint64_t cur = __atomic_load_n(state, __ATOMIC_ACQUIRE);

    if (cur == 0) {
        uint64_t expect = 0;

        if (__atomic_compare_exchange_n(state, &expect, h | KOU_SHM_CLAIMED,
                                        0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
        {
            return KOU_SHM_WRITE;
        }
        cur = expect;
    }
    if ((cur & KOU_SHM_HMASK) != h) {
        return KOU_SHM_OTHER;
    }
    for (long spin = 0; !(cur & KOU_SHM_READY) && spin < 10000000; spin++) {
        cur = __atomic_load_n(state, __ATOMIC_ACQUIRE);
    }
    return cur & KOU_SHM_READY ? KOU_SHM_COMPARE : KOU_SHM_WRITE;
}

/* The name of the entry is written: let the other processes read it. */
static inline void
kou_shm_publish(uint64_t *state, uint64_t h)
{
    __atomic_store_n(state, h | KOU_SHM_CLAIMED | KOU_SHM_READY,
                     __ATOMIC_RELEASE);
}

#endif /* KOU_SHM_TABLE_H */
