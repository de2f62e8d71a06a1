"""`--limit` and the retry file against real sshd + real ufw hosts: a canary first, then the rest,
then the host that failed re-run from its retry file (Ansible's ``--limit`` and ``@retry`` habit)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.lab.hosts import INGRESS_PORT, Lab

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
NAMES = ["k8s-worker-01", "k8s-worker-02", "k8s-worker-03", "k8s-worker-04"]


def _ufw(lab: Lab, servers: Path, *args: str, json_out: bool = True):
    result = CliRunner().invoke(
        app,
        [
            "ufw",
            str(servers),
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(lab.known_hosts_file),
            "--timeout",
            "3",
            "--source",
            "198.18.0.0/24",
            *(["-o", "json"] if json_out else []),
            *args,
        ],
    )
    return result


def _hosts(result) -> dict[str, str]:
    return {h["hostname"]: h["status"] for h in json.loads(result.stdout)["hosts"]}


def _added(lab: Lab, name: str) -> list[str]:
    return lab.host(name).run("ufw show added").stdout.splitlines()[1:]


def test_canary_then_the_rest_then_the_failed_host_from_its_retry_file(
    lab_factory: Callable[..., Lab], tmp_path: Path, state_dir: Path
) -> None:
    with lab_factory(NAMES) as lab:
        servers = lab.servers_tsv(tmp_path / "servers.tsv")
        before = {n: _added(lab, n) for n in NAMES}

        # 1. the canary: its plan alone (--exit-code: 2, changes pending), then applied on it alone
        plan = _ufw(lab, servers, "--limit", "k8s-worker-01", "--dry-run", "--exit-code")
        assert plan.exit_code == 2, plan.output
        assert _hosts(plan) == {"k8s-worker-01": "planned"}
        canary = _ufw(lab, servers, "-l", "k8s-worker-01", "--yes")
        assert canary.exit_code == 0, canary.output
        assert _hosts(canary) == {"k8s-worker-01": "changed"}
        assert lab.tcp_reachable(lab.host("k8s-worker-01").ip, INGRESS_PORT, 1.0)
        assert {n: _added(lab, n) for n in NAMES[1:]} == {n: before[n] for n in NAMES[1:]}  # the rest untouched
        assert not (state_dir / "retry" / "ufw.retry").exists()

        # 2. the rest (a glob, less the canary); one of them is down
        lab.stop_host("k8s-worker-03")
        rest = _ufw(lab, servers, "--limit", "k8s-worker-0*,!k8s-worker-01", "--yes")
        assert rest.exit_code == 1, rest.output
        assert _hosts(rest) == {"k8s-worker-02": "changed", "k8s-worker-03": "failed", "k8s-worker-04": "changed"}
        retry = state_dir / "retry" / "ufw.retry"
        assert retry.read_text() == "k8s-worker-03\n"
        assert retry.stat().st_mode & 0o777 == 0o600
        assert json.loads(rest.stdout)["retry_file"] == str(retry)
        text = _ufw(lab, servers, "--limit", "k8s-worker-03", "--dry-run", json_out=False)
        assert text.exit_code == 1
        assert f"--limit @{retry}" in " ".join(text.stdout.split())  # the summary says how to re-run them

        # 3. the failed host back, re-run from its retry file: only it is worked on
        lab.start_host("k8s-worker-03")
        again = _ufw(lab, servers, "--limit", f"@{retry}", "--yes")
        assert again.exit_code == 0, again.output
        assert _hosts(again) == {"k8s-worker-03": "changed"}
        assert all(lab.tcp_reachable(lab.host(n).ip, INGRESS_PORT, 1.0) for n in NAMES)

        # 4. the drift check over every host: nothing left to do
        final = _ufw(lab, servers, "--dry-run", "--exit-code")
        assert final.exit_code == 0, final.output
        assert set(_hosts(final).values()) == {"unchanged"}
