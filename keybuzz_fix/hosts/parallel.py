"""Work on many hosts at once, each failure contained to its host.

A thread per host (bounded by ``--concurrency``): the work is network-bound (SSH round trips), so
threads suffice and keep paramiko usable. Progress goes to a :class:`Progress` the caller passes
(the report draws it on a terminal). Ctrl-C cancels the hosts not yet started; the ones in flight
finish their current command (its own timeout; a host silent for ``--timeout`` is given up
sooner), then the error names the hosts that finished, failed, and never started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from keybuzz_fix.errors import Interrupted, KeybuzzFixError
from keybuzz_fix.inventory import Host

ResultT = TypeVar("ResultT")


class Progress(Protocol):
    """Where :func:`on_each_host` says how far it got (a progress bar, for a person at a terminal)."""

    def start(self, label: str, total: int, hosts: Sequence[str] = ()) -> None:
        """Begin counting ``total`` hosts (``hosts``: their names, to say which are still awaited)."""

    def advance(self, host: str = "", problem: str | None = None, seconds: float = 0.0) -> None:
        """Count one more host done, as it arrives: its name, the problem that stopped it (None: it finished)."""

    def stop(self) -> None:
        """End the display."""


@dataclass(frozen=True)
class Attempt(Generic[ResultT]):
    """The work on one host: its result, or the error that stopped it."""

    host: Host
    result: ResultT | None
    error: KeybuzzFixError | None
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether the work on this host finished without error."""
        return self.error is None


def on_each_host(
    hosts: Sequence[Host],
    work: Callable[[Host], ResultT],
    *,
    concurrency: int,
    progress: Progress | None = None,
    label: str = "working",
    changing: bool = False,
    finished: Callable[[ResultT], str] | None = None,
) -> list[Attempt[ResultT]]:
    """Run ``work`` on every host in parallel; return one attempt per host, in input order.

    After Ctrl-C, work that changes hosts (``changing``) finishes the command in flight on each
    host and the error says where it finished; work that only reads is left behind at once, and
    the error says that nothing changed. ``finished`` says, after Ctrl-C, what a host that
    finished did (``changed: 6 rule(s) added``, ``nothing to change``); else "finished".

    Only the tool's own errors are contained per host; anything else is a bug and propagates.
    """
    if not hosts:
        return []
    outcomes: dict[int, Attempt[ResultT]] = {}

    def one(index: int, host: Host) -> tuple[int, Attempt[ResultT]]:
        start = time.monotonic()
        try:
            result = work(host)
        except KeybuzzFixError as e:
            return index, Attempt(host, None, e, time.monotonic() - start)
        return index, Attempt(host, result, None, time.monotonic() - start)

    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(hosts))), thread_name_prefix="host")
    submitted = [pool.submit(one, i, h) for i, h in enumerate(hosts)]
    pending: set[Future[tuple[int, Attempt[ResultT]]]] = set(submitted)
    interrupted = False
    try:
        if progress is not None:
            progress.start(label, len(hosts), [h.hostname for h in hosts])
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                index, outcome = fut.result()
                outcomes[index] = outcome
                if progress is not None:  # each host's result as it arrives: a dead host holds back no other
                    problem = outcome.error.problem if outcome.error is not None else None
                    progress.advance(outcome.host.hostname, problem, outcome.seconds)
    except KeyboardInterrupt:
        interrupted = True
        pool.shutdown(wait=False, cancel_futures=True)
        if not changing:
            if progress is not None:
                progress.stop()
            raise Interrupted(
                f"interrupted while planning ({label}: {len(outcomes)} of {len(hosts)} host(s) read); nothing changed"
            ) from None
    finally:
        if progress is not None and (changing or not interrupted):
            progress.stop()
        if changing or not interrupted:
            pool.shutdown(wait=True)  # hosts in flight finish their command (a silent one: --timeout)
    if interrupted:
        for fut in submitted:
            if fut.done() and not fut.cancelled():
                index, outcome = fut.result()
                outcomes[index] = outcome
        raise Interrupted(_interrupted(hosts, outcomes, finished)) from None
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


def _interrupted(
    hosts: Sequence[Host], outcomes: dict[int, Attempt[ResultT]], finished: Callable[[ResultT], str] | None
) -> str:
    """Say, after Ctrl-C, what each host that finished did, which failed and which were never started."""
    done: dict[str, list[str]] = {}
    for _, o in sorted(outcomes.items()):
        if o.ok:
            what = finished(o.result) if finished is not None and o.result is not None else "finished"
            done.setdefault(what, []).append(o.host.hostname)
    failed = [f"{o.host.hostname} ({o.error.problem})" for _, o in sorted(outcomes.items()) if o.error is not None]
    untouched = [h.hostname for i, h in enumerate(hosts) if i not in outcomes]
    parts = [f"{what} on {', '.join(names)}" for what, names in done.items()]
    parts += [f"failed on {', '.join(failed)}"] if failed else []
    parts += [f"not started on {', '.join(untouched)}"] if untouched else []
    said = "; ".join(parts) or "no host finished"
    return f"interrupted: {said}; re-run to converge (the audit log lists every change made)"
