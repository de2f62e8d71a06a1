"""Plan the conversion of Deployments into hostNetwork DaemonSets (pure code, no I/O).

For each configured app: a DaemonSet carrying the Deployment's pod template over unchanged except
for what hostNetwork needs (``hostNetwork``, ``dnsPolicy``, the app's port moved to the host port
with its env variable and probes, workers-only placement, a surge-free rolling update), its
Service switched to NodePort in place, every HPA aimed at the Deployment, then the Deployment,
deleted. A plan can also refuse (port collision, a port that cannot move, missing objects) or
warn (env values that still go through ClusterIP). Planning against the state after a run, or
after a half-finished run, yields the rest of the work: nothing, once converted.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keybuzz_fix.cluster.changes import Change, Verb
from keybuzz_fix.cluster.objects import (
    LAST_APPLIED,
    MANAGED_BY,
    MANAGER,
    SERVER_ANNOTATIONS,
    Obj,
    containers,
    is_subset,
    labels,
    managed_by_us,
    mask_values,
    meta,
    name_of,
    pod_spec,
    strip_server_fields,
)
from keybuzz_fix.cluster.scheduling import CONTROL_PLANE_LABEL, HostPort, eligible_nodes, host_ports
from keybuzz_fix.config import AppConfig, Config

PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HANDLERS = ("httpGet", "tcpSocket", "grpc")
_SVC_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.svc(?:\.cluster\.local)?(?![A-Za-z0-9-])")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")


@dataclass(frozen=True)
class Observed:
    """What the plan is computed from: the cluster as read, or a ``--from-file`` state."""

    namespace: str
    deployments: Sequence[Obj]  # every namespace: their host ports may collide
    daemonsets: Sequence[Obj]
    statefulsets: Sequence[Obj]
    services: Sequence[Obj]  # every namespace: nodePorts in use, ClusterIPs
    hpas: Sequence[Obj]  # the app namespace
    nodes: Sequence[Obj] | None  # None when unknown (a state file without Nodes)
    service_cidr: str = ""

    def one(self, objs: Sequence[Obj], name: str) -> Obj | None:
        """Return the object called ``name`` in the app namespace."""
        for o in objs:
            if name_of(o) == name and meta(o).get("namespace", self.namespace) == self.namespace:
                return o
        return None


@dataclass(frozen=True)
class Plan:
    """Everything convert would do, in order, with what it refuses and warns about."""

    daemonsets: tuple[Change, ...]
    services: tuple[Change, ...]
    hpas: tuple[Change, ...]
    deployments: tuple[Change, ...]
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    shown_env: frozenset[str]  # the port variables, shown even when values are masked

    @property
    def changes(self) -> tuple[Change, ...]:
        """Every change, in the order they are carried out."""
        return self.daemonsets + self.services + self.hpas + self.deployments

    @property
    def pending(self) -> list[Change]:
        """The changes that modify the cluster."""
        return [c for c in self.changes if c.changes]

    @property
    def to_back_up(self) -> list[Obj]:
        """The objects as read that this plan changes or deletes."""
        return [c.before for c in self.pending if c.before is not None]

    def applied_objects(self, *, show_values: bool = False) -> list[Obj]:
        """The objects as they will be (DaemonSets, then Services), masked unless asked."""
        objs = [c.after for c in self.daemonsets + self.services if c.after is not None]
        return objs if show_values else [mask_values(o, self.shown_env) for o in objs]

    def to_offline_json(self, *, show_values: bool = False) -> dict[str, Any]:
        """``-o json`` of ``--from-file``: what would be applied and deleted, and the warnings."""
        deletes = [
            {"kind": c.kind, "namespace": c.namespace, "name": c.name}
            for c in self.hpas + self.deployments
            if c.verb is Verb.DELETE
        ]
        return {
            "apply": self.applied_objects(show_values=show_values),
            "delete": deletes,
            "warnings": list(self.warnings),
        }


class _Refused(Exception):
    """One app cannot be converted; the message says why."""


def plan_convert(cfg: Config, observed: Observed, *, keep_port: bool = False) -> Plan:
    """Return the plan that brings ``observed`` to the converted state."""
    ns = cfg.namespace
    ds_changes: list[Change] = []
    svc_changes: list[Change] = []
    hpa_changes: list[Change] = []
    dep_changes: list[Change] = []
    refusals: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    placed: dict[str, tuple[Obj, set[HostPort]]] = {}  # app -> (pod spec, host ports) for collision checks
    for app in cfg.apps:
        deployment = observed.one(observed.deployments, app.name)
        existing = observed.one(observed.daemonsets, app.name)
        service = observed.one(observed.services, app.name)
        try:
            if existing is not None and not managed_by_us(existing):
                raise _Refused(
                    f"DaemonSet {ns}/{app.name} exists and is not managed by keybuzz-fix "
                    f"(no label {MANAGED_BY}={MANAGER}); rename or remove it first"
                )
            if service is None:
                raise _Refused(f"Service {ns}/{app.name} not found")
            if deployment is None and existing is None:
                raise _Refused(f"neither Deployment nor DaemonSet {ns}/{app.name} found")
            if deployment is not None:
                desired, host_port, app_notes = daemonset_for(deployment, app, service, keep_port=keep_port)
                notes += app_notes
                warnings += env_warnings(app.name, pod_spec(desired), observed)
                ds_changes.append(_daemonset_change(desired, existing, deployment, host_port))
                spec = pod_spec(desired)
            else:
                assert existing is not None
                host_port = _existing_host_port(existing, service, app, keep_port)
                ds_changes.append(
                    Change(
                        Verb.NONE,
                        "DaemonSet",
                        ns,
                        app.name,
                        "already converted (the Deployment is gone)",
                        after=strip_server_fields(existing),
                    )
                )
                spec = pod_spec(existing)
            placed[app.name] = (spec, host_ports(spec))
            svc_changes.append(service_change(service, app, host_port, observed))
        except _Refused as e:
            refusals.append(f"{app.name}: {e}")
            continue
        for hpa in observed.hpas:
            target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if (
                target.get("kind") == "Deployment"
                and target.get("name") == app.name
                and meta(hpa).get("namespace", ns) == ns
            ):
                hpa_changes.append(
                    Change(
                        Verb.DELETE,
                        "HorizontalPodAutoscaler",
                        ns,
                        name_of(hpa),
                        f"scales Deployment {app.name}, which the DaemonSet replaces",
                        before=hpa,
                        uid=meta(hpa).get("uid"),
                    )
                )
        if deployment is not None:
            dep_changes.append(
                Change(
                    Verb.DELETE,
                    "Deployment",
                    ns,
                    app.name,
                    f"replaced by DaemonSet {ns}/{app.name}",
                    before=deployment,
                    uid=meta(deployment).get("uid"),
                )
            )
    refusals += collisions(cfg, placed, observed)
    return Plan(
        tuple(ds_changes),
        tuple(svc_changes),
        tuple(hpa_changes),
        tuple(dep_changes),
        tuple(refusals),
        tuple(warnings),
        tuple(notes),
        frozenset(a.port_env for a in cfg.apps),
    )


# -- the DaemonSet ----------------------------------------------------------------------------------


def daemonset_for(
    deployment: Obj, app: AppConfig, service: Obj, *, keep_port: bool = False
) -> tuple[Obj, int, list[str]]:
    """Return the DaemonSet replacing ``deployment``, its host port, and notes on what was rewritten."""
    ns = meta(deployment).get("namespace") or ""
    where = f"Deployment {ns}/{app.name}"
    spec = deployment.get("spec") or {}
    template = copy.deepcopy(spec.get("template") or {})
    pod = template.setdefault("spec", {})
    if not pod.get("containers"):
        raise _Refused(f"{where} has no containers")
    container, port = _app_port(pod, service, app, where)
    app_port = int(port["containerPort"])
    host_port = app_port if keep_port else app.host_port
    notes: list[str] = []
    if app_port != host_port:
        notes.append(_move_env(container, app, app_port, host_port, where))
        notes += _move_probes(app.name, container, port, app_port, host_port)
        notes.append(f"{app.name}: container port {port.get('name') or app_port} {app_port} → {host_port}")
    for c in pod.get("containers") or []:
        for p in c.get("ports") or []:
            if p is port:
                continue
            if p.get("hostPort") and p.get("hostPort") != p.get("containerPort"):
                raise _Refused(
                    f"{where}: container {c.get('name')} port {p.get('containerPort')} has hostPort "
                    f"{p['hostPort']}; with hostNetwork both must be equal"
                )
            if p.get("containerPort") == host_port:
                raise _Refused(f"{where}: container {c.get('name')} already uses port {host_port}")
    port["containerPort"] = port["hostPort"] = host_port
    pod["hostNetwork"] = True
    pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    _workers_only(pod)
    tmeta = template.setdefault("metadata", {})
    tmeta.pop("creationTimestamp", None)
    tmeta["labels"] = {**(tmeta.get("labels") or {}), MANAGED_BY: MANAGER}
    dmeta: Obj = {"name": app.name, "namespace": ns, "labels": {**labels(deployment), MANAGED_BY: MANAGER}}
    annotations = {
        k: v
        for k, v in (meta(deployment).get("annotations") or {}).items()
        if k not in SERVER_ANNOTATIONS and k != LAST_APPLIED
    }
    if annotations:
        dmeta["annotations"] = annotations
    ds_spec: Obj = {
        "selector": copy.deepcopy(spec.get("selector")),
        "template": template,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
    }
    for key in ("minReadySeconds", "revisionHistoryLimit"):
        if key in spec:
            ds_spec[key] = spec[key]
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": dmeta, "spec": ds_spec}, host_port, notes


def _service_entry(service: Obj, app: AppConfig) -> Obj:
    for p in (service.get("spec") or {}).get("ports") or []:
        if p.get("port") == app.service_port:
            return dict(p)
    raise _Refused(
        f"Service {meta(service).get('namespace')}/{name_of(service)} has no port {app.service_port} "
        "(apps[].service_port)"
    )


def _app_port(pod: Obj, service: Obj, app: AppConfig, where: str) -> tuple[Obj, Obj]:
    """Find the container and container port the Service sends traffic to; it must say its number."""
    container, port = _target_port(pod, service, app, where)
    if "containerPort" not in port:  # its type, when present, is checked on parsing
        raise _Refused(
            f"{where}: container {container.get('name')} has a port entry without a containerPort "
            f"({port!r}), so where the app listens is unclear"
        )
    return container, port


def _target_port(pod: Obj, service: Obj, app: AppConfig, where: str) -> tuple[Obj, Obj]:
    entry = _service_entry(service, app)
    target = entry.get("targetPort", entry.get("port"))
    ports = [(c, p) for c in pod.get("containers") or [] for p in c.get("ports") or []]
    for c, p in ports:
        if (isinstance(target, str) and p.get("name") == target) or p.get("containerPort") == target:
            return c, p
    # A Service already switched by an interrupted run targets the host port: go by the port name.
    for c, p in ports:
        if entry.get("name") and p.get("name") == entry.get("name"):
            return c, p
    if len(ports) == 1:
        return ports[0]
    raise _Refused(f"cannot tell which container port of {where} the Service's targetPort {target!r} means")


def _move_env(container: Obj, app: AppConfig, app_port: int, host_port: int, where: str) -> str:
    """Rewrite the variable telling the app where to listen, or refuse when there is none."""
    hint = f"--keep-port runs it on {app_port} instead, or name the variable in the config (apps[].port_env)"
    for var in container.get("env") or []:
        if var.get("name") != app.port_env:
            continue
        if "value" not in var:
            raise _Refused(
                f"{where} listens on {app_port} and its {app.port_env} comes from a reference "
                f"(valueFrom) the tool cannot rewrite to {host_port}; {hint}"
            )
        if str(var["value"]).strip() == str(host_port):
            return f"{app.name}: env {app.port_env} is already {host_port}"
        if str(var["value"]).strip() != str(app_port):
            raise _Refused(
                f"{where}: env {app.port_env} is {var['value']!r} but the Service targets port "
                f"{app_port}, so where the app listens is unclear; {hint}"
            )
        var["value"] = str(host_port)
        return f"{app.name}: env {app.port_env} {app_port} → {host_port}"
    raise _Refused(
        f"{where} listens on {app_port} and nothing in its env tells it where to listen "
        f"(no {app.port_env} variable), so it cannot move to host port {host_port}; {hint}"
    )


def _move_probes(app: str, container: Obj, port: Obj, app_port: int, host_port: int) -> list[str]:
    """Point numeric probe and lifecycle ports at the host port; named ones follow the port itself."""
    notes = []
    handlers = [(key, container.get(key)) for key in PROBES]
    for hook in ("postStart", "preStop"):
        handlers.append((f"lifecycle.{hook}", (container.get("lifecycle") or {}).get(hook)))
    for key, probe in handlers:
        if not isinstance(probe, dict):
            continue
        for handler in _HANDLERS:
            action = probe.get(handler)
            if not isinstance(action, dict) or "port" not in action:
                continue
            if action["port"] == app_port:
                action["port"] = host_port
                notes.append(f"{app}: container {container.get('name')} {key} port {app_port} → {host_port}")
            elif action["port"] == port.get("name"):
                notes.append(
                    f"{app}: container {container.get('name')} {key} port {action['port']!r} now "
                    f"resolves to {host_port}"
                )
    return notes


def _workers_only(pod: Obj) -> None:
    """Require nodes without the control-plane role label, in every node selector term."""
    expression = {"key": CONTROL_PLANE_LABEL, "operator": "DoesNotExist"}
    affinity = pod.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        expressions = term.setdefault("matchExpressions", [])
        if expression not in expressions:
            expressions.append(dict(expression))
    required["nodeSelectorTerms"] = terms


def _daemonset_change(desired: Obj, existing: Obj | None, deployment: Obj, host_port: int) -> Change:
    ns, name = meta(desired)["namespace"], meta(desired)["name"]
    what = f"run {name} on every worker with hostNetwork, host port {host_port}"
    if existing is None:
        return Change(
            Verb.APPLY,
            "DaemonSet",
            ns,
            name,
            what,
            body=desired,
            after=desired,
            compare_to=strip_server_fields(deployment),
        )
    if is_subset(desired, existing):
        return Change(Verb.NONE, "DaemonSet", ns, name, "already as planned", after=desired)
    return Change(Verb.APPLY, "DaemonSet", ns, name, what, body=desired, before=existing, after=desired)


def _existing_host_port(ds: Obj, service: Obj, app: AppConfig, keep_port: bool) -> int:
    """The host port of an already converted app (the Deployment is gone)."""
    if not keep_port:
        return app.host_port
    _container, port = _app_port(pod_spec(ds), service, app, f"DaemonSet {meta(ds).get('namespace')}/{app.name}")
    return int(port["containerPort"])


# -- the Service --------------------------------------------------------------------------------------


def service_change(service: Obj, app: AppConfig, host_port: int, observed: Observed) -> Change:
    """Switch the Service to NodePort in place (its clusterIP is kept), port → host port."""
    ns, name = meta(service).get("namespace") or observed.namespace, name_of(service)
    spec = service.get("spec") or {}
    entry = _service_entry(service, app)
    for other in observed.services:
        if other is service or (name_of(other) == name and meta(other).get("namespace") == ns):
            continue
        for p in (other.get("spec") or {}).get("ports") or []:
            if p.get("nodePort") == app.node_port:
                raise _Refused(
                    f"nodePort {app.node_port} is already used by Service "
                    f"{meta(other).get('namespace')}/{name_of(other)}"
                )
    ports = []
    for p in spec.get("ports") or []:
        p = dict(p)
        if p.get("port") == app.service_port:
            p["targetPort"] = host_port
            p["nodePort"] = app.node_port
        ports.append(p)
    done = (
        spec.get("type") == "NodePort"
        and entry.get("targetPort") == host_port
        and entry.get("nodePort") == app.node_port
    )
    after = strip_server_fields(service)
    after["spec"] = {**spec, "type": "NodePort", "ports": ports}
    if done:
        return Change(Verb.NONE, "Service", ns, name, f"already NodePort {app.node_port} → {host_port}", after=after)
    old_target = entry.get("targetPort", entry.get("port"))
    reason = (
        f"type {spec.get('type', 'ClusterIP')} → NodePort, port {app.service_port}: targetPort {old_target} → "
        f"{host_port}, nodePort {app.node_port}; clusterIP {spec.get('clusterIP') or '(none)'} kept"
    )
    body: Obj = {"spec": {"type": "NodePort", "ports": ports}}
    if meta(service).get("resourceVersion"):
        body["metadata"] = {"resourceVersion": meta(service)["resourceVersion"]}
    return Change(Verb.PATCH, "Service", ns, name, reason, body=body, before=service, after=after)


# -- checks -------------------------------------------------------------------------------------------


def collisions(cfg: Config, placed: dict[str, tuple[Obj, set[HostPort]]], observed: Observed) -> list[str]:
    """Refuse host ports held by ingress-nginx, by another hostNetwork workload, or by the other app."""
    problems: list[str] = []
    reserved = {HostPort(p) for p in cfg.ingress.reserved_host_ports}
    apps = {a.name for a in cfg.apps}
    nodes = observed.nodes
    others = [
        w
        for w in [*observed.daemonsets, *observed.deployments, *observed.statefulsets]
        if not (meta(w).get("namespace") == cfg.namespace and name_of(w) in apps)
    ]
    seen: dict[HostPort, str] = {}
    for app, (spec, ports) in placed.items():
        mine = set(eligible_nodes(spec, nodes)) if nodes is not None else None
        if mine is not None and not mine:
            problems.append(
                f"{app}: no node can run its DaemonSet (workers only; nodeSelector, affinity and taints leave none)"
            )
        for p in sorted(ports & reserved):
            problems.append(f"{app}: host port {p} is reserved for ingress-nginx (ingress.reserved_host_ports)")
        for p in sorted(ports):
            if p in seen:
                problems.append(f"{app}: host port {p} is also the host port of {seen[p]}")
            seen.setdefault(p, app)
        for w in others:
            wspec = pod_spec(w)
            clash = ports & host_ports(wspec)
            if not clash:
                continue
            shared = None if mine is None or nodes is None else sorted(mine & set(eligible_nodes(wspec, nodes)))
            if shared == []:
                continue
            where = f" on {', '.join(shared)}" if shared else ""
            how = "hostNetwork" if wspec.get("hostNetwork") else "hostPort"
            for p in sorted(clash):
                problems.append(
                    f"{app}: host port {p} is already held by {w.get('kind')} "
                    f"{meta(w).get('namespace')}/{name_of(w)} ({how}){where}"
                )
    return problems


def env_warnings(app: str, spec: Obj, observed: Observed) -> list[str]:
    """Name each env variable whose value points at a ClusterIP Service (``*.svc`` or a ClusterIP)."""
    cluster_ips = {str((s.get("spec") or {}).get("clusterIP")) for s in observed.services}
    try:
        network = ipaddress.ip_network(observed.service_cidr) if observed.service_cidr else None
    except ValueError:
        network = None
    found = []
    for c in containers(spec):
        for var in c.get("env") or []:
            value = var.get("value")
            if not isinstance(value, str):
                continue
            hits = [m.group(0) for m in _SVC_HOST.finditer(value)]
            for m in _IPV4.finditer(value):
                try:
                    ip = ipaddress.ip_address(m.group(0))
                except ValueError:
                    continue
                if m.group(0) in cluster_ips or (network is not None and ip in network):
                    hits.append(m.group(0))
            if hits:
                found.append(
                    f"{app}: env {var.get('name')} (container {c.get('name')}) points at "
                    f"{', '.join(dict.fromkeys(hits))}, a ClusterIP Service: ClusterIP traffic is still "
                    "broken under this workaround, so those calls will fail"
                )
    return found


def observed_from_objects(objs: Sequence[Obj], cfg: Config) -> Observed:
    """Build the observed state from objects read from a file (``--from-file``)."""
    by_kind: dict[str, list[Obj]] = {}
    for o in objs:
        o = copy.deepcopy(o)
        if o.get("kind") != "Node":
            o["metadata"].setdefault("namespace", cfg.namespace)
        by_kind.setdefault(str(o.get("kind")), []).append(o)
    return Observed(
        namespace=cfg.namespace,
        deployments=by_kind.get("Deployment", []),
        daemonsets=by_kind.get("DaemonSet", []),
        statefulsets=by_kind.get("StatefulSet", []),
        services=by_kind.get("Service", []),
        hpas=[h for h in by_kind.get("HorizontalPodAutoscaler", []) if meta(h)["namespace"] == cfg.namespace],
        nodes=by_kind.get("Node") or None,
        service_cidr=cfg.overlay.service_cidr,
    )
