"""Issue 16 on the real test control plane: duplicate port variables, objects someone else
reconciles, scheduling that fits a DaemonSet, and the planner's placement against the real
scheduler and DaemonSet controller.

Each test changes the seeded cluster and leaves it dirty; the next one reseeds it (about 2.5 s).
kwok plays the kubelet, so an env variable is never read by a process here: the API server's own
side of the env rule is shown instead (its warning that a later entry hides an earlier one, and
server-side apply refusing the duplicate), the kubelet's side is in tests/unit/test_convert_ports.py.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from keybuzz_fix.cluster.connect import from_kubeconfig
from keybuzz_fix.cluster.scheduling import eligible_nodes
from tests.cluster.reset import reset_cluster
from tests.cluster.seed import SEEDED_NAMESPACES, seed_keybuzz, wait_for

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = pytest.mark.integration

NS = "keybuzz"
runner = CliRunner()


class Lab:
    """The module's cluster: every test starts from the seeded state."""

    def __init__(self, cluster: KeybuzzCluster) -> None:
        self.cluster = cluster
        self.api = cluster.api_client
        self.kube = from_kubeconfig(cluster.kubeconfig)
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.autoscaling = client.AutoscalingV2Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.dirty = False

    def fresh(self) -> None:
        if self.dirty:
            reset_cluster(
                self.api,
                keep_namespaces=SEEDED_NAMESPACES,
                keep_nodes=self.cluster.worker_names + self.cluster.master_names,
            )
            seed_keybuzz(self.api, self.cluster.workers, self.cluster.masters)
        self.dirty = True

    def convert(self, *args: str) -> tuple[Result, dict[str, Any] | None]:
        result = runner.invoke(
            app, ["convert", "--yes", "-o", "json", *args, "--kubeconfig", str(self.cluster.kubeconfig)]
        )
        try:
            return result, json.loads(result.stdout)
        except ValueError:
            return result, None

    def rolled_out(self, name: str, timeout: float = 60.0) -> None:
        def done(objs: dict[str, Any]) -> bool:
            d = objs.get(name)
            return bool(
                d
                and d.status.observed_generation == d.metadata.generation
                and (d.status.updated_replicas or 0) == d.spec.replicas
                and (d.status.available_replicas or 0) == d.spec.replicas
                and (d.status.replicas or 0) == d.spec.replicas
            )

        wait_for(self.apps.list_namespaced_deployment, done, timeout, f"Deployment {name} rolled out", namespace=NS)


@pytest.fixture(scope="module")
def lab(keybuzz_cluster: KeybuzzCluster) -> Lab:
    return Lab(keybuzz_cluster)


@pytest.fixture
def fresh(lab: Lab, state_dir: Any) -> Lab:
    lab.fresh()
    return lab


def error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("keybuzz-fix: error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def pods_by_node(lab: Lab, ds: str) -> dict[str, str]:
    """Each running pod of a DaemonSet, by node."""
    uid = lab.apps.read_namespaced_daemon_set(ds, NS).metadata.uid
    return {
        p.spec.node_name: p.status.phase
        for p in lab.core.list_namespaced_pod(NS, label_selector=f"app={ds}").items
        if any(o.uid == uid for o in p.metadata.owner_references or [])
    }


# -- table case 1: PORT twice ------------------------------------------------------------------------


def test_duplicate_port_env_converts_with_one_entry_on_the_host_port(fresh: Lab) -> None:
    """fluxcd/helm-controller#1333: the chart and the values both set PORT."""
    env = [
        {"name": "PORT", "value": "3001"},
        {"name": "NODE_ENV", "value": "production"},
        {"name": "PORT", "value": "3001"},
    ]
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/env", "value": env}]
    response = fresh.apps.patch_namespaced_deployment(
        "keybuzz-api", NS, patch, _content_type="application/json-patch+json", _preload_content=False
    )
    # The API server's reading: the later entry hides the earlier one (pkg/api/pod/warnings.go).
    assert 'env[2]: hides previous definition of \\"PORT\\"' in response.headers.get("Warning", "")
    fresh.rolled_out("keybuzz-api")
    stored = fresh.apps.read_namespaced_deployment("keybuzz-api", NS).spec.template.spec.containers[0].env
    assert [e.name for e in stored] == ["PORT", "NODE_ENV", "PORT"]
    # Server-side apply, which convert uses, refuses the duplicate as it stands.
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "duplicate-probe", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"probe": "dup"}},
            "template": {
                "metadata": {"labels": {"probe": "dup"}},
                "spec": {"containers": [{"name": "c", "image": "x", "env": env}]},
            },
        },
    }
    with pytest.raises(ApiException) as refused:
        fresh.apps.patch_namespaced_daemon_set(
            "duplicate-probe", NS, ds, field_manager="t", dry_run="All", _content_type="application/apply-patch+yaml"
        )
    assert 'duplicate entries for key [name=\\"PORT\\"]' in str(refused.value.body)

    result, summary = fresh.convert()
    assert result.exit_code == 0, result.output
    assert summary is not None and summary["error"] is None
    assert any("env PORT 3001 → 8080 in all 2 entries" in n for n in summary["notes"])
    container = fresh.apps.read_namespaced_daemon_set("keybuzz-api", NS).spec.template.spec.containers[0]
    assert [(e.name, e.value) for e in container.env] == [("PORT", "8080"), ("NODE_ENV", "production")]
    assert container.ports[0].container_port == container.ports[0].host_port == 8080
    assert set(pods_by_node(fresh, "keybuzz-api")) == set(fresh.cluster.worker_names)


# -- table case 2 and the reconciler: an HPA owned by a ScaledObject ---------------------------------

SCALED_OBJECT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "scope": "Namespaced",
        "names": {"plural": "scaledobjects", "singular": "scaledobject", "kind": "ScaledObject"},
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


def install_crd(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(SCALED_OBJECT_CRD)
    except ApiException as e:
        if e.status != 409:
            raise

    def established(objs: dict[str, Any]) -> bool:
        crd = objs.get("scaledobjects.keda.sh")
        return bool(crd and any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []))

    wait_for(ext.list_custom_resource_definition, established, 30, "the ScaledObject CRD established")


class ScaledObjectReconciler:
    """A small KEDA stand-in: keeps the HPA of each ScaledObject in existence, owned by it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.stop = threading.Event()
        self.recreated = 0
        self.thread = threading.Thread(target=self._run, name="scaledobject-reconciler", daemon=True)

    def __enter__(self) -> ScaledObjectReconciler:
        self.reconcile()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def reconcile(self) -> None:
        """Create the missing HPA of every ScaledObject (KEDA names it keda-hpa-<name>)."""
        objs = self.lab.custom.list_namespaced_custom_object("keda.sh", "v1alpha1", NS, "scaledobjects")["items"]
        have = {h.metadata.name for h in self.lab.autoscaling.list_namespaced_horizontal_pod_autoscaler(NS).items}
        for so in objs:
            name = f"keda-hpa-{so['metadata']['name']}"
            if name in have:
                continue
            hpa = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {
                    "name": name,
                    "labels": {
                        "app.kubernetes.io/managed-by": "keda-operator",
                        "scaledobject.keda.sh/name": so["metadata"]["name"],
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": "keda.sh/v1alpha1",
                            "kind": "ScaledObject",
                            "name": so["metadata"]["name"],
                            "uid": so["metadata"]["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {
                    "minReplicas": 2,
                    "maxReplicas": 5,
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", **so["spec"]["scaleTargetRef"]},
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                        }
                    ],
                },
            }
            try:
                self.lab.autoscaling.create_namespaced_horizontal_pod_autoscaler(NS, hpa, field_manager="keda")
                self.recreated += 1
            except ApiException as e:
                if e.status != 409:
                    raise

    def _run(self) -> None:
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for _event in w.stream(
                    self.lab.autoscaling.list_namespaced_horizontal_pod_autoscaler, NS, timeout_seconds=1
                ):
                    self.reconcile()
                    if self.stop.is_set():
                        w.stop()
                        break
                self.reconcile()
            except ApiException:
                time.sleep(0.2)


def keda_state(lab: Lab) -> None:
    install_crd(lab.api)
    lab.custom.create_namespaced_custom_object(
        "keda.sh",
        "v1alpha1",
        NS,
        "scaledobjects",
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "keybuzz-api"},
            "spec": {"scaleTargetRef": {"name": "keybuzz-api"}, "triggers": [{"type": "cpu"}]},
        },
    )
    lab.autoscaling.delete_namespaced_horizontal_pod_autoscaler("keybuzz-api", NS)


def hpa_uid(lab: Lab, name: str) -> str | None:
    try:
        return str(lab.autoscaling.read_namespaced_horizontal_pod_autoscaler(name, NS).metadata.uid)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def test_keda_hpa_is_refused_and_allow_managed_shows_why(fresh: Lab) -> None:
    """kedacore/keda#1320: the HPA belongs to a ScaledObject; KEDA re-creates whatever convert deletes."""
    keda_state(fresh)
    with ScaledObjectReconciler(fresh) as keda:
        first = hpa_uid(fresh, "keda-hpa-keybuzz-api")
        assert first is not None
        result, _ = fresh.convert()
        assert result.exit_code == 1
        line = error_line(result)
        assert (
            "keybuzz-api: HorizontalPodAutoscaler keybuzz/keda-hpa-keybuzz-api is managed by ScaledObject "
            "keybuzz/keybuzz-api (its controller): KEDA would re-create it after convert; first delete ScaledObject "
            "keybuzz-api" in line
        )
        assert line.endswith("nothing changed")
        assert fresh.kube.list("DaemonSet", NS) == [] and hpa_uid(fresh, "keda-hpa-keybuzz-api") == first

        result, summary = fresh.convert("--allow-managed")
        assert result.exit_code == 0, result.output
        assert summary is not None
        assert ("delete", "keda-hpa-keybuzz-api", "done") in [
            (c["action"], c["name"], c["outcome"]) for c in summary["changes"]
        ]
        assert any(
            w.startswith("keybuzz-api: --allow-managed: delete HorizontalPodAutoscaler keybuzz/keda-hpa-keybuzz-api")
            and "KEDA will re-create it" in w
            for w in summary["warnings"]
        )

        # The refusal was right: the owner puts the HPA back, and the next run refuses it again.
        def recreated(objs: dict[str, Any]) -> bool:
            hpa = objs.get("keda-hpa-keybuzz-api")
            return hpa is not None and hpa.metadata.uid != first

        wait_for(
            fresh.autoscaling.list_namespaced_horizontal_pod_autoscaler, recreated, 30, "KEDA's HPA back", namespace=NS
        )
        assert keda.recreated >= 1
        again, _ = fresh.convert()
        assert again.exit_code == 1
        assert "HorizontalPodAutoscaler keybuzz/keda-hpa-keybuzz-api is managed by ScaledObject" in error_line(again)


# -- table case 3: Helm release tracked by Argo CD ------------------------------------------------------


def test_helm_release_tracked_by_argocd_is_refused_then_converted_without_its_metadata(fresh: Lab) -> None:
    """argoproj/argo-cd#15472: the next sync would re-create the Deployment and the HPA."""
    for name in ("keybuzz-api", "keybuzz-front"):
        patch = {
            "metadata": {
                "labels": {
                    "app.kubernetes.io/instance": "keybuzz",
                    "app.kubernetes.io/managed-by": "Helm",
                    "helm.sh/chart": "keybuzz-1.4.2",
                },
                "annotations": {
                    "meta.helm.sh/release-name": "keybuzz",
                    "meta.helm.sh/release-namespace": "keybuzz",
                    "argocd.argoproj.io/tracking-id": f"keybuzz:apps/Deployment:keybuzz/{name}",
                },
            }
        }
        fresh.apps.patch_namespaced_deployment(
            name, NS, patch, field_manager="helm", _content_type="application/merge-patch+json"
        )
    result, _ = fresh.convert()
    assert result.exit_code == 1
    line = error_line(result)
    for name in ("keybuzz-api", "keybuzz-front"):
        assert (
            f"{name}: Deployment keybuzz/{name} is managed by Helm release keybuzz (namespace keybuzz, chart "
            "keybuzz-1.4.2) and Argo CD app keybuzz: the next helm upgrade or the next Argo CD sync would "
            "re-create it" in line
        )
    assert fresh.kube.list("DaemonSet", NS) == []

    result, summary = fresh.convert("--allow-managed")
    assert result.exit_code == 0, result.output
    assert summary is not None
    assert sum("--allow-managed: delete Deployment" in w for w in summary["warnings"]) == 2
    for name in ("keybuzz-api", "keybuzz-front"):
        meta = fresh.kube.get("DaemonSet", name, NS)["metadata"]  # type: ignore[index]
        assert meta["labels"] == {"app": name, "app.kubernetes.io/managed-by": "keybuzz-fix"}
        assert not any(k.startswith(("meta.helm.sh/", "argocd.argoproj.io/")) for k in meta.get("annotations") or {})
        assert {m["manager"] for m in meta["managedFields"]} <= {"keybuzz-fix", "kube-controller-manager"}
        assert set(pods_by_node(fresh, name)) == set(fresh.cluster.worker_names)


# -- table case 4: required anti-affinity on its own label --------------------------------------------

ANTI_AFFINITY = {
    "podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "keybuzz-api"}}, "topologyKey": "kubernetes.io/hostname"}
        ]
    }
}


def test_required_self_anti_affinity_is_dropped_and_the_daemonset_reaches_ready(fresh: Lab) -> None:
    """kubernetes/kubernetes#139135: a chart's "hard" anti-affinity preset."""
    fresh.apps.patch_namespaced_deployment(
        "keybuzz-api", NS, {"spec": {"template": {"spec": {"affinity": ANTI_AFFINITY}}}}
    )
    fresh.rolled_out("keybuzz-api")
    held = {p.spec.node_name for p in fresh.core.list_namespaced_pod(NS, label_selector="app=keybuzz-api").items}
    assert len(held) == 2

    # Copied verbatim (what convert did before), the term keeps the new pods off those two nodes.
    probe = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "verbatim", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"probe": "verbatim"}},
            "template": {
                "metadata": {"labels": {"app": "keybuzz-api", "probe": "verbatim"}},
                "spec": {
                    "affinity": ANTI_AFFINITY,
                    "tolerations": [],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "containers": [{"name": "c", "image": "x"}],
                },
            },
        },
    }
    fresh.apps.create_namespaced_daemon_set(NS, probe)

    def placed(objs: dict[str, Any]) -> bool:
        mine = [p for p in objs.values() if (p.metadata.labels or {}).get("probe") == "verbatim"]
        return len(mine) == 5 and sum(p.status.phase == "Running" for p in mine) == 3

    pods = wait_for(fresh.core.list_namespaced_pod, placed, 30, "the verbatim DaemonSet placed", namespace=NS)
    pending = [
        p for p in pods.values() if (p.metadata.labels or {}).get("probe") == "verbatim" and p.status.phase == "Pending"
    ]
    assert len(pending) == 2 and all(not p.spec.node_name for p in pending)
    fresh.apps.delete_namespaced_daemon_set("verbatim", NS)

    def gone(objs: dict[str, Any]) -> bool:
        return not any((p.metadata.labels or {}).get("probe") == "verbatim" for p in objs.values())

    wait_for(fresh.core.list_namespaced_pod, gone, 30, "the verbatim pods gone", namespace=NS)

    result, summary = fresh.convert("--timeout", "60")
    assert result.exit_code == 0, result.output
    assert summary is not None
    assert any(
        "podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]" in n and "dropped" in n
        for n in summary["notes"]
    )
    assert any("switches over once the DaemonSet's other pods are ready" in n for n in summary["notes"])
    t = summary["timings"]
    assert t["applied"] <= t["handed_over"] <= t["ready"] <= t["done"]
    ds = fresh.apps.read_namespaced_daemon_set("keybuzz-api", NS)
    assert ds.spec.template.spec.affinity.pod_anti_affinity is None
    nodes = pods_by_node(fresh, "keybuzz-api")
    assert set(nodes) == set(fresh.cluster.worker_names) and set(nodes.values()) == {"Running"}
    assert held <= set(nodes)  # next to where the Deployment's pods ran, too
    assert fresh.kube.list("Deployment", NS) == []


# -- kind 2: a constraint that leaves a worker out -------------------------------------------------------


def test_a_node_selector_that_leaves_out_a_worker_is_refused_naming_it(fresh: Lab) -> None:
    workers = fresh.cluster.worker_names
    for name in workers[:-1]:
        fresh.core.patch_node(name, {"metadata": {"labels": {"disk": "ssd"}}})
    fresh.apps.patch_namespaced_deployment(
        "keybuzz-api", NS, {"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}}
    )
    result, _ = fresh.convert()
    assert result.exit_code == 1
    assert (
        f"keybuzz-api: its DaemonSet would leave out worker(s) {workers[-1]} (the cluster's worker Nodes): "
        "nodeSelector disk=ssd: no label disk" in error_line(result)
    )
    assert fresh.kube.list("DaemonSet", NS) == []


# -- the planner against the real scheduler and DaemonSet controller ----------------------------------

ROUNDS, PER_ROUND = 4, 16
_OPS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
_TOLERATIONS = (
    {"operator": "Exists"},
    {"key": "dedicated", "operator": "Exists"},
    {"key": "dedicated", "operator": "Equal", "value": "api", "effect": "NoSchedule"},
    {"key": "dedicated", "value": "batch"},
    {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
    {"key": "maintenance", "operator": "Exists", "effect": "NoExecute"},
    {"key": "maintenance", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    {"effect": "NoSchedule", "operator": "Exists"},
    {"effect": "NoExecute", "operator": "Exists"},
)
_TAINTS = (
    {"key": "dedicated", "value": "api", "effect": "NoSchedule"},
    {"key": "dedicated", "value": "batch", "effect": "NoSchedule"},
    {"key": "maintenance", "effect": "NoExecute"},
    {"key": "soft", "effect": "PreferNoSchedule"},
)


def _expression(rng: random.Random) -> dict[str, Any]:
    op = rng.choice(_OPS)
    if op in ("Gt", "Lt"):
        return {"key": "cores", "operator": op, "values": [rng.choice(["2", "4", "8"])]}
    key = rng.choice(["disk", "zone", "kubernetes.io/hostname"])
    if op in ("Exists", "DoesNotExist"):
        return {"key": key, "operator": op}
    pool = {"disk": ["ssd", "hdd"], "zone": ["a", "b"], "kubernetes.io/hostname": ["k8s-worker-01", "k8s-worker-04"]}
    return {"key": key, "operator": op, "values": rng.sample(pool[key], rng.randint(1, 2))}


def _term(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.15:
        names = [rng.choice(["k8s-worker-02", "k8s-worker-03", "k8s-master-01"])]  # exactly one value
        return {"matchFields": [{"key": "metadata.name", "operator": rng.choice(["In", "NotIn"]), "values": names}]}
    return {"matchExpressions": [_expression(rng) for _ in range(rng.randint(1, 2))]}


def _pod_spec(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}]}
    if rng.random() < 0.3:
        spec["nodeSelector"] = {rng.choice(["disk", "zone"]): rng.choice(["ssd", "a", "b"])}
    if rng.random() < 0.5:
        terms = [_term(rng) for _ in range(rng.randint(1, 2))]
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
        }
    if rng.random() < 0.8:
        spec["tolerations"] = rng.sample(list(_TOLERATIONS), rng.randint(1, 2))
    return spec


def test_planner_placement_matches_the_daemonset_controller_and_scheduler(fresh: Lab) -> None:
    """Generated nodeSelector/affinity/toleration sets: which nodes the planner says get a pod, and which do."""
    rng = random.Random(16)
    mismatches = []
    checked = on_masters = 0
    sizes: set[int] = set()
    for round_no in range(ROUNDS):
        for name in fresh.cluster.worker_names:
            labels: dict[str, Any] = {
                "disk": rng.choice(["ssd", "hdd", None]),
                "zone": rng.choice(["a", "b", None]),
                "cores": rng.choice(["2", "4", "8", "16", "many", None]),
            }
            taints = list({(t["key"], t["effect"]): t for t in rng.sample(list(_TAINTS), rng.randint(0, 2))}.values())
            fresh.core.patch_node(
                name,
                {"metadata": {"labels": labels}, "spec": {"taints": taints or None}},
                _content_type="application/merge-patch+json",
            )
        namespace = f"placement-{round_no}"
        fresh.core.create_namespace({"metadata": {"name": namespace}})
        specs = {f"ds-{i}": _pod_spec(rng) for i in range(PER_ROUND)}
        for ds_name, spec in specs.items():
            fresh.apps.create_namespaced_daemon_set(
                namespace,
                {
                    "metadata": {"name": ds_name},
                    "spec": {
                        "selector": {"matchLabels": {"ds": ds_name}},
                        "template": {"metadata": {"labels": {"ds": ds_name}}, "spec": spec},
                    },
                },
            )

        def settled(objs: dict[str, Any], specs: dict[str, Any] = specs) -> bool:
            return len(objs) == len(specs) and all(
                d.status.observed_generation == d.metadata.generation
                and (d.status.current_number_scheduled or 0) == (d.status.desired_number_scheduled or 0)
                and (d.status.number_ready or 0) == (d.status.desired_number_scheduled or 0)
                for d in objs.values()
            )

        wait_for(
            fresh.apps.list_namespaced_daemon_set, settled, 90, f"round {round_no} DaemonSets", namespace=namespace
        )
        nodes = fresh.kube.list("Node")
        pods = fresh.core.list_namespaced_pod(namespace).items
        for ds_name, spec in specs.items():
            actual = sorted(p.spec.node_name for p in pods if p.metadata.labels.get("ds") == ds_name)
            planned = sorted(eligible_nodes(spec, nodes, daemonset=True))
            checked += 1
            sizes.add(len(planned))
            on_masters += any(n in fresh.cluster.master_names for n in planned)
            if actual != planned:
                mismatches.append((round_no, ds_name, spec, planned, actual))
    assert mismatches == []
    # The generated sets are varied: none, some and all workers, and masters for those tolerating their taint.
    assert checked == ROUNDS * PER_ROUND and {0, 5} < sizes and len(sizes) >= 5 and on_masters >= 1, (sizes, on_masters)
