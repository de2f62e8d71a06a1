"""convert and rollback on the real test control plane (kube-apiserver, controllers, kwok nodes).

Every test drives the CLI through CliRunner with --kubeconfig, with backups and the audit log in a
temporary state folder. kwok plays the kubelet: its pods are not processes, they turn Running and
Ready as soon as they are bound to a node, so "ready" here proves scheduling, placement and the
controllers' bookkeeping, not that an app answers on its port.

The module gets one seeded cluster; a test that changes it marks it dirty and the next test that
needs the seeded state resets and reseeds it (about 2.5 s, cheaper than a module per test).
"""

from __future__ import annotations

import copy
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from keybuzz_fix.cluster import backup
from keybuzz_fix.cluster import client as kube
from keybuzz_fix.cluster.connect import from_kubeconfig
from keybuzz_fix.cluster.objects import strip_server_fields
from tests.cluster.reset import reset_cluster
from tests.cluster.seed import SEEDED_NAMESPACES, seed_keybuzz, wait_for

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = pytest.mark.integration

NS = "keybuzz"
APPS = {"keybuzz-api": (8080, 30080), "keybuzz-front": (3000, 30000)}
MANIFESTS = Path(__file__).resolve().parent.parent.parent / "manifests"
runner = CliRunner()


# -- fixtures and helpers -------------------------------------------------------------------------


class Lab:
    """The module's cluster, reseeded on demand when a test changed it."""

    def __init__(self, cluster: KeybuzzCluster) -> None:
        self.cluster = cluster
        self.kube = from_kubeconfig(cluster.kubeconfig)
        self.dirty = False

    def pristine(self, *, settled: bool = False) -> None:
        """Bring back the seeded state; with settled, also wait until the controllers stop writing."""
        if self.dirty:
            api = self.cluster.api_client
            reset_cluster(
                api, keep_namespaces=SEEDED_NAMESPACES, keep_nodes=self.cluster.worker_names + self.cluster.master_names
            )
            seed_keybuzz(api, self.cluster.workers, self.cluster.masters)
            self.dirty = False
        if settled:
            settle(self.cluster.api_client)


def settle(api: client.ApiClient, timeout: float = 60.0) -> None:
    """Watch until the Deployments report ready and the HPA controller has written its first status.

    Until then those controllers still update the objects (their resourceVersions move), which a
    test comparing resourceVersions must not mistake for the tool's doing.
    """
    apps, autoscaling = client.AppsV1Api(api), client.AutoscalingV2Api(api)

    def deployments_done(objs: dict[str, Any]) -> bool:
        return len(objs) == 2 and all(
            (d.status.available_replicas or 0) == d.spec.replicas
            and d.status.observed_generation == d.metadata.generation
            for d in objs.values()
        )

    def hpas_done(objs: dict[str, Any]) -> bool:
        return len(objs) == 2 and all(
            any(c.type == "ScalingActive" for c in (h.status.conditions or [])) for h in objs.values()
        )

    wait_for(apps.list_namespaced_deployment, deployments_done, timeout, "Deployments ready", namespace=NS)
    wait_for(autoscaling.list_namespaced_horizontal_pod_autoscaler, hpas_done, timeout, "HPA status", namespace=NS)


@pytest.fixture(scope="module")
def lab(keybuzz_cluster: KeybuzzCluster) -> Lab:
    return Lab(keybuzz_cluster)


@pytest.fixture
def untouched(lab: Lab, state_dir: Path) -> Iterator[Lab]:
    """The seeded, settled state, for a test that must not change it (checked afterwards)."""
    lab.pristine(settled=True)
    before = versions(lab.kube)
    yield lab
    after = versions(lab.kube)
    if after != before:
        lab.dirty = True
    assert after == before, "the cluster changed"
    assert not (state_dir / "backups").exists() or not any((state_dir / "backups").iterdir())
    assert not (state_dir / "audit.jsonl").exists()


@pytest.fixture
def fresh(lab: Lab, state_dir: Path) -> Iterator[Lab]:
    """The seeded state, for a test that changes it."""
    lab.pristine()
    lab.dirty = True
    yield lab


def cli(*args: str, kubeconfig: Path | None = None) -> Result:
    """Run keybuzz-fix with the given arguments (and --kubeconfig)."""
    argv = list(args) + (["--kubeconfig", str(kubeconfig)] if kubeconfig else [])
    return runner.invoke(app, argv)


def error_line(result: Result) -> str:
    """Return the one error line the CLI printed on stderr."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("keybuzz-fix: error: ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def versions(k: kube.Kube) -> dict[str, str]:
    """Every object convert could touch or that runs the apps, with its resourceVersion."""
    found = {}
    for kind in ("Deployment", "ReplicaSet", "DaemonSet", "Service", "HorizontalPodAutoscaler", "Pod"):
        for o in k.list(kind, NS):
            found[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
    for kind in ("DaemonSet", "Service"):
        for o in k.list(kind, "ingress-nginx"):
            found[f"{kind}/ingress-nginx/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
    return found


def originals(k: kube.Kube) -> dict[tuple[str, str], dict[str, Any]]:
    """The app objects convert replaces or changes, as they are now."""
    return {
        (o["kind"], o["metadata"]["name"]): o
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler")
        for o in k.list(kind, NS)
    }


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without what the server owns (uid, resourceVersion, status, …)."""
    out = strip_server_fields(obj)
    out.get("metadata", {}).pop("namespace", None)
    return out


def assert_converted(lab: Lab, before: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The seeded apps run as hostNetwork DaemonSets on every worker, behind NodePort Services."""
    k = lab.kube
    assert k.list("Deployment", NS) == [] and k.list("HorizontalPodAutoscaler", NS) == []
    nodes = {n["metadata"]["name"]: n for n in k.list("Node")}
    for name, (host_port, node_port) in APPS.items():
        ds = k.get("DaemonSet", name, NS)
        assert ds is not None and ds["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "keybuzz-fix"
        pods = [
            p
            for p in k.list("Pod", NS, selector=f"app={name}")
            if p["metadata"]["ownerReferences"][0]["uid"] == ds["metadata"]["uid"]
        ]
        running = sorted(p["spec"]["nodeName"] for p in pods if p["status"].get("phase") == "Running")
        assert running == sorted(lab.cluster.worker_names)  # one per worker, none on a master
        assert all(
            p["status"]["podIP"] == nodes[p["spec"]["nodeName"]]["status"]["addresses"][0]["address"] for p in pods
        )  # hostNetwork: the node's address
        pod = ds["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        (container,) = pod["containers"]
        original = before[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == original["image"]
        assert container["ports"] == [
            {"name": "http", "containerPort": host_port, "hostPort": host_port, "protocol": "TCP"}
        ]
        assert {"name": "PORT", "value": str(host_port)} in container["env"]
        for probe in ("livenessProbe", "readinessProbe"):  # named port http, now the host port
            assert container[probe]["httpGet"]["port"] == "http"
        assert container.get("envFrom") == original.get("envFrom")
        assert pod["imagePullSecrets"] == before[("Deployment", name)]["spec"]["template"]["spec"]["imagePullSecrets"]
        svc = k.get("Service", name, NS)
        assert svc is not None
        assert svc["spec"]["type"] == "NodePort"
        assert svc["spec"]["clusterIP"] == before[("Service", name)]["spec"]["clusterIP"]
        assert svc["metadata"]["uid"] == before[("Service", name)]["metadata"]["uid"]  # changed in place
        (port,) = svc["spec"]["ports"]
        assert (port["port"], port["targetPort"], port["nodePort"]) == (80, host_port, node_port)


def newest_backup(state_dir: Path) -> backup.Backup:
    (path, *_) = sorted((state_dir / "backups").glob("convert-*.yaml"), reverse=True)
    return backup.read_backup(path)


def convert_json(lab: Lab, *args: str) -> tuple[Result, dict[str, Any]]:
    result = cli("convert", "--yes", "-o", "json", *args, kubeconfig=lab.cluster.kubeconfig)
    return result, json.loads(result.stdout)


# -- nothing changes --------------------------------------------------------------------------------


def test_dry_run_sends_every_change_as_a_server_side_dry_run_and_changes_nothing(untouched: Lab) -> None:
    result = cli("convert", "--dry-run", kubeconfig=untouched.cluster.kubeconfig)
    assert result.exit_code == 0, result.output
    assert "the API server accepted all 8 change(s)" in result.stdout
    assert "not-a-real" not in result.stdout and "production" not in result.stdout  # values masked
    assert "keybuzz-api.keybuzz.svc.cluster.local" in result.stdout  # named in the ClusterIP warning
    as_json = cli("convert", "--dry-run", "-o", "json", kubeconfig=untouched.cluster.kubeconfig)
    summary = json.loads(as_json.stdout)
    assert summary["dry_run"] is True and summary["backup"] is None
    assert [c["outcome"] for c in summary["changes"]] == ["validated"] * 8
    as_yaml = cli("convert", "--dry-run", "-o", "yaml", "--show-values", kubeconfig=untouched.cluster.kubeconfig)
    objs = [d for d in yaml.safe_load_all(as_yaml.stdout) if d]
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("DaemonSet", "keybuzz-api"),
        ("DaemonSet", "keybuzz-front"),
        ("Service", "keybuzz-api"),
        ("Service", "keybuzz-front"),
    ]


def test_dry_run_is_checked_by_the_api_server(untouched: Lab) -> None:
    """What only the API knows (here a quota forbidding DaemonSets) fails the dry run, and nothing changes."""
    core = client.CoreV1Api(untouched.cluster.api_client)
    core.create_namespaced_resource_quota(
        NS, {"metadata": {"name": "no-daemonsets"}, "spec": {"hard": {"count/daemonsets.apps": "0"}}}
    )
    try:
        result = cli("convert", "--dry-run", kubeconfig=untouched.cluster.kubeconfig)
    finally:
        core.delete_namespaced_resource_quota("no-daemonsets", NS)
    assert result.exit_code == 1
    assert error_line(result).startswith(
        "keybuzz-fix: error: cannot apply DaemonSet keybuzz-api in namespace keybuzz: refused by the API server: "
    )
    assert "exceeded quota: no-daemonsets" in error_line(result) or "no-daemonsets" in error_line(result)


def test_read_only_user_gets_a_clear_error_and_nothing_changes(untouched: Lab) -> None:
    api = untouched.cluster.api_client
    rbac = client.RbacAuthorizationV1Api(api)
    group = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "keybuzz-readers"}
    rbac.create_namespaced_role(
        NS,
        {
            "metadata": {"name": "reader"},
            "rules": [
                {"apiGroups": ["", "apps", "autoscaling"], "resources": ["*"], "verbs": ["get", "list", "watch"]}
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": "reader"},
            "subjects": [group],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        },
    )
    reader = untouched.cluster.control_plane.user_kubeconfig("reader", ["keybuzz-readers"])
    # Bound to the namespace only: the cluster-wide read (host-port collisions) is refused, by name.
    result = cli("convert", "--yes", kubeconfig=reader)
    assert result.exit_code == 1
    assert (
        "forbidden: cannot list deployments (needed to list Deployment); grant it (see manifests/rbac.yaml)"
        in error_line(result)
    )
    assert "at the cluster scope" in error_line(result)
    rbac.create_cluster_role(
        {
            "metadata": {"name": "keybuzz-reader"},
            "rules": [
                {
                    "apiGroups": ["", "apps"],
                    "resources": ["deployments", "daemonsets", "statefulsets", "services", "nodes"],
                    "verbs": ["list"],
                }
            ],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": "keybuzz-reader"},
            "subjects": [group],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "keybuzz-reader"},
        }
    )
    for extra in ((), ("--dry-run",)):
        result = cli("convert", "--yes", *extra, kubeconfig=reader)
        assert result.exit_code == 1, result.output
        assert error_line(result) == (
            "keybuzz-fix: error: forbidden: missing permission(s) in namespace keybuzz: patch daemonsets.apps, "
            "create daemonsets.apps, patch services, delete horizontalpodautoscalers.autoscaling, "
            "delete deployments.apps; nothing changed; grant them (see manifests/rbac.yaml)"
        )
    for name in ("keybuzz-reader",):
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)
    rbac.delete_namespaced_role_binding("reader", NS)
    rbac.delete_namespaced_role("reader", NS)


def test_an_app_whose_port_cannot_move_is_refused(untouched: Lab, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"  # the app reads LISTEN_PORT, which keybuzz-api does not set
    cfg.write_text(
        "apps:\n  - {name: keybuzz-api, host_port: 8080, node_port: 30080, port_env: LISTEN_PORT}\n"
        "  - {name: keybuzz-front, host_port: 3000, node_port: 30000, port_env: LISTEN_PORT}\n"
    )
    result = cli("convert", "--yes", "--config", str(cfg), kubeconfig=untouched.cluster.kubeconfig)
    assert result.exit_code == 1
    line = error_line(result)
    assert (
        "convert refused: keybuzz-api: Deployment keybuzz/keybuzz-api listens on 3001 and nothing in its env "
        "tells it where to listen (no LISTEN_PORT variable)" in line
    )
    assert "--keep-port" in line and line.endswith("nothing changed")
    assert "keybuzz-front" not in line  # it already listens on its host port


def test_a_host_port_collision_is_refused(untouched: Lab, tmp_path: Path) -> None:
    """With the config's reserved ports emptied, the observed ingress-nginx DaemonSet still refuses port 80."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "apps:\n  - {name: keybuzz-api, host_port: 80, node_port: 30080}\n"
        "  - {name: keybuzz-front, host_port: 3000, node_port: 30000}\n"
        "ingress: {reserved_host_ports: []}\n"
    )
    result = cli("convert", "--yes", "--config", str(cfg), kubeconfig=untouched.cluster.kubeconfig)
    assert result.exit_code == 1
    line = error_line(result)
    workers = ", ".join(untouched.cluster.worker_names)
    assert (
        f"keybuzz-api: host port 80/TCP is already held by DaemonSet ingress-nginx/ingress-nginx-controller "
        f"(hostNetwork) on {workers}" in line
    )


# -- convert, again, rollback -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Convert the seeded state once: the run's JSON summary, the objects before, the state folder."""
    lab.pristine()
    before = originals(lab.kube)
    state_dir = tmp_path_factory.mktemp("converted") / "state"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KEYBUZZ_FIX_STATE_DIR", str(state_dir))
        lab.dirty = True
        result, summary = convert_json(lab)
    assert result.exit_code == 0, result.output
    return {"summary": summary, "before": before, "state_dir": state_dir}


def test_convert_runs_the_apps_as_host_network_daemonsets(
    lab: Lab, converted: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    summary, before, state_dir = converted["summary"], converted["before"], converted["state_dir"]
    assert [(c["action"], c["kind"], c["name"], c["outcome"]) for c in summary["changes"]] == [
        ("create", "DaemonSet", "keybuzz-api", "done"),
        ("create", "DaemonSet", "keybuzz-front", "done"),
        ("patch", "Service", "keybuzz-api", "done"),
        ("patch", "Service", "keybuzz-front", "done"),
        ("delete", "HorizontalPodAutoscaler", "keybuzz-api", "done"),
        ("delete", "HorizontalPodAutoscaler", "keybuzz-front", "done"),
        ("delete", "Deployment", "keybuzz-api", "done"),
        ("delete", "Deployment", "keybuzz-front", "done"),
    ]
    assert_converted(lab, before)
    # The backup holds every original, exactly as read, privately.
    path = Path(summary["backup"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = {(o["kind"], o["metadata"]["name"]): o for o in backup.read_backup(path).objects}
    assert saved.keys() == before.keys()
    for key, obj in before.items():
        assert saved[key]["metadata"]["uid"] == obj["metadata"]["uid"]
        assert saved[key]["spec"] == obj["spec"]
    audit = [json.loads(line) for line in (state_dir / "audit.jsonl").read_text().splitlines()]
    assert [(e["action"], e["where"]) for e in audit if e["action"] != "backup"] == [
        (c["action"], f"{c['kind']} {NS}/{c['name']}") for c in summary["changes"]
    ]
    assert all(e["outcome"] == "ok" for e in audit)
    t = summary["timings"]
    assert t["planned"] <= t["backed_up"] <= t["applied"] <= t["ready"] <= t["done"]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"convert timings (s from start): {t}")


def test_a_second_convert_is_a_no_op(lab: Lab, converted: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(converted["state_dir"]))
    before = versions(lab.kube)
    backups = sorted((converted["state_dir"] / "backups").iterdir())
    result = cli("convert", "--yes", kubeconfig=lab.cluster.kubeconfig)
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.stdout
    assert versions(lab.kube) == before
    assert sorted((converted["state_dir"] / "backups").iterdir()) == backups


def test_rollback_restores_the_originals(lab: Lab, converted: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(converted["state_dir"]))
    kubeconfig = lab.cluster.kubeconfig
    before = versions(lab.kube)
    dry = cli("rollback", "--latest", "--dry-run", kubeconfig=kubeconfig)
    assert dry.exit_code == 0, dry.output
    assert "the API server accepted all 8 change(s)" in dry.stdout
    assert versions(lab.kube) == before
    result = cli("rollback", "--latest", "--yes", "-o", "json", kubeconfig=kubeconfig)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [(c["action"], c["kind"], c["outcome"]) for c in summary["changes"]] == [
        ("create", "Deployment", "done"),
        ("create", "Deployment", "done"),
        ("create", "HorizontalPodAutoscaler", "done"),
        ("create", "HorizontalPodAutoscaler", "done"),
        ("patch", "Service", "done"),
        ("patch", "Service", "done"),
        ("delete", "DaemonSet", "done"),
        ("delete", "DaemonSet", "done"),
    ]
    now = originals(lab.kube)
    assert now.keys() == converted["before"].keys()
    for key, obj in converted["before"].items():
        assert comparable(now[key]) == comparable(obj), key
    assert (
        now[("Service", "keybuzz-api")]["metadata"]["uid"]
        == converted["before"][("Service", "keybuzz-api")]["metadata"]["uid"]
    )
    assert lab.kube.list("DaemonSet", NS) == []
    for name in APPS:
        running = [
            p
            for p in lab.kube.list("Pod", NS, selector=f"app={name}")
            if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        ]
        assert len(running) == 2
    # rollback backed up what it changed, and a second rollback is a no-op.
    assert Path(summary["backup"]).name.startswith("rollback-")
    again = cli("rollback", "--latest", "--yes", kubeconfig=kubeconfig)
    assert again.exit_code == 0 and "nothing to do" in again.stdout


# -- interrupted runs converge ------------------------------------------------------------------------


def test_a_half_converted_state_converges(fresh: Lab, state_dir: Path) -> None:
    """DaemonSets applied and one Service switched by an earlier run; the Deployments still there."""
    from keybuzz_fix import config
    from keybuzz_fix.cluster.convert import plan_convert
    from keybuzz_fix.cluster.rollout import execute
    from keybuzz_fix.flows.convert import read_convert_state

    before = originals(fresh.kube)
    cfg = config.load_config()
    plan = plan_convert(cfg, read_convert_state(fresh.kube, cfg))
    for change in [*plan.daemonsets, plan.services[0]]:
        execute(fresh.kube, change, command="test")
    result, summary = convert_json(fresh)
    assert result.exit_code == 0, result.output
    assert [(c["action"], c["name"]) for c in summary["changes"] if c["outcome"] == "done"] == [
        ("patch", "keybuzz-front"),
        ("delete", "keybuzz-api"),
        ("delete", "keybuzz-front"),
        ("delete", "keybuzz-api"),
        ("delete", "keybuzz-front"),
    ]
    assert_converted(fresh, before)
    again = cli("convert", "--yes", kubeconfig=fresh.cluster.kubeconfig)
    assert again.exit_code == 0 and "nothing to do" in again.stdout


def test_ctrl_c_stops_cleanly_and_a_rerun_converges(
    fresh: Lab, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keybuzz_fix.cluster import rollout

    before = originals(fresh.kube)
    real_execute = rollout.execute

    def interrupt_before_hpas(kube_: kube.Kube, change: Any, **kwargs: Any) -> None:
        if change.kind == "HorizontalPodAutoscaler":
            raise KeyboardInterrupt
        real_execute(kube_, change, **kwargs)

    monkeypatch.setattr(rollout, "execute", interrupt_before_hpas)
    result = cli("convert", "--yes", kubeconfig=fresh.cluster.kubeconfig)
    assert result.exit_code == 130
    line = error_line(result)
    assert "interrupted (Ctrl-C): backup " in line and "re-run convert to finish" in line
    assert (
        "done: create DaemonSet keybuzz/keybuzz-api, create DaemonSet keybuzz/keybuzz-front, "
        "patch Service keybuzz/keybuzz-api, patch Service keybuzz/keybuzz-front" in line
    )
    assert len(fresh.kube.list("Deployment", NS)) == 2 and len(fresh.kube.list("HorizontalPodAutoscaler", NS)) == 2
    monkeypatch.setattr(rollout, "execute", real_execute)
    result, summary = convert_json(fresh)
    assert result.exit_code == 0, result.output
    assert_converted(fresh, before)
    # The Services were switched by the interrupted run; the newest backup still holds their originals.
    saved = {(o["kind"], o["metadata"]["name"]): o for o in newest_backup(state_dir).objects}
    assert saved.keys() == before.keys()
    assert saved[("Service", "keybuzz-api")]["spec"] == before[("Service", "keybuzz-api")]["spec"]
    rolled = cli("rollback", "--latest", "--yes", kubeconfig=fresh.cluster.kubeconfig)
    assert rolled.exit_code == 0, rolled.output
    now = originals(fresh.kube)
    for key, obj in before.items():
        assert comparable(now[key]) == comparable(obj), key


def test_apiserver_stopped_right_after_the_daemonsets_then_a_rerun_converges(
    fresh: Lab, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = fresh.cluster.control_plane
    before = originals(fresh.kube)
    real_apply = kube.Kube.apply

    def apply_then_stop(self: kube.Kube, obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = real_apply(self, obj, **kwargs)
        if obj["kind"] == "DaemonSet" and obj["metadata"]["name"] == "keybuzz-front" and not kwargs.get("dry_run"):
            cp.stop_apiserver()
        return out

    monkeypatch.setattr(kube.Kube, "apply", apply_then_stop)
    try:
        result = cli("convert", "--yes", kubeconfig=fresh.cluster.kubeconfig)
    finally:
        cp.start_apiserver()
    monkeypatch.setattr(kube.Kube, "apply", real_apply)
    assert result.exit_code == 1
    line = error_line(result)
    assert f"cannot reach the Kubernetes API at {cp.server}" in line
    assert "done: create DaemonSet keybuzz/keybuzz-api, create DaemonSet keybuzz/keybuzz-front;" in line
    assert "re-run convert to finish (it converges)" in line
    # Nothing lost: every original is still in the cluster, and in the backup.
    assert originals(fresh.kube).keys() == before.keys()
    saved = {(o["kind"], o["metadata"]["name"]) for o in newest_backup(state_dir).objects}
    assert saved == set(before)
    result, _ = convert_json(fresh)
    assert result.exit_code == 0, result.output
    assert_converted(fresh, before)


def test_a_conflicting_field_manager_is_reported_and_force_conflicts_takes_over(fresh: Lab, state_dir: Path) -> None:
    from keybuzz_fix import config
    from keybuzz_fix.cluster.convert import plan_convert
    from keybuzz_fix.cluster.rollout import execute
    from keybuzz_fix.flows.convert import read_convert_state

    cfg = config.load_config()
    plan = plan_convert(cfg, read_convert_state(fresh.kube, cfg))
    execute(fresh.kube, plan.daemonsets[0], command="test")  # an earlier, interrupted run
    hotfix = copy.deepcopy(plan.daemonsets[0].body)
    assert hotfix is not None
    hotfix["spec"] = {
        "selector": hotfix["spec"]["selector"],
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}},
    }
    client.AppsV1Api(fresh.cluster.api_client).patch_namespaced_daemon_set(
        "keybuzz-api", NS, hotfix, field_manager="ops-hotfix", force=True, _content_type="application/apply-patch+yaml"
    )
    result = cli("convert", "--yes", kubeconfig=fresh.cluster.kubeconfig)
    assert result.exit_code == 1
    line = error_line(result)
    assert "apply of DaemonSet keybuzz-api in namespace keybuzz conflicts with fields owned by another manager" in line
    assert "ops-hotfix" in line and "--force-conflicts" in line
    assert len(fresh.kube.list("Deployment", NS)) == 2  # nothing deleted
    assert fresh.kube.get("Service", "keybuzz-api", NS)["spec"]["type"] == "ClusterIP"  # type: ignore[index]
    result = cli("convert", "--yes", "--force-conflicts", kubeconfig=fresh.cluster.kubeconfig)
    assert result.exit_code == 0, result.output
    ds = fresh.kube.get("DaemonSet", "keybuzz-api", NS)
    assert ds is not None and ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_pods_that_never_get_ready_are_reported_and_nothing_is_deleted(fresh: Lab, state_dir: Path) -> None:
    """keybuzz-api asks for more CPU than any node has: its DaemonSet pods stay Pending."""
    fresh.kube.patch(
        "Deployment",
        "keybuzz-api",
        NS,
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "keybuzz-api", "resources": {"requests": {"cpu": "64"}, "limits": {"cpu": "64"}}}
                        ]
                    }
                }
            }
        },
    )
    result = cli("convert", "--yes", "--timeout", "5", kubeconfig=fresh.cluster.kubeconfig)
    assert result.exit_code == 1
    line = error_line(result)
    assert "not ready after 5s: DaemonSet keybuzz/keybuzz-api: 0/5 pods ready; stuck: keybuzz-api-" in line
    assert "Insufficient cpu" in line and "FailedScheduling" in line
    assert "nothing was deleted" in line and "rollback --backup" in line
    assert "pods not ready" in result.stdout  # the table of stuck pods
    assert len(fresh.kube.list("Deployment", NS)) == 2 and len(fresh.kube.list("HorizontalPodAutoscaler", NS)) == 2
    assert {s["spec"]["type"] for s in fresh.kube.list("Service", NS)} == {"ClusterIP"}


# -- the shipped RBAC ---------------------------------------------------------------------------------


def test_the_shipped_rbac_is_enough_for_convert_and_rollback(fresh: Lab, state_dir: Path) -> None:
    rbac = client.RbacAuthorizationV1Api(fresh.cluster.api_client)
    create = {
        "ClusterRole": rbac.create_cluster_role,
        "ClusterRoleBinding": rbac.create_cluster_role_binding,
        "Role": lambda body: rbac.create_namespaced_role(body["metadata"]["namespace"], body),
        "RoleBinding": lambda body: rbac.create_namespaced_role_binding(body["metadata"]["namespace"], body),
    }
    for obj in yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()):
        try:
            create[obj["kind"]](obj)
        except ApiException as e:
            if e.status != 409:  # kube-system outlives the per-module reset: an earlier run's Role is there
                raise
    operator = fresh.cluster.control_plane.user_kubeconfig("operator", ["keybuzz-fix"])
    before = originals(fresh.kube)
    result = cli("convert", "--yes", kubeconfig=operator)
    assert result.exit_code == 0, result.output
    assert_converted(fresh, before)
    result = cli("rollback", "--latest", "--yes", kubeconfig=operator)
    assert result.exit_code == 0, result.output
    assert originals(fresh.kube).keys() == before.keys()
