"""ingress-nginx and the two Ingress routes: what is wanted, what is found, the diff (pure code).

The controller is only checked, never changed: a DaemonSet with hostNetwork on, a Running pod on
every worker, and a Service exposing the HTTP and HTTPS NodePorts the load balancers target. The
routes are built from the configuration (``manifests/defaults.yaml``) and applied server-side by
:mod:`keybuzz_fix.flows.ingress`; ``manifests/ingress.yaml`` is the same objects rendered for
operators who prefer ``kubectl apply --server-side``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from keybuzz_fix.cluster import workloads as wl
from keybuzz_fix.cluster.objects import name_of
from keybuzz_fix.config import Config, IngressConfig, Route

Obj = dict[str, Any]
# Metadata the API server owns: never part of a diff.
_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink")


@dataclass(frozen=True)
class Finding:
    """One fact about the ingress-nginx controller: as wanted, or the precise mismatch."""

    subject: str
    ok: bool
    detail: str


# -- the controller --------------------------------------------------------------------------


def check_controller(
    cfg: IngressConfig,
    *,
    daemonset: Obj | None,
    deployment: Obj | None,
    pods: Sequence[Obj],
    service: Obj | None,
    workers: Mapping[str, str | None],
) -> list[Finding]:
    """Return one finding per fact about the controller; ``workers`` maps each worker to its Node."""
    where = f"{cfg.namespace}/{cfg.controller}"
    out: list[Finding] = []
    ds_subject = f"DaemonSet {where}"
    if daemonset is None:
        if deployment is not None:
            out.append(
                Finding(
                    ds_subject,
                    False,
                    f"not found: {where} runs as a Deployment "
                    f"({deployment.get('spec', {}).get('replicas', 1)} replicas), not a DaemonSet",
                )
            )
        else:
            out.append(Finding(ds_subject, False, f"not found in namespace {cfg.namespace}"))
    else:
        out.append(Finding(ds_subject, True, "exists"))
        if wl.host_network(daemonset):
            out.append(Finding(ds_subject, True, "hostNetwork: true"))
        else:
            out.append(
                Finding(
                    ds_subject,
                    False,
                    "hostNetwork is off in the pod template: the controller does not listen on the workers' own ports",
                )
            )
        out += _pods_on_workers(cfg, pods, workers)
    out += check_service(cfg, service)
    return out


def _pods_on_workers(cfg: IngressConfig, pods: Sequence[Obj], workers: Mapping[str, str | None]) -> list[Finding]:
    mine = wl.pods_of(pods, "DaemonSet", cfg.controller)
    by_node: dict[str, list[Obj]] = {}
    for p in mine:
        by_node.setdefault(wl.node_of(p) or "", []).append(p)
    out = []
    for worker, node in workers.items():
        subject = f"worker {worker}"
        if node is None:
            out.append(Finding(subject, False, "no Node of that name or address in the cluster"))
            continue
        on_node = by_node.get(node, [])
        running = [p for p in on_node if wl.is_running(p)]
        if running:
            out.append(Finding(subject, True, f"pod {name_of(running[0])} Running"))
        elif on_node:
            states = ", ".join(f"{name_of(p)} {wl.phase(p)}" for p in on_node)
            out.append(Finding(subject, False, f"no Running controller pod ({states})"))
        else:
            out.append(Finding(subject, False, "no controller pod on this node"))
    return out


def service_port(service: Obj, name: str, number: int) -> Obj | None:
    """Return the Service port named ``name``, or else the one whose port is ``number``."""
    ports = service.get("spec", {}).get("ports") or []
    return next((p for p in ports if p.get("name") == name), None) or next(
        (p for p in ports if p.get("port") == number), None
    )


def check_service(cfg: IngressConfig, service: Obj | None) -> list[Finding]:
    """Check that the controller's Service exposes the HTTP and HTTPS NodePorts."""
    subject = f"Service {cfg.namespace}/{cfg.service}"
    if service is None:
        return [Finding(subject, False, f"not found in namespace {cfg.namespace}")]
    kind = service.get("spec", {}).get("type", "ClusterIP")
    if kind not in ("NodePort", "LoadBalancer"):
        return [
            Finding(
                subject,
                False,
                f"type {kind}: no NodePorts (expected NodePort with {cfg.http_node_port}/{cfg.https_node_port})",
            )
        ]
    out = [Finding(subject, True, f"type {kind}")]
    for label, number, wanted in (("http", 80, cfg.http_node_port), ("https", 443, cfg.https_node_port)):
        port = service_port(service, label, number)
        if port is None:
            out.append(Finding(subject, False, f"no {label} port (name {label!r} or port {number})"))
        elif port.get("nodePort") != wanted:
            out.append(
                Finding(
                    subject,
                    False,
                    f"{label} port {port.get('port')} has nodePort {port.get('nodePort', 'none')}, expected {wanted}",
                )
            )
        else:
            out.append(Finding(subject, True, f"{label} port {port.get('port')} → nodePort {wanted}"))
    return out


# -- the routes ------------------------------------------------------------------------------


def build_ingress(cfg: Config, route: Route) -> Obj:
    """Return the Ingress object for one route, holding only the fields keybuzz-fix manages."""
    meta: Obj = {"name": route.name, "namespace": cfg.namespace}
    if cfg.ingress.annotations:
        meta["annotations"] = dict(cfg.ingress.annotations)
    backend = {"service": {"name": route.service, "port": {"number": route.port}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta,
        "spec": {
            "ingressClassName": cfg.ingress.class_name,
            "rules": [
                {"host": route.host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
            ],
        },
    }


def build_ingresses(cfg: Config) -> list[Obj]:
    """Return the Ingress objects of every configured route."""
    return [build_ingress(cfg, r) for r in cfg.ingress.routes]


def render_manifest(objs: Sequence[Obj]) -> str:
    """Render objects as a multi-document YAML file (what ``manifests/ingress.yaml`` holds)."""
    import yaml

    head = (
        "# The Ingress routes keybuzz-fix applies, rendered from manifests/defaults.yaml.\n"
        "# kubectl apply --server-side --field-manager keybuzz-fix -f manifests/ingress.yaml\n"
    )
    return head + "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objs)


def route_backends(ingress: Obj) -> list[tuple[str, str, Any]]:
    """Return (host, service, port) for every path of an Ingress (port: number or name)."""
    out = []
    for rule in ingress.get("spec", {}).get("rules") or []:
        for path in (rule.get("http") or {}).get("paths") or []:
            svc = (path.get("backend") or {}).get("service") or {}
            port = svc.get("port") or {}
            out.append((str(rule.get("host", "*")), str(svc.get("name", "?")), port.get("number", port.get("name"))))
    return out


def describe_route(ingress: Obj | None) -> str:
    """Return a one-line summary (``platform.keybuzz.io → keybuzz-front:80``) for the audit log."""
    if ingress is None:
        return "absent"
    return ", ".join(f"{h} → {s}:{p}" for h, s, p in route_backends(ingress)) or "no rules"


def comparable(obj: Obj | None) -> Obj | None:
    """Return the part of an object a diff shows: labels, annotations and spec; no server fields."""
    if obj is None:
        return None
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in _SERVER_FIELDS}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta, "spec": obj.get("spec", {})}


def diff(before: Obj | None, after: Obj | None, name: str) -> str:
    """Return a unified diff between two versions of an object (empty when they are the same)."""
    import yaml

    a, b = comparable(before), comparable(after)
    if a == b:
        return ""
    old = yaml.safe_dump(a, sort_keys=True).splitlines() if a is not None else []
    new = yaml.safe_dump(b, sort_keys=True).splitlines() if b is not None else []
    return "\n".join(
        difflib.unified_diff(
            old, new, f"{name} (live)" if a is not None else "/dev/null", f"{name} (after apply)", lineterm="", n=3
        )
    )


class RouteStatus(str, Enum):
    """Where one route stands."""

    UNCHANGED = "unchanged"  # the live object already is what apply would make it
    CREATE = "create"
    UPDATE = "update"
    CONFLICT = "conflict"  # another field manager owns a field we set (see --force-conflicts)
    FAILED = "failed"  # the API refused or could not be reached
    CREATED = "created"
    UPDATED = "updated"

    @property
    def changes(self) -> bool:
        """Whether the route would be (or was) written."""
        return self in (RouteStatus.CREATE, RouteStatus.UPDATE)

    @property
    def problem(self) -> bool:
        """Whether the route needs the operator."""
        return self in (RouteStatus.CONFLICT, RouteStatus.FAILED)


def route_status(live: Obj | None, after: Obj | None) -> RouteStatus:
    """Return what applying would do, from the live object and the server's dry-run answer."""
    if live is None:
        return RouteStatus.CREATE
    return RouteStatus.UNCHANGED if comparable(live) == comparable(after) else RouteStatus.UPDATE
