"""Shared helpers for disco's end-to-end tests.

Everything here starts real processes (disco, etcd 3.4) on loopback ports chosen
at run time, stops them by PID, and bounds every wait in time.  Python 3 standard
library only.  Network traffic goes to 127.0.0.1 and nowhere else: http() refuses
any other host.

Public API (other test files import it; keep it stable):

    free_port() -> int
    class Proc: pid, log_path, stop(timeout=5.0) -> int, alive() -> bool, log() -> str
                (extras: wait(timeout) -> int | None, returncode, name)
    start_disco(workdir, extra_args=(), wait_timeout="5s") -> (Proc, base_url)
    start_etcd_v2(workdir) -> (Proc, client_url)
    start_etcd_member(workdir, name, discovery_url, extra_args=()) -> (Proc, peer_url, client_url)
    class EtcdCluster(workdir, size=3, extra_args=(), scheme="http"): a static
                etcd cluster: client_urls, endpoints(), proc(i), kill(i), stop(i),
                start(i), wait_healthy(), close()
                (extras: peer_port=, client_port=, data_dir= to restart a member as it was)
    http(method, url, body=None, headers=None, timeout=10) -> (status, headers, body)
    class RawConn: one raw loopback TCP connection read strictly (see parse_answer):
                request(), send(), read_answer(is_head), shutdown_write(),
                read_to_eof(timeout), close()
    parse_answer(data, is_head) -> (Answer, rest) | None; raises AnswerFormatError
    (extras: etcdctl(endpoint, *args, timeout=10) -> (rc, stdout, stderr),
             wait_until(predicate, timeout, interval, what), StopWaiting,
             disco_wrapper() -> [argv prefix])

Environment: DISCO_BIN (the binary), DISCO_WRAPPER (a command put before it,
e.g. "valgrind --error-exitcode=99 --leak-check=full"; `make valgrind` uses it;
start_disco then waits DISCO_WRAPPED_HEALTH_TIMEOUT_S for a slow start).

Every Proc is also registered with atexit, so a crashed test run still stops
what it started.
"""

import atexit
import http.client as _httpclient
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.parse

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DISCO_BIN = os.path.join(REPO_ROOT, "build", "disco")
ETCD_BIN = os.environ.get("ETCD_BIN", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("ETCDCTL_BIN", "/usr/bin/etcdctl")

DISCO_HEALTH_TIMEOUT_S = 10.0
DISCO_WRAPPED_HEALTH_TIMEOUT_S = 60.0
ETCD_HEALTH_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.1

LOOPBACK = "127.0.0.1"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# Ports handed out by this process; never hand the same one out twice, so two
# processes started back to back cannot be given the same still-free port.
_ports_given = set()
_log_counter = itertools.count(1)
_live_procs = []


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel chose it)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError("could not find a free loopback port")


def clean_env():
    """The environment for child processes: no ETCD_*/ETCDCTL_*/DISC_* settings and no
    HTTP proxies leaking in from the caller's shell."""
    env = {}
    for k, v in os.environ.items():
        ku = k.upper()
        if ku.startswith(("ETCD_", "ETCDCTL_", "DISC_")):
            continue
        if ku in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
            continue
        env[k] = v
    return env


class Proc:
    """A started process with its combined stdout+stderr in a log file.

    It leads its own process group; stop() signals that group by its id (the
    PID), never anything by name.  stop() is idempotent."""

    def __init__(self, argv, log_path, name=None, env=None, cwd=None):
        self.argv = list(argv)
        self.log_path = log_path
        self.name = name or os.path.basename(argv[0])
        self._log_file = open(log_path, "ab")
        self._popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env if env is not None else clean_env(),
            cwd=cwd,
            # its own process group (pgid == pid), so stop() also reaches what a
            # wrapper (DISCO_BIN=strace/valgrind/a script) started
            start_new_session=True,
        )
        self.pid = self._popen.pid
        _live_procs.append(self)

    @property
    def returncode(self):
        """Exit code if the process has ended (negative: killed by that signal), else None."""
        return self._popen.poll()

    def alive(self):
        return self._popen.poll() is None

    def wait(self, timeout):
        """Wait at most `timeout` seconds for the process to end on its own.
        Returns its exit code, or None if it is still running."""
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code."""
        if self._popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._popen.wait(timeout=10)
            # Whatever is left in its group (a wrapper's child) goes too.  Only
            # now: the group's id cannot have been reused while it had members.
            self._signal(signal.SIGKILL)
        if not self._log_file.closed:
            self._log_file.close()
        if self in _live_procs:
            _live_procs.remove(self)
        return self._popen.returncode

    def _signal(self, sig):
        """Signal the process group this Proc leads (its id is self.pid)."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __repr__(self):
        return "Proc(%s pid=%d rc=%r)" % (self.name, self.pid, self.returncode)


@atexit.register
def _stop_all():
    for p in list(_live_procs):
        try:
            p.stop(timeout=2.0)
        except Exception:  # best effort at interpreter exit
            pass


def _log_path(workdir, stem):
    return os.path.join(workdir, "%s.%d.log" % (stem, next(_log_counter)))


class StopWaiting(Exception):
    """Raised by a wait_until predicate that sees the wait is hopeless (e.g. the
    process it waits for has exited); wait_until passes it on at once."""



def sigstop(pid, timeout=5.0):
    """SIGSTOPs PID and returns once the kernel shows it stopped ('T' in
    /proc/PID/stat): kill() returns before every thread of a busy process
    has stopped, and a test that acts at once can still be answered."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("T", "t"):
            return
        time.sleep(0.005)
    raise AssertionError("pid %d not stopped within %.1f s" % (pid, timeout))

def wait_until(predicate, timeout, interval=POLL_INTERVAL_S, what="condition"):
    """Call predicate() until it returns a true value or `timeout` s pass.
    Returns that value, or raises TimeoutError.  An exception from predicate
    counts as false (connection refused while a server starts, etc.), except
    StopWaiting, which is raised at once."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except StopWaiting:
            raise
        except Exception as e:
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s (last error: %r)"
                               % (timeout, what, last_exc))
        time.sleep(interval)


def _wait_healthy(proc, health_url, timeout, ok):
    """Poll health_url until ok(status, body); fail early if proc exits."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            rc = proc.stop()
            raise RuntimeError("%s exited with %r before it was healthy; log:\n%s"
                               % (proc.name, rc, proc.log()[-4000:]))
        try:
            status, _, body = http("GET", health_url, timeout=2)
            last = (status, body[:200])
            if ok(status, body):
                return
        except OSError as e:
            last = e
        time.sleep(POLL_INTERVAL_S)
    proc.stop()
    raise TimeoutError("%s not healthy at %s after %.1fs (last: %r); log:\n%s"
                       % (proc.name, health_url, timeout, last, proc.log()[-4000:]))


def disco_bin():
    return os.environ.get("DISCO_BIN", DEFAULT_DISCO_BIN)


def disco_wrapper():
    """The argv prefix from DISCO_WRAPPER (e.g. valgrind and its flags), or []."""
    return shlex.split(os.environ.get("DISCO_WRAPPER", ""))


def start_disco(workdir, extra_args=(), wait_timeout="5s"):
    """Start `disco serve` on a free loopback port and wait until GET /health is 200.

    In extra_args the placeholders "{base_url}" and "{port}" are replaced by the
    chosen values, so a caller can pass e.g. ("--host", "{base_url}")."""
    binary = disco_bin()
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError("no executable disco at %s (build it, or set DISCO_BIN)" % binary)
    port = free_port()
    base_url = "http://%s:%d" % (LOOPBACK, port)
    extra = [str(a).replace("{base_url}", base_url).replace("{port}", str(port))
             for a in extra_args]
    wrapper = disco_wrapper()
    argv = wrapper + [binary, "serve",
                      "--addr", "%s:%d" % (LOOPBACK, port),
                      "--data-dir", os.path.join(workdir, "disco-data"),
                      "--wait-timeout", wait_timeout] + extra
    proc = Proc(argv, _log_path(workdir, "disco"), name="disco:%d" % port)
    _wait_healthy(proc, base_url + "/health",
                  DISCO_WRAPPED_HEALTH_TIMEOUT_S if wrapper else DISCO_HEALTH_TIMEOUT_S,
                  lambda status, body: status == 200)
    return proc, base_url


def _etcd_health_ok(status, body):
    # etcd 3.4 answers {"health":"true"} (200) once it has a leader.
    return status == 200 and b'"true"' in body


def start_etcd_v2(workdir):
    """One single-node etcd with the v2 API on; the reference v2 store."""
    name = "ref%d" % next(_log_counter)
    peer_port, client_port = free_port(), free_port()
    peer_url = "http://%s:%d" % (LOOPBACK, peer_port)
    client_url = "http://%s:%d" % (LOOPBACK, client_port)
    argv = [ETCD_BIN,
            "--name", name,
            "--data-dir", os.path.join(workdir, name + ".etcd"),
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--initial-cluster", "%s=%s" % (name, peer_url),
            "--initial-cluster-state", "new",
            "--enable-v2",
            "--logger", "zap", "--log-outputs", "stderr"]
    proc = Proc(argv, _log_path(workdir, name), name="etcd-v2:" + name)
    _wait_healthy(proc, client_url + "/health", ETCD_HEALTH_TIMEOUT_S, _etcd_health_ok)
    return proc, client_url


def start_etcd_member(workdir, name, discovery_url, extra_args=(),
                      peer_port=None, client_port=None, data_dir=None):
    """One etcd member bootstrapping with --discovery=<discovery_url>.

    Does not wait for anything: the member may exit or become a proxy.
    Its data dir is WORKDIR/<name>.etcd unless data_dir is given; pass the
    ports of an earlier member to restart it "with the same flags"."""
    peer_port = peer_port or free_port()
    client_port = client_port or free_port()
    peer_url = "http://%s:%d" % (LOOPBACK, peer_port)
    client_url = "http://%s:%d" % (LOOPBACK, client_port)
    argv = [ETCD_BIN,
            "--name", name,
            "--data-dir", data_dir or os.path.join(workdir, name + ".etcd"),
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--discovery", discovery_url,
            "--logger", "zap", "--log-outputs", "stderr"] + list(extra_args)
    proc = Proc(argv, _log_path(workdir, name), name="etcd:" + name)
    return proc, peer_url, client_url


class EtcdCluster:
    """SIZE etcd 3.4 members with a static --initial-cluster on loopback ports
    chosen at run time (one member: a single-node cluster).

    members: list of dicts {name, proc, peer_url, client_url, peer_port,
    client_port, data_dir}; client_urls: their client URLs, in order.
    extra_args go to every member (e.g. TLS flags: then pass scheme="https"
    so the client URLs say so; health is then not polled over HTTP, the
    caller waits with etcdctl).  Waits until every member answers /health
    (a leader exists) unless wait=False.  kill(i) is SIGKILL (no goodbye to
    peers), stop(i) SIGTERM, start(i) restarts a stopped member with its data
    dir; close() stops them all (atexit does too).  Members are Procs: the
    tests may SIGSTOP/SIGCONT them by PID."""

    def __init__(self, workdir, size=3, extra_args=(), scheme="http", wait=True,
                 env=None):
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.scheme = scheme
        self.env = env
        tag = next(_log_counter)
        self.members = []
        for i in range(size):
            peer_port, client_port = free_port(), free_port()
            name = "c%dm%d" % (tag, i)
            self.members.append({
                "name": name, "proc": None,
                "peer_port": peer_port, "client_port": client_port,
                "peer_url": "http://%s:%d" % (LOOPBACK, peer_port),
                "client_url": "%s://%s:%d" % (scheme, LOOPBACK, client_port),
                "data_dir": os.path.join(workdir, name + ".etcd"),
            })
        self.initial_cluster = ",".join("%s=%s" % (m["name"], m["peer_url"])
                                        for m in self.members)
        self.token = "disco-test-%d-%d" % (os.getpid(), tag)
        for i in range(size):
            self.start(i, state="new")
        if wait:
            self.wait_healthy()

    @property
    def client_urls(self):
        return [m["client_url"] for m in self.members]

    def endpoints(self):
        """The client URLs comma-separated (etcdctl --endpoints, etcd_probe)."""
        return ",".join(self.client_urls)

    def start(self, i, state="existing"):
        m = self.members[i]
        argv = [ETCD_BIN,
                "--name", m["name"],
                "--data-dir", m["data_dir"],
                "--listen-peer-urls", m["peer_url"],
                "--initial-advertise-peer-urls", m["peer_url"],
                "--listen-client-urls", m["client_url"],
                "--advertise-client-urls", m["client_url"],
                "--initial-cluster", self.initial_cluster,
                "--initial-cluster-state", state,
                "--initial-cluster-token", self.token,
                "--logger", "zap", "--log-outputs", "stderr"] + self.extra_args
        m["proc"] = Proc(argv, _log_path(self.workdir, m["name"]), name="etcd:" + m["name"],
                         env=self.env)
        return m["proc"]

    def wait_healthy(self, timeout=ETCD_HEALTH_TIMEOUT_S, members=None):
        if self.scheme != "http":
            return
        for i in (range(len(self.members)) if members is None else members):
            m = self.members[i]
            _wait_healthy(m["proc"], m["client_url"] + "/health", timeout, _etcd_health_ok)

    def proc(self, i):
        return self.members[i]["proc"]

    def kill(self, i):
        """SIGKILL member i (its whole process group) and reap it."""
        p = self.members[i]["proc"]
        p._signal(signal.SIGKILL)
        p.wait(10)
        return p.stop()

    def stop(self, i):
        return self.members[i]["proc"].stop()

    def compact_at_newest(self, members=(0,), physical=False):
        """Compacts etcd's history at its newest revision, asked through the
        given members (running ones: a stopped member is not asked);
        physical waits until the compaction is done on disk.  Returns the
        revision."""
        eps = ",".join(self.client_urls[i] for i in members)
        rc, out, err = etcdctl(eps, "endpoint", "status", "-w", "json")
        if rc != 0:
            raise AssertionError("etcdctl endpoint status: %s" % err)
        rev = json.loads(out)[0]["Status"]["header"]["revision"]
        rc, _, err = etcdctl(eps, "compact", str(rev), *(["--physical"] if physical else []))
        if rc != 0:
            raise AssertionError("etcdctl compact %d: %s" % (rev, err))
        return rev

    def close(self):
        for m in self.members:
            if m["proc"] is not None:
                m["proc"]._signal(signal.SIGCONT)  # a stopped member cannot take SIGTERM
                m["proc"].stop()


def start_etcd_and_two_discos(workdir, size=3, extra_args=(), wait_timeout="5s"):
    """An EtcdCluster of SIZE members and two disco instances on it, each
    started as start_disco(workdir, ..., wait_timeout) with extra_args:
    A lists the etcd members in order, B the other way round, so that B's
    watch and writes go through another member than A's (with one member
    they are the same). Returns (etcd, (proc_a, base_url_a), (proc_b,
    base_url_b)); stop them with stop_etcd_and_discos()."""
    etcd = EtcdCluster(workdir, size=size)
    a = start_disco(workdir, ["--etcd-endpoints", ",".join(etcd.client_urls)] + list(extra_args),
                    wait_timeout=wait_timeout)
    b = start_disco(workdir, ["--etcd-endpoints", ",".join(reversed(etcd.client_urls))] +
                    list(extra_args), wait_timeout=wait_timeout)
    return etcd, a, b


def stop_etcd_and_discos(etcd, *discos):
    """Stops the disco Procs, then every member of the EtcdCluster."""
    for p in discos:
        p.stop()
    etcd.close()

def http(method, url, body=None, headers=None, timeout=10):
    """One HTTP/1.1 request on a fresh connection to a loopback host.

    body: None, bytes/str, or a dict (sent application/x-www-form-urlencoded).
    Returns (status, {lower-case header name: value}, body bytes); never raises
    on 4xx/5xx (connection errors and timeouts do raise OSError)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise ValueError("only http:// URLs are supported: %r" % url)
    if u.hostname not in _LOOPBACK_HOSTS:
        raise ValueError("refusing non-loopback host in %r" % url)
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        body = urllib.parse.urlencode(body).encode()
        if not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    elif isinstance(body, str):
        body = body.encode()
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    conn = _httpclient.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        out_headers = {}
        for k, v in resp.getheaders():
            k = k.lower()
            out_headers[k] = out_headers[k] + ", " + v if k in out_headers else v
        return resp.status, out_headers, data
    finally:
        conn.close()


def etcdctl(endpoint, *args, timeout=10):
    """Run `etcdctl --endpoints <endpoint> ARGS` with the v3 API.
    Returns (rc, stdout, stderr) as str; rc is None if it did not finish in time."""
    env = clean_env()
    env["ETCDCTL_API"] = "3"
    argv = [ETCDCTL_BIN, "--endpoints", endpoint,
            "--dial-timeout", "%ds" % max(1, int(timeout / 2)),
            "--command-timeout", "%ds" % max(1, int(timeout / 2))] + list(args)
    try:
        cp = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return None, (e.stdout or b"").decode("utf-8", "replace"), \
            (e.stderr or b"").decode("utf-8", "replace")
    return cp.returncode, cp.stdout.decode("utf-8", "replace"), cp.stderr.decode("utf-8", "replace")


# ---- raw connections, read strictly --------------------------------------

class AnswerFormatError(AssertionError):
    """Bytes from the server that are not a well-formed HTTP/1.1 answer (or
    not the answer the request calls for): the stream is desynchronised."""


class Answer:
    """One HTTP answer as it came off the wire: status, reason, headers
    ({lower-case name: value}; a repeated name raises), body, and the raw
    head (status line and headers, without the blank line)."""

    def __init__(self, status, reason, headers, body, head):
        self.status, self.reason, self.headers = status, reason, headers
        self.body, self.head = body, head

    def __repr__(self):
        return "Answer(%d %s, %r, %r)" % (self.status, self.reason, self.headers,
                                          self.body[:300])


# A header line: a token, a colon, one optional space, a value of visible
# bytes and spaces. disco writes "Name: value" and nothing else.
_TCHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_answer(data, is_head):
    """Parses one answer from the front of `data` (bytes).

    Strict on purpose: a status line "HTTP/1.1 NNN Reason", header lines
    "Name: value", each final answer framed by exactly one Content-Length
    (no chunked answers: disco never sends them), and for a HEAD request
    (`is_head`) no body at all, whatever Content-Length says. An interim
    100 Continue is returned like any answer (no body, no length).
    Returns (Answer, rest) or None when `data` holds only a prefix of an
    answer; raises AnswerFormatError on anything else."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if not b"HTTP/1.1 ".startswith(data[:9]):
            raise AnswerFormatError("not an HTTP/1.1 answer: %r" % data[:200])
        if len(data) > 64 * 1024:
            raise AnswerFormatError("an answer head over 64 KiB: %r" % data[:200])
        return None
    head = data[:end]
    lines = head.split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if (len(parts) < 3 or parts[0] != b"HTTP/1.1" or len(parts[1]) != 3
            or not parts[1].isdigit()):
        raise AnswerFormatError("bad status line %r (stream: %r)" % (status_line, data[:200]))
    status = int(parts[1])
    if not 100 <= status <= 599:
        raise AnswerFormatError("status out of range: %r" % status_line)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or any(ch not in _TCHARS for ch in name):
            raise AnswerFormatError("bad header line %r in %r" % (line, head[:300]))
        if value.startswith(b" "):
            value = value[1:]
        if any(ch < 0x20 or ch == 0x7f for ch in value):
            raise AnswerFormatError("control byte in header %r" % line)
        key = name.decode("ascii").lower()
        if key in headers:
            raise AnswerFormatError("header %s repeated in %r" % (key, head[:300]))
        headers[key] = value.decode("latin-1")
    rest = data[end + 4:]
    if status == 100:
        return Answer(status, parts[2].decode("latin-1"), headers, b"", head), rest
    if "transfer-encoding" in headers:
        raise AnswerFormatError("a Transfer-Encoding answer: %r" % head[:300])
    cl = headers.get("content-length")
    if cl is None or not cl.isdigit():
        raise AnswerFormatError("no valid Content-Length in %r" % head[:300])
    n = 0 if is_head else int(cl)
    if len(rest) < n:
        return None
    return Answer(status, parts[2].decode("latin-1"), headers, rest[:n], head), rest[n:]


class RawConn:
    """One TCP connection to a loopback disco, written and read by hand so a
    test controls every byte: pipelining, HEAD, HTTP/1.0, half-close. Every
    read is strict (parse_answer) and bounded by `timeout` seconds."""

    def __init__(self, base_url, timeout=10.0):
        u = urllib.parse.urlsplit(base_url)
        if u.hostname not in _LOOPBACK_HOSTS:
            raise ValueError("refusing non-loopback host in %r" % base_url)
        self.hostport = "%s:%d" % (u.hostname, u.port)
        self.timeout = timeout
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        self.buf = b""

    @staticmethod
    def format_request(method, path, body=b"", headers=(), version="HTTP/1.1", host="x"):
        """The bytes of one request; a body goes as a url-encoded form."""
        head = "%s %s %s\r\n" % (method, path, version)
        if host is not None:
            head += "Host: %s\r\n" % host
        for h in headers:
            head += h + "\r\n"
        if isinstance(body, str):
            body = body.encode()
        if body:
            head += ("Content-Type: application/x-www-form-urlencoded\r\n"
                     "Content-Length: %d\r\n" % len(body))
        return head.encode() + b"\r\n" + body

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, path, body=b"", headers=(), version="HTTP/1.1"):
        self.send(self.format_request(method, path, body, headers, version, self.hostport))

    def shutdown_write(self):
        """Half-closes: the server sees EOF, the connection can still be read."""
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no complete answer in time (have %r)" % self.buf[:200])
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection without an answer "
                                  "(have %r)" % self.buf[:200])
        self.buf += chunk

    def read_answer(self, is_head=False, timeout=None):
        """The next final answer (an interim 100 is skipped). Raises
        ConnectionError if the server closes first, socket.timeout after
        `timeout` s (default: the connection's), AnswerFormatError on a
        malformed stream."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            got = parse_answer(self.buf, is_head)
            if got is None:
                self._fill(deadline)
                continue
            answer, self.buf = got
            if answer.status != 100:
                return answer

    def read_to_eof(self, timeout=None):
        """Everything up to the server's close (a reset counts as a close),
        after what was already buffered. Raises socket.timeout when the
        server keeps the connection open past `timeout` s."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("the server did not close within the time (have %r)"
                                     % self.buf[:200])
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                data, self.buf = self.buf, b""
                return data
            self.buf += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
