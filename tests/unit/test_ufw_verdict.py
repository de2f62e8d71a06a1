"""The UFW verdict model: first match per family, interfaces, limit, policies, profiles, ranges.

The five real-world cases of issue 15 use UFW's own files (tests/data/ufw/realworld/, from the
shared real-world inputs; tests/data/ufw/cases/ written by the real ufw in a lab host). The other
tests cover the other members of each kind; ``test_found_*`` are disagreements the differential
test (tests/integration/test_ufw_verdict_differential.py) found against real packets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybuzz_fix.hosts.ufw.apps import UnknownProfile, parse_app_profiles
from keybuzz_fix.hosts.ufw.rules import UfwRule, parse_rule_command
from keybuzz_fix.hosts.ufw.ruleset import Ruleset, rule_families
from keybuzz_fix.hosts.ufw.verdict import DecidedBy, Flow, Reach, Verdict, decide, judge, judge_rule

DATA = Path(__file__).parent.parent / "data" / "ufw"
LB = "10.0.0.0/16"  # the private network the load balancer and the nodes live in


def from_case(path: Path, *, active: bool = True) -> Ruleset:
    return Ruleset.from_files(
        (path / "user.rules").read_text(),
        (path / "user6.rules").read_text(),
        (path / "ufw.default").read_text(),
        active=active,
    )


def rules(*commands: str) -> tuple[UfwRule, ...]:
    return tuple(parse_rule_command(c) for c in commands)


def want(port: str, proto: str, source: str = LB) -> UfwRule:
    return UfwRule(action="allow", port=port, proto=proto, source=source)


def flow(port: str = "31695", proto: str = "tcp", source: str = "10.0.3.7", family: int = 4, **kw: object) -> Flow:
    return Flow(family, port, proto, source=source, **kw)  # type: ignore[arg-type]


# -- the five cases of the issue ----------------------------------------------------------------


def test_case1_limit_is_not_allowed_but_throttled() -> None:
    rs = from_case(DATA / "realworld" / "ufw-limit")
    for port, n in (("31695", 2), ("32720", 3)):
        (v4, v6) = judge_rule(rs, want(port, "tcp", source="any"))
        assert v4.reach is Reach.LIMITED  # not open: the load balancer's few addresses get throttled
        assert v4.decision is not None and v4.decision.rule is not None
        assert v4.decision.position == n and v4.decision.why == f"user.rules rule {n}: ufw limit {port}/tcp"
        assert v6.reach is Reach.BLOCKED  # ufw limit wrote no user6.rules line here: the v6 policy decides
    (lb,) = judge_rule(rs, want("31695", "tcp"))
    assert lb.reach is Reach.LIMITED and lb.decision is not None and lb.decision.verdict is Verdict.LIMIT


def test_case2_allow_before_deny_is_already_open() -> None:
    rs = from_case(DATA / "realworld" / "ufw-order-allow-before-deny")
    for port in ("31695", "32720"):
        (j,) = judge_rule(rs, want(port, "tcp"))
        assert j.reach is Reach.ALLOWED
        assert j.decision is not None and j.decision.why == "user.rules rule 2: ufw allow from 10.0.0.0/16 to any"
    # from elsewhere the deny (rule 3) is what decides
    outside = decide(rs, flow(source="192.0.2.9"))
    assert outside.verdict is Verdict.DENY and outside.position == 3


@pytest.mark.parametrize(
    "case, port, proto",
    [
        ("ufw-v6-only-leftover", "31695", "tcp"),
        ("ufw-v6-only-leftover", "32720", "tcp"),
        ("ufw-v6-only-leftover-overlay", "8472", "udp"),
    ],
)
def test_case3_v6_leftover_leaves_ipv4_closed(case: str, port: str, proto: str) -> None:
    rs = from_case(DATA / "realworld" / case)
    (v4,) = judge_rule(rs, want(port, proto))
    assert v4.reach is Reach.BLOCKED  # add the IPv4 rule
    assert (
        v4.decision is not None
        and v4.decision.by is DecidedBy.POLICY
        and v4.decision.why == "default incoming policy: deny"
    )
    v6 = decide(rs, flow(port, proto, source="fd00::5", family=6))
    assert v6.verdict is Verdict.ALLOW and v6.why.startswith("user6.rules rule ")
    # and the rule the tool adds does open IPv4
    (after,) = judge_rule(rs.add(want(port, proto)).ruleset, want(port, proto))
    assert after.reach is Reach.ALLOWED


def test_case4_default_accept_is_already_open_by_the_policy() -> None:
    rs = from_case(DATA / "realworld" / "ufw-default-accept")
    assert rs.incoming == "allow"
    for port, proto in (("31695", "tcp"), ("32720", "tcp"), ("8472", "udp")):
        (j,) = judge_rule(rs, want(port, proto))
        assert j.reach is Reach.ALLOWED
        assert j.decision is not None and j.decision.by is DecidedBy.POLICY
        assert j.decision.why == "default incoming policy: allow"


def test_case5_interface_rule_allows_vxlan_on_the_private_interface() -> None:
    rs = from_case(DATA / "cases" / "ufw-interface-rule")
    assert rs.rules4[-1] == parse_rule_command("ufw allow in on enp7s0 from 10.0.0.0/16")
    (j,) = judge_rule(rs, want("8472", "udp"), interface="enp7s0")
    assert j.reach is Reach.ALLOWED
    assert j.decision is not None and j.decision.rule == parse_rule_command("ufw allow in on enp7s0 from 10.0.0.0/16")
    # on another interface, or when the interface is not known, it is not (all) let in
    assert judge_rule(rs, want("8472", "udp"), interface="eth0")[0].reach is Reach.BLOCKED
    unknown = judge_rule(rs, want("8472", "udp"))[0]
    assert unknown.reach is Reach.PARTLY
    assert [p.only for p in unknown.pieces] == [
        ("arriving on enp7s0",),
        ("arriving on an interface other than enp7s0",),
    ]


# -- the other members of each kind -----------------------------------------------------------


def test_reject_and_deny_are_told_apart() -> None:
    rs = Ruleset(rules4=rules("ufw reject 31695/tcp", "ufw deny 32720/tcp"))
    assert decide(rs, flow("31695")).verdict is Verdict.REJECT
    assert decide(rs, flow("32720")).verdict is Verdict.DENY
    assert decide(rs, flow("8472", "udp")).verdict is Verdict.DENY  # the policy
    assert decide(replace(rs, incoming="reject"), flow("8472", "udp")).verdict is Verdict.REJECT


def test_limit_on_v6_only() -> None:
    rs = Ruleset(rules4=rules("ufw allow 31695/tcp"), rules6=rules("ufw limit 31695/tcp"))
    assert decide(rs, flow()).verdict is Verdict.ALLOW
    v6 = decide(rs, flow(source="fd00::1", family=6))
    assert v6.verdict is Verdict.LIMIT and v6.family == 6 and v6.why == "user6.rules rule 1: ufw limit 31695/tcp"
    v4, v6j = judge_rule(rs, want("31695", "tcp", source="any"))
    assert (v4.reach, v6j.reach) == (Reach.ALLOWED, Reach.LIMITED)


def test_first_match_wins_deny_before_allow() -> None:
    rs = Ruleset(rules4=rules("ufw deny 31695/tcp", "ufw allow from 10.0.0.0/16 to any port 31695 proto tcp"))
    (j,) = judge_rule(rs, want("31695", "tcp"))
    assert j.reach is Reach.BLOCKED and j.decision is not None and j.decision.position == 1
    # the planner's question: an appended allow would still be shadowed, by rule 1
    (after,) = judge_rule(rs.add(want("31695", "tcp")).ruleset, want("31695", "tcp"))
    assert after.reach is Reach.BLOCKED and after.decision is not None and after.decision.position == 1
    # ufw prepend would put it first, where it wins, but ufw skips it: the same rule is there already
    assert rs.add(want("31695", "tcp"), position=-1).skipped == (4,)
    alone = Ruleset(rules4=rs.rules4[:1])
    (first,) = judge_rule(alone.add(want("31695", "tcp"), position=-1).ruleset, want("31695", "tcp"))
    assert first.reach is Reach.ALLOWED


def test_route_rules_do_not_decide_traffic_to_the_host() -> None:
    rs = Ruleset(rules4=rules("ufw route allow 31695/tcp", "ufw route deny 8472/udp"), incoming="deny", routed="deny")
    assert decide(rs, flow()).by is DecidedBy.POLICY
    routed = decide(rs, flow(routed=True, interface="eth0", out_interface="cni0"))
    assert routed.verdict is Verdict.ALLOW and routed.rule == parse_rule_command("ufw route allow 31695/tcp")
    assert decide(rs, flow("8472", "udp", routed=True)).verdict is Verdict.DENY
    assert decide(replace(rs, routed="allow"), flow("32720", routed=True)).why == "default routed policy: allow"


def test_out_rules_do_not_decide_incoming_traffic() -> None:
    rs = Ruleset(
        rules4=rules("ufw deny out 31695/tcp", "ufw allow out on eth0 to any port 8472 proto udp"), incoming="allow"
    )
    assert decide(rs, flow()).by is DecidedBy.POLICY
    assert decide(replace(rs, incoming="deny"), flow("8472", "udp")).verdict is Verdict.DENY


def test_interface_rules_only_match_there() -> None:
    rs = Ruleset(rules4=rules("ufw deny in on eth1 to any port 31695 proto tcp", "ufw allow 31695/tcp"))
    assert decide(rs, flow(interface="eth1")).verdict is Verdict.DENY
    assert decide(rs, flow(interface="enp7s0")).verdict is Verdict.ALLOW
    j = judge(rs, flow())
    assert j.reach is Reach.PARTLY and [p.decision.verdict for p in j.pieces] == [Verdict.DENY, Verdict.ALLOW]


def test_route_rule_with_both_interfaces() -> None:
    rs = Ruleset(rules4=rules("ufw route allow in on eth0 out on cni0 to any port 31695 proto tcp"))
    assert decide(rs, flow(routed=True, interface="eth0", out_interface="cni0")).verdict is Verdict.ALLOW
    assert decide(rs, flow(routed=True, interface="eth0", out_interface="eth1")).verdict is Verdict.DENY
    assert decide(rs, flow(routed=True, interface="eth1", out_interface="cni0")).verdict is Verdict.DENY


@pytest.mark.parametrize(
    "spec, port, proto, verdict",
    [
        ("ufw allow 30000:32767/tcp", "31695", "tcp", Verdict.ALLOW),
        ("ufw allow 30000:32767/tcp", "31695", "udp", Verdict.DENY),
        ("ufw allow 30000:32767/tcp", "8472", "tcp", Verdict.DENY),
        ("ufw allow 80,443,31695/tcp", "31695", "tcp", Verdict.ALLOW),
        ("ufw allow 80,443,32000:32767/udp", "32720", "udp", Verdict.ALLOW),
        ("ufw allow 80,443,32000:32767/udp", "31695", "udp", Verdict.DENY),
        ("ufw allow 8472", "8472", "udp", Verdict.ALLOW),  # no protocol: tcp and udp
        ("ufw allow 8472", "8472", "tcp", Verdict.ALLOW),
        ("ufw allow from 10.0.0.0/16", "8472", "udp", Verdict.ALLOW),  # no port: every port and protocol
        ("ufw allow proto udp from 10.0.0.0/16", "31695", "tcp", Verdict.DENY),
    ],
)
def test_port_ranges_lists_and_protocols(spec: str, port: str, proto: str, verdict: Verdict) -> None:
    assert decide(Ruleset(rules4=rules(spec)), flow(port, proto)).verdict is verdict


def test_a_port_range_flow_against_a_narrower_rule_is_partly_open() -> None:
    rs = Ruleset(rules4=rules("ufw allow 31000:31999/tcp"))
    j = judge(rs, flow("30000:32767"))
    assert j.reach is Reach.PARTLY
    assert [(p.only, p.decision.verdict) for p in j.pieces] == [
        (("port 31000:31999",), Verdict.ALLOW),
        (("port 30000:30999,32000:32767",), Verdict.DENY),
    ]


def test_a_source_range_split_by_rules() -> None:
    rs = Ruleset(rules4=rules("ufw allow from 10.0.0.0/17 to any port 31695 proto tcp"))
    j = judge_rule(rs, want("31695", "tcp"))[0]
    assert j.reach is Reach.PARTLY
    assert [(p.sources, p.decision.verdict) for p in j.pieces] == [
        (("10.0.0.0/17",), Verdict.ALLOW),
        (("10.0.128.0/17",), Verdict.DENY),
    ]
    assert [p.sources for p in j.not_allowed()] == [("10.0.128.0/17",)]
    # two rules that together cover the range: allowed, by both
    both = Ruleset(rules4=rs.rules4 + rules("ufw allow from 10.0.128.0/17 to any port 31695 proto tcp"))
    j2 = judge_rule(both, want("31695", "tcp"))[0]
    assert j2.reach is Reach.ALLOWED and j2.decision is None and len(j2.decisions()) == 2


def test_a_deny_inside_an_allowed_network() -> None:
    rs = Ruleset(rules4=rules("ufw deny from 10.0.5.0/24", "ufw allow from 10.0.0.0/16"))
    j = judge_rule(rs, want("31695", "tcp"))[0]
    assert j.reach is Reach.PARTLY
    assert [(p.sources, p.decision.verdict) for p in j.pieces] == [
        (("10.0.5.0/24",), Verdict.DENY),
        (
            (
                "10.0.0.0/22",
                "10.0.4.0/24",
                "10.0.6.0/23",
                "10.0.8.0/21",
                "10.0.16.0/20",
                "10.0.32.0/19",
                "10.0.64.0/18",
                "10.0.128.0/17",
            ),
            Verdict.ALLOW,
        ),
    ]


def test_source_ports_split_a_flow() -> None:
    rs = Ruleset(rules4=rules("ufw allow from any port 1024:65535 to any port 8472 proto udp"))
    assert judge(rs, flow("8472", "udp")).reach is Reach.PARTLY
    assert judge(rs, flow("8472", "udp", sport="32768:60999")).reach is Reach.ALLOWED


def test_destination_addresses() -> None:
    rs = Ruleset(rules4=rules("ufw allow from any to 10.0.0.5 port 31695 proto tcp"))
    assert decide(rs, flow(dest="10.0.0.5")).verdict is Verdict.ALLOW
    assert decide(rs, flow(dest="10.0.0.6")).verdict is Verdict.DENY
    assert judge(rs, flow()).reach is Reach.PARTLY  # the address packets go to is not known


def test_default_reject_and_allow_policies() -> None:
    assert decide(Ruleset(incoming="reject"), flow()).verdict is Verdict.REJECT
    assert decide(Ruleset(incoming="allow"), flow()).verdict is Verdict.ALLOW
    assert decide(Ruleset(routed="reject"), flow(routed=True)).verdict is Verdict.REJECT


def test_inactive_ufw_lets_everything_in() -> None:
    rs = from_case(DATA / "realworld" / "ufw-limit", active=False)
    d = decide(rs, flow())
    assert d.verdict is Verdict.ALLOW and d.by is DecidedBy.INACTIVE
    assert decide(rs, flow(source="fd00::1", family=6, routed=True)).by is DecidedBy.INACTIVE


def test_ipv6_off_drops_ipv6_and_ignores_user6_rules() -> None:
    d = DATA / "realworld" / "ufw-v6-only-leftover"
    off = (d / "ufw.default").read_text().replace("IPV6=yes", "IPV6=no")
    rs = Ruleset.from_files((d / "user.rules").read_text(), (d / "user6.rules").read_text(), off, active=True)
    assert rs.rules6 == () and not rs.ipv6
    v6 = decide(rs, flow(source="fd00::1", family=6))
    assert v6.verdict is Verdict.DENY and v6.by is DecidedBy.IPV6_OFF
    assert decide(rs, flow(source="fd00::1", family=6, routed=True)).by is DecidedBy.IPV6_OFF
    assert [j.family for j in judge_rule(rs, want("31695", "tcp", source="any"))] == [4]  # ufw writes v4 only
    assert (
        Ruleset.from_files(
            (d / "user.rules").read_text(),
            (d / "user6.rules").read_text(),
            (d / "ufw.default").read_text(),
            active=True,
            kernel_ipv6=False,
        ).rules6
        == ()
    )


def test_before_rules_decide_loopback_and_dhcp_first() -> None:
    rs = Ruleset(rules4=rules("ufw deny from any"), rules6=rules("ufw deny from any"))
    lo = decide(rs, flow(interface="lo"))
    assert lo.verdict is Verdict.ALLOW and lo.by is DecidedBy.BEFORE_RULES
    dhcp = decide(rs, flow("68", "udp", sport="67"))
    assert dhcp.verdict is Verdict.ALLOW and "dhcp" in dhcp.why
    assert decide(rs, flow("5353", "udp", dest="224.0.0.251")).by is DecidedBy.BEFORE_RULES
    assert (
        decide(rs, flow("546", "udp", family=6, source="fe80::1", sport="547", dest="fe80::2")).by
        is DecidedBy.BEFORE_RULES
    )
    assert decide(rs, flow("8472", "udp")).by is DecidedBy.RULE  # our flows are not among them
    assert decide(rs, flow(routed=True, interface="lo")).by is DecidedBy.POLICY  # FORWARD: no loopback line


# -- application profiles ---------------------------------------------------------------------

PROFILES = {
    "openssh-server": "[OpenSSH]\ntitle=Secure shell server\ndescription=OpenSSH\nports=22/tcp\n",
    "k3s": (
        "[K3s NodePorts]\ntitle=NodePorts\ndescription=x\nports=31695,32720/tcp\n\n"
        "[Flannel]\ntitle=VXLAN\ndescription=x\nports=8472/udp\n\n"
        "[Mixed]\ntitle=m\ndescription=x\nports=31695/tcp|8472/udp\n\n"
        "[AnyProto]\ntitle=a\ndescription=x\nports=32720\n"
    ),
    "broken": "[Bad]\ntitle=b\ndescription=x\nports=1:2\n\n[NoPorts]\ntitle=n\ndescription=x\n",
    ".hidden": "[Hidden]\ntitle=h\ndescription=x\nports=1/tcp\n",
    "k3s.dpkg-old": "[Old]\ntitle=o\ndescription=x\nports=1/tcp\n",
    "zz-override": "[Flannel]\ntitle=VXLAN\ndescription=moved\nports=4789/udp\n",
    "not-ini": "ports=1/tcp\n",
    "all": "[all]\ntitle=t\ndescription=d\nports=1/tcp\n\n[123]\ntitle=t\ndescription=d\nports=1/tcp\n",
}


def test_profiles_are_read_as_ufw_reads_them() -> None:
    profiles = parse_app_profiles(PROFILES)
    assert sorted(profiles) == ["AnyProto", "Flannel", "K3s NodePorts", "Mixed", "OpenSSH"]
    assert profiles["Flannel"].entries == (("udp", "4789"),)  # the later file wins
    assert profiles["Mixed"].entries == (("tcp", "31695"), ("udp", "8472"))
    assert profiles["AnyProto"].entries == ((None, "32720"),)


def test_rules_naming_a_profile() -> None:
    apps = parse_app_profiles(PROFILES)
    rs = Ruleset(
        rules4=rules("ufw allow from 10.0.0.0/16 to any app 'K3s NodePorts'", "ufw limit Mixed", "ufw reject AnyProto"),
        profiles=tuple(apps.values()),
    )
    assert decide(rs, flow("32720")).verdict is Verdict.ALLOW
    assert decide(rs, flow("31695", source="192.0.2.1")).verdict is Verdict.LIMIT
    assert decide(rs, flow("8472", "udp")).verdict is Verdict.LIMIT
    assert decide(rs, flow("32720", "udp")).verdict is Verdict.REJECT
    assert decide(rs, flow("4789", "udp")).verdict is Verdict.DENY
    with pytest.raises(UnknownProfile, match="WWW"):
        decide(replace(rs, rules4=rules("ufw allow WWW")), flow())


def test_profile_names_ignore_case_when_one_matches() -> None:
    rs = Ruleset(rules4=rules("ufw allow openssh"), profiles=tuple(parse_app_profiles(PROFILES).values()))
    assert decide(rs, flow("22")).verdict is Verdict.ALLOW


def test_rules_read_from_user_rules_carry_their_ports() -> None:
    """The tuple's ports are what iptables enforces, even when the profile changed since (or is not given)."""
    text = (DATA / "realworld" / "ufw-limit" / "user.rules").read_text()
    rs = Ruleset.from_files(text, None, 'IPV6=no\nDEFAULT_INPUT_POLICY="DROP"\n', active=True)
    assert rs.rules4[0].app == "OpenSSH" and rs.rules4[0].app_ports == ("tcp", "22", "any")
    assert decide(rs, flow("22")).verdict is Verdict.ALLOW
    with pytest.raises(UnknownProfile):
        decide(replace(rs, rules4=(replace(rs.rules4[0], app_ports=None),)), flow("22"))


def test_source_application_rules() -> None:
    apps = tuple(
        parse_app_profiles({"c": "[Clients]\ntitle=c\ndescription=c\nports=20000:59999/tcp\n", **PROFILES}).values()
    )
    rs = Ruleset(rules4=rules("ufw allow from any app Clients to any app 'K3s NodePorts'"), profiles=apps)
    assert decide(rs, flow(sport="40000")).verdict is Verdict.ALLOW
    assert decide(rs, flow(sport="1000")).verdict is Verdict.DENY


# -- what ufw does when a rule is added --------------------------------------------------------


def test_add_appends_per_family_and_skips_an_equal_rule() -> None:
    rs = Ruleset(rules4=rules("ufw allow from 10.0.0.0/16 to any port 31695 proto tcp"))
    same = rs.add(want("31695", "tcp"))
    assert same.skipped == (4,) and same.ruleset == rs
    both = rs.add(UfwRule(port="8472", proto="udp"))
    assert both.ruleset.rules4[-1] == both.ruleset.rules6[-1] == UfwRule(port="8472", proto="udp")
    assert rule_families(UfwRule(source="fd00::/8")) == (6,) and rule_families(UfwRule()) == (4, 6)
    with pytest.raises(ValueError, match="mixed"):
        rule_families(UfwRule(source="10.0.0.0/8", dest="fd00::1"))
    with pytest.raises(ValueError, match="IPv6"):
        replace(rs, ipv6=False).add(UfwRule(source="fd00::/8"))


def test_add_rewrites_a_rule_that_differs_only_by_action() -> None:
    """ufw allow 31695/tcp over ufw limit 31695/tcp turns the operator's limit into an allow, in place."""
    rs = from_case(DATA / "realworld" / "ufw-limit")
    added = rs.add(UfwRule(port="31695", proto="tcp"))
    assert added.replaced == (parse_rule_command("ufw limit 31695/tcp"),)
    assert added.ruleset.rules4[1] == UfwRule(port="31695", proto="tcp") and len(added.ruleset.rules4) == 3
    assert added.ruleset.rules6[-1] == UfwRule(port="31695", proto="tcp")  # no v6 twin: appended there
    # insert and prepend skip it instead
    assert rs.add(UfwRule(port="31695", proto="tcp"), position=-1).skipped == (4,)


def test_insert_puts_the_v6_copy_next_to_the_v4_rules_twin() -> None:
    rs = Ruleset(rules4=rules("ufw allow from 10.9.0.0/16", "ufw allow 22/tcp"), rules6=rules("ufw allow 22/tcp"))
    at2 = rs.add(UfwRule(port="31695", proto="tcp"), position=2).ruleset
    assert at2.rules4[1] == at2.rules6[0] == UfwRule(port="31695", proto="tcp")
    at1 = rs.add(UfwRule(port="31695", proto="tcp"), position=1).ruleset
    assert at1.rules4[0] == UfwRule(port="31695", proto="tcp") and at1.rules6[-1] == UfwRule(port="31695", proto="tcp")
    with pytest.raises(ValueError, match="position"):
        Ruleset().add(UfwRule(port="31695", proto="tcp"), position=1)  # ufw: Invalid position '1'
    v6_only = rs.add(UfwRule(port="31695", proto="tcp", source="fd00::/8"), position=3).ruleset
    assert v6_only.rules6[0].source == "fd00::/8"  # 3 = the first v6 rule in ufw status numbered


def test_flows_are_checked() -> None:
    with pytest.raises(ValueError, match="IPv6"):
        Flow(6, "1", "tcp", source="10.0.0.0/8")
    with pytest.raises(ValueError, match="port"):
        Flow(4, "0", "tcp")
    with pytest.raises(ValueError, match="proto"):
        Flow(4, "1", "icmp")
    with pytest.raises(ValueError, match="policy"):
        Ruleset(incoming="drop")


def test_judgements_read_well() -> None:
    rs = from_case(DATA / "realworld" / "ufw-order-allow-before-deny")
    (j,) = judge_rule(rs, want("31695", "tcp"))
    assert j.describe() == (
        "IPv4 ufw allow from 10.0.0.0/16 to any port 31695 proto tcp: allowed "
        "(allow by user.rules rule 2: ufw allow from 10.0.0.0/16 to any)"
    )
    partly = judge(rs, flow(source="10.0.0.0/15"))
    assert partly.describe() == (
        "IPv4 31695/tcp from 10.0.0.0/15: partly: 10.0.0.0/16: allow by user.rules rule 2: "
        "ufw allow from 10.0.0.0/16 to any; 10.1.0.0/16: deny by user.rules rule 3: ufw deny 31695/tcp"
    )


# -- a flow from a network is the sum of its addresses -----------------------------------------

_NETS = (
    "any",
    "10.0.0.0/24",
    "10.0.0.0/25",
    "10.0.0.128/25",
    "10.0.0.64/26",
    "10.0.0.16/28",
    "10.0.0.200/30",
    "10.0.0.7",
    "10.0.0.130",
    "10.0.1.0/24",
)


@st.composite
def _rulesets(draw: st.DrawFn) -> Ruleset:
    found = []
    for _ in range(draw(st.integers(0, 8))):
        found.append(
            UfwRule(
                action=draw(st.sampled_from(("allow", "deny", "reject", "limit"))),
                port=draw(st.sampled_from((None, "31695", "30000:32767", "8472,31695"))),
                proto=draw(st.sampled_from((None, "tcp", "udp"))),
                source=draw(st.sampled_from(_NETS)),
                interface=draw(st.sampled_from((None, None, "enp7s0"))),
            )
        )
    found = [r for r in found if not (r.port and "," in r.port and r.proto is None)]
    return Ruleset(rules4=tuple(found), incoming=draw(st.sampled_from(("allow", "deny", "reject"))))


@settings(max_examples=300, deadline=None)
@given(
    _rulesets(),
    st.sampled_from(("10.0.0.0/24", "10.0.0.0/26", "10.0.0.128/25", "any")),
    st.lists(st.integers(0, 255), min_size=1, max_size=8),
)
def test_a_network_is_judged_as_each_of_its_addresses(rs: Ruleset, network: str, hosts: list[int]) -> None:
    j = judge(rs, Flow(4, "31695", "tcp", source=network, interface="enp7s0"))
    net = ipaddress.ip_network("0.0.0.0/0" if network == "any" else network)
    assert (
        sum(ipaddress.ip_network("0.0.0.0/0" if s == "any" else s).num_addresses for p in j.pieces for s in p.sources)
        == net.num_addresses
    )  # the pieces part the network
    for h in hosts:
        address = str(ipaddress.ip_address(int(net.network_address) + h % net.num_addresses))
        (piece,) = j.at(address)
        assert piece.decision == decide(rs, Flow(4, "31695", "tcp", source=address, interface="enp7s0"))
