"""diagnose reads what an operator brought back, damaged or not: each damaged form reads as unknown, never raises.

The kinds: a word cut off after its keyword in ``nft list ruleset`` (``hook``, ``policy``); a port
or range whose ends are not ASCII numbers (``str.isdigit`` takes ``²``, ``int`` does not); a pod
network of the other family (IPv6 pod CIDRs, where the first pod is not ``a.b.c.d+2`` of text), one
with no room for a pod (/31, /32, /127, /128: no pod address) or one written with host bits set (as
cni0's address and FLANNEL_SUBNET are); a CoreDNS restart count that is not a number, or container
statuses of any other shape, in a hand-made cluster.yaml. The well-formed readings are checked
against the real systems: nft by tests/integration/test_nft_chains_differential.py, the first pod
by the real CNI host-local (tests/integration/test_hostlocal_differential.py), CoreDNS pods as the
real API server serves them (tests/integration/test_coredns_pods.py).
"""

from __future__ import annotations

import pytest

from keybuzz_fix.checks.diagnose.dns import coredns
from keybuzz_fix.checks.diagnose.filters import port_in
from keybuzz_fix.checks.diagnose.firewall import _first_pod
from keybuzz_fix.checks.diagnose.nftables import nft_chains
from keybuzz_fix.checks.diagnose.paths import Topology
from keybuzz_fix.checks.diagnose.views import ClusterView, Objects


def _chain(type_line: str) -> tuple[str | None, str]:
    lines = ["table inet fw {", "\tchain input {", f"\t\t{type_line}", "\t\tcounter accept", "\t}", "}"]
    (chain,) = nft_chains(lines).values()
    return chain.hook, chain.policy


@pytest.mark.parametrize(
    ("type_line", "hook", "policy"),
    [
        ("type filter hook input priority filter; policy drop;", "input", "drop"),
        ("type filter hook forward priority 0; policy accept;", "forward", "accept"),
        ("type filter hook output priority filter - 5;", "output", "accept"),  # no policy: nft's default
        ("type filter hook", None, "accept"),  # cut off after the keyword
        ("type filter hook input priority filter; policy", "input", "accept"),
        ("type filter hook input priority filter; policy;", "input", "accept"),
        ("type filter", None, "accept"),
        ("type", None, "accept"),
    ],
)
def test_an_nft_type_line_cut_off_anywhere_reads_as_unknown(type_line: str, hook: str | None, policy: str) -> None:
    assert _chain(type_line) == (hook, policy)


@pytest.mark.parametrize(
    ("spec", "inside"),
    [
        ("8472", True),
        ("8000:9000", True),
        ("80,8472", True),
        ("80,443", False),
        ("9000:8000", False),  # a range that runs backwards holds no port
        ("²", False),  # str.isdigit() says yes, int() says no
        ("8000:²", False),
        ("²:9000", False),
        ("abc:9000", False),
        ("8000:abc", False),
        (":9000", False),
        ("", False),
        ("80,²,8472", True),  # one damaged part: the others still count
    ],
)
def test_a_port_spec_with_ends_that_are_not_numbers_matches_nothing(spec: str, inside: bool) -> None:
    assert port_in(8472, spec) is inside


@pytest.mark.parametrize(
    ("cidr", "first"),
    [
        ("10.42.1.0/24", "10.42.1.2"),
        ("10.42.1.128/25", "10.42.1.130"),
        ("fd00:42:1::/64", "fd00:42:1::2"),
        ("10.42.1.1/24", "10.42.1.2"),  # FLANNEL_SUBNET and cni0 write the gateway: the network is meant
        ("10.42.1.77/26", "10.42.1.66"),
        ("fd00:42:1::1/64", "fd00:42:1::2"),
        ("10.42.1.4/30", "10.42.1.6"),  # the smallest host-local takes: .5 the gateway, .6 the pod
        ("fd00::4/126", "fd00::6"),  # no broadcast in IPv6, but the gateway still comes first
        ("10.42.1.4/31", None),  # host-local: "too small to allocate from"
        ("10.42.1.4/32", None),
        ("fd00::4/127", None),
        ("fd00::4/128", None),
    ],
)
def test_the_first_pod_address_of_either_family(cidr: str, first: str | None) -> None:
    topo = Topology(addresses={}, subnets={cidr: "k3s-node-01"}, tunnels={}, private={})
    assert _first_pod(topo, "k3s-node-01") == first
    assert _first_pod(topo, "k3s-node-02") is None


@pytest.mark.parametrize(("restarts", "flagged"), [(5, True), (2, False), ("abc", False), (None, False), (2.5, False)])
def test_a_restart_count_that_is_not_a_number_is_not_counted(restarts: object, flagged: bool) -> None:
    pod = {
        "metadata": {"name": "coredns-1", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "status": {"containerStatuses": [{"name": "coredns", "restartCount": restarts, "state": {"running": {}}}]},
    }
    found = coredns([], ClusterView(objects=Objects(pods=(pod,))))
    said = [line for lines in found.evidence.values() for line in lines]
    assert any(line.startswith("coredns-1: running, ") for line in said) is flagged, said


def _said(statuses: object) -> list[str]:
    pod = {
        "metadata": {"name": "coredns-1", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "status": {"containerStatuses": statuses},
    }
    found = coredns([], ClusterView(objects=Objects(pods=(pod,))))
    return [line for lines in found.evidence.values() for line in lines if not line.startswith("$ ")]


@pytest.mark.parametrize(
    ("statuses", "said"),
    [
        ("abc", []),
        ({"name": "coredns"}, []),
        ([1, None, "x"], []),
        ([{"name": "coredns", "state": "running"}], []),
        ([{"name": "coredns", "state": {"waiting": "CrashLoopBackOff"}}], []),
        ([{"name": "coredns", "state": {"terminated": {"exitCode": "1"}}}], []),
        ([{"name": "coredns", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}], []),
        ([{"name": "coredns", "state": {"terminated": {"exitCode": 2}}}], ["coredns-1: ExitCode:2, 0 restarts"]),
        ([{"name": "coredns", "state": {"waiting": {"reason": "Error"}}}], ["coredns-1: Error, 0 restarts"]),
        ([7, {"name": "coredns", "restartCount": 4}], ["coredns-1: running, 4 restarts"]),
    ],
)
def test_container_statuses_of_any_shape_read_without_raising(statuses: object, said: list[str]) -> None:
    assert _said(statuses) == said
