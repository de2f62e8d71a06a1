"""diagnose against the real thing: each fault made in network namespaces, named first over SSH and offline.

Three lab hosts wired as K3s nodes (tests/lab/overlay_faults.py): a real VXLAN device over an
underlay namespace, cni0 and pods in /run/netns/cni-*, kube-proxy's and flannel's rules, a CoreDNS
and an API server stand-in. For every case the fault is made, then ``diagnose servers.tsv`` runs
over SSH, and ``diagnose --collect-script`` is run with ``sh`` on every node at once and its
output judged by ``diagnose --from-dir``: both must name the cause first, with the same ranking.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keybuzz_fix import storage
from keybuzz_fix.cli import app
from keybuzz_fix.cluster.observed import OVERLAY_RECORD, OverlaySeen, overlay_seen
from tests.lab.hosts import HostSpec, Lab
from tests.lab.overlay_faults import OverlayLab

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
NAMES = ("k3s-node-01", "k3s-node-02", "k3s-node-03")
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def world(lab_factory: Callable[..., Lab]) -> Iterator[OverlayLab]:
    with lab_factory([HostSpec(n, ufw_active=False, http_listener=False) for n in NAMES]) as lab:
        with OverlayLab(lab) as w:
            yield w


@pytest.fixture
def files(world: OverlayLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("HOME", str(world.ssh_home(tmp_path / "home")))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return {
        "servers": world.servers(tmp_path / "servers.tsv"),
        "known_hosts": world.known_hosts(tmp_path / "known_hosts"),
        "dir": tmp_path / "capture",
    }


def over_ssh(world: OverlayLab, files: dict[str, Path]) -> tuple[int, dict[str, Any]]:
    args = ["diagnose", str(files["servers"]), "--known-hosts", str(files["known_hosts"])]
    args += ["--identity", str(world.lab.identity_file), "-o", "json"]
    result = CliRunner().invoke(app, args)
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON from diagnose (exit {result.exit_code}): {result.output}")


def offline(world: OverlayLab, files: dict[str, Path]) -> tuple[int, dict[str, Any]]:
    script = CliRunner().invoke(app, ["diagnose", "--collect-script", str(files["servers"])])
    assert script.exit_code == 0, script.output
    assert script.stdout.startswith("#!/bin/sh\n")
    d = files["dir"]
    d.mkdir(exist_ok=True)

    def collect(n: Any) -> float:
        path = n.host.workdir / "collect.sh"
        path.write_text(script.stdout)
        start = time.monotonic()
        out = n.host.run(f"cd /tmp && sh {path}", timeout=40)
        (d / f"{n.name}.txt").write_text(out.stdout)
        return time.monotonic() - start

    with ThreadPoolExecutor(max_workers=len(world.nodes)) as pool:  # at the same time, as the README says
        seconds = list(pool.map(collect, world.nodes))
    assert max(seconds) < 30, seconds
    (d / "nodes.yaml").write_text(world.nodes_yaml())
    result = CliRunner().invoke(app, ["diagnose", "--from-dir", str(d), "-o", "json"])
    return result.exit_code, json.loads(result.stdout)


def ranking(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["cause"], f["status"]) for f in data["findings"] if f["problem"]]


def both(world: OverlayLab, files: dict[str, Path], case: str) -> tuple[dict[str, Any], dict[str, Any]]:
    start = time.monotonic()
    code, ssh = over_ssh(world, files)
    code2, off = offline(world, files)
    TIMES[case] = time.monotonic() - start
    assert code == code2
    assert ranking(ssh) == ranking(off), (ranking(ssh), ranking(off))
    return ssh, off


def top(data: dict[str, Any]) -> dict[str, Any]:
    f = data["findings"][0]
    assert f["problem"], [(x["cause"], x["status"], x["summary"]) for x in data["findings"]]
    return f


def failed(data: dict[str, Any]) -> list[str]:
    return [f"{p['node']} {p['from']}->{p['kind']} {p['target']}" for p in data["paths"] if p["result"] != "ok"]


def recorded(world: OverlayLab) -> OverlaySeen | None:
    """What the last diagnose over SSH recorded of the lab's nodes, as convert and all read it."""
    names: dict[str, str | None] = {n.name: n.ip for n in world.nodes}
    return overlay_seen(storage.read_record(OVERLAY_RECORD), names, dt.datetime.now(dt.UTC))


def test_sh_is_posix_dash_as_on_debian_and_ubuntu(world: OverlayLab) -> None:
    assert world.nodes[0].host.run("readlink -f /bin/sh").stdout.strip().endswith("dash")


def test_a_healthy_vxlan_overlay_is_healthy(world: OverlayLab, files: dict[str, Path]) -> None:
    ssh, off = both(world, files, "healthy vxlan")
    for data in (ssh, off):
        assert data["healthy"] and data["exit_code"] == 0, (ranking(data), failed(data))
        assert {p["from"] for p in data["paths"]} == {"pod", "node"}  # probed from inside the pods too
        assert {h["pod_netns"] for h in data["hosts"]} == {"cni-probe"}
    kinds = {p["kind"] for p in ssh["paths"]}
    assert {"pod", "pod-big", "api", "dns", "dns-pod", "nodeport", "underlay", "underlay-big", "vtep"} <= kinds
    seen = recorded(world)  # what convert and all read: healthy, these nodes at these addresses
    assert seen is not None and seen.healthy is True, storage.read_record(OVERLAY_RECORD)


def test_forward_policy_drop(world: OverlayLab, files: dict[str, Path]) -> None:
    world.forward_drop("k3s-node-03")
    try:
        ssh, off = both(world, files, "forward-drop")
    finally:
        world.heal()
    f = top(ssh)
    assert (f["cause"], f["status"], f["hosts"]) == ("forward-drop", "confirmed", ["k3s-node-03"]), failed(ssh)


def test_drop_policy_in_nf_tables_accepts_only_in_legacy(world: OverlayLab, files: dict[str, Path]) -> None:
    world.backends_split("k3s-node-03")
    try:
        ssh, off = both(world, files, "iptables-backend-split")
    finally:
        world.heal()
    f = top(ssh)
    assert (f["cause"], f["status"]) == ("iptables-backend-split", "confirmed"), failed(ssh)
    assert any("accepted only there" in line for line in f["evidence"]["k3s-node-03"])


def test_ufw_drops_8472(world: OverlayLab, files: dict[str, Path]) -> None:
    world.ufw_blocks_vxlan("k3s-node-02")
    try:
        ssh, off = both(world, files, "ufw-blocks-vxlan")
    finally:
        world.heal()
    f = top(ssh)
    assert (f["cause"], f["status"], f["hosts"]) == ("ufw-blocks-vxlan", "confirmed", ["k3s-node-02"]), failed(ssh)
    seen = recorded(world)  # the SSH run's, not the capture's (--from-dir records nothing)
    assert seen is not None and (seen.healthy, seen.cause) == (False, "ufw-blocks-vxlan")


def test_iptables_drops_8472_on_input(world: OverlayLab, files: dict[str, Path]) -> None:
    world.iptables_drops_vxlan("k3s-node-02")
    try:
        ssh, off = both(world, files, "8472 dropped by iptables")
    finally:
        world.heal()
    f = top(ssh)
    assert (f["cause"], f["status"], f["hosts"]) == ("other-firewall", "confirmed", ["k3s-node-02"]), failed(ssh)


def test_vxlan_mac_changed_after_peers_were_programmed(world: OverlayLab, files: dict[str, Path]) -> None:
    world.change_mac("k3s-node-02")
    try:
        ssh, off = both(world, files, "vtep-mac-mismatch")
    finally:
        world.heal()
    f = top(ssh)
    assert (f["cause"], f["status"]) == ("vtep-mac-mismatch", "confirmed"), failed(ssh)
    assert "k3s-node-02" in f["hosts"]


def test_nic_1500_over_a_1450_underlay(world: OverlayLab, files: dict[str, Path]) -> None:
    world.nic_mtu_1500()
    try:
        ssh, off = both(world, files, "mtu")
    finally:
        world.heal()
    f = top(ssh)
    assert (f["cause"], f["status"]) == ("mtu", "confirmed"), failed(ssh)
    small = [p for p in ssh["paths"] if p["kind"] in ("pod", "underlay", "vtep")]
    assert all(p["result"] == "ok" for p in small)  # only the full-size ones fail


def test_bridge_nf_call_iptables_zero_with_a_same_node_backend(world: OverlayLab, files: dict[str, Path]) -> None:
    world.bridge_nf_off("k3s-node-01")  # CoreDNS runs there
    try:
        ssh, off = both(world, files, "br-netfilter-off")
    finally:
        world.heal()
    f = top(ssh)
    assert (f["cause"], f["status"], f["hosts"]) == ("br-netfilter-off", "confirmed", ["k3s-node-01"]), failed(ssh)
    dns = next(p for p in ssh["paths"] if p["node"] == "k3s-node-01" and p["from"] == "pod" and p["kind"] == "dns")
    assert dns["result"] == "wrong-source"
    node = next(p for p in ssh["paths"] if p["node"] == "k3s-node-01" and p["from"] == "node" and p["kind"] == "dns")
    assert node["result"] == "ok"  # the same query from the node is answered


def test_outer_checksum_corrupted_on_the_underlay(world: OverlayLab, files: dict[str, Path]) -> None:
    world.corrupt_checksums()
    try:
        log_before = world.nodes[1].host.run("dmesg 2>/dev/null | grep -ci 'bad checksum' || true").stdout
        ssh, off = both(world, files, "checksum-offload")
        log_after = world.nodes[1].host.run("dmesg 2>/dev/null | grep -ci 'bad checksum' || true").stdout
    finally:
        world.heal()
    f = top(ssh)
    assert (f["cause"], f["status"]) == ("checksum-offload", "confirmed"), failed(ssh)
    assert any(line.startswith("UdpInCsumErrors ") for lines in f["evidence"].values() for line in lines)
    assert log_before == log_after  # the kernel logs nothing: only the counter moves


def test_a_healthy_host_gw_overlay_is_healthy(world: OverlayLab, files: dict[str, Path]) -> None:
    world.host_gw()
    try:
        ssh, off = both(world, files, "healthy host-gw")
    finally:
        world.heal()
    for data in (ssh, off):
        assert data["healthy"] and data["exit_code"] == 0, (ranking(data), failed(data))
        backend = next(f for f in data["findings"] if f["cause"] == "backend")
        assert "host-gw" in backend["summary"]


def test_zz_report_times(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        for case, seconds in TIMES.items():
            print(f"\n  lab case {case}: SSH + collect-script/--from-dir in {seconds:.1f} s", end="")
        print()
