"""What convert says of env values that go through a ClusterIP Service follows what diagnose saw.

Against the test control plane: the seeded keybuzz-front reaches keybuzz-api through its ClusterIP
Service name. ``diagnose`` over SSH records what it saw of the overlay (``overlay.json`` in the
state folder, see tests/integration/test_diagnose_lab.py); here that record is written as it does,
for the cluster's Nodes, and ``convert --dry-run`` is read as the operator reads it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client
from typer.testing import CliRunner

from keybuzz_fix import storage
from keybuzz_fix.cli import app
from keybuzz_fix.cluster.observed import OVERLAY_RECORD

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]


def plan(cluster: KeybuzzCluster) -> dict:
    result = CliRunner().invoke(app, ["convert", "--dry-run", "-o", "json", "--kubeconfig", str(cluster.kubeconfig)])
    assert result.exit_code in (0, 2), result.output
    return json.loads(result.stdout)


def about_env(lines: list[str]) -> list[str]:
    return [line for line in lines if "API_INTERNAL_URL" in line]


def record(cluster: KeybuzzCluster, healthy: bool | None, *, age: dt.timedelta = dt.timedelta(0), **extra: str) -> None:
    nodes = client.CoreV1Api(cluster.api_client).list_node().items
    storage.write_record(
        OVERLAY_RECORD,
        {
            "time": (dt.datetime.now(dt.UTC) - age).isoformat(timespec="seconds"),
            "healthy": healthy,
            "cause": "ufw-blocks-vxlan" if healthy is False else "",
            "nodes": {n.metadata.name: "198.18.1.1" for n in nodes},
            **extra,
        },
    )


def test_the_clusterip_warning_follows_what_diagnose_saw(keybuzz_cluster: KeybuzzCluster, state_dir: Path) -> None:
    (never,) = about_env(plan(keybuzz_cluster)["warnings"])
    assert "(not checked; keybuzz-fix diagnose says; this workaround does not mend it)" in never

    record(keybuzz_cluster, False)
    (broken,) = about_env(plan(keybuzz_cluster)["warnings"])
    assert (
        "those calls fail while the overlay between the nodes is broken — diagnose found the overlay broken" in broken
    )
    assert "(ufw-blocks-vxlan)" in broken

    record(keybuzz_cluster, True)
    healthy = plan(keybuzz_cluster)
    assert about_env(healthy["warnings"]) == []  # seen healthy: a note, not a warning
    (note,) = about_env(healthy["notes"])
    assert "diagnose found the overlay healthy at" in note and note.endswith("so those calls go through")

    record(keybuzz_cluster, True, age=dt.timedelta(hours=2))  # too old to count: as never diagnosed
    assert about_env(plan(keybuzz_cluster)["warnings"]) == [never]
    assert (state_dir / "overlay.json").exists()
