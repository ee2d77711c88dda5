"""disco serve refuses flag values out of range at startup: exit code 2 and a
message naming the flag, before anything is opened or served."""

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


if __name__ == "__main__":
    unittest.main()
