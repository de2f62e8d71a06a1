"""Apply UFW plans over SSH: observe → plan → (confirm) → apply → read back, on every host at once.

Shared by ``ufw`` (ingress NodePorts on the workers), ``overlay`` (VXLAN on every K3s node), ``all``
and ``validate --extended``: they differ in the rules they want, and ``overlay`` may add a
:class:`~keybuzz_fix.hosts.ufw.run.HostExtra` (a probe and a plan for a change outside UFW). One
SSH connection per host serves the probe, the changes and the read-back; the changes and the
read-back go in a single round trip.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from keybuzz_fix import storage
from keybuzz_fix.errors import (
    ChangeUnknown,
    ConnectionLost,
    HostError,
    HostUnreachable,
    MissingTool,
    RemoteCommandError,
)
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.parallel import Attempt, Progress, on_each_host, raise_open_files_limit
from keybuzz_fix.hosts.sections import MARK, section_name
from keybuzz_fix.hosts.ssh import Session, open_session
from keybuzz_fix.hosts.sshoptions import AcceptedKeys, SshOptions
from keybuzz_fix.hosts.ufw.facts import UfwFacts, parse_ufw_facts, ufw_probe
from keybuzz_fix.hosts.ufw.plan import Action, ActionKind, Arrival, plan_rules
from keybuzz_fix.hosts.ufw.rules import ParseError, UfwRule
from keybuzz_fix.hosts.ufw.run import HostExtra, HostOutcome, HostStatus
from keybuzz_fix.inventory import Host

APPLY_MARK = f"{MARK} apply"  # then the command's index and its exit status
_APPLY = re.compile(r"^apply ([0-9]+) ([0-9]+)$")


@dataclass
class FirewallRun:
    """A two-phase run over many hosts; sessions stay open between planning and applying."""

    hosts: Sequence[Host]
    desired: Callable[[Host], list[UfwRule]]
    ssh: SshOptions
    command: str = "ufw"
    enable: bool = False
    insert_first: bool = False  # the tool's allow rules go at the top (ufw prepend)
    concurrency: int = 16
    extra: HostExtra | None = None
    accepted: AcceptedKeys = field(default_factory=AcceptedKeys)
    _sessions: dict[str, Session] = field(default_factory=dict)

    def plan(self, progress: Progress | None = None) -> list[HostOutcome]:
        """Connect to every host, read its UFW facts and plan.

        Only the hosts with changes keep their connection for the apply: the others are closed as
        soon as their plan is made, so a mostly converged fleet holds about ``concurrency``
        connections at a time, not one per host.
        """
        raise_open_files_limit(3 * len(self.hosts) + 64)  # per host: its socket, and its shell's wake-up pipe
        attempts = on_each_host(
            self.hosts, self._plan_host, concurrency=self.concurrency, progress=progress, label="reading ufw"
        )
        return [_outcome(a) for a in attempts]

    def apply(self, planned: Sequence[HostOutcome], progress: Progress | None = None) -> list[HostOutcome]:
        """Apply each planned host's changes and read the result back; a host that failed to plan stays failed."""
        ready = {o.host.hostname: o for o in planned if o.ok}
        attempts = on_each_host(
            [o.host for o in ready.values()],
            lambda h: self._apply_host(ready[h.hostname]),
            concurrency=self.concurrency,
            progress=progress,
            label="applying",
            changing=True,
            finished=_what_it_did,
        )
        done = {a.host.hostname: _outcome(a, ready[a.host.hostname]) for a in attempts}
        return [done.get(o.host.hostname, o) for o in planned]

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

    def _probe(self, *, status: bool = True) -> str:
        return (self.extra.probe + "; " if self.extra else "") + ufw_probe(status=status)

    def _actions(self, host: Host, facts: UfwFacts, stdout: str) -> list[Action]:
        actions = plan_rules(
            self.desired(host),
            facts,
            enable=self.enable,
            ssh_port=facts.ssh_port or 22,
            arrival=Arrival(host.private_ip, facts.interface_of(host.private_ip)),
            insert_first=self.insert_first,
        )
        return actions + (self.extra.plan(stdout) if self.extra else [])

    def _plan_host(self, host: Host) -> HostOutcome:
        try:
            planned = self._observe(host)
        except BaseException:
            self._release(host)
            raise
        if not planned.changes:
            self._release(host)
        return planned

    def _observe(self, host: Host) -> HostOutcome:
        session = self._session(host)
        stdout = session.run(self._probe()).stdout
        facts = _parse(host, stdout)
        if not facts.installed:
            raise MissingTool(host.hostname, "ufw is not installed (apt-get install ufw)")
        return HostOutcome.planned(host, facts, self._actions(host, facts, stdout))

    def _apply_host(self, planned: HostOutcome) -> HostOutcome:
        host = planned.host
        commands = [a.command for a in planned.changes if a.command]
        if not commands:
            return replace(planned, status=HostStatus.BLOCKED if planned.blocked else HostStatus.UNCHANGED, applied=())
        session = self._session(host)
        try:
            enabling = any(a.kind is ActionKind.ENABLE for a in planned.changes)
            result = session.run(apply_script(commands) + "; " + self._probe(status=enabling), check=False)
        except (ConnectionLost, RemoteCommandError) as e:  # sent, and no answer: it may have run, or not
            raise self._cut_short(host, commands, e) from e
        except HostUnreachable as e:  # gone before the changes were sent: nothing changed there
            raise HostUnreachable(host.hostname, f"{e.problem}; nothing changed") from e
        ran, failure = parse_apply(result.stdout, commands)
        if failure is None and len(ran) < len(commands):  # the script ended before it answered for every change
            ended = RemoteCommandError(host.hostname, result.command, result.status, result.stderr)
            ended.partial = result.stdout
            raise self._cut_short(host, commands, ended)
        for cmd in ran:
            storage.audit(self.command, host.hostname, cmd, "ok", address=host.private_ip)
        if failure is not None:
            cmd, output = failure
            storage.audit(self.command, host.hostname, cmd, "failed", address=host.private_ip, output=output[-500:])
            raise RemoteCommandError(host.hostname, cmd, 1, output or "failed")
        after = _parse(host, result.stdout, known=planned.facts)
        again = self._actions(host, after, result.stdout)
        left = [a for a in again if a.changes]
        if left:
            raise HostError(host.hostname, "read-back after apply still lacks: " + "; ".join(a.reason for a in left))
        added = [a.rule for a in planned.changes if a.kind is ActionKind.ADD and a.rule is not None]
        shadowed = [a.reason for a in again if a.kind is ActionKind.BLOCKED and a.rule in added]
        if shadowed:
            raise HostError(host.hostname, "read-back after apply: added but not let in: " + "; ".join(shadowed))
        blocked = [a.reason for a in again if a.kind is ActionKind.BLOCKED]
        status = HostStatus.BLOCKED if blocked else HostStatus.CHANGED
        return HostOutcome(host, status, after, planned.actions, tuple(ran), "; ".join(blocked))

    def _cut_short(self, host: Host, commands: Sequence[str], error: HostError) -> ChangeUnknown:
        """Audit what ran before the answers stopped (connection, time, shell); the host's outcome is then unknown."""
        ran = parse_apply(error.partial, commands)[0]
        for cmd in ran:
            storage.audit(self.command, host.hostname, cmd, "ok", address=host.private_ip)
        rest = list(commands[len(ran) :])
        if rest:  # it was running: ufw may or may not have finished it
            storage.audit(self.command, host.hostname, rest[0], "unknown", address=host.private_ip, error=error.problem)
        problem = in_flight(host.hostname, error, ran, rest, again="overlay" if self.command == "overlay" else "ufw")
        return ChangeUnknown(host.hostname, problem, tuple(ran))


def in_flight(host: str, error: HostError, ran: Sequence[str], rest: Sequence[str], *, again: str) -> str:
    """Say why a host's outcome is unknown, what is known to be done, and how to find out the rest.

    ``error`` is what ended the wait: :class:`ConnectionLost`; a :class:`RemoteCommandError` with a
    status (the script ended, killed or cut, before it answered for every change: exit 128 + N is
    signal N, the shell's convention); or one without (its time ran out).
    """
    running = f"`{rest[0]}` ran" if rest else "the rules were read back"
    if isinstance(error, ConnectionLost):
        what = f"the connection to {host} was lost while {running} ({error.why})"
    elif isinstance(error, RemoteCommandError) and error.status is not None:
        what = f"the shell running the changes on {host} ended ({ended_by(error.status)}) while {running}"
    else:
        what = f"no answer from {host} in time" + hint("--timeout", " (--timeout)") + f" while {running}"
    done = f"{len(ran)} of {len(ran) + len(rest)} change(s) done" + (f" ({'; '.join(ran)})" if ran else "")
    check = f"check with `keybuzz-fix {again}" + hint("--dry-run", " --dry-run") + "` again"
    return f"unknown — {what}; {done}; {check}"


def ended_by(status: int) -> str:
    """Say how a shell command ended from its exit status: above 128 a shell reports a signal (128 + N)."""
    if status > 128:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(status - 128).name}, exit {status}"
    return f"exit {status}"


def _what_it_did(outcome: HostOutcome) -> str:
    """A host's apply in a few words, for the message after Ctrl-C."""
    return f"changed ({len(outcome.applied)} change(s) made)" if outcome.applied else "nothing to change"


def apply_script(commands: Sequence[str]) -> str:
    """Return a shell script that runs ``commands`` in order and stops at the first failure.

    Each command reports ``@@keybuzz-fix@@ apply <index> <exit status>`` followed by its output, so
    the caller knows exactly which ones ran even when the connection drops half-way.
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
    """Return the commands that succeeded and the first failure (command, output), if any.

    Fewer commands than asked and no failure: the script ended (or its output was cut) before it
    answered for the next one, which may or may not have run.
    """
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
    for line in stdout.split("\n"):
        name = section_name(line)
        mark = _APPLY.match(name) if name is not None else None
        if mark and int(mark.group(1)) == expected < len(commands):
            close()
            if failure is not None:
                break
            current, output, expected = (expected, int(mark.group(2))), [], expected + 1
        elif name is not None and name.split(" ", 1)[0] != "apply":  # the read-back probe begins
            break
        elif current is not None:
            output.append(line)
    close()
    return ran, failure


def _outcome(attempt: Attempt[HostOutcome], planned: HostOutcome | None = None) -> HostOutcome:
    """A host's outcome from its attempt: a change in flight when the answers stopped leaves it unknown."""
    if isinstance(attempt.error, ChangeUnknown) and planned is not None:
        return replace(
            planned, status=HostStatus.UNKNOWN, applied=attempt.error.done, error=attempt.error, seconds=attempt.seconds
        )
    if attempt.error is not None or attempt.result is None:
        return HostOutcome(attempt.host, HostStatus.FAILED, error=attempt.error, seconds=attempt.seconds)
    return replace(attempt.result, seconds=attempt.seconds)


def _parse(host: Host, stdout: str, known: UfwFacts | None = None) -> UfwFacts:
    try:
        return parse_ufw_facts(stdout, known=known)
    except ParseError as e:
        raise HostError(host.hostname, f"cannot read ufw state: {e}") from e
