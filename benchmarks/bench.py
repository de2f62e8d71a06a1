"""The benchmark driver behind benchmarks/run: measure, then write RESULTS.md's measured block.

    benchmarks/run [--hosts 1,5,20,50] [--runs 5] [--startup-runs 30] [--only ufw,startup,cluster]

It runs as ``python -m benchmarks.bench`` from the repository root, so the lab and control-plane
harness (``tests.lab``, ``tests.cluster``) import as packages, like the benchmark's own modules.

K = 1 is there for the latency of one host's chain (connect, probe, apply, read back) with nothing
else competing for the CPU; 5, 20 and 50 are the fleet sizes the targets speak of.

Every lab host and the control plane are torn down at the end, also on error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import results
from benchmarks.timing import (
    CommandFailed,
    Summary,
    machine_info,
    others_running,
    samples_json,
    wait_quiet,
)
from tests.cluster.controlplane import ControlPlaneError
from tests.lab.hosts import LabError

HERE = Path(__file__).resolve().parent
PARTS = ("ufw", "startup", "cluster")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.splitlines()[0])
    p.add_argument("--hosts", default="1,5,20,50", help="lab sizes K for the ufw runs (default 1,5,20,50)")
    p.add_argument("--runs", type=int, default=5, help="runs of each tool and mode per K (default 5)")
    p.add_argument("--startup-runs", type=int, default=30, help="runs of each start-up command (default 30)")
    p.add_argument("--cluster-runs", type=int, help="runs of convert and validate (default: --runs)")
    p.add_argument("--only", default=",".join(PARTS), help=f"parts to run, of {','.join(PARTS)}")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=40.0,
        metavar="MINUTES",
        help="wait at most this long for no other test run and a low load (default 40; 0: don't)",
    )
    p.add_argument("--max-load", type=float, default=0.8, help="1-min load average that counts as quiet")
    p.add_argument("--bench-venv", type=Path, help="the venv with Ansible (benchmarks/run makes it)")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md", help="the RESULTS.md to update")
    p.add_argument("--json", type=Path, default=HERE / "results.json", help="where the raw data goes")
    p.add_argument("--no-write", action="store_true", help="print the block instead of writing RESULTS.md")
    args = p.parse_args(argv)
    args.hosts = [int(k) for k in args.hosts.split(",") if k.strip()]
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    if unknown := set(args.only) - set(PARTS):
        p.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    if args.runs < 1 or any(not 1 <= k <= 200 for k in args.hosts):
        p.error("--runs must be ≥ 1 and each K between 1 and 200")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/run: run as root (lab hosts are network namespaces with their own sshd)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    bench_python = (args.bench_venv / "bin" / "python") if args.bench_venv else None
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="kbf-bench-"))
    data: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "benchmarks/run " + " ".join(argv) if argv else "benchmarks/run",
    }
    ok = False
    try:
        if args.wait_quiet > 0:
            _log(f"waiting (at most {args.wait_quiet:g} min) for a quiet machine")
        data["quiet"] = (
            wait_quiet(args.wait_quiet, args.max_load)
            if args.wait_quiet > 0
            else {"waited_s": 0, "load": os.getloadavg()[0], "quiet": not others_running(), "others": others_running()}
        )
        _log(f"load {data['quiet']['load']:.2f}, quiet: {data['quiet']['quiet']}")
        data["machine"] = machine_info(bench_python)
        loads: list[float] = []
        others: list[str] = []
        raw: dict[str, Any] = {}

        def settle() -> None:
            """Before each part: let other test runs finish and this run's own load fade (bounded)."""
            if args.wait_quiet > 0:
                seen = wait_quiet(min(10.0, args.wait_quiet), args.max_load + 0.4, poll=15.0)
                others.extend(seen["others"])  # type: ignore[arg-type]
            others.extend(others_running())

        errors: list[str] = []

        def part(name: str, run: Callable[[], None]) -> None:
            """Run one part; a failure is recorded (and the part's logs kept) while the others go on."""
            try:
                run()
            except (
                CommandFailed,
                LabError,
                ControlPlaneError,
                TimeoutError,
                OSError,
                subprocess.SubprocessError,
                ValueError,
                KeyError,
            ) as e:
                errors.append(f"{name}: {str(e).splitlines()[0][:300]}")
                _log(f"{name} FAILED: {e}")

        if "ufw" in args.only:
            from benchmarks import ufw_bench

            data["ufw"], raw["ufw"] = {}, {}
            for k in args.hosts:

                def ufw_k(k: int = k) -> None:
                    settle()
                    _log(f"ufw on {k} lab host(s), {args.runs} interleaved run(s) of each tool, cold and no-op")
                    r = ufw_bench.run_k(k, args.runs, workdir / "ufw", bench_python, log=_log)
                    kbf = [s for ss in r["samples"]["keybuzz-fix"].values() for s in ss]
                    peaks = (max(s.peak_fds for s in kbf), max(s.peak_threads for s in kbf))
                    data["ufw"][str(k)] = {
                        "summary": results.summarize_ufw(r["samples"]),
                        "kbf_host_seconds": r["kbf_host_seconds"],
                        "kbf_peaks": peaks,
                    }
                    raw["ufw"][str(k)] = {
                        "build_s": r["build_s"],
                        "seconds": r["seconds"],
                        "samples": {t: {m: samples_json(s) for m, s in ms.items()} for t, ms in r["samples"].items()},
                        "kbf_host_seconds": r["kbf_host_seconds"],
                        "kbf_peaks": data["ufw"][str(k)]["kbf_peaks"],
                    }
                    loads.extend(s.load for ms in r["samples"].values() for ss in ms.values() for s in ss)
                    _log(f"ufw on {k} host(s) done in {r['seconds']:.0f}s")

                part(f"ufw K={k}", ufw_k)
        if "startup" in args.only:

            def startup() -> None:
                from benchmarks import startup_bench

                settle()
                _log(f"start-up: {args.startup_runs} interleaved run(s) of each command")
                st = startup_bench.run(args.startup_runs, workdir, log=_log)
                data["startup"] = {name: Summary.of(s) for name, s in st.items()}
                raw["startup"] = {name: samples_json(s) for name, s in st.items()}
                loads.extend(x.load for s in st.values() for x in s)

            part("start-up", startup)
        if "cluster" in args.only:

            def cluster() -> None:
                from benchmarks import cluster_bench

                settle()
                _log("convert and validate on the test control plane")
                data["cluster"] = cluster_bench.run(args.cluster_runs or args.runs, workdir / "cluster", log=_log)
                raw["cluster"] = data["cluster"]

            part("convert/validate", cluster)
        data["errors"] = errors
        others += others_running()
        data["others_seen"] = others
        data["load_median"] = statistics.median(loads) if loads else os.getloadavg()[0]
        data["load_max"] = max(loads) if loads else os.getloadavg()[0]
        data["total_s"] = time.monotonic() - started
        block = results.render(data)
        if args.no_write:
            print(block)
        else:
            results.write(args.results, block)
            raw_out = {k: v for k, v in data.items() if k not in ("ufw", "startup", "cluster")} | raw
            args.json.write_text(json.dumps(raw_out, indent=1, default=_json_default) + "\n")
            _log(f"wrote {args.results} and {args.json}")
        ok = not errors
    except KeyboardInterrupt:
        _log("interrupted: everything started was torn down")
        return 130
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _log(f"logs of the failed run kept in {workdir}")
    _log(f"done in {(time.monotonic() - started) / 60:.1f} min" + (f", {len(errors)} part(s) failed" if errors else ""))
    return 1 if errors else 0


def _json_default(obj: object) -> object:
    if isinstance(obj, Summary):
        return obj.to_json()
    raise TypeError(type(obj).__name__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
