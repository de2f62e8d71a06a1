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
  source address and shared by every limit rule. A UDP stream whose replies use other ports (VXLAN)
  is NEW on every packet, so it is throttled to 5 packets per 30 s.
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
decided it, so "allow from 10.0.0.0/17" over a flow from 10.0.0.0/16 reads "partly".
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from keybuzz_fix import ufw_files
from keybuzz_fix.firewall import ANY, UfwRule

POLICIES = ("allow", "deny", "reject")  # ufw default <policy> incoming|routed
TCP, UDP = 6, 17
_PROTOS = {"tcp": TCP, "udp": UDP}
_MAX = {4: 2**32 - 1, 6: 2**128 - 1}


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
class AppProfile:
    """One application profile: ``entries`` are its ``ports=`` items as ``(proto or None, port spec)``."""

    name: str
    entries: tuple[tuple[str | None, str], ...]


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
            if value != ANY and _family(value) != self.family:
                raise ValueError(f"{name} {value!r} is not an IPv{self.family} address or network")
        _port_set(self.port)
        _port_set(self.sport)

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
        return tuple(p for p in self.pieces if p.sources == (ANY,) or any(
            address in ipaddress.ip_network(n) for n in p.sources))

    def not_allowed(self) -> tuple[Piece, ...]:
        """Return the pieces that are not simply let in (deny, reject or limit)."""
        return tuple(p for p in self.pieces if p.decision.verdict is not Verdict.ALLOW)

    def describe(self) -> str:
        """Return one line: ``allowed by …`` or ``partly: …; …``."""
        only = self.decision
        if only is not None and not any(p.only for p in self.pieces):
            return f"{self.what}: {self.reach.value} ({only.verdict.value} by {only.why})"
        return f"{self.what}: {self.reach.value}: " + "; ".join(p.describe() for p in self.pieces)


@dataclass(frozen=True)
class Added:
    """What ``ufw <rule>`` (or ``ufw insert N`` / ``ufw prepend``) would leave: the new rules and what it changed."""

    ruleset: Ruleset
    replaced: tuple[UfwRule, ...] = ()  # existing rules ufw rewrites in place (same match, another action)
    skipped: tuple[int, ...] = ()  # families where ufw skips the rule (already there, or an insert over a match)


@dataclass(frozen=True)
class Ruleset:
    """Everything that decides a packet on one host: the user rules per family, the policies, the status.

    ``rules4`` and ``rules6`` are in the order of user.rules and user6.rules; ``incoming`` and
    ``routed`` are policies in ``ufw default`` words (allow, deny, reject); ``ipv6`` is ``IPV6=yes``
    on a kernel with IPv6; ``profiles`` resolves rules that name an application profile only.
    """

    rules4: tuple[UfwRule, ...] = ()
    rules6: tuple[UfwRule, ...] = ()
    incoming: str = "deny"
    routed: str = "deny"
    active: bool = True
    ipv6: bool = True
    profiles: tuple[AppProfile, ...] = ()

    def __post_init__(self) -> None:
        for name in ("incoming", "routed"):
            if getattr(self, name) not in POLICIES:
                raise ValueError(f"{name} policy must be one of {POLICIES}, not {getattr(self, name)!r}")

    @classmethod
    def from_files(cls, user_rules: str, user6_rules: str | None, defaults: str, *, active: bool,
                   applications: Mapping[str, str] | None = None, kernel_ipv6: bool = True) -> Ruleset:
        """Build from the text of user.rules, user6.rules, /etc/default/ufw and applications.d files (name → text).

        ``active`` is whether ufw's chains are loaded (:func:`keybuzz_fix.ufw_files.chains_active`).
        With ``IPV6=no`` ufw does not read user6.rules, and neither does this.
        """
        settings = ufw_files.parse_defaults(defaults)
        ipv6 = ufw_files.uses_ipv6(settings, kernel_ipv6)
        rules6: Sequence[UfwRule] = ()
        if ipv6 and user6_rules is not None:
            rules6 = ufw_files.parse_user_rules(user6_rules, ufw_files.RULES6_FILE)
        return cls(
            rules4=tuple(ufw_files.parse_user_rules(user_rules, ufw_files.RULES_FILE)),
            rules6=tuple(rules6),
            incoming=_policy(settings.get("default_input_policy")),
            routed=_policy(settings.get("default_forward_policy")),
            active=active,
            ipv6=ipv6,
            profiles=tuple(parse_app_profiles(applications or {}).values()),
        )

    def rules(self, family: int) -> tuple[UfwRule, ...]:
        """Return the user rules of one family, in ufw's order."""
        return self.rules4 if family == 4 else self.rules6

    def profile(self, name: str) -> AppProfile | None:
        """Find a profile as ufw does: the exact name, else the one name equal but for case."""
        exact = [p for p in self.profiles if p.name == name]
        if exact:
            return exact[-1]
        folded = [p for p in self.profiles if p.name.lower() == name.lower()]
        return folded[0] if len(folded) == 1 else None

    def add(self, rule: UfwRule, *, position: int = 0) -> Added:
        """Return what ``ufw <rule>`` does to these rules: append (0), ``prepend`` (-1) or ``insert N``.

        As ``backend_iptables.set_rule`` does it: a rule equal to an existing one is skipped; one that
        matches an existing rule but for its action (or comment) *replaces that rule in place* when
        appended (``ufw allow 31695/tcp`` over ``ufw limit 31695/tcp`` turns the limit into an allow),
        and is skipped when inserted or prepended. ``insert N`` counts v4 rules first, as ``ufw status
        numbered`` does; a rule for both families is inserted in user6.rules where the v4 rule at N has
        its twin, or appended there when it has none. With ``IPV6=no`` only user.rules changes.
        """
        lists = {4: list(self.rules4), 6: list(self.rules6)}
        replaced: list[UfwRule] = []
        skipped: list[int] = []
        families = [f for f in rule_families(rule) if f == 4 or self.ipv6]
        if not families:
            raise ValueError(f"{rule.command()}: IPv6 support not enabled (IPV6=no)")
        v4_at = self.rules4[position - 1] if 0 < position <= len(self.rules4) else None
        for fam in families:
            rules = lists[fam]
            same = [i for i, r in enumerate(rules) if _same_match(r, rule)]
            if position == 0:
                if any(rules[i] == rule for i in same):
                    skipped.append(fam)
                elif same:
                    replaced.append(rules[same[0]])
                    rules[same[0]] = rule
                else:
                    rules.append(rule)
                continue
            if same:
                skipped.append(fam)
                continue
            if position == -1:
                rules.insert(0, rule)
            elif fam == 4 or len(families) == 1:
                at = position - 1 if fam == 4 else position - 1 - len(self.rules4)
                if not 0 <= at <= len(rules):
                    raise ValueError(f"ufw insert {position}: no such position for IPv{fam}")
                rules.insert(at, rule)
            else:
                twin = next((i for i, r in enumerate(rules) if v4_at is not None and r == v4_at), None)
                if twin is None:
                    rules.append(rule)
                else:
                    rules.insert(twin, rule)
        return Added(replace(self, rules4=tuple(lists[4]), rules6=tuple(lists[6])), tuple(replaced), tuple(skipped))


def rule_families(rule: UfwRule) -> tuple[int, ...]:
    """Return the families ufw writes a rule to: its addresses' family, or both for ``any`` to ``any``."""
    fams = {_family(a) for a in (rule.source, rule.dest) if a != ANY}
    if len(fams) > 1:
        raise ValueError(f"mixed IP versions for 'from' and 'to' in {rule.command()}")
    return (fams.pop(),) if fams else (4, 6)


def judge(ruleset: Ruleset, flow: Flow) -> Judgement:
    """Return every part of ``flow`` with the rule, before-rule or policy that decides it."""
    names = _Ifaces(ruleset, (flow.interface, flow.out_interface))
    region: _Box = (
        _net_set(flow.source, flow.family),
        _port_set(flow.sport),
        _net_set(flow.dest, flow.family),
        _port_set(flow.port),
        _proto_set(flow.proto, ports=True),
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


def judge_rule(ruleset: Ruleset, want: UfwRule, *, dest: str = ANY, interface: str | None = None,
               sport: str | None = None) -> tuple[Judgement, ...]:
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
        names = _Ifaces(ruleset, (want.interface, want.interface_out, interface))
        context: _Box = (_FULL_NET[fam], _port_set(sport), _net_set(dest, fam), _ALL_PORTS, _TCP_UDP,
                   names.remote(interface), names.remote(None) if want.route else names.other)
        boxes = [b for b in (_and_box(rb, context) for rb in _rule_boxes(want, fam, names, ruleset)) if b]
        what = f"IPv{fam} {want.raw or want.command()}"
        out.append(_judge(ruleset, fam, want.route, boxes, names, what))
    return tuple(out)


def parse_app_profiles(files: Mapping[str, str]) -> dict[str, AppProfile]:
    """Parse the files of ``/etc/ufw/applications.d`` (file name → text) into profiles by name.

    As ``applications.get_profiles``: files in name order, hidden and package-backup files skipped,
    a file that does not parse skipped, a later profile of the same name wins; a profile needs
    ``title``, ``description`` and valid ``ports``. (ufw also skips a profile named like a service of
    /etc/services; that file is not read here.)
    """
    profiles: dict[str, AppProfile] = {}
    for fname in sorted(files):
        if fname.startswith(".") or fname.endswith(_BACKUP_SUFFIXES):
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read_string(files[fname], source=fname)
        except configparser.Error:
            continue
        for name in parser.sections():
            if len(name) > 64 or not _PROFILE_NAME.match(name) or name == "all" or name.isdigit():
                continue
            values = dict(parser.items(name))
            if any(len(k) > 64 or len(v) > 1024 for k, v in values.items()):
                continue
            if not all(values.get(k) for k in ("title", "description", "ports")):
                continue
            try:
                entries = tuple(_profile_entry(p) for p in values["ports"].split("|"))
            except ValueError:
                continue
            profiles[name] = AppProfile(name, entries)
    return profiles


# -- the evaluation ----------------------------------------------------------------------------

_IntSet = tuple[tuple[int, int], ...]  # sorted, disjoint, non-adjacent closed intervals
_Box = tuple[_IntSet, ...]  # (source, sport, dest, dport, proto, in-interface, out-interface)
_SRC, _SPORT, _DST, _DPORT, _PROTO, _IIF, _OIF = range(7)
_ALL_PORTS: _IntSet = ((1, 65535),)
_ALL_PROTOS: _IntSet = ((0, 255),)
_TCP_UDP: _IntSet = ((TCP, TCP), (UDP, UDP))
_FULL_NET: dict[int, _IntSet] = {4: ((0, _MAX[4]),), 6: ((0, _MAX[6]),)}
_BACKUP_SUFFIXES = (".dpkg-new", ".dpkg-old", ".dpkg-dist", ".rpmnew", ".rpmsave", "~")
_PROFILE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9 _\-\.+]*$")


class _Ifaces:
    """Interface names as numbers: one per name the rules or the flow use, 0 for every other interface."""

    def __init__(self, ruleset: Ruleset, extra: Iterable[str | None]) -> None:
        seen = {r.interface for r in ruleset.rules4 + ruleset.rules6} | {
            r.interface_out for r in ruleset.rules4 + ruleset.rules6} | set(extra) | {"lo"}
        self.names = sorted(n for n in seen if n)
        self.all: _IntSet = ((0, len(self.names)),)
        self.other: _IntSet = ((0, 0),)

    def only(self, name: str | None) -> _IntSet:
        return self.all if name is None else ((self.names.index(name) + 1,) * 2,)

    def remote(self, name: str | None) -> _IntSet:
        """Where packets of a flow may arrive: the named interface; not known: any but loopback."""
        if name is not None:
            return self.only(name)
        return _minus(self.all, self.only("lo"))

    def describe(self, ids: _IntSet) -> str:
        members = {i for lo, hi in ids for i in range(lo, hi + 1)}
        if 0 in members:
            others = [n for i, n in enumerate(self.names, 1) if i not in members and n != "lo"]
            return "on an interface other than " + ", ".join(others) if others else "on any interface"
        return "on " + ", ".join(self.names[i - 1] for i in sorted(members))


def _judge(ruleset: Ruleset, family: int, routed: bool, region: list[_Box], names: _Ifaces,
           what: str) -> Judgement:
    chain = _chain(ruleset, family, routed, names)
    pieces: list[Piece] = []
    for flow_box in region:
        for box, decision in _first_match(flow_box, chain):
            pieces.append(Piece(_networks(box[_SRC], family), decision, _narrowing(box, flow_box, names, family)))
    return Judgement(family, what, tuple(pieces))


def _chain(ruleset: Ruleset, family: int, routed: bool, names: _Ifaces) -> list[tuple[list[_Box], Decision]]:
    """The ordered (match, decision) list a new packet meets, ending in a catch-all policy."""
    everything: list[_Box] = [_box(family, names)]
    if not ruleset.active:
        return [(everything, Decision(Verdict.ALLOW, DecidedBy.INACTIVE,
                                      "ufw is inactive: it loads no rule and no policy"))]
    loopback: _Box = _box(family, names, iif=names.only("lo"))
    lo = ([loopback], Decision(Verdict.ALLOW, DecidedBy.BEFORE_RULES, "before.rules: all traffic on loopback"))
    if family == 6 and not ruleset.ipv6:
        off = (everything, Decision(Verdict.DENY, DecidedBy.IPV6_OFF,
                                    "IPV6=no in /etc/default/ufw: ufw drops all IPv6 but loopback"))
        return [off] if routed else [lo, off]
    chain: list[tuple[list[_Box], Decision]] = []
    if not routed:
        chain.append(lo)
        for text, box in _before_input(family, names):
            chain.append(([box], Decision(Verdict.ALLOW, DecidedBy.BEFORE_RULES, f"before.rules: {text}")))
    rules = ruleset.rules(family)
    fname = "user.rules" if family == 4 else "user6.rules"
    for n, rule in enumerate(rules, 1):
        if rule.route != routed or (not routed and rule.direction != "in"):
            continue  # another chain: ufw-user-forward / ufw-user-output
        chain.append((_rule_boxes(rule, family, names, ruleset),
                      Decision(Verdict(rule.action), DecidedBy.RULE, f"{fname} rule {n}: {rule.raw or rule.command()}",
                               rule, family, n)))
    policy = ruleset.routed if routed else ruleset.incoming
    word = "routed" if routed else "incoming"
    chain.append((everything, Decision(_POLICY_VERDICT[policy], DecidedBy.POLICY,
                                       f"default {word} policy: {policy}")))
    return chain


def _first_match(flow: _Box, chain: list[tuple[list[_Box], Decision]]) -> list[tuple[_Box, Decision]]:
    """Walk the chain: each rule takes the part of what is left that it matches."""
    left = [flow]
    out: list[tuple[_Box, Decision]] = []
    for boxes, decision in chain:
        for rule_box in boxes:
            rest: list[_Box] = []
            for box in left:
                hit = _and_box(box, rule_box)
                if hit is None:
                    rest.append(box)
                    continue
                out.append((hit, decision))
                rest.extend(_minus_box(box, rule_box))
            left = rest
        if not left:
            break
    return out


def _before_input(family: int, names: _Ifaces) -> list[tuple[str, _Box]]:
    """The shipped before.rules / before6.rules lines that accept a new TCP/UDP packet to the host."""
    udp = ((UDP, UDP),)
    if family == 4:
        return [
            ("allow dhcp client to work (udp 67 → 68)",
             _box(4, names, sport=_port_set("67"), dport=_port_set("68"), proto=udp)),
            ("mDNS (224.0.0.251 udp 5353)",
             _box(4, names, dst=_net_set("224.0.0.251", 4), dport=_port_set("5353"), proto=udp)),
            ("UPnP (239.255.255.250 udp 1900)",
             _box(4, names, dst=_net_set("239.255.255.250", 4), dport=_port_set("1900"), proto=udp)),
        ]
    link = _net_set("fe80::/10", 6)
    return [
        ("DHCPv6 client (fe80::/10 udp 547 → 546)",
         _box(6, names, src=link, sport=_port_set("547"), dst=link, dport=_port_set("546"), proto=udp)),
        ("mDNS (ff02::fb udp 5353)", _box(6, names, dst=_net_set("ff02::fb", 6), dport=_port_set("5353"), proto=udp)),
        ("UPnP (ff02::f udp 1900)", _box(6, names, dst=_net_set("ff02::f", 6), dport=_port_set("1900"), proto=udp)),
    ]


def _box(family: int, names: _Ifaces, *, src: _IntSet | None = None, sport: _IntSet = _ALL_PORTS,
         dst: _IntSet | None = None, dport: _IntSet = _ALL_PORTS, proto: _IntSet = _ALL_PROTOS,
         iif: _IntSet | None = None) -> _Box:
    return (src or _FULL_NET[family], sport, dst or _FULL_NET[family], dport, proto, iif or names.all, names.all)


def _rule_boxes(rule: UfwRule, family: int, names: _Ifaces, ruleset: Ruleset) -> list[_Box]:
    """What one rule matches, as boxes (several for a profile of several port entries)."""
    if any(a != ANY and _family(a) != family for a in (rule.source, rule.dest)):
        return []
    src, dst = _net_set(rule.source, family), _net_set(rule.dest, family)
    iif, oif = names.all, names.all
    if rule.interface:
        if rule.direction == "in":
            iif = names.only(rule.interface)
        else:
            oif = names.only(rule.interface)
    if rule.interface_out:
        oif = names.only(rule.interface_out)
    boxes: list[_Box] = []
    for proto, dport, sport in _port_entries(rule, ruleset):
        has_ports = dport not in (None, "any") or sport not in (None, "any")
        boxes.append((src, _port_set(sport), dst, _port_set(dport), _proto_set(proto, ports=has_ports), iif, oif))
    return boxes


def _port_entries(rule: UfwRule, ruleset: Ruleset) -> list[tuple[str | None, str | None, str | None]]:
    """(proto, dport, sport) triples of a rule; an application rule through its tuple or its profiles.

    Profiles are expanded as ``backend.get_app_rules_from_template``: one entry per port item, and for
    a rule naming two profiles every pair (the same item twice when both name the same profile).
    """
    if not (rule.app or rule.source_app):
        return [(rule.proto, rule.port, rule.sport)]
    if rule.app_ports is not None:
        return [rule.app_ports]
    dports = _profile_ports(ruleset, rule.app) if rule.app else [(rule.proto, rule.port)]
    sports = _profile_ports(ruleset, rule.source_app) if rule.source_app else [(rule.proto, rule.sport)]
    if rule.app and rule.source_app:
        if rule.app == rule.source_app:
            return [(p, ports, ports) for p, ports in dports]
        return [(sp if sp is not None else dp, d, s) for dp, d in dports for sp, s in sports]
    if rule.app:
        return [(p, d, rule.sport) for p, d in dports]
    return [(p, rule.port, s) for p, s in sports]


def _profile_ports(ruleset: Ruleset, name: str) -> list[tuple[str | None, str]]:
    profile = ruleset.profile(name)
    if profile is None:
        raise UnknownProfile(name)
    return list(profile.entries)


class UnknownProfile(ValueError):
    """A rule names an application profile that the given applications.d files do not define."""

    def __init__(self, name: str) -> None:
        super().__init__(f"application profile {name!r} is not defined in the applications.d files given")
        self.name = name


def _profile_entry(item: str) -> tuple[str | None, str]:
    """Check one ``ports=`` item as ``applications.verify_profile`` does."""
    port, _, proto = item.strip().partition("/")
    if "/" in proto:
        raise ValueError(item)
    if proto not in ("", "tcp", "udp"):
        raise ValueError(item)  # portless or unknown protocols carry no ports
    if not proto and (":" in port or "," in port):
        raise ValueError(item)
    if port.count(",") + port.count(":") > 14 or port.startswith((",", ":")) or port.endswith((",", ":")):
        raise ValueError(item)
    _port_set(port)
    return (proto or None, port)


# -- sets of numbers ---------------------------------------------------------------------------


def _norm(intervals: Iterable[tuple[int, int]]) -> _IntSet:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _and(a: _IntSet, b: _IntSet) -> _IntSet:
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


def _minus(a: _IntSet, b: _IntSet) -> _IntSet:
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
    return _norm(out)


def _and_box(a: _Box, b: _Box) -> _Box | None:
    out = tuple(_and(x, y) for x, y in zip(a, b, strict=True))
    return None if any(not s for s in out) else out


def _minus_box(a: _Box, b: _Box) -> list[_Box]:
    """``a`` without ``b``, as disjoint boxes (the usual one-dimension-at-a-time split)."""
    out = []
    for k in range(len(a)):
        rest = _minus(a[k], b[k])
        if rest:
            out.append(tuple(_and(a[i], b[i]) for i in range(k)) + (rest,) + a[k + 1:])
    return out


def _port_set(spec: str | None) -> _IntSet:
    """``31695``, ``30000:32767``, ``80,443`` (or None / ``any``: every port) as a set."""
    if spec in (None, "any"):
        return _ALL_PORTS
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        if not (lo.isdigit() and (hi.isdigit() or not hi)):
            raise ValueError(f"bad port spec {spec!r}")
        a, b = int(lo), int(hi or lo)
        if not 1 <= a <= b <= 65535:
            raise ValueError(f"bad port spec {spec!r}")
        out.append((a, b))
    return _norm(out)


def _proto_set(proto: str | None, *, ports: bool) -> _IntSet:
    """A protocol; none given: tcp and udp when the rule has ports (ufw writes both), else every protocol."""
    if proto in (None, "any"):
        return _TCP_UDP if ports else _ALL_PROTOS
    if proto not in _PROTOS:
        return ()  # another protocol (esp, gre, …): never a TCP or UDP packet
    return ((_PROTOS[proto],) * 2,)


def _family(value: str) -> int:
    return ipaddress.ip_network(value, strict=False).version


def _net_set(value: str, family: int) -> _IntSet:
    if value == ANY:
        return _FULL_NET[family]
    net = ipaddress.ip_network(value, strict=False)  # iptables masks host bits the same way
    if net.version != family:
        return ()
    return ((int(net.network_address), int(net.broadcast_address)),)


def _networks(ranges: _IntSet, family: int) -> tuple[str, ...]:
    if ranges == _FULL_NET[family]:
        return (ANY,)
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    out: list[str] = []
    for lo, hi in ranges:
        for net in ipaddress.summarize_address_range(make(lo), make(hi)):
            out.append(str(net) if net.prefixlen != net.max_prefixlen else str(net.network_address))
    return tuple(out)


def _spec(ports: _IntSet) -> str:
    return ",".join(f"{lo}" if lo == hi else f"{lo}:{hi}" for lo, hi in ports)


def _narrowing(box: _Box, flow: _Box, names: _Ifaces, family: int) -> tuple[str, ...]:
    """Say where a piece is narrower than its flow, other than in its sources."""
    out = []
    if box[_PROTO] != flow[_PROTO]:  # flows are tcp and/or udp: a piece is one of them
        out.append("+".join({TCP: "tcp", UDP: "udp"}.get(lo, str(lo)) for lo, _ in box[_PROTO]))
    if box[_DPORT] != flow[_DPORT]:
        out.append(f"port {_spec(box[_DPORT])}")
    if box[_SPORT] != flow[_SPORT]:
        out.append(f"source port {_spec(box[_SPORT])}")
    if box[_DST] != flow[_DST]:
        out.append("to " + ", ".join(_networks(box[_DST], family)))
    if box[_IIF] != flow[_IIF]:
        out.append("arriving " + names.describe(box[_IIF]))
    if box[_OIF] != flow[_OIF]:
        out.append("leaving " + names.describe(box[_OIF]))
    return tuple(out)


def _same_match(existing: UfwRule, rule: UfwRule) -> bool:
    """Whether two rules match the same packets as ufw compares them (``UFWRule.match``: all but action)."""
    return replace(existing, action=rule.action) == rule


def _policy(value: str | None) -> str:
    """``DEFAULT_*_POLICY`` (ACCEPT, DROP, REJECT; lower-cased by the parser) in ``ufw default`` words."""
    return {"accept": "allow", "reject": "reject"}.get(value or "drop", "deny")


_POLICY_VERDICT = {"allow": Verdict.ALLOW, "deny": Verdict.DENY, "reject": Verdict.REJECT}
