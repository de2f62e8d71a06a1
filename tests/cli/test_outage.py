"""During an outage: what the operator reads, waits for and interrupts, through the real CLI.

Each run is ``python -m keybuzz_fix …`` in a subprocess (stdin not a terminal) or in a
pseudo-terminal driven by ``pexpect`` (a person at a terminal), with an empty HOME. The API
server is a local TCP listener of the test's own: it records whether the command connected at
all, and it never answers, like an API server behind a dead link.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.terminal import at_terminal, terminal_env

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "servers.tsv.example"


class SilentServer:
    """A TCP listener that accepts connections (counted) and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []

    def connections(self, wait: float = 0.0) -> int:
        """Accept what has arrived (waiting up to ``wait`` seconds for a first one); return how many so far."""
        deadline = time.monotonic() + wait
        while True:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
                continue
            except BlockingIOError:
                pass
            if self.held or time.monotonic() >= deadline:
                return len(self.held)
            time.sleep(0.05)

    def close(self) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def kubeconfig(path: Path, port: int, contexts: tuple[str, ...] = ("lab",)) -> Path:
    """Write a kubeconfig whose contexts all point at 127.0.0.1:``port``."""
    lines = ["apiVersion: v1", "kind: Config", "clusters:"]
    lines += ["  - name: here", f"    cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}"]
    lines += ["users:", "  - name: someone", "    user: {token: not-a-secret}", "contexts:"]
    for name in contexts:
        lines += [f"  - name: {name}", "    context: {cluster: here, user: someone}"]
    lines.append(f"current-context: {contexts[0]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def environment(home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return terminal_env(
        drop=("KUBECONFIG",), HOME=str(home), KEYBUZZ_FIX_STATE_DIR=str(home / "state"), PYTHONUNBUFFERED="1"
    )


def run(args: list[str], home: Path, timeout: float = 20.0) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI with stdin not a terminal; return the process and how long it took."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "keybuzz_fix", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(home),
        cwd=ROOT,
    )
    return proc, time.monotonic() - start


def spawn(args: list[str], home: Path, *, columns: int = 100) -> pexpect.spawn:
    """Start the CLI in a pseudo-terminal of ``columns`` columns, as a person would."""
    return at_terminal(args, environment(home), rows=40, columns=columns, timeout=20)


# -- 16: a run that could never ask is refused before it connects anywhere --------------------------

_CHANGING = {
    "convert": ["convert"],
    "ingress": ["ingress"],
    "all": ["all", str(EXAMPLE)],
    "ufw": ["ufw", str(EXAMPLE)],
}


@pytest.mark.parametrize("command", sorted(_CHANGING))
def test_no_terminal_and_no_yes_is_refused_before_connecting(command, silent, tmp_path):
    config = kubeconfig(tmp_path / "kubeconfig", silent.port)
    proc, took = run([*_CHANGING[command], "--kubeconfig", str(config)], tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"keybuzz-fix: error: {command} asks before it changes anything, but stdin is not a terminal: "
        "pass --yes to proceed, or --dry-run to only see the plan; nothing was read or changed"
    )
    assert proc.stdout == ""
    assert silent.connections() == 0  # the API server was never contacted
    assert took < 10  # no host or API timeout was waited for


def test_the_same_run_at_a_terminal_goes_on_to_the_cluster(silent, tmp_path):
    # The counterpart: with a person at a terminal the run may ask, so it reads the cluster.
    config = kubeconfig(tmp_path / "kubeconfig", silent.port)
    child = spawn(["convert", "--kubeconfig", str(config)], tmp_path / "home")
    try:
        assert silent.connections(wait=15) >= 1
    finally:
        child.terminate(force=True)


# -- 11: a wrong --context names the file and the contexts it has -----------------------------------


def test_a_wrong_context_names_the_file_and_its_contexts(silent, tmp_path):
    config = kubeconfig(tmp_path / "kubeconfig", silent.port, contexts=("prod", "staging", "lab"))
    proc, _ = run(["convert", "--dry-run", "--kubeconfig", str(config), "--context", "prod-typo"], tmp_path / "home")
    assert proc.returncode == 2
    assert proc.stderr == f"keybuzz-fix: error: no context prod-typo in {config}; contexts: prod, staging, lab\n"
    assert silent.connections() == 0


# -- 3: Ctrl-C in validate against an API server that never answers ----------------------------------


def test_ctrl_c_in_validate_ends_within_a_second_with_one_line(silent, tmp_path):
    config = kubeconfig(tmp_path / "kubeconfig", silent.port)
    child = spawn(["validate", str(EXAMPLE), "--kubeconfig", str(config)], tmp_path / "home")
    try:
        assert silent.connections(wait=15) >= 1  # the checks are waiting on the silent API server
        time.sleep(1.0)
        pressed = time.monotonic()
        child.sendintr()
        child.expect(pexpect.EOF, timeout=10)
        took = time.monotonic() - pressed
        child.close()
    finally:
        child.terminate(force=True)
    assert took < 1.0, f"exited {took:.2f} s after Ctrl-C"
    assert child.exitstatus == 130
    lines = [line for line in child.before.replace("^C", "").splitlines() if line.strip()]
    assert lines == [
        "keybuzz-fix: error: interrupted: validate stopped before every check finished (nothing was changed)"
    ]
    assert "Traceback" not in child.before


# -- 1: Ctrl-C while planning: nothing changed, and no host is said to have "finished" ---------------


def test_ctrl_c_while_planning_says_nothing_changed(tmp_path):
    server = socket.socket()
    server.bind(("0.0.0.0", 0))  # every 127.x address: each node of servers.tsv lands here, and hears nothing
    server.listen(64)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host *\n    Port {server.getsockname()[1]}\n")
    rows = EXAMPLE.read_text().splitlines()
    servers = tmp_path / "servers.tsv"
    servers.write_text("\n".join(re.sub(r"\t10\.0\.0\.(\d+)\t", r"\t127.0.0.\1\t", r) for r in rows) + "\n")
    child = spawn(["overlay", str(servers), "--yes", "--timeout", "30", "--accept-new-host-keys"], home)
    try:
        time.sleep(3.0)  # every node is connected and waits for an SSH banner that never comes
        pressed = time.monotonic()
        child.sendintr()
        child.expect(pexpect.EOF, timeout=20)
        took = time.monotonic() - pressed
        child.close()
    finally:
        child.terminate(force=True)
        server.close()
    text = child.before.replace("^C", "")
    assert child.exitstatus == 130, text
    assert took < 2.0
    assert "keybuzz-fix: error: interrupted while planning (reading ufw: 0 of 8 host(s) read); nothing changed" in text
    assert "finished" not in text and "Traceback" not in text


# -- 14: into a pipe, lines are not wrapped -----------------------------------------------------------

STATE = ROOT / "tests" / "data" / "convert" / "01-kubectl-list" / "state.yaml"


def test_output_into_a_pipe_keeps_each_line_whole(tmp_path):
    proc, _ = run(["convert", "--from-file", str(STATE)], tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    (service,) = [line for line in lines if "Service keybuzz/keybuzz-api:" in line]
    assert service.rstrip().endswith("kept")  # the whole reason, to "clusterIP … kept", on its one line
    assert len(service) > 80


def test_at_an_80_column_terminal_lines_fold_to_the_width(tmp_path):
    child = spawn(["convert", "--from-file", str(STATE)], tmp_path / "home", columns=80)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    plain = re.sub(r"\x1b\[[0-9;]*m", "", child.before).splitlines()
    # The plan's lines fold to the terminal; a diff line is printed whole (the terminal wraps it).
    assert max(len(line) for line in plain if not line.startswith("      ")) <= 80
    (service,) = [line for line in plain if "Service keybuzz/keybuzz-api:" in line]
    assert not service.rstrip().endswith("kept")  # folded: the rest of the reason is on the next line


# -- 5: the help says what --timeout bounds ---------------------------------------------------------


def test_timeout_help_says_what_it_bounds(tmp_path):
    for command in ("ufw", "overlay", "all"):
        proc, _ = run([command, "--help"], tmp_path / "home")
        text = " ".join(proc.stdout.split())
        assert "to connect (TCP, SSH banner, key exchange and login together)" in text, command
        assert "a host silent that long is given up, a change in flight reported as unknown" in text, command
        assert "A command on a host that answers gets max(this, 30) s" in text, command
        assert "URL checks and waits for pods have their own options" in text, command


# -- 8: host results shown as they arrive ---------------------------------------------------------------


def test_a_dead_host_holds_back_none_of_the_others_results(tmp_path):
    dead = socket.socket()
    dead.bind(("127.0.0.113", 0))  # k8s-worker-04: connects, then never says a word
    dead.listen(8)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    # the other workers' addresses have nothing on that port: each is refused at once
    (home / ".ssh" / "config").write_text(f"Host *\n    Port {dead.getsockname()[1]}\n")
    rows = EXAMPLE.read_text().splitlines()
    servers = tmp_path / "servers.tsv"
    servers.write_text("\n".join(re.sub(r"\t10\.0\.0\.(\d+)\t", r"\t127.0.0.\1\t", r) for r in rows) + "\n")
    child = spawn(["ufw", str(servers), "--dry-run", "--timeout", "30", "--accept-new-host-keys"], home, columns=200)
    try:
        started = time.monotonic()
        for worker in ("k8s-worker-01", "k8s-worker-02", "k8s-worker-03", "k8s-worker-05"):
            child.expect(
                # each line as it arrives (re-drawn with the display, so any order): name, result, seconds
                rf"{worker}: (\x1b\[[0-9;]*m)?failed(\x1b\[0m)?: [^\r\n]*refused[^\r\n]*\(\d+\.\d s\)",
                timeout=10,
            )
        shown = time.monotonic() - started
        child.expect(r"waiting for k8s-worker-04\)", timeout=5)
        child.sendintr()
        child.expect(pexpect.EOF, timeout=20)
        child.close()
    finally:
        child.terminate(force=True)
        dead.close()
    assert shown < 10  # the others' results came while k8s-worker-04 was still awaited (up to 30 s)
    assert child.exitstatus == 130
