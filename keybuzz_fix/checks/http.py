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
import ssl
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from keybuzz_fix.checks.exchange import attempt
from keybuzz_fix.errors import UsageError


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
        status, reason, location, retry = attempt(scheme, host, port, path, addr or host, ctx, options.timeout)
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
