"""How a node's filters judge one flow: UFW's verdict, and iptables' (either backend) (pure code).

:func:`ufw_verdict` is the one place the diagnosis asks UFW, and it asks the UFW verdict model
(:func:`keybuzz_fix.hosts.ufw.verdict.judge`, proven against real packets): it takes the rules UFW
judges by and a flow, and returns the verdict and the rule (or policy) that decided it.

:func:`iptables_verdict` walks one backend's ``filter`` table as ``iptables-save`` printed it: the
rules of a chain in order, jumps followed, the built-in chain's policy at the end.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.hosts.flannel.capture import Tables
from keybuzz_fix.hosts.ufw import verdict
from keybuzz_fix.hosts.ufw.rules import ANY, UfwRule
from keybuzz_fix.hosts.ufw.ruleset import Ruleset

TERMINAL = ("ACCEPT", "DROP", "REJECT")


@dataclass(frozen=True)
class Flow:
    """A new flow arriving at a node: from where, to where, what, on which interface."""

    src: str | None
    proto: str  # tcp, udp, icmp
    dport: int | None
    iface: str | None
    dst: str | None = None
    chain: str = "INPUT"
    sport: int | None = None  # None: some ephemeral port (EPHEMERAL), as the flows diagnose judges have

    def describe(self) -> str:
        """Return the flow in a few words (``udp/8472 from 10.0.0.3 on enp7s0``)."""
        what = f"{self.proto}/{self.dport}" if self.dport else self.proto
        to = f" to {self.dst}" if self.dst else ""
        on = f" on {self.iface}" if self.iface else ""
        return f"{what} from {self.src or 'any'}{to}{on} ({self.chain})"


@dataclass(frozen=True)
class UfwVerdict:
    """UFW's answer for one flow, and what decided it."""

    allowed: bool
    decided_by: str  # the rule (where it sits in user.rules / user6.rules, as ufw prints it) or the policy
    rule: UfwRule | None = None
    throttled: bool = False


def ufw_verdict(ruleset: Ruleset, flow: Flow) -> UfwVerdict:
    """Return UFW's verdict on an incoming flow, from the UFW verdict model (:mod:`keybuzz_fix.hosts.ufw.verdict`).

    The model walks what the kernel walks: the flow's family only (an IPv4 flow never meets
    user6.rules), before.rules, the first matching user rule, the default policy. Only the part of
    the flow from its source counts. ``limit`` lets a TCP flow in (throttled); a UDP stream (VXLAN,
    DNS) is a new connection on every packet to conntrack, so UFW lets 5 in per 30 s: not allowed.
    Routed traffic (FORWARD) is left to the FORWARD check.
    """
    if flow.chain == "FORWARD":
        return UfwVerdict(True, "not judged here (routed traffic: see the FORWARD policy)")
    if flow.proto == "icmp":
        if not ruleset.active:
            return UfwVerdict(True, "ufw is inactive: it loads no rule and no policy")
        return UfwVerdict(True, "ufw's before.rules accept ICMP echo requests")
    family = _family(flow.src)
    model = verdict.Flow(
        family,
        str(flow.dport) if flow.dport else None,
        flow.proto if flow.proto in ("tcp", "udp") else None,
        source=_in_family(flow.src, family),
        dest=_in_family(flow.dst, family),
        interface=flow.iface,
    )
    judgement = verdict.judge(ruleset, model)
    pieces = judgement.at(model.source) if model.source != ANY else judgement.pieces
    decisions = tuple(dict.fromkeys(p.decision for p in pieces or judgement.pieces))
    verdicts = {d.verdict for d in decisions}
    limited = verdict.Verdict.LIMIT in verdicts
    allowed = verdicts <= {verdict.Verdict.ALLOW, verdict.Verdict.LIMIT} and not (limited and flow.proto == "udp")
    if len(decisions) == 1:
        text = decisions[0].why
        if limited and flow.proto == "udp":
            text += " (limit: a UDP stream is new to conntrack on every packet, 5 get in per 30 s)"
    else:
        text = judgement.describe()
    deciding = next((d for d in decisions if d.verdict is not verdict.Verdict.ALLOW), decisions[0])
    return UfwVerdict(allowed, text, deciding.rule, throttled=limited)


def _family(address: str | None) -> int:
    try:
        return ipaddress.ip_address(address or "").version
    except ValueError:
        return 4


def _in_family(address: str | None, family: int) -> str:
    """Return the address when it is one of ``family`` (the model's ``any`` otherwise: not known)."""
    try:
        return address if address and ipaddress.ip_address(address).version == family else ANY
    except ValueError:
        return ANY


@dataclass(frozen=True)
class IptVerdict:
    """One backend's answer: ACCEPT, DROP, REJECT (or None: not decided), the line that decided it."""

    verdict: str
    line: str
    chain: str


def iptables_verdict(tables: Tables, flow: Flow, skip: Sequence[str] = ()) -> IptVerdict:
    """Walk the built-in chain of ``flow`` in one backend; chains starting with a ``skip`` prefix are not followed."""
    found = _walk(tables, flow.chain, flow, tuple(skip), 0)
    if found is not None:
        return found
    policy = tables.policy(flow.chain) or "ACCEPT"
    return IptVerdict(policy, f":{flow.chain} {policy} (the chain's policy)", flow.chain)


def _walk(tables: Tables, chain: str, flow: Flow, skip: tuple[str, ...], depth: int) -> IptVerdict | None:
    if depth > 10:
        return None
    for line in tables.rules(chain):
        target, matched, goto = _rule(line, flow)
        if not matched or target is None:
            continue
        if target in TERMINAL:
            return IptVerdict(target, line, chain)
        if target == "RETURN":
            return None
        if target.startswith(skip) or target not in _chains(tables):
            continue
        found = _walk(tables, target, flow, skip, depth + 1)
        if found is not None or goto:  # after -g, the end of the target ends this chain too (iptables(8))
            return found
    return None


def _chains(tables: Tables) -> set[str]:
    return {line.split()[0][1:] for line in tables.filter if line.startswith(":")}


def _rule(line: str, flow: Flow) -> tuple[str | None, bool, bool]:
    """Return the rule's target, whether it matches the flow, and whether the target is a goto (``-g``)."""
    try:
        words = shlex.split(line)
    except ValueError:
        return None, False, False
    target, goto = None, False
    ok = True
    i, neg = 2, False
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "!":
            neg, i = True, i + 1
            continue
        hit: bool | None = None
        step = 2
        if w in ("-j", "--jump", "-g", "--goto"):
            target, goto = nxt, w in ("-g", "--goto")
        elif w in ("-s", "--source"):
            hit = address_in(flow.src, nxt)
        elif w in ("-d", "--destination"):
            hit = address_in(flow.dst, nxt)
        elif w in ("--src-range", "--dst-range"):  # -m iprange
            hit = address_in(flow.src if w == "--src-range" else flow.dst, nxt)
        elif w == "--tcp-flags":  # a new flow's first packet: SYN alone (iptables-save prints --syn this way)
            hit, step = _syn_matches(nxt, words[i + 2] if i + 2 < len(words) else ""), 3
        elif w in ("-i", "--in-interface"):
            hit = _iface(flow.iface, nxt)
        elif w in ("-o", "--out-interface"):
            hit = None if flow.chain == "FORWARD" else True
        elif w in ("-p", "--protocol"):
            hit = nxt in ("all", "0") or nxt == flow.proto
        elif w in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            hit = flow.dport is not None and port_in(flow.dport, nxt)
        elif w in ("--sport", "--source-port", "--sports", "--source-ports"):
            hit, neg = sport_holds(flow.sport, nxt, negated=neg), False
        elif w in ("--ctstate", "--state"):
            hit = "NEW" in nxt.split(",")
        elif w == "--mark":
            hit = False
        elif w == "--match-set":
            hit, step = False, 3
        elif w in ("--physdev-is-bridged", "--physdev-is-in", "--physdev-is-out"):
            hit, step = False, 1
        elif w == "--dst-type":
            hit = (nxt == "LOCAL") == (flow.chain == "INPUT")
        elif w.startswith("-") and (not nxt or nxt.startswith("-") or nxt == "!"):
            step = 1
        if hit is not None:
            if neg:
                hit = not hit
            ok = ok and hit
        neg = False
        i += step
    return target, ok, goto


TCP_FLAGS = {
    "fin": 0x01,
    "syn": 0x02,
    "rst": 0x04,
    "psh": 0x08,
    "ack": 0x10,
    "urg": 0x20,
    "ece": 0x40,  # iptables' name
    "ecn": 0x40,  # nft's
    "cwr": 0x80,
}
SYN = TCP_FLAGS["syn"]  # the first packet of a new TCP flow has this flag alone


def tcp_flag_bits(listed: str) -> int:
    """TCP flags as bits, from iptables' ``SYN,ACK``/``ALL``/``NONE`` or nft's ``syn,ack``/``syn|ack``/``0x12``."""
    bits = 0
    for name in listed.replace("|", ",").split(","):
        name = name.strip().lower()
        if name == "all":
            bits |= 0xFF
        elif name.startswith("0x"):
            bits |= int(name, 16) if all(c in "0123456789abcdef" for c in name[2:]) and name[2:] else 0
        else:
            bits |= TCP_FLAGS.get(name, 0)  # none, or a damaged word: no flag
    return bits


def _syn_matches(mask: str, comp: str) -> bool:
    """Whether a SYN and nothing else matches ``--tcp-flags MASK COMP``: its flags among MASK are exactly COMP."""
    return SYN & tcp_flag_bits(mask) == tcp_flag_bits(comp)


def address_in(address: str | None, net: str) -> bool:
    """Whether ``address`` is in ``net``: an address, a network, or a range ``first-last``; None is in every one.

    nft lists a set of networks that touch as one range (``{ 198.19.1.0/24, 198.19.2.0/24 }`` reads
    back as ``{ 198.19.1.0-198.19.2.255 }``).
    """
    if address is None:
        return True
    try:
        ip = ipaddress.ip_address(address)
        first, dash, last = net.partition("-")
        if dash:
            return ipaddress.ip_address(first) <= ip <= ipaddress.ip_address(last)  # type: ignore[operator]
        return ip in ipaddress.ip_network(net, strict=False)
    except (ValueError, TypeError):  # not an address; or of the other family (a TypeError when compared)
        return False


def _iface(iface: str | None, pattern: str) -> bool:
    if iface is None:
        return True
    return iface.startswith(pattern[:-1]) if pattern.endswith("+") else iface == pattern


EPHEMERAL = (32768, 60999)
"""The source ports of a flow whose port is not known: Linux's default ``net.ipv4.ip_local_port_range``,
which is also the range a VXLAN device picks its source ports from (ip-link(8), ``srcport``)."""


def port_in(port: int, spec: str) -> bool:
    """Whether ``port`` is in an iptables/nft port spec (``80``, ``80:90``, ``80,443``); damaged parts match none."""
    return any(lo <= port <= hi for lo, hi in _spans(spec))


def _spans(spec: str) -> list[tuple[int, int]]:
    """The port ranges of a spec, as iptables-save prints them (``a:b``; nft's ``a-b`` is turned into that first)."""
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        hi = hi or lo
        if all(end.isascii() and end.isdigit() for end in (lo, hi)):
            out.append((int(lo), int(hi)))
    return out


def sport_holds(sport: int | None, spec: str, *, negated: bool) -> bool:
    """Whether a source-port condition holds; for an unknown (ephemeral) port, only when it holds for every one.

    ``--sport 53`` then never holds (a stateless firewall's DNS-reply rule lets no VXLAN in) and
    ``! --sport 53`` always does; a spec that covers part of the ephemeral range holds either way for
    some flows and not others, and is taken as not holding.
    """
    if sport is not None:
        return port_in(sport, spec) != negated
    lo, hi = EPHEMERAL
    spans = _spans(spec)
    if negated:
        return not any(a <= hi and b >= lo for a, b in spans)
    at = lo
    for a, b in sorted(spans):
        if a <= at <= b:
            at = b + 1
    return at > hi
