"""One SSH session against a real sshd: a command's output is read to its end.

The exit status and the last of the output travel separately: a reader that stops at the exit
status loses whatever had not arrived yet (a probe cut short). The session reads on until the
channel's end of file, and a process left in the background holding the output open delays the
result by a bounded grace only.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from keybuzz_fix import inventory
from keybuzz_fix.ssh import SshOptions, connect
from tests.lab.hosts import Lab

pytestmark = pytest.mark.integration


def test_output_is_read_to_its_end(lab_hosts: Lab, tmp_path: Path) -> None:
    host = inventory.select(inventory.load(lab_hosts.servers_tsv(tmp_path / "servers.tsv")))[0]
    options = SshOptions(known_hosts=lab_hosts.known_hosts_file, identity=lab_hosts.identity_file,
                         connect_timeout=5, command_timeout=30, ssh_config=None)
    with connect(host, options) as session:
        for i in range(60):
            result = session.run(f"seq 1 3000; echo 'last {i}'; echo err >&2")
            assert result.stdout.endswith(f"\n3000\nlast {i}\n") and result.stdout.count("\n") == 3001, i
            assert result.stderr == "err\n"
        start = time.monotonic()
        result = session.run("sleep 30 & echo started")
        assert result.stdout == "started\n"
        assert time.monotonic() - start < 10  # the grace, not the background process's 30 s
