"""SSH sessions to the nodes: the only module that talks to paramiko.

Host keys are verified against a known_hosts file; an unknown key is refused unless the operator
opted into trust-on-first-use (``--accept-new-host-keys``), in which case it is recorded. A changed
key is always refused, with both fingerprints. Commands never prompt: non-root users go through
``sudo -n``. One connection per host, and one shell on it, serve the probe, the changes and the
read-back.
paramiko is imported here, lazily, so that ``--help`` stays fast.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import re
import secrets
import select
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from keybuzz_fix.errors import AuthError, HostError, HostKeyError, HostUnreachable, RemoteCommandError
from keybuzz_fix.hints import hint
from keybuzz_fix.inventory import Host

if TYPE_CHECKING:
    import paramiko

_KNOWN_HOSTS_LOCK = threading.Lock()
_MAX_OUTPUT = 4 * 1024 * 1024
_EOF_GRACE = 2.0  # seconds to wait for the end of the output once the remote shell has exited


@dataclass(frozen=True)
class SshOptions:
    """How to reach and trust the hosts."""

    known_hosts: Path = field(default_factory=lambda: Path.home() / ".ssh" / "known_hosts")
    identity: Path | None = None
    accept_new_host_keys: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    port: int = 22
    ssh_config: Path | None = field(default_factory=lambda: Path.home() / ".ssh" / "config")


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


def fingerprint(key: paramiko.PKey) -> str:
    """Return the OpenSSH-style SHA256 fingerprint of a key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Session:
    """One authenticated SSH connection to a host, with one remote shell that runs every command.

    Each command sent as its own SSH exec would start the user's login shell again (and with it
    whatever its rc files do: on some hosts that costs more than the command). The session starts
    one ``sh`` (through ``sudo -n`` for non-root users) on first use and feeds it each script as a
    ``sh -c`` line on its standard input; a marker with a token of its own ends each command's
    output and carries its exit status.
    """

    def __init__(self, host: Host, client: paramiko.SSHClient, options: SshOptions) -> None:
        self.host = host
        self._client = client
        self._options = options
        self._shell: paramiko.Channel | None = None

    @property
    def sudo(self) -> bool:
        """Whether commands need ``sudo -n`` (every user but root)."""
        return self.host.user != "root"

    def run(self, script: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        """Run a shell script as root (through ``sudo -n`` when needed) and return its output."""
        result = self._in_shell(script, _brief(script), timeout or self._options.command_timeout)
        if self.sudo and result.status != 0 and _sudo_refused(result.stderr):
            raise AuthError(
                self.host.hostname,
                f"sudo asks {self.host.user} for a password (sudo -n refused); "
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
        try:
            chan = transport.open_session(timeout=min(timeout, self._options.connect_timeout))
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise HostUnreachable(self.host.hostname, f"connection lost before `{shown}`: {_why(e)}") from e
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
                chan.sendall(line.encode())
            except OSError:
                if not chan.exit_status_ready():
                    raise
            while True:
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
        """Close the shell and the connection."""
        self._drop_shell()
        self._client.close()


@contextmanager
def connect(host: Host, options: SshOptions, accepted: AcceptedKeys | None = None) -> Iterator[Session]:
    """Open a verified SSH session to ``host`` (its private IP, as its user)."""
    session = open_session(host, options, accepted)
    try:
        yield session
    finally:
        session.close()


def open_session(host: Host, options: SshOptions, accepted: AcceptedKeys | None = None) -> Session:
    """Connect and authenticate; translate every failure into the tool's own errors."""
    import paramiko

    _quiet_paramiko()

    name = host.hostname
    settings = _ssh_config_for(host.private_ip, options.ssh_config)
    port = int(settings.get("port", options.port))
    client = paramiko.SSHClient()
    known = options.known_hosts
    if known.exists():
        try:
            _add_known_keys(client, known, host.private_ip if port == 22 else f"[{host.private_ip}]:{port}")
        except (OSError, paramiko.SSHException, UnicodeDecodeError) as e:
            raise HostKeyError(name, f"cannot read known_hosts {known}: {_why(e)}") from e
    elif not options.accept_new_host_keys:
        raise HostKeyError(
            name,
            f"known_hosts file {known} does not exist; add the host keys (ssh-keyscan, checked out of band)"
            + hint("--accept-new-host-keys", " or pass --accept-new-host-keys"),
        )
    client.set_missing_host_key_policy(_policy(name, known, options.accept_new_host_keys, accepted))
    key_files = (
        [str(options.identity)]
        if options.identity
        else [os.path.expanduser(p) for p in settings.get("identityfile", [])]
    )
    sock: Any = None
    if "proxycommand" in settings:
        sock = paramiko.ProxyCommand(settings["proxycommand"])
    start = time.monotonic()
    try:
        client.connect(
            host.private_ip,
            port=port,
            username=host.user,
            key_filename=cast(Any, key_files or None),  # paramiko takes a list; its stubs say str
            look_for_keys=not options.identity,
            allow_agent=True,
            timeout=options.connect_timeout,
            banner_timeout=options.connect_timeout,
            auth_timeout=options.connect_timeout,
            sock=sock,
        )
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyError(
            name,
            f"host key CHANGED for {host.private_ip}: known_hosts ({known}) has "
            f"{fingerprint(e.expected_key)}, the host offers {fingerprint(e.key)}; "
            "refusing to connect (verify the host, then fix known_hosts)",
        ) from e
    except HostKeyError:
        client.close()
        raise
    except paramiko.AuthenticationException as e:
        client.close()
        raise AuthError(name, f"authentication refused for {host.user}@{host.private_ip}:{port}: {_why(e)}") from e
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        why = _why(e)
        if time.monotonic() - start >= options.connect_timeout:  # paramiko words a slow host's timeouts oddly
            why = (
                f"no SSH answer within {options.connect_timeout:g}s"
                + hint("--timeout", " (--timeout)")
                + ": the host is down or too slow"
            )
        raise HostUnreachable(name, f"cannot connect to {host.private_ip}:{port}: {why}") from e
    return Session(host, client, options)


def _quiet_paramiko() -> None:
    """Keep paramiko's log off stderr: the host's error already says what went wrong, in one line.

    Its transport thread logs a traceback when a slow host's socket is closed under it, and Python
    prints log records nobody handles.
    """
    log = logging.getLogger("paramiko")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False


def _add_known_keys(client: paramiko.SSHClient, known: Path, name: str) -> None:
    """Give the client the known_hosts entries for ``name`` (``addr`` or ``[addr]:port``, as paramiko looks it up).

    The file is parsed once per version of it (path, inode, size, mtime) for the whole run, not once
    per host: parsing is linear in its lines, so once per host made a fleet run quadratic.
    """
    entry = _known_hosts(known).lookup(name)
    for key_type, key in (entry or {}).items():
        client.get_host_keys().add(name, key_type, key)


_KNOWN_HOSTS_PARSED: dict[tuple[str, int, int, int], paramiko.HostKeys] = {}


def _known_hosts(known: Path) -> paramiko.HostKeys:
    import paramiko

    st = known.stat()
    version = (str(known), st.st_ino, st.st_size, st.st_mtime_ns)
    with _KNOWN_HOSTS_LOCK:  # held while parsing: the hosts connecting at once wait for one parse
        keys = _KNOWN_HOSTS_PARSED.get(version)
        if keys is None:
            keys = paramiko.HostKeys(str(known))
            _KNOWN_HOSTS_PARSED.clear()  # only the newest version is worth keeping
            _KNOWN_HOSTS_PARSED[version] = keys
    return keys


def _policy(name: str, known: Path, accept: bool, accepted: AcceptedKeys | None) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            if not accept:
                raise HostKeyError(
                    name,
                    f"host key for {hostname} is not in {known} "
                    f"(offered {key.get_name()} {fingerprint(key)}); verify it and add it"
                    + hint("--accept-new-host-keys", ", or pass --accept-new-host-keys to trust it on first use"),
                )
            _record_host_key(known, hostname, key)
            if accepted is not None:
                with _KNOWN_HOSTS_LOCK:
                    accepted.entries.append((name, f"{key.get_name()} {fingerprint(key)}"))

    return Policy()


def _record_host_key(known: Path, hostname: str, key: paramiko.PKey) -> None:
    """Append one host key to known_hosts (created 0600, parent 0700), under a lock."""
    with _KNOWN_HOSTS_LOCK:
        known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(known, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _ssh_config_for(address: str, path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    import paramiko

    try:
        cfg = paramiko.SSHConfig.from_path(str(path))
        found = cfg.lookup(address)
    except (OSError, paramiko.SSHException, ValueError):
        return {}
    return {k: v for k, v in found.items() if k in ("port", "identityfile", "proxycommand")}


def _partial(error: HostError, out: bytes | bytearray) -> HostError:
    """Attach what the command printed so far: the caller can tell which of its steps ran."""
    error.partial = bytes(out).decode("utf-8", "replace")
    return error


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
