"""The five checks and the ranking, on facts parsed from captured node outputs."""

from dataclasses import replace
from pathlib import Path

import pytest

from keybuzz_fix.checks.diagnose import (
    ApiNode,
    Cause,
    Certainty,
    ClusterView,
    Finding,
    NodeView,
    api_nodes,
    failing_hosts,
    find_causes,
    healthy,
    matrix,
    rank,
)
from keybuzz_fix.config import OverlayConfig
from keybuzz_fix.hosts.flannel import facts as nodefacts
from keybuzz_fix.hosts.flannel.facts import DnsResult, PeerPings, PingResult
from keybuzz_fix.hosts.flannel.plan import overlay_rules
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.diagnosis import finding_json

DATA = Path(__file__).parent.parent / "data" / "diagnose"
LAB_RULES = overlay_rules(OverlayConfig("198.18.0.0/24", 8472, "198.19.0.0/17", "198.19.128.0/20"))
OK, LOST = PingResult(3, 3), PingResult(3, 0, "3 packets transmitted, 0 received, 100% packet loss")


def host(i: int) -> Host:
    return Host(f"k8s-worker-0{i}", f"198.18.0.1{i}", None, "root", "prod", "k3s", "worker")


def lab_facts(i: int, *, rules: bool = True) -> nodefacts.NodeFacts:
    """The captured lab probe, moved to host i (198.18.0.1i, podCIDR 198.19.(i+2).0/24)."""
    text = (DATA / "node-probe-lab.txt").read_text()
    text = text.replace("198.18.0.11", f"198.18.0.1{i}").replace("198.19.3.0", f"198.19.{i + 2}.0")
    if not rules:
        text = text.replace("ufw allow from 198.18.0.0/24 to any port 8472 proto udp\n", "")
    facts = nodefacts.parse_node_facts(text)
    if rules:
        facts = replace(facts, ufw=replace(facts.ufw, rules=(*facts.ufw.rules, *LAB_RULES[1:])))  # type: ignore[arg-type]
    return facts


def cluster(n: int = 3, **public: str) -> ClusterView:
    nodes = tuple(
        ApiNode(
            f"k8s-worker-0{i}", f"198.18.0.1{i}", public.get(f"w{i}", f"198.18.0.1{i}"), "vxlan", f"198.19.{i + 2}.0/24"
        )
        for i in range(1, n + 1)
    )
    return ClusterView(nodes)


def views(n: int = 3, *, ok: bool = True, rules: bool = True, dns: DnsResult | None = None) -> list[NodeView]:
    out = []
    for i in range(1, n + 1):
        names = tuple(f"k8s-worker-0{j}" for j in range(1, n + 1) if j != i)
        pings = PeerPings({t: OK if ok else LOST for t in names}, {t: PingResult(2, 2) for t in names}, dns=dns)
        out.append(NodeView(host(i), lab_facts(i, rules=rules), pings, targets=names))
    return out


def by_check(findings: list[Finding]) -> dict[Cause, Finding]:
    return {f.check: f for f in findings}


def test_healthy_lab_overlay():
    findings = find_causes(views(), cluster(), LAB_RULES, 8472)
    assert healthy(findings)
    assert {f.status for f in findings} == {Certainty.OK}
    assert by_check(findings)[Cause.OVERLAY].summary.startswith("overlay healthy: 6/6 paths answer")


def test_ufw_dropping_vxlan_is_confirmed_on_every_node_and_ranked_first():
    findings = find_causes(views(ok=False, rules=False), cluster(), LAB_RULES, 8472)
    assert not healthy(findings)
    first = findings[0]
    assert (first.check, first.status) == (Cause.UFW, Certainty.CONFIRMED)
    assert first.title == "UFW drops VXLAN" and first.hosts == ("k8s-worker-01", "k8s-worker-02", "k8s-worker-03")
    evidence = first.evidence["k8s-worker-01"]
    assert evidence[0] == "ufw active, default deny (incoming)"
    assert "missing rule: allow 8472/udp from 198.18.0.0/24" in evidence
    assert "missing rule: allow any port from 198.19.0.0/17" in evidence
    assert first.fix.startswith("keybuzz-fix overlay servers.tsv")
    assert findings[1].check is Cause.OVERLAY and findings[1].status is Certainty.CONFIRMED
    assert findings[1].summary.startswith("6/6 paths fail")
    assert [f.status for f in findings[2:]] == [Certainty.OK] * 3


def test_wrong_public_ip_annotation_is_suspected_when_the_probe_passes():
    findings = find_causes(views(), cluster(w3="203.0.113.13"), LAB_RULES, 8472)
    f = findings[0]
    assert (f.check, f.status, f.hosts) == (Cause.INTERFACE, Certainty.SUSPECTED, ("k8s-worker-03",))
    assert "Flannel announces 203.0.113.13, not the private address 198.18.0.13" in f.evidence["k8s-worker-03"]
    assert "k8s-worker-03: --flannel-iface=eth0 --node-ip=198.18.0.13" in f.fix
    assert not healthy(findings)


def test_a_node_with_flannel_on_the_public_interface():
    hetzner = Host("k8s-master-01", "10.0.0.2", "203.0.113.10", "root", "prod", "k3s", "master")
    facts = nodefacts.parse_node_facts((DATA / "node-probe-hetzner-wrong-iface.txt").read_text())
    pings = PeerPings({"k8s-master-02": LOST}, {})
    node = NodeView(hetzner, facts, pings, targets=("k8s-master-02",))
    other = NodeView(
        Host("k8s-master-02", "10.0.0.3", None, "root", "prod", "k3s", "master"),
        error="cannot connect to 10.0.0.3:22: timed out",
    )
    api = ClusterView((ApiNode("k8s-master-01", "10.0.0.2", "203.0.113.10", "vxlan", "10.42.0.0/24"),))
    rules = overlay_rules(OverlayConfig("10.0.0.0/16", 8472, "10.42.0.0/16", "10.43.0.0/16"))
    found = by_check(find_causes([node, other], api, rules, 8472))

    iface = found[Cause.INTERFACE]
    assert iface.status is Certainty.CONFIRMED and iface.hosts == ("k8s-master-01",)
    assert "flannel.1 sends from 203.0.113.10, not from 10.0.0.2" in iface.evidence["k8s-master-01"]
    assert "flannel.1 is bound to eth0; the private interface is enp7s0" in iface.evidence["k8s-master-01"]
    assert "k8s-master-01: --flannel-iface=enp7s0 --node-ip=10.0.0.2" in iface.fix
    assert iface.not_checked == {"k8s-master-02": "cannot connect to 10.0.0.3:22: timed out"}

    mtu = found[Cause.MTU]
    assert mtu.status is Certainty.CONFIRMED
    assert mtu.evidence["k8s-master-01"] == (
        "enp7s0 MTU 1450 (so at most 1400 inside VXLAN)",
        "FLANNEL_MTU=1450 in /run/flannel/subnet.env",
        "flannel.1 MTU 1450",
    )
    assert "k8s-master-01: ≤ 1400" in mtu.fix

    offload = found[Cause.OFFLOAD]
    assert offload.status is Certainty.CONFIRMED  # the kernel log shows it
    assert offload.evidence["k8s-master-01"][0] == "kernel log: 1 bad checksum line(s) for port 8472"

    ufw = found[Cause.UFW]
    assert ufw.status is Certainty.CONFIRMED
    assert "missing rule: allow 8472/udp from 10.0.0.0/16" in ufw.evidence["k8s-master-01"]
    assert found[Cause.OVERLAY].status is Certainty.CONFIRMED


def test_missing_tools_are_not_checked_never_a_pass():
    bare = Host("k8s-worker-09", "10.0.0.5", None, "root", "prod", "k3s", "worker")
    facts = nodefacts.parse_node_facts((DATA / "node-probe-bare.txt").read_text())
    node = NodeView(bare, facts, PeerPings({}, {}, ping_missing=True), targets=())
    found = by_check(find_causes([node], ClusterView(error="no kubeconfig"), LAB_RULES, 8472))
    assert found[Cause.UFW].status is Certainty.NOT_CHECKED
    assert "ufw is not installed" in found[Cause.UFW].not_checked["k8s-worker-09"]
    assert found[Cause.INTERFACE].status is Certainty.NOT_CHECKED  # no API, no flannel.1
    assert found[Cause.MTU].status is Certainty.NOT_CHECKED
    assert found[Cause.OVERLAY].status is Certainty.NOT_CHECKED
    assert found[Cause.OVERLAY].not_checked == {"k8s-worker-09": "ping is not installed"}
    assert found[Cause.OFFLOAD].status is Certainty.OK  # kernel 5.15: fixed, whatever ethtool says
    assert not healthy(list(found.values()))


def test_old_kernel_with_offload_on_is_suspected_and_dns_failure_confirms_it():
    nodes = views(dns=DnsResult(False, "dig: ;; connection timed out; no servers could be reached"))
    nodes[0] = replace(nodes[0], facts=replace(nodes[0].facts, kernel="5.4.0-150-generic"))  # type: ignore[arg-type]
    found = by_check(find_causes(nodes, replace(cluster(), dns_ip="198.19.128.10"), LAB_RULES, 8472))
    offload = found[Cause.OFFLOAD]
    assert offload.status is Certainty.CONFIRMED and offload.hosts == ("k8s-worker-01",)
    assert offload.evidence["k8s-worker-01"][:2] == (
        "kernel 5.4.0-150-generic is older than 5.7",
        "tx-checksum-ip-generic: on (flannel.1)",
    )
    assert "--checksum-offload-off" in offload.fix
    assert found[Cause.OVERLAY].status is Certainty.CONFIRMED
    assert (
        "DNS through 198.19.128.10: dig: ;; connection timed out" in found[Cause.OVERLAY].evidence["k8s-worker-01"][0]
    )

    nodes = views()
    nodes[0] = replace(nodes[0], facts=replace(nodes[0].facts, kernel="5.4.0-150-generic"))  # type: ignore[arg-type]
    assert by_check(find_causes(nodes, cluster(), LAB_RULES, 8472))[Cause.OFFLOAD].status is Certainty.SUSPECTED


def test_full_size_pings_failing_confirm_an_mtu_problem():
    nodes = views()
    env = dict(nodes[1].facts.subnet_env or {}, FLANNEL_MTU="1480")  # type: ignore[union-attr]
    nodes[1] = replace(nodes[1], facts=replace(nodes[1].facts, subnet_env=env))  # type: ignore[arg-type]
    found = by_check(find_causes(nodes, cluster(), LAB_RULES, 8472))
    assert found[Cause.MTU].status is Certainty.SUSPECTED and found[Cause.MTU].hosts == ("k8s-worker-02",)
    pings = nodes[0].pings
    assert pings is not None
    nodes[0] = replace(nodes[0], pings=replace(pings, big={"k8s-worker-02": PingResult(2, 0), "k8s-worker-03": OK}))
    found = by_check(find_causes(nodes, cluster(), LAB_RULES, 8472))
    assert found[Cause.MTU].status is Certainty.CONFIRMED
    assert matrix(nodes)["k8s-worker-01"] == {"k8s-worker-01": "self", "k8s-worker-02": "mtu", "k8s-worker-03": "ok"}
    assert found[Cause.OVERLAY].status is Certainty.CONFIRMED


def test_matrix_and_failing_hosts():
    nodes = views()
    pings = nodes[2].pings
    assert pings is not None
    nodes[2] = replace(nodes[2], pings=replace(pings, small={"k8s-worker-01": LOST, "k8s-worker-02": OK}))
    nodes.append(NodeView(host(4), error="cannot connect"))
    grid = matrix(nodes)
    assert grid["k8s-worker-03"] == {
        "k8s-worker-01": "fail",
        "k8s-worker-02": "ok",
        "k8s-worker-03": "self",
        "k8s-worker-04": "n/a",
    }
    assert grid["k8s-worker-04"]["k8s-worker-01"] == "n/a"
    assert failing_hosts(nodes) == {"k8s-worker-01", "k8s-worker-03"}


def test_rank_orders_by_status_then_check():
    def f(check: Cause, status: Certainty) -> Finding:
        return Finding(check, status, "", "")

    ranked = rank(
        [
            f(Cause.OVERLAY, Certainty.OK),
            f(Cause.MTU, Certainty.SUSPECTED),
            f(Cause.OFFLOAD, Certainty.NOT_CHECKED),
            f(Cause.OVERLAY, Certainty.CONFIRMED),
            f(Cause.UFW, Certainty.CONFIRMED),
            f(Cause.INTERFACE, Certainty.OK),
        ]
    )
    assert [(x.check, x.status) for x in ranked] == [
        (Cause.UFW, Certainty.CONFIRMED),
        (Cause.OVERLAY, Certainty.CONFIRMED),
        (Cause.MTU, Certainty.SUSPECTED),
        (Cause.OFFLOAD, Certainty.NOT_CHECKED),
        (Cause.INTERFACE, Certainty.OK),
        (Cause.OVERLAY, Certainty.OK),
    ]


def test_api_nodes_and_matching():
    objs = [
        {
            "metadata": {
                "name": "k8s-worker-01",
                "annotations": {
                    "flannel.alpha.coreos.com/public-ip": "198.18.0.11",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                },
            },
            "spec": {"podCIDR": "198.19.3.0/24"},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "198.18.0.11"},
                    {"type": "Hostname", "address": "k8s-worker-01"},
                ]
            },
        },
        {"metadata": {"name": "renamed"}, "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.12"}]}},
    ]
    nodes = api_nodes(objs)
    assert nodes[0] == ApiNode("k8s-worker-01", "198.18.0.11", "198.18.0.11", "vxlan", "198.19.3.0/24")
    assert nodes[0].vtep_address == "198.19.3.0" and nodes[1].vtep_address is None
    view = ClusterView(nodes)
    assert view.node_for(host(1)) == nodes[0]
    assert view.node_for(host(2)) == nodes[1]  # by InternalIP
    assert view.node_for(host(3)) is None


@pytest.mark.parametrize("status", list(Certainty))
def test_finding_json_round_trip(status):
    f = Finding(Cause.UFW, status, "s", "fix", ("a",), {"a": ("x",)}, {"b": "why"})
    data = finding_json(f)
    assert data == {
        "check": "ufw-vxlan",
        "title": "UFW drops VXLAN",
        "status": status.value,
        "summary": "s",
        "hosts": ["a"],
        "evidence": {"a": ["x"]},
        "not_checked": {"b": "why"},
        "fix": "fix",
    }
