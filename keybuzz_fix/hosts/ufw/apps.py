"""UFW's application profiles: the ini files of ``/etc/ufw/applications.d`` (pure code).

A rule may name a profile (``ufw allow OpenSSH``, ``… to any app 'WWW Full'``); the profile's
``ports=`` line, a ``|``-list of ``ports[/proto]`` items, says what it stands for. This module reads
the files as ufw 0.36's ``src/applications.py`` does, so the verdict model can resolve rules that
name only a profile (those of ``ufw show added`` and wanted ones; rules read from user.rules carry
their ports in the tuple).
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_BACKUP_SUFFIXES = (".dpkg-new", ".dpkg-old", ".dpkg-dist", ".rpmnew", ".rpmsave", "~")
_PROFILE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9 _\-\.+]*$")
_PORT_ITEM = re.compile(r"^\d+(:\d+)?(,\d+(:\d+)?)*$")


@dataclass(frozen=True)
class AppProfile:
    """One application profile: ``entries`` are its ``ports=`` items as ``(proto or None for both, port spec)``."""

    name: str
    entries: tuple[tuple[str | None, str], ...]


class UnknownProfile(ValueError):
    """A rule names an application profile that the given applications.d files do not define."""

    def __init__(self, name: str) -> None:
        super().__init__(f"application profile {name!r} is not defined in the applications.d files given")
        self.name = name


def parse_app_profiles(files: Mapping[str, str]) -> dict[str, AppProfile]:
    """Parse the files of ``/etc/ufw/applications.d`` (file name → text) into profiles by name.

    As ``applications.get_profiles``: files in name order, hidden and package-backup files skipped,
    a file that does not parse skipped, a later profile of the same name wins; a profile needs
    ``title``, ``description`` and valid ``ports``. (ufw also skips a profile named like a service of
    /etc/services and accepts service names as ports; that file is not read here.)
    """
    profiles: dict[str, AppProfile] = {}
    for fname in sorted(files):
        if fname.startswith(".") or fname.endswith(_BACKUP_SUFFIXES):
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read_string(files[fname], source=fname)
        except configparser.Error:
            continue
        for name in parser.sections():
            if len(name) > 64 or not _PROFILE_NAME.match(name) or name == "all" or name.isdigit():
                continue
            values = dict(parser.items(name))
            if any(len(k) > 64 or len(v) > 1024 for k, v in values.items()):
                continue
            if not all(values.get(k) for k in ("title", "description", "ports")):
                continue
            try:
                entries = tuple(_entry(p) for p in values["ports"].split("|"))
            except ValueError:
                continue
            profiles[name] = AppProfile(name, entries)
    return profiles


def find_profile(profiles: Iterable[AppProfile], name: str) -> AppProfile:
    """Find a profile as ufw's ``find_application_name`` does: the exact name, else the one equal but for case."""
    known = list(profiles)
    exact = [p for p in known if p.name == name]
    if exact:
        return exact[-1]
    folded = [p for p in known if p.name.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise UnknownProfile(name)


def _entry(item: str) -> tuple[str | None, str]:
    """Check one ``ports=`` item as ``applications.verify_profile`` does."""
    port, _, proto = item.strip().partition("/")
    if proto not in ("", "tcp", "udp"):
        raise ValueError(item)  # portless or unknown protocols carry no ports
    if not _PORT_ITEM.match(port) or port.count(",") + port.count(":") > 14:
        raise ValueError(item)
    if not proto and (":" in port or "," in port):
        raise ValueError(item)  # a range or list needs tcp or udp
    for part in port.split(","):
        lo, _, hi = part.partition(":")
        if not 1 <= int(lo) <= int(hi or lo) <= 65535 or (hi and int(lo) == int(hi)):
            raise ValueError(item)
    return (proto or None, port)
