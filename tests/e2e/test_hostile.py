"""Hostile input: nothing a client sends may crash disco, hang it, fill it,
or make it lose a registration.

Raw sockets against a real disco process with small limits, so every limit
is reached with little traffic. Each case checks the status, that the body
is etcd JSON where a discovery client could read it, and (in tearDown) that
the registrations made before the suite are intact and the process alive.
Loopback only (source addresses 127.0.0.x stand for distinct clients);
every wait is bounded; processes are stopped by PID.
"""

import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REGISTRY = "/v2/keys/_etcd/registry/"
MEMBER1 = "m1=http://127.0.0.1:2380"
MEMBER2 = "m2=http://127.0.0.1:2381"

# Under a wrapper (valgrind) everything is ~20x slower: scale the latency
# bounds, never the behaviour checked.
SLOW = 10.0 if harness.disco_wrapper() else 1.0

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
IDLE_TIMEOUT_S = 3.0
WAIT_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 4096
MAX_BODY_BYTES = 4096
MAX_KEY_BYTES = 64
MAX_VALUE_BYTES = 256
MAX_KEYS_PER_TOKEN = 6
NEW_RATE, NEW_BURST = 2, 3
SLOWLORIS_CONNS = 200
MAIN_MAX_CONNS = 400
SMALL_MAX_CONNS = 8


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return "Response(%d, %r, %r)" % (self.status, self.headers, self.body[:300])


class Raw:
    """One raw TCP connection with a minimal HTTP/1.1 response reader."""

    def __init__(self, base, source=None, timeout=5.0):
        u = urllib.parse.urlsplit(base)
        assert u.hostname == "127.0.0.1"
        self.hostport = "%s:%d" % (u.hostname, u.port)
        self.sock = socket.create_connection(
            (u.hostname, u.port), timeout=timeout * SLOW,
            source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, path, body=b"", headers=()):
        head = "%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, path, self.hostport)
        for h in headers:
            head += h + "\r\n"
        if body:
            head += ("Content-Type: application/x-www-form-urlencoded\r\n"
                     "Content-Length: %d\r\n" % len(body))
        self.send(head.encode() + b"\r\n" + body)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def read(self, head_only=False):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return Response(status, headers, body)

    def closed_by_server(self, timeout):
        """True if the server closes the connection within `timeout` s with no
        further bytes; fails on unexpected bytes (a smuggled answer)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            return False
        if self.buf:
            raise AssertionError("bytes after the answer: %r" % self.buf[:300])
        return True

    def close(self):
        self.sock.close()


def reg_path(token, key=""):
    return REGISTRY + token + ("/" + key if key else "")


def form(**kw):
    return urllib.parse.urlencode(kw).encode()


class HostileCase(unittest.TestCase):
    """One disco for the suite, with small limits; registrations made in
    setUpClass must be intact after every test."""

    proc = None
    extra_args = ()

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-hostile-")
        cls.proc, cls.base = harness.start_disco(cls.workdir, cls.extra_args,
                                                 wait_timeout="%ds" % WAIT_TIMEOUT_S)
        cls.host = cls.base[len("http://"):]
        cls.before = cls.register_before()

    @classmethod
    def tearDownClass(cls):
        if cls.proc:
            rc = cls.proc.stop()
            cls.proc = None
            if rc != 0:
                raise AssertionError("disco did not stop cleanly: exit %r" % rc)

    @classmethod
    def register_before(cls):
        """A token with two members, as etcd members make them."""
        token = "before"
        st, _, body = harness.http("PUT", cls.base + reg_path(token, "_config/size"),
                                   {"value": "3"})
        assert st == 201, (st, body)
        members = {}
        for mid, value in (("86f5e6aacb2ddcde", MEMBER1), ("1b4a4c5f6e7d8c9b", MEMBER2)):
            st, _, body = harness.http("PUT", "%s/%s/%s?prevExist=false" % (cls.base, token, mid),
                                       {"value": value})
            assert st == 201, (st, body)
            members["/_etcd/registry/%s/%s" % (token, mid)] = (
                value, json.loads(body)["node"]["createdIndex"])
        return token, members

    def tearDown(self):
        self.assertTrue(self.proc.alive(), "disco died; log:\n%s" % self.proc.log()[-3000:])
        token, members = self.before
        st, _, body = harness.http("GET", "%s/%s?recursive=false" % (self.base, token),
                                   timeout=10 * SLOW)
        self.assertEqual(st, 200, body)
        nodes = json.loads(body)["node"].get("nodes", [])
        got = {n["key"]: (n["value"], n["createdIndex"]) for n in nodes}
        self.assertEqual(got, members, "registrations made before were changed")

    # ---- helpers ----

    def raw(self, source=None):
        c = Raw(self.base, source)
        self.addCleanup(c.close)
        return c

    def etcd_error(self, r, status, code=None):
        """Checks an etcd v2 JSON error answer; returns the object."""
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.headers.get("content-type"), "application/json", r)
        self.assertIn("x-etcd-index", r.headers, r)
        self.assertTrue(r.body.endswith(b"\n"), r)
        obj = json.loads(r.body)
        for k in ("errorCode", "message", "cause", "index"):
            self.assertIn(k, obj, r)
        if code is not None:
            self.assertEqual(obj["errorCode"], code, r)
        return obj

    def make_token(self, name, size=3):
        st, _, body = harness.http("PUT", self.base + reg_path(name, "_config/size"),
                                   {"value": str(size)})
        self.assertEqual(st, 201, body)

    def refused(self, data, status, code=None, why=""):
        """Sends `data` with a well-formed request smuggled behind it: the
        answer is `status` in etcd JSON, the connection then closes, and the
        smuggled request is never answered."""
        c = self.raw()
        smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        c.send(data + smuggled)
        try:
            r = c.read()
        except ConnectionError as e:
            self.fail("%s: no answer (%s)" % (why, e))
        obj = self.etcd_error(r, status, code)
        self.assertEqual(r.headers.get("connection"), "close", "%s: %r" % (why, r))
        self.assertTrue(c.closed_by_server(5 * SLOW), "%s: connection left open" % why)
        return r, obj


class TestLimits(HostileCase):
    extra_args = ("--header-timeout", "%ds" % HEADER_TIMEOUT_S,
                  "--body-timeout", "%ds" % BODY_TIMEOUT_S,
                  "--idle-timeout", "%ds" % IDLE_TIMEOUT_S,
                  "--max-conns", str(MAIN_MAX_CONNS),
                  "--max-header-bytes", str(MAX_HEADER_BYTES),
                  "--max-body-bytes", str(MAX_BODY_BYTES),
                  "--max-key-bytes", str(MAX_KEY_BYTES),
                  "--max-value-bytes", str(MAX_VALUE_BYTES),
                  "--max-keys-per-token", str(MAX_KEYS_PER_TOKEN),
                  "--new-rate", str(NEW_RATE), "--new-burst", str(NEW_BURST))

    def test_head_limit_431(self):
        ok = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEADER_BYTES - 100) + \
            b"\r\n\r\n"
        c = self.raw()
        c.send(ok)
        self.assertEqual(c.read().status, 200)
        big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
        _, obj = self.refused(big, 431, 209, "long header")
        self.assertIn(str(MAX_HEADER_BYTES), obj["cause"])
        # a long request target, and many small headers, count the same
        self.refused(b"GET /" + b"a" * MAX_HEADER_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431,
                     209, "long target")
        self.refused(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"a: b\r\n" * (MAX_HEADER_BYTES // 6 + 1)
                     + b"\r\n", 431, 209, "many headers")

    def test_body_limit_413(self):
        path = reg_path("before", "big").encode()
        # refused on the declared length, before the body is sent
        c = self.raw()
        c.send(b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" % (MAX_BODY_BYTES + 1))
        r = c.read()
        obj = self.etcd_error(r, 413, 209)
        self.assertIn(str(MAX_BODY_BYTES), obj["cause"])
        self.assertTrue(c.closed_by_server(5 * SLOW))
        # and a chunked body that grows past it
        chunk = b"%x\r\n%s\r\n" % (1024, b"v" * 1024)
        self.refused(b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n" + chunk * 5 + b"0\r\n\r\n", 413, 209, "chunked body")

    def test_key_and_value_limits_400_209(self):
        self.make_token("limits", 3)
        for base_path in (reg_path("limits"), "/limits"):
            ok_key = "k" * MAX_KEY_BYTES if base_path.startswith("/v2") else "j" * MAX_KEY_BYTES
            st, _, body = harness.http("PUT", "%s%s/%s" % (self.base, base_path, ok_key),
                                       {"value": "v" * MAX_VALUE_BYTES})
            self.assertEqual(st, 201, body)
            st, h, body = harness.http("PUT", "%s%s/%s" % (self.base, base_path, ok_key + "x"),
                                       {"value": "v"})
            obj = self.etcd_error(Response(st, h, body), 400, 209)
            self.assertIn("--max-key-bytes", obj["cause"])
            self.assertIn(str(MAX_KEY_BYTES), obj["cause"])
            st, h, body = harness.http("PUT", "%s%s/v" % (self.base, base_path),
                                       {"value": "v" * (MAX_VALUE_BYTES + 1)})
            obj = self.etcd_error(Response(st, h, body), 400, 209)
            self.assertIn("--max-value-bytes", obj["cause"])
            self.assertIn(str(MAX_VALUE_BYTES), obj["cause"])
        # the refused writes did not happen
        st, _, body = harness.http("GET", self.base + reg_path("limits") + "?recursive=true")
        keys = sorted(n["key"].rsplit("/", 1)[1] for n in json.loads(body)["node"]["nodes"])
        self.assertEqual(keys, ["j" * MAX_KEY_BYTES, "k" * MAX_KEY_BYTES])

    def test_keys_per_token_403_103(self):
        self.make_token("full", 3)
        for i in range(MAX_KEYS_PER_TOKEN):
            st, _, body = harness.http("PUT", self.base + reg_path("full", "k%d" % i),
                                       {"value": "x"})
            self.assertEqual(st, 201, body)
        st, h, body = harness.http("PUT", self.base + reg_path("full", "one-more"),
                                   {"value": "x"})
        self.etcd_error(Response(st, h, body), 403, 103)
        # a rewrite of an existing key still works
        st, _, body = harness.http("PUT", self.base + reg_path("full", "k0"), {"value": "y"})
        self.assertEqual(st, 200, body)

    def new_token(self, source, query=""):
        c = self.raw(source)
        c.request("GET", "/new" + query)
        return c.read()

    def test_new_size_range_400(self):
        for i, (q, want) in enumerate((("?size=0", 400), ("?size=1001", 400),
                                       ("?size=abc", 400), ("?size=-1", 400),
                                       ("?size=1000", 200), ("?size=1", 200))):
            r = self.new_token("127.0.0.%d" % (20 + i), q)
            self.assertEqual(r.status, want, "%s: %r" % (q, r))
            if want == 200:
                self.assertRegex(r.body.decode(), r"^http://[^/]+/[0-9a-f]{32}$")

    def test_new_rate_limit_429(self):
        t0 = time.monotonic()
        for _ in range(NEW_BURST):
            self.assertEqual(self.new_token("127.0.0.2").status, 200)
        r = self.new_token("127.0.0.2")
        self.assertEqual(r.status, 429, r)
        retry = int(r.headers["retry-after"])
        self.assertGreaterEqual(retry, 1)
        self.assertLessEqual(retry, 1 + int(1 / NEW_RATE))
        # another address has its own budget
        self.assertEqual(self.new_token("127.0.0.3").status, 200)
        # and the budget comes back at NEW_RATE a second
        time.sleep(max(0.0, t0 + 1.0 / NEW_RATE + 0.1 - time.monotonic()) + 1.0 / NEW_RATE)
        self.assertEqual(self.new_token("127.0.0.2").status, 200)

    def test_slowloris_does_not_delay_others(self):
        """SLOWLORIS_CONNS clients dribble a request head byte by byte: a
        normal request is answered promptly meanwhile, and each slow client
        gets 408 once the header timeout has passed since its first byte."""
        slow = []
        for i in range(SLOWLORIS_CONNS):
            c = Raw(self.base, "127.0.0.%d" % (100 + i % 50))
            self.addCleanup(c.close)
            c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            slow.append(c)
        t_first = time.monotonic()
        drip = b"X-Slow: " + b"z" * 200
        stop = threading.Event()

        def dribble():
            k = 0
            while not stop.is_set() and k < len(drip):
                for c in slow:
                    try:
                        c.send(drip[k:k + 1])
                    except OSError:
                        pass  # already answered 408 and closed
                k += 1
                stop.wait(0.05)

        t = threading.Thread(target=dribble, daemon=True)
        t.start()
        try:
            worst = 0.0
            while time.monotonic() - t_first < HEADER_TIMEOUT_S * 0.8:
                t0 = time.monotonic()
                st, _, body = harness.http("GET", "%s/before?recursive=false" % self.base,
                                           timeout=5 * SLOW)
                worst = max(worst, time.monotonic() - t0)
                self.assertEqual(st, 200, body)
                time.sleep(0.05)
            self.assertLess(worst, 0.5 * SLOW, "a normal GET waited %.3fs" % worst)
            for c in slow:
                r = c.read()
                self.etcd_error(r, 408, 209)
                self.assertTrue(c.closed_by_server(5 * SLOW))
            took = time.monotonic() - t_first
            self.assertGreaterEqual(took, HEADER_TIMEOUT_S * 0.9)
            self.assertLess(took, HEADER_TIMEOUT_S + 3.0 * SLOW)
        finally:
            stop.set()
            t.join(10)

    def test_slow_body_408(self):
        c = self.raw()
        c.send(b"PUT " + reg_path("before", "slow").encode() + b" HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 20\r\n\r\n"
               b"value=")
        t0 = time.monotonic()
        r = c.read()
        self.etcd_error(r, 408, 209)
        self.assertGreaterEqual(time.monotonic() - t0, BODY_TIMEOUT_S * 0.9)
        self.assertTrue(c.closed_by_server(5 * SLOW))
        st, _, _ = harness.http("GET", self.base + reg_path("before", "slow"))
        self.assertEqual(st, 404, "a request that never completed was applied")

    def test_idle_keepalive_is_closed(self):
        c = self.raw()
        c.request("GET", "/health")
        self.assertEqual(c.read().status, 200)
        time.sleep(IDLE_TIMEOUT_S * 0.5)
        c.request("GET", "/health")  # still open, and the idle time starts over
        self.assertEqual(c.read().status, 200)
        t0 = time.monotonic()
        self.assertFalse(c.closed_by_server(IDLE_TIMEOUT_S * 0.7),
                         "closed before the idle timeout")
        self.assertTrue(c.closed_by_server(IDLE_TIMEOUT_S + 2.0 * SLOW),
                        "an idle connection stayed open")
        self.assertGreaterEqual(time.monotonic() - t0, IDLE_TIMEOUT_S * 0.9)

    def test_parked_wait_ends_at_wait_timeout(self):
        c = self.raw()
        t0 = time.monotonic()
        c.request("GET", reg_path("before") + "?wait=true&recursive=true")
        r = c.read()
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertGreaterEqual(time.monotonic() - t0, WAIT_TIMEOUT_S * 0.9)
        c.request("GET", "/health")  # the connection goes on
        self.assertEqual(c.read().status, 200)


class TestHTTP(HostileCase):
    """HTTP/1.1 framing, smuggling shapes, methods, encodings."""

    extra_args = ("--new-rate", "0",)

    def test_pipelined_requests_answer_in_order(self):
        c = self.raw()
        p = reg_path("before")
        c.send(("GET %s/_config/size HTTP/1.1\r\nHost: x\r\n\r\n"
                "PUT %s/pipe HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                "\r\nContent-Length: 7\r\n\r\nvalue=p"
                "GET %s/pipe HTTP/1.1\r\nHost: x\r\n\r\n" % (p, p, p)).encode())
        a, b, d = c.read(), c.read(), c.read()
        self.assertEqual((a.status, b.status, d.status), (200, 201, 200))
        self.assertIn(b'"value":"3"', a.body)
        self.assertEqual(json.loads(d.body)["node"]["value"], "p")
        harness.http("DELETE", self.base + reg_path("before", "pipe"))

    def test_chunked_request_body(self):
        self.make_token("chunks")
        c = self.raw()
        c.send(b"PUT " + reg_path("chunks", "c").encode() + b" HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nval\r\n6\r\nue=abc\r\n0\r\nHost: evil.example\r\n\r\n")
        r = c.read()
        self.assertEqual(r.status, 201, r)
        self.assertEqual(json.loads(r.body)["node"]["value"], "abc")
        # a trailer does not change what the headers said
        c.send(b"PUT " + reg_path("chunks", "d").encode() + b" HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               b"9\r\nvalue=def\r\n0\r\nContent-Type: text/plain\r\n\r\n")
        r = c.read()
        self.assertEqual(r.status, 201, r)
        self.assertEqual(json.loads(r.body)["node"]["value"], "def")
        self.refused(b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\nabc\r\n0\r\n\r\n", 400, 209, "bad chunk size")
        self.refused(b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 400, 209, "huge chunk size")

    def test_smuggling_shapes_are_refused(self):
        p = b"PUT " + reg_path("before", "smuggled").encode() + b" HTTP/1.1\r\nHost: x\r\n"
        cases = [
            ("CL and TE", p + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
             400),
            ("TE and CL", p + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
             400),
            ("TE gzip", p + b"Transfer-Encoding: gzip\r\n\r\nabc", 501),
            ("TE identity", p + b"Transfer-Encoding: identity\r\n\r\n", 501),
            ("TE gzip, chunked", p + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
            ("TE chunked, chunked", p + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
             501),
            ("TE twice", p + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"0\r\n\r\n", 501),
            ("CL twice, same", p + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
            ("CL twice, different", p + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
            ("CL list", p + b"Content-Length: 3, 3\r\n\r\nabc", 400),
            ("CL negative", p + b"Content-Length: -1\r\n\r\n", 400),
            ("CL plus", p + b"Content-Length: +3\r\n\r\nabc", 400),
            ("CL empty", p + b"Content-Length:\r\n\r\n", 400),
            ("CL overflow", p + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
            ("CL too big", p + b"Content-Length: 10000000000\r\n\r\n", 413),
            ("obs-fold", p + b"X-A: a\r\n b\r\n\r\n", 400),
            ("obs-fold CL", p + b"Content-Length:\r\n 3\r\n\r\nabc", 400),
            ("obs-fold TE", p + b"Transfer-Encoding:\r\n\tchunked\r\n\r\n0\r\n\r\n", 400),
            ("space before colon", p + b"Content-Length : 3\r\n\r\nabc", 400),
            ("no Host", b"GET /health HTTP/1.1\r\n\r\n", 400),
            ("two Hosts", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("bare CR", b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
            ("NUL in target", b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("tab in target", b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("NUL in header", b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
            ("HTTP/2.0", b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            ("HTTP/0.9", b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n", 505),
            ("bad version", b"GET /health HTTP/1.x\r\nHost: x\r\n\r\n", 400),
        ]
        for why, data, status in cases:
            with self.subTest(why):
                self.refused(data, status, 209, why)
        st, _, _ = harness.http("GET", self.base + reg_path("before", "smuggled"))
        self.assertEqual(st, 404, "a refused request was applied")

    def test_h2c_upgrade_is_ignored(self):
        c = self.raw()
        c.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
               b"GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.read().status, 200)
        r = c.read()
        self.assertEqual(r.status, 200)
        self.assertIn(b"Disallow", r.body)

    def test_methods_405_and_501(self):
        for method in (b"PATCH", b"OPTIONS", b"TRACE", b"PROPFIND", b"PURGE"):
            with self.subTest(method):
                r, _ = self.refused(method + b" /before HTTP/1.1\r\nHost: x\r\n\r\n", 405, 209,
                                    method.decode())
                allow = [m.strip() for m in r.headers.get("allow", "").split(",")]
                self.assertEqual(sorted(allow), ["DELETE", "GET", "HEAD", "POST", "PUT"])
        self.refused(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", 405, 209,
                     "CONNECT")
        for method in (b"FOO", b"get", b"BREW"):
            with self.subTest(method):
                self.refused(method + b" /before HTTP/1.1\r\nHost: x\r\n\r\n", 501, 209,
                             method.decode())

    def test_head_has_no_body(self):
        path = "/before?recursive=true"
        st, _, body = harness.http("GET", self.base + path)
        self.assertEqual(st, 200)
        c = self.raw()
        c.send(("HEAD %s HTTP/1.1\r\nHost: x\r\n\r\nGET %s HTTP/1.1\r\nHost: x\r\n\r\n"
                % (path, path)).encode())
        h = c.read(head_only=True)
        self.assertEqual(h.status, 200)
        self.assertEqual(int(h.headers["content-length"]), len(body))
        g = c.read()  # framing intact: the HEAD sent no body bytes
        self.assertEqual(g.status, 200)
        self.assertEqual(g.body, body)
        # HEAD of a missing key: the error's headers, no body
        c.send(b"HEAD /before/nope HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x"
               b"\r\n\r\n")
        self.assertEqual(c.read(head_only=True).status, 404)
        self.assertEqual(c.read().body, b"OK")

    def test_nul_and_bad_percent_encoding_400(self):
        cases = [
            ("GET", "/before/%00", b"", 209),
            ("GET", "/before/a%00b", b"", 209),
            ("GET", "/before/%zz", b"", 209),
            ("GET", "/before/%4", b"", 209),
            ("GET", reg_path("before", "%C0%00"), b"", 209),
            ("GET", reg_path("before") + "?recursive=%zz", b"", 210),
            ("PUT", reg_path("before", "n"), b"value=a\x00b", 209),
            ("PUT", reg_path("before", "n"), b"value=a%00b", 210),
            ("PUT", reg_path("before", "n"), b"value=%g0", 210),
        ]
        for method, path, body, code in cases:
            with self.subTest(path=path, body=body):
                c = self.raw()
                c.request(method, path, body)
                self.etcd_error(c.read(), 400, code)
        st, _, _ = harness.http("GET", self.base + reg_path("before", "n"))
        self.assertEqual(st, 404)

    def test_path_traversal_is_impossible(self):
        for path in ("/../../../../etc/passwd", "/v2/keys/../../../etc/passwd",
                     "/%2e%2e/%2e%2e/etc/passwd", "/before/..%2f..%2f..%2fetc%2fpasswd",
                     "/v2/keys/_etcd/registry/before/%2e%2e/%2e%2e/x", "/./health",
                     "/before/../before"):
            with self.subTest(path):
                c = self.raw()
                c.request("GET", path)
                r = c.read()
                self.assertIn(r.status, (400, 404), r)
                self.etcd_error(r, r.status)
                self.assertNotIn(b"root:", r.body)
        # an empty segment is redirected to the clean path, as etcd does;
        # the redirect serves nothing itself
        c = self.raw()
        c.request("GET", "//etc/passwd")
        r = c.read()
        self.assertEqual((r.status, r.headers.get("location")), (301, "/etc/passwd"), r)
        self.assertNotIn(b"root:", r.body)

    def test_garbage_never_gets_a_non_error_answer(self):
        rng = random.Random(5)
        alphabet = b"GETPOSUDLH /?&=%:\r\n\t\x00\xffabc0123456789HTTP/1."
        for i in range(40):
            n = rng.randrange(1, 400)
            data = bytes(rng.choice(alphabet) for _ in range(n)) + b"\r\n\r\n"
            c = Raw(self.base)
            try:
                c.send(data)
                c.sock.shutdown(socket.SHUT_WR)
                c.sock.settimeout(5 * SLOW)
                out = b""
                while True:
                    try:
                        chunk = c.sock.recv(65536)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    out += chunk
            finally:
                c.close()
            if out:
                status = int(out.split(b" ", 2)[1])
                self.assertGreaterEqual(status, 400, "%r -> %r" % (data, out[:200]))
                self.assertIn(b"application/json", out.split(b"\r\n\r\n")[0],
                              "%r -> %r" % (data, out[:200]))
        st, _, _ = harness.http("GET", self.base + "/health")
        self.assertEqual(st, 200)


class TestConnectionLimit(HostileCase):
    extra_args = ("--max-conns", str(SMALL_MAX_CONNS), "--new-rate", "0")

    def test_past_the_limit_503_then_close(self):
        # The harness's own health check may still be closing: let it go.
        harness.wait_until(lambda: b"disco_connections 1\n" in harness.http(
            "GET", self.base + "/metrics")[2], 5 * SLOW, what="idle server")
        held = []
        for _ in range(SMALL_MAX_CONNS):
            c = self.raw()
            c.request("GET", "/health")
            self.assertEqual(c.read().status, 200)
            held.append(c)
        extra = self.raw()
        extra.request("GET", "/before")
        r = extra.read()
        obj = self.etcd_error(r, 503, 300)
        self.assertIn("connections", obj["cause"])
        self.assertEqual(r.headers.get("retry-after"), "1")
        self.assertEqual(r.headers.get("connection"), "close")
        self.assertTrue(extra.closed_by_server(5 * SLOW))
        # the connections already open are served as before
        for c in held:
            c.request("GET", "/health")
            self.assertEqual(c.read().status, 200)
        # one goes: a new client gets in
        held.pop().close()

        def served():
            c = Raw(self.base)
            try:
                c.request("GET", "/health")
                return c.read().status == 200
            finally:
                c.close()
        harness.wait_until(served, 5 * SLOW, what="a new connection once one closed")


if __name__ == "__main__":
    unittest.main(verbosity=2)
