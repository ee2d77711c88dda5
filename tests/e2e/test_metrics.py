"""/metrics as Prometheus reads it: the text format parses strictly, the
latency histograms count each answered request once under its endpoint
(long polls that parked left out), the store's sync histograms fill as
writes are made durable, and the discovery counters (registrations,
completed tokens) and the parked-watch gauge follow what members do.

Each class starts its own real disco on a loopback port chosen at run time.
"""

import math
import re
import shutil
import tempfile
import threading
import unittest

import harness

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(r"^(" + NAME + r")(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_labels(text):
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        if not m:
            raise ValueError("bad labels: %r" % text)
        labels[m.group(1)] = m.group(2)
        pos = m.end()
    return labels


def parse(text):
    """Prometheus text format 0.0.4, strictly: every sample belongs to a family
    declared by # HELP and # TYPE before it. Returns {family: {"type", "samples":
    [(name, labels, value)]}}; raises ValueError on anything malformed."""
    families, current = {}, None
    if not text.endswith("\n"):
        raise ValueError("no final newline")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            if name in families:
                raise ValueError("family %s declared twice" % name)
            families[name] = {"type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            if name != current or kind not in ("counter", "gauge", "histogram"):
                raise ValueError("bad TYPE line: %r" % line)
            families[name]["type"] = kind
        elif line.startswith("#") or not line:
            raise ValueError("unexpected line: %r" % line)
        else:
            m = SAMPLE.match(line)
            if not m:
                raise ValueError("bad sample: %r" % line)
            name, labels, value = m.group(1), parse_labels(m.group(2) or ""), float(m.group(3))
            fam = families.get(current)
            if fam is None or fam["type"] is None:
                raise ValueError("sample before its TYPE: %r" % line)
            base = name
            if fam["type"] == "histogram":
                base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base != current:
                raise ValueError("sample %s outside its family %s" % (name, current))
            fam["samples"].append((name, labels, value))
    for name, fam in families.items():
        if fam["type"] == "histogram":
            check_histogram(name, fam["samples"])
    return families


def check_histogram(name, samples):
    series = {}
    for sname, labels, value in samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if sname == name + "_bucket":
            s["buckets"].append((float(labels["le"]), value))
        elif sname == name + "_sum":
            s["sum"] = value
        else:
            s["count"] = value
    for key, s in series.items():
        les = [le for le, _ in s["buckets"]]
        counts = [c for _, c in s["buckets"]]
        if les != sorted(les) or les[-1] != math.inf:
            raise ValueError("%s%r: buckets out of order or no +Inf" % (name, key))
        if counts != sorted(counts):
            raise ValueError("%s%r: buckets not cumulative: %r" % (name, key, counts))
        if s["count"] != counts[-1] or s["sum"] is None or s["sum"] < 0:
            raise ValueError("%s%r: _count %r is not the +Inf bucket %r" % (
                name, key, s["count"], counts[-1]))


def value(families, family, sample=None, **labels):
    for name, l, v in families[family]["samples"]:
        if name == (sample or family) and all(l.get(k) == str(x) for k, x in labels.items()):
            return v
    raise KeyError("%s %r not found" % (sample or family, labels))


class MetricsBase(unittest.TestCase):
    extra_args = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="disco-metrics-")
        cls.proc, cls.base = harness.start_disco(cls.tmp, extra_args=cls.extra_args)

    @classmethod
    def tearDownClass(cls):
        rc = cls.proc.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, "disco exited with %r" % rc

    def metrics(self):
        status, headers, body = harness.http("GET", self.base + "/metrics")
        self.assertEqual(status, 200)
        return parse(body.decode("utf-8"))

    def new_token(self, size):
        status, _, body = harness.http("GET", self.base + "/new?size=%d" % size)
        self.assertEqual(status, 200, body)
        return "/" + body.decode().strip().rsplit("/", 1)[1]

    def count(self, fams, endpoint):
        return value(fams, "disco_request_duration_seconds",
                     "disco_request_duration_seconds_count", endpoint=endpoint)


class Format(MetricsBase):
    def test_parses_with_discovery_etcd_io_names_kept(self):
        harness.http("GET", self.base + "/health")
        fams = self.metrics()
        for name in ("endpoint_new_requests_total", "endpoint_health_requests_total",
                     "endpoint_token_requests_total"):
            self.assertEqual(fams[name]["type"], "counter")
        self.assertGreaterEqual(value(fams, "endpoint_health_requests_total", code=200,
                                      method="get"), 1)
        self.assertEqual(fams["disco_request_duration_seconds"]["type"], "histogram")
        self.assertEqual(fams["disco_store_sync_duration_seconds"]["type"], "histogram")
        for name in ("disco_registrations_total", "disco_tokens_completed_total",
                     "disco_tokens_removed_total"):
            self.assertEqual(fams[name]["type"], "counter", name)
        self.assertEqual(fams["disco_parked_watches"]["type"], "gauge")

    def test_buckets_are_sensible(self):
        fams = self.metrics()
        les = sorted({float(l["le"]) for n, l, _ in
                      fams["disco_request_duration_seconds"]["samples"] if "le" in l})
        self.assertEqual(les[0], 0.0001)
        self.assertIn(0.001, les)
        self.assertEqual(les[-2], 10.0)
        self.assertEqual(les[-1], math.inf)


class Counting(MetricsBase):
    def test_each_answer_counted_once_under_its_endpoint(self):
        token = self.new_token(3)
        before = self.metrics()
        for _ in range(5):
            self.assertEqual(harness.http("GET", self.base + token)[0], 200)
        for i in range(3):
            status, _, body = harness.http(
                "PUT", self.base + "/v2/keys/_etcd/registry" + token[0:] + "/m%d" % i,
                body=b"value=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
            self.assertEqual(status, 201, body)
        self.assertEqual(harness.http("GET", self.base + "/new?size=2")[0], 200)
        self.assertEqual(harness.http("GET", self.base + "/health")[0], 200)
        self.assertEqual(harness.http("GET", self.base + "/v2/keys/no/such")[0], 404)
        after = self.metrics()
        for endpoint, n in (("token", 5), ("v2_keys", 4), ("new", 1), ("health", 1)):
            self.assertEqual(self.count(after, endpoint) - self.count(before, endpoint), n,
                             endpoint)
        sums = {ep: value(after, "disco_request_duration_seconds",
                          "disco_request_duration_seconds_sum", endpoint=ep)
                for ep in ("token", "v2_keys")}
        self.assertGreater(sums["v2_keys"], 0.0)
        self.assertLess(sums["v2_keys"], 60.0, "four writes, seconds of latency at most")
        # The writes were made durable as log frames, and timed.
        self.assertGreater(value(after, "disco_store_sync_duration_seconds",
                                 "disco_store_sync_duration_seconds_count", op="log"), 0)

    def test_parked_watch_is_not_timed_and_is_a_parked_watch(self):
        token = self.new_token(3)
        before = self.metrics()
        result = {}

        def watch():
            result["answer"] = harness.http("GET", self.base + token + "?wait=true",
                                            timeout=30)

        t = threading.Thread(target=watch)
        t.start()
        harness.wait_until(lambda: value(self.metrics(), "disco_parked_watches",
                                         protocol="v2") >= 1, 10, what="a parked watch")
        status, _, _ = harness.http("PUT", self.base + token + "/m1", body=b"value=x",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 201)
        t.join(30)
        self.assertFalse(t.is_alive())
        self.assertEqual(result["answer"][0], 200)
        after = self.metrics()
        # The PUT is timed; the watch that waited for it is counted, not timed.
        self.assertEqual(self.count(after, "token") - self.count(before, "token"), 1)
        counted = sum(v for n, l, v in after["endpoint_token_requests_total"]["samples"]) - sum(
            v for n, l, v in before["endpoint_token_requests_total"]["samples"])
        self.assertEqual(counted, 2)
        self.assertEqual(value(after, "disco_parked_watches", protocol="v2"), 0)


class Discovery(MetricsBase):
    def put(self, path, **kw):
        status, _, body = harness.http("PUT", self.base + path, body=b"value=http://p",
                                       headers={"Content-Type":
                                                "application/x-www-form-urlencoded"}, **kw)
        return status

    def test_registrations_and_completed_tokens(self):
        before = self.metrics()
        token = self.new_token(2)
        self.assertEqual(self.put(token + "/a"), 201)
        mid = self.metrics()
        self.assertEqual(value(mid, "disco_tokens_completed_total")
                         - value(before, "disco_tokens_completed_total"), 0)
        self.assertEqual(self.put(token + "/b"), 201)
        self.assertEqual(self.put(token + "/b"), 200)  # an update: no registration
        self.assertEqual(self.put(token + "/c"), 201)  # an extra: a proxy
        self.assertEqual(self.put(token + "/dir/deeper"), 201)  # not a member
        self.assertGreaterEqual(self.put(token + "/_config/x"), 400)  # refused: counts nothing
        self.assertEqual(self.put("/v2/keys/_etcd/registry" + token + "/_hidden"), 201)
        after = self.metrics()
        self.assertEqual(value(after, "disco_registrations_total")
                         - value(before, "disco_registrations_total"), 3)
        self.assertEqual(value(after, "disco_tokens_completed_total")
                         - value(before, "disco_tokens_completed_total"), 1)


class InMemory(MetricsBase):
    extra_args = ("--data-dir", "")

    def test_no_store_histogram_without_a_store(self):
        fams = self.metrics()
        self.assertNotIn("disco_store_sync_duration_seconds", fams)
        self.assertIn("disco_request_duration_seconds", fams)


if __name__ == "__main__":
    unittest.main()
