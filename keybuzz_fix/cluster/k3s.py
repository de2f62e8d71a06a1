"""Reaching a K3s cluster through its master: ``/etc/rancher/k3s/k3s.yaml`` read over SSH, kept in memory.

``--kubeconfig-from-master servers.tsv`` reads k3s.yaml from the first master that answers, over a
verified SSH session, and points it at that master's private IP on 6443; when the master is reached
through a jump host or a ProxyCommand, the API goes through the same SSH connection instead, to the
master's own 127.0.0.1:6443 (:func:`keybuzz_fix.cluster.connect.connect_cluster` decides). The client
key never touches the disk; the file is written only with ``--save-kubeconfig FILE`` (mode 0600).
"""

from __future__ import annotations

import builtins
import os
import tempfile
from typing import Any

from keybuzz_fix.cluster.client import Kube
from keybuzz_fix.cluster.impersonation import impersonation_headers
from keybuzz_fix.cluster.restconfig import endpoint_from
from keybuzz_fix.errors import ClusterError, HostError, KubeconfigError
from keybuzz_fix.hosts.ssh import Session, open_session
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.inventory import Host

K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
K3S_API_PORT = 6443


def read_from_masters(masters: builtins.list[Host], ssh: SshOptions) -> tuple[Host, Session, str, builtins.list[str]]:
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
    endpoint = endpoint_from(
        cfg,
        source,
        secrets=secrets,
        impersonate=impersonation_headers({}, *impersonate, source=source),
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
