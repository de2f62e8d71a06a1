"""Reaching the API server as kubectl does: a kubeconfig, the pod's own ServiceAccount, or a K3s master's kubeconfig.

- ``--kubeconfig FILE``, else ``$KUBECONFIG`` (its files merged, the first to set a value wins),
  else ``~/.kube/config``, else in-cluster config (``KUBERNETES_SERVICE_HOST`` and the
  ServiceAccount token a pod has mounted). The kubernetes client's own loader reads it into its
  ``Configuration`` and builds the urllib3 pool from it, so server, certificate-authority(-data),
  client certificates, token and tokenFile, exec plugins (run again when their token expires),
  ``insecure-skip-tls-verify``, ``tls-server-name`` and ``proxy-url`` (else HTTPS_PROXY /
  NO_PROXY) apply as kubectl applies them. The user entry's ``as``, ``as-groups``, ``as-uid`` and
  ``as-user-extra`` (``--as`` and ``--as-group`` win) become impersonation headers; the context's
  ``namespace`` is offered to the commands (:func:`context_namespace`).
- ``--kubeconfig-from-master servers.tsv``: ``/etc/rancher/k3s/k3s.yaml`` read from the first
  master over a verified SSH session and kept in memory, pointed at that master's private IP on
  6443; when the master is reached through a jump host or a ProxyCommand, the API goes through the
  same SSH connection instead, to the master's own 127.0.0.1:6443 (as ``ssh -L`` would). It is
  written to disk only with ``--save-kubeconfig FILE`` (mode 0600).

Only the :class:`~keybuzz_fix.cluster.client.Endpoint` is built here: the requests go through
:mod:`keybuzz_fix.cluster.client`.
"""

from __future__ import annotations

import builtins
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from keybuzz_fix import storage
from keybuzz_fix.cluster.client import Endpoint, Kube
from keybuzz_fix.errors import ClusterError, HostError, KubeconfigError, UsageError, one_line, redact
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.ssh import Session, open_session
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.inventory import Host, Role, read_nodes

K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
K3S_API_PORT = 6443
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_POOL_SIZE = 16


@dataclass(frozen=True)
class ClusterOptions:
    """How the operator asked to reach the API server."""

    kubeconfig: Path | None = None
    context: str | None = None
    from_master: Path | None = None  # a servers.tsv: read k3s.yaml from the first of its masters that answers
    save_kubeconfig: Path | None = None
    env: str = "prod"
    user: str | None = None
    timeout: float = 30.0
    impersonate: str | None = None  # --as
    impersonate_groups: tuple[str, ...] = ()  # --as-group, repeatable
    namespace: str | None = None  # -n/--namespace

    def __post_init__(self) -> None:
        if self.from_master is None and self.save_kubeconfig is not None:
            raise UsageError("--save-kubeconfig only goes with --kubeconfig-from-master")
        if self.from_master is not None and self.kubeconfig is not None:
            raise UsageError("--kubeconfig and --kubeconfig-from-master exclude each other")
        for option, value in (("--as", self.impersonate), *(("--as-group", g) for g in self.impersonate_groups)):
            if value is not None and (not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value)):
                raise UsageError(f"{option} {value!r} is not a user or group name")


def connect_cluster(options: ClusterOptions, ssh: SshOptions | None = None) -> Kube:
    """Return a connection to the API server, as the options say."""
    flags = (options.impersonate, options.impersonate_groups)
    if options.from_master is None:
        return from_kubeconfig(options.kubeconfig, options.context, options.timeout, impersonate=flags)
    masters = read_nodes(options.from_master, Role.MASTER, options.env, options.user)
    master, session, text, tried = _read_from_masters(masters, ssh or SshOptions())
    try:
        source = f"{master.hostname}:{K3S_KUBECONFIG}" + (f", after {'; '.join(tried)}" if tried else "")
        if options.save_kubeconfig is not None:
            storage.write_private(options.save_kubeconfig.expanduser(), k3s_yaml_for(text, master.private_ip))
        if not session.proxied:
            return from_k3s_yaml(text, master.private_ip, source, options.timeout, impersonate=flags)
        port = session.forward("127.0.0.1", K3S_API_PORT)  # the API as the master itself sees it
        kube = from_k3s_yaml(
            text,
            "127.0.0.1",
            f"{source}, through the SSH connection to {master.hostname}",
            options.timeout,
            port=port,
            impersonate=flags,
            keepalive=session,
        )
    except BaseException:
        session.close()
        raise
    return kube


def _read_from_masters(masters: builtins.list[Host], ssh: SshOptions) -> tuple[Host, Session, str, builtins.list[str]]:
    """Read k3s.yaml from the first master that answers, in servers.tsv's order; say why each one before did not."""
    tried: builtins.list[str] = []
    for master in masters:
        try:
            session = open_session(master, ssh)
        except HostError as e:
            tried.append(f"{master.hostname}: {e.problem}")
            continue
        try:
            text = session.run(f"cat {K3S_KUBECONFIG}").stdout
        except HostError as e:
            session.close()
            tried.append(f"{master.hostname}: {e.problem}")
            continue
        except BaseException:
            session.close()
            raise
        if text.strip():
            return master, session, text, tried
        session.close()
        tried.append(f"{master.hostname}: {K3S_KUBECONFIG} is empty")
    raise ClusterError(f"--kubeconfig-from-master: no master gave {K3S_KUBECONFIG}: {'; '.join(tried)}")


def from_kubeconfig(
    kubeconfig: Path | None = None,
    context: str | None = None,
    timeout: float = 30.0,
    *,
    impersonate: tuple[str | None, tuple[str, ...]] = (None, ()),
) -> Kube:
    """Connect as kubectl would: ``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``, else in-cluster config."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    paths = kubeconfig_paths(kubeconfig)
    if not paths:
        return _in_cluster(timeout, impersonate, context)
    source = str(paths[0])
    secrets = _kubeconfig_secrets(paths)
    used = _check_context(paths, context)
    cfg = client.Configuration()

    def load() -> None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.pathsep.join(map(str, paths)),
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )

    try:
        with _client_errors() as logged:
            load()
    except ConfigException as e:
        raise KubeconfigError(f"{source}: {one_line(redact(str(e), secrets))}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise KubeconfigError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', None) or 'invalid'}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # the client's reading of odd shapes
        raise KubeconfigError(
            f"{source}: not a usable kubeconfig ({e.__class__.__name__}: {one_line(redact(str(e), secrets))})"
        ) from None
    if logged and not cfg.api_key:  # an exec plugin failed: the client only logs it
        raise KubeconfigError(f"{source}: {one_line(redact(logged[-1], secrets))}")
    named = _context(paths, context)
    user = named.get("user_entry") or {}
    reauthorize = None
    if isinstance(user, dict) and any(k in user for k in ("exec", "auth-provider", "tokenFile")):
        reauthorize = _reloader(cfg, load, source, secrets)
    endpoint = _endpoint(
        cfg,
        f"kubeconfig {source}" + (f", context {used}" if used else ""),
        secrets=secrets,
        impersonate=_impersonation(user if isinstance(user, dict) else {}, *impersonate, source=source),
        namespace=named.get("namespace"),
        reauthorize=reauthorize,
    )
    return Kube(endpoint, timeout)


def _in_cluster(timeout: float, impersonate: tuple[str | None, tuple[str, ...]], context: str | None) -> Kube:
    """Connect with the pod's ServiceAccount (KUBERNETES_SERVICE_HOST/PORT, the mounted token and CA)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise KubeconfigError(
            "no kubeconfig found: "
            + hint(
                "--kubeconfig",
                "pass --kubeconfig FILE, set KUBECONFIG, use --kubeconfig-from-master to read it "
                "from a K3s master over SSH, or run in a pod (in-cluster config)",
                "set KUBECONFIG, write ~/.kube/config, or run in a pod (in-cluster config)",
            )
        )
    if context is not None:
        raise UsageError("--context needs a kubeconfig; in a pod there is only the in-cluster config")
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except ConfigException as e:
        raise KubeconfigError(f"in-cluster config ({SERVICE_ACCOUNT}): {one_line(str(e))}") from None
    except OSError as e:
        raise KubeconfigError(f"in-cluster config ({SERVICE_ACCOUNT}): cannot read: {e.strerror}") from None
    endpoint = _endpoint(
        cfg,
        f"in-cluster config, ServiceAccount token {SERVICE_ACCOUNT / 'token'}",
        impersonate=_impersonation({}, *impersonate, source="in-cluster config"),
        namespace=_pod_namespace(),
    )
    return Kube(endpoint, timeout)


def _endpoint(
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
    try:
        pool = rest.RESTClientObject(cfg).pool_manager
    except ImportError as e:  # socks5:// needs PySocks
        raise KubeconfigError(f"{source}: this proxy needs a package that is not installed ({e.name})") from None
    except (ValueError, TypeError) as e:
        raise KubeconfigError(f"{source}: {one_line(redact(str(e), hidden))}") from None

    def authorization() -> str | None:
        try:
            with _client_errors() as logged:
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


def _reloader(cfg: Any, load: Callable[[], None], source: str, secrets: builtins.list[str]) -> Callable[[], bool]:
    """After a 401: read the kubeconfig again (an exec plugin runs again); whether the credentials changed."""
    from kubernetes.config.config_exception import ConfigException

    def reload() -> bool:
        before = dict(cfg.api_key)
        try:
            with _client_errors() as logged:
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
def _client_errors() -> Iterator[builtins.list[str]]:
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


def _impersonation(
    user: Mapping[str, Any], as_user: str | None, as_groups: tuple[str, ...], *, source: str
) -> tuple[tuple[str, str], ...]:
    """The Impersonate-* headers: ``--as``/``--as-group`` over the user entry's ``as`` and ``as-groups``.

    The entry's ``as-uid`` and ``as-user-extra`` come along, as with kubectl.
    """
    name = as_user or _text(user.get("as"))
    groups = list(as_groups) or [g for g in user.get("as-groups") or [] if isinstance(g, str) and g]
    uid = _text(user.get("as-uid"))
    extra = user.get("as-user-extra") or {}
    if not isinstance(extra, dict):
        raise KubeconfigError(f"{source}: as-user-extra must map names to lists of values")
    if not name:
        if groups or uid or extra:
            raise UsageError(
                "impersonating groups, a uid or extras needs a user to impersonate"
                + hint("--as", ": pass --as USER", ": set as in the kubeconfig")
            )
        return ()
    headers = [("Impersonate-User", name), *(("Impersonate-Group", g) for g in groups)]
    if uid:
        headers.append(("Impersonate-Uid", uid))
    for key, values in extra.items():
        for value in values if isinstance(values, list) else [values]:
            headers.append((f"Impersonate-Extra-{quote(str(key), safe='')}", str(value)))
    for header, value in headers:
        if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise KubeconfigError(f"{source}: {header} {value!r} is not a usable name")
    return tuple(headers)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def from_k3s_yaml(
    text: str,
    server_ip: str,
    source: str,
    timeout: float = 30.0,
    *,
    port: int = K3S_API_PORT,
    impersonate: tuple[str | None, tuple[str, ...]] = (None, ()),
    keepalive: Any = None,
) -> Kube:
    """Connect with a K3s ``k3s.yaml`` held in memory, pointed at ``https://server_ip:port``.

    The client key never touches the disk: it is handed to OpenSSL through an anonymous
    in-memory file.
    """
    import base64

    import yaml
    from kubernetes import client

    try:
        data = yaml.safe_load(text)
        cluster = data["clusters"][0]["cluster"]
        user = data["users"][0]["user"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as e:
        raise KubeconfigError(f"{source}: not a K3s kubeconfig ({e.__class__.__name__})") from None
    host = f"[{server_ip}]" if ":" in server_ip else server_ip
    cfg = client.Configuration()
    cfg.host = f"https://{host}:{port}"
    cfg.ca_cert_data = ca
    if keepalive is not None:
        cfg.proxy = None  # a tunnel to this machine's loopback is never proxied
    secrets = []
    token = user.get("token") if isinstance(user, dict) else None
    if token:
        cfg.api_key["BearerToken"] = f"Bearer {token}"
        secrets.append(str(token))
    if "client-certificate-data" in user and "client-key-data" in user:
        cfg.cert_file = _memfile("cert", base64.b64decode(user["client-certificate-data"]))
        cfg.key_file = _memfile("key", base64.b64decode(user["client-key-data"]))
    endpoint = _endpoint(
        cfg,
        source,
        secrets=secrets,
        impersonate=_impersonation({}, *impersonate, source=source),
        keepalive=keepalive,
    )
    return Kube(endpoint, timeout)


def k3s_yaml_for(text: str, server_ip: str) -> str:
    """Return the k3s.yaml text pointed at ``server_ip`` (for ``--save-kubeconfig``)."""
    import yaml

    data = yaml.safe_load(text)
    host = f"[{server_ip}]" if ":" in server_ip else server_ip
    for c in data.get("clusters", []):
        c["cluster"]["server"] = f"https://{host}:{K3S_API_PORT}"
    return str(yaml.safe_dump(data, sort_keys=False))


def kubeconfig_paths(kubeconfig: Path | None) -> builtins.list[Path]:
    """The kubeconfig files kubectl would read (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``); [] if none."""
    if kubeconfig is not None:
        path = kubeconfig.expanduser()
        if not path.is_file():
            raise KubeconfigError(f"--kubeconfig {kubeconfig}: no such file")
        return [path]
    env = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p] or [Path("~/.kube/config").expanduser()]
    return [p for p in paths if p.is_file()]


def context_namespace(options: ClusterOptions) -> str | None:
    """The namespace kubectl would use by default: the context's, or the pod's in cluster (None: not set).

    Reads files only; nothing for --kubeconfig-from-master (k3s.yaml names no namespace).
    """
    if options.from_master is not None:
        return None
    try:
        paths = kubeconfig_paths(options.kubeconfig)
    except KubeconfigError:  # said when it connects
        return None
    if not paths:
        return _pod_namespace() if os.environ.get("KUBERNETES_SERVICE_HOST") else None
    return _context(paths, options.context).get("namespace")


def _pod_namespace() -> str | None:
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _context(paths: builtins.list[Path], context: str | None) -> dict[str, Any]:
    """The context in use (``--context`` or current-context; files merged as kubectl merges them).

    Returns its namespace and its user entry.
    """
    docs = [_yaml(p) for p in paths]
    name = context or next((d.get("current-context") for d in docs if d.get("current-context")), None)

    def entry(kind: str, wanted: Any) -> Any:
        for doc in docs:
            for item in doc.get(kind) or []:
                if isinstance(item, dict) and item.get("name") == wanted:
                    return item.get(kind[:-1])
        return None

    ctx = entry("contexts", name) if name else None
    if not isinstance(ctx, dict):
        return {}
    namespace = ctx.get("namespace")
    return {
        "namespace": namespace if isinstance(namespace, str) and namespace else None,
        "user_entry": entry("users", ctx.get("user")),
    }


def _check_context(paths: builtins.list[Path], context: str | None) -> str | None:
    """Return the context the run uses; refuse a ``--context`` none of the files has, naming them and their contexts."""
    docs = [_yaml(p) for p in paths]
    if context is None:
        return next((d["current-context"] for d in docs if isinstance(d.get("current-context"), str)), None)
    names: builtins.list[str] = []
    for doc in docs:
        entries = doc.get("contexts")
        for item in entries if isinstance(entries, list) else []:
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name not in names:
                names.append(name)
    if context not in names and any(docs):  # an unreadable file: the client's own reading says what is wrong
        where = os.pathsep.join(map(str, paths))
        raise KubeconfigError(f"no context {context} in {where}; contexts: {', '.join(names) or '(none)'}")
    return context


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _memfile(name: str, content: bytes) -> str:
    """Return a path to ``content`` that lives only in memory (memfd), or a private temp file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(f"keybuzz-fix-{name}", 0)
        os.write(fd, content)
        return f"/proc/self/fd/{fd}"
    fd, path = tempfile.mkstemp(prefix="keybuzz-fix-")  # pragma: no cover - non-Linux
    os.write(fd, content)
    os.close(fd)
    return path


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


def _kubeconfig_secrets(paths: builtins.list[Path]) -> builtins.list[str]:
    """Return every string under the ``users`` entries of the kubeconfig files: tokens, passwords, keys."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 4:
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, builtins.list):
            for v in value:
                walk(v)

    for path in paths:
        users = _yaml(path).get("users")
        for entry in users if isinstance(users, builtins.list) else []:
            walk(entry.get("user") if isinstance(entry, dict) else entry)
    return sorted(found, key=len, reverse=True)
