"""HTTP(S) and TCP checks for the scorecard: the public URLs and the workers' ports; their options.

Standard library only (``ssl``, ``socket``). Every attempt ends within its timeout whatever the
server does (one deadline for resolving, connecting, the TLS handshake and the response head; the
body is never read), never raises for a network outcome, and says what happened: the status (a
504 is shown as 504) or the error. ``--resolve HOST:PORT:ADDR`` works as in curl: the
connection goes to ADDR while the Host header and TLS server name stay HOST, so a load balancer
or a lab address can be checked under the real names. TLS is always verified, against the system
CAs or ``--ca-file``, unless ``--insecure`` is given explicitly. Proxy variables are not used.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keybuzz_fix.errors import UsageError

# Answers worth another try: the load balancer or the backend may be catching up.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class HttpOptions:
    """How the URL checks reach and trust the sites."""

    timeout: float = 10.0  # per attempt
    retries: int = 2  # further attempts after a failed one
    retry_delay: float = 0.5
    resolve: Mapping[tuple[str, int], str] = field(default_factory=dict)
    ca_file: Path | None = None
    insecure: bool = False
    settle: float = 0.0  # seconds during which a failed round is tried again, beyond ``retries`` (just-applied routes)


@dataclass(frozen=True)
class HttpAnswer:
    """The outcome of one URL probe (its last attempt)."""

    url: str
    status: int | None  # None: no HTTP answer
    reason: str  # the status text, or the error
    attempts: int
    seconds: float
    address: str  # where the connection went (ADDR:PORT), or the host name
    location: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the URL answered 200."""
        return self.status == 200

    def describe(self) -> str:
        """Return the evidence line (``504 Gateway Time-out via 198.18.0.30:443, 3 attempts, 6.1 s``)."""
        what = f"{self.status} {self.reason}".strip() if self.status is not None else f"error: {self.reason}"
        if self.location:
            what += f" → {self.location}"
        tries = f"{self.attempts} attempts" if self.attempts > 1 else "1 attempt"
        return f"{what} via {self.address} ({tries}, {self.seconds:.1f} s)"


def parse_resolve(values: Sequence[str]) -> dict[tuple[str, int], str]:
    """Parse curl-style ``--resolve HOST:PORT:ADDR`` values (ADDR an IP address, IPv6 in brackets or not)."""
    out: dict[tuple[str, int], str] = {}
    for value in values:
        host, sep1, rest = value.partition(":")
        port, sep2, addr = rest.partition(":")
        example = "e.g. platform.keybuzz.io:443:10.0.0.5"
        if not (sep1 and sep2 and host and port and addr):
            raise UsageError(f"--resolve {value!r}: expected HOST:PORT:ADDR, {example}")
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise UsageError(f"--resolve {value!r}: {port!r} is not a port number (1–65535)")
        try:
            ip = ipaddress.ip_address(addr.removeprefix("[").removesuffix("]"))
        except ValueError:
            raise UsageError(f"--resolve {value!r}: {addr!r} is not an IP address, {example}") from None
        key = (host.lower(), int(port))
        if key in out and out[key] != str(ip):
            raise UsageError(f"--resolve: {host}:{port} is given twice, with different addresses")
        out[key] = str(ip)
    return out


def split_url(url: str) -> tuple[str, str, int, str]:
    """Return (scheme, host, port, path) of an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"{url!r}: invalid port") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname.lower(), port, path


def checked_http_options(
    timeout: float, retries: int, resolve: Sequence[str], ca_file: Path | None, insecure: bool, urls: Sequence[str]
) -> HttpOptions:
    """Check the URL options (``--url-timeout``, ``--retries``, ``--resolve``, ``--ca-file``, ``--insecure``)."""
    if not 0 < timeout <= 600:
        raise UsageError(f"--url-timeout must be more than 0 and at most 600 seconds, got {timeout:g}")
    if not 0 <= retries <= 10:
        raise UsageError(f"--retries must be between 0 and 10, got {retries}")
    if insecure and ca_file is not None:
        raise UsageError("--insecure and --ca-file exclude each other")
    if ca_file is not None and not ca_file.expanduser().is_file():
        raise UsageError(f"--ca-file {ca_file}: no such file")
    mapping = parse_resolve(resolve)
    targets = {split_url(u)[1:3] for u in urls}
    unused = [f"{h}:{p}" for h, p in mapping if (h, p) not in targets]
    if unused:
        shown = ", ".join(f"{h}:{p}" for h, p in sorted(targets))
        raise UsageError(f"--resolve {', '.join(unused)} matches none of the URLs checked ({shown})")
    ca = ca_file.expanduser() if ca_file else None
    return HttpOptions(timeout=timeout, retries=retries, resolve=mapping, ca_file=ca, insecure=insecure)


def tls_context(options: HttpOptions) -> ssl.SSLContext:
    """Return the TLS context the URL checks use (verified unless ``insecure``)."""
    if options.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if options.ca_file is not None:
        try:
            return ssl.create_default_context(cafile=str(options.ca_file))
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"--ca-file {options.ca_file}: not a readable PEM CA bundle ({e})") from None
    return ssl.create_default_context()


def http_get(url: str, options: HttpOptions, ctx: ssl.SSLContext | None = None) -> HttpAnswer:
    """GET ``url`` with retries; return its status or the error, never raise for a network outcome."""
    scheme, host, port, path = split_url(url)
    addr = options.resolve.get((host, port))
    shown = _where(url, options)
    if scheme == "https" and ctx is None:
        ctx = tls_context(options)
    start = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        status, reason, location, retry = _attempt(scheme, host, port, path, addr or host, ctx, options.timeout)
        if not retry or attempts > options.retries:
            return HttpAnswer(url, status, reason, attempts, time.monotonic() - start, shown, location)
        time.sleep(options.retry_delay)


@dataclass(frozen=True)
class HttpRound:
    """The outcome of a URL check: ``count`` requests at once, each on its own connection, in its last round.

    A load balancer spreads new connections over the workers, and each worker's path to the app is
    its own (kube-proxy, then ingress-nginx to an app on any worker): only every request answering
    proves every path works. ``rounds`` counts how many rounds it took (a failed round is tried again).
    """

    url: str
    answers: tuple[HttpAnswer, ...]
    rounds: int
    seconds: float
    address: str

    @property
    def ok(self) -> bool:
        """Whether every request of the last round answered 200."""
        return bool(self.answers) and all(a.ok for a in self.answers)

    def describe(self) -> str:
        """Return the evidence: ``8/10 answered 200 via 198.18.0.40:443; 2 × 504 Gateway Time-out (1 round, 1.2 s)``."""
        good = sum(a.ok for a in self.answers)
        failures: dict[str, int] = {}
        for a in self.answers:
            if not a.ok:
                what = f"{a.status} {a.reason}".strip() if a.status is not None else f"error: {a.reason}"
                if a.location:
                    what += f" → {a.location}"
                failures[what] = failures.get(what, 0) + 1
        text = f"{good}/{len(self.answers)} answered 200 via {self.address}"
        if failures:
            text += "; " + ", ".join(
                f"{n} × {what}" for what, n in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))
            )
        rounds = "1 round" if self.rounds == 1 else f"{self.rounds} rounds"
        return f"{text} ({rounds}, {self.seconds:.1f} s)"


def http_round(url: str, options: HttpOptions, ctx: ssl.SSLContext | None = None, count: int = 1) -> HttpRound:
    """GET ``url`` ``count`` times at once, each request on a new connection; try a failed round again.

    A round is tried again up to ``options.retries`` times and, while ``options.settle`` seconds
    have not passed since the first round, as often as it takes. Each request is one attempt
    bounded by ``options.timeout``: a round lasts about that long at most.
    """
    if url.startswith("https:") and ctx is None:
        ctx = tls_context(options)
    shown = _where(url, options)
    single = HttpOptions(
        timeout=options.timeout, retries=0, resolve=options.resolve, ca_file=options.ca_file, insecure=options.insecure
    )
    start = time.monotonic()
    rounds = 0
    with ThreadPoolExecutor(max_workers=max(1, min(count, 32)), thread_name_prefix="url") as pool:
        while True:
            rounds += 1
            answers = tuple(pool.map(lambda _: http_get(url, single, ctx), range(count)))
            result = HttpRound(url, answers, rounds, time.monotonic() - start, shown)
            settling = time.monotonic() - start < options.settle
            if result.ok or (rounds > options.retries and not settling):
                return result
            time.sleep(options.retry_delay)


def _where(url: str, options: HttpOptions) -> str:
    """Where a request for ``url`` connects: ``ADDR:PORT`` under ``--resolve``, else ``host:port``."""
    _scheme, host, port, _path = split_url(url)
    addr = options.resolve.get((host, port))
    return f"{addr}:{port}" if addr and ":" not in addr else f"[{addr}]:{port}" if addr else f"{host}:{port}"


def _attempt(
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


def _left(deadline: float) -> float:
    """Return the seconds left before ``deadline``; raise TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


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
    worker.join(_left(deadline))
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
            sock.settimeout(_left(deadline))
            sock.connect((address, port))
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as e:
            sock.close()
            error = e
    raise error


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
