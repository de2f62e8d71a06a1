"""UFW rules as the tool reasons about them: one frozen dataclass for a rule wanted and a rule found.

A rule we want and a rule we parsed (from ``ufw show added`` or from ufw's own files, see
:mod:`keybuzz_fix.hosts.ufw.facts`) are the same :class:`UfwRule` and compare with ``==``; it
renders as the ``ufw`` command that adds it, and says which traffic it covers or overlaps, the
verdicts :mod:`keybuzz_fix.hosts.ufw.plan` decides with (pure code).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field

ANY = "any"


@dataclass(frozen=True)
class UfwRule:
    """One UFW rule, in the subset of UFW's grammar the tool writes and reasons about.

    ``port`` is a UFW port spec (``31695``, ``30000:30100``, ``80,443``) or ``None`` for all
    ports; ``sport`` restricts the source port the same way; ``app`` is an application profile
    (``OpenSSH``) for the destination, ``source_app`` one for the source ports. ``route`` marks a
    ``ufw route`` rule, which filters forwarded traffic, never traffic to the host itself; one that
    names both interfaces keeps the outgoing one in ``interface_out``. The comment does not take
    part in equality: a rule that exists with another comment is still the same rule. Nor does
    ``app_ports``: for an application rule read from user.rules, the ``(proto, dport, sport)`` its
    tuple recorded when it was added, which is what iptables enforces even if the profile changed.
    """

    action: str = "allow"  # allow, deny, reject, limit
    port: str | None = None
    proto: str | None = None  # tcp, udp or None for both
    source: str = ANY
    dest: str = ANY
    interface: str | None = None
    direction: str = "in"
    app: str | None = None
    route: bool = False
    sport: str | None = None
    source_app: str | None = None
    interface_out: str | None = None
    comment: str = field(default="", compare=False)
    raw: str = field(default="", compare=False)
    app_ports: tuple[str, str, str] | None = field(default=None, compare=False, repr=False)

    def command(self) -> str:
        """Render the rule as the ``ufw`` command that adds it (safely quoted)."""
        words = ["ufw", "route", self.action] if self.route else ["ufw", self.action]
        if self.direction != "in" or self.interface:
            words.append(self.direction)
        if self.interface:
            words += ["on", self.interface]
        if self.interface_out:
            words += ["out", "on", self.interface_out]
        narrow_source = self.sport or self.source_app
        if self.app and self.source == ANY and self.dest == ANY and not narrow_source and not self.interface_out:
            words.append(self.app)
        elif (
            self.source == ANY
            and self.dest == ANY
            and self.port
            and not self.interface
            and not narrow_source
            and not self.interface_out
        ):
            words.append(f"{self.port}/{self.proto}" if self.proto else self.port)
        else:
            words += ["from", self.source]
            if self.source_app:
                words += ["app", self.source_app]
            elif self.sport:
                words += ["port", self.sport]
            words += ["to", self.dest]
            if self.app:
                words += ["app", self.app]
            elif self.port:
                words += ["port", self.port]
                if self.proto:
                    words += ["proto", self.proto]
            elif self.proto:
                words += ["proto", self.proto]
        if self.comment:
            words += ["comment", self.comment]
        return shlex.join(words)

    def describe(self) -> str:
        """Return a short human form (``31695/tcp from 10.0.0.0/16``)."""
        what = self.app or (f"{self.port}/{self.proto}" if self.port and self.proto else self.port or "any port")
        return f"{'route ' if self.route else ''}{self.action} {what} from {self.source}"

    def ports(self) -> set[int] | None:
        """Return the set of ports the rule matches, or ``None`` for every port.

        A ValueError for a spec ufw refuses: ports are 1-65535 in ASCII digits, a range ``lo:hi`` with lo ≤ hi.
        """
        if self.app:
            return set(APP_PORTS.get(self.app, ()))
        if self.port is None:
            return None
        out: set[int] = set()
        for part in self.port.split(","):
            lo, _, hi = part.partition(":")
            if not (lo.isascii() and lo.isdigit() and (not hi or hi.isascii() and hi.isdigit())):
                raise ValueError(f"bad port spec {self.port!r}")
            first, last = int(lo), int(hi or lo)
            if not 1 <= first <= last <= 65535:
                raise ValueError(f"bad port spec {self.port!r}")
            out.update(range(first, last + 1))
        return out

    def covers(self, other: UfwRule) -> bool:
        """Whether every packet ``other`` matches is matched by this rule too."""
        if self.route != other.route:
            return False
        if self.direction != other.direction or self.dest != ANY and self.dest != other.dest:
            return False
        if self.interface and self.interface != other.interface:
            return False
        if self.proto and self.proto != other.proto:
            return False
        if (self.sport or self.source_app) and (self.sport, self.source_app) != (other.sport, other.source_app):
            return False  # only some source ports: not all of the traffic
        mine, theirs = self.ports(), other.ports()
        if mine is not None and (theirs is None or not theirs <= mine):
            return False
        return _network_covers(self.source, other.source)

    def overlaps(self, other: UfwRule) -> bool:
        """Whether some packet is matched by both rules (a deny that takes part of an allow's traffic)."""
        if self.route != other.route:
            return False
        if self.direction != other.direction or self.interface and self.interface != other.interface:
            return False
        if self.proto and other.proto and self.proto != other.proto:
            return False
        a, b = self.ports(), other.ports()
        if a is not None and b is not None and not a & b:
            return False
        return _networks_overlap(self.source, other.source)


# Application profiles whose ports the tool needs to recognise (for the SSH lockout guard).
APP_PORTS: dict[str, tuple[int, ...]] = {"OpenSSH": (22,), "SSH": (22,), "ssh": (22,)}


class ParseError(ValueError):
    """Probe output the parser does not understand."""


def desired_rules(ports: Iterable[tuple[int, str, str]], source: str) -> list[UfwRule]:
    """Return the rules for ``(port, proto, comment)`` triples, restricted to ``source``."""
    return [
        UfwRule(action="allow", port=str(p), proto=proto, source=source, comment=comment) for p, proto, comment in ports
    ]


def parse_rule_command(line: str) -> UfwRule:
    """Parse one ``ufw allow …`` command line as ``ufw show added`` prints it."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise ParseError(f"unbalanced quotes in {line!r}") from e
    if len(words) < 2 or words[0] != "ufw":
        raise ParseError(f"not a ufw rule: {line!r}")
    words = words[1:]
    route = words[0] == "route"
    if route:
        words = words[1:]
    if not words or words[0] not in ("allow", "deny", "reject", "limit"):
        raise ParseError(f"unknown action in {line!r}")
    values: dict[str, str] = {"action": words[0]}
    i = 1
    simple: str | None = None
    side = "to"  # "port" and "app" after "from" name the source's
    way = "in"  # "on" names the interface of the "in" or "out" before it
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w in ("in", "out"):  # a route rule may name both: the first one is its direction
            values.setdefault("direction", w)
            way = w
            i += 1
            continue
        if w in ("log", "log-all"):
            i += 1
            continue
        if nxt is None:
            if simple is not None:
                raise ParseError(f"unexpected {w!r} in {line!r}")
            simple = w
            i += 1
            continue
        if w == "on" and way == "out" and "interface" in values:
            values.setdefault("iface_out", nxt)  # route … in on IF1 out on IF2
        elif w == "on":
            values.setdefault("interface", nxt)
        elif w in ("from", "to"):
            values["source" if w == "from" else "dest"], side = nxt, w
        elif w == "port":
            values["sport" if side == "from" else "port"] = nxt
        elif w == "proto":
            values["proto"] = nxt
        elif w == "app":
            values["sapp" if side == "from" else "app"] = nxt
        elif w == "comment":
            values["comment"] = nxt
        elif simple is None:
            simple = w
            i += 1
            continue
        else:
            raise ParseError(f"unexpected {w!r} in {line!r}")
        i += 2
    if simple is not None:
        spec, _, proto = simple.partition("/")
        if spec.replace(",", "").replace(":", "").isdigit():
            values["port"], values["proto"] = spec, proto
        else:
            values["app"] = simple
    for key in ("source", "dest"):
        if values.get(key) in ("any", "Anywhere"):
            values[key] = ANY
    if values.get("proto") in ("", "any"):
        values.pop("proto")
    return checked_ports(
        UfwRule(
            action=values["action"],
            port=values.get("port"),
            proto=values.get("proto"),
            source=values.get("source", ANY),
            dest=values.get("dest", ANY),
            interface=values.get("interface"),
            direction=values.get("direction", "in"),
            app=values.get("app"),
            route=route,
            sport=values.get("sport"),
            source_app=values.get("sapp"),
            interface_out=values.get("iface_out"),
            comment=values.get("comment", ""),
            raw=line,
        ),
        repr(line),
    )


def checked_ports(rule: UfwRule, where: str) -> UfwRule:
    """Return a parsed ``rule`` if its port specs (destination and source) are sound; else a ParseError."""
    try:
        rule.ports()
        UfwRule(port=rule.sport).ports()
    except ValueError as e:
        raise ParseError(f"bad port in {where}") from e
    return rule


def _network_covers(outer: str, inner: str) -> bool:
    if outer == ANY:
        return True
    if inner == ANY:
        return False
    nets = _same_family(outer, inner)
    return nets is not None and nets[1].subnet_of(nets[0])  # type: ignore[arg-type]


def _networks_overlap(a: str, b: str) -> bool:
    if ANY in (a, b):
        return True
    nets = _same_family(a, b)
    return nets is not None and nets[0].overlaps(nets[1])


def _same_family(a: str, b: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """Return both sources as networks of one IP version, or ``None`` (not comparable: neither covers the other)."""
    try:
        nets = ipaddress.ip_network(a, strict=False), ipaddress.ip_network(b, strict=False)
    except ValueError:
        return None
    return nets if nets[0].version == nets[1].version else None
