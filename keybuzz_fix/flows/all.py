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

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keybuzz_fix.checks.http import HttpOptions
from keybuzz_fix.checks.ingress import IngressPlan
from keybuzz_fix.checks.scorecard import Scorecard
from keybuzz_fix.cluster.changes import ChangeRun
from keybuzz_fix.cluster.convert import ConvertPlan, plan_convert
from keybuzz_fix.cluster.lock import one_at_a_time
from keybuzz_fix.cluster.objects import Obj
from keybuzz_fix.config import Config
from keybuzz_fix.errors import Aborted, KeybuzzFixError, Unanswered
from keybuzz_fix.flows import Connections
from keybuzz_fix.flows.allplan import AllOptions, Plans, StepFailed, plan_all, step
from keybuzz_fix.flows.convert import apply_confirmed, overlay_now, read_convert_state
from keybuzz_fix.flows.firewall import worker_rules
from keybuzz_fix.flows.ingress import apply_ingress
from keybuzz_fix.flows.validate import WorkerAccess, score_cluster
from keybuzz_fix.hosts.ufw.apply import FirewallRun
from keybuzz_fix.hosts.ufw.run import HostOutcome
from keybuzz_fix.inventory import Host
from keybuzz_fix.report import steps
from keybuzz_fix.report.changes import ChangeView
from keybuzz_fix.report.hosts import firewall_summary
from keybuzz_fix.report.ingress import ingress_summary
from keybuzz_fix.report.output import PlanOutput, confirm, print_json, progress_bar
from keybuzz_fix.report.scorecard import scorecard_table

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.cluster.client import Kube

SETTLE = 30.0  # seconds the URL checks allow ingress-nginx to serve routes and endpoints that just changed


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
    target = steps.Target(kube.endpoint.server, kube.endpoint.source, options.servers, len(hosts), cfg.namespace)
    log.target(target)
    held = ExitStack()
    try:
        plan = plan_all(console, kube, cfg, hosts, fw, wanted, options, log)
        if options.dry_run:
            console.print("[yellow]all: dry run: nothing changed[/]")
            return Remediation(changes_pending=log.changes_pending)
        changing = [o for o in plan.firewall if o.changes]
        confirm(steps.question(target, len(changing), plan.convert.changes, len(plan.routes.changes)), yes=options.yes)
        # one run at a time changes this cluster, and the workers the ufw step changes
        held.enter_context(one_at_a_time("all", kube=kube, namespace=cfg.namespace, hosts=[o.host for o in changing]))
        log.rows.clear()
        card = _apply(console, kube, reach, hosts, cfg, fw, plan, options, log)
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


def _apply(
    console: Console,
    kube: Kube,
    reach: Connections,
    hosts: Sequence[Host],
    cfg: Config,
    fw: FirewallRun,
    plan: Plans,
    options: AllOptions,
    log: steps.StepLog,
) -> Scorecard:
    """Run the steps in order, each applying what was confirmed; then score the cluster."""
    log.heading(1, "ufw", "applying")
    step(log, "ufw", lambda: _apply_firewall(console, fw, plan.firewall), steps.describe_firewall_result)
    log.heading(2, "convert", "applying")
    shown = ChangeView(console, PlanOutput.TEXT, "convert")  # the backup, the readiness wait, the outcome
    step(log, "convert", lambda: _apply_convert(kube, cfg, plan.convert, shown, options, hosts), steps.describe_convert)
    log.heading(3, "ingress", "applying")
    step(
        log,
        "ingress",
        lambda: _apply_ingress(console, apply_ingress(kube, plan.routes, command="all")),
        steps.describe_ingress_result,
    )
    log.heading(4, "validate", "scoring")
    # Just-applied routes, pods and rules take a moment to serve (ingress-nginx reloads, the apps
    # start): a failed URL round or worker path is tried again for a while before it counts.
    settle = SETTLE if log.changes_pending else 0.0
    card = step(
        log,
        "validate",
        lambda: score_cluster(
            kube,
            cfg,
            hosts,
            http=reach.http or HttpOptions(),
            threshold=options.threshold,
            strict=options.strict,
            access=WorkerAccess(reach.ssh, reach.concurrency),
            settle=settle,
        ),
        steps.describe_score,
    )
    scorecard_table(console, card)
    return card


def _as_converted(kube: Kube, cfg: Config, hosts: Sequence[Host], options: AllOptions) -> list[Obj]:
    """The DaemonSets and Services as convert will make them: the firewall is planned for the cluster after convert."""
    plan = plan_convert(
        cfg,
        read_convert_state(kube, cfg, hosts),
        keep_port=options.keep_port,
        allow_managed=options.allow_managed,
    )
    return [c.after for c in plan.daemonsets + plan.services if c.after is not None]


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


def _apply_ingress(console: Console, plan: IngressPlan) -> IngressPlan:
    ingress_summary(console, plan, dry_run=False)
    if plan.failed:
        raise StepFailed("ingress: a route could not be applied (see above)")
    return plan
