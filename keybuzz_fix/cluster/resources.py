"""Where each kind lives in the API server: its group/version, its plural and whether it is namespaced.

The REST paths of :mod:`keybuzz_fix.cluster.client` and the resource names of RBAC
(:mod:`keybuzz_fix.cluster.rbac`) are both spelled from this table, so a kind is named once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    group_version: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        """Return the API group (empty for the core group)."""
        return self.group_version.rpartition("/")[0]

    @property
    def qualified(self) -> str:
        """Return the plural with its group, as RBAC names it (``ingresses.networking.k8s.io``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """Return the URL path of the collection, or of one object."""
        base = "/api/" + self.group_version if "/" not in self.group_version else "/apis/" + self.group_version
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base + (f"/{name}" if name else "")


RESOURCES: dict[str, Resource] = {
    "Deployment": Resource("apps/v1", "deployments"),
    "DaemonSet": Resource("apps/v1", "daemonsets"),
    "StatefulSet": Resource("apps/v1", "statefulsets"),
    "ReplicaSet": Resource("apps/v1", "replicasets"),
    "Service": Resource("v1", "services"),
    "Pod": Resource("v1", "pods"),
    "Endpoints": Resource("v1", "endpoints"),
    "NetworkPolicy": Resource("networking.k8s.io/v1", "networkpolicies"),
    "Event": Resource("v1", "events"),
    "Node": Resource("v1", "nodes", namespaced=False),
    "HorizontalPodAutoscaler": Resource("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": Resource("policy/v1", "poddisruptionbudgets"),
    "Ingress": Resource("networking.k8s.io/v1", "ingresses"),
    "Lease": Resource("coordination.k8s.io/v1", "leases"),
    "Namespace": Resource("v1", "namespaces", namespaced=False),
    "IngressClass": Resource("networking.k8s.io/v1", "ingressclasses", namespaced=False),
    "Secret": Resource("v1", "secrets"),
}
IDENTITY_NAMESPACE = "kube-system"  # its uid names a cluster: it is made once, with the cluster, and never deleted
