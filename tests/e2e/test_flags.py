"""disco serve refuses flag values out of range at startup: exit code 2 and a
message naming the flag, before anything is opened or served."""

import json
import os
import subprocess
import tempfile
import unittest

import harness


class FlagRanges(unittest.TestCase):
    def run_disco(self, *args):
        with tempfile.TemporaryDirectory() as d:
            argv = harness.disco_wrapper() + [harness.disco_bin(), "serve",
                                               "--addr", "127.0.0.1:%d" % harness.free_port(),
                                               "--data-dir", os.path.join(d, "data")] + list(args)
            cp = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=10, env=harness.clean_env())
            return cp.returncode, cp.stderr.decode("utf-8", "replace"), os.path.exists(
                os.path.join(d, "data"))

    def test_minage_overflow_exits_2_naming_the_flag(self):
        rc, err, made_dir = self.run_disco("--minage", "4000000h")
        self.assertEqual(rc, 2, err)
        self.assertIn("--minage", err)
        self.assertFalse(made_dir, "nothing is created before the flags are checked")

    def test_gcfreq_overflow_exits_2(self):
        rc, err, _ = self.run_disco("--gcfreq", "4000000h")
        self.assertEqual(rc, 2, err)
        self.assertIn("--gcfreq", err)

    def test_max_events_per_token_zero_exits_2(self):
        rc, err, _ = self.run_disco("--max-events-per-token", "0")
        self.assertEqual(rc, 2, err)
        self.assertIn("--max-events-per-token", err)


class EventsPerToken(unittest.TestCase):
    """A token's history is bounded (--max-events-per-token): a write past it
    is 403 errorCode 103 naming the flag, other tokens go on, and a watch
    from the token's first index still answers (history stays whole)."""

    MAX = 5

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.proc, self.base = harness.start_disco(
            self.tmp.name, ["--max-events-per-token", str(self.MAX)])

    def tearDown(self):
        self.proc.stop()
        self.tmp.cleanup()

    def put(self, path, value):
        return harness.http("PUT", self.base + "/v2/keys/_etcd/registry/" + path,
                            body=("value=" + value).encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})

    def test_writes_past_the_bound_are_refused(self):
        for tok in ("flood", "calm"):
            status, _, body = self.put(tok + "/_config/size", "3")
            self.assertEqual(status, 201, body)
        for i in range(self.MAX - 1):  # the token's creation was its first event
            status, _, body = self.put("flood/k", str(i))
            self.assertIn(status, (200, 201), body)
        status, _, body = self.put("flood/k", "over")
        self.assertEqual(status, 403, body)
        err = json.loads(body)
        self.assertEqual(err["errorCode"], 103, body)
        self.assertIn("--max-events-per-token", err["cause"])
        status, _, body = self.put("calm/k", "v")
        self.assertEqual(status, 201, body)
        status, _, body = harness.http(
            "GET", self.base + "/v2/keys/_etcd/registry/flood?wait=true&recursive=true&waitIndex=1")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["node"]["key"], "/_etcd/registry/flood/_config/size")


if __name__ == "__main__":
    unittest.main()
