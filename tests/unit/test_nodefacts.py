"""Parsers of the node probes, on outputs captured on lab hosts and on K3s nodes (tests/data/diagnose)."""

import subprocess
from pathlib import Path

import pytest

from keybuzz_fix.hosts.flannel import facts as nodefacts
from keybuzz_fix.hosts.flannel.facts import RouteGet, parse_features

DATA = Path(__file__).parent.parent / "data" / "diagnose"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_route_get():
    assert nodefacts.parse_route_get(read("ip-route-get-lab.txt")) == RouteGet("198.18.0.12", "eth0", "198.18.0.11")
    assert nodefacts.parse_route_get(read("ip-route-get-local.txt")) == RouteGet("198.18.0.11", "lo", "198.18.0.11")
    hetzner = "10.0.0.3 via 10.0.0.1 dev enp7s0 src 10.0.0.2 uid 0 \n    cache \n"
    assert nodefacts.parse_route_get(hetzner) == RouteGet("10.0.0.3", "enp7s0", "10.0.0.2", "10.0.0.1")
    assert nodefacts.parse_route_get("RTNETLINK answers: Network is unreachable") is None
    assert nodefacts.parse_route_get("") is None


def test_vxlan_link():
    link = nodefacts.parse_vxlan_link(read("ip-d-link-flannel.txt"))
    assert link is not None
    assert (link.name, link.mtu, link.vni, link.local, link.dev, link.dstport, link.up) == (
        "flannel.1",
        1450,
        1,
        "198.18.0.11",
        "eth0",
        8472,
        True,
    )
    assert nodefacts.parse_vxlan_link(read("ip-d-link-missing.txt")) is None
    assert nodefacts.parse_vxlan_link('Device "flannel.1" does not exist.') is None


def test_links_and_addrs():
    assert nodefacts.parse_links(read("ip-o-link-lab.txt")) == {"lo": 65536, "eth0": 1500, "flannel.1": 1450}
    assert nodefacts.parse_addrs(read("ip-o-4-addr-lab.txt")) == {
        "lo": ("127.0.0.1",),
        "eth0": ("198.18.0.11",),
        "flannel.1": ("198.19.3.0",),
    }


def test_ethtool_features():
    on = parse_features(read("ethtool-k-flannel-on.txt"))
    assert on["tx-checksum-ip-generic"] == (True, False)
    assert on["tx-checksum-ipv4"] == (False, True)
    assert on["rx-checksumming"] == (True, False)
    off = parse_features(read("ethtool-k-flannel-off.txt"))
    assert off["tx-checksum-ip-generic"] == (False, False)
    assert off["tx-tcp-segmentation"] == (False, False)  # "off [requested on]"
    assert parse_features("netlink error: no device matches name (offset 24)\nnetlink error: No such device") == {}


def test_subnet_env():
    assert nodefacts.parse_subnet_env(read("subnet-env-lab.txt")) == {
        "FLANNEL_NETWORK": "198.19.0.0/17",
        "FLANNEL_SUBNET": "198.19.3.1/24",
        "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "true",
    }
    assert nodefacts.parse_subnet_env('# comment\nbogus line\nFLANNEL_MTU="1400"\n') == {"FLANNEL_MTU": "1400"}


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("5.4.0-150-generic", (5, 4)),
        ("5.15.0-91-generic", (5, 15)),
        ("6.18.44-fc-v657", (6, 18)),
        ("4.19.0-26-cloud-amd64\n", (4, 19)),
        ("5.10.0-0.deb10.16-amd64", (5, 10)),
        ("", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_kernel_version(release, version):
    assert nodefacts.parse_kernel_version(release) == version


def test_bad_checksum_lines_only_for_the_vxlan_port():
    lines = [
        "[ 8812.301244] UDP: bad checksum. From 203.0.113.11:52312 to 203.0.113.10:8472 ulen 110",
        "[ 9102.000017] UDP: bad checksum. From 198.51.100.7:5353 to 203.0.113.10:5353 ulen 40",
        "[ 9103.000017] eth0: link up 84721",
    ]
    assert nodefacts.bad_checksum_lines(lines, 8472) == [lines[0]]


@pytest.mark.parametrize(
    ("name", "sent", "received"),
    [
        ("ping-ok.txt", 3, 3),
        ("ping-big-ok.txt", 2, 2),
        ("ping-fail-ufw.txt", 15, 0),
        ("ping-busybox-fail.txt", 3, 0),
        ("ping-connect-unreachable.txt", 0, 0),
    ],
)
def test_ping(name, sent, received):
    result = nodefacts.parse_ping(read(name))
    assert (result.sent, result.received, result.ok) == (sent, received, received > 0)
    if name == "ping-connect-unreachable.txt":
        assert result.detail == "ping: connect: Network is unreachable"
    if name == "ping-fail-ufw.txt":
        assert result.detail.startswith("15 packets transmitted, 0 received")


@pytest.mark.parametrize(
    ("name", "ok", "fragment"),
    [
        ("dns-dig-ok.txt", True, "-> 10.43.0.1"),
        ("dns-dig-timeout.txt", False, "timed out"),
        ("dns-nslookup-ok.txt", True, "-> 10.43.0.1"),
        ("dns-nslookup-timeout.txt", False, "timed out"),
        ("dns-none.txt", None, "neither dig nor nslookup"),
    ],
)
def test_dns(name, ok, fragment):
    result = nodefacts.parse_dns(read(name))
    assert result.ok is ok and fragment in result.detail


def test_node_probe_on_a_lab_host():
    facts = nodefacts.parse_node_facts(read("node-probe-lab.txt"))
    assert facts.kernel == "6.18.44-fc-v657"
    assert facts.tools == {"ip", "ethtool", "ping", "dmesg", "ufw"}
    assert facts.iface_of("198.18.0.11") == "eth0" and facts.flannel_addr == "198.19.3.0"
    assert facts.routes == {
        "198.18.0.12": RouteGet("198.18.0.12", "eth0", "198.18.0.11"),
        "198.18.0.13": RouteGet("198.18.0.13", "eth0", "198.18.0.11"),
    }
    assert facts.flannel is not None and facts.flannel.local == "198.18.0.11"
    assert facts.offload is not None and facts.offload["tx-checksum-ip-generic"] == (True, False)
    assert facts.subnet_env is not None and facts.subnet_env["FLANNEL_MTU"] == "1450"
    assert facts.kernel_log == ()
    assert facts.ufw is not None and facts.ufw.active and facts.ufw.default_incoming == "deny"
    assert [r.command() for r in facts.ufw.rules] == [
        "ufw allow 22/tcp",
        "ufw allow from 198.18.0.0/24 to any port 8472 proto udp",
    ]


def test_node_probe_on_a_node_with_flannel_on_the_public_interface():
    facts = nodefacts.parse_node_facts(read("node-probe-hetzner-wrong-iface.txt"))
    assert facts.iface_of("10.0.0.2") == "enp7s0" and facts.links["enp7s0"] == 1450
    assert facts.flannel is not None and (facts.flannel.local, facts.flannel.dev) == ("203.0.113.10", "eth0")
    assert facts.routes["10.0.0.3"] == RouteGet("10.0.0.3", "enp7s0", "10.0.0.2", "10.0.0.1")
    assert facts.kernel_log is not None and len(facts.kernel_log) == 2
    assert facts.ufw is not None and facts.ufw.ssh_client_ip == "198.51.100.50"


def test_node_probe_with_tools_missing_leaves_facts_unknown():
    facts = nodefacts.parse_node_facts(read("node-probe-bare.txt"))
    assert facts.tools == {"ip", "ping"}
    assert facts.flannel is None and facts.flannel_addr is None
    assert facts.offload is None and facts.subnet_env is None and facts.kernel_log is None
    assert facts.routes == {"10.0.0.2": None}
    assert facts.ufw is not None and not facts.ufw.installed


def test_node_probe_cut_short_keeps_what_it_has():
    text = read("node-probe-lab.txt").split("@@keybuzz-fix@@ ethtool")[0]
    facts = nodefacts.parse_node_facts(text)
    assert facts.kernel == "6.18.44-fc-v657" and facts.offload is None
    assert facts.ufw is None and "cut short" in (facts.ufw_error or "")


def test_overlay_probe_output():
    pings = nodefacts.parse_pings(read("overlay-probe-lab.txt"), ["k8s-worker-02", "k8s-worker-03"])
    assert {n: r.received for n, r in pings.small.items()} == {"k8s-worker-02": 3, "k8s-worker-03": 3}
    assert {n: r.received for n, r in pings.big.items()} == {"k8s-worker-02": 2, "k8s-worker-03": 2}
    assert pings.dns is None and not pings.ping_missing


def test_probe_scripts_are_valid_shell_and_refuse_non_addresses():
    scripts = [
        nodefacts.node_probe(["198.18.0.12", "198.18.0.13"]),
        nodefacts.ping_probe([("a", "198.19.4.0"), ("b", "198.19.5.0")], 1422, "198.19.128.10"),
        nodefacts.ping_probe([], None, None),
    ]
    for script in scripts:
        subprocess.run(["sh", "-n", "-c", script], check=True)
    for bad in ("198.18.0.12; touch /tmp/pwned", "$(id)", "`id`", "198.18.0.12\nid"):
        with pytest.raises(ValueError):
            nodefacts.node_probe([bad])
        with pytest.raises(ValueError):
            nodefacts.ping_probe([("a", bad)], None, None)
        with pytest.raises(ValueError):
            nodefacts.ping_probe([], None, bad)
