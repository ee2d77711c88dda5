#!/usr/bin/env python3
"""End-to-end: real etcd 3.4 members bootstrap through a real disco process.

Run:  python3 tests/e2e/test_bootstrap.py        (exit code 0 on success)

Each test starts its own discovery service and its own members on loopback
ports chosen at run time, in its own temporary directory, and stops every
process it started by PID.  On failure the tail of every log is printed.

The discovery service under test is chosen by DISCO_E2E_DISCOVERY:
  disco (default)  build/disco (or $DISCO_BIN) with --host <its base URL>
  etcd             a real single-node etcd 3.4 with --enable-v2 (the reference;
                   /new is emulated by creating a random token with a PUT)
The committed expectations are the ones a real etcd meets; a failure against
disco that also fails against etcd is a test bug, otherwise a disco bug.
"""

import functools
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# Bounds on every wait (seconds).  A discovery long-poll of disco ends after
# --wait-timeout 5s, so members re-ask at least that often.
CLUSTER_FORM_TIMEOUT_S = 30.0
MEMBER_EXIT_TIMEOUT_S = 30.0
PROXY_FALLBACK_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40

TOKEN_RE = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------
# The discovery service under test (switchable)
# --------------------------------------------------------------------------

class _Service:
    """What both discovery services share: a process and the v2 token form."""

    def create_v2_token(self, test, name, size):
        """PUT /v2/keys/_etcd/registry/<name>/_config/size value=N; returns the discovery URL."""
        durl = "%s/v2/keys/_etcd/registry/%s" % (self.base_url, name)
        status, _, body = harness.http("PUT", durl + "/_config/size", {"value": str(size)})
        test.assertEqual(status, 201, "PUT %s/_config/size answered %d: %r" % (durl, status, body))
        return durl

    def alive(self):
        return self.proc.alive()


class DiscoService(_Service):
    """disco serve, started with --host <base_url> so /new prints a reachable URL."""
    kind = "disco"

    def __init__(self, workdir):
        self.proc, self.base_url = harness.start_disco(workdir, ("--host", "{base_url}"))

    def new_token(self, test, size):
        """GET /new?size=N; checks the answer's shape; returns the discovery URL."""
        status, headers, body = harness.http("GET", "%s/new?size=%d" % (self.base_url, size))
        test.assertEqual(status, 200, "GET /new?size=%d answered %d: %r" % (size, status, body))
        test.assertTrue(headers.get("content-type", "").startswith("text/plain"),
                        "GET /new content-type: %r" % headers.get("content-type"))
        text = body.decode()
        test.assertRegex(text, r"\A" + re.escape(self.base_url) + r"/[0-9a-f]{32}\Z",
                         "GET /new body must be exactly <host>/<token>")
        return text


class EtcdReferenceService(_Service):
    """A real etcd v2 store as the discovery service (for developing the tests)."""
    kind = "etcd"

    def __init__(self, workdir):
        self.proc, self.base_url = harness.start_etcd_v2(workdir)

    def new_token(self, test, size):
        return self.create_v2_token(test, uuid.uuid4().hex, size)


SERVICES = {"disco": DiscoService, "etcd": EtcdReferenceService}


def discovery_service_class():
    kind = os.environ.get("DISCO_E2E_DISCOVERY", "disco")
    if kind not in SERVICES:
        raise SystemExit("DISCO_E2E_DISCOVERY must be one of %s" % sorted(SERVICES))
    return SERVICES[kind]


def token_of(discovery_url):
    """The registry directory name: last path component of the discovery URL."""
    return discovery_url.rstrip("/").rsplit("/", 1)[1]


# --------------------------------------------------------------------------
# Test base
# --------------------------------------------------------------------------

def dump_logs_on_failure(method):
    """Print the tail of every process log if the test raises (fails or errors)."""
    @functools.wraps(method)
    def wrapper(self, *a, **kw):
        try:
            return method(self, *a, **kw)
        except BaseException:
            self.print_logs()
            raise
    return wrapper


class Member:
    def __init__(self, name, proc, peer_url, client_url, discovery_url, extra_args):
        self.name, self.proc = name, proc
        self.peer_url, self.client_url = peer_url, client_url
        self.discovery_url, self.extra_args = discovery_url, tuple(extra_args)

    def port(self, url):
        return int(url.rsplit(":", 1)[1])


class BootstrapTestCase(unittest.TestCase):

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="disco-e2e-")
        if os.environ.get("DISCO_E2E_KEEP") != "1":
            self.addCleanup(shutil.rmtree, self.workdir, True)
        self.procs = []  # everything started, for logs and cleanup
        self.addCleanup(self._stop_all)
        self.service = discovery_service_class()(self.workdir)
        self.procs.append(self.service.proc)

    def _stop_all(self):
        for p in reversed(self.procs):
            p.stop()

    def print_logs(self):
        out = sys.stderr
        for p in self.procs:
            lines = p.log().splitlines()
            out.write("\n----- %s (pid %d, rc %r) %s: last %d of %d lines -----\n"
                      % (p.name, p.pid, p.returncode, p.log_path,
                         min(len(lines), LOG_TAIL_LINES), len(lines)))
            out.write("\n".join(lines[-LOG_TAIL_LINES:]) + "\n")
        out.flush()

    # ---- members ----

    def start_member(self, name, discovery_url, extra_args=(), like=None):
        """Start a member; `like` restarts an earlier member with the same flags and ports."""
        kw = {}
        if like is not None:
            kw = dict(peer_port=like.port(like.peer_url), client_port=like.port(like.client_url))
        proc, peer_url, client_url = harness.start_etcd_member(
            self.workdir, name, discovery_url, extra_args, **kw)
        self.procs.append(proc)
        return Member(name, proc, peer_url, client_url, discovery_url, extra_args)

    def start_members(self, prefix, count, discovery_url, extra_args=()):
        return [self.start_member("%s%d" % (prefix, i), discovery_url, extra_args)
                for i in range(count)]

    def member_list(self, member):
        """`etcdctl member list -w json` on one member: the parsed JSON, or None."""
        rc, out, _ = harness.etcdctl(member.client_url, "member", "list", "-w", "json",
                                     timeout=6)
        if rc != 0:
            return None
        return json.loads(out)

    def wait_cluster(self, members, size, ask=None):
        """Wait until every member in `ask` (default: all `members`) answers
        `member list` with `size` started members, all answers agree, and the
        list is exactly `members` (names and peer URLs); returns
        {id: (name, (peerURL,...))} of that cluster."""
        ask = members if ask is None else ask

        def agreed():
            for m in ask:
                if not m.proc.alive():
                    raise harness.StopWaiting("member %s exited with %r while bootstrapping"
                                              % (m.name, m.proc.returncode))
            views = []
            for m in ask:
                lst = self.member_list(m)
                if lst is None:
                    return None
                ms = lst.get("members", [])
                # a member not yet started has no name; wait for all names
                if len(ms) != size or any(not x.get("name") for x in ms):
                    return None
                views.append((lst["header"]["cluster_id"],
                              {x["ID"]: (x["name"], tuple(sorted(x["peerURLs"]))) for x in ms}))
            return views

        try:
            views = harness.wait_until(agreed, CLUSTER_FORM_TIMEOUT_S, interval=0.5,
                                       what="%d members to agree on a member list" % size)
        except (TimeoutError, harness.StopWaiting) as e:
            self.fail(str(e))
        cluster_ids = {cid for cid, _ in views}
        self.assertEqual(len(cluster_ids), 1, "members report different cluster ids: %r" % views)
        first = views[0][1]
        for (_, v), m in zip(views, ask):
            self.assertEqual(v, first, "member %s sees another member list" % m.name)
        expected = {m.name: (m.peer_url,) for m in members}
        self.assertEqual({name: peers for name, peers in first.values()}, expected,
                         "member list names/peer URLs differ from the members started")
        return first

    def wait_exit(self, member, timeout=MEMBER_EXIT_TIMEOUT_S):
        rc = member.proc.wait(timeout)
        self.assertIsNotNone(rc, "member %s still running after %.0fs" % (member.name, timeout))
        return rc

    # ---- the discovery registry ----

    def listing(self, discovery_url):
        """GET the token directory; returns {key: value} of its children."""
        status, headers, body = harness.http("GET", discovery_url)
        self.assertEqual(status, 200, "GET %s answered %d: %r" % (discovery_url, status, body))
        self.assertTrue(headers.get("content-type", "").startswith("application/json"),
                        "listing content-type %r" % headers.get("content-type"))
        self.assertIn("x-etcd-index", headers, "listing lacks X-Etcd-Index")
        doc = json.loads(body)
        self.assertEqual(doc.get("action"), "get", body)
        node = doc["node"]
        self.assertEqual(node.get("key"), "/_etcd/registry/" + token_of(discovery_url), body)
        self.assertIs(node.get("dir"), True, body)
        return {n["key"]: n.get("value") for n in node.get("nodes", [])}

    def assert_listing_is_cluster(self, discovery_url, cluster):
        """The token's listing holds exactly one key per cluster member, keyed by
        the member id in hex, valued name=peerURL; nothing else (no _config)."""
        prefix = "/_etcd/registry/%s/" % token_of(discovery_url)
        expected = {prefix + format(mid, "x"): "%s=%s" % (name, ",".join(peers))
                    for mid, (name, peers) in cluster.items()}
        self.assertEqual(self.listing(discovery_url), expected,
                         "discovery listing does not match the cluster's members")

    def assert_service_alive(self):
        self.assertTrue(self.service.alive(), "discovery service %s exited with %r"
                        % (self.service.proc.name, self.service.proc.returncode))


# --------------------------------------------------------------------------
# The scenarios
# --------------------------------------------------------------------------

class TestBootstrap(BootstrapTestCase):

    @dump_logs_on_failure
    def test_1_three_members_bootstrap_through_new_token(self):
        durl = self.service.new_token(self, 3)
        members = self.start_members("a", 3, durl)
        cluster = self.wait_cluster(members, 3)
        self.assertEqual(sorted(n for n, _ in cluster.values()), ["a0", "a1", "a2"])
        self.assert_listing_is_cluster(durl, cluster)
        # the token URL with a trailing slash is the same directory
        self.assertEqual(self.listing(durl + "/"), self.listing(durl))
        self.assert_service_alive()

    @dump_logs_on_failure
    def test_2_extra_member_falls_back_to_proxy(self):
        durl = self.service.new_token(self, 3)
        members = self.start_members("b", 3, durl)
        cluster = self.wait_cluster(members, 3)

        extra = self.start_member("b3", durl)  # default --discovery-fallback=proxy
        try:
            harness.wait_until(lambda: "falling back to proxy" in extra.proc.log()
                               or not extra.proc.alive(),
                               PROXY_FALLBACK_TIMEOUT_S, what="b3 to fall back to proxy")
        except TimeoutError as e:
            self.fail(str(e))
        log = extra.proc.log()
        self.assertIn("cluster is full", log)
        self.assertIn("falling back to proxy", log)
        try:
            harness.wait_until(lambda: "proxy started listening" in extra.proc.log()
                               or not extra.proc.alive(),
                               PROXY_FALLBACK_TIMEOUT_S, what="b3's proxy to listen")
        except TimeoutError as e:
            self.fail(str(e))
        self.assertTrue(extra.proc.alive(), "b3 should keep running as a proxy, exited %r"
                        % extra.proc.returncode)
        self.assertIn("proxy started listening", extra.proc.log())
        # the proxy found the members' peer URLs through the discovery listing,
        # and their client URLs through those peers
        for m in members:
            self.assertIn(m.peer_url, extra.proc.log(), "proxy does not know %s" % m.name)
            self.assertIn(m.client_url, extra.proc.log(), "proxy does not know %s" % m.name)

        # the cluster still has exactly the 3 original members, on every member
        self.assertEqual(self.wait_cluster(members, 3), cluster)
        # and the extra member never registered
        self.assert_listing_is_cluster(durl, cluster)
        self.assert_service_alive()

    @dump_logs_on_failure
    def test_3_five_members_through_v2_keys_url(self):
        name = uuid.uuid4().hex
        durl = self.service.create_v2_token(self, name, 5)
        self.assertTrue(durl.endswith("/v2/keys/_etcd/registry/" + name))
        members = self.start_members("c", 5, durl)  # all at once
        cluster = self.wait_cluster(members, 5)
        self.assertEqual(sorted(n for n, _ in cluster.values()), ["c%d" % i for i in range(5)])
        self.assert_listing_is_cluster(durl, cluster)
        self.assert_service_alive()

    @dump_logs_on_failure
    def test_4_wiped_member_is_refused_as_duplicate_id(self):
        durl = self.service.new_token(self, 3)
        members = self.start_members("d", 3, durl)
        cluster = self.wait_cluster(members, 3)

        victim = members[2]
        victim.proc.stop()
        self.assertFalse(victim.proc.alive())
        data_dir = os.path.join(self.workdir, victim.name + ".etcd")
        self.assertTrue(os.path.isdir(data_dir))
        shutil.rmtree(data_dir)

        again = self.start_member(victim.name, durl, victim.extra_args, like=victim)
        self.assertEqual((again.peer_url, again.client_url), (victim.peer_url, victim.client_url))
        rc = self.wait_exit(again)
        self.assertNotEqual(rc, 0, "re-registering member must exit non-zero")
        self.assertRegex(again.proc.log(),
                         r"(?i)duplicate id|previously registered|has been registered")

        # the refusal the member got: the same create again is 412 / errorCode 105
        victim_id = [mid for mid, (n, _) in cluster.items() if n == victim.name][0]
        key_url = "%s/%s?prevExist=false" % (durl, format(victim_id, "x"))
        status, headers, body = harness.http(
            "PUT", key_url, {"value": "%s=%s" % (victim.name, victim.peer_url)})
        self.assertEqual(status, 412, "PUT %s: %d %r" % (key_url, status, body))
        self.assertTrue(headers.get("content-type", "").startswith("application/json"))
        err = json.loads(body)
        self.assertEqual(err.get("errorCode"), 105, body)
        self.assertEqual(err.get("cause"), "/_etcd/registry/%s/%s"
                         % (token_of(durl), format(victim_id, "x")), body)

        # the registry is unchanged and the two survivors still have 3 members
        self.assert_listing_is_cluster(durl, cluster)
        self.assertEqual(self.wait_cluster(members, 3, ask=members[:2]), cluster)
        self.assert_service_alive()

    @dump_logs_on_failure
    def test_5_stale_token_does_not_form_a_second_cluster(self):
        durl = self.service.new_token(self, 3)
        old = self.start_members("e", 3, durl)
        cluster = self.wait_cluster(old, 3)
        for m in old:
            m.proc.stop()
        self.assertFalse(any(m.proc.alive() for m in old), "old members still running")

        new = self.start_members("f", 3, durl, ("--discovery-fallback", "exit"))
        for m in new:
            rc = self.wait_exit(m)
            self.assertNotEqual(rc, 0, "%s on a stale token must exit non-zero" % m.name)
            self.assertIn("cluster is full", m.proc.log(), "%s log" % m.name)
            self.assertNotIn("duplicate id", m.proc.log())
        # none of the new members registered
        self.assert_listing_is_cluster(durl, cluster)
        self.assert_service_alive()


if __name__ == "__main__":
    t0 = time.monotonic()
    prog = unittest.main(exit=False, verbosity=2)
    sys.stderr.write("total %.1fs against %s\n"
                     % (time.monotonic() - t0, discovery_service_class().kind))
    sys.exit(0 if prog.result.wasSuccessful() else 1)
