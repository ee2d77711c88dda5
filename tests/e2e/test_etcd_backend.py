#!/usr/bin/env python3
"""End-to-end: two disco instances on one real 3-member etcd 3.4 cluster
(`disco serve --etcd-endpoints`).

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_etcd_backend.py -v

What is checked (ETCD-BACKEND.md, design (a)): concurrent prevExist=false
registrations of the same keys through both instances give exactly one 201
per key and 412/105 for the rest, and both instances then show the same
listing with the same indexes; a long poll parked on B is answered by a
registration made on A; a real 3-member etcd cluster bootstraps through B
from a token made on A; etcd's v3 discovery client (python3-etcd3) goes
through an instance on the etcd backend; /health reports the mirror.

Every process listens on 127.0.0.1 on ports chosen at run time and is
stopped by PID. No timing is asserted beyond generous bounds.
"""

import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

try:
    import etcd3  # noqa: E402,F401
except ImportError:  # pragma: no cover - Debian's python3-etcd3 (CHECK_DEPS)
    etcd3 = None
    SYSTEM_PYTHON = "/usr/bin/python3"
    if (os.access(SYSTEM_PYTHON, os.X_OK) and not os.environ.get("DISCO_V3_REEXEC") and
            os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)):
        os.environ["DISCO_V3_REEXEC"] = "1"
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])

if etcd3 is not None:
    import test_v3  # noqa: E402  (its v3discovery client)

SLOW = 10 if os.environ.get("DISCO_WRAPPER") else 1
CONVERGE_TIMEOUT_S = 10.0 * SLOW
CLUSTER_FORM_TIMEOUT_S = 60.0 * SLOW
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
N_KEYS = 12


def keys_url(base, token, rest=""):
    return "%s/v2/keys/_etcd/registry/%s%s" % (base, token, rest)


class EtcdBackendTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcdb-")
        # B lists the members the other way round: its watch and writes go
        # through another etcd member than A's. The tests make more tokens
        # on A than --new-rate's default burst allows (a fast run got 429).
        cls.etcd, (cls.disco_a, cls.a), (cls.disco_b, cls.b) = \
            harness.start_etcd_and_two_discos(cls.workdir, size=3,
                                              extra_args=("--new-rate", "0"))

    @classmethod
    def tearDownClass(cls):
        harness.stop_etcd_and_discos(cls.etcd, cls.disco_a, cls.disco_b)
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def new_token(self, base, size=3):
        st, _, body = harness.http("GET", base + "/new?size=%d" % size)
        self.assertEqual(st, 200, body)
        url = body.decode().strip()
        return url, url.rsplit("/", 1)[1]

    def listing(self, base, token):
        st, h, body = harness.http("GET", keys_url(base, token) + "?recursive=true&sorted=true")
        self.assertEqual(st, 200, body)
        return json.loads(body)

    def wait_listing(self, base, token, pred, what):
        return harness.wait_until(lambda: (lambda l: l if pred(l) else None)(
            self.listing(base, token)), CONVERGE_TIMEOUT_S, what=what)

    def test_health_reports_mirror_and_writes(self):
        for base in (self.a, self.b):
            st, _, body = harness.http("GET", base + "/health")
            self.assertEqual(st, 200, body)
            self.assertIn(b"writes: OK", body)
            st, _, body = harness.http("GET", base + "/health?writes=1")
            self.assertEqual(st, 200, body)

    def test_token_made_on_a_is_read_on_b(self):
        _, tok = self.new_token(self.a)
        got = self.wait_listing(self.b, tok, lambda l: True, "the token on B")
        self.assertEqual(got["node"]["key"], "/_etcd/registry/" + tok)
        st, _, body = harness.http("GET", keys_url(self.b, tok, "/_config/size"))
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["node"]["value"], "3")

    def test_concurrent_registrations_one_winner_per_key(self):
        _, tok = self.new_token(self.a, size=N_KEYS)
        self.wait_listing(self.b, tok, lambda l: True, "the token on B")
        results = {}
        lock = threading.Lock()

        def register(base, name, i):
            st, h, body = harness.http("PUT", keys_url(base, tok, "/m%d?prevExist=false" % i),
                                       "value=%s-%d" % (name, i), FORM)
            with lock:
                results[(name, i)] = (st, body)

        threads = [threading.Thread(target=register, args=(base, name, i))
                   for i in range(N_KEYS) for base, name in ((self.a, "a"), (self.b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30 * SLOW)
        self.assertFalse(any(t.is_alive() for t in threads), "a registration did not finish")
        winners = {}
        for i in range(N_KEYS):
            pair = [results[("a", i)], results[("b", i)]]
            created = [(n, b) for n, (st, b) in zip("ab", pair) if st == 201]
            self.assertEqual(len(created), 1, "key m%d: %r" % (i, pair))
            loser = [(st, b) for st, b in pair if st != 201][0]
            self.assertEqual(loser[0], 412, loser)
            self.assertEqual(json.loads(loser[1])["errorCode"], 105, loser)
            node = json.loads(created[0][1])["node"]
            winners["/_etcd/registry/%s/m%d" % (tok, i)] = (node["value"], node["createdIndex"])
        # Both instances converge on the same listing, indexes included.
        want = sorted(winners.items())

        def nodes(l):
            return sorted((n["key"], (n["value"], n["createdIndex"]))
                          for n in l["node"].get("nodes", []) if not n.get("dir"))

        la = self.wait_listing(self.a, tok, lambda l: nodes(l) == want, "A's listing")
        lb = self.wait_listing(self.b, tok, lambda l: nodes(l) == want, "B's listing")
        self.assertEqual(la, lb)
        self.assertEqual(len({ci for _, ci in winners.values()}), N_KEYS,
                         "createdIndex values must be distinct")

    def test_registration_on_b_right_after_new_on_a(self):
        # B's mirror may not have the token yet when the member's PUT comes:
        # the refusal is checked again once B has caught up with etcd, so
        # the member never sees a 404 for a token that exists.
        for i in range(20):
            _, tok = self.new_token(self.a)
            st, _, body = harness.http("PUT", keys_url(self.b, tok, "/m1?prevExist=false"),
                                       "value=x", FORM)
            self.assertEqual(st, 201, "round %d: %r" % (i, body))
            st, _, body = harness.http("PUT", keys_url(self.b, tok, "/m1?prevExist=false"),
                                       "value=x", FORM)
            self.assertEqual(st, 412, body)

    def test_long_poll_on_b_answered_by_registration_on_a(self):
        _, tok = self.new_token(self.a)
        self.wait_listing(self.b, tok, lambda l: True, "the token on B")
        answer = {}

        def poll():
            answer["r"] = harness.http("GET", keys_url(self.b, tok) + "?wait=true&recursive=true",
                                       timeout=30 * SLOW)

        t = threading.Thread(target=poll)
        t.start()
        # The poll is parked before the write (B has a connection open).
        harness.wait_until(lambda: not t.is_alive() or _parked(self.b) > 0, 10 * SLOW,
                           what="the long poll to park on B")
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m1"), "value=x", FORM)
        self.assertEqual(st, 201, body)
        created = json.loads(body)["node"]["createdIndex"]
        t.join(30 * SLOW)
        self.assertFalse(t.is_alive())
        st, h, body = answer["r"]
        self.assertEqual(st, 200, body)
        ev = json.loads(body)
        self.assertEqual(ev["action"], "set")  # a PUT without prevExist
        self.assertEqual(ev["node"]["key"], "/_etcd/registry/%s/m1" % tok)
        self.assertEqual(ev["node"]["createdIndex"], created)

    def test_real_cluster_bootstraps_through_b_from_token_on_a(self):
        url_a, tok = self.new_token(self.a, size=3)
        self.wait_listing(self.b, tok, lambda l: True, "the token on B")
        url_b = "%s/%s" % (self.b, tok)
        members = []
        try:
            for i in range(3):
                name = "boot%d" % i
                proc, peer, client = harness.start_etcd_member(self.workdir, name, url_b)
                members.append((name, proc, peer, client))

            def agreed():
                views = []
                for name, proc, _, client in members:
                    if not proc.alive():
                        raise harness.StopWaiting("member %s exited (%r)"
                                                  % (name, proc.returncode))
                    rc, out, _ = harness.etcdctl(client, "member", "list", "-w", "json",
                                                 timeout=6)
                    if rc != 0:
                        return None
                    lst = json.loads(out)
                    ms = lst.get("members", [])
                    if len(ms) != 3 or any(not m.get("name") for m in ms):
                        return None
                    views.append((lst["header"]["cluster_id"],
                                  sorted((m["name"], tuple(m["peerURLs"])) for m in ms)))
                return views

            views = harness.wait_until(agreed, CLUSTER_FORM_TIMEOUT_S, interval=0.5,
                                       what="3 members to agree on a member list")
            self.assertEqual(len({cid for cid, _ in views}), 1, views)
            self.assertEqual(views[0][1], sorted((n, (p,)) for n, _, p, _ in members))
            # Both instances show the three registrations.
            for base in (self.a, self.b):
                l = self.wait_listing(base, tok, lambda l: len(
                    [n for n in l["node"].get("nodes", []) if not n.get("dir")]) == 3,
                    "3 members listed")
                self.assertEqual(len(l["node"]["nodes"]), 3, l)
        finally:
            for _, proc, _, _ in members:
                proc.stop()

    def test_half_through_a_half_through_b_form_one_cluster(self):
        # 2N members on one token of size N behind one URL whose connections
        # alternate between A and B (a load balancer: etcd derives its
        # cluster token from the discovery URL, so members must share it):
        # the first N registrations (by createdIndex) form one cluster; the
        # others find it full (etcd's v2 discovery lets racing members
        # register past the size and sorts them out by index).
        n = 3
        _, tok = self.new_token(self.a, size=n)
        self.wait_listing(self.b, tok, lambda l: True, "the token on B")
        lb = RoundRobin([self.a, self.b])
        members = {}
        try:
            for i in range(2 * n):
                name = "half%d" % i
                proc, peer, client = harness.start_etcd_member(self.workdir, name,
                                                               "%s/%s" % (lb.url, tok))
                members[name] = (proc, peer, client)

            def registered():
                l = self.listing(self.a, tok)
                nodes = [x for x in l["node"].get("nodes", []) if not x.get("dir")]
                return nodes if len(nodes) >= n else None

            nodes = harness.wait_until(registered, CLUSTER_FORM_TIMEOUT_S,
                                       what="%d registrations" % n)
            first = sorted(nodes, key=lambda x: x["createdIndex"])[:n]
            names = sorted(x["value"].split("=", 1)[0] for x in first)
            self.assertEqual(len(set(names)), n, nodes)

            def agreed():
                views = []
                for name in names:
                    proc, _, client = members[name]
                    if not proc.alive():
                        raise harness.StopWaiting("member %s exited" % name)
                    rc, out, _ = harness.etcdctl(client, "member", "list", "-w", "json",
                                                 timeout=6)
                    if rc != 0:
                        return None
                    lst = json.loads(out)
                    ms = lst.get("members", [])
                    if len(ms) != n or any(not m.get("name") for m in ms):
                        return None
                    views.append((lst["header"]["cluster_id"], sorted(m["name"] for m in ms)))
                return views

            views = harness.wait_until(agreed, CLUSTER_FORM_TIMEOUT_S, interval=0.5,
                                       what="the registered members to form a cluster")
            self.assertEqual(len({cid for cid, _ in views}), 1, views)
            self.assertEqual(views[0][1], names)
            for name, (proc, _, _) in members.items():
                if name in names:
                    continue
                harness.wait_until(lambda: "cluster is full" in proc.log() or not proc.alive(),
                                   CLUSTER_FORM_TIMEOUT_S, what="%s to find it full" % name)
                self.assertIn("cluster is full", proc.log())
            # Both instances list the same registrations, and both served.
            self.wait_listing(self.b, tok, lambda l: l == self.listing(self.a, tok), "B = A")
            self.assertGreater(min(lb.counts), 0, lb.counts)
        finally:
            for proc, _, _ in members.values():
                proc.stop()
            lb.close()

    def token_created_on_page(self, base, tok):
        """The "Created" instant the token's page shows (to the second)."""
        st, _, body = harness.http("GET", "%s/%s" % (base, tok),
                                   headers={"Accept": "text/html"})
        self.assertEqual(st, 200, body)
        m = re.search(r'id="created">(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)', body.decode())
        self.assertIsNotNone(m, body)
        return m.group(1)

    def test_instance_starts_after_etcd_compacted_the_history(self):
        _, tok = self.new_token(self.a, size=5)
        # The new instance loads the token a few seconds after it was made:
        # it must date it from its creation (P m/), not from the load.
        time.sleep(2.1)
        for i in range(3):
            st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m%d?prevExist=false" % i),
                                       "value=v%d" % i, FORM)
            self.assertEqual(st, 201, body)
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m0"), "value=w0", FORM)
        self.assertEqual(st, 200, body)
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/d/x?prevExist=false"),
                                   "value=deep", FORM)
        self.assertEqual(st, 201, body)
        self.etcd.compact_at_newest()
        proc, c = harness.start_disco(self.workdir, ["--etcd-endpoints", self.etcd.endpoints()])
        try:
            want = self.listing(self.a, tok)
            self.assertEqual(self.listing(c, tok), want)
            self.assertEqual(self.token_created_on_page(c, tok),
                             self.token_created_on_page(self.a, tok))
            # and it follows etcd from there
            st, _, body = harness.http("PUT", keys_url(c, tok, "/m9?prevExist=false"),
                                       "value=v9", FORM)
            self.assertEqual(st, 201, body)
            st, _, body = harness.http("PUT", keys_url(c, tok, "/m1?prevExist=false"),
                                       "value=again", FORM)
            self.assertEqual(st, 412, body)
            self.wait_listing(self.a, tok, lambda l: l == self.listing(c, tok), "A = C")
        finally:
            proc.stop()

    def test_instance_loaded_after_a_delete_writes_to_the_token(self):
        # The range an instance loads from shows no deletion, but the
        # delete rewrote the token's version key: a write guarded by it
        # must still go through on the new instance.
        _, tok = self.new_token(self.a, size=5)
        for i in range(2):
            st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m%d?prevExist=false" % i),
                                       "value=v%d" % i, FORM)
            self.assertEqual(st, 201, body)
        st, _, body = harness.http("DELETE", keys_url(self.a, tok, "/m1"))
        self.assertEqual(st, 200, body)
        self.etcd.compact_at_newest()
        proc, c = harness.start_disco(self.workdir, ["--etcd-endpoints", self.etcd.endpoints()])
        try:
            st, _, body = harness.http("PUT", keys_url(c, tok, "/m0?prevExist=true"),
                                       "value=w0", FORM)
            self.assertEqual(st, 200, body)
            # at the first try: the load read the version the delete wrote
            # (not learnt from a lost guard)
            st, _, body = harness.http("GET", c + "/metrics")
            self.assertEqual(st, 200, body)
            lost = [ln for ln in body.split(b"\n")
                    if ln.startswith(b'disco_etcd_txns_total{outcome="lost_guard"}')]
            self.assertEqual(lost, [b'disco_etcd_txns_total{outcome="lost_guard"} 0'])
            st, _, body = harness.http("DELETE", keys_url(c, tok, "/m0"))
            self.assertEqual(st, 200, body)
            self.wait_listing(self.a, tok, lambda l: l == self.listing(c, tok), "A = C")
        finally:
            proc.stop()

    @unittest.skipIf(etcd3 is None, "python3-etcd3 is not installed")
    def test_v3_discovery_client_through_etcd_backend(self):
        host, port = urllib.parse.urlsplit(self.b).hostname, urllib.parse.urlsplit(self.b).port
        n = 3
        tok = uuid.uuid4().hex
        c = etcd3.client(host, port, timeout=5 * SLOW)
        try:
            c.put(test_v3.size_key(tok), str(n))
        finally:
            c.close()
        results, registered = {}, []

        def run(i):
            mid = "%x" % (0xabc000 + i)
            base = self.a if i % 2 else self.b
            h, p = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
            try:
                results[mid] = ("ok", test_v3.v3discovery_join(
                    h, p, tok, mid, "infra%d=http://10.0.0.%d:2380" % (i, i + 1), registered))
            except test_v3.ErrFullCluster:
                results[mid] = ("full", None)
            except Exception as e:  # shown by the assertion below
                results[mid] = ("error", repr(e))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * SLOW)
        self.assertFalse(any(t.is_alive() for t in threads), "a member did not finish")
        self.assertEqual({k: v for k, v in results.items() if v[0] != "ok"}, {})
        self.assertEqual(len({v[1] for v in results.values()}), 1, results)

    @unittest.skipIf(etcd3 is None, "python3-etcd3 is not installed")
    def test_v3_member_put_on_b_right_after_size_put_on_a(self):
        # The v3 form of test_registration_on_b_right_after_new_on_a: B's
        # mirror may not have the token a v3 Put made on A a moment ago; B
        # checks its refusal again once caught up, so the member (for
        # etcd's v3 discovery client a refusal is fatal) is never refused.
        # A second Put of the same member is a re-registration, which an
        # etcd Put takes too.
        def client(base):
            u = urllib.parse.urlsplit(base)
            return etcd3.client(u.hostname, u.port, timeout=10 * SLOW)

        ca, cb = client(self.a), client(self.b)
        refused = []
        try:
            for i in range(10):
                tok = uuid.uuid4().hex
                _v3_make_token(ca, tok)
                key = "/_etcd/registry/%s/members/%x" % (tok, 0xabc000 + i)
                for attempt in range(2):
                    try:
                        cb.put(key, "infra%d=http://10.0.0.1:2380" % attempt)
                    except Exception as e:  # shown by the assertion below
                        refused.append((i, attempt, repr(e)))
        finally:
            ca.close()
            cb.close()
        self.assertEqual(refused, [])

    @unittest.skipIf(etcd3 is None, "python3-etcd3 is not installed")
    def test_v3_puts_of_one_member_on_a_and_b_at_once_both_succeed(self):
        # Both instances see no member key and create it; one create loses
        # the race in etcd. An etcd Put has no precondition, so the loser is
        # decided again once its mirror shows the winner (it overwrites the
        # key) instead of answering FAILED_PRECONDITION.
        def client(base):
            u = urllib.parse.urlsplit(base)
            return etcd3.client(u.hostname, u.port, timeout=10 * SLOW)

        clients = {"a": client(self.a), "b": client(self.b)}
        refused = []
        try:
            for i in range(10):
                tok = uuid.uuid4().hex
                _v3_make_token(clients["a"], tok)
                harness.wait_until(
                    lambda: clients["b"].get(test_v3.size_key(tok))[0] is not None,
                    10 * SLOW, what="the token on B")
                key = "/_etcd/registry/%s/members/%x" % (tok, 0xabc000 + i)
                start = threading.Barrier(2)

                def put(name):
                    start.wait(10 * SLOW)
                    try:
                        clients[name].put(key, "infra-%s=http://10.0.0.1:2380" % name)
                    except Exception as e:  # shown by the assertion below
                        refused.append((i, name, repr(e)))

                threads = [threading.Thread(target=put, args=(n,)) for n in clients]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30 * SLOW)
                self.assertFalse(any(t.is_alive() for t in threads), "a Put did not finish")
        finally:
            for c in clients.values():
                c.close()
        self.assertEqual(refused, [])


def _v3_make_token(client, tok, size="3"):
    """A v3 Put of TOK's size key through CLIENT. A token made so takes
    from /new's budget (a burst, then a few a second): the Put is tried
    again while that budget is spent, for a bounded time."""
    import grpc  # python3-etcd3's transport; its errors carry the status code

    deadline = time.monotonic() + 10 * SLOW
    while True:
        try:
            return client.put(test_v3.size_key(tok), size)
        except Exception as e:
            code = getattr(e, "code", None)
            spent = callable(code) and code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            if not spent or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class EtcdStallTest(unittest.TestCase):
    """A write whose outcome etcd leaves open (every member stopped with
    SIGSTOP past the transaction's deadline, then continued): the client
    gets the write's answer or, only after the hold, 503 with errorCode 300,
    never a false success; the instance serves again afterwards. Whether the
    write was applied is not asserted (ETCD-BACKEND.md section 4)."""

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcds-")
        cls.etcd = harness.EtcdCluster(cls.workdir, size=3)
        cls.disco, cls.a = harness.start_disco(
            cls.workdir, ["--etcd-endpoints", cls.etcd.endpoints()], wait_timeout="20s")

    @classmethod
    def tearDownClass(cls):
        cls.disco.stop()
        cls.etcd.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def test_unknown_outcome_is_held_then_answered(self):
        st, _, body = harness.http("GET", self.a + "/new?size=3")
        self.assertEqual(st, 200, body)
        tok = body.decode().strip().rsplit("/", 1)[1]
        answer = {}

        def register():
            answer["r"] = harness.http("PUT", keys_url(self.a, tok, "/m1?prevExist=false"),
                                       "value=x", FORM, timeout=30 * SLOW)

        for i in range(3):
            self.etcd.proc(i)._signal(signal.SIGSTOP)
        try:
            t = threading.Thread(target=register)
            t.start()
            time.sleep(3.5)  # past the transaction's deadline, inside the hold
        finally:
            for i in range(3):
                self.etcd.proc(i)._signal(signal.SIGCONT)
        t.join(30 * SLOW)
        self.assertFalse(t.is_alive())
        st, _, body = answer["r"]
        self.assertIn(st, (201, 503), body)
        if st == 503:
            self.assertEqual(json.loads(body)["errorCode"], 300, body)
        # The instance serves again: the mirror comes back, and a read shows
        # the write if it said 201.
        harness.wait_until(lambda: harness.http("GET", self.a + "/health?writes=1")[0] == 200,
                           30 * SLOW, what="the instance to take writes again")
        st2, _, body2 = harness.http("GET", keys_url(self.a, tok, "/m1"))
        if st == 201:
            self.assertEqual(st2, 200, body2)
        st3, _, body3 = harness.http("PUT", keys_url(self.a, tok, "/m2?prevExist=false"),
                                     "value=y", FORM)
        self.assertEqual(st3, 201, body3)


class EtcdCompactedWhileAwayTest(unittest.TestCase):
    """An instance whose only etcd endpoint goes away while the others
    take writes and compact the history it has not seen: when its endpoint
    comes back, its watch cannot resume where it stopped; it brings its
    mirror up to date from the prefix's state and follows etcd again."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcdc-")
        self.etcd = harness.EtcdCluster(self.workdir, size=3)
        eps = self.etcd.client_urls
        self.disco_a, self.a = harness.start_disco(
            self.workdir, ["--etcd-endpoints", ",".join([eps[1], eps[2]])])
        self.disco_c, self.c = harness.start_disco(self.workdir, ["--etcd-endpoints", eps[0]])

    def tearDown(self):
        self.disco_a.stop()
        self.disco_c.stop()
        self.etcd.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def listing(self, base, tok):
        return harness.http("GET", keys_url(base, tok) + "?recursive=true&sorted=true")

    def test_watch_resumes_past_a_compaction(self):
        st, _, body = harness.http("GET", self.a + "/new?size=3")
        tok = body.decode().strip().rsplit("/", 1)[1]
        harness.wait_until(lambda: self.listing(self.c, tok)[0] == 200, CONVERGE_TIMEOUT_S,
                           what="the token on C")
        self.etcd.stop(0)
        harness.wait_until(lambda: harness.http("GET", self.c + "/health")[0] == 503,
                           CONVERGE_TIMEOUT_S, what="C's mirror to go down")
        for i in range(2):
            st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m%d?prevExist=false" % i),
                                       "value=v%d" % i, FORM)
            self.assertEqual(st, 201, body)
        st, _, body = harness.http("GET", self.a + "/new?size=5")
        tok2 = body.decode().strip().rsplit("/", 1)[1]
        self.etcd.compact_at_newest(members=(1,))
        self.etcd.start(0)
        self.etcd.wait_healthy(members=[0])
        harness.wait_until(lambda: harness.http("GET", self.c + "/health")[0] == 200,
                           CLUSTER_FORM_TIMEOUT_S, what="C's mirror to be live again")
        for t in (tok, tok2):
            want = self.listing(self.a, t)
            self.assertEqual(want[0], 200)
            got = self.listing(self.c, t)
            self.assertEqual((got[0], json.loads(got[2])), (200, json.loads(want[2])))
        # and C follows etcd from there
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m2?prevExist=false"),
                                   "value=v2", FORM)
        self.assertEqual(st, 201, body)
        harness.wait_until(lambda: self.listing(self.c, tok)[2] == self.listing(self.a, tok)[2],
                           CONVERGE_TIMEOUT_S, what="C to show m2")


class RoundRobin:
    """A TCP load balancer on a loopback port chosen at run time: each new
    connection goes to the next of `bases` (http://host:port), bytes copied
    both ways by threads; counts[i] connections went to bases[i]."""

    def __init__(self, bases):
        self.targets = [urllib.parse.urlsplit(b) for b in bases]
        self.counts = [0] * len(bases)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((harness.LOOPBACK, 0))
        self.sock.listen(64)
        self.url = "http://%s:%d" % (harness.LOOPBACK, self.sock.getsockname()[1])
        self.closed = False
        self.next = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            i = self.next % len(self.targets)
            self.next += 1
            self.counts[i] += 1
            t = self.targets[i]
            try:
                upstream = socket.create_connection((t.hostname, t.port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self.closed = True
        self.sock.close()


def _parked(base):
    """disco_parked_waits from /metrics (0 when absent)."""
    st, _, body = harness.http("GET", base + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("disco_parked_waits ") or line.startswith("discovery_parked_waits "):
            return float(line.split()[1])
    return 0



class EtcdLongHistoryStartTest(unittest.TestCase):
    """An instance starting on etcd whose history is longer than a start
    replays (20,000 revisions, ETCD_REPLAY_MAX_REVISIONS) loads the prefix
    from one range at etcd's revision: the same listing as an instance that
    followed it, and writes go through at the first try. The revisions are
    puts of one key outside the prefix, through etcd's JSON gateway, 16
    connections; bounded by REVISIONS and PUMP_TIMEOUT_S."""

    REVISIONS = 20500
    PUMP_TIMEOUT_S = 300.0

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcdlong-")
        self.etcd = harness.EtcdCluster(self.workdir, size=1)
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            p.stop()
        self.etcd.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def start(self):
        proc, base = harness.start_disco(self.workdir,
                                         ["--etcd-endpoints", self.etcd.endpoints()])
        self.procs.append(proc)
        return proc, base

    def pump(self, n):
        url = urllib.parse.urlsplit(self.etcd.client_urls[0])
        body = json.dumps({"key": "b3RoZXI=", "value": "eA=="})  # "other" = "x"
        left = [n]
        lock = threading.Lock()
        deadline = time.monotonic() + self.PUMP_TIMEOUT_S
        errors = []

        def worker():
            import http.client
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            try:
                while time.monotonic() < deadline:
                    with lock:
                        if left[0] == 0:
                            return
                        left[0] -= 1
                    conn.request("POST", "/v3/kv/put", body,
                                 {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        errors.append(r.status)
                        return
            finally:
                conn.close()

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(left[0], 0, "etcd took fewer puts than asked within the bound")

    def test_start_past_a_long_history_loads_from_a_range(self):
        _, a = self.start()
        st, _, body = harness.http("GET", a + "/new?size=3")
        self.assertEqual(st, 200, body)
        tok = body.decode().strip().rsplit("/", 1)[1]
        for i in range(3):
            st, _, body = harness.http("PUT", keys_url(a, tok, "/m%d?prevExist=false" % i),
                                       "value=v%d" % i, FORM)
            self.assertEqual(st, 201, body)
        st, _, body = harness.http("DELETE", keys_url(a, tok, "/m2"))
        self.assertEqual(st, 200, body)
        self.pump(self.REVISIONS)
        c_proc, c = self.start()
        self.assertIn("loaded from the prefix's state", c_proc.log())
        st, _, want = harness.http("GET", keys_url(a, tok) + "?recursive=true&sorted=true")
        st2, _, got = harness.http("GET", keys_url(c, tok) + "?recursive=true&sorted=true")
        self.assertEqual((st, st2), (200, 200))
        self.assertEqual(json.loads(got), json.loads(want))
        # the token's last change was the delete: C guards on its revision
        st, _, body = harness.http("PUT", keys_url(c, tok, "/m0?prevExist=true"), "value=w0",
                                   FORM)
        self.assertEqual(st, 200, body)
        st, _, body = harness.http("GET", c + "/metrics")
        lost = [ln for ln in body.split(b"\n")
                if ln.startswith(b'disco_etcd_txns_total{outcome="lost_guard"}')]
        self.assertEqual(lost, [b'disco_etcd_txns_total{outcome="lost_guard"} 0'])
        # and it follows etcd from there: A sees C's write, C sees A's
        st, _, body = harness.http("PUT", keys_url(a, tok, "/m3?prevExist=false"), "value=v3",
                                   FORM)
        self.assertEqual(st, 201, body)
        harness.wait_until(
            lambda: harness.http("GET", keys_url(c, tok, "/m3"))[0] == 200 and
            harness.http("GET", keys_url(a, tok, "/m0"))[2] ==
            harness.http("GET", keys_url(c, tok, "/m0"))[2],
            CONVERGE_TIMEOUT_S, what="A = C")


class EtcdInOrderPostTest(unittest.TestCase):
    """POSTs (in-order keys) in flight at once on the etcd backend: 64 on one
    instance, then 32 on each of two instances. Every one is created (201,
    distinct keys), and a sorted listing, the same on both instances, is
    in creation order: createdIndex ascending. Before in-order names were
    chosen above every name handed out, concurrent POSTs on one instance
    all picked the same name and most got 503 past the retry limit."""

    N_ONE = 64
    N_EACH = 32

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcdo-")
        cls.etcd, (cls.disco_a, cls.a), (cls.disco_b, cls.b) = \
            harness.start_etcd_and_two_discos(cls.workdir, size=1)

    @classmethod
    def tearDownClass(cls):
        harness.stop_etcd_and_discos(cls.etcd, cls.disco_a, cls.disco_b)
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def new_token(self, base):
        st, _, body = harness.http("GET", base + "/new?size=3")
        self.assertEqual(st, 200, body)
        return body.decode().strip().rsplit("/", 1)[1]

    def post_at_once(self, jobs):
        """jobs: [(url, value)]; POSTs them all from threads released
        together. Returns [(status, body)] in the order of jobs."""
        results = [None] * len(jobs)
        go = threading.Barrier(len(jobs))

        def post(i, url, value):
            try:
                go.wait(30 * SLOW)
                st, _, body = harness.http("POST", url, "value=" + value, FORM,
                                           timeout=30 * SLOW)
                results[i] = (st, body)
            except Exception as e:  # reported below, with the others
                results[i] = (None, repr(e).encode())

        threads = [threading.Thread(target=post, args=(i, u, v))
                   for i, (u, v) in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * SLOW)
        self.assertFalse(any(t.is_alive() for t in threads), "a POST did not finish")
        return results

    def check_in_order(self, bases, dir_url_of, results, values):
        bad = [(st, body) for st, body in results if st != 201]
        self.assertEqual(bad, [], "%d of %d POSTs not created" % (len(bad), len(results)))
        made = {}
        for st, body in results:
            node = json.loads(body)["node"]
            made[node["key"]] = (node["value"], node["createdIndex"])
        self.assertEqual(len(made), len(results), "in-order keys must be distinct")
        self.assertEqual(sorted(v for v, _ in made.values()), sorted(values))
        self.assertEqual(len({ci for _, ci in made.values()}), len(results))

        def nodes(base):
            st, _, body = harness.http("GET", dir_url_of(base) + "?sorted=true")
            if st != 200:
                return None
            return [(n["key"], (n["value"], n["createdIndex"]))
                    for n in json.loads(body)["node"].get("nodes", [])]

        listings = [harness.wait_until(
            lambda b=b: (lambda l: l if l is not None and dict(l) == made else None)(nodes(b)),
            CONVERGE_TIMEOUT_S, what="every POST listed on %s" % b) for b in bases]
        for other in listings[1:]:
            self.assertEqual(other, listings[0])
        created = [ci for _, (_, ci) in listings[0]]
        self.assertEqual(created, sorted(created),
                         "sorted by key, the listing must be in createdIndex order")

    def test_64_posts_at_once_on_one_instance(self):
        tok = self.new_token(self.a)
        url = keys_url(self.a, tok)
        values = ["v%d" % i for i in range(self.N_ONE)]
        results = self.post_at_once([(url, v) for v in values])
        self.check_in_order([self.a, self.b], lambda base: keys_url(base, tok), results, values)

    def test_32_posts_at_once_on_each_of_two_instances(self):
        tok = self.new_token(self.a)
        harness.wait_until(lambda: harness.http("GET", keys_url(self.b, tok))[0] == 200,
                           CONVERGE_TIMEOUT_S, what="the token on B")
        jobs, values = [], []
        for base, name in ((self.a, "a"), (self.b, "b")):
            for i in range(self.N_EACH):
                jobs.append((keys_url(base, tok, "/queue"), "%s%d" % (name, i)))
                values.append("%s%d" % (name, i))
        results = self.post_at_once(jobs)
        self.check_in_order([self.a, self.b], lambda base: keys_url(base, tok, "/queue"),
                            results, values)

    def test_post_beside_a_name_no_in_order_name_can_follow(self):
        # A client may PUT a 20-digit name at or above the largest index
        # (2^64 - 1): no in-order name can sort after it, so a POST there
        # is named as etcd v2 names it and guarded like any other write.
        tok = self.new_token(self.a)
        for name in ("99999999999999999999", "18446744073709551615"):
            st, _, body = harness.http("PUT", keys_url(self.a, tok, "/big/" + name),
                                       "value=x", FORM)
            self.assertEqual(st, 201, body)
            st, _, body = harness.http("POST", keys_url(self.a, tok, "/big"), "value=job",
                                       FORM)
            self.assertEqual(st, 201, body)
            node = json.loads(body)["node"]
            self.assertNotEqual(node["key"].rsplit("/", 1)[1], "0" * 20, body)
            st, _, body = harness.http("DELETE", keys_url(self.a, tok, "/big/" + name))
            self.assertEqual(st, 200, body)


if __name__ == "__main__":
    unittest.main()
