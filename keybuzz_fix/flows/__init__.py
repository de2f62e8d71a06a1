"""The imperative shells, one per command: observe, plan, show, confirm, apply, report.

Each flow takes the :class:`Connections` the CLI built from the command's options, and returns a
result object (the CLI turns it into the exit code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keybuzz_fix.checks.http import HttpOptions
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.cluster.connect import ClusterOptions
    from keybuzz_fix.hosts.sshoptions import SshOptions


@dataclass(frozen=True)
class Connections:
    """How a command reaches its hosts, the API server and the URLs, as its options say (built once by the CLI)."""

    ssh: SshOptions
    concurrency: int = 16
    cluster: ClusterOptions | None = None
    http: HttpOptions | None = None

    def kube(self) -> Kube:
        """Connect to the API server (reading the kubeconfig from a master over SSH, if asked to)."""
        from keybuzz_fix.cluster.connect import connect_cluster

        assert self.cluster is not None, "a command that talks to the cluster has cluster options"
        return connect_cluster(self.cluster, self.ssh)
