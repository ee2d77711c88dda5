#!/usr/bin/env python3
"""End-to-end: disco's etcd gRPC client (src/etcd/client.c) against real
etcd 3.4 members, through the probe tests/tools/etcd_probe.c (one command per
run, JSON lines out).

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_etcd_client.py -v
The probe is looked for next to DISCO_BIN (ETCD_PROBE overrides).

What is checked: Range and Txn answers agree with etcdctl's view of the same
keys; a watch from an old revision replays history and then goes live; a
watch from a compacted revision is canceled with etcd's compact_revision; a
Range at a compacted revision is a gRPC error (OUT_OF_RANGE); a progress
request is answered on the live Watch stream; and the outcomes that decide
whether a write may have been applied: a call to an endpoint nobody listens
on ends UNSENT at its deadline, a call sent to an etcd that is then stopped
(SIGSTOP) ends UNKNOWN at its deadline. Every etcd listens on 127.0.0.1 on
ports chosen at run time and is stopped by PID.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# Generous bounds: the machine is shared; nothing here asserts speed.
PROBE_RUN_TIMEOUT_S = 30.0
CALL_TIMEOUT_MS = 5000
SHORT_CALL_TIMEOUT_MS = 1500


def probe_bin():
    p = os.environ.get("ETCD_PROBE")
    if p:
        return p
    return os.path.join(os.path.dirname(os.path.abspath(harness.disco_bin())), "etcd_probe")


def run_probe(endpoints, *args, timeout_ms=CALL_TIMEOUT_MS, opts=()):
    """Runs the probe to its end; returns its JSON lines as dicts."""
    argv = [probe_bin(), "--timeout", str(timeout_ms)] + list(opts) + [endpoints] + list(args)
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                        timeout=PROBE_RUN_TIMEOUT_S, env=harness.clean_env())
    if cp.returncode != 0:
        raise AssertionError("etcd_probe %r exited %d: %s" % (args, cp.returncode, cp.stderr))
    return [json.loads(line) for line in cp.stdout.decode().splitlines() if line.strip()]


def etcdctl_json(endpoint, *args):
    rc, out, err = harness.etcdctl(endpoint, "-w", "json", *args)
    if rc != 0:
        raise AssertionError("etcdctl %r: rc=%r %s" % (args, rc, err))
    return json.loads(out)


def ctl_kvs(endpoint, prefix):
    """etcdctl's view of a prefix, in the probe's shape."""
    j = etcdctl_json(endpoint, "get", "--prefix", prefix)
    kvs = []
    for kv in j.get("kvs", []):
        kvs.append({"key": base64.b64decode(kv["key"]).decode(),
                    "value": base64.b64decode(kv.get("value", "")).decode(),
                    "create_revision": int(kv["create_revision"]),
                    "mod_revision": int(kv["mod_revision"]),
                    "version": int(kv["version"]),
                    "lease": int(kv.get("lease", 0))})
    return int(j["header"]["revision"]), kvs


def prefix_end(p):
    return p[:-1] + chr(ord(p[-1]) + 1)


class EtcdClientSingle(unittest.TestCase):
    """One single-member etcd for the whole class; each test uses its own prefix."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(probe_bin()):
            raise unittest.SkipTest("etcd_probe not built at %s" % probe_bin())
        cls.workdir = tempfile.mkdtemp(prefix="disco-etcdc-")
        cls.cluster = harness.EtcdCluster(cls.workdir, size=1)
        cls.ep = cls.cluster.client_urls[0]

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def one(self, *args, **kw):
        lines = run_probe(self.ep, *args, **kw)
        self.assertEqual(len(lines), 1, lines)
        return lines[0]

    def test_range_and_txn_match_etcdctl(self):
        p = "/t1/r/T1/"
        first = self.one("txn-create", p + "_config/size", "3")
        self.assertEqual(first["outcome"], "OK", first)
        self.assertTrue(first["succeeded"])
        # the guard holds: the second create fails and its failure branch ranges the key
        second = self.one("txn-create", p + "_config/size", "5")
        self.assertEqual(second["outcome"], "OK", second)
        self.assertFalse(second["succeeded"])
        self.assertEqual(second["revision"], first["revision"])
        [rr] = second["responses"]
        self.assertEqual(rr["kvs"][0]["value"], "3")
        self.assertEqual(rr["kvs"][0]["create_revision"], first["revision"])
        put = self.one("put", p + "m1", "n1=http://10.0.0.1:2380")
        self.assertEqual(put["outcome"], "OK", put)
        self.assertEqual(put["revision"], first["revision"] + 1)

        got = self.one("range", p, prefix_end(p))
        self.assertEqual(got["outcome"], "OK", got)
        rev, kvs = ctl_kvs(self.ep, p)
        self.assertEqual(got["revision"], rev)
        self.assertEqual(got["kvs"], kvs)
        self.assertEqual(got["count"], 2)
        single = self.one("range", p + "m1")
        self.assertEqual(single["kvs"], [kv for kv in kvs if kv["key"] == p + "m1"])
        none = self.one("range", "/t1/absent")
        self.assertEqual((none["outcome"], none["count"], none["kvs"]), ("OK", 0, []))

    def test_watch_from_old_revision_replays_then_goes_live(self):
        p = "/t2/"
        revs = []
        for i in range(3):
            r = self.one("put", p + "k%d" % i, "v%d" % i)
            revs.append(r["revision"])
        harness.etcdctl(self.ep, "put", "/t2x/other", "x")  # outside the prefix
        lines = run_probe(self.ep, "watch", p, str(revs[0]), "3")
        self.assertTrue(lines[0]["created"], lines)
        events = [ev for line in lines[1:] for ev in line["events"]]
        self.assertEqual([(e["type"], e["kv"]["key"], e["kv"]["value"], e["kv"]["mod_revision"])
                          for e in events],
                         [("PUT", p + "k%d" % i, "v%d" % i, revs[i]) for i in range(3)])
        self.assertTrue(all(line["watch_id"] == lines[0]["watch_id"] for line in lines))

        # live: a watch from now sees a put made after it was created
        proc = subprocess.Popen([probe_bin(), "--timeout", str(CALL_TIMEOUT_MS), self.ep,
                                 "watch", p, "0", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, env=harness.clean_env())
        try:
            created = json.loads(proc.stdout.readline())
            self.assertTrue(created["created"], created)
            rc, _, err = harness.etcdctl(self.ep, "put", p + "live", "L")
            self.assertEqual(rc, 0, err)
            out, _ = proc.communicate(timeout=PROBE_RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        [line] = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
        self.assertEqual([(e["kv"]["key"], e["kv"]["value"]) for e in line["events"]],
                         [(p + "live", "L")])

    def test_compacted_start_is_canceled_with_compact_revision(self):
        p = "/t3/"
        first = self.one("put", p + "a", "1")
        for v in ("2", "3"):
            self.one("put", p + "a", v)
        last = self.one("put", p + "b", "4")
        compact_to = last["revision"] - 1
        c = self.one("compact", str(compact_to))
        self.assertEqual(c["outcome"], "OK", c)
        lines = run_probe(self.ep, "watch", p, str(first["revision"]), "1")
        self.assertTrue(lines[0]["created"], lines)
        self.assertTrue(lines[-1]["canceled"], lines)
        self.assertEqual(lines[-1]["compact_revision"], compact_to)
        self.assertNotIn(True, [line.get("ended") for line in lines])
        # a Range at a compacted revision: etcd's gRPC error, passed on
        old = self.one("range-at", p + "a", str(first["revision"]))
        self.assertEqual((old["outcome"], old["code"]), ("GRPC", 11), old)
        self.assertIn("compacted", old["message"])
        at = self.one("range-at", p + "a", str(compact_to))
        self.assertEqual(at["outcome"], "OK", at)
        self.assertEqual(at["kvs"][0]["value"], "3")

    def test_progress_request_is_answered_on_the_watch_stream(self):
        p = "/t4/"
        lines = run_probe(self.ep, "watch-progress", p)
        self.assertTrue(lines[0]["created"], lines)
        progress = [line for line in lines if line.get("watch_id") == -1]
        self.assertEqual(len(progress), 1, lines)
        rev, _ = ctl_kvs(self.ep, p)
        self.assertGreater(progress[0]["revision"], 0)
        self.assertLessEqual(progress[0]["revision"], rev)
        # after the cancel the same connection still answers
        self.assertEqual(lines[-1]["outcome"], "OK", lines)

    def test_dead_endpoint_is_unsent_at_the_deadline(self):
        dead = "http://127.0.0.1:%d" % harness.free_port()
        t0 = time.monotonic()
        r = self.one_at(dead, "put", "/t5/k", "v", timeout_ms=SHORT_CALL_TIMEOUT_MS)
        self.assertEqual(r["outcome"], "UNSENT", r)
        self.assertGreaterEqual(time.monotonic() - t0, SHORT_CALL_TIMEOUT_MS / 1000.0 * 0.9)
        self.assertEqual(ctl_kvs(self.ep, "/t5/")[1], [])

    def one_at(self, ep, *args, **kw):
        lines = run_probe(ep, *args, **kw)
        self.assertEqual(len(lines), 1, lines)
        return lines[0]

    def test_call_to_stopped_etcd_is_unknown_at_the_deadline(self):
        etcd = self.cluster.proc(0)
        proc = subprocess.Popen([probe_bin(), "--timeout", str(SHORT_CALL_TIMEOUT_MS),
                                 "--keepalive", "60000", self.ep, "range-wait", "/t6/k"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=harness.clean_env())
        stopped = False
        try:
            first = json.loads(proc.stdout.readline())
            self.assertEqual(first["outcome"], "OK", first)
            self.assertEqual(json.loads(proc.stdout.readline()), {"ready": True})
            os.kill(etcd.pid, signal.SIGSTOP)
            stopped = True
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=PROBE_RUN_TIMEOUT_S)
        finally:
            if stopped:
                os.kill(etcd.pid, signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        [r] = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
        self.assertEqual(r["outcome"], "UNKNOWN", r)
        self.assertIn("deadline", r["message"])
        # etcd is back and answers
        harness.wait_until(lambda: self.one("range", "/t6/k")["outcome"] == "OK", 20,
                           what="etcd answering after SIGCONT")


if __name__ == "__main__":
    unittest.main()
