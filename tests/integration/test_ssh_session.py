"""One SSH session against a real sshd: one remote shell runs every command, each read to its end.

Every command goes to the same remote ``sh`` (one login-shell start per host, not one per
command) and ends at a marker carrying its exit status. The output is read up to both markers,
stdout's and stderr's: a reader that stopped at an exit status could lose the last of the output
(the stderr of the first case below was lost that way). A background process left holding the
output open does not delay the result, and a command that times out costs its shell only.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from keybuzz_fix import inventory
from keybuzz_fix.errors import ConnectionLost, RemoteCommandError
from keybuzz_fix.hosts.ssh import connect
from tests.lab.hosts import GATEWAY, Lab

pytestmark = pytest.mark.integration


def test_one_shell_runs_every_command_to_its_end(lab_hosts: Lab, tmp_path: Path) -> None:
    host = inventory.select(inventory.read_inventory(lab_hosts.servers_tsv(tmp_path / "servers.tsv")))[0]
    with connect(host, lab_hosts.ssh_options()) as session:
        for i in range(60):
            result = session.run(f"seq 1 3000; echo 'last {i}'; echo err >&2")
            assert result.stdout.endswith(f"\n3000\nlast {i}\n") and result.stdout.count("\n") == 3001, i
            assert result.stderr == "err\n"
        shells = {session.run("echo $PPID").stdout for _ in range(3)}
        assert len(shells) == 1  # the same remote shell started each one

        assert session.run("printf 'no newline'; exit 3", check=False).stdout == "no newline"
        assert session.run("exit 3", check=False).status == 3
        with pytest.raises(RemoteCommandError, match="exited 5: oops"):
            session.run("echo oops >&2; exit 5")

        start = time.monotonic()
        assert session.run("sleep 30 & echo started").stdout == "started\n"
        assert time.monotonic() - start < 5  # not the background process's 30 s

        with pytest.raises(RemoteCommandError, match="no answer within 1s"):
            session.run("echo begun; sleep 20", timeout=1)
        assert session.run("echo again").stdout == "again\n"  # on a new shell
        assert session.run("echo $PPID").stdout not in shells

        for trickle in ("while :; do printf x; sleep 0.2; done", "while :; do echo tick; done"):
            start = time.monotonic()  # output that never ends, slowly or as fast as it goes: the deadline holds
            with pytest.raises(RemoteCommandError, match=r"no answer within 1s|more than 4 MiB"):
                session.run(trickle, timeout=1)
            assert time.monotonic() - start < 1 + 2
        assert session.run("echo after").stdout == "after\n"


def test_a_quiet_live_command_outlasts_the_silence_bound_and_a_silent_host_does_not(
    lab_hosts: Lab, tmp_path: Path
) -> None:
    """The keepalives tell a slow command (the host answers them) from a host that is gone (nothing answers)."""
    host = inventory.select(inventory.read_inventory(lab_hosts.servers_tsv(tmp_path / "servers.tsv")))[1]
    options = lab_hosts.ssh_options(silence_timeout=2)
    lab_host = lab_hosts.host(host.hostname)
    with connect(host, options) as session:
        start = time.monotonic()
        assert session.run("sleep 6; echo slept").stdout == "slept\n"  # three times the silence bound: alive
        assert time.monotonic() - start >= 6

        lab_host.run("ip link set eth0 down")  # from inside the host: no answer, not even a reset
        try:
            start = time.monotonic()
            with pytest.raises(
                ConnectionLost, match=r"connection lost while `echo sent` ran: nothing heard from it for 2s"
            ):
                session.run("echo sent")
            assert time.monotonic() - start < 2 + 5  # the silence bound, not the command's 30 s
        finally:
            lab_host.run(f"ip link set eth0 up && ip route replace default via {GATEWAY}")
