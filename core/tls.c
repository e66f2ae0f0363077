/*
 * TLS: contexts built from the config, the custom BIO that connects OpenSSL
 * to Kourier's own buffers, the handshake, record I/O and the shared
 * session ticket keys. See tls.h for the data flow.
 */

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "http_request.h"
#include "log.h"
#include "shm.h"
#include "tls.h"

#define KOU_TLS_RECORD   16384   /* the largest plaintext of one record */
/* header, explicit IV, MAC or tag, padding: generous for every suite */
#define KOU_TLS_OVERHEAD 512
/* one socket read; OpenSSL asks for a record at a time from it */
#define KOU_TLS_RBUF     16384
/* up to four full records go out in one write(2) */
#define KOU_TLS_WBUF     (4 * (KOU_TLS_RECORD + KOU_TLS_OVERHEAD))

/*
 * TLS 1.2 suites when the config names none: forward secrecy and AEAD only
 * (the "intermediate" profile most deployments use). TLS 1.3 keeps
 * OpenSSL's default suites.
 */
#define KOU_TLS_DEFAULT_CIPHERS                                    \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

struct kou_tls_conn_s {
    SSL      *ssl;
    u_char   *rbuf;          /* ciphertext read, not yet given to OpenSSL */
    u_char   *wbuf;          /* ciphertext produced, not yet written */
    uint32_t  rpos, rlast;
    uint32_t  wpos, wlast, wsize;
    unsigned  established:1;
    unsigned  fatal:1;       /* OpenSSL failed: no SSL_shutdown allowed */
    unsigned  shutdown:1;    /* close_notify handled */
    unsigned  sock_eof:1;    /* read(2) returned 0 */
    unsigned  started:1;     /* the client sent at least one byte */
    int       sock_errno;    /* a read(2) error, for the log */
};

typedef struct {
    SSL_CTX                   *ctx;
    const kou_tls_cert_conf_t *cc;
} kou_tls_ctx_t;

struct kou_tls_listener_s {
    kou_tls_ctx_t *ctxs;     /* [0] is the default */
    size_t         n;
};

/* Per-worker free lists of record buffers (each holds its next pointer). */
typedef struct kou_tls_free_s kou_tls_free_t;
struct kou_tls_free_s {
    kou_tls_free_t *next;
};

static kou_tls_free_t *kou_tls_rfree;
static kou_tls_free_t *kou_tls_wfree;
static BIO_METHOD     *kou_tls_bio_meth;
static EVP_CIPHER     *kou_tls_ticket_cipher;
static u_char          kou_tls_fbuf[KOU_TLS_RECORD];   /* file ranges */

/* The worker's copy of the shared ticket keys (see kou_tls_keys_sync). */
static kou_tls_ticket_key_t kou_tls_keys[2];
static uint64_t             kou_tls_keys_seq = 1;   /* odd: none yet */

/* ---- errors ---- */

/*
 * OpenSSL's reason for the failure just seen: the oldest entry of the
 * error queue is the cause, later ones only say who passed it up. The
 * queue is cleared.
 */
static const char *
kou_tls_reason(char *buf, size_t size)
{
    unsigned long e = ERR_get_error();
    const char   *r;

    if (e == 0) {
        snprintf(buf, size, "unknown error");
    } else if ((r = ERR_reason_error_string(e)) != NULL) {
        snprintf(buf, size, "%s", r);
    } else {
        ERR_error_string_n(e, buf, size);
    }
    ERR_clear_error();
    return buf;
}

/* Encrypted keys would make OpenSSL prompt on the terminal: refuse. */
static int
kou_tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void) buf;
    (void) size;
    (void) rwflag;
    (void) u;
    return -1;
}

/* ---- buffers and the BIO ---- */

static u_char *
kou_tls_buf_get(kou_tls_free_t **list, size_t size)
{
    kou_tls_free_t *f = *list;

    if (f != NULL) {
        *list = f->next;
        return (u_char *) f;
    }
    return malloc(size);
}

static void
kou_tls_buf_put(kou_tls_free_t **list, u_char *p)
{
    kou_tls_free_t *f = (kou_tls_free_t *) p;

    f->next = *list;
    *list = f;
}

static void
kou_tls_rbuf_release(kou_tls_conn_t *t)
{
    if (t->rbuf != NULL) {
        kou_tls_buf_put(&kou_tls_rfree, t->rbuf);
        t->rbuf = NULL;
    }
    t->rpos = t->rlast = 0;
}

static void
kou_tls_wbuf_release(kou_tls_conn_t *t)
{
    if (t->wbuf != NULL) {
        if (t->wsize == KOU_TLS_WBUF) {
            kou_tls_buf_put(&kou_tls_wfree, t->wbuf);
        } else {
            free(t->wbuf);
        }
        t->wbuf = NULL;
    }
    t->wpos = t->wlast = t->wsize = 0;
}

/*
 * Append ciphertext for the socket. The buffer grows past its standard
 * size only for output nobody paces, such as a handshake flight with a long
 * certificate chain; the flush never lets records pile up beyond it.
 */
static int
kou_tls_append(kou_conn_t *c, const void *p, size_t n)
{
    kou_tls_conn_t *t = c->tls;

    if (t->wbuf == NULL) {
        t->wbuf = kou_tls_buf_get(&kou_tls_wfree, KOU_TLS_WBUF);
        if (t->wbuf == NULL) {
            return KOU_ERROR;
        }
        t->wsize = KOU_TLS_WBUF;
    }
    if (t->wsize - t->wlast < n && t->wpos > 0) {
        memmove(t->wbuf, t->wbuf + t->wpos, t->wlast - t->wpos);
        t->wlast -= t->wpos;
        t->wpos = 0;
    }
    if (t->wsize - t->wlast < n) {
        size_t  size = kou_max((size_t) t->wsize * 2, t->wlast + n);
        u_char *b;

        if (size > UINT32_MAX || (b = malloc(size)) == NULL) {
            return KOU_ERROR;
        }
        memcpy(b, t->wbuf, t->wlast);
        kou_tls_wbuf_release(t);
        t->wbuf = b;
        t->wsize = (uint32_t) size;
    }
    memcpy(t->wbuf + t->wlast, p, n);
    t->wlast += (uint32_t) n;
    c->out_bytes += n;
    return KOU_OK;
}

static int
kou_tls_bio_write(BIO *bio, const char *buf, int len)
{
    kou_conn_t *c = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    if (len <= 0) {
        return 0;
    }
    if (kou_tls_append(c, buf, (size_t) len) != KOU_OK) {
        return -1;   /* no retry flag: OpenSSL sees a hard error */
    }
    return len;
}

/*
 * OpenSSL asks for a record header, then its body. Serve both from rbuf;
 * refill it with one read(2) when empty and the socket may have more. A
 * short read means the socket is drained (edge-triggered epoll reports the
 * next arrival), so no read is ever made only to see EAGAIN.
 */
static int
kou_tls_bio_read(BIO *bio, char *buf, int len)
{
    kou_conn_t     *c = BIO_get_data(bio);
    kou_tls_conn_t *t = c->tls;
    size_t          n;
    ssize_t         r;

    BIO_clear_retry_flags(bio);
    if (len <= 0) {
        return 0;
    }
    if (t->rpos == t->rlast) {
        if (t->sock_eof) {
            return 0;
        }
        if (!c->sock_readable) {
            BIO_set_retry_read(bio);
            return -1;
        }
        if (t->rbuf == NULL) {
            t->rbuf = kou_tls_buf_get(&kou_tls_rfree, KOU_TLS_RBUF);
            if (t->rbuf == NULL) {
                return -1;
            }
        }
        do {
            r = read(c->ev.fd, t->rbuf, KOU_TLS_RBUF);
        } while (r < 0 && errno == EINTR);
        if (r <= 0) {
            c->sock_readable = 0;
            kou_tls_rbuf_release(t);
            if (r == 0) {
                t->sock_eof = 1;
                return 0;
            }
            if (errno == EAGAIN) {
                BIO_set_retry_read(bio);
            } else {
                t->sock_errno = errno;
            }
            return -1;
        }
        t->started = 1;
        t->rpos = 0;
        t->rlast = (uint32_t) r;
        if (r < KOU_TLS_RBUF) {
            c->sock_readable = 0;
        }
    }
    n = kou_min((size_t) len, (size_t) (t->rlast - t->rpos));
    memcpy(buf, t->rbuf + t->rpos, n);
    t->rpos += (uint32_t) n;
    if (t->rpos == t->rlast) {
        kou_tls_rbuf_release(t);
    }
    return (int) n;
}

static long
kou_tls_bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void) bio;
    (void) num;
    (void) ptr;
    /* writes are buffered by us and sent by the flush: nothing to do */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int
kou_tls_bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static BIO_METHOD *
kou_tls_bio_method(void)
{
    BIO_METHOD *m;

    if (kou_tls_bio_meth != NULL) {
        return kou_tls_bio_meth;
    }
    m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "kourier");
    if (m == NULL
        || BIO_meth_set_write(m, kou_tls_bio_write) != 1
        || BIO_meth_set_read(m, kou_tls_bio_read) != 1
        || BIO_meth_set_ctrl(m, kou_tls_bio_ctrl) != 1
        || BIO_meth_set_create(m, kou_tls_bio_create) != 1)
    {
        BIO_meth_free(m);
        return NULL;
    }
    kou_tls_bio_meth = m;
    return m;
}

/* ---- session tickets ---- */

static void
kou_tls_keys_publish(const kou_tls_ticket_key_t *k)
{
    uint64_t s = kou_shm->tls_keys_seq;

    __atomic_store_n(&kou_shm->tls_keys_seq, s + 1, __ATOMIC_RELAXED);
    /* readers that see the new keys must also see the odd number */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    memcpy(kou_shm->tls_keys, k, sizeof(kou_shm->tls_keys));
    __atomic_store_n(&kou_shm->tls_keys_seq, s + 2, __ATOMIC_RELEASE);
}

int
kou_tls_ticket_keys_init(void)
{
    kou_tls_ticket_key_t k[2];

    if (kou_shm == NULL || RAND_bytes((u_char *) k, sizeof(k)) != 1) {
        return KOU_ERROR;
    }
    kou_tls_keys_publish(k);
    OPENSSL_cleanse(k, sizeof(k));
    return KOU_OK;
}

int
kou_tls_ticket_keys_rotate(void)
{
    kou_tls_ticket_key_t k[2];

    if (kou_shm == NULL || RAND_bytes((u_char *) &k[0], sizeof(k[0])) != 1) {
        return KOU_ERROR;
    }
    k[1] = kou_shm->tls_keys[0];   /* the master is the only writer */
    kou_tls_keys_publish(k);
    OPENSSL_cleanse(k, sizeof(k));
    return KOU_OK;
}

/*
 * Bring the worker's copy up to date: one load when nothing changed (every
 * handshake), a copy checked against the sequence number when the master
 * rotated. False when no consistent copy exists.
 */
static bool
kou_tls_keys_sync(void)
{
    kou_tls_ticket_key_t tmp[2];
    uint64_t             s1, s2;

    if (kou_shm == NULL) {
        return false;
    }
    for (int tries = 0; tries < 1000; tries++) {
        s1 = __atomic_load_n(&kou_shm->tls_keys_seq, __ATOMIC_ACQUIRE);
        if (s1 == kou_tls_keys_seq) {
            return true;
        }
        if ((s1 & 1) || s1 == 0) {
            continue;   /* being written (a few ns), or never written */
        }
        memcpy(tmp, (const void *) kou_shm->tls_keys, sizeof(tmp));
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        s2 = __atomic_load_n(&kou_shm->tls_keys_seq, __ATOMIC_RELAXED);
        if (s1 == s2) {
            memcpy(kou_tls_keys, tmp, sizeof(tmp));
            kou_tls_keys_seq = s1;
            OPENSSL_cleanse(tmp, sizeof(tmp));
            return true;
        }
    }
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return (kou_tls_keys_seq & 1) == 0;
}

/*
 * RFC 5077 tickets: AES-256-CBC + HMAC-SHA256 under the shared keys. A
 * ticket under the previous key is accepted and renewed (return 2); an
 * unknown key name means a full handshake (return 0).
 */
static int
kou_tls_ticket_cb(SSL *ssl, u_char *name, u_char *iv, EVP_CIPHER_CTX *ectx,
                  EVP_MAC_CTX *hctx, int enc)
{
    const kou_tls_ticket_key_t *k;
    OSSL_PARAM                  params[3];
    size_t                      i = 0;

    (void) ssl;
    if (kou_tls_ticket_cipher == NULL) {
        kou_tls_ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    }
    if (kou_tls_ticket_cipher == NULL || !kou_tls_keys_sync()) {
        return enc ? -1 : 0;
    }
    if (enc) {
        k = &kou_tls_keys[0];
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(kou_tls_ticket_cipher))
                != 1
            || EVP_EncryptInit_ex(ectx, kou_tls_ticket_cipher, NULL, k->aes,
                                  iv) != 1)
        {
            return -1;
        }
        memcpy(name, k->name, sizeof(k->name));
    } else {
        while (i < 2 && memcmp(name, kou_tls_keys[i].name, 16) != 0) {
            i++;
        }
        if (i == 2) {
            return 0;
        }
        k = &kou_tls_keys[i];
        if (EVP_DecryptInit_ex(ectx, kou_tls_ticket_cipher, NULL, k->aes, iv)
            != 1)
        {
            return -1;
        }
    }
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
                                                  (void *) k->hmac,
                                                  sizeof(k->hmac));
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *) "SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    if (EVP_MAC_CTX_set_params(hctx, params) != 1) {
        return -1;
    }
    return i == 0 ? 1 : 2;
}

/* ---- SNI and ALPN ---- */

/* The context serving `name`: exact names first, then "*.parent". */
static SSL_CTX *
kou_tls_find(const kou_tls_listener_t *tl, const char *name)
{
    char        lc[256];
    size_t      n = strlen(name);
    const char *dot;
    kou_str_t   s, parent;

    if (n == 0 || n >= sizeof(lc)) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        lc[i] = (char) ((name[i] >= 'A' && name[i] <= 'Z') ? name[i] | 0x20
                                                           : name[i]);
    }
    s.p = lc;
    s.n = n;
    if (lc[n - 1] == '.') {
        s.n--;   /* a fully qualified name with its root dot */
    }
    for (size_t e = 0; e < tl->n; e++) {
        for (size_t k = 0; k < tl->ctxs[e].cc->nnames; k++) {
            if (kou_str_eq(tl->ctxs[e].cc->names[k], s)) {
                return tl->ctxs[e].ctx;
            }
        }
    }
    dot = memchr(s.p, '.', s.n);
    if (dot == NULL || dot == s.p) {
        return NULL;
    }
    parent.p = dot;
    parent.n = s.n - (size_t) (dot - s.p);
    for (size_t e = 0; e < tl->n; e++) {
        for (size_t k = 0; k < tl->ctxs[e].cc->nnames; k++) {
            kou_str_t w = tl->ctxs[e].cc->names[k];
            if (w.n > 2 && w.p[0] == '*') {
                w.p++;
                w.n--;
                if (kou_str_eq(w, parent)) {
                    return tl->ctxs[e].ctx;
                }
            }
        }
    }
    return NULL;
}

/* An unknown or absent name gets the default certificate, as in nginx. */
static int
kou_tls_servername(SSL *ssl, int *alert, void *arg)
{
    const kou_tls_listener_t *tl = arg;
    const char               *name;
    SSL_CTX                  *ctx;

    (void) alert;
    name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL || tl->n < 2) {
        return SSL_TLSEXT_ERR_OK;
    }
    ctx = kou_tls_find(tl, name);
    if (ctx != NULL && ctx != SSL_get_SSL_CTX(ssl)) {
        SSL_set_SSL_CTX(ssl, ctx);
    }
    return SSL_TLSEXT_ERR_OK;
}

/*
 * HTTP/1.1 (or 1.0) is all this server speaks: a client that offers ALPN
 * without either (h2 only) gets the no_application_protocol alert at once
 * instead of a connection it would misread. No ALPN at all is fine.
 */
static int
kou_tls_alpn(SSL *ssl, const u_char **out, u_char *outlen, const u_char *in,
             unsigned inlen, void *arg)
{
    static const char *const protos[] = { "http/1.1", "http/1.0" };

    (void) ssl;
    (void) arg;
    for (size_t w = 0; w < kou_nelem(protos); w++) {
        size_t wn = strlen(protos[w]);

        for (unsigned i = 0; i < inlen; i += 1u + in[i]) {
            if (i + 1u + in[i] > inlen) {
                break;
            }
            if (in[i] == wn && memcmp(in + i + 1, protos[w], wn) == 0) {
                *out = in + i + 1;
                *outlen = in[i];
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* ---- contexts ---- */

static void
kou_tls_time_text(const ASN1_TIME *t, char *buf, size_t size)
{
    struct tm tm;

    if (ASN1_TIME_to_tm(t, &tm) != 1
        || strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
    {
        snprintf(buf, size, "an unreadable date");
    }
}

static void
kou_tls_check_dates(SSL_CTX *ctx, const kou_tls_cert_conf_t *cc)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    char  when[64], msg[2048];

    if (x == NULL) {
        return;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
        kou_tls_time_text(X509_get0_notAfter(x), when, sizeof(when));
        kou_conf_error(cc->cert_node, msg, sizeof(msg),
                       "tls: certificate %s expired on %s: clients will "
                       "refuse it", cc->certificate, when);
        kou_log_warn("%s", msg);
    } else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
        kou_tls_time_text(X509_get0_notBefore(x), when, sizeof(when));
        kou_conf_error(cc->cert_node, msg, sizeof(msg),
                       "tls: certificate %s is not valid before %s: "
                       "clients will refuse it until then",
                       cc->certificate, when);
        kou_log_warn("%s", msg);
    }
}

/* A file OpenSSL cannot open is reported in the words of the OS. */
static int
kou_tls_file_ok(const kou_conf_t *node, const char *what, const char *path,
                char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");

    if (f == NULL) {
        return kou_conf_error(node, err, errlen, "tls: cannot open %s %s: "
                              "%s", what, path, strerror(errno));
    }
    fclose(f);
    return KOU_OK;
}

static int
kou_tls_load_pair(SSL_CTX *ctx, const kou_tls_cert_conf_t *cc, char *err,
                  size_t errlen)
{
    EVP_PKEY     *pkey;
    X509         *x;
    FILE         *f;
    char          why[256];
    unsigned long e;

    if (kou_tls_file_ok(cc->cert_node, "certificate", cc->certificate, err,
                        errlen) != KOU_OK
        || kou_tls_file_ok(cc->key_node, "key", cc->key, err, errlen)
               != KOU_OK)
    {
        return KOU_ERROR;
    }
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cc->certificate) != 1) {
        return kou_conf_error(cc->cert_node, err, errlen,
                              "tls: cannot load certificate %s: %s (expected "
                              "a PEM certificate chain, the server's first)",
                              cc->certificate,
                              kou_tls_reason(why, sizeof(why)));
    }
    f = fopen(cc->key, "r");
    if (f == NULL) {
        return kou_conf_error(cc->key_node, err, errlen,
                              "tls: cannot open key %s: %s", cc->key,
                              strerror(errno));
    }
    pkey = PEM_read_PrivateKey(f, NULL, kou_tls_no_passphrase, NULL);
    fclose(f);
    if (pkey == NULL) {
        e = ERR_peek_error();
        return kou_conf_error(cc->key_node, err, errlen,
                              "tls: cannot load key %s: %s%s", cc->key,
                              kou_tls_reason(why, sizeof(why)),
                              ERR_GET_LIB(e) == ERR_LIB_PEM
                              && (ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ
                                  || ERR_GET_REASON(e)
                                         == PEM_R_PROBLEMS_GETTING_PASSWORD)
                              ? " (the key is encrypted: store it without "
                                "a passphrase, readable only by the server)"
                              : " (expected a PEM private key)");
    }
    x = SSL_CTX_get0_certificate(ctx);
    if (X509_check_private_key(x, pkey) != 1) {
        EVP_PKEY_free(pkey);
        return kou_conf_error(cc->key_node, err, errlen,
                              "tls: key %s does not match certificate %s "
                              "(%s)", cc->key, cc->certificate,
                              kou_tls_reason(why, sizeof(why)));
    }
    if (SSL_CTX_use_PrivateKey(ctx, pkey) != 1) {
        EVP_PKEY_free(pkey);
        return kou_conf_error(cc->key_node, err, errlen,
                              "tls: cannot use key %s: %s", cc->key,
                              kou_tls_reason(why, sizeof(why)));
    }
    EVP_PKEY_free(pkey);
    return KOU_OK;
}

/*
 * OpenSSL skips TLS 1.3 suite names it does not know; a typo would then
 * silently disable TLS 1.3. Every name must be in the resulting list.
 */
static int
kou_tls_check_suites(SSL_CTX *ctx, const kou_tls_conf_t *tc, char *err,
                     size_t errlen)
{
    STACK_OF(SSL_CIPHER) *sk = SSL_CTX_get_ciphers(ctx);
    const char           *p = tc->ciphersuites, *end;

    while (*p != '\0') {
        size_t n;
        bool   found = false;

        end = strchr(p, ':');
        n = end != NULL ? (size_t) (end - p) : strlen(p);
        for (int i = 0; i < sk_SSL_CIPHER_num(sk) && !found; i++) {
            const char *name = SSL_CIPHER_get_name(sk_SSL_CIPHER_value(sk,
                                                                       i));
            found = strlen(name) == n && memcmp(name, p, n) == 0;
        }
        if (!found) {
            return kou_conf_error(tc->ciphersuites_node, err, errlen,
                                  "tls: ciphersuites: unknown TLS 1.3 suite "
                                  "\"%.*s\" (expected names such as "
                                  "TLS_AES_128_GCM_SHA256)", (int) n, p);
        }
        p += n + (end != NULL);
    }
    return KOU_OK;
}

static SSL_CTX *
kou_tls_ctx_new(const kou_config_t *cf, const kou_listen_conf_t *lc,
                const kou_tls_cert_conf_t *cc, char *err, size_t errlen)
{
    const kou_tls_conf_t *tc = lc->tls_conf;
    SSL_CTX              *ctx;
    const char           *ciphers;
    u_char                sid[SHA256_DIGEST_LENGTH];
    char                  why[256];

    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        kou_conf_error(tc->node, err, errlen, "tls: cannot create a context: "
                       "%s", kou_tls_reason(why, sizeof(why)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, (tc->protocols & KOU_TLS_V12)
                                       ? TLS1_2_VERSION : TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, (tc->protocols & KOU_TLS_V13)
                                       ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE
                             | SSL_OP_NO_RENEGOTIATION
                             | SSL_OP_NO_COMPRESSION
                             /*
                              * effective only with a BIO that reports EOF;
                              * ours does not (see kou_tls_read)
                              */
                             | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, kou_tls_no_passphrase);
    SSL_CTX_set_dh_auto(ctx, 1);

    ERR_clear_error();
    ciphers = tc->ciphers != NULL ? tc->ciphers : KOU_TLS_DEFAULT_CIPHERS;
    if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
        kou_conf_error(tc->ciphers_node != NULL ? tc->ciphers_node
                                                : tc->node, err, errlen,
                       "tls: ciphers: OpenSSL knows none of \"%s\" (%s)",
                       ciphers, kou_tls_reason(why, sizeof(why)));
        goto failed;
    }
    if (tc->ciphersuites != NULL) {
        if (SSL_CTX_set_ciphersuites(ctx, tc->ciphersuites) != 1) {
            kou_conf_error(tc->ciphersuites_node, err, errlen,
                           "tls: ciphersuites: \"%s\": %s", tc->ciphersuites,
                           kou_tls_reason(why, sizeof(why)));
            goto failed;
        }
        if (kou_tls_check_suites(ctx, tc, err, errlen) != KOU_OK) {
            goto failed;
        }
    }
    if (tc->groups != NULL && SSL_CTX_set1_groups_list(ctx, tc->groups) != 1)
    {
        kou_conf_error(tc->groups_node, err, errlen,
                       "tls: groups: \"%s\": %s (expected names such as "
                       "X25519 or P-256)", tc->groups,
                       kou_tls_reason(why, sizeof(why)));
        goto failed;
    }
    if (kou_tls_load_pair(ctx, cc, err, errlen) != KOU_OK) {
        goto failed;
    }

    /*
     * Tickets only: a server-side session cache would be per process, and
     * a client's next connection usually lands on another worker. A ticket
     * stays decryptable for one to two rotation periods; the lifetime
     * announced is two, within RFC 8446's 7 days.
     */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_timeout(ctx, (long) kou_min(2 * cf->tls_ticket_rotation / 1000,
                                            (uint64_t) 7 * 24 * 3600));
    /* the same for every worker and generation of this address */
    SHA256((const u_char *) lc->text, strlen(lc->text), sid);
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid));
    if (kou_shm != NULL) {
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, kou_tls_ticket_cb);
    }
    SSL_CTX_set_alpn_select_cb(ctx, kou_tls_alpn, NULL);
    return ctx;

failed:
    SSL_CTX_free(ctx);
    return NULL;
}

int
kou_tls_listener_create(const kou_config_t *cf, size_t i, bool warn,
                        kou_tls_listener_t **out, char *err, size_t errlen)
{
    const kou_listen_conf_t *lc = &cf->listen[i];
    const kou_tls_conf_t    *tc = lc->tls_conf;
    kou_tls_listener_t      *tl;

    *out = NULL;
    tl = calloc(1, sizeof(*tl));
    if (tl == NULL || (tl->ctxs = calloc(tc->ncerts, sizeof(kou_tls_ctx_t)))
                          == NULL)
    {
        free(tl);
        snprintf(err, errlen, "out of memory");
        return KOU_ERROR;
    }
    for (size_t k = 0; k < tc->ncerts; k++) {
        tl->ctxs[k].cc = &tc->certs[k];
        tl->ctxs[k].ctx = kou_tls_ctx_new(cf, lc, &tc->certs[k], err, errlen);
        if (tl->ctxs[k].ctx == NULL) {
            kou_tls_listener_free(tl);
            return KOU_ERROR;
        }
        tl->n++;
        if (warn) {
            kou_tls_check_dates(tl->ctxs[k].ctx, &tc->certs[k]);
        }
    }
    /* SNI runs on the context a connection starts with: the default */
    SSL_CTX_set_tlsext_servername_callback(tl->ctxs[0].ctx,
                                           kou_tls_servername);
    SSL_CTX_set_tlsext_servername_arg(tl->ctxs[0].ctx, tl);
    *out = tl;
    return KOU_OK;
}

void
kou_tls_listener_free(kou_tls_listener_t *tl)
{
    if (tl == NULL) {
        return;
    }
    for (size_t k = 0; k < tl->n; k++) {
        SSL_CTX_free(tl->ctxs[k].ctx);
    }
    free(tl->ctxs);
    free(tl);
}

int
kou_tls_check(const kou_config_t *cf, char *err, size_t errlen)
{
    kou_tls_listener_t *tl;

    for (size_t i = 0; i < cf->nlisten; i++) {
        if (cf->listen[i].tls_conf == NULL) {
            continue;
        }
        if (kou_tls_listener_create(cf, i, true, &tl, err, errlen)
            != KOU_OK)
        {
            return KOU_ERROR;
        }
        kou_tls_listener_free(tl);
    }
    return KOU_OK;
}

/* ---- connections ---- */

int
kou_tls_conn_create(kou_conn_t *c, kou_tls_listener_t *tl)
{
    kou_tls_conn_t *t;
    BIO_METHOD     *m = kou_tls_bio_method();
    BIO            *bio;

    if (m == NULL || (t = calloc(1, sizeof(*t))) == NULL) {
        return KOU_ERROR;
    }
    t->ssl = SSL_new(tl->ctxs[0].ctx);
    bio = BIO_new(m);
    if (t->ssl == NULL || bio == NULL) {
        BIO_free(bio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return KOU_ERROR;
    }
    BIO_set_data(bio, c);
    SSL_set_bio(t->ssl, bio, bio);
    SSL_set_accept_state(t->ssl);
    c->tls = t;
    return KOU_OK;
}

bool
kou_tls_handshake_started(const kou_conn_t *c)
{
    return c->tls->started;
}

/* Why the connection failed, for the log. */
static const char *
kou_tls_failure(kou_conn_t *c, int sslerr, char *buf, size_t size)
{
    kou_tls_conn_t *t = c->tls;

    if (ERR_peek_error() != 0) {
        return kou_tls_reason(buf, size);
    }
    if (t->sock_errno != 0) {
        snprintf(buf, size, "%s", strerror(t->sock_errno));
    } else if (t->sock_eof) {
        snprintf(buf, size, "the client closed the connection");
    } else {
        snprintf(buf, size, "SSL error %d", sslerr);
    }
    return buf;
}

/* What a plain-HTTP client on a TLS port reads instead of a reset. */
static void
kou_tls_plain_reply(kou_conn_t *c)
{
    static const char body[] =
        "This port expects HTTPS: use an https:// URL.\n";
    kou_tls_conn_t *t = c->tls;
    kou_str_t       date = kou_http_date_line();
    char            head[512];
    int             n;

    c->out_bytes -= t->wlast - t->wpos;
    t->wpos = t->wlast = 0;
    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 400 Bad Request\r\nServer: kourier\r\n%.*s"
                 "Content-Type: text/plain\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n%s", (int) date.n, date.p,
                 sizeof(body) - 1, body);
    if (kou_tls_append(c, head, (size_t) n) != KOU_OK) {
        c->error = 1;
    }
}

int
kou_tls_handshake(kou_conn_t *c)
{
    kou_tls_conn_t *t = c->tls;
    unsigned long   e;
    char            why[256];
    int             n, sslerr;

    ERR_clear_error();
    n = SSL_do_handshake(t->ssl);
    if (n == 1) {
        t->established = 1;
        c->readable = c->sock_readable || t->rpos < t->rlast;
        return KOU_OK;
    }
    sslerr = SSL_get_error(t->ssl, n);
    if (sslerr == SSL_ERROR_WANT_READ) {
        return KOU_AGAIN;
    }
    t->fatal = 1;
    e = ERR_peek_error();
    if (ERR_GET_LIB(e) == ERR_LIB_SSL
        && ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST)
    {
        ERR_clear_error();
        kou_log_info("client %s: plain HTTP request on a TLS port",
                     c->addr_text);
        kou_tls_plain_reply(c);
        return KOU_DECLINED;
    }
    if (t->started) {
        kou_log_info("client %s: TLS handshake failed: %s", c->addr_text,
                     kou_tls_failure(c, sslerr, why, sizeof(why)));
    } else {
        kou_log_debug("client %s: closed before a TLS handshake: %s",
                      c->addr_text,
                      kou_tls_failure(c, sslerr, why, sizeof(why)));
    }
    ERR_clear_error();
    return KOU_ERROR;
}

ssize_t
kou_tls_read(kou_conn_t *c)
{
    kou_tls_conn_t *t = c->tls;
    ssize_t         total = 0;
    char            why[256];
    int             n, sslerr;

    if (kou_conn_in_alloc(c) != KOU_OK) {
        return KOU_ERROR;
    }
    while (c->in_end < c->in_size) {
        ERR_clear_error();
        n = SSL_read(t->ssl, c->in + c->in_end,
                     (int) kou_min(c->in_size - c->in_end, (size_t) INT_MAX));
        if (n > 0) {
            c->in_end += (size_t) n;
            total += n;
            continue;
        }
        sslerr = SSL_get_error(t->ssl, n);
        if (sslerr == SSL_ERROR_WANT_READ) {
            break;
        }
        if (sslerr == SSL_ERROR_ZERO_RETURN) {
            /*
             * close_notify. A FIN without it is a read error below: the
             * BIO does not answer BIO_CTRL_EOF, so OpenSSL never takes a
             * cut stream for a finished one (a tunnel is aborted, not
             * half-closed, by such a FIN).
             */
            c->eof = 1;
            break;
        }
        kou_log_debug("client %s: TLS read: %s", c->addr_text,
                      kou_tls_failure(c, sslerr, why, sizeof(why)));
        ERR_clear_error();
        t->fatal = 1;
        c->error = 1;
        c->eof = 1;
        break;
    }
    /* plaintext of a record c->in had no room for counts as input too */
    c->readable = !c->eof && (c->sock_readable || t->rpos < t->rlast
                              || SSL_pending(t->ssl) > 0);
    return total;
}

bool
kou_tls_room(const kou_conn_t *c)
{
    const kou_tls_conn_t *t = c->tls;

    return t->wbuf == NULL
           || t->wsize - t->wlast >= KOU_TLS_RECORD + KOU_TLS_OVERHEAD;
}

bool
kou_tls_unsent(const kou_conn_t *c)
{
    return c->tls->wlast > c->tls->wpos;
}

ssize_t
kou_tls_write(kou_conn_t *c, const u_char *p, size_t n)
{
    kou_tls_conn_t *t = c->tls;
    char            why[256];
    int             w;

    ERR_clear_error();
    w = SSL_write(t->ssl, p, (int) kou_min(n, (size_t) KOU_TLS_RECORD));
    if (w > 0) {
        return w;
    }
    kou_log_debug("client %s: TLS write: %s", c->addr_text,
                  kou_tls_failure(c, SSL_get_error(t->ssl, w), why,
                                  sizeof(why)));
    ERR_clear_error();
    t->fatal = 1;
    return -1;
}

ssize_t
kou_tls_write_file(kou_conn_t *c, int fd, uint64_t off, size_t n)
{
    ssize_t r;

    n = kou_min(n, sizeof(kou_tls_fbuf));
    do {
        r = pread(fd, kou_tls_fbuf, n, (off_t) off);
    } while (r < 0 && errno == EINTR);
    if (r <= 0) {
        if (r == 0) {
            kou_log_error("client %s: file ended before its announced "
                          "length: closing", c->addr_text);
        } else {
            kou_log_error("client %s: reading a file to send: %s",
                          c->addr_text, strerror(errno));
        }
        return -1;
    }
    return kou_tls_write(c, kou_tls_fbuf, (size_t) r);
}

int
kou_tls_send(kou_conn_t *c)
{
    kou_tls_conn_t *t = c->tls;
    ssize_t         w;
    size_t          want;

    while (t->wpos < t->wlast) {
        want = t->wlast - t->wpos;
        w = write(c->ev.fd, t->wbuf + t->wpos, want);
        if (w > 0) {
            t->wpos += (uint32_t) w;
            c->out_bytes -= (size_t) w;
            if ((size_t) w < want) {
                /* the kernel took what fit: EPOLLOUT follows when it drains */
                return KOU_AGAIN;
            }
            continue;
        }
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0 && errno == EAGAIN) {
            return KOU_AGAIN;
        }
        kou_log_debug("client %s: write: %s", c->addr_text, strerror(errno));
        return KOU_ERROR;
    }
    kou_tls_wbuf_release(t);
    return KOU_OK;
}

void
kou_tls_shutdown(kou_conn_t *c)
{
    kou_tls_conn_t *t = c->tls;

    if (t == NULL || t->shutdown) {
        return;
    }
    t->shutdown = 1;
    if (!t->established || t->fatal || c->error || c->out_bytes > 0) {
        return;
    }
    ERR_clear_error();
    if (SSL_shutdown(t->ssl) < 0) {
        ERR_clear_error();
        return;
    }
    (void) kou_tls_send(c);
}

void
kou_tls_conn_free(kou_conn_t *c)
{
    kou_tls_conn_t *t = c->tls;

    if (t == NULL) {
        return;
    }
    c->out_bytes -= kou_min(c->out_bytes, (size_t) (t->wlast - t->wpos));
    SSL_free(t->ssl);
    kou_tls_rbuf_release(t);
    kou_tls_wbuf_release(t);
    free(t);
    c->tls = NULL;
}
