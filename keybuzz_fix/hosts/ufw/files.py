"""UFW's own state, read from its files instead of asking ``ufw`` (pure code).

Every ``ufw`` run is a Python start-up on the host, and the probe used to need two of them
(``ufw status verbose`` and ``ufw show added``) before and one after the changes. Both commands
only read three files and the kernel's chains: the rules from ``/etc/ufw/user.rules`` and
``user6.rules`` (one ``### tuple ###`` line per rule), the default policies from
``/etc/default/ufw``, and "active" from whether the ``ufw-user-*`` chains are loaded. This module
reads the same sources the same way ufw 0.36 does, so a probe costs a few ``cat`` and three
``iptables -L``. The parsed rules are the :class:`~keybuzz_fix.hosts.ufw.rules.UfwRule` values
``ufw show added`` gives; a lab test holds the two readers equal on real ufw.
"""

from __future__ import annotations

import re
from dataclasses import replace

from keybuzz_fix.hosts.ufw.rules import ANY, ParseError, UfwRule, checked_ports

RULES_FILE = "/etc/ufw/user.rules"
RULES6_FILE = "/etc/ufw/user6.rules"
DEFAULTS_FILE = "/etc/default/ufw"
CHAINS = ("input", "output", "forward")  # the order ufw status checks them in

_TUPLE = re.compile(r"^### tuple ###\s*")
_SETTING = re.compile(r'^\w+="?\w+"?')  # ufw's own pattern for a line of its defaults file
_ANY_NET = ("0.0.0.0/0", "::/0")
_POLICY = {"accept": "allow", "reject": "reject", "drop": "deny"}


def parse_defaults(text: str) -> dict[str, str]:
    """Return the settings of ``/etc/default/ufw`` as ufw reads them (lower-case keys and values)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if _SETTING.search(line):
            key, value = line.strip().split("=")[:2]
            out[key.lower()] = value.lower().strip("\"'")
    return out


def default_incoming(defaults: dict[str, str]) -> str | None:
    """Return the incoming policy in ``ufw status verbose``'s words (allow, deny, reject)."""
    value = defaults.get("default_input_policy")
    return _POLICY.get(value, "deny") if value is not None else None


def uses_ipv6(defaults: dict[str, str], kernel_ipv6: bool) -> bool:
    """Whether ufw reads user6.rules: IPV6=yes and a kernel with IPv6, as ufw decides it."""
    return defaults.get("ipv6") == "yes" and kernel_ipv6


def chains_active(lines: list[str]) -> bool:
    """Read ``<chain> <exit status>`` lines of ``iptables -n -L ufw-user-<chain>``, as ufw status does.

    A missing chain (exit 1) means the firewall is not loaded: inactive. Any other failure is an
    error, not a guess.
    """
    seen: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] in CHAINS and parts[1].isascii() and parts[1].isdigit():
            seen[parts[0]] = int(parts[1])
    for chain in CHAINS:
        if chain not in seen:
            raise ParseError(f"no answer from iptables -L ufw-user-{chain} (probe cut short)")
        if seen[chain] == 1:
            return False
        if seen[chain] != 0:
            raise ParseError(f"iptables -n -L ufw-user-{chain} failed (exit {seen[chain]})")
    return True


def parse_user_rules(text: str, where: str = RULES_FILE) -> list[UfwRule]:
    """Parse the ``### tuple ###`` lines of one user rules file, in order.

    ufw skips a malformed tuple with a warning and loads whatever iptables lines follow it; a
    rule we cannot read might be a deny that shadows ours, so it is an error naming the line.
    """
    rules: list[UfwRule] = []
    for number, line in enumerate(text.split("\n"), 1):
        if _TUPLE.match(line):
            try:
                rules.append(parse_tuple(_TUPLE.sub("", line)))
            except ParseError as e:
                raise ParseError(f"{where}:{number}: {e}") from None
    return rules


def parse_tuple(tupl: str) -> UfwRule:
    """Parse one tuple: ``action proto dport dst sport src [dapp sapp] [direction[_iface]] [comment=hex]``."""
    comment = ""
    if " comment=" in tupl:
        tupl, _, hexed = tupl.partition(" comment=")
        try:
            comment = bytes.fromhex(hexed.strip()).decode("utf-8", "replace")
        except ValueError:
            raise ParseError(f"comment is not hex: {hexed.strip()[:40]!r}") from None
    fields = tupl.split()
    if not 6 <= len(fields) <= 9:
        raise ParseError(f"malformed rule tuple ({len(fields)} fields): {tupl.strip()[:120]!r}")
    action, proto, dport, dst, sport, src = fields[:6]
    route = ":" in action
    if route:
        prefix, _, action = action.partition(":")
        if prefix != "route":
            raise ParseError(f"unknown rule kind {prefix!r}")
    action = action.split("_")[0]  # allow_log, deny_log-all: the log type does not change what passes
    if action not in ("allow", "deny", "reject", "limit"):
        raise ParseError(f"unknown action {action!r}")
    direction, interface, interface_out = "in", None, None
    if len(fields) in (7, 9):
        direction, interface, interface_out = _ifaces(fields[-1])
    dapp = sapp = None
    if len(fields) >= 8:
        dapp = fields[6].replace("%20", " ") if fields[6] != "-" else None
        sapp = fields[7].replace("%20", " ") if fields[7] != "-" else None
    rule = UfwRule(
        action=action,
        port=None if dapp or dport == "any" else dport,
        proto=None if dapp or sapp or proto == "any" else proto,
        source=ANY if src in _ANY_NET else src,
        dest=ANY if dst in _ANY_NET else dst,
        interface=interface,
        direction=direction,
        app=dapp,
        route=route,
        sport=None if sapp or sport == "any" else sport,
        source_app=sapp,
        interface_out=interface_out,
        comment=comment,
        app_ports=(proto, dport, sport) if dapp or sapp else None,
    )
    checked_ports(rule, f"tuple {tupl.strip()[:120]!r}")
    return replace(rule, raw=rule.command())


def merge(rules4: list[UfwRule], rules6: list[UfwRule]) -> tuple[UfwRule, ...]:
    """Join the v4 and v6 rules the way ``ufw show added`` does: one line per distinct command."""
    seen: set[str] = set()
    out: list[UfwRule] = []
    for rule in rules4 + rules6:
        if rule.raw not in seen:
            seen.add(rule.raw)
            out.append(rule)
    return tuple(out)


def _ifaces(token: str) -> tuple[str, str | None, str | None]:
    """Split ``in``, ``out_eth0`` or ``in_eth0!out_eth1`` into (direction, interface, outgoing interface)."""
    direction, _, rest = token.partition("_")
    if direction not in ("in", "out"):
        raise ParseError(f"unknown direction {token!r}")
    if not rest:
        return direction, None, None
    if "!" in rest:  # a route rule with both interfaces: in_IF1!out_IF2
        rest, _, out = rest.partition("!")
        return direction, rest, out.partition("_")[2] or None
    return direction, rest, None
