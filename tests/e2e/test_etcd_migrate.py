#!/usr/bin/env python3
"""End-to-end: `disco migrate` moves an embedded store onto etcd.

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_etcd_migrate.py -v

An embedded disco gets two tokens: one complete, one mid-bootstrap (one of
three members registered, and that member parked on a long poll with the
waitIndex the discovery protocol gives it). The migration is refused while
that disco runs (the store's lock). Then disco is stopped and the store is
copied into an empty prefix of a real etcd 3.4; two `disco serve
--etcd-endpoints` instances then serve the same listings, with the same
indexes, as the embedded store did; the parked member's long poll, asked
again with its old waitIndex, is answered by the next registration and by
nothing that was copied; the token completes through both instances; every
index made after the migration is above every index made before. A second
migration into the same prefix is refused, and an instance refuses a prefix
whose migration did not finish, and an instance that was already running
on the prefix stops its mirror (its indexes would be wrong).

Every process listens on 127.0.0.1 on ports chosen at run time and is
stopped by PID. No timing is asserted beyond generous bounds.
"""

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SLOW = 10 if os.environ.get("DISCO_WRAPPER") else 1
CONVERGE_TIMEOUT_S = 10.0 * SLOW
MIGRATE_TIMEOUT_S = 60.0 * SLOW
LONG_POLL_S = 30.0 * SLOW
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PREFIX = "/moved/"
MINAGE_S = 6 * SLOW


def keys_url(base, token, rest=""):
    return "%s/v2/keys/_etcd/registry/%s%s" % (base, token, rest)


def run_migrate(data_dir, endpoints, prefix=PREFIX):
    argv = harness.disco_wrapper() + [harness.disco_bin(), "migrate", "--data-dir", data_dir,
                                      "--etcd-endpoints", endpoints, "--etcd-prefix", prefix]
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                        timeout=MIGRATE_TIMEOUT_S, env=harness.clean_env())
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def nodes_of(listing):
    """{key: (value, createdIndex, modifiedIndex, is_dir)} of a recursive listing."""
    out = {}

    def walk(n):
        out[n["key"]] = (n.get("value"), n.get("createdIndex"), n.get("modifiedIndex"),
                         bool(n.get("dir")))
        for c in n.get("nodes", []):
            walk(c)
    walk(listing["node"])
    return out


class EtcdMigrateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcdmig-")
        cls.data_dir = os.path.join(cls.workdir, "disco-data")
        cls.etcd = harness.EtcdCluster(cls.workdir, size=1)
        cls.procs = []

    @classmethod
    def tearDownClass(cls):
        for p in cls.procs:
            p.stop()
        cls.etcd.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def start(self, extra=()):
        proc, base = harness.start_disco(self.workdir, list(extra), wait_timeout="60s")
        self.procs.append(proc)
        return proc, base

    def put(self, base, token, name, value):
        return harness.http("PUT", keys_url(base, token, "/%s?prevExist=false" % name),
                            "value=" + value, FORM)

    def listing(self, base, token):
        st, h, body = harness.http("GET", keys_url(base, token) + "?recursive=true&sorted=true")
        self.assertEqual(st, 200, body)
        return json.loads(body), int(h["x-etcd-index"])

    def new_token(self, base, size):
        st, _, body = harness.http("GET", base + "/new?size=%d" % size)
        self.assertEqual(st, 200, body)
        return body.decode().strip().rsplit("/", 1)[1]

    def long_poll(self, base, token, wait_index, out):
        """GET ...?wait=true&waitIndex=N&recursive=true in a thread; its
        (status, body) or the exception goes to `out`."""
        def run():
            try:
                st, _, body = harness.http(
                    "GET", keys_url(base, token) + "?wait=true&recursive=true&waitIndex=%d"
                    % wait_index, timeout=LONG_POLL_S)
                out.put((st, body))
            except OSError as e:
                out.put(e)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def test_migrate_keeps_tokens_and_indexes(self):
        # Indexes the store no longer keeps: a token removed by age whose
        # events sit between those of a token that stays. (minage bounds
        # how long the rest may take, generously.)
        sweeping, e = self.start(["--minage", "%ds" % MINAGE_S, "--gcfreq", "200ms"])
        gone = self.new_token(e, 3)
        threading.Event().wait(MINAGE_S / 2)  # gone is older than done by this
        done = self.new_token(e, 2)
        for name in ("m1", "extra", "m2"):
            st, _, body = self.put(e, done, name, "%s=http://10.0.0.1:2380" % name)
            self.assertEqual(st, 201, body)
            st, _, body = self.put(e, gone, name, "x=http://10.0.0.9:2380")
            self.assertEqual(st, 201, body)
        st, _, body = harness.http("DELETE", keys_url(e, done, "/extra"))
        self.assertEqual(st, 200, body)
        harness.wait_until(lambda: harness.http("GET", keys_url(e, gone))[0] == 404,
                           2 * MINAGE_S, what="the old token removed")
        sweeping.stop()
        embedded, e = self.start()
        st, _, body = harness.http("GET", keys_url(e, done))
        self.assertEqual(st, 200, "the token that stays was removed too: %r" % body)
        # A token mid-bootstrap: a1 registered, then (as etcd's discovery
        # client does) a GET and a long poll from its X-Etcd-Index + 1.
        mid = self.new_token(e, 3)
        st, _, body = self.put(e, mid, "a1", "a1=http://10.0.0.2:2380")
        self.assertEqual(st, 201, body)
        before_mid, before_index = self.listing(e, mid)
        before_done, _ = self.listing(e, done)
        parked = queue.Queue()
        self.long_poll(e, mid, before_index + 1, parked)

        # The store is in use: refused, nothing written to etcd.
        rc, out, err = run_migrate(self.data_dir, self.etcd.endpoints())
        self.assertEqual(rc, 1, out + err)
        self.assertIn("in use", err)
        rc, out, _ = harness.etcdctl(self.etcd.endpoints(), "get", "--prefix", PREFIX,
                                     "--keys-only")
        self.assertEqual((rc, out.strip()), (0, ""))

        embedded.stop()
        # etcd's revisions are not the store's indexes: other writes to the
        # cluster came first.
        for i in range(5):
            rc, _, err = harness.etcdctl(self.etcd.endpoints(), "put", "/other/%d" % i, "x")
            self.assertEqual(rc, 0, err)
        rc, out, err = run_migrate(self.data_dir, self.etcd.endpoints())
        self.assertEqual(rc, 0, out + err)
        self.assertIn("done", out)
        sys.stderr.write(out)

        eps = self.etcd.endpoints()
        _, a = self.start(["--data-dir", "", "--etcd-endpoints", eps, "--etcd-prefix", PREFIX])
        _, b = self.start(["--data-dir", "", "--etcd-endpoints", eps, "--etcd-prefix", PREFIX])
        for base in (a, b):
            got_done, index = self.listing(base, done)
            self.assertEqual(nodes_of(got_done), nodes_of(before_done))
            got_mid, _ = self.listing(base, mid)
            self.assertEqual(nodes_of(got_mid), nodes_of(before_mid))
            self.assertGreaterEqual(index, before_index)

        # The parked member asks again with the waitIndex it had: nothing
        # copied answers it; the next registration (through B) does.
        answer = queue.Queue()
        self.long_poll(a, mid, before_index + 1, answer)
        st, _, body = self.put(b, mid, "a2", "a2=http://10.0.0.3:2380")
        self.assertEqual(st, 201, body)
        a2_index = json.loads(body)["node"]["createdIndex"]
        self.assertGreater(a2_index, before_index)
        got = answer.get(timeout=LONG_POLL_S)
        self.assertNotIsInstance(got, Exception)
        st, body = got
        self.assertEqual(st, 200, body)
        ev = json.loads(body)
        self.assertEqual((ev["action"], ev["node"]["key"], ev["node"]["createdIndex"]),
                         ("create", "/_etcd/registry/%s/a2" % mid, a2_index))
        # The token completes through A; both instances agree.
        st, _, body = self.put(a, mid, "a3", "a3=http://10.0.0.4:2380")
        self.assertEqual(st, 201, body)
        self.assertGreater(json.loads(body)["node"]["createdIndex"], a2_index)
        listings = [harness.wait_until(
            lambda base=base: (lambda l: l if len(l["node"].get("nodes", [])) == 3 else None)(
                self.listing(base, mid)[0]), CONVERGE_TIMEOUT_S, what="a3 on every instance")
            for base in (a, b)]
        self.assertEqual(nodes_of(listings[0]), nodes_of(listings[1]))
        members = sorted(k.rsplit("/", 1)[1] for k, v in nodes_of(listings[0]).items()
                         if not v[3] and "/_config" not in k)
        self.assertEqual(members, ["a1", "a2", "a3"])

        # A second migration into the same prefix is refused; the prefix
        # is as it was.
        rc, out, err = run_migrate(self.data_dir, self.etcd.endpoints())
        self.assertEqual(rc, 1, out + err)
        self.assertIn("not empty", err)
        self.assertEqual(nodes_of(self.listing(a, mid)[0]), nodes_of(listings[0]))

    def test_keys_with_a_ttl_keep_their_expiry(self):
        # Keys with a TTL are copied with an etcd lease of what is left of
        # it: an instance shows the store's expiration and a ttl of the
        # time left, and etcd expires the key (v2 "expire"). A key whose
        # TTL ran out while the store was stopped is expired after the
        # copy, with an index above the store's, as the embedded store's
        # next sweep would have.
        prefix = "/ttl/"
        long_ttl, short_ttl, gone_ttl = 30 * SLOW, 5 * SLOW, 2
        data = os.path.join(self.workdir, "ttl-data")
        embedded, e = self.start(["--data-dir", data])
        token = self.new_token(e, 3)
        made = {}
        for name, ttl in (("gone", gone_ttl), ("short", short_ttl), ("long", long_ttl)):
            st, _, body = harness.http("PUT", keys_url(e, token, "/" + name),
                                       "value=%s&ttl=%d" % (name, ttl), FORM)
            self.assertEqual(st, 201, body)
            made[name] = (json.loads(body)["node"], time.monotonic())
        embedded.stop()
        threading.Event().wait(max(0.0, made["gone"][1] + gone_ttl + 0.5 - time.monotonic()))
        rc, out, err = run_migrate(data, self.etcd.endpoints(), prefix)
        self.assertEqual(rc, 0, out + err)
        sys.stderr.write(out)
        _, a = self.start(["--data-dir", "", "--etcd-endpoints", self.etcd.endpoints(),
                           "--etcd-prefix", prefix])

        st, _, body = harness.http("GET", keys_url(a, token, "/long"))
        self.assertEqual(st, 200, body)
        node = json.loads(body)["node"]
        self.assertEqual(node["expiration"], made["long"][0]["expiration"], node)
        left = long_ttl - (time.monotonic() - made["long"][1])
        self.assertLessEqual(abs(node["ttl"] - left), 2, (node, left))
        self.assertEqual(node["modifiedIndex"], made["long"][0]["modifiedIndex"])
        rc, out, err = harness.etcdctl(self.etcd.endpoints(), "get", "-w", "json",
                                       prefix + "k/%s/long" % token)
        self.assertEqual(rc, 0, err)
        self.assertNotEqual(json.loads(out)["kvs"][0].get("lease", 0), 0, out)

        # Watches from just after each key's write: etcd's expiry of the
        # short one, and the expiry of the one already gone at copy time.
        for name in ("short", "gone"):
            got = queue.Queue()
            index = made[name][0]["modifiedIndex"]
            self.long_poll_key(a, token, name, index + 1, got)
            got = got.get(timeout=LONG_POLL_S)
            self.assertNotIsInstance(got, Exception)
            st, body = got
            self.assertEqual(st, 200, body)
            ev = json.loads(body)
            self.assertEqual((ev["action"], ev["node"]["key"]),
                             ("expire", "/_etcd/registry/%s/%s" % (token, name)), ev)
            self.assertGreater(ev["node"]["modifiedIndex"], made["long"][0]["modifiedIndex"])
            st, _, body = harness.http("GET", keys_url(a, token, "/" + name))
            self.assertEqual(st, 404, body)
        st, _, body = harness.http("GET", keys_url(a, token, "/long"))
        self.assertEqual(st, 200, body)

    def long_poll_key(self, base, token, name, wait_index, out):
        def run():
            try:
                st, _, body = harness.http(
                    "GET", keys_url(base, token, "/%s?wait=true&waitIndex=%d" % (name, wait_index)),
                    timeout=LONG_POLL_S)
                out.put((st, body))
            except OSError as e:
                out.put(e)
        threading.Thread(target=run, daemon=True).start()

    def test_migration_under_a_running_instance_stops_its_mirror(self):
        # An instance on the (empty) prefix before the migration would go on
        # with the old indexes: its mirror stops and /health says so.
        prefix = "/live/"
        _, live = self.start(["--data-dir", "", "--etcd-endpoints", self.etcd.endpoints(),
                              "--etcd-prefix", prefix])
        data = os.path.join(self.workdir, "live-data")
        embedded, e = self.start(["--data-dir", data])
        self.new_token(e, 3)
        embedded.stop()
        rc, out, err = run_migrate(data, self.etcd.endpoints(), prefix)
        self.assertEqual(rc, 0, out + err)
        harness.wait_until(lambda: harness.http("GET", live + "/health")[0] == 503,
                           CONVERGE_TIMEOUT_S, what="the running instance's mirror stopped")
        _, new = self.start(["--data-dir", "", "--etcd-endpoints", self.etcd.endpoints(),
                             "--etcd-prefix", prefix])
        self.assertEqual(harness.http("GET", new + "/health")[0], 200)

    def test_no_store_refused(self):
        # A mistyped --data-dir (an existing directory without a store)
        # copies nothing, makes no store and claims nothing.
        empty = os.path.join(self.workdir, "not-a-store")
        os.makedirs(empty)
        rc, out, err = run_migrate(empty, self.etcd.endpoints(), "/never/")
        self.assertEqual(os.listdir(empty), [])
        self.assertEqual(rc, 1, out + err)
        self.assertIn("no disco store", err)
        rc, out, _ = harness.etcdctl(self.etcd.endpoints(), "get", "--prefix", "/never/",
                                     "--keys-only")
        self.assertEqual((rc, out.strip()), (0, ""))

    def test_unfinished_migration_refused_by_serve(self):
        prefix = "/half/"
        rc, _, err = harness.etcdctl(self.etcd.endpoints(), "put", prefix + "index_base",
                                     "migrating since 0 (pid 1)")
        self.assertEqual(rc, 0, err)
        binary = harness.disco_bin()
        cp = subprocess.run(harness.disco_wrapper() + [
            binary, "serve", "--addr", "127.0.0.1:%d" % harness.free_port(), "--data-dir", "",
            "--etcd-endpoints", self.etcd.endpoints(), "--etcd-prefix", prefix],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=MIGRATE_TIMEOUT_S,
            env=harness.clean_env())
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn(b"index_base", cp.stdout + cp.stderr)


if __name__ == "__main__":
    unittest.main()
