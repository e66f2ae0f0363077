#include <sys/mman.h>

#include "shm.h"

kou_shm_t *kou_shm;

int
kou_shm_create(void)
{
    void *p = mmap(NULL, sizeof(kou_shm_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        return KOU_ERROR;
    }
    kou_shm = p;
    return KOU_OK;
}
