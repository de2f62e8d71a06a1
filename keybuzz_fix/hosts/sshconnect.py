"""Connecting to SSH hops: one hop's TCP connection (or ProxyCommand), its host key check and login; jump chains.

ProxyJump hosts are connected in turn, each next one through a ``direct-tcpip`` channel of the
one before; :class:`_Jump` keeps one connection per chain of jump hosts, shared by every session
behind it. Each failure becomes one of the tool's errors naming the hop (the jump host, if it is one).
"""

from __future__ import annotations

import os
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from keybuzz_fix.errors import AuthError, HostKeyError, HostUnreachable
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.sshconfig.hops import Hop
from keybuzz_fix.hosts.ssherrors import _why
from keybuzz_fix.hosts.sshhostkey import _HostKeyCheck
from keybuzz_fix.hosts.sshoptions import AcceptedKeys, SshOptions
from keybuzz_fix.hosts.tcp import open_connection, resolve

if TYPE_CHECKING:
    import paramiko


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
    fired = threading.Event()
    if sock is None:  # a direct connection: the lookup and the TCP connection count against the deadline too
        try:
            sock = _open(hop, role, options.connect_timeout, label)
        except HostUnreachable:
            client.close()
            raise
    # The banner, key exchange and authentication share the deadline, also through a jump host's
    # channel or a ProxyCommand: paramiko bounds each wait, and a host (or a tunnel) that sends its
    # banner or its packets a byte at a time would stretch them.
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
            why = _silent(options.connect_timeout)
        through = " (ProxyCommand)" if hop.proxy_command is not None and first else ""
        raise HostUnreachable(label, f"{role}cannot connect to {hop.address}{through}: {why}") from e
    finally:
        cut.cancel()
    if fired.is_set():  # the deadline cut the socket just as the connection was made: it is no use
        client.close()
        raise HostUnreachable(
            label,
            f"{role}cannot connect to {hop.address}: {_silent(options.connect_timeout)}",
        )
    return client


def _open(hop: Hop, role: str, timeout: float, label: str) -> socket.socket:
    """Connect to a hop within ``timeout`` in all, its name looked up first (ssh_config's HostName may be a name)."""
    deadline = time.monotonic() + timeout
    try:
        addresses = resolve(hop.hostname, hop.port, deadline)
    except TimeoutError:
        raise HostUnreachable(
            label,
            f"{role}cannot look up {hop.hostname}: no answer from the resolver within {timeout:g}s"
            + hint("--timeout", " (--timeout)"),
        ) from None
    except OSError as e:
        raise HostUnreachable(label, f"{role}cannot look up {hop.hostname}: {_why(e)}") from e
    error: OSError = TimeoutError()
    for _family, address in addresses:
        try:
            return open_connection(address, hop.port, deadline)
        except TimeoutError as e:
            error = e
            break
        except OSError as e:
            error = e
    why = _why(error)
    if isinstance(error, TimeoutError):
        why = _silent(timeout)
    raise HostUnreachable(label, f"{role}cannot connect to {hop.address}: {why}") from error


def _silent(timeout: float) -> str:
    """Why a connection failed when nothing (or not enough) came back within the connection deadline."""
    return f"no SSH answer within {timeout:g}s" + hint("--timeout", " (--timeout)") + ": the host is down or too slow"


def _shut(sock: Any, fired: threading.Event) -> None:
    """Wake every wait on ``sock`` (a socket, a jump's channel, a ProxyCommand): paramiko's reads then fail at once."""
    fired.set()
    try:
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        else:
            sock.close()  # a Channel closes; a ProxyCommand's process is killed
    except (OSError, EOFError):
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
