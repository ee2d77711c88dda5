#!/usr/bin/env python3
"""`disco new` and `disco status` against a real disco on loopback.

Peers are sockets this test opens on 127.0.0.1 (listening: the peer answers;
bound but closed: it does not), registered as members' peer URLs, so every
exit code of `disco status` is seen: 0 healthy, 3 waiting, 4 stale, 5 partly
answering, 6 unknown token, 7 unreachable server, 2 usage.  TLS: a Python
HTTPS server with a certificate made here, checked with --cacert and with
SSL_CERT_FILE.
"""

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import unittest
import urllib.parse

import harness


def run_cli(*args, env_extra=None, timeout=20):
    env = harness.clean_env()
    env.update(env_extra or {})
    cp = subprocess.run(harness.disco_wrapper() + [harness.disco_bin()] + list(args),
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        timeout=timeout, env=env)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def listening_peer():
    """A socket that accepts connections (the kernel completes the handshake
    from the backlog): a live peer port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s, "http://127.0.0.1:%d" % s.getsockname()[1]


def dead_peer():
    """A loopback port nothing listens on (bound, then closed)."""
    return "http://127.0.0.1:%d" % harness.free_port()


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="disco-cli-")
        cls.proc, cls.base = harness.start_disco(cls.tmp)
        cls.sockets = []

    @classmethod
    def tearDownClass(cls):
        for s in cls.sockets:
            s.close()
        cls.proc.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def new_token(self, size):
        rc, out, err = run_cli("new", "--size", str(size), "--server", self.base)
        self.assertEqual(rc, 0, err)
        url = out.strip()
        self.assertTrue(url.startswith(self.base + "/"), out)
        return url

    def register(self, url, name, peer_url):
        st, _, body = harness.http("PUT", "%s/%s" % (url, name),
                                   {"value": "%s=%s" % (name, peer_url)})
        self.assertEqual(st, 201, body)

    def live(self):
        s, url = listening_peer()
        self.sockets.append(s)
        return url

    def status(self, url, *extra):
        return run_cli("status", "--probe-timeout", "2s", *extra, url)

    def test_new_prints_a_token_url_and_butane(self):
        url = self.new_token(5)
        st, _, body = harness.http("GET", url + "/_config/size")
        self.assertEqual((st, json.loads(body)["node"]["value"]), (200, "5"))
        rc, out, err = run_cli("new", "--butane", env_extra={"DISC_SERVER": self.base})
        self.assertEqual(rc, 0, err)
        self.assertIn("variant: flatcar", out)
        self.assertIn("etcd-member.service", out)
        durl = [l for l in out.splitlines() if "--discovery=" in l][0]
        token_url = durl.split('--discovery="')[1].rstrip('"')
        st, _, body = harness.http("GET", token_url + "/_config/size")
        self.assertEqual((st, json.loads(body)["node"]["value"]), (200, "3"))

    def test_new_usage_errors_exit_2(self):
        self.assertEqual(run_cli("new", "--size", "3")[0], 2, "no server")
        self.assertEqual(run_cli("new", "--size", "0", "--server", self.base)[0], 2)
        self.assertEqual(run_cli("new", "--bogus", "--server", self.base)[0], 2)
        self.assertEqual(run_cli("status")[0], 2)
        self.assertEqual(run_cli("status", "not-a-url")[0], 2)

    def test_waiting_exit_3(self):
        url = self.new_token(3)
        self.register(url, "m1", self.live())
        rc, out, err = self.status(url)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("waiting for 2 more", out)

    def test_complete_and_answering_exit_0_extras_mentioned(self):
        url = self.new_token(2)
        self.register(url, "m1", self.live())
        self.register(url, "m2", self.live())
        self.register(url, "m3", dead_peer())  # an extra: a proxy, not probed
        rc, out, err = self.status(url)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("1 more registered beyond the size", out)
        rc, out, err = self.status(url, "--json")
        self.assertEqual(rc, 0, err)
        obj = json.loads(out)
        self.assertEqual(obj["state"], "healthy")
        self.assertEqual([m["role"] for m in obj["members"]], ["member", "member", "extra"])
        self.assertEqual([m["peer_answers"] for m in obj["members"]], [True, True, None])

    def test_complete_nobody_answers_is_stale_exit_4(self):
        url = self.new_token(2)
        self.register(url, "m1", dead_peer())
        self.register(url, "m2", dead_peer())
        self.register(url, "m3", self.live())  # an extra that happens to listen: ignored
        rc, out, err = self.status(url)
        self.assertEqual(rc, 4, out + err)
        self.assertIn("stale", out)

    def test_partly_answering_exit_5(self):
        url = self.new_token(3)
        self.register(url, "m1", self.live())
        self.register(url, "m2", dead_peer())
        self.register(url, "m3", self.live())
        rc, out, err = self.status(url)
        self.assertEqual(rc, 5, out + err)
        self.assertIn("firewall", out)
        rc, out, _ = self.status(url, "--json")
        self.assertEqual((rc, json.loads(out)["state"]), (5, "partial"))

    def test_member_order_is_created_index(self):
        """The first `size` by createdIndex are members, whatever the key names."""
        url = self.new_token(1)
        self.register(url, "zz", self.live())
        self.register(url, "aa", dead_peer())
        rc, out, err = self.status(url, "--json")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual([m["name"] for m in json.loads(out)["members"]], ["zz", "aa"])

    def test_v2_keys_form_of_the_url(self):
        url = self.new_token(1)
        self.register(url, "m1", self.live())
        token = url.rsplit("/", 1)[1]
        rc, out, err = self.status("%s/v2/keys/_etcd/registry/%s" % (self.base, token))
        self.assertEqual(rc, 0, out + err)

    def test_unknown_token_exit_6(self):
        rc, out, err = self.status(self.base + "/" + "0" * 32)
        self.assertEqual(rc, 6, out + err)
        self.assertTrue(out.startswith("the token is unknown (never issued)"), out)
        rc, out, err = self.status(self.base + "/bad%20token")
        self.assertEqual(rc, 6, out + err)
        self.assertTrue(out.startswith("the token is malformed"), out)

    def test_unreachable_server_exit_7(self):
        rc, out, err = self.status("http://127.0.0.1:%d/%s" % (harness.free_port(), "0" * 32))
        self.assertEqual(rc, 7, out + err)
        rc, out, err = run_cli("new", "--server", "http://127.0.0.1:%d" % harness.free_port())
        self.assertEqual(rc, 7, out + err)


class _FakeNew(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"https://localhost:%d/abc\n" % self.server.server_address[1]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@unittest.skipUnless(shutil.which("openssl"), "needs the openssl command")
class CliTlsTest(unittest.TestCase):
    """https:// works with --cacert and SSL_CERT_FILE, and a certificate the
    client cannot verify is exit 7."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="disco-cli-tls-")
        cls.cert = os.path.join(cls.tmp, "cert.pem")
        cls.key = os.path.join(cls.tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", cls.key, "-out", cls.cert],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
        cls.httpd = http.server.HTTPServer(("127.0.0.1", 0), _FakeNew)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cls.cert, cls.key)
        cls.httpd.socket = ctx.wrap_socket(cls.httpd.socket, server_side=True)
        cls.thread = threading.Thread(target=cls.httpd.serve_forever, daemon=True)
        cls.thread.start()
        cls.server = "https://localhost:%d" % cls.httpd.server_address[1]

    @classmethod
    def tearDownClass(cls):
        cls.httpd.shutdown()
        cls.httpd.server_close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_cacert(self):
        rc, out, err = run_cli("new", "--server", self.server, "--cacert", self.cert)
        self.assertEqual(rc, 0, err)
        self.assertEqual(urllib.parse.urlparse(out.strip()).path, "/abc")

    def test_ssl_cert_file(self):
        rc, out, err = run_cli("new", "--server", self.server,
                               env_extra={"SSL_CERT_FILE": self.cert})
        self.assertEqual(rc, 0, err)

    def test_unverifiable_certificate_exit_7(self):
        rc, out, err = run_cli("new", "--server", self.server,
                               env_extra={"SSL_CERT_FILE": os.devnull})
        self.assertEqual(rc, 7, out + err)
        self.assertIn("TLS", err)


if __name__ == "__main__":
    unittest.main()
