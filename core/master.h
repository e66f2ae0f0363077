/*
 * The master process: owns the listening sockets, the current generation
 * and the worker processes; turns signals into reloads, drains and stops.
 */

#ifndef KOU_MASTER_H
#define KOU_MASTER_H

#include "config.h"
#include "kou.h"

typedef struct {
    const char         *conf_file;
    const char         *prefix;
    const char *const  *modules_dirs;
    bool                foreground;
} kou_master_opts_t;

/*
 * Run the server: validate the config (loading every module in a child),
 * bind, daemonise unless foreground, write the pid file, start the workers
 * and supervise them until stopped. Returns the process exit status.
 * `cf` is the already-loaded configuration (ownership passes here).
 */
int kou_master_run(const kou_master_opts_t *opts, kou_config_t *cf);

/*
 * Validate cf fully in a short-lived child process: load every module and
 * run its configuration hooks. KOU_OK, or KOU_ERROR with the child's
 * message in err. Used at start and for every reload.
 */
int kou_master_validate(kou_config_t *cf, char *err, size_t errlen);

/* Path of the reload verdict file kept next to the pid file. */
void kou_master_verdict_path(const char *pid_file, char *buf, size_t size);

#endif /* KOU_MASTER_H */
