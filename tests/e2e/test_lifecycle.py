"""The life of a request past its handler: answers held until the store has
made a change durable, parked watches ending at the wait timeout, HEAD and
HTTP/1.0 answers sent late, clients that half-close, refusals of garbage,
and signals.

Each class starts its own real disco on a loopback port chosen at run time
(the LMDB store, the default, unless a test says --data-dir ""), drives it
over raw sockets (harness.RawConn) and reads every answer strictly: a
wrong byte count anywhere desynchronises the stream and fails the test.
Load loops are bounded in count and in time.
"""

import json
import os
import shutil
import socket
import signal
import ssl
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# Under valgrind everything is some 10-50 times slower.
SLOW = 10.0 if harness.disco_wrapper() else 1.0

REGISTRY = "/v2/keys/_etcd/registry/"


def make_token(base, token, size=3):
    st, _, body = harness.http("PUT", base + REGISTRY + token + "/_config/size",
                               body={"value": str(size)})
    if st != 201:
        raise AssertionError("cannot make token %s: %d %r" % (token, st, body))


def event_json(answer):
    """The etcd event an answer carries, checked for the fields every event has."""
    ev = json.loads(answer.body)
    if "action" not in ev or "node" not in ev:
        raise AssertionError("not an etcd event: %r" % answer)
    return ev


class Writer(threading.Thread):
    """Keeps writes in flight: PUTs on one kept-alive connection, back to
    back, until stopped (or `max_writes`). A token's history is bounded
    (--max-events-per-token), so the writer moves to a token of its own
    every ROTATE_EVERY writes: "<prefix>0", "<prefix>1", ...; `token` is the
    one it writes now. Every answer is checked to be 200 or 201 with an
    event; anything else is kept in `errors`."""

    ROTATE_EVERY = 500

    def __init__(self, base, prefix, max_writes=20000):
        super().__init__(daemon=True)
        self.base, self.prefix, self.max_writes = base, prefix, max_writes
        self.token = prefix + "0"
        make_token(base, self.token)
        self.stop_event = threading.Event()
        self.statuses = {}
        self.errors = []

    def run(self):
        conn = None
        try:
            conn = harness.RawConn(self.base, timeout=10 * SLOW)
            for i in range(self.max_writes):
                if self.stop_event.is_set():
                    break
                if i and i % self.ROTATE_EVERY == 0:
                    token = "%s%d" % (self.prefix, i // self.ROTATE_EVERY)
                    conn.request("PUT", REGISTRY + token + "/_config/size", body="value=3")
                    a = conn.read_answer()
                    if a.status != 201:
                        self.errors.append("making token %s: %r" % (token, a))
                        break
                    self.token = token
                conn.request("PUT", REGISTRY + self.token + "/w", body="value=v%d" % i)
                a = conn.read_answer()
                self.statuses[a.status] = self.statuses.get(a.status, 0) + 1
                if a.status not in (200, 201):
                    self.errors.append("write %d: %r" % (i, a))
                    break
                event_json(a)
        except Exception as e:  # reported by the test through `errors`
            self.errors.append("%s: %r" % (type(e).__name__, e))
        finally:
            if conn:
                conn.close()

    def stop(self):
        self.stop_event.set()
        self.join(15 * SLOW)

    @property
    def writes(self):
        return sum(self.statuses.values())


def start_writers(test, base, prefix, n):
    """`n` writers on tokens of their own, named from `prefix`."""
    writers = [Writer(base, "%sw%d-" % (prefix, i)) for i in range(n)]
    for w in writers:
        w.start()
        test.addCleanup(w.stop)
    return writers


def check_writers(test, writers):
    for w in writers:
        w.stop()
    for w in writers:
        test.assertEqual(w.errors, [], "a writer failed")
        test.assertGreater(w.writes, 0, "a writer made no write")


class LifecycleCase(unittest.TestCase):
    """One disco per class; subclasses set the flags."""

    WAIT_TIMEOUT = "5s"
    EXTRA_ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-lifecycle-")
        cls.proc, cls.base = harness.start_disco(cls.workdir, extra_args=cls.EXTRA_ARGS,
                                                 wait_timeout=cls.WAIT_TIMEOUT)

    @classmethod
    def tearDownClass(cls):
        cls.proc.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def assert_alive(self):
        if not self.proc.alive():
            self.fail("disco died (exit %r); log tail:\n%s"
                      % (self.proc.returncode, self.proc.log()[-3000:]))

    def assert_healthy(self):
        self.assert_alive()
        st, _, body = harness.http("GET", self.base + "/health", timeout=5 * SLOW)
        self.assertEqual(st, 200, body)

    def answers_in(self, data, heads):
        """The answers in `data` (all of it) to requests that were HEAD or
        not, as `heads` says; fails on a missing, cut or extra answer."""
        out = []
        for is_head in heads:
            got = harness.parse_answer(data, is_head)
            self.assertIsNotNone(got, "an answer cut short or missing: %r" % data[:600])
            a, data = got
            out.append(a)
        self.assertEqual(data, b"", "bytes after the last answer")
        return out

    def conn(self, timeout=10.0):
        c = harness.RawConn(self.base, timeout=timeout * SLOW)
        self.addCleanup(c.close)
        return c


# ---- 1: a parked watch reaching the wait timeout while a write is in flight


class Watcher(threading.Thread):
    """Re-parks one watch after another on a kept-alive connection until
    stopped. Each answer must be a 200 with an event, or (the wait timeout)
    a 200 with an empty body and X-Etcd-Index. A connection closed without
    an answer is recorded, and the watcher reconnects while disco lives.
    `path` is the watch's target, or a function that gives it anew."""

    def __init__(self, case, path, wait_s):
        super().__init__(daemon=True)
        self.case, self.path, self.wait_s = case, path, wait_s
        self.stop_event = threading.Event()
        self.events = self.timeouts = 0
        self.closed_without_answer = 0
        self.errors = []

    def run(self):
        for _ in range(10000):
            if self.stop_event.is_set() or not self.case.proc.alive():
                return
            try:
                conn = harness.RawConn(self.case.base, timeout=10 * SLOW)
            except OSError as e:
                self.errors.append("connect: %r" % e)
                return
            try:
                self._watch_on(conn)
            finally:
                conn.close()

    def _watch_on(self, conn):
        while not self.stop_event.is_set():
            conn.request("GET", self.path() if callable(self.path) else self.path)
            try:
                a = conn.read_answer(timeout=self.wait_s + 10 * SLOW)
            except ConnectionError:
                self.closed_without_answer += 1
                return
            except Exception as e:
                self.errors.append("%s: %r" % (type(e).__name__, e))
                self.stop_event.set()
                return
            if a.status != 200 or "x-etcd-index" not in a.headers:
                self.errors.append("not a watch answer: %r" % a)
            elif a.body == b"":
                self.timeouts += 1
            else:
                try:
                    event_json(a)
                    self.events += 1
                except ValueError as e:
                    self.errors.append("bad event body %r: %r" % (a.body[:200], e))


class TestWatchTimeoutsWhileWritesAreInFlight(LifecycleCase):
    """64 watchers re-parking with a 300 ms wait timeout while 4 writers keep
    the store's durable index behind the registry's: a watch that times out
    then has its empty answer held until the write is durable. The
    connection must stay alive until that answer is written, disco must not
    touch it after it is gone, and every watch must get its answer."""

    WAIT_TIMEOUT = "300ms"
    WAIT_S = 0.3
    WATCHERS = 64
    WRITERS = 4
    LOAD_S = 7.0

    def test_every_watch_is_answered_and_disco_survives(self):
        token = "watchload"
        make_token(self.base, token)
        writers = start_writers(self, self.base, token, self.WRITERS)
        first = writers[0]
        watchers = []
        for i in range(self.WATCHERS):
            if i % 2:  # woken by the next write (a shared answer, held)
                def path():
                    return REGISTRY + first.token + "?wait=true&recursive=true"
            else:  # never written: ends at the wait timeout (an empty answer, held)
                path = REGISTRY + token + "/quiet%d?wait=true" % i
            w = Watcher(self, path, self.WAIT_S)
            watchers.append(w)
            w.start()
        deadline = time.monotonic() + self.LOAD_S
        while time.monotonic() < deadline and self.proc.alive():
            time.sleep(0.1)
        for w in watchers:
            w.stop_event.set()
        for w in watchers:
            w.join(self.WAIT_S + 15 * SLOW)
        self.assert_alive()
        for w in writers:
            w.stop()
        errors = [e for w in watchers for e in w.errors]
        self.assertEqual(errors[:5], [], "%d watch answers were wrong" % len(errors))
        closed = sum(w.closed_without_answer for w in watchers)
        self.assertEqual(closed, 0, "watches whose connection closed without an answer")
        self.assertGreater(sum(w.timeouts for w in watchers), 0, "no watch timed out")
        self.assertGreater(sum(w.events for w in watchers), 0, "no watch saw an event")
        check_writers(self, writers)
        self.assert_healthy()
        self.assertEqual(self.proc.stop(), 0, self.proc.log()[-3000:])


# ---- 2: HEAD and HTTP/1.0 answers held while a write is in flight


class TestHeldHeadAndHttp10Answers(LifecycleCase):
    """A HEAD answer has headers only, also when it waited for the store;
    an HTTP/1.0 request with "Connection: keep-alive" gets an answer that
    says keep-alive, also when it waited. Writers keep the durable index
    behind, so the reads below are held; the byte stream of each connection
    is parsed strictly, so one stray body byte fails the test."""

    ROUNDS = 400
    LOAD_S = 6.0

    def test_held_head_and_http10_answers_keep_the_stream_in_sync(self):
        token = "headload"
        make_token(self.base, token)
        path = REGISTRY + token + "/_config/size"
        st, _, expected = harness.http("GET", self.base + path)
        self.assertEqual(st, 200)
        writers = start_writers(self, self.base, token, 3)
        ka = ("Connection: keep-alive",)
        fmt = harness.RawConn.format_request
        # (request bytes, is_head, is_http10)
        pipeline = [
            (fmt("HEAD", path), True, False),
            (fmt("GET", path), False, False),
            (fmt("HEAD", path, headers=ka, version="HTTP/1.0", host=None), True, True),
            (fmt("GET", path, headers=ka, version="HTTP/1.0", host=None), False, True),
            (fmt("HEAD", path, headers=ka, version="HTTP/1.0", host=None), True, True),
            (fmt("HEAD", path), True, False),
            (fmt("GET", path, headers=ka, version="HTTP/1.0", host=None), False, True),
        ]
        c = self.conn()
        deadline = time.monotonic() + self.LOAD_S
        rounds = 0
        while rounds < self.ROUNDS and time.monotonic() < deadline:
            rounds += 1
            if rounds % 2:
                c.send(b"".join(p[0] for p in pipeline))  # pipelined
                answers = [c.read_answer(is_head=h) for _, h, _ in pipeline]
            else:
                answers = []  # one by one: each waits alone for the store
                for data, is_head, _ in pipeline:
                    c.send(data)
                    answers.append(c.read_answer(is_head=is_head))
            for (_, is_head, is_10), a in zip(pipeline, answers):
                what = "round %d, %s %s: %r" % (rounds, "HEAD" if is_head else "GET",
                                                "HTTP/1.0" if is_10 else "HTTP/1.1", a)
                self.assertEqual(a.status, 200, what)
                self.assertEqual(a.headers.get("content-type"), "application/json", what)
                self.assertIn("x-etcd-index", a.headers, what)
                self.assertEqual(int(a.headers["content-length"]), len(expected), what)
                if is_10:
                    self.assertEqual(a.headers.get("connection"), "keep-alive", what)
                else:
                    self.assertNotIn("connection", a.headers, what)
                if not is_head:
                    self.assertEqual(a.body, expected, what)
            self.assertEqual(c.buf, b"", "bytes after the last answer of round %d" % rounds)
        self.assert_alive()
        check_writers(self, writers)
        self.assertGreater(rounds, 10)
        self.assert_healthy()


# ---- 3: a client that half-closes after its requests


class HalfCloseCases:
    """Requests, then shutdown(SHUT_WR): every complete request is answered
    in full, then disco closes. Mixed into a class per store."""

    WAIT_TIMEOUT = "1s"
    WAIT_S = 1.0

    def exchange_and_eof(self, data, timeout=10.0):
        c = self.conn()
        c.send(data)
        c.shutdown_write()
        return c.read_to_eof(timeout=timeout * SLOW)

    def test_put_then_half_close_gets_its_answer(self):
        token = "half1" + self.SUFFIX
        make_token(self.base, token)
        key = REGISTRY + token + "/m1"
        data = self.exchange_and_eof(harness.RawConn.format_request("PUT", key, "value=a"))
        (a,) = self.answers_in(data, [False])
        self.assertEqual(a.status, 201, a)
        ev = event_json(a)
        self.assertEqual((ev["action"], ev["node"]["key"], ev["node"]["value"]),
                         ("set", key[len("/v2/keys"):], "a"))
        st, _, body = harness.http("GET", self.base + key)
        self.assertEqual(st, 200)
        self.assertEqual(json.loads(body)["node"]["value"], "a")

    def test_pipelined_put_and_get_then_half_close(self):
        token = "half2" + self.SUFFIX
        make_token(self.base, token)
        key = REGISTRY + token + "/m1"
        fmt = harness.RawConn.format_request
        data = self.exchange_and_eof(fmt("PUT", key, "value=b") + fmt("GET", key)
                                     + fmt("HEAD", key))
        put, get, head = self.answers_in(data, [False, False, True])
        self.assertEqual(put.status, 201, put)
        self.assertEqual(get.status, 200, get)
        self.assertEqual(event_json(get)["node"]["value"], "b")
        self.assertEqual(get.headers["x-etcd-index"], put.headers["x-etcd-index"])
        self.assertEqual(head.status, 200, head)
        self.assertEqual(int(head.headers["content-length"]), len(get.body))

    def test_parked_watch_then_half_close(self):
        # The client is gone (as to Go's server): the watch is cancelled and
        # needs no answer, but the connection must not outlive the wait.
        token = "half3" + self.SUFFIX
        make_token(self.base, token)
        data = self.exchange_and_eof(
            harness.RawConn.format_request("GET", REGISTRY + token + "?wait=true&recursive=true"),
            timeout=self.WAIT_S + 5.0)
        if data:
            (a,) = self.answers_in(data, [False])
            self.assertEqual((a.status, a.body), (200, b""), a)
        self.assert_healthy()


    def test_backed_up_answers_then_half_close(self):
        # The client pipelines more requests than it reads, so answers back
        # up (over 1 MiB unsent) and disco stops reading; then it half-closes.
        # Every complete request is still answered, and no reset destroys
        # what is on the wire.
        token = "half4" + self.SUFFIX
        make_token(self.base, token)
        host, port = self.base[len("http://"):].rsplit(":", 1)
        req = ("GET %s%s/_config/size HTTP/1.1\r\nHost: x\r\n\r\n"
               % (REGISTRY, token)).encode()
        data = req * 60000
        c = socket.socket()
        self.addCleanup(c.close)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect((host, int(port)))
        c.setblocking(False)
        sent, deadline = 0, time.monotonic() + 10 * SLOW
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += c.send(data[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        complete = sent // len(req)
        self.assertGreater(complete, 5000, "too few requests went out to back answers up")
        c.setblocking(True)
        c.shutdown(socket.SHUT_WR)
        time.sleep(1.0)  # a slow reader: the FIN arrives while reading is paused
        c.settimeout(10 * SLOW)
        got = bytearray()
        while True:
            d = c.recv(1 << 20)  # a reset raises here
            if not d:
                break
            got += d
        self.assertEqual(got.count(b"HTTP/1.1 200 OK\r\n"), complete)
        self.assert_healthy()


class TestHalfCloseLmdb(HalfCloseCases, LifecycleCase):
    """With the LMDB store every write's answer is held until it is durable."""
    SUFFIX = "l"


class TestHalfCloseMemory(HalfCloseCases, LifecycleCase):
    """With --data-dir "" answers leave at once."""
    SUFFIX = "m"
    EXTRA_ARGS = ("--data-dir", "")


# ---- 11: garbage request lines, SIGHUP


def tls_client_hello():
    """The first flight of a real TLS client, made in memory (no network)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="disco.test")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:16]  # a TLS handshake record
    return hello


class TestGarbageRequestLines(LifecycleCase):
    """Bytes that are no HTTP request line (a TLS client on the plain port,
    binary, JSON, an SSH banner) are a malformed request: 400, then close."""

    def test_garbage_request_line_is_400_then_close(self):
        cases = {
            "TLS ClientHello": tls_client_hello(),
            "binary": b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
            "JSON": b'{"jsonrpc": "2.0", "method": "x"}\r\n\r\n',
            "SSH banner": b"SSH-2.0-OpenSSH_9.6\r\n",
        }
        for name, data in cases.items():
            with self.subTest(name):
                c = self.conn(timeout=5.0)
                c.send(data)
                a = c.read_answer()
                self.assertEqual(a.status, 400, a)
                self.assertEqual(a.headers.get("content-type"), "application/json", a)
                self.assertEqual(json.loads(a.body)["errorCode"], 209, a)
                self.assertEqual(a.headers.get("connection"), "close", a)
                self.assertEqual(c.read_to_eof(timeout=5 * SLOW), b"")
        self.assert_healthy()


class TestSighup(LifecycleCase):
    """SIGHUP will reload TLS material; until then it is logged, not fatal."""

    def test_sighup_is_logged_and_disco_keeps_serving(self):
        os.kill(self.proc.pid, signal.SIGHUP)
        harness.wait_until(lambda: "sighup" in self.proc.log().lower() or not self.proc.alive(),
                           timeout=5 * SLOW, what="a log line about SIGHUP")
        self.assert_alive()
        self.assertIn("sighup", self.proc.log().lower())
        self.assert_healthy()
        c = self.conn()
        c.request("GET", "/health")
        self.assertEqual(c.read_answer().status, 200)
        self.assertEqual(self.proc.stop(), 0)


# ---- all of it on one connection


class TestCombinedLifecycle(LifecycleCase):
    """Pipelined PUT, HEAD, GET and a watch that ends at a short wait
    timeout, on the LMDB store (writes are held), then the same with a
    half-close: the exact answers, in order, then the close."""

    WAIT_TIMEOUT = "500ms"
    WAIT_S = 0.5

    def test_pipeline_watch_timeout_and_half_close(self):
        token = "combined"
        make_token(self.base, token)
        key = REGISTRY + token + "/m1"
        node_key = key[len("/v2/keys"):]
        fmt = harness.RawConn.format_request
        c = self.conn()

        # PUT, HEAD, GET, watch: all pipelined.
        c.send(fmt("PUT", key, "value=v1") + fmt("HEAD", key) + fmt("GET", key)
               + fmt("GET", key + "?wait=true"))
        put = c.read_answer()
        self.assertEqual(put.status, 201, put)
        index = int(put.headers["x-etcd-index"])
        self.assertEqual(event_json(put), {
            "action": "set",
            "node": {"key": node_key, "value": "v1", "modifiedIndex": index,
                     "createdIndex": index}})
        head = c.read_answer(is_head=True)
        get = c.read_answer()
        self.assertEqual(get.status, 200, get)
        self.assertEqual(event_json(get), {
            "action": "get",
            "node": {"key": node_key, "value": "v1", "modifiedIndex": index,
                     "createdIndex": index}})
        self.assertEqual(get.headers["x-etcd-index"], str(index))
        self.assertEqual((head.status, head.body), (200, b""), head)
        self.assertEqual(head.headers["content-length"], str(len(get.body)))
        self.assertEqual(head.headers["x-etcd-index"], str(index))
        self.assertEqual(head.headers["content-type"], "application/json")
        watch = c.read_answer(timeout=self.WAIT_S + 10 * SLOW)
        self.assertEqual((watch.status, watch.body), (200, b""), watch)
        self.assertEqual(watch.headers["x-etcd-index"], str(index))
        self.assertEqual(watch.headers["content-length"], "0")
        self.assertEqual(c.buf, b"")

        # The same connection: PUT, HEAD, GET, then half-close.
        c.send(fmt("PUT", key, "value=v2") + fmt("HEAD", key) + fmt("GET", key))
        c.shutdown_write()
        data = c.read_to_eof(timeout=10 * SLOW)
        put2, head2, get2 = self.answers_in(data, [False, True, False])
        self.assertEqual(put2.status, 200, put2)
        index2 = int(put2.headers["x-etcd-index"])
        self.assertEqual(event_json(put2), {
            "action": "set",
            "node": {"key": node_key, "value": "v2", "modifiedIndex": index2,
                     "createdIndex": index2},  # a set makes a new node, as in etcd
            "prevNode": {"key": node_key, "value": "v1", "modifiedIndex": index,
                         "createdIndex": index}})
        self.assertEqual((head2.status, head2.body), (200, b""), head2)
        self.assertEqual(get2.status, 200, get2)
        self.assertEqual(event_json(get2)["node"]["value"], "v2")
        self.assertEqual(head2.headers["content-length"], str(len(get2.body)))

        # A new connection: a write, then a watch for the next change, then
        # half-close. The write is answered in full; the watch's client is
        # gone, so the watch needs no answer, but the connection closes
        # within the wait timeout.
        c3 = self.conn()
        c3.send(fmt("PUT", key, "value=v3")
                + fmt("GET", key + "?wait=true&waitIndex=%d" % (index2 + 2)))
        c3.shutdown_write()
        data = c3.read_to_eof(timeout=self.WAIT_S + 10 * SLOW)
        got = harness.parse_answer(data, False)
        self.assertIsNotNone(got, "no full answer to the PUT: %r" % data[:600])
        put3, data = got
        self.assertEqual(put3.status, 200, put3)
        self.assertEqual(event_json(put3)["node"]["value"], "v3")
        if data:  # an answer to the watch is allowed, if it is whole
            (watch3,) = self.answers_in(data, [False])
            self.assertEqual((watch3.status, watch3.body), (200, b""), watch3)
        self.assert_healthy()


if __name__ == "__main__":
    unittest.main()
