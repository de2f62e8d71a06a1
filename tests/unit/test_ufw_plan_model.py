"""The UFW plan asks the verdict model: what it adds, what it reports, and the read-back after apply."""

from __future__ import annotations

from dataclasses import dataclass, field

from keybuzz_fix.hosts.sections import MARK
from keybuzz_fix.hosts.ssh import CommandResult
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.hosts.ufw import apply as ufw_apply
from keybuzz_fix.hosts.ufw.apply import APPLY_MARK, FirewallRun
from keybuzz_fix.hosts.ufw.facts import UfwFacts, parse_addresses, parse_ufw_facts
from keybuzz_fix.hosts.ufw.plan import ActionKind, Arrival, plan_rules
from keybuzz_fix.hosts.ufw.rules import UfwRule, parse_rule_command
from keybuzz_fix.hosts.ufw.run import HostStatus
from keybuzz_fix.inventory import Host

HTTP = UfwRule(port="31695", proto="tcp", source="10.0.0.0/16", comment="keybuzz-fix: ingress-nginx HTTP NodePort")
HOST = Host("k8s-worker-01", "10.0.0.11", None, "root", "prod", "k3s", "worker")
DEFAULTS = 'IPV6=yes\nDEFAULT_INPUT_POLICY="DROP"\nDEFAULT_FORWARD_POLICY="DROP"\n'


def probe(v4: list[str], v6: list[str] = (), defaults: str = DEFAULTS, iface: str = "enp7s0") -> str:
    """The facts probe's output for a host with these user.rules / user6.rules tuples."""

    def lines(text: str) -> str:
        return "\n".join("|" + line for line in text.splitlines())

    rules = "\n".join(f"### tuple ### {t}" for t in v4)
    rules6 = "\n".join(f"### tuple ### {t}" for t in v6)
    return (
        f"{MARK} ssh\n10.0.0.2 40000 10.0.0.11 22\n{MARK} defaults\n{lines(defaults)}\n{MARK} kernel-ipv6\nyes\n"
        f"{MARK} chains\ninput 0\noutput 0\nforward 0\n{MARK} rules\n{lines(rules)}\n{MARK} rules6\n{lines(rules6)}\n"
        f"{MARK} addresses\n|2: {iface}    inet 10.0.0.11/16 brd 10.0.255.255 scope global {iface}\n{MARK} end\n"
    )


SSH4, SSH6 = "allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in", "allow tcp 22 ::/0 any ::/0 in"
ARRIVAL = Arrival("10.0.0.11", "enp7s0")


def plan(v4: list[str], v6: list[str] = (), **kw: object) -> list:
    facts = parse_ufw_facts(probe(v4, v6))
    return plan_rules([HTTP], facts, arrival=ARRIVAL, **kw)  # type: ignore[arg-type]


def test_facts_keep_the_families_apart_and_the_interfaces():
    facts = parse_ufw_facts(probe([SSH4], [SSH6, "allow tcp 31695 ::/0 any ::/0 in"]))
    rs = facts.ruleset()
    assert [r.command() for r in rs.rules4] == ["ufw allow 22/tcp"]
    assert [r.command() for r in rs.rules6] == ["ufw allow 22/tcp", "ufw allow 31695/tcp"]
    assert facts.interface_of("10.0.0.11") == "enp7s0" and facts.interface_of("10.0.0.12") is None
    line = "|2: eth0@if7    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever"
    assert parse_addresses([line, "|garbage"]) == (("eth0", "fe80::1"),)


def test_a_deny_for_another_interface_does_not_block():
    (a,) = plan([SSH4, "deny any any 0.0.0.0/0 any 10.0.0.0/16 in_eth1"], [SSH6])
    assert a.kind is ActionKind.ADD


def test_a_partial_deny_leaves_the_rest_to_the_added_rule():
    (a,) = plan([SSH4, "deny tcp 31695 0.0.0.0/0 any 10.0.5.0/24 in"], [SSH6])
    assert a.kind is ActionKind.ADD and "except" in a.reason and "10.0.5.0/24" in a.reason


def test_a_same_match_rule_with_another_action_is_not_rewritten():
    """`ufw allow` over `ufw limit` of the same match rewrites the operator's rule in place: blocked."""
    (a,) = plan([SSH4, "limit tcp 31695 0.0.0.0/0 any 10.0.0.0/16 in"], [SSH6])
    assert a.kind is ActionKind.BLOCKED and "rewrite an existing rule in place" in a.reason


def test_our_rule_present_but_shadowed_is_blocked_even_with_insert_first():
    v4 = [SSH4, "deny tcp 31695 0.0.0.0/0 any 0.0.0.0/0 in", "allow tcp 31695 0.0.0.0/0 any 10.0.0.0/16 in"]
    for insert_first in (False, True):
        (a,) = plan(v4, [SSH6], insert_first=insert_first)
        assert a.kind is ActionKind.BLOCKED and "present but not reached" in a.reason
        assert "deny by rule 2 of user.rules: ufw deny 31695/tcp" in a.reason


def test_insert_first_over_a_deny_prepends():
    (a,) = plan([SSH4, "deny tcp 31695 0.0.0.0/0 any 0.0.0.0/0 in"], [SSH6], insert_first=True)
    assert a.kind is ActionKind.ADD and a.first
    assert a.command == "ufw prepend " + HTTP.command().removeprefix("ufw ")
    assert a.command.startswith("ufw prepend allow from 10.0.0.0/16 to any port 31695 proto tcp")


def test_enabling_never_cuts_ssh():
    """A deny for the SSH client comes first: an appended allow would not help, so ufw is not enabled."""
    facts = UfwFacts(
        installed=True,
        active=False,
        rules=(parse_rule_command("ufw deny from 198.18.0.0/24"),),
        ssh_client_ip="198.18.0.1",
        ssh_port=22,
    )
    actions = plan_rules([HTTP], facts, enable=True)
    assert actions[0].kind is ActionKind.BLOCKED and "would cut SSH" in actions[0].reason
    first = plan_rules([HTTP], facts, enable=True, insert_first=True)
    assert first[0].kind is ActionKind.ADD and first[0].command.startswith("ufw prepend allow 22/tcp")


@dataclass
class ScriptedSession:
    """Answers the first script (the probe) and the second (apply + read-back) with given outputs."""

    answers: list[str]
    scripts: list[str] = field(default_factory=list)

    def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        self.scripts.append(script)
        return CommandResult(script, 0, self.answers[len(self.scripts) - 1], "")

    def close(self) -> None:
        pass


def test_read_back_a_rule_added_but_shadowed_fails_the_host(monkeypatch, tmp_path):
    """The rule went in, but a deny now sits before it (added meanwhile): that host failed, not changed."""
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(tmp_path))
    added = "allow tcp 31695 0.0.0.0/0 any 10.0.0.0/16 in"
    after = probe([SSH4, "deny tcp 31695 0.0.0.0/0 any 0.0.0.0/0 in", added], [SSH6])
    session = ScriptedSession([probe([SSH4], [SSH6]), f"{APPLY_MARK} 0 0\nRule added\n{after}"])
    monkeypatch.setattr(ufw_apply, "open_session", lambda *_a, **_k: session)
    run = FirewallRun(hosts=[HOST], desired=lambda _h: [HTTP], ssh=SshOptions())
    (planned,) = run.plan()
    assert planned.status is HostStatus.PLANNED
    (done,) = run.apply([planned])
    assert done.status is HostStatus.FAILED and done.error is not None
    assert "added but not let in" in done.error.problem and "ufw deny 31695/tcp" in done.error.problem


def test_read_back_the_rule_let_in_is_changed(monkeypatch, tmp_path):
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(tmp_path))
    after = probe([SSH4, "allow tcp 31695 0.0.0.0/0 any 10.0.0.0/16 in"], [SSH6])
    session = ScriptedSession([probe([SSH4], [SSH6]), f"{APPLY_MARK} 0 0\nRule added\n{after}"])
    monkeypatch.setattr(ufw_apply, "open_session", lambda *_a, **_k: session)
    run = FirewallRun(hosts=[HOST], desired=lambda _h: [HTTP], ssh=SshOptions())
    (done,) = run.apply(run.plan())
    assert done.status is HostStatus.CHANGED and done.error is None


def test_without_arrival_traffic_arrives_where_ssh_came_in():
    """Planned without a host, the address SSH came in on (IP_PRIVEE) and its interface stand in."""
    from keybuzz_fix.config import OverlayConfig
    from keybuzz_fix.hosts.flannel.plan import overlay_rules

    rules = overlay_rules(OverlayConfig("10.0.0.0/16", 8472, "10.42.0.0/16", "10.43.0.0/16"))
    on_enp7s0 = [SSH4, "allow any any 0.0.0.0/0 any 10.0.0.0/16 in_enp7s0"]
    facts = parse_ufw_facts(probe(on_enp7s0, [SSH6]))
    assert facts.ssh_server_ip == "10.0.0.11"
    vxlan = plan_rules(rules, facts)[0]
    assert vxlan.kind is ActionKind.NOOP and "ufw allow in on enp7s0 from 10.0.0.0/16" in vxlan.reason
    elsewhere = plan_rules(rules, parse_ufw_facts(probe(on_enp7s0, [SSH6], iface="enp8s0")))[0]
    assert elsewhere.kind is ActionKind.ADD
