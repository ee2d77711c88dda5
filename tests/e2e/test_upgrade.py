#!/usr/bin/env python3
"""End-to-end: a data dir written by the previous release still opens.

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_upgrade.py -v

The fixture tests/e2e/data/datadir-format1.tar.gz was written by disco built
from commit f71921c (on-disk format 1: log frames neither chained nor salted)
and killed with SIGKILL while its last writes were only in its write-ahead log
(how it was made: tests/e2e/data/make_datadir_format1.py; what a client read
back from it then: datadir-format1.json).  The current disco must apply that
log, serve every token and member exactly as the old release did, rewrite the
log in the current format, and keep all of it across the next restarts.
Python 3 standard library only; disco runs on a loopback port chosen at run
time and is stopped by PID.
"""

import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import http  # noqa: E402

REG = "/v2/keys/_etcd/registry"
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FIXTURE = os.path.join(DATA, "datadir-format1.tar.gz")
EXPECTED = os.path.join(DATA, "datadir-format1.json")
LOG_TAIL_CHARS = 4000
FORMAT2_FRAME_MAGIC = b"DWL2"


class TestUpgradeFromFormat1(unittest.TestCase):

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-upgrade-")
        self.data_dir = os.path.join(self.workdir, "disco-data")
        os.makedirs(self.data_dir)
        with tarfile.open(FIXTURE) as tar:
            for m in tar.getmembers():  # plain files only, named as expected
                self.assertTrue(m.isfile() and m.name in ("data.mdb", "disco.wal"), m.name)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(self.data_dir, filter="data")
            else:
                tar.extractall(self.data_dir)
        with open(EXPECTED) as f:
            self.expected = json.load(f)
        self.procs = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for p in self.procs:
            p.stop(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def start(self):
        proc, base = harness.start_disco(self.workdir)
        self.procs.append(proc)
        return proc, base

    def fail_with_log(self, proc, msg):
        self.fail("%s\n----- disco log (tail) -----\n%s" % (msg, proc.log()[-LOG_TAIL_CHARS:]))

    def listing(self, base, token):
        st, h, b = http("GET", base + REG + "/" + token + "?recursive=true")
        self.assertEqual(st, 200, "listing of %s: %d %r" % (token, st, b))
        node = json.loads(b)["node"]
        return {n["key"]: [n["value"], n["createdIndex"], n["modifiedIndex"]]
                for n in node.get("nodes", []) if not n.get("dir")}

    def assert_fixture_content(self, base, extra=None):
        """Every token and member of the fixture, with its indexes, plus `extra`
        ({token: {key: [value, created, modified]}}) written since."""
        for token, members in sorted(self.expected["tokens"].items()):
            want = dict(members)
            want.update((extra or {}).get(token, {}))
            self.assertEqual(self.listing(base, token), want, "token %s" % token)
            st, _, b = http("GET", base + REG + "/" + token + "/_config/size")
            self.assertEqual(st, 200, "size of %s: %d %r" % (token, st, b))
            self.assertIn(json.loads(b)["node"]["value"], ("3", "5"))

    def index_of(self, base):
        st, h, b = http("GET", base + REG + "/no-such-token")
        return int(h["x-etcd-index"])

    def test_format1_dir_opens_then_stays_in_the_new_format(self):
        # 1. The current binary opens the old dir: its log is applied, once.
        proc, base = self.start()
        log = proc.log()
        want_applied = "(%d writes)" % self.expected["writes_only_in_log"]
        if want_applied not in log:
            self.fail_with_log(proc, "the format-1 log was not applied: no %r" % want_applied)
        if "upgraded" not in log or "format disco-registry-1" not in log:
            self.fail_with_log(proc, "no upgrade from format 1 was logged")
        self.assert_fixture_content(base)
        self.assertEqual(self.index_of(base), self.expected["index"])

        # 2. A write after the upgrade lands in a log of the new format; SIGKILL
        #    right after it, so it may well be only there.
        token = "fmt1-b"
        st, _, b = http("PUT", base + REG + "/" + token + "/after-upgrade",
                        {"value": "http://10.0.0.9:2380"})
        self.assertEqual(st, 201, b)
        node = json.loads(b)["node"]
        self.assertEqual(node["createdIndex"], self.expected["index"] + 1)
        os.kill(proc.pid, signal.SIGKILL)
        self.assertEqual(proc.wait(10), -signal.SIGKILL)
        proc.stop()
        with open(os.path.join(self.data_dir, "disco.wal"), "rb") as f:
            magic = f.read(4)
        self.assertEqual(magic, FORMAT2_FRAME_MAGIC,
                         "the log's first frame is not of the current format")
        extra = {token: {"/_etcd/registry/%s/after-upgrade" % token:
                         ["http://10.0.0.9:2380", node["createdIndex"],
                          node["modifiedIndex"]]}}

        # 3. Restart (now the current format): everything is still there, and
        #    nothing is upgraded again.
        proc, base = self.start()
        if "upgraded" in proc.log():
            self.fail_with_log(proc, "upgraded twice")
        self.assert_fixture_content(base, extra)
        self.assertEqual(self.index_of(base), self.expected["index"] + 1)
        # 4. And once more after a clean stop.
        os.kill(proc.pid, signal.SIGTERM)
        self.assertEqual(proc.wait(10), 0, proc.log()[-LOG_TAIL_CHARS:])
        proc.stop()
        proc, base = self.start()
        self.assert_fixture_content(base, extra)
        self.assertEqual(self.index_of(base), self.expected["index"] + 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
