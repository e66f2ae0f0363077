/*
 * The error log: one line per event, written with a single write(2) so that
 * lines from several processes sharing the file never interleave.
 */

#ifndef KOU_LOG_H
#define KOU_LOG_H

#include "kou.h"

/* Messages above this level are dropped (default KOU_LOG_INFO). */
extern int kou_log_level;

/*
 * Send the log to `path` ("stderr" or a file opened for append, created
 * 0644). Replaces the current target; safe to call again to reopen after
 * rotation (SIGUSR1). Returns KOU_OK or KOU_ERROR with errno set; on error
 * the previous target stays.
 */
int kou_log_open(const char *path);

/* Who is writing ("master", "worker"): shown in every line with the pid. */
void kou_log_set_role(const char *role);

/* Write one line: "2026/11/26 05:02:47 [error] 1234#worker: message". */
void kou_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The descriptor lines go to (so that a child can inherit it). */
int kou_log_fd(void);

#define kou_log_error(...)  kou_log(KOU_LOG_ERR, __VA_ARGS__)
#define kou_log_warn(...)   kou_log(KOU_LOG_WARN, __VA_ARGS__)
#define kou_log_notice(...) kou_log(KOU_LOG_NOTICE, __VA_ARGS__)
#define kou_log_info(...)   kou_log(KOU_LOG_INFO, __VA_ARGS__)
#define kou_log_debug(...)                                   \
    do {                                                     \
        if (kou_log_level >= KOU_LOG_DEBUG) {                \
            kou_log(KOU_LOG_DEBUG, __VA_ARGS__);             \
        }                                                    \
    } while (0)

#endif /* KOU_LOG_H */
