"""Whether a host still answers while its command is quiet: an SSH-level keepalive with a deadline.

A command that prints nothing for a while may be slow (``ufw reload`` takes seconds) or its host
may be gone (a link down answers nothing, not even a reset). Only the second should end the wait
early. While the command's channel is quiet, :class:`Liveness` sends a global request
(``keepalive@openssh.com``, as ``ssh -o ServerAliveInterval`` does) every ``interval`` seconds;
sshd answers it at once, whatever the command does. A host from which nothing at all — channel
data or such an answer — has come for ``silence`` seconds is declared lost. paramiko's own
keepalive only sends; its blocking ``global_request`` has no deadline, so it runs in a thread of
its own, which ends when the answer comes or when the lost connection is closed.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paramiko

KEEPALIVE = "keepalive@openssh.com"  # any name will do: sshd answers an unknown request with a failure


class Liveness:
    """When the host was last heard from on one connection, and whether its silence has lasted too long."""

    def __init__(self, transport: paramiko.Transport, silence: float, interval: float = 1.0) -> None:
        self.silence = silence
        self._transport = transport
        self._interval = min(interval, silence / 2)
        self._heard = time.monotonic()
        self._answered: float | None = None
        self._probe: threading.Thread | None = None

    def heard(self) -> None:
        """Note that the host sent something (channel data)."""
        self._heard = time.monotonic()

    def lost(self) -> bool:
        """Whether nothing came from the host for ``silence`` seconds; asks it (a keepalive) once it is quiet."""
        now = time.monotonic()
        if self._probe is not None and not self._probe.is_alive():
            self._probe = None
            if self._answered is not None:
                self._heard = max(self._heard, self._answered)
        if now - self._heard >= self.silence:
            return True
        if self._probe is None and now - self._heard >= self._interval:
            self._answered = None
            self._probe = threading.Thread(target=self._ask, name="ssh-keepalive", daemon=True)
            self._probe.start()
        return False

    def _ask(self) -> None:
        """Send one keepalive and wait for its answer (an answer, even a refusal, means the host is there)."""
        import paramiko

        try:
            self._transport.global_request(KEEPALIVE, wait=True)
        except (paramiko.SSHException, OSError, EOFError):
            return
        if self._transport.is_active():  # it returns at once, unanswered, when the connection goes
            self._answered = time.monotonic()
