#!/usr/bin/env python3
"""End-to-end: keys with a TTL, the removal of old tokens and old events on
the etcd backend (`disco serve --etcd-endpoints`), two disco instances on
one real etcd 3.4 member.

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_etcd_ttl.py -v

What is checked (ETCD-BACKEND.md §2):
  - a key written with ttl=2 through A gets an etcd lease: it shows its TTL
    on A and B, expires on both (etcd decides, not a disco timer), and a long
    poll parked on B sees action "expire";
  - --minage/--gcfreq on both instances: an old token is removed exactly once
    (one "gc" transaction in etcd's history, whichever instance sent it), is
    gone from both, its keys are gone from etcd, and a 404 says it expired;
  - a watch from a waitIndex older than the events the mirror keeps gets
    etcd's 400/401 "event index cleared"; --max-events-per-token holds.

Every process listens on 127.0.0.1 on ports chosen at run time and is
stopped by PID. No timing is asserted beyond generous bounds.
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SLOW = 10 if os.environ.get("DISCO_WRAPPER") else 1
CONVERGE_TIMEOUT_S = 10.0 * SLOW
# etcd checks leases every 500 ms and raises a TTL below its minimum (1.5 s
# with default timings): a ttl=2 key goes within a few seconds.
EXPIRY_TIMEOUT_S = 20.0 * SLOW
# A short TTL, longer where disco runs slowly (valgrind), so that a check
# made right after the write still sees the key.
TTL_S = 2 * SLOW
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PREFIX = "/disco/"
# The ring of recent events the registry keeps (RECENT_EVENTS in
# registry_internal.h), in revisions.
RECENT_EVENTS = 4096


def keys_url(base, token, rest=""):
    return "%s/v2/keys/_etcd/registry/%s%s" % (base, token, rest)


def parked(base):
    """disco_parked_waits from /metrics (0 when absent)."""
    st, _, body = harness.http("GET", base + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("disco_parked_waits ") or line.startswith("discovery_parked_waits "):
            return float(line.split()[1])
    return 0


class EtcdTwoInstances(unittest.TestCase):
    """One etcd member, instances A and B; ARGS are given to both."""
    ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcdttl-")
        # A long poll waits for an expiry: longer than the (scaled) TTL.
        wait = "%ds" % int(EXPIRY_TIMEOUT_S)
        cls.etcd, (cls.disco_a, cls.a), (cls.disco_b, cls.b) = \
            harness.start_etcd_and_two_discos(cls.workdir, size=1, extra_args=cls.ARGS,
                                              wait_timeout=wait)

    @classmethod
    def tearDownClass(cls):
        harness.stop_etcd_and_discos(cls.etcd, cls.disco_a, cls.disco_b)
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def new_token(self, base, size=3):
        st, _, body = harness.http("GET", base + "/new?size=%d" % size)
        self.assertEqual(st, 200, body)
        return body.decode().strip().rsplit("/", 1)[1]

    def get(self, base, tok, rest=""):
        st, _, body = harness.http("GET", keys_url(base, tok, rest))
        return st, json.loads(body) if body else None

    def wait_on(self, base, tok, rest="", status=200, what="the key"):
        return harness.wait_until(lambda: (lambda r: r if r[0] == status else None)(
            self.get(base, tok, rest)), CONVERGE_TIMEOUT_S, what=what)

    def etcd_keys(self, prefix):
        rc, out, err = harness.etcdctl(self.etcd.client_urls[0], "get", "--prefix", "--keys-only",
                                       prefix)
        self.assertEqual(rc, 0, err)
        return [k for k in out.splitlines() if k.strip()]

    def etcd_revision(self):
        rc, out, err = harness.etcdctl(self.etcd.client_urls[0], "endpoint", "status", "-w",
                                       "json")
        self.assertEqual(rc, 0, err)
        return int(json.loads(out)[0]["Status"]["header"]["revision"])

    def marker_history(self, first_rev):
        """Every value written to the action marker from revision first_rev on."""
        import base64
        values = []
        for rev in range(first_rev, self.etcd_revision() + 1):
            rc, out, err = harness.etcdctl(self.etcd.client_urls[0], "get", "--rev", str(rev),
                                           "-w", "json", PREFIX + "act")
            self.assertEqual(rc, 0, err)
            for kv in json.loads(out).get("kvs", []):
                if int(kv.get("mod_revision", 0)) == rev:
                    values.append(base64.b64decode(kv["value"]).decode())
        return values


class TtlKeysTest(EtcdTwoInstances):
    def test_ttl_key_expires_on_both_and_parked_poll_sees_expire(self):
        tok = self.new_token(self.a)
        self.wait_on(self.b, tok, what="the token on B")
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/eph?ttl=%d" % TTL_S), "value=v",
                                   FORM)
        self.assertEqual(st, 201, body)
        node = json.loads(body)["node"]
        self.assertEqual(node["ttl"], TTL_S, body)
        self.assertIn("expiration", node)
        created = node["createdIndex"]
        # B shows the same key with its TTL (from the transaction's marker).
        _, got = self.wait_on(self.b, tok, "/eph", what="the TTL key on B")
        self.assertEqual(got["node"]["value"], "v")
        self.assertIn("ttl", got["node"])
        self.assertLessEqual(got["node"]["ttl"], TTL_S)
        self.assertEqual(got["node"]["expiration"], node["expiration"])
        # The key is in etcd with a lease.
        rc, out, err = harness.etcdctl(self.etcd.client_urls[0], "get", "-w", "json",
                                       PREFIX + "k/%s/eph" % tok)
        self.assertEqual(rc, 0, err)
        self.assertGreater(int(json.loads(out)["kvs"][0].get("lease", 0)), 0, out)

        answer = {}

        def poll():
            answer["r"] = harness.http(
                "GET", keys_url(self.b, tok, "/eph") + "?wait=true&waitIndex=%d" % (created + 1),
                timeout=EXPIRY_TIMEOUT_S + 10)

        before = parked(self.b)
        t = threading.Thread(target=poll)
        t.start()
        harness.wait_until(lambda: not t.is_alive() or parked(self.b) > before, 10 * SLOW,
                           what="the long poll to park on B")
        t.join(EXPIRY_TIMEOUT_S + 15)
        self.assertFalse(t.is_alive(), "the parked poll on B was not answered")
        st, _, body = answer["r"]
        self.assertEqual(st, 200, body)
        ev = json.loads(body)
        self.assertEqual(ev["action"], "expire", body)
        self.assertEqual(ev["node"]["key"], "/_etcd/registry/%s/eph" % tok)
        self.assertEqual(ev["prevNode"]["value"], "v")
        # Gone on both, and from etcd.
        for base in (self.a, self.b):
            st, err = self.wait_on(base, tok, "/eph", status=404, what="the key gone")
            self.assertEqual(err["errorCode"], 100)
        self.assertEqual(self.etcd_keys(PREFIX + "k/%s/eph" % tok), [])
        # Later writes to the token still pass their guard (an expiry does not
        # rewrite the token's version key).
        st, _, body = harness.http("PUT", keys_url(self.b, tok, "/after"), "value=x", FORM)
        self.assertEqual(st, 201, body)
        st, _, body = harness.http("PUT", keys_url(self.b, tok, "/after"), "value=y", FORM)
        self.assertEqual(st, 200, body)

    def test_key_rewritten_without_ttl_is_kept(self):
        tok = self.new_token(self.a)
        self.wait_on(self.b, tok, what="the token on B")
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/k?ttl=%d" % TTL_S), "value=1",
                                   FORM)
        self.assertEqual(st, 201, body)
        # A set without ttl makes the key permanent (v2), and its put names
        # no lease: the old lease runs out and deletes nothing.
        st, _, body = harness.http("PUT", keys_url(self.b, tok, "/k"), "value=2", FORM)
        self.assertEqual(st, 200, body)
        self.assertNotIn("ttl", json.loads(body)["node"])
        time.sleep(TTL_S + 2)
        for base in (self.a, self.b):
            st, got = self.get(base, tok, "/k")
            self.assertEqual(st, 200, got)
            self.assertEqual(got["node"]["value"], "2")

    def test_update_with_new_ttl_keeps_the_key(self):
        # refresh=true is refused (docs/decisions.md); an update with a new
        # ttl is how a v2 client keeps a key: a new lease replaces the old.
        tok = self.new_token(self.a)
        self.wait_on(self.b, tok, what="the token on B")
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/k?ttl=%d" % TTL_S), "value=1",
                                   FORM)
        self.assertEqual(st, 201, body)
        st, _, body = harness.http("PUT", keys_url(self.b, tok, "/k?prevExist=true&ttl=%d"
                                                   % (15 * TTL_S)), "value=1", FORM)
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["action"], "update")
        time.sleep(TTL_S + 2)
        for base in (self.a, self.b):
            st, got = self.get(base, tok, "/k")
            self.assertEqual(st, 200, got)
            self.assertGreater(got["node"]["ttl"], TTL_S, got)


class SweepTest(EtcdTwoInstances):
    ARGS = ("--minage", "3s", "--gcfreq", "1s")

    def test_old_token_removed_once_by_two_sweepers(self):
        first = self.etcd_revision() + 1
        tok = self.new_token(self.a)
        st, _, body = harness.http("PUT", keys_url(self.b, tok, "/m1?prevExist=false"),
                                   "value=x", FORM)
        self.assertEqual(st, 201, body)
        t0 = time.monotonic()
        for base in (self.a, self.b):
            st, err = harness.wait_until(lambda: (lambda r: r if r[0] == 404 else None)(
                self.get(base, tok)), 20 * SLOW, interval=0.2, what="the old token removed")
            self.assertEqual(err["errorCode"], 100)
            self.assertIn("expired", err["cause"] if "cause" in err else json.dumps(err))
        self.assertGreaterEqual(time.monotonic() - t0, 1.5, "removed before --minage")
        # The token page says what may have happened, on both instances.
        for base in (self.a, self.b):
            st, _, body = harness.http("GET", "%s/%s" % (base, tok),
                                       headers={"Accept": "text/html"})
            self.assertEqual(st, 404, body)
            self.assertIn(b"removed by age", body)
        # Nothing of it is left in etcd, and exactly one removal happened.
        for kind in ("k/%s/" % tok, "c/%s/" % tok, "v/%s" % tok, "m/%s" % tok):
            self.assertEqual(self.etcd_keys(PREFIX + kind), [], kind)
        time.sleep(3)  # more sweeps of both instances: nothing more happens
        gcs = [v for v in self.marker_history(first) if v.startswith("gc ") and
               v.endswith(" " + tok)]
        self.assertEqual(len(gcs), 1, gcs)
        # Both still serve, and a new token works.
        tok2 = self.new_token(self.b)
        st, _ = self.wait_on(self.a, tok2, what="a new token on A")
        self.assertEqual(st, 200)


class HistoryBoundTest(EtcdTwoInstances):
    ARGS = ("--max-events-per-token", "6")

    def test_old_wait_index_gets_401_and_event_bound_holds(self):
        tok = self.new_token(self.a)
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m1"), "value=x", FORM)
        self.assertEqual(st, 201, body)
        old = json.loads(body)["node"]["modifiedIndex"]
        # Recent: answered from the mirror.
        st, _, body = harness.http("GET", keys_url(self.a, tok, "/m1") + "?wait=true&waitIndex=%d"
                                   % old)
        self.assertEqual(st, 200, body)
        # Move etcd's revision past the mirror's window with keys outside the
        # prefix, then make one write to the token.
        self.bulk_puts(RECENT_EVENTS + 16)
        st, _, body = harness.http("PUT", keys_url(self.b, tok, "/m2"), "value=y", FORM)
        self.assertEqual(st, 201, body)
        for base in (self.a, self.b):
            self.wait_on(base, tok, "/m2", what="m2 everywhere")
            st, h, body = harness.http(
                "GET", keys_url(base, tok, "/m1") + "?wait=true&waitIndex=%d" % old)
            self.assertEqual(st, 400, body)
            err = json.loads(body)
            self.assertEqual(err["errorCode"], 401, body)
            self.assertIn("cleared", err["cause"])
        # --max-events-per-token 6: the token has 3 events (size, m1, m2).
        for i in range(3):
            st, _, body = harness.http("PUT", keys_url(self.a, tok, "/x%d" % i), "value=z", FORM)
            self.assertEqual(st, 201, body)
        st, _, body = harness.http("PUT", keys_url(self.b, tok, "/x9"), "value=z", FORM)
        self.assertNotEqual(st, 201, body)

    def bulk_puts(self, n, threads=4):
        """n revisions outside the prefix through etcd's JSON gateway."""
        import base64
        import urllib.request
        url = self.etcd.client_urls[0] + "/v3/kv/put"
        data = json.dumps({"key": base64.b64encode(b"/other/bulk").decode(),
                           "value": base64.b64encode(b"v").decode()}).encode()
        failures = []

        def run(count):
            try:
                for _ in range(count):
                    with urllib.request.urlopen(urllib.request.Request(url, data=data),
                                                timeout=10) as r:
                        r.read()
            except Exception as e:  # reported below
                failures.append(e)

        ts = [threading.Thread(target=run, args=(n // threads + 1,)) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120 * SLOW)
        self.assertEqual(failures, [])


if __name__ == "__main__":
    unittest.main()
