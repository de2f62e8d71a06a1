"""diagnose, offline: the public outage reports, healthy clusters of every backend, and other members of each kind.

Each case is a ``--from-dir`` capture (tests/data/diagnose/outages, built by build.py from the
reports' evidence) or a synthetic cluster written by :mod:`tests.unit.world` in the same format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keybuzz_fix.checks.diagnose.filters import Flow, ufw_verdict
from keybuzz_fix.checks.diagnose.kernel import affected_kernel
from keybuzz_fix.cli import app
from keybuzz_fix.hosts.flannel.capture import parse_capture
from keybuzz_fix.hosts.ufw.ruleset import Ruleset
from keybuzz_fix.report.diagnosis import host_list
from tests.unit.world import NodeSpec, World, healthy_tables, remote, three_nodes, ufw_text

DATA = Path(__file__).parent.parent / "data" / "diagnose"
OUTAGES = DATA / "outages"
CASES = [line.split("\t") for line in (OUTAGES / "EXPECTED").read_text().splitlines()]


def from_dir(directory: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["diagnose", "--from-dir", str(directory), "-o", "json"])
    return result.exit_code, json.loads(result.stdout)


def run(world: World, tmp_path: Path, cluster: list[dict[str, Any]] | None = None) -> tuple[int, dict[str, Any]]:
    return from_dir(world.write(tmp_path / "capture", cluster))


def problems(data: dict[str, Any]) -> list[str]:
    return [f["cause"] for f in data["findings"] if f["problem"]]


def finding(data: dict[str, Any], cause: str) -> dict[str, Any]:
    return next(f for f in data["findings"] if f["cause"] == cause)


def overlay_fails(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
    return "ok" if kind.startswith("underlay") or kind == "api" else "fail" if remote(src, backends) else "ok"


# -- the public outage reports -------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[c for c, _ in CASES])
def test_outage_report_names_its_root_cause_first(case: str, expected: str) -> None:
    code, data = from_dir(OUTAGES / case)
    assert code == 1 and data["healthy"] is False
    top = data["findings"][0]
    assert top["cause"] == expected, [(f["cause"], f["status"], f["summary"]) for f in data["findings"][:4]]
    assert top["status"] in ("confirmed", "likely") and top["problem"]
    assert top["evidence"] and all(lines for lines in top["evidence"].values())
    assert any(line.startswith("$ ") for lines in top["evidence"].values() for line in lines)  # the command
    assert top["fix"]
    failed = {p["node"] + ": " + p["from"] + " -> " + p["kind"] for p in data["paths"] if p["result"] != "ok"}
    assert failed and top["explains"]


def test_a_dns_failure_alone_never_confirms_checksum_offload() -> None:
    """The 3.10 kernel and the offload on (affected by version), DNS failing everywhere: CoreDNS, not the offload."""
    code, data = from_dir(OUTAGES / "29-coredns-forward-loop")
    assert finding(data, "checksum-offload")["status"] == "ok"


# -- healthy clusters of every backend ---------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"vx_dev": "flannel.4096", "vni": 4096, "vx_port": 4789},  # rke2's Windows-compatible VXLAN
        {"backend": "wireguard"},
        {"backend": "host-gw"},
        {"kernel": "3.10.0-1160.el7.x86_64"},  # in the checksum bug's range, counters flat: fine
    ],
    ids=["vxlan", "vxlan-4789", "wireguard-native", "host-gw", "old-kernel"],
)
def test_a_healthy_cluster_of_every_backend_is_healthy(spec: dict[str, Any], tmp_path: Path) -> None:
    code, data = run(World(three_nodes(**spec)), tmp_path)
    assert code == 0 and data["healthy"], [(f["cause"], f["summary"]) for f in data["findings"] if f["problem"]]
    assert problems(data) == []
    assert finding(data, "backend")["info"] is True and finding(data, "backend")["status"] == "ok"


def test_wireguard_native_with_its_ufw_rules_is_healthy(tmp_path: Path) -> None:
    """vitobotta/hetzner-k3s#79's setup (wireguard-native on Hetzner: public eth0, private enp7s0 at 1450).

    tests/data/diagnose/realworld/diagnose-wireguard-native: 51820/udp allowed, no 8472, no flannel.1.
    """
    probe = (DATA / "realworld" / "diagnose-wireguard-native" / "node-probe-w0.txt").read_text()
    ufw = probe[probe.index("@@keybuzz-fix@@ ssh") :]
    nodes = [
        NodeSpec(
            f"k3s-w{i}",
            f"10.0.0.11{i}",
            f"10.42.{i}.0/24",
            public_ip=f"203.0.113.1{i}",
            public_nic="eth0",
            backend="wireguard",
            vx_mtu=1370,
            ufw=ufw,
        )
        for i in range(3)
    ]
    code, data = run(World(nodes), tmp_path)
    assert code == 0 and problems(data) == []
    assert "wireguard" in finding(data, "backend")["summary"]
    assert finding(data, "ufw-blocks-vxlan")["status"] == "ok"


def test_interface_rule_on_the_private_nic_lets_vxlan_in(tmp_path: Path) -> None:
    """Issue 15's case: ``allow in on enp7s0 from 10.0.0.0/16`` on a node whose private IP is on enp7s0."""
    added = (DATA / "realworld" / "diagnose-iface-allow" / "ufw-added.txt").read_text().splitlines()[1:]
    nodes = three_nodes(ufw=ufw_text(added))
    code, data = run(World(nodes), tmp_path)
    assert code == 0 and problems(data) == [], [(f["cause"], f["evidence"]) for f in data["findings"] if f["problem"]]
    rules = ruleset(ufw_text(added))
    v = ufw_verdict(rules, Flow("10.0.0.3", "udp", 8472, "enp7s0", "10.0.0.2"))
    assert v.allowed and v.decided_by == "user.rules rule 2: ufw allow in on enp7s0 from 10.0.0.0/16"
    assert not ufw_verdict(rules, Flow("10.0.0.3", "udp", 8472, "eth1", "10.0.0.2")).allowed  # another NIC


def ruleset(ufw: str) -> Ruleset:
    """The rules a capture's UFW part gives the verdict model."""
    rules = parse_capture(ufw).ufw_rules
    assert rules is not None
    return rules


def test_ufw_verdict_asks_the_model_first_match_wins_and_limit() -> None:
    rules = ruleset(ufw_text(["ufw allow from 10.0.0.0/16", "ufw deny 8472/udp", "ufw limit 6443/tcp", "ufw limit 53"]))
    assert (
        ufw_verdict(rules, Flow("10.0.0.3", "udp", 8472, "eth0")).decided_by
        == "user.rules rule 1: ufw allow from 10.0.0.0/16"
    )
    denied = ufw_verdict(rules, Flow("192.0.2.9", "udp", 8472, "eth0"))
    assert not denied.allowed and denied.decided_by == "user.rules rule 2: ufw deny 8472/udp"
    assert denied.rule is not None and denied.rule.action == "deny"
    limited = ufw_verdict(rules, Flow("192.0.2.9", "tcp", 6443, "eth0"))
    assert limited.allowed and limited.throttled  # a TCP connection is new once
    udp = ufw_verdict(rules, Flow("192.0.2.9", "udp", 53, "cni0"))
    assert not udp.allowed and udp.throttled and "5 get in per 30 s" in udp.decided_by  # every datagram is new
    assert ufw_verdict(rules, Flow("192.0.2.9", "tcp", 80, "eth0")).decided_by == "default incoming policy: deny"
    assert ufw_verdict(ruleset(ufw_text([], default="allow")), Flow("192.0.2.9", "udp", 8472, "eth0")).allowed
    assert ufw_verdict(
        ruleset(ufw_text(["ufw deny 8472/udp"], active=False)), Flow("10.0.0.3", "udp", 8472, "eth0")
    ).allowed


def test_ufw_verdict_judges_only_the_part_of_a_flow_from_its_source() -> None:
    """A rule for half the private network: the model splits the flow, the verdict is the source's part."""
    rules = ruleset(ufw_text(["ufw allow from 10.0.0.0/25 to any port 8472 proto udp"]))
    assert ufw_verdict(rules, Flow("10.0.0.3", "udp", 8472, "eth0", "10.0.0.2")).allowed
    outside = ufw_verdict(rules, Flow("10.0.0.200", "udp", 8472, "eth0", "10.0.0.2"))
    assert not outside.allowed and outside.decided_by == "default incoming policy: deny"
    unknown = ufw_verdict(rules, Flow(None, "udp", 8472, "eth0"))  # source not known: every part counts
    assert not unknown.allowed and "partly" in unknown.decided_by


def test_ufw_verdict_of_an_ipv6_rule_leaves_ipv4_to_the_policy() -> None:
    """``ufw allow from 2001:db8::/32 to any port 8472 proto udp`` is written to user6.rules only."""
    rules = ruleset(ufw_text(["ufw allow from 2001:db8::/32 to any port 8472 proto udp"]))
    assert ufw_verdict(rules, Flow("2001:db8::3", "udp", 8472, "eth0")).allowed
    assert not ufw_verdict(rules, Flow("10.0.0.3", "udp", 8472, "eth0")).allowed


# -- other members of each kind ------------------------------------------------------------------------


def test_ufw_blocks_rke2s_port_4789_though_8472_is_open(tmp_path: Path) -> None:
    ufw = ufw_text(
        [
            "ufw allow 22/tcp",
            "ufw allow from 10.0.0.0/16 to any port 8472 proto udp",
            "ufw allow from 10.42.0.0/16",
            "ufw allow from 10.43.0.0/16",
        ]
    )
    nodes = three_nodes(vx_dev="flannel.4096", vni=4096, vx_port=4789, ufw=ufw)
    code, data = run(World(nodes, overlay_fails, web_on=["k3s-worker-02"]), tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["status"]) == ("ufw-blocks-vxlan", "confirmed")
    assert any(
        "udp/4789" in line and "default incoming policy: deny" in line for line in top["evidence"]["k3s-master-01"]
    )


def test_ufw_limit_on_the_vxlan_port_throttles_the_overlay(tmp_path: Path) -> None:
    """``ufw limit 8472/udp``: each VXLAN datagram is a new flow to conntrack, so 5 get in per 30 s per peer."""
    ufw = ufw_text(["ufw allow 22/tcp", "ufw limit 8472/udp", "ufw allow from 10.42.0.0/16"])
    nodes = three_nodes(ufw=ufw)
    code, data = run(World(nodes, overlay_fails, web_on=["k3s-worker-02"]), tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["status"], code) == ("ufw-blocks-vxlan", "confirmed", 1)
    assert any(
        "udp/8472" in line and "throttled by user.rules rule 2: ufw limit 8472/udp" in line
        for line in top["evidence"]["k3s-master-01"]
    )


def test_ufw_reject_of_6443_from_pods_on_a_multi_node_cluster(tmp_path: Path) -> None:
    ufw = ufw_text(["ufw allow 22/tcp", "ufw allow from 10.0.0.0/16", "ufw reject 6443/tcp"])
    nodes = three_nodes()
    nodes[0].ufw = ufw

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        return "fail" if kind == "api" and where == "pod" and src is nodes[0] else "ok"

    code, data = run(World(nodes, outcome), tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["hosts"]) == ("host-firewall-blocks-pods", ["k3s-master-01"])
    assert any("ufw reject 6443/tcp" in line for line in top["evidence"]["k3s-master-01"])


def test_an_nftables_table_that_drops_vxlan_is_another_firewall(tmp_path: Path) -> None:
    ruleset = [
        "table inet filter {",
        "chain input {",
        "type filter hook input priority filter; policy drop;",
        "ct state established,related accept",
        'iif "lo" accept',
        "meta l4proto icmp accept",
        'iifname "cni0" accept',
        "tcp dport 22 accept",
        "}",
        "}",
    ]
    nodes = three_nodes(nft=ruleset)

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if kind == "api" and remote(src, backends):
            return "fail"  # 6443 is not allowed either
        return overlay_fails(src, where, kind, target, backends)

    code, data = run(World(nodes, outcome, web_on=["k3s-worker-02"]), tmp_path)
    top = data["findings"][0]
    assert top["cause"] == "other-firewall" and top["status"] == "confirmed"
    assert "$ nft list ruleset" in top["evidence"]["k3s-master-01"]


def test_ufw_routed_policy_drop_is_forward_drop_on_the_receiver_only(tmp_path: Path) -> None:
    nodes = three_nodes()
    w = World(nodes, web_on=["k3s-worker-02"], dns_on="k3s-worker-02")
    t = healthy_tables(w.pod_network, w.nat())
    t["filter"] = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]", "COMMIT"]
    nodes[2].backends = {"nft": t}

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        into = (
            bool(backends) and backends[0] is nodes[2] and kind not in ("vtep", "vtep-big", "underlay", "underlay-big")
        )
        out = src is nodes[2] and where == "pod" and remote(src, backends)
        return "fail" if into or out else "ok"

    w.outcome = outcome
    code, data = run(w, tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["status"], top["hosts"]) == ("forward-drop", "confirmed", ["k3s-worker-02"])
    assert not top["contradicts"]


def test_backend_split_the_other_way_round(tmp_path: Path) -> None:
    """The host's DROP in iptables-legacy, K3s' accepts in nf_tables."""
    nodes = three_nodes()
    w = World(nodes, web_on=["k3s-worker-02"], dns_on="k3s-worker-02")
    for n in nodes:
        legacy = {"filter": ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", "COMMIT"], "count": 3}
        n.backends = {"nft": healthy_tables(w.pod_network, w.nat()), "legacy": legacy}

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if kind.startswith(("underlay", "vtep")) or (where == "node" and not remote(src, backends)):
            return "ok"
        return "fail" if where == "pod" or remote(src, backends) else "ok"

    w.outcome = outcome
    code, data = run(w, tmp_path)
    top = data["findings"][0]
    assert top["cause"] == "iptables-backend-split", [(f["cause"], f["summary"]) for f in data["findings"][:3]]
    assert any("accepted only there" in line for lines in top["evidence"].values() for line in lines)


def test_bridge_nf_call_iptables_zero_with_a_same_node_backend(tmp_path: Path) -> None:
    nodes = three_nodes()
    nodes[1].bridge_nf = "0"

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if src is nodes[1] and where == "pod" and kind == "dns":
            return "wrong-source"
        return "fail" if src is nodes[1] and where == "pod" and kind == "nodeport" else "ok"

    code, data = run(World(nodes, outcome, dns_on="k3s-worker-01", web_on=["k3s-worker-01"]), tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["status"], top["hosts"]) == ("br-netfilter-off", "confirmed", ["k3s-worker-01"])
    assert any("reply from unexpected source" in line for line in top["evidence"]["k3s-worker-01"])


def test_vxlan_bound_to_the_public_nic_though_it_sends_from_the_private_ip(tmp_path: Path) -> None:
    nodes = three_nodes(public_nic="eth0")
    for i, n in enumerate(nodes):
        n.public_ip, n.vx_nic = f"203.0.113.{10 + i}", "eth0"
    code, data = run(World(nodes, overlay_fails, web_on=["k3s-worker-02"]), tmp_path)
    top = data["findings"][0]
    assert top["cause"] == "wrong-interface"
    assert any("bound to eth0" in line for line in top["evidence"]["k3s-master-01"])


def test_vtep_mac_changed_after_the_peers_were_programmed(tmp_path: Path) -> None:
    nodes = three_nodes()
    old = nodes[2].vtep_mac
    nodes[2].mac = "5a:9c:12:34:56:ff"  # the device now; peers still know the old one
    for n in nodes[:2]:
        n.neigh_override = {nodes[2].vtep: old}

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if kind.startswith("underlay") or kind == "api":
            return "ok"
        involved = src is nodes[2] or any(b is nodes[2] for b in backends)
        return "fail" if remote(src, backends) and involved else "ok"

    w = World(nodes, outcome, web_on=["k3s-worker-02"], dns_on="k3s-worker-01")
    d = w.write(tmp_path / "capture")
    code, data = from_dir(d)
    top = data["findings"][0]
    assert (top["cause"], top["status"], top["hosts"]) == ("vtep-mac-mismatch", "confirmed", ["k3s-worker-02"])


def test_duplicated_pod_subnet_is_a_vtep_address_problem(tmp_path: Path) -> None:
    """Two nodes given one podCIDR: both hold its VTEP address; the one the peers do not reach is cut off.

    The MAC the peers hold for that address is the other holder's: a symptom of the duplicate, not a
    moved MAC of its own.
    """
    nodes = three_nodes()
    nodes[2].pod_cidr = nodes[1].pod_cidr
    cut_off = nodes[1]

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        if kind.startswith("underlay") or not remote(src, backends):
            return "ok"
        return "fail" if src is cut_off or cut_off in backends or target == cut_off.vtep else "ok"

    code, data = run(World(nodes, outcome, web_on=["k3s-worker-02"], dns_on="k3s-master-01"), tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["status"], code) == ("vtep-address", "confirmed", 1), [
        (f["cause"], f["status"], f["summary"]) for f in data["findings"][:3]
    ]
    assert sorted(top["hosts"]) == ["k3s-worker-01", "k3s-worker-02"] and not top["contradicts"]
    assert "10.42.1.0 on k3s-worker-01 and k3s-worker-02" in top["evidence"]["k3s-worker-01"]
    assert "podCIDR" in top["fix"]
    assert finding(data, "vtep-mac-mismatch")["status"] == "ok"


def test_flannel_mtu_above_what_the_nic_carries(tmp_path: Path) -> None:
    nodes = three_nodes(vx_mtu=1450)  # FLANNEL_MTU 1450 on a 1450 NIC: 50 bytes too much for VXLAN

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        return "fail" if kind in ("pod-big", "vtep-big") and remote(src, backends) else "ok"

    code, data = run(World(nodes, outcome), tmp_path)
    f = data["findings"][0]
    assert (f["cause"], f["status"]) == ("mtu", "confirmed") and code == 1
    assert any("1450 + 50 > 1450" in line for line in f["evidence"]["k3s-master-01"])


def test_checksum_offload_on_a_nic_driver_judged_by_counters_on_a_new_kernel(tmp_path: Path) -> None:
    nodes = three_nodes(kernel="6.8.0-51-generic", driver="vmxnet3", nic="ens192")
    for n in nodes:
        n.csum = (11, 19)
    code, data = run(World(nodes, overlay_fails, web_on=["k3s-worker-02"]), tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["status"]) == ("checksum-offload", "confirmed")
    assert "UdpInCsumErrors 11 -> 19" in top["evidence"]["k3s-master-01"]
    assert any("vmxnet3" in line for line in top["evidence"]["k3s-master-01"])


def test_the_offload_on_an_old_kernel_without_a_rising_counter_is_not_the_cause(tmp_path: Path) -> None:
    nodes = three_nodes(kernel="4.15.0-33-generic")
    code, data = run(World(nodes, overlay_fails, web_on=["k3s-worker-02"]), tmp_path)
    assert finding(data, "checksum-offload")["status"] == "ok"
    assert data["findings"][0]["cause"] == "underlay-drops-vxlan"


@pytest.mark.parametrize(
    ("release", "affected"),
    [
        ("3.10.0-1160.el7.x86_64", True),
        ("4.14.180", True),
        ("4.14.181", False),
        ("4.19.122-1", True),
        ("4.19.123-1-cloud-amd64", False),
        ("5.4.40", True),
        ("5.4.41-generic", False),
        ("5.6.12", True),
        ("5.6.13", False),
        ("5.7", False),
        ("5.15.0-91-generic", False),
        ("6.8.0-49-generic", True),  # flannel v0.26 on 6.8: flannel-io/flannel#2152
        ("6.18.44-fc-v657", False),
        ("", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_the_checksum_bugs_kernel_range_counts_the_backports(release: str | None, affected: bool | None) -> None:
    assert affected_kernel(release) is affected


def test_bad_checksum_lines_count_only_for_the_overlay_port(tmp_path: Path) -> None:
    other = [
        "[ 9102.000017] UDP: bad checksum. From 198.51.100.7:5353 to 10.0.0.3:5353 ulen 40",
        "[ 9103.000017] enp7s0: link up 84721",
    ]
    vxlan = "[ 8812.301244] UDP: bad checksum. From 10.0.0.2:52312 to 10.0.0.3:8472 ulen 110"
    nodes = three_nodes(kernel="5.4.0-26-generic")
    nodes[1].kernel_log = other
    _, data = run(World(nodes, overlay_fails, web_on=["k3s-worker-02"]), tmp_path / "other")
    assert finding(data, "checksum-offload")["status"] == "ok"
    nodes[1].kernel_log = [*other, vxlan]
    _, data = run(World(nodes, overlay_fails, web_on=["k3s-worker-02"]), tmp_path / "vxlan")
    f = finding(data, "checksum-offload")
    assert f["status"] == "confirmed" and vxlan in f["evidence"]["k3s-worker-01"]
    assert not any(line in f["evidence"]["k3s-worker-01"] for line in other)


def test_a_cloud_filter_dropping_wireguard(tmp_path: Path) -> None:
    nodes = three_nodes(backend="wireguard")
    code, data = run(World(nodes, overlay_fails, web_on=["k3s-worker-02"]), tmp_path)
    top = data["findings"][0]
    assert top["cause"] == "underlay-drops-vxlan" and "51820" in top["fix"]


def test_coredns_crash_looping_without_a_loop(tmp_path: Path) -> None:
    nodes = three_nodes()
    pod = {
        "kind": "Pod",
        "metadata": {"name": "coredns-1", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "status": {"containerStatuses": [{"restartCount": 9, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]},
    }
    eps = {"kind": "Endpoints", "metadata": {"name": "kube-dns", "namespace": "kube-system"}, "subsets": []}

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        return "fail" if kind.startswith("dns") else "ok"

    code, data = run(World(nodes, outcome, dns_endpoints=False), tmp_path, [pod, eps])
    top = data["findings"][0]
    assert (top["cause"], top["status"]) == ("coredns", "confirmed")
    assert "forwarding loop" not in top["summary"]


def test_a_network_policy_that_lets_no_dns_into_coredns(tmp_path: Path) -> None:
    policy = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "lockdown", "namespace": "kube-system"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 9153}]}]},
    }

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        return "fail" if where == "pod" and kind.startswith("dns") else "ok"

    code, data = run(World(three_nodes(), outcome), tmp_path, [policy])
    top = data["findings"][0]
    assert (top["cause"], top["status"]) == ("network-policy", "confirmed")
    assert top["evidence"]["cluster"] == [
        "$ kubectl -n kube-system get networkpolicy lockdown -o yaml",
        "selects CoreDNS; no ingress rule allows 53",
    ]
    assert "53/udp" in top["fix"]


def test_kernel_upgraded_and_not_rebooted(tmp_path: Path) -> None:
    nodes = three_nodes()
    nodes[1].lib_modules, nodes[1].bridge_nf, nodes[1].modules = False, None, ("nf_conntrack",)
    nodes[1].backend = "none"

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        involved = src is nodes[1] or any(b is nodes[1] for b in backends)
        return "fail" if involved and not kind.startswith("underlay") else "ok"

    code, data = run(World(nodes, outcome, dns_on="k3s-worker-01"), tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["status"], top["hosts"]) == ("kernel-modules", "confirmed", ["k3s-worker-01"])
    assert top["evidence"]["k3s-worker-01"][:2] == [
        "$ ls -d /lib/modules/$(uname -r)",
        "No such file or directory (running 6.8.0-49-generic)",
    ]
    assert top["fix"].startswith("Reboot k3s-worker-01 into the installed kernel")


def test_missing_tools_are_not_checked_never_ok(tmp_path: Path) -> None:
    nodes = three_nodes(tools=("ip", "ping"))
    w = World(nodes)
    d = w.write(tmp_path / "capture")
    for n in nodes:  # no iptables at all on these nodes: drop those sections
        text = (d / f"{n.name}.txt").read_text()
        kept, skip = [], False
        for line in text.splitlines():
            if line.startswith("@@keybuzz-fix@@ "):
                skip = line.split()[1].startswith("iptables")
            if not skip:
                kept.append(line)
        (d / f"{n.name}.txt").write_text("\n".join(kept) + "\n")
    code, data = from_dir(d)
    for cause in ("forward-drop", "iptables-backend-split", "other-firewall"):
        assert finding(data, cause)["status"] == "not checked", finding(data, cause)


def test_a_node_without_its_capture_is_reported_and_fails_the_run(tmp_path: Path) -> None:
    d = World(three_nodes()).write(tmp_path / "capture")
    (d / "k3s-worker-02.txt").unlink()
    code, data = from_dir(d)
    assert code == 1
    assert {h["hostname"]: h["status"] for h in data["hosts"]}["k3s-worker-02"] == "failed"


def test_text_output_shows_the_matrix_the_cause_the_evidence_and_the_fix() -> None:
    result = CliRunner().invoke(app, ["diagnose", "--from-dir", str(OUTAGES / "31-inter-node-8472-not-open")])
    assert result.exit_code == 1
    out = result.output
    assert "1. ufw-blocks-vxlan" in out and "confirmed" in out
    assert "fix:" in out and "8472" in out
    assert "not healthy" in out


def test_collect_script_and_from_dir_on_the_command_line(tmp_path: Path) -> None:
    servers = tmp_path / "servers.tsv"
    servers.write_text(
        "ENV\tHOSTNAME\tIP_PRIVEE\tUSER_SSH\tROLE\tSUBROLE\n"
        "prod\tk3s-master-01\t10.0.0.2\troot\tk3s\tmaster\n"
        "prod\tk3s-worker-01\t10.0.0.3\troot\tk3s\tworker\n"
        "prod\tdb-01\t10.0.0.9\troot\tdb\tpostgres\n"
    )
    result = CliRunner().invoke(app, ["diagnose", "--collect-script", str(servers)])
    assert result.exit_code == 0 and result.stdout.startswith("#!/bin/sh\n")
    assert "NODES='k3s-master-01=10.0.0.2 k3s-worker-01=10.0.0.3'" in result.stdout  # the K3s nodes only
    assert CliRunner().invoke(app, ["diagnose"]).exit_code == 2
    assert CliRunner().invoke(app, ["diagnose", str(servers), "--from-dir", str(tmp_path)]).exit_code == 2
    missing = CliRunner().invoke(app, ["diagnose", "--from-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a directory" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(app, ["diagnose", "--from-dir", str(empty)]).exit_code == 2


def test_a_vtep_unreachable_over_the_underlay(tmp_path: Path) -> None:
    nodes = three_nodes()

    def outcome(src: NodeSpec, where: str, kind: str, target: str, backends: list[NodeSpec]) -> str:
        cut = nodes[2]  # no route between it and the others' private addresses
        involved = src is cut or any(b is cut for b in backends)
        if kind == "api":
            return "fail" if src is cut else "ok"
        return "fail" if involved and (remote(src, backends) or kind.startswith("underlay")) else "ok"

    code, data = run(World(nodes, outcome, web_on=["k3s-worker-02"]), tmp_path)
    top = data["findings"][0]
    assert top["cause"] == "vtep-address" and "k3s-worker-02" in top["hosts"]
    assert any("unreachable from" in line for lines in top["evidence"].values() for line in lines)


@pytest.mark.parametrize("report", sorted((OUTAGES / "reports").glob("*.yaml")), ids=lambda p: p.stem)
def test_captures_of_the_older_node_probe_still_show_their_devices(report: Path, tmp_path: Path) -> None:
    """A capture saved with the earlier node probe (no probes): devices, offloads, UFW and log are read, no crash."""
    import yaml

    data = yaml.safe_load(report.read_text())
    d = tmp_path / "old"
    d.mkdir()
    nodes = [
        {
            "kind": "Node",
            "metadata": {"name": n["name"], "annotations": n["annotations"]},
            "spec": {"podCIDR": n["pod_cidr"]},
            "status": {"addresses": [{"type": "InternalIP", "address": n["internal_ip"]}]},
        }
        for n in data["cluster"]["api_nodes"]
    ]
    (d / "nodes.yaml").write_text(yaml.safe_dump({"kind": "List", "items": nodes}))
    for n in data["nodes"]:
        (d / f"{n['host']['name']}.txt").write_text(n["node_probe"])
    code, out = from_dir(d)
    assert code in (0, 1) and out["paths"] == []
    backend = finding(out, "backend")["summary"]
    assert "vxlan" in backend
    if data["expected_top_finding"] == "checksum-offload" and "flannel.4096" not in report.read_text():
        assert finding(out, "checksum-offload")["status"] in ("likely", "confirmed", "not checked")


def test_a_v6_only_leftover_rule_lets_no_vxlan_in_over_ipv4(tmp_path: Path) -> None:
    """realworld ufw-v6-only-leftover-overlay: ``allow 8472/udp`` only in user6.rules; IPv4 VXLAN meets the default."""
    d = DATA / "realworld" / "ufw-v6-only-leftover-overlay"

    def bar(name: str) -> str:
        return "".join(f"|{line}\n" for line in (d / name).read_text().splitlines())

    ufw = (
        "@@keybuzz-fix@@ ssh\n10.0.0.99 51234 10.0.0.2 22\n"
        f"@@keybuzz-fix@@ defaults\n{bar('ufw.default')}@@keybuzz-fix@@ kernel-ipv6\nyes\n"
        "@@keybuzz-fix@@ chains\ninput 0\noutput 0\nforward 0\n"
        f"@@keybuzz-fix@@ rules\n{bar('user.rules')}@@keybuzz-fix@@ rules6\n{bar('user6.rules')}@@keybuzz-fix@@ end\n"
    )
    code, data = run(World(three_nodes(ufw=ufw), overlay_fails, web_on=["k3s-worker-02"]), tmp_path)
    top = data["findings"][0]
    assert (top["cause"], top["status"]) == ("ufw-blocks-vxlan", "confirmed")
    assert any(
        "udp/8472" in line and "default incoming policy: deny" in line for line in top["evidence"]["k3s-worker-01"]
    )


@pytest.mark.parametrize(
    ("route", "shown"),
    [("", "no route to the other nodes' pod subnets"), ("{cidr} via 10.0.0.1 dev {nic}\n", "host-gw needs via")],
    ids=["no-route", "via-the-gateway"],
)
def test_host_gw_across_a_routed_network_is_the_backend(route: str, shown: str, tmp_path: Path) -> None:
    """host-gw needs every peer as a direct next hop: on a routed private network (Hetzner's) it cannot work."""
    nodes = three_nodes(backend="host-gw")
    w = World(nodes, overlay_fails, web_on=["k3s-worker-02"])
    d = w.write(tmp_path / "capture")
    for n in nodes:
        path = d / f"{n.name}.txt"
        text = path.read_text()
        for p in nodes:
            text = text.replace(f"{p.pod_cidr} via {p.ip} dev {n.nic}\n", route.format(cidr=p.pod_cidr, nic=n.nic))
        path.write_text(text)
    code, data = from_dir(d)
    top = data["findings"][0]
    assert top["cause"] == "backend" and top["problem"], [(f["cause"], f["summary"]) for f in data["findings"][:3]]
    assert any(shown in line for lines in top["evidence"].values() for line in lines)


def test_a_healthy_cluster_names_its_backend_first(tmp_path: Path) -> None:
    code, data = run(World(three_nodes(backend="wireguard")), tmp_path)
    assert code == 0 and data["findings"][0]["cause"] == "backend"


# -- what the report says: never "healthy" over what was not checked, identical findings once --------------


def without_dns_tools(directory: Path) -> Path:
    """Rewrite each node's DNS probes as the collect script prints them on a node with no dig, nslookup, python3."""
    for f in directory.glob("*.txt"):
        out, skip = [], False
        for line in f.read_text().splitlines():
            if line.startswith("@@keybuzz-fix@@ "):
                parts = line.split()
                skip = parts[1] == "probe" and parts[3] in ("dns", "dns-pod")
                out.append(line)
                if skip:
                    out += ["$ echo notool", "notool", "rc=0"]
            elif not skip:
                out.append(line)
        f.write_text("\n".join(out) + "\n")
    return directory


def eight_nodes(**kw: object) -> list[NodeSpec]:
    names = [f"k8s-master-0{i}" for i in (1, 2, 3)] + [f"k8s-worker-0{i}" for i in (1, 2, 3, 4, 5)]
    return [NodeSpec(n, f"10.0.0.{i + 2}", f"10.42.{i}.0/24", **kw) for i, n in enumerate(names)]  # type: ignore[arg-type]


def text_of(directory: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["diagnose", "--from-dir", str(directory)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_dns_not_probed_is_never_reported_healthy(tmp_path: Path) -> None:
    d = without_dns_tools(World(eight_nodes()).write(tmp_path / "capture"))
    code, out = text_of(d)
    verdict = out.strip().splitlines()[-1]
    assert not verdict.startswith("healthy"), verdict
    assert "not everything was checked" in verdict
    assert "pod → DNS svc not probed on k8s-master-01..03, k8s-worker-01..05 (no tool)" in verdict
    # the eight nodes' "not probed" notes are one line naming the hosts once
    notes = [line for line in out.splitlines() if "not probed (no tool)" in line]
    assert notes == [
        "k8s-master-01..03, k8s-worker-01..05: not probed (no tool): pod → DNS svc, pod → DNS pod, "
        "node → DNS svc, node → DNS pod"
    ], notes
    code_json, data = from_dir(d)
    assert code_json == code == 0  # nothing was seen failing: exit 0, but the report says what it did not check
    assert "node → DNS pod not probed on k8s-master-01..03, k8s-worker-01..05 (no tool)" in data["not_checked"]


def test_a_fully_checked_healthy_cluster_says_healthy_with_nothing_left_unchecked(tmp_path: Path) -> None:
    d = World(three_nodes()).write(tmp_path / "capture", [])  # cluster.yaml too: the API side is checked
    code, out = text_of(d)
    assert code == 0
    assert out.strip().splitlines()[-1].startswith("healthy:")
    assert from_dir(d)[1]["not_checked"] == []


def test_the_same_missing_rule_on_eight_hosts_is_one_block_with_the_hosts_listed_once(tmp_path: Path) -> None:
    ufw = ufw_text(["ufw allow 22/tcp", "ufw allow from 10.42.0.0/16"])
    d = World(eight_nodes(ufw=ufw), overlay_fails, web_on=["k8s-worker-02"]).write(tmp_path / "capture")
    code, out = text_of(d)
    assert code == 1
    lines = out.splitlines()
    denied = [line for line in lines if "udp/8472" in line and "denied" in line]
    assert denied == [
        "     udp/8472 from another node to this node on enp7s0 (INPUT): denied by default incoming policy: deny (×7)"
    ], denied
    assert lines.count("   k8s-master-01..03, k8s-worker-01..05") == 1
    # -o json keeps every host's evidence as captured
    _, data = from_dir(d)
    evidence = finding(data, "ufw-blocks-vxlan")["evidence"]
    assert len(evidence) == 8 and all(sum("denied" in x for x in v) == 7 for v in evidence.values())
    assert (
        "udp/8472 from 10.0.0.3 to 10.0.0.2 on enp7s0 (INPUT): denied by default incoming policy: deny"
        in (evidence["k8s-master-01"])
    )


def test_hosts_that_saw_different_things_keep_their_own_blocks(tmp_path: Path) -> None:
    closed = ufw_text(["ufw allow 22/tcp", "ufw allow from 10.42.0.0/16"])
    nodes = eight_nodes(ufw=closed)
    nodes[7] = NodeSpec(nodes[7].name, nodes[7].ip, nodes[7].pod_cidr, ufw=closed, nic="ens10")
    d = World(nodes, overlay_fails, web_on=["k8s-worker-02"]).write(tmp_path / "capture")
    code, out = text_of(d)
    assert "   k8s-master-01..03, k8s-worker-01..04" in out.splitlines()
    assert "   k8s-worker-05" in out.splitlines()


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        (["k8s-worker-03", "k8s-worker-01", "k8s-worker-02"], "k8s-worker-01..03"),
        (["w1", "w2"], "w1, w2"),
        (["k8s-worker-01", "k8s-worker-03", "k8s-worker-04", "k8s-worker-05"], "k8s-worker-01, k8s-worker-03..05"),
        (["db", "node9", "node10", "node11"], "db, node10, node11, node9"),
        (["a", "a", "cluster"], "a, cluster"),
    ],
)
def test_host_lists_fold_numbered_runs_and_name_each_host_once(names: list[str], shown: str) -> None:
    assert host_list(names) == shown


def test_the_path_matrix_of_eight_nodes_keeps_every_name_whole_at_100_columns(tmp_path: Path) -> None:
    names = [f"k8s-master-0{i}" for i in range(1, 4)] + [f"k8s-worker-0{i}" for i in range(1, 6)]
    nodes = [NodeSpec(name, f"10.0.0.{i + 2}", f"10.42.{i}.0/24") for i, name in enumerate(names)]
    capture = World(nodes).write(tmp_path / "capture")
    result = CliRunner().invoke(app, ["diagnose", "--from-dir", str(capture)], env={"COLUMNS": "100"})
    lines = result.stdout.splitlines()
    assert "…" not in result.stdout
    table = [line for line in lines if line[:1] in "┏┃┡│└"]  # text lines stay whole in a pipe; tables fit
    assert table and all(len(line) <= 100 for line in table), max(table, key=len)
    headers = [line for line in lines if "path" in line and "k8s-" in line]
    assert len(headers) >= 2  # eight nodes do not fit 100 columns: the matrix comes in parts
    assert sorted(n for h in headers for n in h.replace("┃", " ").split() if n.startswith("k8s-")) == sorted(names)
