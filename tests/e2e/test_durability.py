#!/usr/bin/env python3
"""End-to-end durability tests for disco's on-disk registry (LMDB data dir).

Run:  python3 tests/e2e/test_durability.py        (exit code 0 on success)

Every test starts its own `disco serve` processes on loopback ports chosen at run
time, in its own temporary directory (removed afterwards), and stops every process
it started by PID (SIGTERM, or SIGKILL where a crash is the point).  On failure the
tail of every disco log of that test is printed.  Python 3 standard library only.

What is checked (the contract; see docs/decisions.md and PROTOCOL.md section 2):
  1. crash:   writes answered 201 survive SIGKILL with their value and indexes,
              including those only in the write-ahead log at the kill, and with
              a log so small that batches bypass it; the global index never
              goes backwards after a crash.
  2. history: a token's event history and parked-watch behaviour across a clean
              restart (SIGTERM -> exit 0, parked watches get an empty 200).
  3. TTL:     deadlines are kept on disk; keys that ran out while disco was down
              expire right after startup with an `expire` event.
  4. minage:  old tokens are removed (also after a restart, age from creation).
  5. data dir: the lock against a second disco, foreign and corrupt dirs are
              refused and left untouched.
  6. full store: a full map answers 503/errorCode 300, keeps serving reads and
              waits, loses nothing, and recovers by itself when old tokens go.
  7. small disk: on a disk with a few MiB free (a tmpfs of 24 MiB; needs root
              to mount it, skipped otherwise) writes are taken while the free
              space is above the reserve for what is pending (not a share of
              --map-size), refused with 503 once it is not, and taken again when
              room returns; the log says the reserved figure in bytes.
"""

import functools
import hashlib
import http.client as httpclient
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import http, start_disco  # noqa: E402

REG = "/v2/keys/_etcd/registry"
LOG_TAIL_CHARS = 4000

# Crash test bounds.
CRASH_ROUNDS = 3
CRASH_WRITERS = 8
CRASH_MAX_WRITES_PER_WRITER = 3000
CRASH_KILL_AFTER_S = (1.0, 2.0)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def js(body):
    """Parse an etcd JSON body (exactly one object and a newline)."""
    return json.loads(body.decode("utf-8"))


def form(**kw):
    return kw


def reg_url(base, token, key=""):
    return "%s%s/%s%s" % (base, REG, token, ("/" + key) if key else "")


def metric(base, name):
    """Value of an unlabelled metric line `name N` in /metrics, or None."""
    status, _, body = http("GET", base + "/metrics", timeout=5)
    if status != 200:
        return None
    m = re.search(r"^%s (\S+)$" % re.escape(name), body.decode(), re.M)
    return float(m.group(1)) if m else None


def file_digests(directory):
    """{name: sha256 of bytes} of every file directly in directory."""
    out = {}
    for name in sorted(os.listdir(directory)):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


class Background:
    """One HTTP request run in a thread (a watch), result collected later."""

    def __init__(self, method, url, body=None, timeout=30):
        self.result = None
        self.error = None
        self.started = time.monotonic()
        self.finished = None
        self._t = threading.Thread(target=self._run, args=(method, url, body, timeout),
                                   daemon=True)
        self._t.start()

    def _run(self, method, url, body, timeout):
        try:
            self.result = http(method, url, body=body, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        self.finished = time.monotonic()

    def join(self, timeout):
        self._t.join(timeout)
        return not self._t.is_alive()

    def done(self):
        return not self._t.is_alive()


def with_logs(method):
    """On failure, print the tail of every disco log this test produced."""
    @functools.wraps(method)
    def wrapper(self, *a, **kw):
        try:
            method(self, *a, **kw)
            if self.deferred:
                self.fail("\n".join(self.deferred))
        except BaseException:
            self.print_logs()
            raise
    return wrapper


class DurabilityCase(unittest.TestCase):

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-durability-")
        self.data_dir = os.path.join(self.workdir, "disco-data")
        self.procs = []
        self.deferred = []   # failures that do not stop the rest of the test
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for p in self.procs:
            try:
                p.stop(timeout=5)
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)

    def print_logs(self):
        try:
            names = sorted(n for n in os.listdir(self.workdir) if n.endswith(".log"))
        except OSError:
            return
        for n in names:
            with open(os.path.join(self.workdir, n), "rb") as f:
                text = f.read().decode("utf-8", "replace")
            sys.stderr.write("\n----- %s (last %d chars) -----\n%s\n"
                             % (n, LOG_TAIL_CHARS, text[-LOG_TAIL_CHARS:]))

    # --- processes -----------------------------------------------------------

    def start(self, extra_args=(), wait_timeout="5s"):
        # These tests make many tokens through the v2 keys path from one
        # address, which /new's per-address budget would refuse (429).
        extra_args = ("--new-rate", "0") + tuple(extra_args)
        proc, base = start_disco(self.workdir, extra_args, wait_timeout=wait_timeout)
        self.procs.append(proc)
        return proc, base

    def kill9(self, proc):
        """SIGKILL by PID, wait for it to be gone."""
        os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait(10)
        self.assertEqual(rc, -signal.SIGKILL, "disco did not die of SIGKILL: rc=%r" % rc)
        proc.stop()  # closes the log; the process is already gone

    def term(self, proc, timeout=10):
        """SIGTERM by PID; disco must exit 0 by itself within timeout.  A wrong exit
        code is reported at the end of the test, so the restart checks still run."""
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout)
        proc.stop()  # SIGKILLs if it did not exit (rc then != 0)
        if rc != 0:
            how = ("killed by signal %d" % -rc) if rc is not None and rc < 0 else "rc=%r" % rc
            self.deferred.append("disco (pid %d) did not exit 0 within %ss of SIGTERM: %s"
                                 % (proc.pid, timeout, how))
        return rc

    def run_refused(self, data_dir, timeout=10):
        """Run `disco serve` that must refuse to start: returns (rc, output, seconds).
        Fails (after killing it by PID) if it is still running after timeout."""
        port = harness.free_port()
        argv = [harness.disco_bin(), "serve", "--addr", "127.0.0.1:%d" % port,
                "--data-dir", data_dir, "--wait-timeout", "5s"]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=harness.clean_env())
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()  # by PID (Popen.kill sends SIGKILL to p.pid)
            out, _ = p.communicate(timeout=10)
            self.fail("disco serve --data-dir %s was still running after %ss (it must refuse "
                      "to start); output:\n%s" % (data_dir, timeout, out.decode("utf-8", "replace")))
        return p.returncode, out.decode("utf-8", "replace"), time.monotonic() - t0

    # --- registry ------------------------------------------------------------

    def make_v2_token(self, base, name, size):
        st, h, b = http("PUT", reg_url(base, name, "_config/size"), form(value=str(size)))
        self.assertEqual(st, 201, "create token %s: %d %r" % (name, st, b))
        return name

    def make_new_token(self, base, size):
        st, h, b = http("GET", "%s/new?size=%d" % (base, size))
        self.assertEqual(st, 200, "GET /new: %d %r" % (st, b))
        tok = b.decode().rsplit("/", 1)[1]
        self.assertRegex(tok, r"\A[0-9a-f]{32}\Z")
        return tok

    def index_of(self, base):
        st, h, b = http("GET", base + REG + "/no-such-token-for-index")
        self.assertIn("x-etcd-index", h, "no X-Etcd-Index on %d answer %r" % (st, b))
        return int(h["x-etcd-index"])

    def listing(self, base, token):
        """{key: node} of a token's listing (v2 path), plus X-Etcd-Index."""
        st, h, b = http("GET", reg_url(base, token) + "?recursive=false")
        self.assertEqual(st, 200, "listing of %s: %d %r" % (token, st, b))
        nodes = js(b)["node"].get("nodes", [])
        return {n["key"]: n for n in nodes}, int(h["x-etcd-index"])

    def assert_gone(self, base, token, key=""):
        st, h, b = http("GET", reg_url(base, token, key))
        self.assertEqual(st, 404, "GET %s/%s: expected 404, got %d %r" % (token, key, st, b))
        self.assertEqual(js(b).get("errorCode"), 100, "GET %s/%s: %r" % (token, key, b))

    def wait_parked(self, base, n, timeout=5):
        harness.wait_until(lambda: (metric(base, "disco_parked_waits") or 0) >= n,
                           timeout, what="%d parked watch(es) on %s" % (n, base))


# --------------------------------------------------------------------------
# 1. crash (SIGKILL) while writing
# --------------------------------------------------------------------------

class TestCrash(DurabilityCase):
    ROUNDS = CRASH_ROUNDS
    VALUE_PAD = 0     # extra bytes per value
    LOG_BYTES = None  # pre-create a write-ahead log of this size (None: disco's own)

    def _writer(self, base, tid, rnd, tokens, new_tokens, kill_evt, rec):
        u = urllib.parse.urlsplit(base)
        conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=10)
        rng = random.Random(rnd * 1000 + tid)
        try:
            self._write_loop(conn, rng, tid, rnd, tokens, new_tokens, kill_evt, rec)
        except Exception as e:  # noqa: BLE001 - a bug in the answer, reported by the test
            rec["errors"].append("writer %d: %r" % (tid, e))
        finally:
            conn.close()

    def _write_loop(self, conn, rng, tid, rnd, tokens, new_tokens, kill_evt, rec):
        for n in range(CRASH_MAX_WRITES_PER_WRITER):
            if kill_evt.is_set():
                break
            tok = tokens[(tid + n) % len(tokens)]
            mid = "%02x%02x%012x" % (rnd, tid, n)
            val = "m%s=http://127.0.0.%d:2380,r%d-%016x" % (mid, tid + 1, rnd,
                                                            rng.getrandbits(64))
            val += "," + "p" * self.VALUE_PAD if self.VALUE_PAD else ""
            if tok in new_tokens and n % 2:
                path = "/%s/%s?prevExist=false" % (tok, mid)   # discovery surface
            else:
                path = "%s/%s/%s?prevExist=false" % (REG, tok, mid)
            key = "/_etcd/registry/%s/%s" % (tok, mid)
            rec["attempted"][key] = val
            try:
                conn.request("PUT", path, body=urllib.parse.urlencode({"value": val}),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, httpclient.HTTPException) as e:
                if not kill_evt.is_set():
                    rec["errors"].append("PUT %s: %r before the kill" % (path, e))
                break
            idx = resp.getheader("X-Etcd-Index")
            if idx is not None:
                rec["indexes"].append(int(idx))
            if resp.status != 201:
                rec["errors"].append("PUT %s: %d %r" % (path, resp.status, data[:300]))
                continue
            node = js(data)["node"]
            if node.get("key") != key or node.get("value") != val:
                rec["errors"].append("PUT %s answered node %r" % (path, node))
                continue
            rec["ok"].append((key, val, node["createdIndex"], node["modifiedIndex"]))

    @with_logs
    def test_sigkill_mid_stream_loses_no_acknowledged_write(self):
        if self.LOG_BYTES:
            # disco keeps the size of a log it finds (an operator's choice).
            os.makedirs(os.path.join(self.workdir, "disco-data"))
            with open(os.path.join(self.workdir, "disco-data", "disco.wal"), "wb") as f:
                f.write(bytes(self.LOG_BYTES))
        proc, base = self.start()
        # Enough tokens that the most writes a run can make (writers x
        # CRASH_MAX_WRITES_PER_WRITER x rounds) stay under disco's default
        # limit of 2048 keys per token.
        tokens = [self.make_new_token(base, 3), self.make_new_token(base, 5)]
        sizes = {tokens[0]: "3", tokens[1]: "5"}
        for i in range(46):
            name = "crash-%02d" % i
            tokens.append(self.make_v2_token(base, name, 3 + i % 7))
            sizes[name] = str(3 + i % 7)
        new_tokens = set(tokens[:2])
        acked = {}          # key -> (value, createdIndex) over all rounds
        attempted = {}      # key -> value (acked or not) over all rounds
        max_seen = self.index_of(base)
        created_seen = {}   # createdIndex -> key, for uniqueness

        from_log_rounds = 0  # restarts that found writes only in the write-ahead log
        store_work = {}      # store counters seen just before each kill, summed
        for rnd in range(1, self.ROUNDS + 1):
            recs = []
            kill_evt = threading.Event()
            threads = []
            for tid in range(CRASH_WRITERS):
                rec = {"attempted": {}, "ok": [], "errors": [], "indexes": []}
                recs.append(rec)
                t = threading.Thread(target=self._writer,
                                     args=(base, tid, rnd, tokens, new_tokens, kill_evt, rec),
                                     daemon=True)
                threads.append(t)
            for t in threads:
                t.start()
            time.sleep(random.uniform(*CRASH_KILL_AFTER_S))
            for name in ("log_frames", "checkpoints", "direct_commits"):
                v = metric(base, "disco_store_%s_total" % name)
                store_work[name] = store_work.get(name, 0) + (v or 0)
            kill_evt.set()
            self.kill9(proc)
            for t in threads:
                t.join(15)
                self.assertFalse(t.is_alive(), "round %d: a writer thread hangs" % rnd)

            n_ok = 0
            for rec in recs:
                self.assertEqual(rec["errors"], [], "round %d: writes failed before the kill"
                                 % rnd)
                attempted.update(rec["attempted"])
                for key, val, ci, mi in rec["ok"]:
                    self.assertEqual(ci, mi, "fresh key %s: createdIndex != modifiedIndex" % key)
                    self.assertNotIn(ci, created_seen, "index %d given to %s and %s"
                                     % (ci, created_seen.get(ci), key))
                    created_seen[ci] = key
                    acked[key] = (val, ci)
                    max_seen = max(max_seen, ci)
                    n_ok += 1
                if rec["indexes"]:
                    max_seen = max(max_seen, max(rec["indexes"]))
            self.assertGreater(n_ok, 20, "round %d: only %d writes acknowledged before the kill; "
                               "the crash test tested nothing" % (rnd, n_ok))

            # Restart on the same data dir (new port) and check everything.
            proc, base = self.start()
            m = re.search(r"applied (\d+) logged batches \((\d+) writes\)", proc.log())
            if m:
                from_log_rounds += 1
            listed = {}
            top_listed = 0
            for tok in tokens:
                nodes, idx = self.listing(base, tok)
                self.assertGreaterEqual(idx, max_seen, "round %d: X-Etcd-Index went backwards "
                                        "after SIGKILL: %d < %d seen before" % (rnd, idx, max_seen))
                listed.update(nodes)
                st, _, b = http("GET", reg_url(base, tok, "_config/size"))
                self.assertEqual(st, 200, "round %d: size of %s: %d %r" % (rnd, tok, st, b))
                self.assertEqual(js(b)["node"]["value"], sizes[tok])
            missing = []
            for key, (val, ci) in sorted(acked.items()):
                n = listed.get(key)
                if n is None:
                    missing.append(key)
                    continue
                self.assertEqual(n.get("value"), val, "round %d: %s value changed" % (rnd, key))
                self.assertEqual(n.get("createdIndex"), ci,
                                 "round %d: %s createdIndex changed" % (rnd, key))
                self.assertEqual(n.get("modifiedIndex"), ci,
                                 "round %d: %s modifiedIndex changed" % (rnd, key))
            self.assertEqual(missing, [], "round %d: %d of %d acknowledged (201) writes lost "
                             "after SIGKILL" % (rnd, len(missing), len(acked)))
            seen_ci = set()
            for key, n in listed.items():
                # Keys persisted without an answer are fine, but only ones we sent.
                self.assertIn(key, attempted, "round %d: unknown key %s after restart" % (rnd, key))
                self.assertEqual(n.get("value"), attempted[key], "round %d: %s" % (rnd, key))
                self.assertNotIn(n["createdIndex"], seen_ci, "duplicate createdIndex in listing")
                seen_ci.add(n["createdIndex"])
                top_listed = max(top_listed, n["modifiedIndex"])
            # Individual reads of a sample through both surfaces.
            for key in random.sample(sorted(acked), min(40, len(acked))):
                val, ci = acked[key]
                tok, mid = key.split("/")[3:5]
                urls = [base + "/v2/keys" + key]
                if tok in new_tokens:
                    urls.append("%s/%s/%s" % (base, tok, mid))
                for url in urls:
                    st, _, b = http("GET", url)
                    self.assertEqual(st, 200, "GET %s after SIGKILL: %d %r" % (url, st, b))
                    node = js(b)["node"]
                    self.assertEqual((node["value"], node["createdIndex"]), (val, ci), url)
            # A new write is indexed above everything seen or stored before.
            st, h, b = http("PUT", reg_url(base, tokens[rnd % 4], "after-crash-%d" % rnd)
                            + "?prevExist=false", form(value="x"))
            self.assertEqual(st, 201, "round %d: write after restart: %d %r" % (rnd, st, b))
            ci = js(b)["node"]["createdIndex"]
            self.assertGreater(ci, max_seen, "round %d: new write got index %d, not above %d "
                               "seen before the crash" % (rnd, ci, max_seen))
            self.assertGreater(ci, top_listed, "round %d: new write got index %d, not above "
                               "stored index %d" % (rnd, ci, top_listed))
            max_seen = max(max_seen, ci, int(h["x-etcd-index"]))
            attempted["/_etcd/registry/%s/after-crash-%d" % (tokens[rnd % 4], rnd)] = "x"
            acked["/_etcd/registry/%s/after-crash-%d" % (tokens[rnd % 4], rnd)] = ("x", ci)
            created_seen[ci] = "after-crash-%d" % rnd
            sys.stderr.write("[crash round %d: %d writes acknowledged, %d checked in all, index %d] "
                             % (rnd, n_ok, len(acked), max_seen))

        # Checkpoints into LMDB are a fraction of a second apart: a kill during
        # a stream of writes leaves the latest ones only in the log, so the
        # path that replays it must have been exercised.
        if not self.LOG_BYTES:  # a tiny log is often empty: checkpoints every few frames
            self.assertGreater(from_log_rounds, 0, "no restart replayed the write-ahead log; "
                               "the crash test did not test it")
        self.assertGreater(store_work["log_frames"], 0, "nothing was logged: %r" % store_work)
        self.assertGreater(store_work["checkpoints"], 0, "no checkpoint ran: %r" % store_work)
        if self.LOG_BYTES:
            self.assertGreater(store_work["direct_commits"], 0, "no batch was too large for "
                               "a %d-byte log: %r" % (self.LOG_BYTES, store_work))
        sys.stderr.write("[store work before the kills: %r] " % store_work)
        self.term(proc)


class TestCrashTinyLog(TestCrash):
    """The same crash test with a 16 KiB log and 2.5 KiB values: checkpoints to
    make room, and batches too large for the log, which go straight into LMDB,
    mix with logged ones; nothing acknowledged may be lost either way."""
    ROUNDS = 2
    VALUE_PAD = 2500
    LOG_BYTES = 16384


# --------------------------------------------------------------------------
# 2. event history and parked watches across a clean restart
# --------------------------------------------------------------------------

class TestRestartHistory(DurabilityCase):

    @with_logs
    def test_history_answers_watch_after_clean_restart(self):
        proc, base = self.start(wait_timeout="5s")
        tok = self.make_v2_token(base, "hist", 3)
        ntok = self.make_new_token(base, 3)
        k = self.index_of(base) + 1
        dir_watch = Background("GET", reg_url(base, tok) + "?recursive=true&wait=true&waitIndex=%d"
                               % k, timeout=20)
        self.wait_parked(base, 1)
        st, h, b = http("PUT", reg_url(base, tok, "m1") + "?prevExist=false",
                        form(value="m1=http://127.0.0.1:2380"))
        self.assertEqual(st, 201, b)
        self.assertEqual(js(b)["node"]["createdIndex"], k)
        self.assertTrue(dir_watch.join(10), "parked watch not answered after the write")
        self.assertIsNone(dir_watch.error)
        st, wh, before = dir_watch.result
        self.assertEqual(st, 200)
        ev_before = js(before)
        self.assertEqual(ev_before["action"], "create")
        self.assertEqual(ev_before["node"]["modifiedIndex"], k)
        # More history: a second member and one on the discovery surface.
        st, _, b = http("PUT", reg_url(base, tok, "m2") + "?prevExist=false",
                        form(value="m2=http://127.0.0.2:2380"))
        self.assertEqual(st, 201, b)
        st, _, b = http("PUT", "%s/%s/n1?prevExist=false" % (base, ntok),
                        form(value="n1=http://127.0.0.3:2380"))
        self.assertEqual(st, 201, b)
        n1 = js(b)["node"]["createdIndex"]
        top = self.index_of(base)

        self.term(proc)
        proc, base = self.start(wait_timeout="5s")
        self.assertGreaterEqual(self.index_of(base), top, "X-Etcd-Index went backwards")

        def ask(url):
            t0 = time.monotonic()
            st, h, b = http("GET", url, timeout=20)
            took = time.monotonic() - t0
            self.assertEqual(st, 200, "%s: %d %r" % (url, st, b))
            self.assertTrue(b, "%s: empty answer after %.1fs, i.e. not answered from history"
                            % (url, took))
            return js(b)

        ev_after = ask(reg_url(base, tok) + "?recursive=true&wait=true&waitIndex=%d" % k)
        self.assertEqual(ev_after, ev_before, "history event differs after restart")
        ev = ask(reg_url(base, tok, "m1") + "?recursive=false&wait=true&waitIndex=%d" % k)
        self.assertEqual((ev["action"], ev["node"]["key"], ev["node"]["createdIndex"]),
                         ("create", "/_etcd/registry/hist/m1", k))
        ev = ask(reg_url(base, tok) + "?recursive=true&wait=true&waitIndex=%d" % (k + 1))
        self.assertEqual((ev["action"], ev["node"]["key"]), ("create", "/_etcd/registry/hist/m2"))
        ev = ask("%s/%s?recursive=true&wait=true&waitIndex=%d" % (base, ntok, k))
        self.assertEqual((ev["action"], ev["node"]["key"], ev["node"]["modifiedIndex"]),
                         ("create", "/_etcd/registry/%s/n1" % ntok, n1))
        # A new write still gets a higher index and wakes a watch from the top.
        w = Background("GET", reg_url(base, tok) + "?recursive=true&wait=true&waitIndex=%d"
                       % (top + 1), timeout=20)
        self.wait_parked(base, 1)
        st, _, b = http("PUT", reg_url(base, tok, "m3") + "?prevExist=false", form(value="v3"))
        self.assertEqual(st, 201, b)
        self.assertGreater(js(b)["node"]["createdIndex"], top)
        self.assertTrue(w.join(10))
        self.assertEqual(js(w.result[2])["node"]["key"], "/_etcd/registry/hist/m3")
        self.term(proc)

    @with_logs
    def test_parked_watch_gets_empty_200_on_sigterm(self):
        proc, base = self.start(wait_timeout="60s")
        tok = self.make_v2_token(base, "park", 3)
        ntok = self.make_new_token(base, 3)
        idx = self.index_of(base)
        w1 = Background("GET", reg_url(base, tok) + "?recursive=true&wait=true&waitIndex=%d"
                        % (idx + 1), timeout=30)
        w2 = Background("GET", "%s/%s?recursive=true&wait=true&waitIndex=%d"
                        % (base, ntok, idx + 1), timeout=30)
        self.wait_parked(base, 2)
        self.assertFalse(w1.done() or w2.done(), "watch answered before any event")
        self.term(proc, timeout=10)
        for w in (w1, w2):
            self.assertTrue(w.join(10), "parked watch not answered on SIGTERM")
            self.assertIsNone(w.error, "parked watch got an error on SIGTERM: %r" % w.error)
            st, h, b = w.result
            self.assertEqual((st, b), (200, b""), "parked watch on SIGTERM: %d %r" % (st, b))
            self.assertEqual(h.get("connection", "").lower(), "close",
                             "parked watch answered on SIGTERM without Connection: close")
            self.assertEqual(h.get("x-etcd-index"), str(idx))


# --------------------------------------------------------------------------
# 3. TTL deadlines across a restart
# --------------------------------------------------------------------------

class TestTTLRestart(DurabilityCase):

    @with_logs
    def test_ttl_expires_while_down_and_long_ttl_survives(self):
        proc, base = self.start()
        tok = self.make_v2_token(base, "ttl", 3)
        st, _, b = http("PUT", reg_url(base, tok, "long") + "?ttl=30", form(value="L"))
        self.assertEqual(st, 201, b)
        long_node = js(b)["node"]
        self.assertIn("expiration", long_node)
        st, _, b = http("PUT", reg_url(base, tok, "short") + "?ttl=2", form(value="S"))
        t_short = time.monotonic()
        self.assertEqual(st, 201, b)
        short_ci = js(b)["node"]["createdIndex"]
        st, _, b = http("GET", reg_url(base, tok, "short"))
        self.assertEqual(st, 200, "short-TTL key not readable before its deadline: %r" % b)
        self.assertLessEqual(js(b)["node"]["ttl"], 2)
        top = self.index_of(base)
        self.term(proc)

        time.sleep(max(0.0, t_short + 3.0 - time.monotonic()))
        proc, base = self.start()
        st, h, b = http("GET", reg_url(base, tok, "short"))
        self.assertEqual(st, 404, "key whose TTL ran out while disco was down is still served: "
                         "%d %r" % (st, b))
        self.assertEqual(js(b)["errorCode"], 100)
        t0 = time.monotonic()
        st, h, b = http("GET", reg_url(base, tok, "short") + "?wait=true&waitIndex=%d"
                        % (short_ci + 1), timeout=20)
        self.assertEqual(st, 200, b)
        self.assertTrue(b, "no expire event within %.1fs after restart" % (time.monotonic() - t0))
        ev = js(b)
        self.assertEqual(ev["action"], "expire", ev)
        self.assertEqual(ev["node"]["key"], "/_etcd/registry/ttl/short")
        self.assertEqual(ev["node"]["createdIndex"], short_ci)
        self.assertGreater(ev["node"]["modifiedIndex"], top, "expire event must take a new index")
        if "prevNode" in ev:
            self.assertEqual(ev["prevNode"].get("value"), "S")
        self.assertGreaterEqual(self.index_of(base), ev["node"]["modifiedIndex"])

        st, _, b = http("GET", reg_url(base, tok, "long"))
        self.assertEqual(st, 200, "ttl=30 key lost over a restart: %d %r" % (st, b))
        node = js(b)["node"]
        self.assertEqual(node["value"], "L")
        self.assertEqual(node["expiration"], long_node["expiration"],
                         "expiration changed across the restart")
        self.assertLessEqual(node["ttl"], 30)
        self.assertGreaterEqual(node["ttl"], 1)
        self.assertEqual((node["createdIndex"], node["modifiedIndex"]),
                         (long_node["createdIndex"], long_node["modifiedIndex"]))
        self.term(proc)


# --------------------------------------------------------------------------
# 4. --minage / --gcfreq
# --------------------------------------------------------------------------

class TestMinAge(DurabilityCase):

    @with_logs
    def test_old_tokens_are_removed(self):
        proc, base = self.start(("--minage", "3s", "--gcfreq", "1s"))
        t0 = time.monotonic()
        ntok = self.make_new_token(base, 3)
        vtok = self.make_v2_token(base, "aging", 3)
        for tok in (ntok, vtok):
            st, _, b = http("PUT", reg_url(base, tok, "m1") + "?prevExist=false", form(value="v"))
            self.assertEqual(st, 201, b)
        st, _, b = http("GET", "%s/%s" % (base, ntok))
        self.assertEqual(st, 200, "fresh token not readable: %r" % b)
        self.assertEqual(metric(base, "disco_tokens_removed_total"), 0)

        gone_at = {}

        def both_gone():
            for tok in (ntok, vtok):
                if tok not in gone_at:
                    st, _, b = http("GET", reg_url(base, tok), timeout=5)
                    if st == 404:
                        gone_at[tok] = time.monotonic()
                    else:
                        assert st == 200, (st, b)
            return len(gone_at) == 2

        harness.wait_until(both_gone, 12, interval=0.2, what="tokens older than --minage 3s "
                           "to be removed")
        for tok in (ntok, vtok):
            self.assertGreaterEqual(gone_at[tok] - t0, 2.9, "token removed before --minage 3s")
            self.assert_gone(base, tok)
            self.assert_gone(base, tok, "m1")
            self.assert_gone(base, tok, "_config/size")
        st, _, b = http("GET", "%s/%s" % (base, ntok))
        self.assertEqual((st, js(b).get("errorCode")), (404, 100), b)
        st, _, b = http("GET", reg_url(base, ntok) + "?wait=true&waitIndex=1", timeout=10)
        self.assertEqual(st, 404, "watch of a removed token: %d %r" % (st, b))
        self.assertEqual(metric(base, "disco_tokens_removed_total"), 2)
        self.term(proc)

    @with_logs
    def test_token_age_is_kept_across_restart(self):
        # minage 5s: the token must be gone within 3 s of the restart, which only
        # happens if its age counts from its creation, not from disco's start.
        args = ("--minage", "5s", "--gcfreq", "1s")
        proc, base = self.start(args)
        t0 = time.monotonic()
        tok = self.make_new_token(base, 3)
        st, _, b = http("PUT", "%s/%s/m1?prevExist=false" % (base, tok), form(value="v"))
        self.assertEqual(st, 201, b)
        st, _, b = http("GET", reg_url(base, tok))
        self.assertEqual(st, 200, b)
        self.term(proc)
        time.sleep(max(0.0, t0 + 5.5 - time.monotonic()))

        proc, base = self.start(args)
        t_start = time.monotonic()
        fresh = self.make_v2_token(base, "fresh", 3)

        def gone():
            st, _, b = http("GET", reg_url(base, tok), timeout=5)
            assert st in (200, 404), (st, b)
            return st == 404

        harness.wait_until(gone, 3.0, interval=0.2,
                           what="token older than --minage to be removed after a restart "
                           "(within 3s of startup, less than minage)")
        self.assertLess(time.monotonic() - t_start, 4.9)
        self.assert_gone(base, tok, "m1")
        st, _, b = http("GET", reg_url(base, fresh))
        self.assertEqual(st, 200, "token younger than minage removed: %r" % b)
        self.assertEqual(metric(base, "disco_tokens_removed_total"), 1,
                         "disco_tokens_removed_total after removing one old token at startup")
        # Removal is durable: not back after another restart.
        self.term(proc)
        proc, base = self.start(("--minage", "1h", "--gcfreq", "1s"))
        self.assert_gone(base, tok)
        self.term(proc)


# --------------------------------------------------------------------------
# 5. data dir: lock, foreign files, corrupt store
# --------------------------------------------------------------------------

class TestDataDir(DurabilityCase):

    @with_logs
    def test_second_disco_on_same_dir_is_refused(self):
        proc, base = self.start()
        tok = self.make_v2_token(base, "locked", 3)
        rc, out, took = self.run_refused(self.data_dir)
        self.assertNotEqual(rc, 0, "second disco on the same data dir exited 0: %s" % out)
        self.assertLess(took, 5, "second disco took %.1fs to give up" % took)
        self.assertIn("in use by another disco", out)
        self.assertRegex(out, r"\(process %d\)" % proc.pid,
                         "message does not name the running disco's PID %d: %r" % (proc.pid, out))
        # The first one is unharmed.
        st, _, b = http("GET", base + "/health")
        self.assertEqual(st, 200)
        st, _, b = http("PUT", reg_url(base, tok, "m1") + "?prevExist=false", form(value="v"))
        self.assertEqual(st, 201, b)
        self.term(proc)
        # Once it is gone, the dir can be used again.
        proc, base = self.start()
        st, _, b = http("GET", reg_url(base, tok, "m1"))
        self.assertEqual(st, 200, b)
        self.term(proc)

    @with_logs
    def test_foreign_dir_is_refused_and_untouched(self):
        os.makedirs(self.data_dir)
        with open(os.path.join(self.data_dir, "notes.txt"), "wb") as f:
            f.write(b"my notes, not a database\n")
        before = file_digests(self.data_dir)
        rc, out, _ = self.run_refused(self.data_dir)
        self.assertNotEqual(rc, 0, "disco accepted a foreign data dir: %s" % out)
        self.assertIn(self.data_dir, out, "message does not name the dir: %r" % out)
        after = file_digests(self.data_dir)
        for name, digest in before.items():
            self.assertEqual(after.get(name), digest, "%s changed" % name)
        self.assertNotIn("data.mdb", after, "disco created a store in a foreign dir")

    @with_logs
    def test_corrupt_store_is_refused_and_untouched(self):
        os.makedirs(self.data_dir)
        with open(os.path.join(self.data_dir, "data.mdb"), "wb") as f:
            f.write(os.urandom(64 * 1024))
        before = file_digests(self.data_dir)
        rc, out, _ = self.run_refused(self.data_dir)
        self.assertNotEqual(rc, 0, "disco accepted a corrupt data.mdb: %s" % out)
        self.assertIn(self.data_dir, out, "message does not name the dir: %r" % out)
        self.assertTrue(out.strip(), "no message")
        after = file_digests(self.data_dir)
        self.assertEqual(after.get("data.mdb"), before["data.mdb"], "corrupt data.mdb was changed")
        self.assertEqual(os.path.getsize(os.path.join(self.data_dir, "data.mdb")), 64 * 1024)


# --------------------------------------------------------------------------
# 6. full store (small --map-size): 503, reads and waits go on, recovery
# --------------------------------------------------------------------------

class TestFullStore(DurabilityCase):

    @with_logs
    def test_full_map_answers_503_and_recovers(self):
        minage = 10.0
        proc, base = self.start(("--map-size", "2MiB", "--minage", "%ds" % minage,
                                 "--gcfreq", "1s"), wait_timeout="2s")
        t0 = time.monotonic()
        tokens = [self.make_v2_token(base, "full%d" % i, 3) for i in range(8)]
        big = "x" * 4096
        acked = {}   # (token, key) -> (value, createdIndex)
        full = []    # (token, key, status, body) of the first refused write
        lock = threading.Lock()
        stop = threading.Event()

        def writer(tid):
            n = 0
            while not stop.is_set() and n < 2000:
                tok = tokens[(tid + n) % len(tokens)]
                key = "w%d-%d" % (tid, n)
                val = "%s-%s" % (key, big)
                try:
                    st, h, b = http("PUT", reg_url(base, tok, key) + "?prevExist=false",
                                    form(value=val), timeout=10)
                except OSError as e:
                    st, b = None, repr(e).encode()
                with lock:
                    if st == 201:
                        acked[(tok, key)] = (val, js(b)["node"]["createdIndex"])
                    else:
                        full.append((tok, key, st, b))
                        stop.set()
                n += 1

        ws = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(4)]
        for w in ws:
            w.start()
        for w in ws:
            w.join(30)
            self.assertFalse(w.is_alive(), "writer hangs")
        self.assertTrue(full, "2 MiB store never filled after %d writes of 4 KiB" % len(acked))
        self.assertLess(time.monotonic() - t0, minage - 2,
                        "filling took too long to check before --minage (test setup)")
        tok, key, st, b = full[0]
        self.assertEqual(st, 503, "write to a full store: %d %r" % (st, b))
        err = js(b)
        self.assertEqual(err.get("errorCode"), 300, err)
        self.assertIsInstance(err.get("message"), str, err)
        for extra in full[1:]:
            self.assertEqual(extra[2], 503, "other refused write: %r" % (extra,))
        sys.stderr.write("[full after %d writes] " % len(acked))

        st, _, b = http("GET", base + "/health")
        self.assertEqual(st, 503, "/health on a full store: %d %r" % (st, b))
        # A refused write did not happen.
        for tok_, key_, _, _ in full:
            if (tok_, key_) not in acked:
                self.assert_gone(base, tok_, key_)
        # Every acknowledged write is still readable (listings = reads).
        for tok in tokens:
            nodes, _ = self.listing(base, tok)
            for (t, k), (val, ci) in acked.items():
                if t != tok:
                    continue
                n = nodes.get("/_etcd/registry/%s/%s" % (t, k))
                self.assertIsNotNone(n, "acknowledged %s/%s missing on a full store" % (t, k))
                self.assertEqual((n["value"], n["createdIndex"]), (val, ci))
        # Waits still work: one from history, one parked until --wait-timeout.
        (t, k), (val, ci) = sorted(acked.items(), key=lambda kv: kv[1][1])[0]
        st, _, b = http("GET", reg_url(base, t, k) + "?wait=true&waitIndex=%d" % ci, timeout=10)
        self.assertEqual(st, 200, b)
        self.assertTrue(b, "history watch on a full store not answered")
        self.assertEqual(js(b)["node"]["value"], val)
        top = self.index_of(base)
        st, h, b = http("GET", reg_url(base, tokens[0]) + "?recursive=true&wait=true&waitIndex=%d"
                        % (top + 1), timeout=10)
        self.assertEqual((st, b), (200, b""), "parked watch on a full store: %d %r" % (st, b))
        # Still full a moment later (no token is old enough yet), and no write sneaked in.
        st, _, b = http("PUT", reg_url(base, tokens[0], "still-full") + "?prevExist=false",
                        form(value=big))
        if time.monotonic() - t0 < minage - 0.5:
            self.assertEqual(st, 503, "write accepted on a full store: %d %r" % (st, b))

        # Recovery by itself: the tokens reach --minage, get removed, space returns.
        self.assertEqual(metric(base, "disco_tokens_removed_total"), 0)
        got = {}

        def write_ok():
            st, _, b = http("PUT", reg_url(base, "recovered", "_config/size"),
                            form(value="3"), timeout=5)
            got["last"] = (st, b)
            if st == 201:
                return True
            assert st in (503, 412), (st, b)
            return st == 412

        harness.wait_until(write_ok, minage + 20, interval=0.5,
                           what="writes to succeed again after old tokens are removed")
        self.assertGreaterEqual(metric(base, "disco_tokens_removed_total"), 1,
                                "writes succeed again but no token was removed")
        harness.wait_until(lambda: http("GET", base + "/health", timeout=5)[0] == 200, 10,
                           what="/health back to 200")
        # New writes are durable and readable; big ones too.
        for i in range(5):
            st, _, b = http("PUT", reg_url(base, "recovered", "m%d" % i) + "?prevExist=false",
                            form(value=big))
            self.assertEqual(st, 201, "write after recovery: %d %r" % (st, b))
        # The full tokens are all past --minage: all of them go.
        harness.wait_until(lambda: metric(base, "disco_tokens_removed_total") == len(tokens), 10,
                           what="all %d old tokens to be removed" % len(tokens))
        for tok in tokens:
            self.assert_gone(base, tok)
        self.term(proc)
        proc, base = self.start(("--map-size", "2MiB"))
        nodes, _ = self.listing(base, "recovered")
        self.assertEqual(len([k for k in nodes if "/m" in k]), 5)
        self.term(proc)


# --------------------------------------------------------------------------
# 7. small disk: the reserve is what pending writes need, not 5% of the map
# --------------------------------------------------------------------------

SMALL_DISK_MIB = 24


class TestSmallDisk(DurabilityCase):

    def mount_small_disk(self):
        """A tmpfs of SMALL_DISK_MIB at workdir/mnt; the data dir is a symlink into
        it (the test's logs stay outside).  Skips when mounting is not allowed."""
        mnt = os.path.join(self.workdir, "mnt")
        os.makedirs(mnt)
        if os.geteuid() != 0:
            self.skipTest("mounting a small tmpfs needs root")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % SMALL_DISK_MIB,
                            "disco-test", mnt], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: %s" % r.stderr.strip())

        def unmount():
            for p in self.procs:  # nothing may hold files in it
                p.stop(timeout=5)
            if subprocess.run(["umount", mnt]).returncode != 0:
                subprocess.run(["umount", "-l", mnt])
        self.addCleanup(unmount)
        os.makedirs(os.path.join(mnt, "data"))
        os.symlink(os.path.join(mnt, "data"), self.data_dir)
        return mnt

    @staticmethod
    def disk_free(path):
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    @with_logs
    def test_writes_taken_while_the_reserve_fits_refused_when_not(self):
        mnt = self.mount_small_disk()
        # A 256 MiB map: a 16 MiB log, so about 8 MiB stay free on the disk,
        # far less than 5% of the map (12.8 MiB), plenty for a few writes.
        proc, base = self.start(("--map-size", "256MiB"))
        free0 = self.disk_free(mnt)
        self.assertLess(free0, 12 << 20, "test setup: the disk has too much room")
        tok = self.make_v2_token(base, "small-disk", 3)
        acked = {}
        for i in range(20):
            st, _, b = http("PUT", reg_url(base, tok, "m%d" % i), form(value="v%d" % i))
            self.assertEqual(st, 201, "write %d with %d bytes free on the disk: %d %r"
                             % (i, free0, st, b))
            acked["m%d" % i] = "v%d" % i
        self.assertEqual(http("GET", base + "/health")[0], 200)

        # Take the disk's room away but 128 KiB: less than any reserve.
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            left = self.disk_free(mnt) - (128 << 10)
            chunk = b"\0" * (1 << 20)
            while left > 0:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
        got = {}

        def refused():
            st, _, b = http("PUT", reg_url(base, tok, "late"), form(value="x"))
            got["last"] = (st, b)
            if st in (200, 201):
                acked["late"] = "x"
            return st == 503
        harness.wait_until(refused, 10, interval=0.3, what="writes refused on a full disk")
        st, b = got["last"]
        self.assertEqual(js(b).get("errorCode"), 300, b)
        self.assertEqual(http("GET", base + "/health")[0], 503)
        m = re.search(r"nearly full: (\d+) bytes free, not above the (\d+) bytes reserved",
                      proc.log())
        self.assertIsNotNone(m, "no log line with the reserved figure")
        self.assertLess(int(m.group(2)), 4 << 20, "the reserve is not what pending writes need")
        sys.stderr.write("[%s bytes free, %s reserved] " % (m.group(1), m.group(2)))
        nodes, _ = self.listing(base, tok)  # reads go on
        for k, v in acked.items():
            self.assertEqual(nodes["/_etcd/registry/%s/%s" % (tok, k)]["value"], v)

        # Room returns: writes are taken again, by themselves.
        os.unlink(filler)

        def taken():
            st, _, b = http("PUT", reg_url(base, tok, "after"), form(value="y"))
            got["last"] = (st, b)
            return st in (200, 201)
        harness.wait_until(taken, 10, interval=0.3, what="writes taken again with room back")
        self.assertIn("room again", proc.log())
        self.term(proc)
        proc, base = self.start(("--map-size", "256MiB"))
        nodes, _ = self.listing(base, tok)
        for k, v in list(acked.items()) + [("after", "y")]:
            self.assertEqual(nodes["/_etcd/registry/%s/%s" % (tok, k)]["value"], v)
        self.term(proc)
        self.assertFalse(self.deferred, self.deferred)


if __name__ == "__main__":
    unittest.main(verbosity=2)
