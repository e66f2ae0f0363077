/*
 * The shared segment. See shm.h for the layout and who writes what.
 */

#include <errno.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "http_parse.h"
#include "kou_build.h"
#include "shm.h"

kou_shm_t        *kou_shm;
kou_slot_stats_t *kou_slot;
int               kou_slot_id = -1;

static u_char *kou_shm_arena;

int
kou_shm_create(int nslots, size_t arena_size)
{
    size_t              hdr = (sizeof(kou_shm_t) + 63) & ~(size_t) 63;
    size_t              slots = (size_t) nslots * sizeof(kou_slot_stats_t);
    size_t              total = hdr + ((slots + 63) & ~(size_t) 63)
                                + arena_size;
    pthread_mutexattr_t ma;
    void               *p;

    p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
             -1, 0);
    if (p == MAP_FAILED) {
        return KOU_ERROR;
    }
    kou_shm = p;
    kou_shm->pub.size = sizeof(kou_server_stats_t);
    kou_shm->pub.start_time = (int64_t) time(NULL);
    kou_shm->pub.version = PACKAGE_VERSION;
    kou_shm->pub.simd = kou_http_parser_tier();
    kou_shm->pub.nslots = nslots;
    kou_shm->pub.slots = (kou_slot_stats_t *) ((u_char *) p + hdr);
    kou_shm->arena_size = arena_size;
    kou_shm_arena = (u_char *) p + hdr + ((slots + 63) & ~(size_t) 63);

    if (pthread_mutexattr_init(&ma) != 0
        || pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED) != 0
        || pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST) != 0
        || pthread_mutex_init(&kou_shm->lock, &ma) != 0)
    {
        errno = EINVAL;
        return KOU_ERROR;
    }
    pthread_mutexattr_destroy(&ma);
    return KOU_OK;
}

void
kou_shm_attach_slot(int id)
{
    if (kou_shm == NULL || id < 0 || id >= kou_shm->pub.nslots) {
        return;
    }
    kou_slot_id = id;
    kou_slot = (kou_slot_stats_t *) &kou_shm->pub.slots[id];
    /* a slot keeps its counters; gauges belong to the dead owner */
    kou_slot->conns_reading = 0;
    kou_slot->conns_writing = 0;
    kou_slot->conns_idle = 0;
    kou_slot->pid = (uint64_t) getpid();
}

static void
kou_shm_lock(void)
{
    /* a worker that died holding the lock left the table consistent:
       entries are written completely before nblocks is bumped */
    if (pthread_mutex_lock(&kou_shm->lock) == EOWNERDEAD) {
        pthread_mutex_consistent(&kou_shm->lock);
    }
}

void *
kou_shm_alloc(const char *name, size_t size)
{
    void  *p = NULL;
    size_t n;

    if (kou_shm == NULL || name == NULL || size == 0
        || strlen(name) >= sizeof(kou_shm->blocks[0].name))
    {
        return NULL;
    }
    kou_shm_lock();
    for (size_t i = 0; i < kou_shm->nblocks; i++) {
        kou_shm_block_t *b = &kou_shm->blocks[i];
        if (strcmp(b->name, name) == 0) {
            p = b->size == size ? kou_shm_arena + b->off : NULL;
            goto done;
        }
    }
    n = (size + 63) & ~(size_t) 63;
    if (kou_shm->nblocks == KOU_SHM_BLOCKS
        || kou_shm->arena_size - kou_shm->arena_used < n)
    {
        goto done;
    }
    kou_shm_block_t *b = &kou_shm->blocks[kou_shm->nblocks];
    snprintf(b->name, sizeof(b->name), "%s", name);
    b->off = kou_shm->arena_used;
    b->size = size;
    kou_shm->arena_used += n;
    __atomic_store_n(&kou_shm->nblocks, kou_shm->nblocks + 1,
                     __ATOMIC_RELEASE);
    p = kou_shm_arena + b->off;   /* zero: fresh anonymous memory */
done:
    pthread_mutex_unlock(&kou_shm->lock);
    return p;
}

void
kou_shm_parse_error(int status)
{
    static const int statuses[KOU_STATS_NPARSE] = KOU_STATS_PARSE_STATUSES;

    if (kou_slot == NULL) {
        return;
    }
    for (int i = 0; i < KOU_STATS_NPARSE; i++) {
        if (statuses[i] == status) {
            kou_slot->parse_errors[i]++;
            return;
        }
    }
}
