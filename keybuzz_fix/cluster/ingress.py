"""The two Ingress routes: built from the configuration, and where each stands against the live one (pure code).

The routes come from ``manifests/defaults.yaml``; ``manifests/ingress.yaml`` is the same objects
rendered for operators who prefer ``kubectl apply --server-side``. A :class:`RoutePlan` compares a
route as wanted, as it is live, and as the API server's dry-run apply says it would be: the diff
shown is the server's own answer, so fields other managers own (TLS blocks, cert-manager
annotations) stay in it. The reads and the applies are :mod:`keybuzz_fix.flows.ingress`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from keybuzz_fix.cluster.objects import SERVER_METADATA, Obj, meta_of, spec_of, yaml_diff
from keybuzz_fix.config import Config, Route


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
    for rule in spec_of(ingress).get("rules") or []:
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
    meta = {k: v for k, v in meta_of(obj).items() if k not in SERVER_METADATA}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta, "spec": spec_of(obj)}


def route_diff(before: Obj | None, after: Obj | None, name: str) -> str:
    """Return a unified diff between two versions of an Ingress (empty when they are the same)."""
    old = f"{name} (live)" if before is not None else "/dev/null"
    return "\n".join(yaml_diff(comparable(before), comparable(after), old=old, new=f"{name} (after apply)", context=3))


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
