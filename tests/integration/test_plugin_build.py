"""A module built the way a user builds one: out of the tree, from the
public header found through pkg-config, loaded by the real server."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kourier_test as kt  # noqa: E402


class TestPluginBuild(kt.ServerTestCase):

    def setUp(self):
        self.binary, self.build, self.src = kt.paths()
        self.tmp = tempfile.mkdtemp(prefix="kourier-plugin-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def cflags(self):
        """What `pkg-config --cflags kourier` says, pointed at the source
        tree's include/ as an installed prefix would be."""
        if shutil.which("pkg-config") is None:
            self.skipTest("pkg-config is not installed")
        env = dict(os.environ, PKG_CONFIG_PATH=self.build)
        out = subprocess.run(
            ["pkg-config", "--cflags", "--define-variable=includedir="
             + os.path.join(self.src, "include"), "kourier"],
            env=env, capture_output=True, text=True, check=True)
        flags = out.stdout.split()
        self.assertIn("-I" + os.path.join(self.src, "include"), flags)
        return flags

    def compile(self, source, name):
        so = os.path.join(self.tmp, name + ".so")
        cc = os.environ.get("CC", "cc")
        res = subprocess.run(
            [cc, "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
             "-o", so, source] + self.cflags(),
            capture_output=True, text=True)
        self.assertEqual(res.returncode, 0, "out-of-tree build of %s failed:"
                         "\n%s" % (source, res.stderr))
        return so

    def test_hello_out_of_tree(self):
        so = self.compile(os.path.join(self.src, "plugins", "hello",
                                       "hello.c"), "myhello")
        server = kt.Server(kt.make_config(
            modules={"myhello": {"path": so}},
            routes=[{"path": "/hi", "handler": "myhello",
                     "greeting": "built out of tree"}]))
        self.addCleanup(server.stop)
        res = server.run_command("-t")
        self.assertEqual(res.returncode, 0, res.stderr)
        server.start()
        with kt.Client(server.port) as c:
            resp = c.request("GET", "/hi")
        self.assertStatus(resp, 200)
        self.assertEqual(resp.body, b"built out of tree")
        self.check_server_log(server)

    def test_only_the_entry_symbol_is_exported(self):
        so = self.compile(os.path.join(self.src, "plugins", "echo",
                                       "echo.c"), "myecho")
        if shutil.which("nm") is None:
            self.skipTest("nm is not installed")
        out = subprocess.run(["nm", "-D", "--defined-only", so],
                             capture_output=True, text=True, check=True)
        names = {line.split()[-1] for line in out.stdout.splitlines()
                 if line.split() and line.split()[-2] in ("T", "D", "B")}
        self.assertEqual(names, {"kourier_module"})


if __name__ == "__main__":
    kt.main()
