"""The imperative shell of ``diagnose``, read-only: run the node script, read the API, judge, show.

Three ways in, one judgement (:func:`keybuzz_fix.checks.diagnose.find_causes`):

- over SSH: the collect script (:mod:`keybuzz_fix.hosts.flannel.collect`) runs on every node at
  once (one round trip each), while the API is read in the background (Nodes with Flannel's
  annotations; CoreDNS's endpoints and pods; NetworkPolicies);
- ``--collect-script``: print that same script, for nodes the tool cannot reach;
- ``--from-dir DIR``: judge what the operator brought back: ``DIR/<HOSTNAME>.txt`` per node,
  ``DIR/nodes.yaml`` (``kubectl get nodes -o yaml``) and optionally ``DIR/cluster.yaml``.

Nothing is changed anywhere.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from keybuzz_fix import storage
from keybuzz_fix.checks.diagnose import ClusterView, Diagnosis, NodeView, Objects, api_nodes, find_causes, split_objects
from keybuzz_fix.checks.diagnose.findings import healthy
from keybuzz_fix.cluster.connect import ClusterOptions, connect_cluster
from keybuzz_fix.cluster.observed import OVERLAY_RECORD
from keybuzz_fix.errors import ClusterError, HostError, InputError, KeybuzzFixError, read_input
from keybuzz_fix.flows import Connections
from keybuzz_fix.hosts.flannel.capture import Capture, parse_capture
from keybuzz_fix.hosts.flannel.collect import collect_script
from keybuzz_fix.hosts.parallel import on_each_host
from keybuzz_fix.hosts.sections import split_sections
from keybuzz_fix.hosts.ssh import open_session
from keybuzz_fix.hosts.sshoptions import AcceptedKeys, SshOptions
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.diagnosis import show_diagnosis
from keybuzz_fix.report.output import Output, progress_bar, write_stdout

if TYPE_CHECKING:
    from rich.console import Console

SCRIPT_TIMEOUT = 45.0  # the script bounds itself to ~10 s (30 s at most); this is the SSH side's limit


def run_diagnose(console: Console, reach: Connections, hosts: Sequence[Host], output: Output) -> Diagnosis:
    """Run the collect script on every node over SSH and read the API; judge and show the findings."""
    start = time.monotonic()
    accepted = AcceptedKeys()
    script = collect_script([(h.hostname, h.private_ip) for h in hosts])
    progress = None if output is Output.JSON else progress_bar(console)

    def collect(host: Host) -> Capture:
        session = open_session(host, reach.ssh, accepted)
        try:
            return parse_capture(session.run(script, check=False, timeout=SCRIPT_TIMEOUT).stdout)
        finally:
            session.close()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="api") as pool:
        api = pool.submit(read_cluster, reach.cluster, reach.ssh)
        attempts = on_each_host(hosts, collect, concurrency=reach.concurrency, progress=progress, label="collecting")
        view = api.result()
    nodes = [
        NodeView(a.host.hostname, a.host.private_ip, a.result)
        if a.ok
        else NodeView(a.host.hostname, a.host.private_ip, error=a.error.problem if a.error else "not probed")
        for a in attempts
    ]
    found = _judge(console, nodes, view, output, time.monotonic() - start, tuple(accepted.entries))
    storage.write_record(OVERLAY_RECORD, overlay_record(found, hosts))
    return found


def overlay_record(found: Diagnosis, hosts: Sequence[Host]) -> dict[str, Any]:
    """What ``convert`` and ``all`` read of this diagnose: when, healthy or not (or not all probed), which nodes.

    Only a live run over SSH is recorded: a ``--from-dir`` capture is of another moment.
    """
    # ClusterIP and DNS calls work when every probed path does: healthy needs the path matrix, from every node
    if not healthy(found.findings, found.paths):
        state: bool | None = False
    else:
        state = True if found.paths and not any(n.error for n in found.nodes) else None
    cause = next((f.cause.value for f in found.findings if f.problem), "")
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "healthy": state,
        "cause": cause,
        "nodes": {h.hostname: h.private_ip for h in hosts},
    }


def run_from_dir(console: Console, directory: Path, output: Output) -> Diagnosis:
    """Judge the captures an operator brought back in ``directory``."""
    start = time.monotonic()
    if not directory.is_dir():
        raise InputError(str(directory), "not a directory (expected DIR/nodes.yaml and DIR/<HOSTNAME>.txt)")
    view = ClusterView(error="no nodes.yaml")
    nodes_file = directory / "nodes.yaml"
    if nodes_file.exists():
        view = ClusterView(api_nodes(_items(nodes_file)), objects_note="no cluster.yaml")
    cluster_file = directory / "cluster.yaml"
    if cluster_file.exists():
        view = ClusterView(view.nodes, split_objects(_items(cluster_file)), view.error)
    names = [n.name for n in view.nodes]
    files = {p.stem: p for p in sorted(directory.glob("*.txt"))}
    if not names and not files:
        raise InputError(str(directory), "no nodes.yaml and no <HOSTNAME>.txt captures")
    nodes = []
    for name in dict.fromkeys([*names, *files]):
        api = view.node(name)
        address = api.internal_ip if api else None
        if name not in files:
            nodes.append(NodeView(name, address, error=f"no {name}.txt in {directory}"))
            continue
        text = read_input(files[name])
        if not split_sections(text):
            raise InputError(
                str(files[name]),
                "not a capture: none of the collect script's sections "
                "(expected the output of sh collect.sh > HOSTNAME.txt)",
            )
        capture = parse_capture(text)
        if address is None:
            address = _guess_address(capture)
        nodes.append(NodeView(name, address, capture))
    return _judge(console, nodes, view, output, time.monotonic() - start, ())


def print_collect_script(hosts: Sequence[Host]) -> None:
    """Print the collect script for these nodes on stdout."""
    write_stdout(collect_script([(h.hostname, h.private_ip) for h in hosts]))


def _judge(
    console: Console,
    nodes: list[NodeView],
    view: ClusterView,
    output: Output,
    seconds: float,
    accepted: tuple[tuple[str, str], ...],
) -> Diagnosis:
    findings, paths = find_causes(nodes, view)
    result = Diagnosis(tuple(findings), tuple(paths), tuple(nodes), view, seconds, accepted)
    show_diagnosis(console, result, output)
    return result


def read_cluster(options: ClusterOptions | None, ssh: SshOptions) -> ClusterView:
    """Read the Nodes, then what the CoreDNS and NetworkPolicy checks need; an unreachable API is reported."""
    if options is None:
        return ClusterView(error="no API access asked for")
    try:
        kube = connect_cluster(options, ssh)
        nodes = api_nodes(kube.list("Node"))
    except KeybuzzFixError as e:
        if not isinstance(e, ClusterError | HostError):
            raise
        return ClusterView(error=str(e), objects_note="the API could not be read")
    try:
        eps = kube.get("Endpoints", "kube-dns", "kube-system")
        pods = kube.list("Pod", "kube-system", selector="k8s-app=kube-dns")
        policies = kube.list("NetworkPolicy")
    except ClusterError as e:
        return ClusterView(nodes, objects_note=f"CoreDNS and NetworkPolicies not read: {e}")
    return ClusterView(nodes, Objects(endpoints=(eps,) if eps else (), pods=tuple(pods), policies=tuple(policies)))


def _items(path: Path) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(read_input(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        line = mark.line + 1 if mark is not None else None
        raise InputError(str(path), f"not YAML: {problem}", line) from None
    if isinstance(data, dict) and data.get("kind") == "List" or isinstance(data, dict) and "items" in data:
        items = data.get("items") or []
        if not isinstance(items, list):
            raise InputError(str(path), f"items: expected a list, found {type(items).__name__}")
    elif isinstance(data, dict):
        items = [data]
    else:
        raise InputError(str(path), "expected kubectl's -o yaml output (a List)")
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(str(path), f"items[{n}]: expected an object, found {type(item).__name__}")
        for key in ("metadata", "spec", "status"):
            if not isinstance(item.get(key) or {}, dict):
                raise InputError(str(path), f"items[{n}].{key}: expected a mapping, found {type(item[key]).__name__}")
        meta = item.get("metadata") or {}
        for key in ("annotations", "labels"):
            if not isinstance(meta.get(key) or {}, dict):
                raise InputError(
                    str(path), f"items[{n}].metadata.{key}: expected a mapping, found {type(meta[key]).__name__}"
                )
    return items


def _guess_address(capture: Capture) -> str | None:
    """A node without nodes.yaml: the address its overlay sends from, else its first global address."""
    vx = capture.vxlan()
    if vx and vx[0].local:
        return vx[0].local
    return next((ip for ip in capture.ips() if not ip.startswith("127.")), None)
