"""Backups know their cluster: rollback refuses a backup taken from another one.

Two real control planes: the seeded one (A) and a second, empty one (B). convert on A writes a
backup recording A's API server and identity (the uid of its kube-system namespace); rollback
pointed at B refuses it, even as a dry run, unless --force-cluster; pointed at A under another
address (localhost instead of 127.0.0.1) it is accepted: the identity counts, not the address. A
backup an older version wrote (no identity) is accepted with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from kubernetes import client, config
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from tests.cluster.controlplane import ControlPlane, build_binaries

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = pytest.mark.integration
NS = "keybuzz"


@pytest.fixture(scope="module")
def other() -> Iterator[ControlPlane]:
    """A second, empty cluster, with a keybuzz namespace."""
    bin_dir = Path(os.environ["KEYBUZZ_FIX_BIN_DIR"]) if "KEYBUZZ_FIX_BIN_DIR" in os.environ else build_binaries()
    with ControlPlane(bin_dir) as cp:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        try:
            client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
        finally:
            api.close()
        yield cp


def cli(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    assert "Traceback" not in result.output
    return result


def uid(kubeconfig: Path) -> str:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        return str(client.CoreV1Api(api).read_namespace("kube-system").metadata.uid)
    finally:
        api.close()


def test_rollback_refuses_the_backup_of_another_cluster(
    keybuzz_cluster: KeybuzzCluster, other: ControlPlane, state_dir: Path, tmp_path: Path
) -> None:
    here, there = keybuzz_cluster.kubeconfig, other.kubeconfig
    converted = cli("convert", "--yes", "--kubeconfig", str(here))
    assert converted.exit_code == 0, converted.output
    (backup,) = (state_dir / "backups").glob("convert-*.yaml")
    header = backup.read_text().splitlines()
    assert f"# cluster: {uid(here)}" in header and f"# server: {keybuzz_cluster.control_plane.server}" in header

    for extra in (["--dry-run"], ["--yes"]):
        refused = cli("rollback", "--latest", "--kubeconfig", str(there), *extra)
        assert refused.exit_code == 1, refused.output
        (line,) = [x for x in refused.stderr.splitlines() if x.strip()]
        assert line == (
            f"keybuzz-fix: error: {backup} was taken from another cluster (kube-system uid {uid(here)}, API server "
            f"{keybuzz_cluster.control_plane.server}); this one is {uid(there)} at {other.server}: refusing to "
            "restore it here; pass --force-cluster to do it anyway"
        )
    api = config.new_client_from_config(config_file=str(there))
    try:
        assert client.AppsV1Api(api).list_namespaced_deployment(NS).items == []  # nothing went there
    finally:
        api.close()

    forced = cli("rollback", "--latest", "--kubeconfig", str(there), "--dry-run", "--force-cluster")
    assert forced.exit_code == 0, forced.output
    assert "restoring it anyway (--force-cluster)" in forced.output

    # the same cluster under another address: accepted, no warning
    localhost = yaml.safe_load(here.read_text())
    localhost["clusters"][0]["cluster"]["server"] = keybuzz_cluster.control_plane.server.replace(
        "127.0.0.1", "localhost"
    )
    elsewhere = tmp_path / "localhost.kubeconfig"
    elsewhere.write_text(yaml.safe_dump(localhost))
    restored = cli("rollback", "--latest", "--kubeconfig", str(elsewhere), "--yes")
    assert restored.exit_code == 0, restored.output
    assert "warning" not in restored.output and "another cluster" not in restored.output

    old = tmp_path / "convert-old.yaml"
    old.write_text("\n".join(line for line in header if not line.startswith("# cluster:")) + "\n")
    accepted = cli("rollback", "--backup", str(old), "--kubeconfig", str(here), "--dry-run")
    assert accepted.exit_code == 0, accepted.output
    assert "records no cluster identity (an older keybuzz-fix wrote it)" in accepted.output
