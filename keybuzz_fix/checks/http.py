"""HTTP(S) and TCP checks for the scorecard: the public URLs and the workers' ports; their options.

Standard library only (``http.client``, ``ssl``, ``socket``). Every check is bounded by its
timeout and retries, never raises for a network outcome, and says what happened: the status
(a 504 is shown as 504) or the error. ``--resolve HOST:PORT:ADDR`` works as in curl: the
connection goes to ADDR while the Host header and TLS server name stay HOST, so a load balancer
or a lab address can be checked under the real names. TLS is always verified, against the system
CAs or ``--ca-file``, unless ``--insecure`` is given explicitly. Proxy variables are not used.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from keybuzz_fix.errors import UsageError

# Answers worth another try: the load balancer or the backend may be catching up.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class HttpOptions:
    """How the URL checks reach and trust the sites."""

    timeout: float = 10.0  # per attempt
    retries: int = 2  # further attempts after a failed one
    retry_delay: float = 0.5
    resolve: Mapping[tuple[str, int], str] = field(default_factory=dict)
    ca_file: Path | None = None
    insecure: bool = False


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
    shown = f"{addr}:{port}" if addr and ":" not in addr else f"[{addr}]:{port}" if addr else f"{host}:{port}"
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


def _attempt(
    scheme: str, host: str, port: int, path: str, connect_to: str, ctx: ssl.SSLContext | None, timeout: float
) -> tuple[int | None, str, str | None, bool]:
    """Return (status, reason or error, Location, worth retrying) for one request."""
    deadline = time.monotonic() + timeout
    sock: socket.socket | None = None
    conn: http.client.HTTPConnection | None = None
    try:
        sock = socket.create_connection((connect_to, port), timeout=timeout)
        if scheme == "https":
            assert ctx is not None
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock = ctx.wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock  # already connected (to ADDR), with SNI = host
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        conn.request("GET", path, headers={"User-Agent": "keybuzz-fix", "Accept": "*/*", "Connection": "close"})
        resp = conn.getresponse()
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        resp.read(_MAX_BODY)
        return resp.status, resp.reason, resp.getheader("Location"), resp.status in RETRY_STATUSES
    except ssl.SSLCertVerificationError as e:
        return None, f"TLS certificate not trusted: {e.verify_message or e.reason}", None, False
    except ssl.SSLError as e:
        return None, f"TLS handshake failed: {e.reason or e}", None, True
    except TimeoutError:
        return None, f"timed out after {timeout:g} s", None, True
    except ConnectionRefusedError:
        return None, "connection refused", None, True
    except socket.gaierror as e:
        return None, f"cannot resolve {connect_to}: {e.strerror}", None, True
    except (http.client.HTTPException, OSError) as e:
        return None, _os_error(e), None, True
    finally:
        if conn is not None:
            conn.close()
        elif sock is not None:
            sock.close()


def tcp_open(address: str, port: int, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to ``address:port`` opens, with the evidence."""
    start = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout):
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
