"""Keep-alive and pipelining: answers sent late (a write held until it is on
disk, a parked watch woken by an event or by the wait timeout) must leave the
connection ready for the next request, as etcd's discovery client reuses one
connection for its PUT and its self-watch.

Runs against a real disco process; every request here shares one socket.
"""

import os
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class Conn:
    """One kept-alive HTTP/1.1 connection with a minimal response reader."""

    def __init__(self, base):
        host, port = base[len("http://"):].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buf = b""
        self.host = "%s:%s" % (host, port)

    def send(self, method, path, body=b""):
        head = "%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, path, self.host)
        if body:
            head += ("Content-Type: application/x-www-form-urlencoded\r\n"
                     "Content-Length: %d\r\n" % len(body))
        self.sock.sendall(head.encode() + b"\r\n" + body)

    def read(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self):
        self.sock.close()


class KeepAliveTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-keepalive-")
        self.proc, self.base = harness.start_disco(self.workdir, wait_timeout="1s")
        self.addCleanup(self.proc.stop)
        self.token = "keepalive"
        st, _, _ = harness.http("PUT", self.base + "/v2/keys/_etcd/registry/%s/_config/size"
                                % self.token, body={"value": "3"})
        self.assertEqual(st, 201)
        self.dir = "/v2/keys/_etcd/registry/" + self.token

    def test_requests_after_a_held_write(self):
        c = Conn(self.base)
        self.addCleanup(c.close)
        c.send("PUT", self.dir + "/a?prevExist=false", b"value=m1%3Dhttp%3A%2F%2F127.0.0.1%3A1")
        st, h, body = c.read()
        self.assertEqual(st, 201, body)
        created = h["x-etcd-index"]
        c.send("GET", self.dir + "/a?recursive=false&wait=true&waitIndex=" + created)
        st, _, body = c.read()
        self.assertEqual(st, 200)
        self.assertIn(b'"action":"create"', body)
        c.send("GET", self.dir + "/_config/size")
        st, _, body = c.read()
        self.assertEqual(st, 200)
        self.assertIn(b'"value":"3"', body)

    def test_requests_after_a_woken_watch_and_a_timed_out_one(self):
        c = Conn(self.base)
        self.addCleanup(c.close)
        c.send("GET", self.dir + "?recursive=true&wait=true")
        threading.Timer(0.3, lambda: harness.http(
            "PUT", self.base + self.dir + "/b", body={"value": "x"})).start()
        st, _, body = c.read()
        self.assertEqual(st, 200)
        self.assertIn(b'"key":"/_etcd/registry/keepalive/b"', body)
        # parked again, ended by the 1 s wait timeout: an empty 200
        c.send("GET", self.dir + "?recursive=true&wait=true")
        t0 = time.monotonic()
        st, h, body = c.read()
        self.assertEqual((st, body), (200, b""))
        self.assertGreater(time.monotonic() - t0, 0.5)
        # and the connection still answers
        c.send("GET", self.dir + "/b")
        st, _, body = c.read()
        self.assertEqual(st, 200)
        self.assertIn(b'"value":"x"', body)

    def test_pipelined_requests_behind_a_parked_watch(self):
        c = Conn(self.base)
        self.addCleanup(c.close)
        # A watch, then two requests pipelined behind it on the same socket.
        c.send("GET", self.dir + "/p?wait=true")
        c.send("GET", self.dir + "/_config/size")
        c.send("PUT", self.dir + "/q", b"value=2")
        time.sleep(0.2)
        harness.http("PUT", self.base + self.dir + "/p", body={"value": "1"})
        answers = [c.read() for _ in range(3)]
        self.assertEqual([a[0] for a in answers], [200, 200, 201])
        self.assertIn(b'"key":"/_etcd/registry/keepalive/p"', answers[0][2])
        self.assertIn(b'"value":"3"', answers[1][2])
        self.assertIn(b'"key":"/_etcd/registry/keepalive/q"', answers[2][2])


if __name__ == "__main__":
    unittest.main(verbosity=2)
