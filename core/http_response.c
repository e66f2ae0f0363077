/*
 * Pieces of responses that do not depend on a request: reason phrases and
 * the Date field, formatted once per second per worker.
 */

#include <stdio.h>
#include <time.h>

#include "event.h"
#include "http_request.h"

kou_str_t
kou_http_reason(int status)
{
    switch (status) {
    case 100: return KOU_STR("Continue");
    case 101: return KOU_STR("Switching Protocols");
    case 200: return KOU_STR("OK");
    case 201: return KOU_STR("Created");
    case 202: return KOU_STR("Accepted");
    case 204: return KOU_STR("No Content");
    case 206: return KOU_STR("Partial Content");
    case 301: return KOU_STR("Moved Permanently");
    case 302: return KOU_STR("Found");
    case 303: return KOU_STR("See Other");
    case 304: return KOU_STR("Not Modified");
    case 307: return KOU_STR("Temporary Redirect");
    case 308: return KOU_STR("Permanent Redirect");
    case 400: return KOU_STR("Bad Request");
    case 401: return KOU_STR("Unauthorized");
    case 403: return KOU_STR("Forbidden");
    case 404: return KOU_STR("Not Found");
    case 405: return KOU_STR("Method Not Allowed");
    case 406: return KOU_STR("Not Acceptable");
    case 408: return KOU_STR("Request Timeout");
    case 409: return KOU_STR("Conflict");
    case 410: return KOU_STR("Gone");
    case 411: return KOU_STR("Length Required");
    case 412: return KOU_STR("Precondition Failed");
    case 413: return KOU_STR("Content Too Large");
    case 414: return KOU_STR("URI Too Long");
    case 415: return KOU_STR("Unsupported Media Type");
    case 416: return KOU_STR("Range Not Satisfiable");
    case 417: return KOU_STR("Expectation Failed");
    case 421: return KOU_STR("Misdirected Request");
    case 422: return KOU_STR("Unprocessable Content");
    case 426: return KOU_STR("Upgrade Required");
    case 429: return KOU_STR("Too Many Requests");
    case 431: return KOU_STR("Request Header Fields Too Large");
    case 500: return KOU_STR("Internal Server Error");
    case 501: return KOU_STR("Not Implemented");
    case 502: return KOU_STR("Bad Gateway");
    case 503: return KOU_STR("Service Unavailable");
    case 504: return KOU_STR("Gateway Timeout");
    case 505: return KOU_STR("HTTP Version Not Supported");
    default:  return KOU_STR("Unknown");
    }
}

kou_str_t
kou_http_date_line(void)
{
    static char   line[64];
    static size_t len;
    static time_t last = -1;

    if (kou_loop.wall != last) {
        static const char days[7][4] = {
            "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"
        };
        static const char months[12][4] = {
            "Jan", "Feb", "Mar", "Apr", "May", "Jun",
            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
        };
        struct tm tm;
        time_t    now = kou_loop.wall;

        if (now == 0) {
            now = time(NULL);
        }
        gmtime_r(&now, &tm);
        /* IMF-fixdate, RFC 9110 §5.6.7; no locale involved */
        len = (size_t) snprintf(line, sizeof(line),
                                "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                                days[tm.tm_wday], tm.tm_mday,
                                months[tm.tm_mon], tm.tm_year + 1900,
                                tm.tm_hour, tm.tm_min, tm.tm_sec);
        last = kou_loop.wall;
    }
    return (kou_str_t){ line, len };
}

kou_str_t
kou_http_status_lines(int status)
{
    static struct {
        int    status;
        time_t wall;
        size_t len;
        char   buf[160];
    }              cache[16];
    kou_str_t      date = kou_http_date_line();
    __typeof__(cache[0]) *e = &cache[(unsigned) status % 16];

    if (e->status != status || e->wall != kou_loop.wall || e->len == 0) {
        kou_str_t reason = kou_http_reason(status);
        int       n;

        n = snprintf(e->buf, sizeof(e->buf),
                     "HTTP/1.1 %03d %.*s\r\nServer: kourier\r\n%.*s",
                     status, (int) reason.n, reason.p, (int) date.n, date.p);
        e->len = n > 0 && (size_t) n < sizeof(e->buf) ? (size_t) n : 0;
        e->status = status;
        e->wall = kou_loop.wall;
    }
    return (kou_str_t){ e->buf, e->len };
}
