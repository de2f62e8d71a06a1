"""What the operator reads before the prompt, at a real terminal, against the test control plane.

``convert`` runs in a pseudo-terminal (pexpect) with the seeded KeyBuzz cluster; the operator
answers no, so the cluster is left as seeded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pexpect
import pytest
from kubernetes import client

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

from tests.terminal import at_terminal, terminal_env

pytestmark = pytest.mark.integration


def answered(args: list[str], state: Path, answer: str, *, home: Path | None = None) -> tuple[str, int | None]:
    """Run ``keybuzz-fix ARGS`` at a terminal, give ``answer`` to its question; return what came before it, the exit."""
    env = terminal_env(
        drop=("KUBECONFIG",), KEYBUZZ_FIX_STATE_DIR=str(state), **({"HOME": str(home)} if home is not None else {})
    )
    child = at_terminal(args, env, columns=250, timeout=150)
    try:
        child.expect(r"\[y/N\]")
        before = child.before
        child.sendline(answer)
        child.expect(pexpect.EOF)
        child.close()
    finally:
        child.terminate(force=True)
    return before, child.exitstatus


def test_convert_prompt_names_the_cluster_and_counts_deletions(keybuzz_cluster: KeybuzzCluster, tmp_path: Path) -> None:
    config = keybuzz_cluster.kubeconfig
    server = re.search(r"server: (\S+)", config.read_text()).group(1)  # type: ignore[union-attr]
    before, status = answered(["convert", "--kubeconfig", str(config)], tmp_path / "state", "n", home=tmp_path)
    text = re.sub(r"\s+", " ", before)
    assert f"on {server} (kubeconfig {config}, context " in text
    assert "Apply 8 change(s) in namespace keybuzz, deleting 2 HorizontalPodAutoscaler(s), 2 Deployment(s), on " in text
    assert "(dry run)" not in text and "nothing changed" not in text  # a real run's plan
    assert "3000 → 3000" not in text and "8080 → 8080" not in text  # no non-change shown as a change
    assert status == 4
    apps = client.AppsV1Api(keybuzz_cluster.api_client)
    assert {d.metadata.name for d in apps.list_namespaced_deployment("keybuzz").items} >= {
        "keybuzz-api",
        "keybuzz-front",
    }


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's state folder: the backup the readiness test's convert writes is the one rollback restores."""
    return tmp_path_factory.mktemp("prompt-state")


def test_the_readiness_wait_shows_pods_ready_as_they_come(keybuzz_cluster: KeybuzzCluster, state: Path) -> None:
    # Runs after the prompt tests: it converts the seeded cluster (the last test rolls it back).
    from typer.testing import CliRunner

    from keybuzz_fix.cli import app

    env = {"KEYBUZZ_FIX_STATE_DIR": str(state)}
    result = CliRunner().invoke(
        app, ["convert", "--yes", "--timeout", "120", "--kubeconfig", str(keybuzz_cluster.kubeconfig)], env=env
    )
    assert result.exit_code == 0, result.output
    shown = re.findall(r"pods ready: keybuzz-api (\d+)/(\d+), keybuzz-front (\d+)/(\d+)", result.output)
    assert shown, result.output
    counts = [tuple(int(x) for x in line) for line in shown]
    assert len(set(counts)) == len(counts)  # a line only when a count changed
    workers = len(keybuzz_cluster.worker_names)
    assert counts[-1] == (workers, workers, workers, workers)  # the last line: every pod ready
    assert [c[0] for c in counts] == sorted(c[0] for c in counts)  # ready pods only go up


def test_rollback_asks_on_one_page_naming_the_cluster_and_what_it_deletes(
    keybuzz_cluster: KeybuzzCluster, state: Path
) -> None:
    config = keybuzz_cluster.kubeconfig
    server = re.search(r"server: (\S+)", config.read_text()).group(1)  # type: ignore[union-attr]
    before, status = answered(["rollback", "--latest", "--timeout", "120", "--kubeconfig", str(config)], state, "y")
    text = re.sub(r"\s+", " ", before)
    assert f"in namespace keybuzz, deleting 2 DaemonSet(s), on {server} (kubeconfig {config}, context " in text
    assert "+++" not in before and "-v shows each object's diff" in text  # each change on one line
    assert len([line for line in before.splitlines() if line.strip()]) <= 20, before
    assert status == 0  # restored: the Deployments are back for what runs next
    apps = client.AppsV1Api(keybuzz_cluster.api_client)
    assert {d.metadata.name for d in apps.list_namespaced_deployment("keybuzz").items} >= {
        "keybuzz-api",
        "keybuzz-front",
    }
