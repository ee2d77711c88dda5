#!/usr/bin/env python3
"""The api's rules at its edges: which methods make a token, paths that are
not clean, writes on a token's directory, and the per-address budget for
new tokens on both ways of making one.

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_api_rules.py -v

Where etcd 3.4 has an answer (paths and token directories) the same request
goes to a real etcd (`etcd --enable-v2`, see harness.start_etcd_v2) and to
disco, and the answers must agree on status, errorCode, message, cause,
Location, Content-Type and body; the parts where disco refuses what etcd
allows are checked against disco alone, next to etcd's own answer.
Loopback only; processes are stopped by PID.
"""

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REGISTRY = "/v2/keys/_etcd/registry/"
MEMBER1 = "m1=http://127.0.0.1:2380"
NEW_RATE, NEW_BURST = 1, 3


def reg_path(token, key=""):
    return REGISTRY + token + ("/" + key if key else "")


def tokens_gauge(base):
    st, _, body = harness.http("GET", base + "/metrics")
    assert st == 200, (st, body)
    m = re.search(rb"^disco_tokens (\d+)$", body, re.M)
    assert m, body[:500]
    return int(m.group(1))


class Servers(unittest.TestCase):
    """One etcd and one disco (the /new limit off) for a test class."""

    etcd = disco = None

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-api-rules-")
        try:
            cls.etcd, cls.etcd_url = harness.start_etcd_v2(cls.workdir)
            cls.disco, cls.base = harness.start_disco(cls.workdir, ("--new-rate", "0"))
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        rc = cls.disco.stop() if cls.disco else 0
        if cls.etcd:
            cls.etcd.stop()
        cls.disco = cls.etcd = None
        shutil.rmtree(cls.workdir, ignore_errors=True)
        if rc != 0:
            raise AssertionError("disco did not stop cleanly: exit %r" % rc)

    def both(self, method, path, form=None):
        """The same request to etcd and disco: ((st, h, body), (st, h, body))."""
        return (harness.http(method, self.etcd_url + path, form),
                harness.http(method, self.base + path, form))

    def make_token(self, token):
        """The same token, with one member, on both servers."""
        for base in (self.etcd_url, self.base):
            st, _, body = harness.http("PUT", base + reg_path(token, "_config/size"),
                                       {"value": "3"})
            self.assertEqual(st, 201, body)
            st, _, body = harness.http("PUT", base + reg_path(token, "m1"), {"value": MEMBER1})
            self.assertEqual(st, 201, body)

    def assert_token_intact(self, base, token):
        st, _, body = harness.http("GET", base + reg_path(token) + "?recursive=true")
        self.assertEqual(st, 200, body)
        nodes = json.loads(body)["node"].get("nodes", [])
        self.assertEqual([(n["key"], n.get("value")) for n in nodes],
                         [("/_etcd/registry/%s/m1" % token, MEMBER1)], "the token changed")

    def error_of(self, answer):
        st, h, body = answer
        self.assertEqual(h.get("content-type"), "application/json", answer)
        obj = json.loads(body)
        return st, obj["errorCode"], obj["message"], obj["cause"]


class TestNewMethods(Servers):
    """Issue 7: only GET, PUT and POST make a token on /new."""

    def test_other_methods_answer_405_and_make_nothing(self):
        before = tokens_gauge(self.base)
        for method in ("HEAD", "DELETE"):
            with self.subTest(method):
                st, h, body = harness.http(method, self.base + "/new?size=3")
                self.assertEqual(st, 405, body)
                self.assertEqual(h.get("allow"), "GET, PUT, POST")
                self.assertEqual(h.get("content-type"), "text/plain; charset=utf-8")
                if method != "HEAD":
                    self.assertTrue(body.endswith(b"\n") and body.count(b"\n") == 1, body)
                    self.assertIn(b"GET, PUT or POST", body)
        self.assertEqual(tokens_gauge(self.base), before, "a refused method made a token")

    def test_get_put_post_make_a_token(self):
        before = tokens_gauge(self.base)
        for method in ("GET", "PUT", "POST"):
            with self.subTest(method):
                st, _, body = harness.http(method, self.base + "/new?size=3")
                self.assertEqual(st, 200, body)
                self.assertRegex(body.decode(), r"^http://.*/[0-9a-f]{32}$")
        self.assertEqual(tokens_gauge(self.base), before + 3)


class TestUncleanPaths(Servers):
    """Issue 11: a path with an empty segment is redirected, as etcd's Go
    ServeMux does, and never writes the key it would name once cleaned."""

    def test_redirects_match_etcd(self):
        token = secrets.token_hex(8)
        self.make_token(token)
        cases = [
            ("PUT", reg_path(token, "/x"), {"value": "v"}),
            ("PUT", reg_path(token, "a//x") + "?prevExist=false", {"value": "v"}),
            ("POST", reg_path(token, "/"), {"value": "v"}),
            ("DELETE", reg_path(token, "/m1"), None),
            ("GET", reg_path(token, "/m1") + "?recursive=true&a=%41&b=<'\">", None),
            ("GET", reg_path(token, "/sp%20ace!*()/"), None),
            ("GET", "/v2/keys//_etcd/registry/" + token, None),
            ("GET", "//v2/keys/_etcd/registry/" + token, None),
            ("GET", reg_path(token, "%2F%2Fm1"), None),
            ("HEAD", reg_path(token, "/m1") + "?x=1", None),
        ]
        for method, path, form in cases:
            with self.subTest(method=method, path=path):
                (est, eh, ebody), (dst, dh, dbody) = self.both(method, path, form)
                self.assertEqual(est, 301, "etcd changed? %r" % ebody)
                self.assertEqual(dst, 301, "disco: %d %r" % (dst, dbody))
                self.assertEqual(dh.get("location"), eh.get("location"))
                self.assertEqual(dh.get("content-type"), eh.get("content-type"))
                self.assertEqual(dbody, ebody)
        for base in (self.etcd_url, self.base):
            self.assert_token_intact(base, token)
            for key in ("x", "a/x"):
                st, _, body = harness.http("GET", base + reg_path(token, key))
                self.assertEqual(st, 404, "%s wrote %s: %r" % (base, key, body))

    def test_token_surface_redirects_and_writes_nothing(self):
        token = secrets.token_hex(8)
        self.make_token(token)
        for method, path, form, location in (
                ("PUT", "/%s//x" % token, {"value": "v"}, "/%s/x" % token),
                ("PUT", "//%s/_config/size" % token, {"value": "5"}, "/%s/_config/size" % token),
                ("DELETE", "/%s//m1?dir=false" % token, None, "/%s/m1?dir=false" % token),
                ("GET", "/%s//m1" % token, None, "/%s/m1" % token)):
            with self.subTest(method=method, path=path):
                st, h, body = harness.http(method, self.base + path, form)
                self.assertEqual(st, 301, body)
                self.assertEqual(h.get("location"), location)
        self.assert_token_intact(self.base, token)
        st, _, body = harness.http("GET", self.base + reg_path(token, "x"))
        self.assertEqual(st, 404, body)

    def test_dot_segments_stay_400_209(self):
        """etcd redirects these too; disco keeps refusing them
        (docs/decisions.md): a redirect would send a client to another key,
        another token or /new."""
        token = secrets.token_hex(8)
        self.make_token(token)
        for path in (reg_path(token, "a/../x"), "/%s/./x" % token, "/%s/../new" % token):
            with self.subTest(path):
                st, h, body = harness.http("PUT", self.base + path, {"value": "v"})
                self.assertEqual(st, 400, body)
                self.assertEqual(json.loads(body)["errorCode"], 209)


class TestTokenDirectoryWrites(Servers):
    """Issue 11: writes on a token's directory answer what etcd answers."""

    REFUSED_BY_ETCD = [
        ("PUT", "", {"value": "x"}),
        ("PUT", "?dir=true", None),
        ("PUT", "?prevExist=true", {"value": "x"}),
        ("PUT", "?prevExist=false", {"value": "x"}),
        ("PUT", "?prevExist=false&dir=true", None),
        ("PUT", "?prevValue=x", {"value": "y"}),
        ("PUT", "?prevIndex=1", {"value": "y"}),
        ("PUT", "/", {"value": "x"}),
        ("DELETE", "", None),
        ("DELETE", "?dir=true", None),
        ("DELETE", "?prevValue=x", None),
        ("DELETE", "?prevIndex=1", None),
        ("DELETE", "/?dir=true", None),
    ]
    ALLOWED_BY_ETCD = [
        ("PUT", "?dir=true&prevExist=true", None),
        ("PUT", "?prevExist=true", {"value": ""}),
        ("DELETE", "?recursive=true", None),
        ("DELETE", "?dir=true&recursive=true", None),
    ]

    def test_refusals_match_etcd(self):
        token = secrets.token_hex(8)
        self.make_token(token)
        for method, query, form in self.REFUSED_BY_ETCD:
            with self.subTest(method=method, query=query):
                e, d = self.both(method, reg_path(token) + query, form)
                self.assertGreaterEqual(e[0], 400, "etcd changed? %r" % (e,))
                self.assertEqual(self.error_of(d), self.error_of(e))
        for base in (self.etcd_url, self.base):
            self.assert_token_intact(base, token)

    def test_what_etcd_allows_disco_refuses_403_107(self):
        for method, query, form in self.ALLOWED_BY_ETCD:
            with self.subTest(method=method, query=query):
                token = secrets.token_hex(8)
                self.make_token(token)
                e, d = self.both(method, reg_path(token) + query, form)
                self.assertEqual(e[0], 200, "etcd changed? %r" % (e,))
                st, code, message, cause = self.error_of(d)
                self.assertEqual((st, code, message), (403, 107, "Root is read only"), d)
                self.assertIn("/_etcd/registry/%s is a token directory" % token, cause)
                self.assert_token_intact(self.base, token)

    def test_token_surface(self):
        token = secrets.token_hex(8)
        self.make_token(token)
        for method, query, form, status, code in (
                ("PUT", "", {"value": "x"}, 403, 102),
                ("PUT", "?dir=true", None, 403, 102),
                ("DELETE", "", None, 403, 102),
                ("DELETE", "?dir=true", None, 403, 108),
                ("DELETE", "?recursive=true", None, 403, 107),
                ("DELETE", "?dir=true&recursive=true", None, 403, 107)):
            with self.subTest(method=method, query=query):
                st, h, body = harness.http(method, "%s/%s%s" % (self.base, token, query), form)
                self.assertEqual(h.get("content-type"), "application/json", body)
                self.assertEqual((st, json.loads(body)["errorCode"]), (status, code), body)
        self.assert_token_intact(self.base, token)


class TestTokenBudget(unittest.TestCase):
    """Issue 11: a token made through the v2 keys path takes from the same
    per-address budget as /new; member writes do not."""

    disco = None

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-api-budget-")
        cls.disco, cls.base = harness.start_disco(
            cls.workdir, ("--new-rate", str(NEW_RATE), "--new-burst", str(NEW_BURST)))

    @classmethod
    def tearDownClass(cls):
        rc = cls.disco.stop() if cls.disco else 0
        cls.disco = None
        shutil.rmtree(cls.workdir, ignore_errors=True)
        if rc != 0:
            raise AssertionError("disco did not stop cleanly: exit %r" % rc)

    def test_v2_token_creation_is_rate_limited(self):
        attempts = 12
        started = time.monotonic()
        made, limited = [], None
        for _ in range(attempts):
            token = secrets.token_hex(8)
            st, h, body = harness.http("PUT", self.base + reg_path(token, "_config/size"),
                                       {"value": "3"})
            if st == 201:
                made.append(token)
            else:
                limited = (st, h, body)
        elapsed = time.monotonic() - started
        # the bucket refills NEW_RATE a second while the loop runs
        self.assertLessEqual(len(made), NEW_BURST + NEW_RATE * (int(elapsed) + 1),
                             "v2 token creation bypasses the /new budget")
        self.assertIsNotNone(limited)
        st, h, body = limited
        self.assertEqual(st, 429, body)
        self.assertGreaterEqual(int(h.get("retry-after", "0")), 1)
        self.assertEqual(h.get("content-type"), "application/json")
        self.assertIn("x-etcd-index", h)
        obj = json.loads(body)
        self.assertEqual(obj["errorCode"], 300)
        self.assertIn("too many new tokens", obj["cause"])
        # the same budget: /new is limited now too
        st, _, body = harness.http("GET", self.base + "/new")
        self.assertEqual(st, 429, body)
        # member writes and reads never take from it
        self.assertTrue(made)
        for i in range(2 * NEW_BURST):
            st, _, body = harness.http("PUT", self.base + reg_path(made[0], "m%d" % i),
                                       {"value": MEMBER1})
            self.assertEqual(st, 201, body)
        # a second write of an existing token's size is 412/105, not 429
        st, _, body = harness.http("PUT", self.base + reg_path(made[0], "_config/size"),
                                   {"value": "3"})
        self.assertEqual((st, json.loads(body)["errorCode"]), (412, 105), body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
