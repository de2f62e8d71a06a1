"""UFW rules: what we want, what a host has, and the plan between the two (pure code).

The facts come from one remote probe (:mod:`keybuzz_fix.ufw_probe`) that reads ufw's files, or
prints ``ufw status verbose`` and ``ufw show added`` (the command form of every user rule, comments
included) where those files are not in their usual place; either way it gives :class:`UfwFacts`.
A rule we want and a rule we parsed are the same frozen dataclass and compare with ``==``.
:func:`plan` never removes or reorders a rule, never changes a default policy, and never enables
UFW without first making sure the SSH port we came in on stays open.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from keybuzz_fix.errors import UsageError

ANY = "any"
PROBE_MARK = "@@keybuzz-fix@@"


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
        elif self.source == ANY and self.dest == ANY and self.port and not self.interface and not narrow_source \
                and not self.interface_out:
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
        """Return the set of ports the rule matches, or ``None`` for every port."""
        if self.app:
            return set(APP_PORTS.get(self.app, ()))
        if self.port is None:
            return None
        out: set[int] = set()
        for part in self.port.split(","):
            lo, _, hi = part.partition(":")
            out.update(range(int(lo), int(hi or lo) + 1))
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
        return _net_covers(self.source, other.source)


# Application profiles whose ports the tool needs to recognise (for the SSH lockout guard).
APP_PORTS: dict[str, tuple[int, ...]] = {"OpenSSH": (22,), "SSH": (22,), "ssh": (22,)}


@dataclass(frozen=True)
class UfwFacts:
    """What one host's UFW looks like."""

    installed: bool
    active: bool = False
    default_incoming: str | None = None
    rules: tuple[UfwRule, ...] = ()
    ssh_client_ip: str | None = None
    ssh_port: int | None = None


class ActionKind(str, Enum):
    """What an action does."""

    ADD = "add"
    ENABLE = "enable"
    CHANGE = "change"  # a host change outside UFW that rides in the same run (its ``script``)
    NOOP = "noop"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Action:
    """One step of a host's plan; a no-op carries the reason nothing is needed."""

    kind: ActionKind
    reason: str
    rule: UfwRule | None = None
    script: str | None = None  # the command of a CHANGE action

    @property
    def command(self) -> str | None:
        """Return the remote command this action runs, if any."""
        if self.kind is ActionKind.ADD and self.rule is not None:
            return self.rule.command()
        if self.kind is ActionKind.ENABLE:
            return "ufw --force enable"
        if self.kind is ActionKind.CHANGE:
            return self.script
        return None

    @property
    def changes(self) -> bool:
        """Whether the action changes the host."""
        return self.kind in (ActionKind.ADD, ActionKind.ENABLE, ActionKind.CHANGE)


class ParseError(ValueError):
    """Probe output the parser does not understand."""


def desired_rules(ports: Iterable[tuple[int, str, str]], source: str) -> list[UfwRule]:
    """Return the rules for ``(port, proto, comment)`` triples, restricted to ``source``."""
    return [UfwRule(action="allow", port=str(p), proto=proto, source=source, comment=comment)
            for p, proto, comment in ports]


def parse_ports(spec: str) -> list[tuple[int, str]]:
    """Parse a ``--ports`` value such as ``31695/tcp,32720/tcp``."""
    out: list[tuple[int, str]] = []
    for part in spec.split(","):
        part = part.strip()
        number, _, proto = part.partition("/")
        proto = proto or "tcp"
        if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= 65535:
            raise UsageError(f"--ports: {part!r} is not a port number (1–65535), e.g. 31695/tcp")
        if proto not in ("tcp", "udp"):
            raise UsageError(f"--ports: {part!r}: protocol must be tcp or udp")
        if int(number) == 22:
            raise UsageError("--ports: 22 is SSH; the tool never manages the SSH rule through --ports")
        out.append((int(number), proto))
    if len(set(out)) != len(out):
        raise UsageError(f"--ports: {spec!r} lists a port twice")
    return out


def parse_source(value: str) -> str:
    """Check a ``--source`` value: a CIDR, a single address, or the explicit ``any``."""
    if value == ANY:
        return ANY
    try:
        if "%" in value:  # an IPv6 zone ("fe80::%eth0") is no UFW source, and it is free text
            raise ValueError(value)
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise UsageError(f"--source: {value!r} is not a network such as 10.0.0.0/16 (or 'any')") from None
    if str(net.network_address) != value.split("/")[0]:
        raise UsageError(f"--source: {value!r} has host bits set; did you mean {net}?")
    return str(net) if "/" in value else str(net.network_address)


def parse_show_added(text: str) -> tuple[UfwRule, ...]:
    """Parse ``ufw show added`` output into rules, in order.

    ufw prints a comment raw between single quotes, so a comment holding a line break (set by
    someone else: the tool never writes one) continues the rule on the next lines.
    """
    rules: list[UfwRule] = []
    pending = ""
    for raw in text.split("\n"):
        line = f"{pending}\n{raw}" if pending else raw
        if not pending and (not line.strip() or line.strip().startswith(("Added user rules", "WARN: "))
                            or line.strip() == "(None)"):
            continue  # ufw warns on stderr (the probe merges it) about the owner and mode of its own files
        if _open_quote(line):
            pending = line
            continue
        pending = ""
        rules.append(parse_rule_command(line.strip()))
    if pending:
        rules.append(parse_rule_command(pending.strip()))  # unbalanced to the end: a ParseError
    return tuple(rules)


def _open_quote(line: str) -> bool:
    try:
        shlex.split(line)
    except ValueError as e:
        return "closing quotation" in str(e)
    return False


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
    return checked_ports(UfwRule(
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
    ), repr(line))


def checked_ports(rule: UfwRule, where: str) -> UfwRule:
    """Return a parsed ``rule`` if its port specs (destination and source) are sound; else a ParseError."""
    try:
        rule.ports()
        UfwRule(port=rule.sport).ports()
    except ValueError as e:
        raise ParseError(f"bad port in {where}") from e
    return rule


def parse_status(text: str) -> tuple[bool, str | None]:
    """Return (active, default incoming policy) from ``ufw status verbose``."""
    active: bool | None = None
    default: str | None = None
    for line in text.splitlines():
        if line.startswith("Status:") and active is None:  # the header; a rule's comment may hold such a line
            active = line.split(":", 1)[1].strip() == "active"
        elif line.startswith("Default:") and default is None:
            first = line.split(":", 1)[1].split(",")[0].strip()  # "deny (incoming)"
            default = first.split(" ")[0]
    if active is None:
        raise ParseError(f"no 'Status:' line in ufw status output: {text.strip()[:200]!r}")
    return active, default


def plan(desired: Sequence[UfwRule], facts: UfwFacts, *, enable: bool = False,
         ssh_port: int = 22) -> list[Action]:
    """Return what to do on one host so that every ``desired`` rule lets traffic in.

    Existing rules are never removed or reordered. A deny/reject rule that matches all the traffic
    of a wanted allow sits earlier in UFW's order and would shadow it: that is reported as
    blocked, for the operator to decide. One that matches only part of it (a denied port inside an
    allowed network) leaves the rest to the allow, which is added; its reason names the exception.
    A ``ufw route`` rule filters forwarded traffic only: it neither provides nor blocks a wanted
    rule. An inactive UFW is only enabled with ``enable``, and then only after a rule keeps the SSH
    port we are connected on open.
    """
    actions: list[Action] = []
    existing = list(facts.rules)
    for want in desired:
        same = next((r for r in existing if r == want), None)
        if same is not None:
            actions.append(Action(ActionKind.NOOP, f"rule already present: {same.raw or same.command()}", want))
            continue
        denies = [r for r in existing if r.action in ("deny", "reject") and _overlaps(r, want)]
        shadow = next((r for r in denies if r.covers(want)), None)
        if shadow is not None:
            actions.append(Action(ActionKind.BLOCKED, f"an earlier rule would drop this traffic first: "
                                  f"{shadow.raw or shadow.command()} (not changed: remove or reorder it by hand)",
                                  want))
            continue
        broader = next((r for r in existing if r.action in ("allow", "limit") and r.covers(want)), None)
        if broader is not None:
            actions.append(Action(ActionKind.NOOP, f"already allowed by {broader.raw or broader.command()}", want))
            continue
        but = f" (except what earlier rules drop first: {'; '.join(r.raw or r.command() for r in denies)})" \
            if denies else ""
        actions.append(Action(ActionKind.ADD, f"open {want.describe()}{but}", want))
        existing.append(want)
    if not facts.active:
        if not enable:
            actions.append(Action(ActionKind.BLOCKED, "ufw is inactive: rules are not enforced; "
                                  "re-run with --enable to activate it (SSH is allowed first)"))
            return actions
        port = facts.ssh_port or ssh_port
        ssh_rule = UfwRule(action="allow", port=str(port), proto="tcp",
                           comment="keybuzz-fix: keep SSH reachable")
        client = UfwRule(action="allow", port=str(port), proto="tcp", source=facts.ssh_client_ip or ANY)
        keeper = next((r for r in existing if r.action in ("allow", "limit") and r.covers(client)), None)
        if keeper is None:
            actions.insert(0, Action(ActionKind.ADD, f"keep SSH reachable before enabling (port {port})", ssh_rule))
        else:
            actions.insert(0, Action(ActionKind.NOOP, f"SSH port {port} already allowed by "
                                     f"{keeper.raw or keeper.command()}", ssh_rule))
        actions.append(Action(ActionKind.ENABLE, "enable ufw (default policies unchanged)"))
    return actions


def _overlaps(block: UfwRule, want: UfwRule) -> bool:
    if block.route != want.route:
        return False
    if block.direction != want.direction or block.interface and block.interface != want.interface:
        return False
    if block.proto and want.proto and block.proto != want.proto:
        return False
    a, b = block.ports(), want.ports()
    if a is not None and b is not None and not a & b:
        return False
    return _net_overlaps(block.source, want.source)


def _net_covers(outer: str, inner: str) -> bool:
    if outer == ANY:
        return True
    if inner == ANY:
        return False
    try:
        o, i = ipaddress.ip_network(outer, strict=False), ipaddress.ip_network(inner, strict=False)
    except ValueError:
        return False
    return o.version == i.version and i.subnet_of(o)  # type: ignore[arg-type,unused-ignore]


def _net_overlaps(a: str, b: str) -> bool:
    if ANY in (a, b):
        return True
    try:
        x, y = ipaddress.ip_network(a, strict=False), ipaddress.ip_network(b, strict=False)
    except ValueError:
        return False
    return x.version == y.version and x.overlaps(y)  # type: ignore[arg-type,unused-ignore]

