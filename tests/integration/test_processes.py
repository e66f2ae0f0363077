"""The master and its workers: config test (-t), reload (good, broken, under
load), worker respawn after SIGKILL, graceful (SIGQUIT) and fast (SIGTERM)
stop, and the -s commands."""

import os
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402

WORKERS = 2
DELAY_MS = 2000

# A hand-written config, so that tests can name the line and column of an
# error. Line numbers matter: see BROKEN below.
TEMPLATE = """\
workers: 2
pid_file: kourier.pid
error_log: stderr
shutdown_timeout: 10s
listen: ["127.0.0.1:0"]
modules:
  hello: {path: "%(hello)s"}
  delay: {path: "%(delay)s"}
routes:
  - path: /hello
    handler: hello
    greeting: "%(greeting)s"
  - path: /delay
    handler: delay
    delay: 2s
"""


def config(greeting="generation 0"):
    return TEMPLATE % {"hello": kt.plugin_path("hello"),
                       "delay": kt.plugin_path("delay"),
                       "greeting": greeting}


def broken(old, new, greeting="generation 0"):
    text = config(greeting)
    assert old in text
    return text.replace(old, new, 1)


# (what, config text, line, acceptable columns) of invalid configs.
BROKEN = [
    ("unknown top-level key",
     broken("workers: 2", "wrokers: 2"), 1, (1,)),
    ("wrong type for workers (key or value column)",
     broken("workers: 2", "workers: lots"), 1, (1, 10)),
    ("unknown key of the hello module's route schema",
     broken('    greeting: "generation 0"', '    greting: "x"'), 12, (5,)),
    ("route handler that names no declared module",
     broken("    handler: delay", "    handler: nosuch"), 14, (5, 14)),
]


def err_position(stderr):
    """(line, col) from the first "kourier.yaml:LINE:COL" in stderr."""
    m = re.search(r"kourier\.yaml:(\d+):(\d+)", stderr)
    return (int(m.group(1)), int(m.group(2))) if m else None


class ServerCase(kt.ServerTestCase):
    """Each test gets its own server (they stop, kill and reload it)."""

    def setUp(self):
        self.server = kt.Server(config(), workers=WORKERS)
        self.addCleanup(self.server.kill)
        self.server.start()
        self.addCleanup(self.check_server_log, self.server)

    def greeting(self):
        resp = self.server.get("/hello")
        self.assertStatus(resp, 200, "GET /hello")
        return resp.body.decode()

    def workers_gone(self, pids, timeout=kt.DEADLINE):
        kt.wait_until(lambda: not any(kt.pid_alive(p) for p in pids),
                      timeout, what="workers %r to exit" % (pids,))

    def in_flight_delay(self):
        """A client whose GET /delay has been read by a worker."""
        c = self.server.client()
        self.addCleanup(c.close)
        c.send(kt.request_bytes("GET", "/delay"))
        kt.wait_request_consumed(c.sock, self.server.port)
        return c


class TestConfigTest(kt.ServerTestCase):

    def setUp(self):
        # -t needs no running server; Server only provides the prefix.
        self.server = kt.Server(config(), workers=WORKERS)
        self.addCleanup(self.server.kill)

    def test_good_config(self):
        r = self.server.run_command("-t")
        self.assertEqual(r.returncode, 0, "kourier -t on a valid config: "
                         "stdout %r stderr %r" % (r.stdout, r.stderr))

    def test_bad_configs(self):
        for what, text, line, cols in BROKEN:
            with self.subTest(what):
                self.server.write_config(text)
                r = self.server.run_command("-t")
                self.assertEqual(r.returncode, 1, "%s: kourier -t exited %d"
                                 " (stderr %r)" % (what, r.returncode,
                                                   r.stderr))
                pos = err_position(r.stderr)
                self.assertIsNotNone(pos, "%s: no kourier.yaml:LINE:COL in "
                                     "%r" % (what, r.stderr))
                self.assertEqual(pos[0], line, "%s: %r" % (what, r.stderr))
                self.assertIn(pos[1], cols, "%s: %r" % (what, r.stderr))

    def test_yaml_syntax_error(self):
        self.server.write_config(broken('"generation 0"', '"unterminated'))
        r = self.server.run_command("-t")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIsNotNone(err_position(r.stderr), r.stderr)


class TestProcesses(ServerCase):

    def test_workers_and_pid_file(self):
        ready = self.server.ready_pids()
        self.assertEqual(len(ready), WORKERS, "ready workers: %r" % ready)
        kt.wait_until(lambda: self.server.read_pid_file() == self.server.pid,
                      what="the pid file to hold the master's pid %d (has %r)"
                      % (self.server.pid, self.server.read_pid_file()))
        kt.wait_until(lambda: sorted(self.server.worker_pids())
                      == sorted(ready),
                      what="the master's children %r to be the ready "
                      "workers %r" % (self.server.worker_pids(), ready))
        self.assertEqual(self.greeting(), "generation 0")

    def test_reload_changes_greeting(self):
        old = self.server.ready_pids()
        mark = self.server.log_mark()
        rc, err = self.server.reload(config("generation 1"))
        self.assertEqual(rc, 0, "kourier -s reload failed: %r" % err)
        # Once reload has returned, every new connection gets the new
        # config.
        for i in range(20):
            self.assertEqual(self.greeting(), "generation 1",
                             "request %d after the reload" % i)
        new = self.server.wait_workers(WORKERS, since=mark, exclude=old)
        self.assertFalse(set(new) & set(old))
        self.workers_gone(old)
        kt.wait_until(lambda: sorted(self.server.worker_pids()) == sorted(new),
                      what="the master's children to be the new workers")

    def test_reload_serves_accepted_connection(self):
        # A connection accepted by a worker that is then told to drain has
        # not had its first request yet: the worker must wait for it (up to
        # header_timeout) and answer it, not close the connection -- the
        # client cannot tell this close from a failure.
        c = self.server.client()
        self.addCleanup(c.close)
        try:
            kt.wait_accepted(c.sock, self.server.port, timeout=5)
        except AssertionError:
            self.skipTest("the server defers accept until data arrives")
        rc, err = self.server.reload(config("generation 1"))
        self.assertEqual(rc, 0, "kourier -s reload failed: %r" % err)
        c.send(kt.request_bytes("GET", "/hello"))
        try:
            resp = c.read_response()
        except kt.ServerClosed as e:
            self.fail("the draining worker closed a connection that had "
                      "not sent its first request yet: %s" % e)
        self.assertStatus(resp, 200, "first request on a connection "
                          "accepted before the reload")
        self.assertEqual(resp.body, b"generation 0")

    def test_broken_reload_keeps_old_config(self):
        old = self.server.ready_pids()
        rc, err = self.server.reload(broken('    greeting: "generation 0"',
                                            '    greting: "x"'))
        self.assertNotEqual(rc, 0, "a reload of a broken config succeeded")
        self.assertEqual(err_position(err), (12, 5),
                         "reload error should name kourier.yaml:12:5: %r"
                         % err)
        for i in range(10):
            self.assertEqual(self.greeting(), "generation 0",
                             "request %d after the refused reload" % i)
        self.assertEqual(sorted(self.server.worker_pids()), sorted(old),
                         "workers changed after a refused reload")
        # And a good reload still works afterwards.
        rc, err = self.server.reload(config("generation 2"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.greeting(), "generation 2")

    def test_worker_respawn_after_sigkill(self):
        old = self.server.ready_pids()
        kt.wait_until(lambda: sorted(self.server.worker_pids())
                      == sorted(old), what="workers to be children")
        victim = old[0]
        mark = self.server.log_mark()
        os.kill(victim, signal.SIGKILL)
        new = self.server.wait_workers(1, since=mark, exclude=old)
        self.assertNotIn(victim, new)
        want = sorted([old[1], new[0]])
        kt.wait_until(lambda: sorted(self.server.worker_pids()) == want,
                      what="children to be %r (have %r)"
                      % (want, self.server.worker_pids()))
        for i in range(20):
            self.assertEqual(self.greeting(), "generation 0",
                             "request %d after the respawn" % i)

    # ---- stopping

    def test_sigquit_finishes_in_flight_request(self):
        workers = self.server.ready_pids()
        c = self.in_flight_delay()
        start = time.monotonic()
        self.server.signal(signal.SIGQUIT)
        resp = c.read_response()
        self.assertStatus(resp, 200, "in-flight /delay during SIGQUIT")
        self.assertEqual(resp.body, b"delayed %dms\n" % DELAY_MS)
        self.assertClosesAfter(c, "connection after a graceful stop")
        rc = self.server.wait_exit()
        self.assertEqual(rc, 0, "master exit status after SIGQUIT")
        self.assertLess(time.monotonic() - start, DELAY_MS / 1000.0 + 5,
                        "graceful stop took too long")
        self.workers_gone(workers)

    def test_sigquit_closes_idle_keep_alive(self):
        workers = self.server.ready_pids()
        c = self.server.client()
        self.addCleanup(c.close)
        self.assertStatus(c.request("GET", "/hello"), 200, "GET /hello")
        start = time.monotonic()
        self.server.signal(signal.SIGQUIT)
        self.assertClosesAfter(c, "idle keep-alive connection on SIGQUIT")
        self.assertEqual(self.server.wait_exit(), 0)
        # shutdown_timeout is 10s: an idle connection must not hold the
        # worker until then.
        self.assertLess(time.monotonic() - start, 5.0,
                        "an idle connection delayed the graceful stop")
        self.workers_gone(workers)

    def test_sigterm_stops_quickly(self):
        workers = self.server.ready_pids()
        c = self.in_flight_delay()
        start = time.monotonic()
        self.server.signal(signal.SIGTERM)
        rc = self.server.wait_exit()
        elapsed = time.monotonic() - start
        self.assertEqual(rc, 0, "master exit status after SIGTERM")
        self.assertLess(elapsed, 1.5, "SIGTERM waited %.2fs (for the "
                        "in-flight request?)" % elapsed)
        self.workers_gone(workers)
        with self.assertRaises(kt.ServerClosed,
                               msg="the in-flight request was answered "
                               "after a fast stop"):
            c.read_response()

    def test_s_stop(self):
        workers = self.server.ready_pids()
        r = self.server.run_command("-s", "stop")
        self.assertEqual(r.returncode, 0, "kourier -s stop: %r" % r.stderr)
        self.assertEqual(self.server.wait_exit(), 0)
        self.workers_gone(workers)

    def test_s_quit(self):
        workers = self.server.ready_pids()
        c = self.in_flight_delay()
        r = self.server.run_command("-s", "quit")
        self.assertEqual(r.returncode, 0, "kourier -s quit: %r" % r.stderr)
        resp = c.read_response()
        self.assertStatus(resp, 200, "in-flight /delay during -s quit")
        self.assertEqual(self.server.wait_exit(), 0)
        self.workers_gone(workers)


class ClientLoop(threading.Thread):
    """GET /hello in a loop until stopped; every response must be a 200
    with one of the configured greetings.

    keep_alive=False: a new connection per request (Connection: close), no
    retry: any error counts. keep_alive=True: one connection reused until
    the server closes it; a request is retried on a fresh connection only
    when the server closed a reused idle connection before sending any
    byte of the response (RFC 9112 section 9.3.1 allows retrying an
    idempotent request then)."""

    def __init__(self, port, keep_alive, greetings):
        threading.Thread.__init__(self, daemon=True)
        self.port = port
        self.keep_alive = keep_alive
        self.greetings = set(g.encode() for g in greetings)
        self.done = threading.Event()
        self.count = 0
        self.retries = 0
        self.connections = 0
        self.failures = []
        self.last_body = None

    def fail(self, what):
        if len(self.failures) < 20:
            self.failures.append("request %d at t=%.3f: %s"
                                 % (self.count, time.monotonic(), what))
        else:
            self.failures[-1] = "... and more (request %d)" % self.count

    def check(self, resp):
        if resp.status != 200 or resp.body not in self.greetings:
            self.fail("bad response %r" % resp)
            return False
        self.last_body = resp.body
        return True

    def run(self):
        try:
            if self.keep_alive:
                self.run_keep_alive()
            else:
                self.run_fresh()
        except BaseException as e:
            self.fail("client loop crashed: %r" % e)

    def run_fresh(self):
        req = kt.request_bytes("GET", "/hello",
                               headers=[("Connection", "close")])
        while not self.done.is_set():
            try:
                with kt.Client(self.port) as c:
                    self.connections += 1
                    c.send(req)
                    self.check(c.read_response())
            except (OSError, AssertionError) as e:
                self.fail(repr(e))
            self.count += 1

    def run_keep_alive(self):
        req = kt.request_bytes("GET", "/hello")
        c = None
        while not self.done.is_set():
            fresh = c is None
            if fresh:
                c = kt.Client(self.port)
                self.connections += 1
            try:
                c.send(req)
                resp = c.read_response()
            except (kt.ServerClosed, BrokenPipeError,
                    ConnectionResetError) as e:
                c.close()
                c = None
                partial = getattr(e, "partial", b"")
                if fresh or partial:
                    self.fail("%r (fresh connection: %s)" % (e, fresh))
                    self.count += 1
                else:
                    self.retries += 1
                continue
            except (OSError, AssertionError) as e:
                self.fail(repr(e))
                self.count += 1
                c.close()
                c = None
                continue
            self.count += 1
            self.check(resp)
            if "close" in resp.tokens("Connection"):
                c.close()
                c = None
        if c is not None:
            c.close()


class TestReloadUnderLoad(ServerCase):
    RELOADS = 5
    MIN_REQUESTS = 2000

    def run_loop(self, keep_alive):
        greetings = ["generation %d" % i for i in range(self.RELOADS + 1)]
        loop = ClientLoop(self.server.port, keep_alive, greetings)
        self.addCleanup(loop.join, kt.DEADLINE)
        self.addCleanup(loop.done.set)
        loop.start()
        step = self.MIN_REQUESTS // (self.RELOADS + 1)
        reloads = []
        for i in range(1, self.RELOADS + 1):
            kt.wait_until(lambda: loop.count >= i * step or not
                          loop.is_alive(), 60,
                          what="%d requests (have %d)" % (i * step,
                                                          loop.count))
            began = time.monotonic()
            rc, err = self.server.reload(config(greetings[i]))
            reloads.append("reload %d from t=%.3f to t=%.3f"
                           % (i, began, time.monotonic()))
            self.assertEqual(rc, 0, "reload %d failed: %r" % (i, err))
        after = loop.count
        kt.wait_until(lambda: loop.count >= max(self.MIN_REQUESTS,
                                                after + step)
                      or not loop.is_alive(), 60,
                      what="%d requests (have %d)" % (self.MIN_REQUESTS,
                                                      loop.count))
        loop.done.set()
        loop.join(kt.DEADLINE)
        self.assertFalse(loop.is_alive(), "client loop did not stop")
        sys.stderr.write("\n  %s: %d requests, %d connections, %d retries "
                         "of requests on closed idle connections\n"
                         % ("keep-alive" if keep_alive else "fresh",
                            loop.count, loop.connections, loop.retries))
        if loop.failures:
            self.fail("%d requests, failures:\n%s\n%s\n--- server log ---\n%s"
                      % (loop.count, "\n".join(loop.failures),
                         "\n".join(reloads), self.server.log_tail(80)))
        self.assertGreaterEqual(loop.count, self.MIN_REQUESTS)
        self.assertEqual(loop.last_body, greetings[-1].encode(),
                         "the last response does not carry the last "
                         "config's greeting")

    def test_fresh_connections(self):
        self.run_loop(keep_alive=False)

    def test_keep_alive(self):
        self.run_loop(keep_alive=True)


if __name__ == "__main__":
    kt.main()
