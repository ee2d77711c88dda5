#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/ (committed; run
this again only to regenerate them).

fuzz_http gets the requests real etcd 3.4 members sent to a discovery URL
(from the capture named on the command line, default
/work/shared/data/etcd34-discovery-capture.log), re-aimed at the fuzz
world's token "tok", one file each and one file with the whole exchange
pipelined, plus a few hand-written shapes (chunked body, /new, HEAD,
Expect: 100-continue, held answers, HTTP/1.0 keep-alive, watches that
time out, half-closes, a TLS ClientHello). fuzz_v2 and fuzz_form get the same member flow in
their own input formats (see the comments at the top of each target).
"""
import ast
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURE = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/etcd34-discovery-capture.log"


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def captured_requests():
    seen = []
    line_re = re.compile(r"^==> (\S+) (\S+) hdrs=(\{.*\}) body=(.*)$")
    with open(CAPTURE) as f:
        for line in f:
            m = line_re.match(line.rstrip("\n"))
            if not m:
                continue
            method, target, hdrs, body = m.groups()
            target = target.replace("/tok2", "/tok")
            hdrs = ast.literal_eval(hdrs)
            body = ast.literal_eval(body) or b""
            if (method, target, body) not in [(s[0], s[1], s[3]) for s in seen]:
                seen.append((method, target, hdrs, body))
    return seen


def raw(method, target, hdrs, body):
    head = "%s %s HTTP/1.1\r\n" % (method, target)
    for k, v in hdrs.items():
        head += "%s: %s\r\n" % (k, v)
    return head.encode() + b"\r\n" + body


def tls_client_hello():
    """A real TLS client's first flight (made in memory): what a TLS client
    sends to the plain-HTTP port."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="disco.test")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def main():
    reqs = captured_requests()
    for i, (method, target, hdrs, body) in enumerate(reqs):
        write("fuzz_http", "capture-%02d" % i, raw(method, target, hdrs, body))
    write("fuzz_http", "capture-pipelined", b"".join(raw(*r) for r in reqs))
    host = {"Host": "disco.test"}
    form = {"Host": "disco.test", "Content-Type": "application/x-www-form-urlencoded"}
    write("fuzz_http", "new", raw("GET", "/new?size=3", host, b""))
    write("fuzz_http", "discovery-surface",
          raw("GET", "/tok?recursive=false", host, b"") +
          raw("PUT", "/tok/aa?prevExist=false", dict(form, **{"Content-Length": "8"}),
              b"value=m3"))
    write("fuzz_http", "chunked",
          raw("PUT", "/v2/keys/_etcd/registry/tok/c", dict(form, **{"Transfer-Encoding":
                                                                    "chunked"}),
              b"3;x=y\r\nval\r\n6\r\nue=abc\r\n0\r\nTrailer: t\r\n\r\n"))
    write("fuzz_http", "head", raw("HEAD", "/tok", host, b""))
    write("fuzz_http", "expect-continue",
          raw("PUT", "/tok/bb", dict(form, **{"Content-Length": "3", "Expect": "100-continue"}),
              b"v=1"))
    write("fuzz_http", "ttl-and-cas",
          raw("PUT", "/v2/keys/_etcd/registry/tok/t?ttl=1", dict(form, **{"Content-Length": "3"}),
              b"v=1") +
          raw("PUT", "/v2/keys/_etcd/registry/tok/t?prevValue=1",
              dict(form, **{"Content-Length": "7"}), b"value=2") +
          raw("DELETE", "/v2/keys/_etcd/registry/tok/t?prevIndex=5", host, b""))

    # The request lifecycle: answers held until the (lagging) store catches
    # up, HEAD and HTTP/1.0 answers among them, watches reaching the short
    # wait timeout while the world writes token "bg", and half-closes. An
    # input whose last byte is odd half-closes at once; else it waits for
    # its answers first (see fuzz_http.c).
    reg = "/v2/keys/_etcd/registry/"
    put = lambda target, body: raw("PUT", target, dict(form, **{"Content-Length": str(len(body))}),
                                   body)
    write("fuzz_http", "held-head-get",
          put(reg + "tok/h", b"value=v1") + raw("HEAD", reg + "tok/h", host, b"") +
          raw("GET", reg + "tok/h", host, b"") + raw("HEAD", "/tok", host, b""))
    write("fuzz_http", "http10-keep-alive",
          put(reg + "tok/k", b"value=v2") +
          b"HEAD /tok/k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
          b"GET /tok/k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
          b"GET /tok HTTP/1.0\r\n\r\n")
    write("fuzz_http", "watch-timeout",
          raw("GET", reg + "tok/_config/size?wait=true", host, b"") +
          raw("HEAD", "/tok/_config/size", host, b""))
    write("fuzz_http", "watch-bg-events",
          raw("GET", reg + "bg?wait=true&recursive=true", host, b"") +
          raw("GET", reg + "bg/k?wait=true", host, b"") + raw("HEAD", reg + "bg/k", host, b""))
    write("fuzz_http", "half-close-held", put(reg + "tok/q", b"value=1") +
          put("/tok/r", b"value=1"))
    write("fuzz_http", "combined",
          put(reg + "tok/c", b"value=v1") + raw("HEAD", reg + "tok/c", host, b"") +
          raw("GET", reg + "tok/c", host, b"") + raw("GET", reg + "tok/c?wait=true", host, b"") +
          raw("GET", reg + "tok/c", host, b""))
    write("fuzz_http", "tls-client-hello", tls_client_hello())

    # fuzz_v2: ctl byte (kind | surface << 3 | jump << 5), "path\nquery\nbody", NUL between.
    def rec(kind, surface, jump, path, query=b"", body=b""):
        return bytes([kind | surface << 3 | jump << 5]) + path + b"\n" + query + b"\n" + body

    flow = [
        rec(0, 0, 0, b"_config/size", b"quorum=false&recursive=false&sorted=false"),
        rec(0, 2, 0, b"_etcd/registry/tok", b"quorum=false&recursive=false&sorted=false"),
        rec(6, 0, 0, b"f300e4e68af0f023", b"", b"value=m3%3Dhttp%3A%2F%2F127.0.0.1%3A23380"),
        rec(5, 0, 0, b"f300e4e68af0f023", b"recursive=false&waitIndex=4"),
        rec(7, 1, 0, b"", b"waitIndex=5"),
        rec(1, 0, 4, b"ttlkey", b"ttl=2", b"value=x"),
        rec(3, 0, 0, b"86f5e6aacb2ddcde", b"prevValue=m1%3Dhttp%3A%2F%2F10.0.0.1%3A2380"),
        rec(2, 1, 0, b"", b"", b"value=queued"),
        rec(4, 0, 7, b"", b"recursive=true&sorted=true"),
        rec(0, 3, 0, b"new", b"size=5"),
    ]
    write("fuzz_v2", "member-flow", b"\0".join(flow))
    for i, r in enumerate(flow):
        write("fuzz_v2", "one-%02d" % i, r)

    write("fuzz_form", "member-value", b"\0value=m1%3Dhttp%3A%2F%2F127.0.0.1%3A21380")
    write("fuzz_form", "params", b"\0quorum=false&recursive=false&sorted=false&waitIndex=7")
    write("fuzz_form", "errors", b"\0a=%zz&b=2;c&d=%00&e+f=g+h&&=&x")
    write("fuzz_form", "path", b"\x01/_etcd/registry/tok/caf%C3%A9/%2e%2e/a+b")
    write("fuzz_form", "number", b"\x02000018446744073709551615")
    write("fuzz_form", "bool", b"\x02True")


if __name__ == "__main__":
    main()
