"""One remediation at a time per cluster: the Lease and the local lock, on the test control plane."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client
from typer.testing import CliRunner, Result

from keybuzz_fix import storage
from keybuzz_fix.cli import app
from keybuzz_fix.cluster.connect import from_kubeconfig
from keybuzz_fix.cluster.lock import DURATION, LEASE, lease_object

if TYPE_CHECKING:
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.cluster.objects import Obj
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = pytest.mark.integration
NS = "keybuzz"


def _deployments(cluster: KeybuzzCluster) -> set[str]:
    return {d.metadata.name for d in client.AppsV1Api(cluster.api_client).list_namespaced_deployment(NS).items}


def test_a_second_run_names_the_lease_holder_and_changes_nothing(
    keybuzz_cluster: KeybuzzCluster, state_dir: Path
) -> None:
    kube = from_kubeconfig(keybuzz_cluster.kubeconfig)
    now = dt.datetime.now(dt.UTC)
    held = kube.create(lease_object(NS, "alice@ops-laptop pid 4242", "all", now))
    try:
        before = _deployments(keybuzz_cluster)
        result = CliRunner().invoke(app, ["convert", "--yes", "--kubeconfig", str(keybuzz_cluster.kubeconfig)])
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.splitlines()
        assert line == (
            f"keybuzz-fix: error: another keybuzz-fix run is changing namespace {NS} of {kube.endpoint.server}: "
            f"alice@ops-laptop pid 4242 since {held['spec']['acquireTime']} (all) (Lease {NS}/{LEASE}); "
            "nothing changed; wait for it to end, or, if that run is gone, delete its Lease "
            f"(kubectl -n {NS} delete lease {LEASE}) or wait until it expires at "
            f"{(now + dt.timedelta(seconds=DURATION)).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
        )
        assert _deployments(keybuzz_cluster) == before >= {"keybuzz-api", "keybuzz-front"}
        assert not (state_dir / "backups").exists() or not list((state_dir / "backups").iterdir())
        # The holder's Lease is still there, untouched.
        assert kube.get("Lease", LEASE, NS)["metadata"]["uid"] == held["metadata"]["uid"]
    finally:
        kube.delete("Lease", LEASE, NS)


def test_a_plan_that_fails_while_another_run_changes_the_cluster_names_that_run(
    keybuzz_cluster: KeybuzzCluster, state_dir: Path, tmp_path: Path
) -> None:
    """Another run's changes, made between this run's reads and its dry run, are a likely cause: it is named."""
    kube = from_kubeconfig(keybuzz_cluster.kubeconfig)
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    squatter = {  # what another run (or team) made meanwhile: a Service on the nodePort convert wants
        "metadata": {"name": "kbf-squatter", "namespace": "default"},
        "spec": {"type": "NodePort", "selector": {"app": "none"}, "ports": [{"port": 80, "nodePort": 30080}]},
    }
    core.create_namespaced_service("default", squatter)
    convert = ["convert", "--dry-run", "--kubeconfig", str(keybuzz_cluster.kubeconfig)]
    held = None
    try:
        alone = CliRunner().invoke(app, convert)
        assert alone.exit_code != 0 and "30080" in alone.stderr, alone.output
        assert "another keybuzz-fix run" not in alone.stderr
        held = kube.create(lease_object(NS, "alice@ops-laptop pid 4242", "all", dt.datetime.now(dt.UTC)))
        result = CliRunner().invoke(app, convert)
        assert result.exit_code == alone.exit_code, result.output
        (line,) = result.stderr.splitlines()
        assert line == alone.stderr.strip() + (
            "; another keybuzz-fix run is changing this cluster right now: "
            f"alice@ops-laptop pid 4242 since {held['spec']['acquireTime']} (all); re-run once it ends"
        )
    finally:
        core.delete_namespaced_service("kbf-squatter", "default")
        if held is not None:
            kube.delete("Lease", LEASE, NS)


def test_a_second_run_on_this_machine_stops_on_the_local_lock(keybuzz_cluster: KeybuzzCluster, state_dir: Path) -> None:
    kube = from_kubeconfig(keybuzz_cluster.kubeconfig)
    state_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{kube.endpoint.server} {NS}".encode()).hexdigest()[:16]
    fd = os.open(state_dir / f"lock-{key}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, b"bob@ops-laptop pid 77 since 2026-01-01T00:00:00.000000Z (convert)", 0)
        result = CliRunner().invoke(app, ["convert", "--yes", "--kubeconfig", str(keybuzz_cluster.kubeconfig)])
    finally:
        os.close(fd)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"keybuzz-fix: error: another keybuzz-fix run on this machine is changing {kube.endpoint.server} namespace "
        f"{NS}: bob@ops-laptop pid 77 since 2026-01-01T00:00:00.000000Z (convert); nothing changed; wait for it to "
        "end, or stop it (kill 77) if it hangs: its lock ends with its process\n"
    )
    assert kube.get("Lease", LEASE, NS) is None  # stopped before the API server was asked for the Lease


def _alice(kube: Kube) -> Obj:
    """A Lease held by a run on another machine, now."""
    return kube.create(lease_object(NS, "alice@ops-laptop pid 4242", "all", dt.datetime.now(dt.UTC)))


def _refused(result: Result, kube: Kube, held: Obj) -> None:
    """The run stopped on the Lease: exit 1, one line naming alice's run, and the Lease is still hers."""
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"keybuzz-fix: error: another keybuzz-fix run is changing namespace {NS} of {kube.endpoint.server}: "
        f"alice@ops-laptop pid 4242 since {held['spec']['acquireTime']} (all) (Lease {NS}/{LEASE}); nothing changed; "
    ), line
    assert kube.get("Lease", LEASE, NS)["metadata"]["uid"] == held["metadata"]["uid"]


def test_ingress_takes_the_lock_after_its_confirmation(
    keybuzz_cluster: KeybuzzCluster, state_dir: Path, no_routes: client.NetworkingV1Api
) -> None:
    kube = from_kubeconfig(keybuzz_cluster.kubeconfig)
    held = _alice(kube)
    try:
        result = CliRunner().invoke(app, ["ingress", "--yes", "--kubeconfig", str(keybuzz_cluster.kubeconfig)])
        _refused(result, kube, held)
        assert no_routes.list_namespaced_ingress(NS).items == []
        assert not (state_dir / "audit.jsonl").exists()
    finally:
        kube.delete("Lease", LEASE, NS)
    again = CliRunner().invoke(app, ["ingress", "--yes", "--kubeconfig", str(keybuzz_cluster.kubeconfig)])
    assert again.exit_code == 0, again.output  # with the Lease gone, the same run applies the routes
    assert len(no_routes.list_namespaced_ingress(NS).items) == 2
    assert kube.get("Lease", LEASE, NS) is None


def test_rollback_takes_the_lock_after_its_confirmation(keybuzz_cluster: KeybuzzCluster, state_dir: Path) -> None:
    kube = from_kubeconfig(keybuzz_cluster.kubeconfig)
    cluster = ["--kubeconfig", str(keybuzz_cluster.kubeconfig)]
    converted = CliRunner().invoke(app, ["convert", "--yes", "--timeout", "90", *cluster])
    assert converted.exit_code == 0, converted.output
    audited = (state_dir / "audit.jsonl").read_text()
    held = _alice(kube)
    try:
        result = CliRunner().invoke(app, ["rollback", "--latest", "--yes", "--timeout", "90", *cluster])
        _refused(result, kube, held)
        assert _deployments(keybuzz_cluster) == set()  # nothing restored
        assert [p.name.split("-")[0] for p in (state_dir / "backups").iterdir()] == ["convert"]  # no rollback backup
        assert (state_dir / "audit.jsonl").read_text() == audited
    finally:
        kube.delete("Lease", LEASE, NS)
    restored = CliRunner().invoke(app, ["rollback", "--latest", "--yes", "--timeout", "90", *cluster])
    assert restored.exit_code == 0, restored.output
    assert _deployments(keybuzz_cluster) == {"keybuzz-api", "keybuzz-front"}


def test_a_lease_of_this_user_is_taken_over_only_once_its_process_is_gone(
    keybuzz_cluster: KeybuzzCluster, state_dir: Path, no_routes: client.NetworkingV1Api
) -> None:
    # Another run of this user on this machine, with another state folder: its lock file is not ours.
    kube = from_kubeconfig(keybuzz_cluster.kubeconfig)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        held = kube.create(lease_object(NS, f"{storage.operator()} pid {sleeper.pid}", "ufw", dt.datetime.now(dt.UTC)))
        ingress = ["ingress", "--yes", "--kubeconfig", str(keybuzz_cluster.kubeconfig)]
        result = CliRunner().invoke(app, ingress)
        assert result.exit_code == 1 and f"pid {sleeper.pid} since " in result.stderr, result.output
        assert no_routes.list_namespaced_ingress(NS).items == []
        machine = CliRunner().invoke(app, [*ingress, "-o", "json"])  # -o json: one document, saying why
        stopped = json.loads(machine.stdout)
        assert (machine.exit_code, stopped["exit_code"]) == (1, 1) and f"pid {sleeper.pid} since " in stopped["error"]
        assert [r["status"] for r in stopped["routes"]] == ["create", "create"]
        assert kube.get("Lease", LEASE, NS)["metadata"]["uid"] == held["metadata"]["uid"]
        sleeper.kill()
        sleeper.wait(10)
        # Its process is gone (the API server went away before it could delete its Lease): taken over.
        result = CliRunner().invoke(app, ingress)
        assert result.exit_code == 0, result.output
        assert len(no_routes.list_namespaced_ingress(NS).items) == 2
        assert kube.get("Lease", LEASE, NS) is None
    finally:
        sleeper.kill()
        sleeper.wait(10)
        kube.delete("Lease", LEASE, NS)


def test_a_run_releases_the_lease_when_it_ends(keybuzz_cluster: KeybuzzCluster, state_dir: Path) -> None:
    # However the run ends (here: most likely stuck, waiting 0.5 s for the pods), the Lease is released.
    kube = from_kubeconfig(keybuzz_cluster.kubeconfig)
    result = CliRunner().invoke(
        app, ["convert", "--yes", "--kubeconfig", str(keybuzz_cluster.kubeconfig), "--timeout", "0.5"]
    )
    assert result.exit_code in (0, 1), result.output  # converted, or stuck waiting 0.5 s for the pods
    assert "backup" in result.output  # it changed the cluster, so it held the lock
    assert kube.get("Lease", LEASE, NS) is None
