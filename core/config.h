/*
 * kourier.yaml: the YAML document as a tree of nodes that remember their
 * file:line:column, the core's typed view of it (kou_config_t), and schema
 * validation for module and route keys.
 *
 * One kou_config_t is one generation's configuration. It is built in the
 * master (and in the validation child, and by -t), inherited by workers
 * through fork, and never modified after kou_config_load() returns except by
 * kou_conf_validate(), which materialises schema defaults (done in the
 * process that loads the modules).
 */

#ifndef KOU_CONFIG_H
#define KOU_CONFIG_H

#include <sys/socket.h>

#include "kou.h"
#include "router.h"

typedef enum {
    KOU_NODE_SCALAR = 0,
    KOU_NODE_SEQ,
    KOU_NODE_MAP
} kou_node_type_e;

struct kou_conf_s {
    unsigned     type;      /* kou_node_type_e */
    unsigned     line;      /* 1-based */
    unsigned     col;       /* 1-based */
    const char  *file;      /* the config path as given */
    char        *value;     /* scalar text, NUL-terminated; NULL otherwise */
    size_t       len;       /* scalar length */
    bool         quoted;    /* scalar was quoted in the YAML */
    kou_conf_t **keys;      /* map: key nodes (scalars) */
    kou_conf_t **items;     /* map: values; seq: items */
    size_t       n;         /* entries */
    void        *arena;     /* private: the owning config's allocator, where
                               kou_conf_validate() puts default nodes */
};

typedef enum {
    KOU_PHASE_REQUEST = 0,
    KOU_PHASE_RESPONSE,
    KOU_PHASE_LOG,
    KOU_PHASE_COUNT
} kou_phase_e;

typedef struct {
    uint64_t header_timeout;    /* ms */
    uint64_t body_timeout;      /* ms */
    uint64_t idle_timeout;      /* ms */
    uint64_t send_timeout;      /* ms */
    uint64_t max_request_line;  /* bytes */
    uint64_t max_header_block;  /* bytes */
    uint64_t max_headers;       /* count */
    uint64_t max_body;          /* bytes */
    uint64_t max_connections;   /* per worker */
    uint64_t tls_handshake_timeout;  /* ms, from accept to a finished
                                        handshake */
} kou_limits_t;

/* TLS protocol versions a listener accepts (bits of kou_tls_conf_t). */
#define KOU_TLS_V12 0x1u
#define KOU_TLS_V13 0x2u

/* One certificate of a TLS listener and the names it serves. */
typedef struct {
    char             *certificate;  /* resolved path of the PEM chain */
    char             *key;          /* resolved path of the private key */
    const kou_conf_t *cert_node;    /* where each was written, for errors */
    const kou_conf_t *key_node;
    kou_str_t        *names;        /* server_names, lower-case; none for the
                                       default given at the tls: level */
    size_t            nnames;
} kou_tls_cert_conf_t;

/*
 * A listener's tls: block, checked for syntax only: the files are read by
 * OpenSSL in tls.c (kourier -t, the validation child and each worker).
 */
typedef struct {
    kou_tls_cert_conf_t *certs;     /* [0] is the default certificate */
    size_t               ncerts;
    unsigned             protocols; /* KOU_TLS_V12 | KOU_TLS_V13 */
    char                *ciphers;   /* OpenSSL list; NULL: built-in default */
    char                *ciphersuites;   /* TLS 1.3; NULL: OpenSSL's */
    char                *groups;    /* NULL: OpenSSL's */
    const kou_conf_t    *ciphers_node;
    const kou_conf_t    *ciphersuites_node;
    const kou_conf_t    *groups_node;
    const kou_conf_t    *node;      /* the tls: map */
} kou_tls_conf_t;

typedef struct {
    char                   *text;     /* as written, NUL-terminated */
    struct sockaddr_storage addr;
    socklen_t               addrlen;
    int                     backlog;
    const kou_conf_t       *node;     /* the listen entry */
    const kou_conf_t       *tls;      /* its tls: map, or NULL */
    kou_tls_conf_t         *tls_conf; /* that map's settings, or NULL */
} kou_listen_conf_t;

typedef struct {
    char             *name;
    char             *path;   /* resolved path of the .so */
    kou_conf_t       *node;   /* the map under modules: NAME: (never NULL) */
} kou_module_conf_t;

typedef struct {
    kou_route_t  route;       /* route.data points back to this entry */
    size_t       handler;     /* index into kou_config_t.modules */
    kou_conf_t  *node;        /* the route's map */
    uint64_t     max_body;    /* the route's max_body, or limits.max_body */
} kou_route_conf_t;

typedef struct kou_config_s {
    char              *file;          /* as given */
    char              *prefix;        /* directory relative paths resolve against */
    kou_conf_t        *root;
    void              *arena;         /* private: owns every node and string */

    int                workers;       /* "auto" resolved to the CPU count */
    char              *pid_file;      /* resolved path */
    char              *error_log;     /* resolved path, or "stderr" */
    uint64_t           shutdown_timeout;  /* ms */
    uint64_t           shared_memory;     /* bytes for modules' shm_alloc */
    char              *user;          /* NULL: do not change */
    char              *group;         /* NULL: the user's group */
    kou_limits_t       limits;
    uint64_t           tls_ticket_rotation;  /* ms between ticket keys */

    kou_listen_conf_t *listen;
    size_t             nlisten;
    kou_module_conf_t *modules;
    size_t             nmodules;
    size_t            *hooks[KOU_PHASE_COUNT];  /* module indices, in order */
    size_t             nhooks[KOU_PHASE_COUNT];
    kou_route_conf_t  *routes;
    size_t             nroutes;
} kou_config_t;

/*
 * Read and validate the core part of `file` (relative paths in it resolve
 * against `prefix`). Checks YAML syntax, every core key and its type, listen
 * addresses, that each module's .so exists (default: modules_dirs searched
 * in order for NAME.so), that hooks and route handlers name declared
 * modules, and route core keys (path|prefix, methods, host, handler,
 * max_body). Keys of modules and the module-owned route keys are left for
 * kou_conf_validate(). On failure returns KOU_ERROR with
 * "file:line:col: message" in err. The caller owns *out (kou_config_free).
 * modules_dirs is a NULL-terminated list of directories.
 */
int kou_config_load(const char *file, const char *prefix,
                    const char *const *modules_dirs, kou_config_t **out,
                    char *err, size_t errlen);

void kou_config_free(kou_config_t *cf);

/* The route keys the core owns (NULL-terminated), skipped by modules. */
extern const char *const kou_route_core_keys[];

/*
 * Validate a map node against one or more schemas for `scope`
 * (KOU_SCOPE_MODULE or KOU_SCOPE_ROUTE): every key must be in `skip` or in
 * a schema with that scope, values must have the schema's type, required
 * keys must be present. Absent keys with a default_value get a node holding
 * the default (so kou_conf_get finds it). Returns KOU_OK or KOU_ERROR with
 * "file:line:col: message" in err (the key's position, or the map's for a
 * missing key).
 */
int kou_conf_validate(kou_conf_t *map, const kou_conf_key_t *const *schemas,
                      size_t nschemas, unsigned scope,
                      const char *const *skip, char *err, size_t errlen);

/* ---- node accessors (also exported to modules through kou_host_t) ---- */

const kou_conf_t *kou_conf_get(const kou_conf_t *map, const char *key);
int kou_conf_str(const kou_conf_t *node, kou_str_t *out);
int kou_conf_int(const kou_conf_t *node, int64_t *out);
int kou_conf_bool(const kou_conf_t *node, int *out);
int kou_conf_size(const kou_conf_t *node, uint64_t *out);
int kou_conf_duration(const kou_conf_t *node, uint64_t *out_ms);
size_t kou_conf_len(const kou_conf_t *node);
const kou_conf_t *kou_conf_at(const kou_conf_t *node, size_t i,
                              kou_str_t *key);
int kou_conf_error(const kou_conf_t *node, char *err, size_t errlen,
                   const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- scalar syntax, shared by the core keys and the accessors ---- */

/* "16k", "1m", "2g", "512" (bytes, 1024-based). KOU_OK or KOU_ERROR. */
int kou_parse_size(const char *s, size_t n, uint64_t *out);
/* "250ms", "10s", "5m", "1h"; a bare number is seconds. Result in ms. */
int kou_parse_duration(const char *s, size_t n, uint64_t *out_ms);
/* true/false, on/off, yes/no. */
int kou_parse_bool(const char *s, size_t n, int *out);

#endif /* KOU_CONFIG_H */
