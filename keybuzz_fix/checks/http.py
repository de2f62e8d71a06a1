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
from concurrent.futures import ThreadPoolExecutor
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
