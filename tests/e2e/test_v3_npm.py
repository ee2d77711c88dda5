#!/usr/bin/env python3
"""End-to-end: the npm client `etcd3` 1.1.2 (Node.js, @grpc/grpc-js) against
disco's v3 gRPC surface, and the same script against a real etcd 3.4.

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_v3_npm.py -v

tests/e2e/v3_npm.js makes the calls of a booting v3 member (Put of the size
key, Puts of member keys, Range of the members prefix sorted by create
revision with and without a limit, a count-only Range, a re-registration
with prev_kv, a Watch of the prefix from an earlier revision that replays
history and then sees a live Put) and prints what each answered, revisions
relative to its first Put. The test runs it against a real etcd first: the
answers must be what etcd's API promises (so the script checks what it
claims to), then against disco: the answers must be etcd's, byte for byte.

The module is installed by `make check` (`npm install --prefix BUILD/npm
etcd3@1.1.2`); the test looks in $DISCO_NPM_DIR, then BUILD/npm beside
$DISCO_BIN, then build/npm in the checkout, and is skipped, saying so, when
neither node nor the module is there. Every process listens on 127.0.0.1 on a
port chosen at run time and is stopped by PID.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "v3_npm.js")
NODE = shutil.which("node") or shutil.which("nodejs")
ETCD3_NPM_VERSION = "1.1.2"

# Under a wrapper (valgrind) disco is many times slower: every bound scales.
SLOW = 10 if os.environ.get("DISCO_WRAPPER") else 1
CALL_TIMEOUT_MS = 5000 * SLOW
RUN_TIMEOUT_MS = 30000 * SLOW
SCRIPT_TIMEOUT_S = RUN_TIMEOUT_MS / 1000 + 15


def npm_modules_dir():
    """The node_modules holding etcd3 at the version the tests pin, or None."""
    candidates = []
    if os.environ.get("DISCO_NPM_DIR"):
        candidates.append(os.environ["DISCO_NPM_DIR"])
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(harness.disco_bin())), "npm"))
    candidates.append(os.path.join(harness.REPO_ROOT, "build", "npm"))
    for d in candidates:
        pkg = os.path.join(d, "node_modules", "etcd3", "package.json")
        try:
            with open(pkg) as f:
                if json.load(f).get("version") == ETCD3_NPM_VERSION:
                    return os.path.join(d, "node_modules")
        except (OSError, ValueError):
            continue
    return None


NODE_MODULES = npm_modules_dir()


def run_script(endpoint, token, *extra):
    """Runs v3_npm.js against HOST:PORT; returns its JSON result, or fails
    with its stderr."""
    env = harness.clean_env()
    env["NODE_PATH"] = NODE_MODULES
    env["V3_NPM_CALL_TIMEOUT_MS"] = str(CALL_TIMEOUT_MS)
    env["V3_NPM_RUN_TIMEOUT_MS"] = str(RUN_TIMEOUT_MS)
    cp = subprocess.run([NODE, SCRIPT, endpoint, token] + list(extra), env=env,
                        stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=SCRIPT_TIMEOUT_S)
    if cp.returncode != 0:
        raise AssertionError("v3_npm.js against %s exited %d:\n%s"
                             % (endpoint, cp.returncode, cp.stderr[-4000:]))
    return json.loads(cp.stdout)


def hostport(url):
    return url.split("//", 1)[1].rstrip("/")


@unittest.skipIf(NODE is None, "node is not installed")
@unittest.skipIf(NODE_MODULES is None,
                 "npm etcd3@%s is not installed (make check installs it into BUILD/npm; "
                 "or set DISCO_NPM_DIR)" % ETCD3_NPM_VERSION)
class NpmEtcd3Test(unittest.TestCase):

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-v3npm-")
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            rc = p.stop()
            if p.name.startswith("disco"):
                self.assertEqual(rc, 0, "disco did not stop cleanly:\n" + p.log()[-3000:])
        if sys.exc_info()[0] is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def assert_etcd_semantics(self, r, token):
        """What etcd's API promises for the script's sequence: proves that the
        script reads what it claims to before it is trusted on disco."""
        prefix = "/_etcd/registry/%s/members/" % token
        self.assertEqual([r["put_a1"], r["put_a2"], r["reput_a1"]["revision"], r["put_a3"]],
                         [1, 2, 3, 4])
        self.assertEqual(r["get_size"]["kvs"][0]["value"], "3")
        self.assertEqual([kv["key"] for kv in r["members"]["kvs"]], [prefix + "a1", prefix + "a2"])
        self.assertEqual((r["members"]["count"], r["members"]["more"]), (2, False))
        self.assertEqual(len(r["members_limit_1"]["kvs"]), 1)
        self.assertEqual((r["members_limit_1"]["count"], r["members_limit_1"]["more"]), (2, True))
        self.assertEqual(r["members_count"], 2)
        # re-registration: prev_kv is the first version; the key keeps its
        # create_revision and its version goes to 2
        self.assertEqual((r["reput_a1"]["prev_kv"]["version"],
                          r["reput_a1"]["prev_kv"]["mod_revision"]), (1, 1))
        a1 = r["members_after"]["kvs"][0]
        self.assertEqual((a1["create_revision"], a1["mod_revision"], a1["version"]), (1, 3, 2))
        # the watch from a2's revision: two replayed events, then the live one
        self.assertEqual([(e["type"], e["kv"]["key"], e["kv"]["mod_revision"]) for e in r["watch"]],
                         [("Put", prefix + "a2", 2), ("Put", prefix + "a1", 3),
                          ("Put", prefix + "a3", 4)])

    def test_same_answers_as_etcd(self):
        etcd, client_url = harness.start_etcd_v2(self.workdir)
        self.procs.append(etcd)
        disco, base_url = harness.start_disco(self.workdir)
        self.procs.append(disco)
        token = uuid.uuid4().hex
        want = run_script(hostport(client_url), token)
        self.assert_etcd_semantics(want, token)
        got = run_script(hostport(base_url), token, "--expect-denied")
        # a key outside the discovery shapes: etcd's own error, through the
        # client's own error class (etcd itself would take the Put)
        self.assertEqual(got.pop("denied"), "EtcdPermissionDeniedError: 7 PERMISSION_DENIED: "
                         "etcdserver: permission denied")
        self.assertEqual(got, want)


if __name__ == "__main__":
    unittest.main(verbosity=2)
