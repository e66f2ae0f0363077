"""A small HTTP/1.1 upstream server for the proxy tests (Python standard
library only).

It listens on 127.0.0.1 with an ephemeral port and serves each connection
in a thread of its own. It parses request heads itself, so that the tests
see exactly the bytes the proxy sent, and it answers with whatever bytes a
test wants: well-formed, slow, chunked, keep-alive, dying mid-response or
malformed. What it saw is recorded (connections accepted, requests with
their fields and bodies) for the tests to assert on.

A handler is a function handler(req, conn): req is the parsed request (its
body not read yet), conn the connection, with helpers to read the body
(whole or streamed), send bytes and close. The handler returns nothing to
keep the connection for the next request, or "close" to close it.
"""

import hashlib
import json
import socket
import threading
import time

DEADLINE = 20.0


class Closed(Exception):
    """The peer closed the connection."""


class Request(object):
    def __init__(self, method, target, version, headers, raw_head):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers          # [(name, value)] as str, in order
        self.raw_head = raw_head
        self.body = None                # set once read
        self.conn_index = None          # which accepted connection

    def values(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name, default=None):
        v = self.values(name)
        return v[0] if v else default

    def names(self):
        return [k.lower() for k, v in self.headers]

    def chunked(self):
        te = self.header("Transfer-Encoding")
        return te is not None and te.lower().split(",")[-1].strip() == \
            "chunked"

    def content_length(self):
        v = self.header("Content-Length")
        return int(v) if v is not None else None


class Conn(object):
    def __init__(self, upstream, sock, index):
        self.upstream = upstream
        self.sock = sock
        self.index = index
        self.buf = b""
        self.closed = False

    # ---- input

    def _fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise Closed()
        self.buf += data

    def read_until(self, sep):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[:i], self.buf[i + len(sep):]
                return out
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self):
        """The next request head, or None when the peer closed first."""
        try:
            while not self.buf:
                self._fill()
            head = self.read_until(b"\r\n\r\n")
        except (Closed, OSError):
            return None
        lines = head.split(b"\r\n")
        method, target, version = lines[0].decode("latin-1").split(" ")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.decode("latin-1"),
                            value.strip(b" \t").decode("latin-1")))
        req = Request(method, target, version, headers, head)
        req.conn_index = self.index
        return req

    def body_pieces(self, req, size=65536):
        """Yield the request body in pieces as they arrive (de-chunked)."""
        if req.chunked():
            while True:
                line = self.read_until(b"\r\n")
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    while self.read_until(b"\r\n"):
                        pass
                    return
                left = n
                while left > 0:
                    if not self.buf:
                        self._fill()
                    piece = self.buf[:min(left, size)]
                    self.buf = self.buf[len(piece):]
                    left -= len(piece)
                    yield piece
                if self.read_exact(2) != b"\r\n":
                    raise AssertionError("chunk without CRLF")
            return
        left = req.content_length() or 0
        while left > 0:
            if not self.buf:
                self._fill()
            piece = self.buf[:min(left, size)]
            self.buf = self.buf[len(piece):]
            left -= len(piece)
            yield piece

    def read_body(self, req):
        req.body = b"".join(self.body_pieces(req))
        return req.body

    # ---- output

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def respond(self, status=200, body=b"", headers=(), chunked=False,
                reason=None, length=True):
        """A well-formed response (Content-Length or chunked framing)."""
        if isinstance(body, str):
            body = body.encode()
        reason = reason if reason is not None else (
            "OK" if status == 200 else "Status")
        out = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in headers:
            out.append("%s: %s\r\n" % (name, value))
        if chunked:
            out.append("Transfer-Encoding: chunked\r\n\r\n")
            data = "".join(out).encode("latin-1")
            if body:
                data += b"%x\r\n%s\r\n" % (len(body), body)
            data += b"0\r\n\r\n"
        else:
            if length:
                out.append("Content-Length: %d\r\n" % len(body))
            out.append("\r\n")
            data = "".join(out).encode("latin-1") + body
        self.send(data)

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                # shutdown wakes a thread blocked reading this socket
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                self.sock.close()
            except OSError:
                pass


def echo_handler(req, conn):
    """Answer with JSON describing the request as received."""
    body = conn.read_body(req)
    doc = {
        "method": req.method,
        "target": req.target,
        "version": req.version,
        "headers": req.headers,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "body": body.decode("latin-1") if len(body) <= 4096 else None,
        "upstream": conn.upstream.name,
        "conn": conn.index,
    }
    conn.respond(200, json.dumps(doc), [("Content-Type",
                                         "application/json"),
                                        ("X-Upstream", conn.upstream.name)])


class Upstream(object):
    """An upstream server on 127.0.0.1 with an ephemeral port."""

    def __init__(self, handler=echo_handler, name="u"):
        self.handler = handler
        self.name = name
        self.lock = threading.Condition()
        self.connections = 0            # accepted so far
        self.open = 0                   # connections still open
        self.requests = []              # every request read, in order
        self.errors = []                # exceptions raised by handlers
        self.conns = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.stopping:
                    sock.close()
                    return
                index = self.connections
                self.connections += 1
                self.open += 1
                conn = Conn(self, sock, index)
                self.conns.append(conn)
                self.lock.notify_all()
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        try:
            while not conn.closed:
                req = conn.read_head()
                if req is None:
                    break
                with self.lock:
                    self.requests.append(req)
                    self.lock.notify_all()
                if self.handler(req, conn) == "close":
                    break
        except (Closed, ConnectionError, BrokenPipeError, OSError):
            pass
        except Exception as e:   # a test's handler failed: report it
            with self.lock:
                self.errors.append(e)
        finally:
            conn.close()
            with self.lock:
                self.open -= 1
                self.lock.notify_all()

    def wait(self, cond, what, timeout=DEADLINE):
        """Wait until cond() (called under the lock) is true."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not cond():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("upstream %s: timed out waiting for "
                                         "%s" % (self.name, what))
                self.lock.wait(min(left, 0.2))

    def stop(self):
        """Stop accepting and close every connection (a dead upstream)."""
        with self.lock:
            self.stopping = True
            conns = list(self.conns)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes accept()
        except OSError:
            pass
        try:
            self.listener.close()
        except OSError:
            pass
        for c in conns:
            c.close()
        self.thread.join(DEADLINE)


_reserved = []


def closed_port():
    """A loopback port nothing listens on (connections are refused). The
    port stays bound, without listening, until the process exits: nothing
    started later (a server under test binding port 0) can take it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    _reserved.append(s)
    return s.getsockname()[1]
