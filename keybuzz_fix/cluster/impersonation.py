"""Impersonation, as kubectl sends it: the ``Impersonate-*`` headers of ``--as``/``--as-group`` and the user entry.

``--as`` and ``--as-group`` win over the kubeconfig user entry's ``as`` and ``as-groups``; its ``as-uid``
and ``as-user-extra`` come along. Names are checked here, once, before any request carries them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from keybuzz_fix.errors import KubeconfigError, UsageError
from keybuzz_fix.hints import hint


def impersonation_headers(
    user: Mapping[str, Any], as_user: str | None, as_groups: tuple[str, ...], *, source: str
) -> tuple[tuple[str, str], ...]:
    """The Impersonate-* headers: ``--as``/``--as-group`` over the user entry's ``as`` and ``as-groups``.

    The entry's ``as-uid`` and ``as-user-extra`` come along, as with kubectl.
    """
    name = as_user or _text(user.get("as"))
    groups = list(as_groups) or [g for g in user.get("as-groups") or [] if isinstance(g, str) and g]
    uid = _text(user.get("as-uid"))
    extra = user.get("as-user-extra") or {}
    if not isinstance(extra, dict):
        raise KubeconfigError(f"{source}: as-user-extra must map names to lists of values")
    if not name:
        if groups or uid or extra:
            raise UsageError(
                "impersonating groups, a uid or extras needs a user to impersonate"
                + hint("--as", ": pass --as USER", ": set as in the kubeconfig")
            )
        return ()
    headers = [("Impersonate-User", name), *(("Impersonate-Group", g) for g in groups)]
    if uid:
        headers.append(("Impersonate-Uid", uid))
    for key, values in extra.items():
        for value in values if isinstance(values, list) else [values]:
            headers.append((f"Impersonate-Extra-{quote(str(key), safe='')}", str(value)))
    for header, value in headers:
        if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise KubeconfigError(f"{source}: {header} {value!r} is not a usable name")
    return tuple(headers)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
