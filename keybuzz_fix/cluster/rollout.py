"""Carry planned changes out through the API, and wait for workloads to be ready by watching it.

:func:`send` sends each change of a run in order (or as a server-side dry run) and writes the
audit log; the run counts a change as done once the API took it. :func:`wait_ready` waits for
DaemonSets or Deployments by watching, never by sleeping: list once, then watch from that
resourceVersion until every named workload's status says all its pods are updated and ready, or
the deadline passes; :func:`wait_handover` waits for the DaemonSet pods that can start while the
Deployment they replace still runs. On timeout, the pods that are not ready are reported with their waiting
reasons and their latest events, and nothing else happens: deciding what to do next is the
caller's job. (On the test control plane kwok plays the kubelet: its pods are not processes, they
turn Running and Ready as kwok's stages say.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keybuzz_fix import storage
from keybuzz_fix.cluster.changes import Change, ChangeRun, Verb
from keybuzz_fix.cluster.objects import Obj, meta_of, name_of, selector_string, spec_of, status_of
from keybuzz_fix.cluster.placement import Handover, held_off
from keybuzz_fix.cluster.scheduling import is_ready, node_of
from keybuzz_fix.errors import Forbidden, KeybuzzFixError, NotReady

if TYPE_CHECKING:
    from keybuzz_fix.cluster.client import Kube


def send(kube: Kube, run: ChangeRun, changes: Iterable[Change], *, dry_run: bool = False, force: bool = False) -> None:
    """Carry out, in order, each change that changes something; it counts as done once the API took it."""
    for c in changes:
        if c.changes:
            execute(kube, c, command=run.command, dry_run=dry_run, force=force)
            run.done.append(c)


def execute(kube: Kube, change: Change, *, command: str, dry_run: bool = False, force: bool = False) -> None:
    """Send one change; audit it unless it is a dry run. Errors propagate as the tool's own."""
    if not change.changes:
        return
    try:
        if change.verb is Verb.APPLY:
            assert change.body is not None
            kube.apply(change.body, dry_run=dry_run, force=force)
        elif change.verb is Verb.CREATE:
            assert change.body is not None
            kube.create(change.body, dry_run=dry_run)
        elif change.verb is Verb.PATCH:
            assert change.body is not None
            kube.patch(change.kind, change.name, change.namespace, change.body, patch_type="merge", dry_run=dry_run)
        elif change.verb is Verb.DELETE:
            kube.delete(change.kind, change.name, change.namespace, uid=change.uid, dry_run=dry_run)
    except KeybuzzFixError as e:
        if not dry_run:
            storage.audit(command, change.target, change.label, "failed", reason=change.reason, error=str(e))
        raise
    if not dry_run:
        details: dict[str, Any] = {"reason": change.reason}
        if change.uid:
            details["uid"] = change.uid
        storage.audit(command, change.target, change.label, "ok", **details)


@dataclass(frozen=True)
class StuckPod:
    """A pod that is not ready, and why."""

    name: str
    node: str
    phase: str
    reason: str
    events: tuple[str, ...]

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        events = f" (events: {'; '.join(self.events)})" if self.events else ""
        return f"{self.name} on {self.node or 'no node'} {self.phase}{why}{events}"


class Stuck(NotReady):
    """Workloads not ready in time; carries the pods that are stuck."""

    def __init__(self, message: str, pods: list[StuckPod]) -> None:
        super().__init__(message)
        self.pods = pods


def daemonset_ready(ds: Obj | None) -> bool:
    """Whether the DaemonSet controller saw the latest spec and every scheduled pod is updated and ready."""
    if ds is None:
        return False
    status = status_of(ds)
    desired = int(status.get("desiredNumberScheduled") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= int(meta_of(ds).get("generation") or 0)
        and desired > 0
        and int(status.get("updatedNumberScheduled") or 0) == desired
        and int(status.get("numberReady") or 0) == desired
        and int(status.get("numberAvailable") or 0) == desired
        and not status.get("numberUnavailable")
    )


def deployment_ready(dep: Obj | None) -> bool:
    """Whether the Deployment rolled out: every replica updated and available."""
    if dep is None:
        return False
    status = status_of(dep)
    want = int(spec_of(dep).get("replicas", 1))
    return (
        int(status.get("observedGeneration") or 0) >= int(meta_of(dep).get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) == want
        and int(status.get("availableReplicas") or 0) == want
        and int(status.get("replicas") or 0) == want
    )


READY: dict[str, Callable[[Obj | None], bool]] = {"DaemonSet": daemonset_ready, "Deployment": deployment_ready}


def readiness(kind: str, obj: Obj | None) -> str:
    """Return ``ready/wanted`` for a workload, for messages."""
    if obj is None:
        return "missing"
    status = status_of(obj)
    if kind == "DaemonSet":
        return f"{status.get('numberReady') or 0}/{status.get('desiredNumberScheduled') or 0} pods ready"
    return f"{status.get('readyReplicas') or 0}/{(obj.get('spec') or {}).get('replicas', 1)} replicas ready"


def wait_ready(
    kube: Kube,
    kind: str,
    namespace: str,
    names: Collection[str],
    *,
    timeout: float,
    ready: Callable[[Obj | None], bool] | None = None,
    progress: Callable[[dict[str, tuple[int, int]]], None] | None = None,
) -> dict[str, Obj]:
    """Watch until every named workload is ready (or ``ready`` says so); raise :class:`Stuck` after ``timeout`` s.

    ``progress`` is told each workload's ready and wanted pods (:func:`ready_counts`) as they change.
    """
    ready = ready or READY[kind]
    wanted = set(names)
    deadline = time.monotonic() + timeout
    objs: dict[str, Obj] = {}
    version: str | None = None
    shown: dict[str, tuple[int, int]] | None = None

    def tell() -> None:
        nonlocal shown
        counts = ready_counts(kind, {n: objs.get(n) for n in sorted(wanted)})
        if progress is not None and counts != shown:
            shown = counts
            progress(counts)

    while True:
        if version is None:
            items, version = kube.list_with_version(kind, namespace)
            objs = {name_of(o): o for o in items if name_of(o) in wanted}
            tell()
        if all(ready(objs.get(n)) for n in wanted):
            return objs
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise stuck_report(kube, kind, namespace, {n: objs.get(n) for n in sorted(wanted)}, timeout)
        for event, obj in kube.watch(kind, namespace, resource_version=version, timeout=remaining):
            if event == "ERROR":  # usually 410 Gone: the version expired; list again
                version = None
                break
            version = str(meta_of(obj).get("resourceVersion") or version)
            if event == "BOOKMARK" or name_of(obj) not in wanted:
                if time.monotonic() >= deadline:  # events that never concern us must not hold the wait open
                    break
                continue
            if event == "DELETED":
                objs.pop(name_of(obj), None)
            else:
                objs[name_of(obj)] = obj
            tell()
            if all(ready(objs.get(n)) for n in wanted):
                return objs
            if time.monotonic() >= deadline:
                break


def ready_counts(kind: str, objs: dict[str, Obj | None]) -> dict[str, tuple[int, int]]:
    """Return each workload's (ready pods, wanted pods), as its status says (0, 0 while it does not exist)."""
    counts = {}
    for name, obj in objs.items():
        status = status_of(obj) if obj is not None else {}
        if kind == "DaemonSet":
            counts[name] = (int(status.get("numberReady") or 0), int(status.get("desiredNumberScheduled") or 0))
        else:
            want = int((obj or {}).get("spec", {}).get("replicas") or 0) if obj is not None else 0
            counts[name] = (int(status.get("readyReplicas") or 0), want)
    return counts


def wait_handover(
    kube: Kube,
    namespace: str,
    names: Collection[str],
    handovers: Collection[Handover],
    *,
    timeout: float,
    progress: Callable[[dict[str, tuple[int, int]]], None] | None = None,
) -> dict[str, Obj]:
    """Watch until each DaemonSet is ready but for the pods its Deployment's own pods hold off (at least one ready).

    Those wait for the Deployment to be deleted: its pods' required anti-affinity selects them.
    """
    by_name = {h.daemonset: h for h in handovers}

    def ready_but_held(ds: Obj | None) -> bool:
        if daemonset_ready(ds) or ds is None or name_of(ds) not in by_name:
            return daemonset_ready(ds)
        status = status_of(ds)
        if int(status.get("observedGeneration") or 0) < int(meta_of(ds).get("generation") or 0):
            return False
        if int(status.get("numberReady") or 0) < 1:
            return False
        return not not_held(kube, namespace, ds, by_name[name_of(ds)])

    return wait_ready(kube, "DaemonSet", namespace, names, timeout=timeout, ready=ready_but_held, progress=progress)


def not_held(kube: Kube, namespace: str, ds: Obj, handover: Handover) -> list[str]:
    """Return the DaemonSet's pods that are not ready for another reason than the Deployment's anti-affinity."""
    uid = meta_of(ds).get("uid")
    match = (spec_of(ds).get("selector") or {}).get("matchLabels") or {}
    pods = kube.list("Pod", namespace, selector=selector_string(match) if match else None)
    mine = [p for p in pods if any(o.get("uid") == uid for o in meta_of(p).get("ownerReferences") or [])]
    theirs = [
        p
        for p in kube.list("Pod", namespace, selector=selector_string(dict(handover.selector)))
        if any(
            o.get("kind") == "ReplicaSet" and str(o.get("name", "")).startswith(handover.deployment + "-")
            for o in meta_of(p).get("ownerReferences") or []
        )
    ]
    holding = {node_of(p) for p in theirs if node_of(p)}
    nodes = {name_of(n): n for n in kube.list("Node")}
    holders = [nodes[n] for n in holding if n in nodes]
    left = []
    for pod in mine:
        if is_ready(pod):
            continue
        target = node_of(pod) or _target_node(pod)
        if node_of(pod) or target not in nodes or not held_off(nodes[target], holders, handover.topology_keys):
            left.append(name_of(pod))
    return left


def _target_node(pod: Obj) -> str | None:
    """The node the DaemonSet controller meant an unscheduled pod for (its matchFields metadata.name)."""
    required = ((spec_of(pod).get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for f in term.get("matchFields") or []:
            if f.get("key") == "metadata.name" and len(f.get("values") or []) == 1:
                return str(f["values"][0])
    return None


def stuck_report(kube: Kube, kind: str, namespace: str, objs: dict[str, Obj | None], timeout: float) -> Stuck:
    """Build the error naming each workload not ready and its stuck pods, with their events."""
    ready = READY[kind]
    late = {n: o for n, o in objs.items() if not ready(o)}
    pods: list[StuckPod] = []
    try:
        events = kube.list("Event", namespace)
        for obj in late.values():
            if obj is not None:
                pods += _stuck_pods(kube, kind, namespace, obj, events)
    except Forbidden as e:  # the report is best effort; the timeout is the error
        pods.append(StuckPod("?", "", "unknown", f"cannot read pods or events: {e}", ()))
    what = "; ".join(f"{kind} {namespace}/{n}: {readiness(kind, o)}" for n, o in late.items())
    detail = "; ".join(map(str, pods[:6])) or "no pod stuck (the controller has not caught up)"
    more = f" and {len(pods) - 6} more" if len(pods) > 6 else ""
    return Stuck(f"not ready after {timeout:g}s: {what}; stuck: {detail}{more}", pods)


def _stuck_pods(kube: Kube, kind: str, namespace: str, obj: Obj, events: list[Obj]) -> list[StuckPod]:
    match = (spec_of(obj).get("selector") or {}).get("matchLabels") or {}
    uid = meta_of(obj).get("uid")
    found = []
    for pod in kube.list("Pod", namespace, selector=selector_string(match) if match else None):
        owners = meta_of(pod).get("ownerReferences") or []
        if kind == "DaemonSet" and not any(o.get("uid") == uid for o in owners):
            continue
        if kind == "Deployment" and not any(str(o.get("name", "")).startswith(name_of(obj) + "-") for o in owners):
            continue
        if is_ready(pod):
            continue
        found.append(
            StuckPod(
                name_of(pod),
                str(spec_of(pod).get("nodeName") or ""),
                str(status_of(pod).get("phase") or "Unknown"),
                _not_ready_reason(pod),
                _events_of(events, str(meta_of(pod).get("uid"))),
            )
        )
    if not found:
        own = _events_of(events, str(uid))
        if own:
            found.append(StuckPod(f"({kind} {name_of(obj)})", "", "no pods", "", own))
    return found


def _not_ready_reason(pod: Obj) -> str:
    status = status_of(pod)
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting:
            return f"{c.get('name')} {waiting.get('reason', 'waiting')}: {waiting.get('message', '')}".rstrip(": ")
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True" and (cond.get("reason") or cond.get("message")):
            return f"{cond.get('type')} {cond.get('reason', '')}: {cond.get('message', '')}".rstrip(": ")
    return ""


def _events_of(events: list[Obj], uid: str, last: int = 3) -> tuple[str, ...]:
    mine = [e for e in events if (e.get("involvedObject") or {}).get("uid") == uid]
    mine.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return tuple(f"{e.get('reason')}: {' '.join(str(e.get('message', '')).split())}" for e in mine[-last:])
