"""Source-port conditions on the flows diagnose judges, whose source port is not known.

A VXLAN packet's source port is a hash in the ephemeral range, a TCP client's is ephemeral
(:data:`~keybuzz_fix.checks.diagnose.filters.EPHEMERAL`). A condition on it holds only when it holds
for every such port. Known ports are proven against the kernel by the verdict differential tests
(tests/integration/test_iptables_verdict_differential.py, test_nft_verdict_differential.py).
"""

from __future__ import annotations

import pytest

from keybuzz_fix.checks.diagnose.filters import EPHEMERAL, Flow, iptables_verdict, sport_holds
from keybuzz_fix.checks.diagnose.nftables import nft_verdict
from keybuzz_fix.hosts.flannel.capture import Tables

VXLAN = Flow("10.0.0.3", "udp", 8472, "enp7s0", "10.0.0.2")


@pytest.mark.parametrize(
    ("spec", "negated", "holds"),
    [
        ("53", False, False),  # a DNS-reply rule: no ephemeral port is 53
        ("53", True, True),
        ("1024:65535", False, True),  # covers the whole range
        ("1024:65535", True, False),
        (f"{EPHEMERAL[0]}:{EPHEMERAL[1]}", False, True),
        ("32768:40000", False, False),  # covers part of it: holds for some flows only
        ("32768:40000", True, False),
        ("1024:40000,40001:65535", False, True),  # a list whose parts cover it together
        ("1024:40000,40002:65535", False, False),  # one port missing
        ("0:100,61000:65535", True, True),  # none of the range
    ],
)
def test_an_unknown_source_port_holds_only_for_every_ephemeral_port(spec: str, negated: bool, holds: bool) -> None:
    assert sport_holds(None, spec, negated=negated) is holds


def test_a_stateless_firewalls_dns_reply_rule_lets_no_vxlan_in() -> None:
    tables = Tables(
        "nft",
        (
            "*filter",
            ":INPUT DROP [0:0]",
            "-A INPUT -p udp -m udp --sport 53 -j ACCEPT",
            "-A INPUT -p udp -m udp ! --sport 53 -m udp --dport 53 -j ACCEPT",
            "COMMIT",
        ),
        (),
        None,
    )
    verdict = iptables_verdict(tables, VXLAN)
    assert (verdict.verdict, verdict.line) == ("DROP", ":INPUT DROP (the chain's policy)")


def test_the_same_in_nftables() -> None:
    listing = """table inet fw {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tudp sport 53 accept
\t\tudp sport != 53 udp dport 53 accept
\t}
}"""
    verdict = nft_verdict(listing.splitlines(), VXLAN)
    assert verdict is not None and (verdict.verdict, verdict.line) == ("DROP", "inet fw/input: policy drop")
