"""UFW's verdict on traffic, as the kernel reaches it from UFW's files (pure code).

The facts and where they come from (ufw 0.36, the Debian/Ubuntu package: ``src/backend_iptables.py``,
``src/common.py``, ``src/frontend.py``, ``src/parser.py``, ``src/applications.py``,
``/lib/ufw/ufw-init-functions`` and the shipped ``/etc/ufw/before*.rules`` / ``after*.rules``):

- **Two families, two tables.** ``iptables-restore`` loads ``user.rules``, ``ip6tables-restore``
  loads ``user6.rules``; a packet only ever meets the rules of its own family. ``ufw allow …``
  writes a rule to user.rules when its addresses are IPv4, to user6.rules when they are IPv6, and
  to both when source and destination are ``any`` (``parser.py``: ``iptype`` v4/v6/both).
- **Chains.** ``ufw-init`` hooks ``INPUT → ufw-before-input → ufw-user-input`` (``ufw-user-input``
  is jumped to at the *end* of the before chain), then ``ufw-after-input``, ``ufw-reject-input``,
  ``ufw-track-input`` and the chain policy. ``FORWARD`` has the same with ``-forward`` chains and
  ``ufw route`` rules; ``out`` rules sit in ``OUTPUT`` and never judge incoming traffic.
- **First match wins.** Every user rule ends in a terminal target (``ACCEPT``, ``DROP``,
  ``REJECT``, or ``limit``'s pair below), so the first rule matching a packet decides and nothing
  after it is seen. ``ufw status`` lists rules in this order.
- **limit** is three iptables lines (``_get_rules_from_formatted``): ``-m recent --set``, then
  ``--update --seconds 30 --hitcount 6 -j ufw-user-limit`` (log + ``REJECT``), else
  ``-j ufw-user-limit-accept`` (``ACCEPT``). A source's 6th new connection (conntrack NEW) within
  30 s is rejected; earlier ones pass. The count lives in xt_recent's one ``DEFAULT`` list, per
  source address and shared by every limit rule, ``ufw route limit`` ones too: a source that meets
  two limit rules has 5 new connections for both together. A UDP stream whose replies use other
  ports (VXLAN) is NEW on every packet, so it is throttled to 5 packets per 30 s.
- **reject** is ``REJECT`` (ICMP port unreachable), with ``--reject-with tcp-reset`` for a tcp rule
  and for the tcp half of a rule with ports but no protocol. A rule with ports and no protocol is
  two iptables lines, tcp and udp; one without ports matches every protocol.
- **Default policies** (``/etc/default/ufw``): ``DEFAULT_INPUT_POLICY`` ``ACCEPT`` (allow), ``DROP``
  (deny) or ``REJECT`` (reject: chain policy DROP plus ``-A ufw-reject-input -j REJECT``);
  ``DEFAULT_FORWARD_POLICY`` likewise for routed traffic. ``after.rules``' skip-to-policy lines
  (NetBIOS, DHCP, broadcast) only skip logging: they end in the same policy.
- **before.rules** decide a few packets before any user rule. Of those, the ones that can decide
  the *first* packet of a TCP/UDP flow to a local address are modelled (:data:`BEFORE_INPUT`):
  all traffic on loopback, the DHCP client reply (udp 67 → 68), mDNS (224.0.0.251:5353) and UPnP
  (239.255.255.250:1900); for IPv6 loopback, the DHCPv6 client reply (fe80::/10 547 → 546),
  mDNS (ff02::fb) and UPnP (ff02::f). The others do not change a verdict on a new flow: ESTABLISHED/
  RELATED accept packets of flows already let in, INVALID drops packets conntrack cannot place,
  the ICMP lines concern ICMP, and ``ufw-not-local`` drops packets to no local, multicast or
  broadcast address (routing sends those to FORWARD, not INPUT). ``FORWARD``'s before rules only
  take ESTABLISHED/RELATED and ICMP. Operators may edit before.rules; the shipped ones are assumed.
- **IPV6=no** (``ufw-init``): ip6tables gets ``INPUT``/``FORWARD`` policy DROP with only loopback
  accepted; user6.rules is not loaded.
- **Inactive** (``ufw disable``, ``ufw-init stop``): ufw's chains are deleted and the policies set to
  ACCEPT; ufw lets everything in.
- **Application profiles** (``applications.py``): ini files in ``/etc/ufw/applications.d``, one
  section per profile, ``ports=`` a ``|``-list of ``ports[/proto]``. A rule names a profile; when it
  is added ufw writes one tuple per port entry with the ports it stands for. Rules read from
  user.rules carry those ports (:attr:`UfwRule.app_ports`); rules from ``ufw show added`` or wanted
  by the tool name only the profile, which :func:`parse_app_profiles` resolves.

A flow is a set of packets: a source address or network, source ports, a destination, ports,
protocols and the interface they arrive on. Rules whose sources (or ports, or interfaces) split it
give its parts different verdicts; :func:`judge` returns every part with the rule or policy that
decided it, so "allow from 10.0.0.0/17" over a flow from 10.0.0.0/16 reads "partly". The sets of
packets and the first-match walk are :mod:`keybuzz_fix.hosts.ufw.match`; profiles :mod:`keybuzz_fix.hosts.ufw.apps`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from keybuzz_fix.hosts.ufw import match as m
from keybuzz_fix.hosts.ufw.rules import ANY, UfwRule
from keybuzz_fix.hosts.ufw.ruleset import Ruleset, rule_families

__all__ = [
    "DecidedBy",
    "Decision",
    "Flow",
    "Judgement",
    "Piece",
    "Reach",
    "Verdict",
    "decide",
    "judge",
    "judge_rule",
]


class Verdict(str, Enum):
    """What happens to a packet, in ufw's words (``limit``: let in, throttled)."""

    ALLOW = "allow"
    DENY = "deny"
    REJECT = "reject"
    LIMIT = "limit"


class Reach(str, Enum):
    """What a whole flow meets: one verdict for all of it, or a mix."""

    ALLOWED = "allowed"  # every packet is let in
    LIMITED = "limited"  # every packet is let in, throttled (limit): not open for a busy source
    BLOCKED = "blocked"  # no packet is let in (deny or reject)
    PARTLY = "partly"  # parts of it meet different verdicts


class DecidedBy(str, Enum):
    """What kind of thing decided a verdict."""

    RULE = "rule"  # a user rule of user.rules / user6.rules
    POLICY = "policy"  # the default incoming or routed policy
    BEFORE_RULES = "before-rules"  # one of ufw's fixed before.rules lines
    INACTIVE = "inactive"  # ufw is not loaded
    IPV6_OFF = "ipv6-off"  # IPV6=no: ufw drops all IPv6 but loopback


@dataclass(frozen=True)
class Decision:
    """A verdict and what gave it: a user rule (its family and 1-based place in its file) or a policy."""

    verdict: Verdict
    by: DecidedBy
    why: str  # "user6.rules rule 2: ufw allow 31695/tcp", "default incoming policy: deny"
    rule: UfwRule | None = None
    family: int | None = None
    position: int | None = None


@dataclass(frozen=True)
class Flow:
    """Packets that should reach the host (or pass through it, ``routed``), as UFW matches them.

    ``port`` is a destination port spec (``31695``, ``30000:32767``, ``80,443``) or ``None`` for
    every port; ``proto`` ``tcp``, ``udp`` or ``None`` for both. ``source`` and ``dest`` are an
    address or network of ``family`` or ``any`` (``dest`` ``any``: not known, every address);
    ``sport`` a source port spec or ``None`` for every source port. ``interface`` is where the
    packets arrive (``None``: not known, any interface but loopback, which only carries the host's
    own traffic); ``out_interface`` where routed ones leave.
    """

    family: int
    port: str | None
    proto: str | None = None
    source: str = ANY
    dest: str = ANY
    sport: str | None = None
    interface: str | None = None
    routed: bool = False
    out_interface: str | None = None

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {self.family!r}")
        if self.proto not in (None, "tcp", "udp"):
            raise ValueError(f"proto must be tcp, udp or None, not {self.proto!r}")
        for name in ("source", "dest"):
            value = getattr(self, name)
            if value != ANY and m.family_of(value) != self.family:
                raise ValueError(f"{name} {value!r} is not an IPv{self.family} address or network")
        m.port_set(self.port)
        m.port_set(self.sport)

    def describe(self) -> str:
        """Return a short human form (``IPv4 31695/tcp from 10.0.0.0/16 on enp7s0``)."""
        what = f"{self.port or 'all ports'}/{self.proto}" if self.proto else f"{self.port or 'all ports'}"
        out = f"IPv{self.family} {'routed ' if self.routed else ''}{what} from {self.source}"
        if self.sport:
            out += f" port {self.sport}"
        if self.dest != ANY:
            out += f" to {self.dest}"
        if self.interface:
            out += f" in on {self.interface}"
        if self.out_interface:
            out += f" out on {self.out_interface}"
        return out


@dataclass(frozen=True)
class Piece:
    """Part of a flow that meets one decision: its sources as networks, and how else it is narrower."""

    sources: tuple[str, ...]
    decision: Decision
    only: tuple[str, ...] = ()  # e.g. ("tcp", "arriving on eth0"): where the part is narrower than the flow

    def describe(self) -> str:
        """Return ``10.0.0.0/17 (tcp): allow by user.rules rule 2: …``."""
        narrow = f" ({', '.join(self.only)})" if self.only else ""
        return f"{', '.join(self.sources)}{narrow}: {self.decision.verdict.value} by {self.decision.why}"


@dataclass(frozen=True)
class Judgement:
    """Every part of a flow (or of a wanted rule's traffic) with the rule or policy that decides it."""

    family: int
    what: str
    pieces: tuple[Piece, ...]

    @property
    def reach(self) -> Reach:
        """Whether all of it is let in, throttled, blocked, or a mix."""
        verdicts = {p.decision.verdict for p in self.pieces}
        if verdicts == {Verdict.ALLOW}:
            return Reach.ALLOWED
        if verdicts == {Verdict.LIMIT}:
            return Reach.LIMITED
        if verdicts <= {Verdict.DENY, Verdict.REJECT}:
            return Reach.BLOCKED
        return Reach.PARTLY

    @property
    def decision(self) -> Decision | None:
        """The one decision for all of it, or ``None`` when its parts meet different ones."""
        decisions = self.decisions()
        return decisions[0] if len(decisions) == 1 else None

    def decisions(self) -> tuple[Decision, ...]:
        """Return the distinct decisions, in the order of the pieces."""
        return tuple(dict.fromkeys(p.decision for p in self.pieces))

    def at(self, source: str) -> tuple[Piece, ...]:
        """Return the pieces whose sources hold this address (one, unless other dimensions split it)."""
        address = ipaddress.ip_address(source)
        return tuple(
            p for p in self.pieces if p.sources == (ANY,) or any(address in ipaddress.ip_network(n) for n in p.sources)
        )

    def not_allowed(self) -> tuple[Piece, ...]:
        """Return the pieces that are not simply let in (deny, reject or limit)."""
        return tuple(p for p in self.pieces if p.decision.verdict is not Verdict.ALLOW)

    def describe(self) -> str:
        """Return one line: ``allowed by …`` or ``partly: …; …``."""
        only = self.decision
        if only is not None and not any(p.only for p in self.pieces):
            return f"{self.what}: {self.reach.value} ({only.verdict.value} by {only.why})"
        return f"{self.what}: {self.reach.value}: " + "; ".join(p.describe() for p in self.pieces)


def judge(ruleset: Ruleset, flow: Flow) -> Judgement:
    """Return every part of ``flow`` with the rule, before-rule or policy that decides it."""
    names = m.Interfaces(ruleset.rules4 + ruleset.rules6, (flow.interface, flow.out_interface))
    region: m.Box = (
        m.net_set(flow.source, flow.family),
        m.port_set(flow.sport),
        m.net_set(flow.dest, flow.family),
        m.port_set(flow.port),
        m.proto_set(flow.proto, ports=True),
        names.remote(flow.interface),
        names.remote(flow.out_interface) if flow.routed else names.other,
    )
    return _judge(ruleset, flow.family, flow.routed, [region], names, flow.describe())


def decide(ruleset: Ruleset, flow: Flow) -> Decision:
    """Return the one decision for a flow all of whose packets meet the same rule; else a ValueError."""
    judgement = judge(ruleset, flow)
    if judgement.decision is None:
        raise ValueError(f"not one verdict: {judgement.describe()}")
    return judgement.decision


def judge_rule(
    ruleset: Ruleset, want: UfwRule, *, dest: str = ANY, interface: str | None = None, sport: str | None = None
) -> tuple[Judgement, ...]:
    """Judge the traffic a wanted rule is meant for, per family it covers: is it let in already, and by what?

    The traffic is what ``want`` would match (its sources, ports, protocols, interface), narrowed to
    what is known of how it arrives: ``dest`` (the host address it is sent to), ``interface`` and
    ``sport``. IPv6 is left out when ufw does not handle it (``IPV6=no``). An application rule is
    resolved through the ruleset's profiles.
    """
    out = []
    for fam in rule_families(want):
        if fam == 6 and not ruleset.ipv6:
            continue
        names = m.Interfaces(ruleset.rules4 + ruleset.rules6, (want.interface, want.interface_out, interface))
        context: m.Box = (
            m.FULL_NET[fam],
            m.port_set(sport),
            m.net_set(dest, fam),
            m.ALL_PORTS,
            m.TCP_UDP,
            names.remote(interface),
            names.remote(None) if want.route else names.other,
        )
        boxes = [b for b in (m.and_box(rb, context) for rb in m.rule_boxes(want, fam, names, ruleset.profile)) if b]
        out.append(_judge(ruleset, fam, want.route, boxes, names, f"IPv{fam} {want.raw or want.command()}"))
    return tuple(out)


# -- the chains a new packet meets -------------------------------------------------------------


def _judge(
    ruleset: Ruleset, family: int, routed: bool, region: list[m.Box], names: m.Interfaces, what: str
) -> Judgement:
    chain = _chain(ruleset, family, routed, names)
    pieces: list[Piece] = []
    for flow_box in region:
        for piece, decision in m.first_match(flow_box, chain):
            pieces.append(
                Piece(m.networks(piece[m.SRC], family), decision, m.narrowing(piece, flow_box, names, family))
            )
    return Judgement(family, what, tuple(pieces))


def _chain(ruleset: Ruleset, family: int, routed: bool, names: m.Interfaces) -> list[tuple[list[m.Box], Decision]]:
    """The ordered (match, decision) list a new packet meets, ending in a catch-all policy."""
    everything = [m.box(family, names)]
    if not ruleset.active:
        return [
            (everything, Decision(Verdict.ALLOW, DecidedBy.INACTIVE, "ufw is inactive: it loads no rule and no policy"))
        ]
    lo = (
        [m.box(family, names, iif=names.only("lo"))],
        Decision(Verdict.ALLOW, DecidedBy.BEFORE_RULES, "before.rules: all traffic on loopback"),
    )
    if family == 6 and not ruleset.ipv6:
        off = (
            everything,
            Decision(Verdict.DENY, DecidedBy.IPV6_OFF, "IPV6=no in /etc/default/ufw: ufw drops all IPv6 but loopback"),
        )
        return [off] if routed else [lo, off]
    chain: list[tuple[list[m.Box], Decision]] = []
    if not routed:
        chain.append(lo)
        for text, fixed in _before_input(family, names):
            chain.append(([fixed], Decision(Verdict.ALLOW, DecidedBy.BEFORE_RULES, f"before.rules: {text}")))
    fname = "user.rules" if family == 4 else "user6.rules"
    for n, rule in enumerate(ruleset.rules(family), 1):
        if rule.route != routed or (not routed and rule.direction != "in"):
            continue  # another chain: ufw-user-forward / ufw-user-output
        chain.append(
            (
                m.rule_boxes(rule, family, names, ruleset.profile),
                Decision(
                    Verdict(rule.action),
                    DecidedBy.RULE,
                    f"{fname} rule {n}: {rule.raw or rule.command()}",
                    rule,
                    family,
                    n,
                ),
            )
        )
    policy = ruleset.routed if routed else ruleset.incoming
    word = "routed" if routed else "incoming"
    chain.append((everything, Decision(_POLICY_VERDICT[policy], DecidedBy.POLICY, f"default {word} policy: {policy}")))
    return chain


def _before_input(family: int, names: m.Interfaces) -> list[tuple[str, m.Box]]:
    """The shipped before.rules / before6.rules lines that accept a new TCP/UDP packet to the host."""
    udp = ((m.UDP, m.UDP),)
    port = m.port_set
    if family == 4:
        return [
            ("allow dhcp client to work (udp 67 → 68)", m.box(4, names, sport=port("67"), dport=port("68"), proto=udp)),
            (
                "mDNS (224.0.0.251 udp 5353)",
                m.box(4, names, dst=m.net_set("224.0.0.251", 4), dport=port("5353"), proto=udp),
            ),
            (
                "UPnP (239.255.255.250 udp 1900)",
                m.box(4, names, dst=m.net_set("239.255.255.250", 4), dport=port("1900"), proto=udp),
            ),
        ]
    link = m.net_set("fe80::/10", 6)
    return [
        (
            "DHCPv6 client (fe80::/10 udp 547 → 546)",
            m.box(6, names, src=link, sport=port("547"), dst=link, dport=port("546"), proto=udp),
        ),
        ("mDNS (ff02::fb udp 5353)", m.box(6, names, dst=m.net_set("ff02::fb", 6), dport=port("5353"), proto=udp)),
        ("UPnP (ff02::f udp 1900)", m.box(6, names, dst=m.net_set("ff02::f", 6), dport=port("1900"), proto=udp)),
    ]


_POLICY_VERDICT = {"allow": Verdict.ALLOW, "deny": Verdict.DENY, "reject": Verdict.REJECT}
