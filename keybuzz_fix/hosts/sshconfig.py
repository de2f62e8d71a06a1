"""ssh_config as OpenSSH reads it: where ``ssh NAME`` connects, as whom, with which keys, through which hops.

A model of OpenSSH's readconf.c (9.x) for the options keybuzz-fix uses, proven against the real
``ssh -G`` by tests/property/test_ssh_config_model.py. As ``ssh`` does:

- the files are the user's ``~/.ssh/config`` then ``/etc/ssh/ssh_config``, or only the one given
  with ``--ssh-config`` (``ssh -F``; ``none`` reads none);
- a ``Host`` line (``*``/``?`` patterns, ``!`` negations, matched on the name as typed) or a
  ``Match`` line (``host``, ``originalhost``, ``user``, ``localuser``, ``exec``, ``all``,
  ``canonical``, ``final``) opens a block that applies when it matches; ``Include`` reads files in
  place (relative paths under ``~/.ssh``, or ``/etc/ssh`` from the system file; globs sorted);
- for each option the first value obtained wins (IdentityFile accumulates); ``Match final`` or
  CanonicalizeHostname asks for a second pass with the resolved HostName;
- HostName expands ``%h``; UserKnownHostsFile and IdentityFile expand ``~``, ``${VAR}`` and
  ``%C %d %h %i %k %L %l %n %p %r %u``; ProxyCommand ``%h %k %n %p %r``.

Options keybuzz-fix does not use are read (quotes checked) and otherwise ignored, unknown keywords
too (a newer OpenSSH's options must not stop the tool). Not modelled: DNS canonicalisation with
CanonicalDomains (the name is kept, as with CanonicalizeFallbackLocal yes).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from keybuzz_fix.errors import InputError
from keybuzz_fix.hints import hint

USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = Path("/etc/ssh/ssh_config")
DEFAULT_PORT = 22
MAX_JUMPS = 8
_WS = " \t\r\n"
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
_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower(text: str) -> str:
    """Lowercase ASCII letters only, as OpenSSH's ``lowercase()`` does."""
    return text.translate(_UPPER)


class SshConfigError(InputError):
    """An ssh_config line that OpenSSH refuses too (``path:line`` and the problem)."""


@dataclass(frozen=True)
class Jump:
    """A ProxyJump value: the last hop parsed, the hops before it as written."""

    host: str
    user: str | None = None
    port: int | None = None
    extra: str | None = None  # "a,user@b:2222": the hops to reach ``host`` through, first first

    def spec(self) -> str:
        """Return the value as ``ssh -G`` prints it."""
        numeric = ":" in self.host or all(c in "1234567890." for c in self.host)
        host = f"[{self.host}]" if numeric else self.host
        return (
            (f"{self.extra}," if self.extra else "")
            + (f"{self.user}@" if self.user else "")
            + host
            + (f":{self.port}" if self.port else "")
        )


@dataclass(frozen=True)
class Found:
    """What the config files say about one name, before defaults: ``None`` where they say nothing."""

    name: str  # the name looked up, as typed (ssh's host argument)
    hostname: str  # where it resolves to: HostName (expanded, lowercased) or the name itself
    hostname_set: bool = False
    user: str | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = ()  # as written
    identities_only: bool | None = None
    proxy_command: str | None = None  # as written; None also for ProxyCommand none
    jump: Jump | None = None
    proxy_set: bool = False  # ProxyCommand or ProxyJump was obtained (none included)
    user_known_hosts: tuple[str, ...] | None = None  # as written; () for none
    global_known_hosts: tuple[str, ...] | None = None
    strict_host_key_checking: str | None = None  # yes, no, ask, accept-new
    host_key_alias: str | None = None
    hash_known_hosts: bool | None = None
    origins: Mapping[str, str] = field(default_factory=dict)  # option -> "file:line" that set it

    def merged(self, other: Found) -> Found:
        """Return these values, completed by ``other``'s where these are unset (first obtained wins)."""
        values = {}
        for name in (
            "user",
            "port",
            "identities_only",
            "proxy_command",
            "jump",
            "user_known_hosts",
            "global_known_hosts",
            "strict_host_key_checking",
            "host_key_alias",
            "hash_known_hosts",
        ):
            if getattr(self, name) is None and getattr(other, name) is not None:
                values[name] = getattr(other, name)
        if not self.identity_files:
            values["identity_files"] = other.identity_files
        if not self.hostname_set and other.hostname_set:
            values.update(hostname=other.hostname, hostname_set=True)
        if self.proxy_set:  # one proxy (or none), whichever came first
            values.pop("proxy_command", None)
            values.pop("jump", None)
        elif other.proxy_set:
            values["proxy_set"] = True
        return replace(self, **values, origins={**other.origins, **self.origins})


@dataclass(frozen=True)
class Hop:
    """How to reach one SSH server: the resolved options, defaults filled, as ``ssh -G`` prints them."""

    name: str  # as typed (HOSTNAME, a ProxyJump host)
    hostname: str  # the address to connect to
    port: int
    user: str
    identity_files: tuple[str, ...]  # as written; empty: the default keys
    identities_only: bool
    proxy_command: str | None  # as written
    user_known_hosts: tuple[str, ...]  # expanded
    global_known_hosts: tuple[str, ...]
    strict_host_key_checking: str
    host_key_alias: str | None
    hash_known_hosts: bool
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    tokens: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    home: str = field(default="", compare=False)

    def where(self, option: str) -> str:
        """Return the ``file:line`` that set an option (the keyword, lowercase), or the keyword."""
        return self.origins.get(option, option)

    def identity_paths(self) -> tuple[str, ...]:
        """The IdentityFile paths, ``~``, ``${VAR}`` and tokens expanded (as ssh does when it loads them)."""
        local = Local("", self.home, 0, "")
        return tuple(
            _expand_path(v, self.tokens, local, self.where("identityfile"))
            for v in self.identity_files
            if lower(v) != "none"
        )

    def proxy_shell_command(self) -> str | None:
        """The ProxyCommand to give the shell: ``exec`` it, ``%h %k %n %p %r`` expanded."""
        if self.proxy_command is None:
            return None
        if self.proxy_command.strip() == "-":
            raise SshConfigError(self.where("proxycommand"), "ProxyCommand - is not supported")
        keys = {k: self.tokens[k] for k in "hknpr"}
        return _percent("exec " + self.proxy_command, keys, self.where("proxycommand"))

    @property
    def known_hosts_name(self) -> str:
        """The name its key is looked up under in known_hosts: HostKeyAlias, or ``host`` / ``[host]:port``."""
        if self.host_key_alias is not None:
            return self.host_key_alias
        return self.hostname if self.port == DEFAULT_PORT else f"[{self.hostname}]:{self.port}"

    @property
    def certificate_name(self) -> str:
        """The name a host certificate must list as a principal: HostKeyAlias, or the host name."""
        return self.host_key_alias or self.hostname

    @property
    def address(self) -> str:
        """``hostname:port`` for messages."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Route:
    """The hops to a host: ProxyJump hosts first (the first may use a ProxyCommand), the host last."""

    hops: tuple[Hop, ...]

    @property
    def target(self) -> Hop:
        """The host itself."""
        return self.hops[-1]

    @property
    def jumps(self) -> tuple[Hop, ...]:
        """The ProxyJump hosts, in the order they are connected."""
        return self.hops[:-1]

    @property
    def proxied(self) -> bool:
        """Whether the host is reached through anything but a direct TCP connection."""
        return bool(self.jumps) or self.hops[0].proxy_command is not None


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


class SshConfig:
    """The ssh_config files of one run, each read once; :meth:`found` and :meth:`route` answer per host."""

    def __init__(
        self,
        files: Sequence[tuple[Path, bool]],
        *,
        local: Local | None = None,
        required: Path | None = None,
        run_exec: Callable[[str], int] | None = None,
    ) -> None:
        """``files``: (path, is a user file) in reading order; ``required``: the one that must exist (-F)."""
        self.files = tuple(files)
        self.local = local or Local.current()
        self.required = required
        self._run_exec = run_exec or _run_in_shell
        self._texts: dict[str, list[str] | OSError] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_files(cls, user_file: Path | None, system_file: Path | None, *, explicit: bool = False) -> SshConfig:
        """The files ``ssh`` reads: ``user_file`` then ``system_file``; with ``explicit`` (-F) only ``user_file``."""
        if explicit:
            return cls([(user_file, True)] if user_file is not None else [], required=user_file)
        files = [(p, user) for p, user in ((user_file, True), (system_file, False)) if p is not None]
        return cls(files)

    # -- answers --------------------------------------------------------------------------------

    def check(self) -> None:
        """Read every file through (Includes too) for a name nothing matches: a bad line is an error now.

        No ``Match exec`` command runs for it.
        """
        SshConfig(self.files, local=self.local, required=self.required, run_exec=lambda _: 1).found(
            "keybuzz-fix-config-check.invalid"
        )

    def found(self, name: str, *, user: str | None = None, port: int | None = None, jump: str | None = None) -> Found:
        """Resolve ``name`` as ``ssh [-l user] [-p port] [-J jump] name`` would, before defaults."""
        opts = _Options()
        if user is not None:
            opts.set("user", user, "command line", "user")
        if port is not None:
            opts.set("port", port, "command line", "port")
        if jump is not None and not _parse_jump(jump, opts, True, "command line"):
            raise SshConfigError("ProxyJump", f"invalid ProxyJump {jump!r}")
        want_final = [False]
        self._pass(opts, name, name, final=False, want_final=want_final)
        host = name
        if opts.hostname is not None:
            host = _percent(opts.hostname, {"h": name}, opts.origins.get("hostname", "HostName"))
            opts.hostname = host
        was_addr = _is_addr(host)
        if not was_addr:
            host = lower(host)
        if opts.canonicalize not in (None, "no") or was_addr:
            host = _canonical_address(host) or host
        if opts.canonicalize not in (None, "no"):
            want_final[0] = True
        hostname_set = opts.hostname is not None
        if want_final[0]:
            opts.hostname = host
            self._pass(opts, host, name, final=True, want_final=None)
        return opts.found(name, host, hostname_set)

    def hop(
        self,
        found: Found,
        *,
        default_user: str | None = None,
        default_hostname: str | None = None,
        default_port: int = DEFAULT_PORT,
    ) -> Hop:
        """Fill the defaults (``ssh``'s, or servers.tsv's) and expand the tokens of ``found``."""
        local = self.local
        hostname = found.hostname if found.hostname_set or default_hostname is None else default_hostname
        port = found.port if found.port is not None else default_port
        user = found.user if found.user is not None else (default_user or local.user)
        alias = lower(found.host_key_alias) if found.host_key_alias is not None else None
        tokens = {
            "C": hashlib.sha1(f"{local.this_host}{hostname}{port}{user}".encode()).hexdigest(),
            "L": local.this_host.split(".")[0],
            "i": str(local.uid),
            "k": alias or found.name,
            "l": local.this_host,
            "n": found.name,
            "p": str(port),
            "d": local.home,
            "h": hostname,
            "r": user,
            "u": local.user,
        }
        where = found.origins

        def paths(values: tuple[str, ...], option: str) -> tuple[str, ...]:
            if values and lower(values[0]) == "none":
                return ()
            return tuple(_expand_path(v, tokens, local, where.get(option, option)) for v in values)

        if found.jump is not None and found.jump.host == hostname and found.jump.user in (None, user):
            if (found.jump.port or DEFAULT_PORT) == port:
                raise SshConfigError(where.get("proxyjump", "ProxyJump"), f"jumphost loop via {found.jump.host}")
        user_known = found.user_known_hosts
        if user_known is None:
            user_known = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
        global_known = found.global_known_hosts
        if global_known is None:
            global_known = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
        return Hop(
            name=found.name,
            hostname=hostname,
            port=port,
            user=user,
            identity_files=found.identity_files,
            identities_only=bool(found.identities_only),
            proxy_command=found.proxy_command,
            user_known_hosts=paths(user_known, "userknownhostsfile"),
            global_known_hosts=tuple(v for v in global_known if lower(v) != "none"),
            strict_host_key_checking=found.strict_host_key_checking or "ask",
            host_key_alias=alias,
            hash_known_hosts=bool(found.hash_known_hosts),
            origins=found.origins,
            tokens=tokens,
            home=local.home,
        )

    def route(
        self,
        name: str,
        *,
        also: str | None = None,
        user: str | None = None,
        default_user: str | None = None,
        default_hostname: str | None = None,
    ) -> Route:
        """The hops to ``name``: its options (then ``also``'s, e.g. its IP), then its ProxyJump chain.

        ``user`` is a command-line user (it wins over User); ``default_user`` and
        ``default_hostname`` apply where the config says nothing (servers.tsv's USER_SSH and IP).
        """
        found = self.found(name, user=user)
        if also is not None and also != name:
            found = found.merged(self.found(also, user=user))
        target = self.hop(found, default_user=default_user, default_hostname=default_hostname)
        if found.jump is None:
            return Route((target,))
        return Route((*self._jump_chain(found.jump, depth=1), target))

    def _jump_chain(self, jump: Jump, depth: int) -> tuple[Hop, ...]:
        """The hops of ``ssh -l USER -p PORT -J EXTRA HOST``: HOST's own chain first."""
        if depth > MAX_JUMPS:
            raise SshConfigError("ProxyJump", f"more than {MAX_JUMPS} jump hosts (a loop?) at {jump.host}")
        found = self.found(jump.host, user=jump.user, port=jump.port, jump=jump.extra)
        hop = self.hop(found)
        if found.jump is None:
            return (hop,)
        return (*self._jump_chain(found.jump, depth + 1), hop)

    # -- reading --------------------------------------------------------------------------------

    def _pass(self, opts: _Options, host: str, original: str, *, final: bool, want_final: list[bool] | None) -> None:
        reader = _Reader(self, opts, host, original, final, want_final)
        for path, user_file in self.files:
            flags = (_USERCONF if user_file else 0) | (_FINAL if final else 0)
            if isinstance(self.lines(str(path)), OSError):  # ssh reads what it can open, and says nothing
                if path == self.required:
                    raise SshConfigError(
                        str(path), "cannot open the ssh_config file" + hint("--ssh-config", " (--ssh-config)")
                    )
                continue
            reader.read(str(path), flags, [True], 0)

    def lines(self, path: str) -> list[str] | OSError:
        """Return a file's lines (read once per run), or why it cannot be opened."""
        with self._lock:
            if path in self._texts:
                return self._texts[path]
        text: list[str] | OSError
        try:
            raw = Path(path).read_bytes()
        except IsADirectoryError:
            text = []
        except OSError as e:
            text = e
        else:
            text = raw.decode("utf-8", "surrogateescape").split("\n")
        with self._lock:
            self._texts[path] = text
        return text

    def run_exec(self, command: str) -> int:
        """Run a ``Match exec`` command; return its exit status."""
        return self._run_exec(command)


class _Options:
    """The options obtained so far (``None``: not yet), with where each came from."""

    def __init__(self) -> None:
        self.hostname: str | None = None
        self.user: str | None = None
        self.port: int | None = None
        self.identity_files: list[tuple[str, bool]] = []
        self.identities_only: bool | None = None
        self.proxy_command: str | None = None
        self.jump_host: str | None = None
        self.jump_user: str | None = None
        self.jump_port: int = -1
        self.jump_extra: str | None = None
        self.user_known_hosts: list[str] | None = None
        self.global_known_hosts: list[str] | None = None
        self.strict: str | None = None
        self.host_key_alias: str | None = None
        self.hash_known_hosts: bool | None = None
        self.canonicalize: str | None = None
        self.origins: dict[str, str] = {}

    def set(self, name: str, value: object, where: str, keyword: str) -> None:
        if getattr(self, name) is None:
            setattr(self, name, value)
            self.origins.setdefault(keyword, where)

    def found(self, name: str, hostname: str, hostname_set: bool) -> Found:
        jump = None
        proxy = self.proxy_command
        cleared = self.jump_host == "none" and self.jump_port == 0 and self.jump_user is None
        if self.jump_host is not None and not cleared:
            jump = Jump(self.jump_host, self.jump_user, self.jump_port if self.jump_port > 0 else None, self.jump_extra)
        if proxy is not None and lower(proxy) == "none":
            proxy = None
        return Found(
            name=name,
            hostname=hostname,
            hostname_set=hostname_set,
            user=self.user,
            port=self.port,
            identity_files=tuple(path for path, _ in self.identity_files),
            identities_only=self.identities_only,
            proxy_command=proxy,
            jump=jump,
            proxy_set=self.proxy_command is not None or self.jump_host is not None,
            user_known_hosts=tuple(self.user_known_hosts) if self.user_known_hosts is not None else None,
            global_known_hosts=tuple(self.global_known_hosts) if self.global_known_hosts is not None else None,
            strict_host_key_checking=self.strict,
            host_key_alias=self.host_key_alias,
            hash_known_hosts=self.hash_known_hosts,
            origins=dict(self.origins),
        )


class _Reader:
    """One pass over the files for one host (OpenSSH's read_config_file_depth and process_config_line)."""

    def __init__(
        self, cfg: SshConfig, opts: _Options, host: str, original: str, final: bool, want_final: list[bool] | None
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


# -- OpenSSH's string helpers (misc.c, match.c), kept to their behaviour ------------------------


def _strdelim(s: str | None, split_equals: bool = True) -> tuple[str | None, str | None]:
    """Return the next token and the rest: split on whitespace or one ``=``; a ``"`` quotes."""
    if s is None:
        return None, None
    delims = _WS + '"' + ("=" if split_equals else "")
    pos = next((i for i, c in enumerate(s) if c in delims), None)
    if pos is None:
        return s, None
    if s[pos] == '"':
        s = s[:pos] + s[pos + 1 :]
        close = s.find('"', pos)
        if close < 0:
            return None, None
        after = close + 1
        while after < len(s) and s[after] in _WS:
            after += 1
        return s[:close], s[after:]
    equals = split_equals and s[pos] == "="
    token = s[:pos]
    j = pos + 1
    while j < len(s) and s[j] in _WS:
        j += 1
    if split_equals and j < len(s) and s[j] == "=" and not equals:
        j += 1
        while j < len(s) and s[j] in _WS:
            j += 1
    return token, s[j:]


def _argv_split(s: str) -> list[str] | None:
    """Split a line's arguments: quotes, ``\\`` escapes, a ``#`` starting a word ends the line (None: bad quotes)."""
    args: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] in " \t":
            i += 1
            continue
        if s[i] == "#":
            break
        quote = ""
        arg: list[str] = []
        while i < n:
            c = s[i]
            nxt = s[i + 1] if i + 1 < n else ""
            if c == "\\":
                if nxt in ("'", '"', "\\") or (not quote and nxt == " "):
                    i += 1
                    arg.append(s[i])
                else:
                    arg.append(c)
            elif not quote and c in " \t":
                break
            elif not quote and c in "\"'":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                arg.append(c)
            i += 1
        args.append("".join(arg))
        if i >= n:
            if quote:
                return None
            break
    return args


def match_pattern(s: str, pattern: str) -> bool:
    """Match ``*`` and ``?`` wildcards, case-sensitively (OpenSSH's match_pattern)."""
    return _pattern_regex(pattern).fullmatch(s) is not None


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    found = _REGEX_CACHE.get(pattern)
    if found is None:
        body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        found = re.compile(body, re.DOTALL)
        if len(_REGEX_CACHE) < 4096:
            _REGEX_CACHE[pattern] = found
    return found


def match_pattern_list(s: str, patterns: str, dolower: bool) -> int:
    """Match a comma-separated pattern list: 1 a positive match, -1 a negated one, 0 none."""
    positive = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if len(sub) >= 1023:
            return 0
        if dolower:
            sub = lower(sub)
        if match_pattern(s, sub):
            if negated:
                return -1
            positive = 1
    return positive


def match_hostname(host: str, patterns: str) -> int:
    """Match a host name (lowercased) against a pattern list (lowercased)."""
    return match_pattern_list(lower(host), patterns, True)


def a2port(s: str) -> int:
    """Return a port number (0-65535) or a TCP service's port; -1 if neither."""
    if re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+", s):
        value = int(s)
        if 0 <= value <= 65535:
            return value
    try:
        return socket.getservbyname(s, "tcp")
    except (OSError, ValueError, UnicodeError):
        return -1


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


def _is_addr(name: str) -> bool:
    """Whether a host name is an address (ssh's is_addr: not lowercased, canonicalised as an address)."""
    if "%" in name or ":" in name or all(c in "0123456789." for c in name):
        return True
    try:
        found = socket.getaddrinfo(name, "22", 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except (OSError, UnicodeError, ValueError):
        return False
    return len(found) == 1


def _canonical_address(name: str) -> str | None:
    """Return an address in its numeric form (``010.1`` is ``10.0.0.1``), or None for a name."""
    try:
        found = socket.getaddrinfo(name, "22", 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except (OSError, UnicodeError, ValueError):
        return None
    if len(found) != 1:
        return None
    try:
        text, _ = socket.getnameinfo(found[0][4], socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    except (OSError, UnicodeError, ValueError):
        return None
    return text if lower(text) != lower(name) else name


def _parse_jump(value: str, opts: _Options, active: bool, where: str) -> bool:
    """OpenSSH's parse_jump: check every hop's syntax; the first ProxyJump (or ProxyCommand) obtained wins."""
    if lower(value) == "none":
        if active and opts.jump_host is None:
            opts.jump_host, opts.jump_port = "none", 0
            opts.origins.setdefault("proxyjump", where)
        return True
    text = value.split("#", 1)[0].rstrip(_WS)
    active = active and opts.proxy_command is None and opts.jump_host is None
    parsed: tuple[str | None, str, int] | None = None
    for element in reversed(text.split(",")):
        hop = _parse_hop(element)
        if hop is None:
            return False
        parsed = parsed or hop
    if active and parsed is not None:
        opts.jump_user, opts.jump_host, opts.jump_port = parsed
        opts.proxy_command = "none"
        cut = text.rfind(",")
        if cut >= 0:
            opts.jump_extra = text[:cut]
        opts.origins.setdefault("proxyjump", where)
    return True


def _parse_hop(text: str) -> tuple[str | None, str, int] | None:
    """Parse ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``: (user, host, port or -1), None if invalid."""
    if text.startswith("ssh://"):
        return _parse_ssh_uri(text[len("ssh://") :])
    user = None
    at = text.rfind("@")
    if at >= 0:
        if at == 0:
            return None
        user, text = text[:at], text[at + 1 :]
    host, delim, rest = _hpdelim(text)
    if host is None or host == "" or delim == "/":
        return None
    host = _clean_host(host)
    port = -1
    if rest:
        port = a2port(rest)
        if port <= 0:
            return None
    return user, host, port


def _parse_ssh_uri(text: str) -> tuple[str | None, str, int] | None:
    user = None
    at = text.find("@")
    if at >= 0:
        user = text[:at].split(";", 1)[0]
        if user == "":
            return None
        user = _urldecode(user)
        if user is None:
            return None
        text = text[at + 1 :]
    host, delim, rest = _hpdelim(text)
    if host is None or host == "":
        return None
    host = _clean_host(host)
    if not _valid_domain(host):
        return None
    if host.endswith("."):
        host = host[:-1]
    port = -1
    if rest:
        if delim == ":":
            rest, slash, path = rest.partition("/")
            port = a2port(rest)
            if port <= 0:
                return None
            rest = path if slash else ""
        if rest:
            return None  # a path is not allowed
    return user, host, port


def _hpdelim(text: str) -> tuple[str | None, str, str]:
    """Split ``host[:rest]`` or ``[v6]:rest`` (OpenSSH's hpdelim2): (host, the delimiter, the rest)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None, "", ""
        pos = end + 1
    else:
        found = [i for i in (text.find(":"), text.find("/")) if i >= 0]
        pos = min(found) if found else len(text)
    if pos >= len(text):
        return text, "", ""
    if text[pos] not in ":/":
        return None, "", ""
    return text[:pos], text[pos], text[pos + 1 :]


def _clean_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") and len(host) >= 2 else host


def _valid_domain(name: str) -> bool:
    if not name or not (name[0].isascii() and name[0].isalnum()):
        return False
    last = ""
    for c in lower(name):
        if last == "." and c == ".":
            return False
        if c not in ".-_" and not (c.isascii() and c.isalnum()):
            return False
        last = c
    return True


def _urldecode(text: str) -> str | None:
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        c = raw[i]
        if c == ord("+"):
            out.append(ord(" "))
        elif c == ord("%"):
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not all(chr(b) in "0123456789abcdefABCDEF" for b in pair):
                return None
            out.append(int(pair, 16))
            i += 2
        else:
            out.append(c)
        i += 1
    return out.decode("utf-8", "surrogateescape")


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
