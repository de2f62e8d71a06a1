"""The collect script and the parser of what it prints, on real lab captures and on edge cases."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from keybuzz_fix.hosts.flannel.capture import parse_capture
from keybuzz_fix.hosts.flannel.collect import collect_script
from keybuzz_fix.hosts.flannel.facts import parse_features
from keybuzz_fix.hosts.flannel.outputs import Probe, parse_links, parse_probes

DATA = Path(__file__).parent.parent / "data" / "diagnose"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_a_real_capture_of_a_healthy_lab_node() -> None:
    """Printed by the script on a lab node (tests/lab/overlay_faults.py): every fact the checks need."""
    c = parse_capture(read("lab-healthy/k3s-node-01.txt"))
    assert c.complete and c.hostname == "k3s-node-01"
    assert {"ip", "ethtool", "ping", "curl", "iptables-nft-save", "iptables-legacy-save"} <= c.tools
    vx = c.vxlan()[0]
    assert (vx.name, vx.vni, vx.local, vx.dev, vx.port, vx.mtu) == ("flannel.1", 1, "198.18.1.11", "enp7s0", 8472, 1400)
    assert vx.mac == "5a:9c:12:34:56:0b"
    assert c.links["cni0"].kind == "bridge" and c.links["enp7s0"].mtu == 1450
    assert c.iface_of("198.18.1.11") == "enp7s0"
    assert c.pod == {"netns": "cni-probe", "ip": "198.19.3.2", "mtu": "1400"}  # not CoreDNS's own pod
    assert c.sysctl["net.bridge.bridge-nf-call-iptables"] == "1"
    assert c.tables["nft"].policy("FORWARD") == "ACCEPT" and (c.tables["nft"].count or 0) > 0
    assert c.features["flannel.1"]["tx-checksum-ip-generic"][0] is True
    assert c.csum_errors() == (0, 0)
    assert {(n.ip, n.mac) for n in c.neigh if n.dev == "flannel.1"} == {
        ("198.19.4.0", "5a:9c:12:34:56:0c"),
        ("198.19.5.0", "5a:9c:12:34:56:0d"),
    }
    assert set(c.fdb["flannel.1"]) == {("5a:9c:12:34:56:0c", "198.18.1.12"), ("5a:9c:12:34:56:0d", "198.18.1.13")}
    kinds = {(p.source, p.kind) for p in c.probes}
    assert {("pod", "pod"), ("pod", "pod-big"), ("pod", "api"), ("pod", "dns"), ("pod", "dns-pod")} <= kinds
    assert {("node", "underlay"), ("node", "underlay-big"), ("node", "vtep"), ("node", "vtep-big")} <= kinds
    assert all(p.result == "ok" for p in c.probes), [(p.id, p.detail) for p in c.probes if p.result != "ok"]
    assert c.ufw is not None and c.ufw.installed and not c.ufw.active


def test_a_real_capture_with_the_outer_checksum_spoiled() -> None:
    c = parse_capture(read("lab-checksum/k3s-node-02.txt"))
    before, after = c.csum_errors() or (0, 0)
    assert after > before
    assert c.kernel_log == ()  # the kernel logs nothing: only the counter moves
    assert any(p.kind == "pod" and p.result == "fail" for p in c.probes)
    assert all(p.result == "ok" for p in c.probes if p.kind.startswith("underlay"))


@pytest.mark.parametrize(
    ("output", "rc", "result", "detail"),
    [
        (["2 packets transmitted, 2 received, 0% packet loss, time 201ms"], 0, "ok", "2 received"),
        (["2 packets transmitted, 0 received, 100% packet loss, time 1001ms"], 1, "fail", "0 received"),
        (
            ["ping: local error: message too long, mtu=1450", "2 packets transmitted, 0 received, +2 errors"],
            1,
            "fail",
            "message too long",
        ),
        (["2 packets transmitted, 2 packets received, 0% packet loss"], 0, "ok", "2 packets received"),  # busybox
        (["ping: sendmsg: Operation not permitted"], 2, "fail", "not permitted"),
        (["notool"], 0, "notool", "no tool"),
    ],
)
def test_ping_results(output: list[str], rc: int, result: str, detail: str) -> None:
    p = Probe("node", "vtep", "10.42.1.0", None, "ping ...", tuple(output), rc)
    assert (p.result, detail in p.detail) == (result, True)


@pytest.mark.parametrize(
    ("output", "rc", "result"),
    [
        (
            [
                ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1",
                "kubernetes.default.svc.cluster.local. 5 IN A 10.43.0.1",
            ],
            0,
            "ok",
        ),
        ([";; communications error to 10.43.0.10#53: timed out", ";; no servers could be reached"], 9, "fail"),
        ([";; communications error to 10.43.0.10#53: connection refused"], 9, "fail"),
        ([";; reply from unexpected source: 10.42.0.3#53, expected 10.43.0.10#53"], 9, "wrong-source"),
        (["py: answer from 10.42.0.3 rcode 0 answers 1"], 0, "wrong-source"),
        (["py: answer from 10.43.0.10 rcode 0 answers 1"], 0, "ok"),
        (["py: no answer: timed out"], 9, "fail"),
        (["Server:\t\t10.43.0.10", "Name:\tkubernetes.default.svc.cluster.local", "Address: 10.43.0.1"], 0, "ok"),
        ([";; connection timed out; no servers could be reached"], 9, "fail"),
    ],
)
def test_dns_results(output: list[str], rc: int, result: str) -> None:
    assert Probe("pod", "dns", "10.43.0.10", None, "dig", tuple(output), rc).result == result


@pytest.mark.parametrize(
    ("output", "rc", "result"),
    [
        (["connect=0.000812 code=400"], 0, "ok"),
        (["connect=0.000812 code=000"], 52, "ok"),  # connected, then no HTTP: the path works
        (["connect=0.000000 code=000"], 7, "fail"),
        (["connect=0.000000 code=000"], 28, "fail"),
        ([], 0, "ok"),  # nc -z
        ([], 1, "fail"),
    ],
)
def test_tcp_results(output: list[str], rc: int, result: str) -> None:
    assert Probe("pod", "api", "10.43.0.1:443", None, "curl", tuple(output), rc).result == result


def test_missing_tools_leave_facts_unknown_never_fine() -> None:
    text = "@@keybuzz-fix@@ version\n2\n@@keybuzz-fix@@ tools\nping\n@@keybuzz-fix@@ end\n"
    c = parse_capture(text)
    assert c.complete and c.links == {} and c.tables == {} and c.nft is None and c.firewalld is None
    assert c.csum_errors() is None and c.kernel_log is None and c.modules is None and c.lib_modules is None
    assert c.ufw is None and c.ufw_error


def test_a_capture_cut_short_keeps_what_it_has() -> None:
    text = read("lab-healthy/k3s-node-01.txt").split("@@keybuzz-fix@@ iptables-version")[0]
    c = parse_capture(text)
    assert not c.complete and c.vxlan() and c.probes == ()


def test_probe_blocks_and_their_commands() -> None:
    text = (
        "@@keybuzz-fix@@ probe pod dns 10.43.0.10 -\n$ ip netns exec cni-x dig @10.43.0.10 x A\n"
        ";; connection timed out; no servers could be reached\nrc=9\n"
        "@@keybuzz-fix@@ probe node vtep-big 10.42.1.0 1422\n$ ping -M do -s 1422 10.42.1.0\n"
        "2 packets transmitted, 0 received\nrc=1\n"
    )
    a, b = parse_probes(text)
    assert (a.source, a.kind, a.target, a.size, a.rc, a.result) == ("pod", "dns", "10.43.0.10", None, 9, "fail")
    assert a.command == "ip netns exec cni-x dig @10.43.0.10 x A"
    assert (b.kind, b.size, b.result, b.id) == ("vtep-big", 1422, "fail", "node -> vtep-big 10.42.1.0 1422B DF")


def test_links_with_a_wireguard_device_and_rke2s_vxlan() -> None:
    text = (
        "4: flannel-wg: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1370 qdisc noqueue state UNKNOWN\\    link/none "
        "promiscuity 0 \\    wireguard addrgenmode none\n"
        "5: flannel.4096: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue\\    link/ether 5a:9c:12:34:56:00 "
        "brd ff:ff:ff:ff:ff:ff\\    vxlan id 4096 local 10.0.0.2 dev ens192 srcport 0 0 dstport 4789 nolearning\n"
    )
    links = parse_links(text)
    assert links["flannel-wg"].kind == "wireguard" and links["flannel-wg"].mtu == 1370
    v = links["flannel.4096"]
    assert (v.kind, v.vni, v.port, v.dev) == ("vxlan", 4096, 4789, "ens192")


def test_ethtool_features() -> None:
    on = parse_features(read("ethtool-k-flannel-on.txt"))
    assert on["tx-checksum-ip-generic"] == (True, False)
    assert on["tx-checksum-ipv4"] == (False, True)
    off = parse_features(read("ethtool-k-flannel-off.txt"))
    assert off["tx-checksum-ip-generic"] == (False, False)
    assert parse_features("netlink error: no device matches name (offset 24)\nnetlink error: No such device") == {}


def test_the_script_is_posix_sh_and_refuses_what_is_not_a_name_or_an_address(tmp_path: Path) -> None:
    script = collect_script([("k3s-master-01", "10.0.0.2"), ("k3s-worker-01", "10.0.0.3")])
    assert script.startswith("#!/bin/sh\n") and "NODES='k3s-master-01=10.0.0.2 k3s-worker-01=10.0.0.3'" in script
    path = tmp_path / "collect.sh"
    path.write_text(script)
    for shell in ("sh", "dash"):
        assert subprocess.run([shell, "-n", str(path)], capture_output=True, check=False).returncode == 0
    for bad in ("10.0.0.2; rm -rf /", "$(id)", "10.0.0.300"):
        with pytest.raises(ValueError):
            collect_script([("k3s-master-01", bad)])
    with pytest.raises(ValueError):
        collect_script([("k3s master'01", "10.0.0.2")])


def test_routes_subnet_env_modules_and_ufw_of_a_real_capture() -> None:
    c = parse_capture(read("lab-healthy/k3s-node-01.txt"))
    overlay = [(r.dest, r.via, r.dev) for r in c.routes if r.dev == "flannel.1"]
    assert overlay == [("198.19.4.0/24", "198.19.4.0", "flannel.1"), ("198.19.5.0/24", "198.19.5.0", "flannel.1")]
    assert [r.via for r in c.routes if r.default] == ["198.18.0.1"]
    assert c.subnet_env == {
        "FLANNEL_NETWORK": "198.19.0.0/17",
        "FLANNEL_SUBNET": "198.19.3.1/24",
        "FLANNEL_MTU": "1400",
        "FLANNEL_IPMASQ": "true",
    }
    assert c.modules is not None and {"vxlan", "nf_conntrack"} <= c.modules
    assert c.iptables_version == "iptables v1.8.9 (nf_tables)"
    # UFW installed, its chains not loaded: the verdict model's ruleset is inactive and lets everything in
    assert c.ufw_rules is not None and not c.ufw_rules.active and c.ufw_rules.rules4 == ()


def test_the_ufw_ruleset_keeps_user_rules_and_user6_rules_apart() -> None:
    """realworld ufw-v6-only-leftover-overlay: ``allow 8472/udp`` is in user6.rules alone."""
    d = DATA / "realworld" / "ufw-v6-only-leftover-overlay"

    def bar(name: str) -> str:
        return "".join(f"|{line}\n" for line in (d / name).read_text().splitlines())

    c = parse_capture(
        "@@keybuzz-fix@@ ssh\n10.0.0.99 51234 10.0.0.2 22\n"
        f"@@keybuzz-fix@@ defaults\n{bar('ufw.default')}@@keybuzz-fix@@ kernel-ipv6\nyes\n"
        "@@keybuzz-fix@@ chains\ninput 0\noutput 0\nforward 0\n"
        f"@@keybuzz-fix@@ rules\n{bar('user.rules')}@@keybuzz-fix@@ rules6\n{bar('user6.rules')}@@keybuzz-fix@@ end\n"
    )
    r = c.ufw_rules
    assert r is not None and r.active and r.incoming == "deny"
    assert not any(rule.ports() and 8472 in (rule.ports() or ()) for rule in r.rules4)
    assert any(rule.ports() and 8472 in (rule.ports() or ()) for rule in r.rules6)


def test_an_unreadable_ufw_rule_leaves_ufw_not_checked() -> None:
    c = parse_capture(
        "@@keybuzz-fix@@ ssh\n10.0.0.99 51234 10.0.0.2 22\n@@keybuzz-fix@@ status\nStatus: active\n"
        "Default: deny (incoming), allow (outgoing), deny (routed)\n"
        "@@keybuzz-fix@@ added\nAdded user rules (see 'ufw status' for running firewall):\nufw frobnicate 8472\n"
        "@@keybuzz-fix@@ end\n"
    )
    assert c.ufw is None and c.ufw_rules is None and c.ufw_error


@pytest.mark.parametrize(
    "rule",
    [
        "ufw allow 0",  # ufw refuses port 0, 70000 and a range that runs backwards
        "ufw allow 70000/udp",
        "ufw allow 9000:8000/tcp",
        "ufw allow ²/tcp",  # a digit to str.isdigit(), not to ufw
        "ufw allow Frobnicator",  # an application profile the capture does not define
    ],
)
def test_a_rule_ufw_would_refuse_or_cannot_be_judged_leaves_ufw_not_checked(rule: str) -> None:
    c = parse_capture(
        "@@keybuzz-fix@@ ssh\n10.0.0.99 51234 10.0.0.2 22\n@@keybuzz-fix@@ status\nStatus: active\n"
        "Default: deny (incoming), allow (outgoing), deny (routed)\n"
        f"@@keybuzz-fix@@ added\nAdded user rules (see 'ufw status' for running firewall):\n{rule}\n"
        "@@keybuzz-fix@@ end\n"
    )
    assert c.ufw_rules is None and c.ufw_error


def test_counters_and_addresses_that_are_not_numbers_are_skipped() -> None:
    c = parse_capture(
        "@@keybuzz-fix@@ snmp-before\nUdp: InDatagrams InCsumErrors\nUdp: ² 3\n"
        "@@keybuzz-fix@@ addrs\n2: eth0    inet 1/32 scope global eth0\n"
        "3: cni0    inet 10.42.1.1/24 scope global cni0\n"
        "@@keybuzz-fix@@ end\n"
    )
    assert c.snmp_before == {"InCsumErrors": 3}
    assert dict(c.addrs) == {"cni0": ("10.42.1.1/24",)}
