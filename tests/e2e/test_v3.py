#!/usr/bin/env python3
"""End-to-end: etcd's v3 gRPC discovery surface on disco's HTTP port (h2c).

Run:  python3 tests/e2e/test_v3.py        (exit code 0 on success)

Real processes only: a disco (build/disco or $DISCO_BIN), etcdctl 3.4 with
ETCDCTL_API=3, python3-etcd3 (grpcio) run in this interpreter, and, for the
differential test, a real single-node etcd 3.4; all on loopback ports picked
at run time, stopped by PID.  python3-etcd3 comes from Debian, so this file
must run under /usr/bin/python3; without the module the gRPC-client tests
are skipped (etcdctl ones still run).
"""

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from h2raw import (  # noqa: E402
    ACK, COMPRESSION_ERROR, CONTINUATION, DATA, END_HEADERS, END_STREAM, FRAME_SIZE_ERROR, GOAWAY,
    H2, HEADERS, PING, PREFACE, PROTOCOL_ERROR, RST_STREAM, SETTINGS, WINDOW_UPDATE, frame,
    hpack_literal, watch_create)

try:
    import grpc  # noqa: E402
    import etcd3  # noqa: E402
    from etcd3 import etcdrpc  # noqa: E402
except ImportError:  # pragma: no cover - the Debian package is a CHECK_DEP
    etcd3 = None
    # Debian's python3-etcd3 lives in /usr/bin/python3's path; ctest may run
    # another python3 (pyenv, a venv): run again under Debian's.
    SYSTEM_PYTHON = "/usr/bin/python3"
    if (os.access(SYSTEM_PYTHON, os.X_OK) and not os.environ.get("DISCO_V3_REEXEC") and
            os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)):
        os.environ["DISCO_V3_REEXEC"] = "1"
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])

# Under a wrapper (valgrind: `make valgrind`, `make check`) disco is many
# times slower: every bound scales.
SLOW = 10 if os.environ.get("DISCO_WRAPPER") else 1
CALL_TIMEOUT_S = 5 * SLOW
WATCH_TIMEOUT_S = 10.0 * SLOW
PREFIX = "/_etcd/registry"

need_etcd3 = unittest.skipIf(etcd3 is None, "python3-etcd3 is not installed")


def hostport(base_url):
    u = urllib.parse.urlsplit(base_url)
    return u.hostname, u.port


def size_key(token):
    return "%s/%s/_config/size" % (PREFIX, token)


def members_prefix(token):
    return "%s/%s/members" % (PREFIX, token)


def member_key(token, mid):
    return "%s/%s/members/%s" % (PREFIX, token, mid)


class Base(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-v3-")
        self.procs = []
        self.disco, self.base_url = harness.start_disco(self.workdir)
        self.procs.append(self.disco)
        self.host, self.port = hostport(self.base_url)
        self.endpoint = "%s:%d" % (self.host, self.port)

    def tearDown(self):
        for p in self.procs:
            rc = p.stop()
            if p is self.disco:
                self.assertEqual(rc, 0, "disco did not stop cleanly:\n" + p.log()[-3000:])
        if sys.exc_info()[0] is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def etcdctl(self, *args, timeout=10):
        return harness.etcdctl(self.endpoint, *args, timeout=timeout)

    def client(self):
        return etcd3.client(self.host, self.port, timeout=CALL_TIMEOUT_S)


class TlsTest(unittest.TestCase):
    """python3-etcd3 (gRPC over TLS, ALPN h2) against disco serving TLS on
    its port: the calls of a booting member, with and without client
    certificates (--tls-client-ca). The throw-away CA is test_tls's."""

    @classmethod
    def setUpClass(cls):
        import test_tls  # noqa: E402  (its PKI helpers; no tests run from here)
        cls.tls = test_tls
        test_tls.setUpModule()

    @classmethod
    def tearDownClass(cls):
        cls.tls.tearDownModule()

    def start(self, *extra):
        workdir = tempfile.mkdtemp(prefix="disco-e2e-v3tls-")
        self.addCleanup(shutil.rmtree, workdir, True)
        d = self.tls.TlsDisco(workdir, extra_args=extra,
                              client_cert="client" if extra else None)
        self.addCleanup(lambda: self.assertEqual(d.proc.stop(), 0, d.proc.log()[-3000:]))
        return d

    def client(self, d, client_cert=None):
        kw = {"ca_cert": self.tls.pki("ca.pem")}
        if client_cert:
            kw.update(cert_cert=self.tls.pki(client_cert + ".pem"),
                      cert_key=self.tls.pki(client_cert + ".key"))
        return etcd3.client(harness.LOOPBACK, d.port, timeout=CALL_TIMEOUT_S, **kw)

    def register(self, c):
        tok = uuid.uuid4().hex
        c.put(size_key(tok), "1")
        c.put(member_key(tok, "a1"), "infra0=https://10.0.0.1:2380")
        got = [(m.key.decode(), v.decode()) for v, m in c.get_prefix(members_prefix(tok))]
        self.assertEqual(got, [(member_key(tok, "a1"), "infra0=https://10.0.0.1:2380")])

    @need_etcd3
    def test_v3_calls_over_tls(self):
        d = self.start()
        c = self.client(d)
        try:
            self.register(c)
        finally:
            c.close()

    @need_etcd3
    def test_v3_calls_over_mutual_tls(self):
        d = self.start("--tls-client-ca", self.tls.pki("ca.pem"))
        c = self.client(d, "client")
        try:
            self.register(c)
        finally:
            c.close()
        # no client certificate, or one from another CA: refused at the handshake
        for cert in (None, "rogueclient"):
            c = self.client(d, cert)
            try:
                with self.assertRaises(etcd3.exceptions.Etcd3Exception):
                    c.get(size_key("x"))
            finally:
                c.close()


class EtcdctlTest(Base):
    """etcdctl 3.4 (grpc-go 1.33) against disco: put, get --prefix, watch --rev."""

    def test_put_get_watch(self):
        tok = uuid.uuid4().hex
        rc, out, err = self.etcdctl("put", size_key(tok), "3")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.strip(), "OK")
        for i, mid in enumerate(("a1", "b2")):
            rc, out, err = self.etcdctl("put", member_key(tok, mid),
                                        "infra%d=http://10.0.0.%d:2380" % (i, i + 1))
            self.assertEqual(rc, 0, err)
        rc, out, err = self.etcdctl("get", "--prefix", members_prefix(tok))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.split("\n")[:4],
                         [member_key(tok, "a1"), "infra0=http://10.0.0.1:2380",
                          member_key(tok, "b2"), "infra1=http://10.0.0.2:2380"])
        # The same keys through the v2 API: one registry.
        status, _, body = harness.http("GET", self.base_url + "/v2/keys" + members_prefix(tok))
        self.assertEqual(status, 200)
        self.assertIn(b"infra1=http://10.0.0.2:2380", body)
        # watch --rev 1 replays both registrations, then ends at the timeout.
        rc, out, err = self.etcdctl("watch", "--prefix", "--rev=1", members_prefix(tok),
                                    timeout=3 * SLOW)
        self.assertIsNone(rc, "watch should still be running")
        self.assertEqual(out.split("\n")[:6],
                         ["PUT", member_key(tok, "a1"), "infra0=http://10.0.0.1:2380",
                          "PUT", member_key(tok, "b2"), "infra1=http://10.0.0.2:2380"])

    def test_v3_calls_in_the_latency_histogram(self):
        rc, out, err = self.etcdctl("get", "/_etcd/registry/x/_config/size")
        self.assertEqual(rc, 0, err)
        _, _, body = harness.http("GET", self.base_url + "/metrics")
        m = re.search(rb'disco_request_duration_seconds_count\{endpoint="v3"\} (\d+)', body)
        self.assertIsNotNone(m, body[-2000:])
        self.assertGreaterEqual(int(m.group(1)), 1)

    def test_refusals(self):
        tok = uuid.uuid4().hex
        rc, _, err = self.etcdctl("put", "/foo", "bar")
        self.assertNotEqual(rc, 0)
        self.assertIn("etcdserver: permission denied", err)
        # A member of a token that does not exist.
        rc, _, err = self.etcdctl("put", member_key(tok, "a1"), "x=http://a:1")
        self.assertNotEqual(rc, 0)
        self.assertIn("etcdserver: permission denied", err)
        rc, _, err = self.etcdctl("put", size_key(tok), "3")
        self.assertEqual(rc, 0, err)
        rc, _, err = self.etcdctl("put", size_key(tok), "3")  # the same again: a no-op
        self.assertEqual(rc, 0, err)
        rc, _, err = self.etcdctl("put", size_key(tok), "5")
        self.assertNotEqual(rc, 0)
        self.assertIn("etcdserver: permission denied", err)
        # --user makes etcdctl Authenticate first; disco answers as an etcd
        # without auth, which etcdctl tolerates.
        rc, out, err = self.etcdctl("--user", "u:p", "get", size_key(tok))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.split("\n")[1], "3")

    def test_http1_unchanged_on_the_same_port(self):
        status, _, body = harness.http("GET", self.base_url + "/health")
        self.assertEqual(status, 200)
        # Bytes that start like the HTTP/2 preface but are not it: HTTP/1.1.
        conn = harness.RawConn(self.base_url)
        try:
            conn.send(b"PRI")
            time.sleep(0.2)
            conn.send(b"NT /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = conn.read_answer()
            self.assertIn(answer.status, (400, 405, 501))
        finally:
            conn.close()


class KindTest(Base):
    """A token serves one kind of member."""

    @need_etcd3
    def test_v2_member_refused_in_a_v3_token_and_back(self):
        c = self.client()
        v3tok, v2tok = uuid.uuid4().hex, uuid.uuid4().hex
        c.put(size_key(v3tok), "3")
        c.put(member_key(v3tok, "a1"), "n1=http://10.0.0.1:2380")
        status, _, body = harness.http("PUT", "%s/%s/abc" % (self.base_url, v3tok),
                                       body=b"value=n2%3Dhttp%3A%2F%2F10.0.0.2%3A2380",
                                       headers={"Content-Type":
                                                "application/x-www-form-urlencoded"})
        self.assertEqual(status, 403, body)
        self.assertIn(b"v3 members", body)
        status, _, body = harness.http("PUT", "%s/v2/keys%s/%s/_config/size" %
                                       (self.base_url, PREFIX, v2tok), body=b"value=3",
                                       headers={"Content-Type":
                                                "application/x-www-form-urlencoded"})
        self.assertEqual(status, 201, body)
        status, _, body = harness.http("PUT", "%s/%s/abc" % (self.base_url, v2tok),
                                       body=b"value=n2%3Dhttp%3A%2F%2F10.0.0.2%3A2380",
                                       headers={"Content-Type":
                                                "application/x-www-form-urlencoded"})
        self.assertEqual(status, 201, body)
        # python3-etcd3 turns FAILED_PRECONDITION into its own exception.
        with self.assertRaises(etcd3.exceptions.PreconditionFailedError):
            c.put(member_key(v2tok, "a1"), "n1=http://10.0.0.1:2380")
        status, _, body = harness.http("GET", "%s/%s" % (self.base_url, v2tok))
        self.assertEqual(status, 200)
        self.assertNotIn(b"members", body)


class WatchStreamTest(Base):
    """Several watches on one stream, cancel, and streams that end: every
    parked watch is released exactly when its stream or connection goes."""

    def parked_waits(self):
        """disco_parked_waits, after checking that the by-protocol gauge
        counts every one of them as v3 (this test parks no v2 long-poll)."""
        status, _, body = harness.http("GET", self.base_url + "/metrics")
        self.assertEqual(status, 200)
        values = {}
        for line in body.decode().splitlines():
            for name in ("disco_parked_waits ", 'disco_parked_watches{protocol="v2"} ',
                         'disco_parked_watches{protocol="v3"} '):
                if line.startswith(name):
                    values[name.strip()] = int(float(line.split()[-1]))
        self.assertEqual(len(values), 3, body[-1500:])
        total = values["disco_parked_waits"]
        self.assertEqual(values['disco_parked_watches{protocol="v2"}'], 0)
        self.assertEqual(values['disco_parked_watches{protocol="v3"}'], total)
        return total

    @need_etcd3
    def test_watches_per_stream_cancel_and_close(self):
        import queue
        tok = uuid.uuid4().hex
        c = self.client()
        c.put(size_key(tok), "3")
        ch = grpc.insecure_channel(self.endpoint)
        stub = etcdrpc.WatchStub(ch)
        m = members_prefix(tok)
        end = (m[:-1] + chr(ord(m[-1]) + 1)).encode()

        def create(key, range_end=b""):
            return etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
                key=key.encode(), range_end=range_end))

        streams = []
        for _ in range(3):
            q = queue.Queue()
            q.put(create(m, end))
            q.put(create(member_key(tok, "a1")))
            it = iter(q.get, None)
            call = stub.Watch(it, timeout=30 * SLOW)
            streams.append((q, call))
        # created, ids 0 and 1, on each stream
        for q, call in streams:
            ids = [next(call).watch_id, next(call).watch_id]
            self.assertEqual(sorted(ids), [0, 1])
        harness.wait_until(lambda: self.parked_waits() == 6, 5 * SLOW, what="6 parked watches")
        c.put(member_key(tok, "a1"), "n1=http://a:1")
        for q, call in streams:
            got = sorted((r.watch_id, r.events[0].kv.key.decode()) for r in (next(call),
                                                                               next(call)))
            self.assertEqual(got, [(0, member_key(tok, "a1")), (1, member_key(tok, "a1"))])
        # Cancel watch 1 on the first stream: its canceled answer, one waiter fewer.
        q0, call0 = streams[0]
        q0.put(etcdrpc.WatchRequest(cancel_request=etcdrpc.WatchCancelRequest(watch_id=1)))
        r = next(call0)
        self.assertEqual((r.watch_id, r.canceled), (1, True))
        harness.wait_until(lambda: self.parked_waits() == 5, 5 * SLOW, what="5 parked watches")
        # The client resets the second stream: its two watches go.
        streams[1][1].cancel()
        harness.wait_until(lambda: self.parked_waits() == 3, 5 * SLOW, what="3 parked watches")
        # The connection closes: every stream on it ends.
        ch.close()
        harness.wait_until(lambda: self.parked_waits() == 0, 5 * SLOW, what="no parked watches")
        for q, _ in streams:
            q.put(None)
        self.assertTrue(self.disco.alive())


class WatchLimitTest(Base):
    """Watches per stream and per connection are bounded; past a bound a
    create is refused as etcd refuses one it cannot make (created and
    canceled, watch_id -1, the reason), and the stream goes on."""

    PER_STREAM = 100
    PER_CONN = 1000

    def open_stream(self, stub):
        import queue
        q = queue.Queue()
        call = stub.Watch(iter(q.get, None), timeout=60 * SLOW)
        return q, call

    def create(self, q, call, key):
        q.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(key=key.encode())))
        return next(call)

    @need_etcd3
    def test_watches_per_stream(self):
        tok = uuid.uuid4().hex
        self.client().put(size_key(tok), "3")
        ch = grpc.insecure_channel(self.endpoint)
        q, call = self.open_stream(etcdrpc.WatchStub(ch))
        for i in range(self.PER_STREAM):
            r = self.create(q, call, member_key(tok, "m%d" % i))
            self.assertEqual((r.created, r.canceled, r.watch_id), (True, False, i))
        r = self.create(q, call, member_key(tok, "over"))
        self.assertEqual((r.created, r.canceled, r.watch_id), (True, True, -1))
        self.assertIn("too many watches on this stream", r.cancel_reason)
        # One canceled: room for one more, and the stream still delivers.
        q.put(etcdrpc.WatchRequest(cancel_request=etcdrpc.WatchCancelRequest(watch_id=0)))
        self.assertTrue(next(call).canceled)
        r = self.create(q, call, member_key(tok, "again"))
        self.assertEqual((r.created, r.canceled), (True, False))
        self.client().put(member_key(tok, "m5"), "n5=http://a:5")
        r = next(call)
        self.assertEqual((r.watch_id, r.events[0].kv.key.decode()), (5, member_key(tok, "m5")))
        q.put(None)
        ch.close()

    @need_etcd3
    def test_watches_per_connection(self):
        tok = uuid.uuid4().hex
        self.client().put(size_key(tok), "3")
        ch = grpc.insecure_channel(self.endpoint)
        stub = etcdrpc.WatchStub(ch)
        streams = [self.open_stream(stub) for _ in range(self.PER_CONN // self.PER_STREAM)]
        for q, call in streams:
            for i in range(self.PER_STREAM):
                r = self.create(q, call, member_key(tok, "m%d" % i))
                self.assertFalse(r.canceled, r.cancel_reason)
        q, call = self.open_stream(stub)
        r = self.create(q, call, member_key(tok, "over"))
        self.assertEqual((r.created, r.canceled, r.watch_id), (True, True, -1))
        self.assertIn("too many watches on this connection", r.cancel_reason)
        # A stream that ends gives its watches back to the connection.
        streams[0][1].cancel()
        streams[0][0].put(None)
        harness.wait_until(
            lambda: not self.create(q, call, member_key(tok, "later")).canceled, 5 * SLOW,
            what="a watch created once a stream ended")
        # Another connection has its own count.
        ch2 = grpc.insecure_channel(self.endpoint)
        q2, call2 = self.open_stream(etcdrpc.WatchStub(ch2))
        self.assertFalse(self.create(q2, call2, member_key(tok, "x")).canceled)
        for qq, _ in streams[1:] + [(q, call), (q2, call2)]:
            qq.put(None)
        ch.close()
        ch2.close()
        self.assertTrue(self.disco.alive())


# ---- raw HTTP/2 frames (h2raw.py: no package beyond the standard library) --

class H2WaitTimeoutTest(unittest.TestCase):
    """A v2 long-poll (wait=true) sent over HTTP/2 gets the same wait
    timeout as on HTTP/1.1: each stream has its own deadline, and the
    connection goes on."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-v3-")
        self.disco, self.base_url = harness.start_disco(self.workdir, wait_timeout="1s")
        self.host, self.port = hostport(self.base_url)

    def tearDown(self):
        rc = self.disco.stop()
        self.assertEqual(rc, 0, "disco did not stop cleanly:\n" + self.disco.log()[-3000:])
        shutil.rmtree(self.workdir, ignore_errors=True)

    def test_long_poll_over_h2_times_out(self):
        status, _, body = harness.http("GET", self.base_url + "/new?size=3")
        self.assertEqual(status, 200, body)
        path = urllib.parse.urlsplit(body.decode().strip()).path
        h = H2(self.host, self.port)
        h.start()
        t0 = time.monotonic()
        h.get(1, path + "?wait=true&recursive=true")
        h.get(3, path + "?wait=true&recursive=true")
        for stream in (1, 3):
            status, frames = h.answer(stream)
            self.assertEqual(status, b"\x88", frames)  # 200: "nothing yet, ask again"
        self.assertLess(time.monotonic() - t0, 30 * SLOW)
        # The connection is still good for another request.
        h.get(5, "/health")
        status, frames = h.answer(5)
        self.assertEqual(status, b"\x88", frames)
        h.close()

    @need_etcd3
    def test_v3_watch_outlives_the_wait_timeout(self):
        """A Watch call waits as long as its client likes: its stream's
        deadline passes (several times) and it still delivers."""
        import queue
        tok = uuid.uuid4().hex
        c = etcd3.client(self.host, self.port, timeout=CALL_TIMEOUT_S)
        c.put(size_key(tok), "3")
        ch = grpc.insecure_channel("%s:%d" % (self.host, self.port))
        q = queue.Queue()
        call = etcdrpc.WatchStub(ch).Watch(iter(q.get, None), timeout=30 * SLOW)
        q.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=member_key(tok, "a").encode())))
        self.assertTrue(next(call).created)
        time.sleep(2.5)  # more than two wait timeouts of 1 s
        c.put(member_key(tok, "a"), "a=http://a:1")
        r = next(call)
        self.assertEqual(r.events[0].kv.key.decode(), member_key(tok, "a"))
        q.put(None)
        ch.close()


class H2HostileTest(Base):
    """Frames a client may send: PINGs are answered (never GOAWAY for
    grpc-go's keepalive), unknown SETTINGS ignored, and a bad frame ends the
    connection with GOAWAY carrying the error RFC 9113 names."""

    def raw(self):
        h = H2(self.host, self.port)
        h.start()
        return h

    def assert_serves(self, h, stream):
        h.get(stream, "/health")
        status, frames = h.answer(stream)
        self.assertEqual(status, b"\x88", frames)

    def test_pings_answered(self):
        h = self.raw()
        for i in range(50):
            opaque = struct.pack(">Q", 0x1122334455660000 + i)
            h.send(PING, 0, 0, opaque)
            frames, ack = h.until(lambda f: f[0] in (PING, GOAWAY))
            self.assertIsNotNone(ack, frames)
            self.assertEqual(ack[:2], (PING, ACK), frames)
            self.assertEqual(ack[3], opaque)
        self.assert_serves(h, 1)
        h.close()

    @need_etcd3
    def test_grpc_keepalive_pings(self):
        """A gRPC client pinging every second (grpc-go's is ~10 s) keeps its
        watch: no GOAWAY, the event arrives."""
        import queue
        tok = uuid.uuid4().hex
        self.client().put(size_key(tok), "3")
        ch = grpc.insecure_channel(self.endpoint, options=[
            ("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)])
        q = queue.Queue()
        call = etcdrpc.WatchStub(ch).Watch(iter(q.get, None), timeout=30 * SLOW)
        q.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=member_key(tok, "a").encode())))
        self.assertTrue(next(call).created)
        time.sleep(3.5)
        self.client().put(member_key(tok, "a"), "a=http://a:1")
        self.assertEqual(next(call).events[0].kv.key.decode(), member_key(tok, "a"))
        q.put(None)
        ch.close()
        self.assertNotIn("HTTP/2 error", self.disco.log())

    def test_unknown_settings_ignored(self):
        h = H2(self.host, self.port)
        # Unknown identifiers 0x10 and 0xfa5e among a known one.
        h.start(struct.pack(">HI", 0x10, 7) + struct.pack(">HI", 0x3, 100) +
                struct.pack(">HI", 0xFA5E, 0xFFFFFFFF))
        h.send(SETTINGS, 0, 0, struct.pack(">HI", 0x77, 1))
        frames, ack = h.until(lambda f: f[0] in (SETTINGS, GOAWAY))
        self.assertEqual(ack[:2], (SETTINGS, ACK), frames)
        self.assert_serves(h, 1)
        h.close()

    def test_concurrent_streams_bounded(self):
        """SETTINGS_MAX_CONCURRENT_STREAMS is 128; a client that opens a
        129th after acknowledging it is broken: GOAWAY(PROTOCOL_ERROR), as
        nghttp2 decides (RFC 9113 lets a stream error end the connection).
        One that stays within it is served."""
        def open_streams(h, n):
            for i in range(n):  # open: HEADERS without END_STREAM
                h.send(HEADERS, END_HEADERS, 1 + 2 * i, hpack_literal(
                    [(":method", "POST"), (":scheme", "http"), (":path", "/health"),
                     (":authority", self.endpoint)]))
        h = self.raw()
        open_streams(h, 128)
        h.send(DATA, END_STREAM, 255)  # the 128th ends: it is answered
        status, frames = h.answer(255)
        self.assertIsNotNone(status, frames)
        self.assertNotIn(GOAWAY, [f[0] for f in frames])
        h.close()
        self.expect_goaway(lambda h: open_streams(h, 129), PROTOCOL_ERROR)

    def test_rapid_reset(self):
        """Requests reset as soon as they are sent (CVE-2023-44487): bounded
        work, the server stays up and serves others."""
        h = self.raw()
        get = hpack_literal([(":method", "GET"), (":scheme", "http"), (":path", "/health"),
                             (":authority", self.endpoint)])
        frames = b""
        for i in range(5000):
            sid = 1 + 2 * i
            for t, fl, p in ((HEADERS, END_STREAM | END_HEADERS, get),
                             (RST_STREAM, 0, struct.pack(">I", 8))):
                frames += struct.pack(">I", len(p))[1:] + bytes([t, fl]) + struct.pack(
                    ">I", sid) + p
        try:
            h.sock.sendall(frames)
        except OSError:
            pass  # the server may end it on the way
        h.close()
        other = self.raw()
        self.assert_serves(other, 1)
        other.close()
        self.assertTrue(self.disco.alive())

    def test_header_list_bounded(self):
        """A request head past --max-header-bytes (16 KiB) resets its stream;
        the connection goes on."""
        h = self.raw()
        fields = [(":method", "GET"), (":scheme", "http"), (":path", "/health"),
                  (":authority", self.endpoint)] + [("x-pad-%03d" % i, "v" * 100)
                                                     for i in range(200)]
        block = hpack_literal(fields)  # ~23 KiB: HEADERS and CONTINUATIONs
        h.send(HEADERS, END_STREAM, 1, block[:8000])
        h.send(CONTINUATION, 0, 1, block[8000:16000])
        h.send(CONTINUATION, END_HEADERS, 1, block[16000:])
        frames, f = h.until(lambda f: f[2] == 1 or f[0] == GOAWAY)
        self.assertIsNotNone(f, frames)
        self.assertNotEqual(f[0], GOAWAY, frames)
        self.assertEqual(f[0], RST_STREAM, frames)
        self.assert_serves(h, 3)
        h.close()

    def test_flow_control_honoured(self):
        """With a 100-byte stream window the answer stops at 100 bytes of
        DATA until the client opens the window."""
        h = H2(self.host, self.port)
        h.start(struct.pack(">HI", 0x4, 100))  # SETTINGS_INITIAL_WINDOW_SIZE
        h.get(1, "/metrics")
        got = 0
        h.sock.settimeout(1.0)
        try:
            while True:
                f = h.read()
                self.assertIsNotNone(f)
                if f[0] == DATA and f[2] == 1:
                    got += len(f[3])
                    self.assertFalse(f[1] & END_STREAM, "/metrics fit in 100 bytes?")
        except socket.timeout:
            pass
        self.assertEqual(got, 100)
        h.sock.settimeout(10 * SLOW)
        h.send(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 20))
        h.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20))
        frames, last = h.until(lambda f: f[2] == 1 and f[1] & END_STREAM)
        self.assertIsNotNone(last, frames)
        self.assertGreater(got + sum(len(f[3]) for f in frames if f[0] == DATA), 100)
        h.close()

    def expect_goaway(self, send, code):
        h = self.raw()
        send(h)
        frames, goaway = h.until(lambda f: f[0] == GOAWAY)
        self.assertIsNotNone(goaway, "no GOAWAY before EOF: %r" % frames)
        self.assertEqual(int.from_bytes(goaway[3][4:8], "big"), code, goaway)
        # ... and then the connection ends.
        h.sock.settimeout(5 * SLOW)
        _, more = h.until(lambda f: False)
        self.assertIsNone(more)
        h.close()
        self.assertTrue(self.disco.alive())

    def test_bad_frames_end_the_connection(self):
        cases = [
            ("DATA on stream 0", lambda h: h.send(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
            ("a PING of 9 bytes", lambda h: h.send(PING, 0, 0, b"123456789"), FRAME_SIZE_ERROR),
            ("a zero window increment", lambda h: h.send(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"),
             PROTOCOL_ERROR),
            ("ENABLE_PUSH 2", lambda h: h.send(SETTINGS, 0, 0, struct.pack(">HI", 2, 2)),
             PROTOCOL_ERROR),
            ("a header index 0", lambda h: h.send(HEADERS, END_STREAM | END_HEADERS, 1, b"\x80"),
             COMPRESSION_ERROR),
            ("a frame larger than 16 KiB", lambda h: h.send(DATA, 0, 1, b"x" * 20000),
             FRAME_SIZE_ERROR),
            ("an even stream id", lambda h: h.get(2, "/health"), PROTOCOL_ERROR),
        ]
        for what, send, code in cases:
            with self.subTest(what):
                self.expect_goaway(send, code)


class MessageSizeTest(Base):
    """A message past the server's limit is refused as grpc-go refuses one:
    RESOURCE_EXHAUSTED "grpc: received message larger than max (N vs. M)",
    on a unary call and on a Watch stream alike."""

    @need_etcd3
    def test_unary_message_too_large(self):
        tok = uuid.uuid4().hex
        stub = etcdrpc.KVStub(grpc.insecure_channel(self.endpoint))
        big = b"v" * (100 * 1024)  # past --max-body-bytes (64 KiB)
        with self.assertRaises(grpc.RpcError) as e:
            stub.Put(etcdrpc.PutRequest(key=size_key(tok).encode(), value=big),
                     timeout=CALL_TIMEOUT_S)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        m = re.search(r"received message larger than max \((\d+) vs\. (\d+)\)",
                      e.exception.details())
        self.assertIsNotNone(m, e.exception.details())
        self.assertGreater(int(m.group(1)), len(big))  # the message's own length
        # The connection goes on.
        r = stub.Range(etcdrpc.RangeRequest(key=size_key(tok).encode()), timeout=CALL_TIMEOUT_S)
        self.assertEqual(len(r.kvs), 0)

    @need_etcd3
    def test_watch_message_too_large(self):
        import queue
        q = queue.Queue()
        call = etcdrpc.WatchStub(grpc.insecure_channel(self.endpoint)).Watch(
            iter(q.get, None), timeout=CALL_TIMEOUT_S)
        q.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=b"k" * (64 * 1024))))
        with self.assertRaises(grpc.RpcError) as e:
            next(call)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("received message larger than max", e.exception.details())
        q.put(None)


class SendSizeTest(Base):
    """disco sends no message past 4 MiB (gRPC's default receive limit): a
    Range or an event past it ends the call RESOURCE_EXHAUSTED "grpc: trying
    to send message larger than max", as grpc-go's send limit does."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-v3-")
        self.procs = []
        self.disco, self.base_url = harness.start_disco(
            self.workdir, ("--max-value-bytes", "6MiB", "--max-body-bytes", "8MiB"))
        self.procs.append(self.disco)
        self.host, self.port = hostport(self.base_url)
        self.endpoint = "%s:%d" % (self.host, self.port)

    @need_etcd3
    def test_answers_past_4_mib(self):
        import queue
        tok = uuid.uuid4().hex
        opts = [("grpc.max_receive_message_length", 64 << 20)]
        ch = grpc.insecure_channel(self.endpoint, options=opts)
        kv = etcdrpc.KVStub(ch)
        kv.Put(etcdrpc.PutRequest(key=size_key(tok).encode(), value=b"3"), timeout=CALL_TIMEOUT_S)
        m = members_prefix(tok)
        end = (m[:-1] + chr(ord(m[-1]) + 1)).encode()
        q = queue.Queue()
        call = etcdrpc.WatchStub(ch).Watch(iter(q.get, None), timeout=30 * SLOW)
        q.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=m.encode(), range_end=end)))
        self.assertTrue(next(call).created)
        for i in range(2):
            kv.Put(etcdrpc.PutRequest(key=member_key(tok, "m%d" % i).encode(),
                                      value=b"x" * (3 << 20)), timeout=CALL_TIMEOUT_S)
        self.assertEqual(len(next(call).events[0].kv.value), 3 << 20)  # 3 MiB: sent
        with self.assertRaises(grpc.RpcError) as e:  # 6 MiB in one Range: refused
            kv.Range(etcdrpc.RangeRequest(key=m.encode(), range_end=end), timeout=CALL_TIMEOUT_S)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("trying to send message larger than max", e.exception.details())
        # An event past the limit ends the Watch call.
        kv.Put(etcdrpc.PutRequest(key=member_key(tok, "m2").encode(), value=b"y" * (5 << 20)),
               timeout=CALL_TIMEOUT_S)
        events = []
        with self.assertRaises(grpc.RpcError) as e:
            for r in call:
                events.append(r)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("trying to send message larger than max", e.exception.details())
        self.assertLessEqual(len(events), 1)  # the second 3 MiB member at most
        q.put(None)
        ch.close()


class ResetDuringEventTest(Base):
    """Clients that reset their connections while an event is on its way to
    them: the write fails inside the notification that sends the event, and
    the connection closes at its own next event, not under the sender (a
    use-after-free under ASan or valgrind before)."""

    @need_etcd3
    def test_reset_while_an_event_is_sent(self):
        tok = uuid.uuid4().hex
        key = member_key(tok, "a")
        kv = etcdrpc.KVStub(grpc.insecure_channel(self.endpoint))
        kv.Put(etcdrpc.PutRequest(key=size_key(tok).encode(), value=b"3"), timeout=CALL_TIMEOUT_S)
        create = etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=key.encode())).SerializeToString()

        def watch_conn():
            h = H2(self.host, self.port)
            h.start()
            h.send(HEADERS, END_HEADERS, 1, hpack_literal(
                [(":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.Watch/Watch"),
                 (":authority", self.endpoint), ("content-type", "application/grpc"),
                 ("te", "trailers")]))
            h.send(DATA, 0, 1, b"\0" + struct.pack(">I", len(create)) + create)
            _, f = h.until(lambda f: f[0] == DATA and f[2] == 1)  # created
            self.assertIsNotNone(f)
            return h

        for rnd in range(6):
            hs = [watch_conn() for _ in range(40)]
            put = kv.Put.future(etcdrpc.PutRequest(key=key.encode(), value=b"v%d" % rnd),
                                timeout=CALL_TIMEOUT_S)
            for h in hs:  # RST, while the event is on its way
                h.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.close()
            put.result()
            self.assertTrue(self.disco.alive(), "round %d" % rnd)
        harness.wait_until(lambda: WatchStreamTest.parked_waits(self) == 0, 5 * SLOW,
                           what="no parked watches")


def raw_watch_open(host, port, key, range_end):
    """A socket with a Watch opened by hand: preface, SETTINGS, HEADERS and
    one gRPC message in a single write, for orderings no library allows."""
    s = socket.create_connection((host, port), timeout=10 * SLOW)
    headers = hpack_literal([
        (":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.Watch/Watch"),
        (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")])
    s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, headers) +
              frame(DATA, 0, 1, watch_create(key, range_end)))
    return s


class DeadPeerTest(Base):
    """An event reaches a v3 watch whose client reset its connection while
    disco was not looking: the failed write must not free the watch stream
    under the code that is delivering the event (it crashed disco). The
    in-memory store answers at once, inside the write's own notification."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-v3-")
        self.procs = []
        port = harness.free_port()
        self.base_url = "http://%s:%d" % (harness.LOOPBACK, port)
        self.disco = harness.Proc(
            harness.disco_wrapper() + [harness.disco_bin(), "serve", "--addr",
                                       "%s:%d" % (harness.LOOPBACK, port), "--data-dir", ""],
            os.path.join(self.workdir, "disco.log"), name="disco:%d" % port)
        harness.wait_until(lambda: self.disco.log().count("serving on") > 0, 10 * SLOW,
                           what="disco to listen")
        self.procs.append(self.disco)
        self.host, self.port = hostport(self.base_url)
        self.endpoint = "%s:%d" % (self.host, self.port)

    @unittest.skipIf(harness.disco_wrapper(), "SIGSTOP timing is meaningless under a wrapper")
    def test_event_to_a_reset_watch_connection(self):
        tok = uuid.uuid4().hex
        status, _, body = harness.http("PUT", "%s/v2/keys%s" % (self.base_url, size_key(tok)),
                                       body={"value": "3"})
        self.assertEqual(status, 201, body)
        for round_ in range(5):
            key = "%s/%s/" % (PREFIX, tok)  # the whole token: a v2 member matches
            w = raw_watch_open(self.host, self.port, key.encode(), (key[:-1] + "0").encode())
            time.sleep(0.3)  # created, parked
            putter = socket.create_connection((self.host, self.port), timeout=10 * SLOW)
            time.sleep(0.2)  # accepted: its bytes are read before the reset is seen
            os.kill(self.disco.pid, signal.SIGSTOP)
            try:
                body = "value=n%d%%3Dhttp%%3A%%2F%%2F10.0.0.1%%3A2380" % round_
                putter.sendall(("PUT /v2/keys%s/m%d HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                "application/x-www-form-urlencoded\r\nContent-Length: %d\r\n"
                                "\r\n%s" % (PREFIX + "/" + tok, round_, len(body), body)
                                ).encode())
                time.sleep(0.1)
                # the watcher goes with a reset, unseen until disco runs again
                w.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.close()
                time.sleep(0.1)
            finally:
                os.kill(self.disco.pid, signal.SIGCONT)
            answer = putter.recv(4096)
            putter.close()
            self.assertTrue(answer.startswith(b"HTTP/1.1 201 "), answer[:200])
            self.assertTrue(self.disco.alive(), self.disco.log()[-3000:])


class IdleTest(unittest.TestCase):
    """An idle HTTP/2 connection ends with GOAWAY(NO_ERROR), and a gRPC
    client carries on over a new one."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-v3-")
        self.disco, self.base_url = harness.start_disco(self.workdir,
                                                        ("--idle-timeout", "1s"))
        self.host, self.port = hostport(self.base_url)

    def tearDown(self):
        self.assertEqual(self.disco.stop(), 0, self.disco.log()[-3000:])
        shutil.rmtree(self.workdir, ignore_errors=True)

    def test_goaway_when_idle(self):
        import socket
        s = socket.create_connection((self.host, self.port), timeout=5)
        try:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            data, deadline = b"", time.monotonic() + 5
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        frames, off = [], 0
        while off + 9 <= len(data):
            n = int.from_bytes(data[off:off + 3], "big")
            frames.append((data[off + 3], data[off + 9:off + 9 + n]))
            off += 9 + n
        self.assertEqual(off, len(data))
        self.assertEqual(frames[0][0], 4)  # SETTINGS first
        goaway = [p for t, p in frames if t == 7]
        self.assertEqual(len(goaway), 1, frames)
        self.assertEqual(int.from_bytes(goaway[0][4:8], "big"), 0)  # NO_ERROR

    @need_etcd3
    def test_client_reconnects(self):
        c = etcd3.client(self.host, self.port, timeout=CALL_TIMEOUT_S)
        tok = uuid.uuid4().hex
        c.put(size_key(tok), "3")
        time.sleep(2.5)
        self.assertEqual(c.get(size_key(tok))[0], b"3")
        c.close()


class SniffTimeoutTest(unittest.TestCase):
    """A client that sends part of the HTTP/2 preface and stalls gets the
    header timeout (a 408), not the much longer idle one."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-v3-")
        self.disco, self.base_url = harness.start_disco(self.workdir,
                                                        ("--header-timeout", "1s"))

    def tearDown(self):
        self.assertEqual(self.disco.stop(), 0, self.disco.log()[-3000:])
        shutil.rmtree(self.workdir, ignore_errors=True)

    def test_partial_preface_times_out_as_a_head(self):
        conn = harness.RawConn(self.base_url)
        try:
            conn.send(b"PRI * HT")
            data = conn.read_to_eof(timeout=5)
        finally:
            conn.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:80])


class StopTest(Base):
    """On SIGTERM an open Watch ends with UNAVAILABLE (clientv3 reopens it
    elsewhere) and the connection with GOAWAY; disco does not wait out its
    grace period for it."""

    @need_etcd3
    def test_watch_ends_unavailable_on_stop(self):
        import queue
        tok = uuid.uuid4().hex
        self.client().put(size_key(tok), "3")
        ch = grpc.insecure_channel(self.endpoint)
        q = queue.Queue()
        q.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=member_key(tok, "a1").encode())))
        call = etcdrpc.WatchStub(ch).Watch(iter(q.get, None), timeout=30 * SLOW)
        self.assertTrue(next(call).created)
        t0 = time.monotonic()
        self.procs.remove(self.disco)
        self.assertEqual(self.disco.stop(), 0, self.disco.log()[-3000:])
        if SLOW == 1:
            self.assertLess(time.monotonic() - t0, 4.0)  # the grace period is 5 s
        with self.assertRaises(grpc.RpcError) as cm:
            next(call)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("stopping", cm.exception.details())
        q.put(None)
        ch.close()


# ---- a client that follows etcd's v3discovery sequence exactly -------------

class ErrFullCluster(Exception):
    pass


def v3discovery_join(host, port, token, member_id, value, registered):
    """server/etcdserver/api/v3discovery/discovery.go joinCluster, step by
    step (V3-DISCOVERY.md section 1). Returns the initial-cluster string."""
    c = etcd3.client(host, port, timeout=CALL_TIMEOUT_S)
    try:
        def cluster_size():
            v, _ = c.get(size_key(token))
            if v is None:
                raise RuntimeError("ErrSizeNotFound")
            return int(v)

        def cluster_members():
            r = c.get_prefix_response(members_prefix(token))
            ms = sorted(((kv.create_revision, kv.key.decode(), kv.value.decode().strip())
                         for kv in r.kvs), key=lambda m: m[0])
            return ms, r.header.revision

        def check(size, ms):
            for i, (_, key, _) in enumerate(ms):
                if key == member_key(token, member_id):
                    return
                if i >= size - 1:
                    raise ErrFullCluster()

        size = cluster_size()
        ms, rev = cluster_members()
        check(size, ms)
        c.put(member_key(token, member_id), value)
        registered.append(member_id)
        size = cluster_size()
        ms, rev = cluster_members()
        check(size, ms)
        seen = {m[1]: m for m in ms}
        while len(seen) < size:
            # waitPeers: one create{key, range_end, start_revision=rev+1}.
            pfx = members_prefix(token)
            create = etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
                key=pfx.encode(), range_end=(pfx[:-1] + chr(ord(pfx[-1]) + 1)).encode(),
                start_revision=rev + 1))
            ch = grpc.insecure_channel("%s:%d" % (host, port))
            stream = etcdrpc.WatchStub(ch).Watch(iter([create]), timeout=WATCH_TIMEOUT_S)
            try:
                for resp in stream:
                    for ev in resp.events:
                        k, v = ev.kv.key.decode(), ev.kv.value.decode()
                        if k not in seen and "=" in v:
                            seen[k] = (ev.kv.create_revision, k, v.strip())
                    if len(seen) >= size:
                        break
            finally:
                stream.cancel()
                ch.close()
        ordered = sorted(seen.values(), key=lambda m: m[0])[:size]
        return ",".join(m[2] for m in ordered)
    finally:
        c.close()


class V3DiscoveryTest(Base):
    @need_etcd3
    def test_members_and_late_racers(self):
        n, m = 3, 3
        tok = uuid.uuid4().hex
        c = self.client()
        c.put(size_key(tok), str(n))
        results, registered = {}, []

        def run(i):
            mid = "%x" % (0xabc000 + i)
            try:
                results[mid] = ("ok", v3discovery_join(
                    self.host, self.port, tok, mid,
                    "infra%d=http://10.0.0.%d:2380" % (i, i + 1), registered))
            except ErrFullCluster:
                results[mid] = ("full", None)
            except Exception as e:  # a test failure, shown below
                results[mid] = ("error", repr(e))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n + m)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads), "a member did not finish")
        errors = {k: v for k, v in results.items() if v[0] == "error"}
        self.assertEqual(errors, {})
        ok = {k: v[1] for k, v in results.items() if v[0] == "ok"}
        self.assertEqual(len(ok), n, results)
        self.assertEqual(len(set(ok.values())), 1, ok)
        # Exactly the first n by create_revision agree.
        r = c.get_prefix_response(members_prefix(tok))
        first = sorted(r.kvs, key=lambda kv: kv.create_revision)[:n]
        self.assertEqual({kv.key.decode().rsplit("/", 1)[1] for kv in first}, set(ok))
        # A late member finds the cluster full before it Puts.
        late = []
        with self.assertRaises(ErrFullCluster):
            v3discovery_join(self.host, self.port, tok, "fff", "late=http://10.0.0.99:2380",
                             late)
        self.assertEqual(late, [])
        self.assertIsNone(c.get(member_key(tok, "fff"))[0])


class MixedBootstrapTest(Base):
    """A v2 member set (real etcd 3.4 members, --discovery) and a v3 member
    set (the v3discovery client) bootstrap from two tokens of one disco at
    the same time."""

    @need_etcd3
    def test_v2_and_v3_tokens_at_once(self):
        import json
        status, _, body = harness.http("GET", self.base_url + "/new?size=3")
        self.assertEqual(status, 200, body)
        v2url = body.decode().strip()
        v3tok = uuid.uuid4().hex
        c = self.client()
        c.put(size_key(v3tok), "3")
        members = []
        for i in range(3):
            proc, _, client_url = harness.start_etcd_member(self.workdir, "v2m%d" % i, v2url)
            self.procs.append(proc)
            members.append(client_url)
        results, registered = {}, []

        def run(i):
            mid = "%x" % (0xdef000 + i)
            try:
                results[mid] = v3discovery_join(self.host, self.port, v3tok, mid,
                                                "v3m%d=http://10.0.1.%d:2380" % (i, i + 1),
                                                registered)
            except Exception as e:
                results[mid] = repr(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()

        def v2_cluster_formed():
            rc, out, _ = harness.etcdctl(members[0], "member", "list", "-w", "json", timeout=6)
            if rc != 0:
                return False
            ms = json.loads(out).get("members", [])
            return len(ms) == 3 and all(m.get("name") for m in ms)

        harness.wait_until(v2_cluster_formed, 60 * SLOW, interval=0.5,
                           what="the v2 members' cluster")
        for t in threads:
            t.join(30)
        self.assertEqual(len(set(results.values())), 1, results)
        self.assertEqual(len(results), 3)
        self.assertEqual(sorted(next(iter(results.values())).split(",")),
                         ["v3m%d=http://10.0.1.%d:2380" % (i, i + 1) for i in range(3)])


# ---- differential: the same calls against a real etcd 3.4 and disco --------

def run_sequence(host, port, token):
    """Range/Put/Watch/Authenticate through raw stubs; revisions relative to
    the first Put. Returns a list of comparable observations."""
    ch = grpc.insecure_channel("%s:%d" % (host, port))
    kv, auth, watch = etcdrpc.KVStub(ch), etcdrpc.AuthStub(ch), etcdrpc.WatchStub(ch)
    obs = []

    def call(name, fn, req):
        try:
            return fn(req, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            obs.append((name, "error", e.code().name, e.details()))
            return None

    def kvs(r, base):
        return [(k.key.decode(), k.value.decode(), k.create_revision - base,
                 k.mod_revision - base, k.version) for k in r.kvs]

    r = call("put size", kv.Put, etcdrpc.PutRequest(key=size_key(token).encode(), value=b"3"))
    base = r.header.revision
    m = members_prefix(token)
    end = m[:-1] + chr(ord(m[-1]) + 1)
    for mid, val in (("a1", "n1=http://a:1"), ("b2", "n2=http://b:2"), ("c3", "n3=http://c:3")):
        r = call("put " + mid, kv.Put,
                 etcdrpc.PutRequest(key=member_key(token, mid).encode(), value=val.encode()))
        obs.append(("put " + mid, r.header.revision - base))
    r = call("re-put a1", kv.Put, etcdrpc.PutRequest(key=member_key(token, "a1").encode(),
                                                    value=b"n1=http://a:11", prev_kv=True))
    obs.append(("re-put a1", r.header.revision - base, kvs(type("x", (), {"kvs": [r.prev_kv]}),
                                                           base)))
    r = call("range size", kv.Range, etcdrpc.RangeRequest(key=size_key(token).encode()))
    obs.append(("range size", kvs(r, base), r.count, r.more, r.header.revision - base))
    r = call("range members", kv.Range,
             etcdrpc.RangeRequest(key=m.encode(), range_end=end.encode()))
    obs.append(("range members", kvs(r, base), r.count, r.more, r.header.revision - base))
    r = call("range limit", kv.Range,
             etcdrpc.RangeRequest(key=m.encode(), range_end=end.encode(), limit=1,
                                  sort_order=etcdrpc.RangeRequest.DESCEND,
                                  sort_target=etcdrpc.RangeRequest.CREATE))
    obs.append(("range limit", kvs(r, base), r.count, r.more))
    r = call("range count", kv.Range,
             etcdrpc.RangeRequest(key=m.encode(), range_end=end.encode(), count_only=True))
    obs.append(("range count", kvs(r, base), r.count))
    r = call("range missing", kv.Range,
             etcdrpc.RangeRequest(key=member_key(token, "zz").encode()))
    obs.append(("range missing", kvs(r, base), r.count))
    call("put lease", kv.Put, etcdrpc.PutRequest(key=member_key(token, "d4").encode(),
                                                 value=b"x=http://d:4", lease=12345))
    call("put ignore_value missing", kv.Put,
         etcdrpc.PutRequest(key=member_key(token, "d4").encode(), ignore_value=True))
    call("range empty key", kv.Range, etcdrpc.RangeRequest(key=b""))
    call("authenticate", auth.Authenticate, etcdrpc.AuthenticateRequest(name="u", password="p"))

    # Watch the members from the first member's revision: history replay.
    create = etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
        key=m.encode(), range_end=end.encode(), start_revision=base + 1))
    reqs = iter([create])
    got = []
    stream = watch.Watch(reqs, timeout=WATCH_TIMEOUT_S)
    try:
        for resp in stream:
            if resp.created:
                got.append(("created", resp.watch_id))
            for ev in resp.events:
                got.append((int(ev.type), ev.kv.key.decode(), ev.kv.value.decode(),
                            ev.kv.create_revision - base, ev.kv.mod_revision - base))
            if len(got) >= 5:
                break
    finally:
        stream.cancel()
    obs.append(("watch", got))
    ch.close()
    return obs


class DifferentialTest(Base):
    @need_etcd3
    def test_same_answers_as_etcd(self):
        etcd, client_url = harness.start_etcd_v2(self.workdir)
        self.procs.append(etcd)
        ehost, eport = hostport(client_url)
        tok = uuid.uuid4().hex
        want = run_sequence(ehost, eport, tok)
        got = run_sequence(self.host, self.port, tok)
        self.assertGreater(len(want), 10)
        self.assertEqual(got, want)


if __name__ == "__main__":
    unittest.main()
