"""What the conversion plan is computed from: the cluster as read, or a ``--from-file`` state.

The flow reads it from the API server (:mod:`keybuzz_fix.flows.convert`); :func:`observed_from_objects`
builds it from objects read from a file. Pure code, no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.cluster.objects import Obj, meta_of, name_of
from keybuzz_fix.config import Config
from keybuzz_fix.inventory import Host


@dataclass(frozen=True)
class Observed:
    """What the plan is computed from: the cluster as read, or a ``--from-file`` state."""

    namespace: str
    deployments: Sequence[Obj]  # every namespace: their host ports may collide
    daemonsets: Sequence[Obj]
    statefulsets: Sequence[Obj]
    services: Sequence[Obj]  # every namespace: nodePorts in use, ClusterIPs
    hpas: Sequence[Obj]  # the app namespace
    nodes: Sequence[Obj] | None  # None when unknown (a state file without Nodes)
    service_cidr: str = ""
    pdbs: Sequence[Obj] = ()  # the app namespace
    workers: Sequence[Host] | None = None  # servers.tsv's workers; None: the cluster's worker Nodes

    def one(self, objs: Sequence[Obj], name: str) -> Obj | None:
        """Return the object called ``name`` in the app namespace."""
        for o in objs:
            if name_of(o) == name and meta_of(o).get("namespace", self.namespace) == self.namespace:
                return o
        return None


def observed_from_objects(objs: Sequence[Obj], cfg: Config, workers: Sequence[Host] | None = None) -> Observed:
    """Build the observed state from objects read from a file (``--from-file``)."""
    by_kind: dict[str, list[Obj]] = {}
    for o in objs:
        o = copy.deepcopy(o)
        if o.get("kind") != "Node":
            o["metadata"].setdefault("namespace", cfg.namespace)
        by_kind.setdefault(str(o.get("kind")), []).append(o)
    return Observed(
        namespace=cfg.namespace,
        deployments=by_kind.get("Deployment", []),
        daemonsets=by_kind.get("DaemonSet", []),
        statefulsets=by_kind.get("StatefulSet", []),
        services=by_kind.get("Service", []),
        hpas=[h for h in by_kind.get("HorizontalPodAutoscaler", []) if meta_of(h)["namespace"] == cfg.namespace],
        nodes=by_kind.get("Node") or None,
        service_cidr=cfg.overlay.service_cidr,
        pdbs=[p for p in by_kind.get("PodDisruptionBudget", []) if meta_of(p)["namespace"] == cfg.namespace],
        workers=workers,
    )
