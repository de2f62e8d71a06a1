"""The file-reading probe sees what ufw itself says, on real ufw.

The probe reads /etc/ufw/user*.rules, /etc/default/ufw and the ufw-user-* chains instead of
running ``ufw status verbose`` and ``ufw show added``. On lab hosts carrying every kind of rule
ufw writes (applications on either side, source ports, log types, route rules with two
interfaces, IPv6-only and dual-stack rules, comments with quotes, accents and a line break), an
inactive host, a host with IPV6=no and one with a reject policy, the facts from the files must
equal the facts from ufw's own output: same rules in the same order, same comments, same status
and default policy.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from keybuzz_fix.hosts.sections import MARK
from keybuzz_fix.hosts.ufw.facts import UFW_PROBE, UfwFacts, parse_show_added, parse_status, parse_ufw_facts
from tests.lab.hosts import HostSpec, Lab, LabHost

pytestmark = pytest.mark.integration
RULES = (
    "ufw limit OpenSSH",
    "ufw deny from 203.0.113.0/24",
    "ufw deny log 25/tcp",
    "ufw reject 111",
    "ufw allow 80,443/tcp",
    "ufw allow proto tcp from any to any port 6000:6007",
    "ufw allow in on eth0 to any port 9100 proto tcp",
    "ufw allow out 53/udp",
    "ufw allow log-all from 10.9.0.0/16 to any port 9000 proto tcp",
    "ufw allow from 10.0.0.0/8 port 53 to any port 31695 proto udp",
    "ufw allow from 10.1.0.0/16 app OpenSSH",
    "ufw allow from 10.2.0.0/16 to 198.18.0.0/24 app OpenSSH",
    "ufw allow to 198.18.0.0/24 port 9999 proto tcp",
    "ufw route allow from 10.43.0.0/16",
    "ufw route allow in on eth0 out on eth1 to 10.42.0.0/16 port 80 proto tcp",
    "ufw allow from 2001:db8::/32 to any port 8080 proto tcp",
    "ufw allow 8472/udp comment 'élan \"quoted\" naïve'",
    "ufw allow 8443/tcp comment \"$(printf 'ops note\\nsecond line')\"",
    "ufw insert 1 deny from 198.51.100.7",
    "ufw allow from 10.0.0.5",
)


def from_files(host: LabHost) -> UfwFacts:
    out = host.run(UFW_PROBE).stdout
    assert f"{MARK} rules" in out and f"{MARK} status" not in out  # the files were read, ufw not run
    return parse_ufw_facts(out)


def from_ufw(host: LabHost) -> UfwFacts:
    active, default = parse_status(host.run("LC_ALL=C ufw status verbose").stdout)
    rules = parse_show_added(host.run("LC_ALL=C ufw show added").stdout)
    return UfwFacts(installed=True, active=active, default_incoming=default, rules=rules)


def assert_same(host: LabHost) -> None:
    files, ufw = from_files(host), from_ufw(host)
    assert (files.active, files.default_incoming) == (ufw.active, ufw.default_incoming)
    assert files.rules == ufw.rules  # equal rules, in ufw's order
    assert [r.comment for r in files.rules] == [r.comment for r in ufw.rules]


def set_default(host: LabHost, key: str, value: str) -> None:
    """Edit the host's own /etc/default/ufw in place (it is a bind mount: no rename over it)."""
    host.run(
        f"sed 's/^{key}=.*/{key}={value}/' /etc/default/ufw > /tmp/ufw-default && "
        "cat /tmp/ufw-default > /etc/default/ufw"
    )


def test_files_give_what_ufw_says(lab_factory: Callable[..., Lab]) -> None:
    specs = [HostSpec("k8s-worker-01"), HostSpec("k8s-worker-02", ufw_active=False), HostSpec("k8s-worker-03")]
    with lab_factory(specs) as lab:
        active, inactive, no_v6 = lab.hosts
        for host in lab.hosts:
            assert_same(host)  # as the lab made it: active with 22/tcp, or pristine
            for rule in RULES:
                host.run(rule)
        active.run("ufw default reject incoming")
        set_default(no_v6, "IPV6", "no")
        no_v6.run("ufw reload")

        for host in lab.hosts:
            assert_same(host)
        facts = from_files(active)
        assert facts.active and facts.default_incoming == "reject"
        assert not from_files(inactive).active
        assert len(facts.rules) == len(RULES) + 1  # the lab's 22/tcp, and each rule once though most are dual-stack
        assert "second line" in next(r.comment for r in facts.rules if r.port == "8443")
        assert next(r for r in facts.rules if r.port == "31695").sport == "53"
        assert not any("2001:db8" in r.source for r in from_files(no_v6).rules)  # IPV6=no: ufw ignores user6.rules

        active.run("ufw disable")  # the chains go, the files stay: inactive, same rules
        assert_same(active)
        assert not from_files(active).active and from_files(active).rules == facts.rules
