"""HTTP/1.1 behaviour of one `kourier -F` server seen from real clients:
the hello and echo plugins, framing, keep-alive, pipelining, error
responses, limits and the header timeout."""

import base64
import email.utils
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402

MAX_BODY = 1024
MAX_REQUEST_LINE = 1024
HEADER_TIMEOUT = 1.0

ROUTES = [
    {"path": "/hello", "handler": "hello"},
    {"path": "/greet", "handler": "hello", "greeting": "Bonjour, monde"},
    {"path": "/get-only", "handler": "hello", "methods": ["GET"]},
    {"prefix": "/echo", "handler": "echo"},
]

DATE_RE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                     r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                     r"\d{4} \d\d:\d\d:\d\d GMT$")


class TestBasic(kt.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = kt.Server(kt.make_config(
            workers=1, routes=ROUTES,
            limits={"header_timeout": "1s",
                    "max_body": MAX_BODY,
                    "max_request_line": MAX_REQUEST_LINE,
                    "max_header_block": "4k",
                    "max_headers": 20}))
        try:
            cls.server.start()
        except BaseException:
            cls.server.kill()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.port = self.server.port
        self.clients = []
        self.assertTrue(self.server.alive(), "the server died in an earlier "
                        "test:\n" + self.server.log_tail())

    def tearDown(self):
        for c in self.clients:
            c.close()
        self.check_server_log(self.server)

    def client(self):
        c = self.server.client()
        self.clients.append(c)
        return c

    def assertError(self, c, resp, status, what):
        """An error response: the status, Connection: close, a
        Content-Length, then the server closes the connection."""
        self.assertStatus(resp, status, what)
        self.assertIn("close", resp.tokens("Connection"),
                      "%s: error response without Connection: close: %r"
                      % (what, resp))
        self.assertIsNotNone(resp.header("Content-Length"),
                             "%s: error response without Content-Length: %r"
                             % (what, resp))
        self.assertClosesAfter(c, what)

    # ---- hello

    def test_hello_get(self):
        resp = self.server.get("/hello")
        self.assertStatus(resp, 200, "GET /hello")
        self.assertEqual(resp.version, "HTTP/1.1")
        self.assertEqual(resp.body, b"Hello, World!")
        self.assertEqual(resp.header("Content-Length"), str(len(resp.body)))
        ctype = resp.header("Content-Type") or ""
        self.assertEqual(ctype.split(";")[0].strip().lower(), "text/plain",
                         "Content-Type: %r" % resp)
        self.assertTrue(resp.header("Server"), "no Server header: %r" % resp)
        date = resp.header("Date")
        self.assertTrue(date and DATE_RE.match(date),
                        "Date is not an IMF-fixdate: %r" % date)
        skew = abs(email.utils.parsedate_to_datetime(date).timestamp()
                   - time.time())
        self.assertLess(skew, 5, "Date %r is %.0fs off" % (date, skew))

    def test_hello_route_greeting(self):
        resp = self.server.get("/greet")
        self.assertStatus(resp, 200, "GET /greet")
        self.assertEqual(resp.body, b"Bonjour, monde")

    def test_head(self):
        c = self.client()
        get = c.request("GET", "/hello")
        # HEAD then GET pipelined: if HEAD carried a body, the GET's status
        # line would not come next.
        c.send(kt.request_bytes("HEAD", "/hello")
               + kt.request_bytes("GET", "/hello"))
        head = c.read_response(method="HEAD")
        self.assertStatus(head, 200, "HEAD /hello")
        self.assertEqual(head.header("Content-Length"),
                         get.header("Content-Length"))
        self.assertEqual(head.header("Content-Length"),
                         str(len(b"Hello, World!")))
        after = c.read_response()
        self.assertStatus(after, 200, "GET after HEAD")
        self.assertEqual(after.body, b"Hello, World!")

    # ---- echo

    def test_echo_content_length(self):
        body = b"a=1&b=\x00\xff binary\r\n"
        c = self.client()
        c.send(kt.request_bytes(
            "POST", "/echo/some/path?q=1&x=%41", body=body,
            headers=[("X-Test", "one"), ("X-Pad", "   spaced value \t"),
                     ("X-Test", "two")]))
        resp = c.read_response()
        self.assertStatus(resp, 200, "POST /echo")
        ctype = resp.header("Content-Type") or ""
        self.assertEqual(ctype.split(";")[0].strip(), "application/json")
        e = kt.decode_echo(resp)
        self.assertEqual(e["method"], b"POST")
        self.assertEqual(e["uri"], b"/echo/some/path?q=1&x=%41")
        self.assertEqual(e["version"], b"HTTP/1.1")
        self.assertEqual(e["body"], body)
        self.assertEqual(e["headers"], [
            (b"Host", b"127.0.0.1"), (b"X-Test", b"one"),
            (b"X-Pad", b"spaced value"), (b"X-Test", b"two"),
            (b"Content-Length", str(len(body)).encode())])

    def test_echo_chunked(self):
        c = self.client()
        c.send(kt.request_bytes(
            "PUT", "/echo", headers=[("Transfer-Encoding", "chunked")]))
        c.send(b"5;name=value\r\nhello\r\n")
        c.send(b'1 ; quoted="a \\"b\\" c"\r\n \r\n')
        c.send(b"A\r\n0123456789\r\n")
        c.send(b"3;x;y=z\r\nabc\r\n")
        c.send(b"0\r\nX-Trailer: t\r\n\r\n")
        resp = c.read_response()
        self.assertStatus(resp, 200, "chunked PUT /echo")
        e = kt.decode_echo(resp)
        self.assertEqual(e["method"], b"PUT")
        self.assertEqual(e["body"], b"hello 0123456789abc")
        # The connection is still usable after a chunked body.
        again = c.request("GET", "/hello")
        self.assertStatus(again, 200, "GET after a chunked request")

    def test_echo_expect_100_continue(self):
        body = b"sent after 100 Continue"
        c = self.client()
        c.send(kt.request_bytes(
            "POST", "/echo",
            headers=[("Content-Length", str(len(body))),
                     ("Expect", "100-continue")]))
        interim = c.read_response()
        self.assertEqual((interim.version, interim.status),
                         ("HTTP/1.1", 100),
                         "expected HTTP/1.1 100 Continue, got %r" % interim)
        c.send(body)
        resp = c.read_response()
        self.assertStatus(resp, 200, "POST /echo after 100 Continue")
        self.assertEqual(kt.decode_echo(resp)["body"], body)

    # ---- connections

    def test_pipelining(self):
        c = self.client()
        c.send(kt.request_bytes("GET", "/echo/1")
               + kt.request_bytes("POST", "/echo/2", body=b"second")
               + kt.request_bytes("GET", "/hello"))
        first = c.read_response()
        second = c.read_response()
        third = c.read_response()
        self.assertStatus(first, 200, "pipelined request 1")
        self.assertStatus(second, 200, "pipelined request 2")
        self.assertStatus(third, 200, "pipelined request 3")
        self.assertEqual(kt.decode_echo(first)["uri"], b"/echo/1")
        e2 = kt.decode_echo(second)
        self.assertEqual((e2["uri"], e2["body"]), (b"/echo/2", b"second"))
        self.assertEqual(third.body, b"Hello, World!")
        self.assertStatus(c.request("GET", "/hello"), 200,
                          "a fourth request on the pipelined connection")

    def test_keep_alive_reuse(self):
        c = self.client()
        local = c.sock.getsockname()
        for i in range(3):
            resp = c.request("GET", "/echo/%d" % i)
            self.assertStatus(resp, 200, "request %d on one connection" % i)
            self.assertNotIn("close", resp.tokens("Connection"))
            self.assertEqual(kt.decode_echo(resp)["uri"],
                             b"/echo/%d" % i)
        self.assertEqual(c.sock.getsockname(), local)

    def test_http10_closes(self):
        c = self.client()
        c.send(b"GET /hello HTTP/1.0\r\n\r\n")
        resp = c.read_response()
        self.assertStatus(resp, 200, "HTTP/1.0 GET")
        self.assertEqual(resp.body, b"Hello, World!")
        self.assertNotIn("keep-alive", resp.tokens("Connection"))
        self.assertClosesAfter(c, "HTTP/1.0 without keep-alive")

    def test_http10_keep_alive(self):
        c = self.client()
        for i in range(2):
            c.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = c.read_response()
            self.assertStatus(resp, 200, "HTTP/1.0 keep-alive request %d" % i)
            self.assertIn("keep-alive", resp.tokens("Connection"),
                          "HTTP/1.0 keep-alive response: %r" % resp)
            self.assertEqual(resp.body, b"Hello, World!")
        c.send(b"GET /hello HTTP/1.0\r\n\r\n")
        self.assertStatus(c.read_response(), 200, "final HTTP/1.0 request")
        self.assertClosesAfter(c, "HTTP/1.0 after dropping keep-alive")

    def test_connection_close(self):
        c = self.client()
        c.send(kt.request_bytes("GET", "/hello",
                                headers=[("Connection", "close")]))
        resp = c.read_response()
        self.assertStatus(resp, 200, "GET with Connection: close")
        self.assertIn("close", resp.tokens("Connection"))
        self.assertEqual(resp.body, b"Hello, World!")
        self.assertClosesAfter(c, "Connection: close")

    # ---- routing errors

    def test_404(self):
        c = self.client()
        resp = c.request("GET", "/no/such/route")
        self.assertError(c, resp, 404, "GET /no/such/route")

    def test_405_with_allow(self):
        c = self.client()
        resp = c.request("POST", "/get-only", body=b"x")
        self.assertStatus(resp, 405, "POST /get-only")
        allow = resp.tokens("Allow")
        self.assertIn("get", allow, "Allow: %r" % resp)
        self.assertNotIn("post", allow, "Allow: %r" % resp)
        self.assertError(c, resp, 405, "POST /get-only")

    # ---- malformed requests

    MALFORMED = [
        ("bare LF", b"GET /hello HTTP/1.1\nHost: a\n\n", 400),
        ("no Host in HTTP/1.1", b"GET /hello HTTP/1.1\r\n\r\n", 400),
        ("HTTP/2.0", b"GET /hello HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("Content-Length and Transfer-Encoding",
         b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        # A method nobody implements: 501 where no route takes it (a route
        # without "methods" takes any method and leaves it to its handler).
        ("unknown method on a GET-only route",
         b"BREW /get-only HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        ("unknown method without a route",
         b"BREW /no/route HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        ("space before colon", b"GET /hello HTTP/1.1\r\nHost : a\r\n\r\n",
         400),
        ("obs-fold",
         b"GET /hello HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 400),
        ("bad chunk size",
         b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
         b"\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ]

    def test_malformed(self):
        for what, raw, status in self.MALFORMED:
            with self.subTest(what):
                c = self.client()
                c.send(raw)
                self.assertError(c, c.read_response(), status, what)

    def test_malformed_first_of_pipelined_pair(self):
        c = self.client()
        c.send(b"GET /hello HTTP/1.1\nHost: a\n\n"
               + kt.request_bytes("GET", "/hello"))
        resp = c.read_response()
        self.assertStatus(resp, 400, "malformed first request")
        self.assertIn("close", resp.tokens("Connection"))
        try:
            rest = c.read_until_close()
        except socket.timeout:
            self.fail("connection left open after a 400")
        self.assertEqual(rest, b"", "a second response followed the error: "
                         "%r" % rest[:300])

    # ---- limits

    def test_body_too_large_content_length(self):
        c = self.client()
        resp = c.request("POST", "/echo", body=b"x" * (MAX_BODY + 1))
        self.assertError(c, resp, 413, "Content-Length body over max_body")

    def test_body_too_large_chunked(self):
        c = self.client()
        chunk = b"x" * 400
        c.send(kt.request_bytes("POST", "/echo",
                                headers=[("Transfer-Encoding", "chunked")]))
        c.send((b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3
               + b"0\r\n\r\n")
        self.assertError(c, c.read_response(), 413,
                         "chunked body over max_body")

    def test_body_at_limit_accepted(self):
        body = b"y" * MAX_BODY
        resp = self.server.request("POST", "/echo", body=body)
        self.assertStatus(resp, 200, "body of exactly max_body")
        self.assertEqual(kt.decode_echo(resp)["body"], body)

    def test_request_line_too_long(self):
        c = self.client()
        c.send(kt.request_bytes("GET", "/hello?" + "a" * MAX_REQUEST_LINE))
        self.assertError(c, c.read_response(), 414,
                         "request line over max_request_line")

    def test_header_block_too_large(self):
        c = self.client()
        c.send(kt.request_bytes("GET", "/hello",
                                headers=[("X-Big", "v" * 5000)]))
        self.assertError(c, c.read_response(), 431,
                         "header block over max_header_block")

    def test_too_many_headers(self):
        c = self.client()
        c.send(kt.request_bytes("GET", "/hello", headers=[
            ("X-H%d" % i, "v") for i in range(30)]))
        self.assertError(c, c.read_response(), 431, "more than max_headers")

    def test_header_timeout(self):
        c = self.client()
        start = time.monotonic()
        # One byte every 300 ms: the header block would take ~12 s, far
        # beyond header_timeout (1 s); the server must not wait for it.
        sent = c.send_slowly(kt.request_bytes(
            "GET", "/hello", headers=[("X-Slow", "loris")]),
            step=1, interval=0.3, timeout=kt.DEADLINE)
        resp = c.read_response()
        elapsed = time.monotonic() - start
        self.assertError(c, resp, 408, "slow header block")
        self.assertGreaterEqual(elapsed, HEADER_TIMEOUT * 0.9,
                                "408 before header_timeout (%.2fs)" % elapsed)
        self.assertLess(elapsed, HEADER_TIMEOUT + 4,
                        "408 came %.2fs after the first byte (sent %d "
                        "bytes)" % (elapsed, sent))

    # ---- a real client

    def test_curl(self):
        curl = shutil.which("curl")
        if not curl:
            self.skipTest("curl not installed")
        url = "http://127.0.0.1:%d" % self.port
        r = subprocess.run(
            [curl, "-sS", "--max-time", "10", "-D", "-", url + "/hello"],
            capture_output=True, timeout=kt.DEADLINE)
        self.assertEqual(r.returncode, 0, "curl GET: %r" % (r.stderr,))
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), r.stdout)
        self.assertEqual(body, b"Hello, World!")
        # Two transfers in one curl: the second (a POST with a body) reuses
        # the first one's connection.
        fmt = "\\n%{num_connects}\\n"
        r = subprocess.run(
            [curl, "-sS", "--max-time", "10", "-w", fmt, url + "/hello",
             "--next", "-sS", "--max-time", "10", "-w", fmt,
             "--data-binary", "k=v", url + "/echo/curl"],
            capture_output=True, timeout=kt.DEADLINE)
        self.assertEqual(r.returncode, 0, "curl POST: %r" % (r.stderr,))
        lines = r.stdout.split(b"\n")
        self.assertEqual(lines[0], b"Hello, World!", r.stdout)
        self.assertEqual(lines[1], b"1", r.stdout)
        self.assertEqual(lines[3], b"0", "curl could not reuse the "
                         "connection: %r" % r.stdout)
        doc = json.loads(lines[2])
        self.assertEqual(base64.b64decode(doc["method"]), b"POST")
        self.assertEqual(base64.b64decode(doc["body"]), b"k=v")


if __name__ == "__main__":
    kt.main()
