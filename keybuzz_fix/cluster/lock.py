"""One remediation at a time: per cluster a Lease and a lock file, per host a lock file.

Two runs that change the same cluster at once would both plan against the state before the
other's changes, both report "changed", and one may fail half-way on a ``409``. Every command
that changes something takes, once the operator has confirmed and before its first change,

- for a cluster (``convert``, ``rollback``, ``ingress``, ``all``): a local lock (``flock`` on a
  file in the state folder, per API server and namespace), so a second run on this machine stops
  at once, even before the API server answers; then a ``coordination.k8s.io/v1`` Lease
  ``keybuzz-fix`` in the namespace, whose holder, start time and command say who runs what, so a
  run from another machine stops too, naming them;
- for hosts (``ufw``, ``overlay``, the ufw step of ``all``): a local lock per worker address
  (IP_PRIVEE) it changes, so two runs on this machine never change the same host at once.

All are released when the run ends, however it ends (a lock file's ``flock`` dies with its
process, so it is never stale). A Lease whose holder stopped renewing it for longer than its
duration, or one left by a run of this user on this machine whose process is gone (the API server
went away before it could be deleted), is taken over. The second run raises :class:`Held`, one
line: who holds it, since when, with which command, what to do; nothing changed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from keybuzz_fix import storage
from keybuzz_fix.cluster.objects import Obj, meta_of
from keybuzz_fix.errors import Conflict, Held, KeybuzzFixError

if TYPE_CHECKING:
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.inventory import Host

__all__ = [
    "COMMAND_KEY",
    "DURATION",
    "LEASE",
    "Held",
    "expired",
    "held_by",
    "lease_object",
    "one_at_a_time",
    "running_now",
]

LEASE = "keybuzz-fix"
COMMAND_KEY = "keybuzz-fix/command"
DURATION = 3600  # seconds: a run that has not ended after an hour was killed; its Lease may be taken over


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_object(namespace: str, holder: str, command: str, now: dt.datetime) -> Obj:
    """Return the Lease a run holds: who, since when, which command."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": namespace, "annotations": {COMMAND_KEY: command}},
        "spec": {
            "holderIdentity": holder,
            "acquireTime": _micro(now),
            "renewTime": _micro(now),
            "leaseDurationSeconds": DURATION,
        },
    }


def held_by(lease: Obj) -> str:
    """Say who holds a Lease, since when and with which command."""
    spec = lease.get("spec") or {}
    command = (meta_of(lease).get("annotations") or {}).get(COMMAND_KEY, "?")
    return f"{spec.get('holderIdentity', '?')} since {spec.get('acquireTime', '?')} ({command})"


def _renewed(lease: Obj) -> dt.datetime | None:
    spec = lease.get("spec") or {}
    try:
        return dt.datetime.fromisoformat(str(spec.get("renewTime") or spec.get("acquireTime")))
    except ValueError:
        return None


def _duration(lease: Obj) -> int:
    return int((lease.get("spec") or {}).get("leaseDurationSeconds") or DURATION)


def expired(lease: Obj, now: dt.datetime) -> bool:
    """Whether the holder stopped renewing the Lease for longer than its duration."""
    renewed = _renewed(lease)
    return renewed is None or (now - renewed).total_seconds() > _duration(lease)


def _pid_of(holder: str) -> int | None:
    """The process id of a holder written as ``user@host pid N`` (None: not in that form)."""
    _, sep, pid = holder.rpartition(" pid ")
    pid = pid.split(" ", 1)[0]
    return int(pid) if sep and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _abandoned(lease: Obj, now: dt.datetime) -> bool:
    """Whether a Lease's holder is gone: it expired, or it names a process of this user here that no longer runs."""
    if expired(lease, now):
        return True
    holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
    pid = _pid_of(holder)
    # our own pid: a Lease an earlier run in this process could not delete (we hold no Lease yet)
    return (
        holder.startswith(f"{storage.operator()} pid ") and pid is not None and (pid == os.getpid() or not _alive(pid))
    )


@contextmanager
def one_at_a_time(
    command: str, *, kube: Kube | None = None, namespace: str = "", hosts: Sequence[Host] = ()
) -> Iterator[None]:
    """Hold the locks of this cluster's namespace (``kube``) and of ``hosts`` while the block runs.

    A second run that wants any of them raises :class:`Held` before it changes anything.
    """
    now = _now()
    holder = f"{storage.operator()} pid {os.getpid()}"
    mine = f"{holder} since {_micro(now)} ({command})"
    with ExitStack() as held:
        if kube is not None:
            key = hashlib.sha256(f"{kube.endpoint.server} {namespace}".encode()).hexdigest()[:16]
            busy = _local(held, storage.state_dir() / f"lock-{key}", mine)
            if busy is not None:
                raise Held(
                    f"another keybuzz-fix run on this machine is changing {kube.endpoint.server} namespace "
                    f"{namespace}: {busy}; nothing changed; {_advice(busy)}"
                )
        _lock_hosts(held, hosts, mine)
        if kube is not None:
            lease = _take_lease(kube, namespace, holder, command, now)
            held.callback(_release, kube, namespace, lease)
        yield


def running_now(kube: Kube, namespace: str) -> str | None:
    """Say who holds this namespace's Lease, if a live run does (read only; None when none, or it cannot be read).

    A run that fails while planning asks this: another run's changes, made between its reads and
    its server-side dry run, are a likely cause (a nodePort "already allocated", a 409).
    """
    try:
        lease = kube.get("Lease", LEASE, namespace)
    except KeybuzzFixError:
        return None
    if lease is None or _abandoned(lease, _now()):
        return None
    return held_by(lease)


def _lock_hosts(held: ExitStack, hosts: Sequence[Host], mine: str) -> None:
    """Take each host's lock file, in address order; name every host another run holds, grouped by holder."""
    busy: dict[str, list[str]] = {}
    for host in sorted({h.private_ip: h for h in hosts}.values(), key=lambda h: h.private_ip):
        who = _local(held, storage.state_dir() / f"lock-host-{host.private_ip}", mine)
        if who is not None:
            busy.setdefault(who, []).append(host.hostname)
    if busy:
        held.close()
        who = "; ".join(f"{', '.join(names)} by {holder}" for holder, names in busy.items())
        raise Held(
            f"another keybuzz-fix run on this machine is changing these hosts: {who}; nothing changed; "
            f"{_advice(next(iter(busy)))}"
        )


def _local(held: ExitStack, path: Path, mine: str) -> str | None:
    """Take the lock file ``path`` into ``held`` and write who holds it; return its holder when another run has it."""
    storage.state_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a run that is starting"
        os.close(fd)
        return who
    held.callback(os.close, fd)  # closing releases the flock
    os.ftruncate(fd, 0)
    os.pwrite(fd, mine.encode(), 0)
    return None


def _advice(holder: str) -> str:
    """What to do about a run on this machine that holds a lock: its flock ends with its process."""
    pid = _pid_of(holder)
    stop = f"stop it (kill {pid})" if pid is not None else "stop it"
    return f"wait for it to end, or {stop} if it hangs: its lock ends with its process"


def _release(kube: Kube, namespace: str, lease: Obj) -> None:
    try:
        kube.delete("Lease", LEASE, namespace, uid=meta_of(lease).get("uid"))
    except KeybuzzFixError:
        pass  # the API server is gone: the next run from here takes the Lease over (see _abandoned)


def _take_lease(kube: Kube, namespace: str, holder: str, command: str, now: dt.datetime) -> Obj:
    """Create the Lease, or take over an abandoned one; raise :class:`Held` naming a live holder."""
    wanted = lease_object(namespace, holder, command, now)
    current: Obj | None = None
    for _ in range(3):  # bounded: each turn, another run created or took over the Lease between two calls
        try:
            return kube.create(wanted)
        except Conflict:
            pass
        current = kube.get("Lease", LEASE, namespace)
        if current is None:  # released between the two calls
            continue
        if not _abandoned(current, now):
            break
        try:
            kube.delete("Lease", LEASE, namespace, uid=meta_of(current).get("uid"))  # its holder is gone
        except Conflict:
            continue  # another run took it over first: the next turn reads it
    raise Held(
        f"another keybuzz-fix run is changing namespace {namespace} of {kube.endpoint.server}: "
        + (held_by(current) if current is not None else "a run that is starting")
        + f" (Lease {namespace}/{LEASE}); nothing changed; wait for it to end, or, if that run is gone, "
        f"delete its Lease (kubectl -n {namespace} delete lease {LEASE}) or wait until it expires"
        + (f" at {_micro(expiry)}" if current is not None and (expiry := _expiry(current)) is not None else "")
    )


def _expiry(lease: Obj) -> dt.datetime | None:
    renewed = _renewed(lease)
    return renewed + dt.timedelta(seconds=_duration(lease)) if renewed is not None else None
