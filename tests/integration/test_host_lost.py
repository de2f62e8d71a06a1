"""A worker whose link goes down between the plan and the apply: the run ends within --timeout, honestly.

`keybuzz-fix ufw` runs in a pseudo-terminal (pexpect) against three lab workers (sshd + ufw in
network namespaces). It plans, shows the plan and asks; while it waits for the answer, one
worker's link is set down inside that worker's own namespace (nothing answers any more, not even
a reset). The operator answers yes: the change is sent into the dead link, so whether it landed is
unknown. The run must end within a bound derived from --timeout (the transport's silence), not
the 30 s a live command may take, say "unknown" for that worker and "changed" for the others, and
a re-run once the link is back must converge.

The only time bound asserted is generous (a CI machine has 2 CPUs): "not the command's 30 s".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from tests.integration.test_faults import RULES, added, audit, ufw, ufw_args
from tests.lab.hosts import GATEWAY, Lab, LabHost
from tests.terminal import at_terminal, terminal_env

pytestmark = pytest.mark.integration
TIMEOUT = 4  # --timeout
SLACK = 8  # seconds on top of --timeout for the healthy hosts' apply, closing the sessions, a slow CI machine


@pytest.fixture
def lab3(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    with lab_factory(["k8s-worker-01", "k8s-worker-02", "k8s-worker-03"]) as lab:
        yield lab


def link_down(host: LabHost) -> None:
    """Take the worker's only link down from inside its namespace: its packets go nowhere, no reset comes back."""
    host.run("ip link set eth0 down")


def link_up(host: LabHost) -> None:
    host.run(f"ip link set eth0 up && ip route replace default via {GATEWAY}")


def end_sessions(host: LabHost) -> None:
    """Kill the host's sshd session processes (the children of the sshd the lab started), by pid.

    The client gave up on the connection, but its kernel still holds the unacknowledged apply
    script and would deliver it once the link is back: the change could land late, which is what
    "unknown" means, and would make the re-run below depend on timing. With the sessions gone the
    late segments meet a closed socket, so the host is read again exactly as the cut left it.
    """
    listener = host._procs.sshd
    assert listener is not None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == listener.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)


def test_a_worker_lost_between_plan_and_apply_is_unknown_within_the_timeout_and_a_rerun_converges(
    lab3: Lab, tmp_path: Path
) -> None:
    lab, state = lab3, tmp_path / "state"
    servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())
    lost, *others = lab.hosts
    before = {h.name: added(h) for h in lab.hosts}
    child = at_terminal(
        ufw_args(lab, servers, "--timeout", str(TIMEOUT)),
        terminal_env(KEYBUZZ_FIX_STATE_DIR=str(state)),
        rows=60,
        columns=1000,
    )
    try:
        child.expect(r"Apply 6 change\(s\) on 3 host\(s\)\?")
        link_down(lost)
        try:
            answered = time.monotonic()
            child.sendline("y")
            child.expect(pexpect.EOF)
            seconds = time.monotonic() - answered
            child.close()
        finally:
            end_sessions(lost)
            link_up(lost)
    finally:
        child.terminate(force=True)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)  # no colours, no cursor moves
    text = re.sub(r"\s+", " ", re.sub(r"[│┃]", " ", plain))  # the table's cells, one space apart

    assert child.exitstatus == 1, text
    assert seconds < TIMEOUT + SLACK, f"{seconds:.1f}s after the answer: the lost host was not given up after --timeout"
    assert re.search(
        rf"{lost.name} {re.escape(lost.ip)} unknown unknown — the connection to {lost.name} was lost", text
    )
    assert f"was lost while `{RULES[0]}` ran (nothing heard from it for {TIMEOUT}s, --timeout)" in text
    assert "0 of 2 change(s) done; check with `keybuzz-fix ufw --dry-run` again" in text
    for h in others:
        assert re.search(rf"{h.name} {re.escape(h.ip)} changed 2 change\(s\) applied", text), text
        assert added(h) == before[h.name] + list(RULES)
    assert "1 host(s) in an unknown state (k8s-worker-01)" in text
    retry = re.search(r"their names are in (\S+?\.retry)", text)
    assert retry is not None, text
    assert Path(retry.group(1)).read_text().split() == [lost.name]  # --limit @FILE reads the unknown host again
    mine = [(e["action"], e["outcome"]) for e in audit(state) if e["where"] == lost.name]
    assert mine == [(RULES[0], "unknown")], mine  # the change sent into the dead link: not claimed, not forgotten

    # the link is back: a dry run reads where the host stands, a real run converges, each rule once
    look = ufw(lab, servers, state, "--dry-run", "--timeout", str(TIMEOUT))
    assert look.code == 0 and look.host(lost.name)["status"] == "planned", look.data
    again = ufw(lab, servers, state, "--yes", "--timeout", str(TIMEOUT))
    assert again.code == 0, again.data
    assert [again.host(h.name)["status"] for h in lab.hosts] == ["changed", "unchanged", "unchanged"]
    for h in lab.hosts:
        assert added(h) == before[h.name] + list(RULES)
    assert json.dumps(again.data).count('"unknown"') == 0
