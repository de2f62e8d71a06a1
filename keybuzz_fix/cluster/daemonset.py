"""A Deployment's pod template carried over to a hostNetwork DaemonSet (pure code).

Unchanged except for what hostNetwork needs: ``hostNetwork``, ``dnsPolicy``, the app's port moved
to the host port together with the env variable that tells the app where to listen and its probe
and lifecycle ports, a required node affinity that keeps it off the control plane, and a rolling
update that never surges. An app whose port cannot move is :class:`Unconvertible`, with the reason.
"""

from __future__ import annotations

import copy

from keybuzz_fix.cluster.objects import (
    LAST_APPLIED,
    MANAGED_BY,
    MANAGER,
    SERVER_ANNOTATIONS,
    Obj,
    labels_of,
    meta_of,
    name_of,
    spec_of,
)
from keybuzz_fix.cluster.scheduling import CONTROL_PLANE_LABEL
from keybuzz_fix.config import AppConfig

PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HANDLERS = ("httpGet", "tcpSocket", "grpc")


class Unconvertible(Exception):
    """One app cannot be converted; the message says why."""


def daemonset_for(
    deployment: Obj, app: AppConfig, service: Obj, *, keep_port: bool = False
) -> tuple[Obj, int, list[str]]:
    """Return the DaemonSet replacing ``deployment``, its host port, and notes on what was rewritten."""
    ns = meta_of(deployment).get("namespace") or ""
    where = f"Deployment {ns}/{app.name}"
    spec = spec_of(deployment)
    template = copy.deepcopy(spec.get("template") or {})
    pod = template.setdefault("spec", {})
    if not pod.get("containers"):
        raise Unconvertible(f"{where} has no containers")
    container, port = listening_port(pod, service, app, where)
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
                raise Unconvertible(
                    f"{where}: container {c.get('name')} port {p.get('containerPort')} has hostPort "
                    f"{p['hostPort']}; with hostNetwork both must be equal"
                )
            if p.get("containerPort") == host_port:
                raise Unconvertible(f"{where}: container {c.get('name')} already uses port {host_port}")
    port["containerPort"] = port["hostPort"] = host_port
    pod["hostNetwork"] = True
    pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    _workers_only(pod)
    tmeta = template.setdefault("metadata", {})
    tmeta.pop("creationTimestamp", None)
    tmeta["labels"] = {**(tmeta.get("labels") or {}), MANAGED_BY: MANAGER}
    dmeta: Obj = {"name": app.name, "namespace": ns, "labels": {**labels_of(deployment), MANAGED_BY: MANAGER}}
    annotations = {
        k: v
        for k, v in (meta_of(deployment).get("annotations") or {}).items()
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


def service_entry(service: Obj, app: AppConfig) -> Obj:
    """Return the Service port the app is reached on (``apps[].service_port``)."""
    for p in spec_of(service).get("ports") or []:
        if p.get("port") == app.service_port:
            return dict(p)
    raise Unconvertible(
        f"Service {meta_of(service).get('namespace')}/{name_of(service)} has no port {app.service_port} "
        "(apps[].service_port)"
    )


def listening_port(pod: Obj, service: Obj, app: AppConfig, where: str) -> tuple[Obj, Obj]:
    """Return the container and container port the Service sends traffic to; it must say its number."""
    container, port = _target_port(pod, service, app, where)
    if "containerPort" not in port:  # its type, when present, is checked on parsing
        raise Unconvertible(
            f"{where}: container {container.get('name')} has a port entry without a containerPort "
            f"({port!r}), so where the app listens is unclear"
        )
    return container, port


def _target_port(pod: Obj, service: Obj, app: AppConfig, where: str) -> tuple[Obj, Obj]:
    entry = service_entry(service, app)
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
    raise Unconvertible(f"cannot tell which container port of {where} the Service's targetPort {target!r} means")


def _move_env(container: Obj, app: AppConfig, app_port: int, host_port: int, where: str) -> str:
    """Rewrite the variable telling the app where to listen, or refuse when there is none."""
    hint = f"--keep-port runs it on {app_port} instead, or name the variable in the config (apps[].port_env)"
    for var in container.get("env") or []:
        if var.get("name") != app.port_env:
            continue
        if "value" not in var:
            raise Unconvertible(
                f"{where} listens on {app_port} and its {app.port_env} comes from a reference "
                f"(valueFrom) the tool cannot rewrite to {host_port}; {hint}"
            )
        if str(var["value"]).strip() == str(host_port):
            return f"{app.name}: env {app.port_env} is already {host_port}"
        if str(var["value"]).strip() != str(app_port):
            raise Unconvertible(
                f"{where}: env {app.port_env} is {var['value']!r} but the Service targets port "
                f"{app_port}, so where the app listens is unclear; {hint}"
            )
        var["value"] = str(host_port)
        return f"{app.name}: env {app.port_env} {app_port} → {host_port}"
    raise Unconvertible(
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
