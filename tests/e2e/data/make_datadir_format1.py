#!/usr/bin/env python3
"""Makes tests/e2e/data/datadir-format1.tar.gz: a data dir written by the disco
release whose write-ahead log had unchained, unsalted frames (on-disk format 1,
commit f71921c), with its last writes only in that log.

Run (once; the result is committed):
    DISCO_BIN=/path/to/disco-built-from-f71921c python3 tests/e2e/data/make_datadir_format1.py

What it does:
  1. starts that disco with --map-size 1MiB (so the files are small: a 256 KiB log);
  2. phase 1: creates tokens and members, then waits 1 s, so a checkpoint files
     them into data.mdb;
  3. phase 2: a few more writes in quick succession (well under the 250 ms
     checkpoint interval), then SIGKILL right after the last 201: those writes
     are acknowledged but only in disco.wal;
  4. checks that a copy of the dir, opened by the same binary, applies the
     phase-2 writes from its log (all, or all but the first);
  5. stores data.mdb and disco.wal (not the lock files) in the tarball, and
     everything a client can read back in datadir-format1.json.
"""

import json
import os
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402
from harness import http  # noqa: E402

REG = "/v2/keys/_etcd/registry"
TARBALL = os.path.join(HERE, "datadir-format1.tar.gz")
EXPECTED = os.path.join(HERE, "datadir-format1.json")


def put(base, path, value):
    st, _, b = http("PUT", base + REG + path, {"value": value})
    if st not in (200, 201):
        raise SystemExit("PUT %s: %d %r" % (path, st, b))
    return json.loads(b)


def listing(base, token):
    st, h, b = http("GET", base + REG + "/" + token + "?recursive=true")
    if st != 200:
        raise SystemExit("GET %s: %d %r" % (token, st, b))
    node = json.loads(b)["node"]
    return {n["key"]: [n["value"], n["createdIndex"], n["modifiedIndex"]]
            for n in node.get("nodes", []) if not n.get("dir")}


def main():
    work = tempfile.mkdtemp(prefix="disco-fixture-")
    try:
        proc, base = harness.start_disco(work, ("--map-size", "1MiB"))
        tokens = ["fmt1-a", "fmt1-b", "fmt1-c"]
        for t in tokens:
            put(base, "/%s/_config/size" % t, "3")
        for i, t in enumerate(tokens):
            put(base, "/%s/m1" % t, "http://10.0.0.%d:2380" % (i + 1))
        st, _, b = http("GET", base + "/new?size=5")
        assert st == 200, (st, b)
        new_token = b.decode().rsplit("/", 1)[1]
        tokens.append(new_token)
        put(base, "/%s/first" % new_token, "peer=http://10.1.0.1:2380")
        time.sleep(1.0)  # a checkpoint moves phase 1 into data.mdb

        # Phase 2: acknowledged, then killed before the next checkpoint.
        logged = 0
        t0 = time.monotonic()
        for i, t in enumerate(tokens):
            put(base, "/%s/late" % t, "only-in-the-log-%d" % i)
            logged += 1
        put(base, "/fmt1-a/m1", "http://10.0.0.1:2381")  # an update, also only logged
        logged += 1
        os.kill(proc.pid, signal.SIGKILL)
        elapsed = time.monotonic() - t0
        proc.wait(10)
        proc.stop()
        if elapsed > 0.2:
            raise SystemExit("phase 2 took %.3f s: a checkpoint may have run; run again" % elapsed)
        data = os.path.join(work, "disco-data")

        # The same binary applies exactly the phase-2 writes from the log.
        check = os.path.join(work, "check")
        os.makedirs(check)
        for name in ("data.mdb", "disco.wal"):
            shutil.copy(os.path.join(data, name), os.path.join(check, name))
        shutil.copytree(check, os.path.join(work, "copy", "disco-data"))
        p2, base2 = harness.start_disco(os.path.join(work, "copy"))
        want = {t: listing(base2, t) for t in tokens}
        index = int(http("GET", base2 + REG + "/none")[1]["x-etcd-index"])
        p2.stop()
        m = re.search(r"applied (\d+) logged batches \((\d+) writes\)", p2.log())
        # (a checkpoint may have caught the first of them)
        if not m or not logged - 1 <= int(m.group(2)) <= logged:
            raise SystemExit("the log did not hold the %d phase-2 writes; run again:\n%s"
                             % (logged, p2.log()))
        logged = int(m.group(2))

        with tarfile.open(TARBALL, "w:gz") as tar:
            for name in ("data.mdb", "disco.wal"):
                tar.add(os.path.join(check, name), arcname=name)
        with open(EXPECTED, "w") as f:
            json.dump({"made_by": "disco built from commit f71921c (on-disk format 1)",
                       "writes_only_in_log": logged, "index": index, "tokens": want},
                      f, indent=1, sort_keys=True)
            f.write("\n")
        print("wrote %s (%d bytes) and %s" % (TARBALL, os.path.getsize(TARBALL), EXPECTED))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
