"""Harness for Kourier's integration tests (Python 3 standard library only).

The tests start the real `kourier -F` binary on 127.0.0.1 with an ephemeral
port and talk to it with real clients. This module offers:

- paths(): where the binary and the build tree are (from the environment
  that `make check` sets: KOURIER_BIN, KOURIER_BUILD_DIR, KOURIER_SRC_DIR);
- make_config() / to_yaml(): a kourier.yaml built from Python values;
- Server: writes the config into a temporary prefix, runs `kourier -F`,
  collects its log in a reader thread (so tests wait on log lines), learns
  the port from "listening on 127.0.0.1:PORT", waits for the workers'
  "worker PID ready" lines, and reloads or stops it;
- Client: a raw socket with a strict HTTP/1.1 response reader
  (Content-Length, chunked, close-delimited bodies; interim 1xx responses);
- main(): runs a test module and exits 0 (pass), 1 (fail) or 77 (skip).

Nothing here sleeps and hopes: every wait polls a condition until a
deadline, and every process started is killed when the test ends, the
test process exits, or it is terminated.
"""

import atexit
import base64
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import select
import subprocess
import sys
import tempfile
import termios
import threading
import time
import unittest

SKIP = 77

# Deadline for anything that should happen "now" (a start, a log line, a
# response). Generous so that a sanitizer build on a loaded machine passes;
# a correct server meets it in milliseconds.
DEADLINE = 20.0

LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
WORKER_READY_RE = re.compile(r"worker (\d+) ready")
SANITIZER_RE = re.compile(
    r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer"
    r"|runtime error:")


class SkipAll(Exception):
    """Raised when the environment cannot run the tests at all."""


# --------------------------------------------------------------------------
# Paths

def paths():
    """Return (kourier binary, build dir, source dir) as absolute paths.

    Without KOURIER_BIN and KOURIER_BUILD_DIR (a test run by hand outside
    `make check`) the tests are skipped, not failed: there is nothing to
    test. With them set, a missing binary is a failure.
    """
    build = os.environ.get("KOURIER_BUILD_DIR")
    binary = os.environ.get("KOURIER_BIN")
    if not binary and build:
        binary = os.path.join(build, "kourier")
    if not binary:
        raise SkipAll("KOURIER_BIN / KOURIER_BUILD_DIR not set "
                      "(run through `make check`)")
    binary = os.path.abspath(binary)
    if not build:
        build = os.path.dirname(binary)
    src = os.environ.get("KOURIER_SRC_DIR") or build
    return binary, os.path.abspath(build), os.path.abspath(src)


def plugin_path(name):
    """Absolute path of a plugin built in the build tree."""
    return os.path.join(paths()[1], "plugins", ".libs", name + ".so")


# --------------------------------------------------------------------------
# YAML

_PLAIN_RE = re.compile(r"^[A-Za-z0-9_/][A-Za-z0-9_./:+-]*$")


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    if _PLAIN_RE.match(s) and s.lower() not in (
            "true", "false", "yes", "no", "on", "off", "null", "~"):
        return s
    return json.dumps(s)   # a JSON string is a valid YAML double-quoted one


def _is_scalar(v):
    return not isinstance(v, (dict, list, tuple))


def to_yaml(obj, indent=0):
    """Render dicts, lists and scalars as block YAML (lists of scalars in
    flow style). Strings that could be misread are double-quoted."""
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        for k, v in obj.items():
            if _is_scalar(v):
                out.append("%s%s: %s\n" % (pad, k, _scalar(v)))
            elif isinstance(v, dict) and not v:
                out.append("%s%s: {}\n" % (pad, k))
            elif isinstance(v, (list, tuple)) and all(map(_is_scalar, v)):
                out.append("%s%s: [%s]\n" % (
                    pad, k, ", ".join(_scalar(x) for x in v)))
            else:
                out.append("%s%s:\n" % (pad, k))
                out.append(to_yaml(v, indent + 2))
        return "".join(out)
    if isinstance(obj, (list, tuple)):
        for item in obj:
            if _is_scalar(item):
                out.append("%s- %s\n" % (pad, _scalar(item)))
            else:
                body = to_yaml(item, indent + 2)
                out.append(pad + "- " + body[indent + 2:])
        return "".join(out)
    return pad + _scalar(obj) + "\n"


def make_config(workers=1, routes=None, limits=None, modules=None,
                shutdown_timeout=None, listen=None, **extra):
    """A config dict for the plugins of the build tree. `routes` is a list
    of route dicts; `modules` defaults to hello, echo and delay with their
    explicit paths. Keys in `extra` are added at the top level."""
    cfg = {
        "workers": workers,
        "pid_file": "kourier.pid",
        "error_log": "stderr",
    }
    if shutdown_timeout is not None:
        cfg["shutdown_timeout"] = shutdown_timeout
    if limits:
        cfg["limits"] = dict(limits)
    cfg["listen"] = list(listen or ["127.0.0.1:0"])
    if modules is None:
        modules = {name: {"path": plugin_path(name)}
                   for name in ("hello", "echo", "delay")}
    cfg["modules"] = modules
    cfg["routes"] = list(routes or [{"path": "/hello", "handler": "hello"}])
    cfg.update(extra)
    return cfg


# --------------------------------------------------------------------------
# Waiting

def wait_until(predicate, timeout=DEADLINE, interval=0.01, what="condition"):
    """Poll predicate() until it returns a true value (returned) or the
    deadline passes (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


def pid_alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may contain
    # spaces or parentheses itself.
    return stat[stat.rindex(")") + 2] not in "ZX"


def children_of(pid):
    """Pids of the live children of `pid` (zombies excluded)."""
    kids = None
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        pass
    if kids is None:
        try:
            out = subprocess.run(["pgrep", "-P", str(pid)],
                                 capture_output=True, text=True,
                                 timeout=DEADLINE).stdout
            kids = [int(x) for x in out.split()]
        except (OSError, subprocess.TimeoutExpired):
            kids = []
    return sorted(k for k in kids if pid_alive(k))


def _tcp_entry(local_port, remote_port):
    """The /proc/net/tcp fields of the 127.0.0.1:local_port <-
    127.0.0.1:remote_port socket, or None."""
    want_l = "0100007F:%04X" % local_port
    want_r = "0100007F:%04X" % remote_port
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want_l and fields[2] == want_r:
                return fields
    return None


def _tcp_rx_queue(local_port, remote_port):
    """The receive queue of the server side of a connection, or None."""
    fields = _tcp_entry(local_port, remote_port)
    return None if fields is None else int(fields[4].split(":")[1], 16)


def wait_accepted(sock, server_port, timeout=DEADLINE):
    """Wait until the server has accept()ed the connection of `sock`.
    A connection still in the listen queue has no socket inode yet
    (/proc/net/tcp shows 0); accept() gives it one."""
    client_port = sock.getsockname()[1]

    def accepted():
        fields = _tcp_entry(server_port, client_port)
        return fields is not None and fields[9] != "0"

    wait_until(accepted, timeout, what="the server to accept the "
               "connection")


def wait_request_consumed(sock, server_port, timeout=DEADLINE):
    """Return once everything sent on `sock` has been read by the server
    process: our send queue is empty (the server's kernel acknowledged it)
    and the server-side socket's receive queue is empty (the worker has
    read() it). With an event loop that parses what it reads, the request
    is then being handled -- a state a test can wait for without sleeping.
    """
    client_port = sock.getsockname()[1]

    def consumed():
        outq = struct.unpack(
            "i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return outq == 0 and _tcp_rx_queue(server_port, client_port) == 0

    wait_until(consumed, timeout, what="the server to read the request")


# --------------------------------------------------------------------------
# HTTP client

def request_bytes(method="GET", target="/", headers=None, body=b"",
                  version="HTTP/1.1", host="127.0.0.1", length=True):
    """Serialise a request. Host comes first unless host is None; a
    Content-Length is added for a non-empty body unless `length` is false or
    the headers already frame the body."""
    if isinstance(body, str):
        body = body.encode()
    hdrs = []
    if host is not None:
        hdrs.append(("Host", host))
    hdrs.extend(headers or [])
    names = {n.lower() for n, _ in hdrs}
    if (body and length and "content-length" not in names
            and "transfer-encoding" not in names):
        hdrs.append(("Content-Length", str(len(body))))
    head = "%s %s %s\r\n" % (method, target, version)
    head += "".join("%s: %s\r\n" % (n, v) for n, v in hdrs)
    return head.encode("latin-1") + b"\r\n" + body


class ProtocolError(AssertionError):
    """The server sent something that is not a valid HTTP/1.1 response."""


class ServerClosed(AssertionError):
    """The server closed the connection (EOF or reset) while a response was
    expected. `partial` holds what had been received of it."""

    def __init__(self, msg, partial=b"", reset=False):
        AssertionError.__init__(self, msg)
        self.partial = partial
        self.reset = reset


class Response(object):
    def __init__(self, version, status, reason, headers, body, head):
        self.version = version          # "HTTP/1.1"
        self.status = status            # int
        self.reason = reason            # str
        self.headers = headers          # [(name, value)] as received
        self.body = body                # bytes (de-chunked)
        self.head = head                # raw status line + header block
        self.chunked = False
        self.close_delimited = False

    def header(self, name):
        """First value of header `name` (case-insensitive), or None."""
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_values(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def tokens(self, name):
        """Lower-cased comma-separated tokens of every `name` header."""
        out = []
        for v in self.header_values(name):
            out.extend(t.strip().lower() for t in v.split(",") if t.strip())
        return out

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        body = self.body if len(self.body) <= 200 else (
            self.body[:200] + b"...(%d bytes)" % len(self.body))
        return "<%s %d %s %r body=%r>" % (
            self.version, self.status, self.reason, self.headers, body)


_STATUS_RE = re.compile(rb"^(HTTP/\d\.\d) (\d{3}) ([^\r\n]*)$")
_TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class Client(object):
    """One TCP connection to the server, with a buffered strict response
    reader. Every read has a deadline; nothing blocks forever.

    With `tls` (an ssl.SSLContext) the connection is HTTPS, `server_name`
    going into SNI. A TLS connection that ends without close_notify sets
    `ragged_eof` (it is an EOF all the same)."""

    def __init__(self, port, host="127.0.0.1", timeout=DEADLINE, tls=None,
                 server_name=None):
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(self.sock,
                                            server_hostname=server_name,
                                            suppress_ragged_eofs=False)
            except BaseException:
                self.sock.close()
                raise
        self.buf = b""
        self.eof = False
        self.reset = False
        self.ragged_eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def request(self, *args, **kwargs):
        """Send request_bytes(*args, **kwargs) and read its response."""
        method = kwargs.get("method", args[0] if args else "GET")
        self.send(request_bytes(*args, **kwargs))
        return self.read_response(method=method)

    def send_slowly(self, data, step=1, interval=0.3, timeout=DEADLINE):
        """Send `data` `step` bytes at a time, waiting `interval` seconds
        between writes, and stop early as soon as the server sends anything
        or closes. Returns the number of bytes sent."""
        if isinstance(data, str):
            data = data.encode("latin-1")
        deadline = time.monotonic() + timeout
        sent = 0
        while sent < len(data) and time.monotonic() < deadline:
            try:
                self.sock.sendall(data[sent:sent + step])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += step
            if self._readable(interval):
                break
        return sent

    def _readable(self, timeout):
        # decrypted bytes wait inside the ssl object, unseen by select()
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        return bool(r)

    def _fill(self, deadline):
        """Read more into self.buf. Returns False on EOF or reset."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._readable(remaining):
            raise socket.timeout("no data from the server within the "
                                 "deadline (have %r)" % self.buf[:300])
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        except ssl.SSLEOFError:
            self.eof = self.ragged_eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _deadline(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None
                                   else timeout)

    def _read_until(self, sep, deadline, what):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[:i], self.buf[i + len(sep):]
                return out
            if not self._fill(deadline):
                raise ServerClosed("connection closed while reading %s "
                                   "(have %r)" % (what, self.buf[:300]),
                                   self.buf, self.reset)

    def _read_exact(self, n, deadline, what):
        # pieces joined once: appending to one bytes object is quadratic,
        # and a 10 MB body would then take longer than the deadline
        parts, have = [self.buf], len(self.buf)
        self.buf = b""
        try:
            while have < n:
                if not self._fill(deadline):
                    raise ServerClosed("connection closed after %d of %d "
                                       "bytes of %s" % (have, n, what),
                                       b"".join(parts), self.reset)
                parts.append(self.buf)
                have += len(self.buf)
                self.buf = b""
        except BaseException:
            self.buf = b"".join(parts) + self.buf
            raise
        data = b"".join(parts)
        out, self.buf = data[:n], data[n:]
        return out

    def _read_to_eof(self, deadline):
        """Everything until the server closes (buffered bytes included)."""
        parts = [self.buf]
        self.buf = b""
        try:
            while self._fill(deadline):
                parts.append(self.buf)
                self.buf = b""
        except BaseException:
            self.buf = b"".join(parts) + self.buf
            raise
        return b"".join(parts)

    def read_response(self, method="GET", timeout=None):
        """Read one response (a 1xx interim response counts as one). The
        status line and header block must use CRLF; the body is framed by
        Content-Length, chunked coding or the end of the connection, as
        RFC 9112 section 6.3 says. Raises ServerClosed when the connection
        ends first, ProtocolError when the response is malformed."""
        deadline = self._deadline(timeout)
        if not self.buf and not self._fill(deadline):
            raise ServerClosed("connection closed before any byte of the "
                               "response", b"", self.reset)
        head = self._read_until(b"\r\n\r\n", deadline, "the header block")
        lines = head.split(b"\r\n")
        for line in lines:
            if b"\n" in line or b"\r" in line:
                raise ProtocolError("bare CR or LF in the response head: %r"
                                    % head)
        m = _STATUS_RE.match(lines[0])
        if not m:
            raise ProtocolError("bad status line %r" % lines[0])
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN_RE.match(name):
                raise ProtocolError("bad header line %r" % line)
            headers.append((name.decode("latin-1"),
                            value.strip(b" \t").decode("latin-1")))
        resp = Response(m.group(1).decode(), int(m.group(2)),
                        m.group(3).decode("latin-1"), headers, b"", head)
        resp.body = self._read_body(resp, method, deadline)
        return resp

    def _read_body(self, resp, method, deadline):
        status = resp.status
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            return b""
        te = resp.tokens("Transfer-Encoding")
        cls = resp.header_values("Content-Length")
        if te:
            if cls:
                raise ProtocolError("response has both Transfer-Encoding "
                                    "and Content-Length: %r" % resp)
            if te[-1] != "chunked":
                raise ProtocolError("unexpected Transfer-Encoding %r" % te)
            resp.chunked = True
            return self._read_chunked(deadline)
        if cls:
            if len(set(cls)) != 1 or not re.match(r"^\d+$", cls[0]):
                raise ProtocolError("bad Content-Length %r" % cls)
            return self._read_exact(int(cls[0]), deadline, "the body")
        resp.close_delimited = True
        return self._read_to_eof(deadline)

    def _read_chunked(self, deadline):
        body = b""
        while True:
            line = self._read_until(b"\r\n", deadline, "a chunk size")
            size = line.split(b";", 1)[0].strip()
            if not re.match(rb"^[0-9A-Fa-f]+$", size):
                raise ProtocolError("bad chunk size line %r" % line)
            n = int(size, 16)
            if n == 0:
                break
            body += self._read_exact(n, deadline, "a chunk")
            if self._read_exact(2, deadline, "a chunk's CRLF") != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")
        while self._read_until(b"\r\n", deadline, "the trailer"):
            pass
        return body

    def read_until_close(self, timeout=None):
        """Read until the server closes; return everything read (including
        what was already buffered). Times out (socket.timeout) if the
        server keeps the connection open."""
        return self._read_to_eof(self._deadline(timeout))


# --------------------------------------------------------------------------
# The server under test

_servers = []


def _cleanup_all():
    for s in list(_servers):
        s.kill()


atexit.register(_cleanup_all)


def _on_sigterm(signum, frame):
    # Killed from outside (a make check timeout): take the servers with us.
    # Not SystemExit: unittest would catch it and go on to the next test.
    try:
        _cleanup_all()
    finally:
        os._exit(128 + signum)


class Server(object):
    """A `kourier -F` master with its own temporary prefix.

    The master and its workers run in a new session (process group), so
    that kill() can reach every process the server started even if the
    master died first."""

    def __init__(self, config, workers=None):
        self.binary, self.build_dir, self.src_dir = paths()
        if not os.access(self.binary, os.X_OK):
            raise AssertionError("kourier binary %s is missing or not "
                                 "executable" % self.binary)
        self.dir = tempfile.mkdtemp(prefix="kourier-test-")
        # Run with a cwd other than the prefix so that a relative path
        # resolved against the cwd instead of the prefix is noticed.
        self.cwd = os.path.join(self.dir, "cwd")
        os.mkdir(self.cwd)
        self.prefix = self.dir
        self.conf_path = os.path.join(self.dir, "kourier.yaml")
        self.pid_path = os.path.join(self.dir, "kourier.pid")
        if workers is None and isinstance(config, dict):
            workers = config.get("workers")
        self.workers = workers if isinstance(workers, int) else 1
        self.write_config(config)
        self.proc = None
        self.port = None
        self.lines = []
        self.eof = False
        self.cond = threading.Condition()
        self.reader = None
        self.pgid = None
        _servers.append(self)

    # ---- configuration

    def write_config(self, config):
        """Write the config (a dict, or YAML text) atomically."""
        text = config if isinstance(config, str) else to_yaml(config)
        tmp = self.conf_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.conf_path)
        self.config_text = text

    def command(self, *args):
        return [self.binary] + list(args) + [
            "-c", self.conf_path, "-p", self.prefix]

    def run_command(self, *args, **kwargs):
        """Run `kourier ARGS -c CONF -p PREFIX` to completion; return the
        CompletedProcess (text output)."""
        timeout = kwargs.pop("timeout", DEADLINE + 10)
        return subprocess.run(self.command(*args), cwd=self.cwd,
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=timeout,
                              **kwargs)

    # ---- life cycle

    def start(self, timeout=DEADLINE):
        """Start the master, learn the port and wait for the workers."""
        self.proc = subprocess.Popen(
            self.command("-F"), cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pgid = self.proc.pid
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()
        m = self.wait_log(LISTEN_RE, timeout=timeout)
        self.port = int(m.group(1))
        self.wait_workers(self.workers, timeout=timeout)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def ports(self):
        """Ports of every 127.0.0.1 listener, in the order the master
        bound them (the order of `listen`, for a first start)."""
        with self.cond:
            return [int(m.group(1)) for m in
                    (LISTEN_RE.search(l) for l in self.lines) if m]

    def _read_log(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def log_tail(self, n=60):
        with self.cond:
            return "\n".join(self.lines[-n:])

    def log_mark(self):
        """Index of the next log line (to wait only for later lines)."""
        with self.cond:
            return len(self.lines)

    def _fail(self, what):
        raise AssertionError("%s\n--- server log (last lines) ---\n%s\n"
                             "--- end of log ---" % (what, self.log_tail()))

    def wait_log(self, regex, since=0, timeout=DEADLINE):
        """Wait for a log line (index >= since) matching `regex`; return
        the match. Fails early, with the log, if the master exits."""
        if isinstance(regex, str):
            regex = re.compile(regex)
        deadline = time.monotonic() + timeout
        i = since
        with self.cond:
            while True:
                while i < len(self.lines):
                    m = regex.search(self.lines[i])
                    i += 1
                    if m:
                        return m
                if self.eof:
                    self.proc.wait()
                    self._fail("server exited (status %s) before logging "
                               "/%s/" % (self.proc.returncode,
                                         regex.pattern))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._fail("timed out after %.1fs waiting for log line "
                               "/%s/" % (timeout, regex.pattern))
                self.cond.wait(remaining)

    def ready_pids(self, since=0):
        """Pids from "worker PID ready" lines at index >= since, in order,
        without repeats."""
        out = []
        with self.cond:
            for line in self.lines[since:]:
                for m in WORKER_READY_RE.finditer(line):
                    pid = int(m.group(1))
                    if pid not in out:
                        out.append(pid)
        return out

    def wait_workers(self, n, since=0, exclude=(), timeout=DEADLINE):
        """Wait until n distinct workers not in `exclude` have logged that
        they are ready (lines >= since); return their pids."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.ready_pids(since) if p not in exclude]
            if len(pids) >= n:
                return pids
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail("timed out after %.1fs waiting for %d workers "
                           "ready (have %r)" % (timeout, n, pids))
            # The reader thread notifies on every new line.
            with self.cond:
                if self.eof:
                    self.proc.wait()
                    self._fail("server exited (status %s) while waiting "
                               "for workers" % self.proc.returncode)
                self.cond.wait(min(remaining, 0.2))

    def worker_pids(self):
        """The master's live children (its workers, plus a validation child
        during a reload)."""
        return children_of(self.pid)

    def read_pid_file(self):
        try:
            with open(self.pid_path) as f:
                text = f.read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.pid, sig)

    def reload(self, config, timeout=DEADLINE + 10):
        """Write the new config and run `kourier -s reload`; return
        (exit status, stderr)."""
        self.write_config(config)
        r = self.run_command("-s", "reload", timeout=timeout)
        return r.returncode, r.stderr

    def wait_exit(self, timeout=DEADLINE):
        """Wait for the master to exit; return its exit status (negative:
        killed by that signal)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._fail("master %d still running %.1fs later"
                       % (self.pid, timeout))

    def stop(self, timeout=DEADLINE):
        """SIGTERM the master and wait for it; then make sure nothing of
        the server is left. Returns the master's exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()
        return self.proc.returncode

    def kill(self):
        """Kill every process of the server (idempotent), reap them, drop
        the temporary prefix.

        Only processes of this server are signalled: the process group as
        a whole while the master is unreaped (its pid, hence the group id,
        cannot be reused until we reap it), and afterwards only orphaned
        workers, which the subreaper setting makes our own children."""
        if self.proc is not None:
            if self.proc.returncode is None:
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    self.proc.wait(DEADLINE)
                except subprocess.TimeoutExpired:
                    pass
            _kill_orphans(self.pgid)
            if self.reader is not None:
                self.reader.join(DEADLINE)
            if not self.proc.stdout.closed:
                self.proc.stdout.close()
        if self in _servers:
            _servers.remove(self)
        if self.dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)

    def sanitizer_reports(self):
        """Log lines in which a sanitizer reported an error."""
        with self.cond:
            return [l for l in self.lines if SANITIZER_RE.search(l)]

    # ---- requests

    def client(self, timeout=DEADLINE):
        return Client(self.port, timeout=timeout)

    def request(self, method="GET", target="/hello", **kwargs):
        """One request on a fresh connection; returns the Response."""
        with self.client() as c:
            return c.request(method, target, **kwargs)

    def get(self, target="/hello", **kwargs):
        return self.request("GET", target, **kwargs)


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _own_children():
    """Our children, zombies included, over every thread of this process
    (an orphan is handed to one of the subreaper's threads)."""
    kids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/children" % tid) as f:
                kids.update(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def _kill_orphans(pgid):
    """Kill and reap the processes of group `pgid` that were re-parented to
    us after their master exited."""
    for pid in _own_children():
        if _pgid(pid) != pgid:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _become_subreaper():
    """PR_SET_CHILD_SUBREAPER: workers orphaned by a dead master become our
    children, so that the tests can find, kill and reap them."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_become_subreaper()


# --------------------------------------------------------------------------
# Helpers for tests

def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode())


def decode_echo(resp):
    """The echo plugin's JSON with every base64 field decoded to bytes."""
    doc = resp.json()
    out = {}
    for key in ("method", "uri", "version", "body"):
        out[key] = base64.b64decode(doc[key], validate=True)
    out["headers"] = [(base64.b64decode(n, validate=True),
                       base64.b64decode(v, validate=True))
                      for n, v in doc["headers"]]
    return out


class ServerTestCase(unittest.TestCase):
    """Base class: fails a test whose server logged a sanitizer report."""

    maxDiff = None

    def check_server_log(self, server):
        reports = server.sanitizer_reports()
        if reports:
            self.fail("sanitizer reports in the server log:\n%s\n%s"
                      % ("\n".join(reports[:20]), server.log_tail(100)))

    def assertStatus(self, resp, status, what=""):
        self.assertEqual(resp.status, status, "%s: expected %d, got %r"
                         % (what or "response", status, resp))

    def assertClosesAfter(self, client, what="", timeout=DEADLINE):
        """The server closes the connection: nothing more arrives, then EOF
        (or a reset), within the deadline."""
        try:
            rest = client.read_until_close(timeout)
        except socket.timeout:
            self.fail("%s: the server kept the connection open" % what)
        self.assertEqual(rest, b"", "%s: unexpected bytes after the "
                         "response: %r" % (what, rest[:300]))


def main():
    """Run the tests of the calling module (or the names on the command
    line) and exit 0, 1 or 77 (every test skipped)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        paths()
    except SkipAll as e:
        sys.stderr.write("SKIP: %s\n" % e)
        sys.exit(SKIP)
    module = sys.modules["__main__"]
    loader = unittest.TestLoader()
    if len(sys.argv) > 1:
        suite = loader.loadTestsFromNames(sys.argv[1:], module)
    else:
        suite = loader.loadTestsFromModule(module)
    runner = unittest.TextTestRunner(verbosity=2, stream=sys.stderr)
    result = runner.run(suite)
    _cleanup_all()
    if not result.wasSuccessful():
        sys.exit(1)
    if result.testsRun and len(result.skipped) == result.testsRun:
        sys.exit(SKIP)
    sys.exit(0)
