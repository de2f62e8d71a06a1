"""ufw's own files read without ufw: tuples, defaults, chain status and the probe around them.

The tuple lines are what ufw 0.36 wrote on a lab host for the rules named next to them; the lab
test ``tests/integration/test_ufw_files.py`` holds the whole reader equal to ``ufw show added``.
"""

import pytest

from keybuzz_fix.hosts.sections import MARK
from keybuzz_fix.hosts.ufw import files as ufw_files
from keybuzz_fix.hosts.ufw.facts import parse_ufw_facts, ufw_probe
from keybuzz_fix.hosts.ufw.rules import ParseError, UfwRule, parse_rule_command

CASES = [
    ("allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in", "ufw allow 22/tcp"),
    ("limit tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in", "ufw limit OpenSSH"),
    ("deny any any 0.0.0.0/0 any 198.51.100.7 in", "ufw deny from 198.51.100.7"),
    ("deny_log tcp 25 0.0.0.0/0 any 0.0.0.0/0 in", "ufw deny log 25/tcp"),
    ("reject any 111 0.0.0.0/0 any 0.0.0.0/0 in", "ufw reject 111"),
    ("allow tcp 80,443 0.0.0.0/0 any 0.0.0.0/0 in", "ufw allow 80,443/tcp"),
    ("allow tcp 9100 0.0.0.0/0 any 0.0.0.0/0 in_eth0", "ufw allow in on eth0 to any port 9100 proto tcp"),
    ("allow udp 53 0.0.0.0/0 any 0.0.0.0/0 out", "ufw allow out 53/udp"),
    (
        "allow_log-all tcp 9000 0.0.0.0/0 any 10.9.0.0/16 in",
        "ufw allow log-all from 10.9.0.0/16 to any port 9000 proto tcp",
    ),
    ("allow udp 31695 0.0.0.0/0 53 10.0.0.0/8 in", "ufw allow from 10.0.0.0/8 port 53 to any port 31695 proto udp"),
    ("allow tcp any 0.0.0.0/0 22 10.1.0.0/16 - OpenSSH in", "ufw allow from 10.1.0.0/16 app OpenSSH"),
    (
        "allow tcp 22 198.18.0.0/24 any 10.2.0.0/16 OpenSSH - in",
        "ufw allow from 10.2.0.0/16 to 198.18.0.0/24 app OpenSSH",
    ),
    ("route:allow any any 0.0.0.0/0 any 10.43.0.0/16 in", "ufw route allow from 10.43.0.0/16"),
    (
        "route:allow tcp 80 10.42.0.0/16 any 0.0.0.0/0 in_eth0!out_eth1",
        "ufw route allow in on eth0 out on eth1 to 10.42.0.0/16 port 80 proto tcp",
    ),
    ("allow tcp 8080 ::/0 any 2001:db8::/32 in", "ufw allow from 2001:db8::/32 to any port 8080 proto tcp"),
    (
        "allow udp 8472 0.0.0.0/0 any 0.0.0.0/0 in comment=c3a96c616e202271756f74656422206e61c3af7665",
        "ufw allow 8472/udp comment 'élan \"quoted\" naïve'",
    ),
    (
        "allow tcp 8443 0.0.0.0/0 any 0.0.0.0/0 in comment=6f7073206e6f74650a7365636f6e64206c696e65",
        "ufw allow 8443/tcp comment 'ops note\nsecond line'",
    ),
    ("allow tcp 31695 0.0.0.0/0 any 10.0.0.0/16", "ufw allow from 10.0.0.0/16 to any port 31695 proto tcp"),
]


@pytest.mark.parametrize(("tupl", "shown"), CASES)
def test_tuple_is_the_rule_ufw_show_added_prints(tupl, shown):
    rule = ufw_files.parse_tuple(tupl)
    expected = parse_rule_command(shown)
    assert rule == expected and rule.comment == expected.comment
    assert parse_rule_command(rule.raw) == rule  # the rendering parses back


@pytest.mark.parametrize(
    ("tupl", "problem"),
    [
        ("allow tcp 22", "3 fields"),
        ("permit tcp 22 0.0.0.0/0 any 0.0.0.0/0 in", "unknown action"),
        ("fwd:allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in", "unknown rule kind"),
        ("allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 sideways", "unknown direction"),
        ("allow tcp 99999x 0.0.0.0/0 any 0.0.0.0/0 in", "bad port"),
        ("allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in comment=zz", "not hex"),
    ],
)
def test_malformed_tuples_are_errors(tupl, problem):
    with pytest.raises(ParseError, match=problem):
        ufw_files.parse_tuple(tupl)


def test_user_rules_error_names_file_and_line():
    text = (
        "*filter\n### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n-A ufw-user-input -j ACCEPT\n"
        "### tuple ### allow tcp\n"
    )
    with pytest.raises(ParseError, match=r"^/etc/ufw/user.rules:4: "):
        ufw_files.parse_user_rules(text)
    assert ufw_files.parse_user_rules(text.rsplit("###", 2)[0]) == [UfwRule(port="22", proto="tcp")]


def test_merge_keeps_one_line_per_command_v4_first():
    v4 = ufw_files.parse_user_rules(
        "### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n### tuple ### allow any any 0.0.0.0/0 any 10.0.0.5 in\n"
    )
    v6 = ufw_files.parse_user_rules(
        "### tuple ### allow tcp 22 ::/0 any ::/0 in\n### tuple ### allow tcp 8080 ::/0 any 2001:db8::/32 in\n"
    )
    merged = ufw_files.merge(v4, v6)
    assert [r.raw for r in merged] == [
        "ufw allow 22/tcp",
        "ufw allow from 10.0.0.5 to any",
        "ufw allow from 2001:db8::/32 to any port 8080 proto tcp",
    ]


def test_defaults_as_ufw_reads_them():
    text = '# comment\nIPV6=yes\nDEFAULT_INPUT_POLICY="REJECT"\nDEFAULT_OUTPUT_POLICY="ACCEPT"\n  IPT_SYSCTL=/etc/x\n'
    defaults = ufw_files.parse_defaults(text)
    assert defaults["ipv6"] == "yes" and defaults["default_input_policy"] == "reject"
    assert ufw_files.default_incoming(defaults) == "reject"
    assert ufw_files.default_incoming({"default_input_policy": "drop"}) == "deny"
    assert ufw_files.default_incoming({}) is None
    assert ufw_files.uses_ipv6(defaults, True) and not ufw_files.uses_ipv6(defaults, False)
    assert not ufw_files.uses_ipv6({"ipv6": "no"}, True)


@pytest.mark.parametrize(
    ("lines", "active"),
    [
        (["input 0", "output 0", "forward 0"], True),
        (["input 1", "output 1", "forward 1"], False),
        (["input 0", "output 1", "forward 0"], False),
    ],
)
def test_chains_decide_active(lines, active):
    assert ufw_files.chains_active(lines) is active


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["input 4", "output 0", "forward 0"], "exit 4"),
        (["input 0", "output 0"], "forward"),
        ([], "input"),
    ],
)
def test_chains_that_cannot_be_read_are_errors(lines, problem):
    with pytest.raises(ParseError, match=problem):
        ufw_files.chains_active(lines)


def files_probe(
    *,
    chains: str = "input 0\noutput 0\nforward 0",
    ipv6: str = "IPV6=yes",
    kernel_ipv6: str = "yes",
    rules6: bool = True,
) -> str:
    m = MARK
    six = f"{m} rules6\n|### tuple ### allow tcp 8080 ::/0 any 2001:db8::/32 in\n" if rules6 else ""
    return (
        f'{m} ssh\n198.18.0.1 40000 198.18.0.11 22\n{m} defaults\n|{ipv6}\n|DEFAULT_INPUT_POLICY="DROP"\n'
        f"{m} kernel-ipv6\n{kernel_ipv6}\n{m} chains\n{chains}\n"
        f"{m} rules\n|*filter\n|### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n{six}{m} end\n"
    )


def test_probe_from_files():
    facts = parse_ufw_facts(files_probe())
    assert facts.active and facts.default_incoming == "deny" and facts.ssh_port == 22
    assert [r.raw for r in facts.rules] == [
        "ufw allow 22/tcp",
        "ufw allow from 2001:db8::/32 to any port 8080 proto tcp",
    ]
    assert len(parse_ufw_facts(files_probe(ipv6="IPV6=no")).rules) == 1  # ufw ignores user6.rules
    assert len(parse_ufw_facts(files_probe(kernel_ipv6="no")).rules) == 1
    inactive = parse_ufw_facts(files_probe(chains="input 1\noutput 1\nforward 1"))
    assert not inactive.active and inactive.default_incoming is None  # as `ufw status` says: no policy in force


def test_probe_from_files_errors():
    with pytest.raises(ParseError, match="user6.rules is not readable"):
        parse_ufw_facts(files_probe(rules6=False))
    with pytest.raises(ParseError, match="cut short"):
        parse_ufw_facts(files_probe().rsplit(f"{MARK} end", 1)[0])
    with pytest.raises(ParseError, match="exit 3"):
        parse_ufw_facts(files_probe(chains="input 3\noutput 0\nforward 0"))


def test_a_file_line_cannot_pass_for_a_section_mark():
    text = files_probe().replace("|DEFAULT_INPUT_POLICY", f"|{MARK} end\n|DEFAULT_INPUT_POLICY")
    assert parse_ufw_facts(text).default_incoming == "deny"


def test_probe_script_reads_files_and_asks_ufw_only_as_fallback():
    script = ufw_probe()
    head, _, fallback = script.rpartition("else ")
    assert "ufw status" not in head and "ufw show added" not in head
    assert "cat /etc/ufw/user.rules" not in script and "sed 's/^/|/' /etc/ufw/user.rules" in head
    assert "ufw status verbose" in fallback and "ufw show added" in fallback
    assert "ufw status" not in ufw_probe(status=False)
