"""The proxy module through the real server, against real upstream servers
started by the tests on loopback (upstream.py): forwarding and the
hop-by-hop rules, X-Forwarded-* and Via, connection pooling and stale pooled
connections, streaming 100 MB bodies both ways in bounded memory, chunked
bodies both ways, balancing (weighted round-robin, least connections, hash,
backups), failover and passive health, 502 and 504, responses that must
never be relayed (smuggling, malformed), truncated responses and client
aborts."""

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402
import upstream as up  # noqa: E402

MB = 1 << 20
BIG = 100 * MB
PATTERN = bytes(range(256)) * 4096          # 1 MiB


def proxy_config(routes, workers=1, limits=None, **extra):
    """Routes default to the proxy handler; `extra` goes to make_config."""
    rs = []
    for r in routes:
        r = dict(r)
        r.setdefault("handler", "proxy")
        rs.append(r)
    return kt.make_config(workers=workers, modules={"proxy": {}}, routes=rs,
                          limits=limits, **extra)


def start(routes, **kw):
    return kt.Server(proxy_config(routes, **kw)).start()


def echo_json(resp):
    return json.loads(resp.body.decode())


def fields(doc, name):
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]


class Router(object):
    """An upstream handler that dispatches on the request path; unknown
    paths get the echo handler."""

    def __init__(self):
        self.paths = {}

    def add(self, path, fn):
        self.paths[path] = fn

    def __call__(self, req, conn):
        path = req.target.split("?")[0]
        return self.paths.get(path, up.echo_handler)(req, conn)


def raw(data, then="wait"):
    """A handler that sends `data` as it is, then waits for the proxy to
    close the connection (recorded in conn.upstream.closed_after_raw)."""
    def handler(req, conn):
        conn.read_body(req)
        conn.send(data)
        if then == "close":
            return "close"
        # the proxy must close this connection: wait for its EOF
        nxt = conn.read_head()
        with conn.upstream.lock:
            conn.upstream.closed_after_raw.append(
                (req.target, nxt is None))
            conn.upstream.lock.notify_all()
        return "close"
    return handler


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_stalled(counter, what, quiet=0.5, timeout=kt.DEADLINE * 3):
    """Wait until counter() stops changing for `quiet` seconds (a transfer
    held back by back-pressure); return its value."""
    deadline = time.monotonic() + timeout
    last = counter()
    since = time.monotonic()
    while True:
        time.sleep(0.05)
        now = counter()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
        if time.monotonic() > deadline:
            raise AssertionError("%s never stalled (at %d)" % (what, last))


class RawClient(object):
    """A client for bodies too big for kt.Client's buffering: reads the
    head, then hashes the body as it streams."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=kt.DEADLINE)
        self.buf = b""
        self.received = 0

    def close(self):
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(1 << 18)
        if not data:
            raise kt.ServerClosed("closed", self.buf)
        self.buf += data

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs

    def body_length(self, n):
        h = hashlib.sha256()
        left = n
        while left > 0:
            if not self.buf:
                data = self.sock.recv(1 << 18)
                if not data:
                    raise kt.ServerClosed("closed after %d of %d body bytes"
                                          % (n - left, n))
                self.buf = data
            piece = self.buf[:left]
            self.buf = self.buf[len(piece):]
            h.update(piece)
            left -= len(piece)
            self.received += len(piece)
        return h.hexdigest()

    def body_chunked(self):
        h = hashlib.sha256()
        total = 0
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, self.buf = self.buf.split(b"\r\n", 1)
            n = int(line.split(b";")[0], 16)
            if n == 0:
                while b"\r\n\r\n" not in b"\r\n" + self.buf:
                    self._fill()
                return total, h.hexdigest()
            while len(self.buf) < n + 2:
                self._fill()
            h.update(self.buf[:n])
            total += n
            if self.buf[n:n + 2] != b"\r\n":
                raise AssertionError("chunk without CRLF")
            self.buf = self.buf[n + 2:]


def pattern_sha(n):
    h = hashlib.sha256()
    left = n
    while left > 0:
        piece = PATTERN[:min(left, len(PATTERN))]
        h.update(piece)
        left -= len(piece)
    return h.hexdigest()


# --------------------------------------------------------------------------

class TestForwarding(kt.ServerTestCase):
    """One upstream, one server: what goes up and what comes down."""

    @classmethod
    def setUpClass(cls):
        cls.router = Router()
        cls.up = up.Upstream(cls.router, name="a")
        cls.up.closed_after_raw = []
        cls.server = start([
            {"prefix": "/preserve", "upstreams": [cls.up.address],
             "preserve_host": True},
            {"prefix": "/set", "upstreams": [cls.up.address],
             "set_headers": {"X-Set": "configured", "User-Agent": ""},
             "remove_headers": ["X-Drop", "Cookie"]},
            {"prefix": "/", "upstreams": [cls.up.address]},
        ])

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.up.stop()

    def tearDown(self):
        self.check_server_log(self.server)
        self.assertEqual(self.up.errors, [])

    def get(self, target="/", headers=None, **kw):
        with self.server.client() as c:
            return c.request("GET", target, headers=headers, **kw)

    def test_request_line_and_forwarded_fields(self):
        r = self.get("/a/b?c=d&e", host="example.com:8080")
        self.assertStatus(r, 200)
        doc = echo_json(r)
        self.assertEqual(doc["method"], "GET")
        self.assertEqual(doc["target"], "/a/b?c=d&e")
        self.assertEqual(doc["version"], "HTTP/1.1")
        self.assertEqual(fields(doc, "Host"), [self.up.address])
        self.assertEqual(fields(doc, "X-Forwarded-For"), ["127.0.0.1"])
        self.assertEqual(fields(doc, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(fields(doc, "X-Forwarded-Host"),
                         ["example.com:8080"])
        self.assertEqual(fields(doc, "Via"), ["1.1 kourier"])
        # the response: the server's own Server/Date, the hop in Via
        self.assertEqual(r.header_values("Server"), ["kourier"])
        self.assertEqual(len(r.header_values("Date")), 1)
        self.assertEqual(r.header("Via"), "1.1 kourier")
        self.assertEqual(r.header("X-Upstream"), "a")

    def test_x_forwarded_for_chain(self):
        r = self.get(headers=[("X-Forwarded-For", "10.0.0.1"),
                              ("X-Forwarded-For", "10.0.0.2, 10.0.0.3")])
        doc = echo_json(r)
        self.assertEqual(fields(doc, "X-Forwarded-For"),
                         ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"])

    def test_forwarded_proto_and_host_not_spoofable(self):
        r = self.get(host="real.example",
                     headers=[("X-Forwarded-Proto", "https"),
                              ("X-Forwarded-Host", "evil.example")])
        doc = echo_json(r)
        self.assertEqual(fields(doc, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(fields(doc, "X-Forwarded-Host"), ["real.example"])

    def test_via_chain_and_http10(self):
        r = self.get(headers=[("Via", "1.0 fred, 1.1 p.example")])
        self.assertEqual(fields(echo_json(r), "Via"),
                         ["1.0 fred, 1.1 p.example, 1.1 kourier"])
        with self.server.client() as c:
            r = c.request("GET", "/", version="HTTP/1.0")
        doc = echo_json(r)
        # the request goes up as HTTP/1.1; Via names what was received
        self.assertEqual(doc["version"], "HTTP/1.1")
        self.assertEqual(fields(doc, "Via"), ["1.0 kourier"])

    def test_hop_by_hop_request_fields(self):
        r = self.get(headers=[
            ("Connection", "keep-alive, X-Secret"),
            ("Connection", "X-Other"),
            ("X-Secret", "s"), ("X-Other", "o"),
            ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
            ("Trailer", "X-T"), ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("X-End", "kept")])
        doc = echo_json(r)
        names = [k.lower() for k, v in doc["headers"]]
        for gone in ("connection", "x-secret", "x-other", "keep-alive", "te",
                     "trailer", "upgrade", "proxy-connection",
                     "transfer-encoding"):
            self.assertNotIn(gone, names)
        self.assertEqual(fields(doc, "X-End"), ["kept"])

    def test_hop_by_hop_response_fields(self):
        def handler(req, conn):
            conn.read_body(req)
            conn.respond(200, b"ok", [
                ("Connection", "X-Private, keep-alive"),
                ("X-Private", "1"), ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"), ("Trailer", "X-T"),
                ("Upgrade", "h2c"), ("TE", "trailers"),
                ("Server", "upstream/1.0"), ("Date", "yesterday"),
                ("Via", "1.1 inner"), ("X-Kept", "yes")])
        self.router.add("/hop-response", handler)
        r = self.get("/hop-response")
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b"ok")
        names = [k.lower() for k, v in r.headers]
        for gone in ("x-private", "keep-alive", "proxy-connection",
                     "trailer", "upgrade", "te"):
            self.assertNotIn(gone, names)
        self.assertNotIn("connection", names)
        self.assertEqual(r.header_values("Server"), ["kourier"])
        self.assertNotEqual(r.header("Date"), "yesterday")
        self.assertEqual(r.header("Via"), "1.1 inner, 1.1 kourier")
        self.assertEqual(r.header("X-Kept"), "yes")

    def test_absolute_form_target(self):
        with self.server.client() as c:
            r = c.request("GET", "http://example.org/p/q?x=1",
                          host="ignored.example")
        doc = echo_json(r)
        self.assertEqual(doc["target"], "/p/q?x=1")
        self.assertEqual(fields(doc, "X-Forwarded-Host"), ["example.org"])
        with self.server.client() as c:
            r = c.request("GET", "http://example.org?x=1")
        self.assertEqual(echo_json(r)["target"], "/?x=1")

    def test_preserve_host(self):
        r = self.get("/preserve/x", host="site.example:81")
        self.assertEqual(fields(echo_json(r), "Host"), ["site.example:81"])

    def test_set_and_remove_headers(self):
        r = self.get("/set/x", headers=[("X-Set", "from-client"),
                                        ("User-Agent", "ua"),
                                        ("X-Drop", "1"), ("Cookie", "c=1"),
                                        ("X-Keep", "1")])
        doc = echo_json(r)
        self.assertEqual(fields(doc, "X-Set"), ["configured"])
        self.assertEqual(fields(doc, "User-Agent"), [])
        self.assertEqual(fields(doc, "X-Drop"), [])
        self.assertEqual(fields(doc, "Cookie"), [])
        self.assertEqual(fields(doc, "X-Keep"), ["1"])

    def test_request_bodies(self):
        with self.server.client() as c:
            r = c.request("POST", "/post", body=b"hello body")
            doc = echo_json(r)
            self.assertEqual(doc["body"], "hello body")
            self.assertEqual(fields(doc, "Content-Length"), ["10"])
            # an explicit empty body keeps its Content-Length: 0
            r = c.request("POST", "/post", headers=[("Content-Length", "0")])
            doc = echo_json(r)
            self.assertEqual(fields(doc, "Content-Length"), ["0"])
            self.assertEqual(doc["length"], 0)
            # chunked in, chunked up (extensions and trailers are not ours
            # to pass on)
            body = (b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nchunks\r\n"
                    b"0\r\nX-Trailer: t\r\n\r\n")
            r = c.request("POST", "/chunked",
                          headers=[("Transfer-Encoding", "chunked")],
                          body=body)
            doc = echo_json(r)
            self.assertEqual(doc["body"], "hello chunks")
            self.assertEqual(fields(doc, "Transfer-Encoding"), ["chunked"])
            self.assertEqual(fields(doc, "Content-Length"), [])

    def test_expect_continue(self):
        with self.server.client() as c:
            c.send(kt.request_bytes("POST", "/expect",
                                    headers=[("Expect", "100-continue"),
                                             ("Content-Length", "4")]))
            r = c.read_response()
            self.assertStatus(r, 100)
            c.send(b"data")
            r = c.read_response()
        doc = echo_json(r)
        self.assertEqual(doc["body"], "data")
        self.assertEqual(fields(doc, "Expect"), [])

    def test_chunked_response(self):
        def handler(req, conn):
            conn.read_body(req)
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                      b"Trailer: X-T\r\n\r\n"
                      b"3;a=b\r\nabc\r\n"
                      b"A\r\n0123456789\r\n"
                      b"0\r\nX-T: 1\r\n\r\n")
        self.router.add("/chunked-response", handler)
        with self.server.client() as c:
            r = c.request("GET", "/chunked-response")
            self.assertStatus(r, 200)
            self.assertTrue(r.chunked)
            self.assertEqual(r.body, b"abc0123456789")
            # HTTP/1.0: the same body, delimited by the close
            r = c.request("GET", "/chunked-response", version="HTTP/1.0")
        self.assertEqual(r.body, b"abc0123456789")
        self.assertTrue(r.close_delimited)

    def test_close_delimited_response(self):
        def handler(req, conn):
            conn.read_body(req)
            conn.send(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end")
            return "close"
        self.router.add("/until-close", handler)
        with self.server.client() as c:
            r = c.request("GET", "/until-close")
            self.assertEqual(r.body, b"until the end")
            self.assertTrue(r.chunked)
            r = c.request("GET", "/until-close")
            self.assertEqual(r.body, b"until the end")
        # such a connection can never be reused
        used = [q.conn_index for q in self.up.requests
                if q.target == "/until-close"]
        self.assertEqual(len(used), 2)
        self.assertNotEqual(used[0], used[1])

    def test_head_204_304_and_interim(self):
        def head(req, conn):
            conn.read_body(req)
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        def nobody(req, conn):
            conn.read_body(req)
            status = int(req.target.split("/")[-1])
            conn.send(b"HTTP/1.1 %d X\r\nETag: \"e\"\r\n\r\n" % status)
        def interim(req, conn):
            conn.read_body(req)
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n"
                      b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
            conn.respond(200, b"final")
        self.router.add("/head", head)
        self.router.add("/nobody/204", nobody)
        self.router.add("/nobody/304", nobody)
        self.router.add("/interim", interim)
        with self.server.client() as c:
            before = self.up.connections
            r = c.request("HEAD", "/head")
            self.assertStatus(r, 200)
            self.assertEqual(r.header("Content-Length"), "1000")
            self.assertEqual(r.body, b"")
            r = c.request("GET", "/nobody/204")
            self.assertStatus(r, 204)
            r = c.request("GET", "/nobody/304")
            self.assertStatus(r, 304)
            self.assertEqual(r.header("ETag"), '"e"')
            r = c.request("GET", "/interim")
            self.assertStatus(r, 200)
            self.assertEqual(r.body, b"final")
            # all on the same client connection and one upstream one
            r = c.request("GET", "/")
            self.assertStatus(r, 200)
        self.assertLessEqual(self.up.connections, before + 1)

    def test_pooling(self):
        self.get("/")                  # a connection in the pool
        before = self.up.connections
        for i in range(5):
            with self.server.client() as c:
                for j in range(10):
                    r = c.request("GET", "/pool/%d/%d" % (i, j))
                    self.assertStatus(r, 200)
        self.assertEqual(self.up.connections, before,
                         "50 requests opened new upstream connections")

    def test_stale_pooled_connection_replaced(self):
        # the upstream answers keep-alive, then closes while idle
        closed = []

        def then_close(req, conn):
            conn.read_body(req)
            conn.respond(200, b"first")
            closed.append(conn)
            return "close"
        self.router.add("/then-close", then_close)
        with self.server.client() as c:
            self.assertEqual(c.request("GET", "/then-close").body, b"first")
            self.up.wait(lambda: closed and closed[0].closed, "the close")
            # the pooled connection is dead: a request (even a POST) must
            # get a fresh one, not an error
            r = c.request("POST", "/after", body=b"x" * 100)
            self.assertStatus(r, 200)
            self.assertEqual(echo_json(r)["length"], 100)


class TestInvalidResponses(kt.ServerTestCase):
    """What the upstream must not get through: 502 and the upstream
    connection closed, never relayed."""

    CASES = {
        "/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "/te-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 5\r\n\r\nhello",
        "/two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                   b"Content-Length: 6\r\n\r\nhello!",
        "/cl-list": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
        "/bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        "/te-twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, "
                     b"chunked\r\n\r\n0\r\n\r\n",
        "/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        "/te-10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\n",
        "/status": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
        "/version": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        "/garbage": b"<html>hello</html>\r\n\r\n",
        "/obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\n"
                     b"Content-Length: 0\r\n\r\n",
        "/space-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
        "/bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        "/nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
        "/ctl": b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
        "/101": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                b"Upgrade: evil\r\n\r\n",
        "/huge": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 40000
                 + b"\r\nContent-Length: 0\r\n\r\n",
    }

    @classmethod
    def setUpClass(cls):
        cls.router = Router()
        for path, data in cls.CASES.items():
            cls.router.add(path, raw(data))
        cls.up = up.Upstream(cls.router, name="bad")
        cls.up.closed_after_raw = []
        # max_fails 0: the upstream stays in use however often it fails
        cls.server = start([{"prefix": "/", "upstreams": [
            {"address": cls.up.address, "max_fails": 0}]}])

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.up.stop()

    def tearDown(self):
        self.check_server_log(self.server)
        self.assertEqual(self.up.errors, [])

    def test_refused_with_502(self):
        for path in sorted(self.CASES):
            with self.subTest(path=path):
                with self.server.client() as c:
                    r = c.request("GET", path)
                    self.assertStatus(r, 502, path)
                    self.assertNotIn(b"hello", r.body)
                    # the client connection is fine for the next request
                    r = c.request("GET", "/ok")
                    self.assertStatus(r, 200, path + " then /ok")
                # the upstream connection that sent it was closed
                self.up.wait(lambda: any(t == path for t, _ in
                                         self.up.closed_after_raw),
                             "the proxy to close after " + path)
                self.assertIn((path, True), self.up.closed_after_raw)

    def test_invalid_responses_are_logged(self):
        mark = self.server.log_mark()
        with self.server.client() as c:
            self.assertStatus(c.request("GET", "/cl-te"), 502)
        self.server.wait_log("Transfer-Encoding together with "
                             "Content-Length", since=mark)


class TestTruncated(kt.ServerTestCase):
    """An upstream dying in the middle of a body: the client must see a
    truncated message, never a complete one."""

    @classmethod
    def setUpClass(cls):
        cls.router = Router()

        def short_length(req, conn):
            conn.read_body(req)
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
                      + b"x" * 50)
            return "close"

        def short_chunked(req, conn):
            conn.read_body(req)
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n")
            return "close"

        def bad_chunk(req, conn):
            conn.read_body(req)
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\nzz\r\n")
            conn.read_head()
            return "close"

        cls.router.add("/short-length", short_length)
        cls.router.add("/short-chunked", short_chunked)
        cls.router.add("/bad-chunk", bad_chunk)
        cls.up = up.Upstream(cls.router, name="dying")
        cls.server = start([{"prefix": "/", "upstreams": [
            {"address": cls.up.address, "max_fails": 0}]}])

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.up.stop()

    def tearDown(self):
        self.check_server_log(self.server)

    def test_truncated_length(self):
        with self.server.client() as c:
            with self.assertRaises(kt.ServerClosed) as cm:
                c.request("GET", "/short-length")
        # the head promised 100 bytes, 50 came, then the close
        self.assertEqual(cm.exception.partial, b"x" * 50)

    def test_truncated_chunked(self):
        for path in ("/short-chunked", "/bad-chunk"):
            with self.server.client() as c:
                c.send(kt.request_bytes("GET", path))
                data = c.read_until_close()
            self.assertIn(b"hello", data, path)
            # no last-chunk: the client can tell the body is incomplete
            self.assertFalse(data.endswith(b"0\r\n\r\n"), path)


class TestStreaming(kt.ServerTestCase):
    """100 MB through the proxy each way, in bounded memory: a client that
    does not read holds the upstream back, an upstream that does not read
    holds the client back."""

    @classmethod
    def setUpClass(cls):
        cls.router = Router()
        cls.gate = threading.Event()
        cls.sent = [0]
        cls.result = {}

        def download(req, conn):
            conn.read_body(req)
            n = int(req.target.split("/")[-1])
            chunked = "chunked" in req.target
            if chunked:
                conn.send(b"HTTP/1.1 200 OK\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
            else:
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                          % n)
            left = n
            while left > 0:
                piece = PATTERN[:min(left, len(PATTERN))]
                if chunked:
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    conn.send(piece)
                left -= len(piece)
                cls.sent[0] += len(piece)
            if chunked:
                conn.send(b"0\r\n\r\n")

        def upload(req, conn):
            cls.gate.wait(kt.DEADLINE * 3)
            h = hashlib.sha256()
            total = 0
            for piece in conn.body_pieces(req):
                h.update(piece)
                total += len(piece)
            cls.result[req.target] = (total, h.hexdigest(),
                                      req.header("Transfer-Encoding"))
            conn.respond(200, b"stored %d" % total)

        cls.finished = []

        def buffered(req, conn):
            download(req, conn)
            cls.finished.append(req.target)

        cls.router.add("/buffered/%d" % (24 * MB), buffered)
        cls.router.add("/download/%d" % BIG, download)
        cls.router.add("/download/chunked/%d" % (8 * MB), download)
        cls.router.add("/upload", upload)
        cls.router.add("/upload/chunked", upload)
        cls.up = up.Upstream(cls.router, name="stream")
        cls.server = start([
            {"prefix": "/buffered", "upstreams": [cls.up.address],
             "buffering": True, "buffer_size": "32m"},
            {"prefix": "/", "upstreams": [cls.up.address],
             "max_body": "200m"}])
        cls.worker = cls.server.ready_pids()[0]

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.up.stop()

    def tearDown(self):
        self.check_server_log(self.server)
        self.assertEqual(self.up.errors, [])

    def test_download_100mb_slow_client(self):
        base = rss_kb(self.worker)
        self.sent[0] = 0
        c = RawClient(self.server.port)
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.sock.sendall(kt.request_bytes("GET", "/download/%d" % BIG))
            # the client reads nothing: the upstream must be held back
            held = wait_stalled(lambda: self.sent[0], "the upstream's sending")
            self.assertLess(held, 40 * MB, "the proxy read %d bytes ahead of "
                            "a client that reads nothing" % held)
            grown = rss_kb(self.worker) - base
            self.assertLess(grown, 48 * 1024, "worker grew by %d kB" % grown)
            status, hdrs = c.head()
            self.assertEqual(status, 200)
            self.assertEqual(hdrs["content-length"], str(BIG))
            self.assertEqual(c.body_length(BIG), pattern_sha(BIG))
        finally:
            c.close()

    def test_buffering_reads_ahead(self):
        # buffering: the upstream is read to the end (up to buffer_size)
        # while the client takes nothing, so it is free at once
        n = 24 * MB
        c = RawClient(self.server.port)
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.sock.sendall(kt.request_bytes("GET", "/buffered/%d" % n))
            self.up.wait(lambda: self.finished, "the upstream to finish "
                         "while the client reads nothing")
            status, hdrs = c.head()
            self.assertEqual(status, 200)
            self.assertEqual(c.body_length(n), pattern_sha(n))
        finally:
            c.close()

    def test_download_chunked(self):
        n = 8 * MB
        c = RawClient(self.server.port)
        try:
            c.sock.sendall(kt.request_bytes("GET", "/download/chunked/%d" % n))
            status, hdrs = c.head()
            self.assertEqual(status, 200)
            self.assertEqual(hdrs.get("transfer-encoding"), "chunked")
            total, sha = c.body_chunked()
            self.assertEqual(total, n)
            self.assertEqual(sha, pattern_sha(n))
        finally:
            c.close()

    def _upload(self, target, n, chunked):
        self.gate.clear()
        base = rss_kb(self.worker)
        sent = [0]
        err = []
        c = RawClient(self.server.port)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)

        def sender():
            try:
                if chunked:
                    c.sock.sendall(kt.request_bytes(
                        "POST", target,
                        headers=[("Transfer-Encoding", "chunked")]))
                else:
                    c.sock.sendall(kt.request_bytes(
                        "POST", target,
                        headers=[("Content-Length", str(n))]))
                left = n
                while left > 0:
                    piece = PATTERN[:min(left, len(PATTERN))]
                    if chunked:
                        c.sock.sendall(b"%x\r\n" % len(piece))
                    c.sock.sendall(piece)
                    if chunked:
                        c.sock.sendall(b"\r\n")
                    left -= len(piece)
                    sent[0] += len(piece)
                if chunked:
                    c.sock.sendall(b"0\r\n\r\n")
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        try:
            held = wait_stalled(lambda: sent[0], "the client's sending")
            self.assertLess(held, 40 * MB, "the proxy took %d bytes from the "
                            "client while the upstream read nothing" % held)
            grown = rss_kb(self.worker) - base
            self.assertLess(grown, 48 * 1024, "worker grew by %d kB" % grown)
            self.gate.set()
            t.join(kt.DEADLINE * 3)
            self.assertEqual(err, [])
            status, hdrs = c.head()
            self.assertEqual(status, 200)
            self.assertEqual(c.body_length(int(hdrs["content-length"])),
                             hashlib.sha256(b"stored %d" % n).hexdigest())
        finally:
            self.gate.set()
            c.close()
        total, sha, te = self.result[target]
        self.assertEqual(total, n)
        self.assertEqual(sha, pattern_sha(n))
        return te

    def test_upload_100mb_slow_upstream(self):
        self.assertIsNone(self._upload("/upload", BIG, chunked=False))

    def test_upload_chunked(self):
        self.assertEqual(self._upload("/upload/chunked", 8 * MB,
                                      chunked=True), "chunked")


class TestBalancing(kt.ServerTestCase):

    def tearDown(self):
        for s in getattr(self, "servers", []):
            self.check_server_log(s)
            s.stop()
        for u in getattr(self, "ups", []):
            u.stop()

    def upstreams(self, n, handler=up.echo_handler):
        self.ups = [up.Upstream(handler, name="u%d" % i) for i in range(n)]
        return self.ups

    def serve(self, routes):
        s = start(routes)
        self.servers = [s]
        return s

    def who(self, s, target="/", headers=None):
        with s.client() as c:
            r = c.request("GET", target, headers=headers)
        self.assertStatus(r, 200)
        return r.header("X-Upstream")

    def test_weighted_round_robin(self):
        a, b, c = self.upstreams(3)
        s = self.serve([{"prefix": "/", "upstreams": [
            {"address": a.address, "weight": 1},
            {"address": b.address, "weight": 3},
            c.address]}])
        seen = [self.who(s) for _ in range(50)]
        self.assertEqual(seen.count("u0"), 10)
        self.assertEqual(seen.count("u1"), 30)
        self.assertEqual(seen.count("u2"), 10)
        # spread out, not in bursts: u1 never three times in a row... much
        runs = max(len(r) for r in "".join(
            "b" if x == "u1" else " " for x in seen).split())
        self.assertLessEqual(runs, 3)

    def test_least_conn(self):
        gate = threading.Event()

        def handler(req, conn):
            conn.read_body(req)
            if req.target == "/hold":
                gate.wait(kt.DEADLINE)
            conn.respond(200, b"x", [("X-Upstream", conn.upstream.name)])

        a, b = self.upstreams(2, handler)
        s = self.serve([{"prefix": "/", "upstreams": [a.address, b.address],
                         "balance": "least_conn"}])
        held = s.client()
        try:
            held.send(kt.request_bytes("GET", "/hold"))
            kt.wait_until(lambda: len(a.requests) + len(b.requests) == 1,
                          what="the held request to arrive")
            busy = "u0" if a.requests else "u1"
            # the busy upstream gets nothing while the other is idle
            seen = [self.who(s, "/quick") for _ in range(8)]
            self.assertEqual(seen, ["u1" if busy == "u0" else "u0"] * 8)
            gate.set()
            self.assertStatus(held.read_response(), 200)
        finally:
            gate.set()
            held.close()
        # idle again: both share
        seen = [self.who(s, "/quick") for _ in range(8)]
        self.assertEqual(sorted(set(seen)), ["u0", "u1"])

    def test_hash(self):
        a, b, c = self.upstreams(3)
        s = self.serve([{"prefix": "/", "balance": "hash",
                         "hash_key": "header:X-User",
                         "upstreams": [a.address, b.address, c.address]}])
        first = {}
        for rnd in range(3):
            for u in range(30):
                got = self.who(s, headers=[("X-User", "user%d" % u)])
                self.assertEqual(first.setdefault(u, got), got)
        self.assertEqual(len(set(first.values())), 3)

    def test_backup(self):
        a, b = self.upstreams(2)
        s = self.serve([{"prefix": "/", "upstreams": [
            a.address, {"address": b.address, "backup": True}]}])
        self.assertEqual([self.who(s) for _ in range(5)], ["u0"] * 5)
        a.stop()
        self.assertEqual([self.who(s) for _ in range(5)], ["u1"] * 5)


class TestFailures(kt.ServerTestCase):

    def setUp(self):
        self.servers = []
        self.ups = []

    def tearDown(self):
        for s in self.servers:
            self.check_server_log(s)
            s.stop()
        for u in self.ups:
            u.stop()

    def serve(self, routes):
        s = start(routes)
        self.servers.append(s)
        return s

    def upstream(self, handler=up.echo_handler, name="ok"):
        u = up.Upstream(handler, name=name)
        self.ups.append(u)
        return u

    def count_log(self, s, text, since=0):
        with s.cond:
            return sum(1 for l in s.lines[since:] if text in l)

    def test_pooled_connection_closed_when_reused(self):
        # the upstream closes a kept-alive connection just as the next
        # request arrives on it (the race no idle check can see)
        def second_kills(req, conn):
            n = getattr(conn, "served", 0)
            conn.served = n + 1
            if n == 1:
                return "close"
            return up.echo_handler(req, conn)
        a = self.upstream(second_kills, "racy")
        s = self.serve([{"prefix": "/", "upstreams": [a.address]}])
        mark = s.log_mark()
        with s.client() as c:
            self.assertStatus(c.request("GET", "/one"), 200)
            # replayed on a fresh connection, no error, no health penalty
            r = c.request("GET", "/two")
            self.assertStatus(r, 200)
            self.assertEqual(echo_json(r)["target"], "/two")
            self.assertStatus(c.request("GET", "/three"), 200)
            # a POST whose body went up cannot be replayed: 502
            r = c.request("POST", "/four", body=b"body")
            self.assertStatus(r, 502)
        # every connection dies on its second request
        seen = [(q.target, q.conn_index) for q in a.requests]
        self.assertEqual([t for t, _ in seen], ["/one", "/two", "/two",
                                                "/three", "/three", "/four"])
        self.assertEqual(seen[0][1], seen[1][1])
        self.assertNotEqual(seen[1][1], seen[2][1])
        self.assertEqual(seen[4][1], seen[5][1])
        # the replays logged nothing, and the upstream is not blamed for
        # closing an idle connection: the only line is the POST's
        s.wait_log("cannot be sent again", since=mark)
        with s.cond:
            lines = [l for l in s.lines[mark:] if "proxy:" in l]
        self.assertEqual(len(lines), 1, lines)
        with s.client() as c:
            self.assertStatus(c.request("GET", "/five"), 200)

    def test_connect_refused_fails_over(self):
        dead = up.closed_port()
        b = self.upstream()
        s = self.serve([{"prefix": "/", "retries": 1, "upstreams": [
            {"address": "127.0.0.1:%d" % dead, "fail_timeout": "30s"},
            b.address]}])
        for _ in range(10):
            with s.client() as c:
                r = c.request("POST", "/", body=b"abc")
            self.assertStatus(r, 200)
            self.assertEqual(echo_json(r)["body"], "abc")
        # max_fails 1: one failure took it out for fail_timeout, so it was
        # tried once (one "cannot connect", one "is down")
        s.wait_log("is down for 30000 ms")
        self.assertEqual(self.count_log(s, "127.0.0.1:%d" % dead), 2)

    def test_dying_upstream_passive_health(self):
        def dying(req, conn):
            return "close"            # accept, read the head, hang up
        a = self.upstream(dying, "dying")
        b = self.upstream()
        s = self.serve([{"prefix": "/", "retries": 1, "upstreams": [
            {"address": a.address, "max_fails": 2, "fail_timeout": "1s"},
            b.address]}])
        t0 = time.monotonic()
        for _ in range(12):
            with s.client() as c:
                r = c.request("GET", "/")
            self.assertStatus(r, 200)
            self.assertEqual(r.header("X-Upstream"), "ok")
        # two failures within fail_timeout took it out
        self.assertEqual(len(a.requests), 2)
        # after fail_timeout it gets traffic again
        while len(a.requests) == 2:
            self.assertLess(time.monotonic() - t0, kt.DEADLINE)
            with s.client() as c:
                self.assertStatus(c.request("GET", "/"), 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)

    def test_non_idempotent_not_retried_after_sending(self):
        def dying(req, conn):
            conn.read_body(req)
            return "close"
        a = self.upstream(dying, "dying")
        b = self.upstream()
        s = self.serve([{"prefix": "/", "retries": 3,
                         "upstreams": [a.address, b.address]}])
        with s.client() as c:
            r = c.request("POST", "/", body=b"once")
        self.assertStatus(r, 502)
        self.assertEqual(len(a.requests), 1)
        self.assertEqual(len(b.requests), 0)

    def test_all_down_fast_502(self):
        p1, p2 = up.closed_port(), up.closed_port()
        s = self.serve([{"prefix": "/", "retries": 5, "upstreams": [
            {"address": "127.0.0.1:%d" % p1, "fail_timeout": "60s"},
            {"address": "127.0.0.1:%d" % p2, "fail_timeout": "60s"}]}])
        with s.client() as c:
            self.assertStatus(c.request("GET", "/"), 502)
        # both tried and taken out (the log is read by another thread:
        # wait for its lines before marking the place)
        kt.wait_until(lambda: self.count_log(s, "is down for 60000") == 2,
                      what="both upstreams marked down")
        mark = s.log_mark()
        t0 = time.monotonic()
        with s.client() as c:
            r = c.request("GET", "/")
        self.assertStatus(r, 502)
        self.assertLess(time.monotonic() - t0, 2.0)
        s.wait_log("every upstream is down", since=mark)
        self.assertEqual(self.count_log(s, "cannot connect", since=mark), 0)

    def test_read_timeout_504(self):
        gate = threading.Event()
        seen = []

        def slow(req, conn):
            conn.read_body(req)
            gate.wait(kt.DEADLINE)
            seen.append(conn.read_head() is None)   # the proxy hung up
            return "close"
        a = self.upstream(slow, "slow")
        s = self.serve([{"prefix": "/", "read_timeout": "400ms",
                         "upstreams": [a.address]}])
        t0 = time.monotonic()
        with s.client() as c:
            r = c.request("GET", "/")
        took = time.monotonic() - t0
        gate.set()
        self.assertStatus(r, 504)
        self.assertGreaterEqual(took, 0.35)
        self.assertLess(took, 5)
        a.wait(lambda: a.open == 0, "the upstream connection to close")
        self.assertEqual(seen, [True])
        # timeouts are not retried
        self.assertEqual(len(a.requests), 1)

    def test_connect_timeout(self):
        # a listener whose accept queue is full: SYNs are dropped
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        filler = []
        try:
            port = ls.getsockname()[1]
            for _ in range(4):
                f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                f.setblocking(False)
                try:
                    f.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                filler.append(f)
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
                self.skipTest("this kernel accepts past a full backlog")
            except socket.timeout:
                pass
            finally:
                probe.close()
            s = self.serve([{"prefix": "/", "connect_timeout": "300ms",
                             "retries": 0,
                             "upstreams": ["127.0.0.1:%d" % port]}])
            t0 = time.monotonic()
            with s.client() as c:
                r = c.request("GET", "/")
            self.assertStatus(r, 502)
            self.assertGreaterEqual(time.monotonic() - t0, 0.25)
            s.wait_log("connect timed out")
        finally:
            for f in filler:
                f.close()
            ls.close()


class TestAbort(kt.ServerTestCase):

    def tearDown(self):
        self.check_server_log(self.server)
        self.server.stop()
        self.up.stop()

    def test_client_abort_mid_response(self):
        events = []

        def big(req, conn):
            conn.read_body(req)
            if req.target == "/big":
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                          % BIG)
                try:
                    for _ in range(100):
                        conn.send(PATTERN)
                except OSError:
                    events.append("send failed")
                    return "close"
                return None
            up.echo_handler(req, conn)

        self.up = up.Upstream(big, name="big")
        self.server = start([{"prefix": "/", "upstreams": [self.up.address]}])
        c = RawClient(self.server.port)
        c.sock.sendall(kt.request_bytes("GET", "/big"))
        status, _ = c.head()
        self.assertEqual(status, 200)
        c.body_length(MB)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
        # the upstream request is cancelled: its connection closed
        self.up.wait(lambda: self.up.open == 0, "the upstream connection "
                     "to close")
        self.assertEqual(events, ["send failed"])
        # and not pooled: the next request opens a new one
        with self.server.client() as cl:
            self.assertStatus(cl.request("GET", "/"), 200)
        self.assertEqual(self.up.connections, 2)

    def test_client_abort_during_upload(self):
        outcome = []

        def sink(req, conn):
            try:
                n = sum(len(p) for p in conn.body_pieces(req))
                outcome.append(n)
            except (up.Closed, OSError):
                outcome.append("closed")
                return "close"
            conn.respond(200, b"ok")

        self.up = up.Upstream(sink, name="sink")
        self.server = start([{"prefix": "/", "upstreams": [self.up.address],
                              "max_body": "100m"}])
        c = RawClient(self.server.port)
        c.sock.sendall(kt.request_bytes(
            "POST", "/", headers=[("Content-Length", str(10 * MB))]))
        c.sock.sendall(PATTERN)
        self.up.wait(lambda: len(self.up.requests) == 1, "the request")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
        self.up.wait(lambda: outcome, "the upstream to see the end")
        self.assertEqual(outcome, ["closed"])


class TestPoolLimit(kt.ServerTestCase):
    """`keepalive` bounds the idle pool: connections freed together beyond
    it are closed (after the round of events that freed them), never kept,
    and the ones kept are reused."""

    def tearDown(self):
        self.check_server_log(self.server)
        self.server.stop()
        self.up.stop()

    def test_idle_pool_trimmed_to_keepalive(self):
        gate = threading.Event()

        def held(req, conn):
            conn.read_body(req)
            gate.wait(kt.DEADLINE)
            conn.respond(200, b"ok")

        self.up = up.Upstream(held, name="held")
        self.server = start([{"prefix": "/", "keepalive": 2,
                              "upstreams": [self.up.address]}])
        clients = [RawClient(self.server.port) for _ in range(6)]
        for i, c in enumerate(clients):
            c.sock.sendall(kt.request_bytes("GET", "/held/%d" % i))
        # six requests in flight at once: six upstream connections
        self.up.wait(lambda: len(self.up.requests) == 6, "6 requests")
        self.assertEqual(self.up.open, 6)
        gate.set()
        for c in clients:
            status, _ = c.head()
            self.assertEqual(status, 200)
            c.body_length(2)
        # all six are free now; two stay in the pool
        self.up.wait(lambda: self.up.open == 2, "the pool to be trimmed "
                     "to 2 (open: %d)" % self.up.open)
        before = self.up.connections
        for c in clients[:2]:
            c.sock.sendall(kt.request_bytes("GET", "/again"))
            status, _ = c.head()
            self.assertEqual(status, 200)
            c.body_length(2)
        self.assertEqual(self.up.connections, before,
                         "the two pooled connections were not reused")
        for c in clients:
            c.close()


class TestUpgrade(kt.ServerTestCase):
    """Connection: upgrade (WebSocket) tunnelled both ways after a 101, on
    routes that allow it."""

    @classmethod
    def setUpClass(cls):
        cls.ended = []

        def ws(req, conn):
            if req.header("Upgrade") is None:
                return up.echo_handler(req, conn)
            # the 101 and the first bytes of the new protocol together
            conn.send(b"HTTP/1.1 101 Switching Protocols\r\n"
                      b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: abc=\r\n\r\nwelcome\n")
            try:
                while True:
                    if not conn.buf:
                        conn._fill()
                    data, conn.buf = conn.buf, b""
                    if data == b"bye\n":
                        conn.send(b"closing\n")
                        cls.ended.append("upstream closed")
                        return "close"
                    conn.send(data.upper())
            except (up.Closed, OSError):
                cls.ended.append("client closed")
                return "close"

        cls.up = up.Upstream(ws, name="ws")
        cls.server = start([
            {"prefix": "/ws", "upgrade": True,
             "upstreams": [cls.up.address]},
            {"prefix": "/", "upstreams": [cls.up.address]}])

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.up.stop()

    def tearDown(self):
        self.check_server_log(self.server)
        self.assertEqual(self.up.errors, [])

    def open_tunnel(self, c):
        c.send(kt.request_bytes("GET", "/ws/chat", headers=[
            ("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]))
        r = c.read_response()
        self.assertStatus(r, 101)
        self.assertEqual(r.tokens("Connection"), ["upgrade"])
        self.assertEqual(r.header("Upgrade"), "websocket")
        self.assertEqual(r.header("Sec-WebSocket-Accept"), "abc=")
        req = self.up.requests[-1]
        self.assertEqual(req.header("Upgrade"), "websocket")
        self.assertIn("upgrade", req.header("Connection").lower())
        self.assertEqual(req.header("Sec-WebSocket-Key"),
                         "dGhlIHNhbXBsZSBub25jZQ==")

    def read_exact(self, c, n):
        return c._read_exact(n, time.monotonic() + kt.DEADLINE, "tunnel")

    def test_tunnel_both_ways(self):
        with self.server.client() as c:
            self.open_tunnel(c)
            self.assertEqual(self.read_exact(c, 8), b"welcome\n")
            c.send(b"hello")
            self.assertEqual(self.read_exact(c, 5), b"HELLO")
            big = b"abcdefgh" * (256 * 1024)          # 2 MiB each way
            t = threading.Thread(target=c.send, args=(big,), daemon=True)
            t.start()
            got = self.read_exact(c, len(big))
            t.join(kt.DEADLINE)
            self.assertEqual(got, big.upper())
            # the upstream ends the tunnel: the client sees its last bytes,
            # then the close
            c.send(b"bye\n")
            self.assertEqual(self.read_exact(c, 8), b"closing\n")
            self.assertEqual(c.read_until_close(), b"")
        self.assertIn("upstream closed", self.ended)

    def test_client_closes_tunnel(self):
        n = len(self.ended)
        with self.server.client() as c:
            self.open_tunnel(c)
            self.assertEqual(self.read_exact(c, 8), b"welcome\n")
            c.send(b"ping")
            self.assertEqual(self.read_exact(c, 4), b"PING")
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                              b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.up.wait(lambda: len(self.ended) > n, "the tunnel to end")
        self.assertEqual(self.ended[n], "client closed")

    def test_not_allowed_on_route(self):
        with self.server.client() as c:
            r = c.request("GET", "/other", headers=[
                ("Connection", "Upgrade"), ("Upgrade", "websocket")])
            self.assertStatus(r, 200)
            doc = echo_json(r)
            self.assertEqual(fields(doc, "Upgrade"), [])
            self.assertEqual(fields(doc, "Connection"), [])
            # the connection goes on as HTTP
            self.assertStatus(c.request("GET", "/other"), 200)


class TestTunnel(kt.ServerTestCase):
    """An established tunnel: its idle timeout (the route's read_timeout,
    in both directions, not the server's body or idle timeout), each
    side's half-close passed on to the other, and back-pressure both ways
    in bounded memory."""

    READ_TIMEOUT = 2.0
    SHORT = 0.3          # body_timeout and idle_timeout
    BIG = 50 * MB

    @classmethod
    def setUpClass(cls):
        cls.seen = {}                 # path -> what the upstream saw
        cls.sent = [0]
        cls.gate = threading.Event()
        cls.reply_gate = threading.Event()

        def record(path, what):
            with cls.up.lock:
                cls.seen.setdefault(path, []).append(what)
                cls.up.lock.notify_all()

        def switch(conn):
            conn.send(b"HTTP/1.1 101 Switching Protocols\r\n"
                      b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")

        def read_to_eof(conn):
            data = conn.buf
            conn.buf = b""
            while True:
                piece = conn.sock.recv(65536)
                if not piece:
                    return data
                data += piece

        def handler(req, conn):
            path = req.target
            switch(conn)
            if path == "/t/echo":
                # upper-cases what comes until the client's FIN
                try:
                    while True:
                        if not conn.buf:
                            conn._fill()
                        data, conn.buf = conn.buf, b""
                        conn.send(data.upper())
                except up.Closed:
                    record(path, "eof")
            elif path in ("/t/reply", "/t/replygate"):
                # the client half-closes: everything it sent, then EOF;
                # the answer goes back after that (for /t/replygate, once
                # the test opens reply_gate)
                data = read_to_eof(conn)
                record(path, data)
                if path == "/t/replygate":
                    cls.reply_gate.wait(kt.DEADLINE * 3)
                conn.send(b"got %d bytes" % len(data))
            elif path == "/t/upfin":
                # the upstream half-closes first, then still reads
                conn.send(b"server done")
                conn.sock.shutdown(socket.SHUT_WR)
                record(path, read_to_eof(conn))
            elif path == "/t/flood":
                left = cls.BIG
                while left > 0:
                    piece = PATTERN[:min(left, len(PATTERN))]
                    conn.send(piece)
                    left -= len(piece)
                    cls.sent[0] += len(piece)
            elif path == "/t/sink":
                cls.gate.wait(kt.DEADLINE * 3)
                h = hashlib.sha256()
                total = 0
                while True:
                    piece = conn.buf or conn.sock.recv(1 << 18)
                    conn.buf = b""
                    if not piece:
                        break
                    h.update(piece)
                    total += len(piece)
                record(path, (total, h.hexdigest()))
            return "close"

        cls.up = up.Upstream(handler, name="tunnel")
        # a TLS listener too, with a throw-away self-signed certificate
        cls.certs = tempfile.mkdtemp(prefix="kou-tunnel-")
        listen = ["127.0.0.1:0"]
        if shutil.which("openssl"):
            crt = os.path.join(cls.certs, "c.pem")
            key = os.path.join(cls.certs, "k.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                            "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                            "-days", "1", "-subj", "/CN=a.test",
                            "-keyout", key, "-out", crt],
                           check=True, capture_output=True)
            listen.append({"address": "127.0.0.1:0",
                           "tls": {"certificate": crt, "key": key}})
        ms = "%dms" % (cls.SHORT * 1000)
        cls.server = start([
            {"prefix": "/t", "upgrade": True, "upstreams": [cls.up.address],
             "read_timeout": "%dms" % (cls.READ_TIMEOUT * 1000)}],
            limits={"body_timeout": ms, "idle_timeout": ms}, listen=listen)
        cls.worker = cls.server.ready_pids()[0]

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.up.stop()
        shutil.rmtree(cls.certs, ignore_errors=True)

    def tls_client(self):
        ports = self.server.ports()
        if len(ports) < 2:
            self.skipTest("no openssl command to make a certificate")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return kt.Client(ports[1], tls=ctx, server_name="a.test")

    def tearDown(self):
        self.check_server_log(self.server)
        self.assertEqual(self.up.errors, [])

    def open_tunnel(self, c, path):
        c.send(kt.request_bytes("GET", path, headers=[
            ("Connection", "Upgrade"), ("Upgrade", "websocket")]))
        self.assertStatus(c.read_response(), 101)

    def read_exact(self, c, n):
        return c._read_exact(n, time.monotonic() + kt.DEADLINE, "tunnel")

    def seen_for(self, path, n=1):
        self.up.wait(lambda: len(self.seen.get(path, [])) >= n,
                     "the upstream's side of %s" % path)
        return self.seen[path][n - 1]

    def test_idle_tunnel_outlives_body_and_idle_timeouts(self):
        with self.server.client() as c:
            self.open_tunnel(c, "/t/echo")
            c.send(b"one")
            self.assertEqual(self.read_exact(c, 3), b"ONE")
            # silent both ways for several body/idle timeouts, well
            # inside read_timeout: the tunnel must still be there
            time.sleep(self.SHORT * 3)
            c.send(b"two")
            self.assertEqual(self.read_exact(c, 3), b"TWO")
            time.sleep(self.SHORT * 3)
            c.send(b"three")
            self.assertEqual(self.read_exact(c, 5), b"THREE")

    def test_idle_tunnel_closed_after_read_timeout(self):
        n = len(self.seen.get("/t/echo", []))
        with self.server.client() as c:
            self.open_tunnel(c, "/t/echo")
            c.send(b"x")
            self.assertEqual(self.read_exact(c, 1), b"X")
            t0 = time.monotonic()
            rest = c.read_until_close(timeout=self.READ_TIMEOUT + kt.DEADLINE)
            idle = time.monotonic() - t0
        self.assertEqual(rest, b"")
        self.assertGreaterEqual(idle, self.READ_TIMEOUT - 0.1,
                                "closed after %.2fs of silence" % idle)
        self.assertLess(idle, self.READ_TIMEOUT + 3,
                        "closed after %.2fs of silence" % idle)
        # the upstream connection goes with it
        self.assertEqual(self.seen_for("/t/echo", n + 1), "eof")

    def test_client_half_close(self):
        n = len(self.seen.get("/t/reply", []))
        data = b"request bytes " * 1000
        with self.server.client() as c:
            self.open_tunnel(c, "/t/reply")
            c.send(data)
            c.sock.shutdown(socket.SHUT_WR)
            # the upstream sees every byte, then the end; its answer,
            # sent after that, still reaches the client, then the close
            self.assertEqual(self.seen_for("/t/reply", n + 1), data)
            self.assertEqual(c.read_until_close(),
                             b"got %d bytes" % len(data))
            self.assertFalse(c.reset, "the tunnel ended with a reset")

    def test_upstream_half_close(self):
        n = len(self.seen.get("/t/upfin", []))
        with self.server.client() as c:
            self.open_tunnel(c, "/t/upfin")
            # the upstream's FIN comes through after its bytes ...
            self.assertEqual(c.read_until_close(), b"server done")
            self.assertFalse(c.reset, "the tunnel ended with a reset")
            # ... and the client's side is still open up to the upstream
            c.send(b"late ")
            c.send(b"data")
            c.sock.shutdown(socket.SHUT_WR)
            self.assertEqual(self.seen_for("/t/upfin", n + 1), b"late data")

    def test_tls_client_half_close(self):
        n = len(self.seen.get("/t/replygate", []))
        self.reply_gate.clear()
        self.addCleanup(self.reply_gate.set)
        with self.tls_client() as c:
            self.open_tunnel(c, "/t/replygate")
            c.send(b"over tls")
            # close_notify ends the client's side (RFC 8446 section 6.1);
            # unwrap() then looks for the server's, and must find nothing:
            # the upstream holds its answer until the gate opens (an
            # answer read by unwrap() would be an error, not data)
            c.sock.setblocking(False)
            try:
                c.sock.unwrap()
            except ssl.SSLWantReadError:
                pass
            c.sock.settimeout(kt.DEADLINE)
            self.assertEqual(self.seen_for("/t/replygate", n + 1),
                             b"over tls")
            self.reply_gate.set()
            # having sent its own close_notify, the ssl module reports the
            # server's as SSLZeroReturnError, not as b""
            got = c.buf
            try:
                while True:
                    piece = c.sock.recv(65536)
                    if not piece:
                        self.fail("the server's FIN without close_notify")
                    got += piece
            except ssl.SSLZeroReturnError:
                pass
            self.assertEqual(got, b"got 8 bytes")

    def test_tls_upstream_half_close(self):
        n = len(self.seen.get("/t/upfin", []))
        with self.tls_client() as c:
            self.open_tunnel(c, "/t/upfin")
            # close_notify, then the FIN, after the upstream's bytes
            self.assertEqual(c.read_until_close(), b"server done")
            self.assertFalse(c.reset or c.ragged_eof,
                             "no close_notify before the server's FIN")
            c.send(b"late data")
            raw = c.sock.unwrap()     # our close_notify: the end of ours
            raw.shutdown(socket.SHUT_WR)
            c.sock = raw
            self.assertEqual(self.seen_for("/t/upfin", n + 1), b"late data")

    def test_flood_to_slow_client(self):
        self.sent[0] = 0
        base = rss_kb(self.worker)
        c = RawClient(self.server.port)
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.sock.sendall(kt.request_bytes("GET", "/t/flood", headers=[
                ("Connection", "Upgrade"), ("Upgrade", "websocket")]))
            held = wait_stalled(lambda: self.sent[0], "the upstream's sending")
            self.assertLess(held, self.BIG // 2, "the tunnel took %d bytes "
                            "from the upstream for a client that reads "
                            "nothing" % held)
            grown = rss_kb(self.worker) - base
            self.assertLess(grown, 24 * 1024, "worker grew by %d kB" % grown)
            status, hdrs = c.head()
            self.assertEqual(status, 101)
            self.assertEqual(c.body_length(self.BIG), pattern_sha(self.BIG))
        finally:
            c.close()

    def test_flood_to_slow_upstream(self):
        self.gate.clear()
        n = len(self.seen.get("/t/sink", []))
        base = rss_kb(self.worker)
        sent = [0]
        err = []
        c = RawClient(self.server.port)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        c.sock.sendall(kt.request_bytes("GET", "/t/sink", headers=[
            ("Connection", "Upgrade"), ("Upgrade", "websocket")]))
        status, hdrs = c.head()
        self.assertEqual(status, 101)

        def sender():
            try:
                left = self.BIG
                while left > 0:
                    piece = PATTERN[:min(left, len(PATTERN))]
                    c.sock.sendall(piece)
                    left -= len(piece)
                    sent[0] += len(piece)
                c.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        try:
            held = wait_stalled(lambda: sent[0], "the client's sending")
            self.assertLess(held, self.BIG // 2, "the tunnel took %d bytes "
                            "from the client while the upstream read "
                            "nothing" % held)
            grown = rss_kb(self.worker) - base
            self.assertLess(grown, 24 * 1024, "worker grew by %d kB" % grown)
            self.gate.set()
            t.join(kt.DEADLINE * 3)
            self.assertEqual(err, [])
            self.assertEqual(self.seen_for("/t/sink", n + 1),
                             (self.BIG, pattern_sha(self.BIG)))
        finally:
            self.gate.set()
            c.close()


class TestConfig(kt.ServerTestCase):

    def check(self, route, *expected):
        s = kt.Server(proxy_config([route]))
        try:
            r = s.run_command("-t")
            self.assertNotEqual(r.returncode, 0, r.stderr)
            for e in expected:
                self.assertIn(e, r.stderr)
            self.assertRegex(r.stderr, r"kourier\.yaml:\d+:\d+: ")
        finally:
            s.kill()

    def test_errors(self):
        self.check({"prefix": "/", "upstreams": ["nohostport"]},
                   "expected host:port")
        self.check({"prefix": "/", "upstreams": ["127.0.0.1:0"]},
                   "bad port")
        self.check({"prefix": "/", "upstreams": ["::1:80"]},
                   "brackets")
        self.check({"prefix": "/", "upstreams": [
            {"address": "127.0.0.1:80", "wieght": 2}]},
            'unknown key "wieght"')
        self.check({"prefix": "/", "upstreams": [
            {"address": "127.0.0.1:80", "backup": True}]},
            "not a backup")
        self.check({"prefix": "/", "upstreams": ["127.0.0.1:80"],
                    "balance": "random"}, "balance")
        self.check({"prefix": "/", "upstreams": ["127.0.0.1:80"],
                    "hash_key": "header:bad name"}, "hash_key")
        self.check({"prefix": "/"}, "upstreams")

    def test_names_resolved(self):
        a = up.Upstream(name="local")
        try:
            s = start([{"prefix": "/", "upstreams": [
                "localhost:%d" % a.port]}])
            try:
                with s.client() as c:
                    r = c.request("GET", "/")
                self.assertStatus(r, 200)
                self.assertEqual(fields(echo_json(r), "Host"),
                                 ["localhost:%d" % a.port])
                self.check_server_log(s)
            finally:
                s.stop()
        finally:
            a.stop()


# --------------------------------------------------------------------------
# What the proxy tells the rest of the server: request variables (printed
# by access_log) and the kourier_upstream_* series (exposed by metrics).

TIME = r"\d+\.\d{3}"


class TestVariables(kt.ServerTestCase):
    """upstream_addr, upstream_status, upstream_connect_time,
    upstream_header_time and upstream_response_time, one value per attempt
    joined by ", ", as access_log prints them."""

    FORMAT = ("$request_uri|$status|$upstream_addr|$upstream_status|"
              "$upstream_connect_time|$upstream_header_time|"
              "$upstream_response_time")

    def setUp(self):
        self.a = up.Upstream(name="a")
        self.addCleanup(self.a.stop)
        self.dead = "127.0.0.1:%d" % up.closed_port()
        self.dead2 = "127.0.0.1:%d" % up.closed_port()
        self.log = None
        cfg = kt.make_config(
            workers=1,
            modules={"proxy": {}, "hello": {"path": kt.plugin_path("hello")},
                     "access_log": {"file": "access.log",
                                    "format": self.FORMAT,
                                    "flush": "100ms"}},
            hooks={"log": ["access_log"]},
            routes=[
                {"prefix": "/ok", "handler": "proxy",
                 "upstreams": [self.a.address]},
                # round-robin starts with the first: the dead one
                {"prefix": "/failover", "handler": "proxy", "retries": 1,
                 "upstreams": [{"address": self.dead,
                                "fail_timeout": "60s"}, self.a.address]},
                {"prefix": "/dead", "handler": "proxy",
                 "upstreams": [self.dead2]},
                {"path": "/hello", "handler": "hello"}])
        self.server = kt.Server(cfg)
        self.addCleanup(self.server.kill)
        self.server.start()
        self.addCleanup(self.check_server_log, self.server)
        self.log = os.path.join(self.server.dir, "access.log")

    def lines(self, n):
        def have():
            try:
                with open(self.log, "rb") as f:
                    ls = f.read().decode().split("\n")[:-1]
            except FileNotFoundError:
                return None
            return ls if len(ls) >= n else None
        return kt.wait_until(have, what="%d access log lines" % n)

    def test_variables(self):
        for target, status in (("/ok/x", 200), ("/failover", 200),
                               ("/dead", 502), ("/hello", 200)):
            with self.server.client() as c:
                self.assertStatus(c.request("GET", target), status, target)
        got = [l.split("|") for l in self.lines(4)]
        a, d, d2 = self.a.address, self.dead, self.dead2
        self.assertEqual(len(got), 4, got)
        # one attempt, on a new connection
        self.assertEqual(got[0][:4], ["/ok/x", "200", a, "200"], got[0])
        for v in got[0][4:]:
            self.assertRegex(v, "^%s$" % TIME, got[0])
        # refused, then the next upstream: both attempts, in order
        self.assertEqual(got[1][:4], ["/failover", "200", "%s, %s" % (d, a),
                                      "502, 200"], got[1])
        self.assertRegex(got[1][4], "^-, %s$" % TIME, got[1])
        self.assertRegex(got[1][5], "^-, %s$" % TIME, got[1])
        self.assertRegex(got[1][6], "^%s, %s$" % (TIME, TIME), got[1])
        # nothing answered: no connect or header time, but a response time
        self.assertEqual(got[2][:6], ["/dead", "502", d2, "502", "-", "-"],
                         got[2])
        self.assertRegex(got[2][6], "^%s$" % TIME, got[2])
        # a route the proxy does not handle has none of them
        self.assertEqual(got[3], ["/hello", "200", "-", "-", "-", "-", "-"])

    def test_pooled_connection_and_timing(self):
        slow = threading.Event()

        def handler(req, conn):
            conn.read_body(req)
            if req.target == "/ok/slow":
                slow.wait(0.3)       # never set: a 300 ms upstream
            conn.respond(200, b"x")
        self.a.handler = handler
        with self.server.client() as c:
            self.assertStatus(c.request("GET", "/ok/1"), 200)
            self.assertStatus(c.request("GET", "/ok/slow"), 200)
        got = [l.split("|") for l in self.lines(2)]
        self.assertEqual(self.a.connections, 1)
        # the second request took the pooled connection: no connect time
        self.assertEqual(got[1][4], "0.000", got[1])
        header, total = float(got[1][5]), float(got[1][6])
        self.assertGreaterEqual(header, 0.29, got[1])
        self.assertLess(header, 5, got[1])
        self.assertGreaterEqual(total, header, got[1])


def import_exposition_parser():
    """The strict Prometheus text-format parser of test_metrics.py."""
    import test_metrics
    return test_metrics.parse_exposition, test_metrics.value


class TestMetrics(kt.ServerTestCase):
    """kourier_upstream_* series through /metrics, summed over two
    workers, exact after a known set of requests, kept across a reload,
    in the strict exposition format."""

    WORKERS = 2

    def setUp(self):
        self.parse, self.value = import_exposition_parser()
        self.gate = threading.Event()
        self.addCleanup(self.gate.set)

        def handler(req, conn):
            conn.read_body(req)
            if req.target.startswith("/api/missing"):
                conn.respond(404, b"no")
            elif req.target.startswith("/slow"):
                self.gate.wait(kt.DEADLINE)
                return "close"
            elif req.target.startswith("/smuggle"):
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\nok")
                return "close"
            elif req.target.startswith("/hangup"):
                return "close"
            else:
                conn.respond(200, b"hello")
        self.a = up.Upstream(handler, name="a")
        self.addCleanup(self.a.stop)
        self.dead = "127.0.0.1:%d" % up.closed_port()
        self.server = kt.Server(self.config())
        self.addCleanup(self.server.kill)
        self.server.start()
        self.addCleanup(self.check_server_log, self.server)

    def config(self, extra_routes=()):
        a = self.a.address
        return kt.make_config(
            workers=self.WORKERS, shutdown_timeout="10s",
            modules={"proxy": {}, "metrics": {}},
            hooks={"log": ["metrics"]},
            routes=[{"path": "/metrics", "handler": "metrics"},
                    {"prefix": "/api", "handler": "proxy",
                     "upstreams": [a]},
                    {"prefix": "/dead", "handler": "proxy",
                     "upstreams": [self.dead]},
                    {"prefix": "/slow", "handler": "proxy",
                     "read_timeout": "200ms", "upstreams": [a]},
                    {"prefix": "/smuggle", "handler": "proxy",
                     "upstreams": [a]},
                    {"prefix": "/hangup", "handler": "proxy",
                     "retries": 0, "upstreams": [a]}]
            + list(extra_routes))

    def get(self, target, status):
        with self.server.client() as c:
            r = c.request("GET", target)
        self.assertStatus(r, status, target)
        return r

    def scrape(self):
        r = self.get("/metrics", 200)
        return self.parse(r.body), r.body

    def v(self, fams, name, family=None, **labels):
        return self.value(fams, name, family, **labels)

    def test_series_after_known_requests(self):
        a, d = self.a.address, self.dead
        fams, _ = self.scrape()
        # every configured pair is there from the start, at zero
        for route in ("/api", "/slow", "/smuggle", "/hangup"):
            for code in ("1xx", "2xx", "3xx", "4xx", "5xx"):
                self.assertEqual(self.v(
                    fams, "kourier_upstream_requests_total", route=route,
                    upstream=a, code=code), 0)
            self.assertEqual(self.v(fams, "kourier_upstream_up",
                                    route=route, upstream=a), 1)
        self.assertIn({"route": "/dead", "upstream": d, "reason": "connect"},
                      [s[1] for s in
                       fams["kourier_upstream_failures_total"]["samples"]])

        for _ in range(7):
            self.get("/api/x", 200)
        for _ in range(3):
            self.get("/api/missing", 404)
        self.get("/dead", 502)
        self.get("/slow", 504)
        self.get("/smuggle", 502)
        self.get("/hangup", 502)
        fams, body = self.scrape()

        def req(route, code):
            return self.v(fams, "kourier_upstream_requests_total",
                          route=route, upstream=a, code=code)

        def fail(route, reason, upstream=a):
            return self.v(fams, "kourier_upstream_failures_total",
                          route=route, upstream=upstream, reason=reason)
        self.assertEqual(req("/api", "2xx"), 7)
        self.assertEqual(req("/api", "4xx"), 3)
        self.assertEqual(req("/api", "5xx"), 0)
        for reason in ("connect", "timeout", "invalid", "closed"):
            self.assertEqual(fail("/api", reason), 0, reason)
        self.assertEqual(fail("/dead", "connect", d), 1)
        self.assertEqual(fail("/slow", "timeout"), 1)
        self.assertEqual(fail("/smuggle", "invalid"), 1)
        self.assertEqual(fail("/hangup", "closed"), 1)
        # responses that never came are not counted as responses
        for route in ("/slow", "/smuggle", "/hangup"):
            self.assertEqual(sum(req(route, c) for c in
                                 ("1xx", "2xx", "3xx", "4xx", "5xx")), 0)

        h = "kourier_upstream_response_duration_seconds"
        self.assertEqual(fams[h]["type"], "histogram")
        self.assertEqual(self.v(fams, h + "_count", h, route="/api",
                                upstream=a), 10)
        self.assertEqual(self.v(fams, h + "_bucket", h, route="/api",
                                upstream=a, le="+Inf"), 10)
        self.assertGreaterEqual(self.v(fams, h + "_sum", h, route="/api",
                                       upstream=a), 0)

        # passive health: one failure (max_fails 1) took these out
        self.assertEqual(self.v(fams, "kourier_upstream_up", route="/dead",
                                upstream=d), 0)
        self.assertEqual(self.v(fams, "kourier_upstream_up", route="/api",
                                upstream=a), 1)

        # nothing in flight; every pooled connection is open upstream
        conns = "kourier_upstream_connections"
        idle = sum(self.v(fams, conns, route=r, upstream=a, state="idle")
                   for r in ("/api", "/slow", "/smuggle", "/hangup"))
        active = sum(self.v(fams, conns, route=r, upstream=a,
                            state="active")
                     for r in ("/api", "/slow", "/smuggle", "/hangup"))
        self.assertEqual(active, 0)
        self.a.wait(lambda: self.a.open == idle,
                    "%d open connections (the pooled ones)" % idle)
        self.assertGreaterEqual(idle, 1)
        self.assertLessEqual(idle, self.WORKERS)

        for name, typ in (("kourier_upstream_requests_total", "counter"),
                          ("kourier_upstream_failures_total", "counter"),
                          (h, "histogram"),
                          ("kourier_upstream_up", "gauge"),
                          ("kourier_upstream_connections", "gauge")):
            self.assertEqual(fams[name]["type"], typ, name)
            self.assertTrue(fams[name]["help"], name)
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "metrics"], input=body,
                               capture_output=True, timeout=kt.DEADLINE)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_active_connection_gauge(self):
        a = self.a.address
        c = self.server.client()
        self.addCleanup(c.close)
        c.send(kt.request_bytes("GET", "/slow/held"))
        self.a.wait(lambda: len(self.a.requests) == 1, "the request")
        fams, _ = self.scrape()
        self.assertEqual(self.v(fams, "kourier_upstream_connections",
                                route="/slow", upstream=a, state="active"),
                         1)
        self.assertStatus(c.read_response(), 504)
        fams, _ = self.scrape()
        self.assertEqual(self.v(fams, "kourier_upstream_connections",
                                route="/slow", upstream=a, state="active"),
                         0)

    def test_counts_survive_reload(self):
        a = self.a.address
        for _ in range(4):
            self.get("/api/x", 200)
        self.get("/dead", 502)
        mark = self.server.log_mark()
        rc, err = self.server.reload(self.config(
            [{"prefix": "/more", "handler": "proxy", "upstreams": [a]}]))
        self.assertEqual(rc, 0, err)
        self.server.wait_workers(self.WORKERS, since=mark)
        for _ in range(2):
            self.get("/api/x", 200)
        self.get("/more", 200)
        fams, _ = self.scrape()
        self.assertEqual(self.v(fams, "kourier_upstream_requests_total",
                                route="/api", upstream=a, code="2xx"), 6)
        self.assertEqual(self.v(fams, "kourier_upstream_requests_total",
                                route="/more", upstream=a, code="2xx"), 1)
        self.assertEqual(self.v(fams, "kourier_upstream_failures_total",
                                route="/dead", upstream=self.dead,
                                reason="connect"), 1)
        # one entry per pair, whatever the number of workers and reloads
        keys = [tuple(sorted(s[1].items())) for s in
                fams["kourier_upstream_requests_total"]["samples"]]
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(len(keys), 5 * 6)


if __name__ == "__main__":
    kt.main()
