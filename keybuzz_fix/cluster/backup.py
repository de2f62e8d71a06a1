"""Backups: every object a run changes or deletes, as it was, in one timestamped YAML file.

One multi-document YAML file per run in ``<state dir>/backups`` (mode 0600, written atomically:
Ctrl-C never leaves half a file), named ``<command>-<UTC timestamp>.yaml`` so that names sort by
time. A comment header says when, against which API server, cluster and namespace, and lists the
objects. The cluster is named by its identity, the uid of its kube-system namespace (an address
changes with a proxy or a tunnel, the uid does not): ``rollback`` refuses the backup of another
cluster (:func:`cluster_check`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from keybuzz_fix import storage
from keybuzz_fix.cluster.objects import Obj, describe_object, meta_of, parse_objects, yaml_stream
from keybuzz_fix.errors import InputError, PlanRefused, UsageError, read_input
from keybuzz_fix.hints import hint


@dataclass(frozen=True)
class Backup:
    """A backup file, read back."""

    path: Path
    command: str
    server: str
    namespace: str
    objects: list[Obj]
    cluster: str = ""  # the kube-system namespace's uid; empty in backups of older versions


def backups_dir() -> Path:
    """Return the folder holding the backups (inside the state folder)."""
    return storage.state_dir() / "backups"


def write(
    objects: Sequence[Obj],
    *,
    command: str,
    server: str,
    namespace: str,
    cluster: str = "",
    carried_from: Path | None = None,
    **details: str,
) -> Path:
    """Write one backup file (0600, atomic), record it in the audit log with ``details``, and return its path."""
    path = backups_dir() / f"{command}-{storage.timestamp()}.yaml"
    header = [
        f"# keybuzz-fix {command} backup: these objects as they were before {command} changed them.",
        f"# server: {server}",
        *([f"# cluster: {cluster}"] if cluster else []),
        f"# namespace: {namespace}",
        f"# restore: keybuzz-fix rollback --backup {path}",
    ]
    if carried_from is not None:
        header.append(f"# also holds the originals an interrupted earlier run had changed ({carried_from.name})")
    header += [f"# object: {describe_object(o)}" for o in objects]
    storage.write_private(path, "\n".join(header) + "\n" + yaml_stream(list(objects)))
    storage.audit(command, str(path), "backup", "ok", objects=len(objects), **details)
    return path


def read_backup(path: Path) -> Backup:
    """Read a backup file; a missing or malformed one is an input error naming it."""
    text = read_input(path, missing="no such backup file")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if sep and key in ("server", "namespace", "cluster"):
            fields[key] = value.strip()
    command = path.name.split("-", 1)[0] if "-" in path.name else "?"
    objects = parse_objects(text, str(path))
    if not objects and not text.startswith("# keybuzz-fix "):
        raise InputError(str(path), "holds no object and no keybuzz-fix header: not a keybuzz-fix backup")
    return Backup(
        path, command, fields.get("server", ""), fields.get("namespace", ""), objects, fields.get("cluster", "")
    )


def cluster_check(saved: Backup, identity: str, server: str, *, force: bool = False) -> str | None:
    """Refuse to restore the backup of another cluster; return a warning to show, if any.

    ``identity`` is the connected cluster's (its kube-system uid). A backup without one (an older
    version wrote it) cannot be checked: it is accepted, with a warning.
    """
    if not saved.cluster:
        return (
            f"{saved.path.name} records no cluster identity (an older keybuzz-fix wrote it): it cannot be "
            f"checked against this cluster ({server}); it was taken from {saved.server or 'an unknown server'}"
        )
    if saved.cluster == identity:
        return None
    problem = (
        f"{saved.path} was taken from another cluster (kube-system uid {saved.cluster}, API server "
        f"{saved.server or 'unknown'}); this one is {identity} at {server}"
    )
    if force:
        return f"{problem}; restoring it anyway" + hint("--force-cluster", " (--force-cluster)")
    raise PlanRefused(
        f"{problem}: refusing to restore it here" + hint("--force-cluster", "; pass --force-cluster to do it anyway")
    )


def history(command: str = "convert") -> list[Path]:
    """Return the backups ``command`` wrote, newest first."""
    folder = backups_dir()
    return sorted(folder.glob(f"{command}-*.yaml"), reverse=True) if folder.is_dir() else []


def latest_backup(command: str = "convert") -> Path:
    """Return the newest backup of ``command``, or say there is none."""
    found = history(command)
    if not found:
        raise UsageError(f"no {command} backup in {backups_dir()}" + hint("--backup", "; pass --backup FILE"))
    return found[0]


def key(obj: Obj) -> tuple[str, str, str]:
    """Identify an object by kind, namespace and name."""
    m = meta_of(obj)
    return str(obj.get("kind")), str(m.get("namespace", "")), str(m.get("name"))


def carried(
    previous: Backup | None,
    objects: Iterable[Obj],
    live_deployment_uids: Iterable[str],
    *,
    server: str,
    namespace: str,
    cluster: str = "",
) -> list[Obj]:
    """Return the originals an interrupted earlier run backed up and this run will not see again.

    An interrupted convert may have switched a Service before stopping; the next run finds it
    switched and does not back it up again. When the earlier backup still holds a Deployment that
    is live (the same uid: the same conversion, unfinished), its other objects are carried into
    the new backup, so the newest backup is always enough to roll back.
    """
    if previous is None or previous.namespace != namespace:
        return []
    same = previous.cluster == cluster if previous.cluster and cluster else previous.server == server
    if not same:
        return []
    uids = {meta_of(o).get("uid") for o in previous.objects if o.get("kind") == "Deployment"}
    if not uids & set(live_deployment_uids):
        return []
    have = {key(o) for o in objects}
    return [o for o in previous.objects if key(o) not in have]
