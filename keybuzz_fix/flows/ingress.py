"""The imperative shell of ``ingress``: check ingress-nginx, plan the routes with a server-side dry run, apply.

The controller is read here and judged by :mod:`keybuzz_fix.checks.ingress`, never changed.
Planning sends every route (:mod:`keybuzz_fix.cluster.ingress`) as a server-side dry-run apply, so
a conflict shows up before anything is written; applying repeats the apply for real, only for the
routes that change, and records each write in the audit log. ``all`` plans with
:func:`plan_ingress` and applies the confirmed plan with :func:`apply_ingress`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from keybuzz_fix import storage
from keybuzz_fix.checks.ingress import IngressPlan, check_controller
from keybuzz_fix.cluster.client import Kube
from keybuzz_fix.cluster.ingress import (
    RoutePlan,
    RouteStatus,
    ServingFacts,
    build_ingresses,
    controller_class,
    describe_route,
    key_of,
    referenced_secrets,
    route_diff,
    route_status,
    serving_problems,
)
from keybuzz_fix.cluster.lock import one_at_a_time
from keybuzz_fix.cluster.objects import Obj, name_of
from keybuzz_fix.cluster.scheduling import is_worker_node, worker_nodes
from keybuzz_fix.config import Config, IngressConfig
from keybuzz_fix.errors import ClusterError, Conflict, Interrupted, KeybuzzFixError
from keybuzz_fix.flows import Connections
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.ingress import ingress_json, ingress_plan, ingress_summary
from keybuzz_fix.report.output import Output, confirm, print_json

if TYPE_CHECKING:
    from rich.console import Console


def plan_ingress(
    kube: Kube, cfg: Config, workers: Sequence[Host] | None = None, *, force_conflicts: bool = False
) -> IngressPlan:
    """Check the controller and dry-run every route; change nothing.

    ``workers`` are the servers.tsv workers that must each run a controller pod; ``None`` takes
    the cluster's worker Nodes (no control-plane role).
    """
    found = read_controller(kube, cfg.ingress, workers)
    facts = check_controller(
        cfg.ingress,
        daemonset=found.daemonset,
        deployment=found.deployment,
        pods=found.pods,
        service=found.service,
        workers=found.workers,
    )
    routes = plan_routes(kube, cfg, force=force_conflicts)
    serving = read_serving(kube, cfg, found.daemonset or found.deployment, [r.after or r.desired for r in routes])
    routes = tuple(replace(r, serving=tuple(serving_problems(r.after or r.desired, serving))) for r in routes)
    return IngressPlan(tuple(facts), routes, force_conflicts)


def read_serving(kube: Kube, cfg: Config, controller: Obj | None, routes: Sequence[Obj]) -> ServingFacts:
    """Read what ingress-nginx decides by: every Ingress and IngressClass, the routes' Services and TLS Secrets."""
    services = {key_of(s): s for s in kube.list("Service", cfg.namespace)}
    secrets = frozenset(f"{ns}/{name}" for ns, name in referenced_secrets(routes) if kube.exists("Secret", name, ns))
    return ServingFacts(
        ingresses=tuple(kube.list("Ingress")),
        classes=tuple(kube.list("IngressClass")),
        services=services,
        secrets=secrets,
        controller=controller_class(controller),
    )


def apply_ingress(kube: Kube, plan: IngressPlan, *, command: str = "ingress") -> IngressPlan:
    """Apply the routes the plan changes; return the plan with each route's outcome."""
    return replace(plan, routes=apply_routes(kube, plan.routes, force=plan.force_conflicts, command=command))


def run_ingress(
    console: Console,
    reach: Connections,
    cfg: Config,
    workers: Sequence[Host] | None = None,
    *,
    dry_run: bool = False,
    yes: bool = False,
    force_conflicts: bool = False,
    output: Output = Output.TEXT,
) -> IngressPlan:
    """Check, plan, show, ask once, apply and report; return the outcome."""
    kube = reach.kube()
    plan = plan_ingress(kube, cfg, workers, force_conflicts=force_conflicts)
    quiet = output is Output.JSON
    if not quiet:
        ingress_plan(console, plan, dry_run=dry_run)
    if not dry_run and plan.changes:
        confirm(f"Apply {len(plan.changes)} Ingress route(s)?", yes=yes)
        try:
            with one_at_a_time("ingress", kube=kube, namespace=cfg.namespace):  # one run at a time changes the cluster
                plan = apply_ingress(kube, plan)
        except KeybuzzFixError as e:
            if quiet:  # -o json: one document also when the run stops (the lock is held, a write failed)
                print_json(ingress_json(plan, dry_run=dry_run, error=e))
            raise
    if quiet:
        print_json(ingress_json(plan, dry_run=dry_run))
    else:
        ingress_summary(console, plan, dry_run=dry_run)
    return plan


def plan_routes(kube: Kube, cfg: Config, *, force: bool = False) -> tuple[RoutePlan, ...]:
    """Dry-run every configured route; change nothing."""
    return tuple(_plan_route(kube, obj, force) for obj in build_ingresses(cfg))


def _plan_route(kube: Kube, desired: Obj, force: bool) -> RoutePlan:
    meta = desired["metadata"]
    try:
        live = kube.get("Ingress", meta["name"], meta["namespace"])
    except ClusterError as e:
        return RoutePlan(desired, None, RouteStatus.FAILED, error=str(e))
    try:
        after = kube.apply(desired, dry_run=True, force=force)
    except Conflict as e:
        return RoutePlan(desired, live, RouteStatus.CONFLICT, error=str(e))
    except ClusterError as e:
        return RoutePlan(desired, live, RouteStatus.FAILED, error=str(e))
    status = route_status(live, after)
    diff = route_diff(live, after, f"Ingress {meta['namespace']}/{meta['name']}")
    return RoutePlan(desired, live, status, diff, after=after)


def apply_routes(kube: Kube, routes: Sequence[RoutePlan], *, force: bool, command: str) -> tuple[RoutePlan, ...]:
    """Apply the routes that change; return every route with its outcome.

    Ctrl-C stops between routes, or during one: the error says which routes were applied, which
    was in flight (it may or may not have landed) and which were not applied.
    """
    done: list[RoutePlan] = []
    for r in routes:
        if not r.status.changes:
            done.append(r)
            continue
        status = RouteStatus.CREATED if r.status is RouteStatus.CREATE else RouteStatus.UPDATED
        where = f"Ingress {r.name}"
        try:
            after = kube.apply(r.desired, force=force)
        except KeyboardInterrupt:
            storage.audit(command, where, r.status.value, "unknown", before=describe_route(r.live), error="Ctrl-C")
            raise Interrupted(_interrupted_routes(done, r, routes[len(done) + 1 :])) from None
        except ClusterError as e:
            failed = RouteStatus.CONFLICT if isinstance(e, Conflict) else RouteStatus.FAILED
            storage.audit(command, where, r.status.value, "failed", before=describe_route(r.live), error=str(e))
            done.append(replace(r, status=failed, error=str(e)))
            continue
        storage.audit(
            command,
            where,
            r.status.value,
            "ok",
            before=describe_route(r.live),
            after=describe_route(after),
            force_conflicts=force,
        )
        done.append(replace(r, status=status))
    return tuple(done)


def _interrupted_routes(done: Sequence[RoutePlan], current: RoutePlan, rest: Sequence[RoutePlan]) -> str:
    """Say, after Ctrl-C while applying, where each route stands."""
    applied = [r.name for r in done if r.status in (RouteStatus.CREATED, RouteStatus.UPDATED)]
    failed = [r.name for r in done if r.status in (RouteStatus.FAILED, RouteStatus.CONFLICT)]
    pending = [r.name for r in rest if r.status.changes]
    parts = [f"applied: {', '.join(applied) or 'none'}"]
    if failed:
        parts.append(f"failed: {', '.join(failed)}")
    parts.append(f"in flight, may or may not be applied: {current.name}")
    parts.append(f"not applied: {', '.join(pending) or 'none'}")
    return f"interrupted (Ctrl-C) while applying the Ingress routes: {'; '.join(parts)}; re-run ingress to finish"


@dataclass(frozen=True)
class ControllerState:
    """ingress-nginx as read from the API: its DaemonSet (or Deployment), pods and Service, and each worker's Node."""

    daemonset: Obj | None
    deployment: Obj | None
    pods: Sequence[Obj]
    service: Obj | None
    workers: Mapping[str, str | None]  # worker -> its Node's name (None: no such Node)


def read_controller(kube: Kube, ic: IngressConfig, workers: Sequence[Host] | None) -> ControllerState:
    """Read the controller's DaemonSet, pods, Service and the Nodes.

    ``workers`` are the servers.tsv workers that must each run a controller pod; ``None`` takes
    the cluster's worker Nodes (no control-plane role).
    """
    daemonset = kube.get("DaemonSet", ic.controller, ic.namespace)
    deployment = kube.get("Deployment", ic.controller, ic.namespace) if daemonset is None else None
    pods = kube.list("Pod", ic.namespace) if daemonset is not None else []
    nodes = kube.list("Node")
    if workers is None:
        on_nodes: dict[str, str | None] = {name_of(n): name_of(n) for n in nodes if is_worker_node(n)}
    else:
        on_nodes = worker_nodes(workers, nodes)
    return ControllerState(daemonset, deployment, pods, kube.get("Service", ic.service, ic.namespace), on_nodes)
