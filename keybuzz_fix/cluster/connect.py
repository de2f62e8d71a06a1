"""Reaching the API server: a kubeconfig, or the K3s kubeconfig read from the first master over SSH.

Kubeconfig files are read with the kubernetes client's own loader (contexts, exec plugins,
tokens), which only builds the :class:`~keybuzz_fix.cluster.client.Endpoint`: the requests go
through :mod:`keybuzz_fix.cluster.client`. Operators who only have SSH to the masters pass
``--kubeconfig-from-master servers.tsv``: the file ``/etc/rancher/k3s/k3s.yaml`` is read over a
verified SSH session, kept in memory, and pointed at that master's private IP on 6443. It is
written to disk only with ``--save-kubeconfig FILE`` (mode 0600).
"""

from __future__ import annotations

import builtins
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keybuzz_fix import storage
from keybuzz_fix.cluster.client import Endpoint, Kube
from keybuzz_fix.errors import ClusterError, HostError, KubeconfigError, UsageError, one_line, redact
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.ssh import SshOptions, connect
from keybuzz_fix.inventory import Host, Role, read_nodes

K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"


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

    def __post_init__(self) -> None:
        if self.from_master is None and self.save_kubeconfig is not None:
            raise UsageError("--save-kubeconfig only goes with --kubeconfig-from-master")
        if self.from_master is not None and self.kubeconfig is not None:
            raise UsageError("--kubeconfig and --kubeconfig-from-master exclude each other")


def connect_cluster(options: ClusterOptions, ssh: SshOptions | None = None) -> Kube:
    """Return a connection to the API server, as the options say."""
    if options.from_master is None:
        return from_kubeconfig(options.kubeconfig, options.context, options.timeout)
    master, text, tried = _read_from_masters(
        read_nodes(options.from_master, Role.MASTER, options.env, options.user), ssh
    )
    source = f"{master.hostname}:{K3S_KUBECONFIG}" + (f", after {'; '.join(tried)}" if tried else "")
    if options.save_kubeconfig is not None:
        storage.write_private(options.save_kubeconfig.expanduser(), k3s_yaml_for(text, master.private_ip))
    return from_k3s_yaml(text, master.private_ip, source, options.timeout)


def _read_from_masters(masters: list[Host], ssh: SshOptions | None) -> tuple[Host, str, list[str]]:
    """Read k3s.yaml from the first master that answers, in servers.tsv's order; say why each one before did not."""
    tried: list[str] = []
    for master in masters:
        try:
            with connect(master, ssh or SshOptions()) as session:
                text = session.run(f"cat {K3S_KUBECONFIG}").stdout
        except HostError as e:
            tried.append(f"{master.hostname}: {e.problem}")
            continue
        if text.strip():
            return master, text, tried
        tried.append(f"{master.hostname}: {K3S_KUBECONFIG} is empty")
    raise ClusterError(f"--kubeconfig-from-master: no master gave {K3S_KUBECONFIG}: {'; '.join(tried)}")


def from_kubeconfig(kubeconfig: Path | None = None, context: str | None = None, timeout: float = 30.0) -> Kube:
    """Connect using standard kubeconfig resolution (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``)."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if kubeconfig is not None:
        paths = [kubeconfig.expanduser()]
        if not paths[0].is_file():
            raise KubeconfigError(f"--kubeconfig {kubeconfig}: no such file")
    else:
        env = os.environ.get("KUBECONFIG", "")
        paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p] or [Path("~/.kube/config").expanduser()]
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise KubeconfigError(
                "no kubeconfig found: "
                + hint(
                    "--kubeconfig",
                    "pass --kubeconfig FILE, set KUBECONFIG, or use "
                    "--kubeconfig-from-master to read it from the first K3s master over SSH",
                    "set KUBECONFIG or write ~/.kube/config",
                )
            )
    source = str(paths[0])
    secrets = _kubeconfig_secrets(paths)
    used = _check_context(paths, context)
    cfg = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.pathsep.join(map(str, paths)),
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )
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
    token = None
    for key in ("BearerToken", "authorization"):
        value = (cfg.api_key or {}).get(key)
        if value:
            token = value.removeprefix("Bearer ").strip()
            break
    endpoint = Endpoint(
        server=_server_url(cfg.host, source),
        ca_file=cfg.ssl_ca_cert,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        token=token,
        verify=bool(cfg.verify_ssl),
        tls_server_name=getattr(cfg, "tls_server_name", None),
        source=f"kubeconfig {source}" + (f", context {used}" if used else ""),
    )
    return Kube(endpoint, timeout)


def _check_context(paths: list[Path], context: str | None) -> str | None:
    """Return the context the run uses; refuse a ``--context`` none of the files has, naming them and their contexts."""
    import yaml

    names: list[str] = []
    current: str | None = None
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return context  # the client's own reading reports what is wrong with the file
        if current is None and isinstance(data, dict) and isinstance(data.get("current-context"), str):
            current = data["current-context"]
        entries = data.get("contexts") if isinstance(data, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            name = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in names:
                names.append(name)
    if context is not None and context not in names:
        where = os.pathsep.join(map(str, paths))
        raise KubeconfigError(f"no context {context} in {where}; contexts: {', '.join(names) or '(none)'}")
    return context or current


def from_k3s_yaml(text: str, server_ip: str, source: str, timeout: float = 30.0) -> Kube:
    """Connect with a K3s ``k3s.yaml`` held in memory, pointed at ``https://server_ip:6443``.

    The client key never touches the disk: it is handed to OpenSSL through an anonymous
    in-memory file.
    """
    import base64

    import yaml

    try:
        data = yaml.safe_load(text)
        cluster = data["clusters"][0]["cluster"]
        user = data["users"][0]["user"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as e:
        raise KubeconfigError(f"{source}: not a K3s kubeconfig ({e.__class__.__name__})") from None
    host = f"[{server_ip}]" if ":" in server_ip else server_ip
    cert_file = key_file = None
    token = user.get("token")
    if "client-certificate-data" in user and "client-key-data" in user:
        cert_file = _memfile("cert", base64.b64decode(user["client-certificate-data"]))
        key_file = _memfile("key", base64.b64decode(user["client-key-data"]))
    return Kube(
        Endpoint(
            server=f"https://{host}:6443",
            ca_data=ca,
            cert_file=cert_file,
            key_file=key_file,
            token=token,
            source=source,
        ),
        timeout,
    )


def k3s_yaml_for(text: str, server_ip: str) -> str:
    """Return the k3s.yaml text pointed at ``server_ip`` (for ``--save-kubeconfig``)."""
    import yaml

    data = yaml.safe_load(text)
    host = f"[{server_ip}]" if ":" in server_ip else server_ip
    for c in data.get("clusters", []):
        c["cluster"]["server"] = f"https://{host}:6443"
    return str(yaml.safe_dump(data, sort_keys=False))


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
    from urllib.parse import urlsplit

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


def _kubeconfig_secrets(paths: builtins.list[Path]) -> builtins.list[str]:
    """Return every string under the ``users`` entries of the kubeconfig files: tokens, passwords, keys."""
    import yaml

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
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        users = data.get("users") if isinstance(data, dict) else None
        for entry in users if isinstance(users, builtins.list) else []:
            walk(entry.get("user") if isinstance(entry, dict) else entry)
    return sorted(found, key=len, reverse=True)
