"""Inside the source lab host, for the UFW differential test: real connections, and what became of them.

Run with any python3 inside the host's namespaces; one JSON request per line on stdin, one JSON
answer per line on stdout. Every attempt binds its own source address and a fresh source port
(a counter per address over ``PORTS``), so conntrack never sees an old flow again.

    {"op": "probe", "flows": [{"id", "src", "dst", "port", "proto"}], "timeout": s}
        one attempt per flow, all at once → {"id": [outcome, source port]}
    {"op": "burst", "flow": {...}, "count": 10, "timeout": s}
        attempts one after the other → [[outcome, source port], ...]

An outcome is ``open`` (TCP: connected; UDP: the echo came back), ``refused`` (a TCP RST or an
ICMP/ICMPv6 destination unreachable quoting the attempt: REJECT) or ``timeout`` (nothing: DROP).
The ICMP errors are read from raw sockets, not only from the socket's error: Linux does not fail
an IPv6 TCP connect on an ICMPv6 port unreachable (it keeps retrying the SYN), while the packet on
the wire is what REJECT sent. The source port lets the target's conntrack say whether an attempt
without answer was let in after all (its answer was late).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import json
import selectors
import socket
import struct
import sys
import time

PORTS = (20000, 59999)
_next: dict[str, itertools.cycle[int]] = {}
_tokens = itertools.count()


def _sport(src: str) -> int:
    if src not in _next:
        _next[src] = itertools.cycle(range(PORTS[0], PORTS[1] + 1))
    return next(_next[src])


class Attempt:
    """One TCP connect or one UDP datagram, non-blocking."""

    def __init__(self, flow: dict) -> None:
        family = socket.AF_INET6 if ":" in flow["src"] else socket.AF_INET
        kind = socket.SOCK_STREAM if flow["proto"] == "tcp" else socket.SOCK_DGRAM
        self.udp = kind == socket.SOCK_DGRAM
        self.token = f"t{next(_tokens)}-{time.monotonic_ns()}"
        self.sock = socket.socket(family, kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setblocking(False)
        for _ in range(50):
            sport = _sport(flow["src"])
            try:
                self.sock.bind((flow["src"], sport))
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        self.sport = sport
        self.key = (
            flow["proto"],
            str(ipaddress.ip_address(flow["src"])),
            sport,
            str(ipaddress.ip_address(flow["dst"])),
            flow["port"],
        )
        dst = (flow["dst"], flow["port"])
        if self.udp:
            self.sock.connect(dst)
            self.sock.send(self.token.encode())
        else:
            err = self.sock.connect_ex(dst)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, f"connect to {dst}")
        self.outcome: str | None = None

    def event(self) -> int:
        return selectors.EVENT_READ if self.udp else selectors.EVENT_WRITE

    def ready(self) -> None:
        """The socket woke up: read what happened."""
        if self.udp:
            try:
                data = self.sock.recv(2048)
                self.outcome = "open" if data == self.token.encode() else None
            except ConnectionRefusedError:
                self.outcome = "refused"
            except BlockingIOError:
                self.outcome = None
            return
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in (0, errno.ECONNRESET):  # ECONNRESET: established, then reset (a RST in SYN_SENT is ECONNREFUSED)
            self.outcome = "open"
        elif err == errno.ECONNREFUSED:
            self.outcome = "refused"
        else:
            self.outcome = f"error {errno.errorcode.get(err, err)}"


class Unreachables:
    """Raw ICMP and ICMPv6 sockets: destination-unreachable errors, keyed by the flow they quote."""

    def __init__(self) -> None:
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        for s in (self.v4, self.v6):
            s.setblocking(False)

    def drain(self) -> None:
        for s in (self.v4, self.v6):
            while True:
                try:
                    s.recv(4096)
                except BlockingIOError:
                    break

    def read(self, sock: socket.socket) -> tuple[str, str, int, str, int] | None:
        """Return (proto, src, sport, dst, dport) of the packet an unreachable quotes, or None."""
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return None
        if sock is self.v4:
            data = data[(data[0] & 0x0F) * 4 :]  # past the IPv4 header of the ICMP packet
            if len(data) < 8 or data[0] != 3:  # destination unreachable
                return None
            inner = data[8:]
            hl = (inner[0] & 0x0F) * 4
            proto, src, dst = inner[9], inner[12:16], inner[16:20]
            ports = inner[hl : hl + 4]
        else:
            if len(data) < 8 or data[0] != 1:  # ICMPv6 destination unreachable
                return None
            inner = data[8:]
            proto, src, dst = inner[6], inner[8:24], inner[24:40]
            ports = inner[40:44]
        if len(ports) < 4 or proto not in (6, 17):
            return None
        sport, dport = struct.unpack("!HH", ports)
        return (
            {6: "tcp", 17: "udp"}[proto],
            str(ipaddress.ip_address(src)),
            sport,
            str(ipaddress.ip_address(dst)),
            dport,
        )


UNREACHABLES: Unreachables | None = None


def attempt_all(flows: list[dict], timeout: float) -> list[tuple[str, int]]:
    """Start every attempt at once, wait until each has an outcome or the timeout passes."""
    assert UNREACHABLES is not None
    UNREACHABLES.drain()
    attempts = [Attempt(f) for f in flows]
    by_flow = {a.key: a for a in attempts}
    sel = selectors.DefaultSelector()
    for a in attempts:
        sel.register(a.sock, a.event(), a)
    for raw in (UNREACHABLES.v4, UNREACHABLES.v6):
        sel.register(raw, selectors.EVENT_READ, None)
    deadline = time.monotonic() + timeout
    waiting = len(attempts)
    final = False
    while waiting and not final:
        left = deadline - time.monotonic()
        final = left <= 0  # one last look at what already came: this process may have been asleep
        for key, _ in sel.select(max(left, 0)):
            if key.data is None:
                assert isinstance(key.fileobj, socket.socket)
                quoted = UNREACHABLES.read(key.fileobj)
                a = by_flow.get(quoted) if quoted else None
                if a is None or a.outcome is not None:
                    continue
                a.outcome = "refused"
            else:
                a = key.data
                a.ready()
                if a.outcome is None:
                    continue
            sel.unregister(a.sock)
            waiting -= 1
    out = []
    for a in attempts:
        out.append((a.outcome or "timeout", a.sport))
        a.sock.close()
    sel.close()
    return out


def main() -> None:
    global UNREACHABLES
    UNREACHABLES = Unreachables()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "probe":
                got = attempt_all(req["flows"], req["timeout"])
                answer: object = {f["id"]: list(o) for f, o in zip(req["flows"], got, strict=True)}
            elif req["op"] == "burst":
                answer = [list(attempt_all([req["flow"]], req["timeout"])[0]) for _ in range(req["count"])]
            else:
                answer = {"error": f"unknown op {req['op']!r}"}
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
