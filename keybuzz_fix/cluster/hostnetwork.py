"""What moving an app onto the host network runs into, found before anything changes (pure code, no I/O).

Host ports already held (by ingress-nginx, another hostNetwork or hostPort workload on the same
workers, or the other app), workers the DaemonSet would leave out or that are no Node of the
cluster, env values that still go through a ClusterIP Service, and other Services that target the
app's old port by number. Each is a refusal or a warning of :func:`keybuzz_fix.cluster.convert.plan_convert`.
"""

from __future__ import annotations

import ipaddress
import re

from keybuzz_fix.cluster.objects import Obj, containers, meta_of, name_of, pod_spec, spec_of
from keybuzz_fix.cluster.observed import Observed
from keybuzz_fix.cluster.placement import left_out
from keybuzz_fix.cluster.scheduling import HostPort, eligible_nodes, host_ports, is_worker_node, worker_nodes
from keybuzz_fix.config import Config

_SVC_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.svc(?:\.cluster\.local)?(?![A-Za-z0-9-])")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")


def _workers(observed: Observed) -> tuple[list[tuple[str, Obj]], str]:
    """The workers each DaemonSet must reach, with their Nodes (servers.tsv's, or the cluster's), and whence."""
    nodes = observed.nodes or []
    if observed.workers is None:
        return [(name_of(n), n) for n in nodes if is_worker_node(n)], "the cluster's worker Nodes"
    by_name = {name_of(n): n for n in nodes}
    mapped = worker_nodes(observed.workers, nodes)
    return [(w, by_name[n]) for w, n in mapped.items() if n is not None], "servers.tsv"


def left_out_workers(spec: Obj, observed: Observed) -> list[str]:
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


def unmapped_workers(observed: Observed) -> list[str]:
    """Warn of servers.tsv workers that are no Node of the cluster: their placement is not checked."""
    if observed.nodes is None or observed.workers is None:
        return []
    return [
        f"worker {w} of servers.tsv is no Node of the cluster (by name or InternalIP): whether the DaemonSets "
        "reach it is not checked"
        for w, n in worker_nodes(observed.workers, observed.nodes).items()
        if n is None
    ]


def other_services(
    app: str, deployment: Obj, service: Obj, app_port: int, host_port: int, observed: Observed
) -> list[str]:
    """Warn about other Services that select the app's pods and target its old port by number."""
    if app_port == host_port:
        return []
    ns = meta_of(deployment).get("namespace")
    labels = template_labels(deployment)
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


def template_labels(workload: Obj) -> dict[str, str]:
    """Return the labels of a workload's pod template (what Services and anti-affinity select)."""
    return dict(((spec_of(workload).get("template") or {}).get("metadata") or {}).get("labels") or {})


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


def env_warnings(app: str, spec: Obj, observed: Observed) -> tuple[list[str], list[str]]:
    """Name each env variable whose value points at a ClusterIP Service (``*.svc`` or a ClusterIP).

    Return (warnings, notes). Those calls cross the overlay between the nodes (CoreDNS, the
    Service's endpoints), which the workaround does not mend: a warning unless diagnose saw the
    overlay healthy lately (``observed.overlay``), then a note.
    """
    cluster_ips = {str(spec_of(s).get("clusterIP")) for s in observed.services}
    try:
        network = ipaddress.ip_network(observed.service_cidr) if observed.service_cidr else None
    except ValueError:
        network = None
    seen = observed.overlay
    warnings: list[str] = []
    notes: list[str] = []
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
            if not hits:
                continue
            head = (
                f"{app}: env {var.get('name')} (container {c.get('name')}) points at "
                f"{', '.join(dict.fromkeys(hits))}, a ClusterIP Service"
            )
            if seen is not None and seen.healthy:
                notes.append(f"{head}: {seen.describe()}, so those calls go through")
            elif seen is not None and seen.healthy is False:
                warnings.append(
                    f"{head}: those calls fail while the overlay between the nodes is broken — {seen.describe()}; "
                    "this workaround does not mend it (keybuzz-fix overlay does what UFW blocks)"
                )
            else:
                known = f"{seen.describe()}" if seen is not None else "not checked"
                warnings.append(
                    f"{head}: those calls fail if the overlay between the nodes is broken ({known}; "
                    "keybuzz-fix diagnose says; this workaround does not mend it)"
                )
    return warnings, notes
