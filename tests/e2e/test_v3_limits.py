#!/usr/bin/env python3
"""HTTP/2 and v3 limits a hostile or stuck client meets, spoken frame by
frame (no packages beyond the standard library):

- output under a shut flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0)
  is bounded: a Watch stream stalls and catches up from the history when
  the window opens, disco's memory stays bounded, other clients are served;
- slowloris over HTTP/2: a header block or a unary body that never ends is
  cut at --header-timeout / --body-timeout, and a connection that only
  pings is bounded by --idle-timeout.

Every disco runs on a loopback port picked at run time and is stopped by PID.
"""
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from h2raw import (  # noqa: E402
    CONTINUATION, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, GOAWAY, H2, HEADERS, NO_ERROR,
    PING, RST_STREAM, SETTINGS, SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_UPDATE, field, grpc_message,
    grpc_messages, hpack_literal, pb_fields, watch_create)

SLOW = 10 if os.environ.get("DISCO_WRAPPER") else 1
PREFIX = "/_etcd/registry"


def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


class Base(unittest.TestCase):
    """disco on the in-memory store (each write answers at once), so that
    thousands of events take a second."""

    EXTRA = ()

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-v3limits-")
        port = harness.free_port()
        self.host, self.port = harness.LOOPBACK, port
        self.base_url = "http://%s:%d" % (self.host, port)
        self.disco = harness.Proc(
            harness.disco_wrapper() + [harness.disco_bin(), "serve", "--addr",
                                       "%s:%d" % (self.host, port), "--data-dir", ""] +
            list(self.EXTRA),
            os.path.join(self.workdir, "disco.log"), name="disco:%d" % port)
        harness.wait_until(lambda: "serving on" in self.disco.log(), 10 * SLOW,
                           what="disco to listen")

    def tearDown(self):
        rc = self.disco.stop()
        self.assertEqual(rc, 0, "disco did not stop cleanly:\n" + self.disco.log()[-3000:])
        if sys.exc_info()[0] is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def new_token(self):
        tok = uuid.uuid4().hex
        status, _, body = harness.http(
            "PUT", "%s/v2/keys%s/%s/_config/size" % (self.base_url, PREFIX, tok),
            body={"value": "3"})
        self.assertEqual(status, 201, body)
        return tok

    def put_many(self, tok, n, value_of):
        """n v2 PUTs of one member key on one keep-alive connection."""
        c = harness.RawConn(self.base_url, timeout=10 * SLOW)
        path = "/v2/keys%s/%s/m0" % (PREFIX, tok)
        for i in range(n):
            body = ("value=" + value_of(i)).encode()
            c.request("PUT", path, body)
            a = c.read_answer()
            self.assertIn(a.status, (200, 201), a)
        c.close()

    def assert_health_over_h2(self):
        h = H2(self.host, self.port)
        h.start()
        h.get(1, "/health")
        status, frames = h.answer(1)
        self.assertEqual(status, b"\x88", frames)  # :status 200
        h.close()


class ZeroWindowTest(Base):
    """A client that opens Watch streams with a zero flow-control window and
    never opens it: disco stalls those streams (their watches leave the
    registry; the events wait in the token's history) instead of queueing
    every event for every watch."""

    def test_memory_bounded_under_a_shut_window(self):
        tok = self.new_token()
        key = ("%s/%s/" % (PREFIX, tok)).encode()
        end = key[:-1] + b"0"
        h = H2(self.host, self.port)
        h.start(struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0))
        # 4 streams of 100 watches each on the whole token: every event is
        # 400 messages of ~4 KiB.
        for i in range(4):
            h.open_watch(1 + 2 * i, [watch_create(key, end)] * 100)
        time.sleep(0.5 * SLOW)  # created, parked
        before = vm_rss_kib(self.disco.pid)
        t0 = time.monotonic()
        n = 300  # unbounded, that is 300 * 400 * 4 KiB = 470 MiB queued
        self.put_many(tok, n, lambda i: "%04d" % i + "v" * 4000)
        self.assertLess(time.monotonic() - t0, 120 * SLOW)
        grew = vm_rss_kib(self.disco.pid) - before
        self.assertLess(grew, 64 * 1024, "disco's RSS grew by %d KiB" % grew)
        # Others are served meanwhile, over HTTP/1.1 and HTTP/2.
        status, _, body = harness.http("GET", self.base_url + "/health")
        self.assertEqual(status, 200, body)
        self.assert_health_over_h2()
        self.assertTrue(self.disco.alive())
        h.close()

    def test_stalled_watch_catches_up_in_order(self):
        """The window shut, then opened: the watch delivers every event once,
        in order, from the history."""
        tok = self.new_token()
        key = ("%s/%s/" % (PREFIX, tok)).encode()
        h = H2(self.host, self.port)
        h.start(struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0))
        h.open_watch(1, [watch_create(key, key[:-1] + b"0")])
        time.sleep(0.3 * SLOW)
        n = 100  # 400 KiB of events: several times the stream's bound
        self.put_many(tok, n, lambda i: "<%04d>" % i + "v" * 4000)
        h.send(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 30))
        h.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30))
        got = b""
        deadline = time.monotonic() + 30 * SLOW
        while b"<%04d>" % (n - 1) not in got and time.monotonic() < deadline:
            f = h.read()
            self.assertIsNotNone(f, "EOF: %r" % got[-200:])
            self.assertNotIn(f[0], (RST_STREAM, GOAWAY), f)
            if f[0] == DATA and f[2] == 1:
                got += f[3]
                # keep the connection's window open as a client would
                h.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", max(1, len(f[3]))))
        seen = [int(got[i + 1:i + 5]) for i in range(len(got)) if got[i:i + 1] == b"<" and
                got[i + 5:i + 6] == b">" and got[i + 1:i + 5].isdigit()]
        self.assertEqual(seen, list(range(n)))
        h.close()

    def test_window_opened_bit_by_bit(self):
        """Many stalls and drains: the client gives 16 KiB of window at a time
        while events keep coming; every event arrives once, in order, and
        the client's reset of the stream at the end is taken cleanly."""
        tok = self.new_token()
        key = ("%s/%s/" % (PREFIX, tok)).encode()
        h = H2(self.host, self.port)
        h.start(struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0))
        h.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30))
        h.open_watch(1, [watch_create(key, key[:-1] + b"0")] * 3)  # ids 0, 1, 2
        time.sleep(0.3 * SLOW)
        n = 60
        self.put_many(tok, n // 2, lambda i: "<%04d>" % i + "v" * 3000)
        got = b""
        last = b"<%04d>" % (n - 1)
        deadline = time.monotonic() + 60 * SLOW
        h.sock.settimeout(0.1)
        more = n // 2
        def whole():  # the last event is whole in all three watches' messages
            return sum(m.count(last) for m in grpc_messages(got)[0]) == 3

        while not whole() and time.monotonic() < deadline:
            h.send(WINDOW_UPDATE, 0, 1, struct.pack(">I", 16384))
            if more < n:  # events keep coming while the stream catches up
                self.put_many(tok, 3, lambda i, base=more: "<%04d>" % (base + i) + "v" * 3000)
                more += 3
            try:
                while True:
                    f = h.read()
                    self.assertIsNotNone(f, "EOF")
                    self.assertNotIn(f[0], (RST_STREAM, GOAWAY), f)
                    if f[0] == DATA and f[2] == 1:
                        got += f[3]
            except socket.timeout:
                pass
        # the three watches interleave; each sees every event once, in order
        msgs, rest = grpc_messages(got)
        self.assertEqual(rest, b"")
        per = {0: [], 1: [], 2: []}
        for m in msgs:
            r = pb_fields(m)
            for e in r.get(11, []):
                value = pb_fields(pb_fields(e)[2][0])[5][0]
                per[r.get(2, [0])[0]].append(int(value[1:5]))
        for wid in per:
            self.assertEqual(per[wid], list(range(n)), wid)
        h.send(RST_STREAM, 0, 1, struct.pack(">I", 8))  # CANCEL
        h.sock.settimeout(10 * SLOW)
        h.close()
        self.assert_health_over_h2()
        self.assertTrue(self.disco.alive())

    def test_stalled_stream_that_keeps_asking_is_reset(self):
        """A stalled Watch stream still answers what its client asks, up to
        64 KiB; a client that asks on and on without reading gets its stream
        reset (ENHANCE_YOUR_CALM) and its connection goes on."""
        tok = self.new_token()
        key = ("%s/%s/" % (PREFIX, tok)).encode()
        h = H2(self.host, self.port)
        h.start(struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0))
        h.open_watch(1, [watch_create(key, key[:-1] + b"0")])
        time.sleep(0.3 * SLOW)
        self.put_many(tok, 40, lambda i: "v" * 4000)  # stalls the stream
        progress = grpc_message(field(3, b""))  # WatchRequest{progress_request{}}
        for _ in range(10):
            h.send(DATA, 0, 1, progress * 500)
        frames, rst = h.until(lambda f: f[0] in (RST_STREAM, GOAWAY))
        self.assertIsNotNone(rst, frames)
        self.assertEqual(rst[:3], (RST_STREAM, 0, 1), rst)
        self.assertEqual(int.from_bytes(rst[3], "big"), ENHANCE_YOUR_CALM)
        h.send(SETTINGS, 0, 0, struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 65535))
        h.get(3, "/health")
        status, frames = h.answer(3)
        self.assertEqual(status, b"\x88", frames)
        h.close()


class UnreadAnswersTest(Base):
    EXTRA = ("--max-value-bytes", "1MiB", "--max-body-bytes", "2MiB")

    def test_unread_unary_answers_end_the_connection(self):
        """Unary answers left unread past 16 MiB on one connection: GOAWAY
        (ENHANCE_YOUR_CALM), and the connection ends; others are served."""
        tok = self.new_token()
        for m in range(3):
            status, _, body = harness.http(
                "PUT", "%s/v2/keys%s/%s/m%d" % (self.base_url, PREFIX, tok, m),
                body={"value": "v" * 1000000})
            self.assertEqual(status, 201, body)
        key = ("%s/%s/" % (PREFIX, tok)).encode()
        rng = grpc_message(field(1, key) + field(2, key[:-1] + b"0"))  # ~3 MB answers
        h = H2(self.host, self.port)
        h.start(struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0))
        for i in range(20):
            sid = 1 + 2 * i
            h.send(HEADERS, END_HEADERS, sid, h.grpc_head("/etcdserverpb.KV/Range"))
            try:
                h.send(DATA, END_STREAM, sid, rng)
            except OSError:
                break  # ended on the way
        frames, goaway = h.until(lambda f: f[0] == GOAWAY)
        self.assertIsNotNone(goaway, frames[-5:])
        self.assertEqual(int.from_bytes(goaway[3][4:8], "big"), ENHANCE_YOUR_CALM)
        _, more = h.until(lambda f: False)
        self.assertIsNone(more)  # then EOF
        h.close()
        self.assert_health_over_h2()


class SharedEventTest(Base):
    """One event goes to many watches of one stream (each its own watch id,
    some with prev_kv): each gets a whole WatchResponse with its own id, the
    event's kv, and prev_kv only where asked."""

    def test_one_event_many_watches(self):
        tok = self.new_token()
        key = ("%s/%s/" % (PREFIX, tok)).encode()
        end = key[:-1] + b"0"
        self.put_many(tok, 1, lambda i: "first")
        creates = []
        for i in range(10):
            # WatchCreateRequest{key, range_end, prev_kv (field 6) on odd ids}
            cr = field(1, key) + field(2, end) + (b"\x30\x01" if i % 2 else b"")
            creates.append(grpc_message(field(1, cr)))
        h = H2(self.host, self.port)
        h.start()
        h.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 24))
        h.open_watch(1, creates)
        body, created = b"", set()
        while len(created) < 10:
            f = h.read()
            self.assertIsNotNone(f)
            if f[0] == DATA and f[2] == 1:
                msgs, body = grpc_messages(body + f[3])
                for m in msgs:
                    r = pb_fields(m)
                    self.assertEqual(r.get(3), [1], r)  # created
                    created.add(r.get(2, [0])[0])
        self.assertEqual(created, set(range(10)))
        self.put_many(tok, 1, lambda i: "second")
        got = {}
        while len(got) < 10:
            f = h.read()
            self.assertIsNotNone(f)
            if f[0] == DATA and f[2] == 1:
                msgs, body = grpc_messages(body + f[3])
                for m in msgs:
                    r = pb_fields(m)
                    got[r.get(2, [0])[0]] = r
        for wid, r in got.items():
            hdr = pb_fields(r[1][0])
            (ev,) = [pb_fields(e) for e in r[11]]
            kv = pb_fields(ev[2][0])
            self.assertEqual(kv[1], [("%s/%s/m0" % (PREFIX, tok)).encode()])
            self.assertEqual(kv[5], [b"second"])
            self.assertEqual(kv[3], hdr[3])  # mod_revision == header.revision
            if wid % 2:
                self.assertEqual(pb_fields(ev[3][0])[5], [b"first"], wid)
            else:
                self.assertNotIn(3, ev, wid)
        h.close()


class SlowlorisTest(Base):
    """HTTP/2 streams that never finish arriving are cut as HTTP/1.1
    requests are: a header block at --header-timeout (the connection: no
    other frame may come until the block ends), a request body at
    --body-timeout (that stream: the answer HTTP/1.1 gives, 408 or for gRPC
    UNAVAILABLE), and a connection that only pings at --idle-timeout."""

    EXTRA = ("--header-timeout", "1s", "--body-timeout", "1s", "--idle-timeout", "2s")

    def raw(self):
        h = H2(self.host, self.port, timeout=10 * SLOW)
        h.start()
        return h

    def test_header_block_never_ending(self):
        h = self.raw()
        block = hpack_literal([(":method", "GET"), (":scheme", "http"), (":path", "/health"),
                               (":authority", h.authority)])
        t0 = time.monotonic()
        h.send(HEADERS, 0, 1, block[:10])  # no END_HEADERS
        for _ in range(4):  # a CONTINUATION now and then, never the last
            time.sleep(0.3)
            h.send(CONTINUATION, 0, 1, b"")
        frames, goaway = h.until(lambda f: f[0] == GOAWAY)
        self.assertIsNotNone(goaway, frames)
        self.assertLess(time.monotonic() - t0, 8 * SLOW)
        _, more = h.until(lambda f: False)
        self.assertIsNone(more)  # then EOF
        h.close()
        self.assertTrue(self.disco.alive())

    def test_unary_body_never_ending(self):
        h = self.raw()
        t0 = time.monotonic()
        h.send(HEADERS, END_HEADERS, 1, h.grpc_head("/etcdserverpb.KV/Range"))
        h.send(DATA, 0, 1, b"\x00\x00\x00")  # part of a message, no END_STREAM
        for _ in range(4):  # empty DATA now and then, never the end
            time.sleep(0.3)
            h.send(DATA, 0, 1, b"")
            h.send(PING, 0, 0, b"12345678")
        frames, last = h.until(lambda f: f[2] == 1 and (
            f[0] == RST_STREAM or (f[0] == HEADERS and f[1] & END_STREAM)))
        self.assertIsNotNone(last, frames)
        self.assertLess(time.monotonic() - t0, 8 * SLOW)
        self.assertEqual(last[0], HEADERS, last)  # a trailers-only answer
        # grpc-status 14 (UNAVAILABLE: a client retries); nghttp2 Huffman-codes
        # the names, the short value stays a literal
        self.assertIn(b"\x0214", last[3])
        # the connection goes on
        h.get(3, "/health")
        status, frames = h.answer(3)
        self.assertEqual(status, b"\x88", frames)
        h.close()

    def test_plain_body_never_ending(self):
        h = self.raw()
        h.send(HEADERS, END_HEADERS, 1, hpack_literal(
            [(":method", "PUT"), (":scheme", "http"), (":path", "/v2/keys/x"),
             (":authority", h.authority),
             ("content-type", "application/x-www-form-urlencoded")]))
        h.send(DATA, 0, 1, b"value=")
        status, frames = h.answer(1)
        self.assertIsNotNone(status, frames)
        self.assertIn(b"408", b"".join(f[3] for f in frames if f[0] == HEADERS) + status)
        h.close()

    def test_pings_only_end_at_the_idle_timeout(self):
        h = self.raw()
        t0 = time.monotonic()
        h.sock.settimeout(0.3)
        goaway = None
        while goaway is None and time.monotonic() - t0 < 10 * SLOW:
            try:
                h.send(PING, 0, 0, b"12345678")
                h.send(SETTINGS, 0, 0, b"")
                h.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))
            except OSError:
                break
            try:
                while True:
                    f = h.read()
                    if f is None or f[0] == GOAWAY:
                        goaway = f
                        break
            except socket.timeout:
                pass
        self.assertIsNotNone(goaway, "no GOAWAY within %.1f s" % (time.monotonic() - t0))
        self.assertEqual(int.from_bytes(goaway[3][4:8], "big"), NO_ERROR)
        self.assertLess(time.monotonic() - t0, 8 * SLOW)
        h.close()

if __name__ == "__main__":
    unittest.main()
