#!/usr/bin/env python3
"""The token page: what a browser gets at /<token>, and what everyone else keeps getting.

Run:  DISCO_BIN=build/disco python3 tests/e2e/test_page.py -v

JsonClientsTest (no browser): a request that does not prefer HTML -- no Accept
(etcd's Go client), curl's "*/*", fetch()'s default, application/json, a tie
between text/html and JSON, any request with a query -- gets etcd's JSON, byte
for byte the answer it got before the page existed, and the same JSON a real
etcd 3.4 v2 store gives for the same registrations (indexes compared as
offsets from the token's creation).

ChromiumPageTest: the page in a real headless Chromium (Debian's `chromium`),
driven over the DevTools protocol on a pipe (--remote-debugging-pipe: no
debugging port is opened), loading only 127.0.0.1: the waiting, complete and
over-full states, a live update after a registration (across a --wait-timeout
with no event), and a member value full of markup shown as text with no
script run. A screenshot of each state is kept under the build directory
(<dir of DISCO_BIN>/test-artifacts/page/). The class skips, saying why, when
no chromium is installed or it cannot start; it is bounded to
CHROMIUM_BUDGET_S.

DISCO_PAGE_KEEP=1 keeps the Chromium tests' directory (disco's and
chromium's logs).
"""

import atexit
import base64
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REGISTRY = "/v2/keys/_etcd/registry/"
BROWSER_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                  "image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
# Accept headers that must keep getting JSON (None: no header at all).
JSON_ACCEPTS = [None, "*/*", "application/json", "text/html, application/json",
                "text/html;q=0.5, */*;q=0.5", "application/json, text/html;q=0.9",
                "text/html;q=0", "text/*", "text/html;q=bogus"]

# The whole Chromium class; a disco under a wrapper (valgrind: `make
# valgrind`) answers many times slower, and gets three times as long.
CHROMIUM_BUDGET_S = 60.0 * (3 if harness.disco_wrapper() else 1)
CHROMIUM_START_TIMEOUT_S = 20.0
CDP_CALL_TIMEOUT_S = 15.0
PAGE_WAIT_TIMEOUT_S = 15.0


def artifact_dir():
    d = os.path.join(os.path.dirname(os.path.abspath(harness.disco_bin())),
                     "test-artifacts", "page")
    os.makedirs(d, exist_ok=True)
    return d


def new_token(base, size):
    status, _, body = harness.http("GET", base + "/new?size=%d" % size)
    assert status == 200, (status, body)
    return body.decode().rsplit("/", 1)[1]


def register(base, token, member_id, value):
    status, _, body = harness.http("PUT", "%s/%s/%s" % (base, token, member_id),
                                   body={"value": value})
    assert status in (200, 201), (status, body)


# ---- JSON clients ----------------------------------------------------------

def normalise(body, created):
    """etcd's JSON with every index as an offset from the token's creation,
    and children in key order (an unsorted etcd listing is in Go map order)."""
    def walk(x):
        if isinstance(x, dict):
            return {k: ("c+%d" % (v - created) if k in ("createdIndex", "modifiedIndex")
                        else sorted(walk(v), key=lambda n: n["key"]) if k == "nodes"
                        else walk(v)) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x
    return walk(json.loads(body))


class JsonClientsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="disco-page-json-")
        cls.disco, cls.base = harness.start_disco(cls.workdir)
        cls.etcd = None
        if os.access(harness.ETCD_BIN, os.X_OK):
            cls.etcd, cls.etcd_url = harness.start_etcd_v2(cls.workdir)

    @classmethod
    def tearDownClass(cls):
        cls.disco.stop()
        if cls.etcd:
            cls.etcd.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def setup_both(self, values):
        """The same token (size 2) and registrations on disco and on etcd;
        returns (token, disco's creation index, etcd's creation index)."""
        token = secrets.token_hex(16)
        created = {}
        for name, base, prefix in (("disco", self.base, "/v2/keys/_etcd/registry/"),
                                   ("etcd", getattr(self, "etcd_url", None), REGISTRY)):
            if base is None:
                continue
            status, _, body = harness.http("PUT", base + prefix + token + "/_config/size",
                                           body={"value": "2"})
            self.assertEqual(status, 201, (name, body))
            created[name] = json.loads(body)["node"]["createdIndex"]
            for i, v in enumerate(values):
                status, _, body = harness.http("PUT", "%s%s%s/m%d" % (base, prefix, token, i),
                                               body={"value": v})
                self.assertEqual(status, 201, (name, body))
        return token, created

    def test_json_accepts_get_the_same_bytes_as_etcd(self):
        values = ["m0=http://127.0.0.1:2380", "m1=http://127.0.0.1:2381", "<b>x</b>=y"]
        token, created = self.setup_both(values)
        answers = {}
        for accept in JSON_ACCEPTS:
            headers = {"Accept": accept} if accept is not None else {}
            for path in ("/" + token, "/" + token + "?recursive=true",
                         "/" + token + "/m0", "/" + token + "?wait=true&waitIndex=1"):
                status, h, body = harness.http("GET", self.base + path, headers=headers)
                self.assertEqual(status, 200, (accept, path, body))
                self.assertEqual(h.get("content-type"), "application/json", (accept, path))
                self.assertNotIn("vary", h)
                answers.setdefault(path, set()).add(body)
        for path, bodies in answers.items():
            self.assertEqual(len(bodies), 1, "different bytes for different Accept: %s" % path)
        # A browser's Accept gets JSON as soon as it asks for more than the
        # bare token (a query, a key below it, the v2 keys path).
        for path in ("/" + token + "?recursive=true", "/" + token + "/m0",
                     REGISTRY + token):
            status, h, body = harness.http("GET", self.base + path,
                                           headers={"Accept": BROWSER_ACCEPT})
            self.assertEqual(h.get("content-type"), "application/json", path)
        if self.etcd is None:
            self.skipTest("no etcd at %s: compared with disco's own answers only"
                          % harness.ETCD_BIN)
        for path in ("/" + token, "/" + token + "/m0"):
            (disco_body,) = answers[path]
            status, _, etcd_body = harness.http("GET", self.etcd_url + REGISTRY + path[1:])
            self.assertEqual(status, 200)
            self.assertEqual(normalise(disco_body, created["disco"]),
                             normalise(etcd_body, created["etcd"]), path)

    def test_browser_gets_html_and_others_not_on_unknown_token(self):
        token = secrets.token_hex(16)
        status, h, body = harness.http("GET", self.base + "/" + token)
        self.assertEqual((status, h.get("content-type")), (404, "application/json"))
        self.assertEqual(json.loads(body)["errorCode"], 100)
        status, h, body = harness.http("GET", self.base + "/" + token,
                                       headers={"Accept": BROWSER_ACCEPT})
        self.assertEqual(status, 404)
        self.assertTrue(h.get("content-type", "").startswith("text/html"))
        self.assertIn(b"No such token", body)
        self.assertIn(b"100: Key not found", body)

    def test_accept_headers_are_read_together(self):
        # Two Accept headers are one list (RFC 9110): HTML wins only if it
        # does across both; a kept-alive connection forgets the last one's.
        token = new_token(self.base, 3)
        conn = harness.RawConn(self.base)
        try:
            conn.request("GET", "/" + token, headers=("Accept: */*;q=0.1", "Accept: text/html"))
            a = conn.read_answer()
            self.assertEqual(a.status, 200)
            self.assertTrue(a.headers["content-type"].startswith("text/html"), a)
            conn.request("GET", "/" + token, headers=("Accept: text/html", "Accept: */*"))
            self.assertEqual(conn.read_answer().headers["content-type"], "application/json")
            conn.request("GET", "/" + token)
            self.assertEqual(conn.read_answer().headers["content-type"], "application/json")
        finally:
            conn.close()

    def test_v3_members_are_listed(self):
        # etcd 3.6+ registers through the v3 API: <token>/members/<id>.
        token = new_token(self.base, 2)
        endpoint = self.base[len("http://"):]
        for mid, value in (("a1", "infra0=http://10.0.0.1:2380"),
                           ("b2", "infra1=http://10.0.0.2:2380"),
                           ("c3", "infra2=http://10.0.0.3:2380")):
            rc, out, err = harness.etcdctl(endpoint, "put",
                                           "/_etcd/registry/%s/members/%s" % (token, mid), value)
            self.assertEqual(rc, 0, err)
        status, h, body = harness.http("GET", self.base + "/" + token,
                                       headers={"Accept": BROWSER_ACCEPT})
        self.assertEqual(status, 200, body)
        page = body.decode()
        for mid, name in (("a1", "infra0"), ("b2", "infra1"), ("c3", "infra2")):
            self.assertIn(mid, page)
            self.assertIn(name, page)
        self.assertIn("This token serves v3 members", page)
        self.assertIn("More registrations than size", page)
        self.assertNotIn(">members<", page)  # the directory itself is no row

    def test_head_of_the_page(self):
        token = new_token(self.base, 3)
        status, h, body = harness.http("HEAD", self.base + "/" + token,
                                       headers={"Accept": BROWSER_ACCEPT})
        self.assertEqual(status, 200)
        self.assertTrue(h.get("content-type", "").startswith("text/html"))
        self.assertEqual(body, b"")
        self.assertIn("nonce-", h.get("content-security-policy", ""))

    def test_form_post_goes_to_the_new_page(self):
        status, h, body = harness.http("POST", self.base + "/new", body={"size": "5"},
                                       headers={"Accept": BROWSER_ACCEPT})
        self.assertEqual(status, 303, body)
        token = body.decode().rsplit("/", 1)[1]
        self.assertEqual(h.get("location"), "/" + token)
        # a script's POST keeps the plain answer
        status, h, body = harness.http("POST", self.base + "/new", body={"size": "5"})
        self.assertEqual(status, 200)
        self.assertNotIn("location", h)

    def test_front_page_shows_the_real_prefix(self):
        status, h, body = harness.http("GET", self.base + "/")
        self.assertEqual(status, 200)
        self.assertIn(self.base.encode() + b"/new?size=3", body)
        self.assertIn(b'action="/new"', body)


# ---- Chromium ----------------------------------------------------------------

def find_chromium():
    for name in (os.environ.get("CHROMIUM_BIN"), "chromium", "chromium-browser"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


class CdpError(Exception):
    """Chromium answered a DevTools call with an error."""


class BrowserGone(harness.StopWaiting):
    """Chromium closed its end of the pipe: nothing more will come."""


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe: it
    reads NUL-terminated JSON commands on fd 3 and writes answers and events
    on fd 4. Started in its own process group; stop() ends that group by its
    id."""

    def __init__(self, binary, workdir):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.log_path = os.path.join(workdir, "chromium.log")
        log = open(self.log_path, "ab")

        def wire_fds():  # in the child, before exec: the pipe ends become fds 3 and 4
            # copies above 10 first, so that neither dup2 clobbers the other end
            r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
            w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(r, 3)  # inheritable: survives exec
            os.dup2(w, 4)

        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking",
                "--remote-debugging-pipe",
                "--user-data-dir=" + os.path.join(workdir, "chromium-profile"),
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-sync", "--disable-component-update", "--disable-default-apps",
                "--no-proxy-server",
                # any name but loopback fails to resolve: nothing leaves the machine
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--window-size=1100,1400", "about:blank"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=harness.clean_env(),
                                     close_fds=False, preexec_fn=wire_fds,
                                     start_new_session=True)
        log.close()
        os.close(to_child_r)
        os.close(from_child_w)
        atexit.register(self.stop)
        self._next_id = 0
        self._buf = b""
        self.deadline = None  # monotonic instant no call may wait past

    def _send(self, msg):
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self._to_child, data)
            data = data[n:]

    def _read_message(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 65536)
                if not chunk:
                    raise BrowserGone("chromium closed its DevTools pipe (exited?)")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=CDP_CALL_TIMEOUT_S):
        if self.deadline is not None:  # no call outlives the class's budget
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the Chromium tests used up their %.0f s" % CHROMIUM_BUDGET_S)
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") != self._next_id:
                continue  # an event, or the answer to an abandoned call
            if "error" in answer:
                raise CdpError("%s: %s" % (method, answer["error"]))
            return answer.get("result", {})

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=3)
            except Exception:  # best effort; the group is signalled below
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # helpers left in its group
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._to_child = self._from_child = -1

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-3000:]


class Tab:
    """One page target of a Chromium, attached with a flat session."""

    def __init__(self, browser):
        self.b = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget",
                                    {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")

    def call(self, method, params=None, timeout=CDP_CALL_TIMEOUT_S):
        return self.b.call(method, params, session=self.session, timeout=timeout)

    def navigate(self, url):
        assert url.startswith("http://127.0.0.1:"), url
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError("navigation to %s failed: %s" % (url, result["errorText"]))
        self.wait_for("document.readyState === 'complete'", "the page to load")

    def eval(self, expression):
        """The value of a JS expression in the page, or None while a
        navigation (the page reloading itself) has no context to run it."""
        try:
            r = self.call("Runtime.evaluate", {"expression": expression,
                                               "returnByValue": True})
        except CdpError:
            return None
        if "exceptionDetails" in r:
            return None
        return r.get("result", {}).get("value")

    def wait_for(self, expression, what, timeout=PAGE_WAIT_TIMEOUT_S):
        timeout = max(0.0, min(timeout, self.b.deadline - time.monotonic()))
        return harness.wait_until(lambda: self.eval(expression), timeout, interval=0.1,
                                  what=what)

    def facts(self):
        """What the page shows, read from its DOM (text, never HTML)."""
        return self.eval("""(function () {
          function text(id) { var e = document.getElementById(id); return e ? e.textContent : null; }
          var rows = Array.prototype.map.call(document.querySelectorAll('#members tbody tr'),
            function (tr) { return {cls: tr.className,
                                    role: tr.querySelector('.role').textContent,
                                    name: tr.querySelector('.name').textContent,
                                    peers: tr.querySelector('.peers').textContent}; });
          return {state: text('state'), stateClass: (document.getElementById('state') || {}).className,
                  next: text('next'), url: text('url'), size: text('size'),
                  created: text('created'), expires: text('expires'),
                  butane: text('butane'), v2: text('flags-v2'), v3: text('flags-v3'),
                  live: text('live'), rows: rows, title: document.title,
                  hasNewForm: !!document.querySelector('form[action="/new"]')};
        })()""")

    def screenshot(self, name):
        data = self.call("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": True})["data"]
        path = os.path.join(artifact_dir(), name + ".png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path


class ChromiumPageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.started = time.monotonic()
        binary = find_chromium()
        if not binary:
            raise unittest.SkipTest("no chromium installed (Debian package `chromium`, "
                                    "in the Makefile's CHECK_DEPS): the token page is not "
                                    "checked in a browser")
        cls.workdir = tempfile.mkdtemp(prefix="disco-page-chromium-")
        # A short --wait-timeout: the page's long-poll sees empty answers and
        # must keep polling.
        cls.disco, cls.base = harness.start_disco(cls.workdir, wait_timeout="1s")
        cls.browser = Chromium(binary, cls.workdir)
        cls.browser.deadline = cls.started + CHROMIUM_BUDGET_S
        try:
            cls.browser.call("Browser.getVersion", timeout=CHROMIUM_START_TIMEOUT_S)
            cls.tab = Tab(cls.browser)
        except (CdpError, BrowserGone, TimeoutError, OSError) as e:
            log = cls.browser.log()
            cls.browser.stop()
            cls.disco.stop()
            raise unittest.SkipTest("chromium cannot start here (%s); its log:\n%s" % (e, log))

    @classmethod
    def tearDownClass(cls):
        cls.browser.stop()
        cls.disco.stop()
        elapsed = time.monotonic() - cls.started
        sys.stderr.write("chromium tests: %.1f s\n" % elapsed)
        if not os.environ.get("DISCO_PAGE_KEEP"):
            shutil.rmtree(cls.workdir, ignore_errors=True)
        assert elapsed < CHROMIUM_BUDGET_S, "the Chromium tests took %.1f s" % elapsed

    def open(self, token):
        self.tab.navigate("%s/%s" % (self.base, token))
        return self.tab.facts()

    def test_waiting(self):
        token = new_token(self.base, 3)
        register(self.base, token, "a1", "infra0=http://10.0.1.10:2380")
        f = self.open(token)
        self.assertEqual(f["stateClass"], "state waiting")
        self.assertIn("Waiting for 2 more", f["state"])
        self.assertIn("1 of 3", f["state"])
        self.assertEqual(f["url"], "%s/%s" % (self.base, token))
        self.assertEqual(f["size"], "3")
        self.assertRegex(f["created"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
        self.assertIn("removed after", f["expires"])
        self.assertEqual([(r["role"], r["name"], r["peers"]) for r in f["rows"]],
                         [("member", "infra0", "http://10.0.1.10:2380")])
        self.assertIn('--discovery="%s/%s"' % (self.base, token), f["butane"])
        self.assertIn("variant: flatcar", f["butane"])
        self.assertEqual(f["v2"], "--discovery=%s/%s" % (self.base, token))
        self.assertIn("--discovery-token=" + token, f["v3"])
        self.assertIn("--discovery-endpoints=127.0.0.1:", f["v3"])
        self.tab.screenshot("waiting")

    def test_complete(self):
        token = new_token(self.base, 2)
        register(self.base, token, "a1", "infra0=http://10.0.1.10:2380")
        register(self.base, token, "a2", "infra1=http://10.0.1.11:2380,infra1=http://10.0.2.11:2380")
        f = self.open(token)
        self.assertEqual(f["stateClass"], "state complete")
        self.assertRegex(f["state"], r"^Complete since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
        self.assertIn("stale token", f["next"])
        self.assertTrue(f["hasNewForm"])
        self.assertEqual([(r["role"], r["name"]) for r in f["rows"]],
                         [("member", "infra0"), ("member", "infra1")])
        self.assertEqual(f["rows"][1]["peers"], "http://10.0.1.11:2380http://10.0.2.11:2380")
        self.tab.screenshot("complete")

    def test_over_full(self):
        token = new_token(self.base, 2)
        for i in range(4):
            register(self.base, token, "m%d" % i, "n%d=http://10.0.0.%d:2380" % (i, i))
        f = self.open(token)
        self.assertEqual(f["stateClass"], "state overfull")
        self.assertIn("More registrations than size", f["state"])
        self.assertIn("4 registered for a size of 2", f["state"])
        self.assertEqual([(r["cls"], r["role"], r["name"]) for r in f["rows"]],
                         [("member", "member", "n0"), ("member", "member", "n1"),
                          ("extra", "extra (proxy)", "n2"), ("extra", "extra (proxy)", "n3")])
        path = self.tab.screenshot("over-full")
        with open(path, "rb") as png:
            self.assertEqual(png.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(path), 10000)

    def test_live_update_after_a_registration(self):
        token = new_token(self.base, 2)
        register(self.base, token, "a1", "first=http://10.0.0.1:2380")
        f = self.open(token)
        self.assertIn("Waiting for 1 more", f["state"])
        self.tab.eval("window.discoTestMarker = 1")
        # Longer than --wait-timeout: the page's long-poll is answered empty
        # at least once and must ask again.
        time.sleep(2.5)
        self.assertEqual(self.tab.eval("window.discoTestMarker"), 1, "reloaded with no change")
        register(self.base, token, "a2", "second=http://10.0.0.2:2380")
        self.tab.wait_for("document.getElementById('state') && "
                          "document.getElementById('state').textContent"
                          ".indexOf('Complete since') === 0", "the page to show the registration")
        f = self.tab.facts()
        self.assertEqual([r["name"] for r in f["rows"]], ["first", "second"])
        self.assertIsNone(self.tab.eval("window.discoTestMarker"), "updated without a reload?")

    def test_markup_in_a_member_is_text(self):
        token = new_token(self.base, 1)
        # etcd splits a value at its first '=': the name part has none, the
        # peer URL part carries the attributes.
        name = '<b>bold</b><i>it</i><script>document.body.remove()</script>&amp;"\''
        peer = ('http://x/"><img src=x onerror="window.pwned=1">'
                '<svg onload="window.pwned=2"><script>window.pwned=3</script>')
        register(self.base, token, "evil", name + "=" + peer)
        f = self.open(token)
        self.assertEqual(f["rows"][0]["name"], name)
        self.assertEqual(f["rows"][0]["peers"], peer)
        self.assertEqual(self.tab.eval("document.querySelectorAll('#members b, #members i, "
                                       "#members img, #members svg, #members script').length"),
                         0)
        time.sleep(0.3)  # an onerror or onload would have run by now
        self.assertEqual(self.tab.eval("typeof window.pwned"), "undefined")
        self.tab.screenshot("markup")

    def test_front_page_form_makes_a_token_and_opens_its_page(self):
        self.tab.navigate(self.base + "/")
        prefix = self.tab.eval("document.getElementById('prefix').textContent")
        self.assertEqual(prefix, self.base + "/<token>")
        self.tab.eval("document.querySelector('form[action=\"/new\"] input').value = '5';"
                      "document.querySelector('form[action=\"/new\"]').submit(); 1")
        self.tab.wait_for("location.pathname.length > 30 && "
                          "document.getElementById('size') && "
                          "document.readyState === 'complete'", "the new token's page")
        f = self.tab.facts()
        self.assertEqual(f["size"], "5")
        self.assertIn("Waiting for 5 more", f["state"])


if __name__ == "__main__":
    unittest.main()
