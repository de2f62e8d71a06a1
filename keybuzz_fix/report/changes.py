"""What ``convert`` and ``rollback`` show: the plan with a diff per object, the steps, the outcome of each change.

Env values are masked in every diff unless ``--show-values``. With ``-o json`` one summary goes to
stdout at the end (also when the run stops on an error); with ``-o yaml`` the objects convert would
apply.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keybuzz_fix.cluster.changes import Change, ChangeRun, Verb
from keybuzz_fix.cluster.convert import ConvertPlan
from keybuzz_fix.cluster.objects import mask_values, project, strip_server_fields, yaml_diff, yaml_stream
from keybuzz_fix.cluster.rollout import StuckPod
from keybuzz_fix.errors import ExitCode
from keybuzz_fix.hints import hint
from keybuzz_fix.report.output import Output, PlanOutput, confirm, print_json, write_stdout

if TYPE_CHECKING:
    from rich.console import Console

_CHANGE_STYLE = {
    "create": "yellow",
    "update": "yellow",
    "patch": "yellow",
    "delete": "bold yellow",
    "unchanged": "green",
    "done": "bold green",
    "validated": "green",
    "planned": "yellow",
    "not done": "bold red",
}
MASKED = "  [dim]env values are masked (they may hold secrets)[/]"
_DIFF_STYLE = {"@@": "cyan", "+": "green", "-": "red"}


class ChangeView:
    """What a ``convert`` or ``rollback`` run shows as it goes, in the output format asked for."""

    def __init__(
        self,
        console: Console,
        output: Output | PlanOutput,
        command: str,
        *,
        show_values: bool = False,
        diffs: bool = True,
        warnings: bool = True,
        titled: bool = True,
    ) -> None:
        self.console = console
        self.format: str = output.value
        self.command = command
        self.show_values = show_values
        self.diffs = diffs  # False: each change on one line, the objects' diffs left to -v
        self.warnings = warnings  # False: the plan's warnings are shown elsewhere (all's summary), once
        self.titled = titled  # False: the plan's title is the heading above it (all's step)

    @property
    def text(self) -> bool:
        """Whether the output is for a person (not ``-o json`` or ``-o yaml``)."""
        return self.format == "text"

    def plan(
        self,
        title: str,
        changes: Sequence[Change],
        *,
        refusals: Sequence[str] = (),
        warnings: Sequence[str] = (),
        notes: Sequence[str] = (),
        shown_env: Collection[str] = (),
    ) -> None:
        """Show the plan: each change with its reason and diff, then the notes, warnings and refusals."""
        if self.text:
            change_plan(
                self.console,
                title,
                changes,
                refusals=refusals,
                warnings=warnings if self.warnings else (),
                notes=notes,
                show_values=self.show_values,
                shown_env=shown_env,
                diffs=self.diffs,
                titled=self.titled,
            )

    def objects(self, plan: ConvertPlan) -> None:
        """Print the objects the plan would apply (``-o yaml``)."""
        if self.format == "yaml":
            write_stdout(yaml_stream(plan.applied_objects(show_values=True)))

    def say(self, markup: str) -> None:
        """Show one line of progress (text output only)."""
        if self.text:
            self.console.print(markup)

    def nothing_to_do(self, why: str) -> None:
        """Say that the cluster is already as planned."""
        self.say(f"[green]{self.command}: nothing to do[/]: {why}")

    def accepted_by_server(self, count: int, *, before_confirm: bool = False) -> None:
        """Say that the API server took every change as a (server-side) dry run."""
        if before_confirm:
            self.say(f"checked: the API server accepted all {count} change(s) (server-side dry run)")
        else:
            self.say(
                f"[yellow]dry run[/]: the API server accepted all {count} change(s) (server-side dry run); "
                "nothing changed"
            )

    def confirm(self, question: str, *, yes: bool) -> None:
        """Ask once before changing anything."""
        confirm(question, yes=yes)

    def waiting(self, kind: str, names: Sequence[str], timeout: float) -> None:
        """Say what the run waits for, and how long at most."""
        self.say(f"waiting for {kind}(s) {', '.join(names)} to be ready (timeout {timeout:g}s)…")

    def readiness(self, counts: dict[str, tuple[int, int]]) -> None:
        """Show, as it changes, how many pods of each workload are ready (the wait may take minutes)."""
        shown = ", ".join(f"{name} {ready}/{want}" for name, (ready, want) in counts.items())
        self.say(f"  pods ready: {shown}")

    def stuck(self, pods: Sequence[StuckPod]) -> None:
        """Show the pods that kept a rollout from being ready."""
        if self.text:
            stuck_pods(self.console, pods)

    def result(self, run: ChangeRun) -> None:
        """Show what happened to each change, and how long the DaemonSets took to be ready."""
        if not self.text:
            return
        change_summary(self.console, f"{run.command}: result", run.changes, run.outcome)
        if run.command == "rollback":
            self.console.print(
                "left as they are: the UFW rules ufw and all opened, and the Ingress routes "
                "(they serve the Deployments as they served the DaemonSets)"
            )
        t = run.timings
        if "ready" in t and "applied" in t:
            self.console.print(
                f"DaemonSets ready {t['ready']:.2f}s after start ({t['ready'] - t['applied']:.2f}s after "
                f"apply); done in {t.get('done', t['ready']):.2f}s"
            )

    def stopped(self, run: ChangeRun) -> None:
        """Say what was done before the run stopped: the JSON summary, or the changes once a backup exists."""
        if self.format == "json":
            print_json(run_json(run))
        elif self.text and run.backup is not None:
            change_summary(self.console, f"{run.command}: stopped", run.changes, run.outcome)

    def finished(self, run: ChangeRun) -> None:
        """End a run that succeeded: the JSON summary, if asked for."""
        if self.format == "json":
            print_json(run_json(run))


def change_plan(
    console: Console,
    title: str,
    changes: Sequence[Change],
    *,
    refusals: Sequence[str] = (),
    warnings: Sequence[str] = (),
    notes: Sequence[str] = (),
    show_values: bool = False,
    shown_env: Collection[str] = (),
    diffs: bool = True,
    titled: bool = True,
) -> None:
    """Print a plan of object changes: each action with its reason and diff, env values masked unless asked.

    ``diffs=False``: each change on one line (the diffs are what ``-v`` adds: the caller says so),
    notes, warnings and refusals.
    """
    from rich.markup import escape

    def shown(obj: Any) -> Any:
        return obj if obj is None or show_values else mask_values(obj, shown_env)

    if titled:
        console.print(f"[bold]{escape(title)}[/]")
    for c in changes:
        console.print(f"  [{_CHANGE_STYLE[c.label]}]{c.label:>9}[/] {escape(c.target)}: {escape(c.reason)}")
        if not diffs or not c.changes or c.after is None:
            continue
        left: Any = None
        if c.compare_to is not None:
            left = strip_server_fields(c.compare_to)
        elif c.before is not None:
            left = project(strip_server_fields(c.before), c.after)
        for line in yaml_diff(
            shown(left), shown(c.after), old=f"{c.target} (now)", new=f"{c.target} (planned)", context=2
        ):
            style = _DIFF_STYLE.get(line[:2], _DIFF_STYLE.get(line[:1], "dim"))
            console.print(f"      [{style}]{escape(line)}[/]", soft_wrap=True)
    for n in notes if diffs else _per_app(notes):
        console.print(f"  [cyan]note[/] {escape(n)}")
    for w in warnings:
        console.print(f"  [bold yellow]warning[/] {escape(w)}")
    for r in refusals:
        console.print(f"  [bold red]refused[/] {escape(r)}")
    if diffs and not show_values and any(c.changes for c in changes):
        console.print(hint("--show-values", "  [dim]env values are masked; --show-values reveals them[/]", MASKED))


def _per_app(notes: Sequence[str]) -> list[str]:
    """Join the notes about one app (``keybuzz-api: …``) into one line, in order: the brief plan."""
    joined: dict[str, list[str]] = {}
    for n in notes:
        app, sep, rest = n.partition(": ")
        key, text = (app, rest) if sep and " " not in app else (n, "")
        joined.setdefault(key, []).append(text)
    return [f"{key}: {'; '.join(texts)}" if all(texts) else key for key, texts in joined.items()]


def change_summary(console: Console, title: str, changes: Sequence[Change], outcome: Callable[[Change], str]) -> None:
    """Print what happened to each change."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("ACTION", "OBJECT", "OUTCOME", "DETAIL"):
        table.add_column(col, overflow="fold")
    for c in changes:
        result = outcome(c)
        table.add_row(c.label, escape(c.target), f"[{_CHANGE_STYLE[result]}]{result}[/]", escape(c.reason))
    console.print(table)


def stuck_pods(console: Console, pods: Sequence[StuckPod]) -> None:
    """Print the pods that kept a rollout from being ready, with their latest events."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="pods not ready", title_justify="left")
    for col in ("POD", "NODE", "PHASE", "WHY", "LATEST EVENTS"):
        table.add_column(col, overflow="fold")
    for p in pods:
        table.add_row(escape(p.name), p.node or "-", p.phase, escape(p.reason), escape("\n".join(p.events)))
    console.print(table)


def run_json(run: ChangeRun) -> dict[str, Any]:
    """Return the machine-readable summary of a ``convert`` or ``rollback`` run."""
    return {
        "command": run.command,
        "dry_run": run.dry_run,
        "exit_code": int(run.error.exit_code if run.error is not None else ExitCode.of(run)),
        "error": str(run.error) if run.error is not None else None,
        "backup": str(run.backup) if run.backup else None,
        "changes": [dict(change_json(c), outcome=run.outcome(c)) for c in run.changes],
        "refusals": list(run.refusals),
        "warnings": list(run.warnings),
        "notes": list(run.notes),
        "timings": {k: round(v, 3) for k, v in run.timings.items()},
    }


def change_json(change: Change) -> dict[str, Any]:
    """Return one change for ``-o json`` (no object bodies: they may hold env values)."""
    return {
        "action": change.label,
        "kind": change.kind,
        "namespace": change.namespace,
        "name": change.name,
        "reason": change.reason,
    }


def offline_json(plan: ConvertPlan, error: str | None = None) -> dict[str, Any]:
    """Return ``convert --from-file -o json``: what would be applied and deleted, and the warnings.

    A refused plan (``error`` set) applies and deletes nothing: its ``refusals`` say why, exit code 1.

    Machine output is complete (env values unmasked: it is what would be applied, so it can be
    piped to ``kubectl apply -f -``); masking is for the human plan. Secrets are never read: a
    ``secretKeyRef`` stays a reference.
    """
    deletes = [
        {"kind": c.kind, "namespace": c.namespace, "name": c.name}
        for c in plan.hpas + plan.deployments
        if c.verb is Verb.DELETE
    ]
    refused = error is not None
    return {
        "command": "convert",
        "dry_run": True,
        "exit_code": int(ExitCode.FAILURE if refused else ExitCode.of(plan)),
        "apply": [] if refused else plan.applied_objects(show_values=True),
        "delete": [] if refused else deletes,
        "warnings": list(plan.warnings),
        "refusals": list(plan.refusals),
        "error": error,
    }


def offline_plan(console: Console, plan: ConvertPlan, path: Path, output: PlanOutput, *, show_values: bool) -> None:
    """Show a plan made from a state file, in the format asked for."""
    if output is PlanOutput.YAML:
        write_stdout(yaml_stream(plan.applied_objects(show_values=True)))
    elif output is PlanOutput.JSON:
        print_json(offline_json(plan))
    else:
        ChangeView(console, output, "convert", show_values=show_values).plan(
            f"convert: plan from {path} (offline: no cluster touched)",
            plan.changes,
            refusals=plan.refusals,
            warnings=plan.warnings,
            notes=plan.notes,
            shown_env=plan.shown_env,
        )
