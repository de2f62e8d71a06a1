"""What ``all`` shows: a heading per step, one line as each step ends, and the table of every step.

Each ``describe_*`` function turns a step's result into its status and one-line detail, for the
running display and the final table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keybuzz_fix.checks.ingress import IngressPlan
from keybuzz_fix.checks.scorecard import Scorecard
from keybuzz_fix.cluster.changes import Change, ChangeRun, Verb
from keybuzz_fix.cluster.ingress import RouteStatus
from keybuzz_fix.cluster.observed import OverlaySeen
from keybuzz_fix.errors import ExitCode, HostUnreachable, KeybuzzFixError
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.ufw.run import HostOutcome, HostStatus
from keybuzz_fix.report.output import STATUS_STYLE
from keybuzz_fix.report.scorecard import scorecard_json

if TYPE_CHECKING:
    from rich.console import Console

STEPS = ("ufw", "convert", "ingress", "validate")


@dataclass(frozen=True)
class Target:
    """Which cluster and which workers a run works on: named in the plan's first line and in the prompt."""

    server: str
    source: str  # e.g. "kubeconfig ~/.kube/config, context prod"
    servers: Path | None
    workers: int
    namespace: str

    def __str__(self) -> str:
        where = f"{self.servers}" if self.servers is not None else "the cluster's worker Nodes"
        return f"cluster {self.server} ({self.source}); {self.workers} worker(s) from {where}"


def deleting(changes: Sequence[Change]) -> str:
    """Count what a plan deletes, by kind, for a plan line or a question.

    ``, deleting 2 Deployment(s), 2 HorizontalPodAutoscaler(s)``; nothing when it deletes nothing.
    """
    kinds: dict[str, int] = {}
    for c in changes:
        if c.verb is Verb.DELETE:
            kinds[c.kind] = kinds.get(c.kind, 0) + 1
    return ", deleting " + ", ".join(f"{n} {kind}(s)" for kind, n in kinds.items()) if kinds else ""


def plan_summary(
    planned: Sequence[HostOutcome], convert: Sequence[Change], routes: int, warnings: Sequence[str]
) -> list[str]:
    """Return what ``all`` will do, in the few lines read just before its one question.

    What changes, what is deleted, and the warnings that matter; the plans above hold the detail
    (``-v`` adds every object's diff).
    """
    changing = [o for o in planned if o.changes]
    rules = sum(len(o.changes) for o in changing)
    lines = [
        f"ufw: {rules} rule(s) to add on {len(changing)} of {len(planned)} worker(s)"
        if changing
        else f"ufw: nothing to add on the {len(planned)} worker(s)",
        f"convert: {sum(1 for c in convert if c.changes)} change(s){deleting(convert)}",
        f"ingress: {routes} route(s) to apply" if routes else "ingress: routes as wanted",
    ]
    return lines + [f"warning: {w}" for w in warnings]


def question(target: Target, ufw_hosts: int, convert: Sequence[Change], routes: int) -> str:
    """The one question of ``all``: where, and what changes (only what does), deletions counted."""
    changing = sum(1 for c in convert if c.changes)
    parts = [f"ufw on {ufw_hosts} worker(s)"] if ufw_hosts else []
    if changing:
        parts.append(f"convert: {changing} change(s) in namespace {target.namespace}{deleting(convert)}")
    parts += [f"{routes} Ingress route(s)"] if routes else []
    return f"Apply to {target}: {'; '.join(parts) or 'nothing to change'}; then validate?"


@dataclass
class StepLog:
    """Each step's outcome, in order, for the running display and the final summary."""

    console: Console
    rows: list[tuple[str, str, str, float]] = field(default_factory=list)
    changes_pending: bool = False  # the plan found work (a dry run, or a run declined or stopped before it)

    def plan_summary(self, lines: Sequence[str]) -> None:
        """Show what the run will do, just before its question."""
        from rich.markup import escape

        self.console.print("[bold]summary[/]")
        for line in lines:
            style = "bold yellow" if line.startswith("warning:") else ""
            self.console.print(f"  [{style}]{escape(line)}[/]" if style else f"  {escape(line)}")

    def next_steps(self, servers: Path | None, seen: OverlaySeen | None = None) -> None:
        """Say what comes after the workaround, from what diagnose last saw of the overlay."""
        from rich.markup import escape

        for line in next_steps(servers, seen):
            self.console.print(f"[bold]next[/]: {escape(line)}")

    def target(self, target: Target) -> None:
        """Say, before anything else, which cluster and workers the run works on."""
        from rich.markup import escape

        self.console.print(f"[bold]target[/]: {escape(str(target))}")

    def heading(self, number: int, step: str, phase: str = "", *, on: Console | None = None) -> None:
        """Draw the rule that opens a step (or its planning), on the log's console or ``on``."""
        (on or self.console).rule(f"[bold]{number}/{len(STEPS)} {step}[/]" + (f": {phase}" if phase else ""))

    def record(self, step: str, status: str, detail: str, seconds: float, *, show: bool = True) -> None:
        """Note a step's outcome and show it at once (``show=False``: the summary will say it)."""
        self.rows.append((step, status, detail, seconds))
        if not show:
            return
        style = STATUS_STYLE.get(status, "")
        shown = f"[{style}]{status}[/]" if style else status
        self.console.print(f"[bold]{step}[/]: {shown} — {detail} ({seconds:.1f} s)")

    def summary(self, title: str) -> None:
        """Print every step: done, failed, or not run."""
        from rich.markup import escape
        from rich.table import Table

        done = {r[0] for r in self.rows}
        table = Table(title=title, title_justify="left")
        for col in ("STEP", "OUTCOME", "DETAIL", "SECONDS"):
            table.add_column(col, overflow="fold")
        for step, status, detail, seconds in self.rows:
            style = STATUS_STYLE.get(status, "")
            if status in ("failed", "interrupted"):
                detail = "the error line below says what and why"  # said once, there (-o json has it here)
            table.add_row(step, f"[{style}]{status}[/]" if style else status, escape(detail), f"{seconds:.1f}")
        for step in STEPS:
            if step not in done:
                table.add_row(step, "not run", "", "")
        self.console.print(table)


def next_steps(servers: Path | None, seen: OverlaySeen | None = None) -> list[str]:
    """What to do once ``all`` is done: it is a workaround; the overlay is to be fixed (diagnose, overlay), then undone.

    ``seen``: what the last diagnose of these workers saw (see :func:`keybuzz_fix.cluster.observed.overlay_seen`).
    """
    inventory = str(servers) if servers is not None else "servers.tsv"
    undo = (
        "`keybuzz-fix rollback --latest` brings the Deployments back (it leaves the UFW rules and the Ingress "
        "routes in place)"
    )
    if seen is not None and seen.healthy:
        return [f"{seen.describe()}: the workaround is no longer needed; when you want the Deployments back, {undo}."]
    if seen is not None and seen.healthy is False:
        return [
            f"This is a workaround: ClusterIP traffic between the nodes is still broken — {seen.describe()}. "
            f"`keybuzz-fix overlay {inventory}` fixes what UFW blocks; `keybuzz-fix diagnose {inventory}` says what "
            "else is wrong.",
            f"Once diagnose says the overlay is healthy, {undo}.",
        ]
    return [
        "This is a workaround: ClusterIP traffic between the nodes is what was broken. "
        f"`keybuzz-fix diagnose {inventory}` finds why, and `keybuzz-fix overlay {inventory}` fixes what UFW blocks.",
        f"Once diagnose says the overlay is healthy, {undo}.",
    ]


def stuck_workers(stuck: Sequence[HostOutcome]) -> str:
    """Say why ``all`` cannot go on past the firewall plan, per worker in the tool's words, and how to go on."""
    parts = []
    for o in stuck:
        if isinstance(o.error, HostUnreachable):
            parts.append(f"{o.host.hostname} unreachable ({o.error.problem})")
        elif o.error is not None:
            parts.append(f"{o.host.hostname} failed ({o.error.problem})")
        else:
            parts.append(f"{o.host.hostname} blocked ({o.message})")
    names = ",".join(f"!{o.host.hostname}" for o in stuck)
    going_on = hint(
        "--limit",
        f"; to go on without them: --limit '{names}' (their firewall is left as it is, and convert does not wait "
        "for their pods)",
        "; to go on without them, bring them back or take their rows out of a copy of servers.tsv (their "
        "firewall is then left as it is, and convert does not wait for their pods)",
    )
    return f"ufw: {len(stuck)} worker(s) cannot be changed safely: {'; '.join(parts)}; nothing changed{going_on}"


def firewall_failed(applied: Sequence[HostOutcome]) -> str:
    """Say why ``all`` stops after the ufw step: the workers that failed, and those whose state is unknown."""
    unknown = [o.host.hostname for o in applied if o.status is HostStatus.UNKNOWN]
    failed = [o.host.hostname for o in applied if o.failed and o.status is not HostStatus.UNKNOWN]
    parts = [f"ufw failed on {', '.join(failed)}"] if failed else []
    if unknown:
        parts.append(
            f"ufw's outcome is unknown on {', '.join(unknown)} (the connection was lost, the time ran out, or "
            "the shell running the changes ended, while a change was in flight); convert, ingress and validate "
            "did not run: re-run to read them again and go on"
        )
    return "; ".join(parts)


def describe_firewall_plan(planned: Sequence[HostOutcome]) -> tuple[str, str]:
    """Say what the ufw step would change."""
    n = sum(len(o.changes) for o in planned)
    if n:
        return "planned", f"{n} rule change(s) on {sum(1 for o in planned if o.changes)} of {len(planned)} worker(s)"
    return "unchanged", f"rules already present on all {len(planned)} worker(s)"


def describe_firewall_result(applied: Sequence[HostOutcome]) -> tuple[str, str]:
    """Say what the ufw step changed."""
    changed = sum(1 for o in applied if o.status is HostStatus.CHANGED)
    if changed:
        return "changed", f"{changed} worker(s) changed, {len(applied) - changed} already done"
    return "unchanged", f"rules already present on all {len(applied)} worker(s)"


def describe_convert(run: ChangeRun) -> tuple[str, str]:
    """Say what the convert step did, or would do."""
    if not run.done:
        return "unchanged", "already converted"
    if run.dry_run:
        return "planned", f"{len(run.done)} change(s), accepted by the API server (server-side dry run)"
    return "changed", f"{len(run.done)} change(s); backup {run.backup}"


def describe_ingress_plan(plan: IngressPlan) -> tuple[str, str]:
    """Say which routes the ingress step would apply."""
    return ("planned", f"{len(plan.changes)} route(s) to apply") if plan.changes else ("unchanged", "routes as wanted")


def describe_ingress_result(plan: IngressPlan) -> tuple[str, str]:
    """Say which routes the ingress step applied."""
    written = [r for r in plan.routes if r.status in (RouteStatus.CREATED, RouteStatus.UPDATED)]
    return ("changed", f"{len(written)} route(s) applied") if written else ("unchanged", "routes as wanted")


def describe_score(card: Scorecard) -> tuple[str, str]:
    """Say how the validate step scored."""
    return ("pass" if card.ok else "fail"), f"score {card.score:.0f} % ({card.passed}/{card.total})"


def all_json(
    log: StepLog,
    *,
    dry_run: bool,
    card: Scorecard | None = None,
    changes_pending: bool = False,
    error: KeybuzzFixError | None = None,
) -> dict[str, Any]:
    """Return ``all -o json``: the common keys (command, dry_run, exit_code, error), every step, the scorecard."""
    done = {r[0] for r in log.rows}
    rows = [{"step": s, "status": st, "detail": d, "seconds": round(sec, 3)} for s, st, d, sec in log.rows]
    rows += [{"step": s, "status": "not run", "detail": "", "seconds": None} for s in STEPS if s not in done]
    if error is not None:
        code = int(error.exit_code)
    elif card is not None:
        code = int(ExitCode.PARTIAL if card.ok and not card.perfect else ExitCode.of(card))
    else:
        code = int(ExitCode.OK)
    return {
        "command": "all",
        "dry_run": dry_run,
        "exit_code": code,
        "error": str(error) if error is not None else None,
        "changes_pending": changes_pending,
        "steps": rows,
        "scorecard": scorecard_json(card) if card is not None else None,
    }
