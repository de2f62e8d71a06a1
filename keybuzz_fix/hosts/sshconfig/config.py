"""The ssh_config files of one run, and the route to a host: its options, then its ProxyJump chain.

:class:`SshConfig` reads each file once (``ssh``'s files, or ``-F``'s), resolves a name as
``ssh NAME`` would (two passes with ``Match final`` or CanonicalizeHostname), fills the defaults
and follows ProxyJump hosts to their own jump hosts, up to :data:`MAX_JUMPS`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.sshconfig.hops import DEFAULT_PORT, Found, Hop, Jump, Route, _Options
from keybuzz_fix.hosts.sshconfig.jump import _parse_jump
from keybuzz_fix.hosts.sshconfig.misc import SshConfigError, _canonical_address, _is_addr, lower
from keybuzz_fix.hosts.sshconfig.readconf import _FINAL, _USERCONF, _Reader, _run_in_shell
from keybuzz_fix.hosts.sshconfig.tokens import Local, _expand_path, _percent

USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = Path("/etc/ssh/ssh_config")
MAX_JUMPS = 8


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
