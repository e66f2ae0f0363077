/*
 * The module loader and the host function table.
 *
 * Modules are loaded by the process that will use them: each worker after
 * fork, the validation child on reload, and `kourier -t`. The master never
 * dlopen()s a module, so a module cannot crash or leak into it, and a rebuilt
 * .so is picked up by the next generation.
 */

#ifndef KOU_MODULE_H
#define KOU_MODULE_H

#include "config.h"
#include "kou.h"

typedef struct {
    const kou_module_t *m;
    void               *handle;     /* from dlopen */
    void               *state;      /* from configure */
    kou_module_conf_t  *conf;
    bool                inited;     /* worker_init ran */
    bool                configured; /* configure ran (destroy is due) */
} kou_module_inst_t;

typedef struct kou_modules_s {
    kou_config_t      *cf;
    kou_module_inst_t *mods;        /* cf->nmodules entries, config order */
    size_t             n;
    void             **route_state; /* [route * n + module] */
} kou_modules_t;

/* The host function table handed to every module (module.c). */
extern const kou_host_t kou_host;

/*
 * Load every module named by cf: dlopen (RTLD_NOW | RTLD_LOCAL), find the
 * entry symbol, check abi_major/abi_minor/size, validate the module's config
 * map and every route's module-owned keys against the schemas, then run
 * configure and configure_route (for the route's handler and for every
 * module in the hook table). On failure, everything loaded so far is
 * unloaded and err holds a message naming the file (the .so, or the config's
 * file:line:col) and what is wrong. Returns KOU_OK or KOU_ERROR; *out is
 * owned by the caller (kou_modules_unload).
 */
int kou_modules_load(kou_config_t *cf, kou_modules_t **out, char *err,
                     size_t errlen);

/* Run worker_init of every module in order; on failure stop and report. */
int kou_modules_worker_init(kou_modules_t *ms, char *err, size_t errlen);

/* Run worker_exit of every module that was initialised, in reverse order. */
void kou_modules_worker_exit(kou_modules_t *ms);

/* Run every module's reopen hook (SIGUSR1, in a worker). */
void kou_modules_reopen(kou_modules_t *ms);

/* dlclose everything and free ms (NULL is fine). */
void kou_modules_unload(kou_modules_t *ms);

/* The per-route state of module index mi for route index ri. */
static inline void *
kou_modules_route_state(const kou_modules_t *ms, size_t ri, size_t mi)
{
    return ms->route_state[ri * ms->n + mi];
}

#endif /* KOU_MODULE_H */
