"""Run one command and report its wall time and the CPU time of its whole process tree.

    python3 benchmarks/measure.py [--peaks] RESULT.json -- COMMAND [ARG...]

This process becomes a child subreaper: whatever the command leaves running in the background
(ssh ControlPersist masters, daemonized helpers) is re-parented here instead of to init. Once the
command exits, those leftovers are stopped and reaped, so that getrusage(RUSAGE_CHILDREN) counts
the CPU of every process the command started, at any depth. The wall time ends when the command
itself exits. The machine's busy CPU time over the same interval (all processes, from /proc/stat)
is reported too: the lab hosts run on this machine, so it includes the remote side's work.
With --peaks, the command's open file descriptors and threads are sampled every 10 ms (the most
seen is reported); its end is then seen within 10 ms instead of at once.

Standard library only; the command inherits stdin, stdout and stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_LEFTOVER_GRACE = 5.0


def machine_busy_seconds() -> float:
    """Return the CPU time all CPUs spent busy since boot, from the first line of /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _reap_leftovers() -> int:
    """Stop and reap every process re-parented to us; return how many there were."""
    me, seen = os.getpid(), set[int]()
    deadline = time.monotonic() + _LEFTOVER_GRACE
    sig = signal.SIGTERM
    while True:
        while True:  # reap what already exited
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
        alive = _children(me)
        if not alive:
            return len(seen)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        for pid in alive:
            seen.add(pid)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _count(pid: int) -> tuple[int, int]:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = int(Path(f"/proc/{pid}/status").read_text().split("Threads:", 1)[1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0, 0
    return fds, threads


def _wait_sampling(pid: int) -> tuple[int, object, int, int]:
    peak_fds = peak_threads = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage, peak_fds, peak_threads
        fds, threads = _count(pid)
        peak_fds, peak_threads = max(peak_fds, fds), max(peak_threads, threads)
        time.sleep(0.01)


def main() -> int:
    args = sys.argv[1:]
    peaks = bool(args) and args[0] == "--peaks"
    args = args[1:] if peaks else args
    if len(args) < 3 or args[1] != "--":
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, argv = Path(args[0]), args[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    # Ctrl-C reaches the command (same process group); this process stays to clean up after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    busy0, start = machine_busy_seconds(), time.monotonic()
    pid = os.posix_spawnp(argv[0], argv, dict(os.environ), setsigdef=(signal.SIGINT,))
    peak_fds = peak_threads = 0
    if peaks:
        status, usage, peak_fds, peak_threads = _wait_sampling(pid)  # type: ignore[assignment]
    else:
        _, status, usage = os.wait4(pid, 0)
    end, busy1 = time.monotonic(), machine_busy_seconds()
    leftovers = _reap_leftovers()
    tree = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.write_text(
        json.dumps(
            {
                "rc": os.waitstatus_to_exitcode(status),
                "wall": end - start,
                "start": start,  # CLOCK_MONOTONIC, comparable with time.monotonic() in other processes
                "end": end,
                "cpu_user": tree.ru_utime,
                "cpu_sys": tree.ru_stime,
                "cpu_command": usage.ru_utime + usage.ru_stime,
                "machine_cpu": busy1 - busy0,
                "leftovers": leftovers,
                "peak_fds": peak_fds,
                "peak_threads": peak_threads,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
