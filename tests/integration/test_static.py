"""The static module through the real server: files, HEAD, 405, index
files, directory redirects, listings, media types, conditional requests,
ranges, precompressed siblings, every way out of the root we know of, a
multi-gigabyte sparse file in flat memory, the send timeout, the open-file
cache and permission errors.

The trees served are built in a temporary directory. When the tests run
as root the workers drop to `nobody` (the `user` key), so that a file
without read permission really is unreadable to them."""

import email.utils
import gzip
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402

ALPHABET = b"0123456789abcdefghijklmnopqrstuvwxyz"   # 36 bytes
SECRET = b"secret outside the root\n"
BIG = 3 << 30                                        # 3 GiB, sparse
VALIDITY = 0.5                                       # open_file_cache
MAX_RANGES = 4
SEND_TIMEOUT = 1.0


def write(path, data, mode=0o644):
    if isinstance(data, str):
        data = data.encode()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def http_date(t):
    return email.utils.formatdate(t, usegmt=True)


def rfc850(t):
    return time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(t))


def asctime(t):
    return time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(t))


def parse_multipart(body, boundary):
    """Split a multipart/byteranges body into [(headers dict, data)]
    following RFC 2046: a delimiter is CRLF "--" boundary, the first one
    may come without its CRLF, the last is followed by "--"."""
    delim = b"--" + boundary.encode()
    if body.startswith(b"\r\n"):
        body = body[2:]
    if not body.startswith(delim):
        raise AssertionError("multipart body does not start with the "
                             "boundary: %r" % body[:80])
    parts = []
    rest = body[len(delim):]
    while True:
        if rest.startswith(b"--"):
            if rest[2:] not in (b"", b"\r\n"):
                raise AssertionError("bytes after the close delimiter: %r"
                                     % rest[:80])
            return parts
        if not rest.startswith(b"\r\n"):
            raise AssertionError("boundary not followed by CRLF: %r"
                                 % rest[:80])
        head, sep, rest = rest[2:].partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError("part without a header block")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.decode().strip().lower()] = value.decode().strip()
        end = rest.find(b"\r\n" + delim)
        if end < 0:
            raise AssertionError("part without a closing delimiter")
        parts.append((headers, rest[:end]))
        rest = rest[end + 2 + len(delim):]


def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


class Tree(object):
    base = None
    www = None


def setUpModule():
    base = Tree.base = tempfile.mkdtemp(prefix="kourier-static-")
    os.chmod(base, 0o755)
    www = Tree.www = os.path.join(base, "www")
    write(os.path.join(base, "secret.txt"), SECRET)
    write(os.path.join(base, "outside", "file.txt"), SECRET)

    write(os.path.join(www, "index.html"), "<h1>Kourier test</h1>\n")
    write(os.path.join(www, "a.txt"), ALPHABET)
    write(os.path.join(www, "style.css"), "body { color: red }\n")
    write(os.path.join(www, "style.css.gz"),
          gzip.compress(b"body { color: red }\n"))
    write(os.path.join(www, "style.css.br"), b"BROTLI-BYTES")
    write(os.path.join(www, "plain.css"), "p {}\n")   # no siblings
    write(os.path.join(www, "img.PNG"), b"\x89PNG\r\n\x1a\n")
    write(os.path.join(www, "x.foo"), "foo\n")
    write(os.path.join(www, "noext"), "no extension\n")
    write(os.path.join(www, "sp ace.txt"), "space\n")
    write(os.path.join(www, "pct%file.txt"), "percent\n")
    write(os.path.join(www, "dir", "index.html"), "dir index\n")
    write(os.path.join(www, "dir2", "other.txt"), "no index here\n")
    write(os.path.join(www, "changing.txt"), "version 1\n")
    write(os.path.join(www, "locked.txt"), "locked\n", mode=0)
    write(os.path.join(www, "empty.txt"), b"")
    os.mkfifo(os.path.join(www, "fifo"))
    os.symlink("../secret.txt", os.path.join(www, "escape"))
    os.symlink(os.path.join(base, "secret.txt"),
               os.path.join(www, "abs-escape"))
    os.symlink(os.path.join(base, "outside"),
               os.path.join(www, "dirlink"))
    os.symlink("a.txt", os.path.join(www, "inlink"))
    os.symlink(os.path.join(www, "a.txt"), os.path.join(www, "abs-in"))
    with open(os.path.join(www, "big.bin"), "wb") as f:
        f.truncate(BIG)
        f.seek(BIG - 3)
        f.write(b"END")
    os.chmod(os.path.join(www, "big.bin"), 0o644)

    # root semantics: the route's prefix is part of the file's path
    ai = os.path.join(base, "airoot", "ai")
    write(os.path.join(ai, "<script>.txt"), "x\n")
    write(os.path.join(ai, "a&b.txt"), "ab\n")
    write(os.path.join(ai, 'quote".txt'), "q\n")
    write(os.path.join(ai, "colon:x.txt"), "c\n")
    write(os.path.join(ai, ".hidden"), "h\n")
    write(os.path.join(ai, "sub", "inner.txt"), "inner\n")

    nv = os.path.join(base, "nroot", "never")
    write(os.path.join(nv, "real.txt"), "real\n")
    os.symlink("real.txt", os.path.join(nv, "link.txt"))
    os.symlink(".", os.path.join(nv, "linkdir"))

    al = os.path.join(base, "aroot", "always")
    os.makedirs(al)
    os.symlink(os.path.join(base, "secret.txt"),
               os.path.join(al, "out.txt"))

    write(os.path.join(base, "ncroot", "nocache", "f.txt"), "one\n")
    write(os.path.join(base, "neroot", "noetag", "f.txt"), "tagless\n")

    for d, dirs, _ in os.walk(base):
        for name in dirs:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


def tearDownModule():
    if Tree.base:
        shutil.rmtree(Tree.base, ignore_errors=True)


def unprivileged_user():
    """{"user": "nobody"} when the tests run as root (so that permissions
    apply to the workers), else {}."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
            return {"user": "nobody"}
        except KeyError:
            pass
    return {}


class TestStatic(kt.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        base = cls.base = Tree.base
        cls.www = Tree.www
        extra = unprivileged_user()
        cls.unprivileged = os.geteuid() != 0 or "user" in extra
        routes = [
            {"prefix": "/ai", "handler": "static",
             "root": os.path.join(base, "airoot"), "autoindex": True},
            {"prefix": "/never", "handler": "static",
             "root": os.path.join(base, "nroot"),
             "follow_symlinks": "never"},
            {"prefix": "/always", "handler": "static",
             "root": os.path.join(base, "aroot"),
             "follow_symlinks": "always"},
            {"prefix": "/nocache", "handler": "static",
             "root": os.path.join(base, "ncroot"),
             "open_file_cache": "off"},
            {"prefix": "/noetag", "handler": "static",
             "root": os.path.join(base, "neroot"), "etag": False},
            {"prefix": "/", "handler": "static", "root": cls.www,
             "precompressed": ["br", "gzip"],
             "cache_control": "max-age=60",
             "mime_types": {"foo": "text/x-foo"},
             "default_type": "application/x-default",
             "max_ranges": MAX_RANGES,
             "open_file_cache": {"entries": 100,
                                 "validity": "%dms" % (VALIDITY * 1000)}},
        ]
        cls.server = kt.Server(kt.make_config(
            workers=1, routes=routes, modules={"static": {}}, **extra))
        try:
            cls.server.start()
        except BaseException:
            cls.server.kill()
            raise
        cls.worker = cls.server.ready_pids()[0]

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.clients = []
        self.assertTrue(self.server.alive(), "the server died in an earlier "
                        "test:\n" + self.server.log_tail())

    def tearDown(self):
        for c in self.clients:
            c.close()
        self.check_server_log(self.server)

    def client(self, timeout=kt.DEADLINE):
        c = self.server.client(timeout)
        self.clients.append(c)
        return c

    def get(self, target, headers=None, method="GET"):
        return self.server.request(method, target, headers=headers)

    def mtime(self, name):
        return int(os.stat(os.path.join(self.www, name)).st_mtime)

    # ---- files, HEAD, 405

    def test_file(self):
        resp = self.get("/a.txt")
        self.assertStatus(resp, 200, "GET /a.txt")
        self.assertEqual(resp.body, ALPHABET)
        self.assertEqual(resp.header("Content-Length"), "36")
        self.assertEqual(resp.header("Content-Type"),
                         "text/plain; charset=utf-8")
        self.assertEqual(resp.header("Last-Modified"),
                         http_date(self.mtime("a.txt")))
        self.assertEqual(resp.header("Accept-Ranges"), "bytes")
        self.assertEqual(resp.header("Cache-Control"), "max-age=60")
        etag = resp.header("ETag")
        self.assertTrue(etag and re.match(r'^"[0-9a-f-]+"$', etag),
                        "not a strong ETag: %r" % etag)
        self.assertEqual(self.get("/a.txt").header("ETag"), etag,
                         "the ETag changed between two requests")

    def test_empty_file(self):
        resp = self.get("/empty.txt")
        self.assertStatus(resp, 200, "GET /empty.txt")
        self.assertEqual((resp.header("Content-Length"), resp.body),
                         ("0", b""))

    def test_head(self):
        c = self.client()
        # HEAD then GET pipelined: a body after the HEAD would be read as
        # the GET's status line.
        c.send(kt.request_bytes("HEAD", "/a.txt")
               + kt.request_bytes("GET", "/a.txt"))
        head = c.read_response(method="HEAD")
        self.assertStatus(head, 200, "HEAD /a.txt")
        self.assertEqual(head.header("Content-Length"), "36")
        self.assertIsNotNone(head.header("ETag"))
        get = c.read_response()
        self.assertStatus(get, 200, "GET after HEAD")
        self.assertEqual(get.body, ALPHABET)
        self.assertEqual(get.header("ETag"), head.header("ETag"))

    def test_other_methods_405(self):
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            resp = self.get("/a.txt", method=method)
            self.assertStatus(resp, 405, method)
            self.assertEqual(resp.header("Allow"), "GET, HEAD", method)

    def test_missing_keeps_connection(self):
        c = self.client()
        resp = c.request("GET", "/missing.txt")
        self.assertStatus(resp, 404, "GET /missing.txt")
        self.assertNotIn("close", resp.tokens("Connection"))
        again = c.request("GET", "/a.txt")
        self.assertStatus(again, 200, "GET on the same connection")
        self.assertEqual(again.body, ALPHABET)

    def test_file_with_trailing_slash(self):
        self.assertStatus(self.get("/a.txt/"), 404, "GET /a.txt/")

    def test_encoded_names(self):
        resp = self.get("/sp%20ace.txt")
        self.assertStatus(resp, 200, "GET /sp%20ace.txt")
        self.assertEqual(resp.body, b"space\n")
        resp = self.get("/pct%25file.txt")
        self.assertStatus(resp, 200, "GET /pct%25file.txt")
        self.assertEqual(resp.body, b"percent\n")
        resp = self.get("/%61.txt")
        self.assertStatus(resp, 200, "GET /%61.txt")
        self.assertEqual(resp.body, ALPHABET)

    # ---- index, redirect, listing

    def test_index(self):
        resp = self.get("/")
        self.assertStatus(resp, 200, "GET /")
        self.assertEqual(resp.body, b"<h1>Kourier test</h1>\n")
        self.assertEqual(resp.header("Content-Type"),
                         "text/html; charset=utf-8")
        resp = self.get("/dir/")
        self.assertStatus(resp, 200, "GET /dir/")
        self.assertEqual(resp.body, b"dir index\n")

    def test_directory_redirect(self):
        resp = self.get("/dir")
        self.assertStatus(resp, 301, "GET /dir")
        self.assertEqual(resp.header("Location"), "/dir/")
        resp = self.get("/dir?x=1&y=%20")
        self.assertStatus(resp, 301, "GET /dir?x=1&y=%20")
        self.assertEqual(resp.header("Location"), "/dir/?x=1&y=%20")
        # never "//dir/", which a browser would read as another host
        resp = self.get("//dir")
        self.assertStatus(resp, 301, "GET //dir")
        self.assertEqual(resp.header("Location"), "/dir/")

    def test_directory_without_index(self):
        self.assertStatus(self.get("/dir2/"), 403, "GET /dir2/")

    def test_autoindex(self):
        resp = self.get("/ai/")
        self.assertStatus(resp, 200, "GET /ai/")
        self.assertEqual(resp.header("Content-Type"),
                         "text/html; charset=utf-8")
        html = resp.body.decode()
        self.assertNotIn("<script>", html)
        self.assertIn("&lt;script&gt;.txt", html)
        self.assertIn("a&amp;b.txt", html)
        self.assertIn("quote&quot;.txt", html)
        self.assertNotIn(".hidden", html)
        hrefs = re.findall(r'href="([^"]*)"', html)
        self.assertIn("%3Cscript%3E.txt", hrefs)
        self.assertIn("colon%3Ax.txt", hrefs)
        self.assertIn("sub/", hrefs)
        for href in hrefs:
            if href == "../":
                continue
            r = self.get("/ai/" + href)
            self.assertStatus(r, 200, "link %r of the listing" % href)
        self.assertStatus(self.get("/ai"), 301, "GET /ai")
        sub = self.get("/ai/sub/")
        self.assertStatus(sub, 200, "GET /ai/sub/")
        self.assertIn(b'href="inner.txt"', sub.body)
        self.assertIn(b'href="../"', sub.body)

    # ---- media types

    def test_media_types(self):
        cases = [("/style.css", "text/css; charset=utf-8"),
                 ("/img.PNG", "image/png"),
                 ("/x.foo", "text/x-foo"),
                 ("/noext", "application/x-default"),
                 ("/index.html", "text/html; charset=utf-8")]
        for target, ctype in cases:
            resp = self.get(target)
            self.assertStatus(resp, 200, target)
            self.assertEqual(resp.header("Content-Type"), ctype, target)

    # ---- conditional requests

    def test_if_none_match(self):
        etag = self.get("/a.txt").header("ETag")
        for value in (etag, "W/" + etag, "*", '"nope", ' + etag):
            for method in ("GET", "HEAD"):
                resp = self.get("/a.txt", [("If-None-Match", value)],
                                method=method)
                self.assertStatus(resp, 304, "%s If-None-Match: %s"
                                  % (method, value))
                self.assertIsNone(resp.header("Content-Length"))
                self.assertEqual(resp.header("ETag"), etag)
                self.assertEqual(resp.header("Cache-Control"), "max-age=60")
        resp = self.get("/a.txt", [("If-None-Match", '"nope"')])
        self.assertStatus(resp, 200, "If-None-Match: another tag")
        self.assertEqual(resp.body, ALPHABET)
        # the 304 goes out without a body: the connection stays in sync
        c = self.client()
        c.send(kt.request_bytes("GET", "/a.txt",
                                headers=[("If-None-Match", etag)])
               + kt.request_bytes("GET", "/a.txt"))
        self.assertStatus(c.read_response(), 304, "pipelined 304")
        self.assertEqual(c.read_response().body, ALPHABET)

    def test_if_modified_since(self):
        t = self.mtime("a.txt")
        for value in (http_date(t), rfc850(t), asctime(t),
                      http_date(t + 3600)):
            resp = self.get("/a.txt", [("If-Modified-Since", value)])
            self.assertStatus(resp, 304, "If-Modified-Since: " + value)
        for value in (http_date(t - 1), "yesterday", "Sun, 99 Nov 1994 "
                      "08:49:37 GMT"):
            resp = self.get("/a.txt", [("If-Modified-Since", value)])
            self.assertStatus(resp, 200, "If-Modified-Since: " + value)

    def test_if_none_match_takes_precedence(self):
        etag = self.get("/a.txt").header("ETag")
        t = self.mtime("a.txt")
        resp = self.get("/a.txt", [("If-None-Match", '"other"'),
                                   ("If-Modified-Since", http_date(t))])
        self.assertStatus(resp, 200, "INM mismatch beats a matching IMS")
        resp = self.get("/a.txt", [("If-None-Match", etag),
                                   ("If-Modified-Since", http_date(t - 10))])
        self.assertStatus(resp, 304, "INM match beats an older IMS")

    def test_if_match(self):
        etag = self.get("/a.txt").header("ETag")
        for value in (etag, "*", '"x", ' + etag):
            self.assertStatus(self.get("/a.txt", [("If-Match", value)]), 200,
                              "If-Match: " + value)
        for value in ('"nope"', "W/" + etag):
            self.assertStatus(self.get("/a.txt", [("If-Match", value)]), 412,
                              "If-Match: " + value)
        # If-Match is step 1: it fails before If-None-Match could give 304
        resp = self.get("/a.txt", [("If-Match", '"nope"'),
                                   ("If-None-Match", etag)])
        self.assertStatus(resp, 412, "failed If-Match before If-None-Match")

    def test_if_unmodified_since(self):
        etag = self.get("/a.txt").header("ETag")
        t = self.mtime("a.txt")
        self.assertStatus(self.get("/a.txt", [("If-Unmodified-Since",
                                               http_date(t))]),
                          200, "If-Unmodified-Since: Last-Modified")
        self.assertStatus(self.get("/a.txt", [("If-Unmodified-Since",
                                               http_date(t - 10))]),
                          412, "If-Unmodified-Since: earlier")
        # a matching If-Match makes If-Unmodified-Since irrelevant
        self.assertStatus(self.get("/a.txt", [
            ("If-Match", etag),
            ("If-Unmodified-Since", http_date(t - 10))]),
            200, "If-Match beats If-Unmodified-Since")

    def test_no_etag_route(self):
        resp = self.get("/noetag/f.txt")
        self.assertStatus(resp, 200, "GET /noetag/f.txt")
        self.assertIsNone(resp.header("ETag"))
        lm = resp.header("Last-Modified")
        self.assertStatus(self.get("/noetag/f.txt",
                                   [("If-Modified-Since", lm)]),
                          304, "If-Modified-Since without ETags")

    # ---- ranges

    def range(self, spec, extra=None):
        return self.get("/a.txt", [("Range", spec)] + (extra or []))

    def assertPartial(self, resp, first, last, what):
        self.assertStatus(resp, 206, what)
        self.assertEqual(resp.header("Content-Range"),
                         "bytes %d-%d/36" % (first, last), what)
        self.assertEqual(resp.body, ALPHABET[first:last + 1], what)
        self.assertEqual(resp.header("Content-Length"),
                         str(last - first + 1), what)
        self.assertEqual(resp.header("Content-Type"),
                         "text/plain; charset=utf-8", what)

    def test_single_ranges(self):
        self.assertPartial(self.range("bytes=0-9"), 0, 9, "bytes=0-9")
        self.assertPartial(self.range("bytes=30-"), 30, 35, "open-ended")
        self.assertPartial(self.range("bytes=-5"), 31, 35, "suffix")
        self.assertPartial(self.range("bytes=-100"), 0, 35, "long suffix")
        self.assertPartial(self.range("bytes=10-1000"), 10, 35, "clamped")
        self.assertPartial(self.range("BYTES=3-3"), 3, 3, "unit case")
        self.assertPartial(self.range("bytes=0-1, 100-200"), 0, 1,
                           "one satisfiable range of two")

    def test_unsatisfiable(self):
        for spec in ("bytes=36-", "bytes=100-200", "bytes=-0",
                     "bytes=40-50, 60-"):
            resp = self.range(spec)
            self.assertStatus(resp, 416, spec)
            self.assertEqual(resp.header("Content-Range"), "bytes */36",
                             spec)
        resp = self.get("/empty.txt", [("Range", "bytes=0-")])
        self.assertStatus(resp, 416, "a range of an empty file")
        self.assertEqual(resp.header("Content-Range"), "bytes */0")

    def test_ranges_ignored(self):
        for spec in ("bytes=5-2", "items=0-1", "bytes=abc", "bytes=",
                     "bytes=0-5,3-8",                    # overlapping
                     "bytes=0-0,2-2,4-4,6-6,8-8"):       # over max_ranges
            resp = self.range(spec)
            self.assertStatus(resp, 200, spec)
            self.assertEqual(resp.body, ALPHABET, spec)
        resp = self.get("/a.txt", [("Range", "bytes=0-1")], method="HEAD")
        self.assertStatus(resp, 200, "Range on HEAD")
        self.assertEqual(resp.header("Content-Length"), "36")

    def test_multiple_ranges(self):
        resp = self.range("bytes=0-1, 5-6,,-2")
        self.assertStatus(resp, 206, "three ranges")
        ctype = resp.header("Content-Type")
        m = re.match(r"^multipart/byteranges; boundary=(\S+)$", ctype or "")
        self.assertTrue(m, "Content-Type %r" % ctype)
        self.assertIsNone(resp.header("Content-Range"))
        self.assertEqual(resp.header("Content-Length"), str(len(resp.body)))
        parts = parse_multipart(resp.body, m.group(1))
        self.assertEqual([p[1] for p in parts], [b"01", b"56", b"yz"])
        self.assertEqual([p[0]["content-range"] for p in parts],
                         ["bytes 0-1/36", "bytes 5-6/36", "bytes 34-35/36"])
        for headers, _ in parts:
            self.assertEqual(headers["content-type"],
                             "text/plain; charset=utf-8")
        # another request gets another boundary
        other = self.range("bytes=0-1,3-4").header("Content-Type")
        self.assertNotEqual(other, ctype)

    def test_if_range(self):
        first = self.get("/a.txt")
        etag, lm = first.header("ETag"), first.header("Last-Modified")
        t = self.mtime("a.txt")
        self.assertPartial(self.range("bytes=0-3", [("If-Range", etag)]),
                           0, 3, "If-Range: current ETag")
        self.assertPartial(self.range("bytes=0-3", [("If-Range", lm)]),
                           0, 3, "If-Range: Last-Modified")
        for value in ('"old"', "W/" + etag, http_date(t - 60)):
            resp = self.range("bytes=0-3", [("If-Range", value)])
            self.assertStatus(resp, 200, "If-Range: " + value)
            self.assertEqual(resp.body, ALPHABET)
        resp = self.range("bytes=100-", [("If-Range", '"old"')])
        self.assertStatus(resp, 200, "mismatched If-Range, bad range")

    # ---- precompressed siblings

    def test_precompressed(self):
        resp = self.get("/style.css", [("Accept-Encoding", "gzip")])
        self.assertStatus(resp, 200, "gzip")
        self.assertEqual(resp.header("Content-Encoding"), "gzip")
        self.assertEqual(gzip.decompress(resp.body), b"body { color: red }\n")
        self.assertEqual(resp.header("Content-Type"),
                         "text/css; charset=utf-8")
        self.assertEqual(resp.header("Vary"), "Accept-Encoding")
        gz_etag = resp.header("ETag")

        resp = self.get("/style.css", [("Accept-Encoding", "gzip, br")])
        self.assertEqual(resp.header("Content-Encoding"), "br",
                         "br is first in the route's list")
        self.assertEqual(resp.body, b"BROTLI-BYTES")
        resp = self.get("/style.css", [("Accept-Encoding", "*")])
        self.assertEqual(resp.header("Content-Encoding"), "br")
        resp = self.get("/style.css", [("Accept-Encoding", "br;q=0, gzip")])
        self.assertEqual(resp.header("Content-Encoding"), "gzip")
        resp = self.get("/style.css", [("Accept-Encoding", "*, br;q=0.0")])
        self.assertEqual(resp.header("Content-Encoding"), "gzip")

        for ae in (None, "identity", "gzip;q=0, br;q=0", "deflate"):
            resp = self.get("/style.css",
                            [("Accept-Encoding", ae)] if ae else None)
            self.assertStatus(resp, 200, "Accept-Encoding: %s" % ae)
            self.assertIsNone(resp.header("Content-Encoding"), ae)
            self.assertEqual(resp.body, b"body { color: red }\n")
            self.assertEqual(resp.header("Vary"), "Accept-Encoding")
            self.assertNotEqual(resp.header("ETag"), gz_etag)

        resp = self.get("/plain.css", [("Accept-Encoding", "gzip, br")])
        self.assertStatus(resp, 200, "no sibling")
        self.assertIsNone(resp.header("Content-Encoding"))
        self.assertEqual(resp.body, b"p {}\n")

    # ---- staying inside the root

    def assertRefused(self, target, statuses, what=None):
        resp = self.get(target)
        self.assertIn(resp.status, statuses, "%s: %r" % (what or target,
                                                         resp))
        self.assertNotIn(SECRET.strip(), resp.body, target)
        return resp

    def test_traversal(self):
        for target in ("/../secret.txt", "/%2e%2e/secret.txt",
                       "/%2E%2E/secret.txt", "/dir/../../secret.txt",
                       "/dir/%2e%2e/%2e%2e/secret.txt", "/.%2e/secret.txt",
                       "/a.txt%00", "/a.txt%00.html", "/%00",
                       "/..\\secret.txt"):
            self.assertRefused(target, (400, 404))

    def test_encoded_slash(self):
        for target in ("/dir%2findex.html", "/dir%2Findex.html",
                       "/%2e%2e%2fsecret.txt", "/..%2Fsecret.txt"):
            mark = self.server.log_mark()
            self.assertRefused(target, (400, 404))
            self.server.wait_log(r"refused: encoded slash", since=mark)

    def test_inside_paths_still_work(self):
        for target in ("/./a.txt", "/dir/../a.txt", "/dir/%2e%2e/a.txt",
                       "//a.txt", "/dir/./../a.txt"):
            resp = self.get(target)
            self.assertStatus(resp, 200, target)
            self.assertEqual(resp.body, ALPHABET, target)

    def test_symlink_escape(self):
        for target in ("/escape", "/abs-escape", "/dirlink/file.txt"):
            mark = self.server.log_mark()
            self.assertRefused(target, (403, 404))
            self.server.wait_log(r"refused: symbolic link out of the root",
                                 since=mark)
        for target in ("/inlink", "/abs-in"):
            resp = self.get(target)
            self.assertStatus(resp, 200, target + " (a link inside the root)")
            self.assertEqual(resp.body, ALPHABET)

    def test_follow_symlinks_never(self):
        self.assertEqual(self.get("/never/real.txt").body, b"real\n")
        for target in ("/never/link.txt", "/never/linkdir/real.txt"):
            mark = self.server.log_mark()
            self.assertRefused(target, (403,))
            self.server.wait_log(r"refused: symbolic link", since=mark)

    def test_follow_symlinks_always(self):
        resp = self.get("/always/out.txt")
        self.assertStatus(resp, 200, "follow_symlinks: always")
        self.assertEqual(resp.body, SECRET)

    def test_not_a_regular_file(self):
        self.assertStatus(self.get("/fifo"), 403, "GET /fifo")
        # the worker did not block on the FIFO
        self.assertStatus(self.get("/a.txt"), 200, "GET after /fifo")

    def test_permission_denied(self):
        if not self.unprivileged:
            self.skipTest("workers run as root: no file is unreadable")
        self.assertStatus(self.get("/locked.txt"), 403, "GET /locked.txt")

    # ---- large files and slow clients

    def test_sparse_big_file(self):
        head = self.get("/big.bin", method="HEAD")
        self.assertStatus(head, 200, "HEAD /big.bin")
        self.assertEqual(head.header("Content-Length"), str(BIG))
        tail = self.get("/big.bin", [("Range", "bytes=-3")])
        self.assertStatus(tail, 206, "the last 3 bytes")
        self.assertEqual(tail.header("Content-Range"),
                         "bytes %d-%d/%d" % (BIG - 3, BIG - 1, BIG))
        self.assertEqual(tail.body, b"END")

        c = self.client()
        c.send(kt.request_bytes("GET", "/big.bin"))
        head = b""
        while b"\r\n\r\n" not in head:
            data = c.sock.recv(65536)
            self.assertTrue(data, "connection closed before the head")
            head += data
        head, _, first = head.partition(b"\r\n\r\n")
        self.assertIn(b"\r\nContent-Length: %d\r\n" % BIG, head)
        before = vm_rss_kib(self.worker)
        got, peak = len(first), before
        want = 256 << 20
        buf = bytearray(1 << 20)
        while got < want:
            n = c.sock.recv_into(buf)
            self.assertTrue(n, "connection closed after %d bytes" % got)
            got += n
            if got % (16 << 20) < n:
                peak = max(peak, vm_rss_kib(self.worker))
        peak = max(peak, vm_rss_kib(self.worker))
        self.assertLess(peak - before, 8 << 10,
                        "worker RSS grew from %d to %d KiB while sending "
                        "%d MiB" % (before, peak, got >> 20))

    # ---- the open-file cache

    def replace(self, name, data):
        path = os.path.join(self.www, name)
        tmp = path + ".tmp"
        write(tmp, data)
        os.rename(tmp, path)

    def test_cache_revalidation(self):
        first = self.get("/changing.txt")
        self.assertEqual(first.body, b"version 1\n")
        self.replace("changing.txt", "version two\n")
        started = time.monotonic()

        def changed():
            r = self.get("/changing.txt")
            return r if r.body == b"version two\n" else None

        resp = kt.wait_until(changed, what="the new version to be served")
        self.assertNotEqual(resp.header("ETag"), first.header("ETag"))
        self.assertEqual(resp.header("Content-Length"), "12")
        self.assertLess(time.monotonic() - started, VALIDITY + 5)

        # changed in place (same inode): a new size and mtime, a new tag
        with open(os.path.join(self.www, "changing.txt"), "ab") as f:
            f.write(b"appended\n")
        os.utime(os.path.join(self.www, "changing.txt"),
                 (time.time() + 5, time.time() + 5))
        resp2 = kt.wait_until(
            lambda: (lambda r: r if r.body.endswith(b"appended\n") else None)
            (self.get("/changing.txt")), what="the appended version")
        self.assertNotEqual(resp2.header("ETag"), resp.header("ETag"))

        os.unlink(os.path.join(self.www, "changing.txt"))
        kt.wait_until(lambda: self.get("/changing.txt").status == 404,
                      what="the deleted file to be gone")
        self.replace("changing.txt", "version 1\n")

    def test_no_cache_route(self):
        path = os.path.join(self.base, "ncroot", "nocache", "f.txt")
        self.assertEqual(self.get("/nocache/f.txt").body, b"one\n")
        tmp = path + ".tmp"
        write(tmp, "two!\n")
        os.rename(tmp, path)
        self.assertEqual(self.get("/nocache/f.txt").body, b"two!\n")


class TestStaticSlowClients(kt.ServerTestCase):
    """send_timeout with bodies sent by sendfile: a client that stops
    reading is dropped, one that reads slowly but steadily is not."""

    @classmethod
    def setUpClass(cls):
        cls.server = kt.Server(kt.make_config(
            workers=1, modules={"static": {}},
            routes=[{"prefix": "/", "handler": "static", "root": Tree.www}],
            limits={"send_timeout": "%dms" % (SEND_TIMEOUT * 1000)},
            **unprivileged_user()))
        try:
            cls.server.start()
        except BaseException:
            cls.server.kill()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def tearDown(self):
        self.check_server_log(self.server)

    def connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", self.server.port))
        return s

    def test_stalled_client_dropped(self):
        s = self.connect()
        mark = self.server.log_mark()
        started = time.monotonic()
        s.sendall(kt.request_bytes("GET", "/big.bin"))
        # never read: the server fills the socket and then gives up
        self.server.wait_log(r"send timed out", since=mark)
        self.assertGreaterEqual(time.monotonic() - started,
                                SEND_TIMEOUT * 0.9)
        port = s.getsockname()[1]
        kt.wait_until(lambda: (kt._tcp_entry(self.server.port, port)
                               or [0, 0, 0, "07"])[3] != "01",
                      what="the server to drop the connection")

    def test_steady_client_kept(self):
        s = self.connect()
        s.settimeout(kt.DEADLINE)
        mark = self.server.log_mark()
        s.sendall(kt.request_bytes("GET", "/big.bin"))
        # Reading for 2.5 send timeouts, paced at about 16 MB/s: the
        # timeout counts from the last progress, not from the response's
        # start. (Much slower would be idle from the server's side: the
        # kernel reports the socket writable only once a third of its
        # send buffer, megabytes on loopback, is free.)
        deadline = time.monotonic() + 2.5 * SEND_TIMEOUT
        got = 0
        buf = bytearray(256 << 10)
        while time.monotonic() < deadline:
            n = s.recv_into(buf)
            self.assertTrue(n, "the server closed a connection that was "
                            "reading steadily, after %d bytes:\n%s"
                            % (got, self.server.log_tail(5)))
            got += n
            time.sleep(n / 16e6)   # the pace of the client under test
        self.assertFalse(any("send timed out" in line for line in
                             self.server.lines[mark:]),
                         self.server.log_tail(5))


class TestStaticConfig(kt.ServerTestCase):
    """Route keys the module refuses, found by `kourier -t`."""

    def check(self, route, expect):
        cfg = kt.make_config(routes=[dict({"prefix": "/",
                                           "handler": "static"}, **route)],
                             modules={"static": {}})
        server = kt.Server(cfg)
        try:
            r = server.run_command("-t")
        finally:
            server.kill()
        out = r.stdout + r.stderr
        self.assertNotEqual(r.returncode, 0, "accepted %r:\n%s"
                            % (route, out))
        self.assertRegex(out, expect)

    def test_refused(self):
        d = tempfile.mkdtemp(prefix="kourier-static-conf-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        f = os.path.join(d, "file")
        write(f, "x")
        self.check({}, r'missing required key "root"')
        self.check({"root": os.path.join(d, "nope")}, r"root: .*nope")
        self.check({"root": f}, r"not a directory")
        self.check({"root": d, "follow_symlinks": "sometimes"},
                   r"follow_symlinks: expected never")
        self.check({"root": d, "precompressed": ["zstd"]}, r"precompressed")
        self.check({"root": d, "index": ["a/b.html"]}, r"index")
        self.check({"root": d, "max_ranges": -1}, r"max_ranges")
        self.check({"root": d, "open_file_cache": {"size": 3}},
                   r"open_file_cache: unknown key")
        self.check({"root": d, "open_file_cache": "lots"},
                   r"open_file_cache: expected")
        self.check({"root": d, "mime_types": {"a/b": "text/plain"}},
                   r"mime_types")

    def test_quick_start_config(self):
        """conf/kourier.yaml serves docs/site/ with static: `kourier -t`
        accepts it from the source tree, where ./quickstart runs it."""
        binary, _, src = kt.paths()
        r = subprocess.run([binary, "-t", "-c", "conf/kourier.yaml"],
                           cwd=src, capture_output=True, text=True,
                           timeout=kt.DEADLINE)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(src, "docs", "site", "index.html")) as f:
            page = f.read()
        for link in ("/hello", "/echo", "/delay"):
            self.assertIn('href="%s"' % link, page)


if __name__ == "__main__":
    kt.main()
