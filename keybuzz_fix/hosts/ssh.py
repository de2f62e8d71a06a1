"""SSH sessions to the nodes: the only module that talks to paramiko.

A host is reached as ``ssh HOSTNAME`` would reach it (:mod:`.sshconfig`): its ssh_config options,
looked up under HOSTNAME then IP_PRIVEE, with servers.tsv's IP_PRIVEE and USER_SSH where the
config says nothing; ProxyJump hosts are connected in turn, each next one through a
``direct-tcpip`` channel of the one before (one connection per jump host, shared by the hosts
behind it), the first one maybe through a ProxyCommand. Every hop's host key is checked
(:mod:`.knownhosts`) against ``--known-hosts``, else its UserKnownHostsFile and
GlobalKnownHostsFile: an unknown key is refused unless the operator opted into trust-on-first-use
(``--accept-new-host-keys``, or StrictHostKeyChecking accept-new), in which case it is recorded; a
changed or @revoked key is always refused, with both fingerprints; a certificate is checked
against the @cert-authority keys. StrictHostKeyChecking no is refused unless
``--accept-new-host-keys`` is given. Commands never prompt: non-root users go through
``sudo -n``. One connection per host, and one shell on it, serve the probe, the changes and the
read-back. paramiko is imported here, lazily, so that ``--help`` stays fast.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import select
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from keybuzz_fix.errors import (
    AuthError,
    HostError,
    HostKeyError,
    HostUnreachable,
    RemoteCommandError,
    redact_credentials,
)
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts import knownhosts
from keybuzz_fix.hosts.sshconfig.config import SYSTEM_CONFIG, SshConfig
from keybuzz_fix.hosts.sshconfig.hops import Hop, Route
from keybuzz_fix.inventory import Host

if TYPE_CHECKING:
    import paramiko

_KNOWN_HOSTS_LOCK = threading.Lock()
_MAX_OUTPUT = 4 * 1024 * 1024
_EOF_GRACE = 2.0  # seconds to wait for the end of the output once the remote shell has exited


@dataclass(frozen=True)
class SshOptions:
    """How to reach and trust the hosts: the command line's choices, over the ssh_config files'."""

    known_hosts: Path | None = None  # --known-hosts, for every hop; None: each hop's UserKnownHostsFile
    identity: Path | None = None  # --identity, tried first
    accept_new_host_keys: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    port: int = 22  # where the config names none
    ssh_config: Path | None = field(default_factory=lambda: Path.home() / ".ssh" / "config")  # None: none at all
    system_ssh_config: Path | None = SYSTEM_CONFIG  # read after ssh_config (not with --ssh-config, as ssh -F)
    user: str | None = None  # --user: wins over ssh_config's User, as ssh -l does
    config: SshConfig = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        explicit = self.system_ssh_config is None and self.ssh_config is not None
        config = SshConfig.for_files(self.ssh_config, self.system_ssh_config, explicit=explicit)
        object.__setattr__(self, "config", config)

    def route(self, host: Host) -> Route:
        """The hops to ``host``: options for HOSTNAME, then IP_PRIVEE; servers.tsv where the config says nothing."""
        return self.config.route(
            host.hostname,
            also=host.private_ip,
            user=self.user,
            default_user=host.user,
            default_hostname=host.private_ip,
        )

    def check_config(self) -> None:
        """Read the ssh_config files through once, so that a bad line stops the run before any host."""
        self.config.check()


@dataclass(frozen=True)
class CommandResult:
    """What a remote command printed and returned."""

    command: str
    status: int
    stdout: str
    stderr: str


@dataclass
class AcceptedKeys:
    """Host keys recorded under ``--accept-new-host-keys``, for the report."""

    entries: list[tuple[str, str]] = field(default_factory=list)  # (host, fingerprint)
    where: Path | None = None  # the known_hosts file the last one went to


TRACE = logging.getLogger("keybuzz_fix.trace")  # -v: each remote command on one line; -vv: and its output


def fingerprint(key: paramiko.PKey) -> str:
    """Return the OpenSSH-style SHA256 fingerprint of a key."""
    return knownhosts.fingerprint(key.asbytes())


class Session:
    """One authenticated SSH connection to a host, with one remote shell that runs every command.

    Each command sent as its own SSH exec would start the user's login shell again (and with it
    whatever its rc files do: on some hosts that costs more than the command). The session starts
    one ``sh`` (through ``sudo -n`` for non-root users) on first use and feeds it each script as a
    ``sh -c`` line on its standard input; a marker with a token of its own ends each command's
    output and carries its exit status.
    """

    def __init__(
        self,
        host: Host,
        client: paramiko.SSHClient,
        options: SshOptions,
        route: Route | None = None,
        jump: _Jump | None = None,
    ) -> None:
        self.host = host
        self.route = route
        self.user = route.target.user if route is not None else host.user
        self._client = client
        self._options = options
        self._jump = jump
        self._shell: paramiko.Channel | None = None
        self._forwards: list[_Forward] = []

    @property
    def sudo(self) -> bool:
        """Whether commands need ``sudo -n`` (every user but root)."""
        return self.user != "root"

    @property
    def proxied(self) -> bool:
        """Whether this host is reached through a jump host or a ProxyCommand (not straight from here)."""
        return self.route is not None and self.route.proxied

    def forward(self, host: str, port: int) -> int:
        """Forward a local port to ``host:port`` as the remote end sees it (``ssh -L``); return the local port.

        It listens on 127.0.0.1 only, for as long as the session is open.
        """
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise HostUnreachable(self.host.hostname, f"connection lost before forwarding to {host}:{port}")
        fwd = _Forward(transport, host, port, self.host.hostname)
        self._forwards.append(fwd)
        return fwd.port

    def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        """Run a shell script as root (through ``sudo -n`` when needed) and return its output."""
        started = time.monotonic()
        result = self._in_shell(script, _brief(script), timeout or self._options.command_timeout)
        _trace_command(self.host, script, result, time.monotonic() - started)
        if self.sudo and result.status != 0 and _sudo_refused(result.stderr):
            raise AuthError(
                self.host.hostname,
                f"sudo asks {self.user} for a password (sudo -n refused); "
                "allow passwordless sudo for this user or connect as root",
            )
        if check and result.status != 0:
            raise RemoteCommandError(self.host.hostname, _brief(script), result.status, result.stderr or result.stdout)
        return result

    def _start_shell(self, shown: str, timeout: float) -> paramiko.Channel:
        import paramiko

        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise HostUnreachable(self.host.hostname, f"connection lost before `{shown}`")
        # sudo resets the environment: carry the SSH connection facts through
        command = 'sudo -n -- env SSH_CONNECTION="$SSH_CONNECTION" sh' if self.sudo else "sh"
        limit = min(timeout, self._options.connect_timeout)
        try:
            chan = transport.open_session(timeout=limit)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise HostUnreachable(self.host.hostname, f"connection lost before `{shown}`: {_why(e)}") from e
        cut = threading.Timer(limit, chan.close)  # paramiko waits for the exec reply without a timeout
        cut.daemon = True
        cut.start()
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            chan.close()
            why = f"no answer to starting a shell within {limit:g}s" if not cut.is_alive() else _why(e)
            raise HostUnreachable(self.host.hostname, f"connection lost before `{shown}`: {why}") from e
        finally:
            cut.cancel()
        return chan

    def _in_shell(self, script: str, shown: str, timeout: float) -> CommandResult:
        import paramiko

        if self._shell is None or self._shell.closed:
            self._shell = self._start_shell(shown, timeout)
        chan = self._shell
        token = f"@@keybuzz-fix-done-{secrets.token_hex(8)}@@".encode()
        end_out = re.compile(b"\n" + re.escape(token) + b" ([0-9]+)\n")
        end_err = b"\n" + token + b"\n"
        line = (
            f"sh -c {shlex.quote(script)} </dev/null; printf '\\n%s %s\\n' {token.decode()} $?; "
            f"printf '\\n%s\\n' {token.decode()} >&2\n"
        )
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        exited: float | None = None  # the shell itself ended: sudo refused, or killed
        try:
            try:
                chan.settimeout(max(0.01, deadline - time.monotonic()))  # a full window cannot hold the send
                chan.sendall(line.encode())
            except OSError:
                if not chan.exit_status_ready():
                    raise
            finally:
                chan.settimeout(None)
            while True:
                if time.monotonic() > deadline and not (end_out.search(out) and end_err in err):
                    self._drop_shell()  # output kept coming: the deadline holds all the same
                    raise _partial(
                        RemoteCommandError(
                            self.host.hostname,
                            shown,
                            None,
                            f"no answer within {timeout:g}s" + hint("--timeout", " (--timeout)"),
                        ),
                        out,
                    )
                if chan.recv_ready():
                    out += chan.recv(65536)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                elif (done := end_out.search(out)) and end_err in err:
                    return CommandResult(
                        shown,
                        int(done.group(1)),
                        out[: done.start()].decode("utf-8", "replace"),
                        err[: err.index(end_err)].decode("utf-8", "replace"),
                    )
                elif chan.exit_status_ready() and (
                    chan.eof_received or exited is not None and time.monotonic() - exited > _EOF_GRACE
                ):
                    status = chan.recv_exit_status()
                    self._drop_shell()
                    if status == -1:  # no exit status: the connection went, or the shell was killed
                        raise _partial(HostUnreachable(self.host.hostname, f"connection lost during `{shown}`"), out)
                    return CommandResult(shown, status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
                else:
                    if exited is None and chan.exit_status_ready():
                        exited = time.monotonic()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._drop_shell()  # it is still busy with this command: the next one gets a new shell
                        raise _partial(
                            RemoteCommandError(
                                self.host.hostname,
                                shown,
                                None,
                                f"no answer within {timeout:g}s" + hint("--timeout", " (--timeout)"),
                            ),
                            out,
                        )
                    select.select([chan], [], [], min(left, 0.5 if exited is None else 0.05))
                if len(out) + len(err) > _MAX_OUTPUT:
                    self._drop_shell()
                    raise _partial(
                        RemoteCommandError(self.host.hostname, shown, None, "more than 4 MiB of output"), out
                    )
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._drop_shell()
            raise _partial(
                HostUnreachable(self.host.hostname, f"connection lost during `{shown}`: {_why(e)}"), out
            ) from e

    def _drop_shell(self) -> None:
        if self._shell is not None:
            self._shell.close()
            self._shell = None

    def close(self) -> None:
        """Close the shell, the forwards and the connection (and the jump host's, if no one else uses it)."""
        self._drop_shell()
        for fwd in self._forwards:
            fwd.close()
        self._client.close()
        if self._jump is not None:
            self._jump.release()
            self._jump = None


@contextmanager
def connect(host: Host, options: SshOptions, accepted: AcceptedKeys | None = None) -> Iterator[Session]:
    """Open a verified SSH session to ``host``, as ``ssh HOSTNAME`` would reach it."""
    session = open_session(host, options, accepted)
    try:
        yield session
    finally:
        session.close()


def open_session(host: Host, options: SshOptions, accepted: AcceptedKeys | None = None) -> Session:
    """Connect (through the jump hosts) and authenticate; translate every failure into the tool's own errors."""
    _quiet_paramiko()
    route = options.route(host)
    for hop in route.hops:
        if hop.strict_host_key_checking == "no" and not options.accept_new_host_keys:
            role = "" if hop is route.target else _jump_role(hop)
            raise HostKeyError(
                host.hostname,
                f"{role}StrictHostKeyChecking no ({hop.where('stricthostkeychecking')}) would trust any host key, "
                "even a changed one: keybuzz-fix does not; remove it"
                + hint(
                    "--accept-new-host-keys",
                    ", or pass --accept-new-host-keys (new keys are recorded, changed keys still refused)",
                ),
            )
    jump = _Jump.acquire(route.jumps, options, accepted, host.hostname) if route.jumps else None
    try:
        sock: Any = None
        target = route.target
        if jump is not None:
            sock = jump.channel_to(target, options.connect_timeout, host.hostname)
        elif target.proxy_command is not None:
            sock = _proxy_command(target, host.hostname)
        client = _connect_hop(target, "", options, accepted, sock, host.hostname, first=not route.jumps)
    except BaseException:
        if jump is not None:
            jump.release()
        raise
    return Session(host, client, options, route, jump)


def _jump_role(hop: Hop) -> str:
    """How a message names a jump host (the host itself needs no name: the error is already its own)."""
    return f"jump host {hop.name} ({hop.address}): "


def _connect_hop(
    hop: Hop, role: str, options: SshOptions, accepted: AcceptedKeys | None, sock: Any, label: str, *, first: bool
) -> paramiko.SSHClient:
    """Connect and authenticate to one hop, its host key checked; ``role`` starts its messages."""
    import paramiko

    check = _HostKeyCheck(hop, options, accepted, label, role)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(cast(Any, check))  # a MissingHostKeyPolicy by its one method
    keys = [str(options.identity)] if options.identity else []
    keys += [p for p in hop.identity_paths() if p not in keys and os.path.isfile(p)]
    start = time.monotonic()
    cut: threading.Timer | None = None
    fired = threading.Event()
    if sock is None:  # a direct connection: one deadline for it all (a jump's channel or a ProxyCommand has its own)
        try:
            sock = socket.create_connection((hop.hostname, hop.port), timeout=options.connect_timeout)
        except OSError as e:
            client.close()
            why = _why(e)
            if isinstance(e, TimeoutError):
                why = (
                    f"no SSH answer within {options.connect_timeout:g}s"
                    + hint("--timeout", " (--timeout)")
                    + ": the host is down or too slow"
                )
            raise HostUnreachable(label, f"{role}cannot connect to {hop.address}: {why}") from e
        # The banner, key exchange and authentication share the deadline: paramiko bounds each
        # wait, and a host that sends its banner or its packets a byte at a time would stretch them.
        left = max(0.0, options.connect_timeout - (time.monotonic() - start))
        cut = threading.Timer(left, _shut, args=(sock, fired))
        cut.daemon = True
        cut.start()
    try:
        client.connect(
            hop.hostname,
            port=hop.port,
            username=hop.user,
            key_filename=cast(Any, keys or None),  # paramiko takes a list; its stubs say str
            look_for_keys=not keys and not hop.identity_files,
            allow_agent=not hop.identities_only,
            timeout=options.connect_timeout,
            banner_timeout=options.connect_timeout,
            auth_timeout=options.connect_timeout,
            sock=sock,
            transport_factory=cast(Any, check.transport),
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.AuthenticationException as e:
        client.close()
        raise AuthError(label, f"{role}authentication refused for {hop.user}@{hop.address}: {_why(e)}") from e
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        why = _why(e)
        if fired.is_set() or time.monotonic() - start >= options.connect_timeout:  # paramiko words these oddly
            why = (
                f"no SSH answer within {options.connect_timeout:g}s"
                + hint("--timeout", " (--timeout)")
                + ": the host is down or too slow"
            )
        through = " (ProxyCommand)" if hop.proxy_command is not None and first else ""
        raise HostUnreachable(label, f"{role}cannot connect to {hop.address}{through}: {why}") from e
    finally:
        if cut is not None:
            cut.cancel()
    if fired.is_set():  # the deadline cut the socket just as the connection was made: it is no use
        client.close()
        raise HostUnreachable(
            label,
            f"{role}cannot connect to {hop.address}: no SSH answer within {options.connect_timeout:g}s"
            + hint("--timeout", " (--timeout)")
            + ": the host is down or too slow",
        )
    return client


def _shut(sock: socket.socket, fired: threading.Event) -> None:
    """Wake every wait on ``sock``: paramiko's reads then fail at once."""
    fired.set()
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _proxy_command(hop: Hop, label: str) -> paramiko.ProxyCommand:
    """Start a hop's ProxyCommand with the user's shell, as ssh does."""
    import paramiko

    command = hop.proxy_shell_command()
    assert command is not None
    shell = os.environ.get("SHELL") or "/bin/sh"
    try:
        return paramiko.ProxyCommand(shlex.join([shell, "-c", command]))
    except (paramiko.SSHException, OSError) as e:
        raise HostUnreachable(label, f"ProxyCommand for {hop.name} ({hop.where('proxycommand')}): {_why(e)}") from e


class _HostKeyCheck:
    """The host key policy of one hop: which algorithms to ask for, and whether to trust what is presented.

    paramiko is given no known keys of its own, so every presented key comes here.
    """

    def __init__(self, hop: Hop, options: SshOptions, accepted: AcceptedKeys | None, label: str, role: str) -> None:
        self.hop, self.options, self.accepted, self.label, self.role = hop, options, accepted, label, role
        if options.known_hosts is not None:
            self.files: list[str] = [str(options.known_hosts)]
            self.writable: str | None = str(options.known_hosts)
        else:
            self.files = [*hop.user_known_hosts, *hop.global_known_hosts]
            self.writable = hop.user_known_hosts[0] if hop.user_known_hosts else None
        self.entries: list[knownhosts.KnownKey] = []
        self.existing: list[str] = []
        for path in self.files:
            try:
                found = knownhosts.read_known_hosts(Path(path))
            except OSError as e:
                raise HostKeyError(label, f"{role}cannot read known_hosts {path}: {_why(e)}") from e
            if found is not None:
                self.entries += found
                self.existing.append(path)
        self.trust_new = options.accept_new_host_keys or hop.strict_host_key_checking == "accept-new"
        if not self.existing and not self.trust_new:
            files = ", ".join(self.files) or "none (UserKnownHostsFile none)"
            raise HostKeyError(
                label,
                f"{role}known_hosts file {files} does not exist; add the host keys (ssh-keyscan, checked out of band)"
                + hint("--accept-new-host-keys", " or pass --accept-new-host-keys"),
            )

    def transport(self, sock: Any, disabled_algorithms: Any = None) -> paramiko.Transport:
        """Make the transport ask first for the host key algorithms known_hosts can check (OpenSSH's order)."""
        import paramiko

        transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
        first = knownhosts.preferred_algorithms(self.entries, self.hop.known_hosts_name)
        if first:
            options = transport.get_security_options()
            known = getattr(paramiko.Transport, "_key_info", {})
            usable = [a for a in first if a in known]
            options.key_types = [*usable, *(a for a in options.key_types if a not in usable)]
        return transport

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        """Trust the presented key, record it (first use), or refuse it with one line."""
        hop = self.hop
        blob = getattr(getattr(key, "public_blob", None), "key_blob", None)
        plain = key.asbytes()
        verdict = knownhosts.judge(
            self.entries,
            hop.known_hosts_name,
            principal=hop.certificate_name,
            plain=plain,
            certificate=blob if blob and blob != plain else None,
            signed_by_ca=_signed_by_ca,
            trust_new=self.trust_new,
            files=self.existing or self.files,
            now=int(time.time()),
        )
        if not verdict.trusted:
            raise HostKeyError(self.label, self.role + verdict.problem)
        if verdict.record:
            if self.writable is not None:
                _record_host_key(Path(self.writable), hop.known_hosts_name, plain, hop.hash_known_hosts)
            if self.accepted is not None:
                with _KNOWN_HOSTS_LOCK:
                    self.accepted.entries.append((self.label, f"{key.get_name()} {fingerprint(key)}"))
                    self.accepted.where = Path(self.writable) if self.writable is not None else None


def _signed_by_ca(cert: knownhosts.Certificate) -> bool:
    """Whether the CA key named in a certificate signed it (paramiko checks the signature)."""
    import paramiko
    from paramiko.message import Message

    ca_type = knownhosts.key_type_of(cert.signature_key)
    try:
        ca = paramiko.PKey.from_type_string(ca_type or "", cert.signature_key)
        return bool(ca.verify_ssh_sig(cert.signed, Message(cert.signature)))
    except (paramiko.SSHException, ValueError, TypeError, IndexError):
        return False


def _record_host_key(known: Path, name: str, blob: bytes, hashed: bool) -> None:
    """Append one host key to known_hosts (created 0600, parent 0700), under a lock; hashed with HashKnownHosts."""
    import base64

    line_name = knownhosts.hash_name(name) if hashed else name
    with _KNOWN_HOSTS_LOCK:
        known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(known, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            f.write(f"{line_name} {knownhosts.key_type_of(blob)} {base64.b64encode(blob).decode()}\n")


class _Jump:
    """The connections to a chain of jump hosts, shared by every session that goes through them.

    OpenSSH would start one ``ssh -W`` per host; one connection per jump host, with a channel per
    host behind it, keeps a bastion's MaxStartups out of the way of a parallel run.
    """

    _LOCK = threading.Lock()
    _OPEN: dict[tuple[SshOptions, tuple[Hop, ...]], _Jump] = {}
    _OPENING: dict[tuple[SshOptions, tuple[Hop, ...]], threading.Lock] = {}

    def __init__(self, key: tuple[SshOptions, tuple[Hop, ...]], clients: list[paramiko.SSHClient]) -> None:
        self.key, self.clients, self.users = key, clients, 1

    @property
    def last(self) -> Hop:
        """The jump host the hosts are reached from."""
        return self.key[1][-1]

    @classmethod
    def acquire(cls, hops: Sequence[Hop], options: SshOptions, accepted: AcceptedKeys | None, label: str) -> _Jump:
        """Return the open connection through ``hops``, connecting it first if no session holds it."""
        key = (options, tuple(hops))
        with cls._LOCK:
            opening = cls._OPENING.setdefault(key, threading.Lock())
        with opening:
            with cls._LOCK:
                jump = cls._OPEN.get(key)
                if jump is not None and jump.active():
                    jump.users += 1
                    return jump
            clients: list[paramiko.SSHClient] = []
            try:
                sock: Any = _proxy_command(hops[0], label) if hops[0].proxy_command is not None else None
                for i, hop in enumerate(hops):
                    if i > 0:
                        sock = _Jump._channel(clients[-1], hops[i - 1], hop, options.connect_timeout, label)
                    clients.append(_connect_hop(hop, _jump_role(hop), options, accepted, sock, label, first=i == 0))
            except BaseException:
                for client in reversed(clients):
                    client.close()
                raise
            jump = cls(key, clients)
            with cls._LOCK:
                cls._OPEN[key] = jump
            return jump

    def active(self) -> bool:
        """Whether the connection to the last jump host is still up."""
        transport = self.clients[-1].get_transport()
        return transport is not None and transport.is_active()

    def channel_to(self, hop: Hop, timeout: float, label: str) -> paramiko.Channel:
        """Open a ``direct-tcpip`` channel from the last jump host to ``hop`` (``ssh -W``)."""
        return _Jump._channel(self.clients[-1], self.last, hop, timeout, label)

    @staticmethod
    def _channel(client: paramiko.SSHClient, via: Hop, hop: Hop, timeout: float, label: str) -> paramiko.Channel:
        import paramiko

        transport = client.get_transport()
        try:
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("the connection to it is closed")
            return transport.open_channel("direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise HostUnreachable(
                label, f"cannot connect to {hop.address} through jump host {via.name} ({via.address}): {_why(e)}"
            ) from e

    def release(self) -> None:
        """Give the connection back; the last session to leave closes it."""
        with _Jump._LOCK:
            self.users -= 1
            if self.users > 0:
                return
            if _Jump._OPEN.get(self.key) is self:
                del _Jump._OPEN[self.key]
        for client in reversed(self.clients):
            client.close()


class _Forward:
    """A local port forwarded over an SSH connection to an address the remote end reaches (``ssh -L``)."""

    def __init__(self, transport: paramiko.Transport, host: str, port: int, label: str) -> None:
        self._transport, self._dest, self._label = transport, (host, port), label
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name=f"forward-{label}", daemon=True).start()

    def _accept(self) -> None:
        import paramiko

        while not self._closed:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return
            try:
                chan = self._transport.open_channel("direct-tcpip", self._dest, peer, timeout=30)
            except (paramiko.SSHException, OSError, EOFError):
                conn.close()
                continue
            threading.Thread(target=_pump, args=(conn, chan), name=f"forward-{self._label}", daemon=True).start()

    def close(self) -> None:
        """Stop listening (connections already made end with the SSH connection)."""
        self._closed = True
        self._listener.close()


def _pump(conn: socket.socket, chan: paramiko.Channel) -> None:
    """Copy bytes both ways between a local socket and a channel until either side closes."""
    try:
        while True:
            watched: list[Any] = [conn, chan]
            ready, _, _ = select.select(watched, [], [], 60)
            if conn in ready:
                data = conn.recv(65536)
                if not data:
                    break
                chan.sendall(data)
            if chan in ready:
                data = chan.recv(65536)
                if not data:
                    break
                conn.sendall(data)
    except OSError:
        pass
    finally:
        chan.close()
        conn.close()


def _quiet_paramiko() -> None:
    """Keep paramiko's log off stderr: the host's error already says what went wrong, in one line.

    Its transport thread logs a traceback when a slow host's socket is closed under it, and Python
    prints log records nobody handles.
    """
    log = logging.getLogger("paramiko")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False


def _partial(error: HostError, out: bytes | bytearray) -> HostError:
    """Attach what the command printed so far: the caller can tell which of its steps ran."""
    error.partial = bytes(out).decode("utf-8", "replace")
    return error


def _trace_command(host: Host, script: str, result: CommandResult, seconds: float) -> None:
    """Log one remote command (``-v``), and with ``-vv`` its script and output; credentials redacted."""
    if not TRACE.isEnabledFor(logging.INFO):
        return
    lines = len(script.strip().splitlines())
    more = f" (+{lines - 1} more line(s))" if lines > 1 else ""
    TRACE.info(
        "ssh %s@%s (%s): %s%s -> exit %s, %.2f s",
        host.user,
        host.hostname,
        host.private_ip,
        redact_credentials(_brief(script)),
        more,
        result.status,
        seconds,
    )
    if TRACE.isEnabledFor(logging.DEBUG):
        for name, text in (("script", script), ("stdout", result.stdout), ("stderr", result.stderr)):
            if text.strip():
                TRACE.debug("ssh %s %s:\n%s", host.hostname, name, redact_credentials(text.rstrip()))


def _brief(script: str) -> str:
    """Return a script shortened for messages (an apply script holds every command it runs)."""
    first = script.strip().splitlines()[0] if script.strip() else ""
    return first if len(first) <= 100 else first[:97] + "..."


def _sudo_refused(stderr: str) -> bool:
    return (
        "a password is required" in stderr
        or "a terminal is required" in stderr
        or ("sudo:" in stderr and "not allowed" in stderr)
        or "is not in the sudoers file" in stderr
    )


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused: nothing listens on the SSH port (sshd down?)",
    errno.EHOSTUNREACH: "no route to the host: it is down or its network is",
    errno.ENETUNREACH: "the network is unreachable from here",
    errno.ECONNRESET: "the connection was reset",
    errno.ETIMEDOUT: "timed out",
}


def _why(e: BaseException) -> str:
    """Say why a connection failed in the tool's words, not paramiko's (``[Errno None] Unable to connect…``)."""
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    errors = getattr(e, "errors", None)  # paramiko's NoValidConnectionsError: one OSError per address tried
    if isinstance(errors, dict) and errors:
        return "; ".join(dict.fromkeys(_why(x) for x in errors.values() if isinstance(x, BaseException)))
    if isinstance(e, OSError) and e.errno:
        return _ERRNO_WORDS.get(e.errno) or os.strerror(e.errno).lower()
    text = str(e).strip()
    if "protocol banner" in text:
        return "the SSH port answered but no SSH greeting came"
    return text or e.__class__.__name__
