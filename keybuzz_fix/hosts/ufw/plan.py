"""The plan for one host's UFW (pure code).

:func:`plan_rules` never removes or reorders a rule, never changes a default policy, and never
enables UFW without first making sure the SSH port we came in on stays open. A plan is a list of
:class:`Action`; a no-op says why nothing is needed. What a run wants on every host and where each
host stands in it is :mod:`keybuzz_fix.hosts.ufw.run`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.ufw.facts import UfwFacts
from keybuzz_fix.hosts.ufw.rules import ANY, UfwRule
from keybuzz_fix.hosts.ufw.ruleset import Ruleset, rule_families
from keybuzz_fix.hosts.ufw.verdict import DecidedBy, Decision, Flow, Judgement, Reach, Verdict, judge, judge_rule


class ActionKind(str, Enum):
    """What an action does."""

    ADD = "add"
    ENABLE = "enable"
    CHANGE = "change"  # a host change outside UFW that rides in the same run (its ``script``)
    NOOP = "noop"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Action:
    """One step of a host's plan; a no-op carries the reason nothing is needed.

    ``first`` marks an added rule that goes at the top of ufw's lists (``ufw prepend``, from
    ``--insert-first``) instead of the end.
    """

    kind: ActionKind
    reason: str
    rule: UfwRule | None = None
    script: str | None = None  # the command of a CHANGE action
    first: bool = False

    @property
    def command(self) -> str | None:
        """Return the remote command this action runs, if any."""
        if self.kind is ActionKind.ADD and self.rule is not None:
            cmd = self.rule.command()
            return "ufw prepend " + cmd.removeprefix("ufw ") if self.first else cmd
        if self.kind is ActionKind.ENABLE:
            return "ufw --force enable"
        if self.kind is ActionKind.CHANGE:
            return self.script
        return None

    @property
    def changes(self) -> bool:
        """Whether the action changes the host."""
        return self.kind in (ActionKind.ADD, ActionKind.ENABLE, ActionKind.CHANGE)


@dataclass(frozen=True)
class Arrival:
    """How wanted traffic reaches a host: the address it is sent to, and the interface that carries it.

    ``address`` is the host's IP_PRIVEE; ``interface`` the one that holds it, when the probe saw it.
    Traffic from a network that holds ``address`` (the load balancers, the other nodes) arrives
    there; traffic from elsewhere (pods, Services, ``any``) is judged on every interface.
    """

    address: str | None = None
    interface: str | None = None

    def of(self, want: UfwRule) -> tuple[str | None, str | None]:
        """Return (destination address, interface) for the traffic of ``want``; ``None`` where not known."""
        if self.address is None or want.source == ANY:
            return None, None
        try:
            inside = ipaddress.ip_address(self.address) in ipaddress.ip_network(want.source, strict=False)
        except ValueError:
            return None, None
        return (self.address, self.interface) if inside else (None, None)


def plan_rules(
    desired: Sequence[UfwRule],
    facts: UfwFacts,
    *,
    enable: bool = False,
    ssh_port: int = 22,
    arrival: Arrival | None = None,
    insert_first: bool = False,
) -> list[Action]:
    """Return what to do on one host so that the traffic of every ``desired`` rule is let in.

    Each wanted rule's traffic is judged by the verdict model
    (:mod:`keybuzz_fix.hosts.ufw.verdict`), as UFW decides it: per family, first match, ``limit``
    is not open, the default policy when no rule matches. Already let in: a no-op naming the rule or
    policy that lets it in. Else the rule is added (appended, or with ``insert_first`` prepended as
    ``ufw prepend`` does) when the model says that lets it in; when an earlier rule would still
    decide first, the traffic is blocked, naming that rule, for the operator to decide. Existing
    rules are never removed, reordered or rewritten (ufw rewrites a rule of the same match in place:
    that is blocked too). An inactive UFW is judged as it would be once enabled, and only enabled
    with ``enable``, after a rule keeps the SSH port we are connected on open. Without ``arrival``,
    traffic is taken to arrive at the address the SSH connection came in on.
    """
    actions: list[Action] = []
    ruleset = facts.ruleset(active=True)
    where = arrival or Arrival(facts.ssh_server_ip, facts.interface_of(facts.ssh_server_ip))
    for want in desired:
        action, ruleset = _plan_one(ruleset, want, where, insert_first)
        actions.append(action)
    if not facts.active:
        if not enable:
            actions.append(
                Action(
                    ActionKind.BLOCKED,
                    "ufw is inactive: rules are not enforced"
                    + hint("--enable", "; re-run with --enable to activate it (SSH is allowed first)"),
                )
            )
            return actions
        actions.insert(0, _keep_ssh(ruleset, facts, facts.ssh_port or ssh_port, insert_first))
        actions.append(Action(ActionKind.ENABLE, "enable ufw (default policies unchanged)"))
    return actions


def judge_wanted(ruleset: Ruleset, want: UfwRule, arrival: Arrival | None = None) -> tuple[Judgement, ...]:
    """Judge the traffic of a wanted rule on one host, per family, where it arrives (see :class:`Arrival`)."""
    dest, interface = (arrival or Arrival()).of(want)
    if dest is None:
        return judge_rule(ruleset, want, interface=interface)
    fam = 6 if ":" in dest else 4
    return tuple(
        j
        for f in rule_families(want)
        for j in judge_rule(ruleset, want, dest=dest if f == fam else ANY, interface=interface)
        if j.family == f
    )


def is_open(judgements: Sequence[Judgement]) -> bool:
    """Whether every packet of the traffic is let in (``limit`` throttles it: not open)."""
    return all(j.reach is Reach.ALLOWED for j in judgements)


def why_open(judgements: Sequence[Judgement]) -> str:
    """Name the rules or policies that let the traffic in, per family."""
    return "; ".join(f"IPv{j.family} by {', '.join(_by(d) for d in j.decisions())}" for j in judgements)


def why_not(judgements: Sequence[Judgement]) -> str:
    """Name what keeps part of the traffic out (deny, reject, limit), per family, and for which sources."""
    parts = []
    for j in judgements:
        for piece in j.not_allowed():
            what = "throttled by" if piece.decision.verdict is Verdict.LIMIT else f"{piece.decision.verdict.value} by"
            narrow = f" ({', '.join(piece.only)})" if piece.only else ""
            parts.append(f"IPv{j.family} from {', '.join(piece.sources)}{narrow}: {what} {_by(piece.decision)}")
    return "; ".join(parts)


def _by(d: Decision) -> str:
    if d.by is DecidedBy.RULE and d.rule is not None:
        return (
            f"rule {d.position} of {'user.rules' if d.family == 4 else 'user6.rules'}: {d.rule.raw or d.rule.command()}"
        )
    if d.by is DecidedBy.POLICY and d.verdict is Verdict.ALLOW:
        return f'the {d.why} (DEFAULT_INPUT_POLICY="ACCEPT" in /etc/default/ufw)'
    return f"the {d.why}" if d.by is DecidedBy.POLICY else d.why


_LIMIT = "limit lets a source only 5 new connections in 30 s: not open for a load balancer"


def _plan_one(ruleset: Ruleset, want: UfwRule, where: Arrival, insert_first: bool) -> tuple[Action, Ruleset]:
    """Plan one wanted rule against the rules so far; return the action and the rules after it."""
    try:
        now = judge_wanted(ruleset, want, where)
        if is_open(now):
            present = any(want in ruleset.rules(j.family) for j in now)
            head = f"rule already present: {want.command()}; " if present else ""
            return Action(ActionKind.NOOP, f"{head}already open: {why_open(now)}", want), ruleset
        added = ruleset.add(want, position=-1 if insert_first else 0)
        after = judge_wanted(added.ruleset, want, where)
    except ValueError as e:  # an unknown application profile, a family ufw does not handle
        return Action(ActionKind.BLOCKED, f"cannot judge {want.describe()}: {e}", want), ruleset
    limited = _LIMIT if any(p.decision.verdict is Verdict.LIMIT for j in after for p in j.not_allowed()) else ""
    if added.replaced:
        return (
            Action(
                ActionKind.BLOCKED,
                f"ufw would rewrite an existing rule in place to add this one: "
                f"{'; '.join(r.raw or r.command() for r in added.replaced)} (not changed: edit it by hand)",
                want,
            ),
            ruleset,
        )
    if len(added.skipped) == len(rule_families(want)) or added.ruleset == ruleset:
        reason = f"rule present but not reached: {why_not(after)}"
        if any(p.decision.verdict is Verdict.ALLOW for j in after for p in j.pieces):
            return Action(
                ActionKind.NOOP, f"rule already present: {want.command()}; except {why_not(after)}", want
            ), ruleset
        return Action(ActionKind.BLOCKED, _blocked(reason, limited, insert_first, skipped=True), want), ruleset
    if is_open(after):
        where_to = " at the top (ufw prepend)" if insert_first else ""
        return Action(ActionKind.ADD, f"open {want.describe()}{where_to}", want, first=insert_first), added.ruleset
    if any(p.decision.verdict is Verdict.ALLOW and p.decision.rule == want for j in after for p in j.pieces):
        return (
            Action(
                ActionKind.ADD,
                f"open {want.describe()} (except what earlier rules decide first: {why_not(after)})",
                want,
                first=insert_first,
            ),
            added.ruleset,
        )
    return Action(
        ActionKind.BLOCKED, _blocked(f"an earlier rule decides first: {why_not(after)}", limited, insert_first), want
    ), ruleset


def _blocked(reason: str, limited: str, insert_first: bool, *, skipped: bool = False) -> str:
    out = reason + (f" ({limited})" if limited else "")
    if skipped:
        return out + " (not changed: ufw skips a rule already present, even when prepending; move it by hand)"
    if insert_first:
        return out + " (not changed: remove or change that rule by hand)"
    return out + hint(
        "--insert-first",
        " (not changed: re-run with --insert-first to put the allow rule above it, or change that rule by hand)",
        " (not changed: change that rule by hand)",
    )


def _keep_ssh(ruleset: Ruleset, facts: UfwFacts, port: int, insert_first: bool) -> Action:
    """Keep the SSH port we came in on reachable once ufw is enabled (``limit`` does: SSH opens few connections)."""
    ssh_rule = UfwRule(action="allow", port=str(port), proto="tcp", comment="keybuzz-fix: keep SSH reachable")
    client = facts.ssh_client_ip
    fam = 6 if client and ":" in client else 4
    flow = Flow(fam, str(port), "tcp", source=client or ANY)
    try:
        now = judge(ruleset, flow)
        if now.reach in (Reach.ALLOWED, Reach.LIMITED):
            keeper = ", ".join(_by(d) for d in now.decisions())
            return Action(ActionKind.NOOP, f"SSH port {port} already allowed by {keeper}", ssh_rule)
        after = judge(ruleset.add(ssh_rule, position=-1 if insert_first else 0).ruleset, flow)
    except ValueError as e:
        return Action(ActionKind.BLOCKED, f"cannot tell whether SSH stays reachable once ufw is enabled: {e}", ssh_rule)
    if after.reach is not Reach.ALLOWED:
        return Action(
            ActionKind.BLOCKED,
            f"enabling ufw would cut SSH (port {port}) even with an allow rule: {why_not((after,))}",
            ssh_rule,
        )
    return Action(ActionKind.ADD, f"keep SSH reachable before enabling (port {port})", ssh_rule, first=insert_first)
