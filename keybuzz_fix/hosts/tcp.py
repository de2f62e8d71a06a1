"""A TCP connection within one deadline: the name lookup, then each address in the time left.

The system resolver has no timeout of its own (``getaddrinfo`` may wait tens of seconds on a
resolver that never answers), so the lookup runs aside and the caller stops waiting at the
deadline. Used by the URL and port checks (:mod:`keybuzz_fix.checks.exchange`) and by SSH for a
host whose ``HostName`` is a name (:mod:`keybuzz_fix.hosts.sshconnect`).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any


def left(deadline: float) -> float:
    """Return the seconds left before ``deadline``; raise TimeoutError when none are."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


def resolve(host: str, port: int, deadline: float) -> list[tuple[int, str]]:
    """Return (family, address) for ``host``, within the deadline (the system resolver has no timeout of its own)."""
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]
    except ValueError:
        pass
    found: list[Any] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)

    worker = threading.Thread(target=lookup, name="resolve", daemon=True)  # left behind if it never ends
    worker.start()
    worker.join(left(deadline))
    if not found:
        raise TimeoutError
    if isinstance(found[0], OSError):
        raise found[0]
    return [(family, str(sockaddr[0])) for family, _t, _p, _c, sockaddr in found[0]]


def open_connection(host: str, port: int, deadline: float) -> socket.socket:
    """Connect to ``host:port`` before the deadline, trying each address in the time left."""
    error: OSError = TimeoutError()
    for family, address in resolve(host, port, deadline):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(left(deadline))
            sock.connect((address, port))
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as e:
            sock.close()
            error = e
    raise error
