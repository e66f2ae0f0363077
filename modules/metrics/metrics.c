/* placeholder: the metrics module is being written */
#include <kourier/module.h>

static const kou_module_t kou_metrics_module = {
    .abi_major = KOU_ABI_MAJOR, .abi_minor = KOU_ABI_MINOR,
    .size = sizeof(kou_module_t), .name = "metrics", .version = "0.0.0",
};

KOU_EXPORT const kou_module_t *
kourier_module(const kou_host_t *host)
{
    (void) host;
    return &kou_metrics_module;
}
