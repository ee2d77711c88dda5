#!/usr/bin/env python3
"""End-to-end: disco serving TLS itself (--tls-cert, --tls-key, --tls-client-ca,
--plain-addr, SIGHUP reload), against real clients and real etcd 3.4 members.

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_tls.py -v

A throw-away CA and certificates are made at test time with the `openssl`
command (ECDSA P-256), in a temporary directory removed afterwards; among
them an expired and a wrong-host certificate, which the clients (Python's
ssl, curl, Go in etcd) are shown to refuse: a test of the harness. Every
process listens on 127.0.0.1 on ports chosen at run time and is stopped by
PID. etcd (Go) reads the CA from SSL_CERT_FILE.
"""

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import test_bootstrap  # noqa: E402

OPENSSL = os.environ.get("OPENSSL_BIN", "openssl")
LOG_WAIT_S = 10.0
SLOW_HANDSHAKE_TIMEOUT = "1s"
# The handshake is cut at --header-timeout (1 s): allow a lot more, never less
# than most of it.
SLOW_HANDSHAKE_MIN_S = 0.8
SLOW_HANDSHAKE_MAX_S = 8.0
DRIBBLE_INTERVAL_S = 0.2
DRIBBLE_MAX_BYTES = 60  # 12 s of dribbling: past the bound above

ODD_RECORD_BYTES = 10000
PARKED_PIPELINE_BYTES = 135000

SERVER_SERIAL = "1001"
# the only names the wrong-host certificate is valid for (never dialled)
WRONG_HOST_IP = "127.0.0.2"
WRONG_HOST_NAME = "wrong.example"
# OpenSSL's x509_vfy.h: X509_V_ERR_CERT_HAS_EXPIRED, and X509_V_ERR_IP_ADDRESS_MISMATCH
# (the clients dial 127.0.0.1, an address: the certificate's IP SANs decide)
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_IP_ADDRESS_MISMATCH = 64
# X509_V_FLAG_NO_CHECK_TIME: verify everything but the dates
X509_V_FLAG_NO_CHECK_TIME = 0x200000
# how long an etcd member gets to try the discovery URL and log why it failed
GO_REFUSAL_WAIT_S = 30.0
RELOADED_SERIAL = "2002"


# ---- a throw-away CA -------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run([OPENSSL] + list(args), cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)


def _make_ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
             "-subj", "/CN=disco test %s" % name, cwd=d)


def _make_cert(d, ca, name, serial, ext, days=2):
    """A certificate `name`.pem/.key signed by `ca` with `serial` (hex), valid
    for `days` from now (a negative number: it expired before it began)."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name, cwd=d)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write(ext + "\n")
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
             "-set_serial", "0x" + serial, "-days", str(days), "-out", name + ".pem",
             "-extfile", name + ".ext", cwd=d)


PKI = None


def setUpModule():
    global PKI
    PKI = tempfile.mkdtemp(prefix="disco-pki-")
    _make_ca(PKI, "ca")
    _make_ca(PKI, "rogue")
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
    _make_cert(PKI, "ca", "server", SERVER_SERIAL, server_ext)
    _make_cert(PKI, "ca", "server2", RELOADED_SERIAL, server_ext)
    _make_cert(PKI, "ca", "client", "3003", "extendedKeyUsage=clientAuth")
    _make_cert(PKI, "rogue", "rogueclient", "4004", "extendedKeyUsage=clientAuth")
    # certificates a client must refuse although the CA signed them
    _make_cert(PKI, "ca", "expired", "5005", server_ext, days=-1)
    _make_cert(PKI, "ca", "wronghost", "6006",
               "subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth"
               % (WRONG_HOST_IP, WRONG_HOST_NAME))


def tearDownModule():
    if PKI and os.environ.get("DISCO_E2E_KEEP") != "1":
        shutil.rmtree(PKI, True)


def pki(name):
    return os.path.join(PKI, name)


# ---- clients ---------------------------------------------------------------

def client_context(client_cert=None, alpn=None):
    ctx = ssl.create_default_context(cafile=pki("ca.pem"))
    if client_cert:
        ctx.load_cert_chain(pki(client_cert + ".pem"), pki(client_cert + ".key"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def unverified_context():
    """A client that takes any certificate: only to reach a disco whose
    certificate the test means clients to refuse."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def https(port, method, path, client_cert=None, timeout=10, context=None):
    """One request on a fresh TLS connection: (status, headers, body)."""
    conn = http.client.HTTPSConnection(harness.LOOPBACK, port, timeout=timeout,
                                       context=context or client_context(client_cert))
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def serial_of(conn):
    return conn.sock.getpeercert()["serialNumber"]


class TlsDisco:
    """disco serve with TLS on a free loopback port (and --plain-addr when asked)."""

    def __init__(self, workdir, extra_args=(), plain=False, client_cert=None, files=None,
                 health_context=None):
        self.port = harness.free_port()
        self.plain_port = harness.free_port() if plain else None
        self.base_url = "https://%s:%d" % (harness.LOOPBACK, self.port)
        files = files or {"cert": pki("server.pem"), "key": pki("server.key")}
        argv = harness.disco_wrapper() + [
            harness.disco_bin(), "serve",
            "--addr", "%s:%d" % (harness.LOOPBACK, self.port),
            "--data-dir", os.path.join(workdir, "disco-data"),
            "--wait-timeout", "5s",
            "--tls-cert", files["cert"], "--tls-key", files["key"]] + list(extra_args)
        if plain:
            argv += ["--plain-addr", "%s:%d" % (harness.LOOPBACK, self.plain_port)]
        self.proc = harness.Proc(argv, os.path.join(workdir, "disco.%d.log" % self.port),
                                 name="disco-tls:%d" % self.port)
        timeout = (harness.DISCO_WRAPPED_HEALTH_TIMEOUT_S if harness.disco_wrapper()
                   else harness.DISCO_HEALTH_TIMEOUT_S)

        def healthy():
            if not self.proc.alive():
                raise harness.StopWaiting("disco exited with %r:\n%s"
                                          % (self.proc.stop(), self.proc.log()[-3000:]))
            return https(self.port, "GET", "/health", client_cert, timeout=2,
                         context=health_context)[0] == 200
        try:
            harness.wait_until(healthy, timeout, what="disco to answer /health over TLS")
        except TimeoutError:
            self.proc.stop()
            raise

    def alive(self):
        return self.proc.alive()

    def wait_log(self, text, count=1):
        harness.wait_until(lambda: self.proc.log().count(text) >= count, LOG_WAIT_S,
                           what="%r in disco's log" % text)


class TlsTestCase(unittest.TestCase):

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-tls-")
        if os.environ.get("DISCO_E2E_KEEP") != "1":
            self.addCleanup(shutil.rmtree, self.workdir, True)
        self.discos = []

    def tearDown(self):
        # a clean stop (exit code 0) also means no sanitizer report
        for d in self.discos:
            rc = d.proc.stop()
            self.assertEqual(rc, 0, "disco did not stop cleanly:\n%s" % d.proc.log()[-3000:])

    def start(self, *a, **kw):
        try:
            d = TlsDisco(self.workdir, *a, **kw)
        except (TimeoutError, harness.StopWaiting) as e:
            self.fail(str(e))
        self.discos.append(d)
        return d


# ---- the scenarios ---------------------------------------------------------

class TestTls(TlsTestCase):

    def test_https_answers_and_new_prints_https(self):
        d = self.start()
        status, headers, body = https(d.port, "GET", "/new?size=3")
        self.assertEqual(status, 200, body)
        self.assertRegex(body.decode(), r"\A" + re.escape(d.base_url) + r"/[0-9a-f]{32}\Z")
        # TLS 1.2 too, and ALPN agrees on http/1.1 when the client offers it alone
        ctx = client_context(alpn=["http/1.1"])
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection((harness.LOOPBACK, d.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=harness.LOOPBACK) as s:
                self.assertEqual(s.version(), "TLSv1.2")
                self.assertEqual(s.selected_alpn_protocol(), "http/1.1")
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:200])
        # a client offering h2 (gRPC: etcd's v3 clients) gets h2, and HTTP/2
        # over it: the server's SETTINGS frame answers the preface
        with socket.create_connection((harness.LOOPBACK, d.port), timeout=10) as raw:
            with client_context(alpn=["h2", "http/1.1"]).wrap_socket(
                    raw, server_hostname=harness.LOOPBACK) as s:
                self.assertEqual(s.selected_alpn_protocol(), "h2")
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                head = b""
                while len(head) < 9:
                    chunk = s.recv(9 - len(head))
                    if not chunk:
                        break
                    head += chunk
                self.assertEqual(len(head), 9, head)
                self.assertEqual(head[3], 4, "the first frame is not SETTINGS: %r" % head)

    def test_http2_over_tls_knows_it_is_tls(self):
        # Browsers and curl speak HTTP/2 over TLS (ALPN h2): /new must still
        # print https://, and a browser's Accept must still get the page.
        d = self.start()
        argv = ["curl", "-sS", "--http2", "--cacert", pki("ca.pem"), "--max-time", "10"]
        base = "https://%s:%d" % (harness.LOOPBACK, d.port)
        out = subprocess.run(argv + ["-w", "\n%{http_version}", base + "/new?size=3"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        url, version = out.stdout.rsplit("\n", 1)
        self.assertEqual(version, "2")
        self.assertRegex(url, r"\Ahttps://127\.0\.0\.1:%d/[0-9a-f]{32}\Z" % d.port)
        token = url.rsplit("/", 1)[1]
        out = subprocess.run(argv + ["-H", "Accept: text/html", base + "/" + token],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(out.stdout.startswith("<!doctype html>"), out.stdout[:200])

    def test_tls_1_1_is_refused(self):
        d = self.start()
        ctx = client_context()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            # Debian's OpenSSL will not offer TLS 1.1 at its default security
            # level: lower it, so that the refusal is disco's
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            self.skipTest("this Python/OpenSSL cannot offer TLS 1.1")
        with socket.create_connection((harness.LOOPBACK, d.port), timeout=10) as raw:
            with self.assertRaises(ssl.SSLError) as cm:
                ctx.wrap_socket(raw, server_hostname=harness.LOOPBACK)
        self.assertIn("PROTOCOL_VERSION", str(cm.exception).upper().replace(" ", "_"))
        self.assertEqual(https(d.port, "GET", "/health")[0], 200)

    def test_plain_http_to_tls_port_gets_a_plain_400(self):
        d = self.start()
        conn = harness.RawConn("http://%s:%d" % (harness.LOOPBACK, d.port))
        try:
            conn.request("GET", "/health")
            answer = conn.read_answer()
            self.assertEqual(answer.status, 400, answer)
            self.assertIn(b"The plain HTTP request was sent to HTTPS port", answer.body)
            self.assertEqual(answer.headers.get("connection"), "close")
            conn.read_to_eof()
        finally:
            conn.close()
        self.assertEqual(https(d.port, "GET", "/health")[0], 200)

    def test_plain_addr_serves_plain_http_alongside(self):
        d = self.start(plain=True)
        plain = "http://%s:%d" % (harness.LOOPBACK, d.plain_port)
        status, _, body = harness.http("PUT", plain + "/v2/keys/_etcd/registry/t1/_config/size",
                                       {"value": "3"})
        self.assertEqual(status, 201, body)
        # the same registry over TLS
        status, _, body = https(d.port, "GET", "/v2/keys/_etcd/registry/t1/_config/size")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["node"]["value"], "3")
        # and a TLS client on the plain port is refused cleanly
        with socket.create_connection((harness.LOOPBACK, d.plain_port), timeout=10) as raw:
            with self.assertRaises((ssl.SSLError, ConnectionResetError)):
                client_context().wrap_socket(raw, server_hostname=harness.LOOPBACK)
        self.assertEqual(harness.http("GET", plain + "/health")[0], 200)

    def test_mutual_tls_refuses_and_accepts(self):
        d = self.start(("--tls-client-ca", pki("ca.pem")), client_cert="client")
        self.assertEqual(https(d.port, "GET", "/health", client_cert="client")[0], 200)
        for who in (None, "rogueclient"):
            with self.subTest(client_cert=who):
                # TLS 1.3 reports the refusal at the first read
                with self.assertRaises((ssl.SSLError, ConnectionResetError,
                                        http.client.RemoteDisconnected, BrokenPipeError)):
                    https(d.port, "GET", "/health", client_cert=who)
        self.assertTrue(d.alive())
        self.assertEqual(https(d.port, "GET", "/health", client_cert="client")[0], 200)

    def test_reload_new_serial_for_new_connections_old_keep_alive_keeps_working(self):
        files = {"cert": os.path.join(self.workdir, "cert.pem"),
                 "key": os.path.join(self.workdir, "key.pem")}
        shutil.copy(pki("server.pem"), files["cert"])
        shutil.copy(pki("server.key"), files["key"])
        d = self.start(files=files)
        old = http.client.HTTPSConnection(harness.LOOPBACK, d.port, timeout=10,
                                          context=client_context())
        self.addCleanup(old.close)
        old.request("GET", "/health")
        self.assertEqual(old.getresponse().read(), b"OK")
        self.assertEqual(serial_of(old), SERVER_SERIAL)

        shutil.copy(pki("server2.pem"), files["cert"])
        shutil.copy(pki("server2.key"), files["key"])
        os.kill(d.proc.pid, signal.SIGHUP)
        d.wait_log("TLS reloaded")
        self.assertIn("serial " + RELOADED_SERIAL, d.proc.log())

        new = http.client.HTTPSConnection(harness.LOOPBACK, d.port, timeout=10,
                                          context=client_context())
        self.addCleanup(new.close)
        new.request("GET", "/health")
        self.assertEqual(new.getresponse().read(), b"OK")
        self.assertEqual(serial_of(new), RELOADED_SERIAL)

        # the connection opened before the reload still works, with its material
        old.request("GET", "/health")
        resp = old.getresponse()
        self.assertEqual((resp.status, resp.read()), (200, b"OK"))
        self.assertEqual(serial_of(old), SERVER_SERIAL)

        # a failed reload keeps the material in use and says why
        with open(files["cert"], "w") as f:
            f.write("not a certificate\n")
        os.kill(d.proc.pid, signal.SIGHUP)
        d.wait_log("TLS reload failed")
        self.assertIn(files["cert"], d.proc.log().split("TLS reload failed", 1)[1])
        third = http.client.HTTPSConnection(harness.LOOPBACK, d.port, timeout=10,
                                            context=client_context())
        self.addCleanup(third.close)
        third.request("GET", "/health")
        self.assertEqual(third.getresponse().read(), b"OK")
        self.assertEqual(serial_of(third), RELOADED_SERIAL)

    def test_large_bodies_and_pipelined_requests_over_tls(self):
        d = self.start(("--max-value-bytes", "60KiB"))
        token = https(d.port, "GET", "/new?size=3")[2].decode().rsplit("/", 1)[1]
        key = "/v2/keys/_etcd/registry/%s/k" % token
        ctx = client_context()
        raw = socket.create_connection((harness.LOOPBACK, d.port), timeout=20)
        s = ctx.wrap_socket(raw, server_hostname=harness.LOOPBACK)
        self.addCleanup(s.close)
        value = "v" * (60 * 1024)  # many TLS records, under --max-body-bytes
        body = ("value=" + value).encode()
        put = harness.RawConn.format_request("PUT", key, body,
                                             host="127.0.0.1")
        gets = harness.RawConn.format_request("GET", "/health", host="127.0.0.1") * 3000
        s.sendall(put + gets)  # about 150 KiB in one go
        data = b""
        answers = []
        deadline = time.monotonic() + 20
        while len(answers) < 3001 and time.monotonic() < deadline:
            got = harness.parse_answer(data, False)
            if got is None:
                chunk = s.recv(65536)
                self.assertTrue(chunk, "closed after %d answers" % len(answers))
                data += chunk
                continue
            answer, data = got
            answers.append(answer)
        self.assertEqual(len(answers), 3001)
        self.assertEqual(answers[0].status, 201, answers[0])
        self.assertTrue(all(a.status == 200 and a.body == b"OK" for a in answers[1:]))
        status, _, got_body = https(d.port, "GET", key)
        self.assertEqual(status, 200, got_body[:300])
        self.assertEqual(json.loads(got_body)["node"]["value"], value)

    def test_bytes_pipelined_behind_a_parked_watch_over_tls(self):
        # Reading pauses while a watch is parked and more than 64 KiB waits
        # behind it; once the watch is answered every request that waited
        # must be answered too, the last bytes included.
        d = self.start()
        token = https(d.port, "GET", "/new?size=3")[2].decode().rsplit("/", 1)[1]
        key = "/v2/keys/_etcd/registry/%s/k" % token
        s = client_context().wrap_socket(
            socket.create_connection((harness.LOOPBACK, d.port), timeout=20),
            server_hostname=harness.LOOPBACK)
        self.addCleanup(s.close)
        watch = harness.RawConn.format_request("GET", key + "?wait=true", host="127.0.0.1")
        # enough that reading pauses, ending inside the record that holds
        # the 128 KiB mark: the server's second 64 KiB read splits it
        one_get = harness.RawConn.format_request("GET", "/health", host="127.0.0.1")
        n_gets = (PARKED_PIPELINE_BYTES - len(watch)) // len(one_get)
        gets = one_get * n_gets
        # records of an odd size, so that some straddle the server's reads
        data = watch + gets
        for i in range(0, len(data), ODD_RECORD_BYTES):
            s.sendall(data[i:i + ODD_RECORD_BYTES])
        time.sleep(0.3)  # let the server read until it pauses
        conn = http.client.HTTPSConnection(harness.LOOPBACK, d.port, timeout=10,
                                           context=client_context())
        conn.request("PUT", key, body="value=x",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(conn.getresponse().status, 201)
        conn.close()
        data, answers = b"", []
        deadline = time.monotonic() + 20
        while len(answers) < n_gets + 1 and time.monotonic() < deadline:
            got = harness.parse_answer(data, False)
            if got is None:
                chunk = s.recv(65536)
                self.assertTrue(chunk, "closed after %d answers" % len(answers))
                data += chunk
                continue
            answer, data = got
            answers.append(answer)
        self.assertEqual(len(answers), n_gets + 1)
        self.assertEqual(answers[0].status, 200)
        self.assertIn(b'"action":"set"', answers[0].body)

    def test_past_max_conns_a_tls_connection_is_closed(self):
        d = self.start(("--max-conns", "2"))
        held = []
        for _ in range(2):
            s = client_context().wrap_socket(
                socket.create_connection((harness.LOOPBACK, d.port), timeout=10),
                server_hostname=harness.LOOPBACK)
            self.addCleanup(s.close)
            held.append(s)
        with self.assertRaises((ssl.SSLError, ConnectionResetError, ConnectionAbortedError,
                                BrokenPipeError, OSError)):
            s = client_context().wrap_socket(
                socket.create_connection((harness.LOOPBACK, d.port), timeout=10),
                server_hostname=harness.LOOPBACK)
            s.close()
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(held[0].recv(4096).startswith(b"HTTP/1.1 200 "))
        held[0].close()
        harness.wait_until(lambda: https(d.port, "GET", "/health")[0] == 200, 10,
                           what="a free connection slot again")

    def test_bad_material_stops_startup_with_the_reason(self):
        argv = harness.disco_wrapper() + [
            harness.disco_bin(), "serve", "--addr", "%s:%d" % (harness.LOOPBACK, harness.free_port()),
            "--data-dir", "", "--tls-cert", pki("server.pem"), "--tls-key", pki("server2.key")]
        proc = harness.Proc(argv, os.path.join(self.workdir, "bad.log"), name="disco-bad")
        rc = proc.wait(harness.DISCO_WRAPPED_HEALTH_TIMEOUT_S)
        proc.stop()
        self.assertEqual(rc, 1, proc.log())
        self.assertIn("cannot load the key", proc.log())
        self.assertIn("mismatch", proc.log())

    def test_slow_handshake_is_cut_at_the_header_timeout(self):
        d = self.start(("--header-timeout", SLOW_HANDSHAKE_TIMEOUT))
        # the head of a TLS handshake record (a ClientHello), then its body a
        # byte at a time: never enough to finish
        record = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64))
        sock = socket.create_connection((harness.LOOPBACK, d.port), timeout=10)
        self.addCleanup(sock.close)
        t0 = time.monotonic()
        closed_after = None
        for i in range(min(DRIBBLE_MAX_BYTES, len(record))):
            try:
                sock.sendall(record[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - t0
                break
            ready, _, _ = select.select([sock], [], [], DRIBBLE_INTERVAL_S)
            if ready:
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                self.assertEqual(data, b"", "the server answered a half handshake: %r" % data)
                closed_after = time.monotonic() - t0
                break
        self.assertIsNotNone(closed_after, "a dribbled handshake was never cut")
        self.assertGreaterEqual(closed_after, SLOW_HANDSHAKE_MIN_S)
        self.assertLessEqual(closed_after, SLOW_HANDSHAKE_MAX_S)
        self.assertEqual(https(d.port, "GET", "/health")[0], 200)


class TestClientsRefuseBadCertificates(TlsTestCase):
    """A test of the clients and of this file's CA, not of disco: served by
    disco, a certificate that has expired, or that names another host, is
    refused by Python's ssl, by curl and by Go (a real etcd 3.4 member's
    https:// discovery), each for that reason. Each refusal is set against
    the same client accepting the same certificate once the one fault is
    out of the way, so the tests above that trust this CA are known to
    check what they claim."""

    def start_with(self, name):
        return self.start(files={"cert": pki(name + ".pem"), "key": pki(name + ".key")},
                          health_context=unverified_context())

    def assert_python_refuses(self, d, verify_code, message):
        with self.assertRaises(ssl.SSLCertVerificationError) as cm:
            https(d.port, "GET", "/health")
        self.assertEqual(cm.exception.verify_code, verify_code, cm.exception)
        self.assertIn(message, cm.exception.verify_message)

    def assert_curl_refuses(self, d, message):
        out = subprocess.run(["curl", "-sS", "--cacert", pki("ca.pem"), "--max-time", "10",
                              "https://%s:%d/health" % (harness.LOOPBACK, d.port)],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 60, out)  # CURLE_PEER_FAILED_VERIFICATION
        self.assertIn(message, out.stderr)
        self.assertEqual(out.stdout, "")

    def assert_go_refuses(self, d, message):
        """An etcd 3.4 member bootstrapping from an https:// token URL on d,
        with the CA in SSL_CERT_FILE: it logs Go's refusal and never
        registers."""
        status, _, body = https(d.port, "GET", "/new?size=3", context=unverified_context())
        self.assertEqual(status, 200, body)
        durl = body.decode()
        env = harness.clean_env()
        env["SSL_CERT_FILE"] = pki("ca.pem")
        peer_port, client_port = harness.free_port(), harness.free_port()
        peer_url = "http://%s:%d" % (harness.LOOPBACK, peer_port)
        client_url = "http://%s:%d" % (harness.LOOPBACK, client_port)
        member = harness.Proc(
            [harness.ETCD_BIN, "--name", "m0",
             "--data-dir", os.path.join(self.workdir, "m0.etcd"),
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
             "--discovery", durl, "--logger", "zap", "--log-outputs", "stderr"],
            os.path.join(self.workdir, "m0.log"), name="etcd:m0", env=env)
        self.addCleanup(member.stop)
        try:
            harness.wait_until(lambda: message in member.log() or not member.alive(),
                               GO_REFUSAL_WAIT_S, what="etcd to log %r" % message)
        except TimeoutError as e:
            self.fail("%s\n%s" % (e, member.log()[-3000:]))
        self.assertIn(message, member.log())
        member.stop()
        path = durl.split("/", 3)[3]
        status, _, body = https(d.port, "GET", "/v2/keys/_etcd/registry/" + path,
                                context=unverified_context())
        self.assertEqual(status, 200, body)
        self.assertNotIn("nodes", json.loads(body)["node"], "the member registered")

    def test_expired_certificate_is_refused(self):
        d = self.start_with("expired")
        self.assert_python_refuses(d, X509_V_ERR_CERT_HAS_EXPIRED, "certificate has expired")
        self.assert_curl_refuses(d, "certificate has expired")
        self.assert_go_refuses(d, "x509: certificate has expired or is not yet valid")
        # the dates are its only fault: the same client, told not to check
        # them, takes it
        ctx = client_context()
        ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        self.assertEqual(https(d.port, "GET", "/health", context=ctx)[0], 200)

    def test_wrong_host_certificate_is_refused(self):
        d = self.start_with("wronghost")
        self.assert_python_refuses(d, X509_V_ERR_IP_ADDRESS_MISMATCH,
                                   "certificate is not valid for '%s'" % harness.LOOPBACK)
        self.assert_curl_refuses(d, "no alternative certificate subject name matches")
        self.assert_go_refuses(d, "x509: certificate is valid for %s, not %s"
                               % (WRONG_HOST_IP, harness.LOOPBACK))
        # the name is its only fault: dialled by a name it holds, it is taken
        ctx = client_context()
        ctx.check_hostname = False
        self.assertEqual(https(d.port, "GET", "/health", context=ctx)[0], 200)
        out = subprocess.run(
            ["curl", "-sS", "--cacert", pki("ca.pem"), "--max-time", "10",
             "--resolve", "%s:%d:%s" % (WRONG_HOST_NAME, d.port, harness.LOOPBACK),
             "https://%s:%d/health" % (WRONG_HOST_NAME, d.port)],
            capture_output=True, text=True, timeout=30)
        self.assertEqual((out.returncode, out.stdout), (0, "OK"), out.stderr)


class TlsDiscoService:
    """The bootstrap suite's discovery service, over TLS (with a plain
    listener for nothing but the suite's own bookkeeping: none is used)."""
    kind = "disco-tls"

    def __init__(self, workdir):
        self.disco = TlsDisco(workdir)
        self.proc, self.base_url = self.disco.proc, self.disco.base_url

    def alive(self):
        return self.proc.alive()

    def new_token(self, test, size):
        status, _, body = https(self.disco.port, "GET", "/new?size=%d" % size)
        test.assertEqual(status, 200, body)
        text = body.decode()
        test.assertRegex(text, r"\A" + re.escape(self.base_url) + r"/[0-9a-f]{32}\Z")
        return text


class TestBootstrapOverTls(test_bootstrap.BootstrapTestCase):
    """Real etcd 3.4 members bootstrap from an https:// token URL."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-tls-")
        if os.environ.get("DISCO_E2E_KEEP") != "1":
            self.addCleanup(shutil.rmtree, self.workdir, True)
        self.procs = []
        self.addCleanup(self._stop_all)
        self.service = TlsDiscoService(self.workdir)
        self.procs.append(self.service.proc)

    def start_member(self, name, discovery_url, extra_args=(), like=None):
        peer_port, client_port = harness.free_port(), harness.free_port()
        peer_url = "http://%s:%d" % (harness.LOOPBACK, peer_port)
        client_url = "http://%s:%d" % (harness.LOOPBACK, client_port)
        argv = [harness.ETCD_BIN, "--name", name,
                "--data-dir", os.path.join(self.workdir, name + ".etcd"),
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--discovery", discovery_url,
                "--logger", "zap", "--log-outputs", "stderr"] + list(extra_args)
        env = harness.clean_env()
        env["SSL_CERT_FILE"] = pki("ca.pem")  # Go's CA bundle, for https:// discovery
        proc = harness.Proc(argv, os.path.join(self.workdir, name + ".log"),
                            name="etcd:" + name, env=env)
        self.procs.append(proc)
        return test_bootstrap.Member(name, proc, peer_url, client_url, discovery_url,
                                     extra_args)

    def listing(self, discovery_url):
        path = discovery_url.split(self.service.base_url, 1)[1]
        status, _, body = https(self.service.disco.port, "GET", path)
        self.assertEqual(status, 200, body)
        node = json.loads(body)["node"]
        return {n["key"]: n.get("value") for n in node.get("nodes", [])}

    @test_bootstrap.dump_logs_on_failure
    def test_three_members_bootstrap_and_a_fourth_falls_back_to_proxy(self):
        durl = self.service.new_token(self, 3)
        self.assertTrue(durl.startswith("https://"), durl)
        members = self.start_members("s", 3, durl)
        cluster = self.wait_cluster(members, 3)
        self.assert_listing_is_cluster(durl, cluster)

        extra = self.start_member("s3", durl)
        try:
            harness.wait_until(lambda: "proxy started listening" in extra.proc.log()
                               or not extra.proc.alive(),
                               test_bootstrap.PROXY_FALLBACK_TIMEOUT_S,
                               what="the fourth member to fall back to proxy")
        except TimeoutError as e:
            self.fail(str(e))
        self.assertTrue(extra.proc.alive(), "the fourth member exited: %r"
                        % extra.proc.returncode)
        self.assertIn("falling back to proxy", extra.proc.log())
        self.assert_listing_is_cluster(durl, cluster)
        self.assert_service_alive()


if __name__ == "__main__":
    unittest.main(verbosity=2)
