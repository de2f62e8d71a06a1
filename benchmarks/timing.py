"""Timing primitives: one measured command, summaries of many, and the state of the machine."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURE = HERE / "measure.py"


@dataclass(frozen=True)
class Sample:
    """One measured run: wall time, CPU of the command's process tree, busy CPU of the machine."""

    wall: float
    cpu: float  # user + sys of the command and every process it started
    machine_cpu: float  # every process on the machine (the lab hosts included) over the same interval
    rc: int
    load: float  # 1-minute load average when the run started
    peak_fds: int = 0  # with peaks=True: most file descriptors the command held at once
    peak_threads: int = 0  # ... and most threads
    start: float = 0.0  # time.monotonic() when the command was started
    end: float = 0.0  # ... and when it exited


class CommandFailed(RuntimeError):
    """A measured command exited non-zero or did not do what it was measured for."""


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    output: Path | None = None,
    timeout: float = 900.0,
    check: bool = True,
    peaks: bool = False,
) -> Sample:
    """Run ``argv`` under benchmarks/measure.py; its stdout and stderr go to ``output``."""
    load = os.getloadavg()[0]
    with tempfile.NamedTemporaryFile(prefix="kbf-bench-", suffix=".json") as result:
        sink = open(output, "wb") if output else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.run(
                [sys.executable, "-I", str(MEASURE), *(["--peaks"] if peaks else []), result.name, "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                timeout=timeout,
                check=False,
            )
        finally:
            if output:
                sink.close()  # type: ignore[union-attr]
        if proc.returncode != 0:
            raise CommandFailed(f"measure.py exited {proc.returncode} for {' '.join(argv)[:200]}")
        data = json.loads(Path(result.name).read_text())
    sample = Sample(
        wall=data["wall"],
        cpu=data["cpu_user"] + data["cpu_sys"],
        machine_cpu=data["machine_cpu"],
        rc=data["rc"],
        load=load,
        peak_fds=data["peak_fds"],
        peak_threads=data["peak_threads"],
        start=data["start"],
        end=data["end"],
    )
    if check and sample.rc != 0:
        tail = output.read_text(errors="replace")[-2000:] if output else ""
        raise CommandFailed(f"{' '.join(argv)[:200]} exited {sample.rc}\n{tail}")
    return sample


@dataclass(frozen=True)
class Summary:
    """Median and range of a series of samples."""

    n: int
    wall: float
    wall_min: float
    wall_max: float
    cpu: float
    cpu_min: float
    cpu_max: float
    machine_cpu: float

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Summary:
        """Summarize samples by their medians and ranges."""
        walls, cpus = [s.wall for s in samples], [s.cpu for s in samples]
        return cls(
            len(samples),
            statistics.median(walls),
            min(walls),
            max(walls),
            statistics.median(cpus),
            min(cpus),
            max(cpus),
            statistics.median(s.machine_cpu for s in samples),
        )

    def to_json(self) -> dict[str, float]:
        """Return the summary as a JSON-ready dict."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def samples_json(samples: Sequence[Sample]) -> list[dict[str, float]]:
    """Return raw samples as JSON-ready dicts."""
    return [
        {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(s).items() if k not in ("start", "end")}
        for s in samples
    ]


# -- the machine ---------------------------------------------------------------------------------


def others_running() -> list[str]:
    """Return the pytest / kube-apiserver processes on this machine that are not ours."""
    mine = {os.getpid(), *_descendants(os.getpid())}
    out = subprocess.run(["pgrep", "-af", "pytest|kube-apiserver"], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        pid, _, cmd = line.partition(" ")
        if int(pid) not in mine and "pgrep" not in cmd:
            found.append(line[:160])
    return found


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set[int](), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def wait_quiet(max_minutes: float, max_load: float, poll: float = 30.0) -> dict[str, object]:
    """Wait (bounded) until no other test run is active and the load is low; return what was seen."""
    start = time.monotonic()
    deadline = start + max_minutes * 60
    while True:
        others, load = others_running(), os.getloadavg()[0]
        if not others and load <= max_load:
            return {"waited_s": round(time.monotonic() - start), "load": load, "quiet": True, "others": []}
        if time.monotonic() >= deadline:
            return {"waited_s": round(time.monotonic() - start), "load": load, "quiet": False, "others": others}
        print(
            f"  waiting for a quiet machine: load {load:.2f} (want ≤ {max_load}), {len(others)} other test process(es)",
            flush=True,
        )
        time.sleep(poll)


def machine_info(bench_python: Path | None) -> dict[str, str]:
    """Return what the results depend on: hardware, kernel and tool versions."""
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    info = {
        "cpu": f"{os.cpu_count()} cores, {model.group(1).strip() if model else platform.machine()}",
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "openssh": _first_line(["ssh", "-V"]),
        "ufw": _first_line(["ufw", "--version"]),
    }
    for dist in ("keybuzz-fix", "paramiko", "typer", "rich", "cryptography", "kubernetes"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    if bench_python is not None:
        info["ansible-core"] = _bench_version(bench_python, "ansible-core")
        info["ansible (community.general)"] = _bench_version(bench_python, "ansible")
    return info


def _os_name() -> str:
    text = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)', text, re.M)
    return m.group(1) if m else platform.system()


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr).strip() else "?"


def _bench_version(python: Path, dist: str) -> str:
    proc = subprocess.run(
        [str(python), "-c", f"from importlib.metadata import version; print(version({dist!r}))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.stdout.strip() or "not installed"
