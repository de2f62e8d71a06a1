"""Parse the operator's ``servers.tsv`` and select the K3s nodes to work on.

The file is the operator's single source of truth for dozens of servers of every kind; only the
rows with ``ROLE=k3s`` matter here, but the whole file is checked so that a typo is caught where
it is, with ``file:line``. Values that end up in SSH (hostname, user, address) are validated as
plain names so they can never reach a shell unquoted.

The file is read as editors and spreadsheets write it: UTF-8 (with or without a BOM), else
Windows-1252 (Excel's "Text (Tab delimited)" on Windows; :attr:`Inventory.encoding` says which);
cells quoted with ``"`` may hold tabs, line breaks and doubled quotes (a spreadsheet's export);
line numbers count ``\n``, ``\r\n`` and a lone ``\r`` only, as editors do, so a U+2028 pasted
into a cell does not shift the line an error names.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from keybuzz_fix.errors import InputError, UsageError, why_unreadable

REQUIRED_COLUMNS = ("ENV", "HOSTNAME", "IP_PRIVEE", "USER_SSH", "ROLE", "SUBROLE")
_ABSENT = ("", "-")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_WORD = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_BYTES = 10 * 1024 * 1024
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
FALLBACK_ENCODING = "cp1252"


class Role(str, Enum):
    """Which K3s nodes a command works on."""

    WORKER = "worker"
    MASTER = "master"
    ALL = "all"


@dataclass(frozen=True)
class Host:
    """One server row, as the tool needs it."""

    hostname: str
    private_ip: str
    public_ip: str | None
    user: str
    env: str
    role: str
    subrole: str
    fqdn: str | None = None
    line: int = 0

    @property
    def is_k3s(self) -> bool:
        """Whether the row is a K3s node."""
        return self.role.lower() == "k3s"


@dataclass(frozen=True)
class Inventory:
    """Every row of one servers.tsv file, in file order."""

    path: str
    hosts: tuple[Host, ...]
    encoding: str = "utf-8"  # or FALLBACK_ENCODING: the file was not UTF-8 (a spreadsheet's export)

    def envs(self) -> list[str]:
        """Return the distinct ENV values, in file order."""
        return list(dict.fromkeys(h.env for h in self.hosts))


def read_nodes(path: Path | str, role: Role = Role.WORKER, env: str = "prod", user: str | None = None) -> list[Host]:
    """Return the K3s nodes of ``role`` in ``env`` from a servers.tsv file, with ``--user`` applied."""
    return with_user(select(read_inventory(path), role, env), user)


def read_inventory(path: Path | str) -> Inventory:
    """Read and check a servers.tsv file."""
    p = Path(path)
    shown = str(path)
    try:
        if p.is_dir():
            raise InputError(shown, "is a directory, expected a servers.tsv file")
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise InputError(shown, f"file is {size} bytes, larger than {MAX_BYTES}: not a servers.tsv")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(shown, "no such file") from None
    except PermissionError:
        raise InputError(shown, "permission denied") from None
    except IsADirectoryError:
        raise InputError(shown, "is a directory, expected a servers.tsv file") from None
    return parse_inventory(raw, shown)


def parse_inventory(raw: bytes | str, path: str = "servers.tsv") -> Inventory:
    """Parse the bytes (or text) of a servers.tsv file; errors name ``path:line``."""
    text, encoding = _decode(raw, path)
    header: list[str] | None = None
    header_line = 0
    hosts: list[Host] = []
    seen_name: dict[tuple[str, str], int] = {}
    seen_ip: dict[tuple[str, str], int] = {}
    for number, fields in _records(text, path):
        if header is None:
            header, header_line = _check_header(fields, path, number), number
            continue
        if len(fields) != len(header):
            hint = " (are the columns separated by tabs?)" if len(fields) == 1 else ""
            raise InputError(
                path,
                f"expected {len(header)} tab-separated fields as in the header (line {header_line}), "
                f"found {len(fields)}{hint}",
                number,
            )
        row = dict(zip(header, fields, strict=True))
        host = _host(row, path, number)
        for key, seen, what in (
            ((host.env, host.hostname.lower()), seen_name, "hostname"),
            ((host.env, host.private_ip), seen_ip, "IP_PRIVEE"),
        ):
            if key[1] == "":
                continue
            if key in seen:
                raise InputError(
                    path, f"duplicate {what} {key[1]!r} in ENV {host.env!r} (first on line {seen[key]})", number
                )
            seen[key] = number
        hosts.append(host)
    if header is None:
        raise InputError(path, "no header row (the file is empty or holds only comments)")
    return Inventory(path=path, hosts=tuple(hosts), encoding=encoding)


def _records(text: str, path: str) -> Iterator[tuple[int, list[str]]]:
    """Yield each row's first line number and its stripped cells; comment and blank lines are skipped.

    The cells are split by :mod:`csv` (a tab, ``"`` quoting with ``""`` for a quote): a quoted cell
    may span lines. Lines are counted here, as editors count them, not by :meth:`str.splitlines`.
    """
    state = {"line": 0, "start": 0, "in_row": False, "ran_out": False}

    def lines() -> Iterator[str]:
        for physical in _LINES.findall(text):
            state["line"] += 1
            if "\x00" in physical:
                raise InputError(path, "contains a NUL byte: not a text file", state["line"])
            if not state["in_row"]:
                if not physical.strip() or physical.lstrip().startswith("#"):
                    continue
                state["start"], state["in_row"] = state["line"], True
            yield physical.rstrip("\r\n") + "\n"
        if state["in_row"]:
            state["ran_out"] = True

    reader = csv.reader(lines(), delimiter="\t", quotechar='"', doublequote=True, strict=False)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(path, f"cannot split the row into cells: {e}", state["start"]) from None
        if state["ran_out"]:  # the reader asked for more lines inside a row: a quote left open
            raise InputError(path, 'a quoted cell ("…) is never closed', state["start"])
        state["in_row"] = False
        yield state["start"], [c.strip() for c in cells]


def select(inventory: Inventory, role: Role = Role.WORKER, env: str = "prod") -> list[Host]:
    """Return the K3s nodes of ``env`` with the given role; an empty selection is an error."""
    k3s = [h for h in inventory.hosts if h.env == env and h.is_k3s]
    wanted = [h for h in k3s if role is Role.ALL or h.subrole.lower() == role.value]
    if not wanted:
        envs = ", ".join(inventory.envs()) or "none"
        what = "K3s node" if role is Role.ALL else f"K3s {role.value}"
        raise InputError(
            inventory.path,
            f"no {what} found (ROLE=k3s, SUBROLE={role.value}) for ENV {env!r}; ENV values in the file: {envs}",
        )
    for h in wanted:
        if not h.private_ip:
            raise InputError(inventory.path, f"{h.hostname}: IP_PRIVEE is empty, cannot reach it over SSH", h.line)
        if not h.user:
            raise InputError(inventory.path, f"{h.hostname}: USER_SSH is empty", h.line)
    return wanted


def with_user(hosts: Iterable[Host], user: str | None) -> list[Host]:
    """Apply a ``--user`` override, checked like the file's own values."""
    if user is None:
        return list(hosts)
    if not _USER.match(user):
        raise UsageError(f"--user {user!r} is not a plain user name")
    return [Host(**{**asdict(h), "user": user}) for h in hosts]


def _decode(raw: bytes | str, path: str) -> tuple[str, str]:
    """Return the text and its encoding: UTF-8 first, then Windows-1252 (what Excel saves on Windows)."""
    if isinstance(raw, str):
        return raw.removeprefix("\ufeff"), "utf-8"
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode(FALLBACK_ENCODING), FALLBACK_ENCODING
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(
            path, f"neither UTF-8 nor Windows-1252 text (byte 0x{raw[e.start]:02x}): save it as UTF-8", line
        ) from None


def _check_header(fields: Sequence[str], path: str, number: int) -> list[str]:
    names = [f.upper() for f in fields]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        if len(fields) == 1 and " " in fields[0]:
            raise InputError(path, "header is not tab-separated (found spaces between column names)", number)
        raise InputError(path, f"missing required column(s) {', '.join(missing)} in header", number)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(path, f"column(s) {', '.join(dupes)} appear more than once in header", number)
    if "" in names:
        raise InputError(path, "header has an empty column name", number)
    return names


def _host(row: dict[str, str], path: str, number: int) -> Host:
    def value(column: str) -> str:
        v = row.get(column, "")
        return "" if v in _ABSENT else v

    env, hostname, user = value("ENV"), value("HOSTNAME"), value("USER_SSH")
    role, subrole = value("ROLE"), value("SUBROLE")
    if not env or not _WORD.match(env):
        raise InputError(path, f"ENV {row.get('ENV', '')!r} is not a plain word", number)
    if not hostname:
        raise InputError(path, "HOSTNAME is empty", number)
    if not _HOSTNAME.match(hostname):
        raise InputError(path, f"HOSTNAME {hostname!r} is not a plain host name (letters, digits, '-', '.')", number)
    if user and not _USER.match(user):
        raise InputError(path, f"USER_SSH {user!r} is not a plain user name", number)
    for column, v in (("ROLE", role), ("SUBROLE", subrole)):
        if v and not _WORD.match(v):
            raise InputError(path, f"{column} {v!r} is not a plain word", number)
    fqdn = value("FQDN") or None
    if fqdn and not _HOSTNAME.match(fqdn):
        raise InputError(path, f"FQDN {fqdn!r} is not a valid DNS name", number)
    return Host(
        hostname=hostname,
        private_ip=_ip(value("IP_PRIVEE"), "IP_PRIVEE", path, number),
        public_ip=_ip(value("IP_PUBLIQUE"), "IP_PUBLIQUE", path, number) or None,
        user=user,
        env=env,
        role=role,
        subrole=subrole,
        fqdn=fqdn,
        line=number,
    )


def _ip(v: str, column: str, path: str, number: int) -> str:
    if not v:
        return ""
    try:
        return str(plain_address(v))
    except ValueError:
        raise InputError(path, f"{column} {v!r} is not a valid IP address", number) from None


def plain_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an IP address that may reach a command on a node; a ValueError for anything else.

    An IPv6 zone (``fe80::1%eth0``) is refused: Python accepts it, but it is free text.
    """
    if "%" in value:
        raise ValueError(f"{value!r} is not a plain IP address")
    return ipaddress.ip_address(value)


def plain_network(value: str, *, strict: bool = True) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse a network (CIDR, or one address) that may become a UFW source; an IPv6 zone is refused."""
    if "%" in value:
        raise ValueError(f"{value!r} is not a plain network")
    return ipaddress.ip_network(value, strict=strict)


def limit(hosts: Sequence[Host], pattern: str | None, option: str = "--limit") -> list[Host]:
    """Keep the hosts ``pattern`` names, as Ansible's ``--limit`` does; ``None`` keeps them all.

    Comma-separated terms: a hostname or address, a glob (``k8s-worker-0[1-3]``, ``*-01``), ``@FILE``
    (names one a line: a retry file), and ``!term`` to leave hosts out. Hosts keep the file's order.
    Matching is case-insensitive on hostnames. A term that matches no host is an error: a typo
    must not silently run on nothing, or on everything else.
    """
    if pattern is None:
        return list(hosts)
    include: list[str] = []
    exclude: list[str] = []
    for raw in pattern.split(","):
        term = raw.strip()
        if not term:
            continue
        target = exclude if term.startswith("!") else include
        term = term.removeprefix("!").strip()
        if term.startswith("@"):
            target += _limit_file(term[1:], option)
        elif term:
            target.append(term)
    if not include and not exclude:
        raise UsageError(f"{option} {pattern!r} names no host")
    for term in include + exclude:
        if not any(_matches(h, term) for h in hosts):
            names = ", ".join(h.hostname for h in hosts)
            raise UsageError(f"{option}: {term!r} matches none of the selected hosts ({names})")
    kept = [h for h in hosts if (not include or any(_matches(h, t) for t in include))]
    kept = [h for h in kept if not any(_matches(h, t) for t in exclude)]
    if not kept:
        raise UsageError(f"{option} {pattern!r} leaves no host to work on")
    return kept


def _matches(host: Host, term: str) -> bool:
    import fnmatch

    name = term.lower()
    return any(fnmatch.fnmatchcase(value.lower(), name) for value in (host.hostname, host.private_ip) if value)


def _limit_file(name: str, option: str) -> list[str]:
    path = Path(name).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{option} @{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{option} @{name}: cannot read: {why_unreadable(e)}") from None
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise UsageError(f"{option} @{name}: the file names no host")
    return names
