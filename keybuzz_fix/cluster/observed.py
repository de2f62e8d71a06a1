"""What the conversion plan is computed from: the cluster as read, or a ``--from-file`` state.

The flow reads it from the API server (:mod:`keybuzz_fix.flows.convert`); :func:`observed_from_objects`
builds it from objects read from a file. Pure code, no I/O.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keybuzz_fix.cluster.objects import Obj, meta_of, name_of
from keybuzz_fix.config import Config
from keybuzz_fix.inventory import Host

OVERLAY_RECORD = "overlay"  # the state folder's overlay.json: what the last diagnose saw (see overlay_seen)
SEEN_FOR = dt.timedelta(hours=1)  # how long what diagnose saw of the overlay counts: it may break again


@dataclass(frozen=True)
class OverlaySeen:
    """What the last ``diagnose`` of these nodes saw of the overlay between them (ClusterIP and DNS cross it).

    ``healthy``: True (no problem, everything checked), False (a problem: ``cause`` names the
    first), None (no problem found, but not every node was probed). ``when``: UTC.
    """

    healthy: bool | None
    when: dt.datetime
    cause: str = ""

    def describe(self) -> str:
        """``diagnose found the overlay broken at 07:50 UTC (ufw-blocks-vxlan)``."""
        at = self.when.strftime("%H:%M UTC")
        if self.healthy:
            return f"diagnose found the overlay healthy at {at}"
        if self.healthy is False:
            return f"diagnose found the overlay broken at {at}" + (f" ({self.cause})" if self.cause else "")
        return f"diagnose found no problem with the overlay at {at}, but did not probe every node"


def overlay_seen(
    record: Mapping[str, Any] | None, names: Mapping[str, str | None], now: dt.datetime
) -> OverlaySeen | None:
    """Return what diagnose saw of these nodes' overlay, from its record; None if it does not apply.

    ``record``: what diagnose wrote (``time`` ISO 8601 UTC, ``healthy``, ``cause``, ``nodes``:
    hostname → private address). ``names``: the nodes the run works on (hostname → address, None
    when unknown). It applies only if every one was diagnosed, at the same address, less than
    :data:`SEEN_FOR` ago.
    """
    if not record or not names:
        return None
    nodes = record.get("nodes")
    if not isinstance(nodes, dict):
        return None
    for name, address in names.items():
        if name not in nodes or (address is not None and nodes[name] != address):
            return None
    try:
        when = dt.datetime.fromisoformat(str(record.get("time")))
    except ValueError:
        return None
    if when.tzinfo is None or not dt.timedelta(0) <= now - when <= SEEN_FOR:
        return None
    healthy = record.get("healthy")
    if healthy not in (True, False, None):
        return None
    return OverlaySeen(healthy, when.astimezone(dt.UTC), str(record.get("cause") or ""))


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
    overlay: OverlaySeen | None = None  # what diagnose last saw of the overlay; None: not known

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
