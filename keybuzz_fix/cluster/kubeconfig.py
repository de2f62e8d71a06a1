"""Reading kubeconfig files as kubectl does, before the kubernetes client loads them.

Which files (``--kubeconfig``, ``$KUBECONFIG`` merged, ``~/.kube/config``), which context (``--context``
or current-context, checked against the contexts the files have) with its namespace and user entry, and
every credential string under ``users`` (never to be echoed in an error). Plain YAML reading: the
kubernetes package is :mod:`keybuzz_fix.cluster.connect`'s.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

from keybuzz_fix.errors import KubeconfigError


def kubeconfig_paths(kubeconfig: Path | None) -> builtins.list[Path]:
    """The kubeconfig files kubectl would read (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``); [] if none."""
    if kubeconfig is not None:
        path = kubeconfig.expanduser()
        if not path.is_file():
            raise KubeconfigError(f"--kubeconfig {kubeconfig}: no such file")
        return [path]
    env = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p] or [Path("~/.kube/config").expanduser()]
    return [p for p in paths if p.is_file()]


def named_context(paths: builtins.list[Path], context: str | None) -> dict[str, Any]:
    """The context in use (``--context`` or current-context; files merged as kubectl merges them).

    Returns its namespace and its user entry.
    """
    docs = [_yaml(p) for p in paths]
    name = context or next((d.get("current-context") for d in docs if d.get("current-context")), None)

    def entry(kind: str, wanted: Any) -> Any:
        for doc in docs:
            for item in doc.get(kind) or []:
                if isinstance(item, dict) and item.get("name") == wanted:
                    return item.get(kind[:-1])
        return None

    ctx = entry("contexts", name) if name else None
    if not isinstance(ctx, dict):
        return {}
    namespace = ctx.get("namespace")
    return {
        "namespace": namespace if isinstance(namespace, str) and namespace else None,
        "user_entry": entry("users", ctx.get("user")),
    }


def check_context(paths: builtins.list[Path], context: str | None) -> str | None:
    """Return the context the run uses; refuse a ``--context`` none of the files has, naming them and their contexts."""
    docs = [_yaml(p) for p in paths]
    if context is None:
        return next((d["current-context"] for d in docs if isinstance(d.get("current-context"), str)), None)
    names: builtins.list[str] = []
    for doc in docs:
        entries = doc.get("contexts")
        for item in entries if isinstance(entries, list) else []:
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name not in names:
                names.append(name)
    if context not in names and any(docs):  # an unreadable file: the client's own reading says what is wrong
        where = os.pathsep.join(map(str, paths))
        raise KubeconfigError(f"no context {context} in {where}; contexts: {', '.join(names) or '(none)'}")
    return context


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def kubeconfig_secrets(paths: builtins.list[Path]) -> builtins.list[str]:
    """Return every string under the ``users`` entries of the kubeconfig files: tokens, passwords, keys."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 4:
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, builtins.list):
            for v in value:
                walk(v)

    for path in paths:
        users = _yaml(path).get("users")
        for entry in users if isinstance(users, builtins.list) else []:
            walk(entry.get("user") if isinstance(entry, dict) else entry)
    return sorted(found, key=len, reverse=True)
