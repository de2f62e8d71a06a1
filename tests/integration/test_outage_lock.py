"""One remediation at a time per cluster: the Lease and the local lock, on the test control plane."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from keybuzz_fix.cluster.connect import from_kubeconfig
from keybuzz_fix.cluster.lock import LEASE, lease_object

if TYPE_CHECKING:
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
            "nothing changed; wait for it to end"
        )
        assert _deployments(keybuzz_cluster) == before >= {"keybuzz-api", "keybuzz-front"}
        assert not (state_dir / "backups").exists() or not list((state_dir / "backups").iterdir())
        # The holder's Lease is still there, untouched.
        assert kube.get("Lease", LEASE, NS)["metadata"]["uid"] == held["metadata"]["uid"]
    finally:
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
        "end\n"
    )
    assert kube.get("Lease", LEASE, NS) is None  # stopped before the API server was asked for the Lease


def test_a_run_releases_the_lease_when_it_ends(keybuzz_cluster: KeybuzzCluster, state_dir: Path) -> None:
    # However the run ends (here: most likely stuck, waiting 0.5 s for the pods), the Lease is released.
    kube = from_kubeconfig(keybuzz_cluster.kubeconfig)
    result = CliRunner().invoke(
        app, ["convert", "--yes", "--kubeconfig", str(keybuzz_cluster.kubeconfig), "--timeout", "0.5"]
    )
    assert result.exit_code in (0, 1), result.output  # converted, or stuck waiting 0.5 s for the pods
    assert "backup" in result.output  # it changed the cluster, so it held the lock
    assert kube.get("Lease", LEASE, NS) is None
