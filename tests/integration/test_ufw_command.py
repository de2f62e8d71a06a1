"""`keybuzz-fix ufw` against real sshd + real ufw hosts (network namespaces on this machine)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.lab.hosts import INGRESS_PORT, SUDO_NOPASSWD_USER, SUDO_PASSWORD_USER, HostSpec, Lab

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
HTTPS_PORT = 32720


def run_ufw(lab: Lab, servers: Path, *args: str, known_hosts: Path | None = None) -> tuple[int, dict]:
    result = CliRunner().invoke(
        app,
        [
            "ufw",
            str(servers),
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(known_hosts or lab.known_hosts_file),
            "--timeout",
            "5",
            "-o",
            "json",
            *args,
        ],
    )
    try:
        data = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {result.exit_code}): {result.output}")
    return result.exit_code, data


def by_host(data: dict) -> dict[str, dict]:
    return {h["hostname"]: h for h in data["hosts"]}


def added(lab: Lab, name: str) -> list[str]:
    return lab.host(name).run("ufw show added").stdout.splitlines()[1:]


CONFIGURED = [
    "ufw allow from 198.18.0.0/24 to any port 31695 proto tcp comment 'keybuzz-fix: ingress-nginx HTTP NodePort'",
    "ufw allow from 198.18.0.0/24 to any port 32720 proto tcp comment 'keybuzz-fix: ingress-nginx HTTPS NodePort'",
    "ufw allow from 198.18.0.0/24 to any port 80 proto tcp comment 'keybuzz-fix: ingress-nginx HTTP host port'",
    "ufw allow from 198.18.0.0/24 to any port 443 proto tcp comment 'keybuzz-fix: ingress-nginx HTTPS host port'",
    "ufw allow from 198.18.0.0/24 to any port 8080 proto tcp comment 'keybuzz-fix: keybuzz-api host port'",
    "ufw allow from 198.18.0.0/24 to any port 3000 proto tcp comment 'keybuzz-fix: keybuzz-front host port'",
]


def test_without_a_cluster_opens_the_configured_ports_restricted_to_the_source(
    lab_hosts: Lab, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No kubeconfig anywhere: the six configured ports (the NodePorts and the ports behind them), and why."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    servers = lab_hosts.servers_tsv(tmp_path / "servers.tsv")
    names = [h.name for h in lab_hosts.hosts]
    assert not any(lab_hosts.tcp_reachable(h.ip, INGRESS_PORT, 0.5) for h in lab_hosts.hosts)

    before = {n: added(lab_hosts, n) for n in names}
    code, plan = run_ufw(lab_hosts, servers, "--source", "198.18.0.0/24", "--dry-run")
    assert code == 0
    assert {h["status"] for h in plan["hosts"]} == {"planned"}
    assert [a["command"] for a in plan["hosts"][0]["actions"]] == CONFIGURED
    assert plan["read_from"] == "config"
    assert plan["notes"] == [
        "the cluster could not be read (no kubeconfig found: pass --kubeconfig FILE, set KUBECONFIG, use "
        "--kubeconfig-from-master to read it from a K3s master over SSH, or run in a pod (in-cluster "
        "config)): the ports come from the configuration (firewall.ports)"
    ]
    assert [r["read_from"] for r in plan["rules"]] == [f"config firewall.ports[{i}]" for i in range(6)]
    assert {n: added(lab_hosts, n) for n in names} == before  # the dry run changed nothing
    assert not any(lab_hosts.tcp_reachable(h.ip, INGRESS_PORT, 0.5) for h in lab_hosts.hosts)

    code, result = run_ufw(lab_hosts, servers, "--source", "198.18.0.0/24", "--yes")
    assert code == 0, result
    assert {h["status"] for h in result["hosts"]} == {"changed"}
    assert all(lab_hosts.tcp_reachable(h.ip, INGRESS_PORT, 1.0) for h in lab_hosts.hosts)
    for n in names:
        rules = added(lab_hosts, n)
        assert rules[: len(before[n])] == before[n]  # nothing removed or reordered
        assert (
            "ufw allow from 198.18.0.0/24 to any port 31695 proto tcp "
            "comment 'keybuzz-fix: ingress-nginx HTTP NodePort'"
        ) in rules
    audit = [json.loads(line) for line in (state_dir / "audit.jsonl").read_text().splitlines()]
    assert len(audit) == len(CONFIGURED) * len(names) and {a["outcome"] for a in audit} == {"ok"}
    assert {a["where"] for a in audit} == set(names)

    after = {n: added(lab_hosts, n) for n in names}
    code, again = run_ufw(lab_hosts, servers, "--source", "198.18.0.0/24", "--yes")
    assert code == 0
    assert {h["status"] for h in again["hosts"]} == {"unchanged"}
    assert all(a["kind"] == "noop" and "already present" in a["reason"] for a in again["hosts"][0]["actions"])
    assert {n: added(lab_hosts, n) for n in names} == after  # no duplicates


def test_default_source_is_the_private_network_only(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    with lab_factory(["k8s-worker-01", "k8s-worker-02"]) as lab:
        servers = lab.servers_tsv(tmp_path / "servers.tsv")
        code, result = run_ufw(lab, servers, "--yes")
        assert code == 0, result
        for h in lab.hosts:
            assert (
                "ufw allow from 10.0.0.0/16 to any port 31695 proto tcp "
                "comment 'keybuzz-fix: ingress-nginx HTTP NodePort'"
            ) in added(lab, h.name)
            # 198.18.0.1 (this machine) is not in 10.0.0.0/16: the port stays closed to it.
            assert not lab.tcp_reachable(h.ip, INGRESS_PORT, 0.5)


def test_each_failing_host_is_reported_and_the_others_succeed(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    specs = [
        HostSpec("k8s-worker-01"),
        HostSpec("k8s-worker-02"),
        HostSpec("k8s-worker-03"),
        HostSpec("k8s-worker-04"),
        HostSpec("k8s-worker-05", ufw_installed=False),
        HostSpec("k8s-worker-06", ufw_active=False),
    ]
    with lab_factory(specs) as lab:
        servers = lab.servers_tsv(tmp_path / "servers.tsv")
        known = tmp_path / "known_hosts"
        shutil.copy(lab.known_hosts_file, known)
        lab.stop_host("k8s-worker-03")
        lab.regenerate_host_key("k8s-worker-04")

        code, result = run_ufw(lab, servers, "--source", "198.18.0.0/24", "--yes", known_hosts=known)
        assert code == 1
        hosts = by_host(result)
        assert hosts["k8s-worker-01"]["status"] == hosts["k8s-worker-02"]["status"] == "changed"
        assert hosts["k8s-worker-03"]["error_type"] == "HostUnreachable"
        assert hosts["k8s-worker-04"]["error_type"] == "HostKeyError"
        assert "CHANGED" in hosts["k8s-worker-04"]["error"] and hosts["k8s-worker-04"]["error"].count("SHA256:") == 2
        assert hosts["k8s-worker-05"]["error_type"] == "MissingTool"
        assert "ufw is not installed" in hosts["k8s-worker-05"]["error"]
        inactive = hosts["k8s-worker-06"]
        assert inactive["status"] == "blocked" and "--enable" in inactive["message"]
        assert lab.host("k8s-worker-06").run("ufw status").stdout.strip() == "Status: inactive"
        assert lab.tcp_reachable(lab.host("k8s-worker-01").ip, INGRESS_PORT, 1.0)
        assert "k8s-worker-04" not in " ".join(added(lab, "k8s-worker-04"))  # untouched: refused
        assert len(added(lab, "k8s-worker-04")) == 1  # only the lab's own 22/tcp

        # --enable: the inactive host ends active, with SSH still reachable (rule added first).
        code, result = run_ufw(lab, servers, "--source", "198.18.0.0/24", "--yes", "--enable", known_hosts=known)
        hosts = by_host(result)
        assert hosts["k8s-worker-06"]["status"] == "changed"
        applied = hosts["k8s-worker-06"]["applied"]
        assert applied[0] == "ufw allow 22/tcp comment 'keybuzz-fix: keep SSH reachable'"
        assert applied[-1] == "ufw --force enable"
        host6 = lab.host("k8s-worker-06")
        assert host6.run("ufw status").stdout.startswith("Status: active")
        assert lab.tcp_reachable(host6.ip, 22, 1.0)
        code, result = run_ufw(lab, servers, "--source", "198.18.0.0/24", "--yes", "--enable", known_hosts=known)
        assert by_host(result)["k8s-worker-06"]["status"] == "unchanged"  # SSH reachable for a re-run


def test_unknown_host_key_needs_explicit_trust(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    with lab_factory(["k8s-worker-01"]) as lab:
        servers = lab.servers_tsv(tmp_path / "servers.tsv")
        known = tmp_path / "ssh" / "known_hosts"  # does not exist yet
        code, result = run_ufw(lab, servers, "--dry-run", known_hosts=known)
        assert code == 1
        (host,) = result["hosts"]
        assert host["error_type"] == "HostKeyError" and "--accept-new-host-keys" in host["error"]

        code, result = run_ufw(lab, servers, "--dry-run", "--accept-new-host-keys", known_hosts=known)
        assert code == 0
        (accepted,) = result["accepted_host_keys"]
        assert accepted["host"] == "k8s-worker-01" and accepted["key"].startswith("ssh-ed25519 SHA256:")
        assert known.read_text().split()[1:] == lab.hosts[0].host_key_pub.split()
        assert oct(known.stat().st_mode & 0o777) == "0o600"
        code, result = run_ufw(lab, servers, "--dry-run", known_hosts=known)  # now known: no new acceptance
        assert code == 0 and result["accepted_host_keys"] == []


def test_sudo_users(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    with lab_factory([HostSpec("k8s-worker-01", sudo_users=True)]) as lab:
        servers = lab.servers_tsv(tmp_path / "servers.tsv")
        code, result = run_ufw(lab, servers, "--yes", "--source", "198.18.0.0/24", "--user", SUDO_NOPASSWD_USER)
        assert code == 0, result
        assert result["hosts"][0]["status"] == "changed"
        assert lab.tcp_reachable(lab.hosts[0].ip, INGRESS_PORT, 1.0)

        code, result = run_ufw(lab, servers, "--dry-run", "--user", SUDO_PASSWORD_USER)
        assert code == 1
        (host,) = result["hosts"]
        assert host["error_type"] == "AuthError" and "password" in host["error"]
        assert host["seconds"] < 5  # refused at once, no hang on a prompt


def test_shadowing_deny_rule_is_reported_not_reordered(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    with lab_factory(["k8s-worker-01"]) as lab:
        host = lab.hosts[0]
        host.run(f"ufw deny {HTTPS_PORT}/tcp")
        before = added(lab, host.name)
        servers = lab.servers_tsv(tmp_path / "servers.tsv")
        code, result = run_ufw(lab, servers, "--yes", "--source", "198.18.0.0/24")
        assert code == 1
        (h,) = result["hosts"]
        assert h["status"] == "blocked" and f"ufw deny {HTTPS_PORT}/tcp" in h["message"]
        rules = added(lab, host.name)
        assert rules[: len(before)] == before
        assert any("port 31695" in r for r in rules) and not any(
            f"allow from 198.18.0.0/24 to any port {HTTPS_PORT}" in r for r in rules
        )


def test_no_confirmation_without_a_terminal(lab_hosts: Lab, tmp_path: Path) -> None:
    servers = lab_hosts.servers_tsv(tmp_path / "servers.tsv")
    before = added(lab_hosts, "k8s-worker-01")
    result = CliRunner().invoke(
        app,
        [
            "ufw",
            str(servers),
            "--identity",
            str(lab_hosts.identity_file),
            "--known-hosts",
            str(lab_hosts.known_hosts_file),
            "--ports",
            "31999/tcp",
        ],
    )
    assert result.exit_code == 2
    assert "pass --yes" in result.output
    assert added(lab_hosts, "k8s-worker-01") == before
    assert os.environ.get("KEYBUZZ_FIX_STATE_DIR")


def _ssh_sessions(lab: Lab, name: str, expected: int) -> int:
    """Connections to the host's sshd as the host sees them, once they settle at ``expected`` (≤ 5 s)."""
    deadline = time.monotonic() + 5
    while True:  # a closed client connection lingers a moment on the server side
        out = lab.host(name).run("ss -Htn state established '( sport = :22 )'").stdout
        count = len([line for line in out.splitlines() if line.strip()])
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_only_hosts_with_changes_keep_their_connection(
    lab_factory: Callable[..., Lab], tmp_path: Path, state_dir: Path
) -> None:
    from keybuzz_fix import inventory
    from keybuzz_fix.hosts.ufw.apply import FirewallRun
    from keybuzz_fix.hosts.ufw.rules import desired_rules
    from keybuzz_fix.hosts.ufw.run import HostStatus

    with lab_factory(["k8s-worker-01", "k8s-worker-02", "k8s-worker-03"]) as lab:
        servers = lab.servers_tsv(tmp_path / "servers.tsv")
        rules = desired_rules([(INGRESS_PORT, "tcp", "http"), (HTTPS_PORT, "tcp", "https")], "198.18.0.0/24")
        for rule in rules:  # worker-02 already has both rules: its plan is a no-op
            lab.host("k8s-worker-02").run(rule.command())
        hosts = inventory.select(inventory.read_inventory(servers))
        run = FirewallRun(hosts=hosts, desired=lambda _h: rules, ssh=lab.ssh_options(), concurrency=3)
        try:
            planned = run.plan()
            assert all(o.ok for o in planned), [o.error for o in planned]
            changing = sorted(o.host.hostname for o in planned if o.changes)
            assert changing == ["k8s-worker-01", "k8s-worker-03"]
            assert _ssh_sessions(lab, "k8s-worker-02", 0) == 0  # released right after planning
            assert _ssh_sessions(lab, "k8s-worker-01", 1) == _ssh_sessions(lab, "k8s-worker-03", 1) == 1

            applied = run.apply(planned)
            assert {o.host.hostname: o.status for o in applied if o.ok} == {
                "k8s-worker-01": HostStatus.CHANGED,
                "k8s-worker-02": HostStatus.UNCHANGED,
                "k8s-worker-03": HostStatus.CHANGED,
            }
            assert _ssh_sessions(lab, "k8s-worker-02", 0) == 0  # a no-op host is never reconnected
        finally:
            run.close()
        for name in ("k8s-worker-01", "k8s-worker-03"):
            assert any(f"port {INGRESS_PORT} proto tcp" in line for line in added(lab, name))
