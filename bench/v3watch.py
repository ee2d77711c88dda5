#!/usr/bin/env python3
"""Memory of parked v3 watches: disco against a real etcd 3.4, same run.

Each round starts a fresh disco (LMDB store on disk) and a fresh etcd 3.4
on loopback ports picked at run time, and on each in turn:
  1. opens N HTTP/2 (h2c) connections, each with one Watch call holding one
     watch on a token's members prefix (what a booting v3 member holds),
     and waits until every watch is created;
  2. creates W-1 more watches on each of those streams, and waits again.
Server memory is VmRSS from /proc/PID/status before, after 1 and after 2:
  per connection holding one watch = (after 1 - before) / N
  per additional watch on a stream = (after 2 - after 1) / (N * (W-1))
The client is this script, raw HTTP/2 frames over plain sockets (literal
HPACK headers, hand-encoded protobuf): nothing in it depends on a gRPC
library's buffering. Medians of the rounds are printed as RESULTS.md rows.

Usage: bench/v3watch.py [--conns N] [--watches W] [--rounds R]
Every socket goes to 127.0.0.1; every process is stopped by PID.
"""

import argparse
import os
import resource
import select
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import harness  # noqa: E402
from h2raw import (ACK, DATA, END_HEADERS, HEADERS, PING, PREFACE, SETTINGS,  # noqa: E402
                   WINDOW_UPDATE, frame, hpack_literal, watch_create)

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Conn:
    """One h2c connection with one Watch stream (id 1); counts the
    `created` answers it reads (WatchResponse field 3 = true)."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setblocking(False)
        self.buf = b""
        self.created = 0
        self.data = b""
        self.authority = "%s:%d" % (host, port)

    def open(self, create):
        head = hpack_literal([(":method", "POST"), (":scheme", "http"),
                              (":path", "/etcdserverpb.Watch/Watch"),
                              (":authority", self.authority),
                              ("content-type", "application/grpc"), ("te", "trailers")])
        self.send(PREFACE + frame(SETTINGS, 0, 0) +
                  frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 24)) +
                  frame(HEADERS, END_HEADERS, 1, head) + frame(DATA, 0, 1, create))

    def send(self, data):
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)

    def on_readable(self):
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not chunk:
            raise AssertionError("the server closed a watch connection")
        self.buf += chunk
        reply = b""
        while len(self.buf) >= 9 and len(self.buf) >= 9 + int.from_bytes(self.buf[:3], "big"):
            n = int.from_bytes(self.buf[:3], "big")
            ftype, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big")
            payload = self.buf[9:9 + n]
            self.buf = self.buf[9 + n:]
            if ftype == SETTINGS and not flags & ACK:
                reply += frame(SETTINGS, ACK, 0)
            elif ftype == PING and not flags & ACK:
                reply += frame(PING, ACK, 0, payload)
            elif ftype == DATA and sid == 1:
                self.data += payload
                if payload:  # give the window back, as a client reading does
                    reply += frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", len(payload)))
                self.count_messages()
        if reply:
            self.send(reply)

    def count_messages(self):
        while len(self.data) >= 5:
            n = int.from_bytes(self.data[1:5], "big")
            if len(self.data) < 5 + n:
                return
            msg = self.data[5:5 + n]
            self.data = self.data[5 + n:]
            # created is field 3, varint 1: bytes 0x18 0x01 after the header
            # (field 1) and the watch id (field 2); enough for our own watches.
            if b"\x18\x01" in msg[-4:]:
                self.created += 1


def pump(conns, want, timeout_s):
    """Reads every connection until each has `want` created watches."""
    ep = select.epoll()
    by_fd = {c.sock.fileno(): c for c in conns}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    deadline = time.monotonic() + timeout_s
    try:
        while any(c.created < want for c in conns):
            if time.monotonic() > deadline:
                short = sum(1 for c in conns if c.created < want)
                raise AssertionError("%d connections short of %d watches" % (short, want))
            for fd, _ in ep.poll(1.0):
                by_fd[fd].on_readable()
    finally:
        ep.close()


def measure(proc, host, port, key, n, w):
    end = key[:-1] + bytes([key[-1] + 1])
    create = watch_create(key, end)
    time.sleep(1.0)
    before = rss_kib(proc.pid)
    conns = []
    try:
        for i in range(n):
            c = Conn(host, port)
            c.open(create)
            conns.append(c)
        pump(conns, 1, 120)
        time.sleep(2.0)  # etcd's goroutines settle
        one = rss_kib(proc.pid)
        for c in conns:
            c.send(frame(DATA, 0, 1, create * (w - 1)))
        pump(conns, w, 300)
        time.sleep(2.0)
        many = rss_kib(proc.pid)
    finally:
        for c in conns:
            c.sock.close()
    return ((one - before) * 1024.0 / n, (many - one) * 1024.0 / (n * (w - 1)))


def round_once(workdir, n, w):
    out = {}
    d = tempfile.mkdtemp(prefix="v3watch-", dir=workdir)
    disco, disco_url = harness.start_disco(d, ("--new-rate", "0"))
    try:
        harness.http("PUT", disco_url + "/v2/keys/_etcd/registry/benchv3/_config/size",
                     body={"value": "3"})
        host, port = disco_url[len("http://"):].rsplit(":", 1)
        out["disco"] = measure(disco, host, int(port), b"/_etcd/registry/benchv3/members",
                               n, w)
    finally:
        disco.stop()
    etcd, etcd_url = harness.start_etcd_v2(d)
    try:
        host, port = etcd_url[len("http://"):].rsplit(":", 1)
        out["etcd"] = measure(etcd, host, int(port), b"/_etcd/registry/benchv3/members", n, w)
    finally:
        etcd.stop()
    shutil.rmtree(d, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--watches", type=int, default=100, help="per stream (disco's bound: 100)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = tempfile.mkdtemp(prefix="disco-v3watch-")
    runs = []
    try:
        for r in range(args.rounds):
            runs.append(round_once(workdir, args.conns, args.watches))
            print("round %d: %r" % (r + 1, runs[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for k, what in ((0, "HTTP/2 connection holding one v3 watch, %d conns: server bytes each"),
                    (1, "each additional v3 watch on a stream (%d conns x %d): server bytes")):
        d = statistics.median(x["disco"][k] for x in runs)
        e = statistics.median(x["etcd"][k] for x in runs)
        label = what % ((args.conns,) if k == 0 else (args.conns, args.watches))
        print("| %s | %.0f | %.0f | %.2f | RSS growth, median of %d fresh pairs |"
              % (label, d, e, d / e, args.rounds))


if __name__ == "__main__":
    main()
