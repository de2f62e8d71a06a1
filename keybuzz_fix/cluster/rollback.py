"""``rollback``: put back what a convert backup holds, in the order that keeps the apps served.

Plan (pure): recreate the Deployments and HPAs that are gone, restore each Service's type and
ports, and delete the DaemonSets convert made (only those labelled managed-by keybuzz-fix, with a
uid precondition). Run: back up what will change, create, wait by watching until the Deployments
are ready, restore the Services, then delete the DaemonSets. Objects already as in the backup
are left alone, so a second rollback is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from keybuzz_fix import storage as state
from keybuzz_fix.cluster import backup
from keybuzz_fix.cluster.changes import Change, RunResult, Verb
from keybuzz_fix.cluster.objects import Obj, managed_by_us, meta, name_of, strip_server_fields
from keybuzz_fix.cluster.rollout import Stuck, wait_ready
from keybuzz_fix.errors import Interrupted, KeybuzzFixError
from keybuzz_fix.flows.convert import permissions, preflight
from keybuzz_fix.flows.firewall import confirm
from keybuzz_fix.report import hosts as report

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.cluster.client import Kube

COMMAND = "rollback"
_RESTORED = ("Deployment", "HorizontalPodAutoscaler")


@dataclass(frozen=True)
class RollbackPlan:
    """What rollback would do, in order."""

    creates: tuple[Change, ...]  # Deployments, then HPAs
    services: tuple[Change, ...]
    daemonsets: tuple[Change, ...]
    warnings: tuple[str, ...]

    @property
    def changes(self) -> tuple[Change, ...]:
        """Every change, in the order they are carried out."""
        return self.creates + self.services + self.daemonsets

    @property
    def pending(self) -> list[Change]:
        """The changes that modify the cluster."""
        return [c for c in self.changes if c.changes]

    @property
    def deployments(self) -> list[str]:
        """The Deployments to wait for."""
        return [c.name for c in self.creates if c.kind == "Deployment"]


def plan_rollback(saved: Sequence[Obj], live: Sequence[Obj]) -> RollbackPlan:
    """Plan the restore of ``saved`` (a backup's objects) over ``live`` (the same kinds, as read now)."""
    now = {(o.get("kind"), meta(o).get("namespace"), name_of(o)): o for o in live}
    creates: list[Change] = []
    services: list[Change] = []
    daemonsets: list[Change] = []
    warnings: list[str] = []
    order = {kind: i for i, kind in enumerate(_RESTORED)}
    for obj in sorted(saved, key=lambda o: order.get(str(o.get("kind")), len(order))):
        kind, ns, name = str(obj.get("kind")), str(meta(obj).get("namespace")), name_of(obj)
        current = now.get((kind, ns, name))
        if kind in _RESTORED:
            if current is not None:
                creates.append(Change(Verb.NONE, kind, ns, name, "exists"))
            else:
                body = strip_server_fields(obj)
                creates.append(Change(Verb.CREATE, kind, ns, name, "restore from the backup", body=body, after=body))
        elif kind == "Service":
            services.append(_service_restore(obj, current))
        elif kind != "DaemonSet":  # a DaemonSet in a backup is convert's own earlier output
            warnings.append(f"{kind} {ns}/{name} in the backup is not restored by rollback")
    for obj in saved:
        if obj.get("kind") != "Deployment":
            continue
        ns, name = str(meta(obj).get("namespace")), name_of(obj)
        ds = now.get(("DaemonSet", ns, name))
        if ds is None:
            continue
        if not managed_by_us(ds):
            warnings.append(f"DaemonSet {ns}/{name} is not managed by keybuzz-fix: left alone")
            continue
        daemonsets.append(
            Change(
                Verb.DELETE,
                "DaemonSet",
                ns,
                name,
                f"Deployment {name} runs the app again",
                before=ds,
                uid=meta(ds).get("uid"),
            )
        )
    return RollbackPlan(tuple(creates), tuple(services), tuple(daemonsets), tuple(warnings))


def _service_restore(saved: Obj, current: Obj | None) -> Change:
    ns, name = str(meta(saved).get("namespace")), name_of(saved)
    want = saved.get("spec") or {}
    if current is None:
        body = strip_server_fields(saved)
        return Change(Verb.CREATE, "Service", ns, name, "restore from the backup", body=body, after=body)
    have = current.get("spec") or {}
    restored = {
        "type": want.get("type", "ClusterIP"),
        "ports": want.get("ports") or [],
        "externalTrafficPolicy": want.get("externalTrafficPolicy"),
    }
    if all(have.get(k) == v for k, v in restored.items()):
        return Change(Verb.NONE, "Service", ns, name, "already as in the backup")
    after = strip_server_fields(current)
    after["spec"] = {k: v for k, v in {**have, **restored}.items() if v is not None}
    reason = (
        f"type {have.get('type')} → {restored['type']}, ports as in the backup; clusterIP {have.get('clusterIP')} kept"
    )
    return Change(
        Verb.PATCH,
        "Service",
        ns,
        name,
        reason,
        before=current,
        after=after,
        body={"metadata": {"resourceVersion": meta(current).get("resourceVersion")}, "spec": restored},
    )


def observe(kube: Kube, saved: Sequence[Obj]) -> list[Obj]:
    """Read the live objects the plan compares the backup with."""
    namespaces = sorted({str(meta(o).get("namespace")) for o in saved})
    live: list[Obj] = []
    for ns in namespaces:
        for kind in ("Deployment", "HorizontalPodAutoscaler", "Service", "DaemonSet"):
            live += kube.list(kind, ns)
    return live


def run_rollback(
    console: Console,
    kube: Kube,
    path: Path,
    *,
    dry_run: bool = False,
    yes: bool = False,
    timeout: float = 300.0,
    output: str = "text",
) -> RunResult:
    """Restore the objects of backup ``path``; return what was done."""
    text = output == "text"
    result = RunResult(COMMAND, dry_run)
    start = time.monotonic()
    saved = backup.load(path)
    if saved.server and saved.server != kube.endpoint.server and text:
        console.print(f"[yellow]note[/]: {path} was taken from {saved.server}; now connected to {kube.endpoint.server}")
    try:
        plan = plan_rollback(saved.objects, observe(kube, saved.objects))
        result.changes, result.warnings = plan.changes, plan.warnings
        pending = plan.pending
        if text:
            report.change_plan(
                console,
                f"{COMMAND}: plan from {path}" + (" (dry run)" if dry_run else ""),
                plan.changes,
                warnings=plan.warnings,
            )
        if not pending:
            if text:
                console.print(f"[green]{COMMAND}: nothing to do[/]: the cluster already matches {path}")
            return result.finish(output)
        namespace = pending[0].namespace
        preflight(kube, namespace, permissions(pending, wait_kind="Deployment" if plan.deployments else None))
        if dry_run:
            result.send(kube, pending, dry_run=True)
            if text:
                console.print(
                    f"[yellow]dry run[/]: the API server accepted all {len(pending)} change(s); nothing changed"
                )
            return result.finish(output)
        confirm(console, f"Restore {len(pending)} object(s) from {path.name}?", yes=yes)
        undo = [c.before for c in pending if c.before is not None]
        result.backup = backup.write(undo, command=COMMAND, server=kube.endpoint.server, namespace=namespace)
        state.audit(COMMAND, str(result.backup), "backup", "ok", objects=len(undo), restoring=str(path))
        if text:
            console.print(f"backup of what rollback changes: {result.backup}")
        result.send(kube, plan.creates)
        if plan.deployments:
            if text:
                console.print(
                    f"waiting for Deployment(s) {', '.join(plan.deployments)} to be ready (timeout {timeout:g}s)…"
                )
            wait_ready(kube, "Deployment", namespace, plan.deployments, timeout=timeout)
        result.timings["ready"] = time.monotonic() - start
        result.send(kube, plan.services + plan.daemonsets)
    except KeyboardInterrupt:
        raise result.fail(
            console, output, Interrupted(f"interrupted (Ctrl-C): {result.progress()}; re-run rollback to finish")
        ) from None
    except KeybuzzFixError as e:
        if isinstance(e, Stuck) and text:
            report.stuck_pods(console, e.pods)
        if result.backup is not None:
            e.message += f"; {result.progress()}; the DaemonSets still serve; re-run rollback to finish"
        raise result.fail(console, output, e) from None
    result.timings["done"] = time.monotonic() - start
    if text:
        report.change_summary(console, f"{COMMAND}: result", plan.changes, result.outcome)
    return result.finish(output)
