"""The ``ingress`` step: check ingress-nginx, plan the routes with a server-side dry run, apply.

Planning reads the controller's objects and sends every route as a server-side dry-run apply, so
the diff shown is the server's own answer: fields other managers own (TLS blocks, cert-manager
annotations) stay in it, and a conflict shows up before anything is written. Applying repeats
the apply for real, only for the routes that change, and records each write in the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from keybuzz_fix import storage as state
from keybuzz_fix.cli.options import Output
from keybuzz_fix.cluster import ingress
from keybuzz_fix.cluster import workloads as wl
from keybuzz_fix.cluster.ingress import Finding, RouteStatus
from keybuzz_fix.cluster.objects import name_of
from keybuzz_fix.config import Config
from keybuzz_fix.errors import ClusterError, Conflict, ExitCode
from keybuzz_fix.inventory import Host

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.cluster.client import Kube

Obj = dict[str, Any]


@dataclass(frozen=True)
class RoutePlan:
    """One Ingress: what we want, what is there, and what apply would make of it."""

    desired: Obj
    live: Obj | None
    status: RouteStatus
    diff: str = ""
    error: str = ""

    @property
    def name(self) -> str:
        """Return ``namespace/name``."""
        meta = self.desired["metadata"]
        return f"{meta['namespace']}/{meta['name']}"


@dataclass(frozen=True)
class IngressPlan:
    """The controller findings and the plan of every route."""

    findings: tuple[Finding, ...]
    routes: tuple[RoutePlan, ...]
    force_conflicts: bool = False

    @property
    def mismatches(self) -> list[Finding]:
        """Return the controller findings that are not as wanted."""
        return [f for f in self.findings if not f.ok]

    @property
    def changes(self) -> list[RoutePlan]:
        """Return the routes apply would write."""
        return [r for r in self.routes if r.status.changes]

    @property
    def exit_code(self) -> ExitCode:
        """Return FAILURE when the controller mismatches or a route cannot be applied."""
        if self.mismatches or any(r.status.problem for r in self.routes):
            return ExitCode.FAILURE
        return ExitCode.OK


def plan_ingress(
    kube: Kube, cfg: Config, workers: Sequence[Host] | None = None, *, force_conflicts: bool = False
) -> IngressPlan:
    """Check the controller and dry-run every route; change nothing.

    ``workers`` are the servers.tsv workers that must each run a controller pod; ``None`` takes
    the cluster's worker Nodes (no control-plane role).
    """
    return IngressPlan(
        tuple(observe_controller(kube, cfg, workers)),
        tuple(_plan_route(kube, obj, force_conflicts) for obj in ingress.build_ingresses(cfg)),
        force_conflicts,
    )


def observe_controller(kube: Kube, cfg: Config, workers: Sequence[Host] | None) -> list[Finding]:
    """Read the controller's DaemonSet, pods, Service and the Nodes, and check them."""
    ic = cfg.ingress
    daemonset = kube.get("DaemonSet", ic.controller, ic.namespace)
    deployment = kube.get("Deployment", ic.controller, ic.namespace) if daemonset is None else None
    pods = kube.list("Pod", ic.namespace) if daemonset is not None else []
    nodes = kube.list("Node")
    if workers is None:
        on_nodes: dict[str, str | None] = {name_of(n): name_of(n) for n in nodes if wl.is_worker_node(n)}
    else:
        on_nodes = wl.worker_nodes(workers, nodes)
    return ingress.check_controller(
        ic,
        daemonset=daemonset,
        deployment=deployment,
        pods=pods,
        service=kube.get("Service", ic.service, ic.namespace),
        workers=on_nodes,
    )


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
    status = ingress.route_status(live, after)
    return RoutePlan(desired, live, status, ingress.diff(live, after, f"Ingress {meta['namespace']}/{meta['name']}"))


def apply_ingress(kube: Kube, plan: IngressPlan, *, command: str = "ingress") -> IngressPlan:
    """Apply the routes the plan changes; return the plan with each route's outcome."""
    routes = []
    for r in plan.routes:
        if not r.status.changes:
            routes.append(r)
            continue
        done = RouteStatus.CREATED if r.status is RouteStatus.CREATE else RouteStatus.UPDATED
        where = f"Ingress {r.name}"
        try:
            after = kube.apply(r.desired, force=plan.force_conflicts)
        except ClusterError as e:
            status = RouteStatus.CONFLICT if isinstance(e, Conflict) else RouteStatus.FAILED
            state.audit(command, where, r.status.value, "failed", before=ingress.describe_route(r.live), error=str(e))
            routes.append(replace(r, status=status, error=str(e)))
            continue
        state.audit(
            command,
            where,
            r.status.value,
            "ok",
            before=ingress.describe_route(r.live),
            after=ingress.describe_route(after),
            force_conflicts=plan.force_conflicts,
        )
        routes.append(replace(r, status=done))
    return replace(plan, routes=tuple(routes))


def run_ingress(
    console: Console,
    kube: Kube,
    cfg: Config,
    workers: Sequence[Host] | None = None,
    *,
    dry_run: bool = False,
    yes: bool = False,
    force_conflicts: bool = False,
    output: Output = Output.TEXT,
) -> IngressPlan:
    """Check, plan, show, ask once, apply and report; return the outcome (``.exit_code``)."""
    from keybuzz_fix.flows.firewall import confirm
    from keybuzz_fix.report import hosts as report

    plan = plan_ingress(kube, cfg, workers, force_conflicts=force_conflicts)
    quiet = output is Output.JSON
    if not quiet:
        report.ingress_plan(console, plan, dry_run=dry_run)
    if not dry_run and plan.changes:
        confirm(console, f"Apply {len(plan.changes)} Ingress route(s)?", yes=yes)
        plan = apply_ingress(kube, plan)
    if quiet:
        report.print_json(report.ingress_json(plan, dry_run=dry_run))
    else:
        report.ingress_summary(console, plan, dry_run=dry_run)
    return plan
