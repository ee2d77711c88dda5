#!/usr/bin/env python3
"""What an operator sees: one log line per token event, JSON log lines that
parse, the access log in Common Log Format, causes that explain a missing
token (expired and when, never issued, malformed and how) with the same
errorCode and JSON shape, and --host without footguns (a wildcard --addr takes
the prefix from the Host header; a loopback prefix on a wildcard address is
warned about; the open-files warning only for an explicit --max-conns).

Clients other than the registering ones connect from 127.0.0.2 (all of
127.0.0.0/8 is loopback on Linux) to be "a new address".
"""

import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import harness

CLF = re.compile(r'^(\S+) - - \[(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d) \+0000\] '
                 r'"([A-Z]+) (\S+) HTTP/1\.1" (\d{3}) (\d+)$')


def http_from(source, method, url, form=None, headers=None):
    """One request from loopback source address `source`."""
    u = urllib_parse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10,
                                      source_address=(source, 0))
    body = None
    hdrs = dict(headers or {})
    if form is not None:
        body = "&".join("%s=%s" % kv for kv in form.items())
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, u.path + ("?" + u.query if u.query else ""), body, hdrs)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def urllib_parse(url):
    import urllib.parse
    return urllib.parse.urlparse(url)


def json_lines(proc):
    out = []
    for line in proc.log().splitlines():
        out.append(json.loads(line))  # every line must parse
    return out


def wait_log(proc, pattern, timeout=10):
    rx = re.compile(pattern)
    return harness.wait_until(lambda: rx.search(proc.log()), timeout, what=pattern)


class TokenEventsJson(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="disco-logs-")
        cls.access = os.path.join(cls.tmp, "access.log")
        cls.proc, cls.base = harness.start_disco(
            cls.tmp, ("--log-format", "json", "--access-log", cls.access))

    @classmethod
    def tearDownClass(cls):
        cls.proc.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def new_token(self, size):
        st, _, body = harness.http("GET", "%s/new?size=%d" % (self.base, size))
        self.assertEqual(st, 200, body)
        url = body.decode().strip()
        return url, url.rsplit("/", 1)[1]

    def messages(self):
        return [o["msg"] for o in json_lines(self.proc)]

    def test_token_events_one_line_each(self):
        url, tok = self.new_token(2)
        st, _, body = harness.http("PUT", url + "/m1?prevExist=false", {"value": "a=http://x:2380"})
        self.assertEqual(st, 201, body)
        st, _, body = harness.http("PUT", url + "/m2?prevExist=false", {"value": "b=http://y:2380"})
        self.assertEqual(st, 201, body)
        st, body = http_from("127.0.0.2", "GET", url)
        self.assertEqual(st, 200, body)
        st, body = http_from("127.0.0.2", "GET", url)  # the same address again: no new line
        st, _, body = harness.http("DELETE", url + "/m2")
        self.assertEqual(st, 200, body)
        wait_log(self.proc, "member m2 deleted")
        mine = [m for m in self.messages() if tok in m]
        self.assertRegex(mine[0], r"token %s created: size 2, by 127\.0\.0\.1:\d+" % tok)
        self.assertEqual(len([m for m in mine if "created" in m]), 1, mine)
        self.assertEqual(len([m for m in mine if "registered, 1 of 2" in m]), 1, mine)
        self.assertEqual(len([m for m in mine if "registered, 2 of 2" in m]), 1, mine)
        self.assertEqual(len([m for m in mine if "complete: all 2" in m]), 1, mine)
        new_addr = [m for m in mine if "read by a new address" in m]
        self.assertEqual(len(new_addr), 1, mine)
        self.assertIn("127.0.0.2", new_addr[0])
        self.assertEqual(len([m for m in mine if "member m2 deleted" in m and "1 of 2 left" in m]),
                         1, mine)

    def test_v3_members_are_logged_as_v2_ones(self):
        # etcd 3.6+ members register through the v3 API (V3-DISCOVERY.md);
        # the operator follows the same token lines, marked (v3).
        tok = "%032x" % int(time.time_ns())
        endpoint = self.base.replace("http://", "")
        reg = "/_etcd/registry/%s" % tok
        rc, out, err = harness.etcdctl(endpoint, "put", reg + "/_config/size", "2")
        self.assertEqual(rc, 0, err)
        for i, mid in enumerate(("8e9e05c52164694d", "91bc3c398fb3c146")):
            rc, out, err = harness.etcdctl(endpoint, "put", "%s/members/%s" % (reg, mid),
                                           "m%d=http://10.0.0.%d:2380" % (i, i + 1))
            self.assertEqual(rc, 0, err)
        wait_log(self.proc, "token %s complete" % tok)
        mine = [m for m in self.messages() if tok in m]
        self.assertRegex(mine[0], r"token %s created: size 2, by 127\.0\.0\.1:\d+ \(v3 API\)"
                         % tok)
        self.assertEqual(len([m for m in mine if "registered (v3), 1 of 2" in m and
                              "m0=http://10.0.0.1:2380" in m]), 1, mine)
        self.assertEqual(len([m for m in mine if "registered (v3), 2 of 2" in m]), 1, mine)
        self.assertEqual(len([m for m in mine if "complete: all 2" in m]), 1, mine)

    def test_every_line_is_json_with_time_level_msg(self):
        # a message with a quote, a backslash and bytes outside ASCII in it
        harness.http("GET", self.base + "/%22q%5C%C3%A9")
        wait_log(self.proc, r"q\\\\")
        for obj in json_lines(self.proc):
            self.assertEqual(sorted(obj), ["level", "msg", "time"])
            self.assertIn(obj["level"], ("debug", "info", "warn", "error"))

    def test_causes_explain_missing_tokens(self):
        for path, want in (("/" + "0" * 32, "never issued"),
                           ("/bad%20token", "not a token: byte 0x20 at position 4"),
                           ("/" + "a" * 70, "70 characters long"),
                           ("/v2/keys/_etcd/registry/" + "1" * 32 + "/m1", "never issued")):
            st, h, body = harness.http("GET", self.base + path)
            self.assertEqual(st, 404, body)
            obj = json.loads(body)
            self.assertEqual(sorted(obj), ["cause", "errorCode", "index", "message"])
            self.assertEqual((obj["errorCode"], obj["message"]), (100, "Key not found"))
            self.assertTrue(obj["cause"].startswith("/_etcd/registry/"), obj)
            self.assertIn(want, obj["cause"])
            # the same cause in a log line with the client's address
            wait_log(self.proc, re.escape(want) + ".*")
            lines = [m for m in self.messages() if want in m and "from 127.0.0.1:" in m]
            self.assertTrue(lines, want)
        # a registration into an unknown token: etcd prints this cause
        st, _, body = harness.http("PUT", "%s/%s/m1?prevExist=false" % (self.base, "2" * 32),
                                   {"value": "a=http://x:2380"})
        self.assertEqual((st, json.loads(body)["errorCode"]), (404, 100))
        self.assertIn("never issued", json.loads(body)["cause"])

    def test_access_log_is_common_log_format(self):
        url, tok = self.new_token(1)
        harness.http("GET", url + "?recursive=true")
        harness.http("GET", self.base + "/health")

        def lines():
            with open(self.access) as f:
                return f.read().splitlines()
        harness.wait_until(lambda: any("/health" in l for l in lines()), 10, what="access lines")
        for l in lines():
            self.assertRegex(l, CLF)
        mine = [CLF.match(l).groups() for l in lines() if tok in l]
        self.assertEqual((mine[0][7], mine[0][8], mine[0][9]),
                         ("GET", "/%s?recursive=true" % tok, "200"))
        self.assertEqual(mine[0][0], "127.0.0.1")
        self.assertTrue(any(g[7:10] == ("GET", "/new?size=1", "200")
                            for g in (CLF.match(l).groups() for l in lines())))


class TokenEventsJsonOnEtcd(TokenEventsJson):
    """The same lines from an instance on an etcd cluster, where every write
    is answered only once etcd has decided it (the line is logged then)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="disco-logs-etcd-")
        cls.access = os.path.join(cls.tmp, "access.log")
        cls.etcd = harness.EtcdCluster(cls.tmp, size=1)
        cls.proc, cls.base = harness.start_disco(
            cls.tmp, ("--log-format", "json", "--access-log", cls.access,
                      "--etcd-endpoints", cls.etcd.client_urls[0]))

    @classmethod
    def tearDownClass(cls):
        cls.proc.stop()
        cls.etcd.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)


class ExpiredToken(unittest.TestCase):
    def test_expired_token_says_when_in_cause_log_and_status(self):
        tmp = tempfile.mkdtemp(prefix="disco-logs-exp-")
        proc, base = harness.start_disco(tmp, ("--minage", "1s", "--gcfreq", "200ms"))
        try:
            st, _, body = harness.http("GET", base + "/new?size=3")
            url = body.decode().strip()
            tok = url.rsplit("/", 1)[1]
            wait_log(proc, "token %s expired" % tok)
            st, _, body = harness.http("GET", url)
            obj = json.loads(body)
            self.assertEqual((st, obj["errorCode"]), (404, 100))
            self.assertRegex(obj["cause"], r"^/_etcd/registry/%s: this token expired: it was "
                             r"removed at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" % tok)
            cp = subprocess.run([harness.disco_bin(), "status", url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=20, env=harness.clean_env())
            self.assertEqual(cp.returncode, 6, cp.stderr)
            self.assertIn("expired", cp.stdout.decode())
            cp = subprocess.run([harness.disco_bin(), "status", "--json", url],
                                stdout=subprocess.PIPE, timeout=20, env=harness.clean_env())
            self.assertEqual((cp.returncode, json.loads(cp.stdout)["state"]), (6, "expired"))
        finally:
            proc.stop()
            shutil.rmtree(tmp, ignore_errors=True)


class TextLogsKeepControlBytesOut(unittest.TestCase):
    def test_a_member_value_cannot_write_to_the_operators_terminal(self):
        # Text logs go to a terminal or the journal: a client's value must not
        # bring a line break or an escape sequence (ESC [ ...) with it.
        tmp = tempfile.mkdtemp(prefix="disco-logs-ctl-")
        proc, base = harness.start_disco(tmp)
        try:
            st, _, body = harness.http("GET", base + "/new?size=3")
            url = body.decode().strip()
            st, _, body = harness.http("PUT", url + "/m1",
                                       body={"value": "m1=http://a:2380\x1b[2J\nFAKE error line"})
            self.assertEqual(st, 201, body)
            wait_log(proc, "registered")
            log = proc.log()
            self.assertNotIn("\x1b", log)
            self.assertFalse(any(line.startswith("FAKE") for line in log.splitlines()), log)
        finally:
            proc.stop()
            shutil.rmtree(tmp, ignore_errors=True)


class HostWithoutFootguns(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="disco-host-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_wildcard_addr_takes_prefix_from_host_header(self):
        proc, base = harness.start_disco(self.tmp, ("--addr", "0.0.0.0:{port}"))
        try:
            st, body = http_from("127.0.0.1", "GET", base + "/new",
                                 headers={"Host": "disco.example:8087"})
            self.assertEqual(st, 200, body)
            self.assertRegex(body.decode(), r"^http://disco\.example:8087/[0-9a-f]{32}$")
            self.assertNotIn("http://0.0.0.0", proc.log())
            # asked by a loopback name while listening everywhere: warned
            st, _, body = harness.http("GET", base + "/new")
            self.assertTrue(body.decode().startswith("http://127.0.0.1:"), body)
            wait_log(proc, r"warn .*loopback URL http://127\.0\.0\.1:\d+/[0-9a-f]{32}")
        finally:
            proc.stop()

    def run_with_nofile(self, *args):
        port = harness.free_port()
        argv = ["sh", "-c", 'ulimit -n 512 && exec "$@"', "sh", harness.disco_bin(), "serve",
                "--addr", "127.0.0.1:%d" % port, "--data-dir", ""] + list(args)
        proc = harness.Proc(argv, os.path.join(self.tmp, "nofile-%d.log" % port))
        try:
            wait_log(proc, "serving on")
            time.sleep(0.2)
            return proc.log()
        finally:
            proc.stop()

    def test_open_files_warning_only_for_explicit_max_conns(self):
        self.assertNotIn("open-files limit", self.run_with_nofile())
        self.assertIn("open-files limit", self.run_with_nofile("--max-conns", "4000"))


if __name__ == "__main__":
    unittest.main()
