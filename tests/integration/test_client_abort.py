"""Clients that leave early: the server notices at once instead of waiting
for a timeout, and the handler's work is cancelled."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402

BODY_TIMEOUT = 10     # seconds; every check below must be much faster
DELAY = "10s"


class TestClientAbort(kt.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = kt.Server(kt.make_config(
            limits={"body_timeout": "%ds" % BODY_TIMEOUT},
            routes=[{"path": "/echo", "handler": "echo"},
                    {"path": "/delay", "handler": "delay",
                     "delay": DELAY}]))
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def tearDown(self):
        self.check_server_log(self.server)

    def closed_within(self, request, seconds):
        """Send `request`, shut our side down, and return how long the
        server took to close (failing if it answered or took too long)."""
        s = socket.create_connection(("127.0.0.1", self.server.port))
        try:
            s.sendall(request)
            start = time.monotonic()
            s.shutdown(socket.SHUT_WR)
            s.settimeout(seconds)
            try:
                data = s.recv(4096)
            except socket.timeout:
                self.fail("the server kept the connection %ss after the "
                          "client left" % seconds)
            except ConnectionResetError:
                data = b""
            self.assertEqual(data, b"", "a response for a client that left")
            return time.monotonic() - start
        finally:
            s.close()

    def test_fin_in_the_middle_of_a_body(self):
        # 10 of 100 announced body bytes, then FIN: not a body timeout
        took = self.closed_within(kt.request_bytes(
            "POST", "/echo", headers=[("Content-Length", "100")],
            body=b"0123456789", length=False), BODY_TIMEOUT / 2)
        self.assertLess(took, BODY_TIMEOUT / 2)

    def test_fin_while_the_handler_waits(self):
        mark = self.server.log_mark()
        self.closed_within(kt.request_bytes("GET", "/delay"), 5)
        self.server.wait_log(r"closed the connection before the response",
                             since=mark)
        # the server is still fine for others
        with kt.Client(self.server.port) as c:
            resp = c.request("GET", "/echo")
        self.assertStatus(resp, 200)


if __name__ == "__main__":
    kt.main()
