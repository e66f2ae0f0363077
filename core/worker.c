/*
 * A worker process. Created by the master with fork(); loads its modules
 * itself (so a rebuilt .so is read fresh and a module never runs in the
 * master), serves until told to drain or stop, and exits.
 */

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "conn.h"
#include "event.h"
#include "http_request.h"
#include "log.h"
#include "shm.h"
#include "tls.h"
#include "worker.h"

kou_worker_t kou_worker;

static kou_ev_t    kou_worker_sig_ev;
static kou_timer_t kou_worker_stop_timer;

static void
kou_worker_fail(int ready_fd, const char *msg)
{
    kou_log_error("%s", msg);
    if (write(ready_fd, msg, strlen(msg)) < 0) {
        (void) 0;  /* the master also sees our exit status */
    }
    _exit(2);
}

void
kou_worker_accept_pause(void)
{
    if (kou_worker.accept_paused) {
        return;
    }
    kou_log_warn("%zu connections: limit reached, not accepting",
                 kou_worker.nconns);
    for (size_t i = 0; i < kou_worker.nls; i++) {
        if (kou_worker.ls[i].active) {
            kou_loop_del(&kou_worker.ls[i].ev);
            kou_worker.ls[i].active = false;
        }
    }
    kou_worker.accept_paused = true;
}

void
kou_worker_accept_resume(void)
{
    if (kou_worker.nconns >= kou_worker.cf->limits.max_connections) {
        return;
    }
    for (size_t i = 0; i < kou_worker.nls; i++) {
        /* EPOLLEXCLUSIVE: one worker is woken per connection, no herd */
        if (!kou_worker.ls[i].active
            && kou_loop_add(&kou_worker.ls[i].ev, EPOLLIN | EPOLLEXCLUSIVE)
                   == KOU_OK)
        {
            kou_worker.ls[i].active = true;
        }
    }
    kou_worker.accept_paused = false;
}

static void
kou_worker_stop_listening(void)
{
    for (size_t i = 0; i < kou_worker.nls; i++) {
        if (kou_worker.ls[i].active) {
            kou_loop_del(&kou_worker.ls[i].ev);
            kou_worker.ls[i].active = false;
        }
        /* the master keeps its copy: queued connections go to others */
        if (kou_worker.ls[i].ev.fd >= 0) {
            close(kou_worker.ls[i].ev.fd);
            kou_worker.ls[i].ev.fd = -1;
        }
    }
}

static void
kou_worker_stop_timeout(kou_timer_t *t)
{
    (void) t;
    if (kou_worker.nconns > 0) {
        kou_log_notice("shutdown_timeout: closing %zu connections",
                       kou_worker.nconns);
    }
    kou_conn_close_all();
    kou_loop.stop = true;
}

static void
kou_worker_drain(void)
{
    if (kou_worker.draining) {
        return;
    }
    kou_worker.draining = true;
    kou_worker_stop_listening();
    kou_conn_drain_all();
    kou_timer_init(&kou_worker_stop_timer, kou_worker_stop_timeout, NULL);
    kou_timer_add(&kou_worker_stop_timer, kou_worker.cf->shutdown_timeout);
}

static void
kou_worker_signal(kou_ev_t *ev, uint32_t events)
{
    struct signalfd_siginfo si;

    (void) events;
    while (read(ev->fd, &si, sizeof(si)) == sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGQUIT:
            kou_worker_drain();
            break;
        case SIGTERM:
        case SIGINT:
            kou_conn_close_all();
            kou_loop.stop = true;
            break;
        case SIGUSR1:
            if (strcmp(kou_worker.cf->error_log, "stderr") != 0
                && kou_log_open(kou_worker.cf->error_log) != KOU_OK)
            {
                kou_log_error("reopen %s: %s", kou_worker.cf->error_log,
                              strerror(errno));
            }
            kou_modules_reopen(kou_worker.mods);
            break;
        default:
            break;
        }
    }
}

static int
kou_worker_drop_privileges(kou_config_t *cf, char *err, size_t errlen)
{
    struct passwd *pw;
    gid_t          gid;

    if (geteuid() != 0 || cf->user == NULL) {
        return KOU_OK;
    }
    pw = getpwnam(cf->user);
    if (pw == NULL) {
        snprintf(err, errlen, "user \"%s\" does not exist", cf->user);
        return KOU_ERROR;
    }
    gid = pw->pw_gid;
    if (cf->group != NULL) {
        struct group *gr = getgrnam(cf->group);
        if (gr == NULL) {
            snprintf(err, errlen, "group \"%s\" does not exist", cf->group);
            return KOU_ERROR;
        }
        gid = gr->gr_gid;
    }
    if (setgid(gid) != 0 || initgroups(cf->user, gid) != 0
        || setuid(pw->pw_uid) != 0)
    {
        snprintf(err, errlen, "cannot switch to user \"%s\": %s", cf->user,
                 strerror(errno));
        return KOU_ERROR;
    }
    return KOU_OK;
}

/* The router wants a contiguous array of kou_route_t; data points back. */
static kou_router_t *
kou_worker_router(kou_config_t *cf)
{
    static kou_route_t *routes;

    routes = calloc(cf->nroutes + 1, sizeof(kou_route_t));
    if (routes == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < cf->nroutes; i++) {
        routes[i] = cf->routes[i].route;
    }
    return kou_router_create(routes, cf->nroutes);
}

void
kou_worker_main(kou_config_t *cf, const int *listen_fds, int ready_fd,
                int slot, int stat, uint64_t generation)
{
    char     err[1024];
    sigset_t set;
    int      sfd;

    kou_log_set_role("worker");
    /* a master that dies without stopping us: finish in-flight work, exit */
    prctl(PR_SET_PDEATHSIG, SIGQUIT);
    if (getppid() == 1) {
        _exit(0);
    }

    memset(&kou_worker, 0, sizeof(kou_worker));
    kou_shm_attach_slot(stat);
    kou_worker.cf = cf;
    kou_worker.slot = slot;
    kou_worker.generation = generation;
    kou_list_init(&kou_worker.conns);
    kou_worker.plimits.max_request_line = cf->limits.max_request_line;
    kou_worker.plimits.max_header_block = cf->limits.max_header_block;
    kou_worker.plimits.max_headers = cf->limits.max_headers;
    /* room for a whole head at the limit, plus body bytes behind it */
    kou_worker.in_size = kou_max((size_t) cf->limits.max_header_block + 1,
                                 (size_t) 16384);
    kou_worker.in_size = (kou_worker.in_size + 4095) & ~(size_t) 4095;

    if (kou_loop_init() != KOU_OK) {
        snprintf(err, sizeof(err), "epoll_create: %s", strerror(errno));
        kou_worker_fail(ready_fd, err);
    }

    sigemptyset(&set);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        snprintf(err, sizeof(err), "signalfd: %s", strerror(errno));
        kou_worker_fail(ready_fd, err);
    }
    kou_worker_sig_ev.fd = sfd;
    kou_worker_sig_ev.handler = kou_worker_signal;
    kou_loop_add(&kou_worker_sig_ev, EPOLLIN);

    /*
     * Certificates and keys are read before privileges are dropped: key
     * files are usually readable by root only. Every worker reads them
     * afresh, so a reload serves renewed certificates.
     */
    kou_worker.ls = calloc(cf->nlisten + 1, sizeof(kou_listener_t));
    if (kou_worker.ls == NULL) {
        kou_worker_fail(ready_fd, "out of memory");
    }
    for (size_t i = 0; i < cf->nlisten; i++) {
        if (cf->listen[i].tls_conf != NULL
            && kou_tls_listener_create(cf, i, false, &kou_worker.ls[i].tls,
                                       err, sizeof(err)) != KOU_OK)
        {
            kou_worker_fail(ready_fd, err);
        }
    }

    if (kou_worker_drop_privileges(cf, err, sizeof(err)) != KOU_OK) {
        kou_worker_fail(ready_fd, err);
    }

    kou_worker.router = kou_worker_router(cf);
    if (kou_worker.router == NULL) {
        kou_worker_fail(ready_fd, "out of memory");
    }

    if (kou_modules_load(cf, &kou_worker.mods, err, sizeof(err)) != KOU_OK
        || kou_modules_worker_init(kou_worker.mods, err, sizeof(err))
               != KOU_OK)
    {
        kou_worker_fail(ready_fd, err);
    }

    kou_worker.nls = cf->nlisten;
    for (size_t i = 0; i < cf->nlisten; i++) {
        kou_listener_t *ls = &kou_worker.ls[i];
        ls->ev.fd = listen_fds[i];
        ls->ev.handler = kou_conn_accept_handler;
        ls->ev.data = ls;
        ls->text = cf->listen[i].text;
    }
    kou_worker_accept_resume();

    if (write(ready_fd, "R", 1) != 1) {
        _exit(2);
    }
    close(ready_fd);
    kou_log_notice("worker %d ready (generation %llu, slot %d)",
                   (int) getpid(), (unsigned long long) generation, slot);

    while (!kou_loop.stop) {
        kou_loop_once(-1);
        if (kou_worker.draining && kou_worker.nconns == 0) {
            break;
        }
    }

    /* requests first: their cleanups may still call into the modules */
    kou_conn_close_all();
    kou_loop_once(0);   /* run deferred frees */
    for (size_t i = 0; i < kou_worker.nls; i++) {
        kou_tls_listener_free(kou_worker.ls[i].tls);
    }
    kou_modules_worker_exit(kou_worker.mods);
    kou_modules_unload(kou_worker.mods);
    kou_log_info("worker %d exiting", (int) getpid());
    /* exit(), not _exit(): sanitizer builds check the worker for leaks */
    exit(0);
}
