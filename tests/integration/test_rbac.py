"""The shipped manifests/rbac.yaml on the real control plane: enough for ingress, validate and diagnose.

A user whose client certificate puts it in the group keybuzz-fix, and nothing else, runs the
commands with the RoleBindings of manifests/rbac.yaml applied; a user outside that group gets one
line naming the permission it lacks. (convert and rollback with the same manifest are proven in
test_convert.py.) kwok plays the kubelets: pods are objects, the URL checks go to a closed loopback
port, and diagnose reaches no node (there is no known_hosts): only the API side is under test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from tests.cluster.fixtures import ROUTES, KeybuzzCluster
from tests.lab.hosts import SERVERS_TSV_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
NS = "keybuzz"
GROUP = "keybuzz-fix"
RBAC = Path(__file__).resolve().parent.parent.parent / "manifests" / "rbac.yaml"
runner = CliRunner()


def _rbac_objects() -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(RBAC.read_text()) if o]


@pytest.fixture
def shipped_rbac(keybuzz_cluster: KeybuzzCluster) -> Iterator[list[dict[str, Any]]]:
    """manifests/rbac.yaml applied as it ships; removed afterwards (kube-system outlives the resets)."""
    api = client.RbacAuthorizationV1Api(keybuzz_cluster.api_client)
    objects = _rbac_objects()
    calls = {
        "ClusterRole": (api.create_cluster_role, api.replace_cluster_role, api.delete_cluster_role),
        "ClusterRoleBinding": (
            api.create_cluster_role_binding,
            api.replace_cluster_role_binding,
            api.delete_cluster_role_binding,
        ),
        "Role": (api.create_namespaced_role, api.replace_namespaced_role, api.delete_namespaced_role),
        "RoleBinding": (
            api.create_namespaced_role_binding,
            api.replace_namespaced_role_binding,
            api.delete_namespaced_role_binding,
        ),
    }

    def where(obj: dict[str, Any]) -> list[str]:
        ns = obj["metadata"].get("namespace")
        return [ns] if ns else []

    for obj in objects:
        create, replace, _ = calls[obj["kind"]]
        try:
            create(*where(obj), obj)
        except ApiException as e:
            if e.status != 409:
                raise
            replace(obj["metadata"]["name"], *where(obj), obj)
    try:
        yield objects
    finally:
        for obj in reversed(objects):
            try:
                calls[obj["kind"]][2](obj["metadata"]["name"], *where(obj))
            except ApiException as e:
                if e.status != 404:
                    raise


def servers_tsv(cluster: KeybuzzCluster, path: Path) -> Path:
    rows = [
        f"prod\t-\t{name}\t{ip}\t-\troot\t-\tk3s\t{role}\t-\t-\t-\n"
        for role, nodes in (("master", cluster.masters), ("worker", cluster.workers))
        for name, ip in nodes
    ]
    path.write_text("\t".join(SERVERS_TSV_COLUMNS) + "\n" + "".join(rows))
    return path


def loopback_config(path: Path) -> Path:
    path.write_text("validate:\n  urls: [http://127.0.0.1:1/]\n")  # a closed port: the URL check fails at once
    return path


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args), env={"COLUMNS": "400"})  # a report line is one line


def error_lines(result: Result) -> list[str]:
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_the_shipped_rbac_is_all_ingress_validate_and_diagnose_need(
    keybuzz_cluster: KeybuzzCluster,
    shipped_rbac: list[dict[str, Any]],
    no_routes: client.NetworkingV1Api,
    tmp_path: Path,
) -> None:
    operator = str(keybuzz_cluster.control_plane.user_kubeconfig("rbac-operator", [GROUP]))
    servers = str(servers_tsv(keybuzz_cluster, tmp_path / "servers.tsv"))

    dry = cli("ingress", servers, "--kubeconfig", operator, "--dry-run", "-o", "json")
    assert dry.exit_code == 0, dry.output
    result = cli("ingress", servers, "--kubeconfig", operator, "--yes", "-o", "json")
    assert result.exit_code == 0, result.output
    routes = {r["name"]: r["status"] for r in json.loads(result.stdout)["routes"]}
    assert routes == {f"{NS}/{r}": "created" for r in ROUTES}
    assert {i.metadata.name for i in no_routes.list_namespaced_ingress(NS).items} == set(ROUTES)

    scored = cli(
        "validate",
        servers,
        "--kubeconfig",
        operator,
        "--config",
        str(loopback_config(tmp_path / "c.yaml")),
        "-o",
        "json",
    )
    card = json.loads(scored.stdout)
    details = {c["name"]: c["detail"] for c in card["checks"]}
    assert not [d for d in details.values() if "forbidden" in d.lower()], details
    ingress_nginx, routes = card["checks"][3], card["checks"][5]  # read in ingress-nginx, and in keybuzz
    assert ingress_nginx["status"] == routes["status"] == "pass", details
    assert scored.exit_code == 1  # still Deployments, and the URL check fails: a low score, not an error

    found = cli("diagnose", servers, "--kubeconfig", operator, "--known-hosts", str(tmp_path / "none"), "-o", "json")
    cluster = json.loads(found.stdout)["cluster"]
    assert cluster["read"] is True and cluster["error"] is None, cluster
    assert cluster["objects"] is True  # CoreDNS's endpoints and pods, the NetworkPolicies: read through the Roles


def test_the_shipped_rbac_is_read_only_outside_keybuzz() -> None:
    for obj in _rbac_objects():
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            writes = set(rule["verbs"]) - {"get", "list", "watch"}
            if obj["kind"] == "ClusterRole" or obj["metadata"].get("namespace") != NS:
                assert not writes, (obj["metadata"], rule)


def test_without_it_each_command_names_the_permission_it_lacks(
    keybuzz_cluster: KeybuzzCluster, no_routes: client.NetworkingV1Api, tmp_path: Path
) -> None:
    outsider = str(keybuzz_cluster.control_plane.user_kubeconfig("rbac-outsider", ["not-keybuzz-fix"]))
    servers = str(servers_tsv(keybuzz_cluster, tmp_path / "servers.tsv"))

    result = cli("ingress", servers, "--kubeconfig", outsider, "--yes")
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert line.startswith("keybuzz-fix: error: forbidden: cannot get daemonsets in namespace ingress-nginx "), line
    assert "rbac.yaml" in line
    assert no_routes.list_namespaced_ingress(NS).items == []

    result = cli("validate", servers, "--kubeconfig", outsider, "--config", str(loopback_config(tmp_path / "c.yaml")))
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert line.startswith(
        "keybuzz-fix: error: forbidden: validate cannot read what it scores: missing permission(s) "
    ), line
    for permission in (
        "list daemonsets.apps in namespace keybuzz",
        "list ingresses.networking.k8s.io in namespace keybuzz",
        "get daemonsets.apps in namespace ingress-nginx",
        "list pods in namespace keybuzz",
    ):
        assert permission in line
    assert result.stdout == ""  # no scorecard blaming the cluster

    result = cli("diagnose", servers, "--kubeconfig", outsider, "--known-hosts", str(tmp_path / "none"))
    assert result.exit_code == 1
    api_lines = [line for line in result.stdout.splitlines() if "forbidden" in line]
    assert len(api_lines) == 1 and "cannot list nodes" in api_lines[0], result.stdout
