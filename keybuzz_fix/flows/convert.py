"""The imperative shell of ``convert``: observe, plan, back up, apply, wait, switch, delete, report.

1. Read everything (through :mod:`keybuzz_fix.cluster.client`) and compute the plan (pure).
   Refusals stop here; ``--dry-run`` shows the plan and sends every write as a server-side dry run.
2. Check the permissions every write needs, ask once, write the backup (no backup, no change).
3. Server-side apply the DaemonSets and wait, by watching, until every scheduled pod is ready.
   Too slow: stop, delete nothing, report the stuck pods and their events.
4. Switch the Services, delete the HPAs, then the Deployments (uid preconditions).
Each step is audited. An interrupted run (Ctrl-C, an API error) says what it did and converges
when re-run. ``all`` plans with :func:`check_plan` and applies the confirmed plan with
:func:`carry_out`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from keybuzz_fix import storage
from keybuzz_fix.cluster import backup
from keybuzz_fix.cluster.changes import ChangeRun, sent
from keybuzz_fix.cluster.client import Kube
from keybuzz_fix.cluster.convert import ConvertPlan, plan_convert
from keybuzz_fix.cluster.lock import one_at_a_time, running_now
from keybuzz_fix.cluster.objects import Obj, meta_of, name_of, parse_objects
from keybuzz_fix.cluster.observed import OVERLAY_RECORD, Observed, OverlaySeen, observed_from_objects, overlay_seen
from keybuzz_fix.cluster.rbac import permissions, preflight
from keybuzz_fix.cluster.rollout import Stuck, send, wait_handover, wait_ready
from keybuzz_fix.config import Config
from keybuzz_fix.errors import Forbidden, InputError, Interrupted, KeybuzzFixError, PlanRefused, read_input
from keybuzz_fix.flows import Connections
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.changes import ChangeView, offline_json, offline_plan
from keybuzz_fix.report.output import PlanOutput, print_json
from keybuzz_fix.report.steps import deleting

if TYPE_CHECKING:
    from rich.console import Console

CONVERT = "convert"
DEFAULT_TIMEOUT = 300.0


def read_convert_state(kube: Kube, cfg: Config, workers: Sequence[Host] | None = None) -> Observed:
    """Read what the plan needs: workloads and Services everywhere (for collisions), HPAs, PDBs, nodes.

    ``workers`` (servers.tsv's) are the nodes each DaemonSet must reach; None: the cluster's workers.
    """
    observed = Observed(  # read in this order: a missing permission is named for the first list it stops
        namespace=cfg.namespace,
        deployments=kube.list("Deployment"),
        daemonsets=kube.list("DaemonSet"),
        statefulsets=kube.list("StatefulSet"),
        services=kube.list("Service"),
        hpas=kube.list("HorizontalPodAutoscaler", cfg.namespace),
        nodes=kube.list("Node"),
        service_cidr=cfg.overlay.service_cidr,
        pdbs=_disruption_budgets(kube, cfg.namespace),
        workers=workers,
    )
    return dataclasses.replace(observed, overlay=overlay_now(workers, observed.nodes or ()))


def overlay_now(workers: Sequence[Host] | None, nodes: Sequence[Obj] = ()) -> OverlaySeen | None:
    """What the last diagnose saw of the overlay of these workers (else of the cluster's Nodes); None if unknown."""
    if workers:
        names: dict[str, str | None] = {h.hostname: h.private_ip for h in workers}
    else:
        names = {name_of(n): None for n in nodes}
    return overlay_seen(storage.read_record(OVERLAY_RECORD), names, dt.datetime.now(dt.UTC))


def _disruption_budgets(kube: Kube, namespace: str) -> list[Obj]:
    """The namespace's PodDisruptionBudgets: only shown in the plan, so a Role without them goes on without."""
    try:
        return kube.list("PodDisruptionBudget", namespace)
    except Forbidden:
        return []


def run_convert(
    console: Console,
    reach: Connections,
    cfg: Config,
    *,
    dry_run: bool = False,
    yes: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    force_conflicts: bool = False,
    keep_port: bool = False,
    allow_managed: bool = False,
    workers: Sequence[Host] | None = None,
    show_values: bool = False,
    output: PlanOutput = PlanOutput.TEXT,
) -> ChangeRun:
    """Convert the configured Deployments into hostNetwork DaemonSets; return what was done.

    ``output`` is text, json (a summary on stdout) or yaml (with ``dry_run``: the objects that would
    be applied). Errors are raised as the tool's own, after the summary is shown.
    """
    kube = reach.kube()
    view = ChangeView(console, output, CONVERT, show_values=show_values)
    run = ChangeRun(CONVERT, dry_run)
    return _convert(kube, cfg, view, run, yes, timeout, force_conflicts, keep_port, allow_managed, workers)


def _convert(
    kube: Kube,
    cfg: Config,
    view: ChangeView,
    run: ChangeRun,
    yes: bool,
    timeout: float,
    force_conflicts: bool,
    keep_port: bool,
    allow_managed: bool,
    workers: Sequence[Host] | None,
) -> ChangeRun:
    dry_run = run.dry_run
    try:
        plan = check_plan(
            kube,
            cfg,
            run,
            view,
            keep_port=keep_port,
            force=force_conflicts,
            allow_managed=allow_managed,
            workers=workers,
        )
    except KeybuzzFixError as e:
        name_running(e, kube, cfg.namespace)
        raise
    if plan.pending and not dry_run:
        with ExitStack() as held:
            with _stopping(view, run):
                view.confirm(
                    f"Apply {len(plan.pending)} change(s) in namespace {cfg.namespace}{deleting(plan.changes)}, "
                    f"on {kube.endpoint.server} ({kube.endpoint.source})?",
                    yes=yes,
                )
                # one run at a time changes the cluster: a second one stops here, before its backup
                held.enter_context(one_at_a_time(CONVERT, kube=kube, namespace=cfg.namespace))
            carry_out(kube, plan, run, view, timeout=timeout, force=force_conflicts)
    view.finished(run)
    return run


def name_running(error: KeybuzzFixError, kube: Kube, namespace: str) -> None:
    """Add to a planning error the run that holds this namespace's Lease, if one does: its changes may be why."""
    if not isinstance(error, Interrupted) and (who := running_now(kube, namespace)) is not None:
        error.message += f"; another keybuzz-fix run is changing this cluster right now: {who}; re-run once it ends"


def check_plan(
    kube: Kube,
    cfg: Config,
    run: ChangeRun,
    view: ChangeView,
    *,
    keep_port: bool,
    force: bool,
    allow_managed: bool = False,
    workers: Sequence[Host] | None = None,
    confirm_first: bool = False,
) -> ConvertPlan:
    """Plan and show it; refuse, or check the permissions (a dry run sends every change as a server-side dry run).

    ``confirm_first``: the dry run checks a plan the operator is about to confirm (``all``), not a
    ``--dry-run``: the headings say so.
    """
    with _stopping(view, run):
        state = read_convert_state(kube, cfg, workers)
        plan = plan_convert(cfg, state, keep_port=keep_port, allow_managed=allow_managed)
        _record(run, plan)
        if plan.refusals:
            _show(view, f"{CONVERT}: refused", plan)
            raise PlanRefused(f"convert refused: {'; '.join(plan.refusals)}; nothing changed")
        view.objects(plan)
        suffix = " (applied once you confirm)" if confirm_first else " (dry run)" if run.dry_run else ""
        _show(view, f"{CONVERT}: plan for namespace {cfg.namespace}{suffix}", plan)
        if not plan.pending:
            view.nothing_to_do("already converted")
            return plan
        preflight(kube, cfg.namespace, permissions(plan.pending, wait_kind="DaemonSet"))
        if run.dry_run:
            send(kube, run, plan.pending, dry_run=True, force=force)
            view.accepted_by_server(len(plan.pending), before_confirm=confirm_first)
    return plan


def apply_confirmed(
    kube: Kube,
    cfg: Config,
    confirmed: ConvertPlan,
    run: ChangeRun,
    view: ChangeView,
    *,
    keep_port: bool,
    timeout: float,
    force: bool,
    allow_managed: bool = False,
    workers: Sequence[Host] | None = None,
) -> None:
    """Carry out a plan confirmed earlier, once the cluster, read again, still plans exactly the same changes.

    The backup must hold the objects as they are now; if they changed since the confirmation, so
    would the plan: then nothing is changed and the run stops, to be re-run (and re-confirmed).
    """
    with _stopping(view, run):
        state = read_convert_state(kube, cfg, workers)
        fresh = plan_convert(cfg, state, keep_port=keep_port, allow_managed=allow_managed)
        if sent(fresh.changes) != sent(confirmed.changes) or fresh.refusals != confirmed.refusals:
            raise PlanRefused(
                "convert: the cluster changed after the plan was confirmed, so the plan would change too; "
                "nothing changed; re-run to see the new plan"
            )
        _record(run, confirmed)
    if confirmed.pending:
        carry_out(kube, confirmed, run, view, timeout=timeout, force=force)


def carry_out(kube: Kube, plan: ConvertPlan, run: ChangeRun, view: ChangeView, *, timeout: float, force: bool) -> None:
    """Back up, apply the DaemonSets, wait until they are ready, then switch the Services and delete the rest.

    A DaemonSet whose pods the Deployment's own pods hold off (required anti-affinity) is waited for
    but those pods; once the rest are switched and deleted, they start, and the run waits for them.
    """
    namespace = plan.daemonsets[0].namespace
    names = [c.name for c in plan.daemonsets]
    deadline = time.monotonic() + timeout
    with _stopping(view, run):
        run.backup = _write_backup(kube, plan, namespace)
        run.mark("backed_up")
        view.say(f"backup: {run.backup}")
        send(kube, run, plan.daemonsets, force=force)
        run.mark("applied")
        view.waiting("DaemonSet", names, timeout)
        if plan.handovers:
            wait_handover(kube, namespace, names, plan.handovers, timeout=timeout, progress=view.readiness)
            run.mark("handed_over")
        else:
            wait_ready(kube, "DaemonSet", namespace, names, timeout=timeout, progress=view.readiness)
            run.mark("ready")
        send(kube, run, plan.services + plan.hpas + plan.deployments, force=force)
    if plan.handovers:
        held = ", ".join(h.daemonset for h in plan.handovers)
        with stopping(
            view,
            run,
            resume="re-run convert to finish (it converges)",
            interrupted="re-run convert to finish: it converges",
            stuck=f"the Services are switched and the Deployments deleted; the other pods of {held} serve the app; "
            "re-run convert once the pods run, or roll back with: keybuzz-fix rollback --backup {backup}",
        ):
            remaining = max(deadline - time.monotonic(), 1.0)
            view.say(f"the Deployment's pods are gone: waiting for the rest of {held}…")
            wait_ready(kube, "DaemonSet", namespace, names, timeout=remaining, progress=view.readiness)
            run.mark("ready")
    run.mark("done")
    view.result(run)


@contextmanager
def stopping(view: ChangeView, run: ChangeRun, *, resume: str, interrupted: str, stuck: str = "") -> Iterator[None]:
    """Stop a run on an error or Ctrl-C: say what was done and how to go on, record it, show it, re-raise.

    ``resume`` (after an error, once something changed), ``interrupted`` (after Ctrl-C) and ``stuck``
    (pods not ready; ``{backup}`` is the backup's path) say how to go on.
    """
    try:
        yield
    except KeyboardInterrupt:
        raise _stopped(view, run, Interrupted(f"interrupted (Ctrl-C): {run.progress()}; {interrupted}")) from None
    except KeybuzzFixError as e:
        if run.backup is not None and not run.done and not run.dry_run:
            # The API server refused the first change: nothing changed, so this backup is of no
            # run, and `rollback --latest` must not pick it.
            run.backup.unlink(missing_ok=True)
            run.backup = None
            e.message += "; nothing changed"
        if isinstance(e, Stuck):
            view.stuck(e.pods)
        if isinstance(e, Stuck) and stuck:
            e.message += f"; {run.progress()}; {stuck.format(backup=run.backup)}"
        elif run.backup is not None:
            e.message += f"; {run.progress()}; {resume}"
        raise _stopped(view, run, e) from None


def _stopped(view: ChangeView, run: ChangeRun, error: KeybuzzFixError) -> KeybuzzFixError:
    run.stop(error)
    view.stopped(run)
    return error


def _stopping(view: ChangeView, run: ChangeRun) -> AbstractContextManager[None]:
    return stopping(
        view,
        run,
        resume="re-run convert to finish (it converges)",
        interrupted="re-run convert to finish: it converges",
        stuck="nothing was deleted; re-run convert once the pods run, or roll back with: "
        "keybuzz-fix rollback --backup {backup}",
    )


def _write_backup(kube: Kube, plan: ConvertPlan, namespace: str) -> Path:
    objects = plan.to_back_up
    server = kube.endpoint.server
    history = backup.history(CONVERT)
    previous = None
    if history:
        try:
            previous = backup.read_backup(history[0])
        except InputError:
            previous = None
    live = [str(meta_of(c.before).get("uid")) for c in plan.deployments if c.before is not None]
    cluster = kube.cluster_identity()
    extra = backup.carried(previous, objects, live, server=server, namespace=namespace, cluster=cluster)
    return backup.write(
        objects + extra,
        command=CONVERT,
        server=server,
        namespace=namespace,
        cluster=cluster,
        carried_from=previous.path if extra and previous else None,
    )


def _record(run: ChangeRun, plan: ConvertPlan) -> None:
    run.changes, run.refusals, run.warnings, run.notes = plan.changes, plan.refusals, plan.warnings, plan.notes
    run.mark("planned")


def _show(view: ChangeView, title: str, plan: ConvertPlan) -> None:
    view.plan(
        title,
        plan.changes,
        refusals=plan.refusals,
        warnings=plan.warnings,
        notes=plan.notes,
        shown_env=plan.shown_env,
    )


def run_offline(
    console: Console,
    path: Path,
    cfg: Config,
    *,
    keep_port: bool = False,
    allow_managed: bool = False,
    workers: Sequence[Host] | None = None,
    show_values: bool = False,
    output: PlanOutput = PlanOutput.TEXT,
) -> ConvertPlan:
    """Plan from a state file (a ``kubectl get -o yaml`` List or a YAML stream); touch no cluster.

    The workers are checked against the file's Nodes, when it holds some.
    """
    objects = parse_objects(read_input(path), str(path))
    if not objects:
        raise InputError(str(path), "holds no Kubernetes object")
    state = observed_from_objects(objects, cfg, workers)
    plan = plan_convert(cfg, state, keep_port=keep_port, allow_managed=allow_managed)
    if plan.refusals:
        refused = PlanRefused(f"{path}: convert refused: {'; '.join(plan.refusals)}")
        if output is PlanOutput.JSON:
            print_json(offline_json(plan, str(refused)))
        else:
            _show(ChangeView(console, output, CONVERT, show_values=show_values), f"{CONVERT}: refused ({path})", plan)
        raise refused
    offline_plan(console, plan, path, output, show_values=show_values)
    return plan
