"""diagnose's iptables and nftables verdicts against real packets: the topology and the kernel's answer.

Two lab hosts, two links (addresses inside 198.18.0.0/15 only; the root namespace routes none of
198.19.0.0/16)::

      source S                                  target T (the filters under test)
    eth0 198.18.0.s + 198.19.1.10, 198.19.1.200  ── eth0 198.18.0.t (on-link route to 198.19.1.0/24)
    priv0 198.19.2.10/24                         ── enp7s0 198.19.2.1/24

S sends one packet per probe (:mod:`tests.lab.filter_sender`): a UDP datagram or a TCP SYN, from a
given source address and port, to T. What T's filters did with it is read from the kernel's own
counters: every rule and every built-in chain's policy counts the packets it decided, so between
two readings exactly one rule that ends the walk (ACCEPT, DROP, REJECT), or the policy, has counted
the probe. T has no listener on the probed ports and S's sockets close in SYN-SENT, so nothing else
arrives at T's INPUT while a probe is judged.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from tests.lab.helper import Helper
from tests.lab.hosts import HostSpec, Lab, LabHost

HERE = Path(__file__).parent
SETTLE = 2.0  # seconds a probe may take to be counted: far above the milliseconds it takes
SEED = 20261130
PORTS = (53, 6443, 8472, 10250, 31695, 32720)  # the rules' ports; probes go to them and to either side
SPORTS = (20001, 31000, 40000, 53)  # the probes' source ports: in and out of the rules' source-port specs


@dataclass(frozen=True)
class Source:
    """A source address on S, the interface its packets arrive on at T, and T's address they go to."""

    address: str
    iface: str
    dst: str


@dataclass(frozen=True)
class Probe:
    """One packet: from a source, its source port, protocol and destination port."""

    source: Source
    sport: int
    proto: str
    dport: int

    def wire(self) -> dict[str, object]:
        return {
            "proto": self.proto,
            "src": self.source.address,
            "sport": self.sport,
            "dst": self.source.dst,
            "dport": self.dport,
        }

    def describe(self) -> str:
        s = self.source
        return f"{self.proto} {s.address}:{self.sport} → {s.dst}:{self.dport} on {s.iface}"


class Topology:
    """S and T wired as in the module docstring, S's sender running."""

    def __init__(self, lab: Lab, source: str, target: str) -> None:
        self.s, self.t = lab.host(source), lab.host(target)
        _ip(
            "link",
            "add",
            "priv0",
            "netns",
            self.s.netns,
            "type",
            "veth",
            "peer",
            "name",
            "enp7s0",
            "netns",
            self.t.netns,
        )
        self.t.run(
            "set -e; ip link set enp7s0 up; ip addr add 198.19.2.1/24 dev enp7s0; ip route add 198.19.1.0/24 dev eth0; "
            "sysctl -q -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.enp7s0.rp_filter=0"
        )
        self.s.run(
            "set -e; ip link set priv0 up; ip addr add 198.19.1.10/32 dev eth0; ip addr add 198.19.1.200/32 dev eth0; "
            "ip addr add 198.19.2.10/24 dev priv0"
        )
        self.sources = (
            Source("198.19.1.10", "eth0", self.t.ip),
            Source("198.19.1.200", "eth0", self.t.ip),
            Source(self.s.ip, "eth0", self.t.ip),
            Source("198.19.2.10", "enp7s0", "198.19.2.1"),
        )
        self.sender = Helper(self.s, [sys.executable, str(HERE / "filter_sender.py")], "filter-sender.log")

    def decided(self, probe: Probe, read: Callable[[], dict[str, int]], before: dict[str, int]) -> tuple[str, dict]:
        """Send the probe; return what counted it (a key of ``read()``'s answer) and the counters after.

        ``read`` returns the counter of every deciding rule and policy; exactly one must move.
        """
        self.sender.ask(probe.wire())
        deadline = time.monotonic() + SETTLE
        while True:
            after = read()
            moved = [k for k, n in after.items() if n != before.get(k, 0)]
            if len(moved) == 1:
                return moved[0], after
            if moved or time.monotonic() > deadline:
                raise AssertionError(f"{probe.describe()}: counted by {moved or 'nothing'} (one expected)")
            time.sleep(0.01)

    def close(self) -> None:
        self.sender.close()


def probes(topo: Topology, rng: random.Random, count: int) -> list[Probe]:
    """``count`` probes: UDP or TCP, from any source, to the rules' ports and to either side of each."""
    ports = [*PORTS, *(p - 1 for p in PORTS), *(p + 1 for p in PORTS)]
    return [
        Probe(rng.choice(topo.sources), rng.choice(SPORTS), rng.choice(("tcp", "udp")), rng.choice(ports))
        for _ in range(count)
    ]


@contextlib.contextmanager
def lab_topology(lab_factory: Callable[..., Lab], prefix: str) -> Iterator[Topology]:
    """Two fresh lab hosts (``PREFIX-source``, ``PREFIX-target``: no UFW, no listener) wired as a Topology."""
    source, target = f"{prefix}-source", f"{prefix}-target"
    specs = [HostSpec(name, ufw_active=False, http_listener=False) for name in (source, target)]
    with lab_factory(specs) as lab:
        topo = Topology(lab, source, target)
        try:
            yield topo
        finally:
            topo.close()


_COUNTED = re.compile(r"^\[(\d+):\d+\] (-A .*)$")
_POLICY = re.compile(r"^:(INPUT) (ACCEPT|DROP) \[(\d+):\d+\]$")


def iptables_counters(host: LabHost, save: str) -> dict[str, int]:
    """The packet counters of ``save -c -t filter``: ``policy INPUT`` and ``<n> -A …`` (the n-th line) → packets.

    Only the rules that end a walk and the INPUT policy: a jump counts the packets it passed on too.
    """
    out: dict[str, int] = {}
    for n, line in enumerate(host.run(f"{save} -c -t filter").stdout.splitlines()):
        if m := _POLICY.match(line):
            out[f"policy {m.group(1)}"] = int(m.group(3))
        elif (m := _COUNTED.match(line)) and re.search(r" -j (ACCEPT|DROP|REJECT)\b", m.group(2)):
            out[f"{n} {m.group(2)}"] = int(m.group(1))
    return out


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30)


class Tracer:
    """``nft monitor trace`` inside a host: the kernel's own account of each packet's walk through nftables.

    Packets are traced when a chain sets ``meta nftrace set 1`` (the rule sets include one on
    prerouting). For each packet the monitor prints the chains it entered, the rule that gave each
    verdict (``rule … (verdict drop)``) and the policies applied (``… policy drop``).
    """

    def __init__(self, host: LabHost, sender: Helper, warm_up: Probe) -> None:
        """Start the monitor (after the rule set is loaded: it names rules from the ruleset it read at start).

        It listens only some time after it starts: ``warm_up`` probes are sent until one is traced.
        """
        self.proc = host.popen(["stdbuf", "-oL", "nft", "monitor", "trace"], "nft-trace.log")
        self.buffer = b""
        for attempt in range(25):
            sender.ask(replace(warm_up, sport=warm_up.sport + attempt).wire())
            try:
                self.fate(replace(warm_up, sport=warm_up.sport + attempt), last=None, settle=0.2)
                return
            except AssertionError:
                continue
        self.close()
        raise AssertionError("nft monitor trace traced none of 25 packets")

    def fate(self, probe: Probe, last: str | None, settle: float = SETTLE) -> tuple[str, str] | None:
        """Follow the probe's trace to its end: (DROP/REJECT, ``family table/chain: rule`` or ``…: policy drop``).

        None: the packet reached ``last`` (the last base chain on input), dropped by none before it;
        with ``last`` None, as soon as the packet is seen at all.
        """
        assert self.proc.stdout is not None
        wanted = (
            f"ip saddr {probe.source.address} ",
            f"{probe.proto} sport {probe.sport} {probe.proto} dport {probe.dport} ",
        )
        trace = None
        seen: list[str] = []
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            line = self._line(deadline)
            if line is None:
                break
            m = _TRACE.match(line.rstrip())
            if m is None:
                continue
            if trace is None:
                seen.append(line.rstrip())
            tid, family, table, name, what = m.groups()
            chain = f"{family} {table}/{name}"
            if trace is None:
                if what.startswith("packet: ") and all(w in what + " " for w in wanted):
                    trace = tid
                    if last is None:
                        return None
                continue
            if tid != trace:
                continue
            seen.append(line.rstrip())
            if chain == last:
                return None
            if what.startswith("rule ") and what.endswith(("(verdict drop)", "(verdict reject)")):
                rule = uncounted(what[5:].rsplit(" (verdict ", 1)[0])
                rejects = re.search(r"\breject( with .*)?$", rule) is not None  # the trace says drop: reject drops too
                return "REJECT" if rejects else "DROP", f"{chain}: {rule}"
            if what.strip() == "policy drop":
                return "DROP", f"{chain}: policy drop"
        raise AssertionError(
            f"{probe.describe()}: no end of its trace within {settle}s (trace {trace}):\n" + "\n".join(seen)
        )

    def _line(self, deadline: float) -> str | None:
        """The monitor's next line, or None at the deadline (read from the pipe itself: no hidden buffer)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


_TRACE = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (.*)$")


def uncounted(rule: str) -> str:
    """A rule without its counter's values (they differ between two listings)."""
    return re.sub(r"\bcounter packets \d+ bytes \d+", "counter", rule).strip()
