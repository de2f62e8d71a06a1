"""ingress-nginx as found, judged: hostNetwork DaemonSet, a Running pod on every worker, NodePorts (pure code).

The controller is only checked, never changed: each fact is as wanted or names the precise
mismatch. :class:`IngressPlan` puts those facts next to the plan of every route
(:mod:`keybuzz_fix.cluster.ingress`): it is the ``ingress`` step's result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from keybuzz_fix.cluster import scheduling
from keybuzz_fix.cluster.ingress import RoutePlan
from keybuzz_fix.cluster.objects import Obj, name_of, spec_of
from keybuzz_fix.config import IngressConfig


@dataclass(frozen=True)
class ControllerFact:
    """One fact about the ingress-nginx controller: as wanted, or the precise mismatch."""

    subject: str
    ok: bool
    detail: str


def check_controller(
    cfg: IngressConfig,
    *,
    daemonset: Obj | None,
    deployment: Obj | None,
    pods: Sequence[Obj],
    service: Obj | None,
    workers: Mapping[str, str | None],
) -> list[ControllerFact]:
    """Return one finding per fact about the controller; ``workers`` maps each worker to its Node."""
    where = f"{cfg.namespace}/{cfg.controller}"
    out: list[ControllerFact] = []
    ds_subject = f"DaemonSet {where}"
    if daemonset is None:
        if deployment is not None:
            out.append(
                ControllerFact(
                    ds_subject,
                    False,
                    f"not found: {where} runs as a Deployment "
                    f"({spec_of(deployment).get('replicas', 1)} replicas), not a DaemonSet",
                )
            )
        else:
            out.append(ControllerFact(ds_subject, False, f"not found in namespace {cfg.namespace}"))
    else:
        out.append(ControllerFact(ds_subject, True, "exists"))
        if scheduling.host_network(daemonset):
            out.append(ControllerFact(ds_subject, True, "hostNetwork: true"))
        else:
            out.append(
                ControllerFact(
                    ds_subject,
                    False,
                    "hostNetwork is off in the pod template: the controller does not listen on the workers' own ports",
                )
            )
        out += _pods_on_workers(cfg, pods, workers)
    out += check_service(cfg, service)
    return out


def _pods_on_workers(
    cfg: IngressConfig, pods: Sequence[Obj], workers: Mapping[str, str | None]
) -> list[ControllerFact]:
    mine = scheduling.pods_of(pods, "DaemonSet", cfg.controller)
    by_node: dict[str, list[Obj]] = {}
    for p in mine:
        by_node.setdefault(scheduling.node_of(p) or "", []).append(p)
    out = []
    for worker, node in workers.items():
        subject = f"worker {worker}"
        if node is None:
            out.append(ControllerFact(subject, False, "no Node of that name or address in the cluster"))
            continue
        on_node = by_node.get(node, [])
        running = [p for p in on_node if scheduling.is_running(p)]
        if running:
            out.append(ControllerFact(subject, True, f"pod {name_of(running[0])} Running"))
        elif on_node:
            states = ", ".join(f"{name_of(p)} {scheduling.phase(p)}" for p in on_node)
            out.append(ControllerFact(subject, False, f"no Running controller pod ({states})"))
        else:
            out.append(ControllerFact(subject, False, "no controller pod on this node"))
    return out


def service_port(service: Obj, name: str, number: int) -> Obj | None:
    """Return the Service port named ``name``, or else the one whose port is ``number``."""
    ports = spec_of(service).get("ports") or []
    return next((p for p in ports if p.get("name") == name), None) or next(
        (p for p in ports if p.get("port") == number), None
    )


def check_service(cfg: IngressConfig, service: Obj | None) -> list[ControllerFact]:
    """Check that the controller's Service exposes the HTTP and HTTPS NodePorts."""
    subject = f"Service {cfg.namespace}/{cfg.service}"
    if service is None:
        return [ControllerFact(subject, False, f"not found in namespace {cfg.namespace}")]
    kind = spec_of(service).get("type", "ClusterIP")
    if kind not in ("NodePort", "LoadBalancer"):
        return [
            ControllerFact(
                subject,
                False,
                f"type {kind}: no NodePorts (expected NodePort with {cfg.http_node_port}/{cfg.https_node_port})",
            )
        ]
    out = [ControllerFact(subject, True, f"type {kind}")]
    for label, number, wanted in (("http", 80, cfg.http_node_port), ("https", 443, cfg.https_node_port)):
        port = service_port(service, label, number)
        if port is None:
            out.append(ControllerFact(subject, False, f"no {label} port (name {label!r} or port {number})"))
        elif port.get("nodePort") != wanted:
            out.append(
                ControllerFact(
                    subject,
                    False,
                    f"{label} port {port.get('port')} has nodePort {port.get('nodePort', 'none')}, expected {wanted}",
                )
            )
        else:
            out.append(ControllerFact(subject, True, f"{label} port {port.get('port')} → nodePort {wanted}"))
    return out


@dataclass(frozen=True)
class IngressPlan:
    """The controller findings and the plan of every route."""

    findings: tuple[ControllerFact, ...]
    routes: tuple[RoutePlan, ...]
    force_conflicts: bool = False

    @property
    def mismatches(self) -> list[ControllerFact]:
        """Return the controller findings that are not as wanted."""
        return [f for f in self.findings if not f.ok]

    @property
    def changes(self) -> list[RoutePlan]:
        """Return the routes apply would write."""
        return [r for r in self.routes if r.status.changes]

    @property
    def unserved(self) -> list[RoutePlan]:
        """Return the routes ingress-nginx would not serve as wanted (each with the objects why)."""
        return [r for r in self.routes if r.serving]

    @property
    def failed(self) -> bool:
        """Whether the controller is not as wanted, or a route cannot be applied or would not be served."""
        return bool(self.mismatches) or any(r.status.problem for r in self.routes) or bool(self.unserved)
