"""Which ports the ingress traffic really arrives on at a worker, from the cluster's own description (pure).

UFW filters in ``filter INPUT``; kube-proxy translates a NodePort in ``nat PREROUTING``, before that.
So a request for ``<worker>:31695`` reaches UFW as a request for the port of the ingress-nginx
endpoint kube-proxy picked — with ingress-nginx as a hostNetwork DaemonSet, that is ``<some
worker>:80`` (or 443 for the HTTPS NodePort), on this worker or forwarded, masqueraded, to another
one. ingress-nginx then proxies to the app's endpoints, which for hostNetwork DaemonSets are
``<every worker>:8080`` / ``:3000``. Each of those ports must be open from the private network on
every worker; the NodePorts themselves are kept open too (the first step of the remediation). Facts:
kube-proxy's iptables mode (KUBE-NODEPORTS in nat PREROUTING, KUBE-FORWARD prepended to FORWARD,
MASQUERADE for traffic sent to another node) and ingress-nginx's use of endpoints, not ClusterIPs.

The facts are plain API objects (dicts); where they cannot be read, :func:`from_config` gives the
configured ports (``firewall.ports``) and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from keybuzz_fix.cluster.objects import Obj, containers, describe_object, name_of, pod_spec
from keybuzz_fix.config import AppConfig, Config


class Hop(str, Enum):
    """Which hop of the traffic a port serves."""

    NODE_PORT = "NodePort"  # the load balancers → a worker
    INGRESS = "ingress host port"  # kube-proxy on a worker → the ingress controller on a worker
    APP = "app host port"  # ingress-nginx on a worker → the app on a worker

    @property
    def between_workers(self) -> bool:
        """Whether the hop goes from one worker to another (what validate checks from the workers)."""
        return self is not Hop.NODE_PORT


@dataclass(frozen=True)
class TrafficPort:
    """A port the ingress traffic arrives on at every worker, why, and which object says so.

    ``comment`` is the short form kept with the UFW rule; ``purpose`` the whole reason for the plan.
    """

    port: int
    proto: str
    comment: str
    purpose: str
    source: str  # the object or config key the port was read from
    hop: Hop = Hop.NODE_PORT


@dataclass(frozen=True)
class TrafficPorts:
    """Every port to open, and what the operator should know about how they were found."""

    ports: tuple[TrafficPort, ...]
    notes: tuple[str, ...] = ()
    from_cluster: bool = True


@dataclass(frozen=True)
class ClusterFacts:
    """The objects the ports are read from (None: not found).

    ``app_daemonsets`` and ``app_services`` map an app's name to its DaemonSet and Service; the
    apps named in ``planned`` have them as convert will make them, not as the cluster holds them.
    """

    ingress_service: Obj | None
    ingress_daemonset: Obj | None
    ingress_deployment: Obj | None
    app_daemonsets: Mapping[str, Obj]
    app_services: Mapping[str, Obj]
    planned: frozenset[str] = frozenset()


def from_config(cfg: Config, why: str) -> TrafficPorts:
    """Return the configured ports (``firewall.ports``), noting ``why`` the cluster was not asked."""
    ports = tuple(
        TrafficPort(
            r.port,
            r.proto,
            r.comment,
            r.purpose or r.comment.removeprefix("keybuzz-fix: ") or f"port {r.port}/{r.proto}",
            f"config firewall.ports[{i}]",
            _configured_hop(cfg, r.port),
        )
        for i, r in enumerate(cfg.firewall.ports)
    )
    return TrafficPorts(ports, (f"{why}: the ports come from the configuration (firewall.ports)",), False)


def _configured_hop(cfg: Config, port: int) -> Hop:
    """The hop a configured port serves: a NodePort of the ingress, an app's host port, else the ingress's."""
    if port in (cfg.ingress.http_node_port, cfg.ingress.https_node_port):
        return Hop.NODE_PORT
    return Hop.APP if port in {a.host_port for a in cfg.apps} else Hop.INGRESS


def from_cluster(cfg: Config, facts: ClusterFacts) -> TrafficPorts:
    """Return the ports the ingress traffic uses, read from the ingress Service, its controller and the apps."""
    ports: list[TrafficPort] = []
    notes: list[str] = []
    node_ports = _node_ports(cfg, facts.ingress_service, notes)
    ports += [p for p, _, _ in node_ports]
    ports += _ingress_host_ports(cfg, facts, node_ports, notes)
    for app in cfg.apps:
        port = _app_host_port(cfg, app, facts, notes)
        if port is not None:
            ports.append(port)
    return TrafficPorts(_unique(ports), tuple(notes))


def _unique(ports: list[TrafficPort]) -> tuple[TrafficPort, ...]:
    seen: set[tuple[int, str]] = set()
    out = []
    for p in ports:
        if (p.port, p.proto) not in seen:
            seen.add((p.port, p.proto))
            out.append(p)
    return tuple(out)


def _proto(port: Obj) -> str:
    return str(port.get("protocol") or "TCP").lower()


_NodePort = tuple[TrafficPort, Obj, str]  # the port, its Service port entry, its label (HTTP, HTTPS)


def _node_port(port: int, proto: str, label: str, source: str) -> TrafficPort:
    return TrafficPort(
        port,
        proto,
        f"keybuzz-fix: ingress-nginx {label} NodePort",
        f"ingress-nginx {label} NodePort: the load balancers connect to it on every worker",
        source,
    )


def _node_ports(cfg: Config, service: Obj | None, notes: list[str]) -> list[_NodePort]:
    """The ingress Service's NodePorts (the load balancers' targets), each with its Service port entry."""
    ic = cfg.ingress
    where = f"Service {ic.namespace}/{ic.service}"
    found: list[_NodePort] = []
    if service is not None:
        for entry in (service.get("spec") or {}).get("ports") or []:
            if entry.get("nodePort"):
                label = str(entry.get("name") or entry.get("port")).upper()
                found.append((_node_port(int(entry["nodePort"]), _proto(entry), label, where), entry, label))
    if found:
        return found
    problem = "not found" if service is None else "has no NodePort"
    notes.append(f"{where} {problem}: NodePorts {ic.http_node_port}/{ic.https_node_port} from the configuration")
    return [
        (
            _node_port(port, "tcp", label, f"config ingress.{key}"),
            {"name": label.lower(), "port": number, "nodePort": port},
            label,
        )
        for label, key, port, number in (
            ("HTTP", "http_node_port", ic.http_node_port, 80),
            ("HTTPS", "https_node_port", ic.https_node_port, 443),
        )
    ]


def _ingress_host_ports(
    cfg: Config, facts: ClusterFacts, node_ports: list[_NodePort], notes: list[str]
) -> list[TrafficPort]:
    """The controller's host ports the NodePorts lead to, when it runs with hostNetwork."""
    ic = cfg.ingress
    controller = facts.ingress_daemonset or facts.ingress_deployment
    if controller is None:
        notes.append(
            f"ingress-nginx controller {ic.namespace}/{ic.controller} not found: its host ports are "
            "taken as the NodePorts' Service ports (80/443)"
        )
    elif not pod_spec(controller).get("hostNetwork"):
        notes.append(
            f"{describe_object(controller)} does not use hostNetwork: its NodePorts lead to pod IPs, which "
            "reach the pods by forwarding, not through UFW's INPUT rules; no host port is opened for it"
        )
        return []
    out = []
    for node_port, entry, label in node_ports:
        target = entry.get("targetPort", entry.get("port"))
        number = _container_port(controller, target) if controller is not None else None
        if number is None:
            number = target if isinstance(target, int) else entry.get("port")
            if controller is not None:
                notes.append(
                    f"{describe_object(controller)} has no container port {target!r}: host port {number} assumed "
                    f"for NodePort {node_port.port}"
                )
        if not isinstance(number, int):
            continue
        source = describe_object(controller) if controller is not None else f"Service {ic.namespace}/{ic.service}"
        out.append(
            TrafficPort(
                number,
                _proto(entry),
                f"keybuzz-fix: ingress-nginx {label} host port",
                f"ingress-nginx {label} host port: kube-proxy translates NodePort {node_port.port} to it before UFW "
                "sees the packet, on this worker or forwarded from another one",
                source,
                Hop.INGRESS,
            )
        )
    return out


def _container_port(workload: Obj, target: object) -> int | None:
    for c in containers(pod_spec(workload)):
        for p in c.get("ports") or []:
            if (isinstance(target, str) and p.get("name") == target) or p.get("containerPort") == target:
                number = p.get("hostPort") or p.get("containerPort")
                return int(number) if isinstance(number, int) else None
    return None


def _app_host_port(cfg: Config, app: AppConfig, facts: ClusterFacts, notes: list[str]) -> TrafficPort | None:
    """The app's host port: from its hostNetwork DaemonSet (or the one convert will make), else the configured one."""
    purpose = (
        f"{app.name} host port: ingress-nginx on every worker proxies to the app on every worker "
        "(its endpoints are the workers' addresses)"
    )
    comment = f"keybuzz-fix: {app.name} host port"
    ds = facts.app_daemonsets.get(app.name)
    if ds is None:
        where = f"config apps[].host_port of {app.name}"
        return TrafficPort(app.host_port, "tcp", comment, purpose + ", once convert has run", where, Hop.APP)
    source = describe_object(ds) + (" as convert will make it" if app.name in facts.planned else "")
    if not pod_spec(ds).get("hostNetwork"):
        notes.append(f"{source} does not use hostNetwork: no host port is opened for {app.name}")
        return None
    service = facts.app_services.get(app.name)
    entry = next(
        (p for p in ((service or {}).get("spec") or {}).get("ports") or [] if p.get("port") == app.service_port), None
    )
    number = _container_port(ds, entry.get("targetPort", entry.get("port"))) if entry else None
    if number is None:
        number = app.host_port
        notes.append(
            f"{source}: the port its Service targets is not among its container ports; "
            f"host port {number} from the configuration"
        )
    return TrafficPort(number, "tcp", comment, purpose, source, Hop.APP)


def facts_from_objects(
    cfg: Config,
    *,
    ingress_service: Obj | None,
    ingress_daemonset: Obj | None,
    ingress_deployment: Obj | None,
    daemonsets: list[Obj],
    services: list[Obj],
    planned: Sequence[Obj] = (),
) -> ClusterFacts:
    """Collect the facts from listed objects of the app namespace (DaemonSets and Services).

    ``planned`` holds the DaemonSets and Services as convert will make them: they stand in for
    the apps' objects, so the ports are the ones the traffic will use once convert has run.
    """
    names = {a.name for a in cfg.apps}
    daemonset = {name_of(d): d for d in daemonsets if name_of(d) in names}
    service = {name_of(s): s for s in services if name_of(s) in names}
    future = {name_of(o) for o in planned if name_of(o) in names}
    daemonset |= {name_of(o): o for o in planned if o.get("kind") == "DaemonSet" and name_of(o) in names}
    service |= {name_of(o): o for o in planned if o.get("kind") == "Service" and name_of(o) in names}
    return ClusterFacts(ingress_service, ingress_daemonset, ingress_deployment, daemonset, service, frozenset(future))
