"""The five rule sets of issue 15, through the CLI (`ufw`, `overlay`, `validate --extended`'s row).

Each worker's UFW is given as the files UFW keeps (tests/data/ufw/realworld/ and cases/): the
probe's output is built from them and returned by a stand-in SSH session, so the whole path runs:
parse the facts, judge each wanted flow with the verdict model, plan, report, exit code. The same
cases run against real ufw in tests/integration/test_ufw_cases.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.checks.scorecard import ufw_row
from keybuzz_fix.cli import app
from keybuzz_fix.hosts.sections import MARK
from keybuzz_fix.hosts.ssh import CommandResult
from keybuzz_fix.hosts.ufw import apply as ufw_apply
from keybuzz_fix.hosts.ufw.facts import parse_ufw_facts
from keybuzz_fix.hosts.ufw.plan import Arrival, plan_rules
from keybuzz_fix.hosts.ufw.run import HostOutcome, ports_given
from keybuzz_fix.inventory import Host

DATA = Path(__file__).parent.parent / "data" / "ufw"
PRIVATE_IP = "10.0.0.11"
NODEPORTS = "31695/tcp,32720/tcp"


def probe_output(case: Path, *, iface: str = "enp7s0", active: bool = True) -> str:
    """What the facts probe prints on a host whose ufw files are those of ``case``."""

    def file(name: str) -> str:
        return "\n".join("|" + line for line in (case / name).read_text().splitlines())

    chains = "\n".join(f"{c} {0 if active else 1}" for c in ("input", "output", "forward"))
    addresses = (
        "|1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        f"|2: eth0    inet 203.0.113.11/32 scope global eth0\\       valid_lft forever\n"
        f"|3: {iface}    inet {PRIVATE_IP}/16 brd 10.0.255.255 scope global {iface}\\       valid_lft forever"
    )
    return (
        f"{MARK} ssh\n10.0.0.2 40000 {PRIVATE_IP} 22\n"
        f"{MARK} defaults\n{file('ufw.default')}\n{MARK} kernel-ipv6\nyes\n{MARK} chains\n{chains}\n"
        f"{MARK} rules\n{file('user.rules')}\n{MARK} rules6\n{file('user6.rules')}\n"
        f"{MARK} addresses\n{addresses}\n{MARK} end\n"
    )


@dataclass
class FakeSession:
    """Answers every script with the probe output of one rule set; records what it was asked."""

    output: str
    scripts: list[str] = field(default_factory=list)

    def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        self.scripts.append(script)
        return CommandResult(script, 0, self.output, "")

    def close(self) -> None:
        pass


@pytest.fixture
def servers(tmp_path: Path) -> Path:
    path = tmp_path / "servers.tsv"
    path.write_text(
        f"ENV\tHOSTNAME\tIP_PRIVEE\tUSER_SSH\tROLE\tSUBROLE\nprod\tk8s-worker-01\t{PRIVATE_IP}\troot\tk3s\tworker\n"
    )
    return path


def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, output: str, *args: str) -> tuple[int, dict, FakeSession]:
    session = FakeSession(output)
    monkeypatch.setattr(ufw_apply, "open_session", lambda *_a, **_k: session)
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(app, [*args, "--dry-run", "-o", "json"])
    try:
        data = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {result.exit_code}): {result.output}")
    return result.exit_code, data, session


def host_of(data: dict) -> dict:
    (host,) = data["hosts"]
    return host


def test_case1_limit_is_not_open_and_fails(monkeypatch, tmp_path, servers):
    """`limit 31695/tcp`, `limit 32720/tcp`: the load balancers would be throttled; blocked, exit 1."""
    code, data, _ = run(
        monkeypatch, tmp_path, probe_output(DATA / "realworld" / "ufw-limit"), "ufw", str(servers), "--ports", NODEPORTS
    )
    host = host_of(data)
    assert code == 1 and host["status"] == "blocked"
    assert [a["kind"] for a in host["actions"]] == ["blocked", "blocked"]
    first = host["actions"][0]["reason"]
    assert "throttled by rule 2 of user.rules: ufw limit 31695/tcp" in first
    assert "5 new connections in 30 s" in first and "--insert-first" in first
    assert "ufw limit 32720/tcp" in host["actions"][1]["reason"]


def test_case1_insert_first_puts_the_allow_rules_on_top(monkeypatch, tmp_path, servers):
    code, data, _ = run(
        monkeypatch,
        tmp_path,
        probe_output(DATA / "realworld" / "ufw-limit"),
        "ufw",
        str(servers),
        "--ports",
        NODEPORTS,
        "--insert-first",
    )
    host = host_of(data)
    assert code == 0 and host["status"] == "planned"
    assert [a["command"] for a in host["actions"]] == [
        "ufw prepend allow from 10.0.0.0/16 to any port 31695 proto tcp comment 'keybuzz-fix: port 31695/tcp'",
        "ufw prepend allow from 10.0.0.0/16 to any port 32720 proto tcp comment 'keybuzz-fix: port 32720/tcp'",
    ]
    assert all(a["first"] and "at the top" in a["reason"] for a in host["actions"])


def test_case2_allow_before_deny_is_already_open(monkeypatch, tmp_path, servers):
    """`allow from 10.0.0.0/16`, then `deny 31695/tcp`: the allow comes first; unchanged, exit 0."""
    code, data, _ = run(
        monkeypatch,
        tmp_path,
        probe_output(DATA / "realworld" / "ufw-order-allow-before-deny"),
        "ufw",
        str(servers),
        "--ports",
        NODEPORTS,
    )
    host = host_of(data)
    assert code == 0 and host["status"] == "unchanged"
    for a in host["actions"]:
        assert a["kind"] == "noop"
        assert a["reason"] == "already open: IPv4 by rule 2 of user.rules: ufw allow from 10.0.0.0/16 to any"


def test_case3_v6_leftover_does_not_open_ipv4(monkeypatch, tmp_path, servers):
    """Only user6.rules has `allow tcp 31695 ::/0 any ::/0 in`: IPv4 is closed, the IPv4 rule is added."""
    code, data, _ = run(
        monkeypatch,
        tmp_path,
        probe_output(DATA / "realworld" / "ufw-v6-only-leftover"),
        "ufw",
        str(servers),
        "--ports",
        NODEPORTS,
    )
    host = host_of(data)
    assert code == 0 and host["status"] == "planned"
    assert [a["kind"] for a in host["actions"]] == ["add", "add"]
    assert host["actions"][0]["command"].startswith("ufw allow from 10.0.0.0/16 to any port 31695 proto tcp")


def test_case3_v6_leftover_with_source_any_adds_only_what_ipv4_lacks(monkeypatch, tmp_path, servers):
    code, data, _ = run(
        monkeypatch,
        tmp_path,
        probe_output(DATA / "realworld" / "ufw-v6-only-leftover"),
        "ufw",
        str(servers),
        "--ports",
        "31695/tcp",
        "--source",
        "any",
    )
    (action,) = host_of(data)["actions"]
    assert code == 0 and action["kind"] == "add"
    assert action["command"] == "ufw allow 31695/tcp comment 'keybuzz-fix: port 31695/tcp'"


def test_case3_overlay_v6_leftover_adds_the_ipv4_vxlan_rule(monkeypatch, tmp_path, servers):
    code, data, _ = run(
        monkeypatch,
        tmp_path,
        probe_output(DATA / "realworld" / "ufw-v6-only-leftover-overlay"),
        "overlay",
        str(servers),
    )
    vxlan = host_of(data)["actions"][0]
    assert code == 0 and vxlan["kind"] == "add"
    assert vxlan["command"].startswith("ufw allow from 10.0.0.0/16 to any port 8472 proto udp")


def test_case4_default_accept_needs_no_rule(monkeypatch, tmp_path, servers):
    """DEFAULT_INPUT_POLICY="ACCEPT", no rules: already open by the default policy; nothing added."""
    code, data, _ = run(
        monkeypatch,
        tmp_path,
        probe_output(DATA / "realworld" / "ufw-default-accept"),
        "ufw",
        str(servers),
        "--ports",
        NODEPORTS,
    )
    host = host_of(data)
    assert code == 0 and host["status"] == "unchanged"
    for a in host["actions"]:
        assert a["kind"] == "noop" and a["command"] is None
        assert "default incoming policy: allow" in a["reason"] and 'DEFAULT_INPUT_POLICY="ACCEPT"' in a["reason"]


def test_case5_interface_rule_opens_vxlan_on_the_private_interface(monkeypatch, tmp_path, servers):
    """`allow in on enp7s0 from 10.0.0.0/16`, IP_PRIVEE on enp7s0: VXLAN from the nodes is let in."""
    code, data, _ = run(
        monkeypatch, tmp_path, probe_output(DATA / "cases" / "ufw-interface-rule"), "overlay", str(servers)
    )
    vxlan = host_of(data)["actions"][0]
    assert vxlan["kind"] == "noop"
    assert (
        vxlan["reason"] == "already open: IPv4 by rule 2 of user.rules: ufw allow in on enp7s0 from 10.0.0.0/16 to any"
    )
    assert code == 0  # the pod and service network rules are only planned (dry run)


def test_case5_interface_rule_on_another_interface_does_not_count(monkeypatch, tmp_path, servers):
    code, data, _ = run(
        monkeypatch,
        tmp_path,
        probe_output(DATA / "cases" / "ufw-interface-rule", iface="enp8s0"),
        "overlay",
        str(servers),
    )
    vxlan = host_of(data)["actions"][0]
    assert vxlan["kind"] == "add" and vxlan["command"].startswith("ufw allow from 10.0.0.0/16 to any port 8472")


def _extended_row(case: Path) -> tuple[bool, str]:
    host = Host("k8s-worker-01", PRIVATE_IP, None, "root", "prod", "k3s", "worker")
    facts = parse_ufw_facts(probe_output(case))
    wanted = ports_given([(31695, "tcp"), (32720, "tcp")], "10.0.0.0/16").ufw_rules
    actions = plan_rules(wanted, facts, arrival=Arrival(PRIVATE_IP, facts.interface_of(PRIVATE_IP)))
    row = ufw_row(HostOutcome.planned(host, facts, actions), "ufw rules", len(wanted))
    return row.status, row.detail


@pytest.mark.parametrize(
    ("case", "passes", "detail"),
    [
        ("realworld/ufw-limit", False, "throttled by rule 2 of user.rules: ufw limit 31695/tcp"),
        ("realworld/ufw-order-allow-before-deny", True, "2/2 wanted ports open"),
        ("realworld/ufw-v6-only-leftover", False, "missing: allow 31695/tcp from 10.0.0.0/16"),
        ("realworld/ufw-default-accept", True, "2/2 wanted ports open"),
    ],
)
def test_validate_extended_row_uses_the_same_verdicts(case, passes, detail):
    status, text = _extended_row(DATA / case)
    assert passes is (status == "pass") and detail in text


@pytest.mark.parametrize(
    ("command", "case", "extra"),
    [
        ("ufw", "ufw-v6-only-leftover", ["--ports", NODEPORTS]),
        ("overlay", "ufw-v6-only-leftover-overlay", []),
    ],
)
def test_a_second_run_on_this_machine_does_not_change_a_host_the_first_is_changing(
    monkeypatch, tmp_path, servers, command, case, extra
):
    """The host's lock file is held (by another run here): after the prompt the run stops, naming it; no `ufw` ran."""
    import fcntl
    import os

    state = tmp_path / "state"
    state.mkdir()
    session = FakeSession(probe_output(DATA / "realworld" / case))
    monkeypatch.setattr(ufw_apply, "open_session", lambda *_a, **_k: session)
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(state))
    argv = [command, str(servers), "--yes", *extra]
    fd = os.open(state / f"lock-host-{PRIVATE_IP}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, b"bob@ops-laptop pid 77 since 2026-01-01T00:00:00.000000Z (overlay)", 0)
        result = CliRunner().invoke(app, argv)
    finally:
        os.close(fd)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        "keybuzz-fix: error: another keybuzz-fix run on this machine is changing these hosts: k8s-worker-01 by "
        "bob@ops-laptop pid 77 since 2026-01-01T00:00:00.000000Z (overlay); nothing changed; wait for it to end, "
        "or stop it (kill 77) if it hangs: its lock ends with its process\n"
    )
    assert session.scripts and not any("ufw allow" in s or "ufw prepend" in s for s in session.scripts)

    # Once that run has ended, the same command changes the host, holding the lock as it does.
    held_while_applying: list[str] = []
    run_script = session.run

    def record(script: str, **kw: object) -> object:
        if "ufw allow" in script:
            held_while_applying.append((state / f"lock-host-{PRIVATE_IP}").read_text())
        return run_script(script, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(session, "run", record)
    CliRunner().invoke(app, argv)
    assert held_while_applying, "no `ufw allow` was sent"
    assert all(f"pid {os.getpid()} since " in w and w.endswith(f"({command})") for w in held_while_applying)
