"""overlay: the UFW rules it wants, the checksum-offload plan, and its ride in the UFW run."""

import subprocess
from pathlib import Path

import pytest

from keybuzz_fix.config import OverlayConfig, load_config
from keybuzz_fix.hosts.flannel import facts as flannel
from keybuzz_fix.hosts.flannel import plan as overlay
from keybuzz_fix.hosts.sections import MARK
from keybuzz_fix.hosts.ssh import CommandResult
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.hosts.ufw import apply as firewall_apply
from keybuzz_fix.hosts.ufw.apply import APPLY_MARK, FirewallRun
from keybuzz_fix.hosts.ufw.facts import UfwFacts
from keybuzz_fix.hosts.ufw.plan import Action, ActionKind
from keybuzz_fix.hosts.ufw.rules import parse_rule_command
from keybuzz_fix.hosts.ufw.run import HostExtra, HostStatus
from keybuzz_fix.inventory import Host

DATA = Path(__file__).parent.parent / "data"
ON = (DATA / "diagnose" / "ethtool-k-flannel-on.txt").read_text()
OFF = (DATA / "diagnose" / "ethtool-k-flannel-off.txt").read_text()
RULE = overlay.udev_rule("/usr/sbin/ethtool")


def offload_output(
    ethtool: str | None = "/usr/sbin/ethtool", features: str | None = ON, rule: str | None = None
) -> str:
    m = MARK
    out = f"{m} offload-ethtool\n" + (f"{ethtool}\n" if ethtool else "")
    if ethtool and features is not None:
        out += f"{m} offload-features\n{features}"
    out += f"{m} offload-rule\n{rule}" if rule is not None else f"{m} offload-no-rule\n"
    return out + f"{m} offload-end\n"


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind.value for a in actions]


def test_overlay_rules_from_the_defaults():
    rules = overlay.overlay_rules(load_config().overlay)
    assert [r.command() for r in rules] == [
        "ufw allow from 10.0.0.0/16 to any port 8472 proto udp comment 'keybuzz-fix: flannel VXLAN'",
        "ufw allow from 10.42.0.0/16 to any comment 'keybuzz-fix: pod network'",
        "ufw allow from 10.43.0.0/16 to any comment 'keybuzz-fix: service network'",
    ]
    for rule in rules:  # what `ufw show added` prints back parses to the same rule
        assert parse_rule_command(rule.command()) == rule
    assert parse_rule_command("ufw allow from 10.42.0.0/16 comment 'keybuzz-fix: pod network'") == rules[1]


def test_offload_plan_turns_it_off_and_persists_it():
    actions = overlay.plan_offload(offload_output())
    assert kinds(actions) == ["change", "change"]
    assert actions[0].command == "ethtool -K flannel.1 tx-checksum-ip-generic off"
    assert actions[1].command == overlay.write_rule_command(RULE)
    assert actions[1].reason.startswith("write /etc/udev/rules.d/90-keybuzz-fix-flannel-offload.rules")


def test_offload_plan_is_idempotent():
    actions = overlay.plan_offload(offload_output(features=OFF, rule=RULE))
    assert kinds(actions) == ["noop", "noop"]
    assert "already off" in actions[0].reason and "already in place" in actions[1].reason


def test_offload_plan_rewrites_a_changed_rule_and_persists_without_the_device():
    actions = overlay.plan_offload(
        offload_output(
            features="netlink error: no device matches name (offset 24)\nnetlink error: No such device\n",
            rule="# an older rule\n",
        )
    )
    assert kinds(actions) == ["noop", "change"]
    assert "does not exist (yet)" in actions[0].reason and actions[1].reason.startswith("rewrite ")


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        (offload_output(ethtool=None), "ethtool is not installed"),
        (offload_output(ethtool="/usr/sbin/eth tool;id"), "odd ethtool path"),
        (offload_output()[: -len(f"{MARK} offload-end\n")], "cut short"),
    ],
)
def test_offload_plan_blocks_without_a_usable_ethtool(output, fragment):
    (action,) = overlay.plan_offload(output)
    assert action.kind is ActionKind.BLOCKED and fragment in action.reason and not action.changes


def test_offload_plan_reports_a_fixed_feature():
    fixed = ON.replace("tx-checksum-ip-generic: on", "tx-checksum-ip-generic: on [fixed]")
    assert kinds(overlay.plan_offload(offload_output(features=fixed))) == ["blocked", "change"]


def test_udev_rule_is_written_atomically_with_exact_content(tmp_path):
    command = overlay.write_rule_command(RULE).replace(flannel.UDEV_DIR, str(tmp_path / "rules.d"))
    subprocess.run(["sh", "-c", command], check=True)
    subprocess.run(["sh", "-c", command], check=True)  # again: same file, no leftovers
    written = tmp_path / "rules.d" / "90-keybuzz-fix-flannel-offload.rules"
    assert written.read_text() == RULE
    assert [p.name for p in (tmp_path / "rules.d").iterdir()] == [written.name]
    assert oct(written.stat().st_mode & 0o777) == "0o644"
    assert 'RUN+="/usr/sbin/ethtool -K flannel.1 tx-checksum-ip-generic off"' in RULE


def test_offload_probe_is_valid_shell():
    subprocess.run(["sh", "-n", "-c", flannel.OFFLOAD_PROBE], check=True)


class FakeSession:
    """Answers the probe and the apply script of a host as a real one would, from canned state."""

    def __init__(self, ufw_added: list[str], offload: str) -> None:
        self.ufw_added, self.offload, self.scripts = ufw_added, offload, []

    def probe(self) -> str:
        added = "\n".join(["Added user rules (see 'ufw status' for running firewall):", *self.ufw_added])
        status = "Status: active\nDefault: deny (incoming), allow (outgoing), disabled (routed)\n"
        return (
            f"{MARK} ssh\n198.18.0.1 40000 198.18.0.11 22\n{MARK} status\n{status}{MARK} added\n{added}\n{MARK} end\n"
        )

    def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        self.scripts.append(script)
        out = ""
        if "kbf_failed=0" in script:  # the apply script: every command succeeds
            commands = [line for line in script.split("kbf_out=$(LC_ALL=C ")[1:]]
            for i, cmd in enumerate(commands):
                out += f"{APPLY_MARK} {i} 0\n"
                if cmd.startswith("ufw allow"):
                    self.ufw_added.append(cmd.split(" 2>&1); kbf_rc")[0])
                elif cmd.startswith("ethtool -K"):
                    self.offload = self.offload.replace(ON, OFF)
                elif cmd.startswith("mkdir -p /etc/udev"):
                    self.offload = offload_output(features=OFF, rule=RULE)
        out += self.offload + self.probe()
        return CommandResult(script, 0, out, "")

    def close(self) -> None:
        pass


def test_firewall_run_carries_the_offload_extra(monkeypatch, state_dir):
    session = FakeSession(["ufw allow 22/tcp"], offload_output())
    monkeypatch.setattr(firewall_apply, "open_session", lambda *a, **k: session)
    host = Host("k8s-worker-01", "198.18.0.11", None, "root", "prod", "k3s", "worker")
    rules = overlay.overlay_rules(OverlayConfig("198.18.0.0/24", 8472, "198.19.0.0/17", "198.19.128.0/20"))
    run = FirewallRun(
        hosts=[host],
        desired=lambda _h: rules,
        ssh=SshOptions(),
        command="overlay",
        extra=HostExtra(flannel.OFFLOAD_PROBE, overlay.plan_offload),
    )
    (planned,) = run.plan()
    assert planned.ok, planned.error
    assert session.scripts[0].startswith(flannel.OFFLOAD_PROBE)
    assert kinds(list(planned.actions)) == ["add", "add", "add", "change", "change"]
    (applied,) = run.apply([planned])
    assert applied.ok, applied.error
    assert applied.status is HostStatus.CHANGED
    assert applied.applied is not None and len(applied.applied) == 5
    (again,) = run.plan()
    assert again.ok and not again.changes
    assert isinstance(again.facts, UfwFacts)
    audit = (state_dir / "audit.jsonl").read_text().splitlines()
    assert len(audit) == 5 and '"command": "overlay"' in audit[0]
