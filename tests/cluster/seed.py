"""Seed a test control plane with the KeyBuzz cluster state, and wait for it by watching.

The cluster is the lab K3s one: three tainted masters, five workers, flannel VXLAN annotations,
the KeyBuzz app in ``keybuzz`` and a hostNetwork ingress-nginx DaemonSet behind a NodePort
Service. Nodes are built here (their addresses are parameters); the namespaced objects are the
YAML files of tests/data/cluster/, applied server-side with the field manager ``keybuzz-seed``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import KWOK_NODE_ANNOTATION

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "cluster"
MANIFESTS = ("keybuzz.yaml", "ingress-nginx.yaml")
SEED_FIELD_MANAGER = "keybuzz-seed"
K3S_VERSION = "v1.36.3+k3s1"
DEFAULT_MASTERS = [(f"k8s-master-0{i}", f"198.18.0.2{i}") for i in (1, 2, 3)]
DEFAULT_WORKERS = [(f"k8s-worker-0{i}", f"198.18.0.1{i}") for i in (1, 2, 3, 4, 5)]
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"
SEEDED_NAMESPACES = ("keybuzz", "ingress-nginx")
# What seed_keybuzz waits for besides the ingress DaemonSet: (namespace, label selector, running pods).
SEEDED_WORKLOADS = (
    ("keybuzz", "app=keybuzz-api", 2),
    ("keybuzz", "app=keybuzz-front", 2),
)
INGRESS_SELECTOR = "app.kubernetes.io/name=ingress-nginx,app.kubernetes.io/component=controller"

Api = client.ApiClient | client.CoreV1Api
Nodes = list[tuple[str, str]]

# -- manifests ------------------------------------------------------------------------------------


def vtep_mac(name: str) -> str:
    """Return a stable, locally administered VTEP MAC for a node, like flannel's random one."""
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02 | (digest[0] & 0xFC), *digest[1:6]))


def node_manifests(
    workers: Nodes = DEFAULT_WORKERS, masters: Nodes = DEFAULT_MASTERS, pod_cidr_base: str = "198.19"
) -> list[dict[str, Any]]:
    """Build the Node objects (with status) of a K3s cluster; masters first, podCIDR BASE.<i>.0/24."""
    nodes = []
    for index, (name, ip) in enumerate([*masters, *workers]):
        master = index < len(masters)
        cidr = f"{pod_cidr_base}.{index}.0/24"
        labels = {
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/instance-type": "k3s",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "k3s",
        }
        if master:
            labels |= {
                CONTROL_PLANE_ROLE: "true",
                "node-role.kubernetes.io/etcd": "true",
                "node-role.kubernetes.io/master": "true",
            }
        annotations = {
            "flannel.alpha.coreos.com/backend-data": f'{{"VNI":1,"VtepMAC":"{vtep_mac(name)}"}}',
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": ip,
            "k3s.io/hostname": name,
            "k3s.io/internal-ip": ip,
            KWOK_NODE_ANNOTATION: "fake",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        }
        spec: dict[str, Any] = {"podCIDR": cidr, "podCIDRs": [cidr]}
        if master:
            spec["taints"] = [{"key": CONTROL_PLANE_ROLE, "effect": "NoSchedule"}]
        resources = {"cpu": "4", "memory": "8025388Ki", "pods": "110", "ephemeral-storage": "78425224Ki"}
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": annotations},
                "spec": spec,
                "status": {
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                    "capacity": dict(resources),
                    "allocatable": dict(resources),
                    "nodeInfo": {
                        "architecture": "amd64",
                        "bootID": "",
                        "containerRuntimeVersion": "containerd://2.0.5-k3s1",
                        "kernelVersion": "6.8.0-60-generic",
                        "kubeProxyVersion": K3S_VERSION,
                        "kubeletVersion": K3S_VERSION,
                        "machineID": hashlib.md5(name.encode()).hexdigest(),  # noqa: S324 - an id, not security
                        "operatingSystem": "linux",
                        "osImage": "Ubuntu 24.04.2 LTS",
                        "systemUUID": "",
                    },
                },
            }
        )
    return nodes


def load_manifests(names: Iterable[str] = MANIFESTS) -> list[dict[str, Any]]:
    """Read the namespaced seed objects from tests/data/cluster/, in file order."""
    docs: list[dict[str, Any]] = []
    for name in names:
        docs += [d for d in yaml.safe_load_all((DATA_DIR / name).read_text()) if d]
    return docs


# -- apply ----------------------------------------------------------------------------------------

# (apiVersion, kind) -> (typed API class, patch method, namespaced)
_PATCHERS: dict[tuple[str, str], tuple[type, str, bool]] = {
    ("v1", "Namespace"): (client.CoreV1Api, "patch_namespace", False),
    ("v1", "Node"): (client.CoreV1Api, "patch_node", False),
    ("v1", "Secret"): (client.CoreV1Api, "patch_namespaced_secret", True),
    ("v1", "ConfigMap"): (client.CoreV1Api, "patch_namespaced_config_map", True),
    ("v1", "ServiceAccount"): (client.CoreV1Api, "patch_namespaced_service_account", True),
    ("v1", "Service"): (client.CoreV1Api, "patch_namespaced_service", True),
    ("apps/v1", "Deployment"): (client.AppsV1Api, "patch_namespaced_deployment", True),
    ("apps/v1", "DaemonSet"): (client.AppsV1Api, "patch_namespaced_daemon_set", True),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): (
        client.AutoscalingV2Api,
        "patch_namespaced_horizontal_pod_autoscaler",
        True,
    ),
    ("networking.k8s.io/v1", "IngressClass"): (client.NetworkingV1Api, "patch_ingress_class", False),
    ("rbac.authorization.k8s.io/v1", "Role"): (client.RbacAuthorizationV1Api, "patch_namespaced_role", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        client.RbacAuthorizationV1Api,
        "patch_namespaced_role_binding",
        True,
    ),
}


def server_side_apply(api_client: client.ApiClient, obj: dict[str, Any], field_manager: str) -> Any:
    """Server-side apply one object (force, like `kubectl apply --server-side --force-conflicts`)."""
    key = (obj["apiVersion"], obj["kind"])
    if key not in _PATCHERS:
        raise ValueError(f"seed cannot apply {key}; add it to _PATCHERS")
    api_class, method, namespaced = _PATCHERS[key]
    meta = obj["metadata"]
    args = [meta["name"], meta["namespace"]] if namespaced else [meta["name"]]
    return getattr(api_class(api_client), method)(
        *args, body=obj, field_manager=field_manager, force=True, _content_type="application/apply-patch+yaml"
    )


def _apply_node(core: client.CoreV1Api, node: dict[str, Any]) -> None:
    """Create a Node with its status (kwok takes it over), or reset an existing one to the seed."""
    name = node["metadata"]["name"]
    try:
        current = core.read_node(name)
    except ApiException as e:
        if e.status != 404:
            raise
        current = None
    if current is not None:
        addresses = [a.to_dict() for a in (current.status.addresses or [])]
        if current.spec.pod_cidr != node["spec"]["podCIDR"] or addresses != node["status"]["addresses"]:
            # podCIDR is immutable and status belongs to kwok: start over, without the old pods.
            core.delete_node(name)
            for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items:
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            current = None
    if current is None:
        core.create_node(node, field_manager=SEED_FIELD_MANAGER)
        return
    # Reset what a test may have changed; keep what controllers own (status, ttl annotation).
    kept = current.metadata.annotations or {}
    annotations = {k: v for k, v in kept.items() if k.startswith("node.alpha.")}
    current.metadata.labels = dict(node["metadata"]["labels"])
    current.metadata.annotations = annotations | node["metadata"]["annotations"]
    current.spec.taints = [client.V1Taint(**t) for t in node["spec"].get("taints", [])] or None
    current.spec.unschedulable = None
    core.replace_node(name, current, field_manager=SEED_FIELD_MANAGER)


def seed_keybuzz(
    api_client: client.ApiClient,
    workers: Nodes = DEFAULT_WORKERS,
    masters: Nodes = DEFAULT_MASTERS,
    pod_cidr_base: str = "198.19",
    *,
    wait: bool = True,
    timeout: float = 90.0,
) -> list[dict[str, Any]]:
    """Create the KeyBuzz cluster state; with wait, return once nodes are Ready and pods Running.

    Waiting for the nodes before the workloads saves the scheduler a retry (up to 10 s) on nodes
    that still carry the not-ready taint.
    """
    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout
    nodes = node_manifests(workers, masters, pod_cidr_base)
    for node in nodes:
        _apply_node(core, node)
    if wait:
        wait_nodes_ready(core, [n["metadata"]["name"] for n in nodes], timeout)
    objects = load_manifests()
    for obj in objects:
        server_side_apply(api_client, obj, SEED_FIELD_MANAGER)
    if wait:
        for namespace, selector, count in SEEDED_WORKLOADS:
            wait_pods_running(core, namespace, selector, count, deadline - time.monotonic())
        wait_pods_running(core, "ingress-nginx", INGRESS_SELECTOR, len(workers), deadline - time.monotonic())
    return nodes + objects


# -- waiting --------------------------------------------------------------------------------------


def _core(api: Api) -> client.CoreV1Api:
    return api if isinstance(api, client.CoreV1Api) else client.CoreV1Api(api)


def wait_for(
    list_fn: Callable[..., Any],
    done: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
    **kwargs: Any,
) -> dict[str, Any]:
    """List, then watch from that resourceVersion until done(objects by name) holds; bounded.

    list_fn is a typed list call such as CoreV1Api.list_namespaced_pod, kwargs its arguments.
    """
    deadline = time.monotonic() + timeout
    objs: dict[str, Any] = {}
    resource_version = None
    while True:
        if resource_version is None:
            listing = list_fn(**kwargs)
            objs = {o.metadata.name: o for o in listing.items}
            resource_version = listing.metadata.resource_version
        if done(objs):
            return objs
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; seen: {_summary(objs)}")
        w = watch.Watch()
        try:
            for event in w.stream(
                list_fn,
                resource_version=resource_version,
                timeout_seconds=max(1, int(remaining)),
                allow_watch_bookmarks=True,
                _request_timeout=remaining + 5,
                **kwargs,
            ):
                obj = event["object"]
                resource_version = obj.metadata.resource_version
                if event["type"] == "DELETED":
                    objs.pop(obj.metadata.name, None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    objs[obj.metadata.name] = obj
                if done(objs):
                    w.stop()
                    return objs
        except ApiException as e:
            if e.status != 410:
                raise
            resource_version = None  # expired: list again


def _summary(objs: dict[str, Any]) -> str:
    parts = []
    for name, obj in sorted(objs.items()):
        status = getattr(obj, "status", None)
        phase = getattr(status, "phase", None)
        node = getattr(getattr(obj, "spec", None), "node_name", None)
        parts.append(f"{name}({phase or '?'}{'@' + node if node else ''})")
    return ", ".join(parts) or "nothing"


def is_running(pod: client.V1Pod) -> bool:
    """Tell whether a pod is Running and not being deleted."""
    phase = pod.status.phase if pod.status else None
    return phase == "Running" and pod.metadata.deletion_timestamp is None


def is_node_ready(node: client.V1Node) -> bool:
    """Tell whether a node's Ready condition is True."""
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


_LIFECYCLE_TAINTS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})


def is_node_schedulable(node: client.V1Node) -> bool:
    """Tell whether a node is Ready and the controller-manager has lifted its not-ready taints."""
    taints = {t.key for t in (node.spec.taints or [])} if node.spec else set()
    return is_node_ready(node) and not taints & _LIFECYCLE_TAINTS


def wait_pods_running(api: Api, namespace: str, selector: str, count: int, timeout: float = 60.0) -> list[client.V1Pod]:
    """Watch until exactly COUNT pods matching SELECTOR run (none pending); return them by name."""
    core = _core(api)

    def done(pods: dict[str, client.V1Pod]) -> bool:
        alive = [p for p in pods.values() if p.metadata.deletion_timestamp is None]
        return len(alive) == count and all(is_running(p) for p in alive)

    pods = wait_for(
        core.list_namespaced_pod,
        done,
        timeout,
        f"{count} running pods {selector!r} in {namespace}",
        namespace=namespace,
        label_selector=selector,
    )
    return sorted((p for p in pods.values() if is_running(p)), key=lambda p: p.metadata.name)


def wait_nodes_ready(api: Api, names: Iterable[str], timeout: float = 60.0) -> list[client.V1Node]:
    """Watch until every named node is Ready and free of not-ready taints; return them."""
    core = _core(api)
    wanted = set(names)

    def done(nodes: dict[str, client.V1Node]) -> bool:
        return all(n in nodes and is_node_schedulable(nodes[n]) for n in wanted)

    nodes = wait_for(core.list_node, done, timeout, f"nodes Ready: {sorted(wanted)}")
    return [nodes[n] for n in sorted(wanted)]


if __name__ == "__main__":
    # Regenerate tests/data/cluster/nodes.yaml: python -m tests.cluster.seed > tests/data/cluster/nodes.yaml
    print("# The lab K3s Nodes as tests/cluster/seed.py creates them (default addresses).")
    print("# Generated by: python -m tests.cluster.seed > tests/data/cluster/nodes.yaml")
    print(yaml.safe_dump_all(node_manifests(), sort_keys=False), end="")
