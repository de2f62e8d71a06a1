"""The test control plane is a real Kubernetes API with kwok nodes, seeded like the lab cluster."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import read_versions
from tests.cluster.reset import reset_cluster
from tests.cluster.seed import (
    DATA_DIR,
    INGRESS_SELECTOR,
    SEEDED_NAMESPACES,
    is_node_ready,
    node_manifests,
    seed_keybuzz,
    wait_pods_running,
)

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = pytest.mark.integration


def _pod_cidrs(core: client.CoreV1Api) -> dict[str, ipaddress.IPv4Network]:
    return {n.metadata.name: ipaddress.ip_network(n.spec.pod_cidr) for n in core.list_node().items}


def test_apiserver_reports_the_pinned_version(keybuzz_cluster: KeybuzzCluster) -> None:
    version = client.VersionApi(keybuzz_cluster.api_client).get_code()
    assert version.git_version == read_versions()["K8S_VERSION"] == "v1.36.3"
    assert keybuzz_cluster.control_plane.version == "v1.36.3"


def test_seeded_nodes_are_ready_k3s_nodes(keybuzz_cluster: KeybuzzCluster) -> None:
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert sorted(nodes) == sorted(keybuzz_cluster.master_names + keybuzz_cluster.worker_names)
    for name, ip in keybuzz_cluster.workers + keybuzz_cluster.masters:
        node = nodes[name]
        assert is_node_ready(node)
        assert {"type": "InternalIP", "address": ip} in [a.to_dict() for a in node.status.addresses]
        assert node.metadata.annotations["flannel.alpha.coreos.com/public-ip"] == ip
        assert node.metadata.annotations["flannel.alpha.coreos.com/backend-type"] == "vxlan"
        assert node.metadata.labels["kubernetes.io/hostname"] == name
    for name in keybuzz_cluster.master_names:
        taints = [(t.key, t.effect) for t in nodes[name].spec.taints or []]
        assert ("node-role.kubernetes.io/control-plane", "NoSchedule") in taints
        assert nodes[name].metadata.labels["node-role.kubernetes.io/control-plane"] == "true"


def test_seeded_deployments_run_on_workers_only(keybuzz_cluster: KeybuzzCluster) -> None:
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    cidrs = _pod_cidrs(core)
    for app in ("keybuzz-api", "keybuzz-front"):
        pods = wait_pods_running(core, "keybuzz", f"app={app}", 2, timeout=30)
        for pod in pods:
            assert pod.spec.node_name in keybuzz_cluster.worker_names
            assert ipaddress.ip_address(pod.status.pod_ip) in cidrs[pod.spec.node_name]


def test_seeded_ingress_daemonset_runs_on_every_worker_with_host_ips(keybuzz_cluster: KeybuzzCluster) -> None:
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    pods = wait_pods_running(core, "ingress-nginx", INGRESS_SELECTOR, 5, timeout=30)
    assert sorted(p.spec.node_name for p in pods) == sorted(keybuzz_cluster.worker_names)
    ips = dict(keybuzz_cluster.workers)
    assert all(p.status.pod_ip == ips[p.spec.node_name] for p in pods)
    svc = core.read_namespaced_service("ingress-nginx-controller", "ingress-nginx")
    assert {p.name: p.node_port for p in svc.spec.ports} == {"http": 31695, "https": 32720}
    assert ipaddress.ip_address(svc.spec.cluster_ip) in ipaddress.ip_network("198.19.128.0/20")


def test_new_daemonset_gets_one_pod_per_worker_and_none_on_masters(keybuzz_cluster: KeybuzzCluster) -> None:
    api = keybuzz_cluster.api_client
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ns = "cp-test-daemonset"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        labels = {"app": "probe"}
        apps.create_namespaced_daemon_set(
            ns,
            {
                "metadata": {"name": "probe", "labels": labels},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "probe", "image": "registry.k8s.io/pause:3.10"}]},
                    },
                },
            },
        )
        pods = wait_pods_running(core, ns, "app=probe", 5, timeout=60)
        assert sorted(p.spec.node_name for p in pods) == sorted(keybuzz_cluster.worker_names)
        status = apps.read_namespaced_daemon_set("probe", ns).status
        assert status.desired_number_scheduled == 5
    finally:
        core.delete_namespace(ns)


def test_api_rejects_host_network_pod_with_host_port_unlike_container_port(
    keybuzz_cluster: KeybuzzCluster,
) -> None:
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    pod = {
        "metadata": {"name": "bad-host-port"},
        "spec": {
            "hostNetwork": True,
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                }
            ],
        },
    }
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("keybuzz", pod)
    assert exc.value.status == 422
    assert "hostPort" in exc.value.body and "containerPort" in exc.value.body


def test_server_side_apply_records_field_manager_and_conflicts(keybuzz_cluster: KeybuzzCluster) -> None:
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    apply = "application/apply-patch+yaml"

    def cm(value: str) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ssa-probe", "namespace": "keybuzz"},
            "data": {"mode": value},
        }

    core.patch_namespaced_config_map("ssa-probe", "keybuzz", cm("a"), field_manager="keybuzz-fix", _content_type=apply)
    got = core.read_namespaced_config_map("ssa-probe", "keybuzz")
    assert got.data == {"mode": "a"}
    assert ("keybuzz-fix", "Apply") in [(m.manager, m.operation) for m in got.metadata.managed_fields]
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_config_map(
            "ssa-probe", "keybuzz", cm("b"), field_manager="someone-else", _content_type=apply
        )
    assert exc.value.status == 409
    core.patch_namespaced_config_map(
        "ssa-probe", "keybuzz", cm("b"), field_manager="someone-else", force=True, _content_type=apply
    )
    assert core.read_namespaced_config_map("ssa-probe", "keybuzz").data == {"mode": "b"}
    core.delete_namespaced_config_map("ssa-probe", "keybuzz")


def test_user_kubeconfig_is_bound_by_rbac(keybuzz_cluster: KeybuzzCluster) -> None:
    api = keybuzz_cluster.api_client
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        "keybuzz",
        {
            "metadata": {"name": "viewer"},
            "rules": [{"apiGroups": ["", "apps"], "resources": ["pods", "deployments"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        "keybuzz",
        {
            "metadata": {"name": "viewer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "auditors"}],
        },
    )
    path = keybuzz_cluster.control_plane.user_kubeconfig("alice", ["auditors"])
    server = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]
    assert server == keybuzz_cluster.control_plane.server
    with config.new_client_from_config(config_file=str(path)) as alice:
        apps = client.AppsV1Api(alice)
        assert len(apps.list_namespaced_deployment("keybuzz").items) == 2
        with pytest.raises(ApiException) as exc:
            apps.delete_namespaced_deployment("keybuzz-api", "keybuzz")
        assert exc.value.status == 403
        with pytest.raises(ApiException) as exc:
            client.CoreV1Api(alice).list_namespaced_secret("keybuzz")
        assert exc.value.status == 403


def test_apiserver_restart_keeps_state(keybuzz_cluster: KeybuzzCluster) -> None:
    cp = keybuzz_cluster.control_plane
    apps = client.AppsV1Api(keybuzz_cluster.api_client)
    cp.stop_apiserver()
    try:
        with pytest.raises(Exception):  # noqa: B017 - any connection error will do
            apps.read_namespaced_deployment("keybuzz-api", "keybuzz", _request_timeout=3)
    finally:
        cp.start_apiserver()
    assert apps.read_namespaced_deployment("keybuzz-api", "keybuzz").spec.replicas == 2
    wait_pods_running(keybuzz_cluster.api_client, "keybuzz", "app=keybuzz-api", 2, timeout=30)


def test_reset_and_reseed_undo_what_a_test_changed(keybuzz_cluster: KeybuzzCluster) -> None:
    api = keybuzz_cluster.api_client
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespace({"metadata": {"name": "cp-test-junk"}})
    core.create_namespaced_config_map("keybuzz", {"metadata": {"name": "junk"}})
    apps.patch_namespaced_deployment_scale("keybuzz-api", "keybuzz", {"spec": {"replicas": 4}})
    worker = keybuzz_cluster.worker_names[0]
    core.patch_node(
        worker, {"metadata": {"labels": {"junk": "yes"}}, "spec": {"taints": [{"key": "junk", "effect": "NoExecute"}]}}
    )

    reset_cluster(
        api, keep_namespaces=SEEDED_NAMESPACES, keep_nodes=keybuzz_cluster.worker_names + keybuzz_cluster.master_names
    )
    seed_keybuzz(api, keybuzz_cluster.workers, keybuzz_cluster.masters)

    assert "cp-test-junk" not in [ns.metadata.name for ns in core.list_namespace().items]
    assert [cm.metadata.name for cm in core.list_namespaced_config_map("keybuzz").items] == ["kube-root-ca.crt"]
    assert apps.read_namespaced_deployment("keybuzz-api", "keybuzz").spec.replicas == 2
    node = core.read_node(worker)
    assert "junk" not in node.metadata.labels and not node.spec.taints
    assert len(wait_pods_running(core, "keybuzz", "app=keybuzz-api", 2, timeout=30)) == 2


def test_node_yaml_matches_the_seed() -> None:
    on_disk = list(yaml.safe_load_all((DATA_DIR / "nodes.yaml").read_text()))
    assert on_disk == node_manifests()
