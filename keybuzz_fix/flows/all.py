"""``all``: ufw → convert → ingress → validate, behind one combined plan and one confirmation.

Every step plans first (nothing changes until the operator has seen all four plans); then the
steps run in order, each outcome printed as it finishes. The first step that fails stops the run
and the summary says what was done and what was not; re-running resumes, because every step is a
no-op where its work is already done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from keybuzz_fix.errors import ExitCode, KeybuzzFixError
from keybuzz_fix.flows.firewall import confirm
from keybuzz_fix.hosts.ssh import SshOptions
from keybuzz_fix.hosts.ufw import rules as firewall
from keybuzz_fix.hosts.ufw.apply import FirewallRun, HostPlan, HostResult, Status
from keybuzz_fix.inventory import Host
from keybuzz_fix.report import hosts as report

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.checks.http import HttpOptions
    from keybuzz_fix.checks.scorecard import Scorecard
    from keybuzz_fix.cluster.changes import RunResult
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.config import Config
    from keybuzz_fix.flows.ingress import IngressPlan

STEPS = ("ufw", "convert", "ingress", "validate")
T = TypeVar("T")


class StepFailed(KeybuzzFixError):
    """A step of ``all`` did not succeed; the run stops there."""


@dataclass(frozen=True)
class AllOptions:
    """What ``all`` needs beyond the connections."""

    dry_run: bool = False
    yes: bool = False
    enable: bool = False
    concurrency: int = 16
    ready_timeout: float = 300.0
    force_conflicts: bool = False
    keep_port: bool = False
    threshold: int | None = None
    strict: bool = False


@dataclass
class Progress:
    """Each step's outcome, in order, for the running display and the final summary."""

    console: Console
    rows: list[tuple[str, str, str, float]] = field(default_factory=list)

    def record(self, step: str, status: str, detail: str, seconds: float) -> None:
        """Note a step's outcome and show it at once."""
        self.rows.append((step, status, detail, seconds))
        style = report.STATUS_STYLE.get(status, "")
        shown = f"[{style}]{status}[/]" if style else status
        self.console.print(f"[bold]{step}[/]: {shown} — {detail} ({seconds:.1f} s)")

    def step(self, name: str, work: Callable[[], T], describe: Callable[[T], tuple[str, str]]) -> T:
        """Run one step (or its planning), record and show how it ended, and return its result."""
        start = time.monotonic()
        try:
            result = work()
        except KeybuzzFixError as e:
            self.record(name, "failed", str(e), time.monotonic() - start)
            raise
        self.record(name, *describe(result), time.monotonic() - start)
        return result

    def summary(self, title: str) -> None:
        """Print every step: done, failed, or not run."""
        from rich.markup import escape
        from rich.table import Table

        done = {r[0] for r in self.rows}
        table = Table(title=title, title_justify="left")
        for col in ("STEP", "OUTCOME", "DETAIL", "SECONDS"):
            table.add_column(col, overflow="fold")
        for step, status, detail, seconds in self.rows:
            style = report.STATUS_STYLE.get(status, "")
            table.add_row(step, f"[{style}]{status}[/]" if style else status, escape(detail), f"{seconds:.1f}")
        for step in STEPS:
            if step not in done:
                table.add_row(step, "not run", "", "")
        self.console.print(table)


def run_all(
    console: Console,
    *,
    hosts: Sequence[Host],
    cfg: Config,
    ssh: SshOptions,
    kube: Kube,
    http: HttpOptions,
    options: AllOptions,
) -> ExitCode:
    """Plan every step, ask once, run the steps in order; return the exit code."""
    from keybuzz_fix.flows.convert import run_convert
    from keybuzz_fix.flows.ingress import apply_ingress, plan_ingress
    from keybuzz_fix.flows.validate import run_validate

    progress = Progress(console)
    rules = firewall.desired_rules([(r.port, r.proto, r.comment) for r in cfg.firewall.ports], cfg.firewall.source)
    fw = FirewallRun(
        hosts=hosts,
        desired=lambda _h: rules,
        ssh=ssh,
        command="all",
        enable=options.enable,
        concurrency=options.concurrency,
    )

    def convert(dry_run: bool) -> RunResult:
        return _converted(
            run_convert(
                console,
                kube,
                cfg,
                dry_run=dry_run,
                yes=True,
                timeout=options.ready_timeout,
                force_conflicts=options.force_conflicts,
                keep_port=options.keep_port,
            )
        )

    try:
        # -- the combined plan: nothing changes here ---------------------------------------------
        console.rule("[bold]1/4 ufw[/]: plan")
        fw_plans = progress.step("ufw", lambda: _plan_firewall(console, fw), _firewall_planned)
        console.rule("[bold]2/4 convert[/]: plan")
        progress.step("convert", lambda: convert(True), _convert_done)
        console.rule("[bold]3/4 ingress[/]: plan")
        ingress_plan = progress.step(
            "ingress",
            lambda: _plan_ingress(console, plan_ingress(kube, cfg, hosts, force_conflicts=options.force_conflicts)),
            _ingress_planned,
        )
        if options.dry_run:
            progress.summary("all: plan (dry run, nothing changed)")
            return ExitCode.OK
        changing = [p for p in fw_plans if p.changes]
        confirm(
            console,
            f"Apply: ufw on {len(changing)} worker(s), convert in namespace {cfg.namespace}, "
            f"{len(ingress_plan.changes)} Ingress route(s), then validate?",
            yes=options.yes,
        )
        progress.rows.clear()

        # -- the steps, in order -----------------------------------------------------------------
        console.rule("[bold]1/4 ufw[/]")
        progress.step("ufw", lambda: _apply_firewall(console, fw, fw_plans), _firewall_applied)
        console.rule("[bold]2/4 convert[/]")
        progress.step("convert", lambda: convert(False), _convert_done)
        console.rule("[bold]3/4 ingress[/]")
        progress.step(
            "ingress",
            lambda: _apply_ingress(
                console,
                apply_ingress(
                    kube, plan_ingress(kube, cfg, hosts, force_conflicts=options.force_conflicts), command="all"
                ),
            ),
            _ingress_applied,
        )
        console.rule("[bold]4/4 validate[/]")
        card = progress.step(
            "validate",
            lambda: run_validate(kube, cfg, hosts, http=http, threshold=options.threshold, strict=options.strict),
            _scored,
        )
        report.scorecard_table(console, card)
    except KeybuzzFixError:
        progress.summary("all: stopped")
        raise
    finally:
        fw.close()
    progress.summary("all: done")
    if not card.ok:
        raise StepFailed(
            f"validate: score {card.score:.0f} % is below the threshold {card.required} % "
            "after every step ran: see the scorecard"
        )
    return ExitCode.OK if card.perfect else ExitCode.PARTIAL


def _firewall_planned(plans: list[HostPlan]) -> tuple[str, str]:
    n = sum(len(p.changes) for p in plans)
    if n:
        return "planned", f"{n} rule change(s) on {sum(1 for p in plans if p.changes)} of {len(plans)} worker(s)"
    return "unchanged", f"rules already present on all {len(plans)} worker(s)"


def _firewall_applied(results: list[HostResult]) -> tuple[str, str]:
    changed = sum(1 for r in results if r.status is Status.CHANGED)
    if changed:
        return "changed", f"{changed} worker(s) changed, {len(results) - changed} already done"
    return "unchanged", f"rules already present on all {len(results)} worker(s)"


def _convert_done(result: RunResult) -> tuple[str, str]:
    if not result.done:
        return "unchanged", "already converted"
    if result.dry_run:
        return "planned", f"{len(result.done)} change(s), accepted by the API server (server-side dry run)"
    return "changed", f"{len(result.done)} change(s); backup {result.backup}"


def _ingress_planned(plan: IngressPlan) -> tuple[str, str]:
    return ("planned", f"{len(plan.changes)} route(s) to apply") if plan.changes else ("unchanged", "routes as wanted")


def _ingress_applied(plan: IngressPlan) -> tuple[str, str]:
    from keybuzz_fix.cluster.ingress import RouteStatus

    written = [r for r in plan.routes if r.status in (RouteStatus.CREATED, RouteStatus.UPDATED)]
    return ("changed", f"{len(written)} route(s) applied") if written else ("unchanged", "routes as wanted")


def _scored(card: Scorecard) -> tuple[str, str]:
    return ("pass" if card.ok else "fail"), f"score {card.score:.0f} % ({card.passed}/{card.total})"


def _plan_firewall(console: Console, fw: FirewallRun) -> list[HostPlan]:
    planned = fw.plan(console)
    report.firewall_plans(console, planned)
    failed = [o for o in planned if not o.ok]
    blocked = [o.result for o in planned if o.ok and o.result is not None and o.result.blocked]
    if failed or blocked:
        report.firewall_summary(console, planned, "ufw: cannot go on")
        names = [o.host.hostname for o in failed] + [p.host.hostname for p in blocked]
        raise StepFailed(f"ufw: {len(names)} worker(s) cannot be changed safely ({', '.join(names)}); nothing changed")
    return [o.result for o in planned if o.result is not None]


def _apply_firewall(console: Console, fw: FirewallRun, plans: Sequence[HostPlan]) -> list[HostResult]:
    applied = fw.apply(plans, console)
    report.firewall_summary(console, applied, "ufw: result")
    bad = [o.host.hostname for o in applied if not o.ok or (o.result is not None and o.result.status is Status.BLOCKED)]
    if bad:
        raise StepFailed(f"ufw failed on {', '.join(bad)}")
    return [o.result for o in applied if o.result is not None]


def _converted(result: RunResult) -> RunResult:
    if result.exit_code != ExitCode.OK:
        raise StepFailed(f"convert ended with exit code {int(result.exit_code)}: {result.error or 'see above'}")
    return result


def _plan_ingress(console: Console, plan: IngressPlan) -> IngressPlan:
    report.ingress_plan(console, plan, dry_run=True)
    if plan.exit_code != ExitCode.OK:
        problems = "; ".join(f.detail for f in plan.mismatches) or "a route cannot be applied (see above)"
        raise StepFailed(f"ingress: {problems}; nothing changed")
    return plan


def _apply_ingress(console: Console, plan: IngressPlan) -> IngressPlan:
    report.ingress_summary(console, plan, dry_run=False)
    if plan.exit_code != ExitCode.OK:
        raise StepFailed("ingress: a route could not be applied (see above)")
    return plan
