"""Start-up: `keybuzz-fix --help` against the floor of any Typer + rich CLI, interleaved."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.timing import Sample, measure
from benchmarks.ufw_bench import _base_env, keybuzz_fix_argv

WARMUP = 2


def commands() -> dict[str, list[str]]:
    """Return the measured commands, the product first and the floors after it."""
    py = sys.executable
    return {
        "keybuzz-fix --help": [*keybuzz_fix_argv(), "--help"],
        "keybuzz-fix ufw --help": [*keybuzz_fix_argv(), "ufw", "--help"],
        'python -c "import typer, rich"': [py, "-c", "import typer, rich"],
        'python -c "import typer.rich_utils"': [py, "-c", "import typer.rich_utils"],
        'python -c "pass"': [py, "-c", "pass"],
    }


def run(runs: int, workdir: Path, log: Callable[[str], None] = print) -> dict[str, list[Sample]]:
    """Run every command ``runs`` times, round-robin, after a warm-up (page cache, .pyc files)."""
    cmds = commands()
    env = _base_env()
    for argv in cmds.values():
        for _ in range(WARMUP):
            measure(argv, env=env)
    samples: dict[str, list[Sample]] = {name: [] for name in cmds}
    for i in range(runs):
        for name, argv in cmds.items():
            samples[name].append(measure(argv, env=env, output=workdir / "startup.out"))
        if (i + 1) % 10 == 0:
            log(f"  start-up: {i + 1}/{runs} rounds")
    return samples
