"""``all``'s planning: every step plans, nothing changes; the summary first, then each step's plan.

One page before the prompt (:func:`plan_all`): each step's plan in brief, each change on one line;
``-v`` (and ``--dry-run``, which asks for the plan) adds every command and diff. The plans are
drawn while planning but held back until the summary is out. What runs after the confirmation is
:mod:`keybuzz_fix.flows.all`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from keybuzz_fix.checks.ingress import IngressPlan
from keybuzz_fix.cluster.changes import ChangeRun
from keybuzz_fix.cluster.convert import ConvertPlan
from keybuzz_fix.config import Config
from keybuzz_fix.errors import Interrupted, KeybuzzFixError
from keybuzz_fix.flows.convert import check_plan, name_running
from keybuzz_fix.flows.ingress import plan_ingress
from keybuzz_fix.hosts.ufw.apply import FirewallRun
from keybuzz_fix.hosts.ufw.run import HostOutcome, Wanted
from keybuzz_fix.inventory import Host
from keybuzz_fix.report import steps
from keybuzz_fix.report.changes import ChangeView
from keybuzz_fix.report.hosts import firewall_brief, firewall_plans, firewall_summary, wanted_brief, wanted_rules
from keybuzz_fix.report.ingress import ingress_plan
from keybuzz_fix.report.output import PlanOutput, held_back, let_out, progress_bar, verbosity, working

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.cluster.client import Kube

Result = TypeVar("Result")


class StepFailed(KeybuzzFixError):
    """A step of ``all`` did not succeed; the run stops there."""


@dataclass(frozen=True)
class AllOptions:
    """What ``all`` needs beyond the connections."""

    dry_run: bool = False
    yes: bool = False
    enable: bool = False
    insert_first: bool = False  # the allow rules at the top of UFW's lists (ufw prepend)
    ready_timeout: float = 300.0
    force_conflicts: bool = False
    keep_port: bool = False
    allow_managed: bool = False
    threshold: int | None = None
    strict: bool = False
    firewall_hosts: tuple[str, ...] | None = None  # --limit: the workers the ufw step works on (None: all)
    json: bool = False  # -o json: one document on stdout at the end (the steps' text goes to stderr)
    servers: Path | None = None  # the servers.tsv the workers were read from, named in the plan and the prompt


@dataclass(frozen=True)
class Plans:
    """What the operator confirms: each worker's UFW plan, the convert plan, the Ingress routes."""

    firewall: list[HostOutcome]
    convert: ConvertPlan
    routes: IngressPlan


def step(
    log: steps.StepLog,
    name: str,
    work: Callable[[], Result],
    describe: Callable[[Result], tuple[str, str]],
    *,
    show: bool = True,
) -> Result:
    """Run one step's planning or applying and note its outcome (shown now unless ``show`` is False)."""
    start = time.monotonic()
    try:
        result = work()
    except KeybuzzFixError as e:
        status = "interrupted" if isinstance(e, Interrupted) else "failed"
        log.record(name, status, str(e), time.monotonic() - start, show=False)  # the error line says it, once
        raise
    log.record(name, *describe(result), time.monotonic() - start, show=show)
    return result


def plan_all(
    console: Console,
    kube: Kube,
    cfg: Config,
    hosts: Sequence[Host],
    fw: FirewallRun,
    wanted: Wanted,
    options: AllOptions,
    log: steps.StepLog,
) -> Plans:
    """Plan every step, nothing changes; show the summary first, then each step's plan.

    One page before the prompt: each step's plan in brief (each change on one line); -v (and
    --dry-run, which asks for the plan) adds every command and diff. The plans are drawn while
    planning but held back until the summary is out; warnings are in the summary only.
    """
    brief = not (options.dry_run or verbosity() > 0)
    details = held_back(console)
    view = ChangeView(details, PlanOutput.TEXT, "convert", diffs=not brief, warnings=False, titled=not brief)
    planning = "plan (dry run)" if options.dry_run else "plan (nothing changes before you confirm)"
    try:
        log.heading(1, "ufw", planning, on=details)
        planned = step(
            log,
            "ufw",
            lambda: _plan_firewall(console, details, fw, wanted, brief=brief),
            steps.describe_firewall_plan,
            show=False,
        )
        log.heading(2, f"convert in namespace {cfg.namespace}", planning, on=details)
        checked = ChangeRun("convert", dry_run=True)
        with working(console, "planning convert: reading the cluster, then a server-side dry run…"):
            converting = step(
                log,
                "convert",
                lambda: check_plan(
                    kube,
                    cfg,
                    checked,
                    view,
                    keep_port=options.keep_port,
                    force=options.force_conflicts,
                    allow_managed=options.allow_managed,
                    workers=hosts,
                    confirm_first=not options.dry_run,
                ),
                lambda _plan: steps.describe_convert(checked),
                show=False,
            )
        log.heading(3, "ingress", planning, on=details)
        with working(console, "planning ingress: reading ingress-nginx, then a server-side dry run…"):
            routes = step(
                log,
                "ingress",
                lambda: _plan_ingress(
                    details,
                    plan_ingress(kube, cfg, hosts, force_conflicts=options.force_conflicts),
                    dry_run=options.dry_run,
                    brief=brief,
                ),
                steps.describe_ingress_plan,
                show=False,
            )
        log.plan_summary(steps.plan_summary(planned, converting.changes, len(routes.changes), converting.warnings))
    except KeyboardInterrupt:
        raise while_planning(log) from None
    except Interrupted as e:
        if not str(e).startswith("interrupted while planning"):
            raise while_planning(log) from None  # e.g. convert's "re-run convert to finish": nothing was applied
        raise
    except KeybuzzFixError as e:
        name_running(e, kube, cfg.namespace)
        raise
    finally:
        let_out(console, details)  # the steps' plans, after the summary (or, if planning stopped, what was planned)
    if brief:
        console.print("[dim]-v shows every command each worker will run and every object's and route's diff[/]")
    log.changes_pending = any(o.changes for o in planned) or bool(converting.pending) or bool(routes.changes)
    return Plans(planned, converting, routes)


def while_planning(log: steps.StepLog) -> Interrupted:
    """Ctrl-C before the question: say which step was planning, and that nothing changed."""
    stopped = [step for step, status, *_rest in log.rows if status == "interrupted"]
    planned = [step for step, *_rest in log.rows]
    step = stopped[-1] if stopped else next((s for s in steps.STEPS if s not in planned), "validate")
    return Interrupted(f"interrupted while planning ({step}); nothing changed")


def _plan_firewall(
    console: Console, details: Console, fw: FirewallRun, wanted: Wanted, *, brief: bool
) -> list[HostOutcome]:
    """Read every worker's UFW (progress on ``console``) and draw the plan on ``details``."""
    (wanted_brief if brief else wanted_rules)(details, wanted)
    planned = fw.plan(progress_bar(console))
    (firewall_brief if brief else firewall_plans)(details, planned)
    stuck = [o for o in planned if o.error or o.blocked]
    if stuck:
        firewall_summary(details, planned, "ufw: cannot go on")
        raise StepFailed(steps.stuck_workers(stuck))
    return planned


def _plan_ingress(console: Console, plan: IngressPlan, *, dry_run: bool, brief: bool) -> IngressPlan:
    ingress_plan(console, plan, dry_run=dry_run, brief=brief)
    if plan.failed:
        problems = "; ".join(
            [f.detail for f in plan.mismatches] + [p.describe() for r in plan.unserved for p in r.serving]
        )
        problems = problems or "a route cannot be applied (see above)"
        raise StepFailed(f"ingress: {problems}; nothing changed")
    return plan
