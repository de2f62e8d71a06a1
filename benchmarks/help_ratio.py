"""`--help` time against `import typer, rich`, CPU time (user + sys), interleaved: the ≤ 1.5× budget.

CPU time, not wall time, so that a busy machine (other test runs) does not decide the result.
Run from the repository root: ``.venv/bin/python -m benchmarks.help_ratio [RUNS]``; it prints
the median CPU seconds of each command and the ratio of each ``--help`` to the floor. Exit 1
when ``keybuzz-fix --help`` is above the budget.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import startup_bench

BUDGET = 1.5
FLOOR = 'python -c "import typer, rich"'


def main(argv: list[str]) -> int:
    """Measure, print the medians and ratios, and say whether the budget is met."""
    runs = int(argv[0]) if argv else 20
    with tempfile.TemporaryDirectory() as tmp:
        samples = startup_bench.run(runs, Path(tmp), log=lambda _line: None)
    cpu = {name: statistics.median(s.cpu for s in ss) for name, ss in samples.items()}
    for name, value in cpu.items():
        ratio = value / cpu[FLOOR]
        print(f"{name:40} {value:.3f} s CPU  {ratio:.2f}× the floor")
    ratio = cpu["keybuzz-fix --help"] / cpu[FLOOR]
    verdict = "met" if ratio <= BUDGET else "NOT met"
    print(f"keybuzz-fix --help: {ratio:.2f}× `import typer, rich` (budget ≤ {BUDGET}×): {verdict}")
    return 0 if ratio <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
