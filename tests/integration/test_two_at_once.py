"""Two runs at once against the same test control plane: exactly one changes the cluster.

Two ``convert`` processes start at the same moment in pseudo-terminals (pexpect) and both plan
against the seeded cluster; both wait at their prompt. The first is answered yes and holds the lock
(it printed its backup); only then is the second answered yes: it must stop, naming the first (its
pid, since when, its command), with nothing changed — no object, no backup, no audit entry — and
``rollback --latest`` picks the first one's backup. On one machine with one state folder the local
lock stops it; with two state folders (two machines, as far as the lock files know) the Lease does.

The tests run in order: each race converts the cluster and its rollback puts it back.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pexpect
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from keybuzz_fix.cluster.connect import from_kubeconfig
from keybuzz_fix.cluster.lock import LEASE

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

from tests.terminal import at_terminal, terminal_env

pytestmark = pytest.mark.integration
NS = "keybuzz"
SINCE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


def spawn(cluster: KeybuzzCluster, state: Path, home: Path, *args: str) -> pexpect.spawn:
    env = terminal_env(drop=("KUBECONFIG",), HOME=str(home), KEYBUZZ_FIX_STATE_DIR=str(state))
    return at_terminal([*args, "--kubeconfig", str(cluster.kubeconfig)], env)


def finish(child: pexpect.spawn) -> tuple[int, str]:
    """Read a child to its end; return its exit status and its output, on one line per line."""
    child.expect(pexpect.EOF)
    out = child.before
    child.close()
    return int(child.exitstatus if child.exitstatus is not None else -1), out


def audit(state: Path) -> list[dict]:
    path = state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def backups(state: Path) -> list[Path]:
    folder = state / "backups"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def workloads(cluster: KeybuzzCluster) -> tuple[set[str], set[str]]:
    apps = client.AppsV1Api(cluster.api_client)
    return (
        {d.metadata.name for d in apps.list_namespaced_deployment(NS).items},
        {d.metadata.name for d in apps.list_namespaced_daemon_set(NS).items},
    )


@pytest.fixture
def rolled_back(keybuzz_cluster: KeybuzzCluster) -> Iterator[KeybuzzCluster]:
    """The seeded cluster before the test, and no stray Lease after it."""
    assert workloads(keybuzz_cluster) == ({"keybuzz-api", "keybuzz-front"}, set())
    yield keybuzz_cluster
    from_kubeconfig(keybuzz_cluster.kubeconfig).delete("Lease", LEASE, NS)


@pytest.mark.parametrize("machines", ["one state folder", "two state folders"])
def test_two_converts_at_once_one_changes_the_other_names_it(
    rolled_back: KeybuzzCluster, tmp_path: Path, machines: str
) -> None:
    cluster = rolled_back
    first_state = tmp_path / "state"
    second_state = first_state if machines == "one state folder" else tmp_path / "state-2"
    first = spawn(cluster, first_state, tmp_path, "convert", "--timeout", "90")
    second = spawn(cluster, second_state, tmp_path, "convert", "--timeout", "90")
    try:
        # Both plan the same changes against the same cluster and wait at their prompt.
        for child in (first, second):
            child.expect(r"\[y/N\]")
            assert "Apply 8 change(s) in namespace keybuzz" in re.sub(r"\s+", " ", child.before)
        first.sendline("y")
        first.expect(r"backup: (\S+)")  # it holds the lock: the backup comes after it
        winner_backup = Path(first.match.group(1))
        second.sendline("y")
        code, out = finish(second)
        won, won_out = finish(first)
    finally:
        first.terminate(force=True)
        second.terminate(force=True)
    assert won == 0, won_out
    assert code == 1, out
    (line,) = [x for x in out.splitlines() if x.startswith("keybuzz-fix: error:")]
    server = from_kubeconfig(cluster.kubeconfig).endpoint.server
    holder = rf"\S+@\S+ pid {first.pid} since {SINCE} \(convert\)"
    if machines == "one state folder":
        assert re.fullmatch(
            rf"keybuzz-fix: error: another keybuzz-fix run on this machine is changing {re.escape(server)} namespace "
            rf"{NS}: {holder}; nothing changed; wait for it to end, or stop it \(kill {first.pid}\) if it hangs: "
            r"its lock ends with its process",
            line.strip(),
        ), line
    else:
        assert re.fullmatch(
            rf"keybuzz-fix: error: another keybuzz-fix run is changing namespace {NS} of {re.escape(server)}: "
            rf"{holder} \(Lease {NS}/{LEASE}\); nothing changed; wait for it to end, or, if that run is gone, "
            rf"delete its Lease \(kubectl -n {NS} delete lease {LEASE}\) or wait until it expires at {SINCE}",
            line.strip(),
        ), line
        assert backups(second_state) == [] and audit(second_state) == []  # the loser wrote nothing at all
    assert "backup:" not in out  # the loser took no backup
    assert workloads(cluster) == (set(), {"keybuzz-api", "keybuzz-front"})  # converted once
    # One backup, the winner's; each object changed once in the audit log.
    assert backups(first_state) == [winner_backup]
    changed = Counter(e["where"] for e in audit(first_state) if e["command"] == "convert")
    assert changed and max(changed.values()) == 1, changed
    assert from_kubeconfig(cluster.kubeconfig).get("Lease", LEASE, NS) is None  # released

    # rollback --latest picks the winner's backup and puts the cluster back, for the next race.
    result = CliRunner().invoke(
        app,
        ["rollback", "--latest", "--yes", "--timeout", "90", "--kubeconfig", str(cluster.kubeconfig)],
        env={"KEYBUZZ_FIX_STATE_DIR": str(first_state)},
    )
    assert result.exit_code == 0, result.output
    assert f"rollback:planfrom{winner_backup}" in re.sub(r"\s+", "", result.output), result.output
    assert workloads(cluster) == ({"keybuzz-api", "keybuzz-front"}, set())


def _policy(name: str) -> tuple[dict, dict]:
    """A ValidatingAdmissionPolicy that refuses every DaemonSet written for real in keybuzz (a dry run passes)."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["daemonsets"],
                    }
                ]
            },
            "validations": [{"expression": "request.dryRun == true", "message": "DaemonSets are frozen here"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}},
        },
    }
    return policy, binding


def _refused_for_real(cluster: KeybuzzCluster) -> bool:
    """Whether the policy is in force: a real DaemonSet create is refused (a created one is deleted again)."""
    apps = client.AppsV1Api(cluster.api_client)
    probe = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "admission-probe"},
        "spec": {
            "selector": {"matchLabels": {"app": "admission-probe"}},
            "template": {
                "metadata": {"labels": {"app": "admission-probe"}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/probe:1"}]},
            },
        },
    }
    try:
        apps.create_namespaced_daemon_set(NS, probe)
    except ApiException as e:
        return "DaemonSets are frozen here" in str(e.body)
    apps.delete_namespaced_daemon_set("admission-probe", NS)
    return False


def test_a_convert_the_api_server_refuses_leaves_no_backup_for_rollback_latest(
    rolled_back: KeybuzzCluster, state_dir: Path
) -> None:
    cluster = rolled_back
    admission = client.AdmissionregistrationV1Api(cluster.api_client)
    policy, binding = _policy("keybuzz-fix-test-frozen")
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    try:
        deadline = time.monotonic() + 30
        while not _refused_for_real(cluster):  # the policy is compiled and bound a moment after it is created
            assert time.monotonic() < deadline, "the admission policy did not come into force in 30 s"
            time.sleep(0.5)
        result = CliRunner().invoke(
            app, ["convert", "--yes", "--timeout", "30", "--kubeconfig", str(cluster.kubeconfig)]
        )
        assert result.exit_code == 1, result.output
        assert "DaemonSets are frozen here" in result.stderr and "nothing changed" in result.stderr, result.stderr
        assert workloads(cluster) == ({"keybuzz-api", "keybuzz-front"}, set())
        assert backups(state_dir) == []  # the backup it took before the refused change is gone
        latest = CliRunner().invoke(app, ["rollback", "--latest", "--dry-run", "--kubeconfig", str(cluster.kubeconfig)])
        assert latest.exit_code == 2 and "no convert backup in" in latest.stderr, latest.output
    finally:
        admission.delete_validating_admission_policy_binding(binding["metadata"]["name"])
        admission.delete_validating_admission_policy(policy["metadata"]["name"])
