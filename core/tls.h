/*
 * TLS through OpenSSL with a custom BIO: Kourier keeps the socket, the
 * edge-triggered reads and the coalesced writes; OpenSSL only turns
 * ciphertext into plaintext and back.
 *
 *   socket --read()--> rbuf --BIO read--> SSL_read --> c->in
 *   chain --SSL_write--> BIO write --> wbuf --write()--> socket
 *
 * rbuf and wbuf come from per-worker free lists and go back as soon as they
 * are empty, and every context sets SSL_MODE_RELEASE_BUFFERS, so an idle
 * TLS connection holds no record buffer at all.
 *
 * Contexts: one SSL_CTX per certificate of a listener (SNI picks one by
 * name, the first is the default), built from the generation's config in
 * each worker after fork and, to check the files, by `kourier -t` and the
 * validation child. Session tickets are encrypted with keys the master
 * keeps in shared memory (shm.h) and rotates, so a ticket resumes on any
 * worker, including workers of a later generation.
 */

#ifndef KOU_TLS_H
#define KOU_TLS_H

#include "config.h"
#include "conn.h"
#include "kou.h"

/* ---- contexts (worker, -t, validation child) ---- */

/*
 * Build the contexts of cf->listen[i] (which has a tls_conf): read every
 * certificate chain and key, check that they match, apply protocols,
 * ciphers, ciphersuites and groups, install the SNI, ALPN and ticket
 * callbacks. On failure returns KOU_ERROR with "file:line:col: ..." naming
 * the file and OpenSSL's reason in err. When `warn` is set, certificates
 * that are expired or not yet valid are logged as warnings. The caller
 * owns *out (kou_tls_listener_free).
 */
int kou_tls_listener_create(const kou_config_t *cf, size_t i, bool warn,
                            kou_tls_listener_t **out, char *err,
                            size_t errlen);

void kou_tls_listener_free(kou_tls_listener_t *tl);

/*
 * Load and free the contexts of every TLS listener of cf, logging expiry
 * warnings: what `kourier -t` and the validation child run. KOU_OK, or
 * KOU_ERROR with the first error in err.
 */
int kou_tls_check(const kou_config_t *cf, char *err, size_t errlen);

/* ---- ticket keys (master) ---- */

/*
 * Fill both ticket keys in shared memory with fresh random bytes (master,
 * at start). KOU_OK, or KOU_ERROR when there is no segment or no entropy.
 */
int kou_tls_ticket_keys_init(void);

/*
 * The current key becomes the previous one and a new random key starts
 * encrypting (master, every tls_ticket_rotation). KOU_OK or KOU_ERROR.
 */
int kou_tls_ticket_keys_rotate(void);

/* ---- connections (worker) ---- */

/*
 * Give an accepted connection its TLS state for listener tl, in server
 * mode, before any byte is read. KOU_OK or KOU_ERROR (out of memory; the
 * caller closes the connection).
 */
int kou_tls_conn_create(kou_conn_t *c, kou_tls_listener_t *tl);

/*
 * Advance the handshake with what the socket has (c->sock_readable says
 * whether to read). Output it produced is queued (c->out_bytes); the
 * caller flushes it. Returns:
 *   KOU_OK       the handshake is complete; ciphertext already read for
 *                the first request stays buffered (c->readable reports it);
 *   KOU_AGAIN    more input is needed;
 *   KOU_DECLINED the client spoke plain HTTP: a plain-text 400 explaining
 *                it replaced any TLS output; send it, then close lingering;
 *   KOU_ERROR    the handshake failed (an alert may be queued); it was
 *                logged at info level when the client had sent anything.
 */
int kou_tls_handshake(kou_conn_t *c);

/* Whether any byte was received during the handshake (for the counters). */
bool kou_tls_handshake_started(const kou_conn_t *c);

/*
 * kou_conn_read for TLS: decrypt into c->in until it is full or nothing is
 * left to decrypt, reading the socket while c->sock_readable. Sets c->eof
 * on close_notify or a closed socket, c->error (and eof) on a TLS error.
 * Leaves c->readable set while plaintext or ciphertext is still waiting.
 * Returns bytes added to c->in, or KOU_ERROR when no buffer is available.
 */
ssize_t kou_tls_read(kou_conn_t *c);

/*
 * Room in the ciphertext buffer for one more record of plaintext: the
 * flush encrypts while this holds, so a connection never buffers more than
 * a few records of ciphertext (write back-pressure).
 */
bool kou_tls_room(const kou_conn_t *c);

/* Ciphertext waiting for the socket. */
bool kou_tls_unsent(const kou_conn_t *c);

/*
 * Encrypt n bytes (n <= 16 KiB: one record) into the ciphertext buffer.
 * Returns n, or -1 on a TLS error (logged at debug level).
 */
ssize_t kou_tls_write(kou_conn_t *c, const u_char *p, size_t n);

/*
 * Read up to n bytes (n <= 16 KiB) of file fd at off and encrypt them.
 * Returns the bytes consumed, or -1 (read error, file shorter than
 * announced, TLS error), logged.
 */
ssize_t kou_tls_write_file(kou_conn_t *c, int fd, uint64_t off, size_t n);

/*
 * Write buffered ciphertext to the socket. KOU_OK (all written: the buffer
 * went back to the free list), KOU_AGAIN (the socket is full; EPOLLOUT
 * will follow) or KOU_ERROR.
 */
int kou_tls_send(kou_conn_t *c);

/*
 * Send close_notify if the connection is established, healthy and has no
 * output pending, with one non-blocking write; never waits for the peer's.
 * Safe to call more than once.
 */
void kou_tls_shutdown(kou_conn_t *c);

/* Free the TLS state and its buffers (c->tls becomes NULL). */
void kou_tls_conn_free(kou_conn_t *c);

#endif /* KOU_TLS_H */
