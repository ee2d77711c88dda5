"""A raw HTTP/2 (h2c) client for the end-to-end tests, spoken frame by frame
with nothing beyond the standard library: literal HPACK headers (no
indexing, no Huffman) and hand-encoded protobuf and gRPC framing. The tests
that use it need orderings and malformed frames no library would send.

Every connection goes to the host and port a test gives it (loopback).
"""
import os
import socket
import struct

# Under a wrapper (valgrind) disco is many times slower: timeouts scale.
SLOW = 10 if os.environ.get("DISCO_WRAPPER") else 1

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types (RFC 9113 section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    0, 1, 3, 4, 6, 7, 8, 9
# Flags.
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
# Error codes.
NO_ERROR, PROTOCOL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR, \
    ENHANCE_YOUR_CALM = 0, 1, 6, 7, 9, 11


def frame(ftype, flags, stream, payload=b""):
    """One frame's bytes: 9-byte header, then the payload."""
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) +
            struct.pack(">I", stream) + payload)


def hpack_literal(fields):
    """Header fields as HPACK literals without indexing, no Huffman (every
    name and value shorter than 127 bytes)."""
    out = b""
    for name, value in fields:
        name, value = name.encode(), value.encode()
        assert len(name) < 127 and len(value) < 127
        out += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return out


# ---- protobuf and gRPC framing --------------------------------------------

def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def field(number, data):
    """One length-delimited protobuf field (bytes, string or message)."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def grpc_message(pb):
    """gRPC's length-prefixed message: not compressed, 4-byte length."""
    return b"\x00" + struct.pack(">I", len(pb)) + pb


def watch_create(key, range_end):
    """A WatchRequest{create_request{key, range_end}}, framed for gRPC."""
    return grpc_message(field(1, field(1, key) + field(2, range_end)))


def read_varint(data, i):
    v = shift = 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def pb_fields(data):
    """A protobuf message as {field number: [values]} (varints as ints,
    length-delimited fields as bytes)."""
    out, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(data, i)
        elif wt == 2:
            n, i = read_varint(data, i)
            v, i = data[i:i + n], i + n
        else:
            raise AssertionError("wire type %d" % wt)
        out.setdefault(num, []).append(v)
    return out


def grpc_messages(data):
    """The messages of a gRPC body, and the bytes of a partial last one."""
    out = []
    while len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[1:5], "big"):
        n = int.from_bytes(data[1:5], "big")
        out.append(data[5:5 + n])
        data = data[5 + n:]
    return out, data


# ---- one connection ---------------------------------------------------------

class H2:
    """One h2c connection spoken frame by frame. A frame is the tuple
    (type, flags, stream, payload)."""

    def __init__(self, host, port, timeout=10 * SLOW):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.authority = "%s:%d" % (host, port)
        # Frames of other streams that answer() read past, for their own.
        self.held = []

    def close(self):
        self.sock.close()

    def send(self, ftype, flags, stream, payload=b""):
        self.sock.sendall(frame(ftype, flags, stream, payload))

    def read(self):
        """The next frame, or None at EOF (a reset connection included)."""
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    f = (self.buf[3], self.buf[4],
                         int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF, self.buf[9:9 + n])
                    self.buf = self.buf[9 + n:]
                    return f
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def start(self, settings=b""):
        """Preface and SETTINGS; returns once the server's SETTINGS is acked."""
        self.sock.sendall(PREFACE)
        self.send(SETTINGS, 0, 0, settings)
        got_settings = got_ack = False
        while not (got_settings and got_ack):
            f = self.read()
            assert f is not None, "EOF during the handshake"
            if f[0] == SETTINGS and f[1] & ACK:
                got_ack = True
            elif f[0] == SETTINGS:
                got_settings = True
                self.send(SETTINGS, ACK, 0)

    def until(self, pred):
        """Frames up to and including the first that `pred` accepts; None
        at EOF."""
        seen = []
        while True:
            f = self.read()
            if f is None:
                return seen, None
            seen.append(f)
            if pred(f):
                return seen, f

    def grpc_head(self, path):
        return hpack_literal([(":method", "POST"), (":scheme", "http"), (":path", path),
                              (":authority", self.authority),
                              ("content-type", "application/grpc"), ("te", "trailers")])

    def open_watch(self, stream, creates):
        """A Watch call on `stream` carrying the framed `creates`."""
        self.send(HEADERS, END_HEADERS, stream, self.grpc_head("/etcdserverpb.Watch/Watch"))
        self.send(DATA, 0, stream, b"".join(creates))

    def get(self, stream, path, authority=None):
        self.send(HEADERS, END_STREAM | END_HEADERS, stream, hpack_literal(
            [(":method", "GET"), (":scheme", "http"), (":path", path),
             (":authority", authority or self.authority)]))

    def answer(self, stream):
        """Frames until `stream` ends; (status byte, frames of `stream` and
        of the connection). :status 200 is HPACK's static entry 8 (0x88),
        which nghttp2 always uses."""
        def ends(f):
            return (f[2] == stream and f[0] in (HEADERS, DATA, RST_STREAM)
                    and (f[1] & END_STREAM or f[0] == RST_STREAM))
        # Answers to several streams may come in one write, interleaved:
        # frames of other streams wait in `held` for their own answer().
        frames = [f for f in self.held if f[2] == stream]
        self.held = [f for f in self.held if f[2] != stream]
        last = next((f for f in frames if ends(f)), None)
        while last is None:
            f = self.read()
            if f is None:
                break
            if f[2] not in (0, stream):
                self.held.append(f)
                continue
            frames.append(f)
            if ends(f):
                last = f
        assert last is not None, "EOF before stream %d ended: %r" % (stream, frames)
        heads = [f for f in frames if f[2] == stream and f[0] == HEADERS]
        return (heads[0][3][:1] if heads else None), frames
