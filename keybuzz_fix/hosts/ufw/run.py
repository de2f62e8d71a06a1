"""A UFW run over many hosts: the rules it wants on every host, and where each host stands (pure code).

:class:`Wanted` is what a run asks of every host (each rule with its purpose and where it was
read); :class:`HostOutcome` is the one per-host type of a run, after planning or after applying,
that the flows and the reports read; :class:`FirewallResult` is the whole run. One host's plan is
:mod:`keybuzz_fix.hosts.ufw.plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from keybuzz_fix.errors import KeybuzzFixError
from keybuzz_fix.hosts.ufw.facts import UfwFacts
from keybuzz_fix.hosts.ufw.plan import Action, ActionKind
from keybuzz_fix.hosts.ufw.rules import UfwRule, desired_rules
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


class HostStatus(str, Enum):
    """Where a host stands in a run."""

    UNCHANGED = "unchanged"  # everything was already in place
    PLANNED = "planned"  # planned (or a dry run): changes are pending
    CHANGED = "changed"  # changes applied and read back
    BLOCKED = "blocked"  # something needs the operator (inactive ufw, shadowing deny rule)
    FAILED = "failed"  # the host could not be worked on
    UNKNOWN = "unknown"  # the answers stopped (connection, time, shell) with a change in flight: read it again


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
        """Whether the host failed, needs the operator or is in an unknown state (each makes the run fail)."""
        return self.status in (HostStatus.FAILED, HostStatus.BLOCKED, HostStatus.UNKNOWN)


@dataclass(frozen=True)
class FirewallResult:
    """What a ``ufw`` or ``overlay`` run did on every host: the flow's result, for the report and the exit code."""

    command: str
    outcomes: tuple[HostOutcome, ...]
    dry_run: bool
    accepted: tuple[tuple[str, str], ...] = ()  # (host, key): host keys recorded under --accept-new-host-keys
    known_hosts: Path | None = None  # where they were recorded
    wanted: Wanted | None = None  # the rules the run wanted on every host, and why
    retry_file: Path | None = None  # the failed hosts' names, for --limit @FILE

    @property
    def failed_hosts(self) -> list[str]:
        """Return the names of the hosts that failed or need the operator, in file order."""
        return [o.host.hostname for o in self.outcomes if o.failed]

    @property
    def failed(self) -> bool:
        """Whether a host failed or needs the operator."""
        return any(o.failed for o in self.outcomes)

    @property
    def changes_pending(self) -> bool:
        """Whether a host has changes planned and not made (a dry run)."""
        return any(o.status is HostStatus.PLANNED for o in self.outcomes)


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
