/*
 * Memory shared by the master and every worker, created by the master
 * before the first fork so that it survives reloads and worker restarts:
 *
 *   [ header: server stats, reload result, allocation table ]
 *   [ kou_slot_stats_t x nslots: the server's own per-worker counters ]
 *   [ arena: named blocks for modules (host->shm_alloc) ]
 *
 * Each slot has one writer at a time (the worker that owns it), so the
 * request path takes no lock; only module allocations (at configure or
 * worker_init time) take the process-shared mutex.
 */

#ifndef KOU_SHM_H
#define KOU_SHM_H

#include <pthread.h>

#include "kou.h"

#define KOU_SHM_BLOCKS 128

typedef struct {
    char   name[64];
    size_t off;
    size_t size;
} kou_shm_block_t;

/*
 * A TLS session ticket key (RFC 5077 layout: name, AES-256-CBC key,
 * HMAC-SHA256 key). Written by the master only.
 */
typedef struct {
    u_char name[16];
    u_char aes[32];
    u_char hmac[32];
} kou_tls_ticket_key_t;

typedef struct {
    kou_server_stats_t pub;                  /* host->server_stats() */
    char               last_reload_error[512];
    pthread_mutex_t    lock;                 /* the allocation table */
    size_t             arena_size;
    size_t             arena_used;
    size_t             nblocks;
    kou_shm_block_t    blocks[KOU_SHM_BLOCKS];

    /*
     * Session ticket keys shared by every worker of every generation, so a
     * ticket from one worker resumes on any other. [0] encrypts new
     * tickets, [1] is the key it replaced (still decrypts). A seqlock: the
     * master makes tls_keys_seq odd while it writes, readers retry.
     */
    uint64_t             tls_keys_seq;
    kou_tls_ticket_key_t tls_keys[2];
} kou_shm_t;

/* The segment, or NULL before kou_shm_create (e.g. in `kourier -t`). */
extern kou_shm_t *kou_shm;

/* This worker's slot (NULL outside a worker or without a segment). */
extern kou_slot_stats_t *kou_slot;
extern int               kou_slot_id;

/*
 * Create the segment in the master: nslots statistics slots and an arena
 * of arena_size bytes for modules. KOU_OK or KOU_ERROR (errno set).
 */
int kou_shm_create(int nslots, size_t arena_size);

/* In a worker after fork: take slot `id`, reset its gauges. */
void kou_shm_attach_slot(int id);

/* host->shm_alloc: see include/kourier/module.h. */
void *kou_shm_alloc(const char *name, size_t size);

/* Count a parse error with this status in this worker's slot. */
void kou_shm_parse_error(int status);

#endif /* KOU_SHM_H */
