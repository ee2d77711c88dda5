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
AUTH_TOKEN_TTL_S = 1


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
            self.assertEqual(proc.returncode, 0)  # sanitizer builds: no report
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

    def test_leases_grant_keepalive_revoke(self):
        g = self.one("lease-grant", "30")
        self.assertEqual(g["outcome"], "OK", g)
        self.assertEqual(g["ttl"], 30)
        lid = str(g["id"])
        rc, out, err = harness.etcdctl(self.ep, "put", "--lease", "%x" % g["id"], "/t7/k", "v")
        self.assertEqual(rc, 0, err)
        k = self.one("lease-keepalive", lid)
        self.assertEqual((k["outcome"], k["id"]), ("OK", g["id"]), k)
        self.assertGreater(k["ttl"], 0)
        r = self.one("lease-revoke", lid)
        self.assertEqual(r["outcome"], "OK", r)
        self.assertEqual(ctl_kvs(self.ep, "/t7/")[1], [])  # its key went with it
        # a keep-alive of a lease that is gone: etcd answers TTL 0
        k = self.one("lease-keepalive", lid)
        self.assertEqual((k["outcome"], k["ttl"]), ("OK", 0), k)
        # revoking it again: etcd's NOT_FOUND, passed on
        r = self.one("lease-revoke", lid)
        self.assertEqual((r["outcome"], r["code"]), ("GRPC", 5), r)
        self.assertIn("lease not found", r["message"])

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
            harness.sigstop(etcd.pid)
            stopped = True
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=PROBE_RUN_TIMEOUT_S)
            self.assertEqual(proc.returncode, 0)  # sanitizer builds: no report
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


def read_json_line(proc, what):
    line = proc.stdout.readline()
    if not line:
        raise AssertionError("etcd_probe ended before %s (rc=%r)" % (what, proc.poll()))
    return json.loads(line)


class EtcdClientFailover(unittest.TestCase):
    """A 3-member etcd cluster per test; the member the client is on is killed
    with SIGKILL, and the client must move to another one."""

    def setUp(self):
        if not os.path.exists(probe_bin()):
            raise unittest.SkipTest("etcd_probe not built at %s" % probe_bin())
        self.workdir = tempfile.mkdtemp(prefix="disco-etcdc-fo-")
        self.cluster = harness.EtcdCluster(self.workdir, size=3)
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        self.addCleanup(self.cluster.close)
        self.procs = []
        self.addCleanup(self._stop_probes)

    def _stop_probes(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def start_probe(self, *args):
        p = subprocess.Popen([probe_bin(), "--timeout", str(CALL_TIMEOUT_MS),
                              "--keepalive", "1000", self.cluster.endpoints()] + list(args),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=harness.clean_env())
        self.procs.append(p)
        return p

    def kill_member_at(self, endpoint):
        i = self.cluster.client_urls.index(endpoint)
        self.cluster.kill(i)
        return [u for u in self.cluster.client_urls if u != endpoint]

    def test_calls_move_to_another_member(self):
        rc, _, err = harness.etcdctl(self.cluster.endpoints(), "put", "/f/k", "v")
        self.assertEqual(rc, 0, err)
        proc = self.start_probe("ranges", "/f/k", "40", "150")
        first = read_json_line(proc, "the first Range")
        self.assertEqual(first["outcome"], "OK", first)
        on = first["endpoint"]
        self.kill_member_at(on)
        out, _ = proc.communicate(timeout=PROBE_RUN_TIMEOUT_S)
        self.assertEqual(proc.returncode, 0)  # sanitizer builds: no report
        rest = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
        self.assertEqual(len(rest), 39, rest)
        # In flight at the kill: UNKNOWN; during an election: etcd's errors. Never UNSENT
        # (the deadline is far) and in the end answers from a member still alive.
        self.assertTrue(all(r["outcome"] in ("OK", "UNKNOWN", "GRPC") for r in rest), rest)
        moved = [r for r in rest if r["outcome"] == "OK" and r["endpoint"] != on]
        self.assertTrue(moved, rest)
        self.assertEqual(rest[-1]["outcome"], "OK", rest[-1])
        self.assertNotEqual(rest[-1]["endpoint"], on)
        self.assertEqual(rest[-1]["kvs"][0]["value"], "v")

    def test_a_silent_member_is_left_after_an_unanswered_ping(self):
        # SIGSTOP: the socket stays open but nothing answers; only the
        # keep-alive PING (--keepalive 1000 ms) can tell.
        proc = self.start_probe("ranges", "/f/k", "40", "200")
        first = read_json_line(proc, "the first Range")
        self.assertEqual(first["outcome"], "OK", first)
        on = first["endpoint"]
        harness.sigstop(self.cluster.proc(self.cluster.client_urls.index(on)).pid)
        out, _ = proc.communicate(timeout=PROBE_RUN_TIMEOUT_S)
        self.assertEqual(proc.returncode, 0)  # sanitizer builds: no report
        rest = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
        self.assertEqual(len(rest), 39, rest)
        self.assertTrue(all(r["outcome"] in ("OK", "UNKNOWN", "GRPC") for r in rest), rest)
        self.assertEqual(rest[-1]["outcome"], "OK", rest[-1])
        self.assertNotEqual(rest[-1]["endpoint"], on)

    def test_watch_ends_and_is_created_again_on_another_member(self):
        proc = self.start_probe("watch-resume", "/fw/", "0", "1")
        created = read_json_line(proc, "the watch's creation")
        self.assertTrue(created["created"], created)
        on = created["endpoint"]
        survivors = self.kill_member_at(on)
        ended = read_json_line(proc, "the end of the watch")
        self.assertEqual(ended.get("ended"), True, ended)
        again = read_json_line(proc, "the watch created again")
        self.assertTrue(again["created"], again)
        self.assertNotEqual(again["endpoint"], on)
        harness.wait_until(lambda: harness.etcdctl(",".join(survivors), "put", "/fw/x", "X")[0]
                           == 0, 30, what="a put on the surviving members")
        out, _ = proc.communicate(timeout=PROBE_RUN_TIMEOUT_S)
        self.assertEqual(proc.returncode, 0)  # sanitizer builds: no report
        lines = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
        events = [e for line in lines for e in line.get("events", [])]
        self.assertEqual([(e["kv"]["key"], e["kv"]["value"]) for e in events], [("/fw/x", "X")])


class EtcdClientTls(unittest.TestCase):
    """https:// endpoints: the server's certificate checked against --cacert,
    a client certificate for etcd's --client-cert-auth (a CA made at test
    time with openssl, as test_tls.py makes its own)."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(probe_bin()):
            raise unittest.SkipTest("etcd_probe not built at %s" % probe_bin())
        import test_tls  # its throw-away CA helpers
        cls.workdir = tempfile.mkdtemp(prefix="disco-etcdc-tls-")
        d = cls.pki = os.path.join(cls.workdir, "pki")
        os.mkdir(d)
        test_tls._make_ca(d, "ca")
        test_tls._make_ca(d, "rogue")
        test_tls._make_cert(d, "ca", "server", "1001",
                            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
        test_tls._make_cert(d, "ca", "client", "3003", "extendedKeyUsage=clientAuth")
        f = lambda n: os.path.join(d, n)  # noqa: E731
        cls.cluster = harness.EtcdCluster(
            cls.workdir, size=1, scheme="https",
            extra_args=["--cert-file", f("server.pem"), "--key-file", f("server.key"),
                        "--trusted-ca-file", f("ca.pem"), "--client-cert-auth"])
        cls.ep = cls.cluster.client_urls[0]
        cls.tls_opts = ["--cacert", f("ca.pem"), "--cert", f("client.pem"),
                        "--key", f("client.key")]
        harness.wait_until(
            lambda: harness.etcdctl(cls.ep, *(cls.tls_opts + ["endpoint", "health"]))[0] == 0,
            harness.ETCD_HEALTH_TIMEOUT_S, what="etcd over TLS healthy")

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def test_calls_and_watch_over_mutual_tls(self):
        put = run_probe(self.ep, "put", "/tls/k", "v", opts=self.tls_opts)
        self.assertEqual(put[0]["outcome"], "OK", put)
        [got] = run_probe(self.ep, "range", "/tls/k", opts=self.tls_opts)
        self.assertEqual((got["outcome"], got["kvs"][0]["value"]), ("OK", "v"), got)
        self.assertTrue(got["endpoint"].startswith("https://"))
        lines = run_probe(self.ep, "watch", "/tls/", str(put[0]["revision"]), "1",
                          opts=self.tls_opts)
        self.assertEqual([e["kv"]["key"] for line in lines for e in line["events"]], ["/tls/k"])

    def test_untrusted_server_or_no_client_cert_is_unsent(self):
        f = lambda n: os.path.join(self.pki, n)  # noqa: E731
        rogue = ["--cacert", f("rogue.pem"), "--cert", f("client.pem"), "--key", f("client.key")]
        [r] = run_probe(self.ep, "put", "/tls/x", "1", timeout_ms=SHORT_CALL_TIMEOUT_MS,
                        opts=rogue)
        self.assertEqual(r["outcome"], "UNSENT", r)
        [r] = run_probe(self.ep, "put", "/tls/x", "1", timeout_ms=SHORT_CALL_TIMEOUT_MS,
                        opts=["--cacert", f("ca.pem")])
        self.assertEqual(r["outcome"], "UNSENT", r)
        [r] = run_probe(self.ep, "range", "/tls/x", opts=self.tls_opts)
        self.assertEqual((r["outcome"], r["count"]), ("OK", 0), r)


class EtcdClientAuth(unittest.TestCase):
    """etcd with auth enabled: Auth/Authenticate on each connection, then the
    token on every call and on the Watch stream."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(probe_bin()):
            raise unittest.SkipTest("etcd_probe not built at %s" % probe_bin())
        cls.workdir = tempfile.mkdtemp(prefix="disco-etcdc-auth-")
        # simple tokens live AUTH_TOKEN_TTL_S seconds of disuse
        cls.cluster = harness.EtcdCluster(cls.workdir, size=1,
                                          extra_args=["--auth-token-ttl", str(AUTH_TOKEN_TTL_S)])
        cls.ep = cls.cluster.client_urls[0]
        for args in (("user", "add", "root", "--new-user-password", "rootpw"),
                     ("auth", "enable")):
            rc, _, err = harness.etcdctl(cls.ep, *args)
            assert rc == 0, (args, err)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def test_user_and_password(self):
        opts = ["--user", "root", "--password", "rootpw"]
        [put] = run_probe(self.ep, "put", "/auth/k", "v", opts=opts)
        self.assertEqual(put["outcome"], "OK", put)
        rc, out, err = harness.etcdctl(self.ep, "--user", "root:rootpw", "get", "/auth/k")
        self.assertEqual((rc, out.split()), (0, ["/auth/k", "v"]), err)
        lines = run_probe(self.ep, "watch", "/auth/", str(put["revision"]), "1", opts=opts)
        self.assertEqual([e["kv"]["value"] for line in lines for e in line["events"]], ["v"])

    def test_an_expired_token_is_renewed_and_the_call_sent_again(self):
        opts = ["--user", "root", "--password", "rootpw", "--keepalive", "60000"]
        gap_ms = int(AUTH_TOKEN_TTL_S * 1000 * 2.5)
        lines = run_probe(self.ep, "ranges", "/auth/k", "2", str(gap_ms), opts=opts)
        self.assertEqual([r["outcome"] for r in lines], ["OK", "OK"], lines)

    def test_a_watch_created_after_the_streams_token_expired(self):
        # The Watch stream carries the token it was opened with; once that
        # expired, etcd refuses every create on it (watch_id -1, canceled,
        # "invalid auth token"). The client gets a new token and a new
        # stream; the late watch is created there and sees the put.
        opts = ["--user", "root", "--password", "rootpw", "--keepalive", "60000"]
        gap_ms = int(AUTH_TOKEN_TTL_S * 1000 * 2.5)
        lines = run_probe(self.ep, "watch-late", "/late/", str(gap_ms), opts=opts)
        late = [line for line in lines if line.get("tag") == "late"]
        self.assertEqual([line for line in lines if line.get("canceled")], [], lines)
        self.assertEqual([e["kv"]["value"] for line in late for e in line.get("events", [])],
                         ["late"], lines)

    def test_wrong_password_or_none_is_etcds_refusal(self):
        [r] = run_probe(self.ep, "put", "/auth/x", "1",
                        opts=["--user", "root", "--password", "wrong"])
        self.assertEqual(r["outcome"], "GRPC", r)
        self.assertIn("authentication failed", r["message"])
        [r] = run_probe(self.ep, "range", "/auth/x")
        self.assertEqual(r["outcome"], "GRPC", r)
        self.assertIn("user name is empty", r["message"])


if __name__ == "__main__":
    unittest.main()
