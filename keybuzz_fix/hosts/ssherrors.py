"""Why an SSH connection failed, in the tool's words rather than paramiko's (``[Errno None] Unable to connect…``).

The errno of a socket, paramiko's NoValidConnectionsError and its banner errors become one short
clause for a one-line host error; paramiko's own log is kept off stderr.
"""

from __future__ import annotations

import errno
import logging
import os
import socket


def _quiet_paramiko() -> None:
    """Keep paramiko's log off stderr: the host's error already says what went wrong, in one line.

    Its transport thread logs a traceback when a slow host's socket is closed under it, and Python
    prints log records nobody handles.
    """
    log = logging.getLogger("paramiko")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False


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
