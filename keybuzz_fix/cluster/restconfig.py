"""The :class:`~keybuzz_fix.cluster.rest.Endpoint` built from a kubernetes client ``Configuration``.

Like client-go's ``rest.Config``: the server URL (checked: http(s), no credentials in it), TLS (the CA
and client certificate loaded once, so a bad one is named now), the proxy (``proxy-url``, else
HTTPS_PROXY / NO_PROXY), the urllib3 pool the kubernetes client builds from all that, and the
credentials asked of the Configuration for each request (exec plugins and token files refreshed;
after a 401, the kubeconfig read again). What the kubernetes client only logs (a failed exec plugin)
is collected and raised as the tool's error.
"""

from __future__ import annotations

import builtins
import logging
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from keybuzz_fix.cluster.rest import Endpoint
from keybuzz_fix.errors import KubeconfigError, one_line, redact

_POOL_SIZE = 16


def endpoint_from(
    cfg: Any,
    source: str,
    *,
    secrets: builtins.list[str] | tuple[str, ...] = (),
    impersonate: tuple[tuple[str, str], ...] = (),
    namespace: str | None = None,
    reauthorize: Callable[[], bool] | None = None,
    keepalive: Any = None,
) -> Endpoint:
    """Build the endpoint from a kubernetes ``Configuration``: its pool, and its credentials, asked for each request."""
    from kubernetes.client import rest
    from kubernetes.config.config_exception import ConfigException

    server = _server_url(cfg.host, source)
    _check_tls(cfg, source)
    cfg.connection_pool_maxsize = _POOL_SIZE
    proxy = cfg.proxy if cfg.proxy and not rest.should_bypass_proxies(server, cfg.no_proxy or "") else None
    hidden = list(secrets)
    if proxy:
        parts = urlsplit(proxy)
        if parts.password:
            hidden.append(parts.password)
        source += f", proxy {_without_credentials(proxy)}"
    if not cfg.verify_ssl:
        # Said once, where the cluster is named (the plan's target, the prompt), instead of urllib3's
        # InsecureRequestWarning on every request.
        source += ", TLS not verified (insecure-skip-tls-verify)"
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    try:
        pool = rest.RESTClientObject(cfg).pool_manager
    except ImportError as e:  # socks5:// needs PySocks
        raise KubeconfigError(f"{source}: this proxy needs a package that is not installed ({e.name})") from None
    except (ValueError, TypeError) as e:
        raise KubeconfigError(f"{source}: {one_line(redact(str(e), hidden))}") from None

    def authorization() -> str | None:
        try:
            with client_errors() as logged:
                value = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        except (ConfigException, OSError, ValueError, KeyError, TypeError) as e:
            raise KubeconfigError(
                f"{source}: cannot refresh the credentials: {one_line(redact(str(e), hidden))}"
            ) from None
        if logged:  # a refresh (an exec plugin run again) failed; the client only logs it
            raise KubeconfigError(f"{source}: cannot refresh the credentials: {one_line(redact(logged[-1], hidden))}")
        if not value:
            return None
        value = str(value)
        return value if value.split(" ", 1)[0].lower() in ("bearer", "basic") else f"Bearer {value}"

    return Endpoint(
        server=server,
        pool=pool,
        source=source,
        authorization=authorization,
        reauthorize=reauthorize,
        impersonate=impersonate,
        namespace=namespace,
        secrets=tuple(hidden),
        keepalive=keepalive,
    )


def reloader(cfg: Any, load: Callable[[], None], source: str, secrets: builtins.list[str]) -> Callable[[], bool]:
    """After a 401: read the kubeconfig again (an exec plugin runs again); whether the credentials changed."""
    from kubernetes.config.config_exception import ConfigException

    def reload() -> bool:
        before = dict(cfg.api_key)
        try:
            with client_errors() as logged:
                load()
            if logged:
                raise ConfigException(logged[-1])
        except (ConfigException, OSError, ValueError, KeyError, TypeError) as e:
            raise KubeconfigError(
                f"{source}: cannot refresh the credentials: {one_line(redact(str(e), secrets))}"
            ) from None
        return dict(cfg.api_key) != before

    return reload


class _ClientLog(logging.Handler):
    """What the kubernetes client logs as an error while we wait on it (an exec plugin's failure: it swallows it)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        records = getattr(self.local, "records", None)
        if records is not None:
            records.append(record.getMessage())


_CLIENT_LOG = _ClientLog()


@contextmanager
def client_errors() -> Iterator[builtins.list[str]]:
    """Collect the errors the kubernetes client logs in this thread meanwhile (instead of printing them)."""
    root = logging.getLogger()
    if _CLIENT_LOG not in root.handlers:
        root.addHandler(_CLIENT_LOG)  # also keeps logging.error() from adding a stderr handler of its own
    records: builtins.list[str] = []
    _CLIENT_LOG.local.records = records
    try:
        yield records
    finally:
        _CLIENT_LOG.local.records = None


def _check_tls(cfg: Any, source: str) -> None:
    """Load the CA and the client certificate once, so that a bad one is named now (not as an unreachable API)."""
    ctx = ssl.create_default_context()
    if cfg.ssl_ca_cert or cfg.ca_cert_data:
        try:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert, cadata=cfg.ca_cert_data)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise KubeconfigError(f"{source}: cannot load the certificate authority: {one_line(str(e))}") from None
    if cfg.cert_file and cfg.key_file:
        try:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (ssl.SSLError, OSError) as e:
            raise KubeconfigError(f"{source}: cannot load the client certificate: {e}") from None


def _server_url(url: str, source: str) -> str:
    """Check a kubeconfig's server URL: http(s) with a host, and no credentials in it (never echoed)."""
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if "@" in authority:
        raise KubeconfigError(
            f"{source}: the server URL carries credentials (user:password@); put them in "
            "the kubeconfig's user entry instead"
        )
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("https", "http") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # a port that is not a number, or out of range
        ok = False
    if not ok:
        raise KubeconfigError(f"{source}: server {one_line(url)!r} is not an https:// or http:// URL")
    return url.rstrip("/")


def _without_credentials(url: str) -> str:
    """A proxy URL as it may be shown: no user or password."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(a proxy URL that cannot be read)"
