"""A host lost mid-run: lost before the changes were sent is unreachable (nothing changed); after, unknown.

The session is scripted (no network): the probe answers, then the apply round trip raises what
:class:`~keybuzz_fix.hosts.ssh.Session` raises when the connection goes. The keepalive rule of
:class:`~keybuzz_fix.hosts.sshalive.Liveness` is driven with a transport that answers, or never does.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from rich.console import Console

from keybuzz_fix.errors import ChangeUnknown, ConnectionLost, ExitCode, HostError, HostUnreachable, RemoteCommandError
from keybuzz_fix.hosts.ssh import CommandResult
from keybuzz_fix.hosts.sshalive import Liveness
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.hosts.ufw import apply as ufw_apply
from keybuzz_fix.hosts.ufw.apply import APPLY_MARK, FirewallRun
from keybuzz_fix.hosts.ufw.rules import UfwRule
from keybuzz_fix.hosts.ufw.run import FirewallResult, HostStatus
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.hosts import firewall_json, firewall_summary
from keybuzz_fix.report.steps import firewall_failed
from tests.unit.test_ufw_plan_model import SSH4, SSH6, probe

HTTP = UfwRule(port="31695", proto="tcp", source="10.0.0.0/16", comment="keybuzz-fix: ingress-nginx HTTP NodePort")
HTTPS = UfwRule(port="32720", proto="tcp", source="10.0.0.0/16", comment="keybuzz-fix: ingress-nginx HTTPS NodePort")
HOSTS = [Host(f"k8s-worker-0{i}", f"10.0.0.1{i}", None, "root", "prod", "k3s", "worker") for i in (1, 2)]


@dataclass
class LosingSession:
    """Answers the probe; the apply round trip raises ``error`` (with what the host printed before)."""

    error: HostError | CommandResult | None  # a result: the round trip came back, cut short
    scripts: list[str] = field(default_factory=list)

    def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        self.scripts.append(script)
        if len(self.scripts) == 1 or self.error is None:
            return CommandResult(script, 0, probe([SSH4], [SSH6]), "")
        if isinstance(self.error, CommandResult):
            return self.error
        raise self.error

    def close(self) -> None:
        pass


def run_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path, lost: HostError | CommandResult
) -> tuple[FirewallRun, FirewallResult]:
    """Worker 01 loses its connection as ``lost`` says; worker 02 applies both rules."""
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(tmp_path))
    after = probe(
        [SSH4, "allow tcp 31695 0.0.0.0/0 any 10.0.0.0/16 in", "allow tcp 32720 0.0.0.0/0 any 10.0.0.0/16 in"]
    )
    fine_output = f"{APPLY_MARK} 0 0\nRule added\n{APPLY_MARK} 1 0\nRule added\n{after}"

    class Fine(LosingSession):
        def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
            self.scripts.append(script)
            return CommandResult(script, 0, probe([SSH4], [SSH6]) if len(self.scripts) == 1 else fine_output, "")

    sessions = {HOSTS[0].hostname: LosingSession(lost), HOSTS[1].hostname: Fine(None)}
    monkeypatch.setattr(ufw_apply, "open_session", lambda host, *_a, **_k: sessions[host.hostname])
    run = FirewallRun(hosts=HOSTS, desired=lambda _h: [HTTP, HTTPS], ssh=SshOptions(ssh_config=None))
    outcomes = run.apply(run.plan())
    return run, FirewallResult("ufw", tuple(outcomes), dry_run=False)


def audit(tmp_path) -> list[tuple[str, str, str]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines() if (tmp_path / "audit.jsonl").exists() else []
    return [(e["where"], e["action"], e["outcome"]) for e in map(json.loads, lines)]


def test_lost_after_the_changes_were_sent_is_unknown_with_what_is_known_done(monkeypatch, tmp_path):
    lost = ConnectionLost(HOSTS[0].hostname, "kbf_failed=0; …", "nothing heard from it for 4s, --timeout")
    lost.partial = f"{APPLY_MARK} 0 0\nRule added\n"  # the first command's answer came, then nothing
    _, result = run_with(monkeypatch, tmp_path, lost)
    gone, fine = result.outcomes

    assert gone.status is HostStatus.UNKNOWN and isinstance(gone.error, ChangeUnknown)
    assert gone.applied == (HTTP.command(),) and gone.facts is not None  # the plan is kept: what was asked
    assert gone.error.problem == (
        f"unknown — the connection to k8s-worker-01 was lost while `{HTTPS.command()}` ran (nothing heard from it "
        f"for 4s, --timeout); 1 of 2 change(s) done ({HTTP.command()}); check with `keybuzz-fix ufw --dry-run` again"
    )
    assert fine.status is HostStatus.CHANGED
    assert result.failed and result.failed_hosts == ["k8s-worker-01"] and ExitCode.of(result) is ExitCode.FAILURE
    assert [a for a in audit(tmp_path) if a[0] == "k8s-worker-01"] == [
        ("k8s-worker-01", HTTP.command(), "ok"),
        ("k8s-worker-01", HTTPS.command(), "unknown"),
    ]
    data = firewall_json(result)
    entry = data["hosts"][0]
    assert (entry["status"], entry["error_type"], entry["applied"]) == ("unknown", "ChangeUnknown", [HTTP.command()])
    assert data["summary"] == {"unknown": 1, "changed": 1} and data["exit_code"] == 1

    console = Console(record=True, width=400)
    firewall_summary(console, result.outcomes, "ufw: result")
    row = next(line for line in console.export_text().splitlines() if "k8s-worker-01" in line)
    assert "│ unknown │ unknown — the connection to k8s-worker-01 was lost" in row


def test_lost_before_anything_was_sent_is_unreachable_and_nothing_changed(monkeypatch, tmp_path):
    gone = HostUnreachable(
        HOSTS[0].hostname, "connection lost before `kbf_failed=0; …` was sent: the connection closed"
    )
    _, result = run_with(monkeypatch, tmp_path, gone)
    outcome = result.outcomes[0]
    assert outcome.status is HostStatus.FAILED and type(outcome.error) is HostUnreachable
    assert outcome.error.problem.endswith("was sent: the connection closed; nothing changed")
    assert [a for a in audit(tmp_path) if a[0] == "k8s-worker-01"] == []  # nothing claimed, nothing unknown
    assert firewall_json(result)["hosts"][0]["status"] == "failed"


def test_a_live_command_out_of_time_is_unknown_too_and_says_so(monkeypatch, tmp_path):
    late = RemoteCommandError(HOSTS[0].hostname, "kbf_failed=0; …", None, "no answer within 30s")
    _, result = run_with(monkeypatch, tmp_path, late)
    outcome = result.outcomes[0]
    assert outcome.status is HostStatus.UNKNOWN and outcome.applied == ()
    assert outcome.error is not None and outcome.error.problem.startswith(
        f"unknown — no answer from k8s-worker-01 in time (--timeout) while `{HTTP.command()}` ran; "
        "0 of 2 change(s) done"
    )


@pytest.mark.parametrize(
    ("status", "how"), [(137, "killed by SIGKILL, exit 137"), (143, "killed by SIGTERM, exit 143"), (2, "exit 2")]
)
def test_a_script_that_ended_before_answering_for_a_change_is_unknown_not_failed(monkeypatch, tmp_path, status, how):
    """The shell running the changes was killed (OOM killer, an operator's kill): the answer came, cut short."""
    cut = CommandResult("kbf_failed=0; …", status, f"{APPLY_MARK} 0 0\nRule added\n", "")
    _, result = run_with(monkeypatch, tmp_path, cut)
    outcome = result.outcomes[0]
    assert outcome.status is HostStatus.UNKNOWN and isinstance(outcome.error, ChangeUnknown)
    assert outcome.applied == (HTTP.command(),)
    assert outcome.error.problem == (
        f"unknown — the shell running the changes on k8s-worker-01 ended ({how}) while `{HTTPS.command()}` ran; "
        f"1 of 2 change(s) done ({HTTP.command()}); check with `keybuzz-fix ufw --dry-run` again"
    )
    assert [a for a in audit(tmp_path) if a[0] == "k8s-worker-01"] == [
        ("k8s-worker-01", HTTP.command(), "ok"),
        ("k8s-worker-01", HTTPS.command(), "unknown"),
    ]


def test_all_stops_at_the_ufw_step_naming_the_unknown_and_the_failed_workers(monkeypatch, tmp_path):
    lost = ConnectionLost(HOSTS[0].hostname, "kbf_failed=0; …", "the connection closed")
    _, result = run_with(monkeypatch, tmp_path, lost)
    assert firewall_failed(result.outcomes) == (
        "ufw's outcome is unknown on k8s-worker-01 (the connection was lost, the time ran out, or the shell running "
        "the changes ended, while a change was in flight); convert, ingress and validate did not run: re-run to "
        "read them again and go on"
    )
    failed = HostUnreachable(HOSTS[1].hostname, "cannot connect")
    _, worse = run_with(monkeypatch, tmp_path, failed)
    assert firewall_failed(worse.outcomes) == "ufw failed on k8s-worker-01"


@dataclass
class FakeTransport:
    """Answers a keepalive after ``delay`` seconds, or never (None) until it is closed."""

    delay: float | None
    requests: int = 0
    closed: threading.Event = field(default_factory=threading.Event)

    def global_request(self, kind: str, data: object = None, wait: bool = True) -> None:
        assert kind == "keepalive@openssh.com" and wait
        self.requests += 1
        self.closed.wait(self.delay)  # None: until closed

    def is_active(self) -> bool:
        return not self.closed.is_set()


def watch(alive: Liveness, seconds: float) -> float | None:
    """Poll as the read loop does; return when the host was declared lost (None: it never was)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if alive.lost():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def test_a_quiet_host_that_answers_its_keepalives_is_not_lost():
    transport = FakeTransport(delay=0.01)
    alive = Liveness(transport, silence=0.6, interval=0.1)  # type: ignore[arg-type]
    assert watch(alive, 2.0) is None  # three times the silence bound, nothing on the channel
    assert transport.requests >= 5  # it kept asking while the channel was quiet


def test_a_host_that_answers_nothing_is_lost_after_the_silence_bound():
    transport = FakeTransport(delay=None)
    alive = Liveness(transport, silence=0.6, interval=0.1)  # type: ignore[arg-type]
    try:
        after = watch(alive, 5.0)
        assert after is not None and 0.6 <= after < 0.6 + 1.0
        assert transport.requests == 1  # one keepalive in flight at a time
    finally:
        transport.closed.set()


def test_channel_data_counts_as_hearing_from_the_host():
    transport = FakeTransport(delay=None)
    alive = Liveness(transport, silence=0.6, interval=0.1)  # type: ignore[arg-type]
    try:
        start = time.monotonic()
        while time.monotonic() - start < 1.5:  # output keeps coming: never lost, though keepalives go unanswered
            alive.heard()
            assert not alive.lost()
            time.sleep(0.05)
        assert watch(alive, 5.0) is not None  # then it stops
    finally:
        transport.closed.set()
