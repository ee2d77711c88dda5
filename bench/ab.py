#!/usr/bin/env python3
"""A/B of two disco binaries (e.g. before and after a change on a hot path).

    python3 bench/ab.py --a /tmp/disco-before --b build/disco [--only get,put,park] [--rounds 3]

The same workloads as bench.py (GET of a 3-member listing, durable PUT of
fresh keys over 1024 tokens, N parked watches woken by one PUT), run
A B A B ... on fresh servers with LMDB stores on disk, each binary started
the same way; prints medians and the ratio B/A. Nothing is written to
RESULTS.md: copy the rows there by hand with the date and the commits.
"""
import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
from bench import harness  # noqa: E402


def start(binary, workdir):
    os.environ["DISCO_BIN"] = binary
    return harness.start_disco(workdir, ("--new-rate", "0"), wait_timeout="120s")


def get_run(binary, workdir, seconds):
    proc, base = start(binary, tempfile.mkdtemp(prefix="get-", dir=workdir))
    try:
        bench.make_token(base, "benchget", members=3)
        rps, bad, _ = bench.wrk(base + bench.LISTING, seconds)
        if bad:
            raise RuntimeError("non-2xx answers from %s" % binary)
        return rps
    finally:
        proc.stop()


def put_run(binary, workdir, seconds, i):
    wd = tempfile.mkdtemp(prefix="put-", dir=workdir)
    proc, base = start(binary, wd)
    try:
        tokens = 1024
        for t in range(tokens):
            bench.make_token(base, "benchput%d" % t)
        script = os.path.join(wd, "put.lua")
        with open(script, "w") as f:
            f.write(bench.PUT_LUA)
        rps, bad, _ = bench.wrk(base + "/", seconds, script=script,
                                env={"BENCH_RUN": str(i), "BENCH_TOKENS": str(tokens)})
        if bad:
            raise RuntimeError("non-2xx answers from %s" % binary)
        return rps
    finally:
        proc.stop()


def park_run(binary, workdir, n):
    proc, base = start(binary, tempfile.mkdtemp(prefix="park-", dir=workdir))
    try:
        token = "benchpark%d" % n
        bench.make_token(base, token)
        before = bench.rss_kib(proc.pid)
        waiters = bench.start_waiters(base, token, n)
        try:
            bench.settle_parked(proc, base, n, True)
            during = bench.rss_kib(proc.pid)
            return (during - before) * 1024.0 / n, bench.release_waiters(waiters, n)
        finally:
            if waiters.poll() is None:
                waiters.kill()
                waiters.wait()
    finally:
        proc.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="the binary before")
    ap.add_argument("--b", required=True, help="the binary after")
    ap.add_argument("--only", default="get,put,park")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--watches", type=int, default=10000)
    args = ap.parse_args()
    only = set(args.only.split(","))
    workdir = tempfile.mkdtemp(prefix="disco-ab-")
    rows = []
    if "get" in only:
        a, b = bench.alternate(args.rounds, lambda i: get_run(args.a, workdir, args.seconds),
                               lambda i: get_run(args.b, workdir, args.seconds))
        rows.append(("GET 3-member listing, 64 conns (req/s)", a, b))
    if "put" in only:
        a, b = bench.alternate(args.rounds, lambda i: put_run(args.a, workdir, args.seconds, i),
                               lambda i: put_run(args.b, workdir, args.seconds, i))
        rows.append(("durable PUT prevExist=false, 64 conns (req/s)", a, b))
    if "park" in only:
        a, b = bench.alternate(args.rounds, lambda i: park_run(args.a, workdir, args.watches),
                               lambda i: park_run(args.b, workdir, args.watches))
        rows.append(("parked watch, %d: bytes each" % args.watches,
                     [x[0] for x in a], [x[0] for x in b]))
        rows.append(("parked watch, %d: ms PUT to last answer" % args.watches,
                     [x[1] for x in a], [x[1] for x in b]))
    print("| workload | A (median) | B (median) | B/A | A runs | B runs |")
    print("|---|---|---|---|---|---|")
    for name, a, b in rows:
        ma, mb = statistics.median(a), statistics.median(b)
        print("| %s | %.1f | %.1f | %.3f | %s | %s |" % (
            name, ma, mb, mb / ma, " ".join("%.1f" % x for x in a),
            " ".join("%.1f" % x for x in b)))


if __name__ == "__main__":
    main()
