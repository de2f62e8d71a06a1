"""``all``: ufw → convert → ingress → validate, behind one combined plan and one confirmation.

Every step plans first (nothing changes until the operator has seen all of it); then the steps run
in order, each outcome shown as it finishes, and each applies the plan that was confirmed: the
UFW plans of the hosts as they were read, the Ingress routes as they were dry-run. Convert needs
the cluster as it is now to back it up, so it reads it again and stops if the plan that follows
differs from the confirmed one. The first step that fails stops the run and the summary says
what was done and what was not; re-running resumes, because every step is a no-op where its work
is already done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from keybuzz_fix.checks.http import HttpOptions
from keybuzz_fix.checks.ingress import IngressPlan
from keybuzz_fix.checks.scorecard import Scorecard
from keybuzz_fix.cluster.changes import ChangeRun
from keybuzz_fix.cluster.convert import ConvertPlan, plan_convert
from keybuzz_fix.cluster.lock import one_at_a_time
from keybuzz_fix.cluster.objects import Obj
from keybuzz_fix.config import Config
from keybuzz_fix.errors import Aborted, Interrupted, KeybuzzFixError, Unanswered
from keybuzz_fix.flows import Connections
from keybuzz_fix.flows.convert import apply_confirmed, check_plan, name_running, overlay_now, read_convert_state
from keybuzz_fix.flows.firewall import worker_rules
from keybuzz_fix.flows.ingress import apply_ingress, plan_ingress
from keybuzz_fix.flows.validate import WorkerAccess, score_cluster
from keybuzz_fix.hosts.ufw.apply import FirewallRun
from keybuzz_fix.hosts.ufw.run import HostOutcome, Wanted
from keybuzz_fix.inventory import Host
from keybuzz_fix.report import steps
from keybuzz_fix.report.changes import ChangeView
from keybuzz_fix.report.hosts import firewall_brief, firewall_plans, firewall_summary, wanted_brief, wanted_rules
from keybuzz_fix.report.ingress import ingress_plan, ingress_summary
from keybuzz_fix.report.output import (
    PlanOutput,
    confirm,
    held_back,
    let_out,
    print_json,
    progress_bar,
    verbosity,
    working,
)
from keybuzz_fix.report.scorecard import scorecard_table

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.cluster.client import Kube

Result = TypeVar("Result")
SETTLE = 30.0  # seconds the URL checks allow ingress-nginx to serve routes and endpoints that just changed


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
class Remediation:
    """What ``all`` did (the flow's result): every step ran, and the scorecard says how well."""

    card: Scorecard | None = None  # None: a dry run, nothing was scored
    changes_pending: bool = False  # a dry run: whether a step planned changes

    @property
    def failed(self) -> bool:
        """Whether the score is below its threshold."""
        return self.card is not None and not self.card.ok

    @property
    def partial(self) -> bool:
        """Whether the score passed its threshold but is below 100 %."""
        return self.card is not None and not self.card.perfect


def run_all(
    console: Console, reach: Connections, hosts: Sequence[Host], cfg: Config, options: AllOptions
) -> Remediation:
    """Plan every step, ask once, run the steps in order applying what was confirmed; ``-o json``: one document.

    One run at a time per cluster (a Lease, see :mod:`keybuzz_fix.cluster.lock`).
    """
    log = steps.StepLog(console)
    try:
        result = _run_all(console, reach.kube(), reach, hosts, cfg, options, log)
    except KeybuzzFixError as e:
        if options.json:
            # declined, or stopped before validate: some of what was planned is still to be done
            pending = log.changes_pending and not any(step == "validate" for step, *_rest in log.rows)
            print_json(steps.all_json(log, dry_run=options.dry_run, error=e, changes_pending=pending))
        raise
    if options.json:
        print_json(
            steps.all_json(log, dry_run=options.dry_run, card=result.card, changes_pending=result.changes_pending)
        )
    return result


def _run_all(
    console: Console,
    kube: Kube,
    reach: Connections,
    hosts: Sequence[Host],
    cfg: Config,
    options: AllOptions,
    log: steps.StepLog,
) -> Remediation:
    http = reach.http or HttpOptions()
    wanted = worker_rules(reach, cfg, kube=kube, planned=_as_converted(kube, cfg, hosts, options))
    rules = wanted.ufw_rules
    fw = FirewallRun(
        hosts=[h for h in hosts if options.firewall_hosts is None or h.hostname in options.firewall_hosts],
        desired=lambda _h: rules,
        ssh=reach.ssh,
        command="all",
        enable=options.enable,
        insert_first=options.insert_first,
        concurrency=reach.concurrency,
    )
    # Before the prompt, one page: the summary first, then each step's plan in brief (each change on
    # one line); -v (and --dry-run, which asks for the plan) adds every command and diff. The plans
    # are drawn while planning but held back until the summary is out; warnings are in the summary only.
    brief = not (options.dry_run or verbosity() > 0)
    details = held_back(console)
    view = ChangeView(details, PlanOutput.TEXT, "convert", diffs=not brief, warnings=False, titled=not brief)

    def step(
        name: str, work: Callable[[], Result], describe: Callable[[Result], tuple[str, str]], *, show: bool = True
    ) -> Result:
        start = time.monotonic()
        try:
            result = work()
        except KeybuzzFixError as e:
            status = "interrupted" if isinstance(e, Interrupted) else "failed"
            log.record(name, status, str(e), time.monotonic() - start, show=False)  # the error line says it, once
            raise
        log.record(name, *describe(result), time.monotonic() - start, show=show)
        return result

    target = steps.Target(kube.endpoint.server, kube.endpoint.source, options.servers, len(hosts), cfg.namespace)
    log.target(target)
    held = ExitStack()
    try:
        # -- the combined plan: nothing changes here ---------------------------------------------
        planning = "plan (dry run)" if options.dry_run else "plan (nothing changes before you confirm)"
        try:
            log.heading(1, "ufw", planning, on=details)
            planned = step(
                "ufw",
                lambda: _plan_firewall(console, details, fw, wanted, brief=brief),
                steps.describe_firewall_plan,
                show=False,
            )
            log.heading(2, f"convert in namespace {cfg.namespace}", planning, on=details)
            checked = ChangeRun("convert", dry_run=True)
            with working(console, "planning convert: reading the cluster, then a server-side dry run…"):
                converting = step(
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
            raise _while_planning(log) from None
        except Interrupted as e:
            if not str(e).startswith("interrupted while planning"):
                raise _while_planning(log) from None  # e.g. convert's "re-run convert to finish": nothing was applied
            raise
        except KeybuzzFixError as e:
            name_running(e, kube, cfg.namespace)
            raise
        finally:
            let_out(console, details)  # the steps' plans, after the summary (or, if planning stopped, what was planned)
        if brief:
            console.print("[dim]-v shows every command each worker will run and every object's and route's diff[/]")
        log.changes_pending = any(o.changes for o in planned) or bool(converting.pending) or bool(routes.changes)
        if options.dry_run:
            console.print("[yellow]all: dry run: nothing changed[/]")
            return Remediation(changes_pending=log.changes_pending)
        changing = [o for o in planned if o.changes]
        confirm(steps.question(target, len(changing), converting.changes, len(routes.changes)), yes=options.yes)
        # one run at a time changes this cluster, and the workers the ufw step changes
        held.enter_context(one_at_a_time("all", kube=kube, namespace=cfg.namespace, hosts=[o.host for o in changing]))
        log.rows.clear()

        # -- the steps, in order, each applying what was confirmed --------------------------------
        log.heading(1, "ufw", "applying")
        step("ufw", lambda: _apply_firewall(console, fw, planned), steps.describe_firewall_result)
        log.heading(2, "convert", "applying")
        shown = ChangeView(console, PlanOutput.TEXT, "convert")  # the backup, the readiness wait, the outcome
        step("convert", lambda: _apply_convert(kube, cfg, converting, shown, options, hosts), steps.describe_convert)
        log.heading(3, "ingress", "applying")
        step(
            "ingress",
            lambda: _apply_ingress(console, apply_ingress(kube, routes, command="all")),
            steps.describe_ingress_result,
        )
        log.heading(4, "validate", "scoring")
        # Just-applied routes, pods and rules take a moment to serve (ingress-nginx reloads, the apps
        # start): a failed URL round or worker path is tried again for a while before it counts.
        settle = SETTLE if routes.changes or converting.pending or any(o.changes for o in planned) else 0.0
        card = step(
            "validate",
            lambda: score_cluster(
                kube,
                cfg,
                hosts,
                http=http,
                threshold=options.threshold,
                strict=options.strict,
                access=WorkerAccess(reach.ssh, reach.concurrency),
                settle=settle,
            ),
            steps.describe_score,
        )
        scorecard_table(console, card)
    except (Aborted, Unanswered):
        raise  # answered no, or Ctrl-C at the question: the error line says nothing changed; the plan is on screen
    except KeybuzzFixError:
        log.summary("all: stopped")
        raise
    finally:
        held.close()
        fw.close()
    log.summary("all: done")
    log.next_steps(options.servers, overlay_now(hosts))
    if not card.ok:
        raise StepFailed(
            f"validate: score {card.score:.0f} % is below the threshold {card.required} % "
            "after every step ran: see the scorecard"
        )
    return Remediation(card)


def _while_planning(log: steps.StepLog) -> Interrupted:
    """Ctrl-C before the question: say which step was planning, and that nothing changed."""
    stopped = [step for step, status, *_rest in log.rows if status == "interrupted"]
    planned = [step for step, *_rest in log.rows]
    step = stopped[-1] if stopped else next((s for s in steps.STEPS if s not in planned), "validate")
    return Interrupted(f"interrupted while planning ({step}); nothing changed")


def _as_converted(kube: Kube, cfg: Config, hosts: Sequence[Host], options: AllOptions) -> list[Obj]:
    """The DaemonSets and Services as convert will make them: the firewall is planned for the cluster after convert."""
    plan = plan_convert(
        cfg,
        read_convert_state(kube, cfg, hosts),
        keep_port=options.keep_port,
        allow_managed=options.allow_managed,
    )
    return [c.after for c in plan.daemonsets + plan.services if c.after is not None]


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


def _apply_firewall(console: Console, fw: FirewallRun, planned: Sequence[HostOutcome]) -> list[HostOutcome]:
    applied = fw.apply(planned, progress_bar(console))
    firewall_summary(console, applied, "ufw: result")
    if any(o.failed for o in applied):
        raise StepFailed(steps.firewall_failed(applied))
    return applied


def _apply_convert(
    kube: Kube, cfg: Config, confirmed: ConvertPlan, view: ChangeView, options: AllOptions, hosts: Sequence[Host]
) -> ChangeRun:
    run = ChangeRun("convert", dry_run=False)
    apply_confirmed(
        kube,
        cfg,
        confirmed,
        run,
        view,
        keep_port=options.keep_port,
        timeout=options.ready_timeout,
        force=options.force_conflicts,
        allow_managed=options.allow_managed,
        workers=hosts,
    )
    return run


def _plan_ingress(console: Console, plan: IngressPlan, *, dry_run: bool, brief: bool) -> IngressPlan:
    ingress_plan(console, plan, dry_run=dry_run, brief=brief)
    if plan.failed:
        problems = "; ".join(
            [f.detail for f in plan.mismatches] + [p.describe() for r in plan.unserved for p in r.serving]
        )
        problems = problems or "a route cannot be applied (see above)"
        raise StepFailed(f"ingress: {problems}; nothing changed")
    return plan


def _apply_ingress(console: Console, plan: IngressPlan) -> IngressPlan:
    ingress_summary(console, plan, dry_run=False)
    if plan.failed:
        raise StepFailed("ingress: a route could not be applied (see above)")
    return plan
