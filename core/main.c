/*
 * kourier [-c FILE] [-p PREFIX] [-F] [-t] [-s reload|reopen|quit|stop] [-V] [-h]
 */

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "http_parse.h"
#include "kou_build.h"
#include "log.h"
#include "master.h"
#include "module.h"
#include "tls.h"

#define KOU_RELOAD_WAIT_MS 120000

static void
kou_usage(FILE *f)
{
    fprintf(f,
            "usage: kourier [-c FILE] [-p PREFIX] [-F] [-t] "
            "[-s reload|reopen|quit|stop] [-V] [-h]\n"
            "  -c FILE    configuration (default: PREFIX/conf/kourier.yaml)\n"
            "  -p PREFIX  directory relative paths resolve against "
            "(default: current directory)\n"
            "  -F         stay in the foreground, log to stderr\n"
            "  -t         test the configuration, its modules and TLS "
            "certificates, then exit\n"
            "  -s SIGNAL  tell the running master: reload (waits for the "
            "verdict), reopen, quit, stop\n"
            "  -V         version, build options, parser tier\n"
            "  -h         this help\n");
}

/*
 * Module directories: a binary running from its build tree uses the
 * modules built next to it first, so a developer never loads stale
 * installed copies.
 */
static const char *const *
kou_modules_dirs(void)
{
    static const char *dirs[4];
    static char        build_mod[PATH_MAX], build_plug[PATH_MAX];
    char               exe[PATH_MAX];
    ssize_t            n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    size_t             i = 0, bl = strlen(KOU_BUILD_DIR);

    if (n > 0) {
        exe[n] = '\0';
        if (strncmp(exe, KOU_BUILD_DIR, bl) == 0 && exe[bl] == '/'
            && strchr(exe + bl + 1, '/') == NULL)
        {
            snprintf(build_mod, sizeof(build_mod), "%s/modules/.libs",
                     KOU_BUILD_DIR);
            snprintf(build_plug, sizeof(build_plug), "%s/plugins/.libs",
                     KOU_BUILD_DIR);
            dirs[i++] = build_mod;
            dirs[i++] = build_plug;
        }
    }
    dirs[i++] = KOU_MODULES_DIR;
    dirs[i] = NULL;
    return dirs;
}

static int
kou_read_pid(const char *path, pid_t *pid)
{
    FILE *f = fopen(path, "r");
    int   p = 0;

    if (f == NULL) {
        return KOU_ERROR;
    }
    if (fscanf(f, "%d", &p) != 1 || p <= 0) {
        fclose(f);
        errno = EINVAL;
        return KOU_ERROR;
    }
    fclose(f);
    *pid = p;
    return KOU_OK;
}

static int
kou_read_verdict(const char *path, unsigned long long *seq,
                 unsigned long long *started, char *result, size_t rsize,
                 char *msg, size_t msize)
{
    FILE *f = fopen(path, "r");
    char  line[4096];

    *seq = 0;
    if (f == NULL) {
        return KOU_ERROR;
    }
    if (fgets(line, sizeof(line), f) == NULL
        || sscanf(line, "%llu %llu %15s", seq, started, result) != 3)
    {
        fclose(f);
        *seq = 0;
        return KOU_ERROR;
    }
    (void) rsize;
    msg[0] = '\0';
    if (fgets(msg, (int) msize, f) != NULL) {
        msg[strcspn(msg, "\n")] = '\0';
    }
    fclose(f);
    return KOU_OK;
}

/*
 * `-s reload`: signal the master and wait for the verdict of a reload that
 * started after our signal (the master writes it next to the pid file).
 */
static int
kou_signal_reload(const char *pid_file, pid_t pid)
{
    char               vpath[PATH_MAX + 16], result[16], msg[4096];
    unsigned long long seq, started;
    struct timespec    ts;
    uint64_t           sent_ns, waited = 0;

    kou_master_verdict_path(pid_file, vpath, sizeof(vpath));
    clock_gettime(CLOCK_REALTIME, &ts);
    sent_ns = (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
    if (kill(pid, SIGHUP) != 0) {
        fprintf(stderr, "kourier: cannot signal pid %d: %s\n", (int) pid,
                strerror(errno));
        return 1;
    }
    while (waited < KOU_RELOAD_WAIT_MS) {
        struct timespec nap = { 0, 20 * 1000000 };

        if (kou_read_verdict(vpath, &seq, &started, result, sizeof(result),
                             msg, sizeof(msg)) == KOU_OK
            && started >= sent_ns)
        {
            if (strcmp(result, "ok") == 0) {
                fprintf(stderr, "kourier: reload done\n");
                return 0;
            }
            fprintf(stderr, "kourier: reload refused: %s\n", msg);
            return 1;
        }
        if (kill(pid, 0) != 0) {
            fprintf(stderr, "kourier: master %d is gone\n", (int) pid);
            return 1;
        }
        nanosleep(&nap, NULL);
        waited += 20;
    }
    fprintf(stderr, "kourier: no reload verdict after %d s\n",
            KOU_RELOAD_WAIT_MS / 1000);
    return 1;
}

static int
kou_signal(const char *file, const char *prefix, const char *what)
{
    kou_config_t *cf = NULL;
    char          err[2048], pid_file[PATH_MAX + 32];
    pid_t         pid;
    int           sig;

    if (strcmp(what, "reload") == 0) {
        sig = SIGHUP;
    } else if (strcmp(what, "reopen") == 0) {
        sig = SIGUSR1;
    } else if (strcmp(what, "quit") == 0) {
        sig = SIGQUIT;
    } else if (strcmp(what, "stop") == 0) {
        sig = SIGTERM;
    } else {
        fprintf(stderr, "kourier: unknown signal \"%s\" "
                        "(reload, reopen, quit, stop)\n", what);
        return 1;
    }

    if (kou_config_load(file, prefix, kou_modules_dirs(), &cf, err,
                        sizeof(err)) != KOU_OK)
    {
        /*
         * The config cannot tell us the pid file: that is the refusal for
         * a reload, and for the others the default place is worth a try.
         */
        fprintf(stderr, "kourier: %s\n", err);
        if (sig == SIGHUP) {
            return 1;
        }
        snprintf(pid_file, sizeof(pid_file), "%s/logs/kourier.pid", prefix);
    } else {
        snprintf(pid_file, sizeof(pid_file), "%s", cf->pid_file);
        kou_config_free(cf);
    }
    if (kou_read_pid(pid_file, &pid) != KOU_OK) {
        fprintf(stderr, "kourier: cannot read pid file %s: %s\n", pid_file,
                strerror(errno));
        return 1;
    }
    if (sig == SIGHUP) {
        return kou_signal_reload(pid_file, pid);
    }
    if (kill(pid, sig) != 0) {
        fprintf(stderr, "kourier: cannot signal pid %d: %s\n", (int) pid,
                strerror(errno));
        return 1;
    }
    return 0;
}

static int
kou_test_config(const char *file, const char *prefix)
{
    kou_config_t  *cf;
    kou_modules_t *ms;
    char           err[2048];

    if (kou_config_load(file, prefix, kou_modules_dirs(), &cf, err,
                        sizeof(err)) != KOU_OK)
    {
        fprintf(stderr, "kourier: %s\n", err);
        fprintf(stderr, "kourier: configuration %s test failed\n", file);
        return 1;
    }
    if (kou_tls_check(cf, err, sizeof(err)) != KOU_OK) {
        fprintf(stderr, "kourier: %s\n", err);
        fprintf(stderr, "kourier: configuration %s test failed\n", file);
        kou_config_free(cf);
        return 1;
    }
    if (kou_modules_load(cf, &ms, err, sizeof(err)) != KOU_OK) {
        fprintf(stderr, "kourier: %s\n", err);
        fprintf(stderr, "kourier: configuration %s test failed\n", file);
        kou_config_free(cf);
        return 1;
    }
    kou_modules_unload(ms);
    kou_config_free(cf);
    fprintf(stderr, "kourier: configuration %s test is successful\n", file);
    return 0;
}

int
main(int argc, char **argv)
{
    const char *file = NULL, *prefix = NULL, *sig = NULL;
    bool        foreground = false, test = false;
    char        cwd[PATH_MAX], conf[PATH_MAX + 32];
    int         ch;

    if (kou_http_parser_select() != KOU_OK) {
        fprintf(stderr, "kourier: KOURIER_SIMD=%s cannot be used here; "
                        "using %s\n", getenv("KOURIER_SIMD"),
                kou_http_parser_tier());
    }
    while ((ch = getopt(argc, argv, "c:p:Fts:Vh")) != -1) {
        switch (ch) {
        case 'c':
            file = optarg;
            break;
        case 'p':
            prefix = optarg;
            break;
        case 'F':
            foreground = true;
            break;
        case 't':
            test = true;
            break;
        case 's':
            sig = optarg;
            break;
        case 'V':
            printf("kourier %s\nbuild: %s\nparser: %s\nmodule ABI: %d.%d\n",
                   PACKAGE_VERSION, KOU_BUILD_OPTIONS, kou_http_parser_tier(),
                   KOU_ABI_MAJOR, KOU_ABI_MINOR);
            return 0;
        case 'h':
            kou_usage(stdout);
            return 0;
        default:
            kou_usage(stderr);
            return 1;
        }
    }
    if (optind != argc) {
        kou_usage(stderr);
        return 1;
    }
    if (prefix == NULL) {
        if (getcwd(cwd, sizeof(cwd)) == NULL) {
            perror("kourier: getcwd");
            return 1;
        }
        prefix = cwd;
    }
    if (file == NULL) {
        snprintf(conf, sizeof(conf), "%s/conf/kourier.yaml", prefix);
        file = conf;
    }

    if (test) {
        return kou_test_config(file, prefix);
    }
    if (sig != NULL) {
        return kou_signal(file, prefix, sig);
    }

    kou_config_t     *cf;
    char              err[2048];
    kou_master_opts_t opts = {
        .conf_file = file,
        .prefix = prefix,
        .modules_dirs = kou_modules_dirs(),
        .foreground = foreground,
    };

    if (kou_config_load(file, prefix, opts.modules_dirs, &cf, err,
                        sizeof(err)) != KOU_OK)
    {
        fprintf(stderr, "kourier: %s\n", err);
        return 1;
    }
    return kou_master_run(&opts, cf);
}
