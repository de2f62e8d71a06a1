"""The imperative shell of ``diagnose``, read-only: gather the facts, run the checks, show the findings.

Two SSH round trips per node (in parallel) and the API. Round one reads each node's facts
(:func:`keybuzz_fix.hosts.flannel.facts.node_probe`) while the API is read in the background
(Nodes' Flannel annotations, the CoreDNS ClusterIP). Round two pings, from every node, every other
node's ``flannel.1`` address — as the node itself reports it, else as its podCIDR says. One SSH
session per node serves both rounds. Nothing is changed anywhere; the checks are
:mod:`keybuzz_fix.checks.diagnose`'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keybuzz_fix.checks.diagnose import ClusterView, Diagnosis, NodeView, api_nodes, find_causes
from keybuzz_fix.cluster.connect import ClusterOptions, connect_cluster
from keybuzz_fix.cluster.objects import spec_of
from keybuzz_fix.config import Config
from keybuzz_fix.errors import ClusterError, HostError, KeybuzzFixError
from keybuzz_fix.flows import Connections
from keybuzz_fix.hosts.flannel.facts import NodeFacts, PeerPings, node_probe, parse_node_facts, parse_pings, ping_probe
from keybuzz_fix.hosts.flannel.plan import overlay_rules
from keybuzz_fix.hosts.parallel import Attempt, Progress, on_each_host
from keybuzz_fix.hosts.ssh import AcceptedKeys, Session, SshOptions, open_session
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.diagnosis import show_diagnosis
from keybuzz_fix.report.output import Output, progress_bar

if TYPE_CHECKING:
    from rich.console import Console

DNS_SERVICE = ("kube-system", "kube-dns")


@dataclass
class Gathered:
    """Everything the checks need, and how long it took."""

    nodes: list[NodeView]
    cluster: ClusterView
    seconds: float
    accepted: AcceptedKeys = field(default_factory=AcceptedKeys)


def run_diagnose(console: Console, reach: Connections, hosts: Sequence[Host], cfg: Config, output: Output) -> Diagnosis:
    """Gather every node's facts and the API's, run the checks, show the ranked findings; return them."""
    assert reach.cluster is not None
    progress = None if output is Output.JSON else progress_bar(console)
    found = gather(hosts, reach.ssh, reach.cluster, concurrency=reach.concurrency, progress=progress)
    findings = find_causes(found.nodes, found.cluster, overlay_rules(cfg.overlay), cfg.overlay.vxlan_port)
    result = Diagnosis(tuple(findings), tuple(found.nodes), found.cluster, found.seconds, tuple(found.accepted.entries))
    show_diagnosis(console, result, output)
    return result


def gather(
    hosts: Sequence[Host],
    ssh: SshOptions,
    cluster: ClusterOptions,
    *,
    concurrency: int,
    progress: Progress | None = None,
) -> Gathered:
    """Probe every node and read the API; failures are per node (or per API), never fatal."""
    start = time.monotonic()
    accepted = AcceptedKeys()
    sessions: dict[str, Session] = {}

    def session(host: Host) -> Session:
        if host.hostname not in sessions:
            sessions[host.hostname] = open_session(host, ssh, accepted)
        return sessions[host.hostname]

    def facts(host: Host) -> NodeFacts:
        peers = [h.private_ip for h in hosts if h.hostname != host.hostname]
        return parse_node_facts(session(host).run(node_probe(peers)).stdout)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="api") as pool:
            api = pool.submit(read_cluster, cluster, ssh)
            first = on_each_host(hosts, facts, concurrency=concurrency, progress=progress, label="reading nodes")
            view = api.result()
        targets = vtep_addresses(first, view)

        def ping(host: Host) -> tuple[tuple[str, ...], PeerPings]:
            mine = [(name, addr) for name, addr in targets.items() if name != host.hostname]
            own = next(o.result for o in first if o.host.hostname == host.hostname)
            assert own is not None
            mtu = own.flannel.mtu if own.flannel else None
            script = ping_probe(mine, mtu - 28 if mtu and mtu > 68 else None, view.dns_ip)
            out = session(host).run(script).stdout
            names = tuple(name for name, _ in mine)
            return names, parse_pings(out, names)

        reachable = [o.host for o in first if o.ok]
        second = {
            o.host.hostname: o
            for o in on_each_host(
                reachable, ping, concurrency=concurrency, progress=progress, label="probing the overlay"
            )
        }
    finally:
        for s in sessions.values():
            s.close()
    nodes = []
    for o in first:
        if not o.ok:
            nodes.append(NodeView(o.host, error=_problem(o.error)))
            continue
        p = second.get(o.host.hostname)
        if p is None or not p.ok or p.result is None:
            nodes.append(NodeView(o.host, o.result, error=_problem(p.error) if p else None))
        else:
            names, pings = p.result
            nodes.append(NodeView(o.host, o.result, pings, targets=names))
    return Gathered(nodes, view, time.monotonic() - start, accepted)


def read_cluster(options: ClusterOptions, ssh: SshOptions) -> ClusterView:
    """Read the Nodes and the CoreDNS Service; an unreachable API is reported, not raised."""
    try:
        kube = connect_cluster(options, ssh)
        nodes = api_nodes(kube.list("Node"))
        svc = kube.get("Service", DNS_SERVICE[1], DNS_SERVICE[0])
    except KeybuzzFixError as e:
        if not isinstance(e, ClusterError | HostError):
            raise
        return ClusterView(error=str(e), dns_note="the API could not be read")
    ip = spec_of(svc).get("clusterIP") if svc else None
    if not ip or ip == "None":
        return ClusterView(nodes, dns_note=f"no {DNS_SERVICE[0]}/{DNS_SERVICE[1]} Service with a ClusterIP")
    return ClusterView(nodes, dns_ip=str(ip))


def vtep_addresses(first: Sequence[Attempt[NodeFacts]], cluster: ClusterView) -> dict[str, str]:
    """Return each node's ``flannel.1`` address: as the node reports it, else from its podCIDR."""
    out: dict[str, str] = {}
    for o in first:
        addr = o.result.flannel_addr if o.ok and o.result is not None else None
        if addr is None:
            api = cluster.node_for(o.host)
            addr = api.vtep_address if api is not None else None
        if addr is not None:
            out[o.host.hostname] = addr
    return out


def _problem(error: KeybuzzFixError | None) -> str:
    return "not probed" if error is None else error.problem
