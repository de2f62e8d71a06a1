"""One HTTP/1.1 exchange and one TCP connection over plain sockets, each within one deadline.

Standard library only (``socket``, ``ssl``, ``threading``). :func:`attempt` resolves, connects,
does the TLS handshake, sends a ``GET`` and reads the response head, every blocking call bounded
by the time left before one deadline, and turns every network outcome into a status or an error
text instead of raising. :func:`tcp_open` connects the same way for the workers' port checks.
The URL checks built on them (options, retries, rounds) are :mod:`keybuzz_fix.checks.http`.
"""

from __future__ import annotations

import socket
import ssl
import time

from keybuzz_fix.hosts.tcp import left as _left
from keybuzz_fix.hosts.tcp import open_connection

# Answers worth another try: the load balancer or the backend may be catching up.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_HEAD = 64 * 1024


def attempt(
    scheme: str, host: str, port: int, path: str, connect_to: str, ctx: ssl.SSLContext | None, timeout: float
) -> tuple[int | None, str, str | None, bool]:
    """Return (status, reason or error, Location, worth retrying) for one request, within ``timeout`` in all.

    One deadline covers the whole attempt: resolving, connecting, the TLS handshake, sending and
    reading the response head. Every blocking call gets only the time left, so a server that
    drips its handshake or its headers a byte at a time cannot stretch it. The body is never read:
    the status and the Location header are all a check needs, and a body may never end.
    """
    deadline = time.monotonic() + timeout
    sock: socket.socket | None = None
    try:
        sock = open_connection(connect_to, port, deadline)
        if scheme == "https":
            assert ctx is not None
            sock.settimeout(_left(deadline))  # the ssl module bounds the whole handshake by this
            sock = ctx.wrap_socket(sock, server_hostname=host)
        sock.settimeout(_left(deadline))
        sock.sendall(_request_bytes(host, port, scheme, path))  # bounded as a whole, not per send
        head = b""
        while True:
            head = _read_head(sock, deadline, head)
            status, reason, headers = parse_head(head)
            if not 100 <= status < 200:  # 1xx heads (103 Early Hints) come before the answer
                break
            head = head[head.index(b"\r\n\r\n") + 4 :]
        return status, reason, headers.get("location"), status in RETRY_STATUSES
    except ssl.SSLCertVerificationError as e:
        return None, f"TLS certificate not trusted: {e.verify_message or e.reason}", None, False
    except ssl.SSLError as e:
        return None, f"TLS handshake failed: {e.reason or e}", None, True
    except _HeadTimeout as e:
        got = f" (got {e.status_line!r}, the headers never ended)" if e.status_line else ""
        return None, f"timed out after {timeout:g} s{got}", None, True
    except TimeoutError:
        return None, f"timed out after {timeout:g} s", None, True
    except ConnectionRefusedError:
        return None, "connection refused", None, True
    except socket.gaierror as e:
        return None, f"cannot resolve {connect_to}: {e.strerror}", None, True
    except BadAnswer as e:
        return None, str(e), None, True
    except OSError as e:
        return None, _os_error(e), None, True
    finally:
        if sock is not None:
            sock.close()


class BadAnswer(Exception):
    """The server's answer is not an HTTP response head."""


class _HeadTimeout(TimeoutError):
    """The deadline passed while the response head was coming in."""

    def __init__(self, status_line: str) -> None:
        super().__init__(status_line)
        self.status_line = status_line


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Parse a response head (status line and headers, up to the blank line) into (status, reason, headers).

    Header names are lower-cased; a repeated header keeps its first value.
    """
    text = head.split(b"\r\n\r\n", 1)[0].decode("iso-8859-1")
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not (len(code) == 3 and code.isascii() and code.isdigit()):
        raise BadAnswer(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    return int(code), reason.strip(), headers


def _read_head(sock: socket.socket, deadline: float, buf: bytes) -> bytes:
    """Read until the blank line that ends a response head (and maybe more); return what was read."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > _MAX_HEAD:
            raise BadAnswer(f"response head longer than {_MAX_HEAD // 1024} KiB")
        try:
            sock.settimeout(_left(deadline))
            chunk = sock.recv(16384)
        except TimeoutError:
            raise _HeadTimeout(_status_line(buf)) from None
        if not chunk:
            raise BadAnswer(
                "connection closed before the response head ended" if buf else "connection closed without an answer"
            )
        buf += chunk
    return buf


def _status_line(buf: bytes) -> str:
    return buf.split(b"\r\n", 1)[0].decode("iso-8859-1")[:80] if b"\r\n" in buf else ""


def _request_bytes(host: str, port: int, scheme: str, path: str) -> bytes:
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    host_header = shown if port == default else f"{shown}:{port}"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: keybuzz-fix\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii", "strict")


def tcp_open(address: str, port: int, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to ``address:port`` opens within ``timeout`` in all, with the evidence."""
    start = time.monotonic()
    try:
        open_connection(address, port, start + timeout).close()
        return True, f"{address}:{port} accepts connections ({(time.monotonic() - start) * 1000:.0f} ms)"
    except TimeoutError:
        return False, f"{address}:{port}: no answer in {timeout:g} s (dropped by a firewall?)"
    except ConnectionRefusedError:
        return False, f"{address}:{port}: connection refused (nothing listens)"
    except OSError as e:
        return False, f"{address}:{port}: {_os_error(e)}"


def _os_error(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or e.__class__.__name__
    return " ".join(str(text).split())[:200]
