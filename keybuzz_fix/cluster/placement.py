"""A Deployment's scheduling constraints made fit for a DaemonSet, and the workers they would leave out (pure code).

A DaemonSet runs one pod on every node its template allows, so what spreads a Deployment's
replicas means nothing for it, and what keeps a pod off some nodes keeps the app off workers:

- pod (anti-)affinity terms and topology spread constraints that select the app's own pods are
  dropped, with a note: a required anti-affinity on its own labels would even keep the new pods
  off the nodes where the Deployment's pods still run, and those are only deleted once the
  DaemonSet is ready — convert would wait its whole timeout and stop;
- a required pod (anti-)affinity on other pods, or a ``DoNotSchedule`` spread constraint on other
  pods, keeps pods off workers the tool cannot foresee: refused, with its field path;
- nodeSelector, required node affinity and taints are checked against each worker
  (:func:`left_out`) with the rules of :mod:`keybuzz_fix.cluster.scheduling`.

Required anti-affinity is symmetric: the scheduler also refuses a pod on a node whose running
pods have a required anti-affinity term selecting it. So while the Deployment's own pods (with
the term the DaemonSet dropped) run, the DaemonSet's pods cannot start on their nodes.
:func:`handover` says which DaemonSets need convert to switch over once their other pods are
ready, delete the Deployment, then wait for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from keybuzz_fix.cluster.objects import Obj, labels_of, name_of, spec_of
from keybuzz_fix.cluster.scheduling import selector_matches, why_not

_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"
_NAMESPACE_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Handover:
    """A DaemonSet whose pods the Deployment's own pods keep off their topology domains until it is deleted."""

    daemonset: str
    deployment: str
    selector: tuple[tuple[str, str], ...]  # the Deployment's matchLabels: its pods
    topology_keys: tuple[str, ...]  # nodes sharing one of these labels' values with such a pod are held off


@dataclass
class Placement:
    """What fitting a pod template's scheduling to a DaemonSet dropped, and what it refuses."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def fit_for_daemonset(pod: Obj, labels: dict[str, str], namespace: str, prefix: str) -> Placement:
    """Drop, in place, what selects the pod's own replicas; refuse what keeps pods off workers.

    ``labels`` are the template's labels, ``prefix`` the field path of ``pod``
    (``spec.template.spec``) for the messages.
    """
    out = Placement()
    affinity = pod.get("affinity")
    if isinstance(affinity, dict):
        for kind in ("podAntiAffinity", "podAffinity"):
            section = affinity.get(kind)
            if isinstance(section, dict):
                _fit_pod_affinity(section, kind, labels, namespace, f"{prefix}.affinity.{kind}", out)
                if not section:
                    del affinity[kind]
        if not affinity:
            del pod["affinity"]
    spread = pod.get("topologySpreadConstraints")
    if isinstance(spread, list):
        kept = []
        for i, c in enumerate(spread):
            where = f"{prefix}.topologySpreadConstraints[{i}]"
            if selector_matches(c.get("labelSelector"), labels):
                out.notes.append(
                    f"{where} (topologyKey {c.get('topologyKey')}): topology spread on the app's own labels "
                    "dropped, a DaemonSet runs one pod per node already"
                )
            elif c.get("whenUnsatisfiable", "DoNotSchedule") == "DoNotSchedule":
                out.problems.append(
                    f"{where} (DoNotSchedule, topologyKey {c.get('topologyKey')}) spreads against other pods and can "
                    "keep this app's pods off some workers; a DaemonSet must run on every worker: remove it or "
                    "make it ScheduleAnyway"
                )
                kept.append(c)
            else:
                kept.append(c)
        if kept:
            pod["topologySpreadConstraints"] = kept
        else:
            del pod["topologySpreadConstraints"]
    return out


def _fit_pod_affinity(
    section: Obj, kind: str, labels: dict[str, str], namespace: str, where: str, out: Placement
) -> None:
    anti = kind == "podAntiAffinity"
    required = section.get(_REQUIRED)
    if isinstance(required, list):
        kept = []
        for i, term in enumerate(required):
            path = f"{where}.{_REQUIRED}[{i}]"
            if _selects_own(term, labels, namespace):
                out.notes.append(
                    f"{path} (topologyKey {term.get('topologyKey')})"
                    + (
                        ": self anti-affinity dropped, a DaemonSet runs one pod per node already (kept, it would "
                        "also keep the new pods off the nodes where the Deployment's pods still run)"
                        if anti
                        else ": self affinity dropped, a DaemonSet runs one pod on every worker"
                    )
                )
            else:
                out.problems.append(
                    f"{path} (topologyKey {term.get('topologyKey')}) "
                    + (
                        "keeps the pods off every node running the pods it selects"
                        if anti
                        else "keeps the pods off every node not running the pods it selects"
                    )
                    + "; a DaemonSet must run on every worker: remove it, or make it preferred"
                )
                kept.append(term)
        if kept:
            section[_REQUIRED] = kept
        else:
            del section[_REQUIRED]
    preferred = section.get(_PREFERRED)
    if isinstance(preferred, list):
        kept = []
        for i, weighted in enumerate(preferred):
            term = weighted.get("podAffinityTerm") if isinstance(weighted, dict) else None
            if isinstance(term, dict) and _selects_own(term, labels, namespace):
                out.notes.append(
                    f"{where}.{_PREFERRED}[{i}] (topologyKey {term.get('topologyKey')}): preferred self "
                    f"{'anti-' if anti else ''}affinity dropped, a DaemonSet runs one pod per node already"
                )
            else:
                kept.append(weighted)
        if kept:
            section[_PREFERRED] = kept
        else:
            del section[_PREFERRED]


def handover(deployment: Obj, ds_labels: dict[str, str], namespace: str) -> Handover | None:
    """Return the handover a DaemonSet with ``ds_labels`` needs while ``deployment``'s pods run, or None."""
    pod = (spec_of(deployment).get("template") or {}).get("spec") or {}
    terms = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(_REQUIRED) or []
    keys = tuple(
        dict.fromkeys(
            str(t.get("topologyKey")) for t in terms if isinstance(t, dict) and _selects_own(t, ds_labels, namespace)
        )
    )
    if not keys:
        return None
    selector = (spec_of(deployment).get("selector") or {}).get("matchLabels") or {}
    return Handover(name_of(deployment), name_of(deployment), tuple(sorted(selector.items())), keys)


def held_off(node: Obj, holders: Sequence[Obj], keys: Sequence[str]) -> bool:
    """Whether ``node`` shares a topology domain (one of ``keys``) with a node in ``holders``."""
    mine = labels_of(node)
    return any(k in mine and labels_of(h).get(k) == mine[k] for h in holders for k in keys)


def _selects_own(term: Obj, labels: dict[str, str], namespace: str) -> bool:
    """Whether a pod affinity term selects the app's own pods (its labels, in its namespace)."""
    if not selector_matches(term.get("labelSelector"), labels):
        return False
    namespaces = term.get("namespaces") or []
    selector = term.get("namespaceSelector")
    if not namespaces and selector is None:
        return True  # the pod's own namespace
    return namespace in namespaces or selector_matches(selector, {_NAMESPACE_LABEL: namespace})


def left_out(spec: Obj, workers: Sequence[tuple[str, Obj]]) -> dict[str, list[str]]:
    """Return the workers the DaemonSet controller would give no pod, grouped by why (reason → worker names).

    ``workers`` are (worker name, its Node) pairs; the rules are the controller's own
    (``daemonset=True``: with the tolerations it adds).
    """
    out: dict[str, list[str]] = {}
    for worker, node in workers:
        reason = why_not(spec, node, daemonset=True)
        if reason is not None:
            out.setdefault(reason, []).append(worker if worker == name_of(node) else f"{worker} (Node {name_of(node)})")
    return out
