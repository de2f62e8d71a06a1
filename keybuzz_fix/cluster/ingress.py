"""The two Ingress routes: built from the configuration, and where each stands against the live one (pure code).

The routes come from ``manifests/defaults.yaml``; ``manifests/ingress.yaml`` is the same objects
rendered for operators who prefer ``kubectl apply --server-side``. A :class:`RoutePlan` compares a
route as wanted, as it is live, and as the API server's dry-run apply says it would be: the diff
shown is the server's own answer, so fields other managers own (TLS blocks, cert-manager
annotations) stay in it. The reads and the applies are :mod:`keybuzz_fix.flows.ingress`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from keybuzz_fix.cluster.objects import SERVER_METADATA, Obj, meta_of, name_of, spec_of, yaml_diff
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
    after: Obj | None = None  # the server's dry-run answer: the route as apply would leave it
    serving: tuple[ServingProblem, ...] = ()  # why ingress-nginx would not serve it (empty: it would)

    @property
    def name(self) -> str:
        """Return ``namespace/name``."""
        meta = self.desired["metadata"]
        return f"{meta['namespace']}/{meta['name']}"


# -- would ingress-nginx serve it? ----------------------------------------------------------------
# As ingress-nginx decides (internal/ingress/controller/store/store.go, GetIngressClass and
# sortIngressSlice; controller.go, getBackendServers): spec.ingressClassName first, naming an
# IngressClass whose spec.controller is the controller's --controller-class; only without it the
# kubernetes.io/ingress.class annotation, equal to --ingress-class; without either, only under
# --watch-ingress-without-class. Ingresses are taken oldest first (creationTimestamp; on a tie the
# namespace/name that sorts last first), and the first one to claim a host, path and path type keeps
# it: a later Ingress's path is dropped (kubernetes/ingress-nginx#5651, without the admission webhook).

CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
DEFAULT_CONTROLLER = "k8s.io/ingress-nginx"
DEFAULT_ANNOTATION_VALUE = "nginx"


@dataclass(frozen=True)
class ControllerClass:
    """Which Ingresses the controller takes: its class flags, as read from its container's arguments."""

    controller: str = DEFAULT_CONTROLLER  # --controller-class
    annotation: str = DEFAULT_ANNOTATION_VALUE  # --ingress-class (the annotation's value)
    without_class: bool = False  # --watch-ingress-without-class
    by_name: bool = False  # --ingress-class-by-name
    namespace: str = ""  # --watch-namespace (empty: every namespace)
    source: str = "ingress-nginx defaults"


def controller_class(workload: Obj | None) -> ControllerClass:
    """Read the class flags from the controller's DaemonSet or Deployment (its defaults when absent)."""
    if workload is None:
        return ControllerClass()
    template = (spec_of(workload).get("template") or {}).get("spec") or {}
    args: list[str] = []
    for c in template.get("containers") or []:
        words = [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
        if any("nginx-ingress-controller" in w for w in words) or c.get("name") == "controller":
            args = words
            break
    flags: dict[str, str] = {}
    for word in args:
        if word.startswith("--"):
            name, sep, value = word[2:].partition("=")
            flags[name] = value if sep else "true"
    where = (
        f"the arguments of {workload.get('kind', 'workload')} {meta_of(workload).get('namespace')}/{name_of(workload)}"
    )
    return ControllerClass(
        controller=flags.get("controller-class", DEFAULT_CONTROLLER),
        annotation=flags.get("ingress-class", DEFAULT_ANNOTATION_VALUE),
        without_class=flags.get("watch-ingress-without-class", "false").lower() == "true",
        by_name=flags.get("ingress-class-by-name", "false").lower() == "true",
        namespace=flags.get("watch-namespace", ""),
        source=where,
    )


@dataclass(frozen=True)
class ServingFacts:
    """What ingress-nginx reads to decide which Ingress serves a host and path."""

    ingresses: tuple[Obj, ...]  # every Ingress, in every namespace
    classes: tuple[Obj, ...]  # every IngressClass
    services: Mapping[str, Obj]  # "namespace/name" -> Service (at least those the routes name)
    secrets: frozenset[str]  # "namespace/name" of the Secrets that exist (at least those the routes name)
    controller: ControllerClass = ControllerClass()


@dataclass(frozen=True)
class ServingProblem:
    """Why a route would not be served as wanted, and the object behind it."""

    subject: str  # "Ingress legacy/old-front", "IngressClass nginx", "Service keybuzz/keybuzz-front"
    detail: str

    def describe(self) -> str:
        """Return ``subject: detail``."""
        return f"{self.subject}: {self.detail}"


def key_of(obj: Obj) -> str:
    """Return ``namespace/name``."""
    return f"{meta_of(obj).get('namespace', '')}/{name_of(obj)}"


def _ours(ic: Obj, ctl: ControllerClass) -> bool:
    return spec_of(ic).get("controller") == ctl.controller or (ctl.by_name and name_of(ic) == ctl.annotation)


def class_of(ingress: Obj, classes: Sequence[Obj], ctl: ControllerClass) -> tuple[bool, str]:
    """Return whether the controller takes ``ingress`` by its class, and why (as ingress-nginx's GetIngressClass)."""
    field_name = spec_of(ingress).get("ingressClassName")
    annotation = (meta_of(ingress).get("annotations") or {}).get(CLASS_ANNOTATION)
    if field_name is not None:
        ignored = (
            f" (its {CLASS_ANNOTATION} annotation {annotation!r} is ignored: the field comes first)"
            if annotation is not None
            else ""
        )
        found = next((c for c in classes if name_of(c) == field_name), None)
        if found is None:
            return False, f"spec.ingressClassName {field_name!r}: no IngressClass of that name{ignored}"
        if not _ours(found, ctl):
            owner = spec_of(found).get("controller", "none")
            return False, (
                f"spec.ingressClassName {field_name!r}: IngressClass {field_name} belongs to controller "
                f"{owner}, not {ctl.controller}{ignored}"
            )
        return True, f"spec.ingressClassName {field_name}{ignored}"
    if annotation is not None:
        if annotation != ctl.annotation:
            return False, f"annotation {CLASS_ANNOTATION} {annotation!r}, the controller takes {ctl.annotation!r}"
        return True, f"annotation {CLASS_ANNOTATION} {annotation}"
    if ctl.without_class:
        return True, "no class, and the controller takes Ingresses without one (--watch-ingress-without-class)"
    defaults = [name_of(c) for c in classes if _is_default(c)]
    later = (
        f"; the default IngressClass {', '.join(defaults)} is given only to Ingresses created after it"
        if defaults
        else "; no IngressClass is marked default"
    )
    return False, (
        f"no spec.ingressClassName and no {CLASS_ANNOTATION} annotation, and the controller does not take "
        f"Ingresses without a class (--watch-ingress-without-class is off){later}"
    )


def _is_default(ic: Obj) -> bool:
    return str((meta_of(ic).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true"


def served_paths(ingress: Obj) -> list[tuple[str, str, str]]:
    """Return the (host, path, path type) an Ingress claims, as ingress-nginx keys its locations."""
    out = []
    for rule in spec_of(ingress).get("rules") or []:
        host = str(rule.get("host") or "_")
        for p in (rule.get("http") or {}).get("paths") or []:
            kind = p.get("pathType") or "Prefix"
            out.append((host, str(p.get("path") or "/"), "Prefix" if kind == "ImplementationSpecific" else kind))
    return out


def _order(ingress: Obj) -> tuple[str, _Reversed]:
    """The order ingress-nginx takes Ingresses in: oldest first; on a tie, namespace/name descending."""
    # An object not created yet (a dry-run create may carry no timestamp) is the newest of all.
    return (str(meta_of(ingress).get("creationTimestamp") or "9999"), _Reversed(key_of(ingress)))


@dataclass(frozen=True, order=False)
class _Reversed:
    text: str

    def __lt__(self, other: _Reversed) -> bool:
        return self.text > other.text


def serving_problems(ingress: Obj, facts: ServingFacts) -> list[ServingProblem]:
    """Return why ingress-nginx would not serve ``ingress`` as written (empty: it would).

    ``ingress`` is the route as it is, or as it will be after apply (the server's dry-run answer).
    """
    ctl = facts.controller
    me = key_of(ingress)
    namespace = str(meta_of(ingress).get("namespace", ""))
    subject = f"Ingress {me}"
    out: list[ServingProblem] = []
    if ctl.namespace and ctl.namespace != namespace:
        out.append(ServingProblem(subject, f"the controller watches only namespace {ctl.namespace} ({ctl.source})"))
    taken, why = class_of(ingress, facts.classes, ctl)
    if not taken:
        name = spec_of(ingress).get("ingressClassName")
        about = f"IngressClass {name}" if name is not None else subject
        out.append(ServingProblem(about, f"ingress-nginx ({ctl.controller}) ignores {me}: {why}"))
    else:
        out += _shadowed(ingress, facts)
    out += _backends(ingress, facts.services, namespace)
    for tls in spec_of(ingress).get("tls") or []:
        secret = tls.get("secretName")
        if secret and f"{namespace}/{secret}" not in facts.secrets:
            hosts = ", ".join(tls.get("hosts") or []) or "its hosts"
            out.append(
                ServingProblem(
                    f"Secret {namespace}/{secret}",
                    f"not found: ingress-nginx serves its default (self-signed) certificate for {hosts}",
                )
            )
    return out


def _shadowed(ingress: Obj, facts: ServingFacts) -> list[ServingProblem]:
    """The host and paths an older Ingress of the same controller already holds."""
    me, mine = key_of(ingress), _order(ingress)
    out = []
    claims = set(served_paths(ingress))
    canary = str((meta_of(ingress).get("annotations") or {}).get(CANARY_ANNOTATION, "")).lower() == "true"
    if canary:
        return []
    for other in sorted(facts.ingresses, key=_order):
        if key_of(other) == me or not _order(other) < mine:
            continue
        if str((meta_of(other).get("annotations") or {}).get(CANARY_ANNOTATION, "")).lower() == "true":
            continue  # canaries are merged into the main route, they hold nothing
        if facts.controller.namespace and meta_of(other).get("namespace") != facts.controller.namespace:
            continue
        if not class_of(other, facts.classes, facts.controller)[0]:
            continue
        shared = sorted(claims & set(served_paths(other)))
        for host, path, kind in shared:
            claims.discard((host, path, kind))
            created = meta_of(other).get("creationTimestamp", "?")
            out.append(
                ServingProblem(
                    f"Ingress {key_of(other)}",
                    f"already serves {host} {path} ({kind}), created {created}, before {me}: "
                    f"ingress-nginx keeps the oldest, so {me}'s route for {host} {path} will not be used",
                )
            )
    return out


def _backends(ingress: Obj, services: Mapping[str, Obj], namespace: str) -> list[ServingProblem]:
    out = []
    seen: set[tuple[str, Any]] = set()
    for _host, name, port in route_backends(ingress):
        if name == "?" or (name, port) in seen:
            continue
        seen.add((name, port))
        svc = services.get(f"{namespace}/{name}")
        subject = f"Service {namespace}/{name}"
        if svc is None:
            out.append(ServingProblem(subject, "not found: ingress-nginx answers 503 for this route"))
            continue
        ports = spec_of(svc).get("ports") or []
        if isinstance(port, int):
            match = any(p.get("port") == port for p in ports)
        else:
            match = any(p.get("name") == port for p in ports)
        if not match:
            have = ", ".join(f"{p.get('name') or '-'}:{p.get('port')}" for p in ports) or "none"
            out.append(
                ServingProblem(
                    subject,
                    f"has no port {port!r} (ports: {have}): ingress-nginx answers 503 for this route",
                )
            )
    return out


def referenced_secrets(ingresses: Sequence[Obj]) -> list[tuple[str, str]]:
    """Return the (namespace, name) of every TLS Secret the Ingresses name."""
    out = []
    for ing in ingresses:
        ns = str(meta_of(ing).get("namespace", ""))
        for tls in spec_of(ing).get("tls") or []:
            if tls.get("secretName") and (ns, tls["secretName"]) not in out:
                out.append((ns, str(tls["secretName"])))
    return out
