"""A Deployment's pod template carried over to a hostNetwork DaemonSet (pure code).

Unchanged except for what hostNetwork and a DaemonSet need: ``hostNetwork``, ``dnsPolicy``, the
app's port moved to the host port everywhere the pod names it (:mod:`keybuzz_fix.cluster.podports`),
one env entry per name (server-side apply refuses duplicates), scheduling fit for one pod per
worker (:mod:`keybuzz_fix.cluster.placement`), a required node affinity that keeps it off the
control plane, and a rolling update that never surges. The DaemonSet's own metadata never carries
the Deployment's release or GitOps tracking metadata (:mod:`keybuzz_fix.cluster.owners`). An app
that cannot be converted is :class:`Unconvertible`, with every reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

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
from keybuzz_fix.cluster.owners import TRACKING_ANNOTATIONS, TRACKING_LABELS, untracked
from keybuzz_fix.cluster.placement import fit_for_daemonset
from keybuzz_fix.cluster.podports import (
    PortFindings,
    dedupe_env,
    move_annotation,
    move_port,
    port_conflicts,
    written_ports,
)
from keybuzz_fix.cluster.scheduling import CONTROL_PLANE_LABEL, is_sidecar
from keybuzz_fix.config import AppConfig
from keybuzz_fix.hints import hint

POD = "spec.template.spec"


class Unconvertible(Exception):
    """One app cannot be converted; the message says why (``problems``: every reason, one per line)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass
class Converted:
    """The DaemonSet replacing a Deployment, its host port, and what converting rewrote or warns about."""

    daemonset: Obj
    host_port: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def daemonset_for(
    deployment: Obj, app: AppConfig, service: Obj, *, keep_port: bool = False
) -> tuple[Obj, int, list[str]]:
    """Return the DaemonSet replacing ``deployment``, its host port, and notes on what was rewritten."""
    done = convert_template(deployment, app, service, keep_port=keep_port)
    return done.daemonset, done.host_port, done.notes


def convert_template(deployment: Obj, app: AppConfig, service: Obj, *, keep_port: bool = False) -> Converted:
    """Build the DaemonSet replacing ``deployment``; raise :class:`Unconvertible` with every reason it cannot be."""
    ns = meta_of(deployment).get("namespace") or ""
    where = f"Deployment {ns}/{app.name}"
    spec = spec_of(deployment)
    template = copy.deepcopy(spec.get("template") or {})
    pod = template.setdefault("spec", {})
    if not pod.get("containers"):
        raise Unconvertible(f"{where} has no containers")
    listening, port = _listening(pod, service, app, where)
    app_port = int(port["containerPort"])
    host_port = app_port if keep_port else app.host_port
    found = PortFindings()
    warnings: list[str] = []
    tmeta = template.setdefault("metadata", {})
    if app_port != host_port:
        moves = (app_port, host_port)
        moved = move_port(pod, listening, port, app.port_env, moves, app.name, where, POD)
        scrape = move_annotation(tmeta.get("annotations") or {}, moves, app.name, f"{where}: spec.template")
        found.notes += moved.notes + scrape.notes
        found.problems += moved.problems + scrape.problems
        found.notes.append(f"{app.name}: container port {port.get('name') or app_port} {app_port} → {host_port}")
    elif keep_port and app_port != app.host_port:
        written = [f"{POD}.{at}" for at in written_ports(pod, app.port_env, listening[1], app_port)]
        written += [
            f"spec.template.metadata.annotations[{k}]"
            for k, v in (tmeta.get("annotations") or {}).items()
            if str(v).strip() == str(app_port)
        ]
        warnings += [
            f"{app.name}: {where}: {at} names port {app_port}: kept as it is, right while the app stays on "
            f"{app_port}{hint('--keep-port', ' (--keep-port)')}"
            for at in written
        ]
    dedupe = dedupe_env(pod, f"{where}: {POD}", app.name)
    found.notes += dedupe.notes
    found.problems += dedupe.problems
    found.problems += port_conflicts(pod, port, host_port, where, POD)
    placement = fit_for_daemonset(pod, dict(tmeta.get("labels") or {}), ns, POD)
    found.notes += [f"{app.name}: {n}" for n in placement.notes]
    found.problems += [f"{where}: {p}" for p in placement.problems]
    if found.problems:
        raise Unconvertible(*found.problems)
    port["containerPort"] = port["hostPort"] = host_port
    pod["hostNetwork"] = True
    pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    _workers_only(pod)
    tmeta.pop("creationTimestamp", None)
    tmeta["labels"] = {**(tmeta.get("labels") or {}), MANAGED_BY: MANAGER}
    labels, dropped = untracked(labels_of(deployment), TRACKING_LABELS)
    dmeta: Obj = {"name": app.name, "namespace": ns, "labels": {**labels, MANAGED_BY: MANAGER}}
    annotations, dropped_annotations = untracked(
        {
            k: v
            for k, v in (meta_of(deployment).get("annotations") or {}).items()
            if k not in SERVER_ANNOTATIONS and k != LAST_APPLIED
        },
        TRACKING_ANNOTATIONS,
    )
    if annotations:
        dmeta["annotations"] = annotations
    untracked_keys = [k for k in dropped if k != MANAGED_BY] + dropped_annotations
    if untracked_keys:
        found.notes.append(
            f"{app.name}: not carried over to the DaemonSet (release and GitOps tracking): {', '.join(untracked_keys)}"
        )
    ds_spec: Obj = {
        "selector": copy.deepcopy(spec.get("selector")),
        "template": template,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
    }
    for key in ("minReadySeconds", "revisionHistoryLimit"):
        if key in spec:
            ds_spec[key] = spec[key]
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": dmeta, "spec": ds_spec}
    return Converted(ds, host_port, found.notes, warnings)


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
    (_path, container), port = _listening(pod, service, app, where)
    return container, port


def _listening(pod: Obj, service: Obj, app: AppConfig, where: str) -> tuple[tuple[str, Obj], Obj]:
    (path, container), port = _target_port(pod, service, app, where)
    if "containerPort" not in port:  # its type, when present, is checked on parsing
        raise Unconvertible(
            f"{where}: container {container.get('name')} has a port entry without a containerPort "
            f"({port!r}), so where the app listens is unclear"
        )
    return (path, container), port


def _target_port(pod: Obj, service: Obj, app: AppConfig, where: str) -> tuple[tuple[str, Obj], Obj]:
    """The port entry the Service targets: in a container, else in a sidecar (restartable init container)."""
    entry = service_entry(service, app)
    target = entry.get("targetPort", entry.get("port"))
    ports = [
        ((f"{key}[{i}]", c), p)
        for key in ("containers", "initContainers")
        for i, c in enumerate(pod.get(key) or [])
        if key == "containers" or is_sidecar(c)
        for p in c.get("ports") or []
    ]
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
