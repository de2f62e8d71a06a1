"""The lines of ssh_config files as OpenSSH's readconf.c reads them: Host, Match, Include and the options.

One :class:`_Reader` pass goes over the files for one host: a ``Host`` or ``Match`` line opens a
block, ``Include`` reads files in place, and each option keeps the first value obtained (in an
``_Options``). ``Match exec`` commands run here, as ssh runs them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from keybuzz_fix.hosts.sshconfig.hops import DEFAULT_PORT, _Options
from keybuzz_fix.hosts.sshconfig.jump import _parse_jump
from keybuzz_fix.hosts.sshconfig.misc import (
    _WS,
    SshConfigError,
    _argv_split,
    _strdelim,
    a2port,
    lower,
    match_hostname,
    match_pattern,
    match_pattern_list,
)
from keybuzz_fix.hosts.sshconfig.tokens import Local, _percent, _tilde

_MAX_INCLUDE_DEPTH = 16
_MAX_IDENTITY_FILES = 100
_MAX_HOSTS_FILES = 16
_EXEC_TIMEOUT = 30.0
_FLAG = {"true": True, "false": False, "yes": True, "no": False}
_STRICT = {
    "true": "yes",
    "false": "no",
    "yes": "yes",
    "no": "no",
    "ask": "ask",
    "off": "no",
    "accept-new": "accept-new",
}
_CANONICALIZE = {"true": "yes", "false": "no", "yes": "yes", "no": "no", "always": "always"}
_USERCONF, _NEVERMATCH, _FINAL = 1, 2, 4


class _Files(Protocol):
    """What a pass reads through (an :class:`~.config.SshConfig`): the files, who runs ssh, Match exec."""

    local: Local

    def lines(self, path: str) -> list[str] | OSError: ...

    def run_exec(self, command: str) -> int: ...


class _Reader:
    """One pass over the files for one host (OpenSSH's read_config_file_depth and process_config_line)."""

    def __init__(
        self, cfg: _Files, opts: _Options, host: str, original: str, final: bool, want_final: list[bool] | None
    ) -> None:
        self.cfg, self.opts, self.host, self.original = cfg, opts, host, original
        self.final, self.want_final = final, want_final

    def read(self, path: str, flags: int, active: list[bool], depth: int) -> bool:
        if depth > _MAX_INCLUDE_DEPTH:
            raise SshConfigError(path, "too many recursive configuration includes")
        lines = self.cfg.lines(path)
        if isinstance(lines, FileNotFoundError):  # an Include glob that matched a file gone since
            return False
        if isinstance(lines, OSError):
            raise SshConfigError(path, f"cannot read: {lines.strerror or lines.__class__.__name__}")
        for number, line in enumerate(lines, 1):
            self._line(line, path, number, flags, active, depth)
        return True

    def _line(self, line: str, path: str, number: int, flags: int, active: list[bool], depth: int) -> None:
        where = f"{path}:{number}"
        line = line.split("\0", 1)[0]
        end = len(line)
        while end > 1 and line[end - 1] in _WS + "\f":
            end -= 1
        line = line[:end]
        if not line:
            return
        keyword, rest = _strdelim(line)
        if keyword == "":
            keyword, rest = _strdelim(rest)
        if not keyword or keyword[0] in "\n#":
            return
        keyword = lower(keyword)
        if rest is not None:
            rest = rest.lstrip(_WS)
        if not rest:
            raise SshConfigError(path, f'no argument after keyword "{keyword}"', number)
        args = _argv_split(rest)
        if args is None:
            raise SshConfigError(path, "invalid quotes", number)
        handler = _HANDLERS.get(keyword)
        if handler is not None:
            handler(self, _Line(keyword, args, rest, path, number, where, flags, active, depth))


@dataclass
class _Line:
    keyword: str
    args: list[str]
    rest: str  # the raw text after the keyword, for ProxyCommand, ProxyJump and Match
    path: str
    number: int
    where: str
    flags: int
    active: list[bool]
    depth: int

    def fail(self, problem: str) -> SshConfigError:
        return SshConfigError(self.path, problem, self.number)

    def one(self) -> str:
        """The single argument of a keyword that takes one."""
        if not self.args or self.args[0] == "":
            raise self.fail(f"missing argument to {self.keyword}")
        if len(self.args) > 1:
            raise self.fail(f"keyword {self.keyword} extra arguments at end of line")
        return self.args[0]


def _host(r: _Reader, ln: _Line) -> None:
    ln.active[0] = False
    for arg in ln.args:
        if arg == "":
            raise ln.fail(f"keyword {ln.keyword} empty argument")
        if ln.flags & _NEVERMATCH:
            break
        negated = arg.startswith("!")
        if match_pattern(r.host, arg[1:] if negated else arg):
            if negated:
                ln.active[0] = False
                break
            ln.active[0] = True


def _match(r: _Reader, ln: _Line) -> None:
    value = _match_line(r, ln)
    ln.active[0] = False if ln.flags & _NEVERMATCH else value


def _match_line(r: _Reader, ln: _Line) -> bool:
    """OpenSSH's match_cfg_line: every criterion must hold (``all`` alone, or after canonical/final)."""
    opts = r.opts
    port = opts.port if opts.port is not None else DEFAULT_PORT
    ruser = opts.user if opts.user is not None else r.cfg.local.user
    if r.final:
        host = opts.hostname or r.host
    elif opts.hostname is not None:
        host = _percent(opts.hostname, {"h": r.host}, ln.where)
    else:
        host = r.host
    rest: str | None = ln.rest
    result, attributes = True, 0
    while True:
        attrib, rest = _strdelim(rest)
        if attrib is None or attrib == "":
            if rest:
                raise ln.fail(f"keyword {ln.keyword} extra arguments at end of line")
            break
        if attrib.startswith("#"):
            break
        negate = attrib.startswith("!")
        name = lower(attrib[1:] if negate else attrib)
        if name == "all":
            arg, rest = _strdelim(rest)
            if attributes > 1 or (arg is not None and arg != "" and not arg.startswith("#")):
                raise ln.fail(f"'{attrib}' cannot be combined with other Match attributes")
            if result:
                result = not negate
            return result
        attributes += 1
        if name in ("canonical", "final"):
            if name == "final" and r.want_final is not None:
                r.want_final[0] = True
            if r.final == negate:
                result = False
            continue
        arg, rest = _strdelim(rest)
        if arg is None or arg == "" or arg.startswith("#"):
            raise ln.fail(f"missing Match criteria for {attrib}")
        if name == "host":
            ok = match_hostname(host, arg) == 1
        elif name == "originalhost":
            ok = match_hostname(r.original, arg) == 1
        elif name == "user":
            ok = match_pattern_list(ruser, arg, False) == 1
        elif name == "localuser":
            ok = match_pattern_list(r.cfg.local.user, arg, False) == 1
        elif name == "exec":
            if not result:
                continue
            local = r.cfg.local
            command = _percent(
                arg,
                {
                    "C": hashlib.sha1(f"{local.this_host}{host}{port}{ruser}".encode()).hexdigest(),
                    "L": local.this_host.split(".")[0],
                    "d": local.home,
                    "h": host,
                    "k": opts.host_key_alias or host,
                    "l": local.this_host,
                    "n": r.original,
                    "p": str(port),
                    "r": ruser,
                    "u": local.user,
                    "i": str(local.uid),
                },
                ln.where,
            )
            ok = r.cfg.run_exec(command) == 0
        else:
            raise ln.fail(f"unsupported Match attribute {attrib}")
        if ok == negate:
            result = False
    if attributes == 0:
        raise ln.fail("one or more attributes required for Match")
    return result


def _include(r: _Reader, ln: _Line) -> None:
    for arg in ln.args:
        if arg == "":
            raise ln.fail(f"keyword {ln.keyword} empty argument")
        if arg.startswith("~") and not ln.flags & _USERCONF:
            raise ln.fail(f"bad include path {arg}")
        if not arg.startswith("/") and not arg.startswith("~"):
            arg = ("~/.ssh/" if ln.flags & _USERCONF else "/etc/ssh/") + arg
        if arg.startswith("~"):
            arg = _tilde(arg, r.cfg.local, ln.where)
        was_active = ln.active[0]
        for path in sorted(glob.glob(arg)):
            flags = ln.flags | (0 if was_active else _NEVERMATCH)
            r.read(path, flags, ln.active, ln.depth + 1)
            ln.active[0] = was_active


def _string(option: str) -> Callable[[_Reader, _Line], None]:
    def handle(r: _Reader, ln: _Line) -> None:
        value = ln.one()
        if ln.active[0]:
            r.opts.set(option, value, ln.where, ln.keyword)

    return handle


def _flag(option: str, table: Mapping[str, object]) -> Callable[[_Reader, _Line], None]:
    def handle(r: _Reader, ln: _Line) -> None:
        value = table.get(lower(ln.args[0])) if ln.args else None
        if value is None:
            raise ln.fail(f'unsupported option "{ln.args[0] if ln.args else ""}"')
        if len(ln.args) > 1:
            raise ln.fail(f"keyword {ln.keyword} extra arguments at end of line")
        if ln.active[0]:
            r.opts.set(option, value, ln.where, ln.keyword)

    return handle


def _port(r: _Reader, ln: _Line) -> None:
    value = a2port(ln.one())
    if value <= 0:
        raise ln.fail(f"bad port '{ln.args[0]}'")
    if ln.active[0]:
        r.opts.set("port", value, ln.where, ln.keyword)


def _identity_file(r: _Reader, ln: _Line) -> None:
    value = ln.one()
    if not ln.active[0]:
        return
    files = r.opts.identity_files
    if len(files) >= _MAX_IDENTITY_FILES:
        raise ln.fail(f"too many identity files specified (max {_MAX_IDENTITY_FILES})")
    entry = (value, bool(ln.flags & _USERCONF))
    if entry not in files:
        files.append(entry)
        r.opts.origins.setdefault("identityfile", ln.where)


def _hosts_files(option: str) -> Callable[[_Reader, _Line], None]:
    def handle(r: _Reader, ln: _Line) -> None:
        empty = getattr(r.opts, option) is None
        values: list[str] = []
        for i, arg in enumerate(ln.args):
            if arg == "":
                raise ln.fail(f"keyword {ln.keyword} empty argument")
            if lower(arg) == "none" and (i > 0 or len(ln.args) > 1):
                raise ln.fail(f'keyword {ln.keyword} "none" argument must appear alone')
            values.append(arg)
        if ln.active[0] and empty and values:
            if len(values) > _MAX_HOSTS_FILES:
                raise ln.fail(f"too many {ln.keyword} entries")
            r.opts.set(option, values, ln.where, ln.keyword)

    return handle


def _proxy_command(r: _Reader, ln: _Line) -> None:
    value = ln.rest.lstrip(_WS + "=")
    if ln.active[0]:
        r.opts.set("proxy_command", value, ln.where, ln.keyword)


def _proxy_jump(r: _Reader, ln: _Line) -> None:
    value = ln.rest.lstrip(_WS + "=")
    if not _parse_jump(value, r.opts, ln.active[0], ln.where):
        raise ln.fail(f'invalid ProxyJump "{value}"')


def _ignored(r: _Reader, ln: _Line) -> None:
    return None


_HANDLERS: dict[str, Callable[[_Reader, _Line], None]] = {
    "host": _host,
    "match": _match,
    "include": _include,
    "hostname": _string("hostname"),
    "user": _string("user"),
    "hostkeyalias": _string("host_key_alias"),
    "port": _port,
    "identityfile": _identity_file,
    "identitiesonly": _flag("identities_only", _FLAG),
    "hashknownhosts": _flag("hash_known_hosts", _FLAG),
    "stricthostkeychecking": _flag("strict", _STRICT),
    "canonicalizehostname": _flag("canonicalize", _CANONICALIZE),
    "userknownhostsfile": _hosts_files("user_known_hosts"),
    "globalknownhostsfile": _hosts_files("global_known_hosts"),
    "proxycommand": _proxy_command,
    "proxyjump": _proxy_jump,
}


def _run_in_shell(command: str) -> int:
    """Run a ``Match exec`` command as ssh does: ``$SHELL -c``, no input, output discarded."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    try:
        done = subprocess.run(
            [shell, "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            timeout=_EXEC_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SshConfigError("Match exec", f"{command!r} could not run: {e}") from None
    return done.returncode if done.returncode >= 0 else 1
