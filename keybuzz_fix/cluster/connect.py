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

This module picks the way in; the files are read by :mod:`keybuzz_fix.cluster.kubeconfig`, the
:class:`~keybuzz_fix.cluster.rest.Endpoint` is built by :mod:`keybuzz_fix.cluster.restconfig`, the
``Impersonate-*`` headers by :mod:`keybuzz_fix.cluster.impersonation`, k3s.yaml is fetched by
:mod:`keybuzz_fix.cluster.k3s`; the requests go through :mod:`keybuzz_fix.cluster.client`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from keybuzz_fix import storage
from keybuzz_fix.cluster.client import Kube
from keybuzz_fix.cluster.impersonation import impersonation_headers
from keybuzz_fix.cluster.k3s import K3S_API_PORT, K3S_KUBECONFIG, from_k3s_yaml, k3s_yaml_for, read_from_masters
from keybuzz_fix.cluster.kubeconfig import check_context, kubeconfig_paths, kubeconfig_secrets, named_context
from keybuzz_fix.cluster.restconfig import client_errors, endpoint_from, reloader
from keybuzz_fix.errors import KubeconfigError, UsageError, one_line, redact
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.inventory import Role, read_nodes

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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
    master, session, text, tried = read_from_masters(masters, ssh or SshOptions())
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
    secrets = kubeconfig_secrets(paths)
    used = check_context(paths, context)
    cfg = client.Configuration()

    def load() -> None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.pathsep.join(map(str, paths)),
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )

    try:
        with client_errors() as logged:
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
    named = named_context(paths, context)
    user = named.get("user_entry") or {}
    reauthorize = None
    if isinstance(user, dict) and any(k in user for k in ("exec", "auth-provider", "tokenFile")):
        reauthorize = reloader(cfg, load, source, secrets)
    endpoint = endpoint_from(
        cfg,
        f"kubeconfig {source}" + (f", context {used}" if used else ""),
        secrets=secrets,
        impersonate=impersonation_headers(user if isinstance(user, dict) else {}, *impersonate, source=source),
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
    endpoint = endpoint_from(
        cfg,
        f"in-cluster config, ServiceAccount token {SERVICE_ACCOUNT / 'token'}",
        impersonate=impersonation_headers({}, *impersonate, source="in-cluster config"),
        namespace=_pod_namespace(),
    )
    return Kube(endpoint, timeout)


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
    return named_context(paths, options.context).get("namespace")


def _pod_namespace() -> str | None:
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
