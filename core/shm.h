/*
 * State shared by the master and every worker, in one anonymous shared
 * mapping created by the master before the first fork: it survives reloads
 * and worker restarts. Counters are written by one process each (the master
 * for its own fields), so no lock is needed; readers may see a value one
 * update old.
 */

#ifndef KOU_SHM_H
#define KOU_SHM_H

#include "kou.h"

typedef struct {
    uint64_t generation;              /* current config generation */
    uint64_t reloads_ok;
    uint64_t reloads_error;
    int64_t  last_reload_ok_time;     /* unix seconds, 0 never */
    int64_t  last_reload_time;        /* unix seconds of the last attempt */
    uint64_t worker_restarts;
    char     last_reload_error[512];  /* NUL-terminated, "" when ok */
} kou_shm_master_t;

typedef struct {
    kou_shm_master_t master;
} kou_shm_t;

/* The segment, or NULL before kou_shm_create (e.g. in `kourier -t`). */
extern kou_shm_t *kou_shm;

/* Create the segment in the master. KOU_OK or KOU_ERROR. */
int kou_shm_create(void);

#endif /* KOU_SHM_H */
