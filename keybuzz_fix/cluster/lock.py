"""One remediation at a time per cluster: a Lease in the namespace, and a lock file on this machine.

Two runs that change the same cluster at once would both plan against the state before the
other's changes, both report "changed", and one may fail half-way on a ``409``. A run that
changes something first takes

- a local lock (``flock`` on a file in the state folder, per API server and namespace): a second
  run on this machine stops at once, even before the API server answers;
- a ``coordination.k8s.io/v1`` Lease ``keybuzz-fix`` in the namespace, whose holder, start time
  and command say who runs what: a run from another machine stops, naming them.

Both are taken once the operator has confirmed, before the first change, and released when the
run ends, however it ends. A Lease whose holder stopped renewing it for longer than its duration
(the holder was killed), or one left by this machine's user (whose runs the lock file already
serialises; the API server went away before it could be deleted), is taken over.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from keybuzz_fix import storage
from keybuzz_fix.cluster.objects import Obj, meta_of
from keybuzz_fix.errors import Conflict, KeybuzzFixError

if TYPE_CHECKING:
    from keybuzz_fix.cluster.client import Kube

LEASE = "keybuzz-fix"
COMMAND_KEY = "keybuzz-fix/command"
DURATION = 3600  # seconds: a run that has not ended after an hour was killed; its Lease may be taken over


class Held(KeybuzzFixError):
    """Another run is changing this cluster."""


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


def expired(lease: Obj, now: dt.datetime) -> bool:
    """Whether the holder stopped renewing the Lease for longer than its duration."""
    spec = lease.get("spec") or {}
    try:
        renewed = dt.datetime.fromisoformat(str(spec.get("renewTime") or spec.get("acquireTime")))
    except ValueError:
        return True
    return (now - renewed).total_seconds() > int(spec.get("leaseDurationSeconds") or DURATION)


@contextmanager
def one_at_a_time(kube: Kube, namespace: str, command: str) -> Iterator[None]:
    """Hold this cluster's lock (local, then the Lease) while the block runs; a second run raises :class:`Held`."""
    holder = f"{storage.operator()} pid {os.getpid()}"
    key = hashlib.sha256(f"{kube.endpoint.server} {namespace}".encode()).hexdigest()[:16]
    path = storage.state_dir() / f"lock-{key}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another run"
            raise Held(
                f"another keybuzz-fix run on this machine is changing {kube.endpoint.server} namespace {namespace}: "
                f"{who}; nothing changed; wait for it to end"
            ) from None
        now = _now()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} since {_micro(now)} ({command})".encode(), 0)
        lease = _take_lease(kube, namespace, holder, command, now)
        try:
            yield
        finally:
            try:
                kube.delete("Lease", LEASE, namespace, uid=meta_of(lease).get("uid"))
            except KeybuzzFixError:
                pass  # the API server is gone: the next run from here takes the Lease over (see _take_lease)
    finally:
        os.close(fd)  # closing releases the flock


def _take_lease(kube: Kube, namespace: str, holder: str, command: str, now: dt.datetime) -> Obj:
    wanted = lease_object(namespace, holder, command, now)
    try:
        return kube.create(wanted)
    except Conflict:
        pass
    current = kube.get("Lease", LEASE, namespace)
    if current is None:  # released between the two calls
        return kube.create(wanted)
    mine = str((current.get("spec") or {}).get("holderIdentity") or "").startswith(f"{storage.operator()} pid ")
    if not expired(current, now) and not mine:  # a Lease of this machine's user is stale: we hold its lock file
        raise Held(
            f"another keybuzz-fix run is changing namespace {namespace} of {kube.endpoint.server}: "
            f"{held_by(current)} (Lease {namespace}/{LEASE}); nothing changed; wait for it to end"
        )
    kube.delete("Lease", LEASE, namespace, uid=meta_of(current).get("uid"))  # its holder is gone
    return kube.create(wanted)
