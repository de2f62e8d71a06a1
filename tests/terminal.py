"""The CLI at a terminal: ``python -m keybuzz_fix ARGS`` in a pseudo-terminal, as a person runs it."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pexpect

ROOT = Path(__file__).resolve().parent.parent


def terminal_env(*, drop: Sequence[str] = (), **values: str) -> dict[str, str]:
    """This process's environment for a child at a terminal, without ``drop``, with ``values``.

    COLUMNS and LINES are always left out: the size the child sees is the pseudo-terminal's.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", *drop)}
    env.update(values)
    return env


def at_terminal(
    args: Sequence[str], env: Mapping[str, str], *, rows: int = 50, columns: int = 400, timeout: float = 120
) -> pexpect.spawn:
    """Start the CLI with ``args`` in a pseudo-terminal of ``rows`` × ``columns``, from the repository.

    Its output is read as UTF-8, a character cut by a signal (Ctrl-C mid-progress-bar) replaced.
    """
    return pexpect.spawn(
        sys.executable,
        ["-m", "keybuzz_fix", *args],
        env=dict(env),
        cwd=str(ROOT),
        dimensions=(rows, columns),
        encoding="utf-8",
        codec_errors="replace",
        timeout=timeout,
    )
