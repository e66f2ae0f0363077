"""The access_log module: lines for a known set of requests in the combined
format, in JSON and in a format string; hostile header values stay on one
line; lines are buffered (no write per request) and flushed by size, timer
and exit; SIGUSR1 after `mv` writes to a new file; a full disk, a file that
cannot be opened and a FIFO nobody reads are reported once and never stop
the server from answering."""

import json
import os
import re
import signal
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402

# A field of a text format: printable ASCII, `"` and `\` only as \xHH.
_F = r'(?:[ !#-\[\]-~]|\\x[0-9A-F]{2})*'
COMBINED_RE = re.compile(
    r'^(?P<addr>[0-9a-f.:]+|unix) - - '
    r'\[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
    r'"(?P<request>' + _F + r')" (?P<status>\d{1,3}) (?P<bytes>\d+) '
    r'"(?P<referer>' + _F + r')" "(?P<agent>' + _F + r')"$')


def config(path, workers=1, **options):
    al = {"file": path}
    al.update(options)
    return kt.make_config(
        workers=workers,
        shutdown_timeout="10s",
        modules={"hello": {"path": kt.plugin_path("hello")},
                 "access_log": al},
        hooks={"log": ["access_log"]},
        routes=[{"path": "/hello", "handler": "hello",
                 "methods": ["GET", "HEAD", "POST"]}])


def read_lines(path):
    """Complete lines of the file (bytes, without the newline); [] when it
    does not exist. A last line without its newline is an error: the
    module writes whole lines."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    if data and not data.endswith(b"\n"):
        raise AssertionError("%s ends in the middle of a line: %r"
                             % (path, data[-200:]))
    return data.split(b"\n")[:-1]


def wire_len(resp):
    return len(resp.head) + 4 + len(resp.body)


class AccessLogCase(kt.ServerTestCase):

    def serve(self, workers=1, path=None, **options):
        """Start a server logging to `path` (default: logs/access.log in
        its prefix) with the module options given."""
        server = kt.Server(config("/nonexistent"), workers=workers)
        self.addCleanup(server.kill)
        os.mkdir(os.path.join(server.dir, "logs"))
        self.path = path or os.path.join(server.dir, "logs", "access.log")
        server.write_config(config(self.path, workers=workers, **options))
        server.start()
        self.addCleanup(self.check_server_log, server)
        self.server = server
        return server

    def wait_lines(self, n, path=None):
        path = path or self.path
        return kt.wait_until(lambda: (lambda ls: ls if len(ls) >= n
                                      else None)(read_lines(path)),
                             what="%d lines in %s (have %d)"
                             % (n, path, len(read_lines(path))))

    def send(self, method="GET", target="/hello", headers=None,
             status=200):
        """One request on a fresh connection; returns the response."""
        with self.server.client() as c:
            resp = c.request(method, target, headers=headers)
        self.assertStatus(resp, status, "%s %s" % (method, target))
        return resp

    def known_requests(self):
        """Four requests; returns [(method, target, status, wire bytes,
        referer, agent)] in the order sent."""
        sent = []
        for method, target, status, ref, agent in (
                ("GET", "/hello", 200, "http://example.com/", "agent/1"),
                ("HEAD", "/hello", 200, None, "agent/2"),
                ("POST", "/hello", 405, None, None),
                ("GET", "/hello?x=1&y=%22", 200, None, "agent/4")):
            headers = []
            if ref:
                headers.append(("Referer", ref))
            if agent:
                headers.append(("User-Agent", agent))
            resp = self.send(method, target, headers, status)
            sent.append((method, target, status, wire_len(resp), ref, agent,
                         len(resp.body)))
        return sent


class FormatTest(AccessLogCase):

    def test_combined(self):
        self.serve()
        start = time.time()
        sent = self.known_requests()
        lines = self.wait_lines(len(sent))
        self.assertEqual(len(lines), len(sent), lines)
        for line, (method, target, status, size, ref, agent, body) in zip(
                lines, sent):
            m = COMBINED_RE.match(line.decode("ascii"))
            self.assertIsNotNone(m, "not a combined line: %r" % line)
            self.assertEqual(m.group("addr"), "127.0.0.1")
            self.assertEqual(m.group("request"),
                             ("%s %s HTTP/1.1" % (method, target))
                             .replace('"', "\\x22"))
            self.assertEqual(int(m.group("status")), status)
            # like nginx's combined format: body bytes, not the head
            self.assertEqual(int(m.group("bytes")), body)
            self.assertEqual(m.group("referer"), ref or "-")
            self.assertEqual(m.group("agent"), agent or "-")
            t = time.mktime(time.strptime(m.group("time"),
                                          "%d/%b/%Y:%H:%M:%S %z"))
            self.assertLessEqual(abs(t - start), 60)

    def test_json(self):
        self.serve(format="json")
        sent = self.known_requests()
        lines = self.wait_lines(len(sent))
        self.assertEqual(len(lines), len(sent), lines)
        for line, (method, target, status, size, ref, agent, body) in zip(
                lines, sent):
            doc = json.loads(line.decode("utf-8"))
            self.assertEqual(doc["remote_addr"], "127.0.0.1")
            self.assertEqual(doc["request"], "%s %s HTTP/1.1"
                             % (method, target))
            self.assertEqual(doc["method"], method)
            self.assertEqual(doc["uri"], target)
            self.assertEqual(doc["status"], status)
            self.assertEqual(doc["bytes_sent"], size)
            self.assertEqual(doc["body_bytes_sent"], body)
            self.assertEqual(doc["referer"], ref or "")
            self.assertEqual(doc["user_agent"], agent or "")
            self.assertEqual(doc["route"], "/hello")
            self.assertIsNone(doc["upstream_response_time"])
            self.assertIsNone(doc["upstream_addr"])
            self.assertIsInstance(doc["request_time"], float)
            self.assertRegex(doc["time"],
                             r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")

    def test_format_string(self):
        self.serve(format="$request_method|$request_uri|$status|$route|"
                   "$http_x_test|${request_length}$$|$host|$request_time")
        raw = kt.request_bytes("GET", "/hello?q=1",
                               headers=[("X-Test", "t\"1")])
        with self.server.client() as c:
            c.send(raw)
            self.assertStatus(c.read_response(), 200)
        self.send("POST", status=405)
        lines = self.wait_lines(2)
        first = lines[0].decode("ascii").split("|")
        self.assertEqual(first[:6], ["GET", "/hello?q=1", "200", "/hello",
                                     "t\\x221", "%d$" % len(raw)])
        self.assertEqual(first[6], "127.0.0.1")
        self.assertRegex(first[7], r"^\d+\.\d{3}$")
        self.assertEqual(lines[1].decode("ascii").split("|")[:5],
                         ["POST", "/hello", "405", "/hello", "-"])

    def test_variables_without_upstream(self):
        # no module set them: "-" like nginx, and null in JSON
        self.serve(format="$status|$upstream_addr|$upstream_status|"
                   "$upstream_response_time|$var_nosuch")
        self.send()
        self.assertEqual(self.wait_lines(1)[0], b"200|-|-|-|-")

    def test_every_header_byte_escaped_alike(self):
        # every byte a field value may hold, at every offset in a word:
        # the combined preset (unchecked fast path) and a format string
        # (checked path) must escape them the same way
        agent = bytes(range(0x21, 0x7f)) + b"\t" + bytes(range(0x80, 0x100))
        expect = "".join(chr(b) if 0x20 <= b < 0x7f and b not in b'"\\'
                         else "\\x%02X" % b for b in agent)
        for fmt in ("combined", "$http_user_agent"):
            self.serve(format=fmt)
            for shift in range(9):
                ua = b"a" * shift + agent
                raw = (b"GET /hello HTTP/1.1\r\nHost: x\r\nUser-Agent: "
                       + ua + b"\r\n\r\n")
                with self.server.client() as c:
                    c.send(raw)
                    self.assertStatus(c.read_response(), 200)
            lines = self.wait_lines(9)
            for shift, line in enumerate(lines):
                text = line.decode("ascii")
                if fmt == "combined":
                    m = COMBINED_RE.match(text)
                    self.assertIsNotNone(m, text)
                    text = m.group("agent")
                self.assertEqual(text, "a" * shift + expect, fmt)
            self.server.kill()

    def test_escape_found_at_any_length_and_place(self):
        # The combined preset copies a value as it is, in whole loads whose
        # shape depends on its length (1-3, 4-7, 8-15, 16-32 bytes,
        # longer), and escapes the line only when a load held a byte to
        # escape: one such byte, at every place in values of every length,
        # must be found, or it reaches the file raw.
        self.serve()
        bad = [b'"', b"\\", b"\t", b"\x80", b"\xff", b"\xc3"]
        good = b"!#[]~ az"
        agents = []
        for n in range(1, 41):
            plain = bytes(good[(n + i) % len(good)] for i in range(n))
            if plain[:1] == b" " or plain[-1:] == b" ":
                plain = b"x" + plain[1:-1] + b"x" if n > 1 else b"x"
            agents.append(plain)
            for pos in range(n):
                c = bad[(n + pos) % len(bad)]
                if c == b"\t" and pos in (0, n - 1):
                    c = b'"'        # a tab at either end is not part of it
                agents.append(plain[:pos] + c + plain[pos + 1:])
        with self.server.client() as c:
            for ua in agents:
                c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nUser-Agent: "
                       + ua + b"\r\n\r\n")
                self.assertStatus(c.read_response(), 200)
        lines = self.wait_lines(len(agents))
        self.assertEqual(len(lines), len(agents))
        for ua, line in zip(agents, lines):
            m = COMBINED_RE.match(line.decode("ascii"))
            self.assertIsNotNone(m, line)
            expect = "".join(chr(b) if 0x20 <= b < 0x7f and b not in b'"\\'
                             else "\\x%02X" % b for b in ua)
            self.assertEqual(m.group("agent"), expect, ua)

    def test_agent_fields_found_in_any_case(self):
        # Referer and User-Agent are found whatever their case, the first
        # of each name wins, and a name that differs in one byte ('_' for
        # '-') is another field.
        for fmt in ("combined", '"$http_referer" "$http_user_agent"'):
            self.serve(format=fmt)
            self.send(headers=[("X-Other", "1"), ("User_Agent", "wrong"),
                               ("uSER-aGENT", "first"),
                               ("user-agent", "second"),
                               ("REFERER", "http://r/"),
                               ("Referer", "http://later/")])
            line = self.wait_lines(1)[0].decode("ascii")
            self.assertTrue(line.endswith('"http://r/" "first"'),
                            "%s: %s" % (fmt, line))
            self.server.kill()

    def test_bad_formats_refused(self):
        for fmt, pattern in (("$nosuch", r"unknown variable \$nosuch"),
                             ("cost: $", r"not followed by a variable"),
                             ("${status", r"not followed by a variable")):
            server = kt.Server(config("/tmp/x.log", format=fmt))
            self.addCleanup(server.kill)
            r = server.run_command("-t")
            self.assertNotEqual(r.returncode, 0, fmt)
            self.assertRegex(r.stderr, r"kourier\.yaml:\d+:\d+: access_log: "
                             r"format: .*" + pattern)
        server = kt.Server(config("/nonexistent-dir/access.log"))
        self.addCleanup(server.kill)
        r = server.run_command("-t")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("does not exist", r.stderr)


# Header values a client may send that must not break or forge a line:
# quotes, a backslash, a tab, obs-text that is not UTF-8, and UTF-8.
HOSTILE_AGENT = b'x" 200 1 "-" "forged\\ \t\xff\xc3\xa9'
HOSTILE_REFERER = b'" - - [01/Jan/2000:00:00:00 +0000] "GET'


class HostileTest(AccessLogCase):

    def hostile(self):
        """A request whose header block holds a bare LF (refused by the
        parser: it cannot reach the log as a line break), then one with
        hostile but valid values."""
        with self.server.client() as c:
            c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nUser-Agent: a\n"
                   b"127.0.0.1 - - [forged] \"GET /x HTTP/1.1\" 200 1\r\n\r\n")
            self.assertEqual(c.read_response().status, 400)
        raw = (b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: "
               + HOSTILE_AGENT + b"\r\nReferer: " + HOSTILE_REFERER
               + b"\r\n\r\n")
        with self.server.client() as c:
            c.send(raw)
            self.assertStatus(c.read_response(), 200)
        self.send()

    def test_combined_one_line_each(self):
        self.serve()
        self.hostile()
        lines = self.wait_lines(2)
        for line in lines:
            self.assertIsNotNone(COMBINED_RE.match(line.decode("ascii")),
                                 "forged or broken line %r" % line)
            self.assertFalse(line.startswith(b"127.0.0.1 - - [forged]"))
        evil = [l for l in lines if b"forged" in l]
        self.assertEqual(len(evil), 1, lines)
        m = COMBINED_RE.match(evil[0].decode("ascii"))
        self.assertEqual(m.group("agent"),
                         'x\\x22 200 1 \\x22-\\x22 \\x22forged\\x5C '
                         '\\x09\\xFF\\xC3\\xA9')
        self.assertEqual(m.group("referer"),
                         '\\x22 - - [01/Jan/2000:00:00:00 +0000] \\x22GET')
        self.assertEqual(m.group("status"), "200")

    def test_json_one_line_each(self):
        self.serve(format="json")
        self.hostile()
        lines = self.wait_lines(2)
        docs = [json.loads(l.decode("utf-8")) for l in lines]
        evil = [d for d in docs if "forged" in d["user_agent"]]
        self.assertEqual(len(evil), 1, lines)
        # valid UTF-8 is kept, the lone 0xff byte becomes U+00FF
        self.assertEqual(evil[0]["user_agent"],
                         'x" 200 1 "-" "forged\\ \t\u00ff\u00e9')
        self.assertEqual(evil[0]["referer"],
                         HOSTILE_REFERER.decode("latin-1"))
        for line in lines:
            self.assertNotIn(b"\t", line)
            self.assertNotIn(b"\xff", line)


class BufferTest(AccessLogCase):

    def test_no_write_per_request(self):
        # With a flush timer that never fires during the test, lines reach
        # the file only when 4 KiB are buffered, and at exit.
        self.serve(buffer="4k", flush="1h")
        with self.server.client() as c:
            # On one connection the worker logs request k before it
            # answers request k+1: once the last answer is in, two lines
            # would be in the file if each were written at once.
            for _ in range(3):
                self.assertStatus(c.request("GET", "/hello"), 200)
            self.assertEqual(read_lines(self.path), [],
                             "a line was written before the buffer filled")
            n = 3
            while not read_lines(self.path):
                self.assertStatus(c.request("GET", "/hello"), 200)
                n += 1
                self.assertLess(n, 200, "4 KiB of lines never written")
        written = len(read_lines(self.path))
        self.assertLess(written, n)
        self.assertLessEqual(os.path.getsize(self.path), 4096)
        # A graceful stop flushes the rest.
        self.server.signal(signal.SIGQUIT)
        self.assertEqual(self.server.wait_exit(), 0)
        lines = read_lines(self.path)
        self.assertEqual(len(lines), n)
        for line in lines:
            self.assertIsNotNone(COMBINED_RE.match(line.decode("ascii")))

    def test_line_longer_than_buffer(self):
        self.serve(buffer="4k", flush="100ms")
        self.send(headers=[("User-Agent", "a" * 6000)])
        self.send(headers=[("User-Agent", "short")])
        lines = self.wait_lines(2)
        self.assertEqual(len(lines), 2)
        # cut (at a character boundary) and ended with its newline
        self.assertTrue(4090 <= len(lines[0]) <= 4095, len(lines[0]))
        self.assertTrue(lines[0].endswith(b"aaaa"))
        m = COMBINED_RE.match(lines[1].decode("ascii"))
        self.assertEqual(m.group("agent"), "short")

    def test_timer_flush(self):
        self.serve(flush="200ms")
        self.send()
        start = time.monotonic()
        self.wait_lines(1)
        self.assertLess(time.monotonic() - start, kt.DEADLINE)

    def test_two_workers_whole_lines(self):
        self.serve(workers=2, buffer="4k")
        n = 200
        for i in range(n):
            self.send(target="/hello?n=%d" % i)
        lines = self.wait_lines(n)
        self.assertEqual(len(lines), n)
        seen = set()
        for line in lines:
            m = COMBINED_RE.match(line.decode("ascii"))
            self.assertIsNotNone(m, line)
            seen.add(m.group("request"))
        self.assertEqual(len(seen), n)


class RotationTest(AccessLogCase):

    def test_sigusr1_after_mv(self):
        self.serve(flush="100ms")
        for i in range(2):
            self.send(target="/hello?before=%d" % i)
        self.wait_lines(2)
        rotated = self.path + ".1"
        os.rename(self.path, rotated)
        # Until the workers reopen, lines still go to the moved file.
        self.send(target="/hello?moved=0")
        self.server.signal(signal.SIGUSR1)
        markers = []

        def new_file_has_marker():
            target = "/hello?after=%d" % len(markers)
            markers.append(target)
            self.send(target=target)
            return read_lines(self.path)

        kt.wait_until(new_file_has_marker, interval=0.05,
                      what="a line in the new %s" % self.path)
        # Every line is flushed within 100ms of its request.
        self.wait_lines(3 + len(markers) - len(read_lines(rotated)))
        old, new = read_lines(rotated), read_lines(self.path)
        self.assertTrue(os.stat(self.path).st_ino
                        != os.stat(rotated).st_ino)
        self.assertEqual(len(old) + len(new), 3 + len(markers))
        everything = b"\n".join(old + new)
        for t in ["/hello?before=0", "/hello?before=1", "/hello?moved=0"]:
            self.assertIn(t.encode(), b"\n".join(old))
        for t in markers:
            self.assertEqual(everything.count((t + " ").encode()), 1, t)
        self.assertIn((markers[-1] + " ").encode(), b"\n".join(new))


class FailureTest(AccessLogCase):

    def reports(self, what):
        with self.server.cond:
            return [l for l in self.server.lines
                    if "access_log: " + what in l]

    def test_cannot_open_reported_once(self):
        server = self.serve(path="/proc/self")      # a directory
        for _ in range(20):
            self.send()
        server.wait_log(r"access_log: cannot open /proc/self")
        self.assertEqual(len(self.reports("cannot open")), 1,
                         server.log_tail())

    def test_full_disk_reported_once(self):
        server = self.serve(path="/dev/full", buffer="4k", flush="50ms")
        with server.client() as c:
            for _ in range(200):          # several buffers' worth
                self.assertStatus(c.request("GET", "/hello"), 200)
        server.wait_log(r"access_log: cannot write /dev/full: No space")
        with server.client() as c:
            for _ in range(200):
                self.assertStatus(c.request("GET", "/hello"), 200)
        self.assertEqual(len(self.reports("cannot write")), 1,
                         server.log_tail())

    def test_fifo_without_reader_never_blocks(self):
        server = kt.Server(config("/nonexistent"))
        self.addCleanup(server.kill)
        fifo = os.path.join(server.dir, "fifo")
        os.mkfifo(fifo)
        self.assertTrue(stat.S_ISFIFO(os.stat(fifo).st_mode))
        # A reader that never reads: the pipe fills up.
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, rfd)
        self.path = fifo
        server.write_config(config(fifo, buffer="4k"))
        server.start()
        self.addCleanup(self.check_server_log, server)
        self.server = server
        n = 1500                          # about twice the pipe's capacity
        with server.client() as c:
            for _ in range(n):
                self.assertStatus(c.request("GET", "/hello"), 200)
        server.wait_log(r"access_log: cannot keep up with .*fifo")
        self.assertEqual(len(self.reports("cannot keep up")), 1)
        # What gets through is whole lines: the rest of a line the full
        # pipe cut short follows once the pipe has room again.
        data = [b""]

        def drained():
            try:
                data[0] += os.read(rfd, 65536)
            except BlockingIOError:
                pass
            return data[0].endswith(b"\n")

        kt.wait_until(drained, what="the FIFO to end with a whole line")
        lines = data[0].split(b"\n")
        self.assertGreater(len(lines) - 1, 100)
        self.assertLess(len(lines) - 1, n)
        for line in lines[:-1]:
            self.assertIsNotNone(COMBINED_RE.match(line.decode("ascii")),
                                 line)


if __name__ == "__main__":
    kt.main()
