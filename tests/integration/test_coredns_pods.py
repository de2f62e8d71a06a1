"""diagnose's CoreDNS rule on pods as the real API serves them: exactly which pods it names.

CoreDNS pods are made in kube-system as K3s ships them (k3s-io/k3s manifests/coredns.yaml: label
k8s-app=kube-dns, one container named coredns, no init containers), with a kube-dns Service whose
Endpoints the real endpoints controller keeps. Their container statuses are written through the
status subresource, as a kubelet writes them (a back-off is a waiting state with the crash in
lastState and the pod Running; ContainerCreating and a crashing init container leave the pod
Pending). diagnose reads them back the way it reads a live cluster
(:func:`keybuzz_fix.flows.diagnose.read_cluster`) and judges them
(:func:`keybuzz_fix.checks.diagnose.dns.coredns`).

kwok plays the kubelet of the seeded nodes, and its pod-ready stage (tests/cluster/build copies
kwok's defaults) rewrites the status of every Pending pod of its nodes to Running with 0 restarts:
a status written before its first pass comes back so. Its stages leave Running pods alone, but
ContainerCreating and an init crash are Pending, so the pods here are bound to a Node that kwok
does not manage (no kwok.x-k8s.io/node annotation; a K3s server, tainted like one, so no
DaemonSet lands there): nothing but this test writes their status, and the tests check each
pod's resourceVersion is still the one their status write returned when diagnose reads it.

kube-system outlives the per-module resets: every object made here is deleted afterwards, also
when a test fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from keybuzz_fix.checks.diagnose.dns import coredns
from keybuzz_fix.checks.diagnose.views import ClusterView
from keybuzz_fix.cluster.connect import ClusterOptions
from keybuzz_fix.flows.diagnose import read_cluster
from keybuzz_fix.hosts.sshoptions import SshOptions
from tests.cluster.fixtures import KeybuzzCluster
from tests.cluster.seed import CONTROL_PLANE_ROLE, wait_for

pytestmark = pytest.mark.integration
NS = "kube-system"
MARK = "keybuzz-fix.test/case"  # every object made here carries it, for the clean-up
NODE = "k8s-master-04"  # a K3s server kwok does not play
NODE_IP = "198.18.0.24"
POD_NET = "198.19.9"  # NODE's podCIDR: 198.19.9.0/24 (the seeded nodes hold 198.19.0-7, Services 198.19.128/20)
IMAGE = "rancher/mirrored-coredns-coredns:1.12.3"
HASH = "7b98449c4"  # the ReplicaSet's pod-template-hash: coredns-<hash>-<suffix>
HEADER = "$ kubectl -n kube-system get pods -l k8s-app=kube-dns"
NO_ENDPOINTS = ["$ kubectl -n kube-system get endpoints kube-dns", "<none> (no ready CoreDNS pod)"]
WAIT = 30.0


# -- container statuses, as the kubelet writes them -------------------------------------------------


def running(name: str = "coredns", restarts: int = 0, *, ready: bool = True) -> dict[str, Any]:
    """A started container; restarted ones keep their last crash in lastState."""
    status: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "imageID": "",
        "ready": ready,
        "started": True,
        "restartCount": restarts,
        "state": {"running": {"startedAt": "2026-11-30T08:00:00Z"}},
    }
    if restarts:
        status["lastState"] = _crashed(1)
    return status


def waiting(reason: str, name: str = "coredns", restarts: int = 0) -> dict[str, Any]:
    """Not running: back-off after a crash (lastState says which), or not created yet."""
    status: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": restarts,
        "state": {"waiting": {"reason": reason}},
    }
    if reason == "CrashLoopBackOff":
        status["state"]["waiting"]["message"] = f"back-off 5m0s restarting failed container={name}"
        status["lastState"] = _crashed(1)
    return status


def ended(reason: str, exit_code: int, restarts: int, name: str = "coredns") -> dict[str, Any]:
    """Just ended, before the kubelet starts it again: what kubectl shows as Error or OOMKilled."""
    state = _crashed(exit_code, reason)
    return {
        "name": name,
        "image": IMAGE,
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": restarts,
        "state": state,
        "lastState": _crashed(exit_code, reason) if restarts else {},
    }


def _crashed(exit_code: int, reason: str = "Error") -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": "2026-11-30T07:59:58Z",
            "finishedAt": "2026-11-30T07:59:59Z",
        }
    }


# -- the pods ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One pod: its containers, the status its kubelet reports, and what diagnose should say of it."""

    name: str
    statuses: list[dict[str, Any]] = field(default_factory=list)
    init: list[dict[str, Any]] = field(default_factory=list)  # initContainerStatuses
    phase: str = "Running"
    pod_ip: str | None = None
    said: list[str] = field(default_factory=list)  # its lines under HEADER
    labels: dict[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    bound: bool = True  # False: left to the scheduler, which finds no node for it

    @property
    def containers(self) -> list[str]:
        return [s["name"] for s in self.statuses] or ["coredns"]


def pod_manifest(case: Case) -> dict[str, Any]:
    """The pod as the coredns Deployment's ReplicaSet makes it (K3s's tolerations and selector)."""
    spec: dict[str, Any] = {
        "priorityClassName": "system-cluster-critical",
        "dnsPolicy": "Default",
        "tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": CONTROL_PLANE_ROLE, "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "containers": [
            {
                "name": c,
                "image": IMAGE,
                "args": ["-conf", "/etc/coredns/Corefile"],
                "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"}] if c == "coredns" else [],
            }
            for c in case.containers
        ],
    }
    if case.init:
        spec["initContainers"] = [{"name": s["name"], "image": IMAGE} for s in case.init]
    if case.bound:
        spec["nodeName"] = NODE
    else:  # pinned to a server that has left the cluster: the scheduler leaves it Pending
        spec["nodeSelector"]["kubernetes.io/hostname"] = "k8s-master-09"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": case.name,
            "namespace": NS,
            "labels": {**case.labels, "pod-template-hash": HASH, MARK: "coredns-pods"},
        },
        "spec": spec,
    }


def is_ready(case: Case) -> bool:
    """Whether the kubelet calls the pod Ready: Running, every container ready."""
    return case.phase == "Running" and all(s["ready"] for s in case.statuses)


def pod_status(case: Case) -> dict[str, Any]:
    """The status a kubelet reports for the case: phase, conditions, addresses, container statuses."""
    ready = is_ready(case)
    initialized = not any("terminated" not in s["state"] for s in case.init)
    conditions = [
        {"type": "PodReadyToStartContainers", "status": "True" if case.pod_ip else "False"},
        {"type": "Initialized", "status": str(initialized)},
        {"type": "Ready", "status": str(ready)},
        {"type": "ContainersReady", "status": str(ready)},
        {"type": "PodScheduled", "status": "True"},
    ]
    status: dict[str, Any] = {
        "phase": case.phase,
        "conditions": conditions,
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "startTime": "2026-11-30T07:50:00Z",
        "qosClass": "BestEffort",
    }
    if case.pod_ip:
        status |= {"podIP": case.pod_ip, "podIPs": [{"ip": case.pod_ip}]}
    if case.statuses:
        status["containerStatuses"] = case.statuses
    if case.init:
        status["initContainerStatuses"] = case.init
    return status


def _named(pod: str, *lines: str) -> list[str]:
    return [f"{pod}{line}" for line in lines]


def coredns_pod(suffix: str) -> str:
    """A pod name as the ReplicaSet coredns-<hash> gives it."""
    return f"coredns-{HASH}-{suffix}"


def no_restart_count() -> dict[str, Any]:
    status = running()
    del status["restartCount"]
    return status


CASES = [
    Case(coredns_pod("r0"), [running()], pod_ip=f"{POD_NET}.2"),
    Case(coredns_pod("r2"), [running(restarts=2)], pod_ip=f"{POD_NET}.3"),
    Case(coredns_pod("r3"), [running(restarts=3)], pod_ip=f"{POD_NET}.4", said=[": running, 3 restarts"]),
    Case(
        coredns_pod("loop"),
        [waiting("CrashLoopBackOff", restarts=7)],
        pod_ip=f"{POD_NET}.5",
        said=[": CrashLoopBackOff, 7 restarts"],
    ),
    Case(coredns_pod("exit1"), [ended("Error", 1, restarts=1)], pod_ip=f"{POD_NET}.6", said=[": Error, 1 restarts"]),
    Case(
        coredns_pod("oom"),
        [ended("OOMKilled", 137, restarts=2)],
        pod_ip=f"{POD_NET}.7",
        said=[": OOMKilled, 2 restarts"],
    ),
    Case(coredns_pod("new"), [waiting("ContainerCreating")], phase="Pending"),
    Case(coredns_pod("nocount"), [no_restart_count()], pod_ip=f"{POD_NET}.8"),
    # the kube-dns pods before CoreDNS: three containers under the same label, one in back-off
    Case(
        "kube-dns-86f4d74b45-three",
        [running("kubedns"), waiting("CrashLoopBackOff", "dnsmasq", restarts=4), running("sidecar", restarts=3)],
        pod_ip=f"{POD_NET}.9",
        said=[" (dnsmasq): CrashLoopBackOff, 4 restarts", " (sidecar): running, 3 restarts"],
    ),
    Case(
        "kube-dns-86f4d74b45-twice",  # 6 restarts in all, 2 each: no container restarts over and over
        [running("kubedns", 2), running("dnsmasq", 2), running("sidecar", 2)],
        pod_ip=f"{POD_NET}.10",
    ),
    # an init container in back-off (Init:CrashLoopBackOff): the pod is Pending, coredns waits on it
    Case(
        coredns_pod("init"),
        [waiting("PodInitializing")],
        init=[waiting("CrashLoopBackOff", "wait-for-api", restarts=5)],
        phase="Pending",
        pod_ip=f"{POD_NET}.11",
    ),
    Case(coredns_pod("unplaced"), bound=False, phase="Pending"),  # the scheduler's status: no containerStatuses
    # crash-looping in kube-system, but not CoreDNS: diagnose does not even read it
    Case(
        "local-path-provisioner-5d56847996-loop",
        [waiting("CrashLoopBackOff", "local-path-provisioner", restarts=9)],
        pod_ip=f"{POD_NET}.12",
        labels={"app": "local-path-provisioner"},
    ),
]


# -- fixtures ---------------------------------------------------------------------------------------


def _raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The object as the API served it (JSON), not the client's model of it."""
    response = call(*args, _preload_content=False, **kwargs)
    return dict(json.loads(response.data))


def _put(api_client: client.ApiClient, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    """PUT the object as it is: the typed client refuses a container status without restartCount."""
    params = api_client.param_serialize(
        method="PUT",
        resource_path=path,
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        body=obj,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(*params)
    body = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return dict(json.loads(body))


def _clean_up(core: client.CoreV1Api) -> None:
    """Delete every object this module makes, and wait until they are gone (bounded)."""
    core.delete_collection_namespaced_pod(NS, label_selector=MARK, grace_period_seconds=0)
    for delete, args in ((core.delete_namespaced_service, ("kube-dns", NS)), (core.delete_node, (NODE,))):
        try:
            delete(*args)
        except ApiException as e:
            if e.status != 404:
                raise
    deadline = time.monotonic() + WAIT
    while True:
        left = [p.metadata.name for p in core.list_namespaced_pod(NS, label_selector=MARK).items]
        left += [e.metadata.name for e in core.list_namespaced_endpoints(NS).items if e.metadata.name == "kube-dns"]
        left += [n.metadata.name for n in core.list_node(field_selector=f"metadata.name={NODE}").items]
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{NS} still holds {left} after {WAIT:.0f}s")
        time.sleep(0.2)


def _node() -> dict[str, Any]:
    """A K3s server whose kubelet last reported Ready just now; kwok does not play it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "labels": {
                "kubernetes.io/hostname": NODE,
                "kubernetes.io/os": "linux",
                CONTROL_PLANE_ROLE: "true",
                MARK: "coredns-pods",
            },
        },
        "spec": {
            "podCIDR": f"{POD_NET}.0/24",
            "podCIDRs": [f"{POD_NET}.0/24"],
            "taints": [{"key": CONTROL_PLANE_ROLE, "effect": "NoSchedule"}],
        },
        "status": {
            "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": NODE}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        },
    }


def _kube_dns() -> dict[str, Any]:
    """K3s's kube-dns Service (the cluster IP left to the allocator)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": NS, "labels": {"k8s-app": "kube-dns", MARK: "coredns-pods"}},
        "spec": {
            "selector": {"k8s-app": "kube-dns"},
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    }


@dataclass
class Made:
    """The pods written, by name: the resourceVersion of the status write, the status the API kept."""

    versions: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture
def world(keybuzz_cluster: KeybuzzCluster) -> Iterator[tuple[client.CoreV1Api, Callable[[list[Case]], Made]]]:
    """The node and kube-dns Service; make(cases) creates pods and writes their status. All removed after."""
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    _clean_up(core)  # what a killed run left
    try:
        core.create_node(_node())  # the API drops the status of a create: patched in, as a kubelet does
        core.patch_node_status(NODE, {"status": _node()["status"]})
        core.create_namespaced_service(NS, _kube_dns())

        def make(cases: list[Case]) -> Made:
            made = Made()
            for case in cases:
                core.create_namespaced_pod(NS, pod_manifest(case))
            for case in cases:
                if not case.bound:
                    continue
                obj = _raw(core.read_namespaced_pod, case.name, NS)
                obj["status"] = pod_status(case)
                kept = _put(core.api_client, f"/api/v1/namespaces/{NS}/pods/{case.name}/status", obj)
                made.versions[case.name] = kept["metadata"]["resourceVersion"]
                made.statuses[case.name] = kept["status"]
            return made

        yield core, make
    finally:
        _clean_up(core)


def _wait_endpoints(core: client.CoreV1Api, ready: set[str], not_ready: set[str]) -> None:
    """Until the endpoints controller has put these pod addresses in kube-dns (ready, and not)."""

    def done(found: dict[str, Any]) -> bool:
        eps = found.get("kube-dns")
        if eps is None:
            return False
        subsets = eps.subsets or []
        seen = {a.ip for s in subsets for a in s.addresses or []}
        unseen = {a.ip for s in subsets for a in s.not_ready_addresses or []}
        return seen == ready and unseen == not_ready

    wait_for(
        core.list_namespaced_endpoints,
        done,
        WAIT,
        f"kube-dns endpoints {sorted(ready)} ready, {sorted(not_ready)} not",
        namespace=NS,
        field_selector="metadata.name=kube-dns",
    )


def _unschedulable(core: client.CoreV1Api, name: str) -> None:
    def done(found: dict[str, Any]) -> bool:
        pod = found.get(name)
        conditions = (pod.status.conditions or []) if pod is not None else []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    wait_for(
        core.list_namespaced_pod,
        done,
        WAIT,
        f"{name} unschedulable",
        namespace=NS,
        field_selector=f"metadata.name={name}",
    )


def _read(keybuzz_cluster: KeybuzzCluster) -> ClusterView:
    """The API side of diagnose, read as the command reads it."""
    view = read_cluster(ClusterOptions(kubeconfig=keybuzz_cluster.kubeconfig), SshOptions(ssh_config=None))
    assert view.error is None and view.objects is not None, (view.error, view.objects_note)
    return view


def _said(view: ClusterView) -> list[str]:
    return list(coredns([], view).evidence.get("cluster", ()))


def test_exactly_the_failing_coredns_pods_are_named(
    keybuzz_cluster: KeybuzzCluster, world: tuple[client.CoreV1Api, Callable[[list[Case]], Made]]
) -> None:
    core, make = world
    made = make(CASES)
    _unschedulable(core, coredns_pod("unplaced"))
    dns = [c for c in CASES if c.labels.get("k8s-app") == "kube-dns"]
    ips = {c.pod_ip: c for c in dns if c.pod_ip}
    _wait_endpoints(
        core, {ip for ip, c in ips.items() if is_ready(c)}, {ip for ip, c in ips.items() if not is_ready(c)}
    )

    view = _read(keybuzz_cluster)

    assert view.objects is not None
    pods = {p["metadata"]["name"]: p for p in view.objects.pods}
    assert set(pods) == {c.name for c in dns}  # the selector k8s-app=kube-dns, in kube-system
    on_node = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}").items
    assert {p.metadata.name for p in on_node} == {c.name for c in CASES if c.bound}  # no seeded workload landed
    for name, version in made.versions.items():
        if name in pods:  # nothing rewrote the status between its write and the read
            assert pods[name]["metadata"]["resourceVersion"] == version, name
            assert pods[name]["status"] == made.statuses[name], name
    # what the API serves for the forms the rule reads
    assert "containerStatuses" not in pods[coredns_pod("unplaced")]["status"]  # Pending, never on a node
    assert pods[coredns_pod("nocount")]["status"]["containerStatuses"][0]["restartCount"] == 0  # left out: 0
    assert pods[coredns_pod("init")]["status"]["initContainerStatuses"][0]["state"]["waiting"]["reason"] == (
        "CrashLoopBackOff"
    )
    in_order = sorted(CASES, key=lambda c: c.name)  # the API lists a namespace by name
    expected = [HEADER] + [line for c in in_order for line in _named(c.name, *c.said)]
    assert _said(view) == expected  # no endpoints line: kube-dns has ready pods


def test_a_lone_coredns_pod_stuck_in_its_init_container_shows_as_no_endpoints(
    keybuzz_cluster: KeybuzzCluster, world: tuple[client.CoreV1Api, Callable[[list[Case]], Made]]
) -> None:
    core, make = world
    (init,) = [c for c in CASES if c.init]
    made = make([init])
    _wait_endpoints(core, set(), {init.pod_ip} if init.pod_ip else set())

    view = _read(keybuzz_cluster)

    assert view.objects is not None
    (pod,) = view.objects.pods
    assert pod["metadata"]["resourceVersion"] == made.versions[init.name]
    assert _said(view) == NO_ENDPOINTS  # K3s runs one CoreDNS replica: DNS is down, and diagnose says so
