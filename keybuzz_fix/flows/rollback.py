"""The imperative shell of ``rollback``: read the backup and the cluster, plan, back up, restore, report.

Recreate the Deployments and HPAs, wait (by watching) until the Deployments are ready, restore
the Services, then delete the DaemonSets convert made; what it changes is backed up first. The
plan is :mod:`keybuzz_fix.cluster.rollback`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from keybuzz_fix.cluster import backup
from keybuzz_fix.cluster.changes import ChangeRun
from keybuzz_fix.cluster.client import Kube
from keybuzz_fix.cluster.lock import one_at_a_time
from keybuzz_fix.cluster.objects import Obj, meta_of
from keybuzz_fix.cluster.rbac import permissions, preflight
from keybuzz_fix.cluster.rollback import LIVE_KINDS, plan_rollback
from keybuzz_fix.cluster.rollout import send, wait_ready
from keybuzz_fix.errors import UsageError
from keybuzz_fix.flows import Connections
from keybuzz_fix.flows.convert import stopping
from keybuzz_fix.report.changes import ChangeView
from keybuzz_fix.report.output import Output, verbosity
from keybuzz_fix.report.steps import deleting

if TYPE_CHECKING:
    from rich.console import Console

ROLLBACK = "rollback"


def read_live(kube: Kube, saved: Sequence[Obj]) -> list[Obj]:
    """Read the live objects the plan compares the backup with."""
    live: list[Obj] = []
    for ns in sorted({str(meta_of(o).get("namespace")) for o in saved}):
        for kind in LIVE_KINDS:
            live += kube.list(kind, ns)
    return live


def run_rollback(
    console: Console,
    reach: Connections,
    path: Path,
    *,
    dry_run: bool = False,
    yes: bool = False,
    timeout: float = 300.0,
    output: Output = Output.TEXT,
    force_cluster: bool = False,
) -> ChangeRun:
    """Restore the objects of backup ``path``; return what was done.

    A backup taken from another cluster (its kube-system uid differs) is refused unless
    ``force_cluster``; one that records no cluster (an older version wrote it) gets a warning.
    """
    saved = backup.read_backup(path)
    wanted = reach.cluster.namespace if reach.cluster is not None else None
    if wanted and saved.namespace and wanted != saved.namespace:
        raise UsageError(f"{path} holds objects of namespace {saved.namespace}, not {wanted} (-n)")
    kube = reach.kube()
    # Before the question each change on one line; its diff is what -v (or --dry-run, which asks for the plan) adds
    diffs = dry_run or verbosity() > 0
    view = ChangeView(console, output, ROLLBACK, diffs=diffs)
    run = ChangeRun(ROLLBACK, dry_run)
    identity = kube.cluster_identity()
    warning = backup.cluster_check(saved, identity, kube.endpoint.server, force=force_cluster)
    if warning:
        run.warnings = (warning,)
        view.say(f"[yellow]warning[/]: {warning}")
    with (
        ExitStack() as held,
        stopping(
            view,
            run,
            resume="the DaemonSets still serve; re-run rollback to finish",
            interrupted="re-run rollback to finish",
        ),
    ):
        plan = plan_rollback(saved.objects, read_live(kube, saved.objects))
        run.changes, run.warnings = plan.changes, run.warnings + plan.warnings
        view.plan(
            f"{ROLLBACK}: plan from {path}" + (" (dry run)" if dry_run else ""), plan.changes, warnings=plan.warnings
        )
        pending = plan.pending
        if not pending:
            view.nothing_to_do(f"the cluster already matches {path}")
            view.finished(run)
            return run
        namespace = pending[0].namespace
        preflight(kube, namespace, permissions(pending, wait_kind="Deployment" if plan.deployments else None))
        if dry_run:
            send(kube, run, pending, dry_run=True)
            view.accepted_by_server(len(pending))
            view.finished(run)
            return run
        if not diffs:
            view.say("[dim]-v shows each object's diff[/]")
        view.confirm(
            f"Restore {len(pending)} object(s) from {path.name} in namespace {namespace}{deleting(pending)}, "
            f"on {kube.endpoint.server} ({kube.endpoint.source})?",
            yes=yes,
        )
        held.enter_context(one_at_a_time(ROLLBACK, kube=kube, namespace=namespace))  # one run at a time
        undo = [c.before for c in pending if c.before is not None]
        run.backup = backup.write(
            undo,
            command=ROLLBACK,
            server=kube.endpoint.server,
            namespace=namespace,
            cluster=identity,
            restoring=str(path),
        )
        view.say(f"backup of what rollback changes: {run.backup}")
        send(kube, run, plan.creates)
        if plan.deployments:
            view.waiting("Deployment", plan.deployments, timeout)
            wait_ready(kube, "Deployment", namespace, plan.deployments, timeout=timeout, progress=view.readiness)
        run.mark("ready")
        send(kube, run, plan.services + plan.daemonsets)
    run.mark("done")
    view.result(run)
    view.finished(run)
    return run
