"""One planned change to one Kubernetes object, and the code that carries it out through ``Kube``.

``convert`` and ``rollback`` both plan lists of :class:`Change` (pure), print them, and hand them
to :func:`execute`, which sends them (optionally as a server-side dry run) and writes the audit
log. Every delete carries the uid of the object that was read and backed up; every patch carries
its resourceVersion, so a change never lands on an object newer than the one planned against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keybuzz_fix import storage as state
from keybuzz_fix.errors import ExitCode, KeybuzzFixError
from keybuzz_fix.report import hosts as report

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rich.console import Console

    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.cluster.objects import Obj


class Verb(str, Enum):
    """How a change is sent."""

    APPLY = "apply"  # server-side apply (creates or updates), field manager keybuzz-fix
    CREATE = "create"  # POST of a restored object
    PATCH = "patch"  # JSON merge patch with a resourceVersion precondition
    DELETE = "delete"  # with a uid precondition
    NONE = "unchanged"


@dataclass(frozen=True)
class Change:
    """A change to one object, or a no-op with its reason."""

    verb: Verb
    kind: str
    namespace: str
    name: str
    reason: str
    body: Obj | None = None  # what is sent: the applied object, the created object or the merge patch
    before: Obj | None = None  # the object as read: backed up, and the left side of the diff
    after: Obj | None = None  # how the object will look: the right side of the diff and of -o yaml
    uid: str | None = None  # delete precondition
    compare_to: Obj | None = None  # left side of the diff when not ``before`` (a new DaemonSet: its Deployment)

    @property
    def changes(self) -> bool:
        """Whether carrying out this change modifies the cluster."""
        return self.verb is not Verb.NONE

    @property
    def target(self) -> str:
        """``Kind namespace/name``."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def label(self) -> str:
        """What the plan calls it: create, update, patch, delete, unchanged."""
        if self.verb is Verb.APPLY:
            return "create" if self.before is None else "update"
        return str(self.verb.value)

    def to_json(self) -> dict[str, Any]:
        """Return the change for ``-o json`` (no object bodies: they may hold env values)."""
        return {
            "action": self.label,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "reason": self.reason,
        }


def execute(kube: Kube, change: Change, *, command: str, dry_run: bool = False, force: bool = False) -> None:
    """Send one change; audit it unless it is a dry run. Errors propagate as the tool's own."""
    if not change.changes:
        return
    try:
        if change.verb is Verb.APPLY:
            assert change.body is not None
            kube.apply(change.body, dry_run=dry_run, force=force)
        elif change.verb is Verb.CREATE:
            assert change.body is not None
            kube.create(change.body, dry_run=dry_run)
        elif change.verb is Verb.PATCH:
            assert change.body is not None
            kube.patch(change.kind, change.name, change.namespace, change.body, patch_type="merge", dry_run=dry_run)
        elif change.verb is Verb.DELETE:
            kube.delete(change.kind, change.name, change.namespace, uid=change.uid, dry_run=dry_run)
    except KeybuzzFixError as e:
        if not dry_run:
            state.audit(command, change.target, change.label, "failed", reason=change.reason, error=str(e))
        raise
    if not dry_run:
        details: dict[str, Any] = {"reason": change.reason}
        if change.uid:
            details["uid"] = change.uid
        state.audit(command, change.target, change.label, "ok", **details)


@dataclass
class RunResult:
    """What a run of ``convert`` or ``rollback`` did: for its summary, ``-o json`` and the ``all`` command."""

    command: str
    dry_run: bool
    changes: tuple[Change, ...] = ()
    refusals: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    backup: Path | None = None
    done: list[Change] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    exit_code: ExitCode = ExitCode.OK
    error: str | None = None

    def outcome(self, change: Change) -> str:
        """Return what happened to one change."""
        if not change.changes:
            return "unchanged"
        if any(d is change for d in self.done):
            return "validated" if self.dry_run else "done"
        return "planned" if self.dry_run and self.error is None else "not done"

    def progress(self) -> str:
        """Say what was done so far, for an interrupted or failed run."""
        if self.backup is None:
            return "nothing changed"
        done = ", ".join(f"{c.label} {c.target}" for c in self.done) or "no object changed yet"
        return f"backup {self.backup}; done: {done}"

    def send(self, kube: Kube, changes: Iterable[Change], *, dry_run: bool = False, force: bool = False) -> None:
        """Carry out, in order, each change that changes something; it counts as done once the API took it."""
        for c in changes:
            if c.changes:
                execute(kube, c, command=self.command, dry_run=dry_run, force=force)
                self.done.append(c)

    def fail(self, console: Console, output: str, error: KeybuzzFixError) -> KeybuzzFixError:
        """Record ``error`` and say what was done (the JSON summary, or the changes once a backup exists).

        Returns ``error``, for the caller to raise.
        """
        self.exit_code, self.error = error.exit_code, str(error)
        if output == "json":
            report.print_json(self.to_json())
        elif output == "text" and self.backup is not None:
            report.change_summary(console, f"{self.command}: stopped", self.changes, self.outcome)
        return error

    def finish(self, output: str) -> RunResult:
        """End a run that succeeded: print the JSON summary if asked; return the result."""
        if output == "json":
            report.print_json(self.to_json())
        return self

    def to_json(self) -> dict[str, Any]:
        """Return the machine-readable summary."""
        return {
            "command": self.command,
            "dry_run": self.dry_run,
            "exit_code": int(self.exit_code),
            "error": self.error,
            "backup": str(self.backup) if self.backup else None,
            "changes": [dict(c.to_json(), outcome=self.outcome(c)) for c in self.changes],
            "refusals": list(self.refusals),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
