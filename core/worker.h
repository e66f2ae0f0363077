/*
 * A worker process: one generation's configuration, its own copy of the
 * modules, one event loop serving the shared listening sockets.
 */

#ifndef KOU_WORKER_H
#define KOU_WORKER_H

#include "config.h"
#include "conn.h"
#include "http_parse.h"
#include "kou.h"
#include "module.h"
#include "router.h"

typedef struct {
    kou_config_t     *cf;
    kou_modules_t    *mods;
    kou_router_t     *router;
    kou_http_limits_t plimits;
    kou_listener_t   *ls;
    size_t            nls;
    kou_list_t        conns;
    size_t            nconns;
    bool              draining;
    bool              accept_paused;
    int               slot;
    uint64_t          generation;
    size_t            in_size;     /* input buffer size */
} kou_worker_t;

extern kou_worker_t kou_worker;

/*
 * The worker's main: runs in the child after fork and never returns.
 * listen_fds[i] serves cf->listen[i]. ready_fd gets "R" once serving, or an
 * error message before exiting with status 2.
 */
void kou_worker_main(kou_config_t *cf, const int *listen_fds, int ready_fd,
                     int slot, int stat, uint64_t generation)
    __attribute__((noreturn));

/* Stop accepting (connection limit reached) / accept again. */
void kou_worker_accept_pause(void);
void kou_worker_accept_resume(void);

#endif /* KOU_WORKER_H */
