"""The fan-out's resource limits, checked in a child process with a low open-files limit."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

CHILD = (
    "import resource, sys; from keybuzz_fix.hosts.parallel import raise_open_files_limit as r; "
    "got = r(int(sys.argv[1])); print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
)


def _run(soft: int, hard: int, needed: int) -> tuple[int, int]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(needed)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return int(out[0]), int(out[1])


_, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
needs_room = pytest.mark.skipif(HARD != resource.RLIM_INFINITY and HARD < 2048, reason="hard limit below 2048")


@needs_room
def test_raises_the_soft_limit_to_what_the_fleet_needs() -> None:
    assert _run(256, 2048, 1064) == (1064, 1064)


@needs_room
def test_never_lowers_a_higher_limit() -> None:
    assert _run(2000, 2048, 300) == (2000, 2000)


def test_stops_at_the_hard_limit() -> None:
    assert _run(128, 512, 5000) == (512, 512)


def test_after_ctrl_c_each_finished_host_says_what_it_did() -> None:
    from keybuzz_fix.errors import HostUnreachable
    from keybuzz_fix.hosts.parallel import Attempt, _interrupted
    from keybuzz_fix.inventory import Host

    hosts = [Host(f"k8s-worker-0{i}", f"198.18.0.1{i}", None, "root", "prod", "k3s", "worker") for i in range(1, 5)]
    outcomes = {
        0: Attempt(hosts[0], 0, None, 0.1),
        1: Attempt(hosts[1], 6, None, 0.1),
        2: Attempt(hosts[2], None, HostUnreachable("k8s-worker-03", "no SSH answer within 4s"), 4.0),
    }
    said = _interrupted(hosts, outcomes, lambda n: f"changed ({n} change(s) made)" if n else "nothing to change")
    assert said == (
        "interrupted: nothing to change on k8s-worker-01; changed (6 change(s) made) on k8s-worker-02; "
        "failed on k8s-worker-03 (no SSH answer within 4s); not started on k8s-worker-04; "
        "re-run to converge (the audit log lists every change made)"
    )
    assert _interrupted(hosts[:1], {}, None).startswith("interrupted: not started on k8s-worker-01;")
