"""What a UFW rule matches, as sets of packets, and the first-match walk over them (pure code).

A set of packets is a *box*: a product of integer sets, one per field a ufw rule can test (source
address, source port, destination address, destination port, protocol, the interface a packet
arrives on, the one it leaves on). A rule matches a union of boxes (a profile of several port items
gives several). Walking a chain, each rule takes the part of what is left that it matches, so a
flow from a network splits exactly where the rules' networks, ports or interfaces split it.

How a rule's fields become iptables matches follows ufw 0.36 ``src/common.py`` (``format_rule``)
and ``src/backend_iptables.py`` (``_get_rules_from_formatted``): no protocol with ports means a tcp
and a udp line, no protocol and no ports matches every protocol, ``on IF`` is ``-i`` for ``in`` and
``-o`` for ``out`` (a route rule may have both), addresses are masked as iptables masks them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from keybuzz_fix.hosts.ufw.apps import AppProfile
from keybuzz_fix.hosts.ufw.rules import ANY, UfwRule

IntSet = tuple[tuple[int, int], ...]  # sorted, disjoint, non-adjacent closed intervals
Box = tuple[IntSet, ...]  # (source, sport, dest, dport, proto, in-interface, out-interface)
SRC, SPORT, DST, DPORT, PROTO, IIF, OIF = range(7)
TCP, UDP = 6, 17
ALL_PORTS: IntSet = ((1, 65535),)
ALL_PROTOS: IntSet = ((0, 255),)
TCP_UDP: IntSet = ((TCP, TCP), (UDP, UDP))
FULL_NET: dict[int, IntSet] = {4: ((0, 2**32 - 1),), 6: ((0, 2**128 - 1),)}
_PROTOS = {"tcp": TCP, "udp": UDP}
T = TypeVar("T")


class Interfaces:
    """Interface names as numbers: one per name the rules or the flow use, 0 for every other interface."""

    def __init__(self, rules: Iterable[UfwRule], extra: Iterable[str | None]) -> None:
        seen = {"lo", *extra}
        for r in rules:
            seen |= {r.interface, r.interface_out}
        self.names = sorted(n for n in seen if n)
        self.all: IntSet = ((0, len(self.names)),)
        self.other: IntSet = ((0, 0),)

    def only(self, name: str | None) -> IntSet:
        """The one named interface (``None``: all of them)."""
        return self.all if name is None else ((self.names.index(name) + 1,) * 2,)

    def remote(self, name: str | None) -> IntSet:
        """Where a flow's packets arrive: the named interface; not known: any but loopback."""
        return self.only(name) if name is not None else minus(self.all, self.only("lo"))

    def describe(self, ids: IntSet) -> str:
        """Say which interfaces a set stands for (``on eth0``, ``on an interface other than eth0``)."""
        members = {i for lo, hi in ids for i in range(lo, hi + 1)}
        if 0 in members:
            others = [n for i, n in enumerate(self.names, 1) if i not in members and n != "lo"]
            return "on an interface other than " + ", ".join(others) if others else "on any interface"
        return "on " + ", ".join(self.names[i - 1] for i in sorted(members))


def box(
    family: int,
    names: Interfaces,
    *,
    src: IntSet | None = None,
    sport: IntSet = ALL_PORTS,
    dst: IntSet | None = None,
    dport: IntSet = ALL_PORTS,
    proto: IntSet = ALL_PROTOS,
    iif: IntSet | None = None,
) -> Box:
    """A box of one family, every field not given left whole."""
    return (src or FULL_NET[family], sport, dst or FULL_NET[family], dport, proto, iif or names.all, names.all)


def rule_boxes(rule: UfwRule, family: int, names: Interfaces, profile: Callable[[str], AppProfile]) -> list[Box]:
    """What one rule matches in one family, as boxes (several for a profile of several port items)."""
    if any(a != ANY and family_of(a) != family for a in (rule.source, rule.dest)):
        return []
    src, dst = net_set(rule.source, family), net_set(rule.dest, family)
    iif, oif = names.all, names.all
    if rule.interface:
        if rule.direction == "in":
            iif = names.only(rule.interface)
        else:
            oif = names.only(rule.interface)
    if rule.interface_out:
        oif = names.only(rule.interface_out)
    boxes: list[Box] = []
    for proto, dport, sport in port_entries(rule, profile):
        has_ports = dport not in (None, "any") or sport not in (None, "any")
        boxes.append((src, port_set(sport), dst, port_set(dport), proto_set(proto, ports=has_ports), iif, oif))
    return boxes


def port_entries(
    rule: UfwRule, profile: Callable[[str], AppProfile]
) -> list[tuple[str | None, str | None, str | None]]:
    """(proto, dport, sport) triples of a rule; an application rule through its tuple, else its profiles.

    Profiles are expanded as ``backend.get_app_rules_from_template``: one triple per port item, and
    for a rule naming two profiles every pair (the same item twice when both name the same profile),
    the source item's protocol winning.
    """
    if not (rule.app or rule.source_app):
        return [(rule.proto, rule.port, rule.sport)]
    if rule.app_ports is not None:
        return [rule.app_ports]
    dports = list(profile(rule.app).entries) if rule.app else [(rule.proto, rule.port)]
    sports = list(profile(rule.source_app).entries) if rule.source_app else [(rule.proto, rule.sport)]
    if rule.app and rule.source_app:
        if rule.app == rule.source_app:
            return [(p, ports, ports) for p, ports in dports]
        return [(sp if sp is not None else dp, d, s) for dp, d in dports for sp, s in sports]
    if rule.app:
        return [(p, d, rule.sport) for p, d in dports]
    return [(p, rule.port, s) for p, s in sports]


def first_match(flow: Box, chain: Sequence[tuple[Sequence[Box], T]]) -> list[tuple[Box, T]]:
    """Walk a chain of (match, decision): each takes the part of what is left that it matches."""
    left = [flow]
    out: list[tuple[Box, T]] = []
    for boxes, decision in chain:
        for rule_box in boxes:
            rest: list[Box] = []
            for b in left:
                hit = and_box(b, rule_box)
                if hit is None:
                    rest.append(b)
                    continue
                out.append((hit, decision))
                rest.extend(minus_box(b, rule_box))
            left = rest
        if not left:
            break
    return out


def narrowing(piece: Box, flow: Box, names: Interfaces, family: int) -> tuple[str, ...]:
    """Say where a piece is narrower than its flow, other than in its sources (``tcp``, ``port 80``…)."""
    out = []
    if piece[PROTO] != flow[PROTO]:  # flows are tcp and/or udp: a piece is one of them
        out.append("+".join({TCP: "tcp", UDP: "udp"}.get(lo, str(lo)) for lo, _ in piece[PROTO]))
    if piece[DPORT] != flow[DPORT]:
        out.append(f"port {spec(piece[DPORT])}")
    if piece[SPORT] != flow[SPORT]:
        out.append(f"source port {spec(piece[SPORT])}")
    if piece[DST] != flow[DST]:
        out.append("to " + ", ".join(networks(piece[DST], family)))
    if piece[IIF] != flow[IIF]:
        out.append("arriving " + names.describe(piece[IIF]))
    if piece[OIF] != flow[OIF]:
        out.append("leaving " + names.describe(piece[OIF]))
    return tuple(out)


# -- sets of numbers ---------------------------------------------------------------------------


def norm(intervals: Iterable[tuple[int, int]]) -> IntSet:
    """Sort and merge intervals into a set."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def and_(a: IntSet, b: IntSet) -> IntSet:
    """Intersection."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def minus(a: IntSet, b: IntSet) -> IntSet:
    """Difference."""
    out = []
    for lo, hi in a:
        for blo, bhi in b:
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = bhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return norm(out)


def and_box(a: Box, b: Box) -> Box | None:
    """Intersection of two boxes, or None when empty."""
    out = tuple(and_(x, y) for x, y in zip(a, b, strict=True))
    return None if any(not s for s in out) else out


def minus_box(a: Box, b: Box) -> list[Box]:
    """``a`` without ``b``, as disjoint boxes (split one field at a time)."""
    out = []
    for k in range(len(a)):
        rest = minus(a[k], b[k])
        if rest:
            out.append(tuple(and_(a[i], b[i]) for i in range(k)) + (rest,) + a[k + 1 :])
    return out


def port_set(spec_: str | None) -> IntSet:
    """``31695``, ``30000:32767``, ``80,443`` (or None / ``any``: every port) as a set; else a ValueError."""
    if spec_ in (None, "any"):
        return ALL_PORTS
    out = []
    for part in spec_.split(","):
        lo, _, hi = part.partition(":")
        if not (lo.isascii() and hi.isascii() and lo.isdigit() and (hi.isdigit() or not hi)):
            raise ValueError(f"bad port spec {spec_!r}")
        a, b = int(lo), int(hi or lo)
        if not 1 <= a <= b <= 65535:
            raise ValueError(f"bad port spec {spec_!r}")
        out.append((a, b))
    return norm(out)


def proto_set(proto: str | None, *, ports: bool) -> IntSet:
    """A protocol; none given: tcp and udp when the rule has ports (ufw writes both), else every protocol."""
    if proto in (None, "any"):
        return TCP_UDP if ports else ALL_PROTOS
    if proto not in _PROTOS:
        return ()  # another protocol (esp, gre, …): never a TCP or UDP packet
    return ((_PROTOS[proto],) * 2,)


def family_of(value: str) -> int:
    """4 or 6, for an address or network."""
    return ipaddress.ip_network(value, strict=False).version


def net_set(value: str, family: int) -> IntSet:
    """An address or network (``any``: all of the family) as a set; empty for the other family."""
    if value == ANY:
        return FULL_NET[family]
    net = ipaddress.ip_network(value, strict=False)  # iptables masks host bits the same way
    if net.version != family:
        return ()
    return ((int(net.network_address), int(net.broadcast_address)),)


def networks(ranges: IntSet, family: int) -> tuple[str, ...]:
    """A set of addresses as the fewest networks (``any`` for all of the family)."""
    if ranges == FULL_NET[family]:
        return (ANY,)
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    out: list[str] = []
    for lo, hi in ranges:
        for net in ipaddress.summarize_address_range(make(lo), make(hi)):
            out.append(str(net) if net.prefixlen != net.max_prefixlen else str(net.network_address))
    return tuple(out)


def spec(ports: IntSet) -> str:
    """A set of ports in ufw's spec form (``80,443,30000:32767``)."""
    return ",".join(f"{lo}" if lo == hi else f"{lo}:{hi}" for lo, hi in ports)
