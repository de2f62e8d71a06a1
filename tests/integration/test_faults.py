"""Faults on real lab hosts while `keybuzz-fix ufw` works on them: the run never hangs, never lies.

Each test runs the real CLI (`python -m keybuzz_fix ufw …` in a subprocess, so exit codes and
signals are real) against lab hosts (sshd + ufw in network namespaces), and makes one thing go
wrong, deterministically:

- a gate: inside one host, a wrapper bind-mounted over /usr/sbin/ufw holds the command that adds
  the HTTPS NodePort rule until the test has done its damage — so the fault lands after the first
  rule and before the second, in the middle of that host's commands;
- a dropped connection: the host's sshd session processes are killed (by pid, found from the
  gated command up to the sshd the lab started);
- a killed script: the shell running the changes is killed, the SSH session lives on;
- a cut link: the host's veth is set down in the root namespace (a lab link), so nothing answers;
- slow hosts: one whose sshd is stopped (SIGSTOP: TCP is accepted, SSH never answers), one whose
  eth0 sends at 1 kbit/s (a tbf qdisc inside the host's namespace; this kernel has no netem);
- refused keys, and Ctrl-C (SIGINT to the CLI) while a host is held at the gate;
- Ctrl-C (SIGINT) while convert waits on the test control plane for pods that never get ready.

The only time bounds asserted are "never hangs" bounds, far above what a healthy run takes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.cluster.fixtures import KeybuzzCluster
from tests.lab.hosts import Lab, LabHost

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent
HTTP, HTTPS = 31695, 32720
SOURCE = "198.18.0.0/24"
RULE = "ufw allow from 198.18.0.0/24 to any port {port} proto tcp comment 'keybuzz-fix: ingress-nginx {name} NodePort'"
RULES = (RULE.format(port=HTTP, name="HTTP"), RULE.format(port=HTTPS, name="HTTPS"))

_GATE = """#!/bin/sh
# lab: this host's ufw, held at a gate by tests/integration/test_faults.py while port {port} is added
case " $* " in
  *" {port} "*|*" {port}/"*)
    echo $$ > /run/kbf-gate.pid
    i=0
    while [ ! -e /run/kbf-gate.open ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
    ;;
esac
exec {real} "$@"
"""


class Gate:
    """Holds `ufw … {port} …` inside one lab host until opened (at most 120 s).

    The wrapper sits in a folder bind-mounted over /usr/local/sbin inside the host only (first in
    root's PATH) and runs the real /usr/sbin/ufw: a copy elsewhere would make ufw warn about the
    modes of that place.
    """

    def __init__(self, host: LabHost, port: int = HTTPS) -> None:
        self.host = host
        folder = host.workdir / "gate-bin"
        folder.mkdir()
        wrapper = folder / "ufw"
        wrapper.write_text(_GATE.format(port=port, real="/usr/sbin/ufw"))
        wrapper.chmod(0o755)
        host.run(f'mount --bind {folder} /usr/local/sbin && [ "$(command -v ufw)" = /usr/local/sbin/ufw ]')

    def reached(self, proc: subprocess.Popen[str], timeout: float = 60) -> int:
        """Wait until a command is held at the gate; return its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.host.run("cat /run/kbf-gate.pid 2>/dev/null", check=False).stdout.strip()
            if pid:
                return int(pid)
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(
                    f"the CLI ended (exit {proc.returncode}) before {self.host.name} reached the gate:\n"
                    f"{out[-2000:]}\n{err[-2000:]}"
                )
            time.sleep(0.1)
        pytest.fail(f"{self.host.name}: ufw never reached the gate in {timeout}s")

    def open(self) -> None:
        self.host.run("touch /run/kbf-gate.open")

    def kill_session(self, pid: int) -> None:
        """Kill the held command and every process above it up to (not including) the lab's sshd.

        All are stopped first, then killed: none can answer on the way out (an exit status sent by
        the sshd session before its own end would make this a script that ended, not a lost connection).
        """
        listener = self.host._procs.sshd
        assert listener is not None
        _stop_then_kill(_ancestors(pid, stop=listener.pid))

    def kill_script(self, pid: int) -> None:
        """Kill the held command and the shell running the changes' script; the SSH session lives on."""
        listener = self.host._procs.sshd
        assert listener is not None
        chain = _ancestors(pid, stop=listener.pid)
        script = next(i for i, p in enumerate(chain) if b"kbf_failed=0" in Path(f"/proc/{p}/cmdline").read_bytes())
        _stop_then_kill(chain[: script + 1])


def _stop_then_kill(pids: list[int]) -> None:
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)


def _ancestors(pid: int, stop: int) -> list[int]:
    chain = []
    while pid > 1 and pid != stop:
        chain.append(pid)
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    assert pid == stop, f"{chain} does not descend from the lab's sshd {stop}"
    return chain


@dataclass
class Run:
    code: int
    data: dict
    stderr: str
    seconds: float

    def host(self, name: str) -> dict:
        return next(h for h in self.data["hosts"] if h["hostname"] == name)


def two_ports(folder: Path) -> Path:
    """A config whose firewall ports are the two NodePorts: the faults land between the two rules.

    The lab has no cluster to read the ports from, so `ufw` uses the configuration's.
    """
    path = folder / "two-ports.yaml"
    ports = [
        {"port": port, "proto": "tcp", "comment": f"keybuzz-fix: ingress-nginx {name} NodePort"}
        for port, name in ((HTTP, "HTTP"), (HTTPS, "HTTPS"))
    ]
    path.write_text(yaml.safe_dump({"firewall": {"ports": ports}}))
    return path


def ufw_args(lab: Lab, servers: Path, *args: str, identity: Path | None = None) -> list[str]:
    """The arguments of `keybuzz-fix ufw` on the lab's hosts: the two NodePorts, the lab's key, ``args``."""
    return [
        "ufw",
        str(servers),
        "--config",
        str(two_ports(servers.parent)),
        "--identity",
        str(identity or lab.identity_file),
        "--known-hosts",
        str(lab.known_hosts_file),
        "--source",
        SOURCE,
        *args,
    ]


def start(lab: Lab, servers: Path, state: Path, *args: str, identity: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "KEYBUZZ_FIX_STATE_DIR": str(state)}
    argv = [sys.executable, "-m", "keybuzz_fix", *ufw_args(lab, servers, "-o", "json", *args, identity=identity)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT, env=env
    )
    proc.started = time.monotonic()  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> Run:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the CLI did not end within {timeout}s (it hangs):\n{err[-2000:]}")
    seconds = time.monotonic() - proc.started  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    data = json.loads(out) if out.strip() else {}
    return Run(proc.returncode, data, err, seconds)


def ufw(lab: Lab, servers: Path, state: Path, *args: str, identity: Path | None = None) -> Run:
    return finish(start(lab, servers, state, *args, identity=identity))


def added(host: LabHost) -> list[str]:
    return host.run("ufw show added").stdout.splitlines()[1:]


def audit(state: Path) -> list[dict]:
    path = state / "audit.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]  # every line is whole JSON


def leftovers(state: Path) -> list[str]:
    """Files a crash would leave half-written: the temporary files of atomic writes."""
    return [p.name for p in state.rglob(".*")] if state.exists() else []


@pytest.fixture
def lab3(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    with lab_factory(["k8s-worker-01", "k8s-worker-02", "k8s-worker-03"]) as lab:
        yield lab


def test_a_dropped_or_cut_connection_mid_apply_fails_that_host_only_and_a_rerun_converges(
    lab3: Lab, tmp_path: Path
) -> None:
    lab, state = lab3, tmp_path / "state"
    servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())
    dropped, cut, fine = (lab.host(f"k8s-worker-0{i}") for i in (1, 2, 3))
    gates = {h.name: Gate(h) for h in (dropped, cut)}
    before = {h.name: added(h) for h in lab.hosts}

    proc = start(lab, servers, state, "--yes", "--timeout", "2")
    held = {name: gate.reached(proc) for name, gate in gates.items()}
    gates[dropped.name].kill_session(held[dropped.name])  # the sshd session dies: the client sees EOF
    subprocess.run(["ip", "link", "set", cut._procs.veth, "down"], check=True, timeout=10)  # silence
    try:
        run = finish(proc)
    finally:
        subprocess.run(["ip", "link", "set", cut._procs.veth, "up"], check=True, timeout=10)
    gates[cut.name].kill_session(held[cut.name])  # the command the cut host still holds never finishes
    for gate in gates.values():
        gate.open()

    assert run.code == 1
    assert run.seconds < 60  # the cut host is given up after 2 s of silence (--timeout), never a hang
    lost, silent = run.host(dropped.name), run.host(cut.name)
    for host, name in ((lost, dropped.name), (silent, cut.name)):  # a change in flight: neither done nor failed
        assert host["status"] == "unknown" and host["error_type"] == "ChangeUnknown", host
        assert host["applied"] == [RULES[0]]
        assert f"unknown — the connection to {name} was lost while `{RULES[1]}` ran (" in host["error"]
        assert f"; 1 of 2 change(s) done ({RULES[0]}); check with `keybuzz-fix ufw --dry-run` again" in host["error"]
    assert "(nothing heard from it for 2s, --timeout)" in silent["error"]  # the keepalives went unanswered
    assert run.data["summary"] == {"unknown": 2, "changed": 1}
    assert Path(run.data["retry_file"]).read_text().split() == [dropped.name, cut.name]
    assert run.host(fine.name)["status"] == "changed"
    for h in (dropped, cut):
        assert added(h) == before[h.name] + [RULES[0]]  # the first rule landed, the second did not
    assert added(fine) == before[fine.name] + list(RULES)
    entries = audit(state)
    for h in (dropped, cut):  # the audit says exactly what is known
        mine = [(e["action"], e["outcome"]) for e in entries if e["where"] == h.name]
        assert mine == [(RULES[0], "ok"), (RULES[1], "unknown")], mine
    assert not leftovers(state)

    again = ufw(lab, servers, state, "--yes", "--timeout", "2")
    assert again.code == 0, again.data
    assert {h: again.host(h)["status"] for h in (dropped.name, cut.name, fine.name)} == {
        dropped.name: "changed",
        cut.name: "changed",
        fine.name: "unchanged",
    }
    assert again.host(dropped.name)["applied"] == [RULES[1]]  # only what was missing
    for h in lab.hosts:
        rules = added(h)
        assert rules == before[h.name] + list(RULES)  # converged, each rule once, nothing reordered
    third = ufw(lab, servers, state, "--yes", "--timeout", "2")
    assert {h["status"] for h in third.data["hosts"]} == {"unchanged"}


def test_a_script_killed_mid_apply_leaves_the_change_in_flight_unknown_and_a_rerun_converges(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    """An OOM kill or an operator's kill of the shell running the changes: the answer comes back, cut short."""
    with lab_factory(["k8s-worker-01"]) as lab:
        state, host = tmp_path / "state", lab.host("k8s-worker-01")
        servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())
        gate = Gate(host)
        before = added(host)

        proc = start(lab, servers, state, "--yes", "--timeout", "10")
        gate.kill_script(gate.reached(proc))
        run = finish(proc)
        gate.open()

        assert run.code == 1
        outcome = run.host(host.name)
        assert outcome["status"] == "unknown" and outcome["error_type"] == "ChangeUnknown", outcome
        assert outcome["applied"] == [RULES[0]]
        assert outcome["error"] == (
            f"{host.name}: unknown — the shell running the changes on {host.name} ended (killed by SIGKILL, "
            f"exit 137) while `{RULES[1]}` ran; 1 of 2 change(s) done ({RULES[0]}); "
            "check with `keybuzz-fix ufw --dry-run` again"
        )
        mine = [(e["action"], e["outcome"]) for e in audit(state) if e["where"] == host.name]
        assert mine == [(RULES[0], "ok"), (RULES[1], "unknown")]
        assert added(host) == before + [RULES[0]]

        again = ufw(lab, servers, state, "--yes", "--timeout", "10")
        assert again.code == 0 and again.host(host.name)["applied"] == [RULES[1]], again.data
        assert added(host) == before + list(RULES)


def test_slow_hosts_are_bounded_by_the_timeout_and_the_others_are_unaffected(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    names = ["k8s-worker-01", "k8s-worker-02", "k8s-worker-03", "k8s-worker-04"]
    with lab_factory(names) as lab:
        state = tmp_path / "state"
        servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())
        stopped, trickle = lab.host(names[0]), lab.host(names[1])
        sshd = stopped._procs.sshd
        assert sshd is not None
        trickle.run("tc qdisc add dev eth0 root tbf rate 1kbit burst 1600 latency 120s")
        os.kill(sshd.pid, signal.SIGSTOP)
        try:
            run = ufw(lab, servers, state, "--yes", "--timeout", "2")
        finally:
            os.kill(sshd.pid, signal.SIGCONT)
            trickle.run("tc qdisc del dev eth0 root")
        assert run.code == 1
        assert run.seconds < 20  # two hosts that never answer cost --timeout, not the run
        for h in (stopped, trickle):
            host = run.host(h.name)
            assert host["status"] == "failed" and host["error_type"] == "HostUnreachable", host
            assert "no SSH answer within 2s (--timeout): the host is down or too slow" in host["error"]
            assert host["seconds"] < 10
        for name in names[2:]:
            assert run.host(name)["status"] == "changed"
            assert added(lab.host(name))[-2:] == list(RULES)
        assert {e["where"] for e in audit(state)} == set(names[2:])

        again = ufw(lab, servers, state, "--yes", "--timeout", "2")  # the hosts answer again: it converges
        assert again.code == 0
        assert [again.host(n)["status"] for n in names] == ["changed", "changed", "unchanged", "unchanged"]


def test_refused_authentication_is_reported_per_host(lab3: Lab, tmp_path: Path) -> None:
    lab, state = lab3, tmp_path / "state"
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True, timeout=30)
    servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())
    before = {h.name: added(h) for h in lab.hosts}

    run = ufw(lab, servers, state, "--yes", "--timeout", "5", identity=stranger)
    assert run.code == 1 and run.seconds < 30
    for h in lab.hosts:
        host = run.host(h.name)
        assert host["error_type"] == "AuthError", host
        assert f"authentication refused for root@{h.ip}:22" in host["error"]
        assert added(h) == before[h.name]
    assert audit(state) == []

    ghost = servers.read_text().replace("\troot\t", "\tghost\t", 1)  # the first worker: a user with no key there
    (tmp_path / "ghost.tsv").write_text(ghost)
    run = ufw(lab, tmp_path / "ghost.tsv", state, "--yes", "--timeout", "5")
    assert run.code == 1
    first, *others = lab.hosts
    assert run.host(first.name)["error_type"] == "AuthError"
    assert f"authentication refused for ghost@{first.ip}:22" in run.host(first.name)["error"]
    assert [run.host(h.name)["status"] for h in others] == ["changed", "changed"]


def test_ctrl_c_during_ufw_stops_cleanly_and_says_what_was_done(lab3: Lab, tmp_path: Path) -> None:
    lab, state = lab3, tmp_path / "state"
    servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())
    held_host = lab.host("k8s-worker-02")
    before = {h.name: added(h) for h in lab.hosts}
    gate = Gate(held_host)
    proc = start(lab, servers, state, "--yes", "--timeout", "5")
    gate.reached(proc)
    deadline = time.monotonic() + 60  # the two other hosts finish: only the held one is in flight
    while sum(e["outcome"] == "ok" for e in audit(state)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # let Ctrl-C land while the host is still held, then let its command finish
    gate.open()
    run = finish(proc, timeout=90)

    assert run.code == 130
    assert run.data == {}  # no summary: the error line says what was done
    (line,) = run.stderr.splitlines()
    assert line == (
        f"keybuzz-fix: error: interrupted: changed ({len(RULES)} change(s) made) on k8s-worker-01, k8s-worker-02, "
        "k8s-worker-03; re-run to converge (the audit log lists every change made)"
    )
    entries = audit(state)  # every line whole JSON, every change there once, with who, when, where, what
    for h in lab.hosts:
        new = added(h)[len(before[h.name]) :]
        assert new == list(RULES)
        assert [e["action"] for e in entries if e["where"] == h.name and e["outcome"] == "ok"] == new
    assert all({"time", "who", "command", "where", "action", "outcome"} <= set(e) for e in entries)
    assert not leftovers(state)
    again = ufw(lab, servers, state, "--yes", "--timeout", "5")
    assert again.code == 0 and {h["status"] for h in again.data["hosts"]} == {"unchanged"}


def test_ctrl_c_during_convert_stops_cleanly_and_loses_nothing(keybuzz_cluster: KeybuzzCluster, tmp_path: Path) -> None:
    """SIGINT while convert waits for pods that never get ready (keybuzz-api asks for 64 CPUs)."""
    from kubernetes import client

    api = keybuzz_cluster.api_client
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_deployment(
        "keybuzz-api",
        "keybuzz",
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "keybuzz-api", "resources": {"requests": {"cpu": "64"}, "limits": {"cpu": "64"}}}
                        ]
                    }
                }
            }
        },
    )
    originals = {
        (kind, o.metadata.name): o.metadata.uid
        for kind, items in (
            ("Deployment", apps.list_namespaced_deployment("keybuzz").items),
            ("Service", client.CoreV1Api(api).list_namespaced_service("keybuzz").items),
            (
                "HorizontalPodAutoscaler",
                client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler("keybuzz").items,
            ),
        )
        for o in items
    }
    state = tmp_path / "state"
    env = {**os.environ, "KEYBUZZ_FIX_STATE_DIR": str(state)}
    argv = [
        sys.executable,
        "-m",
        "keybuzz_fix",
        "convert",
        "--yes",
        "--timeout",
        "300",
        "--kubeconfig",
        str(keybuzz_cluster.kubeconfig),
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT, env=env
    )
    proc.started = time.monotonic()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while not any(e["where"] == "DaemonSet keybuzz/keybuzz-front" for e in audit(state)):  # both applied: waiting
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("convert did not stop within 60 s of Ctrl-C")
    assert proc.returncode == 130, err
    (line,) = err.splitlines()
    assert line.startswith("keybuzz-fix: error: interrupted (Ctrl-C): backup "), line
    assert "done: create DaemonSet keybuzz/keybuzz-api, create DaemonSet keybuzz/keybuzz-front" in line
    assert "re-run convert to finish" in line
    entries = audit(state)  # whole JSON lines: the backup, then the two DaemonSets, nothing deleted
    assert [(e["action"], e["outcome"]) for e in entries] == [("backup", "ok"), ("create", "ok"), ("create", "ok")]
    assert not leftovers(state)
    backup_file = Path(entries[0]["where"])
    assert stat.S_IMODE(backup_file.stat().st_mode) == 0o600
    still = {
        (kind, o.metadata.name): o.metadata.uid
        for kind, items in (
            ("Deployment", apps.list_namespaced_deployment("keybuzz").items),
            ("Service", client.CoreV1Api(api).list_namespaced_service("keybuzz").items),
            (
                "HorizontalPodAutoscaler",
                client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler("keybuzz").items,
            ),
        )
        for o in items
    }
    assert still == originals  # every original object is still in the cluster, untouched
    saved = yaml.safe_load_all(backup_file.read_text())
    assert {(o["kind"], o["metadata"]["name"]) for o in saved if o} == set(originals)  # and in the backup

    apps.patch_namespaced_deployment(
        "keybuzz-api",
        "keybuzz",
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "keybuzz-api", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}}
                        ]
                    }
                }
            }
        },
    )
    undo = subprocess.run(
        [
            sys.executable,
            "-m",
            "keybuzz_fix",
            "rollback",
            "--backup",
            str(backup_file),
            "--yes",
            "--timeout",
            "120",
            "--kubeconfig",
            str(keybuzz_cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
    )
    assert undo.returncode == 0, undo.stderr
    assert apps.list_namespaced_daemon_set("keybuzz").items == []
