"""Malformed and smuggling-prone requests against the real server: each gets
the status DESIGN section 3 gives it, with Connection: close and a
Content-Length, and the server then closes the connection without looking
at anything sent after the bad request (a valid request pipelined behind
it in the same write gets no response).

Every case runs against one server per parser tier that this CPU and build
can use (KOURIER_SIMD=scalar, sse42, avx2, avx512: a tier counts as usable
when `KOURIER_SIMD=TIER kourier -V` reports it on its "parser:" line)."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402

TIERS = ("scalar", "sse42", "avx2", "avx512")

MAX_REQUEST_LINE = 1024
MAX_HEADER_BLOCK = 4096
MAX_HEADERS = 20
MAX_FAILURES = 3

ROUTES = [
    {"path": "/hello", "handler": "hello"},
    {"path": "/get-only", "handler": "hello", "methods": ["GET"]},
    {"prefix": "/echo", "handler": "echo"},
]

# What follows each bad request in the same write: if the server ever
# parsed it, a 200 would follow the error response.
GOOD = b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"


def head(line, *fields, host=True):
    """A request head: `line`, Host (unless host is false), then `fields`."""
    out = line + b"\r\n" + (b"Host: a\r\n" if host else b"")
    return out + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def chunked(body):
    """A chunked POST to the echo handler, which reads its body."""
    return head(b"POST /echo HTTP/1.1", b"Transfer-Encoding: chunked") + body


GET = b"GET /hello HTTP/1.1"
POST = b"POST /echo HTTP/1.1"

# (what, bytes, status)
CASES = [
    # ---- request line
    ("method not a token", head(b"G(T /hello HTTP/1.1"), 400),
    ("space inside the method", head(b"GE T /hello HTTP/1.1"), 400),
    ("empty method", head(b" /hello HTTP/1.1"), 400),
    ("lower-case method", head(b"get /get-only HTTP/1.1"), 501),
    ("unknown method", head(b"BREW /get-only HTTP/1.1"), 501),
    ("two spaces after the method", head(b"GET  /hello HTTP/1.1"), 400),
    ("quote and angle brackets in the target",
     head(b'GET /he"l<lo> HTTP/1.1'), 400),
    ("% not followed by two HEXDIG", head(b"GET /hel%zzlo HTTP/1.1"), 400),
    ("fragment in the target", head(b"GET /hello#top HTTP/1.1"), 400),
    ("asterisk-form with GET", head(b"GET * HTTP/1.1"), 400),
    ("authority-form with GET", head(b"GET example.com:80 HTTP/1.1"), 400),
    ("request line over the limit",
     head(b"GET /hello?" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1"), 414),
    ("HTTP/2.0", head(b"GET /hello HTTP/2.0"), 505),
    ("HTTP/3.0", head(b"GET /hello HTTP/3.0"), 505),
    ("HTTP/0.9", head(b"GET /hello HTTP/0.9"), 505),
    ("HTTP/1.10", head(b"GET /hello HTTP/1.10"), 400),
    ("lower-case http/1.1", head(b"GET /hello http/1.1"), 400),
    ("no version", head(b"GET /hello"), 400),
    # ---- line ends and bytes
    ("bare LF line ends", b"GET /hello HTTP/1.1\nHost: a\n\n", 400),
    ("bare CR after the request line",
     b"GET /hello HTTP/1.1\rHost: a\r\n\r\n", 400),
    ("CR not followed by LF in a value", head(GET, b"X-A: b\rc"), 400),
    ("NUL in a field value", head(GET, b"X-A: b\x00c"), 400),
    ("NUL in the target", head(b"GET /hel\x00lo HTTP/1.1"), 400),
    ("DEL in a field value", head(GET, b"X-A: b\x7fc"), 400),
    ("control byte in a field value", head(GET, b"X-A: b\x01c"), 400),
    # ---- field lines
    ("space before the colon", head(GET, b"X-A : b"), 400),
    ("space before the colon of Content-Length",
     head(POST, b"Content-Length : 5") + b"hello", 400),
    ("tab before the colon", head(GET, b"X-A\t: b"), 400),
    ("empty field name", head(GET, b": b"), 400),
    ("non-tchar in a field name", head(GET, b"X(A): b"), 400),
    ("field line without a colon", head(GET, b"X-A b"), 400),
    ("obs-fold with SP", head(GET, b"X-A: b", b" c"), 400),
    ("obs-fold with HTAB", head(GET, b"X-A: b", b"\tc"), 400),
    ("header block over the limit",
     head(GET, b"X-Big: " + b"v" * MAX_HEADER_BLOCK), 431),
    ("more fields than the limit",
     head(GET, *[b"X-%d: v" % i for i in range(MAX_HEADERS + 5)]), 431),
    ("HTTP/1.1 without Host", head(GET, host=False), 400),
    ("two Host fields", head(GET, b"Host: b"), 400),
    ("invalid Host", head(GET, b"Host: a b@c", host=False), 400),
    ("Expect other than 100-continue", head(GET, b"Expect: 200-ok"), 417),
    # ---- framing (the request-smuggling classics)
    ("Content-Length not digits",
     head(POST, b"Content-Length: +5") + b"hello", 400),
    ("Content-Length overflowing",
     head(POST, b"Content-Length: 99999999999999999999999"), 400),
    ("two different Content-Length fields",
     head(POST, b"Content-Length: 5", b"Content-Length: 6") + b"hello!",
     400),
    ("Content-Length list with different values",
     head(POST, b"Content-Length: 5, 6") + b"hello!", 400),
    ("Content-Length and Transfer-Encoding",
     head(POST, b"Content-Length: 5", b"Transfer-Encoding: chunked")
     + b"0\r\n\r\n", 400),
    ("Transfer-Encoding and Content-Length",
     head(POST, b"Transfer-Encoding: chunked", b"Content-Length: 5")
     + b"0\r\n\r\n", 400),
    ("chunked not the final coding",
     head(POST, b"Transfer-Encoding: chunked, gzip") + b"0\r\n\r\n", 400),
    ("chunked twice in two fields",
     head(POST, b"Transfer-Encoding: chunked",
          b"Transfer-Encoding: chunked") + b"0\r\n\r\n", 400),
    ("chunked twice in one field",
     head(POST, b"Transfer-Encoding: chunked, chunked") + b"0\r\n\r\n",
     400),
    ("gzip, chunked",
     head(POST, b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n", 501),
    ("Transfer-Encoding in HTTP/1.0",
     head(b"POST /echo HTTP/1.0", b"Transfer-Encoding: chunked",
          host=False) + b"0\r\n\r\n", 400),
    # ---- chunked body
    ("chunk size not hex", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("negative chunk size", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk size overflowing 64 bits",
     chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n"), 400),
    ("missing CRLF after chunk data",
     chunked(b"5\r\nhelloX0\r\n\r\n"), 400),
    ("bare LF after the chunk size", chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext without a name", chunked(b"5;=x\r\nhello\r\n0\r\n\r\n"), 400),
    ("obs-fold in the trailer", chunked(b"0\r\nX-T: a\r\n b\r\n\r\n"), 400),
]


def usable_tiers():
    """The tiers `kourier -V` reports as in use when asked for them."""
    binary = kt.paths()[0]
    usable = []
    for tier in TIERS:
        env = dict(os.environ, KOURIER_SIMD=tier)
        r = subprocess.run([binary, "-V"], env=env, capture_output=True,
                           text=True, timeout=kt.DEADLINE)
        if r.returncode != 0:
            raise AssertionError("kourier -V failed: %r" % (r,))
        lines = [l for l in r.stdout.splitlines() if l.startswith("parser:")]
        if len(lines) != 1:
            raise AssertionError("kourier -V has no parser: line: %r"
                                 % r.stdout)
        if lines[0].split(":", 1)[1].strip() == tier:
            usable.append(tier)
    return usable


class TestMalformed(kt.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        cls.tiers = usable_tiers()
        cls.servers = {}
        saved = os.environ.get("KOURIER_SIMD")
        try:
            for tier in cls.tiers:
                # The master reads KOURIER_SIMD at start; workers inherit.
                os.environ["KOURIER_SIMD"] = tier
                server = kt.Server(kt.make_config(
                    workers=1, routes=ROUTES,
                    limits={"max_body": 1024,
                            "max_request_line": MAX_REQUEST_LINE,
                            "max_header_block": MAX_HEADER_BLOCK,
                            "max_headers": MAX_HEADERS}))
                cls.servers[tier] = server
                server.start()
        except BaseException:
            for server in cls.servers.values():
                server.kill()
            raise
        finally:
            if saved is None:
                os.environ.pop("KOURIER_SIMD", None)
            else:
                os.environ["KOURIER_SIMD"] = saved

    @classmethod
    def tearDownClass(cls):
        for server in cls.servers.values():
            server.stop()

    def setUp(self):
        self.clients = []
        for tier, server in self.servers.items():
            self.assertTrue(server.alive(), "the %s server died in an "
                            "earlier test:\n%s" % (tier, server.log_tail()))

    def tearDown(self):
        for c in self.clients:
            c.close()
        for server in self.servers.values():
            self.check_server_log(server)

    def client(self, server):
        c = server.client()
        self.clients.append(c)
        return c

    def test_scalar_is_usable(self):
        self.assertIn("scalar", self.tiers,
                      "KOURIER_SIMD=scalar kourier -V does not report "
                      "the scalar parser")

    def test_servers_run_their_tier(self):
        for tier, server in self.servers.items():
            with self.subTest(tier=tier):
                refused = [l for l in server.lines
                           if "cannot be used here" in l]
                self.assertEqual(refused, [], "the %s server fell back to "
                                 "another tier" % tier)

    def test_good_pair_gets_two_responses(self):
        # The control for the cases below: without an error, both
        # pipelined requests are answered on the same connection.
        for tier, server in self.servers.items():
            with self.subTest(tier=tier):
                c = self.client(server)
                c.send(GOOD + GOOD)
                for i in range(2):
                    resp = c.read_response()
                    self.assertStatus(resp, 200, "%s: good request %d"
                                      % (tier, i + 1))
                    self.assertEqual(resp.body, b"Hello, World!")

    def test_rejected_with_close_and_nothing_after(self):
        # A server that keeps connections open costs a deadline per case:
        # after MAX_FAILURES failures on a tier, its other cases are not
        # run but reported.
        not_run = []
        for tier, server in self.servers.items():
            failures = 0
            for what, raw, status in CASES:
                if failures >= MAX_FAILURES:
                    not_run.append("%s: %s" % (tier, what))
                    continue
                with self.subTest(tier=tier, case=what):
                    failures += 1
                    self.check_rejected(server, "%s: %s" % (tier, what),
                                        raw, status)
                    failures -= 1
        if not_run:
            self.fail("not run after %d failures on their tier: %s"
                      % (MAX_FAILURES, ", ".join(not_run)))

    def check_rejected(self, server, what, raw, status):
        c = self.client(server)
        c.send(raw + GOOD)
        try:
            resp = c.read_response()
        except kt.ServerClosed as e:
            self.fail("%s: the connection closed without a response "
                      "(have %r)" % (what, e.partial[:300]))
        self.assertStatus(resp, status, what)
        self.assertIn("close", resp.tokens("Connection"),
                      "%s: no Connection: close in %r" % (what, resp))
        self.assertIsNotNone(resp.header("Content-Length"),
                             "%s: no Content-Length in %r" % (what, resp))
        # Exactly one response: the pipelined GOOD is never processed.
        self.assertClosesAfter(c, what + " (a second response or an "
                               "open connection)")
        c.close()


if __name__ == "__main__":
    kt.main()
