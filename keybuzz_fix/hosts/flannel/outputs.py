"""Parsers of single tools' outputs in a node's capture: iproute2's ``ip`` and ``bridge``, and the probes (pure code).

Each parser reads one command's output as the collect script prints it (``ip -d -o link show``,
``ip -o -4 addr show``, ``ip -4 route show``, ``ip -4 neigh show``, ``bridge fdb show``, and the
``ping``/``curl``/``dig`` lines of each probe) and skips lines it does not know. They are put
together into a :class:`~keybuzz_fix.hosts.flannel.capture.Capture` by
:mod:`keybuzz_fix.hosts.flannel.capture`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """One network device as ``ip -d -o link show`` prints it."""

    name: str
    kind: str | None  # vxlan, wireguard, bridge, veth, ... (None: a plain NIC)
    mtu: int | None
    mac: str | None
    up: bool
    vni: int | None = None
    local: str | None = None  # vxlan: the underlay address it sends from
    dev: str | None = None  # vxlan: the underlay device
    port: int | None = None  # vxlan: dstport


@dataclass(frozen=True)
class Route:
    """One line of ``ip -4 route show``."""

    dest: str
    via: str | None
    dev: str | None
    default: bool = False


@dataclass(frozen=True)
class Neighbour:
    """One line of ``ip -4 neigh show``."""

    ip: str
    dev: str
    mac: str | None
    state: str


@dataclass(frozen=True)
class Probe:
    """One probe the script ran: from where (pod or node), what kind, to what, and what came back."""

    source: str  # pod | node
    kind: str  # pod, pod-big, api, dns, dns-pod, nodeport, underlay, underlay-big, vtep, vtep-big
    target: str  # an address, or address:port
    size: int | None
    command: str
    output: tuple[str, ...]
    rc: int | None

    @property
    def address(self) -> str:
        """Return the target address without its port."""
        return self.target.rsplit(":", 1)[0] if self.target.count(":") == 1 else self.target

    @property
    def result(self) -> str:
        """Return ok, fail, wrong-source (an answer from another address than asked) or notool."""
        return _probe_result(self)[0]

    @property
    def detail(self) -> str:
        """Return the line of output that says how it went."""
        return _probe_result(self)[1]

    @property
    def id(self) -> str:
        """Return a short name for the probe (``pod:ping 10.42.1.5``)."""
        size = f" {self.size}B DF" if self.size else ""
        return f"{self.source} -> {self.kind} {self.target}{size}"


_LINK = re.compile(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s+<([^>]*)>(.*)$")


def parse_links(text: str) -> dict[str, Link]:
    """Parse ``ip -d -o link show`` (one device a line) into links by name."""
    out: dict[str, Link] = {}
    for line in text.splitlines():
        m = _LINK.match(line.strip())
        if m is None:
            continue
        name, flags, rest = m.group(1), m.group(2).split(","), m.group(3).replace("\\", " ")
        words = rest.split()
        values = _after(words, ("mtu", "link/ether", "id", "local", "dev", "dstport"))
        kind = next((k for k in ("vxlan", "wireguard", "bridge", "veth", "ipip", "tun", "dummy") if k in words), None)
        if kind == "bridge" and "bridge_slave" in words and words.index("bridge_slave") < words.index("bridge"):
            kind = "veth" if "veth" in words else None
        vxlan = kind == "vxlan"
        out[name] = Link(
            name=name,
            kind=kind,
            mtu=_int(values.get("mtu")),
            mac=values.get("link/ether"),
            up="UP" in flags,
            vni=_int(values.get("id")) if vxlan else None,
            local=values.get("local") if vxlan else None,
            dev=values.get("dev") if vxlan else None,
            port=_int(values.get("dstport")) if vxlan else None,
        )
    return out


def parse_addrs(text: str) -> dict[str, tuple[str, ...]]:
    """Parse ``ip -o -4 addr show`` into ``{device: ("ip/prefix", ...)}``; a line that is no address is skipped."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^\d+:\s+(\S+)\s+inet\s+([0-9.]+(?:/\d+)?)", text, re.MULTILINE):
        address = m.group(2) if "/" in m.group(2) else m.group(2) + "/32"
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append(address)
    return {k: tuple(v) for k, v in out.items()}


def parse_routes(text: str) -> tuple[Route, ...]:
    """Parse ``ip -4 route show``."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] in ("broadcast", "local", "unreachable", "blackhole", "prohibit"):
            continue
        values = _after(words, ("via", "dev"))
        out.append(Route(words[0], values.get("via"), values.get("dev"), words[0] == "default"))
    return tuple(out)


def parse_neigh(text: str) -> tuple[Neighbour, ...]:
    """Parse ``ip -4 neigh show``."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not _is_ip(words[0]):
            continue
        values = _after(words, ("dev", "lladdr"))
        out.append(Neighbour(words[0], values.get("dev", ""), values.get("lladdr"), words[-1]))
    return tuple(out)


def parse_fdb(lines: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """Parse ``bridge fdb show dev DEV`` into (MAC, underlay destination) pairs."""
    out = []
    for line in lines:
        words = line.split()
        if words and re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", words[0]):
            out.append((words[0], _after(words, ("dst",)).get("dst")))
    return tuple(out)


def parse_probes(text: str) -> tuple[Probe, ...]:
    """Return the probes of a collect script's output, in the order printed."""
    out = []
    current: list[str] | None = None
    head: list[str] = []
    blocks: list[tuple[list[str], list[str]]] = []
    for line in text.split("\n"):
        if line.startswith("@@keybuzz-fix@@ "):
            words = line.split()[1:]
            if words[:1] == ["probe"] and len(words) >= 4:
                head, current = words[1:], []
                blocks.append((head, current))
            else:
                current = None
        elif current is not None:
            current.append(line.rstrip())
    for head, body in blocks:
        source, kind, target = head[0], head[1], head[2]
        size = _int(head[3]) if len(head) > 3 else None
        command = body[0][2:] if body and body[0].startswith("$ ") else ""
        rest = body[1:] if command else body
        rc = next((_int(line[3:]) for line in reversed(rest) if line.startswith("rc=")), None)
        output = tuple(line for line in rest if line.strip() and not line.startswith("rc="))
        out.append(Probe(source, kind, target, size, command, output, rc))
    return tuple(out)


def _probe_result(p: Probe) -> tuple[str, str]:
    text = "\n".join(p.output)
    if p.output and p.output[0].strip() == "notool":
        return "notool", "no tool on the node to make this probe"
    if p.kind in ("dns", "dns-pod"):
        return _dns_result(p, text)
    if p.kind in ("api", "nodeport"):
        m = re.search(r"connect=([0-9.]+)", text)
        if m is not None:
            if float(m.group(1)) > 0:
                return "ok", f"TCP connected ({m.group(0)})"
            return "fail", "connection refused" if p.rc == 7 else f"no TCP connection (curl exit {p.rc})"
        return ("ok", "TCP connected") if p.rc == 0 else ("fail", f"no TCP connection (exit {p.rc})")
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    detail = next((line.strip() for line in p.output if "error" in line.lower() or "too long" in line), "")
    if m is None:
        return "fail", detail or (p.output[-1].strip() if p.output else f"no answer (exit {p.rc})")
    summary = next((line.strip() for line in p.output if "transmitted" in line), "")
    return ("ok" if int(m.group(2)) > 0 else "fail"), (f"{summary}; {detail}" if detail else summary)


def _dns_result(p: Probe, text: str) -> tuple[str, str]:
    m = re.search(r"reply from unexpected source: ([0-9.]+)#\d+", text)
    if m is not None:
        return "wrong-source", f"reply from unexpected source {m.group(1)} (expected {p.address})"
    m = re.search(r"py: answer from ([0-9.]+) rcode (\d+)", text)
    if m is not None:
        if m.group(1) != p.address:
            return "wrong-source", f"answer came from {m.group(1)}, not from {p.address}"
        return "ok", f"answered (rcode {m.group(2)})"
    if "status:" in text or re.search(r"^Name:", text, re.MULTILINE):
        status = re.search(r"status: (\w+)", text)
        return "ok", f"answered ({status.group(1) if status else 'nslookup'})"
    line = next(
        (x.strip() for x in p.output if "timed out" in x or "no servers" in x or "no answer" in x or "refused" in x),
        p.output[-1].strip() if p.output else f"exit {p.rc}",
    )
    return "fail", line


def _after(words: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, w in enumerate(words[:-1]):
        if w in keys and w not in out:
            out[w] = words[i + 1]
    return out


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
