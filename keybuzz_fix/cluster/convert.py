"""Plan the conversion of Deployments into hostNetwork DaemonSets (pure code, no I/O).

For each configured app: a DaemonSet carrying the Deployment's pod template over unchanged except
for what hostNetwork needs (``hostNetwork``, ``dnsPolicy``, the app's port moved to the host port
everywhere the pod names it, scheduling fit for one pod per worker, a surge-free rolling update),
its Service switched to NodePort in place, every HPA aimed at the Deployment, then the Deployment,
deleted (the DaemonSet itself is :mod:`keybuzz_fix.cluster.daemonset`'s). A plan can also refuse
(port collision, a port that cannot move, a worker the DaemonSet would leave out, an object
another controller owns or reconciles, missing objects) or warn (env values that still go through
ClusterIP; with ``allow_managed``, what the other controller will undo). Planning against the
state after a run, or after a half-finished run, yields the rest of the work: nothing, once
converted.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.cluster.changes import Change, Verb
from keybuzz_fix.cluster.daemonset import (
    Unconvertible,
    convert_template,
    daemonset_for,
    listening_port,
    service_entry,
)
from keybuzz_fix.cluster.objects import (
    MANAGED_BY,
    MANAGER,
    Obj,
    containers,
    is_subset,
    managed_by_us,
    mask_values,
    meta_of,
    name_of,
    pod_spec,
    spec_of,
    strip_server_fields,
)
from keybuzz_fix.cluster.owners import disruption_notes, managers_of
from keybuzz_fix.cluster.placement import Handover, handover, left_out
from keybuzz_fix.cluster.scheduling import HostPort, eligible_nodes, host_ports, is_worker_node, worker_nodes
from keybuzz_fix.config import AppConfig, Config
from keybuzz_fix.hints import hint
from keybuzz_fix.inventory import Host

__all__ = ["Observed", "ConvertPlan", "daemonset_for", "observed_from_objects", "plan_convert"]

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
    pdbs: Sequence[Obj] = ()  # the app namespace
    workers: Sequence[Host] | None = None  # servers.tsv's workers; None: the cluster's worker Nodes

    def one(self, objs: Sequence[Obj], name: str) -> Obj | None:
        """Return the object called ``name`` in the app namespace."""
        for o in objs:
            if name_of(o) == name and meta_of(o).get("namespace", self.namespace) == self.namespace:
                return o
        return None


@dataclass(frozen=True)
class ConvertPlan:
    """Everything convert would do, in order, with what it refuses and warns about."""

    daemonsets: tuple[Change, ...]
    services: tuple[Change, ...]
    hpas: tuple[Change, ...]
    deployments: tuple[Change, ...]
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    shown_env: frozenset[str]  # the port variables, shown even when values are masked
    handovers: tuple[Handover, ...] = ()  # DaemonSets the Deployment's own pods hold off until it is deleted

    @property
    def changes(self) -> tuple[Change, ...]:
        """Every change, in the order they are carried out."""
        return self.daemonsets + self.services + self.hpas + self.deployments

    @property
    def failed(self) -> bool:
        """Whether the plan refuses to convert an app."""
        return bool(self.refusals)

    @property
    def pending(self) -> list[Change]:
        """The changes that modify the cluster."""
        return [c for c in self.changes if c.changes]

    @property
    def changes_pending(self) -> bool:
        """Whether the plan changes the cluster (``convert --from-file --exit-code``)."""
        return bool(self.pending)

    @property
    def to_back_up(self) -> list[Obj]:
        """The objects as read that this plan changes or deletes."""
        return [c.before for c in self.pending if c.before is not None]

    def applied_objects(self, *, show_values: bool = False) -> list[Obj]:
        """The objects as they will be (DaemonSets, then Services), masked unless asked."""
        objs = [c.after for c in self.daemonsets + self.services if c.after is not None]
        return objs if show_values else [mask_values(o, self.shown_env) for o in objs]


def plan_convert(
    cfg: Config, observed: Observed, *, keep_port: bool = False, allow_managed: bool = False
) -> ConvertPlan:
    """Return the plan that brings ``observed`` to the converted state.

    Objects another controller owns or reconciles are refused, one line each, unless
    ``allow_managed``: then the plan goes on and warns what that controller will undo.
    """
    ns = cfg.namespace
    ds_changes: list[Change] = []
    svc_changes: list[Change] = []
    hpa_changes: list[Change] = []
    dep_changes: list[Change] = []
    refusals: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    placed: dict[str, tuple[Obj, set[HostPort]]] = {}  # app -> (pod spec, host ports) for collision checks
    handovers: list[Handover] = []
    for app in cfg.apps:
        deployment = observed.one(observed.deployments, app.name)
        existing = observed.one(observed.daemonsets, app.name)
        service = observed.one(observed.services, app.name)
        mine: list[Change] = []
        try:
            if existing is not None and not managed_by_us(existing):
                raise Unconvertible(
                    f"DaemonSet {ns}/{app.name} exists and is not managed by keybuzz-fix "
                    f"(no label {MANAGED_BY}={MANAGER}); rename or remove it first"
                )
            if service is None:
                raise Unconvertible(f"Service {ns}/{app.name} not found")
            if deployment is None and existing is None:
                raise Unconvertible(f"neither Deployment nor DaemonSet {ns}/{app.name} found")
            if deployment is not None:
                converted = convert_template(deployment, app, service, keep_port=keep_port)
                desired, host_port = converted.daemonset, converted.host_port
                notes += converted.notes
                warnings += converted.warnings
                warnings += env_warnings(app.name, pod_spec(desired), observed)
                app_port = _app_port(deployment, service, app)
                warnings += _other_services(app.name, deployment, service, app_port, host_port, observed)
                mine.append(_daemonset_change(desired, existing, deployment, host_port))
                spec = pod_spec(desired)
                held = handover(deployment, _template_labels(desired), ns)
                if held is not None:
                    handovers.append(held)
                    notes.append(
                        f"{app.name}: the Deployment's own pods keep a required anti-affinity against the app's pods "
                        f"(topologyKey {', '.join(held.topology_keys)}), so the DaemonSet's pods cannot start next to "
                        "them: convert switches over once the DaemonSet's other pods are ready, deletes the "
                        "Deployment, then waits for the rest"
                    )
            else:
                assert existing is not None
                host_port = app_port = _existing_host_port(existing, service, app, keep_port)
                mine.append(
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
            refusals += [f"{app.name}: {r}" for r in _left_out(spec, observed)]
            notes += disruption_notes(app.name, _template_labels(deployment or existing or {}), ns, observed.pdbs)
            placed[app.name] = (spec, host_ports(spec))
            svc = service_change(service, app, host_port, observed, moved_from=app_port)
        except Unconvertible as e:
            refusals += [f"{app.name}: {p}" for p in e.problems]
            continue
        hpas = [
            Change(
                Verb.DELETE,
                "HorizontalPodAutoscaler",
                ns,
                name_of(hpa),
                f"scales Deployment {app.name}, which the DaemonSet replaces",
                before=hpa,
                uid=meta_of(hpa).get("uid"),
            )
            for hpa in observed.hpas
            if _scales(hpa, app.name, ns)
        ]
        deps = []
        if deployment is not None:
            deps.append(
                Change(
                    Verb.DELETE,
                    "Deployment",
                    ns,
                    app.name,
                    f"replaced by DaemonSet {ns}/{app.name}",
                    before=deployment,
                    uid=meta_of(deployment).get("uid"),
                )
            )
        managed = _managed(app.name, [svc, *hpas, *deps], allow_managed=allow_managed)
        (warnings if allow_managed else refusals).extend(managed)
        ds_changes += mine
        svc_changes.append(svc)
        hpa_changes += hpas
        dep_changes += deps
    refusals += collisions(cfg, placed, observed)
    warnings += _unmapped(observed)
    return ConvertPlan(
        tuple(ds_changes),
        tuple(svc_changes),
        tuple(hpa_changes),
        tuple(dep_changes),
        tuple(refusals),
        tuple(warnings),
        tuple(notes),
        frozenset(a.port_env for a in cfg.apps),
        tuple(h for h in handovers if h.daemonset in {c.name for c in ds_changes}),
    )


def _scales(hpa: Obj, app: str, namespace: str) -> bool:
    target = spec_of(hpa).get("scaleTargetRef") or {}
    return bool(
        target.get("kind") == "Deployment"
        and target.get("name") == app
        and meta_of(hpa).get("namespace", namespace) == namespace
    )


def _managed(app: str, changes: Sequence[Change], *, allow_managed: bool) -> list[str]:
    """One line per object to change that another controller owns or reconciles: who, and what to do."""
    lines = []
    for c in changes:
        if not c.changes or c.before is None:
            continue
        managers = managers_of(c.before)
        if not managers:
            continue
        who = " and ".join(m.who for m in managers)
        by = " or ".join(dict.fromkeys(m.by for m in managers))
        undo = "re-create" if c.verb is Verb.DELETE else "reset"
        fixes = "; and ".join(dict.fromkeys(m.fix for m in managers))
        if allow_managed:
            lines.append(
                f"{app}: {hint('--allow-managed', '--allow-managed: ')}{c.label} {c.target} though {who} manages it: "
                f"{by} will {undo} it; "
                f"to keep it converted, {fixes}"
            )
        else:
            lines.append(
                f"{app}: {c.target} is managed by {who}: {by} would {undo} it after convert; first {fixes}"
                + hint("--allow-managed", " (or pass --allow-managed)")
            )
    return lines


def _workers(observed: Observed) -> tuple[list[tuple[str, Obj]], str]:
    """The workers each DaemonSet must reach, with their Nodes (servers.tsv's, or the cluster's), and whence."""
    nodes = observed.nodes or []
    if observed.workers is None:
        return [(name_of(n), n) for n in nodes if is_worker_node(n)], "the cluster's worker Nodes"
    by_name = {name_of(n): n for n in nodes}
    mapped = worker_nodes(observed.workers, nodes)
    return [(w, by_name[n]) for w, n in mapped.items() if n is not None], "servers.tsv"


def _left_out(spec: Obj, observed: Observed) -> list[str]:
    """Refuse, naming them, the workers the DaemonSet controller would give no pod."""
    if observed.nodes is None:
        return []
    workers, source = _workers(observed)
    if not workers:
        return [f"no worker Node found ({source}) to run the DaemonSet on"]
    return [
        f"its DaemonSet would leave out worker(s) {', '.join(names)} ({source}): {reason}; the app must run on "
        "every worker: widen or remove that constraint"
        for reason, names in left_out(spec, workers).items()
    ]


def _unmapped(observed: Observed) -> list[str]:
    """Warn of servers.tsv workers that are no Node of the cluster: their placement is not checked."""
    if observed.nodes is None or observed.workers is None:
        return []
    return [
        f"worker {w} of servers.tsv is no Node of the cluster (by name or InternalIP): whether the DaemonSets "
        "reach it is not checked"
        for w, n in worker_nodes(observed.workers, observed.nodes).items()
        if n is None
    ]


def _daemonset_change(desired: Obj, existing: Obj | None, deployment: Obj, host_port: int) -> Change:
    ns, name = meta_of(desired)["namespace"], meta_of(desired)["name"]
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


def _app_port(deployment: Obj, service: Obj, app: AppConfig) -> int:
    """The port the app listens on in the Deployment (before any move)."""
    ns = meta_of(deployment).get("namespace")
    _container, port = listening_port(pod_spec(deployment), service, app, f"Deployment {ns}/{app.name}")
    return int(port["containerPort"])


def _other_services(
    app: str, deployment: Obj, service: Obj, app_port: int, host_port: int, observed: Observed
) -> list[str]:
    """Warn about other Services that select the app's pods and target its old port by number."""
    if app_port == host_port:
        return []
    ns = meta_of(deployment).get("namespace")
    labels = _template_labels(deployment)
    found = []
    for other in observed.services:
        selector = spec_of(other).get("selector") or {}
        if other is service or meta_of(other).get("namespace") != ns or not selector:
            continue
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        for i, p in enumerate(spec_of(other).get("ports") or []):
            if p.get("targetPort", p.get("port")) == app_port:
                found.append(
                    f"{app}: Service {ns}/{name_of(other)} also selects its pods and targets port {app_port} by "
                    f"number (spec.ports[{i}].targetPort), which moves to {host_port}: convert leaves that Service "
                    f"alone, so it will reach nothing; point it at the port's name or at {host_port}"
                )
    return found


def _template_labels(workload: Obj) -> dict[str, str]:
    return dict(((spec_of(workload).get("template") or {}).get("metadata") or {}).get("labels") or {})


def _existing_host_port(ds: Obj, service: Obj, app: AppConfig, keep_port: bool) -> int:
    """The host port of an already converted app (the Deployment is gone)."""
    if not keep_port:
        return app.host_port
    _container, port = listening_port(
        pod_spec(ds), service, app, f"DaemonSet {meta_of(ds).get('namespace')}/{app.name}"
    )
    return int(port["containerPort"])


def service_change(
    service: Obj, app: AppConfig, host_port: int, observed: Observed, *, moved_from: int | None = None
) -> Change:
    """Switch the Service to NodePort in place (its clusterIP is kept), port → host port.

    Its other ports that target the app's old port by number (``moved_from``) follow it too.
    """
    ns, name = meta_of(service).get("namespace") or observed.namespace, name_of(service)
    spec = spec_of(service)
    entry = service_entry(service, app)
    for other in observed.services:
        if other is service or (name_of(other) == name and meta_of(other).get("namespace") == ns):
            continue
        for p in spec_of(other).get("ports") or []:
            if p.get("nodePort") == app.node_port:
                raise Unconvertible(
                    f"nodePort {app.node_port} is already used by Service "
                    f"{meta_of(other).get('namespace')}/{name_of(other)}"
                )
    ports = []
    followed: list[str] = []
    for p in spec.get("ports") or []:
        p = dict(p)
        if p.get("port") == app.service_port:
            p["targetPort"] = host_port
            p["nodePort"] = app.node_port
        elif moved_from is not None and moved_from != host_port and p.get("targetPort") == moved_from:
            p["targetPort"] = host_port
            followed.append(f"; port {p.get('port')}: targetPort {moved_from} → {host_port} (the app's port)")
        ports.append(p)
    done = (
        spec.get("type") == "NodePort"
        and entry.get("targetPort") == host_port
        and entry.get("nodePort") == app.node_port
        and ports == (spec.get("ports") or [])
    )
    after = strip_server_fields(service)
    after["spec"] = {**spec, "type": "NodePort", "ports": ports}
    if done:
        return Change(Verb.NONE, "Service", ns, name, f"already NodePort {app.node_port} → {host_port}", after=after)
    reason = _service_reason(spec, entry, app, host_port) + "".join(followed)
    body: Obj = {"spec": {"type": "NodePort", "ports": ports}}
    if meta_of(service).get("resourceVersion"):
        body["metadata"] = {"resourceVersion": meta_of(service)["resourceVersion"]}
    return Change(Verb.PATCH, "Service", ns, name, reason, body=body, before=service, after=after)


def _service_reason(spec: Obj, entry: Obj, app: AppConfig, host_port: int) -> str:
    """Say what switching the Service changes, naming only what differs (never ``targetPort 3000 → 3000``)."""
    kind = spec.get("type", "ClusterIP")
    parts = [f"type {kind} → NodePort"] if kind != "NodePort" else []
    old_target = entry.get("targetPort", entry.get("port"))
    moves = []
    if old_target != host_port:
        moves.append(f"targetPort {old_target} → {host_port}")
    old_node_port = entry.get("nodePort")
    if old_node_port != app.node_port:
        moves.append(f"nodePort {old_node_port} → {app.node_port}" if old_node_port else f"nodePort {app.node_port}")
    if moves:
        parts.append(f"port {app.service_port}: {', '.join(moves)}")
    if not parts:
        parts.append(f"already NodePort {app.node_port} → {host_port}")
    return ", ".join(parts) + f"; clusterIP {spec.get('clusterIP') or '(none)'} kept"


def collisions(cfg: Config, placed: dict[str, tuple[Obj, set[HostPort]]], observed: Observed) -> list[str]:
    """Refuse host ports held by ingress-nginx, by another hostNetwork workload, or by the other app."""
    problems: list[str] = []
    reserved = {HostPort(p) for p in cfg.ingress.reserved_host_ports}
    apps = {a.name for a in cfg.apps}
    nodes = observed.nodes
    others = [
        w
        for w in [*observed.daemonsets, *observed.deployments, *observed.statefulsets]
        if not (meta_of(w).get("namespace") == cfg.namespace and name_of(w) in apps)
    ]
    seen: dict[HostPort, str] = {}
    for app, (spec, ports) in placed.items():
        mine = set(eligible_nodes(spec, nodes, daemonset=True)) if nodes is not None else None
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
                    f"{meta_of(w).get('namespace')}/{name_of(w)} ({how}){where}"
                )
    return problems


def env_warnings(app: str, spec: Obj, observed: Observed) -> list[str]:
    """Name each env variable whose value points at a ClusterIP Service (``*.svc`` or a ClusterIP)."""
    cluster_ips = {str(spec_of(s).get("clusterIP")) for s in observed.services}
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
                    f"{', '.join(dict.fromkeys(hits))}, a ClusterIP Service: those calls fail for as long as the "
                    "overlay between the nodes is broken (this workaround does not mend it; keybuzz-fix diagnose "
                    "says whether it is)"
                )
    return found


def observed_from_objects(objs: Sequence[Obj], cfg: Config, workers: Sequence[Host] | None = None) -> Observed:
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
        hpas=[h for h in by_kind.get("HorizontalPodAutoscaler", []) if meta_of(h)["namespace"] == cfg.namespace],
        nodes=by_kind.get("Node") or None,
        service_cidr=cfg.overlay.service_cidr,
        pdbs=[p for p in by_kind.get("PodDisruptionBudget", []) if meta_of(p)["namespace"] == cfg.namespace],
        workers=workers,
    )
