"""HTTPS listeners: curl over TLS 1.2 and 1.3 verifying a certificate chain,
ALPN (http/1.1 chosen, h2 alone refused with the alert), SNI with exact
and wildcard names, session resumption across workers, reloads and ticket
key rotations, plain HTTP, garbage and a stalled or truncated handshake on
a TLS port, close_notify, pipelining, 10 MB responses from memory and from
a file (with a client that stalls), `kourier -t` on good, expired,
mismatched and unreadable certificates, and a reload with a new
certificate that leaves existing connections alone.

Certificates are made at test time with the openssl command: a root CA,
an intermediate CA, ECDSA and RSA leaves, a wildcard, an expired one."""

import hashlib
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402

OPENSSL = shutil.which("openssl")
CERTS = None            # directory of the generated files
BIG = 10 * 1024 * 1024
HANDSHAKE_TIMEOUT = "1s"

# ---------------------------------------------------------------- certs


def _openssl(*args):
    r = subprocess.run([OPENSSL] + list(args), capture_output=True,
                       text=True, timeout=kt.DEADLINE)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed:\n%s"
                             % (" ".join(args), r.stderr))


def _ext(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def _leaf(d, name, key_args, issuer, sans, days="30"):
    """name.key, name.pem (the leaf alone) signed by issuer."""
    key, csr = os.path.join(d, name + ".key"), os.path.join(d, name + ".csr")
    pem = os.path.join(d, name + ".pem")
    _openssl("req", "-new", "-newkey", *key_args, "-nodes", "-subj",
             "/CN=%s" % sans[0], "-keyout", key, "-out", csr)
    ext = _ext(os.path.join(d, name + ".ext"),
               "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,"
               "keyEncipherment\nextendedKeyUsage=serverAuth\n"
               "subjectAltName=%s\n"
               % ",".join("DNS:" + s for s in sans))
    _openssl("x509", "-req", "-in", csr, "-CA", issuer + ".pem", "-CAkey",
             issuer + ".key", "-CAcreateserial", "-days", days, "-extfile",
             ext, "-out", pem)
    return pem, key


def make_certs():
    d = tempfile.mkdtemp(prefix="kourier-tls-")
    ec = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    rsa = ["rsa:2048"]
    root = os.path.join(d, "root")
    _openssl("req", "-x509", "-newkey", *ec, "-nodes", "-days", "30",
             "-subj", "/CN=Kourier test root", "-keyout", root + ".key",
             "-out", root + ".pem")
    inter = os.path.join(d, "inter")
    _openssl("req", "-new", "-newkey", *ec, "-nodes", "-subj",
             "/CN=Kourier test intermediate", "-keyout", inter + ".key",
             "-out", inter + ".csr")
    ext = _ext(os.path.join(d, "inter.ext"),
               "basicConstraints=critical,CA:TRUE\n"
               "keyUsage=critical,keyCertSign,cRLSign\n")
    _openssl("x509", "-req", "-in", inter + ".csr", "-CA", root + ".pem",
             "-CAkey", root + ".key", "-CAcreateserial", "-days", "30",
             "-extfile", ext, "-out", inter + ".pem")
    # a.test: ECDSA under the intermediate; its file is the chain
    pem, _ = _leaf(d, "a", ec, inter, ["a.test"])
    with open(pem) as f, open(inter + ".pem") as g:
        chain = f.read() + g.read()
    with open(os.path.join(d, "a-chain.pem"), "w") as f:
        f.write(chain)
    _leaf(d, "b", rsa, root, ["b.test"])               # RSA
    _leaf(d, "w", ec, root, ["*.w.test"])              # wildcard
    _leaf(d, "expired", ec, root, ["old.test"], days="-1")
    _leaf(d, "r1", ec, root, ["r.test"])               # reload: before
    _leaf(d, "r2", ec, root, ["r.test"])               # reload: after
    with open(os.path.join(d, "junk.pem"), "w") as f:
        f.write("this is not a certificate\n")
    return d


def cert(name):
    return os.path.join(CERTS, name)


def der(name):
    """The DER bytes of a PEM certificate file's first certificate."""
    with open(cert(name)) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def setUpModule():
    global CERTS
    if OPENSSL is None:
        raise unittest.SkipTest("no openssl command")
    CERTS = make_certs()


def tearDownModule():
    if CERTS:
        shutil.rmtree(CERTS, ignore_errors=True)


# ---------------------------------------------------------------- clients


def client_context(verify=True, version=None, alpn=("http/1.1",)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cert("root.pem"))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def s_client(port, *args, request=None, timeout=kt.DEADLINE):
    """openssl s_client against 127.0.0.1:port; returns (status, output).
    With `request` it is sent and s_client waits for the server to close
    (-ign_eof), so session tickets sent after the handshake are read."""
    cmd = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port]
    if request is not None:
        cmd.append("-ign_eof")
    r = subprocess.run(cmd + list(args), input=request or b"",
                       capture_output=True, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).decode("latin-1")


def close_request(host="a.test"):
    return kt.request_bytes("GET", "/hello", host=host,
                            headers=[("Connection", "close")])


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", str(int(kt.DEADLINE))]
                       + list(args), capture_output=True, timeout=kt.DEADLINE
                       + 10)
    return r.returncode, r.stdout, r.stderr.decode("latin-1")


def stalled_download(test, port, path, server_name="a.test"):
    """A TLS client that sends GET path and
    returns once the server is blocked on the full socket (its send queue
    holds bytes the client has not read)."""
    # the default receive buffer: a small fixed one makes loopback TCP drop
    # segments and back off for seconds; unread, this one stays far below
    # the 10 MB a test sends
    sock = socket.create_connection(("127.0.0.1", port), timeout=kt.DEADLINE)
    local = sock.getsockname()[1]
    c = kt.Client.__new__(kt.Client)
    c.port, c.timeout, c.buf = port, kt.DEADLINE, b""
    c.eof = c.reset = c.ragged_eof = False
    c.sock = client_context().wrap_socket(sock, server_hostname=server_name,
                                          suppress_ragged_eofs=False)
    test.addCleanup(c.close)
    c.send(kt.request_bytes("GET", path, host=server_name))

    def blocked():
        fields = kt._tcp_entry(port, local)
        return fields is not None and int(fields[4].split(":")[0], 16) > 0
    kt.wait_until(blocked, what="the server to fill the socket")
    return c


def big_file(d):
    data = bytes(((i * 7) ^ (i >> 11)) & 0xff for i in range(BIG))
    os.makedirs(os.path.join(d, "files"), exist_ok=True)
    with open(os.path.join(d, "files", "big.bin"), "wb") as f:
        f.write(data)
    return data


def tls_listener(**extra):
    """The main TLS listener: a.test (ECDSA chain) by default, b.test
    (RSA) and *.w.test by SNI."""
    tls = {"certificate": cert("a-chain.pem"), "key": cert("a.key"),
           "certificates": [
               {"server_names": ["b.test"], "certificate": cert("b.pem"),
                "key": cert("b.key")},
               {"server_names": ["*.w.test"], "certificate": cert("w.pem"),
                "key": cert("w.key")}]}
    tls.update(extra)
    return {"address": "127.0.0.1:0", "tls": tls}


# ---------------------------------------------------------------- tests


class TLSServer(kt.ServerTestCase):
    """One server for the tests that do not stop or reload it: listeners
    [TLS, plain, TLS 1.2 only], two workers."""

    @classmethod
    def setUpClass(cls):
        cls.www = tempfile.mkdtemp(prefix="kourier-tls-www-")
        cls.big = big_file(cls.www)
        cfg = kt.make_config(
            workers=2,
            listen=[tls_listener(), "127.0.0.1:0",
                    {"address": "127.0.0.1:0",
                     "tls": {"certificate": cert("b.pem"),
                             "key": cert("b.key"),
                             "protocols": ["TLSv1.2"],
                             "ciphers": "ECDHE-RSA-AES128-GCM-SHA256"}}],
            modules={"hello": {"path": kt.plugin_path("hello")},
                     "echo": {"path": kt.plugin_path("echo")},
                     "static": {}, "metrics": {}},
            routes=[{"path": "/hello", "handler": "hello"},
                    {"path": "/echo", "handler": "echo", "max_body": "16m"},
                    {"prefix": "/files", "handler": "static",
                     "root": cls.www},
                    {"path": "/metrics", "handler": "metrics"}],
            limits={"tls_handshake_timeout": HANDSHAKE_TIMEOUT,
                    "header_timeout": "5s"})
        cls.server = kt.Server(cfg)
        try:
            cls.server.start()
            kt.wait_until(lambda: len(cls.server.ports()) >= 3,
                          what="three listeners:\n" + cls.server.log_tail())
        except BaseException:
            cls.server.kill()
            shutil.rmtree(cls.www, ignore_errors=True)
            raise
        cls.tls_port, cls.plain_port, cls.tls12_port = cls.server.ports()[:3]

    @classmethod
    def tearDownClass(cls):
        # a graceful stop: leak reports are printed as workers exit
        cls.server.stop()
        shutil.rmtree(cls.www, ignore_errors=True)
        reports = cls.server.sanitizer_reports()
        if reports:
            raise AssertionError("sanitizer reports:\n" + "\n".join(reports))

    def setUp(self):
        self.assertTrue(self.server.alive(), "the server died in an earlier "
                        "test:\n" + self.server.log_tail())

    def tearDown(self):
        self.check_server_log(self.server)

    def tls_client(self, port=None, server_name="a.test", ctx=None):
        c = kt.Client(port or self.tls_port, tls=ctx or client_context(),
                      server_name=server_name)
        self.addCleanup(c.close)
        return c

    def get_hello(self, c, host="a.test", **kw):
        resp = c.request("GET", "/hello", host=host, **kw)
        self.assertStatus(resp, 200, "GET /hello over TLS")
        self.assertEqual(resp.body, b"Hello, World!")
        return resp

    def tls_ok_after(self, what):
        """Another connection is served: nothing was disturbed."""
        c = self.tls_client()
        self.get_hello(c)
        self.assertTrue(self.server.alive(), "server died after " + what)

    # -- protocol versions, certificates

    def test_curl_tls13_verifies_the_chain(self):
        rc, out, err = curl("--cacert", cert("root.pem"), "--tlsv1.3", "-v",
                            "--resolve", "a.test:%d:127.0.0.1"
                            % self.tls_port,
                            "https://a.test:%d/hello" % self.tls_port)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, b"Hello, World!")
        self.assertIn("SSL connection using TLSv1.3", err)
        self.assertIn("ALPN: server accepted http/1.1", err)

    def test_curl_tls12_rsa(self):
        rc, out, err = curl("--cacert", cert("root.pem"), "--tlsv1.2",
                            "--tls-max", "1.2", "-v", "--resolve",
                            "b.test:%d:127.0.0.1" % self.tls_port,
                            "https://b.test:%d/hello" % self.tls_port)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, b"Hello, World!")
        self.assertRegex(err, r"SSL connection using TLSv1\.2 / ECDHE-RSA-")

    def test_protocols_and_ciphers(self):
        """The TLS 1.2-only listener refuses 1.3 and uses its one cipher."""
        rc, out, err = curl("-k", "--tlsv1.3",
                            "https://127.0.0.1:%d/hello" % self.tls12_port)
        self.assertNotEqual(rc, 0, "TLS 1.3 accepted by a TLS 1.2 listener")
        c = self.tls_client(self.tls12_port, "b.test",
                            client_context(verify=False))
        self.assertEqual(c.sock.version(), "TLSv1.2")
        self.assertEqual(c.sock.cipher()[0], "ECDHE-RSA-AES128-GCM-SHA256")
        self.get_hello(c, host="b.test")
        self.tls_ok_after("a refused TLS 1.3 client")

    # -- ALPN

    def test_alpn(self):
        rc, out = s_client(self.tls_port, "-servername", "a.test", "-alpn",
                           "h2,http/1.1", request=close_request())
        self.assertIn("ALPN protocol: http/1.1", out)
        self.assertIn("Hello, World!", out)
        # h2 alone: the no_application_protocol alert (120), not a hang
        rc, out = s_client(self.tls_port, "-servername", "a.test", "-alpn",
                           "h2", request=close_request())
        self.assertNotEqual(rc, 0)
        self.assertRegex(out, r"no application protocol|alert number 120")
        self.assertNotIn("Hello, World!", out)
        # no ALPN at all is fine
        rc, out = s_client(self.tls_port, "-servername", "a.test",
                           request=close_request())
        self.assertIn("No ALPN negotiated", out)
        self.assertIn("Hello, World!", out)

    # -- SNI

    def test_sni(self):
        for name, want in (("a.test", "a.pem"), ("b.test", "b.pem"),
                           ("B.Test", "b.pem"), ("x.w.test", "w.pem"),
                           ("unknown.test", "a.pem")):
            verify = name.lower() != "unknown.test"
            c = self.tls_client(server_name=name,
                                ctx=client_context(verify=verify))
            self.assertEqual(c.sock.getpeercert(binary_form=True),
                             der(want), "certificate for SNI %s" % name)
            self.get_hello(c, host=name)
        # no SNI (an IP address) gets the default certificate
        c = self.tls_client(server_name=None,
                            ctx=client_context(verify=False))
        self.assertEqual(c.sock.getpeercert(binary_form=True), der("a.pem"))
        # a.test's chain carries the intermediate: verification above used
        # only the root, so the server must have sent it

    # -- resumption

    def test_resumption(self):
        sess = os.path.join(self.server.dir, "sess-%d.pem" % os.getpid())
        for proto in ("-tls1_3", "-tls1_2"):
            rc, out = s_client(self.tls_port, proto, "-servername", "a.test",
                               "-sess_out", sess, request=close_request())
            self.assertIn("Hello, World!", out)
            self.assertRegex(out, r"\nNew, ")
            # two workers: enough connections that both see the ticket
            for i in range(8):
                rc, out = s_client(self.tls_port, proto, "-servername",
                                   "a.test", "-sess_in", sess,
                                   request=close_request())
                self.assertRegex(out, r"\nReused, ", "%s resumption %d"
                                 % (proto, i))
                self.assertIn("Hello, World!", out)

    # -- what is not TLS

    def test_plain_http_on_tls_port(self):
        with kt.Client(self.tls_port) as c:
            resp = c.request("GET", "/hello")
            self.assertStatus(resp, 400)
            self.assertIn(b"https://", resp.body)
            self.assertEqual(resp.header("Connection"), "close")
            self.assertEqual(c.read_until_close(), b"")
        self.tls_ok_after("plain HTTP on the TLS port")

    def test_garbage_on_tls_port(self):
        with kt.Client(self.tls_port) as c:
            c.send(bytes(range(256)) * 8)
            data = c.read_until_close()
            # at most a TLS alert record (type 21), never HTTP
            self.assertTrue(data == b"" or data[:1] == b"\x15", data[:40])
        self.tls_ok_after("garbage")

    def test_stalled_and_truncated_handshakes_time_out(self):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_context(verify=False).wrap_bio(
            incoming, outgoing, server_hostname="a.test")
        with self.assertRaises(ssl.SSLWantReadError):
            obj.do_handshake()
        hello = outgoing.read()
        self.assertGreater(len(hello), 60)
        mark = self.server.log_mark()
        silent = kt.Client(self.tls_port)
        truncated = kt.Client(self.tls_port)
        self.addCleanup(silent.close)
        self.addCleanup(truncated.close)
        truncated.send(hello[:len(hello) // 2])
        # meanwhile a full handshake is served at once
        self.tls_ok_after("stalled handshakes")
        for c in (silent, truncated):
            self.assertEqual(c.read_until_close(), b"")
        self.server.wait_log("TLS handshake not completed in time", mark)

    def test_handshake_counters(self):
        def counts():
            resp = kt.Client(self.plain_port).request("GET", "/metrics")
            self.assertStatus(resp, 200)
            m = dict(re.findall(r'kourier_tls_handshakes_total\{result="'
                                r'(\w+)"\} (\d+)', resp.body.decode()))
            return int(m["ok"]), int(m["error"])
        ok0, err0 = counts()
        self.tls_ok_after("nothing")
        with kt.Client(self.tls_port) as c:
            c.send(b"\x16\x03\x01\x00\x05hello")     # a broken record
            c.read_until_close()
        ok1, err1 = kt.wait_until(
            lambda: (lambda v: v if v[0] > ok0 and v[1] > err0 else None)(
                counts()), what="both TLS handshake counters to move")
        self.assertGreaterEqual(ok1, ok0 + 1)
        self.assertGreaterEqual(err1, err0 + 1)

    # -- closing

    def test_close_notify(self):
        """Connection: close, and an error response (lingering close):
        both end with close_notify, not a bare FIN."""
        c = self.tls_client()
        self.get_hello(c, headers=[("Connection", "close")])
        self.assertEqual(c.read_until_close(), b"")
        self.assertFalse(c.ragged_eof, "no close_notify after the response")

        c = self.tls_client()
        c.send(b"GET /hello HTTP/1.1\r\nHost: a.test\r\nBad Header\r\n\r\n")
        resp = c.read_response()
        self.assertStatus(resp, 400)
        self.assertEqual(c.read_until_close(), b"")
        self.assertFalse(c.ragged_eof, "no close_notify after an error")

    # -- what plain TCP does, over TLS

    def test_pipelining(self):
        c = self.tls_client()
        n = 64
        c.send(b"".join(kt.request_bytes("GET", "/echo?n=%d" % i,
                                         host="a.test") for i in range(n)))
        for i in range(n):
            resp = c.read_response()
            self.assertStatus(resp, 200, "pipelined response %d" % i)
            self.assertEqual(kt.decode_echo(resp)["uri"],
                             b"/echo?n=%d" % i)
        self.get_hello(c)

    def test_large_body_both_ways(self):
        body = os.urandom(7 * 1024 * 1024)     # 9.3 MB of JSON back
        c = self.tls_client()
        resp = c.request("POST", "/echo", host="a.test", body=body)
        self.assertStatus(resp, 200)
        self.assertGreater(len(resp.body), BIG * 9 // 10)
        self.assertEqual(kt.decode_echo(resp)["body"], body)
        self.get_hello(c)

    def test_large_file_with_a_stalled_reader(self):
        """10 MB from a file (read and encrypted a record at a time): the
        client stops reading until the server is blocked on a full socket,
        then reads on; then a range from the middle of the file."""
        c = stalled_download(self, self.tls_port, "/files/big.bin")
        resp = c.read_response()
        self.assertStatus(resp, 200)
        self.assertEqual(len(resp.body), BIG)
        self.assertEqual(hashlib.sha256(resp.body).digest(),
                         hashlib.sha256(self.big).digest())
        resp = c.request("GET", "/files/big.bin", host="a.test",
                         headers=[("Range", "bytes=3000001-4000000")])
        self.assertStatus(resp, 206)
        self.assertEqual(resp.body, self.big[3000001:4000001])


class TLSConfigTest(kt.ServerTestCase):
    """`kourier -t` and start-up with good and bad certificates."""

    def config(self, tls, **extra):
        cfg = kt.make_config(listen=[{"address": "127.0.0.1:0",
                                      "tls": tls}], **extra)
        server = kt.Server(cfg)
        self.addCleanup(server.kill)
        return server

    def check(self, tls):
        r = self.config(tls).run_command("-t")
        return r.returncode, r.stderr

    def assertRefused(self, tls, *patterns):
        rc, err = self.check(tls)
        self.assertEqual(rc, 1, err)
        self.assertRegex(err, r"kourier\.yaml:\d+:\d+: tls: ")
        for p in patterns:
            self.assertIn(p, err)
        return err

    def test_good(self):
        rc, err = self.check(tls_listener()["tls"])
        self.assertEqual(rc, 0, err)
        self.assertIn("test is successful", err)

    def test_expired_is_a_warning(self):
        rc, err = self.check({"certificate": cert("expired.pem"),
                              "key": cert("expired.key")})
        self.assertEqual(rc, 0, err)
        self.assertRegex(err, r"\[warn\].*tls: certificate %s expired on "
                         r"\d{4}-" % re.escape(cert("expired.pem")))

    def test_mismatched_key(self):
        # same key type, and another key type
        self.assertRefused({"certificate": cert("w.pem"),
                            "key": cert("a.key")},
                           "key %s does not match certificate %s"
                           % (cert("a.key"), cert("w.pem")),
                           "key values mismatch")
        self.assertRefused({"certificate": cert("b.pem"),
                            "key": cert("a.key")},
                           "key %s does not match certificate %s"
                           % (cert("a.key"), cert("b.pem")))
        # in an SNI entry too
        self.assertRefused(tls_listener(certificates=[
            {"server_names": ["b.test"], "certificate": cert("b.pem"),
             "key": cert("w.key")}])["tls"], "does not match", cert("w.key"))

    def test_unreadable_files(self):
        self.assertRefused({"certificate": cert("missing.pem"),
                            "key": cert("a.key")},
                           "cannot open certificate %s: No such file or "
                           "directory" % cert("missing.pem"))
        self.assertRefused({"certificate": cert("a.pem"),
                            "key": cert("missing.key")},
                           "cannot open key %s" % cert("missing.key"))
        self.assertRefused({"certificate": cert("junk.pem"),
                            "key": cert("a.key")},
                           "cannot load certificate %s: no start line"
                           % cert("junk.pem"))
        self.assertRefused({"certificate": cert("a.pem"),
                            "key": cert("junk.pem")},
                           "cannot load key %s" % cert("junk.pem"))

    def test_bad_openssl_lists(self):
        good = {"certificate": cert("a.pem"), "key": cert("a.key")}
        self.assertRefused(dict(good, ciphers="NOPE-NOTHING"),
                           "ciphers", "NOPE-NOTHING")
        self.assertRefused(dict(good, ciphersuites=["TLS_AES_128_GCM_SHA256",
                                                    "TLS_NOPE"]),
                           "unknown TLS 1.3 suite \"TLS_NOPE\"")
        self.assertRefused(dict(good, groups=["X25519", "nope"]), "groups")

    def test_start_refuses_a_bad_certificate(self):
        server = self.config({"certificate": cert("b.pem"),
                              "key": cert("a.key")})
        proc = subprocess.run(server.command("-F"), cwd=server.cwd,
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=kt.DEADLINE)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("does not match certificate", proc.stderr)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to drop privileges")
    def test_key_readable_by_root_only(self):
        """Workers read keys before dropping to `user`."""
        key = os.path.join(CERTS, "private.key")
        shutil.copy(cert("a.key"), key)
        os.chmod(key, 0o600)
        pwd.getpwnam("nobody")
        server = self.config({"certificate": cert("a-chain.pem"),
                              "key": key}, user="nobody")
        self.addCleanup(server.stop)
        server.start()
        c = kt.Client(server.port, tls=client_context(), server_name="a.test")
        with c:
            resp = c.request("GET", "/hello", host="a.test")
            self.assertStatus(resp, 200)


class TLSReloadTest(kt.ServerTestCase):
    """Each test has its own server: reloads, rotations."""

    def start(self, workers=2, cert_file=None, key_file=None, **extra):
        self.cert_file = cert_file or cert("a-chain.pem")
        self.key_file = key_file or cert("a.key")
        self.extra = extra
        self.workers = workers
        self.server_dir = tempfile.mkdtemp(prefix="kourier-tls-www-")
        self.addCleanup(shutil.rmtree, self.server_dir, True)
        self.server = kt.Server(self.cfg())
        self.addCleanup(self.server.kill)
        self.addCleanup(self.check_server_log, self.server)
        self.addCleanup(self.server.stop)
        self.server.start()
        return self.server

    def cfg(self):
        return kt.make_config(
            workers=self.workers,
            listen=[{"address": "127.0.0.1:0",
                     "tls": {"certificate": self.cert_file,
                             "key": self.key_file}}],
            modules={"hello": {"path": kt.plugin_path("hello")},
                     "static": {}},
            routes=[{"path": "/hello", "handler": "hello"},
                    {"prefix": "/files", "handler": "static",
                     "root": self.server_dir}], **self.extra)

    def reload(self):
        mark = self.server.log_mark()
        rc, err = self.server.reload(self.cfg())
        self.assertEqual(rc, 0, err)
        self.server.wait_workers(self.workers, since=mark)

    def resume(self, sess, save=False):
        rc, out = s_client(self.server.port, "-servername", "a.test",
                           "-sess_out" if save else "-sess_in", sess,
                           request=close_request())
        self.assertIn("Hello, World!", out)
        return "Reused" if re.search(r"\nReused, ", out) else "New"

    def test_reload_with_a_new_certificate(self):
        """Renewed files at the same paths: new connections get the new
        certificate; a download in progress on the old one finishes."""
        d = tempfile.mkdtemp(prefix="kourier-tls-reload-")
        self.addCleanup(shutil.rmtree, d, True)
        pem, key = os.path.join(d, "site.pem"), os.path.join(d, "site.key")
        shutil.copy(cert("r1.pem"), pem)
        shutil.copy(cert("r1.key"), key)
        self.start(cert_file=pem, key_file=key)
        data = big_file(self.server_dir)
        old = stalled_download(self, self.server.port, "/files/big.bin",
                               "r.test")
        self.assertEqual(old.sock.getpeercert(True), der("r1.pem"))

        shutil.copy(cert("r2.pem"), pem)
        shutil.copy(cert("r2.key"), key)
        self.reload()
        with kt.Client(self.server.port, tls=client_context(),
                       server_name="r.test") as c:
            self.assertEqual(c.sock.getpeercert(True), der("r2.pem"))
            self.assertStatus(c.request("GET", "/hello", host="r.test"), 200)
        resp = old.read_response()
        self.assertStatus(resp, 200)
        self.assertEqual(len(resp.body), BIG)
        self.assertTrue(resp.body == data, "the download was corrupted")

    def test_reload_with_a_broken_certificate_is_refused(self):
        self.start()
        self.cert_file = cert("b.pem")      # a.key does not match it
        rc, err = self.server.reload(self.cfg())
        self.assertNotEqual(rc, 0)
        self.assertIn("does not match certificate", err)
        with kt.Client(self.server.port, tls=client_context(),
                       server_name="a.test") as c:
            self.assertEqual(c.sock.getpeercert(True), der("a.pem"))

    def test_resumption_survives_reload(self):
        """Ticket keys live in shared memory: workers of the next
        generation, which never saw the ticket issued, resume it."""
        self.start()
        sess = os.path.join(self.server.dir, "sess.pem")
        self.assertEqual(self.resume(sess, save=True), "New")
        self.assertEqual(self.resume(sess), "Reused")
        old = set(self.server.worker_pids())
        self.reload()
        kt.wait_until(lambda: not (set(self.server.worker_pids()) & old),
                      what="the old workers to exit")
        for _ in range(4):
            self.assertEqual(self.resume(sess), "Reused")

    def test_ticket_key_rotation(self):
        """A ticket resumes after one rotation (its key is the previous
        one) and not after two (its key is gone)."""
        self.start(workers=1, tls_ticket_rotation="3s")
        sess = os.path.join(self.server.dir, "sess.pem")
        mark = self.server.log_mark()
        self.assertEqual(self.resume(sess, save=True), "New")
        self.server.wait_log("TLS session ticket keys rotated", mark)
        mark = self.server.log_mark()
        self.assertEqual(self.resume(sess), "Reused")
        self.server.wait_log("TLS session ticket keys rotated", mark)
        self.assertEqual(self.resume(sess), "New")


if __name__ == "__main__":
    kt.main()
