"""The tool's exceptions and the exit codes they map to, in one place.

Every error a user can cause or meet derives from :class:`KeybuzzFixError`; the CLI's single
top-level handler prints ``keybuzz-fix: error: <message>`` and exits with ``exit_code``. A run
that ends without an error returns a result object (an :class:`Outcome`); :meth:`ExitCode.of`
is the one rule that turns it into an exit code.
"""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path
from typing import Protocol, runtime_checkable


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    FAILURE = 1  # an operation failed, a host failed, or the scorecard is below threshold
    USAGE = 2  # bad command line, bad input file, bad configuration
    PARTIAL = 3  # `all`: every step ran but the scorecard is below 100 %
    ABORTED = 4  # the operator declined the confirmation
    INTERRUPTED = 130  # Ctrl-C

    @classmethod
    def of(cls, outcome: Outcome | None) -> ExitCode:
        """Return the exit code of a run that ended with ``outcome`` (``None``: a command that only shows)."""
        if outcome is None:
            return cls.OK
        if outcome.failed:
            return cls.FAILURE
        return cls.PARTIAL if isinstance(outcome, PartialOutcome) and outcome.partial else cls.OK

    @classmethod
    def detailed(cls, outcome: Outcome | None) -> int:
        """Return the ``--exit-code`` status of a run: 0 nothing to do, 2 changes pending, 1 failed.

        A drift check in CI or cron (``terraform plan -detailed-exitcode``): with ``--exit-code``
        every error is 1 (:data:`DETAILED_ERROR`), so 2 means only "changes pending".
        """
        if outcome is None:
            return int(cls.OK)
        if outcome.failed:
            return DETAILED_ERROR
        return CHANGES_PENDING if isinstance(outcome, PendingOutcome) and outcome.changes_pending else int(cls.OK)


DETAILED_ERROR = 1  # --exit-code: any error (a bad command line too)
CHANGES_PENDING = 2  # --exit-code: the run planned changes it did not make (--dry-run, --from-file)


class Outcome(Protocol):
    """The result object a flow returns: it says whether the run failed, the CLI decides the exit code."""

    @property
    def failed(self) -> bool:
        """Whether the run failed: a host failed, a check is below its threshold, the overlay is unhealthy."""
        ...


@runtime_checkable
class PartialOutcome(Outcome, Protocol):
    """A result that can also be a partial success (``all``: every step ran, the score is below 100 %)."""

    @property
    def partial(self) -> bool:
        """Whether the run succeeded only in part."""
        ...


@runtime_checkable
class PendingOutcome(Outcome, Protocol):
    """A result that knows whether changes are planned but not made (a dry run; ``--exit-code`` reads it)."""

    @property
    def changes_pending(self) -> bool:
        """Whether the run left changes to make (a dry run that found work)."""
        ...


class KeybuzzFixError(Exception):
    """Root of every error the tool reports without a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.problem = message  # what went wrong, without the host or file it happened on

    def __str__(self) -> str:
        return self.message


class UsageError(KeybuzzFixError):
    """A command-line value is invalid."""

    exit_code = ExitCode.USAGE


class InputError(KeybuzzFixError):
    """An input file is missing or malformed; names ``path:line`` when it can."""

    exit_code = ExitCode.USAGE

    def __init__(self, path: str, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class ConfigError(InputError):
    """The configuration file (or the shipped defaults) is invalid."""


def read_input(path: Path, error: type[InputError] = InputError, *, missing: str = "no such file") -> str:
    """Return a UTF-8 input file's text; a missing or unreadable file is ``error`` naming it, not a traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(str(path), missing) from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(str(path), f"cannot read: {why_unreadable(e)}") from None


def why_unreadable(e: OSError | UnicodeDecodeError) -> str:
    """Say in words why a text file could not be read (a directory, no permission, not UTF-8)."""
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
    if isinstance(e, IsADirectoryError):
        return "is a directory, expected a file"
    return e.strerror or e.__class__.__name__


def one_line(text: str) -> str:
    """Return ``text`` on one line, at most 300 characters (for an error message)."""
    return " ".join(text.split())[:300]


def redact(text: str, secrets: list[str]) -> str:
    """Replace each secret in ``text``, and cut the object dumps the kubernetes client appends to its errors."""
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text.split("{'", 1)[0].rstrip(" /") if "{'" in text else text


_CREDENTIAL = re.compile(
    r"(?i)(client-key-data|client-certificate-data|certificate-authority-data|token|password|secret"
    r"|authorization)(\"?\s*[:=]\s*\"?)(bearer\s+)?[^\s\",}]+"
)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S)


def redact_credentials(text: str) -> str:
    """Replace what looks like a credential (a kubeconfig's keys, a token, a password, a private key) in a trace."""
    text = _PRIVATE_KEY.sub("<redacted private key>", text)
    return _CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)


class Aborted(KeybuzzFixError):
    """The operator answered no to a confirmation."""

    exit_code = ExitCode.ABORTED


class HostError(KeybuzzFixError):
    """Something failed on one host; other hosts carry on."""

    partial: str = ""  # what a remote command printed before the connection was lost or its time ran out

    def __init__(self, host: str, problem: str) -> None:
        super().__init__(f"{host}: {problem}")
        self.host = host
        self.problem = problem


class HostUnreachable(HostError):
    """TCP connect or SSH handshake failed or timed out."""


class ConnectionLost(HostUnreachable):
    """The connection to a host went after a command was sent: whether the command ran, or finished, is unknown."""

    def __init__(self, host: str, command: str, why: str) -> None:
        super().__init__(host, f"connection lost while `{command}` ran: {why}")
        self.command = command
        self.why = why


class ChangeUnknown(HostError):
    """A change was sent to a host and no answer for it came back.

    The connection went, its time ran out, or the shell running it was killed.

    Whether it was made is unknown until the host is read again; the run fails.
    """

    def __init__(self, host: str, problem: str, done: tuple[str, ...] = ()) -> None:
        super().__init__(host, problem)
        self.done = done  # the changes known to be made before the answers stopped


class HostKeyError(HostError):
    """The host key is unknown or differs from known_hosts."""


class AuthError(HostError):
    """SSH authentication was refused, or sudo wants a password."""


class RemoteCommandError(HostError):
    """A remote command exited non-zero or timed out."""

    def __init__(self, host: str, command: str, status: int | None, output: str) -> None:
        detail = output.strip().splitlines()[-1] if output.strip() else "no output"
        what = "timed out" if status is None else f"exited {status}"
        super().__init__(host, f"`{command}` {what}: {detail}")
        self.command = command
        self.status = status
        self.output = output


class MissingTool(HostError):
    """A tool the operation needs is not installed on the host."""


class ClusterError(KeybuzzFixError):
    """The Kubernetes API could not be reached or refused a call."""


class KubeconfigError(ClusterError):
    """No usable kubeconfig."""

    exit_code = ExitCode.USAGE


class Forbidden(ClusterError):
    """RBAC denied a call; names the verb, resource and namespace."""

    def __init__(self, message: str, permission: str = "") -> None:
        super().__init__(message)
        self.permission = permission  # e.g. "list ingresses.networking.k8s.io in namespace keybuzz"


class Conflict(ClusterError):
    """Server-side apply found a field owned by another manager."""


class NotReady(ClusterError):
    """Workloads did not become ready in time."""


class PlanRefused(KeybuzzFixError):
    """The plan cannot be carried out safely (port collision, unmovable port, …)."""


class Held(PlanRefused):
    """Another run is changing the same cluster or host: a refusal (exit 1), with nothing changed."""


class Interrupted(KeybuzzFixError):
    """Ctrl-C: stop cleanly and say what was done."""

    exit_code = ExitCode.INTERRUPTED


class Unanswered(Interrupted):
    """Ctrl-C (or the end of input) at the confirmation: nothing changed, since nothing changes before the answer."""
