import subprocess
from pathlib import Path

import pytest

from keybuzz_fix.cli.parse import parse_ports, parse_source
from keybuzz_fix.errors import UsageError
from keybuzz_fix.hosts.sections import MARK
from keybuzz_fix.hosts.ufw.apply import apply_script, parse_apply
from keybuzz_fix.hosts.ufw.facts import UfwFacts, parse_show_added, parse_status, parse_ufw_facts, ufw_probe
from keybuzz_fix.hosts.ufw.plan import ActionKind, plan_rules
from keybuzz_fix.hosts.ufw.rules import ANY, ParseError, UfwRule, parse_rule_command

DATA = Path(__file__).parent.parent / "data" / "ufw"
HTTP = UfwRule(port="31695", proto="tcp", source="10.0.0.0/16", comment="keybuzz-fix: ingress-nginx HTTP NodePort")
HTTPS = UfwRule(port="32720", proto="tcp", source="10.0.0.0/16", comment="keybuzz-fix: ingress-nginx HTTPS NodePort")
SSH_ONLY = (UfwRule(port="22", proto="tcp", raw="ufw allow 22/tcp"),)


def probe(status: str, added: str, ssh: str = "198.18.0.1 40000 198.18.0.11 22") -> str:
    m = MARK
    return f"{m} ssh\n{ssh}\n{m} status\n{status}\n{m} added\n{added}\n{m} end\n"


def test_parse_show_added_fixture():
    rules = parse_show_added((DATA / "show-added-mixed.txt").read_text())
    assert len(rules) == 12
    assert rules[1] == HTTP and rules[1].comment == HTTP.comment
    assert rules[3].app == "OpenSSH" and rules[3].action == "limit"
    assert rules[5].interface == "eth0" and rules[5].source == "10.42.0.0/16" and rules[5].port is None
    assert rules[7].ports() == set(range(30000, 30101))
    assert rules[8].ports() == {80, 443}
    assert rules[9].proto is None and rules[9].action == "reject"
    assert rules[10].dest == "10.0.0.1"


def test_rendered_commands_parse_back_to_the_same_rule():
    for rule in parse_show_added((DATA / "show-added-mixed.txt").read_text()):
        again = parse_rule_command(rule.command())
        assert again == rule and again.comment == rule.comment


def test_command_quotes_comment_and_restricts_source():
    assert HTTP.command() == (
        "ufw allow from 10.0.0.0/16 to any port 31695 proto tcp comment 'keybuzz-fix: ingress-nginx HTTP NodePort'"
    )
    assert UfwRule(port="31695", proto="tcp").command() == "ufw allow 31695/tcp"


def test_parse_status_files():
    assert parse_status((DATA / "status-verbose-mixed.txt").read_text()) == (True, "deny")
    assert parse_status((DATA / "status-inactive.txt").read_text()) == (False, None)
    with pytest.raises(ParseError):
        parse_status("ERROR: You need to be root to run this script")


def test_parse_probe_full_and_missing():
    facts = parse_ufw_facts(
        probe((DATA / "status-verbose-mixed.txt").read_text(), (DATA / "show-added-mixed.txt").read_text())
    )
    assert facts.installed and facts.active and facts.default_incoming == "deny"
    assert facts.ssh_client_ip == "198.18.0.1" and facts.ssh_port == 22
    assert len(facts.rules) == 12
    m = MARK
    missing = parse_ufw_facts(f"{m} ssh\n\n{m} missing\n")
    assert missing == UfwFacts(installed=False)
    with pytest.raises(ParseError, match="cut short"):
        parse_ufw_facts(f"{m} ssh\n\n{m} status\nStatus: active\n")


def test_plan_adds_missing_rules_in_order():
    facts = UfwFacts(installed=True, active=True, rules=SSH_ONLY)
    actions = plan_rules([HTTP, HTTPS], facts)
    assert [a.kind for a in actions] == [ActionKind.ADD, ActionKind.ADD]
    assert [a.rule for a in actions] == [HTTP, HTTPS]


def test_plan_is_idempotent():
    facts = UfwFacts(installed=True, active=True, rules=SSH_ONLY + (HTTP, HTTPS))
    actions = plan_rules([HTTP, HTTPS], facts)
    assert all(a.kind is ActionKind.NOOP for a in actions)
    assert "already present" in actions[0].reason


def test_plan_same_rule_with_other_comment_is_present():
    other = UfwRule(port="31695", proto="tcp", source="10.0.0.0/16", comment="added by hand")
    facts = UfwFacts(installed=True, active=True, rules=(other,))
    assert plan_rules([HTTP], facts)[0].kind is ActionKind.NOOP


def test_plan_broader_rule_is_a_noop_with_reason():
    broad = UfwRule(port="30000:32767", proto="tcp", raw="ufw allow 30000:32767/tcp")
    facts = UfwFacts(installed=True, active=True, rules=(broad,))
    (a,) = plan_rules([HTTP], facts)
    assert a.kind is ActionKind.NOOP and "30000:32767" in a.reason


def test_plan_narrower_rule_does_not_count():
    narrow = UfwRule(port="31695", proto="tcp", source="10.0.1.0/24")
    facts = UfwFacts(installed=True, active=True, rules=(narrow,))
    assert plan_rules([HTTP], facts)[0].kind is ActionKind.ADD


def test_plan_reports_shadowing_deny_rule():
    deny = UfwRule(action="deny", port="31695", proto="tcp", raw="ufw deny 31695/tcp")
    facts = UfwFacts(installed=True, active=True, rules=(deny,))
    (a,) = plan_rules([HTTP], facts)
    assert a.kind is ActionKind.BLOCKED and "ufw deny 31695/tcp" in a.reason
    unrelated = UfwRule(action="deny", port="32720", proto="tcp", source="203.0.113.0/24")
    assert plan_rules([HTTPS], UfwFacts(installed=True, active=True, rules=(unrelated,)))[0].kind is ActionKind.ADD


def test_plan_inactive_without_enable_is_blocked():
    actions = plan_rules([HTTP], UfwFacts(installed=True, active=False, rules=SSH_ONLY))
    assert [a.kind for a in actions] == [ActionKind.ADD, ActionKind.BLOCKED]
    assert "--enable" in actions[-1].reason


def test_plan_enable_adds_ssh_rule_first_when_missing():
    facts = UfwFacts(installed=True, active=False, rules=(), ssh_client_ip="198.18.0.1", ssh_port=2222)
    actions = plan_rules([HTTP], facts, enable=True)
    assert [a.kind for a in actions] == [ActionKind.ADD, ActionKind.ADD, ActionKind.ENABLE]
    assert actions[0].rule == UfwRule(port="2222", proto="tcp")
    assert actions[-1].command == "ufw --force enable"


@pytest.mark.parametrize(
    "existing",
    [
        UfwRule(port="22", proto="tcp"),
        UfwRule(action="limit", app="OpenSSH"),
        UfwRule(port="22", proto="tcp", source="198.18.0.0/24"),
        UfwRule(source="198.18.0.0/16"),
    ],
)
def test_plan_enable_keeps_existing_ssh_rule(existing):
    facts = UfwFacts(installed=True, active=False, rules=(existing,), ssh_client_ip="198.18.0.1", ssh_port=22)
    actions = plan_rules([HTTP], facts, enable=True)
    assert actions[0].kind is ActionKind.NOOP and "SSH port 22 already allowed" in actions[0].reason
    assert [a.kind for a in actions[1:]] == [ActionKind.ADD, ActionKind.ENABLE]


@pytest.mark.parametrize(
    "rule",
    [
        "ufw allow from 198.18.0.0/24 app OpenSSH",  # source port 22: replies of the host's own SSH client
        "ufw allow from 198.18.0.0/24 port 40000 to any port 22 proto tcp",  # one source port only
    ],
)
def test_plan_enable_source_port_rules_do_not_keep_ssh_open(rule):
    facts = UfwFacts(
        installed=True,
        active=False,
        rules=(parse_rule_command(rule),),
        ssh_client_ip="198.18.0.1",
        ssh_port=22,
    )
    assert plan_rules([HTTP], facts, enable=True)[0].kind is ActionKind.ADD


def test_source_port_and_source_app_parse_apart_from_destination():
    sport = parse_rule_command("ufw allow from 10.0.0.0/8 port 53 to any port 31695 proto udp")
    assert (sport.sport, sport.port, sport.proto) == ("53", "31695", "udp")
    assert parse_rule_command("ufw allow from 10.0.0.0/8 port 53").port is None
    sapp = parse_rule_command("ufw allow from 10.1.0.0/16 app OpenSSH")
    assert (sapp.source_app, sapp.app, sapp.ports()) == ("OpenSSH", None, None)
    both = parse_rule_command("ufw allow from 10.2.0.0/16 app OpenSSH to any app OpenSSH")
    assert (both.source_app, both.app) == ("OpenSSH", "OpenSSH")
    for rule in (sport, sapp, both):
        assert parse_rule_command(rule.command()) == rule
    assert not UfwRule(port="31695", proto="udp", source="10.0.0.0/8", sport="53").covers(
        UfwRule(port="31695", proto="udp", source="10.0.0.0/16")
    )


def test_plan_enable_ssh_rule_for_other_network_does_not_count():
    facts = UfwFacts(
        installed=True,
        active=False,
        rules=(UfwRule(port="22", proto="tcp", source="10.9.0.0/16"),),
        ssh_client_ip="198.18.0.1",
        ssh_port=22,
    )
    assert plan_rules([HTTP], facts, enable=True)[0].kind is ActionKind.ADD


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("31695/tcp,32720/tcp", [(31695, "tcp"), (32720, "tcp")]),
        ("8472/udp", [(8472, "udp")]),
        ("31695", [(31695, "tcp")]),
    ],
)
def test_parse_ports(spec, expected):
    assert parse_ports(spec) == expected


@pytest.mark.parametrize("spec", ["abc", "31695/sctp", "0", "70000", "22/tcp", "31695,31695", "1;reboot", ""])
def test_parse_ports_rejects(spec):
    with pytest.raises(UsageError, match="--ports"):
        parse_ports(spec)


@pytest.mark.parametrize(
    ("value", "expected"), [("10.0.0.0/16", "10.0.0.0/16"), ("any", ANY), ("198.18.0.5", "198.18.0.5")]
)
def test_parse_source(value, expected):
    assert parse_source(value) == expected


@pytest.mark.parametrize("value", ["10.0.0.1/16", "nope", "10.0.0.0/33", "$(touch /tmp/x)", ""])
def test_parse_source_rejects(value):
    with pytest.raises(UsageError, match="--source"):
        parse_source(value)


def test_apply_script_runs_in_order_and_stops_at_first_failure(tmp_path):
    log = tmp_path / "log"
    commands = [f"echo one >> {log}", "sh -c 'echo boom; exit 3'", f"echo three >> {log}"]
    out = subprocess.run(["sh", "-c", apply_script(commands)], capture_output=True, text=True, check=True).stdout
    ran, failure = parse_apply(out, commands)
    assert ran == commands[:1]
    assert failure == (commands[1], "boom")
    assert log.read_text() == "one\n"


def test_parse_apply_truncated_output_is_neither_done_nor_failed():
    ran, failure = parse_apply("", ["ufw allow 1/tcp"])
    assert ran == [] and failure is None  # the caller sees fewer answers than commands: unknown


def test_a_script_killed_mid_way_answers_for_what_ran_before_only(tmp_path):
    log = tmp_path / "log"
    commands = [f"echo one >> {log}", "kill -KILL $$", f"echo three >> {log}"]  # $$: the script's own shell
    proc = subprocess.run(["sh", "-c", apply_script(commands)], capture_output=True, text=True, check=False)
    assert proc.returncode == -9
    assert parse_apply(proc.stdout, commands) == (commands[:1], None)
    assert log.read_text() == "one\n"


def test_read_back_probe_without_status_keeps_the_known_status():
    script = ufw_probe(status=False)
    assert "ufw status" not in script and "ufw show added" in script
    m = MARK
    header = "Added user rules (see 'ufw status' for running firewall):"
    out = f"{m} ssh\n\n{m} added\n{header}\n{HTTP.command()}\n{m} end\n"
    known = UfwFacts(installed=True, active=True, default_incoming="deny")
    facts = parse_ufw_facts(out, known=known)
    assert (facts.active, facts.default_incoming, facts.rules) == (True, "deny", (HTTP,))
    with pytest.raises(ParseError, match="cut short"):
        parse_ufw_facts(out)  # no status and nothing known: the probe was cut short
