#!/usr/bin/env python3
"""End-to-end faults of the etcd backend: two disco instances on a real
3-member etcd 3.4 cluster, with etcd members and disco instances killed.

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_etcd_faults.py -v

What is checked (ETCD-BACKEND.md §4, issue 12 "Faults"):
  - kill -9 of the etcd leader under write load through both instances: every
    registration answered 201 is kept (on both instances and in etcd), reads
    and parked long-polls keep working through the election, every answer is
    201 or 503 (errorCode 300) and comes inside the 5 s etcd's v2 discovery
    client gives its PUT; then quorum loss (writes 503, reads served from the
    mirror, /health 503), then both members back: nothing acknowledged lost,
    writes work again.  Whether a write answered 503 was applied is never
    asserted (etcd does not promise either way);
  - a compaction while an instance's watch is away: its mirror is resynced
    from a range (deletions included) and parked watches are answered with
    the event or etcd's 401 "event index cleared" (v3: cancelled with a
    compact_revision a new watch can start from);
  - a token swept by age on one instance while the other's watch is away,
    the sweep compacted: the other removes it at its resync, as the sweep's
    delivery would have;
  - a disco instance killed and restarted under load reloads the same
    listings and indexes as the other.

Timing-bound: left out of the valgrind run (tests/CMakeLists.txt). Every
process listens on 127.0.0.1 on ports chosen at run time and is stopped by
PID. Load loops are bounded in count and time.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import h2raw  # noqa: E402
import harness  # noqa: E402

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PREFIX = "/disco/"
CONVERGE_TIMEOUT_S = 15.0
# etcd's v2 discovery client gives its registration PUT 5 s; every answer
# must come within it (the client's own timeout is set well above it, so a
# late answer is seen, not cut off).
V2DISCOVERY_PUT_BUDGET_S = 5.0
CLIENT_TIMEOUT_S = 15.0
WRITERS_PER_INSTANCE = 3
# A 503 comes only after disco tried to learn the write's outcome: its Txn's
# deadline (2 s; backend_etcd.c) with a margin for a slow machine.
MIN_503_AFTER_S = 1.5
MAX_WRITES_PER_WRITER = 400
# Every writer registers on one token: room for all of them (a fast machine
# reaches MAX_WRITES_PER_WRITER before the faults end), past the default
# --max-keys-per-token of 2048.
INSTANCE_ARGS = ("--max-keys-per-token", "100000")
LOAD_BEFORE_KILL_S = 1.0
LOAD_AFTER_KILL_S = 6.0
# A wait timeout well past the faults: parked polls outlive them.
WAIT_TIMEOUT = "60s"


def keys_url(base, token, rest=""):
    return "%s/v2/keys/_etcd/registry/%s%s" % (base, token, rest)


def etcd_leader_index(cluster, alive):
    """The index of the member that is leader now, asked of the live ones."""
    def ask():
        for i in alive:
            rc, out, _ = harness.etcdctl(cluster.client_urls[i], "endpoint", "status", "-w",
                                         "json", timeout=6)
            if rc != 0:
                continue
            st = json.loads(out)[0]["Status"]
            if st["leader"] and st["header"]["member_id"] == st["leader"]:
                return i + 1  # wait_until wants a true value
        return None
    return harness.wait_until(ask, 20, what="an etcd leader") - 1


def etcd_keys(endpoints, prefix):
    rc, out, err = harness.etcdctl(endpoints, "get", "--prefix", "--keys-only", prefix,
                                   timeout=10)
    if rc != 0:
        raise AssertionError("etcdctl get: %s" % err)
    return set(line for line in out.splitlines() if line)


def metrics(base):
    """/metrics as {(name, frozenset(labels)): value} (simple Prometheus text)."""
    st, _, body = harness.http("GET", base + "/metrics")
    assert st == 200, body
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z0-9_:]+)(?:\{(.*)\})? (\S+)$', line)
        assert m, line
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(ms, name, **labels):
    return ms.get((name, frozenset(labels.items())))


class Writer(threading.Thread):
    """Registers distinct keys (prevExist=false) on one instance until told
    to stop or MAX_WRITES_PER_WRITER is reached; records each answer."""

    def __init__(self, base, token, name, stop):
        super().__init__(daemon=True)
        self.base, self.token, self.name, self.stop_ev = base, token, name, stop
        self.answers = []  # (key, status, elapsed_s, body)

    def run(self):
        for i in range(MAX_WRITES_PER_WRITER):
            if self.stop_ev.is_set():
                return
            key = "%s-%d" % (self.name, i)
            t0 = time.monotonic()
            try:
                st, _, body = harness.http("PUT", keys_url(self.base, self.token,
                                                           "/%s?prevExist=false" % key),
                                           "value=" + key, FORM, timeout=CLIENT_TIMEOUT_S)
            except OSError as e:
                st, body = None, repr(e).encode()
            self.answers.append((key, st, time.monotonic() - t0, body))


class Reader(threading.Thread):
    """GETs a token's listing on one instance in a loop; records failures."""

    def __init__(self, base, token, stop):
        super().__init__(daemon=True)
        self.base, self.token, self.stop_ev = base, token, stop
        self.count, self.failures = 0, []

    def run(self):
        while not self.stop_ev.is_set() and self.count < 5000:
            try:
                st, _, body = harness.http("GET", keys_url(self.base, self.token) +
                                           "?recursive=true", timeout=CLIENT_TIMEOUT_S)
                if st != 200:
                    self.failures.append((st, body))
            except OSError as e:
                self.failures.append((None, repr(e)))
            self.count += 1
            time.sleep(0.05)


class Poll(threading.Thread):
    """One parked v2 long-poll; its answer in .result."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.result = url, None

    def run(self):
        try:
            self.result = harness.http("GET", self.url, timeout=60)
        except OSError as e:
            self.result = (None, {}, repr(e).encode())


class RawWatch:
    """One v3 watch on a disco instance spoken frame by frame (h2raw), so
    that every field of its answers is seen: .next() is the next
    WatchResponse as {field number: [values]} (h2raw.pb_fields)."""

    def __init__(self, base, prefix, rev):
        host, port = base.rsplit("/", 1)[1].rsplit(":", 1)
        self.h2 = h2raw.H2(host, int(port), timeout=CONVERGE_TIMEOUT_S)
        self.h2.start()
        key = prefix.encode()
        create = (h2raw.field(1, key) + h2raw.field(2, key[:-1] + bytes([key[-1] + 1])) +
                  h2raw.varint(3 << 3) + h2raw.varint(rev))
        self.h2.open_watch(1, [h2raw.grpc_message(h2raw.field(1, create))])
        self.data, self.msgs = b"", []

    def next(self):
        while not self.msgs:
            f = self.h2.read()
            if f is None:
                raise AssertionError("the watch's connection ended")
            if f[0] == h2raw.PING and not f[1] & h2raw.ACK:
                self.h2.send(h2raw.PING, h2raw.ACK, 0, f[3])
            elif f[0] == h2raw.DATA and f[2] == 1:
                got, self.data = h2raw.grpc_messages(self.data + f[3])
                self.msgs += got
            elif f[2] == 1 and f[0] in (h2raw.HEADERS, h2raw.RST_STREAM) and f[1] & 1:
                raise AssertionError("the watch's stream ended: %r" % (f,))
        return h2raw.pb_fields(self.msgs.pop(0))

    def close(self):
        self.h2.close()


def start_v3_watch(base, prefix, rev):
    """`etcdctl watch --prefix --rev REV PREFIX` against a disco instance (v3
    keys are the v2 keys); its output is read when it has ended."""
    env = harness.clean_env()
    env["ETCDCTL_API"] = "3"
    return subprocess.Popen([harness.ETCDCTL_BIN, "--endpoints", base, "watch", "--prefix",
                             "--rev=%d" % rev, prefix], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


class AwayMixin:
    """Instance B and the etcd member it talks to stopped, while A and the
    other members go on (B's watch, once B is continued, finds its member
    silent and starts again on another one, from the revision after the
    last it applied). Needs self.etcd, self.disco_b, self.b."""

    def stop_b_and_its_member(self):
        """Returns (its member's Proc, the indexes of the other members)."""
        ms = metrics(self.b)
        b_member = [dict(lbl)["endpoint"] for (n, lbl), v in ms.items()
                    if n == "disco_etcd_endpoint"][0]
        b_member_i = self.etcd.client_urls.index(b_member)
        # The others go on with a leader among them: stopping the leader
        # would only add an election, which the first test covers.
        if etcd_leader_index(self.etcd, range(3)) == b_member_i:
            other = self.etcd.client_urls[(b_member_i + 1) % 3]
            rc, out, err = harness.etcdctl(other, "endpoint", "status", "-w", "json")
            self.assertEqual(rc, 0, err)
            other_id = "%x" % json.loads(out)[0]["Status"]["header"]["member_id"]
            rc, _, err = harness.etcdctl(b_member, "move-leader", other_id)
            self.assertEqual(rc, 0, err)
            harness.wait_until(lambda: etcd_leader_index(self.etcd, range(3)) != b_member_i, 20,
                               what="the leader moved")
        member = self.etcd.proc(b_member_i)
        harness.sigstop(self.disco_b.pid)
        harness.sigstop(member.pid)
        return member, [i for i in range(3) if i != b_member_i]


class EtcdFaults(AwayMixin, unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcdf-")
        self.etcd, (self.disco_a, self.a), (self.disco_b, self.b) = \
            harness.start_etcd_and_two_discos(self.workdir, size=3, extra_args=INSTANCE_ARGS,
                                              wait_timeout=WAIT_TIMEOUT)

    def tearDown(self):
        harness.stop_etcd_and_discos(self.etcd, self.disco_a, self.disco_b)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def start_instance(self, endpoints):
        return harness.start_disco(self.workdir,
                                   ["--etcd-endpoints", ",".join(endpoints)] + list(INSTANCE_ARGS),
                                   wait_timeout=WAIT_TIMEOUT)

    def new_token(self, base, size=3):
        st, _, body = harness.http("GET", base + "/new?size=%d" % size)
        self.assertEqual(st, 200, body)
        return body.decode().strip().rsplit("/", 1)[1]

    def members(self, base, token):
        st, h, body = harness.http("GET", keys_url(base, token) + "?recursive=true&sorted=true")
        if st != 200:
            return None
        nodes = json.loads(body)["node"].get("nodes", [])
        return {n["key"].rsplit("/", 1)[1]: n["createdIndex"] for n in nodes
                if not n.get("dir")}

    def wait_members(self, base, token, pred, what):
        return harness.wait_until(lambda: (lambda m: [m] if m is not None and pred(m) else None)(
            self.members(base, token)), CONVERGE_TIMEOUT_S, what=what)[0]

    def health(self, base, query=""):
        st, _, body = harness.http("GET", base + "/health" + query)
        return st

    def check_answers(self, writers):
        """Every answer 201, or 503 errorCode 300; all within the budget."""
        acked = {}
        for w in writers:
            for key, st, elapsed, body in w.answers:
                self.assertIn(st, (201, 503), (key, st, body))
                self.assertLess(elapsed, V2DISCOVERY_PUT_BUDGET_S,
                                "%s answered %s after %.2f s: %r" % (key, st, elapsed, body))
                if st == 503:
                    self.assertEqual(json.loads(body)["errorCode"], 300, body)
                    # Never at once: a write whose outcome may still be
                    # learnt is held first (the Txn's deadline at least).
                    self.assertGreaterEqual(elapsed, MIN_503_AFTER_S,
                                            "%s answered 503 at once: %r" % (key, body))
                else:
                    acked[key] = json.loads(body)["node"]["createdIndex"]
        return acked

    def test_leader_killed_then_quorum_lost_then_back(self):
        tok = self.new_token(self.a, size=1000)
        watch_tok = self.new_token(self.a)
        for base in (self.a, self.b):
            self.wait_members(base, watch_tok, lambda m: True, "the tokens on both instances")
            self.wait_members(base, tok, lambda m: True, "the tokens on both instances")
        # Parked long-polls on both instances, answered only after the election.
        st, h, _ = harness.http("GET", keys_url(self.a, watch_tok))
        next_index = int(h["x-etcd-index"]) + 1
        polls = [Poll(keys_url(base, watch_tok) + "?wait=true&recursive=true&waitIndex=%d"
                      % next_index) for base in (self.a, self.b)]
        for p in polls:
            p.start()
        stop = threading.Event()
        writers = [Writer(base, tok, "%s%d" % (n, i), stop)
                   for base, n in ((self.a, "a"), (self.b, "b"))
                   for i in range(WRITERS_PER_INSTANCE)]
        readers = [Reader(base, tok, stop) for base in (self.a, self.b)]
        for t in writers + readers:
            t.start()
        time.sleep(LOAD_BEFORE_KILL_S)

        # a. kill -9 of the leader under write load.
        leader = etcd_leader_index(self.etcd, range(3))
        self.etcd.kill(leader)
        alive = [i for i in range(3) if i != leader]
        time.sleep(LOAD_AFTER_KILL_S)
        stop.set()
        for t in writers + readers:
            t.join(CLIENT_TIMEOUT_S + 5)
        self.assertFalse(any(t.is_alive() for t in writers + readers), "a client hung")
        for r in readers:
            self.assertGreater(r.count, 0)
            self.assertEqual(r.failures, [], "reads failed during the election")
        acked = self.check_answers(writers)
        self.assertTrue(acked, "no registration succeeded at all")
        for p in polls:
            self.assertIsNone(p.result, "a parked poll was answered before any change")
        # The parked polls survived the election: a change answers them.
        st, _, body = harness.http("PUT", keys_url(self.b, watch_tok, "/after-election"), "value=x",
                                   FORM)
        self.assertEqual(st, 201, body)
        for p in polls:
            p.join(CONVERGE_TIMEOUT_S)
            self.assertIsNotNone(p.result, "a parked poll was not answered")
            st, _, body = p.result
            self.assertEqual(st, 200, body)
            self.assertEqual(json.loads(body)["node"]["key"],
                             "/_etcd/registry/%s/after-election" % watch_tok)
        # No acknowledged registration lost: on both instances, same indexes, and in etcd.
        for base in (self.a, self.b):
            got = self.wait_members(base, tok, lambda m: all(k in m for k in acked),
                                    "every acknowledged key on %s" % base)
            self.assertEqual({k: got[k] for k in acked}, acked)
        live_eps = ",".join(self.etcd.client_urls[i] for i in alive)
        in_etcd = etcd_keys(live_eps, PREFIX + "k/" + tok + "/")
        for k in acked:
            self.assertIn(PREFIX + "k/%s/%s" % (tok, k), in_etcd)

        # b. quorum lost: a second member killed.
        second = alive[0]
        self.etcd.kill(second)
        for base in (self.a, self.b):
            harness.wait_until(lambda: self.health(base, "?writes=1") == 503, 30,
                               what="/health?writes=1 503 on %s" % base)
            t0 = time.monotonic()
            st, _, body = harness.http("PUT", keys_url(base, tok, "/during-loss?prevExist=false"),
                                       "value=x", FORM, timeout=CLIENT_TIMEOUT_S)
            self.assertLess(time.monotonic() - t0, V2DISCOVERY_PUT_BUDGET_S)
            self.assertEqual(st, 503, body)
            self.assertEqual(json.loads(body)["errorCode"], 300, body)
            # Reads are served from the mirror.
            got = self.members(base, tok)
            self.assertIsNotNone(got, "a read failed during quorum loss")
            self.assertEqual({k: got[k] for k in acked}, acked)
            # /health: 503 once the mirror cannot follow etcd (docs/operating.md).
            harness.wait_until(lambda: self.health(base) == 503, 30,
                               what="/health 503 on %s" % base)
            # ... and /metrics says since when it has not been current.
            harness.wait_until(lambda: metric(metrics(base), "disco_etcd_mirror_lag_seconds") > 0,
                               10, what="a mirror lag in seconds on %s" % base)
            self.assertEqual(metric(metrics(base), "disco_etcd_mirror_live"), 0)

        # Both back: nothing acknowledged lost, writes work again.
        self.etcd.start(leader)
        self.etcd.start(second)
        self.etcd.wait_healthy()
        for base in (self.a, self.b):
            harness.wait_until(lambda: self.health(base, "?writes=1") == 200, 30,
                               what="/health?writes=1 200 on %s" % base)
            got = self.members(base, tok)
            self.assertEqual({k: got[k] for k in acked}, acked)
            st, _, body = harness.http("PUT", keys_url(base, tok, "/back-%s?prevExist=false"
                                                       % base.rsplit(":", 1)[1]), "value=x", FORM)
            self.assertEqual(st, 201, body)
        in_etcd = etcd_keys(self.etcd.endpoints(), PREFIX + "k/" + tok + "/")
        for k in acked:
            self.assertIn(PREFIX + "k/%s/%s" % (tok, k), in_etcd)
        # /metrics tells the story: the watch was created again (quorum loss
        # ended it), transactions by outcome, a live member in use.
        for base in (self.a, self.b):
            ms = metrics(base)
            self.assertGreaterEqual(metric(ms, "disco_etcd_watch_restarts_total"), 1)
            self.assertGreater(metric(ms, "disco_etcd_txns_total", outcome="committed"), 0)
            self.assertEqual(metric(ms, "disco_etcd_mirror_live"), 1)
            eps = [lbl for (n, lbl), v in ms.items() if n == "disco_etcd_endpoint" and v == 1]
            self.assertEqual(len(eps), 1, eps)
            self.assertIn(dict(eps[0])["endpoint"], self.etcd.client_urls)
        answered = sum(metric(metrics(base), "disco_etcd_txns_total", outcome=o)
                       for base in (self.a, self.b)
                       for o in ("committed", "lost_guard", "failed", "unknown"))
        self.assertGreaterEqual(answered, len(acked))

    def test_metrics_show_the_mirror_lag(self):
        tok = self.new_token(self.a)
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m1?prevExist=false"), "value=x",
                                   FORM)
        self.assertEqual(st, 201, body)
        ms = metrics(self.a)
        self.assertEqual(metric(ms, "disco_etcd_txns_total", outcome="committed"), 2)
        self.assertEqual(metric(ms, "disco_etcd_txns_total", outcome="unknown"), 0)
        self.assertEqual(metric(ms, "disco_etcd_watch_restarts_total"), 0)
        self.assertEqual(metric(ms, "disco_etcd_mirror_live"), 1)
        self.assertIn(("disco_etcd_endpoint",
                       frozenset({("endpoint", self.etcd.client_urls[0])})), ms)
        for base in (self.a, self.b):
            harness.wait_until(lambda: metric(metrics(base), "disco_etcd_mirror_lag_revisions")
                               == 0, CONVERGE_TIMEOUT_S, what="no lag on %s" % base)
        # Revisions of keys outside the prefix are not lag for long: the
        # watch's next progress report covers them.
        for i in range(5):
            rc, _, err = harness.etcdctl(self.etcd.endpoints(), "put", "/elsewhere/%d" % i, "v")
            self.assertEqual(rc, 0, err)
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m2?prevExist=false"), "value=x",
                                   FORM)
        self.assertEqual(st, 201, body)
        harness.wait_until(lambda: metric(metrics(self.a), "disco_etcd_mirror_lag_revisions")
                           == 0 and metric(metrics(self.a), "disco_etcd_mirror_lag_seconds") == 0,
                           CONVERGE_TIMEOUT_S, what="the lag gone on A")

    def test_compaction_while_an_instance_is_away(self):
        """B misses revisions that etcd then compacts: its watch cannot
        resume, so its mirror is resynced from a range, deletions included;
        a long-poll parked on B through it is answered with an event or
        etcd's 401, never left hanging or answered wrongly."""
        tok = self.new_token(self.a)
        tok2 = self.new_token(self.a)  # only gains a member in the gap: exact
        for i in (1, 2, 3):
            st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m%d?prevExist=false" % i),
                                       "value=v%d" % i, FORM)
            self.assertEqual(st, 201, body)
        self.wait_members(self.b, tok, lambda m: len(m) == 3, "three members on B")
        st, h, _ = harness.http("GET", keys_url(self.b, tok))
        wait_index = int(h["x-etcd-index"]) + 1
        self.wait_members(self.b, tok2, lambda m: True, "the second token on B")
        poll = Poll(keys_url(self.b, tok) + "?wait=true&recursive=true&waitIndex=%d" % wait_index)
        poll2 = Poll(keys_url(self.b, tok2) + "?wait=true&recursive=true&waitIndex=%d"
                     % wait_index)
        poll.start()
        poll2.start()
        w3 = start_v3_watch(self.b, "/_etcd/registry/%s/" % tok, wait_index)
        w3_2 = start_v3_watch(self.b, "/_etcd/registry/%s/" % tok2, wait_index)
        raw = RawWatch(self.b, "/_etcd/registry/%s/" % tok, wait_index)
        self.addCleanup(raw.close)
        try:
            self.assertEqual(raw.next()[3], [1])  # created
            harness.wait_until(lambda: metric(metrics(self.b), "disco_parked_waits") == 5, 10,
                               what="the polls and watches parked on B")
        except Exception:
            for w in (w3, w3_2):
                w.kill()
            raise
        member, others = self.stop_b_and_its_member()
        try:
            st, _, body = harness.http("DELETE", keys_url(self.a, tok, "/m2"))
            self.assertEqual(st, 200, body)
            st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m4?prevExist=false"),
                                       "value=v4", FORM)
            self.assertEqual(st, 201, body)
            st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m1"), "value=v1b", FORM)
            self.assertEqual(st, 200, body)
            st, _, body = harness.http("PUT", keys_url(self.a, tok2, "/n1?prevExist=false"),
                                       "value=w1", FORM)
            self.assertEqual(st, 201, body)
            n1_index = json.loads(body)["node"]["createdIndex"]
            compacted = self.etcd.compact_at_newest(members=others, physical=True)
        finally:
            # B first: its keep-alive finds its member silent and moves on.
            os.kill(self.disco_b.pid, signal.SIGCONT)
            want = self.wait_members(self.a, tok, lambda m: len(m) == 3, "A's listing")
            got = self.wait_members(self.b, tok, lambda m: m == want, "B resynced")
            os.kill(member.pid, signal.SIGCONT)
        self.assertEqual(sorted(got), ["m1", "m3", "m4"])
        st, _, body = harness.http("GET", keys_url(self.b, tok, "/m1"))
        self.assertEqual(json.loads(body)["node"]["value"], "v1b")
        self.assertGreaterEqual(metric(metrics(self.b), "disco_etcd_watch_restarts_total"), 1)
        # The parked poll: the first change at or after its index is a
        # deletion etcd no longer has the revision of.
        poll.join(CONVERGE_TIMEOUT_S)
        self.assertIsNotNone(poll.result, "the parked poll was not answered")
        # etcd answers errorCode 401 with HTTP 400.
        st, _, body = poll.result
        self.assertEqual(st, 400, body)
        self.assertEqual(json.loads(body)["errorCode"], 401, body)
        # A watch asked now from inside the gap gets the same.
        st, _, body = harness.http("GET", keys_url(self.b, tok) +
                                   "?wait=true&recursive=true&waitIndex=%d" % wait_index)
        self.assertEqual(st, 400, body)
        self.assertEqual(json.loads(body)["errorCode"], 401, body)
        # The v3 watches on that token are cancelled as etcd cancels a
        # watch from a compacted revision: with the revision to watch from
        # again, the first after the state the mirror was resynced from
        # (etcd's at its compaction), and no reason (clientv3 then says
        # ErrCompacted).
        out, _ = w3.communicate(timeout=CONVERGE_TIMEOUT_S)
        self.assertIn(b"required revision has been compacted", out)
        r = raw.next()
        self.assertEqual((r.get(4), r.get(5), r.get(6)), ([1], [compacted + 1], None), r)
        # Watched again from there, it is not cancelled: it gets the next
        # change (below).
        again = RawWatch(self.b, "/_etcd/registry/%s/" % tok, compacted + 1)
        self.addCleanup(again.close)
        r = again.next()
        self.assertEqual((r.get(3), r.get(4)), ([1], None), r)
        # The token that only gained a member is replayed exactly: the
        # poll and the v3 watch get the registration at its own index.
        poll2.join(CONVERGE_TIMEOUT_S)
        self.assertIsNotNone(poll2.result, "the second parked poll was not answered")
        st, _, body = poll2.result
        self.assertEqual(st, 200, body)
        node = json.loads(body)["node"]
        self.assertEqual((node["key"], node["modifiedIndex"]),
                         ("/_etcd/registry/%s/n1" % tok2, n1_index))
        w3_2.kill()
        out, _ = w3_2.communicate(timeout=CONVERGE_TIMEOUT_S)
        self.assertEqual(out.decode().split("\n")[:3],
                         ["PUT", "/_etcd/registry/%s/n1" % tok2, "w1"], out)
        # Writes and watches after the gap are exact again, on both.
        st, h, _ = harness.http("GET", keys_url(self.b, tok))
        after_gap = int(h["x-etcd-index"]) + 1
        polls = [Poll(keys_url(base, tok) + "?wait=true&recursive=true&waitIndex=%d" % after_gap)
                 for base in (self.a, self.b)]
        for p in polls:
            p.start()
        st, _, body = harness.http("PUT", keys_url(self.b, tok, "/m5?prevExist=false"),
                                   "value=v5", FORM)
        self.assertEqual(st, 201, body)
        for p in polls:
            p.join(CONVERGE_TIMEOUT_S)
            self.assertEqual(p.result[0], 200, p.result)
            self.assertEqual(json.loads(p.result[2])["node"]["key"],
                             "/_etcd/registry/%s/m5" % tok)
        r = again.next()
        self.assertIsNone(r.get(4), r)
        kv = h2raw.pb_fields(h2raw.pb_fields(r[11][0])[2][0])
        self.assertEqual(kv[1], [("/_etcd/registry/%s/m5" % tok).encode()])
        self.assertEqual(self.members(self.a, tok), self.members(self.b, tok))

    def test_instance_killed_and_restarted_under_load(self):
        tok = self.new_token(self.a, size=1000)
        self.wait_members(self.b, tok, lambda m: True, "the token on B")
        stop = threading.Event()
        writers = [Writer(self.b, tok, "b%d" % i, stop) for i in range(WRITERS_PER_INSTANCE)]
        on_a = Writer(self.a, tok, "a0", stop)  # cut off by the kill
        for t in writers + [on_a]:
            t.start()
        time.sleep(LOAD_BEFORE_KILL_S)
        self.disco_a._signal(signal.SIGKILL)
        self.disco_a.wait(10)
        self.disco_a, self.a = self.start_instance(self.etcd.client_urls)
        time.sleep(LOAD_BEFORE_KILL_S)
        stop.set()
        for t in writers + [on_a]:
            t.join(CLIENT_TIMEOUT_S + 5)
        self.assertFalse(any(t.is_alive() for t in writers + [on_a]), "a client hung")
        acked = self.check_answers(writers)
        self.assertTrue(acked)
        # The restarted A reloaded the prefix: the same listing, the same
        # indexes, the same X-Etcd-Index as B once both are quiet.
        want = self.wait_members(self.b, tok, lambda m: all(k in m for k in acked), "B")
        self.assertEqual({k: want[k] for k in acked}, acked)
        got = self.wait_members(self.a, tok, lambda m: m == want, "A reloaded as B")
        self.assertEqual(got, want)

        def index(base):
            return int(harness.http("GET", keys_url(base, tok))[1]["x-etcd-index"])
        harness.wait_until(lambda: index(self.a) == index(self.b), CONVERGE_TIMEOUT_S,
                           what="the same X-Etcd-Index on A and B")
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/after-restart?prevExist=false"),
                                   "value=x", FORM)
        self.assertEqual(st, 201, body)


class EtcdSweptWhileAwayTest(AwayMixin, unittest.TestCase):
    """A sweeps a token by age while B's watch is away and the removal's
    revision is compacted: B's resync removes it as the removal's delivery
    would have (the tombstone's "expired" 404, the log line, parked
    watchers told the token is gone), not only at B's next restart."""

    MINAGE_S = 5  # the stops below must come before A's sweep

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-etcds-")
        self.etcd = harness.EtcdCluster(self.workdir, size=3)
        eps = self.etcd.client_urls
        self.disco_a, self.a = harness.start_disco(
            self.workdir, ["--etcd-endpoints", ",".join(eps), "--minage", "%ds" % self.MINAGE_S,
                           "--gcfreq", "1s"], wait_timeout=WAIT_TIMEOUT)
        self.disco_b, self.b = harness.start_disco(
            self.workdir, ["--etcd-endpoints", ",".join(reversed(eps))],
            wait_timeout=WAIT_TIMEOUT)

    def tearDown(self):
        harness.stop_etcd_and_discos(self.etcd, self.disco_a, self.disco_b)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def test_token_swept_while_away_is_removed_at_the_resync(self):
        st, _, body = harness.http("GET", self.a + "/new?size=3")
        self.assertEqual(st, 200, body)
        tok = body.decode().strip().rsplit("/", 1)[1]
        st, _, body = harness.http("PUT", keys_url(self.a, tok, "/m1?prevExist=false"),
                                   "value=v1", FORM)
        self.assertEqual(st, 201, body)
        index = json.loads(body)["node"]["modifiedIndex"]
        harness.wait_until(lambda: harness.http("GET", keys_url(self.b, tok, "/m1"))[0] == 200,
                           CONVERGE_TIMEOUT_S, what="the token on B")
        poll = Poll(keys_url(self.b, tok) + "?wait=true&recursive=true&waitIndex=%d"
                    % (index + 1))
        poll.start()
        raw = RawWatch(self.b, "/_etcd/registry/%s/" % tok, index + 1)
        self.addCleanup(raw.close)
        self.assertEqual(raw.next()[3], [1])  # created
        harness.wait_until(lambda: metric(metrics(self.b), "disco_parked_waits") == 2, 10,
                           what="the poll and the watch parked on B")
        member, others = self.stop_b_and_its_member()
        try:
            # Not removed yet: B cannot have seen the removal.
            self.assertEqual(etcd_keys(self.etcd.client_urls[others[0]], PREFIX + "v/" + tok),
                             {PREFIX + "v/" + tok}, "A swept the token before B stopped "
                             "(the test's setup was slower than --minage)")
            harness.wait_until(lambda: harness.http("GET", keys_url(self.a, tok))[0] == 404,
                               self.MINAGE_S + CONVERGE_TIMEOUT_S, what="A's sweep")
            eps = ",".join(self.etcd.client_urls[i] for i in others)
            for i in range(3):
                rc, _, err = harness.etcdctl(eps, "put", "/elsewhere/%d" % i, "v")
                self.assertEqual(rc, 0, err)
            self.etcd.compact_at_newest(members=others, physical=True)
        finally:
            os.kill(self.disco_b.pid, signal.SIGCONT)
            try:
                harness.wait_until(
                    lambda: harness.http("GET", keys_url(self.b, tok))[0] == 404,
                    CONVERGE_TIMEOUT_S, what="the token gone on B")
            finally:
                os.kill(member.pid, signal.SIGCONT)
        st, _, body = harness.http("GET", keys_url(self.b, tok))
        err = json.loads(body)
        self.assertEqual(err["errorCode"], 100, err)
        self.assertIn("expired", err["cause"], err)
        log = self.disco_b.log()
        self.assertIn("were compacted before the mirror saw them", log)  # a resync
        self.assertIn("token %s expired: removed by age" % tok, log)
        self.assertNotIn("stay until a restart", log)
        # The parked poll is answered as a delivered removal answers it
        # (an empty 200: ask again, and learn it expired) ...
        poll.join(CONVERGE_TIMEOUT_S)
        self.assertIsNotNone(poll.result, "the parked poll was not answered")
        self.assertEqual(poll.result[:1] + poll.result[2:], (200, b""), poll.result)
        # ... and so is the v3 watch.
        r = raw.next()
        self.assertEqual((r.get(4), r.get(6)), ([1], [b"disco: the token was removed"]), r)
        # B follows etcd from there.
        st, _, body = harness.http("GET", self.b + "/new?size=3")
        self.assertEqual(st, 200, body)
        tok2 = body.decode().strip().rsplit("/", 1)[1]
        harness.wait_until(lambda: harness.http("GET", keys_url(self.a, tok2))[0] == 200,
                           CONVERGE_TIMEOUT_S, what="B's new token on A")


if __name__ == "__main__":
    unittest.main()
