#!/usr/bin/env python3
"""disco against a real etcd 3.4 (--enable-v2), in the same run, same load.

Starts both servers on loopback ports chosen at run time, alternates the runs
(A B A B ..., at least 3 each) and prints one table of medians with the ratio
disco/etcd; writes it to bench/RESULTS.md with the machine's description.

Workloads:
  get      GET of a 3-member token listing (what booting members and proxies
           poll), wrk, 1 thread, 64 connections; nginx `return 200` with the
           same body is the machine's ceiling.
  put      durable PUT ?prevExist=false of fresh member keys across 64
           tokens, wrk, 1 thread, 64 connections (every 2xx is on disk).
  park     N long-poll watches parked on one token (N = 10000 and the most
           one client process can hold, 19000): server memory per parked
           watch from RSS, and the time from sending one PUT until the last
           watch has its answer, measured by build/bench/disco-waiters (C,
           epoll) so that the client's own reading does not count.
  v3range  v3 gRPC Range of a 3-member prefix, h2load over h2c (64 conns, one
           prebuilt RangeRequest), against etcd's v3 API.
  v3put    v3 durable Put of one member key, overwritten, the same way.
  v3park   10000 v3 watches (10000 connections x 1, and 100 x 100 on one
           stream each), woken by one v3 Put: memory per watch, and the time
           until the last event (build/bench/disco-v3watchers, C, nghttp2).
  tlsget   keep-alive GET of the listing over TLS, wrk, against nginx over
           TLS with the same ECDSA P-256 certificate (made at run time).
  tlshandshake  full TLS handshakes a second (one GET each, no resumption),
           build/bench/disco-tlsconns, against the same nginx.
  tlsmem   disco's memory per idle TLS connection and per parked TLS
           long-poll, against the same over plain TCP.
  form     time for 3 real etcd members to form a cluster through each.
  bigstore RSS and startup time of disco with 1,000,000 tokens of 3 members
           (disco only: loading that into etcd's v2 store takes hours).
  etcdget  GET of a 3-member token listing through an instance on the etcd
           backend (`--etcd-endpoints`, one etcd 3.4 member, WAL on disk) vs
           the same through an embedded-store instance; target >= 90%.
  etcdreg  durable PUT ?prevExist=false of fresh member keys through two
           instances on one etcd (two wrk, 32 connections each) vs the same
           etcd taking the very transactions disco sends, driven directly
           (build/bench/disco-etcdtxn reg, 64 in flight over 2 connections);
           target >= 80%. Also the latency one write gains going through an
           instance (one connection each, mean).
  etcdload the mirror of 100,000 tokens x 3 members (written with
           disco-etcdtxn fill: one transaction per event, 256 in flight):
           time from start until /health answers, and RSS per token over an
           instance on an empty prefix.

Usage: bench/bench.py [--quick] [--only get,put,...]
Every run is bounded in time and count; traffic goes to 127.0.0.1 only.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import harness  # noqa: E402  (process helpers shared with the e2e tests)
from h2raw import field as pb_bytes, grpc_message as grpc_frame  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MKSTORE = os.environ.get("DISCO_MKSTORE", os.path.join(REPO, "build", "bench", "disco-mkstore"))
ETCDTXN = os.environ.get("DISCO_ETCDTXN", os.path.join(REPO, "build", "bench", "disco-etcdtxn"))
WAITERS = os.environ.get("DISCO_WAITERS", os.path.join(REPO, "build", "bench", "disco-waiters"))
V3WATCHERS = os.environ.get("DISCO_V3WATCHERS",
                            os.path.join(REPO, "build", "bench", "disco-v3watchers"))
TLSCONNS = os.environ.get("DISCO_TLSCONNS", os.path.join(REPO, "build", "bench", "disco-tlsconns"))
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
NGHTTP = shutil.which("nghttp") or "/usr/bin/nghttp"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


# ---- helpers -------------------------------------------------------------

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wrk(url, seconds, conns=64, script=None, env=None):
    """Runs wrk; returns (requests/s, non-2xx count, total requests)."""
    argv = [WRK, "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency"]
    if script:
        argv += ["-s", script]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 30,
                         env=dict(os.environ, **(env or {}))).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, int(m.group(1)) if m else 0, total


def wrk_latency_ms(out):
    """wrk's mean latency ("Latency   1.23ms ...") in ms."""
    m = re.search(r"Latency\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return float(m.group(1)) * scale


def wrk_raw(url, seconds, conns, script=None, env=None):
    """Runs wrk; returns its whole output."""
    argv = [WRK, "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency"]
    if script:
        argv += ["-s", script]
    return subprocess.Popen(argv + [url], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))


def wrk_medians(what, disco_runs, etcd_runs):
    """Median req/s of each side's wrk runs; a run with any non-2xx answer
    is a failed benchmark, not a figure."""
    for name, runs in (("disco", disco_runs), ("etcd", etcd_runs)):
        if any(r[1] for r in runs):
            raise RuntimeError("%s answered non-2xx during the %s run: %r" % (name, what, runs))
    return (statistics.median(r[0] for r in disco_runs),
            statistics.median(r[0] for r in etcd_runs))


def alternate(rounds, run_a, run_b):
    a, b = [], []
    for i in range(rounds):
        a.append(run_a(i))
        b.append(run_b(i))
    return a, b


def put_form(base, path, value):
    st, _, body = harness.http("PUT", base + path, body={"value": value})
    if st not in (200, 201):
        raise RuntimeError("PUT %s -> %d %r" % (path, st, body[:200]))


def make_token(base, name, members=0, size=3):
    put_form(base, "/v2/keys/_etcd/registry/%s/_config/size" % name, str(size))
    for i in range(members):
        put_form(base, "/v2/keys/_etcd/registry/%s/%016x" % (name, i + 1),
                 "m%d=http://127.0.0.1:%d" % (i + 1, 2380 + i))


class Servers:
    """A disco (durable store on disk) and an etcd --enable-v2 (WAL on disk)."""

    def __init__(self, workdir, wait_timeout="120s"):
        self.workdir = workdir
        # 1024 tokens are made through the v2 keys path from one address:
        # lift /new's per-address budget, which counts those too.
        # v3put overwrites one key for the whole run: every Put is an event
        # of its token, so the token's history may hold the most it can.
        self.disco, self.disco_url = harness.start_disco(
            workdir, ("--new-rate", "0", "--max-events-per-token", "16777216"),
            wait_timeout=wait_timeout)
        self.etcd, self.etcd_url = harness.start_etcd_v2(workdir)

    def both(self):
        return [("disco", self.disco, self.disco_url), ("etcd", self.etcd, self.etcd_url)]

    def stop(self):
        self.disco.stop()
        self.etcd.stop()


# ---- workloads -----------------------------------------------------------

LISTING = "/v2/keys/_etcd/registry/benchget?quorum=false&recursive=false&sorted=false"


def start_nginx(workdir, body):
    port = harness.free_port()
    conf_dir = os.path.join(workdir, "nginx")
    os.makedirs(os.path.join(conf_dir, "logs"), exist_ok=True)
    escaped = body.replace("\\", "\\\\").replace("'", "\\'")
    with open(os.path.join(conf_dir, "nginx.conf"), "w") as f:
        f.write("""worker_processes 1;
daemon off;
pid %(d)s/nginx.pid;
error_log %(d)s/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %(d)s/body; proxy_temp_path %(d)s/proxy;
  fastcgi_temp_path %(d)s/fcgi; uwsgi_temp_path %(d)s/uwsgi; scgi_temp_path %(d)s/scgi;
  server {
    listen 127.0.0.1:%(port)d;
    location / { default_type application/json; return 200 '%(body)s'; }
  }
}
""" % {"d": conf_dir, "port": port, "body": escaped})
    proc = harness.Proc([NGINX, "-p", conf_dir, "-c", os.path.join(conf_dir, "nginx.conf")],
                        os.path.join(workdir, "nginx.log"), name="nginx")
    harness.wait_until(lambda: _answers("http://127.0.0.1:%d/" % port), 10, what="nginx")
    return proc, "http://127.0.0.1:%d" % port


def _answers(url):
    try:
        return harness.http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


def bench_get(servers, rounds, seconds, results):
    for _, _, base in servers.both():
        make_token(base, "benchget", members=3)
    a, b = alternate(rounds,
                     lambda i: wrk(servers.disco_url + LISTING, seconds),
                     lambda i: wrk(servers.etcd_url + LISTING, seconds))
    _, _, body = harness.http("GET", servers.disco_url + LISTING)
    ceiling = None
    if os.access(NGINX, os.X_OK):
        nginx, nurl = start_nginx(servers.workdir, body.decode())
        try:
            ceiling = statistics.median(wrk(nurl + "/", seconds)[0] for _ in range(rounds))
        finally:
            nginx.stop()
    d, e = wrk_medians("GET", a, b)
    results.append(("GET 3-member listing, 64 conns (req/s)", d, e, d / e,
                    "nginx ceiling %.0f; disco at %.0f%% of it" % (ceiling, 100 * d / ceiling)
                    if ceiling else "nginx not available"))


PUT_LUA = r"""
local counter = 0
local run = os.getenv("BENCH_RUN") or "0"
local tokens = tonumber(os.getenv("BENCH_TOKENS") or "1024")
request = function()
  counter = counter + 1
  local path = string.format("/v2/keys/_etcd/registry/benchput%d/r%s-%d?prevExist=false",
                             counter % tokens, run, counter)
  return wrk.format("PUT", path, {["Content-Type"] = "application/x-www-form-urlencoded"},
                    "value=m1%3Dhttp%3A%2F%2F127.0.0.1%3A2380")
end
"""


def bench_put(servers, rounds, seconds, results):
    tokens = 1024  # keeps every token under the default key limit over 3 runs
    for _, _, base in servers.both():
        for t in range(tokens):
            make_token(base, "benchput%d" % t)
    script = os.path.join(servers.workdir, "put.lua")
    with open(script, "w") as f:
        f.write(PUT_LUA)

    def run(base, i):
        return wrk(base + "/", seconds, script=script,
                   env={"BENCH_RUN": str(i), "BENCH_TOKENS": str(tokens)})

    a, b = alternate(rounds, lambda i: run(servers.disco_url, i),
                     lambda i: run(servers.etcd_url, i))
    d, e = wrk_medians("PUT", a, b)
    results.append(("durable PUT prevExist=false, 64 conns (req/s)", d, e, d / e,
                    "fresh keys over %d tokens; every 201 fsynced" % tokens))


def start_waiters(base, token, n, timeout_s=60):
    """Starts build/bench/disco-waiters parking n watches on `token` and
    waits until it has sent them all; it then waits for "go" on stdin."""
    host, port = base[len("http://"):].split(":")
    proc = subprocess.Popen([WAITERS, host, port, str(n), token, str(timeout_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "sent %d" % n:
        proc.kill()
        proc.wait()
        raise RuntimeError("disco-waiters could not park %d watches: %r" % (n, line))
    return proc


def release_waiters(proc, n, timeout_s=60):
    """Tells disco-waiters to send its PUT; returns the milliseconds from
    the PUT until the last of the n watches had its answer."""
    try:
        out, _ = proc.communicate("go\n", timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    fields = dict(f.split("=", 1) for f in out.split())
    if proc.returncode != 0 or int(fields.get("answered", -1)) != n:
        raise RuntimeError("disco-waiters: %r (exit %d)" % (out, proc.returncode))
    return float(fields["last_ms"])


def settle_parked(proc, base, n, is_disco):
    if is_disco:
        harness.wait_until(
            lambda: re.search(rb"disco_parked_waits (\d+)",
                              harness.http("GET", base + "/metrics")[2]).group(1) == str(n).encode(),
            30, what="%d parked waits" % n)
    else:
        time.sleep(2.0)  # etcd has no gauge; give its goroutines time to park


def park_once(workdir, n):
    """One fresh pair of servers: RSS growth of a process that already freed
    memory says little (etcd's even went negative). Returns {name: (bytes
    per parked watch, ms from the PUT to the last answer)}."""
    per = {}
    servers = Servers(tempfile.mkdtemp(prefix="park-", dir=workdir))
    try:
        for name, proc, base in servers.both():
            token = "benchpark%d" % n
            make_token(base, token)
            time.sleep(1.0)
            before = rss_kib(proc.pid)
            waiters = start_waiters(base, token, n)
            try:
                settle_parked(proc, base, n, name == "disco")
                during = rss_kib(proc.pid)
                per[name] = ((during - before) * 1024.0 / n, release_waiters(waiters, n))
            finally:
                if waiters.poll() is None:
                    waiters.kill()
                    waiters.wait()
    finally:
        servers.stop()
    return per


def bench_park(workdir, counts, rounds, results):
    """Each count `rounds` times, each on a fresh pair (disco then etcd):
    medians of both figures."""
    for n in counts:
        runs = [park_once(workdir, n) for _ in range(rounds)]
        d = [statistics.median(r["disco"][k] for r in runs) for k in (0, 1)]
        e = [statistics.median(r["etcd"][k] for r in runs) for k in (0, 1)]
        results.append(("parked watch, %d clients: server bytes each" % n, d[0], e[0],
                        d[0] / e[0], "RSS growth of a fresh server"))
        results.append(("parked watch, %d clients: ms from PUT to last answer" % n, d[1], e[1],
                        d[1] / e[1], "from sending the PUT; C client, epoll"))


def bench_form(servers, rounds, results):
    def form(base, i, via):
        wd = tempfile.mkdtemp(prefix="form-", dir=servers.workdir)
        token = "form%s%d" % (via, i)
        make_token(base, token)
        url = base + "/v2/keys/_etcd/registry/" + token
        t0 = time.monotonic()
        members = [harness.start_etcd_member(wd, "m%d" % k, url) for k in range(3)]
        try:
            def formed():
                for _, _, client in members:
                    rc, out, _ = harness.etcdctl(client, "endpoint", "health", timeout=4)
                    if rc != 0:
                        return False
                return True
            harness.wait_until(formed, 60, interval=0.05, what="cluster formed via " + via)
            return time.monotonic() - t0
        finally:
            for p, _, _ in members:
                p.stop()
            shutil.rmtree(wd, ignore_errors=True)

    a, b = alternate(rounds, lambda i: form(servers.disco_url, i, "disco"),
                     lambda i: form(servers.etcd_url, i, "etcd"))
    d, e = statistics.median(a), statistics.median(b)
    results.append(("3 etcd members form a cluster (s)", d, e, d / e,
                    "dominated by etcd's own start and election"))


def bench_bigstore(workdir, tokens, results):
    if not os.access(MKSTORE, os.X_OK):
        results.append(("%d tokens x 3 members: RSS MiB / start s" % tokens, None, None, None,
                        "disco-mkstore not built"))
        return
    data = os.path.join(workdir, "big", "disco-data")
    os.makedirs(data)
    t0 = time.monotonic()
    subprocess.run([MKSTORE, data, str(tokens), "3"], check=True, timeout=1800)
    fill_s = time.monotonic() - t0
    t0 = time.monotonic()
    proc, base = harness.start_disco(os.path.join(workdir, "big"))
    start_s = time.monotonic() - t0
    rss = rss_kib(proc.pid) / 1024.0
    st, _, _ = harness.http("GET", base + "/health")
    proc.stop()
    results.append(("%d tokens x 3 members: RSS (MiB)" % tokens, rss, None, None,
                    "store filled in %.0f s" % fill_s))
    results.append(("%d tokens x 3 members: start until /health (s)" % tokens, start_s, None,
                    None, "health %d" % st))


# ---- v3 (gRPC over h2c) -------------------------------------------------

def v3_prefix(token):
    return ("/_etcd/registry/%s/members/" % token).encode()


def range_request(token):
    """RangeRequest{key=1, range_end=2}: every key under members/."""
    p = v3_prefix(token)
    return grpc_frame(pb_bytes(1, p) + pb_bytes(2, p[:-1] + bytes([p[-1] + 1])))


def put_request(token, member, value):
    """PutRequest{key=1, value=2}."""
    return grpc_frame(pb_bytes(1, v3_prefix(token) + member.encode()) + pb_bytes(2, value.encode()))


GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def grpc_call(base, method, body_path):
    """One call with nghttp (a real HTTP/2 client, h2c by prior knowledge);
    returns (grpc-status, DATA bytes received). disco and etcd both answer
    200 with the status in the trailers, so h2load's 2xx count says nothing
    about the call: this checks one answer of the very body h2load sends."""
    out = subprocess.run([NGHTTP, "-v", "-d", body_path] + GRPC_HEADERS + [base + method],
                         capture_output=True, timeout=20).stdout.decode("latin-1")
    m = re.search(r"grpc-status: (\d+)", out)
    data = sum(int(x) for x in re.findall(r"recv DATA frame <length=(\d+)", out))
    return (int(m.group(1)) if m else None), data


def h2load(url, seconds, body_path, conns=64):
    """Runs h2load (1 thread, one stream at a time per connection, like wrk's
    64 connections); returns (requests/s, failed or non-2xx, total)."""
    argv = [H2LOAD, "-t1", "-c%d" % conns, "-m1", "-D", str(seconds), "-d", body_path]
    out = subprocess.run(argv + GRPC_HEADERS + [url], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    total, done, ok = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return rps, (done - ok) + (done - int(codes.group(1))), total


def bench_v3(servers, rounds, seconds, results, only):
    token = "benchv3"
    rng, put = (os.path.join(servers.workdir, n) for n in ("v3range.bin", "v3put.bin"))
    with open(rng, "wb") as f:
        f.write(range_request(token))
    with open(put, "wb") as f:
        f.write(put_request(token, "put", "mput=http://127.0.0.1:2380"))
    for name, _, base in servers.both():
        if name == "disco":  # a token is made by its size key (/new); etcd has none
            make_token(base, token)
        for i in range(3):
            mp = os.path.join(servers.workdir, "v3m%d.bin" % i)
            with open(mp, "wb") as f:
                f.write(put_request(token, "%016x" % (i + 1), "m%d=http://127.0.0.1:%d" % (i, 2380 + i)))
            st, _ = grpc_call(base, "/etcdserverpb.KV/Put", mp)
            if st != 0:
                raise RuntimeError("%s: v3 Put of member %d: grpc-status %r" % (name, i, st))
        for what, method, body in (("Range", "/etcdserverpb.KV/Range", rng),
                                   ("Put", "/etcdserverpb.KV/Put", put)):
            st, data = grpc_call(base, method, body)
            if st != 0 or data < 5:
                raise RuntimeError("%s: v3 %s: grpc-status %r, %d bytes" % (name, what, st, data))
    rows = []
    if "v3range" in only:
        rows.append(("v3 Range of a 3-member prefix, 64 conns (req/s)", "/etcdserverpb.KV/Range",
                     rng, "h2load, h2c; grpc-status 0 checked with nghttp"))
    if "v3put" in only:
        rows.append(("v3 durable Put of one member key (overwritten), 64 conns (req/s)",
                     "/etcdserverpb.KV/Put", put, "h2load, h2c; disco LMDB store, etcd WAL"))
    for label, method, body, note in rows:
        a, b = alternate(rounds, lambda i: h2load(servers.disco_url + method, seconds, body),
                         lambda i: h2load(servers.etcd_url + method, seconds, body))
        for name, runs in (("disco", a), ("etcd", b)):
            if any(r[1] for r in runs):
                raise RuntimeError("%s: failed v3 calls in %s: %r" % (name, label, runs))
        d, e = statistics.median(r[0] for r in a), statistics.median(r[0] for r in b)
        results.append((label, d, e, d / e, note + "; load %s" % load()))


def v3park_once(workdir, conns, per):
    """One fresh pair of servers: conns h2c connections each with one Watch
    stream of `per` watches on one token's members/ (build/bench/
    disco-v3watchers), then one v3 Put. Returns {name: (server bytes per
    watch from RSS growth, ms from the Put to the last event delivered)}."""
    n = conns * per
    res = {}
    servers = Servers(tempfile.mkdtemp(prefix="v3park-", dir=workdir))
    try:
        for name, proc, base in servers.both():
            token = "benchv3park"
            if name == "disco":
                make_token(base, token)
            time.sleep(1.0)
            before = rss_kib(proc.pid)
            host, port = base[len("http://"):].split(":")
            w = subprocess.Popen([V3WATCHERS, host, port, str(conns), str(per),
                                  v3_prefix(token).decode(), "60"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                line = w.stdout.readline()
                if line.strip() != "created %d" % n:
                    raise RuntimeError("disco-v3watchers could not make %d watches on %s: %r"
                                       % (n, name, line))
                time.sleep(1.0)  # every watch is confirmed; let the allocator settle
                during = rss_kib(proc.pid)
                out, _ = w.communicate("go\n", timeout=120)
                fields = dict(f.split("=", 1) for f in out.split())
                if w.returncode != 0 or int(fields.get("answered", -1)) != n or \
                        fields.get("put_status") != "0":
                    raise RuntimeError("disco-v3watchers on %s: %r (exit %d)" % (name, out,
                                                                                 w.returncode))
                res[name] = ((during - before) * 1024.0 / n, float(fields["last_ms"]))
            finally:
                if w.poll() is None:
                    w.kill()
                    w.wait()
    finally:
        servers.stop()
    return res


def bench_v3park(workdir, n, rounds, results):
    """n watches as n connections of one watch (n members each watching on
    its own connection, as etcd's discovery does), and as n/100 streams of
    100 watches (disco's most a stream; 1000 a connection)."""
    for conns, per in ((n, 1), (n // 100, 100)):
        runs = [v3park_once(workdir, conns, per) for _ in range(rounds)]
        d = [statistics.median(r["disco"][k] for r in runs) for k in (0, 1)]
        e = [statistics.median(r["etcd"][k] for r in runs) for k in (0, 1)]
        layout = "%d connections x %d watch%s" % (conns, per, "es" if per > 1 else "")
        results.append(("v3 watch, %s: server bytes each" % layout, d[0], e[0], d[0] / e[0],
                        "RSS growth of a fresh server; load %s" % load()))
        results.append(("v3 watch, %s: ms from Put to last event" % layout, d[1], e[1],
                        d[1] / e[1], "build/bench/disco-v3watchers (C, nghttp2, epoll); load %s"
                        % load()))


def load():
    """The 1-minute load average: the machine is shared, so every row says
    how busy it was."""
    return "%.2f" % os.getloadavg()[0]


# ---- TLS ---------------------------------------------------------------

def make_cert(workdir):
    """An ECDSA P-256 self-signed certificate for 127.0.0.1, made at run
    time; disco and nginx serve the same one."""
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    if not os.path.exists(cert):
        subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=30)
    return cert, key


def tls_answers(port):
    import ssl
    import socket
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            with ctx.wrap_socket(s) as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return t.recv(64).startswith(b"HTTP/1.1 ")
    except OSError:
        return False


def start_disco_tls(workdir):
    """disco with TLS on one port (--addr) and plain HTTP on another
    (--plain-addr, for setting up tokens and reading /metrics). Returns
    (proc, TLS port, plain base URL)."""
    cert, key = make_cert(workdir)
    port, plain = harness.free_port(), harness.free_port()
    data = tempfile.mkdtemp(prefix="disco-tls-", dir=workdir)
    proc = harness.Proc([harness.disco_bin(), "serve", "--addr", "127.0.0.1:%d" % port,
                         "--plain-addr", "127.0.0.1:%d" % plain, "--tls-cert", cert,
                         "--tls-key", key, "--data-dir", os.path.join(data, "disco-data"),
                         "--new-rate", "0", "--wait-timeout", "120s"],
                        os.path.join(data, "disco.log"), name="disco-tls:%d" % port)
    base = "http://127.0.0.1:%d" % plain
    harness.wait_until(lambda: _answers(base + "/health"), 10, what="disco (TLS)")
    return proc, port, base


def start_nginx_tls(workdir, body):
    """nginx, one worker, serving `body` over TLS with the same certificate;
    no session cache; session tickets on, as nginx's default and as disco
    (both send TLS 1.3's two tickets after each full handshake, which the
    clients here never use), keep-alive
    connections never closed for their request count (nginx's default is
    1000 requests, which would mix handshakes into the keep-alive run)."""
    cert, key = make_cert(workdir)
    port = harness.free_port()
    conf_dir = tempfile.mkdtemp(prefix="nginx-tls-", dir=workdir)
    os.makedirs(os.path.join(conf_dir, "logs"))
    escaped = body.replace("\\", "\\\\").replace("'", "\\'")
    with open(os.path.join(conf_dir, "nginx.conf"), "w") as f:
        f.write("""worker_processes 1;
daemon off;
pid %(d)s/nginx.pid;
error_log %(d)s/logs/error.log;
events { worker_connections 20000; }
worker_rlimit_nofile 20480;
http {
  access_log off;
  client_body_temp_path %(d)s/body; proxy_temp_path %(d)s/proxy;
  fastcgi_temp_path %(d)s/fcgi; uwsgi_temp_path %(d)s/uwsgi; scgi_temp_path %(d)s/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:%(port)d ssl;
    ssl_certificate %(cert)s;
    ssl_certificate_key %(key)s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    location / { default_type application/json; return 200 '%(body)s'; }
  }
}
""" % {"d": conf_dir, "port": port, "body": escaped, "cert": cert, "key": key})
    proc = harness.Proc([NGINX, "-p", conf_dir, "-c", os.path.join(conf_dir, "nginx.conf")],
                        os.path.join(conf_dir, "nginx.log"), name="nginx-tls")
    harness.wait_until(lambda: tls_answers(port), 10, what="nginx (TLS)")
    return proc, port


def tls_rate(port, path, seconds, concurrency=32):
    """New TLS connections a second, each a full handshake and one GET."""
    out = subprocess.run([TLSCONNS, "rate", "127.0.0.1", str(port), path, str(concurrency),
                          str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
    fields = dict(f.split("=", 1) for f in out.stdout.split())
    if out.returncode != 0 or int(fields.get("failed", 1)):
        raise RuntimeError("disco-tlsconns rate: %r %r" % (out.stdout, out.stderr[-500:]))
    return float(fields["rate"])


def bench_tls(workdir, rounds, seconds, results, only):
    disco, port, base = start_disco_tls(workdir)
    nginx = None
    try:
        make_token(base, "benchget", members=3)
        _, _, body = harness.http("GET", base + LISTING)
        nginx, nport = start_nginx_tls(workdir, body.decode())
        if "tlsget" in only:
            a, b = alternate(rounds,
                             lambda i: wrk("https://127.0.0.1:%d%s" % (port, LISTING), seconds),
                             lambda i: wrk("https://127.0.0.1:%d%s" % (nport, LISTING), seconds))
            d, n = wrk_medians("TLS GET", a, b)
            results.append(("TLS keep-alive GET 3-member listing, 64 conns (req/s; other: nginx)",
                            d, n, d / n, "wrk over TLS, same ECDSA P-256 certificate; target "
                            ">= 0.90; load %s" % load()))
        if "tlshandshake" in only:
            a, b = alternate(rounds, lambda i: tls_rate(port, LISTING, seconds),
                             lambda i: tls_rate(nport, LISTING, seconds))
            d, n = statistics.median(a), statistics.median(b)
            results.append(("new TLS connections, full handshake + 1 GET, 32 at a time "
                            "(per s; other: nginx)", d, n, d / n,
                            "build/bench/disco-tlsconns rate: no session offered; target >= "
                            "0.90; load %s" % load()))
    finally:
        if nginx:
            nginx.stop()
        disco.stop()


def hold_once(workdir, n, parked, tls):
    """One fresh disco: server bytes per connection from RSS growth while
    disco-tlsconns holds n connections, idle or each with a parked watch."""
    disco, port, base = start_disco_tls(workdir)
    try:
        token = "benchhold"
        make_token(base, token)
        if not tls:
            port = int(base.rsplit(":", 1)[1])
        time.sleep(0.5)
        before = rss_kib(disco.pid)
        path = "/v2/keys/_etcd/registry/%s?recursive=true&wait=true" % token if parked else "-"
        argv = [TLSCONNS, "hold", "127.0.0.1", str(port), path, str(n)] + ([] if tls else ["plain"])
        client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = client.stdout.readline()
            if line.strip() != "held %d" % n:
                raise RuntimeError("disco-tlsconns hold: %r" % line)
            if parked:
                settle_parked(disco, base, n, True)
            else:
                harness.wait_until(
                    lambda: re.search(rb"disco_connections (\d+)",
                                      harness.http("GET", base + "/metrics")[2]).group(1)
                    == str(n + 1).encode(), 30, what="%d connections" % n)  # + /metrics' own
            time.sleep(0.5)
            return (rss_kib(disco.pid) - before) * 1024.0 / n
        finally:
            client.stdin.close()
            client.wait(timeout=30)
    finally:
        disco.stop()


def bench_tlsmem(workdir, n, rounds, results):
    """Memory per idle TLS connection and per parked TLS long-poll, each
    against the same over plain TCP: the difference is TLS's, nearly all
    OpenSSL's (disco's TLS transport record is a few pointers)."""
    for parked in (False, True):
        tls, plain = alternate(rounds, lambda i: hold_once(workdir, n, parked, True),
                               lambda i: hold_once(workdir, n, parked, False))
        t, p = statistics.median(tls), statistics.median(plain)
        what = "parked long-poll" if parked else "idle keep-alive connection"
        results.append(("TLS %s, %d held: server bytes each (other: plain TCP)" % (what, n),
                        t, p, t / p if p > 0 else None,
                        "RSS growth of a fresh disco; TLS share %.0f B; target < 40960; load %s"
                        % (t - p, load())))


# ---- the etcd backend ------------------------------------------------------

class EtcdBacked:
    """One etcd 3.4 member (WAL on disk), an embedded-store disco, and two
    disco instances on the etcd (prefix /disco/)."""

    def __init__(self, workdir, wait_timeout="120s"):
        self.workdir = os.path.join(workdir, "etcdb")
        os.makedirs(self.workdir)
        self.etcd = harness.EtcdCluster(self.workdir, size=1)
        self.endpoints = self.etcd.endpoints()
        self.embedded, self.embedded_url = harness.start_disco(
            self.workdir, ("--new-rate", "0"), wait_timeout=wait_timeout)
        self.instances = [harness.start_disco(
            self.workdir, ("--new-rate", "0", "--data-dir", "", "--etcd-endpoints",
                           self.endpoints), wait_timeout=wait_timeout) for _ in range(2)]

    def stop(self):
        for p, _ in self.instances:
            p.stop()
        self.embedded.stop()
        self.etcd.close()


def etcdtxn(*args, timeout=600):
    """Runs disco-etcdtxn; returns its figures as a dict."""
    cp = subprocess.run([ETCDTXN] + [str(a) for a in args], capture_output=True, text=True,
                        timeout=timeout)
    if cp.returncode != 0:
        raise RuntimeError("disco-etcdtxn %r: %s %s" % (args, cp.stdout, cp.stderr[-500:]))
    f = cp.stdout.split()
    return {f[i]: float(f[i + 1]) for i in range(0, len(f) - 1, 2)}


def bench_etcdget(eb, rounds, seconds, results):
    a_url = eb.instances[0][1]
    for base in (eb.embedded_url, a_url):
        make_token(base, "benchget", members=3)
    a, b = alternate(rounds, lambda i: wrk(a_url + LISTING, seconds),
                     lambda i: wrk(eb.embedded_url + LISTING, seconds))
    d, e = wrk_medians("etcd-backed GET", a, b)
    results.append(("GET 3-member listing, 64 conns (req/s)", d, e, d / e,
                    "etcd-backed instance vs embedded store; target >= 90%"))


def bench_etcdreg(eb, rounds, seconds, results):
    tokens = 1024
    a_url = eb.instances[0][1]
    for t in range(tokens):  # through A; B serves them from its mirror
        put_form(a_url, "/v2/keys/_etcd/registry/benchput%d/_config/size" % t, "3")
    etcdtxn("fill", eb.endpoints, "/direct/", tokens, 0, 128)
    script = os.path.join(eb.workdir, "put.lua")
    with open(script, "w") as f:
        f.write(PUT_LUA)

    def through_disco(i):
        procs = [wrk_raw(base + "/", seconds, 32, script,
                         {"BENCH_RUN": "%d%d" % (i, k), "BENCH_TOKENS": str(tokens)})
                 for k, (_, base) in enumerate(eb.instances)]
        outs = [p.communicate(timeout=seconds + 30)[0] for p in procs]
        rps = sum(float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1)) for o in outs)
        bad = sum(int(m.group(1)) for o in outs
                  for m in [re.search(r"Non-2xx or 3xx responses:\s+(\d+)", o)] if m)
        return rps, bad, 0

    def direct(i):
        r = etcdtxn("reg", eb.endpoints, "/direct/", tokens, seconds, 64, 2, i)
        return r["rate"], int(r["failed"]), int(r["txns"])

    a, b = alternate(rounds, through_disco, direct)
    d, e = wrk_medians("etcd-backed PUT", a, b)
    results.append(("durable PUT prevExist=false, 2 instances, 64 conns (writes/s)", d, e, d / e,
                    "vs the same Txns sent straight to etcd, 64 in flight; target >= 80%"))
    # One write at a time: what going through an instance adds to etcd's own
    # commit latency.
    lat_d, lat_e = [], []
    for i in range(rounds):
        p = wrk_raw(a_url + "/", seconds, 1, script,
                    {"BENCH_RUN": "lat%d" % i, "BENCH_TOKENS": str(tokens)})
        lat_d.append(wrk_latency_ms(p.communicate(timeout=seconds + 30)[0]))
        lat_e.append(etcdtxn("reg", eb.endpoints, "/direct/", tokens, seconds, 1, 1,
                             100 + i)["mean_ms"])
    d, e = statistics.median(lat_d), statistics.median(lat_e)
    results.append(("one write at a time: mean latency (ms)", d, e, d / e,
                    "added per write through an instance: %.2f ms" % (d - e)))


def bench_etcdload(workdir, tokens, results):
    wd = os.path.join(workdir, "etcdload")
    os.makedirs(wd)
    etcd = harness.EtcdCluster(wd, size=1)
    saved = harness.DISCO_HEALTH_TIMEOUT_S
    harness.DISCO_HEALTH_TIMEOUT_S = 900.0  # the load itself is what is measured
    try:
        ep = etcd.endpoints()
        empty, _ = harness.start_disco(wd, ("--data-dir", "", "--etcd-endpoints", ep,
                                            "--etcd-prefix", "/empty/"))
        base_kib = rss_kib(empty.pid)
        empty.stop()
        t0 = time.monotonic()
        fill = etcdtxn("fill", ep, "/load/", tokens, 3, 256, timeout=3600)
        fill_s = time.monotonic() - t0
        t0 = time.monotonic()
        try:
            proc, base = harness.start_disco(wd, ("--data-dir", "", "--etcd-endpoints", ep,
                                                  "--etcd-prefix", "/load/"))
            load_s = time.monotonic() - t0
            note = "history not compacted (%d revisions; a start replays at most 20000)" % (
                fill["txns"])
        except RuntimeError as e:  # a figure too: the mirror did not load
            why = [line for line in str(e).splitlines() if "error" in line][-1:]
            results.append(("mirror of %d tokens x 3 members, history replayed: start until "
                            "/health (s)" % tokens, None, None, None,
                            "did not load after %.0f s (%s); written in %.0f s (%.0f Txn/s)" % (
                                time.monotonic() - t0, " ".join(why)[-160:], fill_s,
                                fill["rate"])))
            print(results[-1], flush=True)
            # The other way an instance loads: from a range at the compact
            # revision, once etcd compacted the history away.
            rc, out, err = harness.etcdctl(ep, "endpoint", "status", "-w", "json")
            rev = json.loads(out)[0]["Status"]["header"]["revision"]
            rc, out, err = harness.etcdctl(ep, "compact", str(rev), "--physical", timeout=120)
            if rc != 0:
                raise RuntimeError("etcdctl compact: %s" % err)
            t0 = time.monotonic()
            proc, base = harness.start_disco(wd, ("--data-dir", "", "--etcd-endpoints", ep,
                                                  "--etcd-prefix", "/load/"))
            load_s = time.monotonic() - t0
            note = "history compacted first: loaded from one range at revision %d" % rev

        per_token = (rss_kib(proc.pid) - base_kib) * 1024.0 / tokens
        st, _, _ = harness.http("GET", base + "/v2/keys/_etcd/registry/benchreg%d" % (tokens - 1))
        proc.stop()
        results.append(("mirror of %d tokens x 3 members: start until /health (s)" % tokens,
                        load_s, None, None,
                        "%s; written in %.0f s (%.0f Txn/s, 256 in flight); last token %d" % (
                            note, fill_s, fill["rate"], st)))
        results.append(("mirror of %d tokens x 3 members: RSS per token (bytes)" % tokens,
                        per_token, None, None, "over an instance on an empty prefix"))
    finally:
        harness.DISCO_HEALTH_TIMEOUT_S = saved
        etcd.close()


def etcd_table(results, rounds):
    lines = ["| measure | disco on etcd | baseline | ratio | notes |", "|---|---|---|---|---|"]
    for name, d, e, ratio, note in results:
        lines.append("| %s | %s | %s | %s | %s |" % (name, fmt(d), fmt(e), fmt(ratio), note))
    return "\n".join(lines) + "\n\nMedians of %d alternating runs (A B A B ...).\n" % rounds


# ---- report --------------------------------------------------------------

def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%d cores (%s), Linux %s, %s" % (os.cpu_count(), cpu, platform.release(),
                                             time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def fmt(v):
    if v is None:
        return "n/a"
    return "%.2f" % v if abs(v) < 10 else "%.0f" % v


def table(results, rounds):
    lines = ["| measure | disco | etcd 3.4 (or \"other\" as named) | disco/other | notes |",
             "|---|---|---|---|---|"]
    for name, d, e, ratio, note in results:
        lines.append("| %s | %s | %s | %s | %s |" % (name, fmt(d), fmt(e), fmt(ratio), note))
    return "\n".join(lines) + "\n\nMedians of %d alternating runs (A B A B ...).\n" % rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke check)")
    ap.add_argument("--only", default="get,put,v3range,v3put,v3park,tlsget,tlshandshake,tlsmem,"
                                      "park,form,bigstore,etcdget,etcdreg,etcdload")
    ap.add_argument("--mirror-tokens", type=int, default=100000, help="etcdload size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1000000, help="bigstore size")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    only = set(args.only.split(","))
    seconds = 2 if args.quick else 5
    counts = [1000] if args.quick else [10000, 19000]
    tokens = 10000 if args.quick else args.tokens
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it too

    workdir = tempfile.mkdtemp(prefix="disco-bench-")
    results, etcd_results = [], []
    load_before = os.getloadavg()
    try:
        if only & {"etcdget", "etcdreg"}:
            eb = EtcdBacked(workdir)
            try:
                if "etcdget" in only:
                    bench_etcdget(eb, args.rounds, seconds, etcd_results)
                if "etcdreg" in only:
                    bench_etcdreg(eb, args.rounds, seconds, etcd_results)
                print(etcd_results, flush=True)  # in case a later workload fails
            finally:
                eb.stop()
        if "etcdload" in only:
            bench_etcdload(workdir, 10000 if args.quick else args.mirror_tokens, etcd_results)
        for row in etcd_results:
            print(row, flush=True)
        if only & {"get", "put", "v3range", "v3put", "form"}:
            servers = Servers(workdir)
            try:
                if "get" in only:
                    bench_get(servers, args.rounds, seconds, results)
                if "put" in only:
                    bench_put(servers, args.rounds, seconds, results)
                if only & {"v3range", "v3put"}:
                    bench_v3(servers, args.rounds, seconds, results, only)
                if "form" in only:
                    bench_form(servers, args.rounds, results)
            finally:
                servers.stop()
        if only & {"tlsget", "tlshandshake"}:
            bench_tls(workdir, args.rounds, seconds, results, only)
        if "tlsmem" in only:
            bench_tlsmem(workdir, 1000 if args.quick else 10000, args.rounds, results)
        if "v3park" in only:
            bench_v3park(workdir, 1000 if args.quick else 10000, args.rounds, results)
        if "park" in only:
            bench_park(workdir, [c for c in counts if c < hard - 500], args.rounds, results)
        if "bigstore" in only:
            bench_bigstore(workdir, tokens, results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report = "# disco vs etcd 3.4: latest `make bench`\n\nMachine: %s\n\n%s" % (
        machine(), table(results, args.rounds) if results else "")
    if etcd_results:
        load_after = os.getloadavg()
        report += ("\n## disco on the etcd backend (`--etcd-endpoints`)\n\n%s\n"
                   "Load average (1 min) before %.2f, after %.2f (a shared machine).\n" % (
                       etcd_table(etcd_results, args.rounds), load_before[0], load_after[0]))
    print(report)
    if not args.quick:
        history = kept_history(args.out)  # read before "w" truncates the file
        with open(args.out, "w") as f:
            f.write(report + history)
    return 0


HISTORY_MARKER = "## Before and after"


def kept_history(path):
    """The hand-written section of RESULTS.md (profiling notes with before
    and after figures), carried over from the previous file."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return ""
    at = old.find(HISTORY_MARKER)
    return "\n" + old[at:] if at >= 0 else ""


if __name__ == "__main__":
    sys.exit(main())
