"""Where output goes: the formats, the console, JSON and raw text on stdout, the one-line error, the prompt.

Nothing else in the package writes to stdout or stderr or reads stdin. JSON goes to stdout
unadorned (no rich markup, no wrapping); rich is imported only when something is drawn, so that
``keybuzz-fix --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from keybuzz_fix.errors import Aborted, Unanswered, UsageError
from keybuzz_fix.hints import hint

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress


class Output(str, Enum):
    """Output formats of most commands."""

    TEXT = "text"
    JSON = "json"


class PlanOutput(str, Enum):
    """Output formats of commands that can also print the objects they would apply."""

    TEXT = "text"
    JSON = "json"
    YAML = "yaml"


class ScoreFormat(str, Enum):
    """Output formats of ``validate``."""

    TEXT = "text"
    JSON = "json"
    JUNIT = "junit"


STATUS_STYLE = {
    "unchanged": "green",
    "changed": "bold green",
    "planned": "yellow",
    "blocked": "bold yellow",
    "failed": "bold red",
    "unknown": "bold magenta",
    "interrupted": "bold yellow",
    "pass": "green",
    "fail": "bold red",
}


def new_console(*, stderr: bool = False) -> Console:
    """Return the console a command draws on (stdout, or stderr when stdout carries JSON; no highlighting).

    Into a pipe or a file (``| tee run.log``) lines are not wrapped: a ``ufw allow …`` command or
    a diff line stays whole, to be copied or searched; tables still fit the width.
    """
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    console.soft_wrap = not console.is_terminal
    return console


def held_back(console: Console) -> Console:
    """Return a console like ``console`` whose output waits in memory until :func:`let_out` prints it.

    ``all`` plans its steps while the operator watches a progress display, then shows its
    summary first and the steps' plans after it: the plans are drawn while planning, held back.
    """
    import io

    from rich.console import Console

    held = Console(
        file=io.StringIO(),
        width=console.width,
        force_terminal=console.is_terminal,
        color_system=cast("Any", console.color_system),  # the same colours: a name rich gave
        highlight=False,
    )
    held.soft_wrap = console.soft_wrap
    return held


def let_out(console: Console, held: Console) -> None:
    """Print, once, what ``held`` holds back (see :func:`held_back`), and empty it."""
    import io

    buffer = held.file
    if not isinstance(buffer, io.StringIO) or not buffer.getvalue():
        return
    console.file.write(buffer.getvalue())
    console.file.flush()
    buffer.seek(0)
    buffer.truncate()


@contextmanager
def working(console: Console, what: str) -> Iterator[None]:
    """Show a spinner naming what the run waits for, at a terminal; nothing in a pipe or a file."""
    if not console.is_terminal:
        yield
        return
    with console.status(what):
        yield


def print_json(data: Any) -> None:
    """Print JSON to stdout, nothing else."""
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def write_stdout(text: str) -> None:
    """Write machine-readable text (a YAML stream, JUnit XML) to stdout as it is."""
    sys.stdout.write(text)


def print_line(text: str) -> None:
    """Print one plain line on stdout (``--version``)."""
    print(text)


def error_line(message: str) -> None:
    """Print an error as the one line ``keybuzz-fix: error: <message>`` on stderr."""
    print(f"keybuzz-fix: error: {' '.join(message.split())}", file=sys.stderr)


def note_line(message: str) -> None:
    """Print a remark that is not an error as the one line ``keybuzz-fix: note: <message>`` on stderr."""
    print(f"keybuzz-fix: note: {' '.join(message.split())}", file=sys.stderr)


_VERBOSITY = 0


def verbosity() -> int:
    """Return how many ``-v`` the command line gave (0: the plan's summary and what matters, not every detail)."""
    return _VERBOSITY


def start_trace(verbosity: int) -> None:
    """Send the trace of remote commands and API requests to stderr: ``-v`` one line each, ``-vv`` with bodies."""
    import logging

    global _VERBOSITY
    _VERBOSITY = verbosity
    log = logging.getLogger("keybuzz_fix.trace")
    for old in [h for h in log.handlers if getattr(h, "keybuzz_fix", False)]:
        log.removeHandler(old)
    if verbosity <= 0:
        log.setLevel(logging.WARNING)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.keybuzz_fix = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("keybuzz-fix: trace: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    log.propagate = False


def end_now(code: int) -> None:
    """Flush what was printed and end the process at once, without waiting for threads still blocked."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def silence_stdout() -> None:
    """Send what is left to print to nowhere: the reader of stdout went away (``| head``)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin was closed
        return False


def can_ask(command: str, *, yes: bool, dry_run: bool = False) -> None:
    """Refuse, before anything is read or changed, a run that would have to ask but cannot (stdin is not a terminal).

    Called by the CLI before a command connects anywhere: a cron job or a pipe learns at once,
    not after every host was planned, that it needs ``--yes`` (or ``--dry-run``).
    """
    if yes or dry_run or _stdin_is_terminal():
        return
    raise UsageError(
        f"{command} asks before it changes anything, but stdin is not a terminal: "
        + hint("--yes", "pass --yes to proceed, or --dry-run to only see the plan; ")
        + "nothing was read or changed"
    )


def confirm(question: str, *, yes: bool) -> None:
    """Ask the operator; ``--yes`` answers for them. A closed stdin never means yes."""
    if yes:
        return
    if not _stdin_is_terminal():
        raise UsageError(
            f"{question} — needs confirmation but stdin is not a terminal"
            + hint("--yes", "; pass --yes to proceed, or --dry-run to only see the plan")
        )
    if not _answered_yes(question):
        raise Aborted("nothing changed (answered no)")


def _answered_yes(question: str) -> bool:
    """Ask on stderr and read one line: only y or yes is yes.

    On stderr, as the plan is under ``-o json``: stdout carries the JSON document and nothing else
    (click's prompt, as Typer ships it, writes its last character to stdout). The question is
    folded at spaces to the terminal, never inside a word or a name.
    """
    import shutil
    import textwrap

    sys.stdout.flush()
    width = max(shutil.get_terminal_size().columns - 1, 40)
    sys.stderr.write(textwrap.fill(question, width, break_on_hyphens=False) + " [y/N]: ")
    sys.stderr.flush()
    try:
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # the error line that follows starts on a line of its own
        raise Unanswered("interrupted at the question; nothing changed") from None
    if not line:  # Ctrl-D: the input ended
        sys.stderr.write("\n")
        raise Unanswered("no answer at the question (end of input); nothing changed")
    return line.strip().lower() in ("y", "yes")


class ProgressBar:
    """A transient display over hosts (see :class:`keybuzz_fix.hosts.parallel.Progress`).

    Each host's result shows as it arrives, above a bar that counts hosts done n/N and names the
    hosts still awaited, so one dead host holds back none of the others' lines. The display goes
    away when the work ends, and the caller's table of results takes its place.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bar: RichProgress | None = None
        self._live: Any = None
        self._label = ""
        self._waiting: list[str] = []
        self._arrived: list[str] = []

    def start(self, label: str, total: int, hosts: Sequence[str] = ()) -> None:
        """Draw the bar."""
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._label, self._waiting, self._arrived = label, list(hosts), []
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self._bar.add_task(label, total=total)
        self._live = Live(self._render(), console=self._console, transient=True, refresh_per_second=8)
        self._live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        assert self._bar is not None
        rows = [Text.from_markup(line) for line in self._arrived[-20:]]
        if len(self._arrived) > 20:
            rows.insert(0, Text(f"  … {len(self._arrived) - 20} more host(s) done"))
        waiting = self._waiting
        if waiting:
            shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
            self._bar.update(self._bar.task_ids[0], description=f"{self._label} (waiting for {shown})")
        return Group(*rows, self._bar)

    def advance(self, host: str = "", problem: str | None = None, seconds: float = 0.0) -> None:
        """Count one more host and show its result."""
        from rich.markup import escape

        if self._bar is None:
            return
        self._bar.advance(self._bar.task_ids[0])
        if host:
            if host in self._waiting:
                self._waiting.remove(host)
            result = "[green]done[/]" if problem is None else f"[bold red]failed[/]: {escape(problem)}"
            self._arrived.append(f"  {escape(host)}: {result} ({seconds:.1f} s)")
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def stop(self) -> None:
        """Take the display away."""
        if self._live is not None:
            self._live.stop()
            self._live = None


def progress_bar(console: Console | None) -> ProgressBar | None:
    """Return a progress bar for a person at a terminal; none for a pipe, a file or JSON output."""
    return ProgressBar(console) if console is not None and console.is_terminal else None
