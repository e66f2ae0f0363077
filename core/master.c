/*
 * The master process.
 *
 * It never serves a request and never loads a module: it parses configs,
 * binds sockets, forks processes and reacts to signals, all from one
 * poll() loop fed by a signalfd and by each starting worker's ready pipe.
 * Everything slow or fallible (module code) runs in children.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kou_build.h"
#include "log.h"
#include "master.h"
#include "module.h"
#include "shm.h"
#include "tls.h"
#include "worker.h"

#define KOU_MAX_PROCS        1024
#define KOU_RESPAWN_DELAY_MS 1000
#define KOU_VALIDATE_MS      30000
#define KOU_READY_MS         30000
#define KOU_TERM_GRACE_MS    3000

typedef enum {
    KOU_PROC_STARTING = 0,
    KOU_PROC_READY,
    KOU_PROC_DRAINING,     /* told to finish and exit */
} kou_proc_state_e;

typedef struct {
    pid_t    pid;
    int      slot;
    uint64_t gen;
    int      ready_fd;     /* read end while starting, else -1 */
    unsigned state;
    int      stat;         /* statistics slot in shared memory */
    uint64_t started;      /* spawn time, then drain start */
    bool     killed;
    char     msg[256];     /* what a failing worker wrote */
} kou_proc_t;

typedef struct {
    char                   *text;
    struct sockaddr_storage addr;
    socklen_t               addrlen;
    int                     fd;
    bool                    keep;    /* in the config being built */
} kou_mlistener_t;

typedef struct {
    const kou_master_opts_t *opts;
    kou_config_t    *cf;
    uint64_t         gen;
    kou_proc_t       procs[KOU_MAX_PROCS];
    size_t           nprocs;
    kou_mlistener_t *ls;
    size_t           nls;
    int              sfd;

    /* a reload waiting for its workers */
    kou_config_t    *next_cf;
    uint64_t         reload_started_ns;
    uint64_t         reload_deadline;
    bool             reload_pending;   /* SIGHUP seen, not yet handled */

    /* respawns that wait for the rate limit: slot -> due time (0 none) */
    uint64_t        *respawn_at;
    uint64_t        *last_spawn;
    size_t           nslots;

    int              stopping;         /* 0, SIGQUIT or SIGTERM */
    uint64_t         stop_deadline;
    bool             killed;
    bool             starting;         /* the first generation */
    bool             failed;           /* it did not start: exit 1 */
    int              daemon_fd;        /* tell the parent we are up */
    int              nstats;           /* statistics slots in shm */
    int             *respawn_stat;     /* slot -> stat slot to reuse */
    uint64_t         verdict_seq;
    uint64_t         tls_rotate_at;    /* next session ticket key */
} kou_master_t;

static kou_master_t M;

static uint64_t
kou_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static uint64_t
kou_real_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

void
kou_master_verdict_path(const char *pid_file, char *buf, size_t size)
{
    snprintf(buf, size, "%s.reload", pid_file);
}

/*
 * Record the outcome of a reload for `kourier -s reload` (a file next to
 * the pid file, replaced atomically) and for the metrics module (shm).
 */
static void
kou_master_verdict(bool ok, const char *msg)
{
    char  path[4096], tmp[4200];
    FILE *f;

    if (kou_shm != NULL) {
        kou_server_stats_t *st = &kou_shm->pub;
        if (ok) {
            st->reloads_ok++;
            st->last_reload_ok_time = (int64_t) time(NULL);
            kou_shm->last_reload_error[0] = '\0';
        } else {
            st->reloads_error++;
            snprintf(kou_shm->last_reload_error,
                     sizeof(kou_shm->last_reload_error), "%s", msg);
        }
    }

    kou_master_verdict_path(M.cf->pid_file, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL) {
        kou_log_error("cannot write %s: %s", tmp, strerror(errno));
        return;
    }
    fprintf(f, "%llu %llu %s\n%s\n", (unsigned long long) ++M.verdict_seq,
            (unsigned long long) M.reload_started_ns, ok ? "ok" : "error",
            ok ? "" : msg);
    fclose(f);
    if (rename(tmp, path) != 0) {
        kou_log_error("cannot rename %s: %s", tmp, strerror(errno));
    }
}

/* ---- listeners ---- */

static const char *
kou_sockaddr_text(const struct sockaddr_storage *ss, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const void *) ss;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(buf, size, "%s:%u", ip, ntohs(sin->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const void *) ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, size, "[%s]:%u", ip, ntohs(sin6->sin6_port));
    } else {
        const struct sockaddr_un *sun = (const void *) ss;
        snprintf(buf, size, "unix:%s", sun->sun_path);
    }
    return buf;
}

static int
kou_master_bind(kou_listen_conf_t *lc, int *out, char *err, size_t errlen)
{
    int  fd, one = 1;
    char text[256];
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);

    fd = socket(lc->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd < 0) {
        goto failed;
    }
    if (lc->addr.ss_family == AF_UNIX) {
        struct sockaddr_un *sun = (struct sockaddr_un *) &lc->addr;
        struct stat         st;
        /* a socket file left by an earlier run would make bind fail */
        if (lstat(sun->sun_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            unlink(sun->sun_path);
        }
    } else {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }
    if (lc->addr.ss_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (bind(fd, (struct sockaddr *) &lc->addr, lc->addrlen) != 0
        || listen(fd, lc->backlog) != 0)
    {
        goto failed;
    }
    if (getsockname(fd, (struct sockaddr *) &bound, &blen) == 0) {
        if (lc->addr.ss_family == AF_UNIX) {
            memcpy(&bound, &lc->addr, lc->addrlen);
        }
        kou_log_notice("listening on %s",
                       kou_sockaddr_text(&bound, text, sizeof(text)));
    }
    *out = fd;
    return KOU_OK;

failed:
    snprintf(err, errlen, "%s:%u:%u: cannot listen on %s: %s",
             lc->node->file, lc->node->line, lc->node->col, lc->text,
             strerror(errno));
    if (fd >= 0) {
        close(fd);
    }
    return KOU_ERROR;
}

/*
 * Give every listen entry of cf a socket: the one already bound for the
 * same address text is reused (connections queued on it survive the
 * reload), new addresses are bound now. fds[i] serves cf->listen[i].
 */
static int
kou_master_listeners(kou_config_t *cf, int *fds, char *err, size_t errlen)
{
    size_t first_new = M.nls;

    for (size_t i = 0; i < M.nls; i++) {
        M.ls[i].keep = false;
    }
    for (size_t i = 0; i < cf->nlisten; i++) {
        kou_listen_conf_t *lc = &cf->listen[i];
        size_t             k;

        /*
         * An address written twice (port 0: two ephemeral ports) takes a
         * socket per entry, in order: not one already used by this config.
         */
        for (k = 0; k < M.nls; k++) {
            if (!M.ls[k].keep && strcmp(M.ls[k].text, lc->text) == 0) {
                break;
            }
        }
        if (k == M.nls) {
            kou_mlistener_t *n = realloc(M.ls, (M.nls + 1) * sizeof(*n));
            if (n == NULL) {
                snprintf(err, errlen, "out of memory");
                goto failed;
            }
            M.ls = n;
            memset(&M.ls[k], 0, sizeof(M.ls[k]));
            M.ls[k].text = strdup(lc->text);
            M.ls[k].addr = lc->addr;
            M.ls[k].addrlen = lc->addrlen;
            M.ls[k].fd = -1;
            M.nls++;
            if (M.ls[k].text == NULL
                || kou_master_bind(lc, &M.ls[k].fd, err, errlen) != KOU_OK)
            {
                goto failed;
            }
        }
        M.ls[k].keep = true;
        fds[i] = M.ls[k].fd;
    }
    return KOU_OK;

failed:
    /* forget what this attempt bound; the old generation keeps its own */
    for (size_t k = first_new; k < M.nls; k++) {
        if (M.ls[k].fd >= 0) {
            close(M.ls[k].fd);
        }
        free(M.ls[k].text);
    }
    M.nls = first_new;
    return KOU_ERROR;
}

/* Close the sockets the current config no longer names. */
static void
kou_master_prune_listeners(void)
{
    size_t j = 0;

    for (size_t i = 0; i < M.nls; i++) {
        if (M.ls[i].keep) {
            M.ls[j++] = M.ls[i];
            continue;
        }
        kou_log_notice("closing listener %s", M.ls[i].text);
        close(M.ls[i].fd);
        if (M.ls[i].addr.ss_family == AF_UNIX) {
            unlink(((struct sockaddr_un *) &M.ls[i].addr)->sun_path);
        }
        free(M.ls[i].text);
    }
    M.nls = j;
}

/* ---- validation child ---- */

int
kou_master_validate(kou_config_t *cf, char *err, size_t errlen)
{
    int      pfd[2], status;
    pid_t    pid;
    size_t   n = 0;
    uint64_t deadline = kou_mono_ms() + KOU_VALIDATE_MS;

    if (pipe2(pfd, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return KOU_ERROR;
    }
    pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        return KOU_ERROR;
    }
    if (pid == 0) {
        kou_modules_t *ms;
        char           msg[2048];

        close(pfd[0]);
        kou_log_set_role("validator");
        /* certificates first: they are re-read on every reload */
        if (kou_tls_check(cf, msg, sizeof(msg)) != KOU_OK
            || kou_modules_load(cf, &ms, msg, sizeof(msg)) != KOU_OK)
        {
            if (write(pfd[1], msg, strlen(msg)) < 0) {
                (void) 0;
            }
            _exit(1);
        }
        kou_modules_unload(ms);
        _exit(0);
    }

    close(pfd[1]);
    err[0] = '\0';
    for (;;) {
        struct pollfd p = { .fd = pfd[0], .events = POLLIN };
        int64_t       left = (int64_t) (deadline - kou_mono_ms());
        ssize_t       r;

        if (left <= 0 || poll(&p, 1, (int) left) == 0) {
            kill(pid, SIGKILL);
            snprintf(err, errlen, "module validation did not finish in %d s",
                     KOU_VALIDATE_MS / 1000);
            n = errlen;  /* keep the message */
            break;
        }
        r = read(pfd[0], err + n, errlen - 1 - n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        n += (size_t) r;
        if (n >= errlen - 1) {
            break;
        }
    }
    if (n < errlen) {
        err[n] = '\0';
    }
    close(pfd[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        return KOU_OK;
    }
    if (err[0] == '\0') {
        if (WIFSIGNALED(status)) {
            snprintf(err, errlen,
                     "module validation crashed with signal %d (%s)",
                     WTERMSIG(status), strsignal(WTERMSIG(status)));
        } else {
            snprintf(err, errlen, "module validation failed");
        }
    }
    return KOU_ERROR;
}

/* ---- workers ---- */

/* A statistics slot no live process uses, or -1. */
static int
kou_master_free_stat(void)
{
    for (int s = 0; s < M.nstats; s++) {
        bool used = false;
        for (size_t i = 0; i < M.nprocs && !used; i++) {
            used = M.procs[i].stat == s;
        }
        for (size_t i = 0; i < M.nslots && !used; i++) {
            used = M.respawn_at[i] != 0 && M.respawn_stat[i] == s;
        }
        if (!used) {
            return s;
        }
    }
    return -1;
}

/*
 * Fork a worker of generation gen for worker slot `slot`. stat is the
 * statistics slot to give it (-1: any free one): a respawned worker gets
 * its predecessor's, so per-slot totals carry on.
 */
static kou_proc_t *
kou_master_spawn(kou_config_t *cf, uint64_t gen, int slot, int stat,
                 const int *fds)
{
    kou_proc_t *p;
    int         pfd[2];
    pid_t       pid;

    if (stat < 0) {
        stat = kou_master_free_stat();
    }

    if (M.nprocs == KOU_MAX_PROCS) {
        kou_log_error("too many processes");
        return NULL;
    }
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        kou_log_error("pipe: %s", strerror(errno));
        return NULL;
    }
    pid = fork();
    if (pid < 0) {
        kou_log_error("fork: %s", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        return NULL;
    }
    if (pid == 0) {
        /* the child keeps only what a worker needs */
        close(pfd[0]);
        close(M.sfd);
        if (M.daemon_fd >= 0) {
            close(M.daemon_fd);
        }
        for (size_t i = 0; i < M.nprocs; i++) {
            if (M.procs[i].ready_fd >= 0) {
                close(M.procs[i].ready_fd);
            }
        }
        for (size_t i = 0; i < M.nls; i++) {
            bool used = false;
            for (size_t k = 0; k < cf->nlisten; k++) {
                used = used || fds[k] == M.ls[i].fd;
            }
            if (!used) {
                close(M.ls[i].fd);
            }
        }
        kou_worker_main(cf, fds, pfd[1], slot, stat, gen);
    }
    close(pfd[1]);
    p = &M.procs[M.nprocs++];
    memset(p, 0, sizeof(*p));
    p->pid = pid;
    p->slot = slot;
    p->stat = stat;
    p->gen = gen;
    p->ready_fd = pfd[0];
    p->state = KOU_PROC_STARTING;
    p->started = kou_mono_ms();
    if ((size_t) slot < M.nslots) {
        M.last_spawn[slot] = p->started;
    }
    return p;
}

static int
kou_master_slots(size_t n)
{
    if (n <= M.nslots) {
        return KOU_OK;
    }
    uint64_t *a = realloc(M.respawn_at, n * sizeof(uint64_t));
    if (a == NULL) {
        return KOU_ERROR;
    }
    M.respawn_at = a;
    uint64_t *b = realloc(M.last_spawn, n * sizeof(uint64_t));
    if (b == NULL) {
        return KOU_ERROR;
    }
    M.last_spawn = b;
    int *c = realloc(M.respawn_stat, n * sizeof(int));
    if (c == NULL) {
        return KOU_ERROR;
    }
    M.respawn_stat = c;
    for (size_t i = M.nslots; i < n; i++) {
        M.respawn_at[i] = 0;
        M.last_spawn[i] = 0;
        M.respawn_stat[i] = -1;
    }
    M.nslots = n;
    return KOU_OK;
}

/* Sockets of cf in listen order, for a worker of it. */
static int *
kou_master_fds(kou_config_t *cf)
{
    static int *fds;
    static size_t n;

    if (n < cf->nlisten) {
        int *f = realloc(fds, cf->nlisten * sizeof(int));
        if (f == NULL) {
            return NULL;
        }
        fds = f;
        n = cf->nlisten;
    }
    for (size_t i = 0; i < cf->nlisten; i++) {
        size_t nth = 0;

        /* the nth entry with this text has the nth socket with it */
        for (size_t j = 0; j < i; j++) {
            nth += strcmp(cf->listen[j].text, cf->listen[i].text) == 0;
        }
        fds[i] = -1;
        for (size_t k = 0; k < M.nls && fds[i] < 0; k++) {
            if (strcmp(M.ls[k].text, cf->listen[i].text) == 0 && nth-- == 0) {
                fds[i] = M.ls[k].fd;
            }
        }
    }
    return fds;
}

/* Mark the sockets cf uses as kept, the others for closing. */
static void
kou_master_keep(kou_config_t *cf)
{
    int *fds = kou_master_fds(cf);

    for (size_t i = 0; i < M.nls; i++) {
        M.ls[i].keep = false;
        for (size_t k = 0; k < cf->nlisten; k++) {
            /* without memory for the map, keep every socket of the text */
            if (fds != NULL ? fds[k] == M.ls[i].fd
                            : strcmp(M.ls[i].text, cf->listen[k].text) == 0)
            {
                M.ls[i].keep = true;
            }
        }
    }
}

static int
kou_master_spawn_generation(kou_config_t *cf, uint64_t gen, const int *fds)
{
    if (kou_master_slots((size_t) cf->workers) != KOU_OK) {
        return KOU_ERROR;
    }
    for (int i = 0; i < cf->workers; i++) {
        if (kou_master_spawn(cf, gen, i, -1, fds) == NULL) {
            return KOU_ERROR;
        }
    }
    return KOU_OK;
}

/* p was told to stop: its shutdown_timeout backstop counts from now. */
static void
kou_master_draining(kou_proc_t *p)
{
    if (p->state != KOU_PROC_DRAINING) {
        p->state = KOU_PROC_DRAINING;
        p->started = kou_mono_ms();
    }
}

static void
kou_master_signal_gen(uint64_t gen, int sig, unsigned new_state)
{
    for (size_t i = 0; i < M.nprocs; i++) {
        if (M.procs[i].gen == gen) {
            kill(M.procs[i].pid, sig);
            if (new_state == KOU_PROC_DRAINING) {
                kou_master_draining(&M.procs[i]);
            }
        }
    }
}

/* ---- reload ---- */

static void
kou_master_reload_abort(const char *msg)
{
    kou_log_error("reload refused, generation %llu keeps serving: %s",
                  (unsigned long long) M.gen, msg);
    if (M.next_cf != NULL) {
        kou_master_signal_gen(M.gen + 1, SIGTERM, KOU_PROC_DRAINING);
        kou_config_free(M.next_cf);
        M.next_cf = NULL;
        /* keep only the listeners the serving config uses */
        kou_master_keep(M.cf);
        kou_master_prune_listeners();
    }
    kou_master_verdict(false, msg);
}

static void
kou_master_reload_start(void)
{
    kou_config_t *cf;
    char          err[2048];
    int          *fds;

    M.reload_started_ns = kou_real_ns();
    kou_log_notice("reloading %s", M.opts->conf_file);

    if (kou_config_load(M.opts->conf_file, M.opts->prefix,
                        M.opts->modules_dirs, &cf, err, sizeof(err))
        != KOU_OK)
    {
        kou_master_reload_abort(err);
        return;
    }
    if (M.opts->foreground) {
        cf->error_log = (char *) "stderr";
    }
    if (kou_master_validate(cf, err, sizeof(err)) != KOU_OK) {
        kou_config_free(cf);
        kou_master_reload_abort(err);
        return;
    }
    fds = calloc(cf->nlisten + 1, sizeof(int));
    if (fds == NULL) {
        kou_config_free(cf);
        kou_master_reload_abort("out of memory");
        return;
    }
    if (kou_master_listeners(cf, fds, err, sizeof(err)) != KOU_OK) {
        free(fds);
        kou_config_free(cf);
        kou_master_reload_abort(err);
        return;
    }
    if (M.nprocs + (size_t) cf->workers > (size_t) M.nstats) {
        snprintf(err, sizeof(err), "%s: workers: %d: only %d statistics "
                 "slots exist, %zu in use: restart the server to grow them",
                 cf->file, cf->workers, M.nstats, M.nprocs);
        free(fds);
        kou_config_free(cf);
        kou_master_reload_abort(err);
        return;
    }
    M.next_cf = cf;
    M.reload_deadline = kou_mono_ms() + KOU_READY_MS;
    if (kou_master_spawn_generation(cf, M.gen + 1, fds) != KOU_OK) {
        free(fds);
        kou_master_reload_abort("cannot start workers");
        return;
    }
    free(fds);
}

/* All new workers are ready: switch generations, drain the old one. */
static void
kou_master_reload_commit(void)
{
    kou_config_t *old = M.cf;

    kou_master_signal_gen(M.gen, SIGQUIT, KOU_PROC_DRAINING);
    M.cf = M.next_cf;
    M.next_cf = NULL;
    M.gen++;
    if (kou_shm != NULL) {
        kou_shm->pub.generation = M.gen;
    }
    for (size_t i = 0; i < M.nslots; i++) {
        M.respawn_at[i] = 0;
    }
    kou_master_keep(M.cf);
    kou_master_prune_listeners();
    kou_config_free(old);
    kou_log_notice("reload done: generation %llu serving with %d workers",
                   (unsigned long long) M.gen, M.cf->workers);
    kou_master_verdict(true, "");
}

/* ---- events ---- */

static kou_proc_t *
kou_master_find(pid_t pid)
{
    for (size_t i = 0; i < M.nprocs; i++) {
        if (M.procs[i].pid == pid) {
            return &M.procs[i];
        }
    }
    return NULL;
}

static void
kou_master_remove(kou_proc_t *p)
{
    /* its statistics slot: counters stay, the gauges of a dead worker go */
    if (kou_shm != NULL && p->stat >= 0 && p->stat < kou_shm->pub.nslots) {
        kou_slot_stats_t *s = (kou_slot_stats_t *) &kou_shm->pub.slots[p->stat];
        s->pid = 0;
        s->conns_reading = s->conns_idle = s->conns_writing = 0;
    }
    if (p->ready_fd >= 0) {
        close(p->ready_fd);
    }
    *p = M.procs[--M.nprocs];
}

static size_t
kou_master_count(uint64_t gen, unsigned state)
{
    size_t n = 0;

    for (size_t i = 0; i < M.nprocs; i++) {
        if (M.procs[i].gen == gen && M.procs[i].state == state) {
            n++;
        }
    }
    return n;
}

/* Is a worker for this slot of the serving generation alive? */
static bool
kou_master_slot_alive(int slot)
{
    for (size_t i = 0; i < M.nprocs; i++) {
        if (M.procs[i].gen == M.gen && M.procs[i].slot == slot
            && M.procs[i].state != KOU_PROC_DRAINING)
        {
            return true;
        }
    }
    return false;
}

static void
kou_master_respawn(int slot, int stat)
{
    uint64_t now = kou_mono_ms();

    if (M.stopping || kou_master_slot_alive(slot)) {
        return;
    }
    if ((size_t) slot < M.nslots
        && now < M.last_spawn[slot] + KOU_RESPAWN_DELAY_MS)
    {
        /* a worker that dies at once must not turn into a fork loop */
        M.respawn_at[slot] = M.last_spawn[slot] + KOU_RESPAWN_DELAY_MS;
        M.respawn_stat[slot] = stat;
        return;
    }
    M.respawn_at[slot] = 0;
    if (kou_shm != NULL) {
        kou_shm->pub.worker_restarts++;
    }
    kou_master_spawn(M.cf, M.gen, slot, stat, kou_master_fds(M.cf));
}

static void
kou_master_reap(void)
{
    int   status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        kou_proc_t *p = kou_master_find(pid);
        char        how[96];
        bool        clean;

        if (p == NULL) {
            continue;
        }
        clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (WIFSIGNALED(status)) {
            snprintf(how, sizeof(how), "on signal %d (%s)", WTERMSIG(status),
                     strsignal(WTERMSIG(status)));
        } else {
            snprintf(how, sizeof(how), "with status %d", WEXITSTATUS(status));
        }

        if (p->state == KOU_PROC_DRAINING || M.stopping) {
            if (clean) {
                kou_log_info("worker %d exited", (int) pid);
            } else {
                kou_log_warn("worker %d exited %s", (int) pid, how);
            }
            kou_master_remove(p);
            continue;
        }

        if (p->state == KOU_PROC_STARTING) {
            char msg[512];
            snprintf(msg, sizeof(msg), "worker %d failed to start (exited %s)%s%s",
                     (int) pid, how, p->msg[0] ? ": " : "", p->msg);
            if (p->gen == M.gen + 1 && M.next_cf != NULL) {
                kou_master_remove(p);
                kou_master_reload_abort(msg);
                continue;
            }
            kou_log_error("%s", msg);
            if (M.starting) {
                M.failed = true;
                kou_master_remove(p);
                M.stopping = SIGTERM;
                M.stop_deadline = kou_mono_ms() + KOU_TERM_GRACE_MS;
                kou_master_signal_gen(M.gen, SIGTERM, KOU_PROC_DRAINING);
                if (M.daemon_fd >= 0) {
                    if (write(M.daemon_fd, msg, strlen(msg)) < 0) {
                        (void) 0;
                    }
                    close(M.daemon_fd);
                    M.daemon_fd = -1;
                }
                continue;
            }
        } else {
            kou_log_error("worker %d exited %s, respawning", (int) pid, how);
        }
        int      slot = p->slot, stat = p->stat;
        uint64_t gen = p->gen;
        kou_master_remove(p);
        if (gen == M.gen) {
            kou_master_respawn(slot, stat);
        }
    }
}

static void
kou_master_ready(kou_proc_t *p)
{
    char    buf[256];
    ssize_t n = read(p->ready_fd, buf, sizeof(buf) - 1);

    if (n > 0 && buf[0] == 'R') {
        p->state = KOU_PROC_READY;
        close(p->ready_fd);
        p->ready_fd = -1;
        return;
    }
    if (n > 0) {
        buf[n] = '\0';
        snprintf(p->msg, sizeof(p->msg), "%s", buf);
    }
    /* EOF or an error text: the exit status arrives through SIGCHLD */
    close(p->ready_fd);
    p->ready_fd = -1;
}

static void
kou_master_signals(void)
{
    struct signalfd_siginfo si;

    while (read(M.sfd, &si, sizeof(si)) == sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGCHLD:
            kou_master_reap();
            break;
        case SIGHUP:
            if (!M.stopping) {
                M.reload_pending = true;
            }
            break;
        case SIGUSR1:
            if (strcmp(M.cf->error_log, "stderr") != 0
                && kou_log_open(M.cf->error_log) != KOU_OK)
            {
                kou_log_error("reopen %s: %s", M.cf->error_log,
                              strerror(errno));
            }
            kou_log_notice("log files reopened");
            for (size_t i = 0; i < M.nprocs; i++) {
                kill(M.procs[i].pid, SIGUSR1);
            }
            break;
        case SIGQUIT:
            if (!M.stopping) {
                kou_log_notice("graceful stop");
                M.stopping = SIGQUIT;
                M.stop_deadline = kou_mono_ms() + M.cf->shutdown_timeout
                                  + KOU_TERM_GRACE_MS;
                for (size_t i = 0; i < M.nprocs; i++) {
                    kill(M.procs[i].pid, SIGQUIT);
                    kou_master_draining(&M.procs[i]);
                }
            }
            break;
        case SIGTERM:
        case SIGINT:
            if (M.stopping != SIGTERM) {
                kou_log_notice("fast stop");
                M.stopping = SIGTERM;
                M.stop_deadline = kou_mono_ms() + KOU_TERM_GRACE_MS;
                for (size_t i = 0; i < M.nprocs; i++) {
                    kill(M.procs[i].pid, SIGTERM);
                    kou_master_draining(&M.procs[i]);
                }
            }
            break;
        default:
            break;
        }
    }
}

static int
kou_master_write_pid(const char *path)
{
    char  tmp[4200];
    FILE *f;

    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL) {
        return KOU_ERROR;
    }
    fprintf(f, "%d\n", (int) getpid());
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        return KOU_ERROR;
    }
    return KOU_OK;
}

/* Refuse to start a second master on the same pid file. */
static bool
kou_master_running(const char *pid_file, pid_t *pid)
{
    FILE *f = fopen(pid_file, "r");
    int   p = 0;

    if (f == NULL) {
        return false;
    }
    if (fscanf(f, "%d", &p) != 1) {
        p = 0;
    }
    fclose(f);
    *pid = p;
    return p > 0 && p != getpid() && kill(p, 0) == 0;
}

/* Fork into the background; the parent exits once the server is up. */
static int
kou_master_daemonize(void)
{
    int   pfd[2];
    pid_t pid;

    if (pipe2(pfd, O_CLOEXEC) != 0) {
        return KOU_ERROR;
    }
    pid = fork();
    if (pid < 0) {
        return KOU_ERROR;
    }
    if (pid > 0) {
        char    msg[1024];
        ssize_t n;

        close(pfd[1]);
        n = read(pfd[0], msg, sizeof(msg) - 1);
        if (n > 0 && msg[0] == 'R') {
            _exit(0);
        }
        if (n > 0) {
            msg[n] = '\0';
            fprintf(stderr, "kourier: %s\n", msg);
        } else {
            fprintf(stderr, "kourier: failed to start (see the error log)\n");
        }
        _exit(1);
    }
    close(pfd[0]);
    M.daemon_fd = pfd[1];
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        if (kou_log_fd() != STDERR_FILENO) {
            dup2(null, STDERR_FILENO);
        }
        if (null > STDERR_FILENO) {
            close(null);
        }
    }
    return KOU_OK;
}

static int
kou_master_timeout(void)
{
    uint64_t now = kou_mono_ms(), next = UINT64_MAX;

    for (size_t i = 0; i < M.nslots; i++) {
        if (M.respawn_at[i] != 0) {
            next = kou_min(next, M.respawn_at[i]);
        }
    }
    if (M.stopping) {
        next = kou_min(next, M.stop_deadline);
    }
    if (M.next_cf != NULL) {
        next = kou_min(next, M.reload_deadline);
    }
    next = kou_min(next, M.tls_rotate_at);
    for (size_t i = 0; i < M.nprocs; i++) {
        if (M.procs[i].state == KOU_PROC_DRAINING && !M.stopping) {
            /* old generations: enforce shutdown_timeout from here too */
            next = kou_min(next, now + 1000);
            break;
        }
    }
    if (next == UINT64_MAX) {
        return -1;
    }
    return next <= now ? 0 : (int) kou_min(next - now, (uint64_t) 60000);
}

int
kou_master_run(const kou_master_opts_t *opts, kou_config_t *cf)
{
    char     err[2048];
    sigset_t set;
    pid_t    other;
    int     *fds;

    memset(&M, 0, sizeof(M));
    M.opts = opts;
    M.cf = cf;
    if (opts->foreground) {
        /* -F: the log is stderr whatever the config says (also on reopen) */
        cf->error_log = (char *) "stderr";
    }
    M.daemon_fd = -1;
    M.sfd = -1;
    M.gen = 1;
    M.starting = true;

    if (kou_master_running(cf->pid_file, &other)) {
        kou_log_error("already running with pid %d (%s)", (int) other,
                      cf->pid_file);
        return 1;
    }
    if (kou_master_validate(cf, err, sizeof(err)) != KOU_OK) {
        kou_log_error("%s", err);
        return 1;
    }
    fds = calloc(cf->nlisten + 1, sizeof(int));
    if (fds == NULL || kou_master_listeners(cf, fds, err, sizeof(err))
                           != KOU_OK)
    {
        kou_log_error("%s", fds ? err : "out of memory");
        free(fds);
        return 1;
    }
    if (!opts->foreground) {
        if (strcmp(cf->error_log, "stderr") != 0
            && kou_log_open(cf->error_log) != KOU_OK)
        {
            kou_log_error("cannot open %s: %s", cf->error_log,
                          strerror(errno));
            return 1;
        }
        if (kou_master_daemonize() != KOU_OK) {
            kou_log_error("cannot daemonise: %s", strerror(errno));
            return 1;
        }
    }
    if (kou_master_write_pid(cf->pid_file) != KOU_OK) {
        kou_log_error("cannot write pid file %s: %s", cf->pid_file,
                      strerror(errno));
        return 1;
    }
    M.nstats = kou_max(64, 4 * cf->workers);
    if (kou_shm_create(M.nstats, (size_t) cf->shared_memory) != KOU_OK) {
        kou_log_error("cannot create shared memory: %s", strerror(errno));
        return 1;
    }
    kou_shm->pub.generation = M.gen;
    if (kou_tls_ticket_keys_init() != KOU_OK) {
        kou_log_error("cannot create TLS session ticket keys: no random "
                      "bytes from OpenSSL");
        return 1;
    }
    M.tls_rotate_at = kou_mono_ms() + cf->tls_ticket_rotation;

    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    M.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (M.sfd < 0) {
        kou_log_error("signalfd: %s", strerror(errno));
        return 1;
    }

    if (kou_master_spawn_generation(cf, M.gen, fds) != KOU_OK) {
        kou_log_error("cannot start workers");
        return 1;
    }
    free(fds);

    for (;;) {
        struct pollfd pfds[KOU_MAX_PROCS + 1];
        kou_proc_t   *who[KOU_MAX_PROCS + 1];
        nfds_t        n = 0;
        int           rc;

        if (M.stopping && M.nprocs == 0) {
            break;
        }

        pfds[n].fd = M.sfd;
        pfds[n].events = POLLIN;
        who[n++] = NULL;
        for (size_t i = 0; i < M.nprocs; i++) {
            if (M.procs[i].ready_fd >= 0) {
                pfds[n].fd = M.procs[i].ready_fd;
                pfds[n].events = POLLIN;
                who[n++] = &M.procs[i];
            }
        }
        rc = poll(pfds, n, kou_master_timeout());
        if (rc < 0 && errno != EINTR) {
            kou_log_error("poll: %s", strerror(errno));
        }
        for (nfds_t i = 1; rc > 0 && i < n; i++) {
            if (pfds[i].revents) {
                kou_master_ready(who[i]);
            }
        }
        if (rc > 0 && pfds[0].revents) {
            kou_master_signals();
        }

        uint64_t now = kou_mono_ms();

        if (M.starting && kou_master_count(M.gen, KOU_PROC_READY)
                              == (size_t) M.cf->workers)
        {
            M.starting = false;
            kou_log_notice("kourier %s started: %d workers", PACKAGE_VERSION,
                           M.cf->workers);
            if (M.daemon_fd >= 0) {
                if (write(M.daemon_fd, "R", 1) < 0) {
                    (void) 0;
                }
                close(M.daemon_fd);
                M.daemon_fd = -1;
            }
        }
        if (M.next_cf != NULL) {
            if (kou_master_count(M.gen + 1, KOU_PROC_READY)
                == (size_t) M.next_cf->workers)
            {
                kou_master_reload_commit();
            } else if (now >= M.reload_deadline) {
                kou_master_reload_abort("new workers did not become ready");
            }
        }
        if (M.reload_pending && M.next_cf == NULL && !M.stopping
            && !M.starting)
        {
            M.reload_pending = false;
            kou_master_reload_start();
        }
        if (now >= M.tls_rotate_at) {
            /* a failure keeps the current key one more period */
            if (kou_tls_ticket_keys_rotate() != KOU_OK) {
                kou_log_error("TLS session ticket key rotation failed: "
                              "no random bytes from OpenSSL");
            } else {
                kou_log_info("TLS session ticket keys rotated");
            }
            M.tls_rotate_at = now + M.cf->tls_ticket_rotation;
        }
        for (size_t i = 0; i < M.nslots && !M.stopping; i++) {
            if (M.respawn_at[i] != 0 && now >= M.respawn_at[i]) {
                kou_master_respawn((int) i, M.respawn_stat[i]);
            }
        }
        for (size_t i = 0; i < M.nprocs; i++) {
            kou_proc_t *p = &M.procs[i];
            /* workers enforce shutdown_timeout; this is the backstop */
            if (p->state == KOU_PROC_DRAINING && !p->killed
                && now >= p->started + M.cf->shutdown_timeout
                              + KOU_TERM_GRACE_MS)
            {
                kill(p->pid, SIGKILL);
                p->killed = true;
            }
        }
        if (M.stopping && now >= M.stop_deadline && !M.killed) {
            for (size_t i = 0; i < M.nprocs; i++) {
                kill(M.procs[i].pid, SIGKILL);
            }
            M.killed = true;
        }
    }

    for (size_t i = 0; i < M.nls; i++) {
        close(M.ls[i].fd);
        if (M.ls[i].addr.ss_family == AF_UNIX) {
            unlink(((struct sockaddr_un *) &M.ls[i].addr)->sun_path);
        }
        free(M.ls[i].text);
    }
    free(M.ls);
    free(M.respawn_at);
    free(M.last_spawn);
    free(M.respawn_stat);
    unlink(M.cf->pid_file);
    kou_log_notice("exit");
    kou_config_free(M.cf);
    close(M.sfd);
    return M.failed ? 1 : 0;
}
