"""Work on many hosts at once, each failure contained to its host.

A thread per host (bounded by ``--concurrency``): the work is network-bound (SSH round trips), so
threads suffice and keep paramiko usable. Progress is drawn only on a terminal. Ctrl-C cancels the
hosts not yet started; the ones in flight finish their current command (bounded by ``--timeout``),
then the error names the hosts that finished, failed, and never started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from keybuzz_fix.errors import Interrupted, KeybuzzFixError
from keybuzz_fix.inventory import Host

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What happened on one host: a result, or the error that stopped it."""

    host: Host
    result: T | None
    error: KeybuzzFixError | None
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether the work on this host finished without error."""
        return self.error is None


def run_all(
    hosts: Sequence[Host],
    work: Callable[[Host], T],
    *,
    concurrency: int,
    console: Console | None = None,
    label: str = "working",
) -> list[Outcome[T]]:
    """Run ``work`` on every host in parallel; return one outcome per host, in input order.

    Only the tool's own errors are contained per host; anything else is a bug and propagates.
    """
    if not hosts:
        return []
    outcomes: dict[int, Outcome[T]] = {}

    def one(index: int, host: Host) -> tuple[int, Outcome[T]]:
        start = time.monotonic()
        try:
            result = work(host)
        except KeybuzzFixError as e:
            return index, Outcome(host, None, e, time.monotonic() - start)
        return index, Outcome(host, result, None, time.monotonic() - start)

    progress = _progress(console, label, len(hosts))
    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(hosts))), thread_name_prefix="host")
    submitted = [pool.submit(one, i, h) for i, h in enumerate(hosts)]
    pending: set[Future[tuple[int, Outcome[T]]]] = set(submitted)
    interrupted = False
    try:
        if progress is not None:
            progress.start()
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                index, outcome = fut.result()
                outcomes[index] = outcome
                if progress is not None:
                    progress.advance(progress.task_ids[0])
    except KeyboardInterrupt:
        interrupted = True
        pool.shutdown(wait=False, cancel_futures=True)
    finally:
        if progress is not None:
            progress.stop()
        pool.shutdown(wait=True)  # the hosts in flight finish their current command (bounded by --timeout)
    if interrupted:
        for fut in submitted:
            if fut.done() and not fut.cancelled():
                index, outcome = fut.result()
                outcomes[index] = outcome
        raise Interrupted(_interrupted(hosts, outcomes)) from None
    return [outcomes[i] for i in range(len(hosts))]


def raise_open_files_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (never above the hard limit); return it.

    Each host's SSH connection stays open from the plan to the apply: a fleet of several hundred
    hosts would otherwise run into the usual soft limit of 1024 and fail host by host.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def _interrupted(hosts: Sequence[Host], outcomes: dict[int, Outcome[T]]) -> str:
    """Say, after Ctrl-C, which hosts finished, which failed and which were never started."""

    def names(which: list[str]) -> str:
        return ", ".join(which) or "none"

    finished = [o.host.hostname for _, o in sorted(outcomes.items()) if o.ok]
    failed = [
        f"{o.host.hostname} ({getattr(o.error, 'problem', o.error)})" for _, o in sorted(outcomes.items()) if not o.ok
    ]
    untouched = [h.hostname for i, h in enumerate(hosts) if i not in outcomes]
    return (
        f"interrupted: finished on {names(finished)}; failed on {names(failed)}; not started on "
        f"{names(untouched)}; re-run to converge (the audit log lists every change made)"
    )


def _progress(console: Console | None, label: str, total: int):  # type: ignore[no-untyped-def]
    if console is None or not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    p.add_task(label, total=total)
    return p
