"""The expansions of ssh_config values: ``%`` tokens, ``~`` and ``${VAR}`` (OpenSSH's percent_expand, tilde).

:class:`Local` holds what the tokens of the running side stand for (``~``, ``%d``, ``%u``, ``%i``,
``%l``, ``%L``); the host's side (``%h``, ``%p``, ``%r``…) is filled in by :mod:`.hops`.
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from keybuzz_fix.hosts.sshconfig.misc import SshConfigError


@dataclass(frozen=True)
class Local:
    """Who and where ssh runs: the values of ``~``, ``%d``, ``%u``, ``%i``, ``%l``, ``%L``."""

    user: str
    home: str
    uid: int
    this_host: str

    @classmethod
    def current(cls) -> Local:
        """Return this process's user (HOME is ``~``, as everywhere in keybuzz-fix) and host name."""
        uid = os.getuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = os.environ.get("USER") or str(uid)
        return cls(user, str(Path.home()), uid, socket.gethostname())


def _percent(text: str, tokens: Mapping[str, str], where: str, *, dollar: bool = False) -> str:
    """Expand ``%x`` tokens (``%%`` is ``%``), and ``${VAR}`` when ``dollar``; an unknown token is an error."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if dollar and text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise SshConfigError(where, f"environment variable '{text[i + 2 :]}' missing closing '}}'")
            name = text[i + 2 : end]
            if not name:
                raise SshConfigError(where, "zero-length environment variable")
            value = os.environ.get(name)
            if value is None:
                raise SshConfigError(where, f"environment variable ${{{name}}} has no value")
            out.append(value)
            i = end + 1
            continue
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise SshConfigError(where, f"invalid format in {text!r} (a % at the end)")
        key = text[i + 1]
        if key == "%":
            out.append("%")
        elif key in tokens:
            out.append(tokens[key])
        else:
            raise SshConfigError(where, f"unknown key %{key} in {text!r}")
        i += 2
    return "".join(out)


def _tilde(path: str, local: Local, where: str) -> str:
    """Expand a leading ``~`` or ``~user`` (ssh's tilde_expand_filename)."""
    if not path.startswith("~"):
        return path
    rest = path[1:]
    user, sep, tail = rest.partition("/")
    if user:
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError:
            raise SshConfigError(where, f"no such user {user} in {path!r}") from None
    else:
        home = local.home
    tail = tail.lstrip("/")
    return home + ("" if home.endswith("/") else "/") + tail


def _expand_path(value: str, tokens: Mapping[str, str], local: Local, where: str) -> str:
    return _percent(_tilde(value, local, where), tokens, where, dollar=True)
