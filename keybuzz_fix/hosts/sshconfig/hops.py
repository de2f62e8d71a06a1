"""What ssh_config says about one name, and the hops it resolves to (as ``ssh -G`` prints them).

:class:`Found` is what the files say before defaults (``_Options`` collects it line by line),
:class:`Hop` one SSH server with every default filled and token expanded, :class:`Route` the
ProxyJump hosts and the host itself, and :class:`Jump` a ProxyJump value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from keybuzz_fix.hosts.sshconfig.misc import SshConfigError, lower
from keybuzz_fix.hosts.sshconfig.tokens import Local, _expand_path, _percent

DEFAULT_PORT = 22


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
