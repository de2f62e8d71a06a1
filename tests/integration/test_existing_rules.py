"""`ufw` and `overlay` on hosts that already carry an operator's rules: nothing removed, reordered or replaced.

The lab host starts with a varied rule set of the kind real workers carry: a rate-limited OpenSSH
application rule, deny and reject rules, an inserted rule at the top, a multi-port rule, a range,
an interface rule, an outgoing rule, a routed (FORWARD) rule, an IPv6-only rule, and a rule whose
comment spans two lines. After `ufw` and `overlay` the `ufw show added` list must start with
exactly the rules it had, the default policies must be the same, and the SSH rules untouched.
(ufw lists the IPv4 and dual-stack rules first, then the IPv6-only ones, each family in its own
order: the prefix is checked per family.) A
second host is inactive with the same rules: with --enable it must be enabled without a new SSH
rule, because `limit OpenSSH` already keeps SSH open.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from keybuzz_fix.hosts.ufw.facts import parse_show_added
from tests.lab.hosts import HostSpec, Lab, LabHost

pytestmark = pytest.mark.integration
EXISTING = (
    "ufw limit OpenSSH",
    "ufw deny from 203.0.113.0/24",
    "ufw deny 25/tcp",
    "ufw reject 111",
    "ufw allow 80,443/tcp",
    "ufw allow 30000:30100/tcp",
    "ufw allow in on eth0 to any port 9100 proto tcp",
    "ufw allow out 53/udp",
    "ufw route allow from 10.43.0.0/16",
    "ufw allow from 2001:db8::/32 to any port 8080 proto tcp",
    "ufw allow 8443/tcp comment \"$(printf 'ops note\\nsecond line')\"",
    "ufw insert 1 deny from 198.51.100.7",
)


def prepare(host: LabHost) -> None:
    for rule in EXISTING:
        host.run(rule)


def show_added(host: LabHost) -> str:
    return host.run("ufw show added").stdout


def by_family(text: str) -> tuple[list[str], list[str]]:
    """The rules as ufw prints them: (IPv4 and dual-stack, IPv6 only), each in ufw's order."""
    rules = parse_show_added(text)
    v6 = [r.raw for r in rules if ":" in r.source or ":" in r.dest]
    return [r.raw for r in rules if r.raw not in v6], v6


def defaults(host: LabHost) -> list[str]:
    return [line for line in host.run("ufw status verbose").stdout.splitlines() if line.startswith("Default:")]


def run(lab: Lab, command: str, servers: Path, *args: str) -> dict:
    result = CliRunner().invoke(
        app,
        [
            command,
            str(servers),
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(lab.known_hosts_file),
            "--timeout",
            "5",
            "--yes",
            "-o",
            "json",
            *args,
        ],
    )
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.usefixtures("state_dir")
def test_ufw_and_overlay_keep_every_existing_rule_in_place(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    with lab_factory([HostSpec("k8s-worker-01"), HostSpec("k8s-worker-02", ufw_active=False)]) as lab:
        active, inactive = lab.hosts
        for h in lab.hosts:
            prepare(h)
        before = {h.name: show_added(h) for h in lab.hosts}
        policies = defaults(active)
        assert "second line'" in before[active.name]  # the two-line comment is there, as ufw prints it
        servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())

        data = run(lab, "ufw", servers, "--source", "198.18.0.0/24", "--enable")
        assert {h["hostname"]: h["status"] for h in data["hosts"]} == {active.name: "changed", inactive.name: "changed"}
        applied = {h["hostname"]: h["applied"] for h in data["hosts"]}
        assert not any("SSH" in cmd for cmd in applied[inactive.name])  # limit OpenSSH already keeps SSH open
        assert applied[inactive.name][-1] == "ufw --force enable"
        assert lab.tcp_reachable(inactive.ip, 22)
        run(lab, "overlay", servers)

        for h in lab.hosts:
            (v4, v6), (old4, old6) = by_family(show_added(h)), by_family(before[h.name])
            assert v6 == old6  # the IPv6-only rule, untouched
            assert v4[: len(old4)] == old4, v4  # the same rules, in the same order, first
            new = v4[len(old4) :]
            assert new == [
                "ufw allow from 198.18.0.0/24 to any port 31695 proto tcp "
                "comment 'keybuzz-fix: ingress-nginx HTTP NodePort'",
                "ufw allow from 198.18.0.0/24 to any port 32720 proto tcp "
                "comment 'keybuzz-fix: ingress-nginx HTTPS NodePort'",
                # 80 and 443 are already allowed (allow 80,443/tcp): only the apps' host ports are added
                "ufw allow from 198.18.0.0/24 to any port 8080 proto tcp comment 'keybuzz-fix: keybuzz-api host port'",
                "ufw allow from 198.18.0.0/24 to any port 3000 proto tcp "
                "comment 'keybuzz-fix: keybuzz-front host port'",
                "ufw allow from 10.0.0.0/16 to any port 8472 proto udp comment 'keybuzz-fix: flannel VXLAN'",
                "ufw allow from 10.42.0.0/16 comment 'keybuzz-fix: pod network'",
                # the routed rule for the service network does not let it in: an input rule is added
                "ufw allow from 10.43.0.0/16 comment 'keybuzz-fix: service network'",
            ], new
            assert defaults(h) == policies
        assert lab.tcp_reachable(active.ip, 22)

        done = {h.name: show_added(h) for h in lab.hosts}
        for command, extra in (("ufw", ("--source", "198.18.0.0/24", "--enable")), ("overlay", ())):
            again = run(lab, command, servers, *extra)
            assert {h["status"] for h in again["hosts"]} == {"unchanged"}
        assert {h.name: show_added(h) for h in lab.hosts} == done
