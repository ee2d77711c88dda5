"""Packaging: what `make install` puts where, the systemd unit it installs,
the man page against `disco serve --help`, systemd's notification protocol
as disco speaks it (READY, WATCHDOG, STOPPING on a socket this test binds as
NOTIFY_SOCKET), the Butane configs in contrib/, and the static build.

The install tests use the build directory of the binary under test
(DISCO_BIN): `make install-only BUILD=<that dir>` is `make install` without
the build step, so the ASan build is installed as it is, not rebuilt.
StaticBuild runs only with DISCO_STATIC_BIN set (`make check-static`).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import harness

REPO = harness.REPO_ROOT
NOTIFY_WAIT_S = 30.0  # generous: valgrind starts slowly


def build_dir():
    return os.path.dirname(os.path.abspath(harness.disco_bin()))


def make_install(destdir, prefix):
    cp = subprocess.run(["make", "-C", REPO, "--no-print-directory", "install-only",
                         "BUILD=" + build_dir(), "PREFIX=" + prefix, "DESTDIR=" + destdir],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if cp.returncode != 0:
        raise AssertionError("make install-only failed:\n" + cp.stdout.decode("utf-8", "replace"))


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def unit_settings(text):
    """The unit's Key=value lines (comments dropped), as a list of pairs."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.append((k, v))
    return out


class Install(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="disco-install-")
        cls.usr = os.path.join(cls.tmp, "usr-root")
        cls.local = os.path.join(cls.tmp, "local-root")
        make_install(cls.usr, "/usr")
        make_install(cls.local, "/usr/local")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_tree_contents_prefix_usr(self):
        files = sorted(os.path.relpath(os.path.join(d, f), self.usr)
                       for d, _, fs in os.walk(self.usr) for f in fs)
        self.assertEqual(files, ["etc/disco/disco.env",
                                 "usr/bin/disco",
                                 "usr/lib/systemd/system/disco.service",
                                 "usr/share/man/man1/disco.1"])
        binary = os.path.join(self.usr, "usr/bin/disco")
        self.assertTrue(os.access(binary, os.X_OK))
        cp = subprocess.run([binary, "version"], stdout=subprocess.PIPE, timeout=10)
        self.assertEqual(cp.returncode, 0)
        self.assertTrue(cp.stdout.startswith(b"disco "), cp.stdout)

    def test_unit_names_the_installed_paths(self):
        for root, prefix, etc in ((self.usr, "/usr", "/etc"),
                                  (self.local, "/usr/local", "/usr/local/etc")):
            unit = dict(unit_settings(read(os.path.join(
                root, prefix.lstrip("/"), "lib/systemd/system/disco.service"))))
            self.assertEqual(unit["ExecStart"], prefix + "/bin/disco serve")
            self.assertEqual(unit["EnvironmentFile"], "-" + etc + "/disco/disco.env")
            self.assertTrue(os.path.exists(os.path.join(root, etc.lstrip("/"),
                                                        "disco/disco.env")))
            self.assertNotRegex(read(os.path.join(
                root, prefix.lstrip("/"), "lib/systemd/system/disco.service")),
                r"@[A-Z_]+@", "every @VAR@ is filled in")

    def test_unit_directives(self):
        pairs = unit_settings(read(os.path.join(self.usr,
                                                "usr/lib/systemd/system/disco.service")))
        unit = dict(pairs)
        self.assertEqual(unit["Type"], "notify")
        self.assertIn("-HUP $MAINPID", unit["ExecReload"])
        self.assertEqual(unit["DynamicUser"], "yes")
        self.assertEqual(unit["StateDirectory"], "disco")
        self.assertEqual(unit["Environment"], "DISC_DATA_DIR=%S/disco")
        self.assertGreaterEqual(int(unit["LimitNOFILE"]), 32768 + 64,
                                "room for the default --max-conns and disco's own descriptors")
        self.assertIn("WatchdogSec", unit)
        for k, v in (("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                     ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                     ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6")):
            self.assertEqual(unit.get(k), v, k)

    def test_env_file_lists_only_disc_variables_and_is_kept(self):
        env = os.path.join(self.usr, "etc/disco/disco.env")
        for line in read(env).splitlines():
            line = line.lstrip("#").strip()
            if "=" in line and " " not in line.split("=")[0]:
                self.assertTrue(line.startswith("DISC_"), line)
        with open(env, "a", encoding="utf-8") as f:
            f.write("DISC_MINAGE=24h\n")
        make_install(self.usr, "/usr")
        self.assertIn("DISC_MINAGE=24h\n", read(env), "an operator's settings survive reinstall")

    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        if not tool:
            self.skipTest("systemd-analyze is not installed (Debian package systemd)")
        # verify looks ExecStart's binary up on this machine, where
        # /usr/bin/disco is not: a copy of the unit names the one in the
        # tree instead, nothing else changed. --man=no: man:disco(1) would be
        # looked up on this machine too.
        text = read(os.path.join(self.usr, "usr/lib/systemd/system/disco.service"))
        self.assertIn("ExecStart=/usr/bin/disco ", text)
        unit = os.path.join(self.tmp, "disco.service")
        with open(unit, "w", encoding="utf-8") as f:
            f.write(text.replace("ExecStart=/usr/bin/disco ",
                                 "ExecStart=" + os.path.join(self.usr, "usr/bin/disco") + " "))
        cp = subprocess.run([tool, "verify", "--man=no", unit],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = cp.stdout.decode("utf-8", "replace")
        if cp.returncode != 0 and ("Failed to initialize manager" in out
                                   or "System has not been booted with systemd" in out):
            self.skipTest("systemd-analyze verify cannot run here: " + out.strip()[:200])
        self.assertEqual(cp.returncode, 0, out)
        self.assertNotIn("disco.service:", out, "no warning about the unit itself:\n" + out)


class ManPage(unittest.TestCase):
    def test_every_flag_in_the_help_is_in_the_man_page(self):
        cp = subprocess.run([harness.disco_bin(), "serve", "--help"], stdout=subprocess.PIPE,
                            timeout=10)
        self.assertEqual(cp.returncode, 0)
        flags = set(re.findall(r"(?m)^\s+(--[a-z][a-z0-9-]*)", cp.stdout.decode()))
        self.assertGreater(len(flags), 10, flags)
        man = read(os.path.join(REPO, "docs/disco.1")).replace("\\-", "-")
        missing = sorted(f for f in flags if not re.search(r"\.B[I]? " + re.escape(f) + r"\b",
                                                            man))
        self.assertEqual(missing, [], "flags in `disco serve --help` without an entry in "
                                      "docs/disco.1")
        envs = set(re.findall(r"DISC_[A-Z_]+", cp.stdout.decode()))
        self.assertEqual(sorted(e for e in envs if e.replace("_", "\\_") not in man
                                and e not in man), [])

    def test_man_page_formats_without_warnings(self):
        man = shutil.which("man")
        if not man:
            self.skipTest("man is not installed")
        cp = subprocess.run([man, "--warnings", "-l", os.path.join(REPO, "docs/disco.1")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                            env=dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0"))
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertEqual(cp.stderr.decode().strip(), "")
        self.assertIn(b"DISCO(1)", cp.stdout)


class Notify(unittest.TestCase):
    """A socket bound here plays systemd's notification socket."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="disco-notify-")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.sock.close)
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def start(self, notify_socket, extra_env=None):
        port = harness.free_port()
        env = harness.clean_env()
        env["NOTIFY_SOCKET"] = notify_socket
        env.update(extra_env or {})
        argv = harness.disco_wrapper() + [harness.disco_bin(), "serve",
                                           "--addr", "127.0.0.1:%d" % port,
                                           "--data-dir", os.path.join(self.tmp, "data")]
        proc = harness.Proc(argv, os.path.join(self.tmp, "disco.log"), name="disco-notify",
                            env=env)
        self.addCleanup(proc.stop)
        return proc, "http://127.0.0.1:%d" % port

    def next_message(self, proc, timeout=NOTIFY_WAIT_S):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            self.fail("no notification within %.0fs; disco log:\n%s" % (timeout, proc.log()))
        return dict(line.split("=", 1) for line in data.decode().split("\n") if line)

    def until(self, proc, key):
        deadline = time.monotonic() + NOTIFY_WAIT_S
        seen = []
        while time.monotonic() < deadline:
            msg = self.next_message(proc, max(0.1, deadline - time.monotonic()))
            seen.append(msg)
            if key in msg:
                return msg, seen
        self.fail("no %s among %r" % (key, seen))

    def check_ready_then_stopping(self, address):
        proc, base = self.start(address)
        msg = self.next_message(proc)
        self.assertEqual(msg.get("READY"), "1", msg)
        # READY means listening with the store loaded: no retry needed.
        status, _, body = harness.http("GET", base + "/health", timeout=10)
        self.assertEqual((status, body), (200, b"OK"))
        proc._signal(signal.SIGTERM)
        msg, _ = self.until(proc, "STOPPING")
        self.assertEqual(msg["STOPPING"], "1")
        self.assertEqual(proc.wait(30), 0, proc.log())

    def test_ready_then_stopping_on_a_path_socket(self):
        path = os.path.join(self.tmp, "notify")
        self.sock.bind(path)
        self.check_ready_then_stopping(path)

    def test_ready_then_stopping_on_an_abstract_socket(self):
        name = "disco-test-%d-%d" % (os.getpid(), harness.free_port())
        self.sock.bind("\0" + name)
        self.check_ready_then_stopping("@" + name)

    def test_watchdog_pings_at_half_the_interval(self):
        path = os.path.join(self.tmp, "notify")
        self.sock.bind(path)
        proc, _ = self.start(path, {"WATCHDOG_USEC": "400000"})  # a ping every 200 ms
        pings, start = 0, time.monotonic()
        while pings < 3:
            msg = self.next_message(proc)
            pings += msg.get("WATCHDOG") == "1"
        self.assertLess(time.monotonic() - start, NOTIFY_WAIT_S)

    def test_no_watchdog_pings_for_another_pid(self):
        path = os.path.join(self.tmp, "notify")
        self.sock.bind(path)
        proc, _ = self.start(path, {"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
        self.assertEqual(self.next_message(proc).get("READY"), "1")
        self.sock.settimeout(1.0)
        with self.assertRaises(socket.timeout):
            self.sock.recv(4096)

    def test_no_notify_socket_serves_as_usual(self):
        proc, base = harness.start_disco(self.tmp)
        self.addCleanup(proc.stop)
        self.assertEqual(harness.http("GET", base + "/health")[0], 200)
        self.assertEqual(proc.stop(), 0)
        self.assertNotIn("NOTIFY_SOCKET", proc.log())


class Contrib(unittest.TestCase):
    """The Butane configs parse as YAML and carry what they promise."""

    def load(self, name):
        try:
            import yaml
        except ImportError:
            self.skipTest("python3-yaml is not installed")
        with open(os.path.join(REPO, "contrib/flatcar", name), encoding="utf-8") as f:
            return yaml.safe_load(f)

    def test_server_config(self):
        cfg = self.load("disco-server.bu")
        self.assertEqual(cfg["variant"], "flatcar")
        units = {u["name"]: u for u in cfg["systemd"]["units"]}
        unit = units["disco.service"]
        self.assertTrue(unit["enabled"])
        pairs = dict(unit_settings(unit["contents"]))
        self.assertEqual(pairs["Type"], "notify")
        self.assertEqual(pairs["ExecStart"], "/opt/bin/disco serve")
        self.assertEqual(pairs["DynamicUser"], "yes")
        with open(os.path.join(REPO, "contrib/systemd/disco.service.in"), encoding="utf-8") as f:
            template = f.read()
        self.assertEqual(unit["contents"],
                         template.replace("@DISCO_BINDIR@", "/opt/bin")
                         .replace("@DISCO_ENV_FILE@", "/etc/disco/disco.env"),
                         "the Flatcar unit is the installed one with Flatcar's paths")
        files = {f["path"]: f for f in cfg["storage"]["files"]}
        self.assertIn("/opt/bin/disco", files)
        self.assertEqual(files["/opt/bin/disco"]["mode"], 0o755)
        self.assertIn("/etc/disco/disco.env", files)

    def test_member_config(self):
        cfg = self.load("etcd-member.bu")
        self.assertEqual(cfg["variant"], "flatcar")
        units = {u["name"]: u for u in cfg["systemd"]["units"]}
        dropin = units["etcd-member.service"]["dropins"][0]["contents"]
        self.assertRegex(dropin, r'--discovery="https?://[^"]+/REPLACE_WITH_TOKEN"')
        self.assertIn("ExecStart=\n", dropin, "the packaged ExecStart is replaced, not added to")


class StaticBuild(unittest.TestCase):
    def setUp(self):
        self.binary = os.environ.get("DISCO_STATIC_BIN")
        if not self.binary:
            self.skipTest("DISCO_STATIC_BIN not set (make check-static builds and tests it)")

    def test_no_shared_libraries(self):
        out = subprocess.run(["file", "-L", self.binary], stdout=subprocess.PIPE,
                             timeout=10).stdout.decode()
        self.assertIn("statically linked", out)
        cp = subprocess.run(["ldd", self.binary], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=10)
        self.assertIn("not a dynamic executable", cp.stdout.decode())

    def test_it_serves(self):
        tmp = tempfile.mkdtemp(prefix="disco-static-")
        self.addCleanup(shutil.rmtree, tmp, True)
        os.environ["DISCO_BIN"] = self.binary
        proc, base = harness.start_disco(tmp)
        self.addCleanup(proc.stop)
        status, _, body = harness.http("GET", base + "/new?size=3")
        self.assertEqual(status, 200, body)
        status, _, body = harness.http("GET", body.decode().strip().replace(
            body.decode().strip().split("/")[2], base.split("/")[2], 1) + "/_config/size")
        self.assertEqual(status, 200, body)
        self.assertIn(b'"value":"3"', body)
        self.assertEqual(proc.stop(), 0)


if __name__ == "__main__":
    unittest.main()
