"""One planned change to one Kubernetes object, and the record of a run that carries changes out (pure code).

``convert`` and ``rollback`` both plan lists of :class:`Change`, show them, and hand them to
:func:`keybuzz_fix.cluster.rollout.send`, which sends them (optionally as a server-side dry run)
and writes the audit log. Every delete carries the uid of the object that was read and backed up;
every patch carries its resourceVersion, so a change never lands on an object newer than the one
planned against. :class:`ChangeRun` is what the run did: the flows' result object.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from keybuzz_fix.cluster.objects import Obj
from keybuzz_fix.errors import KeybuzzFixError


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


def sent(changes: Sequence[Change]) -> list[tuple[Verb, str, str, str, Obj | None, str | None]]:
    """Return what carrying out ``changes`` sends: two plans that send the same are the same plan."""
    return [(c.verb, c.kind, c.namespace, c.name, c.body, c.uid) for c in changes if c.changes]


@dataclass
class ChangeRun:
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
    error: KeybuzzFixError | None = None  # what the run stopped on
    started: float = field(default_factory=time.monotonic)

    def mark(self, step: str) -> None:
        """Note how long after the start ``step`` was reached."""
        self.timings[step] = time.monotonic() - self.started

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

    def stop(self, error: KeybuzzFixError) -> KeybuzzFixError:
        """Record the error the run stops on; return it, for the caller to raise once it is reported."""
        self.error = error
        return error

    @property
    def failed(self) -> bool:
        """Whether the run stopped on an error."""
        return self.error is not None

    @property
    def changes_pending(self) -> bool:
        """Whether a change is planned and not made (a dry run that found work)."""
        return any(self.outcome(c) in ("planned", "validated") for c in self.changes)
