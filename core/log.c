/*
 * Error log. Lines are formatted into a stack buffer and written with one
 * write(2) on an O_APPEND descriptor: atomic for lines under PIPE_BUF on
 * pipes and in practice for regular files, so processes never interleave.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

int kou_log_level = KOU_LOG_INFO;

static int         kou_log_fd_ = STDERR_FILENO;
static const char *kou_log_role = "master";

static const char *const kou_log_names[] = {
    "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"
};

int
kou_log_open(const char *path)
{
    int fd;

    if (strcmp(path, "stderr") == 0) {
        fd = STDERR_FILENO;
    } else {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            return KOU_ERROR;
        }
    }
    if (kou_log_fd_ != STDERR_FILENO && kou_log_fd_ != fd) {
        close(kou_log_fd_);
    }
    kou_log_fd_ = fd;
    return KOU_OK;
}

void
kou_log_set_role(const char *role)
{
    kou_log_role = role;
}

int
kou_log_fd(void)
{
    return kou_log_fd_;
}

void
kou_log(int level, const char *fmt, ...)
{
    char       line[2048];
    size_t     n;
    int        rc, saved = errno;
    va_list    ap;
    time_t     now;
    struct tm  tm;

    if (level > kou_log_level) {
        return;
    }
    now = time(NULL);
    localtime_r(&now, &tm);
    n = strftime(line, sizeof(line), "%Y/%m/%d %H:%M:%S ", &tm);
    rc = snprintf(line + n, sizeof(line) - n, "[%s] %d#%s: ",
                  kou_log_names[level & 7], (int) getpid(), kou_log_role);
    n += (size_t) rc;

    va_start(ap, fmt);
    rc = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (rc < 0) {
        rc = 0;
    }
    n = kou_min(n + (size_t) rc, sizeof(line) - 2);
    line[n++] = '\n';

    /* A log that cannot be written has nowhere to report that; drop it. */
    if (write(kou_log_fd_, line, n) < 0) {
        (void) 0;
    }
    errno = saved;
}
