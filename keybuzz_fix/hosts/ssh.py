"""SSH sessions to the nodes: one connection, and one remote shell, per host.

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
read-back. paramiko is imported lazily, so that ``--help`` stays fast.

This module holds the sessions and the remote shell; the hops are connected by :mod:`.sshconnect`,
their host keys checked by :mod:`.sshhostkey`, ports forwarded by :mod:`.sshforward`, failures
worded by :mod:`.ssherrors`, and :mod:`.sshoptions` holds the choices (importable without paramiko).
"""

from __future__ import annotations

import logging
import re
import secrets
import select
import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keybuzz_fix.errors import (
    AuthError,
    ConnectionLost,
    HostError,
    HostKeyError,
    HostUnreachable,
    RemoteCommandError,
    redact_credentials,
)
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.sshalive import Liveness
from keybuzz_fix.hosts.sshconfig.hops import Route
from keybuzz_fix.hosts.sshconnect import _connect_hop, _Jump, _jump_role, _proxy_command
from keybuzz_fix.hosts.ssherrors import _quiet_paramiko, _why
from keybuzz_fix.hosts.sshforward import _Forward
from keybuzz_fix.hosts.sshoptions import AcceptedKeys, SshOptions
from keybuzz_fix.inventory import Host

if TYPE_CHECKING:
    import paramiko

_MAX_OUTPUT = 4 * 1024 * 1024
_EOF_GRACE = 2.0  # seconds to wait for the end of the output once the remote shell has exited


@dataclass(frozen=True)
class CommandResult:
    """What a remote command printed and returned."""

    command: str
    status: int
    stdout: str
    stderr: str


TRACE = logging.getLogger("keybuzz_fix.trace")  # -v: each remote command on one line; -vv: and its output


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
        ).encode()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        exited: float | None = None  # the shell itself ended: sudo refused, or killed
        sent = 0  # bytes of the line handed to the connection: from the first one on, the command may run
        try:
            try:
                chan.settimeout(max(0.01, deadline - time.monotonic()))  # a full window cannot hold the send
                while sent < len(line):
                    sent += chan.send(line[sent:])
            except OSError:
                if not chan.exit_status_ready():
                    raise
            finally:
                chan.settimeout(None)
            alive = Liveness(chan.get_transport(), self._options.silence_timeout)
            while True:
                if time.monotonic() > deadline and not (end_out.search(out) and end_err in err):
                    raise self._no_answer(shown, timeout, out)  # output kept coming: the deadline holds all the same
                if chan.recv_ready():
                    out += chan.recv(65536)
                    alive.heard()
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    alive.heard()
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
                        raise _partial(self._lost(shown, sent, "the connection closed"), out)
                    return CommandResult(shown, status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
                else:
                    if exited is None and chan.exit_status_ready():
                        exited = time.monotonic()
                    if exited is None and alive.lost():
                        self._drop_shell()
                        self._client.close()  # the connection is no use any more: end its threads too
                        why = f"nothing heard from it for {alive.silence:g}s" + hint("--timeout", ", --timeout")
                        raise _partial(self._lost(shown, sent, why), out)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._no_answer(shown, timeout, out)  # the next command gets a new shell
                    select.select([chan], [], [], min(left, 0.5 if exited is None else 0.05))
                if len(out) + len(err) > _MAX_OUTPUT:
                    self._drop_shell()
                    raise _partial(
                        RemoteCommandError(self.host.hostname, shown, None, "more than 4 MiB of output"), out
                    )
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._drop_shell()
            raise _partial(self._lost(shown, sent, _why(e)), out) from e

    def _no_answer(self, shown: str, timeout: float, out: bytes | bytearray) -> HostError:
        """The command's time ran out with the host still there: drop its shell (it is still busy) and say so."""
        self._drop_shell()
        problem = f"no answer within {timeout:g}s" + hint("--timeout", " (--timeout)")
        return _partial(RemoteCommandError(self.host.hostname, shown, None, problem), out)

    def _lost(self, shown: str, sent: int, why: str) -> HostUnreachable:
        """The connection went: before the command was sent nothing ran; after, whether it ran is unknown."""
        if sent:
            return ConnectionLost(self.host.hostname, shown, why)
        return HostUnreachable(self.host.hostname, f"connection lost before `{shown}` was sent: {why}")

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
