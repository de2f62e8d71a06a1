"""`keybuzz-fix ingress` against the real test control plane seeded like the KeyBuzz cluster.

The seed has ingress-nginx as a hostNetwork DaemonSet on the five workers behind a NodePort Service
(31695/32720), and no Ingress. kwok plays the kubelets: the controller pods are Running objects,
not processes; this command only reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.cluster.fixtures import KeybuzzCluster
from tests.lab.hosts import SERVERS_TSV_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
NS = "keybuzz"
SERVERS_HEADER = "\t".join(SERVERS_TSV_COLUMNS) + "\n"


def servers_tsv(path: Path, workers: int = 5, extra: tuple[str, ...] = ()) -> Path:
    rows = [f"prod\t-\tk8s-master-0{i}\t198.18.0.2{i}\t-\troot\t-\tk3s\tmaster\t-\t-\t-\n" for i in (1, 2, 3)]
    rows += [
        f"prod\t-\tk8s-worker-0{i}\t198.18.0.1{i}\t-\troot\t-\tk3s\tworker\t-\t-\t-\n" for i in range(1, workers + 1)
    ]
    rows += [f"prod\t-\t{name}\t198.18.0.9{i}\t-\troot\t-\tk3s\tworker\t-\t-\t-\n" for i, name in enumerate(extra)]
    path.write_text(SERVERS_HEADER + "".join(rows))
    return path


def run(cluster: KeybuzzCluster, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["ingress", "--kubeconfig", str(cluster.kubeconfig), "-o", "json", *args])
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {result.exit_code}): {result.output}")


def audit(state_dir: Path) -> list[dict]:
    path = state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def managers(obj: client.V1Ingress) -> dict[str, str]:
    return {m.manager: m.operation for m in obj.metadata.managed_fields or []}


def test_dry_run_shows_the_diff_and_changes_nothing(
    keybuzz_cluster: KeybuzzCluster, no_routes: client.NetworkingV1Api, state_dir: Path
) -> None:
    code, out = run(keybuzz_cluster, "--dry-run")
    assert code == 0, out
    assert out["dry_run"] is True
    workers = [f["subject"] for f in out["controller"] if f["subject"].startswith("worker ")]
    assert workers == [f"worker k8s-worker-0{i}" for i in range(1, 6)]  # the cluster's workers, no master
    assert [(r["name"], r["status"]) for r in out["routes"]] == [
        ("keybuzz/keybuzz-front-ingress", "create"),
        ("keybuzz/keybuzz-api-ingress", "create"),
    ]
    diff = out["routes"][0]["diff"]
    assert diff.startswith("--- /dev/null")
    assert "+  - host: platform.keybuzz.io" in diff and "+            name: keybuzz-front" in diff
    assert "+    nginx.ingress.kubernetes.io/proxy-body-size: 50m" in diff
    assert no_routes.list_namespaced_ingress(NS).items == []
    assert audit(state_dir) == []


def test_apply_then_reapply_changes_nothing(
    keybuzz_cluster: KeybuzzCluster, no_routes: client.NetworkingV1Api, state_dir: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["ingress", "--kubeconfig", str(keybuzz_cluster.kubeconfig)])
    assert result.exit_code == 2 and "but stdin is not a terminal: pass --yes" in result.output
    assert no_routes.list_namespaced_ingress(NS).items == []

    code, out = run(keybuzz_cluster, str(servers_tsv(tmp_path / "servers.tsv")), "--yes")
    assert code == 0, out
    assert all(f["ok"] for f in out["controller"]), out["controller"]
    assert sum(f["subject"].startswith("worker ") for f in out["controller"]) == 5
    assert [r["status"] for r in out["routes"]] == ["created", "created"]
    front = no_routes.read_namespaced_ingress("keybuzz-front-ingress", NS)
    assert front.spec.ingress_class_name == "nginx"
    rule = front.spec.rules[0]
    assert rule.host == "platform.keybuzz.io"
    assert (rule.http.paths[0].backend.service.name, rule.http.paths[0].backend.service.port.number) == (
        "keybuzz-front",
        80,
    )
    assert front.metadata.annotations["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"] == "5"
    assert managers(front) == {"keybuzz-fix": "Apply"}
    api_route = no_routes.read_namespaced_ingress("keybuzz-api-ingress", NS).spec.rules[0]
    assert (api_route.host, api_route.http.paths[0].backend.service.name) == ("platform-api.keybuzz.io", "keybuzz-api")
    entries = audit(state_dir)
    assert [(e["where"], e["action"], e["outcome"]) for e in entries] == [
        ("Ingress keybuzz/keybuzz-front-ingress", "create", "ok"),
        ("Ingress keybuzz/keybuzz-api-ingress", "create", "ok"),
    ]
    assert entries[0]["before"] == "absent" and entries[0]["after"] == "platform.keybuzz.io → keybuzz-front:80"

    version = front.metadata.resource_version
    code, again = run(keybuzz_cluster, "--yes")
    assert code == 0
    assert [r["status"] for r in again["routes"]] == ["unchanged", "unchanged"]
    assert [r["diff"] for r in again["routes"]] == ["", ""]
    assert no_routes.read_namespaced_ingress("keybuzz-front-ingress", NS).metadata.resource_version == version
    assert len(audit(state_dir)) == 2


def test_tls_and_annotations_of_another_manager_survive(
    keybuzz_cluster: KeybuzzCluster, no_routes: client.NetworkingV1Api, tmp_path: Path
) -> None:
    assert run(keybuzz_cluster, "--yes")[0] == 0
    cert_manager = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "keybuzz-front-ingress",
            "namespace": NS,
            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt-prod"},
        },
        "spec": {"tls": [{"hosts": ["platform.keybuzz.io"], "secretName": "platform-keybuzz-io-tls"}]},
    }
    no_routes.patch_namespaced_ingress(
        "keybuzz-front-ingress",
        NS,
        cert_manager,
        field_manager="cert-manager",
        _content_type="application/apply-patch+yaml",
    )
    code, out = run(keybuzz_cluster, "--yes")
    assert code == 1 and out["routes"][0]["status"] == "unchanged"  # the TLS Secret is not there yet
    assert out["routes"][0]["serving_problems"][0]["subject"] == "Secret keybuzz/platform-keybuzz-io-tls"
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    core.create_namespaced_secret(NS, {"metadata": {"name": "platform-keybuzz-io-tls"}, "type": "Opaque"})

    code, out = run(keybuzz_cluster, "--yes")
    assert code == 0 and out["routes"][0]["status"] == "unchanged"

    config = tmp_path / "config.yaml"
    config.write_text("ingress:\n  annotations:\n    nginx.ingress.kubernetes.io/proxy-body-size: 100m\n")
    code, out = run(keybuzz_cluster, "--config", str(config), "--dry-run")
    assert code == 0 and out["routes"][0]["status"] == "update"
    diff = out["routes"][0]["diff"]
    assert "-    nginx.ingress.kubernetes.io/proxy-body-size: 50m" in diff
    assert "+    nginx.ingress.kubernetes.io/proxy-body-size: 100m" in diff
    changed = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    assert len(changed) == 2  # that one annotation; the TLS block and cert-manager's annotation stay as they are

    code, out = run(keybuzz_cluster, "--config", str(config), "--yes")
    assert code == 0 and out["routes"][0]["status"] == "updated"
    front = no_routes.read_namespaced_ingress("keybuzz-front-ingress", NS)
    assert front.spec.tls[0].secret_name == "platform-keybuzz-io-tls"
    assert front.spec.tls[0].hosts == ["platform.keybuzz.io"]
    assert front.metadata.annotations["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert front.metadata.annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "100m"
    assert managers(front) == {"keybuzz-fix": "Apply", "cert-manager": "Apply"}
    core.delete_namespaced_secret("platform-keybuzz-io-tls", NS)


def test_a_conflict_is_reported_and_force_is_opt_in(
    keybuzz_cluster: KeybuzzCluster, no_routes: client.NetworkingV1Api, state_dir: Path
) -> None:
    helm = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "keybuzz-api-ingress", "namespace": NS},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": "platform-api.keybuzz.io",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "keybuzz-api", "port": {"number": 8080}}},
                            }
                        ]
                    },
                }
            ],
        },
    }
    no_routes.patch_namespaced_ingress(
        "keybuzz-api-ingress", NS, helm, field_manager="helm", _content_type="application/apply-patch+yaml"
    )

    code, out = run(keybuzz_cluster, "--yes")
    assert code == 1
    front, api = out["routes"]
    assert front["status"] == "created"
    assert api["status"] == "conflict"
    assert "conflicts with fields owned by another manager" in api["error"] and "--force-conflicts" in api["error"]
    assert "helm" in api["error"]
    port = no_routes.read_namespaced_ingress("keybuzz-api-ingress", NS).spec.rules[0].http.paths[0].backend.service.port
    assert port.number == 8080  # left as found

    code, out = run(keybuzz_cluster, "--yes", "--force-conflicts")
    assert code == 0, out
    assert out["routes"][1]["status"] == "updated"
    port = no_routes.read_namespaced_ingress("keybuzz-api-ingress", NS).spec.rules[0].http.paths[0].backend.service.port
    assert port.number == 80
    last = audit(state_dir)[-1]
    assert (last["where"], last["outcome"], last["force_conflicts"]) == (
        "Ingress keybuzz/keybuzz-api-ingress",
        "ok",
        True,
    )
    assert last["before"] == "platform-api.keybuzz.io → keybuzz-api:8080"


def test_a_broken_ingress_nginx_is_reported_never_changed(
    keybuzz_cluster: KeybuzzCluster, no_routes: client.NetworkingV1Api, tmp_path: Path
) -> None:
    apps = client.AppsV1Api(keybuzz_cluster.api_client)
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    apps.patch_namespaced_daemon_set(
        "ingress-nginx-controller",
        "ingress-nginx",
        {"spec": {"template": {"spec": {"hostNetwork": False}}}},
        field_manager="ops",
    )
    core.patch_namespaced_service(
        "ingress-nginx-controller",
        "ingress-nginx",
        {"spec": {"ports": [{"port": 80, "nodePort": 31000}]}},
        field_manager="ops",
    )
    try:
        servers = servers_tsv(tmp_path / "servers.tsv", extra=("k8s-worker-06",))
        code, out = run(keybuzz_cluster, str(servers), "--dry-run")
        assert code == 1
        bad = [f"{f['subject']}: {f['detail']}" for f in out["controller"] if not f["ok"]]
        assert (
            "DaemonSet ingress-nginx/ingress-nginx-controller: hostNetwork is off in the pod template: the "
            "controller does not listen on the workers' own ports"
        ) in bad
        assert "Service ingress-nginx/ingress-nginx-controller: http port 80 has nodePort 31000, expected 31695" in bad
        assert "worker k8s-worker-06: no Node of that name or address in the cluster" in bad
        assert [r["status"] for r in out["routes"]] == ["create", "create"]  # the routes are planned all the same

        result = CliRunner().invoke(
            app, ["ingress", str(servers), "--kubeconfig", str(keybuzz_cluster.kubeconfig), "--dry-run"]
        )
        assert result.exit_code == 1
        text = " ".join(result.output.split())
        assert "✗ Service ingress-nginx/ingress-nginx-controller: http port 80 has nodePort 31000" in text
        assert "mismatch(es), left as found" in text

        ds = apps.read_namespaced_daemon_set("ingress-nginx-controller", "ingress-nginx")
        assert not ds.spec.template.spec.host_network  # never changed
        svc = core.read_namespaced_service("ingress-nginx-controller", "ingress-nginx")
        assert svc.spec.ports[0].node_port == 31000
    finally:
        apps.patch_namespaced_daemon_set(
            "ingress-nginx-controller",
            "ingress-nginx",
            {"spec": {"template": {"spec": {"hostNetwork": True}}}},
            field_manager="ops",
        )
        core.patch_namespaced_service(
            "ingress-nginx-controller",
            "ingress-nginx",
            {"spec": {"ports": [{"port": 80, "nodePort": 31695}]}},
            field_manager="ops",
        )
