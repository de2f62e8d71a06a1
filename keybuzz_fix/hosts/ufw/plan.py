"""The plan for one host's UFW, and where each host stands in a run (pure code).

:func:`plan_rules` never removes or reorders a rule, never changes a default policy, and never
enables UFW without first making sure the SSH port we came in on stays open. A plan is a list of
:class:`Action`; a no-op says why nothing is needed. :class:`HostOutcome` is the one per-host type
of a run, after planning or after applying, that the flows and the reports read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from keybuzz_fix.errors import KeybuzzFixError
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.ufw.facts import UfwFacts
from keybuzz_fix.hosts.ufw.rules import ANY, UfwRule, desired_rules
from keybuzz_fix.inventory import Host


@dataclass(frozen=True)
class WantedRule:
    """A rule a run wants on every host, why it is needed, and where that was read (a cluster object, a config key)."""

    rule: UfwRule
    purpose: str
    read_from: str


@dataclass(frozen=True)
class Wanted:
    """The rules a run wants on every host: each with its purpose, how they were found, and notes for the operator.

    ``read_from`` is ``cluster`` (read from the cluster's objects), ``config`` (the configuration) or
    ``--ports`` (given on the command line).
    """

    rules: tuple[WantedRule, ...]
    read_from: str = "config"
    notes: tuple[str, ...] = ()

    @property
    def ufw_rules(self) -> list[UfwRule]:
        """The rules themselves, in order."""
        return [w.rule for w in self.rules]

    @classmethod
    def of(
        cls,
        ports: Iterable[tuple[int, str, str, str, str]],
        source: str,
        read_from: str,
        notes: Sequence[str] = (),
    ) -> Wanted:
        """Build from ``(port, proto, comment, purpose, read from)``, each allowed from ``source``."""
        rules = []
        for port, proto, comment, purpose, where in ports:
            (rule,) = desired_rules([(port, proto, comment)], source)
            rules.append(WantedRule(rule, purpose, where))
        return cls(tuple(rules), read_from, tuple(notes))


def ports_given(ports: Sequence[tuple[int, str]], source: str) -> Wanted:
    """Return the rules for ``--ports``: exactly those, from ``source``."""
    return Wanted.of(
        [(p, proto, f"keybuzz-fix: port {p}/{proto}", "given on the command line", "--ports") for p, proto in ports],
        source,
        "--ports",
    )


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


def plan_rules(
    desired: Sequence[UfwRule], facts: UfwFacts, *, enable: bool = False, ssh_port: int = 22
) -> list[Action]:
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
        denies = [r for r in existing if r.action in ("deny", "reject") and r.overlaps(want)]
        shadow = next((r for r in denies if r.covers(want)), None)
        if shadow is not None:
            actions.append(
                Action(
                    ActionKind.BLOCKED,
                    f"an earlier rule would drop this traffic first: "
                    f"{shadow.raw or shadow.command()} (not changed: remove or reorder it by hand)",
                    want,
                )
            )
            continue
        broader = next((r for r in existing if r.action in ("allow", "limit") and r.covers(want)), None)
        if broader is not None:
            actions.append(Action(ActionKind.NOOP, f"already allowed by {broader.raw or broader.command()}", want))
            continue
        but = (
            f" (except what earlier rules drop first: {'; '.join(r.raw or r.command() for r in denies)})"
            if denies
            else ""
        )
        actions.append(Action(ActionKind.ADD, f"open {want.describe()}{but}", want))
        existing.append(want)
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
        port = facts.ssh_port or ssh_port
        ssh_rule = UfwRule(action="allow", port=str(port), proto="tcp", comment="keybuzz-fix: keep SSH reachable")
        client = UfwRule(action="allow", port=str(port), proto="tcp", source=facts.ssh_client_ip or ANY)
        keeper = next((r for r in existing if r.action in ("allow", "limit") and r.covers(client)), None)
        if keeper is None:
            actions.insert(0, Action(ActionKind.ADD, f"keep SSH reachable before enabling (port {port})", ssh_rule))
        else:
            actions.insert(
                0,
                Action(
                    ActionKind.NOOP, f"SSH port {port} already allowed by {keeper.raw or keeper.command()}", ssh_rule
                ),
            )
        actions.append(Action(ActionKind.ENABLE, "enable ufw (default policies unchanged)"))
    return actions


class HostStatus(str, Enum):
    """Where a host stands in a run."""

    UNCHANGED = "unchanged"  # everything was already in place
    PLANNED = "planned"  # planned (or a dry run): changes are pending
    CHANGED = "changed"  # changes applied and read back
    BLOCKED = "blocked"  # something needs the operator (inactive ufw, shadowing deny rule)
    FAILED = "failed"  # the host could not be worked on


@dataclass(frozen=True)
class HostOutcome:
    """One host of a UFW run, after planning or after applying: its status, facts, plan and what ran."""

    host: Host
    status: HostStatus
    facts: UfwFacts | None = None  # None: the host could not be read
    actions: tuple[Action, ...] = ()
    applied: tuple[str, ...] | None = None  # the commands that ran; None until the apply step reached the host
    message: str = ""  # why the host is blocked
    error: KeybuzzFixError | None = None  # what stopped the work on the host
    seconds: float = 0.0

    @classmethod
    def planned(cls, host: Host, facts: UfwFacts, actions: Iterable[Action]) -> HostOutcome:
        """Return a host's outcome once it is planned: blocked, planned or unchanged."""
        steps = tuple(actions)
        blocked = [a.reason for a in steps if a.kind is ActionKind.BLOCKED]
        if blocked:
            status = HostStatus.BLOCKED
        else:
            status = HostStatus.PLANNED if any(a.changes for a in steps) else HostStatus.UNCHANGED
        return cls(host, status, facts, steps, message="; ".join(blocked))

    @property
    def ok(self) -> bool:
        """Whether the work on the host finished without error."""
        return self.error is None

    @property
    def changes(self) -> list[Action]:
        """Return the actions that change the host."""
        return [a for a in self.actions if a.changes]

    @property
    def blocked(self) -> list[Action]:
        """Return the actions that need the operator."""
        return [a for a in self.actions if a.kind is ActionKind.BLOCKED]

    @property
    def failed(self) -> bool:
        """Whether the host failed or needs the operator (either makes the run fail)."""
        return self.status in (HostStatus.FAILED, HostStatus.BLOCKED)


@dataclass(frozen=True)
class FirewallResult:
    """What a ``ufw`` or ``overlay`` run did on every host: the flow's result, for the report and the exit code."""

    command: str
    outcomes: tuple[HostOutcome, ...]
    dry_run: bool
    accepted: tuple[tuple[str, str], ...] = ()  # (host, key): host keys recorded under --accept-new-host-keys
    known_hosts: Path | None = None  # where they were recorded
    wanted: Wanted | None = None  # the rules the run wanted on every host, and why

    @property
    def failed(self) -> bool:
        """Whether a host failed or needs the operator."""
        return any(o.failed for o in self.outcomes)


def tally(outcomes: Sequence[HostOutcome]) -> dict[str, int]:
    """Count hosts by status."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status.value] = counts.get(o.status.value, 0) + 1
    return counts


@dataclass(frozen=True)
class HostExtra:
    """Host changes outside UFW that ride in the same run: a probe and a pure plan of its output.

    The probe comes first in the script (the UFW probe may stop early) and prints only sections of
    its own names; ``plan`` reads those from the whole output.
    """

    probe: str
    plan: Callable[[str], list[Action]]
