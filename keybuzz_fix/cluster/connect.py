"""Reaching the cluster: a kubeconfig, or the K3s kubeconfig read from the first master over SSH.

Operators who only have SSH to the masters pass ``--kubeconfig-from-master servers.tsv``: the
file ``/etc/rancher/k3s/k3s.yaml`` is read over a verified SSH session, kept in memory, and pointed
at that master's private IP on 6443. It is written to disk only with ``--save-kubeconfig FILE``
(mode 0600).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keybuzz_fix import inventory
from keybuzz_fix import storage as state
from keybuzz_fix.cluster import client as kube
from keybuzz_fix.errors import KubeconfigError, UsageError
from keybuzz_fix.hosts.ssh import SshOptions, connect

K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"


@dataclass(frozen=True)
class ClusterOptions:
    """How the operator asked to reach the API server."""

    kubeconfig: Path | None = None
    context: str | None = None
    from_master: Path | None = None  # a servers.tsv: read k3s.yaml from its first master
    save_kubeconfig: Path | None = None
    env: str = "prod"
    user: str | None = None
    timeout: float = 30.0


def connect_cluster(options: ClusterOptions, ssh: SshOptions | None = None) -> kube.Kube:
    """Return a connection to the API server, as the options say."""
    if options.from_master is None:
        if options.save_kubeconfig is not None:
            raise UsageError("--save-kubeconfig only goes with --kubeconfig-from-master")
        return kube.load(options.kubeconfig, options.context, options.timeout)
    if options.kubeconfig is not None:
        raise UsageError("--kubeconfig and --kubeconfig-from-master exclude each other")
    master = inventory.with_user(
        inventory.select(inventory.load(options.from_master), inventory.Role.MASTER, options.env)[:1], options.user
    )[0]
    with connect(master, ssh or SshOptions()) as session:
        text = session.run(f"cat {K3S_KUBECONFIG}").stdout
    source = f"{master.hostname}:{K3S_KUBECONFIG}"
    if not text.strip():
        raise KubeconfigError(f"{source} is empty")
    if options.save_kubeconfig is not None:
        state.write_private(options.save_kubeconfig.expanduser(), kube.k3s_yaml_for(text, master.private_ip))
    return kube.from_k3s_yaml(text, master.private_ip, source, options.timeout)
