#!/usr/bin/env python3
"""Minimal CQL client (native protocol v4, standard library only).

scripts/deps.sh uses it to tell when Cassandra is ready, and
scripts/blackbox.sh to print query results, since cqlsh is not packaged
in Debian. It speaks just enough of the protocol for that: STARTUP, then
one QUERY per statement, and prints rows as a table.

Usage:
  cql.py [--host HOST:PORT] [--timeout SECONDS] STATEMENT...
  cql.py --ready [--host HOST:PORT]   # exit 0 once system.local answers

Exit status: 0 on success, 1 on a server error, 2 when the server cannot be
reached or speaks something unexpected.
"""

import argparse
import datetime
import ipaddress
import socket
import struct
import sys
import uuid

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_QUERY, OP_RESULT = 0x07, 0x08
CONSISTENCY_ONE = 0x0001

# Result kinds.
KIND_VOID, KIND_ROWS, KIND_SET_KEYSPACE, KIND_SCHEMA_CHANGE = 1, 2, 3, 5


class CQLError(Exception):
    """An ERROR frame from the server."""


class ProtocolError(Exception):
    """Bytes that are not the protocol this client speaks."""


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("truncated frame")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def byte(self):
        return self.take(1)[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def string(self):
        return self.take(self.short()).decode("utf-8", "replace")

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def option(self):
        """A column type: (id, params)."""
        tid = self.short()
        if tid == 0x0000:
            return (tid, self.string())
        if tid in (0x0020, 0x0022):  # list, set
            return (tid, self.option())
        if tid == 0x0021:  # map
            return (tid, (self.option(), self.option()))
        if tid == 0x0030:  # UDT
            ks, name = self.string(), self.string()
            fields = [(self.string(), self.option()) for _ in range(self.short())]
            return (tid, (ks, name, fields))
        if tid == 0x0031:  # tuple
            return (tid, [self.option() for _ in range(self.short())])
        return (tid, None)


def pack_string_map(m):
    out = struct.pack(">H", len(m))
    for k, v in m.items():
        for s in (k, v):
            b = s.encode()
            out += struct.pack(">H", len(b)) + b
    return out


def frame(opcode, body, stream=0):
    return struct.pack(">BBhBi", VERSION, 0, stream, opcode, len(body)) + body


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError("connection closed by server")
        buf += chunk
    return buf


def recv_frame(sock):
    version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    if version & 0x7F != VERSION:
        raise ProtocolError("unexpected protocol version %#x" % version)
    if length < 0 or length > 256 << 20:
        raise ProtocolError("frame length %d out of range" % length)
    body = recv_exact(sock, length)
    if opcode == OP_ERROR:
        r = Reader(body)
        code = r.int()
        raise CQLError("error %#06x: %s" % (code, r.string()))
    return opcode, body


def decode(t, b):
    """A cell value as a printable Python value."""
    if b is None:
        return None
    tid, params = t
    if tid in (0x0001, 0x000D):  # ascii, varchar
        return b.decode("utf-8", "replace")
    if tid in (0x0002, 0x0005):  # bigint, counter
        return struct.unpack(">q", b)[0]
    if tid == 0x0009:
        return struct.unpack(">i", b)[0]
    if tid == 0x0013:
        return struct.unpack(">h", b)[0]
    if tid == 0x0014:
        return struct.unpack(">b", b)[0]
    if tid == 0x000E:  # varint
        return int.from_bytes(b, "big", signed=True)
    if tid == 0x0004:
        return b != b"\x00"
    if tid == 0x0007:
        return struct.unpack(">d", b)[0]
    if tid == 0x0008:
        return struct.unpack(">f", b)[0]
    if tid == 0x000B:  # timestamp: ms since epoch
        ms = struct.unpack(">q", b)[0]
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return (epoch + datetime.timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")
    if tid in (0x000C, 0x000F):
        return str(uuid.UUID(bytes=b))
    if tid == 0x0010:
        return str(ipaddress.ip_address(b))
    if tid == 0x0011:  # date: days since epoch, centred on 2^31
        days = struct.unpack(">I", b)[0] - (1 << 31)
        return (datetime.date(1970, 1, 1) + datetime.timedelta(days=days)).isoformat()
    if tid == 0x0003:
        return "0x" + b.hex()
    if tid in (0x0020, 0x0022):
        r = Reader(b)
        return [decode(params, r.bytes()) for _ in range(r.int())]
    if tid == 0x0021:
        r = Reader(b)
        return {str(decode(params[0], r.bytes())): decode(params[1], r.bytes()) for _ in range(r.int())}
    if tid == 0x0030:
        r = Reader(b)
        out = {}
        for name, ft in params[2]:
            if r.pos >= len(b):
                break
            out[name] = decode(ft, r.bytes())
        return out
    if tid == 0x0031:
        r = Reader(b)
        return tuple(decode(et, r.bytes()) for et in params)
    return "0x" + b.hex()


def parse_rows(r):
    flags, ncols = r.int(), r.int()
    if flags & 0x0002:
        r.bytes()  # paging state: this client reads the first page only
    if flags & 0x0004:
        raise ProtocolError("result without metadata")
    if flags & 0x0001:
        r.string(), r.string()
    cols = []
    for _ in range(ncols):
        if not flags & 0x0001:
            r.string(), r.string()
        cols.append((r.string(), r.option()))
    rows = []
    for _ in range(r.int()):
        rows.append([decode(t, r.bytes()) for _, t in cols])
    return [c for c, _ in cols], rows


class Session:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.sock.sendall(frame(OP_STARTUP, pack_string_map({"CQL_VERSION": "3.0.0"})))
        opcode, _ = recv_frame(self.sock)
        if opcode == OP_AUTHENTICATE:
            raise ProtocolError("server requires authentication; this client supports none")
        if opcode != OP_READY:
            raise ProtocolError("unexpected opcode %#x after STARTUP" % opcode)

    def query(self, statement, page_size=5000):
        q = statement.encode()
        body = struct.pack(">i", len(q)) + q + struct.pack(">HBi", CONSISTENCY_ONE, 0x04, page_size)
        self.sock.sendall(frame(OP_QUERY, body, stream=1))
        opcode, body = recv_frame(self.sock)
        if opcode != OP_RESULT:
            raise ProtocolError("unexpected opcode %#x after QUERY" % opcode)
        r = Reader(body)
        kind = r.int()
        if kind == KIND_ROWS:
            return parse_rows(r)
        return None, None

    def close(self):
        self.sock.close()


def fmt(v):
    if v is None:
        return "null"
    return str(v)


def print_table(cols, rows):
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [len(c) for c in cols]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    print(line(cols))
    print("-+-".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    print("(%d row%s)" % (len(rows), "" if len(rows) == 1 else "s"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1:9042")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--ready", action="store_true", help="exit 0 if system.local answers a query")
    p.add_argument("statements", nargs="*")
    a = p.parse_args()
    host, _, port = a.host.rpartition(":")
    try:
        s = Session(host, int(port), a.timeout)
        try:
            if a.ready:
                _, rows = s.query("SELECT release_version FROM system.local")
                print("cassandra %s" % rows[0][0])
                return 0
            for st in a.statements:
                cols, rows = s.query(st)
                if cols is not None:
                    print_table(cols, rows)
        finally:
            s.close()
    except CQLError as e:
        print("cql: %s" % e, file=sys.stderr)
        return 1
    except (OSError, ProtocolError, struct.error) as e:
        print("cql: %s: %s" % (a.host, e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
