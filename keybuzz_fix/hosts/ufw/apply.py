"""Apply UFW plans over SSH: observe → plan → (confirm) → apply → read back, on every host at once.

Shared by ``ufw`` (ingress NodePorts on the workers) and ``overlay`` (VXLAN on every K3s node):
they differ in the rules they want, and ``overlay`` may add a :class:`HostExtra` (a probe and a
plan for a change outside UFW). One SSH connection per host serves the probe, the changes and the
read-back; the changes and the read-back go in a single round trip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from keybuzz_fix import storage as state
from keybuzz_fix.errors import HostError, HostUnreachable, MissingTool, RemoteCommandError
from keybuzz_fix.hosts.parallel import Outcome, raise_open_files_limit, run_all
from keybuzz_fix.hosts.ssh import AcceptedKeys, Session, SshOptions, open_session
from keybuzz_fix.hosts.ufw import facts as ufw_probe
from keybuzz_fix.hosts.ufw import rules as firewall
from keybuzz_fix.hosts.ufw.rules import Action, ActionKind, UfwFacts, UfwRule
from keybuzz_fix.inventory import Host

APPLY_MARK = "@@keybuzz-fix-apply@@"
_APPLY_LINE = re.compile(rf"^{re.escape(APPLY_MARK)} ([0-9]+) ([0-9]+)$")


class Status(str, Enum):
    """How a host ended."""

    UNCHANGED = "unchanged"  # everything was already in place
    PLANNED = "planned"  # dry run: changes are pending
    CHANGED = "changed"  # changes applied and read back
    BLOCKED = "blocked"  # something needs the operator (inactive ufw, shadowing deny rule)
    FAILED = "failed"  # the host could not be worked on


@dataclass(frozen=True)
class HostExtra:
    """Host changes outside UFW that ride in the same run: a probe and a pure plan of its output.

    The probe comes first in the script (the UFW probe may stop early) and prints only sections
    headed ``PROBE_MARK <name>`` with names of its own; ``plan`` reads those from the whole output.
    """

    probe: str
    plan: Callable[[str], list[Action]]


@dataclass(frozen=True)
class HostPlan:
    """One host's facts and plan."""

    host: Host
    facts: UfwFacts
    actions: tuple[Action, ...]

    @property
    def changes(self) -> list[Action]:
        """Return the actions that change the host."""
        return [a for a in self.actions if a.changes]

    @property
    def blocked(self) -> list[Action]:
        """Return the actions that need the operator."""
        return [a for a in self.actions if a.kind is ActionKind.BLOCKED]


@dataclass(frozen=True)
class HostResult:
    """The end state of one host, for the summary."""

    host: Host
    status: Status
    actions: tuple[Action, ...] = ()
    applied: tuple[str, ...] = ()
    message: str = ""


@dataclass
class FirewallRun:
    """A two-phase run over many hosts; sessions stay open between planning and applying."""

    hosts: Sequence[Host]
    desired: Callable[[Host], list[UfwRule]]
    ssh: SshOptions
    command: str = "ufw"
    enable: bool = False
    concurrency: int = 16
    extra: HostExtra | None = None
    accepted: AcceptedKeys = field(default_factory=AcceptedKeys)
    _sessions: dict[str, Session] = field(default_factory=dict)

    def plan(self, console: object | None = None) -> list[Outcome[HostPlan]]:
        """Connect to every host, read its UFW facts and plan.

        Only the hosts with changes keep their connection for the apply: the others are closed as
        soon as their plan is made, so a mostly converged fleet holds about ``concurrency``
        connections at a time, not one per host.
        """
        raise_open_files_limit(3 * len(self.hosts) + 64)  # per host: its socket, and its shell's wake-up pipe
        return run_all(self.hosts, self._plan_host, concurrency=self.concurrency, console=console, label="reading ufw")  # type: ignore[arg-type]

    def apply(self, plans: Sequence[HostPlan], console: object | None = None) -> list[Outcome[HostResult]]:
        """Apply each host's changes and read the result back."""
        by_name = {p.host.hostname: p for p in plans}
        return run_all(
            [p.host for p in plans],
            lambda h: self._apply_host(by_name[h.hostname]),
            concurrency=self.concurrency,
            console=console,  # type: ignore[arg-type]
            label="applying",
        )

    def close(self) -> None:
        """Close every session."""
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()

    def _release(self, host: Host) -> None:
        s = self._sessions.pop(host.hostname, None)
        if s is not None:
            s.close()

    def _session(self, host: Host) -> Session:
        s = self._sessions.get(host.hostname)
        if s is None:
            s = open_session(host, self.ssh, self.accepted)
            self._sessions[host.hostname] = s
        return s

    def _probe_script(self, *, status: bool = True) -> str:
        return (self.extra.probe + "; " if self.extra else "") + ufw_probe.probe_script(status=status)

    def _actions(self, host: Host, facts: UfwFacts, stdout: str) -> list[Action]:
        actions = firewall.plan(self.desired(host), facts, enable=self.enable, ssh_port=facts.ssh_port or 22)
        return actions + (self.extra.plan(stdout) if self.extra else [])

    def _plan_host(self, host: Host) -> HostPlan:
        try:
            plan = self._observe(host)
        except BaseException:
            self._release(host)
            raise
        if not plan.changes:
            self._release(host)
        return plan

    def _observe(self, host: Host) -> HostPlan:
        session = self._session(host)
        stdout = session.run(self._probe_script()).stdout
        facts = _parse(host, stdout)
        if not facts.installed:
            raise MissingTool(host.hostname, "ufw is not installed (apt-get install ufw)")
        return HostPlan(host, facts, tuple(self._actions(host, facts, stdout)))

    def _apply_host(self, plan: HostPlan) -> HostResult:
        host = plan.host
        commands = [a.command for a in plan.changes if a.command]
        if not commands:
            status = Status.BLOCKED if plan.blocked else Status.UNCHANGED
            return HostResult(host, status, plan.actions, (), _blocked_message(plan.blocked))
        session = self._session(host)
        try:
            enabling = any(a.kind is ActionKind.ENABLE for a in plan.changes)
            result = session.run(apply_script(commands) + "; " + self._probe_script(status=enabling), check=False)
        except (HostUnreachable, RemoteCommandError) as e:
            raise self._cut_short(host, commands, e) from e
        ran, failure = parse_apply(result.stdout, commands)
        for cmd in ran:
            state.audit(self.command, host.hostname, cmd, "ok", address=host.private_ip)
        if failure is not None:
            cmd, output = failure
            state.audit(self.command, host.hostname, cmd, "failed", address=host.private_ip, output=output[-500:])
            raise RemoteCommandError(host.hostname, cmd, 1, output or "failed")
        after = _parse(host, result.stdout, known=plan.facts)
        again = self._actions(host, after, result.stdout)
        left = [a for a in again if a.changes]
        if left:
            raise HostError(host.hostname, "read-back after apply still lacks: " + "; ".join(a.reason for a in left))
        blocked = [a for a in again if a.kind is ActionKind.BLOCKED]
        status = Status.BLOCKED if blocked else Status.CHANGED
        return HostResult(host, status, plan.actions, tuple(ran), _blocked_message(blocked))

    def _cut_short(self, host: Host, commands: Sequence[str], error: HostError) -> HostError:
        """Audit what ran before the connection dropped or the time ran out; say it in the host's error."""
        ran = parse_apply(error.partial, commands)[0]
        for cmd in ran:
            state.audit(self.command, host.hostname, cmd, "ok", address=host.private_ip)
        rest = list(commands[len(ran) :])
        if rest:  # it was running: ufw may or may not have finished it
            state.audit(self.command, host.hostname, rest[0], "unknown", address=host.private_ip, error=error.problem)
        what = "connection lost" if isinstance(error, HostUnreachable) else "no answer in time (--timeout)"
        done = f"{len(ran)} of {len(commands)} change(s) done" + (f" ({'; '.join(ran)})" if ran else "")
        unknown = f"; unknown whether this one finished: {rest[0]}" if rest else ""
        problem = f"{what} while applying: {done}{unknown}; re-run to converge"
        if isinstance(error, HostUnreachable):
            return HostUnreachable(host.hostname, problem)
        return RemoteCommandError(host.hostname, rest[0] if rest else "read-back", None, problem)


def apply_script(commands: Sequence[str]) -> str:
    """Return a shell script that runs ``commands`` in order and stops at the first failure.

    Each command reports ``APPLY_MARK <index> <exit status>`` followed by its output, so the
    caller knows exactly which ones ran even when the connection drops half-way.
    """
    lines = ["kbf_failed=0"]
    for i, cmd in enumerate(commands):
        lines.append(
            f"if [ $kbf_failed = 0 ]; then kbf_out=$(LC_ALL=C {cmd} 2>&1); kbf_rc=$?; "
            f'echo "{APPLY_MARK} {i} $kbf_rc"; printf \'%s\\n\' "$kbf_out"; '
            f"[ $kbf_rc = 0 ] || kbf_failed=1; fi"
        )
    return "; ".join(lines)


def parse_apply(stdout: str, commands: Sequence[str]) -> tuple[list[str], tuple[str, str] | None]:
    """Return the commands that succeeded and the first failure (command, output), if any."""
    ran: list[str] = []
    failure: tuple[str, str] | None = None
    current: tuple[int, int] | None = None
    output: list[str] = []

    def close() -> None:
        nonlocal failure, current
        if current is None:
            return
        index, rc = current
        current = None
        if rc == 0:
            ran.append(commands[index])
        elif failure is None:
            failure = (commands[index], "\n".join(output).strip())

    expected = 0  # marks come in order; a line that only looks like one is output
    for line in stdout.splitlines():
        mark = _APPLY_LINE.match(line)
        if mark and int(mark.group(1)) == expected < len(commands):
            close()
            if failure is not None:
                break
            current, output, expected = (expected, int(mark.group(2))), [], expected + 1
        elif line.startswith(firewall.PROBE_MARK):
            break
        elif current is not None:
            output.append(line)
    close()
    if failure is None and len(ran) < len(commands):
        failure = (commands[len(ran)], "did not run (connection lost?)")
    return ran, failure


def overview(outcomes: Sequence[Outcome[HostResult]] | Sequence[Outcome[HostPlan]]) -> dict[str, int]:
    """Count hosts by status."""
    counts: dict[str, int] = {}
    for o in outcomes:
        key = Status.FAILED.value if not o.ok else _status_of(o.result).value
        counts[key] = counts.get(key, 0) + 1
    return counts


def plan_status(plan: HostPlan) -> Status:
    """Return the status a dry run reports for a host."""
    if plan.blocked:
        return Status.BLOCKED
    return Status.PLANNED if plan.changes else Status.UNCHANGED


def _status_of(result: object) -> Status:
    if isinstance(result, HostResult):
        return result.status
    assert isinstance(result, HostPlan)
    return plan_status(result)


def _parse(host: Host, stdout: str, known: UfwFacts | None = None) -> UfwFacts:
    try:
        return ufw_probe.parse_probe(stdout, known=known)
    except firewall.ParseError as e:
        raise HostError(host.hostname, f"cannot read ufw state: {e}") from e


def _blocked_message(blocked: Sequence[Action]) -> str:
    return "; ".join(a.reason for a in blocked)
