"""The metrics module: /metrics answers the Prometheus text format (checked
by a strict parser written from the format's specification, and by
`promtool check metrics` when it is installed), and its counts are exact
after a known set of requests, across two workers, a reload and a SIGKILL
of the workers."""

import os
import re
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402

WORKERS = 2
DELAY = "120ms"            # a /delay request lands in the le="0.25" bucket


# --------------------------------------------------------------------------
# A strict parser of the text exposition format, version 0.0.4

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FLOAT_RE = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
                       r"|[Ii]nf|NaN)$")
_TS_RE = re.compile(r"-?\d+$")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class FormatError(AssertionError):
    pass


def _float(text, what):
    if not _FLOAT_RE.match(text):
        raise FormatError("%s: %r is not a float" % (what, text))
    return float(text)


def _unescape(text, allowed, what):
    """Undo the escapes of `allowed` (a dict of the characters that may
    follow a backslash); any other backslash is an error."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in allowed:
                raise FormatError("%s: invalid escape in %r" % (what, text))
            out.append(allowed[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _labels(line, i, what):
    """Parse `{name="value",...}` starting at line[i] == "{"; return
    (labels dict, index after "}")."""
    labels = {}
    i += 1
    while True:
        while i < len(line) and line[i] in " \t":
            i += 1
        if i < len(line) and line[i] == "}":
            return labels, i + 1
        m = _LABEL_RE.match(line, i)
        if not m:
            raise FormatError("%s: bad label name at %r" % (what, line[i:]))
        name = m.group(0)
        if name.startswith("__"):
            raise FormatError("%s: reserved label name %r" % (what, name))
        if name in labels:
            raise FormatError("%s: label %r twice" % (what, name))
        i = m.end()
        if line[i:i + 2] != '="':
            raise FormatError("%s: expected =\" after label %r" % (what, name))
        i += 2
        start = i
        while i < len(line) and line[i] != '"':
            i += 2 if line[i] == "\\" else 1
        if i >= len(line):
            raise FormatError("%s: unterminated label value" % what)
        labels[name] = _unescape(line[start:i],
                                 {"\\": "\\", '"': '"', "n": "\n"}, what)
        i += 1
        if i < len(line) and line[i] == ",":
            i += 1
        elif i < len(line) and line[i] != "}":
            raise FormatError("%s: expected , or } after a label" % what)


def _family_of(name, families, current):
    """The family a sample named `name` belongs to."""
    if current is not None:
        t = families[current]["type"]
        if name == current and t in ("counter", "gauge", "untyped",
                                     "summary"):
            return current
        for suffix in ("_bucket", "_sum", "_count"):
            if (t == "histogram" and name == current + suffix) or (
                    t == "summary" and suffix != "_bucket"
                    and name == current + suffix):
                return current
    return name


def parse_exposition(body):
    """Parse `body` (bytes) strictly; return {family: {"type", "help",
    "samples": [(name, labels, value)]}}. Raises FormatError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("not UTF-8: %s" % e)
    if text and not text.endswith("\n"):
        raise FormatError("the last line does not end with a newline")
    if "\r" in text:
        raise FormatError("carriage return in the exposition")
    families, order, current, seen = {}, [], None, set()

    def family(name):
        if name not in families:
            families[name] = {"type": None, "help": None, "samples": []}
            order.append(name)
        return families[name]

    for n, line in enumerate(text.split("\n")[:-1], 1):
        what = "line %d" % n
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line[1:].lstrip(" \t").split(None, 2)
            if len(parts) < 2 or parts[0] not in ("HELP", "TYPE"):
                continue                      # a plain comment
            kw, name = parts[0], parts[1]
            rest = parts[2] if len(parts) > 2 else ""
            if not _NAME_RE.fullmatch(name):
                raise FormatError("%s: bad metric name %r" % (what, name))
            f = family(name)
            if name != current and (f["samples"] or name in seen):
                raise FormatError("%s: %s for %s after its samples or "
                                  "another family" % (what, kw, name))
            seen.add(name)
            current = name
            if kw == "HELP":
                if f["help"] is not None:
                    raise FormatError("%s: second HELP for %s" % (what, name))
                f["help"] = _unescape(rest, {"\\": "\\", "n": "\n"}, what)
            else:
                if f["type"] is not None:
                    raise FormatError("%s: second TYPE for %s" % (what, name))
                if rest not in _TYPES:
                    raise FormatError("%s: bad type %r" % (what, rest))
                if f["samples"]:
                    raise FormatError("%s: TYPE after samples" % what)
                f["type"] = rest
            continue

        m = _NAME_RE.match(line)
        if not m:
            raise FormatError("%s: bad sample line %r" % (what, line))
        name, i, labels = m.group(0), m.end(), {}
        if i < len(line) and line[i] == "{":
            labels, i = _labels(line, i, what)
        fields = line[i:].split()
        if not line[i:i + 1] in (" ", "\t") or len(fields) not in (1, 2):
            raise FormatError("%s: expected ' value [timestamp]' in %r"
                              % (what, line))
        value = _float(fields[0], what)
        if len(fields) == 2 and not _TS_RE.match(fields[1]):
            raise FormatError("%s: bad timestamp %r" % (what, fields[1]))
        fname = _family_of(name, families, current)
        if fname != current:
            if fname in seen:
                raise FormatError("%s: samples of %s are not grouped"
                                  % (what, fname))
            seen.add(fname)
            current = fname
        f = family(fname)
        if f["type"] is None:
            f["type"] = "untyped"
        key = (name, tuple(sorted(labels.items())))
        if any((s[0], tuple(sorted(s[1].items()))) == key
               for s in f["samples"]):
            raise FormatError("%s: duplicate series %r" % (what, key))
        if f["type"] == "counter" and not value >= 0:
            raise FormatError("%s: counter %s is %r" % (what, name, value))
        if f["type"] == "histogram" and name.endswith("_bucket"):
            if "le" not in labels:
                raise FormatError("%s: bucket without le" % what)
            _float(labels["le"].replace("+Inf", "Inf"), what)
        f["samples"].append((name, labels, value))

    for fname in order:
        if families[fname]["type"] == "histogram":
            _check_histogram(fname, families[fname]["samples"])
    return families


def _check_histogram(fname, samples):
    groups = {}
    for name, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(rest, {"buckets": [], "sum": None,
                                     "count": None})
        if name == fname + "_bucket":
            g["buckets"].append((float(labels["le"].replace("+Inf", "inf")),
                                 value))
        elif name == fname + "_sum":
            g["sum"] = value
        else:
            g["count"] = value
    for rest, g in groups.items():
        what = "%s%r" % (fname, rest)
        les = [le for le, _ in g["buckets"]]
        if les != sorted(les) or len(set(les)) != len(les):
            raise FormatError("%s: buckets not in increasing le order" % what)
        if not les or les[-1] != float("inf"):
            raise FormatError("%s: no +Inf bucket" % what)
        counts = [v for _, v in g["buckets"]]
        if counts != sorted(counts):
            raise FormatError("%s: buckets are not cumulative: %r"
                              % (what, counts))
        if g["sum"] is None or g["count"] is None:
            raise FormatError("%s: missing _sum or _count" % what)
        if g["count"] != counts[-1]:
            raise FormatError("%s: _count %r != +Inf bucket %r"
                              % (what, g["count"], counts[-1]))


def value(families, name, family=None, **labels):
    """The value of the sample `name` with exactly `labels`, or 0.0 when
    the series is absent (a counter that has not moved yet)."""
    f = families.get(family or name)
    if f is None:
        return 0.0
    for sname, slabels, v in f["samples"]:
        if sname == name and slabels == labels:
            return v
    return 0.0


# --------------------------------------------------------------------------
# The checker is checked too: it must refuse what the format refuses.

class ParserTest(kt.ServerTestCase):

    GOOD = (b"# HELP a_total Help with \\\\ and \\n.\n"
            b"# TYPE a_total counter\n"
            b"a_total{x=\"q\\\"\\\\\\n\",y=\"\"} 1\n"
            b"# TYPE h histogram\n"
            b"h_bucket{le=\"0.5\"} 1\n"
            b"h_bucket{le=\"+Inf\"} 2\n"
            b"h_sum 0.7\n"
            b"h_count 2\n")

    def test_accepts_valid(self):
        fams = parse_exposition(self.GOOD)
        self.assertEqual(value(fams, "a_total", x="q\"\\\n", y=""), 1)
        self.assertEqual(value(fams, "h_count", family="h"), 2)

    def test_refuses_invalid(self):
        bad = [
            self.GOOD[:-1],                                   # no final LF
            self.GOOD.replace(b"le=\"+Inf\"} 2", b"le=\"+Inf\"} 0"),
            self.GOOD.replace(b"h_count 2", b"h_count 3"),
            self.GOOD.replace(b"h_bucket{le=\"+Inf\"} 2\n", b""),
            self.GOOD.replace(b"h_sum 0.7\n", b""),
            self.GOOD.replace(b"\\\"\\\\", b"\\q"),           # bad escape
            self.GOOD.replace(b"x=\"", b"x=\"\n"),            # raw newline
            self.GOOD.replace(b"} 1\n", b"} one\n", 1),
            self.GOOD.replace(b"a_total{", b"a-total{"),
            self.GOOD + b"a_total{x=\"z\"} 2\n",              # not grouped
            self.GOOD + b"# TYPE a_total counter\n",          # second TYPE
            self.GOOD.replace(b"y=\"\"", b"x=\"\""),          # label twice
            self.GOOD.replace(b"counter", b"countr"),
            self.GOOD.replace(b"} 1\n", b"} -1\n", 1),        # counter < 0
            self.GOOD.replace(b",y=\"\"} 1", b",y=\"\"} 1\na_total{x="
                              b"\"q\\\"\\\\\\n\",y=\"\"} 1"),  # duplicate
        ]
        for i, body in enumerate(bad):
            with self.assertRaises(FormatError, msg="case %d: %r"
                                   % (i, body)):
                parse_exposition(body)


# --------------------------------------------------------------------------
# The server

def config(workers=WORKERS, routes=(), allow=None, **extra):
    metrics_route = {"path": "/metrics", "handler": "metrics"}
    if allow is not None:
        metrics_route["allow"] = allow
    return kt.make_config(
        workers=workers,
        shutdown_timeout="10s",
        modules={"hello": {"path": kt.plugin_path("hello")},
                 "delay": {"path": kt.plugin_path("delay")},
                 "metrics": {}},
        hooks={"log": ["metrics"]},
        routes=[{"path": "/hello", "handler": "hello",
                 "methods": ["GET", "HEAD", "POST", "PURGE", "BREW"]},
                {"path": "/delay", "handler": "delay", "delay": DELAY},
                metrics_route] + list(routes),
        **extra)


REQUIRED = {
    "kourier_connections_accepted_total": "counter",
    "kourier_connections": "gauge",
    "kourier_http_requests_total": "counter",
    "kourier_http_request_duration_seconds": "histogram",
    "kourier_http_request_bytes_total": "counter",
    "kourier_http_response_bytes_total": "counter",
    "kourier_http_parse_errors_total": "counter",
    "kourier_tls_handshakes_total": "counter",
    "kourier_config_reloads_total": "counter",
    "kourier_config_last_reload_success_timestamp_seconds": "gauge",
    "kourier_worker_restarts_total": "counter",
    "kourier_build_info": "gauge",
    "kourier_module_info": "gauge",
}


def wire_len(resp):
    """Bytes of a Content-Length-framed response on the wire."""
    assert not resp.chunked and not resp.close_delimited, resp
    return len(resp.head) + 4 + len(resp.body)


class Traffic(object):
    """Requests sent on fresh connections, with their sizes on the wire."""

    def __init__(self, server):
        self.server = server
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections = 0

    def request(self, method, target, status):
        raw = kt.request_bytes(method, target)
        with self.server.client() as c:
            c.send(raw)
            resp = c.read_response(method=method)
        self.connections += 1
        self.last_in, self.last_out = len(raw), wire_len(resp)
        self.bytes_in += self.last_in
        self.bytes_out += self.last_out
        assert resp.status == status, (method, target, resp)
        return resp

    def scrape(self):
        resp = self.request("GET", "/metrics", 200)
        ctype = resp.header("Content-Type") or ""
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        return parse_exposition(resp.body), resp.body


class MetricsTest(kt.ServerTestCase):

    def setUp(self):
        self.server = kt.Server(config())
        self.addCleanup(self.server.kill)
        self.server.start()
        self.addCleanup(self.check_server_log, self.server)
        self.t = Traffic(self.server)

    def requests(self, fams, route, method, code):
        return value(fams, "kourier_http_requests_total", route=route,
                     method=method, code=str(code))

    def test_exposition(self):
        fams, body = self.t.scrape()
        for name, typ in REQUIRED.items():
            self.assertIn(name, fams, "family %s missing" % name)
            self.assertEqual(fams[name]["type"], typ, name)
            self.assertTrue(fams[name]["help"], "%s has no HELP" % name)
        build = fams["kourier_build_info"]["samples"]
        self.assertEqual(len(build), 1)
        self.assertEqual(set(build[0][1]), {"version", "simd"})
        self.assertTrue(build[0][1]["version"])
        names = {s[1].get("name") for s in
                 fams["kourier_module_info"]["samples"]}
        # every module of the configuration, not only metrics itself
        self.assertIn("metrics", names)
        self.assertIn("hello", names)
        for state in ("reading", "writing", "idle"):
            self.assertGreaterEqual(value(fams, "kourier_connections",
                                          state=state), 0)
        # Every route of the config has a histogram from the start.
        hist = fams["kourier_http_request_duration_seconds"]["samples"]
        routes = {s[1]["route"] for s in hist}
        self.assertEqual(routes, {"/hello", "/delay", "/metrics"})
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "metrics"], input=body,
                               capture_output=True, timeout=kt.DEADLINE)
            self.assertEqual(r.returncode, 0, "promtool: %s%s" % (
                r.stdout.decode(errors="replace"),
                r.stderr.decode(errors="replace")))

    def test_counts_after_known_requests(self):
        t = self.t
        before, _ = t.scrape()
        # The scrape is counted once its response is complete, after it
        # produced its body: it shows in the next one.
        t.bytes_in, t.bytes_out, t.connections = t.last_in, t.last_out, 0

        sent = {("/hello", "GET", 200): 5, ("/hello", "HEAD", 200): 2,
                ("/hello", "POST", 405): 3, ("/hello", "other", 405): 2,
                ("/delay", "GET", 200): 2}
        for _ in range(5):
            t.request("GET", "/hello", 200)
        for _ in range(2):
            t.request("HEAD", "/hello", 200)
        for _ in range(3):
            t.request("POST", "/hello", 405)
        t.request("PURGE", "/hello", 405)
        t.request("BREW", "/hello", 405)
        for _ in range(2):
            t.request("GET", "/delay", 200)
        accepted = t.connections + 1          # and the next scrape's
        bytes_in, bytes_out = t.bytes_in, t.bytes_out
        after, _ = t.scrape()

        for (route, method, code), n in sent.items():
            self.assertEqual(self.requests(after, route, method, code)
                             - self.requests(before, route, method, code), n,
                             "%s %s %s" % (route, method, code))
        self.assertEqual(self.requests(after, "/metrics", "GET", 200)
                         - self.requests(before, "/metrics", "GET", 200), 1)
        methods = {s[1]["method"] for s in
                   after["kourier_http_requests_total"]["samples"]}
        self.assertLessEqual(methods, {"GET", "HEAD", "POST", "PUT", "DELETE",
                                       "CONNECT", "OPTIONS", "TRACE",
                                       "PATCH", "other"})

        def delta(name, **labels):
            return (value(after, name, **labels)
                    - value(before, name, **labels))

        self.assertEqual(delta("kourier_connections_accepted_total"),
                         accepted)
        self.assertEqual(delta("kourier_http_request_bytes_total"),
                         bytes_in)
        self.assertEqual(delta("kourier_http_response_bytes_total"),
                         bytes_out)

        hist = "kourier_http_request_duration_seconds"

        def hdelta(suffix, **labels):
            return (value(after, hist + suffix, family=hist, **labels)
                    - value(before, hist + suffix, family=hist, **labels))

        self.assertEqual(hdelta("_count", route="/hello"), 12)
        self.assertEqual(hdelta("_count", route="/delay"), 2)
        self.assertEqual(hdelta("_bucket", route="/delay", le="0.1"), 0)
        self.assertEqual(hdelta("_bucket", route="/delay", le="+Inf"), 2)
        self.assertGreaterEqual(hdelta("_sum", route="/delay"), 0.2)
        self.assertLess(hdelta("_sum", route="/hello"), 12 * 0.1)

    def test_parse_errors(self):
        before, _ = self.t.scrape()
        for _ in range(2):
            with self.server.client() as c:
                c.send(b"G(T /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertEqual(c.read_response().status, 400)
        with self.server.client() as c:
            c.send(b"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n")
            self.assertEqual(c.read_response().status, 505)
        after, _ = self.t.scrape()
        for status, n in (("400", 2), ("505", 1), ("431", 0)):
            self.assertEqual(
                value(after, "kourier_http_parse_errors_total", status=status)
                - value(before, "kourier_http_parse_errors_total",
                        status=status), n, status)

    def test_connection_gauges(self):
        idle, reading = [], []
        for _ in range(3):
            c = self.server.client()
            self.addCleanup(c.close)
            c.send(kt.request_bytes("GET", "/hello"))
            self.assertEqual(c.read_response().status, 200)
            idle.append(c)
        for _ in range(2):
            c = self.server.client()
            self.addCleanup(c.close)
            c.send(b"GET /hello HTTP/1.1\r\nHo")
            kt.wait_request_consumed(c.sock, self.server.port)
            reading.append(c)
        fams, _ = self.t.scrape()
        self.assertEqual(value(fams, "kourier_connections", state="idle"), 3)
        self.assertEqual(value(fams, "kourier_connections",
                               state="reading"), 2)
        # the scraping connection itself
        self.assertEqual(value(fams, "kourier_connections",
                               state="writing"), 1)
        for c in idle + reading:
            c.close()
        kt.wait_until(lambda: value(self.t.scrape()[0], "kourier_connections",
                                    state="idle") == 0,
                      what="idle gauge back to 0")

    def test_reload_keeps_counts(self):
        for _ in range(4):
            self.t.request("GET", "/hello", 200)
        before, _ = self.t.scrape()
        gen = value(before, "kourier_config_generation")
        rc, err = self.server.reload(config(routes=[
            {"path": "/hello2", "handler": "hello"}]))
        self.assertEqual(rc, 0, err)
        for _ in range(3):
            self.t.request("GET", "/hello2", 200)
        self.t.request("GET", "/hello", 200)
        after, _ = self.t.scrape()
        self.assertEqual(self.requests(after, "/hello", "GET", 200),
                         self.requests(before, "/hello", "GET", 200) + 1)
        self.assertEqual(self.requests(after, "/hello2", "GET", 200), 3)
        self.assertEqual(value(after, "kourier_config_reloads_total",
                               result="ok"), 1)
        self.assertEqual(value(after, "kourier_config_reloads_total",
                               result="error"), 0)
        self.assertEqual(value(after, "kourier_config_generation"), gen + 1)
        self.assertGreaterEqual(
            value(after, "kourier_config_last_reload_success_timestamp_"
                  "seconds"),
            value(before, "kourier_config_last_reload_success_timestamp_"
                  "seconds"))

        # A refused reload counts as an error and changes nothing. (SIGHUP
        # itself: `kourier -s reload` refuses a broken file before it
        # signals the master.)
        self.server.write_config(config(max_series_typo=1))
        self.server.signal(signal.SIGHUP)
        fams = kt.wait_until(
            lambda: (lambda f: f if value(f, "kourier_config_reloads_total",
                                          result="error") == 1 else None)(
                self.t.scrape()[0]),
            what="kourier_config_reloads_total{result=\"error\"} 1")
        self.assertEqual(value(fams, "kourier_config_reloads_total",
                               result="ok"), 1)
        self.assertEqual(self.requests(fams, "/hello2", "GET", 200), 3)
        self.assertEqual(self.requests(fams, "/hello", "GET", 200),
                         self.requests(after, "/hello", "GET", 200))

    def test_sigkill_keeps_counts(self):
        for _ in range(6):
            self.t.request("GET", "/hello", 200)
        for _ in range(2):
            self.t.request("POST", "/hello", 405)
        before, _ = self.t.scrape()
        old = self.server.ready_pids()
        exclude = list(old)
        # Kill every worker in turn, so that whichever served the requests
        # died with its counts in shared memory.
        for victim in old:
            mark = self.server.log_mark()
            os.kill(victim, signal.SIGKILL)
            exclude += self.server.wait_workers(1, since=mark,
                                                exclude=exclude)
        after, _ = self.t.scrape()
        self.assertEqual(self.requests(after, "/hello", "GET", 200), 6)
        self.assertEqual(self.requests(after, "/hello", "POST", 405), 2)
        self.assertEqual(self.requests(after, "/metrics", "GET", 200),
                         self.requests(before, "/metrics", "GET", 200) + 1)
        self.assertEqual(value(after, "kourier_worker_restarts_total"),
                         WORKERS)
        hist = "kourier_http_request_duration_seconds"
        self.assertEqual(value(after, hist + "_count", family=hist,
                               route="/hello"), 8)
        self.assertGreaterEqual(
            value(after, "kourier_http_request_bytes_total"),
            value(before, "kourier_http_request_bytes_total"))


class AllowTest(kt.ServerTestCase):

    def serve(self, allow):
        server = kt.Server(config(workers=1, allow=allow))
        self.addCleanup(server.kill)
        server.start()
        self.addCleanup(self.check_server_log, server)
        return server

    def test_denied(self):
        server = self.serve(["10.0.0.0/8", "::1"])
        resp = server.get("/metrics")
        self.assertStatus(resp, 403)
        self.assertNotIn(b"kourier_", resp.body)

    def test_empty_list_denies_everyone(self):
        server = self.serve([])
        self.assertStatus(server.get("/metrics"), 403)

    def test_allowed(self):
        server = self.serve(["192.168.0.0/16", "127.0.0.0/8"])
        resp = server.get("/metrics")
        self.assertStatus(resp, 200)
        parse_exposition(resp.body)
        self.assertStatus(server.request("POST", "/metrics"), 405)

    def check_refused(self, cfg, pattern):
        server = kt.Server(cfg)
        self.addCleanup(server.kill)
        r = server.run_command("-t")
        self.assertNotEqual(r.returncode, 0, "accepted: %s" % cfg)
        self.assertRegex(r.stderr, pattern)

    def test_bad_network(self):
        self.check_refused(config(allow=["127.0.0.1/33"]),
                           r"kourier\.yaml:\d+:\d+: metrics: allow")
        self.check_refused(config(allow=["localhost"]),
                           r"kourier\.yaml:\d+:\d+: metrics: allow")

    def test_allow_outside_metrics_route(self):
        cfg = config()
        cfg["routes"][0]["allow"] = ["127.0.0.1"]
        self.check_refused(cfg, r"kourier\.yaml:\d+:\d+: metrics: \"allow\" "
                           r"applies only")


if __name__ == "__main__":
    kt.main()
