"""`diagnose` and `overlay` on lab hosts with a real VXLAN overlay, against the real test control plane.

Each of the five lab workers (198.18.0.11-15) gets flannel.1 as Flannel builds it, with the
podCIDR its seeded Node carries (198.19.N.0/24); UFW starts with default deny and only 22/tcp,
so the VXLAN packets are dropped, as on the broken cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.lab.flannel import Vtep, ping, private_etc, with_flannel, without_flannel
from tests.lab.hosts import Lab

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]

OVERLAY_RULES = [
    "ufw allow from 198.18.0.0/24 to any port 8472 proto udp comment 'keybuzz-fix: flannel VXLAN'",
    "ufw allow from 198.19.0.0/17 comment 'keybuzz-fix: pod network'",
    "ufw allow from 198.19.128.0/20 comment 'keybuzz-fix: service network'",
]
CONFIG = """\
overlay:
  source: 198.18.0.0/24
  pod_cidr: 198.19.0.0/17
  service_cidr: 198.19.128.0/20
"""
PUBLIC_IP = "flannel.alpha.coreos.com/public-ip"


@pytest.fixture(scope="module")
def overlay_lab(lab_hosts: Lab, keybuzz_cluster: KeybuzzCluster) -> Iterator[dict[str, Vtep]]:
    """The five lab workers with flannel.1 built from their seeded Nodes, and a private /etc each."""
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    names = [h.name for h in lab_hosts.hosts]
    for h in lab_hosts.hosts:  # the seeded Nodes are these hosts
        addresses = {a.type: a.address for a in nodes[h.name].status.addresses}
        assert addresses["InternalIP"] == h.ip == nodes[h.name].metadata.annotations[PUBLIC_IP]
    vteps = with_flannel(lab_hosts, {n: nodes[n].spec.pod_cidr for n in names})
    for h in lab_hosts.hosts:
        private_etc(h)
    try:
        yield vteps
    finally:
        without_flannel(lab_hosts, names)


@pytest.fixture
def files(lab_hosts: Lab, tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "lab.yaml"
    config.write_text(CONFIG)
    return lab_hosts.servers_tsv(tmp_path / "servers.tsv", masters=()), config


def invoke(lab: Lab, command: str, servers: Path, config: Path, *args: str) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    result = CliRunner().invoke(
        app,
        [
            command,
            str(servers),
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(lab.known_hosts_file),
            "--config",
            str(config),
            "-o",
            "json",
            *args,
        ],
    )
    seconds = time.monotonic() - start
    try:
        return result.exit_code, json.loads(result.stdout), seconds
    except ValueError:
        pytest.fail(f"no JSON from {command} (exit {result.exit_code}): {result.output}")


def diagnose(lab: Lab, cluster: KeybuzzCluster, servers: Path, config: Path) -> tuple[int, dict[str, Any], float]:
    return invoke(lab, "diagnose", servers, config, "--kubeconfig", str(cluster.kubeconfig))


def findings(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["cause"]: f for f in data["findings"]}


def added(lab: Lab, name: str) -> list[str]:
    return lab.host(name).run("ufw show added").stdout.splitlines()[1:]


def pings(lab: Lab, vteps: dict[str, Vtep]) -> dict[tuple[str, str], bool]:
    """Ping from the first worker to each other one, and from each other one back to it."""
    first, *rest = vteps
    out = {}
    for other in rest:
        out[(first, other)] = ping(lab.host(first), vteps[other].address, count=1)
        out[(other, first)] = ping(lab.host(other), vteps[first].address, count=1)
    return out


def test_diagnose_finds_ufw_dropping_vxlan_and_overlay_fixes_it(
    lab_hosts: Lab,
    keybuzz_cluster: KeybuzzCluster,
    overlay_lab: dict[str, Vtep],
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    servers, config = files
    names = list(overlay_lab)
    assert not any(pings(lab_hosts, overlay_lab).values())  # UFW drops the VXLAN packets

    code, before, seconds = diagnose(lab_hosts, keybuzz_cluster, servers, config)
    with capsys.disabled():
        print(f"\ndiagnose on {len(names)} hosts, overlay broken: {seconds:.1f} s (tool's own {before['seconds']} s)")
    assert code == 1 and before["healthy"] is False
    first = before["findings"][0]
    assert (first["cause"], first["status"]) == ("ufw-blocks-vxlan", "confirmed"), (
        first["summary"],
        first["contradicts"][:4],
    )
    assert first["hosts"] == names
    assert (
        "udp/8472 from 198.18.0.12 to 198.18.0.11 on eth0 (INPUT): denied by default incoming policy: deny"
        in (first["evidence"][names[0]])
    )
    assert "keybuzz-fix overlay servers.tsv" in first["fix"]
    found = findings(before)
    vteps = [p for p in before["paths"] if p["kind"] == "vtep"]
    assert len(vteps) == 20 and {p["result"] for p in vteps} == {"fail"}
    assert {p["result"] for p in before["paths"] if p["kind"] == "underlay"} == {"ok"}  # ICMP gets through UFW
    for cause in ("wrong-interface", "mtu", "checksum-offload", "underlay-drops-vxlan"):
        assert found[cause]["status"] == "ok", found[cause]

    rules_before = {n: added(lab_hosts, n) for n in names}
    code, plan, _ = invoke(lab_hosts, "overlay", servers, config, "--dry-run")
    assert code == 0 and {h["status"] for h in plan["hosts"]} == {"planned"}
    assert [a["command"] for a in plan["hosts"][0]["actions"]] == [
        "ufw allow from 198.18.0.0/24 to any port 8472 proto udp comment 'keybuzz-fix: flannel VXLAN'",
        "ufw allow from 198.19.0.0/17 to any comment 'keybuzz-fix: pod network'",
        "ufw allow from 198.19.128.0/20 to any comment 'keybuzz-fix: service network'",
    ]
    assert {n: added(lab_hosts, n) for n in names} == rules_before

    code, result, _ = invoke(lab_hosts, "overlay", servers, config, "--yes")
    assert code == 0, result
    assert {h["status"] for h in result["hosts"]} == {"changed"}
    for n in names:
        rules = added(lab_hosts, n)
        assert rules == rules_before[n] + OVERLAY_RULES  # appended; nothing removed or reordered
    assert all(pings(lab_hosts, overlay_lab).values())

    code, again, _ = invoke(lab_hosts, "overlay", servers, config, "--yes")
    assert code == 0 and {h["status"] for h in again["hosts"]} == {"unchanged"}
    assert all(added(lab_hosts, n) == rules_before[n] + OVERLAY_RULES for n in names)

    code, after, seconds = diagnose(lab_hosts, keybuzz_cluster, servers, config)
    with capsys.disabled():
        print(f"diagnose on {len(names)} hosts, overlay healthy: {seconds:.1f} s (tool's own {after['seconds']} s)")
    assert code == 0 and after["healthy"] is True, after["findings"]
    assert not any(f["problem"] for f in after["findings"])
    assert {p["result"] for p in after["paths"]} == {"ok"} and len(after["paths"]) == 80


def test_diagnose_text_output_names_the_finding_and_the_fix(
    lab_hosts: Lab, keybuzz_cluster: KeybuzzCluster, overlay_lab: dict[str, Vtep], files: tuple[Path, Path]
) -> None:
    servers, config = files
    host = lab_hosts.hosts[0]
    host.run("ufw delete allow from 198.18.0.0/24 to any port 8472 proto udp || true")
    try:
        result = CliRunner().invoke(
            app,
            [
                "diagnose",
                str(servers),
                "--identity",
                str(lab_hosts.identity_file),
                "--known-hosts",
                str(lab_hosts.known_hosts_file),
                "--config",
                str(config),
                "--kubeconfig",
                str(keybuzz_cluster.kubeconfig),
            ],
        )
    finally:
        host.run(OVERLAY_RULES[0])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "1. ufw-blocks-vxlan — UFW drops the overlay's packets from the other nodes — confirmed" in out
    # the evidence of hosts that saw the same thing is one block: addresses read "this node" / "another node"
    assert "udp/8472 from another node to this node on eth0 (INPUT): denied by default incoming policy: deny" in out
    assert "fix: Allow the overlay port" in out and "keybuzz-fix overlay servers.tsv" in out
    assert "not healthy" in out


def test_public_ip_annotation_off_the_private_address_is_the_wrong_interface(
    lab_hosts: Lab, keybuzz_cluster: KeybuzzCluster, overlay_lab: dict[str, Vtep], files: tuple[Path, Path]
) -> None:
    servers, config = files
    code, result, _ = invoke(lab_hosts, "overlay", servers, config, "--yes")
    assert code == 0, result  # the overlay itself works
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    name = "k8s-worker-05"
    original = core.read_node(name).metadata.annotations[PUBLIC_IP]
    core.patch_node(name, {"metadata": {"annotations": {PUBLIC_IP: "198.18.1.15"}}})
    try:
        code, data, _ = diagnose(lab_hosts, keybuzz_cluster, servers, config)
    finally:
        core.patch_node(name, {"metadata": {"annotations": {PUBLIC_IP: original}}})
    assert code == 1 and data["healthy"] is False
    first = data["findings"][0]
    assert (first["cause"], first["title"]) == ("wrong-interface", "Flannel on the wrong interface"), data
    assert first["status"] == "likely", data  # no path fails: flannel.1 itself sends from the private IP
    assert first["hosts"] == [name]
    assert "198.18.1.15, not 198.18.0.15" in first["evidence"][name]
    assert f"{name}: flannel-iface: eth0, node-ip: 198.18.0.15" in first["fix"]
    assert not any(p["result"] != "ok" for p in data["paths"]), data


def test_checksum_offload_off_applies_and_persists(
    lab_hosts: Lab, overlay_lab: dict[str, Vtep], files: tuple[Path, Path]
) -> None:
    servers, config = files
    rule_file = "/etc/udev/rules.d/90-keybuzz-fix-flannel-offload.rules"
    assert "tx-checksum-ip-generic: on" in lab_hosts.hosts[0].run("ethtool -k flannel.1").stdout
    code, result, _ = invoke(lab_hosts, "overlay", servers, config, "--yes", "--checksum-offload-off")
    assert code == 0, result
    assert {h["status"] for h in result["hosts"]} == {"changed"}
    applied = result["hosts"][0]["applied"]
    assert "ethtool -K flannel.1 tx-checksum-ip-generic off" in applied
    assert any(cmd.startswith("mkdir -p /etc/udev/rules.d && printf") for cmd in applied)
    for h in lab_hosts.hosts:
        assert "tx-checksum-ip-generic: off" in h.run("ethtool -k flannel.1").stdout
        rule = h.run(f"cat {rule_file}").stdout
        assert rule.endswith('KERNEL=="flannel.1", RUN+="/usr/sbin/ethtool -K flannel.1 tx-checksum-ip-generic off"\n')
        assert h.run("ls -A /etc/udev/rules.d").stdout.split() == [rule_file.rsplit("/", 1)[1]]
    assert not Path("/etc/udev").exists() or not Path(rule_file).exists()  # this machine's /etc is untouched

    code, again, _ = invoke(lab_hosts, "overlay", servers, config, "--yes", "--checksum-offload-off")
    assert code == 0 and {h["status"] for h in again["hosts"]} == {"unchanged"}
    reasons = [a["reason"] for a in again["hosts"][0]["actions"]]
    assert "tx-checksum-ip-generic already off on flannel.1" in reasons
    assert f"udev rule already in place: {rule_file}" in reasons
