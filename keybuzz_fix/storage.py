"""Where the tool keeps what it writes: backups, the audit log, saved kubeconfigs.

Every file is private (0600, folder 0700) and written atomically (temporary file, fsync, rename)
so that Ctrl-C or a crash never leaves half a backup. The audit log is JSON lines, one per change
made: when, who, where, what, outcome.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

_AUDIT_LOCK = threading.Lock()


def state_dir() -> Path:
    """Return (and create, 0700) the folder for backups and the audit log."""
    base = os.environ.get("KEYBUZZ_FIX_STATE_DIR")
    if base:
        path = Path(base)
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(xdg) / "keybuzz-fix"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def write_private(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_retry(command: str, hostnames: list[str]) -> Path:
    """Write the hosts a run failed on, one a line, to ``retry/<command>.retry`` (for ``--limit @FILE``)."""
    return write_private(state_dir() / "retry" / f"{command}.retry", "".join(f"{h}\n" for h in hostnames))


def timestamp() -> str:
    """Return a UTC timestamp usable in file names (sortable)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def operator() -> str:
    """Return who runs the tool, for the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def audit(command: str, where: str, action: str, outcome: str, **details: Any) -> None:
    """Append one change to the audit log (``audit.jsonl`` in the state folder)."""
    entry = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "who": operator(),
        "command": command,
        "where": where,
        "action": action,
        "outcome": outcome,
        **details,
    }
    line = (json.dumps(entry, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
    path = state_dir() / "audit.jsonl"
    with _AUDIT_LOCK:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def write_record(name: str, data: dict[str, Any]) -> Path:
    """Write what a read-only command observed (``<name>.json`` in the state folder) for later runs to read."""
    return write_private(state_dir() / f"{name}.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_record(name: str) -> dict[str, Any] | None:
    """Return what :func:`write_record` wrote, or None if there is none or it cannot be read (never an error)."""
    try:
        data = json.loads((state_dir() / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
