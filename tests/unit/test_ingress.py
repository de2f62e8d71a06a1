import copy
from pathlib import Path

import pytest
import yaml

from keybuzz_fix import config
from keybuzz_fix.checks.ingress import ControllerFact, IngressPlan, check_controller
from keybuzz_fix.cluster import ingress
from keybuzz_fix.cluster.ingress import RoutePlan, RouteStatus
from keybuzz_fix.cluster.scheduling import worker_nodes
from keybuzz_fix.errors import ExitCode
from keybuzz_fix.inventory import Host

ROOT = Path(__file__).parent.parent.parent
SEED = ROOT / "tests" / "data" / "cluster" / "ingress-nginx.yaml"
WORKERS = [f"k8s-worker-0{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def cfg() -> config.Config:
    return config.load_config()


@pytest.fixture()
def seeded() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(SEED.read_text()) if d]
    return {d["kind"]: d for d in docs}


def pod(
    name: str,
    node: str,
    phase: str = "Running",
    owner: str = "ingress-nginx-controller",
    kind: str = "DaemonSet",
    ready: bool = True,
) -> dict:
    return {
        "metadata": {"name": name, "ownerReferences": [{"kind": kind, "name": owner, "controller": True}]},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pods_on(nodes: list[str]) -> list[dict]:
    return [pod(f"ingress-nginx-controller-{n[-2:]}", n) for n in nodes]


def workers(names: list[str] = WORKERS) -> dict[str, str | None]:
    return {n: n for n in names}


def bad(findings: list[ControllerFact]) -> list[str]:
    return [f"{f.subject}: {f.detail}" for f in findings if not f.ok]


def test_shipped_manifest_is_what_the_tool_builds(cfg: config.Config) -> None:
    shipped = [d for d in yaml.safe_load_all((ROOT / "manifests" / "ingress.yaml").read_text()) if d]
    assert shipped == ingress.build_ingresses(cfg)
    assert (ROOT / "manifests" / "ingress.yaml").read_text() == ingress.render_manifest(ingress.build_ingresses(cfg))


def test_routes_from_the_defaults(cfg: config.Config) -> None:
    front, api = ingress.build_ingresses(cfg)
    assert front["metadata"] == {
        "name": "keybuzz-front-ingress",
        "namespace": "keybuzz",
        "annotations": cfg.ingress.annotations,
    }
    assert front["spec"]["ingressClassName"] == "nginx"
    assert ingress.route_backends(front) == [("platform.keybuzz.io", "keybuzz-front", 80)]
    assert ingress.route_backends(api) == [("platform-api.keybuzz.io", "keybuzz-api", 80)]
    annotations = api["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "50m"
    assert annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"] == "error timeout http_502 http_503"
    assert annotations["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"] == "5"
    for key in ("connect", "read", "send"):
        assert annotations[f"nginx.ingress.kubernetes.io/proxy-{key}-timeout"] == "180"
    assert "tls" not in api["spec"]  # TLS belongs to other managers


def test_routes_follow_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "ingress:\n  class_name: nginx-internal\n  routes:\n"
        "    - {name: r1, host: a.example.test, service: keybuzz-api, port: 8080}\n"
    )
    (only,) = ingress.build_ingresses(config.load_config(path))
    assert only["spec"]["ingressClassName"] == "nginx-internal"
    assert ingress.route_backends(only) == [("a.example.test", "keybuzz-api", 8080)]


def test_seeded_controller_is_as_wanted(cfg: config.Config, seeded: dict) -> None:
    findings = check_controller(
        cfg.ingress,
        daemonset=seeded["DaemonSet"],
        deployment=None,
        pods=pods_on(WORKERS),
        service=seeded["Service"],
        workers=workers(),
    )
    assert bad(findings) == []
    details = [f.detail for f in findings]
    assert "hostNetwork: true" in details
    assert "http port 80 → nodePort 31695" in details and "https port 443 → nodePort 32720" in details
    assert len([f for f in findings if f.subject.startswith("worker ")]) == 5


def test_every_mismatch_is_reported_precisely(cfg: config.Config, seeded: dict) -> None:
    ds, svc = copy.deepcopy(seeded["DaemonSet"]), copy.deepcopy(seeded["Service"])
    ds["spec"]["template"]["spec"]["hostNetwork"] = False
    svc["spec"]["ports"][0]["nodePort"] = 31000
    del svc["spec"]["ports"][1]
    pods = pods_on(WORKERS[:3]) + [pod("ingress-nginx-controller-zz", "k8s-worker-04", "Pending")]
    findings = check_controller(
        cfg.ingress, daemonset=ds, deployment=None, pods=pods, service=svc, workers={**workers(), "k8s-worker-06": None}
    )
    assert bad(findings) == [
        "DaemonSet ingress-nginx/ingress-nginx-controller: hostNetwork is off in the pod template: the controller "
        "does not listen on the workers' own ports",
        "worker k8s-worker-04: no Running controller pod (ingress-nginx-controller-zz Pending)",
        "worker k8s-worker-05: no controller pod on this node",
        "worker k8s-worker-06: no Node of that name or address in the cluster",
        "Service ingress-nginx/ingress-nginx-controller: http port 80 has nodePort 31000, expected 31695",
        "Service ingress-nginx/ingress-nginx-controller: no https port (name 'https' or port 443)",
    ]


def test_deployment_instead_of_daemonset_and_clusterip(cfg: config.Config, seeded: dict) -> None:
    svc = copy.deepcopy(seeded["Service"])
    svc["spec"]["type"] = "ClusterIP"
    deployment = {"kind": "Deployment", "spec": {"replicas": 2}}
    findings = check_controller(
        cfg.ingress, daemonset=None, deployment=deployment, pods=[], service=svc, workers=workers()
    )
    assert bad(findings) == [
        "DaemonSet ingress-nginx/ingress-nginx-controller: not found: ingress-nginx/ingress-nginx-controller runs "
        "as a Deployment (2 replicas), not a DaemonSet",
        "Service ingress-nginx/ingress-nginx-controller: type ClusterIP: no NodePorts (expected NodePort with "
        "31695/32720)",
    ]
    findings = check_controller(cfg.ingress, daemonset=None, deployment=None, pods=[], service=None, workers=workers())
    assert [f.detail for f in findings] == ["not found in namespace ingress-nginx"] * 2


def test_pods_of_another_owner_do_not_count(cfg: config.Config, seeded: dict) -> None:
    pods = [pod("x", n, owner="something-else") for n in WORKERS]
    findings = check_controller(
        cfg.ingress,
        daemonset=seeded["DaemonSet"],
        deployment=None,
        pods=pods,
        service=seeded["Service"],
        workers=workers(),
    )
    assert len(bad(findings)) == 5


def test_workers_are_matched_to_nodes_by_name_or_address() -> None:
    nodes = [
        {"metadata": {"name": "node-a"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}]}},
        {"metadata": {"name": "k8s-worker-02"}, "status": {"addresses": []}},
    ]
    hosts = [
        Host("k8s-worker-01", "10.0.0.5", None, "root", "prod", "k3s", "worker"),
        Host("k8s-worker-02", "10.0.0.6", None, "root", "prod", "k3s", "worker"),
        Host("k8s-worker-03", "10.0.0.7", None, "root", "prod", "k3s", "worker"),
    ]
    assert worker_nodes(hosts, nodes) == {
        "k8s-worker-01": "node-a",
        "k8s-worker-02": "k8s-worker-02",
        "k8s-worker-03": None,
    }


def live_version(desired: dict, **changes: object) -> dict:
    live = copy.deepcopy(desired)
    live["metadata"].update(
        uid="u1",
        resourceVersion="42",
        generation=1,
        creationTimestamp="2025-01-01T00:00:00Z",
        managedFields=[{"manager": "keybuzz-fix"}],
    )
    live["status"] = {"loadBalancer": {}}
    live["metadata"].update(changes)
    return live


def test_diff_ignores_server_fields_and_shows_changes(cfg: config.Config) -> None:
    desired = ingress.build_ingresses(cfg)[0]
    live = live_version(desired)
    after = live_version(desired, resourceVersion="43", managedFields=[{"manager": "other"}])
    assert ingress.route_diff(live, after, "x") == ""
    assert ingress.route_status(live, after) is RouteStatus.UNCHANGED
    assert ingress.route_status(None, after) is RouteStatus.CREATE
    changed = copy.deepcopy(after)
    changed["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] = "100m"
    text = ingress.route_diff(live, changed, "Ingress keybuzz/keybuzz-front-ingress")
    assert ingress.route_status(live, changed) is RouteStatus.UPDATE
    assert "-    nginx.ingress.kubernetes.io/proxy-body-size: 50m" in text
    assert "+    nginx.ingress.kubernetes.io/proxy-body-size: 100m" in text
    assert "resourceVersion" not in text and "managedFields" not in text
    created = ingress.route_diff(None, after, "Ingress keybuzz/keybuzz-front-ingress")
    assert created.startswith("--- /dev/null") and "+  - host: platform.keybuzz.io" in created


def test_describe_route_for_the_audit_log(cfg: config.Config) -> None:
    assert ingress.describe_route(None) == "absent"
    assert ingress.describe_route(ingress.build_ingresses(cfg)[1]) == "platform-api.keybuzz.io → keybuzz-api:80"


def test_plan_exit_code(cfg: config.Config) -> None:
    desired = ingress.build_ingresses(cfg)[0]
    ok = ControllerFact("s", True, "fine")
    plan = IngressPlan((ok,), (RoutePlan(desired, None, RouteStatus.CREATE),))
    assert ExitCode.of(plan) == 0 and len(plan.changes) == 1
    assert ExitCode.of(IngressPlan((ControllerFact("s", False, "bad"),), ())) == 1
    assert ExitCode.of(IngressPlan((ok,), (RoutePlan(desired, None, RouteStatus.CONFLICT, error="x"),))) == 1
    assert RoutePlan(desired, None, RouteStatus.CREATE).name == "keybuzz/keybuzz-front-ingress"
