#!/usr/bin/env python3
"""Differential test: disco's etcd v2 registry against a real etcd 3.4 v2 store.

Run:  python3 tests/e2e/test_differential.py        (exit code 0 on success)

Every test case is a list of steps (etcd v2 keys requests under
/v2/keys/_etcd/registry/<token>...).  The same steps are sent, with a fresh token
of the same name, to a real etcd 3.4 (`etcd --enable-v2`, the reference) and to
disco.  The two answers of every step must agree on:

  * HTTP status, Content-Type, X-Etcd-Index;
  * the body being exactly one JSON object followed by a newline (empty for HEAD);
  * errorCode, message, cause, index;
  * action, node and prevNode: key, value, dir, ttl, expiration, children
    (nodes), createdIndex, modifiedIndex -- and no extra fields on either side.

Normalisation (the only things allowed to differ):
  * every index number (createdIndex, modifiedIndex, X-Etcd-Index, the error
    "index", the numbers in a compare-failed cause "[1 != 5]", the 20-digit
    in-order key names a POST makes) becomes a delta "c+N" from the index at
    which that server created the token (the createdIndex of the first
    PUT _config/size).  The absolute value 0 (etcd's "no index", e.g. in
    answers to malformed queries) stays "0".
  * `expiration` must have Go's RFC 3339 nano UTC format (trailing zeros of the
    fraction trimmed, as time.RFC3339Nano prints) and is then replaced by a
    placeholder.
  * child lists are compared order-insensitively unless the request said
    sorted=true.
Requests carry index numbers as templates: {c+N} is the token's creation
index plus N on the server being asked, {k+N} the same zero-padded to 20
digits (the name a POST gives).

DISCO_DIFF_VERBOSE=1 prints every step with etcd's raw answer;
DISCO_DIFF_KEEP=1 keeps the temporary directory with the server logs.

The server compared with etcd is chosen by DISCO_DIFF_PEER:
  disco (default)  build/disco (or $DISCO_BIN)
  etcd             a second real etcd -- to check the test itself: every case
                   must pass etcd-vs-etcd.

Things disco does differently from a bare etcd on purpose are not part of the
differential; DiscoOnlyTest checks them against disco alone.
"""

import difflib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

PEER = os.environ.get("DISCO_DIFF_PEER", "disco")
REGISTRY = "/v2/keys/_etcd/registry/"
# disco answers a parked wait with an empty 200 after --wait-timeout; keep that
# far above the longest wait in these cases (a TTL expiry: ~2-3 s on etcd).
DISCO_WAIT_TIMEOUT = "30s"
ASYNC_SETTLE_S = 0.3        # time for a started wait to be parked on the server
PENDING_CHECK_S = 0.4       # how long a parked wait must stay unanswered
JOIN_TIMEOUT_S = 8.0        # longest we wait for a parked wait to be answered
ETCD_STABLE_S = 1.0         # etcd's index must not move for this long before we start
ETCD_STABLE_MAX_S = 15.0

MEMBER1 = "m1=http://127.0.0.1:21380"
MEMBER2 = "m2=http://127.0.0.1:22380"
MEMBER3 = "m3=http://127.0.0.1:23380"
LIST_Q = "quorum=false&recursive=false&sorted=false"

# Go's time.RFC3339Nano in UTC: fraction optional, trailing zeros trimmed.
EXPIRATION_RE = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{0,8}[1-9])?Z\Z")
TEMPLATE_RE = re.compile(r"\{([ck])([+-]\d+)?\}")
INORDER_RE = re.compile(r"(?<=/)(\d{20})(?=/|\Z|\]|\s|\")")
COMPARE_RE = re.compile(r"\[(\d+) != (\d+)\]")


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------

def req(method, path="", query="", form=None, note="", want=None):
    """A request whose answer is compared.  path is relative to the token dir.
    want: the status etcd must give (guards the intent of the step itself)."""
    return {"kind": "req", "method": method, "path": path, "query": query,
            "form": form, "note": note, "want": want}


def start(tag, method, path="", query="", form=None, note=""):
    """Send a request from a background thread (a wait that should park)."""
    return {"kind": "start", "tag": tag, "method": method, "path": path,
            "query": query, "form": form, "note": note}


def burst(n, method, path="", query="", form=None, note=""):
    """n identical requests at once; compared as the sorted list of their
    status, Content-Type, errorCode, action and value (which one wins a race,
    and so the indexes each one saw, is not compared)."""
    return {"kind": "burst", "n": n, "method": method, "path": path, "query": query,
            "form": form, "note": note}


def pending(*tags):
    """The started requests `tags` must still be unanswered."""
    return {"kind": "pending", "tags": tags}


def join(tag, timeout=JOIN_TIMEOUT_S):
    """Collect the answer of a started request; it is compared."""
    return {"kind": "join", "tag": tag, "timeout": timeout}


def create_token():
    return req("PUT", "_config/size", form={"value": "3"}, note="create the token")


def describe(step):
    if step["kind"] in ("req", "start", "burst"):
        s = "%s <tok>/%s" % (step["method"], step["path"])
        if step["query"]:
            s += "?" + step["query"]
        if step["form"] is not None:
            s += "  form=%r" % (step["form"],)
        if step["kind"] == "start":
            s = "start[%s] %s" % (step["tag"], s)
        if step["kind"] == "burst":
            s = "%d at once: %s" % (step["n"], s)
        if step["note"]:
            s += "   -- " + step["note"]
        return s
    if step["kind"] == "pending":
        return "still parked: %s" % ", ".join(step["tags"])
    if step["kind"] == "join":
        return "answer of [%s]" % step["tag"]
    return repr(step)


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------

class Norm:
    """Normalises one server's answers relative to its token creation index c."""

    def __init__(self, c):
        self.c = c

    def idx(self, n):
        if isinstance(n, bool) or not isinstance(n, int):
            return {"non-integer index": n}
        if n == 0:
            return "0"
        if self.c is None:
            return "abs:%d" % n
        return "c%+d" % (n - self.c)

    def header_idx(self, v):
        if v is None:
            return None
        if not re.fullmatch(r"\d+", v.strip()):
            return {"bad X-Etcd-Index": v}
        return self.idx(int(v))

    def text(self, s):
        """20-digit in-order key names inside keys and causes."""
        if not isinstance(s, str):
            return s
        return INORDER_RE.sub(lambda m: "<k%s>" % self.idx(int(m.group(1))), s)

    def cause(self, code, s):
        if not isinstance(s, str):
            return s
        if code == 101:
            s = COMPARE_RE.sub(lambda m: "[%s != %s]" % (self.idx(int(m.group(1))),
                                                        self.idx(int(m.group(2)))), s)
        return self.text(s)

    def node(self, n, sorted_):
        if not isinstance(n, dict):
            return {"not an object": n}
        out = {}
        for k, v in n.items():
            if k == "key":
                out[k] = self.text(v)
            elif k in ("createdIndex", "modifiedIndex"):
                out[k] = self.idx(v)
            elif k == "expiration":
                out[k] = ("<RFC3339Nano UTC>" if isinstance(v, str) and EXPIRATION_RE.match(v)
                          else {"bad expiration": v})
            elif k == "nodes":
                if isinstance(v, list):
                    kids = [self.node(x, sorted_) for x in v]
                    if not sorted_:
                        kids.sort(key=lambda x: json.dumps(x, sort_keys=True))
                    out[k] = kids
                else:
                    out[k] = {"nodes not a list": v}
            else:                       # value, dir, ttl and anything unexpected
                out[k] = v
        return out

    def body(self, obj, sorted_):
        if not isinstance(obj, dict):
            return {"not an object": obj}
        out = {}
        code = obj.get("errorCode")
        for k, v in obj.items():
            if k == "cause":
                out[k] = self.cause(code, v)
            elif k == "index":
                out[k] = self.idx(v)
            elif k in ("node", "prevNode"):
                out[k] = self.node(v, sorted_)
            else:                       # errorCode, message, action, extras
                out[k] = v
        return out

    def response(self, status, headers, body, sorted_):
        out = {"status": status,
               "content-type": headers.get("content-type"),
               "x-etcd-index": self.header_idx(headers.get("x-etcd-index"))}
        if body == b"":
            out["body"] = "<empty>"
            return out
        try:
            text = body.decode("utf-8")
            obj, end = json.JSONDecoder().raw_decode(text)
        except (UnicodeDecodeError, ValueError):
            out["body"] = {"not JSON": body[:300].decode("utf-8", "replace")}
            return out
        out["after the JSON object"] = text[end:]
        out["body"] = self.body(obj, sorted_)
        return out


# --------------------------------------------------------------------------
# Running a case on one server
# --------------------------------------------------------------------------

class Run:
    """The step list of one case, executed against one server."""

    def __init__(self, name, base_url, token):
        self.name = name
        self.base = base_url.rstrip("/")
        self.token = token
        self.norm = Norm(None)
        self.records = []       # (normalised, raw) per step
        self.sent = []          # rendered request line per step
        self.threads = {}

    def render(self, s):
        def sub(m):
            if self.norm.c is None:
                raise AssertionError("index template %r used before the token exists" % m.group(0))
            n = self.norm.c + int(m.group(2) or 0)
            return "%020d" % n if m.group(1) == "k" else str(n)
        return TEMPLATE_RE.sub(sub, s)

    def url(self, step):
        u = self.base + REGISTRY + self.token
        path = self.render(step["path"])
        if path == "/":
            u += "/"            # the token dir with a trailing slash
        elif path:
            u += "/" + path
        if step["query"]:
            u += "?" + self.render(step["query"])
        return u

    def form(self, step):
        if step["form"] is None:
            return None
        return {k: (self.render(v) if isinstance(v, str) else v)
                for k, v in step["form"].items()}

    @staticmethod
    def _burst_shape(norm):
        if not isinstance(norm, dict) or not isinstance(norm.get("body"), dict):
            return norm
        b = norm["body"]
        return {"status": norm.get("status"), "content-type": norm.get("content-type"),
                "errorCode": b.get("errorCode"), "action": b.get("action"),
                "value": (b.get("node") or {}).get("value")}

    def _sorted(self, step):
        return "sorted=true" in step["query"]

    def _answer(self, status, headers, body, sorted_):
        norm = self.norm.response(status, headers, body, sorted_)
        raw = "%d x-etcd-index=%s content-type=%s body=%r" % (
            status, headers.get("x-etcd-index"), headers.get("content-type"), body[:2000])
        return norm, raw

    def do(self, step):
        kind = step["kind"]
        if kind == "req":
            url = self.url(step)
            self.sent.append("%s %s form=%r" % (step["method"], url, self.form(step)))
            try:
                status, headers, body = harness.http(step["method"], url, self.form(step),
                                                     timeout=10)
            except OSError as e:    # refused, reset, timed out: recorded and compared
                if self.norm.c is None:
                    raise
                err = "%s: %s" % (type(e).__name__, e)
                self.records.append(({"error": err}, err))
                return
            if self.norm.c is None:
                # the first step creates the token: its index is the base of all deltas
                try:
                    self.norm.c = json.loads(body)["node"]["createdIndex"]
                except (ValueError, KeyError, TypeError):
                    raise AssertionError("%s: token creation failed: %d %r"
                                         % (self.name, status, body))
            self.records.append(self._answer(status, headers, body, self._sorted(step)))
        elif kind == "start":
            url = self.url(step)
            self.sent.append("(background) %s %s form=%r" % (step["method"], url, self.form(step)))
            box = {}

            def go(method=step["method"], form=self.form(step)):
                try:
                    box["answer"] = harness.http(method, url, form, timeout=JOIN_TIMEOUT_S + 20)
                except Exception as e:  # recorded and compared
                    box["error"] = "%s: %s" % (type(e).__name__, e)
            t = threading.Thread(target=go, daemon=True)
            t.start()
            self.threads[step["tag"]] = (t, box, self._sorted(step))
            time.sleep(ASYNC_SETTLE_S)
            self.records.append(("started", "started"))
        elif kind == "burst":
            url = self.url(step)
            self.sent.append("(%d at once) %s %s form=%r" % (step["n"], step["method"], url,
                                                          self.form(step)))
            answers = [None] * step["n"]
            gate = threading.Barrier(step["n"])

            def one(i, method=step["method"], form=self.form(step)):
                try:
                    gate.wait(5)
                    answers[i] = self._answer(*harness.http(method, url, form, timeout=10),
                                              False)
                except Exception as e:  # recorded and compared
                    answers[i] = ({"error": type(e).__name__}, repr(e))
            threads = [threading.Thread(target=one, args=(i,), daemon=True)
                       for i in range(step["n"])]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            norm = [a[0] if a else "no answer" for a in answers]
            # the winner's index and the X-Etcd-Index seen by losers depend on timing
            norm = sorted((json.dumps(self._burst_shape(x), sort_keys=True) for x in norm))
            self.records.append((norm, "; ".join(a[1] if a else "no answer" for a in answers)))
        elif kind == "pending":
            self.sent.append("(check still parked: %s)" % ", ".join(step["tags"]))
            time.sleep(PENDING_CHECK_S)
            state = {}
            for tag in step["tags"]:
                t, box, sorted_ = self.threads[tag]
                if not t.is_alive():
                    ans = box.get("answer")
                    state[tag] = ("answered too early: %s" % (self._answer(*ans, sorted_)[1],)
                                  if ans else box.get("error"))
                else:
                    state[tag] = "parked"
            self.records.append((state, repr(state)))
        elif kind == "join":
            self.sent.append("(answer of background request %s)" % step["tag"])
            t, box, sorted_ = self.threads[step["tag"]]
            t.join(step["timeout"])
            if t.is_alive():
                self.records.append(({"no answer within": step["timeout"]}, "no answer"))
            elif "error" in box:
                self.records.append(({"error": box["error"]}, box["error"]))
            else:
                self.records.append(self._answer(*box["answer"], sorted_))
        else:
            raise ValueError(step)


def pretty(x):
    return json.dumps(x, indent=1, sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------

def wait_etcd_index_stable(url):
    """etcd writes its own membership into the v2 store right after it starts:
    wait until X-Etcd-Index has stopped moving."""
    deadline = time.monotonic() + ETCD_STABLE_MAX_S
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        _, headers, _ = harness.http("GET", url + "/v2/keys/", timeout=5)
        cur = headers.get("x-etcd-index")
        now = time.monotonic()
        if cur != last:
            last, since = cur, now
        elif now - since >= ETCD_STABLE_S:
            return
        time.sleep(0.1)
    raise TimeoutError("etcd's X-Etcd-Index did not settle (last %r)" % last)


class DifferentialTest(unittest.TestCase):
    """etcd 3.4 (reference) and the peer get the same steps and must answer alike."""

    procs = []
    workdir = None

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-diff-")
        cls.procs = []
        try:
            p, cls.etcd_url = harness.start_etcd_v2(cls.workdir)
            cls.procs.append(p)
            if PEER == "etcd":
                p, cls.peer_url = harness.start_etcd_v2(cls.workdir)
                cls.peer_proc = p
                cls.procs.append(p)
                wait_etcd_index_stable(cls.peer_url)
            elif PEER == "disco":
                p, cls.peer_url = harness.start_disco(cls.workdir,
                                                      wait_timeout=DISCO_WAIT_TIMEOUT)
                cls.peer_proc = p
                cls.procs.append(p)
            else:
                raise ValueError("DISCO_DIFF_PEER must be disco or etcd, not %r" % PEER)
            wait_etcd_index_stable(cls.etcd_url)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for p in reversed(cls.procs):
            p.stop()
        cls.procs = []
        if cls.workdir and not os.environ.get("DISCO_DIFF_KEEP"):
            shutil.rmtree(cls.workdir, ignore_errors=True)

    def check(self, steps):
        token = secrets.token_hex(16)
        runs = []
        for name, url in (("etcd", self.etcd_url), (PEER, self.peer_url)):
            run = Run(name, url, token)
            for step in steps:
                run.do(step)
            runs.append(run)
        ref, peer = runs
        for i, step in enumerate(steps):
            if step.get("want") is not None:
                got = ref.records[i][0].get("status")
                self.assertEqual(got, step["want"], "test bug: etcd answered step %d (%s) "
                                 "with %s, the case expects %d: %s"
                                 % (i + 1, describe(step), got, step["want"], ref.records[i][1]))
        if os.environ.get("DISCO_DIFF_VERBOSE"):
            for i, step in enumerate(steps):
                print("  %2d %s\n       etcd: %s" % (i + 1, describe(step), ref.records[i][1]),
                      file=sys.stderr)
        bad = [i for i in range(len(steps)) if ref.records[i][0] != peer.records[i][0]]
        if not bad:
            return
        i = bad[0]
        a, b = pretty(ref.records[i][0]), pretty(peer.records[i][0])
        diff = "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(),
                                              "etcd", PEER, lineterm="", n=50))
        msg = ["", "token %s: step %d of %d differs: %s" % (token, i + 1, len(steps),
                                                            describe(steps[i])),
               "  sent to etcd:  %s" % ref.sent[i],
               "  sent to %s: %s" % (PEER, peer.sent[i]),
               "  etcd answered:  %s" % ref.records[i][1],
               "  %s answered: %s" % (PEER, peer.records[i][1]),
               "normalised diff (- etcd, + %s):" % PEER, diff]
        if len(bad) > 1:
            msg.append("later steps that also differ: %s"
                       % ", ".join("%d (%s)" % (j + 1, describe(steps[j])) for j in bad[1:]))
        if not self.peer_proc.alive():
            msg.append("%s is no longer running; log tail:\n%s"
                       % (PEER, self.peer_proc.log()[-3000:]))
        self.fail("\n".join(msg))

    # ---------------------------------------------------------------- cases

    def test_member_registration(self):
        """What an etcd member sends (PROTOCOL.md §2, the capture), plus reads."""
        self.check([
            create_token(),
            req("GET", "_config/size", LIST_Q),
            req("GET", "", LIST_Q, note="empty listing: _config hidden"),
            req("PUT", "86f5e6aacb2ddcde", "prevExist=false", {"value": MEMBER1}),
            req("GET", "86f5e6aacb2ddcde", "recursive=false&wait=true&waitIndex={c+1}",
                note="self-watch answered from history"),
            req("PUT", "86f5e6aacb2ddcde", "prevExist=false", {"value": MEMBER1},
                note="duplicate id"),
            req("GET", "_config/size", LIST_Q),
            req("GET", "", LIST_Q),
            start("w1", "GET", "", "recursive=true&wait=true&waitIndex={c+2}",
                  note="directory watch for the next member"),
            pending("w1"),
            req("PUT", "3b62ccdc1fb836af", "prevExist=false", {"value": MEMBER2}),
            join("w1"),
            req("GET", "3b62ccdc1fb836af", "recursive=false&wait=true&waitIndex={c+2}"),
            req("PUT", "f300e4e68af0f023", "prevExist=false", {"value": MEMBER3}),
            req("GET", "", "recursive=true&wait=true&waitIndex={c+3}",
                note="later event answered from history"),
            req("GET", "", "recursive=true&wait=true&waitIndex={c+1}",
                note="first event at or after waitIndex"),
            req("GET", "", LIST_Q),
            req("GET", "86f5e6aacb2ddcde"),
            req("GET", "86f5e6aacb2ddcde", LIST_Q),
            req("GET", "0000000000000000", note="missing key"),
            req("GET", "_config/size"),
            req("GET", "_config", note="the hidden dir itself can be read"),
            req("GET", "_config/nope"),
            req("GET", "", "quorum=true"),
        ])

    def test_set_and_compare_and_swap(self):
        self.check([
            create_token(),
            req("PUT", "k1", form={"value": "v1"}, note="set of a new key: 201"),
            req("PUT", "k1", form={"value": "v2"}, note="set of an existing key: 200"),
            req("PUT", "k9", "prevExist=true", {"value": "x"}),
            req("PUT", "k1", "prevExist=true", {"value": "v3"}, note="update"),
            req("PUT", "k1", "prevValue=v3", {"value": "v4"}),
            req("PUT", "k1", "prevValue=wrong", {"value": "v5"}),
            req("PUT", "k1", "prevIndex={c+4}", {"value": "v5"}, want=200),
            req("PUT", "k1", "prevIndex={c+1}", {"value": "v6"}, want=412),
            req("PUT", "k1", "prevIndex={c+1}&prevValue=wrong", {"value": "v6"},
                note="both wrong"),
            req("PUT", "k1", "prevIndex={c+5}&prevValue=wrong", {"value": "v6"}),
            req("PUT", "k1", "prevIndex={c+1}&prevValue=v5", {"value": "v6"}),
            req("PUT", "k1", "prevIndex={c+5}&prevValue=v5", {"value": "v6"},
                note="both right", want=200),
            req("PUT", "k1", "prevExist=false", {"value": "x"}),
            req("PUT", "k9", "prevValue=x", {"value": "x"}, note="CAS on a missing key"),
            req("PUT", "k9", "prevIndex={c+1}", {"value": "x"}),
            req("PUT", "k1", "prevExist=true&prevValue=v6", {"value": "v7"}),
            req("PUT", "k1", "prevExist=false&prevValue=v7", {"value": "v8"}),
            req("PUT", "d1/x", form={"value": "1"}),
            req("PUT", "d1", form={"value": "z"}, note="set on a dir"),
            req("PUT", "d1", "prevExist=true", {"value": "z"}),
            req("PUT", "d1", "prevValue=z", {"value": "z"}),
            req("PUT", "d1", form={"dir": "true"}),
            req("PUT", "d2", form={"dir": "true"}, note="new empty dir"),
            req("PUT", "d2", "prevExist=true", {"dir": "true"}),
            req("PUT", "k1", form={"dir": "true"}, note="dir over a file"),
            req("PUT", "k2", note="no value at all"),
            req("PUT", "k3", "value=fromquery", note="value in the query string"),
            req("GET", "k1"),
            req("GET", "d2"),
            req("GET", "", "recursive=true"),
        ])

    def test_delete(self):
        self.check([
            create_token(),
            req("PUT", "k1", form={"value": "v"}),
            req("PUT", "d/x", form={"value": "1"}),
            req("PUT", "d/y", form={"value": "2"}),
            req("DELETE", "k1"),
            req("DELETE", "k1", note="missing"),
            req("DELETE", "d", note="dir without dir=true"),
            req("DELETE", "d", "dir=true", note="non-empty dir"),
            req("DELETE", "d/x"),
            req("DELETE", "d/y", "dir=true", note="dir=true on a file"),
            req("DELETE", "d", "dir=true", note="now empty"),
            req("GET", "d"),
            req("PUT", "e/f/g", form={"value": "1"}),
            req("PUT", "e/h", form={"value": "2"}),
            req("DELETE", "e", "recursive=true"),
            req("GET", "e/f/g"),
            req("GET", "", "recursive=true"),
            req("PUT", "k2", form={"value": "v2"}),                 # c+11
            req("DELETE", "k2", "prevValue=wrong", want=412),
            req("DELETE", "k2", "prevIndex={c+3}", want=412),
            req("DELETE", "k2", "prevIndex={c+3}&prevValue=wrong", want=412),
            req("DELETE", "k2", "prevIndex={c+11}&prevValue=wrong", want=412),
            req("DELETE", "k2", "prevValue=v2", note="compareAndDelete", want=200),
            req("PUT", "k3", form={"value": "v3"}),                 # c+13
            req("DELETE", "k3", "prevIndex={c+13}", want=200),
            req("PUT", "k4", form={"value": "v4"}),                 # c+15
            req("DELETE", "k4", "prevIndex={c+15}&prevValue=v4", want=200),
            req("DELETE", "k9", "prevValue=x", note="compareAndDelete of a missing key"),
            req("PUT", "d/z", form={"value": "1"}),
            req("DELETE", "d", "prevValue=x", note="compareAndDelete on a dir"),
            req("DELETE", "d", "recursive=true&dir=true"),
            req("PUT", "e2", form={"dir": "true"}),
            req("DELETE", "e2", "recursive=true", note="recursive on an empty dir"),
            req("GET", "", "recursive=true"),
        ])

    def test_nested_keys_and_listings(self):
        self.check([
            create_token(),
            req("PUT", "a/b/c", form={"value": "x"}, note="intermediate dirs created"),
            req("GET", "a"),
            req("GET", "a/b"),
            req("GET", "a", "recursive=true"),
            req("GET", "a/b/c/d", note="under a file: 104"),
            req("PUT", "a/b/c/d", form={"value": "y"}),
            req("DELETE", "a/b/c/d"),
            req("PUT", "_hidden", form={"value": "h"}),
            req("PUT", "a/_h2", form={"value": "h"}),
            req("PUT", "a/_hd/x", form={"value": "h"}),
            req("PUT", "zz", form={"value": "1"}),
            req("PUT", "mm", form={"value": "2"}),
            req("PUT", "B", form={"value": "upper"}),
            req("PUT", "10", form={"value": "ten"}),
            req("PUT", "9", form={"value": "nine"}),
            req("PUT", "-x", form={"value": "dash"}),
            req("PUT", "a/b/aa", form={"value": "3"}),
            req("PUT", "bb/x", form={"value": "4"}),
            req("PUT", "a/e", form={"dir": "true"}),
            req("GET", "", LIST_Q, note="_ keys hidden"),
            req("GET", "", "recursive=true&sorted=false"),
            req("GET", "", "recursive=true&sorted=true"),
            req("GET", "", "sorted=true"),
            req("GET", "a", "recursive=true&sorted=true"),
            req("GET", "_hidden", note="a hidden key can be read directly"),
            req("GET", "a/_hd", "recursive=true"),
            req("GET", "a/e"),
            req("GET", "a/e", "recursive=true"),
            req("GET", "a/b/c", "recursive=true&sorted=true", note="flags on a file"),
        ])

    def test_post_in_order_keys(self):
        self.check([
            create_token(),
            req("POST", "q", form={"value": "p1"}, note="in-order key, dir created"),
            req("POST", "q", form={"value": "p2"}),
            req("GET", "q", "sorted=true"),
            req("GET", "q/{k+1}", want=200),
            req("PUT", "q/{k+1}", "prevExist=true", {"value": "u"}),
            req("POST", "", form={"value": "p3"}, note="POST to the token dir"),
            req("DELETE", "q/{k+2}", want=200),
            req("GET", "q", "recursive=true&sorted=true"),
            req("PUT", "f", form={"value": "file"}),
            req("POST", "f", form={"value": "p4"}, note="POST under a file"),
            req("POST", "q", form={"value": "p5"}),
            req("GET", "", "recursive=true&sorted=true"),
        ])

    def test_waits(self):
        self.check([
            create_token(),
            req("PUT", "m1", "prevExist=false", {"value": MEMBER1}),           # c+1
            req("GET", "m1", "wait=true&waitIndex={c+1}"),
            req("PUT", "m2", "prevExist=false", {"value": MEMBER2}),           # c+2
            req("GET", "", "recursive=true&wait=true&waitIndex={c+2}"),
            req("GET", "m1", "wait=true&waitIndex={c+1}&recursive=false"),
            start("dir", "GET", "", "recursive=true&wait=true&waitIndex={c+3}"),
            start("nokey", "GET", "nokey", "wait=true",
                  note="nonexistent key, no waitIndex"),
            start("m1", "GET", "m1", "wait=true&waitIndex={c+3}"),
            start("dironly", "GET", "", "wait=true",
                  note="non-recursive wait on the dir itself"),
            pending("dir", "nokey", "m1", "dironly"),
            req("PUT", "_hidden", form={"value": "1"},
                note="hidden key: no live event for the recursive watch"),  # c+3
            pending("dir", "nokey", "m1", "dironly"),
            req("PUT", "m3", "prevExist=false", {"value": MEMBER3}),           # c+4
            join("dir"),
            pending("nokey", "m1", "dironly"),
            req("PUT", "nokey", form={"value": "n"}),                          # c+5
            join("nokey"),
            pending("m1", "dironly"),
            req("PUT", "m1", form={"value": "changed"}),                       # c+6
            join("m1"),
            start("later", "GET", "nokey2", "wait=true&waitIndex={c+1}",
                  note="history holds nothing for this key"),
            pending("later", "dironly"),
            req("PUT", "nokey2", "prevExist=false", {"value": "z"}),           # c+7
            join("later"),
            start("deep", "GET", "x", "recursive=true&wait=true",
                  note="recursive wait on a missing dir"),
            pending("deep", "dironly"),
            req("PUT", "x/y/z", form={"value": "deep"}),                       # c+8
            join("deep"),
            start("hid", "GET", "_h", "wait=true", note="a watch on a hidden key itself"),
            start("zero", "GET", "zero", "wait=true&waitIndex=0", note="0 = from now"),
            pending("hid", "zero", "dironly"),
            req("PUT", "zero", form={"value": "0"}),
            join("zero"),
            req("PUT", "_h", form={"value": "h"}),
            join("hid"),
            start("del", "GET", "m2", "wait=true"),
            pending("del", "dironly"),
            req("DELETE", "m2"),                                               # c+9
            join("del"),
            req("GET", "", "recursive=true&wait=true&waitIndex={c+11}"),
            req("GET", "m2", "wait=true&waitIndex={c+2}", note="history of a deleted key"),
            req("GET", "m2", "wait=true&waitIndex={c+3}"),
            req("GET", "", LIST_Q),
            # the non-recursive watch on the token dir is still parked; disco and
            # etcd both drop it when the client goes away -- nothing to compare.
        ])

    def test_wait_history_sees_hidden_config_event(self):
        """etcd answers a recursive wait from history with any event under the
        directory, hidden ones included (only live notifications skip them)."""
        self.check([
            create_token(),
            req("GET", "", "recursive=true&wait=true&waitIndex={c}"),
            req("PUT", "m1", "prevExist=false", {"value": MEMBER1}),
            req("GET", "", "recursive=true&wait=true&waitIndex={c}"),
            req("GET", "_config", "recursive=true&wait=true&waitIndex={c}"),
            req("GET", "", "recursive=true&wait=true&waitIndex={c-1}",
                note="waitIndex from before the token existed"),
            req("GET", "m1", "wait=true&waitIndex={c-1}"),
        ])

    def test_future_wait_index(self):
        """A waitIndex beyond the current index parks until an event at or after it."""
        self.check([
            create_token(),
            req("PUT", "k", form={"value": "0"}),                              # c+1
            start("far", "GET", "k", "wait=true&waitIndex={c+4}"),
            start("farrec", "GET", "", "recursive=true&wait=true&waitIndex={c+3}"),
            pending("far", "farrec"),
            req("PUT", "k", form={"value": "1"}),                              # c+2
            pending("far", "farrec"),
            req("PUT", "other", form={"value": "x"}),                          # c+3
            join("farrec"),
            pending("far"),
            req("PUT", "k", form={"value": "3"}),                              # c+4
            join("far"),
            req("GET", "k", "wait=true&waitIndex={c+2}"),
            req("GET", "k", "wait=true&waitIndex={c+3}"),
        ])

    def test_conditional_combinations(self):
        self.check([
            create_token(),
            req("PUT", "f", form={"value": "v"}),                              # c+1
            req("PUT", "d/x", form={"value": "1"}),                            # c+2
            req("PUT", "f", "prevExist=false&prevIndex={c+1}", {"value": "w"}),
            req("PUT", "f", "prevExist=true&prevIndex={c+9}", {"value": "w"}),
            req("PUT", "f", "prevExist=true&prevIndex={c+1}", {"value": "w"}, want=200),
            req("PUT", "f", "prevExist=true", {"dir": "true"}, note="update a file to a dir"),
            req("PUT", "f", "prevExist=false", {"dir": "true"}),
            req("PUT", "d", "prevIndex={c+2}", {"value": "w"}, note="CAS on a dir"),
            req("PUT", "d", "prevExist=false", {"value": "w"}),
            req("PUT", "d/x/y", "prevExist=false", {"value": "w"}, note="through a file"),
            req("PUT", "d/x/y", "prevExist=true", {"value": "w"}),
            req("DELETE", "d/x/y"),
            req("DELETE", "d/x", "prevExist=false", note="prevExist is not a DELETE flag"),
            req("PUT", "g", "recursive=true&sorted=true", {"value": "1"},
                note="read flags on a write"),
            req("PUT", "g", "sorted=maybe", {"value": "1"}),
            req("GET", "g", "dir=maybe"),
            req("GET", "g", "wait=false&waitIndex=x"),
            req("GET", "g", "wait=false&waitIndex=1"),
            req("GET", "g", "prevExist=maybe"),
            req("POST", "q", "ttl=86400", {"value": "p"}, note="in-order key with a TTL"),
            req("POST", "q", "prevExist=true", {"value": "p"}),
            req("POST", "q2", "dir=true", note="in-order directory"),
            req("GET", "", "recursive=true"),
        ])

    def test_ttl_and_expire(self):
        self.check([
            create_token(),
            req("PUT", "t", "ttl=2", {"value": "v"}, note="node has ttl and expiration"),  # c+1
            req("PUT", "td", "dir=true&ttl=2", note="a directory with a TTL"),              # c+2
            req("PUT", "td/x", form={"value": "child"}),                                    # c+3
            req("GET", "t"),
            req("GET", "td", "recursive=true"),
            req("GET", "", LIST_Q),
            start("key", "GET", "t", "wait=true&waitIndex={c+4}"),
            start("dir", "GET", "", "recursive=true&wait=true&waitIndex={c+4}"),
            start("child", "GET", "td/x", "wait=true",
                  note="a child of an expiring dir is told of the dir's expiry"),
            pending("key", "dir", "child"),
            join("key"),                                                       # expire t: c+4
            join("dir"),
            join("child"),                                                     # expire td: c+5
            req("GET", "t"),
            req("GET", "td/x"),
            req("GET", "", "recursive=true&wait=true&waitIndex={c+4}",
                note="the expire events from history"),
            req("GET", "", "recursive=true&wait=true&waitIndex={c+5}"),
            req("GET", "td/x", "wait=true&waitIndex={c+4}"),
            req("GET", "", LIST_Q),
            req("PUT", "t2", "ttl=abc", {"value": "v"}),
            req("PUT", "t2", "ttl=-1", {"value": "v"}),
            req("PUT", "t2", form={"value": "v", "ttl": "-5"}),
            req("PUT", "t2", form={"value": "v", "ttl": "1.5"}),
            req("PUT", "t3", "ttl=100", {"value": "v"}),                       # c+3
            req("GET", "t3"),
            req("PUT", "t3", form={"value": "w"}, note="a set without ttl makes it permanent"),
            req("PUT", "t4", form={"value": "v", "ttl": "100"}),               # c+5
            req("PUT", "t4", "prevExist=true&ttl=200", {"value": "v"}),
            req("PUT", "t4", "prevValue=v", {"value": "w"}),
            req("GET", "", "recursive=true"),
        ])

    def test_watch_sees_ancestor_delete(self):
        """Deleting (or expiring) a directory notifies the watchers of everything
        under it, live and from history."""
        self.check([
            create_token(),
            req("PUT", "e/f/g", form={"value": "1"}),                          # c+1
            start("g", "GET", "e/f/g", "wait=true"),
            start("f", "GET", "e/f", "wait=true"),
            start("frec", "GET", "e/f", "wait=true&recursive=true"),
            pending("g", "f", "frec"),
            req("PUT", "e/f/h", form={"value": "2"}, note="not for the non-recursive e/f"),  # c+2
            join("frec"),
            pending("g", "f"),
            req("DELETE", "e", "recursive=true"),                               # c+3
            join("g"),
            join("f"),
            req("GET", "e/f/g", "wait=true&waitIndex={c+2}", note="from history"),
            req("GET", "e/f/g/x/y", "wait=true&waitIndex={c+2}"),
            req("GET", "e/f", "wait=true&waitIndex={c+2}"),
            req("GET", "e", "wait=true&waitIndex={c+1}"),
        ])

    def test_parameter_parsing_and_key_encoding(self):
        """How etcd (Go's net/http and strconv) reads keys and form values."""
        self.check([
            create_token(),
            req("PUT", "k", "value=fromquery", {"value": "frombody"}, note="body wins"),
            req("PUT", "k2", form={"value": "x", "prevExist": "false"},
                note="flags in the form body"),                                 # c+2
            req("PUT", "k2", form={"value": "y", "prevValue": "x"}, want=200),
            req("PUT", "k2", form={"value": "z", "prevIndex": "{c+3}"}, want=200),
            req("PUT", "k2", "prevValue=nope", {"value": "w", "prevValue": "z"}),
            req("GET", "k2", "recursive=1&sorted=T&quorum=FALSE"),
            req("GET", "", "recursive=True&sorted=t"),
            req("GET", "k2", "wait=1&waitIndex={c+2}"),
            req("GET", "k2", "wait=TRUE&waitIndex=0{c+3}", note="leading zero"),
            req("PUT", "k3", "prevExist=FALSE", {"value": "1"}),
            req("PUT", "k3", "prevExist=0", {"value": "1"}),
            req("PUT", "k3", "prevExist=1", {"value": "2"}),
            req("PUT", "k3", "prevIndex=0", {"value": "3"}, note="0 = no prevIndex"),
            req("PUT", "k3", "prevExist=yes", {"value": "3"}),
            req("PUT", "k3", "ttl=99999999999999999999", {"value": "3"}),
            req("PUT", "k3", "ttl=+5", {"value": "3"}),
            req("PUT", "k3", "ttl=", {"value": "4"}, note="empty ttl = permanent"),
            req("GET", "k3", "wait=true&waitIndex=+5"),
            req("GET", "k3", "wait=true&waitIndex=-1"),
            req("GET", "k3", "wait=true&waitIndex=1.0"),
            req("PUT", "k3", "prevIndex=-1", {"value": "5"}),
            req("PUT", "a%2Fb", form={"value": "slash"}, note="%2F is a separator"),
            req("GET", "a"),
            req("PUT", "m%201", form={"value": "space"}),
            req("PUT", "caf%C3%A9", form={"value": "unicode"}),
            req("GET", "caf%C3%A9"),
            req("PUT", "t/", form={"value": "trailing"}, note="trailing slash"),
            req("GET", "t/"),
            req("GET", "/", LIST_Q, note="token dir with a trailing slash"),
            req("PUT", "v1", form={"value": "\"q\" \\ <t> & = %% + \n\t\u00e9\u4e2d\u2028"},
                note="JSON escaping"),
            req("GET", "v1"),
            req("PUT", "v2", form={"value": b"a\xff\xfeb"}, note="invalid UTF-8 in a value"),
            req("GET", "v2"),
            req("PUT", "v3", form={"value": ""}),
            req("PUT", "v4", form={"value": "x" * 5000}),
            req("PUT", "d", "dir=true&prevExist=false", note="create a dir"),
            req("PUT", "d", "dir=true&prevExist=false"),
            req("PUT", "d2", "dir=true", {"value": "x"}, note="dir with a value"),
            req("PUT", "d3", "dir=TRUE"),
            req("DELETE", "v3", "recursive=true", note="recursive delete of a file"),
            req("DELETE", "v4", "dir=true&recursive=true"),
            req("PUT", "s1", form={"value": "a&b=c d+e%"}),
            req("PUT", "s1", "prevValue=a%26b%3Dc%20d%2Be%25", {"value": "ok"}, want=200),
            req("PUT", "s1", "prevValue=a+b", {"value": "no"}, note="+ is a space in a query"),
            req("PUT", "s2", "value=a+b%2Bc", note="value from the query, + decoded"),
            req("PUT", "p+q", form={"value": "plus in a path stays"}),
            req("PUT", "pct%25", form={"value": "percent"}),
            req("GET", "", "recursive=true&sorted=true"),
        ])

    def test_concurrent_registration(self):
        """Racing members: exactly one create wins, the rest get 412/105."""
        self.check([
            create_token(),
            burst(8, "PUT", "86f5e6aacb2ddcde", "prevExist=false", {"value": MEMBER1}),
            burst(8, "PUT", "k", "prevExist=true", {"value": "x"}),
            req("PUT", "k", form={"value": "0"}),
            burst(8, "PUT", "k", "prevValue=0", {"value": "1"}),
            burst(6, "POST", "q", form={"value": "p"}),
            req("GET", "86f5e6aacb2ddcde", "wait=true&waitIndex={c+1}"),
            req("GET", "", LIST_Q),
            req("GET", "q", "sorted=true", note="in-order keys unique and increasing"),
        ])

    def test_bad_query_values(self):
        self.check([
            create_token(),
            req("PUT", "k", form={"value": "v"}),
            req("GET", "k", "wait=true&waitIndex=x"),
            req("PUT", "k", "prevIndex=x", {"value": "w"}),
            req("DELETE", "k", "prevIndex=x"),
            req("GET", "k", "recursive=maybe"),
            req("PUT", "k", "wait=true", {"value": "w"}),
            req("PUT", "k", "prevValue=", {"value": "w"}),
            req("DELETE", "k", "prevValue="),
            req("PUT", "k", "prevExist=bogus", {"value": "w"}),
            req("GET", "k", "sorted=maybe"),
            req("GET", "k", "wait=maybe"),
            req("GET", "k", "quorum=maybe"),
            req("DELETE", "k", "dir=maybe"),
            req("DELETE", "k", "recursive=maybe"),
            req("PUT", "k", "ttl=abc&prevIndex=x", {"value": "w"}),
            req("GET", "k", note="nothing above wrote"),
        ])

    def test_head(self):
        self.check([
            create_token(),
            req("PUT", "k", form={"value": "v"}),
            req("PUT", "d/x", form={"value": "v"}),
            req("HEAD", "k"),
            req("HEAD", "nope"),
            req("HEAD", "", LIST_Q),
            req("HEAD", "d", "recursive=true"),
            req("HEAD", "_config/size"),
            req("HEAD", "k/sub"),
            req("HEAD", "k", "recursive=maybe"),
        ])


class DiscoOnlyTest(unittest.TestCase):
    """What disco does on purpose differently from a bare etcd v2 store."""

    proc = None
    workdir = None

    @classmethod
    def setUpClass(cls):
        if PEER != "disco":
            raise unittest.SkipTest("DISCO_DIFF_PEER=%s: disco-only checks skipped" % PEER)
        cls.workdir = tempfile.mkdtemp(prefix="disco-diff-only-")
        try:
            cls.proc, cls.base = harness.start_disco(cls.workdir, wait_timeout=DISCO_WAIT_TIMEOUT)
        except BaseException:
            shutil.rmtree(cls.workdir, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.proc:
            cls.proc.stop()
            cls.proc = None
        if cls.workdir and not os.environ.get("DISCO_DIFF_KEEP"):
            shutil.rmtree(cls.workdir, ignore_errors=True)

    def url(self, token, path=""):
        return self.base + REGISTRY + token + ("/" + path if path else "")

    def etcd_error(self, status, headers, body, what):
        self.assertEqual(headers.get("content-type"), "application/json", what)
        self.assertIsNotNone(headers.get("x-etcd-index"), what)
        self.assertTrue(body.endswith(b"\n"), "%s: body %r" % (what, body))
        obj = json.loads(body)
        self.assertIsInstance(obj, dict, what)
        for k in ("errorCode", "message", "cause", "index"):
            self.assertIn(k, obj, "%s: %r" % (what, obj))
        return obj

    def new_token(self):
        token = secrets.token_hex(16)
        st, _, body = harness.http("PUT", self.url(token, "_config/size"), {"value": "3"})
        self.assertEqual(st, 201, body)
        st, _, body = harness.http("PUT", self.url(token, "m1"), {"value": MEMBER1})
        self.assertEqual(st, 201, body)
        return token


    def test_config_is_read_only_on_the_token_surface(self):
        """On /<token>/..., every write under _config is refused with 107
        (a trailing slash alike; a doubled one is a 301, test_api_rules.py)
        and the size stays; members can still be written there."""
        token = self.new_token()
        for method, path in (("PUT", "_config/size"),
                             ("PUT", "_config/"), ("DELETE", "_config/size"),
                             ("POST", "_config")):
            st, h, body = harness.http(method, "%s/%s/%s" % (self.base, token, path),
                                       {"value": "9"})
            what = "%s /<token>/%s" % (method, path)
            self.assertEqual(st, 400, "%s: %d %r" % (what, st, body))
            self.assertEqual(self.etcd_error(st, h, body, what)["errorCode"], 107, what)
        st, _, body = harness.http("GET", self.url(token, "_config/size"))
        self.assertEqual((st, json.loads(body)["node"]["value"]), (200, "3"))
        st, _, body = harness.http("PUT", "%s/%s/m2" % (self.base, token), {"value": "x"})
        self.assertEqual(st, 201, body)
    def test_write_into_missing_token_is_404_100(self):
        token = secrets.token_hex(16)
        for method, path, form in (("PUT", "m1", {"value": MEMBER1}),
                                   ("PUT", "m1?prevExist=false", {"value": MEMBER1}),
                                   ("POST", "", {"value": "x"}),
                                   ("PUT", "a/b", {"value": "x"}),
                                   ("DELETE", "m1", None)):
            what = "%s <missing token>/%s" % (method, path)
            st, h, body = harness.http(method, self.url(token, path), form)
            self.assertEqual(st, 404, "%s: %d %r" % (what, st, body))
            obj = self.etcd_error(st, h, body, what)
            self.assertEqual(obj["errorCode"], 100, "%s: %r" % (what, obj))
            self.assertEqual(obj["message"], "Key not found", what)
        for path in ("_config/size?" + LIST_Q, "?" + LIST_Q, "m1"):
            what = "GET <missing token>/%s" % path
            st, h, body = harness.http("GET", self.url(token, path).replace("/?", "?"))
            self.assertEqual(st, 404, "the failed writes must not have made the token: %s: %r"
                             % (what, body))
            obj = self.etcd_error(st, h, body, what)
            self.assertEqual(obj["errorCode"], 100, "%s: %r" % (what, obj))

    def test_size_of_existing_token_is_read_only(self):
        token = self.new_token()
        for query, form in (("", {"value": "5"}),
                            ("", {"value": "3"}),
                            ("?prevExist=true", {"value": "5"}),
                            ("?prevValue=3", {"value": "5"})):
            what = "PUT <tok>/_config/size%s %r" % (query, form)
            st, h, body = harness.http("PUT", self.url(token, "_config/size") + query, form)
            self.assertEqual(st, 412, "%s: %d %r" % (what, st, body))
            obj = self.etcd_error(st, h, body, what)
            self.assertEqual(obj["errorCode"], 105, "%s: %r" % (what, obj))
        st, _, body = harness.http("GET", self.url(token, "_config/size"))
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["node"]["value"], "3")

    def test_delete_of_token_dir_is_refused(self):
        token = self.new_token()
        for query in ("", "?dir=true", "?recursive=true", "?dir=true&recursive=true"):
            what = "DELETE <tok>%s" % query
            st, h, body = harness.http("DELETE", self.url(token) + query)
            self.assertTrue(400 <= st < 500, "%s: %d %r" % (what, st, body))
            self.etcd_error(st, h, body, what)
        st, _, body = harness.http("GET", self.url(token) + "?" + LIST_Q)
        self.assertEqual(st, 200, body)
        nodes = json.loads(body)["node"].get("nodes", [])
        self.assertEqual([n["value"] for n in nodes], [MEMBER1], "the token must be intact")
        st, _, body = harness.http("GET", self.url(token, "_config/size"))
        self.assertEqual(st, 200, body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
