"""The rules UFW judges packets by on one host, and what ``ufw <rule>`` does to them (pure code).

A :class:`Ruleset` is what ufw 0.36 loads (``src/backend_iptables.py``, ``src/parser.py``,
``/lib/ufw/ufw-init-functions``): the user rules of user.rules (IPv4) and user6.rules (IPv6) in
file order, the default incoming and routed policies of ``/etc/default/ufw``, whether ufw's chains
are loaded, ``IPV6=`` and the application profiles of ``/etc/ufw/applications.d``.

- **Two families, two tables.** ``ufw allow …`` writes a rule to user.rules when its addresses are
  IPv4, to user6.rules when they are IPv6, and to both when source and destination are ``any``
  (``parser.py``: ``iptype`` v4/v6/both): :func:`rule_families`.
- **Adding a rule** (``backend_iptables.set_rule``): :meth:`Ruleset.add` returns the rules
  ``ufw <rule>``, ``ufw prepend`` or ``ufw insert N`` would leave, as an :class:`Added`.

How these rules decide a packet is :mod:`keybuzz_fix.hosts.ufw.verdict`; the files are parsed
by :mod:`keybuzz_fix.hosts.ufw.files`, the profiles by :mod:`keybuzz_fix.hosts.ufw.apps`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from keybuzz_fix.hosts.ufw import files as ufw_files
from keybuzz_fix.hosts.ufw import match as m
from keybuzz_fix.hosts.ufw.apps import AppProfile, find_profile, parse_app_profiles
from keybuzz_fix.hosts.ufw.rules import ANY, UfwRule

POLICIES = ("allow", "deny", "reject")  # ufw default <policy> incoming|routed


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
    def from_files(
        cls,
        user_rules: str,
        user6_rules: str | None,
        defaults: str,
        *,
        active: bool,
        applications: Mapping[str, str] | None = None,
        kernel_ipv6: bool = True,
    ) -> Ruleset:
        """Build from the text of user.rules, user6.rules, /etc/default/ufw and applications.d files (name → text).

        ``active`` is whether ufw's chains are loaded (:func:`keybuzz_fix.hosts.ufw.files.chains_active`).
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

    def profile(self, name: str) -> AppProfile:
        """Find a profile as ufw does (the exact name, else the one equal but for case); else UnknownProfile."""
        return find_profile(self.profiles, name)

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
                if not 0 <= at < len(rules):  # ufw inserts before an existing rule, never past the end
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
    fams = {m.family_of(a) for a in (rule.source, rule.dest) if a != ANY}
    if len(fams) > 1:
        raise ValueError(f"mixed IP versions for 'from' and 'to' in {rule.command()}")
    return (fams.pop(),) if fams else (4, 6)


def _same_match(existing: UfwRule, rule: UfwRule) -> bool:
    """Whether two rules match the same packets as ufw compares them (``UFWRule.match``: all but action)."""
    return replace(existing, action=rule.action) == rule


def _policy(value: str | None) -> str:
    """``DEFAULT_*_POLICY`` (ACCEPT, DROP, REJECT; lower-cased by the parser) in ``ufw default`` words."""
    return {"accept": "allow", "reject": "reject"}.get(value or "drop", "deny")
